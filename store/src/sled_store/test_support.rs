//! Builders the sled store's tests share.

pub(super) use super::SledStore;
pub(super) use crate::{
    Change, DefinitionTable, GroupCommit, IdempotencyTable, OutboxMessage, OutboxTable, SagaFilter,
    SagaTable, TimerRow, TimerTable,
};
pub(super) use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::definition::{RetryPolicy, StepDefinition};
pub(super) use jetsaga_core::saga::state::{Millis, Saga, SagaState, SagaStatus, TimerKind};
pub(super) use jetsaga_protocol::TaskKind;
pub(super) use sled::{IVec, Tree};
pub(super) use std::time::Duration;

pub(super) fn saga(id: &str, name: &str, status: SagaStatus) -> Saga {
    Saga {
        id: id.to_owned(),
        name: name.to_owned(),
        definition_version: 1,
        input: serde_json::json!({ "order": id }),
        idempotency_key: None,
        generation: 0,
        status,
        steps: vec![],
        created_at: 1_000,
        updated_at: 1_000,
        finished_at: None,
        trace_parent: None,
        event_seq: 0,
    }
}

pub(super) fn definition(name: &str, operation: &str) -> SagaDefinition {
    SagaDefinition {
        name: name.to_owned(),
        version: 0,
        timeout: Some(Duration::from_secs(60)),
        steps: vec![StepDefinition {
            id: "reserve".to_owned(),
            service: "inventory".to_owned(),
            operation: operation.to_owned(),
            compensation: Some("release".to_owned()),
            timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            depends_on: vec![],
        }],
        triggers: Vec::new(),
        policy: Default::default(),
        max_running: None,
        step_events: false,
    }
}

pub(super) fn msg(n: u32) -> OutboxMessage {
    OutboxMessage {
        subject: format!("jetsaga.task.{n}"),
        msg_id: format!("msg-{n}"),
        headers: vec![("k".to_owned(), n.to_string())],
        payload: n.to_be_bytes().to_vec(),
    }
}

pub(super) fn timer(saga_id: &str, timer: TimerKind, due: Millis) -> TimerRow {
    TimerRow {
        saga_id: saga_id.to_owned(),
        timer,
        due,
    }
}

pub(super) fn step_timeout(step: usize, attempt: u32) -> TimerKind {
    TimerKind::StepTimeout {
        step,
        kind: TaskKind::Action,
        attempt,
    }
}

pub(super) fn put(store: &SledStore, s: Saga) {
    store
        .commit(Change {
            saga: Some(s.into()),
            ..Change::default()
        })
        .unwrap();
}

pub(super) fn ids(sagas: &[Saga]) -> Vec<&str> {
    sagas.iter().map(|s| s.id.as_str()).collect()
}

pub(super) fn running() -> SagaStatus {
    SagaStatus::Running
}
