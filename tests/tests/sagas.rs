//! End to end: sagas run by the real `jetsaga` engine process against a real
//! nats-server, with workers that are either the example worker binaries or
//! SDK workers inside the test.

mod common;

use common::{World, step, step_is, step_states};
use futures::StreamExt;
use jetsaga_examples::ledger;
use jetsaga_protocol::api::{AttemptOutcome, SagaStatus};
use jetsaga_worker::protocol::{Outcome, Task, TaskKind, TaskResult};
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_environment_runs_to_completion() {
    let world = World::start(&[]).await;
    world.apply_example("deploy_environment").await;
    let _workers = world.example_workers("deploy-workers", &[]);

    let started = world
        .client
        .start(
            "deploy_environment",
            json!({"environment": "staging", "image": "shop:1.4.2"}),
            None,
        )
        .await
        .unwrap();
    let done = world.finished(&started.saga_id).await;

    assert_eq!(
        done.saga.status,
        SagaStatus::Completed,
        "{:?}",
        step_states(&done)
    );
    for s in &done.saga.steps {
        assert_eq!(s.status.name(), "succeeded");
        assert_eq!(s.attempts.len(), 1);
    }
    // deploy_containers saw register_manifest's output through the task context.
    assert!(step(&done, "register_manifest").output.is_some());
    let entries = ledger::read_dir(world.ledger_dir());
    let actions = ledger::step_order(&entries, &started.saga_id, TaskKind::Action);
    assert_eq!(
        actions,
        [
            "register_manifest",
            "deploy_containers",
            "configure_gateway",
            "mark_ready"
        ]
    );
    assert!(ledger::step_order(&entries, &started.saga_id, TaskKind::Compensation).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_steps_run_in_parallel() {
    let world = World::start(&[]).await;
    world.apply_example("create_booking").await;
    let _workers = world.example_workers("booking-workers", &[]);

    let input = json!({
        "customer": {"name": "Ada"},
        "faults": {"send_email": {"delay_ms": 600}, "send_whatsapp": {"delay_ms": 600}}
    });
    let started = world
        .client
        .start("create_booking", input, None)
        .await
        .unwrap();
    let done = world.finished(&started.saga_id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed);

    let window = |id: &str| {
        let a = &step(&done, id).attempts[0];
        (a.started_at, a.finished_at.expect("finished"))
    };
    let (email_start, email_end) = window("send_email");
    let (wa_start, wa_end) = window("send_whatsapp");
    assert!(
        email_start < wa_end && wa_start < email_end,
        "send_email {email_start}..{email_end} and send_whatsapp {wa_start}..{wa_end} did not overlap"
    );
    // add_calendar waited for both.
    let (cal_start, _) = window("add_calendar");
    assert!(cal_start >= email_end && cal_start >= wa_end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_at_step_three_compensates_two_then_one() {
    let world = World::start(&[]).await;
    world.apply_example("deploy_environment").await;
    let _workers = world.example_workers("deploy-workers", &[]);

    let input = json!({"environment": "pr-7", "faults": {"configure_gateway": {"fail": "fatal"}}});
    let started = world
        .client
        .start("deploy_environment", input, None)
        .await
        .unwrap();
    let done = world.finished(&started.saga_id).await;

    assert!(
        matches!(done.saga.status, SagaStatus::Compensated { .. }),
        "{:?}",
        done.saga.status
    );
    assert_eq!(
        step_states(&done),
        [
            ("register_manifest".to_string(), "compensated".to_string()),
            ("deploy_containers".to_string(), "compensated".to_string()),
            ("configure_gateway".to_string(), "failed".to_string()),
            ("mark_ready".to_string(), "skipped".to_string()),
        ]
    );
    let entries = ledger::read_dir(world.ledger_dir());
    assert_eq!(
        ledger::step_order(&entries, &started.saga_id, TaskKind::Action),
        ["register_manifest", "deploy_containers"]
    );
    assert_eq!(
        ledger::step_order(&entries, &started.saga_id, TaskKind::Compensation),
        ["deploy_containers", "register_manifest"]
    );
    // The engine's own record agrees: step 2's compensation ended before step 1's began.
    let comp = |id: &str| {
        step(&done, id)
            .attempts
            .iter()
            .find(|a| a.kind == TaskKind::Compensation)
            .cloned()
            .expect("compensation attempt")
    };
    assert!(comp("deploy_containers").finished_at.unwrap() <= comp("register_manifest").started_at);
}

const FLAKY: &str = r#"
sagas:
  flaky:
    steps:
      - id: call
        service: flaky
        operation: call
        timeout: 10s
        retry: { max_attempts: 5, initial_delay: 200ms, max_delay: 5s, backoff_factor: 2, jitter: 0 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_are_retried_with_growing_delays() {
    let world = World::start(&[]).await;
    world.apply_yaml(FLAKY).await;
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let _worker = world
        .worker(
            Worker::builder("flaky").handler("call", move |ctx: TaskContext, _: Value| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if ctx.attempt() <= 3 {
                        Err(StepError::retryable(format!(
                            "busy (attempt {})",
                            ctx.attempt()
                        )))
                    } else {
                        Ok(json!({"attempt": ctx.attempt()}))
                    }
                }
            }),
        )
        .await;

    let started = world.client.start("flaky", json!({}), None).await.unwrap();
    let done = world.finished(&started.saga_id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed);
    let attempts = &step(&done, "call").attempts;
    assert_eq!(attempts.len(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(step(&done, "call").output, Some(json!({"attempt": 4})));
    let gaps: Vec<u64> = attempts
        .windows(2)
        .map(|w| w[1].started_at - w[0].finished_at.unwrap())
        .collect();
    for (gap, want) in gaps.iter().zip([200u64, 400, 800]) {
        assert!(
            *gap >= want,
            "retry gaps {gaps:?} shorter than the policy's {want} ms"
        );
    }
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "gaps do not grow: {gaps:?}"
    );
}

const TIMEOUT: &str = r#"
sagas:
  slow_step:
    steps:
      - id: call
        service: slow
        operation: call
        timeout: 1s
        retry: { max_attempts: 3, initial_delay: 100ms }
"#;

/// The tasks of service `slow`, read with a plain JetStream client (a
/// worker speaking the wire protocol), and that client.
async fn slow_tasks(
    world: &World,
) -> (
    async_nats::jetstream::Context,
    async_nats::jetstream::consumer::pull::Stream,
) {
    let nats = world.nats.client().await;
    let js = async_nats::jetstream::new(nats);
    let stream = js.get_stream("JETSAGA_TASKS").await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "jetsaga-svc-slow",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("jetsaga-svc-slow".into()),
                filter_subject: "jetsaga.task.slow".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (js, consumer.messages().await.unwrap())
}

/// The next task of `tasks`, acknowledged; it must be attempt `attempt`.
async fn next_task(
    tasks: &mut async_nats::jetstream::consumer::pull::Stream,
    attempt: u32,
) -> Task {
    let msg = tasks.next().await.unwrap().unwrap();
    let task: Task = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(task.attempt, attempt);
    msg.ack().await.unwrap();
    task
}

/// Answers `task` with success and `output` on service `slow`'s results
/// subject, as a worker without the SDK would.
async fn answer_slow(js: &async_nats::jetstream::Context, task: &Task, output: Value) {
    let r = TaskResult {
        saga_id: task.saga_id.clone(),
        step_id: task.step_id.clone(),
        kind: task.kind,
        attempt: task.attempt,
        service: task.service.clone(),
        outcome: Outcome::Ok { output },
        replayed: false,
        worker: "raw".into(),
    };
    let msg_id = jetsaga_worker::protocol::result_msg_id(&r.saga_id, &r.step_id, r.kind, r.attempt);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id.as_str());
    js.publish_with_headers(
        "jetsaga.result.slow",
        headers,
        serde_json::to_vec(&r).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// A worker speaking the wire protocol with a plain JetStream client: it
/// keeps attempt 1 unanswered until attempt 2 arrives, then answers both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_dispatches_the_next_attempt_and_a_late_result_is_stale() {
    let world = World::start(&[]).await;
    world.apply_yaml(TIMEOUT).await;
    let (js, mut tasks) = slow_tasks(&world).await;

    let started = world
        .client
        .start("slow_step", json!({}), None)
        .await
        .unwrap();
    let t1 = next_task(&mut tasks, 1).await;
    // Nothing answers attempt 1: after the step timeout the engine sends attempt 2.
    let t2 = next_task(&mut tasks, 2).await;
    assert_eq!(
        t2.idempotency_key, t1.idempotency_key,
        "the key is stable across attempts"
    );

    // The late answer to attempt 1 comes while attempt 2 is in flight: stale.
    answer_slow(&js, &t1, json!("late attempt 1")).await;
    world
        .engine
        .process
        .wait_for_log("stale or duplicate", Duration::from_secs(10));
    answer_slow(&js, &t2, json!("from attempt 2")).await;

    let done = world.finished(&started.saga_id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed);
    let call = step(&done, "call");
    assert_eq!(call.output, Some(json!("from attempt 2")));
    assert_eq!(call.attempts[0].outcome, Some(AttemptOutcome::TimedOut));
    assert_eq!(call.attempts[1].outcome, Some(AttemptOutcome::Ok));
}

/// Step timeouts are kept in memory: an engine restarted while an attempt
/// is in flight arms its timeout again from the saga's record, due at the
/// attempt's start plus the step's timeout, neither lost nor early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_armed_before_a_restart_fires_after_it_on_time() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(TIMEOUT).await;
    let (js, mut tasks) = slow_tasks(&world).await;
    let started = world
        .client
        .start("slow_step", json!({}), None)
        .await
        .unwrap();
    next_task(&mut tasks, 1).await;
    world.engine.kill();
    world.engine.restart();
    // Nothing answers attempt 1: the restarted engine times it out.
    let t2 = tokio::time::timeout(Duration::from_secs(60), next_task(&mut tasks, 2))
        .await
        .expect("attempt 2 is dispatched after the restart");
    answer_slow(&js, &t2, json!("attempt 2")).await;
    let done = world.finished(&started.saga_id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed);
    let call = step(&done, "call");
    let timed_out = &call.attempts[0];
    assert_eq!(timed_out.outcome, Some(AttemptOutcome::TimedOut));
    let waited = timed_out.finished_at.unwrap() - timed_out.started_at;
    assert!(
        waited >= 1_000,
        "attempt 1 timed out after {waited} ms, before its 1 s timeout"
    );
    assert_eq!(call.attempts[1].outcome, Some(AttemptOutcome::Ok));
}

const SLOW_SAGA: &str = r#"
sagas:
  slow_saga:
    timeout: 1s
    steps:
      - id: first
        service: quick
        operation: work
        compensation: undo
        timeout: 10s
      - id: second
        service: quick
        operation: hang
        compensation: undo
        timeout: 10s
        depends_on: [first]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_timeout_compensates_what_completed() {
    let world = World::start(&[]).await;
    world.apply_yaml(SLOW_SAGA).await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let _worker = world
        .worker(
            Worker::builder("quick")
                .handler("work", |_: TaskContext, _: Value| async {
                    Ok(json!("done"))
                })
                .handler("hang", move |_: TaskContext, _: Value| {
                    let r = r.clone();
                    async move {
                        r.notified().await;
                        Ok(json!("finally"))
                    }
                })
                .compensation("undo", |_: TaskContext, _: Value| async {
                    Ok(json!("undone"))
                }),
        )
        .await;

    let started = world
        .client
        .start("slow_saga", json!({}), None)
        .await
        .unwrap();
    let id = started.saga_id.clone();
    // The saga's 1 s runs out while `second` hangs: the saga starts compensating...
    let compensating =
        jetsaga_tests::wait_until("saga compensating", Duration::from_secs(20), || {
            let c = world.client.clone();
            let id = id.clone();
            async move {
                let d = c.get(&id).await.ok()?;
                matches!(d.saga.status, SagaStatus::Compensating { .. }).then_some(d)
            }
        })
        .await;
    assert!(
        step_is(&compensating, "first", "succeeded"),
        "first waits for the in-flight second"
    );
    // ...and once the in-flight step reports, both completed steps are undone.
    release.notify_one();
    let done = world.finished(&id).await;
    match &done.saga.status {
        SagaStatus::Compensated { reason } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("expected compensated, got {other:?}"),
    }
    assert!(step_is(&done, "first", "compensated"));
    assert!(step_is(&done, "second", "compensated"));
}

async fn gate_worker(
    world: &World,
    release: Arc<Notify>,
    undos: Arc<AtomicU32>,
) -> common::WorkerGuard {
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
                        Err::<Value, _>(StepError::fatal("released as failed"))
                    }
                })
                .compensation("undo", move |_: TaskContext, _: Value| {
                    let u = undos.clone();
                    async move {
                        u.fetch_add(1, Ordering::SeqCst);
                        Ok(json!("undone"))
                    }
                }),
        )
        .await
}

async fn wait_running_second(world: &World, id: &str) {
    let id = id.to_string();
    jetsaga_tests::wait_until("second step running", Duration::from_secs(20), || {
        let c = world.client.clone();
        let id = id.clone();
        async move {
            let d = c.get(&id).await.ok()?;
            step_is(&d, "second", "running").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_without_compensation_stops_and_undoes_nothing() {
    let world = World::start(&[]).await;
    world.apply_yaml(common::TWO_STEPS).await;
    let release = Arc::new(Notify::new());
    let undos = Arc::new(AtomicU32::new(0));
    let worker = gate_worker(&world, release.clone(), undos.clone()).await;

    let id = world.start_saga("two_steps", json!({})).await;
    wait_running_second(&world, &id).await;
    let cancelled = world
        .client
        .cancel(&id, false, Some("operator said stop".into()))
        .await
        .unwrap();
    assert_eq!(
        cancelled.saga.status,
        SagaStatus::Cancelled {
            reason: "operator said stop".into()
        }
    );
    assert!(step_is(&cancelled, "first", "succeeded"));
    assert_eq!(
        step(&cancelled, "second").attempts[0].outcome,
        Some(AttemptOutcome::Abandoned)
    );
    // The abandoned attempt's late result is refused and changes nothing.
    release.notify_one();
    worker.stop().await;
    let after = world.client.get(&id).await.unwrap();
    assert_eq!(after.saga, cancelled.saga);
    assert_eq!(undos.load(Ordering::SeqCst), 0);
    // A second cancel of a finished saga is a clear error.
    let err = world.client.cancel(&id, true, None).await.unwrap_err();
    assert_eq!(err.code(), "E-NOT-APPLICABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_compensation_rolls_back() {
    let world = World::start(&[]).await;
    world.apply_yaml(common::TWO_STEPS).await;
    let release = Arc::new(Notify::new());
    let undos = Arc::new(AtomicU32::new(0));
    let _worker = gate_worker(&world, release.clone(), undos.clone()).await;

    let id = world.start_saga("two_steps", json!({})).await;
    wait_running_second(&world, &id).await;
    let cancelling = world.client.cancel(&id, true, None).await.unwrap();
    assert!(matches!(
        cancelling.saga.status,
        SagaStatus::Compensating { .. }
    ));
    // The in-flight step fails when released: only `first` is compensated.
    release.notify_one();
    let done = world.finished(&id).await;
    assert!(
        matches!(done.saga.status, SagaStatus::Compensated { .. }),
        "{:?}",
        done.saga.status
    );
    assert!(step_is(&done, "first", "compensated"));
    assert!(step_is(&done, "second", "failed"));
    assert_eq!(undos.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_mid_saga_resumes_and_completes() {
    let mut world = World::start(&[]).await;
    world.apply_yaml(common::TWO_STEPS).await;
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let _worker = world
        .worker(
            Worker::builder("gate")
                .handler("work", |_: TaskContext, _: Value| async {
                    Ok(json!("done"))
                })
                .handler("wait", move |_: TaskContext, _: Value| {
                    let r = r.clone();
                    async move {
                        r.notified().await;
                        Ok(json!("released"))
                    }
                })
                .compensation("undo", |_: TaskContext, _: Value| async {
                    Ok(json!("undone"))
                }),
        )
        .await;

    let id = world.start_saga("two_steps", json!({})).await;
    wait_running_second(&world, &id).await;
    world.engine.kill();
    // The result is published while no engine runs; JetStream keeps it.
    release.notify_one();
    world.engine.restart();
    let done = world.finished(&id).await;
    assert_eq!(done.saga.status, SagaStatus::Completed);
    assert_eq!(step(&done, "second").output, Some(json!("released")));
    assert_eq!(
        step(&done, "second").attempts.len(),
        1,
        "no re-dispatch was needed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_a_queue_and_no_task_runs_twice() {
    let world = World::start(&[]).await;
    world.apply_example("deploy_environment").await;
    let _w1 = world.example_workers("deploy-workers", &["--name", "w1", "--concurrency", "1"]);
    let _w2 = world.example_workers("deploy-workers", &["--name", "w2", "--concurrency", "1"]);

    let mut ids = Vec::new();
    for i in 0..12 {
        let input = json!({"environment": format!("env-{i}"), "faults": {"deploy_containers": {"delay_ms": 50}}});
        ids.push(world.start_saga("deploy_environment", input).await);
    }
    for id in &ids {
        assert_eq!(world.finished(id).await.saga.status, SagaStatus::Completed);
    }
    let entries = ledger::read_dir(world.ledger_dir());
    let counts = ledger::effect_counts(&entries);
    assert_eq!(
        counts.len(),
        ids.len() * 4,
        "one effect per step of every saga"
    );
    assert!(
        counts.values().all(|n| *n == 1),
        "an effect happened twice: {counts:?}"
    );
    assert_eq!(ledger::duplicate_counts(&entries).len(), 0);
    let workers: std::collections::BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.service == "container-engine")
        .map(|e| e.worker.as_str())
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "both processes took work from the shared queue: {workers:?}"
    );
}
