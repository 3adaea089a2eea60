//! The pure saga state machine.
//!
//! [`apply`] takes a saga, its definition, one [`Event`] and the [`Inputs`]
//! of the moment (time, a random sample) and either changes the saga and
//! returns the [`Effect`]s the engine must carry out, or rejects the event
//! and changes nothing. There is no I/O, no clock and no randomness in here:
//! the partition that owns a saga writes the new state and the effects in one
//! store transaction, and the relays carry the effects out.
//!
//! # The rules in short
//!
//! - **Forward**: a step's action is dispatched as soon as every step it
//!   depends on has succeeded, so independent steps run in parallel. When
//!   every step succeeded the saga is `completed`.
//! - **Attempt fencing**: a result or a step timer applies only to the step's
//!   current attempt of that kind; anything else (a late result, a duplicate
//!   delivery, a timer of an earlier attempt) is [`Rejection::Stale`].
//! - **Retries**: a retryable error schedules the next attempt after the
//!   policy's backoff (or the worker's `retry_after_ms`, whichever is later).
//!   A timed-out attempt's outcome is unknown, so the next attempt is
//!   dispatched at once under the same idempotency key; workers deduplicate.
//!   An action whose last attempt timed out is not `failed` (its effect may
//!   be in place) but `compensation_failed` ("action outcome unknown after N
//!   timed-out attempts"): while running, the saga rolls back as for a
//!   failed step; while draining, the rollback goes on. Either way the step
//!   blocks the compensation of the steps it depends on and the rollback
//!   ends `partially_compensated` with the step among its `stuck_steps`.
//! - **Rollback**: a step failing for good, a saga timeout or a cancel with
//!   compensation makes the saga `compensating`. Pending steps are skipped,
//!   steps waiting for a retry fail, in-flight steps are drained (their result
//!   or timeout decides). A succeeded step is compensated once every step
//!   that depends on it is undone or never did anything, which is reverse
//!   dependency order; independent branches roll back in parallel. A
//!   compensation that fails for good (or an action whose outcome is
//!   unknown) blocks the steps it depends on and leaves the saga
//!   `partially_compensated` for a person to act on.
//! - **Retry** (an operator's [`Event::Retry`], once the cause is fixed):
//!   see [below](#retrying-a-finished-saga).
//!
//! # Retrying a finished saga
//!
//! Only sagas that ended badly can be retried; `running`, `compensating`,
//! `completed` and `cancelled` ones answer [`Rejection::NotApplicable`] (a
//! cancelled saga was stopped on purpose: start a new one).
//!
//! **`partially_compensated`: the rollback resumes.** The saga is
//! `compensating` again with its reason, and every `compensation_failed`
//! step gets a new round of attempts (a fresh `max_attempts` budget):
//!
//! - a step whose **compensation** failed is compensated again. Its task
//!   keeps the idempotency key of the failed round when that round's last
//!   attempt timed out or failed retryably: a timed-out compensation may
//!   have done its work, and the key makes the SDK replay a recorded success
//!   instead of undoing twice. After a **fatal** error it gets a key of a new
//!   generation (see below): the SDK recorded the fatal error under the old
//!   key and would replay it at once, and a fatal error means the
//!   compensation had no effect, so a new key cannot repeat one.
//! - a step whose **action outcome is unknown** (every attempt timed out)
//!   has its *action* dispatched again, under the *same* key. This is the
//!   only safe move: the SDK replays the outcome recorded under that key if
//!   any attempt finished (and a downstream service that honours the key
//!   dedupes), and if no attempt ever ran, it runs now. Once the outcome is
//!   known the rollback goes on as for any step drained during a rollback:
//!   a success is compensated (after its dependents, as always), an error
//!   means nothing is there to undo, another run of timeouts leaves it
//!   stuck again. Compensating it blindly instead could undo an effect that
//!   never happened; marking it failed could leave one in place.
//!
//! The steps these blocked are compensated afterwards by the normal rollback
//! scheduler. The saga ends `compensated` or, if something fails again,
//! `partially_compensated` (and can be retried again).
//!
//! **`failed` or `compensated`: the saga runs forward again from the
//! start**: `running`, the saga timeout re-armed, the roots dispatched. Every
//! step goes back to `pending` (its output dropped, its attempt history
//! kept), except a step that succeeded with no compensation to undo it and
//! whose dependencies all stay too: its effect is still in place, and its
//! inputs are unchanged, so running it again could only repeat it; it stays
//! `succeeded` with its output. The retry moves the saga to a new key
//! **generation** ([`Saga::generation`]), and the new round of every step
//! that runs again carries keys of that generation: under the old keys the
//! SDK would replay what it recorded (a fatal error would fail the saga
//! again at once; a success whose effect was compensated since would skip
//! the action).
//!
//! In both cases attempt numbers keep growing across retries (the retry
//! budget counts from [`StepState::action_base`] and
//! [`StepState::compensation_base`]), so a late result or timer of an
//! attempt from before the retry is [`Rejection::Stale`], and task message
//! ids (which include the attempt) never repeat. Each attempt records the
//! generation of its key ([`Attempt::generation`]).
//!
//! ```
//! use jetsaga_core::saga::definition::{RetryPolicy, SagaDefinition, StepDefinition};
//! use jetsaga_core::saga::machine::{apply, new_saga};
//! use jetsaga_core::saga::state::{Effect, Event, Inputs, SagaStatus};
//! use jetsaga_protocol::{Outcome, TaskKind};
//! use std::time::Duration;
//!
//! let def = SagaDefinition {
//!     name: "hello".into(),
//!     version: 1,
//!     timeout: None,
//!     steps: vec![StepDefinition {
//!         id: "greet".into(),
//!         service: "greeter".into(),
//!         operation: "greet".into(),
//!         compensation: None,
//!         timeout: Duration::from_secs(30),
//!         retry: RetryPolicy::default(),
//!         depends_on: vec![],
//!     }],
//!     triggers: vec![],
//!     policy: Default::default(),
//!     max_running: None,
//! };
//! let inputs = Inputs { now: 1_000, random: 0.5 };
//! let mut saga = new_saga("s-1".into(), &def, serde_json::json!({}), None, inputs.now);
//!
//! let effects = apply(&mut saga, &def, Event::Start, inputs).unwrap();
//! assert!(effects.contains(&Effect::Dispatch { step: 0, kind: TaskKind::Action, attempt: 1, generation: 0 }));
//!
//! let result = Event::TaskResult {
//!     step: 0,
//!     kind: TaskKind::Action,
//!     attempt: 1,
//!     outcome: Outcome::Ok { output: serde_json::json!("hi") },
//! };
//! apply(&mut saga, &def, result.clone(), inputs).unwrap();
//! assert_eq!(saga.status, SagaStatus::Completed);
//! // A second delivery of the same result is a duplicate: rejected, nothing changes.
//! assert!(apply(&mut saga, &def, result, inputs).is_err());
//! ```

use std::time::Duration;

use jetsaga_protocol::{Outcome, TaskKind};
use serde_json::Value;

use super::definition::{SagaDefinition, StepDefinition};
use super::state::{
    Attempt, AttemptOutcome, Effect, Event, Inputs, LifecycleEvent, Millis, Rejection, Saga,
    SagaStatus, StepState, StepStatus, TimerKind,
};

/// Creates a pending saga: every step `Pending`, no attempts.
pub fn new_saga(
    id: String,
    def: &SagaDefinition,
    input: Value,
    idempotency_key: Option<String>,
    now: Millis,
) -> Saga {
    Saga {
        id,
        name: def.name.clone(),
        definition_version: def.version,
        input,
        idempotency_key,
        generation: 0,
        status: SagaStatus::Pending,
        steps: vec![StepState::default(); def.steps.len()],
        created_at: now,
        updated_at: now,
        finished_at: None,
        trace_parent: None,
        event_seq: 0,
    }
}

/// Applies one event to a saga.
///
/// On `Ok` the saga was changed (its `updated_at` is `inputs.now`) and the
/// returned effects, in a deterministic order, must be carried out together
/// with storing the new state. On `Err` nothing changed.
///
/// `def` must be the (validated) definition version the saga runs; a saga
/// whose step count does not match it is rejected as
/// [`Rejection::NotApplicable`].
///
/// Cancelling a timer that is not armed (one that already fired) must be a
/// no-op for the timer store: [`Effect::CancelTimer`] for the saga timeout is
/// emitted whenever a saga with a timeout finishes.
pub fn apply(
    saga: &mut Saga,
    def: &SagaDefinition,
    event: Event,
    inputs: Inputs,
) -> Result<Vec<Effect>, Rejection> {
    if saga.steps.len() != def.steps.len() {
        return Err(Rejection::NotApplicable(format!(
            "saga {} has {} steps but definition {} v{} has {}",
            saga.id,
            saga.steps.len(),
            def.name,
            def.version,
            def.steps.len()
        )));
    }
    let mut t = Transition {
        saga,
        def,
        inputs,
        effects: Vec::new(),
    };
    // Each handler checks everything that can reject the event before it
    // changes anything, so a rejection leaves the saga untouched.
    match event {
        Event::Start => t.start()?,
        Event::TaskResult {
            step,
            kind,
            attempt,
            outcome,
        } => t.task_result(step, kind, attempt, outcome)?,
        Event::TimerFired(timer) => t.timer_fired(timer)?,
        Event::Cancel { compensate, reason } => t.cancel(compensate, reason)?,
        Event::Retry { compensation_only } => t.retry(compensation_only)?,
    }
    t.advance();
    t.saga.updated_at = inputs.now;
    Ok(t.effects)
}

/// The attempt of a step that is in flight (dispatched, no result or timeout
/// yet), if any: `Running` for the action, `Compensating` for the
/// compensation.
pub fn in_flight_attempt(status: &StepStatus) -> Option<(TaskKind, u32)> {
    match *status {
        StepStatus::Running { attempt } => Some((TaskKind::Action, attempt)),
        StepStatus::Compensating { attempt } => Some((TaskKind::Compensation, attempt)),
        _ => None,
    }
}

/// The attempt a step waits to dispatch when its retry timer fires, if any.
pub fn waiting_attempt(status: &StepStatus) -> Option<(TaskKind, u32)> {
    match *status {
        StepStatus::RetryWaiting { attempt, .. } => Some((TaskKind::Action, attempt)),
        StepStatus::CompensationRetryWaiting { attempt, .. } => {
            Some((TaskKind::Compensation, attempt))
        }
        _ => None,
    }
}

/// Whether work of the step is in flight or waiting for a retry: the saga
/// cannot finish while any step is busy.
pub fn is_busy(status: &StepStatus) -> bool {
    in_flight_attempt(status).is_some() || waiting_attempt(status).is_some()
}

/// Whether the step is settled with no effect in place: it never did
/// anything (`Failed`, `Skipped`), was undone (`Compensated`) or has nothing
/// to undo (`NotCompensable`). A succeeded step is compensated only once all
/// the steps that depend on it are in such a state.
pub fn is_rolled_back(status: &StepStatus) -> bool {
    matches!(
        status,
        StepStatus::Compensated
            | StepStatus::NotCompensable
            | StepStatus::Failed { .. }
            | StepStatus::Skipped
    )
}

/// One transition in progress: the saga being changed and the effects so far.
struct Transition<'a> {
    saga: &'a mut Saga,
    def: &'a SagaDefinition,
    inputs: Inputs,
    effects: Vec<Effect>,
}

impl Transition<'_> {
    // ----- event handlers: validate first, then change -----

    /// `Start`: a pending saga starts running.
    fn start(&mut self) -> Result<(), Rejection> {
        if self.saga.status != SagaStatus::Pending {
            return Err(Rejection::NotApplicable(format!(
                "cannot start saga {}: it is already {}",
                self.saga.id,
                self.saga.status.name()
            )));
        }
        self.saga.status = SagaStatus::Running;
        self.lifecycle(LifecycleEvent::SagaStarted);
        if let Some(timeout) = self.def.timeout {
            let due = self.after(timeout);
            self.effects.push(Effect::ScheduleTimer {
                timer: TimerKind::SagaTimeout,
                due,
            });
        }
        Ok(())
    }

    /// `TaskResult`: a worker's result for the in-flight attempt.
    fn task_result(
        &mut self,
        step: usize,
        kind: TaskKind,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<(), Rejection> {
        self.check_in_flight(step, kind, attempt)?;
        self.end_attempt(step, kind, attempt, attempt_outcome(&outcome));
        self.effects.push(Effect::CancelTimer {
            timer: TimerKind::StepTimeout {
                step,
                kind,
                attempt,
            },
        });
        match kind {
            TaskKind::Action => self.action_result(step, attempt, outcome),
            TaskKind::Compensation => self.compensation_result(step, attempt, outcome),
        }
        Ok(())
    }

    /// `TimerFired`: a durable timer is due.
    fn timer_fired(&mut self, timer: TimerKind) -> Result<(), Rejection> {
        match timer {
            TimerKind::Retry {
                step,
                kind,
                attempt,
            } => {
                self.check_step(step)?;
                if waiting_attempt(&self.saga.steps[step].status) != Some((kind, attempt)) {
                    return Err(self.stale(step, kind, attempt));
                }
                let generation = self.current_generation(step, kind);
                self.dispatch(step, kind, attempt, generation);
            }
            TimerKind::StepTimeout {
                step,
                kind,
                attempt,
            } => {
                self.check_in_flight(step, kind, attempt)?;
                self.end_attempt(step, kind, attempt, AttemptOutcome::TimedOut);
                self.attempt_timed_out(step, kind, attempt);
            }
            TimerKind::SagaTimeout => {
                self.check_not_terminal()?;
                let Some(timeout) = self.def.timeout else {
                    return Err(Rejection::NotApplicable(format!(
                        "saga timeout ignored: definition {} v{} sets no timeout",
                        self.def.name, self.def.version
                    )));
                };
                if self.saga.status != SagaStatus::Running {
                    return Err(Rejection::NotApplicable(format!(
                        "saga timeout ignored: saga {} is {}",
                        self.saga.id,
                        self.saga.status.name()
                    )));
                }
                self.start_compensating(format!(
                    "saga timed out after {}",
                    humantime::format_duration(timeout)
                ));
            }
        }
        Ok(())
    }

    /// `Cancel`: stop, with or without compensating what was done.
    fn cancel(&mut self, compensate: bool, reason: String) -> Result<(), Rejection> {
        self.check_not_terminal()?;
        if self.saga.status == SagaStatus::Pending {
            // Queued, never started (`crate::limits`): nothing ran, so there
            // is nothing to compensate whatever was asked.
            self.cancel_without_compensation(reason);
            return Ok(());
        }
        let compensating = matches!(self.saga.status, SagaStatus::Compensating { .. });
        match (compensate, compensating) {
            (true, true) => {
                return Err(Rejection::NotApplicable(format!(
                    "saga {} is already compensating",
                    self.saga.id
                )));
            }
            (true, false) => self.start_compensating(reason),
            (false, _) => self.cancel_without_compensation(reason),
        }
        Ok(())
    }

    /// `Retry`: an operator retries a finished saga whose cause was fixed
    /// (module docs: [retrying a finished saga](self#retrying-a-finished-saga)).
    fn retry(&mut self, compensation_only: bool) -> Result<(), Rejection> {
        match self.saga.status.clone() {
            SagaStatus::PartiallyCompensated { reason, .. } => self.resume_rollback(reason),
            SagaStatus::Failed { .. } | SagaStatus::Compensated { .. } if !compensation_only => {
                self.run_again()
            }
            status => {
                let id = &self.saga.id;
                let state = status.name();
                let message = if compensation_only {
                    let hint = match status {
                        SagaStatus::Failed { .. } | SagaStatus::Compensated { .. } => {
                            "; to run it again from the start, use retry"
                        }
                        _ => "",
                    };
                    format!(
                        "cannot retry the compensation of saga {id}: it is {state}, and only a partially_compensated saga has a rollback to resume{hint}"
                    )
                } else {
                    let hint = match status {
                        SagaStatus::Pending | SagaStatus::Running => {
                            " (wait until it finishes, or cancel it)"
                        }
                        SagaStatus::Compensating { .. } => " (its rollback is still under way)",
                        SagaStatus::Cancelled { .. } => {
                            " (it was stopped on purpose; start a new saga instead)"
                        }
                        _ => "",
                    };
                    format!(
                        "cannot retry saga {id}: it is {state}{hint}; only failed, compensated and partially_compensated sagas can be retried"
                    )
                };
                return Err(Rejection::NotApplicable(message));
            }
        }
        Ok(())
    }

    // ----- checks (no changes) -----

    fn check_not_terminal(&self) -> Result<(), Rejection> {
        if self.saga.status.is_terminal() {
            return Err(Rejection::Terminal(self.saga.status.name()));
        }
        Ok(())
    }

    fn check_step(&self, step: usize) -> Result<(), Rejection> {
        self.check_not_terminal()?;
        if step >= self.def.steps.len() {
            return Err(Rejection::UnknownStep(step));
        }
        Ok(())
    }

    /// The event names the step's in-flight attempt of `kind`.
    fn check_in_flight(&self, step: usize, kind: TaskKind, attempt: u32) -> Result<(), Rejection> {
        self.check_step(step)?;
        if in_flight_attempt(&self.saga.steps[step].status) != Some((kind, attempt)) {
            return Err(self.stale(step, kind, attempt));
        }
        Ok(())
    }

    fn stale(&self, step: usize, kind: TaskKind, attempt: u32) -> Rejection {
        Rejection::Stale {
            step: self.def.steps[step].id.clone(),
            kind,
            attempt,
        }
    }

    // ----- step transitions -----

    /// A matching result for an action attempt.
    fn action_result(&mut self, step: usize, attempt: u32, outcome: Outcome) {
        let draining = self.is_compensating();
        match outcome {
            Outcome::Ok { output } => {
                let state = &mut self.saga.steps[step];
                state.status = StepStatus::Succeeded;
                state.output = Some(output);
                self.lifecycle(LifecycleEvent::StepSucceeded { step });
            }
            // No retries during a rollback: a failed attempt had no effect.
            Outcome::Retryable { error, .. } if draining => self.fail_step(step, error),
            Outcome::Retryable {
                error,
                retry_after_ms,
            } => {
                let made = self.round_attempt(step, TaskKind::Action, attempt);
                if made < self.step_def(step).retry.max_attempts {
                    self.schedule_retry(step, TaskKind::Action, attempt, error, retry_after_ms);
                } else {
                    self.fail_step(step, exhausted(made, &error));
                }
            }
            Outcome::Fatal { error } => self.fail_step(step, error),
        }
    }

    /// A matching result for a compensation attempt.
    fn compensation_result(&mut self, step: usize, attempt: u32, outcome: Outcome) {
        match outcome {
            Outcome::Ok { .. } => {
                self.saga.steps[step].status = StepStatus::Compensated;
                self.lifecycle(LifecycleEvent::StepCompensated { step });
            }
            Outcome::Retryable {
                error,
                retry_after_ms,
            } => {
                let made = self.round_attempt(step, TaskKind::Compensation, attempt);
                if made < self.step_def(step).retry.max_attempts {
                    self.schedule_retry(
                        step,
                        TaskKind::Compensation,
                        attempt,
                        error,
                        retry_after_ms,
                    );
                } else {
                    self.compensation_failed(step, exhausted(made, &error));
                }
            }
            Outcome::Fatal { error } => self.compensation_failed(step, error),
        }
    }

    /// The in-flight attempt timed out: its outcome is unknown.
    fn attempt_timed_out(&mut self, step: usize, kind: TaskKind, attempt: u32) {
        let def = self.step_def(step);
        let timeout = humantime::format_duration(def.timeout);
        let max_attempts = def.retry.max_attempts;
        let made = self.round_attempt(step, kind, attempt);
        if made < max_attempts {
            // Re-dispatching at once is safe: the idempotency key is the same,
            // so a worker that did the work replays its recorded result.
            self.lifecycle(LifecycleEvent::StepRetrying {
                step,
                kind,
                next_attempt: attempt + 1,
                error: format!("timed out after {timeout}"),
            });
            let generation = self.current_generation(step, kind);
            self.dispatch(step, kind, attempt + 1, generation);
            return;
        }
        match kind {
            // Out of attempts, and the last one's effect may be in place: the
            // step cannot be treated as failed (nothing to undo) nor
            // compensated (nothing known to undo). It is left for a person,
            // and blocks the compensation of the steps it depends on.
            TaskKind::Action => {
                let state = &self.saga.steps[step];
                let timed_out = state
                    .attempts
                    .iter()
                    .filter(|a| {
                        a.kind == TaskKind::Action
                            && a.number > state.action_base
                            && a.outcome == Some(AttemptOutcome::TimedOut)
                    })
                    .count();
                let error = format!("action outcome unknown after {timed_out} timed-out attempts");
                // The step settles before the rollback starts (as in
                // `fail_step`): its lifecycle event comes first, and
                // `start_compensating` finds it no longer running.
                self.compensation_failed(step, error.clone());
                if self.saga.status == SagaStatus::Running {
                    let id = &self.step_def(step).id;
                    self.start_compensating(format!("step {id} failed: {error}"));
                }
            }
            TaskKind::Compensation => self.compensation_failed(
                step,
                format!(
                    "compensation timed out after {timeout} on attempt {made} of {max_attempts}"
                ),
            ),
        }
    }

    /// The step's action failed for good; while running, the saga rolls back.
    fn fail_step(&mut self, step: usize, error: String) {
        self.saga.steps[step].status = StepStatus::Failed {
            error: error.clone(),
        };
        self.lifecycle(LifecycleEvent::StepFailed {
            step,
            error: error.clone(),
        });
        if self.saga.status == SagaStatus::Running {
            let id = &self.step_def(step).id;
            self.start_compensating(format!("step {id} failed: {error}"));
        }
    }

    /// The step's compensation failed for good (or its action's outcome is
    /// unknown): a person must act.
    fn compensation_failed(&mut self, step: usize, error: String) {
        self.saga.steps[step].status = StepStatus::CompensationFailed {
            error: error.clone(),
        };
        self.lifecycle(LifecycleEvent::StepCompensationFailed { step, error });
    }

    /// Waits for the policy's backoff (or the worker's `retry_after_ms`, if
    /// later) before attempt `attempt + 1`.
    fn schedule_retry(
        &mut self,
        step: usize,
        kind: TaskKind,
        attempt: u32,
        error: String,
        retry_after_ms: Option<u64>,
    ) {
        let next_attempt = attempt + 1;
        let backoff = self
            .step_def(step)
            .retry
            .delay(next_attempt, self.inputs.random);
        let wait = backoff.max(Duration::from_millis(retry_after_ms.unwrap_or(0)));
        let due = self.after(wait);
        self.saga.steps[step].status = match kind {
            TaskKind::Action => StepStatus::RetryWaiting {
                attempt: next_attempt,
                due,
            },
            TaskKind::Compensation => StepStatus::CompensationRetryWaiting {
                attempt: next_attempt,
                due,
            },
        };
        self.effects.push(Effect::ScheduleTimer {
            timer: TimerKind::Retry {
                step,
                kind,
                attempt: next_attempt,
            },
            due,
        });
        self.lifecycle(LifecycleEvent::StepRetrying {
            step,
            kind,
            next_attempt,
            error,
        });
    }

    /// Starts a new round of attempts of the step's action or compensation
    /// (its first dispatch in a run or rollback, or a retry's): the retry
    /// budget counts from here, the attempt number goes on from the last one.
    fn start_round(&mut self, step: usize, kind: TaskKind, generation: u32) {
        let state = &mut self.saga.steps[step];
        let base = last_attempt_number(state, kind);
        match kind {
            TaskKind::Action => state.action_base = base,
            TaskKind::Compensation => state.compensation_base = base,
        }
        self.dispatch(step, kind, base + 1, generation);
    }

    /// Dispatches attempt `attempt` of the step's action or compensation,
    /// its task carrying the idempotency key of `generation`.
    fn dispatch(&mut self, step: usize, kind: TaskKind, attempt: u32, generation: u32) {
        let now = self.inputs.now;
        let due = self.after(self.step_def(step).timeout);
        let state = &mut self.saga.steps[step];
        state.status = match kind {
            TaskKind::Action => StepStatus::Running { attempt },
            TaskKind::Compensation => StepStatus::Compensating { attempt },
        };
        state.attempts.push(Attempt {
            kind,
            number: attempt,
            generation,
            started_at: now,
            finished_at: None,
            outcome: None,
        });
        self.effects.push(Effect::Dispatch {
            step,
            kind,
            attempt,
            generation,
        });
        self.effects.push(Effect::ScheduleTimer {
            timer: TimerKind::StepTimeout {
                step,
                kind,
                attempt,
            },
            due,
        });
    }

    /// Records how an in-flight attempt ended.
    fn end_attempt(&mut self, step: usize, kind: TaskKind, attempt: u32, outcome: AttemptOutcome) {
        let now = self.inputs.now;
        let record = self.saga.steps[step]
            .attempts
            .iter_mut()
            .rev()
            .find(|a| a.kind == kind && a.number == attempt && a.outcome.is_none());
        if let Some(record) = record {
            record.finished_at = Some(now);
            record.outcome = Some(outcome);
        }
    }

    // ----- saga transitions -----

    /// The saga starts rolling back: pending steps are skipped, steps waiting
    /// for a retry fail (their last attempt had no effect), in-flight steps
    /// are drained. The rollback scheduler runs in [`Self::advance`].
    fn start_compensating(&mut self, reason: String) {
        self.saga.status = SagaStatus::Compensating {
            reason: reason.clone(),
        };
        self.lifecycle(LifecycleEvent::SagaCompensating { reason });
        for step in 0..self.saga.steps.len() {
            match self.saga.steps[step].status {
                StepStatus::Pending => self.saga.steps[step].status = StepStatus::Skipped,
                StepStatus::RetryWaiting { attempt, .. } => {
                    self.effects.push(Effect::CancelTimer {
                        timer: TimerKind::Retry {
                            step,
                            kind: TaskKind::Action,
                            attempt,
                        },
                    });
                    let error = last_error(&self.saga.steps[step], TaskKind::Action);
                    self.fail_step(step, error);
                }
                _ => {}
            }
        }
    }

    /// Stops the saga without compensating: in-flight attempts are
    /// abandoned (their results will be ignored), waiting work is dropped.
    fn cancel_without_compensation(&mut self, reason: String) {
        for step in 0..self.saga.steps.len() {
            let status = self.saga.steps[step].status.clone();
            match status {
                StepStatus::Running { attempt } | StepStatus::Compensating { attempt } => {
                    let kind = if matches!(status, StepStatus::Running { .. }) {
                        TaskKind::Action
                    } else {
                        TaskKind::Compensation
                    };
                    // The status keeps naming the attempt whose outcome is
                    // unknown; the attempt itself is marked abandoned.
                    self.end_attempt(step, kind, attempt, AttemptOutcome::Abandoned);
                    self.effects.push(Effect::CancelTimer {
                        timer: TimerKind::StepTimeout {
                            step,
                            kind,
                            attempt,
                        },
                    });
                }
                StepStatus::Pending => self.saga.steps[step].status = StepStatus::Skipped,
                StepStatus::RetryWaiting { attempt, .. } => {
                    self.saga.steps[step].status = StepStatus::Skipped;
                    self.effects.push(Effect::CancelTimer {
                        timer: TimerKind::Retry {
                            step,
                            kind: TaskKind::Action,
                            attempt,
                        },
                    });
                }
                StepStatus::CompensationRetryWaiting { attempt, .. } => {
                    // The action's effect is in place and stays: no more
                    // compensation attempts are made.
                    self.saga.steps[step].status = StepStatus::Succeeded;
                    self.effects.push(Effect::CancelTimer {
                        timer: TimerKind::Retry {
                            step,
                            kind: TaskKind::Compensation,
                            attempt,
                        },
                    });
                }
                _ => {}
            }
        }
        self.finish(SagaStatus::Cancelled { reason });
    }

    /// Retry of a `partially_compensated` saga: the rollback resumes, every
    /// `compensation_failed` step getting a new round (module docs).
    fn resume_rollback(&mut self, reason: String) {
        // The last attempt of a `compensation_failed` step is the one that
        // left it there: its compensation's, or its action's when the
        // action's outcome is unknown.
        let last = |state: &StepState| match state.status {
            StepStatus::CompensationFailed { .. } => state
                .attempts
                .last()
                .map(|a| (a.kind, a.generation, a.outcome.clone())),
            _ => None,
        };
        let fresh_keys = self.saga.steps.iter().any(|s| {
            matches!(
                last(s),
                Some((
                    TaskKind::Compensation,
                    _,
                    Some(AttemptOutcome::Fatal { .. })
                ))
            )
        });
        if fresh_keys {
            self.saga.generation += 1;
        }
        self.saga.status = SagaStatus::Compensating { reason };
        self.saga.finished_at = None;
        self.lifecycle(LifecycleEvent::SagaRetried {
            from: "partially_compensated".to_owned(),
            generation: self.saga.generation,
        });
        for step in 0..self.saga.steps.len() {
            let Some((kind, generation, outcome)) = last(&self.saga.steps[step]) else {
                continue;
            };
            let generation = match (kind, outcome) {
                (TaskKind::Compensation, Some(AttemptOutcome::Fatal { .. })) => {
                    self.saga.generation
                }
                // A timed-out action or compensation may have had its effect:
                // the same key replays what was recorded.
                _ => generation,
            };
            self.start_round(step, kind, generation);
        }
    }

    /// Retry of a `failed` or `compensated` saga: it runs forward again from
    /// the start under a new key generation (module docs).
    fn run_again(&mut self) {
        self.saga.generation += 1;
        // A step without compensation keeps its effect, and stays succeeded,
        // as long as every step it depends on stays too.
        let mut keep: Vec<bool> = self
            .saga
            .steps
            .iter()
            .map(|s| s.status == StepStatus::NotCompensable)
            .collect();
        loop {
            let mut changed = false;
            for step in 0..keep.len() {
                if keep[step]
                    && self
                        .step_def(step)
                        .depends_on
                        .iter()
                        .any(|&dep| !keep.get(dep).copied().unwrap_or(false))
                {
                    keep[step] = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for (state, keep) in self.saga.steps.iter_mut().zip(keep) {
            if keep {
                state.status = StepStatus::Succeeded;
            } else {
                state.status = StepStatus::Pending;
                state.output = None;
                state.action_base = last_attempt_number(state, TaskKind::Action);
                state.compensation_base = last_attempt_number(state, TaskKind::Compensation);
            }
        }
        let from = self.saga.status.name().to_owned();
        self.saga.status = SagaStatus::Running;
        self.saga.finished_at = None;
        self.lifecycle(LifecycleEvent::SagaRetried {
            from,
            generation: self.saga.generation,
        });
        if let Some(timeout) = self.def.timeout {
            let due = self.after(timeout);
            self.effects.push(Effect::ScheduleTimer {
                timer: TimerKind::SagaTimeout,
                due,
            });
        }
    }

    /// Moves the saga along after a change: dispatches unblocked actions
    /// while running, schedules compensations while compensating, and
    /// finishes the saga when nothing is left to do.
    fn advance(&mut self) {
        match self.saga.status {
            SagaStatus::Running => {
                self.dispatch_ready_actions();
                if self
                    .saga
                    .steps
                    .iter()
                    .all(|s| s.status == StepStatus::Succeeded)
                {
                    self.finish(SagaStatus::Completed);
                }
            }
            SagaStatus::Compensating { .. } => {
                self.schedule_compensations();
                if !self.saga.steps.iter().any(|s| is_busy(&s.status)) {
                    self.finish_rollback();
                }
            }
            _ => {}
        }
    }

    /// Dispatches the first attempt of every pending step whose dependencies
    /// all succeeded, in step order.
    fn dispatch_ready_actions(&mut self) {
        for step in 0..self.def.steps.len() {
            let ready = self.saga.steps[step].status == StepStatus::Pending
                && self.step_def(step).depends_on.iter().all(|&dep| {
                    self.saga.steps.get(dep).map(|s| &s.status) == Some(&StepStatus::Succeeded)
                });
            if ready {
                self.start_round(step, TaskKind::Action, self.saga.generation);
            }
        }
    }

    /// The rollback scheduler: a succeeded step is compensated (or marked
    /// not compensable) once every step that depends on it is rolled back.
    /// Repeats until nothing changes, since a step marked not compensable
    /// may unblock the steps it depends on.
    fn schedule_compensations(&mut self) {
        loop {
            let mut changed = false;
            for step in 0..self.def.steps.len() {
                if self.saga.steps[step].status != StepStatus::Succeeded
                    || !self.dependents_rolled_back(step)
                {
                    continue;
                }
                if self.step_def(step).compensation.is_some() {
                    self.start_round(step, TaskKind::Compensation, self.saga.generation);
                } else {
                    self.saga.steps[step].status = StepStatus::NotCompensable;
                }
                changed = true;
            }
            if !changed {
                break;
            }
        }
    }

    /// Whether every step that directly depends on `step` is rolled back.
    fn dependents_rolled_back(&self, step: usize) -> bool {
        self.def
            .steps
            .iter()
            .zip(&self.saga.steps)
            .filter(|(def, _)| def.depends_on.contains(&step))
            .all(|(_, state)| is_rolled_back(&state.status))
    }

    /// Nothing is in flight or waiting any more: the rollback ends.
    fn finish_rollback(&mut self) {
        let reason = match &self.saga.status {
            SagaStatus::Compensating { reason } => reason.clone(),
            _ => return,
        };
        let stuck_steps: Vec<String> = self
            .def
            .steps
            .iter()
            .zip(&self.saga.steps)
            .filter(|(_, state)| {
                matches!(
                    state.status,
                    StepStatus::CompensationFailed { .. } | StepStatus::Succeeded
                )
            })
            .map(|(def, _)| def.id.clone())
            .collect();
        let undid_something = self.saga.steps.iter().any(|s| {
            matches!(
                s.status,
                StepStatus::Compensated | StepStatus::NotCompensable
            )
        });
        let status = if !stuck_steps.is_empty() {
            SagaStatus::PartiallyCompensated {
                reason,
                stuck_steps,
            }
        } else if undid_something {
            SagaStatus::Compensated { reason }
        } else {
            SagaStatus::Failed { reason }
        };
        self.finish(status);
    }

    /// Enters a terminal state.
    fn finish(&mut self, status: SagaStatus) {
        let state = status.name().to_owned();
        self.saga.status = status;
        self.saga.finished_at = Some(self.inputs.now);
        if self.def.timeout.is_some() {
            self.effects.push(Effect::CancelTimer {
                timer: TimerKind::SagaTimeout,
            });
        }
        self.lifecycle(LifecycleEvent::SagaFinished { state });
    }

    // ----- small helpers -----

    fn step_def(&self, step: usize) -> &StepDefinition {
        &self.def.steps[step]
    }

    /// How many attempts of the current round `attempt` is (from 1).
    fn round_attempt(&self, step: usize, kind: TaskKind, attempt: u32) -> u32 {
        let state = &self.saga.steps[step];
        let base = match kind {
            TaskKind::Action => state.action_base,
            TaskKind::Compensation => state.compensation_base,
        };
        attempt.saturating_sub(base)
    }

    /// Key generation of the step's latest attempt of `kind`: the one the
    /// next attempt of the same round keeps.
    fn current_generation(&self, step: usize, kind: TaskKind) -> u32 {
        self.saga.steps[step]
            .attempts
            .iter()
            .rev()
            .find(|a| a.kind == kind)
            .map_or(self.saga.generation, |a| a.generation)
    }

    fn is_compensating(&self) -> bool {
        matches!(self.saga.status, SagaStatus::Compensating { .. })
    }

    fn after(&self, wait: Duration) -> Millis {
        let wait = Millis::try_from(wait.as_millis()).unwrap_or(Millis::MAX);
        self.inputs.now.saturating_add(wait)
    }

    fn lifecycle(&mut self, event: LifecycleEvent) {
        self.effects.push(Effect::Lifecycle(event));
    }
}

/// How a worker's outcome is recorded in the attempt history.
fn attempt_outcome(outcome: &Outcome) -> AttemptOutcome {
    match outcome {
        Outcome::Ok { .. } => AttemptOutcome::Ok,
        Outcome::Retryable { error, .. } => AttemptOutcome::Retryable {
            error: error.clone(),
        },
        Outcome::Fatal { error } => AttemptOutcome::Fatal {
            error: error.clone(),
        },
    }
}

/// Number of the step's latest attempt of `kind`; 0 if it made none.
fn last_attempt_number(state: &StepState, kind: TaskKind) -> u32 {
    state
        .attempts
        .iter()
        .filter(|a| a.kind == kind)
        .map(|a| a.number)
        .max()
        .unwrap_or(0)
}

/// The error of the step's last ended attempt of `kind`.
fn last_error(state: &StepState, kind: TaskKind) -> String {
    let last = state
        .attempts
        .iter()
        .rev()
        .filter(|a| a.kind == kind)
        .find_map(|a| a.outcome.as_ref());
    match last {
        Some(AttemptOutcome::Retryable { error } | AttemptOutcome::Fatal { error }) => {
            error.clone()
        }
        Some(AttemptOutcome::TimedOut) => "timed out".to_owned(),
        _ => "unknown error".to_owned(),
    }
}

fn exhausted(attempts: u32, error: &str) -> String {
    format!("retries exhausted after {attempts} attempts: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::definition::RetryPolicy;
    use serde_json::json;

    const T0: Millis = 1_000_000;
    const STEP_TIMEOUT_MS: Millis = 30_000;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            backoff_factor: 2.0,
            jitter: 0.0,
        }
    }

    fn step(id: &str, depends_on: &[usize], compensable: bool) -> StepDefinition {
        StepDefinition {
            id: id.to_owned(),
            service: "svc".to_owned(),
            operation: format!("do_{id}"),
            compensation: compensable.then(|| format!("undo_{id}")),
            timeout: Duration::from_millis(STEP_TIMEOUT_MS),
            retry: policy(3),
            depends_on: depends_on.to_vec(),
        }
    }

    fn definition(steps: Vec<StepDefinition>, timeout: Option<Duration>) -> SagaDefinition {
        SagaDefinition {
            name: "test".to_owned(),
            version: 1,
            timeout,
            steps,
            triggers: Vec::new(),
            policy: Default::default(),
            max_running: None,
        }
    }

    /// `s0 -> s1 -> ... -> s{n-1}`, all compensable.
    fn chain(n: usize) -> Vec<StepDefinition> {
        (0..n)
            .map(|i| {
                let deps: Vec<usize> = i.checked_sub(1).into_iter().collect();
                step(&format!("s{i}"), &deps, true)
            })
            .collect()
    }

    const A: TaskKind = TaskKind::Action;
    const C: TaskKind = TaskKind::Compensation;

    fn ok() -> Outcome {
        Outcome::Ok { output: json!({}) }
    }
    fn retryable(error: &str, retry_after_ms: Option<u64>) -> Outcome {
        Outcome::Retryable {
            error: error.to_owned(),
            retry_after_ms,
        }
    }
    fn fatal(error: &str) -> Outcome {
        Outcome::Fatal {
            error: error.to_owned(),
        }
    }

    /// A saga, its definition and a clock.
    struct Harness {
        saga: Saga,
        def: SagaDefinition,
        now: Millis,
    }

    impl Harness {
        fn new(def: SagaDefinition) -> Self {
            let saga = new_saga("saga-1".into(), &def, json!({"x": 1}), None, T0);
            Self { saga, def, now: T0 }
        }

        fn started(def: SagaDefinition) -> Self {
            let mut h = Self::new(def);
            h.apply(Event::Start).expect("start");
            h
        }

        /// Applies an event; asserts a rejection changed nothing.
        fn apply(&mut self, event: Event) -> Result<Vec<Effect>, Rejection> {
            let before = self.saga.clone();
            let inputs = Inputs {
                now: self.now,
                random: 0.5,
            };
            let result = apply(&mut self.saga, &self.def, event, inputs);
            match &result {
                Ok(_) => assert_eq!(self.saga.updated_at, self.now),
                Err(_) => assert_eq!(self.saga, before, "a rejection changed the saga"),
            }
            result
        }

        fn result(
            &mut self,
            step: usize,
            kind: TaskKind,
            attempt: u32,
            outcome: Outcome,
        ) -> Result<Vec<Effect>, Rejection> {
            self.apply(Event::TaskResult {
                step,
                kind,
                attempt,
                outcome,
            })
        }

        fn fire(&mut self, timer: TimerKind) -> Result<Vec<Effect>, Rejection> {
            self.apply(Event::TimerFired(timer))
        }

        fn cancel(&mut self, compensate: bool) -> Result<Vec<Effect>, Rejection> {
            self.apply(Event::Cancel {
                compensate,
                reason: "operator said so".to_owned(),
            })
        }

        fn status(&self, step: usize) -> &StepStatus {
            &self.saga.steps[step].status
        }
    }

    fn dispatches(effects: &[Effect]) -> Vec<(usize, TaskKind, u32)> {
        effects
            .iter()
            .filter_map(|e| match *e {
                Effect::Dispatch {
                    step,
                    kind,
                    attempt,
                    ..
                } => Some((step, kind, attempt)),
                _ => None,
            })
            .collect()
    }

    fn dispatch_effects(step: usize, kind: TaskKind, attempt: u32, now: Millis) -> [Effect; 2] {
        [
            Effect::Dispatch {
                step,
                kind,
                attempt,
                generation: 0,
            },
            Effect::ScheduleTimer {
                timer: TimerKind::StepTimeout {
                    step,
                    kind,
                    attempt,
                },
                due: now + STEP_TIMEOUT_MS,
            },
        ]
    }

    fn cancel_step_timer(step: usize, kind: TaskKind, attempt: u32) -> Effect {
        Effect::CancelTimer {
            timer: TimerKind::StepTimeout {
                step,
                kind,
                attempt,
            },
        }
    }

    fn lifecycle(event: LifecycleEvent) -> Effect {
        Effect::Lifecycle(event)
    }

    fn finished(state: &str) -> Effect {
        lifecycle(LifecycleEvent::SagaFinished {
            state: state.to_owned(),
        })
    }

    #[test]
    fn new_saga_is_pending_with_pending_steps() {
        let def = definition(chain(3), None);
        let saga = new_saga("id".into(), &def, json!(1), Some("key".into()), 7);
        assert_eq!(saga.status, SagaStatus::Pending);
        assert_eq!(saga.name, "test");
        assert_eq!(saga.definition_version, 1);
        assert_eq!(saga.idempotency_key.as_deref(), Some("key"));
        assert_eq!(saga.steps.len(), 3);
        assert!(saga.steps.iter().all(|s| s.status == StepStatus::Pending));
        assert!(saga.steps.iter().all(|s| s.attempts.is_empty()));
        assert_eq!(
            (saga.created_at, saga.updated_at, saga.finished_at),
            (7, 7, None)
        );
    }

    #[test]
    fn happy_path_of_a_four_step_chain() {
        let timeout = Duration::from_secs(600);
        let mut h = Harness::new(definition(chain(4), Some(timeout)));

        let effects = h.apply(Event::Start).unwrap();
        let mut expected = vec![
            lifecycle(LifecycleEvent::SagaStarted),
            Effect::ScheduleTimer {
                timer: TimerKind::SagaTimeout,
                due: T0 + 600_000,
            },
        ];
        expected.extend(dispatch_effects(0, A, 1, T0));
        assert_eq!(effects, expected);
        assert_eq!(h.saga.status, SagaStatus::Running);
        assert_eq!(*h.status(0), StepStatus::Running { attempt: 1 });
        assert_eq!(
            h.saga.steps[0].attempts,
            vec![Attempt {
                kind: A,
                number: 1,
                generation: 0,
                started_at: T0,
                finished_at: None,
                outcome: None,
            }]
        );

        for i in 0..3 {
            h.now += 1_000;
            let effects = h.result(i, A, 1, Outcome::Ok { output: json!(i) }).unwrap();
            let mut expected = vec![
                cancel_step_timer(i, A, 1),
                lifecycle(LifecycleEvent::StepSucceeded { step: i }),
            ];
            expected.extend(dispatch_effects(i + 1, A, 1, h.now));
            assert_eq!(effects, expected);
            assert_eq!(*h.status(i), StepStatus::Succeeded);
            assert_eq!(h.saga.steps[i].output, Some(json!(i)));
            assert_eq!(
                h.saga.steps[i].attempts[0].outcome,
                Some(AttemptOutcome::Ok)
            );
            assert_eq!(h.saga.steps[i].attempts[0].finished_at, Some(h.now));
        }

        h.now += 1_000;
        let effects = h.result(3, A, 1, ok()).unwrap();
        assert_eq!(
            effects,
            vec![
                cancel_step_timer(3, A, 1),
                lifecycle(LifecycleEvent::StepSucceeded { step: 3 }),
                Effect::CancelTimer {
                    timer: TimerKind::SagaTimeout
                },
                finished("completed"),
            ]
        );
        assert_eq!(h.saga.status, SagaStatus::Completed);
        assert_eq!(h.saga.finished_at, Some(h.now));
        assert_eq!(h.saga.updated_at, h.now);
        assert!(
            h.saga
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Succeeded)
        );
    }

    #[test]
    fn start_without_saga_timeout_schedules_no_saga_timer_and_start_twice_is_rejected() {
        let mut h = Harness::new(definition(chain(1), None));
        let effects = h.apply(Event::Start).unwrap();
        assert!(!effects.iter().any(|e| matches!(
            e,
            Effect::ScheduleTimer {
                timer: TimerKind::SagaTimeout,
                ..
            }
        )));
        assert!(matches!(
            h.apply(Event::Start),
            Err(Rejection::NotApplicable(_))
        ));
        h.result(0, A, 1, ok()).unwrap();
        assert_eq!(h.saga.status, SagaStatus::Completed);
        assert!(matches!(
            h.apply(Event::Start),
            Err(Rejection::NotApplicable(_))
        ));
    }

    #[test]
    fn independent_steps_are_dispatched_together_and_joins_wait_for_all() {
        // a, b independent; c needs both; d needs a only.
        let steps = vec![
            step("a", &[], true),
            step("b", &[], true),
            step("c", &[0, 1], true),
            step("d", &[0], true),
        ];
        let mut h = Harness::new(definition(steps, None));
        let effects = h.apply(Event::Start).unwrap();
        assert_eq!(dispatches(&effects), vec![(0, A, 1), (1, A, 1)]);

        let effects = h.result(0, A, 1, ok()).unwrap();
        assert_eq!(
            dispatches(&effects),
            vec![(3, A, 1)],
            "d unblocked, c not yet"
        );
        assert_eq!(*h.status(2), StepStatus::Pending);

        let effects = h.result(1, A, 1, ok()).unwrap();
        assert_eq!(dispatches(&effects), vec![(2, A, 1)]);
        h.result(3, A, 1, ok()).unwrap();
        assert_eq!(h.saga.status, SagaStatus::Running);
        h.result(2, A, 1, ok()).unwrap();
        assert_eq!(h.saga.status, SagaStatus::Completed);
    }

    #[test]
    fn failure_at_step_three_compensates_two_then_one_and_nothing_else() {
        let timeout = Duration::from_secs(600);
        let mut h = Harness::started(definition(chain(4), Some(timeout)));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, ok()).unwrap();

        let effects = h.result(2, A, 1, fatal("card declined")).unwrap();
        let reason = "step s2 failed: card declined".to_owned();
        let mut expected = vec![
            cancel_step_timer(2, A, 1),
            lifecycle(LifecycleEvent::StepFailed {
                step: 2,
                error: "card declined".into(),
            }),
            lifecycle(LifecycleEvent::SagaCompensating {
                reason: reason.clone(),
            }),
        ];
        expected.extend(dispatch_effects(1, C, 1, h.now));
        assert_eq!(effects, expected);
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensating {
                reason: reason.clone()
            }
        );
        assert_eq!(
            *h.status(2),
            StepStatus::Failed {
                error: "card declined".into()
            }
        );
        assert_eq!(*h.status(3), StepStatus::Skipped);
        assert_eq!(*h.status(1), StepStatus::Compensating { attempt: 1 });
        assert_eq!(
            *h.status(0),
            StepStatus::Succeeded,
            "waits for s1's compensation"
        );

        let effects = h.result(1, C, 1, ok()).unwrap();
        let mut expected = vec![
            cancel_step_timer(1, C, 1),
            lifecycle(LifecycleEvent::StepCompensated { step: 1 }),
        ];
        expected.extend(dispatch_effects(0, C, 1, h.now));
        assert_eq!(effects, expected);

        let effects = h.result(0, C, 1, ok()).unwrap();
        assert_eq!(
            effects,
            vec![
                cancel_step_timer(0, C, 1),
                lifecycle(LifecycleEvent::StepCompensated { step: 0 }),
                Effect::CancelTimer {
                    timer: TimerKind::SagaTimeout
                },
                finished("compensated"),
            ]
        );
        assert_eq!(h.saga.status, SagaStatus::Compensated { reason });
        assert_eq!(h.saga.finished_at, Some(h.now));
        // Neither the failed nor the skipped step ever got a compensation.
        for i in [2, 3] {
            assert!(h.saga.steps[i].attempts.iter().all(|a| a.kind == A));
        }
    }

    #[test]
    fn steps_without_compensation_are_not_compensable_and_do_not_block() {
        // a (compensable) -> b (no compensation) -> c fails
        let steps = vec![
            step("a", &[], true),
            step("b", &[0], false),
            step("c", &[1], true),
        ];
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, ok()).unwrap();
        let effects = h.result(2, A, 1, fatal("nope")).unwrap();
        assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
        assert_eq!(*h.status(1), StepStatus::NotCompensable);
        h.result(0, C, 1, ok()).unwrap();
        assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));

        // Only non-compensable steps succeeded: rolled back with nothing to run.
        let steps = vec![step("a", &[], false), step("b", &[0], true)];
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap();
        let effects = h.result(1, A, 1, fatal("nope")).unwrap();
        assert!(dispatches(&effects).is_empty());
        assert_eq!(*h.status(0), StepStatus::NotCompensable);
        assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));
    }

    #[test]
    fn retries_wait_for_growing_delays_then_exhaust() {
        let mut steps = chain(1);
        steps[0].retry = policy(4);
        let mut h = Harness::started(definition(steps, None));

        for (attempt, delay) in [(1, 1_000), (2, 2_000), (3, 4_000)] {
            h.now += 500;
            let effects = h.result(0, A, attempt, retryable("busy", None)).unwrap();
            let due = h.now + delay;
            let retry = TimerKind::Retry {
                step: 0,
                kind: A,
                attempt: attempt + 1,
            };
            assert_eq!(
                effects,
                vec![
                    cancel_step_timer(0, A, attempt),
                    Effect::ScheduleTimer {
                        timer: retry.clone(),
                        due,
                    },
                    lifecycle(LifecycleEvent::StepRetrying {
                        step: 0,
                        kind: A,
                        next_attempt: attempt + 1,
                        error: "busy".into(),
                    }),
                ]
            );
            assert_eq!(
                *h.status(0),
                StepStatus::RetryWaiting {
                    attempt: attempt + 1,
                    due,
                }
            );
            h.now = due;
            let effects = h.fire(retry).unwrap();
            assert_eq!(effects, dispatch_effects(0, A, attempt + 1, h.now).to_vec());
        }

        let effects = h.result(0, A, 4, retryable("busy", None)).unwrap();
        let error = "retries exhausted after 4 attempts: busy".to_owned();
        assert!(effects.contains(&lifecycle(LifecycleEvent::StepFailed {
            step: 0,
            error: error.clone(),
        })));
        assert_eq!(*h.status(0), StepStatus::Failed { error });
        // Nothing had succeeded: nothing to undo.
        assert_eq!(
            h.saga.status,
            SagaStatus::Failed {
                reason: "step s0 failed: retries exhausted after 4 attempts: busy".into()
            }
        );
        assert_eq!(h.saga.steps[0].attempts.len(), 4);
    }

    #[test]
    fn retry_after_is_honoured_when_later_than_the_backoff() {
        let mut h = Harness::started(definition(chain(1), None));
        h.result(0, A, 1, retryable("rate limited", Some(5_000)))
            .unwrap();
        assert_eq!(
            *h.status(0),
            StepStatus::RetryWaiting {
                attempt: 2,
                due: h.now + 5_000
            }
        );
        h.fire(TimerKind::Retry {
            step: 0,
            kind: A,
            attempt: 2,
        })
        .unwrap();
        // A retry_after shorter than the backoff does not shorten it.
        h.result(0, A, 2, retryable("rate limited", Some(10)))
            .unwrap();
        assert_eq!(
            *h.status(0),
            StepStatus::RetryWaiting {
                attempt: 3,
                due: h.now + 2_000
            }
        );
    }

    #[test]
    fn step_timeout_redispatches_at_once_and_fences_the_old_attempt() {
        let mut h = Harness::started(definition(chain(2), None));
        h.now += STEP_TIMEOUT_MS;
        let timer = TimerKind::StepTimeout {
            step: 0,
            kind: A,
            attempt: 1,
        };
        let effects = h.fire(timer.clone()).unwrap();
        let mut expected = vec![lifecycle(LifecycleEvent::StepRetrying {
            step: 0,
            kind: A,
            next_attempt: 2,
            error: "timed out after 30s".into(),
        })];
        expected.extend(dispatch_effects(0, A, 2, h.now));
        assert_eq!(effects, expected);
        assert_eq!(
            h.saga.steps[0].attempts[0].outcome,
            Some(AttemptOutcome::TimedOut)
        );
        assert_eq!(*h.status(0), StepStatus::Running { attempt: 2 });

        // The timer again, and a late result of attempt 1: both stale.
        assert!(matches!(h.fire(timer), Err(Rejection::Stale { .. })));
        assert!(matches!(
            h.result(0, A, 1, ok()),
            Err(Rejection::Stale { .. })
        ));
        // Attempt 2 is the one that counts.
        let effects = h.result(0, A, 2, ok()).unwrap();
        assert_eq!(dispatches(&effects), vec![(1, A, 1)]);
    }

    #[test]
    fn exhausted_timeouts_of_a_running_action_leave_its_outcome_unknown_and_roll_back() {
        // a -> b, c independent; b has 2 attempts, both time out.
        let mut steps = vec![
            step("a", &[], true),
            step("b", &[0], true),
            step("c", &[], true),
        ];
        steps[1].retry = policy(2);
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap(); // b dispatched
        h.result(2, A, 1, ok()).unwrap();
        h.now += STEP_TIMEOUT_MS;
        let effects = h
            .fire(TimerKind::StepTimeout {
                step: 1,
                kind: A,
                attempt: 1,
            })
            .unwrap();
        assert_eq!(dispatches(&effects), vec![(1, A, 2)]);
        h.now += STEP_TIMEOUT_MS;
        let effects = h
            .fire(TimerKind::StepTimeout {
                step: 1,
                kind: A,
                attempt: 2,
            })
            .unwrap();

        // b may have done its work: not failed but stuck, and the saga rolls
        // back. c is compensated; a waits for b, which blocks it.
        let error = "action outcome unknown after 2 timed-out attempts".to_owned();
        let reason = format!("step b failed: {error}");
        let mut expected = vec![
            lifecycle(LifecycleEvent::StepCompensationFailed {
                step: 1,
                error: error.clone(),
            }),
            lifecycle(LifecycleEvent::SagaCompensating {
                reason: reason.clone(),
            }),
        ];
        expected.extend(dispatch_effects(2, C, 1, h.now));
        assert_eq!(effects, expected);
        assert_eq!(*h.status(1), StepStatus::CompensationFailed { error });
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensating {
                reason: reason.clone()
            }
        );
        assert_eq!(*h.status(0), StepStatus::Succeeded);
        assert_eq!(*h.status(2), StepStatus::Compensating { attempt: 1 });

        let effects = h.result(2, C, 1, ok()).unwrap();
        assert!(effects.contains(&finished("partially_compensated")));
        assert!(h.saga.steps[0].attempts.iter().all(|a| a.kind == A));
        assert_eq!(
            h.saga.status,
            SagaStatus::PartiallyCompensated {
                reason,
                stuck_steps: vec!["a".into(), "b".into()],
            }
        );
    }

    #[test]
    fn an_action_out_of_attempts_after_a_timeout_stops_the_saga_at_once_when_nothing_else_runs() {
        // s0 -> s1; s1's only attempt times out: nothing can be rolled back
        // (s0 is blocked by s1), so the rollback ends in the same transition.
        let mut steps = chain(2);
        steps[1].retry = policy(1);
        let mut h = Harness::started(definition(steps, Some(Duration::from_secs(90))));
        h.result(0, A, 1, ok()).unwrap();
        let effects = h
            .fire(TimerKind::StepTimeout {
                step: 1,
                kind: A,
                attempt: 1,
            })
            .unwrap();
        let error = "action outcome unknown after 1 timed-out attempts".to_owned();
        let reason = format!("step s1 failed: {error}");
        assert_eq!(
            effects,
            vec![
                lifecycle(LifecycleEvent::StepCompensationFailed {
                    step: 1,
                    error: error.clone(),
                }),
                lifecycle(LifecycleEvent::SagaCompensating {
                    reason: reason.clone(),
                }),
                Effect::CancelTimer {
                    timer: TimerKind::SagaTimeout
                },
                finished("partially_compensated"),
            ]
        );
        assert_eq!(*h.status(0), StepStatus::Succeeded);
        assert_eq!(*h.status(1), StepStatus::CompensationFailed { error });
        assert_eq!(
            h.saga.status,
            SagaStatus::PartiallyCompensated {
                reason,
                stuck_steps: vec!["s0".into(), "s1".into()],
            }
        );
    }

    #[test]
    fn saga_timeout_rolls_back_while_draining_in_flight_steps() {
        let steps = vec![
            step("a", &[], true),
            step("b", &[], true),
            step("c", &[0], true),
        ];
        let mut h = Harness::started(definition(steps, Some(Duration::from_secs(90))));
        h.result(0, A, 1, ok()).unwrap(); // c dispatched; b still running
        h.now += 90_000;
        let effects = h.fire(TimerKind::SagaTimeout).unwrap();
        let reason = "saga timed out after 1m 30s".to_owned();
        assert_eq!(
            effects,
            vec![lifecycle(LifecycleEvent::SagaCompensating {
                reason: reason.clone()
            })]
        );
        // a waits for c, which is drained together with b.
        assert_eq!(*h.status(0), StepStatus::Succeeded);
        assert_eq!(*h.status(1), StepStatus::Running { attempt: 1 });
        assert_eq!(*h.status(2), StepStatus::Running { attempt: 1 });

        // The saga timeout again: not applicable while compensating.
        assert!(matches!(
            h.fire(TimerKind::SagaTimeout),
            Err(Rejection::NotApplicable(_))
        ));

        // c fails (no retry during rollback even for a retryable error): a can be compensated.
        let effects = h.result(2, A, 1, retryable("slow", None)).unwrap();
        assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
        assert_eq!(
            *h.status(2),
            StepStatus::Failed {
                error: "slow".into()
            }
        );
        h.result(0, C, 1, ok()).unwrap();
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensating {
                reason: reason.clone()
            }
        );
        // b's late success needs compensation too.
        let effects = h.result(1, A, 1, ok()).unwrap();
        assert_eq!(dispatches(&effects), vec![(1, C, 1)]);
        let effects = h.result(1, C, 1, ok()).unwrap();
        assert!(effects.contains(&finished("compensated")));
        assert_eq!(h.saga.status, SagaStatus::Compensated { reason });
    }

    #[test]
    fn draining_step_that_succeeds_gets_compensated() {
        let steps = vec![step("a", &[], true), step("b", &[], true)];
        let mut h = Harness::started(definition(steps, None));
        let effects = h.result(0, A, 1, fatal("boom")).unwrap();
        assert!(dispatches(&effects).is_empty(), "b is in flight, a failed");
        assert_eq!(*h.status(1), StepStatus::Running { attempt: 1 });

        let effects = h.result(1, A, 1, ok()).unwrap();
        assert!(effects.contains(&lifecycle(LifecycleEvent::StepSucceeded { step: 1 })));
        assert_eq!(dispatches(&effects), vec![(1, C, 1)]);
        h.result(1, C, 1, ok()).unwrap();
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensated {
                reason: "step a failed: boom".into()
            }
        );
    }

    #[test]
    fn draining_step_timeouts_redispatch_and_an_unknown_outcome_blocks_the_rollback() {
        // a -> b; c independent with 2 attempts and fails fatally once a and b ran.
        let mut steps = vec![
            step("a", &[], true),
            step("b", &[], true),
            step("c", &[0], true),
        ];
        steps[1].retry = policy(2);
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap();
        h.result(2, A, 1, fatal("boom")).unwrap();
        // a has no running dependents (c failed): compensated at once; b drains.
        assert_eq!(*h.status(0), StepStatus::Compensating { attempt: 1 });
        h.result(0, C, 1, ok()).unwrap();

        let effects = h
            .fire(TimerKind::StepTimeout {
                step: 1,
                kind: A,
                attempt: 1,
            })
            .unwrap();
        assert_eq!(
            dispatches(&effects),
            vec![(1, A, 2)],
            "re-dispatched while draining"
        );
        let effects = h
            .fire(TimerKind::StepTimeout {
                step: 1,
                kind: A,
                attempt: 2,
            })
            .unwrap();
        let error = "action outcome unknown after 2 timed-out attempts".to_owned();
        assert!(
            effects.contains(&lifecycle(LifecycleEvent::StepCompensationFailed {
                step: 1,
                error: error.clone(),
            }))
        );
        assert_eq!(*h.status(1), StepStatus::CompensationFailed { error });
        assert_eq!(
            h.saga.status,
            SagaStatus::PartiallyCompensated {
                reason: "step c failed: boom".into(),
                stuck_steps: vec!["b".into()],
            }
        );
    }

    #[test]
    fn unknown_outcome_while_draining_blocks_compensation_of_its_dependencies() {
        let mut steps = vec![
            step("a", &[], true),
            step("b", &[0], true),
            step("c", &[], true),
        ];
        steps[1].retry = policy(1);
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap(); // b dispatched
        h.result(2, A, 1, fatal("boom")).unwrap();
        h.fire(TimerKind::StepTimeout {
            step: 1,
            kind: A,
            attempt: 1,
        })
        .unwrap();
        assert!(h.saga.steps[0].attempts.iter().all(|a| a.kind == A));
        assert_eq!(
            h.saga.status,
            SagaStatus::PartiallyCompensated {
                reason: "step c failed: boom".into(),
                stuck_steps: vec!["a".into(), "b".into()],
            }
        );
    }

    #[test]
    fn compensation_retries_then_fails_for_good_leaving_dependencies_uncompensated() {
        let mut steps = chain(3);
        steps[1].retry = policy(2);
        let mut h = Harness::started(definition(steps, Some(Duration::from_secs(60))));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, ok()).unwrap();
        h.result(2, A, 1, fatal("boom")).unwrap();

        let effects = h.result(1, C, 1, retryable("db down", None)).unwrap();
        let retry = TimerKind::Retry {
            step: 1,
            kind: C,
            attempt: 2,
        };
        assert!(effects.contains(&Effect::ScheduleTimer {
            timer: retry.clone(),
            due: h.now + 1_000
        }));
        assert!(effects.contains(&lifecycle(LifecycleEvent::StepRetrying {
            step: 1,
            kind: C,
            next_attempt: 2,
            error: "db down".into(),
        })));
        assert_eq!(
            *h.status(1),
            StepStatus::CompensationRetryWaiting {
                attempt: 2,
                due: h.now + 1_000
            }
        );
        let effects = h.fire(retry).unwrap();
        assert_eq!(dispatches(&effects), vec![(1, C, 2)]);

        let effects = h.result(1, C, 2, retryable("db down", None)).unwrap();
        let error = "retries exhausted after 2 attempts: db down".to_owned();
        assert_eq!(
            effects,
            vec![
                cancel_step_timer(1, C, 2),
                lifecycle(LifecycleEvent::StepCompensationFailed {
                    step: 1,
                    error: error.clone()
                }),
                Effect::CancelTimer {
                    timer: TimerKind::SagaTimeout
                },
                finished("partially_compensated"),
            ]
        );
        assert_eq!(*h.status(1), StepStatus::CompensationFailed { error });
        assert_eq!(*h.status(0), StepStatus::Succeeded, "blocked by s1");
        assert!(h.saga.steps[0].attempts.iter().all(|a| a.kind == A));
        assert_eq!(
            h.saga.status,
            SagaStatus::PartiallyCompensated {
                reason: "step s2 failed: boom".into(),
                stuck_steps: vec!["s0".into(), "s1".into()],
            }
        );
    }

    #[test]
    fn fatal_compensation_and_compensation_timeouts() {
        // Fatal compensation: CompensationFailed at once.
        let mut h = Harness::started(definition(chain(2), None));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, fatal("boom")).unwrap();
        let effects = h.result(0, C, 1, fatal("cannot undo")).unwrap();
        assert!(
            effects.contains(&lifecycle(LifecycleEvent::StepCompensationFailed {
                step: 0,
                error: "cannot undo".into(),
            }))
        );
        assert!(matches!(
            h.saga.status,
            SagaStatus::PartiallyCompensated { ref stuck_steps, .. } if stuck_steps == &["s0"]
        ));

        // Compensation timeouts: re-dispatch, then CompensationFailed.
        let mut steps = chain(2);
        steps[0].retry = policy(2);
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, fatal("boom")).unwrap();
        let effects = h
            .fire(TimerKind::StepTimeout {
                step: 0,
                kind: C,
                attempt: 1,
            })
            .unwrap();
        assert_eq!(dispatches(&effects), vec![(0, C, 2)]);
        h.fire(TimerKind::StepTimeout {
            step: 0,
            kind: C,
            attempt: 2,
        })
        .unwrap();
        assert_eq!(
            *h.status(0),
            StepStatus::CompensationFailed {
                error: "compensation timed out after 30s on attempt 2 of 2".into()
            }
        );
        assert!(matches!(
            h.saga.status,
            SagaStatus::PartiallyCompensated { .. }
        ));
    }

    #[test]
    fn failing_the_first_step_fails_the_saga() {
        let mut h = Harness::started(definition(chain(3), Some(Duration::from_secs(60))));
        let effects = h.result(0, A, 1, fatal("invalid input")).unwrap();
        let reason = "step s0 failed: invalid input".to_owned();
        assert_eq!(
            effects,
            vec![
                cancel_step_timer(0, A, 1),
                lifecycle(LifecycleEvent::StepFailed {
                    step: 0,
                    error: "invalid input".into()
                }),
                lifecycle(LifecycleEvent::SagaCompensating {
                    reason: reason.clone()
                }),
                Effect::CancelTimer {
                    timer: TimerKind::SagaTimeout
                },
                finished("failed"),
            ]
        );
        assert_eq!(h.saga.status, SagaStatus::Failed { reason });
        assert_eq!(*h.status(1), StepStatus::Skipped);
        assert_eq!(*h.status(2), StepStatus::Skipped);
    }

    #[test]
    fn a_step_waiting_for_a_retry_fails_when_the_rollback_starts() {
        let steps = vec![step("a", &[], true), step("b", &[], true)];
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, retryable("busy", None)).unwrap();
        let effects = h.result(1, A, 1, fatal("boom")).unwrap();
        assert!(effects.contains(&Effect::CancelTimer {
            timer: TimerKind::Retry {
                step: 0,
                kind: A,
                attempt: 2
            }
        }));
        assert_eq!(
            *h.status(0),
            StepStatus::Failed {
                error: "busy".into()
            }
        );
        assert_eq!(
            h.saga.status,
            SagaStatus::Failed {
                reason: "step b failed: boom".into()
            }
        );
        // Its retry timer, should it still fire, is fenced off.
        assert!(matches!(
            h.fire(TimerKind::Retry {
                step: 0,
                kind: A,
                attempt: 2
            }),
            Err(Rejection::Terminal("failed"))
        ));
    }

    #[test]
    fn cancel_with_compensation_rolls_back_and_cannot_be_repeated() {
        let mut h = Harness::started(definition(chain(3), None));
        h.result(0, A, 1, ok()).unwrap();
        let effects = h.cancel(true).unwrap();
        assert_eq!(
            effects,
            vec![lifecycle(LifecycleEvent::SagaCompensating {
                reason: "operator said so".into()
            })]
        );
        assert_eq!(*h.status(1), StepStatus::Running { attempt: 1 });
        assert_eq!(*h.status(2), StepStatus::Skipped);
        assert!(matches!(h.cancel(true), Err(Rejection::NotApplicable(_))));

        let effects = h.result(1, A, 1, fatal("interrupted")).unwrap();
        assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
        h.result(0, C, 1, ok()).unwrap();
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensated {
                reason: "operator said so".into()
            }
        );
        assert!(matches!(
            h.cancel(true),
            Err(Rejection::Terminal("compensated"))
        ));
        assert!(matches!(
            h.cancel(false),
            Err(Rejection::Terminal("compensated"))
        ));
    }

    #[test]
    fn cancel_of_a_pending_saga_ends_it_cancelled_without_running_anything() {
        // A pending saga is one waiting in the start queue (`crate::limits`):
        // nothing ran, so compensating or not, it ends `cancelled`.
        for compensate in [true, false] {
            let mut h = Harness::new(definition(chain(2), Some(Duration::from_secs(60))));
            let effects = h.cancel(compensate).unwrap();
            assert!(dispatches(&effects).is_empty(), "{effects:?}");
            assert!(effects.contains(&finished("cancelled")), "{effects:?}");
            assert!(!effects.contains(&lifecycle(LifecycleEvent::SagaStarted)));
            assert!(matches!(h.saga.status, SagaStatus::Cancelled { .. }));
            assert!(h.saga.finished_at.is_some());
            assert!(h.saga.steps.iter().all(|s| s.status == StepStatus::Skipped));
            assert!(h.saga.steps.iter().all(|s| s.attempts.is_empty()));
            assert!(matches!(
                h.apply(Event::Start),
                Err(Rejection::NotApplicable(_))
            ));
        }
    }

    #[test]
    fn cancel_without_compensation_abandons_in_flight_work() {
        // a, b parallel; c after a; d after c.
        let steps = vec![
            step("a", &[], true),
            step("b", &[], true),
            step("c", &[0], true),
            step("d", &[2], true),
        ];
        let mut h = Harness::started(definition(steps, Some(Duration::from_secs(60))));
        h.result(0, A, 1, ok()).unwrap(); // c dispatched
        h.result(1, A, 1, retryable("busy", None)).unwrap();
        h.now += 10;
        let effects = h.cancel(false).unwrap();
        assert_eq!(
            effects,
            vec![
                Effect::CancelTimer {
                    timer: TimerKind::Retry {
                        step: 1,
                        kind: A,
                        attempt: 2
                    }
                },
                cancel_step_timer(2, A, 1),
                Effect::CancelTimer {
                    timer: TimerKind::SagaTimeout
                },
                finished("cancelled"),
            ]
        );
        assert_eq!(
            h.saga.status,
            SagaStatus::Cancelled {
                reason: "operator said so".into()
            }
        );
        assert_eq!(h.saga.finished_at, Some(h.now));
        assert_eq!(*h.status(0), StepStatus::Succeeded, "not undone");
        assert_eq!(*h.status(1), StepStatus::Skipped);
        assert_eq!(
            h.saga.steps[2].attempts[0].outcome,
            Some(AttemptOutcome::Abandoned)
        );
        assert_eq!(h.saga.steps[2].attempts[0].finished_at, Some(h.now));
        assert_eq!(*h.status(3), StepStatus::Skipped);
        // The abandoned attempt's result is ignored.
        assert!(matches!(
            h.result(2, A, 1, ok()),
            Err(Rejection::Terminal("cancelled"))
        ));
    }

    #[test]
    fn cancel_without_compensation_stops_a_rollback() {
        let steps = vec![
            step("a", &[], true),
            step("b", &[], true),
            step("c", &[1], true),
        ];
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, ok()).unwrap();
        h.result(2, A, 1, fatal("boom")).unwrap();
        h.result(0, C, 1, retryable("later", None)).unwrap();
        assert_eq!(*h.status(1), StepStatus::Compensating { attempt: 1 });
        let effects = h.cancel(false).unwrap();
        assert_eq!(
            effects,
            vec![
                Effect::CancelTimer {
                    timer: TimerKind::Retry {
                        step: 0,
                        kind: C,
                        attempt: 2
                    }
                },
                cancel_step_timer(1, C, 1),
                finished("cancelled"),
            ]
        );
        assert_eq!(*h.status(0), StepStatus::Succeeded);
        assert_eq!(
            h.saga.steps[1].attempts[1].outcome,
            Some(AttemptOutcome::Abandoned)
        );
    }

    #[test]
    fn stale_duplicate_and_misdirected_results_are_rejected() {
        let mut h = Harness::started(definition(chain(2), None));
        let stale = |r: Result<Vec<Effect>, Rejection>| matches!(r, Err(Rejection::Stale { .. }));
        // Not the current attempt, not the current kind, not dispatched yet.
        assert!(stale(h.result(0, A, 2, ok())));
        assert!(stale(h.result(0, A, 0, ok())));
        assert!(stale(h.result(0, C, 1, ok())));
        assert!(stale(h.result(1, A, 1, ok())));
        assert_eq!(h.result(7, A, 1, ok()), Err(Rejection::UnknownStep(7)));

        h.result(0, A, 1, ok()).unwrap();
        // The same result delivered again: a duplicate.
        assert_eq!(
            h.result(0, A, 1, ok()),
            Err(Rejection::Stale {
                step: "s0".into(),
                kind: A,
                attempt: 1
            })
        );
        assert!(stale(h.result(0, A, 1, fatal("late"))));

        h.result(1, A, 1, ok()).unwrap();
        assert_eq!(h.saga.status, SagaStatus::Completed);
        assert_eq!(
            h.result(1, A, 1, ok()),
            Err(Rejection::Terminal("completed"))
        );
        assert_eq!(
            h.result(9, A, 1, ok()),
            Err(Rejection::Terminal("completed"))
        );
    }

    #[test]
    fn results_before_start_are_stale() {
        let mut h = Harness::new(definition(chain(1), None));
        assert!(matches!(
            h.result(0, A, 1, ok()),
            Err(Rejection::Stale { .. })
        ));
        assert!(matches!(
            h.fire(TimerKind::SagaTimeout),
            Err(Rejection::NotApplicable(_))
        ));
    }

    #[test]
    fn timers_are_fenced_by_attempt() {
        let mut h = Harness::started(definition(chain(2), Some(Duration::from_secs(60))));
        let stale = |r: Result<Vec<Effect>, Rejection>| matches!(r, Err(Rejection::Stale { .. }));
        // A retry timer when nothing waits, or for another attempt.
        assert!(stale(h.fire(TimerKind::Retry {
            step: 0,
            kind: A,
            attempt: 2
        })));
        h.result(0, A, 1, retryable("busy", None)).unwrap();
        assert!(stale(h.fire(TimerKind::Retry {
            step: 0,
            kind: A,
            attempt: 3
        })));
        assert!(stale(h.fire(TimerKind::Retry {
            step: 0,
            kind: C,
            attempt: 2
        })));
        // The step timeout of the attempt that already ended.
        assert!(stale(h.fire(TimerKind::StepTimeout {
            step: 0,
            kind: A,
            attempt: 1
        })));
        assert_eq!(
            h.fire(TimerKind::Retry {
                step: 5,
                kind: A,
                attempt: 2
            }),
            Err(Rejection::UnknownStep(5))
        );
        // The right one.
        h.fire(TimerKind::Retry {
            step: 0,
            kind: A,
            attempt: 2,
        })
        .unwrap();
        // Fired twice: the second is stale.
        assert!(stale(h.fire(TimerKind::Retry {
            step: 0,
            kind: A,
            attempt: 2
        })));
        // A step timeout of an attempt not yet dispatched.
        assert!(stale(h.fire(TimerKind::StepTimeout {
            step: 0,
            kind: A,
            attempt: 3
        })));
        h.result(0, A, 2, ok()).unwrap();
        h.result(1, A, 1, ok()).unwrap();
        assert_eq!(
            h.fire(TimerKind::SagaTimeout),
            Err(Rejection::Terminal("completed"))
        );
    }

    #[test]
    fn mismatched_definition_is_rejected() {
        let def = definition(chain(2), None);
        let mut saga = new_saga("x".into(), &def, json!(null), None, T0);
        let other = definition(chain(3), None);
        let before = saga.clone();
        let r = apply(
            &mut saga,
            &other,
            Event::Start,
            Inputs {
                now: T0,
                random: 0.5,
            },
        );
        assert!(matches!(r, Err(Rejection::NotApplicable(_))));
        assert_eq!(saga, before);
    }

    #[test]
    fn status_helpers() {
        assert_eq!(
            in_flight_attempt(&StepStatus::Running { attempt: 2 }),
            Some((A, 2))
        );
        assert_eq!(
            in_flight_attempt(&StepStatus::Compensating { attempt: 1 }),
            Some((C, 1))
        );
        assert_eq!(
            waiting_attempt(&StepStatus::CompensationRetryWaiting { attempt: 3, due: 0 }),
            Some((C, 3))
        );
        assert!(is_busy(&StepStatus::RetryWaiting { attempt: 2, due: 0 }));
        assert!(!is_busy(&StepStatus::Succeeded));
        assert!(is_rolled_back(&StepStatus::Skipped));
        assert!(!is_rolled_back(&StepStatus::CompensationFailed {
            error: String::new()
        }));
        assert!(!is_rolled_back(&StepStatus::Succeeded));
    }

    // ----- retry -----

    fn retry(compensation_only: bool) -> Event {
        Event::Retry { compensation_only }
    }

    fn dispatch_in(
        step: usize,
        kind: TaskKind,
        attempt: u32,
        generation: u32,
        now: Millis,
    ) -> [Effect; 2] {
        let [_, timer] = dispatch_effects(step, kind, attempt, now);
        [
            Effect::Dispatch {
                step,
                kind,
                attempt,
                generation,
            },
            timer,
        ]
    }

    fn retried(from: &str, generation: u32) -> Effect {
        lifecycle(LifecycleEvent::SagaRetried {
            from: from.to_owned(),
            generation,
        })
    }

    /// s0 -> s1 -> s2; s2 fails, s1's compensation fails fatally: s0 and s1 stuck.
    fn stuck_on_a_fatal_compensation() -> Harness {
        let mut h = Harness::started(definition(chain(3), Some(Duration::from_secs(60))));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, ok()).unwrap();
        h.result(2, A, 1, fatal("boom")).unwrap();
        h.result(1, C, 1, fatal("refund service broken")).unwrap();
        assert_eq!(
            h.saga.status,
            SagaStatus::PartiallyCompensated {
                reason: "step s2 failed: boom".into(),
                stuck_steps: vec!["s0".into(), "s1".into()],
            }
        );
        h
    }

    #[test]
    fn retry_resumes_a_rollback_and_a_fatal_compensation_gets_a_fresh_key() {
        let mut h = stuck_on_a_fatal_compensation();
        h.now += 60_000;
        let effects = h.apply(retry(true)).unwrap();
        // Under the old key the SDK would replay the recorded fatal error:
        // the retried compensation carries a key of generation 1.
        let mut expected = vec![retried("partially_compensated", 1)];
        expected.extend(dispatch_in(1, C, 2, 1, h.now));
        assert_eq!(effects, expected);
        assert_eq!(h.saga.generation, 1);
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensating {
                reason: "step s2 failed: boom".into()
            }
        );
        assert_eq!(h.saga.finished_at, None);
        assert_eq!(*h.status(1), StepStatus::Compensating { attempt: 2 });
        assert_eq!(h.saga.steps[1].compensation_base, 1);
        assert_eq!(h.saga.steps[1].attempts.last().unwrap().generation, 1);
        assert_eq!(*h.status(0), StepStatus::Succeeded, "still blocked by s1");

        // A late copy of the failed attempt's result is stale, and so is its timer.
        assert!(matches!(
            h.result(1, C, 1, fatal("refund service broken")),
            Err(Rejection::Stale { .. })
        ));
        assert!(matches!(
            h.fire(TimerKind::StepTimeout {
                step: 1,
                kind: C,
                attempt: 1
            }),
            Err(Rejection::Stale { .. })
        ));

        // The fixed compensation succeeds; s0 is compensated after it.
        let effects = h.result(1, C, 2, ok()).unwrap();
        assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
        assert!(effects.contains(&Effect::Dispatch {
            step: 0,
            kind: C,
            attempt: 1,
            generation: 1
        }));
        let effects = h.result(0, C, 1, ok()).unwrap();
        assert!(effects.contains(&finished("compensated")));
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensated {
                reason: "step s2 failed: boom".into()
            }
        );
        assert_eq!(h.saga.finished_at, Some(h.now));
        // Compensated: nothing more to resume.
        assert!(matches!(
            h.apply(retry(true)),
            Err(Rejection::NotApplicable(_))
        ));
    }

    #[test]
    fn a_resumed_compensation_keeps_its_key_after_a_timeout_or_retryable_errors() {
        // s0's compensation has one attempt per round.
        let mut steps = chain(2);
        steps[0].retry = policy(1);
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap();
        h.result(1, A, 1, fatal("boom")).unwrap();
        h.fire(TimerKind::StepTimeout {
            step: 0,
            kind: C,
            attempt: 1,
        })
        .unwrap();
        assert!(matches!(
            h.saga.status,
            SagaStatus::PartiallyCompensated { .. }
        ));

        // The timed-out compensation may have done its work: same key
        // (generation 0), so a recorded success is replayed.
        let effects = h.apply(retry(false)).unwrap();
        let mut expected = vec![retried("partially_compensated", 0)];
        expected.extend(dispatch_in(0, C, 2, 0, h.now));
        assert_eq!(effects, expected);
        // A fresh budget of one attempt, spent on a retryable error.
        h.result(0, C, 2, retryable("db down", None)).unwrap();
        assert_eq!(
            *h.status(0),
            StepStatus::CompensationFailed {
                error: "retries exhausted after 1 attempts: db down".into()
            }
        );
        // Nothing was recorded under the key: it is kept again.
        let effects = h.apply(retry(true)).unwrap();
        assert_eq!(h.saga.generation, 0);
        assert_eq!(dispatches(&effects), vec![(0, C, 3)]);
        h.result(0, C, 3, ok()).unwrap();
        assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));
        let generations: Vec<u32> = h.saga.steps[0]
            .attempts
            .iter()
            .map(|a| a.generation)
            .collect();
        assert_eq!(generations, vec![0, 0, 0, 0]);
    }

    /// a -> b, c independent; b's only attempt times out: a and b stuck.
    fn stuck_on_an_unknown_action() -> Harness {
        let mut steps = vec![
            step("a", &[], true),
            step("b", &[0], true),
            step("c", &[], true),
        ];
        steps[1].retry = policy(1);
        let mut h = Harness::started(definition(steps, None));
        h.result(0, A, 1, ok()).unwrap();
        h.result(2, A, 1, fatal("boom")).unwrap();
        h.fire(TimerKind::StepTimeout {
            step: 1,
            kind: A,
            attempt: 1,
        })
        .unwrap();
        assert_eq!(
            h.saga.status,
            SagaStatus::PartiallyCompensated {
                reason: "step c failed: boom".into(),
                stuck_steps: vec!["a".into(), "b".into()],
            }
        );
        h
    }

    #[test]
    fn retry_redispatches_an_action_of_unknown_outcome_under_its_key_then_compensates_it() {
        let mut h = stuck_on_an_unknown_action();
        let effects = h.apply(retry(true)).unwrap();
        // The action again, under the same key: the SDK replays what it
        // recorded, or runs it if no attempt ever did.
        let mut expected = vec![retried("partially_compensated", 0)];
        expected.extend(dispatch_in(1, A, 2, 0, h.now));
        assert_eq!(effects, expected);
        assert_eq!(*h.status(1), StepStatus::Running { attempt: 2 });
        assert_eq!(h.saga.steps[1].action_base, 1);
        assert!(matches!(
            h.result(1, A, 1, ok()),
            Err(Rejection::Stale { .. })
        ));

        // It had succeeded: it is compensated, then what it blocked.
        let effects = h.result(1, A, 2, ok()).unwrap();
        assert_eq!(dispatches(&effects), vec![(1, C, 1)]);
        assert_eq!(*h.status(1), StepStatus::Compensating { attempt: 1 });
        let effects = h.result(1, C, 1, ok()).unwrap();
        assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
        h.result(0, C, 1, ok()).unwrap();
        assert_eq!(
            h.saga.status,
            SagaStatus::Compensated {
                reason: "step c failed: boom".into()
            }
        );
    }

    #[test]
    fn a_redispatched_action_that_failed_or_times_out_again() {
        // It never had an effect: nothing to undo, a is compensated.
        let mut h = stuck_on_an_unknown_action();
        h.apply(retry(false)).unwrap();
        let effects = h.result(1, A, 2, fatal("rejected")).unwrap();
        assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
        assert_eq!(
            *h.status(1),
            StepStatus::Failed {
                error: "rejected".into()
            }
        );
        h.result(0, C, 1, ok()).unwrap();
        assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));

        // Still no answer: stuck again, counting this round's timeouts.
        let mut h = stuck_on_an_unknown_action();
        h.apply(retry(false)).unwrap();
        h.fire(TimerKind::StepTimeout {
            step: 1,
            kind: A,
            attempt: 2,
        })
        .unwrap();
        assert_eq!(
            *h.status(1),
            StepStatus::CompensationFailed {
                error: "action outcome unknown after 1 timed-out attempts".into()
            }
        );
        assert!(matches!(
            h.saga.status,
            SagaStatus::PartiallyCompensated { ref stuck_steps, .. } if stuck_steps == &["a", "b"]
        ));
    }

    #[test]
    fn retry_runs_a_failed_saga_forward_again_under_a_new_generation() {
        let mut h = Harness::started(definition(chain(2), Some(Duration::from_secs(60))));
        h.result(0, A, 1, fatal("card declined")).unwrap();
        assert!(matches!(h.saga.status, SagaStatus::Failed { .. }));
        // The cause is fixed; the operator retries.
        h.now += 5_000;
        let effects = h.apply(retry(false)).unwrap();
        let mut expected = vec![
            retried("failed", 1),
            Effect::ScheduleTimer {
                timer: TimerKind::SagaTimeout,
                due: h.now + 60_000,
            },
        ];
        expected.extend(dispatch_in(0, A, 2, 1, h.now));
        assert_eq!(effects, expected);
        assert_eq!(h.saga.status, SagaStatus::Running);
        assert_eq!(h.saga.generation, 1);
        assert_eq!(h.saga.finished_at, None);
        assert_eq!(*h.status(0), StepStatus::Running { attempt: 2 });
        assert_eq!(*h.status(1), StepStatus::Pending);
        assert_eq!(h.saga.steps[0].attempts.len(), 2, "history kept");

        // The pre-retry attempt's result and timer are stale.
        assert!(matches!(
            h.result(0, A, 1, fatal("card declined")),
            Err(Rejection::Stale { .. })
        ));
        assert!(matches!(
            h.fire(TimerKind::StepTimeout {
                step: 0,
                kind: A,
                attempt: 1
            }),
            Err(Rejection::Stale { .. })
        ));
        // A full budget again: three attempts in this round.
        h.result(0, A, 2, retryable("busy", None)).unwrap();
        assert!(matches!(
            *h.status(0),
            StepStatus::RetryWaiting { attempt: 3, .. }
        ));

        h.fire(TimerKind::Retry {
            step: 0,
            kind: A,
            attempt: 3,
        })
        .unwrap();
        let effects = h.result(0, A, 3, ok()).unwrap();
        assert!(effects.contains(&Effect::Dispatch {
            step: 1,
            kind: A,
            attempt: 1,
            generation: 1
        }));
        h.result(1, A, 1, ok()).unwrap();
        assert_eq!(h.saga.status, SagaStatus::Completed);
        assert!(matches!(
            h.apply(retry(false)),
            Err(Rejection::NotApplicable(_))
        ));
    }

    #[test]
    fn retry_runs_a_compensated_saga_again_keeping_effects_nothing_undid() {
        // a (no compensation) -> b -> c (no compensation) -> d, which fails.
        let steps = vec![
            step("a", &[], false),
            step("b", &[0], true),
            step("c", &[1], false),
            step("d", &[2], true),
        ];
        let mut h = Harness::started(definition(steps, None));
        for i in 0..3 {
            h.result(i, A, 1, Outcome::Ok { output: json!(i) }).unwrap();
        }
        h.result(3, A, 1, fatal("boom")).unwrap();
        h.result(1, C, 1, ok()).unwrap();
        assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));
        assert_eq!(*h.status(0), StepStatus::NotCompensable);
        assert_eq!(*h.status(2), StepStatus::NotCompensable);

        let effects = h.apply(retry(false)).unwrap();
        // a's effect is in place and its inputs are the same: kept. c ran on
        // b's output, which was undone: it runs again after b.
        assert_eq!(dispatches(&effects), vec![(1, A, 2)]);
        assert_eq!(*h.status(0), StepStatus::Succeeded);
        assert_eq!(h.saga.steps[0].output, Some(json!(0)));
        assert_eq!(*h.status(2), StepStatus::Pending);
        assert_eq!(h.saga.steps[1].output, None);
        assert_eq!(h.saga.steps[2].output, None);
        let effects = h.result(1, A, 2, ok()).unwrap();
        assert_eq!(dispatches(&effects), vec![(2, A, 2)]);
        h.result(2, A, 2, ok()).unwrap();
        h.result(3, A, 2, ok()).unwrap();
        assert_eq!(h.saga.status, SagaStatus::Completed);
        assert_eq!(h.saga.steps[0].attempts.len(), 1, "a never ran again");
    }

    #[test]
    fn retry_is_not_applicable_to_live_completed_and_cancelled_sagas() {
        let not_applicable = |h: &mut Harness, compensation_only: bool, needle: &str| match h
            .apply(retry(compensation_only))
        {
            Err(Rejection::NotApplicable(message)) => {
                assert!(message.contains(needle), "{message}")
            }
            other => panic!("expected not applicable, got {other:?}"),
        };
        let mut h = Harness::new(definition(chain(2), None));
        not_applicable(&mut h, false, "it is pending");
        h.apply(Event::Start).unwrap();
        not_applicable(&mut h, false, "it is running (wait until it finishes");
        not_applicable(&mut h, true, "only a partially_compensated saga");
        h.result(0, A, 1, ok()).unwrap();
        h.cancel(true).unwrap();
        not_applicable(
            &mut h,
            false,
            "it is compensating (its rollback is still under way)",
        );
        h.result(1, A, 1, fatal("x")).unwrap();
        h.result(0, C, 1, ok()).unwrap();
        // Compensated: a forward retry applies, a compensation retry not.
        not_applicable(&mut h, true, "to run it again from the start, use retry");

        let mut h = Harness::started(definition(chain(1), None));
        h.result(0, A, 1, ok()).unwrap();
        not_applicable(&mut h, false, "it is completed");

        let mut h = Harness::started(definition(chain(1), None));
        h.cancel(false).unwrap();
        not_applicable(&mut h, false, "start a new saga instead");
        not_applicable(&mut h, true, "it is cancelled");
    }
}

/// Property tests: random definitions driven by random interleavings of
/// results (fresh, duplicate, stale), timers (armed and stray) and cancels,
/// against a simulated environment built from the emitted effects.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::saga::definition::RetryPolicy;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::{BTreeMap, BTreeSet};

    /// 2–7 steps, each depending on a random subset of the earlier ones.
    fn definitions() -> impl Strategy<Value = SagaDefinition> {
        (
            prop::collection::vec((any::<u8>(), any::<bool>(), 1u32..=3), 2..=7),
            any::<bool>(),
        )
            .prop_map(|(specs, with_timeout)| SagaDefinition {
                name: "prop".into(),
                version: 1,
                timeout: with_timeout.then(|| Duration::from_secs(120)),
                steps: specs
                    .iter()
                    .enumerate()
                    .map(|(i, &(mask, compensable, max_attempts))| StepDefinition {
                        id: format!("s{i}"),
                        service: "svc".into(),
                        operation: "op".into(),
                        compensation: compensable.then(|| "undo".into()),
                        timeout: Duration::from_secs(10),
                        retry: RetryPolicy {
                            max_attempts,
                            initial_delay: Duration::from_secs(1),
                            max_delay: Duration::from_secs(30),
                            backoff_factor: 2.0,
                            jitter: 0.2,
                        },
                        depends_on: (0..i).filter(|j| mask & (1 << j) != 0).collect(),
                    })
                    .collect(),
                triggers: Vec::new(),
                policy: Default::default(),
                max_running: None,
            })
    }

    /// What the environment does next; indexes pick among what is pending.
    #[derive(Debug, Clone)]
    enum Action {
        Start,
        /// A worker answers one of the dispatched tasks.
        Deliver {
            pick: usize,
            outcome: u8,
        },
        /// A result that was applied is delivered again.
        Duplicate {
            pick: usize,
        },
        /// A result for a random step, kind and attempt.
        Stray {
            step: usize,
            compensation: bool,
            attempt: u32,
            outcome: u8,
        },
        /// One of the armed timers fires.
        FireTimer {
            pick: usize,
        },
        /// A random timer fires (usually stale).
        FireStray {
            step: usize,
            compensation: bool,
            attempt: u32,
            which: u8,
        },
        Cancel {
            compensate: bool,
        },
        /// An operator retries the saga (usually refused: it must be finished).
        Retry {
            compensation_only: bool,
        },
        Tick(u64),
    }

    fn actions() -> impl Strategy<Value = Action> {
        prop_oneof![
            2 => Just(Action::Start),
            12 => (any::<usize>(), 0u8..8).prop_map(|(pick, outcome)| Action::Deliver { pick, outcome }),
            3 => any::<usize>().prop_map(|pick| Action::Duplicate { pick }),
            3 => (0usize..8, any::<bool>(), 0u32..5, 0u8..8).prop_map(
                |(step, compensation, attempt, outcome)| Action::Stray { step, compensation, attempt, outcome }
            ),
            6 => any::<usize>().prop_map(|pick| Action::FireTimer { pick }),
            2 => (0usize..8, any::<bool>(), 0u32..5, 0u8..3).prop_map(
                |(step, compensation, attempt, which)| Action::FireStray { step, compensation, attempt, which }
            ),
            1 => any::<bool>().prop_map(|compensate| Action::Cancel { compensate }),
            2 => any::<bool>().prop_map(|compensation_only| Action::Retry { compensation_only }),
            2 => (0u64..20_000).prop_map(Action::Tick),
        ]
    }

    fn kind(compensation: bool) -> TaskKind {
        if compensation {
            TaskKind::Compensation
        } else {
            TaskKind::Action
        }
    }

    fn outcome(code: u8) -> Outcome {
        match code {
            0..=4 => Outcome::Ok {
                output: json!(code),
            },
            5 => Outcome::Retryable {
                error: "busy".into(),
                retry_after_ms: None,
            },
            6 => Outcome::Retryable {
                error: "rate limited".into(),
                retry_after_ms: Some(5_000),
            },
            _ => Outcome::Fatal {
                error: "broken".into(),
            },
        }
    }

    /// Whether the machine must accept `event`, judged from the state alone.
    fn must_accept(saga: &Saga, def: &SagaDefinition, event: &Event) -> bool {
        let live = !saga.status.is_terminal();
        let status = |step: usize| saga.steps.get(step).map(|s| &s.status);
        match event {
            Event::Start => saga.status == SagaStatus::Pending,
            Event::TaskResult {
                step,
                kind,
                attempt,
                ..
            }
            | Event::TimerFired(TimerKind::StepTimeout {
                step,
                kind,
                attempt,
            }) => live && status(*step).and_then(in_flight_attempt) == Some((*kind, *attempt)),
            Event::TimerFired(TimerKind::Retry {
                step,
                kind,
                attempt,
            }) => live && status(*step).and_then(waiting_attempt) == Some((*kind, *attempt)),
            Event::TimerFired(TimerKind::SagaTimeout) => {
                saga.status == SagaStatus::Running && def.timeout.is_some()
            }
            Event::Cancel { compensate, .. } => {
                live && !(*compensate && matches!(saga.status, SagaStatus::Compensating { .. }))
            }
            Event::Retry { compensation_only } => match saga.status {
                SagaStatus::PartiallyCompensated { .. } => true,
                SagaStatus::Failed { .. } | SagaStatus::Compensated { .. } => !compensation_only,
                _ => false,
            },
        }
    }

    /// Whether an action attempt of the step's current round succeeded.
    fn action_succeeded(state: &StepState) -> bool {
        state.attempts.iter().any(|a| {
            a.kind == TaskKind::Action
                && a.number > state.action_base
                && a.outcome == Some(AttemptOutcome::Ok)
        })
    }

    fn base(state: &StepState, kind: TaskKind) -> u32 {
        match kind {
            TaskKind::Action => state.action_base,
            TaskKind::Compensation => state.compensation_base,
        }
    }

    fn dependents(def: &SagaDefinition, step: usize) -> impl Iterator<Item = usize> + '_ {
        (0..def.steps.len()).filter(move |&j| def.steps[j].depends_on.contains(&step))
    }

    /// The simulated environment: the saga plus what its effects set up.
    struct Sim {
        def: SagaDefinition,
        saga: Saga,
        now: Millis,
        seq: u64,
        /// Dispatched tasks no result was delivered for yet.
        tasks: BTreeSet<(usize, TaskKind, u32)>,
        /// Every task ever dispatched.
        dispatched: BTreeSet<(usize, TaskKind, u32)>,
        /// Results that were applied.
        delivered: Vec<Event>,
        /// Armed timers.
        timers: BTreeMap<TimerKind, Millis>,
        /// Compensation `Ok` results applied, per step (since it last ran
        /// forward again).
        compensated: Vec<u32>,
        /// Whether the step's effect is in place, as the applied results
        /// tell: set by an action's `Ok`, cleared by a compensation's `Ok`.
        in_place: Vec<bool>,
        /// Idempotency keys (step, kind, generation) whose `Ok` or fatal
        /// outcome the machine applied: the SDK would replay it, so they
        /// must never be dispatched again.
        closed_keys: BTreeSet<(usize, TaskKind, u32)>,
    }

    impl Sim {
        fn new(def: SagaDefinition) -> Self {
            let saga = new_saga("p".into(), &def, json!({}), None, 1_000);
            let compensated = vec![0; def.steps.len()];
            let in_place = vec![false; def.steps.len()];
            Self {
                def,
                saga,
                now: 1_000,
                seq: 0,
                tasks: BTreeSet::new(),
                dispatched: BTreeSet::new(),
                delivered: Vec::new(),
                timers: BTreeMap::new(),
                compensated,
                in_place,
                closed_keys: BTreeSet::new(),
            }
        }

        fn perform(&mut self, action: Action) {
            match action {
                Action::Start => {
                    self.step(Event::Start);
                }
                Action::Deliver {
                    pick,
                    outcome: code,
                } => {
                    let Some(&(step, kind, attempt)) =
                        self.tasks.iter().nth(pick % self.tasks.len().max(1))
                    else {
                        return;
                    };
                    self.tasks.remove(&(step, kind, attempt));
                    self.step(Event::TaskResult {
                        step,
                        kind,
                        attempt,
                        outcome: outcome(code),
                    });
                }
                Action::Duplicate { pick } => {
                    if self.delivered.is_empty() {
                        return;
                    }
                    let event = self.delivered[pick % self.delivered.len()].clone();
                    assert!(!self.step(event), "a duplicate result was applied");
                }
                Action::Stray {
                    step,
                    compensation,
                    attempt,
                    outcome: code,
                } => {
                    let event = Event::TaskResult {
                        step,
                        kind: kind(compensation),
                        attempt,
                        outcome: outcome(code),
                    };
                    if self.step(event) {
                        // It named the in-flight attempt: the worker's answer.
                        self.tasks.remove(&(step, kind(compensation), attempt));
                    }
                }
                Action::FireTimer { pick } => {
                    let Some((timer, due)) = self
                        .timers
                        .iter()
                        .nth(pick % self.timers.len().max(1))
                        .map(|(t, d)| (t.clone(), *d))
                    else {
                        return;
                    };
                    self.now = self.now.max(due);
                    self.step(Event::TimerFired(timer.clone()));
                    // A fired timer is consumed whether it applied or not.
                    self.timers.remove(&timer);
                }
                Action::FireStray {
                    step,
                    compensation,
                    attempt,
                    which,
                } => {
                    let kind = kind(compensation);
                    let timer = match which {
                        0 => TimerKind::Retry {
                            step,
                            kind,
                            attempt,
                        },
                        1 => TimerKind::StepTimeout {
                            step,
                            kind,
                            attempt,
                        },
                        _ => TimerKind::SagaTimeout,
                    };
                    self.step(Event::TimerFired(timer));
                }
                Action::Cancel { compensate } => {
                    self.step(Event::Cancel {
                        compensate,
                        reason: "cancelled".into(),
                    });
                }
                Action::Retry { compensation_only } => {
                    self.step(Event::Retry { compensation_only });
                }
                Action::Tick(ms) => self.now += ms,
            }
        }

        /// Applies one event and checks every invariant; returns whether it
        /// was applied.
        fn step(&mut self, event: Event) -> bool {
            let before = self.saga.clone();
            let expected = must_accept(&before, &self.def, &event);
            self.seq += 1;
            let inputs = Inputs {
                now: self.now,
                random: (self.seq as f64 * 0.618_033_988_75).fract(),
            };
            let result = apply(&mut self.saga, &self.def, event.clone(), inputs);
            assert_eq!(
                result.is_ok(),
                expected,
                "{event:?} on {before:#?} gave {result:?}"
            );
            let Ok(effects) = result else {
                assert_eq!(self.saga, before, "a rejected {event:?} changed the saga");
                return false;
            };
            assert_eq!(self.saga.updated_at, self.now);
            match &event {
                Event::TaskResult {
                    step,
                    kind,
                    attempt,
                    outcome,
                } => {
                    self.delivered.push(event.clone());
                    self.result_applied(&before, *step, *kind, *attempt, outcome);
                }
                Event::TimerFired(timer) => assert!(
                    self.timers.remove(timer).is_some(),
                    "applied {timer:?}, which was never armed"
                ),
                Event::Retry { .. } => self.retry_applied(&before),
                _ => {}
            }
            for effect in &effects {
                self.check_effect(effect);
            }
            self.check_state();
            true
        }

        /// Keeps the effects in place and the closed keys up to date.
        fn result_applied(
            &mut self,
            before: &Saga,
            step: usize,
            kind: TaskKind,
            attempt: u32,
            outcome: &Outcome,
        ) {
            let generation = before.steps[step]
                .attempts
                .iter()
                .find(|a| a.kind == kind && a.number == attempt)
                .map(|a| a.generation)
                .expect("an applied result names a dispatched attempt");
            match outcome {
                Outcome::Ok { .. } | Outcome::Fatal { .. } => {
                    self.closed_keys.insert((step, kind, generation));
                }
                Outcome::Retryable { .. } => {}
            }
            if let Outcome::Ok { .. } = outcome {
                match kind {
                    TaskKind::Action => {
                        assert!(
                            !self.in_place[step],
                            "step {step}'s action succeeded again while its effect was in place"
                        );
                        self.in_place[step] = true;
                    }
                    TaskKind::Compensation => {
                        assert!(
                            self.in_place[step],
                            "step {step} undone with nothing in place"
                        );
                        self.in_place[step] = false;
                    }
                }
            }
        }

        /// What an applied retry must have done.
        fn retry_applied(&mut self, before: &Saga) {
            let saga = &self.saga;
            match &before.status {
                SagaStatus::PartiallyCompensated { reason, .. } => {
                    assert_eq!(
                        saga.status,
                        SagaStatus::Compensating {
                            reason: reason.clone()
                        }
                    );
                    assert!(
                        saga.generation == before.generation
                            || saga.generation == before.generation + 1
                    );
                    for (i, (old, new)) in before.steps.iter().zip(&saga.steps).enumerate() {
                        if let StepStatus::CompensationFailed { .. } = old.status {
                            // The step that left it stuck gets a new round of
                            // what got stuck: the action if its outcome was
                            // unknown, else the compensation.
                            let stuck = old.attempts.last().expect("an attempt").kind;
                            assert_eq!(
                                in_flight_attempt(&new.status).map(|(k, _)| k),
                                Some(stuck),
                                "step {i}"
                            );
                        } else if !is_busy(&new.status) {
                            assert_eq!(old.status, new.status, "step {i} changed");
                        }
                    }
                }
                SagaStatus::Failed { .. } | SagaStatus::Compensated { .. } => {
                    assert_eq!(saga.generation, before.generation + 1);
                    assert!(
                        matches!(saga.status, SagaStatus::Running | SagaStatus::Completed),
                        "{:?}",
                        saga.status
                    );
                    for (i, (old, new)) in before.steps.iter().zip(&saga.steps).enumerate() {
                        assert!(
                            new.attempts.starts_with(&old.attempts),
                            "step {i} lost history"
                        );
                        if old.status == StepStatus::NotCompensable
                            && new.status == StepStatus::Succeeded
                        {
                            // Kept: its effect stays in place.
                            assert_eq!(new.output, old.output);
                            for &dep in &self.def.steps[i].depends_on {
                                assert_eq!(saga.steps[dep].status, StepStatus::Succeeded);
                            }
                        } else {
                            // Runs again: a new effect under a new key (the
                            // old one of a step without compensation stays,
                            // as in any rollback).
                            self.compensated[i] = 0;
                            self.in_place[i] = false;
                        }
                    }
                }
                other => panic!("retry applied to a saga that was {other:?}"),
            }
        }

        /// Invariants of one effect, judged against the state after the transition.
        fn check_effect(&mut self, effect: &Effect) {
            match effect {
                &Effect::Dispatch {
                    step,
                    kind,
                    attempt,
                    generation,
                } => {
                    let state = &self.saga.steps[step];
                    let record = state
                        .attempts
                        .iter()
                        .find(|a| a.kind == kind && a.number == attempt)
                        .expect("a dispatched attempt is recorded");
                    assert_eq!(record.generation, generation);
                    assert!(
                        !self.closed_keys.contains(&(step, kind, generation)),
                        "step {step} {kind} attempt {attempt} dispatched under generation {generation}, whose outcome the SDK recorded and would replay"
                    );
                    if let Some(previous) = state
                        .attempts
                        .iter()
                        .find(|a| a.kind == kind && a.number + 1 == attempt)
                        && previous.outcome == Some(AttemptOutcome::TimedOut)
                    {
                        assert_eq!(
                            previous.generation, generation,
                            "step {step} {kind} attempt {attempt} changed the key of a timed-out attempt, whose effect may be in place"
                        );
                    }
                    assert!(
                        self.dispatched.insert((step, kind, attempt)),
                        "step {step} {kind} attempt {attempt} dispatched twice"
                    );
                    assert!(
                        attempt == 1 || self.dispatched.contains(&(step, kind, attempt - 1)),
                        "attempt {attempt} of step {step} {kind} skipped one"
                    );
                    self.tasks.insert((step, kind, attempt));
                    match kind {
                        TaskKind::Action => {
                            for &dep in &self.def.steps[step].depends_on {
                                assert_eq!(
                                    self.saga.steps[dep].status,
                                    StepStatus::Succeeded,
                                    "step {step} dispatched before its dependency {dep} succeeded"
                                );
                            }
                        }
                        TaskKind::Compensation => {
                            assert!(self.def.steps[step].compensation.is_some());
                            assert!(
                                action_succeeded(&self.saga.steps[step]),
                                "compensating step {step}, which never succeeded"
                            );
                            for dependent in dependents(&self.def, step) {
                                assert!(
                                    is_rolled_back(&self.saga.steps[dependent].status),
                                    "compensating step {step} before its dependent {dependent} settled"
                                );
                            }
                        }
                    }
                }
                Effect::ScheduleTimer { timer, due } => {
                    assert!(*due >= self.now);
                    assert!(
                        self.timers.insert(timer.clone(), *due).is_none(),
                        "{timer:?} armed twice"
                    );
                }
                Effect::CancelTimer { timer } => {
                    let armed = self.timers.remove(timer).is_some();
                    assert!(
                        armed || *timer == TimerKind::SagaTimeout,
                        "cancelled {timer:?}, which was not armed"
                    );
                }
                &Effect::Lifecycle(LifecycleEvent::StepCompensated { step }) => {
                    self.compensated[step] += 1;
                    assert!(self.compensated[step] <= 1, "step {step} compensated twice");
                }
                Effect::Lifecycle(_) => {}
            }
        }

        /// Invariants of the saga state and of the environment around it.
        fn check_state(&self) {
            let saga = &self.saga;
            let cancelled = matches!(saga.status, SagaStatus::Cancelled { .. });
            for (i, (def, state)) in self.def.steps.iter().zip(&saga.steps).enumerate() {
                let open: Vec<&Attempt> = state
                    .attempts
                    .iter()
                    .filter(|a| a.outcome.is_none())
                    .collect();
                assert!(open.len() <= 1, "step {i} has several attempts in flight");
                for kind in [TaskKind::Action, TaskKind::Compensation] {
                    let numbers: Vec<u32> = state
                        .attempts
                        .iter()
                        .filter(|a| a.kind == kind)
                        .map(|a| a.number)
                        .collect();
                    assert!(
                        numbers.iter().copied().eq(1..=numbers.len() as u32),
                        "step {i}: {kind} attempts numbered {numbers:?}"
                    );
                    let made = numbers.iter().filter(|&&n| n > base(state, kind)).count();
                    assert!(
                        made <= def.retry.max_attempts as usize,
                        "step {i}: {made} {kind} attempts in this round, max {}",
                        def.retry.max_attempts
                    );
                }
                match in_flight_attempt(&state.status) {
                    Some((kind, number)) => {
                        let last = state.attempts.last().expect("an in-flight attempt");
                        assert_eq!((last.kind, last.number), (kind, number));
                        if cancelled {
                            assert_eq!(last.outcome, Some(AttemptOutcome::Abandoned));
                        } else {
                            assert_eq!(last.outcome, None);
                            assert!(self.tasks.contains(&(i, kind, number)));
                        }
                    }
                    None => assert!(open.is_empty(), "step {i} has a stray open attempt"),
                }
                if matches!(
                    state.status,
                    StepStatus::Running { .. } | StepStatus::RetryWaiting { .. }
                ) {
                    for &dep in &def.depends_on {
                        assert_eq!(saga.steps[dep].status, StepStatus::Succeeded);
                    }
                }
                match state.status {
                    StepStatus::Succeeded | StepStatus::NotCompensable => {
                        assert!(action_succeeded(state));
                    }
                    StepStatus::Compensating { .. }
                    | StepStatus::CompensationRetryWaiting { .. }
                    | StepStatus::Compensated => {
                        assert!(action_succeeded(state) && def.compensation.is_some());
                        for dependent in dependents(&self.def, i) {
                            assert!(is_rolled_back(&saga.steps[dependent].status));
                        }
                    }
                    _ => {}
                }
                if state.status == StepStatus::NotCompensable {
                    assert!(def.compensation.is_none());
                }
                // A timed-out attempt's outcome is unknown: a step is failed
                // (nothing to undo) only if its last action attempt reported
                // an error, and an action out of attempts after a timeout is
                // left for a person, never silently dropped.
                let actions: Vec<&Attempt> = state
                    .attempts
                    .iter()
                    .filter(|a| a.kind == TaskKind::Action && a.number > state.action_base)
                    .collect();
                let last_action = actions.last().and_then(|a| a.outcome.as_ref());
                if matches!(state.status, StepStatus::Failed { .. }) {
                    assert!(
                        matches!(
                            last_action,
                            Some(AttemptOutcome::Retryable { .. } | AttemptOutcome::Fatal { .. })
                        ),
                        "step {i} failed after {last_action:?}"
                    );
                }
                if actions.len() == def.retry.max_attempts as usize
                    && last_action == Some(&AttemptOutcome::TimedOut)
                {
                    assert!(
                        matches!(
                            &state.status,
                            StepStatus::CompensationFailed { error }
                                if error.starts_with("action outcome unknown after ")
                        ),
                        "step {i} ran out of attempts on a timeout but is {:?}",
                        state.status
                    );
                }
                assert_eq!(
                    self.compensated[i] == 1,
                    state.status == StepStatus::Compensated,
                    "step {i}: compensation results vs status"
                );
                if !cancelled {
                    let expected =
                        matches!(
                            state.status,
                            StepStatus::Succeeded
                                | StepStatus::NotCompensable
                                | StepStatus::Compensating { .. }
                                | StepStatus::CompensationRetryWaiting { .. }
                        ) || (matches!(state.status, StepStatus::CompensationFailed { .. })
                            && action_succeeded(state));
                    assert_eq!(
                        self.in_place[i], expected,
                        "step {i}: effect in place vs {:?}",
                        state.status
                    );
                }
            }

            // The rollback scheduler is eager: while compensating or once
            // partially compensated, a step still succeeded is one that a
            // dependent blocks (not rolled back: in flight, succeeded itself,
            // or its compensation failed).
            if matches!(
                saga.status,
                SagaStatus::Compensating { .. } | SagaStatus::PartiallyCompensated { .. }
            ) {
                for (i, state) in saga.steps.iter().enumerate() {
                    if state.status == StepStatus::Succeeded {
                        assert!(
                            dependents(&self.def, i)
                                .any(|j| !is_rolled_back(&saga.steps[j].status)),
                            "step {i} could be compensated but was not"
                        );
                    }
                }
            }

            let statuses = || saga.steps.iter().map(|s| &s.status);
            match &saga.status {
                SagaStatus::Pending => {
                    assert!(statuses().all(|s| *s == StepStatus::Pending));
                }
                SagaStatus::Running => assert!(statuses().all(|s| matches!(
                    s,
                    StepStatus::Pending
                        | StepStatus::Running { .. }
                        | StepStatus::RetryWaiting { .. }
                        | StepStatus::Succeeded
                ))),
                SagaStatus::Compensating { .. } => {
                    assert!(statuses().all(|s| !matches!(
                        s,
                        StepStatus::Pending | StepStatus::RetryWaiting { .. }
                    )));
                    assert!(statuses().any(is_busy), "compensating with nothing to do");
                }
                SagaStatus::Completed => {
                    assert!(statuses().all(|s| *s == StepStatus::Succeeded));
                }
                SagaStatus::Compensated { .. } => {
                    assert!(statuses().all(is_rolled_back));
                    assert!(statuses().any(|s| matches!(
                        s,
                        StepStatus::Compensated | StepStatus::NotCompensable
                    )));
                }
                SagaStatus::Failed { .. } => assert!(
                    statuses()
                        .all(|s| matches!(s, StepStatus::Failed { .. } | StepStatus::Skipped))
                ),
                SagaStatus::PartiallyCompensated { stuck_steps, .. } => {
                    let expected: Vec<String> = self
                        .def
                        .steps
                        .iter()
                        .zip(&saga.steps)
                        .filter(|(_, s)| {
                            matches!(
                                s.status,
                                StepStatus::Succeeded | StepStatus::CompensationFailed { .. }
                            )
                        })
                        .map(|(d, _)| d.id.clone())
                        .collect();
                    assert!(!stuck_steps.is_empty());
                    assert_eq!(stuck_steps, &expected);
                    assert!(!statuses().any(is_busy));
                }
                SagaStatus::Cancelled { .. } => {
                    assert!(!statuses().any(|s| matches!(
                        s,
                        StepStatus::Pending
                            | StepStatus::RetryWaiting { .. }
                            | StepStatus::CompensationRetryWaiting { .. }
                    )));
                }
            }
            assert_eq!(saga.finished_at.is_some(), saga.status.is_terminal());

            // Timers: none left once terminal; while live, every armed timer
            // names the current state and all busy work has its timer.
            if saga.status.is_terminal() {
                assert!(self.timers.is_empty(), "timers left: {:?}", self.timers);
                return;
            }
            for timer in self.timers.keys() {
                let live = match *timer {
                    TimerKind::Retry {
                        step,
                        kind,
                        attempt,
                    } => waiting_attempt(&saga.steps[step].status) == Some((kind, attempt)),
                    TimerKind::StepTimeout {
                        step,
                        kind,
                        attempt,
                    } => in_flight_attempt(&saga.steps[step].status) == Some((kind, attempt)),
                    TimerKind::SagaTimeout => self.def.timeout.is_some(),
                };
                assert!(live, "{timer:?} is armed but stale");
            }
            for (step, state) in saga.steps.iter().enumerate() {
                if let Some((kind, attempt)) = in_flight_attempt(&state.status) {
                    let timer = TimerKind::StepTimeout {
                        step,
                        kind,
                        attempt,
                    };
                    assert!(self.timers.contains_key(&timer), "{timer:?} not armed");
                }
                if let Some((kind, attempt)) = waiting_attempt(&state.status) {
                    let timer = TimerKind::Retry {
                        step,
                        kind,
                        attempt,
                    };
                    assert!(self.timers.contains_key(&timer), "{timer:?} not armed");
                }
            }
        }

        /// Lets every outstanding task succeed and every retry timer fire
        /// until the saga is terminal.
        fn drain(&mut self) {
            if self.saga.status == SagaStatus::Pending {
                assert!(self.step(Event::Start));
            }
            for _ in 0..1_000 {
                if self.saga.status.is_terminal() {
                    return;
                }
                if let Some(&(step, kind, attempt)) = self.tasks.iter().next() {
                    self.tasks.remove(&(step, kind, attempt));
                    self.step(Event::TaskResult {
                        step,
                        kind,
                        attempt,
                        outcome: Outcome::Ok { output: json!(0) },
                    });
                } else if let Some((timer, due)) = self
                    .timers
                    .iter()
                    .find(|(t, _)| **t != TimerKind::SagaTimeout)
                    .map(|(t, d)| (t.clone(), *d))
                {
                    self.now = self.now.max(due);
                    assert!(self.step(Event::TimerFired(timer)));
                } else {
                    panic!(
                        "stuck: {:#?} with nothing in flight and no timer",
                        self.saga
                    );
                }
            }
            panic!("did not finish: {:#?}", self.saga);
        }

        /// What must hold once everything was delivered.
        fn check_final(&self) {
            let saga = &self.saga;
            assert!(saga.status.is_terminal(), "not terminal: {saga:#?}");
            let all_succeeded = saga.steps.iter().all(|s| s.status == StepStatus::Succeeded);
            if !matches!(saga.status, SagaStatus::Cancelled { .. }) {
                assert_eq!(saga.status == SagaStatus::Completed, all_succeeded);
            }
            if matches!(
                saga.status,
                SagaStatus::Compensated { .. } | SagaStatus::Failed { .. }
            ) {
                for (i, (def, state)) in self.def.steps.iter().zip(&saga.steps).enumerate() {
                    if action_succeeded(state) {
                        let expected = if def.compensation.is_some() {
                            StepStatus::Compensated
                        } else {
                            StepStatus::NotCompensable
                        };
                        assert_eq!(state.status, expected, "step {i}");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn random_interleavings_keep_the_invariants(
            def in definitions(),
            start_first in prop::bool::weighted(0.9),
            script in prop::collection::vec(actions(), 0..60),
        ) {
            let mut sim = Sim::new(def);
            if start_first {
                sim.perform(Action::Start);
            }
            for action in script {
                sim.perform(action);
            }
            sim.drain();
            sim.check_final();
        }

        /// A finished saga that ended badly, retried and then let run
        /// without failures, ends well: a forward retry completes, a
        /// resumed rollback compensates everything.
        #[test]
        fn a_retried_saga_ends_well_once_the_cause_is_fixed(
            def in definitions(),
            script in prop::collection::vec(actions(), 0..60),
            compensation_only in any::<bool>(),
            rounds in 1usize..3,
        ) {
            let mut sim = Sim::new(def);
            sim.perform(Action::Start);
            for action in script {
                sim.perform(action);
            }
            sim.drain();
            for _ in 0..rounds {
                let before = sim.saga.status.clone();
                let expected = match before {
                    SagaStatus::PartiallyCompensated { .. } => "compensated",
                    SagaStatus::Failed { .. } | SagaStatus::Compensated { .. } if !compensation_only => "completed",
                    _ => break,
                };
                let applied = sim.step(Event::Retry { compensation_only });
                prop_assert!(applied, "the retry of a {} saga was refused", sim.saga.status.name());
                sim.drain();
                sim.check_final();
                prop_assert_eq!(sim.saga.status.name(), expected);
            }
        }

        #[test]
        fn without_failures_every_saga_completes(def in definitions()) {
            let mut sim = Sim::new(def);
            sim.drain();
            prop_assert_eq!(&sim.saga.status, &SagaStatus::Completed);
            prop_assert!(sim.saga.steps.iter().all(|s| s.attempts.len() == 1));
        }
    }
}
