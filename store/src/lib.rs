//! The store: everything the engine must not lose, behind a small interface.
//!
//! [`Store`] is the interface the engine programs against; [`sled_store`]
//! implements it on sled 0.34. Each state change is one [`Change`] carrying
//! the outbox rows and timers its effects need; [`Store::commit_many`] writes
//! a batch of them in a single atomic transaction (the partition writes one
//! per batch), [`Store::commit`] a single one; [`Store::flush`] makes every
//! commit so far durable at once (group commit), and
//! [`Store::outbox_durable`] says up to which outbox row that is.

use futures::future::BoxFuture;
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::{Millis, Saga, TimerKind};
use jetsaga_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

pub mod compact;
mod prune;
pub mod sled_store;

pub use prune::prune;
pub use sled_store::SledStore;

/// Bytes of the files under `dir`, subdirectories included: what a store
/// directory takes on disk (`jetsaga store compact`, the `bench` and
/// `scale` reports).
/// A file removed while it is walked (a running store rotates its files)
/// counts nothing.
pub fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = match entry.and_then(|e| Ok((e.metadata()?, e.path()))) {
            Ok(found) => found,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        total += match meta {
            (m, path) if m.is_dir() => match dir_bytes(&path) {
                Err(e) if gone(&e) => 0,
                other => other?,
            },
            (m, _) => m.len(),
        };
    }
    Ok(total)
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store directory.
    #[error(
        "{code}: the store at {path} is in use by another process; stop the other engine or choose another --data-dir",
        code = ErrorCode::StoreLocked,
    )]
    Locked {
        /// Store directory.
        path: String,
    },
    /// The store could not be opened (unreadable or corrupt).
    #[error("{code}: cannot open the store at {path}: {source}", code = ErrorCode::StoreOpen)]
    Open {
        /// Store directory.
        path: String,
        /// Cause.
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("{code}: store operation failed: {0}", code = ErrorCode::StoreIo)]
    Io(#[from] sled::Error),
    /// A record could not be encoded for storing (nothing was written).
    #[error("{code}: record {key} cannot be encoded: {source}", code = ErrorCode::StoreEncode)]
    Encode {
        /// Record key, printable.
        key: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// `jetsaga store compact` could not compact the store (it is left as
    /// it was).
    #[error("{code}: cannot compact the store at {path}: {reason}", code = ErrorCode::StoreCompact)]
    Compact {
        /// Store directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("{code}: stored record {key} cannot be decoded: {source}", code = ErrorCode::StoreCorrupt)]
    Corrupt {
        /// Record key, printable.
        key: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// A message to publish to JetStream, written to the outbox in the same
/// transaction as the state change that caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxMessage {
    /// Subject to publish on.
    pub subject: String,
    /// `Nats-Msg-Id` header: JetStream drops a second publish with the same id.
    pub msg_id: String,
    /// Other headers.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Message body.
    pub payload: Vec<u8>,
}

/// A durable timer row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRow {
    /// Saga the timer belongs to.
    pub saga_id: String,
    /// Which timer.
    pub timer: TimerKind,
    /// When it fires.
    pub due: Millis,
}

/// What the writer knows of the stored record a [`Change`] replaces, so the
/// store can move the saga's index entries without reading and decoding it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Prior {
    /// Not known: the store reads the stored record.
    #[default]
    Unknown,
    /// There is no stored record: the saga is new.
    Absent,
    /// The stored record is of the same saga (same id and name) in state
    /// `state`, finished at `finished` if terminal.
    Stored {
        /// [`jetsaga_core::saga::state::SagaStatus::name`] of the stored record.
        state: &'static str,
        /// The time the `finished` index has it under (terminal sagas only).
        finished: Option<Millis>,
    },
}

impl Prior {
    /// The prior of a change replacing `saga` as it is stored now.
    pub fn of(saga: &Saga) -> Self {
        Prior::Stored {
            state: saga.status.name(),
            finished: saga
                .status
                .is_terminal()
                .then(|| saga.finished_at.unwrap_or(saga.updated_at)),
        }
    }
}

/// One atomic state change.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The saga's new state (inserted or replaced). Indexes follow it.
    pub saga: Option<Saga>,
    /// The stored record `saga` replaces, when the writer knows it
    /// ([`Prior::Unknown`] is always safe: the store then reads it).
    pub prior: Prior,
    /// Idempotency key to bind to `saga` (start requests only).
    pub idempotency_key: Option<String>,
    /// Messages to publish.
    pub outbox: Vec<OutboxMessage>,
    /// Timers to arm.
    pub timers_add: Vec<TimerRow>,
    /// Timers to disarm, by saga and kind (a missing one is no error).
    pub timers_remove: Vec<(String, TimerKind)>,
    /// Rows to add to the start queue, by enqueue sequence ([`jetsaga_core::limits`]).
    pub queue_add: Vec<(u64, QueuedRow)>,
    /// Rows to remove from the start queue, by enqueue sequence (a missing
    /// one is no error).
    pub queue_remove: Vec<u64>,
    /// Tasks to hold ([`jetsaga_core::admission`]), by hold sequence.
    pub held_add: Vec<(u64, HeldTask)>,
    /// Held tasks to remove (released or dropped), by hold sequence (a
    /// missing one is no error).
    pub held_remove: Vec<u64>,
    /// Circuit breakers to store, by service; `None` deletes the record.
    pub breakers: Vec<(String, Option<jetsaga_core::admission::BreakerState>)>,
}

/// A task held back by its service's circuit breaker or in-flight limit
/// ([`jetsaga_core::admission`]): the outbox row it becomes when released, and the
/// attempt it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldTask {
    /// The service whose queue it goes to.
    pub service: String,
    /// Saga id.
    pub saga_id: String,
    /// Step index.
    pub step: usize,
    /// Action or compensation.
    pub kind: jetsaga_protocol::TaskKind,
    /// Attempt number.
    pub attempt: u32,
    /// The attempt's timeout, armed when the task is released (ms).
    pub timeout_ms: u64,
    /// The task message to publish.
    pub message: OutboxMessage,
}

pub use jetsaga_core::limits::QueuedRow;

/// Which sagas to list. Every field is optional on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SagaFilter {
    /// Only sagas in this state (a [`jetsaga_core::saga::state::SagaStatus::name`]).
    pub state: Option<String>,
    /// Only sagas of this definition.
    pub name: Option<String>,
    /// Only sagas created strictly before this id (cursor for the next page).
    pub before: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
}

/// Result of storing a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Definition name.
    pub name: String,
    /// Version now current.
    pub version: u32,
    /// Whether a new version was written (`false`: identical to the current one).
    pub changed: bool,
}

/// The engine's durable state.
///
/// All writes of the engine go through one writer per partition, so
/// implementations need not order concurrent commits; reads may happen from
/// any task.
pub trait Store: Send + Sync + 'static {
    /// Stores `def` as a new version of its name, unless it equals the current
    /// version (ignoring the `version` field). Returns the current version.
    fn put_definition(&self, def: &SagaDefinition) -> Result<Applied, StoreError>;
    /// A given version of a definition.
    fn definition(&self, name: &str, version: u32) -> Result<Option<SagaDefinition>, StoreError>;
    /// The current version of a definition.
    fn latest_definition(&self, name: &str) -> Result<Option<SagaDefinition>, StoreError>;
    /// The current version of every definition, by name.
    fn list_definitions(&self) -> Result<Vec<SagaDefinition>, StoreError>;

    /// One saga.
    fn saga(&self, id: &str) -> Result<Option<Saga>, StoreError>;
    /// The saga an idempotency key is bound to.
    fn saga_by_idempotency_key(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sagas matching `filter`, newest first.
    fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<Saga>, StoreError>;
    /// Every saga that is not terminal.
    fn unfinished_sagas(&self) -> Result<Vec<Saga>, StoreError>;

    /// Writes one change atomically (not yet durable: see [`Store::flush`]).
    fn commit(&self, change: Change) -> Result<(), StoreError> {
        self.commit_many(std::slice::from_ref(&change))
    }
    /// Writes `changes`, in order, in one atomic transaction: all of them or
    /// (on an error) none. A later change sees the earlier ones (its
    /// [`Prior`] is the state they left). Not yet durable: see
    /// [`Store::flush`].
    fn commit_many(&self, changes: &[Change]) -> Result<(), StoreError>;
    /// Deletes saga `id` in one atomic transaction (not yet durable: see
    /// [`Store::flush`]): its record, its index entries, its timers and the
    /// binding of its idempotency key, so that the key starts a new saga
    /// afterwards. Returns the deleted saga; `None` (and nothing changes)
    /// if there is none.
    ///
    /// Meant for terminal sagas, which the caller checks. Outbox rows the
    /// saga's transitions wrote are left to the relay: a task published
    /// after the deletion reaches a worker, and its result is rejected as
    /// `unknown_saga`, like any result of a deleted saga.
    fn delete_saga(&self, id: &str) -> Result<Option<Saga>, StoreError>;
    /// Makes every commit so far durable, and advances
    /// [`Store::outbox_durable`] past their outbox rows once it completes.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The highest outbox sequence known to be durable: every outbox row at
    /// or below it survives a crash (rows found at open count as durable:
    /// the store flushes once when it opens). `None` before any row.
    /// Publishing only rows up to it keeps the outbox's promise without a
    /// flush of the publisher's own.
    fn outbox_durable(&self) -> Option<u64>;

    /// Up to `limit` outbox rows in commit order, the oldest first, none
    /// with a sequence above `through` (the relay passes
    /// [`Store::outbox_durable`], so rows not yet durable are not even read).
    fn outbox(&self, through: u64, limit: usize) -> Result<Vec<(u64, OutboxMessage)>, StoreError>;
    /// Removes published outbox rows.
    fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError>;
    /// Number of outbox rows.
    fn outbox_len(&self) -> usize;

    /// The earliest armed timer.
    fn next_timer(&self) -> Result<Option<TimerRow>, StoreError>;
    /// Up to `limit` timers due at or before `now`, earliest first.
    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<TimerRow>, StoreError>;
    /// Number of armed timers.
    fn timers_len(&self) -> usize;

    /// Up to `limit` ids of terminal sagas that finished at or before
    /// `before`, earliest finished first: what retention prunes next
    /// (`crate::retention`). Reads an index by finish time, so the cost
    /// follows `limit`, not the number of stored sagas.
    fn finished_before(&self, before: Millis, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Number of stored sagas, finished or not (kept in memory: cheap).
    fn sagas_len(&self) -> usize;
    /// Bytes the store's files take on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Every row of the start queue ([`jetsaga_core::limits`]), by enqueue
    /// sequence (the order sagas are admitted in).
    fn queued(&self) -> Result<Vec<(u64, QueuedRow)>, StoreError>;
    /// How many queued sagas are ahead of saga `id` in the start queue, plus
    /// one (1 = next); `None` when it is not queued. Scans the queue up to it.
    fn queue_position(&self, id: &str) -> Result<Option<usize>, StoreError>;

    /// Every held task ([`jetsaga_core::admission`]), by hold sequence.
    fn held_tasks(&self) -> Result<Vec<(u64, HeldTask)>, StoreError>;
    /// One held task.
    fn held_task(&self, seq: u64) -> Result<Option<HeldTask>, StoreError>;
    /// Every stored circuit breaker, by service.
    fn breakers(&self) -> Result<Vec<(String, jetsaga_core::admission::BreakerState)>, StoreError>;
    /// Stores a service's policy, replacing the one it had (latest applied
    /// wins). Returns whether it changed. Durable after the next
    /// [`Store::flush`], like a definition.
    fn put_service_policy(
        &self,
        policy: &jetsaga_core::saga::definition::ServicePolicy,
    ) -> Result<bool, StoreError>;
    /// Every service policy, by service.
    fn service_policies(
        &self,
    ) -> Result<Vec<jetsaga_core::saga::definition::ServicePolicy>, StoreError>;
}
