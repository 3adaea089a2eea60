//! The store: everything the engine must not lose, behind narrow
//! interfaces.
//!
//! Each table has its own trait, and a caller names only those it uses
//! (`S: OutboxTable + GroupCommit`, or `&dyn SagaTable`); [`Store`] is all
//! of them, for the partition, the single writer, which needs every one.
//! An `Arc<dyn Store>` is passed where a narrower trait object is wanted
//! (trait upcasting).
//!
//! | trait | what | used by |
//! |---|---|---|
//! | [`SagaTable`] | saga records; listed by state or name; the unfinished ones; the finished ones by finish time; their count | partition, API reads, retention, metrics |
//! | [`IdempotencyTable`] | the saga each start's idempotency key started | partition |
//! | [`DefinitionTable`] | definitions, versioned by content | partition, API, triggers, metrics, start-up |
//! | [`OutboxTable`] | messages to publish, in commit order | relay, metrics |
//! | [`TimerTable`] | durable timers by due time | partition, metrics |
//! | [`StartQueueTable`] | the start queue of the concurrency limits | partition, API (queue position) |
//! | [`ServiceTable`] | held tasks, circuit breakers, service policies | partition; policies: API, start-up |
//! | [`GroupCommit`] | atomic writes ([`Change`], saga deletion), flush, the durable outbox mark | partition, retention, relay, API (flush) |
//! | [`JournalTable`] | the last applied record of the partition's journal, written atomically with that record's changes | partition (leader and standby), start-up |
//! | [`DiskUsage`] | bytes on disk | metrics, `scale` |
//!
//! Each state change is one [`Change`] carrying the outbox rows and timers
//! its effects need; [`GroupCommit::commit_many`] writes a batch of them in
//! a single atomic transaction (the partition writes one per batch),
//! [`GroupCommit::commit`] a single one; [`GroupCommit::flush`] makes every
//! commit so far durable at once (group commit), and
//! [`GroupCommit::outbox_durable`] says up to which outbox row that is.
//!
//! [`sled_store`] implements every trait on sled 0.34 (its module docs
//! hold the key layout); [`compact`] is `jetsaga store compact`, offline
//! compaction of a sled store.
//!
//! ```
//! use jetsaga_store::{Change, GroupCommit, SagaTable, SledStore, Store};
//!
//! fn stored(store: &dyn SagaTable) -> usize {
//!     store.sagas_len()
//! }
//!
//! let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(SledStore::temporary()?);
//! store.commit(Change::default())?;
//! futures::executor::block_on(store.flush())?;
//! assert_eq!(stored(&*store), 0);
//! # Ok::<(), jetsaga_store::StoreError>(())
//! ```

mod commit;
mod definitions;
mod disk;
mod error;
mod idempotency;
mod journal;
mod outbox;
mod prune;
mod sagas;
mod services;
mod start_queue;
mod timers;

pub mod compact;
pub mod sled_store;

pub use commit::{Change, GroupCommit, ONE_ROW_MAX, Prior, SagaWrite, fits_one_row, header_of};
pub use definitions::{Applied, DefinitionTable};
pub use disk::{DiskUsage, dir_bytes};
pub use error::StoreError;
pub use idempotency::IdempotencyTable;
pub use journal::{JournalPosition, JournalTable};
pub use outbox::{OutboxMessage, OutboxTable};
pub use prune::prune;
pub use sagas::{DEFAULT_LIST_LIMIT, SagaFilter, SagaTable};
pub use services::{HeldTask, ServiceTable};
pub use sled_store::SledStore;
pub use start_queue::{QueuedRow, StartQueueTable};
pub use timers::{TimerRow, TimerTable};

/// The engine's whole durable state: every table trait at once, for the
/// partition. Implemented for every type that implements them all.
pub trait Store:
    SagaTable
    + IdempotencyTable
    + DefinitionTable
    + OutboxTable
    + TimerTable
    + StartQueueTable
    + ServiceTable
    + GroupCommit
    + JournalTable
    + DiskUsage
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: SagaTable
        + IdempotencyTable
        + DefinitionTable
        + OutboxTable
        + TimerTable
        + StartQueueTable
        + ServiceTable
        + GroupCommit
        + JournalTable
        + DiskUsage
        + 'static
{
}
