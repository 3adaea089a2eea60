//! The simulated environment of the property tests: it performs random
//! actions, applies the events they make, and keeps what the effects set up.

use super::invariants::must_accept;
use super::properties::{Action, kind, outcome};
use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// The simulated environment: the saga plus what its effects set up.
pub(super) struct Sim {
    pub(super) def: SagaDefinition,
    pub(super) saga: Saga,
    pub(super) now: Millis,
    pub(super) seq: u64,
    /// Dispatched tasks no result was delivered for yet.
    pub(super) tasks: BTreeSet<(usize, TaskKind, u32)>,
    /// Every task ever dispatched.
    pub(super) dispatched: BTreeSet<(usize, TaskKind, u32)>,
    /// Results that were applied.
    pub(super) delivered: Vec<Event>,
    /// Armed timers.
    pub(super) timers: BTreeMap<TimerKind, Millis>,
    /// Compensation `Ok` results applied, per step (since it last ran
    /// forward again).
    pub(super) compensated: Vec<u32>,
    /// Whether the step's effect is in place, as the applied results
    /// tell: set by an action's `Ok`, cleared by a compensation's `Ok`.
    pub(super) in_place: Vec<bool>,
    /// Idempotency keys (step, kind, generation) whose `Ok` or fatal
    /// outcome the machine applied: the SDK would replay it, so they
    /// must never be dispatched again.
    pub(super) closed_keys: BTreeSet<(usize, TaskKind, u32)>,
}

impl Sim {
    pub(super) fn new(def: SagaDefinition) -> Self {
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

    pub(super) fn perform(&mut self, action: Action) {
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
    pub(super) fn step(&mut self, event: Event) -> bool {
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

    /// Lets every outstanding task succeed and every retry timer fire
    /// until the saga is terminal.
    pub(super) fn drain(&mut self) {
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
}
