//! Idempotency records: the terminal [`Outcome`] of each step's action or
//! compensation, kept in a JetStream key-value bucket under the task's
//! idempotency key for `idempotency_ttl`.
//!
//! Records are written once (`create`, not `put`): the first terminal outcome
//! recorded for a key is *the* outcome of that step, and a worker that finds
//! one already there (because another attempt ran concurrently) reports the
//! recorded one instead of its own, so every result the engine sees for the
//! key agrees.
//!
//! A record written a moment ago must be seen by the next lookup. In a
//! bucket with one replica the KV "direct get" (`$JS.API.DIRECT.GET`) is
//! answered by that replica, which holds every acknowledged write, and it is
//! cheaper for the server than `STREAM.MSG.GET`, so lookups use it; in a
//! replicated bucket any replica may answer a direct get, possibly one that
//! lags, so lookups go to the stream leader (`STREAM.MSG.GET`) instead.

use crate::WorkerError;
use crate::error::BoxError;
use crate::protocol::Outcome;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use std::time::Duration;

/// Header the KV layer marks deletions and purges with.
const KV_OPERATION: &str = "KV-Operation";

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// The bucket did not answer (timeout, connection, server error): may
    /// work if tried again.
    #[error("idempotency bucket unavailable: {0}")]
    Unavailable(BoxError),
    /// A record exists but is not an outcome this SDK understands.
    #[error(
        "the idempotency record {key} is not a jetsaga outcome ({source}); inspect it with `nats kv get {bucket} {key}` and delete it if it is wrong"
    )]
    Unreadable {
        /// Bucket name.
        bucket: String,
        /// Record key.
        key: String,
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
    /// Our outcome is now the record (it may have been written by an earlier
    /// try of this same call whose acknowledgement was lost).
    Ours,
    /// Another outcome was recorded first; it is the step's outcome.
    Theirs(Outcome),
}

/// The idempotency bucket.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    /// The KV bucket.
    kv: kv::Store,
    /// How lookups read the bucket.
    reads: Reads,
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
    /// and direct get allowed (async-nats creates buckets with it allowed).
    pub(crate) fn for_bucket(config: &jetstream::stream::Config) -> Self {
        if config.num_replicas <= 1 && config.allow_direct {
            Reads::Direct
        } else {
            Reads::Leader
        }
    }
}

pub(crate) use jetsaga_protocol::is_valid_kv_key as is_valid_key;

impl Records {
    /// Opens bucket `bucket`, creating it when missing with `ttl` as the
    /// records' lifetime. An existing bucket is used as it is.
    pub(crate) async fn open(
        js: &jetstream::Context,
        bucket: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, WorkerError> {
        if let Ok(kv) = js.get_key_value(bucket).await {
            let info = &kv.stream.cached_info().config;
            if info.max_age != ttl {
                tracing::info!(
                    bucket,
                    existing_ttl = ?info.max_age,
                    configured_ttl = ?ttl,
                    "idempotency bucket exists with another record lifetime; using it as it is"
                );
            }
            return Ok(Self::new(kv));
        }
        let config = kv::Config {
            bucket: bucket.to_string(),
            description: "jetsaga: recorded outcomes of step handlers, by idempotency key"
                .to_string(),
            history: 1,
            max_age: ttl,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        match js.create_key_value(config).await {
            Ok(kv) => {
                tracing::info!(bucket, ?ttl, replicas, "created the idempotency bucket");
                Ok(Self::new(kv))
            }
            // Another worker may have created it meanwhile, with another config.
            Err(create_err) => match js.get_key_value(bucket).await {
                Ok(kv) => Ok(Self::new(kv)),
                Err(_) => Err(WorkerError::Bucket {
                    bucket: bucket.to_string(),
                    source: Box::new(create_err),
                }),
            },
        }
    }

    fn new(kv: kv::Store) -> Self {
        let reads = Reads::for_bucket(&kv.stream.cached_info().config);
        tracing::debug!(bucket = %kv.name, ?reads, "idempotency lookups");
        Self { kv, reads }
    }

    /// The outcome recorded under `key`, if any.
    pub(crate) async fn lookup(&self, key: &str) -> Result<Option<Outcome>, RecordError> {
        let subject = format!("{}{key}", self.kv.prefix);
        let stream = &self.kv.stream;
        let msg = match self.reads {
            Reads::Direct => match stream.direct_get_last_for_subject(&subject).await {
                Ok(msg) => msg,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(RecordError::Unavailable(Box::new(e))),
            },
            Reads::Leader => match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(msg) => msg,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    return Ok(None);
                }
                Err(e) => return Err(RecordError::Unavailable(Box::new(e))),
            },
        };
        if msg.headers.get(KV_OPERATION).is_some() {
            // DEL or PURGE marker: someone removed the record.
            return Ok(None);
        }
        self.decode(key, &msg.payload).map(Some)
    }

    /// Records `outcome` under `key` unless an outcome is recorded there
    /// already, in which case that one is returned.
    pub(crate) async fn record(
        &self,
        key: &str,
        outcome: &Outcome,
    ) -> Result<Recorded, RecordError> {
        let value = Bytes::from(serde_json::to_vec(outcome).expect("an Outcome always serializes"));
        match self.kv.create(key, value).await {
            Ok(_) => Ok(Recorded::Ours),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.lookup(key).await? {
                    Some(existing) if &existing == outcome => Ok(Recorded::Ours),
                    Some(existing) => Ok(Recorded::Theirs(existing)),
                    // Deleted between our create and our read: try again.
                    None => Err(RecordError::Unavailable(
                        "the record was removed while it was being written".into(),
                    )),
                }
            }
            Err(e) => Err(RecordError::Unavailable(Box::new(e))),
        }
    }

    /// Decodes a stored record.
    fn decode(&self, key: &str, payload: &[u8]) -> Result<Outcome, RecordError> {
        serde_json::from_slice(payload).map_err(|source| RecordError::Unreadable {
            bucket: self.kv.name.clone(),
            key: key.to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_replica_bucket_is_read_with_direct_gets() {
        let bucket = |num_replicas, allow_direct| jetstream::stream::Config {
            num_replicas,
            allow_direct,
            ..Default::default()
        };
        assert_eq!(Reads::for_bucket(&bucket(1, true)), Reads::Direct);
        assert_eq!(Reads::for_bucket(&bucket(1, false)), Reads::Leader);
        assert_eq!(Reads::for_bucket(&bucket(3, true)), Reads::Leader);
        assert_eq!(Reads::for_bucket(&bucket(0, true)), Reads::Direct);
    }

    #[test]
    fn engine_keys_are_valid_kv_keys() {
        let key = crate::protocol::idempotency_key(
            "01J9Z-abc",
            "register_manifest",
            crate::protocol::TaskKind::Compensation,
        );
        assert!(is_valid_key(&key));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(".a"));
        assert!(!is_valid_key("a."));
        assert!(!is_valid_key("a b"));
        assert!(!is_valid_key("a*"));
        assert!(!is_valid_key("a>"));
    }
}
