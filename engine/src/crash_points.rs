//! Crash points: named places between the engine's durable steps where a
//! test can kill the engine process, deterministically, to check that a
//! restart loses nothing and duplicates nothing.
//!
//! They are `fail` fail points run by the SDK's mechanism
//! ([`jetsaga_worker::crash_points`]), compiled in only with this crate's
//! `failpoints` cargo feature, which turns on the SDK's (off by default:
//! without it every point compiles to nothing and [`setup`] only reads the
//! variable). With it, the
//! `jetsaga` binary reads `FAILPOINTS` once at start, in fail-rs syntax; the
//! `return` action makes a point kill the process with SIGKILL, as `kill -9`
//! from outside would, after logging `fail point fired: killing the
//! process` with the point's name. Counts pick the pass that kills:
//!
//! ```text
//! FAILPOINTS='partition.after_flush=return'           # the first pass kills
//! FAILPOINTS='relay.after_publish=3*off->return'      # the fourth pass kills
//! ```
//!
//! The points:
//!
//! | name | the process dies when |
//! |---|---|
//! | `intake.before_send` | a result or durable start was pulled and decoded, not yet handed to the partition |
//! | `partition.after_commit` | a batch of state changes (with their outbox rows and timers) is written to the store, not yet flushed |
//! | `partition.after_flush` | the batch is durable; its messages are not acknowledged, its callers not answered |
//! | `relay.after_publish` | a round of outbox rows is published and acknowledged by JetStream, the rows not yet removed |
//!
//! A pass of the partition points is one group commit that changed
//! something; a pass of `relay.after_publish` is one relay round that
//! published at least one row; a pass of `intake.before_send` is one message.
//! `tests/tests/crash_points.rs` drives each point.

/// `intake.before_send`: a message pulled, not handed to the partition.
pub const INTAKE_BEFORE_SEND: &str = "intake.before_send";
/// `partition.after_commit`: a batch written to the store, not flushed.
pub const PARTITION_AFTER_COMMIT: &str = "partition.after_commit";
/// `partition.after_flush`: a batch durable, not acknowledged or answered.
pub const PARTITION_AFTER_FLUSH: &str = "partition.after_flush";
/// `relay.after_publish`: outbox rows published, not removed.
pub const RELAY_AFTER_PUBLISH: &str = "relay.after_publish";

/// Configures the crash points from the `FAILPOINTS` environment variable,
/// for the life of the process (the engine's and the SDK's share one
/// mechanism: [`jetsaga_worker::crash_points::setup`]). `main` calls it once,
/// after logging is set up.
pub fn setup() {
    jetsaga_worker::crash_points::setup();
}

/// Passes the crash point `name`: kills the process if `FAILPOINTS` says so.
#[inline]
pub(crate) fn pass(name: &'static str) {
    jetsaga_worker::crash_points::pass(name);
}
