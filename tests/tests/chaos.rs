//! Chaos: exactly-once effects while the engine, the workers and nats-server
//! crash under a few hundred sagas.
//!
//! The test runs the real `jetsaga server` binary, the four example worker
//! binaries (five processes: two `deploy-workers`; `invoicing` and `email`
//! are served by both `booking-workers` and `payment-workers`) with one
//! shared ledger directory, and a nats-server with file storage. It starts
//! sagas of the four example definitions in batches, each with faults chosen
//! by a seeded RNG, and between the batches, at moments chosen by the same
//! RNG, it SIGKILLs and restarts the engine, worker processes, and
//! nats-server (same port, same store).
//!
//! The faults are chosen so that every saga's final state follows from its
//! input alone (retryable failures stop while the policy has attempts to
//! spare; fatal compensations only hit steps that surely succeeded), so the
//! end can be judged exactly:
//!
//! - every saga is terminal, in the state its faults call for;
//! - every step whose action the engine says happened (`succeeded`,
//!   `compensated`, `compensation_failed`, `not_compensable`) has exactly
//!   one action effect in the ledger; every other step has none;
//! - every `compensated` step has exactly one compensation effect; no other
//!   step has any;
//! - the ledger holds effects of no other saga (a retried start never made a
//!   second saga), and the engine knows exactly the sagas started.
//!
//! Seed: fixed by default and printed; `JETSAGA_CHAOS_SEED=<u64>` replays a
//! run; `JETSAGA_SOAK=1` picks a random seed and runs 2000 sagas with more
//! crashes.
//!
//! Set `JETSAGA_CHAOS_LOGS=<dir>` to keep every process's log and the ledger.
//!
//! ```text
//! cargo build --workspace --bins
//! JETSAGA_NATS_SERVER=.venv/bin/nats-server cargo test -p jetsaga-tests --test chaos -- --nocapture
//! ```

mod common;

use common::{Engine, READY};
use futures::StreamExt;
use jetsaga_cli::client::{Client, ClientError};
use jetsaga_core::saga::definition;
use jetsaga_examples::ledger;
use jetsaga_protocol::api::{AttemptOutcome, ListRequest, SagaDefinition, SagaDetail};
use jetsaga_tests::{ChildProcess, NatsServer, bin_path};
use jetsaga_worker::protocol::TaskKind;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Seed of the default (CI) run.
const DEFAULT_SEED: u64 = 0x5a6a_c4a0_5eed;
/// The example definitions the sagas are drawn from.
const DEFINITIONS: [&str; 4] = [
    "deploy_environment",
    "create_booking",
    "collect_payment",
    "data_ingest_pipeline",
];
/// The worker processes: binary per slot. Two `deploy-workers` share every
/// deploy queue; `booking-workers` and `payment-workers` share `invoicing`
/// and `email`.
const WORKERS: [&str; 5] = [
    "deploy-workers",
    "deploy-workers",
    "booking-workers",
    "payment-workers",
    "ingest-workers",
];
/// `ack_wait` of the service consumers: how soon a killed worker's task is
/// delivered again. Every worker process passes the same value (the first
/// one creates the consumer).
const WORKER_ACK_WAIT: &str = "2s";
/// How long the sagas may take to settle once the chaos is over.
const SETTLE: Duration = Duration::from_secs(180);
/// How long one saga start may keep being retried.
const START_DEADLINE: Duration = Duration::from_secs(90);
/// Attempts of a policy that injected retryable failures leave unused.
///
/// A crash may legitimately cost an attempt: results the killed engine had
/// pulled but not yet acknowledged come back only after its consumers'
/// `ack_wait` (30 s, not settable from the command line), later than the
/// 10-15 s timeouts of some steps, which then time out and go to the next
/// attempt (replayed by the worker). With one attempt spare, one such
/// crash at the wrong moment would exhaust the policy and leave the step
/// `compensation_failed` ("action outcome unknown"), which is the contract
/// but not what this test is about; two spare attempts make that need two
/// crashes landing on the same step within milliseconds.
const SPARE_ATTEMPTS: u32 = 2;

/// How big a run is.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Sagas started.
    sagas: usize,
    /// SIGKILLs of the engine.
    engine_kills: usize,
    /// SIGKILLs of a worker process (more happen during NATS restarts).
    worker_kills: usize,
    /// SIGKILLs of nats-server.
    nats_restarts: usize,
    /// Smallest and largest start batch.
    batch: (usize, usize),
}

impl Scale {
    fn default_run() -> Scale {
        Scale {
            sagas: 240,
            engine_kills: 4,
            worker_kills: 5,
            nats_restarts: 2,
            batch: (6, 16),
        }
    }

    fn soak() -> Scale {
        Scale {
            sagas: 2000,
            engine_kills: 12,
            worker_kills: 16,
            nats_restarts: 5,
            batch: (30, 70),
        }
    }
}

// ---------------------------------------------------------------- the plan

/// One saga to start: its definition, input (with faults) and what must
/// become of it.
#[derive(Debug, Clone)]
struct SagaPlan {
    /// Position in the plan.
    index: usize,
    /// Definition name.
    saga: String,
    /// The definition (for step relations and expectations).
    def: Arc<SagaDefinition>,
    /// Idempotency key of the start.
    key: String,
    /// Input, with the `faults` object.
    input: Value,
    /// Step whose action fails fatally, if any.
    fatal: Option<usize>,
    /// Step whose compensation fails fatally, if any (an ancestor of `fatal`).
    comp_fatal: Option<usize>,
}

impl SagaPlan {
    /// The saga states this plan may end in (one, unless the definition
    /// allows a race between independent branches to decide).
    fn expected_saga_states(&self) -> Vec<&'static str> {
        let Some(fatal) = self.fatal else {
            return vec!["completed"];
        };
        if self.comp_fatal.is_some() {
            return vec!["partially_compensated"];
        }
        let ancestors = ancestors(&self.def, fatal);
        let descendants = descendants(&self.def, fatal);
        let others = (0..self.def.steps.len())
            .any(|s| s != fatal && !ancestors.contains(&s) && !descendants.contains(&s));
        match (ancestors.is_empty(), others) {
            (false, _) => vec!["compensated"],
            (true, false) => vec!["failed"],
            // A branch independent of the failed step may have done
            // something to undo by the time the failure arrives.
            (true, true) => vec!["failed", "compensated"],
        }
    }

    /// The states each step may end in.
    fn expected_step_states(&self) -> Vec<Vec<&'static str>> {
        let n = self.def.steps.len();
        let Some(fatal) = self.fatal else {
            return vec![vec!["succeeded"]; n];
        };
        let ancestors = ancestors(&self.def, fatal);
        let descendants = descendants(&self.def, fatal);
        let mut out: Vec<Option<Vec<&'static str>>> = vec![None; n];
        for (s, slot) in out.iter_mut().enumerate() {
            if s == fatal {
                *slot = Some(vec!["failed"]);
            } else if descendants.contains(&s) {
                *slot = Some(vec!["skipped"]);
            } else if !ancestors.contains(&s) {
                // Runs alongside the failed step: it finished before the
                // failure (then it is undone), or it was cut short.
                *slot = Some(vec!["compensated", "not_compensable", "failed", "skipped"]);
            }
        }
        // Ancestors surely succeeded; each is undone once every step that
        // depends on it is rolled back, else it stays `succeeded` (stuck).
        while out.iter().any(Option::is_none) {
            for s in ancestors.iter().copied() {
                if out[s].is_some() {
                    continue;
                }
                let dependents: Vec<usize> = (0..n)
                    .filter(|d| self.def.steps[*d].depends_on.contains(&s))
                    .collect();
                if dependents.iter().any(|d| out[*d].is_none()) {
                    continue;
                }
                let blocked = dependents.iter().any(|d| {
                    out[*d]
                        .as_ref()
                        .is_some_and(|st| st.iter().any(|x| !is_rolled_back(x)))
                });
                out[s] = Some(if Some(s) == self.comp_fatal {
                    vec!["compensation_failed"]
                } else if blocked {
                    vec!["succeeded"]
                } else if self.def.steps[s].compensation.is_some() {
                    vec!["compensated"]
                } else {
                    vec!["not_compensable"]
                });
            }
        }
        out.into_iter().map(Option::unwrap).collect()
    }
}

/// Whether a step in state `name` has no effect left in place.
fn is_rolled_back(name: &str) -> bool {
    matches!(
        name,
        "compensated" | "not_compensable" | "failed" | "skipped"
    )
}

/// Steps `step` depends on, directly or not.
fn ancestors(def: &SagaDefinition, step: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut todo = def.steps[step].depends_on.clone();
    while let Some(s) = todo.pop() {
        if out.insert(s) {
            todo.extend(def.steps[s].depends_on.iter().copied());
        }
    }
    out
}

/// Steps that depend on `step`, directly or not.
fn descendants(def: &SagaDefinition, step: usize) -> BTreeSet<usize> {
    (0..def.steps.len())
        .filter(|s| ancestors(def, *s).contains(&step))
        .collect()
}

/// Draws the sagas of a run. Faults per step:
///
/// - retryable action failures on ~30 % of steps, `times` 1..=2 and at most
///   `max_attempts - SPARE_ATTEMPTS`, so the step then succeeds;
/// - a fatal action failure on one random step of ~35 % of sagas;
/// - retryable compensation failures on ~25 % of compensable steps (again
///   fewer than the policy's attempts);
/// - in ~15 % of the failing sagas, a fatal compensation on one step that
///   surely succeeded (an ancestor of the failed step): the saga must end
///   `partially_compensated`;
/// - small delays on some steps, so that crashes hit handlers mid-way.
fn plan(
    rng: &mut StdRng,
    seed: u64,
    defs: &BTreeMap<String, Arc<SagaDefinition>>,
    n: usize,
) -> Vec<SagaPlan> {
    (0..n)
        .map(|index| {
            let saga = DEFINITIONS.choose(rng).expect("definitions").to_string();
            let def = defs[&saga].clone();
            let steps = def.steps.len();
            let mut faults: Vec<Map<String, Value>> = vec![Map::new(); steps];
            for (s, f) in faults.iter_mut().enumerate() {
                // Injected retryable failures leave two attempts spare; see
                // `SPARE_ATTEMPTS`.
                let most = def.steps[s]
                    .retry
                    .max_attempts
                    .saturating_sub(SPARE_ATTEMPTS)
                    .min(2);
                if most >= 1 && rng.random_bool(0.3) {
                    f.insert("fail".into(), json!("retryable"));
                    f.insert("times".into(), json!(rng.random_range(1..=most)));
                }
                if rng.random_bool(0.45) {
                    f.insert("delay_ms".into(), json!(rng.random_range(50..1200)));
                }
                if def.steps[s].compensation.is_some() && most >= 1 && rng.random_bool(0.25) {
                    f.insert("compensation".into(), json!("retryable"));
                    f.insert(
                        "compensation_times".into(),
                        json!(rng.random_range(1..=most)),
                    );
                    if rng.random_bool(0.4) {
                        f.insert(
                            "compensation_delay_ms".into(),
                            json!(rng.random_range(50..800)),
                        );
                    }
                }
            }
            let fatal = rng.random_bool(0.35).then(|| rng.random_range(0..steps));
            if let Some(f) = fatal {
                faults[f].insert("fail".into(), json!("fatal"));
                faults[f].remove("times");
            }
            let comp_fatal = fatal.and_then(|f| {
                let candidates: Vec<usize> = ancestors(&def, f)
                    .into_iter()
                    .filter(|a| def.steps[*a].compensation.is_some())
                    .collect();
                if candidates.is_empty() || !rng.random_bool(0.15) {
                    return None;
                }
                let a = *candidates.choose(rng).expect("not empty");
                faults[a].insert("compensation".into(), json!("fatal"));
                faults[a].remove("compensation_times");
                Some(a)
            });
            let faults: Map<String, Value> = def
                .steps
                .iter()
                .zip(faults)
                .filter(|(_, f)| !f.is_empty())
                .map(|(d, f)| (d.id.clone(), Value::Object(f)))
                .collect();
            let mut input = match saga.as_str() {
                "deploy_environment" => json!({"environment": format!("chaos-{index}")}),
                "create_booking" => json!({"booking_id": format!("bk_chaos_{index}")}),
                "collect_payment" => json!({"order_id": format!("ord_chaos_{index}")}),
                _ => json!({"dataset": format!("chaos-{index}")}),
            };
            input["faults"] = Value::Object(faults);
            SagaPlan {
                index,
                saga,
                def,
                key: format!("chaos-{seed:x}-{index}"),
                input,
                fatal,
                comp_fatal,
            }
        })
        .collect()
}

/// What the run does, in order: start a batch of sagas (in the background,
/// so a batch may meet a dead engine and retry), pause, or crash something.
#[derive(Debug, Clone)]
enum Action {
    /// Start plan entries `range` (in a background task).
    Start(std::ops::Range<usize>),
    /// Wait this long.
    Pause(Duration),
    /// SIGKILL the engine, wait, restart it.
    KillEngine { down: Duration },
    /// SIGKILL worker slot `slot`, wait, restart it.
    KillWorker { slot: usize, down: Duration },
    /// SIGKILL nats-server, wait, restart it on the same port and store.
    /// With `worker`, that worker slot is SIGKILLed too while NATS is down
    /// (its handlers that applied their effect but could not record the
    /// outcome yet run again after the restart: the ledger suppresses them),
    /// and restarted once NATS is back.
    RestartNats {
        down: Duration,
        worker: Option<usize>,
    },
}

/// Interleaves start batches and crashes, with pauses between.
fn schedule(rng: &mut StdRng, scale: Scale) -> Vec<Action> {
    let mut batches = Vec::new();
    let mut at = 0;
    while at < scale.sagas {
        let size = rng.random_range(scale.batch.0..=scale.batch.1);
        let end = (at + size).min(scale.sagas);
        batches.push(at..end);
        at = end;
    }
    let mut crashes = Vec::new();
    for _ in 0..scale.engine_kills {
        crashes.push(Action::KillEngine {
            down: Duration::from_millis(rng.random_range(0..2000)),
        });
    }
    for _ in 0..scale.worker_kills {
        crashes.push(Action::KillWorker {
            slot: rng.random_range(0..WORKERS.len()),
            down: Duration::from_millis(rng.random_range(0..1500)),
        });
    }
    for i in 0..scale.nats_restarts {
        // The first restart is NATS alone, the second also loses a worker
        // while NATS is down; later ones toss a coin.
        let with_worker = match i {
            0 => false,
            1 => true,
            _ => rng.random_bool(0.5),
        };
        crashes.push(Action::RestartNats {
            down: Duration::from_millis(rng.random_range(500..2000)),
            worker: with_worker.then(|| rng.random_range(0..WORKERS.len())),
        });
    }
    crashes.shuffle(rng);
    // Crashes go after random batches (never before the first one),
    // several possibly in a row.
    let mut slots: BTreeMap<usize, Vec<Action>> = BTreeMap::new();
    for crash in crashes {
        let slot = rng.random_range(0..batches.len().max(1));
        slots.entry(slot).or_default().push(crash);
    }
    let mut out = Vec::new();
    for (i, batch) in batches.into_iter().enumerate() {
        // A crash soon after a batch began meets its starts half done.
        out.push(Action::Start(batch));
        for crash in slots.remove(&i).unwrap_or_default() {
            out.push(Action::Pause(Duration::from_millis(
                rng.random_range(0..800),
            )));
            out.push(crash);
        }
        out.push(Action::Pause(Duration::from_millis(
            rng.random_range(300..1500),
        )));
    }
    out
}

// ---------------------------------------------------------------- processes

/// The worker processes and their logs.
struct Workers {
    /// NATS the workers connect to.
    nats_url: String,
    /// The ledger directory all of them share.
    ledger_dir: PathBuf,
    /// The running process of each slot of [`WORKERS`].
    slots: Vec<Option<ChildProcess>>,
    /// How many processes each slot has had (names them in the ledger).
    incarnations: Vec<usize>,
    /// Logs of processes that were killed.
    old_logs: String,
}

impl Workers {
    fn start(nats_url: &str, ledger_dir: &Path) -> Workers {
        let mut w = Workers {
            nats_url: nats_url.to_string(),
            ledger_dir: ledger_dir.to_path_buf(),
            slots: (0..WORKERS.len()).map(|_| None).collect(),
            incarnations: vec![0; WORKERS.len()],
            old_logs: String::new(),
        };
        for slot in 0..WORKERS.len() {
            w.spawn(slot);
        }
        w
    }

    fn spawn(&mut self, slot: usize) {
        self.incarnations[slot] += 1;
        let binary = WORKERS[slot];
        let name = format!("chaos-{binary}-{slot}.{}", self.incarnations[slot]);
        let ledger = self.ledger_dir.display().to_string();
        let args = [
            "--nats-url",
            &self.nats_url,
            "--ledger-dir",
            &ledger,
            "--ack-wait",
            WORKER_ACK_WAIT,
            "--name",
            &name,
        ];
        let p = ChildProcess::spawn(&name, &bin_path(binary), &args, &[("RUST_LOG", "info")]);
        p.wait_for_log("workers ready", READY);
        self.slots[slot] = Some(p);
    }

    fn kill(&mut self, slot: usize) {
        if let Some(mut p) = self.slots[slot].take() {
            p.kill();
            self.old_logs.push_str(&p.log());
        }
    }

    fn all_logs(&self) -> String {
        let mut all = self.old_logs.clone();
        for p in self.slots.iter().flatten() {
            all.push_str(&p.log());
        }
        all
    }
}

/// What the chaos did, for the report.
#[derive(Debug, Default)]
struct Counts {
    engine_kills: usize,
    worker_kills: usize,
    nats_restarts: usize,
}

// ---------------------------------------------------------------- starting

/// Shared start statistics.
#[derive(Debug, Default)]
struct StartStats {
    /// Start calls that failed and were retried.
    retries: AtomicUsize,
    /// Retried starts that found their saga already created by an earlier
    /// call (its reply was lost).
    found_existing: AtomicUsize,
}

/// Starts one saga, retrying while the engine (or NATS) is away. The
/// idempotency key makes every retry name the same saga.
async fn start_one(client: &Client, p: &SagaPlan, stats: &StartStats) -> String {
    let deadline = Instant::now() + START_DEADLINE;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match client.start(&p.saga, p.input.clone(), Some(&p.key)).await {
            Ok(reply) => {
                if !reply.created {
                    assert!(
                        tries > 1,
                        "saga #{} ({}) was reported as existing on its first start",
                        p.index,
                        p.key
                    );
                    stats.found_existing.fetch_add(1, Ordering::Relaxed);
                }
                return reply.saga_id;
            }
            Err(e) if is_transient(&e) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                assert!(
                    Instant::now() < deadline,
                    "saga #{} could not be started within {START_DEADLINE:?}: {e}",
                    p.index
                );
                tokio::time::sleep(Duration::from_millis(100 + 50 * u64::from(tries.min(10))))
                    .await;
            }
            Err(e) => panic!(
                "start of saga #{} ({}) failed for good: {e}",
                p.index, p.key
            ),
        }
    }
}

/// Errors a start is retried on: nobody answers, or not in time.
fn is_transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::NoEngine { .. } | ClientError::Timeout { .. } | ClientError::Nats(_)
    ) || e.code() == "E-UNAVAILABLE"
}

// ---------------------------------------------------------------- the end

/// Polls until every saga is terminal; on timeout prints the others with
/// their steps and panics.
async fn settle(
    client: &Client,
    ids: &[String],
    timeout: Duration,
) -> BTreeMap<String, SagaDetail> {
    let deadline = Instant::now() + timeout;
    let mut done: BTreeMap<String, SagaDetail> = BTreeMap::new();
    loop {
        let todo: Vec<String> = ids
            .iter()
            .filter(|id| !done.contains_key(*id))
            .cloned()
            .collect();
        let fetched: Vec<(String, Option<SagaDetail>)> = futures::stream::iter(todo)
            .map(|id| async move {
                let d = client.get(&id).await.ok();
                (id, d)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut open = Vec::new();
        for (id, d) in fetched {
            match d {
                Some(d) if d.saga.status.is_terminal() => {
                    done.insert(id, d);
                }
                other => open.push((id, other)),
            }
        }
        if open.is_empty() {
            return done;
        }
        if Instant::now() >= deadline {
            eprintln!("{} sagas are not terminal after {timeout:?}:", open.len());
            for (id, d) in &open {
                match d {
                    Some(d) => eprintln!(
                        "  {id} {} {}: {}",
                        d.saga.name,
                        d.saga.status.name(),
                        describe_steps(d)
                    ),
                    None => eprintln!("  {id}: not readable"),
                }
            }
            panic!("{} sagas did not finish within {timeout:?}", open.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `step=state[attempts]` for every step.
fn describe_steps(d: &SagaDetail) -> String {
    d.definition
        .steps
        .iter()
        .zip(&d.saga.steps)
        .map(|(def, st)| {
            let attempts: Vec<String> = st
                .attempts
                .iter()
                .map(|a| {
                    let k = match a.kind {
                        TaskKind::Action => "a",
                        TaskKind::Compensation => "c",
                    };
                    let o = match &a.outcome {
                        None => "…",
                        Some(AttemptOutcome::Ok) => "ok",
                        Some(AttemptOutcome::Retryable { .. }) => "retry",
                        Some(AttemptOutcome::Fatal { .. }) => "fatal",
                        Some(AttemptOutcome::TimedOut) => "timeout",
                        Some(AttemptOutcome::Abandoned) => "abandoned",
                    };
                    format!("{k}{}:{o}", a.number)
                })
                .collect();
            format!("{}={}[{}]", def.id, st.status.name(), attempts.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every saga the engine knows, paging through the listing.
async fn all_saga_ids(client: &Client) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut before = None;
    loop {
        let page = client
            .list(&ListRequest {
                state: None,
                name: None,
                before: before.clone(),
                limit: 500,
                ..ListRequest::default()
            })
            .await
            .expect("list sagas");
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        ids.extend(page.into_iter().map(|s| s.id));
    }
    ids
}

/// Counts the lines of `log` containing `needle`.
fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Runs `f` (blocking harness calls) without stalling the runtime's other
/// tasks.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------- the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_happen_exactly_once_while_engine_workers_and_nats_crash() {
    jetsaga_tests::init_tracing();
    let soak = std::env::var("JETSAGA_SOAK").is_ok_and(|v| v == "1");
    let seed = match std::env::var("JETSAGA_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("JETSAGA_CHAOS_SEED={s:?} is not a u64: {e}")),
        Err(_) if soak => rand::random::<u64>(),
        Err(_) => DEFAULT_SEED,
    };
    let scale = if soak {
        Scale::soak()
    } else {
        Scale::default_run()
    };
    println!(
        "chaos: seed {seed} (replay with JETSAGA_CHAOS_SEED={seed}{}), {scale:?}",
        if soak { " JETSAGA_SOAK=1" } else { "" }
    );
    let began = Instant::now();

    // The world: nats-server (file storage), engine, definitions, workers.
    let mut nats = NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger_dir = dir.path().join("ledger");
    let mut engine = Engine::start(&nats.url(), &dir.path().join("engine"), &[]);
    let client = Client::new(nats.client().await, "jetsaga").with_timeout(Duration::from_secs(5));
    let mut defs: BTreeMap<String, Arc<SagaDefinition>> = BTreeMap::new();
    for name in DEFINITIONS {
        let path = jetsaga_tests::workspace_root()
            .join("examples/definitions")
            .join(format!("{name}.yaml"));
        let parsed = definition::parse_file(&path).expect("example definition parses");
        let applied = client.apply(parsed.sagas).await.expect("apply definitions");
        assert_eq!(applied.len(), 1);
        // The stored version (with its version number) is what sagas run.
        let stored = client
            .definitions()
            .await
            .expect("list definitions")
            .into_iter()
            .find(|d| d.name == name)
            .expect("applied definition is listed");
        defs.insert(name.to_string(), Arc::new(stored));
    }
    let mut workers = blocking(|| Workers::start(&nats.url(), &ledger_dir));

    let mut rng = StdRng::seed_from_u64(seed);
    let plans = Arc::new(plan(&mut rng, seed, &defs, scale.sagas));
    let actions = schedule(&mut rng, scale);
    let injected_fatal = plans.iter().filter(|p| p.fatal.is_some()).count();
    let injected_comp_fatal = plans.iter().filter(|p| p.comp_fatal.is_some()).count();
    println!(
        "chaos: {} sagas ({injected_fatal} with a fatal step, {injected_comp_fatal} with a fatal compensation), {} actions",
        plans.len(),
        actions.len()
    );

    // Run the schedule. Starts run in the background; crashes here.
    let stats = Arc::new(StartStats::default());
    let mut starters: JoinSet<Vec<(usize, String)>> = JoinSet::new();
    let mut counts = Counts::default();
    let mut engine_logs = String::new();
    for action in actions {
        match action {
            Action::Start(range) => {
                let (client, plans, stats) = (client.clone(), plans.clone(), stats.clone());
                // Starts within a batch are spread out a little.
                let gaps: Vec<Duration> = range
                    .clone()
                    .map(|_| Duration::from_millis(rng.random_range(0..120)))
                    .collect();
                starters.spawn(async move {
                    let mut out = Vec::new();
                    for (i, gap) in range.zip(gaps) {
                        out.push((i, start_one(&client, &plans[i], &stats).await));
                        tokio::time::sleep(gap).await;
                    }
                    out
                });
            }
            Action::Pause(d) => tokio::time::sleep(d).await,
            Action::KillEngine { down } => {
                println!(
                    "chaos: +{:>5.1}s kill -9 engine ({down:?} down)",
                    began.elapsed().as_secs_f64()
                );
                blocking(|| engine.kill());
                engine_logs.push_str(&engine.process.log());
                tokio::time::sleep(down).await;
                blocking(|| engine.restart());
                counts.engine_kills += 1;
            }
            Action::KillWorker { slot, down } => {
                println!(
                    "chaos: +{:>5.1}s kill -9 {} #{slot} ({down:?} down)",
                    began.elapsed().as_secs_f64(),
                    WORKERS[slot]
                );
                blocking(|| workers.kill(slot));
                tokio::time::sleep(down).await;
                blocking(|| workers.spawn(slot));
                counts.worker_kills += 1;
            }
            Action::RestartNats { down, worker } => {
                let also = worker
                    .map(|slot| format!(", kill -9 {} #{slot} meanwhile", WORKERS[slot]))
                    .unwrap_or_default();
                println!(
                    "chaos: +{:>5.1}s kill -9 nats-server ({down:?} down{also})",
                    began.elapsed().as_secs_f64()
                );
                blocking(|| nats.kill());
                tokio::time::sleep(down / 2).await;
                if let Some(slot) = worker {
                    blocking(|| workers.kill(slot));
                    counts.worker_kills += 1;
                }
                tokio::time::sleep(down / 2).await;
                blocking(|| nats.restart());
                counts.nats_restarts += 1;
                if let Some(slot) = worker {
                    blocking(|| workers.spawn(slot));
                }
            }
        }
    }
    let mut ids: Vec<Option<String>> = vec![None; plans.len()];
    while let Some(batch) = starters.join_next().await {
        for (i, id) in batch.expect("starter task") {
            ids[i] = Some(id);
        }
    }
    let ids: Vec<String> = ids
        .into_iter()
        .map(|id| id.expect("every saga was started"))
        .collect();
    let chaos_done = began.elapsed();
    println!(
        "chaos: all {} sagas started and chaos over after {:.1}s; waiting for them to settle",
        ids.len(),
        chaos_done.as_secs_f64()
    );
    assert!(counts.engine_kills >= 3 && counts.worker_kills >= 3 && counts.nats_restarts >= 1);

    // Every saga terminal.
    let details = settle(&client, &ids, SETTLE).await;
    let settled = began.elapsed();
    engine_logs.push_str(&engine.process.log());
    let worker_logs = workers.all_logs();
    if let Some(keep) = std::env::var_os("JETSAGA_CHAOS_LOGS") {
        // Evidence for a person: every process's output and the ledger.
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).expect("create JETSAGA_CHAOS_LOGS dir");
        std::fs::write(keep.join("engine.log"), &engine_logs).expect("write engine log");
        std::fs::write(keep.join("workers.log"), &worker_logs).expect("write worker log");
        std::fs::write(keep.join("nats.log"), nats.log()).expect("write nats log");
        let ledger_copy = keep.join("ledger");
        std::fs::create_dir_all(&ledger_copy).expect("create ledger copy dir");
        for entry in std::fs::read_dir(&ledger_dir)
            .expect("ledger dir")
            .flatten()
        {
            std::fs::copy(entry.path(), ledger_copy.join(entry.file_name())).expect("copy ledger");
        }
        println!("chaos: logs and ledger kept in {}", keep.display());
    }

    // No saga was started twice.
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "two plans got the same saga");
    let known = all_saga_ids(&client).await;
    let ours: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(
        known, ours,
        "the engine knows other sagas than the ones started (a retried start made a second saga?)"
    );

    // Judge every saga against its plan and the ledger.
    let entries = ledger::read_dir(&ledger_dir);
    let effects = ledger::effect_counts(&entries);
    let duplicates = ledger::duplicate_counts(&entries);
    let mut failures: Vec<String> = Vec::new();
    let mut by_state: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut expected_effects = 0usize;
    let mut timed_out_attempts = 0usize;
    for (p, id) in plans.iter().zip(&ids) {
        let d = &details[id];
        let state = d.saga.status.name();
        *by_state.entry(state).or_default() += 1;
        let why = || {
            format!(
                "saga #{} {} {id} ({state}): {}; input {}",
                p.index,
                p.saga,
                describe_steps(d),
                p.input
            )
        };
        if d.saga.idempotency_key.as_deref() != Some(p.key.as_str()) || d.saga.name != p.saga {
            failures.push(format!("wrong saga behind key {}: {}", p.key, why()));
        }
        if !p.expected_saga_states().contains(&state) {
            failures.push(format!(
                "expected {:?}, got {state}: {}",
                p.expected_saga_states(),
                why()
            ));
        }
        for ((sd, st), allowed) in d
            .definition
            .steps
            .iter()
            .zip(&d.saga.steps)
            .zip(p.expected_step_states())
        {
            let name = st.status.name();
            timed_out_attempts += st
                .attempts
                .iter()
                .filter(|a| a.outcome == Some(AttemptOutcome::TimedOut))
                .count();
            if !allowed.contains(&name) {
                failures.push(format!(
                    "step {} expected {allowed:?}, got {name}: {}",
                    sd.id,
                    why()
                ));
            }
            let (action_want, comp_want) = match name {
                "succeeded" | "not_compensable" | "compensation_failed" => (1, 0),
                "compensated" => (1, 1),
                "pending" | "skipped" | "failed" => (0, 0),
                other => {
                    failures.push(format!(
                        "step {} in non-terminal state {other}: {}",
                        sd.id,
                        why()
                    ));
                    continue;
                }
            };
            expected_effects += action_want + comp_want;
            let count = |kind| {
                effects
                    .get(&(id.clone(), sd.id.clone(), kind))
                    .copied()
                    .unwrap_or(0)
            };
            let (action_got, comp_got) = (count(TaskKind::Action), count(TaskKind::Compensation));
            if action_got != action_want {
                failures.push(format!(
                    "step {} ({name}) has {action_got} action effects, expected {action_want}: {}",
                    sd.id,
                    why()
                ));
            }
            if comp_got != comp_want {
                failures.push(format!(
                    "step {} ({name}) has {comp_got} compensation effects, expected {comp_want}: {}",
                    sd.id,
                    why()
                ));
            }
        }
    }
    // Nothing in the ledger beyond what the steps account for.
    let total_effects: usize = effects.values().sum();
    if total_effects != expected_effects {
        let strays: Vec<_> = effects
            .keys()
            .filter(|(saga, _, _)| !ours.contains(saga))
            .take(10)
            .collect();
        failures.push(format!(
            "the ledger holds {total_effects} effects, the sagas account for {expected_effects}; effects of unknown sagas: {strays:?}"
        ));
    }

    // The report.
    let dup_total: usize = duplicates.values().sum();
    println!("chaos: seed {seed}");
    println!(
        "chaos: {} sagas settled {:.1}s after the chaos ended ({:.1}s in all)",
        ids.len(),
        (settled - chaos_done).as_secs_f64(),
        settled.as_secs_f64()
    );
    println!("chaos: final states {by_state:?}");
    println!(
        "chaos: kills: engine {}, workers {}, nats-server {}",
        counts.engine_kills, counts.worker_kills, counts.nats_restarts
    );
    println!(
        "chaos: starts retried {} times; {} retried starts found their saga already created",
        stats.retries.load(Ordering::Relaxed),
        stats.found_existing.load(Ordering::Relaxed)
    );
    println!(
        "chaos: ledger: {total_effects} effects, {dup_total} duplicates suppressed (on {} steps)",
        duplicates.len()
    );
    println!(
        "chaos: workers: {} results replayed from idempotency records, {} concurrent runs resolved by the record, {} tasks not finished (nak)",
        count_lines(&worker_logs, "outcome already recorded; replaying it"),
        count_lines(
            &worker_logs,
            "another run of this step recorded its outcome first"
        ),
        count_lines(&worker_logs, "task not finished; leaving it for redelivery"),
    );
    println!(
        "chaos: workers: {} task acks unconfirmed (redelivered and replayed)",
        count_lines(&worker_logs, "result published but the task ack failed"),
    );
    println!(
        "chaos: engine: {} stale or duplicate results rejected, {} rejected lines in all, {} attempts timed out",
        count_lines(&engine_logs, "stale or duplicate"),
        count_lines(&engine_logs, "rejected"),
        timed_out_attempts
    );
    assert_eq!(
        count_lines(&worker_logs, "the consumer exists with another ack_wait"),
        0,
        "every worker process must use the same ack_wait"
    );
    if !failures.is_empty() {
        for f in failures.iter().take(40) {
            eprintln!("FAIL {f}");
        }
        panic!(
            "{} violations (seed {seed}; replay with JETSAGA_CHAOS_SEED={seed})",
            failures.len()
        );
    }
}
