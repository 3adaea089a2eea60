//! Saga records and their indexes, read ([`SagaTable`]). Sagas are written
//! only by [`crate::GroupCommit`], which moves the indexes with them.

use crate::StoreError;
use jetsaga_core::saga::state::{Millis, Saga};
use serde::{Deserialize, Serialize};

/// Page size of [`SagaTable::list_sagas`] when the filter's `limit` is 0.
pub const DEFAULT_LIST_LIMIT: usize = 100;

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

/// Saga records, by id and through their indexes (state, name, finish
/// time). Read by the partition (recovery, sagas it does not hold in
/// memory), the API's `get` and `list`, retention and the metrics.
pub trait SagaTable: Send + Sync {
    /// One saga.
    fn saga(&self, id: &str) -> Result<Option<Saga>, StoreError>;
    /// Sagas matching `filter`, newest first.
    fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<Saga>, StoreError>;
    /// One saga's header: the saga without its steps (empty) and input
    /// (null), for a caller that reads its state, name and times (one read,
    /// whatever the saga's size).
    fn saga_header(&self, id: &str) -> Result<Option<Saga>, StoreError>;
    /// [`SagaTable::list_sagas`], headers only (see [`SagaTable::saga_header`]).
    fn list_saga_headers(&self, filter: &SagaFilter) -> Result<Vec<Saga>, StoreError>;
    /// Every saga that is not terminal, oldest first.
    fn unfinished_sagas(&self) -> Result<Vec<Saga>, StoreError>;
    /// Up to `limit` ids of terminal sagas that finished at or before
    /// `before`, earliest finished first: what retention prunes next.
    /// Reads an index by finish time, so the cost follows `limit`, not the
    /// number of stored sagas.
    fn finished_before(&self, before: Millis, limit: usize) -> Result<Vec<String>, StoreError>;
    /// Number of stored sagas, finished or not (kept in memory: cheap).
    fn sagas_len(&self) -> usize;
}
