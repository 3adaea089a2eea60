//! Retry policies: resolution, ranges and the backoff delays.

use super::*;
use std::time::Duration;

// --- retry policies ----------------------------------------------------

#[test]
fn retry_resolution() {
    let policies = "retry_policies:\n  default: { max_attempts: 7 }\n  slow: { initial_delay: 5s, max_delay: 5m, jitter: 0 }\n";
    let steps = [
        step("absent", ""),
        step("named", "        retry: slow\n"),
        step("inline", "        retry: { backoff_factor: 3 }\n"),
        step("named_default", "        retry: default\n"),
    ]
    .concat();
    let file = yaml(&format!("{}{policies}", saga_with_steps(&steps))).unwrap();
    let retry: Vec<&RetryPolicy> = file.sagas[0].steps.iter().map(|s| &s.retry).collect();
    let default = RetryPolicy::default();
    let seven = RetryPolicy {
        max_attempts: 7,
        ..default.clone()
    };
    assert_eq!(retry[0], &seven, "absent retry uses the `default` policy");
    assert_eq!(
        retry[1],
        &RetryPolicy {
            initial_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(300),
            jitter: 0.0,
            ..default.clone()
        }
    );
    assert_eq!(
        retry[2],
        &RetryPolicy {
            backoff_factor: 3.0,
            ..default.clone()
        },
        "inline fields default from RetryPolicy::default(), not from the `default` policy"
    );
    assert_eq!(retry[3], &seven);

    // Without a `default` policy, RetryPolicy::default() applies.
    let file = yaml(&format!(
        "{}retry_policies:\n  other: {{ max_attempts: 9 }}\n",
        saga_with_steps(&step("a", ""))
    ))
    .unwrap();
    assert_eq!(file.sagas[0].steps[0].retry, default);
}

#[test]
fn unknown_policy_lists_known_ones() {
    let text = format!(
        "{}retry_policies:\n  default: {{}}\n  slow: {{}}\n",
        saga_with_steps(&step("a", "        retry: fast\n"))
    );
    let e = yaml_err(&text);
    assert_eq!(e.code(), "E-DEF-UNKNOWN-POLICY");
    assert_eq!(
        e.to_string(),
        "bad.yaml: saga `s`, step `a`: field `retry`: unknown retry policy `fast` (known: default, slow)"
    );

    let e = yaml_err(&saga_with_steps(&step("a", "        retry: fast\n")));
    assert_eq!(
        e.to_string(),
        "bad.yaml: saga `s`, step `a`: field `retry`: unknown retry policy `fast` (no retry_policies are defined)"
    );
}

#[test]
fn policy_ranges_are_checked_and_all_reported() {
    let e = yaml_err(&saga_with_steps(&step(
        "a",
        "        retry: { max_attempts: 0, backoff_factor: 0.5, jitter: 1.5, initial_delay: 20s, max_delay: 10s }\n",
    )));
    assert_eq!(e.code(), "E-DEF-MANY");
    assert_eq!(codes(&e), ["E-DEF-RETRY"; 4]);
    assert_eq!(
        messages(&e),
        [
            "bad.yaml: saga `s`, step `a`: field `retry.max_attempts`: must be at least 1 (the first attempt counts), got 0",
            "bad.yaml: saga `s`, step `a`: field `retry.backoff_factor`: must be a finite number of at least 1, got 0.5",
            "bad.yaml: saga `s`, step `a`: field `retry.jitter`: must be between 0 and 1, got 1.5",
            "bad.yaml: saga `s`, step `a`: field `retry.initial_delay`: must not exceed max_delay (10s), got 20s",
        ]
    );
    // Display lists one problem per line.
    assert_eq!(e.to_string().lines().count(), 4);

    let e = yaml_err(&saga_with_steps(&step(
        "a",
        "        retry: { jitter: .nan }\n",
    )));
    assert_eq!(e.code(), "E-DEF-RETRY");

    let e = yaml_err(&saga_with_steps(&step(
        "a",
        "        retry: { max_attempts: -1 }\n",
    )));
    assert_eq!(
        e.to_string(),
        "bad.yaml: saga `s`, step `a`: field `retry.max_attempts`: must be between 1 and 4294967295, got -1"
    );
}

#[test]
fn invalid_named_policy_is_reported_once() {
    let steps = [step("a", ""), step("b", "        retry: default\n")].concat();
    let text = format!(
        "{}retry_policies:\n  default: {{ jitter: -1 }}\n",
        saga_with_steps(&steps)
    );
    let e = yaml_err(&text);
    assert_eq!(
        e.to_string(),
        "bad.yaml: retry policy `default`: field `jitter`: must be between 0 and 1, got -1"
    );
}

// --- RetryPolicy::delay ------------------------------------------------

#[test]
fn delay_grows_caps_and_jitters() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(10),
        backoff_factor: 2.0,
        jitter: 0.0,
    };
    let d: Vec<u64> = (2..8).map(|a| p.delay(a, 0.3).as_millis() as u64).collect();
    assert_eq!(d, [1000, 2000, 4000, 8000, 10_000, 10_000]);
    assert_eq!(p.delay(1, 0.5), Duration::from_secs(1));
    assert_eq!(p.delay(u32::MAX, 0.5), Duration::from_secs(10));

    let p = RetryPolicy { jitter: 0.5, ..p };
    assert_eq!(p.delay(2, 0.0), Duration::from_millis(500));
    assert_eq!(p.delay(2, 0.5), Duration::from_secs(1));
    assert_eq!(p.delay(2, 1.0), Duration::from_millis(1500));
    // At the cap, jitter still spreads delays below max_delay.
    assert_eq!(p.delay(10, 0.0), Duration::from_secs(5));
    assert_eq!(p.delay(10, 1.0), Duration::from_secs(10));
    assert!(p.delay(10, 0.5) < Duration::from_secs(10));
}

#[test]
fn delay_never_panics_on_unvalidated_policies() {
    for p in [
        RetryPolicy {
            max_delay: Duration::MAX,
            initial_delay: Duration::MAX,
            ..RetryPolicy::default()
        },
        RetryPolicy {
            backoff_factor: f64::NAN,
            jitter: f64::NAN,
            ..RetryPolicy::default()
        },
        RetryPolicy {
            initial_delay: Duration::ZERO,
            backoff_factor: f64::INFINITY,
            ..RetryPolicy::default()
        },
        RetryPolicy {
            backoff_factor: -3.0,
            jitter: 7.0,
            ..RetryPolicy::default()
        },
    ] {
        for attempt in [0, 1, 2, 3, 65, u32::MAX] {
            for sample in [f64::NAN, -1.0, 0.0, 0.5, 1.0, f64::INFINITY] {
                assert!(p.delay(attempt, sample) <= p.max_delay);
            }
        }
    }
}
