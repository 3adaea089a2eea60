//! Property test: timers and outbox against a plain in-memory model.

use crate::sled_store::test_support::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Arm { saga: u8, attempt: u32, due: u64 },
    Disarm { saga: u8, attempt: u32 },
    Publish(u8),
    Ack(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3u8, 0..3u32, 0..20u64).prop_map(|(saga, attempt, due)| Op::Arm { saga, attempt, due }),
        (0..3u8, 0..3u32).prop_map(|(saga, attempt)| Op::Disarm { saga, attempt }),
        (0..4u8).prop_map(Op::Publish),
        (0..6usize).prop_map(Op::Ack),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Timers and outbox agree with a plain in-memory model after any
    /// sequence of commits, including the in-memory row counts.
    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let store = SledStore::temporary().unwrap();
        let mut timers: BTreeMap<(String, TimerKind), u64> = BTreeMap::new();
        let mut outbox: Vec<OutboxMessage> = Vec::new();
        let mut published = 0u32;
        for op in ops {
            match op {
                Op::Arm { saga, attempt, due } => {
                    let row = timer(&format!("s{saga}"), step_timeout(0, attempt), due);
                    timers.insert((row.saga_id.clone(), row.timer.clone()), due);
                    store.commit(Change { timers_add: vec![row], ..Change::default() }).unwrap();
                }
                Op::Disarm { saga, attempt } => {
                    let key = (format!("s{saga}"), step_timeout(0, attempt));
                    timers.remove(&key);
                    store.commit(Change { timers_remove: vec![key], ..Change::default() }).unwrap();
                }
                Op::Publish(n) => {
                    let msgs: Vec<_> = (0..u32::from(n)).map(|i| msg(published + i)).collect();
                    published += u32::from(n);
                    outbox.extend(msgs.iter().cloned());
                    store.commit(Change { outbox: msgs, ..Change::default() }).unwrap();
                }
                Op::Ack(n) => {
                    let rows = store.outbox(u64::MAX, n).unwrap();
                    let seqs: Vec<u64> = rows.iter().map(|(s, _)| *s).collect();
                    store.outbox_remove(&seqs).unwrap();
                    outbox.drain(..n.min(outbox.len()));
                }
            }
            prop_assert_eq!(store.timers_len(), timers.len());
            prop_assert_eq!(store.outbox_len(), outbox.len());
        }
        let mut expected: Vec<TimerRow> = timers
            .into_iter()
            .map(|((saga, kind), due)| timer(&saga, kind, due))
            .collect();
        expected.sort_by(|a, b| {
            (a.due, &a.saga_id, serde_json::to_vec(&a.timer).unwrap())
                .cmp(&(b.due, &b.saga_id, serde_json::to_vec(&b.timer).unwrap()))
        });
        prop_assert_eq!(store.due_timers(u64::MAX, usize::MAX).unwrap(), expected.clone());
        prop_assert_eq!(store.next_timer().unwrap(), expected.first().cloned());
        let due_10: Vec<_> = expected.iter().filter(|t| t.due <= 10).cloned().collect();
        prop_assert_eq!(store.due_timers(10, usize::MAX).unwrap(), due_10);
        let rows: Vec<_> = store.outbox(u64::MAX, usize::MAX).unwrap().into_iter().map(|(_, m)| m).collect();
        prop_assert_eq!(rows, outbox);
        prop_assert_eq!(store.timers.len(), store.timer_index.len());
    }
}
