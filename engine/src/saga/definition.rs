//! Saga definitions: the validated, self-contained shape the engine runs.
//!
//! Users write definition files in YAML or JSON (see `parse` for the file
//! shape); validation turns them into [`SagaDefinition`]s in which every retry
//! policy is resolved inline and every duration is a [`Duration`], so a stored
//! definition version never depends on anything else.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A validated saga definition, one version of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaDefinition {
    /// Saga name (a subject token).
    pub name: String,
    /// Version, from 1; assigned by the store when the definition is applied.
    #[serde(default)]
    pub version: u32,
    /// Whole-saga timeout: when it passes, the saga compensates.
    #[serde(with = "humantime_millis::option")]
    pub timeout: Option<Duration>,
    /// Steps in file order. Indexes into this vector are step indexes.
    pub steps: Vec<StepDefinition>,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDefinition {
    /// Step id, unique within the saga (a subject token).
    pub id: String,
    /// Service, that is the work queue the step's tasks go to.
    pub service: String,
    /// Operation the worker runs for the action.
    pub operation: String,
    /// Operation the worker runs to undo the action, if any.
    pub compensation: Option<String>,
    /// Time one attempt may take before it counts as timed out.
    #[serde(with = "humantime_millis")]
    pub timeout: Duration,
    /// Retry policy of both the action and the compensation.
    pub retry: RetryPolicy,
    /// Indexes of the steps this one depends on (into `SagaDefinition::steps`).
    pub depends_on: Vec<usize>,
}

/// How often and how far apart attempts are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, including the first; at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(with = "humantime_millis")]
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    #[serde(with = "humantime_millis")]
    pub max_delay: Duration,
    /// Factor by which the delay grows per attempt; at least 1.
    pub backoff_factor: f64,
    /// Relative jitter in `[0, 1]`: a delay `d` becomes a value in `[d(1-j), d(1+j)]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            backoff_factor: 2.0,
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `next_attempt` (2 for the first retry),
    /// given `sample` drawn uniformly from `[0, 1)`. Pure: randomness comes in.
    pub fn delay(&self, next_attempt: u32, sample: f64) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.backoff_factor.powi(exp);
        let base = base.min(self.max_delay.as_secs_f64());
        let spread = (sample.clamp(0.0, 1.0) * 2.0 - 1.0) * self.jitter;
        let secs = (base * (1.0 + spread)).clamp(0.0, self.max_delay.as_secs_f64());
        Duration::from_secs_f64(secs)
    }
}

impl SagaDefinition {
    /// Index of the step with id `id`.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// Serde helpers storing durations as integer milliseconds.
pub(crate) mod humantime_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&(d.as_millis() as u64)),
                None => s.serialize_none(),
            }
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
        }
    }
}
