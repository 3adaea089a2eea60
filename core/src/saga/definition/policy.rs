//! A saga's `policy`: whether and in which environments new sagas of a
//! definition may start.

use jetsaga_protocol::validate_token;
use serde::{Deserialize, Serialize};

use super::error::{DefinitionError, Escaped, Place};

/// Whether and where sagas of a definition may start: capability by
/// design, optional by policy. Sagas already running are not affected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaPolicy {
    /// `false`: no new saga of this definition starts, through any door.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// When not empty, new sagas start only in an engine whose configured
    /// `environment` is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for SagaPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            environments: Vec::new(),
        }
    }
}

impl SagaPolicy {
    /// Whether this is the default policy (enabled everywhere).
    pub fn is_default(&self) -> bool {
        *self == SagaPolicy::default()
    }

    /// Why a new saga `saga` may not start in an engine whose environment
    /// is `environment`, or `None` when it may.
    pub fn refusal(&self, saga: &str, environment: Option<&str>) -> Option<String> {
        let here = match environment {
            Some(env) => format!("this engine's environment is `{env}`"),
            None => "this engine has no environment set".to_string(),
        };
        if !self.enabled {
            return Some(format!(
                "saga `{saga}` is disabled by its policy (policy.enabled: false; {here}); set `enabled: true` in its definition and apply it again"
            ));
        }
        if self.environments.is_empty() {
            return None;
        }
        let listed = self.environments.join(", ");
        match environment {
            Some(env) if self.environments.iter().any(|e| e == env) => None,
            Some(env) => Some(format!(
                "saga `{saga}` is disabled in environment `{env}` by its policy (policy.environments: [{listed}]); start it in an engine of one of those environments, or add `{env}` to the list"
            )),
            None => Some(format!(
                "saga `{saga}` may only start in the environments [{listed}] (policy.environments), and this engine has no environment set; set `environment` in the engine configuration (JETSAGA_ENVIRONMENT, --environment)"
            )),
        }
    }

    /// A short description for listings: `enabled`, `disabled` or
    /// `environments: a, b`.
    pub fn summary(&self) -> String {
        if !self.enabled {
            "disabled".into()
        } else if self.environments.is_empty() {
            "enabled".into()
        } else {
            format!("environments: {}", self.environments.join(", "))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSagaPolicy {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    environments: Option<Vec<String>>,
}

pub(super) fn build_saga_policy(
    saga: &Place,
    raw: Option<RawSagaPolicy>,
    errs: &mut Vec<DefinitionError>,
) -> SagaPolicy {
    let raw = raw.unwrap_or(RawSagaPolicy {
        enabled: None,
        environments: None,
    });
    if raw.environments.as_ref().is_some_and(Vec::is_empty) {
        errs.push(DefinitionError::InvalidSagaPolicy {
            place: Box::new(saga.field("policy.environments")),
            reason: "the list is empty; name at least one environment, or remove `environments` to allow every one".into(),
        });
    }
    SagaPolicy {
        enabled: raw.enabled.unwrap_or(true),
        environments: raw.environments.unwrap_or_default(),
    }
}

pub(super) fn check_saga_policy(
    saga: &Place,
    policy: &SagaPolicy,
    errs: &mut Vec<DefinitionError>,
) {
    let place = || Box::new(saga.field("policy.environments"));
    let mut seen = std::collections::HashSet::new();
    for env in &policy.environments {
        if let Err(reason) = validate_token(env) {
            errs.push(DefinitionError::InvalidSagaPolicy {
                place: place(),
                reason: format!("invalid environment `{}`: {reason}", Escaped(env)),
            });
        }
        if !seen.insert(env.as_str()) {
            errs.push(DefinitionError::InvalidSagaPolicy {
                place: place(),
                reason: format!("environment `{}` is listed twice", Escaped(env)),
            });
        }
    }
}
