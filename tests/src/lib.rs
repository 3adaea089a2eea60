//! Integration-test harness for jetsaga: real `nats-server` processes, and
//! the `jetsaga` engine and example workers as real processes.
//!
//! Modelled on async-nats's `nats-server` test crate. Every test gets its own
//! server on a free port of 127.0.0.1 (never 4222) with a temp JetStream
//! store dir, and can SIGKILL, stop and restart it on the same port and
//! store. Engine and worker processes log to files; tests wait for readiness
//! lines in them (bounded, failing with the log tail) instead of sleeping.
//!
//! The nats-server binary comes from [`nats_server_binary`]:
//! `$JETSAGA_NATS_SERVER`, else `.venv/bin/nats-server` as installed by
//! `scripts/install-nats`, else `PATH`. It must be 2.12 or newer.
//!
//! ```
//! use std::time::Duration;
//! use jetsaga_tests::{ChildProcess, NatsServer, nats_server_binary};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let mut server = NatsServer::start();
//! let client = server.client().await;
//! client.publish("greeting", "hello".into()).await?;
//! client.flush().await?;
//!
//! server.kill(); // kill -9
//! server.restart(); // same port, same store dir
//! assert!(server.is_running());
//!
//! // Any program, its output in a log file; wait for a line of it.
//! let version = ChildProcess::spawn("version", &nats_server_binary(), &["--version"], &[]);
//! let line = version.wait_for_log("nats-server: v2.", Duration::from_secs(10));
//! assert!(line.starts_with("nats-server: v2."));
//! # Ok(())
//! # }
//! ```
//!
//! Engine and workers are spawned from the workspace's build output with
//! [`bin_path`] (`cargo build --workspace --bins` first; `scripts/test` does
//! it):
//!
//! ```no_run
//! # use std::time::Duration;
//! # use jetsaga_tests::{ChildProcess, NatsServer, bin_path};
//! let server = NatsServer::start();
//! let ledger = tempfile::tempdir().unwrap();
//! let workers = ChildProcess::spawn(
//!     "booking-workers",
//!     &bin_path("booking-workers"),
//!     &["--nats-url", &server.url(), "--ledger-dir", ledger.path().to_str().unwrap()],
//!     &[("RUST_LOG", "info")],
//! );
//! workers.wait_for_log("workers ready", Duration::from_secs(30));
//! ```

mod cluster;
mod log;
mod nats;
mod ports;
mod process;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use cluster::{CLUSTER_READY_TIMEOUT, NatsCluster};
pub use nats::{
    MIN_NATS_VERSION, NatsServer, NatsServerBuilder, READY_LINE, STARTUP_TIMEOUT,
    nats_server_binary, nats_server_version,
};
pub use nix::sys::signal::Signal;
pub use ports::free_port;
pub use process::{ChildProcess, TERMINATE_TIMEOUT, run_command};

/// The workspace root (the directory of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// The directory cargo puts the workspace's binaries in for the running
/// test's profile.
///
/// A test binary lives in `<target>/<profile>/deps/`, next to the binaries'
/// `<target>/<profile>/`, whatever `CARGO_TARGET_DIR`, `--target` or
/// `--release` said, so that is asked first. Otherwise (doc tests run from
/// elsewhere) `$CARGO_TARGET_DIR/debug`, else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe()
        && let Some(deps) = exe.parent().filter(|d| d.ends_with("deps"))
        && let Some(profile_dir) = deps.parent()
    {
        return profile_dir.to_path_buf();
    }
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            // cargo resolves a relative CARGO_TARGET_DIR against the cwd it
            // ran in, the workspace root in our scripts.
            let dir = if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            };
            dir.join("debug")
        }
        None => workspace_root().join("target").join("debug"),
    }
}

/// The path of the workspace binary `name` (`jetsaga`, `booking-workers`...)
/// in [`bin_dir`].
///
/// Panics when it has not been built: integration tests spawn binaries of
/// other packages, which `cargo test` does not build by itself.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (scripts/test does it)",
        path.display()
    );
    path
}

/// Installs a tracing subscriber for tests: `RUST_LOG` (default `info`),
/// written through the test harness's capture. Safe to call from every test;
/// only the first call in a process does anything.
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Another subscriber set by the test itself wins; that is fine.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Polls `check` every 50 ms until it returns `Some`, and returns that.
///
/// For conditions that no log line or message announces (a saga's state as
/// seen through the API, a stream's message count). Panics with `what` when
/// `timeout` passes first.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("jetsaga-tests: timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn bin_dir_is_next_to_deps() {
        let dir = bin_dir();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(exe.parent().unwrap().parent().unwrap(), dir);
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace --bins")]
    fn bin_path_explains_a_missing_binary() {
        bin_path("no-such-binary");
    }
}
