//! End to end: per-service circuit breakers and in-flight limits
//! (`services:` in a definitions file), against the real `jetsaga` engine
//! process and nats-server, with in-process SDK workers whose failures and
//! pace the test controls.

mod common;

use common::{FINISH, READY, World, metric_value, step_is};
use jetsaga_engine::admission::ServiceStatus;
use jetsaga_engine::api::SagaDetail;
use jetsaga_tests::wait_until;
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// What a worker of service `svc` saw, and the switches the test flips.
#[derive(Default)]
struct Service {
    /// While set, every task fails with a retryable error.
    broken: AtomicBool,
    /// When set, each task waits for a permit before it finishes.
    gate: Option<Arc<Semaphore>>,
    /// Handler runs in all, failed ones included.
    runs: AtomicUsize,
    /// Successful runs (effects) per idempotency key.
    effects: Mutex<BTreeMap<String, u32>>,
    /// Sagas in the order their tasks arrived.
    arrivals: Mutex<Vec<String>>,
    /// Handlers running now, and the most ever running at once.
    current: AtomicUsize,
    most: AtomicUsize,
}

impl Service {
    fn gated() -> Self {
        Service {
            gate: Some(Arc::new(Semaphore::new(0))),
            ..Service::default()
        }
    }

    async fn handle(&self, ctx: &TaskContext) -> Result<Value, StepError> {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.arrivals
            .lock()
            .unwrap()
            .push(ctx.saga_id().to_string());
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        let broken = self.broken.load(Ordering::SeqCst);
        if !broken {
            *self
                .effects
                .lock()
                .unwrap()
                .entry(ctx.idempotency_key().to_string())
                .or_default() += 1;
        }
        self.current.fetch_sub(1, Ordering::SeqCst);
        if broken {
            Err(StepError::retryable("payment provider unavailable"))
        } else {
            Ok(json!({"charged": ctx.idempotency_key()}))
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn arrivals(&self) -> Vec<String> {
        self.arrivals.lock().unwrap().clone()
    }

    fn effects(&self) -> BTreeMap<String, u32> {
        self.effects.lock().unwrap().clone()
    }
}

async fn serve(world: &World, service: &str, state: Arc<Service>) -> common::WorkerGuard {
    world
        .worker(Worker::builder(service).concurrency(16).handler(
            "charge",
            move |ctx: TaskContext, _: Value| {
                let state = state.clone();
                async move { state.handle(&ctx).await }
            },
        ))
        .await
}

/// A one-step saga `name` on service `service`, retried often and fast.
fn saga_yaml(name: &str, service: &str) -> String {
    format!(
        r#"
sagas:
  {name}:
    steps:
      - id: charge
        service: {service}
        operation: charge
        timeout: 2m
        retry: {{ max_attempts: 100, initial_delay: 100ms, max_delay: 200ms, backoff_factor: 2, jitter: 0 }}
"#
    )
}

/// Starts `n` sagas of `name` one after the other (keys `{key}-{i}`).
async fn start_sagas(world: &World, name: &str, key: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let started = world
            .client
            .start(name, json!({"n": i}), Some(&format!("{key}-{i}")))
            .await
            .expect("saga starts");
        ids.push(started.saga_id);
    }
    ids
}

async fn wait_status(
    world: &World,
    service: &str,
    what: &str,
    check: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    wait_until(what, FINISH, || async {
        let status = world.client.breaker(service).await.ok()?;
        check(&status).then_some(status)
    })
    .await
}

/// Messages of `service` in the work queue stream: published and not yet
/// acknowledged by a worker.
async fn queued_tasks(world: &World, service: &str) -> u64 {
    let js = async_nats::jetstream::new(world.nats.client().await);
    let stream = js.get_stream("JETSAGA_TASKS").await.expect("tasks stream");
    let subject = format!("jetsaga.task.{service}");
    let mut subjects = stream
        .info_with_subjects(subject.clone())
        .await
        .expect("stream info");
    let mut total = 0;
    while let Some(entry) = futures::StreamExt::next(&mut subjects).await {
        let (s, n) = entry.expect("subject count");
        if s == subject {
            total += n as u64;
        }
    }
    total
}

async fn all_completed(world: &World, ids: &[String]) -> Vec<SagaDetail> {
    let mut out = Vec::new();
    for id in ids {
        let detail = world.finished(id).await;
        assert_eq!(detail.saga.status.name(), "completed", "{:?}", detail.saga);
        out.push(detail);
    }
    out
}

/// Breaker opens after `failure_threshold` consecutive failures; its tasks
/// are then held (not dispatched, sagas not failed); a kill -9 keeps them
/// held; after the open timeout a probe goes out, a failing probe opens it
/// again, succeeding probes close it and every held saga completes, each
/// effect exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_holds_tasks_across_a_kill_and_closes_after_successful_probes() {
    let mut world = World::start(&[]).await;
    let yaml = format!(
        "{}services:\n  pay:\n    circuit_breaker: {{ failure_threshold: 3, success_threshold: 2, open_timeout: 8s }}\n",
        saga_yaml("charge", "pay")
    );
    world.apply_yaml(&yaml).await;
    let pay = Arc::new(Service::default());
    pay.broken.store(true, Ordering::SeqCst);
    let worker = serve(&world, "pay", pay.clone()).await;

    let closed = world.client.breaker("pay").await.expect("status");
    assert_eq!((closed.state.as_str(), closed.held), ("closed", 0));

    // Three failed attempts of the first saga open the breaker; its next
    // attempt is held.
    let first = start_sagas(&world, "charge", "first", 1).await;
    let open = wait_status(&world, "pay", "the breaker to open and hold", |s| {
        s.state == "open" && s.held == 1
    })
    .await;
    assert_eq!(open.failures, 3);
    assert_eq!(pay.runs(), 3, "no task goes out once it is open");
    let since = open.since.expect("open since");
    assert_eq!(open.half_opens_at, Some(since + 8_000));

    // New sagas' tasks are held too, in the store, not in the work queue.
    let later = start_sagas(&world, "charge", "later", 3).await;
    let held = wait_status(&world, "pay", "4 held tasks", |s| s.held == 4).await;
    assert_eq!(held.state, "open");
    assert_eq!(held.in_flight, 0);
    assert_eq!(
        queued_tasks(&world, "pay").await,
        0,
        "held tasks are not published"
    );
    assert_eq!(pay.runs(), 3);
    let ids: Vec<String> = first.iter().chain(&later).cloned().collect();
    for id in &ids {
        let detail = world.client.get(id).await.expect("saga");
        assert_eq!(
            detail.saga.status.name(),
            "running",
            "held sagas do not fail"
        );
        assert!(
            step_is(&detail, "charge", "running"),
            "{:?}",
            detail.saga.steps
        );
    }

    // kill -9 while open with held tasks; they are still held afterwards.
    world.engine.kill();
    world.engine.restart();
    let after = world.client.breaker("pay").await.expect("status");
    assert_eq!(
        (after.state.as_str(), after.held, after.since),
        ("open", 4, Some(since)),
        "breaker and held tasks survive the kill"
    );
    assert_eq!(pay.runs(), 3);

    // After the open timeout one probe goes out; it fails and opens the
    // breaker again, the probed saga's next attempt is held again.
    let reopened = wait_status(&world, "pay", "the failed probe to reopen it", |s| {
        s.state == "open" && s.since.is_some_and(|t| t > since) && s.held == 4
    })
    .await;
    assert_eq!(pay.runs(), 4, "exactly one probe went out");
    assert_eq!(reopened.failures, 1);

    // The service recovers: the next probes succeed, the breaker closes
    // after two of them and every held saga completes.
    pay.broken.store(false, Ordering::SeqCst);
    let done = all_completed(&world, &ids).await;
    let closed = wait_status(&world, "pay", "the breaker to close", |s| {
        s.state == "closed" && s.held == 0 && s.in_flight == 0
    })
    .await;
    assert_eq!(closed.failures, 0);
    let effects = pay.effects();
    assert_eq!(effects.len(), 4, "{effects:?}");
    assert!(
        effects.values().all(|n| *n == 1),
        "exactly once: {effects:?}"
    );
    for detail in &done {
        let attempts = &detail.saga.steps[0].attempts;
        assert!(attempts.last().unwrap().outcome.is_some());
    }
    worker.stop().await;
}

/// `breaker reset` closes an open breaker and releases its held tasks in
/// order; `breaker list`/`status` answer over the CLI, unknown services are
/// `E-NOT-FOUND`, and the state is a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_closes_the_breaker_and_releases_held_tasks() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = world.engine.http_addr();
    let yaml = format!(
        "{}services:\n  ledger:\n    circuit_breaker: {{ failure_threshold: 2, open_timeout: 1h }}\n  audit: {{ max_in_flight: 3 }}\n",
        saga_yaml("post", "ledger")
    );
    world.apply_yaml(&yaml).await;
    let ledger = Arc::new(Service::default());
    ledger.broken.store(true, Ordering::SeqCst);
    let worker = serve(&world, "ledger", ledger.clone()).await;

    // One saga's two failed attempts open it (tasks dispatched before that
    // would report after it opened, and count no more).
    let mut ids = start_sagas(&world, "post", "first", 1).await;
    wait_status(&world, "ledger", "open with 1 held", |s| {
        s.state == "open" && s.held == 1
    })
    .await;
    ids.extend(start_sagas(&world, "post", "post", 2).await);
    wait_status(&world, "ledger", "open with 3 held", |s| {
        s.state == "open" && s.held == 3
    })
    .await;
    assert_eq!(ledger.runs(), 2);
    let series = r#"engine_breaker_state{service="ledger"}"#;
    wait_until("the open state as a metric", READY, || async {
        (metric_value(&http, series).await == Some(2.0)).then_some(())
    })
    .await;
    let held = r#"engine_held_tasks{service="ledger"}"#;
    assert_eq!(metric_value(&http, held).await, Some(3.0));

    // The CLI lists both services and shows one.
    let list = world.cli(&["--output", "json", "breaker", "list"]);
    assert!(list.status.success(), "{list:?}");
    let list: Vec<ServiceStatus> = serde_json::from_slice(&list.stdout).expect("json list");
    let names: Vec<&str> = list.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(names, ["audit", "ledger"]);
    assert_eq!(list[0].state, "none");
    assert_eq!(list[0].max_in_flight, Some(3));
    let status = world.cli(&["breaker", "status", "ledger"]);
    assert!(status.status.success(), "{status:?}");
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table.contains("ledger") && table.contains("open"),
        "{table}"
    );

    let unknown = world.client.breaker("nope").await.unwrap_err();
    assert_eq!(unknown.code(), "E-NOT-FOUND", "{unknown}");
    let no_breaker = world.client.reset_breaker("audit").await.unwrap_err();
    assert_eq!(no_breaker.code(), "E-NOT-APPLICABLE", "{no_breaker}");
    let (code, body) = common::http_exchange(&http, "GET", "/v1/breakers/nope", None).await;
    assert_eq!(code, 404, "{body}");
    // A bad policy is refused with its code, naming service and field.
    let bad = r#"{"sagas": {"s": {"steps": [{"id": "a", "service": "ledger", "operation": "charge"}]}},
                  "services": {"ledger": {"max_in_flight": 0}}}"#;
    let (code, body) = common::http_exchange(&http, "POST", "/v1/definitions", Some(bad)).await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("E-DEF-SERVICE"), "{body}");
    assert!(
        body.contains("service `ledger`: field `max_in_flight`"),
        "{body}"
    );
    assert_eq!(world.client.breaker("ledger").await.unwrap().state, "open");

    // Fixed and reset: the breaker closes, the held tasks go out.
    ledger.broken.store(false, Ordering::SeqCst);
    let reset = world.cli(&["--output", "json", "breaker", "reset", "ledger"]);
    assert!(reset.status.success(), "{reset:?}");
    let reset: ServiceStatus = serde_json::from_slice(&reset.stdout).expect("json status");
    assert_eq!(reset.state, "closed");
    assert_eq!(reset.held, 0, "held tasks released by the reset");
    all_completed(&world, &ids).await;
    let effects = ledger.effects();
    assert_eq!(effects.len(), 3);
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
    wait_until("the closed state as a metric", READY, || async {
        (metric_value(&http, series).await == Some(0.0)).then_some(())
    })
    .await;
    let (code, body) = common::http_exchange(&http, "GET", "/v1/breakers/ledger", None).await;
    assert_eq!(code, 200, "{body}");
    let via_http: ServiceStatus = serde_json::from_str(&body).expect("status json");
    assert_eq!((via_http.state.as_str(), via_http.held), ("closed", 0));
    worker.stop().await;
}

/// `max_in_flight: 2` with 6 sagas: the worker never runs more than two of
/// the service's tasks at once, the rest are held durably (a kill -9 in
/// between keeps them), dispatched in FIFO order, and all complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_a_service_and_holds_the_rest_in_order_across_a_kill() {
    let mut world = World::start(&[]).await;
    let yaml = format!(
        "{}services:\n  inventory:\n    max_in_flight: 2\n",
        saga_yaml("reserve", "inventory")
    );
    world.apply_yaml(&yaml).await;
    let inventory = Arc::new(Service::gated());
    let gate = inventory.gate.clone().expect("gated");
    let worker = serve(&world, "inventory", inventory.clone()).await;

    let ids = start_sagas(&world, "reserve", "reserve", 6).await;
    let status = wait_status(&world, "inventory", "2 in flight, 4 held", |s| {
        s.in_flight == 2 && s.held == 4
    })
    .await;
    assert_eq!(status.state, "none", "no breaker configured");
    wait_until(
        "the two admitted tasks to reach the worker",
        READY,
        || async { (inventory.arrivals().len() == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        queued_tasks(&world, "inventory").await,
        2,
        "only two published"
    );

    // kill -9 with two tasks running and four held.
    world.engine.kill();
    world.engine.restart();
    let after = world.client.breaker("inventory").await.expect("status");
    assert_eq!(
        (after.in_flight, after.held),
        (2, 4),
        "rebuilt after the kill"
    );

    // Let one task finish at a time: each frees room for the next held one.
    for n in 3..=6 {
        gate.add_permits(1);
        wait_until("the next held task to reach the worker", FINISH, || async {
            (inventory.arrivals().len() == n).then_some(())
        })
        .await;
        assert!(inventory.most.load(Ordering::SeqCst) <= 2);
    }
    gate.add_permits(2);
    all_completed(&world, &ids).await;
    assert_eq!(
        inventory.most.load(Ordering::SeqCst),
        2,
        "never more than max_in_flight"
    );
    let arrivals = inventory.arrivals();
    let mut first_two = arrivals[..2].to_vec();
    first_two.sort();
    let mut expected = ids[..2].to_vec();
    expected.sort();
    assert_eq!(first_two, expected);
    assert_eq!(arrivals[2..], ids[2..], "held tasks go out in FIFO order");
    let effects = inventory.effects();
    assert_eq!(effects.len(), 6);
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
    let end = world.client.breaker("inventory").await.expect("status");
    assert_eq!((end.in_flight, end.held), (0, 0));
    worker.stop().await;
}

/// A held saga still times out: its held action never ran, so the attempt
/// ends as a fatal error without effect and the saga ends without waiting
/// for the breaker; a cancelled held saga's task is dropped, never
/// published, even after a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_sagas_still_time_out_and_cancel_and_their_tasks_never_go_out() {
    let world = World::start(&[]).await;
    let yaml = format!(
        r#"{}  timed:
    timeout: 2s
    steps:
      - {{ id: charge, service: gate, operation: charge, timeout: 1m }}
services:
  gate:
    circuit_breaker: {{ failure_threshold: 1, open_timeout: 1h }}
"#,
        saga_yaml("opener", "gate")
    );
    world.apply_yaml(&yaml).await;
    let gate = Arc::new(Service::default());
    gate.broken.store(true, Ordering::SeqCst);
    let worker = serve(&world, "gate", gate.clone()).await;

    let opener = start_sagas(&world, "opener", "opener", 1).await;
    wait_status(&world, "gate", "open, the opener's retry held", |s| {
        s.state == "open" && s.held == 1
    })
    .await;
    let timed = start_sagas(&world, "timed", "timed", 2).await;
    wait_status(&world, "gate", "3 held", |s| s.held == 3).await;

    // Cancelled while held: the row goes with it.
    let cancelled = world
        .client
        .cancel(&timed[1], false, Some("not needed".into()))
        .await
        .expect("cancel");
    assert_eq!(cancelled.saga.status.name(), "cancelled");
    // The other one times out while held and fails without effect.
    let done = world.finished(&timed[0]).await;
    assert_eq!(done.saga.status.name(), "failed", "{:?}", done.saga.status);
    let attempts = &done.saga.steps[0].attempts;
    assert_eq!(attempts.len(), 1);
    match &attempts[0].outcome {
        Some(jetsaga_engine::saga::state::AttemptOutcome::Fatal { error }) => {
            assert!(error.starts_with("not dispatched"), "{error}")
        }
        other => panic!("held attempt ended {other:?}"),
    }
    let status = wait_status(&world, "gate", "only the opener held", |s| s.held == 1).await;
    assert_eq!(status.state, "open");

    // Reset: only the opener's task goes out; it now succeeds.
    gate.broken.store(false, Ordering::SeqCst);
    world.client.reset_breaker("gate").await.expect("reset");
    all_completed(&world, &opener).await;
    assert_eq!(
        gate.runs(),
        2,
        "one failed attempt, one success: {:?}",
        gate.arrivals()
    );
    assert!(gate.arrivals().iter().all(|id| *id == opener[0]));
    assert_eq!(queued_tasks(&world, "gate").await, 0);
    worker.stop().await;
}
