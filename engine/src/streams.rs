//! The engine's JetStream streams and its own consumers: their settings,
//! creation (idempotent, with a clear error when another stream holds a
//! subject), and the pull consumers of the results and starts streams.
//! Below the bus and the cluster, which both create streams.

use async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull, stream};
use futures::StreamExt;
use jetsaga_protocol::{ErrorCode, STREAM_HEADROOM, Subjects};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Errors while setting up streams and consumers.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// A stream could not be created or updated.
    #[error("{code}: cannot create or update stream {stream}: {source}", code = ErrorCode::NatsStream)]
    Stream {
        /// Stream name.
        stream: String,
        /// Cause.
        source: jetstream::context::CreateStreamError,
    },
    /// Another stream already captures a subject of a stream the engine
    /// creates: typically the trigger stream of another installation that
    /// took one of this installation's subjects.
    #[error(
        "{code}: cannot create stream {stream}: stream {other} (of another installation, or made by hand) already captures subject `{other_subject}`, which overlaps {stream}'s `{subject}`, and JetStream keeps each subject in one stream; change the trigger that captures `{other_subject}` (and apply that installation's definitions again), or give one installation another prefix",
        code = ErrorCode::NatsStream
    )]
    Overlap {
        /// The stream the engine creates.
        stream: String,
        /// Its subject the other stream overlaps.
        subject: String,
        /// The other stream.
        other: String,
        /// The other stream's subject.
        other_subject: String,
    },
    /// A stream could not be looked up.
    #[error("{code}: cannot find stream {stream}: {source}", code = ErrorCode::NatsStream)]
    GetStream {
        /// Stream name.
        stream: String,
        /// Cause.
        source: jetstream::context::GetStreamError,
    },
    /// A consumer could not be created.
    #[error("{code}: cannot create consumer {consumer} on {stream}: {source}", code = ErrorCode::NatsConsumer)]
    Consumer {
        /// Stream name.
        stream: String,
        /// Consumer name.
        consumer: String,
        /// Cause.
        source: jetstream::stream::ConsumerError,
    },
}

/// Stream settings the engine applies.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Duplicate window (`Nats-Msg-Id` de-duplication).
    pub duplicate_window: Duration,
    /// How long the outcomes stream keeps a recorded outcome.
    pub outcome_ttl: Duration,
    /// Largest message accepted by the streams.
    pub max_payload: usize,
    /// Replicas (1 on a single server).
    pub replicas: usize,
}

/// Creates (or updates to the current settings) the tasks, results and starts
/// work-queue streams, the events stream (limits retention, 7 days) and the
/// outcomes stream (limits retention, one message per subject, kept
/// `outcome_ttl`). Idempotent: every engine start calls it.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    settings: &StreamSettings,
) -> Result<(), BusError> {
    use stream::RetentionPolicy::{Limits, WorkQueue};
    let streams = [
        (
            subjects.tasks_stream(),
            subjects.tasks_wildcard(),
            WorkQueue,
            "step tasks, one durable consumer per service",
        ),
        (
            subjects.results_stream(),
            subjects.results_wildcard(),
            WorkQueue,
            "task results, consumed by the engine",
        ),
        (
            subjects.starts_stream(),
            subjects.starts_wildcard(),
            WorkQueue,
            "durable saga starts; Nats-Msg-Id is the idempotency key",
        ),
        (
            subjects.events_stream(),
            subjects.events_wildcard(),
            Limits,
            "saga lifecycle events (CloudEvents 1.0 JSON), one subject per saga and type",
        ),
    ];
    for (name, subject, retention, description) in streams {
        let config = stream::Config {
            // Work queues empty themselves; events age out.
            max_age: if retention == Limits {
                EVENTS_MAX_AGE
            } else {
                Duration::ZERO
            },
            ..stream_config(name, description, vec![subject], retention, settings)
        };
        create_stream(js, config).await?;
    }
    create_stream(js, outcomes_config(subjects, settings)).await
}

/// The outcomes stream: a step's terminal outcome is written once on its
/// key's subject (`Nats-Expected-Last-Subject-Sequence: 0`) and is its
/// idempotency record, read back by workers with direct gets; the engine's
/// consumers read it without removing it, and it ages out after
/// `outcome_ttl`. A second message on a subject is refused even without
/// the expectation (discard new, per subject), so a client that forgets
/// it cannot replace a record.
pub(crate) fn outcomes_config(subjects: &Subjects, settings: &StreamSettings) -> stream::Config {
    stream::Config {
        max_age: settings.outcome_ttl,
        max_messages_per_subject: 1,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..stream_config(
            subjects.outcomes_stream(),
            "terminal step outcomes, one per idempotency key: the record and the result at once",
            vec![subjects.outcomes_wildcard()],
            stream::RetentionPolicy::Limits,
            settings,
        )
    }
}

/// One of the engine's file streams: `settings`' duplicate window, replicas
/// and largest message (`max_payload` plus [`STREAM_HEADROOM`]).
pub(crate) fn stream_config(
    name: String,
    description: &str,
    subjects: Vec<String>,
    retention: stream::RetentionPolicy,
    settings: &StreamSettings,
) -> stream::Config {
    stream::Config {
        name,
        description: Some(format!("jetsaga: {description}")),
        subjects,
        retention,
        storage: stream::StorageType::File,
        duplicate_window: settings.duplicate_window,
        max_message_size: i32::try_from(settings.max_payload + STREAM_HEADROOM).unwrap_or(i32::MAX),
        num_replicas: settings.replicas,
        ..Default::default()
    }
}

/// How long each but the last request to create or update a stream is
/// waited for before it is asked again (the last one waits for the
/// JetStream context's own timeout).
const STREAM_SETUP_WAITS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(8),
];

/// Creates the stream `config` describes, or updates it to `config`.
///
/// Asked again when JetStream does not answer soon: engines starting
/// together on a cluster ask for the same replicated stream at once, and
/// such requests can go unanswered (seen with three engines on a fresh
/// 3-node cluster: every first request timed out, every second one found
/// the stream at once). Creating or updating to the same config again is
/// harmless.
pub(crate) async fn create_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), BusError> {
    let name = config.name.clone();
    let subjects = config.subjects.clone();
    let once = || async {
        for (attempt, wait) in STREAM_SETUP_WAITS.into_iter().enumerate() {
            match tokio::time::timeout(wait, js.create_or_update_stream(config.clone())).await {
                Ok(result) => return result,
                Err(_) => {
                    tracing::warn!(stream = %name, attempt = attempt + 1, waited = ?wait, "stream setup unanswered; asking again");
                }
            }
        }
        js.create_or_update_stream(config.clone()).await
    };
    let created = while_no_peers_yet(&name, once).await;
    match created {
        Ok(_) => Ok(()),
        Err(source) => Err(match overlapping_stream(js, &name, &subjects).await {
            Some((subject, other, other_subject)) => BusError::Overlap {
                stream: name,
                subject,
                other,
                other_subject,
            },
            None => BusError::Stream {
                stream: name,
                source,
            },
        }),
    }
}

/// How often a stream or bucket is asked for again while JetStream has not
/// seen enough peers online for its replicas (about 20 s in all).
const NO_PEERS_RETRIES: usize = 12;

/// Runs `setup` (creating the stream or bucket `what`), and again, with a
/// jittered backoff, while it fails because JetStream has not seen enough
/// peers online to place the asset's replicas (error 10005, "no suitable
/// peers for placement"). On a cluster that has just formed, the meta
/// leader learns that the other nodes are online a moment after they
/// report healthy, so an engine started then meets it once or twice.
pub(crate) async fn while_no_peers_yet<T, E, F, Fut>(what: &str, setup: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + 'static,
{
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(NO_PEERS_RETRIES);
    setup
        .retry(backoff)
        .when(|e| no_peers_yet(e))
        .notify(|e, wait| {
            tracing::warn!(asset = what, error = %e, retry_in = ?wait, "JetStream has not seen enough peers online for the replicas yet; asking again");
        })
        .await
}

/// The JetStream asset (a bucket) `name`: found with `get`, else made with
/// `create` (asked again while no peers are seen, see
/// [`while_no_peers_yet`]), else found again (another engine made it
/// meanwhile). The error is `create`'s.
pub(crate) async fn get_or_create<T, GE, CE, G, GF, C, CF>(
    name: &str,
    get: G,
    create: C,
) -> Result<T, CE>
where
    G: Fn() -> GF,
    GF: Future<Output = Result<T, GE>>,
    C: FnMut() -> CF,
    CF: Future<Output = Result<T, CE>>,
    CE: std::error::Error + 'static,
{
    if let Ok(found) = get().await {
        return Ok(found);
    }
    match while_no_peers_yet(name, create).await {
        Ok(made) => Ok(made),
        Err(first) => get().await.map_err(|_| first),
    }
}

/// Whether `error` (or one of its sources) is JetStream's "no suitable
/// peers for placement" (10005).
fn no_peers_yet(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(created) = e.downcast_ref::<jetstream::context::CreateStreamError>()
            && let jetstream::context::CreateStreamErrorKind::JetStream(api) = created.kind()
            && api.error_code() == jetstream::ErrorCode::CLUSTER_NO_PEERS
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The first stream other than `own` with a subject that overlaps one of
/// `subjects`: (our subject, that stream, its subject). Best effort: `None`
/// when the streams cannot be listed.
async fn overlapping_stream(
    js: &jetstream::Context,
    own: &str,
    subjects: &[String],
) -> Option<(String, String, String)> {
    let mut streams = js.streams();
    while let Some(Ok(info)) = streams.next().await {
        if info.config.name == own {
            continue;
        }
        for theirs in &info.config.subjects {
            if let Some(ours) = subjects
                .iter()
                .find(|ours| jetsaga_protocol::pattern::collide(ours, theirs))
            {
                return Some((ours.clone(), info.config.name.clone(), theirs.clone()));
            }
        }
    }
    None
}

/// The settings of the engine's durable pull consumers: explicit acks,
/// `ack_wait`, no delivery limit, up to 10 000 unacknowledged.
pub(crate) fn pull_config(name: &str, description: &str, ack_wait: Duration) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(description.to_string()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// How long the events stream keeps a lifecycle event.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes the engine's durable consumer on `stream`, if it exists, so
/// that [`engine_consumer`] creates it anew: the messages a dead engine had
/// pulled and not acknowledged are then delivered at once instead of after
/// the ack wait. A work queue keeps every message not acknowledged, so the
/// new consumer starts at its beginning; a stream that keeps what was
/// acknowledged too (the outcomes) is read again from the first message
/// after the old consumer's ack floor, which [`engine_consumer`] is told
/// through the returned [`Restart`].
pub async fn reset_engine_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> Result<Option<Restart>, BusError> {
    let stream_handle = js
        .get_stream(stream)
        .await
        .map_err(|source| BusError::GetStream {
            stream: stream.to_string(),
            source,
        })?;
    let work_queue =
        stream_handle.cached_info().config.retention == stream::RetentionPolicy::WorkQueue;
    let floor = if work_queue {
        None
    } else {
        match stream_handle.consumer_info(name).await {
            Ok(info) => Some(info.ack_floor.stream_sequence),
            // No consumer: nothing to reset.
            Err(_) => return Ok(None),
        }
    };
    if stream_handle.delete_consumer(name).await.is_err() {
        return Ok(None);
    }
    Ok(Some(Restart {
        after: floor.unwrap_or(0),
    }))
}

/// Where an engine consumer created anew by [`reset_engine_consumer`]
/// starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// The last stream sequence known acknowledged (0: from the start).
    pub after: u64,
}

/// Gets or creates the engine's durable pull consumer `name` on `stream`;
/// one created here reads from after `restart`'s sequence when given,
/// else from the start.
pub async fn engine_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: String,
    filter: String,
    ack_wait: Duration,
    restart: Option<Restart>,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
    let err = |source| BusError::Consumer {
        stream: stream.to_string(),
        consumer: name.clone(),
        source,
    };
    let stream_handle = js
        .get_stream(stream)
        .await
        .map_err(|source| BusError::GetStream {
            stream: stream.to_string(),
            source,
        })?;
    stream_handle
        .get_or_create_consumer(
            &name,
            pull::Config {
                filter_subject: filter,
                deliver_policy: match restart {
                    Some(Restart { after }) if after > 0 => {
                        jetstream::consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: after + 1,
                        }
                    }
                    _ => jetstream::consumer::DeliverPolicy::All,
                },
                ..pull_config(&name, "jetsaga engine", ack_wait)
            },
        )
        .await
        .map_err(err)
}

/// Pulls `consumer` until `stop` is cancelled, handing each message to
/// `handle`, which returns `false` to stop (the partition has stopped).
///
/// Messages arrive in batches of up to 256 from one long-lived pull stream;
/// when the stream cannot be opened (NATS down, consumer gone) the pull is
/// tried again every second, and a message-level error is logged and skipped
/// (the server redelivers what was not acknowledged). `what` names the
/// consumer in the log.
pub async fn consume_each<F, Fut>(
    consumer: &PullConsumer,
    what: &'static str,
    stop: &CancellationToken,
    mut handle: F,
) where
    F: FnMut(jetstream::Message) -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        let messages = tokio::select! {
            _ = stop.cancelled() => return,
            m = consumer.stream().max_messages_per_batch(256).messages() => m,
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, consumer = what, "cannot pull; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                n = messages.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    if !handle(msg).await {
                        return;
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, consumer = what, "pull stream error"),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{
        CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
    };
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stream creation refused by JetStream with `err_code`.
    fn refused(err_code: u64) -> CreateStreamError {
        let api: jetstream::Error = serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": err_code,
            "description": "no suitable peers for placement, peer offline",
        }))
        .unwrap();
        CreateStreamError::new(CreateStreamErrorKind::JetStream(api))
    }

    #[test]
    fn no_peers_is_recognised_alone_and_inside_a_bucket_error() {
        assert!(no_peers_yet(&refused(10005)));
        let bucket =
            CreateKeyValueError::with_source(CreateKeyValueErrorKind::BucketCreate, refused(10005));
        assert!(no_peers_yet(&bucket));
        assert!(!no_peers_yet(&refused(10047)), "another JetStream error");
        assert!(!no_peers_yet(&CreateStreamError::new(
            CreateStreamErrorKind::TimedOut
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn setup_is_asked_again_while_no_peers_are_seen_and_not_for_other_errors() {
        let calls = AtomicUsize::new(0);
        let result = while_no_peers_yet("T", || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(refused(10005)),
                _ => Ok("created"),
            }
        })
        .await;
        assert_eq!(result.unwrap(), "created");
        assert_eq!(calls.load(Ordering::Relaxed), 3);

        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = while_no_peers_yet("T", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(refused(10047))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "another error is not retried"
        );

        let calls = AtomicUsize::new(0);
        let result: Result<(), _> = while_no_peers_yet("T", || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(refused(10005))
        })
        .await;
        assert!(result.is_err(), "it gives up in the end");
        assert_eq!(calls.load(Ordering::Relaxed), NO_PEERS_RETRIES + 1);
    }
}
