//! Durations: accepted forms and what is wrong with the others.

use super::*;
use std::time::Duration;

// --- durations ---------------------------------------------------------

fn step_timeout(value: &str) -> Result<Duration, DefinitionError> {
    yaml(&saga_with_steps(&step(
        "a",
        &format!("        timeout: {value}\n"),
    )))
    .map(|f| f.sagas[0].steps[0].timeout)
}

#[test]
fn durations_accept_humantime_and_milliseconds() {
    for (text, expected) in [
        ("30s", Duration::from_secs(30)),
        ("2m", Duration::from_secs(120)),
        ("500ms", Duration::from_millis(500)),
        ("10m", Duration::from_secs(600)),
        ("1h 30m", Duration::from_secs(5400)),
        ("\"45s\"", Duration::from_secs(45)),
        ("1500", Duration::from_millis(1500)),
        ("1", Duration::from_millis(1)),
    ] {
        assert_eq!(step_timeout(text).unwrap(), expected, "{text}");
    }
}

#[test]
fn invalid_durations_name_the_field() {
    for (text, needle) in [
        ("3x", "invalid duration \"3x\""),
        ("-5", "invalid duration: -5 is negative"),
        ("1.5", "1.5 is not a whole number of milliseconds"),
        ("0", "duration must be greater than zero"),
        ("0s", "duration must be greater than zero"),
        (
            "1500us",
            "duration 1ms 500000ns is not a whole number of milliseconds",
        ),
        (
            "400days",
            "duration 400d is longer than the maximum of 365d",
        ),
        ("\"\"", "invalid duration \"\""),
    ] {
        let e = step_timeout(text).unwrap_err();
        assert_eq!(e.code(), "E-DEF-DURATION", "{text}: {e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("bad.yaml: saga `s`, step `a`: field `timeout`: "),
            "{text}: {msg}"
        );
        assert!(msg.contains(needle), "{text}: {msg}");
    }

    // Saga timeouts and retry delays are named too.
    let e = yaml(
        "sagas:\n  s:\n    timeout: soon\n    steps:\n      - { id: a, service: s, operation: o, retry: { initial_delay: 2q } }\n",
    )
    .unwrap_err();
    assert_eq!(codes(&e), ["E-DEF-DURATION", "E-DEF-DURATION"]);
    let msgs = messages(&e);
    assert!(
        msgs[0].starts_with("bad.yaml: saga `s`: field `timeout`: invalid duration \"soon\""),
        "{msgs:?}"
    );
    assert!(
        msgs[1].starts_with(
            "bad.yaml: saga `s`, step `a`: field `retry.initial_delay`: invalid duration \"2q\""
        ),
        "{msgs:?}"
    );

    // Retry delays may be zero; timeouts may not.
    let file = yaml(
        "sagas:\n  s:\n    steps:\n      - { id: a, service: s, operation: o, retry: { initial_delay: 0, max_delay: 0s } }\n",
    )
    .unwrap();
    assert_eq!(file.sagas[0].steps[0].retry.max_delay, Duration::ZERO);
}

#[test]
fn durations_of_the_wrong_type_are_parse_errors() {
    let e = step_timeout("true").unwrap_err();
    assert_eq!(e.code(), "E-DEF-PARSE");
    assert!(e.to_string().contains("duration"), "{e}");
    let e = step_timeout("[1]").unwrap_err();
    assert_eq!(e.code(), "E-DEF-PARSE");
}
