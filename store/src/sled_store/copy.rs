//! A checked copy of a store's live data, for [`crate::compact`].

use super::SledStore;
use super::open::sled_config;
use crate::StoreError;
use std::path::Path;

impl SledStore {
    /// Copies every tree of this store into a new sled database at `target`
    /// (which must not hold one) and checks the copy against the original
    /// (sled's checksum over every key and value). The copy holds only live
    /// data: the space of removed records stays behind. See
    /// [`crate::compact`].
    pub fn copy_into(&self, target: &Path) -> Result<(), StoreError> {
        let path = target.display().to_string();
        let copy = sled_config(target)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        if !copy.is_empty() || copy.tree_names().len() > 1 {
            return Err(StoreError::Compact {
                path,
                reason: "the copy's directory already holds data".into(),
            });
        }
        for name in self.db.tree_names() {
            let from = self.db.open_tree(&name)?;
            let to = copy.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut rows = 0usize;
            for entry in from.iter() {
                let (key, value) = entry?;
                batch.insert(key, value);
                rows += 1;
                if rows.is_multiple_of(1024) {
                    to.apply_batch(std::mem::take(&mut batch))?;
                }
            }
            to.apply_batch(batch)?;
        }
        copy.flush()?;
        if copy.checksum()? != self.checksum()? {
            return Err(StoreError::Compact {
                path,
                reason: "the copy's checksum differs from the store's".into(),
            });
        }
        Ok(())
    }

    /// sled's CRC32 over every key and value of the store.
    pub fn checksum(&self) -> Result<u32, StoreError> {
        Ok(self.db.checksum()?)
    }
}
