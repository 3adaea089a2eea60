//! What the store keeps per service: held tasks, circuit breakers and
//! service policies ([`ServiceTable`]).

use crate::StoreError;
use crate::outbox::OutboxMessage;
use jetsaga_core::admission::Breaker;
use jetsaga_core::saga::definition::ServicePolicy;
use serde::{Deserialize, Serialize};

/// A task held back by its service's circuit breaker or in-flight limit
/// ([`jetsaga_core::admission`]): the outbox row it becomes when released, and the
/// attempt it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldTask {
    /// The service whose queue it goes to.
    pub service: String,
    /// Saga id.
    pub saga_id: String,
    /// Step index.
    pub step: usize,
    /// Action or compensation.
    pub kind: jetsaga_protocol::TaskKind,
    /// Attempt number.
    pub attempt: u32,
    /// The attempt's timeout, armed when the task is released (ms).
    pub timeout_ms: u64,
    /// The task message to publish.
    pub message: OutboxMessage,
}

/// Per-service state of the admission control ([`jetsaga_core::admission`]):
/// held tasks and circuit breakers, which change with
/// [`crate::GroupCommit`] and which the partition reads back, and service
/// policies, which applying a definitions file writes.
pub trait ServiceTable: Send + Sync {
    /// Every held task, by hold sequence.
    fn held_tasks(&self) -> Result<Vec<(u64, HeldTask)>, StoreError>;
    /// One held task.
    fn held_task(&self, seq: u64) -> Result<Option<HeldTask>, StoreError>;
    /// Every stored circuit breaker, by service.
    fn breakers(&self) -> Result<Vec<(String, Breaker)>, StoreError>;
    /// Stores a service's policy, replacing the one it had (latest applied
    /// wins). Returns whether it changed. Durable after the next
    /// [`crate::GroupCommit::flush`], like a definition.
    fn put_service_policy(&self, policy: &ServicePolicy) -> Result<bool, StoreError>;
    /// Every service policy, by service.
    fn service_policies(&self) -> Result<Vec<ServicePolicy>, StoreError>;
}
