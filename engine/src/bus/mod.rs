//! The bus: JetStream streams and consumers of the engine, the outbox relay
//! that publishes what the store wrote, and the intake loops that turn
//! results and durable starts into partition commands.

pub mod intake;
pub mod relay;

pub use crate::streams::*;
