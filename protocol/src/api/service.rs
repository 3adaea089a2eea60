//! Services' circuit breakers and in-flight limits, as `breaker.*` and
//! `/v1/breakers` show them.

use super::definition::BreakerConfig;
use serde::{Deserialize, Serialize};

/// One service's breaker and limits, as `breaker status` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceStatus {
    /// Service name.
    pub service: String,
    /// Breaker state: `closed`, `open`, `half_open`, or `none` when the
    /// service has no circuit breaker configured.
    pub state: String,
    /// Consecutive failures counted (closed), or that opened it (open).
    pub failures: u32,
    /// Successful probes so far (half-open).
    pub successes: u32,
    /// Whether a half-open breaker's probe is out.
    pub probe_in_flight: bool,
    /// Since when the breaker is in its state (open, half-open; ms since the Unix epoch).
    pub since: Option<u64>,
    /// When an open breaker half-opens (ms since the Unix epoch).
    pub half_opens_at: Option<u64>,
    /// Tasks held for the service.
    pub held: usize,
    /// Tasks of the service dispatched and not ended.
    pub in_flight: u32,
    /// The service's limit of tasks in flight, if any.
    pub max_in_flight: Option<u32>,
    /// The breaker's configuration, if any.
    pub circuit_breaker: Option<BreakerConfig>,
}

/// Every service with a policy, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerList {
    /// Each service's breaker state, held and in-flight tasks, and policy.
    pub services: Vec<ServiceStatus>,
}

/// Names one service (`breaker.get`, `breaker.reset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Service name.
    pub service: String,
}
