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
    /// The breaker's latest transitions (up to 20), oldest first; omitted
    /// when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<BreakerTransition>,
}

/// One transition of a service's circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerTransition {
    /// When (ms since the Unix epoch).
    pub at: u64,
    /// The state it left: `closed`, `open`, `half_open`.
    pub from: String,
    /// The state it entered (the same as `from` when an operator forced
    /// the state it was in).
    pub to: String,
    /// Why: `failures` (the failure threshold was reached), `timeout` (the
    /// open timeout passed), `probe` (a probe's result), `reset` (an
    /// operator's reset), `forced` (an operator forced the state).
    pub cause: String,
}

/// Every service with a policy, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerList {
    /// Each service's breaker state, held and in-flight tasks, and policy.
    pub services: Vec<ServiceStatus>,
}

/// One service, as the console's services page shows it: how many tasks
/// wait for its workers, and its breaker and limits when a policy names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceOverview {
    /// Service name (the work queue).
    pub service: String,
    /// The current definitions with a step on it, by name.
    pub sagas: Vec<String>,
    /// Tasks in its work queue not yet acknowledged by a worker (delivered
    /// or not); `null` when NATS did not answer in time.
    pub queue_depth: Option<u64>,
    /// Its breaker, held and in-flight tasks, when a policy names it.
    pub status: Option<ServiceStatus>,
}

/// Every service of a current definition or policy, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceList {
    /// The services.
    pub services: Vec<ServiceOverview>,
}

/// Names one service (`breaker.get`, `breaker.reset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Service name.
    pub service: String,
}

/// The state `breaker.reset` puts a breaker in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ForcedState {
    /// Open from now: the service's tasks are held; it half-opens after its
    /// `open_timeout` like any open breaker.
    Open,
    /// Closed: held tasks are released (as the in-flight limit allows).
    Closed,
}

/// `breaker.reset`: close a service's breaker, or force it open or closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerReset {
    /// Service name.
    pub service: String,
    /// The state to force. Absent: a plain reset (closed, recorded as
    /// `reset`); present: that state, recorded as `forced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ForcedState>,
}

/// The optional body of `POST /v1/breakers/{service}/reset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerResetBody {
    /// The state to force: `open` or `closed`. Absent (or no body): a plain
    /// reset to closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ForcedState>,
}
