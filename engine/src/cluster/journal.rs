//! The journal: each partition's state changes, one record per group
//! commit, on the replicated stream `<PREFIX>_JOURNAL` (one subject per
//! partition, `<prefix>.journal.<partition>`).
//!
//! A record is appended with `Nats-Expected-Last-Subject-Sequence` set to
//! the sequence of the partition's previous record: the first engine to
//! append after a record wins, and any other engine that still believes it
//! leads fails on that fence and stops. A record larger than a message is
//! split into parts, each fenced on the one before; readers join them.
//!
//! Every message carries, in headers, the record's number, the writer's
//! epoch and the sequence from which records may still hold outbox
//! messages not yet published, so the last record's position is known
//! without reading its body.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use jetsaga_core::saga::definition::{SagaDefinition, ServicePolicy};
use jetsaga_protocol::{ErrorCode, STREAM_HEADROOM, Subjects};
use jetsaga_store::{Change, OutboxMessage};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::streams::{self, BusError, StreamSettings};

/// Header: the record's number (1, 2, … per partition).
pub const HEADER_RECORD: &str = "Jetsaga-Record";
/// Header: the epoch of the engine that wrote the record.
pub const HEADER_EPOCH: &str = "Jetsaga-Epoch";
/// Header: the journal sequence from which records may still hold outbox
/// messages that were not published yet.
pub const HEADER_OUTBOX_FROM: &str = "Jetsaga-Outbox-From";
/// Header: `<part>/<parts>` of a record split over several messages.
pub const HEADER_PART: &str = "Jetsaga-Part";

/// How long an append is retried after answers that did not come: longer
/// than JetStream takes to elect a new leader for the stream when the node
/// leading it dies (its Raft election timeout is 4-9 s). The fence keeps a
/// late append from landing after another engine's record, and the message
/// id keeps a repeated one from landing twice.
const APPEND_PATIENCE: Duration = Duration::from_secs(20);

/// How the journal asks again while JetStream does not answer (a stream
/// just created, or electing a leader): 50 ms doubling to 1 s, jittered,
/// for up to [`APPEND_PATIENCE`] in all.
fn patience() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(APPEND_PATIENCE))
        .without_max_times()
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another engine appended to the partition since this one's last
    /// record: this engine no longer leads it.
    #[error("{code}: partition {partition}'s journal moved on past sequence {expected}: another engine leads it now", code = ErrorCode::Deposed)]
    Fenced {
        /// Partition.
        partition: u32,
        /// The last sequence this engine knew.
        expected: u64,
    },
    /// JetStream did not take or give a record.
    #[error("{code}: journal of partition {partition}: {reason}", code = ErrorCode::Journal)]
    Nats {
        /// Partition.
        partition: u32,
        /// What failed.
        reason: String,
    },
    /// A record does not decode, or does not follow the one before.
    #[error("{code}: journal of partition {partition} at sequence {seq}: {reason}", code = ErrorCode::Journal)]
    Corrupt {
        /// Partition.
        partition: u32,
        /// Stream sequence.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}

/// One group commit of a partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Number of the record in its partition: the previous one's plus one.
    pub number: u64,
    /// Epoch of the engine that wrote it (its lease's revision when taken).
    pub epoch: u64,
    /// Id of the engine that wrote it.
    pub engine: String,
    /// Set on the first record of a journal whose writer's store already
    /// held state from before the journal existed (an upgraded
    /// installation): an engine with an empty store cannot rebuild that
    /// state from the journal alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seeded: bool,
    /// Journal sequence from which records may still hold outbox messages
    /// that were not published yet: a new leader publishes those again.
    pub outbox_from: u64,
    /// Definitions applied, in order (versioned by content, so applying one
    /// twice changes nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub definitions: Vec<SagaDefinition>,
    /// Service policies applied, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServicePolicy>,
    /// Sagas deleted (retention, `saga delete`), before `changes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<String>,
    /// The state changes, in the order they were written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
}

impl Record {
    /// Every outbox message of the record's changes, in order.
    pub fn outbox(&self) -> impl Iterator<Item = &OutboxMessage> {
        self.changes.iter().flat_map(|c| c.outbox.iter())
    }
}

/// What the headers of a journal message say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Stream sequence of the message (of a record's last part).
    pub seq: u64,
    /// Stream sequence of the record's first part (`seq` when it has one).
    pub first: u64,
    /// Record number.
    pub number: u64,
    /// Writer's epoch.
    pub epoch: u64,
    /// Where records may still hold unpublished outbox messages.
    pub outbox_from: u64,
    /// Part (1-based) and number of parts.
    pub part: (u32, u32),
    /// The sequence of the partition's last message when this mark was
    /// read as its last record ([`Journal::last`]): the next append fences
    /// on it. `seq` unless parts of a record whose append failed follow.
    pub fence: u64,
}

impl Mark {
    fn of(seq: u64, headers: Option<&HeaderMap>) -> Option<Self> {
        let headers = headers?;
        let number = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
        let part = match headers.get(HEADER_PART) {
            Some(v) => {
                let (i, n) = v.as_str().split_once('/')?;
                (i.parse().ok()?, n.parse().ok()?)
            }
            None => (1, 1),
        };
        Some(Mark {
            seq,
            fence: seq,
            first: seq,
            number: number(HEADER_RECORD)?,
            epoch: number(HEADER_EPOCH)?,
            outbox_from: number(HEADER_OUTBOX_FROM)?,
            part,
        })
    }

    /// Whether this is the record's last (or only) part.
    pub fn last_part(&self) -> bool {
        self.part.0 == self.part.1
    }
}

/// The journal stream of an installation.
#[derive(Clone)]
pub struct Journal {
    js: jetstream::Context,
    subjects: Subjects,
    stream: String,
    /// Largest part body.
    chunk: usize,
}

impl Journal {
    /// Creates (or updates) the journal stream and returns it. Records
    /// larger than `chunk` bytes are split into parts of that size (give
    /// the server's max payload less room for headers).
    pub async fn ensure(
        js: &jetstream::Context,
        subjects: &Subjects,
        settings: &StreamSettings,
        chunk: usize,
    ) -> Result<Self, BusError> {
        let name = subjects.journal_stream();
        let base = streams::stream_config(
            name.clone(),
            "each partition's journal of state changes; the engines' stores are its materialisation",
            vec![subjects.journal_wildcard()],
            stream::RetentionPolicy::Limits,
            settings,
        );
        let config = stream::Config {
            allow_direct: true,
            deny_delete: true,
            max_message_size: i32::try_from(chunk + STREAM_HEADROOM).unwrap_or(i32::MAX),
            ..base
        };
        streams::create_stream(js, config).await?;
        Ok(Self {
            js: js.clone(),
            subjects: subjects.clone(),
            stream: name,
            chunk: chunk.max(1024),
        })
    }

    /// The mark of the partition's last whole record, `None` for a journal
    /// without one. Parts of a record whose append failed halfway may
    /// follow it: they are no record (readers drop them), and the mark's
    /// `fence` is the last of them, which the next append must follow.
    pub async fn last(&self, partition: u32) -> Result<Option<Mark>, JournalError> {
        let stream = self.stream_handle(partition).await?;
        let subject = self.subjects.journal(partition);
        let not_found = |e: &jetstream::stream::DirectGetError| {
            e.kind() == jetstream::stream::DirectGetErrorKind::NotFound
        };
        let msg = match (|| stream.direct_get_last_for_subject(subject.as_str()))
            .retry(patience())
            .when(|e| !not_found(e))
            .notify(|e, _| tracing::debug!(partition, error = %e, "the journal's last record is not readable yet; asking again"))
            .await
        {
            Ok(msg) => msg,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(nats(partition, format!("cannot read the last record: {e}"))),
        };
        let fence = msg.sequence;
        let mut mark = Self::mark_of(partition, msg.sequence, &msg.headers)?;
        // Walk back over the parts of a record that was never finished.
        let mut seq = fence;
        while !mark.last_part() {
            seq -= 1;
            if seq == 0 {
                return Ok(Some(Mark {
                    seq: 0,
                    fence,
                    first: 0,
                    number: 0,
                    epoch: 0,
                    outbox_from: 0,
                    part: (1, 1),
                }));
            }
            let msg = match stream.direct_get(seq).await {
                Ok(msg) => msg,
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(nats(partition, format!("cannot read record at {seq}: {e}")));
                }
            };
            if msg.subject.as_str() != subject {
                continue;
            }
            mark = Self::mark_of(partition, seq, &msg.headers)?;
        }
        mark.fence = fence;
        Ok(Some(mark))
    }

    fn mark_of(partition: u32, seq: u64, headers: &HeaderMap) -> Result<Mark, JournalError> {
        Mark::of(seq, Some(headers)).ok_or_else(|| JournalError::Corrupt {
            partition,
            seq,
            reason: "a journal message without its record headers".into(),
        })
    }

    async fn stream_handle(&self, partition: u32) -> Result<stream::Stream, JournalError> {
        (|| self.js.get_stream(&self.stream))
            .retry(patience())
            .notify(|e, _| tracing::debug!(partition, error = %e, "the journal stream does not answer yet; asking again"))
            .await
            .map_err(|e| nats(partition, format!("cannot find stream {}: {e}", self.stream)))
    }

    /// Appends `record` to `partition`'s journal after the message at
    /// `expected_last` (0: the journal must be empty) and returns the
    /// sequence of its last part. A retry after a lost answer is
    /// deduplicated by the message id, so it never appends twice.
    pub async fn append(
        &self,
        partition: u32,
        record: &Record,
        expected_last: u64,
    ) -> Result<u64, JournalError> {
        let body = serde_json::to_vec(record).map_err(|e| JournalError::Corrupt {
            partition,
            seq: expected_last,
            reason: format!("cannot encode record {}: {e}", record.number),
        })?;
        let chunks: Vec<&[u8]> = if body.is_empty() {
            vec![&body[..]]
        } else {
            body.chunks(self.chunk).collect()
        };
        let parts = chunks.len() as u32;
        let mut last = expected_last;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let part = i as u32 + 1;
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_RECORD, record.number.to_string().as_str());
            headers.insert(HEADER_EPOCH, record.epoch.to_string().as_str());
            headers.insert(HEADER_OUTBOX_FROM, record.outbox_from.to_string().as_str());
            if parts > 1 {
                headers.insert(HEADER_PART, format!("{part}/{parts}").as_str());
            }
            headers.insert(
                jetsaga_protocol::HEADER_MSG_ID,
                format!(
                    "journal-{partition}-{}-{}-{part}",
                    record.epoch, record.number
                )
                .as_str(),
            );
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last.to_string().as_str(),
            );
            last = self
                .publish(partition, headers, chunk.to_vec(), last)
                .await?;
        }
        Ok(last)
    }

    async fn publish(
        &self,
        partition: u32,
        headers: HeaderMap,
        body: Vec<u8>,
        expected: u64,
    ) -> Result<u64, JournalError> {
        use jetstream::context::PublishErrorKind as K;
        let subject = self.subjects.journal(partition);
        let body = bytes::Bytes::from(body);
        let append = || async {
            self.js
                .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                .await?
                .await
        };
        // Asked again only when no answer came: the fence and the message id
        // keep a late or repeated append from landing wrongly.
        match append
            .retry(patience())
            .when(|e| matches!(e.kind(), K::TimedOut | K::StreamNotFound | K::BrokenPipe))
            .notify(
                |e, _| tracing::warn!(partition, error = %e, "journal append unanswered; retrying"),
            )
            .await
        {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == K::WrongLastSequence => Err(JournalError::Fenced {
                partition,
                expected,
            }),
            Err(e) => Err(nats(partition, format!("cannot append: {e}"))),
        }
    }

    /// Reads `partition`'s records from stream sequence `from` (0: from the
    /// first) on, joined from their parts, as they come: an ordered
    /// consumer, so nothing is skipped or repeated.
    pub async fn read(&self, partition: u32, from: u64) -> Result<Reader, JournalError> {
        let stream = self.stream_handle(partition).await?;
        let deliver_policy = if from <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from,
            }
        };
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: self.subjects.journal(partition),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(partition, format!("cannot read the journal: {e}")))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| nats(partition, format!("cannot read the journal: {e}")))?;
        Ok(Reader {
            partition,
            messages,
            parts: Vec::new(),
            first: 0,
            expecting: None,
        })
    }

    /// Removes `partition`'s records before stream sequence `keep_from`
    /// (after a snapshot covers them).
    pub async fn trim(&self, partition: u32, keep_from: u64) -> Result<u64, JournalError> {
        let stream = self.stream_handle(partition).await?;
        let purged = stream
            .purge()
            .filter(self.subjects.journal(partition))
            .sequence(keep_from)
            .await
            .map_err(|e| nats(partition, format!("cannot trim: {e}")))?;
        Ok(purged.purged)
    }

    /// The stream's first sequence (records before it were trimmed).
    pub async fn first_seq(&self, partition: u32) -> Result<u64, JournalError> {
        let mut stream = self.stream_handle(partition).await?;
        let info = stream
            .info()
            .await
            .map_err(|e| nats(partition, format!("cannot read the stream's state: {e}")))?;
        Ok(info.state.first_sequence)
    }
}

/// Records of one partition, in order ([`Journal::read`]).
pub struct Reader {
    partition: u32,
    messages: consumer::push::Ordered,
    parts: Vec<u8>,
    first: u64,
    /// The record (number, epoch) and the next part `parts` expects.
    expecting: Option<(u64, u64, u32)>,
}

impl Reader {
    /// The next whole record and the mark of its last part; `None` when
    /// the consumer ended.
    pub async fn next(&mut self) -> Option<Result<(Mark, Record), JournalError>> {
        loop {
            let msg = match self.messages.next().await? {
                Ok(m) => m,
                Err(e) => {
                    return Some(Err(nats(
                        self.partition,
                        format!("reading the journal: {e}"),
                    )));
                }
            };
            let seq = match msg.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => {
                    return Some(Err(nats(
                        self.partition,
                        format!("a journal message without its position: {e}"),
                    )));
                }
            };
            let Some(mut mark) = Mark::of(seq, msg.headers.as_ref()) else {
                return Some(Err(JournalError::Corrupt {
                    partition: self.partition,
                    seq,
                    reason: "a journal message without its record headers".into(),
                }));
            };
            if mark.part.0 == 1 {
                self.parts.clear();
                self.first = seq;
            } else if self.expecting != Some((mark.number, mark.epoch, mark.part.0)) {
                // A part of a record whose earlier parts were not read (or
                // whose append failed halfway): no record.
                self.parts.clear();
                self.expecting = None;
                continue;
            }
            mark.first = self.first;
            self.parts.extend_from_slice(&msg.payload);
            if !mark.last_part() {
                self.expecting = Some((mark.number, mark.epoch, mark.part.0 + 1));
                continue;
            }
            self.expecting = None;
            let body = std::mem::take(&mut self.parts);
            return Some(
                serde_json::from_slice::<Record>(&body)
                    .map(|r| (mark, r))
                    .map_err(|e| JournalError::Corrupt {
                        partition: self.partition,
                        seq,
                        reason: format!("record {} does not decode: {e}", mark.number),
                    }),
            );
        }
    }
}

fn nats(partition: u32, reason: String) -> JournalError {
    JournalError::Nats { partition, reason }
}
