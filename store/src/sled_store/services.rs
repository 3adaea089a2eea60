//! [`ServiceTable`] on sled.

use super::SledStore;
use super::codec::{decode, encode, held_key, u64_of};
use crate::{HeldTask, ServiceTable, StoreError};

impl ServiceTable for SledStore {
    fn held_tasks(&self) -> Result<Vec<(u64, HeldTask)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.admission.scan_prefix([b'h']) {
            let (key, bytes) = entry?;
            let seq = u64_of("admission", &key, &key[1..])?;
            out.push((seq, decode("admission", &key, &bytes)?));
        }
        Ok(out)
    }

    fn held_task(&self, seq: u64) -> Result<Option<HeldTask>, StoreError> {
        let key = held_key(seq);
        match self.admission.get(&key)? {
            Some(bytes) => decode("admission", &key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn breakers(&self) -> Result<Vec<(String, jetsaga_core::admission::Breaker)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.admission.scan_prefix([b'b']) {
            let (key, bytes) = entry?;
            let service = String::from_utf8_lossy(&key[1..]).into_owned();
            out.push((service, decode("admission", &key, &bytes)?));
        }
        Ok(out)
    }

    fn put_service_policy(
        &self,
        policy: &jetsaga_core::saga::definition::ServicePolicy,
    ) -> Result<bool, StoreError> {
        let key = policy.service.as_bytes();
        let value = encode("service_policies", key, policy)?;
        let old = self.service_policies.insert(key, value.as_slice())?;
        Ok(old.as_deref() != Some(value.as_slice()))
    }

    fn service_policies(
        &self,
    ) -> Result<Vec<jetsaga_core::saga::definition::ServicePolicy>, StoreError> {
        let mut out = Vec::new();
        for entry in self.service_policies.iter() {
            let (key, bytes) = entry?;
            out.push(decode("service_policies", &key, &bytes)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;

    #[test]
    fn held_tasks_breakers_and_service_policies_survive_a_reopen() {
        use crate::HeldTask;
        use jetsaga_core::admission::{Breaker, BreakerState, ForcedState};
        use jetsaga_core::saga::definition::{BreakerConfig, ServicePolicy};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let held = |n: u32| HeldTask {
            service: "pay".into(),
            saga_id: format!("000{n}"),
            step: 0,
            kind: TaskKind::Action,
            attempt: n,
            timeout_ms: 1000,
            message: msg(n),
        };
        // A breaker with history (forced open), so that it survives a reopen too.
        let mut open = Breaker::from(BreakerState::Closed { failures: 1 });
        open.force(ForcedState::Open, 5);
        let policy = ServicePolicy {
            service: "pay".into(),
            max_in_flight: Some(2),
            circuit_breaker: Some(BreakerConfig {
                failure_threshold: 3,
                success_threshold: 1,
                open_timeout: Duration::from_secs(1),
            }),
        };
        {
            let store = SledStore::open(&path).unwrap();
            // Held rows come and go with the saga change that holds them.
            store
                .commit(Change {
                    saga: Some(saga("0001", "order", running()).into()),
                    held_add: vec![(1, held(1)), (2, held(2)), (3, held(3))],
                    breakers: vec![
                        ("pay".into(), Some(open.clone())),
                        ("gone".into(), Some(Breaker::default())),
                    ],
                    ..Default::default()
                })
                .unwrap();
            store
                .commit(Change {
                    outbox: vec![held(2).message],
                    held_remove: vec![2],
                    breakers: vec![("gone".into(), None)],
                    ..Default::default()
                })
                .unwrap();
            assert!(store.put_service_policy(&policy).unwrap());
            assert!(!store.put_service_policy(&policy).unwrap(), "unchanged");
            futures::executor::block_on(store.flush()).unwrap();
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.held_tasks().unwrap(),
            vec![(1, held(1)), (3, held(3))],
            "in hold order"
        );
        assert_eq!(store.held_task(3).unwrap(), Some(held(3)));
        assert_eq!(store.held_task(2).unwrap(), None);
        assert_eq!(store.breakers().unwrap(), vec![("pay".to_string(), open)]);
        assert_eq!(store.service_policies().unwrap(), vec![policy]);
        assert_eq!(store.outbox_len(), 1);
    }
}
