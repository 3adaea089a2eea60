//! Service policies under `services:`.

use super::*;
use std::time::Duration;

fn parse(services: &str) -> Result<DefinitionFile, DefinitionError> {
    let text = format!(
        "sagas:\n  s:\n    steps:\n      - {{ id: a, service: pay, operation: op }}\nservices:\n{services}"
    );
    parse_str("f.yaml", &text, Format::Yaml)
}

#[test]
fn services_parse_with_defaults() {
    let file = parse(
        "  pay:\n    max_in_flight: 8\n    circuit_breaker: { failure_threshold: 3, open_timeout: 2s }\n  audit: {}\n",
    )
    .unwrap();
    assert_eq!(
        file.services,
        vec![
            ServicePolicy {
                service: "audit".into(),
                max_in_flight: None,
                circuit_breaker: None,
            },
            ServicePolicy {
                service: "pay".into(),
                max_in_flight: Some(8),
                circuit_breaker: Some(BreakerConfig {
                    failure_threshold: 3,
                    success_threshold: DEFAULT_SUCCESS_THRESHOLD,
                    open_timeout: Duration::from_secs(2),
                }),
            },
        ]
    );
    validate_services(&file.services).unwrap();
    let json = serde_json::to_value(&file.services[1]).unwrap();
    assert_eq!(json["circuit_breaker"]["open_timeout"], 2000);
    // A file without services keeps its JSON shape.
    let plain = parse_str(
        "f.yaml",
        "sagas:\n  s:\n    steps:\n      - { id: a, service: pay, operation: op }\n",
        Format::Yaml,
    )
    .unwrap();
    assert!(plain.to_json().get("services").is_none());
}

#[test]
fn bad_services_name_file_service_and_field() {
    let e = parse(
        "  pay:\n    max_in_flight: 0\n    circuit_breaker: { failure_threshold: -1, success_threshold: 0, open_timeout: soon }\n  \"bad.name\": {}\n",
    )
    .unwrap_err();
    let messages: Vec<String> = e.errors().iter().map(|e| e.to_string()).collect();
    assert!(
        e.errors().iter().all(|e| e.code() == "E-DEF-SERVICE"),
        "{messages:?}"
    );
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert!(
        messages[0].starts_with("f.yaml: service `pay`: field `max_in_flight`: 0 is out of range"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("field `circuit_breaker.failure_threshold`: -1"),
        "{messages:?}"
    );
    assert!(
        messages[2].contains("field `circuit_breaker.success_threshold`"),
        "{messages:?}"
    );
    assert!(
        messages[3].contains("field `circuit_breaker.open_timeout`: invalid duration"),
        "{messages:?}"
    );
    assert!(
        messages[4].contains("service `bad.name`: field `name`"),
        "{messages:?}"
    );
    // Unknown fields are parse errors, as everywhere in the file.
    assert_eq!(
        parse("  pay: { max_inflight: 2 }\n").unwrap_err().code(),
        "E-DEF-PARSE"
    );
    // Built policies are checked again when they arrive over the wire.
    let e = validate_services(&[
        ServicePolicy {
            service: "pay".into(),
            max_in_flight: Some(0),
            circuit_breaker: None,
        },
        ServicePolicy {
            service: "pay".into(),
            max_in_flight: None,
            circuit_breaker: Some(BreakerConfig {
                failure_threshold: 1,
                success_threshold: 1,
                open_timeout: Duration::ZERO,
            }),
        },
    ])
    .unwrap_err();
    assert_eq!(e.errors().len(), 3, "{e}");
    assert!(e.to_string().starts_with("request: service `pay`"), "{e}");
}
