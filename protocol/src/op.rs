//! The operations of the engine's NATS request API, each served on the
//! subject `<prefix>.api.<op>` ([`crate::Subjects::api`]).

use std::fmt;
use std::str::FromStr;

/// An operation of the request API, named by the end of its subject
/// (docs/PROTOCOL.md, "The request API").
///
/// ```
/// use jetsaga_protocol::{Op, Subjects};
/// assert_eq!("saga.start".parse(), Ok(Op::SagaStart));
/// assert_eq!(Subjects::new("jetsaga").api(Op::SagaStart), "jetsaga.api.saga.start");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `saga.start`: a [`crate::StartRequest`] → [`crate::StartReply`].
    SagaStart,
    /// `saga.get`: `{"id"}` or `{"idempotency_key"}` → the saga's detail.
    SagaGet,
    /// `saga.list`: a filter → the saga summaries.
    SagaList,
    /// `saga.cancel`: `{"id", "compensate"?}` → the saga's detail.
    SagaCancel,
    /// `saga.retry`: `{"id", "compensation_only"?}` → the saga's detail.
    SagaRetry,
    /// `saga.delete`: `{"id"}` → `{"id"}` (the deleted saga).
    SagaDelete,
    /// `saga.stats`: `{"saga"?, "since"?}` → counts, rates and durations.
    SagaStats,
    /// `def.apply`: definitions and service policies → the applied definitions.
    DefApply,
    /// `def.list`: `{"after"?, "limit"?}` → a page of the current definitions, by name.
    DefList,
    /// `breaker.list`: `{}` → the status of every service with a policy.
    BreakerList,
    /// `breaker.get`: `{"service"}` → its status.
    BreakerGet,
    /// `breaker.reset`: `{"service"}` → its status (closed, held tasks released).
    BreakerReset,
    /// `cluster.status`: `{}` → the engines and partitions of the installation.
    ClusterStatus,
    /// `cluster.step-down`: `{"partition"}` → the engine that released it.
    ClusterStepDown,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 14] = [
        Op::SagaStart,
        Op::SagaGet,
        Op::SagaList,
        Op::SagaCancel,
        Op::SagaRetry,
        Op::SagaDelete,
        Op::SagaStats,
        Op::DefApply,
        Op::DefList,
        Op::BreakerList,
        Op::BreakerGet,
        Op::BreakerReset,
        Op::ClusterStatus,
        Op::ClusterStepDown,
    ];

    /// The subject suffix of the operation.
    pub const fn name(self) -> &'static str {
        match self {
            Op::SagaStart => "saga.start",
            Op::SagaGet => "saga.get",
            Op::SagaList => "saga.list",
            Op::SagaCancel => "saga.cancel",
            Op::SagaRetry => "saga.retry",
            Op::SagaDelete => "saga.delete",
            Op::SagaStats => "saga.stats",
            Op::DefApply => "def.apply",
            Op::DefList => "def.list",
            Op::BreakerList => "breaker.list",
            Op::BreakerGet => "breaker.get",
            Op::BreakerReset => "breaker.reset",
            Op::ClusterStatus => "cluster.status",
            Op::ClusterStepDown => "cluster.step-down",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Op {
    /// The name, which is no operation.
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Op::ALL
            .into_iter()
            .find(|op| op.name() == s)
            .ok_or_else(|| s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for op in Op::ALL {
            assert_eq!(op.name().parse(), Ok(op));
        }
        assert_eq!("saga.status".parse::<Op>(), Err("saga.status".to_string()));
    }
}
