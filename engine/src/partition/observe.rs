//! The one observer of transitions: each transition's diff, computed once
//! ([`Transition`]), goes to everything that keeps an index of the sagas
//! beside the store.

use super::{Partition, now_ms};
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::Saga;
use jetsaga_core::saga::transition::{Before, Transition};

impl Partition {
    /// Feeds the transition of `saga` from `before` to the saga metrics,
    /// the concurrency limits and service admission. Returns the start
    /// queue row it takes out, to remove in the same transaction.
    pub(super) fn observe(
        &mut self,
        def: &SagaDefinition,
        before: Before,
        saga: &Saga,
    ) -> Option<u64> {
        let now = now_ms();
        let t: Transition<'_> = before.diff(saga);
        self.metrics.observe(def, &t);
        self.services.observe(&t, now);
        let observed = self.limits.observe(&t, now);
        if let Some(waited) = observed.waited {
            crate::metrics::queue_waited(&saga.name, waited);
        }
        observed.dequeued
    }

    /// Publishes the gauges of the limits and of the services that changed.
    pub(super) fn publish_gauges(&mut self) {
        crate::metrics::publish_limits(self.limits.take_gauges(), self.metrics.partition());
        crate::metrics::publish_services(self.services.take_report(), self.metrics.partition());
        crate::metrics::publish_step_timeouts(self.timeouts.len(), self.metrics.partition());
    }
}
