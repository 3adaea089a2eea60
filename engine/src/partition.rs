//! The partition: the single writer of the sagas it owns.
//!
//! One task owns the state of a partition's sagas and applies events to them
//! in order through the pure state machine ([`jetsaga_core::saga::machine`]). I/O
//! happens around it: commands arrive on a channel, each transition becomes
//! one [`Change`] with its outbox rows and timers, the changes of a batch are
//! written in one store transaction ([`jetsaga_store::GroupCommit::commit_many`]) and made durable
//! with one flush (group commit), and only then are the messages that carried
//! the events acknowledged and the callers answered. Each transition is also
//! observed by [`SagaMetrics`], which derives the saga and step metrics from
//! the saga before and after it.
//!
//! The key space already exists ([`partition_of`]); the engine runs one
//! partition today.

use crate::crash_points;
use crate::metrics::{Before, SagaMetrics};
use async_nats::jetstream;
use jetsaga_core::admission::{AttemptKey, Route, ServiceAdmission, ServiceStatus};
use jetsaga_core::limits::Admission;
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::definition::ServicePolicy;
use jetsaga_core::saga::machine;
use jetsaga_core::saga::state::TimerKind;
use jetsaga_core::saga::state::{Effect, Event, Inputs, LifecycleEvent, Millis, Rejection, Saga};
use jetsaga_protocol::{
    self as protocol, self, ApiError, HEADER_IDEMPOTENCY_KEY, HEADER_SAGA_ID, StartReply, Subjects,
    Task, TaskKind, TaskResult,
};
use jetsaga_store::{Change, HeldTask, OutboxMessage, Prior, Store, StoreError, TimerRow};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, mpsc, oneshot};

/// Number of partitions of the key space. Sagas map to partitions by id.
pub const PARTITIONS: u32 = 1;

/// A reply channel of a request to the partition, with the answer to send.
type Reply<T> = (oneshot::Sender<Result<T, ApiError>>, Result<T, ApiError>);

/// The partition that owns saga `saga_id`.
pub fn partition_of(saga_id: &str) -> u32 {
    // FNV-1a: stable across releases and platforms, unlike `DefaultHasher`.
    let mut hash: u32 = 0x811c_9dc5;
    for b in saga_id.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    #[allow(clippy::modulo_one)] // one partition today; the key space is already real
    {
        hash % PARTITIONS
    }
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// A request to start a saga.
#[derive(Debug, Clone)]
pub struct StartCommand {
    /// Definition name.
    pub saga: String,
    /// Saga input.
    pub input: Value,
    /// Idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// The caller's W3C `traceparent`, validated ([`crate::trace::caller`]).
    pub trace_parent: Option<String>,
}

/// Commands the partition accepts.
#[derive(Debug)]
pub enum Command {
    /// Start a saga; `reply` (API) and/or `ack` (durable start message) are
    /// answered once the start is durable.
    Start {
        /// What to start.
        start: StartCommand,
        /// Where to answer, for request/reply starts.
        reply: Option<oneshot::Sender<Result<StartReply, ApiError>>>,
        /// Message to acknowledge, for durable starts.
        ack: Option<jetstream::Message>,
    },
    /// A worker's result.
    Result {
        /// The decoded result.
        result: TaskResult,
        /// The message that carried it, acknowledged once applied durably.
        msg: jetstream::Message,
    },
    /// Cancel a saga.
    Cancel {
        /// Saga id.
        id: String,
        /// Compensate completed steps.
        compensate: bool,
        /// Why.
        reason: String,
        /// Where to answer.
        reply: oneshot::Sender<Result<Saga, ApiError>>,
    },
    /// Retry a finished saga (resume its rollback, or run it again).
    Retry {
        /// Saga id.
        id: String,
        /// Only resume the rollback of a `partially_compensated` saga.
        compensation_only: bool,
        /// Where to answer.
        reply: oneshot::Sender<Result<Saga, ApiError>>,
    },
    /// Delete a terminal saga.
    Delete {
        /// Saga id.
        id: String,
        /// Where to answer.
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// A request about service breakers and limits ([`jetsaga_core::admission`]).
    Services(ServicesCommand),
    /// Delete up to `limit` terminal sagas finished at or before `before`
    /// (retention: [`crate::retention`]); answered with how many were
    /// deleted once that is durable.
    Prune {
        /// Finish time cut-off.
        before: Millis,
        /// Most sagas to delete.
        limit: usize,
        /// Where to answer.
        reply: oneshot::Sender<Result<usize, ApiError>>,
    },
}

/// Requests about service breakers and in-flight limits ([`jetsaga_core::admission`]).
#[derive(Debug)]
pub enum ServicesCommand {
    /// Service policies were applied (stored already): use them.
    Policies {
        /// The applied policies.
        policies: Vec<ServicePolicy>,
        /// Answered once they are in use.
        reply: oneshot::Sender<Result<(), ApiError>>,
    },
    /// Every service with a policy.
    List {
        /// Where to answer.
        reply: oneshot::Sender<Result<Vec<ServiceStatus>, ApiError>>,
    },
    /// One service.
    Status {
        /// Service name.
        service: String,
        /// Where to answer.
        reply: oneshot::Sender<Result<ServiceStatus, ApiError>>,
    },
    /// Close a service's breaker and release its held tasks.
    Reset {
        /// Service name.
        service: String,
        /// Answered once the reset is durable.
        reply: oneshot::Sender<Result<ServiceStatus, ApiError>>,
    },
}

/// A cheap, cloneable handle to send commands to the partition.
#[derive(Debug, Clone)]
pub struct PartitionHandle {
    tx: mpsc::Sender<Command>,
}

impl PartitionHandle {
    /// Sends a command; fails when the partition has stopped.
    pub async fn send(&self, cmd: Command) -> Result<(), ApiError> {
        self.tx.send(cmd).await.map_err(|_| ApiError {
            code: "E-UNAVAILABLE".into(),
            message: "the engine is shutting down; retry against a running engine".into(),
        })
    }

    /// Starts a saga and waits until the start is durable.
    pub async fn start(&self, start: StartCommand) -> Result<StartReply, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Start {
            start,
            reply: Some(tx),
            ack: None,
        })
        .await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Cancels a saga and waits until the cancellation is durable.
    pub async fn cancel(
        &self,
        id: String,
        compensate: bool,
        reason: String,
    ) -> Result<Saga, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Cancel {
            id,
            compensate,
            reason,
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Retries a finished saga and waits until the retry is durable.
    pub async fn retry(&self, id: String, compensation_only: bool) -> Result<Saga, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Retry {
            id,
            compensation_only,
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Deletes a terminal saga and waits until the deletion is durable.
    pub async fn delete(&self, id: String) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Delete { id, reply: tx }).await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Puts applied service policies to use ([`jetsaga_core::admission`]).
    pub async fn service_policies(&self, policies: Vec<ServicePolicy>) -> Result<(), ApiError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Services(ServicesCommand::Policies {
            policies,
            reply,
        }))
        .await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Every service with a policy: breaker, held and in-flight tasks.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Services(ServicesCommand::List { reply }))
            .await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// One service's breaker, held and in-flight tasks.
    pub async fn service(&self, service: String) -> Result<ServiceStatus, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Services(ServicesCommand::Status {
            service,
            reply,
        }))
        .await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Closes a service's breaker, releasing its held tasks; answers once
    /// that is durable.
    pub async fn reset_breaker(&self, service: String) -> Result<ServiceStatus, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Services(ServicesCommand::Reset { service, reply }))
            .await?;
        rx.await.map_err(|_| unavailable())?
    }

    /// Prunes up to `limit` sagas finished at or before `before` and waits
    /// until that is durable; returns how many were deleted.
    pub async fn prune(&self, before: Millis, limit: usize) -> Result<usize, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Prune {
            before,
            limit,
            reply: tx,
        })
        .await?;
        rx.await.map_err(|_| unavailable())?
    }
}

fn unavailable() -> ApiError {
    ApiError {
        code: "E-UNAVAILABLE".into(),
        message: "the engine stopped before answering; retry".into(),
    }
}

/// Builds an [`ApiError`].
pub fn api_error(code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        code: code.into(),
        message: message.into(),
    }
}

/// Errors that stop the partition (and with it the engine).
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The store failed; state can no longer be made durable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to do once the current batch is durable.
#[derive(Default)]
struct AfterFlush {
    acks: Vec<jetstream::Message>,
    start_replies: Vec<Reply<StartReply>>,
    /// Answers to cancels and retries.
    saga_replies: Vec<Reply<Saga>>,
    delete_replies: Vec<Reply<()>>,
    /// Answers about services ([`jetsaga_core::admission`]), sent after the flush.
    service_replies: Vec<ServiceReply>,
    prune_replies: Vec<Reply<usize>>,
    progress: Vec<(String, &'static str)>,
    committed: usize,
}

/// A batch whose flush is in progress (see `Partition::process`).
struct Flushing {
    /// The store's flush, covering every write of the batch.
    done: futures::future::BoxFuture<'static, Result<(), StoreError>>,
    /// What to do once it completes.
    after: AfterFlush,
    /// When the flush started, for the debug log.
    started: std::time::Instant,
}

/// The single writer of one partition.
pub struct Partition {
    store: Arc<dyn Store>,
    subjects: Subjects,
    client: async_nats::Client,
    relay: Arc<Notify>,
    rx: mpsc::Receiver<Command>,
    active: HashMap<String, Saga>,
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
            pending: Vec::new(),
            definitions: HashMap::new(),
            metrics: SagaMetrics::default(),
            max_payload,
            batch_size: batch_size.max(1),
            limits: Admission::new(None),
            services: ServiceAdmission::default(),
            environment: None,
        };
        (partition, PartitionHandle { tx })
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

    /// Runs until every [`PartitionHandle`] is dropped, then applies what is
    /// still queued, flushes and returns. Unfinished sagas in the store are
    /// resumed first: their timers and outbox rows are durable, so nothing
    /// else is needed to continue them.
    pub async fn run(mut self) -> Result<(), PartitionError> {
        for saga in self.store.unfinished_sagas()? {
            self.active.insert(saga.id.clone(), saga);
        }
        let definitions = self.store.list_definitions()?;
        self.metrics.resume(
            definitions.iter().map(|d| d.name.as_str()),
            self.active.values(),
        );
        tracing::info!(unfinished = self.active.len(), "partition resumed");
        self.resume_services()?;
        self.resume_limits(&definitions).await?;
        let mut batch = Vec::with_capacity(self.batch_size);
        // The flush of the last batch, running while the next one is applied.
        let mut flushing: Option<Flushing> = None;
        loop {
            let next_timer = self.store.next_timer()?.map(|t| t.due);
            // Open circuit breakers half-open on time, too (`jetsaga_core::admission`).
            let next = match (next_timer, self.services.next_wake(now_ms())) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = match next {
                Some(due) => Duration::from_millis(due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            // `None`: the flush in progress completed; else whether the
            // command channel is still open.
            let open = tokio::select! {
                biased;
                done = async {
                    match flushing.as_mut() {
                        Some(f) => (&mut f.done).await,
                        None => std::future::pending().await,
                    }
                } => {
                    done?;
                    None
                }
                n = self.rx.recv_many(&mut batch, self.batch_size) => Some(n > 0),
                _ = tokio::time::sleep(wait) => Some(true),
            };
            let Some(open) = open else {
                if let Some(f) = flushing.take() {
                    self.flushed(f).await;
                }
                continue;
            };
            self.process(&mut batch, &mut flushing).await?;
            if !open {
                if let Some(mut f) = flushing.take() {
                    (&mut f.done).await?;
                    self.flushed(f).await;
                }
                break;
            }
        }
        tracing::info!("partition stopped");
        Ok(())
    }

    /// Applies a batch of commands and the due timers, then starts the one
    /// flush that makes them durable (group commit) and returns without
    /// waiting for it: the next batch is applied while the disk syncs.
    /// `flushing` holds the flush in progress; the previous one is awaited
    /// (and its batch answered) before a new one starts, so answers go out
    /// in order and never before the state they report is durable.
    async fn process(
        &mut self,
        batch: &mut Vec<Command>,
        flushing: &mut Option<Flushing>,
    ) -> Result<(), PartitionError> {
        let mut after = AfterFlush::default();
        let started = std::time::Instant::now();
        for cmd in batch.drain(..) {
            self.handle(cmd, &mut after)?;
        }
        self.fire_timers(&mut after)?;
        // Room freed in this batch goes to queued sagas (`jetsaga_core::limits`).
        self.admit_queued(&mut after)?;
        // The batch's changes in one transaction (a store error stops the
        // partition, nothing of the batch answered).
        self.write_pending()?;
        let apply_us = started.elapsed().as_micros() as u64;
        if let Some(mut previous) = flushing.take() {
            (&mut previous.done).await?;
            self.flushed(previous).await;
        }
        if after.committed > 0 {
            tracing::debug!(
                transitions = after.committed,
                acks = after.acks.len(),
                replies = after.start_replies.len() + after.saga_replies.len(),
                apply_us,
                "group commit"
            );
            crash_points::pass(crash_points::PARTITION_AFTER_COMMIT);
            let store = self.store.clone();
            *flushing = Some(Flushing {
                done: Box::pin(async move { store.flush().await }),
                after,
                started: std::time::Instant::now(),
            });
        } else {
            // Nothing new to make durable, and everything before is.
            self.answer(after).await;
        }
        Ok(())
    }

    /// A batch's flush completed: wake the relay, then answer the batch.
    async fn flushed(&mut self, f: Flushing) {
        crash_points::pass(crash_points::PARTITION_AFTER_FLUSH);
        self.relay.notify_one();
        tracing::debug!(
            transitions = f.after.committed,
            flush_us = f.started.elapsed().as_micros() as u64,
            "batch durable"
        );
        self.answer(f.after).await;
    }

    /// Acknowledges, replies and notifies for a batch that is durable.
    async fn answer(&mut self, after: AfterFlush) {
        let answer_started = std::time::Instant::now();
        for msg in after.acks {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered and deduplicated");
            }
        }
        for (tx, r) in after.start_replies {
            let _ = tx.send(r);
        }
        for (tx, r) in after.saga_replies {
            let _ = tx.send(r);
        }
        for (tx, r) in after.delete_replies {
            let _ = tx.send(r);
        }
        for reply in after.service_replies {
            reply();
        }
        for (tx, r) in after.prune_replies {
            let _ = tx.send(r);
        }
        for (id, state) in after.progress {
            let _ = self
                .client
                .publish(self.subjects.progress(&id), state.into())
                .await;
        }
        tracing::debug!(
            answer_us = answer_started.elapsed().as_micros() as u64,
            "batch answered"
        );
    }

    fn handle(&mut self, cmd: Command, after: &mut AfterFlush) -> Result<(), PartitionError> {
        match cmd {
            Command::Start { start, reply, ack } => {
                // Queued sagas that fit go before a new start (`jetsaga_core::limits`).
                self.admit_queued(after)?;
                let result = self.start(start, after);
                let result = match result {
                    Ok(r) => Ok(r),
                    Err(StartFailure::Store(e)) => return Err(e.into()),
                    Err(StartFailure::Api(e)) => {
                        // Who answers a caller counts its refusals (the API,
                        // HTTP and trigger doors do); the partition counts
                        // only what nobody is answered for: a durable start.
                        if reply.is_none() {
                            reject("start", &e.code, &e.message);
                        }
                        Err(e)
                    }
                };
                if let Some(tx) = reply {
                    after.start_replies.push((tx, result));
                }
                if let Some(msg) = ack {
                    after.acks.push(msg);
                }
            }
            Command::Result { result, msg } => {
                self.apply_result(result, after)?;
                after.acks.push(msg);
            }
            Command::Cancel {
                id,
                compensate,
                reason,
                reply,
            } => {
                let event = Event::Cancel { compensate, reason };
                let r = self.operator_event(&id, event, "cannot cancel", after)?;
                after.saga_replies.push((reply, r));
            }
            Command::Retry {
                id,
                compensation_only,
                reply,
            } => {
                let event = Event::Retry { compensation_only };
                let r = self.operator_event(&id, event, "cannot retry", after)?;
                after.saga_replies.push((reply, r));
            }
            Command::Delete { id, reply } => {
                let r = self.delete(&id, after)?;
                after.delete_replies.push((reply, r));
            }
            Command::Services(cmd) => self.services_command(cmd, after)?,
            Command::Prune {
                before,
                limit,
                reply,
            } => {
                // Pruning reads and deletes in the store itself.
                self.write_pending()?;
                let pruned = crate::retention::prune(&*self.store, before, limit)?;
                for saga in &pruned {
                    self.active.remove(&saga.id);
                }
                after.committed += pruned.len();
                after.prune_replies.push((reply, Ok(pruned.len())));
            }
        }
        Ok(())
    }

    fn definition(
        &mut self,
        name: &str,
        version: u32,
    ) -> Result<Option<Arc<SagaDefinition>>, StoreError> {
        let key = (name.to_string(), version);
        if let Some(def) = self.definitions.get(&key) {
            return Ok(Some(def.clone()));
        }
        let Some(def) = self.store.definition(name, version)? else {
            return Ok(None);
        };
        let def = Arc::new(def);
        self.definitions.insert(key, def.clone());
        Ok(Some(def))
    }

    fn start(
        &mut self,
        start: StartCommand,
        after: &mut AfterFlush,
    ) -> Result<StartReply, StartFailure> {
        let size = serde_json::to_vec(&start.input)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.max_payload {
            return Err(api_error(
                "E-PAYLOAD-TOO-LARGE",
                format!(
                    "saga input is {size} bytes, over the engine's limit of {} bytes (max_payload); pass a reference to large data instead",
                    self.max_payload
                ),
            )
            .into());
        }
        if let Some(key) = &start.idempotency_key {
            if key.is_empty() || key.len() > 256 {
                return Err(api_error(
                    "E-BAD-REQUEST",
                    "the idempotency key must be 1 to 256 bytes long",
                )
                .into());
            }
            if let Some(id) = self.saga_by_idempotency_key(key)? {
                let existing = self.saga(&id)?;
                return match existing {
                    Some(saga) if saga.name != start.saga => Err(api_error(
                        "E-IDEMPOTENCY-CONFLICT",
                        format!(
                            "idempotency key {key:?} already started saga {id} of definition `{}`, not `{}`; use a new key",
                            saga.name, start.saga
                        ),
                    )
                    .into()),
                    other => Ok(StartReply {
                        saga_id: id,
                        created: false,
                        queued: other.is_some_and(|s| {
                            s.status == jetsaga_core::saga::state::SagaStatus::Pending
                        }),
                    }),
                };
            }
        }
        let Some(def) = self.store.latest_definition(&start.saga)? else {
            let known: Vec<String> = self
                .store
                .list_definitions()?
                .into_iter()
                .map(|d| d.name)
                .collect();
            return Err(api_error(
                "E-UNKNOWN-SAGA",
                format!(
                    "no saga definition named `{}` (known: {}); apply one with `jetsaga def apply FILE`",
                    start.saga,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            )
            .into());
        };
        if let Some(refusal) = def.policy.refusal(&def.name, self.environment.as_deref()) {
            return Err(api_error("E-SAGA-DISABLED", refusal).into());
        }
        let def = Arc::new(def);
        self.definitions
            .insert((def.name.clone(), def.version), def.clone());
        let now = now_ms();
        let id = uuid::Uuid::now_v7().to_string();
        let mut saga = machine::new_saga(
            id.clone(),
            &def,
            start.input,
            start.idempotency_key.clone(),
            now,
        );
        saga.trace_parent = start.trace_parent;
        if !self.limits.room(&def.name, def.max_running) || self.limits.queued_of(&def.name) > 0 {
            // Over a concurrency limit, or behind queued sagas of its own
            // definition: the saga waits in the start queue (`jetsaga_core::limits`).
            return Ok(self.queue_start(saga, &def, start.idempotency_key, after)?);
        }
        let traced = crate::trace::enabled().then(|| saga.clone());
        let effects = machine::apply(&mut saga, &def, Event::Start, inputs(now))
            .map_err(|r| api_error("E-INTERNAL", format!("a new saga refused to start: {r}")))?;
        if let Some(pending) = &traced {
            crate::trace::observe(&def, pending, &saga);
        }
        self.metrics.transition(&def, None, &saga);
        let mut change = self.change_for(&mut saga, &def, effects);
        change.idempotency_key = start.idempotency_key;
        change.prior = Prior::Absent;
        self.commit(saga, change, after)?;
        tracing::info!(saga_id = %id, saga = %def.name, version = def.version, "saga started");
        Ok(StartReply {
            saga_id: id,
            created: true,
            queued: false,
        })
    }

    // ----- concurrency limits (`jetsaga_core::limits`) -----

    /// Stores a new `pending` saga with its idempotency key and its row of
    /// the start queue, in one transaction.
    fn queue_start(
        &mut self,
        saga: Saga,
        def: &SagaDefinition,
        idempotency_key: Option<String>,
        after: &mut AfterFlush,
    ) -> Result<StartReply, StoreError> {
        if self.limits.room(&def.name, def.max_running) {
            // Room, but sagas of its definition queued first: `max_running`
            // was raised. The queue moves, in order, at the end of the batch.
            self.limits.set_due();
        }
        let (row, position) = self.limits.enqueue(&saga.id, &def.name, saga.created_at);
        self.metrics.transition(def, None, &saga);
        let id = saga.id.clone();
        let change = Change {
            prior: Prior::Absent,
            idempotency_key,
            queue_add: vec![row],
            ..Change::default()
        };
        self.commit(saga, change, after)?;
        tracing::info!(
            saga_id = %id,
            saga = %def.name,
            position,
            running = self.limits.running(),
            running_of_saga = self.limits.running_of(&def.name),
            "saga queued: a concurrency limit is reached"
        );
        Ok(StartReply {
            saga_id: id,
            created: true,
            queued: true,
        })
    }

    /// Admits queued sagas in queue order while they fit, if room may have
    /// freed since the last round. Each admission is the saga's `Start`
    /// transition, which takes its queue row along ([`Self::commit`]).
    fn admit_queued(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
        if !self.limits.take_due() || self.limits.queued() == 0 || !self.limits.global_room() {
            self.limits.publish_gauges();
            return Ok(());
        }
        // The current definition versions hold the limits: a re-applied
        // `max_running` counts from the next round on.
        let names: Vec<String> = self
            .limits
            .queued_definitions()
            .map(str::to_owned)
            .collect();
        let mut max_running = HashMap::new();
        for name in names {
            let max = self
                .store
                .latest_definition(&name)?
                .and_then(|d| d.max_running);
            max_running.insert(name, max);
        }
        while let Some((seq, id)) = self
            .limits
            .next(|name| max_running.get(name).copied().flatten())
            .map(|(seq, row)| (seq, row.saga_id.clone()))
        {
            let saga = self.active.get(&id).cloned();
            let def = match &saga {
                Some(s) => self.definition(&s.name, s.definition_version)?,
                None => None,
            };
            let admitted = match (saga, def) {
                (Some(saga), Some(def)) => self
                    .apply_event(saga, &def, Event::Start, Vec::new(), after)?
                    .is_ok(),
                _ => false,
            };
            if admitted {
                tracing::info!(saga_id = %id, "saga admitted from the start queue");
            } else if self.limits.queued_row(&id).is_some_and(|(s, _)| s == seq) {
                // Cannot happen while saga and row share transactions; a row
                // that cannot start must not block the queue.
                tracing::error!(saga_id = %id, "queued saga cannot start; dropped from the start queue");
                self.limits.forget(seq);
                self.stage(
                    Change {
                        queue_remove: vec![seq],
                        ..Change::default()
                    },
                    after,
                );
            }
        }
        self.limits.publish_gauges();
        Ok(())
    }

    /// Rebuilds the running counts and the start queue from the store at
    /// start, repairs what does not match, and admits what fits now.
    async fn resume_limits(
        &mut self,
        definitions: &[SagaDefinition],
    ) -> Result<(), PartitionError> {
        self.limits
            .know(definitions.iter().map(|d| d.name.as_str()));
        let rows = self.store.queued()?;
        let repair = self.limits.resume(self.active.values(), rows);
        let mut after = AfterFlush::default();
        if !repair.stale_rows.is_empty() {
            tracing::warn!(
                rows = repair.stale_rows.len(),
                "start queue rows without a pending saga removed"
            );
            self.stage(
                Change {
                    queue_remove: repair.stale_rows,
                    ..Change::default()
                },
                &mut after,
            );
        }
        for id in repair.orphans {
            if let Some(saga) = self.active.get(&id) {
                let (row, _) = self.limits.enqueue(&id, &saga.name, saga.created_at);
                tracing::warn!(saga_id = %id, "pending saga without a start queue row queued again");
                self.stage(
                    Change {
                        queue_add: vec![row],
                        ..Change::default()
                    },
                    &mut after,
                );
            }
        }
        tracing::info!(
            running = self.limits.running(),
            queued = self.limits.queued(),
            max_running_sagas = ?self.limits.global(),
            "concurrency limits resumed"
        );
        self.admit_queued(&mut after)?;
        self.write_pending()?;
        if after.committed > 0 {
            self.store.flush().await?;
            self.relay.notify_one();
        }
        Ok(())
    }

    fn apply_result(
        &mut self,
        result: TaskResult,
        after: &mut AfterFlush,
    ) -> Result<(), PartitionError> {
        // Every line below, rejections included, carries the saga and step.
        let _span = tracing::info_span!(
            "result",
            saga_id = %result.saga_id,
            step = %result.step_id,
            attempt = result.attempt
        )
        .entered();
        let Some(saga) = self.saga(&result.saga_id)? else {
            reject(
                "result",
                "unknown_saga",
                &format!("result for unknown saga {}", result.saga_id),
            );
            return Ok(());
        };
        let Some(def) = self.definition(&saga.name, saga.definition_version)? else {
            reject(
                "result",
                "unknown_definition",
                &format!("saga {} has no stored definition", saga.id),
            );
            return Ok(());
        };
        let Some(step) = def.step_index(&result.step_id) else {
            reject(
                "result",
                "unknown_step",
                &format!("saga {} has no step `{}`", saga.id, result.step_id),
            );
            return Ok(());
        };
        if def.steps[step].service != result.service {
            reject(
                "result",
                "wrong_service",
                &format!(
                    "result for step `{}` of saga {} came from service `{}`, but the step belongs to `{}`",
                    result.step_id, saga.id, result.service, def.steps[step].service
                ),
            );
            return Ok(());
        }
        let event = Event::TaskResult {
            step,
            kind: result.kind,
            attempt: result.attempt,
            outcome: result.outcome,
        };
        // A rejection is logged and counted inside; the message is acked either way.
        let _ = self.apply_event(saga, &def, event, Vec::new(), after)?;
        Ok(())
    }

    /// Applies an operator's event (cancel, retry) to saga `id`; the state
    /// machine decides whether the saga's state allows it and what follows.
    fn operator_event(
        &mut self,
        id: &str,
        event: Event,
        refused: &str,
        after: &mut AfterFlush,
    ) -> Result<Result<Saga, ApiError>, PartitionError> {
        let Some(saga) = self.saga(id)? else {
            return Ok(Err(api_error(
                "E-NOT-FOUND",
                format!("no saga with id {id}"),
            )));
        };
        let Some(def) = self.definition(&saga.name, saga.definition_version)? else {
            return Ok(Err(api_error(
                "E-INTERNAL",
                format!("saga {id} has no stored definition"),
            )));
        };
        match self.apply_event(saga, &def, event, Vec::new(), after)? {
            Ok(saga) => Ok(Ok(saga)),
            Err(rejection) => Ok(Err(api_error(
                "E-NOT-APPLICABLE",
                format!("{refused} saga {id}: {rejection}"),
            ))),
        }
    }

    /// Deletes a terminal saga from the store. Going through the partition
    /// orders it with every transition: a saga cannot be deleted while an
    /// event is being applied to it, nor come back by one.
    fn delete(
        &mut self,
        id: &str,
        after: &mut AfterFlush,
    ) -> Result<Result<(), ApiError>, PartitionError> {
        let Some(saga) = self.saga(id)? else {
            return Ok(Err(api_error(
                "E-NOT-FOUND",
                format!("no saga with id {id}"),
            )));
        };
        if !saga.status.is_terminal() {
            return Ok(Err(api_error(
                "E-NOT-APPLICABLE",
                format!(
                    "cannot delete saga {id}: it is {}; only a finished saga can be deleted (cancel it first: `jetsaga saga cancel {id}`)",
                    saga.status.name()
                ),
            )));
        }
        // The store deletes what it has: the batch's changes go first.
        self.write_pending()?;
        self.store.delete_saga(id)?;
        self.active.remove(id);
        after.committed += 1;
        after.progress.push((id.to_string(), "deleted"));
        tracing::info!(saga_id = %id, saga = %saga.name, state = saga.status.name(), "saga deleted");
        Ok(Ok(()))
    }

    /// Fires every due timer (fenced by the state machine).
    fn fire_timers(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
        let now = now_ms();
        let mut due = self.store.due_timers(now, self.batch_size)?;
        // The batch's changes may have disarmed some of these, or armed
        // others due already: then read again with them written. Otherwise
        // (the common case) the batch stays one transaction.
        let armed_due = || {
            self.pending
                .iter()
                .flat_map(|c| &c.timers_add)
                .any(|t| t.due <= now)
        };
        if !self.pending.is_empty() && (!due.is_empty() || armed_due()) {
            self.write_pending()?;
            due = self.store.due_timers(now, self.batch_size)?;
        }
        for row in due {
            let remove = vec![(row.saga_id.clone(), row.timer.clone())];
            let saga = self.saga(&row.saga_id)?;
            let def = match &saga {
                Some(s) => self.definition(&s.name, s.definition_version)?,
                None => None,
            };
            match (saga, def) {
                (Some(saga), Some(def)) => {
                    let event = Event::TimerFired(row.timer.clone());
                    let _ = self.apply_event(saga, &def, event, remove, after)?;
                }
                _ => {
                    self.stage(
                        Change {
                            timers_remove: remove,
                            ..Default::default()
                        },
                        after,
                    );
                }
            }
        }
        // Breakers' open timeouts are timers too; and held tasks go out as
        // room freed in this batch (`jetsaga_core::admission`).
        self.fire_services(after)?;
        Ok(())
    }

    /// The saga with `id`: from the in-memory set of unfinished sagas, else
    /// from the batch's changes not yet written, else from the store
    /// (terminal sagas).
    fn saga(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        if let Some(s) = self.active.get(id) {
            return Ok(Some(s.clone()));
        }
        match self.pending_saga(id) {
            Some(s) => Ok(Some(s.clone())),
            None => self.store.saga(id),
        }
    }

    /// The latest state of saga `id` in the batch's changes not yet written.
    fn pending_saga(&self, id: &str) -> Option<&Saga> {
        latest_saga(&self.pending, id)
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

    /// Writes the batch's changes so far in one transaction. On an error
    /// none of them is written, and the partition stops.
    fn write_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.store.commit_many(&self.pending);
        self.pending.clear();
        result
    }

    /// Applies `event` to `saga` and commits the result. Rejections are
    /// logged and counted; `timers_remove` is committed either way.
    fn apply_event(
        &mut self,
        mut saga: Saga,
        def: &SagaDefinition,
        event: Event,
        timers_remove: Vec<(String, jetsaga_core::saga::state::TimerKind)>,
        after: &mut AfterFlush,
    ) -> Result<Result<Saga, Rejection>, PartitionError> {
        let label = event_label(&event);
        // Operator events come from the API, whose door answers the caller
        // and counts a refusal itself, as for starts (see `handle`).
        let answered = matches!(event, Event::Cancel { .. } | Event::Retry { .. });
        let before = Before::of(&saga);
        let traced = crate::trace::enabled().then(|| saga.clone());
        match machine::apply(&mut saga, def, event, inputs(now_ms())) {
            Ok(effects) => {
                self.metrics.transition(def, Some(&before), &saga);
                if let Some(earlier) = &traced {
                    crate::trace::observe(def, earlier, &saga);
                }
                let mut change = self.change_for(&mut saga, def, effects);
                change.timers_remove.extend(timers_remove);
                self.commit(saga.clone(), change, after)?;
                Ok(Ok(saga))
            }
            Err(rejection) => {
                if !timers_remove.is_empty() {
                    self.stage(
                        Change {
                            timers_remove,
                            ..Default::default()
                        },
                        after,
                    );
                }
                let quiet = matches!(rejection, Rejection::Stale { .. } | Rejection::Terminal(_))
                    && label == "timer";
                if quiet {
                    tracing::debug!(saga_id = %saga.id, %rejection, "stale timer ignored");
                } else if answered {
                    tracing::debug!(saga_id = %saga.id, event = label, %rejection, "operator event refused; the caller is answered");
                } else {
                    tracing::warn!(saga_id = %saga.id, event = label, %rejection, "event rejected");
                    metrics::counter!("engine_rejected_messages_total", "reason" => rejection.reason())
                        .increment(1);
                }
                Ok(Err(rejection))
            }
        }
    }

    fn commit(
        &mut self,
        saga: Saga,
        mut change: Change,
        after: &mut AfterFlush,
    ) -> Result<(), StoreError> {
        let id = saga.id.clone();
        let state = saga.status.name();
        let terminal = saga.status.is_terminal();
        // Concurrency limits (`jetsaga_core::limits`): keep the running counts; a
        // saga leaving the start queue takes its row out in this transaction.
        if change.prior == Prior::Unknown
            && let Some(stored) = self.active.get(&id).or_else(|| self.pending_saga(&id))
        {
            // The store moves the index entries without decoding the record.
            change.prior = Prior::of(stored);
        }
        let before = self.active.get(&id).map(|s| &s.status);
        let observed = self.limits.observe(before, &saga, now_ms());
        change.queue_remove.extend(observed.dequeued);
        change.saga = Some(saga.clone());
        self.stage(change, after);
        after.progress.push((id.clone(), state));
        if terminal {
            self.active.remove(&id);
        } else {
            self.active.insert(id, saga);
        }
        Ok(())
    }

    /// Turns a transition's effects into the store change that carries them.
    ///
    /// Each lifecycle event becomes an outbox message (a CloudEvent, see
    /// [`crate::events`]) numbered by the saga's event sequence, which the
    /// transition advances and stores with the saga.
    ///
    /// Tasks pass through service admission ([`jetsaga_core::admission`]): ended
    /// attempts count for their service's breaker and free room first, then
    /// each task either becomes an outbox row or is held, its attempt's
    /// timeout not armed until it is released.
    fn change_for(
        &mut self,
        saga: &mut Saga,
        def: &SagaDefinition,
        effects: Vec<Effect>,
    ) -> Change {
        let mut change = Change::default();
        self.services.observe(saga, now_ms());
        for effect in effects {
            match effect {
                Effect::Dispatch {
                    step,
                    kind,
                    attempt,
                    generation,
                } => {
                    let message = self.task_message(saga, def, step, kind, attempt, generation);
                    self.route_task(saga, def, (step, kind, attempt), message, &mut change);
                }
                Effect::ScheduleTimer { timer, due } => change.timers_add.push(TimerRow {
                    saga_id: saga.id.clone(),
                    timer,
                    due,
                }),
                Effect::CancelTimer { timer } => {
                    change.timers_remove.push((saga.id.clone(), timer))
                }
                Effect::Lifecycle(event) => {
                    log_lifecycle(saga, def, &event);
                    let seq = saga.event_seq;
                    saga.event_seq += 1;
                    let message =
                        crate::events::outbox_message(&self.subjects, saga, def, &event, seq);
                    metrics::counter!(
                        crate::metrics::EVENTS,
                        "type" => crate::events::type_suffix(&event)
                    )
                    .increment(1);
                    change.outbox.push(message);
                }
            }
        }
        // Held tasks' attempts time out from their release, not from now.
        let held: Vec<TimerKind> = change
            .held_add
            .iter()
            .map(|(_, h)| TimerKind::StepTimeout {
                step: h.step,
                kind: h.kind,
                attempt: h.attempt,
            })
            .collect();
        if !held.is_empty() {
            change
                .timers_add
                .retain(|t| t.saga_id != saga.id || !held.contains(&t.timer));
        }
        self.services.note(saga);
        change.breakers = self.services.take_dirty();
        change
    }

    fn task_message(
        &self,
        saga: &Saga,
        def: &SagaDefinition,
        step: usize,
        kind: TaskKind,
        attempt: u32,
        generation: u32,
    ) -> OutboxMessage {
        let sd = &def.steps[step];
        let operation = match kind {
            TaskKind::Action => sd.operation.clone(),
            TaskKind::Compensation => sd.compensation.clone().unwrap_or_default(),
        };
        let context = saga
            .steps
            .iter()
            .zip(&def.steps)
            .filter_map(|(state, d)| state.output.clone().map(|o| (d.id.clone(), o)))
            .collect();
        let idempotency_key =
            protocol::idempotency_key_in_generation(&saga.id, &sd.id, kind, generation);
        let task = Task {
            saga_id: saga.id.clone(),
            saga_name: saga.name.clone(),
            step_id: sd.id.clone(),
            kind,
            service: sd.service.clone(),
            operation,
            attempt,
            idempotency_key: idempotency_key.clone(),
            input: saga.input.clone(),
            context,
            timeout_ms: sd.timeout.as_millis() as u64,
        };
        let mut headers = vec![
            (HEADER_SAGA_ID.to_string(), saga.id.clone()),
            (HEADER_IDEMPOTENCY_KEY.to_string(), idempotency_key),
        ];
        if let Some(tp) = crate::trace::task_traceparent(saga, &sd.id, kind, attempt) {
            headers.push((crate::trace::HEADER_TRACEPARENT.to_string(), tp));
        }
        OutboxMessage {
            subject: self.subjects.task(&sd.service),
            msg_id: protocol::task_msg_id(&saga.id, &sd.id, kind, attempt),
            headers,
            payload: serde_json::to_vec(&task).unwrap_or_default(),
        }
    }
}

// ----- service admission: breakers and in-flight limits (`jetsaga_core::admission`) -----

/// An answer about services, sent once the batch is durable.
type ServiceReply = Box<dyn FnOnce() + Send>;

fn service_reply<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, ApiError>>,
    result: Result<T, ApiError>,
) -> ServiceReply {
    Box::new(move || {
        let _ = reply.send(result);
    })
}

impl Partition {
    /// Loads the service policies, breakers and held tasks, and counts the
    /// tasks the unfinished sagas have in flight.
    fn resume_services(&mut self) -> Result<(), PartitionError> {
        let held = self
            .store
            .held_tasks()?
            .into_iter()
            .map(|(seq, h)| {
                let key = AttemptKey {
                    saga_id: h.saga_id,
                    step: h.step,
                    kind: h.kind,
                    attempt: h.attempt,
                };
                (seq, h.service, key)
            })
            .collect::<Vec<_>>();
        let held_count = held.len();
        self.services =
            ServiceAdmission::load(self.store.service_policies()?, self.store.breakers()?, held);
        let sagas: Vec<Saga> = self.active.values().cloned().collect();
        let mut running = Vec::with_capacity(sagas.len());
        for saga in &sagas {
            if let Some(def) = self.definition(&saga.name, saga.definition_version)? {
                running.push((saga, def));
            }
        }
        self.services
            .resume(running.iter().map(|(saga, def)| (*saga, def.as_ref())));
        if held_count > 0 {
            tracing::info!(held = held_count, "held tasks resumed");
        }
        Ok(())
    }

    /// Sends a dispatched task to the outbox, or holds it when its service's
    /// breaker or in-flight limit says so.
    fn route_task(
        &mut self,
        saga: &Saga,
        def: &SagaDefinition,
        (step, kind, attempt): (usize, TaskKind, u32),
        message: OutboxMessage,
        change: &mut Change,
    ) {
        let sd = &def.steps[step];
        let key = AttemptKey {
            saga_id: saga.id.clone(),
            step,
            kind,
            attempt,
        };
        match self.services.route(&sd.service, key) {
            Route::Dispatch => change.outbox.push(message),
            Route::Hold(seq) => {
                tracing::info!(
                    saga_id = %saga.id,
                    step = %sd.id,
                    %kind,
                    attempt,
                    service = %sd.service,
                    "task held by its service's circuit breaker or in-flight limit"
                );
                change.held_add.push((
                    seq,
                    HeldTask {
                        service: sd.service.clone(),
                        saga_id: saga.id.clone(),
                        step,
                        kind,
                        attempt,
                        timeout_ms: u64::try_from(sd.timeout.as_millis()).unwrap_or(u64::MAX),
                        message,
                    },
                ));
            }
        }
    }

    /// Settles held tasks their sagas no longer need, half-opens breakers
    /// whose open timeout passed, and releases held tasks that have room.
    fn fire_services(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
        for id in self.services.take_unsettled() {
            self.settle_held(&id, after)?;
        }
        self.services.tick(now_ms());
        self.release_held(after)
    }

    /// Held tasks of saga `id` that must not wait for room: those of a
    /// finished saga (or of an attempt it no longer waits on) are dropped;
    /// a held action of a compensating saga never ran, so its attempt ends
    /// as a fatal error without effect and the rollback goes on without it.
    fn settle_held(&mut self, id: &str, after: &mut AfterFlush) -> Result<(), PartitionError> {
        for (service, held) in self.services.held_of(id) {
            let saga = self.saga(id)?;
            let waiting = saga
                .as_ref()
                .is_some_and(|s| jetsaga_core::admission::waits_on(s, &held.key));
            if !waiting {
                self.services.remove_held(&service, held.seq);
                tracing::debug!(saga_id = %id, service = %service, "held task dropped: its saga no longer waits on it");
                self.commit_held_removal(held.seq, after)?;
                continue;
            }
            let Some(saga) = saga else { continue };
            let compensating = matches!(
                saga.status,
                jetsaga_core::saga::state::SagaStatus::Compensating { .. }
            );
            if !compensating || held.key.kind != TaskKind::Action {
                continue;
            }
            let Some(def) = self.definition(&saga.name, saga.definition_version)? else {
                continue;
            };
            self.services.remove_held(&service, held.seq);
            let event = Event::TaskResult {
                step: held.key.step,
                kind: held.key.kind,
                attempt: held.key.attempt,
                outcome: protocol::Outcome::Fatal {
                    error: format!(
                        "not dispatched: held by service `{service}`'s circuit breaker or in-flight limit when the saga began compensating; the action never ran"
                    ),
                },
            };
            // The attempt ends first, then its held row goes: a crash in
            // between leaves a row that no saga waits on, dropped later.
            let _ = self.apply_event(saga, &def, event, Vec::new(), after)?;
            self.commit_held_removal(held.seq, after)?;
        }
        Ok(())
    }

    fn commit_held_removal(&mut self, seq: u64, after: &mut AfterFlush) -> Result<(), StoreError> {
        let change = Change {
            held_remove: vec![seq],
            breakers: self.services.take_dirty(),
            ..Change::default()
        };
        self.stage(change, after);
        Ok(())
    }

    /// Moves held tasks that have room, oldest first per service, to the
    /// outbox (arming their attempts' timeouts from now), in one
    /// transaction with the breaker changes. A held task whose saga no
    /// longer waits on its attempt is dropped, never published.
    fn release_held(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
        let now = now_ms();
        let mut change = Change::default();
        for service in self.services.services_holding() {
            while let Some(held) = self.services.pop_releasable(&service) {
                change.held_remove.push(held.seq);
                // The task may have been held earlier in this batch, not
                // written yet: the batch first, then the store.
                let task = match pending_held(&self.pending, held.seq) {
                    Some(task) => Some(task.clone()),
                    None => self.store.held_task(held.seq)?,
                };
                let waiting = self
                    .active
                    .get(&held.key.saga_id)
                    .is_some_and(|s| jetsaga_core::admission::waits_on(s, &held.key));
                match task {
                    Some(task) if waiting => {
                        tracing::info!(
                            saga_id = %task.saga_id,
                            service = %service,
                            attempt = task.attempt,
                            "held task released"
                        );
                        change.timers_add.push(TimerRow {
                            saga_id: task.saga_id.clone(),
                            timer: TimerKind::StepTimeout {
                                step: task.step,
                                kind: task.kind,
                                attempt: task.attempt,
                            },
                            due: now.saturating_add(task.timeout_ms),
                        });
                        change.outbox.push(task.message);
                        self.services.admit(&service, held.key);
                    }
                    _ => {
                        tracing::debug!(saga_id = %held.key.saga_id, service = %service, "held task dropped: its saga no longer waits on it");
                    }
                }
            }
        }
        change.breakers = self.services.take_dirty();
        if !change.held_remove.is_empty() || !change.breakers.is_empty() {
            self.stage(change, after);
        }
        Ok(())
    }

    fn services_command(
        &mut self,
        cmd: ServicesCommand,
        after: &mut AfterFlush,
    ) -> Result<(), PartitionError> {
        let not_found = |service: &str| {
            api_error(
                "E-NOT-FOUND",
                format!(
                    "no service policy for `{service}`; services get one under `services:` in a definitions file"
                ),
            )
        };
        let reply = match cmd {
            ServicesCommand::Policies { policies, reply } => {
                tracing::info!(services = policies.len(), "service policies in use");
                self.services.set_policies(policies);
                // Raised limits and removed breakers release held tasks.
                self.release_held(after)?;
                service_reply(reply, Ok(()))
            }
            ServicesCommand::List { reply } => service_reply(reply, Ok(self.services.list())),
            ServicesCommand::Status { service, reply } => {
                let status = self
                    .services
                    .status(&service)
                    .ok_or_else(|| not_found(&service));
                service_reply(reply, status)
            }
            ServicesCommand::Reset { service, reply } => {
                let result = match self.services.reset(&service) {
                    Ok(()) => {
                        tracing::info!(service = %service, "circuit breaker reset");
                        self.release_held(after)?;
                        self.services
                            .status(&service)
                            .ok_or_else(|| not_found(&service))
                    }
                    Err(e) => Err(api_error(e.code(), e.to_string())),
                };
                service_reply(reply, result)
            }
        };
        after.service_replies.push(reply);
        Ok(())
    }
}

enum StartFailure {
    Api(ApiError),
    Store(StoreError),
}

impl From<ApiError> for StartFailure {
    fn from(e: ApiError) -> Self {
        StartFailure::Api(e)
    }
}
impl From<StoreError> for StartFailure {
    fn from(e: StoreError) -> Self {
        StartFailure::Store(e)
    }
}

/// The latest state of saga `id` among `changes` (in write order).
fn latest_saga<'a>(changes: &'a [Change], id: &str) -> Option<&'a Saga> {
    changes
        .iter()
        .rev()
        .find_map(|c| c.saga.as_ref().filter(|s| s.id == id))
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
            .map(|s| s.id.as_str())
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

/// Logs and counts a message the engine refused.
pub fn reject(source: &str, reason: &str, detail: &str) {
    tracing::warn!(source, reason, "rejected: {detail}");
    let reason = reason.to_string();
    metrics::counter!("engine_rejected_messages_total", "reason" => reason).increment(1);
}

fn log_lifecycle(saga: &Saga, def: &SagaDefinition, event: &LifecycleEvent) {
    let step_id = |i: &usize| def.steps.get(*i).map(|s| s.id.as_str()).unwrap_or("?");
    match event {
        LifecycleEvent::SagaStarted => {}
        LifecycleEvent::SagaCompensating { reason } => {
            tracing::info!(saga_id = %saga.id, saga = %saga.name, %reason, "saga compensating")
        }
        LifecycleEvent::SagaRetried { from, generation } => {
            tracing::info!(saga_id = %saga.id, saga = %saga.name, %from, generation, "saga retried")
        }
        LifecycleEvent::SagaFinished { state } => {
            tracing::info!(saga_id = %saga.id, saga = %saga.name, state = %state, "saga finished")
        }
        LifecycleEvent::StepSucceeded { step } => {
            tracing::debug!(saga_id = %saga.id, step = step_id(step), "step succeeded")
        }
        LifecycleEvent::StepRetrying {
            step,
            kind,
            next_attempt,
            error,
        } => {
            tracing::info!(saga_id = %saga.id, step = step_id(step), %kind, next_attempt, %error, "step retrying")
        }
        LifecycleEvent::StepFailed { step, error } => {
            tracing::info!(saga_id = %saga.id, step = step_id(step), %error, "step failed")
        }
        LifecycleEvent::StepCompensated { step } => {
            tracing::debug!(saga_id = %saga.id, step = step_id(step), "step compensated")
        }
        LifecycleEvent::StepCompensationFailed { step, error } => {
            tracing::warn!(saga_id = %saga.id, step = step_id(step), %error, "step compensation failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_space_is_stable() {
        assert_eq!(partition_of("0192f5a0-0000-7000-8000-000000000000"), 0);
        assert!(partition_of("anything") < PARTITIONS);
    }

    fn saga(id: &str, status: jetsaga_core::saga::state::SagaStatus) -> Saga {
        Saga {
            id: id.to_owned(),
            name: "order".to_owned(),
            definition_version: 1,
            input: serde_json::json!({}),
            idempotency_key: None,
            generation: 0,
            status,
            steps: vec![],
            created_at: 1,
            updated_at: 1,
            finished_at: None,
            trace_parent: None,
            event_seq: 0,
        }
    }

    /// Reads within a batch see its unwritten changes: the latest state of a
    /// saga, and a key a start earlier in the batch bound (so a second start
    /// with it finds that saga instead of making another).
    #[test]
    fn a_batch_reads_its_own_unwritten_changes() {
        use jetsaga_core::saga::state::SagaStatus;
        let change = |s: Saga, key: Option<&str>| Change {
            saga: Some(s),
            idempotency_key: key.map(str::to_owned),
            ..Change::default()
        };
        let batch = vec![
            change(saga("a", SagaStatus::Running), Some("order-1")),
            change(saga("b", SagaStatus::Running), None),
            Change {
                timers_remove: vec![("a".to_owned(), TimerKind::SagaTimeout)],
                ..Change::default()
            },
            change(saga("a", SagaStatus::Completed), None),
        ];
        assert_eq!(
            latest_saga(&batch, "a").map(|s| &s.status),
            Some(&SagaStatus::Completed)
        );
        assert_eq!(
            latest_saga(&batch, "b").map(|s| &s.status),
            Some(&SagaStatus::Running)
        );
        assert_eq!(latest_saga(&batch, "c"), None);
        assert_eq!(bound_saga(&batch, "order-1"), Some("a"));
        assert_eq!(bound_saga(&batch, "order-2"), None);
        assert_eq!(bound_saga(&[], "order-1"), None);
    }
}
