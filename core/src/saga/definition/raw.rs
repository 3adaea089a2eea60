//! The shape of a definitions file as written, before it is built into the
//! model ([`super::build`]).

use super::duration::RawDuration;
use super::entries::Entries;
use super::policy::RawSagaPolicy;
use super::retry::{RawPolicy, RawRetry};
use super::service::RawService;
use super::trigger::RawTrigger;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) sagas: Entries<RawSaga>,
    #[serde(default)]
    pub(super) retry_policies: Option<Entries<RawPolicy>>,
    #[serde(default)]
    pub(super) services: Option<Entries<RawService>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSaga {
    #[serde(default)]
    pub(super) timeout: Option<RawDuration>,
    pub(super) steps: Vec<RawStep>,
    #[serde(default)]
    pub(super) triggers: Vec<RawTrigger>,
    #[serde(default)]
    pub(super) policy: Option<RawSagaPolicy>,
    /// Wider than the model's `u32` so that zero or a negative count is
    /// reported by validation, naming the field.
    #[serde(default)]
    pub(super) max_running: Option<i64>,
    #[serde(default)]
    pub(super) step_events: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStep {
    pub(super) id: String,
    pub(super) service: String,
    pub(super) operation: String,
    #[serde(default)]
    pub(super) compensation: Option<String>,
    #[serde(default)]
    pub(super) timeout: Option<RawDuration>,
    #[serde(default)]
    pub(super) retry: Option<RawRetry>,
    #[serde(default)]
    pub(super) depends_on: Vec<String>,
}
