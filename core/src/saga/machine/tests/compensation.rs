//! Rolling back: which steps are compensated, in which order, what
//! draining in-flight steps does, and compensations that fail.

use super::*;

#[test]
fn failure_at_step_three_compensates_two_then_one_and_nothing_else() {
    let mut h = Def::chain(4).timeout_secs(600).start();
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
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[0], false),
        step("c", &[1], true),
    ])
    .start();
    h.result(0, A, 1, ok()).unwrap();
    h.result(1, A, 1, ok()).unwrap();
    let effects = h.result(2, A, 1, fatal("nope")).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
    assert_eq!(*h.status(1), StepStatus::NotCompensable);
    h.result(0, C, 1, ok()).unwrap();
    assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));

    // Only non-compensable steps succeeded: rolled back with nothing to run.
    let mut h = Def::steps(vec![step("a", &[], false), step("b", &[0], true)]).start();
    h.result(0, A, 1, ok()).unwrap();
    let effects = h.result(1, A, 1, fatal("nope")).unwrap();
    assert!(dispatches(&effects).is_empty());
    assert_eq!(*h.status(0), StepStatus::NotCompensable);
    assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));
}

#[test]
fn saga_timeout_rolls_back_while_draining_in_flight_steps() {
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[], true),
        step("c", &[0], true),
    ])
    .timeout_secs(90)
    .start();
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
    let mut h = Def::steps(vec![step("a", &[], true), step("b", &[], true)]).start();
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
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[], true),
        step("c", &[0], true),
    ])
    .attempts(1, 2)
    .start();
    h.result(0, A, 1, ok()).unwrap();
    h.result(2, A, 1, fatal("boom")).unwrap();
    // a has no running dependents (c failed): compensated at once; b drains.
    assert_eq!(*h.status(0), StepStatus::Compensating { attempt: 1 });
    h.result(0, C, 1, ok()).unwrap();

    h.now += STEP_TIMEOUT_MS;

    let effects = h.time_out(1, A, 1).unwrap();
    assert_eq!(
        dispatches(&effects),
        vec![(1, A, 2)],
        "re-dispatched while draining"
    );
    h.now += STEP_TIMEOUT_MS;
    let effects = h.time_out(1, A, 2).unwrap();
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
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[0], true),
        step("c", &[], true),
    ])
    .attempts(1, 1)
    .start();
    h.result(0, A, 1, ok()).unwrap(); // b dispatched
    h.result(2, A, 1, fatal("boom")).unwrap();
    h.time_out(1, A, 1).unwrap();
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
    let mut h = Def::chain(3).attempts(1, 2).timeout_secs(60).start();
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
    let mut h = Def::chain(2).start();
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
    let mut h = Def::chain(2).attempts(0, 2).start();
    h.result(0, A, 1, ok()).unwrap();
    h.result(1, A, 1, fatal("boom")).unwrap();
    h.now += STEP_TIMEOUT_MS;
    let effects = h.time_out(0, C, 1).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, C, 2)]);
    h.now += STEP_TIMEOUT_MS;
    h.time_out(0, C, 2).unwrap();
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
    let mut h = Def::chain(3).timeout_secs(60).start();
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
    let mut h = Def::steps(vec![step("a", &[], true), step("b", &[], true)]).start();
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
