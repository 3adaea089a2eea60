//! What one transition changed, computed once.
//!
//! The engine keeps indexes of its sagas beside the store: metrics (active
//! sagas, attempts ended), the concurrency limits' running counts and the
//! services' in-flight counts. Each follows from what a transition changed,
//! so the partition takes a [`Before`] of the saga, applies the event, and
//! hands the one [`Transition`] it yields to each of them.
//!
//! ```
//! use jetsaga_core::saga::state::{SagaState, SagaStatus};
//! use jetsaga_core::saga::transition::Before;
//! # let mut saga = jetsaga_core::saga::transition::doc_saga();
//! let before = Before::of(&saga);
//! saga.status = SagaStatus::Completed;
//! let t = before.diff(&saga);
//! assert_eq!((t.from, t.to), (Some(SagaState::Running), SagaState::Completed));
//! assert!(t.finished());
//! ```

use crate::saga::state::{Attempt, AttemptOutcome, Saga, SagaState, StepStatus};
use jetsaga_protocol::TaskKind;
use serde::{Deserialize, Serialize};

fn kind_index(kind: TaskKind) -> usize {
    match kind {
        TaskKind::Action => 0,
        TaskKind::Compensation => 1,
    }
}

/// One attempt of one step of one saga.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptKey {
    /// Saga id.
    pub saga_id: String,
    /// Step index.
    pub step: usize,
    /// Action or compensation.
    pub kind: TaskKind,
    /// Attempt number.
    pub attempt: u32,
}

/// A saga as it was before a transition: what the observers compare the
/// saga after it with.
#[derive(Debug, Clone, PartialEq)]
pub struct Before {
    /// Its state; `None` for a saga the transition creates.
    state: Option<SagaState>,
    /// The latest action and compensation attempt numbers of each step (an
    /// attempt history may drop attempts from its middle, so attempts are
    /// known by number, not by position).
    latest: Vec<[u32; 2]>,
    /// (step, kind, number) of the attempts without an outcome.
    open: Vec<(usize, TaskKind, u32)>,
    /// The attempts the saga waited on ([`attempts_in_flight`]).
    in_flight: Vec<AttemptKey>,
}

impl Before {
    /// Before a transition that creates the saga.
    pub fn absent() -> Before {
        Before {
            state: None,
            latest: Vec::new(),
            open: Vec::new(),
            in_flight: Vec::new(),
        }
    }

    /// Takes note of `saga` before a transition.
    pub fn of(saga: &Saga) -> Before {
        let mut open = Vec::new();
        let mut latest = vec![[0; 2]; saga.steps.len()];
        for (i, step) in saga.steps.iter().enumerate() {
            for attempt in &step.attempts {
                if attempt.outcome.is_none() {
                    open.push((i, attempt.kind, attempt.number));
                }
                let last = &mut latest[i][kind_index(attempt.kind)];
                *last = (*last).max(attempt.number);
            }
        }
        Before {
            state: Some(saga.status.state()),
            latest,
            open,
            in_flight: attempts_in_flight(saga),
        }
    }

    /// Whether `attempt` of step `step` had no outcome (or did not exist
    /// yet: attempt numbers only grow).
    fn was_open(&self, step: usize, attempt: &Attempt) -> bool {
        let latest = self
            .latest
            .get(step)
            .map_or(0, |l| l[kind_index(attempt.kind)]);
        attempt.number > latest || self.open.contains(&(step, attempt.kind, attempt.number))
    }

    /// What changed between this and `after`, the same saga after the
    /// transition.
    pub fn diff(self, after: &Saga) -> Transition<'_> {
        let mut ended = Vec::new();
        for (i, step) in after.steps.iter().enumerate() {
            for attempt in &step.attempts {
                if attempt.outcome.is_some() && self.was_open(i, attempt) {
                    ended.push((i, attempt));
                }
            }
        }
        let to = after.status.state();
        let now_in_flight = if to.is_terminal() {
            Vec::new()
        } else {
            attempts_in_flight(after)
        };
        let left_flight = self
            .in_flight
            .into_iter()
            .filter(|k| !now_in_flight.contains(k))
            .collect();
        Transition {
            saga: after,
            from: self.state,
            to,
            ended,
            left_flight,
        }
    }
}

/// What one transition changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition<'a> {
    /// The saga after the transition.
    pub saga: &'a Saga,
    /// Its state before; `None` when the transition created it.
    pub from: Option<SagaState>,
    /// Its state after.
    pub to: SagaState,
    /// The attempts this transition gave an outcome, by step index.
    pub ended: Vec<(usize, &'a Attempt)>,
    /// The attempts the saga waited on before and no longer does (ended,
    /// or given up because the saga finished).
    pub left_flight: Vec<AttemptKey>,
}

impl Transition<'_> {
    /// Whether the saga reached a terminal state in this transition.
    pub fn finished(&self) -> bool {
        self.to.is_terminal() && self.from.is_none_or(|f| !f.is_terminal())
    }

    /// The outcome the saga records for attempt `key`, if it has one.
    pub fn outcome(&self, key: &AttemptKey) -> Option<&AttemptOutcome> {
        attempt_outcome(self.saga, key)
    }
}

/// The attempts `saga` has dispatched and not ended: each step running or
/// compensating names its current attempt, which has no outcome yet.
pub fn attempts_in_flight(saga: &Saga) -> Vec<AttemptKey> {
    let mut out = Vec::new();
    for (step, state) in saga.steps.iter().enumerate() {
        let (kind, attempt) = match state.status {
            StepStatus::Running { attempt } => (TaskKind::Action, attempt),
            StepStatus::Compensating { attempt } => (TaskKind::Compensation, attempt),
            _ => continue,
        };
        let key = AttemptKey {
            saga_id: saga.id.clone(),
            step,
            kind,
            attempt,
        };
        let recorded = find_attempt(saga, &key);
        if recorded.is_some_and(|a| a.outcome.is_none()) {
            out.push(key);
        }
    }
    out
}

/// Whether `saga` still waits on exactly attempt `key`: the saga is not
/// terminal, the step is running (or compensating) that attempt, and the
/// attempt has no outcome.
pub fn waits_on(saga: &Saga, key: &AttemptKey) -> bool {
    !saga.status.is_terminal() && attempts_in_flight(saga).contains(key)
}

/// The latest record of attempt `key` in `saga`.
fn find_attempt<'a>(saga: &'a Saga, key: &AttemptKey) -> Option<&'a Attempt> {
    saga.steps
        .get(key.step)?
        .attempts
        .iter()
        .rev()
        .find(|a| a.kind == key.kind && a.number == key.attempt)
}

/// The outcome `saga` records for attempt `key`, if it has one.
fn attempt_outcome<'a>(saga: &'a Saga, key: &AttemptKey) -> Option<&'a AttemptOutcome> {
    find_attempt(saga, key)?.outcome.as_ref()
}

/// A running saga whose one step waits on its first action attempt, for
/// examples and tests.
#[doc(hidden)]
pub fn doc_saga() -> Saga {
    use crate::saga::state::{SagaStatus, StepState};
    Saga {
        id: "s-1".into(),
        name: "order".into(),
        definition_version: 1,
        input: serde_json::Value::Null,
        idempotency_key: None,
        generation: 0,
        status: SagaStatus::Running,
        steps: vec![StepState {
            status: StepStatus::Running { attempt: 1 },
            attempts: vec![Attempt {
                kind: TaskKind::Action,
                number: 1,
                generation: 0,
                started_at: 0,
                finished_at: None,
                outcome: None,
            }],
            ..StepState::default()
        }],
        created_at: 0,
        updated_at: 0,
        finished_at: None,
        trace_parent: None,
        event_seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::state::SagaStatus;

    #[test]
    fn a_new_saga_comes_from_nothing() {
        let saga = doc_saga();
        let t = Before::absent().diff(&saga);
        assert_eq!((t.from, t.to), (None, SagaState::Running));
        assert!(t.ended.is_empty() && t.left_flight.is_empty());
        assert!(!t.finished());
    }

    #[test]
    fn an_attempt_that_ends_leaves_flight_once() {
        let mut saga = doc_saga();
        let before = Before::of(&saga);
        let key = before.in_flight[0].clone();
        saga.steps[0].attempts[0].outcome = Some(AttemptOutcome::Ok);
        saga.steps[0].status = StepStatus::Succeeded;
        let t = before.diff(&saga);
        assert_eq!(t.ended.len(), 1);
        assert_eq!(t.left_flight, vec![key.clone()]);
        assert_eq!(t.outcome(&key), Some(&AttemptOutcome::Ok));
        // The next transition sees it ended already.
        let t = Before::of(&saga).diff(&saga);
        assert!(t.ended.is_empty() && t.left_flight.is_empty());
    }

    #[test]
    fn only_attempts_that_ended_in_the_transition_are_new() {
        let mut saga = doc_saga();
        let before = Before::of(&saga);
        let first = saga.steps[0].attempts[0].clone();
        let second = Attempt {
            number: 2,
            ..first.clone()
        };
        let compensation = Attempt {
            kind: TaskKind::Compensation,
            ..first.clone()
        };
        assert!(before.was_open(0, &first), "in flight");
        assert!(before.was_open(0, &second), "did not exist");
        assert!(before.was_open(0, &compensation), "did not exist");
        assert!(before.was_open(1, &first), "no such step yet");
        saga.steps[0].attempts[0].outcome = Some(AttemptOutcome::Ok);
        assert!(!Before::of(&saga).was_open(0, &first), "ended");
    }

    /// A transition that ends the in-flight attempt and dispatches the next
    /// one (a timeout) while the history drops an attempt from its middle:
    /// the one that ended is seen, once.
    #[test]
    fn an_attempt_ending_as_the_history_drops_another_is_seen_once() {
        use crate::saga::state::{ATTEMPTS_KEPT_FIRST, ATTEMPTS_KEPT_LATEST};
        let mut saga = doc_saga();
        let full = (ATTEMPTS_KEPT_FIRST + ATTEMPTS_KEPT_LATEST) as u32;
        let step = &mut saga.steps[0];
        step.attempts[0].outcome = Some(AttemptOutcome::TimedOut);
        for number in 2..=full {
            let template = step.attempts[0].clone();
            step.push_attempt(Attempt {
                number,
                outcome: (number < full).then_some(AttemptOutcome::TimedOut),
                ..template
            });
        }
        assert_eq!((step.attempts.len(), step.attempts_dropped), (25, 0));
        let before = Before::of(&saga);
        let step = &mut saga.steps[0];
        step.attempts.last_mut().unwrap().outcome = Some(AttemptOutcome::TimedOut);
        let template = step.attempts[0].clone();
        step.push_attempt(Attempt {
            number: full + 1,
            outcome: None,
            ..template
        });
        step.status = StepStatus::Running { attempt: full + 1 };
        assert_eq!(step.attempts_dropped, 1);
        let t = before.diff(&saga);
        let ended: Vec<u32> = t.ended.iter().map(|(_, a)| a.number).collect();
        assert_eq!(ended, vec![full]);
    }

    #[test]
    fn a_finished_saga_waits_on_nothing() {
        let mut saga = doc_saga();
        let before = Before::of(&saga);
        saga.status = SagaStatus::Cancelled {
            reason: "operator".into(),
        };
        let t = before.diff(&saga);
        assert!(t.finished());
        assert!(t.ended.is_empty(), "no outcome was recorded");
        assert_eq!(t.left_flight.len(), 1, "but nothing waits on the attempt");
        assert!(!waits_on(&saga, &t.left_flight[0]));
    }
}
