//! `scale`: the engine with a large store, and the store's size under
//! retention over a long run.
//!
//! Phases, one JSON report on stdout (progress on stderr):
//!
//! 1. **seed**: a store is written directly through the store API
//!    (`SledStore`, no engine) with `--finished` terminal sagas and
//!    `--unfinished` running ones of the example definitions
//!    `collect_payment` and `create_booking` (4 steps each, small inputs and
//!    outputs, one attempt per step; terminal ones mostly completed, some
//!    compensated or failed, finished over the last days).
//! 2. **store**: `saga(id)` and filtered `list_sagas` pages on the store
//!    alone, and one `unfinished_sagas()`.
//! 3. **engine**: the `jetsaga` binary is started on that store; start-up
//!    is timed from spawning the process to its `partition resumed` log line
//!    (which must count every unfinished saga) and to `engine ready`. Then
//!    `saga get` and filtered `saga list` pages over NATS through the API
//!    client, and the same two through the `jetsaga` CLI (a process per call).
//!    Then `saga stats` over NATS: over every stored saga, over one
//!    definition, and over the last hour (`since`), each count checked
//!    against the seed.
//! 4. **prune backlog**: the engine again on that store with a 1 s
//!    retention, so every seeded finished saga is past it: the time until
//!    all are pruned and only the unfinished ones are left.
//! 5. **compact**: `jetsaga store compact` on the pruned store (the engine
//!    stopped): its time and the data directory before and after; then the
//!    engine once more on the compacted store, timed to `partition resumed`
//!    (which must count every unfinished saga again).
//! 6. **long run** (`--long-run`, 0 to skip): a fresh engine with
//!    `--retention`, no-op workers for `collect_payment`, sagas started at
//!    `--rate` per second; every `--sample-every` the engine's `/metrics`
//!    are read (`engine_stored_sagas`, `engine_store_size_bytes`,
//!    `engine_pruned_sagas_total`) with the data directory's size.
//!
//! ```text
//! cargo build --release -p jetsaga-engine -p jetsaga-examples --bin jetsaga --bin scale
//! target/release/scale --nats-url nats://127.0.0.1:4222 --long-run 5m --retention 10s
//! ```
//!
//! `docs/BENCHMARKS.md` ("Scale") has the figures and how to read them.

use anyhow::{Context, Result, bail};
use jetsaga_cli::client::Client;
use jetsaga_core::saga::definition::{self, Format, SagaDefinition};
use jetsaga_core::saga::state::{
    Attempt, AttemptOutcome, Millis, Saga, SagaStatus, StepState, StepStatus, TimerKind,
};
use jetsaga_engine::partition::now_ms;
use jetsaga_engine::retention::Retention;
use jetsaga_examples::stats::nearest_rank;
use jetsaga_protocol::api::{ListRequest, SagaState, StatsRequest};
use jetsaga_store::{
    Change, DefinitionTable, DiskUsage, GroupCommit, SagaFilter, SagaTable, SledStore, TimerRow,
};
use jetsaga_worker::protocol::TaskKind;
use jetsaga_worker::{StepError, TaskContext, Worker};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Subject prefix of the engine under test.
const PREFIX: &str = "jetsaga";
/// Subject prefix of the long run: an installation of its own, since its
/// store is not the seeded one (one installation's engines share one
/// journal, so a second store on `PREFIX` would join it).
const LONG_RUN_PREFIX: &str = "scale-long";
/// The example definitions the seeded sagas run.
const DEFINITIONS: [&str; 2] = [
    include_str!("../../definitions/collect_payment.yaml"),
    include_str!("../../definitions/create_booking.yaml"),
];
/// How long the engine may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(clap::Parser, Debug)]
#[command(about = "The engine with a large store; store size under retention")]
struct Args {
    /// NATS server (with JetStream) the engine and the clients use.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The `jetsaga` binary (default: next to this one).
    #[arg(long)]
    jetsaga: Option<PathBuf>,
    /// Terminal sagas to seed.
    #[arg(long, default_value_t = 100_000)]
    finished: usize,
    /// Running sagas to seed.
    #[arg(long, default_value_t = 10_000)]
    unfinished: usize,
    /// Timed calls per API measurement (store and NATS API).
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Timed calls per CLI measurement (a `jetsaga` process each).
    #[arg(long, default_value_t = 20)]
    cli_calls: usize,
    /// Length of the long run; 0 skips it.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    long_run: Duration,
    /// Retention of the long run's engine (`off`: keep finished sagas, to
    /// compare).
    #[arg(long, default_value = "10s")]
    retention: Retention,
    /// Sagas started per second in the long run.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// How often the long run samples the store's size.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// Keep the stores here instead of a temp directory.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// A UUIDv7 saga id for creation time `ms`, like the engine's own.
fn saga_id(ms: Millis) -> String {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
    uuid::Uuid::new_v7(ts).to_string()
}

/// xorshift64: deterministic picks without a dependency.
struct Picks(u64);

impl Picks {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Latency summary in milliseconds: nearest-rank p50 and p99, and the mean.
fn latency(mut ms: Vec<f64>) -> Value {
    if ms.is_empty() {
        return json!({ "calls": 0 });
    }
    ms.sort_by(f64::total_cmp);
    let rank = |q| nearest_rank(&ms, q);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    json!({
        "calls": ms.len(),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "max_ms": ms[ms.len() - 1],
        "mean_ms": mean,
    })
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn definitions() -> Result<Vec<SagaDefinition>> {
    let mut out = Vec::new();
    for (i, text) in DEFINITIONS.iter().enumerate() {
        let parsed = definition::parse_str(&format!("example-{i}.yaml"), text, Format::Yaml)
            .map_err(|e| anyhow::anyhow!("example definition: {e}"))?;
        out.extend(parsed.sagas);
    }
    Ok(out)
}

/// How a seeded saga ends.
#[derive(Clone, Copy)]
enum Ending {
    Completed,
    Compensated,
    Failed,
}

fn attempt(kind: TaskKind, at: Millis, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        kind,
        number: 1,
        generation: 0,
        started_at: at,
        finished_at: Some(at + 40),
        outcome: Some(outcome),
    }
}

fn step_output(def: &SagaDefinition, step: usize, n: usize) -> Value {
    json!({ "ref": format!("{}_{}_{n}", def.steps[step].operation, n % 9973), "ok": true })
}

/// A terminal saga of `def` created at `at`, ended as `ending`.
fn finished_saga(def: &SagaDefinition, n: usize, at: Millis, ending: Ending) -> Saga {
    let fatal = || AttemptOutcome::Fatal {
        error: "card declined".into(),
    };
    // The step that failed for good (compensations undo the ones before).
    let failed_at = match ending {
        Ending::Completed => def.steps.len(),
        Ending::Compensated => 2.min(def.steps.len() - 1),
        Ending::Failed => 0,
    };
    let steps = (0..def.steps.len())
        .map(|i| {
            let t = at + 100 * i as Millis;
            let mut s = StepState::default();
            if i < failed_at {
                s.attempts
                    .push(attempt(TaskKind::Action, t, AttemptOutcome::Ok));
                s.output = Some(step_output(def, i, n));
                s.status = StepStatus::Succeeded;
                if failed_at < def.steps.len() {
                    if def.steps[i].compensation.is_some() {
                        s.attempts.push(attempt(
                            TaskKind::Compensation,
                            t + 900,
                            AttemptOutcome::Ok,
                        ));
                        s.status = StepStatus::Compensated;
                    } else {
                        s.status = StepStatus::NotCompensable;
                    }
                }
            } else if i == failed_at {
                s.attempts.push(attempt(TaskKind::Action, t, fatal()));
                s.status = StepStatus::Failed {
                    error: "card declined".into(),
                };
            } else {
                s.status = StepStatus::Skipped;
            }
            s
        })
        .collect();
    let reason = format!(
        "step {} failed: card declined",
        def.steps[failed_at.min(def.steps.len() - 1)].id
    );
    let status = match ending {
        Ending::Completed => SagaStatus::Completed,
        Ending::Compensated => SagaStatus::Compensated { reason },
        Ending::Failed => SagaStatus::Failed { reason },
    };
    Saga {
        id: saga_id(at),
        name: def.name.clone(),
        definition_version: def.version,
        input: input(n),
        idempotency_key: Some(format!("order-{n}")),
        generation: 0,
        status,
        steps,
        created_at: at,
        updated_at: at + 2_000,
        finished_at: Some(at + 2_000),
        trace_parent: None,
        event_seq: 0,
    }
}

fn input(n: usize) -> Value {
    json!({
        "order_id": format!("ord_{n}"),
        "amount_cents": 1000 + n % 9000,
        "currency": "USD",
        "customer": { "name": format!("Customer {n}"), "email": format!("c{n}@example.com") },
    })
}

/// A running saga of `def` created at `at`: its first step done, the second
/// dispatched, with the step and saga timeouts armed (`due`).
fn running_saga(def: &SagaDefinition, n: usize, at: Millis, due: Millis) -> Change {
    let mut steps: Vec<StepState> = vec![StepState::default(); def.steps.len()];
    steps[0]
        .attempts
        .push(attempt(TaskKind::Action, at, AttemptOutcome::Ok));
    steps[0].output = Some(step_output(def, 0, n));
    steps[0].status = StepStatus::Succeeded;
    steps[1].attempts.push(Attempt {
        kind: TaskKind::Action,
        number: 1,
        generation: 0,
        started_at: at + 50,
        finished_at: None,
        outcome: None,
    });
    steps[1].status = StepStatus::Running { attempt: 1 };
    let saga = Saga {
        id: saga_id(at),
        name: def.name.clone(),
        definition_version: def.version,
        input: input(n),
        idempotency_key: Some(format!("order-{n}")),
        generation: 0,
        status: SagaStatus::Running,
        steps,
        created_at: at,
        updated_at: at + 50,
        finished_at: None,
        trace_parent: None,
        event_seq: 0,
    };
    let timer = |timer| TimerRow {
        saga_id: saga.id.clone(),
        timer,
        due,
    };
    let timers_add = vec![
        timer(TimerKind::SagaTimeout),
        timer(TimerKind::StepTimeout {
            step: 1,
            kind: TaskKind::Action,
            attempt: 1,
        }),
    ];
    Change {
        idempotency_key: saga.idempotency_key.clone(),
        saga: Some(saga.into()),
        timers_add,
        ..Change::default()
    }
}

/// What the seed wrote, for the measurements.
struct Seeded {
    finished_ids: Vec<String>,
    unfinished_ids: Vec<String>,
}

fn seed(
    store: &(impl DefinitionTable + GroupCommit + SagaTable),
    args: &Args,
    defs: &[SagaDefinition],
) -> Result<(Seeded, Value)> {
    let mut stored = Vec::new();
    for def in defs {
        store.put_definition(def)?;
        stored.push(
            store
                .latest_definition(&def.name)?
                .context("definition stored")?,
        );
    }
    let now = now_ms();
    let started = Instant::now();
    let mut seeded = Seeded {
        finished_ids: Vec::with_capacity(args.finished),
        unfinished_ids: Vec::with_capacity(args.unfinished),
    };
    // Finished sagas were created over the last 5 days (oldest first, as
    // the engine would have written them), the running ones in the last minute.
    let span: Millis = 5 * 86_400_000;
    for n in 0..args.finished {
        let at = now - span + span * n as Millis / args.finished.max(1) as Millis;
        let ending = match n % 20 {
            0 => Ending::Failed,
            1..=3 => Ending::Compensated,
            _ => Ending::Completed,
        };
        let saga = finished_saga(&stored[n % stored.len()], n, at, ending);
        seeded.finished_ids.push(saga.id.clone());
        store.commit(Change {
            idempotency_key: saga.idempotency_key.clone(),
            saga: Some(saga.into()),
            ..Change::default()
        })?;
        if n > 0 && n % 20_000 == 0 {
            eprintln!("scale: seeded {n} finished sagas");
        }
    }
    // Timeouts far enough out not to fire while the engine is measured.
    let due = now + 3_600_000;
    for n in 0..args.unfinished {
        let at = now - 60_000 + 60_000 * n as Millis / args.unfinished.max(1) as Millis;
        let change = running_saga(&stored[n % stored.len()], args.finished + n, at, due);
        if let Some(s) = &change.saga {
            seeded.unfinished_ids.push(s.id().to_owned());
        }
        store.commit(change)?;
    }
    futures::executor::block_on(store.flush())?;
    let seconds = started.elapsed().as_secs_f64();
    let total = args.finished + args.unfinished;
    eprintln!("scale: seeded {total} sagas in {seconds:.1} s");
    Ok((
        seeded,
        json!({
            "finished": args.finished,
            "unfinished": args.unfinished,
            "stored_sagas": store.sagas_len(),
            "seconds": seconds,
            "sagas_per_s": total as f64 / seconds.max(1e-9),
        }),
    ))
}

/// The filtered pages measured: (label, state, name).
const LIST_FILTERS: [(&str, SagaState, &str); 2] = [
    (
        "compensated_collect_payment",
        SagaState::Compensated,
        "collect_payment",
    ),
    (
        "running_create_booking",
        SagaState::Running,
        "create_booking",
    ),
];

/// The store's filter of a measured page.
fn filter(state: SagaState, name: &str) -> SagaFilter {
    SagaFilter {
        state: Some(state.name().into()),
        name: Some(name.into()),
        before: None,
        limit: 50,
    }
}

/// The API's request of a measured page.
fn list_request(state: SagaState, name: &str) -> ListRequest {
    ListRequest {
        state: Some(state),
        name: Some(name.into()),
        limit: 50,
        ..ListRequest::default()
    }
}

/// A random seeded id: finished and unfinished ones in their proportion.
fn pick<'a>(seeded: &'a Seeded, picks: &mut Picks) -> &'a str {
    let n = seeded.finished_ids.len() + seeded.unfinished_ids.len();
    let i = picks.below(n);
    match seeded.finished_ids.get(i) {
        Some(id) => id,
        None => &seeded.unfinished_ids[i - seeded.finished_ids.len()],
    }
}

fn measure_store(
    store: &(impl SagaTable + DiskUsage),
    seeded: &Seeded,
    args: &Args,
) -> Result<Value> {
    let mut picks = Picks(0x9e37_79b9_7f4a_7c15);
    let mut status = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let id = pick(seeded, &mut picks);
        let t = Instant::now();
        let found = store.saga(id)?;
        status.push(elapsed_ms(t));
        if found.is_none() {
            bail!("seeded saga {id} not found in the store");
        }
    }
    let mut lists = serde_json::Map::new();
    for (label, state, name) in LIST_FILTERS {
        let f = filter(state, name);
        let mut samples = Vec::with_capacity(args.calls);
        let mut rows = 0;
        for _ in 0..args.calls {
            let t = Instant::now();
            rows = store.list_sagas(&f)?.len();
            samples.push(elapsed_ms(t));
        }
        let mut l = latency(samples);
        l["rows"] = json!(rows);
        lists.insert(label.into(), l);
    }
    let t = Instant::now();
    let unfinished = store.unfinished_sagas()?.len();
    let unfinished_ms = elapsed_ms(t);
    Ok(json!({
        "status": latency(status),
        "list": lists,
        "unfinished_sagas": { "count": unfinished, "ms": unfinished_ms },
        "size_on_disk_bytes": store.size_on_disk()?,
    }))
}

/// A `jetsaga server` process, its log lines read by a thread.
struct EngineProcess {
    child: Child,
    lines: mpsc::Receiver<(Instant, Value)>,
    /// Lines read so far, with when they came.
    seen: Vec<(Instant, Value)>,
    spawned: Instant,
}

impl EngineProcess {
    fn start(bin: &Path, nats_url: &str, data_dir: &Path, extra: &[&str]) -> Result<Self> {
        let spawned = Instant::now();
        let mut child = Command::new(bin)
            .args([
                "--nats-url",
                nats_url,
                "--log-format",
                "json",
                "--log",
                "info",
                "server",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().context("engine stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                // The receiver may be gone; the thread still drains the pipe.
                let _ = tx.send((Instant::now(), value));
            }
        });
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
            spawned,
        })
    }

    /// Waits for the log line whose message is `message`; returns it and
    /// how long after the spawn it came.
    fn wait_for(&mut self, message: &str) -> Result<(Value, f64)> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut next = 0;
        loop {
            if let Some((at, line)) = self.seen[next..]
                .iter()
                .find(|(_, line)| line["message"] == message)
            {
                let ms = at.duration_since(self.spawned).as_secs_f64() * 1000.0;
                return Ok((line.clone(), ms));
            }
            next = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    if line["level"] == "ERROR" {
                        eprintln!("scale: engine: {line}");
                    }
                    self.seen.push((at, line));
                }
                Err(_) => {
                    let status = self.child.try_wait()?;
                    bail!("no `{message}` from the engine (exit status {status:?})");
                }
            }
        }
    }

    /// SIGTERM (through `kill`), then up to 30 s for the drain.
    fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the engine did not stop within 30 s of SIGTERM")
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn measure_engine(
    args: &Args,
    bin: &Path,
    data_dir: &Path,
    seeded: &Seeded,
) -> Result<Value> {
    let mut engine = EngineProcess::start(bin, &args.nats_url, data_dir, &[])?;
    let (resumed, resume_ms) = engine.wait_for("partition resumed")?;
    let (_, ready_ms) = engine.wait_for("engine ready")?;
    let resumed_count = resumed["unfinished"].as_u64().unwrap_or(0);
    eprintln!("scale: engine resumed {resumed_count} sagas {resume_ms:.0} ms after spawn");
    let client = Client::connect(&args.nats_url, PREFIX).await?;

    let mut picks = Picks(0x2545_f491_4f6c_dd1d);
    // One untimed call: the connection and the engine's first request.
    client.get(pick(seeded, &mut picks)).await?;
    let mut status = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let id = pick(seeded, &mut picks);
        let t = Instant::now();
        let detail = client.get(id).await?;
        status.push(elapsed_ms(t));
        if detail.saga.id != id {
            bail!("saga get {id} answered {}", detail.saga.id);
        }
    }
    let mut lists = serde_json::Map::new();
    for (label, state, name) in LIST_FILTERS {
        let f = list_request(state, name);
        let mut samples = Vec::with_capacity(args.calls);
        let mut rows = 0;
        for _ in 0..args.calls {
            let t = Instant::now();
            let page = client.list(&f).await?;
            samples.push(elapsed_ms(t));
            rows = page.len();
            if page.iter().any(|s| s.state != state || s.name != name) {
                bail!("saga list {label} returned a saga outside the filter");
            }
        }
        let mut l = latency(samples);
        l["rows"] = json!(rows);
        lists.insert(label.into(), l);
    }

    // The CLI: a process per call (start-up and connection included).
    let cli = |cli_args: Vec<String>| -> Result<f64> {
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["--nats-url", &args.nats_url])
            .args(&cli_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !out.status.success() {
            bail!(
                "jetsaga {}: {}",
                cli_args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(elapsed_ms(t))
    };
    let (mut cli_status, mut cli_list) = (Vec::new(), Vec::new());
    let (state, name) = (LIST_FILTERS[0].1, LIST_FILTERS[0].2);
    for _ in 0..args.cli_calls {
        let id = pick(seeded, &mut picks).to_string();
        cli_status.push(cli(vec!["saga".into(), "status".into(), id])?);
        cli_list.push(cli([
            "saga",
            "list",
            "--state",
            state.name(),
            "--saga",
            name,
            "--limit",
            "50",
        ]
        .map(String::from)
        .to_vec())?);
    }
    let stats = measure_stats(&client, args).await?;
    engine.stop()?;
    Ok(json!({
        "stats": stats,
        "resume_ms": resume_ms,
        "ready_ms": ready_ms,
        "resumed_unfinished": resumed_count,
        "status": latency(status),
        "list": lists,
        "cli": {
            "note": "one `jetsaga` process per call: start-up, NATS connection and the request",
            "status": latency(cli_status),
            "list_compensated_collect_payment": latency(cli_list),
        },
    }))
}

/// Timed `saga.stats` calls: over every stored saga, over one definition,
/// over the last hour (seeded sagas were created over the last days, so
/// the window holds few of them; `since` bounds the scan).
async fn measure_stats(client: &Client, args: &Args) -> Result<Value> {
    let seeded = (args.finished + args.unfinished) as u64;
    let cases = [
        ("all", StatsRequest::default()),
        (
            "one_definition",
            StatsRequest {
                saga: Some("collect_payment".into()),
                since: None,
            },
        ),
        (
            "last_hour",
            StatsRequest {
                saga: None,
                since: Some(3_600_000),
            },
        ),
    ];
    let mut out = serde_json::Map::new();
    for (label, req) in cases {
        let mut samples = Vec::new();
        let mut total = 0;
        for _ in 0..STATS_CALLS {
            let t = Instant::now();
            let stats = client.stats(&req).await?;
            samples.push(elapsed_ms(t));
            total = stats.overall.total;
        }
        if label == "all" && total != seeded {
            bail!("saga stats counted {total} sagas, {seeded} were seeded");
        }
        if total > seeded {
            bail!("saga stats {label} counted {total} sagas, over the {seeded} seeded");
        }
        let mut l = latency(samples);
        l["sagas"] = json!(total);
        eprintln!("scale: saga stats {label} over {total} sagas: {l}");
        out.insert(label.into(), l);
    }
    Ok(Value::Object(out))
}

/// Timed calls per `saga.stats` measurement (each a scan of the store).
const STATS_CALLS: usize = 5;

/// Restarts the engine on the seeded store with a 1 s retention, so every
/// seeded finished saga is past it, and times how long pruning them all
/// takes (the `engine_pruned_sagas_total` counter, polled), and until the
/// `engine_stored_sagas` gauge shows only the unfinished ones left.
async fn prune_backlog(args: &Args, bin: &Path, data_dir: &Path) -> Result<Value> {
    let mut engine = EngineProcess::start(bin, &args.nats_url, data_dir, &["--retention", "1s"])?;
    let (http, _) = engine.wait_for("http listening")?;
    let addr = http["addr"].as_str().context("http address")?.to_string();
    let (_, ready_ms) = engine.wait_for("engine ready")?;
    let start = Instant::now();
    let deadline = start + START_TIMEOUT;
    let mut pruned_ms = None;
    let (mut pruned, mut stored) = (0.0, f64::NAN);
    while Instant::now() < deadline {
        let text = metrics(&addr).await?;
        pruned = sample(&text, "engine_pruned_sagas_total").unwrap_or(0.0);
        stored = sample(&text, "engine_stored_sagas").unwrap_or(f64::NAN);
        if pruned_ms.is_none() && pruned >= args.finished as f64 {
            pruned_ms = Some(elapsed_ms(start));
        }
        if pruned_ms.is_some() && stored == args.unfinished as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(pruned_ms) = pruned_ms else {
        bail!(
            "pruning the backlog: {pruned} of {} pruned in time",
            args.finished
        );
    };
    eprintln!("scale: pruned {pruned} finished sagas in {pruned_ms:.0} ms");
    engine.stop()?;
    Ok(json!({
        "note": "from `engine ready` of an engine started with --retention 1s on the seeded store",
        "ready_ms": ready_ms,
        "pruned": pruned,
        "pruned_ms": pruned_ms,
        "sagas_per_s": pruned / (pruned_ms / 1000.0).max(1e-9),
        "stored_sagas_after": stored,
        "data_dir_bytes_after": jetsaga_store::dir_bytes(data_dir).ok(),
    }))
}

/// Compacts the pruned store with `jetsaga store compact` and starts the
/// engine on the result.
async fn compact(args: &Args, bin: &Path, data_dir: &Path) -> Result<Value> {
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["--output", "json", "store", "compact", "--data-dir"])
        .arg(data_dir)
        .stderr(Stdio::piped())
        .output()?;
    let compact_ms = elapsed_ms(t);
    if !out.status.success() {
        bail!(
            "jetsaga store compact: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout)?;
    if report["sagas"].as_u64() != Some(args.unfinished as u64) {
        bail!("the compacted store should hold the unfinished sagas only: {report}");
    }
    eprintln!("scale: compacted the store in {compact_ms:.0} ms: {report}");
    let mut engine = EngineProcess::start(bin, &args.nats_url, data_dir, &[])?;
    let (resumed, resume_ms) = engine.wait_for("partition resumed")?;
    let resumed_count = resumed["unfinished"].as_u64().unwrap_or(0);
    engine.stop()?;
    if resumed_count != args.unfinished as u64 {
        bail!("the engine resumed {resumed_count} sagas on the compacted store");
    }
    Ok(json!({
        "note": "`jetsaga store compact` on the pruned store, then the engine on it",
        "command_ms": compact_ms,
        "report": report,
        "resume_ms": resume_ms,
        "resumed_unfinished": resumed_count,
    }))
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of every series of `name` (any labels) in Prometheus text.
fn sum_series(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// `GET /metrics` of the engine's HTTP API.
async fn metrics(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await?;
    match body.split_once("\r\n\r\n") {
        Some((head, rest)) if head.starts_with("HTTP/1.1 200") => Ok(rest.to_string()),
        _ => bail!("GET /metrics: {}", body.lines().next().unwrap_or_default()),
    }
}

async fn workers(
    url: &str,
    prefix: &str,
    stop: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let ok = |_ctx: TaskContext, _in: Value| async { Ok::<_, StepError>(json!({ "ok": true })) };
    let mut handles = Vec::new();
    for (service, action, compensation) in [
        ("payments", "charge", Some("refund")),
        ("invoicing", "create_invoice", Some("void_invoice")),
        ("email", "send_receipt", None),
        ("analytics", "track", None),
    ] {
        let mut builder = Worker::builder(service)
            .prefix(prefix)
            .concurrency(64)
            .handler(action, ok);
        if let Some(c) = compensation {
            builder = builder.compensation(c, ok);
        }
        let worker = builder.build(async_nats::connect(url).await?).await?;
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            if let Err(e) = worker.run(stop).await {
                eprintln!("scale: worker stopped: {e}");
            }
        }));
    }
    Ok(handles)
}

async fn long_run(args: &Args, bin: &Path, data_dir: &Path) -> Result<Value> {
    let retention = args.retention.to_string();
    let mut engine = EngineProcess::start(
        bin,
        &args.nats_url,
        data_dir,
        &["--retention", &retention, "--prefix", LONG_RUN_PREFIX],
    )?;
    let (http, _) = engine.wait_for("http listening")?;
    let addr = http["addr"].as_str().context("http address")?.to_string();
    engine.wait_for("engine ready")?;
    let client = Client::connect(&args.nats_url, LONG_RUN_PREFIX).await?;
    let defs: Vec<SagaDefinition> = definitions()?
        .into_iter()
        .filter(|d| d.name == "collect_payment")
        // The seeded installation's streams capture its trigger subjects.
        .map(|mut d| {
            d.triggers.clear();
            d
        })
        .collect();
    client.apply(defs).await?;
    let stop = CancellationToken::new();
    let worker_tasks = workers(&args.nats_url, LONG_RUN_PREFIX, &stop).await?;

    let started = Arc::new(AtomicU64::new(0));
    let failed_starts = Arc::new(AtomicU64::new(0));
    let starter = {
        let (client, started, failed, stop) = (
            client.clone(),
            started.clone(),
            failed_starts.clone(),
            stop.clone(),
        );
        let every = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                n += 1;
                let (client, started, failed) = (client.clone(), started.clone(), failed.clone());
                tokio::spawn(async move {
                    match client
                        .start("collect_payment", input(n as usize), None)
                        .await
                    {
                        Ok(_) => started.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                });
            }
        })
    };

    let begin = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(args.sample_every);
    loop {
        tick.tick().await;
        let text = metrics(&addr).await?;
        let t = begin.elapsed().as_secs_f64();
        let row = json!({
            "t_s": (t * 10.0).round() / 10.0,
            "started": started.load(Ordering::Relaxed),
            "finished": sum_series(&text, "saga_executions_total", "saga_name=\"collect_payment\""),
            "pruned": sample(&text, "engine_pruned_sagas_total").unwrap_or(0.0),
            "stored_sagas": sample(&text, "engine_stored_sagas").unwrap_or(0.0),
            "store_bytes": sample(&text, "engine_store_size_bytes").unwrap_or(0.0),
            "data_dir_bytes": jetsaga_store::dir_bytes(data_dir).ok(),
        });
        eprintln!("scale: {row}");
        samples.push(row);
        if begin.elapsed() >= args.long_run {
            break;
        }
    }
    stop.cancel();
    let _ = starter.await;
    for w in worker_tasks {
        let _ = w.await;
    }
    engine.stop()?;
    let half = samples.len() / 2;
    let max_of = |rows: &[Value], key: &str| {
        rows.iter()
            .filter_map(|r| r[key].as_f64())
            .fold(0.0_f64, f64::max)
    };
    Ok(json!({
        "retention": retention,
        "rate_per_s": args.rate,
        "seconds": begin.elapsed().as_secs_f64(),
        "started": started.load(Ordering::Relaxed),
        "failed_starts": failed_starts.load(Ordering::Relaxed),
        "max_stored_sagas_first_half": max_of(&samples[..half], "stored_sagas"),
        "max_stored_sagas_second_half": max_of(&samples[half..], "stored_sagas"),
        "max_store_bytes_first_half": max_of(&samples[..half], "store_bytes"),
        "max_store_bytes_second_half": max_of(&samples[half..], "store_bytes"),
        "samples": samples,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let bin = match &args.jetsaga {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join(format!("jetsaga{}", std::env::consts::EXE_SUFFIX)),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it (`cargo build --bin jetsaga`) or pass --jetsaga",
            bin.display()
        );
    }
    let temp = tempfile::tempdir()?;
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let data_dir = work.join("scale-store");
    let defs = definitions()?;

    let (seeded, seed_report, store_report) = {
        let store = SledStore::open(&data_dir)?;
        let (seeded, seed_report) = seed(&store, &args, &defs)?;
        let store_report = measure_store(&store, &seeded, &args)?;
        (seeded, seed_report, store_report)
    };
    let data_dir_bytes = jetsaga_store::dir_bytes(&data_dir).ok();
    let engine_report = measure_engine(&args, &bin, &data_dir, &seeded).await?;
    let prune_report = prune_backlog(&args, &bin, &data_dir).await?;
    let compact_report = compact(&args, &bin, &data_dir).await?;
    let long = if args.long_run.is_zero() {
        Value::Null
    } else {
        long_run(&args, &bin, &work.join("long-run-store")).await?
    };
    let report = json!({
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "seed": seed_report,
        "store": store_report,
        "data_dir_bytes": data_dir_bytes,
        "engine": engine_report,
        "prune_backlog": prune_report,
        "compact": compact_report,
        "long_run": long,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
