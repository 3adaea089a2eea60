//! Crash points: named places in a task's delivery where a test can kill
//! the worker process, deterministically, to check that effects still happen
//! exactly once.
//!
//! They are [`fail`] fail points, compiled in only with this crate's
//! `failpoints` cargo feature (off by default: without it every point
//! compiles to nothing and [`setup`] only reads the variable). With it, a
//! process that called [`setup`] reads `FAILPOINTS` once at start, in
//! fail-rs syntax; the `return` action makes a point kill its own process
//! with SIGKILL, as `kill -9` from outside would, after logging
//! `fail point fired: killing the process` with the point's name:
//!
//! ```text
//! FAILPOINTS='worker.after_record=return'          # the first pass kills
//! FAILPOINTS='worker.after_handler=2*off->return'  # the third pass kills
//! ```
//!
//! The points, in the order a delivery passes them (see the `delivery`
//! module):
//!
//! | name | the process dies when |
//! |---|---|
//! | `worker.after_handler` | the handler returned (its effect happened), nothing recorded yet |
//! | `worker.after_record` | a terminal outcome is recorded on its key's outcome subject (which is the engine's copy of the result too), the task not acknowledged |
//! | `worker.after_publish` | the result is published (JetStream acknowledged it; for a recorded outcome, right after `worker.after_record`), the task not acknowledged |
//!
//! The example worker binaries call [`setup`]; the integration tests
//! (`tests/tests/crash_points.rs`) drive each point.

/// `worker.after_handler`: the handler returned, nothing recorded.
pub const AFTER_HANDLER: &str = "worker.after_handler";
/// `worker.after_record`: outcome recorded (and so published), task not
/// acknowledged.
pub const AFTER_RECORD: &str = "worker.after_record";
/// `worker.after_publish`: result published, task not acknowledged.
pub const AFTER_PUBLISH: &str = "worker.after_publish";

/// Configures the crash points from the `FAILPOINTS` environment variable,
/// for the life of the process. Call it once, at the start of `main`.
///
/// Without the `failpoints` feature the points do not exist and this only
/// warns when `FAILPOINTS` is set. Panics on a malformed `FAILPOINTS`.
pub fn setup() {
    let Ok(spec) = std::env::var("FAILPOINTS") else {
        return;
    };
    // The scenario holds a process-wide lock and clears the configuration
    // when dropped: keep it for the life of the process.
    std::mem::forget(fail::FailScenario::setup());
    if fail::has_failpoints() {
        tracing::warn!(failpoints = %spec, "crash points armed from FAILPOINTS");
    } else {
        tracing::warn!(
            failpoints = %spec,
            "FAILPOINTS is set but this build has no crash points (cargo feature `failpoints` of jetsaga-worker or jetsaga-engine); ignoring it"
        );
    }
}

/// Passes the crash point `name`: kills the process if `FAILPOINTS` says so.
/// The engine's crash points go through here too.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
#[inline]
pub fn pass(name: &'static str) {
    fail::fail_point!(name, |_| crash(name));
}

/// Kills this process with SIGKILL (no destructors, no buffered output
/// flushed: the crash a `kill -9` causes).
#[cfg(feature = "failpoints")]
fn crash(name: &str) -> ! {
    tracing::error!(
        fail_point = name,
        "fail point fired: killing the process (SIGKILL)"
    );
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}
