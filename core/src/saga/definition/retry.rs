//! Retry policies: the model, its backoff arithmetic, and how a step's
//! `retry` (a policy name, an inline policy or nothing) is resolved.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use super::duration::{Human, RawDuration, check_duration, humantime_millis, resolve_duration};
use super::entries::Entries;
use super::error::{DefinitionError, Place};

/// Name of the retry policy steps without a `retry` field use, when the file defines it.
pub const DEFAULT_POLICY_NAME: &str = "default";

/// The shortest wait before a retry, whatever the policy's delays and the
/// worker's `retry_after_ms`: a policy of zero delays with a huge
/// `max_attempts` retries ten times a second at most instead of spinning.
/// (A timed-out attempt is re-dispatched at once: the step's timeout paced it.)
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How often and how far apart attempts are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt (milliseconds in JSON).
    #[serde(with = "humantime_millis")]
    pub initial_delay: Duration,
    /// Upper bound of any delay (milliseconds in JSON).
    #[serde(with = "humantime_millis")]
    pub max_delay: Duration,
    /// Factor by which the delay grows per attempt; at least 1.
    pub backoff_factor: f64,
    /// Relative jitter in `[0, 1]`: a delay `d` becomes a value in `[d(1-j), d(1+j)]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            backoff_factor: 2.0,
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next_attempt` (2 for the first retry),
    /// given `sample` drawn uniformly from `[0, 1)`. Pure: randomness comes in.
    ///
    /// The jittered delay is uniform in `[d(1-j), min(d(1+j), max_delay)]`
    /// where `d` is the capped exponential delay, so delays at the cap stay
    /// spread out instead of piling up on `max_delay`. Never panics, even for
    /// a policy that was not validated (NaN or infinite factors, huge delays).
    pub fn delay(&self, next_attempt: u32, sample: f64) -> Duration {
        let max = self.max_delay.as_secs_f64();
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let factor = if self.backoff_factor.is_nan() {
            1.0
        } else {
            self.backoff_factor
        };
        let base = self.initial_delay.as_secs_f64() * factor.powi(exp);
        // 0 * inf is NaN: a zero initial delay stays zero.
        let base = if base.is_nan() {
            0.0
        } else {
            base.clamp(0.0, max)
        };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.5
        };
        let low = base * (1.0 - jitter);
        let high = (base * (1.0 + jitter)).min(max);
        let secs = (low + sample * (high - low)).clamp(0.0, max);
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_delay)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    /// Wider than the model's `u32` so that a negative count is reported
    /// by validation, naming the field, rather than as a bare type error.
    #[serde(default)]
    max_attempts: Option<i64>,
    #[serde(default)]
    initial_delay: Option<RawDuration>,
    #[serde(default)]
    max_delay: Option<RawDuration>,
    #[serde(default)]
    backoff_factor: Option<f64>,
    #[serde(default)]
    jitter: Option<f64>,
}

/// A step's `retry`: a policy name or an inline policy.
#[derive(Debug)]
pub(super) enum RawRetry {
    Named(String),
    Inline(RawPolicy),
}

impl<'de> Deserialize<'de> for RawRetry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RetryVisitor;
        impl<'de> Visitor<'de> for RetryVisitor {
            type Value = RawRetry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a retry policy name or an inline retry policy map")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawRetry::Named(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawPolicy::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawRetry::Inline)
            }
        }
        d.deserialize_any(RetryVisitor)
    }
}

/// A file's `retry_policies`, each checked once, for its steps to use.
pub(super) struct RetryContext {
    /// Valid policies by name; `None` for a policy that failed validation,
    /// so steps using it do not repeat its errors.
    policies: HashMap<String, Option<RetryPolicy>>,
    /// Policy names in file order, for error messages.
    names: Vec<String>,
}

impl RetryContext {
    /// Checks the file's policies, pushing their problems to `errs`.
    pub(super) fn new(
        file: &Place,
        raw: Option<Entries<RawPolicy>>,
        errs: &mut Vec<DefinitionError>,
    ) -> Self {
        let mut policies = HashMap::new();
        let mut names = Vec::new();
        for (name, raw_policy) in raw.map(|e| e.0).unwrap_or_default() {
            let resolved = resolve_policy(&file.policy(&name), "", raw_policy, errs);
            names.push(name.clone());
            policies.insert(name, resolved);
        }
        RetryContext { policies, names }
    }

    /// The policy a step uses; `None` if it is invalid (errors pushed or already reported).
    pub(super) fn resolve(
        &self,
        place: &Place,
        retry: Option<RawRetry>,
        errs: &mut Vec<DefinitionError>,
    ) -> Option<RetryPolicy> {
        match retry {
            None => match self.policies.get(DEFAULT_POLICY_NAME) {
                Some(policy) => policy.clone(),
                None => Some(RetryPolicy::default()),
            },
            Some(RawRetry::Named(name)) => match self.policies.get(&name) {
                Some(policy) => policy.clone(),
                None => {
                    errs.push(DefinitionError::UnknownPolicy {
                        place: Box::new(place.field("retry")),
                        name,
                        known: self.names.clone(),
                    });
                    None
                }
            },
            Some(RawRetry::Inline(raw)) => resolve_policy(place, "retry.", raw, errs),
        }
    }
}

/// Builds a policy from its raw form (missing fields from
/// [`RetryPolicy::default`]) and checks it; `None` if invalid.
fn resolve_policy(
    place: &Place,
    prefix: &str,
    raw: RawPolicy,
    errs: &mut Vec<DefinitionError>,
) -> Option<RetryPolicy> {
    let before = errs.len();
    let defaults = RetryPolicy::default();
    let mut delay = |field: &str, raw: Option<RawDuration>, default: Duration| match raw {
        None => Some(default),
        Some(raw) => resolve_duration(&place.field(&format!("{prefix}{field}")), raw, true, errs),
    };
    let initial_delay = delay("initial_delay", raw.initial_delay, defaults.initial_delay);
    let max_delay = delay("max_delay", raw.max_delay, defaults.max_delay);
    let max_attempts = match raw.max_attempts.map(u32::try_from) {
        None => Some(defaults.max_attempts),
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            errs.push(DefinitionError::InvalidRetry {
                place: Box::new(place.field(&format!("{prefix}max_attempts"))),
                reason: format!(
                    "must be between 1 and {}, got {}",
                    u32::MAX,
                    raw.max_attempts.unwrap_or_default()
                ),
            });
            None
        }
    };
    let (Some(initial_delay), Some(max_delay), Some(max_attempts)) =
        (initial_delay, max_delay, max_attempts)
    else {
        return None;
    };
    let policy = RetryPolicy {
        max_attempts,
        initial_delay,
        max_delay,
        backoff_factor: raw.backoff_factor.unwrap_or(defaults.backoff_factor),
        jitter: raw.jitter.unwrap_or(defaults.jitter),
    };
    check_policy(place, prefix, &policy, errs);
    (errs.len() == before).then_some(policy)
}

/// Checks the ranges of a built policy; field names are `prefix` + field.
pub(super) fn check_policy(
    place: &Place,
    prefix: &str,
    p: &RetryPolicy,
    errs: &mut Vec<DefinitionError>,
) {
    let mut bad = |field: &str, reason: String| {
        errs.push(DefinitionError::InvalidRetry {
            place: Box::new(place.field(&format!("{prefix}{field}"))),
            reason,
        })
    };
    if p.max_attempts < 1 {
        bad(
            "max_attempts",
            format!(
                "must be at least 1 (the first attempt counts), got {}",
                p.max_attempts
            ),
        );
    }
    if !(p.backoff_factor.is_finite() && p.backoff_factor >= 1.0) {
        bad(
            "backoff_factor",
            format!(
                "must be a finite number of at least 1, got {}",
                p.backoff_factor
            ),
        );
    }
    if !(p.jitter.is_finite() && (0.0..=1.0).contains(&p.jitter)) {
        bad(
            "jitter",
            format!("must be between 0 and 1, got {}", p.jitter),
        );
    }
    let delays_ok = [
        ("initial_delay", p.initial_delay),
        ("max_delay", p.max_delay),
    ]
    .into_iter()
    .all(|(field, d)| {
        let mut found = Vec::new();
        let ok = check_duration(
            &place.field(&format!("{prefix}{field}")),
            d,
            true,
            &mut found,
        );
        errs.append(&mut found);
        ok
    });
    if delays_ok && p.initial_delay > p.max_delay {
        errs.push(DefinitionError::InvalidRetry {
            place: Box::new(place.field(&format!("{prefix}initial_delay"))),
            reason: format!(
                "must not exceed max_delay ({}), got {}",
                Human(p.max_delay),
                Human(p.initial_delay)
            ),
        });
    }
}
