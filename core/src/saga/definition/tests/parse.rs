//! Formats, file reading, the raw shape and parser errors.

use super::*;
use std::time::Duration;

// --- the example -------------------------------------------------------

#[test]
fn example_parses_into_the_model() {
    let file = yaml(EXAMPLE_YAML).expect("example is valid");
    assert_eq!(file.sagas.len(), 1);
    let saga = &file.sagas[0];
    assert_eq!(saga.name, "deploy_environment");
    assert_eq!(saga.version, 0);
    assert_eq!(saga.timeout, Some(Duration::from_secs(600)));
    assert_eq!(saga.steps.len(), 2);

    let register = &saga.steps[0];
    assert_eq!(register.id, "register_manifest");
    assert_eq!(register.service, "manifest");
    assert_eq!(register.operation, "register");
    assert_eq!(register.compensation.as_deref(), Some("deregister"));
    assert_eq!(register.timeout, Duration::from_secs(30));
    assert_eq!(
        register.retry,
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            backoff_factor: 2.0,
            jitter: 0.1,
        }
    );
    assert!(register.depends_on.is_empty());

    let deploy = &saga.steps[1];
    assert_eq!(deploy.id, "deploy_containers");
    assert_eq!(deploy.service, "container-engine");
    assert_eq!(deploy.timeout, Duration::from_secs(120));
    assert_eq!(deploy.depends_on, vec![0]);
    assert_eq!(
        deploy.retry,
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            backoff_factor: 2.0,
            jitter: 0.1,
        }
    );
    assert_eq!(saga.step_index("deploy_containers"), Some(1));
    validate(saga).expect("a parsed definition revalidates");
}

#[test]
fn yaml_and_json_give_equal_results() {
    let from_yaml = yaml(EXAMPLE_YAML).unwrap();
    let from_json = json(EXAMPLE_JSON).unwrap();
    assert_eq!(from_yaml, from_json);
}

#[test]
fn fixtures_parse_by_extension_and_by_sniffing() {
    let expected = yaml(EXAMPLE_YAML).unwrap();
    assert_eq!(
        parse_file(&fixture("deploy_environment.yaml")).unwrap(),
        expected
    );
    assert_eq!(
        parse_file(&fixture("deploy_environment.json")).unwrap(),
        expected
    );

    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("yaml-no-ext", EXAMPLE_YAML), ("json.txt", EXAMPLE_JSON)] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        assert_eq!(parse_file(&path).unwrap(), expected, "{name}");
    }
    // A byte-order mark is tolerated.
    let path = dir.path().join("bom.json");
    std::fs::write(&path, format!("\u{feff}{EXAMPLE_JSON}")).unwrap();
    assert_eq!(parse_file(&path).unwrap(), expected);
}

#[test]
fn format_detection() {
    assert_eq!(Format::from_path(Path::new("a/b.yaml")), Some(Format::Yaml));
    assert_eq!(Format::from_path(Path::new("b.YML")), Some(Format::Yaml));
    assert_eq!(Format::from_path(Path::new("b.json")), Some(Format::Json));
    assert_eq!(Format::from_path(Path::new("b.toml")), None);
    assert_eq!(Format::from_path(Path::new("b")), None);
    assert_eq!(Format::sniff("  \n {\"sagas\": {}}"), Format::Json);
    assert_eq!(Format::sniff("\u{feff}{}"), Format::Json);
    assert_eq!(Format::sniff("sagas: {}"), Format::Yaml);
    assert_eq!(Format::sniff(""), Format::Yaml);
}

#[test]
fn io_and_encoding_errors() {
    let e = parse_file(Path::new("/nonexistent/jetsaga/defs.yaml")).unwrap_err();
    assert_eq!(e.code(), "E-DEF-IO");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/jetsaga/defs.yaml: cannot read the file:"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.yaml");
    std::fs::write(&path, b"sagas:\n  caf\xe9: {}\n").unwrap();
    let e = parse_file(&path).unwrap_err();
    assert_eq!(e.code(), "E-DEF-PARSE");
    assert!(
        e.to_string()
            .ends_with("line 2 column 6: the file is not valid UTF-8; save it as UTF-8"),
        "{e}"
    );
}

#[test]
fn sagas_are_sorted_by_name_and_steps_keep_file_order() {
    let text = "sagas:\n  zeta:\n    steps:\n      - { id: z2, service: s, operation: o }\n      - { id: a1, service: s, operation: o }\n  alpha:\n    steps:\n      - { id: x, service: s, operation: o }\n";
    let file = yaml(text).unwrap();
    let names: Vec<&str> = file.sagas.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let ids: Vec<&str> = file.sagas[1].steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["z2", "a1"]);
}

#[test]
fn defaults_apply() {
    let file = yaml(&saga_with_steps(&step("only", ""))).unwrap();
    let saga = &file.sagas[0];
    assert_eq!(saga.timeout, None);
    let only = &saga.steps[0];
    assert_eq!(only.timeout, DEFAULT_STEP_TIMEOUT);
    assert_eq!(only.compensation, None);
    assert_eq!(only.retry, RetryPolicy::default());
    assert!(only.depends_on.is_empty());
}

#[test]
fn to_json_round_trips() {
    let file = yaml(EXAMPLE_YAML).unwrap();
    let value = file.to_json();
    assert_eq!(value["sagas"][0]["steps"][1]["timeout"], 120_000);
    let back: DefinitionFile = serde_json::from_value(value).unwrap();
    assert_eq!(back, file);
}

// --- structure and names -----------------------------------------------

#[test]
fn unknown_fields_are_rejected_with_name_and_position() {
    for (text, field, line) in [
        ("sagas: {}\nextra: 1\n", "extra", 2),
        ("sagas:\n  s:\n    stepz: []\n", "stepz", 3),
        (
            "sagas:\n  s:\n    steps:\n      - id: a\n        service: s\n        operation: o\n        retries: 3\n",
            "retries",
            7,
        ),
        (
            "sagas:\n  s:\n    steps:\n      - id: a\n        service: s\n        operation: o\n        retry: { max_attempt: 3 }\n",
            "max_attempt",
            7,
        ),
        (
            "sagas:\n  s:\n    steps: [{id: a, service: s, operation: o}]\nretry_policies:\n  p: { jiter: 1 }\n",
            "jiter",
            5,
        ),
    ] {
        let e = yaml_err(text);
        assert_eq!(e.code(), "E-DEF-PARSE", "{text}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("bad.yaml: line {line} column ")),
            "{text}: {msg}"
        );
        assert!(msg.contains(&format!("unknown field `{field}`")), "{msg}");
    }

    let e = json_err(
        "{\"sagas\": {\"s\": {\"steps\": [{\"id\": \"a\", \"service\": \"s\", \"operation\": \"o\", \"retries\": 3}]}}}",
    );
    assert_eq!(e.code(), "E-DEF-PARSE");
    let msg = e.to_string();
    assert!(msg.starts_with("bad.json: line 1 column "), "{msg}");
    assert!(msg.contains("unknown field `retries`"), "{msg}");
}

#[test]
fn syntax_errors_carry_positions() {
    let e = yaml_err("sagas:\n  s: [unclosed\n");
    assert_eq!(e.code(), "E-DEF-PARSE");
    let DefinitionError::Parse { line, column, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(line.is_some() && column.is_some(), "{e:?}");
    assert!(
        !e.to_string().contains(" at line "),
        "no doubled position: {e}"
    );

    let e = json_err("{\n  \"sagas\": {\n    \"s\": ,\n  }\n}");
    assert!(
        e.to_string().starts_with("bad.json: line 3 column 10: "),
        "{e}"
    );
    assert!(!e.to_string().contains(" at line "), "{e}");

    let e = json_err("{\"sagas\": {}");
    assert!(e.to_string().contains("EOF"), "{e}");
}

#[test]
fn missing_and_empty_sections() {
    let e = yaml_err("retry_policies: {}\n");
    assert_eq!(e.code(), "E-DEF-PARSE");
    assert!(e.to_string().contains("missing field `sagas`"), "{e}");

    let e = yaml_err("sagas: {}\n");
    assert_eq!(e.code(), "E-DEF-EMPTY");
    assert_eq!(
        e.to_string(),
        "bad.yaml: field `sagas`: the file defines no saga; add at least one under `sagas`"
    );

    let e = yaml_err("sagas:\n  s:\n    steps: []\n");
    assert_eq!(e.code(), "E-DEF-EMPTY");
    assert_eq!(
        e.to_string(),
        "bad.yaml: saga `s`: field `steps`: the saga has no steps; add at least one"
    );

    let e = yaml_err("sagas:\n  s:\n    steps:\n      - id: a\n        service: s\n");
    assert!(e.to_string().contains("missing field `operation`"), "{e}");

    let e = yaml_err("");
    assert_eq!(e.code(), "E-DEF-PARSE");
}

#[test]
fn duplicate_keys_are_rejected() {
    let e = yaml_err(
        "sagas:\n  s:\n    steps: [{id: a, service: s, operation: o}]\n  s:\n    steps: [{id: a, service: s, operation: o}]\n",
    );
    assert_eq!(e.code(), "E-DEF-PARSE");
    assert!(e.to_string().contains("duplicate"), "{e}");
    assert!(e.to_string().starts_with("bad.yaml: line 4 column "), "{e}");

    let e = json_err(
        "{\"sagas\": {\"s\": {\"steps\": [{\"id\": \"a\", \"service\": \"s\", \"operation\": \"o\"}]},\n \"s\": {\"steps\": []}}}",
    );
    assert_eq!(e.code(), "E-DEF-PARSE");
    assert!(e.to_string().contains("duplicate key `s`"), "{e}");
    assert!(e.to_string().starts_with("bad.json: line 2 column "), "{e}");
}

#[test]
fn names_must_be_tokens() {
    let text = "sagas:\n  bad.saga:\n    steps:\n      - id: has space\n        service: a>b\n        operation: \"\"\n        compensation: \"un do\"\n";
    let e = yaml_err(text);
    assert_eq!(codes(&e), ["E-DEF-NAME"; 5]);
    let msgs = messages(&e);
    assert!(
        msgs[0]
            .starts_with("bad.yaml: saga `bad.saga`: invalid saga name: \"bad.saga\" contains '.'"),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with(
            "bad.yaml: saga `bad.saga`, step `#1`: field `id`: invalid step id: \"has space\" contains ' '"
        ),
        "{msgs:?}"
    );
    assert!(
        msgs[2]
            .starts_with("bad.yaml: saga `bad.saga`, step `#1`: field `service`: invalid service:"),
        "{msgs:?}"
    );
    assert_eq!(
        msgs[3],
        "bad.yaml: saga `bad.saga`, step `#1`: field `operation`: invalid operation: is empty"
    );
    assert!(msgs[4].contains("field `compensation`"), "{msgs:?}");

    let long = "x".repeat(65);
    let e = yaml_err(&saga_with_steps(&step(&long, "")));
    assert!(e.to_string().contains("longer than 64 characters"), "{e}");
}

#[test]
fn control_characters_stay_escaped_on_one_line() {
    let e = json_err(
        "{\"sagas\": {\"a\\nb\": {\"steps\": [{\"id\": \"x\", \"service\": \"s\", \"operation\": \"o\"}]}}}",
    );
    assert_eq!(e.to_string().lines().count(), 1, "{e}");
    assert!(e.to_string().starts_with("bad.json: saga `a\\nb`"), "{e}");
}
