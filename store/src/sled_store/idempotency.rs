//! [`IdempotencyTable`] on sled.

use super::SledStore;
use super::codec::printable;
use crate::{IdempotencyTable, StoreError};

impl IdempotencyTable for SledStore {
    fn saga_by_idempotency_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.idempotency.get(key.as_bytes())? {
            Some(id) => match String::from_utf8(id.to_vec()) {
                Ok(id) => Ok(Some(id)),
                Err(e) => Err(StoreError::Corrupt {
                    key: printable("idempotency", key.as_bytes()),
                    source: serde::de::Error::custom(e),
                }),
            },
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;

    #[test]
    fn idempotency_key_binds_to_its_saga() {
        let store = SledStore::temporary().unwrap();
        let mut s = saga("0001", "order", SagaStatus::Pending);
        s.idempotency_key = Some("order-42".into());
        store
            .commit(Change {
                saga: Some(s.into()),
                idempotency_key: Some("order-42".into()),
                ..Change::default()
            })
            .unwrap();
        // Later commits of the saga leave the binding alone.
        put(&store, saga("0001", "order", running()));
        assert_eq!(
            store
                .saga_by_idempotency_key("order-42")
                .unwrap()
                .as_deref(),
            Some("0001")
        );
    }
}
