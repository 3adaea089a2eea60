//! Event-triggered sagas: a definition's `triggers` name subjects, and each
//! message on one of them starts one saga of that definition.
//!
//! ```yaml
//! sagas:
//!   fulfil_order:
//!     triggers:
//!       - subject: orders.created
//!         input: { order_id: /data/id, amount: data.total }
//!     steps: ...
//! ```
//!
//! Where the messages come from:
//!
//! - A trigger subject outside the engine's prefix is captured by the
//!   engine's work-queue stream `<PREFIX>_TRIGGERS`, whose subjects are the
//!   union of the trigger subjects of the current definitions (set at start
//!   and whenever definitions are applied), read by the durable consumer
//!   `<prefix>-engine`. A plain `nats pub orders.created '{...}'` is stored
//!   there, also while the engine is down.
//! - A trigger on the engine's own lifecycle events (`<prefix>.event.…`,
//!   such as `jetsaga.event.order.saga.completed`) cannot be captured twice:
//!   JetStream refuses a stream whose subjects overlap another stream's, and
//!   `<PREFIX>_EVENTS` already holds them. Those triggers read
//!   `<PREFIX>_EVENTS` itself through a second durable consumer,
//!   `<prefix>-engine-triggers`, filtered on exactly those subjects and
//!   created to deliver only events published from then on.
//! - Any other subject under the prefix (starts, tasks, results, the API),
//!   another installation's lifecycle events (`<other>.event.…`; the
//!   engine subjects of any prefix are already refused by definition
//!   validation) and a subject another stream already captures are refused when the
//!   definition is applied ([`ApplyGuard`], `E-DEF-TRIGGER`): consuming a
//!   stream the engine does not own could take messages from its owner's
//!   consumers (work queues) and would tie the engine to its retention.
//!   At start-up, stored definitions with such a subject are logged and
//!   counted (`trigger_subject`), and their other triggers still work.
//!
//! Deduplication: the saga is started with the idempotency key
//! `trigger:<saga>:<id>`, where `<id>` is the CloudEvent `id` of a
//! structured CloudEvent (a JSON object with `specversion` and `id`), else
//! the `ce-id` header (binary CloudEvent), else the `Nats-Msg-Id` header,
//! else `<stream>:<sequence>` of the message. The key binding in the store
//! makes a repeat start nothing new for as long as the saga it started is
//! kept (see the engine's `retention`), not only within the stream's
//! duplicate window. The message is acknowledged once every start it caused
//! is durable (or refused); a crash before that redelivers it, and the key
//! deduplicates it.
//!
//! Refused messages are acknowledged, logged and counted in
//! `engine_rejected_messages_total{reason}`: `malformed` (not JSON),
//! `oversized`, `trigger_mapping` (an `input` path the event lacks),
//! `trigger_id` (an id too long for a key), `trigger_unmatched` (no current
//! definition has a trigger for the subject, say after its trigger was
//! removed). A start the partition refuses (a saga disabled by its policy:
//! `E-SAGA-DISABLED`) is counted under its code. Started sagas are counted
//! in `engine_triggered_starts_total{saga}`.

use crate::bus::{BusError, StreamSettings, intake};
use crate::metrics::reject;
use crate::partition::{Command, StartCommand, Starts, api_error};
use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull, stream};
use jetsaga_core::saga::definition::{SagaDefinition, Trigger, input_pointer};
use jetsaga_protocol::pattern::{collide, covers, overlap_in_part, reduce};
use jetsaga_protocol::{ApiError, ErrorCode, HEADER_MSG_ID, Subjects};
use jetsaga_store::DefinitionTable;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts caused by triggers that created a saga, by definition.
pub const TRIGGERED_STARTS: &str = "engine_triggered_starts_total";

/// Longest idempotency key the engine accepts.
const MAX_KEY: usize = 256;

/// Where a trigger subject's messages are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// The engine's trigger stream.
    Triggers,
    /// The engine's lifecycle events stream.
    Events,
}

/// Where `subject` is read from, or why a trigger may not use it (a subject
/// of the engine's own other than its lifecycle events).
pub fn scope(subjects: &Subjects, subject: &str) -> Result<Scope, String> {
    let prefix = subjects.prefix();
    let events = subjects.events_wildcard();
    let events_base = events.strip_suffix(".>").unwrap_or(&events);
    if covers(&events, subject) {
        return Ok(Scope::Events);
    }
    if collide(&format!("{prefix}.>"), subject) {
        return Err(format!(
            "subject `{subject}` overlaps the engine's own subjects under `{prefix}.`; a trigger on the engine's subjects may only name lifecycle events, `{events_base}.<saga>.<type>`"
        ));
    }
    if let Some((other, "event")) = jetsaga_protocol::installation_subject(subject) {
        return Err(format!(
            "subject `{subject}` is a lifecycle event of another installation (prefix `{other}`), whose events stream captures it; a trigger may only name this installation's events, `{events_base}.<saga>.<type>`"
        ));
    }
    if subject.starts_with("_INBOX.") || subject == "_INBOX" {
        return Err(format!(
            "subject `{subject}` is a reply inbox; triggers listen on application subjects"
        ));
    }
    Ok(Scope::Triggers)
}

// ---------------------------------------------------------------------------
// Events: ids and input
// ---------------------------------------------------------------------------

/// Whether `body` is a structured-mode CloudEvent: an object with a string
/// `specversion` and a non-empty string `id`.
pub fn is_cloud_event(body: &Value) -> bool {
    body.get("specversion").is_some_and(Value::is_string)
        && body
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| !id.is_empty())
}

/// The id a triggered start is deduplicated by: the CloudEvent `id`, else
/// `ce_id` (the binary-mode `ce-id` header), else `msg_id` (the
/// `Nats-Msg-Id` header), else `fallback` (`<stream>:<sequence>`).
pub fn event_id(
    body: &Value,
    ce_id: Option<&str>,
    msg_id: Option<&str>,
    fallback: Option<String>,
) -> Option<String> {
    if is_cloud_event(body) {
        return body.get("id").and_then(Value::as_str).map(str::to_string);
    }
    ce_id
        .or(msg_id)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .or(fallback)
}

/// The idempotency key of the start of `saga` by the event `id`.
pub fn start_key(saga: &str, id: &str) -> String {
    format!("trigger:{saga}:{id}")
}

/// The saga input `trigger` makes of event `body`: its `input` mapping, or
/// without one the CloudEvent `data` (`null` when absent), or the body.
pub fn saga_input(trigger: &Trigger, body: &Value) -> Result<Value, String> {
    let Some(mapping) = &trigger.input else {
        return Ok(if is_cloud_event(body) {
            body.get("data").cloned().unwrap_or(Value::Null)
        } else {
            body.clone()
        });
    };
    let mut input = serde_json::Map::new();
    for (field, path) in mapping {
        let pointer = input_pointer(path)?;
        let value = body.pointer(&pointer).ok_or_else(|| {
            format!("the event has no value at `{path}` for input field `{field}`")
        })?;
        input.insert(field.clone(), value.clone());
    }
    Ok(Value::Object(input))
}

/// The current definitions with triggers, to match messages against.
#[derive(Debug, Default)]
pub struct Matcher {
    definitions: Vec<Arc<SagaDefinition>>,
}

impl Matcher {
    /// A matcher over `definitions` (those without triggers are left out).
    pub fn new(definitions: Vec<SagaDefinition>) -> Self {
        Self {
            definitions: definitions
                .into_iter()
                .filter(|d| !d.triggers.is_empty())
                .map(Arc::new)
                .collect(),
        }
    }

    /// Each definition with a trigger matching `subject`, with its first
    /// such trigger: one start per definition, however many match.
    pub fn matching(&self, subject: &str) -> Vec<(Arc<SagaDefinition>, Trigger)> {
        self.definitions
            .iter()
            .filter_map(|d| {
                d.triggers
                    .iter()
                    .find(|t| covers(&t.subject, subject))
                    .map(|t| (d.clone(), t.clone()))
            })
            .collect()
    }

    /// Every trigger subject, with its saga.
    fn subjects(&self) -> impl Iterator<Item = (&str, &str)> {
        self.definitions.iter().flat_map(|d| {
            d.triggers
                .iter()
                .map(|t| (d.name.as_str(), t.subject.as_str()))
        })
    }
}

// ---------------------------------------------------------------------------
// Apply-time checks
// ---------------------------------------------------------------------------

/// What the API checks before it stores definitions with triggers, and
/// how it waits, once they are stored, for [`run`] to listen on their
/// subjects.
#[derive(Clone)]
pub struct ApplyGuard {
    js: jetstream::Context,
    subjects: Subjects,
    /// Bumped on every apply.
    requested: Arc<watch::Sender<u64>>,
    /// The last request [`run`] has set the streams up for.
    ready: watch::Receiver<u64>,
}

/// [`run`]'s ends of the channels to its [`ApplyGuard`].
#[derive(Debug)]
pub struct Signals {
    requested: watch::Receiver<u64>,
    ready: watch::Sender<u64>,
    /// Keeps `requested` open whatever becomes of the guards.
    _keep: Arc<watch::Sender<u64>>,
}

/// How long [`ApplyGuard::applied`] waits for the streams to be set up.
const SETUP_WAIT: Duration = Duration::from_secs(10);

impl ApplyGuard {
    /// A guard checking against the streams of `js`, and the signals to
    /// hand to [`run`] in its [`Runtime`].
    pub fn new(js: jetstream::Context, subjects: Subjects) -> (Self, Signals) {
        let (requested_tx, requested_rx) = watch::channel(0);
        let (ready_tx, ready_rx) = watch::channel(0);
        let requested_tx = Arc::new(requested_tx);
        (
            Self {
                js,
                subjects,
                requested: requested_tx.clone(),
                ready: ready_rx,
            },
            Signals {
                requested: requested_rx,
                ready: ready_tx,
                _keep: requested_tx,
            },
        )
    }

    /// Refuses a trigger subject of the engine's own (other than lifecycle
    /// events), one another stream already captures, or one overlapping in
    /// part another trigger subject of `definitions` or of the `current`
    /// definitions they do not replace, with `E-INVALID-DEFINITION` and a
    /// message starting `E-DEF-TRIGGER`, naming saga, field and the cause.
    pub async fn check(
        &self,
        definitions: &[SagaDefinition],
        current: &[SagaDefinition],
    ) -> Result<(), ApiError> {
        let own = self.subjects.triggers_stream();
        let kept = current
            .iter()
            .filter(|c| !definitions.iter().any(|d| d.name == c.name));
        let all: Vec<(&str, &str)> = kept
            .chain(definitions)
            .flat_map(|d| {
                d.triggers
                    .iter()
                    .map(|t| (d.name.as_str(), t.subject.as_str()))
            })
            .filter(|(_, s)| scope(&self.subjects, s) == Ok(Scope::Triggers))
            .collect();
        for def in definitions {
            for (i, trigger) in def.triggers.iter().enumerate() {
                let at = format!(
                    "{}: request: saga `{}`: field `triggers[{i}].subject`",
                    ErrorCode::DefTrigger,
                    def.name
                );
                match scope(&self.subjects, &trigger.subject) {
                    Err(reason) => {
                        return Err(api_error(
                            ErrorCode::InvalidDefinition,
                            format!("{at}: {reason}"),
                        ));
                    }
                    Ok(Scope::Events) => {}
                    Ok(Scope::Triggers) => {
                        if let Some((saga, other)) = all
                            .iter()
                            .find(|(_, s)| overlap_in_part(s, &trigger.subject))
                        {
                            return Err(api_error(
                                ErrorCode::InvalidDefinition,
                                format!(
                                    "{at}: subject `{}` overlaps in part the trigger subject `{other}` of saga `{saga}`, and one stream cannot capture both; use one subject that covers both (or two that do not overlap)",
                                    trigger.subject
                                ),
                            ));
                        }
                        if let Some(other) = self.captured_by(&trigger.subject, &own).await {
                            return Err(api_error(
                                ErrorCode::InvalidDefinition,
                                format!(
                                    "{at}: subject `{}` is already captured by stream `{other}`, and JetStream keeps a subject in one stream; trigger on a subject no stream captures (publish a copy there), or on the engine's lifecycle events",
                                    trigger.subject
                                ),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Has the trigger consumer reread the definitions, and waits (up to
    /// ten seconds) until the streams capture their trigger subjects, so
    /// that a message published after an apply returns starts its saga.
    pub async fn applied(&self) {
        let mut wanted = 0;
        self.requested.send_modify(|n| {
            *n += 1;
            wanted = *n;
        });
        let mut ready = self.ready.clone();
        let waited = tokio::time::timeout(SETUP_WAIT, ready.wait_for(|done| *done >= wanted)).await;
        if !matches!(waited, Ok(Ok(_))) {
            tracing::warn!(
                "the trigger streams are not set up yet for the definitions just applied"
            );
        }
    }

    async fn captured_by(&self, subject: &str, own: &str) -> Option<String> {
        captured_by(&self.js, subject, own).await
    }
}

/// The stream other than `own` whose subjects overlap `subject`, if any.
async fn captured_by(js: &jetstream::Context, subject: &str, own: &str) -> Option<String> {
    match js.stream_by_subject(subject).await {
        Ok(name) if name != own => Some(name),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The consumer
// ---------------------------------------------------------------------------

/// What the trigger consumer needs.
pub struct Runtime {
    /// JetStream.
    pub js: jetstream::Context,
    /// The installation's subjects.
    pub subjects: Subjects,
    /// Stream settings (duplicate window, payload limit, replicas).
    pub settings: StreamSettings,
    /// Where the definitions are read.
    pub store: Arc<dyn DefinitionTable>,
    /// Where starts go: the partitions their keys belong to.
    pub starts: Arc<dyn Starts>,
    /// Ack wait of the consumers.
    pub ack_wait: Duration,
}

/// One setting-up of the streams and consumers for the current definitions.
struct Generation {
    matcher: Arc<Matcher>,
    /// Consumers, each with whether an unmatched message is worth counting
    /// (on the events stream it is just an event no trigger wants).
    consumers: Vec<(PullConsumer, bool)>,
}

/// Runs the trigger consumers until `shutdown`: sets up the streams and
/// consumers for the current definitions, consumes, and starts over when
/// definitions are applied. On shutdown it waits for the starts already
/// sent to be answered (and their messages acknowledged).
///
/// `signals` come from the [`ApplyGuard`] the API checks applies with.
pub async fn run(rt: Runtime, signals: Signals, shutdown: CancellationToken) {
    metrics::describe_counter!(
        TRIGGERED_STARTS,
        "Sagas started by a trigger (a message on a definition's trigger subject), by definition"
    );
    let acks = TaskTracker::new();
    let Signals {
        mut requested,
        ready,
        _keep,
    } = signals;
    let rt = Arc::new(rt);
    loop {
        let wanted = *requested.borrow_and_update();
        let result = setup(&rt).await;
        ready.send_replace(wanted);
        let generation = match result {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the trigger stream and consumers; retrying");
                None
            }
        };
        let stop = shutdown.child_token();
        let consumers = TaskTracker::new();
        let retry_in = if let Some(generation) = generation {
            for (consumer, count_unmatched) in generation.consumers {
                consumers.spawn(consume(
                    rt.clone(),
                    consumer,
                    generation.matcher.clone(),
                    count_unmatched,
                    acks.clone(),
                    stop.clone(),
                ));
            }
            Duration::MAX
        } else {
            Duration::from_secs(2)
        };
        consumers.close();
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = requested.changed() => false,
            _ = tokio::time::sleep(retry_in.min(Duration::from_secs(24 * 3600))) => false,
        };
        stop.cancel();
        consumers.wait().await;
        if stopping {
            break;
        }
    }
    acks.close();
    acks.wait().await;
}

/// Creates or updates the trigger stream and the consumers for the current
/// definitions.
async fn setup(rt: &Runtime) -> Result<Generation, BusError> {
    let definitions = match rt.store.list_definitions() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the definitions for triggers");
            Vec::new()
        }
    };
    let matcher = Matcher::new(definitions);
    let own_stream = rt.subjects.triggers_stream();
    let mut own: Vec<String> = Vec::new();
    let mut events = Vec::new();
    for (saga, subject) in matcher.subjects() {
        match scope(&rt.subjects, subject) {
            Ok(Scope::Events) => events.push(subject.to_string()),
            Ok(Scope::Triggers) => match captured_by(&rt.js, subject, &own_stream).await {
                // Stored before an apply could refuse it (definition files
                // at start): the first of the two keeps working.
                None if own.iter().any(|o| overlap_in_part(o, subject)) => reject(
                    "trigger",
                    "trigger_subject",
                    &format!(
                        "{}: saga `{saga}`: subject `{subject}` overlaps in part another trigger subject; this trigger is inactive",
                        ErrorCode::DefTrigger
                    ),
                ),
                None => own.push(subject.to_string()),
                Some(other) => reject(
                    "trigger",
                    "trigger_subject",
                    &format!(
                        "{}: saga `{saga}`: subject `{subject}` is already captured by stream `{other}`; this trigger is inactive",
                        ErrorCode::DefTrigger
                    ),
                ),
            },
            Err(reason) => reject(
                "trigger",
                "trigger_subject",
                &format!(
                    "{}: saga `{saga}`: {reason}; this trigger is inactive",
                    ErrorCode::DefTrigger
                ),
            ),
        }
    }
    let own = reduce(own);
    let events = reduce(events);
    let mut consumers = Vec::new();
    if own.is_empty() {
        // Nothing to capture: no stream (it would default to capturing its
        // own name). What it still held matched no current trigger.
        if rt.js.delete_stream(&own_stream).await.is_ok() {
            tracing::info!(stream = %own_stream, "no trigger subjects left; trigger stream deleted");
        }
    } else {
        let config = crate::bus::stream_config(
            own_stream.clone(),
            "messages on trigger subjects; each starts sagas of the definitions triggered by it",
            own.clone(),
            stream::RetentionPolicy::WorkQueue,
            &rt.settings,
        );
        crate::bus::create_stream(&rt.js, config).await?;
        let consumer = crate::bus::engine_consumer(
            &rt.js,
            &own_stream,
            rt.subjects.engine_consumer(),
            String::new(),
            rt.ack_wait,
            None,
        )
        .await?;
        consumers.push((consumer, true));
    }
    let events_stream = rt.subjects.events_stream();
    let name = rt.subjects.triggers_consumer();
    let stream = rt
        .js
        .get_stream(&events_stream)
        .await
        .map_err(|source| BusError::GetStream {
            stream: events_stream.clone(),
            source,
        })?;
    if events.is_empty() {
        let _ = stream.delete_consumer(&name).await;
    } else {
        // Colliding filters are refused by the server; then one filter over
        // every event, and the matcher picks.
        let collisions = events
            .iter()
            .enumerate()
            .any(|(i, a)| events[i + 1..].iter().any(|b| collide(a, b)));
        let filter_subjects = if collisions {
            vec![rt.subjects.events_wildcard()]
        } else {
            events.clone()
        };
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subjects,
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..crate::bus::pull_config(
                    &name,
                    "jetsaga engine: lifecycle events that trigger sagas",
                    rt.ack_wait,
                )
            })
            .await
            .map_err(|source| BusError::Consumer {
                stream: events_stream.clone(),
                consumer: name.clone(),
                source,
            })?;
        consumers.push((consumer, false));
    }
    tracing::info!(
        subjects = ?own,
        events = ?events,
        "triggers ready"
    );
    Ok(Generation {
        matcher: Arc::new(matcher),
        consumers,
    })
}

/// Pulls `consumer` until `stop`.
async fn consume(
    rt: Arc<Runtime>,
    consumer: PullConsumer,
    matcher: Arc<Matcher>,
    count_unmatched: bool,
    acks: TaskTracker,
    stop: CancellationToken,
) {
    crate::bus::consume_each(&consumer, "triggers", &stop, |msg| {
        let (rt, matcher, acks) = (rt.clone(), matcher.clone(), acks.clone());
        async move { handle(&rt, &matcher, count_unmatched, &acks, msg).await }
    })
    .await
}

/// Acknowledges a refused message so it is not delivered again.
async fn refuse(msg: jetstream::Message, reason: &str, detail: &str) {
    intake::terminate(msg, "trigger", reason, detail).await;
}

/// Turns one message into starts; `false` when the partition has stopped.
async fn handle(
    rt: &Runtime,
    matcher: &Matcher,
    count_unmatched: bool,
    acks: &TaskTracker,
    msg: jetstream::Message,
) -> bool {
    let subject = msg.subject.to_string();
    let matching = matcher.matching(&subject);
    if matching.is_empty() {
        if count_unmatched {
            refuse(
                msg,
                "trigger_unmatched",
                &format!("no current definition has a trigger for {subject}"),
            )
            .await;
        } else if let Err(e) = msg.ack().await {
            tracing::warn!(error = %e, "could not ack an event no trigger wants");
        }
        return true;
    }
    if let Err((reason, detail)) =
        intake::check_size(&subject, &msg.payload, rt.settings.max_payload)
    {
        refuse(msg, reason, &detail).await;
        return true;
    }
    let body: Value = match serde_json::from_slice(&msg.payload) {
        Ok(body) => body,
        Err(e) => {
            let detail = format!("trigger message on {subject} is not JSON: {e}");
            refuse(msg, "malformed", &detail).await;
            return true;
        }
    };
    let Some(id) = event_id(
        &body,
        intake::header(&msg, "ce-id").as_deref(),
        intake::header(&msg, HEADER_MSG_ID).as_deref(),
        intake::stream_position(&msg),
    ) else {
        refuse(
            msg,
            "malformed",
            &format!("trigger message on {subject} has no id"),
        )
        .await;
        return true;
    };
    let trace_parent = crate::trace::caller_from_headers(msg.headers.as_ref());
    let mut answers = Vec::new();
    for (def, trigger) in matching {
        let key = start_key(&def.name, &id);
        if key.len() > MAX_KEY {
            reject(
                "trigger",
                "trigger_id",
                &format!(
                    "saga `{}`: the event id on {subject} is {} bytes; the idempotency key it makes exceeds {MAX_KEY} bytes",
                    def.name,
                    id.len()
                ),
            );
            continue;
        }
        let input = match saga_input(&trigger, &body) {
            Ok(input) => input,
            Err(detail) => {
                reject(
                    "trigger",
                    "trigger_mapping",
                    &format!("saga `{}`, trigger {}: {detail}", def.name, trigger.subject),
                );
                continue;
            }
        };
        let start = StartCommand {
            saga: def.name.clone(),
            input,
            idempotency_key: Some(key),
            trace_parent: trace_parent.clone(),
        };
        // Into the partition's queue now when it is led here, so that
        // starts keep the order of their messages; through the leader of
        // its partition otherwise.
        let answer = match rt.starts.local(start.idempotency_key.as_deref()) {
            Some(partition) => {
                let (tx, rx) = oneshot::channel();
                let sent = partition
                    .send(Command::Start {
                        start,
                        reply: Some(tx),
                        ack: None,
                    })
                    .await;
                if sent.is_err() {
                    return false;
                }
                Box::pin(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(api_error(ErrorCode::Unavailable, "the partition stopped"))
                    })
                })
            }
            None => rt.starts.start(start),
        };
        answers.push((def.name.clone(), answer));
    }
    // Acknowledged once every start it caused is durable (the partition
    // answers after its group commit) or refused; not at all if the engine
    // stops first, so it is delivered again and deduplicated by the key.
    acks.spawn(async move {
        for (saga, answer) in answers {
            match answer.await {
                Ok(reply) if reply.created => {
                    metrics::counter!(TRIGGERED_STARTS, "saga" => saga.clone()).increment(1);
                    tracing::info!(saga_id = %reply.saga_id, saga = %saga, event_id = %id, %subject, "saga triggered");
                }
                Ok(reply) => {
                    tracing::debug!(saga_id = %reply.saga_id, saga = %saga, event_id = %id, "trigger repeat; saga already started");
                }
                // The partition stopped, or has no leader: delivered again.
                Err(e)
                    if matches!(
                        e.error_code(),
                        Some(ErrorCode::Unavailable | ErrorCode::NoLeader)
                    ) =>
                {
                    tracing::warn!(error = %e.message, saga = %saga, event_id = %id, "trigger start not taken; the event comes again");
                    return;
                }
                Err(e) => crate::metrics::reject("trigger", &e.code, &e.message),
            }
        }
        if let Err(e) = msg.ack().await {
            tracing::warn!(error = %e, "trigger ack failed; the message will be redelivered and deduplicated");
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scopes() {
        let s = Subjects::new("jetsaga");
        assert_eq!(scope(&s, "orders.created"), Ok(Scope::Triggers));
        assert_eq!(
            scope(&s, "jetsaga.event.order.saga.completed"),
            Ok(Scope::Events)
        );
        assert_eq!(scope(&s, "jetsaga.event.*.saga.*"), Ok(Scope::Events));
        for bad in ["jetsaga.start.order", "jetsaga.>", "*.start.x", "_INBOX.x"] {
            assert!(scope(&s, bad).is_err(), "{bad}");
        }
        // Another installation's lifecycle events are its events stream's.
        let e = scope(&s, "acme.event.order.saga.completed").unwrap_err();
        assert!(
            e.contains("lifecycle event of another installation (prefix `acme`)"),
            "{e}"
        );
        let acme_prod = Subjects::new("acme.prod");
        assert_eq!(
            scope(&acme_prod, "acme.prod.event.order.saga.completed"),
            Ok(Scope::Events)
        );
        assert_eq!(s.triggers_stream(), "JETSAGA_TRIGGERS");
    }

    #[test]
    fn ids_and_inputs() {
        let ce = json!({"specversion": "1.0", "id": "e-1", "type": "t", "source": "s", "data": {"id": 7, "total": 9.5}});
        assert_eq!(
            event_id(&ce, None, Some("m"), Some("S:1".into())).as_deref(),
            Some("e-1")
        );
        let plain = json!({"id": 7});
        assert_eq!(
            event_id(&plain, None, Some("m"), Some("S:1".into())).as_deref(),
            Some("m")
        );
        assert_eq!(
            event_id(&plain, Some("c"), Some("m"), None).as_deref(),
            Some("c")
        );
        assert_eq!(
            event_id(&plain, None, None, Some("S:1".into())).as_deref(),
            Some("S:1")
        );
        let bare = Trigger {
            subject: "x".into(),
            input: None,
        };
        assert_eq!(
            saga_input(&bare, &ce).unwrap(),
            json!({"id": 7, "total": 9.5})
        );
        assert_eq!(saga_input(&bare, &plain).unwrap(), plain);
        let mapped = Trigger {
            subject: "x".into(),
            input: Some(
                [
                    ("order".to_string(), "/data/id".to_string()),
                    ("amount".to_string(), "data.total".to_string()),
                ]
                .into_iter()
                .collect(),
            ),
        };
        assert_eq!(
            saga_input(&mapped, &ce).unwrap(),
            json!({"order": 7, "amount": 9.5})
        );
        let e = saga_input(&mapped, &plain).unwrap_err();
        assert!(
            e.contains("the event has no value at `data.total` for input field `amount`"),
            "{e}"
        );
        assert_eq!(start_key("s", "e-1"), "trigger:s:e-1");
    }

    fn parse(
        yaml: &str,
    ) -> Result<Vec<SagaDefinition>, jetsaga_core::saga::definition::DefinitionError> {
        jetsaga_core::saga::definition::parse_str(
            "t.yaml",
            yaml,
            jetsaga_core::saga::definition::Format::Yaml,
        )
        .map(|f| f.sagas)
    }

    const STEPS: &str = "    steps:\n      - {id: a, service: s, operation: o}\n";

    #[test]
    fn definitions_parse_triggers_and_policies() {
        let defs = parse(&format!(
            "sagas:\n  x:\n    triggers:\n      - subject: orders.*\n        input: {{id: /data/id, n: data.n}}\n      - subject: jetsaga.event.y.saga.completed\n    policy: {{environments: [staging]}}\n{STEPS}"
        ))
        .unwrap();
        let x = &defs[0];
        assert_eq!(x.triggers.len(), 2);
        assert_eq!(
            x.triggers[0]
                .input
                .as_ref()
                .unwrap()
                .get("n")
                .map(String::as_str),
            Some("data.n")
        );
        assert!(x.policy.enabled);
        assert_eq!(x.policy.environments, ["staging"]);
        assert!(jetsaga_core::saga::definition::validate(x).is_ok());
        assert_eq!(x.policy.refusal("x", Some("staging")), None);
        assert!(
            x.policy
                .refusal("x", Some("dev"))
                .unwrap()
                .contains("disabled in environment `dev`")
        );
        assert!(
            x.policy
                .refusal("x", None)
                .unwrap()
                .contains("no environment set")
        );
        // Round trip through the stored JSON; a definition stored before
        // triggers and policies existed reads as enabled, without triggers.
        let json = serde_json::to_string(x).unwrap();
        assert_eq!(&serde_json::from_str::<SagaDefinition>(&json).unwrap(), x);
        let mut old = serde_json::to_value(x).unwrap();
        old.as_object_mut().unwrap().remove("triggers");
        old.as_object_mut().unwrap().remove("policy");
        let old: SagaDefinition = serde_json::from_value(old).unwrap();
        assert!(old.triggers.is_empty() && old.policy.is_default());
        let disabled = parse(&format!(
            "sagas:\n  x:\n    policy: {{enabled: false}}\n{STEPS}"
        ))
        .unwrap();
        assert!(
            disabled[0]
                .policy
                .refusal("x", Some("prod"))
                .unwrap()
                .contains("policy.enabled: false")
        );
    }

    #[test]
    fn bad_triggers_and_policies_are_named() {
        let cases = [
            (
                "triggers: [{subject: 'a..b'}]",
                ErrorCode::DefTrigger,
                "field `triggers[0].subject`: `a..b` has an empty token",
            ),
            (
                "triggers: [{subject: 'a.>.b'}]",
                ErrorCode::DefTrigger,
                "`>` may only be the last token",
            ),
            (
                "triggers: [{subject: 'a.b*'}]",
                ErrorCode::DefTrigger,
                "must be whole tokens",
            ),
            (
                "triggers: [{subject: '>'}]",
                ErrorCode::DefTrigger,
                "would capture every message",
            ),
            (
                "triggers: [{subject: '$JS.API.x'}]",
                ErrorCode::DefTrigger,
                "system subject",
            ),
            (
                "triggers: [{subject: a}, {subject: a}]",
                ErrorCode::DefTrigger,
                "field `triggers[1].subject`: subject `a` is already the subject of triggers[0]",
            ),
            (
                "triggers: [{subject: a, input: {}}]",
                ErrorCode::DefTrigger,
                "the mapping is empty",
            ),
            (
                "triggers: [{subject: a, input: {x: 'data..y'}}]",
                ErrorCode::DefTrigger,
                "field `triggers[0].input.x`: `data..y` has an empty segment",
            ),
            (
                "triggers: [{subject: a, input: {x: '/a~2'}}]",
                ErrorCode::DefTrigger,
                "`~` must be followed by 0 or 1",
            ),
            (
                "policy: {environments: []}",
                ErrorCode::DefPolicy,
                "field `policy.environments`: the list is empty",
            ),
            (
                "policy: {environments: [a, a]}",
                ErrorCode::DefPolicy,
                "environment `a` is listed twice",
            ),
            (
                "policy: {environments: ['a b']}",
                ErrorCode::DefPolicy,
                "invalid environment `a b`",
            ),
            (
                "policy: {enabled: false, regions: [x]}",
                ErrorCode::DefParse,
                "regions",
            ),
        ];
        for (fragment, code, message) in cases {
            let e = parse(&format!("sagas:\n  x:\n    {fragment}\n{STEPS}")).unwrap_err();
            assert_eq!(e.code(), code.as_str(), "{fragment}: {e}");
            assert!(e.to_string().contains(message), "{fragment}: {e}");
            if code != ErrorCode::DefParse {
                assert!(
                    e.to_string().starts_with("t.yaml: saga `x`: field `"),
                    "{e}"
                );
            }
        }
    }
}
