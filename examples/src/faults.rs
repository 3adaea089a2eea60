//! Fault injection driven by the saga input, shared by every example handler.
//!
//! A saga input may carry a `faults` object keyed by step id:
//!
//! ```json
//! { "faults": {
//!     "deploy_containers": { "fail": "retryable", "times": 2, "delay_ms": 500 },
//!     "configure_gateway": { "fail": "fatal" },
//!     "register_manifest": { "compensation": "retryable", "compensation_times": 1 }
//! } }
//! ```
//!
//! - `fail`: `"fatal"` or `"retryable"`: the step's action fails.
//! - `times`: the faults strike attempts `1..=times` only (both `fail` and
//!   `delay_ms`); later attempts run clean. Without it they strike every
//!   attempt.
//! - `delay_ms`: sleep this long before acting (to exercise timeouts, or to
//!   give you time to kill a worker mid-step).
//! - `compensation`, `compensation_times`, `compensation_delay_ms`: the same
//!   for the step's compensation.
//!
//! Faults strike *before* the effect is applied, so a failed attempt has no
//! effect: the contract every handler must keep.

use jetsaga_worker::StepError;
use jetsaga_worker::protocol::TaskKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// How an injected failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// The attempt fails and the saga compensates.
    Fatal,
    /// The attempt fails and the engine retries it per the step's policy.
    Retryable,
}

/// Faults injected into one step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFaults {
    /// How the action fails, if it does.
    #[serde(default)]
    pub fail: Option<FailMode>,
    /// `fail` and `delay_ms` strike action attempts `1..=times`; `None` =
    /// every attempt.
    #[serde(default)]
    pub times: Option<u32>,
    /// Sleep before the action, in milliseconds.
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// How the compensation fails, if it does.
    #[serde(default)]
    pub compensation: Option<FailMode>,
    /// `compensation` and `compensation_delay_ms` strike compensation
    /// attempts `1..=compensation_times`; `None` = every attempt.
    #[serde(default)]
    pub compensation_times: Option<u32>,
    /// Sleep before the compensation, in milliseconds.
    #[serde(default)]
    pub compensation_delay_ms: Option<u64>,
}

/// What to do for one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Sleep this long first.
    pub delay: Option<Duration>,
    /// Then fail like this instead of applying the effect.
    pub fail: Option<FailMode>,
}

impl StepFaults {
    /// The decision for `attempt` (from 1) of the action or the compensation.
    pub fn decide(&self, kind: TaskKind, attempt: u32) -> Decision {
        let (mode, times, delay) = match kind {
            TaskKind::Action => (self.fail, self.times, self.delay_ms),
            TaskKind::Compensation => (
                self.compensation,
                self.compensation_times,
                self.compensation_delay_ms,
            ),
        };
        if times.is_some_and(|n| attempt > n) {
            return Decision::default();
        }
        Decision {
            delay: delay.filter(|ms| *ms > 0).map(Duration::from_millis),
            fail: mode,
        }
    }
}

/// Parses the `faults` object of a saga input. A missing or `null` `faults`
/// gives an empty map.
pub fn parse(input: &Value) -> Result<BTreeMap<String, StepFaults>, String> {
    match input.get("faults") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("invalid `faults`: {e}")),
    }
}

/// The decision for one attempt of `step_id` given the saga `input`.
pub fn decide(
    input: &Value,
    step_id: &str,
    kind: TaskKind,
    attempt: u32,
) -> Result<Decision, String> {
    let Some(spec) = input.get("faults").and_then(|f| f.get(step_id)) else {
        return Ok(Decision::default());
    };
    let faults: StepFaults = serde_json::from_value(spec.clone())
        .map_err(|e| format!("invalid `faults.{step_id}`: {e}"))?;
    Ok(faults.decide(kind, attempt))
}

/// Applies the faults the saga `input` asks for on this attempt: sleeps, then
/// returns the injected error, if any. A malformed spec is a fatal error, so
/// a typo in a demo is loud rather than silently ignored.
pub async fn inject(
    input: &Value,
    step_id: &str,
    kind: TaskKind,
    attempt: u32,
) -> Result<(), StepError> {
    let decision = decide(input, step_id, kind, attempt).map_err(StepError::fatal)?;
    if let Some(delay) = decision.delay {
        tracing::info!(step_id, %kind, attempt, ?delay, "injected delay");
        tokio::time::sleep(delay).await;
    }
    match decision.fail {
        None => Ok(()),
        Some(mode) => {
            tracing::info!(step_id, %kind, attempt, ?mode, "injected failure");
            let msg = format!(
                "injected {} failure of {step_id} {kind} (attempt {attempt})",
                match mode {
                    FailMode::Fatal => "fatal",
                    FailMode::Retryable => "retryable",
                }
            );
            Err(match mode {
                FailMode::Fatal => StepError::fatal(msg),
                FailMode::Retryable => StepError::retryable(msg),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn no_faults_means_no_decision() {
        assert_eq!(
            decide(&json!({}), "a", TaskKind::Action, 1).unwrap(),
            Decision::default()
        );
        assert_eq!(
            decide(
                &json!({"faults": {"b": {"fail": "fatal"}}}),
                "a",
                TaskKind::Action,
                1
            )
            .unwrap(),
            Decision::default()
        );
        assert!(parse(&json!({"faults": null})).unwrap().is_empty());
    }

    #[test]
    fn retryable_times_fails_first_attempts_only() {
        let input = json!({"faults": {"a": {"fail": "retryable", "times": 2}}});
        let at = |n| decide(&input, "a", TaskKind::Action, n).unwrap().fail;
        assert_eq!(at(1), Some(FailMode::Retryable));
        assert_eq!(at(2), Some(FailMode::Retryable));
        assert_eq!(at(3), None);
        // The compensation is untouched.
        assert_eq!(
            decide(&input, "a", TaskKind::Compensation, 1).unwrap().fail,
            None
        );
    }

    #[test]
    fn without_times_fails_always() {
        let input = json!({"faults": {"a": {"fail": "fatal"}}});
        for n in 1..10 {
            assert_eq!(
                decide(&input, "a", TaskKind::Action, n).unwrap().fail,
                Some(FailMode::Fatal)
            );
        }
    }

    #[test]
    fn compensation_faults_and_delays() {
        let input = json!({"faults": {"a": {
            "delay_ms": 250,
            "compensation": "retryable",
            "compensation_times": 1,
            "compensation_delay_ms": 5
        }}});
        let act = decide(&input, "a", TaskKind::Action, 1).unwrap();
        assert_eq!(act.delay, Some(Duration::from_millis(250)));
        assert_eq!(act.fail, None);
        let c1 = decide(&input, "a", TaskKind::Compensation, 1).unwrap();
        assert_eq!(c1.fail, Some(FailMode::Retryable));
        assert_eq!(c1.delay, Some(Duration::from_millis(5)));
        assert_eq!(
            decide(&input, "a", TaskKind::Compensation, 2).unwrap().fail,
            None
        );
        let all = parse(&input).unwrap();
        assert_eq!(all["a"].compensation, Some(FailMode::Retryable));
    }

    #[test]
    fn times_bounds_the_delay_too() {
        let input = json!({"faults": {"a": {"delay_ms": 11000, "times": 1}}});
        let at = |n| decide(&input, "a", TaskKind::Action, n).unwrap();
        assert_eq!(at(1).delay, Some(Duration::from_millis(11000)));
        assert_eq!(at(2), Decision::default());
        let comp = json!({"faults": {"a": {"compensation_delay_ms": 7, "compensation_times": 2}}});
        let c = |n| decide(&comp, "a", TaskKind::Compensation, n).unwrap();
        assert_eq!(c(2).delay, Some(Duration::from_millis(7)));
        assert_eq!(c(3), Decision::default());
        // Without `times` the delay strikes every attempt.
        let always = json!({"faults": {"a": {"delay_ms": 5}}});
        assert_eq!(
            decide(&always, "a", TaskKind::Action, 9).unwrap().delay,
            Some(Duration::from_millis(5))
        );
    }

    #[test]
    fn malformed_specs_are_errors() {
        let bad_mode = json!({"faults": {"a": {"fail": "sometimes"}}});
        assert!(decide(&bad_mode, "a", TaskKind::Action, 1).is_err());
        let typo = json!({"faults": {"a": {"fial": "fatal"}}});
        assert!(decide(&typo, "a", TaskKind::Action, 1).is_err());
        assert!(parse(&json!({"faults": [1]})).is_err());
    }

    #[tokio::test]
    async fn inject_returns_errors() {
        let input = json!({"faults": {"a": {"fail": "retryable", "times": 1}}});
        assert!(inject(&input, "a", TaskKind::Action, 1).await.is_err());
        assert!(inject(&input, "a", TaskKind::Action, 2).await.is_ok());
        assert!(inject(&json!({}), "a", TaskKind::Action, 1).await.is_ok());
    }
}
