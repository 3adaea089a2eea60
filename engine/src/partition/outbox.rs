//! What a transition's effects become: outbox rows (tasks and lifecycle
//! events) and timers, in the store change that carries them.

use super::Partition;
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::TimerKind;
use jetsaga_core::saga::state::{Effect, LifecycleEvent, Saga};
use jetsaga_protocol::{
    self as protocol, self, HEADER_IDEMPOTENCY_KEY, HEADER_RESULT_TOKEN, HEADER_SAGA_ID, Task,
    TaskKind,
};
use jetsaga_store::{Change, OutboxMessage, TimerRow};

impl Partition {
    /// Turns a transition's effects into the store change that carries them.
    ///
    /// Each lifecycle event becomes an outbox message (a CloudEvent, see
    /// [`crate::events`]) numbered by the saga's event sequence, which the
    /// transition advances and stores with the saga; step events only for
    /// a definition with `step_events`.
    ///
    /// Tasks pass through service admission ([`jetsaga_core::admission`]): ended
    /// attempts count for their service's breaker and free room first, then
    /// each task either becomes an outbox row or is held, its attempt's
    /// timeout not armed until it is released.
    pub(super) fn change_for(
        &mut self,
        saga: &mut Saga,
        def: &SagaDefinition,
        effects: Vec<Effect>,
    ) -> Change {
        let mut change = Change::default();
        let mut step_timeouts = Vec::new();
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
                // A dispatched attempt's timeout is kept in memory
                // (`super::timeouts`); other timers are stored.
                Effect::ScheduleTimer {
                    timer: timer @ TimerKind::StepTimeout { .. },
                    due,
                } => step_timeouts.push((timer, due)),
                Effect::ScheduleTimer { timer, due } => change.timers_add.push(TimerRow {
                    saga_id: saga.id.clone(),
                    timer,
                    due,
                }),
                Effect::CancelTimer { timer } => {
                    let in_memory = matches!(timer, TimerKind::StepTimeout { .. })
                        && (self.timeouts.disarm(&saga.id, &timer) || {
                            let armed = step_timeouts.len();
                            step_timeouts.retain(|(t, _)| *t != timer);
                            step_timeouts.len() < armed
                        });
                    if !in_memory {
                        // A stored one: of a released held task, or armed
                        // by an earlier version.
                        change.timers_remove.push((saga.id.clone(), timer))
                    }
                }
                Effect::Lifecycle(event) => {
                    log_lifecycle(saga, def, &event);
                    // Step events only for definitions that ask for them:
                    // each is one more message stored per step.
                    if event.is_step() && !def.step_events {
                        continue;
                    }
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
        for (timer, due) in step_timeouts {
            if !held.contains(&timer) {
                self.timeouts.arm(&saga.id, timer, due);
            }
        }
        self.services.note(saga);
        change.breakers = self.services.take_dirty();
        change
    }

    pub(super) fn task_message(
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
            partition: self.number,
        };
        let mut headers = vec![
            (HEADER_SAGA_ID.to_string(), saga.id.clone()),
            (HEADER_IDEMPOTENCY_KEY.to_string(), idempotency_key),
            // Stored with the row, so every publish of it carries the same.
            (
                HEADER_RESULT_TOKEN.to_string(),
                format!("{:016x}", rand::random::<u64>()),
            ),
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

pub(super) fn log_lifecycle(saga: &Saga, def: &SagaDefinition, event: &LifecycleEvent) {
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
