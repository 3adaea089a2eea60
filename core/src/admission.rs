//! Service admission: per-service circuit breakers and in-flight limits.
//!
//! Every task the state machine dispatches passes through [`ServiceAdmission::route`]
//! before it becomes an outbox row. A task for a service whose circuit
//! breaker is open (or half-open with its probe already out), or that has
//! `max_in_flight` tasks out already, is *held*: the partition writes it to
//! the store's durable held queue in the same transaction as the transition
//! that dispatched it, and does not arm the attempt's timeout (time spent
//! held does not burn the attempt). Held tasks of a service are released in
//! FIFO order ([`ServiceAdmission::pop_releasable`]) as room frees: a result comes
//! back, the breaker half-opens or closes, an operator resets it, a policy
//! is raised. The partition re-checks, for each released task, that its saga
//! still waits on exactly that attempt, and drops it otherwise.
//!
//! This module decides; it does no I/O and reads no clock (time comes in as
//! an argument). The partition owns one [`ServiceAdmission`], persists what
//! [`ServiceAdmission::take_dirty`] reports in the transaction that caused it, and
//! rebuilds it at start from the store (policies, breakers, held rows) and
//! the unfinished sagas (tasks in flight).
//!
//! # The breaker
//!
//! [`BreakerState`] is a pure state machine over the outcomes of a service's
//! attempts:
//!
//! - **closed**: tasks go out. Every ended attempt of the service counts: a
//!   success resets the consecutive failure count, a failure (retryable or
//!   fatal error, or the attempt's timeout) raises it; at
//!   `failure_threshold` the breaker opens.
//! - **open** since `since`: tasks are held. Results of tasks dispatched
//!   before it opened change nothing. At `since + open_timeout` it half-opens.
//! - **half-open**: one task at a time goes out as a probe. A probe's success
//!   counts towards `success_threshold`, at which the breaker closes; a
//!   probe's failure opens it again (a new `open_timeout`). Results of other
//!   tasks (dispatched before it opened) change nothing.
//!
//! Actions and compensations count alike: both call the same service, and a
//! service that is down fails both. A compensation held by an open breaker
//! waits like an action does; the saga stays `compensating`.

use crate::saga::definition::{BreakerConfig, SagaDefinition, ServicePolicy};
use crate::saga::state::{AttemptOutcome, Millis, Saga, SagaState};
use crate::saga::transition::Transition;
pub use crate::saga::transition::{AttemptKey, attempts_in_flight, waits_on};
use jetsaga_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Breaker state (gauge): 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "engine_breaker_state";
/// Breaker transitions, by service and the state entered (counter).
pub const BREAKER_TRANSITIONS: &str = "engine_breaker_transitions_total";
/// Tasks held for a service (gauge).
pub const HELD_TASKS: &str = "engine_held_tasks";
/// Tasks of a service dispatched and not ended (gauge).
pub const SERVICE_IN_FLIGHT: &str = "engine_service_in_flight";

/// The gauges of one service, as [`ServiceAdmission::take_report`] gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceGauges {
    /// Service name.
    pub service: String,
    /// Tasks held ([`HELD_TASKS`]).
    pub held: usize,
    /// Tasks dispatched and not ended ([`SERVICE_IN_FLIGHT`]).
    pub in_flight: u32,
    /// The breaker's [`BREAKER_STATE`] value, for a service with a breaker.
    pub breaker: Option<f64>,
}

/// What changed for operators since the last report: gauges to set, and
/// breaker transitions (service, state entered) to count and log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceReport {
    /// The gauges of every service that changed.
    pub gauges: Vec<ServiceGauges>,
    /// Breaker transitions, in order.
    pub transitions: Vec<(String, &'static str)>,
}

/// Changes not yet reported.
#[derive(Debug, Default)]
struct Pending {
    /// Services whose gauges changed.
    touched: BTreeSet<String>,
    /// Breaker transitions.
    transitions: Vec<(String, &'static str)>,
}

/// Where a service's circuit breaker stands. Stored per service; absent
/// means closed with no failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Tasks go out; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Tasks are held until `since + open_timeout`.
    Open {
        /// When it opened.
        since: Millis,
        /// Consecutive failures that opened it (or 1 for a failed probe).
        failures: u32,
    },
    /// One probe at a time goes out.
    HalfOpen {
        /// When it half-opened.
        since: Millis,
        /// The probe in flight, if one is.
        probe: Option<AttemptKey>,
        /// Successful probes so far.
        successes: u32,
    },
}

impl Default for BreakerState {
    fn default() -> Self {
        BreakerState::Closed { failures: 0 }
    }
}

/// How many transitions a breaker's history keeps (the latest).
pub const HISTORY_LEN: usize = 20;

/// A breaker's state without its data: what a transition goes from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerPhase {
    /// Tasks go out.
    Closed,
    /// Tasks are held.
    Open,
    /// One probe at a time goes out.
    HalfOpen,
}

impl BreakerPhase {
    /// Stable name: `closed`, `open`, `half_open`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerPhase::Closed => "closed",
            BreakerPhase::Open => "open",
            BreakerPhase::HalfOpen => "half_open",
        }
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerCause {
    /// Consecutive failures reached the threshold (closed → open).
    Failures,
    /// The open timeout passed (open → half-open).
    Timeout,
    /// A probe's result (half-open → closed on enough successes, → open on a failure).
    Probe,
    /// An operator's reset (→ closed).
    Reset,
    /// An operator forced the state (`--force-state open|closed`).
    Forced,
}

impl BreakerCause {
    /// Stable name: `failures`, `timeout`, `probe`, `reset`, `forced`.
    pub fn name(self) -> &'static str {
        match self {
            BreakerCause::Failures => "failures",
            BreakerCause::Timeout => "timeout",
            BreakerCause::Probe => "probe",
            BreakerCause::Reset => "reset",
            BreakerCause::Forced => "forced",
        }
    }
}

/// One entry of a breaker's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerTransition {
    /// When (ms since the Unix epoch).
    pub at: Millis,
    /// The state it left.
    pub from: BreakerPhase,
    /// The state it entered (the same as `from` for a forced state it was in).
    pub to: BreakerPhase,
    /// Why.
    pub cause: BreakerCause,
}

/// The state an operator forces a breaker into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForcedState {
    /// Open from now: tasks are held; it half-opens after its `open_timeout`.
    Open,
    /// Closed with no failures counted: held tasks are released.
    Closed,
}

/// A service's breaker as stored: its state and its latest
/// [`HISTORY_LEN`] transitions, oldest first. Its JSON is the state's,
/// with a `history` field only when there is one, so a record written
/// before histories existed loads as a breaker without history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    /// Where it stands.
    #[serde(flatten)]
    pub state: BreakerState,
    /// Its latest transitions, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub history: VecDeque<BreakerTransition>,
}

impl From<BreakerState> for Breaker {
    fn from(state: BreakerState) -> Self {
        Breaker {
            state,
            history: VecDeque::new(),
        }
    }
}

impl Breaker {
    fn push(&mut self, at: Millis, from: BreakerPhase, cause: BreakerCause) {
        if self.history.len() >= HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(BreakerTransition {
            at,
            from,
            to: self.state.phase(),
            cause,
        });
    }

    /// [`BreakerState::record`], noting a change of state in the history.
    pub fn record(
        &mut self,
        config: &BreakerConfig,
        key: &AttemptKey,
        ok: Option<bool>,
        now: Millis,
    ) -> Option<&'static str> {
        let from = self.state.phase();
        let to = self.state.record(config, key, ok, now)?;
        let cause = match from {
            BreakerPhase::Closed => BreakerCause::Failures,
            _ => BreakerCause::Probe,
        };
        self.push(now, from, cause);
        Some(to)
    }

    /// [`BreakerState::tick`], noting a change of state in the history.
    pub fn tick(&mut self, config: &BreakerConfig, now: Millis) -> Option<&'static str> {
        let from = self.state.phase();
        let to = self.state.tick(config, now)?;
        self.push(now, from, BreakerCause::Timeout);
        Some(to)
    }

    /// [`BreakerState::reset`] at `now`, noting a change of state in the history.
    pub fn reset(&mut self, now: Millis) -> Option<&'static str> {
        let from = self.state.phase();
        let to = self.state.reset()?;
        self.push(now, from, BreakerCause::Reset);
        Some(to)
    }

    /// Forces the breaker open (from `now`) or closed. The history always
    /// notes it, even when the breaker was in that state already (a forced
    /// open restarts its open timeout). Returns the state entered, if it
    /// changed state.
    pub fn force(&mut self, state: ForcedState, now: Millis) -> Option<&'static str> {
        let from = self.state.phase();
        self.state = match state {
            ForcedState::Open => BreakerState::Open {
                since: now,
                failures: 0,
            },
            ForcedState::Closed => BreakerState::Closed { failures: 0 },
        };
        self.push(now, from, BreakerCause::Forced);
        (self.state.phase() != from).then(|| self.state.name())
    }
}

/// What a breaker lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Any task.
    Pass,
    /// One task, which becomes the probe.
    Probe,
    /// Nothing: tasks are held.
    Hold,
}

impl BreakerState {
    /// Stable name: `closed`, `open`, `half_open`.
    pub fn name(&self) -> &'static str {
        self.phase().name()
    }

    /// The state without its data.
    pub fn phase(&self) -> BreakerPhase {
        match self {
            BreakerState::Closed { .. } => BreakerPhase::Closed,
            BreakerState::Open { .. } => BreakerPhase::Open,
            BreakerState::HalfOpen { .. } => BreakerPhase::HalfOpen,
        }
    }

    /// The value of [`BREAKER_STATE`]: 0 closed, 1 half-open, 2 open.
    pub fn gauge(&self) -> f64 {
        match self {
            BreakerState::Closed { .. } => 0.0,
            BreakerState::HalfOpen { .. } => 1.0,
            BreakerState::Open { .. } => 2.0,
        }
    }

    /// What may go out now.
    pub fn gate(&self) -> Gate {
        match self {
            BreakerState::Closed { .. } => Gate::Pass,
            BreakerState::Open { .. } => Gate::Hold,
            BreakerState::HalfOpen { probe: None, .. } => Gate::Probe,
            BreakerState::HalfOpen { probe: Some(_), .. } => Gate::Hold,
        }
    }

    /// Notes that `key` went out as the probe (when half-open with none out).
    pub fn probe_sent(&mut self, key: &AttemptKey) {
        if let BreakerState::HalfOpen { probe, .. } = self
            && probe.is_none()
        {
            *probe = Some(key.clone());
        }
    }

    /// Records that attempt `key` ended: `Some(true)` a success, `Some(false)`
    /// a failure, `None` without an outcome that says anything about the
    /// service (abandoned). Returns the state entered, if it changed state.
    pub fn record(
        &mut self,
        config: &BreakerConfig,
        key: &AttemptKey,
        ok: Option<bool>,
        now: Millis,
    ) -> Option<&'static str> {
        match self {
            BreakerState::Closed { failures } => match ok {
                Some(true) => {
                    *failures = 0;
                    None
                }
                Some(false) => {
                    *failures = failures.saturating_add(1);
                    if *failures >= config.failure_threshold {
                        let failures = *failures;
                        *self = BreakerState::Open {
                            since: now,
                            failures,
                        };
                        Some("open")
                    } else {
                        None
                    }
                }
                None => None,
            },
            BreakerState::Open { .. } => None,
            BreakerState::HalfOpen {
                probe, successes, ..
            } => {
                if probe.as_ref() != Some(key) {
                    return None;
                }
                *probe = None;
                match ok {
                    Some(true) => {
                        *successes = successes.saturating_add(1);
                        if *successes >= config.success_threshold {
                            *self = BreakerState::Closed { failures: 0 };
                            Some("closed")
                        } else {
                            None
                        }
                    }
                    Some(false) => {
                        *self = BreakerState::Open {
                            since: now,
                            failures: 1,
                        };
                        Some("open")
                    }
                    // The probe said nothing: the next task probes instead.
                    None => None,
                }
            }
        }
    }

    /// When an open breaker half-opens.
    pub fn deadline(&self, config: &BreakerConfig) -> Option<Millis> {
        match self {
            BreakerState::Open { since, .. } => Some(since.saturating_add(millis(config))),
            _ => None,
        }
    }

    /// Half-opens an open breaker whose timeout passed at `now`.
    pub fn tick(&mut self, config: &BreakerConfig, now: Millis) -> Option<&'static str> {
        match self.deadline(config) {
            Some(due) if due <= now => {
                *self = BreakerState::HalfOpen {
                    since: now,
                    probe: None,
                    successes: 0,
                };
                Some("half_open")
            }
            _ => None,
        }
    }

    /// Closes the breaker (an operator's reset); returns `Some("closed")`
    /// unless it was closed already (its failure count is cleared either way).
    pub fn reset(&mut self) -> Option<&'static str> {
        let was_closed = matches!(self, BreakerState::Closed { .. });
        *self = BreakerState::Closed { failures: 0 };
        (!was_closed).then_some("closed")
    }
}

fn millis(config: &BreakerConfig) -> Millis {
    u64::try_from(config.open_timeout.as_millis()).unwrap_or(u64::MAX)
}

/// A held task, as the in-memory queue knows it (the task itself is in the
/// store, under `seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Key of the held row; increasing in hold order.
    pub seq: u64,
    /// The attempt it dispatches.
    pub key: AttemptKey,
}

/// What to do with a dispatched task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Publish it now (it is counted in flight).
    Dispatch,
    /// Hold it under this sequence number.
    Hold(u64),
}

/// One service's breaker and limits, as `breaker status` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub service: String,
    /// Breaker state: `closed`, `open`, `half_open`, or `none` when the
    /// service has no circuit breaker configured.
    pub state: String,
    /// Consecutive failures counted (closed), or that opened it (open).
    pub failures: u32,
    /// Successful probes so far (half-open).
    pub successes: u32,
    /// Whether a half-open breaker's probe is out.
    pub probe_in_flight: bool,
    /// Since when the breaker is in its state (open, half-open; ms since the Unix epoch).
    pub since: Option<Millis>,
    /// When an open breaker half-opens (ms since the Unix epoch).
    pub half_opens_at: Option<Millis>,
    /// Tasks held for the service.
    pub held: usize,
    /// Tasks of the service dispatched and not ended.
    pub in_flight: u32,
    /// The service's limit of tasks in flight, if any.
    pub max_in_flight: Option<u32>,
    /// The breaker's configuration, if any.
    pub circuit_breaker: Option<BreakerConfig>,
    /// The breaker's latest transitions, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<BreakerTransition>,
}

/// Why an operator's request about a service was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// No policy names the service.
    #[error(
        "no service policy for `{0}`; services get one under `services:` in a definitions file"
    )]
    UnknownService(String),
    /// The service has limits but no circuit breaker.
    #[error("service `{0}` has no circuit breaker configured")]
    NoBreaker(String),
}

impl AdmissionError {
    /// Stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AdmissionError::UnknownService(_) => ErrorCode::NotFound,
            AdmissionError::NoBreaker(_) => ErrorCode::NotApplicable,
        }
    }
}

/// The partition's admission state: policies, breakers, tasks in flight
/// and held, per service.
#[derive(Debug, Default)]
pub struct ServiceAdmission {
    policies: HashMap<String, ServicePolicy>,
    breakers: HashMap<String, Breaker>,
    /// Attempts in flight, by saga, with their service.
    in_flight: HashMap<String, Vec<(AttemptKey, String)>>,
    /// Attempts in flight, by service.
    counts: HashMap<String, u32>,
    /// Held tasks by service, oldest first.
    held: BTreeMap<String, VecDeque<Held>>,
    /// Held tasks by saga.
    held_sagas: HashMap<String, u32>,
    /// Sequence number of the next held row.
    next_seq: u64,
    /// Services whose breaker changed since [`ServiceAdmission::take_dirty`].
    dirty: BTreeSet<String>,
    /// Sagas with held tasks whose state may have made them moot.
    unsettled: BTreeSet<String>,
    /// What operators should see of the changes since [`ServiceAdmission::take_report`].
    report: Pending,
}

impl ServiceAdmission {
    /// The state stored at the last run: policies, breakers, held tasks
    /// (`(seq, service, attempt)`, in sequence order). Tasks in flight are
    /// added with [`ServiceAdmission::resume`].
    pub fn load(
        policies: Vec<ServicePolicy>,
        breakers: Vec<(String, Breaker)>,
        held: Vec<(u64, String, AttemptKey)>,
    ) -> Self {
        let mut admission = ServiceAdmission {
            policies: policies
                .into_iter()
                .map(|p| (p.service.clone(), p))
                .collect(),
            ..ServiceAdmission::default()
        };
        for (service, state) in breakers {
            if admission.breaker_config(&service).is_some() {
                admission.breakers.insert(service, state);
            } else {
                // The policy lost its breaker: the record goes.
                admission.dirty.insert(service);
            }
        }
        for (seq, service, key) in held {
            admission.next_seq = admission.next_seq.max(seq + 1);
            *admission.held_sagas.entry(key.saga_id.clone()).or_default() += 1;
            // A held task's saga may have changed in a transition the
            // partition committed before it could settle it.
            admission.unsettled.insert(key.saga_id.clone());
            admission
                .held
                .entry(service)
                .or_default()
                .push_back(Held { seq, key });
        }
        let services: Vec<String> = admission.known_services();
        for service in services {
            admission.gauges(&service);
        }
        admission
    }

    /// Counts the attempts the unfinished sagas have in flight (at start);
    /// held attempts are not in flight.
    pub fn resume<'a>(&mut self, sagas: impl IntoIterator<Item = (&'a Saga, &'a SagaDefinition)>) {
        let held: BTreeSet<AttemptKey> = self
            .held
            .values()
            .flatten()
            .map(|h| h.key.clone())
            .collect();
        let mut services = BTreeSet::new();
        for (saga, def) in sagas {
            for key in attempts_in_flight(saga) {
                if held.contains(&key) {
                    continue;
                }
                let Some(step) = def.steps.get(key.step) else {
                    continue;
                };
                services.insert(step.service.clone());
                self.track(&step.service, key);
            }
        }
        for service in services {
            self.gauges(&service);
        }
    }

    /// Replaces the policies of the services `policies` name (latest applied
    /// wins; other services keep theirs). A breaker whose configuration is
    /// removed is dropped; its held tasks are released as room allows.
    pub fn set_policies(&mut self, policies: Vec<ServicePolicy>) {
        for policy in policies {
            let service = policy.service.clone();
            if policy.circuit_breaker.is_none() && self.breakers.remove(&service).is_some() {
                self.dirty.insert(service.clone());
            }
            self.policies.insert(service.clone(), policy);
            self.gauges(&service);
        }
    }

    /// Takes note of a transition: attempts it counted that left flight
    /// count for their service's breaker, and free room.
    pub fn observe(&mut self, t: &Transition<'_>, now: Millis) {
        if t.left_flight.is_empty() {
            return;
        }
        let Some(before) = self.in_flight.remove(&t.saga.id) else {
            return;
        };
        let mut kept = Vec::new();
        for (key, service) in before {
            if !t.left_flight.contains(&key) {
                kept.push((key, service));
                continue;
            }
            if let Some(n) = self.counts.get_mut(&service) {
                *n = n.saturating_sub(1);
            }
            let ok = match t.outcome(&key) {
                Some(AttemptOutcome::Ok) => Some(true),
                Some(
                    AttemptOutcome::Retryable { .. }
                    | AttemptOutcome::Fatal { .. }
                    | AttemptOutcome::TimedOut,
                ) => Some(false),
                Some(AttemptOutcome::Abandoned) | None => None,
            };
            if let Some(config) = self.breaker_config(&service).cloned() {
                let breaker = self.breakers.entry(service.clone()).or_default();
                let before = breaker.clone();
                let to = breaker.record(&config, &key, ok, now);
                if *breaker != before {
                    self.dirty.insert(service.clone());
                }
                if let Some(to) = to {
                    self.report.transitions.push((service.clone(), to));
                }
            }
            self.gauges(&service);
        }
        if !kept.is_empty() {
            self.in_flight.insert(t.saga.id.clone(), kept);
        }
    }

    /// Decides whether attempt `key`, just dispatched to `service`, goes out
    /// now or is held. Held tasks of the service go first: a new task waits
    /// behind them.
    pub fn route(&mut self, service: &str, key: AttemptKey) -> Route {
        let queued = self.held.get(service).is_some_and(|q| !q.is_empty());
        if queued || !self.has_room(service) {
            return Route::Hold(self.hold(service, key));
        }
        self.admit(service, key);
        Route::Dispatch
    }

    /// Whether a task of `service` may go out now.
    pub fn has_room(&self, service: &str) -> bool {
        if let Some(max) = self.policies.get(service).and_then(|p| p.max_in_flight)
            && self.counts.get(service).copied().unwrap_or(0) >= max
        {
            return false;
        }
        match self.breakers.get(service) {
            Some(b) => b.state.gate() != Gate::Hold,
            None => true,
        }
    }

    /// Counts attempt `key` in flight for `service` (it is published now);
    /// it becomes the probe of a half-open breaker.
    pub fn admit(&mut self, service: &str, key: AttemptKey) {
        if self.breaker_config(service).is_some() {
            let breaker = self.breakers.entry(service.to_string()).or_default();
            if breaker.state.gate() == Gate::Probe {
                breaker.state.probe_sent(&key);
                self.dirty.insert(service.to_string());
            }
        }
        self.track(service, key);
        self.gauges(service);
    }

    fn track(&mut self, service: &str, key: AttemptKey) {
        *self.counts.entry(service.to_string()).or_default() += 1;
        self.in_flight
            .entry(key.saga_id.clone())
            .or_default()
            .push((key, service.to_string()));
    }

    fn hold(&mut self, service: &str, key: AttemptKey) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        *self.held_sagas.entry(key.saga_id.clone()).or_default() += 1;
        self.held
            .entry(service.to_string())
            .or_default()
            .push_back(Held { seq, key });
        self.gauges(service);
        seq
    }

    /// The oldest held task of `service`, taken off its queue, if the
    /// service has room for it. The caller either [admits](Self::admit) it
    /// or drops it.
    pub fn pop_releasable(&mut self, service: &str) -> Option<Held> {
        if !self.has_room(service) {
            return None;
        }
        let held = self.held.get_mut(service)?.pop_front()?;
        self.forget_held(&held.key.saga_id);
        self.gauges(service);
        Some(held)
    }

    /// Takes the held task `seq` of `service` off its queue (its saga no
    /// longer needs it). Returns whether it was there.
    pub fn remove_held(&mut self, service: &str, seq: u64) -> bool {
        let Some(queue) = self.held.get_mut(service) else {
            return false;
        };
        let Some(pos) = queue.iter().position(|h| h.seq == seq) else {
            return false;
        };
        if let Some(held) = queue.remove(pos) {
            self.forget_held(&held.key.saga_id);
        }
        self.gauges(service);
        true
    }

    fn forget_held(&mut self, saga_id: &str) {
        if let Some(n) = self.held_sagas.get_mut(saga_id) {
            *n -= 1;
            if *n == 0 {
                self.held_sagas.remove(saga_id);
            }
        }
    }

    /// Services with held tasks.
    pub fn services_holding(&self) -> Vec<String> {
        self.held
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// The held tasks of saga `saga_id`, with their service.
    pub fn held_of(&self, saga_id: &str) -> Vec<(String, Held)> {
        if !self.held_sagas.contains_key(saga_id) {
            return Vec::new();
        }
        self.held
            .iter()
            .flat_map(|(s, q)| {
                q.iter()
                    .filter(|h| h.key.saga_id == saga_id)
                    .map(move |h| (s.clone(), h.clone()))
            })
            .collect()
    }

    /// Marks `saga` for [`ServiceAdmission::take_unsettled`] when it has held tasks
    /// and is no longer running: a held action of a compensating saga, or
    /// any held task of a finished one, must not wait for room.
    pub fn note(&mut self, saga: &Saga) {
        if self.held_sagas.contains_key(&saga.id) && saga.status.state() != SagaState::Running {
            self.unsettled.insert(saga.id.clone());
        }
    }

    /// Sagas [noted](Self::note) since the last call.
    pub fn take_unsettled(&mut self) -> Vec<String> {
        std::mem::take(&mut self.unsettled).into_iter().collect()
    }

    /// Half-opens the open breakers whose timeout passed at `now`.
    pub fn tick(&mut self, now: Millis) {
        let services: Vec<String> = self.breakers.keys().cloned().collect();
        for service in services {
            let Some(config) = self.breaker_config(&service).cloned() else {
                continue;
            };
            if let Some(breaker) = self.breakers.get_mut(&service)
                && let Some(to) = breaker.tick(&config, now)
            {
                self.dirty.insert(service.clone());
                self.report.transitions.push((service.clone(), to));
                self.gauges(&service);
            }
        }
    }

    /// When the partition must wake next: now for unsettled sagas, else the
    /// earliest time an open breaker half-opens.
    pub fn next_wake(&self, now: Millis) -> Option<Millis> {
        if !self.unsettled.is_empty() {
            return Some(now);
        }
        self.breakers
            .iter()
            .filter_map(|(s, b)| b.state.deadline(self.breaker_config(s)?))
            .min()
    }

    /// Closes `service`'s breaker (an operator's reset) at `now`, or, with
    /// `force`, puts it in that state (see [`Breaker::force`]).
    pub fn reset(
        &mut self,
        service: &str,
        force: Option<ForcedState>,
        now: Millis,
    ) -> Result<(), AdmissionError> {
        if !self.policies.contains_key(service) {
            return Err(AdmissionError::UnknownService(service.to_string()));
        }
        if self.breaker_config(service).is_none() {
            return Err(AdmissionError::NoBreaker(service.to_string()));
        }
        let breaker = self.breakers.entry(service.to_string()).or_default();
        let to = match force {
            None => breaker.reset(now),
            Some(state) => breaker.force(state, now),
        };
        if let Some(to) = to {
            self.report.transitions.push((service.to_string(), to));
        }
        self.dirty.insert(service.to_string());
        self.gauges(service);
        Ok(())
    }

    /// Breakers changed since the last call, to store: `None` deletes the
    /// record (the service has no breaker state any more).
    pub fn take_dirty(&mut self) -> Vec<(String, Option<Breaker>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|s| {
                let state = self.breakers.get(&s).cloned();
                (s, state)
            })
            .collect()
    }

    /// One service's status; `None` when no policy names it.
    pub fn status(&self, service: &str) -> Option<ServiceStatus> {
        let policy = self.policies.get(service)?;
        let breaker = policy
            .circuit_breaker
            .as_ref()
            .map(|c| (c, self.breakers.get(service).cloned().unwrap_or_default()));
        let (state, failures, successes, probe, since, half_opens_at) = match &breaker {
            None => ("none", 0, 0, false, None, None),
            Some((config, Breaker { state: b, .. })) => match b {
                BreakerState::Closed { failures } => (b.name(), *failures, 0, false, None, None),
                BreakerState::Open { since, failures } => (
                    b.name(),
                    *failures,
                    0,
                    false,
                    Some(*since),
                    b.deadline(config),
                ),
                BreakerState::HalfOpen {
                    since,
                    probe,
                    successes,
                } => (b.name(), 0, *successes, probe.is_some(), Some(*since), None),
            },
        };
        Some(ServiceStatus {
            service: service.to_string(),
            state: state.to_string(),
            failures,
            successes,
            probe_in_flight: probe,
            since,
            half_opens_at,
            held: self.held.get(service).map_or(0, VecDeque::len),
            in_flight: self.counts.get(service).copied().unwrap_or(0),
            max_in_flight: policy.max_in_flight,
            circuit_breaker: policy.circuit_breaker.clone(),
            history: breaker
                .map(|(_, b)| b.history.into_iter().collect())
                .unwrap_or_default(),
        })
    }

    /// Every service with a policy, by name.
    pub fn list(&self) -> Vec<ServiceStatus> {
        let mut names: Vec<&String> = self.policies.keys().collect();
        names.sort();
        names.into_iter().filter_map(|s| self.status(s)).collect()
    }

    fn breaker_config(&self, service: &str) -> Option<&BreakerConfig> {
        self.policies.get(service)?.circuit_breaker.as_ref()
    }

    fn known_services(&self) -> Vec<String> {
        let mut all: BTreeSet<String> = self.policies.keys().cloned().collect();
        all.extend(self.held.keys().cloned());
        all.into_iter().collect()
    }

    /// Marks `service`'s gauges for the next [`Self::take_report`].
    fn gauges(&mut self, service: &str) {
        if self.policies.contains_key(service) || self.held.contains_key(service) {
            self.report.touched.insert(service.to_string());
        }
    }

    /// Every service with gauges here (with a policy, or with tasks held
    /// or in flight), each with whether it has a breaker.
    pub fn services(&self) -> Vec<(String, bool)> {
        let mut all: BTreeSet<String> = self.policies.keys().cloned().collect();
        all.extend(self.held.keys().cloned());
        all.extend(self.counts.keys().cloned());
        all.into_iter()
            .map(|s| {
                let breaker = self.breaker_config(&s).is_some();
                (s, breaker)
            })
            .collect()
    }

    /// What changed for operators to see since the last call: the gauges of
    /// every service touched, and the breaker transitions, in order.
    pub fn take_report(&mut self) -> ServiceReport {
        let report = std::mem::take(&mut self.report);
        let gauges = report
            .touched
            .into_iter()
            .map(|service| ServiceGauges {
                held: self.held.get(&service).map_or(0, VecDeque::len),
                in_flight: self.counts.get(&service).copied().unwrap_or(0),
                breaker: self.breaker_config(&service).map(|_| {
                    self.breakers
                        .get(&service)
                        .cloned()
                        .unwrap_or_default()
                        .state
                        .gauge()
                }),
                service,
            })
            .collect();
        ServiceReport {
            gauges,
            transitions: report.transitions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::state::StepStatus;
    use crate::saga::transition::Before;
    use jetsaga_protocol::TaskKind;

    /// Observes the transition from [`saga_with_attempt`] to `after`.
    fn observe(a: &mut ServiceAdmission, after: &Saga, now: Millis) {
        let before = Before::of(&saga_with_attempt(&after.id));
        a.observe(&before.diff(after), now);
    }
    use std::time::Duration;

    fn config(failures: u32, successes: u32, open_ms: u64) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: failures,
            success_threshold: successes,
            open_timeout: Duration::from_millis(open_ms),
        }
    }

    fn key(n: u32) -> AttemptKey {
        AttemptKey {
            saga_id: format!("saga-{n}"),
            step: 0,
            kind: TaskKind::Action,
            attempt: 1,
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let c = config(3, 1, 1000);
        let mut b = BreakerState::default();
        assert_eq!(b.record(&c, &key(1), Some(false), 10), None);
        assert_eq!(b.record(&c, &key(2), Some(false), 11), None);
        assert_eq!(b.record(&c, &key(3), Some(true), 12), None);
        assert_eq!(b, BreakerState::Closed { failures: 0 });
        assert_eq!(b.record(&c, &key(4), Some(false), 13), None);
        assert_eq!(b.record(&c, &key(5), Some(false), 14), None);
        assert_eq!(b.gate(), Gate::Pass);
        assert_eq!(b.record(&c, &key(6), Some(false), 15), Some("open"));
        assert_eq!(
            b,
            BreakerState::Open {
                since: 15,
                failures: 3
            }
        );
        assert_eq!(b.gate(), Gate::Hold);
        // Abandoned attempts say nothing.
        let mut closed = BreakerState::Closed { failures: 2 };
        assert_eq!(closed.record(&c, &key(7), None, 16), None);
        assert_eq!(closed, BreakerState::Closed { failures: 2 });
    }

    #[test]
    fn an_open_breaker_ignores_late_results_and_half_opens_after_its_timeout() {
        let c = config(1, 1, 1000);
        let mut b = BreakerState::Open {
            since: 100,
            failures: 1,
        };
        assert_eq!(b.record(&c, &key(1), Some(true), 200), None);
        assert_eq!(b.record(&c, &key(2), Some(false), 300), None);
        assert_eq!(b.deadline(&c), Some(1100));
        assert_eq!(b.tick(&c, 1099), None);
        assert_eq!(b.gate(), Gate::Hold);
        assert_eq!(b.tick(&c, 1100), Some("half_open"));
        assert_eq!(b.gate(), Gate::Probe);
        assert_eq!(b.deadline(&c), None);
        assert_eq!(b.tick(&c, 5000), None);
    }

    #[test]
    fn half_open_lets_one_probe_out_and_closes_after_enough_successes() {
        let c = config(1, 2, 1000);
        let mut b = BreakerState::HalfOpen {
            since: 0,
            probe: None,
            successes: 0,
        };
        b.probe_sent(&key(1));
        assert_eq!(b.gate(), Gate::Hold);
        // A second probe_sent does not replace the probe out.
        b.probe_sent(&key(9));
        // Results of other tasks change nothing.
        assert_eq!(b.record(&c, &key(9), Some(false), 10), None);
        assert_eq!(b.gate(), Gate::Hold);
        assert_eq!(b.record(&c, &key(1), Some(true), 20), None);
        assert_eq!(b.gate(), Gate::Probe);
        b.probe_sent(&key(2));
        assert_eq!(b.record(&c, &key(2), Some(true), 30), Some("closed"));
        assert_eq!(b, BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_failing_probe_opens_it_again_and_a_silent_one_frees_the_probe() {
        let c = config(5, 2, 1000);
        let mut b = BreakerState::HalfOpen {
            since: 0,
            probe: None,
            successes: 0,
        };
        b.probe_sent(&key(1));
        assert_eq!(b.record(&c, &key(1), None, 10), None);
        assert_eq!(b.gate(), Gate::Probe);
        b.probe_sent(&key(2));
        assert_eq!(b.record(&c, &key(2), Some(false), 50), Some("open"));
        assert_eq!(
            b,
            BreakerState::Open {
                since: 50,
                failures: 1
            }
        );
        assert_eq!(b.deadline(&c), Some(1050));
    }

    #[test]
    fn reset_closes_from_any_state() {
        let mut b = BreakerState::Open {
            since: 1,
            failures: 4,
        };
        assert_eq!(b.reset(), Some("closed"));
        assert_eq!(b.reset(), None);
        assert_eq!(b, BreakerState::Closed { failures: 0 });
        assert_eq!(b.gauge(), 0.0);
        assert_eq!(
            BreakerState::HalfOpen {
                since: 0,
                probe: None,
                successes: 0
            }
            .gauge(),
            1.0
        );
    }

    fn policy(max: Option<u32>, breaker: Option<BreakerConfig>) -> ServicePolicy {
        ServicePolicy {
            service: "pay".into(),
            max_in_flight: max,
            circuit_breaker: breaker,
        }
    }

    #[test]
    fn max_in_flight_holds_beyond_the_limit_and_releases_in_order() {
        let mut a = ServiceAdmission::load(vec![policy(Some(2), None)], vec![], vec![]);
        assert_eq!(a.route("pay", key(1)), Route::Dispatch);
        assert_eq!(a.route("pay", key(2)), Route::Dispatch);
        assert_eq!(a.route("pay", key(3)), Route::Hold(0));
        assert_eq!(a.route("pay", key(4)), Route::Hold(1));
        // Other services are not limited.
        assert_eq!(a.route("other", key(5)), Route::Dispatch);
        assert_eq!(a.pop_releasable("pay"), None);
        assert_eq!(a.status("pay").unwrap().held, 2);
        assert_eq!(a.status("pay").unwrap().in_flight, 2);
        // Saga 1's attempt ends.
        let mut saga = saga_with_attempt("saga-1");
        saga.steps[0].status = StepStatus::Succeeded;
        saga.steps[0].attempts[0].outcome = Some(AttemptOutcome::Ok);
        observe(&mut a, &saga, 100);
        let next = a.pop_releasable("pay").unwrap();
        assert_eq!(next.key, key(3));
        a.admit("pay", next.key);
        assert_eq!(a.pop_releasable("pay"), None);
        assert_eq!(a.status("pay").unwrap().held, 1);
        // A new task waits behind the held one even with room.
        let mut saga = saga_with_attempt("saga-2");
        saga.steps[0].attempts[0].outcome = Some(AttemptOutcome::Ok);
        saga.steps[0].status = StepStatus::Succeeded;
        observe(&mut a, &saga, 100);
        assert_eq!(a.route("pay", key(6)), Route::Hold(2));
        assert_eq!(a.pop_releasable("pay").unwrap().key, key(4));
    }

    /// A running saga whose one step waits on its first action attempt.
    fn saga_with_attempt(id: &str) -> Saga {
        Saga {
            id: id.into(),
            ..crate::saga::transition::doc_saga()
        }
    }

    #[test]
    fn failures_observed_open_the_breaker_and_a_probe_goes_out_after_the_timeout() {
        let mut a =
            ServiceAdmission::load(vec![policy(None, Some(config(2, 1, 500)))], vec![], vec![]);
        for n in 1..=3 {
            assert_eq!(a.route("pay", key(n)), Route::Dispatch);
        }
        for n in 1..=2 {
            let mut saga = saga_with_attempt(&format!("saga-{n}"));
            saga.steps[0].attempts[0].outcome = Some(AttemptOutcome::TimedOut);
            saga.steps[0].status = StepStatus::RetryWaiting {
                attempt: 2,
                due: 10,
            };
            observe(&mut a, &saga, 1000);
        }
        assert_eq!(a.status("pay").unwrap().state, "open");
        assert_eq!(a.next_wake(1000), Some(1500));
        assert_eq!(a.route("pay", key(4)), Route::Hold(0));
        assert_eq!(
            a.take_dirty(),
            vec![(
                "pay".to_string(),
                Some(Breaker {
                    state: BreakerState::Open {
                        since: 1000,
                        failures: 2
                    },
                    history: VecDeque::from([BreakerTransition {
                        at: 1000,
                        from: BreakerPhase::Closed,
                        to: BreakerPhase::Open,
                        cause: BreakerCause::Failures,
                    }]),
                })
            )]
        );
        a.tick(1499);
        assert_eq!(a.pop_releasable("pay"), None);
        a.tick(1500);
        let probe = a.pop_releasable("pay").unwrap();
        a.admit("pay", probe.key.clone());
        let status = a.status("pay").unwrap();
        assert_eq!(
            (status.state.as_str(), status.probe_in_flight),
            ("half_open", true)
        );
        // Saga 3's attempt was dispatched before the breaker opened: its
        // success does not close it.
        let mut saga = saga_with_attempt("saga-3");
        saga.steps[0].attempts[0].outcome = Some(AttemptOutcome::Ok);
        saga.steps[0].status = StepStatus::Succeeded;
        observe(&mut a, &saga, 1600);
        assert_eq!(a.status("pay").unwrap().state, "half_open");
        // The probe's success does.
        let mut saga = saga_with_attempt("saga-4");
        saga.steps[0].attempts[0].outcome = Some(AttemptOutcome::Ok);
        saga.steps[0].status = StepStatus::Succeeded;
        observe(&mut a, &saga, 1700);
        assert_eq!(a.status("pay").unwrap().state, "closed");
        assert_eq!(a.status("pay").unwrap().in_flight, 0);
        let history: Vec<_> = a
            .status("pay")
            .unwrap()
            .history
            .iter()
            .map(|t| (t.at, t.from, t.to, t.cause))
            .collect();
        assert_eq!(
            history,
            vec![
                (
                    1000,
                    BreakerPhase::Closed,
                    BreakerPhase::Open,
                    BreakerCause::Failures
                ),
                (
                    1500,
                    BreakerPhase::Open,
                    BreakerPhase::HalfOpen,
                    BreakerCause::Timeout
                ),
                (
                    1700,
                    BreakerPhase::HalfOpen,
                    BreakerPhase::Closed,
                    BreakerCause::Probe
                ),
            ]
        );
    }

    #[test]
    fn reset_needs_a_known_service_with_a_breaker() {
        let mut a = ServiceAdmission::load(
            vec![policy(Some(1), None)],
            vec![("gone".into(), Breaker::default())],
            vec![],
        );
        assert_eq!(
            a.reset("nope", None, 0).unwrap_err().code(),
            ErrorCode::NotFound
        );
        assert_eq!(
            a.reset("pay", Some(ForcedState::Open), 0)
                .unwrap_err()
                .code(),
            ErrorCode::NotApplicable
        );
        // The record of a service without a breaker is deleted.
        assert_eq!(a.take_dirty(), vec![("gone".to_string(), None)]);
    }

    #[test]
    fn forcing_open_holds_tasks_until_its_timeout_and_forcing_closed_releases_them() {
        let mut a =
            ServiceAdmission::load(vec![policy(None, Some(config(3, 1, 500)))], vec![], vec![]);
        a.reset("pay", Some(ForcedState::Open), 1000).unwrap();
        let status = a.status("pay").unwrap();
        assert_eq!(status.state, "open");
        assert_eq!(status.half_opens_at, Some(1500));
        assert_eq!(a.route("pay", key(1)), Route::Hold(0));
        assert_eq!(
            a.take_report().transitions,
            vec![("pay".to_string(), "open")]
        );
        // Forced open again: the timeout starts over, and the history says so.
        a.reset("pay", Some(ForcedState::Open), 1200).unwrap();
        assert_eq!(a.status("pay").unwrap().half_opens_at, Some(1700));
        assert!(a.take_report().transitions.is_empty());
        a.tick(1600);
        assert_eq!(a.pop_releasable("pay"), None);
        a.reset("pay", Some(ForcedState::Closed), 1650).unwrap();
        assert_eq!(a.pop_releasable("pay").map(|h| h.key), Some(key(1)));
        let history: Vec<_> = a
            .status("pay")
            .unwrap()
            .history
            .iter()
            .map(|t| (t.at, t.from.name(), t.to.name(), t.cause.name()))
            .collect();
        assert_eq!(
            history,
            vec![
                (1000, "closed", "open", "forced"),
                (1200, "open", "open", "forced"),
                (1650, "open", "closed", "forced"),
            ]
        );
        // A plain reset of a closed breaker is no transition.
        a.reset("pay", None, 1700).unwrap();
        assert_eq!(a.status("pay").unwrap().history.len(), 3);
    }

    #[test]
    fn a_forced_open_breaker_half_opens_after_its_timeout() {
        let c = config(3, 1, 500);
        let mut b = Breaker::default();
        assert_eq!(b.force(ForcedState::Open, 100), Some("open"));
        assert_eq!(b.tick(&c, 599), None);
        assert_eq!(b.tick(&c, 600), Some("half_open"));
        assert_eq!(b.state.gate(), Gate::Probe);
        assert_eq!(b.reset(700), Some("closed"));
        let causes: Vec<_> = b.history.iter().map(|t| t.cause).collect();
        assert_eq!(
            causes,
            vec![
                BreakerCause::Forced,
                BreakerCause::Timeout,
                BreakerCause::Reset
            ]
        );
    }

    #[test]
    fn the_history_keeps_the_latest_transitions() {
        let mut b = Breaker::default();
        for at in 0..(HISTORY_LEN as u64 + 5) {
            b.force(ForcedState::Open, at);
        }
        assert_eq!(b.history.len(), HISTORY_LEN);
        assert_eq!(b.history.front().map(|t| t.at), Some(5));
        assert_eq!(b.history.back().map(|t| t.at), Some(HISTORY_LEN as u64 + 4));
    }

    #[test]
    fn a_breaker_without_history_stores_as_its_state_did() {
        let state = BreakerState::Open {
            since: 7,
            failures: 3,
        };
        let old = serde_json::to_string(&state).unwrap();
        let breaker = Breaker::from(state);
        assert_eq!(serde_json::to_string(&breaker).unwrap(), old);
        let loaded: Breaker = serde_json::from_str(&old).unwrap();
        assert_eq!(loaded, breaker);
        let probe = Breaker::from(BreakerState::HalfOpen {
            since: 9,
            probe: Some(key(2)),
            successes: 1,
        });
        let json = serde_json::to_string(&probe).unwrap();
        assert_eq!(json, serde_json::to_string(&probe.state).unwrap());
        assert_eq!(serde_json::from_str::<Breaker>(&json).unwrap(), probe);
        // With history, it round-trips.
        let mut forced = breaker.clone();
        forced.force(ForcedState::Closed, 10);
        let json = serde_json::to_string(&forced).unwrap();
        assert!(
            json.contains(r#""history":[{"at":10,"from":"open","to":"closed","cause":"forced"}]"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Breaker>(&json).unwrap(), forced);
    }
}
