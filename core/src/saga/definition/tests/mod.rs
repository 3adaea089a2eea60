//! Tests of definition files and built definitions, by concern, sharing
//! the example file and the helpers below.

mod build;
mod duration;
mod fuzz;
mod limits;
mod parse;
mod retry;
mod service;
mod trigger;
mod validate;

use super::*;
use std::path::Path;

const EXAMPLE_YAML: &str = r#"
sagas:
  deploy_environment:
    timeout: 10m
    steps:
      - id: register_manifest
        service: manifest          # the work queue
        operation: register
        compensation: deregister
        timeout: 30s
        retry: default
      - id: deploy_containers
        service: container-engine
        operation: deploy
        compensation: stop
        timeout: 2m
        depends_on: [register_manifest]
        retry: { max_attempts: 3, initial_delay: 500ms, max_delay: 10s, backoff_factor: 2, jitter: 0.1 }
retry_policies:
  default: { max_attempts: 5, initial_delay: 1s, max_delay: 60s, backoff_factor: 2, jitter: 0.1 }
"#;

const EXAMPLE_JSON: &str = r#"{
  "sagas": {
    "deploy_environment": {
      "timeout": "10m",
      "steps": [
        {
          "id": "register_manifest",
          "service": "manifest",
          "operation": "register",
          "compensation": "deregister",
          "timeout": "30s",
          "retry": "default"
        },
        {
          "id": "deploy_containers",
          "service": "container-engine",
          "operation": "deploy",
          "compensation": "stop",
          "timeout": 120000,
          "depends_on": ["register_manifest"],
          "retry": { "max_attempts": 3, "initial_delay": 500, "max_delay": "10s", "backoff_factor": 2, "jitter": 0.1 }
        }
      ]
    }
  },
  "retry_policies": {
    "default": { "max_attempts": 5, "initial_delay": "1s", "max_delay": "60s", "backoff_factor": 2.0, "jitter": 0.1 }
  }
}"#;

fn yaml(text: &str) -> Result<DefinitionFile, DefinitionError> {
    parse_str("bad.yaml", text, Format::Yaml)
}

fn json(text: &str) -> Result<DefinitionFile, DefinitionError> {
    parse_str("bad.json", text, Format::Json)
}

fn yaml_err(text: &str) -> DefinitionError {
    match yaml(text) {
        Ok(file) => panic!("expected an error, got {file:?}"),
        Err(e) => e,
    }
}

fn json_err(text: &str) -> DefinitionError {
    match json(text) {
        Ok(file) => panic!("expected an error, got {file:?}"),
        Err(e) => e,
    }
}

/// A one-saga file whose steps are given as YAML list items (indented by 6).
fn saga_with_steps(steps: &str) -> String {
    format!("sagas:\n  s:\n    steps:\n{steps}")
}

fn step(id: &str, extra: &str) -> String {
    format!("      - id: {id}\n        service: svc\n        operation: op\n{extra}")
}

fn messages(e: &DefinitionError) -> Vec<String> {
    e.errors().iter().map(|e| e.to_string()).collect()
}

fn codes(e: &DefinitionError) -> Vec<&'static str> {
    e.errors().iter().map(|e| e.code().as_str()).collect()
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/definitions")
        .join(name)
}

fn built() -> SagaDefinition {
    yaml(EXAMPLE_YAML).unwrap().sagas.remove(0)
}
