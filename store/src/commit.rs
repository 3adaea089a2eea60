//! The group commit: state changes written atomically, made durable
//! together ([`GroupCommit`]).

use crate::StoreError;
use crate::outbox::OutboxMessage;
use crate::services::HeldTask;
use crate::start_queue::QueuedRow;
use crate::timers::TimerRow;
use futures::future::BoxFuture;
use jetsaga_core::saga::state::{Millis, Saga, TimerKind};

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
    pub breakers: Vec<(String, Option<jetsaga_core::admission::Breaker>)>,
}

/// Writing state changes and making them durable: the single writer's
/// surface (the partition; retention's prune runs inside it). Each
/// [`Change`] and each deletion is one atomic write, durable once a
/// [`GroupCommit::flush`] that started after it completes; the relay reads
/// [`GroupCommit::outbox_durable`] to publish only durable rows, and the
/// API flushes after storing definitions.
///
/// All writes of the engine go through one writer per partition, so
/// implementations need not order concurrent commits; reads may happen from
/// any task.
pub trait GroupCommit: Send + Sync {
    /// Writes one change atomically (not yet durable: see [`GroupCommit::flush`]).
    fn commit(&self, change: Change) -> Result<(), StoreError> {
        self.commit_many(std::slice::from_ref(&change))
    }
    /// Writes `changes`, in order, in one atomic transaction: all of them or
    /// (on an error) none. A later change sees the earlier ones (its
    /// [`Prior`] is the state they left). Not yet durable: see
    /// [`GroupCommit::flush`].
    fn commit_many(&self, changes: &[Change]) -> Result<(), StoreError>;
    /// Deletes saga `id` in one atomic transaction (not yet durable: see
    /// [`GroupCommit::flush`]): its record, its index entries, its timers and the
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
    /// [`GroupCommit::outbox_durable`] past their outbox rows once it completes.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The highest outbox sequence known to be durable: every outbox row at
    /// or below it survives a crash (rows found at open count as durable:
    /// the store flushes once when it opens). `None` before any row.
    /// Publishing only rows up to it keeps the outbox's promise without a
    /// flush of the publisher's own.
    fn outbox_durable(&self) -> Option<u64>;
}
