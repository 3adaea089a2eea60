//! [`GroupCommit`] on sled: a batch of changes in one transaction over the
//! trees it writes (with the journal position, for
//! [`crate::JournalTable`]), and the flush that makes it durable.

use super::SledStore;
#[cfg(debug_assertions)]
use super::change::check_prior;
use super::change::{Encoded, OutboxRow, RowForm};
use super::codec::{
    decode_header, decode_saga_row, encode, finished_key, finished_key_at, held_key, is_one_row,
    join, printable, step_key, timer_key, tx_error, u64_of,
};
use super::journal::{JOURNAL_KEY, stored_position};
use super::outbox::encode_outbox;
use crate::{Change, GroupCommit, JournalPosition, Prior, SagaWrite, StoreError};
use futures::future::BoxFuture;
use jetsaga_core::saga::state::Saga;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::sync::atomic::Ordering;

/// Refuses a record of some steps of a saga the store does not hold: it
/// would be stored without its other steps and its input.
fn partial_of_absent(
    saga: &super::change::SagaRow,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    if !matches!(saga.form, RowForm::Steps { .. }) {
        return Ok(());
    }
    Err(refused(
        "sagas",
        &saga.id,
        "a change writes some steps of a saga the store does not hold (a new saga is written whole)"
            .to_owned(),
    ))
}

/// A change the store refuses: it does not fit what the store holds.
fn refused(tree: &str, key: &[u8], why: String) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(StoreError::Encode {
        key: printable(tree, key),
        source: serde::ser::Error::custom(why),
    })
}

/// The trees a saga is stored in: `sagas`, `saga_steps`, `saga_inputs`.
pub(super) type SagaTrees<'a> = (
    &'a TransactionalTree,
    &'a TransactionalTree,
    &'a TransactionalTree,
);

/// Writes saga form `form` (encoded from `write`) over `stored`, the saga's
/// `sagas` row before it. Moving between the forms:
/// - one row over parts: the parts' input and step rows are removed;
/// - some steps over one row (the writer sends some steps only of a saga
///   too large for one row): the stored saga is decoded and the header and
///   steps written put in it, and the saga is written whole (in parts, or
///   in one row if it fits after all, as when a writer of an earlier
///   version sent it). This decodes and encodes in the transaction's
///   closure, which sled may run more than once; it happens once per saga
///   that outgrows its row.
pub(super) fn put_saga(
    (sagas, saga_steps, saga_inputs): SagaTrees<'_>,
    form: &RowForm,
    write: &SagaWrite,
    stored: Option<&[u8]>,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let abort = ConflictableTransactionError::Abort;
    let id = write.id().as_bytes();
    match form {
        RowForm::OneRow(bytes) => {
            if stored.is_some_and(|s| !is_one_row(s)) {
                saga_inputs.remove(id)?;
                take_step_rows(saga_steps, id)?;
            }
            sagas.insert(id, bytes.as_slice())?;
        }
        RowForm::Steps { .. } if stored.is_some_and(is_one_row) => {
            let SagaWrite::Steps { header, steps } = write else {
                return Err(refused(
                    "sagas",
                    id,
                    "a change's encoded form does not match it".to_owned(),
                ));
            };
            let mut whole = decode_saga_row(id, stored.unwrap_or_default()).map_err(abort)?;
            let mut saga = header.clone();
            saga.input = std::mem::take(&mut whole.input);
            saga.steps = std::mem::take(&mut whole.steps);
            for (i, step) in steps {
                let Some(slot) = saga.steps.get_mut(*i as usize) else {
                    return Err(refused(
                        "saga_steps",
                        &step_key(id, *i),
                        format!(
                            "a change writes step {i} of a saga with {} steps",
                            saga.steps.len()
                        ),
                    ));
                };
                *slot = step.clone();
            }
            let whole = RowForm::of_whole(&saga).map_err(abort)?;
            put_saga((sagas, saga_steps, saga_inputs), &whole, write, stored)?;
        }
        RowForm::Parts {
            header,
            input,
            steps,
        } => {
            saga_inputs.insert(id, input.as_slice())?;
            for (key, value) in steps {
                saga_steps.insert(key.as_slice(), value.as_slice())?;
            }
            sagas.insert(id, header.as_slice())?;
        }
        RowForm::Steps { header, steps } => {
            for (key, value) in steps {
                saga_steps.insert(key.as_slice(), value.as_slice())?;
            }
            sagas.insert(id, header.as_slice())?;
        }
    }
    Ok(())
}

/// Removes saga `id`'s step rows and returns them in order (key, value).
/// Steps are numbered from 0 without gaps: the first missing one ends them.
pub(super) fn take_step_rows(
    saga_steps: &TransactionalTree,
    id: &[u8],
) -> Result<Vec<(Vec<u8>, sled::IVec)>, ConflictableTransactionError<StoreError>> {
    let mut rows = Vec::new();
    loop {
        let key = step_key(id, rows.len() as u32);
        let Some(row) = saga_steps.remove(key.as_slice())? else {
            return Ok(rows);
        };
        rows.push((key, row));
    }
}

impl SledStore {
    /// Writes `changes` in one transaction, and with them the journal
    /// `position` if given (checked to follow the stored one): the body of
    /// [`GroupCommit::commit_many`] and [`crate::JournalTable::commit_journaled`].
    pub(super) fn write_changes(
        &self,
        changes: &[Change],
        position: Option<JournalPosition>,
    ) -> Result<(), StoreError> {
        if changes.is_empty() && position.is_none() {
            return Ok(());
        }
        let position = position
            .map(|p| Ok::<_, StoreError>((p, encode("meta", JOURNAL_KEY, &p)?)))
            .transpose()?;
        // Encode everything first: the transaction closure may run more than
        // once and should only move bytes.
        let mut encoded = changes
            .iter()
            .map(Encoded::of)
            .collect::<Result<Vec<_>, StoreError>>()?;

        let _guard = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ids come before the transaction (it may be retried), in order, so
        // the batch's rows keep their order and later commits sort after.
        let mut last_seq = None;
        for (change, enc) in changes.iter().zip(&mut encoded) {
            enc.outbox.reserve(change.outbox.len());
            for msg in &change.outbox {
                let seq = self.db.generate_id()? + self.seq_offset;
                let key = seq.to_be_bytes();
                enc.outbox.push(OutboxRow {
                    value: encode_outbox(&key, msg)?,
                    key,
                });
                last_seq = Some(seq);
            }
        }

        let (timer_delta, new_sagas) = (
            &self.sagas,
            &self.saga_steps,
            &self.saga_inputs,
            &self.idempotency,
            &self.by_state,
            &self.by_name,
            &self.outbox,
            &self.timers,
            &self.timer_index,
            &self.finished,
            &self.queued,
            &self.admission,
            &self.meta,
        )
            .transaction(
                |(
                    sagas,
                    saga_steps,
                    saga_inputs,
                    idempotency,
                    by_state,
                    by_name,
                    outbox,
                    timers,
                    timer_index,
                    finished,
                    queued,
                    admission,
                    meta,
                )| {
                    if let Some((offered, bytes)) = &position {
                        let stored = stored_position(meta)?;
                        if stored.record.checked_add(1) != Some(offered.record) {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::JournalOrder {
                                    stored: stored.record,
                                    offered: offered.record,
                                },
                            ));
                        }
                        meta.insert(JOURNAL_KEY, bytes.as_slice())?;
                    }
                    let mut new_sagas = 0usize;
                    let mut delta: isize = 0;
                    for (change, enc) in changes.iter().zip(&encoded) {
                        if let (Some(saga), Some(write)) = (&enc.saga, &change.saga) {
                            let id = saga.id.as_slice();
                            // The stored row (this transaction's earlier
                            // writes included): its form decides how the
                            // parts are written, an Unknown prior's index
                            // entries come from it. A new saga has none
                            // (debug builds read it anyway, to check that).
                            let stored = match saga.prior {
                                Prior::Absent if !cfg!(debug_assertions) => None,
                                _ => sagas.get(id)?,
                            };
                            // Some steps of a saga the store does not hold
                            // (a store that diverged from its writer) are
                            // refused, not stored without the rest.
                            if stored.is_none() {
                                partial_of_absent(saga)?;
                            }
                            #[cfg(debug_assertions)]
                            check_prior(stored.as_deref(), id, &saga.prior)?;
                            match &saga.prior {
                                Prior::Unknown => {
                                    if let Some(prev) = &stored {
                                        let prev = decode_header(id, prev)
                                            .map_err(ConflictableTransactionError::Abort)?;
                                        by_state.remove(join(prev.status.name().as_bytes(), id))?;
                                        by_name.remove(join(prev.name.as_bytes(), id))?;
                                        if let Some(key) = finished_key(&prev) {
                                            finished.remove(key)?;
                                        }
                                    } else {
                                        new_sagas += 1;
                                    }
                                    by_state.insert(saga.state_key.as_slice(), &[])?;
                                    by_name.insert(saga.name_key.as_slice(), &[])?;
                                    if let Some(key) = &saga.finished_key {
                                        finished.insert(key.as_slice(), &[])?;
                                    }
                                }
                                Prior::Absent => {
                                    new_sagas += 1;
                                    by_state.insert(saga.state_key.as_slice(), &[])?;
                                    by_name.insert(saga.name_key.as_slice(), &[])?;
                                    if let Some(key) = &saga.finished_key {
                                        finished.insert(key.as_slice(), &[])?;
                                    }
                                }
                                Prior::Stored {
                                    state,
                                    finished: finished_at,
                                } => {
                                    // Same saga, same name: `by_name` stays.
                                    let old_state = join(state.as_bytes(), id);
                                    if old_state != saga.state_key {
                                        by_state.remove(old_state)?;
                                        by_state.insert(saga.state_key.as_slice(), &[])?;
                                    }
                                    let old_finished =
                                        finished_at.map(|at| finished_key_at(at, id));
                                    if old_finished != saga.finished_key {
                                        if let Some(key) = old_finished {
                                            finished.remove(key)?;
                                        }
                                        if let Some(key) = &saga.finished_key {
                                            finished.insert(key.as_slice(), &[])?;
                                        }
                                    }
                                }
                            }
                            put_saga(
                                (sagas, saga_steps, saga_inputs),
                                &saga.form,
                                write,
                                stored.as_deref(),
                            )?;
                            if let Some(key) = &saga.idempotency_key {
                                idempotency.insert(key.as_bytes(), id)?;
                            }
                        }
                        for row in &enc.outbox {
                            outbox.insert(&row.key, row.value.as_slice())?;
                        }
                        for ident in &enc.timer_removes {
                            if let Some(due) = timer_index.remove(ident.as_slice())? {
                                let due = u64_of("timer_index", ident, &due)
                                    .map_err(ConflictableTransactionError::Abort)?;
                                if timers.remove(timer_key(due, ident))?.is_some() {
                                    delta -= 1;
                                }
                            }
                        }
                        for add in &enc.timer_adds {
                            // Re-arming a timer moves it: drop the row at its old due time.
                            if let Some(old) =
                                timer_index.insert(add.ident.as_slice(), &add.due.to_be_bytes())?
                            {
                                let old = u64_of("timer_index", &add.ident, &old)
                                    .map_err(ConflictableTransactionError::Abort)?;
                                if timers.remove(timer_key(old, &add.ident))?.is_some() {
                                    delta -= 1;
                                }
                            }
                            if timers
                                .insert(timer_key(add.due, &add.ident), add.row.as_slice())?
                                .is_none()
                            {
                                delta += 1;
                            }
                        }
                        for (key, row) in &enc.queue_adds {
                            queued.insert(key, row.as_slice())?;
                        }
                        for seq in &enc.queue_removes {
                            queued.remove(&seq.to_be_bytes())?;
                        }
                        for (key, value) in &enc.held_adds {
                            admission.insert(key.as_slice(), value.as_slice())?;
                        }
                        for seq in &enc.held_removes {
                            admission.remove(held_key(*seq))?;
                        }
                        for (key, value) in &enc.breakers {
                            match value {
                                Some(value) => {
                                    admission.insert(key.as_slice(), value.as_slice())?
                                }
                                None => admission.remove(key.as_slice())?,
                            };
                        }
                    }
                    Ok((delta, new_sagas))
                },
            )
            .map_err(tx_error)?;
        self.saga_rows.fetch_add(new_sagas, Ordering::Relaxed);
        let rows: usize = encoded.iter().map(|e| e.outbox.len()).sum();
        self.outbox_rows.fetch_add(rows, Ordering::Relaxed);
        if timer_delta >= 0 {
            self.timer_rows
                .fetch_add(timer_delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.timer_rows
                .fetch_sub(timer_delta.unsigned_abs(), Ordering::Relaxed);
        }
        if let Some(seq) = last_seq {
            // Written (not yet durable): the next flush covers it.
            self.outbox_written.store(seq + 1, Ordering::Release);
        }
        Ok(())
    }
}

impl GroupCommit for SledStore {
    fn commit_many(&self, changes: &[Change]) -> Result<(), StoreError> {
        self.write_changes(changes, None)
    }

    fn delete_saga(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        self.delete(id)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Rows written before the flush starts are durable when it returns
        // (it syncs everything written by the time it runs, maybe more).
        let written = self.outbox_written.load(Ordering::Acquire);
        Box::pin(async move {
            self.db.flush_async().await?;
            self.outbox_durable.fetch_max(written, Ordering::AcqRel);
            Ok(())
        })
    }

    fn outbox_durable(&self) -> Option<u64> {
        self.outbox_durable.load(Ordering::Acquire).checked_sub(1)
    }

    fn outbox_written(&self) -> Option<u64> {
        self.outbox_written.load(Ordering::Acquire).checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;

    #[test]
    fn commit_writes_saga_index_outbox_and_timers_together() {
        let store = SledStore::temporary().unwrap();
        let mut s = saga("0001", "order", SagaStatus::Pending);
        s.idempotency_key = Some("req-1".into());
        store
            .commit(Change {
                saga: Some(s.clone().into()),
                idempotency_key: Some("req-1".into()),
                outbox: vec![msg(1), msg(2)],
                timers_add: vec![timer("0001", TimerKind::SagaTimeout, 5_000)],
                timers_remove: vec![("0001".into(), step_timeout(0, 1))],
                ..Default::default()
            })
            .unwrap();

        assert_eq!(store.saga("0001").unwrap(), Some(s.clone()));
        assert_eq!(store.saga("0002").unwrap(), None);
        assert_eq!(
            store.saga_by_idempotency_key("req-1").unwrap().as_deref(),
            Some("0001")
        );
        assert_eq!(store.saga_by_idempotency_key("req-2").unwrap(), None);
        let rows = store.outbox(u64::MAX, 10).unwrap();
        assert_eq!(
            rows.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
            vec![msg(1), msg(2)]
        );
        assert_eq!(store.outbox_len(), 2);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0001", TimerKind::SagaTimeout, 5_000))
        );
        assert_eq!(store.timers_len(), 1);
        let pending = SagaFilter {
            state: Some("pending".into()),
            ..SagaFilter::default()
        };
        assert_eq!(store.list_sagas(&pending).unwrap(), vec![s]);
        futures::executor::block_on(store.flush()).unwrap();
    }

    #[test]
    fn a_failed_commit_writes_nothing() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0001", "order", running()));
        // Damage the stored record: the commit must decode it to move the
        // state index, fails, and must leave no outbox row or timer behind.
        store.sagas.insert("0001", &b"{not json"[..]).unwrap();
        let err = store
            .commit(Change {
                saga: Some(saga("0001", "order", SagaStatus::Completed).into()),
                idempotency_key: Some("k".into()),
                outbox: vec![msg(1)],
                timers_add: vec![timer("0001", TimerKind::SagaTimeout, 1)],
                timers_remove: vec![],
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if key == "sagas/0001"),
            "{err}"
        );
        assert!(err.to_string().starts_with("E-STORE-CORRUPT"), "{err}");
        assert_eq!(store.outbox(u64::MAX, 10).unwrap(), vec![]);
        assert_eq!(store.outbox_len(), 0);
        assert_eq!(store.next_timer().unwrap(), None);
        assert_eq!(store.timers_len(), 0);
        assert_eq!(store.saga_by_idempotency_key("k").unwrap(), None);
        assert!(matches!(
            store.saga("0001"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Every index entry of every saga: `(state, name, finished)` rows.
    fn index_rows(store: &SledStore) -> (Vec<IVec>, Vec<IVec>, Vec<IVec>) {
        let keys = |tree: &Tree| tree.iter().keys().map(Result::unwrap).collect::<Vec<_>>();
        (
            keys(&store.by_state),
            keys(&store.by_name),
            keys(&store.finished),
        )
    }

    #[test]
    fn commit_many_writes_a_batch_in_order_and_a_known_prior_moves_the_same_indexes() {
        let mut done = saga("0001", "order", SagaStatus::Completed);
        done.finished_at = Some(9_000);
        let steps = [
            saga("0001", "order", SagaStatus::Pending),
            saga("0001", "order", running()),
            done,
        ];
        // The same three transitions, one commit each with the store reading
        // the record, and one batch with every prior given.
        let read = SledStore::temporary().unwrap();
        for s in &steps {
            put(&read, s.clone());
        }
        let batch = SledStore::temporary().unwrap();
        let priors = [Prior::Absent, Prior::of(&steps[0]), Prior::of(&steps[1])];
        let changes: Vec<Change> = steps
            .iter()
            .zip(priors)
            .enumerate()
            .map(|(i, (s, prior))| Change {
                saga: Some(s.clone().into()),
                prior,
                idempotency_key: (i == 0).then(|| "req-1".to_owned()),
                outbox: vec![msg(i as u32)],
                ..Change::default()
            })
            .collect();
        batch.commit_many(&changes).unwrap();
        assert_eq!(index_rows(&batch), index_rows(&read));
        assert_eq!(batch.saga("0001").unwrap(), Some(steps[2].clone()));
        assert_eq!(batch.sagas_len(), 1);
        assert_eq!(
            batch.saga_by_idempotency_key("req-1").unwrap().as_deref(),
            Some("0001")
        );
        let rows: Vec<_> = batch.outbox(u64::MAX, 10).unwrap();
        assert_eq!(
            rows.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
            vec![msg(0), msg(1), msg(2)]
        );
        assert_eq!(batch.finished_before(9_000, 10).unwrap(), vec!["0001"]);

        // Leaving the terminal state again (a retry) with a known prior.
        let again = saga(
            "0001",
            "order",
            SagaStatus::Compensating {
                reason: "retry".into(),
            },
        );
        for (store, prior) in [(&read, Prior::Unknown), (&batch, Prior::of(&steps[2]))] {
            store
                .commit(Change {
                    saga: Some(again.clone().into()),
                    prior,
                    ..Change::default()
                })
                .unwrap();
        }
        assert_eq!(index_rows(&batch), index_rows(&read));
        assert_eq!(
            batch.finished_before(u64::MAX, 10).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_failed_batch_writes_none_of_its_changes() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0002", "order", running()));
        store.sagas.insert("0002", &b"{not json"[..]).unwrap();
        let err = store
            .commit_many(&[
                Change {
                    saga: Some(saga("0001", "order", running()).into()),
                    prior: Prior::Absent,
                    outbox: vec![msg(1)],
                    ..Change::default()
                },
                Change {
                    // Unknown prior: the damaged record is read, and fails.
                    saga: Some(saga("0002", "order", SagaStatus::Completed).into()),
                    timers_add: vec![timer("0002", TimerKind::SagaTimeout, 1)],
                    ..Change::default()
                },
            ])
            .unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "sagas/0002"));
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(store.outbox(u64::MAX, 10).unwrap(), vec![]);
        assert_eq!((store.outbox_len(), store.timers_len()), (0, 0));
        assert_eq!(store.sagas_len(), 1);
    }
}
