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

/// Reads within a batch see its unwritten changes: the latest state of a
/// saga, and a key a start earlier in the batch bound (so a second start
/// with it finds that saga instead of making another).
#[test]
fn a_batch_reads_its_own_unwritten_changes() {
    use jetsaga_core::saga::state::SagaStatus;
    let change = |s: Saga, key: Option<&str>| Change {
        saga: Some(s),
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
    assert_eq!(
        latest_saga(&batch, "a").map(|s| &s.status),
        Some(&SagaStatus::Completed)
    );
    assert_eq!(
        latest_saga(&batch, "b").map(|s| &s.status),
        Some(&SagaStatus::Running)
    );
    assert_eq!(latest_saga(&batch, "c"), None);
    assert_eq!(bound_saga(&batch, "order-1"), Some("a"));
    assert_eq!(bound_saga(&batch, "order-2"), None);
    assert_eq!(bound_saga(&[], "order-1"), None);
}
