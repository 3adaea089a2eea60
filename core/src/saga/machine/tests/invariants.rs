//! The oracle of the property tests: what the machine must accept, and the
//! invariants every effect, every state and every end state must keep.

use super::sim::Sim;
use super::*;

/// Whether the machine must accept `event`, judged from the state alone.
pub(super) fn must_accept(saga: &Saga, def: &SagaDefinition, event: &Event) -> bool {
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

pub(super) fn dependents(def: &SagaDefinition, step: usize) -> impl Iterator<Item = usize> + '_ {
    (0..def.steps.len()).filter(move |&j| def.steps[j].depends_on.contains(&step))
}

impl Sim {
    /// Invariants of one effect, judged against the state after the transition.
    pub(super) fn check_effect(&mut self, effect: &Effect) {
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
    pub(super) fn check_state(&self) {
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
                        // Abandoned in flight, or timed out and then waiting
                        // for the retry floor.
                        assert!(
                            matches!(
                                last.outcome,
                                Some(AttemptOutcome::Abandoned | AttemptOutcome::TimedOut)
                            ),
                            "step {i}: {last:?}"
                        );
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
                let expected = matches!(
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
                        dependents(&self.def, i).any(|j| !is_rolled_back(&saga.steps[j].status)),
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
                // An action waits for a retry during a rollback only after
                // a timeout (its effect may be in place), for the floor.
                for state in &saga.steps {
                    assert_ne!(state.status, StepStatus::Pending);
                    if matches!(state.status, StepStatus::RetryWaiting { .. }) {
                        let last = state
                            .attempts
                            .iter()
                            .rev()
                            .find(|a| a.kind == TaskKind::Action);
                        assert_eq!(
                            last.and_then(|a| a.outcome.clone()),
                            Some(AttemptOutcome::TimedOut),
                            "{:?} while compensating",
                            state.status
                        );
                    }
                }
                assert!(statuses().any(is_busy), "compensating with nothing to do");
            }
            SagaStatus::Completed => {
                assert!(statuses().all(|s| *s == StepStatus::Succeeded));
            }
            SagaStatus::Compensated { .. } => {
                assert!(statuses().all(is_rolled_back));
                assert!(
                    statuses()
                        .any(|s| matches!(s, StepStatus::Compensated | StepStatus::NotCompensable))
                );
            }
            SagaStatus::Failed { .. } => assert!(
                statuses().all(|s| matches!(s, StepStatus::Failed { .. } | StepStatus::Skipped))
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

    /// What must hold once everything was delivered.
    pub(super) fn check_final(&self) {
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
