//! [`SagaTable`] on sled.

use super::SledStore;
use super::codec::{
    decode, decode_header, decode_saga_row, is_one_row, join, printable, step_key, tx_error,
};
use crate::{DEFAULT_LIST_LIMIT, SagaFilter, SagaTable, StoreError};
use jetsaga_core::saga::state::{Millis, Saga};
use sled::{IVec, Transactional};
use std::sync::atomic::Ordering;

/// How a listing reads each saga it lists: whole, or its header.
type Load<'a> = dyn Fn(&[u8]) -> Result<Option<Saga>, StoreError> + 'a;

/// States a saga can still leave: what [`crate::SagaTable::unfinished_sagas`] returns.
const UNFINISHED_STATES: [&str; 3] = ["pending", "running", "compensating"];
impl SagaTable for SledStore {
    fn saga(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        self.saga_by_key(id.as_bytes())
    }
    fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<Saga>, StoreError> {
        self.list_with(filter, &|id| self.saga_by_key(id))
    }

    fn saga_header(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        self.header_by_key(id.as_bytes())
    }

    fn list_saga_headers(&self, filter: &SagaFilter) -> Result<Vec<Saga>, StoreError> {
        self.list_with(filter, &|id| self.header_by_key(id))
    }

    fn unfinished_sagas(&self) -> Result<Vec<Saga>, StoreError> {
        let mut ids = Vec::new();
        for state in UNFINISHED_STATES {
            let prefix = join(state.as_bytes(), b"");
            for key in self.by_state.scan_prefix(&prefix).keys() {
                let key = key?;
                ids.push(key.subslice(prefix.len(), key.len() - prefix.len()));
            }
        }
        ids.sort();
        ids.dedup();
        self.load_sagas(ids.into_iter().map(Ok), |_| true, usize::MAX, &|id| {
            self.saga_by_key(id)
        })
    }
    fn finished_before(&self, before: Millis, limit: usize) -> Result<Vec<String>, StoreError> {
        // Every key finished at or before `before` sorts before (before + 1) ‖ ….
        let iter = match before.checked_add(1) {
            Some(end) => self.finished.range(..end.to_be_bytes()),
            None => self.finished.iter(),
        };
        let mut out = Vec::new();
        for key in iter.keys().take(limit) {
            let key = key?;
            let id = key.get(8..).unwrap_or_default();
            match std::str::from_utf8(id) {
                Ok(id) => out.push(id.to_owned()),
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        key: printable("finished", &key),
                        source: serde::de::Error::custom(e),
                    });
                }
            }
        }
        Ok(out)
    }

    fn sagas_len(&self) -> usize {
        self.saga_rows.load(Ordering::Relaxed)
    }
}

impl SledStore {
    /// Sagas matching `filter`, newest first, each read with `load`.
    fn list_with(&self, filter: &SagaFilter, load: &Load<'_>) -> Result<Vec<Saga>, StoreError> {
        let limit = if filter.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            filter.limit
        };
        let before = filter.before.as_deref().map(str::as_bytes);
        let index = match (&filter.state, &filter.name) {
            (Some(state), _) => Some((&self.by_state, state.as_bytes())),
            (None, Some(name)) => Some((&self.by_name, name.as_bytes())),
            (None, None) => None,
        };
        let keep = |s: &Saga| {
            filter
                .state
                .as_deref()
                .is_none_or(|st| s.status.name() == st)
                && filter.name.as_deref().is_none_or(|n| s.name == n)
        };
        match index {
            Some((tree, value)) => {
                let prefix = join(value, b"");
                let skip = prefix.len();
                let iter = match before {
                    Some(before) => tree.range(prefix.clone()..join(value, before)),
                    None => tree.scan_prefix(&prefix),
                };
                let ids = iter.keys().rev().map(|k| {
                    k.map(|k| k.subslice(skip, k.len() - skip))
                        .map_err(StoreError::Io)
                });
                self.load_sagas(ids, keep, limit, load)
            }
            None => {
                let iter = match before {
                    Some(before) => self.sagas.range::<&[u8], _>(..before),
                    None => self.sagas.iter(),
                };
                let ids = iter.keys().rev().map(|k| k.map_err(StoreError::Io));
                self.load_sagas(ids, |_| true, limit, load)
            }
        }
    }

    /// Loads the sagas of `ids` with `load`, in that order, keeping those
    /// that pass `keep`, up to `limit`.
    fn load_sagas(
        &self,
        ids: impl Iterator<Item = Result<IVec, StoreError>>,
        keep: impl Fn(&Saga) -> bool,
        limit: usize,
        load: &Load<'_>,
    ) -> Result<Vec<Saga>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= limit {
                break;
            }
            let id = id?;
            // Indexes are written in the same transaction as the record, so a
            // missing record cannot happen; skipping is the safe reading.
            let Some(saga) = load(&id)? else {
                continue;
            };
            if keep(&saga) {
                out.push(saga);
            }
        }
        Ok(out)
    }

    /// Saga `id`'s header (steps empty, input null): one read.
    pub(super) fn header_by_key(&self, id: &[u8]) -> Result<Option<Saga>, StoreError> {
        match self.sagas.get(id)? {
            Some(row) => decode_header(id, &row).map(Some),
            None => Ok(None),
        }
    }

    /// Saga `id`: one read of a saga stored in one row; the parts of one
    /// stored in parts (header, input, steps) read in one transaction, so
    /// never a header of one commit with steps of another. Decoding
    /// happens after it.
    pub(super) fn saga_by_key(&self, id: &[u8]) -> Result<Option<Saga>, StoreError> {
        let Some(row) = self.sagas.get(id)? else {
            return Ok(None);
        };
        if is_one_row(&row) {
            return decode_saga_row(id, &row).map(Some);
        }
        let parts = (&self.sagas, &self.saga_inputs, &self.saga_steps)
            .transaction(|(sagas, inputs, steps)| {
                // Read again: a commit may have come in between.
                let Some(header) = sagas.get(id)? else {
                    return Ok(None);
                };
                if is_one_row(&header) {
                    return Ok(Some((header, None, Vec::new())));
                }
                let input = inputs.get(id)?;
                let mut rows = Vec::new();
                // Steps are numbered from 0 without gaps (a saga is first
                // written whole), so the first missing index is the end.
                while let Some(row) = steps.get(step_key(id, rows.len() as u32))? {
                    rows.push(row);
                }
                Ok(Some((header, input, rows)))
            })
            .map_err(tx_error)?;
        let Some((header, input, rows)) = parts else {
            return Ok(None);
        };
        let mut saga = decode_saga_row(id, &header)?;
        if let Some(input) = input {
            saga.input = decode("saga_inputs", id, &input)?;
        }
        if !rows.is_empty() {
            saga.steps = rows
                .iter()
                .enumerate()
                .map(|(i, row)| decode("saga_steps", &step_key(id, i as u32), row))
                .collect::<Result<_, _>>()?;
        }
        Ok(Some(saga))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;
    use crate::{GroupCommit, Prior, SagaWrite};

    #[test]
    fn state_index_follows_status_changes() {
        let store = SledStore::temporary().unwrap();
        let by_state = |state: &str| {
            let filter = SagaFilter {
                state: Some(state.into()),
                ..SagaFilter::default()
            };
            store
                .list_sagas(&filter)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
        };
        put(&store, saga("0001", "order", SagaStatus::Pending));
        put(&store, saga("0002", "order", SagaStatus::Pending));
        assert_eq!(by_state("pending"), vec!["0002", "0001"]);

        put(&store, saga("0001", "order", running()));
        assert_eq!(by_state("pending"), vec!["0002"]);
        assert_eq!(by_state("running"), vec!["0001"]);

        put(
            &store,
            saga(
                "0001",
                "order",
                SagaStatus::Compensating {
                    reason: "boom".into(),
                },
            ),
        );
        put(
            &store,
            saga(
                "0001",
                "order",
                SagaStatus::PartiallyCompensated {
                    reason: "boom".into(),
                    stuck_steps: vec!["reserve".into()],
                },
            ),
        );
        assert!(by_state("running").is_empty());
        assert!(by_state("compensating").is_empty());
        assert_eq!(by_state("partially_compensated"), vec!["0001"]);
        assert_eq!(store.by_state.len(), 2, "one index entry per saga");
        assert_eq!(store.by_name.len(), 2);
        assert_eq!(ids(&store.unfinished_sagas().unwrap()), vec!["0002"]);
    }

    #[test]
    fn unfinished_states_are_the_non_terminal_ones() {
        let all = [
            SagaStatus::Pending,
            SagaStatus::Running,
            SagaStatus::Compensating { reason: "r".into() },
            SagaStatus::Completed,
            SagaStatus::Compensated { reason: "r".into() },
            SagaStatus::Failed { reason: "r".into() },
            SagaStatus::PartiallyCompensated {
                reason: "r".into(),
                stuck_steps: vec![],
            },
            SagaStatus::Cancelled { reason: "r".into() },
        ];
        let names: Vec<_> = all.iter().map(SagaStatus::name).collect();
        let every: Vec<_> = SagaState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, every, "a status is missing here");
        let unfinished: Vec<_> = all
            .iter()
            .filter(|s| !s.is_terminal())
            .map(SagaStatus::name)
            .collect();
        assert_eq!(unfinished, UNFINISHED_STATES);
    }

    #[test]
    fn unfinished_sagas_are_oldest_first() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0003", "order", SagaStatus::Pending));
        put(&store, saga("0001", "order", running()));
        put(&store, saga("0002", "order", SagaStatus::Completed));
        put(
            &store,
            saga(
                "0004",
                "ship",
                SagaStatus::Compensating { reason: "x".into() },
            ),
        );
        put(
            &store,
            saga("0005", "ship", SagaStatus::Cancelled { reason: "x".into() }),
        );
        assert_eq!(
            ids(&store.unfinished_sagas().unwrap()),
            vec!["0001", "0003", "0004"]
        );
    }

    #[test]
    fn list_sagas_filters_pages_and_orders_newest_first() {
        let store = SledStore::temporary().unwrap();
        for n in 0..120u32 {
            let name = if n % 2 == 0 { "order" } else { "ship" };
            let status = if n % 3 == 0 {
                SagaStatus::Completed
            } else {
                running()
            };
            put(&store, saga(&format!("{n:04}"), name, status));
        }
        let list = |f: SagaFilter| store.list_sagas(&f).unwrap();

        // No filter, default limit.
        let all = list(SagaFilter::default());
        assert_eq!(all.len(), DEFAULT_LIST_LIMIT);
        assert_eq!(all[0].id, "0119");
        assert_eq!(all[99].id, "0020");

        // Paging with `before` walks the rest without overlap.
        let page = list(SagaFilter {
            before: Some(all[99].id.clone()),
            limit: 50,
            ..SagaFilter::default()
        });
        assert_eq!(page.len(), 20);
        assert_eq!(page[0].id, "0019");
        assert_eq!(page[19].id, "0000");

        // By name.
        let ships = list(SagaFilter {
            name: Some("ship".into()),
            limit: 3,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&ships), vec!["0119", "0117", "0115"]);
        let ships = list(SagaFilter {
            name: Some("ship".into()),
            before: Some("0115".into()),
            limit: 2,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&ships), vec!["0113", "0111"]);

        // By state, and by state and name.
        let done = list(SagaFilter {
            state: Some("completed".into()),
            limit: 3,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&done), vec!["0117", "0114", "0111"]);
        let done_orders = list(SagaFilter {
            state: Some("completed".into()),
            name: Some("order".into()),
            limit: 3,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&done_orders), vec!["0114", "0108", "0102"]);
        let done_orders = list(SagaFilter {
            state: Some("completed".into()),
            name: Some("order".into()),
            before: Some("0102".into()),
            limit: 1,
        });
        assert_eq!(ids(&done_orders), vec!["0096"]);

        // Nothing matches.
        assert!(
            list(SagaFilter {
                state: Some("nope".into()),
                ..SagaFilter::default()
            })
            .is_empty()
        );
        assert!(
            list(SagaFilter {
                name: Some("ord".into()),
                ..SagaFilter::default()
            })
            .is_empty(),
            "a name is not a prefix match"
        );
        assert!(
            list(SagaFilter {
                before: Some("0000".into()),
                ..SagaFilter::default()
            })
            .is_empty()
        );
    }

    fn with_steps(id: &str, steps: usize) -> Saga {
        let mut s = saga(id, "order", running());
        s.steps = vec![jetsaga_core::saga::state::StepState::default(); steps];
        s
    }

    /// A saga too large for one row: stored in parts.
    fn large(id: &str, steps: usize) -> Saga {
        let mut s = with_steps(id, steps);
        s.input = serde_json::json!({ "blob": "x".repeat(crate::ONE_ROW_MAX) });
        s
    }

    #[test]
    fn a_transition_writes_the_header_and_its_steps_only() {
        let store = SledStore::temporary().unwrap();
        let mut s = large("0001", 3);
        put(&store, s.clone());
        let stored_step = |i: u32| store.saga_steps.get(step_key(b"0001", i)).unwrap().unwrap();
        let untouched = stored_step(0);

        s.steps[1].output = Some(serde_json::json!({ "paid": true }));
        s.steps[2].output = Some(serde_json::json!({ "shipped": true }));
        s.updated_at = 2_000;
        let mut write = crate::SagaWrite::of_steps(&s, &[1]);
        store
            .commit(Change {
                saga: Some(write.clone()),
                prior: crate::Prior::of(&s),
                ..Change::default()
            })
            .unwrap();
        // Step 2 changed in memory but was not written; the input stays.
        let read = store.saga("0001").unwrap().unwrap();
        assert_eq!(read.steps[1], s.steps[1]);
        assert_eq!(read.steps[2].output, None);
        assert_eq!(read.input, s.input);
        assert_eq!(read.updated_at, 2_000);
        assert_eq!(stored_step(0), untouched);

        // A header with an input or steps of its own does not replace them.
        if let crate::SagaWrite::Steps { header, .. } = &mut write {
            header.input = serde_json::json!("not the input");
        }
        store
            .commit(Change {
                saga: Some(write),
                prior: crate::Prior::of(&s),
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.saga("0001").unwrap().unwrap().input, s.input);
    }

    #[test]
    fn a_small_saga_is_one_row_until_it_outgrows_it_and_one_row_again_when_it_fits() {
        let store = SledStore::temporary().unwrap();
        let mut s = with_steps("0001", 3);
        put(&store, s.clone());
        let one_row = || is_one_row(&store.sagas.get("0001").unwrap().unwrap());
        assert!(one_row());
        assert_eq!((store.saga_steps.len(), store.saga_inputs.len()), (0, 0));
        assert_eq!(store.saga("0001").unwrap().as_ref(), Some(&s));

        // A step's output outgrows the row: the writer sends that step only,
        // and the store puts the stored saga and the step together in parts.
        let before = Prior::of(&s);
        s.steps[1].output = Some(serde_json::json!("y".repeat(crate::ONE_ROW_MAX)));
        s.updated_at = 2_000;
        let write = SagaWrite::of_transition(&s, &[1]);
        assert!(matches!(write, SagaWrite::Steps { .. }));
        store
            .commit(Change {
                saga: Some(write),
                prior: before,
                ..Change::default()
            })
            .unwrap();
        assert!(!one_row());
        assert_eq!((store.saga_steps.len(), store.saga_inputs.len()), (3, 1));
        assert_eq!(store.saga("0001").unwrap().as_ref(), Some(&s));

        // Small again (a retry cleared the output): one row, parts removed.
        let before = Prior::of(&s);
        s.steps[1].output = None;
        let write = SagaWrite::of_transition(&s, &[1]);
        assert!(matches!(write, SagaWrite::Whole(_)));
        store
            .commit(Change {
                saga: Some(write),
                prior: before,
                ..Change::default()
            })
            .unwrap();
        assert!(one_row());
        assert_eq!((store.saga_steps.len(), store.saga_inputs.len()), (0, 0));
        assert_eq!(store.saga("0001").unwrap(), Some(s.clone()));
        assert_eq!(
            store.saga_header("0001").unwrap(),
            Some(crate::header_of(&s))
        );
    }

    #[test]
    fn a_one_row_saga_is_its_json_and_a_fixed_overhead_and_fits_up_to_the_limit() {
        let mut s = with_steps("0001", 2);
        let header = serde_json::to_vec(&crate::header_of(&s)).unwrap();
        let row = crate::sled_store::codec::encode_one_row_within(b"0001", &header, &s, usize::MAX)
            .unwrap()
            .unwrap();
        let json = serde_json::to_vec(&s).unwrap().len();
        assert_eq!(row.len(), json + crate::commit::ONE_ROW_OVERHEAD);
        // Grow the input to the last size that fits, then one byte more.
        let base = json + crate::commit::ONE_ROW_OVERHEAD;
        s.input = serde_json::json!({ "pad": "" });
        let padded = serde_json::to_vec(&s).unwrap().len() + crate::commit::ONE_ROW_OVERHEAD;
        s.input = serde_json::json!({ "pad": "x".repeat(crate::ONE_ROW_MAX - padded) });
        let encoded = serde_json::to_vec(&s).unwrap().len() + crate::commit::ONE_ROW_OVERHEAD;
        assert_eq!(encoded, crate::ONE_ROW_MAX, "from {base}");
        assert!(crate::fits_one_row(&s));
        let header = serde_json::to_vec(&crate::header_of(&s)).unwrap();
        let row = crate::sled_store::codec::encode_one_row_within(b"0001", &header, &s, usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(row.len(), crate::ONE_ROW_MAX);
        // The store decides as `fits_one_row` does.
        let store = SledStore::temporary().unwrap();
        put(&store, s.clone());
        assert!(is_one_row(&store.sagas.get("0001").unwrap().unwrap()));
        s.input = serde_json::json!({ "pad": "x".repeat(crate::ONE_ROW_MAX - padded + 1) });
        assert!(!crate::fits_one_row(&s));
        put(&store, s.clone());
        assert!(!is_one_row(&store.sagas.get("0001").unwrap().unwrap()));
        assert_eq!(store.saga("0001").unwrap().as_ref(), Some(&s));
        // An input far past the limit, an output and an error likewise.
        s.input = serde_json::json!(["y".repeat(1 << 20)]);
        assert!(!crate::fits_one_row(&s));
        s.input = serde_json::Value::Null;
        s.steps[0].output = Some(serde_json::json!({ "big": vec![1; crate::ONE_ROW_MAX] }));
        assert!(!crate::fits_one_row(&s));
        s.steps[0].output = None;
        s.steps[1]
            .attempts
            .push(jetsaga_core::saga::state::Attempt {
                kind: jetsaga_protocol::TaskKind::Action,
                number: 1,
                generation: 0,
                started_at: 1,
                finished_at: Some(2),
                outcome: Some(jetsaga_core::saga::state::AttemptOutcome::Fatal {
                    error: "e".repeat(crate::ONE_ROW_MAX),
                }),
            });
        assert!(!crate::fits_one_row(&s));
    }

    #[test]
    fn a_damaged_row_is_named_in_either_form() {
        let store = SledStore::temporary().unwrap();
        let named = |id: &str, key: &str| match store.saga(id) {
            Err(StoreError::Corrupt { key: named, .. }) => assert_eq!(named, key),
            other => panic!("expected {key} named as corrupt, got {other:?}"),
        };
        // One row: a cut frame, a header past its end, a broken header, and
        // a valid header followed by a broken body.
        let header = serde_json::to_vec(&crate::header_of(&with_steps("0001", 1))).unwrap();
        let mut broken_body = vec![0x01];
        broken_body.extend_from_slice(&(header.len() as u32).to_be_bytes());
        broken_body.extend_from_slice(&header);
        broken_body.extend_from_slice(b"{\"input\":null,\"steps\":[");
        for row in [
            &[0x01, 0, 0][..],
            &[0x01, 0, 0, 0, 9, b'{'][..],
            &[0x01, 0, 0, 0, 2, b'{', b'}', b'['][..],
            &broken_body[..],
        ] {
            store.sagas.insert("0001", row).unwrap();
            named("0001", "sagas/0001");
        }
        // In parts: a broken step row.
        put(&store, large("0002", 2));
        store
            .saga_steps
            .insert(step_key(b"0002", 1), &b"{not json"[..])
            .unwrap();
        named("0002", "saga_steps/0002/1");
    }

    #[test]
    fn one_transaction_takes_a_saga_out_of_one_row_and_back() {
        let store = SledStore::temporary().unwrap();
        let small = with_steps("0001", 2);
        put(&store, small.clone());
        let mut grown = small.clone();
        grown.steps[0].output = Some(serde_json::json!("z".repeat(crate::ONE_ROW_MAX)));
        let mut shrunk = grown.clone();
        shrunk.steps[0].output = None;
        shrunk.updated_at = 3_000;
        store
            .commit_many(&[
                Change {
                    saga: Some(SagaWrite::of_transition(&grown, &[0])),
                    prior: Prior::Unknown,
                    ..Change::default()
                },
                Change {
                    saga: Some(SagaWrite::of_transition(&shrunk, &[0])),
                    prior: Prior::Unknown,
                    ..Change::default()
                },
            ])
            .unwrap();
        assert!(is_one_row(&store.sagas.get("0001").unwrap().unwrap()));
        assert_eq!((store.saga_steps.len(), store.saga_inputs.len()), (0, 0));
        assert_eq!(store.saga("0001").unwrap(), Some(shrunk));
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "prior Absent of a saga stored")]
    fn debug_builds_catch_an_absent_prior_of_a_stored_saga() {
        let store = SledStore::temporary().unwrap();
        let s = with_steps("0001", 2);
        put(&store, s.clone());
        let _ = store.commit(Change {
            saga: Some(s.into()),
            prior: Prior::Absent,
            ..Change::default()
        });
    }

    #[test]
    fn a_step_past_the_end_of_a_one_row_saga_is_refused() {
        let store = SledStore::temporary().unwrap();
        let s = with_steps("0001", 2);
        put(&store, s.clone());
        let mut header = crate::header_of(&s);
        header.updated_at = 2_000;
        let err = store
            .commit(Change {
                saga: Some(SagaWrite::Steps {
                    header,
                    steps: vec![(5, s.steps[0].clone())],
                }),
                prior: Prior::of(&s),
                ..Change::default()
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("step 5 of a saga with 2 steps"),
            "{err}"
        );
        assert_eq!(store.saga("0001").unwrap(), Some(s));
    }

    #[test]
    fn deleting_a_saga_removes_its_parts_and_returns_it_whole() {
        let store = SledStore::temporary().unwrap();
        let mut s = large("0001", 2);
        s.status = SagaStatus::Completed;
        s.finished_at = Some(2_000);
        let mut small = with_steps("0003", 2);
        small.status = SagaStatus::Completed;
        small.finished_at = Some(2_000);
        put(&store, s.clone());
        put(&store, large("0002", 2));
        put(&store, small.clone());
        assert_eq!(store.delete_saga("0001").unwrap(), Some(s));
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(store.saga_steps.len(), 2, "the other saga's steps stay");
        assert_eq!(store.saga_inputs.len(), 1);
        assert_eq!(store.delete_saga("0003").unwrap(), Some(small));
        assert_eq!(store.saga("0003").unwrap(), None);
        assert_eq!(store.saga_steps.len(), 2);
    }

    #[test]
    fn some_steps_of_a_saga_the_store_does_not_hold_are_refused() {
        let store = SledStore::temporary().unwrap();
        let s = with_steps("0001", 2);
        let stored = crate::Prior::Stored {
            state: "running",
            finished: None,
        };
        for prior in [crate::Prior::Unknown, crate::Prior::Absent, stored] {
            let err = store
                .commit(Change {
                    saga: Some(crate::SagaWrite::of_steps(&s, &[1])),
                    prior,
                    ..Change::default()
                })
                .unwrap_err();
            assert!(err.to_string().contains("does not hold"), "{err}");
        }
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(store.saga_steps.len(), 0);
    }

    #[test]
    fn headers_are_read_without_steps_or_input() {
        let store = SledStore::temporary().unwrap();
        put(&store, large("0001", 3));
        put(&store, with_steps("0002", 2));
        let header = store.saga_header("0001").unwrap().unwrap();
        assert!(header.steps.is_empty() && header.input.is_null());
        assert_eq!(header.status, running());
        assert_eq!(store.saga_header("0003").unwrap(), None);
        let filter = SagaFilter {
            state: Some("running".into()),
            ..SagaFilter::default()
        };
        let headers = store.list_saga_headers(&filter).unwrap();
        assert_eq!(ids(&headers), ids(&store.list_sagas(&filter).unwrap()));
        assert!(headers.iter().all(|h| h.steps.is_empty()));
    }
}
