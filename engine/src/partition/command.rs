//! Commands the partition accepts, and the handle that sends them.

use async_nats::jetstream;
use jetsaga_core::admission::ServiceStatus;
use jetsaga_core::saga::definition::ServicePolicy;
use jetsaga_core::saga::state::{Millis, Saga};
use jetsaga_protocol::{ApiError, ErrorCode, StartReply, TaskResult};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// Where starts go: the partition their key belongs to, led by this
/// engine or by another. The request API implements it; the intake of
/// durable starts and the trigger consumers use it.
pub trait Starts: Send + Sync {
    /// The handle of the partition a start with `key` belongs to, when
    /// this engine leads it (a start without a key may go to any).
    fn local(&self, key: Option<&str>) -> Option<PartitionHandle>;
    /// Starts a saga through the leader of its partition, here or on
    /// another engine, once the start is durable there.
    fn start(
        &self,
        start: StartCommand,
    ) -> futures::future::BoxFuture<'static, Result<StartReply, ApiError>>;
}

/// [`Starts`] of an engine that leads its one partition.
impl Starts for PartitionHandle {
    fn local(&self, _key: Option<&str>) -> Option<PartitionHandle> {
        Some(self.clone())
    }

    fn start(
        &self,
        start: StartCommand,
    ) -> futures::future::BoxFuture<'static, Result<StartReply, ApiError>> {
        let handle = self.clone();
        Box::pin(async move { PartitionHandle::start(&handle, start).await })
    }
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
    /// Store definitions (each a new version unless identical to the
    /// current one) and service policies, and put the policies to use;
    /// answered with what was stored once that is durable.
    Definitions {
        /// Validated definitions.
        definitions: Vec<jetsaga_core::saga::definition::SagaDefinition>,
        /// Validated service policies.
        services: Vec<ServicePolicy>,
        /// Where to answer.
        reply: oneshot::Sender<Result<Vec<jetsaga_store::Applied>, ApiError>>,
    },
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
    /// Close a service's breaker and release its held tasks, or force it
    /// open or closed.
    Reset {
        /// Service name.
        service: String,
        /// The state to force; `None` for a plain reset.
        state: Option<jetsaga_core::admission::ForcedState>,
        /// Answered once the reset is durable.
        reply: oneshot::Sender<Result<ServiceStatus, ApiError>>,
    },
}

/// A cheap, cloneable handle to send commands to the partition.
#[derive(Debug, Clone)]
pub struct PartitionHandle {
    pub(super) tx: mpsc::Sender<Command>,
}

impl PartitionHandle {
    /// Sends a command; fails when the partition has stopped.
    pub async fn send(&self, cmd: Command) -> Result<(), ApiError> {
        self.tx.send(cmd).await.map_err(|_| {
            api_error(
                ErrorCode::Unavailable,
                "the engine is shutting down; retry against a running engine",
            )
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

    /// Stores definitions and service policies and waits until that is
    /// durable (and journaled).
    pub async fn definitions(
        &self,
        definitions: Vec<jetsaga_core::saga::definition::SagaDefinition>,
        services: Vec<ServicePolicy>,
    ) -> Result<Vec<jetsaga_store::Applied>, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Definitions {
            definitions,
            services,
            reply,
        })
        .await?;
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

    /// Closes a service's breaker, releasing its held tasks, or forces it
    /// into `state`; answers once that is durable.
    pub async fn reset_breaker(
        &self,
        service: String,
        state: Option<jetsaga_core::admission::ForcedState>,
    ) -> Result<ServiceStatus, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Services(ServicesCommand::Reset {
            service,
            state,
            reply,
        }))
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

pub(super) fn unavailable() -> ApiError {
    api_error(
        ErrorCode::Unavailable,
        "the engine stopped before answering; retry",
    )
}

/// Builds an [`ApiError`].
pub fn api_error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}
