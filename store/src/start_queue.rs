//! The start queue of the concurrency limits ([`StartQueueTable`]).

use crate::StoreError;
pub use jetsaga_core::limits::QueuedRow;

/// Sagas waiting for a free place under their concurrency limit
/// ([`jetsaga_core::limits`]), by enqueue sequence. Rows come and go with
/// [`crate::GroupCommit`]; the partition reads them back at start-up and
/// the API reads a saga's position.
pub trait StartQueueTable: Send + Sync {
    /// Every row of the start queue, by enqueue sequence (the order sagas
    /// are admitted in).
    fn queued(&self) -> Result<Vec<(u64, QueuedRow)>, StoreError>;
    /// How many queued sagas are ahead of saga `id` in the start queue, plus
    /// one (1 = next); `None` when it is not queued. Scans the queue up to it.
    fn queue_position(&self, id: &str) -> Result<Option<usize>, StoreError>;
}
