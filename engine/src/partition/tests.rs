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
