//! High availability on JetStream: a journal per partition, a leader lease
//! per partition, engines that tail the journal and take over.
//!
//! - [`journal`]: each group commit of a partition is one record on the
//!   replicated stream `<PREFIX>_JOURNAL`, appended (fenced on the previous
//!   record) before anything of the batch is published or answered.
//! - [`lease`]: which engine should lead a partition, in the key-value
//!   bucket `<PREFIX>_CLUSTER`.
//! - [`replica`]: the local store as the journal's materialisation: the
//!   last applied record is stored with the state, standbys apply records
//!   as they come, and an engine catches up before it leads.
//! - [`members`]: each engine's heartbeat in `<PREFIX>_ENGINES`, and
//!   `cluster.status` from it.
//!
//! The installation's partition count is recorded under `partitions` in
//! the cluster bucket at the first start; an engine configured otherwise
//! refuses to start.

pub mod journal;
pub mod lease;
pub mod members;
pub mod replica;
pub mod snapshot;

use async_nats::jetstream::{self, kv};
use backon::Retryable;
use jetsaga_protocol::{ErrorCode, Subjects};
use std::path::Path;
use std::time::Duration;

use crate::streams::StreamSettings;
pub use journal::{Journal, JournalError, Mark, Record};
pub use lease::{Held, LeaseTiming, Leases, Lost};

/// Errors while joining the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A bucket or the journal stream could not be set up.
    #[error("{code}: cannot set up {what}: {reason}", code = ErrorCode::NatsStream)]
    Setup {
        /// Which.
        what: String,
        /// Cause.
        reason: String,
    },
    /// The installation records another partition count.
    #[error("{code}: the installation under prefix {prefix:?} has {recorded} partitions, recorded in NATS at its first start, and this engine was configured with {configured}; start it with --partitions {recorded} (the count is fixed for the installation's life), or give it another prefix", code = ErrorCode::Partitions)]
    Partitions {
        /// Prefix.
        prefix: String,
        /// Recorded count.
        recorded: u32,
        /// Configured count.
        configured: u32,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] jetsaga_store::StoreError),
}

/// What an engine needs of the cluster.
#[derive(Clone)]
pub struct Cluster {
    /// The journal stream.
    pub journal: Journal,
    /// The leases.
    pub leases: Leases,
    /// The heartbeats.
    pub engines: kv::Store,
    /// This engine's id.
    pub engine: String,
    /// The installation's partition count.
    pub partitions: u32,
    /// The partitions' snapshots.
    pub snapshots: snapshot::Snapshots,
    /// Records between two snapshots.
    pub snapshot_every: u64,
}

impl Cluster {
    /// Sets up the journal stream and the buckets (idempotent: every engine
    /// start calls it) and checks the partition count.
    #[allow(clippy::too_many_arguments)]
    pub async fn join(
        js: &jetstream::Context,
        subjects: &Subjects,
        settings: &StreamSettings,
        chunk: usize,
        engine: String,
        partitions: u32,
        timing: LeaseTiming,
        snapshot_every: u64,
    ) -> Result<Self, ClusterError> {
        let journal = Journal::ensure(js, subjects, settings, chunk)
            .await
            .map_err(|e| ClusterError::Setup {
                what: "the journal stream".into(),
                reason: e.to_string(),
            })?;
        let cluster_kv = bucket(
            js,
            kv::Config {
                bucket: subjects.cluster_bucket(),
                description:
                    "jetsaga: the installation's partition count and the partitions' leases".into(),
                history: 1,
                num_replicas: settings.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        let engines = bucket(
            js,
            kv::Config {
                bucket: subjects.engines_bucket(),
                description: "jetsaga: each engine's heartbeat".into(),
                history: 1,
                max_age: members::HEARTBEAT_AGE,
                num_replicas: settings.replicas,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            },
        )
        .await?;
        check_partitions(&cluster_kv, subjects.prefix(), partitions).await?;
        let snapshots = snapshot::Snapshots::open(js, subjects, settings.replicas, journal.clone())
            .await
            .map_err(|reason| ClusterError::Setup {
                what: "the snapshot bucket".into(),
                reason,
            })?;
        Ok(Self {
            journal,
            leases: Leases::new(cluster_kv, engine.clone(), timing),
            engines,
            engine,
            partitions,
            snapshots,
            snapshot_every,
        })
    }
}

async fn bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, ClusterError> {
    let name = config.bucket.clone();
    crate::streams::get_or_create(
        &name,
        || js.get_key_value(&name),
        || js.create_key_value(config.clone()),
    )
    .await
    .map_err(|first| ClusterError::Setup {
        what: format!("the key-value bucket {name}"),
        reason: first.to_string(),
    })
}

/// How many times the partition count is asked for before an engine gives up.
const SETUP_ATTEMPTS: usize = 8;

/// Records `partitions` at the first start; refuses another count later.
async fn check_partitions(
    kv: &kv::Store,
    prefix: &str,
    partitions: u32,
) -> Result<(), ClusterError> {
    let setup = |reason: String| ClusterError::Setup {
        what: "the installation's partition count".into(),
        reason,
    };
    // A bucket another engine created a moment ago may not answer yet
    // (no responders while its replicas elect a leader): asked again.
    let read = || async {
        match kv.create("partitions", partitions.to_string().into()).await {
            Ok(_) => Ok(None),
            Err(_) => match kv.get("partitions").await {
                Ok(Some(recorded)) => Ok(Some(recorded)),
                Ok(None) => Err("the record exists but cannot be read".to_string()),
                Err(e) => Err(e.to_string()),
            },
        }
    };
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(SETUP_ATTEMPTS);
    let recorded = match read
        .retry(backoff)
        .notify(|e, _| tracing::warn!(error = %e, "the installation's partition count cannot be read yet; retrying"))
        .await
    {
        Ok(None) => {
            tracing::info!(partitions, "recorded the installation's partition count");
            return Ok(());
        }
        Ok(Some(recorded)) => recorded,
        Err(e) => return Err(setup(e)),
    };
    let recorded: u32 = std::str::from_utf8(&recorded)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| setup(format!("the recorded count {recorded:?} is not a number")))?;
    if recorded != partitions {
        return Err(ClusterError::Partitions {
            prefix: prefix.to_string(),
            recorded,
            configured: partitions,
        });
    }
    Ok(())
}

/// This engine's id: `engine_id` from the configuration, else the one kept
/// in the data directory (made at its first start from the host name and a
/// random suffix), so that a restarted engine is the same engine and takes
/// its own leases back at once.
pub fn engine_id(configured: Option<&str>, data_dir: &Path) -> std::io::Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let file = data_dir.join("engine-id");
    if let Ok(id) = std::fs::read_to_string(&file) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let id = format!("{}-{:06x}", host_name(), rand::random::<u32>() & 0xff_ffff);
    std::fs::write(&file, format!("{id}\n"))?;
    Ok(id)
}

/// The host's name (`localhost` when it cannot be read), as a key-safe token.
pub fn host_name() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "localhost".into());
    let cleaned: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "localhost".into()
    } else {
        cleaned
    }
}

/// How long the engine waits between renewals and heartbeats by default.
pub const DEFAULT_LEASE: LeaseTiming = LeaseTiming {
    ttl: Duration::from_secs(3),
    renew: Duration::from_secs(1),
};
