//! Metrics of the worker SDK, and a Prometheus `/metrics` endpoint for them.
//!
//! The SDK records through the [`metrics`](https://docs.rs/metrics) facade,
//! so they go to whatever recorder the program installed (none: they cost
//! next to nothing and go nowhere). A library does not install a recorder
//! itself; a worker binary picks one of:
//!
//! - [`serve`]: installs the Prometheus recorder and serves `GET /metrics`
//!   (text exposition format) on an address of its own — the example
//!   workers' `--metrics-listen` (`JETSAGA_METRICS_LISTEN`);
//! - [`install_recorder`]: installs the recorder only; render its
//!   [`PrometheusHandle`] from your own HTTP server;
//! - any other `metrics` recorder (StatsD, OpenTelemetry...).
//!
//! The first two need the `prometheus` feature (on by default).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `worker_handler_duration_seconds` | histogram | `service`, `operation`, `kind` | handler run time (not for replays) |
//! | `worker_in_flight` | gauge | `service` | handlers running now in this process |
//! | `worker_replays_total` | counter | `service` | tasks answered from the idempotency record instead of running the handler again |
//! | `worker_tasks_total` | counter | `service`, `operation`, `kind`, `outcome` | tasks handled: `ok`, `retryable` or `fatal` once the result is published, `unfinished` when it could not be (the task is handed back for redelivery) |
//!
//! `kind` is `action` or `compensation`. No label carries a saga id or an
//! idempotency key: series stay as few as services × operations.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Keep the server: dropping it stops serving.
//! let metrics = jetsaga_worker::metrics::serve("0.0.0.0:9464").await?;
//! println!("metrics on http://{}/metrics", metrics.local_addr());
//! # Ok(()) }
//! ```

use crate::protocol::TaskKind;
use std::time::Duration;

/// Handler run time, seconds (histogram).
pub const HANDLER_DURATION: &str = "worker_handler_duration_seconds";
/// Handlers running now (gauge).
pub const IN_FLIGHT: &str = "worker_in_flight";
/// Tasks answered from their idempotency record (counter).
pub const REPLAYS: &str = "worker_replays_total";
/// Tasks handled, by outcome (counter).
pub const TASKS: &str = "worker_tasks_total";

pub use jetsaga_protocol::telemetry::{DURATION_BUCKETS, PROMETHEUS_TEXT_FORMAT as TEXT_FORMAT};

/// Gives the SDK's metrics their help text (in the recorder installed now)
/// and creates the series of `service` at zero, so that a rate over them
/// works from the first task and dashboards list the service at once.
pub(crate) fn register(service: &str) {
    describe();
    let service = service.to_string();
    // `increment(0)`: creates the series without disturbing another worker
    // of the same service in this process.
    ::metrics::gauge!(IN_FLIGHT, "service" => service.clone()).increment(0.0);
    ::metrics::counter!(REPLAYS, "service" => service).increment(0);
}

fn describe() {
    use ::metrics::Unit;
    ::metrics::describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Run time of step handlers (actions and compensations), replays excluded"
    );
    ::metrics::describe_gauge!(IN_FLIGHT, "Handlers running now in this process");
    ::metrics::describe_counter!(
        REPLAYS,
        "Tasks answered from their idempotency record instead of running the handler again"
    );
    ::metrics::describe_counter!(
        TASKS,
        "Tasks handled, by outcome (ok, retryable, fatal; unfinished: handed back for redelivery)"
    );
}

/// Counts one handler in flight for as long as it lives.
pub(crate) struct InFlight(::metrics::Gauge);

impl InFlight {
    /// A handler of `service` starts.
    pub(crate) fn enter(service: &str) -> InFlight {
        let gauge = ::metrics::gauge!(IN_FLIGHT, "service" => service.to_string());
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A handler of `service` ran for `elapsed`.
pub(crate) fn handler_ran(service: &str, operation: &str, kind: TaskKind, elapsed: Duration) {
    ::metrics::histogram!(
        HANDLER_DURATION,
        "service" => service.to_string(),
        "operation" => operation.to_string(),
        "kind" => kind.as_str(),
    )
    .record(elapsed.as_secs_f64());
}

/// A task of `service` was answered from its idempotency record.
pub(crate) fn replayed(service: &str) {
    ::metrics::counter!(REPLAYS, "service" => service.to_string()).increment(1);
}

/// A task of `service` is done with: its result published with `outcome`
/// (`ok`, `retryable`, `fatal`), or `unfinished`.
pub(crate) fn task_handled(service: &str, operation: &str, kind: TaskKind, outcome: &'static str) {
    ::metrics::counter!(
        TASKS,
        "service" => service.to_string(),
        "operation" => operation.to_string(),
        "kind" => kind.as_str(),
        "outcome" => outcome,
    )
    .increment(1);
}

#[cfg(feature = "prometheus")]
pub use self::prometheus::{MetricsError, MetricsServer, install_recorder, serve};
#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus::PrometheusHandle;

#[cfg(feature = "prometheus")]
mod prometheus {
    use super::{DURATION_BUCKETS, TEXT_FORMAT};
    use crate::protocol::ErrorCode;
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderValue, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    use std::future::IntoFuture;
    use std::net::SocketAddr;
    use std::sync::OnceLock;
    use std::time::Duration;
    use tokio::net::{TcpListener, ToSocketAddrs};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    /// How often histogram samples are folded into their buckets when
    /// nobody scrapes (a scrape does it too), so that memory stays bounded.
    const UPKEEP_EVERY: Duration = Duration::from_secs(5);

    /// Why metrics cannot be served.
    #[derive(Debug, thiserror::Error)]
    pub enum MetricsError {
        /// The process already has a `metrics` recorder of its own.
        #[error(
            "{code}: another metrics recorder is installed in this process ({0}); export the metrics through it instead of jetsaga_worker::metrics",
            code = ErrorCode::MetricsRecorder,
        )]
        RecorderInstalled(String),
        /// The address cannot be listened on.
        #[error(
            "{code}: cannot listen for /metrics on {addr}: {source}; choose another address (such as 0.0.0.0:9464, one port per process)",
            code = ErrorCode::MetricsListen,
        )]
        Listen {
            /// The address asked for.
            addr: String,
            /// Cause.
            source: std::io::Error,
        },
    }

    /// Installs the Prometheus recorder as this process's `metrics`
    /// recorder and returns its handle; later calls return the same handle.
    /// Histograms of `*_seconds` metrics get [`DURATION_BUCKETS`].
    ///
    /// The handle renders the text format ([`PrometheusHandle::render`]).
    /// Without [`serve`], call [`PrometheusHandle::run_upkeep`] every few
    /// seconds if nothing renders it that often.
    pub fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
        static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
        let installed = HANDLE.get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        });
        let handle = installed.clone().map_err(MetricsError::RecorderInstalled)?;
        super::describe();
        Ok(handle)
    }

    /// A running `/metrics` server; dropping it stops the server.
    #[derive(Debug)]
    pub struct MetricsServer {
        /// The address it listens on.
        addr: SocketAddr,
        /// Stops the server.
        stop: CancellationToken,
        /// The server task.
        task: Option<JoinHandle<()>>,
    }

    impl MetricsServer {
        /// The address the server listens on (the port chosen, for port 0).
        pub fn local_addr(&self) -> SocketAddr {
            self.addr
        }

        /// Stops the server and waits until it stopped.
        pub async fn shutdown(mut self) {
            self.stop.cancel();
            if let Some(task) = self.task.take() {
                let _ = task.await;
            }
        }
    }

    impl Drop for MetricsServer {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    /// Installs the Prometheus recorder ([`install_recorder`]) and serves
    /// `GET /metrics` on `addr` (port 0: any free port, see
    /// [`MetricsServer::local_addr`]) until the returned server is dropped
    /// or shut down. Needs a tokio runtime.
    pub async fn serve<A>(addr: A) -> Result<MetricsServer, MetricsError>
    where
        A: ToSocketAddrs + std::fmt::Display,
    {
        let handle = install_recorder()?;
        let listen_error = |source| MetricsError::Listen {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(&addr).await.map_err(listen_error)?;
        let local = listener.local_addr().map_err(listen_error)?;
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/metrics", get(render))
            .with_state(handle.clone());
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future();
        let task = tokio::spawn(async move {
            let mut upkeep = tokio::time::interval(UPKEEP_EVERY);
            tokio::pin!(server);
            loop {
                tokio::select! {
                    r = &mut server => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "metrics server stopped");
                        }
                        return;
                    }
                    _ = upkeep.tick() => handle.run_upkeep(),
                }
            }
        });
        tracing::info!(addr = %local, "metrics listening");
        Ok(MetricsServer {
            addr: local,
            stop,
            task: Some(task),
        })
    }

    /// `GET /metrics`: every metric of the process, in the text format.
    async fn render(State(handle): State<PrometheusHandle>) -> Response {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT))],
            handle.render(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_rise_from_milliseconds_to_an_hour() {
        assert!(DURATION_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        const { assert!(DURATION_BUCKETS[0] <= 0.005) };
        const { assert!(DURATION_BUCKETS[DURATION_BUCKETS.len() - 1] >= 3600.0) };
    }

    #[cfg(feature = "prometheus")]
    #[tokio::test]
    async fn serve_renders_the_sdk_metrics() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let server = serve("127.0.0.1:0").await.expect("serves");
        register("unit-test-svc");
        task_handled("unit-test-svc", "op", TaskKind::Action, "ok");
        handler_ran(
            "unit-test-svc",
            "op",
            TaskKind::Compensation,
            Duration::from_millis(30),
        );
        {
            let _running = InFlight::enter("unit-test-svc");
        }

        let mut stream = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert!(raw.contains("text/plain; version=0.0.4"), "{raw}");
        for line in [
            r#"worker_tasks_total{service="unit-test-svc",operation="op",kind="action",outcome="ok"} 1"#,
            r#"worker_in_flight{service="unit-test-svc"} 0"#,
            r#"worker_replays_total{service="unit-test-svc"} 0"#,
            r#"worker_handler_duration_seconds_bucket{service="unit-test-svc",operation="op",kind="compensation",le="0.05"} 1"#,
            "# TYPE worker_handler_duration_seconds histogram",
        ] {
            assert!(raw.contains(line), "no {line:?} in\n{raw}");
        }
        // The recorder is installed once per process; a second server shares it.
        let second = serve("127.0.0.1:0").await.expect("a second server");
        assert_ne!(second.local_addr(), server.local_addr());
        second.shutdown().await;
        server.shutdown().await;
    }
}
