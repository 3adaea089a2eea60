//! Pruning: deleting finished sagas past their retention, with everything
//! they own (steps, timers, outbox rows, idempotency key, index entries).

use crate::{GroupCommit, SagaTable, StoreError};
use jetsaga_core::saga::state::{Millis, Saga};

/// Deletes up to `limit` terminal sagas that finished at or before `before`,
/// earliest finished first, each in its own transaction (not yet durable:
/// the caller flushes). Returns the deleted sagas.
///
/// Only for the partition, the single writer. A saga the index names that
/// is no longer terminal is left alone (it cannot happen: the index follows
/// every transition in the same transaction).
pub fn prune<S: SagaTable + GroupCommit + ?Sized>(
    store: &S,
    before: Millis,
    limit: usize,
) -> Result<Vec<Saga>, StoreError> {
    let mut pruned = Vec::new();
    for id in store.finished_before(before, limit)? {
        match store.saga_header(&id)? {
            Some(saga) if saga.status.is_terminal() => {}
            _ => continue,
        }
        if let Some(saga) = store.delete_saga(&id)? {
            tracing::debug!(saga_id = %saga.id, saga = %saga.name, state = saga.status.name(), "saga pruned");
            pruned.push(saga);
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, IdempotencyTable, SagaFilter, SledStore, TimerRow, TimerTable};
    use jetsaga_core::saga::state::{SagaStatus, TimerKind};
    use std::time::Duration;

    fn saga(id: &str, status: SagaStatus, finished_at: Option<Millis>) -> Saga {
        Saga {
            id: id.to_owned(),
            name: "order".to_owned(),
            definition_version: 1,
            input: serde_json::json!({ "order": id }),
            idempotency_key: Some(format!("key-{id}")),
            generation: 0,
            status,
            steps: vec![],
            created_at: 1_000,
            updated_at: finished_at.unwrap_or(1_000),
            finished_at,
            trace_parent: None,
            event_seq: 0,
        }
    }

    fn put(store: &SledStore, s: Saga, timers: Vec<TimerRow>) {
        let key = s.idempotency_key.clone();
        store
            .commit(Change {
                saga: Some(s.into()),
                idempotency_key: key,
                timers_add: timers,
                ..Change::default()
            })
            .unwrap();
    }

    fn completed(id: &str, at: Millis) -> Saga {
        saga(id, SagaStatus::Completed, Some(at))
    }

    fn ids(sagas: &[Saga]) -> Vec<&str> {
        sagas.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn the_finish_index_is_written_with_the_terminal_transition_and_follows_it() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0001", SagaStatus::Running, None), vec![]);
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            Vec::<String>::new()
        );

        put(&store, completed("0001", 5_000), vec![]);
        assert_eq!(store.finished_before(5_000, 10).unwrap(), vec!["0001"]);
        assert_eq!(
            store.finished_before(4_999, 10).unwrap(),
            Vec::<String>::new()
        );

        // A retry takes it out of the terminal state, and out of the index.
        put(&store, saga("0001", SagaStatus::Running, None), vec![]);
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            Vec::<String>::new()
        );
        // Finishing again indexes the new finish time only.
        put(
            &store,
            saga(
                "0001",
                SagaStatus::Failed { reason: "x".into() },
                Some(9_000),
            ),
            vec![],
        );
        assert_eq!(
            store.finished_before(8_999, 10).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(store.finished_before(9_000, 10).unwrap(), vec!["0001"]);
        assert_eq!(store.sagas_len(), 1);
    }

    #[test]
    fn prune_removes_old_finished_sagas_with_everything_they_own() {
        let store = SledStore::temporary().unwrap();
        let timer = |id: &str| TimerRow {
            saga_id: id.to_owned(),
            timer: TimerKind::SagaTimeout,
            due: 99_000,
        };
        // Old and finished, with a leftover timer: pruned.
        put(&store, completed("0001", 1_000), vec![timer("0001")]);
        put(
            &store,
            saga(
                "0002",
                SagaStatus::Cancelled { reason: "x".into() },
                Some(2_000),
            ),
            vec![],
        );
        // Unfinished (however old): kept.
        put(
            &store,
            saga("0003", SagaStatus::Running, None),
            vec![timer("0003")],
        );
        // Finished, but young: kept.
        put(&store, completed("0004", 8_000), vec![]);
        assert_eq!(store.sagas_len(), 4);
        assert_eq!(store.timers_len(), 2);

        let pruned = prune(&store, 5_000, 10).unwrap();
        assert_eq!(ids(&pruned), vec!["0001", "0002"]);
        for id in ["0001", "0002"] {
            assert_eq!(store.saga(id).unwrap(), None, "{id}");
            assert_eq!(
                store.saga_by_idempotency_key(&format!("key-{id}")).unwrap(),
                None,
                "the key of {id} is free"
            );
        }
        assert_eq!(store.timers_len(), 1);
        assert_eq!(store.next_timer().unwrap(), Some(timer("0003")));
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            vec!["0004"]
        );
        let all = store.list_sagas(&SagaFilter::default()).unwrap();
        assert_eq!(ids(&all), vec!["0004", "0003"]);
        let completed_ones = SagaFilter {
            state: Some("completed".into()),
            ..SagaFilter::default()
        };
        assert_eq!(
            ids(&store.list_sagas(&completed_ones).unwrap()),
            vec!["0004"]
        );
        assert_eq!(
            store
                .saga_by_idempotency_key("key-0003")
                .unwrap()
                .as_deref(),
            Some("0003")
        );
        assert_eq!(store.sagas_len(), 2);
        // Nothing more is old enough.
        assert!(prune(&store, 5_000, 10).unwrap().is_empty());
    }

    #[test]
    fn prune_batches_are_bounded_and_go_oldest_first() {
        let store = SledStore::temporary().unwrap();
        // Created in one order, finished in another.
        for (i, at) in [(1, 3_000), (2, 1_000), (3, 2_000), (4, 5_000), (5, 4_000)] {
            put(&store, completed(&format!("000{i}"), at), vec![]);
        }
        assert_eq!(
            ids(&prune(&store, 10_000, 2).unwrap()),
            vec!["0002", "0003"]
        );
        assert_eq!(
            ids(&prune(&store, 10_000, 2).unwrap()),
            vec!["0001", "0005"]
        );
        assert_eq!(ids(&prune(&store, 10_000, 2).unwrap()), vec!["0004"]);
        assert!(prune(&store, 10_000, 2).unwrap().is_empty());
        assert_eq!(store.sagas_len(), 0);
    }

    #[test]
    fn the_finish_index_is_backfilled_once_for_older_stores() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            put(&store, completed("0001", 1_000), vec![]);
            put(&store, saga("0002", SagaStatus::Running, None), vec![]);
            futures::executor::block_on(store.flush()).unwrap();
        }
        // Make it look like a store written before the index existed.
        {
            // sled releases the directory's lock a moment after the drop.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let db = loop {
                match sled::open(dir.path()) {
                    Ok(db) => break db,
                    Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            db.drop_tree("finished").unwrap();
            db.remove("jetsaga.store.finished_index").unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            vec!["0001"]
        );
        assert_eq!(store.sagas_len(), 2);
        assert_eq!(ids(&prune(&store, 1_000, 10).unwrap()), vec!["0001"]);
    }
}
