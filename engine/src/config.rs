//! Engine configuration: one struct, [`Config`], resolved from sources in a
//! fixed order, each overriding the one before:
//!
//! 1. built-in defaults ([`Config::default`]; `jetsaga dev` changes two);
//! 2. a configuration file (`--config FILE` or `JETSAGA_CONFIG`), YAML or
//!    JSON by its extension, whose keys are the field paths below
//!    (`nats.tls.ca`); an unknown key is an error;
//! 3. `JETSAGA_*` environment variables, one per key ([`env_var`]:
//!    `nats.tls.ca` → `JETSAGA_NATS_TLS_CA`);
//! 4. command-line flags, one per key ([`flag_name`]: `--nats-tls-ca`);
//!
//! then [`Config::validate`] checks the result. [`Config::resolve`] does the
//! layering and records where each value came from, which
//! `jetsaga config check` prints.
//!
//! ```
//! use jetsaga_engine::config::{Config, Env, FileFormat, Layer, Source};
//!
//! let file = Layer::parse_str("replicas: 3\nbatch_size: 64\nnats:\n  user: app\n  password: s3cret\n", FileFormat::Yaml)?;
//! let env = Env::from_pairs([("JETSAGA_REPLICAS", "1")]);
//! let loaded = Config::resolve(Config::default(), Some(("jetsaga.yaml".into(), file)), &env, Layer::default())?;
//! assert_eq!(loaded.config.replicas, 1); // the environment beats the file
//! assert_eq!(loaded.config.batch_size, 64);
//! assert_eq!(loaded.sources.get("replicas"), Source::Env { var: "JETSAGA_REPLICAS".into() });
//! assert!(!format!("{:?}", loaded.config).contains("s3cret")); // secrets are masked
//! loaded.config.validate()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod load;
mod nats;
mod show;

pub use load::{
    Env, FileFormat, Layer, Loaded, NatsLayer, Origin, Source, Sources, TlsLayer, env_var,
    flag_name,
};
pub use nats::{
    DEFAULT_NATS_URL, MASK, NatsAuth, NatsConfig, Nkey, Secret, TlsConfig, connect_error_kind,
    connect_hint, connect_options, server_addrs,
};
pub use show::KEYS;

pub mod tokens;
use crate::retention::Retention;
use jetsaga_core::saga::definition::{self, DefinitionLimits};
use jetsaga_protocol::{self as protocol, DEFAULT_MAX_PAYLOAD, DEFAULT_PREFIX, ErrorCode};

/// How long the outcomes stream keeps a step's recorded outcome by default.
pub const DEFAULT_OUTCOME_TTL: Duration = Duration::from_secs(24 * 3600);
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tokens::HttpToken;

/// Everything the engine needs to run. Its `Debug` and `Serialize` show
/// secrets as `***`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// How to reach NATS: servers, credentials, TLS.
    pub nats: NatsConfig,
    /// Subject prefix of this installation.
    pub prefix: String,
    /// Directory of the sled store.
    pub data_dir: PathBuf,
    /// Definition files applied at start (files or directories of `*.yaml`, `*.yml`, `*.json`).
    pub definitions: Vec<PathBuf>,
    /// The environment this engine runs in (`staging`, `production`...),
    /// against which a definition's `policy.environments` is checked; none
    /// when absent, and then sagas restricted to environments do not start.
    pub environment: Option<String>,
    /// Largest accepted saga input or result, in bytes.
    pub max_payload: usize,
    /// JetStream duplicate window of the engine's streams.
    #[serde(serialize_with = "serialize_duration")]
    pub duplicate_window: Duration,
    /// How long the outcomes stream keeps a step's recorded outcome (its
    /// idempotency record). Longer than any step is retried under one key.
    #[serde(serialize_with = "serialize_duration")]
    pub outcome_ttl: Duration,
    /// Ack wait of the engine's own consumers (results, starts). The engine
    /// acks within one group commit, so this only bounds how long messages a
    /// crashed engine had pulled wait before they are delivered again.
    #[serde(serialize_with = "serialize_duration")]
    pub ack_wait: Duration,
    /// Most events the partition applies before one group commit.
    pub batch_size: usize,
    /// Most sagas running (or compensating) at once over all definitions;
    /// more starts wait, durably and in order, in the start queue
    /// ([`jetsaga_core::limits`]). Unlimited when absent (`0` in a file, variable
    /// or flag).
    pub max_running_sagas: Option<u32>,
    /// Most steps in one saga definition; a larger one is refused
    /// (`E-DEF-TOO-LARGE`) by `def apply`, `--definitions` and `def validate`.
    pub max_definition_steps: usize,
    /// Most steps of a definition one transition can start at once: the
    /// steps without dependencies, and the dependents of any one step.
    pub max_definition_fan_out: usize,
    /// Largest definitions file (or text sent to the API), in bytes.
    pub max_definition_bytes: usize,
    /// Replicas of the engine's streams (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// How long finished (terminal) sagas are kept before they are deleted
    /// with their history and idempotency key ([`crate::retention`]);
    /// `off` keeps them forever.
    pub retention: Retention,
    /// Address (`HOST:PORT`) of the HTTP API; no HTTP API when absent (`off`
    /// in a file, variable or flag). Port 0 picks a free port (the engine
    /// logs the one it got).
    pub http_listen: Option<String>,
    /// How long an HTTP connection may take to send a request's headers,
    /// counted from when it opens or its previous answer was sent: a
    /// connection silent, idle or sending headers slowly for longer is
    /// closed.
    #[serde(serialize_with = "serialize_duration")]
    pub http_header_timeout: Duration,
    /// How long a handler waits for a request body in full; then it answers
    /// 408 `E-REQUEST-TIMEOUT` and the connection closes.
    #[serde(serialize_with = "serialize_duration")]
    pub http_body_timeout: Duration,
    /// Most HTTP connections open at once; more are answered 503
    /// `E-TOO-MANY-CONNECTIONS` and closed, except probes of `/health` and
    /// `/ready`.
    pub http_max_connections: usize,
    /// Bearer tokens of the HTTP API, each with a name and a role, kept as
    /// SHA-256 digests ([`tokens`]). With none, every HTTP route
    /// is open.
    pub http_tokens: Vec<HttpToken>,
    /// Lets the HTTP API listen on an address other than loopback without
    /// tokens, for a listener behind a proxy that authenticates.
    pub http_insecure: bool,
    /// PEM file of the HTTP API's certificate chain; with `http_tls_key`,
    /// the listener speaks HTTPS.
    pub http_tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `http_tls_cert`.
    pub http_tls_key: Option<PathBuf>,
    /// This engine's id in the cluster; by default one made at the first
    /// start from the host name and kept in the data directory.
    pub engine_id: Option<String>,
    /// How long a partition's leader lease lasts without renewal: an engine
    /// that dies without handing over is replaced after at most this.
    #[serde(serialize_with = "serialize_duration")]
    pub lease_ttl: Duration,
    /// How often a leader renews its leases (less than `lease_ttl`).
    #[serde(serialize_with = "serialize_duration")]
    pub lease_renew: Duration,
    /// Journal records between two snapshots of a partition's store (taken
    /// by a standby, or by an engine as it takes a partition over); the
    /// journal is trimmed to the latest snapshot.
    pub snapshot_every: u64,
    /// The installation's number of partitions (1 to 4096): chosen at its
    /// first start and recorded in NATS; an engine configured with another
    /// number refuses to start. Each partition has its own journal, lease
    /// and leader, so more partitions spread the work among more engines.
    pub partitions: u32,
    /// How log lines look: `text` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// Which log lines to keep, in `tracing`'s filter syntax (`info`,
    /// `warn,jetsaga_engine=debug`); when absent, `info` for `server` and
    /// `dev`, `warn` for the client commands.
    pub log: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            prefix: DEFAULT_PREFIX.into(),
            data_dir: PathBuf::from(".jetsaga/data"),
            definitions: Vec::new(),
            environment: None,
            max_payload: DEFAULT_MAX_PAYLOAD,
            duplicate_window: Duration::from_secs(120),
            outcome_ttl: DEFAULT_OUTCOME_TTL,
            ack_wait: Duration::from_secs(10),
            batch_size: 256,
            max_running_sagas: None,
            max_definition_steps: definition::DEFAULT_MAX_STEPS,
            max_definition_fan_out: definition::DEFAULT_MAX_FAN_OUT,
            max_definition_bytes: definition::DEFAULT_MAX_FILE_BYTES,
            replicas: 1,
            retention: Retention::default(),
            http_listen: None,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(30),
            http_tokens: Vec::new(),
            http_insecure: false,
            http_tls_cert: None,
            http_tls_key: None,
            engine_id: None,
            lease_ttl: Duration::from_secs(3),
            lease_renew: Duration::from_secs(1),
            snapshot_every: 10_000,
            partitions: 1,
            http_max_connections: 1024,
            log_format: LogFormat::Text,
            log: None,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event for people (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, the event's fields (`saga_id`, ...) at the
    /// top level next to `timestamp`, `level`, `target` and `message`.
    Json,
}

/// A configuration that cannot work or cannot be read. Messages never
/// contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value, or a combination of values, that cannot work.
    #[error("{code}: {0}", code = ErrorCode::Config)]
    Invalid(String),
    /// The configuration file cannot be read or parsed, or has a key that
    /// does not exist.
    #[error("{code}: {}: {message}", path.display(), code = ErrorCode::ConfigFile)]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and column when known.
        message: String,
    },
    /// The HTTP API would listen on an address other than loopback with no
    /// token configured: anyone who reaches it could run every operation.
    #[error(
        "{code}: http_listen {addr} is not a loopback address and no http_tokens are configured, so anyone who reaches it could start, cancel, delete and redefine sagas; configure http_tokens (`jetsaga config new-token --role admin`), listen on 127.0.0.1, or pass --http-insecure (http_insecure: true) when a proxy that authenticates stands in front",
        code = ErrorCode::HttpInsecure
    )]
    InsecureHttp {
        /// The address.
        addr: String,
    },
    /// A `JETSAGA_*` environment variable does not parse.
    #[error("{code}: {var}: {message}", code = ErrorCode::ConfigEnv)]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ConfigError::Invalid(_) => ErrorCode::Config,
            ConfigError::File { .. } => ErrorCode::ConfigFile,
            ConfigError::Env { .. } => ErrorCode::ConfigEnv,
            ConfigError::InsecureHttp { .. } => ErrorCode::HttpInsecure,
        }
    }
}

impl Config {
    /// Checks the values together; call it after all sources were merged.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_client()?;
        if self.max_payload < 1024 {
            return Err(ConfigError::Invalid(format!(
                "max_payload {} is below 1024 bytes",
                self.max_payload
            )));
        }
        for (key, value) in [
            ("max_definition_steps", self.max_definition_steps),
            ("max_definition_fan_out", self.max_definition_fan_out),
            ("max_definition_bytes", self.max_definition_bytes),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::Invalid(format!(
                "replicas {} is out of range; JetStream allows 1 to 5",
                self.replicas
            )));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::Invalid("batch_size must be at least 1".into()));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::Invalid("ack_wait must be at least 1s".into()));
        }
        if self.outcome_ttl < Duration::from_secs(60) {
            return Err(ConfigError::Invalid(format!(
                "outcome_ttl must be at least 1m, and longer than any step is retried (default {}), not {}",
                humantime::format_duration(DEFAULT_OUTCOME_TTL),
                humantime::format_duration(self.outcome_ttl)
            )));
        }
        if self.outcome_ttl < self.duplicate_window {
            return Err(ConfigError::Invalid(format!(
                "outcome_ttl ({}) must be at least duplicate_window ({}): JetStream refuses a stream whose duplicate window is longer than its max age",
                humantime::format_duration(self.outcome_ttl),
                humantime::format_duration(self.duplicate_window)
            )));
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "duplicate_window must be at least 1s".into(),
            ));
        }
        if let Retention::For(d) = self.retention
            && d < Duration::from_secs(1)
        {
            return Err(ConfigError::Invalid(format!(
                "retention {} is below 1s; write a longer duration, or `off` to keep finished sagas forever",
                self.retention
            )));
        }
        if let Some(env) = &self.environment {
            protocol::validate_token(env).map_err(|e| {
                ConfigError::Invalid(format!("environment {env:?} is not a valid name: {e}"))
            })?;
        }
        for (key, d) in [
            ("http_header_timeout", self.http_header_timeout),
            ("http_body_timeout", self.http_body_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(ConfigError::Invalid(format!(
                    "{key} {} is below 100ms",
                    humantime::format_duration(d)
                )));
            }
        }
        if self.lease_ttl < Duration::from_millis(500) {
            return Err(ConfigError::Invalid(format!(
                "lease_ttl {} is below 500ms",
                humantime::format_duration(self.lease_ttl)
            )));
        }
        if self.lease_renew.is_zero() || self.lease_renew * 2 > self.lease_ttl {
            return Err(ConfigError::Invalid(format!(
                "lease_renew {} must be more than 0 and at most half of lease_ttl ({})",
                humantime::format_duration(self.lease_renew),
                humantime::format_duration(self.lease_ttl)
            )));
        }
        if !(1..=protocol::partition::MAX_PARTITIONS).contains(&self.partitions) {
            return Err(ConfigError::Invalid(format!(
                "partitions {} must be from 1 to {}",
                self.partitions,
                protocol::partition::MAX_PARTITIONS
            )));
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError::Invalid(
                "snapshot_every must be at least 1".into(),
            ));
        }
        if let Some(id) = &self.engine_id
            && (!protocol::is_valid_kv_key(id) || id.contains('.'))
        {
            return Err(ConfigError::Invalid(format!(
                "engine_id {id:?} must be letters, digits, `-` and `_`"
            )));
        }
        if self.http_max_connections == 0 {
            return Err(ConfigError::Invalid(
                "http_max_connections must be at least 1".into(),
            ));
        }
        if let Some(addr) = &self.http_listen {
            let port = addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(ConfigError::Invalid(format!(
                    "http_listen {addr:?} is not HOST:PORT (such as 127.0.0.1:8080, or port 0 for any free port)"
                )));
            }
        }
        self.validate_http_access()
    }

    /// The checks of `http_tokens`, `http_tls_*` and `http_insecure`.
    fn validate_http_access(&self) -> Result<(), ConfigError> {
        tokens::validate(&self.http_tokens).map_err(ConfigError::Invalid)?;
        if self.http_tls_cert.is_some() != self.http_tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "http_tls_cert and http_tls_key go together: set both for HTTPS, or neither".into(),
            ));
        }
        if let Some(addr) = &self.http_listen
            && !is_loopback(addr)
            && self.http_tokens.is_empty()
            && !self.http_insecure
        {
            return Err(ConfigError::InsecureHttp { addr: addr.clone() });
        }
        Ok(())
    }

    /// The size limits definitions must keep to.
    pub fn definition_limits(&self) -> DefinitionLimits {
        DefinitionLimits {
            max_steps: self.max_definition_steps,
            max_fan_out: self.max_definition_fan_out,
            max_file_bytes: self.max_definition_bytes,
        }
    }

    /// The checks of what a client of the API uses: `nats`, `prefix`, `log`.
    pub fn validate_client(&self) -> Result<(), ConfigError> {
        protocol::validate_prefix(&self.prefix)
            .map_err(|e| ConfigError::Invalid(format!("prefix: {e}")))?;
        self.nats.validate()?;
        if let Some(filter) = &self.log {
            tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|e| ConfigError::Invalid(format!("log {filter:?}: {e}")))?;
        }
        Ok(())
    }
}

/// Whether the host of `addr` (`HOST:PORT`) is a loopback address
/// (`127.0.0.0/8`, `::1`) or `localhost`; any other name counts as not.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Durations as humantime strings (`2m`, `10s`), as files take them.
fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests;
