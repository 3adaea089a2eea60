//! A real `nats-server` process with JetStream, per test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use jetsaga_engine::config::{NatsConfig, connect_options};
use tempfile::TempDir;

use crate::log::{LogFile, TAIL_LINES, WaitFailure};
use crate::ports::free_port;
use crate::process::{Proc, sanitize};

/// The oldest nats-server jetsaga supports (2.12: atomic batch publish,
/// scheduled messages; older ones break async-nats KV and drop
/// `filter_subjects`).
pub const MIN_NATS_VERSION: (u32, u32) = (2, 12);

/// The line nats-server logs once every listener is up and JetStream has
/// recovered its streams.
pub const READY_LINE: &str = "Server is ready";

/// How long a server may take to log [`READY_LINE`] by default.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`NatsServer::stop`] waits for a graceful exit before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times a fresh start retries with new ports when a port was taken
/// between choosing it and the server binding it.
const START_ATTEMPTS: usize = 3;

/// How many times a restart retries binding its (fixed) port.
const RESTART_ATTEMPTS: usize = 50;

/// The binary the harness runs: `$JETSAGA_NATS_SERVER`, else
/// `<workspace>/.venv/bin/nats-server` (where `scripts/install-nats` puts it),
/// else `nats-server` on `PATH`.
///
/// Panics when there is none.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("JETSAGA_NATS_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "JETSAGA_NATS_SERVER={} does not exist: run scripts/install-nats (or scripts/test)",
            path.display()
        );
        return path;
    }
    let venv = crate::workspace_root().join(".venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
    {
        return path;
    }
    panic!("no nats-server found: run scripts/install-nats (or scripts/test)");
}

/// The version of [`nats_server_binary`] (`"2.15.1"`), asked once per
/// process. Panics when it is older than [`MIN_NATS_VERSION`] or does not
/// run.
pub fn nats_server_version() -> &'static str {
    static VERSION: OnceLock<Result<String, String>> = OnceLock::new();
    let checked = VERSION.get_or_init(|| {
        let binary = nats_server_binary();
        let output = Command::new(&binary)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {} --version: {e}", binary.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = parse_version(&text).ok_or_else(|| {
            format!(
                "cannot read the version of {} from {text:?}",
                binary.display()
            )
        })?;
        if (version.0, version.1) < MIN_NATS_VERSION {
            return Err(format!(
                "{} is nats-server {}.{}.{}, jetsaga needs >= {}.{}: \
                 run scripts/install-nats (or scripts/test), or set JETSAGA_NATS_SERVER",
                binary.display(),
                version.0,
                version.1,
                version.2,
                MIN_NATS_VERSION.0,
                MIN_NATS_VERSION.1
            ));
        }
        Ok(format!("{}.{}.{}", version.0, version.1, version.2))
    });
    match checked {
        Ok(version) => version,
        Err(message) => panic!("jetsaga-tests: {message}"),
    }
}

/// Parses `nats-server: v2.15.1` into `(2, 15, 1)`.
fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut parts = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// Route settings of a node in a [`NatsCluster`](crate::NatsCluster).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSpec {
    /// The cluster's name (the same on every node).
    pub(crate) name: String,
    /// This node's route port.
    pub(crate) port: u16,
    /// Route ports of all nodes (this one included; nats-server skips itself).
    pub(crate) routes: Vec<u16>,
}

/// Options for a [`NatsServer`] beyond [`NatsServer::start`]'s defaults.
///
/// ```no_run
/// let server = jetsaga_tests::NatsServer::builder()
///     .jetstream_config("sync_interval: always")
///     .config("max_payload: 2MB")
///     .monitoring(true)
///     .start();
/// ```
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    /// `server_name`; generated when `None`.
    name: Option<String>,
    /// Extra top-level configuration.
    config: String,
    /// Extra lines inside the `jetstream { }` block.
    jetstream_config: String,
    /// Whether to open the HTTP monitoring port.
    monitoring: bool,
    /// How long to wait for [`READY_LINE`].
    startup_timeout: Duration,
    /// A fixed client port (cluster nodes); free ports are chosen when `None`.
    port: Option<u16>,
    /// A fixed monitoring port (cluster nodes).
    http_port: Option<u16>,
    /// Route settings (cluster nodes).
    cluster: Option<ClusterSpec>,
    /// Credentials and TLS settings of the harness's own clients.
    client_config: NatsConfig,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        NatsServerBuilder {
            name: None,
            config: String::new(),
            jetstream_config: String::new(),
            monitoring: false,
            startup_timeout: STARTUP_TIMEOUT,
            port: None,
            http_port: None,
            cluster: None,
            client_config: NatsConfig::default(),
        }
    }
}

impl NatsServerBuilder {
    /// Sets `server_name` (default: `jetsaga-test-<port>`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Appends top-level configuration (for example `max_payload: 2MB` or an
    /// `accounts { }` block). `listen`, `server_name`, `http`, `cluster` and
    /// `jetstream` are generated: put JetStream settings in
    /// [`jetstream_config`](Self::jetstream_config) instead.
    pub fn config(mut self, text: &str) -> Self {
        self.config.push_str(text);
        self.config.push('\n');
        self
    }

    /// Appends lines inside the generated `jetstream { }` block (for example
    /// `sync_interval: always` or `max_memory_store: 256MB`).
    pub fn jetstream_config(mut self, text: &str) -> Self {
        self.jetstream_config.push_str(text);
        self.jetstream_config.push('\n');
        self
    }

    /// Opens the HTTP monitoring port (`/varz`, `/jsz`, `/healthz`); see
    /// [`NatsServer::monitoring_url`].
    pub fn monitoring(mut self, enabled: bool) -> Self {
        self.monitoring = enabled;
        self
    }

    /// The credentials and TLS settings [`NatsServer::client`] connects
    /// with, for a server whose [`config`](Self::config) requires them (its
    /// `url` is ignored; [`NatsServer::nats_config`] gives it back with the
    /// server's). Readiness does not depend on them: the harness waits for
    /// [`READY_LINE`] in the log.
    ///
    /// ```no_run
    /// use jetsaga_engine::config::{NatsConfig, Secret};
    /// let server = jetsaga_tests::NatsServer::builder()
    ///     .config("authorization { token: \"t0k\" }")
    ///     .client_config(NatsConfig {
    ///         token: Some(Secret::new("t0k")),
    ///         ..NatsConfig::default()
    ///     })
    ///     .start();
    /// ```
    pub fn client_config(mut self, nats: NatsConfig) -> Self {
        self.client_config = nats;
        self
    }

    /// How long to wait for the server to become ready (default 20 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Uses fixed ports (for cluster nodes, whose routes must be known before
    /// any node starts).
    pub(crate) fn ports(mut self, port: u16, http_port: Option<u16>) -> Self {
        self.port = Some(port);
        self.http_port = http_port;
        self.monitoring = http_port.is_some();
        self
    }

    /// Makes the server a cluster node.
    pub(crate) fn cluster(mut self, spec: ClusterSpec) -> Self {
        self.cluster = Some(spec);
        self
    }

    /// Starts the server and waits until it is ready. Panics (with the log
    /// tail) when it does not become ready in time.
    pub fn start(self) -> NatsServer {
        let fixed_ports = self.port.is_some();
        for attempt in 1..=START_ATTEMPTS {
            let server = self.spawn();
            match server.wait_ready(0) {
                Ok(()) => return server,
                Err(failure)
                    if !fixed_ports && attempt < START_ATTEMPTS && server.bind_failed_since(0) =>
                {
                    tracing::debug!(port = server.port, ?failure, "port taken, retrying");
                }
                Err(failure) => server.fail_start(failure),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Writes the config and spawns the server without waiting for it.
    pub(crate) fn spawn(&self) -> NatsServer {
        nats_server_version();
        let port = self.port.unwrap_or_else(free_port);
        let http_port = match (self.http_port, self.monitoring) {
            (Some(port), _) => Some(port),
            (None, true) => Some(free_port()),
            (None, false) => None,
        };
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("jetsaga-test-{port}"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("jetsaga-nats-{}-", sanitize(&name)))
            .tempdir()
            .unwrap_or_else(|e| panic!("jetsaga-tests: temp dir for nats-server: {e}"));
        let store_dir = dir.path().join("store");
        let config_path = dir.path().join("nats.conf");
        let config = self.render(&name, port, http_port, &store_dir);
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("jetsaga-tests: write {}: {e}", config_path.display()));
        let log = LogFile::new(dir.path().join("nats.log"));
        let proc = spawn_nats(&config_path, &log);
        NatsServer {
            name,
            port,
            http_port,
            cluster_port: self.cluster.as_ref().map(|c| c.port),
            config_path,
            store_dir,
            log,
            proc: Mutex::new(proc),
            startup_timeout: self.startup_timeout,
            client_config: self.client_config.clone(),
            started_at: 0,
            dir: Some(dir),
        }
    }

    /// The configuration file's text.
    fn render(&self, name: &str, port: u16, http_port: Option<u16>, store_dir: &Path) -> String {
        let mut out = String::from("# Generated by jetsaga-tests for one test.\n");
        out.push_str(&format!("server_name: {}\n", quote(name)));
        out.push_str(&format!("listen: \"127.0.0.1:{port}\"\n"));
        if let Some(http_port) = http_port {
            out.push_str(&format!("http: \"127.0.0.1:{http_port}\"\n"));
        }
        out.push_str("jetstream {\n");
        out.push_str(&format!(
            "  store_dir: {}\n",
            quote(&store_dir.to_string_lossy())
        ));
        for line in self.jetstream_config.lines() {
            out.push_str(&format!("  {line}\n"));
        }
        out.push_str("}\n");
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            out.push_str(&format!(
                "cluster {{\n  name: {}\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                quote(&cluster.name),
                cluster.port,
                routes.join(", ")
            ));
        }
        out.push_str(&self.config);
        out
    }
}

/// A nats-server config string literal.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Spawns nats-server on `config`, its output appended to `log`.
fn spawn_nats(config: &Path, log: &LogFile) -> Proc {
    let binary = nats_server_binary();
    let mut command = Command::new(&binary);
    command.arg("--config").arg(config);
    Proc::spawn(&mut command, log.path())
        .unwrap_or_else(|e| panic!("jetsaga-tests: cannot start {}: {e}", binary.display()))
}

/// A nats-server with JetStream on a free port of 127.0.0.1, with its own
/// store dir and log file, for one test.
///
/// Modelled on async-nats's `nats-server` test crate. Dropping it kills the
/// server and removes its files; when the thread is panicking the files
/// (config, log, store) are kept and their path printed.
///
/// The blocking methods are fine to call from `#[tokio::test]` bodies: they
/// block for the few hundred milliseconds a start takes.
#[derive(Debug)]
pub struct NatsServer {
    /// `server_name`.
    name: String,
    /// Client port on 127.0.0.1, kept across restarts.
    port: u16,
    /// Monitoring port, when enabled.
    http_port: Option<u16>,
    /// Route port, for cluster nodes.
    cluster_port: Option<u16>,
    /// The generated config file.
    config_path: PathBuf,
    /// The JetStream store dir, kept across restarts.
    store_dir: PathBuf,
    /// Output of every run of the server, appended.
    log: LogFile,
    /// The current (or last) process.
    proc: Mutex<Proc>,
    /// How long a (re)start may take.
    startup_timeout: Duration,
    /// Credentials and TLS settings of [`NatsServer::client`] (`url` unused).
    client_config: NatsConfig,
    /// Log offset at which the current run's output begins.
    started_at: u64,
    /// Holds config, log and store; `None` once kept.
    dir: Option<TempDir>,
}

impl NatsServer {
    /// Starts a server with JetStream (file store in a temp dir) on a free
    /// port and waits until it logs [`READY_LINE`].
    ///
    /// Panics when nats-server is missing or older than 2.12, or with the log
    /// tail when it is not ready within 20 s.
    pub fn start() -> NatsServer {
        NatsServer::builder().start()
    }

    /// Like [`start`](Self::start), with `extra` appended to the generated
    /// config file (top-level settings such as `max_payload: 2MB`).
    pub fn start_with_config(extra: &str) -> NatsServer {
        NatsServer::builder().config(extra).start()
    }

    /// Options beyond the defaults.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The route port, for a cluster node.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// `http://127.0.0.1:<port>` of the monitoring endpoint, when enabled.
    pub fn monitoring_url(&self) -> Option<String> {
        self.http_port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// The monitoring port, when enabled.
    pub(crate) fn http_port(&self) -> Option<u16> {
        self.http_port
    }

    /// The `server_name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JetStream store dir (the same after a restart).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file (output of every run, appended).
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The whole log, across restarts.
    pub fn log(&self) -> String {
        self.log.read()
    }

    /// The process id of the current run.
    pub fn pid(&self) -> u32 {
        self.lock().pid()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.lock().try_wait().is_none()
    }

    /// Waits until a line logged by the current run contains `needle`, and
    /// returns it. Panics with the log tail on timeout or if the server
    /// exited.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let result = self
            .log
            .wait_for(self.started_at, needle, timeout, || self.lock().try_wait());
        result.unwrap_or_else(|failure| {
            panic!(
                "jetsaga-tests: nats-server {} did not log {needle:?} ({failure:?}); log {}:\n{}",
                self.name,
                self.log.path().display(),
                self.log.tail(TAIL_LINES)
            )
        })
    }

    /// SIGKILL (a crash: no flush, no goodbye to clients) and wait until the
    /// process is gone. Does nothing if it is not running.
    pub fn kill(&mut self) {
        self.lock().kill_and_wait();
    }

    /// SIGTERM (graceful shutdown) and wait until the process is gone;
    /// SIGKILL if it takes longer than 15 s.
    pub fn stop(&mut self) {
        self.lock().terminate(STOP_TIMEOUT);
    }

    /// Starts the server again on the same port, config and store dir, and
    /// waits until it is ready. A running server is stopped first.
    ///
    /// The old listening socket is gone once the process is reaped; sockets
    /// of old connections may linger in TIME_WAIT, which does not block the
    /// bind because nats-server (Go) listens with SO_REUSEADDR. Should the
    /// port still be taken, the bind is retried for a few seconds.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        for attempt in 1..=RESTART_ATTEMPTS {
            let offset = self.log.len();
            self.started_at = offset;
            *self.lock() = spawn_nats(&self.config_path, &self.log);
            match self.wait_ready(offset) {
                Ok(()) => return,
                Err(WaitFailure::Exited(_))
                    if attempt < RESTART_ATTEMPTS && self.bind_failed_since(offset) =>
                {
                    tracing::debug!(port = self.port, attempt, "port still taken, retrying");
                    // Back off before the next bind; not a wait for an event.
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(failure) => self.fail_start(failure),
            }
        }
    }

    /// How a client reaches this server: [`url`](Self::url) with the
    /// builder's [`client_config`](NatsServerBuilder::client_config).
    pub fn nats_config(&self) -> NatsConfig {
        NatsConfig {
            url: self.url(),
            ..self.client_config.clone()
        }
    }

    /// A client connected to this server, with the credentials and TLS
    /// settings of [`nats_config`](Self::nats_config). Panics when it cannot
    /// connect.
    pub async fn client(&self) -> async_nats::Client {
        let options = connect_options(&self.client_config)
            .unwrap_or_else(|e| panic!("jetsaga-tests: client settings: {e}"));
        options
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("jetsaga-tests: connect to {}: {e}", self.url()))
    }

    /// A JetStream context on a new client of this server.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }

    /// Waits for the ready line of the run whose output starts at `offset`.
    pub(crate) fn wait_ready(&self, offset: u64) -> Result<(), WaitFailure> {
        self.log
            .wait_for(offset, READY_LINE, self.startup_timeout, || {
                self.lock().try_wait()
            })
            .map(drop)
    }

    /// Whether the run starting at `offset` failed to bind a port.
    fn bind_failed_since(&self, offset: u64) -> bool {
        self.lock().kill_and_wait();
        self.log
            .read_from(offset)
            .contains("address already in use")
    }

    /// Panics about a start that failed, with the log tail.
    pub(crate) fn fail_start(&self, failure: WaitFailure) -> ! {
        self.lock().kill_and_wait();
        let why = match failure {
            WaitFailure::Timeout => format!("not ready within {:?}", self.startup_timeout),
            WaitFailure::Exited(status) => format!("exited ({status}) before it was ready"),
        };
        panic!(
            "jetsaga-tests: nats-server {} on port {}: {why}; log {}:\n{}",
            self.name,
            self.port,
            self.log.path().display(),
            self.log.tail(TAIL_LINES)
        )
    }

    /// The process state, poisoning ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, Proc> {
        self.proc.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let mut proc = self.lock();
        proc.kill_group();
        proc.kill_and_wait();
        drop(proc);
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "jetsaga-tests: files of nats-server {} kept at {}",
                self.name,
                dir.keep().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.11"), Some((2, 9, 11)));
        assert_eq!(parse_version("nats-server: v2.12.0-RC.1"), Some((2, 12, 0)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn renders_config() {
        let builder = NatsServer::builder()
            .jetstream_config("sync_interval: always")
            .config("max_payload: 2MB")
            .cluster(ClusterSpec {
                name: "c".into(),
                port: 7000,
                routes: vec![7000, 7001],
            });
        let text = builder.render("n1", 5000, Some(8000), Path::new("/tmp/x"));
        assert!(text.contains("listen: \"127.0.0.1:5000\""), "{text}");
        assert!(text.contains("http: \"127.0.0.1:8000\""), "{text}");
        assert!(text.contains("  store_dir: \"/tmp/x\"\n  sync_interval: always\n}"));
        assert!(text.contains("nats-route://127.0.0.1:7001"), "{text}");
        assert!(text.ends_with("max_payload: 2MB\n"), "{text}");
    }
}
