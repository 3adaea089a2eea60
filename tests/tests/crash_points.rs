//! Crash points: the engine or a worker killed (SIGKILL) at a chosen place
//! between two of its durable steps, then restarted, loses nothing and
//! duplicates nothing.
//!
//! Where `chaos.rs` kills processes at random moments, each test here kills
//! one at a named crash point (a `fail` fail point compiled into the
//! `jetsaga` and example worker binaries because this package turns on the
//! `failpoints` feature of the engine and the SDK; see
//! `engine/src/crash_points.rs` and `worker-sdk/src/crash_points.rs`). The
//! process is started with `FAILPOINTS=<point>=<n>*off-><return>`, so it
//! kills itself on the point's n+1-th pass, logging the point's name first.
//! The test waits for that death, restarts the process without
//! `FAILPOINTS` on the same store, and then judges exactly:
//!
//! - every saga ends in the state its input calls for (`completed`, or
//!   `compensated` for those with a fatal fault at step 3), every step in
//!   its state with exactly one attempt of each kind it ran, and the engine
//!   knows exactly the sagas started;
//! - the ledger of the example workers holds exactly one effect for every
//!   action that succeeded and every compensation that ran, and nothing
//!   else;
//! - what the crash point must have caused did happen: the results or
//!   outbox rows left unacknowledged came again and were deduplicated, the
//!   task of a killed worker was run again (its duplicate suppressed by the
//!   ledger's idempotency key) or replayed from its record, as the point
//!   calls for.
//!
//! A last test SIGKILLs nats-server (file storage) while steps are in
//! flight and restarts it.
//!
//! ```text
//! cargo build --workspace --bins
//! JETSAGA_NATS_SERVER=.venv/bin/nats-server cargo test -p jetsaga-tests --test crash_points
//! ```

mod common;

use common::{READY, World, step_states};
use jetsaga_examples::ledger::{self, LedgerEntry, StepKey};
use jetsaga_protocol::api::{ListRequest, SagaDetail, SagaStatus};
use jetsaga_tests::{ChildProcess, wait_until};
use jetsaga_worker::protocol::{Subjects, TaskKind};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

/// `ack_wait` of the engine's and the workers' consumers: how soon what a
/// killed process had pulled is delivered again.
const ACK_WAIT: &str = "2s";
/// How long a process may take to reach its crash point.
const DEATH: Duration = Duration::from_secs(30);
/// How long the sagas may take to finish after the restart.
const SETTLE: Duration = Duration::from_secs(40);
/// The steps of `deploy_environment`, in order.
const STEPS: [&str; 4] = [
    "register_manifest",
    "deploy_containers",
    "configure_gateway",
    "mark_ready",
];

/// What a saga's input asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// No fault: every step succeeds.
    Complete,
    /// `configure_gateway` (step 3) fails fatally: steps 2 and 1 are
    /// compensated, in that order.
    FailAtStep3,
}

use Plan::{Complete, FailAtStep3};

/// The sagas of the engine tests: started before any worker runs, so the
/// engine's first passes of the partition points are these starts.
const ENGINE_PLANS: [Plan; 4] = [Complete, FailAtStep3, Complete, FailAtStep3];
/// The sagas of the worker tests: four `container-engine` tasks (three
/// deploys, one stop).
const WORKER_PLANS: [Plan; 3] = [Complete, FailAtStep3, Complete];

/// A saga the test started.
#[derive(Debug, Clone)]
struct Started {
    id: String,
    plan: Plan,
}

/// The input of saga number `i` under `plan`, with `extra` faults merged.
fn input(i: usize, plan: Plan, extra: &Value) -> Value {
    let mut faults = extra.as_object().cloned().unwrap_or_default();
    if plan == FailAtStep3 {
        faults.insert("configure_gateway".into(), json!({"fail": "fatal"}));
    }
    json!({"environment": format!("crash-{i}"), "image": "shop:1.4.2", "faults": faults})
}

/// Starts one `deploy_environment` per plan, one after the other (so each
/// start is a group commit of its own), with idempotency keys.
async fn start_all(world: &World, plans: &[Plan], extra_faults: &Value) -> Vec<Started> {
    let mut out = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let reply = world
            .client
            .start(
                "deploy_environment",
                input(i, *plan, extra_faults),
                Some(&format!("crash-points-{i}")),
            )
            .await
            .expect("start");
        assert!(reply.created);
        out.push(Started {
            id: reply.saga_id,
            plan: *plan,
        });
    }
    out
}

/// Waits until saga `id` is terminal, polling the API (errors while the
/// engine or NATS come back are retried).
async fn terminal(world: &World, id: &str) -> SagaDetail {
    wait_until(&format!("saga {id} to finish"), SETTLE, || async {
        match world.client.get(id).await {
            Ok(d) if d.saga.status.is_terminal() => Some(d),
            _ => None,
        }
    })
    .await
}

/// The effects the sagas must leave in the ledger, exactly.
fn expected_effects(sagas: &[Started]) -> BTreeMap<StepKey, usize> {
    let mut out = BTreeMap::new();
    for s in sagas {
        let mut put = |step: &str, kind| {
            out.insert((s.id.clone(), step.to_string(), kind), 1);
        };
        match s.plan {
            Complete => STEPS.iter().for_each(|st| put(st, TaskKind::Action)),
            FailAtStep3 => {
                for st in &STEPS[..2] {
                    put(st, TaskKind::Action);
                    put(st, TaskKind::Compensation);
                }
            }
        }
    }
    out
}

/// Waits for every saga to finish and checks its state, its steps' states
/// and attempts (`deploy_attempts` of `deploy_containers`, one of every
/// other step), that the engine knows no other saga, and that the ledger
/// holds exactly the expected effects. Returns the ledger.
async fn check_outcome(
    world: &World,
    sagas: &[Started],
    deploy_attempts: usize,
) -> Vec<LedgerEntry> {
    for s in sagas {
        let d = terminal(world, &s.id).await;
        let states: Vec<String> = step_states(&d).into_iter().map(|(_, st)| st).collect();
        // (actions, compensations) each step ran.
        let mut attempts: Vec<(usize, usize)> = d
            .saga
            .steps
            .iter()
            .map(|st| {
                let comp = st
                    .attempts
                    .iter()
                    .filter(|a| a.kind == TaskKind::Compensation)
                    .count();
                (st.attempts.len() - comp, comp)
            })
            .collect();
        // The retried deploys, counted as one for the plans below.
        assert_eq!(attempts[1].0, deploy_attempts, "saga {}", s.id);
        attempts[1].0 = 1;
        match s.plan {
            Complete => {
                assert_eq!(d.saga.status, SagaStatus::Completed, "saga {}", s.id);
                assert_eq!(states, ["succeeded"; 4], "saga {}", s.id);
                assert_eq!(attempts, [(1, 0); 4], "saga {}", s.id);
            }
            FailAtStep3 => {
                assert!(
                    matches!(d.saga.status, SagaStatus::Compensated { .. }),
                    "saga {}: {:?}",
                    s.id,
                    d.saga.status
                );
                assert_eq!(
                    states,
                    ["compensated", "compensated", "failed", "skipped"],
                    "saga {}",
                    s.id
                );
                assert_eq!(attempts, [(1, 1), (1, 1), (1, 0), (0, 0)], "saga {}", s.id);
            }
        }
    }
    let listed = world
        .client
        .list(&ListRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list sagas");
    assert_eq!(listed.len(), sagas.len(), "the engine knows other sagas");

    let entries = ledger::read_dir(world.ledger_dir());
    assert_eq!(
        ledger::effect_counts(&entries),
        expected_effects(sagas),
        "ledger effects (saga, step, kind) -> count"
    );
    for s in sagas.iter().filter(|s| s.plan == FailAtStep3) {
        assert_eq!(
            ledger::step_order(&entries, &s.id, TaskKind::Compensation),
            ["deploy_containers", "register_manifest"]
        );
    }
    entries
}

/// Checks that `process`, started with `FAILPOINTS`, has crash points: the
/// binaries in the target dir are those of the last build, and a build of
/// the engine or examples package alone (`cargo test -p jetsaga-engine`)
/// leaves them without.
fn assert_armed(process: &ChildProcess) {
    let log = process.log();
    assert!(
        log.contains("crash points armed from FAILPOINTS"),
        "{} has no crash points: the last build of it was not `cargo build --workspace --bins` \
         (which turns on the `failpoints` feature for it); run that first. Log:\n{log}",
        process.name()
    );
}

/// Waits until `process` kills itself at crash point `point` and returns
/// the log line it wrote just before.
fn crashed_at(process: &ChildProcess, point: &str) -> String {
    let status = process.wait_for_exit(DEATH);
    assert_eq!(
        status.signal(),
        Some(9),
        "{} did not die by SIGKILL ({status}); log:\n{}",
        process.name(),
        process.log()
    );
    let needle = format!("fail point fired: killing the process (SIGKILL) fail_point=\"{point}\"");
    process
        .log()
        .lines()
        .find(|l| l.contains(&needle))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!(
                "{} died without passing {point}; log:\n{}",
                process.name(),
                process.log()
            )
        })
}

/// The value of `name=value` in a log line (span or event field).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    // The whole field name: `step=` must not match `other_step=`.
    let key = format!("{name}=");
    let at = line
        .match_indices(&key)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || matches!(line.as_bytes()[i - 1], b' ' | b'{'))?
        + key.len();
    let rest = &line[at..];
    let end = rest.find([' ', '}', ':']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// A numeric field of a log line.
fn number(line: &str, name: &str) -> usize {
    field(line, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {name}= in {line:?}"))
}

/// The last line of `log` before the crash line that contains `needle`.
fn last_before_crash<'a>(log: &'a str, needle: &str) -> &'a str {
    let crash = log
        .find("fail point fired")
        .expect("the log has the crash line");
    log[..crash]
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} before the crash in:\n{log}"))
}

/// Waits until the engine's consumers of results (the results stream:
/// retryable results and replays) and outcomes (the outcomes stream:
/// recorded outcomes) have nothing pending and nothing unacknowledged (what
/// the killed engine had pulled came again after `ack_wait` and was
/// acknowledged), then returns their deliveries beyond one per message:
/// the results the engine received more than once.
async fn results_redelivered(world: &World) -> u64 {
    let js = async_nats::jetstream::new(world.nats.client().await);
    let subjects = Subjects::new("jetsaga");
    let mut redelivered = 0;
    for (stream, consumer) in [
        (subjects.results_stream(), subjects.engine_consumer()),
        (
            subjects.outcomes_stream(),
            subjects.engine_outcomes_consumer_of(0),
        ),
    ] {
        let mut stream = js.get_stream(&stream).await.expect("results stream");
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(&consumer)
            .await
            .expect("engine consumer");
        let delivered = wait_until("every result acknowledged", SETTLE, || {
            let mut consumer = consumer.clone();
            async move {
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0)
                    .then_some(info.delivered.consumer_sequence)
            }
        })
        .await;
        // Every message of both streams is a result (the engine consumers
        // are the same since the first start: none was created anew).
        let messages = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        redelivered += delivered - messages;
    }
    redelivered
}

/// The engine side of a test: the world after the crash and restart.
struct EngineRun {
    /// The log of the killed engine.
    crashed_log: String,
    /// The log of the restarted engine, once every saga finished and every
    /// result was acknowledged.
    restarted_log: String,
    /// Results the engine received more than once.
    redelivered: u64,
}

/// Starts the engine with `FAILPOINTS=<point>=<actions>`, the
/// [`ENGINE_PLANS`] sagas, then the workers; waits for the engine to die at
/// `point`, restarts it without crash points, checks the outcome, that no
/// handler ran twice, and that the engine refused nothing but results it
/// received again.
async fn engine_crash(point: &str, actions: &str) -> EngineRun {
    let failpoints = format!("{point}={actions}");
    let mut world =
        World::start_with_env(&["--ack-wait", ACK_WAIT], &[("FAILPOINTS", &failpoints)]).await;
    assert_armed(&world.engine.process);
    world.apply_example("deploy_environment").await;
    let sagas = start_all(&world, &ENGINE_PLANS, &json!({})).await;
    let _workers = world.example_workers("deploy-workers", &["--ack-wait", ACK_WAIT]);

    crashed_at(&world.engine.process, point);
    let crashed_log = world.engine.process.log();
    world.engine.restart();
    let entries = check_outcome(&world, &sagas, 1).await;
    assert!(
        ledger::duplicate_counts(&entries).is_empty(),
        "a handler ran twice: {:?}",
        ledger::duplicate_counts(&entries)
    );
    let redelivered = results_redelivered(&world).await;
    let restarted_log = world.engine.process.log();
    // Whatever came again was refused as already applied or applied now;
    // nothing but redelivered results was refused.
    let rejected = rejected_results(&restarted_log);
    assert!(
        rejected as u64 <= redelivered,
        "{rejected} results refused, {redelivered} redelivered"
    );
    assert_eq!(
        restarted_log.matches("event rejected").count(),
        rejected,
        "only redelivered results may be refused:\n{restarted_log}"
    );
    EngineRun {
        crashed_log,
        restarted_log,
        redelivered,
    }
}

/// Results the restarted engine refused as already applied.
fn rejected_results(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("event rejected") && l.contains("event=\"result\""))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_after_commit_before_flush() {
    // Passes 1-4 are the starts; the sixth is the second batch of results.
    let run = engine_crash("partition.after_commit", "5*off->return").await;
    let commit = last_before_crash(&run.crashed_log, "group commit");
    let acks = number(commit, "acks");
    assert!(acks >= 1, "the crashed batch carried results: {commit}");
    // Nothing of the batch was acknowledged: every result in it came again,
    // to be applied now, or refused if sled had kept that part of the
    // unflushed batch. (Results of the batch before, durable, may come
    // again too when the crash caught their acks in the client's buffer.)
    assert!(
        run.redelivered >= acks as u64,
        "{} results redelivered, the crashed batch had {acks}",
        run.redelivered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_after_flush_before_acks() {
    let run = engine_crash("partition.after_flush", "6*off->return").await;
    let commit = last_before_crash(&run.crashed_log, "group commit");
    let acks = number(commit, "acks");
    assert!(acks >= 1, "the crashed batch carried results: {commit}");
    // The batch was durable, its acks never left: each of its results came
    // again and was refused as already applied. (Acks of the batch before,
    // durable too, may have been caught in the client's buffer by the kill:
    // their results come again and are refused the same way.)
    let refused = rejected_results(&run.restarted_log);
    assert!(
        refused >= acks,
        "{refused} results refused, the crashed batch had {acks}; restarted engine log:\n{}",
        run.restarted_log
    );
    for line in run
        .restarted_log
        .lines()
        .filter(|l| l.contains("event rejected") && l.contains("event=\"result\""))
    {
        assert!(
            line.contains("is already") || line.contains("stale or duplicate"),
            "a redelivered result was refused for another reason than being applied: {line}"
        );
    }
    assert!(run.redelivered >= acks as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_after_publish_before_outbox_removal() {
    // The starts publish one row each (some rounds may take two): the fifth
    // round is surely after the workers started.
    let run = engine_crash("relay.after_publish", "4*off->return").await;
    let round = last_before_crash(&run.crashed_log, "outbox rows published");
    let published = number(round, "published");
    assert!(published >= 1, "{round}");
    // The restarted engine published those rows again, and JetStream
    // recognised each of them by its Nats-Msg-Id. It may publish more again:
    // its store is not flushed per batch (the journal is what is durable),
    // so a store that lost its last records catches up from the journal and
    // publishes again what those records' outbox held: copies of rows
    // already out are duplicates too, and the sagas' ends and the ledger
    // (checked by `engine_crash`) show nothing ran twice.
    let duplicates: usize = run
        .restarted_log
        .lines()
        .filter(|l| l.contains("outbox rows published"))
        .map(|l| number(l, "duplicates"))
        .sum();
    assert!(
        duplicates >= published,
        "{duplicates} duplicates for {published} rows published before the kill; restarted engine log:\n{}",
        run.restarted_log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_between_intake_and_partition() {
    // API starts do not pass the intake: the third pass is the third result.
    let run = engine_crash("intake.before_send", "2*off->return").await;
    // That result (and whatever else was pulled, unacknowledged) came
    // again; the sagas finishing exactly as planned shows it was applied.
    assert!(
        run.redelivered >= 1,
        "the result pulled by the killed engine was not delivered again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_before_answering_a_start_keeps_the_saga() {
    // The first flush is the apply of the definitions (which goes through
    // the partition, to be journaled); the second is the start's.
    let failpoints = "partition.after_flush=1*off->return";
    let mut world =
        World::start_with_env(&["--ack-wait", ACK_WAIT], &[("FAILPOINTS", failpoints)]).await;
    assert_armed(&world.engine.process);
    world.apply_example("deploy_environment").await;
    let _workers = world.example_workers("deploy-workers", &["--ack-wait", ACK_WAIT]);

    // The start is durable, but the engine dies before answering it.
    let key = "crash-points-lost-reply";
    let hasty = world.client.clone().with_timeout(Duration::from_secs(3));
    let lost = hasty
        .start(
            "deploy_environment",
            input(0, Complete, &json!({})),
            Some(key),
        )
        .await;
    assert!(lost.is_err(), "the killed engine answered: {lost:?}");
    crashed_at(&world.engine.process, "partition.after_flush");
    world.engine.restart();

    // The caller retries with its key and finds the saga the first call made.
    let again = world
        .client
        .start(
            "deploy_environment",
            input(0, Complete, &json!({})),
            Some(key),
        )
        .await
        .expect("start after the restart");
    assert!(!again.created, "the retried start made a second saga");
    let sagas = [Started {
        id: again.saga_id,
        plan: Complete,
    }];
    let entries = check_outcome(&world, &sagas, 1).await;
    assert!(ledger::duplicate_counts(&entries).is_empty());
}

/// The task a worker was handling when it killed itself, from the span
/// fields of its crash line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TaskRef {
    saga_id: String,
    step_id: String,
    kind: TaskKind,
    /// The task message's sequence in the tasks stream.
    stream_seq: String,
}

impl TaskRef {
    fn parse(line: &str) -> TaskRef {
        let get = |name| {
            field(line, name)
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        let kind = match get("kind").as_str() {
            "action" => TaskKind::Action,
            "compensation" => TaskKind::Compensation,
            other => panic!("kind {other} in {line:?}"),
        };
        TaskRef {
            saga_id: get("saga.id"),
            step_id: get("step"),
            kind,
            stream_seq: get("stream_seq"),
        }
    }

    fn key(&self) -> StepKey {
        (self.saga_id.clone(), self.step_id.clone(), self.kind)
    }

    /// Whether `line` was written while handling this task message.
    fn is_in(&self, line: &str) -> bool {
        field(line, "saga.id") == Some(&self.saga_id)
            && field(line, "step") == Some(&self.step_id)
            && field(line, "kind") == Some(&self.kind.to_string())
            && field(line, "stream_seq") == Some(&self.stream_seq)
    }
}

/// The worker side of a test, after the crash and the restart.
struct WorkerRun {
    /// The task in flight when the worker died.
    task: TaskRef,
    /// Worker names (`deploy-workers@host:pid`) end with the pid.
    crashed_pid: u32,
    restarted_pid: u32,
    restarted_log: String,
    entries: Vec<LedgerEntry>,
}

/// Runs the [`WORKER_PLANS`] sagas with the `container-engine` service in
/// a worker process of its own (one task at a time) started with
/// `FAILPOINTS=<point>=<actions>`, the other services in another; waits for
/// that worker to die at `point`, restarts it without crash points, and
/// checks the outcome. The engine never sees a result twice.
async fn worker_crash(point: &str, actions: &str, faults: &Value) -> WorkerRun {
    let failpoints = format!("{point}={actions}");
    let world = World::start(&["--ack-wait", ACK_WAIT]).await;
    world.apply_example("deploy_environment").await;
    let _others = world.example_workers(
        "deploy-workers",
        &[
            "--ack-wait",
            ACK_WAIT,
            "--service",
            "manifest",
            "--service",
            "gateway",
            "--service",
            "environment",
        ],
    );
    let args = [
        "--ack-wait",
        ACK_WAIT,
        "--service",
        "container-engine",
        "--concurrency",
        "1",
    ];
    let log_filter = ("RUST_LOG", "info,jetsaga_worker=debug");
    let doomed = world.example_workers_with_env(
        "deploy-workers",
        &args,
        &[("FAILPOINTS", &failpoints), log_filter],
    );
    assert_armed(&doomed);
    let sagas = start_all(&world, &WORKER_PLANS, faults).await;

    let task = TaskRef::parse(&crashed_at(&doomed, point));
    let restarted = world.example_workers_with_env("deploy-workers", &args, &[log_filter]);
    let retried = faults["deploy_containers"]["times"].as_u64().unwrap_or(0);
    let entries = check_outcome(&world, &sagas, 1 + retried as usize).await;
    // The saga may finish before the task comes again (after `ack_wait`)
    // when the result was out already: wait for the restarted worker to
    // acknowledge it, on its second delivery.
    let acked = wait_until(
        "the killed worker's task to be acknowledged",
        SETTLE,
        || async {
            restarted
                .log()
                .lines()
                .find(|l| l.contains("task acknowledged") && task.is_in(l))
                .map(str::to_string)
        },
    )
    .await;
    assert_eq!(field(&acked, "delivered"), Some("2"), "{acked}");
    let engine_log = world.engine.process.log();
    assert!(
        !engine_log.contains("event rejected"),
        "the engine saw a result twice:\n{engine_log}"
    );
    WorkerRun {
        task,
        crashed_pid: doomed.pid(),
        restarted_pid: restarted.pid(),
        restarted_log: restarted.log(),
        entries,
    }
}

impl WorkerRun {
    /// The one effect record of the crashed task, written by the killed worker.
    fn assert_effect_by_killed_worker(&self) {
        let effects = ledger::effects(
            &self.entries,
            &self.task.saga_id,
            &self.task.step_id,
            self.task.kind,
        );
        assert_eq!(effects.len(), 1);
        assert!(
            effects[0]
                .worker
                .ends_with(&format!(":{}", self.crashed_pid)),
            "{:?}",
            effects[0]
        );
    }

    /// Lines of the restarted worker that replayed a recorded outcome.
    fn replays(&self) -> Vec<&str> {
        self.restarted_log
            .lines()
            .filter(|l| l.contains("outcome already recorded; replaying it"))
            .collect()
    }

    /// The restarted worker's lines for the crashed task that contain
    /// `needle`.
    fn lines_of_task(&self, needle: &str) -> Vec<&str> {
        self.restarted_log
            .lines()
            .filter(|l| l.contains(needle) && self.task.is_in(l))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_handler_before_record() {
    let run = worker_crash("worker.after_handler", "return", &json!({})).await;
    run.assert_effect_by_killed_worker();
    // Nothing was recorded: the redelivered task ran the handler again, and
    // the downstream idempotency key (the ledger's) suppressed the repeat,
    // once, for that task alone.
    let mut want = BTreeMap::new();
    want.insert(run.task.key(), 1);
    assert_eq!(ledger::duplicate_counts(&run.entries), want);
    let dup = &ledger::duplicates(
        &run.entries,
        &run.task.saga_id,
        &run.task.step_id,
        run.task.kind,
    )[0];
    assert!(dup.worker.ends_with(&format!(":{}", run.restarted_pid)));
    assert!(run.replays().is_empty(), "{}", run.restarted_log);
    // The restarted worker's outcome is the record, and so the result.
    assert_eq!(
        run.lines_of_task("outcome recorded as the result").len(),
        1,
        "{}",
        run.restarted_log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_record_before_ack() {
    // The outcome was recorded, which is publishing it: the redelivered
    // task found this attempt's record, ran nothing and published nothing.
    let run = worker_crash("worker.after_record", "1*off->return", &json!({})).await;
    run.assert_effect_by_killed_worker();
    assert!(ledger::duplicate_counts(&run.entries).is_empty());
    assert_eq!(
        run.lines_of_task("this attempt's outcome is recorded already")
            .len(),
        1,
        "{}",
        run.restarted_log
    );
    assert!(
        run.lines_of_task("result published").is_empty()
            && run
                .lines_of_task("outcome recorded as the result")
                .is_empty(),
        "{}",
        run.restarted_log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_publish_before_ack() {
    // Every deploy's first attempt fails retryably (not recorded: published
    // on the results subject); the worker dies after the first such
    // publish. The redelivered task (after `ack_wait`) either ran the
    // handler again (the fault struck before any effect again) or, when the
    // second attempt had recorded its outcome meanwhile, replayed that;
    // either way its result bore the first one's Nats-Msg-Id and JetStream
    // dropped it. The second attempts did the effects, once each.
    let faults = json!({"deploy_containers": {"fail": "retryable", "times": 1}});
    let run = worker_crash("worker.after_publish", "return", &faults).await;
    assert!(ledger::duplicate_counts(&run.entries).is_empty());
    let effects = ledger::effects(
        &run.entries,
        &run.task.saga_id,
        &run.task.step_id,
        run.task.kind,
    );
    assert_eq!(effects.len(), 1, "{effects:?}");
    assert_eq!(effects[0].attempt, 2, "{:?}", effects[0]);
    let republished = run.lines_of_task("result published");
    assert_eq!(republished.len(), 1, "{}", run.restarted_log);
    let line = republished[0];
    assert_eq!(field(line, "duplicate"), Some("true"), "{line}");
    assert_eq!(field(line, "attempt"), Some("1"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_killed_with_steps_in_flight() {
    let mut world = World::start(&["--ack-wait", ACK_WAIT]).await;
    world.apply_example("deploy_environment").await;
    let workers = world.example_workers("deploy-workers", &["--ack-wait", ACK_WAIT]);
    // Every deploy takes a second, so the kill finds them mid-handler.
    let slow = json!({"deploy_containers": {"delay_ms": 1000}});
    let sagas = start_all(&world, &ENGINE_PLANS, &slow).await;
    // Every deploy handler is in its delay: the kill finds them all mid-step.
    wait_until("every deploy handler to be running", READY, || async {
        (workers.log().matches("injected delay").count() == sagas.len()).then_some(())
    })
    .await;
    for s in &sagas {
        let d = world.client.get(&s.id).await.expect("get");
        assert_eq!(
            step_states(&d)[1],
            ("deploy_containers".to_string(), "running".to_string())
        );
    }

    world.nats.kill();
    world.nats.restart();

    let entries = check_outcome(&world, &sagas, 1).await;
    // Handlers caught by the kill may run twice (a task redelivered while
    // its first run waits for NATS); the ledger's key makes that harmless,
    // and the effects above are exact either way.
    let dups: usize = ledger::duplicate_counts(&entries).values().sum();
    eprintln!("nats restart: {dups} duplicate handler run(s) suppressed by the ledger");
    assert!(workers.try_wait().is_none(), "the workers died");
}
