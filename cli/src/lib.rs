//! The `jetsaga` command line: the engine server, `dev` mode, `config check`,
//! and the client commands that talk to a running engine over its NATS API.
//!
//! Every command resolves its configuration the same way (see
//! [`jetsaga_engine::config`]): defaults, `--config FILE`, `JETSAGA_*` variables,
//! flags. The NATS flags and `--prefix` are global; the engine's settings are
//! flags of `server`, `dev` and `config check`.

use crate::client::{Client, ClientError};
use crate::dev::{DevNats, find_nats_server};
use clap::{Args, Parser, Subcommand, ValueEnum};
use jetsaga_core::saga::definition;
use jetsaga_engine::api::auth::{self, HttpToken, Role};
use jetsaga_engine::config::{Config, ConfigError, Env, Layer, Loaded, LogFormat, NatsLayer};
use jetsaga_engine::retention::Retention;
use jetsaga_protocol::ErrorCode;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub mod client;
pub mod deps;
pub mod dev;
mod render;

/// Durable sagas on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "jetsaga", version, about, propagate_version = true)]
pub struct Cli {
    /// Settings every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Output format of client commands and `config check`.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The configuration once [`Cli::load_config`] resolved it.
    #[arg(skip)]
    loaded: Option<Loaded>,
}

/// Settings every command takes (global flags). Each flag overrides the
/// configuration file and the `JETSAGA_*` variable of the same key.
#[derive(Debug, Default, Args)]
pub struct GlobalArgs {
    /// Configuration file, YAML (*.yaml, *.yml) or JSON (*.json); its
    /// values sit below `JETSAGA_*` variables and flags [env: JETSAGA_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsLayer,
    /// Subject prefix of the installation [env: JETSAGA_PREFIX] [default: jetsaga]
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// Log line format [env: JETSAGA_LOG_FORMAT] [default: text]
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Which logs to keep, e.g. `info` or `warn,jetsaga_engine=debug` [env:
    /// JETSAGA_LOG] [default: info for server and dev, warn otherwise]
    #[arg(long = "log", global = true, value_name = "FILTER")]
    pub log: Option<String>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON, stable for scripts.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine against a NATS server.
    Server(ServerArgs),
    /// Run everything on this machine: a local nats-server (unless
    /// --external-nats) and the engine. Ctrl-C stops both.
    Dev(DevArgs),
    /// Saga definitions.
    #[command(subcommand)]
    Def(DefCommand),
    /// Saga instances.
    #[command(subcommand)]
    Saga(SagaCommand),
    /// Service circuit breakers and in-flight limits (`services:` in a
    /// definitions file).
    #[command(subcommand, visible_alias = "circuit-breaker")]
    Breaker(BreakerCommand),
    /// The engines of the installation and the partitions they lead.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Lifecycle events (CloudEvents) and plain NATS messages.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Service dependencies of a deployment: start-up order, version
    /// constraints, cycles, missing services, health (service manifests).
    #[command(subcommand)]
    Deps(crate::deps::DepsCommand),
    /// The engine's store, offline (the engine stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

/// `jetsaga cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The engines (id, host, pid, partitions led, journal records
    /// applied) and each partition's leader, lease and journal, from what
    /// the engines record in NATS: any engine answers, over NATS.
    Status,
    /// Has the leader of PARTITION drain it and release its lease, so that
    /// another engine takes it over (the leader waits a lease TTL before it
    /// would take it again).
    StepDown {
        /// Partition number.
        partition: u32,
    },
}

/// `jetsaga store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Give back to the file system the space of pruned and deleted sagas:
    /// copy the store's live data into a fresh store, check the copy, and
    /// swap it in (sled never shrinks its files by itself). The engine must
    /// be stopped.
    Compact(CompactArgs),
}

/// `jetsaga store compact` arguments.
#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Directory of the engine's store [env: JETSAGA_DATA_DIR] [default:
    /// .jetsaga/data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Keep the old copy beside the store as `<DIR>.pre-compact-<unix
    /// seconds>` instead of removing it.
    #[arg(long)]
    pub keep_old: bool,
}

/// `jetsaga events ...`.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Follow the lifecycle events stream: one line per event (or the
    /// CloudEvent JSON, one a line, with --output json). New events only
    /// unless --all.
    Tail {
        /// Only events of sagas with this definition name.
        #[arg(long, value_name = "NAME")]
        saga: Option<String>,
        /// Only events of this type, e.g. `saga.completed` or `step.*`
        /// (the `io.jetsaga.` prefix may be given).
        #[arg(long = "type", value_name = "TYPE")]
        type_: Option<String>,
        /// Start from the oldest event the stream keeps.
        #[arg(long)]
        all: bool,
    },
    /// Print the last events the lifecycle events stream keeps, oldest
    /// first, and exit (`tail` follows new ones instead).
    Log {
        /// How many of the newest events to print.
        #[arg(long = "tail", value_name = "N", default_value_t = 100)]
        last: u64,
    },
    /// Publish DATA on SUBJECT (core NATS, any subject); or, with --type
    /// and --source, a CloudEvent of that type on the subject named by the
    /// type (unless SUBJECT is given), its `data` the JSON of DATA or
    /// --data.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["subject", "type_"])))]
    Publish {
        /// Subject.
        subject: Option<String>,
        /// Message body, or @FILE to read it from a file.
        #[arg(conflicts_with = "data_flag", required_unless_present_any = ["type_", "data_flag"])]
        data: Option<String>,
        /// Publish a CloudEvent of this type, e.g. `environment.lifecycle.created`.
        #[arg(long = "type", value_name = "TYPE", requires = "source")]
        type_: Option<String>,
        /// The CloudEvent's source, e.g. the publishing service's name.
        #[arg(long, value_name = "SOURCE", requires = "type_")]
        source: Option<String>,
        /// The message body (same as DATA), or @FILE.
        #[arg(long = "data", value_name = "DATA")]
        data_flag: Option<String>,
    },
    /// Print every message on SUBJECT or on each --channels subject (core
    /// NATS, wildcards allowed) until interrupted.
    #[command(group(clap::ArgGroup::new("subjects").required(true).args(["subject", "channels"])))]
    Subscribe {
        /// Subject.
        subject: Option<String>,
        /// Subjects, comma separated or repeated, e.g. 'environment.lifecycle.*'.
        #[arg(
            long,
            value_name = "SUBJECT",
            value_delimiter = ',',
            conflicts_with = "subject"
        )]
        channels: Vec<String>,
    },
}

/// `jetsaga config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration `server` would run with (YAML with where each
    /// value came from, or --output json), secrets masked; exit 1 if it is
    /// invalid.
    Check(Box<ServerArgs>),
    /// Make a bearer token for the HTTP API: prints the token (256 random
    /// bits; shown once, keep it secret) and the `http_tokens` entry with its
    /// SHA-256, which is all the engine keeps.
    NewToken {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: Role,
        /// Who holds it, as logs name it [default: the role and a few hex
        /// digits of the digest]
        #[arg(long)]
        name: Option<String>,
    },
}

/// Engine settings shared by `server`, `dev` and `config check`. Each flag
/// overrides the configuration file and the `JETSAGA_*` variable of the
/// same key.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "Engine")]
pub struct EngineArgs {
    /// Directory of the engine's store [env: JETSAGA_DATA_DIR] [default:
    /// .jetsaga/data, .jetsaga/dev for dev]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Definition files or directories applied at start (repeatable or comma
    /// separated; replaces the file's list) [env: JETSAGA_DEFINITIONS]
    #[arg(long = "definitions", value_name = "PATH", value_delimiter = ',')]
    pub definitions: Option<Vec<PathBuf>>,
    /// The environment this engine runs in, checked against definitions'
    /// `policy.environments` [env: JETSAGA_ENVIRONMENT] [default: none]
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// Largest accepted saga input or result, in bytes [env:
    /// JETSAGA_MAX_PAYLOAD] [default: 524288]
    #[arg(long, value_name = "BYTES")]
    pub max_payload: Option<usize>,
    /// JetStream duplicate window of the engine's streams [env:
    /// JETSAGA_DUPLICATE_WINDOW] [default: 2m]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duplicate_window: Option<Duration>,
    /// How long a step's recorded outcome (its idempotency record) is kept;
    /// longer than any step is retried [env: JETSAGA_OUTCOME_TTL]
    /// [default: 24h]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub outcome_ttl: Option<Duration>,
    /// Replicas of the engine's streams, 3 in a 3-node cluster [env:
    /// JETSAGA_REPLICAS] [default: 1]
    #[arg(long, value_name = "N")]
    pub replicas: Option<usize>,
    /// Ack wait of the engine's own consumers (results, starts) [env:
    /// JETSAGA_ACK_WAIT] [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ack_wait: Option<Duration>,
    /// Most events applied per group commit [env: JETSAGA_BATCH_SIZE]
    /// [default: 256]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Most sagas running at once over all definitions; more starts wait in
    /// the durable start queue; 0 for unlimited [env:
    /// JETSAGA_MAX_RUNNING_SAGAS] [default: unlimited]
    #[arg(long, value_name = "N")]
    pub max_running_sagas: Option<u32>,
    /// Most steps in one saga definition [env: JETSAGA_MAX_DEFINITION_STEPS]
    /// [default: 200]
    #[arg(long, value_name = "N")]
    pub max_definition_steps: Option<usize>,
    /// Most steps a definition starts at once: steps without dependencies,
    /// dependents of one step [env: JETSAGA_MAX_DEFINITION_FAN_OUT]
    /// [default: 100]
    #[arg(long, value_name = "N")]
    pub max_definition_fan_out: Option<usize>,
    /// Largest definitions file, in bytes [env: JETSAGA_MAX_DEFINITION_BYTES]
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_definition_bytes: Option<usize>,
    /// How long finished sagas are kept before they are deleted (with their
    /// idempotency key), or `off` to keep them forever [env:
    /// JETSAGA_RETENTION] [default: 7d]
    #[arg(long, value_name = "DURATION|off")]
    pub retention: Option<Retention>,
    /// Serve the HTTP API on HOST:PORT (port 0: any free port), or `off`
    /// [env: JETSAGA_HTTP_LISTEN] [default: 127.0.0.1:8080 for dev, off for
    /// server]
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Close an HTTP connection that has not sent a request's headers this
    /// long after it opened or got its last answer [env:
    /// JETSAGA_HTTP_HEADER_TIMEOUT] [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_header_timeout: Option<Duration>,
    /// Answer 408 to an HTTP request whose body has not arrived in full this
    /// long after the handler started reading it [env:
    /// JETSAGA_HTTP_BODY_TIMEOUT] [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_body_timeout: Option<Duration>,
    /// Most HTTP connections open at once; more are answered 503 [env:
    /// JETSAGA_HTTP_MAX_CONNECTIONS] [default: 1024]
    #[arg(long, value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// Bearer tokens of the HTTP API as NAME:ROLE:SHA256, comma separated
    /// or repeated (`jetsaga config new-token` makes one); replaces the
    /// file's list [env: JETSAGA_HTTP_TOKENS] [default: none, every route
    /// open]
    #[arg(long, value_name = "NAME:ROLE:SHA256", value_delimiter = ',')]
    pub http_tokens: Option<Vec<HttpToken>>,
    /// Serve the HTTP API on an address other than loopback without
    /// tokens, behind a proxy that authenticates [env:
    /// JETSAGA_HTTP_INSECURE] [default: false]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub http_insecure: Option<bool>,
    /// PEM certificate chain of the HTTP API: with --http-tls-key, it
    /// serves HTTPS [env: JETSAGA_HTTP_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of --http-tls-cert [env: JETSAGA_HTTP_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    pub http_tls_key: Option<PathBuf>,
    /// This engine's id in the cluster [env: JETSAGA_ENGINE_ID] [default:
    /// the host name and a random suffix, kept in the data directory]
    #[arg(long, value_name = "ID")]
    pub engine_id: Option<String>,
    /// How long a partition's leader lease lasts without renewal: a dead
    /// leader is replaced after at most this [env: JETSAGA_LEASE_TTL]
    /// [default: 3s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// How often a leader renews its leases, at most half the TTL [env:
    /// JETSAGA_LEASE_RENEW] [default: 1s]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lease_renew: Option<Duration>,
    /// Journal records between two snapshots of a partition's store; the
    /// journal is trimmed to the latest [env: JETSAGA_SNAPSHOT_EVERY]
    /// [default: 10000]
    #[arg(long, value_name = "RECORDS")]
    pub snapshot_every: Option<u64>,
    /// The installation's number of partitions, fixed at its first start
    /// (1 to 4096); each has its own journal, lease and leader [env:
    /// JETSAGA_PARTITIONS] [default: 1]
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
}

/// Where `jetsaga dev` serves the HTTP API unless told otherwise.
pub const DEV_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// `jetsaga server` and `jetsaga config check`.
#[derive(Debug, Default, Args)]
pub struct ServerArgs {
    /// Engine settings.
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `jetsaga dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Engine settings (data dir defaults to .jetsaga/dev).
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Use the NATS server at --nats-url instead of starting one.
    #[arg(long)]
    pub external_nats: bool,
    /// Port of the local nats-server.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// nats-server binary (default: $JETSAGA_NATS_SERVER, .venv/bin/nats-server, PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
}

/// `jetsaga def ...`.
#[derive(Debug, Subcommand)]
pub enum DefCommand {
    /// Check definition files without a running engine.
    Validate {
        /// Files (YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Validate and store definitions in the engine (a changed saga gets a new version).
    Apply {
        /// Files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the engine's definitions (current versions).
    List,
}

/// `jetsaga breaker ...`.
#[derive(Debug, Subcommand)]
pub enum BreakerCommand {
    /// Every service with a policy: breaker state, held and in-flight tasks.
    List,
    /// One service's breaker state, held and in-flight tasks, and policy.
    Status {
        /// Service name.
        name: String,
    },
    /// Close a service's breaker; its held tasks are released in order.
    /// With `--force-state open` it opens instead, holding the service's
    /// tasks from now until its open timeout passes.
    Reset {
        /// Service name.
        name: String,
        /// The state to put the breaker in (recorded as `forced` in its
        /// history); `closed` is what `reset` does without it.
        #[arg(long, value_enum, value_name = "STATE")]
        force_state: Option<ForcedState>,
    },
}

/// A state `breaker reset --force-state` puts a breaker in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForcedState {
    /// Open: tasks are held from now; it half-opens after its open timeout.
    Open,
    /// Closed: tasks pass, held ones are released in order.
    Closed,
}

/// `jetsaga saga ...`.
#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Start a saga; prints its id.
    #[command(visible_alias = "execute")]
    Start {
        /// Definition name.
        name: String,
        /// Input JSON, or @FILE to read it from a file.
        #[arg(long, default_value = "{}")]
        input: String,
        /// The same key always gives the same saga.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until the saga is terminal and print its status.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Show a saga and its steps, by id or by the idempotency key it was
    /// started with (`--key`, which only reads: it never starts a saga).
    Status {
        /// Saga id.
        #[arg(
            required_unless_present = "idempotency_key",
            conflicts_with = "idempotency_key"
        )]
        id: Option<String>,
        /// The idempotency key the saga was started with.
        #[arg(long = "key", value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Counts per state, success and compensation rates and durations of
    /// the sagas the engine keeps, per definition and overall.
    Stats {
        /// Only sagas of this definition.
        #[arg(long = "saga")]
        saga: Option<String>,
        /// Only sagas created within this long (e.g. 15m, 24h, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
    },
    /// List sagas, newest first.
    List {
        /// Only in this state.
        #[arg(long, help = state_help())]
        state: Option<String>,
        /// Only of this definition.
        #[arg(long = "saga")]
        saga: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only sagas older than this id (next page).
        #[arg(long)]
        before: Option<String>,
    },
    /// Cancel a saga.
    Cancel {
        /// Saga id.
        id: String,
        /// Compensate its completed steps (otherwise just stop it).
        #[arg(long)]
        compensate: bool,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Retry a finished saga once its cause is fixed: a partially_compensated
    /// saga resumes its rollback, a failed or compensated one runs again from
    /// the start (under new idempotency keys).
    Retry {
        /// Saga id.
        id: String,
        /// Wait until the saga is terminal again and print its status.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Resume the rollback of a partially_compensated saga once its cause is
    /// fixed; refuses a saga in any other state.
    RetryCompensation {
        /// Saga id.
        id: String,
        /// Wait until the saga is terminal again and print its status.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Delete a finished saga (its idempotency key may then start a new saga).
    Delete {
        /// Saga id.
        id: String,
    },
    /// Follow a saga until it is terminal.
    Watch {
        /// Saga id.
        id: String,
        /// Give up after this long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Cancels the returned token on the first SIGINT or SIGTERM; exits the
/// process at once on the second.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!("shutting down: draining (signal again to exit now)");
                t.cancel();
            } else {
                // Not eprintln!, which panics when stderr is gone.
                let _ = writeln!(std::io::stderr(), "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    token
}

impl Cli {
    /// Resolves the configuration of the command (see [`jetsaga_engine::config`]):
    /// its defaults, then `--config FILE` (else `JETSAGA_CONFIG` in `env`),
    /// then `env`, then the flags. Keeps it for the command and returns it;
    /// validation is left to the command (`config check` prints an invalid
    /// configuration before its error).
    pub fn load_config(&mut self, env: &Env) -> Result<&Loaded, ConfigError> {
        let (defaults, engine) = match &self.command {
            Command::Server(args) => (Config::default(), Some(&args.engine)),
            Command::Config(ConfigCommand::Check(args)) => (Config::default(), Some(&args.engine)),
            Command::Dev(args) => (dev_defaults(), Some(&args.engine)),
            Command::Def(_)
            | Command::Saga(_)
            | Command::Breaker(_)
            | Command::Cluster(_)
            | Command::Events(_)
            | Command::Deps(_)
            | Command::Config(ConfigCommand::NewToken { .. })
            | Command::Store(_) => (Config::default(), None),
        };
        let file = self
            .global
            .config
            .clone()
            .or_else(|| env.get("JETSAGA_CONFIG").map(PathBuf::from));
        let mut flags = flag_layer(&self.global, engine);
        if let Command::Store(StoreCommand::Compact(args)) = &self.command {
            flags.data_dir = args.data_dir.clone();
        }
        let loaded = Config::load(defaults, file.as_deref(), env, flags)?;
        Ok(self.loaded.insert(loaded))
    }

    /// The configuration resolved by [`Cli::load_config`].
    ///
    /// # Panics
    ///
    /// When it was not loaded: [`main`] loads it first.
    pub fn loaded(&self) -> &Loaded {
        self.loaded
            .as_ref()
            .expect("Cli::load_config runs before the command")
    }
}

/// The defaults of `jetsaga dev`: its own data dir, the HTTP API on.
fn dev_defaults() -> Config {
    Config {
        data_dir: PathBuf::from(".jetsaga/dev"),
        http_listen: Some(DEV_HTTP_LISTEN.to_string()),
        ..Config::default()
    }
}

/// The configuration layer the flags give.
fn flag_layer(global: &GlobalArgs, engine: Option<&EngineArgs>) -> Layer {
    let mut layer = Layer {
        nats: global.nats.clone(),
        prefix: global.prefix.clone(),
        log_format: global.log_format,
        log: global.log.clone(),
        ..Layer::default()
    };
    if let Some(args) = engine {
        layer.data_dir = args.data_dir.clone();
        layer.definitions = args.definitions.clone();
        layer.environment = args.environment.clone();
        layer.max_payload = args.max_payload;
        layer.duplicate_window = args.duplicate_window;
        layer.outcome_ttl = args.outcome_ttl;
        layer.ack_wait = args.ack_wait;
        layer.batch_size = args.batch_size;
        layer.max_running_sagas = args.max_running_sagas;
        layer.max_definition_steps = args.max_definition_steps;
        layer.max_definition_fan_out = args.max_definition_fan_out;
        layer.max_definition_bytes = args.max_definition_bytes;
        layer.replicas = args.replicas;
        layer.retention = args.retention;
        layer.http_listen = args.http_listen.clone();
        layer.http_header_timeout = args.http_header_timeout;
        layer.http_body_timeout = args.http_body_timeout;
        layer.http_max_connections = args.http_max_connections;
        layer.http_tokens = args.http_tokens.clone();
        layer.http_insecure = args.http_insecure;
        layer.http_tls_cert = args.http_tls_cert.clone();
        layer.http_tls_key = args.http_tls_key.clone();
        layer.engine_id = args.engine_id.clone();
        layer.lease_ttl = args.lease_ttl;
        layer.lease_renew = args.lease_renew;
        layer.snapshot_every = args.snapshot_every;
        layer.partitions = args.partitions;
    }
    layer
}

/// Runs the command line; returns the process exit code. Loads the
/// configuration from the process environment unless
/// [`Cli::load_config`] already did.
pub async fn main(mut cli: Cli) -> i32 {
    if cli.loaded.is_none()
        && let Err(e) = cli.load_config(&Env::from_process())
    {
        eprintln!("error: {e}");
        return 1;
    }
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            1
        }
    }
}

/// `jetsaga store compact`: compacts the store (sled work, off the async
/// threads) and says what it did.
async fn store_compact(dir: &Path, keep_old: bool, output: Output) -> anyhow::Result<i32> {
    let owned = dir.to_path_buf();
    let done =
        tokio::task::spawn_blocking(move || jetsaga_store::compact::compact(&owned, keep_old))
            .await??;
    if output == Output::Json {
        let report = serde_json::json!({
            "data_dir": dir,
            "before_bytes": done.before_bytes,
            "after_bytes": done.after_bytes,
            "sagas": done.sagas,
            "elapsed_ms": done.elapsed.as_millis() as u64,
            "old_copy": done.old_copy,
        });
        println!("{report}");
        return Ok(0);
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "compacted the store at {}: {:.1} MiB -> {:.1} MiB, {} sagas, in {:.1} s",
        dir.display(),
        mib(done.before_bytes),
        mib(done.after_bytes),
        done.sagas,
        done.elapsed.as_secs_f64()
    );
    if let Some(old) = done.old_copy {
        println!(
            "the old copy is at {}; remove it once the engine runs well on the compacted store",
            old.display()
        );
    }
    Ok(0)
}

/// The error and the causes its message does not already contain (our
/// errors carry their cause in their message; `{:#}` would repeat it).
fn error_message(error: &anyhow::Error) -> String {
    crate::deps::health::error_chain(error.as_ref())
}

/// Help of `saga list --state`: the states' names from their one list.
fn state_help() -> String {
    format!(
        "Only in this state ({})",
        jetsaga_protocol::api::SagaState::names()
    )
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Server(_) => {
            let config = cli.loaded().config.clone();
            jetsaga_engine::engine::run(config, shutdown_on_signals()).await?;
            Ok(0)
        }
        Command::Dev(args) => dev(&cli, args).await,
        Command::Def(cmd) => def(&cli, cmd).await,
        Command::Saga(cmd) => saga(&cli, cmd).await,
        Command::Breaker(cmd) => breaker(&cli, cmd).await,
        Command::Cluster(cmd) => cluster(&cli, cmd).await,
        Command::Config(ConfigCommand::Check(_)) => config_check(&cli),
        Command::Config(ConfigCommand::NewToken { role, name }) => {
            new_token(*role, name.as_deref(), cli.output)
        }
        Command::Events(cmd) => events(&cli, cmd).await,
        Command::Store(StoreCommand::Compact(args)) => {
            store_compact(&cli.loaded().config.data_dir, args.keep_old, cli.output).await
        }
        Command::Deps(cmd) => {
            let report = match crate::deps::run(cmd).await {
                Ok(report) => report,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(2);
                }
            };
            let resolve = matches!(cmd, crate::deps::DepsCommand::Resolve(_));
            match cli.output {
                Output::Json => print_json(&report.to_json(resolve))?,
                Output::Table if resolve => print!("{}", render::deps_order(&report)),
                Output::Table => print!("{}", render::deps_ok(&report)),
            }
            if cli.output == Output::Table {
                eprint!("{}", render::deps_problems(&report));
            }
            Ok(report.exit_code())
        }
    }
}

/// The filter subject of `events tail`.
fn events_filter(prefix: &str, saga: Option<&str>, type_: Option<&str>) -> String {
    let saga = saga.unwrap_or("*");
    let type_ = type_
        .map(|t| {
            t.strip_prefix(jetsaga_engine::events::TYPE_PREFIX)
                .unwrap_or(t)
        })
        .map(|t| {
            if t.contains('.') {
                t.to_string()
            } else {
                format!("{t}.*")
            }
        });
    match type_ {
        Some(t) => format!("{prefix}.event.{saga}.{t}"),
        None => format!("{prefix}.event.{saga}.>"),
    }
}

/// Prints one message of the lifecycle events stream: the CloudEvent's
/// line, or its JSON.
fn print_event(output: Output, subject: &str, payload: &[u8]) {
    match output {
        Output::Json => println!("{}", String::from_utf8_lossy(payload)),
        Output::Table => {
            match serde_json::from_slice::<jetsaga_engine::events::CloudEvent>(payload) {
                Ok(ce) => println!("{}", event_line(&ce)),
                Err(_) => println!("{subject} {}", String::from_utf8_lossy(payload)),
            }
        }
    }
}

/// The CloudEvent `events publish --type --source` sends: `data` is the
/// body's JSON, or the body as a string (`text/plain`) when it is not JSON.
fn cloud_event(type_: &str, source: &str, body: Option<&[u8]>) -> serde_json::Value {
    let mut event = serde_json::json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": source,
        "type": type_,
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    });
    if let Some(body) = body {
        let (content_type, data) = match serde_json::from_slice(body) {
            Ok(json) => ("application/json", json),
            Err(_) => (
                "text/plain",
                String::from_utf8_lossy(body).into_owned().into(),
            ),
        };
        event["datacontenttype"] = content_type.into();
        event["data"] = data;
    }
    event
}

/// One line of `events tail` for a CloudEvent.
fn event_line(ce: &jetsaga_engine::events::CloudEvent) -> String {
    let d = &ce.data;
    let mut line = format!(
        "{} {} {} {}",
        ce.time,
        ce.type_
            .strip_prefix(jetsaga_engine::events::TYPE_PREFIX)
            .unwrap_or(&ce.type_),
        d.saga_name,
        d.saga_id
    );
    let mut push = |k: &str, v: String| line.push_str(&format!(" {k}={v}"));
    if let Some(v) = &d.step {
        push("step", v.clone());
    }
    if let Some(v) = d.kind {
        push("kind", v.as_str().to_string());
    }
    if let Some(v) = d.attempt {
        push("attempt", v.to_string());
    }
    if let Some(v) = &d.state {
        push("state", v.clone());
    }
    if let Some(v) = &d.reason {
        push("reason", format!("{v:?}"));
    }
    if let Some(v) = &d.error {
        push("error", format!("{v:?}"));
    }
    line
}

async fn events(cli: &Cli, cmd: &EventsCommand) -> anyhow::Result<i32> {
    use futures::StreamExt as _;
    let client = client(cli).await?;
    let nats = client.nats().clone();
    let prefix = cli.loaded().config.prefix.clone();
    let subjects = jetsaga_protocol::Subjects::new(&prefix);
    match cmd {
        EventsCommand::Publish {
            subject,
            data,
            type_,
            source,
            data_flag,
        } => {
            let body = match data.as_ref().or(data_flag.as_ref()) {
                Some(data) => match data.strip_prefix('@') {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        anyhow::anyhow!("{}: cannot read {path}: {e}", ErrorCode::BadInput)
                    })?),
                    None => Some(data.clone().into_bytes()),
                },
                None => None,
            };
            let (subject, body) = match (type_, source) {
                (Some(type_), Some(source)) => {
                    let event = cloud_event(type_, source, body.as_deref());
                    let subject = subject.clone().unwrap_or_else(|| type_.clone());
                    (subject, serde_json::to_vec(&event)?)
                }
                _ => (
                    subject.clone().unwrap_or_default(),
                    body.unwrap_or_default(),
                ),
            };
            nats.publish(subject, body.into()).await?;
            nats.flush().await?;
            Ok(0)
        }
        EventsCommand::Subscribe { subject, channels } => {
            let subjects = subject.iter().chain(channels).cloned();
            let subs = futures::future::try_join_all(subjects.map(|s| nats.subscribe(s))).await?;
            let mut sub = futures::stream::select_all(subs);
            let stop = shutdown_on_signals();
            loop {
                let msg = tokio::select! {
                    m = sub.next() => m,
                    () = stop.cancelled() => None,
                };
                let Some(msg) = msg else { break };
                match cli.output {
                    Output::Table => {
                        println!("{} {}", msg.subject, String::from_utf8_lossy(&msg.payload))
                    }
                    Output::Json => {
                        let payload = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                            .unwrap_or_else(|_| {
                                String::from_utf8_lossy(&msg.payload).into_owned().into()
                            });
                        println!(
                            "{}",
                            serde_json::json!({"subject": msg.subject.as_str(), "data": payload})
                        );
                    }
                }
                std::io::stdout().flush()?;
            }
            Ok(0)
        }
        EventsCommand::Log { last } => {
            use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
            let js = async_nats::jetstream::new(nats);
            let mut stream = js.get_stream(subjects.events_stream()).await?;
            let state = stream.info().await?.state.clone();
            if state.messages == 0 || *last == 0 {
                return Ok(0);
            }
            let start = state
                .last_sequence
                .saturating_sub(*last - 1)
                .max(state.first_sequence);
            let consumer = stream
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
                    },
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer.messages().await?;
            while let Some(msg) = messages.next().await {
                let msg = msg?;
                print_event(cli.output, &msg.subject, &msg.payload);
                let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                if info.stream_sequence >= state.last_sequence || info.pending == 0 {
                    break;
                }
            }
            std::io::stdout().flush()?;
            Ok(0)
        }
        EventsCommand::Tail { saga, type_, all } => {
            use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
            let js = async_nats::jetstream::new(nats);
            let stream = js.get_stream(subjects.events_stream()).await?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: events_filter(&prefix, saga.as_deref(), type_.as_deref()),
                    deliver_policy: if *all {
                        DeliverPolicy::All
                    } else {
                        DeliverPolicy::New
                    },
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer.messages().await?;
            let stop = shutdown_on_signals();
            loop {
                let msg = tokio::select! {
                    m = messages.next() => m,
                    () = stop.cancelled() => None,
                };
                let Some(msg) = msg else { break };
                let msg = msg?;
                print_event(cli.output, &msg.subject, &msg.payload);
                std::io::stdout().flush()?;
            }
            Ok(0)
        }
    }
}

/// `jetsaga config check`: prints the configuration, then checks it as the
/// engine would at start (values, then the files the NATS connection reads).
fn config_check(cli: &Cli) -> anyhow::Result<i32> {
    let loaded = cli.loaded();
    let checked = loaded
        .config
        .validate()
        .and_then(|()| jetsaga_engine::config::connect_options(&loaded.config.nats).map(drop))
        .map_err(|e| (e.code(), e.to_string()))
        .and_then(|()| {
            jetsaga_engine::api::http::Security::of(&loaded.config)
                .map(drop)
                .map_err(|e| (ErrorCode::HttpTls, e.to_string()))
        });
    match cli.output {
        Output::Table => print!("{}", loaded.annotated_yaml()),
        Output::Json => {
            let mut report = loaded.to_json();
            report["valid"] = checked.is_ok().into();
            if let Err((code, message)) = &checked {
                report["error"] = serde_json::json!({"code": code, "message": message});
            }
            print_json(&report)?;
        }
    }
    if let Err((_, message)) = checked {
        anyhow::bail!(message);
    }
    if cli.output == Output::Table {
        eprintln!("ok: the configuration is valid");
    }
    Ok(0)
}

/// `jetsaga config new-token`: a fresh token and its configuration entry.
fn new_token(role: Role, name: Option<&str>, output: Output) -> anyhow::Result<i32> {
    let token = auth::new_token();
    let digest = auth::TokenDigest::of(&token);
    let name = name.map_or_else(
        || format!("{role}-{}", &digest.to_string()[..8]),
        str::to_string,
    );
    let entry = HttpToken {
        name,
        role,
        sha256: digest,
    };
    auth::validate(std::slice::from_ref(&entry))
        .map_err(|e| ConfigError::Invalid(e.replace("http_tokens: name", "--name")))?;
    match output {
        Output::Json => print_json(&serde_json::json!({
            "name": entry.name,
            "role": entry.role,
            "token": token,
            "sha256": entry.sha256,
            "yaml": entry.yaml_line(),
            "env": format!("JETSAGA_HTTP_TOKENS={entry}"),
        }))?,
        Output::Table => {
            println!("token:  {token}");
            println!("yaml:   {}", entry.yaml_line());
            println!("env:    JETSAGA_HTTP_TOKENS={entry}");
            eprintln!(
                "keep the token secret: it is shown only now, and the engine keeps only its SHA-256. Put the yaml line under `http_tokens:` in the configuration file (or the env form, comma separated, in JETSAGA_HTTP_TOKENS); callers send `Authorization: Bearer <token>`."
            );
        }
    }
    Ok(0)
}

async fn dev(cli: &Cli, args: &DevArgs) -> anyhow::Result<i32> {
    let mut config = cli.loaded().config.clone();
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir)?;
    let nats = if args.external_nats {
        None
    } else {
        let binary =
            find_nats_server(args.nats_server.as_deref()).ok_or(crate::dev::DevError::NotFound)?;
        let nats = DevNats::start(&binary, args.nats_port, &dir).await?;
        config.nats.url = nats.url().to_string();
        config.data_dir = dir.join("engine");
        eprintln!(
            "jetsaga dev: nats-server on {} (data and logs under {})",
            nats.url(),
            dir.display()
        );
        Some(nats)
    };
    let result = jetsaga_engine::engine::run(config, shutdown_on_signals()).await;
    if let Some(nats) = nats {
        nats.stop().await;
    }
    result?;
    Ok(0)
}

async fn client(cli: &Cli) -> Result<Client, ClientError> {
    let config = &cli.loaded().config;
    config.validate_client()?;
    Client::connect_with(&config.nats, &config.prefix).await
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn def(cli: &Cli, cmd: &DefCommand) -> anyhow::Result<i32> {
    match cmd {
        DefCommand::Validate { files } => {
            let limits = cli.loaded().config.definition_limits();
            let mut failed = false;
            let mut report = Vec::new();
            for file in jetsaga_engine::engine::definition_files(files)? {
                match definition::parse_file_within(&file, &limits) {
                    Ok(parsed) => {
                        let names: Vec<String> =
                            parsed.sagas.iter().map(|d| d.name.clone()).collect();
                        let services: Vec<String> =
                            parsed.services.iter().map(|p| p.service.clone()).collect();
                        report.push(serde_json::json!({"file": file, "ok": true, "sagas": names, "services": services}));
                        if cli.output == Output::Table {
                            let services = if services.is_empty() {
                                String::new()
                            } else {
                                format!(" (service policies: {})", services.join(", "))
                            };
                            println!("ok      {}: {}{services}", file.display(), names.join(", "));
                        }
                    }
                    Err(e) => {
                        failed = true;
                        report.push(serde_json::json!({"file": file, "ok": false, "code": e.code(), "error": e.to_string()}));
                        if cli.output == Output::Table {
                            eprintln!("invalid [{}] {e}", e.code());
                        }
                    }
                }
            }
            if cli.output == Output::Json {
                print_json(&report)?;
            }
            Ok(i32::from(failed))
        }
        DefCommand::Apply { files } => {
            let limits = cli.loaded().config.definition_limits();
            let mut defs = Vec::new();
            let mut services = Vec::new();
            for file in jetsaga_engine::engine::definition_files(files)? {
                let parsed = definition::parse_file_within(&file, &limits)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
                defs.extend(parsed.sagas);
                // Service policies (`jetsaga_core::admission`): a later file's wins.
                services.retain(|p: &definition::ServicePolicy| {
                    !parsed.services.iter().any(|q| q.service == p.service)
                });
                services.extend(parsed.services);
            }
            let applied = client(cli).await?.apply_all(defs, services).await?;
            match cli.output {
                Output::Json => print_json(&applied)?,
                Output::Table => {
                    for a in applied {
                        let what = if a.changed { "applied" } else { "unchanged" };
                        println!("{what:9} {} v{}", a.name, a.version);
                    }
                }
            }
            Ok(0)
        }
        DefCommand::List => {
            let defs = client(cli).await?.definition_listing().await?;
            match cli.output {
                Output::Json => print_json(&defs)?,
                Output::Table => println!("{}", render::definitions(&defs)),
            }
            Ok(0)
        }
    }
}

async fn breaker(cli: &Cli, cmd: &BreakerCommand) -> anyhow::Result<i32> {
    let client = client(cli).await?;
    let services = match cmd {
        BreakerCommand::List => client.breakers().await?,
        BreakerCommand::Status { name } => vec![client.breaker(name).await?],
        BreakerCommand::Reset { name, force_state } => {
            let state = force_state.map(|s| match s {
                ForcedState::Open => jetsaga_protocol::api::ForcedState::Open,
                ForcedState::Closed => jetsaga_protocol::api::ForcedState::Closed,
            });
            vec![client.reset_breaker(name, state).await?]
        }
    };
    match (cli.output, cmd) {
        (Output::Json, BreakerCommand::List) => print_json(&services)?,
        (Output::Json, _) => print_json(&services[0])?,
        (Output::Table, BreakerCommand::List) => println!("{}", render::breakers(&services)),
        (Output::Table, _) => {
            println!("{}", render::breakers(&services));
            if let Some(history) = render::breaker_history(&services[0]) {
                println!("history:\n{history}");
            }
        }
    }
    Ok(0)
}

async fn cluster(cli: &Cli, cmd: &ClusterCommand) -> anyhow::Result<i32> {
    let client = client(cli).await?;
    match cmd {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            match cli.output {
                Output::Json => print_json(&status)?,
                Output::Table => println!("{}", render::cluster(&status, now_ms())),
            }
        }
        ClusterCommand::StepDown { partition } => {
            let reply = client.step_down(*partition).await?;
            match cli.output {
                Output::Json => print_json(&reply)?,
                Output::Table => println!(
                    "partition {}: {} stepped down; another engine takes it over",
                    reply.partition, reply.released_by
                ),
            }
        }
    }
    Ok(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_input(input: &str) -> anyhow::Result<serde_json::Value> {
    let text = match input.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot read input file {path}: {e}",
                ErrorCode::BadInput
            )
        })?,
        None => input.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: --input is not valid JSON: {e}", ErrorCode::BadInput))
}

async fn saga(cli: &Cli, cmd: &SagaCommand) -> anyhow::Result<i32> {
    match cmd {
        SagaCommand::Start {
            name,
            input,
            idempotency_key,
            wait,
            timeout,
        } => {
            let input = read_input(input)?;
            let client = client(cli).await?;
            let reply = client
                .start(name, input, idempotency_key.as_deref())
                .await?;
            if *wait {
                // Progress goes to stderr, so stdout stays the final result.
                eprintln!("saga {}", reply.saga_id);
                let detail = client
                    .watch(&reply.saga_id, *timeout, |d| {
                        eprintln!("{}", render::progress_line(d))
                    })
                    .await?;
                match cli.output {
                    Output::Json => print_json(&detail)?,
                    Output::Table => println!("{}", render::saga(&detail)),
                }
            } else {
                match cli.output {
                    Output::Json => print_json(&reply)?,
                    Output::Table => {
                        println!("{}", reply.saga_id);
                        if !reply.created {
                            eprintln!("(existing saga for this idempotency key)");
                        }
                        if reply.queued {
                            eprintln!(
                                "(queued: a concurrency limit is reached; it starts when room frees)"
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
        SagaCommand::Status {
            id,
            idempotency_key,
        } => {
            let client = client(cli).await?;
            let detail = match (id, idempotency_key) {
                (_, Some(key)) => client.get_by_key(key).await?,
                (Some(id), None) => client.get(id).await?,
                (None, None) => anyhow::bail!("name the saga by its id or by --key"),
            };
            match cli.output {
                Output::Json => print_json(&detail)?,
                Output::Table => {
                    println!("{}", render::saga(&detail));
                    // Where it lives: its partition and that partition's
                    // leader (best effort: an older engine has no cluster).
                    if let Ok(status) = client.cluster_status().await
                        && let Some(p) =
                            status.partitions.get(jetsaga_protocol::partition::of_saga(
                                &detail.saga.id,
                                status.partitions.len() as u32,
                            ) as usize)
                    {
                        println!(
                            "partition {}, led by {}",
                            p.partition,
                            p.leader.as_deref().unwrap_or("no engine right now")
                        );
                    }
                }
            }
            Ok(0)
        }
        SagaCommand::Stats { saga, since } => {
            let req = jetsaga_protocol::api::StatsRequest {
                saga: saga.clone(),
                since: since.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            };
            let stats = client(cli).await?.stats(&req).await?;
            match cli.output {
                Output::Json => print_json(&stats)?,
                Output::Table => println!("{}", render::stats(&stats)),
            }
            Ok(0)
        }
        SagaCommand::List {
            state,
            saga,
            limit,
            before,
        } => {
            let filter = jetsaga_protocol::api::ListRequest {
                state: state.as_deref().map(str::parse).transpose()?,
                name: saga.clone(),
                before: before.clone(),
                limit: *limit,
                ..Default::default()
            };
            let sagas = client(cli).await?.list(&filter).await?;
            match cli.output {
                Output::Json => print_json(&sagas)?,
                Output::Table => println!("{}", render::summaries(&sagas)),
            }
            Ok(0)
        }
        SagaCommand::Cancel {
            id,
            compensate,
            reason,
        } => {
            let detail = client(cli)
                .await?
                .cancel(id, *compensate, reason.clone())
                .await?;
            match cli.output {
                Output::Json => print_json(&detail)?,
                Output::Table => println!("{}", render::saga(&detail)),
            }
            Ok(0)
        }
        SagaCommand::Retry { id, wait, timeout }
        | SagaCommand::RetryCompensation { id, wait, timeout } => {
            let client = client(cli).await?;
            let mut detail = if matches!(cmd, SagaCommand::Retry { .. }) {
                client.retry(id).await?
            } else {
                client.retry_compensation(id).await?
            };
            if *wait {
                detail = client.wait_terminal(id, *timeout).await?;
            }
            match cli.output {
                Output::Json => print_json(&detail)?,
                Output::Table => println!("{}", render::saga(&detail)),
            }
            Ok(0)
        }
        SagaCommand::Delete { id } => {
            client(cli).await?.delete(id).await?;
            match cli.output {
                Output::Json => print_json(&serde_json::json!({"id": id, "deleted": true}))?,
                Output::Table => println!("deleted {id}"),
            }
            Ok(0)
        }
        SagaCommand::Watch { id, timeout } => {
            let client = client(cli).await?;
            let output = cli.output;
            let last = client
                .watch(id, *timeout, |detail| match output {
                    Output::Json => {
                        if let Ok(line) = serde_json::to_string(detail) {
                            println!("{line}");
                        }
                    }
                    Output::Table => println!("{}", render::progress_line(detail)),
                })
                .await?;
            if output == Output::Table {
                println!("{}", render::saga(&last));
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use jetsaga_engine::config::{KEYS, LogFormat, Source, flag_name};

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("jetsaga").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn load(args: &[&str], env: &[(&str, &str)]) -> Loaded {
        let mut cli = parse(args);
        cli.load_config(&Env::from_pairs(env.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"))
            .clone()
    }

    #[test]
    fn errors_print_their_causes_once() {
        let io = std::io::Error::other("disk on fire");
        let wrapped = anyhow::Error::new(io).context("cannot write the store");
        assert_eq!(
            error_message(&wrapped),
            "cannot write the store: disk on fire"
        );
        let own = anyhow::Error::new(ConfigError::File {
            path: "x.yaml".into(),
            message: "bad".into(),
        });
        assert_eq!(error_message(&own), "E-CONFIG-FILE: x.yaml: bad");
    }

    #[test]
    fn runbook_verbs_parse_to_jetsaga_commands() {
        let command = |args: &[&str]| parse(args).command;
        assert!(matches!(
            command(&["saga", "execute", "deploy", "--input", "{\"a\": 1}"]),
            Command::Saga(SagaCommand::Start { name, input, .. }) if name == "deploy" && input == "{\"a\": 1}"
        ));
        assert!(matches!(
            command(&["circuit-breaker", "reset", "pay", "--force-state", "closed"]),
            Command::Breaker(BreakerCommand::Reset { name, force_state: Some(ForcedState::Closed) }) if name == "pay"
        ));
        assert!(matches!(
            command(&["circuit-breaker", "reset", "pay", "--force-state", "open"]),
            Command::Breaker(BreakerCommand::Reset { name, force_state: Some(ForcedState::Open) }) if name == "pay"
        ));
        assert!(matches!(
            command(&["circuit-breaker", "status", "pay"]),
            Command::Breaker(BreakerCommand::Status { .. })
        ));
        assert!(matches!(
            command(&["events", "publish", "--type", "env.up", "--source", "executor"]),
            Command::Events(EventsCommand::Publish { subject: None, type_: Some(t), source: Some(s), .. })
                if t == "env.up" && s == "executor"
        ));
        assert!(matches!(
            command(&["events", "publish", "a.b", "hello"]),
            Command::Events(EventsCommand::Publish {
                subject: Some(_),
                data: Some(_),
                type_: None,
                ..
            })
        ));
        assert!(matches!(
            command(&["events", "subscribe", "--channels", "environment.lifecycle.*,x.y", "--channels", "z"]),
            Command::Events(EventsCommand::Subscribe { subject: None, channels }) if channels == ["environment.lifecycle.*", "x.y", "z"]
        ));
        assert!(matches!(
            command(&["events", "log", "--tail", "100"]),
            Command::Events(EventsCommand::Log { last: 100 })
        ));
        let refused = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("jetsaga").chain(args.iter().copied())).is_err()
        };
        // A type needs a source; a raw message needs a subject and a body;
        // subscribe needs a subject or channels, not both.
        assert!(refused(&["events", "publish", "--type", "t"]));
        assert!(refused(&["events", "publish", "a.b"]));
        assert!(refused(&["events", "subscribe"]));
        assert!(refused(&["events", "subscribe", "a", "--channels", "b"]));
    }

    #[test]
    fn help_shows_jetsagas_own_names_first() {
        fn line(help: &str, name: &str) -> String {
            help.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no `{name}` in {help}"))
                .to_string()
        }
        let mut cli = Cli::command();
        let top = cli.render_help().to_string();
        assert!(
            line(&top, "breaker").contains("[alias: circuit-breaker]"),
            "{top}"
        );
        let saga = cli.find_subcommand_mut("saga").expect("saga");
        let help = saga.render_help().to_string();
        assert!(line(&help, "start").contains("[alias: execute]"), "{help}");
    }

    #[test]
    fn a_published_event_is_a_cloud_event() {
        let event = cloud_event("env.up", "executor", Some(b"{\"n\": 1}"));
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(
            (&event["type"], &event["source"]),
            (&"env.up".into(), &"executor".into())
        );
        assert_eq!(event["data"]["n"], 1);
        assert_eq!(event["datacontenttype"], "application/json");
        assert!(humantime::parse_rfc3339(event["time"].as_str().expect("time")).is_ok());
        let text = cloud_event("env.up", "executor", Some(b"not json"));
        assert_eq!(
            (&text["data"], &text["datacontenttype"]),
            (&"not json".into(), &"text/plain".into())
        );
        assert!(cloud_event("t", "s", None).get("data").is_none());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_key_has_a_flag() {
        let mut args: Vec<String> = vec!["config".into(), "check".into()];
        for key in KEYS {
            let value = match *key {
                "nats.url" => "nats://flag:4222",
                "nats.tls.required" | "http_insecure" => "true",
                "http_tokens" => {
                    "ops:operate:0101010101010101010101010101010101010101010101010101010101010101"
                }
                "max_payload"
                | "batch_size"
                | "replicas"
                | "max_running_sagas"
                | "http_max_connections"
                | "snapshot_every"
                | "partitions"
                | "max_definition_steps"
                | "max_definition_fan_out"
                | "max_definition_bytes" => "3000",
                "duplicate_window" | "ack_wait" | "http_header_timeout" | "http_body_timeout" => {
                    "5s"
                }
                "retention" | "outcome_ttl" => "3d",
                "lease_ttl" => "4s",
                "lease_renew" => "2s",
                "engine_id" => "flagged-engine",
                "http_listen" => "127.0.0.1:0",
                "log_format" => "json",
                "log" => "debug",
                "prefix" => "flagged",
                _ => "/from/flag",
            };
            args.push(format!("{}={value}", flag_name(key)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let loaded = load(&args, &[]);
        for key in KEYS {
            assert_eq!(
                loaded.sources.get(key),
                Source::Flag {
                    flag: flag_name(key)
                },
                "{key}"
            );
        }
        assert_eq!(loaded.config.log_format, LogFormat::Json);
        assert!(loaded.config.nats.tls.required);
        assert!(loaded.config.http_insecure);
        assert_eq!(loaded.config.http_tokens[0].role, Role::Operate);
        // Tokens may be repeated as well as comma separated.
        let digest = "02".repeat(32);
        let (a, b) = (
            format!("a:read:{digest}"),
            format!("b:admin:{}", "03".repeat(32)),
        );
        let loaded = load(&["server", "--http-tokens", &a, "--http-tokens", &b], &[]);
        let names: Vec<&str> = loaded
            .config
            .http_tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn flags_beat_the_environment_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("j.yaml");
        std::fs::write(&file, "prefix: from-file\nreplicas: 3\nbatch_size: 9\n").unwrap();
        let env = [
            ("JETSAGA_CONFIG", file.to_str().unwrap()),
            ("JETSAGA_REPLICAS", "2"),
            ("JETSAGA_PREFIX", "from-env"),
        ];
        let loaded = load(&["--prefix", "from-flag", "server"], &env);
        assert_eq!(loaded.file.as_deref(), Some(file.as_path()));
        assert_eq!(loaded.config.prefix, "from-flag");
        assert_eq!(loaded.config.replicas, 2);
        assert_eq!(loaded.config.batch_size, 9);
        // --config beats JETSAGA_CONFIG.
        let other = dir.path().join("k.json");
        std::fs::write(&other, "{\"batch_size\": 4}").unwrap();
        let loaded = load(&["server", "--config", other.to_str().unwrap()], &env);
        assert_eq!(loaded.config.batch_size, 4);
        // Global flags go before or after the command.
        let loaded = load(
            &["saga", "list", "--nats-user", "u", "--nats-password", "p"],
            &[],
        );
        assert_eq!(loaded.config.nats.user.as_deref(), Some("u"));
    }

    #[test]
    fn dev_has_its_own_defaults_and_clients_take_no_engine_flags() {
        let dev = load(&["dev"], &[]);
        assert_eq!(dev.config.data_dir, PathBuf::from(".jetsaga/dev"));
        assert_eq!(dev.config.http_listen.as_deref(), Some(DEV_HTTP_LISTEN));
        assert_eq!(dev.sources.get("http_listen"), Source::Default);
        let off = load(&["dev", "--http-listen", "off"], &[]);
        assert_eq!(off.config.http_listen, None);
        let server = load(&["server"], &[]);
        assert_eq!(server.config.http_listen, None);
        assert!(Cli::try_parse_from(["jetsaga", "saga", "list", "--replicas", "3"]).is_err());
    }
}
