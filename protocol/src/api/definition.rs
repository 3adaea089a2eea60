//! Saga definitions and service policies as the request API shows them
//! (in a saga's detail, `def.list`, a validated definitions file). Durations
//! are milliseconds; dependencies are step indexes.
//!
//! These are the JSON form of what the engine stores; the files people
//! write (YAML or JSON with `30s`-style durations and named dependencies)
//! are read by the engine, which answers in this form.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A validated saga definition, one version of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaDefinition {
    /// Saga name (a subject token).
    pub name: String,
    /// Version, from 1; assigned by the store when the definition is applied.
    #[serde(default)]
    pub version: u32,
    /// Whole-saga timeout: when it passes, the saga compensates (milliseconds in JSON).
    pub timeout: Option<u64>,
    /// Steps in file order. Indexes into this vector are step indexes.
    pub steps: Vec<StepDefinition>,
    /// Subjects whose messages each start one saga (see `crate::triggers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Whether and where sagas of this definition may start.
    #[serde(default, skip_serializing_if = "SagaPolicy::is_default")]
    pub policy: SagaPolicy,
    /// Most sagas of this definition running (or compensating) at once;
    /// more starts wait in the durable start queue (`crate::limits`).
    /// Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Whether the step lifecycle events are published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step_events: bool,
}

impl SagaDefinition {
    /// Index of the step `id` (into [`steps`](Self::steps), and into a
    /// saga's `steps`, which follow the definition's order).
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepDefinition {
    /// Step id, unique within the saga (a subject token).
    pub id: String,
    /// Service, that is the work queue the step's tasks go to.
    pub service: String,
    /// Operation the worker runs for the action.
    pub operation: String,
    /// Operation the worker runs to undo the action, if any.
    pub compensation: Option<String>,
    /// Time one attempt may take before it counts as timed out (milliseconds in JSON).
    pub timeout: u64,
    /// Retry policy of both the action and the compensation.
    pub retry: RetryPolicy,
    /// Indexes of the steps this one depends on (into `SagaDefinition::steps`).
    pub depends_on: Vec<usize>,
}

/// How often and how far apart attempts are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetryPolicy {
    /// Attempts in all, including the first; at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt (milliseconds in JSON).
    pub initial_delay: u64,
    /// Upper bound of any delay (milliseconds in JSON).
    pub max_delay: u64,
    /// Factor by which the delay grows per attempt; at least 1.
    pub backoff_factor: f64,
    /// Relative jitter in `[0, 1]`: a delay `d` becomes a value in `[d(1-j), d(1+j)]`.
    pub jitter: f64,
}

/// A trigger of a saga definition: every message on `subject` starts one
/// saga, deduplicated by the event's id (see `crate::triggers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Trigger {
    /// NATS subject; `*` matches one token, a final `>` the rest.
    pub subject: String,
    /// Saga input field → where its value is in the message body: a JSON
    /// pointer (`/data/id`) or a dotted path (`data.id`). Absent: the input
    /// is the CloudEvent's `data` for a CloudEvent, else the whole body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<BTreeMap<String, String>>,
}

/// Whether and where sagas of a definition may start: capability by
/// design, optional by policy. Sagas already running are not affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaPolicy {
    /// `false`: no new saga of this definition starts, through any door.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// When not empty, new sagas start only in an engine whose configured
    /// `environment` is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for SagaPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            environments: Vec::new(),
        }
    }
}

impl SagaPolicy {
    /// Whether this is the default policy (enabled everywhere), which the
    /// JSON leaves out.
    pub fn is_default(&self) -> bool {
        *self == SagaPolicy::default()
    }
}

/// What the engine lets through to one service (`crate::admission`):
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerConfig {
    /// Consecutive failed attempts (error or timeout) that open it; at least 1.
    pub failure_threshold: u32,
    /// Successful probes in a row that close it again; at least 1.
    pub success_threshold: u32,
    /// How long it stays open before a probe goes out (milliseconds in JSON).
    pub open_timeout: u64,
}

/// Parsed and validated contents of one definition file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionFile {
    /// The file's sagas, sorted by name, each with `version` 0 (the store assigns versions).
    pub sagas: Vec<SagaDefinition>,
    /// The file's service policies (`services:`), sorted by service name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServicePolicy>,
}

/// One definition of a `def.list`: the definition (its fields at the top
/// level, so a client reading [`SagaDefinition`]s reads these too) and
/// whether its policy lets a saga start in this engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionListing {
    /// The definition's current version.
    #[serde(flatten)]
    pub definition: SagaDefinition,
    /// Whether a new saga of it may start in this engine (its `policy`
    /// against the engine's `environment`).
    pub enabled: bool,
    /// Why not, when not (the `E-SAGA-DISABLED` message a start gets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The engine's environment (`null`: none set).
    #[serde(default)]
    pub environment: Option<String>,
}

/// The current definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionList {
    /// The current version of every definition, by name, with whether its
    /// policy lets it start in this engine.
    pub definitions: Vec<DefinitionListing>,
}

/// The outcome of applying one definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppliedDefinition {
    /// Definition name.
    pub name: String,
    /// Current version.
    pub version: u32,
    /// Whether a new version was stored (`false`: identical to the current one).
    pub changed: bool,
}

/// What applying a definitions file did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppliedDefinitions {
    /// One entry per saga of the file, by name.
    pub applied: Vec<AppliedDefinition>,
}
