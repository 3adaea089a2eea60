//! The outbox: messages to publish, written with the state change that
//! caused them ([`OutboxTable`]).

use crate::StoreError;
use serde::{Deserialize, Serialize};

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

/// Outbox rows by sequence, in commit order. Rows are added by
/// [`crate::GroupCommit`]; the relay reads the durable ones, publishes them
/// and removes them; the metrics read the count.
pub trait OutboxTable: Send + Sync {
    /// Up to `limit` outbox rows in commit order, the oldest first, none
    /// with a sequence above `through` (the relay passes
    /// [`crate::GroupCommit::outbox_durable`], so rows not yet durable are
    /// not even read).
    fn outbox(&self, through: u64, limit: usize) -> Result<Vec<(u64, OutboxMessage)>, StoreError>;
    /// Removes published outbox rows.
    fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError>;
    /// Number of outbox rows.
    fn outbox_len(&self) -> usize;
}
