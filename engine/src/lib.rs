//! jetsaga engine: a durable saga engine on NATS JetStream.
//!
//! The engine keeps saga state in an embedded sled store and dispatches step
//! tasks to JetStream work queues, where workers built with the
//! `jetsaga-worker` SDK pull them. See `docs/ARCHITECTURE.md` for the shape:
//!
//! - [`saga`]: definitions, state and the pure state machine;
//! - [`store`]: the durable state behind the [`store::Store`] interface;
//! - [`partition`]: the single writer that applies events;
//! - [`admission`]: per-service circuit breakers and in-flight limits;
//! - [`retention`]: pruning of finished sagas past their retention;
//! - [`bus`]: streams, the outbox relay and the intake consumers;
//! - [`api`]: the request API over NATS and HTTP, [`client`] its NATS client;
//! - [`metrics`]: the Prometheus metrics, derived from the partition's
//!   transitions and served on the HTTP API's `/metrics`;
//! - [`trace`]: OpenTelemetry spans of sagas and step attempts, with ids
//!   derived from the saga so they link across restarts;
//! - [`crash_points`]: where tests kill the engine on purpose;
//! - [`triggers`]: sagas started by messages on a definition's trigger
//!   subjects;
//! - [`deps`]: start-up order and checks of a deployment's service
//!   manifests (`jetsaga deps`);
//! - [`engine`]: the wiring, [`cli`] the `jetsaga` command, [`dev`] the
//!   embedded nats-server of `jetsaga dev`.
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

pub mod admission;
pub mod api;
pub mod bus;
pub mod cli;
pub mod client;
pub mod config;
pub mod crash_points;
pub mod deps;
pub mod dev;
pub mod engine;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod partition;
pub mod retention;
pub mod saga;
pub mod store;
pub mod trace;
pub mod triggers;

pub use engine::run;
