//! The states a saga can be in, without their data: the one list of them.

use serde::{Deserialize, Serialize};

/// The states a saga can be in, without their data: the one list of them.
/// On the wire (a listing's `state`, a list request's filter) each is its
/// name: `pending`, `running`, ..., `partially_compensated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SagaState {
    /// Accepted, not started yet.
    Pending,
    /// Steps are being run.
    Running,
    /// Completed steps are being compensated.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Rolled back.
    Compensated,
    /// Failed with nothing to compensate.
    Failed,
    /// Rolled back only in part; a person must act.
    PartiallyCompensated,
    /// Cancelled without compensation.
    Cancelled,
}

impl SagaState {
    /// Every state, in lifecycle order.
    pub const ALL: [SagaState; 8] = [
        SagaState::Pending,
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Compensated,
        SagaState::Failed,
        SagaState::PartiallyCompensated,
        SagaState::Cancelled,
    ];

    /// Stable lowercase name (`running`, `partially_compensated`, ...), as used
    /// by the CLI, the API, the metrics and the store's state index.
    pub const fn name(self) -> &'static str {
        match self {
            SagaState::Pending => "pending",
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Failed => "failed",
            SagaState::PartiallyCompensated => "partially_compensated",
            SagaState::Cancelled => "cancelled",
        }
    }

    /// The state named `name`, if there is one.
    pub fn from_name(name: &str) -> Option<SagaState> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Every name, comma-separated, for messages that list the choices.
    pub fn names() -> String {
        Self::ALL.map(SagaState::name).join(", ")
    }

    /// Whether nothing will change any more.
    pub const fn is_terminal(self) -> bool {
        !matches!(
            self,
            SagaState::Pending | SagaState::Running | SagaState::Compensating
        )
    }

    /// The terminal states, in lifecycle order.
    pub fn terminal() -> impl Iterator<Item = SagaState> {
        Self::ALL.into_iter().filter(|s| s.is_terminal())
    }
}

impl std::fmt::Display for SagaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SagaState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaState::from_name(s).ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A name that is no [`SagaState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownState(pub String);

impl std::fmt::Display for UnknownState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown state {:?}; use one of {}",
            self.0,
            SagaState::names()
        )
    }
}

impl std::error::Error for UnknownState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_wire_form() {
        for state in SagaState::ALL {
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.name())
            );
            assert_eq!(SagaState::from_name(state.name()), Some(state));
            assert_eq!(state.name().parse::<SagaState>(), Ok(state));
        }
        let e = "bogus".parse::<SagaState>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown state \"bogus\"; use one of pending, running")
        );
        assert_eq!(SagaState::terminal().count(), 5);
    }
}
