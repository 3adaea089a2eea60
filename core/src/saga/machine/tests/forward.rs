//! Running forward: a new saga, starting it, dispatching in dependency
//! order, completing; and the status helpers.

use super::*;

#[test]
fn new_saga_is_pending_with_pending_steps() {
    let def = Def::chain(3).build();
    let saga = new_saga("id".into(), &def, json!(1), Some("key".into()), 7);
    assert_eq!(saga.status, SagaStatus::Pending);
    assert_eq!(saga.name, "test");
    assert_eq!(saga.definition_version, 1);
    assert_eq!(saga.idempotency_key.as_deref(), Some("key"));
    assert_eq!(saga.steps.len(), 3);
    assert!(saga.steps.iter().all(|s| s.status == StepStatus::Pending));
    assert!(saga.steps.iter().all(|s| s.attempts.is_empty()));
    assert_eq!(
        (saga.created_at, saga.updated_at, saga.finished_at),
        (7, 7, None)
    );
}

#[test]
fn happy_path_of_a_four_step_chain() {
    let mut h = Def::chain(4).timeout_secs(600).pending();

    let effects = h.apply(Event::Start).unwrap();
    let mut expected = vec![
        lifecycle(LifecycleEvent::SagaStarted),
        Effect::ScheduleTimer {
            timer: TimerKind::SagaTimeout,
            due: T0 + 600_000,
        },
    ];
    expected.extend(dispatch_effects(0, A, 1, T0));
    assert_eq!(effects, expected);
    assert_eq!(h.saga.status, SagaStatus::Running);
    assert_eq!(*h.status(0), StepStatus::Running { attempt: 1 });
    assert_eq!(
        h.saga.steps[0].attempts,
        vec![Attempt {
            kind: A,
            number: 1,
            generation: 0,
            started_at: T0,
            finished_at: None,
            outcome: None,
        }]
    );

    for i in 0..3 {
        h.now += 1_000;
        let effects = h.result(i, A, 1, Outcome::Ok { output: json!(i) }).unwrap();
        let mut expected = vec![
            cancel_step_timer(i, A, 1),
            lifecycle(LifecycleEvent::StepSucceeded { step: i }),
        ];
        expected.extend(dispatch_effects(i + 1, A, 1, h.now));
        assert_eq!(effects, expected);
        assert_eq!(*h.status(i), StepStatus::Succeeded);
        assert_eq!(h.saga.steps[i].output, Some(json!(i)));
        assert_eq!(
            h.saga.steps[i].attempts[0].outcome,
            Some(AttemptOutcome::Ok)
        );
        assert_eq!(h.saga.steps[i].attempts[0].finished_at, Some(h.now));
    }

    h.now += 1_000;
    let effects = h.result(3, A, 1, ok()).unwrap();
    assert_eq!(
        effects,
        vec![
            cancel_step_timer(3, A, 1),
            lifecycle(LifecycleEvent::StepSucceeded { step: 3 }),
            Effect::CancelTimer {
                timer: TimerKind::SagaTimeout
            },
            finished("completed"),
        ]
    );
    assert_eq!(h.saga.status, SagaStatus::Completed);
    assert_eq!(h.saga.finished_at, Some(h.now));
    assert_eq!(h.saga.updated_at, h.now);
    assert!(
        h.saga
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded)
    );
}

#[test]
fn start_without_saga_timeout_schedules_no_saga_timer_and_start_twice_is_rejected() {
    let mut h = Def::chain(1).pending();
    let effects = h.apply(Event::Start).unwrap();
    assert!(!effects.iter().any(|e| matches!(
        e,
        Effect::ScheduleTimer {
            timer: TimerKind::SagaTimeout,
            ..
        }
    )));
    assert!(matches!(
        h.apply(Event::Start),
        Err(Rejection::NotApplicable(_))
    ));
    h.result(0, A, 1, ok()).unwrap();
    assert_eq!(h.saga.status, SagaStatus::Completed);
    assert!(matches!(
        h.apply(Event::Start),
        Err(Rejection::NotApplicable(_))
    ));
}

#[test]
fn independent_steps_are_dispatched_together_and_joins_wait_for_all() {
    // a, b independent; c needs both; d needs a only.
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[], true),
        step("c", &[0, 1], true),
        step("d", &[0], true),
    ])
    .pending();
    let effects = h.apply(Event::Start).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, A, 1), (1, A, 1)]);

    let effects = h.result(0, A, 1, ok()).unwrap();
    assert_eq!(
        dispatches(&effects),
        vec![(3, A, 1)],
        "d unblocked, c not yet"
    );
    assert_eq!(*h.status(2), StepStatus::Pending);

    let effects = h.result(1, A, 1, ok()).unwrap();
    assert_eq!(dispatches(&effects), vec![(2, A, 1)]);
    h.result(3, A, 1, ok()).unwrap();
    assert_eq!(h.saga.status, SagaStatus::Running);
    h.result(2, A, 1, ok()).unwrap();
    assert_eq!(h.saga.status, SagaStatus::Completed);
}

#[test]
fn status_helpers() {
    assert_eq!(
        in_flight_attempt(&StepStatus::Running { attempt: 2 }),
        Some((A, 2))
    );
    assert_eq!(
        in_flight_attempt(&StepStatus::Compensating { attempt: 1 }),
        Some((C, 1))
    );
    assert_eq!(
        waiting_attempt(&StepStatus::CompensationRetryWaiting { attempt: 3, due: 0 }),
        Some((C, 3))
    );
    assert!(is_busy(&StepStatus::RetryWaiting { attempt: 2, due: 0 }));
    assert!(!is_busy(&StepStatus::Succeeded));
    assert!(is_rolled_back(&StepStatus::Skipped));
    assert!(!is_rolled_back(&StepStatus::CompensationFailed {
        error: String::new()
    }));
    assert!(!is_rolled_back(&StepStatus::Succeeded));
}
