//! The group commit: state changes written atomically, made durable
//! together ([`GroupCommit`]).

use crate::StoreError;
use crate::outbox::OutboxMessage;
use crate::services::HeldTask;
use crate::start_queue::QueuedRow;
use crate::timers::TimerRow;
use futures::future::BoxFuture;
use jetsaga_core::saga::state::{AttemptOutcome, Millis, Saga, SagaState, StepState, TimerKind};
use serde::{Deserialize, Serialize};

/// What the writer knows of the stored record a [`Change`] replaces, so the
/// store can move the saga's index entries without reading and decoding it.
///
/// In serde form the state is its name; a name that is no saga state fails
/// to deserialise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Prior {
    /// Not known: the store reads the stored record.
    #[default]
    Unknown,
    /// There is no stored record: the saga is new.
    Absent,
    /// The stored record is of the same saga (same id and name) in state
    /// `state`, finished at `finished` if terminal.
    Stored {
        /// [`jetsaga_core::saga::state::SagaStatus::name`] of the stored record.
        state: &'static str,
        /// The time the `finished` index has it under (terminal sagas only).
        finished: Option<Millis>,
    },
}

impl Prior {
    /// The prior of a change replacing `saga` as it is stored now.
    pub fn of(saga: &Saga) -> Self {
        Prior::Stored {
            state: saga.status.name(),
            finished: saga
                .status
                .is_terminal()
                .then(|| saga.finished_at.unwrap_or(saga.updated_at)),
        }
    }
}

/// [`Prior`] as serde sees it: the state by name.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PriorForm {
    Unknown,
    Absent,
    Stored {
        state: String,
        finished: Option<Millis>,
    },
}

impl From<Prior> for PriorForm {
    fn from(prior: Prior) -> Self {
        match prior {
            Prior::Unknown => PriorForm::Unknown,
            Prior::Absent => PriorForm::Absent,
            Prior::Stored { state, finished } => PriorForm::Stored {
                state: state.to_owned(),
                finished,
            },
        }
    }
}

impl TryFrom<PriorForm> for Prior {
    type Error = String;

    fn try_from(form: PriorForm) -> Result<Self, Self::Error> {
        Ok(match form {
            PriorForm::Unknown => Prior::Unknown,
            PriorForm::Absent => Prior::Absent,
            PriorForm::Stored { state, finished } => Prior::Stored {
                state: SagaState::from_name(&state)
                    .ok_or_else(|| {
                        format!(
                            "unknown saga state {state:?} in a prior (expected one of: {})",
                            SagaState::names()
                        )
                    })?
                    .name(),
                finished,
            },
        })
    }
}

impl Serialize for Prior {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PriorForm::from(self.clone()).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Prior {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Prior::try_from(PriorForm::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A saga's record as a [`Change`] writes it: the whole saga, or its header
/// and only the steps a transition wrote, so that what a transition writes
/// (and journals) does not grow with the saga's size: neither its step
/// count nor its input (which never changes, and is written with the
/// whole saga only).
///
/// The serde form of [`SagaWrite::Whole`] is the saga itself (what a
/// journal record held before steps were written apart), that of
/// [`SagaWrite::Steps`] `{"header": …, "steps": [[index, step], …]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SagaWrite {
    /// The header and the steps the transition wrote.
    Steps {
        /// The saga without its steps and input (`steps` is empty, `input`
        /// null: neither is written).
        header: Saga,
        /// The steps written, by index.
        steps: Vec<(u32, StepState)>,
    },
    /// The whole saga: a new one, or one rewritten whole.
    Whole(Saga),
}

impl SagaWrite {
    /// Saga `saga`'s header and steps `steps` (indexes into `saga.steps`;
    /// one out of range is a bug and panics).
    pub fn of_steps(saga: &Saga, steps: &[usize]) -> Self {
        SagaWrite::Steps {
            header: header_of(saga),
            steps: steps
                .iter()
                .map(|&i| (i as u32, saga.steps[i].clone()))
                .collect(),
        }
    }

    /// What a transition of `saga` that wrote steps `steps` writes: the
    /// whole saga while it is small enough to be stored in one row (see
    /// [`fits_one_row`]; writing it whole then costs less than writing it
    /// in parts), else its header and those steps.
    pub fn of_transition(saga: &Saga, steps: &[usize]) -> Self {
        if fits_one_row(saga) {
            SagaWrite::Whole(saga.clone())
        } else {
            SagaWrite::of_steps(saga, steps)
        }
    }

    /// The saga's header: everything but (possibly) its steps and input.
    /// The id, name, state and times are always there.
    pub fn header(&self) -> &Saga {
        match self {
            SagaWrite::Steps { header, .. } => header,
            SagaWrite::Whole(saga) => saga,
        }
    }

    /// The saga's id.
    pub fn id(&self) -> &str {
        &self.header().id
    }
}

impl From<Saga> for SagaWrite {
    fn from(saga: Saga) -> Self {
        SagaWrite::Whole(saga)
    }
}

/// The largest saga the store keeps in one row, in bytes of its stored
/// form (a few bytes more than its JSON). A larger one is stored in parts
/// (header, one row per step, input), so that a transition writes only
/// what it changed.
pub const ONE_ROW_MAX: usize = 4096;

/// What the stored form of a saga in one row adds to its JSON: a 5-byte
/// frame, and the header's `"input":null` and `"steps":[]` written besides
/// the body's `{"input":…,"steps":…}`.
pub(crate) const ONE_ROW_OVERHEAD: usize = 30;

/// Whether `saga` is small enough to be stored in one row
/// ([`ONE_ROW_MAX`]). Its input, outputs, steps, attempts and their errors
/// are first measured from below (serde_json scans a whole string before
/// it writes any of it, so a long input must not reach the serialiser),
/// then the saga is serialised into a counter that stops at the limit. So
/// a large input or output costs at most about that many bytes' work; the
/// saga's other strings (a status reason, say) are serialised as they are.
pub fn fits_one_row(saga: &Saga) -> bool {
    /// Counts bytes, and fails past the limit (which stops serde).
    struct Bounded(usize);
    impl std::io::Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 + ONE_ROW_OVERHEAD > ONE_ROW_MAX {
                return Err(std::io::ErrorKind::FileTooLarge.into());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    !too_large_from_below(saga) && serde_json::to_writer(Bounded(0), saga).is_ok()
}

/// Whether `saga`'s input, outputs, steps, attempts and errors alone,
/// measured from below, make it too large for one row (see
/// [`fits_one_row`]).
pub(crate) fn too_large_from_below(saga: &Saga) -> bool {
    let mut at_least = 0;
    let mut over = |n: usize| {
        at_least += n;
        at_least > ONE_ROW_MAX
    };
    // A step and an attempt are each at least `{}` in JSON, an error its
    // bytes and quotes.
    json_over(&saga.input, &mut over)
        || saga.steps.iter().any(|step| {
            over(2)
                || step
                    .output
                    .as_ref()
                    .is_some_and(|output| json_over(output, &mut over))
                || step.attempts.iter().any(|attempt| match &attempt.outcome {
                    Some(AttemptOutcome::Retryable { error } | AttemptOutcome::Fatal { error }) => {
                        over(error.len() + 2)
                    }
                    _ => over(2),
                })
        })
}

/// Feeds `over` a lower bound of the length of each node of `value` as
/// JSON (a string its bytes, any other node one byte) until it answers
/// true (then so does this): never more nodes than the bound it stops at.
fn json_over(value: &serde_json::Value, over: &mut impl FnMut(usize) -> bool) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => over(s.len() + 2),
        Value::Array(items) => over(2) || items.iter().any(|item| json_over(item, over)),
        Value::Object(fields) => {
            over(2)
                || fields
                    .iter()
                    .any(|(key, item)| over(key.len() + 3) || json_over(item, over))
        }
        _ => over(1),
    }
}

/// `saga` without its steps and input (null): the part of a saga every
/// transition writes.
pub fn header_of(saga: &Saga) -> Saga {
    Saga {
        id: saga.id.clone(),
        name: saga.name.clone(),
        definition_version: saga.definition_version,
        input: serde_json::Value::Null,
        idempotency_key: saga.idempotency_key.clone(),
        generation: saga.generation,
        status: saga.status.clone(),
        steps: Vec::new(),
        created_at: saga.created_at,
        updated_at: saga.updated_at,
        finished_at: saga.finished_at,
        trace_parent: saga.trace_parent.clone(),
        event_seq: saga.event_seq,
    }
}

/// One atomic state change. Its serde form (JSON) is what the journal
/// carries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The saga's new state (inserted or replaced): whole, or its header
    /// and the steps that changed. Indexes follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaWrite>,
    /// The stored record `saga` replaces, when the writer knows it
    /// ([`Prior::Unknown`] is always safe: the store then reads it).
    #[serde(default)]
    pub prior: Prior,
    /// Idempotency key to bind to `saga` (start requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Messages to publish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<OutboxMessage>,
    /// Timers to arm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers_add: Vec<TimerRow>,
    /// Timers to disarm, by saga and kind (a missing one is no error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timers_remove: Vec<(String, TimerKind)>,
    /// Rows to add to the start queue, by enqueue sequence ([`jetsaga_core::limits`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue_add: Vec<(u64, QueuedRow)>,
    /// Rows to remove from the start queue, by enqueue sequence (a missing
    /// one is no error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue_remove: Vec<u64>,
    /// Tasks to hold ([`jetsaga_core::admission`]), by hold sequence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_add: Vec<(u64, HeldTask)>,
    /// Held tasks to remove (released or dropped), by hold sequence (a
    /// missing one is no error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_remove: Vec<u64>,
    /// Circuit breakers to store, by service; `None` deletes the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breakers: Vec<(String, Option<jetsaga_core::admission::Breaker>)>,
}

/// Writing state changes and making them durable: the single writer's
/// surface (the partition; retention's prune runs inside it). Each
/// [`Change`] and each deletion is one atomic write, durable once a
/// [`GroupCommit::flush`] that started after it completes; the relay reads
/// [`GroupCommit::outbox_durable`] to publish only durable rows, and the
/// API flushes after storing definitions.
///
/// All writes of the engine go through one writer per partition, so
/// implementations need not order concurrent commits; reads may happen from
/// any task.
pub trait GroupCommit: Send + Sync {
    /// Writes one change atomically (not yet durable: see [`GroupCommit::flush`]).
    fn commit(&self, change: Change) -> Result<(), StoreError> {
        self.commit_many(std::slice::from_ref(&change))
    }
    /// Writes `changes`, in order, in one atomic transaction: all of them or
    /// (on an error) none. A later change sees the earlier ones (its
    /// [`Prior`] is the state they left). Not yet durable: see
    /// [`GroupCommit::flush`].
    fn commit_many(&self, changes: &[Change]) -> Result<(), StoreError>;
    /// Deletes saga `id` in one atomic transaction (not yet durable: see
    /// [`GroupCommit::flush`]): its record, its index entries, its timers and the
    /// binding of its idempotency key, so that the key starts a new saga
    /// afterwards. Returns the deleted saga; `None` (and nothing changes)
    /// if there is none.
    ///
    /// Meant for terminal sagas, which the caller checks. Outbox rows the
    /// saga's transitions wrote are left to the relay: a task published
    /// after the deletion reaches a worker, and its result is rejected as
    /// `unknown_saga`, like any result of a deleted saga.
    fn delete_saga(&self, id: &str) -> Result<Option<Saga>, StoreError>;
    /// Makes every commit so far durable, and advances
    /// [`GroupCommit::outbox_durable`] past their outbox rows once it completes.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The highest outbox sequence known to be durable: every outbox row at
    /// or below it survives a crash (rows found at open count as durable:
    /// the store flushes once when it opens). `None` before any row.
    /// Publishing only rows up to it keeps the outbox's promise without a
    /// flush of the publisher's own.
    fn outbox_durable(&self) -> Option<u64>;
    /// The highest outbox sequence written, durable or not; `None` before
    /// any row.
    fn outbox_written(&self) -> Option<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsaga_core::admission::Breaker;
    use jetsaga_core::saga::state::SagaStatus;
    use jetsaga_protocol::TaskKind;

    fn saga(status: SagaStatus) -> Saga {
        Saga {
            id: "0001".into(),
            name: "order".into(),
            definition_version: 2,
            input: serde_json::json!({ "order": 1 }),
            idempotency_key: Some("req-1".into()),
            generation: 1,
            status,
            steps: vec![],
            created_at: 1_000,
            updated_at: 2_000,
            finished_at: None,
            trace_parent: Some("00-abc-def-01".into()),
            event_seq: 5,
        }
    }

    fn message(n: u8) -> OutboxMessage {
        OutboxMessage {
            subject: format!("jetsaga.task.{n}"),
            msg_id: format!("msg-{n}"),
            headers: vec![("k".into(), n.to_string())],
            payload: vec![n, 0, 255],
        }
    }

    #[test]
    fn a_change_survives_json() {
        let prior_saga = saga(SagaStatus::Running);
        let change = Change {
            saga: Some(
                saga(SagaStatus::Compensating {
                    reason: "step failed".into(),
                })
                .into(),
            ),
            prior: Prior::of(&prior_saga),
            idempotency_key: Some("req-1".into()),
            outbox: vec![message(1), message(2)],
            timers_add: vec![TimerRow {
                saga_id: "0001".into(),
                timer: TimerKind::Retry {
                    step: 1,
                    kind: TaskKind::Compensation,
                    attempt: 2,
                },
                due: 9_000,
            }],
            timers_remove: vec![("0001".into(), TimerKind::SagaTimeout)],
            queue_add: vec![(
                7,
                QueuedRow {
                    saga_id: "0002".into(),
                    saga: "order".into(),
                    enqueued_at: 1_500,
                },
            )],
            queue_remove: vec![6],
            held_add: vec![(
                3,
                HeldTask {
                    service: "inventory".into(),
                    saga_id: "0001".into(),
                    step: 0,
                    kind: TaskKind::Action,
                    attempt: 1,
                    timeout_ms: 5_000,
                    message: message(3),
                },
            )],
            held_remove: vec![2],
            breakers: vec![
                ("inventory".into(), Some(Breaker::default())),
                ("payments".into(), None),
            ],
        };
        let json = serde_json::to_string(&change).unwrap();
        let back: Change = serde_json::from_str(&json).unwrap();
        assert_eq!(back, change);
    }

    #[test]
    fn every_prior_survives_json_with_its_state_by_name() {
        let mut done = saga(SagaStatus::Completed);
        done.finished_at = Some(3_000);
        let priors = [
            Prior::Unknown,
            Prior::Absent,
            Prior::of(&saga(SagaStatus::Pending)),
            Prior::of(&done),
        ];
        for prior in priors {
            let json = serde_json::to_value(&prior).unwrap();
            assert_eq!(serde_json::from_value::<Prior>(json).unwrap(), prior);
        }
        assert_eq!(
            serde_json::to_value(Prior::of(&done)).unwrap(),
            serde_json::json!({ "stored": { "state": "completed", "finished": 3_000 } })
        );
    }

    #[test]
    fn a_prior_with_an_unknown_state_does_not_deserialise() {
        let err = serde_json::from_value::<Prior>(
            serde_json::json!({ "stored": { "state": "sleeping", "finished": null } }),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown saga state \"sleeping\""),
            "{err}"
        );
        assert!(err.to_string().contains("running"), "{err}");
    }

    #[test]
    fn a_change_of_some_steps_survives_json_and_a_whole_saga_still_reads() {
        let mut s = saga(SagaStatus::Running);
        s.steps = vec![StepState::default(); 3];
        s.steps[2].output = Some(serde_json::json!({ "ok": 1 }));
        let change = Change {
            saga: Some(SagaWrite::of_steps(&s, &[2])),
            prior: Prior::of(&s),
            ..Change::default()
        };
        let json = serde_json::to_value(&change).unwrap();
        assert_eq!(json["saga"]["steps"][0][0], 2);
        assert!(json["saga"]["header"]["input"].is_null());
        assert_eq!(serde_json::from_value::<Change>(json).unwrap(), change);

        // A journal record written before steps were written apart holds
        // the whole saga: it reads as one.
        let earlier = serde_json::json!({ "saga": serde_json::to_value(&s).unwrap() });
        let back: Change = serde_json::from_value(earlier).unwrap();
        assert_eq!(back.saga, Some(SagaWrite::Whole(s)));
    }
}
