//! Saga concurrency limits end to end: the engine's `--max-running-sagas`
//! and a definition's `max_running` queue starts durably instead of
//! refusing them, admit them in order as room frees, keep them across a
//! kill -9 of the engine, and let a queued saga be found again by its
//! idempotency key or cancelled. A real `jetsaga` process, a real
//! nats-server, and an in-process worker that holds every task until the
//! test releases it, so the test decides when room frees.

mod common;

use common::{HeldWorker, READY, World};
use jetsaga_protocol::api::{ListRequest, SagaDetail, SagaState, SagaStatus};
use jetsaga_tests::wait_until;
use jetsaga_worker::protocol::StartReply;
use serde_json::json;

/// `free` has no limit of its own; `limited` runs one saga at a time. Both
/// have one step on the held service; the timeouts are far longer than any
/// test, so nothing times out or retries.
const DEFINITIONS: &str = r#"
sagas:
  free:
    timeout: 10m
    steps:
      - id: work
        service: held
        operation: work
        timeout: 5m
  limited:
    max_running: 1
    steps:
      - id: work
        service: held
        operation: work
        timeout: 5m
"#;

async fn start(world: &World, saga: &str, n: usize, key: Option<&str>) -> StartReply {
    world
        .client
        .start(saga, json!({ "n": n }), key)
        .await
        .unwrap_or_else(|e| panic!("start {saga} #{n}: {e}"))
}

async fn detail(world: &World, id: &str) -> SagaDetail {
    world.client.get(id).await.expect("saga status")
}

/// Ids of the sagas in `state`, oldest first.
async fn in_state(world: &World, state: SagaState) -> Vec<String> {
    let filter = ListRequest {
        state: Some(state),
        limit: 1000,
        ..ListRequest::default()
    };
    let mut ids: Vec<String> = world
        .client
        .list(&filter)
        .await
        .expect("list sagas")
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.reverse();
    ids
}

/// Asserts that `queued` are pending in the start queue at positions 1, 2, ...
async fn assert_queued_in_order(world: &World, queued: &[String]) {
    for (i, id) in queued.iter().enumerate() {
        let d = detail(world, id).await;
        assert_eq!(d.saga.status, SagaStatus::Pending, "saga {id}");
        assert_eq!(d.queue_position, Some(i + 1), "queue position of saga {id}");
        assert!(
            d.saga.steps.iter().all(|s| s.attempts.is_empty()),
            "queued saga {id} ran a step"
        );
    }
    assert_eq!(in_state(world, SagaState::Pending).await, queued);
}

/// When the saga's only step was dispatched (its first attempt started).
fn admitted_at(d: &SagaDetail) -> u64 {
    d.saga.steps[0].attempts[0].started_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_queues_starts_and_admits_them_in_start_order() {
    let world = World::start(&["--max-running-sagas", "2"]).await;
    world.apply_yaml(DEFINITIONS).await;
    let mut held = HeldWorker::start(&world, "held", "work").await;

    let mut ids = Vec::new();
    for n in 0..6 {
        let reply = start(&world, "free", n, None).await;
        assert!(reply.created);
        assert_eq!(reply.queued, n >= 2, "start #{n}: {reply:?}");
        ids.push(reply.saga_id);
    }
    // Exactly two run, four wait, all at once.
    let mut running = held.arrivals(2).await;
    running.sort();
    assert_eq!(running, ids[..2]);
    assert_eq!(in_state(&world, SagaState::Running).await, ids[..2]);
    assert_queued_in_order(&world, &ids[2..]).await;
    assert!(!held.has_arrival(), "a third saga ran over the limit");

    // Each finished saga makes room for exactly the next one in start order.
    for next in 2..6 {
        held.release(1);
        assert_eq!(held.next_arrival().await, ids[next], "admission #{next}");
        assert_eq!(in_state(&world, SagaState::Running).await.len(), 2);
        assert_queued_in_order(&world, &ids[next + 1..]).await;
    }
    held.release(2);
    let mut finished = Vec::new();
    for id in &ids {
        let d = world.finished(id).await;
        assert_eq!(d.saga.status, SagaStatus::Completed, "saga {id}");
        finished.push(d);
    }
    // Admission times follow start order, and no saga was admitted before
    // room freed: the third only once the first had finished.
    let admitted: Vec<u64> = finished.iter().map(admitted_at).collect();
    assert!(admitted.windows(2).all(|w| w[0] <= w[1]), "{admitted:?}");
    let first_done = finished[..2]
        .iter()
        .filter_map(|d| d.saga.finished_at)
        .min()
        .expect("finished");
    assert!(admitted[2] >= first_done);
    assert!(held.runs().values().all(|&n| n == 1), "{:?}", held.runs());
    assert_eq!(held.runs().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_limit_queues_its_own_sagas_and_no_others() {
    let world = World::start(&[]).await;
    world.apply_yaml(DEFINITIONS).await;
    let mut held = HeldWorker::start(&world, "held", "work").await;

    let a1 = start(&world, "limited", 1, None).await;
    let a2 = start(&world, "limited", 2, None).await;
    let b1 = start(&world, "free", 1, None).await;
    assert!(!a1.queued);
    assert!(a2.queued, "{a2:?}");
    // Behind a queued saga of another definition, and still not held back.
    assert!(!b1.queued, "{b1:?}");
    let mut running = held.arrivals(2).await;
    running.sort();
    let mut expected = vec![a1.saga_id.clone(), b1.saga_id.clone()];
    expected.sort();
    assert_eq!(running, expected);
    assert_queued_in_order(&world, std::slice::from_ref(&a2.saga_id)).await;
    assert!(!held.has_arrival());

    // a1 and b1 finish; only then is a2 admitted.
    held.release(2);
    assert_eq!(held.next_arrival().await, a2.saga_id);
    held.release(1);
    let a1 = world.finished(&a1.saga_id).await;
    let a2 = world.finished(&a2.saga_id).await;
    let b1 = world.finished(&b1.saga_id).await;
    for d in [&a1, &a2, &b1] {
        assert_eq!(d.saga.status, SagaStatus::Completed);
    }
    assert!(admitted_at(&a2) >= a1.saga.finished_at.expect("finished"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_sagas_survive_a_kill_of_the_engine_in_order_and_run_once() {
    let mut world = World::start(&["--max-running-sagas", "1"]).await;
    world.apply_yaml(DEFINITIONS).await;
    let mut held = HeldWorker::start(&world, "held", "work").await;

    let keys: Vec<String> = (0..4).map(|n| format!("order-{n}")).collect();
    let mut ids = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let reply = start(&world, "free", n, Some(key)).await;
        assert_eq!(reply.queued, n > 0);
        ids.push(reply.saga_id);
    }
    assert_eq!(held.next_arrival().await, ids[0]);
    assert_queued_in_order(&world, &ids[1..]).await;

    world.engine.kill();
    world.engine.restart();
    let resumed = world
        .engine
        .process
        .wait_for_log("concurrency limits resumed", READY);
    assert!(
        resumed.contains("running=1") && resumed.contains("queued=3"),
        "{resumed}"
    );
    assert_queued_in_order(&world, &ids[1..]).await;
    assert_eq!(in_state(&world, SagaState::Running).await, ids[..1]);
    // The keys still name the same sagas.
    for (n, key) in keys.iter().enumerate() {
        let again = start(&world, "free", n, Some(key)).await;
        assert_eq!(
            (again.saga_id.as_str(), again.created),
            (ids[n].as_str(), false)
        );
        assert_eq!(again.queued, n > 0);
    }

    for next in 1..4 {
        held.release(1);
        assert_eq!(held.next_arrival().await, ids[next], "admission #{next}");
        assert_queued_in_order(&world, &ids[next + 1..]).await;
    }
    held.release(1);
    for id in &ids {
        assert_eq!(world.finished(id).await.saga.status, SagaStatus::Completed);
    }
    // None lost, none doubled: four sagas, each step's handler ran once.
    let all = world
        .client
        .list(&ListRequest {
            limit: 1000,
            ..ListRequest::default()
        })
        .await
        .expect("list");
    assert_eq!(all.len(), 4);
    let runs = held.runs();
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_saga_is_found_by_its_key_and_can_be_cancelled() {
    let world = World::start(&["--max-running-sagas", "1"]).await;
    world.apply_yaml(DEFINITIONS).await;
    let mut held = HeldWorker::start(&world, "held", "work").await;

    let first = start(&world, "free", 0, None).await;
    let queued = start(&world, "free", 1, Some("queued-key")).await;
    let last = start(&world, "free", 2, None).await;
    assert!(queued.queued && last.queued);
    assert_eq!(held.next_arrival().await, first.saga_id);

    let again = start(&world, "free", 1, Some("queued-key")).await;
    assert_eq!(again.saga_id, queued.saga_id);
    assert!(!again.created && again.queued, "{again:?}");

    // Cancelling with compensation asked for: nothing ran, so it simply ends.
    let cancelled = world
        .client
        .cancel(&queued.saga_id, true, Some("not needed".into()))
        .await
        .expect("cancel a queued saga");
    assert!(
        matches!(cancelled.saga.status, SagaStatus::Cancelled { .. }),
        "{:?}",
        cancelled.saga.status
    );
    assert!(cancelled.saga.steps.iter().all(|s| s.attempts.is_empty()));
    assert_eq!(cancelled.queue_position, None);
    assert_queued_in_order(&world, std::slice::from_ref(&last.saga_id)).await;

    // Room frees: the saga after the cancelled one runs.
    held.release(1);
    assert_eq!(held.next_arrival().await, last.saga_id);
    held.release(1);
    assert_eq!(
        world.finished(&last.saga_id).await.saga.status,
        SagaStatus::Completed
    );
    let cancelled = world.finished(&queued.saga_id).await;
    assert!(cancelled.saga.steps.iter().all(|s| s.attempts.is_empty()));
    assert_eq!(held.runs().len(), 2, "{:?}", held.runs());
    // The key still names the cancelled saga.
    let again = start(&world, "free", 1, Some("queued-key")).await;
    assert_eq!(
        (again.saga_id, again.created, again.queued),
        (queued.saga_id, false, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_definition_limit_counts_from_the_next_admission() {
    let world = World::start(&[]).await;
    world.apply_yaml(DEFINITIONS).await;
    let mut held = HeldWorker::start(&world, "held", "work").await;

    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(start(&world, "limited", n, None).await.saga_id);
    }
    assert_eq!(held.next_arrival().await, ids[0]);
    assert_queued_in_order(&world, &ids[1..]).await;

    // max_running 1 -> 2: when the running saga finishes, two are admitted.
    world
        .apply_yaml(&DEFINITIONS.replace("max_running: 1", "max_running: 2"))
        .await;
    held.release(1);
    let mut admitted = held.arrivals(2).await;
    admitted.sort();
    assert_eq!(admitted, ids[1..3]);
    assert_queued_in_order(&world, &ids[3..]).await;
    assert!(!held.has_arrival());
    held.release(3);
    for id in &ids {
        assert_eq!(world.finished(id).await.saga.status, SagaStatus::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_start_over_the_limit_is_queued_then_acknowledged() {
    let world = World::start(&["--max-running-sagas", "1"]).await;
    world.apply_yaml(DEFINITIONS).await;
    let mut held = HeldWorker::start(&world, "held", "work").await;
    let first = start(&world, "free", 0, None).await;
    assert_eq!(held.next_arrival().await, first.saga_id);

    let nats = world.nats.client().await;
    let js = async_nats::jetstream::new(nats);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "durable-1");
    js.publish_with_headers("jetsaga.start.free", headers, r#"{"input":{"n":1}}"#.into())
        .await
        .expect("publish")
        .await
        .expect("stored by the starts stream");
    // The engine acknowledges it once the queued saga is durable: the
    // work-queue stream then drops the message.
    let pending = wait_until("the durable start is queued", READY, || async {
        let pending = in_state(&world, SagaState::Pending).await;
        (pending.len() == 1).then_some(pending)
    })
    .await;
    wait_until("the durable start is acknowledged", READY, || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("JETSAGA_STARTS").await.ok()?;
            let info = stream.info().await.ok()?;
            (info.state.messages == 0).then_some(())
        }
    })
    .await;
    let again = start(&world, "free", 1, Some("durable-1")).await;
    assert_eq!(again.saga_id, pending[0]);
    assert!(!again.created && again.queued, "{again:?}");
    assert_queued_in_order(&world, &pending).await;

    held.release(1);
    assert_eq!(held.next_arrival().await, pending[0]);
    held.release(1);
    assert_eq!(
        world.finished(&pending[0]).await.saga.status,
        SagaStatus::Completed
    );
}
