//! High availability of partition 0: engines on a 3-node JetStream cluster
//! (`--replicas 3`), each with its own data dir, sharing the partition
//! through the replicated journal and the leader lease.
//!
//! Every test runs real nats-server nodes ([`NatsCluster`]), the real
//! `jetsaga` binary and, where sagas run, the example worker binaries with
//! their ledgers; the sagas come with planned faults (see `common::chaos`)
//! and are judged exactly-once against the ledgers.
//!
//! - `sigkill_of_the_leader_with_sagas_in_flight`: a standby takes over
//!   from a leader killed with `kill -9` mid-run; no saga is lost, every
//!   saga ends as planned, every effect happens once. Prints the failover
//!   time (kill to the new leader's "leading partition 0").
//! - `sigterm_hands_the_partition_over`: a leader told to stop drains,
//!   releases the lease and exits 0; a standby leads at once; sagas started
//!   before and after finish. Prints the handover time.
//! - `step_down_hands_the_partition_over_and_keeps_the_engine`: `cluster
//!   step-down 0` moves the partition to another engine; the one that
//!   stepped down stays up as a standby; sagas started before and after
//!   finish.
//! - `a_standby_with_an_empty_data_dir_rebuilds_from_the_journal`: an
//!   engine started with nothing on disk applies the whole journal, then
//!   serves every old saga exactly as the first engine did and runs new
//!   ones once the first is gone.
//! - `an_empty_engine_starts_from_the_latest_snapshot_and_the_tail`: a
//!   standby snapshots every few records and trims the journal; an engine
//!   started with nothing on disk restores the snapshot, applies the tail
//!   and, once the others are gone, serves every saga as they did.
//! - `three_engines_started_at_once_with_the_same_definitions`: a cold
//!   start race: all get ready without errors, exactly one leads, the
//!   definitions are applied once (version 1), sagas run.
//! - `a_second_engine_next_to_a_running_one_joins_as_standby`: it does not
//!   take the lease; requests sent to it (HTTP) are forwarded to the leader;
//!   no result is rejected for an unknown saga.
//! - `a_nats_node_killed_under_load`: the node leading the journal stream
//!   dies while sagas run; all finish exactly once. A leader deposed during
//!   the election (its lease lapsed while an append was being retried)
//!   exits `E-DEPOSED` and is restarted, as its supervisor would.
//! - `a_paused_leader_is_deposed_and_writes_nothing`: a leader frozen
//!   (SIGSTOP) past its lease is replaced; thawed, it stands by or exits on
//!   the journal's fence, and every saga still ends exactly once.
//! - `partitions_spread_over_the_engines_and_fail_over`: an installation
//!   of 4 partitions and three engines started at once with the same
//!   `--definitions`: the partitions spread over the engines, the same
//!   idempotency key gives the same saga through any engine, sagas land in
//!   every partition, and after a `kill -9` of an engine its partitions are
//!   led by the others and every saga ends exactly once; after a SIGTERM of
//!   another the last engine leads them all at once and runs new sagas,
//!   started by request and as durable starts routed to their keys'
//!   partitions; an engine configured with another partition count refuses
//!   to start.
//! - `chaos_of_engine_kills_with_partitions`: 150 sagas with faults over 3
//!   partitions and 3 engines, a random engine that leads something killed
//!   and restarted three times; each of its partitions begins a new term.
//! - `chaos_of_leader_kills_and_a_nats_node`: 300 sagas with faults while
//!   the current leader is killed (and restarted) again and again and a
//!   NATS node dies once. Seeded; `JETSAGA_HA_SEED=<u64>` replays a run.
//!
//! Every test also checks that no engine logged a result for an unknown
//! saga: a leader that led without the whole journal applied would.
//!
//! Leases here last 2 s, renewed every 500 ms (`LEASE`), instead of the
//! default 3 s / 1 s: a killed leader is replaced after at most a TTL, so
//! this shortens each failover (the tests kill leaders often) while keeping
//! the renewal at a quarter of the TTL, which a loaded 2-core box still
//! meets.
//!
//! ```text
//! cargo build --workspace --bins
//! JETSAGA_NATS_SERVER=.venv/bin/nats-server cargo test -p jetsaga-tests --test ha -- --nocapture
//! ```

mod common;

use common::chaos::{
    SagaPlan, StartStats, Workers, apply_definitions, assert_engine_knows_exactly, blocking,
    count_lines, judge, plan, settle, start_one,
};
use common::{Engine, READY, http_exchange, metric_value};
use jetsaga_cli::client::Client;
use jetsaga_protocol::api::{ClusterStatus, ListRequest, SagaDetail, StartReply};
use jetsaga_tests::{NatsCluster, Signal, wait_until};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// Lease TTL and renewal of every engine (see the module docs).
const LEASE: [&str; 4] = ["--lease-ttl", "2s", "--lease-renew", "500ms"];
/// How long a takeover may take: a lease TTL, the new leader's catching up
/// and its first record, on a loaded box (and a JetStream leader election
/// when a NATS node died too).
const TAKEOVER: Duration = Duration::from_secs(45);
/// How long the sagas may take to finish after the last fault.
const SETTLE: Duration = Duration::from_secs(150);
/// The line of an engine that starts leading partition 0.
const LEADING: &str = "leading partition 0";
/// What an engine logs of a result for a saga its store does not hold.
const UNKNOWN_SAGA: &str = "result for unknown saga";
/// The seed of the default runs.
const DEFAULT_SEED: u64 = 0x4a5e_ed0a;

// ---------------------------------------------------------------- the world

/// A 3-node NATS cluster, engines on it, the example workers' ledger and an
/// API client that knows every node.
struct Ha {
    nats: NatsCluster,
    dir: TempDir,
    engines: Vec<Engine>,
    /// Engine id of each of `engines`.
    ids: Vec<String>,
    /// Logs of engine processes that were killed or stopped and replaced.
    old_logs: String,
    client: Client,
}

impl Ha {
    /// A 3-node cluster and a client; no engine yet.
    async fn new() -> Ha {
        jetsaga_tests::init_tracing();
        let nats = blocking(|| NatsCluster::start(3));
        // Longer than a forwarded request waits for a leader (3 TTLs + 2 s).
        let client =
            Client::new(nats.client().await, "jetsaga").with_timeout(Duration::from_secs(15));
        Ha {
            nats,
            dir: tempfile::tempdir().expect("temp dir"),
            engines: Vec::new(),
            ids: Vec::new(),
            old_logs: String::new(),
            client,
        }
    }

    /// A cluster with `n` engines started one after the other; the first
    /// leads.
    async fn with_engines(n: usize) -> Ha {
        let mut ha = Ha::new().await;
        for _ in 0..n {
            ha.start_engine(&[]);
        }
        let leader = ha.leader().await;
        assert_eq!(leader, 0, "the first engine started leads");
        ha
    }

    /// Spawns engine `e<n>` (its id given with `--engine-id`) on every
    /// node's URL with R3 streams, its own data dir and `extra` flags;
    /// does not wait for it.
    fn spawn_engine(&mut self, extra: &[&str]) -> usize {
        let i = self.engines.len();
        let id = format!("e{}", i + 1);
        let mut args = vec!["--replicas", "3", "--engine-id", id.as_str()];
        args.extend(LEASE);
        args.extend(extra);
        let data_dir = self.dir.path().join(&id);
        let url = self.nats.url_list();
        self.engines.push(Engine::spawn(
            &format!("engine-{id}"),
            &url,
            &data_dir,
            &args,
        ));
        self.ids.push(id);
        i
    }

    /// [`spawn_engine`](Self::spawn_engine) and wait until it is ready.
    fn start_engine(&mut self, extra: &[&str]) -> usize {
        let i = self.spawn_engine(extra);
        blocking(|| self.engines[i].wait_ready());
        i
    }

    fn ledger_dir(&self) -> PathBuf {
        self.dir.path().join("ledger")
    }

    /// The example worker processes, on every node's URL.
    fn workers(&self) -> Workers {
        let url = self.nats.url_list();
        let ledger = self.ledger_dir();
        blocking(|| Workers::start(&url, &ledger))
    }

    /// `cluster.status`, answered by any engine.
    async fn status(&self) -> ClusterStatus {
        self.client.cluster_status().await.expect("cluster status")
    }

    /// The engine whose index `id` is.
    fn index_of(&self, id: &str) -> usize {
        self.ids
            .iter()
            .position(|i| i == id)
            .unwrap_or_else(|| panic!("unknown engine id {id}"))
    }

    /// The engine leading partition 0, once the lease names it and its own
    /// heartbeat says it leads.
    async fn leader(&self) -> usize {
        let id = wait_until("a leader of partition 0", TAKEOVER, || async {
            let status = self.client.cluster_status().await.ok()?;
            let leader = status.partitions.first()?.leader.clone()?;
            let beats = status
                .engines
                .iter()
                .any(|e| e.id == leader && e.partitions == [0]);
            beats.then_some(leader)
        })
        .await;
        self.index_of(&id)
    }

    /// Every engine's log length, to look for lines after it.
    fn offsets(&self) -> Vec<u64> {
        self.engines.iter().map(|e| e.process.log_len()).collect()
    }

    /// Waits until an engine other than `except` logs `needle` after
    /// `offsets` (as [`offsets`](Self::offsets) took them); answers which
    /// and the line.
    async fn wait_for_line(
        &self,
        offsets: &[u64],
        needle: &str,
        except: Option<usize>,
    ) -> (usize, String) {
        wait_until(
            &format!("an engine to log {needle:?}"),
            TAKEOVER,
            || async {
                self.engines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != except)
                    .find_map(|(i, e)| {
                        let log = e.process.log();
                        let from = offsets.get(i).copied().unwrap_or(0) as usize;
                        let tail = log.get(from.min(log.len())..).unwrap_or("");
                        tail.lines()
                            .find(|l| l.contains(needle))
                            .map(|l| (i, l.to_string()))
                    })
            },
        )
        .await
    }

    /// SIGKILLs engine `i`, keeping its log.
    fn kill(&mut self, i: usize) {
        blocking(|| self.engines[i].kill());
        self.keep_log(i);
    }

    /// Keeps engine `i`'s log before its process is replaced.
    fn keep_log(&mut self, i: usize) {
        let log = self.engines[i].process.log();
        self.old_logs
            .push_str(&format!("==== {} ====\n{log}", self.ids[i]));
    }

    /// Every engine log, of processes gone and running.
    fn all_logs(&self) -> String {
        let mut all = self.old_logs.clone();
        for (id, e) in self.ids.iter().zip(&self.engines) {
            all.push_str(&format!("==== {id} ====\n{}", e.process.log()));
        }
        all
    }

    /// No engine ever saw a result of a saga its store did not hold.
    fn assert_no_unknown_saga(&self) {
        let logs = self.all_logs();
        let lines: Vec<&str> = logs.lines().filter(|l| l.contains(UNKNOWN_SAGA)).collect();
        assert!(
            lines.is_empty(),
            "results rejected for unknown sagas:\n{}",
            lines.join("\n")
        );
    }

    /// Sagas not yet terminal.
    async fn in_flight(&self) -> usize {
        let all = self
            .client
            .list(&ListRequest {
                limit: 1000,
                ..ListRequest::default()
            })
            .await
            .expect("list sagas");
        all.iter().filter(|s| !s.state.is_terminal()).count()
    }

    /// Starts plans `rest` once the starts of `before` are under way,
    /// then judges every saga of `plans` (see [`judge`](Self::judge)).
    async fn start_rest_and_judge(
        &self,
        plans: &Arc<Vec<SagaPlan>>,
        before: Starts,
        rest: std::ops::Range<usize>,
        stats: &Arc<StartStats>,
        seed: u64,
    ) {
        let after = Starts::spawn(&self.client, plans, rest, Duration::from_millis(20), stats);
        let mut started = before.join().await;
        started.extend(after.join().await);
        let ids = ids_in_order(plans, started);
        self.judge(plans, &ids, &format!("seed {seed}")).await;
    }

    /// Waits until every saga of `plans` (started as `ids`) is terminal and
    /// judges them against their plans and the ledger.
    async fn judge(&self, plans: &[SagaPlan], ids: &[String], context: &str) {
        let details = settle(&self.client, ids, SETTLE).await;
        assert_engine_knows_exactly(&self.client, ids).await;
        let verdict = judge(plans, ids, &details, &self.ledger_dir());
        println!(
            "ha: {} sagas: {:?}; ledger: {} effects, {} duplicates suppressed; {} attempts timed out",
            ids.len(),
            verdict.by_state,
            verdict.total_effects,
            verdict.duplicates,
            verdict.timed_out_attempts
        );
        verdict.assert_clean(context);
        self.assert_no_unknown_saga();
    }
}

/// The seed of a run: `JETSAGA_HA_SEED`, else the default one.
fn seed() -> u64 {
    match std::env::var("JETSAGA_HA_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("JETSAGA_HA_SEED={s:?} is not a u64: {e}")),
        Err(_) => DEFAULT_SEED,
    }
}

/// Sagas being started in the background, one after the other.
struct Starts {
    task: JoinHandle<Vec<(usize, String)>>,
    /// How many starts were answered.
    done: Arc<AtomicUsize>,
}

impl Starts {
    /// Starts plans `range` one after the other, `gap` apart, retrying
    /// each while no engine answers.
    fn spawn(
        client: &Client,
        plans: &Arc<Vec<SagaPlan>>,
        range: std::ops::Range<usize>,
        gap: Duration,
        stats: &Arc<StartStats>,
    ) -> Starts {
        let done = Arc::new(AtomicUsize::new(0));
        let (client, plans, stats, counter) =
            (client.clone(), plans.clone(), stats.clone(), done.clone());
        let task = tokio::spawn(async move {
            let mut out = Vec::new();
            for i in range {
                out.push((i, start_one(&client, &plans[i], &stats).await));
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(gap).await;
            }
            out
        });
        Starts { task, done }
    }

    /// Waits until `n` starts were answered.
    async fn wait_started(&self, n: usize) {
        wait_until(&format!("{n} sagas started"), READY * 2, || async {
            (self.done.load(Ordering::SeqCst) >= n).then_some(())
        })
        .await;
    }

    /// The saga ids, by plan index.
    async fn join(self) -> Vec<(usize, String)> {
        self.task.await.expect("starter task")
    }
}

/// The saga ids of `plans`, in plan order, from the starters' answers.
fn ids_in_order(plans: &[SagaPlan], started: Vec<(usize, String)>) -> Vec<String> {
    let mut ids: Vec<Option<String>> = vec![None; plans.len()];
    for (i, id) in started {
        ids[i] = Some(id);
    }
    ids.into_iter()
        .enumerate()
        .map(|(i, id)| id.unwrap_or_else(|| panic!("saga #{i} was not started")))
        .collect()
}

/// The `field=value` of a log line.
fn field<'a>(line: &'a str, field: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(field)?.strip_prefix('='))
        .unwrap_or("?")
}

// ---------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_with_sagas_in_flight() {
    let seed = seed();
    println!("ha: seed {seed} (replay with JETSAGA_HA_SEED={seed})");
    let mut ha = Ha::with_engines(3).await;
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 30));
    let stats = Arc::new(StartStats::default());
    let starts = Starts::spawn(
        &ha.client,
        &plans,
        0..plans.len(),
        Duration::from_millis(40),
        &stats,
    );

    // Kill the leader while the first half runs and the rest is starting.
    starts.wait_started(plans.len() / 2).await;
    let in_flight = ha.in_flight().await;
    assert!(in_flight > 0, "sagas are running when the leader dies");
    let leader = ha.leader().await;
    let offsets = ha.offsets();
    let killed_at = Instant::now();
    ha.kill(leader);
    let (next, line) = ha.wait_for_line(&offsets, LEADING, Some(leader)).await;
    let failover = killed_at.elapsed();
    println!(
        "ha: kill -9 of leader {} with {in_flight} sagas in flight; {} leads after {:.2}s (epoch {}, restored_outbox {})",
        ha.ids[leader],
        ha.ids[next],
        failover.as_secs_f64(),
        field(&line, "epoch"),
        field(&line, "restored_outbox")
    );
    assert_eq!(
        ha.leader().await,
        next,
        "cluster status names the new leader"
    );

    let ids = ids_in_order(&plans, starts.join().await);
    ha.judge(&plans, &ids, &format!("seed {seed}")).await;
    println!(
        "ha: {} starts retried during the failover",
        stats.retries.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_partition_over() {
    let seed = seed();
    println!("ha: seed {seed} (replay with JETSAGA_HA_SEED={seed})");
    let ha = Ha::with_engines(2).await;
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 30));
    let stats = Arc::new(StartStats::default());
    let before = Starts::spawn(&ha.client, &plans, 0..20, Duration::from_millis(20), &stats);
    before.wait_started(20).await;
    let in_flight = ha.in_flight().await;
    assert!(in_flight > 0, "sagas are running when the leader stops");

    let leader = ha.leader().await;
    let offsets = ha.offsets();
    let signalled_at = Instant::now();
    ha.engines[leader].process.signal(Signal::SIGTERM);
    let (next, _) = ha.wait_for_line(&offsets, LEADING, Some(leader)).await;
    let handover = signalled_at.elapsed();
    let status = blocking(|| ha.engines[leader].process.wait_for_exit(READY));
    println!(
        "ha: SIGTERM to leader {} with {in_flight} sagas in flight; {} leads after {:.2}s; the old leader exited ({status}) after {:.2}s",
        ha.ids[leader],
        ha.ids[next],
        handover.as_secs_f64(),
        signalled_at.elapsed().as_secs_f64()
    );
    assert!(status.success(), "a drained leader exits 0, got {status}");
    let old_log = ha.engines[leader].process.log();
    assert!(
        old_log.contains("released the partition's lease"),
        "the stopping leader releases its lease:\n{old_log}"
    );
    assert_eq!(
        ha.leader().await,
        next,
        "cluster status names the new leader"
    );

    ha.start_rest_and_judge(&plans, before, 20..30, &stats, seed)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_down_hands_the_partition_over_and_keeps_the_engine() {
    let seed = seed();
    println!("ha: seed {seed} (replay with JETSAGA_HA_SEED={seed})");
    let mut ha = Ha::new().await;
    for _ in 0..2 {
        ha.start_engine(&["--http-listen", "127.0.0.1:0"]);
    }
    assert_eq!(ha.leader().await, 0, "the first engine started leads");
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 20));
    let stats = Arc::new(StartStats::default());
    let before = Starts::spawn(&ha.client, &plans, 0..10, Duration::from_millis(20), &stats);
    before.wait_started(10).await;

    let leader = ha.leader().await;
    // Its saga gauges, before and after it hands over: a standby reports
    // none, so that a sum over the engines counts each saga once.
    let active = |i: usize| {
        let addr = ha.engines[i].http_addr();
        let names: Vec<String> = defs.keys().cloned().collect();
        async move {
            let mut sum = 0.0;
            for name in names {
                let series = format!(r#"saga_active{{saga_name="{name}"}}"#);
                sum += metric_value(&addr, &series).await.unwrap_or(0.0);
            }
            sum
        }
    };
    let active_before = active(leader).await;
    let offsets = ha.offsets();
    let asked_at = Instant::now();
    let reply = ha.client.step_down(0).await.expect("cluster step-down 0");
    assert_eq!(reply.partition, 0);
    assert_eq!(reply.released_by, ha.ids[leader], "the leader answers");
    let (next, _) = ha.wait_for_line(&offsets, LEADING, Some(leader)).await;
    println!(
        "ha: step-down of {} ({active_before} sagas active on it); {} leads after {:.2}s",
        ha.ids[leader],
        ha.ids[next],
        asked_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        ha.leader().await,
        next,
        "cluster status names the new leader"
    );
    assert!(
        ha.engines[leader].process.try_wait().is_none(),
        "the engine that stepped down keeps running:\n{}",
        ha.engines[leader].process.log()
    );
    let status = ha.status().await;
    assert!(
        status
            .engines
            .iter()
            .any(|e| e.id == ha.ids[leader] && e.partitions.is_empty()),
        "it beats as a standby: {status:?}"
    );
    assert_eq!(
        active(leader).await,
        0.0,
        "the engine that stepped down reports no running sagas"
    );

    ha.start_rest_and_judge(&plans, before, 10..20, &stats, seed)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_with_an_empty_data_dir_rebuilds_from_the_journal() {
    let seed = seed();
    let mut ha = Ha::with_engines(1).await;
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 30));
    let stats = Arc::new(StartStats::default());
    let old = Starts::spawn(&ha.client, &plans, 0..20, Duration::ZERO, &stats);
    let old_ids: Vec<String> = old.join().await.into_iter().map(|(_, id)| id).collect();
    let before = settle(&ha.client, &old_ids, SETTLE).await;

    // A second engine with nothing on disk catches up with the journal.
    let started_at = Instant::now();
    let second = ha.start_engine(&[]);
    assert!(
        ha.engines[second]
            .data_dir
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "the second engine made its own store"
    );
    let (applied, last) = wait_until(
        "the new engine to apply the whole journal",
        TAKEOVER,
        || async {
            let status = ha.client.cluster_status().await.ok()?;
            let p = status.partitions.first()?;
            let applied = *p.applied.get(&ha.ids[second])?;
            (p.journal_last_record > 0 && applied == p.journal_last_record)
                .then_some((applied, p.journal_last_record))
        },
    )
    .await;
    println!(
        "ha: the new engine applied {applied} of {last} journal records {:.2}s after it started",
        started_at.elapsed().as_secs_f64()
    );
    let log = ha.engines[second].process.log();
    assert!(log.contains("caught up with the journal"), "{log}");
    assert!(!log.contains(LEADING), "it stands by while the first leads");

    // The first goes; the second serves every old saga as it was.
    let offsets = ha.offsets();
    let status = blocking(|| ha.engines[0].process.terminate());
    assert!(status.success(), "the first engine exits 0, got {status}");
    ha.wait_for_line(&offsets, LEADING, Some(0)).await;
    assert_eq!(ha.leader().await, second);
    for id in &old_ids {
        let now = ha.client.get(id).await.expect("the new leader answers");
        let (was, is) = (
            serde_json::to_value(&before[id]).expect("detail encodes"),
            serde_json::to_value(&now).expect("detail encodes"),
        );
        assert_eq!(was, is, "saga {id} reads the same from the rebuilt store");
    }

    // And it runs new ones.
    let new = Starts::spawn(&ha.client, &plans, 20..30, Duration::ZERO, &stats);
    let new_ids: Vec<String> = new.join().await.into_iter().map(|(_, id)| id).collect();
    let ids: Vec<String> = old_ids.into_iter().chain(new_ids).collect();
    ha.judge(&plans, &ids, &format!("seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_engine_starts_from_the_latest_snapshot_and_the_tail() {
    let seed = seed();
    let mut ha = Ha::with_engines(1).await;
    // A standby that snapshots every 25 records (and trims the journal).
    let standby = ha.start_engine(&["--snapshot-every", "25"]);
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 30));
    let stats = Arc::new(StartStats::default());
    let old = Starts::spawn(&ha.client, &plans, 0..20, Duration::ZERO, &stats);
    let old_ids: Vec<String> = old.join().await.into_iter().map(|(_, id)| id).collect();
    let before = settle(&ha.client, &old_ids, SETTLE).await;
    let snapshot = blocking(|| {
        ha.engines[standby]
            .process
            .wait_for_log("snapshot taken", READY)
    });
    println!("ha: the standby took a snapshot: {snapshot}");

    // An engine with nothing on disk: the journal's first records are gone,
    // so it starts from the snapshot.
    let third = ha.start_engine(&[]);
    let log = ha.engines[third].process.log();
    assert!(
        log.contains("restored the store from the latest snapshot"),
        "the new engine starts from the snapshot:\n{log}"
    );
    wait_until(
        "the new engine to apply the journal's tail",
        TAKEOVER,
        || async {
            let status = ha.client.cluster_status().await.ok()?;
            let p = status.partitions.first()?;
            let applied = *p.applied.get(&ha.ids[third])?;
            (p.journal_last_record > 0 && applied == p.journal_last_record).then_some(())
        },
    )
    .await;

    // The others go; it serves every old saga as they did, and runs new ones.
    for i in [0, standby] {
        let status = blocking(|| ha.engines[i].process.terminate());
        assert!(
            status.success(),
            "engine {} exits 0, got {status}",
            ha.ids[i]
        );
    }
    assert_eq!(ha.leader().await, third);
    for id in &old_ids {
        let now = ha.client.get(id).await.expect("the new leader answers");
        assert_eq!(
            serde_json::to_value(&before[id]).expect("detail encodes"),
            serde_json::to_value(&now).expect("detail encodes"),
            "saga {id} reads the same from the restored store"
        );
    }
    let new = Starts::spawn(&ha.client, &plans, 20..30, Duration::ZERO, &stats);
    let new_ids: Vec<String> = new.join().await.into_iter().map(|(_, id)| id).collect();
    let ids: Vec<String> = old_ids.into_iter().chain(new_ids).collect();
    ha.judge(&plans, &ids, &format!("seed {seed}")).await;
}

/// A directory with the chaos definitions' files, for `--definitions`.
fn definitions_dir(ha: &Ha) -> String {
    let defs_dir = ha.dir.path().join("definitions");
    std::fs::create_dir_all(&defs_dir).expect("definitions dir");
    for name in common::chaos::DEFINITIONS {
        let from = jetsaga_tests::workspace_root()
            .join("examples/definitions")
            .join(format!("{name}.yaml"));
        std::fs::copy(&from, defs_dir.join(format!("{name}.yaml"))).expect("copy definition");
    }
    defs_dir.display().to_string()
}

/// No engine logged an ERROR line, and every one still runs.
fn assert_no_errors(ha: &Ha) {
    for (id, e) in ha.ids.iter().zip(&ha.engines) {
        let log = e.process.log();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(
            errors.is_empty(),
            "engine {id} logged errors:\n{}",
            errors.join("\n")
        );
        assert!(e.process.try_wait().is_none(), "engine {id} runs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_started_at_once_with_the_same_definitions() {
    let seed = seed();
    let mut ha = Ha::new().await;
    let defs_arg = definitions_dir(&ha);
    let started_at = Instant::now();
    for _ in 0..3 {
        ha.spawn_engine(&["--definitions", &defs_arg]);
    }
    for e in &ha.engines {
        blocking(|| e.wait_ready());
        // Each applied the files, itself or through the leader.
        for name in common::chaos::DEFINITIONS {
            blocking(|| {
                e.process
                    .wait_for_log(&format!("saga={name} version=1"), READY)
            });
        }
    }
    println!(
        "ha: three engines ready {:.2}s after they were started together",
        started_at.elapsed().as_secs_f64()
    );
    assert_no_errors(&ha);

    let leader = ha.leader().await;
    let leading: Vec<&String> = ha
        .ids
        .iter()
        .zip(&ha.engines)
        .filter(|(_, e)| e.process.log().contains(LEADING))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(leading, [&ha.ids[leader]], "exactly one engine leads");
    let status = ha.status().await;
    let leaders: Vec<&str> = status
        .engines
        .iter()
        .filter(|e| e.partitions == [0])
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(leaders, [ha.ids[leader].as_str()], "{status:?}");
    assert_eq!(status.engines.len(), 3, "{status:?}");

    let stored = ha.client.definitions().await.expect("list definitions");
    let versions: BTreeMap<&str, u32> = stored
        .iter()
        .map(|d| (d.name.as_str(), d.version))
        .collect();
    let expected: BTreeMap<&str, u32> =
        common::chaos::DEFINITIONS.iter().map(|n| (*n, 1)).collect();
    assert_eq!(versions, expected, "each definition applied once");

    let defs = stored
        .into_iter()
        .map(|d| (d.name.clone(), Arc::new(d)))
        .collect();
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 12));
    let stats = Arc::new(StartStats::default());
    let starts = Starts::spawn(&ha.client, &plans, 0..12, Duration::ZERO, &stats);
    let ids = ids_in_order(&plans, starts.join().await);
    ha.judge(&plans, &ids, &format!("seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_deposed_and_writes_nothing() {
    let seed = seed();
    println!("ha: seed {seed} (replay with JETSAGA_HA_SEED={seed})");
    let ha = Ha::with_engines(2).await;
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 30));
    let stats = Arc::new(StartStats::default());
    let starts = Starts::spawn(
        &ha.client,
        &plans,
        0..plans.len(),
        Duration::from_millis(40),
        &stats,
    );
    starts.wait_started(10).await;

    // Freeze the leader past its lease: the other engine takes over while
    // the frozen one still believes it leads, with batches in its hands.
    let leader = ha.leader().await;
    let offsets = ha.offsets();
    ha.engines[leader].process.signal(Signal::SIGSTOP);
    let (next, _) = ha.wait_for_line(&offsets, LEADING, Some(leader)).await;
    assert_ne!(next, leader);
    ha.engines[leader].process.signal(Signal::SIGCONT);
    // Thawed, it finds out: its renewal is too late (it stands by), or its
    // next append fails on the fence (it exits E-DEPOSED). Either way it
    // writes nothing after the new leader's first record.
    let from = offsets[leader] as usize;
    let outcome = wait_until("the thawed leader to step aside", TAKEOVER, || async {
        let log = ha.engines[leader].process.log();
        let tail = log.get(from.min(log.len())..).unwrap_or("").to_string();
        if tail.contains("E-DEPOSED") {
            Some("deposed by the fence")
        } else if tail.contains("lost the lease of partition 0") {
            Some("lost its lease")
        } else {
            None
        }
    })
    .await;
    println!("ha: the thawed leader {} {outcome}", ha.ids[leader]);
    if outcome == "deposed by the fence" {
        let exit = blocking(|| ha.engines[leader].process.wait_for_exit(READY));
        assert!(
            !exit.success(),
            "a deposed engine exits with an error: {exit}"
        );
    }
    assert_eq!(ha.leader().await, next, "the new leader keeps leading");

    let ids = ids_in_order(&plans, starts.join().await);
    ha.judge(&plans, &ids, &format!("seed {seed}")).await;
}

/// The partitions of the installation in
/// `partitions_spread_over_the_engines_and_fail_over`.
const PARTITIONS: u32 = 4;

/// Waits until each of the `partitions` partitions is led by an engine of
/// `alive` (ids), as both the leases and the leaders' heartbeats say, and
/// each of them leads at least one; answers the status.
async fn spread(ha: &Ha, alive: &[&str], partitions: u32) -> ClusterStatus {
    wait_until(
        &format!("{partitions} partitions led by each of {alive:?}"),
        TAKEOVER,
        || async {
            let status = ha.client.cluster_status().await.ok()?;
            let by_lease: Vec<&str> = status
                .partitions
                .iter()
                .filter_map(|p| p.leader.as_deref())
                .collect();
            let mut by_beat: Vec<(u32, &str)> = status
                .engines
                .iter()
                .flat_map(|e| e.partitions.iter().map(|p| (*p, e.id.as_str())))
                .collect();
            by_beat.sort();
            let agree = by_lease.len() == partitions as usize
                && by_beat.len() == partitions as usize
                && by_beat.iter().zip(&by_lease).all(|((_, a), b)| a == b);
            let each = alive.iter().all(|id| {
                status
                    .engines
                    .iter()
                    .any(|e| e.id == *id && !e.partitions.is_empty())
            });
            let only = by_lease.iter().all(|l| alive.contains(l));
            (agree && each && only).then_some(status)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_over_the_engines_and_fail_over() {
    use jetsaga_protocol::partition;
    let seed = seed();
    println!("ha: seed {seed} (replay with JETSAGA_HA_SEED={seed})");
    let mut ha = Ha::new().await;
    let defs_arg = definitions_dir(&ha);
    let partitions = PARTITIONS.to_string();
    let started_at = Instant::now();
    for _ in 0..3 {
        ha.spawn_engine(&[
            "--partitions",
            &partitions,
            "--definitions",
            &defs_arg,
            "--http-listen",
            "127.0.0.1:0",
        ]);
    }
    for e in &ha.engines {
        blocking(|| e.wait_ready());
    }
    let ids: Vec<String> = ha.ids.clone();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let status = spread(&ha, &ids, PARTITIONS).await;
    println!(
        "ha: {PARTITIONS} partitions spread over three engines {:.2}s after they were started together: {:?}",
        started_at.elapsed().as_secs_f64(),
        status
            .engines
            .iter()
            .map(|e| (e.id.as_str(), e.partitions.clone()))
            .collect::<Vec<_>>()
    );
    assert_no_errors(&ha);
    let stored = ha.client.definitions().await.expect("list definitions");
    let versions: BTreeMap<&str, u32> = stored
        .iter()
        .map(|d| (d.name.as_str(), d.version))
        .collect();
    let expected: BTreeMap<&str, u32> =
        common::chaos::DEFINITIONS.iter().map(|n| (*n, 1)).collect();
    assert_eq!(versions, expected, "each definition applied once");
    let defs = stored
        .into_iter()
        .map(|d| (d.name.clone(), Arc::new(d)))
        .collect();
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 40));

    // One key, started through two engines' HTTP doors: one saga.
    let first = &plans[0];
    let body =
        serde_json::json!({"saga": first.saga, "input": first.input, "idempotency_key": first.key})
            .to_string();
    let mut replies = Vec::new();
    for i in [0, 1] {
        let (code, text) =
            http_exchange(&ha.engines[i].http_addr(), "POST", "/v1/sagas", Some(&body)).await;
        assert!(
            code == 201 || code == 200,
            "start through {}: {code} {text}",
            ha.ids[i]
        );
        replies.push(serde_json::from_str::<StartReply>(&text).expect("a start reply"));
    }
    assert_eq!(replies[0].saga_id, replies[1].saga_id, "one key, one saga");
    assert!(replies[0].created && !replies[1].created, "{replies:?}");
    assert_eq!(
        partition::of_saga(&replies[0].saga_id, PARTITIONS),
        partition::of_key(&first.key, PARTITIONS),
        "the saga lives in its key's partition"
    );

    let stats = Arc::new(StartStats::default());
    let starts = Starts::spawn(
        &ha.client,
        &plans,
        1..plans.len(),
        Duration::from_millis(40),
        &stats,
    );
    starts.wait_started(plans.len() / 2).await;
    // Kill the engine leading the most partitions.
    let status = ha.status().await;
    let victim_id = status
        .engines
        .iter()
        .max_by_key(|e| e.partitions.len())
        .map(|e| e.id.clone())
        .expect("engines");
    let victim = ha.index_of(&victim_id);
    let killed_at = Instant::now();
    ha.kill(victim);
    let alive: Vec<&str> = ids.iter().copied().filter(|id| *id != victim_id).collect();
    // Its leases taken by the others: the takeover.
    wait_until(
        "the killed engine's partitions led again",
        TAKEOVER,
        || async {
            let status = ha.client.cluster_status().await.ok()?;
            status
                .partitions
                .iter()
                .all(|p| p.leader.as_deref().is_some_and(|l| alive.contains(&l)))
                .then_some(())
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    // And the heartbeats agree (the killed engine's has aged out).
    let status = spread(&ha, &alive, PARTITIONS).await;
    println!(
        "ha: kill -9 of {victim_id}; its partitions led again after {:.2}s, the heartbeats agree after {:.2}s: {:?}",
        takeover.as_secs_f64(),
        killed_at.elapsed().as_secs_f64(),
        status
            .engines
            .iter()
            .map(|e| (e.id.as_str(), e.partitions.clone()))
            .collect::<Vec<_>>()
    );

    let mut started = starts.join().await;
    started.push((0, replies[0].saga_id.clone()));
    let saga_ids = ids_in_order(&plans, started);
    ha.judge(&plans, &saga_ids, &format!("seed {seed}")).await;
    let used: std::collections::BTreeSet<u32> = saga_ids
        .iter()
        .map(|id| partition::of_saga(id, PARTITIONS))
        .collect();
    assert_eq!(
        used.len(),
        PARTITIONS as usize,
        "sagas in every partition: {used:?}"
    );
    for (p, id) in plans.iter().zip(&saga_ids) {
        assert_eq!(
            partition::of_saga(id, PARTITIONS),
            partition::of_key(&p.key, PARTITIONS),
            "saga {id} of key {}",
            p.key
        );
    }

    // SIGTERM to one of the two left: the last takes its partitions at once.
    let status = ha.status().await;
    let stopping_id = alive[0].to_string();
    let last_id = alive[1].to_string();
    let stopping = ha.index_of(&stopping_id);
    let signalled_at = Instant::now();
    ha.engines[stopping].process.signal(Signal::SIGTERM);
    wait_until(
        "the last engine leads every partition",
        TAKEOVER,
        || async {
            let status = ha.client.cluster_status().await.ok()?;
            status
                .partitions
                .iter()
                .all(|p| p.leader.as_deref() == Some(last_id.as_str()))
                .then_some(())
        },
    )
    .await;
    let handover = signalled_at.elapsed();
    let exit = blocking(|| ha.engines[stopping].process.wait_for_exit(READY));
    assert!(exit.success(), "a drained engine exits 0, got {exit}");
    println!(
        "ha: SIGTERM to {stopping_id} (leading {:?}); {last_id} leads all {PARTITIONS} after {:.2}s",
        status
            .engines
            .iter()
            .find(|e| e.id == stopping_id)
            .map(|e| e.partitions.clone()),
        handover.as_secs_f64()
    );
    ha.keep_log(stopping);
    // The last engine runs new sagas of every partition.
    let mut more = plan(&mut StdRng::seed_from_u64(seed ^ 1), seed ^ 1, &defs, 12);
    for p in &mut more {
        p.index += plans.len();
    }
    let more_stats = Arc::new(StartStats::default());
    let mut more_ids = Vec::new();
    // Half of them as durable starts (a JetStream publish, the key as
    // `Nats-Msg-Id`), which the leader of partition 0 reads and routes to
    // each key's partition; the rest through the request API.
    let js = async_nats::jetstream::new(ha.nats.client().await);
    let (durable, requested) = more.split_at(more.len() / 2);
    for p in durable {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", p.key.as_str());
        let body = serde_json::json!({ "input": p.input }).to_string();
        js.publish_with_headers(format!("jetsaga.start.{}", p.saga), headers, body.into())
            .await
            .expect("publish a durable start")
            .await
            .expect("the starts stream takes it");
    }
    for p in durable {
        let detail = wait_until(
            &format!("the durable start of {}", p.key),
            TAKEOVER,
            || async { ha.client.get_by_key(&p.key).await.ok() },
        )
        .await;
        assert_eq!(
            partition::of_saga(&detail.saga.id, PARTITIONS),
            partition::of_key(&p.key, PARTITIONS),
            "a durable start lives in its key's partition"
        );
        more_ids.push(detail.saga.id);
    }
    for p in requested {
        more_ids.push(start_one(&ha.client, p, &more_stats).await);
    }
    let mut all_plans: Vec<SagaPlan> = plans.iter().cloned().collect();
    all_plans.extend(more.iter().cloned());
    let mut all_ids = saga_ids.clone();
    all_ids.extend(more_ids);
    ha.judge(
        &all_plans,
        &all_ids,
        &format!("seed {seed}, after the handover"),
    )
    .await;

    // Another partition count is refused.
    let odd = ha.spawn_engine(&["--partitions", "2"]);
    let exit = blocking(|| ha.engines[odd].process.wait_for_exit(READY));
    assert!(!exit.success(), "{exit}");
    let log = ha.engines[odd].process.log();
    assert!(
        log.contains("E-PARTITIONS") && log.contains("has 4 partitions"),
        "{log}"
    );
    let odd_dir = ha.dir.path().join(&ha.ids[odd]);
    assert!(
        !odd_dir.join("partition-0").exists(),
        "a refused count leaves no partition stores behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_next_to_a_running_one_joins_as_standby() {
    let seed = seed();
    let mut ha = Ha::new().await;
    let first = ha.start_engine(&["--http-listen", "127.0.0.1:0"]);
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 30));
    let stats = Arc::new(StartStats::default());
    let running = Starts::spawn(&ha.client, &plans, 0..15, Duration::from_millis(20), &stats);
    running.wait_started(5).await;

    let second = ha.start_engine(&["--http-listen", "127.0.0.1:0"]);
    let addr = ha.engines[second].http_addr();
    assert_eq!(ha.leader().await, first, "the first engine keeps leading");
    let status = ha.status().await;
    let beat = status
        .engines
        .iter()
        .find(|e| e.id == ha.ids[second])
        .expect("the second engine beats");
    assert!(beat.partitions.is_empty(), "{status:?}");

    // Starts sent to the second engine's HTTP API are forwarded.
    let mut started = running.join().await;
    for (i, p) in plans.iter().enumerate().skip(15) {
        let body = serde_json::json!({"saga": p.saga, "input": p.input, "idempotency_key": p.key});
        let (code, text) = http_exchange(&addr, "POST", "/v1/sagas", Some(&body.to_string())).await;
        assert_eq!(code, 201, "start through the standby: {text}");
        let reply: StartReply = serde_json::from_str(&text).expect("a start reply");
        started.push((i, reply.saga_id));
    }
    let ids = ids_in_order(&plans, started);
    ha.judge(&plans, &ids, &format!("seed {seed}")).await;
    // Reads through the standby are forwarded too.
    for id in &ids[15..] {
        let (code, text) = http_exchange(&addr, "GET", &format!("/v1/sagas/{id}"), None).await;
        assert_eq!(code, 200, "{text}");
        let detail: SagaDetail = serde_json::from_str(&text).expect("a saga");
        assert!(detail.saga.status.is_terminal(), "{text}");
    }

    assert_eq!(ha.leader().await, first, "the first engine still leads");
    let log = ha.engines[second].process.log();
    assert!(
        !log.contains("took the partition's lease") && !log.contains(LEADING),
        "the second engine stood by:\n{log}"
    );
    let unknown = r#"engine_rejected_messages_total{reason="unknown_saga"}"#;
    for i in [first, second] {
        let addr = ha.engines[i].http_addr();
        assert_eq!(
            metric_value(&addr, unknown).await,
            Some(0.0),
            "{}",
            ha.ids[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_under_load() {
    let seed = seed();
    let mut ha = Ha::with_engines(2).await;
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let plans = Arc::new(plan(&mut StdRng::seed_from_u64(seed), seed, &defs, 40));
    let stats = Arc::new(StartStats::default());
    let starts = Starts::spawn(&ha.client, &plans, 0..40, Duration::from_millis(40), &stats);
    starts.wait_started(15).await;

    // The node leading the journal's stream: its loss costs a JetStream
    // leader election under the engines' feet.
    let node = journal_leader_node(&ha).await;
    println!(
        "ha: kill -9 of nats node {} (leads the journal stream) with {} sagas in flight",
        ha.nats.node(node).name(),
        ha.in_flight().await
    );
    let killed_at = Instant::now();
    ha.nats.kill(node);
    starts.wait_started(30).await;
    println!(
        "ha: 15 more sagas started {:.2}s after the node died",
        killed_at.elapsed().as_secs_f64()
    );
    blocking(|| ha.nats.restart(node));
    println!(
        "ha: the node is back and the cluster healthy {:.2}s after it died",
        killed_at.elapsed().as_secs_f64()
    );
    let ids = ids_in_order(&plans, starts.join().await);
    ha.judge(&plans, &ids, &format!("seed {seed}")).await;
    // A leader that could not renew its lease during the election, while a
    // group commit's append was still being retried, finds the journal
    // moved on when the append goes through: it exits E-DEPOSED, by
    // design, for its supervisor to restart it. Any other exit is a bug.
    for i in 0..ha.engines.len() {
        let Some(exit) = ha.engines[i].process.try_wait() else {
            continue;
        };
        let log = ha.engines[i].process.log();
        assert!(
            !exit.success() && log.contains("E-DEPOSED"),
            "engine {} stopped ({exit}) other than deposed:\n{log}",
            ha.ids[i]
        );
        println!("ha: engine {} was deposed and exits; restarted", ha.ids[i]);
        ha.keep_log(i);
        blocking(|| ha.engines[i].respawn());
        blocking(|| ha.engines[i].wait_ready());
    }
    for (id, e) in ha.ids.iter().zip(&ha.engines) {
        assert!(e.process.try_wait().is_none(), "engine {id} runs");
    }
    println!(
        "ha: {} starts retried; leaders logged: {}",
        stats.retries.load(Ordering::Relaxed),
        count_lines(&ha.all_logs(), LEADING)
    );
}

/// The index of the node that leads the journal stream.
async fn journal_leader_node(ha: &Ha) -> usize {
    let js = async_nats::jetstream::new(ha.client.nats().clone());
    let name = jetsaga_protocol::Subjects::new("jetsaga").journal_stream();
    let leader = wait_until("the journal stream's leader", READY, || async {
        let mut stream = js.get_stream(&name).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    })
    .await;
    (0..ha.nats.len())
        .find(|i| ha.nats.node(*i).name() == leader)
        .unwrap_or_else(|| panic!("no node named {leader}"))
}

/// What the chaos run does between start batches.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the current leader; restart it after `down`.
    KillLeader { down: Duration },
    /// SIGKILL NATS node `node`; restart it after `down`.
    KillNats { node: usize, down: Duration },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_of_leader_kills_and_a_nats_node() {
    const SAGAS: usize = 300;
    const LEADER_KILLS: usize = 4;
    let seed = seed();
    println!("ha: seed {seed} (replay with JETSAGA_HA_SEED={seed})");
    let began = Instant::now();
    let mut ha = Ha::with_engines(3).await;
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let mut rng = StdRng::seed_from_u64(seed);
    let plans = Arc::new(plan(&mut rng, seed, &defs, SAGAS));

    // Batches of starts, a fault after some of them.
    let mut batches = Vec::new();
    let mut at = 0;
    while at < SAGAS {
        let end = (at + rng.random_range(20..=36)).min(SAGAS);
        batches.push(at..end);
        at = end;
    }
    let mut faults: Vec<Fault> = (0..LEADER_KILLS)
        .map(|_| Fault::KillLeader {
            down: Duration::from_millis(rng.random_range(0..3000)),
        })
        .collect();
    faults.push(Fault::KillNats {
        node: rng.random_range(0..3),
        down: Duration::from_millis(rng.random_range(1000..4000)),
    });
    faults.shuffle(&mut rng);
    // After batches 1.. (the first one starts on a quiet cluster), never two
    // faults after the same batch.
    let mut slots: Vec<usize> = (1..batches.len()).collect();
    slots.shuffle(&mut rng);
    let mut after: BTreeMap<usize, Fault> = slots.into_iter().zip(faults).collect();
    assert_eq!(after.len(), LEADER_KILLS + 1, "a batch for every fault");

    let stats = Arc::new(StartStats::default());
    let mut starters = Vec::new();
    let mut failovers = Vec::new();
    for (b, range) in batches.into_iter().enumerate() {
        let gap = Duration::from_millis(rng.random_range(0..40));
        let starts = Starts::spawn(&ha.client, &plans, range.clone(), gap, &stats);
        let Some(fault) = after.remove(&b) else {
            starters.push(starts);
            tokio::time::sleep(Duration::from_millis(rng.random_range(300..1000))).await;
            continue;
        };
        // The fault meets the batch half started.
        starts.wait_started(range.len() / 2).await;
        starters.push(starts);
        match fault {
            Fault::KillLeader { down } => {
                let leader = ha.leader().await;
                let mut offsets = ha.offsets();
                let killed_at = Instant::now();
                ha.kill(leader);
                tokio::time::sleep(down).await;
                blocking(|| ha.engines[leader].respawn());
                // Its new process logs to a new file.
                offsets[leader] = 0;
                // The restarted engine may take its own lease back at once
                // (its store holds every record it wrote) or find another
                // leading: either way exactly one new term begins.
                let (next, line) = ha.wait_for_line(&offsets, LEADING, None).await;
                let failover = killed_at.elapsed();
                blocking(|| ha.engines[leader].wait_ready());
                println!(
                    "ha: +{:>5.1}s kill -9 leader {} ({down:?} down): {} leads after {:.2}s (epoch {}, restored_outbox {})",
                    began.elapsed().as_secs_f64(),
                    ha.ids[leader],
                    ha.ids[next],
                    failover.as_secs_f64(),
                    field(&line, "epoch"),
                    field(&line, "restored_outbox")
                );
                failovers.push(failover);
            }
            Fault::KillNats { node, down } => {
                println!(
                    "ha: +{:>5.1}s kill -9 nats node {} ({down:?} down)",
                    began.elapsed().as_secs_f64(),
                    ha.nats.node(node).name()
                );
                ha.nats.kill(node);
                tokio::time::sleep(down).await;
                blocking(|| ha.nats.restart(node));
            }
        }
    }
    let mut started = Vec::new();
    for s in starters {
        started.extend(s.join().await);
    }
    let ids = ids_in_order(&plans, started);
    let chaos_over = began.elapsed();
    println!(
        "ha: all {SAGAS} sagas started and the faults over after {:.1}s; failovers took {:?}",
        chaos_over.as_secs_f64(),
        failovers
            .iter()
            .map(|d| format!("{:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    assert_eq!(failovers.len(), LEADER_KILLS);
    ha.judge(
        &plans,
        &ids,
        &format!("seed {seed}; replay with JETSAGA_HA_SEED={seed}"),
    )
    .await;
    let logs = ha.all_logs();
    println!(
        "ha: settled {:.1}s after the faults ({:.1}s in all); {} starts retried, {} found their saga created; engines: {} terms led, {} catch-ups, {} stale or duplicate results",
        (began.elapsed() - chaos_over).as_secs_f64(),
        began.elapsed().as_secs_f64(),
        stats.retries.load(Ordering::Relaxed),
        stats.found_existing.load(Ordering::Relaxed),
        count_lines(&logs, LEADING),
        count_lines(&logs, "caught up with the journal"),
        count_lines(&logs, "stale or duplicate"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_of_engine_kills_with_partitions() {
    const SAGAS: usize = 150;
    const KILLS: usize = 3;
    let seed = seed();
    println!("ha: seed {seed} (replay with JETSAGA_HA_SEED={seed})");
    let began = Instant::now();
    let mut ha = Ha::new().await;
    for _ in 0..3 {
        ha.start_engine(&["--partitions", "3"]);
    }
    // The first engine took all three; they spread, one each.
    let ids: Vec<String> = ha.ids.clone();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    spread(&ha, &ids, 3).await;
    println!(
        "ha: +{:>5.1}s the partitions spread, one per engine",
        began.elapsed().as_secs_f64()
    );
    let defs = apply_definitions(&ha.client).await;
    let _workers = ha.workers();
    let mut rng = StdRng::seed_from_u64(seed);
    let plans = Arc::new(plan(&mut rng, seed, &defs, SAGAS));
    let stats = Arc::new(StartStats::default());
    let chunk = SAGAS / (KILLS + 1);
    let mut starters = Vec::new();
    for k in 0..=KILLS {
        let range = k * chunk..if k == KILLS { SAGAS } else { (k + 1) * chunk };
        let gap = Duration::from_millis(rng.random_range(0..40));
        let starts = Starts::spawn(&ha.client, &plans, range.clone(), gap, &stats);
        if k == KILLS {
            starters.push(starts);
            break;
        }
        starts.wait_started(range.len() / 2).await;
        starters.push(starts);
        // Kill an engine that leads something, with its partitions' epochs.
        let status = ha.status().await;
        let leaders: Vec<&str> = status
            .partitions
            .iter()
            .filter_map(|p| p.leader.as_deref())
            .collect();
        let victim_id = leaders[rng.random_range(0..leaders.len())].to_string();
        let victim = ha.index_of(&victim_id);
        let terms: Vec<(u32, u64)> = status
            .partitions
            .iter()
            .filter(|p| p.leader.as_deref() == Some(victim_id.as_str()))
            .map(|p| (p.partition, p.epoch.unwrap_or(0)))
            .collect();
        let down = Duration::from_millis(rng.random_range(0..3000));
        let killed_at = Instant::now();
        ha.kill(victim);
        tokio::time::sleep(down).await;
        blocking(|| ha.engines[victim].respawn());
        blocking(|| ha.engines[victim].wait_ready());
        // Each partition it led begins a new term, on another engine or
        // on it again.
        wait_until(
            "new terms of the killed engine's partitions",
            TAKEOVER,
            || async {
                let status = ha.client.cluster_status().await.ok()?;
                terms
                    .iter()
                    .all(|(p, epoch)| {
                        status
                            .partitions
                            .iter()
                            .any(|s| s.partition == *p && s.epoch.is_some_and(|e| e > *epoch))
                    })
                    .then_some(())
            },
        )
        .await;
        println!(
            "ha: +{:>5.1}s kill -9 {victim_id} leading {:?} ({down:?} down): new terms after {:.2}s",
            began.elapsed().as_secs_f64(),
            terms.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
            killed_at.elapsed().as_secs_f64()
        );
    }
    let mut started = Vec::new();
    for s in starters {
        started.extend(s.join().await);
    }
    let ids = ids_in_order(&plans, started);
    ha.judge(
        &plans,
        &ids,
        &format!("seed {seed}; replay with JETSAGA_HA_SEED={seed}"),
    )
    .await;
    println!(
        "ha: {SAGAS} sagas over 3 partitions through {KILLS} engine kills in {:.1}s; {} starts retried",
        began.elapsed().as_secs_f64(),
        stats.retries.load(Ordering::Relaxed)
    );
}
