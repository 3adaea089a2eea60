//! The `main` shared by the example worker binaries: flags, logging, NATS
//! connection, signal handling, and running one [`Worker`] per service.
//!
//! A binary only lists its services:
//!
//! ```no_run
//! use jetsaga_examples::{runner, services};
//! fn main() -> anyhow::Result<()> {
//!     runner::main(runner::Binary {
//!         name: "deploy-workers",
//!         about: "Workers of the deploy_environment saga",
//!         services: &[services::manifest::SERVICE, services::gateway::SERVICE],
//!     })
//! }
//! ```

use crate::ledger::Ledger;
use crate::services::{Service, ServiceEnv};
use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser};
use jetsaga_engine::config::{
    Config, Env, Layer, NatsConfig, NatsLayer, connect_error_kind, connect_hint, connect_options,
};
use jetsaga_worker::Worker;
use jetsaga_worker::protocol::ErrorCode;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Flags of every example worker binary (each with an environment fallback).
#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// The NATS connection: the engine's own `--nats-*` flags (URL,
    /// credentials, TLS), over the `JETSAGA_NATS_*` variables, with the same
    /// meaning and checks ([`Args::nats_config`]).
    #[command(flatten)]
    pub nats: NatsLayer,

    /// Subject prefix of the jetsaga installation.
    #[arg(long, env = "JETSAGA_PREFIX", default_value = "jetsaga")]
    pub prefix: String,

    /// Directory of the per-service effect ledgers (`<dir>/<service>.jsonl`).
    #[arg(long, env = "JETSAGA_LEDGER_DIR", default_value = ".jetsaga/ledger")]
    pub ledger_dir: PathBuf,

    /// Tasks each service's worker runs at once.
    #[arg(long, env = "JETSAGA_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,

    /// Name of this worker process, reported with results and written into
    /// the ledger (default: `<binary>@<host>:<pid>`).
    #[arg(long, env = "JETSAGA_WORKER_NAME")]
    pub name: Option<String>,

    /// `ack_wait` of a service's consumer when this process creates it
    /// (e.g. `30s`); bounds how long a crashed worker's task waits for another.
    #[arg(long, env = "JETSAGA_ACK_WAIT", value_parser = humantime::parse_duration)]
    pub ack_wait: Option<Duration>,

    /// Serve Prometheus metrics (`GET /metrics`: the SDK's `worker_*`
    /// metrics) on this address, `HOST:PORT` (port 0: any free port, logged
    /// as `metrics listening addr=...`). Off by default; one port per
    /// process on a machine (deploy/ uses 9464).
    #[arg(long, value_name = "ADDR", env = "JETSAGA_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Run only this service (repeatable; default: every service of the binary).
    #[arg(
        long = "service",
        value_name = "NAME",
        env = "JETSAGA_SERVICES",
        value_delimiter = ','
    )]
    pub services: Vec<String>,
}

impl Args {
    /// The NATS settings: defaults, then the `JETSAGA_NATS_*` variables of
    /// `env`, then the flags, checked as the engine checks its own.
    pub fn nats_config(&self, env: &Env) -> anyhow::Result<NatsConfig> {
        let flags = Layer {
            nats: self.nats.clone(),
            ..Layer::default()
        };
        let loaded = Config::resolve(Config::default(), None, env, flags)
            .context("invalid NATS settings in the environment")?;
        let nats = loaded.config.nats;
        nats.validate().context("invalid NATS settings")?;
        Ok(nats)
    }
}

/// The process's `JETSAGA_NATS_*` variables (the others are the engine's
/// business and are not read here).
fn nats_env() -> Env {
    Env::from_pairs(std::env::vars().filter(|(k, _)| k.starts_with("JETSAGA_NATS_")))
}

/// What distinguishes one example binary from another.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// Binary name (for `--help` and the default worker name).
    pub name: &'static str,
    /// One-line description for `--help`.
    pub about: &'static str,
    /// Services the binary runs.
    pub services: &'static [Service],
}

/// Parses the command line, builds a tokio runtime and runs the binary's
/// workers until SIGINT/SIGTERM (see [`run`]).
pub fn main(bin: Binary) -> anyhow::Result<()> {
    let names: Vec<&str> = bin.services.iter().map(|s| s.name).collect();
    let after_help = format!(
        "Services: {}\n\nSaga inputs may inject failures per step with a `faults` object; see examples/README.md.",
        names.join(", ")
    );
    let matches = Args::command()
        .name(bin.name)
        .bin_name(bin.name)
        .about(bin.about)
        .after_help(after_help)
        .get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // OpenTelemetry traces, off unless OTEL_EXPORTER_OTLP_ENDPOINT is set;
    // flushed when `_trace` is dropped, after the workers stopped.
    let _trace = jetsaga_worker::trace::init();
    init_tracing();
    // Tests kill workers at chosen places (`FAILPOINTS`); nothing happens
    // unless the SDK was built with its `failpoints` feature.
    jetsaga_worker::crash_points::setup();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(bin, args))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), and exports
/// spans when [`jetsaga_worker::trace::init`] turned traces on.
pub fn init_tracing() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .finish()
        .with(jetsaga_worker::trace::layer())
        .try_init();
}

/// Picks the services to run: all of `available`, or the ones named.
pub fn select_services(available: &[Service], wanted: &[String]) -> anyhow::Result<Vec<Service>> {
    if wanted.is_empty() {
        return Ok(available.to_vec());
    }
    let mut chosen: Vec<Service> = Vec::new();
    for name in wanted {
        let Some(service) = available.iter().find(|s| s.name == name) else {
            let names: Vec<&str> = available.iter().map(|s| s.name).collect();
            bail!(
                "unknown service {name:?}; this binary runs: {}",
                names.join(", ")
            );
        };
        if !chosen.iter().any(|s| s.name == service.name) {
            chosen.push(*service);
        }
    }
    Ok(chosen)
}

/// Default worker name: `<binary>@<host>:<pid>`.
pub fn default_worker_name(bin: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{bin}@{host}:{}", std::process::id())
}

/// Runs the selected services of `bin` until a signal: connects to NATS
/// (retrying while it is not up), builds one worker per service, logs
/// `workers ready`, then runs them. The first SIGINT/SIGTERM drains in-flight
/// tasks and returns; a second one exits the process at once.
pub async fn run(bin: Binary, args: Args) -> anyhow::Result<()> {
    let services = select_services(bin.services, &args.services)?;
    let worker_name: Arc<str> = Arc::from(
        args.name
            .clone()
            .unwrap_or_else(|| default_worker_name(bin.name)),
    );
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    // Before connecting, so that a worker waiting for NATS is scraped (and
    // a port already taken fails at once). Serves until the process exits.
    let _metrics = match args.metrics_listen.as_deref().map(str::trim) {
        None | Some("" | "off") => None,
        Some(addr) => Some(
            jetsaga_worker::metrics::serve(addr)
                .await
                .context("cannot serve metrics (--metrics-listen)")?,
        ),
    };

    let nats = args.nats_config(&nats_env())?;
    let Some(client) = connect(&nats, &worker_name, &shutdown).await? else {
        info!("shut down before connecting");
        return Ok(());
    };

    let mut workers: Vec<(&'static str, Worker)> = Vec::with_capacity(services.len());
    for service in &services {
        let ledger = Ledger::open(&args.ledger_dir, service.name).with_context(|| {
            format!(
                "cannot open the ledger of {} under {}",
                service.name,
                args.ledger_dir.display()
            )
        })?;
        let env = ServiceEnv {
            ledger: Arc::new(ledger),
            worker: Arc::clone(&worker_name),
        };
        let mut builder = Worker::builder(service.name)
            .prefix(&args.prefix)
            .concurrency(args.concurrency)
            .name(&worker_name);
        if let Some(ack_wait) = args.ack_wait {
            builder = builder.ack_wait(ack_wait);
        }
        let builder = (service.register)(builder, &env);
        let worker = tokio::select! {
            w = builder.build(client.clone()) => {
                w.with_context(|| format!("cannot start the worker of service {}", service.name))?
            }
            _ = shutdown.cancelled() => {
                info!("shut down while starting workers");
                return Ok(());
            }
        };
        workers.push((service.name, worker));
    }
    let names: Vec<&str> = workers.iter().map(|(n, _)| *n).collect();
    info!(
        binary = bin.name,
        worker = &*worker_name,
        prefix = %args.prefix,
        services = %names.join(","),
        ledger_dir = %args.ledger_dir.display(),
        "workers ready"
    );

    let mut set = JoinSet::new();
    for (name, worker) in workers {
        let token = shutdown.clone();
        set.spawn(async move { (name, worker.run(token).await) });
    }
    let mut failure: Option<anyhow::Error> = None;
    while let Some(joined) = set.join_next().await {
        let err = match joined {
            Ok((name, Ok(()))) if shutdown.is_cancelled() => {
                info!(service = name, "worker drained");
                continue;
            }
            Ok((name, Ok(()))) => anyhow::anyhow!("worker of service {name} stopped unexpectedly"),
            Ok((name, Err(e))) => {
                anyhow::Error::new(e).context(format!("worker of service {name} failed"))
            }
            Err(e) => anyhow::Error::new(e).context("worker task panicked"),
        };
        error!("{err:#}; stopping the other workers");
        shutdown.cancel();
        failure.get_or_insert(err);
    }
    client.flush().await.ok();
    match failure {
        Some(e) => Err(e),
        None => {
            info!("all workers drained; bye");
            Ok(())
        }
    }
}

/// Connects to NATS, retrying with backoff (capped at 5 s) while the server
/// is unreachable; refused credentials or a failed TLS handshake end it.
/// Returns `None` if `shutdown` fires first.
async fn connect(
    nats: &NatsConfig,
    name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<async_nats::Client>> {
    let url = nats.url.as_str();
    // One URL or a comma-separated list, as the engine takes it.
    let addrs = jetsaga_engine::config::server_addrs(url).context("invalid NATS URL")?;
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = connect_options(nats)
            .context("invalid NATS settings")?
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .connect(addrs.clone());
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.cancelled() => return Ok(None),
        };
        match result {
            Ok(client) => {
                info!(url, "connected to NATS");
                return Ok(Some(client));
            }
            Err(e) => {
                use async_nats::ConnectErrorKind as K;
                // A TLS failure shows as an I/O error; retrying cannot fix it.
                match connect_error_kind(&e) {
                    K::Io | K::TimedOut | K::Dns | K::MaxReconnects => {
                        warn!(url, "NATS is not reachable ({e}); retrying in {delay:?}");
                    }
                    _ => {
                        let hint = connect_hint(&e);
                        return Err(anyhow::Error::new(e).context(format!(
                            "{}: cannot connect to NATS at {url} ({hint})",
                            ErrorCode::NatsConnect
                        )));
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// First SIGINT/SIGTERM cancels `shutdown` (drain); the second exits at once.
fn spawn_signal_handler(shutdown: CancellationToken) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::spawn(async move {
            let first = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            info!("{first} received: draining in-flight tasks (signal again to exit now)");
            shutdown.cancel();
            let second = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            warn!("{second} received again: exiting without draining");
            std::process::exit(130);
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                info!("Ctrl-C received: draining in-flight tasks (again to exit now)");
                shutdown.cancel();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services;

    #[test]
    fn nats_flags_become_the_engines_nats_settings() {
        let args = Args::try_parse_from([
            "x",
            "--nats-url",
            "tls://nats.internal:4222",
            "--nats-user",
            "app",
            "--nats-password",
            "pw",
            "--nats-tls-ca",
            "/etc/ca.pem",
            "--nats-tls-required",
        ])
        .unwrap();
        let nats = args.nats_config(&Env::default()).unwrap();
        assert_eq!(nats.url, "tls://nats.internal:4222");
        assert_eq!(nats.user.as_deref(), Some("app"));
        assert_eq!(
            nats.password
                .as_ref()
                .map(jetsaga_engine::config::Secret::expose),
            Some("pw")
        );
        assert_eq!(nats.tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert!(nats.tls.required);
        // Secrets stay masked in `Debug`, as the engine's do.
        assert!(!format!("{args:?}").contains("\"pw\""), "{args:?}");

        let two = Args::try_parse_from(["x", "--nats-token", "t", "--nats-nkey", "/k.nk"]).unwrap();
        let err = format!("{:#}", two.nats_config(&Env::default()).unwrap_err());
        assert!(
            err.contains("more than one NATS authentication method"),
            "{err}"
        );
    }

    #[test]
    fn nats_variables_are_read_and_flags_win() {
        let env = Env::from_pairs([
            ("JETSAGA_NATS_URL", "nats://a:4222"),
            ("JETSAGA_NATS_USER", "from-env"),
            ("JETSAGA_NATS_PASSWORD", "secret"),
            ("JETSAGA_NATS_TLS_REQUIRED", "true"),
        ]);
        let args = Args::try_parse_from(["x", "--nats-user", "from-flag"]).unwrap();
        let nats = args.nats_config(&env).unwrap();
        assert_eq!(nats.url, "nats://a:4222");
        assert_eq!(nats.user.as_deref(), Some("from-flag"));
        assert!(nats.password.is_some());
        assert!(nats.tls.required);
        let bad = Env::from_pairs([("JETSAGA_NATS_TLS_REQUIRED", "maybe")]);
        let err = format!("{:#}", args.nats_config(&bad).unwrap_err());
        assert!(err.contains("JETSAGA_NATS_TLS_REQUIRED"), "{err}");
    }

    #[test]
    fn args_have_the_documented_defaults() {
        let args = Args::try_parse_from(["x"]).unwrap();
        assert_eq!(
            args.nats_config(&Env::default()).unwrap().url,
            "nats://127.0.0.1:4222"
        );
        // Environment fallbacks may be set by whoever runs the tests.
        if std::env::var_os("JETSAGA_PREFIX").is_none() {
            assert_eq!(args.prefix, "jetsaga");
        }
        let args = Args::try_parse_from([
            "x",
            "--service",
            "manifest",
            "--service",
            "gateway",
            "--concurrency",
            "4",
            "--name",
            "w1",
            "--ledger-dir",
            "/tmp/l",
            "--metrics-listen",
            "127.0.0.1:9464",
        ])
        .unwrap();
        assert_eq!(args.services, vec!["manifest", "gateway"]);
        assert_eq!(args.concurrency, 4);
        assert_eq!(args.name.as_deref(), Some("w1"));
        assert_eq!(args.ledger_dir, PathBuf::from("/tmp/l"));
        assert_eq!(args.metrics_listen.as_deref(), Some("127.0.0.1:9464"));
        Args::command().debug_assert();
    }

    #[test]
    fn service_selection() {
        let avail = [services::manifest::SERVICE, services::gateway::SERVICE];
        assert_eq!(select_services(&avail, &[]).unwrap().len(), 2);
        let one = select_services(&avail, &["gateway".into(), "gateway".into()]).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, "gateway");
        let err = select_services(&avail, &["email".into()]).unwrap_err();
        assert!(err.to_string().contains("manifest, gateway"), "{err}");
    }

    #[test]
    fn worker_name_has_binary_and_pid() {
        let name = default_worker_name("deploy-workers");
        assert!(name.starts_with("deploy-workers@"));
        assert!(name.ends_with(&format!(":{}", std::process::id())));
    }
}
