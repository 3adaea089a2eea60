//! Retention of finished sagas: terminal sagas are deleted once they have
//! been finished for longer than the configured `retention`, so the store
//! does not grow without bound.
//!
//! Pruning goes through the partition, the single writer: [`run`] is a
//! periodic task that sends [`Command::Prune`](crate::partition::Command::Prune)
//! with a cut-off time and a batch size, the partition calls [`prune`] between
//! other commands and makes the deletions durable with its next group commit.
//! A batch reads only the rows it deletes ([`SagaTable::finished_before`] walks an
//! index by finish time), and the task sends the next batch only after the
//! previous one was answered, so pruning a large backlog never holds the
//! partition for long.
//!
//! A pruned saga is deleted like `saga delete` deletes it
//! ([`GroupCommit::delete_saga`]): its record with its step and attempt history,
//! its index entries, its timers and the binding of its idempotency key. A
//! start with the same key after that starts a new saga: deduplication of
//! starts holds within the retention.
//!
//! ```
//! use jetsaga_engine::retention::Retention;
//! use std::time::Duration;
//!
//! assert_eq!("7d".parse::<Retention>()?, Retention::For(Duration::from_secs(7 * 86_400)));
//! assert_eq!("off".parse::<Retention>()?, Retention::Forever);
//! assert_eq!("0".parse::<Retention>()?, Retention::Forever);
//! assert_eq!(Retention::For(Duration::from_secs(90)).to_string(), "1m 30s");
//! # Ok::<(), String>(())
//! ```

use crate::partition::{PartitionHandle, now_ms};
use jetsaga_core::saga::state::{Millis, Saga};
use jetsaga_store::{GroupCommit, SagaTable, StoreError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long finished sagas are kept by default: a week.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Most sagas one [`prune`] call (one partition command) deletes.
pub const PRUNE_BATCH: usize = 128;

/// How long finished sagas are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Never deleted by the engine (`off`, or `0`).
    Forever,
    /// Deleted once finished for longer than this.
    For(Duration),
}

impl Default for Retention {
    fn default() -> Self {
        Retention::For(DEFAULT_RETENTION)
    }
}

impl Retention {
    /// The retention period, `None` when sagas are kept forever.
    pub fn period(self) -> Option<Duration> {
        match self {
            Retention::Forever => None,
            Retention::For(d) => Some(d),
        }
    }
}

impl FromStr for Retention {
    type Err = String;

    /// `off` (or `0`) keeps finished sagas forever; otherwise a duration
    /// such as `7d`, `12h`, `30m`, `10s`.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") || text == "0" {
            return Ok(Retention::Forever);
        }
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => Ok(Retention::Forever),
            Ok(d) => Ok(Retention::For(d)),
            Err(e) => Err(format!(
                "{text:?} is not a retention ({e}); write a duration such as 7d, 12h or 10s, or `off` to keep finished sagas forever"
            )),
        }
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Forever => f.write_str("off"),
            Retention::For(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Serialize for Retention {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A file may say `retention: 0` or `retention: off` (YAML reads the
        // latter as a string, some YAML 1.1 readers as `false`).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
            Bool(bool),
        }
        match Raw::deserialize(d)? {
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Raw::Number(0) | Raw::Bool(false) => Ok(Retention::Forever),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "{n} is not a retention; write it with a unit, such as {n}s or {n}d"
            ))),
            Raw::Bool(true) => Err(serde::de::Error::custom(
                "true is not a retention; write a duration such as 7d, or `off`",
            )),
        }
    }
}

/// The finish time at or before which a saga is pruned at `now`.
pub fn cutoff(now: Millis, retention: Duration) -> Millis {
    now.saturating_sub(retention.as_millis().try_into().unwrap_or(Millis::MAX))
}

/// Deletes up to `limit` terminal sagas that finished at or before `before`,
/// earliest finished first, each in its own transaction (not yet durable:
/// the caller flushes). Returns the deleted sagas.
///
/// Only for the partition, the single writer. A saga the index names that
/// is no longer terminal is left alone (it cannot happen: the index follows
/// every transition in the same transaction).
pub fn prune<S: SagaTable + GroupCommit + ?Sized>(
    store: &S,
    before: Millis,
    limit: usize,
) -> Result<Vec<Saga>, StoreError> {
    let mut pruned = Vec::new();
    for id in store.finished_before(before, limit)? {
        match store.saga(&id)? {
            Some(saga) if saga.status.is_terminal() => {}
            _ => continue,
        }
        if let Some(saga) = store.delete_saga(&id)? {
            tracing::debug!(saga_id = %saga.id, saga = %saga.name, state = saga.status.name(), "saga pruned");
            pruned.push(saga);
        }
    }
    if !pruned.is_empty() {
        metrics::counter!(crate::metrics::PRUNED_SAGAS).increment(pruned.len() as u64);
    }
    Ok(pruned)
}

/// How often [`run`] looks for sagas to prune: a tenth of the retention,
/// between 1 s and 1 min. A saga is deleted at most that long after its
/// retention ran out.
pub fn sweep_every(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Prunes sagas finished longer than `retention` ago, every
/// [`sweep_every`], in batches of [`PRUNE_BATCH`] sent one after the other
/// to the partition, until `shutdown` is cancelled or the partition stops.
pub async fn run(handle: PartitionHandle, retention: Duration, shutdown: CancellationToken) {
    let every = sweep_every(retention);
    tracing::info!(retention = %humantime::format_duration(retention), every = %humantime::format_duration(every), "retention of finished sagas");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let before = cutoff(now_ms(), retention);
        let mut total = 0usize;
        loop {
            let pruned = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = handle.prune(before, PRUNE_BATCH) => r,
            };
            match pruned {
                Ok(n) => {
                    total += n;
                    if n < PRUNE_BATCH {
                        break;
                    }
                }
                // The partition stopped: the engine is going down.
                Err(e) => {
                    tracing::debug!(error = %e.message, "retention stops");
                    return;
                }
            }
        }
        if total > 0 {
            tracing::info!(pruned = total, "pruned finished sagas past their retention");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsaga_core::saga::state::{SagaStatus, TimerKind};
    use jetsaga_store::{Change, IdempotencyTable, SagaFilter, SledStore, TimerRow, TimerTable};

    fn saga(id: &str, status: SagaStatus, finished_at: Option<Millis>) -> Saga {
        Saga {
            id: id.to_owned(),
            name: "order".to_owned(),
            definition_version: 1,
            input: serde_json::json!({ "order": id }),
            idempotency_key: Some(format!("key-{id}")),
            generation: 0,
            status,
            steps: vec![],
            created_at: 1_000,
            updated_at: finished_at.unwrap_or(1_000),
            finished_at,
            trace_parent: None,
            event_seq: 0,
        }
    }

    fn put(store: &SledStore, s: Saga, timers: Vec<TimerRow>) {
        let key = s.idempotency_key.clone();
        store
            .commit(Change {
                saga: Some(s),
                idempotency_key: key,
                timers_add: timers,
                ..Change::default()
            })
            .unwrap();
    }

    fn completed(id: &str, at: Millis) -> Saga {
        saga(id, SagaStatus::Completed, Some(at))
    }

    fn ids(sagas: &[Saga]) -> Vec<&str> {
        sagas.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn retention_parses_durations_and_off() {
        let parse = |t: &str| t.parse::<Retention>();
        assert_eq!(parse("10s"), Ok(Retention::For(Duration::from_secs(10))));
        assert_eq!(parse(" 2h "), Ok(Retention::For(Duration::from_secs(7200))));
        assert_eq!(parse("OFF"), Ok(Retention::Forever));
        assert_eq!(parse("0s"), Ok(Retention::Forever));
        let err = parse("soon").unwrap_err();
        assert!(err.contains("7d") && err.contains("off"), "{err}");
        assert_eq!(Retention::default().to_string(), "7days");
        assert_eq!(Retention::Forever.period(), None);
        // Files: strings, 0 and YAML 1.1's `off` as false.
        let json = |t: &str| serde_json::from_str::<Retention>(t);
        assert_eq!(json("\"7d\"").unwrap(), Retention::default());
        assert_eq!(json("0").unwrap(), Retention::Forever);
        assert_eq!(json("false").unwrap(), Retention::Forever);
        assert!(json("30").unwrap_err().to_string().contains("30s"));
        assert_eq!(
            serde_json::to_string(&Retention::For(Duration::from_secs(10))).unwrap(),
            "\"10s\""
        );
    }

    #[test]
    fn cutoff_and_sweep_interval() {
        assert_eq!(cutoff(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(cutoff(1_000, Duration::from_secs(3)), 0);
        assert_eq!(sweep_every(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(
            sweep_every(Duration::from_secs(100)),
            Duration::from_secs(10)
        );
        assert_eq!(sweep_every(DEFAULT_RETENTION), Duration::from_secs(60));
    }

    #[test]
    fn the_finish_index_is_written_with_the_terminal_transition_and_follows_it() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0001", SagaStatus::Running, None), vec![]);
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            Vec::<String>::new()
        );

        put(&store, completed("0001", 5_000), vec![]);
        assert_eq!(store.finished_before(5_000, 10).unwrap(), vec!["0001"]);
        assert_eq!(
            store.finished_before(4_999, 10).unwrap(),
            Vec::<String>::new()
        );

        // A retry takes it out of the terminal state, and out of the index.
        put(&store, saga("0001", SagaStatus::Running, None), vec![]);
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            Vec::<String>::new()
        );
        // Finishing again indexes the new finish time only.
        put(
            &store,
            saga(
                "0001",
                SagaStatus::Failed { reason: "x".into() },
                Some(9_000),
            ),
            vec![],
        );
        assert_eq!(
            store.finished_before(8_999, 10).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(store.finished_before(9_000, 10).unwrap(), vec!["0001"]);
        assert_eq!(store.sagas_len(), 1);
    }

    #[test]
    fn prune_removes_old_finished_sagas_with_everything_they_own() {
        let store = SledStore::temporary().unwrap();
        let timer = |id: &str| TimerRow {
            saga_id: id.to_owned(),
            timer: TimerKind::SagaTimeout,
            due: 99_000,
        };
        // Old and finished, with a leftover timer: pruned.
        put(&store, completed("0001", 1_000), vec![timer("0001")]);
        put(
            &store,
            saga(
                "0002",
                SagaStatus::Cancelled { reason: "x".into() },
                Some(2_000),
            ),
            vec![],
        );
        // Unfinished (however old): kept.
        put(
            &store,
            saga("0003", SagaStatus::Running, None),
            vec![timer("0003")],
        );
        // Finished, but young: kept.
        put(&store, completed("0004", 8_000), vec![]);
        assert_eq!(store.sagas_len(), 4);
        assert_eq!(store.timers_len(), 2);

        let pruned = prune(&store, 5_000, 10).unwrap();
        assert_eq!(ids(&pruned), vec!["0001", "0002"]);
        for id in ["0001", "0002"] {
            assert_eq!(store.saga(id).unwrap(), None, "{id}");
            assert_eq!(
                store.saga_by_idempotency_key(&format!("key-{id}")).unwrap(),
                None,
                "the key of {id} is free"
            );
        }
        assert_eq!(store.timers_len(), 1);
        assert_eq!(store.next_timer().unwrap(), Some(timer("0003")));
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            vec!["0004"]
        );
        let all = store.list_sagas(&SagaFilter::default()).unwrap();
        assert_eq!(ids(&all), vec!["0004", "0003"]);
        let completed_ones = SagaFilter {
            state: Some("completed".into()),
            ..SagaFilter::default()
        };
        assert_eq!(
            ids(&store.list_sagas(&completed_ones).unwrap()),
            vec!["0004"]
        );
        assert_eq!(
            store
                .saga_by_idempotency_key("key-0003")
                .unwrap()
                .as_deref(),
            Some("0003")
        );
        assert_eq!(store.sagas_len(), 2);
        // Nothing more is old enough.
        assert!(prune(&store, 5_000, 10).unwrap().is_empty());
    }

    #[test]
    fn prune_batches_are_bounded_and_go_oldest_first() {
        let store = SledStore::temporary().unwrap();
        // Created in one order, finished in another.
        for (i, at) in [(1, 3_000), (2, 1_000), (3, 2_000), (4, 5_000), (5, 4_000)] {
            put(&store, completed(&format!("000{i}"), at), vec![]);
        }
        assert_eq!(
            ids(&prune(&store, 10_000, 2).unwrap()),
            vec!["0002", "0003"]
        );
        assert_eq!(
            ids(&prune(&store, 10_000, 2).unwrap()),
            vec!["0001", "0005"]
        );
        assert_eq!(ids(&prune(&store, 10_000, 2).unwrap()), vec!["0004"]);
        assert!(prune(&store, 10_000, 2).unwrap().is_empty());
        assert_eq!(store.sagas_len(), 0);
    }

    #[test]
    fn the_finish_index_is_backfilled_once_for_older_stores() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            put(&store, completed("0001", 1_000), vec![]);
            put(&store, saga("0002", SagaStatus::Running, None), vec![]);
            futures::executor::block_on(store.flush()).unwrap();
        }
        // Make it look like a store written before the index existed.
        {
            // sled releases the directory's lock a moment after the drop.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let db = loop {
                match sled::open(dir.path()) {
                    Ok(db) => break db,
                    Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            db.drop_tree("finished").unwrap();
            db.remove("jetsaga.store.finished_index").unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.finished_before(Millis::MAX, 10).unwrap(),
            vec!["0001"]
        );
        assert_eq!(store.sagas_len(), 2);
        assert_eq!(ids(&prune(&store, 1_000, 10).unwrap()), vec!["0001"]);
    }
}
