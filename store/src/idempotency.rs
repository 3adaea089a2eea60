//! Start idempotency keys ([`IdempotencyTable`]).

use crate::StoreError;

/// The binding of each start's idempotency key to the saga it started, so
/// a repeated start answers with that saga. Bound by the
/// [`crate::Change`] that stores the saga, unbound when it is deleted; read
/// by the partition when a start arrives.
pub trait IdempotencyTable: Send + Sync {
    /// The saga an idempotency key is bound to.
    fn saga_by_idempotency_key(&self, key: &str) -> Result<Option<String>, StoreError>;
}
