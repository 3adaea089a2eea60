//! Sagas of the example definitions with planned faults, run by the
//! example worker binaries and judged exactly-once against their ledgers:
//! what chaos.rs and ha.rs share.
//!
//! [`plan`] draws sagas whose final state follows from their input alone;
//! [`Workers`] runs the worker processes; [`start_one`] starts a saga,
//! retrying while no engine answers; [`settle`] waits until sagas are
//! terminal; [`judge`] holds each against its plan and the ledger.

use futures::StreamExt;
use jetsaga_cli::client::{Client, ClientError};
use jetsaga_core::saga::definition;
use jetsaga_examples::ledger;
use jetsaga_protocol::api::{AttemptOutcome, ListRequest, SagaDefinition, SagaDetail};
use jetsaga_tests::{ChildProcess, bin_path};
use jetsaga_worker::protocol::TaskKind;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::READY;

/// The example definitions the sagas are drawn from.
pub const DEFINITIONS: [&str; 4] = [
    "deploy_environment",
    "create_booking",
    "collect_payment",
    "data_ingest_pipeline",
];
/// The worker processes: binary per slot. Two `deploy-workers` share every
/// deploy queue; `booking-workers` and `payment-workers` share `invoicing`
/// and `email`.
pub const WORKERS: [&str; 5] = [
    "deploy-workers",
    "deploy-workers",
    "booking-workers",
    "payment-workers",
    "ingest-workers",
];
/// `ack_wait` of the service consumers: how soon a killed worker's task is
/// delivered again. Every worker process passes the same value (the first
/// one creates the consumer).
pub const WORKER_ACK_WAIT: &str = "2s";
/// How long one saga start may keep being retried.
pub const START_DEADLINE: Duration = Duration::from_secs(90);
/// Attempts of a policy that injected retryable failures leave unused.
///
/// A crash may legitimately cost an attempt: results the killed engine had
/// pulled but not yet acknowledged come back only after its consumers'
/// `ack_wait` (10 s by default), close to or later than the 10-15 s
/// timeouts of some steps, which then time out and go to the next
/// attempt (replayed by the worker). With one attempt spare, one such
/// crash at the wrong moment would exhaust the policy and leave the step
/// `compensation_failed` ("action outcome unknown"), which is the contract
/// but not what this test is about; two spare attempts make that need two
/// crashes landing on the same step within milliseconds.
pub const SPARE_ATTEMPTS: u32 = 2;

// ---------------------------------------------------------------- the plan

/// One saga to start: its definition, input (with faults) and what must
/// become of it.
#[derive(Debug, Clone)]
pub struct SagaPlan {
    /// Position in the plan.
    pub index: usize,
    /// Definition name.
    pub saga: String,
    /// The definition (for step relations and expectations).
    pub def: Arc<SagaDefinition>,
    /// Idempotency key of the start.
    pub key: String,
    /// Input, with the `faults` object.
    pub input: Value,
    /// Step whose action fails fatally, if any.
    pub fatal: Option<usize>,
    /// Step whose compensation fails fatally, if any (an ancestor of `fatal`).
    pub comp_fatal: Option<usize>,
}

impl SagaPlan {
    /// The saga states this plan may end in (one, unless the definition
    /// allows a race between independent branches to decide).
    pub fn expected_saga_states(&self) -> Vec<&'static str> {
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
    pub fn expected_step_states(&self) -> Vec<Vec<&'static str>> {
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
pub fn is_rolled_back(name: &str) -> bool {
    matches!(
        name,
        "compensated" | "not_compensable" | "failed" | "skipped"
    )
}

/// Steps `step` depends on, directly or not.
pub fn ancestors(def: &SagaDefinition, step: usize) -> BTreeSet<usize> {
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
pub fn descendants(def: &SagaDefinition, step: usize) -> BTreeSet<usize> {
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
pub fn plan(
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

// ---------------------------------------------------------------- processes

/// The worker processes and their logs.
pub struct Workers {
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
    pub fn start(nats_url: &str, ledger_dir: &Path) -> Workers {
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

    pub fn spawn(&mut self, slot: usize) {
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

    pub fn kill(&mut self, slot: usize) {
        if let Some(mut p) = self.slots[slot].take() {
            p.kill();
            self.old_logs.push_str(&p.log());
        }
    }

    pub fn all_logs(&self) -> String {
        let mut all = self.old_logs.clone();
        for p in self.slots.iter().flatten() {
            all.push_str(&p.log());
        }
        all
    }
}

// ---------------------------------------------------------------- starting

/// Shared start statistics.
#[derive(Debug, Default)]
pub struct StartStats {
    /// Start calls that failed and were retried.
    pub retries: AtomicUsize,
    /// Retried starts that found their saga already created by an earlier
    /// call (its reply was lost).
    pub found_existing: AtomicUsize,
}

/// Starts one saga, retrying while the engine (or NATS) is away. The
/// idempotency key makes every retry name the same saga.
pub async fn start_one(client: &Client, p: &SagaPlan, stats: &StartStats) -> String {
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

/// Errors a start is retried on: nobody answers, or not in time, or no
/// engine leads right now (a takeover).
pub fn is_transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::NoEngine { .. } | ClientError::Timeout { .. } | ClientError::Nats(_)
    ) || e.code() == "E-UNAVAILABLE"
        || e.code() == "E-NO-LEADER"
}

// ---------------------------------------------------------------- the end

/// Polls until every saga is terminal; on timeout prints the others with
/// their steps and panics.
pub async fn settle(
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
pub fn describe_steps(d: &SagaDetail) -> String {
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
pub async fn all_saga_ids(client: &Client) -> BTreeSet<String> {
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
pub fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// Runs `f` (blocking harness calls) without stalling the runtime's other
/// tasks.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// Applies the example [`DEFINITIONS`] and answers them as stored (with
/// their version numbers), by name.
pub async fn apply_definitions(client: &Client) -> BTreeMap<String, Arc<SagaDefinition>> {
    let mut defs = BTreeMap::new();
    for name in DEFINITIONS {
        let path = jetsaga_tests::workspace_root()
            .join("examples/definitions")
            .join(format!("{name}.yaml"));
        let parsed = definition::parse_file(&path).expect("example definition parses");
        let applied = client.apply(parsed.sagas).await.expect("apply definitions");
        assert_eq!(applied.len(), 1);
        defs.insert(name.to_string(), stored_definition(client, name).await);
    }
    defs
}

/// The stored version of definition `name` (what its sagas run).
pub async fn stored_definition(client: &Client, name: &str) -> Arc<SagaDefinition> {
    let stored = client
        .definitions()
        .await
        .expect("list definitions")
        .into_iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("definition {name} is listed"));
    Arc::new(stored)
}

/// What [`judge`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Every violation, one line each.
    pub failures: Vec<String>,
    /// Final saga states and how many sagas ended in each.
    pub by_state: BTreeMap<&'static str, usize>,
    /// Effects (actions and compensations) in the ledger.
    pub total_effects: usize,
    /// Effects the sagas' final states account for.
    pub expected_effects: usize,
    /// Duplicate runs the ledger suppressed.
    pub duplicates: usize,
    /// Steps those duplicates were on.
    pub duplicate_steps: usize,
    /// Attempts that timed out.
    pub timed_out_attempts: usize,
}

impl Verdict {
    /// Panics listing (up to 40 of) the violations, if any; `context` says
    /// how to replay the run.
    pub fn assert_clean(&self, context: &str) {
        if self.failures.is_empty() {
            return;
        }
        for f in self.failures.iter().take(40) {
            eprintln!("FAIL {f}");
        }
        panic!("{} violations ({context})", self.failures.len());
    }
}

/// Holds every saga (`ids[i]` started from `plans[i]`, `details` its final
/// state) against its plan and the ledger in `ledger_dir`:
///
/// - the saga is terminal, in the state its faults call for, behind its key;
/// - every step whose action the engine says happened (`succeeded`,
///   `compensated`, `compensation_failed`, `not_compensable`) has exactly
///   one action effect in the ledger; every other step has none;
/// - every `compensated` step has exactly one compensation effect; no other
///   step has any;
/// - the ledger holds no effect beyond those.
pub fn judge(
    plans: &[SagaPlan],
    ids: &[String],
    details: &BTreeMap<String, SagaDetail>,
    ledger_dir: &Path,
) -> Verdict {
    assert_eq!(plans.len(), ids.len(), "one saga id per plan");
    let ours: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ours.len(), ids.len(), "two plans got the same saga");
    let entries = ledger::read_dir(ledger_dir);
    let effects = ledger::effect_counts(&entries);
    let duplicates = ledger::duplicate_counts(&entries);
    let mut v = Verdict {
        duplicates: duplicates.values().sum(),
        duplicate_steps: duplicates.len(),
        ..Verdict::default()
    };
    for (p, id) in plans.iter().zip(ids) {
        let Some(d) = details.get(id) else {
            v.failures.push(format!(
                "saga #{} ({}) {id}: no final state",
                p.index, p.key
            ));
            continue;
        };
        let state = d.saga.status.name();
        *v.by_state.entry(state).or_default() += 1;
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
            v.failures
                .push(format!("wrong saga behind key {}: {}", p.key, why()));
        }
        if !p.expected_saga_states().contains(&state) {
            v.failures.push(format!(
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
            v.timed_out_attempts += st
                .attempts
                .iter()
                .filter(|a| a.outcome == Some(AttemptOutcome::TimedOut))
                .count();
            if !allowed.contains(&name) {
                v.failures.push(format!(
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
                    v.failures.push(format!(
                        "step {} in non-terminal state {other}: {}",
                        sd.id,
                        why()
                    ));
                    continue;
                }
            };
            v.expected_effects += action_want + comp_want;
            let count = |kind| {
                effects
                    .get(&(id.clone(), sd.id.clone(), kind))
                    .copied()
                    .unwrap_or(0)
            };
            let (action_got, comp_got) = (count(TaskKind::Action), count(TaskKind::Compensation));
            if action_got != action_want {
                v.failures.push(format!(
                    "step {} ({name}) has {action_got} action effects, expected {action_want}: {}",
                    sd.id,
                    why()
                ));
            }
            if comp_got != comp_want {
                v.failures.push(format!(
                    "step {} ({name}) has {comp_got} compensation effects, expected {comp_want}: {}",
                    sd.id,
                    why()
                ));
            }
        }
    }
    // Nothing in the ledger beyond what the steps account for.
    v.total_effects = effects.values().sum();
    if v.total_effects != v.expected_effects {
        let strays: Vec<_> = effects
            .keys()
            .filter(|(saga, _, _)| !ours.contains(saga))
            .take(10)
            .collect();
        v.failures.push(format!(
            "the ledger holds {} effects, the sagas account for {}; effects of unknown sagas: {strays:?}",
            v.total_effects, v.expected_effects
        ));
    }
    v
}

/// Asserts that the engine knows exactly the sagas `ids` (a retried start
/// never made a second saga, and none was lost).
pub async fn assert_engine_knows_exactly(client: &Client, ids: &[String]) {
    let known = all_saga_ids(client).await;
    let ours: BTreeSet<String> = ids.iter().cloned().collect();
    let lost: Vec<&String> = ours.difference(&known).take(10).collect();
    let extra: Vec<&String> = known.difference(&ours).take(10).collect();
    assert!(
        lost.is_empty() && extra.is_empty(),
        "the engine does not know exactly the sagas started: {} missing (e.g. {lost:?}), {} unknown (e.g. {extra:?}; a retried start made a second saga?)",
        ours.difference(&known).count(),
        known.difference(&ours).count()
    );
}
