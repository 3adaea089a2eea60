//! A [`Change`] encoded for the group commit's transaction.

use super::codec::{
    breaker_key, encode, encode_one_row_within, finished_key, held_key, join, step_key,
    timer_ident, timer_key,
};
use crate::commit::too_large_from_below;
use crate::{Change, ONE_ROW_MAX, Prior, SagaWrite, StoreError, header_of};
use jetsaga_core::saga::state::{Millis, Saga, StepState};
#[cfg(debug_assertions)]
use {super::codec::decode_header, sled::transaction::ConflictableTransactionError};

/// A change's saga record and index keys, encoded.
pub(super) struct SagaRow {
    pub(super) id: Vec<u8>,
    /// The rows to write.
    pub(super) form: RowForm,
    pub(super) state_key: Vec<u8>,
    pub(super) name_key: Vec<u8>,
    pub(super) finished_key: Option<Vec<u8>>,
    pub(super) prior: Prior,
    pub(super) idempotency_key: Option<String>,
}

/// How a saga write is stored (the module docs of [`super`]).
pub(super) enum RowForm {
    /// The whole saga in its `sagas` row: a saga that [`fits_one_row`].
    OneRow(Vec<u8>),
    /// Every part of a larger saga: header, input, all its steps.
    Parts {
        header: Vec<u8>,
        input: Vec<u8>,
        steps: Vec<Row>,
    },
    /// The header and the steps a [`SagaWrite::Steps`] lists: the rest of
    /// the saga is stored already.
    Steps { header: Vec<u8>, steps: Vec<Row> },
}

impl RowForm {
    /// Saga `saga`, whole: in one row if it fits, else in parts.
    pub(super) fn of_whole(saga: &Saga) -> Result<Self, StoreError> {
        let id = saga.id.as_bytes();
        let header = encode("sagas", id, &header_of(saga))?;
        // What `fits_one_row` decides, without serialising the saga twice:
        // the row is its JSON and `ONE_ROW_OVERHEAD` bytes.
        if !too_large_from_below(saga)
            && let Some(row) = encode_one_row_within(id, &header, saga, ONE_ROW_MAX)?
        {
            return Ok(RowForm::OneRow(row));
        }
        Ok(RowForm::Parts {
            header,
            input: encode("saga_inputs", id, &saga.input)?,
            steps: encode_steps(
                id,
                saga.steps.iter().enumerate().map(|(i, s)| (i as u32, s)),
            )?,
        })
    }
}

impl SagaRow {
    fn of(write: &SagaWrite, change: &Change) -> Result<Self, StoreError> {
        let saga = write.header();
        let id = saga.id.as_bytes();
        let form = match write {
            SagaWrite::Steps { header, steps } => RowForm::Steps {
                header: encode("sagas", id, header)?,
                steps: encode_steps(id, steps.iter().map(|(i, s)| (*i, s)))?,
            },
            SagaWrite::Whole(saga) => RowForm::of_whole(saga)?,
        };
        Ok(SagaRow {
            id: id.to_vec(),
            form,
            state_key: join(saga.status.name().as_bytes(), id),
            name_key: join(saga.name.as_bytes(), id),
            finished_key: finished_key(saga),
            prior: change.prior.clone(),
            idempotency_key: change.idempotency_key.clone(),
        })
    }
}

/// A row to insert: key and value.
pub(super) type Row = (Vec<u8>, Vec<u8>);

/// The `saga_steps` rows of saga `id`'s steps `steps` (index, state).
fn encode_steps<'a>(
    id: &[u8],
    steps: impl Iterator<Item = (u32, &'a StepState)>,
) -> Result<Vec<Row>, StoreError> {
    steps
        .map(|(i, step)| {
            let key = step_key(id, i);
            let value = encode("saga_steps", &key, step)?;
            Ok((key, value))
        })
        .collect()
}

/// A [`Change`] encoded for the transaction (outbox rows are added under
/// the commit lock, which numbers them).
pub(super) struct Encoded {
    pub(super) saga: Option<SagaRow>,
    pub(super) outbox: Vec<OutboxRow>,
    pub(super) timer_removes: Vec<Vec<u8>>,
    pub(super) timer_adds: Vec<TimerAdd>,
    pub(super) queue_adds: Vec<([u8; 8], Vec<u8>)>,
    pub(super) queue_removes: Vec<u64>,
    pub(super) held_adds: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) held_removes: Vec<u64>,
    pub(super) breakers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Encoded {
    pub(super) fn of(change: &Change) -> Result<Self, StoreError> {
        debug_assert!(
            change.idempotency_key.is_none() || change.saga.is_some(),
            "an idempotency key needs the saga it binds to"
        );
        let saga = match &change.saga {
            Some(write) => Some(SagaRow::of(write, change)?),
            None => None,
        };
        let timer_removes = change
            .timers_remove
            .iter()
            .map(|(id, kind)| timer_ident(id, kind))
            .collect::<Result<Vec<_>, _>>()?;
        let timer_adds = change
            .timers_add
            .iter()
            .map(|row| {
                let ident = timer_ident(&row.saga_id, &row.timer)?;
                let row_bytes = encode("timers", &timer_key(row.due, &ident), row)?;
                Ok(TimerAdd {
                    ident,
                    due: row.due,
                    row: row_bytes,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let queue_adds = change
            .queue_add
            .iter()
            .map(|(seq, row)| {
                Ok((
                    seq.to_be_bytes(),
                    encode("queued", &seq.to_be_bytes(), row)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Held tasks and breakers ([`jetsaga_core::admission`]).
        let held_adds = change
            .held_add
            .iter()
            .map(|(seq, task)| {
                let key = held_key(*seq);
                let value = encode("admission", &key, task)?;
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let breakers = change
            .breakers
            .iter()
            .map(|(service, state)| {
                let key = breaker_key(service);
                let value = match state {
                    Some(state) => Some(encode("admission", &key, state)?),
                    None => None,
                };
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Encoded {
            saga,
            outbox: Vec::new(),
            timer_removes,
            timer_adds,
            queue_adds,
            queue_removes: change.queue_remove.clone(),
            held_adds,
            held_removes: change.held_remove.clone(),
            breakers,
        })
    }
}

/// Debug builds check that a known [`Prior`] is the stored record's: a
/// writer whose memory drifted from the store would otherwise leave stale
/// index entries behind.
#[cfg(debug_assertions)]
pub(super) fn check_prior(
    stored: Option<&[u8]>,
    id: &[u8],
    prior: &Prior,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let stored = match stored {
        Some(bytes) => Some(decode_header(id, bytes).map_err(ConflictableTransactionError::Abort)?),
        None => None,
    };
    match (prior, stored) {
        (Prior::Unknown, _) | (Prior::Absent, None) => {}
        (Prior::Stored { .. }, Some(stored)) => {
            debug_assert_eq!(&Prior::of(&stored), prior, "stale prior of saga {stored:?}")
        }
        (prior, stored) => panic!("prior {prior:?} of a saga stored as {stored:?}"),
    }
    Ok(())
}

/// An outbox row ready to insert.
pub(super) struct OutboxRow {
    pub(super) key: [u8; 8],
    pub(super) value: Vec<u8>,
}

/// A timer to arm, encoded.
pub(super) struct TimerAdd {
    pub(super) ident: Vec<u8>,
    pub(super) due: Millis,
    pub(super) row: Vec<u8>,
}
