//! The example definitions and the example services agree: every step names
//! a service that its saga's binary runs, and that service has a handler for
//! the step's operation and for its compensation. No server needed.

use jetsaga_examples::ledger::{self, read_dir};
use jetsaga_examples::services::{self, Service, ServiceEnv};
use jetsaga_worker::Worker;
use jetsaga_worker::protocol::{self, Outcome, Task, TaskKind};
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
struct File {
    sagas: BTreeMap<String, Saga>,
    #[serde(default)]
    retry_policies: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Saga {
    #[allow(dead_code)]
    timeout: String,
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
struct Step {
    id: String,
    service: String,
    operation: String,
    #[serde(default)]
    compensation: Option<String>,
    #[allow(dead_code)]
    timeout: String,
    #[serde(default)]
    retry: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
}

const FILES: &[(&str, &[Service])] = &[
    ("deploy_environment", services::DEPLOY),
    ("create_booking", services::BOOKING),
    ("collect_payment", services::PAYMENT),
    ("data_ingest_pipeline", services::INGEST),
];

fn load(name: &str) -> File {
    let path = jetsaga_examples::definitions_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let file: File =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        file.sagas.keys().collect::<Vec<_>>(),
        vec![name],
        "{} defines exactly the saga it is named after",
        path.display()
    );
    file
}

fn task(saga: &str, step: &Step, kind: TaskKind, operation: &str) -> Task {
    let saga_id = format!("{saga}-1");
    Task {
        idempotency_key: protocol::idempotency_key(&saga_id, &step.id, kind),
        saga_id,
        saga_name: saga.into(),
        step_id: step.id.clone(),
        kind,
        service: step.service.clone(),
        operation: operation.into(),
        attempt: 1,
        input: json!({}),
        context: BTreeMap::new(),
        timeout_ms: 10_000,
        partition: 0,
    }
}

#[test]
fn every_definition_file_is_covered() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(jetsaga_examples::definitions_dir())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "yaml").then(|| p.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    let known: BTreeSet<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(on_disk, known);
}

#[test]
fn definitions_are_well_formed() {
    for (name, _) in FILES {
        let file = load(name);
        for (saga, def) in &file.sagas {
            let mut seen = BTreeSet::new();
            for step in &def.steps {
                protocol::validate_token(&step.id).unwrap();
                protocol::validate_token(&step.service).unwrap();
                for dep in &step.depends_on {
                    assert!(
                        seen.contains(dep),
                        "{saga}.{}: unknown or later dependency {dep}",
                        step.id
                    );
                }
                if let Some(policy) = &step.retry {
                    assert!(
                        file.retry_policies.contains_key(policy),
                        "{saga}.{}: no retry policy {policy}",
                        step.id
                    );
                }
                assert!(
                    seen.insert(step.id.clone()),
                    "{saga}: duplicate step {}",
                    step.id
                );
            }
        }
    }
}

#[tokio::test]
async fn every_step_has_a_handler_in_its_binary() {
    let dir = tempfile::tempdir().unwrap();
    for (name, binary) in FILES {
        let file = load(name);
        for step in &file.sagas[*name].steps {
            let service = binary
                .iter()
                .find(|s| s.name == step.service)
                .unwrap_or_else(|| {
                    panic!(
                        "{name}.{}: service {} is not run by the saga's binary",
                        step.id, step.service
                    )
                });
            let env = ServiceEnv {
                ledger: Arc::new(ledger::Ledger::open(dir.path(), service.name).unwrap()),
                worker: Arc::from("test"),
            };
            let builder = (service.register)(Worker::builder(service.name), &env);
            let mut calls = vec![(TaskKind::Action, step.operation.clone())];
            if let Some(c) = &step.compensation {
                calls.push((TaskKind::Compensation, c.clone()));
            }
            for (kind, op) in calls {
                let outcome = builder.run_one(task(name, step, kind, &op)).await;
                if let Outcome::Retryable { error, .. } = &outcome {
                    assert!(
                        !error.contains("handler"),
                        "{name}.{} {kind} {op}: {error}",
                        step.id
                    );
                }
            }
        }
    }
    // Every action that ran with an empty input applied an effect.
    assert!(!read_dir(dir.path()).is_empty());
}
