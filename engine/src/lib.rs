//! jetsaga engine: a durable saga engine on NATS JetStream.
//!
//! The engine keeps saga state in an embedded sled store and dispatches step
//! tasks to JetStream work queues, where workers built with the
//! `jetsaga-worker` SDK pull them. See `docs/ARCHITECTURE.md` for the shape.

pub mod saga;
pub mod store;
