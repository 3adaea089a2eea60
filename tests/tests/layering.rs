//! The layering the workspace promises (docs/ARCHITECTURE.md, "Crates"):
//! each crate depends only on the crates below it and on none of the
//! libraries its layer forbids, and inside a crate no two top-level modules,
//! nor two children of one folder module, import each other, directly or
//! around a circle.

use anyhow::{Context, Result};
use jetsaga_tests::workspace_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The normal (not dev) dependencies a crate's manifest names.
fn dependencies(krate: &str) -> Result<BTreeSet<String>> {
    let path = workspace_root().join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let mut deps = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let normal = section == "[dependencies]"
            || (section.starts_with("[target.") && section.ends_with(".dependencies]"));
        if !normal || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.split(['=', '.', ' ']).next() {
            deps.insert(name.trim().to_string());
        }
    }
    Ok(deps)
}

#[test]
fn crates_depend_only_on_the_layers_below() -> Result<()> {
    // (crate folder, jetsaga crates it may use, libraries it must not use)
    let rules: [(&str, &[&str], &[&str]); 6] = [
        (
            "protocol",
            &[],
            &["tokio", "async-nats", "sled", "axum", "reqwest"],
        ),
        (
            "core",
            &["jetsaga-protocol"],
            &[
                "tokio",
                "sled",
                "async-nats",
                "axum",
                "utoipa",
                "reqwest",
                "metrics",
                "tracing",
            ],
        ),
        (
            "store",
            &["jetsaga-protocol", "jetsaga-core"],
            &["tokio", "async-nats", "axum"],
        ),
        (
            "engine",
            &["jetsaga-protocol", "jetsaga-core", "jetsaga-store"],
            &[],
        ),
        (
            "cli",
            &[
                "jetsaga-protocol",
                "jetsaga-core",
                "jetsaga-store",
                "jetsaga-engine",
            ],
            &[],
        ),
        ("worker-sdk", &["jetsaga-protocol"], &["sled"]),
    ];
    for (krate, allowed, forbidden) in rules {
        let deps = dependencies(krate)?;
        for dep in &deps {
            if dep.starts_with("jetsaga-") {
                assert!(
                    allowed.contains(&dep.as_str()),
                    "{krate} depends on {dep}, which is not below it"
                );
            }
            assert!(
                !forbidden.contains(&dep.as_str()),
                "{krate} depends on {dep}, which its layer must not use"
            );
        }
    }
    Ok(())
}

/// Modules and the modules each imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `text` without the items marked `#[cfg(test)]`: a `mod x;` line, or
/// an item and its braces (`mod tests { ... }`); the rest of the file,
/// after them too, is kept.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // The item: past further attributes, to its `;` or its last brace.
        let mut depth: i64 = 0;
        let mut opened = false;
        for item in lines.by_ref() {
            let trimmed = item.trim();
            if !opened && (trimmed.starts_with("#[") || trimmed.is_empty()) {
                continue;
            }
            depth += item.matches('{').count() as i64 - item.matches('}').count() as i64;
            opened |= item.contains('{');
            if (!opened && trimmed.ends_with(';')) || (opened && depth <= 0) {
                break;
            }
        }
    }
    out
}

/// The top-level modules of `krate`'s library and the ones each imports
/// through `crate::`, test code and comments left out.
fn module_imports(krate: &str) -> Result<Graph> {
    let src = workspace_root().join(krate).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files)?;
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src)?;
        let first = rel.components().next().context("empty path")?;
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        // Unit tests may reach anywhere: their items are left out.
        let code = without_tests(&text);
        let imports = graph.entry(module.clone()).or_default();
        for line in code.lines() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let target: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !target.is_empty() && target != module {
                    imports.insert(target);
                }
            }
        }
    }
    Ok(graph)
}

/// A circle of imports in `graph`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_crate_has_a_circle_of_module_imports() -> Result<()> {
    for krate in ["protocol", "core", "store", "engine", "cli", "worker-sdk"] {
        let graph = module_imports(krate)?;
        assert!(!graph.is_empty(), "{krate} has modules");
        if let Some(circle) = cycle(&graph) {
            panic!("{krate}: modules import each other in a circle: {circle:?}");
        }
    }
    Ok(())
}

/// For each module that is a folder in `krate`, its child modules and the
/// siblings each imports through `super::`, test code left out.
fn sibling_imports(krate: &str) -> Result<Vec<(String, Graph)>> {
    let src = workspace_root().join(krate).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files)?;
    let mut folders: BTreeMap<std::path::PathBuf, Graph> = BTreeMap::new();
    for file in &files {
        let (Some(dir), Some(stem)) = (file.parent(), file.file_stem()) else {
            continue;
        };
        let stem = stem.to_string_lossy().to_string();
        if dir == src || ["mod", "tests"].contains(&stem.as_str()) || dir.ends_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(file)?;
        let code = without_tests(&text);
        let mut imports = BTreeSet::new();
        for line in code.lines().map(str::trim_start) {
            if line.starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("super::") {
                let target: String = line[i + "super::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `super::name::...` names a sibling module.
                if line[i + "super::".len() + target.len()..].starts_with("::") {
                    imports.insert(target);
                }
            }
        }
        folders
            .entry(dir.to_path_buf())
            .or_default()
            .insert(stem, imports);
    }
    Ok(folders
        .into_iter()
        .map(|(dir, mut graph)| {
            let siblings: BTreeSet<String> = graph.keys().cloned().collect();
            for imports in graph.values_mut() {
                imports.retain(|m| siblings.contains(m));
            }
            (dir.display().to_string(), graph)
        })
        .collect())
}

#[test]
fn no_folder_module_has_a_circle_of_child_imports() -> Result<()> {
    for krate in ["protocol", "core", "store", "engine", "cli", "worker-sdk"] {
        for (folder, graph) in sibling_imports(krate)? {
            if let Some(circle) = cycle(&graph) {
                panic!("{folder}: child modules import each other in a circle: {circle:?}");
            }
        }
    }
    Ok(())
}

#[test]
fn the_cycle_check_finds_a_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn test_items_are_left_out_and_the_code_after_them_kept() {
    let text = "use crate::a;\n#[cfg(test)]\nmod golden;\nuse crate::b;\n#[cfg(test)]\n#[allow(dead_code)]\nmod tests {\n    use crate::c;\n    fn f() { let _ = crate::d; }\n}\nfn g() { crate::e::h(); }\n";
    let kept = without_tests(text);
    for (module, expected) in [
        ("a", true),
        ("b", true),
        ("c", false),
        ("d", false),
        ("e", true),
    ] {
        assert_eq!(
            kept.contains(&format!("crate::{module}")),
            expected,
            "crate::{module} in:\n{kept}"
        );
    }
}
