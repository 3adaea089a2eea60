//! Crash points: named places between the engine's durable steps where a
//! test can kill the engine process, deterministically, to check that a
//! restart loses nothing and duplicates nothing.
//!
//! They are `fail` fail points, compiled in only with this crate's
//! `failpoints` cargo feature (off by default: without it every point
//! compiles to nothing and [`setup`] only reads the variable); the worker
//! SDK's crash points work the same way. With it, the
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
/// for the life of the process. `main` calls it once, after logging is set
/// up.
pub fn setup() {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return;
    };
    // The scenario lives as long as the process.
    std::mem::forget(fail::FailScenario::setup());
    if fail::has_failpoints() {
        tracing::warn!(failpoints = %spec, "crash points armed from FAILPOINTS");
    } else {
        tracing::warn!(
            failpoints = %spec,
            "FAILPOINTS is set but this build has no crash points (cargo feature `failpoints` of jetsaga-engine); ignoring it"
        );
    }
}

/// Passes the crash point `name`: kills the process if `FAILPOINTS` says so.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
#[inline]
pub(crate) fn pass(name: &'static str) {
    fail::fail_point!(name, |_| crash(name));
}

#[cfg(feature = "failpoints")]
fn crash(name: &str) -> ! {
    tracing::error!(
        fail_point = name,
        "fail point fired: killing the process (SIGKILL)"
    );
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}
