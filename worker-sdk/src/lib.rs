//! Worker SDK of jetsaga: pull step tasks from JetStream, run your handlers
//! with their effects happening once, report the results to the engine.
//!
//! A worker serves one **service** (a work queue named in saga definitions,
//! `service: payments`). For each **operation** of that service you register
//! an action handler and, if the step can be undone, a compensation handler.
//! Run as many worker processes per service as you like: they share one
//! durable JetStream consumer and split the tasks between them.
//!
//! ```no_run
//! use jetsaga_worker::{StepError, TaskContext, Worker};
//! use serde::{Deserialize, Serialize};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Deserialize)]
//! struct Order { order_id: String, amount_cents: u64 }
//!
//! #[derive(Serialize, Deserialize)]
//! struct Charge { charge_id: String }
//!
//! async fn charge(ctx: TaskContext, order: Order) -> Result<Charge, StepError> {
//!     if order.amount_cents == 0 {
//!         return Err(StepError::fatal("nothing to charge"));
//!     }
//!     // Pass ctx.idempotency_key() to the payment provider: a retried attempt
//!     // then cannot charge twice.
//!     Ok(Charge { charge_id: format!("ch-{}", ctx.idempotency_key()) })
//! }
//!
//! async fn refund(ctx: TaskContext, _order: Order) -> Result<(), StepError> {
//!     // The compensated step's own output is in the context.
//!     let charge: Charge = ctx.step_output(ctx.step_id()).transpose()?.ok_or_else(|| StepError::fatal("no charge to refund"))?;
//!     println!("refunding {}", charge.charge_id);
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let client = async_nats::connect("127.0.0.1:4222").await?;
//!     let worker = Worker::builder("payments")
//!         .concurrency(32)
//!         .handler("charge", charge)
//!         .compensation("refund", refund)
//!         .build(client)
//!         .await?;
//!
//!     let shutdown = CancellationToken::new();
//!     let on_signal = shutdown.clone();
//!     tokio::spawn(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         on_signal.cancel(); // drain: finish tasks in flight, then return
//!     });
//!     worker.run(shutdown).await?;
//!     Ok(())
//! }
//! ```
//!
//! Handlers are plain async functions, so they are tested without a server:
//! [`WorkerBuilder::run_one`] runs one task through the same code path the
//! worker uses (input decoding, deadline, panic capture), and
//! [`TaskContext::test`] makes a context to call a handler directly.
//!
//! ```
//! use jetsaga_worker::{StepError, TaskContext, Worker, protocol::{Outcome, Task, TaskKind}};
//! use serde_json::json;
//!
//! async fn reserve(_ctx: TaskContext, input: serde_json::Value) -> Result<serde_json::Value, StepError> {
//!     match input["qty"].as_u64() {
//!         Some(qty) if qty <= 10 => Ok(json!({"reserved": qty})),
//!         Some(_) => Err(StepError::fatal("out of stock")),
//!         None => Err(StepError::fatal("qty missing")),
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let worker = Worker::builder("inventory").handler("reserve", reserve);
//! let task = |qty: u64| Task {
//!     saga_id: "s-1".into(), saga_name: "order".into(), step_id: "reserve".into(),
//!     kind: TaskKind::Action, service: "inventory".into(), operation: "reserve".into(),
//!     attempt: 1, idempotency_key: "s-1.reserve.action".into(),
//!     input: json!({"qty": qty}), context: Default::default(), timeout_ms: 5_000, partition: 0,
//! };
//!
//! assert_eq!(worker.run_one(task(3)).await, Outcome::Ok { output: json!({"reserved": 3}) });
//! assert_eq!(worker.run_one(task(99)).await, Outcome::Fatal { error: "out of stock".into() });
//!
//! // Or call the handler itself.
//! let out = reserve(TaskContext::test(task(2)), json!({"qty": 2})).await.unwrap();
//! assert_eq!(out, json!({"reserved": 2}));
//! # }
//! ```
//!
//! # Guarantees
//!
//! Tasks are delivered at least once; the SDK turns that into effects that
//! happen once:
//!
//! - Before acknowledging a task, the worker records the handler's terminal
//!   outcome (success or fatal error) in the engine's outcomes stream, on
//!   the subject of the task's idempotency key, first write wins; that
//!   message is the result the engine reads too. A task delivered again
//!   after that (a crash before the ack, an ack lost, a retry of the
//!   engine) is not run again: the recorded outcome is reported, marked
//!   `replayed`.
//! - Retryable errors, panics and deadline overruns are not recorded: the
//!   next attempt runs the handler again.
//! - The window that remains is a handler whose effect happened but whose
//!   outcome was not recorded (the process died in between), or two attempts
//!   running at the same time. Handlers that pass
//!   [`TaskContext::idempotency_key`] to the services they call close it:
//!   with that, effects happen exactly once end to end.
//! - Each attempt has a deadline ([`TaskContext::deadline`], the step's
//!   timeout from when the task was received): at the deadline the handler
//!   is cancelled (at its next `.await`) and the attempt reported retryable.
//!
//! The exact order of record, result and ack is in the `delivery` module
//! docs; shutdown order is on [`Worker::run`] and in the `worker` module.
//!
//! # Metrics
//!
//! Workers record handler latency, tasks by outcome, replays and handlers
//! in flight through the `metrics` facade; [`metrics::serve`] exports them
//! to Prometheus on `/metrics`. The [`metrics`] module lists them.
//!
//! # Traces
//!
//! Each task runs in a `task` span that is a child of the engine's span for
//! the step attempt (the task's `traceparent` header), so handler spans join
//! the saga's trace; [`trace`] tells how to export them over OTLP.

pub mod crash_points;
pub mod metrics;
pub mod trace;

/// The wire protocol (the `jetsaga-protocol` crate), re-exported.
pub use jetsaga_protocol as protocol;

mod delivery;
mod error;
mod handler;
mod store;
mod task;
mod worker;

pub use error::{StepError, WorkerError};
pub use task::TaskContext;
pub use worker::{Worker, WorkerBuilder};
