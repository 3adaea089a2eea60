//! The wire protocol between the jetsaga engine, its workers and its clients.
//!
//! Everything that crosses NATS is defined here, once, so that the engine and
//! the SDK can never disagree about a message. `docs/PROTOCOL.md` describes the
//! same contract for workers written in other languages.
//!
//! All subjects, stream names and consumer names are derived from a
//! [`Subjects`] value built from the installation's subject prefix (default
//! `jetsaga`), so that several installations can share one NATS system.

pub mod api;
pub mod error_code;
pub mod op;
pub mod partition;
pub mod pattern;
pub mod telemetry;
pub mod trace_context;

pub use error_code::{ErrorCode, UnknownErrorCode};
pub use op::Op;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

pub use api::{SagaState, StartReply, StartRequest};

/// Default subject prefix of an installation.
pub const DEFAULT_PREFIX: &str = "jetsaga";

/// Header carrying the JetStream de-duplication id of a message.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Header carrying the step's idempotency key on task messages.
pub const HEADER_IDEMPOTENCY_KEY: &str = "Jetsaga-Idempotency-Key";
/// Header carrying the saga id on task and result messages.
pub const HEADER_SAGA_ID: &str = "Jetsaga-Saga-Id";
/// Header of a task message: a random token, the same on every delivery of
/// the task, that its results carry in their `Nats-Msg-Id`
/// ([`result_msg_id_with`]). Only the workers of the task's service can
/// read it, so no other client can publish a result id ahead of them and
/// have JetStream drop their result as a duplicate.
pub const HEADER_RESULT_TOKEN: &str = "Jetsaga-Result-Token";
/// Header carrying a start request's idempotency key on the NATS request API.
pub const HEADER_START_KEY: &str = "Idempotency-Key";

/// Largest message the engine accepts by default (saga input, results), in bytes.
pub const DEFAULT_MAX_PAYLOAD: usize = 512 * 1024;

/// How much larger than its `max_payload` the engine makes its streams'
/// largest message size (room for headers and envelopes; docs/PROTOCOL.md,
/// Streams). A worker reads the engine's `max_payload` back from it.
pub const STREAM_HEADROOM: usize = 64 * 1024;

/// Names of every subject, stream, consumer and bucket of one installation.
///
/// ```
/// use jetsaga_protocol::Subjects;
/// let s = Subjects::new("jetsaga");
/// assert_eq!(s.task("payments"), "jetsaga.task.payments");
/// assert_eq!(s.tasks_stream(), "JETSAGA_TASKS");
/// assert_eq!(s.service_consumer("payments"), "jetsaga-svc-payments");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    stream_prefix: String,
}

impl Subjects {
    /// Builds the names for `prefix`. The prefix must be a valid subject
    /// token sequence (see [`validate_prefix`]).
    pub fn new(prefix: &str) -> Self {
        let stream_prefix = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        Self {
            prefix: prefix.to_string(),
            stream_prefix,
        }
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Subject a task for `service` is published on.
    pub fn task(&self, service: &str) -> String {
        format!("{}.task.{service}", self.prefix)
    }
    /// Wildcard of every task subject.
    pub fn tasks_wildcard(&self) -> String {
        format!("{}.task.>", self.prefix)
    }
    /// Work-queue stream holding tasks.
    pub fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.stream_prefix)
    }
    /// Durable pull consumer shared by every worker of `service`.
    pub fn service_consumer(&self, service: &str) -> String {
        format!("{}-svc-{service}", self.prefix.replace('.', "-"))
    }

    /// Subject a worker publishes the result of a task of `service` on,
    /// for a saga of partition 0.
    pub fn result(&self, service: &str) -> String {
        format!("{}.result.{service}", self.prefix)
    }
    /// Subject a worker publishes the result of a task of `service` on,
    /// for a saga of `partition` (the task's [`Task::partition`]):
    /// `<prefix>.result.<service>` for partition 0, as before partitions,
    /// and `<prefix>.result.<service>.<partition>` for the others, so that
    /// the leader of each partition consumes its own.
    ///
    /// ```
    /// use jetsaga_protocol::Subjects;
    /// let s = Subjects::new("jetsaga");
    /// assert_eq!(s.result_in("payments", 0), "jetsaga.result.payments");
    /// assert_eq!(s.result_in("payments", 3), "jetsaga.result.payments.3");
    /// ```
    pub fn result_in(&self, service: &str, partition: u32) -> String {
        if partition == 0 {
            self.result(service)
        } else {
            format!("{}.result.{service}.{partition}", self.prefix)
        }
    }
    /// The results of the sagas of `partition`, in an installation of
    /// `partitions`: what the engine consumer of that partition reads.
    pub fn results_of(&self, partition: u32, partitions: u32) -> String {
        match (partition, partitions) {
            (_, 0 | 1) => self.results_wildcard(),
            (0, _) => format!("{}.result.*", self.prefix),
            (p, _) => format!("{}.result.*.{p}", self.prefix),
        }
    }
    /// Wildcard of every result subject.
    pub fn results_wildcard(&self) -> String {
        format!("{}.result.>", self.prefix)
    }
    /// Work-queue stream holding results.
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.stream_prefix)
    }

    /// Subject of the terminal outcome of the task with `idempotency_key`,
    /// of `service`, for a saga of `partition`:
    /// `<prefix>.outcome.<service>.<partition>.<key>` (the partition always
    /// written, 0 too). The first message on it is the step's idempotency
    /// record and its result at once (written with
    /// `Nats-Expected-Last-Subject-Sequence: 0`); see `docs/PROTOCOL.md`.
    ///
    /// ```
    /// use jetsaga_protocol::Subjects;
    /// let s = Subjects::new("jetsaga");
    /// assert_eq!(
    ///     s.outcome("payments", 0, "s1.charge.action"),
    ///     "jetsaga.outcome.payments.0.s1.charge.action"
    /// );
    /// assert_eq!(s.outcomes_stream(), "JETSAGA_OUTCOMES");
    /// ```
    pub fn outcome(&self, service: &str, partition: u32, idempotency_key: &str) -> String {
        format!(
            "{}.outcome.{service}.{partition}.{idempotency_key}",
            self.prefix
        )
    }
    /// The outcomes of the sagas of `partition`: what the leader of that
    /// partition reads.
    pub fn outcomes_of(&self, partition: u32) -> String {
        format!("{}.outcome.*.{partition}.>", self.prefix)
    }
    /// Wildcard of every outcome subject.
    pub fn outcomes_wildcard(&self) -> String {
        format!("{}.outcome.>", self.prefix)
    }
    /// Limits-retention stream holding outcomes, one message per
    /// idempotency key, for the records' lifetime.
    pub fn outcomes_stream(&self) -> String {
        format!("{}_OUTCOMES", self.stream_prefix)
    }
    /// Name of the durable consumer with which the leader of `partition`
    /// reads its outcomes: `<prefix>-engine-outcomes-p<partition>`.
    pub fn engine_outcomes_consumer_of(&self, partition: u32) -> String {
        format!("{}-outcomes-p{partition}", self.engine_consumer())
    }

    /// Durable start subject for saga `saga_name` (JetStream, `Nats-Msg-Id` = idempotency key).
    pub fn start(&self, saga_name: &str) -> String {
        format!("{}.start.{saga_name}", self.prefix)
    }
    /// Wildcard of every durable start subject.
    pub fn starts_wildcard(&self) -> String {
        format!("{}.start.>", self.prefix)
    }
    /// Work-queue stream holding durable starts.
    pub fn starts_stream(&self) -> String {
        format!("{}_STARTS", self.stream_prefix)
    }

    /// Subject a lifecycle event of type `type_suffix` (for example
    /// `saga.completed`) of a saga named `saga_name` is published on.
    ///
    /// ```
    /// use jetsaga_protocol::Subjects;
    /// let s = Subjects::new("jetsaga");
    /// assert_eq!(s.event("deploy", "saga.completed"), "jetsaga.event.deploy.saga.completed");
    /// assert_eq!(s.events_stream(), "JETSAGA_EVENTS");
    /// ```
    pub fn event(&self, saga_name: &str, type_suffix: &str) -> String {
        format!("{}.event.{saga_name}.{type_suffix}", self.prefix)
    }
    /// Wildcard of every lifecycle event subject.
    pub fn events_wildcard(&self) -> String {
        format!("{}.event.>", self.prefix)
    }
    /// Limits-retention stream holding lifecycle events (CloudEvents).
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix)
    }
    /// Work-queue stream capturing the trigger subjects outside the prefix.
    pub fn triggers_stream(&self) -> String {
        format!("{}_TRIGGERS", self.stream_prefix)
    }

    /// Name of the engine's durable consumer on the results and starts streams.
    pub fn engine_consumer(&self) -> String {
        format!("{}-engine", self.prefix.replace('.', "-"))
    }
    /// Name of the durable consumer with which the leader of `partition`
    /// reads its results: [`Self::engine_consumer`] for partition 0,
    /// `<prefix>-engine-p<partition>` for the others.
    pub fn engine_consumer_of(&self, partition: u32) -> String {
        if partition == 0 {
            self.engine_consumer()
        } else {
            format!("{}-p{partition}", self.engine_consumer())
        }
    }
    /// Name of the engine's durable consumer of trigger subjects on the
    /// events stream.
    pub fn triggers_consumer(&self) -> String {
        format!("{}-triggers", self.engine_consumer())
    }

    /// Request subject of the engine's NATS API for `op`
    /// (for example `<prefix>.api.saga.start`).
    pub fn api(&self, op: Op) -> String {
        format!("{}.api.{}", self.prefix, op.name())
    }
    /// The operation name an API subject ends with (`saga.start` of
    /// `<prefix>.api.saga.start`), whether an [`Op`] has it or not; `None`
    /// for a subject outside the API.
    pub fn api_op_name<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".api.")
    }
    /// Wildcard of every API subject.
    pub fn api_wildcard(&self) -> String {
        format!("{}.api.>", self.prefix)
    }

    /// Core-NATS subject the engine notifies on after every change of saga `saga_id`.
    pub fn progress(&self, saga_id: &str) -> String {
        format!("{}.progress.{saga_id}", self.prefix)
    }

    /// JetStream key-value bucket in which workers recorded handler
    /// outcomes before the [outcomes stream](Self::outcomes_stream); still
    /// read by workers while it exists, never written.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_IDEMPOTENCY", self.stream_prefix)
    }

    /// Stream holding every partition's journal (one subject each).
    pub fn journal_stream(&self) -> String {
        format!("{}_JOURNAL", self.stream_prefix)
    }
    /// Subject of partition `partition`'s journal.
    pub fn journal(&self, partition: u32) -> String {
        format!("{}.journal.{partition}", self.prefix)
    }
    /// Wildcard of every journal subject.
    pub fn journal_wildcard(&self) -> String {
        format!("{}.journal.>", self.prefix)
    }
    /// Key-value bucket of the installation's layout and the partitions'
    /// leases (`partitions`, `lease.<partition>`).
    pub fn cluster_bucket(&self) -> String {
        format!("{}_CLUSTER", self.stream_prefix)
    }
    /// Key-value bucket of the engines' heartbeats (`<engine id>`), whose
    /// entries age out when an engine stops beating.
    pub fn engines_bucket(&self) -> String {
        format!("{}_ENGINES", self.stream_prefix)
    }
    /// Object store of the partitions' snapshots (`partition.<partition>`).
    pub fn snapshots_bucket(&self) -> String {
        format!("{}_SNAPSHOTS", self.stream_prefix)
    }
    /// Request subject served only by the leader of `partition`: the
    /// engines that do not lead it forward `op` there.
    pub fn leader_api(&self, partition: u32, op: Op) -> String {
        format!("{}.lead.{partition}.{}", self.prefix, op.name())
    }
    /// Wildcard of every request subject of the leader of `partition`.
    pub fn leader_api_wildcard(&self, partition: u32) -> String {
        format!("{}.lead.{partition}.>", self.prefix)
    }
    /// The operation name a leader request subject ends with.
    pub fn leader_api_op_name<'a>(&self, partition: u32, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".lead.")?
            .strip_prefix(partition.to_string().as_str())?
            .strip_prefix('.')
    }
}

/// The token after the prefix in every subject an installation uses:
/// `<prefix>.task.…`, `.result.…`, `.start.…`, `.api.…`, `.progress.…`,
/// `.event.…`, `.journal.…`, `.lead.…` (see [`Subjects`]).
pub const SUBJECT_KINDS: &[&str] = &[
    "task", "result", "outcome", "start", "api", "progress", "event", "journal", "lead",
];

/// Whether `subject` has the shape of a subject of some installation,
/// whatever its prefix: `<prefix>.<kind>.<more>`, `<kind>` one of
/// [`SUBJECT_KINDS`] as a literal token (wildcards are not taken for one).
/// Answers the first such reading: the prefix and the kind.
///
/// ```
/// use jetsaga_protocol::installation_subject;
/// assert_eq!(installation_subject("jetsaga.task.payments"), Some(("jetsaga", "task")));
/// assert_eq!(installation_subject("acme.prod.start.>"), Some(("acme.prod", "start")));
/// assert_eq!(installation_subject("orders.created"), None);
/// assert_eq!(installation_subject("orders.task"), None); // nothing after the kind
/// ```
pub fn installation_subject(subject: &str) -> Option<(&str, &'static str)> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let mut offset = 0;
    for (i, token) in tokens.iter().enumerate() {
        if i > 0
            && i + 1 < tokens.len()
            && let Some(kind) = SUBJECT_KINDS.iter().find(|k| *k == token)
        {
            return Some((&subject[..offset - 1], kind));
        }
        offset += token.len() + 1;
    }
    None
}

/// Checks that `prefix` is usable as a subject prefix: one or more tokens of
/// ASCII letters, digits, `_` and `-`, separated by dots.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("the subject prefix is empty".into());
    }
    for token in prefix.split('.') {
        validate_token(token).map_err(|e| format!("subject prefix {prefix:?}: {e}"))?;
    }
    Ok(())
}

/// Checks that `token` can stand as one subject token, a KV key part and a
/// consumer name part: ASCII letters, digits, `_` and `-`, 1 to 64 characters.
pub fn validate_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err("is empty".into());
    }
    if token.len() > 64 {
        return Err(format!("{token:?} is longer than 64 characters"));
    }
    if let Some(c) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "{token:?} contains {c:?}; use letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

/// Whether a task asks for a step's action or its compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskKind {
    /// The step's forward action.
    Action,
    /// The step's compensation (undo).
    Compensation,
}

impl TaskKind {
    /// Short lowercase name used in ids and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Action => "action",
            TaskKind::Compensation => "compensation",
        }
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The idempotency key of a step's action or compensation in a saga's first
/// run (key generation 0): stable across attempts, distinct for the
/// compensation. It is a valid KV key. Same as
/// [`idempotency_key_in_generation`] with generation 0.
pub fn idempotency_key(saga_id: &str, step_id: &str, kind: TaskKind) -> String {
    idempotency_key_in_generation(saga_id, step_id, kind, 0)
}

/// The idempotency key of a step's action or compensation in key generation
/// `generation`: `<saga>.<step>.<kind>` for generation 0 (the keys of a saga
/// never retried, as before generations existed), `<saga>.<step>.<kind>.g<N>`
/// after. An operator's retry of a finished saga moves to a new generation
/// where a key must not replay what was recorded under the old one (a fatal
/// error, or a success whose effect was compensated since). A valid KV key.
///
/// ```
/// use jetsaga_protocol::{TaskKind, idempotency_key_in_generation};
/// assert_eq!(idempotency_key_in_generation("s1", "pay", TaskKind::Action, 0), "s1.pay.action");
/// assert_eq!(idempotency_key_in_generation("s1", "pay", TaskKind::Compensation, 2), "s1.pay.compensation.g2");
/// ```
pub fn idempotency_key_in_generation(
    saga_id: &str,
    step_id: &str,
    kind: TaskKind,
    generation: u32,
) -> String {
    if generation == 0 {
        format!("{saga_id}.{step_id}.{}", kind.as_str())
    } else {
        format!("{saga_id}.{step_id}.{}.g{generation}", kind.as_str())
    }
}

/// `Nats-Msg-Id` of a task message.
pub fn task_msg_id(saga_id: &str, step_id: &str, kind: TaskKind, attempt: u32) -> String {
    format!("task.{saga_id}.{step_id}.{}.{attempt}", kind.as_str())
}

/// `Nats-Msg-Id` of a result message, for a task without a
/// [`HEADER_RESULT_TOKEN`].
pub fn result_msg_id(saga_id: &str, step_id: &str, kind: TaskKind, attempt: u32) -> String {
    format!("result.{saga_id}.{step_id}.{}.{attempt}", kind.as_str())
}

/// `Nats-Msg-Id` of a result message of a task whose
/// [`HEADER_RESULT_TOKEN`] is `token`:
/// `result.<saga>.<step>.<kind>.<attempt>.<token>`, or the plain
/// [`result_msg_id`] without a usable token (1 to 64 ASCII letters and
/// digits).
///
/// ```
/// use jetsaga_protocol::{TaskKind, result_msg_id_with};
/// assert_eq!(
///     result_msg_id_with("s-1", "pay", TaskKind::Action, 2, Some("9f3a")),
///     "result.s-1.pay.action.2.9f3a"
/// );
/// assert_eq!(
///     result_msg_id_with("s-1", "pay", TaskKind::Action, 2, Some("a.b")),
///     "result.s-1.pay.action.2"
/// );
/// ```
pub fn result_msg_id_with(
    saga_id: &str,
    step_id: &str,
    kind: TaskKind,
    attempt: u32,
    token: Option<&str>,
) -> String {
    let plain = result_msg_id(saga_id, step_id, kind, attempt);
    match token {
        Some(token) if is_result_token(token) => format!("{plain}.{token}"),
        _ => plain,
    }
}

/// Whether `token` is usable in a result id: 1 to 64 ASCII letters and
/// digits.
fn is_result_token(token: &str) -> bool {
    (1..=64).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The attempt a [`result_msg_id`] names: saga id, step id, kind, attempt.
///
/// ```
/// use jetsaga_protocol::{TaskKind, parse_result_msg_id, result_msg_id};
/// let id = result_msg_id("s-1", "pay", TaskKind::Compensation, 3);
/// assert_eq!(
///     parse_result_msg_id(&id),
///     Some(("s-1".to_string(), "pay".to_string(), TaskKind::Compensation, 3))
/// );
/// assert_eq!(parse_result_msg_id("task.s-1.pay.action.1"), None);
/// // With the task's result token.
/// assert_eq!(
///     parse_result_msg_id("result.s-1.pay.action.3.9f3a"),
///     Some(("s-1".to_string(), "pay".to_string(), TaskKind::Action, 3))
/// );
/// ```
pub fn parse_result_msg_id(id: &str) -> Option<(String, String, TaskKind, u32)> {
    let mut parts = id.split('.');
    let (Some("result"), Some(saga_id), Some(step_id), Some(kind), Some(attempt), token, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    if token.is_some_and(|t| !is_result_token(t)) {
        return None;
    }
    let kind = match kind {
        "action" => TaskKind::Action,
        "compensation" => TaskKind::Compensation,
        _ => return None,
    };
    if saga_id.is_empty() || step_id.is_empty() {
        return None;
    }
    Some((
        saga_id.to_string(),
        step_id.to_string(),
        kind,
        attempt.parse().ok()?,
    ))
}

/// A unit of work for a worker: run `operation` of `service` for one step of one saga.
///
/// Published by the engine on [`Subjects::task`] with `Nats-Msg-Id` =
/// [`task_msg_id`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Saga instance id.
    pub saga_id: String,
    /// Saga definition name.
    pub saga_name: String,
    /// Step id within the definition.
    pub step_id: String,
    /// Action or compensation.
    pub kind: TaskKind,
    /// Service (work queue) the task is for.
    pub service: String,
    /// Operation to run: the step's `operation` or its `compensation`.
    pub operation: String,
    /// Attempt number, from 1. A result must echo it.
    pub attempt: u32,
    /// Key stable across attempts of this step and kind; pass it on to
    /// downstream services to make their effects idempotent.
    pub idempotency_key: String,
    /// The saga's input.
    pub input: Value,
    /// Outputs of the saga's succeeded steps so far, by step id. For a
    /// compensation this includes the compensated step's own output.
    #[serde(default)]
    pub context: BTreeMap<String, Value>,
    /// Time the worker has for this attempt, in milliseconds; after it the
    /// engine considers the attempt timed out.
    pub timeout_ms: u64,
    /// The saga's partition; its result goes to
    /// [`Subjects::result_in`]`(service, partition)`. Absent (0) in an
    /// installation of one partition.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub partition: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The outcome of running a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The effect happened; `output` is made available to later steps.
    Ok {
        /// Handler output.
        #[serde(default)]
        output: Value,
    },
    /// The effect did not happen and may succeed if tried again.
    Retryable {
        /// What went wrong.
        error: String,
        /// Earliest time to try again, if the handler knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The effect did not happen and never will: the saga compensates.
    Fatal {
        /// What went wrong.
        error: String,
    },
}

impl Outcome {
    /// Short name of the outcome (`ok`, `retryable`, `fatal`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Fatal { .. } => "fatal",
        }
    }
}

/// A worker's answer to a [`Task`], published on [`Subjects::result`] with
/// `Nats-Msg-Id` = [`result_msg_id`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Saga instance id, copied from the task.
    pub saga_id: String,
    /// Step id, copied from the task.
    pub step_id: String,
    /// Action or compensation, copied from the task.
    pub kind: TaskKind,
    /// Attempt number, copied from the task.
    pub attempt: u32,
    /// Service the worker serves, copied from the task.
    pub service: String,
    /// What happened.
    pub outcome: Outcome,
    /// Whether this result was replayed from the idempotency store rather
    /// than produced by running the handler now.
    #[serde(default)]
    pub replayed: bool,
    /// Free-form identity of the worker (host and process).
    #[serde(default)]
    pub worker: String,
}

/// Error reply of the NATS request API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable error code, documented in `docs/ERRORS.md`. Kept as sent, so
    /// that a code of a newer engine still decodes; [`ApiError::error_code`]
    /// reads it as an [`ErrorCode`].
    pub code: String,
    /// Human-readable explanation with what to do.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code: code.as_str().to_string(),
            message: message.into(),
        }
    }

    /// The code, or `None` for one this version does not know.
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.code.parse().ok()
    }
}

/// Envelope of every NATS API reply: either `{"ok": ...}` or `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiReply<T> {
    /// Success.
    Ok(T),
    /// Failure.
    Error(ApiError),
}

/// The one field of the output a success reports in place of an output
/// too large to carry (over the handler output limit): its value says why
/// it was dropped. The outcome stays a success: the effect happened, and
/// the step is compensated on a rollback.
pub const OUTPUT_DROPPED: &str = "jetsaga_output_dropped";

/// Whether `key` is usable as an idempotency key: the last tokens of an
/// outcome subject ([`Subjects::outcome`]) and a KV key (the rule
/// async-nats enforces, and no empty token).
pub fn is_valid_kv_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_json_shape_is_tagged() {
        let ok = Outcome::Ok {
            output: serde_json::json!({"a": 1}),
        };
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"status": "ok", "output": {"a": 1}})
        );
        let r: Outcome = serde_json::from_str(r#"{"status":"retryable","error":"busy"}"#).unwrap();
        assert_eq!(
            r,
            Outcome::Retryable {
                error: "busy".into(),
                retry_after_ms: None
            }
        );
    }

    #[test]
    fn api_errors_keep_their_wire_shape_and_codes_of_newer_engines() {
        let e = ApiError::new(ErrorCode::NotFound, "no saga");
        assert_eq!(
            serde_json::to_string(&ApiReply::<()>::Error(e.clone())).unwrap(),
            r#"{"error":{"code":"E-NOT-FOUND","message":"no saga"}}"#
        );
        assert_eq!(e.error_code(), Some(ErrorCode::NotFound));
        let newer: ApiReply<()> =
            serde_json::from_str(r#"{"error":{"code":"E-SOMETHING-NEW","message":"m"}}"#).unwrap();
        let ApiReply::Error(newer) = newer else {
            panic!("an error envelope")
        };
        assert_eq!(newer.code, "E-SOMETHING-NEW");
        assert_eq!(newer.error_code(), None);
    }

    #[test]
    fn names_follow_prefix() {
        let s = Subjects::new("acme.prod");
        assert_eq!(s.tasks_stream(), "ACME_PROD_TASKS");
        assert_eq!(s.service_consumer("x"), "acme-prod-svc-x");
        assert_eq!(s.api(Op::SagaStart), "acme.prod.api.saga.start");
        assert_eq!(
            s.api_op_name("acme.prod.api.saga.start"),
            Some("saga.start")
        );
        assert_eq!(s.api_op_name("acme.prod.api.nope"), Some("nope"));
        assert_eq!(s.api_op_name("acme.prodx.api.saga.start"), None);
        assert_eq!(s.api_op_name("acme.prod.task.x"), None);
    }

    #[test]
    fn idempotency_keys_by_generation() {
        let k = |kind, generation| idempotency_key_in_generation("s-1", "pay", kind, generation);
        assert_eq!(
            idempotency_key("s-1", "pay", TaskKind::Action),
            "s-1.pay.action"
        );
        assert_eq!(k(TaskKind::Action, 0), "s-1.pay.action");
        assert_eq!(k(TaskKind::Action, 1), "s-1.pay.action.g1");
        assert_eq!(k(TaskKind::Compensation, 7), "s-1.pay.compensation.g7");
        // Distinct across kinds and generations, and valid KV keys.
        let keys: std::collections::BTreeSet<String> = [0, 1, 2, 10, u32::MAX]
            .into_iter()
            .flat_map(|g| [k(TaskKind::Action, g), k(TaskKind::Compensation, g)])
            .collect();
        assert_eq!(keys.len(), 10);
        assert!(keys.iter().all(|key| is_valid_kv_key(key)), "{keys:?}");
    }

    #[test]
    fn tokens_are_checked() {
        assert!(validate_token("register_manifest").is_ok());
        assert!(validate_token("a.b").is_err());
        assert!(validate_token("").is_err());
        assert!(validate_prefix("jetsaga").is_ok());
        assert!(validate_prefix("a..b").is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Pieces of JSON and of the protocol's field names: glued together
        /// at random they give text that is mostly invalid, sometimes valid,
        /// and often nearly valid.
        const PIECES: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            " ",
            "null",
            "true",
            "false",
            "0",
            "-1",
            "4294967296",
            "18446744073709551616",
            "1e400",
            "0.5",
            "\"saga_id\"",
            "\"saga_name\"",
            "\"step_id\"",
            "\"kind\"",
            "\"action\"",
            "\"compensation\"",
            "\"service\"",
            "\"operation\"",
            "\"attempt\"",
            "\"idempotency_key\"",
            "\"input\"",
            "\"context\"",
            "\"timeout_ms\"",
            "\"outcome\"",
            "\"status\"",
            "\"ok\"",
            "\"retryable\"",
            "\"fatal\"",
            "\"error\"",
            "\"output\"",
            "\"retry_after_ms\"",
            "\"replayed\"",
            "\"worker\"",
            "\"saga\"",
            "\"created\"",
            "\"code\"",
            "\"message\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\u{1F600}",
        ];

        fn json_ish() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(PIECES), 0..48).prop_map(|p| p.concat())
        }

        /// Arbitrary JSON values (numbers limited to those JSON round-trips
        /// exactly: integers, and floats with few significant bits).
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(".{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn kind() -> impl Strategy<Value = TaskKind> {
            prop_oneof![Just(TaskKind::Action), Just(TaskKind::Compensation)]
        }

        fn outcome() -> impl Strategy<Value = Outcome> {
            prop_oneof![
                json_value().prop_map(|output| Outcome::Ok { output }),
                (".{0,16}", prop::option::of(any::<u64>())).prop_map(|(error, retry_after_ms)| {
                    Outcome::Retryable {
                        error,
                        retry_after_ms,
                    }
                }),
                ".{0,16}".prop_map(|error| Outcome::Fatal { error }),
            ]
        }

        fn task_result() -> impl Strategy<Value = TaskResult> {
            (
                (".{0,16}", ".{0,16}", kind(), any::<u32>()),
                (".{0,16}", outcome(), any::<bool>(), ".{0,16}"),
            )
                .prop_map(
                    |((saga_id, step_id, kind, attempt), (service, outcome, replayed, worker))| {
                        TaskResult {
                            saga_id,
                            step_id,
                            kind,
                            attempt,
                            service,
                            outcome,
                            replayed,
                            worker,
                        }
                    },
                )
        }

        fn task() -> impl Strategy<Value = Task> {
            (
                (".{0,16}", ".{0,16}", ".{0,16}", kind()),
                (".{0,16}", ".{0,16}", any::<u32>(), ".{0,16}"),
                (
                    json_value(),
                    prop::collection::btree_map(".{0,8}", json_value(), 0..4),
                    any::<u64>(),
                ),
            )
                .prop_map(
                    |(
                        (saga_id, saga_name, step_id, kind),
                        (service, operation, attempt, idempotency_key),
                        (input, context, timeout_ms),
                    )| Task {
                        saga_id,
                        saga_name,
                        step_id,
                        kind,
                        service,
                        operation,
                        attempt,
                        idempotency_key,
                        input,
                        context,
                        timeout_ms,
                        partition: timeout_ms as u32 % 5,
                    },
                )
        }

        /// Decodes `bytes` as every message type of the protocol; a decoder
        /// may refuse them but must not panic, and what it accepts must
        /// encode again.
        fn decode_all(bytes: &[u8]) {
            if let Ok(v) = serde_json::from_slice::<Task>(bytes) {
                serde_json::to_vec(&v).expect("a decoded task encodes");
            }
            if let Ok(v) = serde_json::from_slice::<TaskResult>(bytes) {
                serde_json::to_vec(&v).expect("a decoded result encodes");
            }
            if let Ok(v) = serde_json::from_slice::<StartRequest>(bytes) {
                serde_json::to_vec(&v).expect("a decoded start request encodes");
            }
            if let Ok(v) = serde_json::from_slice::<ApiReply<StartReply>>(bytes) {
                serde_json::to_vec(&v).expect("a decoded reply encodes");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                decode_all(&bytes);
            }

            #[test]
            fn json_ish_text_never_panics(text in json_ish()) {
                decode_all(text.as_bytes());
            }

            #[test]
            fn task_results_round_trip(result in task_result()) {
                let bytes = serde_json::to_vec(&result).unwrap();
                prop_assert_eq!(serde_json::from_slice::<TaskResult>(&bytes).unwrap(), result);
            }

            #[test]
            fn tasks_round_trip(task in task()) {
                let bytes = serde_json::to_vec(&task).unwrap();
                prop_assert_eq!(serde_json::from_slice::<Task>(&bytes).unwrap(), task);
            }

            /// The `Value` form (what `Task.context` and handler outputs
            /// pass through) round-trips too.
            #[test]
            fn task_results_round_trip_through_value(result in task_result()) {
                let value = serde_json::to_value(&result).unwrap();
                prop_assert_eq!(serde_json::from_value::<TaskResult>(value).unwrap(), result);
            }
        }
    }
}
