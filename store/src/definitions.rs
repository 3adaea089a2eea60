//! Saga definitions, versioned by content ([`DefinitionTable`]).

use crate::StoreError;
use jetsaga_core::saga::definition::SagaDefinition;

/// Result of storing a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Definition name.
    pub name: String,
    /// Version now current.
    pub version: u32,
    /// Whether a new version was written (`false`: identical to the current one).
    pub changed: bool,
}

/// Saga definitions, each name with its versions. Written by applying
/// definitions (the API, the engine's `--definitions` files at start-up);
/// read by the partition (a saga runs the version it started with), the
/// API, triggers and the queue-depth metrics.
pub trait DefinitionTable: Send + Sync {
    /// Stores `def` as a new version of its name, unless it equals the current
    /// version (ignoring the `version` field). Returns the current version.
    /// Durable after the next [`crate::GroupCommit::flush`].
    fn put_definition(&self, def: &SagaDefinition) -> Result<Applied, StoreError>;
    /// A given version of a definition.
    fn definition(&self, name: &str, version: u32) -> Result<Option<SagaDefinition>, StoreError>;
    /// The current version of a definition.
    fn latest_definition(&self, name: &str) -> Result<Option<SagaDefinition>, StoreError>;
    /// The current version of every definition, by name.
    fn list_definitions(&self) -> Result<Vec<SagaDefinition>, StoreError>;
}
