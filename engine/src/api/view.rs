//! The engine's records as the request API shows them: conversions from
//! the core's state, definitions and admission status to the messages of
//! [`jetsaga_protocol::api`]. The store keeps the core's types; only these
//! functions decide what a client sees.

use jetsaga_core::admission;
use jetsaga_core::saga::definition as def;
use jetsaga_core::saga::state as core;
use jetsaga_protocol::api as dto;
use std::time::Duration;

/// A duration in the JSON's milliseconds.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A saga with the definition version it runs; each step carries its id.
pub fn saga_detail(
    saga: core::Saga,
    definition: &def::SagaDefinition,
    queue_position: Option<usize>,
) -> dto::SagaDetail {
    let mut saga = saga_view(saga);
    for (step, d) in saga.steps.iter_mut().zip(&definition.steps) {
        step.id = Some(d.id.clone());
    }
    dto::SagaDetail {
        saga,
        definition: definition_view(definition),
        queue_position,
    }
}

/// A saga, every step's state and attempt history.
pub fn saga_view(s: core::Saga) -> dto::Saga {
    dto::Saga {
        id: s.id,
        name: s.name,
        definition_version: s.definition_version,
        input: s.input,
        idempotency_key: s.idempotency_key,
        generation: s.generation,
        status: saga_status(s.status),
        steps: s.steps.into_iter().map(step_state).collect(),
        created_at: s.created_at,
        updated_at: s.updated_at,
        finished_at: s.finished_at,
        trace_parent: s.trace_parent,
        event_seq: s.event_seq,
    }
}

fn saga_status(s: core::SagaStatus) -> dto::SagaStatus {
    use core::SagaStatus as C;
    use dto::SagaStatus as D;
    match s {
        C::Pending => D::Pending,
        C::Running => D::Running,
        C::Compensating { reason } => D::Compensating { reason },
        C::Completed => D::Completed,
        C::Compensated { reason } => D::Compensated { reason },
        C::Failed { reason } => D::Failed { reason },
        C::PartiallyCompensated {
            reason,
            stuck_steps,
        } => D::PartiallyCompensated {
            reason,
            stuck_steps,
        },
        C::Cancelled { reason } => D::Cancelled { reason },
    }
}

fn step_state(s: core::StepState) -> dto::StepState {
    dto::StepState {
        id: None,
        status: step_status(s.status),
        attempts: s.attempts.into_iter().map(attempt).collect(),
        attempts_dropped: s.attempts_dropped,
        output: s.output,
        action_base: s.action_base,
        compensation_base: s.compensation_base,
    }
}

fn step_status(s: core::StepStatus) -> dto::StepStatus {
    use core::StepStatus as C;
    use dto::StepStatus as D;
    match s {
        C::Pending => D::Pending,
        C::Running { attempt } => D::Running { attempt },
        C::RetryWaiting { attempt, due } => D::RetryWaiting { attempt, due },
        C::Succeeded => D::Succeeded,
        C::Failed { error } => D::Failed { error },
        C::Skipped => D::Skipped,
        C::Compensating { attempt } => D::Compensating { attempt },
        C::CompensationRetryWaiting { attempt, due } => {
            D::CompensationRetryWaiting { attempt, due }
        }
        C::Compensated => D::Compensated,
        C::NotCompensable => D::NotCompensable,
        C::CompensationFailed { error } => D::CompensationFailed { error },
    }
}

fn attempt(a: core::Attempt) -> dto::Attempt {
    use core::AttemptOutcome as C;
    use dto::AttemptOutcome as D;
    dto::Attempt {
        kind: a.kind,
        number: a.number,
        generation: a.generation,
        started_at: a.started_at,
        finished_at: a.finished_at,
        outcome: a.outcome.map(|o| match o {
            C::Ok => D::Ok,
            C::Retryable { error } => D::Retryable { error },
            C::Fatal { error } => D::Fatal { error },
            C::TimedOut => D::TimedOut,
            C::Abandoned => D::Abandoned,
        }),
    }
}

/// One line of a listing.
pub fn saga_summary(s: &core::Saga) -> dto::SagaSummary {
    use core::StepStatus as S;
    dto::SagaSummary {
        id: s.id.clone(),
        name: s.name.clone(),
        state: s.status.state(),
        steps_done: s
            .steps
            .iter()
            .filter(|st| matches!(st.status, S::Succeeded | S::Compensated | S::NotCompensable))
            .count(),
        steps_total: s.steps.len(),
        created_at: s.created_at,
        updated_at: s.updated_at,
        finished_at: s.finished_at,
    }
}

/// A definition version, durations in milliseconds.
pub fn definition_view(d: &def::SagaDefinition) -> dto::SagaDefinition {
    dto::SagaDefinition {
        name: d.name.clone(),
        version: d.version,
        timeout: d.timeout.map(millis),
        steps: d.steps.iter().map(step_definition).collect(),
        triggers: d
            .triggers
            .iter()
            .map(|t| dto::Trigger {
                subject: t.subject.clone(),
                input: t.input.clone(),
            })
            .collect(),
        policy: dto::SagaPolicy {
            enabled: d.policy.enabled,
            environments: d.policy.environments.clone(),
        },
        max_running: d.max_running,
        step_events: d.step_events,
    }
}

fn step_definition(s: &def::StepDefinition) -> dto::StepDefinition {
    dto::StepDefinition {
        id: s.id.clone(),
        service: s.service.clone(),
        operation: s.operation.clone(),
        compensation: s.compensation.clone(),
        timeout: millis(s.timeout),
        retry: dto::RetryPolicy {
            max_attempts: s.retry.max_attempts,
            initial_delay: millis(s.retry.initial_delay),
            max_delay: millis(s.retry.max_delay),
            backoff_factor: s.retry.backoff_factor,
            jitter: s.retry.jitter,
        },
        depends_on: s.depends_on.clone(),
    }
}

fn breaker_config(b: &def::BreakerConfig) -> dto::BreakerConfig {
    dto::BreakerConfig {
        failure_threshold: b.failure_threshold,
        success_threshold: b.success_threshold,
        open_timeout: millis(b.open_timeout),
    }
}

/// A validated definitions file.
pub fn definition_file(f: &def::DefinitionFile) -> dto::DefinitionFile {
    dto::DefinitionFile {
        sagas: f.sagas.iter().map(definition_view).collect(),
        services: f
            .services
            .iter()
            .map(|p| dto::ServicePolicy {
                service: p.service.clone(),
                max_in_flight: p.max_in_flight,
                circuit_breaker: p.circuit_breaker.as_ref().map(breaker_config),
            })
            .collect(),
    }
}

/// A service's breaker, held and in-flight tasks, and limits.
pub fn service_status(s: admission::ServiceStatus) -> dto::ServiceStatus {
    dto::ServiceStatus {
        service: s.service,
        state: s.state,
        failures: s.failures,
        successes: s.successes,
        probe_in_flight: s.probe_in_flight,
        since: s.since,
        half_opens_at: s.half_opens_at,
        held: s.held,
        in_flight: s.in_flight,
        max_in_flight: s.max_in_flight,
        circuit_breaker: s.circuit_breaker.as_ref().map(breaker_config),
        history: s
            .history
            .into_iter()
            .map(|t| dto::BreakerTransition {
                at: t.at,
                from: t.from.name().to_string(),
                to: t.to.name().to_string(),
                cause: t.cause.name().to_string(),
            })
            .collect(),
    }
}
