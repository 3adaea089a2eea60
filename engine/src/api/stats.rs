//! Saga statistics ([`Api::stats`](super::Api::stats)): one pass over the
//! stored sagas, counted per definition and overall.

use jetsaga_core::saga::state::{Millis, Saga, SagaStatus};
use jetsaga_protocol::api::{DefinitionStats, Durations, SagaState, SagaStats, Stats};
use std::collections::BTreeMap;

/// Counts of one set of sagas, while they are read.
#[derive(Default)]
struct Tally {
    states: BTreeMap<&'static str, u64>,
    completed: u64,
    compensated: u64,
    durations: Vec<Millis>,
}

impl Tally {
    fn add(&mut self, saga: &Saga) {
        *self.states.entry(saga.status.name()).or_default() += 1;
        match saga.status {
            SagaStatus::Completed => self.completed += 1,
            SagaStatus::Compensated { .. } | SagaStatus::PartiallyCompensated { .. } => {
                self.compensated += 1
            }
            _ => {}
        }
        if saga.status.is_terminal() {
            let end = saga.finished_at.unwrap_or(saga.updated_at);
            self.durations.push(end.saturating_sub(saga.created_at));
        }
    }

    fn stats(mut self) -> Stats {
        let total = self.states.values().sum();
        let finished = self.durations.len() as u64;
        let rate = |n: u64| (finished > 0).then(|| n as f64 / finished as f64);
        self.durations.sort_unstable();
        Stats {
            total,
            states: SagaState::ALL
                .into_iter()
                .map(|s| {
                    let name = s.name();
                    (
                        name.to_string(),
                        self.states.get(name).copied().unwrap_or(0),
                    )
                })
                .collect(),
            finished,
            success_rate: rate(self.completed),
            compensation_rate: rate(self.compensated),
            duration: durations(&self.durations),
        }
    }
}

/// Mean, nearest-rank p50 and p95, and max of sorted `d`.
fn durations(d: &[Millis]) -> Option<Durations> {
    let max = *d.last()?;
    let rank = |p: usize| d[(d.len() * p).div_ceil(100).max(1) - 1];
    let sum: u128 = d.iter().map(|&x| u128::from(x)).sum();
    Some(Durations {
        avg: u64::try_from(sum / d.len() as u128).unwrap_or(u64::MAX),
        p50: rank(50),
        p95: rank(95),
        max,
    })
}

/// Statistics being gathered, saga by saga: what it keeps of each is its
/// state and duration, so sagas can be read a page at a time and dropped.
#[derive(Default)]
pub(super) struct Summary {
    overall: Tally,
    per: BTreeMap<String, Tally>,
}

impl Summary {
    /// Counts `saga`.
    pub(super) fn add(&mut self, saga: &Saga) {
        self.overall.add(saga);
        match self.per.get_mut(&saga.name) {
            Some(t) => t.add(saga),
            None => self.per.entry(saga.name.clone()).or_default().add(saga),
        }
    }

    /// The statistics of the sagas counted, per definition (by name) and
    /// overall.
    pub(super) fn finish(self, created_after: Option<Millis>) -> SagaStats {
        SagaStats {
            created_after,
            overall: self.overall.stats(),
            definitions: self
                .per
                .into_iter()
                .map(|(name, t)| DefinitionStats {
                    name,
                    stats: t.stats(),
                })
                .collect(),
        }
    }
}

/// Statistics of `sagas`, per definition (by name) and overall.
#[cfg(test)]
fn summarize<'a>(
    sagas: impl IntoIterator<Item = &'a Saga>,
    created_after: Option<Millis>,
) -> SagaStats {
    let mut summary = Summary::default();
    for saga in sagas {
        summary.add(saga);
    }
    summary.finish(created_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(name: &str, status: SagaStatus, took: Millis) -> Saga {
        Saga {
            id: String::new(),
            name: name.into(),
            definition_version: 1,
            input: serde_json::Value::Null,
            idempotency_key: None,
            generation: 0,
            finished_at: status.is_terminal().then_some(1_000 + took),
            status,
            steps: Vec::new(),
            created_at: 1_000,
            updated_at: 1_000 + took,
            trace_parent: None,
            event_seq: 0,
        }
    }

    #[test]
    fn counts_rates_and_durations_per_definition_and_overall() {
        let mut sagas: Vec<Saga> = (1..=18)
            .map(|i| saga("order", SagaStatus::Completed, i * 10))
            .collect();
        sagas.push(saga(
            "order",
            SagaStatus::Compensated { reason: "r".into() },
            1_000,
        ));
        sagas.push(saga("order", SagaStatus::Failed { reason: "r".into() }, 5));
        sagas.push(saga("order", SagaStatus::Running, 0));
        sagas.push(saga(
            "ship",
            SagaStatus::PartiallyCompensated {
                reason: "r".into(),
                stuck_steps: vec![],
            },
            40,
        ));
        let stats = summarize(&sagas, Some(7));
        assert_eq!(stats.created_after, Some(7));
        let order = &stats.definitions[0];
        assert_eq!(order.name, "order");
        assert_eq!(order.stats.total, 21);
        assert_eq!(order.stats.finished, 20);
        assert_eq!(order.stats.states["completed"], 18);
        assert_eq!(order.stats.states["running"], 1);
        assert_eq!(order.stats.states["pending"], 0, "every state is listed");
        assert_eq!(order.stats.states.len(), SagaState::ALL.len());
        assert_eq!(order.stats.success_rate, Some(0.9));
        assert_eq!(order.stats.compensation_rate, Some(0.05));
        // 5, 10, 20, ..., 180, 1000: ranks 10 and 19 of 20.
        let d = order.stats.duration.clone().unwrap();
        assert_eq!((d.p50, d.p95, d.max), (90, 180, 1_000));
        assert_eq!(
            d.avg,
            (5 + (1..=18).map(|i| i * 10).sum::<u64>() + 1_000) / 20
        );
        let ship = &stats.definitions[1];
        assert_eq!(ship.stats.compensation_rate, Some(1.0));
        assert_eq!(stats.overall.total, 22);
        assert_eq!(stats.overall.finished, 21);
        assert_eq!(stats.overall.states["partially_compensated"], 1);
    }

    #[test]
    fn nothing_finished_has_no_rates_or_durations() {
        let stats = summarize(&[saga("a", SagaStatus::Running, 0)], None);
        assert_eq!(stats.overall.total, 1);
        assert_eq!(stats.overall.success_rate, None);
        assert_eq!(stats.overall.duration, None);
        let empty = summarize(&[], None);
        assert_eq!(empty.overall.total, 0);
        assert!(empty.definitions.is_empty());
    }
}
