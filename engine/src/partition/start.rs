//! Starts: idempotency keys, definitions, and the start queue of the
//! concurrency limits (`jetsaga_core::limits`).

use super::{AfterFlush, Partition, PartitionError, StartCommand, api_error, inputs, now_ms};
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::machine;
use jetsaga_core::saga::state::{Event, Saga};
use jetsaga_core::saga::transition::Before;
use jetsaga_protocol::{ApiError, ErrorCode, StartReply};
use jetsaga_store::{Change, Prior, StoreError};
use std::collections::HashMap;
use std::sync::Arc;

impl Partition {
    pub(super) fn definition(
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

    pub(super) fn start(
        &mut self,
        start: StartCommand,
        after: &mut AfterFlush,
    ) -> Result<StartReply, StartFailure> {
        let size = serde_json::to_vec(&start.input)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.max_payload {
            return Err(api_error(ErrorCode::PayloadTooLarge,
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
                    ErrorCode::BadRequest,
                    "the idempotency key must be 1 to 256 bytes long",
                )
                .into());
            }
            if let Some(id) = self.saga_by_idempotency_key(key)? {
                let existing = self.saga(&id)?;
                return match existing {
                    Some(saga) if saga.name != start.saga => Err(api_error(ErrorCode::IdempotencyConflict,
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
            return Err(api_error(ErrorCode::UnknownSaga,
                format!(
                    "no saga definition named `{}` (known: {}); apply one with `jetsaga def apply FILE`",
                    start.saga,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            )
            .into());
        };
        if let Some(refusal) = def.policy.refusal(&def.name, self.environment.as_deref()) {
            return Err(api_error(ErrorCode::SagaDisabled, refusal).into());
        }
        let def = Arc::new(def);
        self.definitions
            .insert((def.name.clone(), def.version), def.clone());
        let now = now_ms();
        let mut id = uuid::Uuid::now_v7().to_string();
        if self.count > 1 {
            id = jetsaga_protocol::partition::mark_saga_id(&id, self.number);
        }
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
        let effects = machine::apply(&mut saga, &def, Event::Start, inputs(now)).map_err(|r| {
            api_error(
                ErrorCode::Internal,
                format!("a new saga refused to start: {r}"),
            )
        })?;
        if let Some(pending) = &traced {
            crate::trace::observe(&def, pending, &saga);
        }
        let dequeued = self.observe(&def, Before::absent(), &saga);
        let mut change = self.change_for(&mut saga, &def, effects);
        change.queue_remove.extend(dequeued);
        change.idempotency_key = start.idempotency_key;
        change.prior = Prior::Absent;
        self.commit(saga, None, change, after)?;
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
    pub(super) fn queue_start(
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
        self.observe(def, Before::absent(), &saga);
        let id = saga.id.clone();
        let change = Change {
            prior: Prior::Absent,
            idempotency_key,
            queue_add: vec![row],
            ..Change::default()
        };
        self.commit(saga, None, change, after)?;
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
    pub(super) fn admit_queued(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
        if !self.limits.take_due() || self.limits.queued() == 0 || !self.limits.global_room() {
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
            let saga = self.active.remove(&id);
            let def = match &saga {
                Some(s) => self.definition(&s.name, s.definition_version)?,
                None => None,
            };
            let admitted = match (saga, def) {
                (Some(saga), Some(def)) => self
                    .apply_event(saga, &def, Event::Start, Vec::new(), after)?
                    .is_ok(),
                (saga, _) => {
                    if let Some(saga) = saga {
                        self.put_back(saga);
                    }
                    false
                }
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
        Ok(())
    }

    /// Rebuilds the running counts and the start queue from the store at
    /// start, repairs what does not match, and admits what fits now.
    pub(super) async fn resume_limits(
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
        if after.committed > 0 {
            self.write_durably().await?;
            self.relay.notify_one();
        }
        Ok(())
    }
}

pub(super) enum StartFailure {
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
