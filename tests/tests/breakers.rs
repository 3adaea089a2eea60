//! End to end: per-service circuit breakers and in-flight limits
//! (`services:` in a definitions file), against the real `jetsaga` engine
//! process and nats-server, with in-process SDK workers whose failures and
//! pace the test controls.

mod common;

use common::{FINISH, HeldWorker, World, metric_value, step_is};
use jetsaga_protocol::api::{SagaDetail, ServiceStatus};
use jetsaga_tests::wait_until;
use serde_json::json;

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
    let pay = HeldWorker::passing(&world, "pay", "charge").await;
    pay.set_broken(true);

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
    assert_eq!(pay.total_runs(), 3, "no task goes out once it is open");
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
    assert_eq!(pay.total_runs(), 3);
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
    assert_eq!(pay.total_runs(), 3);

    // After the open timeout one probe goes out; it fails and opens the
    // breaker again, the probed saga's next attempt is held again.
    let reopened = wait_status(&world, "pay", "the failed probe to reopen it", |s| {
        s.state == "open" && s.since.is_some_and(|t| t > since) && s.held == 4
    })
    .await;
    assert_eq!(pay.total_runs(), 4, "exactly one probe went out");
    assert_eq!(reopened.failures, 1);

    // The service recovers: the next probes succeed, the breaker closes
    // after two of them and every held saga completes.
    pay.set_broken(false);
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
    pay.stop().await;
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
    let ledger = HeldWorker::passing(&world, "ledger", "charge").await;
    ledger.set_broken(true);

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
    assert_eq!(ledger.total_runs(), 2);
    let series = r#"engine_breaker_state{service="ledger"}"#;
    common::wait_metric(&http, series, 2.0).await;
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
    let table = common::text(&status.stdout);
    assert!(
        table.contains("ledger") && table.contains("open"),
        "{table}"
    );

    let unknown = world.client.breaker("nope").await.unwrap_err();
    assert_eq!(unknown.code(), "E-NOT-FOUND", "{unknown}");
    let no_breaker = world.client.reset_breaker("audit", None).await.unwrap_err();
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
    ledger.set_broken(false);
    let reset = world.cli(&["--output", "json", "breaker", "reset", "ledger"]);
    assert!(reset.status.success(), "{reset:?}");
    let reset: ServiceStatus = serde_json::from_slice(&reset.stdout).expect("json status");
    assert_eq!(reset.state, "closed");
    assert_eq!(reset.held, 0, "held tasks released by the reset");
    all_completed(&world, &ids).await;
    // Released oldest first: the opener's held retry, then the two sagas in
    // the order they were started.
    let released: Vec<String> = world
        .engine
        .process
        .log()
        .lines()
        .filter(|l| l.contains("held task released"))
        .map(|l| {
            l.split("saga_id=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no saga_id in {l:?}"))
                .to_string()
        })
        .collect();
    assert_eq!(
        released, ids,
        "held tasks released in the order they were held"
    );
    let effects = ledger.effects();
    assert_eq!(effects.len(), 3);
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
    common::wait_metric(&http, series, 0.0).await;
    let (code, body) = common::http_exchange(&http, "GET", "/v1/breakers/ledger", None).await;
    assert_eq!(code, 200, "{body}");
    let via_http: ServiceStatus = serde_json::from_str(&body).expect("status json");
    assert_eq!((via_http.state.as_str(), via_http.held), ("closed", 0));
    ledger.stop().await;
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
    let mut inventory = HeldWorker::start(&world, "inventory", "charge").await;

    let ids = start_sagas(&world, "reserve", "reserve", 6).await;
    let status = wait_status(&world, "inventory", "2 in flight, 4 held", |s| {
        s.in_flight == 2 && s.held == 4
    })
    .await;
    assert_eq!(status.state, "none", "no breaker configured");
    // The two admitted tasks reach the worker.
    let mut arrivals = inventory.arrivals(2).await;
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
    for _ in 0..4 {
        inventory.release(1);
        arrivals.push(inventory.next_arrival().await);
        assert!(inventory.most_at_once() <= 2);
    }
    inventory.release(2);
    all_completed(&world, &ids).await;
    assert_eq!(inventory.most_at_once(), 2, "never more than max_in_flight");
    assert!(!inventory.has_arrival(), "{:?}", inventory.arrived_so_far());
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
    inventory.stop().await;
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
    let mut gate = HeldWorker::passing(&world, "gate", "charge").await;
    gate.set_broken(true);

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
        Some(jetsaga_protocol::api::AttemptOutcome::Fatal { error }) => {
            assert!(error.starts_with("not dispatched"), "{error}")
        }
        other => panic!("held attempt ended {other:?}"),
    }
    let status = wait_status(&world, "gate", "only the opener held", |s| s.held == 1).await;
    assert_eq!(status.state, "open");

    // Reset: only the opener's task goes out; it now succeeds.
    gate.set_broken(false);
    world
        .client
        .reset_breaker("gate", None)
        .await
        .expect("reset");
    all_completed(&world, &opener).await;
    let arrivals = gate.arrived_so_far();
    assert_eq!(
        gate.total_runs(),
        2,
        "one failed attempt, one success: {arrivals:?}"
    );
    assert!(arrivals.iter().all(|id| *id == opener[0]), "{arrivals:?}");
    assert_eq!(queued_tasks(&world, "gate").await, 0);
    gate.stop().await;
}

/// The runbook's `circuit-breaker reset SERVICE --force-state open|closed`:
/// forced open, a healthy service's task is held (not published, the saga
/// still running) and the status shows `open` with a `forced` entry in the
/// breaker's history; forced closed (over HTTP, `{"state": "closed"}`),
/// the task goes out and the saga completes; the history shows both, and a
/// plain reset of the closed breaker (no body) adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forcing_a_breaker_open_holds_its_tasks_and_forcing_it_closed_releases_them() {
    let world = World::start(&["--http-listen", "127.0.0.1:0"]).await;
    let http = world.engine.http_addr();
    let yaml = format!(
        "{}services:\n  vault:\n    circuit_breaker: {{ failure_threshold: 5, open_timeout: 1h }}\n",
        saga_yaml("lock", "vault")
    );
    world.apply_yaml(&yaml).await;
    let vault = HeldWorker::passing(&world, "vault", "charge").await;

    let forced = world.cli(&[
        "--output",
        "json",
        "circuit-breaker",
        "reset",
        "vault",
        "--force-state",
        "open",
    ]);
    assert!(forced.status.success(), "{forced:?}");
    let forced: ServiceStatus = serde_json::from_slice(&forced.stdout).expect("json status");
    assert_eq!(forced.state, "open");
    let since = forced.since.expect("open since");
    assert_eq!(forced.half_opens_at, Some(since + 3_600_000));
    let entries = |s: &ServiceStatus| -> Vec<(String, String, String)> {
        s.history
            .iter()
            .map(|t| (t.from.clone(), t.to.clone(), t.cause.clone()))
            .collect()
    };
    let opened = (
        "closed".to_string(),
        "open".to_string(),
        "forced".to_string(),
    );
    assert_eq!(entries(&forced), std::slice::from_ref(&opened));
    assert_eq!(forced.history[0].at, since);

    // A saga of the healthy service is held: its task is not published.
    let ids = start_sagas(&world, "lock", "lock", 1).await;
    let held = wait_status(&world, "vault", "the task held", |s| s.held == 1).await;
    assert_eq!((held.state.as_str(), held.in_flight), ("open", 0));
    assert_eq!(entries(&held), std::slice::from_ref(&opened));
    assert_eq!(
        queued_tasks(&world, "vault").await,
        0,
        "held, not published"
    );
    assert_eq!(vault.total_runs(), 0);
    let detail = world.client.get(&ids[0]).await.expect("saga");
    assert_eq!(detail.saga.status.name(), "running");
    // `breaker status` shows the history as a table.
    let status = world.cli(&["circuit-breaker", "status", "vault"]);
    assert!(status.status.success(), "{status:?}");
    let table = common::text(&status.stdout);
    assert!(
        table.contains("history:") && table.contains("forced"),
        "{table}"
    );

    // Forced closed over HTTP: the held task goes out, the saga completes.
    let (code, body) = common::http_exchange(
        &http,
        "POST",
        "/v1/breakers/vault/reset",
        Some(r#"{"state": "closed"}"#),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let closed: ServiceStatus = serde_json::from_str(&body).expect("status json");
    assert_eq!((closed.state.as_str(), closed.held), ("closed", 0));
    all_completed(&world, &ids).await;
    assert_eq!(vault.total_runs(), 1);
    let reclosed = (
        "open".to_string(),
        "closed".to_string(),
        "forced".to_string(),
    );
    let status = world.cli(&["--output", "json", "breaker", "status", "vault"]);
    assert!(status.status.success(), "{status:?}");
    let status: ServiceStatus = serde_json::from_slice(&status.stdout).expect("json status");
    assert_eq!(entries(&status), [opened.clone(), reclosed.clone()]);

    // A plain reset (no body) of the closed breaker is no transition.
    let (code, body) = common::http_exchange(&http, "POST", "/v1/breakers/vault/reset", None).await;
    assert_eq!(code, 200, "{body}");
    let plain: ServiceStatus = serde_json::from_str(&body).expect("status json");
    assert_eq!(plain.state, "closed");
    assert_eq!(entries(&plain), [opened, reclosed]);
    vault.stop().await;
}
