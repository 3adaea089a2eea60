//! `--check-health`: an HTTP GET of each declared health URL, several at a
//! time, each bounded by a timeout. A service is healthy when its URL
//! answers 2xx in time (redirects are followed). Proxy variables are
//! ignored: health URLs are addresses inside the deployment. `https` URLs
//! are checked against the system's root certificates (`SSL_CERT_FILE` /
//! `SSL_CERT_DIR` add others on Linux).

use super::Manifest;
use futures::StreamExt as _;
use serde::Serialize;
use std::time::{Duration, Instant};

/// At most this many probes run at once.
const CONCURRENCY: usize = 16;

/// The probe of one service's health URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// The service.
    pub service: String,
    /// Its health URL.
    pub url: String,
    /// What the probe found.
    #[serde(flatten)]
    pub outcome: HealthOutcome,
}

/// What a health probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HealthOutcome {
    /// The URL answered 2xx in time.
    Healthy {
        /// The HTTP status.
        status: u16,
        /// How long the answer took, in milliseconds.
        elapsed_ms: u64,
    },
    /// It did not: another status, a connection or TLS error, the timeout.
    Unhealthy {
        /// Why.
        error: String,
    },
}

/// Probes the health URL of every service that declares one, concurrently;
/// results in the order of `services`.
pub async fn check_health(services: &[Manifest], timeout: Duration) -> Vec<HealthCheck> {
    // TLS for https URLs (an error if a provider is installed already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build();
    let client = match client {
        Ok(client) => Some(client),
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the HTTP client of the health probes");
            None
        }
    };
    let probes = services.iter().filter_map(|service| {
        let url = service.health.clone()?;
        let client = client.clone();
        let name = service.name.clone();
        Some(async move {
            let outcome = match client {
                Some(client) => probe(&client, &url, timeout).await,
                None => HealthOutcome::Unhealthy {
                    error: "the HTTP client could not be built".into(),
                },
            };
            HealthCheck {
                service: name,
                url,
                outcome,
            }
        })
    });
    futures::stream::iter(probes)
        .buffered(CONCURRENCY)
        .collect()
        .await
}

async fn probe(client: &reqwest::Client, url: &str, timeout: Duration) -> HealthOutcome {
    let unhealthy = |error: String| HealthOutcome::Unhealthy { error };
    // The manifest's URL was checked when it was read (an http or https URL).
    let started = Instant::now();
    match client.get(url).send().await {
        Ok(response) if response.status().is_success() => HealthOutcome::Healthy {
            status: response.status().as_u16(),
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        },
        Ok(response) => unhealthy(format!("answered HTTP {}", response.status())),
        Err(e) if e.is_timeout() => unhealthy(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
        Err(e) => unhealthy(error_chain(&e)),
    }
}

/// The error and its causes, each once, on one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = e.source();
    }
    message
}
