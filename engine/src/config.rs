//! Engine configuration: one struct, defaults, then flags and `JETSAGA_*`
//! environment variables (through clap), then [`Config::validate`].

use jetsaga_worker::protocol::{self, DEFAULT_MAX_PAYLOAD, DEFAULT_PREFIX};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Everything the engine needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// Subject prefix of this installation.
    pub prefix: String,
    /// Directory of the sled store.
    pub data_dir: PathBuf,
    /// Definition files applied at start (files or directories of `*.yaml`, `*.yml`, `*.json`).
    pub definitions: Vec<PathBuf>,
    /// Largest accepted saga input or result, in bytes.
    pub max_payload: usize,
    /// JetStream duplicate window of the engine's streams.
    #[serde(with = "humantime_serde_compat")]
    pub duplicate_window: Duration,
    /// Ack wait of the engine's own consumers (results, starts). The engine
    /// acks within one group commit, so this only bounds how long messages a
    /// crashed engine had pulled wait before they are delivered again.
    #[serde(with = "humantime_serde_compat")]
    pub ack_wait: Duration,
    /// Most events the partition applies before one group commit.
    pub batch_size: usize,
    /// Replicas of the engine's streams (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// Address (`HOST:PORT`) of the HTTP API; no HTTP API when absent.
    /// Port 0 picks a free port (the engine logs the one it got).
    #[serde(default)]
    pub http_listen: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            prefix: DEFAULT_PREFIX.into(),
            data_dir: PathBuf::from(".jetsaga/data"),
            definitions: Vec::new(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(10),
            batch_size: 256,
            replicas: 1,
            http_listen: None,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("E-CONFIG: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Checks the values together; call it after all sources were merged.
    pub fn validate(&self) -> Result<(), ConfigError> {
        protocol::validate_prefix(&self.prefix).map_err(ConfigError)?;
        if self.nats_url.trim().is_empty() {
            return Err(ConfigError("nats_url is empty".into()));
        }
        if self.max_payload < 1024 {
            return Err(ConfigError(format!(
                "max_payload {} is below 1024 bytes",
                self.max_payload
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError(format!(
                "replicas {} is out of range; JetStream allows 1 to 5",
                self.replicas
            )));
        }
        if self.batch_size == 0 {
            return Err(ConfigError("batch_size must be at least 1".into()));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError("ack_wait must be at least 1s".into()));
        }
        if let Some(addr) = &self.http_listen {
            let port = addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(ConfigError(format!(
                    "http_listen {addr:?} is not HOST:PORT (such as 127.0.0.1:8080, or port 0 for any free port)"
                )));
            }
        }
        Ok(())
    }
}

/// Durations as humantime strings in config files.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_listen_is_host_and_port() {
        let with = |addr: &str| Config {
            http_listen: Some(addr.into()),
            ..Config::default()
        };
        assert!(Config::default().validate().is_ok());
        for good in ["127.0.0.1:8080", "0.0.0.0:0", "[::1]:8080", "localhost:80"] {
            assert!(with(good).validate().is_ok(), "{good}");
        }
        for bad in ["127.0.0.1", "8080x", "host:99999", ""] {
            let err = with(bad).validate().unwrap_err();
            assert!(err.to_string().contains("http_listen"), "{bad}: {err}");
        }
    }
}
