//! [`TimerTable`] on sled.

use super::SledStore;
use super::codec::{decode, timer_ident, u64_of};
use crate::{StoreError, TimerRow, TimerTable};
use jetsaga_core::saga::state::{Millis, TimerKind};
use std::sync::atomic::Ordering;

impl TimerTable for SledStore {
    fn next_timer(&self) -> Result<Option<TimerRow>, StoreError> {
        match self.timers.first()? {
            Some((key, bytes)) => decode("timers", &key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<TimerRow>, StoreError> {
        // Every key whose due prefix is <= now sorts before (now + 1) ‖ ….
        let iter = match now.checked_add(1) {
            Some(end) => self.timers.range(..end.to_be_bytes()),
            None => self.timers.iter(),
        };
        let mut out = Vec::new();
        for entry in iter.take(limit) {
            let (key, bytes) = entry?;
            out.push(decode("timers", &key, &bytes)?);
        }
        Ok(out)
    }

    fn timers_len(&self) -> usize {
        self.timer_rows.load(Ordering::Relaxed)
    }

    fn timer_due(&self, saga_id: &str, timer: &TimerKind) -> Result<Option<Millis>, StoreError> {
        let ident = timer_ident(saga_id, timer)?;
        match self.timer_index.get(&ident)? {
            Some(due) => Ok(Some(u64_of("timer_index", &ident, &due)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;

    #[test]
    fn timers_are_ordered_by_due_and_removed_by_saga_and_kind() {
        let store = SledStore::temporary().unwrap();
        store
            .commit(Change {
                timers_add: vec![
                    timer("0002", TimerKind::SagaTimeout, 300),
                    timer("0001", step_timeout(0, 1), 100),
                    timer("0001", TimerKind::SagaTimeout, 200),
                    timer("0003", step_timeout(1, 2), 100),
                ],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 4);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0001", step_timeout(0, 1), 100))
        );
        assert_eq!(store.due_timers(99, 10).unwrap(), vec![]);
        assert_eq!(
            store.due_timers(200, 10).unwrap(),
            vec![
                timer("0001", step_timeout(0, 1), 100),
                timer("0003", step_timeout(1, 2), 100),
                timer("0001", TimerKind::SagaTimeout, 200),
            ]
        );
        assert_eq!(store.due_timers(u64::MAX, 2).unwrap().len(), 2);
        assert_eq!(store.due_timers(u64::MAX, 10).unwrap().len(), 4);

        // Disarm by (saga, kind); a missing one is no error; a different
        // attempt of the same step is a different timer.
        store
            .commit(Change {
                timers_remove: vec![
                    ("0001".into(), step_timeout(0, 1)),
                    ("0001".into(), step_timeout(0, 9)),
                    ("0009".into(), TimerKind::SagaTimeout),
                ],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 3);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0003", step_timeout(1, 2), 100))
        );

        // Arming an armed timer moves it.
        store
            .commit(Change {
                timers_add: vec![timer("0003", step_timeout(1, 2), 1_000)],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 3);
        assert_eq!(
            store.due_timers(999, 10).unwrap(),
            vec![
                timer("0001", TimerKind::SagaTimeout, 200),
                timer("0002", TimerKind::SagaTimeout, 300),
            ]
        );

        // Remove and add of the same timer in one change: removes first.
        store
            .commit(Change {
                timers_remove: vec![("0002".into(), TimerKind::SagaTimeout)],
                timers_add: vec![timer("0002", TimerKind::SagaTimeout, 50)],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 3);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0002", TimerKind::SagaTimeout, 50))
        );
        assert_eq!(store.timers.len(), 3);
        assert_eq!(store.timer_index.len(), 3);
    }
}
