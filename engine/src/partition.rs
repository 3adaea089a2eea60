//! The partition: the single writer of the sagas it owns.
//!
//! One task owns the state of a partition's sagas and applies events to them
//! in order through the pure state machine ([`crate::saga::machine`]). I/O
//! happens around it: commands arrive on a channel, each transition is written
//! as one store transaction with its outbox rows and timers, a batch of
//! transitions is made durable with one flush (group commit), and only then
//! are the messages that carried the events acknowledged and the callers
//! answered. Each transition is also observed by [`SagaMetrics`], which
//! derives the saga and step metrics from the saga before and after it.
//!
//! The key space already exists ([`partition_of`]); the engine runs one
//! partition today.

use crate::crash_points;
use crate::metrics::{Before, SagaMetrics};
use crate::saga::definition::SagaDefinition;
use crate::saga::machine;
use crate::saga::state::{Effect, Event, Inputs, LifecycleEvent, Millis, Rejection, Saga};
use crate::store::{Change, OutboxMessage, Store, StoreError, TimerRow};
use async_nats::jetstream;
use jetsaga_worker::protocol::{
    self, ApiError, HEADER_IDEMPOTENCY_KEY, HEADER_SAGA_ID, StartReply, Subjects, Task, TaskKind,
    TaskResult,
};
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
    progress: Vec<(String, &'static str)>,
    committed: usize,
}

/// The single writer of one partition.
pub struct Partition {
    store: Arc<dyn Store>,
    subjects: Subjects,
    client: async_nats::Client,
    relay: Arc<Notify>,
    rx: mpsc::Receiver<Command>,
    active: HashMap<String, Saga>,
    definitions: HashMap<(String, u32), Arc<SagaDefinition>>,
    metrics: SagaMetrics,
    max_payload: usize,
    batch_size: usize,
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
            definitions: HashMap::new(),
            metrics: SagaMetrics::default(),
            max_payload,
            batch_size: batch_size.max(1),
        };
        (partition, PartitionHandle { tx })
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
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            let wait = match self.store.next_timer()? {
                Some(t) => Duration::from_millis(t.due.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            let open = tokio::select! {
                biased;
                n = self.rx.recv_many(&mut batch, self.batch_size) => n > 0,
                _ = tokio::time::sleep(wait) => true,
            };
            self.process(&mut batch).await?;
            if !open {
                break;
            }
        }
        tracing::info!("partition stopped");
        Ok(())
    }

    /// Applies a batch of commands and the due timers, makes them durable
    /// with one flush, then acknowledges and answers.
    async fn process(&mut self, batch: &mut Vec<Command>) -> Result<(), PartitionError> {
        let mut after = AfterFlush::default();
        for cmd in batch.drain(..) {
            self.handle(cmd, &mut after)?;
        }
        self.fire_timers(&mut after)?;
        if after.committed > 0 {
            tracing::debug!(
                transitions = after.committed,
                acks = after.acks.len(),
                replies = after.start_replies.len() + after.saga_replies.len(),
                "group commit"
            );
            crash_points::pass(crash_points::PARTITION_AFTER_COMMIT);
            self.store.flush().await?;
            crash_points::pass(crash_points::PARTITION_AFTER_FLUSH);
            self.relay.notify_one();
        }
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
        for (id, state) in after.progress {
            let _ = self
                .client
                .publish(self.subjects.progress(&id), state.into())
                .await;
        }
        Ok(())
    }

    fn handle(&mut self, cmd: Command, after: &mut AfterFlush) -> Result<(), PartitionError> {
        match cmd {
            Command::Start { start, reply, ack } => {
                let result = self.start(start, after);
                let result = match result {
                    Ok(r) => Ok(r),
                    Err(StartFailure::Store(e)) => return Err(e.into()),
                    Err(StartFailure::Api(e)) => {
                        reject("start", &e.code, &e.message);
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
            if let Some(id) = self.store.saga_by_idempotency_key(key)? {
                let existing = self.store.saga(&id)?;
                return match existing {
                    Some(saga) if saga.name != start.saga => Err(api_error(
                        "E-IDEMPOTENCY-CONFLICT",
                        format!(
                            "idempotency key {key:?} already started saga {id} of definition `{}`, not `{}`; use a new key",
                            saga.name, start.saga
                        ),
                    )
                    .into()),
                    _ => Ok(StartReply {
                        saga_id: id,
                        created: false,
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
        let traced = crate::trace::enabled().then(|| saga.clone());
        let effects = machine::apply(&mut saga, &def, Event::Start, inputs(now))
            .map_err(|r| api_error("E-INTERNAL", format!("a new saga refused to start: {r}")))?;
        if let Some(pending) = &traced {
            crate::trace::observe(&def, pending, &saga);
        }
        self.metrics.transition(&def, None, &saga);
        let mut change = self.change_for(&mut saga, &def, effects);
        change.idempotency_key = start.idempotency_key;
        self.commit(saga, change, after)?;
        tracing::info!(saga_id = %id, saga = %def.name, version = def.version, "saga started");
        Ok(StartReply {
            saga_id: id,
            created: true,
        })
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
        self.store.delete_saga(id)?;
        self.active.remove(id);
        after.committed += 1;
        after.progress.push((id.to_string(), "deleted"));
        tracing::info!(saga_id = %id, saga = %saga.name, state = saga.status.name(), "saga deleted");
        Ok(Ok(()))
    }

    /// Fires every due timer (fenced by the state machine).
    fn fire_timers(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
        let due = self.store.due_timers(now_ms(), self.batch_size)?;
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
                    self.store.commit(Change {
                        timers_remove: remove,
                        ..Default::default()
                    })?;
                    after.committed += 1;
                }
            }
        }
        Ok(())
    }

    /// The saga with `id`: from the in-memory set of unfinished sagas, else
    /// from the store (terminal sagas).
    fn saga(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        match self.active.get(id) {
            Some(s) => Ok(Some(s.clone())),
            None => self.store.saga(id),
        }
    }

    /// Applies `event` to `saga` and commits the result. Rejections are
    /// logged and counted; `timers_remove` is committed either way.
    fn apply_event(
        &mut self,
        mut saga: Saga,
        def: &SagaDefinition,
        event: Event,
        timers_remove: Vec<(String, crate::saga::state::TimerKind)>,
        after: &mut AfterFlush,
    ) -> Result<Result<Saga, Rejection>, PartitionError> {
        let label = event_label(&event);
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
                    self.store.commit(Change {
                        timers_remove,
                        ..Default::default()
                    })?;
                    after.committed += 1;
                }
                let quiet = matches!(rejection, Rejection::Stale { .. } | Rejection::Terminal(_))
                    && label == "timer";
                if quiet {
                    tracing::debug!(saga_id = %saga.id, %rejection, "stale timer ignored");
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
        change.saga = Some(saga.clone());
        self.store.commit(change)?;
        after.committed += 1;
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
    fn change_for(&self, saga: &mut Saga, def: &SagaDefinition, effects: Vec<Effect>) -> Change {
        let mut change = Change::default();
        for effect in effects {
            match effect {
                Effect::Dispatch {
                    step,
                    kind,
                    attempt,
                    generation,
                } => {
                    change
                        .outbox
                        .push(self.task_message(saga, def, step, kind, attempt, generation));
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
}
