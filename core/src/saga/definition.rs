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
//! | `E-DEF-TRIGGER` | a trigger's subject is not a valid NATS subject, is repeated, or its `input` mapping has an empty field name or an invalid JSON pointer / dotted path |
//! | `E-DEF-POLICY` | a saga `policy` lists no environment, an invalid one, or one twice |
//! | `E-DEF-LIMIT` | `max_running` is not a positive whole number |
//! | `E-DEF-SERVICE` | a service policy under `services:` is invalid (see [`ServicePolicy`]) |
//! | `E-DEF-MANY` | several of the above; see [`DefinitionError::errors`] |

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use jetsaga_protocol::validate_token;

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
    /// Subjects whose messages each start one saga (see [`crate::triggers`]).
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

impl SagaDefinition {
    /// Index of the step with id `id`.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// Serde helpers storing durations as integer milliseconds.
pub(crate) mod humantime_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    fn millis(d: &Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(millis(d))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&super::millis(d)),
                None => s.serialize_none(),
            }
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
        }
    }
}

// ---------------------------------------------------------------------------
// Public parsing API
// ---------------------------------------------------------------------------

/// Step timeout used when a step does not set one.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest duration a definition may contain (365 days), so that timer
/// arithmetic (`now + timeout`) elsewhere can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Source name [`validate`] uses in its errors.
pub const REQUEST_SOURCE: &str = "request";

/// Name of the retry policy steps without a `retry` field use, when the file defines it.
pub const DEFAULT_POLICY_NAME: &str = "default";

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

/// Syntax of a definition file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// YAML 1.2 (a single document).
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format named by `path`'s extension (`.yaml`, `.yml`, `.json`, any case).
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// Guesses the format of `text`: JSON if its first non-blank character is `{`, else YAML.
    pub fn sniff(text: &str) -> Format {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('{') {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

/// Reads, parses and validates the definition file at `path`.
///
/// The format follows the extension (`.yaml`, `.yml`, `.json`); any other
/// file is sniffed with [`Format::sniff`]. Errors name the file as `path` displays.
pub fn parse_file(path: &Path) -> Result<DefinitionFile, DefinitionError> {
    let source_name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| DefinitionError::Io {
        source_name: source_name.clone(),
        error,
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = &bytes[..e.valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() as u64 + 1;
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count() as u64
                + 1;
            return Err(DefinitionError::Parse {
                source_name,
                line: Some(line),
                column: Some(column),
                message: "the file is not valid UTF-8; save it as UTF-8".into(),
            });
        }
    };
    let format = Format::from_path(path).unwrap_or_else(|| Format::sniff(text));
    parse_str(&source_name, text, format)
}

/// Parses and validates definition `text` in `format`; `source_name` (a file
/// name, say) prefixes every error message.
pub fn parse_str(
    source_name: &str,
    text: &str,
    format: Format,
) -> Result<DefinitionFile, DefinitionError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw = match format {
        Format::Yaml => parse_yaml(source_name, text)?,
        Format::Json => parse_json(source_name, text)?,
    };
    build_file(source_name, raw)
}

/// Re-validates a definition that arrived already built (for example in a
/// request to the engine); errors name the source `request`.
///
/// Checks everything file validation checks that survives in the built
/// shape: names are tokens, at least one step, unique step ids, durations
/// positive and at most [`MAX_DURATION`], retry policies in range,
/// dependencies in range and acyclic.
pub fn validate(def: &SagaDefinition) -> Result<(), DefinitionError> {
    validate_in(REQUEST_SOURCE, def)
}

/// Like [`validate`], with errors naming `source_name`.
pub fn validate_in(source_name: &str, def: &SagaDefinition) -> Result<(), DefinitionError> {
    let mut errs = Vec::new();
    let saga = Place::new(source_name).saga(&def.name);
    check_token(&saga, "saga name", &def.name, &mut errs);
    if let Some(timeout) = def.timeout {
        check_duration(&saga.field("timeout"), timeout, false, &mut errs);
    }
    if def.steps.is_empty() {
        errs.push(no_steps(&saga));
    }
    let mut first_by_id: HashMap<&str, usize> = HashMap::new();
    for (i, step) in def.steps.iter().enumerate() {
        let place = saga.step(step_label(&step.id, i));
        check_token(&place.field("id"), "step id", &step.id, &mut errs);
        if let Some(&first) = first_by_id.get(step.id.as_str()) {
            errs.push(duplicate_step(&place, &step.id, first, i));
        } else {
            first_by_id.insert(&step.id, i);
        }
        check_step_names(
            &place,
            &step.service,
            &step.operation,
            step.compensation.as_deref(),
            &mut errs,
        );
        check_duration(&place.field("timeout"), step.timeout, false, &mut errs);
        check_policy(&place, "retry.", &step.retry, &mut errs);
        for &dep in &step.depends_on {
            if dep >= def.steps.len() {
                errs.push(DefinitionError::DependencyOutOfRange {
                    place: Box::new(place.field("depends_on")),
                    index: dep,
                    steps: def.steps.len(),
                });
            }
        }
    }
    let deps: Vec<Vec<usize>> = def.steps.iter().map(|s| s.depends_on.clone()).collect();
    let labels: Vec<String> = def
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_label(&s.id, i))
        .collect();
    if let Some(cycle) = find_cycle(&deps) {
        errs.push(cycle_error(&saga, &cycle, &labels));
    }
    check_triggers(&saga, &def.triggers, &mut errs);
    check_saga_policy(&saga, &def.policy, &mut errs);
    if def.max_running == Some(0) {
        errs.push(invalid_limit(&saga, "0"));
    }
    DefinitionError::collect(errs)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Where in a definition a problem is: source, then saga, step or retry
/// policy, then field. Displays as ``file.yaml: saga `s`, step `t`: field `timeout` ``.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Place {
    /// The file name (or `request` for a definition sent to the engine).
    pub source_name: String,
    /// The saga, if the problem is inside one.
    pub saga: Option<String>,
    /// The step's id (or `#n`, its 1-based position, when the id itself is invalid).
    pub step: Option<String>,
    /// The file-level retry policy, if the problem is inside one.
    pub policy: Option<String>,
    /// The field, as a dotted path relative to the saga, step or policy (`retry.jitter`).
    pub field: Option<String>,
}

impl Place {
    fn new(source_name: &str) -> Self {
        Place {
            source_name: source_name.to_owned(),
            ..Place::default()
        }
    }
    fn saga(&self, name: &str) -> Self {
        Place {
            saga: Some(name.to_owned()),
            ..self.clone()
        }
    }
    fn step(&self, label: String) -> Self {
        Place {
            step: Some(label),
            ..self.clone()
        }
    }
    fn policy(&self, name: &str) -> Self {
        Place {
            policy: Some(name.to_owned()),
            ..self.clone()
        }
    }
    fn field(&self, field: &str) -> Self {
        Place {
            field: Some(field.to_owned()),
            ..self.clone()
        }
    }
}

/// Writes a user-supplied name with control characters escaped,
/// so one error stays on one line whatever the input.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source_name)?;
        let mut sep = ": ";
        if let Some(saga) = &self.saga {
            write!(f, "{sep}saga `{}`", Escaped(saga))?;
            sep = ", ";
        }
        if let Some(step) = &self.step {
            write!(f, "{sep}step `{}`", Escaped(step))?;
            sep = ", ";
        }
        if let Some(policy) = &self.policy {
            write!(f, "{sep}retry policy `{}`", Escaped(policy))?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        Ok(())
    }
}

/// Why a definition was rejected; [`DefinitionError::code`] gives a stable code.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// The file could not be read (`E-DEF-IO`).
    #[error("{source_name}: cannot read the file: {error}")]
    Io {
        /// The file.
        source_name: String,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// The YAML or JSON parser rejected the text (`E-DEF-PARSE`): a syntax
    /// error, a value of the wrong type, an unknown or missing field, a duplicate key.
    #[error("{source_name}: {}{message}", position(*line, *column))]
    Parse {
        /// The file.
        source_name: String,
        /// 1-based line of the problem, when the parser knows it.
        line: Option<u64>,
        /// 1-based column of the problem, when the parser knows it.
        column: Option<u64>,
        /// The parser's message.
        message: String,
    },
    /// The file defines no saga, or a saga has no steps (`E-DEF-EMPTY`).
    #[error("{place}: {reason}")]
    Empty {
        /// Where.
        place: Box<Place>,
        /// What is missing.
        reason: String,
    },
    /// A saga name, step id, service, operation or compensation is not a
    /// valid subject token (`E-DEF-NAME`).
    #[error("{place}: invalid {what}: {reason}")]
    InvalidName {
        /// Where.
        place: Box<Place>,
        /// Which kind of name (`saga name`, `step id`, `service`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration is unparsable, zero where it must be positive, not a whole
    /// number of milliseconds, or longer than [`MAX_DURATION`] (`E-DEF-DURATION`).
    #[error("{place}: {reason}")]
    InvalidDuration {
        /// Where.
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A retry policy field is out of range (`E-DEF-RETRY`).
    #[error("{place}: {reason}")]
    InvalidRetry {
        /// Where.
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A step names a retry policy the file does not define (`E-DEF-UNKNOWN-POLICY`).
    #[error(
        "{place}: unknown retry policy `{}` ({})",
        Escaped(name),
        known_list("retry_policies", known)
    )]
    UnknownPolicy {
        /// Where.
        place: Box<Place>,
        /// The name used.
        name: String,
        /// The policies the file defines, in file order.
        known: Vec<String>,
    },
    /// Two steps of a saga share an id (`E-DEF-DUPLICATE-STEP`); positions are 1-based.
    #[error(
        "{place}: duplicate step id `{}`: steps #{first} and #{second} both use it; step ids must be unique within a saga",
        Escaped(id)
    )]
    DuplicateStep {
        /// Where (the second step).
        place: Box<Place>,
        /// The id.
        id: String,
        /// 1-based position of the first step with this id.
        first: usize,
        /// 1-based position of the later step with this id.
        second: usize,
    },
    /// `depends_on` names a step the saga does not have (`E-DEF-UNKNOWN-DEPENDENCY`).
    #[error(
        "{place}: unknown step `{}` ({})",
        Escaped(dependency),
        known_list("steps", known)
    )]
    UnknownDependency {
        /// Where.
        place: Box<Place>,
        /// The step id named.
        dependency: String,
        /// The saga's step ids, in file order.
        known: Vec<String>,
    },
    /// A built definition's `depends_on` holds an index past its last step
    /// (`E-DEF-UNKNOWN-DEPENDENCY`).
    #[error("{place}: step index {index} is out of range (the saga has {steps} steps)")]
    DependencyOutOfRange {
        /// Where.
        place: Box<Place>,
        /// The index.
        index: usize,
        /// How many steps the saga has.
        steps: usize,
    },
    /// The dependencies form a cycle (`E-DEF-CYCLE`). `path` reads "depends
    /// on" from left to right and ends where it starts: `a -> b -> a`.
    #[error("{place}: dependency cycle {}; remove one of these dependencies", path.iter().map(|s| Escaped(s).to_string()).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// Where (the saga).
        place: Box<Place>,
        /// Step ids along the cycle, first repeated at the end.
        path: Vec<String>,
    },
    /// A trigger is invalid (`E-DEF-TRIGGER`): its subject, or its `input` mapping.
    #[error("{place}: {reason}")]
    InvalidTrigger {
        /// Where (`triggers[i].subject`, `triggers[i].input.<field>`).
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A saga `policy` is invalid (`E-DEF-POLICY`).
    #[error("{place}: {reason}")]
    InvalidSagaPolicy {
        /// Where (`policy.environments`).
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// `max_running` is not a positive whole number (`E-DEF-LIMIT`).
    #[error("{place}: {reason}")]
    InvalidLimit {
        /// Where (`max_running`).
        place: Box<Place>,
        /// What is wrong with it.
        reason: String,
    },
    /// A service policy under `services:` is invalid (`E-DEF-SERVICE`).
    #[error(
        "{source_name}: service `{}`: field `{field}`: {reason}",
        Escaped(service)
    )]
    InvalidService {
        /// The file.
        source_name: String,
        /// The service.
        service: String,
        /// The field (`max_in_flight`, `circuit_breaker.open_timeout`, ...).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Several problems, in file order (`E-DEF-MANY`); displays one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<DefinitionError>),
}

fn position(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l} column {c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    }
}

fn known_list(what: &str, known: &[String]) -> String {
    const SHOWN: usize = 20;
    if known.is_empty() {
        return format!("no {what} are defined");
    }
    let mut list: Vec<String> = known
        .iter()
        .take(SHOWN)
        .map(|k| Escaped(k).to_string())
        .collect();
    if known.len() > SHOWN {
        list.push(format!("and {} more", known.len() - SHOWN));
    }
    format!("known: {}", list.join(", "))
}

impl DefinitionError {
    /// Stable code of this error, such as `E-DEF-CYCLE` (see the module docs).
    pub fn code(&self) -> &'static str {
        match self {
            DefinitionError::Io { .. } => "E-DEF-IO",
            DefinitionError::Parse { .. } => "E-DEF-PARSE",
            DefinitionError::Empty { .. } => "E-DEF-EMPTY",
            DefinitionError::InvalidName { .. } => "E-DEF-NAME",
            DefinitionError::InvalidDuration { .. } => "E-DEF-DURATION",
            DefinitionError::InvalidRetry { .. } => "E-DEF-RETRY",
            DefinitionError::UnknownPolicy { .. } => "E-DEF-UNKNOWN-POLICY",
            DefinitionError::DuplicateStep { .. } => "E-DEF-DUPLICATE-STEP",
            DefinitionError::UnknownDependency { .. }
            | DefinitionError::DependencyOutOfRange { .. } => "E-DEF-UNKNOWN-DEPENDENCY",
            DefinitionError::Cycle { .. } => "E-DEF-CYCLE",
            DefinitionError::InvalidTrigger { .. } => "E-DEF-TRIGGER",
            DefinitionError::InvalidSagaPolicy { .. } => "E-DEF-POLICY",
            DefinitionError::InvalidLimit { .. } => "E-DEF-LIMIT",
            DefinitionError::InvalidService { .. } => "E-DEF-SERVICE",
            DefinitionError::Many(_) => "E-DEF-MANY",
        }
    }

    /// The individual problems: the inner errors of [`DefinitionError::Many`],
    /// otherwise this error alone.
    pub fn errors(&self) -> Vec<&DefinitionError> {
        match self {
            DefinitionError::Many(errors) => errors.iter().flat_map(|e| e.errors()).collect(),
            other => vec![other],
        }
    }

    /// Where the problem is, for errors found after parsing.
    pub fn place(&self) -> Option<&Place> {
        match self {
            DefinitionError::Empty { place, .. }
            | DefinitionError::InvalidName { place, .. }
            | DefinitionError::InvalidDuration { place, .. }
            | DefinitionError::InvalidRetry { place, .. }
            | DefinitionError::UnknownPolicy { place, .. }
            | DefinitionError::DuplicateStep { place, .. }
            | DefinitionError::UnknownDependency { place, .. }
            | DefinitionError::DependencyOutOfRange { place, .. }
            | DefinitionError::Cycle { place, .. }
            | DefinitionError::InvalidTrigger { place, .. }
            | DefinitionError::InvalidSagaPolicy { place, .. }
            | DefinitionError::InvalidLimit { place, .. } => Some(place.as_ref()),
            DefinitionError::Io { .. }
            | DefinitionError::Parse { .. }
            | DefinitionError::InvalidService { .. }
            | DefinitionError::Many(_) => None,
        }
    }

    /// `Ok` for no errors, the error itself for one, [`DefinitionError::Many`] for more.
    fn collect(mut errs: Vec<DefinitionError>) -> Result<(), DefinitionError> {
        match errs.len() {
            0 => Ok(()),
            1 => Err(errs.remove(0)),
            _ => Err(DefinitionError::Many(errs)),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw file shape (serde)
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    sagas: Entries<RawSaga>,
    #[serde(default)]
    retry_policies: Option<Entries<RawPolicy>>,
    #[serde(default)]
    services: Option<Entries<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSaga {
    #[serde(default)]
    timeout: Option<RawDuration>,
    steps: Vec<RawStep>,
    #[serde(default)]
    triggers: Vec<RawTrigger>,
    #[serde(default)]
    policy: Option<RawSagaPolicy>,
    /// Wider than the model's `u32` so that zero or a negative count is
    /// reported by validation, naming the field.
    #[serde(default)]
    max_running: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    service: String,
    operation: String,
    #[serde(default)]
    compensation: Option<String>,
    #[serde(default)]
    timeout: Option<RawDuration>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    depends_on: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
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

/// A map kept in file order that rejects duplicate keys (serde_json would
/// silently keep the last one).
#[derive(Debug)]
struct Entries<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntriesVisitor<T> {
            type Value = Entries<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names to definitions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key `{}`",
                            Escaped(&key)
                        )));
                    }
                    let value = map.next_value::<T>()?;
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

/// A duration as written: integer milliseconds or a humantime string.
/// Problems a parser would report without naming the field are kept as
/// `Invalid` so that validation can name it.
#[derive(Debug, Clone)]
enum RawDuration {
    Millis(u64),
    Text(String),
    Invalid(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"2m\", \"500ms\" or integer milliseconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawDuration::Millis(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(match u64::try_from(v) {
                    Ok(v) => RawDuration::Millis(v),
                    Err(_) => RawDuration::Invalid(format!("{v} is negative")),
                })
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
                Ok(RawDuration::Invalid(format!(
                    "{v} milliseconds is too long"
                )))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
                Ok(RawDuration::Invalid(format!("{v} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawDuration::Invalid(format!(
                    "{v} is not a whole number of milliseconds; write a unit, as in \"1500ms\" or \"2s\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

/// A step's `retry`: a policy name or an inline policy.
#[derive(Debug)]
enum RawRetry {
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

/// How every YAML file the engine reads is parsed (definitions, the
/// configuration, service manifests): no source snippet in errors (callers
/// name the place themselves), and a duplicate key is an error, never
/// silently merged.
pub fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    options
}

fn parse_yaml(source_name: &str, text: &str) -> Result<RawFile, DefinitionError> {
    serde_saphyr::from_str_with_options::<RawFile>(text, yaml_options()).map_err(|e| {
        let location = e.location();
        let mut render = serde_saphyr::RenderOptions::new(&YAML_MESSAGES);
        render.snippets = serde_saphyr::SnippetMode::Off;
        DefinitionError::Parse {
            source_name: source_name.to_owned(),
            line: location.map(|l| l.line()),
            column: location.map(|l| l.column()),
            message: one_line(&e.render_with_options(render)),
        }
    })
}

/// Renders serde-saphyr's user-facing messages (no hints about parser
/// options) without their "at line X, column Y" suffix:
/// [`DefinitionError::Parse`] carries the position itself.
struct YamlMessages;

static YAML_MESSAGES: YamlMessages = YamlMessages;

struct NoLocationSuffix;

impl serde_saphyr::Localizer for NoLocationSuffix {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        _loc: serde_saphyr::Location,
    ) -> std::borrow::Cow<'a, str> {
        base
    }
}

impl serde_saphyr::MessageFormatter for YamlMessages {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        &NoLocationSuffix
    }
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        serde_saphyr::MessageFormatter::format_message(&serde_saphyr::UserMessageFormatter, err)
    }
}

fn parse_json(source_name: &str, text: &str) -> Result<RawFile, DefinitionError> {
    serde_json::from_str::<RawFile>(text).map_err(|e| {
        let (line, column) = if e.line() == 0 {
            (None, None)
        } else {
            (Some(e.line() as u64), Some(e.column() as u64))
        };
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full);
        DefinitionError::Parse {
            source_name: source_name.to_owned(),
            line,
            column,
            message: one_line(message),
        }
    })
}

fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------
// Validation: raw file -> model
// ---------------------------------------------------------------------------

fn build_file(source_name: &str, raw: RawFile) -> Result<DefinitionFile, DefinitionError> {
    let mut errs = Vec::new();
    let file = Place::new(source_name);

    // File-level policies: each is checked once; `None` marks an invalid one,
    // so steps using it do not repeat its errors.
    let mut policies: HashMap<String, Option<RetryPolicy>> = HashMap::new();
    let mut policy_names = Vec::new();
    for (name, raw_policy) in raw.retry_policies.map(|e| e.0).unwrap_or_default() {
        let resolved = resolve_policy(&file.policy(&name), "", raw_policy, &mut errs);
        policy_names.push(name.clone());
        policies.insert(name, resolved);
    }
    let retry = RetryContext {
        policies,
        names: policy_names,
    };

    if raw.sagas.0.is_empty() {
        errs.push(DefinitionError::Empty {
            place: Box::new(file.field("sagas")),
            reason: "the file defines no saga; add at least one under `sagas`".into(),
        });
    }
    let mut sagas = Vec::new();
    for (name, raw_saga) in raw.sagas.0 {
        if let Some(saga) = build_saga(&file.saga(&name), name, raw_saga, &retry, &mut errs) {
            sagas.push(saga);
        }
    }
    let services = build_services(source_name, raw.services, &mut errs);
    DefinitionError::collect(errs)?;
    sagas.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(DefinitionFile { sagas, services })
}

struct RetryContext {
    /// Valid policies by name; `None` for a policy that failed validation.
    policies: HashMap<String, Option<RetryPolicy>>,
    /// Policy names in file order, for error messages.
    names: Vec<String>,
}

impl RetryContext {
    /// The policy a step uses; `None` if it is invalid (errors pushed or already reported).
    fn resolve(
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

fn build_saga(
    saga: &Place,
    name: String,
    raw: RawSaga,
    retry: &RetryContext,
    errs: &mut Vec<DefinitionError>,
) -> Option<SagaDefinition> {
    let before = errs.len();
    check_token(saga, "saga name", &name, errs);
    let timeout = raw
        .timeout
        .and_then(|d| resolve_duration(&saga.field("timeout"), d, false, errs));
    if raw.steps.is_empty() {
        errs.push(no_steps(saga));
    }

    let labels: Vec<String> = raw
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| step_label(&s.id, i))
        .collect();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut known: Vec<String> = Vec::new();
    for (i, step) in raw.steps.iter().enumerate() {
        let place = saga.step(labels[i].clone());
        check_token(&place.field("id"), "step id", &step.id, errs);
        if let Some(&first) = index.get(step.id.as_str()) {
            errs.push(duplicate_step(&place, &step.id, first, i));
        } else {
            index.insert(&step.id, i);
            known.push(step.id.clone());
        }
    }

    // Dependencies as indexes; unknown ones are reported and dropped, so the
    // cycle check still runs on the rest.
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(raw.steps.len());
    for (i, step) in raw.steps.iter().enumerate() {
        let mut these = Vec::with_capacity(step.depends_on.len());
        for dep in &step.depends_on {
            match index.get(dep.as_str()) {
                Some(&j) => these.push(j),
                None => errs.push(DefinitionError::UnknownDependency {
                    place: Box::new(saga.step(labels[i].clone()).field("depends_on")),
                    dependency: dep.clone(),
                    known: known.clone(),
                }),
            }
        }
        these.sort_unstable();
        these.dedup();
        deps.push(these);
    }

    let mut steps = Vec::with_capacity(raw.steps.len());
    for ((step, label), depends_on) in raw.steps.into_iter().zip(&labels).zip(&deps) {
        let place = saga.step(label.clone());
        check_step_names(
            &place,
            &step.service,
            &step.operation,
            step.compensation.as_deref(),
            errs,
        );
        let timeout = match step.timeout {
            None => Some(DEFAULT_STEP_TIMEOUT),
            Some(raw) => resolve_duration(&place.field("timeout"), raw, false, errs),
        };
        let policy = retry.resolve(&place, step.retry, errs);
        if let (Some(timeout), Some(retry)) = (timeout, policy) {
            steps.push(StepDefinition {
                id: step.id,
                service: step.service,
                operation: step.operation,
                compensation: step.compensation,
                timeout,
                retry,
                depends_on: depends_on.clone(),
            });
        }
    }

    if let Some(cycle) = find_cycle(&deps) {
        errs.push(cycle_error(saga, &cycle, &labels));
    }
    let triggers = build_triggers(raw.triggers);
    let policy = build_saga_policy(saga, raw.policy, errs);
    check_triggers(saga, &triggers, errs);
    check_saga_policy(saga, &policy, errs);
    let max_running = raw.max_running.and_then(|n| match u32::try_from(n) {
        Ok(n) if n > 0 => Some(n),
        _ => {
            errs.push(invalid_limit(saga, &n.to_string()));
            None
        }
    });

    (errs.len() == before).then_some(SagaDefinition {
        name,
        version: 0,
        timeout,
        steps,
        triggers,
        policy,
        max_running,
    })
}

/// `max_running` of saga `saga` is `value`, which is not a positive `u32`.
fn invalid_limit(saga: &Place, value: &str) -> DefinitionError {
    DefinitionError::InvalidLimit {
        place: Box::new(saga.field("max_running")),
        reason: format!(
            "max_running is {value}; it must be a whole number from 1 to {} (leave it out for no limit)",
            u32::MAX
        ),
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

/// Turns a raw duration into a checked [`Duration`]; `None` after pushing an error.
fn resolve_duration(
    place: &Place,
    raw: RawDuration,
    allow_zero: bool,
    errs: &mut Vec<DefinitionError>,
) -> Option<Duration> {
    let invalid = |reason: String| DefinitionError::InvalidDuration {
        place: Box::new(place.clone()),
        reason,
    };
    let duration = match raw {
        RawDuration::Millis(ms) => Duration::from_millis(ms),
        RawDuration::Text(text) => match humantime::parse_duration(text.trim()) {
            Ok(d) => d,
            Err(e) => {
                errs.push(invalid(format!(
                    "invalid duration \"{}\": {e}; write e.g. \"30s\", \"2m\", \"500ms\" or integer milliseconds",
                    text.escape_debug()
                )));
                return None;
            }
        },
        RawDuration::Invalid(reason) => {
            errs.push(invalid(format!("invalid duration: {reason}")));
            return None;
        }
    };
    check_duration(place, duration, allow_zero, errs).then_some(duration)
}

/// Displays a duration in the units definition files use (`1d 2h 30m`,
/// `500ms`): exact to the millisecond, and parseable back.
struct Human(Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return if self.0.is_zero() {
                f.write_str("0s")
            } else {
                write!(f, "{}ns", self.0.as_nanos())
            };
        }
        let mut rest = total_ms;
        let mut parts = Vec::new();
        for (unit, ms) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            let n = rest / ms;
            rest %= ms;
            if n > 0 {
                parts.push(format!("{n}{unit}"));
            }
        }
        let sub_ms = self.0.subsec_nanos() % 1_000_000;
        if sub_ms > 0 {
            parts.push(format!("{sub_ms}ns"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// Checks a duration is whole milliseconds, at most [`MAX_DURATION`] and
/// (unless `allow_zero`) positive.
fn check_duration(
    place: &Place,
    d: Duration,
    allow_zero: bool,
    errs: &mut Vec<DefinitionError>,
) -> bool {
    let reason = if d > MAX_DURATION {
        format!(
            "duration {} is longer than the maximum of {}",
            Human(d),
            Human(MAX_DURATION)
        )
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!(
            "duration {} is not a whole number of milliseconds; durations are stored in milliseconds",
            Human(d)
        )
    } else if !allow_zero && d.is_zero() {
        "duration must be greater than zero".to_owned()
    } else {
        return true;
    };
    errs.push(DefinitionError::InvalidDuration {
        place: Box::new(place.clone()),
        reason,
    });
    false
}

/// Checks the ranges of a built policy; field names are `prefix` + field.
fn check_policy(place: &Place, prefix: &str, p: &RetryPolicy, errs: &mut Vec<DefinitionError>) {
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

fn check_token(place: &Place, what: &'static str, value: &str, errs: &mut Vec<DefinitionError>) {
    if let Err(reason) = validate_token(value) {
        errs.push(DefinitionError::InvalidName {
            place: Box::new(place.clone()),
            what,
            reason,
        });
    }
}

fn check_step_names(
    place: &Place,
    service: &str,
    operation: &str,
    compensation: Option<&str>,
    errs: &mut Vec<DefinitionError>,
) {
    check_token(&place.field("service"), "service", service, errs);
    check_token(&place.field("operation"), "operation", operation, errs);
    if let Some(compensation) = compensation {
        check_token(
            &place.field("compensation"),
            "compensation",
            compensation,
            errs,
        );
    }
}

/// How a step is named in messages: its id, or `#n` when the id is not a valid token.
fn step_label(id: &str, index: usize) -> String {
    if validate_token(id).is_ok() {
        id.to_owned()
    } else {
        format!("#{}", index + 1)
    }
}

fn no_steps(saga: &Place) -> DefinitionError {
    DefinitionError::Empty {
        place: Box::new(saga.field("steps")),
        reason: "the saga has no steps; add at least one".into(),
    }
}

fn duplicate_step(place: &Place, id: &str, first: usize, second: usize) -> DefinitionError {
    DefinitionError::DuplicateStep {
        place: Box::new(place.field("id")),
        id: id.to_owned(),
        first: first + 1,
        second: second + 1,
    }
}

fn cycle_error(saga: &Place, cycle: &[usize], labels: &[String]) -> DefinitionError {
    DefinitionError::Cycle {
        place: Box::new(saga.clone()),
        path: cycle
            .iter()
            .map(|&i| {
                labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", i + 1))
            })
            .collect(),
    }
}

/// The first dependency cycle a depth-first search meets, visiting steps
/// and their dependencies in order; the path repeats its first step at the
/// end. Iterative, so long chains cannot overflow the stack; indexes out of
/// range are ignored.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; deps.len()];
    for root in 0..deps.len() {
        if mark[root] != Mark::New {
            continue;
        }
        // (step, next dependency to look at)
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = Mark::OnPath;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            let Some(&dep) = deps[node].get(next) else {
                mark[node] = Mark::Done;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match mark.get(dep) {
                Some(Mark::New) => {
                    mark[dep] = Mark::OnPath;
                    stack.push((dep, 0));
                }
                Some(Mark::OnPath) => {
                    let start = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                    let mut path: Vec<usize> = stack[start..].iter().map(|&(n, _)| n).collect();
                    path.push(dep);
                    return Some(path);
                }
                Some(Mark::Done) | None => {}
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Triggers and policies
// ---------------------------------------------------------------------------

/// A trigger of a saga definition: every message on `subject` starts one
/// saga, deduplicated by the event's id (see [`crate::triggers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// NATS subject; `*` matches one token, a final `>` the rest.
    pub subject: String,
    /// Saga input field → where its value is in the message body: a JSON
    /// pointer (`/data/id`) or a dotted path (`data.id`). Absent: the input
    /// is the CloudEvent's `data` for a CloudEvent, else the whole body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<std::collections::BTreeMap<String, String>>,
}

/// Whether and where sagas of a definition may start: capability by
/// design, optional by policy. Sagas already running are not affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Whether this is the default policy (enabled everywhere).
    pub fn is_default(&self) -> bool {
        *self == SagaPolicy::default()
    }

    /// Why a new saga `saga` may not start in an engine whose environment
    /// is `environment`, or `None` when it may.
    pub fn refusal(&self, saga: &str, environment: Option<&str>) -> Option<String> {
        let here = match environment {
            Some(env) => format!("this engine's environment is `{env}`"),
            None => "this engine has no environment set".to_string(),
        };
        if !self.enabled {
            return Some(format!(
                "saga `{saga}` is disabled by its policy (policy.enabled: false; {here}); set `enabled: true` in its definition and apply it again"
            ));
        }
        if self.environments.is_empty() {
            return None;
        }
        let listed = self.environments.join(", ");
        match environment {
            Some(env) if self.environments.iter().any(|e| e == env) => None,
            Some(env) => Some(format!(
                "saga `{saga}` is disabled in environment `{env}` by its policy (policy.environments: [{listed}]); start it in an engine of one of those environments, or add `{env}` to the list"
            )),
            None => Some(format!(
                "saga `{saga}` may only start in the environments [{listed}] (policy.environments), and this engine has no environment set; set `environment` in the engine configuration (JETSAGA_ENVIRONMENT, --environment)"
            )),
        }
    }

    /// A short description for listings: `enabled`, `disabled` or
    /// `environments: a, b`.
    pub fn summary(&self) -> String {
        if !self.enabled {
            "disabled".into()
        } else if self.environments.is_empty() {
            "enabled".into()
        } else {
            format!("environments: {}", self.environments.join(", "))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    subject: String,
    #[serde(default)]
    input: Option<Entries<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSagaPolicy {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    environments: Option<Vec<String>>,
}

fn build_triggers(raw: Vec<RawTrigger>) -> Vec<Trigger> {
    raw.into_iter()
        .map(|t| Trigger {
            subject: t.subject,
            input: t.input.map(|e| e.0.into_iter().collect()),
        })
        .collect()
}

fn build_saga_policy(
    saga: &Place,
    raw: Option<RawSagaPolicy>,
    errs: &mut Vec<DefinitionError>,
) -> SagaPolicy {
    let raw = raw.unwrap_or(RawSagaPolicy {
        enabled: None,
        environments: None,
    });
    if raw.environments.as_ref().is_some_and(Vec::is_empty) {
        errs.push(DefinitionError::InvalidSagaPolicy {
            place: Box::new(saga.field("policy.environments")),
            reason: "the list is empty; name at least one environment, or remove `environments` to allow every one".into(),
        });
    }
    SagaPolicy {
        enabled: raw.enabled.unwrap_or(true),
        environments: raw.environments.unwrap_or_default(),
    }
}

/// Checks that `subject` is a NATS subject a trigger may listen on: dot
/// separated non-empty tokens without whitespace, `*` and `>` only as whole
/// tokens, `>` only last, not a `$` system subject, not `>` alone.
pub fn validate_trigger_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".into());
    }
    if subject.len() > 255 {
        return Err(format!(
            "the subject is {} bytes long; at most 255",
            subject.len()
        ));
    }
    if subject.starts_with('$') {
        return Err(format!(
            "`{}` is a system subject; triggers listen on application subjects",
            Escaped(subject)
        ));
    }
    if subject == ">" {
        return Err("`>` alone would capture every message; name the subjects".into());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "`{}` has an empty token (a leading, trailing or double dot)",
                Escaped(subject)
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("`{}` contains whitespace", Escaped(subject)));
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err(format!(
                "`{}`: the wildcards `*` and `>` must be whole tokens",
                Escaped(subject)
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!(
                "`{}`: `>` may only be the last token",
                Escaped(subject)
            ));
        }
    }
    Ok(())
}

/// The JSON pointer a trigger's `input` path stands for: a path starting
/// with `/` (or empty, the whole body) is one already; a dotted path
/// (`data.id`, `data.items.0`) is turned into one.
pub fn input_pointer(path: &str) -> Result<String, String> {
    if path.is_empty() || path.starts_with('/') {
        let mut chars = path.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "`{}` is not a JSON pointer: `~` must be followed by 0 or 1",
                    Escaped(path)
                ));
            }
        }
        return Ok(path.to_string());
    }
    let mut pointer = String::new();
    for segment in path.split('.') {
        if segment.is_empty() {
            return Err(format!(
                "`{}` has an empty segment; write `data.id` or a JSON pointer such as `/data/id`",
                Escaped(path)
            ));
        }
        pointer.push('/');
        pointer.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    Ok(pointer)
}

fn check_triggers(saga: &Place, triggers: &[Trigger], errs: &mut Vec<DefinitionError>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, trigger) in triggers.iter().enumerate() {
        let field = |f: &str| Box::new(saga.field(&format!("triggers[{i}].{f}")));
        if let Err(reason) = validate_trigger_subject(&trigger.subject) {
            errs.push(DefinitionError::InvalidTrigger {
                place: field("subject"),
                reason,
            });
        }
        if let Some(first) = seen.insert(&trigger.subject, i) {
            errs.push(DefinitionError::InvalidTrigger {
                place: field("subject"),
                reason: format!(
                    "subject `{}` is already the subject of triggers[{first}]; list each subject once",
                    Escaped(&trigger.subject)
                ),
            });
        }
        let Some(input) = &trigger.input else {
            continue;
        };
        if input.is_empty() {
            errs.push(DefinitionError::InvalidTrigger {
                place: field("input"),
                reason: "the mapping is empty; map at least one input field, or remove `input` to pass the event's data".into(),
            });
        }
        for (name, path) in input {
            if name.is_empty() {
                errs.push(DefinitionError::InvalidTrigger {
                    place: field("input"),
                    reason: "an input field name is empty".into(),
                });
            }
            if let Err(reason) = input_pointer(path) {
                errs.push(DefinitionError::InvalidTrigger {
                    place: field(&format!("input.{name}")),
                    reason,
                });
            }
        }
    }
}

fn check_saga_policy(saga: &Place, policy: &SagaPolicy, errs: &mut Vec<DefinitionError>) {
    let place = || Box::new(saga.field("policy.environments"));
    let mut seen = std::collections::HashSet::new();
    for env in &policy.environments {
        if let Err(reason) = validate_token(env) {
            errs.push(DefinitionError::InvalidSagaPolicy {
                place: place(),
                reason: format!("invalid environment `{}`: {reason}", Escaped(env)),
            });
        }
        if !seen.insert(env.as_str()) {
            errs.push(DefinitionError::InvalidSagaPolicy {
                place: place(),
                reason: format!("environment `{}` is listed twice", Escaped(env)),
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Service policies (`services:`): circuit breakers and in-flight limits
// ---------------------------------------------------------------------------

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
struct RawService {
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

fn build_services(
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

#[cfg(test)]
mod service_tests {
    use super::*;

    fn parse(services: &str) -> Result<DefinitionFile, DefinitionError> {
        let text = format!(
            "sagas:\n  s:\n    steps:\n      - {{ id: a, service: pay, operation: op }}\nservices:\n{services}"
        );
        parse_str("f.yaml", &text, Format::Yaml)
    }

    #[test]
    fn services_parse_with_defaults() {
        let file = parse(
            "  pay:\n    max_in_flight: 8\n    circuit_breaker: { failure_threshold: 3, open_timeout: 2s }\n  audit: {}\n",
        )
        .unwrap();
        assert_eq!(
            file.services,
            vec![
                ServicePolicy {
                    service: "audit".into(),
                    max_in_flight: None,
                    circuit_breaker: None,
                },
                ServicePolicy {
                    service: "pay".into(),
                    max_in_flight: Some(8),
                    circuit_breaker: Some(BreakerConfig {
                        failure_threshold: 3,
                        success_threshold: DEFAULT_SUCCESS_THRESHOLD,
                        open_timeout: Duration::from_secs(2),
                    }),
                },
            ]
        );
        validate_services(&file.services).unwrap();
        let json = serde_json::to_value(&file.services[1]).unwrap();
        assert_eq!(json["circuit_breaker"]["open_timeout"], 2000);
        // A file without services keeps its JSON shape.
        let plain = parse_str(
            "f.yaml",
            "sagas:\n  s:\n    steps:\n      - { id: a, service: pay, operation: op }\n",
            Format::Yaml,
        )
        .unwrap();
        assert!(plain.to_json().get("services").is_none());
    }

    #[test]
    fn bad_services_name_file_service_and_field() {
        let e = parse(
            "  pay:\n    max_in_flight: 0\n    circuit_breaker: { failure_threshold: -1, success_threshold: 0, open_timeout: soon }\n  \"bad.name\": {}\n",
        )
        .unwrap_err();
        let messages: Vec<String> = e.errors().iter().map(|e| e.to_string()).collect();
        assert!(
            e.errors().iter().all(|e| e.code() == "E-DEF-SERVICE"),
            "{messages:?}"
        );
        assert_eq!(messages.len(), 5, "{messages:?}");
        assert!(
            messages[0]
                .starts_with("f.yaml: service `pay`: field `max_in_flight`: 0 is out of range"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("field `circuit_breaker.failure_threshold`: -1"),
            "{messages:?}"
        );
        assert!(
            messages[2].contains("field `circuit_breaker.success_threshold`"),
            "{messages:?}"
        );
        assert!(
            messages[3].contains("field `circuit_breaker.open_timeout`: invalid duration"),
            "{messages:?}"
        );
        assert!(
            messages[4].contains("service `bad.name`: field `name`"),
            "{messages:?}"
        );
        // Unknown fields are parse errors, as everywhere in the file.
        assert_eq!(
            parse("  pay: { max_inflight: 2 }\n").unwrap_err().code(),
            "E-DEF-PARSE"
        );
        // Built policies are checked again when they arrive over the wire.
        let e = validate_services(&[
            ServicePolicy {
                service: "pay".into(),
                max_in_flight: Some(0),
                circuit_breaker: None,
            },
            ServicePolicy {
                service: "pay".into(),
                max_in_flight: None,
                circuit_breaker: Some(BreakerConfig {
                    failure_threshold: 1,
                    success_threshold: 1,
                    open_timeout: Duration::ZERO,
                }),
            },
        ])
        .unwrap_err();
        assert_eq!(e.errors().len(), 3, "{e}");
        assert!(e.to_string().starts_with("request: service `pay`"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE_YAML: &str = r#"
sagas:
  deploy_environment:
    timeout: 10m
    steps:
      - id: register_manifest
        service: manifest          # the work queue
        operation: register
        compensation: deregister
        timeout: 30s
        retry: default
      - id: deploy_containers
        service: container-engine
        operation: deploy
        compensation: stop
        timeout: 2m
        depends_on: [register_manifest]
        retry: { max_attempts: 3, initial_delay: 500ms, max_delay: 10s, backoff_factor: 2, jitter: 0.1 }
retry_policies:
  default: { max_attempts: 5, initial_delay: 1s, max_delay: 60s, backoff_factor: 2, jitter: 0.1 }
"#;

    const EXAMPLE_JSON: &str = r#"{
  "sagas": {
    "deploy_environment": {
      "timeout": "10m",
      "steps": [
        {
          "id": "register_manifest",
          "service": "manifest",
          "operation": "register",
          "compensation": "deregister",
          "timeout": "30s",
          "retry": "default"
        },
        {
          "id": "deploy_containers",
          "service": "container-engine",
          "operation": "deploy",
          "compensation": "stop",
          "timeout": 120000,
          "depends_on": ["register_manifest"],
          "retry": { "max_attempts": 3, "initial_delay": 500, "max_delay": "10s", "backoff_factor": 2, "jitter": 0.1 }
        }
      ]
    }
  },
  "retry_policies": {
    "default": { "max_attempts": 5, "initial_delay": "1s", "max_delay": "60s", "backoff_factor": 2.0, "jitter": 0.1 }
  }
}"#;

    fn yaml(text: &str) -> Result<DefinitionFile, DefinitionError> {
        parse_str("bad.yaml", text, Format::Yaml)
    }

    fn json(text: &str) -> Result<DefinitionFile, DefinitionError> {
        parse_str("bad.json", text, Format::Json)
    }

    fn yaml_err(text: &str) -> DefinitionError {
        match yaml(text) {
            Ok(file) => panic!("expected an error, got {file:?}"),
            Err(e) => e,
        }
    }

    fn json_err(text: &str) -> DefinitionError {
        match json(text) {
            Ok(file) => panic!("expected an error, got {file:?}"),
            Err(e) => e,
        }
    }

    /// A one-saga file whose steps are given as YAML list items (indented by 6).
    fn saga_with_steps(steps: &str) -> String {
        format!("sagas:\n  s:\n    steps:\n{steps}")
    }

    fn step(id: &str, extra: &str) -> String {
        format!("      - id: {id}\n        service: svc\n        operation: op\n{extra}")
    }

    fn messages(e: &DefinitionError) -> Vec<String> {
        e.errors().iter().map(|e| e.to_string()).collect()
    }

    fn codes(e: &DefinitionError) -> Vec<&'static str> {
        e.errors().iter().map(|e| e.code()).collect()
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/definitions")
            .join(name)
    }

    // --- the example -------------------------------------------------------

    #[test]
    fn example_parses_into_the_model() {
        let file = yaml(EXAMPLE_YAML).expect("example is valid");
        assert_eq!(file.sagas.len(), 1);
        let saga = &file.sagas[0];
        assert_eq!(saga.name, "deploy_environment");
        assert_eq!(saga.version, 0);
        assert_eq!(saga.timeout, Some(Duration::from_secs(600)));
        assert_eq!(saga.steps.len(), 2);

        let register = &saga.steps[0];
        assert_eq!(register.id, "register_manifest");
        assert_eq!(register.service, "manifest");
        assert_eq!(register.operation, "register");
        assert_eq!(register.compensation.as_deref(), Some("deregister"));
        assert_eq!(register.timeout, Duration::from_secs(30));
        assert_eq!(
            register.retry,
            RetryPolicy {
                max_attempts: 5,
                initial_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(60),
                backoff_factor: 2.0,
                jitter: 0.1,
            }
        );
        assert!(register.depends_on.is_empty());

        let deploy = &saga.steps[1];
        assert_eq!(deploy.id, "deploy_containers");
        assert_eq!(deploy.service, "container-engine");
        assert_eq!(deploy.timeout, Duration::from_secs(120));
        assert_eq!(deploy.depends_on, vec![0]);
        assert_eq!(
            deploy.retry,
            RetryPolicy {
                max_attempts: 3,
                initial_delay: Duration::from_millis(500),
                max_delay: Duration::from_secs(10),
                backoff_factor: 2.0,
                jitter: 0.1,
            }
        );
        assert_eq!(saga.step_index("deploy_containers"), Some(1));
        validate(saga).expect("a parsed definition revalidates");
    }

    #[test]
    fn yaml_and_json_give_equal_results() {
        let from_yaml = yaml(EXAMPLE_YAML).unwrap();
        let from_json = json(EXAMPLE_JSON).unwrap();
        assert_eq!(from_yaml, from_json);
    }

    #[test]
    fn fixtures_parse_by_extension_and_by_sniffing() {
        let expected = yaml(EXAMPLE_YAML).unwrap();
        assert_eq!(
            parse_file(&fixture("deploy_environment.yaml")).unwrap(),
            expected
        );
        assert_eq!(
            parse_file(&fixture("deploy_environment.json")).unwrap(),
            expected
        );

        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [("yaml-no-ext", EXAMPLE_YAML), ("json.txt", EXAMPLE_JSON)] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            assert_eq!(parse_file(&path).unwrap(), expected, "{name}");
        }
        // A byte-order mark is tolerated.
        let path = dir.path().join("bom.json");
        std::fs::write(&path, format!("\u{feff}{EXAMPLE_JSON}")).unwrap();
        assert_eq!(parse_file(&path).unwrap(), expected);
    }

    #[test]
    fn format_detection() {
        assert_eq!(Format::from_path(Path::new("a/b.yaml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("b.YML")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("b.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("b.toml")), None);
        assert_eq!(Format::from_path(Path::new("b")), None);
        assert_eq!(Format::sniff("  \n {\"sagas\": {}}"), Format::Json);
        assert_eq!(Format::sniff("\u{feff}{}"), Format::Json);
        assert_eq!(Format::sniff("sagas: {}"), Format::Yaml);
        assert_eq!(Format::sniff(""), Format::Yaml);
    }

    #[test]
    fn io_and_encoding_errors() {
        let e = parse_file(Path::new("/nonexistent/jetsaga/defs.yaml")).unwrap_err();
        assert_eq!(e.code(), "E-DEF-IO");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/jetsaga/defs.yaml: cannot read the file:"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.yaml");
        std::fs::write(&path, b"sagas:\n  caf\xe9: {}\n").unwrap();
        let e = parse_file(&path).unwrap_err();
        assert_eq!(e.code(), "E-DEF-PARSE");
        assert!(
            e.to_string()
                .ends_with("line 2 column 6: the file is not valid UTF-8; save it as UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn sagas_are_sorted_by_name_and_steps_keep_file_order() {
        let text = "sagas:\n  zeta:\n    steps:\n      - { id: z2, service: s, operation: o }\n      - { id: a1, service: s, operation: o }\n  alpha:\n    steps:\n      - { id: x, service: s, operation: o }\n";
        let file = yaml(text).unwrap();
        let names: Vec<&str> = file.sagas.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["alpha", "zeta"]);
        let ids: Vec<&str> = file.sagas[1].steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["z2", "a1"]);
    }

    #[test]
    fn defaults_apply() {
        let file = yaml(&saga_with_steps(&step("only", ""))).unwrap();
        let saga = &file.sagas[0];
        assert_eq!(saga.timeout, None);
        let only = &saga.steps[0];
        assert_eq!(only.timeout, DEFAULT_STEP_TIMEOUT);
        assert_eq!(only.compensation, None);
        assert_eq!(only.retry, RetryPolicy::default());
        assert!(only.depends_on.is_empty());
    }

    #[test]
    fn to_json_round_trips() {
        let file = yaml(EXAMPLE_YAML).unwrap();
        let value = file.to_json();
        assert_eq!(value["sagas"][0]["steps"][1]["timeout"], 120_000);
        let back: DefinitionFile = serde_json::from_value(value).unwrap();
        assert_eq!(back, file);
    }

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

    // --- structure and names -----------------------------------------------

    #[test]
    fn unknown_fields_are_rejected_with_name_and_position() {
        for (text, field, line) in [
            ("sagas: {}\nextra: 1\n", "extra", 2),
            ("sagas:\n  s:\n    stepz: []\n", "stepz", 3),
            (
                "sagas:\n  s:\n    steps:\n      - id: a\n        service: s\n        operation: o\n        retries: 3\n",
                "retries",
                7,
            ),
            (
                "sagas:\n  s:\n    steps:\n      - id: a\n        service: s\n        operation: o\n        retry: { max_attempt: 3 }\n",
                "max_attempt",
                7,
            ),
            (
                "sagas:\n  s:\n    steps: [{id: a, service: s, operation: o}]\nretry_policies:\n  p: { jiter: 1 }\n",
                "jiter",
                5,
            ),
        ] {
            let e = yaml_err(text);
            assert_eq!(e.code(), "E-DEF-PARSE", "{text}");
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("bad.yaml: line {line} column ")),
                "{text}: {msg}"
            );
            assert!(msg.contains(&format!("unknown field `{field}`")), "{msg}");
        }

        let e = json_err(
            "{\"sagas\": {\"s\": {\"steps\": [{\"id\": \"a\", \"service\": \"s\", \"operation\": \"o\", \"retries\": 3}]}}}",
        );
        assert_eq!(e.code(), "E-DEF-PARSE");
        let msg = e.to_string();
        assert!(msg.starts_with("bad.json: line 1 column "), "{msg}");
        assert!(msg.contains("unknown field `retries`"), "{msg}");
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let e = yaml_err("sagas:\n  s: [unclosed\n");
        assert_eq!(e.code(), "E-DEF-PARSE");
        let DefinitionError::Parse { line, column, .. } = &e else {
            panic!("{e:?}")
        };
        assert!(line.is_some() && column.is_some(), "{e:?}");
        assert!(
            !e.to_string().contains(" at line "),
            "no doubled position: {e}"
        );

        let e = json_err("{\n  \"sagas\": {\n    \"s\": ,\n  }\n}");
        assert!(
            e.to_string().starts_with("bad.json: line 3 column 10: "),
            "{e}"
        );
        assert!(!e.to_string().contains(" at line "), "{e}");

        let e = json_err("{\"sagas\": {}");
        assert!(e.to_string().contains("EOF"), "{e}");
    }

    #[test]
    fn missing_and_empty_sections() {
        let e = yaml_err("retry_policies: {}\n");
        assert_eq!(e.code(), "E-DEF-PARSE");
        assert!(e.to_string().contains("missing field `sagas`"), "{e}");

        let e = yaml_err("sagas: {}\n");
        assert_eq!(e.code(), "E-DEF-EMPTY");
        assert_eq!(
            e.to_string(),
            "bad.yaml: field `sagas`: the file defines no saga; add at least one under `sagas`"
        );

        let e = yaml_err("sagas:\n  s:\n    steps: []\n");
        assert_eq!(e.code(), "E-DEF-EMPTY");
        assert_eq!(
            e.to_string(),
            "bad.yaml: saga `s`: field `steps`: the saga has no steps; add at least one"
        );

        let e = yaml_err("sagas:\n  s:\n    steps:\n      - id: a\n        service: s\n");
        assert!(e.to_string().contains("missing field `operation`"), "{e}");

        let e = yaml_err("");
        assert_eq!(e.code(), "E-DEF-PARSE");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let e = yaml_err(
            "sagas:\n  s:\n    steps: [{id: a, service: s, operation: o}]\n  s:\n    steps: [{id: a, service: s, operation: o}]\n",
        );
        assert_eq!(e.code(), "E-DEF-PARSE");
        assert!(e.to_string().contains("duplicate"), "{e}");
        assert!(e.to_string().starts_with("bad.yaml: line 4 column "), "{e}");

        let e = json_err(
            "{\"sagas\": {\"s\": {\"steps\": [{\"id\": \"a\", \"service\": \"s\", \"operation\": \"o\"}]},\n \"s\": {\"steps\": []}}}",
        );
        assert_eq!(e.code(), "E-DEF-PARSE");
        assert!(e.to_string().contains("duplicate key `s`"), "{e}");
        assert!(e.to_string().starts_with("bad.json: line 2 column "), "{e}");
    }

    #[test]
    fn names_must_be_tokens() {
        let text = "sagas:\n  bad.saga:\n    steps:\n      - id: has space\n        service: a>b\n        operation: \"\"\n        compensation: \"un do\"\n";
        let e = yaml_err(text);
        assert_eq!(codes(&e), ["E-DEF-NAME"; 5]);
        let msgs = messages(&e);
        assert!(
            msgs[0].starts_with(
                "bad.yaml: saga `bad.saga`: invalid saga name: \"bad.saga\" contains '.'"
            ),
            "{msgs:?}"
        );
        assert!(
            msgs[1].starts_with(
                "bad.yaml: saga `bad.saga`, step `#1`: field `id`: invalid step id: \"has space\" contains ' '"
            ),
            "{msgs:?}"
        );
        assert!(
            msgs[2].starts_with(
                "bad.yaml: saga `bad.saga`, step `#1`: field `service`: invalid service:"
            ),
            "{msgs:?}"
        );
        assert_eq!(
            msgs[3],
            "bad.yaml: saga `bad.saga`, step `#1`: field `operation`: invalid operation: is empty"
        );
        assert!(msgs[4].contains("field `compensation`"), "{msgs:?}");

        let long = "x".repeat(65);
        let e = yaml_err(&saga_with_steps(&step(&long, "")));
        assert!(e.to_string().contains("longer than 64 characters"), "{e}");
    }

    #[test]
    fn control_characters_stay_escaped_on_one_line() {
        let e = json_err(
            "{\"sagas\": {\"a\\nb\": {\"steps\": [{\"id\": \"x\", \"service\": \"s\", \"operation\": \"o\"}]}}}",
        );
        assert_eq!(e.to_string().lines().count(), 1, "{e}");
        assert!(e.to_string().starts_with("bad.json: saga `a\\nb`"), "{e}");
    }

    // --- steps and dependencies --------------------------------------------

    #[test]
    fn duplicate_step_ids_name_both_positions() {
        let steps = [step("a", ""), step("b", ""), step("a", "")].concat();
        let e = yaml_err(&saga_with_steps(&steps));
        assert_eq!(e.code(), "E-DEF-DUPLICATE-STEP");
        assert_eq!(
            e.to_string(),
            "bad.yaml: saga `s`, step `a`: field `id`: duplicate step id `a`: steps #1 and #3 both use it; step ids must be unique within a saga"
        );
    }

    #[test]
    fn unknown_dependency_lists_known_steps() {
        let text = "sagas:\n  deploy_environment:\n    steps:\n      - { id: register_manifest, service: manifest, operation: register }\n      - { id: deploy_containers, service: container-engine, operation: deploy, depends_on: [regster] }\n";
        let e = parse_str("examples/bad.yaml", text, Format::Yaml).unwrap_err();
        assert_eq!(e.code(), "E-DEF-UNKNOWN-DEPENDENCY");
        assert_eq!(
            e.to_string(),
            "examples/bad.yaml: saga `deploy_environment`, step `deploy_containers`: field `depends_on`: unknown step `regster` (known: register_manifest, deploy_containers)"
        );
    }

    #[test]
    fn dependencies_become_sorted_unique_indexes() {
        let steps = [
            step("a", ""),
            step("b", ""),
            step("c", "        depends_on: [b, a, b]\n"),
        ]
        .concat();
        let file = yaml(&saga_with_steps(&steps)).unwrap();
        assert_eq!(file.sagas[0].steps[2].depends_on, vec![0, 1]);
    }

    fn chain(edges: &[(&str, &str)]) -> String {
        saga_with_steps(
            &edges
                .iter()
                .map(|(id, deps)| step(id, &format!("        depends_on: [{deps}]\n")))
                .collect::<String>(),
        )
    }

    #[test]
    fn cycles_are_reported_with_their_path() {
        let e = yaml_err(&chain(&[("a", "b"), ("b", "c"), ("c", "a")]));
        assert_eq!(e.code(), "E-DEF-CYCLE");
        assert_eq!(
            e.to_string(),
            "bad.yaml: saga `s`: dependency cycle a -> b -> c -> a; remove one of these dependencies"
        );
        let DefinitionError::Cycle { path, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(path, &["a", "b", "c", "a"]);

        // Self-dependency is a cycle.
        let e = yaml_err(&chain(&[("a", ""), ("b", "b")]));
        assert_eq!(e.code(), "E-DEF-CYCLE");
        assert!(e.to_string().contains("dependency cycle b -> b;"), "{e}");

        // The path starts where the cycle closes, not at the first step.
        let e = yaml_err(&chain(&[("x", "y"), ("y", "z"), ("z", "y")]));
        assert!(
            e.to_string().contains("dependency cycle y -> z -> y;"),
            "{e}"
        );

        // Deterministic: the first cycle met in file order is reported.
        for _ in 0..5 {
            let e = yaml_err(&chain(&[("p", "q"), ("q", "p"), ("r", "s"), ("s", "r")]));
            assert!(
                e.to_string().contains("dependency cycle p -> q -> p;"),
                "{e}"
            );
        }

        // A diamond is not a cycle.
        yaml(&chain(&[("a", ""), ("b", "a"), ("c", "a"), ("d", "b, c")])).unwrap();
    }

    #[test]
    fn long_dependency_chains_do_not_overflow_the_stack() {
        let n = 20_000;
        let mut deps: Vec<Vec<usize>> = (0..n).map(|i| vec![i + 1]).collect();
        deps[n - 1] = vec![];
        assert_eq!(find_cycle(&deps), None);
        deps[n - 1] = vec![0];
        assert_eq!(find_cycle(&deps).map(|p| p.len()), Some(n + 1));
    }

    #[test]
    fn all_problems_of_a_file_are_reported_at_once() {
        let text = "sagas:\n  one:\n    timeout: never\n    steps:\n      - { id: a, service: s, operation: o, depends_on: [nope] }\n      - { id: a, service: s, operation: o, retry: missing }\n  two:\n    steps: []\n";
        let e = yaml_err(text);
        assert_eq!(e.code(), "E-DEF-MANY");
        assert_eq!(
            codes(&e),
            [
                "E-DEF-DURATION",
                "E-DEF-DUPLICATE-STEP",
                "E-DEF-UNKNOWN-DEPENDENCY",
                "E-DEF-UNKNOWN-POLICY",
                "E-DEF-EMPTY",
            ]
        );
        let text = e.to_string();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(
            text.lines().all(|l| l.starts_with("bad.yaml: saga `")),
            "{text}"
        );
        assert!(e.errors().iter().all(|e| e.place().is_some()));
    }

    // --- validate() on built definitions -----------------------------------

    fn built() -> SagaDefinition {
        yaml(EXAMPLE_YAML).unwrap().sagas.remove(0)
    }

    #[test]
    fn validate_checks_built_definitions() {
        let mut def = built();
        def.steps[0].depends_on = vec![7];
        let e = validate(&def).unwrap_err();
        assert_eq!(e.code(), "E-DEF-UNKNOWN-DEPENDENCY");
        assert_eq!(
            e.to_string(),
            "request: saga `deploy_environment`, step `register_manifest`: field `depends_on`: step index 7 is out of range (the saga has 2 steps)"
        );

        let mut def = built();
        def.steps[0].depends_on = vec![1];
        let e = validate(&def).unwrap_err();
        assert_eq!(
            e.to_string(),
            "request: saga `deploy_environment`: dependency cycle register_manifest -> deploy_containers -> register_manifest; remove one of these dependencies"
        );

        let mut def = built();
        def.name = "a b".into();
        def.timeout = Some(Duration::ZERO);
        def.steps[1].id = "register_manifest".into();
        def.steps[1].timeout = Duration::from_secs(400 * 86_400);
        def.steps[1].retry.jitter = f64::NAN;
        def.steps[1].retry.backoff_factor = f64::INFINITY;
        def.steps[1].retry.max_attempts = 0;
        def.steps[1].compensation = Some(String::new());
        let e = validate_in("api", &def).unwrap_err();
        assert_eq!(
            codes(&e),
            [
                "E-DEF-NAME",
                "E-DEF-DURATION",
                "E-DEF-DUPLICATE-STEP",
                "E-DEF-NAME",
                "E-DEF-DURATION",
                "E-DEF-RETRY",
                "E-DEF-RETRY",
                "E-DEF-RETRY",
            ]
        );
        assert!(
            e.to_string()
                .lines()
                .all(|l| l.starts_with("api: saga `a b`")),
            "{e}"
        );

        let mut def = built();
        def.steps.clear();
        assert_eq!(validate(&def).unwrap_err().code(), "E-DEF-EMPTY");
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

    // --- never panic -------------------------------------------------------

    #[test]
    fn deeply_nested_input_is_rejected_without_overflow() {
        for text in [
            "[".repeat(100_000),
            "{\"sagas\":".repeat(100_000),
            format!("sagas:\n  s:\n    steps: {}", "[".repeat(100_000)),
            format!("sagas:\n  s:\n    steps: {}", "- ".repeat(100_000)),
        ] {
            assert!(yaml(&text).is_err());
            assert!(json(&text).is_err());
        }
    }

    fn mutate(base: &str, edits: &[(usize, u8, char)]) -> String {
        let mut chars: Vec<char> = base.chars().collect();
        for &(pos, kind, c) in edits {
            let pos = pos % (chars.len() + 1);
            match kind % 3 {
                0 => chars.insert(pos, c),
                1 if pos < chars.len() => {
                    chars.remove(pos);
                }
                _ if pos < chars.len() => chars[pos] = c,
                _ => chars.push(c),
            }
        }
        chars.into_iter().collect()
    }

    fn interesting_char() -> impl Strategy<Value = char> {
        prop_oneof![
            prop::sample::select(vec![
                '{', '}', '[', ']', ':', ',', '-', ' ', '\n', '\t', '"', '\'', '#', '&', '*', '!',
                '|', '>', '0', '9', 'a', '.', '\\', '\u{0}', '\u{feff}',
            ]),
            any::<char>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse_str("fuzz", &text, Format::Yaml);
            let _ = parse_str("fuzz", &text, Format::Json);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_str("fuzz", &text, Format::Yaml);
            let _ = parse_str("fuzz", &text, Format::Json);
        }

        #[test]
        fn mutated_valid_files_never_panic(
            edits in prop::collection::vec((any::<usize>(), any::<u8>(), interesting_char()), 1..8),
        ) {
            for base in [EXAMPLE_YAML, EXAMPLE_JSON] {
                let text = mutate(base, &edits);
                for format in [Format::Yaml, Format::Json] {
                    if let Ok(file) = parse_str("fuzz", &text, format) {
                        // Whatever parses also revalidates as a built definition.
                        for saga in &file.sagas {
                            prop_assert!(validate(saga).is_ok(), "{text}");
                        }
                    }
                }
            }
        }

        #[test]
        fn validate_never_panics_on_built_definitions(
            deps in prop::collection::vec(prop::collection::vec(0usize..12, 0..4), 0..10),
            jitter in any::<f64>(),
            factor in any::<f64>(),
            attempts in any::<u32>(),
            delay_ms in any::<u64>(),
        ) {
            let mut def = built();
            let template = def.steps[0].clone();
            def.steps = deps
                .iter()
                .enumerate()
                .map(|(i, d)| StepDefinition {
                    id: format!("s{i}"),
                    depends_on: d.clone(),
                    retry: RetryPolicy {
                        max_attempts: attempts,
                        initial_delay: Duration::from_millis(delay_ms),
                        backoff_factor: factor,
                        jitter,
                        ..RetryPolicy::default()
                    },
                    ..template.clone()
                })
                .collect();
            let _ = validate(&def);
            for step in &def.steps {
                for attempt in 0..4 {
                    prop_assert!(step.retry.delay(attempt, jitter) <= step.retry.max_delay);
                }
            }
        }
    }
}
