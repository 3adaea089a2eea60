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
use jetsaga_core::saga::state::Millis;
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
}
