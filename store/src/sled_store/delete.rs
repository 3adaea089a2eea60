//! Deleting a saga with everything that names it
//! ([`crate::GroupCommit::delete_saga`]).

use super::SledStore;
use super::codec::{
    decode, decode_saga_row, finished_key, is_one_row, join, timer_key, tx_error, u64_of,
};
use super::commit::take_step_rows;
use crate::StoreError;
use jetsaga_core::saga::state::Saga;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use std::sync::atomic::Ordering;

impl SledStore {
    /// [`crate::GroupCommit::delete_saga`].
    pub(super) fn delete(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        // Writes are serialized by the commit lock, so the saga's timers
        // listed here (a sled transaction cannot scan) are all of them.
        let _guard = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prefix = join(id.as_bytes(), b"");
        let mut timer_idents = Vec::new();
        for key in self.timer_index.scan_prefix(&prefix).keys() {
            timer_idents.push(key?);
        }
        let (deleted, removed_timers) = (
            &self.sagas,
            &self.saga_inputs,
            &self.saga_steps,
            &self.idempotency,
            &self.by_state,
            &self.by_name,
            &self.timers,
            &self.timer_index,
            &self.finished,
        )
            .transaction(
                |(
                    sagas,
                    inputs,
                    steps,
                    idempotency,
                    by_state,
                    by_name,
                    timers,
                    timer_index,
                    finished,
                )| {
                    let Some(bytes) = sagas.remove(id.as_bytes())? else {
                        return Ok((None, 0));
                    };
                    let abort = ConflictableTransactionError::Abort;
                    let mut saga = decode_saga_row(id.as_bytes(), &bytes).map_err(abort)?;
                    // Its input and step rows (a saga in parts; a one-row
                    // saga has none, unless a writer's prior was wrong):
                    // removed either way, read only for a saga in parts.
                    let input = inputs.remove(id.as_bytes())?;
                    let rows = take_step_rows(steps, id.as_bytes())?;
                    if !is_one_row(&bytes) {
                        if let Some(input) = input {
                            saga.input =
                                decode("saga_inputs", id.as_bytes(), &input).map_err(abort)?;
                        }
                        if !rows.is_empty() {
                            saga.steps = rows
                                .iter()
                                .map(|(key, row)| decode("saga_steps", key, row))
                                .collect::<Result<_, _>>()
                                .map_err(abort)?;
                        }
                    }
                    by_state.remove(join(saga.status.name().as_bytes(), id.as_bytes()))?;
                    by_name.remove(join(saga.name.as_bytes(), id.as_bytes()))?;
                    if let Some(key) = finished_key(&saga) {
                        finished.remove(key)?;
                    }
                    if let Some(key) = &saga.idempotency_key {
                        // Only the binding to this saga: never another saga's.
                        if idempotency.get(key.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                            idempotency.remove(key.as_bytes())?;
                        }
                    }
                    let mut removed = 0usize;
                    for ident in &timer_idents {
                        if let Some(due) = timer_index.remove(ident)? {
                            let due = u64_of("timer_index", ident, &due)
                                .map_err(ConflictableTransactionError::Abort)?;
                            if timers.remove(timer_key(due, ident))?.is_some() {
                                removed += 1;
                            }
                        }
                    }
                    Ok((Some(saga), removed))
                },
            )
            .map_err(tx_error)?;
        self.timer_rows.fetch_sub(removed_timers, Ordering::Relaxed);
        if deleted.is_some() {
            self.saga_rows.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;

    #[test]
    fn delete_removes_the_saga_its_indexes_timers_and_key_binding_together() {
        let store = SledStore::temporary().unwrap();
        let mut doomed = saga("0001", "order", SagaStatus::Completed);
        doomed.idempotency_key = Some("order-42".into());
        let mut other = saga("0002", "order", SagaStatus::Completed);
        other.idempotency_key = Some("order-43".into());
        for s in [&doomed, &other] {
            store
                .commit(Change {
                    saga: Some(s.clone().into()),
                    idempotency_key: s.idempotency_key.clone(),
                    outbox: vec![msg(1)],
                    timers_add: vec![
                        timer(&s.id, TimerKind::SagaTimeout, 500),
                        timer(&s.id, step_timeout(0, 1), 100),
                    ],
                    timers_remove: vec![],
                    ..Default::default()
                })
                .unwrap();
        }
        // A saga whose id extends the doomed one's: its timers must stay.
        store
            .commit(Change {
                timers_add: vec![timer("00011", TimerKind::SagaTimeout, 50)],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 5);

        assert_eq!(store.delete_saga("0001").unwrap(), Some(doomed.clone()));
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(store.saga_by_idempotency_key("order-42").unwrap(), None);
        assert_eq!(
            store
                .saga_by_idempotency_key("order-43")
                .unwrap()
                .as_deref(),
            Some("0002")
        );
        let all = store.list_sagas(&SagaFilter::default()).unwrap();
        assert_eq!(ids(&all), vec!["0002"]);
        let completed = SagaFilter {
            state: Some("completed".into()),
            ..SagaFilter::default()
        };
        assert_eq!(ids(&store.list_sagas(&completed).unwrap()), vec!["0002"]);
        let by_name = SagaFilter {
            name: Some("order".into()),
            ..SagaFilter::default()
        };
        assert_eq!(ids(&store.list_sagas(&by_name).unwrap()), vec!["0002"]);
        assert_eq!(store.by_state.len(), 1);
        assert_eq!(store.by_name.len(), 1);
        let timers = store.due_timers(u64::MAX, usize::MAX).unwrap();
        assert!(timers.iter().all(|t| t.saga_id != "0001"), "{timers:?}");
        assert_eq!(timers.len(), 3);
        assert_eq!(store.timers_len(), 3);
        assert_eq!(store.timer_index.len(), 3);
        // The outbox is the relay's: left alone.
        assert_eq!(store.outbox_len(), 2);

        // Deleting again, or an unknown id, changes nothing.
        assert_eq!(store.delete_saga("0001").unwrap(), None);
        assert_eq!(store.delete_saga("nope").unwrap(), None);
        assert_eq!(store.timers_len(), 3);

        // The freed key binds to a new saga.
        let mut reborn = saga("0003", "order", SagaStatus::Pending);
        reborn.idempotency_key = Some("order-42".into());
        store
            .commit(Change {
                saga: Some(reborn.into()),
                idempotency_key: Some("order-42".into()),
                ..Change::default()
            })
            .unwrap();
        assert_eq!(
            store
                .saga_by_idempotency_key("order-42")
                .unwrap()
                .as_deref(),
            Some("0003")
        );
    }

    #[test]
    fn delete_leaves_a_key_bound_to_another_saga_alone_and_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            // The saga names a key that is bound to another saga.
            let mut s = saga("0001", "order", SagaStatus::Failed { reason: "x".into() });
            s.idempotency_key = Some("shared".into());
            put(&store, s);
            let mut owner = saga("0002", "order", SagaStatus::Completed);
            owner.idempotency_key = Some("shared".into());
            store
                .commit(Change {
                    saga: Some(owner.into()),
                    idempotency_key: Some("shared".into()),
                    ..Change::default()
                })
                .unwrap();
            assert!(store.delete_saga("0001").unwrap().is_some());
            assert_eq!(
                store.saga_by_idempotency_key("shared").unwrap().as_deref(),
                Some("0002")
            );
            futures::executor::block_on(store.flush()).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(
            ids(&store.list_sagas(&SagaFilter::default()).unwrap()),
            vec!["0002"]
        );
    }

    #[test]
    fn a_failed_delete_changes_nothing() {
        let store = SledStore::temporary().unwrap();
        let mut s = saga("0001", "order", SagaStatus::Completed);
        s.idempotency_key = Some("k".into());
        store
            .commit(Change {
                saga: Some(s.into()),
                idempotency_key: Some("k".into()),
                timers_add: vec![timer("0001", TimerKind::SagaTimeout, 1)],
                ..Change::default()
            })
            .unwrap();
        store.sagas.insert("0001", &b"{not json"[..]).unwrap();
        let err = store.delete_saga("0001").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(
            store.sagas.get("0001").unwrap().as_deref(),
            Some(&b"{not json"[..])
        );
        assert_eq!(
            store.saga_by_idempotency_key("k").unwrap().as_deref(),
            Some("0001")
        );
        assert_eq!(store.timers_len(), 1);
        assert_eq!(store.by_state.len(), 1);
    }
}
