//! What the unit tests share: a definition builder, a harness that applies
//! events at a controlled time, and the effects they expect.

use super::*;

pub(super) const T0: Millis = 1_000_000;
pub(super) const STEP_TIMEOUT_MS: Millis = 30_000;

/// Backoff from 1s doubling up to 60s, no jitter.
pub(super) fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        backoff_factor: 2.0,
        jitter: 0.0,
    }
}

/// A step `id` of service `svc` after `depends_on`, with 3 attempts, and
/// compensable or not.
pub(super) fn step(id: &str, depends_on: &[usize], compensable: bool) -> StepDefinition {
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

/// A test saga's definition, built from what a test changes: steps (a
/// chain or given ones, 3 attempts each), the saga timeout (none by
/// default), a step's attempts; then [`Def::start`] or [`Def::pending`].
pub(super) struct Def(SagaDefinition);

impl Def {
    /// `s0 -> s1 -> ... -> s{n-1}`, all compensable.
    pub(super) fn chain(n: usize) -> Self {
        Self::steps(
            (0..n)
                .map(|i| {
                    let deps: Vec<usize> = i.checked_sub(1).into_iter().collect();
                    step(&format!("s{i}"), &deps, true)
                })
                .collect(),
        )
    }

    /// These steps (see [`step`]).
    pub(super) fn steps(steps: Vec<StepDefinition>) -> Self {
        Def(SagaDefinition {
            name: "test".to_owned(),
            version: 1,
            timeout: None,
            steps,
            triggers: Vec::new(),
            policy: Default::default(),
            max_running: None,
            step_events: false,
        })
    }

    /// A saga timeout of `secs` seconds.
    pub(super) fn timeout_secs(mut self, secs: u64) -> Self {
        self.0.timeout = Some(Duration::from_secs(secs));
        self
    }

    /// At most `max_attempts` attempts for step `step` (see [`policy`]).
    pub(super) fn attempts(mut self, step: usize, max_attempts: u32) -> Self {
        self.0.steps[step].retry = policy(max_attempts);
        self
    }

    /// Every attempt of step `step` times out after `timeout`.
    pub(super) fn step_timeout(mut self, step: usize, timeout: Duration) -> Self {
        self.0.steps[step].timeout = timeout;
        self
    }

    /// Step `step` retries under `retry`.
    pub(super) fn retry(mut self, step: usize, retry: RetryPolicy) -> Self {
        self.0.steps[step].retry = retry;
        self
    }

    /// The definition itself.
    pub(super) fn build(self) -> SagaDefinition {
        self.0
    }

    /// A harness with the saga created at [`T0`], not started.
    pub(super) fn pending(self) -> Harness {
        Harness::new(self.0)
    }

    /// A harness with the saga started at [`T0`].
    pub(super) fn start(self) -> Harness {
        let mut h = self.pending();
        h.apply(Event::Start).expect("start");
        h
    }
}

pub(super) const A: TaskKind = TaskKind::Action;
pub(super) const C: TaskKind = TaskKind::Compensation;

pub(super) fn ok() -> Outcome {
    Outcome::Ok { output: json!({}) }
}
pub(super) fn retryable(error: &str, retry_after_ms: Option<u64>) -> Outcome {
    Outcome::Retryable {
        error: error.to_owned(),
        retry_after_ms,
    }
}
pub(super) fn fatal(error: &str) -> Outcome {
    Outcome::Fatal {
        error: error.to_owned(),
    }
}

/// A saga, its definition and a clock.
pub(super) struct Harness {
    pub(super) saga: Saga,
    pub(super) def: SagaDefinition,
    pub(super) now: Millis,
}

impl Harness {
    fn new(def: SagaDefinition) -> Self {
        let saga = new_saga("saga-1".into(), &def, json!({"x": 1}), None, T0);
        Self { saga, def, now: T0 }
    }

    /// Applies an event; asserts a rejection changed nothing.
    pub(super) fn apply(&mut self, event: Event) -> Result<Vec<Effect>, Rejection> {
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

    pub(super) fn result(
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

    pub(super) fn fire(&mut self, timer: TimerKind) -> Result<Vec<Effect>, Rejection> {
        self.apply(Event::TimerFired(timer))
    }

    /// Fires the step timeout of `attempt` of `step`'s `kind`.
    pub(super) fn time_out(
        &mut self,
        step: usize,
        kind: TaskKind,
        attempt: u32,
    ) -> Result<Vec<Effect>, Rejection> {
        self.fire(TimerKind::StepTimeout {
            step,
            kind,
            attempt,
        })
    }

    pub(super) fn cancel(&mut self, compensate: bool) -> Result<Vec<Effect>, Rejection> {
        self.apply(Event::Cancel {
            compensate,
            reason: "operator said so".to_owned(),
        })
    }

    pub(super) fn status(&self, step: usize) -> &StepStatus {
        &self.saga.steps[step].status
    }
}

pub(super) fn dispatches(effects: &[Effect]) -> Vec<(usize, TaskKind, u32)> {
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

pub(super) fn dispatch_effects(
    step: usize,
    kind: TaskKind,
    attempt: u32,
    now: Millis,
) -> [Effect; 2] {
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

pub(super) fn cancel_step_timer(step: usize, kind: TaskKind, attempt: u32) -> Effect {
    Effect::CancelTimer {
        timer: TimerKind::StepTimeout {
            step,
            kind,
            attempt,
        },
    }
}

pub(super) fn lifecycle(event: LifecycleEvent) -> Effect {
    Effect::Lifecycle(event)
}

pub(super) fn finished(state: &str) -> Effect {
    lifecycle(LifecycleEvent::SagaFinished {
        state: state.to_owned(),
    })
}
