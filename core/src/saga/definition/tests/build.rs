//! Steps and dependencies as the file gives them, and all problems at once.

use super::*;
use crate::saga::definition::validate::find_cycle;

// --- steps and dependencies --------------------------------------------

#[test]
fn duplicate_step_ids_name_both_positions() {
    let steps = [step("a", ""), step("b", ""), step("a", "")].concat();
    let e = yaml_err(&saga_with_steps(&steps));
    assert_eq!(e.code(), "E-DEF-DUPLICATE-STEP");
    assert_eq!(
        e.to_string(),
        "bad.yaml: saga `s`, step `a`: field `id`: duplicate step id `a`: steps #1 and #3 both use it; step ids must be unique within a saga"
    );
}

#[test]
fn unknown_dependency_lists_known_steps() {
    let text = "sagas:\n  deploy_environment:\n    steps:\n      - { id: register_manifest, service: manifest, operation: register }\n      - { id: deploy_containers, service: container-engine, operation: deploy, depends_on: [regster] }\n";
    let e = parse_str("examples/bad.yaml", text, Format::Yaml).unwrap_err();
    assert_eq!(e.code(), "E-DEF-UNKNOWN-DEPENDENCY");
    assert_eq!(
        e.to_string(),
        "examples/bad.yaml: saga `deploy_environment`, step `deploy_containers`: field `depends_on`: unknown step `regster` (known: register_manifest, deploy_containers)"
    );
}

#[test]
fn dependencies_become_sorted_unique_indexes() {
    let steps = [
        step("a", ""),
        step("b", ""),
        step("c", "        depends_on: [b, a, b]\n"),
    ]
    .concat();
    let file = yaml(&saga_with_steps(&steps)).unwrap();
    assert_eq!(file.sagas[0].steps[2].depends_on, vec![0, 1]);
}

fn chain(edges: &[(&str, &str)]) -> String {
    saga_with_steps(
        &edges
            .iter()
            .map(|(id, deps)| step(id, &format!("        depends_on: [{deps}]\n")))
            .collect::<String>(),
    )
}

#[test]
fn cycles_are_reported_with_their_path() {
    let e = yaml_err(&chain(&[("a", "b"), ("b", "c"), ("c", "a")]));
    assert_eq!(e.code(), "E-DEF-CYCLE");
    assert_eq!(
        e.to_string(),
        "bad.yaml: saga `s`: dependency cycle a -> b -> c -> a; remove one of these dependencies"
    );
    let DefinitionError::Cycle { path, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(path, &["a", "b", "c", "a"]);

    // Self-dependency is a cycle.
    let e = yaml_err(&chain(&[("a", ""), ("b", "b")]));
    assert_eq!(e.code(), "E-DEF-CYCLE");
    assert!(e.to_string().contains("dependency cycle b -> b;"), "{e}");

    // The path starts where the cycle closes, not at the first step.
    let e = yaml_err(&chain(&[("x", "y"), ("y", "z"), ("z", "y")]));
    assert!(
        e.to_string().contains("dependency cycle y -> z -> y;"),
        "{e}"
    );

    // Deterministic: the first cycle met in file order is reported.
    for _ in 0..5 {
        let e = yaml_err(&chain(&[("p", "q"), ("q", "p"), ("r", "s"), ("s", "r")]));
        assert!(
            e.to_string().contains("dependency cycle p -> q -> p;"),
            "{e}"
        );
    }

    // A diamond is not a cycle.
    yaml(&chain(&[("a", ""), ("b", "a"), ("c", "a"), ("d", "b, c")])).unwrap();
}

#[test]
fn long_dependency_chains_do_not_overflow_the_stack() {
    let n = 20_000;
    let mut deps: Vec<Vec<usize>> = (0..n).map(|i| vec![i + 1]).collect();
    deps[n - 1] = vec![];
    assert_eq!(find_cycle(&deps), None);
    deps[n - 1] = vec![0];
    assert_eq!(find_cycle(&deps).map(|p| p.len()), Some(n + 1));
}

#[test]
fn all_problems_of_a_file_are_reported_at_once() {
    let text = "sagas:\n  one:\n    timeout: never\n    steps:\n      - { id: a, service: s, operation: o, depends_on: [nope] }\n      - { id: a, service: s, operation: o, retry: missing }\n  two:\n    steps: []\n";
    let e = yaml_err(text);
    assert_eq!(e.code(), "E-DEF-MANY");
    assert_eq!(
        codes(&e),
        [
            "E-DEF-DURATION",
            "E-DEF-DUPLICATE-STEP",
            "E-DEF-UNKNOWN-DEPENDENCY",
            "E-DEF-UNKNOWN-POLICY",
            "E-DEF-EMPTY",
        ]
    );
    let text = e.to_string();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("bad.yaml: saga `")),
        "{text}"
    );
    assert!(e.errors().iter().all(|e| e.place().is_some()));
}
