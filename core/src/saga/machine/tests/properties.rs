//! Property tests: random definitions driven by random interleavings of
//! results (fresh, duplicate, stale), timers (armed and stray) and cancels,
//! against a simulated environment ([`Sim`]) built from the emitted effects.

use super::sim::Sim;
use super::*;
use proptest::prelude::*;

/// 2–7 steps, each depending on a random subset of the earlier ones, with
/// a step timeout above the retry floor or below it.
fn definitions() -> impl Strategy<Value = SagaDefinition> {
    (
        prop::collection::vec((any::<u8>(), any::<bool>(), 1u32..=3, any::<bool>()), 2..=7),
        any::<bool>(),
    )
        .prop_map(|(specs, with_timeout)| SagaDefinition {
            name: "prop".into(),
            version: 1,
            timeout: with_timeout.then(|| Duration::from_secs(120)),
            steps: specs
                .iter()
                .enumerate()
                .map(
                    |(i, &(mask, compensable, max_attempts, short))| StepDefinition {
                        id: format!("s{i}"),
                        service: "svc".into(),
                        operation: "op".into(),
                        compensation: compensable.then(|| "undo".into()),
                        timeout: if short {
                            Duration::from_millis(10)
                        } else {
                            Duration::from_secs(10)
                        },
                        retry: RetryPolicy {
                            max_attempts,
                            initial_delay: Duration::from_secs(1),
                            max_delay: Duration::from_secs(30),
                            backoff_factor: 2.0,
                            jitter: 0.2,
                        },
                        depends_on: (0..i).filter(|j| mask & (1 << j) != 0).collect(),
                    },
                )
                .collect(),
            triggers: Vec::new(),
            policy: Default::default(),
            max_running: None,
            step_events: false,
        })
}

/// What the environment does next; indexes pick among what is pending.
#[derive(Debug, Clone)]
pub(super) enum Action {
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

pub(super) fn kind(compensation: bool) -> TaskKind {
    if compensation {
        TaskKind::Compensation
    } else {
        TaskKind::Action
    }
}

pub(super) fn outcome(code: u8) -> Outcome {
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
