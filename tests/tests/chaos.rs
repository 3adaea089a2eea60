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

use common::Engine;
use common::chaos::{
    StartStats, WORKERS, Workers, apply_definitions, assert_engine_knows_exactly, blocking,
    count_lines, judge, plan, settle, start_one,
};
use jetsaga_cli::client::Client;
use jetsaga_tests::NatsServer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Seed of the default (CI) run.
const DEFAULT_SEED: u64 = 0x5a6a_c4a0_5eed;
/// How long the sagas may take to settle once the chaos is over.
const SETTLE: Duration = Duration::from_secs(180);

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

/// What the chaos did, for the report.
#[derive(Debug, Default)]
struct Counts {
    engine_kills: usize,
    worker_kills: usize,
    nats_restarts: usize,
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
    // The stored versions (with their version numbers) are what sagas run.
    let defs = apply_definitions(&client).await;
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

    // No saga was started twice, none was lost; each as planned.
    assert_engine_knows_exactly(&client, &ids).await;
    let verdict = judge(&plans, &ids, &details, &ledger_dir);

    // The report.
    println!("chaos: seed {seed}");
    println!(
        "chaos: {} sagas settled {:.1}s after the chaos ended ({:.1}s in all)",
        ids.len(),
        (settled - chaos_done).as_secs_f64(),
        settled.as_secs_f64()
    );
    println!("chaos: final states {:?}", verdict.by_state);
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
        "chaos: ledger: {} effects, {} duplicates suppressed (on {} steps)",
        verdict.total_effects, verdict.duplicates, verdict.duplicate_steps
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
        verdict.timed_out_attempts
    );
    assert_eq!(
        count_lines(&worker_logs, "the consumer exists with another ack_wait"),
        0,
        "every worker process must use the same ack_wait"
    );
    verdict.assert_clean(&format!(
        "seed {seed}; replay with JETSAGA_CHAOS_SEED={seed}"
    ));
}
