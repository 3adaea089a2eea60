//! Wiring: opens the store, connects to NATS, sets up streams, and runs the
//! partition, the relay, the intake consumers, the API and the metrics
//! gauges until shutdown.
//!
//! Shutdown drains in a stated order: stop intake (the NATS and HTTP APIs,
//! answering the requests in flight, and the consumers), let the partition
//! apply what is queued and flush, let the relay publish what is left, flush
//! the store once more, return.

use crate::api;
use crate::bus::{self, StreamSettings, intake, relay};
use crate::cluster;
use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::partition::Partition;
use async_nats::jetstream;
use jetsaga_core::saga::definition;
use jetsaga_protocol::{ErrorCode, Subjects};
use jetsaga_store::{GroupCommit, JournalTable, SagaTable, SledStore, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Oldest nats-server the engine runs against.
pub const MIN_NATS_VERSION: (u64, u64) = (2, 12);

/// Errors that keep the engine from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS is unreachable, or refused the credentials or TLS.
    #[error(
        "{code}: cannot connect to NATS at {url}: {source}; {}",
        crate::config::connect_hint(source),
        code = ErrorCode::NatsConnect,
    )]
    Connect {
        /// URL.
        url: String,
        /// Cause.
        source: async_nats::ConnectError,
    },
    /// The server is too old.
    #[error("{code}: nats-server {found} is too old; jetsaga needs {}.{} or newer (scripts/install-nats installs one)", MIN_NATS_VERSION.0, MIN_NATS_VERSION.1, code = ErrorCode::NatsVersion)]
    NatsVersion {
        /// Version reported by the server.
        found: String,
    },
    /// The server has no JetStream.
    #[error("{code}: the NATS server has JetStream disabled; start it with -js", code = ErrorCode::NatsJetStream)]
    NoJetStream,
    /// Streams or consumers could not be set up.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The HTTP API cannot listen on its address.
    #[error(
        "{code}: cannot listen for HTTP on {addr}: {source}; choose another --http-listen address (or `off`)",
        code = ErrorCode::HttpListen,
    )]
    HttpListen {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP API's certificate or key cannot be used.
    #[error(transparent)]
    HttpTls(#[from] api::https::TlsError),
    /// A definition file is invalid.
    #[error("{0}")]
    Definition(String),
    /// A component failed while running.
    #[error("{code}: {0}", code = ErrorCode::Engine)]
    Runtime(String),
}

/// Whether `version` (e.g. `2.12.1`) is at least `min`.
pub fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// Every definition file named by `paths` (directories are searched for
/// `*.yaml`, `*.yml` and `*.json`, not recursively), sorted.
pub fn definition_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            for entry in std::fs::read_dir(path)? {
                let p = entry?.path();
                let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
                if matches!(ext, "yaml" | "yml" | "json") {
                    files.push(p);
                }
            }
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    Ok(files)
}

/// Parses every definition file `paths` name (as [`definition_files`]
/// lists them), refusing the first invalid one.
fn read_definition_files(
    paths: &[PathBuf],
    limits: &definition::DefinitionLimits,
) -> Result<Vec<(PathBuf, definition::DefinitionFile)>, EngineError> {
    let files = definition_files(paths).map_err(|e| {
        EngineError::Definition(format!(
            "{}: cannot list definitions: {e}",
            ErrorCode::DefIo
        ))
    })?;
    files
        .into_iter()
        .map(|file| {
            let parsed = definition::parse_file_within(Path::new(&file), limits)
                .map_err(|e| EngineError::Definition(format!("{}: {e}", e.code())))?;
            Ok((file, parsed))
        })
        .collect()
}

/// Applies the definition files through `api` (the leader's partition, or
/// forwarded to it), as one request per file.
async fn apply_definition_files(
    api: &api::Api,
    files: &[(PathBuf, definition::DefinitionFile)],
) -> Result<(), EngineError> {
    for (file, parsed) in files {
        let applied = api
            .apply(&parsed.sagas, &parsed.services)
            .await
            .map_err(|e| {
                EngineError::Definition(format!("{}: {}: {}", file.display(), e.code, e.message))
            })?;
        for a in applied {
            tracing::info!(file = %file.display(), saga = %a.name, version = a.version, changed = a.changed, "definition loaded");
        }
    }
    Ok(())
}

/// Connects to NATS as `nats` says (one URL or a comma-separated list, its
/// credentials and TLS, through [`crate::config::connect_options`]) and
/// checks the server's version.
pub async fn connect(
    nats: &crate::config::NatsConfig,
    name: &str,
) -> Result<async_nats::Client, EngineError> {
    let url = &nats.url;
    let addrs = crate::config::server_addrs(url).map_err(|e| EngineError::Connect {
        url: url.to_string(),
        source: e.into(),
    })?;
    let client = crate::config::connect_options(nats)?
        .name(name)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Disconnected => {
                    tracing::warn!("lost the connection to NATS; reconnecting")
                }
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        })
        .connect(addrs)
        .await
        .map_err(|source| EngineError::Connect {
            url: url.to_string(),
            source,
        })?;
    let info = client.server_info();
    if !version_at_least(&info.version, MIN_NATS_VERSION) {
        return Err(EngineError::NatsVersion {
            found: info.version,
        });
    }
    Ok(client)
}

/// [`connect`], retried with a log line until NATS answers or `shutdown`
/// (`None`): an engine started before its NATS waits for it. Refusals that
/// retrying cannot cure (bad URL, credentials, an old server) end it.
async fn connect_retrying(
    nats: &crate::config::NatsConfig,
    shutdown: &CancellationToken,
) -> Result<Option<async_nats::Client>, EngineError> {
    let mut delay = Duration::from_millis(250);
    loop {
        match connect(nats, "jetsaga-engine").await {
            Ok(client) => return Ok(Some(client)),
            Err(EngineError::Connect { url, source }) if unreachable(&source) => {
                tracing::warn!(nats = %url, error = %source, retry_in = ?delay, "NATS is not reachable yet; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Whether `e` says no server answered (worth retrying), rather than that
/// one answered and refused (credentials, TLS), which retrying cannot cure.
fn unreachable(e: &async_nats::ConnectError) -> bool {
    use std::error::Error;
    use std::io::ErrorKind as K;
    match e.kind() {
        async_nats::ConnectErrorKind::TimedOut => true,
        async_nats::ConnectErrorKind::Io => {
            let io_kind = e
                .source()
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(std::io::Error::kind);
            match io_kind {
                Some(kind) => matches!(
                    kind,
                    K::ConnectionRefused
                        | K::ConnectionReset
                        | K::ConnectionAborted
                        | K::NotConnected
                        | K::TimedOut
                        | K::HostUnreachable
                        | K::NetworkUnreachable
                        | K::AddrNotAvailable
                ),
                None => {
                    let text = e.to_string();
                    text.contains("Connection refused") || text.contains("timed out")
                }
            }
        }
        _ => false,
    }
}

/// Catches the store of `partition` (in `dir`) up with its journal. A store that cannot
/// follow it (it diverged: its engine was deposed in the middle of a group
/// commit; or the records it needs were trimmed after a snapshot; or it is
/// empty and the journal starts from an upgraded store) is moved aside and
/// rebuilt from the latest snapshot and the journal.
async fn recover(
    store: Arc<SledStore>,
    cluster: &cluster::Cluster,
    partition: u32,
    data_dir: &Path,
    engine_id: &str,
    local: &cluster::members::Local,
) -> Result<Arc<SledStore>, EngineError> {
    use cluster::replica::ReplicaError;
    let journal_error = |e: ReplicaError| EngineError::Runtime(e.to_string());
    let Some(last) = cluster
        .journal
        .last(partition)
        .await
        .map_err(|e| EngineError::Runtime(e.to_string()))?
    else {
        let position = store.journal_position()?;
        if position.record > 0 {
            return Err(EngineError::Runtime(format!(
                "{}: the journal of partition {partition} is empty, but this engine's store applied {} of its records: the journal stream was deleted or replaced; restore it, or start this engine with an empty data directory",
                ErrorCode::Journal,
                position.record
            )));
        }
        return Ok(store);
    };
    let e = match cluster::replica::catch_up(
        &*store,
        &cluster.journal,
        partition,
        &last,
        &local.applied,
    )
    .await
    {
        Ok(n) => {
            local
                .caught_up
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            return Ok(store);
        }
        Err(
            e @ (ReplicaError::Diverged { .. }
            | ReplicaError::Gap { .. }
            | ReplicaError::Seeded { .. }),
        ) => e,
        Err(e) => return Err(journal_error(e)),
    };
    // The data directory may be a mount point (a volume): its contents
    // move, not the directory.
    let ms = crate::clock::now_ms();
    let aside = data_dir.join(format!("replaced-{ms}"));
    tracing::warn!(partition, error = %e, moved_to = %aside.display(), "the store cannot follow the journal; rebuilding it from the latest snapshot and the journal");
    drop(store);
    move_contents(data_dir, &aside).map_err(|io| {
        EngineError::Runtime(format!(
            "cannot move the store in {} aside to {}: {io}",
            data_dir.display(),
            aside.display()
        ))
    })?;
    let restoring = data_dir.join(format!("restoring-{ms}"));
    let restored = cluster
        .snapshots
        .restore(partition, &restoring)
        .await
        .map_err(EngineError::Runtime)?;
    let store = match restored {
        Some(restored) => {
            drop(restored);
            move_contents(&restoring, data_dir)
                .and_then(|()| std::fs::remove_dir(&restoring))
                .map_err(|io| {
                    EngineError::Runtime(format!(
                        "cannot move the restored store into {}: {io}",
                        data_dir.display()
                    ))
                })?;
            Arc::new(SledStore::open(data_dir)?)
        }
        None if matches!(e, ReplicaError::Diverged { .. }) => Arc::new(SledStore::open(data_dir)?),
        None => return Err(journal_error(e)),
    };
    if partition == 0 {
        let _ = std::fs::write(data_dir.join("engine-id"), format!("{engine_id}\n"));
    }
    let n = cluster::replica::catch_up(&*store, &cluster.journal, partition, &last, &local.applied)
        .await
        .map_err(journal_error)?;
    local
        .caught_up
        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    Ok(store)
}

/// Where this engine keeps the store of `partition`: the data directory
/// itself in an installation of one partition, `partition-<n>` in it
/// otherwise.
pub fn partition_dir(data_dir: &Path, partition: u32, partitions: u32) -> PathBuf {
    if partitions <= 1 {
        data_dir.to_path_buf()
    } else {
        data_dir.join(format!("partition-{partition}"))
    }
}

/// Moves every entry of `from` into `to` (created if missing), except
/// `engine-id`, the other partitions' stores and the directories of
/// earlier replacements and restores.
fn move_contents(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if entry.path() == to
            || name_str == "engine-id"
            || name_str.starts_with("replaced-")
            || name_str.starts_with("restoring-")
            || name_str.starts_with("partition-")
        {
            continue;
        }
        std::fs::rename(entry.path(), to.join(&name))?;
    }
    Ok(())
}

/// One partition as this engine holds it: its store, and what it reports
/// of it.
struct Slot {
    partition: u32,
    store: Arc<SledStore>,
    local: cluster::members::Local,
}

/// What the engine shares between its roles.
struct Shared {
    config: Config,
    slots: Vec<Slot>,
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    settings: StreamSettings,
    cluster: cluster::Cluster,
    role: api::route::Role,
    service: api::Api,
    /// Engines with a current heartbeat (this one included).
    alive: Arc<std::sync::atomic::AtomicUsize>,
    files: Vec<(PathBuf, definition::DefinitionFile)>,
    ready: Arc<std::sync::Once>,
    draining: Arc<std::sync::Once>,
}

impl Shared {
    /// Logs "engine draining" once.
    fn draining(&self) {
        self.draining
            .call_once(|| tracing::info!("engine draining"));
    }

    /// Whether this engine leads fewer partitions than its share.
    fn short_of_share(&self) -> bool {
        let alive = self.alive.load(std::sync::atomic::Ordering::Relaxed).max(1) as u32;
        (self.role.led().len() as u32) < self.config.partitions.div_ceil(alive)
    }

    /// Completes when this engine should hand `partition` to another to
    /// spread the partitions evenly ([`cluster::members::should_give_up`]):
    /// checked every few seconds, one partition (its highest led) at a time.
    async fn give_up_wanted(&self, partition: u32) {
        if self.config.partitions <= 1 {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(BALANCE_EVERY).await;
            if self.role.led().last() != Some(&partition) {
                continue;
            }
            if let Ok(engines) = cluster::members::engines(&self.cluster).await
                && cluster::members::should_give_up(
                    &engines,
                    &self.cluster.engine,
                    self.role.led().len(),
                    self.config.partitions,
                )
            {
                tracing::info!(
                    partition,
                    led = self.role.led().len(),
                    engines = engines.len(),
                    "handing a partition over to spread the partitions among the engines"
                );
                return;
            }
        }
    }

    /// Logs "engine ready" once.
    fn ready(&self) {
        self.ready.call_once(|| {
            tracing::info!(prefix = %self.config.prefix, nats = %self.config.nats.url, data_dir = %self.config.data_dir.display(), engine = %self.cluster.engine, "engine ready");
        });
    }
}

/// How often a leader checks whether to hand a partition over to spread
/// them among the engines.
const BALANCE_EVERY: Duration = Duration::from_secs(3);

/// How a term as leader ended.
enum Term {
    /// The engine shuts down (after a graceful drain and release).
    Shutdown,
    /// It handed the partition over and goes on as a standby.
    SteppedDown,
}

/// Runs the engine until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), EngineError> {
    config.validate()?;
    let http_security = api::http::Security::of(&config)?;
    metrics::install();
    let files = read_definition_files(&config.definitions, &config.definition_limits())?;
    let partitions = config.partitions;
    // The store is opened (and locked) before anything else; with more
    // than one partition, once NATS has confirmed the count, so that a
    // wrong `--partitions` leaves no directories behind.
    let mut stores = Vec::new();
    if partitions == 1 {
        stores.push(Arc::new(SledStore::open(&config.data_dir)?));
    }
    let engine_id =
        cluster::engine_id(config.engine_id.as_deref(), &config.data_dir).map_err(|e| {
            EngineError::Runtime(format!(
                "cannot keep the engine id in {}: {e}",
                config.data_dir.display()
            ))
        })?;
    let Some(client) = connect_retrying(&config.nats, &shutdown).await? else {
        return Ok(());
    };
    let subjects = Subjects::new(&config.prefix);
    let js = jetstream::new(client.clone());
    // A cluster still electing its JetStream meta leader answers no
    // account info for a moment: asked again for a while before the engine
    // says JetStream is off.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = js.query_account().await {
        if std::time::Instant::now() >= deadline || shutdown.is_cancelled() {
            return Err(EngineError::NoJetStream);
        }
        tracing::warn!(error = %e, "JetStream does not answer yet; asking again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let settings = StreamSettings {
        duplicate_window: config.duplicate_window,
        outcome_ttl: config.outcome_ttl,
        max_payload: config.max_payload,
        replicas: config.replicas,
    };
    bus::ensure_streams(&js, &subjects, &settings).await?;
    let chunk = client
        .server_info()
        .max_payload
        .saturating_sub(16 * 1024)
        .max(1024);
    let cluster = cluster::Cluster::join(
        &js,
        &subjects,
        &settings,
        chunk,
        engine_id.clone(),
        partitions,
        cluster::LeaseTiming {
            ttl: config.lease_ttl,
            renew: config.lease_renew,
        },
        config.snapshot_every,
    )
    .await
    .map_err(|e| EngineError::Runtime(e.to_string()))?;
    ::metrics::gauge!(metrics::PARTITIONS).set(f64::from(partitions));
    if partitions > 1 {
        for p in 0..partitions {
            let dir = partition_dir(&config.data_dir, p, partitions);
            stores.push(Arc::new(SledStore::open(&dir)?));
        }
    }
    let mut slots = Vec::new();
    for (p, store) in (0..partitions).zip(stores) {
        let local = cluster::members::Local::default();
        let dir = partition_dir(&config.data_dir, p, partitions);
        let store = recover(store, &cluster, p, &dir, &engine_id, &local).await?;
        slots.push(Slot {
            partition: p,
            store,
            local,
        });
    }

    let http_listener = match &config.http_listen {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|source| EngineError::HttpListen {
                        addr: addr.clone(),
                        source,
                    })?;
            let bound = listener
                .local_addr()
                .map_or_else(|_| addr.clone(), |a| a.to_string());
            tracing::info!(
                addr = %bound,
                tls = http_security.tls.is_some(),
                tokens = config.http_tokens.len(),
                "http listening"
            );
            Some(listener)
        }
        None => None,
    };

    let role = api::route::Role::of(partitions);
    // A forwarded request waits for a takeover: a lease TTL and the new
    // leader's catching up.
    let forward_wait = config.lease_ttl * 3 + Duration::from_secs(2);
    let service = api::Api::routed(
        slots
            .iter()
            .map(|s| s.store.clone() as Arc<dyn jetsaga_store::Store>)
            .collect(),
        role.clone(),
        Some(api::route::Forwarder::new(
            client.clone(),
            subjects.clone(),
            forward_wait,
        )),
    )
    .with_environment(config.environment.clone())
    .with_definition_limits(config.definition_limits())
    .with_cluster(cluster.clone())
    .with_queues(client.clone(), subjects.clone());

    // The doors every engine serves, leader or not.
    let doors_stop = CancellationToken::new();
    let doors = TaskTracker::new();
    {
        let sub = api::listen(&client, &subjects).await.map_err(|e| {
            EngineError::Runtime(format!("cannot subscribe to the API subjects: {e}"))
        })?;
        let (client, subjects, service, stop) = (
            client.clone(),
            subjects.clone(),
            service.clone(),
            doors_stop.clone(),
        );
        doors.spawn(async move {
            if let Err(e) = api::serve(client, sub, subjects, service, api::Door::Api, stop).await {
                tracing::error!(error = %e, "API stopped");
            }
        });
    }
    if let Some(listener) = http_listener {
        let (client, service, max_payload, limits, stop) = (
            client.clone(),
            service.clone(),
            config.max_payload,
            api::http::Limits::of(&config),
            doors_stop.clone(),
        );
        doors.spawn(async move {
            let served = api::http::serve(
                listener,
                service,
                client,
                max_payload,
                limits,
                http_security,
                stop,
            );
            if let Err(e) = served.await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }
    let alive = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    doors.spawn(cluster::members::beat(
        cluster.clone(),
        slots.iter().map(|s| s.local.clone()).collect(),
        alive.clone(),
        doors_stop.clone(),
    ));
    doors.spawn(metrics::poll_gauges(
        slots.iter().map(|s| s.store.clone()).collect(),
        js.clone(),
        subjects.clone(),
        metrics::POLL_EVERY,
        doors_stop.clone(),
    ));
    doors.close();

    let shared = Shared {
        config,
        slots,
        client: client.clone(),
        js,
        subjects,
        settings,
        cluster,
        role,
        service,
        alive,
        files,
        ready: Arc::new(std::sync::Once::new()),
        draining: Arc::new(std::sync::Once::new()),
    };
    if !shared.files.is_empty() {
        // A standby hands its definition files to the leader once there is
        // one; the leader applies its own when it takes over.
        let (service, files, role) = (
            shared.service.clone(),
            shared.files.clone(),
            shared.role.clone(),
        );
        let stop = doors_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = async {
                    // The leader applies its own.
                    if role.led().len() == role.partitions() as usize { return Ok(()); }
                    apply_definition_files(&service, &files).await
                } => if let Err(e) = r {
                    tracing::error!(error = %e, "cannot apply the definition files through the leader");
                }
            }
        });
    }

    let result = every_partition(&shared, &shutdown).await;
    shared.draining();
    doors_stop.cancel();
    doors.wait().await;
    for slot in &shared.slots {
        slot.store.flush().await?;
    }
    let _ = client.flush().await;
    match &result {
        Ok(()) => tracing::info!("engine stopped"),
        Err(e) => tracing::error!(error = %e, "engine stopped"),
    }
    result
}

/// [`roles`] of every partition at once, until `shutdown`; the first
/// that fails stops the others (they drain and hand their partitions
/// over) and is the answer.
async fn every_partition(shared: &Shared, shutdown: &CancellationToken) -> Result<(), EngineError> {
    let stop = shutdown.child_token();
    let results = futures::future::join_all(shared.slots.iter().map(|slot| {
        let stop = stop.clone();
        async move {
            let r = roles(shared, slot, &stop).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        }
    }))
    .await;
    results.into_iter().collect()
}

/// Standby and leader of `slot`'s partition, in turn, until `shutdown`.
async fn roles(
    shared: &Shared,
    slot: &Slot,
    shutdown: &CancellationToken,
) -> Result<(), EngineError> {
    let p = slot.partition;
    let mut not_before = None;
    loop {
        // Standby: apply the journal as it grows until the lease is ours.
        let tail_stop = CancellationToken::new();
        let tail = tokio::spawn(cluster::replica::tail(
            slot.store.clone(),
            shared.cluster.journal.clone(),
            p,
            slot.local.applied.clone(),
            (
                shared.cluster.snapshots.clone(),
                shared.cluster.snapshot_every,
            ),
            tail_stop.clone(),
        ));
        let mut leaderless_since = std::time::Instant::now();
        let mut tail = tail;
        let held = tokio::select! {
            held = shared.cluster.leases.acquire(p, not_before, shutdown, || shared.short_of_share(), |holder, renewed| {
                if holder.engine != shared.cluster.engine {
                    // Led until its last renewal seen: leaderless since.
                    if renewed {
                        leaderless_since = std::time::Instant::now();
                    }
                    shared.ready();
                }
            }) => held,
            // A tail that ends on its own failed: its store cannot follow
            // the journal.
            r = &mut tail => return Err(match r {
                Ok(Ok(())) => EngineError::Runtime("the journal reader stopped".into()),
                Ok(Err(e)) => EngineError::Runtime(e.to_string()),
                Err(e) => EngineError::Runtime(format!("the journal reader failed: {e}")),
            }),
        };
        // Renewed from now on, however long the tail takes to stop (it may
        // be writing a snapshot).
        let renewal = held.map(|held| {
            let facts = (held.epoch, held.own_previous.clone(), held.expired);
            (facts, Renewal::start(shared.cluster.leases.clone(), held))
        });
        // One writer at a time: the tail is done before the leader writes.
        tail_stop.cancel();
        match tail.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(EngineError::Runtime(e.to_string())),
            Err(e) => {
                return Err(EngineError::Runtime(format!(
                    "the journal reader failed: {e}"
                )));
            }
        }
        let Some((facts, renewal)) = renewal else {
            return Ok(());
        };
        ::metrics::histogram!(metrics::LEADERLESS).record(leaderless_since.elapsed().as_secs_f64());
        match lead(shared, slot, facts, renewal, shutdown).await? {
            Term::Shutdown => return Ok(()),
            Term::SteppedDown => {
                // Another engine gets the partition first.
                not_before = Some(std::time::Instant::now() + shared.config.lease_ttl);
            }
        }
    }
}

/// A failure of a takeover before its first record: the journal did not
/// answer (worth standing by and trying again), or anything else.
enum Unanswered {
    Journal(cluster::JournalError),
    Fatal(EngineError),
}

/// A lease renewed on a task of its own from the moment it is taken, so
/// that a takeover that takes long (a long journal to catch up, JetStream
/// electing a leader) does not lose it meanwhile.
struct Renewal {
    held: Arc<tokio::sync::Mutex<cluster::Held>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<cluster::Lost>>,
}

impl Renewal {
    fn start(leases: cluster::Leases, held: cluster::Held) -> Self {
        let held = Arc::new(tokio::sync::Mutex::new(held));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (held, stop) = (held.clone(), stop.clone());
            async move {
                let mut held = held.lock().await;
                leases.keep(&mut held, &stop).await
            }
        });
        Self { held, stop, task }
    }

    /// Stops renewing (the task must not have ended) and releases the
    /// lease, so that another engine takes it at once.
    async fn release(self, leases: &cluster::Leases) {
        self.stop.cancel();
        let _ = self.task.await;
        let held = self.held.lock().await;
        leases.release(&held).await;
    }
}

/// Gives a lease taken up before the term could begin (NATS did not
/// answer) and goes back to standing by.
async fn stand_by(
    shared: &Shared,
    partition: u32,
    renewal: Renewal,
    error: impl std::fmt::Display,
) -> Result<Term, EngineError> {
    tracing::warn!(partition, %error, "cannot take over: NATS does not answer; standing by");
    renewal.release(&shared.cluster.leases).await;
    Ok(Term::SteppedDown)
}

/// One term as the leader of `slot`'s partition: catch up, append the epoch's
/// first record (the fence), run the partition and everything around it
/// while the lease holds, then drain and release it.
async fn lead(
    shared: &Shared,
    slot: &Slot,
    (epoch, own_previous, expired): (u64, Option<cluster::lease::LeaseValue>, bool),
    mut renewal: Renewal,
    shutdown: &CancellationToken,
) -> Result<Term, EngineError> {
    let runtime = |e: String| EngineError::Runtime(e);
    let config = &shared.config;
    let p = slot.partition;
    let partitions = config.partitions;
    let store = &slot.store;
    let journal = &shared.cluster.journal;
    // Until the term's first record is in the journal, nothing of it is
    // written: a journal that does not answer (JetStream electing a leader
    // for it) sends the engine back to standing by, not out.
    let replica = |e: cluster::replica::ReplicaError| match e {
        cluster::replica::ReplicaError::Journal(e @ cluster::JournalError::Nats { .. }) => {
            Unanswered::Journal(e)
        }
        other => Unanswered::Fatal(runtime(other.to_string())),
    };
    // Catch up with every record of the previous leader.
    let last = match journal.last(p).await {
        Ok(last) => last,
        Err(e) => return stand_by(shared, p, renewal, e).await,
    };
    if let Some(last) = &last {
        let n = match cluster::replica::catch_up(&**store, journal, p, last, &slot.local.applied)
            .await
            .map_err(replica)
        {
            Ok(n) => n,
            Err(Unanswered::Journal(e)) => return stand_by(shared, p, renewal, e).await,
            Err(Unanswered::Fatal(e)) => return Err(e),
        };
        slot.local
            .caught_up
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    let mut position = store.journal_position()?;
    // A snapshot, when one is due, while the store is quiet: every
    // `snapshot_every` records, and for a store that held state before the
    // journal existed (so that other engines can start from it).
    let latest = shared.cluster.snapshots.latest(p).await;
    let upgraded = last.is_none() && store.sagas_len() > 0 && latest.is_none();
    let due = position
        .record
        .saturating_sub(latest.map_or(0, |p| p.record))
        >= shared.cluster.snapshot_every;
    if upgraded || due {
        let outbox_from = last.map_or(0, |m| m.outbox_from);
        if let Err(e) = shared.cluster.snapshots.take(store, p, outbox_from).await {
            tracing::warn!(error = %e, "snapshot failed; leading without it");
        }
        position = store.journal_position()?;
    }
    // Publish again what the previous leader may not have published;
    // unless this engine was that leader and its store holds every record
    // it wrote (with their outbox rows): a restart.
    let own_records = match (&last, &own_previous) {
        (Some(last), Some(own)) => {
            own.epoch == last.epoch
                && slot
                    .local
                    .caught_up
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == 0
                && position.epoch == last.epoch
                && position.record == last.number
        }
        _ => false,
    };
    let outbox = match &last {
        Some(last) if !own_records => {
            match cluster::replica::outbox_to_restore(journal, p, last.outbox_from, last)
                .await
                .map_err(replica)
            {
                Ok(outbox) => outbox,
                Err(Unanswered::Journal(e)) => return stand_by(shared, p, renewal, e).await,
                Err(Unanswered::Fatal(e)) => return Err(e),
            }
        }
        _ => Vec::new(),
    };
    // The first record follows the partition's last message (the fence),
    // which may be a part of a record whose append failed halfway.
    let last_seq = last.map_or(0, |m| m.fence);
    // Where records may hold outbox messages not yet published: from the
    // new first record on (it carries what was restored), or, when this
    // engine's own store still holds its earlier records' rows, from where
    // its last record said.
    let outbox_from = match &last {
        Some(last) if own_records => last.outbox_from.min(last_seq + 1),
        _ => last_seq + 1,
    };
    let first = cluster::Record {
        number: position.record + 1,
        epoch,
        engine: shared.cluster.engine.clone(),
        seeded: last.is_none() && store.sagas_len() > 0,
        outbox_from,
        changes: if outbox.is_empty() {
            Vec::new()
        } else {
            vec![jetsaga_store::Change {
                outbox,
                ..Default::default()
            }]
        },
        ..Default::default()
    };
    let restored = first.outbox().count();
    let first_seq = match journal.append(p, &first, last_seq).await {
        Ok(seq) => seq,
        Err(cluster::JournalError::Fenced { .. }) => {
            tracing::warn!(
                "another engine wrote to the journal as this one took the lease; standing by"
            );
            renewal.release(&shared.cluster.leases).await;
            return Ok(Term::SteppedDown);
        }
        Err(e @ cluster::JournalError::Nats { .. }) => {
            return stand_by(shared, p, renewal, e).await;
        }
        Err(e) => return Err(runtime(e.to_string())),
    };
    store.commit_journaled(
        &first.changes,
        jetsaga_store::JournalPosition {
            record: first.number,
            epoch: first.epoch,
            resume_seq: first_seq,
        },
    )?;
    store.flush().await?;
    slot.local
        .applied
        .store(first.number, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        partition = p,
        epoch,
        record = first.number,
        restored_outbox = restored,
        "leading partition {p}"
    );

    let marks = relay::Marks {
        journaled: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        relayed: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    let mut writer = crate::partition::JournalWriter::new(
        journal.clone(),
        p,
        epoch,
        shared.cluster.engine.clone(),
        first.number,
        first_seq,
        marks.clone(),
    )
    .with_applied(slot.local.applied.clone());
    // The outbox rows restored above are unpublished until the relay says
    // otherwise: later records point back at this one until then.
    writer.appended(outbox_from, store.outbox_written());

    // The consumers; NATS not answering here (say, electing a stream
    // leader) sends the engine back to standing by: nothing of the term is
    // answered yet.
    let consumers = async {
        // The leader of partition 0 also reads the durable starts (and
        // runs the triggers) for every partition.
        // Results: retryable ones and replays on the results work queue,
        // terminal outcomes (each its step's idempotency record) on the
        // outcomes stream.
        let mut streams = vec![
            (
                shared.subjects.results_stream(),
                shared.subjects.engine_consumer_of(p),
                shared.subjects.results_of(p, partitions),
            ),
            (
                shared.subjects.outcomes_stream(),
                shared.subjects.engine_outcomes_consumer_of(p),
                shared.subjects.outcomes_of(p),
            ),
        ];
        if p == 0 {
            streams.push((
                shared.subjects.starts_stream(),
                shared.subjects.engine_consumer(),
                shared.subjects.starts_wildcard(),
            ));
        }
        let mut consumers = Vec::new();
        for (stream, name, filter) in streams {
            // The previous leader died with results and starts pulled and
            // not acknowledged: deliver them again now, not after the ack
            // wait.
            let restart = if expired {
                let restart = bus::reset_engine_consumer(&shared.js, &stream, &name).await?;
                if restart.is_some() {
                    tracing::info!(partition = p, stream = %stream, "recreated the engine's consumer: what the previous leader had pulled comes again at once");
                }
                restart
            } else {
                None
            };
            consumers.push(
                bus::engine_consumer(&shared.js, &stream, name, filter, config.ack_wait, restart)
                    .await?,
            );
        }
        Ok::<_, bus::BusError>(consumers)
    };
    let mut consumers = match consumers.await {
        Ok(c) => c.into_iter(),
        Err(e) => return stand_by(shared, p, renewal, e).await,
    };
    let (results, outcomes, starts) = (consumers.next(), consumers.next(), consumers.next());
    let relay_wake = Arc::new(Notify::new());
    let (partition, handle) = Partition::new(
        store.clone(),
        shared.subjects.clone(),
        shared.client.clone(),
        relay_wake.clone(),
        config.max_payload,
        config.batch_size,
    );
    let partition = partition
        .with_number(p, partitions)
        .with_max_running_sagas(config.max_running_sagas)
        .with_environment(config.environment.clone())
        .with_journal(writer);
    let mut partition_task = tokio::spawn(partition.run());
    let relay_stop = CancellationToken::new();
    let relay_task = tokio::spawn(relay::run(
        store.clone(),
        shared.js.clone(),
        relay_wake,
        marks,
        relay_stop.clone(),
        Duration::from_secs(5),
    ));

    let intake_stop = CancellationToken::new();
    let intake_tasks = TaskTracker::new();
    let prefix_tokens = config.prefix.split('.').count();
    // Starts (durable and triggered) go to the partition of their key,
    // here or through its leader: with one partition, this one.
    let starts_to: Arc<dyn crate::partition::Starts> = if partitions == 1 {
        Arc::new(handle.clone())
    } else {
        Arc::new(shared.service.clone())
    };
    let feeds = [
        results.map(|c| (intake::Feed::Results(handle.clone()), c)),
        outcomes.map(|c| (intake::Feed::Results(handle.clone()), c)),
        starts.map(|c| (intake::Feed::Starts(starts_to.clone()), c)),
    ];
    for (feed, consumer) in feeds.into_iter().flatten() {
        intake_tasks.spawn(intake::run(
            feed,
            consumer,
            config.max_payload,
            prefix_tokens,
            intake_stop.clone(),
        ));
    }
    let trigger_guard = (p == 0).then(|| {
        let (guard, signals) =
            crate::triggers::ApplyGuard::new(shared.js.clone(), shared.subjects.clone());
        intake_tasks.spawn(crate::triggers::run(
            crate::triggers::Runtime {
                js: shared.js.clone(),
                subjects: shared.subjects.clone(),
                settings: shared.settings.clone(),
                store: store.clone(),
                starts: starts_to.clone(),
                ack_wait: config.ack_wait,
            },
            signals,
            intake_stop.clone(),
        ));
        guard
    });
    if let Some(period) = config.retention.period() {
        intake_tasks.spawn(crate::retention::run(
            handle.clone(),
            period,
            intake_stop.clone(),
        ));
    }
    if trigger_guard.is_some() {
        shared.role.set_triggers(trigger_guard.clone());
    }
    shared.role.set(p, Some(handle.clone()));
    // The leader's own definition files, through its partition.
    apply_definition_files(&shared.service.leader_of(p), &shared.files).await?;
    // Ready means listening: the trigger subjects of the definitions are
    // captured before the engine says so.
    if let Some(guard) = &trigger_guard {
        guard.applied().await;
    }
    {
        let sub = api::listen_as_leader(&shared.client, &shared.subjects, p)
            .await
            .map_err(|e| {
                runtime(format!(
                    "cannot subscribe to the leader's API subjects: {e}"
                ))
            })?;
        let (client, subjects, service, stop) = (
            shared.client.clone(),
            shared.subjects.clone(),
            shared.service.leader_of(p),
            intake_stop.clone(),
        );
        intake_tasks.spawn(async move {
            if let Err(e) =
                api::serve(client, sub, subjects, service, api::Door::Leader(p), stop).await
            {
                tracing::error!(error = %e, "leader API stopped");
            }
        });
    }
    intake_tasks.close();
    // The partition stops once the doors and intake that hold its handle
    // are done: no other handle may outlive them.
    drop(handle);
    drop(starts_to);
    slot.local
        .leading
        .store(true, std::sync::atomic::Ordering::Relaxed);
    ::metrics::gauge!(metrics::LEADING).increment(1.0);
    // A leader applies no records of another: no lag to show.
    ::metrics::gauge!(metrics::STANDBY_LAG_MS, "partition" => p.to_string()).set(0.0);
    shared.ready();

    enum End {
        Shutdown,
        StepDown,
        Lost(cluster::Lost),
        Partition(Result<Result<(), crate::partition::PartitionError>, tokio::task::JoinError>),
    }
    let end = tokio::select! {
        _ = shutdown.cancelled() => End::Shutdown,
        _ = shared.role.step_down_requested(p) => End::StepDown,
        _ = shared.give_up_wanted(p) => End::StepDown,
        lost = &mut renewal.task => End::Lost(
            lost.ok()
                .flatten()
                .unwrap_or_else(|| cluster::Lost::Expired("the renewal stopped".into())),
        ),
        r = &mut partition_task => End::Partition(r),
    };
    // Drain: the doors stop taking new work for the partition, the
    // partition applies what is queued and stops, the relay publishes.
    if matches!(end, End::Shutdown) {
        shared.draining();
    }
    shared.role.set(p, None);
    if trigger_guard.is_some() {
        shared.role.set_triggers(None);
    }
    slot.local
        .leading
        .store(false, std::sync::atomic::Ordering::Relaxed);
    ::metrics::gauge!(metrics::LEADING).decrement(1.0);
    intake_stop.cancel();
    intake_tasks.wait().await;
    let (end, partition_result) = match end {
        End::Partition(r) => (End::Partition(Ok(Ok(()))), r),
        other => (other, partition_task.await),
    };
    relay_stop.cancel();
    let _ = relay_task.await;
    if let Err(e) = store.flush().await {
        renewal.stop.cancel();
        return Err(e.into());
    }
    if !matches!(partition_result, Ok(Ok(()))) {
        // Exiting: the lease runs out by itself.
        renewal.stop.cancel();
    }
    match partition_result {
        Ok(Ok(())) => {}
        Ok(Err(crate::partition::PartitionError::Journal(e))) => {
            // The store holds a record the journal refused: only a restart
            // (which rebuilds the store from the journal) can go on.
            return Err(EngineError::Runtime(format!(
                "{e}; this engine stops applying partition {p} and exits, so that it restarts as a standby"
            )));
        }
        Ok(Err(e)) => return Err(EngineError::Runtime(e.to_string())),
        Err(e) => return Err(EngineError::Runtime(format!("partition task failed: {e}"))),
    }
    match end {
        End::Lost(lost) => {
            tracing::warn!(partition = p, %lost, "lost the lease of partition {p}; standing by");
            Ok(Term::SteppedDown)
        }
        End::Shutdown => {
            renewal.release(&shared.cluster.leases).await;
            Ok(Term::Shutdown)
        }
        End::StepDown | End::Partition(_) => {
            renewal.release(&shared.cluster.leases).await;
            tracing::info!(partition = p, "stepped down");
            Ok(Term::SteppedDown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert!(version_at_least("2.12.0", (2, 12)));
        assert!(version_at_least("2.15.1", (2, 12)));
        assert!(version_at_least("3.0.0", (2, 12)));
        assert!(!version_at_least("2.9.25", (2, 12)));
        assert!(!version_at_least("garbage", (2, 12)));
    }
}
