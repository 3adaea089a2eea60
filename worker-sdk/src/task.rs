//! [`TaskContext`]: what a handler knows about the task it runs.

use crate::StepError;
use crate::protocol::{Task, TaskKind};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How far away [`TaskContext::deadline`] is for a task without a timeout
/// (`timeout_ms == 0`): far enough never to matter, near enough not to
/// overflow `Instant` arithmetic.
const NO_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The task a handler runs, and the facts about it a handler may need.
///
/// Cheap to clone (the task is shared). Handlers get one per call; tests
/// build one with [`TaskContext::test`].
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The task as the engine sent it.
    task: Arc<Task>,
    /// When this worker stops waiting for the handler.
    deadline: Instant,
}

impl TaskContext {
    /// Context for `task`, received now: the deadline is `timeout_ms` from now.
    pub(crate) fn received(task: Arc<Task>) -> Self {
        let timeout = match task.timeout_ms {
            0 => NO_DEADLINE,
            ms => Duration::from_millis(ms),
        };
        Self {
            deadline: Instant::now() + timeout,
            task,
        }
    }

    /// Context for a unit test of a handler: no server, the deadline is
    /// `task.timeout_ms` from now (none if it is 0).
    ///
    /// ```
    /// use jetsaga_worker::{TaskContext, protocol::{Task, TaskKind}};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let task = Task {
    ///     saga_id: "s1".into(), saga_name: "order".into(), step_id: "charge".into(),
    ///     kind: TaskKind::Action, service: "payments".into(), operation: "charge".into(),
    ///     attempt: 1, idempotency_key: "s1.charge.action".into(),
    ///     input: serde_json::json!({"amount": 5}), context: Default::default(), timeout_ms: 1000, partition: 0,
    /// };
    /// let ctx = TaskContext::test(task);
    /// assert_eq!(ctx.idempotency_key(), "s1.charge.action");
    /// # }
    /// ```
    pub fn test(task: Task) -> Self {
        Self::received(Arc::new(task))
    }

    /// The task itself.
    pub(crate) fn task(&self) -> &Task {
        &self.task
    }

    /// Saga instance id.
    pub fn saga_id(&self) -> &str {
        &self.task.saga_id
    }

    /// Saga definition name.
    pub fn saga_name(&self) -> &str {
        &self.task.saga_name
    }

    /// Step id within the saga definition.
    pub fn step_id(&self) -> &str {
        &self.task.step_id
    }

    /// Whether this is the step's action or its compensation.
    pub fn kind(&self) -> TaskKind {
        self.task.kind
    }

    /// Operation being run (the step's `operation` or its `compensation`).
    pub fn operation(&self) -> &str {
        &self.task.operation
    }

    /// Service (work queue) the task was sent to.
    pub fn service(&self) -> &str {
        &self.task.service
    }

    /// Attempt number, from 1.
    pub fn attempt(&self) -> u32 {
        self.task.attempt
    }

    /// Key that is the same for every attempt of this step's action (and a
    /// different one for its compensation).
    ///
    /// Pass it to the services you call (as their idempotency key, request
    /// id, or a unique column) so that a retried attempt whose first try did
    /// reach them has no second effect. With it, effects happen exactly once
    /// end to end; without it, only once per recorded outcome.
    pub fn idempotency_key(&self) -> &str {
        &self.task.idempotency_key
    }

    /// The saga's input, as JSON.
    pub fn input_raw(&self) -> &serde_json::Value {
        &self.task.input
    }

    /// Output of the earlier step `step_id`, if it succeeded, decoded as `T`.
    ///
    /// `None` when that step has no output here (it has not succeeded, or
    /// does not exist). For a compensation this includes the compensated
    /// step's own output. A decoding failure is a [`StepError::Fatal`].
    pub fn step_output<T: DeserializeOwned>(&self, step_id: &str) -> Option<Result<T, StepError>> {
        let value = self.task.context.get(step_id)?;
        Some(
            T::deserialize(value).map_err(|e| {
                StepError::fatal(format_args!("invalid output of step {step_id}: {e}"))
            }),
        )
    }

    /// When this worker stops waiting for the handler: `timeout_ms` of the
    /// task after it was received. The handler is cancelled at that point and
    /// the attempt reported as retryable; long handlers can check it to stop
    /// early, or pass it on as a timeout to the services they call.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task() -> Task {
        Task {
            saga_id: "s-1".into(),
            saga_name: "order".into(),
            step_id: "ship".into(),
            kind: TaskKind::Compensation,
            service: "shipping".into(),
            operation: "cancel_shipment".into(),
            attempt: 3,
            idempotency_key: "s-1.ship.compensation".into(),
            input: json!({"order": 7}),
            context: [
                ("reserve".to_string(), json!({"reservation": "r-9"})),
                ("ship".to_string(), json!("not an object")),
            ]
            .into_iter()
            .collect(),
            timeout_ms: 5_000,
            partition: 0,
        }
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Reservation {
        reservation: String,
    }

    #[tokio::test(start_paused = true)]
    async fn accessors_return_the_task_fields() {
        let before = Instant::now();
        let ctx = TaskContext::test(task());
        assert_eq!(ctx.saga_id(), "s-1");
        assert_eq!(ctx.saga_name(), "order");
        assert_eq!(ctx.step_id(), "ship");
        assert_eq!(ctx.kind(), TaskKind::Compensation);
        assert_eq!(ctx.service(), "shipping");
        assert_eq!(ctx.operation(), "cancel_shipment");
        assert_eq!(ctx.attempt(), 3);
        assert_eq!(ctx.idempotency_key(), "s-1.ship.compensation");
        assert_eq!(ctx.input_raw(), &json!({"order": 7}));
        assert_eq!(ctx.deadline() - before, Duration::from_secs(5));
    }

    #[tokio::test]
    async fn step_output_decodes_present_steps_only() {
        let ctx = TaskContext::test(task());
        assert_eq!(
            ctx.step_output::<Reservation>("reserve").unwrap().unwrap(),
            Reservation {
                reservation: "r-9".into()
            }
        );
        assert!(ctx.step_output::<Reservation>("missing").is_none());
        let err = ctx.step_output::<Reservation>("ship").unwrap().unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.message().starts_with("invalid output of step ship:"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_timeout_means_no_deadline() {
        let mut t = task();
        t.timeout_ms = 0;
        let ctx = TaskContext::test(t);
        assert!(ctx.deadline() > Instant::now() + Duration::from_secs(365 * 24 * 3600));
    }
}
