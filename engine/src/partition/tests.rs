use super::*;
use jetsaga_core::saga::state::TimerKind;

fn saga(id: &str, status: jetsaga_core::saga::state::SagaStatus) -> Saga {
    Saga {
        id: id.to_owned(),
        name: "order".to_owned(),
        definition_version: 1,
        input: serde_json::json!({}),
        idempotency_key: None,
        generation: 0,
        status,
        steps: vec![],
        created_at: 1,
        updated_at: 1,
        finished_at: None,
        trace_parent: None,
        event_seq: 0,
    }
}

/// Reads within a batch see a key a start earlier in the batch bound (so a
/// second start with it finds that saga instead of making another).
#[test]
fn a_batch_reads_the_keys_it_bound() {
    use jetsaga_core::saga::state::SagaStatus;
    let change = |s: Saga, key: Option<&str>| Change {
        saga: Some(s.into()),
        idempotency_key: key.map(str::to_owned),
        ..Change::default()
    };
    let batch = vec![
        change(saga("a", SagaStatus::Running), Some("order-1")),
        change(saga("b", SagaStatus::Running), None),
        Change {
            timers_remove: vec![("a".to_owned(), TimerKind::SagaTimeout)],
            ..Change::default()
        },
        change(saga("a", SagaStatus::Completed), None),
    ];
    assert_eq!(bound_saga(&batch, "order-1"), Some("a"));
    assert_eq!(bound_saga(&batch, "order-2"), None);
    assert_eq!(bound_saga(&[], "order-1"), None);
}

/// A batch keeps one copy of each saga's record: a later transition's
/// change takes the earlier one's prior (the stored record's) and key, and
/// the earlier change keeps its outbox rows and timers without a record.
#[test]
fn a_batch_writes_one_record_per_saga() {
    use jetsaga_core::saga::state::SagaStatus;
    use jetsaga_store::Prior;
    let mut batch = vec![
        Change {
            saga: Some(saga("a", SagaStatus::Running).into()),
            prior: Prior::Absent,
            idempotency_key: Some("order-1".to_owned()),
            timers_add: vec![],
            ..Change::default()
        },
        Change {
            saga: Some(saga("b", SagaStatus::Running).into()),
            ..Change::default()
        },
    ];
    let mut later = Change {
        timers_remove: vec![("a".to_owned(), TimerKind::SagaTimeout)],
        ..Change::default()
    };
    assert_eq!(
        take_earlier_copy(&mut batch, "a", &mut later),
        Some(SagaWrite::Whole(saga("a", SagaStatus::Running)))
    );
    later.saga = Some(saga("a", SagaStatus::Completed).into());
    batch.push(later);
    assert_eq!(batch[0].saga, None);
    assert_eq!(batch[0].idempotency_key, None);
    assert_eq!(batch[2].prior, Prior::Absent);
    assert_eq!(batch[2].idempotency_key.as_deref(), Some("order-1"));
    assert_eq!(
        batch[2].timers_remove,
        [("a".to_owned(), TimerKind::SagaTimeout)]
    );
    assert_eq!(bound_saga(&batch, "order-1"), Some("a"));
    // Saga `b` had no earlier copy; nothing moves.
    let mut other = Change::default();
    assert_eq!(take_earlier_copy(&mut batch, "c", &mut other), None);
    assert_eq!(other, Change::default());
    let records = batch.iter().filter(|c| c.saga.is_some()).count();
    assert_eq!(records, 2, "one record each for a and b");
}

/// A partition on a temporary store, its client never connected (nothing
/// these tests do publishes), with definition `one` (one step, `svc`).
async fn partition_with_one_step() -> (Partition, u32) {
    let store: Arc<dyn Store> = Arc::new(jetsaga_store::SledStore::temporary().unwrap());
    partition_on(store).await
}

/// [`partition_with_one_step`] on `store`.
async fn partition_on(store: Arc<dyn Store>) -> (Partition, u32) {
    use jetsaga_core::saga::definition::{RetryPolicy, StepDefinition};
    let def = SagaDefinition {
        name: "one".to_owned(),
        version: 0,
        timeout: None,
        steps: vec![StepDefinition {
            id: "only".to_owned(),
            service: "svc".to_owned(),
            operation: "op".to_owned(),
            compensation: None,
            timeout: std::time::Duration::from_secs(30),
            retry: RetryPolicy::default(),
            depends_on: vec![],
        }],
        triggers: Vec::new(),
        policy: Default::default(),
        max_running: None,
        step_events: false,
    };
    let version = store.put_definition(&def).unwrap().version;
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("127.0.0.1:1")
        .await
        .unwrap();
    let (partition, _handle) = Partition::new(
        store,
        Subjects::new("jetsaga"),
        client,
        Arc::new(Notify::new()),
        1024 * 1024,
        64,
    );
    (partition, version)
}

/// Starts a saga of definition `one` with `input`; its id.
fn start_one(p: &mut Partition, input: serde_json::Value, after: &mut AfterFlush) -> String {
    let start = StartCommand {
        saga: "one".to_owned(),
        input,
        idempotency_key: None,
        trace_parent: None,
    };
    match p.start(start, after) {
        Ok(reply) => reply.saga_id,
        Err(_) => panic!("the start was refused"),
    }
}

fn ok_result(saga_id: &str, attempt: u32) -> jetsaga_protocol::TaskResult {
    jetsaga_protocol::TaskResult {
        saga_id: saga_id.to_owned(),
        step_id: "only".to_owned(),
        kind: jetsaga_protocol::TaskKind::Action,
        attempt,
        service: "svc".to_owned(),
        outcome: jetsaga_protocol::Outcome::Ok {
            output: serde_json::json!({ "n": attempt }),
        },
        replayed: false,
        worker: "test".to_owned(),
    }
}

/// A saga that finishes in a batch is read from memory by the rest of the
/// batch (the batch holds only its changed parts): a repeated result is
/// refused, not applied to the record the store still has. The result's
/// change knows the stored record (its prior), and the step timeout it
/// armed in memory is disarmed. The saga is too large for one stored row,
/// so its transitions write its header and the steps they changed.
#[tokio::test]
async fn a_saga_finished_earlier_in_the_batch_is_read_from_memory() {
    use jetsaga_core::saga::state::SagaStatus;
    use jetsaga_store::Prior;
    let (mut p, _) = partition_with_one_step().await;
    let mut after = AfterFlush::default();
    let input = serde_json::json!({ "order": 7, "blob": "x".repeat(jetsaga_store::ONE_ROW_MAX) });
    let id = start_one(&mut p, input.clone(), &mut after);
    assert!(matches!(
        p.pending.last().and_then(|c| c.saga.as_ref()),
        Some(SagaWrite::Whole(_))
    ));
    assert_eq!(p.timeouts.len(), 1, "the dispatched attempt's timeout");
    p.write_pending().unwrap();

    p.apply_result(ok_result(&id, 1), &mut after).unwrap();
    let change = p.pending.last().unwrap();
    assert_eq!(
        change.prior,
        Prior::Stored {
            state: "running",
            finished: None
        }
    );
    match change.saga.as_ref() {
        Some(SagaWrite::Steps { header, steps }) => {
            assert_eq!(header.status, SagaStatus::Completed);
            assert_eq!(steps.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0]);
        }
        other => panic!("expected the header and step 0, got {other:?}"),
    }
    assert_eq!(p.timeouts.len(), 0);
    assert!(!p.active.contains_key(&id) && p.finished.contains_key(&id));
    let staged = p.pending.len();
    p.apply_result(ok_result(&id, 1), &mut after).unwrap();
    assert_eq!(p.pending.len(), staged, "the repeat changes nothing");

    p.write_pending().unwrap();
    assert!(p.finished.is_empty());
    let stored = p.store.saga(&id).unwrap().unwrap();
    assert_eq!(stored.status, SagaStatus::Completed);
    assert_eq!(stored.input, input);
    assert_eq!(stored.steps[0].output, Some(serde_json::json!({ "n": 1 })));
}

/// A small saga's transitions write it whole (one stored row).
#[tokio::test]
async fn a_small_saga_is_written_whole() {
    let (mut p, _) = partition_with_one_step().await;
    let mut after = AfterFlush::default();
    let id = start_one(&mut p, serde_json::json!({ "order": 7 }), &mut after);
    p.write_pending().unwrap();
    p.apply_result(ok_result(&id, 1), &mut after).unwrap();
    match p.pending.last().and_then(|c| c.saga.as_ref()) {
        Some(SagaWrite::Whole(saga)) => assert_eq!(saga.steps.len(), 1),
        other => panic!("expected the whole saga, got {other:?}"),
    }
    p.write_pending().unwrap();
    assert_eq!(
        p.store.saga(&id).unwrap().unwrap().steps[0].output,
        Some(serde_json::json!({ "n": 1 }))
    );
}

/// A transition applied to a copy of a saga (not taken out of the
/// in-memory set) that finishes it leaves no unfinished copy behind.
#[tokio::test]
async fn a_copy_that_finishes_replaces_the_unfinished_saga_in_memory() {
    use jetsaga_core::saga::state::SagaStatus;
    let (mut p, version) = partition_with_one_step().await;
    let mut after = AfterFlush::default();
    let id = start_one(&mut p, serde_json::json!({}), &mut after);
    p.write_pending().unwrap();
    let copy = p.saga(&id).unwrap().unwrap();
    let def = p.definition("one", version).unwrap().unwrap();
    let event = Event::Cancel {
        compensate: false,
        reason: "test".to_owned(),
    };
    p.apply_event(copy, &def, event, Vec::new(), &mut after)
        .unwrap()
        .unwrap();
    assert!(!p.active.contains_key(&id));
    assert!(matches!(
        p.finished.get(&id).map(|s| &s.status),
        Some(SagaStatus::Cancelled { .. })
    ));
}

/// At start (or takeover) the partition arms the timeout of each attempt in
/// flight, except one the store holds as a timer (a released held task's,
/// or one an earlier version stored): that one fires from the store.
#[tokio::test]
async fn resuming_arms_step_timeouts_the_store_does_not_hold() {
    use jetsaga_store::TimerRow;
    let store: Arc<dyn Store> = Arc::new(jetsaga_store::SledStore::temporary().unwrap());
    let (mut p, _) = partition_on(store.clone()).await;
    let mut after = AfterFlush::default();
    let id = start_one(&mut p, serde_json::json!({}), &mut after);
    p.write_pending().unwrap();
    drop(p);

    let resumed = || async {
        let (mut p, _) = partition_on(store.clone()).await;
        for saga in p.store.unfinished_sagas().unwrap() {
            p.active.insert(saga.id.clone(), saga);
        }
        p.resume_services().unwrap();
        p.resume_step_timeouts().unwrap();
        p
    };
    let mut p = resumed().await;
    let started = p.active[&id].steps[0].attempts[0].started_at;
    let fired = p.timeouts.take_due(u64::MAX, 10);
    assert_eq!(fired.len(), 1);
    assert_eq!(
        fired[0].due,
        started + 30_000,
        "the attempt's start plus 30 s"
    );

    let timer = TimerKind::StepTimeout {
        step: 0,
        kind: jetsaga_protocol::TaskKind::Action,
        attempt: 1,
    };
    store
        .commit(Change {
            timers_add: vec![TimerRow {
                saga_id: id.clone(),
                timer: timer.clone(),
                due: 42,
            }],
            ..Change::default()
        })
        .unwrap();
    assert_eq!(store.timer_due(&id, &timer).unwrap(), Some(42));
    assert_eq!(resumed().await.timeouts.len(), 0);
}
