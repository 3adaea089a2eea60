//! Sources of configuration and how they are layered: every source gives a
//! [`Layer`] (each setting optional), applied over the defaults in a fixed
//! order while [`Sources`] records which source set each key.

use super::nats::{Nkey, Secret};
use super::tokens::HttpToken;
use super::{Config, ConfigError, LogFormat};
use crate::retention::Retention;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One source's settings, every one optional. A configuration file
/// deserializes into it (unknown keys are refused), [`Layer::from_env`] reads
/// `JETSAGA_*` variables into it, the CLI turns its flags into one.
///
/// Keys are the [`Config`] field paths (`nats.tls.ca`); a key's environment
/// variable is [`env_var`] of it, its flag [`flag_name`] of it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// `nats.*`.
    #[serde(default)]
    pub nats: NatsLayer,
    /// `prefix`.
    pub prefix: Option<String>,
    /// `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `definitions` (replaces, does not extend, what lower layers gave).
    pub definitions: Option<Vec<PathBuf>>,
    /// `environment`.
    pub environment: Option<String>,
    /// `max_payload`.
    pub max_payload: Option<usize>,
    /// `duplicate_window`.
    #[serde(default, deserialize_with = "humantime_option")]
    pub duplicate_window: Option<Duration>,
    /// `outcome_ttl`.
    #[serde(default, deserialize_with = "humantime_option")]
    pub outcome_ttl: Option<Duration>,
    /// `ack_wait`.
    #[serde(default, deserialize_with = "humantime_option")]
    pub ack_wait: Option<Duration>,
    /// `batch_size`.
    pub batch_size: Option<usize>,
    /// `max_running_sagas`: a count, `0` for unlimited.
    pub max_running_sagas: Option<u32>,
    /// `max_definition_steps`.
    pub max_definition_steps: Option<usize>,
    /// `max_definition_fan_out`.
    pub max_definition_fan_out: Option<usize>,
    /// `max_definition_bytes`.
    pub max_definition_bytes: Option<usize>,
    /// `replicas`.
    pub replicas: Option<usize>,
    /// `retention`: a duration, or `off`.
    pub retention: Option<Retention>,
    /// `http_listen`: `HOST:PORT`, or `off`.
    pub http_listen: Option<String>,
    /// `http_header_timeout`.
    #[serde(default, deserialize_with = "humantime_option")]
    pub http_header_timeout: Option<Duration>,
    /// `http_body_timeout`.
    #[serde(default, deserialize_with = "humantime_option")]
    pub http_body_timeout: Option<Duration>,
    /// `http_max_connections`.
    pub http_max_connections: Option<usize>,
    /// `http_tokens` (replaces, does not extend, what lower layers gave).
    pub http_tokens: Option<Vec<HttpToken>>,
    /// `http_insecure`.
    pub http_insecure: Option<bool>,
    /// `http_tls_cert`.
    pub http_tls_cert: Option<PathBuf>,
    /// `http_tls_key`.
    pub http_tls_key: Option<PathBuf>,
    /// `engine_id`.
    pub engine_id: Option<String>,
    /// `lease_ttl`.
    #[serde(default, deserialize_with = "humantime_option")]
    pub lease_ttl: Option<Duration>,
    /// `lease_renew`.
    #[serde(default, deserialize_with = "humantime_option")]
    pub lease_renew: Option<Duration>,
    /// `snapshot_every`.
    pub snapshot_every: Option<u64>,
    /// `partitions`.
    pub partitions: Option<u32>,
    /// `log_format`.
    pub log_format: Option<LogFormat>,
    /// `log`.
    pub log: Option<String>,
}

/// The `nats` section of a [`Layer`]; also the global `--nats-*` flags.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "NATS connection")]
pub struct NatsLayer {
    /// NATS server URL(s), comma separated [env: JETSAGA_NATS_URL] [default: nats://127.0.0.1:4222]
    #[arg(long = "nats-url", global = true, value_name = "URL")]
    pub url: Option<String>,
    /// NATS credentials file (user JWT and nkey seed) [env: JETSAGA_NATS_CREDS]
    #[arg(long = "nats-creds", global = true, value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// NATS user name, with --nats-password [env: JETSAGA_NATS_USER]
    #[arg(long = "nats-user", global = true, value_name = "USER")]
    pub user: Option<String>,
    /// NATS password; prefer the environment or the file: flags show in `ps` [env: JETSAGA_NATS_PASSWORD]
    #[arg(long = "nats-password", global = true, value_name = "PASSWORD")]
    pub password: Option<Secret>,
    /// NATS authentication token [env: JETSAGA_NATS_TOKEN]
    #[arg(long = "nats-token", global = true, value_name = "TOKEN")]
    pub token: Option<Secret>,
    /// NATS nkey seed, or a file holding it [env: JETSAGA_NATS_NKEY]
    #[arg(long = "nats-nkey", global = true, value_name = "SEED|FILE")]
    pub nkey: Option<String>,
    /// `nats.tls.*`.
    #[serde(default)]
    #[command(flatten)]
    pub tls: TlsLayer,
}

/// The `nats.tls` section of a [`Layer`]; also the `--nats-tls-*` flags.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TlsLayer {
    /// PEM file of the CA that signed the NATS server's certificate [env: JETSAGA_NATS_TLS_CA]
    #[arg(long = "nats-tls-ca", global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate for mutual TLS [env: JETSAGA_NATS_TLS_CERT]
    #[arg(long = "nats-tls-cert", global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's key [env: JETSAGA_NATS_TLS_KEY]
    #[arg(long = "nats-tls-key", global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Refuse to connect to NATS without TLS [env: JETSAGA_NATS_TLS_REQUIRED]
    #[arg(
        long = "nats-tls-required",
        global = true,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub required: Option<bool>,
}

/// The environment variable of configuration key `key`:
/// `JETSAGA_` and the key in capitals, dots as underscores
/// (`nats.tls.ca` → `JETSAGA_NATS_TLS_CA`).
pub fn env_var(key: &str) -> String {
    format!("JETSAGA_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The flag of configuration key `key`: dots and underscores as hyphens
/// (`nats.tls.ca` → `--nats-tls-ca`).
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace(['.', '_'], "-"))
}

/// A snapshot of the `JETSAGA_*` environment variables; an explicit value so
/// that tests need not touch the process environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The process's `JETSAGA_*` variables (those that are valid UTF-8).
    pub fn from_process() -> Env {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("JETSAGA_"))
            .collect())
    }

    /// Variables from pairs (tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    /// The value of `var`; an empty value counts as unset.
    pub fn get(&self, var: &str) -> Option<&str> {
        self.0
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(&env_var(key)).map(str::to_string)
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        self.parse_with(key, |v| v.trim().parse::<T>().map_err(|e| e.to_string()))
    }

    fn parse_with<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let var = env_var(key);
        self.get(&var)
            .map(|value| {
                parse(value).map_err(|message| ConfigError::Env {
                    var: var.clone(),
                    message: format!("{value:?} is not a valid {key}: {message}"),
                })
            })
            .transpose()
    }
}

impl Layer {
    /// The settings given by `JETSAGA_*` environment variables, one per key
    /// (see [`env_var`]); `JETSAGA_DEFINITIONS` is comma separated, and so
    /// is `JETSAGA_HTTP_TOKENS` (`name:role:sha256,...`).
    pub fn from_env(env: &Env) -> Result<Layer, ConfigError> {
        let duration = |v: &str| humantime::parse_duration(v.trim()).map_err(|e| e.to_string());
        let bool = |v: &str| match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("expected true or false".to_string()),
        };
        let log_format = |v: &str| {
            <LogFormat as clap::ValueEnum>::from_str(v.trim(), true)
                .map_err(|_| "expected text or json".to_string())
        };
        Ok(Layer {
            nats: NatsLayer {
                url: env.string("nats.url"),
                creds: env.string("nats.creds").map(PathBuf::from),
                user: env.string("nats.user"),
                password: env.string("nats.password").map(Secret::from),
                token: env.string("nats.token").map(Secret::from),
                nkey: env.string("nats.nkey"),
                tls: TlsLayer {
                    ca: env.string("nats.tls.ca").map(PathBuf::from),
                    cert: env.string("nats.tls.cert").map(PathBuf::from),
                    key: env.string("nats.tls.key").map(PathBuf::from),
                    required: env.parse_with("nats.tls.required", bool)?,
                },
            },
            prefix: env.string("prefix"),
            data_dir: env.string("data_dir").map(PathBuf::from),
            definitions: env.string("definitions").map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }),
            environment: env.string("environment"),
            max_payload: env.parse("max_payload")?,
            duplicate_window: env.parse_with("duplicate_window", duration)?,
            outcome_ttl: env.parse_with("outcome_ttl", duration)?,
            ack_wait: env.parse_with("ack_wait", duration)?,
            batch_size: env.parse("batch_size")?,
            max_running_sagas: env.parse("max_running_sagas")?,
            max_definition_steps: env.parse("max_definition_steps")?,
            max_definition_fan_out: env.parse("max_definition_fan_out")?,
            max_definition_bytes: env.parse("max_definition_bytes")?,
            replicas: env.parse("replicas")?,
            retention: env.parse("retention")?,
            http_listen: env.string("http_listen"),
            http_header_timeout: env.parse_with("http_header_timeout", duration)?,
            http_body_timeout: env.parse_with("http_body_timeout", duration)?,
            http_max_connections: env.parse("http_max_connections")?,
            http_tokens: env.parse_with("http_tokens", HttpToken::parse_list)?,
            http_insecure: env.parse_with("http_insecure", bool)?,
            http_tls_cert: env.string("http_tls_cert").map(PathBuf::from),
            http_tls_key: env.string("http_tls_key").map(PathBuf::from),
            engine_id: env.string("engine_id"),
            lease_ttl: env.parse_with("lease_ttl", duration)?,
            lease_renew: env.parse_with("lease_renew", duration)?,
            snapshot_every: env.parse("snapshot_every")?,
            partitions: env.parse("partitions")?,
            log_format: env.parse_with("log_format", log_format)?,
            log: env.string("log"),
        })
    }

    /// Reads the configuration file at `path`: YAML (`.yaml`, `.yml`) or
    /// JSON (`.json`), by its extension. Unknown keys are errors naming the
    /// key, its place and the file.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        let format = FileFormat::of(path).ok_or_else(|| ConfigError::File {
            path: path.to_path_buf(),
            message: "unknown file type; name it *.yaml, *.yml or *.json".into(),
        })?;
        Layer::parse_str(&text, format).map_err(|message| ConfigError::File {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses configuration `text` in `format`; the error is a message
    /// without the file name.
    pub fn parse_str(text: &str, format: FileFormat) -> Result<Layer, String> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        match format {
            FileFormat::Yaml => {
                let options = jetsaga_core::saga::definition::yaml_options();
                serde_saphyr::from_str_with_options::<Layer>(text, options.clone()).map_err(|e| {
                    let generic =
                        serde_saphyr::from_str_with_options::<serde_json::Value>(text, options);
                    explain(generic.ok(), one_line(&e.to_string()))
                })
            }
            FileFormat::Json => serde_json::from_str::<Layer>(text).map_err(|e| {
                explain(
                    serde_json::from_str::<serde_json::Value>(text).ok(),
                    one_line(&e.to_string()),
                )
            }),
        }
    }

    /// Writes the settings this layer has into `config`, and into `sources`
    /// that they came from `origin`.
    pub fn apply(self, config: &mut Config, sources: &mut Sources, origin: &Origin) {
        macro_rules! set {
            ($key:literal, $field:expr, $value:expr) => {
                if let Some(value) = $value {
                    $field = value;
                    sources.0.insert($key.to_string(), origin.source($key));
                }
            };
        }
        let nats = self.nats;
        set!("nats.url", config.nats.url, nats.url);
        set!("nats.creds", config.nats.creds, nats.creds.map(Some));
        set!("nats.user", config.nats.user, nats.user.map(Some));
        set!(
            "nats.password",
            config.nats.password,
            nats.password.map(Some)
        );
        set!("nats.token", config.nats.token, nats.token.map(Some));
        set!(
            "nats.nkey",
            config.nats.nkey,
            nats.nkey.map(|n| Some(Nkey::parse(&n)))
        );
        set!("nats.tls.ca", config.nats.tls.ca, nats.tls.ca.map(Some));
        set!(
            "nats.tls.cert",
            config.nats.tls.cert,
            nats.tls.cert.map(Some)
        );
        set!("nats.tls.key", config.nats.tls.key, nats.tls.key.map(Some));
        set!(
            "nats.tls.required",
            config.nats.tls.required,
            nats.tls.required
        );
        set!("prefix", config.prefix, self.prefix);
        set!("data_dir", config.data_dir, self.data_dir);
        set!("definitions", config.definitions, self.definitions);
        set!(
            "environment",
            config.environment,
            self.environment.map(|env| Some(env.trim().to_string()))
        );
        set!("max_payload", config.max_payload, self.max_payload);
        set!(
            "duplicate_window",
            config.duplicate_window,
            self.duplicate_window
        );
        set!("outcome_ttl", config.outcome_ttl, self.outcome_ttl);
        set!("ack_wait", config.ack_wait, self.ack_wait);
        set!("batch_size", config.batch_size, self.batch_size);
        set!(
            "max_running_sagas",
            config.max_running_sagas,
            self.max_running_sagas.map(|n| (n > 0).then_some(n))
        );
        set!(
            "max_definition_steps",
            config.max_definition_steps,
            self.max_definition_steps
        );
        set!(
            "max_definition_fan_out",
            config.max_definition_fan_out,
            self.max_definition_fan_out
        );
        set!(
            "max_definition_bytes",
            config.max_definition_bytes,
            self.max_definition_bytes
        );
        set!("replicas", config.replicas, self.replicas);
        set!("retention", config.retention, self.retention);
        set!(
            "http_listen",
            config.http_listen,
            self.http_listen.map(|addr| match addr.trim() {
                "off" | "" => None,
                addr => Some(addr.to_string()),
            })
        );
        set!(
            "http_header_timeout",
            config.http_header_timeout,
            self.http_header_timeout
        );
        set!(
            "http_body_timeout",
            config.http_body_timeout,
            self.http_body_timeout
        );
        set!(
            "http_max_connections",
            config.http_max_connections,
            self.http_max_connections
        );
        set!("http_tokens", config.http_tokens, self.http_tokens);
        set!("http_insecure", config.http_insecure, self.http_insecure);
        set!(
            "http_tls_cert",
            config.http_tls_cert,
            self.http_tls_cert.map(Some)
        );
        set!(
            "http_tls_key",
            config.http_tls_key,
            self.http_tls_key.map(Some)
        );
        set!("engine_id", config.engine_id, self.engine_id.map(Some));
        set!("lease_ttl", config.lease_ttl, self.lease_ttl);
        set!("lease_renew", config.lease_renew, self.lease_renew);
        set!("snapshot_every", config.snapshot_every, self.snapshot_every);
        set!("partitions", config.partitions, self.partitions);
        set!("log_format", config.log_format, self.log_format);
        set!("log", config.log, self.log.map(Some));
    }
}

/// The formats of a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// JSON (`.json`).
    Json,
}

impl FileFormat {
    /// The format named by `path`'s extension (any case).
    pub fn of(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => Some(FileFormat::Yaml),
            "json" => Some(FileFormat::Json),
            _ => None,
        }
    }
}

/// Names an unknown key by its full path (`nats.pasword`) and lists the keys
/// known there; other parse errors pass unchanged. `generic` is the file
/// parsed without a schema, when it parses.
fn explain(generic: Option<serde_json::Value>, message: String) -> String {
    if !message.contains("unknown field") {
        return message;
    }
    let known = serde_json::to_value(Config::default()).unwrap_or_default();
    match generic.and_then(|g| unknown_key(&g, &known, "")) {
        Some((key, siblings)) => {
            // Keep the parser's position ("at line 2, column 3") if it gave one.
            let at = message
                .rfind(" at line ")
                .map(|i| message[i..].to_string())
                .unwrap_or_default();
            format!(
                "unknown key `{key}`{at}; the keys there are: {}",
                siblings.join(", ")
            )
        }
        None => message,
    }
}

/// The first key of `value` that `known` (the default configuration, as a
/// JSON tree) lacks, with the keys `known` has at that level.
fn unknown_key(
    value: &serde_json::Value,
    known: &serde_json::Value,
    path: &str,
) -> Option<(String, Vec<String>)> {
    let (serde_json::Value::Object(value), serde_json::Value::Object(known)) = (value, known)
    else {
        return None;
    };
    for (key, child) in value {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match known.get(key) {
            None => return Some((full, known.keys().cloned().collect())),
            Some(known_child) => {
                if let Some(found) = unknown_key(child, known_child, &full) {
                    return Some(found);
                }
            }
        }
    }
    None
}

fn one_line(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn humantime_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| {
        humantime::parse_duration(t.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration ({e}); write 500ms, 10s, 2m or 1h"
            ))
        })
    })
    .transpose()
}

/// Where a layer came from, before it is known which keys it sets.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The configuration file at this path.
    File(PathBuf),
    /// `JETSAGA_*` environment variables.
    Env,
    /// Command-line flags.
    Flag,
}

impl Origin {
    /// The source of `key` when this layer sets it.
    pub fn source(&self, key: &str) -> Source {
        match self {
            Origin::File(path) => Source::File { path: path.clone() },
            Origin::Env => Source::Env { var: env_var(key) },
            Origin::Flag => Source::Flag {
                flag: flag_name(key),
            },
        }
    }
}

/// Where one configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum Source {
    /// The built-in default (of the command: `dev` has its own few).
    Default,
    /// The configuration file.
    File {
        /// Its path.
        path: PathBuf,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// Its name, with the dashes.
        flag: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { .. } => f.write_str("file"),
            Source::Env { var } => write!(f, "env {var}"),
            Source::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// Which source set each key; keys no source set are [`Source::Default`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sources(BTreeMap<String, Source>);

impl Sources {
    /// Where `key` (`nats.user`) came from.
    pub fn get(&self, key: &str) -> Source {
        self.0.get(key).cloned().unwrap_or(Source::Default)
    }

    /// The keys some source set, with their sources.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Source)> {
        self.0.iter().map(|(k, s)| (k.as_str(), s))
    }
}

/// A resolved configuration with the origin of its values (not validated
/// yet: see [`Config::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Where each value came from.
    pub sources: Sources,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Layers the sources in their order: `defaults`, then the file's
    /// layer, then the environment, then the flags; each sets only what it
    /// has. Fails only on an environment variable that does not parse.
    pub fn resolve(
        defaults: Config,
        file: Option<(PathBuf, Layer)>,
        env: &Env,
        flags: Layer,
    ) -> Result<Loaded, ConfigError> {
        let env = Layer::from_env(env)?;
        let mut config = defaults;
        let mut sources = Sources::default();
        let path = file.as_ref().map(|(path, _)| path.clone());
        if let Some((path, layer)) = file {
            layer.apply(&mut config, &mut sources, &Origin::File(path));
        }
        env.apply(&mut config, &mut sources, &Origin::Env);
        flags.apply(&mut config, &mut sources, &Origin::Flag);
        Ok(Loaded {
            config,
            sources,
            file: path,
        })
    }

    /// [`Config::resolve`] with the file at `file` read first.
    pub fn load(
        defaults: Config,
        file: Option<&Path>,
        env: &Env,
        flags: Layer,
    ) -> Result<Loaded, ConfigError> {
        let file = file
            .map(|path| Layer::from_file(path).map(|layer| (path.to_path_buf(), layer)))
            .transpose()?;
        Config::resolve(defaults, file, env, flags)
    }
}
