//! Lifecycle events as CloudEvents 1.0 (JSON, structured mode).
//!
//! Every [`LifecycleEvent`] a transition emits becomes one outbox message,
//! written in the same store transaction as the transition: the relay
//! publishes it to the `<PREFIX>_EVENTS` stream on
//! `<prefix>.event.<saga_name>.<type-suffix>`. Its `Nats-Msg-Id` (and the
//! CloudEvent `id`) is `event.<saga_id>.<seq>.<type-suffix>`, where `seq` is
//! the saga's event sequence number, stored with the saga; re-applying a
//! transition after a crash yields the same ids, and the stream's duplicate
//! window drops a republished row. See `docs/PROTOCOL.md`.

use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::{LifecycleEvent, Millis, Saga, SagaState};
use jetsaga_protocol::{HEADER_SAGA_ID, Subjects, TaskKind};
use jetsaga_store::OutboxMessage;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// Prefix of every CloudEvent `type` the engine emits.
pub const TYPE_PREFIX: &str = "io.jetsaga.";
/// CloudEvents spec version.
pub const SPEC_VERSION: &str = "1.0";

/// One lifecycle event, as published (CloudEvents 1.0 structured JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event; equal to the message's `Nats-Msg-Id`.
    pub id: String,
    /// `jetsaga/<prefix>`.
    pub source: String,
    /// `io.jetsaga.<type-suffix>`, e.g. `io.jetsaga.saga.completed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The saga id.
    pub subject: String,
    /// When the transition happened (RFC 3339).
    pub time: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The event's details.
    pub data: EventData,
}

/// The `data` of a lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventData {
    /// Saga id.
    pub saga_id: String,
    /// Saga (definition) name.
    pub saga_name: String,
    /// Step id, for step events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// `action` or `compensation`, for step events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TaskKind>,
    /// Attempt number: the attempt that ended, or for `step.retrying` the
    /// one that comes next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Why a step failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the saga compensates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The saga's state after the event (terminal state for finishing
    /// events, the state retried from for `saga.retried`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Key generation, for `saga.retried`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u32>,
}

/// The type suffix of `event` (the CloudEvent type without `io.jetsaga.`,
/// also the last two subject tokens).
pub fn type_suffix(event: &LifecycleEvent) -> String {
    match event {
        LifecycleEvent::SagaStarted => "saga.started".into(),
        LifecycleEvent::SagaCompensating { .. } => "saga.compensating".into(),
        LifecycleEvent::SagaRetried { .. } => "saga.retried".into(),
        LifecycleEvent::SagaFinished { state } => format!("saga.{state}"),
        LifecycleEvent::StepSucceeded { .. } => "step.succeeded".into(),
        LifecycleEvent::StepRetrying { .. } => "step.retrying".into(),
        LifecycleEvent::StepFailed { .. } => "step.failed".into(),
        LifecycleEvent::StepCompensated { .. } => "step.compensated".into(),
        LifecycleEvent::StepCompensationFailed { .. } => "step.compensation_failed".into(),
    }
}

/// Every [`type_suffix`] an event can have.
pub fn type_suffixes() -> Vec<String> {
    let mut all: Vec<String> = [
        "saga.started",
        "saga.compensating",
        "saga.retried",
        "step.succeeded",
        "step.retrying",
        "step.failed",
        "step.compensated",
        "step.compensation_failed",
    ]
    .map(String::from)
    .into();
    all.extend(SagaState::terminal().map(|state| format!("saga.{}", state.name())));
    all
}

/// RFC 3339 (milliseconds, UTC) of a [`Millis`] timestamp.
pub fn rfc3339(ms: Millis) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The CloudEvent for `event`, the `seq`-th lifecycle event of `saga`
/// (whose state is the one after the transition).
pub fn cloud_event(
    subjects: &Subjects,
    saga: &Saga,
    def: &SagaDefinition,
    event: &LifecycleEvent,
    seq: u64,
) -> CloudEvent {
    let suffix = type_suffix(event);
    let step_id = |i: usize| def.steps.get(i).map(|s| s.id.clone());
    let last_attempt = |i: usize, kind: TaskKind| {
        saga.steps
            .get(i)
            .and_then(|s| s.attempts.iter().rev().find(|a| a.kind == kind))
            .map(|a| a.number)
    };
    let mut data = EventData {
        saga_id: saga.id.clone(),
        saga_name: saga.name.clone(),
        step: None,
        kind: None,
        attempt: None,
        error: None,
        reason: None,
        state: None,
        generation: None,
    };
    let step_event = |data: &mut EventData, step: usize, kind: TaskKind| {
        data.step = step_id(step);
        data.kind = Some(kind);
        data.attempt = last_attempt(step, kind);
    };
    match event {
        LifecycleEvent::SagaStarted => {}
        LifecycleEvent::SagaCompensating { reason } => data.reason = Some(reason.clone()),
        LifecycleEvent::SagaRetried { from, generation } => {
            data.state = Some(from.clone());
            data.generation = Some(*generation);
        }
        LifecycleEvent::SagaFinished { state } => data.state = Some(state.clone()),
        LifecycleEvent::StepSucceeded { step } => step_event(&mut data, *step, TaskKind::Action),
        LifecycleEvent::StepRetrying {
            step,
            kind,
            next_attempt,
            error,
        } => {
            step_event(&mut data, *step, *kind);
            data.attempt = Some(*next_attempt);
            data.error = Some(error.clone());
        }
        LifecycleEvent::StepFailed { step, error } => {
            step_event(&mut data, *step, TaskKind::Action);
            data.error = Some(error.clone());
        }
        LifecycleEvent::StepCompensated { step } => {
            step_event(&mut data, *step, TaskKind::Compensation)
        }
        LifecycleEvent::StepCompensationFailed { step, error } => {
            step_event(&mut data, *step, TaskKind::Compensation);
            data.error = Some(error.clone());
        }
    }
    CloudEvent {
        specversion: SPEC_VERSION.into(),
        id: msg_id(&saga.id, seq, &suffix),
        source: format!("jetsaga/{}", subjects.prefix()),
        type_: format!("{TYPE_PREFIX}{suffix}"),
        subject: saga.id.clone(),
        time: rfc3339(saga.updated_at),
        datacontenttype: "application/json".into(),
        data,
    }
}

/// The `Nats-Msg-Id` (and CloudEvent `id`) of the `seq`-th event of a saga.
pub fn msg_id(saga_id: &str, seq: u64, type_suffix: &str) -> String {
    format!("event.{saga_id}.{seq}.{type_suffix}")
}

/// The outbox message carrying `event`, the `seq`-th lifecycle event of `saga`.
pub fn outbox_message(
    subjects: &Subjects,
    saga: &Saga,
    def: &SagaDefinition,
    event: &LifecycleEvent,
    seq: u64,
) -> OutboxMessage {
    let ce = cloud_event(subjects, saga, def, event, seq);
    let suffix = type_suffix(event);
    OutboxMessage {
        subject: subjects.event(&saga.name, &suffix),
        msg_id: ce.id.clone(),
        headers: vec![
            (HEADER_SAGA_ID.to_string(), saga.id.clone()),
            (
                "Content-Type".to_string(),
                "application/cloudevents+json".to_string(),
            ),
        ],
        payload: serde_json::to_vec(&ce).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_listed() {
        let all = type_suffixes();
        for state in [
            "completed",
            "compensated",
            "partially_compensated",
            "failed",
            "cancelled",
        ] {
            let finished = LifecycleEvent::SagaFinished {
                state: state.into(),
            };
            assert!(all.contains(&type_suffix(&finished)), "{state}: {all:?}");
        }
        assert!(all.contains(&type_suffix(&LifecycleEvent::SagaStarted)));
    }

    #[test]
    fn type_suffixes_and_time() {
        assert_eq!(
            type_suffix(&LifecycleEvent::SagaFinished {
                state: "partially_compensated".into()
            }),
            "saga.partially_compensated"
        );
        assert_eq!(
            type_suffix(&LifecycleEvent::StepCompensationFailed {
                step: 0,
                error: String::new()
            }),
            "step.compensation_failed"
        );
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(msg_id("s", 3, "saga.started"), "event.s.3.saga.started");
    }
}
