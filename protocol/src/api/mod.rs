//! The messages of the engine's request API, over NATS (`<prefix>.api.<op>`,
//! each reply in an [`ApiReply`](crate::ApiReply) envelope) and over HTTP
//! (`/v1`, documented at `/openapi.json`): one type per message, so that
//! the engine, the CLI and clients in other languages read one documented
//! shape (docs/PROTOCOL.md, "Request API").
//!
//! These are views: the engine keeps its own records and converts them to
//! these types when it answers. With the `openapi` feature every reply and
//! body derives `utoipa::ToSchema`.
//!
//! ```
//! use jetsaga_protocol::api::{SagaState, SagaSummary};
//! let line: SagaSummary = serde_json::from_str(
//!     r#"{"id":"s-1","name":"order","state":"partially_compensated","steps_done":1,
//!         "steps_total":3,"created_at":1,"updated_at":2,"finished_at":2}"#,
//! ).unwrap();
//! assert_eq!(line.state, SagaState::PartiallyCompensated);
//! assert!(line.state.is_terminal());
//! ```

pub mod cluster;
pub mod definition;
pub mod request;
pub mod saga;
pub mod service;
mod state;
pub mod stats;

pub use cluster::{ClusterStatus, EngineStatus, PartitionStatus, StepDownReply, StepDownRequest};
pub use definition::{
    AppliedDefinition, AppliedDefinitions, BreakerConfig, DefinitionFile, DefinitionList,
    DefinitionListing, RetryPolicy, SagaDefinition, SagaPolicy, ServicePolicy, StepDefinition,
    Trigger,
};
pub use request::{
    CancelRequest, CancelSagaRequest, DefListRequest, GetRequest, ListRequest, MAX_LIST_LIMIT,
    RetryRequest, RetrySagaRequest, SagaRef, StartReply, StartRequest, StatsRequest,
};
pub use saga::{
    Attempt, AttemptOutcome, Saga, SagaDetail, SagaPage, SagaStatus, SagaSummary, StepState,
    StepStatus,
};
pub use service::{
    BreakerList, BreakerReset, BreakerResetBody, BreakerTransition, ForcedState, ServiceList,
    ServiceOverview, ServiceRef, ServiceStatus,
};
pub use state::{SagaState, UnknownState};
pub use stats::{DefinitionStats, Durations, SagaStats, Stats};
