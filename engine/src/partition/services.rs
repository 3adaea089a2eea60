//! Service admission: circuit breakers and in-flight limits
//! (`jetsaga_core::admission`) around task dispatch.

use super::{
    AfterFlush, Partition, PartitionError, ServiceReply, ServicesCommand, api_error, now_ms,
    pending_held,
};
use jetsaga_core::admission::{AttemptKey, Route, ServiceAdmission};
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::TimerKind;
use jetsaga_core::saga::state::{Event, Saga};
use jetsaga_protocol::{self as protocol, ApiError, ErrorCode, TaskKind};
use jetsaga_store::{Change, HeldTask, OutboxMessage, StoreError, TimerRow};
use tokio::sync::oneshot;

pub(super) fn service_reply<T: Send + 'static>(
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
    pub(super) fn resume_services(&mut self) -> Result<(), PartitionError> {
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
    pub(super) fn route_task(
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
    pub(super) fn fire_services(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
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
    pub(super) fn settle_held(
        &mut self,
        id: &str,
        after: &mut AfterFlush,
    ) -> Result<(), PartitionError> {
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

    pub(super) fn commit_held_removal(
        &mut self,
        seq: u64,
        after: &mut AfterFlush,
    ) -> Result<(), StoreError> {
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
    pub(super) fn release_held(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
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

    pub(super) fn services_command(
        &mut self,
        cmd: ServicesCommand,
        after: &mut AfterFlush,
    ) -> Result<(), PartitionError> {
        let not_found = |service: &str| {
            api_error(
                ErrorCode::NotFound,
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
            ServicesCommand::Reset {
                service,
                state,
                reply,
            } => {
                let result = match self.services.reset(&service, state, now_ms()) {
                    Ok(()) => {
                        match state {
                            None => tracing::info!(service = %service, "circuit breaker reset"),
                            Some(state) => tracing::info!(
                                service = %service,
                                state = ?state,
                                "circuit breaker state forced"
                            ),
                        }
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
