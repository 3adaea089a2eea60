//! Leader leases, one per partition: the key `lease.<partition>` of the
//! cluster bucket.
//!
//! A lease is taken with `create` (no key) or with `update` at the revision
//! an engine watched unchanged for the lease's TTL (its holder stopped
//! renewing), and renewed with `update` at the revision of the last
//! renewal. Expiry is judged on each engine's own monotonic clock from when
//! it saw a revision, never by comparing wall clocks: the holder stops
//! leading when it has not renewed within the TTL counted from before its
//! last successful renewal was sent, which is always before any other
//! engine can have watched that revision for a whole TTL.
//!
//! The lease only decides who should lead; what makes two leaders
//! impossible is the journal's fence ([`super::journal`]).

use async_nats::jetstream::kv;
use futures::StreamExt;
use jetsaga_core::saga::state::Millis;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use crate::clock::now_ms;

/// How long an engine that leads its share of partitions leaves a lease
/// its holder released to the engines short of theirs.
const RELEASED_GRACE: Duration = Duration::from_millis(200);

/// What a lease key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    /// The holder's engine id.
    pub engine: String,
    /// The holder's epoch: the revision at which it took the lease.
    pub epoch: u64,
    /// How long the lease lasts after each renewal, in ms.
    pub ttl_ms: u64,
    /// When the holder last renewed it (its wall clock, for people).
    pub renewed_at: Millis,
}

/// Timing of leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often the holder renews it.
    pub renew: Duration,
}

/// A lease this engine holds.
#[derive(Debug, Clone)]
pub struct Held {
    /// Partition.
    pub partition: u32,
    /// Epoch: the revision at which it was taken.
    pub epoch: u64,
    /// Revision of the last renewal.
    revision: u64,
    /// The lease this one replaced, when it was this engine's own (a
    /// restart taking its lease back).
    pub own_previous: Option<LeaseValue>,
    /// Whether it was taken from another engine that stopped renewing it
    /// (rather than released, or never held).
    pub expired: bool,
    /// When the last successful renewal was sent.
    renewed: Instant,
}

/// Why a lease ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// Another engine took it.
    TakenBy(String),
    /// It could not be renewed within its TTL.
    Expired(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::TakenBy(engine) => write!(f, "taken by engine {engine}"),
            Lost::Expired(why) => write!(f, "not renewed within its TTL ({why})"),
        }
    }
}

/// The leases of an installation, as seen by one engine.
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    engine: String,
    timing: LeaseTiming,
}

/// The key of `partition`'s lease.
pub fn lease_key(partition: u32) -> String {
    format!("lease.{partition}")
}

impl Leases {
    /// Leases in `kv`, taken and renewed as `engine`.
    pub fn new(kv: kv::Store, engine: String, timing: LeaseTiming) -> Self {
        Self { kv, engine, timing }
    }

    /// The lease timing.
    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// The current holder of `partition`'s lease and its revision, if any.
    pub async fn holder(&self, partition: u32) -> Result<Option<(LeaseValue, u64)>, String> {
        match self.kv.entry(lease_key(partition)).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                match serde_json::from_slice::<LeaseValue>(&entry.value) {
                    Ok(v) => Ok(Some((v, entry.revision))),
                    Err(e) => Err(format!(
                        "lease of partition {partition} does not decode: {e}"
                    )),
                }
            }
            Ok(_) => Ok(None),
            Err(e) => Err(format!(
                "cannot read the lease of partition {partition}: {e}"
            )),
        }
    }

    fn value(&self, epoch: u64) -> bytes::Bytes {
        serde_json::to_vec(&LeaseValue {
            engine: self.engine.clone(),
            epoch,
            ttl_ms: self.timing.ttl.as_millis() as u64,
            renewed_at: now_ms(),
        })
        .expect("a lease value encodes")
        .into()
    }

    /// Waits until this engine takes `partition`'s lease, or `stop` is
    /// cancelled (`None`). `on_holder` hears of every other holder seen,
    /// and whether its revision is new (a renewal: it was alive then), so
    /// the caller can tell when the partition is led, and since when not.
    /// `not_before`: the engine does not take the lease before then (after
    /// it stepped down, so that another engine gets it). `eager`: whether
    /// it is short of its share of partitions; one that is not leaves a
    /// lease that was never taken a TTL longer, and one its holder released
    /// 200 ms longer, to the engines that are, so that partitions spread.
    /// An expired lease (its holder died) and its own lease it takes at
    /// once either way.
    pub async fn acquire(
        &self,
        partition: u32,
        not_before: Option<Instant>,
        stop: &tokio_util::sync::CancellationToken,
        eager: impl Fn() -> bool,
        mut on_holder: impl FnMut(&LeaseValue, bool),
    ) -> Option<Held> {
        let key = lease_key(partition);
        // The revision seen and when it was first seen.
        let mut seen: Option<(u64, Instant)> = None;
        // Since when the key has been absent or released.
        let mut free_since: Option<Instant> = None;
        let mut watch = None;
        loop {
            if stop.is_cancelled() {
                return None;
            }
            if watch.is_none() {
                watch = self.kv.watch(&key).await.ok();
            }
            let may_take = not_before.is_none_or(|t| Instant::now() >= t);
            let mut wait = self.timing.renew.min(Duration::from_millis(500));
            match self.kv.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                    let value = serde_json::from_slice::<LeaseValue>(&entry.value).ok();
                    let mine = value.as_ref().is_some_and(|v| v.engine == self.engine);
                    let ttl = value
                        .as_ref()
                        .map_or(self.timing.ttl, |v| Duration::from_millis(v.ttl_ms));
                    let (first_seen, fresh) = match seen {
                        Some((rev, at)) if rev == entry.revision => (at, false),
                        _ => {
                            seen = Some((entry.revision, Instant::now()));
                            (Instant::now(), true)
                        }
                    };
                    if let Some(v) = &value
                        && !mine
                    {
                        on_holder(v, fresh);
                    }
                    // The same engine id is the same data directory (the
                    // store's lock holds one process to it): a restart
                    // takes its own lease back at once. An expired lease
                    // is taken at once by whoever sees it first: a
                    // takeover is not delayed for balance (the leaders
                    // spread the partitions again afterwards).
                    let expired = first_seen.elapsed() >= ttl;
                    free_since = None;
                    if (mine || expired) && may_take {
                        if let Some(mut held) = self.take(partition, entry.revision).await {
                            held.expired = !mine;
                            held.own_previous = value.filter(|_| mine);
                            return Some(held);
                        }
                        continue;
                    }
                    wait = wait.min(ttl.saturating_sub(first_seen.elapsed()));
                }
                Ok(entry) => {
                    // Released by its holder (handed over): taken at once,
                    // by an engine short of its share first. Never held
                    // yet: left to those a TTL longer.
                    let grace = if entry.is_some() {
                        RELEASED_GRACE
                    } else {
                        self.timing.ttl
                    };
                    let free_for = free_since.get_or_insert_with(Instant::now).elapsed();
                    let spread = eager() || free_for >= grace;
                    if !spread {
                        wait = wait.min(grace.saturating_sub(free_for));
                    }
                    if may_take && spread {
                        if let Some(held) = self.take(partition, 0).await {
                            return Some(held);
                        }
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(partition, error = %e, "cannot read the partition's lease; retrying");
                    watch = None;
                }
            }
            if let Some(t) = not_before {
                wait = wait.min(t.saturating_duration_since(Instant::now()));
            }
            let wait = wait.max(Duration::from_millis(10));
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
                changed = async {
                    match watch.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_none() {
                        watch = None;
                    }
                }
            }
        }
    }

    /// Takes the lease at `revision` (0: the key must not exist).
    async fn take(&self, partition: u32, revision: u64) -> Option<Held> {
        let key = lease_key(partition);
        let sent = Instant::now();
        // The epoch is the revision of the take, unknown before it: write a
        // placeholder and renew at once with the real one.
        let taken = if revision == 0 {
            self.kv.create(&key, self.value(0)).await.ok()
        } else {
            self.kv.update(&key, self.value(0), revision).await.ok()
        }?;
        let mut held = Held {
            partition,
            epoch: taken,
            revision: taken,
            renewed: sent,
            own_previous: None,
            expired: false,
        };
        match self.renew(&mut held).await {
            Ok(()) => {
                tracing::info!(partition, epoch = held.epoch, "took the partition's lease");
                metrics::counter!(crate::metrics::LEASE_ACQUISITIONS).increment(1);
                Some(held)
            }
            Err(lost) => {
                tracing::warn!(partition, %lost, "lost the partition's lease as it was taken");
                None
            }
        }
    }

    /// Renews a held lease once.
    pub async fn renew(&self, held: &mut Held) -> Result<(), Lost> {
        let sent = Instant::now();
        let key = lease_key(held.partition);
        // Bounded by what is left of the lease: a renewal that hangs must
        // not keep the holder leading past it.
        let left = self.deadline().saturating_sub(held.renewed.elapsed());
        let update = self.kv.update(&key, self.value(held.epoch), held.revision);
        let answered = match tokio::time::timeout(left.max(Duration::from_millis(10)), update).await
        {
            Ok(answered) => answered,
            Err(_) => {
                return Err(Lost::Expired(
                    "the renewal was not answered within the lease".into(),
                ));
            }
        };
        match answered {
            Ok(revision) => {
                held.revision = revision;
                held.renewed = sent;
                Ok(())
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                match self.holder(held.partition).await {
                    // A renewal whose answer was lost went through.
                    Ok(Some((v, revision)))
                        if v.engine == self.engine && (v.epoch == held.epoch || v.epoch == 0) =>
                    {
                        held.revision = revision;
                        Ok(())
                    }
                    Ok(Some((v, _))) => Err(Lost::TakenBy(v.engine)),
                    Ok(None) => Err(Lost::TakenBy("nobody (released)".into())),
                    Err(e) => Err(Lost::Expired(e)),
                }
            }
            Err(e) => {
                if held.renewed.elapsed() >= self.deadline() {
                    Err(Lost::Expired(e.to_string()))
                } else {
                    tracing::warn!(partition = held.partition, error = %e, "cannot renew the partition's lease; retrying");
                    Ok(())
                }
            }
        }
    }

    /// How long after its last renewal was sent the holder still leads:
    /// less than the TTL, so that it stops before anyone else may start.
    fn deadline(&self) -> Duration {
        self.timing
            .ttl
            .saturating_sub(self.timing.renew.min(self.timing.ttl / 2))
    }

    /// Renews `held` every renewal period until it is lost or `stop` is
    /// cancelled; answers why it was lost (`None`: stopped).
    pub async fn keep(
        &self,
        held: &mut Held,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<Lost> {
        // After a renewal that did not get through, the next one waits a
        // little (not a busy loop of failures while JetStream elects).
        let mut pause = Duration::from_millis(10);
        loop {
            let next = self.timing.renew.saturating_sub(held.renewed.elapsed());
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(next.max(pause)) => {}
            }
            let before = held.renewed;
            let renewed = self.renew(held).await;
            pause = if held.renewed == before {
                (self.timing.renew / 10)
                    .clamp(Duration::from_millis(20), Duration::from_millis(200))
            } else {
                Duration::from_millis(10)
            };
            if let Err(lost) = renewed {
                metrics::counter!(crate::metrics::LEASE_LOSSES).increment(1);
                return Some(lost);
            }
            if held.renewed.elapsed() >= self.deadline() {
                metrics::counter!(crate::metrics::LEASE_LOSSES).increment(1);
                return Some(Lost::Expired("no renewal got through".into()));
            }
        }
    }

    /// Releases a held lease, so that another engine takes it at once.
    pub async fn release(&self, held: &Held) {
        let key = lease_key(held.partition);
        match self
            .kv
            .delete_expect_revision(&key, Some(held.revision))
            .await
        {
            Ok(()) => tracing::info!(partition = held.partition, "released the partition's lease"),
            Err(e) => {
                tracing::warn!(partition = held.partition, error = %e, "cannot release the partition's lease; it runs out by itself")
            }
        }
    }
}
