//! jetsaga's pure core: what a saga is and how it moves, with no I/O.
//!
//! - [`saga`]: definitions (parsing and validation), saga and step state, and
//!   the pure state machine `apply(saga, definition, event, inputs)`;
//! - [`limits`]: the start queue's bookkeeping for concurrency limits;
//! - [`admission`]: per-service circuit breakers and in-flight limits.
//!
//! Nothing here touches a clock, a socket, a disk or a random number
//! generator: time and jitter come in as inputs, and what should happen comes
//! out as effects for the engine to carry out. The crate must not depend on
//! tokio, sled, async-nats, axum, utoipa or reqwest.

pub mod admission;
pub mod limits;
pub mod saga;
