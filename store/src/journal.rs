//! The journal's mark in the store ([`JournalTable`]): which record of its
//! partition's replicated journal the store has applied last, written in
//! the same transaction as that record's changes.

use crate::{Change, StoreError};
use serde::{Deserialize, Serialize};

/// Where a store stands in its partition's journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalPosition {
    /// Number of the last record applied; records are numbered 1, 2, 3, …
    /// per partition (0: none yet).
    pub record: u64,
    /// Lease epoch of the engine that wrote that record.
    pub epoch: u64,
    /// Journal stream sequence from which reading on finds the next record
    /// (a lower bound; 0 = from the start).
    pub resume_seq: u64,
}

/// The journal's mark in the store.
pub trait JournalTable: Send + Sync {
    /// The position of the last applied record (`Default` when none).
    fn journal_position(&self) -> Result<JournalPosition, StoreError>;
    /// Writes `changes` (like [`crate::GroupCommit::commit_many`]: in order,
    /// one atomic transaction) together with `position`, in that same
    /// transaction. `position.record` must be exactly the stored record + 1
    /// (else [`StoreError::JournalOrder`] and nothing is written). Not
    /// durable until [`crate::GroupCommit::flush`].
    fn commit_journaled(
        &self,
        changes: &[Change],
        position: JournalPosition,
    ) -> Result<(), StoreError>;
}
