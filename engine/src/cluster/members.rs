//! Each engine's heartbeat (`<PREFIX>_ENGINES`, one key per engine id, aged
//! out after [`HEARTBEAT_AGE`]) and the cluster's status assembled from the
//! heartbeats, the leases and the journal ([`status`]).

use super::{Cluster, PARTITIONS};
use crate::clock::now_ms;
use jetsaga_protocol::api::{ClusterStatus, EngineStatus, PartitionStatus};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often an engine beats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a heartbeat counts: an engine silent for longer is gone.
pub const HEARTBEAT_AGE: Duration = Duration::from_secs(10);

/// What this engine reports of itself, updated as it runs.
#[derive(Clone, Default)]
pub struct Local {
    /// Whether it leads partition 0.
    pub leading: Arc<AtomicBool>,
    /// The last journal record its store applied.
    pub applied: Arc<AtomicU64>,
    /// Records applied by catching up (without their outbox messages)
    /// since the engine started.
    pub caught_up: Arc<AtomicU64>,
}

/// Beats every [`HEARTBEAT_EVERY`] until `stop`, then removes the beat.
pub async fn beat(cluster: Cluster, local: Local, stop: CancellationToken) {
    let started_at = now_ms();
    let host = super::host_name();
    loop {
        let status = EngineStatus {
            id: cluster.engine.clone(),
            host: host.clone(),
            pid: std::process::id(),
            partitions: if local.leading.load(Ordering::Relaxed) {
                vec![0]
            } else {
                vec![]
            },
            started_at,
            seen_at: now_ms(),
            applied: BTreeMap::from([(0, local.applied.load(Ordering::Relaxed))]),
        };
        if let Ok(bytes) = serde_json::to_vec(&status)
            && let Err(e) = cluster.engines.put(&cluster.engine, bytes.into()).await
        {
            tracing::debug!(error = %e, "heartbeat not recorded");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
        }
    }
    let _ = cluster.engines.delete(&cluster.engine).await;
}

/// The cluster's status: current heartbeats, each partition's lease and
/// journal position.
pub async fn status(cluster: &Cluster) -> Result<ClusterStatus, String> {
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
    let mut partitions = Vec::new();
    for partition in 0..PARTITIONS {
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
