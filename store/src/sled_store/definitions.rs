//! [`DefinitionTable`] on sled.

use super::SledStore;
use super::codec::{decode, definition_key, encode, join, tx_error, u32_of};
use crate::{Applied, DefinitionTable, StoreError};
use jetsaga_core::saga::definition::SagaDefinition;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

/// Two definitions are the same content when they are equal as JSON with the
/// version left out.
fn same_content(a: &SagaDefinition, b: &SagaDefinition) -> Result<bool, StoreError> {
    let value = |d: &SagaDefinition| {
        let mut d = d.clone();
        d.version = 0;
        serde_json::to_value(&d).map_err(|source| StoreError::Encode {
            key: format!("definitions/{}", d.name),
            source,
        })
    };
    Ok(value(a)? == value(b)?)
}
impl DefinitionTable for SledStore {
    fn put_definition(&self, def: &SagaDefinition) -> Result<Applied, StoreError> {
        let name = def.name.as_str();
        (&self.definitions, &self.definition_latest)
            .transaction(|(definitions, latest)| {
                let current = match latest.get(name.as_bytes())? {
                    Some(v) => Some(
                        u32_of("definition_latest", name.as_bytes(), &v)
                            .map_err(ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                if let Some(version) = current {
                    let key = definition_key(name, version);
                    if let Some(bytes) = definitions.get(&key)? {
                        let stored: SagaDefinition = decode("definitions", &key, &bytes)
                            .map_err(ConflictableTransactionError::Abort)?;
                        if same_content(&stored, def)
                            .map_err(ConflictableTransactionError::Abort)?
                        {
                            return Ok(Applied {
                                name: name.to_owned(),
                                version,
                                changed: false,
                            });
                        }
                    }
                }
                let version = current.map_or(1, |v| v.saturating_add(1));
                let key = definition_key(name, version);
                let mut stored = def.clone();
                stored.version = version;
                let bytes = encode("definitions", &key, &stored)
                    .map_err(ConflictableTransactionError::Abort)?;
                definitions.insert(key, bytes)?;
                latest.insert(name.as_bytes(), &version.to_be_bytes())?;
                Ok(Applied {
                    name: name.to_owned(),
                    version,
                    changed: true,
                })
            })
            .map_err(tx_error)
    }

    fn definition(&self, name: &str, version: u32) -> Result<Option<SagaDefinition>, StoreError> {
        let key = definition_key(name, version);
        match self.definitions.get(&key)? {
            Some(bytes) => decode("definitions", &key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn latest_definition(&self, name: &str) -> Result<Option<SagaDefinition>, StoreError> {
        match self.definition_latest.get(name.as_bytes())? {
            Some(v) => self.definition(name, u32_of("definition_latest", name.as_bytes(), &v)?),
            None => Ok(None),
        }
    }

    fn list_definitions(&self) -> Result<Vec<SagaDefinition>, StoreError> {
        let mut out = Vec::new();
        for entry in self.definition_latest.iter() {
            let (name, v) = entry?;
            let version = u32_of("definition_latest", &name, &v)?;
            let key = join(&name, &version.to_be_bytes());
            if let Some(bytes) = self.definitions.get(&key)? {
                out.push(decode("definitions", &key, &bytes)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;

    #[test]
    fn definitions_are_versioned_by_content() {
        let store = SledStore::temporary().unwrap();
        assert_eq!(store.latest_definition("order").unwrap(), None);

        let v1 = definition("order", "reserve");
        let applied = store.put_definition(&v1).unwrap();
        assert_eq!(
            applied,
            Applied {
                name: "order".into(),
                version: 1,
                changed: true
            }
        );
        // Same content (whatever the version field says) keeps the version.
        let mut again = v1.clone();
        again.version = 7;
        let applied = store.put_definition(&again).unwrap();
        assert_eq!((applied.version, applied.changed), (1, false));

        let v2 = definition("order", "reserve_v2");
        let applied = store.put_definition(&v2).unwrap();
        assert_eq!((applied.version, applied.changed), (2, true));

        let old = store.definition("order", 1).unwrap().unwrap();
        assert_eq!(old.version, 1);
        assert_eq!(old.steps[0].operation, "reserve");
        let latest = store.latest_definition("order").unwrap().unwrap();
        assert_eq!(latest.version, 2);
        assert_eq!(latest.steps[0].operation, "reserve_v2");
        assert_eq!(store.definition("order", 3).unwrap(), None);

        // Going back to old content is a new version, not a rollback.
        let applied = store.put_definition(&v1).unwrap();
        assert_eq!((applied.version, applied.changed), (3, true));

        store
            .put_definition(&definition("billing", "charge"))
            .unwrap();
        let all = store.list_definitions().unwrap();
        let names: Vec<_> = all.iter().map(|d| (d.name.as_str(), d.version)).collect();
        assert_eq!(names, vec![("billing", 1), ("order", 3)]);
    }
}
