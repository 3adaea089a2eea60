//! Snapshots: a whole store written to a byte stream, and a new store
//! restored from one (a standby with an empty data directory starts from
//! the latest snapshot, then applies the journal's tail).
//!
//! Format (integers big-endian):
//!
//! ```text
//! "JETSAGA-SNAPSHOT" ‖ version u32 (1)
//! per tree:  0x01 ‖ name length u32 ‖ name
//!            per row: 0x02 ‖ key length u32 ‖ key ‖ value length u32 ‖ value
//!            0x03 (end of tree)
//! 0x04 (end of trees) ‖ sled checksum u32 of the source (Db::checksum)
//! ```
//!
//! Restoring checks the header before it creates anything, writes the
//! store's format marker last (a store interrupted half-way has none, so
//! [`SledStore::open`] refuses it), compares sled's checksum of the result
//! with the recorded one, and on any failure removes what it wrote.

use super::SledStore;
use super::open::{MARKER_KEY, sled_config};
use crate::{JournalPosition, JournalTable, StoreError};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::Path;

/// First bytes of every snapshot.
const MAGIC: &[u8; 16] = b"JETSAGA-SNAPSHOT";
/// Format version this code writes and reads.
const VERSION: u32 = 1;
/// A tree begins: its name follows.
const TREE: u8 = 0x01;
/// A row of the current tree follows.
const ROW: u8 = 0x02;
/// The current tree ends.
const TREE_END: u8 = 0x03;
/// No more trees: the checksum follows.
const END: u8 = 0x04;
/// Name of sled's default tree, which holds the format marker.
const DEFAULT_TREE: &[u8] = b"__sled__default";
/// Rows per sled batch when restoring.
const BATCH_ROWS: usize = 1024;

fn snapshot_error(reason: impl Into<String>) -> StoreError {
    StoreError::Snapshot {
        reason: reason.into(),
    }
}

impl SledStore {
    /// Writes every tree of the store to `out` as one snapshot (format in
    /// the module docs), and returns the journal position it holds. The
    /// caller guarantees no writes run meanwhile.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> Result<JournalPosition, StoreError> {
        let position = self.journal_position()?;
        let mut out = BufWriter::new(out);
        let io = |e: std::io::Error| snapshot_error(format!("cannot write it: {e}"));
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_be_bytes()).map_err(io)?;
        let mut names = self.db.tree_names();
        names.sort();
        for name in names {
            out.write_all(&[TREE]).map_err(io)?;
            write_chunk(&mut out, &name)?;
            for entry in self.db.open_tree(&name)?.iter() {
                let (key, value) = entry?;
                out.write_all(&[ROW]).map_err(io)?;
                write_chunk(&mut out, &key)?;
                write_chunk(&mut out, &value)?;
            }
            out.write_all(&[TREE_END]).map_err(io)?;
        }
        out.write_all(&[END]).map_err(io)?;
        out.write_all(&self.db.checksum()?.to_be_bytes())
            .map_err(io)?;
        out.flush().map_err(io)?;
        Ok(position)
    }

    /// Creates a store at `dir` (which must not exist, or be an empty
    /// directory) from a snapshot written by [`SledStore::write_snapshot`],
    /// checks it (sled checksum recorded in the snapshot), flushes it, and
    /// returns it opened.
    ///
    /// A truncated, corrupt or foreign snapshot, or a non-empty `dir`, gives
    /// [`StoreError::Snapshot`]; on any failure what was written under `dir`
    /// is removed again (a `dir` that was not empty is left alone).
    pub fn restore_snapshot(dir: &Path, input: &mut dyn Read) -> Result<SledStore, StoreError> {
        let created = match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(snapshot_error(format!(
                        "the target directory {} is not empty",
                        dir.display()
                    )));
                }
                false
            }
            Err(e) if e.kind() == ErrorKind::NotFound => true,
            Err(e) => {
                return Err(snapshot_error(format!(
                    "cannot read the target directory {}: {e}",
                    dir.display()
                )));
            }
        };
        let restored = restore_into(dir, input);
        if restored.is_err() {
            let removed = if created {
                std::fs::remove_dir_all(dir)
            } else {
                remove_contents(dir)
            };
            if let Err(e) = removed
                && e.kind() != ErrorKind::NotFound
            {
                tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "store: cannot remove the remains of a failed snapshot restore"
                );
            }
        }
        restored
    }
}

/// Restores the snapshot `input` into a new database at `dir`.
fn restore_into(dir: &Path, input: &mut dyn Read) -> Result<SledStore, StoreError> {
    let mut input = Reader(BufReader::new(input));
    // Nothing is created for a stream that is no snapshot at all.
    let mut magic = [0u8; MAGIC.len()];
    input.exact(&mut magic, "the header")?;
    if &magic != MAGIC {
        return Err(snapshot_error("not a jetsaga snapshot (wrong header)"));
    }
    let version = input.u32("the header")?;
    if version != VERSION {
        return Err(snapshot_error(format!(
            "snapshot format version {version} is not supported (this jetsaga reads {VERSION})"
        )));
    }

    let path = dir.display().to_string();
    let db = sled_config(dir).open().map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    let mut marker = None;
    let mut trees = 0usize;
    loop {
        match input.u8("the tree list")? {
            TREE => {}
            END => break,
            tag => {
                return Err(snapshot_error(format!(
                    "corrupt: byte {tag:#04x} where a tree or the end was expected"
                )));
            }
        }
        let name = input.chunk("a tree name")?;
        let printable = String::from_utf8_lossy(&name).into_owned();
        let tree = db.open_tree(&name)?;
        trees += 1;
        let mut batch = sled::Batch::default();
        let mut rows = 0usize;
        loop {
            match input.u8(&printable)? {
                ROW => {}
                TREE_END => break,
                tag => {
                    return Err(snapshot_error(format!(
                        "corrupt: byte {tag:#04x} where a row or the end of tree {printable} was expected"
                    )));
                }
            }
            let key = input.chunk(&printable)?;
            let value = input.chunk(&printable)?;
            if name == DEFAULT_TREE && key == MARKER_KEY {
                // Written last: a half-restored store must not open.
                marker = Some(value);
                continue;
            }
            batch.insert(key, value);
            rows += 1;
            if rows.is_multiple_of(BATCH_ROWS) {
                tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        tree.apply_batch(batch)?;
    }
    let recorded = input.u32("the checksum")?;
    let mut rest = [0u8; 1];
    match input.0.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err(snapshot_error("corrupt: bytes after the checksum")),
        Err(e) => return Err(snapshot_error(format!("cannot read it: {e}"))),
    }
    let Some(marker) = marker else {
        return Err(snapshot_error(format!(
            "not a store: none of its {trees} trees holds the store's format marker"
        )));
    };
    db.insert(MARKER_KEY, marker)?;
    let actual = db.checksum()?;
    if actual != recorded {
        return Err(snapshot_error(format!(
            "corrupt: the restored data's checksum {actual:#010x} differs from the recorded {recorded:#010x}"
        )));
    }
    db.flush()?;
    SledStore::from_db(db, path, true)
}

/// Writes `bytes` with its u32 length before it.
fn write_chunk(out: &mut impl Write, bytes: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| snapshot_error(format!("a record of {} bytes is too large", bytes.len())))?;
    out.write_all(&len.to_be_bytes())
        .and_then(|()| out.write_all(bytes))
        .map_err(|e| snapshot_error(format!("cannot write it: {e}")))
}

/// A snapshot being read; `what` names the part being read, for errors.
struct Reader<R>(R);

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<(), StoreError> {
        self.0.read_exact(buf).map_err(|e| read_error(e, what))
    }

    fn u8(&mut self, what: &str) -> Result<u8, StoreError> {
        let mut b = [0u8; 1];
        self.exact(&mut b, what)?;
        Ok(b[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    /// A length-prefixed byte string. Reads at most the bytes that are
    /// there, so a corrupt length costs no huge allocation.
    fn chunk(&mut self, what: &str) -> Result<Vec<u8>, StoreError> {
        let len = self.u32(what)?;
        let mut bytes = Vec::new();
        (&mut self.0)
            .take(u64::from(len))
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(e, what))?;
        if bytes.len() != len as usize {
            return Err(read_error(ErrorKind::UnexpectedEof.into(), what));
        }
        Ok(bytes)
    }
}

fn read_error(e: std::io::Error, what: &str) -> StoreError {
    if e.kind() == ErrorKind::UnexpectedEof {
        snapshot_error(format!("truncated: it ends in {what}"))
    } else {
        snapshot_error(format!("cannot read it ({what}): {e}"))
    }
}

/// Removes everything inside `dir`, keeping `dir`.
fn remove_contents(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(path)?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::test_support::*;
    use crate::{Change, HeldTask, Prior, QueuedRow, StartQueueTable};

    /// A store with sagas, outbox rows, timers, definitions, queue rows,
    /// a held task and a journal position.
    fn filled() -> SledStore {
        let store = SledStore::temporary().unwrap();
        store
            .put_definition(&definition("order", "reserve"))
            .unwrap();
        store
            .put_definition(&definition("order", "reserve_v2"))
            .unwrap();
        let mut done = saga("0002", "order", SagaStatus::Completed);
        done.finished_at = Some(2_000);
        let changes = vec![
            Change {
                saga: Some(saga("0001", "order", running()).into()),
                prior: Prior::Absent,
                outbox: vec![msg(1), msg(2)],
                timers_add: vec![timer("0001", TimerKind::SagaTimeout, 9_000)],
                ..Change::default()
            },
            Change {
                saga: Some(done.into()),
                prior: Prior::Absent,
                outbox: vec![msg(3)],
                queue_add: vec![(
                    7,
                    QueuedRow {
                        saga_id: "0003".into(),
                        saga: "order".into(),
                        enqueued_at: 1_500,
                    },
                )],
                held_add: vec![(
                    4,
                    HeldTask {
                        service: "inventory".into(),
                        saga_id: "0001".into(),
                        step: 0,
                        kind: TaskKind::Action,
                        attempt: 1,
                        timeout_ms: 5_000,
                        message: msg(4),
                    },
                )],
                ..Change::default()
            },
        ];
        let position = JournalPosition {
            record: 1,
            epoch: 3,
            resume_seq: 42,
        };
        store.commit_journaled(&changes, position).unwrap();
        store
    }

    fn snapshot_of(store: &SledStore) -> Vec<u8> {
        let mut bytes = Vec::new();
        let position = store.write_snapshot(&mut bytes).unwrap();
        assert_eq!(position, store.journal_position().unwrap());
        bytes
    }

    #[test]
    fn a_restored_snapshot_is_the_same_store() {
        let source = filled();
        let bytes = snapshot_of(&source);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("restored");
        let restored = SledStore::restore_snapshot(&target, &mut bytes.as_slice()).unwrap();

        assert_eq!(restored.checksum().unwrap(), source.checksum().unwrap());
        assert_eq!(
            restored.journal_position().unwrap(),
            source.journal_position().unwrap()
        );
        assert_eq!(restored.sagas_len(), 2);
        assert_eq!(restored.saga("0001").unwrap(), source.saga("0001").unwrap());
        assert_eq!(ids(&restored.unfinished_sagas().unwrap()), vec!["0001"]);
        assert_eq!(restored.finished_before(3_000, 10).unwrap(), vec!["0002"]);
        assert_eq!(restored.outbox_len(), 3);
        assert_eq!(restored.timers_len(), 1);
        assert_eq!(
            restored.outbox(u64::MAX, 10).unwrap(),
            source.outbox(u64::MAX, 10).unwrap()
        );
        assert_eq!(restored.queued().unwrap(), source.queued().unwrap());
        assert_eq!(
            restored
                .latest_definition("order")
                .unwrap()
                .unwrap()
                .version,
            2
        );
        // Restored rows are durable, and new rows sort after them although
        // the fresh database's id generator started again.
        let last = restored.outbox(u64::MAX, 10).unwrap().last().unwrap().0;
        assert_eq!(restored.outbox_durable(), Some(last));
        restored
            .commit(Change {
                outbox: vec![msg(9)],
                ..Change::default()
            })
            .unwrap();
        let rows = restored.outbox(u64::MAX, 10).unwrap();
        assert_eq!(rows.len(), 4);
        assert!(rows[3].0 > last, "{rows:?}");
        assert_eq!(rows[3].1, msg(9));
        assert_eq!(restored.outbox_durable(), Some(last));

        // The restored store is flushed and opens again on its own.
        drop(restored);
        let reopened = SledStore::open(&target).unwrap();
        assert_eq!(reopened.sagas_len(), 2);
        assert_eq!(reopened.journal_position().unwrap().record, 1);
    }

    #[test]
    fn an_empty_existing_directory_is_a_valid_target() {
        let source = filled();
        let bytes = snapshot_of(&source);
        let dir = tempfile::tempdir().unwrap();
        let restored = SledStore::restore_snapshot(dir.path(), &mut bytes.as_slice()).unwrap();
        assert_eq!(restored.checksum().unwrap(), source.checksum().unwrap());
    }

    fn refused(bytes: &[u8], reason: &str) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("restored");
        let err = SledStore::restore_snapshot(&target, &mut &bytes[..]).unwrap_err();
        assert!(
            matches!(&err, StoreError::Snapshot { reason: r } if r.contains(reason)),
            "{err}"
        );
        assert!(err.to_string().starts_with("E-STORE-CORRUPT"), "{err}");
        assert!(!target.exists(), "a failed restore left {target:?} behind");
        // Nor does the same restore into an empty existing directory.
        let err = SledStore::restore_snapshot(dir.path(), &mut &bytes[..]).unwrap_err();
        assert!(matches!(err, StoreError::Snapshot { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_truncated_snapshot_is_refused_and_leaves_nothing() {
        let bytes = snapshot_of(&filled());
        for cut in [0, 10, MAGIC.len() + 4, bytes.len() / 2, bytes.len() - 1] {
            refused(&bytes[..cut], "truncated");
        }
    }

    #[test]
    fn a_foreign_or_damaged_snapshot_is_refused() {
        refused(
            b"this is not a snapshot of anything at all",
            "not a jetsaga snapshot",
        );
        let mut bytes = snapshot_of(&filled());
        // A newer format.
        let mut newer = bytes.clone();
        newer[MAGIC.len() + 3] = 2;
        refused(&newer, "version 2");
        // A flipped byte in the last row's value: parses, fails the checksum.
        let at = bytes.len() - 4 - 1 - 1 - 1;
        bytes[at] ^= 0xff;
        refused(&bytes, "checksum");
        // Random bytes after a valid header.
        let mut garbage = MAGIC.to_vec();
        garbage.extend(VERSION.to_be_bytes());
        garbage.extend((0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        refused(&garbage, "corrupt");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = snapshot_of(&filled());
        bytes.push(0);
        refused(&bytes, "after the checksum");
    }

    #[test]
    fn a_non_empty_target_is_refused_and_left_alone() {
        let bytes = snapshot_of(&filled());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), b"mine").unwrap();
        let err = SledStore::restore_snapshot(dir.path(), &mut bytes.as_slice()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Snapshot { reason } if reason.contains("not empty")),
            "{err}"
        );
        assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"mine");
    }

    #[test]
    fn a_store_interrupted_while_restoring_does_not_open() {
        // The marker is written last: a restore that stopped before it
        // leaves a directory `open` refuses instead of an empty-looking store.
        let source = filled();
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled_config(dir.path()).open().unwrap();
            for name in source.db.tree_names() {
                let tree = db.open_tree(&name).unwrap();
                for entry in source.db.open_tree(&name).unwrap().iter() {
                    let (key, value) = entry.unwrap();
                    if name != DEFAULT_TREE || key != MARKER_KEY {
                        tree.insert(key, value).unwrap();
                    }
                }
            }
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("missing or damaged"), "{err}");
    }
}
