//! Durable timers ordered by due time ([`TimerTable`]).

use crate::StoreError;
use jetsaga_core::saga::state::{Millis, TimerKind};
use serde::{Deserialize, Serialize};

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

/// Armed timers (retries, step and saga timeouts), earliest due first.
/// Armed and disarmed by [`crate::GroupCommit`]; read by the partition,
/// which fires them, and the metrics, which count them.
pub trait TimerTable: Send + Sync {
    /// The earliest armed timer.
    fn next_timer(&self) -> Result<Option<TimerRow>, StoreError>;
    /// Up to `limit` timers due at or before `now`, earliest first.
    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<TimerRow>, StoreError>;
    /// Number of armed timers.
    fn timers_len(&self) -> usize;
    /// When `timer` of saga `saga_id` is due, if it is armed.
    fn timer_due(&self, saga_id: &str, timer: &TimerKind) -> Result<Option<Millis>, StoreError>;
}
