//! The outbox relay: publishes what the partition wrote to the outbox.
//!
//! Rows are published in commit order with their `Nats-Msg-Id`, pipelined
//! (all publishes of a batch are sent before any acknowledgement is awaited),
//! and removed once JetStream acknowledged them. A row is published only
//! once the state change that wrote it can no longer be undone: once the
//! partition's journal took its record ([`Marks::journaled`], advanced by
//! the partition after each append, which wakes the relay), or, for a
//! partition without a journal, once a store flush covered it
//! ([`GroupCommit::outbox_durable`]). So no task ever leaves for a state
//! change a crash could still undo, and the relay needs no flush of its own
//! (only at shutdown, to publish whatever is left).
//! A crash after publishing and before removal republishes the row, which the
//! stream's duplicate window (and, past it, the worker's idempotency record
//! and the engine's attempt fencing) makes harmless; the crash point
//! `relay.after_publish` kills the engine exactly there.

use crate::crash_points;
use async_nats::HeaderMap;
use async_nats::jetstream;
use jetsaga_protocol::HEADER_MSG_ID;
use jetsaga_store::{GroupCommit, OutboxTable};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::partition::Marks;

/// Most rows published per round.
const BATCH: usize = 512;

/// Runs the relay until `shutdown`, then publishes what is left (bounded by
/// `drain_timeout`) and returns.
/// `marks.journaled` bounds the rows published (only rows whose record the
/// partition's journal took; without a journal, the store's flush), so
/// that nothing leaves for a state change the journal may still refuse;
/// `marks.relayed` follows what was published (the journal's
/// `outbox_from` is derived from it).
pub async fn run<S: OutboxTable + GroupCommit + ?Sized>(
    store: Arc<S>,
    js: jetstream::Context,
    wake: Arc<Notify>,
    marks: Marks,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let Marks { journaled, relayed } = marks;
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_cancelled() {
            let _ = tokio::time::timeout(drain_timeout, drain(&*store, &js, &journaled, &relayed))
                .await;
            return;
        }
        match publish_round(&*store, &js, &journaled, &relayed).await {
            Ok(0) => {
                failures = 0;
                metrics::gauge!("engine_outbox_backlog").set(store.outbox_len() as f64);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Ok(_) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = backoff(failures);
                tracing::warn!(error = %e, retry_in = ?delay, "outbox relay could not publish; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn drain<S: OutboxTable + GroupCommit + ?Sized>(
    store: &S,
    js: &jetstream::Context,
    journaled: &AtomicU64,
    relayed: &AtomicU64,
) {
    // The partition has stopped after its last flush; this one covers any
    // row written outside it.
    if let Err(e) = store.flush().await {
        tracing::warn!(error = %e, "outbox relay could not flush the store before draining");
        return;
    }
    while let Ok(n) = publish_round(store, js, journaled, relayed).await {
        if n == 0 {
            break;
        }
    }
}

/// Jittered exponential delay after `failures` consecutive failures: 100 ms
/// doubling up to 5 s, ±20 %.
fn backoff(failures: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << failures.min(6)).min(5_000) as f64;
    Duration::from_millis((base * (0.8 + 0.4 * rand::random::<f64>())) as u64)
}

/// Whether a publish error will repeat however often the row is retried.
fn is_permanent(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::MaxPayloadExceeded => true,
        // A JetStream API error (e.g. "message size exceeds maximum allowed").
        K::Other => e.to_string().contains("maximum"),
        _ => false,
    }
}

/// Publishes one batch of durable rows; returns how many rows were
/// published and removed.
async fn publish_round<S: OutboxTable + GroupCommit + ?Sized>(
    store: &S,
    js: &jetstream::Context,
    journaled: &AtomicU64,
    relayed: &AtomicU64,
) -> anyhow::Result<usize> {
    // Read the marks first: rows read after them may be newer, never older.
    // Journaled, the journal's mark is the bound (the store is not flushed
    // per batch); else the store's flush.
    let gate = journaled.load(Ordering::Acquire);
    let bound = if gate == u64::MAX {
        store.outbox_durable()
    } else {
        gate.checked_sub(1)
    };
    let Some(durable) = bound else {
        return Ok(0);
    };
    let rows = store.outbox(durable, BATCH)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let top = rows.last().map_or(0, |(seq, _)| *seq);
    let started = std::time::Instant::now();
    let mut pending = Vec::with_capacity(rows.len());
    let mut refused = Vec::new();
    for (seq, msg) in rows {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MSG_ID, msg.msg_id.as_str());
        for (k, v) in &msg.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        match js
            .publish_with_headers(msg.subject.clone(), headers, msg.payload.into())
            .await
        {
            Ok(ack) => pending.push((seq, ack)),
            Err(e) if is_permanent(&e) => {
                let saga_id = msg
                    .headers
                    .iter()
                    .find(|(k, _)| k == jetsaga_protocol::HEADER_SAGA_ID)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                let _span = tracing::warn_span!("outbox", saga_id).entered();
                crate::metrics::reject(
                    "relay",
                    "unpublishable",
                    &format!(
                        "outbox row {seq} for {} cannot be published: {e}",
                        msg.subject
                    ),
                );
                refused.push(seq);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut done = refused;
    let mut error = None;
    let mut duplicates = 0usize;
    for (seq, ack) in pending {
        match ack.await {
            Ok(ack) => {
                if ack.duplicate {
                    duplicates += 1;
                    metrics::counter!("engine_publish_duplicates_total").increment(1);
                }
                done.push(seq);
            }
            Err(e) if is_permanent(&e) => {
                // JetStream refuses this message for good (too large for the
                // stream, say): retrying would block every row behind it. The
                // step's timeout then takes its course and the saga ends in a
                // state a person can see.
                crate::metrics::reject(
                    "relay",
                    "unpublishable",
                    &format!("outbox row {seq} refused by JetStream: {e}"),
                );
                done.push(seq);
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    tracing::debug!(
        published = done.len(),
        duplicates,
        total_us = started.elapsed().as_micros() as u64,
        "outbox rows published"
    );
    crash_points::pass(crash_points::RELAY_AFTER_PUBLISH);
    store.outbox_remove(&done)?;
    match error {
        Some(e) => Err(e.into()),
        None => {
            // Rows are read from the oldest: every row up to `top` is gone.
            relayed.fetch_max(top + 1, Ordering::AcqRel);
            Ok(done.len())
        }
    }
}
