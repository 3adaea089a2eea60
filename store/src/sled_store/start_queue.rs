//! [`StartQueueTable`] on sled.

use super::SledStore;
use super::codec::{decode, u64_of};
use crate::{QueuedRow, StartQueueTable, StoreError};

impl StartQueueTable for SledStore {
    fn queued(&self) -> Result<Vec<(u64, QueuedRow)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.queued.iter() {
            let (key, bytes) = entry?;
            out.push((
                u64_of("queued", &key, &key)?,
                decode("queued", &key, &bytes)?,
            ));
        }
        Ok(out)
    }

    fn queue_position(&self, id: &str) -> Result<Option<usize>, StoreError> {
        for (n, entry) in self.queued.iter().enumerate() {
            let (key, bytes) = entry?;
            let row: QueuedRow = decode("queued", &key, &bytes)?;
            if row.saga_id == id {
                return Ok(Some(n + 1));
            }
        }
        Ok(None)
    }
}
