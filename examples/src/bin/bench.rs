//! `bench`: throughput and latency of the engine against the raw JetStream
//! floor, on one nats-server, in one run.
//!
//! The engine runs in this process (`jetsaga_engine::run`, temp data dir),
//! with `--workers` in-process SDK workers serving a linear chain of
//! `--steps` no-op steps; `--sagas` sagas run with `--concurrency` in flight.
//! Then the same number of step round trips runs over bare JetStream (a
//! work-queue stream of tasks, one of results, pull consumers) at the same
//! concurrency. `docs/BENCHMARKS.md` explains the numbers.
//!
//! With `--cluster`, three nats-servers form a cluster on loopback and
//! every stream (the engine's journal and streams, the floor's) has three
//! replicas.
//!
//! ```text
//! bench --nats-server .venv/bin/nats-server --sagas 2000 --steps 4 --concurrency 64
//! bench --nats-server .venv/bin/nats-server --cluster --json
//! bench --nats-url nats://127.0.0.1:4222 --compensation --json
//! ```

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use clap::Parser;
use futures::StreamExt;
use jetsaga_cli::client::Client;
use jetsaga_core::saga::definition::{self, Format};
use jetsaga_engine::config::{Config, NatsConfig};
use jetsaga_examples::stats::nearest_rank;
use jetsaga_protocol::api::SagaState;
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

/// Subject prefix of the engine under test.
const PREFIX: &str = "jetsaga";
/// Service the no-op steps run on.
const SERVICE: &str = "bench";
/// How long one saga (or one floor round trip) may take before the run fails.
const FINISH: Duration = Duration::from_secs(120);
/// Linux `USER_HZ`: the unit of utime/stime in `/proc/<pid>/stat`.
const CLOCK_TICKS: f64 = 100.0;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the engine against the raw JetStream floor")]
struct Args {
    /// Start this nats-server (JetStream, free port, temp store; killed at exit).
    #[arg(long, env = "JETSAGA_NATS_SERVER", conflicts_with = "nats_url")]
    nats_server: Option<PathBuf>,
    /// Start the nats-server with `sync_interval: always` (JetStream
    /// fsyncs every write before acknowledging it) instead of the default
    /// periodic sync.
    #[arg(long, conflicts_with = "nats_url")]
    sync_always: bool,
    /// Start three nats-servers as a cluster instead of one; every stream
    /// then has three replicas.
    #[arg(long, conflicts_with = "nats_url")]
    cluster: bool,
    /// Use an existing server instead (it must have JetStream).
    #[arg(long)]
    nats_url: Option<String>,
    /// Sagas to run.
    #[arg(long, default_value_t = 2000)]
    sagas: usize,
    /// Steps per saga (a linear chain of no-op steps on one service).
    #[arg(long, default_value_t = 4)]
    steps: usize,
    /// Sagas (and floor round trips) in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// In-process SDK workers (and floor workers), each with concurrency >= --concurrency.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Every saga fails at its last step and rolls back (compensations run).
    #[arg(long)]
    compensation: bool,
    /// The engine's partitions (one engine leads them all: each is its own
    /// task, store, journal and relay).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Log to stderr with this filter (e.g. `jetsaga_engine=debug,jetsaga_worker=debug`):
    /// the per-hop timeline of a step, for latency breakdowns.
    #[arg(long)]
    log: Option<String>,
}

/// A nats-server this process started; killed when dropped.
struct OwnedServer {
    child: std::process::Child,
    _store: tempfile::TempDir,
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_server(bin: &Path, sync_always: bool) -> Result<(OwnedServer, String)> {
    let store = tempfile::tempdir()?;
    let port = free_port()?;
    let mut command = std::process::Command::new(bin);
    command.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()]);
    if sync_always {
        // `sync_interval` has no command-line flag: a config file it is.
        let conf = store.path().join("server.conf");
        let data = store.path().join("data");
        std::fs::write(
            &conf,
            format!(
                "jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
                data.display().to_string()
            ),
        )?;
        command.arg("-c").arg(&conf);
    } else {
        command.arg("-sd").arg(store.path());
    }
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let server = OwnedServer {
        child,
        _store: store,
    };
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = async_nats::connect(&url).await
            && jetstream::new(c).query_account().await.is_ok()
        {
            return Ok((server, url));
        }
        if Instant::now() > deadline {
            bail!("nats-server at {url} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts three nats-servers as one cluster (JetStream, free ports, temp
/// stores) and waits until it takes replicated streams; answers them and
/// the comma-separated client URLs.
async fn start_cluster(bin: &Path, sync_always: bool) -> Result<(Vec<OwnedServer>, String)> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_>>()?;
    let mut servers = Vec::new();
    for (i, (client, route)) in ports.iter().enumerate() {
        let store = tempfile::tempdir()?;
        let routes: Vec<String> = ports
            .iter()
            .filter(|(_, r)| r != route)
            .map(|(_, r)| format!("\"nats-route://127.0.0.1:{r}\""))
            .collect();
        let conf = store.path().join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{client}\"\njetstream {{\n  store_dir: {:?}\n{}}}\ncluster {{\n  name: bench\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n}}\n",
                store.path().join("data").display().to_string(),
                if sync_always {
                    "  sync_interval: always\n"
                } else {
                    ""
                },
                routes.join(", ")
            ),
        )?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        servers.push(OwnedServer {
            child,
            _store: store,
        });
    }
    let url = ports
        .iter()
        .map(|(c, _)| format!("nats://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    // Ready: a replicated stream can be created (a meta leader exists).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(c) = connect(&url).await {
            let js = jetstream::new(c);
            let probe = js
                .create_stream(stream::Config {
                    name: "BENCH_PROBE".into(),
                    subjects: vec!["bench.probe".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            if probe.is_ok() {
                let _ = js.delete_stream("BENCH_PROBE").await;
                return Ok((servers, url));
            }
        }
        if Instant::now() > deadline {
            bail!("the nats-server cluster at {url} did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// utime + stime of process `pid` (`self` for this one), in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// p50/p90/p99 (ms) of latencies, by sorting (nearest rank).
fn percentiles(samples: Vec<Duration>) -> Value {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q| nearest_rank(&ms, q).unwrap_or(0.0);
    json!({ "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99) })
}

fn definitions_yaml(steps: usize, compensation: bool) -> String {
    let mut y = String::from("sagas:\n  bench_chain:\n    timeout: 10m\n    steps:\n");
    for i in 0..steps {
        let last = i + 1 == steps;
        let op = if compensation && last { "fail" } else { "noop" };
        y.push_str(&format!(
            "      - id: s{i}\n        service: {SERVICE}\n        operation: {op}\n        compensation: undo\n        timeout: 30s\n"
        ));
        if i > 0 {
            y.push_str(&format!("        depends_on: [s{}]\n", i - 1));
        }
    }
    y
}

/// Where the terminal progress notification of each saga goes.
enum Waiter {
    Waiting(oneshot::Sender<String>),
    Done(String),
}

type Waiters = Arc<Mutex<HashMap<String, Waiter>>>;

async fn engine_phase(args: &Args, url: &str, counter: Arc<AtomicU64>) -> Result<Value> {
    let data = tempfile::tempdir()?;
    let data_dir = data.path().join("engine");
    let config = Config {
        nats: NatsConfig::new(url),
        prefix: PREFIX.into(),
        data_dir: data_dir.clone(),
        replicas: replicas(args),
        partitions: args.partitions,
        ..Config::default()
    };
    let engine_stop = CancellationToken::new();
    let mut engine = tokio::spawn(jetsaga_engine::run(config, engine_stop.clone()));

    let client = Client::new(connect(url).await?, PREFIX);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::select! {
            r = &mut engine => bail!("engine stopped early: {r:?}"),
            r = client.definitions() => if r.is_ok() { break },
        }
        if Instant::now() > deadline {
            bail!("engine API did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let parsed = definition::parse_str(
        "bench.yaml",
        &definitions_yaml(args.steps, args.compensation),
        Format::Yaml,
    )
    .map_err(|e| anyhow::anyhow!("bench definition: {e}"))?;
    client.apply(parsed.sagas).await?;

    let workers_stop = CancellationToken::new();
    let mut workers = Vec::new();
    for i in 0..args.workers.max(1) {
        let (c1, c2, c3) = (counter.clone(), counter.clone(), counter.clone());
        let worker = Worker::builder(SERVICE)
            .name(&format!("bench-{i}"))
            .concurrency(args.concurrency.max(1))
            .handler("noop", move |_ctx: TaskContext, _in: Value| {
                let c = c1.clone();
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, StepError>(Value::Null)
                }
            })
            .handler("fail", move |_ctx: TaskContext, _in: Value| {
                let c = c2.clone();
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    Err::<Value, _>(StepError::fatal("bench: planned failure"))
                }
            })
            .compensation("undo", move |_ctx: TaskContext, _in: Value| {
                let c = c3.clone();
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, StepError>(Value::Null)
                }
            })
            .build(connect(url).await?)
            .await?;
        workers.push(tokio::spawn(worker.run(workers_stop.clone())));
    }

    // Terminal states come from the progress notifications (one wildcard
    // subscription); a saga whose notification was missed is re-read.
    let waiters: Waiters = Arc::default();
    let mut progress = client
        .nats()
        .subscribe(format!("{PREFIX}.progress.>"))
        .await?;
    client.nats().flush().await?;
    let dispatch = {
        let waiters = waiters.clone();
        tokio::spawn(async move {
            while let Some(msg) = progress.next().await {
                let state = String::from_utf8_lossy(&msg.payload).to_string();
                if !SagaState::from_name(&state).is_some_and(SagaState::is_terminal) {
                    continue;
                }
                let Some(id) = msg.subject.as_str().rsplit('.').next() else {
                    continue;
                };
                let mut w = waiters.lock().expect("waiters");
                match w.remove(id) {
                    Some(Waiter::Waiting(tx)) => {
                        let _ = tx.send(state);
                    }
                    _ => {
                        w.insert(id.to_string(), Waiter::Done(state));
                    }
                }
            }
        })
    };

    let cpu0 = cpu_seconds("self");
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut runs = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..args.sagas {
        let permit = gate.clone().acquire_owned().await?;
        let (client, waiters) = (client.clone(), waiters.clone());
        runs.spawn(async move {
            let _permit = permit;
            let t0 = Instant::now();
            let id = client.start("bench_chain", json!({}), None).await?.saga_id;
            let (tx, mut rx) = oneshot::channel();
            {
                let mut w = waiters.lock().expect("waiters");
                match w.remove(&id) {
                    Some(Waiter::Done(state)) => return Ok((t0.elapsed(), state)),
                    _ => {
                        w.insert(id.clone(), Waiter::Waiting(tx));
                    }
                }
            }
            loop {
                tokio::select! {
                    r = &mut rx => return Ok((t0.elapsed(), r.unwrap_or_default())),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {
                        let d = client.get(&id).await?;
                        if d.saga.status.is_terminal() {
                            waiters.lock().expect("waiters").remove(&id);
                            return Ok((t0.elapsed(), d.saga.status.name().to_string()));
                        }
                    }
                }
                if t0.elapsed() > FINISH {
                    bail!("saga {id} not terminal after {FINISH:?}");
                }
            }
        });
    }
    let mut latencies = Vec::with_capacity(args.sagas);
    let mut states: HashMap<String, u64> = HashMap::new();
    while let Some(r) = runs.join_next().await {
        let (latency, state) = r??;
        latencies.push(latency);
        *states.entry(state).or_default() += 1;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_seconds("self")) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    let round_trips = counter.load(Ordering::Relaxed);
    let rss = peak_rss_bytes();

    workers_stop.cancel();
    for w in workers {
        w.await??;
    }
    engine_stop.cancel();
    engine.await??;
    dispatch.abort();
    let store = jetsaga_store::dir_bytes(&data_dir).unwrap_or(0);
    let n = args.sagas as f64;
    Ok(json!({
        "sagas": args.sagas,
        "states": states,
        "wall_s": wall,
        "sagas_per_s": n / wall,
        "step_round_trips": round_trips,
        "round_trips_per_saga": round_trips as f64 / n,
        "steps_per_s": round_trips as f64 / wall,
        "latency": percentiles(latencies),
        "process_cpu_s": cpu,
        "process_cpu_note": "engine + SDK workers + bench client share this process",
        "peak_rss_bytes": rss,
        "store_bytes": store,
        "store_bytes_per_saga": store as f64 / n,
    }))
}

/// Every stream's last sequence: how many messages it has stored in its
/// life, deleted ones included (with `--nats-url`, other streams of the
/// account count too).
async fn stored_messages(js: &jetstream::Context) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = info?;
        out.insert(info.config.name.clone(), info.state.last_sequence);
    }
    Ok(out)
}

/// The engine's journal stream (prefix `jetsaga`).
const JOURNAL_STREAM: &str = "JETSAGA_JOURNAL";

/// The bytes stream `name` holds now (0 if it does not exist).
async fn stream_bytes(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.map_or(0, |i| i.state.bytes),
        Err(_) => 0,
    }
}

/// The messages each stream stored between `before` and `after`.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(name, last)| {
            let since = last.saturating_sub(before.get(name).copied().unwrap_or(0));
            (name.clone(), since)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Connects to the server(s) of `url`, a comma-separated list.
async fn connect(url: &str) -> Result<async_nats::Client> {
    let addrs = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(async_nats::connect(addrs).await?)
}

/// Replicas of every stream: three on a cluster.
fn replicas(args: &Args) -> usize {
    if args.cluster { 3 } else { 1 }
}

async fn floor_phase(args: &Args, url: &str, round_trips: u64) -> Result<Value> {
    let nats = connect(url).await?;
    let js = jetstream::new(nats.clone());
    let stored_before = stored_messages(&js).await?;
    let tasks_stream = js
        .get_or_create_stream(stream::Config {
            name: "BENCHFLOOR_TASKS".into(),
            subjects: vec!["benchfloor.task".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: replicas(args),
            ..Default::default()
        })
        .await?;
    let results_stream = js
        .get_or_create_stream(stream::Config {
            name: "BENCHFLOOR_RESULTS".into(),
            subjects: vec!["benchfloor.result".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: replicas(args),
            ..Default::default()
        })
        .await?;
    let pull = |name: &str| consumer::pull::Config {
        durable_name: Some(name.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    let tasks: consumer::PullConsumer = tasks_stream
        .get_or_create_consumer("workers", pull("workers"))
        .await?;
    let results: consumer::PullConsumer = results_stream
        .get_or_create_consumer("client", pull("client"))
        .await?;

    let stop = CancellationToken::new();
    let mut floor_workers = Vec::new();
    for _ in 0..args.workers.max(1) {
        let worker_js = jetstream::new(connect(url).await?);
        let mut messages = tasks.messages().await?;
        let stop = stop.clone();
        floor_workers.push(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = messages.next() => match m { Some(Ok(m)) => m, _ => break },
                };
                let js = worker_js.clone();
                tokio::spawn(async move {
                    let ack = js.publish("benchfloor.result", msg.payload.clone()).await;
                    if let Ok(ack) = ack
                        && ack.await.is_ok()
                    {
                        let _ = msg.ack().await;
                    }
                });
            }
        }));
    }
    let waiters: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
    let collector = {
        let waiters = waiters.clone();
        let mut messages = results.messages().await?;
        tokio::spawn(async move {
            while let Some(Ok(msg)) = messages.next().await {
                let id: Option<u64> = std::str::from_utf8(&msg.payload)
                    .ok()
                    .and_then(|s| s.parse().ok());
                let _ = msg.ack().await;
                if let Some(tx) = id.and_then(|id| waiters.lock().expect("waiters").remove(&id)) {
                    let _ = tx.send(());
                }
            }
        })
    };

    let cpu0 = cpu_seconds("self");
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut runs = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..round_trips {
        let permit = gate.clone().acquire_owned().await?;
        let (js, waiters) = (js.clone(), waiters.clone());
        runs.spawn(async move {
            let _permit = permit;
            let (tx, rx) = oneshot::channel();
            waiters.lock().expect("waiters").insert(i, tx);
            let t0 = Instant::now();
            js.publish("benchfloor.task", i.to_string().into())
                .await?
                .await?;
            tokio::time::timeout(FINISH, rx)
                .await
                .context("floor round trip timed out")??;
            anyhow::Ok(t0.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(round_trips as usize);
    while let Some(r) = runs.join_next().await {
        latencies.push(r??);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, cpu_seconds("self")) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    stop.cancel();
    collector.abort();
    for w in floor_workers {
        let _ = w.await;
    }
    // Read before the streams go.
    let stored = delta(&stored_before, &stored_messages(&js).await?);
    let _ = js.delete_stream("BENCHFLOOR_TASKS").await;
    let _ = js.delete_stream("BENCHFLOOR_RESULTS").await;
    Ok(json!({
        "stored_by_stream": stored,
        "round_trips": round_trips,
        "wall_s": wall,
        "round_trips_per_s": round_trips as f64 / wall,
        "latency": percentiles(latencies),
        "process_cpu_s": cpu,
        "process_cpu_note": "floor client and floor workers share this process",
    }))
}

/// Process plus nats-server CPU per round trip, in microseconds.
fn cpu_per_trip(v: &Value, trips: &str) -> f64 {
    let cpu = v["process_cpu_s"].as_f64().unwrap_or(f64::NAN)
        + v["nats_server_cpu_s"].as_f64().unwrap_or(f64::NAN);
    cpu * 1e6 / v[trips].as_f64().unwrap_or(f64::NAN)
}

fn ms(v: &Value, path: &str) -> f64 {
    v["latency"][path].as_f64().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    if args.sagas == 0 || args.steps == 0 {
        bail!("--sagas and --steps must be at least 1");
    }
    let mut owned: Vec<OwnedServer> = Vec::new();
    let url = match (&args.nats_url, &args.nats_server) {
        (Some(url), _) => url.clone(),
        (None, bin) => {
            let bin = bin.as_deref().unwrap_or(Path::new("nats-server"));
            if args.cluster {
                let (servers, url) = start_cluster(bin, args.sync_always).await?;
                owned = servers;
                url
            } else {
                let (server, url) = start_server(bin, args.sync_always).await?;
                owned.push(server);
                url
            }
        }
    };
    let probe = connect(&url).await?;
    let version = probe.server_info().version;
    let server_pids: Vec<String> = owned.iter().map(|s| s.child.id().to_string()).collect();
    // Every server's CPU, summed (`None` when one cannot be read).
    let server_cpu = |pids: &Vec<String>| -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| cpu_seconds(p)).sum()
    };

    let counter = Arc::new(AtomicU64::new(0));
    let js = jetstream::new(probe.clone());
    let s0 = server_cpu(&server_pids);
    let m0 = stored_messages(&js).await?;
    let j0 = stream_bytes(&js, JOURNAL_STREAM).await;
    let mut engine = engine_phase(&args, &url, counter).await?;
    let s1 = server_cpu(&server_pids);
    let m1 = stored_messages(&js).await?;
    let j1 = stream_bytes(&js, JOURNAL_STREAM).await;
    let round_trips = engine["step_round_trips"].as_u64().unwrap_or(0);
    let mut floor = floor_phase(&args, &url, round_trips).await?;
    let s2 = server_cpu(&server_pids);
    if let (Some(a), Some(b), Some(c)) = (s0, s1, s2) {
        engine["nats_server_cpu_s"] = json!(b - a);
        floor["nats_server_cpu_s"] = json!(c - b);
    }
    // What each side stored in JetStream, per step round trip.
    let per = |n: &BTreeMap<String, u64>, trips: f64| {
        let total: u64 = n.values().sum();
        json!({ "total": total, "per_round_trip": total as f64 / trips, "by_stream": n })
    };
    let trips = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    engine["stored_messages"] = per(&delta(&m0, &m1), trips(&engine, "step_round_trips"));
    // What the engine's journal records cost per step (none trimmed in a
    // run shorter than a snapshot interval).
    engine["journal_bytes_per_step"] =
        json!(j1.saturating_sub(j0) as f64 / trips(&engine, "step_round_trips"));
    let floor_stored: BTreeMap<String, u64> = serde_json::from_value(
        floor
            .as_object_mut()
            .and_then(|f| f.remove("stored_by_stream"))
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    floor["stored_messages"] = per(&floor_stored, trips(&floor, "round_trips"));

    let per_saga = engine["round_trips_per_saga"].as_f64().unwrap_or(f64::NAN);
    let throughput_ratio = engine["steps_per_s"].as_f64().unwrap_or(f64::NAN)
        / floor["round_trips_per_s"].as_f64().unwrap_or(f64::NAN);
    let latency_ratio = ms(&engine, "p50_ms") / per_saga / ms(&floor, "p50_ms");
    let (engine_cpu, floor_cpu) = (
        cpu_per_trip(&engine, "step_round_trips"),
        cpu_per_trip(&floor, "round_trips"),
    );
    engine["cpu_us_per_round_trip"] = json!(engine_cpu);
    floor["cpu_us_per_round_trip"] = json!(floor_cpu);
    let cpu_ratio = engine_cpu / floor_cpu;
    let report = json!({
        "config": {
            "sagas": args.sagas,
            "steps": args.steps,
            "concurrency": args.concurrency,
            "workers": args.workers,
            "compensation": args.compensation,
            "nats_server_version": version,
            "own_server": !owned.is_empty(),
            "cluster": args.cluster,
            "replicas": replicas(&args),
            "server_sync_always": args.sync_always,
            "partitions": args.partitions,
        },
        "engine": engine,
        "floor": floor,
        "ratios": {
            "throughput_engine_over_floor": throughput_ratio,
            "p50_latency_per_step_engine_over_floor": latency_ratio,
            "cpu_per_round_trip_engine_over_floor": cpu_ratio,
        },
    });
    drop(owned);

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let e = &report["engine"];
    let f = &report["floor"];
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "jetsaga bench: {} sagas x {} steps, {} in flight, {} workers{}, nats-server {}{}",
        args.sagas,
        args.steps,
        args.concurrency,
        args.workers,
        if args.compensation {
            ", compensation"
        } else {
            ""
        },
        version,
        if args.sync_always {
            " (sync_interval: always)"
        } else {
            ""
        }
    );
    println!("final states: {}", e["states"]);
    println!();
    println!(
        "| {:<30} | {:>12} | {:>12} | {:>8} |",
        "", "engine", "floor", "ratio"
    );
    println!("|{:-<32}|{:->14}|{:->14}|{:->10}|", "", "", "", "");
    println!(
        "| {:<30} | {:>12.0} | {:>12.0} | {:>8.3} |",
        "step round trips / s",
        num(&e["steps_per_s"]),
        num(&f["round_trips_per_s"]),
        throughput_ratio
    );
    println!(
        "| {:<30} | {:>12.1} | {:>12} | {:>8} |",
        "sagas / s",
        num(&e["sagas_per_s"]),
        "",
        ""
    );
    for p in ["p50_ms", "p90_ms", "p99_ms"] {
        println!(
            "| {:<30} | {:>12.2} | {:>12.2} | {:>8} |",
            format!("latency {} (saga \\| trip)", &p[..3]),
            ms(e, p),
            ms(f, p),
            ""
        );
    }
    println!(
        "| {:<30} | {:>12.2} | {:>12.2} | {:>8.3} |",
        "p50 per step round trip, ms",
        ms(e, "p50_ms") / per_saga,
        ms(f, "p50_ms"),
        latency_ratio
    );
    println!(
        "| {:<30} | {:>12.2} | {:>12.2} | {:>8.3} |",
        "stored messages / round trip",
        num(&e["stored_messages"]["per_round_trip"]),
        num(&f["stored_messages"]["per_round_trip"]),
        num(&e["stored_messages"]["per_round_trip"]) / num(&f["stored_messages"]["per_round_trip"])
    );
    println!(
        "| {:<30} | {:>12.2} | {:>12.2} | {:>8} |",
        "process CPU s (incl. workers)",
        num(&e["process_cpu_s"]),
        num(&f["process_cpu_s"]),
        ""
    );
    println!(
        "| {:<30} | {:>12.2} | {:>12.2} | {:>8} |",
        "nats-server CPU s",
        num(&e["nats_server_cpu_s"]),
        num(&f["nats_server_cpu_s"]),
        ""
    );
    println!(
        "| {:<30} | {:>12.0} | {:>12.0} | {:>8.3} |",
        "CPU µs / round trip (all)",
        num(&e["cpu_us_per_round_trip"]),
        num(&f["cpu_us_per_round_trip"]),
        num(&report["ratios"]["cpu_per_round_trip_engine_over_floor"])
    );
    println!(
        "| {:<30} | {:>12.1} | {:>12} | {:>8} |",
        "peak RSS MiB",
        num(&e["peak_rss_bytes"]) / 1048576.0,
        "",
        ""
    );
    println!(
        "| {:<30} | {:>12.0} | {:>12} | {:>8} |",
        "store bytes / saga",
        num(&e["store_bytes_per_saga"]),
        "",
        ""
    );
    Ok(())
}
