//! End to end: retrying finished sagas and deleting them, against the real
//! `jetsaga` engine process and nats-server, with in-process SDK workers
//! whose fault the test fixes between the failure and the retry (a fault in
//! the saga input would strike again on the retry).

mod common;

use common::{World, step, step_states};
use jetsaga_protocol::api::{AttemptOutcome, SagaStatus};
use jetsaga_worker::protocol::TaskKind;
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const FIXABLE: &str = r#"
sagas:
  fixable:
    steps:
      - id: reserve
        service: fixable
        operation: reserve
        compensation: release
        timeout: 10s
        retry: { max_attempts: 2, initial_delay: 100ms, max_delay: 1s, backoff_factor: 2, jitter: 0 }
      - id: charge
        service: fixable
        operation: charge
        compensation: refund
        timeout: 10s
        retry: { max_attempts: 2, initial_delay: 100ms, max_delay: 1s, backoff_factor: 2, jitter: 0 }
        depends_on: [reserve]
"#;

/// What the test flips to "fix the cause", and what the handlers saw.
#[derive(Default)]
struct Faults {
    /// `charge` fails fatally while set.
    charge_broken: AtomicBool,
    /// `release` (the compensation of `reserve`) fails fatally while set.
    release_broken: AtomicBool,
    /// How many times a handler ran, by idempotency key. A task whose
    /// outcome the SDK replays from its record does not run the handler.
    runs: Mutex<BTreeMap<String, u32>>,
}

impl Faults {
    fn ran(&self, ctx: &TaskContext) {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(ctx.idempotency_key().to_string())
            .or_default() += 1;
    }

    fn runs(&self) -> BTreeMap<String, u32> {
        self.runs.lock().unwrap().clone()
    }
}

async fn fixable_worker(world: &World, faults: Arc<Faults>) -> common::WorkerGuard {
    let (f1, f2, f3, f4) = (
        faults.clone(),
        faults.clone(),
        faults.clone(),
        faults.clone(),
    );
    world
        .worker(
            Worker::builder("fixable")
                .handler("reserve", move |ctx: TaskContext, _: Value| {
                    let f = f1.clone();
                    async move {
                        f.ran(&ctx);
                        Ok(json!({"reservation": ctx.idempotency_key()}))
                    }
                })
                .handler("charge", move |ctx: TaskContext, _: Value| {
                    let f = f2.clone();
                    async move {
                        f.ran(&ctx);
                        if f.charge_broken.load(Ordering::SeqCst) {
                            return Err(StepError::fatal("card processor misconfigured"));
                        }
                        Ok(json!({"charge": ctx.idempotency_key()}))
                    }
                })
                .compensation("release", move |ctx: TaskContext, _: Value| {
                    let f = f3.clone();
                    async move {
                        f.ran(&ctx);
                        if f.release_broken.load(Ordering::SeqCst) {
                            return Err(StepError::fatal("inventory service rejects releases"));
                        }
                        Ok(json!("released"))
                    }
                })
                .compensation("refund", move |ctx: TaskContext, _: Value| {
                    let f = f4.clone();
                    async move {
                        f.ran(&ctx);
                        Ok(json!("refunded"))
                    }
                }),
        )
        .await
}

fn kinds_and_outcomes(
    detail: &jetsaga_protocol::api::SagaDetail,
    id: &str,
) -> Vec<(TaskKind, u32, u32, Option<AttemptOutcome>)> {
    step(detail, id)
        .attempts
        .iter()
        .map(|a| (a.kind, a.number, a.generation, a.outcome.clone()))
        .collect()
}

fn fatal(error: &str) -> Option<AttemptOutcome> {
    Some(AttemptOutcome::Fatal {
        error: error.to_string(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partially_compensated_saga_is_compensated_by_retry_compensation_once_fixed() {
    let world = World::start(&[]).await;
    world.apply_yaml(FIXABLE).await;
    let faults = Arc::new(Faults::default());
    faults.charge_broken.store(true, Ordering::SeqCst);
    faults.release_broken.store(true, Ordering::SeqCst);
    let _worker = fixable_worker(&world, faults.clone()).await;

    let id = world.start_saga("fixable", json!({})).await;
    let stuck = world.finished(&id).await;
    assert_eq!(
        stuck.saga.status,
        SagaStatus::PartiallyCompensated {
            reason: "step charge failed: card processor misconfigured".into(),
            stuck_steps: vec!["reserve".into()],
        },
        "{:?}",
        step_states(&stuck)
    );
    // The operator fixes the inventory service and resumes the rollback.
    faults.release_broken.store(false, Ordering::SeqCst);
    let resumed = world.client.retry_compensation(&id).await.unwrap();
    assert!(
        matches!(
            resumed.saga.status,
            SagaStatus::Compensating { .. } | SagaStatus::Compensated { .. }
        ),
        "{:?}",
        resumed.saga.status
    );
    assert_eq!(resumed.saga.generation, 1, "a fresh key for the release");
    let done = world.finished(&id).await;
    assert_eq!(
        done.saga.status,
        SagaStatus::Compensated {
            reason: "step charge failed: card processor misconfigured".into()
        }
    );
    assert_eq!(
        step_states(&done),
        [
            ("reserve".to_string(), "compensated".to_string()),
            ("charge".to_string(), "failed".to_string()),
        ]
    );
    assert_eq!(
        kinds_and_outcomes(&done, "reserve"),
        [
            (TaskKind::Action, 1, 0, Some(AttemptOutcome::Ok)),
            (
                TaskKind::Compensation,
                1,
                0,
                fatal("inventory service rejects releases")
            ),
            (TaskKind::Compensation, 2, 1, Some(AttemptOutcome::Ok)),
        ]
    );
    // The release ran again, under a key of generation 1: under the old one
    // the SDK would have replayed the recorded fatal error.
    let runs = faults.runs();
    assert_eq!(runs.get(&format!("{id}.reserve.compensation")), Some(&1));
    assert_eq!(runs.get(&format!("{id}.reserve.compensation.g1")), Some(&1));
    assert_eq!(runs.get(&format!("{id}.reserve.action")), Some(&1));
    assert_eq!(
        runs.keys().filter(|k| k.contains(".refund")).count(),
        0,
        "the failed charge is not refunded"
    );

    // Nothing left to resume: both retries are refused now.
    let err = world.client.retry_compensation(&id).await.unwrap_err();
    assert_eq!(err.code(), "E-NOT-APPLICABLE", "{err}");
    assert!(err.to_string().contains("partially_compensated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_saga_runs_again_under_a_new_key_once_fixed() {
    const FIRST_FAILS: &str = r#"
sagas:
  charge_first:
    steps:
      - id: charge
        service: fixable
        operation: charge
        timeout: 10s
        retry: { max_attempts: 2, initial_delay: 100ms }
      - id: reserve
        service: fixable
        operation: reserve
        compensation: release
        timeout: 10s
        depends_on: [charge]
"#;
    let world = World::start(&[]).await;
    world.apply_yaml(FIRST_FAILS).await;
    let faults = Arc::new(Faults::default());
    faults.charge_broken.store(true, Ordering::SeqCst);
    let _worker = fixable_worker(&world, faults.clone()).await;

    let id = world.start_saga("charge_first", json!({})).await;
    let failed = world.finished(&id).await;
    assert!(
        matches!(failed.saga.status, SagaStatus::Failed { .. }),
        "{:?}",
        failed.saga.status
    );
    // retry-compensation has no rollback to resume here.
    let err = world.client.retry_compensation(&id).await.unwrap_err();
    assert_eq!(err.code(), "E-NOT-APPLICABLE", "{err}");

    faults.charge_broken.store(false, Ordering::SeqCst);
    let retried = world.client.retry(&id).await.unwrap();
    assert_eq!(retried.saga.generation, 1);
    assert_eq!(retried.saga.finished_at, None);
    let done = world.finished(&id).await;
    assert_eq!(
        done.saga.status,
        SagaStatus::Completed,
        "{:?}",
        step_states(&done)
    );
    assert_eq!(
        kinds_and_outcomes(&done, "charge"),
        [
            (
                TaskKind::Action,
                1,
                0,
                fatal("card processor misconfigured")
            ),
            (TaskKind::Action, 2, 1, Some(AttemptOutcome::Ok)),
        ]
    );
    // The handler ran under the new key: the recorded fatal error of the old
    // one was not replayed. The output carries the new key.
    let runs = faults.runs();
    assert_eq!(runs.get(&format!("{id}.charge.action")), Some(&1));
    assert_eq!(runs.get(&format!("{id}.charge.action.g1")), Some(&1));
    assert_eq!(runs.get(&format!("{id}.reserve.action.g1")), Some(&1));
    assert_eq!(
        step(&done, "charge").output,
        Some(json!({"charge": format!("{id}.charge.action.g1")}))
    );
    let err = world.client.retry(&id).await.unwrap_err();
    assert_eq!(err.code(), "E-NOT-APPLICABLE", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensated_saga_runs_again_and_its_undone_step_really_runs_again() {
    let world = World::start(&[]).await;
    world.apply_yaml(FIXABLE).await;
    let faults = Arc::new(Faults::default());
    faults.charge_broken.store(true, Ordering::SeqCst);
    let _worker = fixable_worker(&world, faults.clone()).await;

    let id = world.start_saga("fixable", json!({})).await;
    let rolled_back = world.finished(&id).await;
    assert!(
        matches!(rolled_back.saga.status, SagaStatus::Compensated { .. }),
        "{:?}",
        rolled_back.saga.status
    );

    faults.charge_broken.store(false, Ordering::SeqCst);
    world.client.retry(&id).await.unwrap();
    let done = world.finished(&id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed);
    // reserve was undone, so it must happen again: under the old key the
    // SDK would have replayed its recorded success and skipped it.
    let runs = faults.runs();
    assert_eq!(runs.get(&format!("{id}.reserve.action")), Some(&1));
    assert_eq!(runs.get(&format!("{id}.reserve.compensation")), Some(&1));
    assert_eq!(runs.get(&format!("{id}.reserve.action.g1")), Some(&1));
    assert_eq!(runs.get(&format!("{id}.charge.action.g1")), Some(&1));
    assert_eq!(
        step(&done, "reserve").output,
        Some(json!({"reservation": format!("{id}.reserve.action.g1")}))
    );
    let reserve: Vec<(TaskKind, u32, u32)> = kinds_and_outcomes(&done, "reserve")
        .into_iter()
        .map(|(k, n, g, _)| (k, n, g))
        .collect();
    assert_eq!(
        reserve,
        [
            (TaskKind::Action, 1, 0),
            (TaskKind::Compensation, 1, 0),
            (TaskKind::Action, 2, 1),
        ]
    );
}

const STUCK: &str = r#"
sagas:
  quick:
    steps:
      - id: only
        service: fixable
        operation: reserve
        timeout: 10s
  hangs:
    steps:
      - id: wait
        service: nobody
        operation: wait
        timeout: 10m
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_deleted_and_running_ones_are_not() {
    let world = World::start(&[]).await;
    world.apply_yaml(STUCK).await;
    let faults = Arc::new(Faults::default());
    let _worker = fixable_worker(&world, faults.clone()).await;

    let first = world
        .client
        .start("quick", json!({}), Some("order-77"))
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(
        world.finished(&first.saga_id).await.saga.status,
        SagaStatus::Completed
    );

    world.client.delete(&first.saga_id).await.unwrap();
    let err = world.client.get(&first.saga_id).await.unwrap_err();
    assert_eq!(err.code(), "E-NOT-FOUND", "{err}");
    let err = world.client.delete(&first.saga_id).await.unwrap_err();
    assert_eq!(err.code(), "E-NOT-FOUND", "{err}");
    let listed = world
        .client
        .list(&jetsaga_protocol::api::ListRequest::default())
        .await
        .unwrap();
    assert!(listed.iter().all(|s| s.id != first.saga_id), "{listed:?}");
    // Deleting freed the idempotency key: it starts a new saga.
    let again = world
        .client
        .start("quick", json!({}), Some("order-77"))
        .await
        .unwrap();
    assert!(again.created);
    assert_ne!(again.saga_id, first.saga_id);
    world.finished(&again.saga_id).await;

    // A running saga is refused, and stays.
    let running = world.start_saga("hangs", json!({})).await;
    let err = world.client.delete(&running).await.unwrap_err();
    assert_eq!(err.code(), "E-NOT-APPLICABLE", "{err}");
    assert!(err.to_string().contains("cancel it first"), "{err}");
    assert_eq!(
        world.client.get(&running).await.unwrap().saga.status,
        SagaStatus::Running
    );
    // Cancelled, it is finished and can go; its timers go with it.
    world.client.cancel(&running, false, None).await.unwrap();
    world.client.delete(&running).await.unwrap();
    assert_eq!(
        world.client.get(&running).await.unwrap_err().code(),
        "E-NOT-FOUND"
    );
    // Retrying what is gone is not found either.
    assert_eq!(
        world.client.retry(&running).await.unwrap_err().code(),
        "E-NOT-FOUND"
    );
}
