//! Each engine's heartbeat (`<PREFIX>_ENGINES`, one key per engine id, aged
//! out after [`HEARTBEAT_AGE`]) and the cluster's status assembled from the
//! heartbeats, the leases and the journal ([`status`]).

use super::Cluster;
use crate::clock::now_ms;
use jetsaga_protocol::api::{ClusterStatus, EngineStatus, PartitionStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an engine beats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a heartbeat counts: an engine silent for longer is gone.
pub const HEARTBEAT_AGE: Duration = Duration::from_secs(10);

/// What this engine reports of one partition, updated as it runs.
#[derive(Clone, Default)]
pub struct Local {
    /// Whether it leads the partition.
    pub leading: Arc<AtomicBool>,
    /// The last journal record its store applied.
    pub applied: Arc<AtomicU64>,
    /// Records applied by catching up (without their outbox messages)
    /// since the engine started.
    pub caught_up: Arc<AtomicU64>,
}

/// Beats every [`HEARTBEAT_EVERY`] until `stop`, then removes the beat;
/// `locals` are the partitions', by number. After each beat, `alive` is
/// set to the number of engines with a current heartbeat.
pub async fn beat(
    cluster: Cluster,
    locals: Vec<Local>,
    alive: Arc<std::sync::atomic::AtomicUsize>,
    stop: CancellationToken,
) {
    let started_at = now_ms();
    let host = super::host_name();
    loop {
        let status = EngineStatus {
            id: cluster.engine.clone(),
            host: host.clone(),
            pid: std::process::id(),
            partitions: (0u32..)
                .zip(&locals)
                .filter(|(_, l)| l.leading.load(Ordering::Relaxed))
                .map(|(p, _)| p)
                .collect(),
            started_at,
            seen_at: now_ms(),
            applied: (0u32..)
                .zip(&locals)
                .map(|(p, l)| (p, l.applied.load(Ordering::Relaxed)))
                .collect(),
        };
        if let Ok(bytes) = serde_json::to_vec(&status)
            && let Err(e) = cluster.engines.put(&cluster.engine, bytes.into()).await
        {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
        if let Ok(engines) = engines(&cluster).await {
            alive.store(engines.len().max(1), Ordering::Relaxed);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
    let _ = cluster.engines.delete(&cluster.engine).await;
}

/// The engines with a current heartbeat, by id.
pub async fn engines(cluster: &Cluster) -> Result<Vec<EngineStatus>, String> {
    use futures::StreamExt;
    let mut engines = Vec::new();
    let mut keys = cluster
        .engines
        .keys()
        .await
        .map_err(|e| format!("cannot list the engines' heartbeats: {e}"))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        if let Ok(key) = key {
            names.push(key);
        }
    }
    for name in names {
        if let Ok(Some(bytes)) = cluster.engines.get(&name).await
            && let Ok(engine) = serde_json::from_slice::<EngineStatus>(&bytes)
        {
            engines.push(engine);
        }
    }
    engines.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(engines)
}

/// Whether this engine (`me`, leading `led` partitions now) should hand
/// one of its partitions to another, to spread them evenly: it leads more
/// than its share (the partition count over the engines, rounded up), or
/// its share while another engine leads fewer than the share rounded down.
/// Of the engines that lead the most, only the first by id gives one up at
/// a time; and only while the heartbeats account for every partition
/// exactly once, so that a view caught in the middle of a handover (a
/// heartbeat up to a second old) moves nothing.
pub fn should_give_up(engines: &[EngineStatus], me: &str, led: usize, partitions: u32) -> bool {
    let n = engines.len().max(1) as u32;
    let (ceil, floor) = (partitions.div_ceil(n), partitions / n);
    if !engines.iter().any(|e| e.id == me) {
        return false;
    }
    let count = |e: &EngineStatus| {
        if e.id == me {
            led as u32
        } else {
            e.partitions.len() as u32
        }
    };
    if engines.iter().map(count).sum::<u32>() != partitions {
        return false;
    }
    let led = led as u32;
    let most = engines.iter().map(count).max().unwrap_or(0);
    let first_of_most = engines
        .iter()
        .find(|e| count(e) == most)
        .is_some_and(|e| e.id == me);
    let someone_short = engines.iter().any(|e| count(e) < floor);
    first_of_most && led > 1 && (led > ceil || (led == ceil && someone_short && led > floor))
}

/// The cluster's status: current heartbeats, each partition's lease and
/// journal position.
pub async fn status(cluster: &Cluster) -> Result<ClusterStatus, String> {
    let engines = engines(cluster).await?;
    let mut partitions = Vec::new();
    for partition in 0..cluster.partitions {
        let holder = cluster.leases.holder(partition).await?;
        let last = cluster
            .journal
            .last(partition)
            .await
            .map_err(|e| e.to_string())?;
        let lease_expires_at = holder
            .as_ref()
            .map(|(v, _)| v.renewed_at.saturating_add(v.ttl_ms));
        partitions.push(PartitionStatus {
            partition,
            leader: holder.as_ref().map(|(v, _)| v.engine.clone()),
            epoch: holder.as_ref().map(|(v, _)| v.epoch),
            lease_expires_at,
            journal_last_record: last.map_or(0, |m| m.number),
            journal_last_seq: last.map_or(0, |m| m.seq),
            applied: engines
                .iter()
                .filter_map(|e| e.applied.get(&partition).map(|a| (e.id.clone(), *a)))
                .collect(),
        });
    }
    Ok(ClusterStatus {
        engines,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(id: &str, partitions: &[u32]) -> EngineStatus {
        EngineStatus {
            id: id.into(),
            partitions: partitions.to_vec(),
            ..Default::default()
        }
    }

    /// What the heartbeat of `id` in `e` says it leads.
    fn led(e: &[EngineStatus], id: &str) -> usize {
        e.iter()
            .find(|x| x.id == id)
            .map_or(0, |x| x.partitions.len())
    }

    #[test]
    fn partitions_spread_evenly_one_hand_over_at_a_time() {
        // Balanced: nobody gives up.
        let e = [engine("a", &[0, 1]), engine("b", &[2]), engine("c", &[3])];
        assert!(
            e.iter()
                .all(|x| !should_give_up(&e, &x.id, x.partitions.len(), 4))
        );
        // A new engine leads nothing: the first of the two with two gives.
        let e = [engine("a", &[0, 1]), engine("b", &[2, 3]), engine("c", &[])];
        assert!(should_give_up(&e, "a", led(&e, "a"), 4));
        assert!(!should_give_up(&e, "b", led(&e, "b"), 4));
        assert!(!should_give_up(&e, "c", led(&e, "c"), 4));
        // One engine took everything: it gives up until it has its share.
        let e = [engine("a", &[]), engine("b", &[0, 1, 2, 3])];
        assert!(should_give_up(&e, "b", led(&e, "b"), 4));
        let e = [engine("a", &[0, 1]), engine("b", &[2, 3])];
        assert!(!should_give_up(&e, "b", led(&e, "b"), 4));
        // More engines than partitions: one each at most.
        let e = [engine("a", &[0, 1]), engine("b", &[]), engine("c", &[])];
        assert!(should_give_up(&e, "a", led(&e, "a"), 2));
        let e = [engine("a", &[0]), engine("b", &[1]), engine("c", &[])];
        assert!(
            e.iter()
                .all(|x| !should_give_up(&e, &x.id, x.partitions.len(), 2))
        );
        // One partition never moves for balance.
        let e = [engine("a", &[0]), engine("b", &[])];
        assert!(!should_give_up(&e, "a", led(&e, "a"), 1));
        // An engine without a heartbeat yet does nothing.
        assert!(!should_give_up(&e, "z", 3, 4));
        // A view in the middle of a handover moves nothing: the heartbeat
        // still shows a partition this engine gave up a moment ago (its own
        // count is current), or one taken is not shown yet.
        let e = [engine("a", &[0, 1]), engine("b", &[2, 3]), engine("c", &[])];
        assert!(!should_give_up(&e, "a", 1, 4));
        let e = [engine("a", &[0, 1, 2]), engine("b", &[]), engine("c", &[])];
        assert!(!should_give_up(&e, "a", 3, 4), "partition 3 is in flux");
    }
}
