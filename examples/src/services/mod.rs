//! The example services, one module per service.
//!
//! A service module registers *every* operation of its service across all the
//! examples (for instance `invoicing` serves `create_nf`/`cancel_nf` of
//! `create_booking` and `create_invoice`/`void_invoice` of `collect_payment`),
//! because all workers of a service share one work queue: any process that
//! runs the service must be able to handle each of its tasks.

use crate::faults;
use crate::ledger::{Applied, Ledger, LedgerEntry, now_ms};
use jetsaga_worker::protocol::{self, TaskKind};
use jetsaga_worker::{StepError, TaskContext, WorkerBuilder};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

pub mod analytics;
pub mod calendar;
pub mod catalog;
pub mod container_engine;
pub mod email;
pub mod embedder;
pub mod environment;
pub mod gateway;
pub mod ingest;
pub mod invoicing;
pub mod manifest;
pub mod parser;
pub mod payments;
pub mod whatsapp;

/// What a service's handlers share: its ledger and the worker's name.
#[derive(Debug, Clone)]
pub struct ServiceEnv {
    /// The service's ledger (its stand-in downstream system).
    pub ledger: Arc<Ledger>,
    /// Identity of this worker process, written into ledger records.
    pub worker: Arc<str>,
}

/// A service the example binaries can run: its queue name and a function
/// registering all its operations on a [`WorkerBuilder`].
#[derive(Clone, Copy)]
pub struct Service {
    /// Service (work queue) name.
    pub name: &'static str,
    /// Registers the service's handlers and compensations.
    pub register: fn(WorkerBuilder, &ServiceEnv) -> WorkerBuilder,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("name", &self.name).finish()
    }
}

/// Every example service.
pub const ALL: &[Service] = &[
    manifest::SERVICE,
    container_engine::SERVICE,
    gateway::SERVICE,
    environment::SERVICE,
    invoicing::SERVICE,
    email::SERVICE,
    whatsapp::SERVICE,
    calendar::SERVICE,
    payments::SERVICE,
    analytics::SERVICE,
    ingest::SERVICE,
    parser::SERVICE,
    embedder::SERVICE,
    catalog::SERVICE,
];

/// Services of `deploy_environment` (the `deploy-workers` binary).
pub const DEPLOY: &[Service] = &[
    manifest::SERVICE,
    container_engine::SERVICE,
    gateway::SERVICE,
    environment::SERVICE,
];

/// Services of `create_booking` (the `booking-workers` binary).
pub const BOOKING: &[Service] = &[
    invoicing::SERVICE,
    email::SERVICE,
    whatsapp::SERVICE,
    calendar::SERVICE,
];

/// Services of `collect_payment` (the `payment-workers` binary).
pub const PAYMENT: &[Service] = &[
    payments::SERVICE,
    invoicing::SERVICE,
    email::SERVICE,
    analytics::SERVICE,
];

/// Services of `data_ingest_pipeline` (the `ingest-workers` binary).
pub const INGEST: &[Service] = &[
    ingest::SERVICE,
    parser::SERVICE,
    embedder::SERVICE,
    catalog::SERVICE,
];

/// Looks a service up by name.
pub fn by_name(name: &str) -> Option<Service> {
    ALL.iter().copied().find(|s| s.name == name)
}

/// Turns `async fn(ServiceEnv, TaskContext, I)` into the handler closure the
/// SDK takes, capturing the environment.
pub(crate) fn bind<I, F, Fut>(
    env: &ServiceEnv,
    f: F,
) -> impl Fn(TaskContext, I) -> Fut + Clone + Send + Sync + 'static
where
    F: Fn(ServiceEnv, TaskContext, I) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future + Send + 'static,
{
    let env = env.clone();
    move |ctx, input| f(env.clone(), ctx, input)
}

/// The handler contract of every example: inject the faults the saga input
/// asks for (before anything happens), then apply the effect to the service's
/// ledger under the task's idempotency key.
pub(crate) async fn perform(
    env: &ServiceEnv,
    ctx: &TaskContext,
    effect: impl Into<String>,
) -> Result<Applied, StepError> {
    faults::inject(ctx.input_raw(), ctx.step_id(), ctx.kind(), ctx.attempt()).await?;
    let entry = LedgerEntry {
        duplicate_of: None,
        at_ms: now_ms(),
        service: ctx.service().to_string(),
        operation: ctx.operation().to_string(),
        kind: ctx.kind(),
        saga_id: ctx.saga_id().to_string(),
        step_id: ctx.step_id().to_string(),
        idempotency_key: ctx.idempotency_key().to_string(),
        attempt: ctx.attempt(),
        worker: env.worker.to_string(),
        effect: effect.into(),
    };
    let effect = entry.effect.clone();
    let applied = env
        .ledger
        .apply_async(entry)
        .await
        .map_err(|e| StepError::retryable(format!("ledger write failed: {e}")))?;
    match applied {
        // The SDK's task span already carries saga, step, kind and attempt.
        Applied::First => tracing::info!(service = ctx.service(), "{effect}"),
        Applied::Duplicate => tracing::warn!(
            service = ctx.service(),
            key = ctx.idempotency_key(),
            "duplicate suppressed by the downstream idempotency key: {effect}"
        ),
    }
    Ok(applied)
}

/// The output of an earlier step, if it succeeded and has the expected shape.
pub(crate) fn prior<T: DeserializeOwned>(ctx: &TaskContext, step_id: &str) -> Option<T> {
    ctx.step_output::<T>(step_id).and_then(Result::ok)
}

/// A string field of an earlier step's output.
pub(crate) fn prior_str(ctx: &TaskContext, step_id: &str, field: &str) -> Option<String> {
    prior::<serde_json::Value>(ctx, step_id)
        .and_then(|v| v.get(field).and_then(|f| f.as_str()).map(str::to_string))
}

/// A deterministic resource id for the current step's *action* (the same for
/// the action, its retries and its compensation): `<prefix>_<hash>`. Deriving
/// ids from the idempotency key keeps outputs identical when an attempt is
/// repeated.
pub(crate) fn resource_id(ctx: &TaskContext, prefix: &str) -> String {
    let key = protocol::idempotency_key(ctx.saga_id(), ctx.step_id(), TaskKind::Action);
    derive_id(prefix, &key)
}

/// `<prefix>_<12 hex digits of FNV-1a(key)>`.
pub fn derive_id(prefix: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{prefix}_{:012x}", h & 0xffff_ffff_ffff)
}

/// Formats cents as `12.34 CUR`.
pub(crate) fn money(cents: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", cents / 100, cents % 100)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers to run handlers without a server.

    use super::*;
    use jetsaga_worker::protocol::{Outcome, Task};
    use serde_json::Value;
    use std::collections::BTreeMap;

    /// A task of `service`/`operation` for step `step_id`.
    pub(crate) fn task(
        service: &str,
        step_id: &str,
        operation: &str,
        kind: TaskKind,
        attempt: u32,
        input: Value,
        context: BTreeMap<String, Value>,
    ) -> Task {
        Task {
            saga_id: "saga-test-1".into(),
            saga_name: "test".into(),
            step_id: step_id.into(),
            kind,
            service: service.into(),
            operation: operation.into(),
            attempt,
            idempotency_key: protocol::idempotency_key("saga-test-1", step_id, kind),
            input,
            context,
            timeout_ms: 10_000,
            partition: 0,
        }
    }

    /// A service environment writing to a ledger under `dir`.
    pub(crate) fn env(dir: &std::path::Path, service: &str) -> ServiceEnv {
        ServiceEnv {
            ledger: Arc::new(Ledger::open(dir, service).unwrap()),
            worker: Arc::from("test-worker"),
        }
    }

    /// Builds the service's worker definition and runs one task through it.
    pub(crate) async fn run(service: Service, env: &ServiceEnv, task: Task) -> Outcome {
        let builder = (service.register)(jetsaga_worker::Worker::builder(service.name), env);
        builder.run_one(task).await
    }

    /// The output of an `Ok` outcome; panics otherwise.
    pub(crate) fn ok(outcome: Outcome) -> Value {
        match outcome {
            Outcome::Ok { output } => output,
            other => panic!("expected ok, got {other:?}"),
        }
    }
}
