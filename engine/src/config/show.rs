//! The resolved configuration as `jetsaga config check` prints it: YAML
//! with the source of each value as a comment, or JSON. Secrets show as
//! `***` (their serialization).

use super::Config;
use super::load::Loaded;
use serde_json::{Value, json};

/// Every configuration key, in the order of [`Config`]'s fields.
pub const KEYS: &[&str] = &[
    "nats.url",
    "nats.creds",
    "nats.user",
    "nats.password",
    "nats.token",
    "nats.nkey",
    "nats.tls.ca",
    "nats.tls.cert",
    "nats.tls.key",
    "nats.tls.required",
    "prefix",
    "data_dir",
    "definitions",
    "environment",
    "max_payload",
    "duplicate_window",
    "outcome_ttl",
    "ack_wait",
    "batch_size",
    "max_running_sagas",
    "max_definition_steps",
    "max_definition_fan_out",
    "max_definition_bytes",
    "replicas",
    "retention",
    "http_listen",
    "http_header_timeout",
    "http_body_timeout",
    "http_max_connections",
    "http_tokens",
    "http_insecure",
    "http_tls_cert",
    "http_tls_key",
    "engine_id",
    "lease_ttl",
    "lease_renew",
    "snapshot_every",
    "partitions",
    "log_format",
    "log",
];

fn config_value(config: &Config) -> Value {
    // Serializing plain data (strings, numbers, paths) cannot fail.
    serde_json::to_value(config).unwrap_or(Value::Null)
}

fn value_at<'a>(tree: &'a Value, key: &str) -> &'a Value {
    let pointer = format!("/{}", key.replace('.', "/"));
    tree.pointer(&pointer).unwrap_or(&Value::Null)
}

impl Loaded {
    /// The configuration as YAML, secrets masked, each value followed by a
    /// `# <source>` comment (`default`, `file`, `env JETSAGA_…`,
    /// `flag --…`). The text parses back as a configuration file.
    pub fn annotated_yaml(&self) -> String {
        let tree = config_value(&self.config);
        let mut out = String::new();
        match &self.file {
            Some(file) => out.push_str(&format!("# configuration file: {}\n", file.display())),
            None => out.push_str("# no configuration file\n"),
        }
        let mut open: Vec<&str> = Vec::new();
        for key in KEYS {
            let parts: Vec<&str> = key.split('.').collect();
            let (sections, leaf) = parts.split_at(parts.len() - 1);
            let common = open
                .iter()
                .zip(sections)
                .take_while(|(a, b)| a == b)
                .count();
            open.truncate(common);
            for section in &sections[common..] {
                out.push_str(&format!("{}{section}:\n", "  ".repeat(open.len())));
                open.push(section);
            }
            // JSON scalars and arrays are valid YAML flow values.
            let value = value_at(&tree, key).to_string();
            out.push_str(&format!(
                "{}{}: {value}  # {}\n",
                "  ".repeat(open.len()),
                leaf[0],
                self.sources.get(key)
            ));
        }
        out
    }

    /// `{"file", "config", "sources"}`: the configuration, secrets masked,
    /// and for every key where its value came from
    /// (`{"from": "env", "var": "JETSAGA_…"}`, ...).
    pub fn to_json(&self) -> Value {
        let sources: serde_json::Map<String, Value> = KEYS
            .iter()
            .map(|key| {
                let source = serde_json::to_value(self.sources.get(key))
                    .unwrap_or_else(|_| json!({"from": "default"}));
                (key.to_string(), source)
            })
            .collect();
        json!({
            "file": self.file,
            "config": config_value(&self.config),
            "sources": sources,
        })
    }
}
