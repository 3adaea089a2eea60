//! [`JournalTable`] on sled: the position is one record in the `meta`
//! tree, written by the group commit's transaction.

use super::SledStore;
use super::codec::decode;
use crate::{Change, JournalPosition, JournalTable, StoreError};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

/// Key of the journal position in the `meta` tree.
pub(super) const JOURNAL_KEY: &[u8] = b"journal";

/// The stored position, read inside a transaction.
pub(super) fn stored_position(
    meta: &TransactionalTree,
) -> Result<JournalPosition, ConflictableTransactionError<StoreError>> {
    match meta.get(JOURNAL_KEY)? {
        Some(bytes) => {
            decode("meta", JOURNAL_KEY, &bytes).map_err(ConflictableTransactionError::Abort)
        }
        None => Ok(JournalPosition::default()),
    }
}

impl JournalTable for SledStore {
    fn journal_position(&self) -> Result<JournalPosition, StoreError> {
        match self.meta.get(JOURNAL_KEY)? {
            Some(bytes) => decode("meta", JOURNAL_KEY, &bytes),
            None => Ok(JournalPosition::default()),
        }
    }

    fn commit_journaled(
        &self,
        changes: &[Change],
        position: JournalPosition,
    ) -> Result<(), StoreError> {
        self.write_changes(changes, Some(position))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Prior;
    use crate::sled_store::test_support::*;

    fn at(record: u64) -> JournalPosition {
        JournalPosition {
            record,
            epoch: 2,
            resume_seq: record * 10,
        }
    }

    fn start(id: &str) -> Change {
        Change {
            saga: Some(saga(id, "order", running()).into()),
            prior: Prior::Absent,
            outbox: vec![msg(1)],
            timers_add: vec![timer(id, TimerKind::SagaTimeout, 5_000)],
            ..Change::default()
        }
    }

    #[test]
    fn the_position_is_written_with_the_changes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert_eq!(
                store.journal_position().unwrap(),
                JournalPosition::default()
            );
            store.commit_journaled(&[start("0001")], at(1)).unwrap();
            // A record with no changes still moves the position.
            store.commit_journaled(&[], at(2)).unwrap();
            assert_eq!(store.journal_position().unwrap(), at(2));
            assert_eq!(store.sagas_len(), 1);
            futures::executor::block_on(store.flush()).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.journal_position().unwrap(), at(2));
        assert_eq!(store.sagas_len(), 1);
        assert_eq!(store.outbox_len(), 1);
        // Commits without a position leave it as it is.
        store.commit(start("0002")).unwrap();
        assert_eq!(store.journal_position().unwrap(), at(2));
    }

    #[test]
    fn records_apply_in_order_each_once_and_a_refused_one_writes_nothing() {
        let store = SledStore::temporary().unwrap();
        for (offered, stored) in [(0, 0), (2, 0)] {
            let err = store
                .commit_journaled(&[start("0001")], at(offered))
                .unwrap_err();
            assert!(
                matches!(err, StoreError::JournalOrder { stored: s, offered: o } if (s, o) == (stored, offered)),
                "{err}"
            );
        }
        assert_eq!(
            store.journal_position().unwrap(),
            JournalPosition::default()
        );
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(
            (store.sagas_len(), store.outbox_len(), store.timers_len()),
            (0, 0, 0)
        );
        assert_eq!(store.outbox(u64::MAX, 10).unwrap(), vec![]);

        store.commit_journaled(&[start("0001")], at(1)).unwrap();
        // The same record again (a replay) is refused, and changes nothing.
        let err = store.commit_journaled(&[start("0002")], at(1)).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::JournalOrder {
                    stored: 1,
                    offered: 1
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("record 1 cannot follow record 1"),
            "{err}"
        );
        assert_eq!(store.saga("0002").unwrap(), None);
        assert_eq!(
            (store.sagas_len(), store.outbox_len(), store.timers_len()),
            (1, 1, 1)
        );
        assert_eq!(store.journal_position().unwrap(), at(1));
    }

    #[test]
    fn a_failing_change_leaves_the_position_where_it_was() {
        let store = SledStore::temporary().unwrap();
        store.commit_journaled(&[start("0001")], at(1)).unwrap();
        // Damage the record: the next change must read it, and fails.
        store.sagas.insert("0001", &b"{not json"[..]).unwrap();
        let err = store
            .commit_journaled(
                &[Change {
                    saga: Some(saga("0001", "order", SagaStatus::Completed).into()),
                    outbox: vec![msg(2)],
                    ..Change::default()
                }],
                at(2),
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(store.journal_position().unwrap(), at(1));
        assert_eq!(store.outbox_len(), 1);
    }
}
