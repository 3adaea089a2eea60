//! Cancelling, with and without compensation.

use super::*;

#[test]
fn cancel_with_compensation_rolls_back_and_cannot_be_repeated() {
    let mut h = Def::chain(3).start();
    h.result(0, A, 1, ok()).unwrap();
    let effects = h.cancel(true).unwrap();
    assert_eq!(
        effects,
        vec![lifecycle(LifecycleEvent::SagaCompensating {
            reason: "operator said so".into()
        })]
    );
    assert_eq!(*h.status(1), StepStatus::Running { attempt: 1 });
    assert_eq!(*h.status(2), StepStatus::Skipped);
    assert!(matches!(h.cancel(true), Err(Rejection::NotApplicable(_))));

    let effects = h.result(1, A, 1, fatal("interrupted")).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
    h.result(0, C, 1, ok()).unwrap();
    assert_eq!(
        h.saga.status,
        SagaStatus::Compensated {
            reason: "operator said so".into()
        }
    );
    assert!(matches!(
        h.cancel(true),
        Err(Rejection::Terminal("compensated"))
    ));
    assert!(matches!(
        h.cancel(false),
        Err(Rejection::Terminal("compensated"))
    ));
}

#[test]
fn cancel_of_a_pending_saga_ends_it_cancelled_without_running_anything() {
    // A pending saga is one waiting in the start queue (`crate::limits`):
    // nothing ran, so compensating or not, it ends `cancelled`.
    for compensate in [true, false] {
        let mut h = Def::chain(2).timeout_secs(60).pending();
        let effects = h.cancel(compensate).unwrap();
        assert!(dispatches(&effects).is_empty(), "{effects:?}");
        assert!(effects.contains(&finished("cancelled")), "{effects:?}");
        assert!(!effects.contains(&lifecycle(LifecycleEvent::SagaStarted)));
        assert!(matches!(h.saga.status, SagaStatus::Cancelled { .. }));
        assert!(h.saga.finished_at.is_some());
        assert!(h.saga.steps.iter().all(|s| s.status == StepStatus::Skipped));
        assert!(h.saga.steps.iter().all(|s| s.attempts.is_empty()));
        assert!(matches!(
            h.apply(Event::Start),
            Err(Rejection::NotApplicable(_))
        ));
    }
}

#[test]
fn cancel_without_compensation_abandons_in_flight_work() {
    // a, b parallel; c after a; d after c.
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[], true),
        step("c", &[0], true),
        step("d", &[2], true),
    ])
    .timeout_secs(60)
    .start();
    h.result(0, A, 1, ok()).unwrap(); // c dispatched
    h.result(1, A, 1, retryable("busy", None)).unwrap();
    h.now += 10;
    let effects = h.cancel(false).unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::CancelTimer {
                timer: TimerKind::Retry {
                    step: 1,
                    kind: A,
                    attempt: 2
                }
            },
            cancel_step_timer(2, A, 1),
            Effect::CancelTimer {
                timer: TimerKind::SagaTimeout
            },
            finished("cancelled"),
        ]
    );
    assert_eq!(
        h.saga.status,
        SagaStatus::Cancelled {
            reason: "operator said so".into()
        }
    );
    assert_eq!(h.saga.finished_at, Some(h.now));
    assert_eq!(*h.status(0), StepStatus::Succeeded, "not undone");
    assert_eq!(*h.status(1), StepStatus::Skipped);
    assert_eq!(
        h.saga.steps[2].attempts[0].outcome,
        Some(AttemptOutcome::Abandoned)
    );
    assert_eq!(h.saga.steps[2].attempts[0].finished_at, Some(h.now));
    assert_eq!(*h.status(3), StepStatus::Skipped);
    // The abandoned attempt's result is ignored.
    assert!(matches!(
        h.result(2, A, 1, ok()),
        Err(Rejection::Terminal("cancelled"))
    ));
}

#[test]
fn cancel_without_compensation_stops_a_rollback() {
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[], true),
        step("c", &[1], true),
    ])
    .start();
    h.result(0, A, 1, ok()).unwrap();
    h.result(1, A, 1, ok()).unwrap();
    h.result(2, A, 1, fatal("boom")).unwrap();
    h.result(0, C, 1, retryable("later", None)).unwrap();
    assert_eq!(*h.status(1), StepStatus::Compensating { attempt: 1 });
    let effects = h.cancel(false).unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::CancelTimer {
                timer: TimerKind::Retry {
                    step: 0,
                    kind: C,
                    attempt: 2
                }
            },
            cancel_step_timer(1, C, 1),
            finished("cancelled"),
        ]
    );
    assert_eq!(*h.status(0), StepStatus::Succeeded);
    assert_eq!(
        h.saga.steps[1].attempts[1].outcome,
        Some(AttemptOutcome::Abandoned)
    );
}
