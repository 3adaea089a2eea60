//! Size limits of definitions (`max_definition_*`): an oversized definition
//! is refused at every door with `E-DEF-TOO-LARGE`, and the engine keeps
//! serving; all against a real engine process and nats-server.

mod common;

use common::{World, text, write};
use jetsaga_protocol::api::SagaStatus;
use jetsaga_tests::{NatsServer, bin_path, free_port, run_command};
use serde_json::json;
use std::time::Duration;

/// A saga `wide` of `n` steps in a chain (fan-out 1).
fn chain(n: usize) -> String {
    let mut yaml = String::from("sagas:\n  wide:\n    steps:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "      - id: s{i}\n        service: echo\n        operation: echo\n"
        ));
        if i > 0 {
            yaml.push_str(&format!("        depends_on: [s{}]\n", i - 1));
        }
    }
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_definition_is_refused_and_the_engine_keeps_serving() {
    let world = World::start(&[
        "--max-definition-steps",
        "20",
        "--http-listen",
        "127.0.0.1:0",
    ])
    .await;
    let addr = world.engine.http_addr();
    let dir = tempfile::tempdir().unwrap();

    // Within the CLI's default limits, over the engine's: the engine refuses it.
    let file = write(dir.path(), "wide.yaml", &chain(30));
    let out = world.cli(&["def", "apply", file.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("E-DEF-TOO-LARGE")
            && err.contains("the saga has 30 steps; at most 20 (max_definition_steps)"),
        "{err}"
    );
    common::wait_metric(
        &addr,
        r#"engine_rejected_messages_total{reason="E-INVALID-DEFINITION"}"#,
        1.0,
    )
    .await;

    // Over the CLI's own default limit: refused before anything is sent.
    let file = write(dir.path(), "wider.yaml", &chain(201));
    for cmd in ["validate", "apply"] {
        let out = world.cli(&["def", cmd, file.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "def {cmd}: {err}");
        assert!(
            err.contains("E-DEF-TOO-LARGE")
                && err.contains("the saga has 201 steps; at most 200 (max_definition_steps)"),
            "def {cmd}: {err}"
        );
    }

    // Nothing was stored, and ordinary sagas still run.
    let defs = world.client.definitions().await.expect("def list");
    assert!(defs.iter().all(|d| d.name != "wide"), "{defs:?}");
    world.apply_yaml(common::ONE_STEP).await;
    let _w = world.echo_worker().await;
    let id = world.start_saga("one_step", json!({"n": 1})).await;
    let done = world.finished(&id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_definitions_file_at_start_up_names_the_limit() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "wide.yaml", &chain(12));
    let data = dir.path().join("data");
    let port = free_port().to_string();
    let out = run_command(
        &bin_path("jetsaga"),
        &[
            "--nats-url",
            &nats.url(),
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--http-listen",
            &format!("127.0.0.1:{port}"),
            "--definitions",
            file.to_str().unwrap(),
            "--max-definition-fan-out",
            "4",
            "--max-definition-steps",
            "10",
        ],
        &[],
        Duration::from_secs(60),
    );
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("E-DEF-TOO-LARGE")
            && err.contains("wide.yaml")
            && err.contains("the saga has 12 steps; at most 10 (max_definition_steps)"),
        "{err}"
    );
}
