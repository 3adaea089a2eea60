//! An operator's retry of a finished saga (`Event::Retry`): resuming a
//! rollback, or running forward again under a new key generation.

use super::*;

fn retry(compensation_only: bool) -> Event {
    Event::Retry { compensation_only }
}

fn dispatch_in(
    step: usize,
    kind: TaskKind,
    attempt: u32,
    generation: u32,
    now: Millis,
) -> [Effect; 2] {
    let [_, timer] = dispatch_effects(step, kind, attempt, now);
    [
        Effect::Dispatch {
            step,
            kind,
            attempt,
            generation,
        },
        timer,
    ]
}

fn retried(from: &str, generation: u32) -> Effect {
    lifecycle(LifecycleEvent::SagaRetried {
        from: from.to_owned(),
        generation,
    })
}

/// s0 -> s1 -> s2; s2 fails, s1's compensation fails fatally: s0 and s1 stuck.
fn stuck_on_a_fatal_compensation() -> Harness {
    let mut h = Def::chain(3).timeout_secs(60).start();
    h.result(0, A, 1, ok()).unwrap();
    h.result(1, A, 1, ok()).unwrap();
    h.result(2, A, 1, fatal("boom")).unwrap();
    h.result(1, C, 1, fatal("refund service broken")).unwrap();
    assert_eq!(
        h.saga.status,
        SagaStatus::PartiallyCompensated {
            reason: "step s2 failed: boom".into(),
            stuck_steps: vec!["s0".into(), "s1".into()],
        }
    );
    h
}

#[test]
fn retry_resumes_a_rollback_and_a_fatal_compensation_gets_a_fresh_key() {
    let mut h = stuck_on_a_fatal_compensation();
    h.now += 60_000;
    let effects = h.apply(retry(true)).unwrap();
    // Under the old key the SDK would replay the recorded fatal error:
    // the retried compensation carries a key of generation 1.
    let mut expected = vec![retried("partially_compensated", 1)];
    expected.extend(dispatch_in(1, C, 2, 1, h.now));
    assert_eq!(effects, expected);
    assert_eq!(h.saga.generation, 1);
    assert_eq!(
        h.saga.status,
        SagaStatus::Compensating {
            reason: "step s2 failed: boom".into()
        }
    );
    assert_eq!(h.saga.finished_at, None);
    assert_eq!(*h.status(1), StepStatus::Compensating { attempt: 2 });
    assert_eq!(h.saga.steps[1].compensation_base, 1);
    assert_eq!(h.saga.steps[1].attempts.last().unwrap().generation, 1);
    assert_eq!(*h.status(0), StepStatus::Succeeded, "still blocked by s1");

    // A late copy of the failed attempt's result is stale, and so is its timer.
    assert!(matches!(
        h.result(1, C, 1, fatal("refund service broken")),
        Err(Rejection::Stale { .. })
    ));
    assert!(matches!(h.time_out(1, C, 1), Err(Rejection::Stale { .. })));

    // The fixed compensation succeeds; s0 is compensated after it.
    let effects = h.result(1, C, 2, ok()).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
    assert!(effects.contains(&Effect::Dispatch {
        step: 0,
        kind: C,
        attempt: 1,
        generation: 1
    }));
    let effects = h.result(0, C, 1, ok()).unwrap();
    assert!(effects.contains(&finished("compensated")));
    assert_eq!(
        h.saga.status,
        SagaStatus::Compensated {
            reason: "step s2 failed: boom".into()
        }
    );
    assert_eq!(h.saga.finished_at, Some(h.now));
    // Compensated: nothing more to resume.
    assert!(matches!(
        h.apply(retry(true)),
        Err(Rejection::NotApplicable(_))
    ));
}

#[test]
fn a_resumed_compensation_keeps_its_key_after_a_timeout_or_retryable_errors() {
    // s0's compensation has one attempt per round.
    let mut h = Def::chain(2).attempts(0, 1).start();
    h.result(0, A, 1, ok()).unwrap();
    h.result(1, A, 1, fatal("boom")).unwrap();
    h.time_out(0, C, 1).unwrap();
    assert!(matches!(
        h.saga.status,
        SagaStatus::PartiallyCompensated { .. }
    ));

    // The timed-out compensation may have done its work: same key
    // (generation 0), so a recorded success is replayed.
    let effects = h.apply(retry(false)).unwrap();
    let mut expected = vec![retried("partially_compensated", 0)];
    expected.extend(dispatch_in(0, C, 2, 0, h.now));
    assert_eq!(effects, expected);
    // A fresh budget of one attempt, spent on a retryable error.
    h.result(0, C, 2, retryable("db down", None)).unwrap();
    assert_eq!(
        *h.status(0),
        StepStatus::CompensationFailed {
            error: "retries exhausted after 1 attempts: db down".into()
        }
    );
    // Nothing was recorded under the key: it is kept again.
    let effects = h.apply(retry(true)).unwrap();
    assert_eq!(h.saga.generation, 0);
    assert_eq!(dispatches(&effects), vec![(0, C, 3)]);
    h.result(0, C, 3, ok()).unwrap();
    assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));
    let generations: Vec<u32> = h.saga.steps[0]
        .attempts
        .iter()
        .map(|a| a.generation)
        .collect();
    assert_eq!(generations, vec![0, 0, 0, 0]);
}

/// a -> b, c independent; b's only attempt times out: a and b stuck.
fn stuck_on_an_unknown_action() -> Harness {
    let mut h = Def::steps(vec![
        step("a", &[], true),
        step("b", &[0], true),
        step("c", &[], true),
    ])
    .attempts(1, 1)
    .start();
    h.result(0, A, 1, ok()).unwrap();
    h.result(2, A, 1, fatal("boom")).unwrap();
    h.time_out(1, A, 1).unwrap();
    assert_eq!(
        h.saga.status,
        SagaStatus::PartiallyCompensated {
            reason: "step c failed: boom".into(),
            stuck_steps: vec!["a".into(), "b".into()],
        }
    );
    h
}

#[test]
fn retry_redispatches_an_action_of_unknown_outcome_under_its_key_then_compensates_it() {
    let mut h = stuck_on_an_unknown_action();
    let effects = h.apply(retry(true)).unwrap();
    // The action again, under the same key: the SDK replays what it
    // recorded, or runs it if no attempt ever did.
    let mut expected = vec![retried("partially_compensated", 0)];
    expected.extend(dispatch_in(1, A, 2, 0, h.now));
    assert_eq!(effects, expected);
    assert_eq!(*h.status(1), StepStatus::Running { attempt: 2 });
    assert_eq!(h.saga.steps[1].action_base, 1);
    assert!(matches!(
        h.result(1, A, 1, ok()),
        Err(Rejection::Stale { .. })
    ));

    // It had succeeded: it is compensated, then what it blocked.
    let effects = h.result(1, A, 2, ok()).unwrap();
    assert_eq!(dispatches(&effects), vec![(1, C, 1)]);
    assert_eq!(*h.status(1), StepStatus::Compensating { attempt: 1 });
    let effects = h.result(1, C, 1, ok()).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
    h.result(0, C, 1, ok()).unwrap();
    assert_eq!(
        h.saga.status,
        SagaStatus::Compensated {
            reason: "step c failed: boom".into()
        }
    );
}

#[test]
fn a_redispatched_action_that_failed_or_times_out_again() {
    // It never had an effect: nothing to undo, a is compensated.
    let mut h = stuck_on_an_unknown_action();
    h.apply(retry(false)).unwrap();
    let effects = h.result(1, A, 2, fatal("rejected")).unwrap();
    assert_eq!(dispatches(&effects), vec![(0, C, 1)]);
    assert_eq!(
        *h.status(1),
        StepStatus::Failed {
            error: "rejected".into()
        }
    );
    h.result(0, C, 1, ok()).unwrap();
    assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));

    // Still no answer: stuck again, counting this round's timeouts.
    let mut h = stuck_on_an_unknown_action();
    h.apply(retry(false)).unwrap();
    h.time_out(1, A, 2).unwrap();
    assert_eq!(
        *h.status(1),
        StepStatus::CompensationFailed {
            error: "action outcome unknown after 1 timed-out attempts".into()
        }
    );
    assert!(matches!(
        h.saga.status,
        SagaStatus::PartiallyCompensated { ref stuck_steps, .. } if stuck_steps == &["a", "b"]
    ));
}

#[test]
fn retry_runs_a_failed_saga_forward_again_under_a_new_generation() {
    let mut h = Def::chain(2).timeout_secs(60).start();
    h.result(0, A, 1, fatal("card declined")).unwrap();
    assert!(matches!(h.saga.status, SagaStatus::Failed { .. }));
    // The cause is fixed; the operator retries.
    h.now += 5_000;
    let effects = h.apply(retry(false)).unwrap();
    let mut expected = vec![
        retried("failed", 1),
        Effect::ScheduleTimer {
            timer: TimerKind::SagaTimeout,
            due: h.now + 60_000,
        },
    ];
    expected.extend(dispatch_in(0, A, 2, 1, h.now));
    assert_eq!(effects, expected);
    assert_eq!(h.saga.status, SagaStatus::Running);
    assert_eq!(h.saga.generation, 1);
    assert_eq!(h.saga.finished_at, None);
    assert_eq!(*h.status(0), StepStatus::Running { attempt: 2 });
    assert_eq!(*h.status(1), StepStatus::Pending);
    assert_eq!(h.saga.steps[0].attempts.len(), 2, "history kept");

    // The pre-retry attempt's result and timer are stale.
    assert!(matches!(
        h.result(0, A, 1, fatal("card declined")),
        Err(Rejection::Stale { .. })
    ));
    assert!(matches!(h.time_out(0, A, 1), Err(Rejection::Stale { .. })));
    // A full budget again: three attempts in this round.
    h.result(0, A, 2, retryable("busy", None)).unwrap();
    assert!(matches!(
        *h.status(0),
        StepStatus::RetryWaiting { attempt: 3, .. }
    ));

    h.fire(TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 3,
    })
    .unwrap();
    let effects = h.result(0, A, 3, ok()).unwrap();
    assert!(effects.contains(&Effect::Dispatch {
        step: 1,
        kind: A,
        attempt: 1,
        generation: 1
    }));
    h.result(1, A, 1, ok()).unwrap();
    assert_eq!(h.saga.status, SagaStatus::Completed);
    assert!(matches!(
        h.apply(retry(false)),
        Err(Rejection::NotApplicable(_))
    ));
}

#[test]
fn retry_runs_a_compensated_saga_again_keeping_effects_nothing_undid() {
    // a (no compensation) -> b -> c (no compensation) -> d, which fails.
    let mut h = Def::steps(vec![
        step("a", &[], false),
        step("b", &[0], true),
        step("c", &[1], false),
        step("d", &[2], true),
    ])
    .start();
    for i in 0..3 {
        h.result(i, A, 1, Outcome::Ok { output: json!(i) }).unwrap();
    }
    h.result(3, A, 1, fatal("boom")).unwrap();
    h.result(1, C, 1, ok()).unwrap();
    assert!(matches!(h.saga.status, SagaStatus::Compensated { .. }));
    assert_eq!(*h.status(0), StepStatus::NotCompensable);
    assert_eq!(*h.status(2), StepStatus::NotCompensable);

    let effects = h.apply(retry(false)).unwrap();
    // a's effect is in place and its inputs are the same: kept. c ran on
    // b's output, which was undone: it runs again after b.
    assert_eq!(dispatches(&effects), vec![(1, A, 2)]);
    assert_eq!(*h.status(0), StepStatus::Succeeded);
    assert_eq!(h.saga.steps[0].output, Some(json!(0)));
    assert_eq!(*h.status(2), StepStatus::Pending);
    assert_eq!(h.saga.steps[1].output, None);
    assert_eq!(h.saga.steps[2].output, None);
    let effects = h.result(1, A, 2, ok()).unwrap();
    assert_eq!(dispatches(&effects), vec![(2, A, 2)]);
    h.result(2, A, 2, ok()).unwrap();
    h.result(3, A, 2, ok()).unwrap();
    assert_eq!(h.saga.status, SagaStatus::Completed);
    assert_eq!(h.saga.steps[0].attempts.len(), 1, "a never ran again");
}

#[test]
fn retry_is_not_applicable_to_live_completed_and_cancelled_sagas() {
    let not_applicable = |h: &mut Harness, compensation_only: bool, needle: &str| match h
        .apply(retry(compensation_only))
    {
        Err(Rejection::NotApplicable(message)) => {
            assert!(message.contains(needle), "{message}")
        }
        other => panic!("expected not applicable, got {other:?}"),
    };
    let mut h = Def::chain(2).pending();
    not_applicable(&mut h, false, "it is pending");
    h.apply(Event::Start).unwrap();
    not_applicable(&mut h, false, "it is running (wait until it finishes");
    not_applicable(&mut h, true, "only a partially_compensated saga");
    h.result(0, A, 1, ok()).unwrap();
    h.cancel(true).unwrap();
    not_applicable(
        &mut h,
        false,
        "it is compensating (its rollback is still under way)",
    );
    h.result(1, A, 1, fatal("x")).unwrap();
    h.result(0, C, 1, ok()).unwrap();
    // Compensated: a forward retry applies, a compensation retry not.
    not_applicable(&mut h, true, "to run it again from the start, use retry");

    let mut h = Def::chain(1).start();
    h.result(0, A, 1, ok()).unwrap();
    not_applicable(&mut h, false, "it is completed");

    let mut h = Def::chain(1).start();
    h.cancel(false).unwrap();
    not_applicable(&mut h, false, "start a new saga instead");
    not_applicable(&mut h, true, "it is cancelled");
}
