//! Retention of finished sagas against the real `jetsaga` binary: sagas that
//! finished longer than `--retention` ago disappear (API and metric say so),
//! an unfinished one stays however old, and the idempotency key of a pruned
//! saga starts a new saga.

mod common;

use common::{FINISH, World, metric_value};
use jetsaga_protocol::api::{ListRequest, SagaState};
use jetsaga_tests::wait_until;
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::time::Duration;

/// `quick` finishes as soon as the `retained` worker answers; `stuck` waits
/// on a service no worker serves, with timeouts far beyond the test.
const DEFINITIONS: &str = r#"
sagas:
  quick:
    steps:
      - id: only
        service: retained
        operation: work
        timeout: 30s
  stuck:
    timeout: 1h
    steps:
      - id: wait
        service: nobody
        operation: work
        timeout: 1h
"#;

/// The engine's retention in this test.
const RETENTION: &str = "2s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_pruned_after_the_retention_and_free_their_keys() {
    let world = World::start(&["--retention", RETENTION, "--http-listen", "127.0.0.1:0"]).await;
    let http = world.engine.http_addr();
    world.apply_yaml(DEFINITIONS).await;
    let _worker = world
        .worker(
            Worker::builder("retained")
                .handler("work", |_ctx: TaskContext, input: Value| async move {
                    Ok::<_, StepError>(input)
                }),
        )
        .await;
    assert_eq!(
        metric_value(&http, "engine_pruned_sagas_total").await,
        Some(0.0),
        "the counter is exported from the start"
    );

    // The unfinished saga comes first: it is older than every finished one.
    let stuck = world
        .client
        .start("stuck", json!({}), Some("stuck-key"))
        .await
        .expect("start stuck");
    let mut finished = Vec::new();
    for i in 0..3 {
        let key = format!("order-{i}");
        let reply = world
            .client
            .start("quick", json!({ "n": i }), Some(&key))
            .await
            .expect("start quick");
        let detail = world.finished(&reply.saga_id).await;
        assert_eq!(detail.saga.status.name(), "completed");
        finished.push((key, reply.saga_id));
    }

    // Each finished saga disappears once its retention ran out.
    for (_, id) in &finished {
        wait_until(&format!("saga {id} pruned"), FINISH, || async {
            match world.client.get(id).await {
                Err(e) if e.code() == "E-NOT-FOUND" => Some(()),
                Ok(_) => None,
                Err(e) => panic!("saga get {id}: {e}"),
            }
        })
        .await;
    }
    let pruned = wait_until("the pruned counter to count 3", FINISH, || async {
        metric_value(&http, "engine_pruned_sagas_total")
            .await
            .filter(|n| *n >= 3.0)
    })
    .await;
    assert_eq!(pruned, 3.0, "only the three finished sagas were pruned");
    let completed = world
        .client
        .list(&ListRequest {
            state: Some(SagaState::Completed),
            ..ListRequest::default()
        })
        .await
        .expect("list");
    assert!(completed.is_empty(), "still listed: {completed:?}");

    // The unfinished saga is older than the retention and still there,
    // still bound to its key.
    let detail = world.client.get(&stuck.saga_id).await.expect("stuck saga");
    assert_eq!(detail.saga.status.name(), "running");
    let again = world
        .client
        .start("stuck", json!({}), Some("stuck-key"))
        .await
        .expect("start stuck again");
    assert_eq!(
        (again.saga_id.as_str(), again.created),
        (stuck.saga_id.as_str(), false)
    );

    // A pruned saga's key starts a new saga.
    let (key, old_id) = &finished[0];
    let reply = world
        .client
        .start("quick", json!({ "n": 0 }), Some(key))
        .await
        .expect("start with a freed key");
    assert!(reply.created, "the key of a pruned saga starts a new saga");
    assert_ne!(&reply.saga_id, old_id);
    let detail = world.finished(&reply.saga_id).await;
    assert_eq!(detail.saga.status.name(), "completed");
    assert_eq!(detail.saga.idempotency_key.as_deref(), Some(key.as_str()));

    // The engine said it pruned them.
    world.engine.process.wait_for_log(
        "pruned finished sagas past their retention",
        Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_engines_store_compacts_and_the_engine_resumes_on_it() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(common::ONE_STEP).await;
    let _echo = world.echo_worker().await;
    // 120 sagas of ~32 KiB input each; all but 8 are deleted again.
    let pad = "x".repeat(32 * 1024);
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(
            world
                .start_saga("one_step", json!({ "i": i, "pad": pad }))
                .await,
        );
    }
    for id in &ids {
        world.finished(id).await;
    }
    let (kept, deleted) = ids.split_at(8);
    for id in deleted {
        world
            .client
            .delete(id)
            .await
            .expect("delete a finished saga");
    }
    let data_dir = world.engine.data_dir.display().to_string();

    // The running engine holds the store: refused, nothing changed.
    let out = world.cli(&["store", "compact", "--data-dir", &data_dir]);
    assert!(!out.status.success());
    let stderr = common::text(&out.stderr);
    assert!(stderr.contains("E-STORE-LOCKED"), "{stderr}");

    assert!(world.engine.process.terminate().success());
    let out = world.cli(&[
        "--output",
        "json",
        "store",
        "compact",
        "--data-dir",
        &data_dir,
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["sagas"], 8, "{report}");
    let (before, after) = (
        report["before_bytes"].as_u64().unwrap(),
        report["after_bytes"].as_u64().unwrap(),
    );
    // The deleted sagas' inputs alone were ~3.5 MiB.
    assert!(before > after + 3 * 1024 * 1024, "{report}");
    assert_eq!(report["old_copy"], Value::Null);
    let leftovers: Vec<_> = std::fs::read_dir(world.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("engine."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The engine resumes on the compacted store: the kept sagas are there,
    // the deleted ones are not, and new sagas run.
    world.engine.restart();
    for id in kept {
        let detail = world.client.get(id).await.expect("kept saga");
        assert_eq!(detail.saga.status.name(), "completed");
        assert_eq!(
            detail.saga.input["pad"].as_str().map(str::len),
            Some(pad.len())
        );
    }
    let gone = world
        .client
        .get(&deleted[0])
        .await
        .expect_err("a deleted saga is not in the compacted store");
    assert_eq!(gone.code(), "E-NOT-FOUND", "{gone}");
    let id = world.start_saga("one_step", json!({ "after": true })).await;
    assert_eq!(world.finished(&id).await.saga.status.name(), "completed");
}
