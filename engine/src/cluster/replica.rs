//! The local store as the journal's materialisation.
//!
//! Each record is applied at most once: the store keeps the number and
//! epoch of the last applied record in the same transaction as the state
//! ([`JournalTable::commit_journaled`]), and a record that is not the next
//! one is skipped (already applied) or refused (a gap). A record whose
//! number the store holds with another epoch means the store has state the
//! journal never took (its engine was deposed in the middle of a group
//! commit): the store has diverged and is rebuilt from the journal.
//!
//! Standbys apply records without their outbox messages: publishing is the
//! leader's. An engine that takes a partition over publishes again the
//! outbox messages of the records from the last record's `outbox_from` on
//! ([`outbox_to_restore`]).

use super::journal::{Journal, JournalError, Mark, Record};
use super::snapshot::Snapshots;
use jetsaga_core::saga::state::Millis;
use jetsaga_protocol::ErrorCode;
use jetsaga_store::{
    Change, JournalPosition, JournalTable, OutboxMessage, SledStore, Store, StoreError,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Errors of applying the journal.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds a record the journal does not.
    #[error("{code}: the store holds journal record {record} of epoch {stored_epoch}, which the journal of partition {partition} does not ({found})", code = ErrorCode::Journal)]
    Diverged {
        /// Partition.
        partition: u32,
        /// Record number.
        record: u64,
        /// Epoch the store has.
        stored_epoch: u64,
        /// What the journal has instead.
        found: String,
    },
    /// Records between the store's and the journal's are missing.
    #[error("{code}: the journal of partition {partition} continues at record {found}, but the store applied only up to {stored}: the records between were trimmed (the store must be rebuilt from a snapshot)", code = ErrorCode::Journal)]
    Gap {
        /// Partition.
        partition: u32,
        /// Stored record.
        stored: u64,
        /// Next record found.
        found: u64,
    },
    /// The state predates the journal.
    #[error("{code}: the journal of partition {partition} starts from a store that held state before the journal existed (an upgraded installation), and this engine's store is empty: it cannot be rebuilt from the journal alone; copy the leader's data directory, or run a single engine", code = ErrorCode::Journal)]
    Seeded {
        /// Partition.
        partition: u32,
    },
}

/// Applies `record` (whose parts start at `mark.first`) to `store`, unless
/// it is already applied; with `keep_outbox`, its outbox messages too.
/// Answers whether it was applied.
pub fn apply(
    store: &dyn Store,
    partition: u32,
    mark: &Mark,
    record: &Record,
    keep_outbox: bool,
) -> Result<bool, ReplicaError> {
    let position = store.journal_position()?;
    if record.number <= position.record {
        if record.number == position.record && record.epoch != position.epoch {
            return Err(ReplicaError::Diverged {
                partition,
                record: position.record,
                stored_epoch: position.epoch,
                found: format!("its record {} is of epoch {}", record.number, record.epoch),
            });
        }
        return Ok(false);
    }
    if record.number != position.record + 1 {
        return Err(ReplicaError::Gap {
            partition,
            stored: position.record,
            found: record.number,
        });
    }
    if record.seeded && position.record == 0 && store.sagas_len() == 0 {
        return Err(ReplicaError::Seeded { partition });
    }
    for definition in &record.definitions {
        store.put_definition(definition)?;
    }
    for policy in &record.services {
        store.put_service_policy(policy)?;
    }
    for id in &record.deletes {
        store.delete_saga(id)?;
    }
    let next = JournalPosition {
        record: record.number,
        epoch: record.epoch,
        resume_seq: mark.first,
    };
    if keep_outbox || record.changes.iter().all(|c| c.outbox.is_empty()) {
        store.commit_journaled(&record.changes, next)?;
    } else {
        let stripped: Vec<Change> = record
            .changes
            .iter()
            .map(|c| Change {
                outbox: Vec::new(),
                ..c.clone()
            })
            .collect();
        store.commit_journaled(&stripped, next)?;
    }
    Ok(true)
}

/// Applies `partition`'s records to `store` until the one at stream
/// sequence `until` is applied, and answers how many it applied. Checks
/// that the store does not hold records past it.
pub async fn catch_up(
    store: &dyn Store,
    journal: &Journal,
    partition: u32,
    until: &Mark,
    applied: &AtomicU64,
) -> Result<u64, ReplicaError> {
    let position = store.journal_position()?;
    if position.record > until.number {
        return Err(ReplicaError::Diverged {
            partition,
            record: position.record,
            stored_epoch: position.epoch,
            found: format!("its last record is {}", until.number),
        });
    }
    if position.record == until.number && position.epoch != until.epoch {
        return Err(ReplicaError::Diverged {
            partition,
            record: position.record,
            stored_epoch: position.epoch,
            found: format!("its record {} is of epoch {}", until.number, until.epoch),
        });
    }
    if position.record == until.number {
        applied.store(position.record, Ordering::Relaxed);
        return Ok(0);
    }
    let first = journal.first_seq(partition).await?;
    if position.resume_seq < first && position.record > 0 {
        return Err(ReplicaError::Gap {
            partition,
            stored: position.record,
            found: 0,
        });
    }
    let mut reader = journal.read(partition, position.resume_seq).await?;
    let started = std::time::Instant::now();
    let mut count = 0u64;
    while let Some(next) = reader.next().await {
        let (mark, record) = next?;
        if apply(store, partition, &mark, &record, false)? {
            count += 1;
        }
        applied.store(record.number, Ordering::Relaxed);
        if mark.seq >= until.seq {
            break;
        }
    }
    if count > 0 {
        tracing::info!(
            partition,
            records = count,
            took_ms = started.elapsed().as_millis() as u64,
            "caught up with the journal"
        );
    }
    Ok(count)
}

/// Applies `partition`'s records to `store` as they come, until `stop`,
/// and snapshots the store every `snapshots.1` records (between two
/// records, when it holds only what the journal took). Errors of NATS are
/// retried; a store that diverged or a gap ends it.
pub async fn tail(
    store: Arc<SledStore>,
    journal: Journal,
    partition: u32,
    applied: Arc<AtomicU64>,
    snapshots: (Snapshots, u64),
    stop: CancellationToken,
) -> Result<(), ReplicaError> {
    let (snapshots, every) = snapshots;
    let mut since = store
        .journal_position()?
        .record
        .saturating_sub(snapshots.latest(partition).await.map_or(0, |p| p.record));
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let from = store.journal_position()?.resume_seq;
        let mut reader = match journal.read(partition, from).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot read the journal; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                n = reader.next() => n,
            };
            match next {
                Some(Ok((mark, record))) => {
                    if apply(&*store, partition, &mark, &record, false)? {
                        since += 1;
                    }
                    applied.store(record.number, Ordering::Relaxed);
                    metrics::gauge!(crate::metrics::STANDBY_LAG_MS, "partition" => partition.to_string())
                        .set(lag_ms(&record) as f64);
                    if since >= every {
                        if let Err(e) = snapshots.take(&store, partition, mark.outbox_from).await {
                            tracing::warn!(partition, error = %e, "snapshot failed; trying again after as many records");
                        }
                        since = 0;
                    }
                }
                Some(Err(JournalError::Corrupt { seq, reason, .. })) => {
                    return Err(ReplicaError::Journal(JournalError::Corrupt {
                        partition,
                        seq,
                        reason,
                    }));
                }
                Some(Err(e)) => {
                    tracing::warn!(partition, error = %e, "reading the journal failed; reading on");
                    break;
                }
                None => break,
            }
        }
    }
}

/// How far behind its writer a record is applied, by the newest update
/// time among its sagas (0 when it has none).
fn lag_ms(record: &Record) -> Millis {
    record
        .changes
        .iter()
        .filter_map(|c| c.saga.as_ref().map(|s| s.header().updated_at))
        .max()
        .map_or(0, |t| crate::clock::now_ms().saturating_sub(t))
}

/// The outbox messages of `partition`'s records from `from` through
/// `until`, in order: what a new leader publishes again, since its
/// predecessor may not have published them (duplicates of what it did are
/// dropped by their message ids, or fenced by attempt further on).
pub async fn outbox_to_restore(
    journal: &Journal,
    partition: u32,
    from: u64,
    until: &Mark,
) -> Result<Vec<OutboxMessage>, ReplicaError> {
    let mut out = Vec::new();
    if from > until.seq || until.number == 0 {
        return Ok(out);
    }
    let mut reader = journal.read(partition, from).await?;
    while let Some(next) = reader.next().await {
        let (mark, record) = next?;
        out.extend(record.outbox().cloned());
        if mark.seq >= until.seq {
            break;
        }
    }
    Ok(out)
}
