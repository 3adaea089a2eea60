//! `jetsaga store compact`: gives back to the file system the space that
//! pruned and deleted sagas left in a stopped engine's store.
//!
//! sled reuses the space of removed records but never shrinks its files, so
//! a store that once held many sagas stays that large on disk after
//! retention prunes them. Compacting copies the live data into a fresh
//! database next to the store (`<dir>.compacting`), checks the copy against
//! the original (sled's checksum over every key and value), and swaps the
//! two directories. On Linux the swap is one `renameat2(RENAME_EXCHANGE)`:
//! at every instant `<dir>` holds a whole store, the old one or the
//! compacted one, so an interrupted compaction loses nothing. The old copy
//! is then removed, or kept as `<dir>.pre-compact-<unix seconds>`.
//!
//! The store must not be in use: the command opens it like the engine does,
//! so a running engine makes it fail with `E-STORE-LOCKED` and nothing
//! changes.

use super::{SagaTable, SledStore, StoreError, dir_bytes};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What [`compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Bytes of the store directory before.
    pub before_bytes: u64,
    /// Bytes of the store directory after.
    pub after_bytes: u64,
    /// Sagas in the store (the same before and after).
    pub sagas: usize,
    /// Where the old copy was kept (`--keep-old`).
    pub old_copy: Option<PathBuf>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Compacts the store in `dir` (see the module docs); keeps the old copy
/// beside it when `keep_old`.
pub fn compact(dir: &Path, keep_old: bool) -> Result<Compacted, StoreError> {
    let started = Instant::now();
    let fail = |reason: String| StoreError::Compact {
        path: dir.display().to_string(),
        reason,
    };
    // `SledStore::open` would create an empty store where there is none.
    if !dir.join("conf").is_file() {
        return Err(fail("there is no store in this directory".into()));
    }
    let name = dir
        .file_name()
        .ok_or_else(|| fail("the path has no directory name".into()))?
        .to_string_lossy()
        .into_owned();
    let sibling = |suffix: &str| dir.with_file_name(format!("{name}.{suffix}"));
    let staging = sibling("compacting");

    let before_bytes = dir_bytes(dir).map_err(|e| fail(format!("cannot size it: {e}")))?;
    let store = SledStore::open(dir)?;
    let sagas = store.sagas_len();
    // A leftover of an interrupted compaction: either an unfinished copy,
    // or the old store after a swap whose cleanup did not run. `dir` is a
    // whole store in both cases, so the leftover can go.
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| fail(format!("cannot remove {}: {e}", staging.display())))?;
    }
    if let Err(e) = store.copy_into(&staging) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    drop(store);

    swap_dirs(dir, &staging).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staging);
        fail(format!("cannot swap in the compacted copy: {e}"))
    })?;
    let old_copy = if keep_old {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let kept = sibling(&format!("pre-compact-{secs}"));
        std::fs::rename(&staging, &kept).map_err(|e| {
            fail(format!(
                "compacted, but cannot rename the old copy {} to {}: {e}",
                staging.display(),
                kept.display()
            ))
        })?;
        Some(kept)
    } else {
        std::fs::remove_dir_all(&staging).map_err(|e| {
            fail(format!(
                "compacted, but cannot remove the old copy {}: {e}",
                staging.display()
            ))
        })?;
        None
    };

    // The compacted store opens like any other and holds the same sagas.
    let reopened = SledStore::open(dir)?;
    let after = reopened.sagas_len();
    drop(reopened);
    if after != sagas {
        return Err(fail(format!(
            "the compacted store holds {after} sagas, not {sagas}"
        )));
    }
    let after_bytes = dir_bytes(dir).map_err(|e| fail(format!("cannot size it: {e}")))?;
    Ok(Compacted {
        before_bytes,
        after_bytes,
        sagas,
        old_copy,
        elapsed: started.elapsed(),
    })
}

/// Exchanges directories `a` and `b` in one step (Linux).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn swap_dirs(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE)
        .map_err(|errno| std::io::Error::from_raw_os_error(errno as i32))
}

/// Exchanges directories `a` and `b` with two renames: between them `a` is
/// missing (an engine started right then would create an empty store; the
/// old one is at `b.tmp`).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn swap_dirs(a: &Path, b: &Path) -> std::io::Result<()> {
    let aside = b.with_extension("tmp");
    std::fs::rename(a, &aside)?;
    std::fs::rename(b, a)?;
    std::fs::rename(&aside, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, GroupCommit};
    use jetsaga_core::saga::state::{Saga, SagaStatus};

    #[test]
    fn a_directory_without_a_store_is_refused_and_not_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let e = compact(&dir, false).unwrap_err();
        assert!(
            e.to_string().contains("E-STORE-COMPACT") && e.to_string().contains("no store"),
            "{e}"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn compacting_keeps_every_record_and_frees_the_space_of_removed_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let kept_ids: Vec<String>;
        {
            let store = SledStore::open(&dir).unwrap();
            let big = "x".repeat(16 * 1024);
            let mut ids = Vec::new();
            for i in 0..400 {
                let saga = Saga {
                    id: format!("s{i:04}"),
                    name: "order".to_owned(),
                    definition_version: 1,
                    input: serde_json::json!({ "pad": big }),
                    idempotency_key: None,
                    generation: 0,
                    status: SagaStatus::Completed,
                    steps: vec![],
                    created_at: 1_000,
                    updated_at: 2_000,
                    finished_at: Some(2_000),
                    trace_parent: None,
                    event_seq: 0,
                };
                ids.push(saga.id.clone());
                store
                    .commit(Change {
                        saga: Some(saga.into()),
                        ..Change::default()
                    })
                    .unwrap();
            }
            futures::executor::block_on(store.flush()).unwrap();
            for id in &ids[10..] {
                store.delete_saga(id).unwrap();
            }
            futures::executor::block_on(store.flush()).unwrap();
            kept_ids = ids[..10].to_vec();
        }
        let checksum_of_live = SledStore::open(&dir).unwrap().checksum().unwrap();

        let done = compact(&dir, true).unwrap();
        assert_eq!(done.sagas, 10);
        assert!(
            done.after_bytes * 4 < done.before_bytes,
            "{} -> {} bytes",
            done.before_bytes,
            done.after_bytes
        );
        let old = done.old_copy.expect("kept");
        assert!(old.join("conf").is_file());
        assert!(!dir.with_file_name("data.compacting").exists());

        let store = SledStore::open(&dir).unwrap();
        assert_eq!(store.checksum().unwrap(), checksum_of_live);
        for id in &kept_ids {
            assert!(store.saga(id).unwrap().is_some(), "{id}");
        }
        assert_eq!(store.sagas_len(), 10);
    }

    #[test]
    fn a_store_in_use_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let _engine = SledStore::open(&dir).unwrap();
        // Held by this process: `open` waits LOCK_WAIT, then reports it.
        let e = compact(&dir, false).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        assert!(!dir.with_file_name("data.compacting").exists());
    }
}
