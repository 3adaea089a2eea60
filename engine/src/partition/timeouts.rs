//! Step timeouts kept in memory.
//!
//! Every dispatched attempt arms a timeout and nearly every one is disarmed
//! by its result a moment later. Stored, each would be two rows written and
//! two removed per step. They need not be stored: an attempt in flight is
//! in the saga's record (its step `Running` or `Compensating` it, its start
//! time in the attempt), so its timeout is `started_at` plus the step's
//! timeout, which the partition works out again for every saga it resumes
//! ([`in_flight`]) when it starts or takes over.
//!
//! Two kinds of step timeouts stay durable: those of tasks a breaker or
//! in-flight limit held, armed when the task is released (from then, not
//! from the attempt's start), and those a store written before this held.
//! The rebuild leaves both to the store.

use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::machine::in_flight_attempt;
use jetsaga_core::saga::state::{Millis, Saga, TimerKind};
use jetsaga_store::TimerRow;
use std::collections::{BTreeSet, HashMap};

/// The step timeouts armed in memory, earliest first.
#[derive(Debug, Default)]
pub(super) struct StepTimeouts {
    /// (due, saga id, timer), in due order.
    by_due: BTreeSet<(Millis, String, TimerKind)>,
    /// The due time of each armed (saga id, timer).
    due_of: HashMap<(String, TimerKind), Millis>,
}

impl StepTimeouts {
    /// Arms `timer` of saga `saga_id` at `due` (moving it if armed).
    pub(super) fn arm(&mut self, saga_id: &str, timer: TimerKind, due: Millis) {
        let key = (saga_id.to_owned(), timer);
        if let Some(old) = self.due_of.insert(key.clone(), due) {
            self.by_due.remove(&(old, key.0.clone(), key.1.clone()));
        }
        self.by_due.insert((due, key.0, key.1));
    }

    /// Disarms `timer` of saga `saga_id`; whether it was armed here.
    pub(super) fn disarm(&mut self, saga_id: &str, timer: &TimerKind) -> bool {
        let key = (saga_id.to_owned(), timer.clone());
        match self.due_of.remove(&key) {
            Some(due) => {
                self.by_due.remove(&(due, key.0, key.1));
                true
            }
            None => false,
        }
    }

    /// When the earliest one is due.
    pub(super) fn next_due(&self) -> Option<Millis> {
        self.by_due.first().map(|(due, _, _)| *due)
    }

    /// Takes out up to `limit` timeouts due at or before `now`, earliest first.
    pub(super) fn take_due(&mut self, now: Millis, limit: usize) -> Vec<TimerRow> {
        let mut out = Vec::new();
        while out.len() < limit {
            match self.by_due.first() {
                Some((due, _, _)) if *due <= now => {}
                _ => break,
            }
            let Some((due, saga_id, timer)) = self.by_due.pop_first() else {
                break;
            };
            self.due_of.remove(&(saga_id.clone(), timer.clone()));
            out.push(TimerRow {
                saga_id,
                timer,
                due,
            });
        }
        out
    }

    /// How many are armed.
    pub(super) fn len(&self) -> usize {
        self.due_of.len()
    }
}

/// The step timeout of each attempt in flight of `saga` (run by `def`), due
/// at the attempt's start plus its step's timeout: what a resuming
/// partition arms, unless the task is held or the store holds the timeout.
pub(super) fn in_flight(saga: &Saga, def: &SagaDefinition) -> Vec<(TimerKind, Millis)> {
    let mut out = Vec::new();
    for (step, state) in saga.steps.iter().enumerate() {
        let Some((kind, attempt)) = in_flight_attempt(&state.status) else {
            continue;
        };
        let started = state
            .attempts
            .iter()
            .rev()
            .find(|a| a.kind == kind && a.number == attempt && a.outcome.is_none());
        let (Some(started), Some(sd)) = (started, def.steps.get(step)) else {
            continue;
        };
        let timeout = Millis::try_from(sd.timeout.as_millis()).unwrap_or(Millis::MAX);
        let timer = TimerKind::StepTimeout {
            step,
            kind,
            attempt,
        };
        out.push((timer, started.started_at.saturating_add(timeout)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsaga_protocol::TaskKind;

    fn timeout(step: usize, attempt: u32) -> TimerKind {
        TimerKind::StepTimeout {
            step,
            kind: TaskKind::Action,
            attempt,
        }
    }

    #[test]
    fn timeouts_fire_in_due_order_once_and_disarm_by_key() {
        let mut t = StepTimeouts::default();
        t.arm("b", timeout(0, 1), 30);
        t.arm("a", timeout(1, 1), 10);
        t.arm("a", timeout(2, 1), 20);
        t.arm("a", timeout(2, 1), 25); // moved
        assert_eq!(t.len(), 3);
        assert_eq!(t.next_due(), Some(10));
        assert!(t.disarm("a", &timeout(1, 1)));
        assert!(!t.disarm("a", &timeout(1, 1)), "disarmed already");
        assert!(!t.disarm("a", &timeout(1, 2)), "another attempt");
        assert_eq!(t.take_due(24, 10), vec![]);
        let fired = t.take_due(100, 1);
        assert_eq!(
            fired,
            vec![TimerRow {
                saga_id: "a".into(),
                timer: timeout(2, 1),
                due: 25
            }]
        );
        assert_eq!(t.take_due(100, 10).len(), 1);
        assert_eq!((t.len(), t.next_due()), (0, None));
    }

    /// An attempt in flight times out at its start plus its step's timeout.
    #[test]
    fn attempts_in_flight_time_out_from_their_start() {
        use jetsaga_core::saga::definition::{RetryPolicy, StepDefinition};
        use jetsaga_core::saga::state::{Attempt, SagaStatus, StepState, StepStatus};
        let step = |id: &str| StepDefinition {
            id: id.to_owned(),
            service: "svc".to_owned(),
            operation: "op".to_owned(),
            compensation: None,
            timeout: std::time::Duration::from_secs(5),
            retry: RetryPolicy::default(),
            depends_on: vec![],
        };
        let def = SagaDefinition {
            name: "two".to_owned(),
            version: 1,
            timeout: None,
            steps: vec![step("a"), step("b"), step("c")],
            triggers: Vec::new(),
            policy: Default::default(),
            max_running: None,
            step_events: false,
        };
        let running = |attempt: u32, started_at: Millis| StepState {
            status: StepStatus::Running { attempt },
            attempts: vec![Attempt {
                kind: TaskKind::Action,
                number: attempt,
                generation: 0,
                started_at,
                finished_at: None,
                outcome: None,
            }],
            ..Default::default()
        };
        let saga = Saga {
            id: "s".to_owned(),
            name: "two".to_owned(),
            definition_version: 1,
            input: serde_json::Value::Null,
            idempotency_key: None,
            generation: 0,
            status: SagaStatus::Running,
            steps: vec![running(1, 1_000), StepState::default(), running(2, 3_000)],
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            trace_parent: None,
            event_seq: 0,
        };
        assert_eq!(
            in_flight(&saga, &def),
            vec![(timeout(0, 1), 6_000), (timeout(2, 2), 8_000)]
        );
    }
}
