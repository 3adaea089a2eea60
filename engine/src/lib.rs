//! jetsaga engine: the runtime around the pure core.
//!
//! It owns everything that does I/O for a running engine; the layers below
//! it are `jetsaga-protocol` (wire types), `jetsaga-core` (definitions, the
//! pure state machine, limits and admission) and `jetsaga-store` (the
//! durable state). See `docs/ARCHITECTURE.md` for the shape:
//!
//! - [`partition`]: the single writer that applies events and commits them;
//! - [`bus`]: streams, the outbox relay and the intake consumers;
//! - [`api`]: the request API over NATS and HTTP;
//! - [`metrics`]: the Prometheus metrics, derived from the partition's
//!   transitions and served on the HTTP API's `/metrics`;
//! - [`trace`]: OpenTelemetry spans of sagas and step attempts, with ids
//!   derived from the saga so they link across restarts;
//! - [`events`]: lifecycle events (CloudEvents) through the outbox;
//! - [`triggers`]: sagas started by messages on a definition's trigger
//!   subjects;
//! - [`retention`]: pruning of finished sagas past their retention;
//! - [`crash_points`]: where tests kill the engine on purpose;
//! - [`config`]: the engine's configuration; [`engine`]: the wiring.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = jetsaga_engine::config::Config {
//!     nats: jetsaga_engine::config::NatsConfig::new("nats://127.0.0.1:4222"),
//!     data_dir: "/var/lib/jetsaga".into(),
//!     ..Default::default()
//! };
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! jetsaga_engine::engine::run(config, shutdown).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod bus;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crash_points;
pub mod engine;
pub mod events;
pub mod metrics;
pub mod partition;
pub mod retention;
pub mod streams;
pub mod trace;
pub mod triggers;

pub use engine::run;
