//! Saga concurrency limits and the durable start queue.
//!
//! Two limits bound how many sagas *run* at once, where running means
//! started and not terminal (`running` or `compensating`):
//!
//! - the engine's `max_running_sagas` ([`crate::config::Config`]), over all
//!   definitions;
//! - a definition's `max_running` ([`crate::saga::definition::SagaDefinition::max_running`]), over
//!   the sagas of that definition.
//!
//! A start over a limit is never refused: the saga is stored `pending`, with
//! its idempotency key bound, together with a row of the start queue
//! ([`QueuedRow`], keyed by an enqueue sequence) in one transaction, and the
//! caller is told it is queued. When room frees (a saga becomes terminal),
//! the partition admits queued sagas: each admission applies
//! [`crate::saga::state::Event::Start`] to the pending saga and removes its
//! queue row in one transaction.
//!
//! **Order.** Sagas of one definition are admitted strictly in the order
//! they were queued. Across definitions the queue is FIFO *among the sagas
//! that fit*: the next admitted saga is the earliest queued one whose
//! definition has room (and only while the global limit has room). A
//! definition at its own limit therefore does not hold back the sagas of
//! other definitions queued behind it (no head-of-line blocking), while the
//! global limit, when reached, holds back everyone.
//!
//! **Fairness to new starts.** A new start runs at once only if nothing
//! queued could be admitted first: before it is judged, the queue is
//! drained of every saga that fits, so a start never overtakes a queued saga
//! of its own definition.
//!
//! This module holds the pure bookkeeping, [`Admission`]: running counts
//! and the queue in memory, rebuilt from the store when the partition
//! starts. The partition (`crate::partition`) does the I/O around it.

use crate::saga::state::{Millis, Saga, SagaState, SagaStatus};
use crate::saga::transition::Transition;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A saga waiting in the durable start queue for room under the concurrency
/// limits (this module). The saga itself is stored `pending`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRow {
    /// The queued saga.
    pub saga_id: String,
    /// Its definition name (whose `max_running` applies).
    pub saga: String,
    /// When it was queued.
    pub enqueued_at: Millis,
}

/// Queued sagas, by definition (gauge).
pub const QUEUED_SAGAS: &str = "engine_queued_sagas";
/// Sagas running or compensating, over all definitions (gauge).
pub const RUNNING_SAGAS: &str = "engine_running_sagas";
/// Time a saga waited in the start queue, enqueue to admission or
/// cancellation (histogram).
pub const QUEUE_WAIT: &str = "engine_saga_queue_wait_seconds";

/// Whether a saga in `status` counts against the limits.
pub fn is_running(status: &SagaStatus) -> bool {
    runs(status.state())
}

/// Whether a saga in `state` counts against the limits.
fn runs(state: SagaState) -> bool {
    matches!(state, SagaState::Running | SagaState::Compensating)
}

/// The limits' gauges, as [`Admission::take_gauges`] gives them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitGauges {
    /// Sagas running over all definitions ([`RUNNING_SAGAS`]).
    pub running: u64,
    /// Queued sagas of each definition that changed ([`QUEUED_SAGAS`]).
    pub queued: Vec<(String, usize)>,
}

/// The running counts and the start queue of one partition.
#[derive(Debug, Default)]
pub struct Admission {
    /// The engine's `max_running_sagas`; `None`: unlimited.
    global: Option<u32>,
    /// Sagas running, over all definitions.
    running_total: u64,
    /// Sagas running, by definition.
    running: HashMap<String, u64>,
    /// The queue, by enqueue sequence.
    queue: BTreeMap<u64, QueuedRow>,
    /// Enqueue sequences by definition: each definition's own FIFO.
    by_definition: HashMap<String, BTreeSet<u64>>,
    /// Enqueue sequence of each queued saga.
    by_saga: HashMap<String, u64>,
    /// The sequence the next queued saga gets.
    next_seq: u64,
    /// Definitions whose `engine_queued_sagas` changed since [`Self::publish_gauges`].
    touched: BTreeSet<String>,
    /// Whether an admission round is due ([`Self::take_due`]).
    due: bool,
}

/// What [`Admission::observe`] learned from a committed transition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// The saga left the queue (admitted or cancelled): remove this row in
    /// the transition's transaction.
    pub dequeued: Option<u64>,
    /// The saga left the running set: room may have freed.
    pub freed: bool,
    /// How long the saga waited in the queue, when it left it, in ms.
    pub waited: Option<Millis>,
}

impl Admission {
    /// Empty bookkeeping under the global limit `global` (`None`: unlimited).
    pub fn new(global: Option<u32>) -> Self {
        Self {
            global,
            next_seq: 1,
            ..Self::default()
        }
    }

    /// Rebuilds the bookkeeping after a restart: counts the running sagas
    /// among `unfinished`, loads the durable queue `rows` in their order.
    ///
    /// Returns what must be repaired in the store: queue rows whose saga is
    /// no longer pending (to remove), and pending sagas without a row (to
    /// enqueue, after every existing row, oldest first). Neither happens
    /// while saga and row are written in one transaction; the repair keeps a
    /// damaged store from leaving a saga waiting forever.
    pub fn resume<'a>(
        &mut self,
        unfinished: impl IntoIterator<Item = &'a Saga>,
        rows: Vec<(u64, QueuedRow)>,
    ) -> Repair {
        let mut pending: BTreeMap<&str, &Saga> = BTreeMap::new();
        for saga in unfinished {
            if is_running(&saga.status) {
                self.count(&saga.name, true);
            } else if saga.status == SagaStatus::Pending {
                pending.insert(saga.id.as_str(), saga);
            }
        }
        let mut repair = Repair::default();
        for (seq, row) in rows {
            self.next_seq = self.next_seq.max(seq + 1);
            if pending.remove(row.saga_id.as_str()).is_some()
                && !self.by_saga.contains_key(&row.saga_id)
            {
                self.insert(seq, row);
            } else {
                repair.stale_rows.push(seq);
            }
        }
        // Ids are UUIDv7: id order is creation order.
        repair.orphans = pending.into_values().map(|s| s.id.clone()).collect();
        // Limits may have changed while the engine was down.
        self.due = true;
        repair
    }

    /// Sets the global limit (`None`: unlimited).
    pub fn set_global(&mut self, global: Option<u32>) {
        self.global = global;
    }

    /// The global limit.
    pub fn global(&self) -> Option<u32> {
        self.global
    }

    /// Sagas running, over all definitions.
    pub fn running(&self) -> u64 {
        self.running_total
    }

    /// Sagas running of definition `name`.
    pub fn running_of(&self, name: &str) -> u64 {
        self.running.get(name).copied().unwrap_or(0)
    }

    /// Number of queued sagas.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Number of queued sagas of definition `name`.
    pub fn queued_of(&self, name: &str) -> usize {
        self.by_definition.get(name).map_or(0, BTreeSet::len)
    }

    /// The definitions with queued sagas.
    pub fn queued_definitions(&self) -> impl Iterator<Item = &str> {
        self.by_definition.keys().map(String::as_str)
    }

    /// Whether the global limit has room for one more running saga.
    pub fn global_room(&self) -> bool {
        self.global
            .is_none_or(|max| self.running_total < u64::from(max))
    }

    /// Whether one more saga of definition `name`, whose limit is
    /// `max_running`, may run now.
    pub fn room(&self, name: &str, max_running: Option<u32>) -> bool {
        self.global_room() && max_running.is_none_or(|max| self.running_of(name) < u64::from(max))
    }

    /// Queues saga `saga_id` of definition `saga`; returns the row to write
    /// (in the saga's transaction) and its 1-based position in the queue.
    pub fn enqueue(&mut self, saga_id: &str, saga: &str, now: Millis) -> ((u64, QueuedRow), usize) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let row = QueuedRow {
            saga_id: saga_id.to_owned(),
            saga: saga.to_owned(),
            enqueued_at: now,
        };
        self.insert(seq, row.clone());
        ((seq, row), self.queue.len())
    }

    /// The queue row of saga `id`, if it is queued.
    pub fn queued_row(&self, id: &str) -> Option<(u64, &QueuedRow)> {
        let seq = *self.by_saga.get(id)?;
        self.queue.get(&seq).map(|row| (seq, row))
    }

    /// 1-based position of saga `id` in the queue (the API reads it from the
    /// store: `StartQueueTable::queue_position`).
    #[cfg(test)]
    pub fn position(&self, id: &str) -> Option<usize> {
        let seq = *self.by_saga.get(id)?;
        Some(self.queue.range(..seq).count() + 1)
    }

    /// The queued saga to admit next, given each queued definition's limit
    /// (`limit_of`), or `None` when nothing queued fits. See the module
    /// docs for the order.
    pub fn next(&self, limit_of: impl Fn(&str) -> Option<u32>) -> Option<(u64, &QueuedRow)> {
        if !self.global_room() {
            return None;
        }
        self.by_definition
            .iter()
            .filter(|(name, _)| self.room(name, limit_of(name)))
            .filter_map(|(_, seqs)| seqs.first().copied())
            .min()
            .and_then(|seq| self.queue.get(&seq).map(|row| (seq, row)))
    }

    /// Observes a transition about to be committed. Keeps the running
    /// counts, takes an admitted or cancelled saga off the queue (the
    /// returned row is to be removed in the same transaction) and says how
    /// long it waited.
    pub fn observe(&mut self, t: &Transition<'_>, now: Millis) -> Observed {
        let was = t.from.is_some_and(runs);
        let is = runs(t.to);
        if was != is {
            self.count(&t.saga.name, is);
        }
        let mut observed = Observed {
            freed: was && !is,
            ..Observed::default()
        };
        self.due |= observed.freed;
        if t.to != SagaState::Pending
            && let Some(seq) = self.by_saga.get(&t.saga.id).copied()
            && let Some(row) = self.remove(seq)
        {
            observed.waited = Some(now.saturating_sub(row.enqueued_at));
            observed.dequeued = Some(seq);
        }
        observed
    }

    /// Whether an admission round is due: room may have freed, or the
    /// limits may have changed, since the last call. Clears the flag.
    pub fn take_due(&mut self) -> bool {
        std::mem::take(&mut self.due)
    }

    /// Drops row `seq` from the queue (one whose saga cannot start).
    pub fn forget(&mut self, seq: u64) {
        self.remove(seq);
    }

    /// Asks for an admission round at the next opportunity.
    pub fn set_due(&mut self) {
        self.due = true;
    }

    /// The value of `engine_running_sagas`, and of each `engine_queued_sagas`
    /// series that changed since the last call.
    pub fn take_gauges(&mut self) -> LimitGauges {
        let queued = std::mem::take(&mut self.touched)
            .into_iter()
            .map(|name| {
                let n = self.queued_of(&name);
                (name, n)
            })
            .collect();
        LimitGauges {
            running: self.running_total,
            queued,
        }
    }

    /// Creates the `engine_queued_sagas` series of `definitions` (at their
    /// current value), so that a dashboard shows zero rather than nothing.
    pub fn know<'a>(&mut self, definitions: impl IntoIterator<Item = &'a str>) {
        self.touched
            .extend(definitions.into_iter().map(str::to_owned));
    }

    fn count(&mut self, name: &str, up: bool) {
        let n = self.running.entry(name.to_owned()).or_default();
        if up {
            *n += 1;
            self.running_total += 1;
        } else {
            *n = n.saturating_sub(1);
            self.running_total = self.running_total.saturating_sub(1);
        }
    }

    fn insert(&mut self, seq: u64, row: QueuedRow) {
        self.by_definition
            .entry(row.saga.clone())
            .or_default()
            .insert(seq);
        self.by_saga.insert(row.saga_id.clone(), seq);
        self.touched.insert(row.saga.clone());
        self.queue.insert(seq, row);
    }

    fn remove(&mut self, seq: u64) -> Option<QueuedRow> {
        let row = self.queue.remove(&seq)?;
        self.by_saga.remove(&row.saga_id);
        if let Some(seqs) = self.by_definition.get_mut(&row.saga) {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.by_definition.remove(&row.saga);
            }
        }
        self.touched.insert(row.saga.clone());
        Some(row)
    }
}

/// What [`Admission::resume`] found inconsistent in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repair {
    /// Queue rows whose saga is not pending: to remove.
    pub stale_rows: Vec<u64>,
    /// Pending sagas without a queue row, oldest first: to enqueue.
    pub orphans: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::transition::Before;

    impl Admission {
        /// Observes `after`, whose state was `before` (`None`: a new saga).
        fn observe_status(
            &mut self,
            before: Option<&SagaStatus>,
            after: &Saga,
            now: Millis,
        ) -> Observed {
            let before = match before {
                None => Before::absent(),
                Some(status) => Before::of(&Saga {
                    status: status.clone(),
                    ..after.clone()
                }),
            };
            self.observe(&before.diff(after), now)
        }
    }
    use crate::saga::definition::{self, Format, SagaDefinition};
    use jetsaga_protocol::ErrorCode;
    use serde_json::json;

    fn saga(id: &str, name: &str, status: SagaStatus) -> Saga {
        Saga {
            id: id.into(),
            name: name.into(),
            definition_version: 1,
            input: json!(null),
            idempotency_key: None,
            generation: 0,
            status,
            steps: Vec::new(),
            created_at: 0,
            updated_at: 0,
            finished_at: None,
            trace_parent: None,
            event_seq: 0,
        }
    }

    /// Admits everything that fits, in order; returns the admitted ids.
    fn drain(a: &mut Admission, limits: &HashMap<&str, u32>) -> Vec<String> {
        let mut admitted = Vec::new();
        while let Some((_, row)) = a.next(|n| limits.get(n).copied()) {
            let s = saga(&row.saga_id, &row.saga, SagaStatus::Running);
            let observed = a.observe_status(Some(&SagaStatus::Pending), &s, 0);
            assert!(observed.dequeued.is_some());
            admitted.push(s.id);
        }
        admitted
    }

    fn finish(a: &mut Admission, id: &str, name: &str) {
        let observed = a.observe_status(
            Some(&SagaStatus::Running),
            &saga(id, name, SagaStatus::Completed),
            0,
        );
        assert!(observed.freed);
    }

    #[test]
    fn global_limit_admits_in_queue_order() {
        let mut a = Admission::new(Some(2));
        let none = HashMap::new();
        for i in 0..6 {
            let id = format!("s{i}");
            if a.room("x", None) {
                a.observe_status(None, &saga(&id, "x", SagaStatus::Running), 0);
            } else {
                a.enqueue(&id, "x", 0);
            }
        }
        assert_eq!((a.running(), a.queued()), (2, 4));
        assert_eq!(a.position("s2"), Some(1));
        assert_eq!(a.position("s5"), Some(4));
        assert!(drain(&mut a, &none).is_empty());
        finish(&mut a, "s0", "x");
        assert_eq!(drain(&mut a, &none), ["s2"]);
        finish(&mut a, "s1", "x");
        finish(&mut a, "s2", "x");
        assert_eq!(drain(&mut a, &none), ["s3", "s4"]);
        assert_eq!(a.position("s5"), Some(1));
        assert_eq!(a.running(), 2);
    }

    #[test]
    fn a_definition_at_its_limit_does_not_block_the_others() {
        let mut a = Admission::new(Some(3));
        let limits = HashMap::from([("a", 1)]);
        a.observe_status(None, &saga("a0", "a", SagaStatus::Running), 0);
        a.enqueue("a1", "a", 0);
        a.enqueue("a2", "a", 0);
        a.enqueue("b1", "b", 0);
        // a is full; b fits behind a's queued sagas.
        assert_eq!(drain(&mut a, &limits), ["b1"]);
        assert_eq!(a.running(), 2);
        // a's order is strict FIFO.
        finish(&mut a, "a0", "a");
        assert_eq!(drain(&mut a, &limits), ["a1"]);
        finish(&mut a, "a1", "a");
        assert_eq!(drain(&mut a, &limits), ["a2"]);
    }

    #[test]
    fn the_global_limit_holds_back_every_definition() {
        let mut a = Admission::new(Some(1));
        a.observe_status(None, &saga("a0", "a", SagaStatus::Running), 0);
        a.enqueue("b1", "b", 0);
        a.enqueue("a1", "a", 0);
        assert!(!a.room("c", None));
        assert!(a.next(|_| None).is_none());
        finish(&mut a, "a0", "a");
        // Earliest queued first, whatever the definition.
        assert_eq!(drain(&mut a, &HashMap::new()), ["b1"]);
    }

    #[test]
    fn compensating_counts_as_running_and_pending_does_not() {
        let mut a = Admission::new(None);
        let running = saga("s", "x", SagaStatus::Running);
        a.observe_status(None, &running, 0);
        let compensating = saga("s", "x", SagaStatus::Compensating { reason: "r".into() });
        let o = a.observe_status(Some(&SagaStatus::Running), &compensating, 0);
        assert!(!o.freed);
        assert_eq!(a.running_of("x"), 1);
        a.observe_status(None, &saga("p", "x", SagaStatus::Pending), 0);
        assert_eq!(a.running(), 1);
        let done = saga("s", "x", SagaStatus::Compensated { reason: "r".into() });
        assert!(a.observe_status(Some(&compensating.status), &done, 0).freed);
        assert_eq!(a.running(), 0);
    }

    #[test]
    fn a_cancelled_queued_saga_leaves_the_queue() {
        let mut a = Admission::new(Some(1));
        a.observe_status(None, &saga("r", "x", SagaStatus::Running), 0);
        a.enqueue("q1", "x", 10);
        a.enqueue("q2", "x", 20);
        let cancelled = saga(
            "q1",
            "x",
            SagaStatus::Cancelled {
                reason: "no".into(),
            },
        );
        let o = a.observe_status(Some(&SagaStatus::Pending), &cancelled, 30);
        assert_eq!(
            o,
            Observed {
                dequeued: Some(1),
                freed: false,
                waited: Some(20),
            }
        );
        assert_eq!(a.position("q2"), Some(1));
        assert_eq!(a.running(), 1);
        finish(&mut a, "r", "x");
        assert_eq!(drain(&mut a, &HashMap::new()), ["q2"]);
    }

    #[test]
    fn resume_rebuilds_counts_and_order_and_finds_what_to_repair() {
        let unfinished = vec![
            saga("01-run", "x", SagaStatus::Running),
            saga(
                "02-comp",
                "y",
                SagaStatus::Compensating { reason: "r".into() },
            ),
            saga("03-q", "x", SagaStatus::Pending),
            saga("04-q", "y", SagaStatus::Pending),
            saga("05-orphan", "x", SagaStatus::Pending),
        ];
        let row = |id: &str, name: &str| QueuedRow {
            saga_id: id.into(),
            saga: name.into(),
            enqueued_at: 0,
        };
        let rows = vec![
            (7, row("04-q", "y")),
            (9, row("03-q", "x")),
            (11, row("gone", "x")),
        ];
        let mut a = Admission::new(Some(2));
        let repair = a.resume(&unfinished, rows);
        assert_eq!(repair.stale_rows, [11]);
        assert_eq!(repair.orphans, ["05-orphan"]);
        assert_eq!(
            (a.running(), a.running_of("x"), a.running_of("y")),
            (2, 1, 1)
        );
        // The stored order, not the id order, decides.
        assert_eq!(a.position("04-q"), Some(1));
        assert_eq!(a.position("03-q"), Some(2));
        // New rows continue after the highest stored sequence.
        let ((seq, _), position) = a.enqueue("06-new", "x", 0);
        assert_eq!((seq, position), (12, 3));
    }

    proptest::proptest! {
        /// Random starts and finishes under random limits, with the
        /// partition's rules (a start runs only if it fits and nothing of its
        /// definition waits; every finish is followed by an admission round):
        /// the limits always hold, nothing that fits is left waiting, and
        /// each definition's sagas start in the order they came.
        #[test]
        fn admission_keeps_limits_order_and_progress(
            global in proptest::option::of(1u32..4),
            limits in proptest::collection::vec(proptest::option::of(1u32..3), 3),
            ops in proptest::collection::vec((0usize..3, proptest::bool::ANY, 0usize..8), 1..80),
        ) {
            let names = ["a", "b", "c"];
            let limit_of = |n: &str| limits[names.iter().position(|x| *x == n).unwrap()];
            let mut a = Admission::new(global);
            let mut running: Vec<(String, String)> = Vec::new();
            let mut started: HashMap<String, Vec<u64>> = HashMap::new();
            let mut next_id = 0u64;
            for (def, is_start, pick) in ops {
                if is_start || running.is_empty() {
                    let name = names[def];
                    let id = format!("{next_id:04}");
                    next_id += 1;
                    if a.room(name, limit_of(name)) && a.queued_of(name) == 0 {
                        a.observe_status(None, &saga(&id, name, SagaStatus::Running), 0);
                        started.entry(name.into()).or_default().push(next_id);
                        running.push((id, name.into()));
                    } else {
                        a.enqueue(&id, name, 0);
                    }
                } else {
                    let (id, name) = running.remove(pick % running.len());
                    let done = saga(&id, &name, SagaStatus::Completed);
                    a.observe_status(Some(&SagaStatus::Running), &done, 0);
                }
                while let Some((_, row)) = a.next(limit_of) {
                    let (id, name) = (row.saga_id.clone(), row.saga.clone());
                    let admitted = saga(&id, &name, SagaStatus::Running);
                    a.observe_status(Some(&SagaStatus::Pending), &admitted, 0);
                    let order: u64 = id.parse::<u64>().unwrap() + 1;
                    started.entry(name.clone()).or_default().push(order);
                    running.push((id, name));
                }
                proptest::prop_assert_eq!(a.running(), running.len() as u64);
                if let Some(max) = global {
                    proptest::prop_assert!(a.running() <= u64::from(max));
                }
                for name in names {
                    if let Some(max) = limit_of(name) {
                        proptest::prop_assert!(a.running_of(name) <= u64::from(max));
                    }
                    // Progress: a definition with waiting sagas has no room.
                    if a.queued_of(name) > 0 {
                        proptest::prop_assert!(!a.room(name, limit_of(name)));
                    }
                }
            }
            for (name, order) in started {
                proptest::prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{}: {:?}", name, order);
            }
        }
    }

    #[test]
    fn gauges_and_the_wait_follow_the_queue() {
        let mut a = Admission::new(Some(1));
        a.know(["x", "y"]);
        a.observe_status(None, &saga("r", "x", SagaStatus::Running), 0);
        a.enqueue("q1", "x", 1_000);
        a.enqueue("q2", "x", 1_000);
        let gauges = a.take_gauges();
        assert_eq!(gauges.running, 1);
        assert_eq!(gauges.queued, vec![("x".into(), 2), ("y".into(), 0)]);
        assert_eq!(a.take_gauges().queued, vec![], "only what changed");
        finish(&mut a, "r", "x");
        let admitted = saga("q1", "x", SagaStatus::Running);
        let o = a.observe_status(Some(&SagaStatus::Pending), &admitted, 3_500);
        assert_eq!(o.waited, Some(2_500));
        assert_eq!(a.take_gauges().queued, vec![("x".into(), 1)]);
    }

    #[test]
    fn max_running_is_read_and_validated() {
        let file = |limit: &str| {
            format!(
                "sagas:\n  s:\n    max_running: {limit}\n    steps:\n      - {{id: a, service: svc, operation: op}}\n"
            )
        };
        let defs = definition::parse_str("d.yaml", &file("3"), Format::Yaml).unwrap();
        assert_eq!(defs.sagas[0].max_running, Some(3));
        for bad in ["0", "-1", "5000000000"] {
            let e = definition::parse_str("d.yaml", &file(bad), Format::Yaml).unwrap_err();
            assert_eq!(e.code(), ErrorCode::DefLimit.as_str(), "{bad}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("d.yaml")
                    && text.contains("saga `s`")
                    && text.contains("max_running"),
                "{text}"
            );
        }
        let none = "sagas:\n  s:\n    steps:\n      - {id: a, service: svc, operation: op}\n";
        let defs = definition::parse_str("d.yaml", none, Format::Yaml).unwrap();
        assert_eq!(defs.sagas[0].max_running, None);
        // Stored definitions without the field stay readable.
        let mut value = serde_json::to_value(&defs.sagas[0]).unwrap();
        assert!(value.get("max_running").is_none());
        value.as_object_mut().unwrap().remove("max_running");
        let back: SagaDefinition = serde_json::from_value(value).unwrap();
        assert_eq!(back.max_running, None);
        let mut zero = defs.sagas[0].clone();
        zero.max_running = Some(0);
        assert_eq!(
            definition::validate(&zero).unwrap_err().code(),
            ErrorCode::DefLimit.as_str()
        );
    }
}
