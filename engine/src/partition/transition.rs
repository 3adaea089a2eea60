//! Events applied to sagas: results, operator events, timers, deletes;
//! each transition goes through the pure machine and is staged for the
//! batch's transaction.

use super::{AfterFlush, Partition, PartitionError, api_error, event_label, inputs, now_ms};
use crate::metrics::reject;
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::machine;
use jetsaga_core::saga::state::{Event, Rejection, Saga, TimerKind};
use jetsaga_core::saga::transition::Before;
use jetsaga_protocol::{ApiError, ErrorCode, TaskResult};
use jetsaga_store::{Change, Prior, SagaWrite, StoreError};

impl Partition {
    pub(super) fn apply_result(
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
        let Some(saga) = self.take_saga(&result.saga_id)? else {
            reject(
                "result",
                "unknown_saga",
                &format!("result for unknown saga {}", result.saga_id),
            );
            return Ok(());
        };
        let found = match self.definition(&saga.name, saga.definition_version)? {
            None => Err((
                "unknown_definition",
                format!("saga {} has no stored definition", saga.id),
            )),
            Some(def) => match def.step_index(&result.step_id) {
                None => Err((
                    "unknown_step",
                    format!("saga {} has no step `{}`", saga.id, result.step_id),
                )),
                Some(step) if def.steps[step].service != result.service => Err((
                    "wrong_service",
                    format!(
                        "result for step `{}` of saga {} came from service `{}`, but the step belongs to `{}`",
                        result.step_id, saga.id, result.service, def.steps[step].service
                    ),
                )),
                Some(step) => Ok((def, step)),
            },
        };
        let (def, step) = match found {
            Ok(found) => found,
            Err((reason, message)) => {
                self.put_back(saga);
                reject("result", reason, &message);
                return Ok(());
            }
        };
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
    pub(super) fn operator_event(
        &mut self,
        id: &str,
        event: Event,
        refused: &str,
        after: &mut AfterFlush,
    ) -> Result<Result<Saga, ApiError>, PartitionError> {
        let Some(saga) = self.take_saga(id)? else {
            return Ok(Err(api_error(
                ErrorCode::NotFound,
                format!("no saga with id {id}"),
            )));
        };
        let Some(def) = self.definition(&saga.name, saga.definition_version)? else {
            self.put_back(saga);
            return Ok(Err(api_error(
                ErrorCode::Internal,
                format!("saga {id} has no stored definition"),
            )));
        };
        match self.apply_event(saga, &def, event, Vec::new(), after)? {
            Ok(()) => match self.saga(id)? {
                Some(saga) => Ok(Ok(saga)),
                None => Ok(Err(api_error(
                    ErrorCode::Internal,
                    format!("saga {id} is gone after the transition"),
                ))),
            },
            Err(rejection) => Ok(Err(api_error(
                ErrorCode::NotApplicable,
                format!("{refused} saga {id}: {rejection}"),
            ))),
        }
    }

    /// Deletes a terminal saga from the store. Going through the partition
    /// orders it with every transition: a saga cannot be deleted while an
    /// event is being applied to it, nor come back by one.
    pub(super) fn delete(
        &mut self,
        id: &str,
        after: &mut AfterFlush,
    ) -> Result<Result<(), ApiError>, PartitionError> {
        let Some(saga) = self.saga(id)? else {
            return Ok(Err(api_error(
                ErrorCode::NotFound,
                format!("no saga with id {id}"),
            )));
        };
        if !saga.status.is_terminal() {
            return Ok(Err(api_error(
                ErrorCode::NotApplicable,
                format!(
                    "cannot delete saga {id}: it is {}; only a finished saga can be deleted (cancel it first: `jetsaga saga cancel {id}`)",
                    saga.status.name()
                ),
            )));
        }
        // The store deletes what it has: the batch's changes go first.
        self.write_pending()?;
        self.store.delete_saga(id)?;
        self.staged.deletes.push(id.to_string());
        self.active.remove(id);
        after.committed += 1;
        after.progress.push((id.to_string(), "deleted"));
        tracing::info!(saga_id = %id, saga = %saga.name, state = saga.status.name(), "saga deleted");
        Ok(Ok(()))
    }

    /// Fires every due timer (fenced by the state machine).
    pub(super) fn fire_timers(&mut self, after: &mut AfterFlush) -> Result<(), PartitionError> {
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
        // Step timeouts kept in memory are current (never in the store):
        // taking them out is disarming them.
        let in_memory = self.timeouts.take_due(now, self.batch_size);
        let stored = due.len();
        for (n, row) in due.into_iter().chain(in_memory).enumerate() {
            let remove = match n < stored {
                true => vec![(row.saga_id.clone(), row.timer.clone())],
                false => Vec::new(),
            };
            let saga = self.take_saga(&row.saga_id)?;
            let def = match &saga {
                Some(s) => self.definition(&s.name, s.definition_version)?,
                None => None,
            };
            match (saga, def) {
                (Some(saga), Some(def)) => {
                    let event = Event::TimerFired(row.timer.clone());
                    let _ = self.apply_event(saga, &def, event, remove, after)?;
                }
                (saga, _) => {
                    if let Some(saga) = saga {
                        self.put_back(saga);
                    }
                    if remove.is_empty() {
                        continue;
                    }
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

    /// Arms the step timeout of every attempt in flight of the resumed
    /// sagas ([`super::timeouts`]), except held tasks' and those the store
    /// holds.
    pub(super) fn resume_step_timeouts(&mut self) -> Result<(), PartitionError> {
        let ids: Vec<String> = self.active.keys().cloned().collect();
        for id in ids {
            let Some((name, version)) = self
                .active
                .get(&id)
                .map(|s| (s.name.clone(), s.definition_version))
            else {
                continue;
            };
            let Some(def) = self.definition(&name, version)? else {
                continue;
            };
            let held: Vec<_> = self
                .services
                .held_of(&id)
                .into_iter()
                .map(|(_, h)| h.key)
                .collect();
            let Some(saga) = self.active.get(&id) else {
                continue;
            };
            for (timer, due) in super::timeouts::in_flight(saga, &def) {
                let TimerKind::StepTimeout {
                    step,
                    kind,
                    attempt,
                } = timer
                else {
                    continue;
                };
                let is_held = held
                    .iter()
                    .any(|k| (k.step, k.kind, k.attempt) == (step, kind, attempt));
                if !is_held && self.store.timer_due(&id, &timer)?.is_none() {
                    self.timeouts.arm(&id, timer, due);
                }
            }
        }
        if self.timeouts.len() > 0 {
            tracing::info!(
                step_timeouts = self.timeouts.len(),
                "step timeouts of attempts in flight armed"
            );
        }
        Ok(())
    }

    /// Applies `event` to `saga` (taken with [`Partition::take_saga`]) and
    /// commits the result; a rejected event puts the saga back unchanged.
    /// Rejections are logged and counted; `timers_remove` is committed
    /// either way.
    pub(super) fn apply_event(
        &mut self,
        mut saga: Saga,
        def: &SagaDefinition,
        event: Event,
        timers_remove: Vec<(String, jetsaga_core::saga::state::TimerKind)>,
        after: &mut AfterFlush,
    ) -> Result<Result<(), Rejection>, PartitionError> {
        let label = event_label(&event);
        // Operator events come from the API, whose door answers the caller
        // and counts a refusal itself, as for starts (see `handle`).
        let answered = matches!(event, Event::Cancel { .. } | Event::Retry { .. });
        let before = Before::of(&saga);
        // What the store holds now, unless an earlier change of the batch
        // holds the saga (then `commit` takes that change's prior).
        let prior = Prior::of(&saga);
        let traced = crate::trace::enabled().then(|| saga.clone());
        match machine::apply_noting_steps(&mut saga, def, event, inputs(now_ms())) {
            Ok(applied) => {
                if let Some(earlier) = &traced {
                    crate::trace::observe(def, earlier, &saga);
                }
                let dequeued = self.observe(def, before, &saga);
                let mut change = self.change_for(&mut saga, def, applied.effects);
                change.queue_remove.extend(dequeued);
                change.timers_remove.extend(timers_remove);
                change.prior = prior;
                self.commit(saga, Some(applied.steps), change, after)?;
                Ok(Ok(()))
            }
            Err(rejection) => {
                let id = saga.id.clone();
                self.put_back(saga);
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
                    tracing::debug!(saga_id = %id, %rejection, "stale timer ignored");
                } else if answered {
                    tracing::debug!(saga_id = %id, event = label, %rejection, "operator event refused; the caller is answered");
                } else {
                    tracing::warn!(saga_id = %id, event = label, %rejection, "event rejected");
                    metrics::counter!(crate::metrics::REJECTED, "reason" => rejection.reason())
                        .increment(1);
                }
                Ok(Err(rejection))
            }
        }
    }

    /// Stages saga `saga`'s new record with `change` (whose `prior` the
    /// caller set): the whole saga while it fits in one stored row, else
    /// its header and the steps `steps` lists (the transition wrote them;
    /// see `SagaWrite::of_transition`); with `None` (a new saga), the whole
    /// saga. An earlier record of the saga in this batch is folded in (see
    /// `take_earlier_copy`): this one then also writes the steps that one
    /// did.
    pub(super) fn commit(
        &mut self,
        saga: Saga,
        steps: Option<Vec<usize>>,
        mut change: Change,
        after: &mut AfterFlush,
    ) -> Result<(), StoreError> {
        let id = saga.id.clone();
        let state = saga.status.name();
        let terminal = saga.status.is_terminal();
        // The change's prior (the stored record's, so that the store moves
        // the index entries without reading it) is the caller's, or that
        // of the batch's earlier change of the saga.
        let earlier = super::take_earlier_copy(&mut self.pending, &id, &mut change);
        let steps = match (steps, earlier) {
            (None, _) | (_, Some(SagaWrite::Whole(_))) => None,
            (Some(steps), None) => Some(steps),
            (Some(mut steps), Some(SagaWrite::Steps { steps: before, .. })) => {
                steps.extend(before.iter().map(|(i, _)| *i as usize));
                steps.sort_unstable();
                steps.dedup();
                Some(steps)
            }
        };
        change.saga = Some(match steps {
            Some(steps) => SagaWrite::of_transition(&saga, &steps),
            None => SagaWrite::Whole(saga.clone()),
        });
        self.stage(change, after);
        after.progress.push((id.clone(), state));
        // `saga` may be a copy (taken or not, see `take_saga`): it replaces
        // whatever the in-memory set held.
        if terminal {
            self.active.remove(&id);
            self.finished.insert(id, saga);
        } else {
            // A saga retried after it finished earlier in the batch.
            self.finished.remove(&id);
            self.active.insert(id, saga);
        }
        Ok(())
    }
}
