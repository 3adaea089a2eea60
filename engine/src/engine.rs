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
use crate::config::{Config, ConfigError};
use crate::metrics;
use crate::partition::Partition;
use async_nats::jetstream;
use jetsaga_core::saga::definition;
use jetsaga_protocol::{ErrorCode, Subjects};
use jetsaga_store::{DefinitionTable, ServiceTable, SledStore, Store, StoreError};
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

fn apply_definition_files(
    store: &(impl DefinitionTable + ServiceTable + ?Sized),
    paths: &[PathBuf],
    limits: &definition::DefinitionLimits,
) -> Result<(), EngineError> {
    let files = definition_files(paths).map_err(|e| {
        EngineError::Definition(format!(
            "{}: cannot list definitions: {e}",
            ErrorCode::DefIo
        ))
    })?;
    for file in files {
        let parsed = definition::parse_file_within(Path::new(&file), limits)
            .map_err(|e| EngineError::Definition(format!("{}: {e}", e.code())))?;
        for def in parsed.sagas {
            let applied = store.put_definition(&def)?;
            tracing::info!(file = %file.display(), saga = %applied.name, version = applied.version, changed = applied.changed, "definition loaded");
        }
        // Service policies (`jetsaga_core::admission`); the partition loads them at start.
        for policy in parsed.services {
            let changed = store.put_service_policy(&policy)?;
            tracing::info!(file = %file.display(), service = %policy.service, changed, "service policy loaded");
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

/// Runs the engine until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), EngineError> {
    config.validate()?;
    metrics::install();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.data_dir)?);
    apply_definition_files(&*store, &config.definitions, &config.definition_limits())?;
    let client = connect(&config.nats, "jetsaga-engine").await?;
    let subjects = Subjects::new(&config.prefix);
    let js = jetstream::new(client.clone());
    if js.query_account().await.is_err() {
        return Err(EngineError::NoJetStream);
    }
    let settings = StreamSettings {
        duplicate_window: config.duplicate_window,
        max_payload: config.max_payload,
        replicas: config.replicas,
    };
    bus::ensure_streams(&js, &subjects, &settings).await?;
    let results = bus::engine_consumer(
        &js,
        &subjects,
        &subjects.results_stream(),
        subjects.results_wildcard(),
        config.ack_wait,
    )
    .await?;
    let starts = bus::engine_consumer(
        &js,
        &subjects,
        &subjects.starts_stream(),
        subjects.starts_wildcard(),
        config.ack_wait,
    )
    .await?;

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
            tracing::info!(addr = %bound, "http listening");
            Some(listener)
        }
        None => None,
    };

    let relay_wake = Arc::new(Notify::new());
    let (partition, handle) = Partition::new(
        store.clone(),
        subjects.clone(),
        client.clone(),
        relay_wake.clone(),
        config.max_payload,
        config.batch_size,
    );
    let partition = partition.with_max_running_sagas(config.max_running_sagas);
    let partition = partition.with_environment(config.environment.clone());
    let intake_stop = CancellationToken::new();
    let relay_stop = CancellationToken::new();
    let intake_tasks = TaskTracker::new();
    let prefix_tokens = config.prefix.split('.').count();
    for (source, consumer) in [
        (intake::Source::Results, results),
        (intake::Source::Starts, starts),
    ] {
        intake_tasks.spawn(intake::run(
            source,
            consumer,
            handle.clone(),
            config.max_payload,
            prefix_tokens,
            intake_stop.clone(),
        ));
    }
    // The service both API adapters call; it holds a partition handle, so
    // every copy must be gone (dropped below, or with its adapter's task)
    // before the partition can stop.
    let (trigger_guard, trigger_signals) =
        crate::triggers::ApplyGuard::new(js.clone(), subjects.clone());
    let service = api::Api::new(store.clone(), handle.clone())
        .with_environment(config.environment.clone())
        .with_definition_limits(config.definition_limits())
        .with_triggers(trigger_guard.clone());
    intake_tasks.spawn(crate::triggers::run(
        crate::triggers::Runtime {
            js: js.clone(),
            subjects: subjects.clone(),
            settings: settings.clone(),
            store: store.clone(),
            partition: handle.clone(),
            ack_wait: config.ack_wait,
        },
        trigger_signals,
        intake_stop.clone(),
    ));
    // Ready means listening: the trigger subjects of the definitions loaded
    // above are captured before the engine says so.
    trigger_guard.applied().await;
    {
        // Ready means answering: the API's subscription is live at the
        // server before the engine says so.
        let sub = api::listen(&client, &subjects).await.map_err(|e| {
            EngineError::Runtime(format!("cannot subscribe to the API subjects: {e}"))
        })?;
        let (client, subjects, service, stop) = (
            client.clone(),
            subjects.clone(),
            service.clone(),
            intake_stop.clone(),
        );
        intake_tasks.spawn(async move {
            if let Err(e) = api::serve(client, sub, subjects, service, stop).await {
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
            intake_stop.clone(),
        );
        intake_tasks.spawn(async move {
            if let Err(e) =
                api::http::serve(listener, service, client, max_payload, limits, stop).await
            {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
    }
    if let Some(period) = config.retention.period() {
        intake_tasks.spawn(crate::retention::run(
            handle.clone(),
            period,
            intake_stop.clone(),
        ));
    }
    intake_tasks.spawn(metrics::poll_gauges(
        store.clone(),
        js.clone(),
        subjects.clone(),
        metrics::POLL_EVERY,
        intake_stop.clone(),
    ));
    intake_tasks.close();
    drop(handle);
    drop(service);
    let mut partition_task = tokio::spawn(partition.run());
    let relay_task = tokio::spawn(relay::run(
        store.clone(),
        js.clone(),
        relay_wake,
        relay_stop.clone(),
        Duration::from_secs(5),
    ));
    tracing::info!(prefix = %config.prefix, nats = %config.nats.url, data_dir = %config.data_dir.display(), "engine ready");

    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut partition_task => Some(r),
    };
    tracing::info!("engine draining");
    intake_stop.cancel();
    intake_tasks.wait().await;
    let partition_result = match early {
        Some(r) => r,
        None => partition_task.await,
    };
    relay_stop.cancel();
    let _ = relay_task.await;
    store.flush().await?;
    let _ = client.flush().await;
    match partition_result {
        Ok(Ok(())) => {
            tracing::info!("engine stopped");
            Ok(())
        }
        Ok(Err(e)) => Err(EngineError::Runtime(e.to_string())),
        Err(e) => Err(EngineError::Runtime(format!("partition task failed: {e}"))),
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
