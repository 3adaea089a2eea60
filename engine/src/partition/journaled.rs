//! The partition's side of the journal ([`crate::cluster::journal`]): each
//! store write of a batch becomes one record, numbered, written to the
//! store with its position, and appended (fenced) before the batch is
//! answered; what the relay has published moves each record's
//! `outbox_from` on.

use super::{Partition, PartitionError};
use crate::cluster::{Journal, JournalError, Record};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The end of a batch whose append is in flight: it holds rows not yet
/// published, whatever the relay has done.
const IN_FLIGHT: u64 = u64::MAX;

/// Where a leader appends its partition's records.
pub struct JournalWriter {
    journal: Journal,
    partition: u32,
    epoch: u64,
    engine: String,
    /// The number the next record gets.
    next_number: u64,
    /// Stream sequence of the last part appended.
    last_seq: Arc<AtomicU64>,
    /// Every outbox row below it was published ([`Marks::relayed`]).
    relayed: Arc<AtomicU64>,
    /// Every outbox row below it is in a record the journal took
    /// ([`Marks::journaled`]).
    journaled: Arc<AtomicU64>,
    /// Per appended batch: the stream sequence of its first record and the
    /// end (one past the highest outbox sequence) of the rows it may hold.
    batches: VecDeque<(u64, u64)>,
    /// The number of the last record appended, for the engine's heartbeat.
    applied: Arc<AtomicU64>,
}

impl JournalWriter {
    /// A writer continuing `partition`'s journal after record
    /// `last_number` at stream sequence `last_seq`, as `engine` in `epoch`;
    /// `marks` are shared with the relay ([`Marks`]).
    pub fn new(
        journal: Journal,
        partition: u32,
        epoch: u64,
        engine: String,
        last_number: u64,
        last_seq: u64,
        marks: Marks,
    ) -> Self {
        Self {
            journal,
            partition,
            epoch,
            engine,
            next_number: last_number + 1,
            last_seq: Arc::new(AtomicU64::new(last_seq)),
            relayed: marks.relayed,
            journaled: marks.journaled,
            batches: VecDeque::new(),
            applied: Arc::new(AtomicU64::new(last_number)),
        }
    }

    /// Keeps `applied` at the number of the last record appended.
    pub fn with_applied(mut self, applied: Arc<AtomicU64>) -> Self {
        self.applied = applied;
        self
    }

    /// The next record, its number taken.
    pub(super) fn record(&mut self) -> Record {
        let number = self.next_number;
        self.next_number += 1;
        Record {
            number,
            epoch: self.epoch,
            engine: self.engine.clone(),
            outbox_from: self.outbox_from(),
            ..Record::default()
        }
    }

    /// The position a record written now stores.
    pub(super) fn position(&self, record: &Record) -> jetsaga_store::JournalPosition {
        jetsaga_store::JournalPosition {
            record: record.number,
            epoch: record.epoch,
            // A lower bound of where the record will be: the journal after
            // the last append that completed.
            resume_seq: self.last_seq.load(Ordering::Acquire) + 1,
        }
    }

    /// From where records may hold outbox messages not yet published.
    fn outbox_from(&mut self) -> u64 {
        let relayed = self.relayed.load(Ordering::Acquire);
        while self.batches.front().is_some_and(|(_, end)| *end <= relayed) {
            self.batches.pop_front();
        }
        match self.batches.front() {
            Some((first, _)) => *first,
            None => self.last_seq.load(Ordering::Acquire) + 1,
        }
    }

    /// Appends `records` in order, each fenced on the one before, on a task
    /// of its own (encoding runs beside the partition); answers the stream
    /// sequence of the first. Until [`JournalWriter::appended`] says which
    /// outbox rows the batch holds, later records point back at it
    /// (`outbox_from`), as if none of them were published.
    pub(super) fn append(
        &mut self,
        records: Vec<Record>,
    ) -> tokio::task::JoinHandle<Result<u64, JournalError>> {
        self.batches
            .push_back((self.last_seq.load(Ordering::Acquire) + 1, IN_FLIGHT));
        let journal = self.journal.clone();
        let partition = self.partition;
        let last_seq = self.last_seq.clone();
        let applied = self.applied.clone();
        tokio::spawn(async move {
            let mut first = 0;
            for record in &records {
                let expected = last_seq.load(Ordering::Acquire);
                let started = std::time::Instant::now();
                let seq = journal.append(partition, record, expected).await?;
                metrics::histogram!(crate::metrics::JOURNAL_APPEND)
                    .record(started.elapsed().as_secs_f64());
                if first == 0 {
                    first = expected + 1;
                }
                last_seq.store(seq, Ordering::Release);
                applied.store(record.number, Ordering::Relaxed);
            }
            Ok(first)
        })
    }

    /// A batch whose first record is at `first_seq` is in the journal; the
    /// outbox rows written with it go up to `outbox_top` (the store's
    /// highest written then), which the relay may now publish.
    pub fn appended(&mut self, first_seq: u64, outbox_top: Option<u64>) {
        let end = outbox_top.map_or(0, |top| top + 1);
        match self.batches.iter_mut().find(|(_, e)| *e == IN_FLIGHT) {
            Some(entry) => *entry = (entry.0.min(first_seq), end),
            None => self.batches.push_back((first_seq, end)),
        }
        self.journaled.fetch_max(end, Ordering::AcqRel);
    }
}

impl Partition {
    /// Journals the partition from now on ([`JournalWriter`]).
    pub fn with_journal(mut self, writer: JournalWriter) -> Self {
        self.journal = Some(writer);
        self
    }

    /// Whether anything is written but not yet in a record.
    pub(super) fn unrecorded(&self) -> bool {
        !self.pending.is_empty() || !self.staged.is_empty()
    }

    /// Writes the batch's changes so far, with what was staged, in one
    /// transaction, as the next journal record when the partition is
    /// journaled. On an error none of them is written, and the partition
    /// stops.
    pub(super) fn write_pending(&mut self) -> Result<(), PartitionError> {
        if !self.unrecorded() {
            return Ok(());
        }
        let Some(writer) = self.journal.as_mut() else {
            let result = self.store.commit_many(&self.pending);
            self.pending.clear();
            self.finished.clear();
            self.staged = Staged::default();
            return result.map_err(Into::into);
        };
        let mut record = writer.record();
        let position = writer.position(&record);
        let result = self.store.commit_journaled(&self.pending, position);
        self.finished.clear();
        let staged = std::mem::take(&mut self.staged);
        record.definitions = staged.definitions;
        record.services = staged.services;
        record.deletes = staged.deletes;
        record.changes = std::mem::take(&mut self.pending);
        result?;
        self.unsent.push(record);
        Ok(())
    }

    /// Appends the records written so far (fenced) and waits for the
    /// append (journaled), or flushes (not): for writes outside a batch
    /// (resuming).
    pub(super) async fn write_durably(&mut self) -> Result<(), PartitionError> {
        self.write_pending()?;
        let records = std::mem::take(&mut self.unsent);
        let top = self.store.outbox_written();
        match self.journal.as_mut() {
            Some(writer) => {
                if records.is_empty() {
                    return Ok(());
                }
                let number = self.number;
                let first = writer.append(records).await.map_err(|e| {
                    PartitionError::Journal(JournalError::Nats {
                        partition: number,
                        reason: format!("the append task failed: {e}"),
                    })
                })??;
                writer.appended(first, top);
            }
            None => self.store.flush().await?,
        }
        Ok(())
    }
}

/// What a batch wrote to the store besides its changes: recorded in the
/// next record ahead of them.
#[derive(Debug, Default)]
pub(super) struct Staged {
    pub(super) definitions: Vec<jetsaga_core::saga::definition::SagaDefinition>,
    pub(super) services: Vec<jetsaga_core::saga::definition::ServicePolicy>,
    pub(super) deletes: Vec<String>,
}

impl Staged {
    fn is_empty(&self) -> bool {
        self.definitions.is_empty() && self.services.is_empty() && self.deletes.is_empty()
    }
}

/// The marks the relay shares with the partition, each an end: one past
/// the highest outbox sequence it covers (0: none).
#[derive(Debug, Clone)]
pub struct Marks {
    /// Every outbox row below it is in a record the journal took: the relay
    /// publishes no row at or above it (`u64::MAX`: the partition has no
    /// journal, and the store's flush is the bound).
    pub journaled: Arc<AtomicU64>,
    /// Every outbox row below it was published.
    pub relayed: Arc<AtomicU64>,
}
