//! Requests of the request API, and the reply to a start.

use super::SagaState;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Starts a saga: the body of `saga.start` and of `POST /v1/sagas`, and of
/// a durable start message (whose subject names the saga, so `saga` may be
/// omitted there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartRequest {
    /// Definition name. Required over HTTP and NATS; a durable start
    /// message's subject names it instead.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub saga: String,
    /// The saga's input, any JSON (`null` when absent).
    #[serde(default)]
    pub input: Value,
    /// Idempotency key, 1 to 256 bytes: the same key always gives the same
    /// saga instance. The `Idempotency-Key` header wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl StartRequest {
    /// Every field's name, for a door that refuses unknown fields (HTTP
    /// does; NATS and durable starts ignore them).
    pub const FIELDS: [&'static str; 3] = ["saga", "input", "idempotency_key"];
}

/// Reply to a successful start: the saga started, or the one its
/// idempotency key names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StartReply {
    /// Saga id; `GET /v1/sagas/{saga_id}` (the `Location` header) reads it.
    pub saga_id: String,
    /// `false` when the idempotency key named an existing saga.
    pub created: bool,
    /// `true` when the saga waits in the engine's durable start queue (state
    /// `pending`) because a concurrency limit is reached; it starts by itself
    /// once room frees. Sent only when `true`; absent means `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
}

/// Names one saga (`saga.get`, `saga.delete` and its reply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRef {
    /// Saga id.
    pub id: String,
}

/// Asks to cancel a saga (`saga.cancel`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Saga id.
    pub id: String,
    /// Compensate the completed steps.
    #[serde(default)]
    pub compensate: bool,
    /// Why (recorded in the saga).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Asks to retry a finished saga (`saga.retry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRequest {
    /// Saga id.
    pub id: String,
    /// Only resume the rollback of a `partially_compensated` saga; refuse
    /// anything else (`jetsaga saga retry-compensation`).
    #[serde(default)]
    pub compensation_only: bool,
}

/// Cancels a saga.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelSagaRequest {
    /// Compensate the steps that completed (`true`), or just stop (`false`).
    #[serde(default)]
    pub compensate: bool,
    /// Why; recorded in the saga.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Retries a finished saga.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetrySagaRequest {
    /// Only resume the rollback of a `partially_compensated` saga; any
    /// other state is refused (`jetsaga saga retry-compensation`).
    #[serde(default)]
    pub compensation_only: bool,
}

/// Most items one page of `saga.list` or `def.list` (and `GET /v1/sagas`)
/// returns; a larger `limit` is refused with `E-BAD-REQUEST` in every door.
pub const MAX_LIST_LIMIT: usize = 1000;

/// Which sagas to list (`saga.list`, and `GET /v1/sagas` once its query is
/// decoded). Every field is optional on the wire; the time range applies
/// to `created_at`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListRequest {
    /// Only sagas in this state.
    pub state: Option<SagaState>,
    /// Only sagas of this definition.
    pub name: Option<String>,
    /// Only sagas created strictly before this id (the cursor of the next page).
    pub before: Option<String>,
    /// At most this many, newest first: 1 to [`MAX_LIST_LIMIT`]; `0` means
    /// the engine's default (100).
    pub limit: usize,
    /// Only sagas created at or after this time (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_after: Option<u64>,
    /// Only sagas created strictly before this time (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_before: Option<u64>,
}

/// Which definitions to list (`def.list`): a page of the current
/// definitions by name. `{}` asks for the first [`MAX_LIST_LIMIT`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DefListRequest {
    /// Only definitions whose name sorts strictly after this one: the last
    /// name of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many: 1 to [`MAX_LIST_LIMIT`]; `0` means
    /// [`MAX_LIST_LIMIT`].
    pub limit: usize,
}

/// Names the saga to read (`saga.get`): by `id`, or by the idempotency key
/// it was started with. Exactly one of the two. A lookup by key only reads:
/// it never starts a saga, not even for a durable start not yet consumed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetRequest {
    /// Saga id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The idempotency key of the saga's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Which sagas to summarize (`saga.stats`, `GET /v1/stats`). Every field is
/// optional; `{}` covers every saga the store keeps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsRequest {
    /// Only sagas of this definition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saga: Option<String>,
    /// Only sagas created within this many milliseconds before now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}
