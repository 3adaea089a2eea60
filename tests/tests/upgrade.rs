//! An installation upgraded from the idempotency bucket to the outcomes
//! stream (docs/PROTOCOL.md, "Upgrading from the idempotency bucket"): the
//! engine reads the results of workers of the earlier version, which
//! publish every result on the results subject; a worker of this version
//! replays an outcome an earlier worker recorded in the bucket instead of
//! running its handler again, and stops looking there once the bucket is
//! deleted.

mod common;

use async_nats::jetstream::{self, kv};
use common::World;
use jetsaga_protocol::api::SagaStatus;
use jetsaga_protocol::{Outcome, Subjects, TaskKind, TaskResult, idempotency_key};
use jetsaga_tests::wait_until;
use jetsaga_worker::{TaskContext, Worker};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const DEFINITIONS: &str = r#"
sagas:
  pay:
    steps:
      - id: charge
        service: payments
        operation: charge
        timeout: 60s
"#;

/// The bucket as workers of the earlier version created it.
async fn legacy_bucket(js: &jetstream::Context) -> kv::Store {
    js.create_key_value(kv::Config {
        bucket: Subjects::new("jetsaga").idempotency_bucket(),
        history: 1,
        max_age: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await
    .expect("create the earlier version's bucket")
}

/// Starts a `pay` saga and waits until its charge task is out.
async fn started(world: &World) -> String {
    let id = world.start_saga("pay", json!({})).await;
    wait_until(
        "the charge task to be dispatched",
        Duration::from_secs(20),
        || {
            let world = &world;
            let id = id.clone();
            async move {
                let d = world.client.get(&id).await.ok()?;
                (!d.saga.steps[0].attempts.is_empty()).then_some(())
            }
        },
    )
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_workers_results_and_records_still_count() {
    let world = World::start(&[]).await;
    world.apply_yaml(DEFINITIONS).await;
    let client = world.nats.client().await;
    let js = jetstream::new(client.clone());
    let bucket = legacy_bucket(&js).await;
    let record = |saga: &str, output: Value| {
        let bucket = bucket.clone();
        let key = idempotency_key(saga, "charge", TaskKind::Action);
        async move {
            let outcome = Outcome::Ok { output };
            bucket
                .put(&key, serde_json::to_vec(&outcome).unwrap().into())
                .await
                .unwrap();
        }
    };

    // A worker of the earlier version recorded its outcome in the bucket
    // and published the result on the results subject, as every result
    // went before: the engine applies it. (It died before acknowledging
    // the task, which stays queued.)
    let old = started(&world).await;
    record(&old, json!({"by": "earlier worker"})).await;
    let result = TaskResult {
        saga_id: old.clone(),
        step_id: "charge".into(),
        kind: TaskKind::Action,
        attempt: 1,
        service: "payments".into(),
        outcome: Outcome::Ok {
            output: json!({"by": "earlier worker"}),
        },
        replayed: false,
        worker: "old".into(),
    };
    js.publish(
        "jetsaga.result.payments",
        serde_json::to_vec(&result).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let done = world.finished(&old).await;
    assert_eq!(done.saga.status, SagaStatus::Completed, "{done:?}");
    assert_eq!(
        done.saga.steps[0].output,
        Some(json!({"by": "earlier worker"}))
    );

    // Another one recorded its outcome and died before publishing it.
    let recorded = started(&world).await;
    record(&recorded, json!({"charge_id": "from the bucket"})).await;

    // A worker of this version replays both records from the bucket: its
    // handler runs for neither.
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let worker = Worker::builder("payments")
        .handler("charge", move |_: TaskContext, _: Value| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(json!({"charge_id": "ran now"}))
            }
        })
        .build(client.clone())
        .await
        .expect("a worker builds");
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let done = world.finished(&recorded).await;
    assert_eq!(done.saga.status, SagaStatus::Completed, "{done:?}");
    assert_eq!(
        done.saga.steps[0].output,
        Some(json!({"charge_id": "from the bucket"}))
    );
    let subjects = Subjects::new("jetsaga");
    wait_until(
        "both queued tasks to be handled",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            let subjects = subjects.clone();
            async move {
                let mut consumer: jetstream::consumer::PullConsumer = js
                    .get_consumer_from_stream(
                        subjects.service_consumer("payments"),
                        subjects.tasks_stream(),
                    )
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a recorded step ran again");

    // The bucket deleted (its records aged out): the worker stops looking
    // there and goes on.
    js.delete_key_value(subjects.idempotency_bucket())
        .await
        .unwrap();
    let fresh = started(&world).await;
    let done = world.finished(&fresh).await;
    assert_eq!(done.saga.status, SagaStatus::Completed, "{done:?}");
    assert_eq!(
        done.saga.steps[0].output,
        Some(json!({"charge_id": "ran now"}))
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    stop.cancel();
    running.await.unwrap().unwrap();
}
