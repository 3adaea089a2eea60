//! Shared pieces of the end-to-end tests: the engine as a real `jetsaga`
//! process, in-process SDK workers, and definition helpers.

#![allow(dead_code, unreachable_pub, missing_docs)]

use jetsaga_cli::client::Client;
use jetsaga_core::saga::definition::{self, Format};
use jetsaga_protocol::api::{SagaDetail, StepStatus};
use jetsaga_tests::{ChildProcess, NatsServer, bin_path};
use jetsaga_worker::{Worker, WorkerBuilder};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub mod chaos;
pub mod tls;

/// How long a test waits for a process to be ready.
pub const READY: Duration = Duration::from_secs(30);
/// How long a test waits for a saga to finish.
pub const FINISH: Duration = Duration::from_secs(60);

/// A two-step saga `two_steps` on service `gate`: `first` (operation
/// `work`), then `second` (`wait`), both compensated by `undo`.
pub const TWO_STEPS: &str = r#"
sagas:
  two_steps:
    step_events: true
    steps:
      - id: first
        service: gate
        operation: work
        compensation: undo
        timeout: 30s
      - id: second
        service: gate
        operation: wait
        compensation: undo
        timeout: 30s
        depends_on: [first]
"#;

/// A one-step saga `one_step` on service `echo` (see [`World::echo_worker`]).
pub const ONE_STEP: &str = r#"
sagas:
  one_step:
    steps:
      - id: only
        service: echo
        operation: echo
        timeout: 30s
"#;

/// The `jetsaga server` process with its own store directory.
pub struct Engine {
    pub process: ChildProcess,
    pub data_dir: PathBuf,
    /// Process name (in panics and kept logs).
    name: String,
    nats_url: String,
    extra: Vec<String>,
}

impl Engine {
    /// Starts `jetsaga server` against `nats_url` with its store in `data_dir`.
    pub fn start(nats_url: &str, data_dir: &Path, extra: &[&str]) -> Engine {
        Engine::start_with_env(nats_url, data_dir, extra, &[])
    }

    /// SIGKILLs the engine.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same store (after `kill` or `terminate`).
    pub fn restart(&mut self) {
        self.respawn();
        self.wait_ready();
    }

    /// Starts it again on the same store without waiting for it.
    pub fn respawn(&mut self) {
        self.process =
            spawn_engine_process(&self.name, &self.nats_url, &self.data_dir, &self.extra, &[]);
    }

    /// Spawns `jetsaga server` as process `name` against `nats_url` (one URL
    /// or a comma-separated list) with its store in `data_dir`, without
    /// waiting for it to be ready (see [`Engine::wait_ready`]).
    pub fn spawn(name: &str, nats_url: &str, data_dir: &Path, extra: &[&str]) -> Engine {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Engine {
            process: spawn_engine_process(name, nats_url, data_dir, &extra, &[]),
            data_dir: data_dir.to_path_buf(),
            name: name.to_string(),
            nats_url: nats_url.to_string(),
            extra,
        }
    }

    /// Waits until it logs "engine ready" (a standby: once a leader exists).
    pub fn wait_ready(&self) {
        self.process.wait_for_log("engine ready", READY);
    }

    /// The `HOST:PORT` its HTTP API listens on (started with
    /// `--http-listen`), from its `http listening addr=...` log line.
    pub fn http_addr(&self) -> String {
        let line = self.process.wait_for_log("http listening", READY);
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no addr in {line:?}"))
            .to_string()
    }
}

/// One test's world: a nats-server, an engine process, an API client.
pub struct World {
    pub nats: NatsServer,
    pub engine: Engine,
    pub client: Client,
    pub dir: TempDir,
}

impl World {
    /// Starts a server and an engine (with extra engine flags).
    pub async fn start(extra: &[&str]) -> World {
        jetsaga_tests::init_tracing();
        World::on(NatsServer::start(), extra, &[]).await
    }

    /// An engine (with extra flags, and environment variables for its first
    /// start only) and an API client on the given server, whose client
    /// settings both use.
    pub async fn on(nats: NatsServer, extra: &[&str], envs: &[(&str, &str)]) -> World {
        jetsaga_tests::init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::start_with_env(&nats.url(), &dir.path().join("engine"), extra, envs);
        let client = Client::new(nats.client().await, "jetsaga");
        World {
            nats,
            engine,
            client,
            dir,
        }
    }

    /// Applies definitions written as YAML.
    pub async fn apply_yaml(&self, yaml: &str) {
        let parsed =
            definition::parse_str("test.yaml", yaml, Format::Yaml).expect("valid test definition");
        // Sagas and service policies (`services:`) alike.
        self.client
            .apply_file(&parsed)
            .await
            .expect("apply definitions");
    }

    /// Applies the example definition `name` (from examples/definitions).
    pub async fn apply_example(&self, name: &str) {
        let path = jetsaga_tests::workspace_root()
            .join("examples/definitions")
            .join(format!("{name}.yaml"));
        let parsed = definition::parse_file(&path).expect("example definition parses");
        self.client
            .apply(parsed.sagas)
            .await
            .expect("apply definitions");
    }

    /// Ledger directory of this world's example workers.
    pub fn ledger_dir(&self) -> PathBuf {
        self.dir.path().join("ledger")
    }

    /// Starts an example worker binary against this world.
    pub fn example_workers(&self, binary: &str, extra: &[&str]) -> ChildProcess {
        let ledger = self.ledger_dir();
        let mut args = vec![
            "--nats-url".to_string(),
            self.nats.url(),
            "--ledger-dir".to_string(),
            ledger.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = ChildProcess::spawn(binary, &bin_path(binary), &args, &[("RUST_LOG", "info")]);
        p.wait_for_log("workers ready", READY);
        p
    }

    /// Runs an SDK worker in this test process until the returned token is cancelled.
    pub async fn worker(&self, builder: WorkerBuilder) -> WorkerGuard {
        let client = self.nats.client().await;
        let worker: Worker = builder.build(client).await.expect("worker builds");
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.run(token.clone()));
        WorkerGuard {
            token,
            handle: Some(handle),
        }
    }

    /// Waits until saga `id` is terminal.
    pub async fn finished(&self, id: &str) -> SagaDetail {
        self.client
            .wait_terminal(id, FINISH)
            .await
            .expect("saga finishes")
    }
}

/// Stops an in-process worker when dropped or stopped.
pub struct WorkerGuard {
    token: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), jetsaga_worker::WorkerError>>>,
}

impl WorkerGuard {
    /// Stops the worker and waits until it drained.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("worker task").expect("worker stops cleanly");
        }
    }
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// The state name of every step, by step id.
pub fn step_states(detail: &SagaDetail) -> Vec<(String, String)> {
    detail
        .saga
        .steps
        .iter()
        .zip(&detail.definition.steps)
        .map(|(s, d)| (d.id.clone(), s.status.name().to_string()))
        .collect()
}

/// The state of step `id`.
pub fn step<'a>(detail: &'a SagaDetail, id: &str) -> &'a jetsaga_protocol::api::StepState {
    let i = detail.definition.step_index(id).expect("step exists");
    &detail.saga.steps[i]
}

/// Whether step `id` is in state `name`.
pub fn step_is(detail: &SagaDetail, id: &str, name: &str) -> bool {
    step(detail, id).status.name() == name
}

/// Status shorthand.
pub fn is_succeeded(s: &StepStatus) -> bool {
    matches!(s, StepStatus::Succeeded)
}

impl Engine {
    /// Like [`Engine::start`], with extra environment variables for this
    /// start only (`FAILPOINTS`, say); [`Engine::restart`] runs without them.
    pub fn start_with_env(
        nats_url: &str,
        data_dir: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Engine {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let process = spawn_engine_process("engine", nats_url, data_dir, &extra, envs);
        process.wait_for_log("engine ready", READY);
        Engine {
            process,
            data_dir: data_dir.to_path_buf(),
            name: "engine".to_string(),
            nats_url: nats_url.to_string(),
            extra,
        }
    }
}

fn spawn_engine_process(
    name: &str,
    nats_url: &str,
    data_dir: &Path,
    extra: &[String],
    envs: &[(&str, &str)],
) -> ChildProcess {
    let mut args = vec![
        "--nats-url".to_string(),
        nats_url.to_string(),
        "server".to_string(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all_envs = vec![("JETSAGA_LOG", "info,jetsaga_engine=debug")];
    all_envs.extend_from_slice(envs);
    ChildProcess::spawn(name, &bin_path("jetsaga"), &args, &all_envs)
}

impl World {
    /// Like [`World::start`], the engine started with extra environment
    /// variables (`FAILPOINTS`, say); its restarts run without them.
    pub async fn start_with_env(extra: &[&str], envs: &[(&str, &str)]) -> World {
        jetsaga_tests::init_tracing();
        World::on(NatsServer::start(), extra, envs).await
    }

    /// Like [`World::example_workers`], with extra environment variables
    /// (`FAILPOINTS`, `RUST_LOG`...; `RUST_LOG` defaults to `info`).
    pub fn example_workers_with_env(
        &self,
        binary: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> ChildProcess {
        let ledger = self.ledger_dir();
        let mut args = vec!["--ledger-dir".to_string(), ledger.display().to_string()];
        // This world's server, unless `extra` names the servers itself.
        if !extra.contains(&"--nats-url") {
            args.extend(["--nats-url".to_string(), self.nats.url()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut all_envs = vec![("RUST_LOG", "info")];
        all_envs.extend_from_slice(envs);
        let p = ChildProcess::spawn(binary, &bin_path(binary), &args, &all_envs);
        p.wait_for_log("workers ready", READY);
        p
    }
}

/// An in-process worker of one service whose operation holds every task
/// until the test lets it go (or, from [`HeldWorker::passing`], holds none):
/// it reports each saga whose task arrived, in arrival order, counts the
/// handler's runs per idempotency key (a repeated effect shows as a count
/// above 1) and the most runs at once, and fails every task while it is
/// [broken](Self::set_broken).
pub struct HeldWorker {
    worker: WorkerGuard,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    arrived: tokio::sync::mpsc::UnboundedReceiver<String>,
    runs: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>>,
    effects: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>>,
    most: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HeldWorker {
    /// Serves `operation` of `service` in this test process, holding every
    /// task until [`release`](Self::release).
    pub async fn start(world: &World, service: &str, operation: &str) -> HeldWorker {
        HeldWorker::serve(world, service, operation, true).await
    }

    /// Serves `operation` of `service` in this test process without
    /// holding tasks.
    pub async fn passing(world: &World, service: &str, operation: &str) -> HeldWorker {
        HeldWorker::serve(world, service, operation, false).await
    }

    async fn serve(world: &World, service: &str, operation: &str, hold: bool) -> HeldWorker {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let permits = Arc::new(tokio::sync::Semaphore::new(0));
        let runs = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let effects = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let (current, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let broken = Arc::new(AtomicBool::new(false));
        let (tx, arrived) = tokio::sync::mpsc::unbounded_channel();
        let shared = (
            permits.clone(),
            runs.clone(),
            effects.clone(),
            current,
            most.clone(),
            broken.clone(),
        );
        let builder = Worker::builder(service).handler(
            operation,
            move |ctx: jetsaga_worker::TaskContext, input: serde_json::Value| {
                let (permits, runs, effects, current, most, broken) = shared.clone();
                let tx = tx.clone();
                async move {
                    let key = ctx.idempotency_key().to_string();
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    *runs.lock().expect("runs").entry(key.clone()).or_insert(0) += 1;
                    let _ = tx.send(ctx.saga_id().to_string());
                    if hold {
                        permits.acquire().await.expect("permits").forget();
                    }
                    let failed = broken.load(Ordering::SeqCst);
                    if !failed {
                        *effects.lock().expect("effects").entry(key).or_insert(0) += 1;
                    }
                    current.fetch_sub(1, Ordering::SeqCst);
                    if failed {
                        Err(jetsaga_worker::StepError::retryable(
                            "the service is unavailable",
                        ))
                    } else {
                        Ok(input)
                    }
                }
            },
        );
        HeldWorker {
            worker: world.worker(builder).await,
            permits,
            arrived,
            runs,
            effects,
            most,
            broken,
        }
    }

    /// The saga of the next task to arrive (panics after [`READY`]).
    pub async fn next_arrival(&mut self) -> String {
        tokio::time::timeout(READY, self.arrived.recv())
            .await
            .expect("a task arrives at the held worker")
            .expect("held worker running")
    }

    /// The sagas of the next `n` tasks to arrive, in arrival order.
    pub async fn arrivals(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next_arrival().await);
        }
        out
    }

    /// Whether a task arrived that was not taken yet.
    pub fn has_arrival(&mut self) -> bool {
        !self.arrived.is_empty()
    }

    /// The sagas of the tasks that arrived and were not taken yet, in
    /// arrival order, without waiting.
    pub fn arrived_so_far(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.arrived.try_recv().ok()).collect()
    }

    /// Lets `n` held (or future) tasks finish, oldest first.
    pub fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// How often the handler ran, per idempotency key.
    pub fn runs(&self) -> std::collections::BTreeMap<String, u32> {
        self.runs.lock().expect("runs").clone()
    }

    /// How often the handler ran in all, failed runs included.
    pub fn total_runs(&self) -> u32 {
        self.runs().values().sum()
    }

    /// Successful runs (effects) per idempotency key.
    pub fn effects(&self) -> std::collections::BTreeMap<String, u32> {
        self.effects.lock().expect("effects").clone()
    }

    /// The most runs that were under way at once.
    pub fn most_at_once(&self) -> usize {
        self.most.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// While `broken`, every task fails (once let go) with a retryable
    /// error and no effect.
    pub fn set_broken(&self, broken: bool) {
        self.broken
            .store(broken, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops the worker and waits until it drained.
    pub async fn stop(self) {
        self.worker.stop().await;
    }
}

impl World {
    /// Runs an in-process worker of service `echo` whose operation `echo`
    /// returns its input.
    pub async fn echo_worker(&self) -> WorkerGuard {
        self.worker(Worker::builder("echo").handler(
            "echo",
            |_: jetsaga_worker::TaskContext, input: serde_json::Value| async move { Ok(input) },
        ))
        .await
    }

    /// Starts a saga of definition `name` without an idempotency key;
    /// returns its id.
    pub async fn start_saga(&self, name: &str, input: serde_json::Value) -> String {
        self.client
            .start(name, input, None)
            .await
            .expect("start a saga")
            .saga_id
    }

    /// The sagas of definition `name`, newest first (up to 1000).
    pub async fn sagas_of(&self, name: &str) -> Vec<jetsaga_protocol::api::SagaSummary> {
        let filter = jetsaga_protocol::api::ListRequest {
            name: Some(name.to_string()),
            limit: 1000,
            ..Default::default()
        };
        self.client.list(&filter).await.expect("list sagas")
    }
}

/// One HTTP/1.0 exchange with `addr` (a connection per request, so the
/// answer ends with the connection and is never chunked): status and body.
pub async fn http_exchange(
    addr: &str,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP API");
    let body = json_body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("answer within 30 s")
        .expect("read the answer");
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").expect("end of the head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, body.to_string())
}

/// The value of the Prometheus series `series` (written exactly as it is
/// exported, labels included) on the engine's `/metrics`; `None` while absent.
pub async fn metric_value(addr: &str, series: &str) -> Option<f64> {
    let (status, text) = http_exchange(addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200, "{text}");
    series_value(&text, series)
}

/// [`metric_value`], or `None` also while `/metrics` is not served (an
/// engine at its connection limit answers 503).
pub async fn metric_value_once_served(addr: &str, series: &str) -> Option<f64> {
    let (status, text) = http_exchange(addr, "GET", "/metrics", None).await;
    if status != 200 {
        return None;
    }
    series_value(&text, series)
}

/// The value of `series` in the Prometheus text `text`.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits (up to [`READY`]) until the series `series` (as in
/// [`metric_value`]) on the engine's `/metrics` at `addr` equals `want`.
pub async fn wait_metric(addr: &str, series: &str, want: f64) {
    jetsaga_tests::wait_until(
        &format!("metric {series} to equal {want}"),
        READY,
        || async { (metric_value(addr, series).await == Some(want)).then_some(()) },
    )
    .await;
}

impl World {
    /// Runs the `jetsaga` CLI against this world's NATS (`--nats-url` set)
    /// and returns its output once it exits (at most a minute).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let url = self.nats.url();
        let mut all = vec!["--nats-url", url.as_str()];
        all.extend_from_slice(args);
        jetsaga_tests::run_command(&bin_path("jetsaga"), &all, &[], Duration::from_secs(60))
    }
}

/// Bytes a process printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write test file");
    path
}

/// The JSON value `v` as a number (panics, showing it, when it is none).
pub fn num(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}
