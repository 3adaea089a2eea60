//! The commit loop: apply a batch of commands, write it in one
//! transaction, flush once (group commit), then acknowledge and answer.

use super::start::StartFailure;
use super::{AfterFlush, Command, Partition, PartitionError, now_ms};
use crate::crash_points;
use crate::metrics::reject;
use jetsaga_core::saga::state::Event;
use std::time::Duration;

/// A batch whose flush is in progress (see `Partition::process`).
pub(super) struct Flushing {
    /// The store's flush, covering every write of the batch, and the
    /// append of its records to the journal; answers the stream sequence
    /// of the first record (0: not journaled).
    done: futures::future::BoxFuture<'static, Result<u64, PartitionError>>,
    /// What to do once it completes.
    after: AfterFlush,
    /// When the flush started, for the debug log.
    started: std::time::Instant,
    /// The store's highest outbox sequence written with the batch.
    outbox_top: Option<u64>,
}

impl Partition {
    /// Runs until every [`PartitionHandle`] is dropped, then applies what is
    /// still queued, flushes and returns. Unfinished sagas in the store are
    /// resumed first: their timers and outbox rows are durable, so nothing
    /// else is needed to continue them.
    pub async fn run(mut self) -> Result<(), PartitionError> {
        for saga in self.store.unfinished_sagas()? {
            self.active.insert(saga.id.clone(), saga);
        }
        let definitions = self.store.list_definitions()?;
        self.metrics
            .resume(definitions.iter(), self.active.values());
        tracing::info!(unfinished = self.active.len(), "partition resumed");
        self.resume_services()?;
        self.resume_step_timeouts()?;
        self.resume_limits(&definitions).await?;
        self.publish_gauges();
        let mut batch = Vec::with_capacity(self.batch_size);
        // The flush of the last batch, running while the next one is applied.
        let mut flushing: Option<Flushing> = None;
        loop {
            let next_timer = match (self.store.next_timer()?, self.timeouts.next_due()) {
                (Some(t), Some(due)) => Some(t.due.min(due)),
                (t, due) => t.map(|t| t.due).or(due),
            };
            // Open circuit breakers half-open on time, too (`jetsaga_core::admission`).
            let next = match (next_timer, self.services.next_wake(now_ms())) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = match next {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            // `Err(first)`: the flush in progress completed (its first
            // record at `first`); else whether the command channel is
            // still open.
            let open: Result<bool, u64> = tokio::select! {
                biased;
                done = async {
                    match flushing.as_mut() {
                        Some(f) => (&mut f.done).await,
                        None => std::future::pending().await,
                    }
                } => {
                    Err(done?)
                }
                n = self.rx.recv_many(&mut batch, self.batch_size) => Ok(n > 0),
                _ = tokio::time::sleep(wait) => Ok(true),
            };
            let open = match open {
                Ok(open) => open,
                Err(first) => {
                    if let Some(f) = flushing.take() {
                        self.flushed(f, first).await;
                    }
                    continue;
                }
            };
            self.process(&mut batch, &mut flushing).await?;
            if !open {
                if let Some(mut f) = flushing.take() {
                    let first = (&mut f.done).await?;
                    self.flushed(f, first).await;
                }
                break;
            }
        }
        // Another engine reports its numbers from now on.
        self.metrics.retire(&self.services.services());
        tracing::info!("partition stopped");
        Ok(())
    }

    /// Applies a batch of commands and the due timers, then starts the one
    /// flush that makes them durable (group commit) and returns without
    /// waiting for it: the next batch is applied while the disk syncs.
    /// `flushing` holds the flush in progress; the previous one is awaited
    /// (and its batch answered) before a new one starts, so answers go out
    /// in order and never before the state they report is durable.
    pub(super) async fn process(
        &mut self,
        batch: &mut Vec<Command>,
        flushing: &mut Option<Flushing>,
    ) -> Result<(), PartitionError> {
        let mut after = AfterFlush::default();
        let started = std::time::Instant::now();
        for cmd in batch.drain(..) {
            self.handle(cmd, &mut after)?;
        }
        self.fire_timers(&mut after)?;
        // Room freed in this batch goes to queued sagas (`jetsaga_core::limits`).
        self.admit_queued(&mut after)?;
        self.publish_gauges();
        // The batch's changes in one transaction (a store error stops the
        // partition, nothing of the batch answered).
        self.write_pending()?;
        let records = std::mem::take(&mut self.unsent);
        let outbox_top = self.store.outbox_written();
        let apply_us = started.elapsed().as_micros() as u64;
        if let Some(mut previous) = flushing.take() {
            let first = (&mut previous.done).await?;
            self.flushed(previous, first).await;
        }
        if after.committed > 0 {
            tracing::debug!(
                transitions = after.committed,
                acks = after.acks.len(),
                replies = after.start_replies.len() + after.saga_replies.len(),
                apply_us,
                "group commit"
            );
            crash_points::pass(crash_points::PARTITION_AFTER_COMMIT);
            let store = self.store.clone();
            let number = self.number;
            let journaled = self.journal.is_some();
            let append = match self.journal.as_mut() {
                Some(writer) if !records.is_empty() => Some(writer.append(records)),
                _ => None,
            };
            *flushing = Some(Flushing {
                done: Box::pin(async move {
                    let appended = async {
                        match append {
                            Some(task) => task
                                .await
                                .map_err(|e| {
                                    PartitionError::Journal(crate::cluster::JournalError::Nats {
                                        partition: number,
                                        reason: format!("the append task failed: {e}"),
                                    })
                                })?
                                .map_err(PartitionError::from),
                            None => Ok(0),
                        }
                    };
                    // Journaled, the journal is what makes the batch durable:
                    // a store that loses its tail catches up from it (and
                    // sled flushes in the background anyway).
                    let flushed = async {
                        match journaled {
                            true => Ok(()),
                            false => store.flush().await.map_err(PartitionError::from),
                        }
                    };
                    let (first, ()) = futures::try_join!(appended, flushed)?;
                    Ok(first)
                }),
                after,
                started: std::time::Instant::now(),
                outbox_top,
            });
        } else {
            // Nothing new to make durable, and everything before is.
            self.answer(after).await;
        }
        Ok(())
    }

    /// A batch's flush (and append, its first record at `first`)
    /// completed: wake the relay, then answer the batch.
    pub(super) async fn flushed(&mut self, f: Flushing, first: u64) {
        crash_points::pass(crash_points::PARTITION_AFTER_FLUSH);
        if first > 0
            && let Some(writer) = self.journal.as_mut()
        {
            writer.appended(first, f.outbox_top);
        }
        self.relay.notify_one();
        tracing::debug!(
            transitions = f.after.committed,
            flush_us = f.started.elapsed().as_micros() as u64,
            "batch durable"
        );
        self.answer(f.after).await;
    }

    /// Acknowledges, replies and notifies for a batch that is durable.
    pub(super) async fn answer(&mut self, after: AfterFlush) {
        let answer_started = std::time::Instant::now();
        for msg in after.acks {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
        }
        for (tx, r) in after.start_replies {
            let _ = tx.send(r);
        }
        for (tx, r) in after.saga_replies {
            let _ = tx.send(r);
        }
        for (tx, r) in after.delete_replies {
            let _ = tx.send(r);
        }
        for reply in after.service_replies {
            reply();
        }
        for (tx, r) in after.prune_replies {
            let _ = tx.send(r);
        }
        for (tx, r) in after.definition_replies {
            let _ = tx.send(r);
        }
        for (id, state) in after.progress {
            let _ = self
                .client
                .publish(self.subjects.progress(&id), state.into())
                .await;
        }
        tracing::debug!(
            answer_us = answer_started.elapsed().as_micros() as u64,
            "batch answered"
        );
    }

    pub(super) fn handle(
        &mut self,
        cmd: Command,
        after: &mut AfterFlush,
    ) -> Result<(), PartitionError> {
        match cmd {
            Command::Start { start, reply, ack } => {
                // Queued sagas that fit go before a new start (`jetsaga_core::limits`).
                self.admit_queued(after)?;
                let result = self.start(start, after);
                let result = match result {
                    Ok(r) => Ok(r),
                    Err(StartFailure::Store(e)) => return Err(e.into()),
                    Err(StartFailure::Api(e)) => {
                        // Who answers a caller counts its refusals (the API,
                        // HTTP and trigger doors do); the partition counts
                        // only what nobody is answered for: a durable start.
                        if reply.is_none() {
                            reject("start", &e.code, &e.message);
                        }
                        Err(e)
                    }
                };
                if let Some(tx) = reply {
                    after.start_replies.push((tx, result));
                }
                if let Some(msg) = ack {
                    after.acks.push(msg);
                }
            }
            Command::Result { result, msg } => {
                self.apply_result(result, after)?;
                after.acks.push(msg);
            }
            Command::Cancel {
                id,
                compensate,
                reason,
                reply,
            } => {
                let event = Event::Cancel { compensate, reason };
                let r = self.operator_event(&id, event, "cannot cancel", after)?;
                after.saga_replies.push((reply, r));
            }
            Command::Retry {
                id,
                compensation_only,
                reply,
            } => {
                let event = Event::Retry { compensation_only };
                let r = self.operator_event(&id, event, "cannot retry", after)?;
                after.saga_replies.push((reply, r));
            }
            Command::Delete { id, reply } => {
                let r = self.delete(&id, after)?;
                after.delete_replies.push((reply, r));
            }
            Command::Services(cmd) => self.services_command(cmd, after)?,
            Command::Definitions {
                definitions,
                services,
                reply,
            } => {
                // The definitions go ahead of the changes in the next record.
                self.write_pending()?;
                let mut applied = Vec::with_capacity(definitions.len());
                for def in &definitions {
                    applied.push(self.store.put_definition(def)?);
                }
                for policy in &services {
                    self.store.put_service_policy(policy)?;
                }
                if !services.is_empty() {
                    tracing::info!(services = services.len(), "service policies in use");
                    self.services.set_policies(services.clone());
                    // Raised limits and removed breakers release held tasks.
                    self.release_held(after)?;
                }
                self.staged.definitions.extend(definitions);
                self.staged.services.extend(services);
                after.committed += 1;
                after.definition_replies.push((reply, Ok(applied)));
            }
            Command::Prune {
                before,
                limit,
                reply,
            } => {
                // Pruning reads and deletes in the store itself.
                self.write_pending()?;
                let pruned = jetsaga_store::prune(&*self.store, before, limit)?;
                self.staged
                    .deletes
                    .extend(pruned.iter().map(|s| s.id.clone()));
                if !pruned.is_empty() {
                    metrics::counter!(crate::metrics::PRUNED_SAGAS).increment(pruned.len() as u64);
                }
                for saga in &pruned {
                    self.active.remove(&saga.id);
                }
                after.committed += pruned.len();
                after.prune_replies.push((reply, Ok(pruned.len())));
            }
        }
        Ok(())
    }
}
