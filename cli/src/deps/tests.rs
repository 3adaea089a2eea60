use super::*;

/// A YAML manifest of `name` at `version` with `deps` (each `name`,
/// `name@requirement` or `name?` for optional) parsed as file `name.yaml`.
fn svc(name: &str, version: &str, deps: &[&str]) -> Manifest {
    let mut text = format!("name: {name}\nversion: {version}\ndepends_on:\n");
    for dep in deps {
        let (dep, optional) = match dep.strip_suffix('?') {
            Some(dep) => (dep, true),
            None => (*dep, false),
        };
        match dep.split_once('@') {
            Some((dep, req)) => {
                text.push_str(&format!("  - name: {dep}\n    version: \"{req}\"\n"))
            }
            None => text.push_str(&format!("  - name: {dep}\n")),
        }
        if optional {
            text.push_str("    optional: true\n");
        }
    }
    if deps.is_empty() {
        text.push_str("  []\n");
    }
    parse_manifest(&format!("{name}.yaml"), &text, Format::Yaml)
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
}

fn codes(r: &Resolution) -> Vec<ErrorCode> {
    r.problems.iter().map(Problem::code).collect()
}

fn parse_err(text: &str, format: Format) -> Vec<String> {
    parse_manifest("svc/manifest.yaml", text, format)
        .expect_err("invalid manifest")
        .iter()
        .map(|p| {
            assert_eq!(p.code(), ErrorCode::DepsParse, "{p}");
            p.to_string()
        })
        .collect()
}

#[test]
fn order_is_topological_with_ties_broken_by_name() {
    let r = resolve(
        vec![
            svc("web", "1.0.0", &["api", "cache"]),
            svc("api", "2.0.0", &["db", "queue"]),
            svc("queue", "1.0.0", &[]),
            svc("db", "1.0.0", &[]),
            svc("cache", "1.0.0", &[]),
            svc("batch", "1.0.0", &["db"]),
        ],
        Vec::new(),
    );
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    // Ready at first: cache, db, queue; batch becomes ready after db and
    // sorts before queue.
    assert_eq!(
        r.order.as_deref(),
        Some(&["cache", "db", "batch", "queue", "api", "web"].map(String::from)[..])
    );
    assert_eq!(
        r.levels,
        Some(vec![
            vec!["cache".to_string(), "db".into(), "queue".into()],
            vec!["api".into(), "batch".into()],
            vec!["web".into()],
        ])
    );
    assert_eq!(r.exit_code(), 0);
}

#[test]
fn every_cycle_is_reported_with_its_path_and_no_order() {
    let r = resolve(
        vec![
            svc("a", "1.0.0", &["b"]),
            svc("b", "1.0.0", &["c"]),
            svc("c", "1.0.0", &["a", "d"]),
            svc("d", "1.0.0", &["c"]),
            svc("self", "1.0.0", &["self"]),
            svc("x", "1.0.0", &["y"]),
            svc("y", "1.0.0", &["x"]),
            svc("downstream", "1.0.0", &["y"]),
            svc("free", "1.0.0", &[]),
        ],
        Vec::new(),
    );
    let cycles: Vec<String> = r.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        cycles,
        [
            "a -> b -> c -> a",
            "d -> c -> d",
            "self -> self",
            "x -> y -> x"
        ]
        .map(|p| format!(
            "dependency cycle {p}: no start-up order exists; remove one of these dependencies"
        ))
    );
    assert!(codes(&r).iter().all(|c| *c == ErrorCode::DepsCycle));
    // Every service on a cycle appears in the report.
    for name in ["a", "b", "c", "d", "self", "x", "y"] {
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::Cycle { path } if path.iter().any(|s| s == name))),
            "{name} missing from {cycles:?}"
        );
    }
    assert_eq!(r.order, None);
    assert_eq!(r.levels, None);
    assert_eq!(r.unordered, vec!["downstream".to_string()]);
    assert_eq!(r.exit_code(), 1);
}

#[test]
fn missing_required_is_an_error_and_missing_optional_a_note() {
    let r = resolve(
        vec![
            svc("api", "1.0.0", &["db", "metrics?", "tracing?"]),
            svc("tracing", "0.3.0", &[]),
        ],
        Vec::new(),
    );
    assert_eq!(
        codes(&r),
        vec![ErrorCode::DepsMissing, ErrorCode::DepsOptional]
    );
    assert_eq!(
        r.problems[0].to_string(),
        "api (api.yaml) requires `db`, which no manifest declares; add its manifest or mark the dependency `optional: true`"
    );
    assert!(
        r.problems[1]
            .to_string()
            .contains("optional dependency `metrics`")
    );
    assert!(!r.problems[1].is_error());
    // The order still exists: the missing service is simply not in it, and a
    // declared optional dependency still orders the start-up.
    assert_eq!(r.order, Some(vec!["tracing".to_string(), "api".into()]));
    assert_eq!(r.exit_code(), 1);

    let only_notes = resolve(vec![svc("api", "1.0.0", &["metrics?"])], Vec::new());
    assert_eq!(codes(&only_notes), vec![ErrorCode::DepsOptional]);
    assert_eq!(only_notes.exit_code(), 0);
}

#[test]
fn version_requirements_are_checked_against_declared_versions() {
    let r = resolve(
        vec![
            svc("payments", "1.4.2", &["ledger@>=1.2, <2", "fraud@^0.3"]),
            svc("ledger", "2.0.1", &[]),
            svc("fraud", "0.3.9", &[]),
            svc("reports", "1.0.0", &["ledger@~2.0", "audit@^1?"]),
            svc("audit", "0.9.0", &[]),
        ],
        Vec::new(),
    );
    assert_eq!(
        codes(&r),
        vec![ErrorCode::DepsVersion, ErrorCode::DepsVersion]
    );
    assert_eq!(
        r.problems[0].to_string(),
        "payments (payments.yaml) requires ledger >=1.2, <2, but ledger declares version 2.0.1 (ledger.yaml)"
    );
    // An optional dependency that is present still has its version checked.
    assert!(
        r.problems[1].to_string().starts_with(
            "reports (reports.yaml) requires audit ^1, but audit declares version 0.9.0"
        )
    );
    assert!(r.order.is_some());
}

#[test]
fn duplicate_names_name_both_files_and_keep_the_first() {
    let mut second = svc("db", "2.0.0", &[]);
    second.file = "b/manifest.yaml".into();
    let mut first = svc("db", "1.0.0", &[]);
    first.file = "a/manifest.yaml".into();
    let r = resolve(
        vec![second, first, svc("api", "1.0.0", &["db@^1"])],
        Vec::new(),
    );
    assert_eq!(codes(&r), vec![ErrorCode::DepsDuplicate]);
    assert_eq!(
        r.problems[0].to_string(),
        "service `db` is declared twice, in a/manifest.yaml and in b/manifest.yaml; remove or rename one"
    );
    assert_eq!(
        r.service("db").map(|s| s.version.to_string()),
        Some("1.0.0".into())
    );
}

#[test]
fn yaml_and_json_manifests_parse_to_the_same_model() {
    let yaml = r#"
name: payments
version: 1.4.2
health: http://127.0.0.1:8081/health
depends_on:
  - name: ledger
    version: ">=1.2, <2"
  - name: fraud-check
    optional: true
"#;
    let json = r#"{"name": "payments", "version": "1.4.2", "health": "http://127.0.0.1:8081/health",
        "depends_on": [{"name": "ledger", "version": ">=1.2, <2"}, {"name": "fraud-check", "optional": true}]}"#;
    let from_yaml = parse_manifest("m", yaml, Format::Yaml).expect("yaml");
    let from_json = parse_manifest("m", json, Format::Json).expect("json");
    assert_eq!(from_yaml, from_json);
    assert_eq!(from_yaml.version, Version::new(1, 4, 2));
    assert_eq!(from_yaml.depends_on.len(), 2);
    assert_eq!(
        from_yaml.depends_on[0].version,
        Some(VersionReq::parse(">=1.2, <2").expect("req"))
    );
    assert!(from_yaml.depends_on[1].optional && from_yaml.depends_on[1].version.is_none());
    // Only name and version are required.
    let bare = parse_manifest("m", "name: db\nversion: 0.1.0\n", Format::Yaml).expect("bare");
    assert!(bare.depends_on.is_empty() && bare.health.is_none());
}

#[test]
fn parse_errors_name_the_file_and_the_field() {
    let unknown = parse_err("name: a\nversion: 1.0.0\nrequires: [b]\n", Format::Yaml);
    assert_eq!(unknown.len(), 1);
    assert!(unknown[0].starts_with("svc/manifest.yaml: "), "{unknown:?}");
    assert!(unknown[0].contains("requires"), "{unknown:?}");

    let nested = parse_err(
        r#"{"name": "a", "version": "1.0.0", "depends_on": [{"name": "b", "optinal": true}]}"#,
        Format::Json,
    );
    assert!(
        nested[0].contains("optinal") && nested[0].contains("line 1"),
        "{nested:?}"
    );

    let missing = parse_err("name: a\n", Format::Yaml);
    assert!(missing[0].contains("version"), "{missing:?}");

    let syntax = parse_err("name: [a\n", Format::Yaml);
    assert!(syntax[0].starts_with("svc/manifest.yaml: "), "{syntax:?}");

    // Every invalid field at once, each named.
    let many = parse_err(
        "name: 'bad name'\nversion: 1.x\nhealth: ftp://h/x\ndepends_on:\n  - name: b\n    version: '>>1'\n  - name: b\n",
        Format::Yaml,
    );
    let fields: Vec<&str> = many
        .iter()
        .map(|m| {
            m.split("field `")
                .nth(1)
                .and_then(|f| f.split('`').next())
                .unwrap_or(m)
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            "name",
            "version",
            "health",
            "depends_on[0].version",
            "depends_on[1].name"
        ],
        "{many:?}"
    );
    assert!(
        many[1].contains("\"1.x\" is not a semver version"),
        "{many:?}"
    );
    assert!(
        many[4].contains("already listed at depends_on[0]"),
        "{many:?}"
    );
}

#[test]
fn duplicate_yaml_keys_are_rejected() {
    let e = parse_err("name: a\nname: b\nversion: 1.0.0\n", Format::Yaml);
    assert!(e[0].contains("name"), "{e:?}");
}

#[test]
fn unreadable_and_non_utf8_files_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.yaml");
    let e = read_manifest(&missing).expect_err("missing");
    assert_eq!(e[0].code(), ErrorCode::DepsIo);
    assert!(e[0].to_string().starts_with(&missing.display().to_string()));

    let latin1 = dir.path().join("latin1.yaml");
    std::fs::write(&latin1, b"name: caf\xe9\nversion: 1.0.0\n").expect("write");
    let e = read_manifest(&latin1).expect_err("latin1");
    assert_eq!(e[0].code(), ErrorCode::DepsParse);
    assert!(e[0].to_string().contains("not valid UTF-8"));

    // The format follows the extension, else it is sniffed.
    let sniffed = dir.path().join("manifest");
    std::fs::write(&sniffed, br#"{"name": "a", "version": "1.0.0"}"#).expect("write");
    assert_eq!(read_manifest(&sniffed).expect("json").name, "a");
}

#[test]
fn patterns_must_match_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["b", "a"] {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(
            sub.join("manifest.yaml"),
            format!("name: {name}\nversion: 1.0.0\n"),
        )
        .expect("write");
    }
    let all = format!("{}/*/manifest.yaml", dir.path().display());
    let one = format!("{}/a/manifest.yaml", dir.path().display());
    let files = manifest_files(&[all.clone(), one]).expect("files");
    assert_eq!(
        files,
        vec![
            dir.path().join("a/manifest.yaml"),
            dir.path().join("b/manifest.yaml")
        ]
    );

    let none = format!("{}/*/other.yaml", dir.path().display());
    let e = manifest_files(&[all, none]).expect_err("no match");
    assert!(
        e.to_string().starts_with("E-DEPS-GLOB: ") && e.to_string().ends_with("matches no file"),
        "{e}"
    );
    let invalid = manifest_files(&["[".to_string()]).expect_err("invalid");
    assert!(
        invalid.to_string().starts_with("E-DEPS-GLOB: "),
        "{invalid}"
    );
}

#[test]
fn json_report_carries_codes_severities_and_messages() {
    let r = resolve(
        vec![
            svc("api", "1.0.0", &["db", "metrics?"]),
            svc("web", "1.0.0", &["api@^2"]),
        ],
        Vec::new(),
    );
    let report = r.to_json(true);
    assert_eq!(report["ok"], false);
    assert_eq!(report["order"], json!(["api", "web"]));
    assert_eq!(report["levels"], json!([["api"], ["web"]]));
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems[0]["code"], "E-DEPS-MISSING");
    assert_eq!(problems[0]["severity"], "error");
    assert_eq!(problems[0]["dependency"], "db");
    assert_eq!(problems[1]["code"], "N-DEPS-OPTIONAL");
    assert_eq!(problems[1]["severity"], "note");
    assert_eq!(problems[2]["code"], "E-DEPS-VERSION");
    assert_eq!(problems[2]["requirement"], "^2");
    assert_eq!(problems[2]["message"], r.problems[2].to_string());
    assert_eq!(report["services"][0]["depends_on"][1]["optional"], true);
    let validate = r.to_json(false);
    assert!(validate.get("order").is_none() && validate.get("problems").is_some());
}

#[tokio::test]
async fn health_probes_report_answers_refusals_and_failed_handshakes() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // A one-shot HTTP server answering 200, and one answering 503.
    async fn serve(status: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{addr}/health")
    }
    // A port with nothing listening: bound, then released.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut services = vec![
        svc("up", "1.0.0", &[]),
        svc("sick", "1.0.0", &[]),
        svc("down", "1.0.0", &[]),
        svc("tls", "1.0.0", &[]),
        svc("quiet", "1.0.0", &[]),
    ];
    services[0].health = Some(serve("200 OK").await);
    services[1].health = Some(serve("503 Service Unavailable").await);
    services[2].health = Some(format!("http://{closed}/health"));
    // https to a server that speaks plain HTTP: a TLS handshake is tried.
    services[3].health = Some(serve("200 OK").await.replacen("http://", "https://", 1));
    let checks = check_health(&services, Duration::from_secs(5)).await;
    let names: Vec<&str> = checks.iter().map(|c| c.service.as_str()).collect();
    assert_eq!(names, vec!["up", "sick", "down", "tls"]);
    assert!(
        matches!(
            checks[0].outcome,
            HealthOutcome::Healthy { status: 200, .. }
        ),
        "{checks:?}"
    );
    let error = |i: usize| match &checks[i].outcome {
        HealthOutcome::Unhealthy { error } => error.clone(),
        other => panic!("{other:?}"),
    };
    assert!(error(1).contains("503"), "{checks:?}");
    assert!(!error(2).is_empty());
    // rustls's answer to a reply that is not a TLS record.
    assert!(error(3).contains("corrupt message"), "{checks:?}");

    let mut r = resolve(services, Vec::new());
    r.add_health(checks);
    assert_eq!(codes(&r), vec![ErrorCode::DepsHealth; 3]);
    assert_eq!(r.to_json(false)["health"][0]["state"], "healthy");
}

#[test]
fn service_block_manifests_parse_to_the_same_model() {
    let block = r#"
service:
  name: "executor"
  version: "1.5.0"
  dependencies:
    - name: "analyzer"
      version: ">=1.2.0"
      required: true
      health_check: "http://analyzer:8080/health"
    - name: "storage"
      version: ">=2.0.0"
      required: false
"#;
    let own = r#"
name: executor
version: 1.5.0
depends_on:
  - name: analyzer
    version: ">=1.2.0"
  - name: storage
    version: ">=2.0.0"
    optional: true
"#;
    let from_block = parse_manifest("m", block, Format::Yaml).expect("service block");
    let mut from_own = parse_manifest("m", own, Format::Yaml).expect("own shape");
    assert_eq!(
        from_block.depends_on[0].health.as_deref(),
        Some("http://analyzer:8080/health")
    );
    from_own.depends_on[0].health = Some("http://analyzer:8080/health".into());
    assert_eq!(from_block, from_own);
    assert!(!from_block.depends_on[0].optional && from_block.depends_on[1].optional);

    let json = r#"{"service": {"name": "executor", "version": "1.5.0", "dependencies": [
        {"name": "analyzer", "version": ">=1.2.0", "required": true, "health_check": "http://analyzer:8080/health"},
        {"name": "storage", "version": ">=2.0.0", "required": false}]}}"#;
    assert_eq!(
        parse_manifest("m", json, Format::Json).expect("json"),
        from_block
    );

    // `required` defaults to true; no `dependencies` means none.
    let defaulted = parse_manifest(
        "m",
        "service:\n  name: a\n  version: 1.0.0\n  dependencies:\n    - name: b\n",
        Format::Yaml,
    )
    .expect("defaulted");
    assert!(!defaulted.depends_on[0].optional);
    let bare = parse_manifest(
        "m",
        "service:\n  name: analyzer\n  version: 1.2.3\n",
        Format::Yaml,
    )
    .expect("bare");
    assert!(bare.depends_on.is_empty() && bare.health.is_none());
}

#[test]
fn service_block_errors_name_the_fields_as_written() {
    let unknown = parse_err(
        "service:\n  name: a\n  version: 1.0.0\n  depends_on: []\n",
        Format::Yaml,
    );
    assert!(unknown[0].contains("depends_on"), "{unknown:?}");
    let mixed = parse_err(
        "service:\n  name: a\n  version: 1.0.0\nname: a\n",
        Format::Yaml,
    );
    assert!(mixed[0].contains("name"), "{mixed:?}");
    let many = parse_err(
        "service:\n  name: a\n  version: 1.0.0\n  dependencies:\n    - name: b\n      version: '>>1'\n      health_check: ftp://b/health\n    - name: b\n",
        Format::Yaml,
    );
    let fields: Vec<&str> = many
        .iter()
        .map(|m| {
            m.split("field `")
                .nth(1)
                .and_then(|f| f.split('`').next())
                .unwrap_or(m)
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            "service.dependencies[0].version",
            "service.dependencies[0].health_check",
            "service.dependencies[1].name"
        ],
        "{many:?}"
    );
    assert!(
        many[2].contains("already listed at service.dependencies[0]"),
        "{many:?}"
    );
}

#[test]
fn a_dependents_health_check_stands_for_a_service_without_its_own() {
    let parse = |file: &str, text: &str| {
        parse_manifest(file, text, Format::Yaml).unwrap_or_else(|e| panic!("{e:?}"))
    };
    let executor = parse(
        "executor.yaml",
        "service:\n  name: executor\n  version: 1.5.0\n  dependencies:\n    - name: analyzer\n      health_check: http://analyzer:8080/health\n    - name: storage\n      health_check: http://storage:8081/from-executor\n",
    );
    let analyzer = parse(
        "analyzer.yaml",
        "service:\n  name: analyzer\n  version: 1.2.0\n",
    );
    let storage = parse(
        "storage.yaml",
        "name: storage\nversion: 2.0.0\nhealth: http://storage:8081/own\n",
    );
    let r = resolve(vec![executor, analyzer, storage], Vec::new());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(
        r.order,
        Some(vec![
            "analyzer".to_string(),
            "storage".to_string(),
            "executor".to_string()
        ])
    );
    assert_eq!(
        r.service("analyzer").and_then(|s| s.health.as_deref()),
        Some("http://analyzer:8080/health")
    );
    assert_eq!(
        r.service("storage").and_then(|s| s.health.as_deref()),
        Some("http://storage:8081/own")
    );
    assert_eq!(
        r.service("executor").and_then(|s| s.health.as_deref()),
        None
    );
    let report = r.to_json(true);
    assert_eq!(
        report["services"][1]["depends_on"][0]["health"],
        "http://analyzer:8080/health"
    );
}
