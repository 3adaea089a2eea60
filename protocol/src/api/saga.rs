//! A saga as the request API shows it (`saga.get`, `GET /v1/sagas/{id}`,
//! and the answers of cancel and retry), and the lines of a listing.
//!
//! Times are milliseconds since the Unix epoch.

use super::SagaState;
use super::definition::SagaDefinition;
use crate::TaskKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A saga with the definition version it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaDetail {
    /// The saga: state, every step's state and attempt history.
    pub saga: Saga,
    /// The definition version it runs.
    pub definition: SagaDefinition,
    /// For a `pending` saga waiting in the start queue under a concurrency
    /// limit (`jetsaga_core::limits`): its 1-based place in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
}

/// One saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Saga {
    /// Instance id (a UUIDv7, so ids sort by creation time).
    pub id: String,
    /// Definition name.
    pub name: String,
    /// Definition version the instance runs; fixed at start.
    pub definition_version: u32,
    /// The saga's input.
    pub input: Value,
    /// Idempotency key the saga was started with, if any.
    pub idempotency_key: Option<String>,
    /// Key generation: 0 for the first run, raised by a retry whenever
    /// tasks need idempotency keys never used before (every forward retry; a
    /// resumed rollback whose failed compensation reported a fatal error).
    /// Each attempt records the generation of the key its task carried.
    #[serde(default)]
    pub generation: u32,
    /// Where the saga stands.
    pub status: SagaStatus,
    /// One entry per step of the definition, in the definition's order.
    pub steps: Vec<StepState>,
    /// When the saga was created.
    pub created_at: u64,
    /// When the saga last changed.
    pub updated_at: u64,
    /// When the saga reached a terminal state.
    pub finished_at: Option<u64>,
    /// The W3C `traceparent` the start carried (see `crate::trace`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// Lifecycle events published so far (see `crate::events`): the next
    /// event's sequence number, stored with the transition that emits it so
    /// that event ids are deterministic.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub event_seq: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a saga stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SagaStatus {
    /// Accepted, not started yet.
    Pending,
    /// Steps are being run.
    Running,
    /// A step failed for good, the saga timed out or was cancelled: completed
    /// steps are being compensated.
    Compensating {
        /// Why the saga rolls back.
        reason: String,
    },
    /// Every step succeeded. Terminal.
    Completed,
    /// Rolled back: every completed step with a compensation was compensated. Terminal.
    Compensated {
        /// Why the saga rolled back.
        reason: String,
    },
    /// Failed with nothing to compensate. Terminal.
    Failed {
        /// Why the saga failed.
        reason: String,
    },
    /// Rolled back only in part: some compensation failed for good (or could
    /// not run because a dependent's compensation failed). A person must act.
    /// Terminal.
    PartiallyCompensated {
        /// Why the saga rolled back.
        reason: String,
        /// Ids of the steps whose compensation failed or could not run.
        stuck_steps: Vec<String>,
    },
    /// Cancelled without compensation: in-flight results are ignored. Terminal.
    Cancelled {
        /// Why it was cancelled.
        reason: String,
    },
}

impl SagaStatus {
    /// Which of the states this is, without its data.
    pub fn state(&self) -> SagaState {
        match self {
            SagaStatus::Pending => SagaState::Pending,
            SagaStatus::Running => SagaState::Running,
            SagaStatus::Compensating { .. } => SagaState::Compensating,
            SagaStatus::Completed => SagaState::Completed,
            SagaStatus::Compensated { .. } => SagaState::Compensated,
            SagaStatus::Failed { .. } => SagaState::Failed,
            SagaStatus::PartiallyCompensated { .. } => SagaState::PartiallyCompensated,
            SagaStatus::Cancelled { .. } => SagaState::Cancelled,
        }
    }

    /// The state's name (`running`, `partially_compensated`, ...).
    pub fn name(&self) -> &'static str {
        self.state().name()
    }

    /// Whether nothing will change any more.
    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
    }
}

/// One step of one saga instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepState {
    /// The step's id in the definition (`definition.steps[i].id` for
    /// `steps[i]`). Sent in a saga detail; absent from engines before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where the step stands.
    pub status: StepStatus,
    /// The attempts of the action and of the compensation, oldest first:
    /// all of them, or for a step that made many, its first 5 and latest 20
    /// (and always the latest of each kind); the ones in between are
    /// counted in `attempts_dropped`.
    pub attempts: Vec<Attempt>,
    /// Attempts dropped from the middle of `attempts`; absent when none.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub attempts_dropped: u64,
    /// Output of the action, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Action attempts made before the current round (a retry of the saga
    /// starts a new one): the retry policy's `max_attempts` counts the
    /// attempts after it. Attempt numbers keep growing across rounds, so a
    /// result of an attempt from before a retry is always stale.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub action_base: u32,
    /// Compensation attempts made before the current round, likewise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compensation_base: u32,
}

/// Where a step stands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum StepStatus {
    /// Waiting for its dependencies.
    #[default]
    Pending,
    /// The action's attempt `attempt` is dispatched.
    Running {
        /// Current attempt number, from 1.
        attempt: u32,
    },
    /// The action failed retryably; attempt `attempt` runs at `due`.
    RetryWaiting {
        /// Next attempt number.
        attempt: u32,
        /// When it is dispatched.
        due: u64,
    },
    /// The action's effect happened.
    Succeeded,
    /// The action failed for good (no effect).
    Failed {
        /// Last error.
        error: String,
    },
    /// Never ran: the saga rolled back or was cancelled first.
    Skipped,
    /// The compensation's attempt `attempt` is dispatched.
    Compensating {
        /// Current compensation attempt number, from 1.
        attempt: u32,
    },
    /// The compensation failed retryably; attempt `attempt` runs at `due`.
    CompensationRetryWaiting {
        /// Next compensation attempt number.
        attempt: u32,
        /// When it is dispatched.
        due: u64,
    },
    /// The compensation's effect happened: the action is undone.
    Compensated,
    /// The step succeeded but defines no compensation; nothing to undo.
    NotCompensable,
    /// The compensation failed for good, or could not run; a person must act.
    CompensationFailed {
        /// Last error.
        error: String,
    },
}

impl StepStatus {
    /// Stable lowercase name of the state (its `state` on the wire).
    pub fn name(&self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running { .. } => "running",
            StepStatus::RetryWaiting { .. } => "retry_waiting",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed { .. } => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Compensating { .. } => "compensating",
            StepStatus::CompensationRetryWaiting { .. } => "compensation_retry_waiting",
            StepStatus::Compensated => "compensated",
            StepStatus::NotCompensable => "not_compensable",
            StepStatus::CompensationFailed { .. } => "compensation_failed",
        }
    }
}

/// One attempt at a step's action or compensation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    /// Action or compensation.
    pub kind: TaskKind,
    /// Attempt number within its kind, from 1; it keeps growing across
    /// retries of the saga.
    pub number: u32,
    /// Generation of the idempotency key the attempt's task carried
    /// (`jetsaga_protocol::idempotency_key_in_generation`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// When the task was dispatched.
    pub started_at: u64,
    /// When the attempt ended (result or timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// How it ended; `None` while in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AttemptOutcome {
    /// The worker reported success.
    Ok,
    /// The worker reported a retryable error.
    Retryable {
        /// The error.
        error: String,
    },
    /// The worker reported a fatal error.
    Fatal {
        /// The error.
        error: String,
    },
    /// No result arrived within the step's timeout.
    TimedOut,
    /// The saga was cancelled without compensation while it ran.
    Abandoned,
}

/// One line of a saga listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaSummary {
    /// Saga id.
    pub id: String,
    /// Definition name.
    pub name: String,
    /// State name (`running`, `completed`, `partially_compensated`, ...).
    pub state: SagaState,
    /// Steps succeeded or compensated so far / steps in all.
    pub steps_done: usize,
    /// Steps in all.
    pub steps_total: usize,
    /// Created at (milliseconds since the Unix epoch).
    pub created_at: u64,
    /// Last change (milliseconds since the Unix epoch).
    pub updated_at: u64,
    /// Finished at (milliseconds since the Unix epoch), once terminal.
    pub finished_at: Option<u64>,
}

/// One page of a saga listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaPage {
    /// The sagas, newest first.
    pub sagas: Vec<SagaSummary>,
    /// Cursor of the next page (pass it as `before`); absent on the last page.
    pub next: Option<String>,
}
