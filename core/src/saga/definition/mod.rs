//! Saga definitions: the validated, self-contained shape the engine runs.
//!
//! Users write definition files in YAML or JSON; both have the same shape:
//!
//! ```yaml
//! sagas:
//!   deploy_environment:
//!     timeout: 10m                 # optional: no saga timeout when absent
//!     triggers:                    # optional: each message on a subject starts one saga
//!       - subject: deployments.requested
//!         input: { environment: /data/environment }  # optional: field -> JSON pointer / dotted path
//!     policy: { environments: [staging, production] } # optional: or { enabled: false }
//!     steps:
//!       - id: register_manifest
//!         service: manifest        # the work queue
//!         operation: register
//!         compensation: deregister # optional
//!         timeout: 30s             # optional, default 30s
//!         retry: default           # a policy name, an inline policy, or absent
//!       - id: deploy_containers
//!         service: container-engine
//!         operation: deploy
//!         compensation: stop
//!         timeout: 2m
//!         depends_on: [register_manifest]
//!         retry: { max_attempts: 3, initial_delay: 500ms, max_delay: 10s, backoff_factor: 2, jitter: 0.1 }
//! retry_policies:                  # optional
//!   default: { max_attempts: 5, initial_delay: 1s, max_delay: 60s, backoff_factor: 2, jitter: 0.1 }
//! ```
//!
//! [`parse_file`] / [`parse_str`] read such a file into private serde structs
//! (unknown fields rejected) and validate them into [`SagaDefinition`]s in
//! which every retry policy is resolved inline, every duration is a
//! [`Duration`] and every dependency is a step index, so a stored definition
//! version never depends on anything else. [`validate`] re-checks a
//! definition that arrives already built (over the wire).
//!
//! Validation reports every problem of a file at once ([`DefinitionError::Many`]),
//! each naming the file, saga, step and field. Error codes are stable:
//!
//! | code | meaning |
//! |------|---------|
//! | `E-DEF-IO` | the file cannot be read |
//! | `E-DEF-PARSE` | the parser rejected the text: syntax, wrong type, unknown or missing field, duplicate key |
//! | `E-DEF-EMPTY` | no sagas in the file, or a saga without steps |
//! | `E-DEF-NAME` | a saga name, step id, service or operation is not a valid subject token |
//! | `E-DEF-DURATION` | a duration cannot be parsed, is zero where it must be positive, or is out of range |
//! | `E-DEF-RETRY` | a retry policy field is out of range |
//! | `E-DEF-UNKNOWN-POLICY` | a step names a retry policy the file does not define |
//! | `E-DEF-DUPLICATE-STEP` | two steps of a saga share an id |
//! | `E-DEF-UNKNOWN-DEPENDENCY` | `depends_on` names a step that does not exist |
//! | `E-DEF-CYCLE` | the dependencies form a cycle (a step depending on itself included) |
//! | `E-DEF-TRIGGER` | a trigger's subject is not a valid NATS subject, a system subject or inbox, a subject of any installation's engine (`<prefix>.task.…`), is repeated, or its `input` mapping has an empty field name or an invalid JSON pointer / dotted path |
//! | `E-DEF-POLICY` | a saga `policy` lists no environment, an invalid one, or one twice |
//! | `E-DEF-LIMIT` | `max_running` is not a positive whole number |
//! | `E-DEF-SERVICE` | a service policy under `services:` is invalid (see [`ServicePolicy`]) |
//! | `E-DEF-TOO-LARGE` | a saga has more steps, or a fan-out wider, than [`DefinitionLimits`] allow, or the file is larger |
//! | `E-DEF-MANY` | several of the above; see [`DefinitionError::errors`] |
//!
//! The model is defined here; the rest is split by concern: `parse` (text
//! to the raw serde shape), `build` (raw shape to model), `validate` (checks
//! shared with re-validation), `limits` (size limits), `duration`, `retry`, `trigger`, `policy` (a
//! saga's `policy`), `service` (`services:`) and `error`.

mod build;
mod duration;
mod entries;
mod error;
mod limits;
mod parse;
mod policy;
mod raw;
mod retry;
mod service;
mod trigger;
mod validate;

#[cfg(test)]
mod tests;

pub use duration::MAX_DURATION;
pub use error::{DefinitionError, Place};
pub use limits::{
    DEFAULT_MAX_FAN_OUT, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_STEPS, DefinitionLimits,
};
pub use parse::{Format, parse_file, parse_file_within, parse_str, parse_str_within, yaml_options};
pub use policy::SagaPolicy;
pub use retry::{DEFAULT_POLICY_NAME, MIN_RETRY_DELAY, RetryPolicy};
pub use service::{
    BreakerConfig, DEFAULT_FAILURE_THRESHOLD, DEFAULT_OPEN_TIMEOUT, DEFAULT_SUCCESS_THRESHOLD,
    ServicePolicy, validate_services,
};
pub use trigger::{Trigger, input_pointer, validate_trigger_subject};
pub use validate::{validate, validate_in, validate_within};

use duration::humantime_millis;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A validated saga definition, one version of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDefinition {
    /// Saga name (a subject token).
    pub name: String,
    /// Version, from 1; assigned by the store when the definition is applied.
    #[serde(default)]
    pub version: u32,
    /// Whole-saga timeout: when it passes, the saga compensates (milliseconds in JSON).
    #[serde(with = "humantime_millis::option")]
    pub timeout: Option<Duration>,
    /// Steps in file order. Indexes into this vector are step indexes.
    pub steps: Vec<StepDefinition>,
    /// Subjects whose messages each start one saga (see the engine's `triggers` module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Whether and where sagas of this definition may start.
    #[serde(default, skip_serializing_if = "SagaPolicy::is_default")]
    pub policy: SagaPolicy,
    /// Most sagas of this definition running (or compensating) at once;
    /// more starts wait in the durable start queue ([`crate::limits`]).
    /// Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    /// Whether the step-level lifecycle events (`step.succeeded`,
    /// `step.retrying`, `step.failed`, `step.compensated`,
    /// `step.compensation_failed`) are published; the saga-level ones
    /// always are. Off by default: each is one more message stored per
    /// step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub step_events: bool,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(with = "humantime_millis")]
    pub timeout: Duration,
    /// Retry policy of both the action and the compensation.
    pub retry: RetryPolicy,
    /// Indexes of the steps this one depends on (into `SagaDefinition::steps`).
    pub depends_on: Vec<usize>,
}

impl SagaDefinition {
    /// Index of the step with id `id`.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// Step timeout used when a step does not set one.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Source name [`validate`] uses in its errors.
pub const REQUEST_SOURCE: &str = "request";

/// Parsed and validated contents of one definition file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionFile {
    /// The file's sagas, sorted by name, each with `version` 0 (the store assigns versions).
    pub sagas: Vec<SagaDefinition>,
    /// The file's service policies (`services:`), sorted by service name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServicePolicy>,
}

impl DefinitionFile {
    /// The validated definitions as JSON (durations in milliseconds,
    /// dependencies as step indexes): `{"sagas": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
