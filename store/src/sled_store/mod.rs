//! [`SledStore`]: every table trait of the store on sled 0.34, one file
//! per trait (`sagas.rs` is [`crate::SagaTable`], `outbox.rs`
//! [`crate::OutboxTable`], …). `open.rs` opens a store, `codec.rs` spells
//! keys and values in bytes, `change.rs` encodes a [`crate::Change`] and
//! `commit.rs` writes a batch of them ([`crate::GroupCommit`]), `delete.rs`
//! deletes a saga, `copy.rs` copies a store for [`crate::compact`],
//! `journal.rs` reads the journal position the commit writes
//! ([`crate::JournalTable`]), `snapshot.rs` writes a store to a stream and
//! restores it from one.
//!
//! Layout (one sled tree each; `‖` is concatenation, integers are big-endian
//! so byte order is numeric order):
//!
//! | tree                | key                                      | value              |
//! |---------------------|------------------------------------------|--------------------|
//! | `definitions`       | name ‖ 0x00 ‖ version u32                | definition JSON    |
//! | `definition_latest` | name                                     | version u32        |
//! | `sagas`             | saga id                                  | saga row (below)   |
//! | `saga_steps`        | saga id ‖ 0x00 ‖ step index u32          | step JSON          |
//! | `saga_inputs`       | saga id                                  | input JSON         |
//! | `idempotency`       | idempotency key                          | saga id            |
//! | `by_state`          | state name ‖ 0x00 ‖ saga id              | empty              |
//! | `by_name`           | saga name ‖ 0x00 ‖ saga id               | empty              |
//! | `outbox`            | seq u64                                  | outbox frame (below) |
//! | `timers`            | due u64 ‖ saga id ‖ 0x00 ‖ timer JSON    | [`crate::TimerRow`] JSON |
//! | `timer_index`       | saga id ‖ 0x00 ‖ timer JSON              | due u64            |
//! | `finished`          | finished_at u64 ‖ saga id                | empty              |
//! | `queued`            | enqueue seq u64                          | [`crate::QueuedRow`] JSON |
//! | `admission`         | `h` ‖ hold seq u64                       | [`crate::HeldTask`] JSON |
//! |                     | `b` ‖ service                            | breaker state JSON |
//! | `service_policies`  | service                                  | service policy JSON |
//! | `meta`              | `journal`                                | [`crate::JournalPosition`] JSON |
//!
//! A saga of up to [`crate::ONE_ROW_MAX`] bytes is stored in one `sagas`
//! row, `0x01 ‖ header length u32 ‖ header JSON ‖ {"input": …, "steps":
//! […]}` (the header alone decodes without the steps). A larger saga is
//! stored in parts: its header (the saga JSON with `steps` empty and
//! `input` null, a row starting with `{`), one row per step, and its
//! input. The writer sends a small saga whole ([`crate::SagaWrite::Whole`])
//! and a transition of a larger one as its header and the steps it changed
//! ([`crate::SagaWrite::Steps`]), so a transition's cost does not grow with
//! the saga's step count or input. The store moves a saga between the
//! forms as it is written (`commit.rs`, `put_saga`). Readers read a
//! one-row saga with one lookup and put the parts of a larger one together
//! in one (read-only) transaction, so that they never see a header of one
//! transition with steps of another. Stores of format `2` (every saga in
//! parts) are read as they are; stores of format `1` held the whole saga
//! JSON in `sagas`, and opening one stores every saga anew. Both are then
//! marked format `3`, which earlier versions refuse to open.
//!
//! `finished` holds the terminal sagas by the time they finished (written in
//! the transaction of the terminal transition, removed when the saga leaves
//! the terminal state or is deleted), so pruning old finished sagas
//! ([`crate::SagaTable::finished_before`]) reads only the rows it deletes. A store
//! written before that tree existed gets it filled once at open.
//!
//! An outbox row is a frame `0x01 ‖ header length u32 ‖ header JSON ‖
//! payload`: the header holds subject, message id and headers, the payload
//! follows as raw bytes (JSON would spell each byte as a decimal number, and
//! the relay would parse it back number by number). Rows written before the
//! frame existed are a JSON [`crate::OutboxMessage`]; they start with `{` and are
//! still read.
//!
//! Saga ids are UUIDv7, so key order is creation order and listings walk the
//! trees backwards for newest first. Outbox sequence numbers come from
//! [`sled::Db::generate_id`], which stays monotonic across restarts; a copy
//! of the data in a fresh database (restored snapshot, compaction) starts
//! its generator again, so at open the store offsets it past the last
//! stored row.
//!
//! Counting rows in sled is a full scan, so the store keeps the outbox and
//! timer row counts in memory (counted once at open, then adjusted by every
//! write). It also keeps the highest outbox sequence written and the highest
//! one a completed flush covered ([`crate::GroupCommit::outbox_durable`]).

use crate::{DiskUsage, OutboxTable, StoreError, TimerTable};
use sled::Tree;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize};

mod change;
mod codec;
mod commit;
mod copy;
mod definitions;
mod delete;
mod idempotency;
mod journal;
mod open;
mod outbox;
mod sagas;
mod services;
mod snapshot;
mod start_queue;
mod timers;

#[cfg(test)]
mod model;
#[cfg(test)]
mod test_support;

pub use open::LOCK_WAIT;

/// The store on sled 0.34: one directory, one process at a time.
pub struct SledStore {
    path: String,
    db: sled::Db,
    definitions: Tree,
    definition_latest: Tree,
    sagas: Tree,
    /// Each saga's steps, one row per step.
    saga_steps: Tree,
    /// Each saga's input.
    saga_inputs: Tree,
    idempotency: Tree,
    by_state: Tree,
    by_name: Tree,
    outbox: Tree,
    timers: Tree,
    timer_index: Tree,
    finished: Tree,
    /// The start queue of the concurrency limits (`jetsaga_core::limits`).
    queued: Tree,
    /// Held tasks and circuit breakers ([`jetsaga_core::admission`]).
    admission: Tree,
    /// Service policies ([`jetsaga_core::saga::definition::ServicePolicy`]).
    service_policies: Tree,
    /// The journal position ([`crate::JournalTable`]).
    meta: Tree,
    /// Rows in `sagas`.
    saga_rows: AtomicUsize,
    /// Rows in `outbox`.
    outbox_rows: AtomicUsize,
    /// Rows in `timers`.
    timer_rows: AtomicUsize,
    /// Added to [`sled::Db::generate_id`] to number outbox rows: 0, except
    /// in a store copied into a fresh database (a restored snapshot, a
    /// compacted store), whose id generator starts again below the rows
    /// it holds. Set at open so that new rows sort after every stored one.
    seq_offset: u64,
    /// Highest outbox sequence written plus one (0: none).
    outbox_written: AtomicU64,
    /// Highest outbox sequence a completed flush covered plus one (0: none).
    outbox_durable: AtomicU64,
    /// Held across id generation and the transaction of a commit, so outbox
    /// sequence numbers become visible in order even with concurrent writers
    /// (a reader paging with `after` never skips a row committed later).
    commit_lock: Mutex<()>,
}

impl std::fmt::Debug for SledStore {
    // sled's own `Debug` of a tree dumps every node: keep this short.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("outbox_rows", &self.outbox_len())
            .field("timer_rows", &self.timers_len())
            .finish_non_exhaustive()
    }
}

impl DiskUsage for SledStore {
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}
