//! The engine's HTTP clients over TLS, against servers this test runs with a
//! certificate from a CA made here (trusted through `SSL_CERT_FILE`, as an
//! operator would add a private CA):
//!
//! - the OTLP trace exporter of the `jetsaga` engine process posts its spans
//!   to an `https://` collector (and to a plain `http://` one);
//! - `jetsaga deps --check-health` probes an `https://` health URL, and
//!   reports a certificate it does not trust.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use common::tls::TestCa;
use common::{ONE_STEP, World};
use jetsaga_tests::{bin_path, run_command, wait_until};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// How long spans may take to arrive (the batch processor runs every 100 ms
/// here).
const ARRIVE: Duration = Duration::from_secs(30);

/// A TLS listener for `axum::serve`: the handshake is part of `accept`.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that refuses our certificate ends its handshake.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// What the collector received: a body per `POST /v1/traces`.
type Posts = Arc<Mutex<Vec<(String, Bytes)>>>;

/// Serves an OTLP/HTTP trace collector (it keeps every body and answers an
/// empty `ExportTraceServiceResponse`) and `GET /health`, over TLS with a
/// certificate of `ca` when given; returns its base URL.
async fn serve(ca: Option<&TestCa>, posts: Posts) -> String {
    let app = Router::new()
        .route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                posts.lock().unwrap().push((content_type, body));
                ([("content-type", "application/x-protobuf")], Bytes::new())
            }),
        )
        .route("/health", get(|| async { "ok" }));
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    match ca {
        None => {
            tokio::spawn(async move { axum::serve(tcp, app).await });
            format!("http://{addr}")
        }
        Some(ca) => {
            let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
            let (cert, key) = ca.server_cert();
            let chain = CertificateDer::pem_file_iter(&cert)
                .expect("cert file")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert");
            let key = PrivateKeyDer::from_pem_file(&key).expect("key");
            let config = ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server config");
            let listener = TlsListener {
                tcp,
                acceptor: TlsAcceptor::from(Arc::new(config)),
            };
            tokio::spawn(async move { axum::serve(listener, app).await });
            // The certificate names 127.0.0.1 and localhost.
            format!("https://localhost:{}", addr.port())
        }
    }
}

/// Runs a saga on an engine that exports its traces to `endpoint`, and
/// waits for a post that carries the engine's service name and the saga id.
async fn engine_exports_to(endpoint: &str, ca: Option<&Path>, posts: &Posts) {
    let mut envs = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ];
    if let Some(ca) = ca {
        envs.push(("SSL_CERT_FILE", ca.display().to_string()));
    }
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let world = World::start_with_env(&[], &envs).await;
    world.apply_yaml(ONE_STEP).await;
    let _echo = world.echo_worker().await;
    let id = world.start_saga("one_step", json!({"traced": true})).await;
    world.finished(&id).await;

    let contains =
        |body: &[u8], needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    wait_until("the saga's spans at the collector", ARRIVE, || async {
        posts
            .lock()
            .unwrap()
            .iter()
            .any(|(content_type, body)| {
                content_type == "application/x-protobuf"
                    && contains(body, "jetsaga-engine")
                    && contains(body, &id)
            })
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_exports_traces_to_an_https_collector_with_a_private_ca() {
    let ca = TestCa::new("otlp-test-ca");
    let posts = Posts::default();
    let endpoint = serve(Some(&ca), posts.clone()).await;
    engine_exports_to(&endpoint, Some(&ca.ca_file), &posts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_exports_traces_to_a_plain_http_collector() {
    let posts = Posts::default();
    let endpoint = serve(None, posts.clone()).await;
    engine_exports_to(&endpoint, None, &posts).await;
}

/// `jetsaga deps validate --check-health` over one manifest whose health
/// URL is `url`, with `SSL_CERT_FILE` = `ca`; its JSON report.
fn check_health(dir: &Path, url: &str, ca: &Path) -> (bool, Value) {
    common::write(
        dir,
        "manifest.yaml",
        &format!("name: api\nversion: 1.0.0\nhealth: {url}/health\n"),
    );
    let manifest = dir.join("manifest.yaml").display().to_string();
    let out = run_command(
        &bin_path("jetsaga"),
        &[
            "deps",
            "validate",
            "--manifest",
            &manifest,
            "--check-health",
            "--output",
            "json",
        ],
        &[("SSL_CERT_FILE", &ca.display().to_string())],
        Duration::from_secs(60),
    );
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            common::text(&out.stdout),
            common::text(&out.stderr)
        )
    });
    (out.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deps_health_checks_https_urls_against_the_trusted_roots() {
    let ca = TestCa::new("health-test-ca");
    let url = serve(Some(&ca), Posts::default()).await;
    let dir = tempfile::tempdir().expect("temp dir");

    let path = dir.path().to_path_buf();
    let (ok, report) = {
        let (url, ca) = (url.clone(), ca.ca_file.clone());
        tokio::task::spawn_blocking(move || check_health(&path, &url, &ca))
            .await
            .unwrap()
    };
    assert!(ok, "{report}");
    assert_eq!(report["health"][0]["state"], "healthy", "{report}");
    assert_eq!(report["health"][0]["status"], 200, "{report}");

    // Trusting another CA: the server's certificate is refused.
    let other = TestCa::new("some-other-ca");
    let path = dir.path().to_path_buf();
    let other_ca = other.ca_file.clone();
    let (ok, report) = tokio::task::spawn_blocking(move || check_health(&path, &url, &other_ca))
        .await
        .unwrap();
    assert!(!ok, "{report}");
    assert_eq!(report["health"][0]["state"], "unhealthy", "{report}");
    let error = report["health"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("certificate"), "{report}");
}
