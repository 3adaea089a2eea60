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
//!   policy's backoff (or the worker's `retry_after_ms`, whichever is later;
//!   a `retry_after_ms` past the policy's `max_delay` counts as `max_delay`),
//!   and never sooner than [`MIN_RETRY_DELAY`] (100 ms), so that a policy of
//!   zero delays cannot spin.
//!   A timed-out attempt's outcome is unknown, so the next attempt is
//!   dispatched at once under the same idempotency key (workers
//!   deduplicate), but never sooner than [`MIN_RETRY_DELAY`] after the
//!   timed-out attempt started: a shorter step timeout makes the step wait
//!   for the rest (`retry_waiting`). A rollback does not fail a step that
//!   waits after a timeout (its effect may be in place) but drains it like
//!   an in-flight one; a cancel without compensation leaves it naming the
//!   timed-out attempt.
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
//!     step_events: false,
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

use super::definition::{MIN_RETRY_DELAY, SagaDefinition, StepDefinition};
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
    apply_noting_steps(saga, def, event, inputs).map(|applied| applied.effects)
}

/// What [`apply_noting_steps`] did to a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The effects, as [`apply`] returns them.
    pub effects: Vec<Effect>,
    /// Indexes of the steps the transition wrote, ascending, each once: a
    /// step not listed is as it was. (A step listed may also be unchanged:
    /// written with the value it had.) The rest of the saga, its header,
    /// changes with every transition.
    pub steps: Vec<usize>,
}

/// [`apply`], also saying which steps the transition wrote, so that the
/// store writes those and the saga's header, not the whole saga.
///
/// Debug builds check the list: a step that changed but is not listed
/// panics.
pub fn apply_noting_steps(
    saga: &mut Saga,
    def: &SagaDefinition,
    event: Event,
    inputs: Inputs,
) -> Result<Applied, Rejection> {
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
    #[cfg(debug_assertions)]
    let untouched = saga.clone();
    #[cfg(debug_assertions)]
    let before = &untouched.steps;
    let mut t = Transition {
        saga: &mut *saga,
        def,
        inputs,
        effects: Vec::new(),
        touched: Vec::new(),
    };
    // Each handler checks everything that can reject the event before it
    // changes anything, so a rejection leaves the saga untouched (debug
    // builds check).
    let handled = match event {
        Event::Start => t.start(),
        Event::TaskResult {
            step,
            kind,
            attempt,
            outcome,
        } => t.task_result(step, kind, attempt, outcome),
        Event::TimerFired(timer) => t.timer_fired(timer),
        Event::Cancel { compensate, reason } => t.cancel(compensate, reason),
        Event::Retry { compensation_only } => t.retry(compensation_only),
    };
    if let Err(rejection) = handled {
        #[cfg(debug_assertions)]
        assert!(
            *t.saga == untouched,
            "a rejected event ({rejection}) changed saga {}",
            untouched.id
        );
        return Err(rejection);
    }
    t.advance();
    t.saga.updated_at = inputs.now;
    let Transition {
        effects,
        touched: mut steps,
        ..
    } = t;
    steps.sort_unstable();
    steps.dedup();
    #[cfg(debug_assertions)]
    for (i, (was, is)) in before.iter().zip(&saga.steps).enumerate() {
        assert!(
            was == is || steps.binary_search(&i).is_ok(),
            "step {i} of saga {} changed without being noted",
            saga.id
        );
    }
    Ok(Applied { effects, steps })
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

/// One transition in progress: the saga being changed, the effects so far
/// and the steps it wrote.
struct Transition<'a> {
    saga: &'a mut Saga,
    def: &'a SagaDefinition,
    inputs: Inputs,
    effects: Vec<Effect>,
    /// Indexes of the steps [`Self::step_mut`] handed out (with repeats).
    touched: Vec<usize>,
}

impl Transition<'_> {
    /// Step `step`, to change: every write to a step goes through here, so
    /// that [`apply_noting_steps`] can say which steps a transition wrote.
    fn step_mut(&mut self, step: usize) -> &mut StepState {
        self.touched.push(step);
        &mut self.saga.steps[step]
    }

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
                let state = self.step_mut(step);
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
                self.step_mut(step).status = StepStatus::Compensated;
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
            // Re-dispatching is safe: the idempotency key is the same, so a
            // worker that did the work replays its recorded result. It waits
            // only for the retry floor, which a short step timeout must not
            // undercut.
            let error = format!("timed out after {timeout}");
            let started_at = self.saga.steps[step]
                .attempts
                .iter()
                .rev()
                .find(|a| a.kind == kind && a.number == attempt)
                .map_or(self.inputs.now, |a| a.started_at);
            let floor = Millis::try_from(MIN_RETRY_DELAY.as_millis()).unwrap_or(Millis::MAX);
            let due = started_at.saturating_add(floor);
            if due > self.inputs.now {
                self.wait_for_retry(step, kind, attempt + 1, due, error);
                return;
            }
            self.lifecycle(LifecycleEvent::StepRetrying {
                step,
                kind,
                next_attempt: attempt + 1,
                error,
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
                let kept = if state.attempts_dropped > 0 {
                    " of those kept"
                } else {
                    ""
                };
                let error =
                    format!("action outcome unknown after {timed_out} timed-out attempts{kept}");
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
        self.step_mut(step).status = StepStatus::Failed {
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
        self.step_mut(step).status = StepStatus::CompensationFailed {
            error: error.clone(),
        };
        self.lifecycle(LifecycleEvent::StepCompensationFailed { step, error });
    }

    /// Waits for the policy's backoff (or the worker's `retry_after_ms`, if
    /// later, but never past the policy's `max_delay`) before attempt
    /// `attempt + 1`, and never less than [`MIN_RETRY_DELAY`].
    fn schedule_retry(
        &mut self,
        step: usize,
        kind: TaskKind,
        attempt: u32,
        error: String,
        retry_after_ms: Option<u64>,
    ) {
        let next_attempt = attempt + 1;
        let policy = &self.step_def(step).retry;
        let backoff = policy.delay(next_attempt, self.inputs.random);
        let asked = Duration::from_millis(retry_after_ms.unwrap_or(0)).min(policy.max_delay);
        let wait = backoff.max(asked).max(MIN_RETRY_DELAY);
        let due = self.after(wait);
        self.wait_for_retry(step, kind, next_attempt, due, error);
    }

    /// The step waits until `due` to dispatch attempt `next_attempt`.
    fn wait_for_retry(
        &mut self,
        step: usize,
        kind: TaskKind,
        next_attempt: u32,
        due: Millis,
        error: String,
    ) {
        self.step_mut(step).status = match kind {
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
        let state = self.step_mut(step);
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
        let state = self.step_mut(step);
        state.status = match kind {
            TaskKind::Action => StepStatus::Running { attempt },
            TaskKind::Compensation => StepStatus::Compensating { attempt },
        };
        state.push_attempt(Attempt {
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
        let record = self
            .step_mut(step)
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
    /// for a retry after an error fail (their last attempt had no effect),
    /// in-flight steps and steps waiting for a retry after a timeout are
    /// drained. The rollback scheduler runs in [`Self::advance`].
    fn start_compensating(&mut self, reason: String) {
        self.saga.status = SagaStatus::Compensating {
            reason: reason.clone(),
        };
        self.lifecycle(LifecycleEvent::SagaCompensating { reason });
        for step in 0..self.saga.steps.len() {
            let state = &self.saga.steps[step];
            match state.status {
                StepStatus::Pending => self.step_mut(step).status = StepStatus::Skipped,
                StepStatus::RetryWaiting { attempt, .. }
                    if !last_timed_out(state, TaskKind::Action) =>
                {
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
    /// abandoned (their results will be ignored), waiting work is dropped
    /// (a step whose last attempt timed out keeps naming that attempt).
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
                StepStatus::Pending => self.step_mut(step).status = StepStatus::Skipped,
                StepStatus::RetryWaiting { attempt, .. }
                | StepStatus::CompensationRetryWaiting { attempt, .. }
                    if last_timed_out(&self.saga.steps[step], waiting_kind(&status)) =>
                {
                    // Its last attempt timed out, and the next one waits for
                    // the retry floor: like an abandoned attempt, the status
                    // names the attempt whose outcome is unknown.
                    let kind = waiting_kind(&status);
                    self.step_mut(step).status = match kind {
                        TaskKind::Action => StepStatus::Running {
                            attempt: attempt - 1,
                        },
                        TaskKind::Compensation => StepStatus::Compensating {
                            attempt: attempt - 1,
                        },
                    };
                    self.effects.push(Effect::CancelTimer {
                        timer: TimerKind::Retry {
                            step,
                            kind,
                            attempt,
                        },
                    });
                }
                StepStatus::RetryWaiting { attempt, .. } => {
                    self.step_mut(step).status = StepStatus::Skipped;
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
                    self.step_mut(step).status = StepStatus::Succeeded;
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
        for (step, keep) in keep.into_iter().enumerate() {
            let state = self.step_mut(step);
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
                    self.step_mut(step).status = StepStatus::NotCompensable;
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

/// Whether the step's last attempt of `kind` timed out (its outcome is
/// unknown). The latest attempt of a kind is always kept in the history.
fn last_timed_out(state: &StepState, kind: TaskKind) -> bool {
    state
        .attempts
        .iter()
        .rev()
        .find(|a| a.kind == kind)
        .is_some_and(|a| a.outcome == Some(AttemptOutcome::TimedOut))
}

/// The kind of work a waiting status waits to dispatch.
fn waiting_kind(status: &StepStatus) -> TaskKind {
    match status {
        StepStatus::CompensationRetryWaiting { .. } => TaskKind::Compensation,
        _ => TaskKind::Action,
    }
}

fn exhausted(attempts: u32, error: &str) -> String {
    format!("retries exhausted after {attempts} attempts: {error}")
}

#[cfg(test)]
mod tests;
