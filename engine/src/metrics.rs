//! The engine's Prometheus metrics: what they are, where they come from.
//!
//! Saga and step metrics are derived in one place, [`SagaMetrics::transition`],
//! which the partition calls for every transition it commits with the saga
//! as it was before ([`Before`]) and as it is after. Comparing the two says
//! everything: a saga that became terminal finished (with its status and
//! duration), an attempt whose outcome appeared ended (with its outcome and
//! duration). Nothing else records saga or step metrics, so a new event of
//! the state machine is counted as soon as it changes the saga.
//!
//! Gauges that mirror state elsewhere are polled by [`poll_gauges`]: the
//! outbox and timer backlogs from the store, the depth of each service's work
//! queue from its JetStream consumer.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `saga_executions_total` | counter | `saga_name`, `status` (terminal state) |
//! | `saga_duration_seconds` | histogram | `saga_name`, `status` (created → terminal) |
//! | `saga_active` | gauge | `saga_name` (sagas not terminal) |
//! | `saga_step_attempts_total` | counter | `saga_name`, `step`, `service`, `outcome` (action attempts) |
//! | `saga_step_duration_seconds` | histogram | `saga_name`, `step`, `service` (action attempt dispatched → its result) |
//! | `saga_compensations_total` | counter | `saga_name`, `step`, `service`, `outcome` (compensation attempts) |
//! | `saga_queue_depth` | gauge | `service` |
//! | `engine_rejected_messages_total` | counter | `reason` |
//! | `engine_http_auth_refused_total` | counter | `reason` (`missing`, `malformed`, `unknown`, `session`, `csrf`, `forbidden`: [`AUTH_REFUSED_REASONS`]) |
//! | `engine_publish_duplicates_total` | counter | |
//! | `engine_events_total` | counter | `type` (lifecycle events committed to the outbox) |
//! | `engine_outbox_backlog`, `engine_timer_backlog` | gauge | |
//! | `engine_step_timeouts` | gauge | (step timeouts armed in memory) |
//! | `engine_breaker_state` | gauge | `service` (0 closed, 1 half-open, 2 open; [`jetsaga_core::admission`]) |
//! | `engine_breaker_transitions_total` | counter | `service`, `to` (`open`, `half_open`, `closed`) |
//! | `engine_held_tasks`, `engine_service_in_flight` | gauge | `service` (services with a policy) |
//! | `engine_running_sagas` | gauge | (running or compensating, all definitions: [`jetsaga_core::limits`]) |
//! | `engine_queued_sagas` | gauge | `saga_name` (sagas waiting in the start queue) |
//! | `engine_saga_queue_wait_seconds` | histogram | `saga_name` (queued → admitted or cancelled) |
//! | `engine_pruned_sagas_total` | counter | (finished sagas deleted by [`crate::retention`]) |
//! | `engine_stored_sagas`, `engine_store_size_bytes` | gauge | |
//!
//! Attempt outcomes are `ok`, `retryable`, `fatal`, `timed_out` and
//! `abandoned` (in flight when the saga was cancelled without compensation).
//! No label carries a saga id: series grow with definitions, steps and
//! services, never with traffic. Counters whose label sets are known up
//! front start at zero, so a healthy engine shows 0 rather than no data:
//! each stored definition's executions and step attempts (every outcome),
//! the fixed rejection reasons ([`REJECT_REASONS`]), the lifecycle event
//! types, the transitions of each configured breaker, publish duplicates
//! and pruned sagas.

use async_nats::jetstream;
use futures::TryStreamExt;
use jetsaga_core::admission::{
    BREAKER_STATE, BREAKER_TRANSITIONS, HELD_TASKS, SERVICE_IN_FLIGHT, ServiceReport,
};
use jetsaga_core::limits::{LimitGauges, QUEUE_WAIT, QUEUED_SAGAS, RUNNING_SAGAS};
use jetsaga_core::saga::definition::{SagaDefinition, StepDefinition};
use jetsaga_core::saga::state::{Attempt, AttemptOutcome, Millis, Saga, SagaState};
use jetsaga_core::saga::transition::Transition;
use jetsaga_protocol::{Subjects, TaskKind};
use jetsaga_store::{DefinitionTable, DiskUsage, OutboxTable, SagaTable, TimerTable};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sagas that reached a terminal state (counter).
pub const SAGA_EXECUTIONS: &str = "saga_executions_total";
/// Saga creation to terminal state, seconds (histogram).
pub const SAGA_DURATION: &str = "saga_duration_seconds";
/// Sagas not terminal (gauge).
pub const SAGA_ACTIVE: &str = "saga_active";
/// Ended attempts of step actions (counter).
pub const STEP_ATTEMPTS: &str = "saga_step_attempts_total";
/// Action attempt dispatch to result, seconds (histogram).
pub const STEP_DURATION: &str = "saga_step_duration_seconds";
/// Ended attempts of step compensations (counter).
pub const COMPENSATIONS: &str = "saga_compensations_total";
/// Tasks waiting in a service's work queue (gauge).
pub const QUEUE_DEPTH: &str = "saga_queue_depth";
/// Messages the engine refused (counter).
pub const REJECTED: &str = "engine_rejected_messages_total";
/// HTTP requests refused for their bearer token, by reason (counter).
pub const HTTP_AUTH_REFUSED: &str = "engine_http_auth_refused_total";
/// Lifecycle events committed to the outbox, by type suffix (counter).
pub const EVENTS: &str = "engine_events_total";
/// Outbox rows JetStream reported as duplicates (counter).
pub const PUBLISH_DUPLICATES: &str = "engine_publish_duplicates_total";
/// Outbox rows not yet published (gauge).
pub const OUTBOX_BACKLOG: &str = "engine_outbox_backlog";
/// Armed durable timers (gauge).
pub const TIMER_BACKLOG: &str = "engine_timer_backlog";
/// Step timeouts armed in memory (gauge, per partition).
pub const STEP_TIMEOUTS: &str = "engine_step_timeouts";
/// Finished sagas deleted by retention (counter).
pub const PRUNED_SAGAS: &str = "engine_pruned_sagas_total";
/// Sagas in the store, finished or not (gauge).
pub const STORED_SAGAS: &str = "engine_stored_sagas";
/// Bytes the store's files take on disk (gauge).
pub const STORE_SIZE: &str = "engine_store_size_bytes";

/// Partition leases this engine took (counter).
pub const LEASE_ACQUISITIONS: &str = "engine_lease_acquisitions_total";
/// Partition leases this engine lost without releasing them (counter).
pub const LEASE_LOSSES: &str = "engine_lease_losses_total";
/// Time to append one record to a partition's journal (histogram).
pub const JOURNAL_APPEND: &str = "engine_journal_append_seconds";
/// How far behind its writer the last record a standby applied was (gauge).
pub const STANDBY_LAG_MS: &str = "engine_standby_lag_milliseconds";
/// Partitions this engine leads (gauge).
pub const LEADING: &str = "engine_partitions_led";
/// The installation's partition count (gauge).
pub const PARTITIONS: &str = "engine_partitions";
/// Time a partition was without a leader before this engine took it (histogram).
pub const LEADERLESS: &str = "engine_partition_leaderless_seconds";

/// The `reason`s of the HTTP API's refused requests, each created at zero
/// (the API's `Refusal::reason`).
pub const AUTH_REFUSED_REASONS: [&str; 6] = [
    "missing",
    "malformed",
    "unknown",
    "session",
    "csrf",
    "forbidden",
];

/// How often [`poll_gauges`] polls, by default.
pub const POLL_EVERY: Duration = Duration::from_secs(5);

/// The recorder's handle, once [`install`] succeeded.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls do
/// nothing) and describes the engine's metrics. When the embedding program
/// installed a recorder of its own, the metrics go there and [`render`]
/// has nothing to give.
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let installed = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &jetsaga_protocol::telemetry::DURATION_BUCKETS,
        )
        .and_then(PrometheusBuilder::install_recorder);
    match installed {
        Ok(handle) => {
            let _ = HANDLE.set(handle);
            describe();
        }
        Err(e) => tracing::warn!(error = %e, "metrics are not exported on /metrics"),
    }
}

/// Every metric of the process in the Prometheus text format, or `None`
/// when [`install`] did not install the recorder.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SAGA_EXECUTIONS,
        "Sagas that reached a terminal state, by definition and terminal state"
    );
    describe_histogram!(
        SAGA_DURATION,
        Unit::Seconds,
        "Time from a saga's creation to its terminal state"
    );
    describe_gauge!(
        SAGA_ACTIVE,
        "Sagas not terminal yet (running or compensating)"
    );
    describe_counter!(
        STEP_ATTEMPTS,
        "Ended attempts of step actions, by outcome (ok, retryable, fatal, timed_out, abandoned)"
    );
    describe_histogram!(
        STEP_DURATION,
        Unit::Seconds,
        "Time from dispatching an action attempt to its result (timed out and abandoned attempts excluded)"
    );
    describe_counter!(
        COMPENSATIONS,
        "Ended attempts of step compensations, by outcome"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Tasks in a service's work queue: not yet delivered plus delivered and not acknowledged"
    );
    describe_counter!(
        REJECTED,
        "Messages and requests the engine refused, by reason"
    );
    describe_counter!(
        HTTP_AUTH_REFUSED,
        "HTTP requests refused for their bearer token: missing, malformed, unknown, or of a role below the route's (forbidden)"
    );
    describe_counter!(
        EVENTS,
        "Lifecycle events (CloudEvents) committed to the outbox with their transition, by type"
    );
    describe_counter!(
        PUBLISH_DUPLICATES,
        "Outbox rows JetStream already had (republished after a crash)"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Outbox rows durable in the store, not yet published to JetStream"
    );
    describe_gauge!(
        TIMER_BACKLOG,
        "Durable timers armed (retry delays, saga timeouts, timeouts of released held tasks)"
    );
    describe_gauge!(
        STEP_TIMEOUTS,
        "Step timeouts armed in memory: one per dispatched attempt in flight, rebuilt from the sagas at start and takeover"
    );
    describe_gauge!(
        RUNNING_SAGAS,
        "Sagas running or compensating, over all definitions: what max_running_sagas bounds"
    );
    describe_gauge!(
        QUEUED_SAGAS,
        "Sagas waiting in the durable start queue for room under a concurrency limit"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time a saga waited in the start queue, from its start to its admission (or cancellation)"
    );
    describe_counter!(
        PRUNED_SAGAS,
        "Finished sagas deleted because they were finished for longer than the retention"
    );
    describe_gauge!(STORED_SAGAS, "Sagas in the store, finished or not");
    describe_gauge!(
        STORE_SIZE,
        Unit::Bytes,
        "Bytes the store's files take on disk"
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker of a service (services with one configured): 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker state changes, by service and the state entered (open, half_open, closed)"
    );
    describe_gauge!(
        HELD_TASKS,
        "Tasks held durably for a service by its open circuit breaker or its max_in_flight"
    );
    describe_gauge!(
        SERVICE_IN_FLIGHT,
        "Tasks of a service (with a policy) dispatched and not ended"
    );
    describe_counter!(LEASE_ACQUISITIONS, "Partition leases this engine took");
    describe_counter!(
        LEASE_LOSSES,
        "Partition leases this engine lost (another engine took it, or it could not be renewed in time)"
    );
    describe_histogram!(
        JOURNAL_APPEND,
        Unit::Seconds,
        "Time to append one group commit's record to the partition's journal"
    );
    describe_gauge!(
        STANDBY_LAG_MS,
        "How far behind its leader the last journal record this standby applied was, in milliseconds"
    );
    describe_gauge!(LEADING, "Partitions this engine leads");
    describe_gauge!(
        PARTITIONS,
        "The installation's number of partitions: summed over the engines, engine_partitions_led is this when every partition has a leader"
    );
    describe_histogram!(
        LEADERLESS,
        Unit::Seconds,
        "Time a partition was without a leader (since the previous leader's last renewal) when this engine took it"
    );
    metrics::counter!(LEASE_ACQUISITIONS).increment(0);
    metrics::counter!(LEASE_LOSSES).increment(0);
    metrics::gauge!(LEADING).set(0.0);
    metrics::gauge!(STANDBY_LAG_MS, "partition" => "0").set(0.0);
    // Counters whose label sets are known up front exist at zero from the
    // start, so that a healthy engine shows 0 rather than "No data" and the
    // first occurrence is an increase.
    metrics::counter!(PRUNED_SAGAS).absolute(0);
    metrics::counter!(PUBLISH_DUPLICATES).increment(0);
    for reason in REJECT_REASONS {
        metrics::counter!(REJECTED, "reason" => *reason).increment(0);
    }
    for kind in crate::events::type_suffixes() {
        metrics::counter!(EVENTS, "type" => kind).increment(0);
    }
    for reason in AUTH_REFUSED_REASONS {
        metrics::counter!(HTTP_AUTH_REFUSED, "reason" => reason).increment(0);
    }
}

/// Counts an HTTP request refused for its bearer token.
pub fn http_auth_refused(reason: &'static str) {
    metrics::counter!(HTTP_AUTH_REFUSED, "reason" => reason).increment(1);
}

/// The fixed `reason`s of [`REJECTED`], each created at zero when the
/// metrics are installed. Requests refused by the NATS or HTTP API (and
/// starts refused by a trigger) are counted under their error code instead,
/// a series that appears with the first such refusal.
pub const REJECT_REASONS: &[&str] = &[
    // Late or repeated results, expected after redeliveries.
    "stale",
    "terminal",
    // Something to fix.
    "not_applicable",
    "malformed",
    "oversized",
    "subject_mismatch",
    "unknown_saga",
    "unknown_definition",
    "unknown_step",
    "wrong_service",
    "unpublishable",
    "trigger_subject",
    "trigger_id",
    "trigger_mapping",
    "trigger_unmatched",
    // HTTP connections closed unanswered (`api::http::HEADER_TIMEOUT`, ...).
    "header_timeout",
    "tls_handshake_timeout",
];

// ---------------------------------------------------------------------------
// Transitions
// ---------------------------------------------------------------------------

/// Logs and counts a message the engine refused.
pub fn reject(source: &str, reason: &str, detail: &str) {
    tracing::warn!(source, reason, "rejected: {detail}");
    let reason = reason.to_string();
    metrics::counter!(REJECTED, "reason" => reason).increment(1);
}

/// Derives the saga metrics from the partition's transitions.
#[derive(Debug, Default)]
pub struct SagaMetrics {
    /// Definitions whose series exist.
    known: HashSet<String>,
    /// Definition versions whose step series exist.
    known_steps: HashSet<(String, u32)>,
    /// The `partition` label of the partition's gauges, in an installation
    /// of more than one (each partition sets its own).
    partition: Option<String>,
}

/// `base`, with the `partition` label when there is one.
fn with_partition(
    mut base: Vec<(&'static str, String)>,
    partition: Option<&str>,
) -> Vec<(&'static str, String)> {
    if let Some(p) = partition {
        base.push(("partition", p.to_string()));
    }
    base
}

impl SagaMetrics {
    /// The metrics of partition `partition` of an installation of
    /// `partitions`: with more than one, its gauges carry a `partition`
    /// label, so that the partitions an engine leads do not overwrite each
    /// other's.
    pub fn of_partition(partition: u32, partitions: u32) -> Self {
        Self {
            partition: (partitions > 1).then(|| partition.to_string()),
            ..Self::default()
        }
    }

    /// Sets the partition's gauges to zero as it stops leading: the engine
    /// that leads it next reports them, and a sum over the engines must
    /// not count them twice, nor an alert see a breaker it no longer
    /// runs. `services` are those it had gauges for, each with whether it
    /// has a breaker.
    pub fn retire(&self, services: &[(String, bool)]) {
        let partition = self.partition();
        for name in &self.known {
            self.active(name).set(0.0);
            metrics::gauge!(
                QUEUED_SAGAS,
                &with_partition(vec![("saga_name", name.clone())], partition)
            )
            .set(0.0);
        }
        metrics::gauge!(RUNNING_SAGAS, &with_partition(vec![], partition)).set(0.0);
        metrics::gauge!(STEP_TIMEOUTS, &with_partition(vec![], partition)).set(0.0);
        for (service, breaker) in services {
            let labels = with_partition(vec![("service", service.clone())], partition);
            metrics::gauge!(HELD_TASKS, &labels).set(0.0);
            metrics::gauge!(SERVICE_IN_FLIGHT, &labels).set(0.0);
            if *breaker {
                metrics::gauge!(BREAKER_STATE, &labels).set(0.0);
            }
        }
    }

    /// The `partition` label's value, when the gauges carry one.
    pub fn partition(&self) -> Option<&str> {
        self.partition.as_deref()
    }

    fn active(&self, name: &str) -> metrics::Gauge {
        metrics::gauge!(
            SAGA_ACTIVE,
            &with_partition(vec![("saga_name", name.to_string())], self.partition())
        )
    }

    /// Sets `saga_active` from what the store holds when the partition
    /// starts: every definition (at zero) and every unfinished saga. Also
    /// creates each definition's `saga_executions_total`,
    /// `saga_step_attempts_total` and `saga_compensations_total` series at
    /// zero, so that the first saga to end in a state (or the first attempt
    /// with an outcome) is an increase and a panel shows 0, not "No data".
    pub fn resume<'a>(
        &mut self,
        definitions: impl IntoIterator<Item = &'a SagaDefinition>,
        unfinished: impl IntoIterator<Item = &'a Saga>,
    ) {
        let mut active: BTreeMap<&str, u64> = BTreeMap::new();
        for def in definitions {
            self.know_steps(def);
            active.entry(def.name.as_str()).or_default();
        }
        for saga in unfinished {
            *active.entry(saga.name.as_str()).or_default() += 1;
        }
        for (name, count) in active {
            self.know(name);
            self.active(name).set(count as f64);
        }
    }

    /// Creates the series of definition `name` at zero, the first time.
    fn know(&mut self, name: &str) {
        if self.known.contains(name) {
            return;
        }
        self.known.insert(name.to_string());
        for status in SagaState::terminal() {
            metrics::counter!(SAGA_EXECUTIONS, "saga_name" => name.to_string(), "status" => status.name())
                .increment(0);
        }
        self.active(name).increment(0.0);
    }

    /// Creates the attempt counters of every step of `def` at zero (for
    /// each outcome; compensations for steps that have one), the first time.
    fn know_steps(&mut self, def: &SagaDefinition) {
        if !self.known_steps.insert((def.name.clone(), def.version)) {
            return;
        }
        for step in &def.steps {
            for outcome in OUTCOMES {
                let labels = [
                    ("saga_name", def.name.clone()),
                    ("step", step.id.clone()),
                    ("service", step.service.clone()),
                    ("outcome", outcome.to_string()),
                ];
                metrics::counter!(STEP_ATTEMPTS, &labels).increment(0);
                if step.compensation.is_some() {
                    metrics::counter!(COMPENSATIONS, &labels).increment(0);
                }
            }
        }
    }

    /// Takes note of one transition: `saga_active` when the saga starts or
    /// finishes, `saga_executions_total` and `saga_duration_seconds` when it
    /// finishes, and a count (and for actions a duration) of every attempt
    /// that ended.
    pub fn observe(&mut self, def: &SagaDefinition, t: &Transition<'_>) {
        let after = t.saga;
        self.know(&after.name);
        self.know_steps(def);
        let was_active = t.from.is_some_and(|s| !s.is_terminal());
        let is_active = !t.to.is_terminal();
        match (was_active, is_active) {
            (false, true) => self.active(&after.name).increment(1.0),
            (true, false) => self.active(&after.name).decrement(1.0),
            _ => {}
        }
        if t.finished() {
            finished(after);
        }
        for (i, attempt) in &t.ended {
            if let (Some(step), Some(outcome)) = (def.steps.get(*i), &attempt.outcome) {
                attempt_ended(&after.name, step, attempt, outcome);
            }
        }
    }
}

/// Sets the number of step timeouts armed in memory by the partition
/// labelled `partition` (none with one partition).
pub fn publish_step_timeouts(armed: usize, partition: Option<&str>) {
    metrics::gauge!(STEP_TIMEOUTS, &with_partition(vec![], partition)).set(armed as f64);
}

/// Sets the concurrency limits' gauges ([`jetsaga_core::limits`]) of the
/// partition labelled `partition` (none with one partition).
pub fn publish_limits(gauges: LimitGauges, partition: Option<&str>) {
    metrics::gauge!(RUNNING_SAGAS, &with_partition(vec![], partition)).set(gauges.running as f64);
    for (name, queued) in gauges.queued {
        metrics::gauge!(
            QUEUED_SAGAS,
            &with_partition(vec![("saga_name", name)], partition)
        )
        .set(queued as f64);
    }
}

/// Records how long a saga of `saga_name` waited in the start queue.
pub fn queue_waited(saga_name: &str, waited: Millis) {
    metrics::histogram!(QUEUE_WAIT, "saga_name" => saga_name.to_string())
        .record(waited as f64 / 1000.0);
}

/// Sets the services' gauges and counts (and logs) their breaker
/// transitions ([`jetsaga_core::admission`]) of the partition labelled
/// `partition` (none with one partition).
pub fn publish_services(report: ServiceReport, partition: Option<&str>) {
    for (service, to) in report.transitions {
        tracing::warn!(service, to, "circuit breaker {to}");
        metrics::counter!(BREAKER_TRANSITIONS, "service" => service, "to" => to).increment(1);
    }
    for g in report.gauges {
        let service = g.service;
        let labels = with_partition(vec![("service", service.clone())], partition);
        metrics::gauge!(HELD_TASKS, &labels).set(g.held as f64);
        metrics::gauge!(SERVICE_IN_FLIGHT, &labels).set(f64::from(g.in_flight));
        if let Some(state) = g.breaker {
            // Every transition of a configured breaker exists from the start.
            for to in ["open", "half_open", "closed"] {
                metrics::counter!(BREAKER_TRANSITIONS, "service" => service.clone(), "to" => to)
                    .increment(0);
            }
            metrics::gauge!(BREAKER_STATE, &labels).set(state);
        }
    }
}

/// A saga reached its terminal state.
fn finished(saga: &Saga) {
    let status = saga.status.name();
    metrics::counter!(SAGA_EXECUTIONS, "saga_name" => saga.name.clone(), "status" => status)
        .increment(1);
    let end = saga.finished_at.unwrap_or(saga.updated_at);
    metrics::histogram!(SAGA_DURATION, "saga_name" => saga.name.clone(), "status" => status)
        .record(seconds(saga.created_at, end));
}

/// An attempt of `step` of a saga named `saga_name` ended with `outcome`.
fn attempt_ended(
    saga_name: &str,
    step: &StepDefinition,
    attempt: &Attempt,
    outcome: &AttemptOutcome,
) {
    let labels = |outcome: &'static str| {
        [
            ("saga_name", saga_name.to_string()),
            ("step", step.id.clone()),
            ("service", step.service.clone()),
            ("outcome", outcome.to_string()),
        ]
    };
    match attempt.kind {
        TaskKind::Action => {
            metrics::counter!(STEP_ATTEMPTS, &labels(outcome_label(outcome))).increment(1);
            let reported = matches!(
                outcome,
                AttemptOutcome::Ok
                    | AttemptOutcome::Retryable { .. }
                    | AttemptOutcome::Fatal { .. }
            );
            if reported && let Some(end) = attempt.finished_at {
                metrics::histogram!(
                    STEP_DURATION,
                    "saga_name" => saga_name.to_string(),
                    "step" => step.id.clone(),
                    "service" => step.service.clone(),
                )
                .record(seconds(attempt.started_at, end));
            }
        }
        TaskKind::Compensation => {
            metrics::counter!(COMPENSATIONS, &labels(outcome_label(outcome))).increment(1);
        }
    }
}

/// Every `outcome` label ([`outcome_label`]).
pub const OUTCOMES: [&str; 5] = ["ok", "retryable", "fatal", "timed_out", "abandoned"];

/// The `outcome` label of an attempt outcome.
pub fn outcome_label(outcome: &AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Ok => "ok",
        AttemptOutcome::Retryable { .. } => "retryable",
        AttemptOutcome::Fatal { .. } => "fatal",
        AttemptOutcome::TimedOut => "timed_out",
        AttemptOutcome::Abandoned => "abandoned",
    }
}

fn seconds(from: Millis, to: Millis) -> f64 {
    to.saturating_sub(from) as f64 / 1000.0
}

// ---------------------------------------------------------------------------
// Polled gauges
// ---------------------------------------------------------------------------

/// Until `shutdown`, every `every`: sets the outbox and timer backlogs from
/// the store and `saga_queue_depth` of every service named by a current
/// definition, and folds histogram samples into their buckets.
pub async fn poll_gauges<S>(
    stores: Vec<Arc<S>>,
    js: jetstream::Context,
    subjects: Subjects,
    every: Duration,
    shutdown: CancellationToken,
) where
    S: OutboxTable + TimerTable + SagaTable + DiskUsage + DefinitionTable + ?Sized,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(handle) = HANDLE.get() {
            handle.run_upkeep();
        }
        let sum = |f: &dyn Fn(&S) -> usize| stores.iter().map(|s| f(s)).sum::<usize>() as f64;
        metrics::gauge!(OUTBOX_BACKLOG).set(sum(&|s| s.outbox_len()));
        metrics::gauge!(TIMER_BACKLOG).set(sum(&|s| s.timers_len()));
        metrics::gauge!(STORED_SAGAS).set(sum(&|s| s.sagas_len()));
        match stores
            .iter()
            .map(|s| s.size_on_disk())
            .sum::<Result<u64, _>>()
        {
            Ok(bytes) => metrics::gauge!(STORE_SIZE).set(bytes as f64),
            Err(e) => tracing::debug!(error = %e, "cannot read the store's size on disk"),
        }
        let services: BTreeSet<String> = match stores[0].list_definitions() {
            Ok(defs) => defs
                .into_iter()
                .flat_map(|d| d.steps.into_iter().map(|s| s.service))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list definitions for the queue depth metrics");
                continue;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = poll_queues(&js, &subjects, &services) => {}
        }
    }
}

/// Sets `saga_queue_depth` of each of `services`.
async fn poll_queues(js: &jetstream::Context, subjects: &Subjects, services: &BTreeSet<String>) {
    for service in services {
        match queue_depth(js, subjects, service).await {
            Ok(depth) => {
                metrics::gauge!(QUEUE_DEPTH, "service" => service.clone()).set(depth as f64)
            }
            // NATS away: the gauge keeps its last value; /ready says why.
            Err(e) => tracing::debug!(service, error = %e, "cannot read the queue depth"),
        }
    }
}

/// Tasks in `service`'s work queue: its consumer's undelivered plus
/// unacknowledged messages; without a consumer (no worker came yet), the
/// stream's messages on the service's task subject.
pub(crate) async fn queue_depth(
    js: &jetstream::Context,
    subjects: &Subjects,
    service: &str,
) -> Result<u64, async_nats::Error> {
    let stream = js.get_stream_no_info(subjects.tasks_stream()).await?;
    match stream
        .consumer_info(subjects.service_consumer(service))
        .await
    {
        Ok(info) => Ok(info.num_pending + info.num_ack_pending as u64),
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            let task_subject = subjects.task(service);
            let counts = stream.info_with_subjects(&task_subject).await?;
            let counts: Vec<(String, usize)> = counts.try_collect().await?;
            Ok(counts
                .into_iter()
                .filter(|(subject, _)| *subject == task_subject)
                .map(|(_, n)| n as u64)
                .sum())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsaga_core::saga::definition::{self, Format};
    use jetsaga_core::saga::machine;
    use jetsaga_core::saga::state::{Effect, Event, Inputs, TimerKind};
    use jetsaga_core::saga::transition::Before;
    use jetsaga_protocol::Outcome;
    use jetsaga_protocol::telemetry::DURATION_BUCKETS;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use serde_json::json;

    fn definition() -> SagaDefinition {
        let yaml = "sagas:\n  order:\n    steps:\n      - {id: reserve, service: stock, operation: reserve, compensation: release, retry: {max_attempts: 3, initial_delay: 100ms}}\n      - {id: pay, service: payments, operation: charge, depends_on: [reserve]}\n";
        let mut parsed = definition::parse_str("test.yaml", yaml, Format::Yaml).expect("parses");
        parsed.sagas.remove(0)
    }

    /// Drives a saga through the machine, observing every transition as
    /// the partition does, and returns the rendered metrics.
    fn observed(events: impl Fn(&Saga, &[Effect]) -> Option<Event>) -> String {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
            .expect("buckets")
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let def = definition();
            let mut observer = SagaMetrics::default();
            let other = SagaDefinition {
                name: "other".into(),
                ..def.clone()
            };
            observer.resume([&def, &other], []);
            let mut saga = machine::new_saga(
                "0192f5a0-0000-7000-8000-000000000000".into(),
                &def,
                json!({}),
                None,
                0,
            );
            let mut effects = machine::apply(&mut saga, &def, Event::Start, at(0)).unwrap();
            observer.observe(&def, &Before::absent().diff(&saga));
            let mut now = 0;
            while let Some(event) = events(&saga, &effects) {
                now += 250;
                let before = Before::of(&saga);
                effects = machine::apply(&mut saga, &def, event, at(now)).expect("applies");
                observer.observe(&def, &before.diff(&saga));
            }
        });
        handle.render()
    }

    fn at(now: Millis) -> Inputs {
        Inputs { now, random: 0.5 }
    }

    fn result(step: usize, kind: TaskKind, attempt: u32, outcome: Outcome) -> Option<Event> {
        Some(Event::TaskResult {
            step,
            kind,
            attempt,
            outcome,
        })
    }

    /// The attempt the last transition dispatched.
    fn dispatched(effects: &[Effect]) -> Option<(usize, TaskKind, u32)> {
        effects.iter().find_map(|e| match e {
            Effect::Dispatch {
                step,
                kind,
                attempt,
                ..
            } => Some((*step, *kind, *attempt)),
            _ => None,
        })
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn a_rolled_back_saga_is_counted_once_with_every_attempt() {
        let text = observed(|saga, effects| {
            if let Some((step, kind, attempt)) = dispatched(effects) {
                let ok = Outcome::Ok { output: json!({}) };
                return match (step, kind, attempt) {
                    (0, TaskKind::Action, 1) => result(
                        step,
                        kind,
                        attempt,
                        Outcome::Retryable {
                            error: "busy".into(),
                            retry_after_ms: None,
                        },
                    ),
                    (1, TaskKind::Action, _) => result(
                        step,
                        kind,
                        attempt,
                        Outcome::Fatal {
                            error: "declined".into(),
                        },
                    ),
                    _ => result(step, kind, attempt, ok),
                };
            }
            // A retry waits for its timer.
            effects
                .iter()
                .find_map(|e| match e {
                    Effect::ScheduleTimer {
                        timer: timer @ TimerKind::Retry { .. },
                        ..
                    } => Some(Event::TimerFired(timer.clone())),
                    _ => None,
                })
                .filter(|_| !saga.status.is_terminal())
        });
        let labels = |step: &str, service: &str, outcome: &str| {
            format!(r#"saga_name="order",step="{step}",service="{service}",outcome="{outcome}""#)
        };
        for line in [
            r#"saga_executions_total{saga_name="order",status="compensated"} 1"#.to_string(),
            r#"saga_executions_total{saga_name="order",status="completed"} 0"#.to_string(),
            r#"saga_executions_total{saga_name="other",status="partially_compensated"} 0"#.to_string(),
            r#"saga_active{saga_name="order"} 0"#.to_string(),
            r#"saga_active{saga_name="other"} 0"#.to_string(),
            r#"saga_duration_seconds_count{saga_name="order",status="compensated"} 1"#.to_string(),
            format!("saga_step_attempts_total{{{}}} 1", labels("reserve", "stock", "retryable")),
            format!("saga_step_attempts_total{{{}}} 1", labels("reserve", "stock", "ok")),
            format!("saga_step_attempts_total{{{}}} 1", labels("pay", "payments", "fatal")),
            format!("saga_compensations_total{{{}}} 1", labels("reserve", "stock", "ok")),
            r#"saga_step_duration_seconds_count{saga_name="order",step="reserve",service="stock"} 2"#.to_string(),
            r#"saga_step_duration_seconds_bucket{saga_name="order",step="reserve",service="stock",le="0.25"} 2"#.to_string(),
        ] {
            assert!(has(&text, &line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("0192f5a0"), "a saga id in a label:\n{text}");
    }

    #[test]
    fn step_counters_exist_at_zero_for_every_outcome() {
        // The first attempt's result ends the run: one `ok` attempt of reserve.
        let text = observed(|_, effects| match dispatched(effects) {
            Some((0, kind, 1)) => result(0, kind, 1, Outcome::Ok { output: json!({}) }),
            _ => None,
        });
        let series = |metric: &str, saga: &str, step: &str, service: &str, outcome: &str| {
            format!(
                r#"{metric}{{saga_name="{saga}",step="{step}",service="{service}",outcome="{outcome}"}}"#
            )
        };
        assert!(
            has(
                &text,
                &format!(
                    "{} 1",
                    series(STEP_ATTEMPTS, "order", "reserve", "stock", "ok")
                )
            ),
            "{text}"
        );
        for saga in ["order", "other"] {
            for outcome in OUTCOMES {
                let zero = |metric, step, service| {
                    format!("{} 0", series(metric, saga, step, service, outcome))
                };
                if (saga, outcome) != ("order", "ok") {
                    assert!(
                        has(&text, &zero(STEP_ATTEMPTS, "reserve", "stock")),
                        "{text}"
                    );
                }
                assert!(
                    has(&text, &zero(STEP_ATTEMPTS, "pay", "payments")),
                    "{text}"
                );
                assert!(
                    has(&text, &zero(COMPENSATIONS, "reserve", "stock")),
                    "{text}"
                );
                // `pay` has no compensation: no series.
                assert!(
                    !text.contains(&series(COMPENSATIONS, saga, "pay", "payments", outcome)),
                    "{text}"
                );
            }
        }
        for (i, outcome) in [
            AttemptOutcome::Ok,
            AttemptOutcome::Retryable { error: "e".into() },
            AttemptOutcome::Fatal { error: "e".into() },
            AttemptOutcome::TimedOut,
            AttemptOutcome::Abandoned,
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(outcome_label(outcome), OUTCOMES[i]);
        }
    }

    #[test]
    fn a_saga_still_running_is_active() {
        let text = observed(|_, effects| {
            // Only the first step's first attempt: the saga stays running.
            match dispatched(effects) {
                Some((0, kind, 1)) => result(0, kind, 1, Outcome::Ok { output: json!({}) }),
                _ => None,
            }
        });
        assert!(has(&text, r#"saga_active{saga_name="order"} 1"#), "{text}");
        assert!(!text.contains("saga_duration_seconds_count"), "{text}");
    }

    #[test]
    fn every_rejection_reason_is_created_at_zero() {
        use jetsaga_core::saga::state::Rejection;
        let reasons = [
            Rejection::Terminal("completed"),
            Rejection::UnknownStep(9),
            Rejection::Stale {
                step: "x".into(),
                kind: TaskKind::Action,
                attempt: 1,
            },
            Rejection::NotApplicable("x".into()),
        ]
        .map(|r| r.reason());
        let fixed = [
            crate::bus::intake::OVERSIZED,
            crate::api::http::HEADER_TIMEOUT,
            crate::api::http::TLS_HANDSHAKE_TIMEOUT,
        ];
        for reason in reasons.into_iter().chain(fixed) {
            assert!(REJECT_REASONS.contains(&reason), "{reason}");
        }
    }

    #[test]
    fn outcomes_have_stable_labels() {
        assert_eq!(outcome_label(&AttemptOutcome::Ok), "ok");
        assert_eq!(
            outcome_label(&AttemptOutcome::Retryable { error: "e".into() }),
            "retryable"
        );
        assert_eq!(
            outcome_label(&AttemptOutcome::Fatal { error: "e".into() }),
            "fatal"
        );
        assert_eq!(outcome_label(&AttemptOutcome::TimedOut), "timed_out");
        assert_eq!(outcome_label(&AttemptOutcome::Abandoned), "abandoned");
    }
}
