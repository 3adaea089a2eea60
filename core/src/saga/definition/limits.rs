//! Size limits of a definition: steps per saga, fan-out, file size.
//!
//! The partition rewrites a saga's whole record on every transition and
//! starts every ready step at once, so one very large definition costs every
//! other saga of the engine. These limits refuse such a definition when it
//! is validated (`E-DEF-TOO-LARGE`); their defaults are far above what real
//! sagas use.

use serde::{Deserialize, Serialize};

use super::error::{DefinitionError, Place};

/// Size limits a definition must keep to; the engine's configuration sets
/// them (`max_definition_steps`, `max_definition_fan_out`,
/// `max_definition_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionLimits {
    /// Most steps in one saga.
    pub max_steps: usize,
    /// Most steps that depend on one step, and most steps without
    /// dependencies: the steps one transition can start at once.
    pub max_fan_out: usize,
    /// Largest definition file, in bytes.
    pub max_file_bytes: usize,
}

/// Default of [`DefinitionLimits::max_steps`].
pub const DEFAULT_MAX_STEPS: usize = 200;
/// Default of [`DefinitionLimits::max_fan_out`].
pub const DEFAULT_MAX_FAN_OUT: usize = 100;
/// Default of [`DefinitionLimits::max_file_bytes`]: 1 MiB.
pub const DEFAULT_MAX_FILE_BYTES: usize = 1024 * 1024;

impl Default for DefinitionLimits {
    fn default() -> Self {
        DefinitionLimits {
            max_steps: DEFAULT_MAX_STEPS,
            max_fan_out: DEFAULT_MAX_FAN_OUT,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl DefinitionLimits {
    /// `E-DEF-TOO-LARGE` for a definition text of `len` bytes over the limit.
    pub(super) fn check_file(&self, source_name: &str, len: usize) -> Result<(), DefinitionError> {
        if len <= self.max_file_bytes {
            return Ok(());
        }
        Err(DefinitionError::TooLarge {
            place: Box::new(Place::new(source_name)),
            reason: format!(
                "the definition file is {len} bytes; at most {} (max_definition_bytes); split it into several files",
                self.max_file_bytes
            ),
        })
    }

    /// Checks the step count and the fan-out of a saga whose steps depend
    /// on `deps` (step indexes; out-of-range ones are ignored); `labels`
    /// name the steps.
    pub(super) fn check_saga(
        &self,
        saga: &Place,
        deps: &[Vec<usize>],
        labels: &[String],
        errs: &mut Vec<DefinitionError>,
    ) {
        if deps.len() > self.max_steps {
            errs.push(DefinitionError::TooLarge {
                place: Box::new(saga.field("steps")),
                reason: format!(
                    "the saga has {} steps; at most {} (max_definition_steps); split it into several sagas",
                    deps.len(),
                    self.max_steps
                ),
            });
        }
        let roots = deps.iter().filter(|d| d.is_empty()).count();
        if roots > self.max_fan_out {
            errs.push(DefinitionError::TooLarge {
                place: Box::new(saga.field("steps")),
                reason: format!(
                    "{roots} steps have no dependencies and would start at once; at most {} (max_definition_fan_out)",
                    self.max_fan_out
                ),
            });
        }
        let mut dependents = vec![0usize; deps.len()];
        for these in deps {
            for &dep in these {
                if let Some(count) = dependents.get_mut(dep) {
                    *count += 1;
                }
            }
        }
        for (i, &count) in dependents.iter().enumerate() {
            if count > self.max_fan_out {
                let label = labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", i + 1));
                errs.push(DefinitionError::TooLarge {
                    place: Box::new(saga.step(label)),
                    reason: format!(
                        "{count} steps depend on this step and would start at once; at most {} (max_definition_fan_out)",
                        self.max_fan_out
                    ),
                });
            }
        }
    }
}
