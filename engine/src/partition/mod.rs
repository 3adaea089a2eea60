//! The partition: the single writer of the sagas it owns.
//!
//! One task owns the state of a partition's sagas and applies events to them
//! in order through the pure state machine ([`jetsaga_core::saga::machine`]). I/O
//! happens around it: commands arrive on a channel, each transition becomes
//! one [`Change`] with its outbox rows and timers, the changes of a batch are
//! written in one store transaction ([`Store::commit_many`]) and made durable
//! with one flush (group commit), and only then are the messages that carried
//! the events acknowledged and the callers answered. Each transition is also
//! observed by [`SagaMetrics`], which derives the saga and step metrics from
//! the saga before and after it.
//!
//! An installation has a fixed number of partitions; which one a saga
//! belongs to is [`jetsaga_protocol::partition`]'s to say, and each
//! partition is one [`Partition`] on the engine that leads it.

mod command;
mod commit;
mod journaled;
mod observe;
mod outbox;
mod services;
mod start;
#[cfg(test)]
mod tests;
mod timeouts;
mod transition;

pub use command::{Command, PartitionHandle, ServicesCommand, StartCommand, Starts, api_error};
pub use journaled::{JournalWriter, Marks};

use crate::metrics::SagaMetrics;
use jetsaga_core::admission::ServiceAdmission;
use jetsaga_core::limits::Admission;
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::{Event, Inputs, Millis, Saga};
use jetsaga_protocol::{ApiError, Subjects};
use jetsaga_store::{Change, HeldTask, SagaWrite, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, oneshot};

/// A reply channel of a request to the partition, with the answer to send.
type Reply<T> = (oneshot::Sender<Result<T, ApiError>>, Result<T, ApiError>);

pub use crate::clock::now_ms;

/// What to do once the current batch is durable.
#[derive(Default)]
struct AfterFlush {
    acks: Vec<async_nats::jetstream::Message>,
    start_replies: Vec<Reply<jetsaga_protocol::StartReply>>,
    /// Answers to cancels and retries.
    saga_replies: Vec<Reply<Saga>>,
    delete_replies: Vec<Reply<()>>,
    /// Answers about services ([`jetsaga_core::admission`]), sent after the flush.
    service_replies: Vec<ServiceReply>,
    prune_replies: Vec<Reply<usize>>,
    definition_replies: Vec<Reply<Vec<jetsaga_store::Applied>>>,
    progress: Vec<(String, &'static str)>,
    committed: usize,
}

/// An answer about services, sent once the batch is durable.
type ServiceReply = Box<dyn FnOnce() + Send>;

/// Errors that stop the partition (and with it the engine).
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The store failed; state can no longer be made durable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal did not take a record: another engine leads the
    /// partition now, or JetStream failed.
    #[error(transparent)]
    Journal(#[from] crate::cluster::JournalError),
}

/// The single writer of one partition.
pub struct Partition {
    store: Arc<dyn Store>,
    subjects: Subjects,
    client: async_nats::Client,
    relay: Arc<Notify>,
    rx: mpsc::Receiver<Command>,
    active: HashMap<String, Saga>,
    /// Sagas that finished in the batch being applied: their records in
    /// [`Self::pending`] may hold only what changed, and the store has them
    /// once the batch is written ([`Self::write_pending`] clears this).
    finished: HashMap<String, Saga>,
    /// Step timeouts of dispatched attempts, kept in memory ([`timeouts`]).
    timeouts: timeouts::StepTimeouts,
    /// Changes of the batch being applied, not yet written: the store gets
    /// them in one transaction ([`Self::write_pending`]). Reads of state they
    /// touch look here first ([`Self::saga`], idempotency keys) or write them
    /// before reading the store.
    pending: Vec<Change>,
    definitions: HashMap<(String, u32), Arc<SagaDefinition>>,
    metrics: SagaMetrics,
    max_payload: usize,
    batch_size: usize,
    /// Concurrency limits: running counts and the start queue (`jetsaga_core::limits`).
    limits: Admission,
    /// Service breakers and in-flight limits ([`jetsaga_core::admission`]).
    services: ServiceAdmission,
    /// The engine's environment, which definition policies are checked against.
    environment: Option<String>,
    /// Where records are appended, when the partition is journaled.
    journal: Option<JournalWriter>,
    /// Records written to the store in this batch, not yet appended.
    unsent: Vec<crate::cluster::Record>,
    /// What the batch wrote besides its changes, for the next record.
    staged: journaled::Staged,
    /// This partition's number, and the installation's partition count.
    number: u32,
    count: u32,
}

impl Partition {
    /// Creates the partition and the handle to command it.
    pub fn new(
        store: Arc<dyn Store>,
        subjects: Subjects,
        client: async_nats::Client,
        relay: Arc<Notify>,
        max_payload: usize,
        batch_size: usize,
    ) -> (Self, PartitionHandle) {
        let (tx, rx) = mpsc::channel(batch_size.max(1) * 4);
        let partition = Self {
            store,
            subjects,
            client,
            relay,
            rx,
            active: HashMap::new(),
            finished: HashMap::new(),
            timeouts: timeouts::StepTimeouts::default(),
            pending: Vec::new(),
            definitions: HashMap::new(),
            metrics: SagaMetrics::default(),
            max_payload,
            batch_size: batch_size.max(1),
            limits: Admission::new(None),
            services: ServiceAdmission::default(),
            environment: None,
            journal: None,
            unsent: Vec::new(),
            staged: journaled::Staged::default(),
            number: 0,
            count: 1,
        };
        (partition, PartitionHandle { tx })
    }

    /// Makes this partition `number` of an installation of `count`: the
    /// ids of the sagas it starts say so ([`jetsaga_protocol::partition`]),
    /// and its tasks name it, so that their results come to it.
    pub fn with_number(mut self, number: u32, count: u32) -> Self {
        self.number = number;
        self.count = count.max(1);
        self.metrics = SagaMetrics::of_partition(number, self.count);
        self
    }

    /// Sets the engine's environment (`environment` in the configuration),
    /// against which a definition's `policy.environments` is checked.
    pub fn with_environment(mut self, environment: Option<String>) -> Self {
        self.environment = environment;
        self
    }

    /// Sets the engine's `max_running_sagas` (`None`: unlimited), the limit
    /// of running sagas over all definitions (`jetsaga_core::limits`).
    pub fn with_max_running_sagas(mut self, max: Option<u32>) -> Self {
        self.limits.set_global(max);
        self
    }

    /// A copy of the saga with `id`: from the in-memory set of unfinished
    /// sagas, else from those that finished in this batch, else from the
    /// store (terminal sagas).
    fn saga(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        match self.active.get(id).or_else(|| self.finished.get(id)) {
            Some(s) => Ok(Some(s.clone())),
            None => self.store.saga(id),
        }
    }

    /// The saga with `id`, to apply an event to: an unfinished one is taken
    /// out of the in-memory set (not copied), and goes back with the
    /// transition ([`Self::commit`]) or, on a rejection, unchanged
    /// ([`Self::put_back`]).
    fn take_saga(&mut self, id: &str) -> Result<Option<Saga>, StoreError> {
        match self.active.remove(id) {
            Some(s) => Ok(Some(s)),
            None => self.saga(id),
        }
    }

    /// Puts back a saga [`Self::take_saga`] gave out that did not change.
    fn put_back(&mut self, saga: Saga) {
        if !saga.status.is_terminal() {
            self.active.insert(saga.id.clone(), saga);
        }
    }

    /// The saga an idempotency key is bound to, the batch's changes not yet
    /// written included (two starts with one key in a batch make one saga).
    fn saga_by_idempotency_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        match bound_saga(&self.pending, key) {
            Some(id) => Ok(Some(id.to_owned())),
            None => self.store.saga_by_idempotency_key(key),
        }
    }

    /// Adds a change to the batch (written by [`Self::write_pending`]).
    fn stage(&mut self, change: Change, after: &mut AfterFlush) {
        self.pending.push(change);
        after.committed += 1;
    }
}

/// One copy of a saga per batch: when `pending` (the batch's changes not
/// yet written) holds a record of saga `id`, that copy is taken out and
/// returned, and `change` (the later transition's, about to carry the
/// saga's new record, which must then also write what the earlier one
/// did) takes what it knew of the stored record (its prior) and the key it
/// binds. The earlier change keeps its outbox rows, timers and the rest,
/// but writes (and journals) no record. So a batch that applies many
/// results of one saga (a fan-out) encodes, writes and journals its
/// header once.
fn take_earlier_copy(pending: &mut [Change], id: &str, change: &mut Change) -> Option<SagaWrite> {
    let earlier = pending
        .iter_mut()
        .rev()
        .find(|c| c.saga.as_ref().is_some_and(|s| s.id() == id))?;
    change.prior = std::mem::take(&mut earlier.prior);
    if change.idempotency_key.is_none() {
        change.idempotency_key = earlier.idempotency_key.take();
    }
    earlier.saga.take()
}

/// The task `changes` hold under sequence `seq`, if they do.
fn pending_held(changes: &[Change], seq: u64) -> Option<&HeldTask> {
    changes
        .iter()
        .rev()
        .find_map(|c| c.held_add.iter().find(|(s, _)| *s == seq).map(|(_, t)| t))
}

/// The saga `changes` bind idempotency key `key` to, if they do.
fn bound_saga<'a>(changes: &'a [Change], key: &str) -> Option<&'a str> {
    changes.iter().rev().find_map(|c| {
        c.idempotency_key
            .as_deref()
            .filter(|k| *k == key)
            .and(c.saga.as_ref())
            .map(SagaWrite::id)
    })
}

fn inputs(now: Millis) -> Inputs {
    Inputs {
        now,
        random: rand::random::<f64>(),
    }
}

fn event_label(event: &Event) -> &'static str {
    match event {
        Event::Start => "start",
        Event::TaskResult { .. } => "result",
        Event::TimerFired(_) => "timer",
        Event::Cancel { .. } => "cancel",
        Event::Retry { .. } => "retry",
    }
}
