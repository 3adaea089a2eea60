//! Example workers for jetsaga: four real-looking sagas (`deploy_environment`,
//! `create_booking`, `collect_payment`, `data_ingest_pipeline`), the services
//! that run their steps, a local effect [`ledger`] that shows compensation
//! undoing what the actions did, and [`faults`] injected from the saga input.
//!
//! The saga definitions live in `examples/definitions/`; the binaries in
//! `src/bin/` run the services of one saga each (`all-workers` runs them
//! all). See `examples/README.md`.

pub mod faults;
pub mod inputs;
pub mod ledger;
pub mod runner;
pub mod services;
pub mod stats;

/// Directory of the example saga definitions (`examples/definitions`).
pub fn definitions_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions")
}
