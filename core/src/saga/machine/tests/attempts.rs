//! Attempts of a step: retries after growing delays, `retry_after`,
//! timeouts that redispatch, and running out of attempts.

use super::*;

#[test]
fn retries_wait_for_growing_delays_then_exhaust() {
    let mut h = Def::chain(1).attempts(0, 4).start();

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
    let mut h = Def::chain(1).start();
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
    let mut h = Def::chain(2).start();
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
fn a_timeout_shorter_than_the_retry_floor_waits_for_it_under_the_same_key() {
    // A 1 ms step timeout and no worker: without the floor, ~1000 attempts a
    // second.
    let mut h = Def::chain(1)
        .attempts(0, 3)
        .step_timeout(0, Duration::from_millis(1))
        .start();
    let started = h.now;
    h.now += 1;
    let effects = h.time_out(0, A, 1).unwrap();
    let retry = TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 2,
    };
    let due = started + 100;
    assert_eq!(
        effects,
        vec![
            Effect::ScheduleTimer {
                timer: retry.clone(),
                due,
            },
            lifecycle(LifecycleEvent::StepRetrying {
                step: 0,
                kind: A,
                next_attempt: 2,
                error: "timed out after 1ms".into(),
            }),
        ]
    );
    assert_eq!(*h.status(0), StepStatus::RetryWaiting { attempt: 2, due });
    assert_eq!(
        h.saga.steps[0].attempts[0].outcome,
        Some(AttemptOutcome::TimedOut)
    );

    h.now = due;
    let effects = h.fire(retry).unwrap();
    // The next attempt keeps the timed-out attempt's key (generation 0).
    assert_eq!(
        effects,
        vec![
            Effect::Dispatch {
                step: 0,
                kind: A,
                attempt: 2,
                generation: 0,
            },
            Effect::ScheduleTimer {
                timer: TimerKind::StepTimeout {
                    step: 0,
                    kind: A,
                    attempt: 2,
                },
                due: due + 1,
            },
        ]
    );
    assert_eq!(h.saga.steps[0].attempts[1].started_at, due);
}

#[test]
fn a_timeout_that_fires_past_the_retry_floor_redispatches_at_once() {
    // The timer fired late (the engine was busy): the attempt already
    // lasted the floor, so nothing more to wait for.
    let mut h = Def::chain(1)
        .step_timeout(0, Duration::from_millis(1))
        .start();
    h.now += 100;
    let effects = h.time_out(0, A, 1).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, A, 2)]);
    assert_eq!(*h.status(0), StepStatus::Running { attempt: 2 });
}

#[test]
fn a_rollback_drains_an_action_waiting_for_the_floor_after_a_timeout() {
    // s0 succeeded; s1 timed out at 1 ms and waits for the floor when the
    // saga is cancelled with compensation. Its effect may be in place: it
    // is not failed but re-dispatched, and its outcome decides.
    let mut h = Def::chain(2)
        .step_timeout(1, Duration::from_millis(1))
        .start();
    h.result(0, A, 1, ok()).unwrap();
    h.now += 1;
    h.time_out(1, A, 1).unwrap();
    let effects = h.cancel(true).unwrap();
    assert!(dispatches(&effects).is_empty());
    assert!(matches!(
        *h.status(1),
        StepStatus::RetryWaiting { attempt: 2, .. }
    ));
    assert_eq!(*h.status(0), StepStatus::Succeeded);

    h.now += 99;
    let effects = h
        .fire(TimerKind::Retry {
            step: 1,
            kind: A,
            attempt: 2,
        })
        .unwrap();
    assert_eq!(dispatches(&effects), vec![(1, A, 2)]);
    // It did its work: both steps are undone in reverse order.
    let effects = h.result(1, A, 2, ok()).unwrap();
    assert_eq!(dispatches(&effects), vec![(1, C, 1)]);
}

#[test]
fn a_cancel_leaves_a_step_waiting_for_the_floor_after_a_timeout_naming_that_attempt() {
    let mut h = Def::chain(1)
        .step_timeout(0, Duration::from_millis(1))
        .start();
    h.now += 1;
    h.time_out(0, A, 1).unwrap();
    let effects = h.cancel(false).unwrap();
    assert!(effects.contains(&Effect::CancelTimer {
        timer: TimerKind::Retry {
            step: 0,
            kind: A,
            attempt: 2,
        },
    }));
    // Not skipped: attempt 1 may have done its work.
    assert_eq!(*h.status(0), StepStatus::Running { attempt: 1 });
    assert_eq!(
        h.saga.steps[0].attempts.last().unwrap().outcome,
        Some(AttemptOutcome::TimedOut)
    );
}

#[test]
fn exhausted_timeouts_of_a_running_action_leave_its_outcome_unknown_and_roll_back() {
    // a -> b, c independent; b has 2 attempts, both time out.
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[0], true),
        step("c", &[], true),
    ])
    .attempts(1, 2)
    .start();
    h.result(0, A, 1, ok()).unwrap(); // b dispatched
    h.result(2, A, 1, ok()).unwrap();
    h.now += STEP_TIMEOUT_MS;
    let effects = h.time_out(1, A, 1).unwrap();
    assert_eq!(dispatches(&effects), vec![(1, A, 2)]);
    h.now += STEP_TIMEOUT_MS;
    let effects = h.time_out(1, A, 2).unwrap();

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
    let mut h = Def::chain(2).attempts(1, 1).timeout_secs(90).start();
    h.result(0, A, 1, ok()).unwrap();
    let effects = h.time_out(1, A, 1).unwrap();
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

/// The policy of a retry storm: no delay at all, a billion attempts.
fn storm() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1_000_000_000,
        initial_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        backoff_factor: 2.0,
        jitter: 0.0,
    }
}

/// Fails the step's in-flight attempt `attempt` of `kind` retryably and
/// fires its retry timer at once; returns the next attempt's number.
fn fail_and_retry(h: &mut Harness, step: usize, kind: TaskKind, attempt: u32) -> u32 {
    h.result(step, kind, attempt, retryable("busy", None))
        .unwrap();
    let due = match *h.status(step) {
        StepStatus::RetryWaiting { due, .. } | StepStatus::CompensationRetryWaiting { due, .. } => {
            due
        }
        ref other => panic!("not waiting for a retry: {other:?}"),
    };
    h.now = due;
    h.fire(TimerKind::Retry {
        step,
        kind,
        attempt: attempt + 1,
    })
    .unwrap();
    attempt + 1
}

#[test]
fn a_retry_after_past_the_policys_max_delay_waits_max_delay() {
    let mut h = Def::chain(1).start();
    // 10^15 ms is 31,700 years: the policy's max_delay (60s) bounds it.
    h.result(
        0,
        A,
        1,
        retryable("come back later", Some(1_000_000_000_000_000)),
    )
    .unwrap();
    assert_eq!(
        *h.status(0),
        StepStatus::RetryWaiting {
            attempt: 2,
            due: h.now + 60_000
        }
    );
    // So does u64::MAX, without overflowing.
    h.fire(TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 2,
    })
    .unwrap();
    h.result(0, A, 2, retryable("come back later", Some(u64::MAX)))
        .unwrap();
    assert_eq!(
        *h.status(0),
        StepStatus::RetryWaiting {
            attempt: 3,
            due: h.now + 60_000
        }
    );
}

#[test]
fn a_policy_of_zero_delays_still_waits_the_minimum_retry_delay() {
    assert_eq!(MIN_RETRY_DELAY, Duration::from_millis(100));
    let mut h = Def::chain(1).retry(0, storm()).start();
    h.result(0, A, 1, retryable("busy", None)).unwrap();
    assert_eq!(
        *h.status(0),
        StepStatus::RetryWaiting {
            attempt: 2,
            due: h.now + 100
        }
    );
    // A retry_after does not lift the wait past a max_delay of zero, and the
    // floor still holds.
    h.fire(TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 2,
    })
    .unwrap();
    h.result(0, A, 2, retryable("busy", Some(5_000))).unwrap();
    assert_eq!(
        *h.status(0),
        StepStatus::RetryWaiting {
            attempt: 3,
            due: h.now + 100
        }
    );
}

#[test]
fn a_retry_storm_keeps_the_first_and_latest_attempts_and_counts_the_rest() {
    let mut h = Def::chain(1).retry(0, storm()).start();
    let mut attempt = 1;
    for _ in 0..500 {
        attempt = fail_and_retry(&mut h, 0, A, attempt);
    }
    assert_eq!(attempt, 501);
    let state = &h.saga.steps[0];
    let numbers: Vec<u32> = state.attempts.iter().map(|a| a.number).collect();
    let mut expected: Vec<u32> = (1..=5).collect();
    expected.extend(482..=501);
    assert_eq!(numbers, expected);
    assert_eq!(state.attempts_dropped, 501 - 25);
    assert_eq!(state.attempts.last().unwrap().outcome, None, "in flight");

    // Fencing still works: a result for a dropped attempt, for a kept old
    // one and for a future one is stale; the current one applies.
    for stale in [100, 3, 490, 502] {
        assert!(
            matches!(h.result(0, A, stale, ok()), Err(Rejection::Stale { .. })),
            "attempt {stale}"
        );
    }
    h.result(0, A, 501, ok()).unwrap();
    assert_eq!(h.saga.status, SagaStatus::Completed);
    assert_eq!(
        h.saga.steps[0].attempts.last().unwrap().outcome,
        Some(AttemptOutcome::Ok)
    );
}

#[test]
fn a_compensation_storm_never_drops_the_latest_action_attempt() {
    // s0 needs 10 attempts, then s1 fails and s0's compensation storms.
    let mut h = Def::chain(2).retry(0, storm()).start();
    let mut attempt = 1;
    for _ in 0..9 {
        attempt = fail_and_retry(&mut h, 0, A, attempt);
    }
    h.result(0, A, attempt, ok()).unwrap();
    h.result(1, A, 1, fatal("boom")).unwrap();
    let mut comp = 1;
    for _ in 0..60 {
        comp = fail_and_retry(&mut h, 0, C, comp);
    }
    h.result(0, C, comp, ok()).unwrap();
    assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));
    let state = &h.saga.steps[0];
    assert!(state.attempts_dropped > 0);
    assert!(
        state
            .attempts
            .iter()
            .any(|a| a.kind == A && a.number == 10 && a.outcome == Some(AttemptOutcome::Ok)),
        "the latest action attempt is kept: {:?}",
        state.attempts
    );
    // A retry of the saga runs the action again under the next number, so
    // attempt numbers and task ids never repeat.
    h.now += 1_000;
    let effects = h
        .apply(Event::Retry {
            compensation_only: false,
        })
        .unwrap();
    assert!(dispatches(&effects).contains(&(0, A, 11)), "{effects:?}");
}

#[test]
fn attempts_dropped_is_serialized_only_when_attempts_were_dropped() {
    let mut state = StepState::default();
    let text = serde_json::to_string(&state).unwrap();
    assert!(!text.contains("attempts_dropped"), "{text}");
    state.attempts_dropped = 3;
    let text = serde_json::to_string(&state).unwrap();
    assert!(text.contains("\"attempts_dropped\":3"), "{text}");
    let back: StepState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, state);
}

mod history {
    use super::*;
    use crate::saga::state::{ATTEMPTS_KEPT_FIRST, ATTEMPTS_KEPT_LATEST};
    use proptest::prelude::*;

    proptest! {
        /// However attempts of the two kinds interleave, the history keeps
        /// them in order, keeps the first and the latest ones and the latest
        /// of each kind, stays bounded, and counts every one it dropped.
        #[test]
        fn the_history_is_bounded_and_keeps_what_fencing_needs(
            kinds in prop::collection::vec(any::<bool>(), 0..200),
        ) {
            let mut state = StepState::default();
            let mut pushed = Vec::new();
            let (mut actions, mut compensations) = (0u32, 0u32);
            for compensation in kinds {
                let (kind, number) = if compensation {
                    compensations += 1;
                    (C, compensations)
                } else {
                    actions += 1;
                    (A, actions)
                };
                let attempt = Attempt {
                    kind,
                    number,
                    generation: 0,
                    started_at: 0,
                    finished_at: None,
                    outcome: None,
                };
                pushed.push(attempt.clone());
                state.push_attempt(attempt);

                let kept = &state.attempts;
                prop_assert!(kept.len() <= ATTEMPTS_KEPT_FIRST + ATTEMPTS_KEPT_LATEST + 1);
                prop_assert_eq!(kept.len() as u64 + state.attempts_dropped, pushed.len() as u64);
                let first = pushed.len().min(ATTEMPTS_KEPT_FIRST);
                prop_assert_eq!(&kept[..first], &pushed[..first]);
                let latest = pushed.len().min(ATTEMPTS_KEPT_LATEST);
                prop_assert_eq!(&kept[kept.len() - latest..], &pushed[pushed.len() - latest..]);
                for kind in [A, C] {
                    prop_assert_eq!(
                        kept.iter().rev().find(|a| a.kind == kind),
                        pushed.iter().rev().find(|a| a.kind == kind)
                    );
                }
                // A subsequence of what was pushed, in order.
                let mut rest = pushed.iter();
                prop_assert!(kept.iter().all(|k| rest.any(|p| p == k)));
            }
        }
    }
}
