//! Lifecycle events: CloudEvents on the `JETSAGA_EVENTS` stream, written
//! through the outbox (exactly once each, even across an engine SIGKILL),
//! and `jetsaga events tail`.

mod common;

use async_nats::jetstream::{self, consumer::pull};
use common::World;
use futures::StreamExt;
use jetsaga_protocol::api::SagaStatus;
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;

/// Fails at its second step (`boom`), after `first` succeeded.
const DOOMED: &str = r#"
sagas:
  doomed:
    step_events: true
    steps:
      - id: first
        service: gate
        operation: work
        compensation: undo
        timeout: 30s
      - id: second
        service: gate
        operation: boom
        timeout: 30s
        depends_on: [first]
"#;

async fn gate_worker(world: &World, release: Arc<Notify>) -> common::WorkerGuard {
    world
        .worker(
            Worker::builder("gate")
                .handler("work", |_: TaskContext, _: Value| async {
                    Ok(json!("done"))
                })
                .handler("wait", move |_: TaskContext, _: Value| {
                    let r = release.clone();
                    async move {
                        r.notified().await;
                        Ok(json!("released"))
                    }
                })
                .handler("boom", |_: TaskContext, _: Value| async {
                    Err::<Value, _>(StepError::fatal("no capacity"))
                })
                .compensation("undo", |_: TaskContext, _: Value| async {
                    Ok(json!("undone"))
                }),
        )
        .await
}

/// Every event of saga `id` on the events stream, in stream order, once at
/// least `expected` of them arrived, read again after a short grace period
/// so that late duplicates show.
async fn events_of(world: &World, id: &str, expected: usize) -> Vec<(String, Value)> {
    let js = jetstream::new(world.nats.client().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let found = stored_events(&js, id).await;
        if found.len() >= expected {
            // A deliberate grace period: a duplicate published late has no
            // event of its own to await, so give it a moment, then read again.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return stored_events(&js, id).await;
        }
        if tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The events of saga `id` the events stream holds now, in stream order.
async fn stored_events(js: &jetstream::Context, id: &str) -> Vec<(String, Value)> {
    let stream = js
        .get_stream("JETSAGA_EVENTS")
        .await
        .expect("events stream");
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: "jetsaga.event.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch");
    let mut found = Vec::new();
    while let Some(msg) = batch.next().await {
        let msg = msg.expect("message");
        let event: Value = serde_json::from_slice(&msg.payload).expect("JSON event");
        if event["subject"] == id {
            found.push((msg.subject.to_string(), event));
        }
    }
    found
}

/// Checks the CloudEvent fields and the subject; returns the type suffixes
/// (with the step id for step events).
fn check(saga_name: &str, id: &str, events: &[(String, Value)]) -> Vec<String> {
    let mut ids = HashSet::new();
    events
        .iter()
        .map(|(subject, e)| {
            assert_eq!(e["specversion"], "1.0", "{e}");
            assert_eq!(e["source"], "jetsaga/jetsaga", "{e}");
            assert_eq!(e["datacontenttype"], "application/json", "{e}");
            assert_eq!(e["subject"], id, "{e}");
            let ev_id = e["id"].as_str().expect("id");
            assert!(ids.insert(ev_id.to_string()), "event {ev_id} twice");
            let time = e["time"].as_str().expect("time");
            assert!(
                time.len() >= 20 && &time[10..11] == "T" && time.ends_with('Z'),
                "{time}"
            );
            let ty = e["type"].as_str().expect("type");
            let suffix = ty.strip_prefix("io.jetsaga.").expect("io.jetsaga. type");
            assert_eq!(subject, &format!("jetsaga.event.{saga_name}.{suffix}"));
            assert_eq!(e["data"]["saga_id"], id);
            assert_eq!(e["data"]["saga_name"], saga_name);
            match e["data"]["step"].as_str() {
                Some(step) => format!("{suffix}:{step}"),
                None => suffix.to_string(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_and_compensated_sagas_publish_their_lifecycle() {
    let world = World::start(&[]).await;
    world.apply_yaml(common::TWO_STEPS).await;
    world.apply_yaml(DOOMED).await;
    let release = Arc::new(Notify::new());
    let _worker = gate_worker(&world, release.clone()).await;

    let ok = world.start_saga("two_steps", json!({})).await;
    release.notify_one();
    assert_eq!(world.finished(&ok).await.saga.status, SagaStatus::Completed);
    let bad = world.start_saga("doomed", json!({})).await;
    let done = world.finished(&bad).await;
    assert!(matches!(done.saga.status, SagaStatus::Compensated { .. }));

    let ok_events = events_of(&world, &ok, 4).await;
    assert_eq!(
        check("two_steps", &ok, &ok_events),
        [
            "saga.started",
            "step.succeeded:first",
            "step.succeeded:second",
            "saga.completed"
        ]
    );
    let bad_events = events_of(&world, &bad, 6).await;
    assert_eq!(
        check("doomed", &bad, &bad_events),
        [
            "saga.started",
            "step.succeeded:first",
            "step.failed:second",
            "saga.compensating",
            "step.compensated:first",
            "saga.compensated"
        ]
    );
    let failed = &bad_events[2].1["data"];
    assert_eq!(failed["kind"], "action");
    assert_eq!(failed["attempt"], 1);
    assert!(failed["error"].as_str().unwrap().contains("no capacity"));

    // `jetsaga events tail --all --saga two_steps` prints the four events.
    let mut tail = tokio::process::Command::new(jetsaga_tests::bin_path("jetsaga"))
        .args([
            "--nats-url",
            &world.nats.url(),
            "events",
            "tail",
            "--all",
            "--saga",
            "two_steps",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn jetsaga events tail");
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.len() < 4 {
            let line = lines.next_line().await.unwrap().expect("a line");
            seen.push(line);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("events tail printed only {seen:?}"));
    tail.kill().await.unwrap();
    let types: Vec<&str> = seen
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        types,
        [
            "saga.started",
            "step.succeeded",
            "step.succeeded",
            "saga.completed"
        ]
    );
    assert!(seen.iter().all(|l| l.contains(&ok)), "{seen:?}");
}

/// Like `two_steps`, without `step_events`.
const QUIET: &str = r#"
sagas:
  quiet:
    steps:
      - { id: first, service: gate, operation: work, compensation: undo, timeout: 30s }
      - { id: second, service: gate, operation: wait, timeout: 30s, depends_on: [first] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_events_are_published_only_when_the_definition_asks() {
    let world = World::start(&[]).await;
    world.apply_yaml(QUIET).await;
    let release = Arc::new(Notify::new());
    let _worker = gate_worker(&world, release.clone()).await;
    let id = world.start_saga("quiet", json!({})).await;
    release.notify_one();
    assert_eq!(world.finished(&id).await.saga.status, SagaStatus::Completed);
    // Published in order: a step event would come before saga.completed.
    let events = events_of(&world, &id, 2).await;
    assert_eq!(
        check("quiet", &id, &events),
        ["saga.started", "saga.completed"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_an_engine_kill_exactly_once() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(common::TWO_STEPS).await;
    world.apply_yaml(DOOMED).await;
    let release = Arc::new(Notify::new());
    let _worker = gate_worker(&world, release.clone()).await;

    let id = world.start_saga("two_steps", json!({})).await;
    jetsaga_tests::wait_until("second step running", Duration::from_secs(20), || {
        let c = world.client.clone();
        let id = id.clone();
        async move {
            let d = c.get(&id).await.ok()?;
            common::step_is(&d, "second", "running").then_some(())
        }
    })
    .await;
    world.engine.kill();
    release.notify_one();
    world.engine.restart();
    assert_eq!(world.finished(&id).await.saga.status, SagaStatus::Completed);

    let events = events_of(&world, &id, 4).await;
    assert_eq!(
        check("two_steps", &id, &events),
        [
            "saga.started",
            "step.succeeded:first",
            "step.succeeded:second",
            "saga.completed"
        ]
    );
}
