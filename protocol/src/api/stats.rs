//! Saga statistics (`saga.stats`, `GET /v1/stats`): per definition and
//! overall, over the sagas the store keeps (retention prunes finished ones).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Statistics over the stored sagas a [`crate::api::StatsRequest`] selects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaStats {
    /// Only sagas created at or after this time (ms since the Unix epoch),
    /// from the request's `since`; absent when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<u64>,
    /// Every selected saga.
    pub overall: Stats,
    /// Per definition, by name (only definitions with selected sagas).
    pub definitions: Vec<DefinitionStats>,
}

/// The statistics of one definition's sagas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefinitionStats {
    /// Definition name.
    pub name: String,
    /// Its sagas' statistics.
    #[serde(flatten)]
    pub stats: Stats,
}

/// Counts, rates and durations of a set of sagas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    /// Sagas counted.
    pub total: u64,
    /// Sagas per state name, every state listed (0 included).
    pub states: BTreeMap<String, u64>,
    /// Terminal sagas (the denominator of the rates).
    pub finished: u64,
    /// `completed` / `finished`; absent when none finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<f64>,
    /// (`compensated` + `partially_compensated`) / `finished`: the share
    /// of finished sagas that ran compensations; absent when none finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_rate: Option<f64>,
    /// Durations (`finished_at - created_at`) of the finished sagas;
    /// absent when none finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Durations>,
}

/// Duration statistics, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Durations {
    /// Mean.
    pub avg: u64,
    /// Median (nearest rank).
    pub p50: u64,
    /// 95th percentile (nearest rank).
    pub p95: u64,
    /// Longest.
    pub max: u64,
}
