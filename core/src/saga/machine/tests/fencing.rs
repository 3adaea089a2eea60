//! Events that must be rejected without changing anything: stale,
//! duplicate or misdirected results and timers, and a mismatched definition.

use super::*;

#[test]
fn stale_duplicate_and_misdirected_results_are_rejected() {
    let mut h = Def::chain(2).start();
    let stale = |r: Result<Vec<Effect>, Rejection>| matches!(r, Err(Rejection::Stale { .. }));
    // Not the current attempt, not the current kind, not dispatched yet.
    assert!(stale(h.result(0, A, 2, ok())));
    assert!(stale(h.result(0, A, 0, ok())));
    assert!(stale(h.result(0, C, 1, ok())));
    assert!(stale(h.result(1, A, 1, ok())));
    assert_eq!(h.result(7, A, 1, ok()), Err(Rejection::UnknownStep(7)));

    h.result(0, A, 1, ok()).unwrap();
    // The same result delivered again: a duplicate.
    assert_eq!(
        h.result(0, A, 1, ok()),
        Err(Rejection::Stale {
            step: "s0".into(),
            kind: A,
            attempt: 1
        })
    );
    assert!(stale(h.result(0, A, 1, fatal("late"))));

    h.result(1, A, 1, ok()).unwrap();
    assert_eq!(h.saga.status, SagaStatus::Completed);
    assert_eq!(
        h.result(1, A, 1, ok()),
        Err(Rejection::Terminal("completed"))
    );
    assert_eq!(
        h.result(9, A, 1, ok()),
        Err(Rejection::Terminal("completed"))
    );
}

#[test]
fn results_before_start_are_stale() {
    let mut h = Def::chain(1).pending();
    assert!(matches!(
        h.result(0, A, 1, ok()),
        Err(Rejection::Stale { .. })
    ));
    assert!(matches!(
        h.fire(TimerKind::SagaTimeout),
        Err(Rejection::NotApplicable(_))
    ));
}

#[test]
fn timers_are_fenced_by_attempt() {
    let mut h = Def::chain(2).timeout_secs(60).start();
    let stale = |r: Result<Vec<Effect>, Rejection>| matches!(r, Err(Rejection::Stale { .. }));
    // A retry timer when nothing waits, or for another attempt.
    assert!(stale(h.fire(TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 2
    })));
    h.result(0, A, 1, retryable("busy", None)).unwrap();
    assert!(stale(h.fire(TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 3
    })));
    assert!(stale(h.fire(TimerKind::Retry {
        step: 0,
        kind: C,
        attempt: 2
    })));
    // The step timeout of the attempt that already ended.
    assert!(stale(h.time_out(0, A, 1)));
    assert_eq!(
        h.fire(TimerKind::Retry {
            step: 5,
            kind: A,
            attempt: 2
        }),
        Err(Rejection::UnknownStep(5))
    );
    // The right one.
    h.fire(TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 2,
    })
    .unwrap();
    // Fired twice: the second is stale.
    assert!(stale(h.fire(TimerKind::Retry {
        step: 0,
        kind: A,
        attempt: 2
    })));
    // A step timeout of an attempt not yet dispatched.
    assert!(stale(h.time_out(0, A, 3)));
    h.result(0, A, 2, ok()).unwrap();
    h.result(1, A, 1, ok()).unwrap();
    assert_eq!(
        h.fire(TimerKind::SagaTimeout),
        Err(Rejection::Terminal("completed"))
    );
}

#[test]
fn mismatched_definition_is_rejected() {
    let def = Def::chain(2).build();
    let mut saga = new_saga("x".into(), &def, json!(null), None, T0);
    let other = Def::chain(3).build();
    let before = saga.clone();
    let r = apply(
        &mut saga,
        &other,
        Event::Start,
        Inputs {
            now: T0,
            random: 0.5,
        },
    );
    assert!(matches!(r, Err(Rejection::NotApplicable(_))));
    assert_eq!(saga, before);
}
