//! Every door into the engine (API client, CLI, `nats req`, a JetStream
//! publish) and what it does with bad input, all against a real engine
//! process and nats-server.

mod common;

use common::{World, step_states};
use futures::StreamExt;
use jetsaga_protocol::api::{ListRequest, SagaState};
use jetsaga_tests::{ChildProcess, NatsServer, bin_path, free_port};
use jetsaga_worker::protocol::{ApiReply, StartReply};
use jetsaga_worker::{TaskContext, Worker};
use serde_json::{Value, json};
use std::time::Duration;

/// How long the waits below allow.
const READY: Duration = Duration::from_secs(20);

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_with_one_key_give_one_saga() {
    // The starts race into the partition together, most of them in one
    // batch, where the first is not yet in the store when the others are
    // judged: still one saga, created once.
    let world = World::start(&[]).await;
    world.apply_yaml(common::ONE_STEP).await;
    let _w = world.echo_worker().await;
    let starts = (0..48).map(|_| {
        let client = world.client.clone();
        async move {
            client
                .start("one_step", json!({"n": 7}), Some("same-key"))
                .await
                .expect("start")
        }
    });
    let replies = futures::future::join_all(starts).await;
    let ids: std::collections::BTreeSet<&str> =
        replies.iter().map(|r| r.saga_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one saga for one key: {ids:?}");
    assert_eq!(replies.iter().filter(|r| r.created).count(), 1);
    let id = replies[0].saga_id.clone();
    world.finished(&id).await;
    assert_eq!(world.sagas_of("one_step").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_gives_the_same_saga_through_every_door() {
    let world = World::start(&[]).await;
    world.apply_yaml(common::ONE_STEP).await;
    let _w = world.echo_worker().await;

    // API client.
    let a = world
        .client
        .start("one_step", json!({"n": 1}), Some("order-1"))
        .await
        .unwrap();
    assert!(a.created);
    let b = world
        .client
        .start("one_step", json!({"n": 1}), Some("order-1"))
        .await
        .unwrap();
    assert_eq!((b.saga_id.as_str(), b.created), (a.saga_id.as_str(), false));

    // CLI.
    let out = world.cli(&[
        "saga",
        "start",
        "one_step",
        "--input",
        r#"{"n":1}"#,
        "--idempotency-key",
        "order-1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), a.saga_id);

    // `nats req` equivalent: a core request with the Idempotency-Key header.
    let nats = world.nats.client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Idempotency-Key", "order-1");
    let reply = nats
        .request_with_headers(
            "jetsaga.api.saga.start",
            headers,
            r#"{"saga":"one_step","input":{"n":1}}"#.into(),
        )
        .await
        .unwrap();
    let reply: ApiReply<StartReply> = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        reply,
        ApiReply::Ok(StartReply {
            saga_id: a.saga_id.clone(),
            created: false,
            queued: false
        })
    );

    // JetStream publish with Nats-Msg-Id = key, twice: exactly one saga.
    let js = async_nats::jetstream::new(nats.clone());
    for _ in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-2");
        js.publish_with_headers(
            "jetsaga.start.one_step",
            headers,
            r#"{"input":{"n":2}}"#.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // Wait for the durable start to be applied, then the API sees that key's saga.
    let by_key =
        jetsaga_tests::wait_until("durable start applied", Duration::from_secs(20), || {
            let c = world.client.clone();
            async move {
                let r = c
                    .start("one_step", json!({"n": 2}), Some("order-2"))
                    .await
                    .ok()?;
                (!r.created).then_some(r)
            }
        })
        .await;
    world.finished(&by_key.saga_id).await;
    world.finished(&a.saga_id).await;
    let all = world
        .client
        .list(&ListRequest {
            name: Some("one_step".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "one saga per key: {all:?}");
    assert!(all.iter().all(|s| s.state == SagaState::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_start_repeated_past_the_duplicate_window_is_still_one_saga() {
    // A duplicate window of 1 s on the engine's streams: JetStream keeps the
    // repeat below, and only the engine's key table can tell it is one.
    let world = World::start(&["--duplicate-window", "1s"]).await;
    world.apply_yaml(common::ONE_STEP).await;
    let _w = world.echo_worker().await;
    let nats = world.nats.client().await;
    let js = async_nats::jetstream::new(nats.clone());
    let publish = || async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-3");
        js.publish_with_headers(
            "jetsaga.start.one_step",
            headers,
            r#"{"input":{"n":3}}"#.into(),
        )
        .await
        .expect("publish")
        .await
        .expect("the starts stream's acknowledgement")
    };
    let first = publish().await;
    assert!(!first.duplicate);
    let started = jetsaga_tests::wait_until("the first start's saga", READY, || {
        let client = world.client.clone();
        async move { client.get_by_key("order-3").await.ok() }
    })
    .await;
    let id = started.saga.id.clone();
    world.finished(&id).await;

    // The same start again until JetStream stops dropping it as a
    // duplicate: the window has passed, and that copy is stored for the
    // engine.
    let second = jetsaga_tests::wait_until("the duplicate window to pass", READY, || async {
        let ack = publish().await;
        (!ack.duplicate).then_some(ack)
    })
    .await;
    assert!(second.sequence > first.sequence);
    // The engine has taken it once the work queue is empty again.
    jetsaga_tests::wait_until("the engine to take the repeat", READY, || async {
        let mut stream = js.get_stream("JETSAGA_STARTS").await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await;

    let sagas = world.sagas_of("one_step").await;
    assert_eq!(sagas.len(), 1, "one saga for one key: {sagas:?}");
    assert_eq!(sagas[0].id, id);
    let by_key = world.client.get_by_key("order-3").await.unwrap();
    assert_eq!(by_key.saga.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_engine_keeps_serving() {
    let world = World::start(&["--max-payload", "4096"]).await;
    world.apply_yaml(common::ONE_STEP).await;
    let _w = world.echo_worker().await;

    // Malformed YAML: validate names the file and the place.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "sagas:\n  x:\n    steps:\n      - id: a\n        service: s\n        operation: o\n        depends_on: [nope]\n").unwrap();
    let out = world.cli(&["def", "validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let msg = stderr(&out);
    assert!(
        msg.contains("bad.yaml")
            && msg.contains("`x`")
            && msg.contains("depends_on")
            && msg.contains("nope"),
        "{msg}"
    );
    std::fs::write(&bad, "sagas: [unclosed").unwrap();
    let out = world.cli(&["def", "apply", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.yaml: line"), "{}", stderr(&out));

    // Unknown saga name.
    let err = world
        .client
        .start("no_such_saga", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "E-UNKNOWN-SAGA");
    assert!(
        err.to_string().contains("one_step"),
        "lists the known sagas: {err}"
    );

    // Invalid JSON input, from the CLI and as a raw request.
    let out = world.cli(&["saga", "start", "one_step", "--input", "{not json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("E-BAD-INPUT"), "{}", stderr(&out));
    let nats = world.nats.client().await;
    let reply = nats
        .request("jetsaga.api.saga.start", "\u{1}garbage".into())
        .await
        .unwrap();
    let reply: ApiReply<StartReply> = serde_json::from_slice(&reply.payload).unwrap();
    assert!(matches!(reply, ApiReply::Error(e) if e.code == "E-BAD-REQUEST"));

    // A list cursor that is not a saga id.
    let reply = nats
        .request("jetsaga.api.saga.list", r#"{"before": "garbage"}"#.into())
        .await
        .unwrap();
    let reply: ApiReply<serde_json::Value> = serde_json::from_slice(&reply.payload).unwrap();
    let ApiReply::Error(e) = reply else {
        panic!("a garbage cursor is an error: {reply:?}")
    };
    assert_eq!(e.code, "E-BAD-REQUEST");
    assert!(
        e.message.contains("UUIDv7"),
        "says what is expected: {}",
        e.message
    );

    // An operation the API does not have.
    let reply = nats
        .request("jetsaga.api.saga.status", "{}".into())
        .await
        .unwrap();
    let reply: ApiReply<serde_json::Value> = serde_json::from_slice(&reply.payload).unwrap();
    let ApiReply::Error(e) = reply else {
        panic!("an unknown operation is an error: {reply:?}")
    };
    assert_eq!(e.code, "E-UNKNOWN-OPERATION");
    assert!(
        e.message.contains("\"saga.status\"") && e.message.contains("breaker.reset"),
        "names the operation and lists the known ones: {}",
        e.message
    );

    // Input over the configured limit.
    let big = "x".repeat(5000);
    let err = world
        .client
        .start("one_step", json!({ "blob": big }), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "E-PAYLOAD-TOO-LARGE");

    // Garbage on the results and starts streams is refused and counted in the log.
    let js = async_nats::jetstream::new(nats.clone());
    js.publish("jetsaga.result.echo", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("jetsaga.start.one_step", "{\"input\": ".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish(
        "jetsaga.result.echo",
        serde_json::to_vec(&json!({"saga_id": "nope", "step_id": "only", "kind": "action", "attempt": 1, "service": "echo", "outcome": {"status": "ok"}}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    world
        .engine
        .process
        .wait_for_log("reason=\"unknown_saga\"", Duration::from_secs(20));

    // A worker answering for a step of another service is refused too.
    let other = world.start_saga("one_step", json!({})).await;
    world.finished(&other).await;
    let forged = json!({"saga_id": other, "step_id": "only", "kind": "action", "attempt": 1,
        "service": "payments", "outcome": {"status": "ok"}});
    js.publish(
        "jetsaga.result.payments",
        serde_json::to_vec(&forged).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    world
        .engine
        .process
        .wait_for_log("reason=\"wrong_service\"", Duration::from_secs(20));
    let log = world.engine.process.log();
    assert!(
        log.contains("reason=\"malformed\""),
        "garbage was not reported"
    );

    // Still serving.
    let id = world.start_saga("one_step", json!({"ok": true})).await;
    let done = world.finished(&id).await;
    assert_eq!(
        done.saga.status.name(),
        "completed",
        "{:?}",
        step_states(&done)
    );
}

const V1: &str = r#"
sagas:
  versioned:
    steps:
      - id: a
        service: gate
        operation: wait
        timeout: 30s
"#;
const V2: &str = r#"
sagas:
  versioned:
    steps:
      - id: a
        service: gate
        operation: wait
        timeout: 30s
      - id: b
        service: gate
        operation: wait
        timeout: 30s
        depends_on: [a]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_saga_keeps_the_definition_version_it_started_with() {
    let world = World::start(&[]).await;
    world.apply_yaml(V1).await;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let _w = world
        .worker(
            Worker::builder("gate").handler("wait", move |_: TaskContext, _: Value| {
                let g = g.clone();
                async move {
                    g.acquire().await.expect("open").forget();
                    Ok(json!("ok"))
                }
            }),
        )
        .await;
    let old = world.start_saga("versioned", json!({})).await;
    world.apply_yaml(V2).await;
    let defs = world.client.definitions().await.unwrap();
    assert_eq!(
        defs.iter().find(|d| d.name == "versioned").unwrap().version,
        2
    );
    // Re-applying the same content is not a new version.
    world.apply_yaml(V2).await;
    assert_eq!(world.client.definitions().await.unwrap()[0].version, 2);
    let new = world.start_saga("versioned", json!({})).await;
    gate.add_permits(3);
    let old = world.finished(&old).await;
    let new = world.finished(&new).await;
    assert_eq!((old.saga.definition_version, old.saga.steps.len()), (1, 1));
    assert_eq!((new.saga.definition_version, new.saga.steps.len()), (2, 2));
    assert_eq!(old.saga.status.name(), "completed");
    assert_eq!(new.saga.status.name(), "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_list_watch_and_cancel() {
    let world = World::start(&[]).await;
    world.apply_yaml(common::ONE_STEP).await;
    let _w = world.echo_worker().await;

    let out = world.cli(&[
        "saga",
        "start",
        "one_step",
        "--input",
        r#"{"hello":"world"}"#,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = stdout(&out);
    let out = world.cli(&["saga", "watch", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("completed"));
    let out = world.cli(&["saga", "status", &id]);
    assert!(out.status.success());
    let table = stdout(&out);
    assert!(
        table.contains("only") && table.contains("echo") && table.contains("succeeded"),
        "{table}"
    );
    let out = world.cli(&[
        "--output",
        "json",
        "saga",
        "list",
        "--state",
        "completed",
        "--saga",
        "one_step",
    ]);
    let listed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    let out = world.cli(&["saga", "list", "--state", "bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown state"), "{}", stderr(&out));
    let out = world.cli(&["saga", "cancel", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("E-NOT-APPLICABLE"));
    let out = world.cli(&["saga", "status", "does-not-exist"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("E-NOT-FOUND"));
    let out = world.cli(&["def", "list"]);
    assert!(stdout(&out).contains("one_step"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetsaga_dev_starts_nats_and_engine_and_stops_cleanly_on_sigterm() {
    jetsaga_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let defs = jetsaga_tests::workspace_root().join("examples/definitions");
    let server = jetsaga_tests::nats_server_binary();
    let mut dev = ChildProcess::spawn(
        "dev",
        &bin_path("jetsaga"),
        &[
            "dev",
            "--nats-port",
            &port.to_string(),
            "--nats-server",
            server.to_str().unwrap(),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--definitions",
            defs.to_str().unwrap(),
            // dev serves HTTP on 127.0.0.1:8080 by default; any free port here.
            "--http-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    dev.wait_for_log("engine ready", common::READY);
    assert!(dev.log().contains("http listening addr=127.0.0.1:"));
    let url = format!("nats://127.0.0.1:{port}");
    let client = jetsaga_cli::client::Client::connect(&url, "jetsaga")
        .await
        .unwrap();
    let names: Vec<String> = client
        .definitions()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(
        names.contains(&"deploy_environment".to_string()),
        "{names:?}"
    );
    let mut progress = client.nats().subscribe("jetsaga.progress.>").await.unwrap();
    let id = client
        .start("deploy_environment", json!({}), None)
        .await
        .unwrap()
        .saga_id;
    assert!(
        progress
            .next()
            .await
            .unwrap()
            .subject
            .as_str()
            .ends_with(&id)
    );
    drop(client);
    let status = dev.terminate();
    assert!(
        status.success(),
        "dev exited with {status:?}\n{}",
        dev.log()
    );
    assert!(dev.log().contains("engine stopped"));
    // The nats-server child is gone with it: its port is free again.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nats-server still listening"
    );
    let _ = NatsServer::start; // the harness server is not used here: dev starts its own
}
