//! The cluster's state (`cluster.status`, `jetsaga cluster status`) and
//! the request to hand a partition over (`cluster.step-down`).
//!
//! Any engine answers `cluster.status` from what every engine records in
//! NATS (the lease of each partition, each engine's heartbeat), so it works
//! while a partition has no leader.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Engines and partitions of an installation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterStatus {
    /// Engines whose heartbeat is current, by id.
    pub engines: Vec<EngineStatus>,
    /// Every partition of the installation, by number.
    pub partitions: Vec<PartitionStatus>,
}

/// One engine, as its heartbeat says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EngineStatus {
    /// The engine's id (`engine_id`; by default the host name and a random
    /// suffix kept in the data directory).
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Partitions it leads.
    pub partitions: Vec<u32>,
    /// When it started, in ms since the Unix epoch.
    pub started_at: u64,
    /// Its last heartbeat, in ms since the Unix epoch.
    pub seen_at: u64,
    /// Per partition (by number, as a string in JSON), the number of the
    /// last journal record its store applied.
    pub applied: BTreeMap<u32, u64>,
}

/// One partition: its leader, its journal, and how far each engine is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionStatus {
    /// Partition number.
    pub partition: u32,
    /// The engine holding its lease, or `null` while none does.
    pub leader: Option<String>,
    /// The leader's epoch (the lease's revision when it was taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// When the lease runs out unless renewed, in ms since the Unix epoch
    /// (as the leader last wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<u64>,
    /// The number of the journal's last record.
    pub journal_last_record: u64,
    /// The journal stream sequence of that record.
    pub journal_last_seq: u64,
    /// Per engine id, the number of the last record its store applied.
    pub applied: BTreeMap<String, u64>,
}

/// `cluster.step-down`: the leader of `partition` hands it over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepDownRequest {
    /// Partition number.
    pub partition: u32,
}

/// The answer to `cluster.step-down`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StepDownReply {
    /// Partition number.
    pub partition: u32,
    /// The engine that led it and released it.
    pub released_by: String,
}
