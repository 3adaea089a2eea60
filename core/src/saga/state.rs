//! Saga and step state: what the store keeps and the state machine changes.
//!
//! States are enums whose variants carry their data, so an illegal state (a
//! running step without an attempt, a failed saga without a reason) cannot be
//! written down.

use jetsaga_protocol::{Outcome, TaskKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Milliseconds since the Unix epoch. The state machine never reads a clock:
/// the current time comes in with every event.
pub type Millis = u64;

/// One saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub created_at: Millis,
    /// When the saga last changed.
    pub updated_at: Millis,
    /// When the saga reached a terminal state.
    pub finished_at: Option<Millis>,
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

/// Where a saga stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
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

    /// Stable lowercase name (`running`, `partially_compensated`, ...), as used
    /// by the CLI, the API and the store's state index.
    pub fn name(&self) -> &'static str {
        self.state().name()
    }

    /// Whether nothing will change any more.
    pub fn is_terminal(&self) -> bool {
        self.state().is_terminal()
    }
}

/// The states a saga can be in, without their data: the one list of them,
/// part of the protocol (a listing's `state`, a list filter).
pub use jetsaga_protocol::api::SagaState;

/// One step of one saga instance.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepState {
    /// Where the step stands.
    pub status: StepStatus,
    /// The attempts of the action and of the compensation, oldest first:
    /// all of them, or, once a step made more than
    /// [`ATTEMPTS_KEPT_FIRST`] + [`ATTEMPTS_KEPT_LATEST`], the first and the
    /// latest ones (and always the latest of each kind), the ones in between
    /// counted in [`StepState::attempts_dropped`].
    pub attempts: Vec<Attempt>,
    /// Attempts dropped from the middle of [`StepState::attempts`] to keep
    /// a step's record bounded however often it retries.
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

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How many of a step's first attempts its history keeps for good.
pub const ATTEMPTS_KEPT_FIRST: usize = 5;
/// How many of a step's latest attempts its history keeps.
pub const ATTEMPTS_KEPT_LATEST: usize = 20;

impl StepState {
    /// Records a new attempt, then drops the oldest attempt past the first
    /// [`ATTEMPTS_KEPT_FIRST`] if the history holds more than
    /// [`ATTEMPTS_KEPT_FIRST`] + [`ATTEMPTS_KEPT_LATEST`]. An attempt that
    /// is the latest of its kind is never dropped (the machine reads it for
    /// fencing, attempt numbering and key generations), so the history
    /// holds at most one more than that.
    pub fn push_attempt(&mut self, attempt: Attempt) {
        self.attempts.push(attempt);
        if self.attempts.len() <= ATTEMPTS_KEPT_FIRST + ATTEMPTS_KEPT_LATEST {
            return;
        }
        let middle = ATTEMPTS_KEPT_FIRST..self.attempts.len() - ATTEMPTS_KEPT_LATEST;
        let droppable = middle.into_iter().find(|&i| {
            let kind = self.attempts[i].kind;
            self.attempts[i + 1..].iter().any(|a| a.kind == kind)
        });
        if let Some(i) = droppable {
            self.attempts.remove(i);
            self.attempts_dropped += 1;
        }
    }
}

/// Where a step stands.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
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
        due: Millis,
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
        due: Millis,
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
    /// Stable lowercase name of the state.
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
    pub started_at: Millis,
    /// When the attempt ended (result or timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    /// How it ended; `None` while in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
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

/// A durable timer of a saga. Timers are fenced by attempt: a timer for an
/// attempt that is no longer current does nothing when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "timer", rename_all = "snake_case")]
pub enum TimerKind {
    /// Dispatch the next attempt of a step's action or compensation.
    Retry {
        /// Step index.
        step: usize,
        /// Action or compensation.
        kind: TaskKind,
        /// Attempt to dispatch.
        attempt: u32,
    },
    /// An attempt's time is up.
    StepTimeout {
        /// Step index.
        step: usize,
        /// Action or compensation.
        kind: TaskKind,
        /// Attempt that times out.
        attempt: u32,
    },
    /// The whole saga's time is up.
    SagaTimeout,
}

/// Something that happened to a saga; the only way its state changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Start a pending saga.
    Start,
    /// A worker's result for an attempt.
    TaskResult {
        /// Step index.
        step: usize,
        /// Action or compensation.
        kind: TaskKind,
        /// Attempt the result is for.
        attempt: u32,
        /// What the worker reported.
        outcome: Outcome,
    },
    /// A durable timer is due.
    TimerFired(TimerKind),
    /// An operator (or API client) asked to cancel.
    Cancel {
        /// Compensate the completed steps (`true`) or just stop (`false`).
        compensate: bool,
        /// Why.
        reason: String,
    },
    /// An operator asked to retry a finished saga whose cause was fixed: a
    /// `partially_compensated` one resumes its rollback, a `failed` or
    /// `compensated` one runs forward again (see the machine's module docs).
    Retry {
        /// Only resume a rollback: anything but `partially_compensated` is
        /// not applicable (`jetsaga saga retry-compensation`).
        compensation_only: bool,
    },
}

/// Inputs from the outside world that a transition may use: the machine has
/// no clock and no randomness of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// The current time.
    pub now: Millis,
    /// A sample drawn uniformly from `[0, 1)`, for retry jitter.
    pub random: f64,
}

/// What the engine must do because of a transition. The partition writes all
/// effects of one transition in the same store transaction as the new state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Publish a task for attempt `attempt` of a step's action or compensation.
    Dispatch {
        /// Step index.
        step: usize,
        /// Action or compensation.
        kind: TaskKind,
        /// Attempt number.
        attempt: u32,
        /// Generation of the task's idempotency key.
        generation: u32,
    },
    /// Arm a durable timer.
    ScheduleTimer {
        /// Which timer.
        timer: TimerKind,
        /// When it fires.
        due: Millis,
    },
    /// Disarm a durable timer that is no longer needed.
    CancelTimer {
        /// Which timer.
        timer: TimerKind,
    },
    /// Something other systems may want to hear about.
    Lifecycle(LifecycleEvent),
}

/// A lifecycle event of a saga or one of its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LifecycleEvent {
    /// The saga started running.
    SagaStarted,
    /// The saga began compensating.
    SagaCompensating {
        /// Why.
        reason: String,
    },
    /// An operator retried the finished saga.
    SagaRetried {
        /// The state it was retried from.
        from: String,
        /// Its key generation from now on.
        generation: u32,
    },
    /// The saga reached a terminal state (see its status for which).
    SagaFinished {
        /// Name of the terminal state.
        state: String,
    },
    /// A step's action succeeded.
    StepSucceeded {
        /// Step index.
        step: usize,
    },
    /// A step's action or compensation will be retried.
    StepRetrying {
        /// Step index.
        step: usize,
        /// Action or compensation.
        kind: TaskKind,
        /// Attempt that comes next.
        next_attempt: u32,
        /// Why the last attempt failed.
        error: String,
    },
    /// A step's action failed for good.
    StepFailed {
        /// Step index.
        step: usize,
        /// Why.
        error: String,
    },
    /// A step's compensation succeeded.
    StepCompensated {
        /// Step index.
        step: usize,
    },
    /// A step's compensation failed for good.
    StepCompensationFailed {
        /// Step index.
        step: usize,
        /// Why.
        error: String,
    },
}

impl LifecycleEvent {
    /// Whether it is about one step (published only for definitions with
    /// `step_events`), not the whole saga.
    pub fn is_step(&self) -> bool {
        matches!(
            self,
            LifecycleEvent::StepSucceeded { .. }
                | LifecycleEvent::StepRetrying { .. }
                | LifecycleEvent::StepFailed { .. }
                | LifecycleEvent::StepCompensated { .. }
                | LifecycleEvent::StepCompensationFailed { .. }
        )
    }
}

/// Why an event was not applied. Rejections change nothing; the engine logs
/// and counts them and acknowledges the message that carried them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The saga is terminal; nothing applies any more.
    #[error("the saga is already {0}")]
    Terminal(&'static str),
    /// The step index is not part of the definition.
    #[error("step index {0} is not part of the saga's definition")]
    UnknownStep(usize),
    /// A result or timer for an attempt that is not the step's current one
    /// (a stale attempt or a duplicate delivery).
    #[error("stale or duplicate: step {step} {kind} attempt {attempt} is not in flight")]
    Stale {
        /// Step id.
        step: String,
        /// Action or compensation.
        kind: TaskKind,
        /// Attempt named by the event.
        attempt: u32,
    },
    /// The event makes no sense in the saga's current state (for example
    /// `Start` on a running saga).
    #[error("{0}")]
    NotApplicable(String),
}

impl Rejection {
    /// Stable short reason, used as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Terminal(_) => "terminal",
            Rejection::UnknownStep(_) => "unknown_step",
            Rejection::Stale { .. } => "stale",
            Rejection::NotApplicable(_) => "not_applicable",
        }
    }
}
