//! Idempotency records: the terminal [`Outcome`] of each step's action or
//! compensation, kept in the engine's outcomes stream
//! ([`Subjects::outcomes_stream`]) on the subject of the task's idempotency
//! key ([`Subjects::outcome`]).
//!
//! The record *is* the result: a terminal outcome is published once, as a
//! whole result message, on its key's subject with
//! `Nats-Expected-Last-Subject-Sequence: 0`, so the first outcome written
//! for a key is *the* outcome of that step, and the engine reads it from
//! there (its consumer removes nothing; the stream ages records out). A
//! worker that finds one already there (another delivery of the step got
//! there first) reports the recorded one instead of its own, so every
//! result the engine sees for the key agrees.
//!
//! A record written a moment ago must be seen by the next lookup. In a
//! stream with one replica the direct get (`$JS.API.DIRECT.GET`) is
//! answered by that replica, which holds every acknowledged write, and it is
//! cheaper for the server than `STREAM.MSG.GET`, so lookups use it; in a
//! replicated stream any replica may answer a direct get, possibly one that
//! lags, so lookups go to the stream leader (`STREAM.MSG.GET`) instead.
//!
//! Records written before the outcomes stream existed are in the key-value
//! bucket [`Subjects::idempotency_bucket`]; while that bucket exists, a
//! lookup that finds no outcome looks there too. Nothing is written there
//! any more.

use crate::error::BoxError;
use crate::protocol::{HEADER_MSG_ID, HEADER_SAGA_ID, Outcome, Subjects, Task, TaskResult};
use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use std::sync::RwLock;

/// Header the KV layer marks deletions and purges with.
const KV_OPERATION: &str = "KV-Operation";

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// The stream did not answer (timeout, connection, server error): may
    /// work if tried again.
    #[error("outcomes stream unavailable: {0}")]
    Unavailable(BoxError),
    /// A record exists but is not an outcome this SDK understands.
    #[error(
        "the record on {subject} is not a jetsaga result ({source}); inspect it with `nats stream get {stream} --last-for {subject}` and purge that subject if it is wrong"
    )]
    Unreadable {
        /// Stream (or key-value bucket) holding it.
        stream: String,
        /// Its subject (or key).
        subject: String,
        /// Cause.
        source: serde_json::Error,
    },
}

impl RecordError {
    /// Whether trying again may help.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, RecordError::Unavailable(_))
    }
}

/// What [`Records::record`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Recorded {
    /// Our result is now the record, and so the engine's copy of it (it may
    /// have been written by an earlier try of this same call whose
    /// acknowledgement was lost).
    Ours,
    /// Another run recorded another outcome first: that is the step's
    /// outcome. Of this same attempt (another delivery of it), it is the
    /// attempt's result, already the engine's to read; of an earlier
    /// attempt, it is to be replayed for this one.
    Theirs(Found),
}

/// A recorded outcome, as [`Records::lookup`] and [`Records::record`] find
/// it.
#[derive(Debug, PartialEq)]
pub(crate) struct Found {
    /// The recorded outcome.
    pub(crate) outcome: Outcome,
    /// Whether the record is this very attempt's result (a redelivery of
    /// the task after its outcome was recorded): the engine has it already.
    pub(crate) this_attempt: bool,
}

/// Where outcomes are recorded and looked up.
#[derive(Debug)]
pub(crate) struct Records {
    /// The outcomes stream.
    stream: Stream,
    /// Its name, for messages.
    stream_name: String,
    /// How lookups read it.
    reads: Reads,
    /// The bucket of the records written before the outcomes stream, while
    /// it exists.
    legacy: RwLock<Option<kv::Store>>,
}

/// How [`Records::lookup`] reads a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reads {
    /// `$JS.API.DIRECT.GET`: cheaper, answered by any replica (and by
    /// `mirror_direct` mirrors).
    Direct,
    /// `STREAM.MSG.GET`: answered by the stream leader.
    Leader,
}

impl Reads {
    /// Direct reads only where the only replica answers them: one replica
    /// and direct get allowed (the engine creates the stream with it
    /// allowed).
    pub(crate) fn for_stream(config: &jetstream::stream::Config) -> Self {
        if config.num_replicas <= 1 && config.allow_direct {
            Reads::Direct
        } else {
            Reads::Leader
        }
    }
}

pub(crate) use jetsaga_protocol::is_valid_kv_key as is_valid_key;

impl Records {
    /// Opens the outcomes stream, which the engine creates: an error
    /// message to log (and try again later) while it does not exist. Notes
    /// the bucket of earlier records when it exists.
    pub(crate) async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Self, String> {
        let name = subjects.outcomes_stream();
        let stream = js.get_stream(&name).await.map_err(|e| {
            format!(
                "outcomes stream {name} is not available ({e}); waiting for the engine to create it"
            )
        })?;
        let reads = Reads::for_stream(&stream.cached_info().config);
        let legacy = legacy_bucket(js, subjects).await?;
        tracing::debug!(stream = %name, ?reads, legacy = legacy.is_some(), "idempotency lookups");
        Ok(Self {
            stream,
            stream_name: name,
            reads,
            legacy: RwLock::new(legacy),
        })
    }

    /// The outcome recorded for `task`'s key, if any: on its outcome
    /// subject, else in the bucket of earlier records.
    pub(crate) async fn lookup(
        &self,
        subjects: &Subjects,
        task: &Task,
    ) -> Result<Option<Found>, RecordError> {
        let subject = subjects.outcome(&task.service, task.partition, &task.idempotency_key);
        if let Some(result) = self.last(&subject).await? {
            return Ok(Some(Found {
                this_attempt: same_attempt(&result, task),
                outcome: result.outcome,
            }));
        }
        Ok(self
            .lookup_legacy(&task.idempotency_key)
            .await?
            .map(|outcome| Found {
                outcome,
                this_attempt: false,
            }))
    }

    /// Records `result` (a terminal outcome of `task`) on its key's
    /// subject unless an outcome is recorded there already, and says which
    /// one is the record.
    pub(crate) async fn record(
        &self,
        js: &jetstream::Context,
        subjects: &Subjects,
        task: &Task,
        result: &TaskResult,
        msg_id: &str,
    ) -> Result<Recorded, RecordError> {
        let subject = subjects.outcome(&task.service, task.partition, &task.idempotency_key);
        let payload =
            Bytes::from(serde_json::to_vec(result).expect("a TaskResult always serializes"));
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(msg_id)
            .header(HEADER_SAGA_ID, task.saga_id.as_str())
            .expected_last_subject_sequence(0);
        let sent = match js.send_publish(subject.clone(), publish).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(ack) if !ack.duplicate => Ok(Recorded::Ours),
            // `duplicate`: a message with this attempt's id was written
            // within the duplicate window (an earlier try of this call, or
            // another delivery of the attempt): read which outcome it holds.
            // 10071: the key has a record: whose?
            Ok(_) => self.compare(&subject, task, result).await,
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                self.compare(&subject, task, result).await
            }
            Err(e) => Err(RecordError::Unavailable(Box::new(e))),
        }
    }

    /// Which outcome the record on `subject` holds, next to `result`.
    async fn compare(
        &self,
        subject: &str,
        task: &Task,
        result: &TaskResult,
    ) -> Result<Recorded, RecordError> {
        let Some(theirs) = self.last(subject).await? else {
            return Err(RecordError::Unavailable(
                "the record was removed while it was being written".into(),
            ));
        };
        let this_attempt = same_attempt(&theirs, task);
        Ok(if this_attempt && theirs.outcome == result.outcome {
            Recorded::Ours
        } else {
            Recorded::Theirs(Found {
                outcome: theirs.outcome,
                this_attempt,
            })
        })
    }

    /// The last message on `subject` of the outcomes stream, decoded.
    async fn last(&self, subject: &str) -> Result<Option<TaskResult>, RecordError> {
        let payload = match self.reads {
            Reads::Direct => match self.stream.direct_get_last_for_subject(subject).await {
                Ok(msg) => msg.payload,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(RecordError::Unavailable(Box::new(e))),
            },
            Reads::Leader => match self.stream.get_last_raw_message_by_subject(subject).await {
                Ok(msg) => msg.payload,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    return Ok(None);
                }
                Err(e) => return Err(RecordError::Unavailable(Box::new(e))),
            },
        };
        serde_json::from_slice(&payload)
            .map(Some)
            .map_err(|source| RecordError::Unreadable {
                stream: self.stream_name.clone(),
                subject: subject.to_string(),
                source,
            })
    }

    /// The outcome recorded under `key` in the bucket of earlier records,
    /// while there is one. A bucket deleted meanwhile holds nothing.
    async fn lookup_legacy(&self, key: &str) -> Result<Option<Outcome>, RecordError> {
        let Some(kv) = self
            .legacy
            .read()
            .expect("the legacy bucket lock is never poisoned")
            .clone()
        else {
            return Ok(None);
        };
        let subject = format!("{}{key}", kv.prefix);
        let msg = match kv.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => msg,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => {
                let gone = matches!(
                    e.kind(),
                    LastRawMessageErrorKind::JetStream(ref js)
                        if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                );
                if gone {
                    tracing::info!(bucket = %kv.name, "the bucket of earlier idempotency records is gone; no longer looking there");
                    *self
                        .legacy
                        .write()
                        .expect("the legacy bucket lock is never poisoned") = None;
                    return Ok(None);
                }
                return Err(RecordError::Unavailable(Box::new(e)));
            }
        };
        if msg.headers.get(KV_OPERATION).is_some() {
            // DEL or PURGE marker: someone removed the record.
            return Ok(None);
        }
        serde_json::from_slice(&msg.payload)
            .map(Some)
            .map_err(|source| RecordError::Unreadable {
                stream: kv.name.clone(),
                subject: key.to_string(),
                source,
            })
    }
}

/// Whether `result` answers `task`'s attempt.
fn same_attempt(result: &TaskResult, task: &Task) -> bool {
    result.saga_id == task.saga_id
        && result.step_id == task.step_id
        && result.kind == task.kind
        && result.attempt == task.attempt
}

/// The key-value bucket of the records written before the outcomes stream,
/// when it exists; an error other than its absence is for the caller to
/// try again (a lookup without it could run a recorded step again).
async fn legacy_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<Option<kv::Store>, String> {
    let bucket = subjects.idempotency_bucket();
    let unknown = |e: &dyn std::fmt::Display| {
        format!(
            "cannot tell whether the idempotency bucket {bucket} of an earlier version is there ({e}); trying again"
        )
    };
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(e) => {
            return match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(unknown(&e)),
            };
        }
    }
    let kv = js.get_key_value(&bucket).await.map_err(|e| unknown(&e))?;
    tracing::info!(bucket = %kv.name, "looking up earlier idempotency records in this bucket too, until it is deleted");
    Ok(Some(kv))
}

/// The headers of a result published on the results subject.
pub(crate) fn result_headers(msg_id: &str, saga_id: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_MSG_ID, msg_id);
    headers.insert(HEADER_SAGA_ID, saga_id);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_replica_stream_is_read_with_direct_gets() {
        let stream = |num_replicas, allow_direct| jetstream::stream::Config {
            num_replicas,
            allow_direct,
            ..Default::default()
        };
        assert_eq!(Reads::for_stream(&stream(1, true)), Reads::Direct);
        assert_eq!(Reads::for_stream(&stream(1, false)), Reads::Leader);
        assert_eq!(Reads::for_stream(&stream(3, true)), Reads::Leader);
        assert_eq!(Reads::for_stream(&stream(0, true)), Reads::Direct);
    }

    #[test]
    fn engine_keys_are_valid_keys() {
        let key = crate::protocol::idempotency_key(
            "01J9Z-abc",
            "register_manifest",
            crate::protocol::TaskKind::Compensation,
        );
        assert!(is_valid_key(&key));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(".a"));
        assert!(!is_valid_key("a."));
        assert!(!is_valid_key("a..b"));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key("a*"));
        assert!(!is_valid_key("a>"));
    }
}
