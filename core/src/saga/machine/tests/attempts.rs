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
    let mut h = Def::chain(2).attempts(1, 1).timeout_secs(90).start();
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
