//! Service policies (`services:`): circuit breakers and in-flight limits.

use jetsaga_protocol::validate_token;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use super::REQUEST_SOURCE;
use super::duration::{RawDuration, check_duration, humantime_millis, resolve_duration};
use super::entries::Entries;
use super::error::{DefinitionError, Place};

/// `circuit_breaker.failure_threshold` when a file leaves it out.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// `circuit_breaker.success_threshold` when a file leaves it out.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// `circuit_breaker.open_timeout` when a file leaves it out.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the engine lets through to one service ([`crate::admission`]):
///
/// ```yaml
/// services:
///   payments:
///     max_in_flight: 8          # optional: no limit when absent
///     circuit_breaker:          # optional: no breaker when absent
///       failure_threshold: 5    # consecutive failures that open it (default 5)
///       success_threshold: 2    # successful probes that close it (default 1)
///       open_timeout: 30s       # open this long before a probe (default 30s)
/// ```
///
/// A policy is stored per service; applying a file that names a service
/// replaces that service's policy (latest applied wins), services it does
/// not name keep theirs. A service written with no fields (`payments: {}`)
/// clears its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePolicy {
    /// Service name (the work queue; a subject token).
    pub service: String,
    /// Most tasks of the service dispatched and not ended; more are held
    /// durably and dispatched in order as room frees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// The service's circuit breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerConfig>,
}

/// A service's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerConfig {
    /// Consecutive failed attempts (error or timeout) that open it; at least 1.
    pub failure_threshold: u32,
    /// Successful probes in a row that close it again; at least 1.
    pub success_threshold: u32,
    /// How long it stays open before a probe goes out (milliseconds in JSON).
    #[serde(with = "humantime_millis")]
    pub open_timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    /// Wide, so that a negative or zero limit is reported naming the field.
    #[serde(default)]
    max_in_flight: Option<i64>,
    #[serde(default)]
    circuit_breaker: Option<RawBreaker>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default)]
    failure_threshold: Option<i64>,
    #[serde(default)]
    success_threshold: Option<i64>,
    #[serde(default)]
    open_timeout: Option<RawDuration>,
}

pub(super) fn build_services(
    source_name: &str,
    raw: Option<Entries<RawService>>,
    errs: &mut Vec<DefinitionError>,
) -> Vec<ServicePolicy> {
    let mut out = Vec::new();
    for (service, raw) in raw.map(|e| e.0).unwrap_or_default() {
        let mut problems = Vec::new();
        let mut bad = |field: &str, reason: String| {
            problems.push(DefinitionError::InvalidService {
                source_name: source_name.to_owned(),
                service: service.clone(),
                field: field.to_owned(),
                reason,
            })
        };
        if let Err(reason) = validate_token(&service) {
            bad("name", format!("invalid service name: {reason}"));
        }
        let count =
            |field: &str, value: i64, bad: &mut dyn FnMut(&str, String)| match u32::try_from(value)
            {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    bad(
                        field,
                        format!(
                            "{value} is out of range; use a whole number from 1 to {}",
                            u32::MAX
                        ),
                    );
                    None
                }
            };
        let max_in_flight = raw
            .max_in_flight
            .and_then(|v| count("max_in_flight", v, &mut bad));
        let circuit_breaker = raw.circuit_breaker.map(|b| {
            let failure_threshold = b
                .failure_threshold
                .map_or(Some(DEFAULT_FAILURE_THRESHOLD), |v| {
                    count("circuit_breaker.failure_threshold", v, &mut bad)
                });
            let success_threshold = b
                .success_threshold
                .map_or(Some(DEFAULT_SUCCESS_THRESHOLD), |v| {
                    count("circuit_breaker.success_threshold", v, &mut bad)
                });
            let open_timeout = match b.open_timeout {
                None => Some(DEFAULT_OPEN_TIMEOUT),
                Some(raw) => {
                    let mut duration_errs = Vec::new();
                    let place = Place::new(source_name).field("circuit_breaker.open_timeout");
                    let d = resolve_duration(&place, raw, false, &mut duration_errs);
                    for e in duration_errs {
                        let reason = match e {
                            DefinitionError::InvalidDuration { reason, .. } => reason,
                            other => other.to_string(),
                        };
                        bad("circuit_breaker.open_timeout", reason);
                    }
                    d
                }
            };
            (failure_threshold, success_threshold, open_timeout)
        });
        if !problems.is_empty() {
            errs.extend(problems);
            continue;
        }
        let circuit_breaker = match circuit_breaker {
            Some((Some(failure_threshold), Some(success_threshold), Some(open_timeout))) => {
                Some(BreakerConfig {
                    failure_threshold,
                    success_threshold,
                    open_timeout,
                })
            }
            _ => None,
        };
        out.push(ServicePolicy {
            service,
            max_in_flight,
            circuit_breaker,
        });
    }
    out.sort_by(|a, b| a.service.cmp(&b.service));
    out
}

/// Re-validates service policies that arrived already built (over the
/// wire); errors name the source `request`.
pub fn validate_services(services: &[ServicePolicy]) -> Result<(), DefinitionError> {
    let mut errs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in services {
        let mut bad = |field: &str, reason: String| {
            errs.push(DefinitionError::InvalidService {
                source_name: REQUEST_SOURCE.to_owned(),
                service: p.service.clone(),
                field: field.to_owned(),
                reason,
            })
        };
        if let Err(reason) = validate_token(&p.service) {
            bad("name", format!("invalid service name: {reason}"));
        }
        if !seen.insert(p.service.as_str()) {
            bad("name", "the service is named twice".into());
        }
        if p.max_in_flight == Some(0) {
            bad("max_in_flight", "0 is out of range; use at least 1".into());
        }
        if let Some(b) = &p.circuit_breaker {
            if b.failure_threshold == 0 {
                bad(
                    "circuit_breaker.failure_threshold",
                    "0 is out of range; use at least 1".into(),
                );
            }
            if b.success_threshold == 0 {
                bad(
                    "circuit_breaker.success_threshold",
                    "0 is out of range; use at least 1".into(),
                );
            }
            let place = Place::new(REQUEST_SOURCE).field("circuit_breaker.open_timeout");
            let mut duration_errs = Vec::new();
            if !check_duration(&place, b.open_timeout, false, &mut duration_errs) {
                for e in duration_errs {
                    bad("circuit_breaker.open_timeout", e.to_string());
                }
            }
        }
    }
    DefinitionError::collect(errs)
}
