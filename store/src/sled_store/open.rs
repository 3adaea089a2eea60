//! Opening a store: the format marker, sled's lock and its panics, the
//! in-memory counts, and the one-time backfill of the `finished` index.

use super::SledStore;
use super::change::RowForm;
use super::codec::{decode, finished_key, is_one_row, join, u64_of};
use super::commit::put_saga;
use crate::StoreError;
use sled::{Transactional, Tree};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Key of the marker record in sled's default tree, written when a store is
/// created. sled recovers a damaged or missing data file as an *empty*
/// database without any error, so a store directory that existed before but
/// lacks the marker has lost its data and must not be used as if new.
pub(super) const MARKER_KEY: &[u8] = b"jetsaga.store.format";
/// Value of the marker: the on-disk format of this store (`3`: a saga in
/// one row or in parts, see the module docs of [`super`]).
const MARKER_FORMAT: &[u8] = b"3";
/// The format before sagas were stored in one row or in parts: each whole
/// saga JSON in `sagas`. Opened, its sagas are stored anew.
const MARKER_FORMAT_WHOLE_SAGAS: &[u8] = b"1";
/// The format whose sagas were all stored in parts: a format-3 store as it
/// is (its sagas move to one row as they are written).
const MARKER_FORMAT_PARTS: &[u8] = b"2";
/// A format-1 store whose sagas are being stored anew: set before the
/// first one is, so that an earlier version refuses the store by name
/// rather than reading a saga it cannot decode.
const MARKER_FORMAT_CONVERTING: &[u8] = b"3-from-1";
/// Key of the record in sled's default tree saying that the `finished` tree
/// is complete (stores written before it existed are backfilled at open).
const FINISHED_INDEX_KEY: &[u8] = b"jetsaga.store.finished_index";

/// How often sled flushes (and fsyncs) the store in the background.
const FLUSH_EVERY_MS: u64 = 500;

/// How the engine's sled database in `dir` is opened. A journaled
/// partition does not flush per batch (the journal makes a batch durable,
/// and a store that lost its last writes catches up from it), so sled's
/// own periodic flush bounds how far the store's file lags behind its
/// writes; an unjournaled partition flushes at every group commit besides.
pub(super) fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .flush_every_ms(Some(FLUSH_EVERY_MS))
        .mode(sled::Mode::HighThroughput)
}

/// How long [`SledStore::open`] waits for a lock to be released.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SledStore {
    /// Opens the store in `dir`, creating the directory and an empty store
    /// if there is none yet.
    ///
    /// A directory locked by another process (or by another open store in
    /// this process) gives [`StoreError::Locked`]. An unreadable or corrupt
    /// directory gives [`StoreError::Open`]; so does a directory that held a
    /// store whose data file is now missing or unreadable as a whole (sled
    /// itself would silently start empty there).
    ///
    /// sled's background threads release the directory's file lock a moment
    /// after a store is dropped, so a lock held by this very process is
    /// waited for (up to [`LOCK_WAIT`]) before `Locked` is reported.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            // sled writes `conf` when it creates a database.
            let existed = dir.join("conf").exists();
            match Self::from_config(sled_config(dir), path.clone(), existed) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// A temporary store for tests, deleted when dropped.
    pub fn temporary() -> Result<Self, StoreError> {
        let config = sled::Config::new().temporary(true);
        Self::from_config(config, "<temporary>".to_owned(), false)
    }

    fn from_config(config: sled::Config, path: String, existed: bool) -> Result<Self, StoreError> {
        // sled answers some kinds of damage with a panic instead of an error;
        // the engine must report those like any other unopenable store.
        let db = match catch_unwind_quietly(|| config.open()) {
            Ok(result) => result.map_err(open_error(&path))?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                return Err(damaged(
                    &path,
                    format!("sled panicked while opening: {what}"),
                ));
            }
        };
        Self::from_db(db, path, existed)
    }

    /// The store on the open database `db`: checks the format marker (or
    /// writes it, in a new store), opens the trees and sets up the
    /// in-memory counts. `existed`: whether the directory held a database
    /// before.
    pub(super) fn from_db(db: sled::Db, path: String, existed: bool) -> Result<Self, StoreError> {
        let open_error = open_error(&path);
        // Which older format to bring to format 3 once the trees are open.
        let mut from = None;
        match db.get(MARKER_KEY).map_err(&open_error)? {
            Some(format) if format.as_ref() == MARKER_FORMAT => {}
            Some(format) if format.as_ref() == MARKER_FORMAT_WHOLE_SAGAS => {
                db.insert(MARKER_KEY, MARKER_FORMAT_CONVERTING)
                    .map_err(&open_error)?;
                db.flush().map_err(&open_error)?;
                from = Some(MARKER_FORMAT_WHOLE_SAGAS);
            }
            Some(format) if format.as_ref() == MARKER_FORMAT_CONVERTING => {
                from = Some(MARKER_FORMAT_WHOLE_SAGAS);
            }
            Some(format) if format.as_ref() == MARKER_FORMAT_PARTS => {
                from = Some(MARKER_FORMAT_PARTS);
            }
            Some(format) => {
                return Err(damaged(
                    &path,
                    format!(
                        "unknown store format {:?} (written by a newer jetsaga?)",
                        String::from_utf8_lossy(&format)
                    ),
                ));
            }
            None if existed => {
                return Err(damaged(
                    &path,
                    "the directory held a store, but its data file is missing or damaged \
                     (it reads as empty); restore it from a backup, or remove the directory \
                     to start with an empty store"
                        .to_owned(),
                ));
            }
            None => {
                db.insert(MARKER_KEY, MARKER_FORMAT).map_err(&open_error)?;
                db.flush().map_err(&open_error)?;
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(&open_error);
        let outbox = tree("outbox")?;
        let last_seq = match outbox.last().map_err(&open_error)? {
            Some((key, _)) => Some(u64_of("outbox", &key, &key)?),
            None => None,
        };
        // A fresh database's id generator starts at 0 even when the data was
        // copied in with higher sequences; new rows must sort after them.
        let seq_offset = match last_seq {
            Some(seq) => (seq + 1).saturating_sub(db.generate_id().map_err(&open_error)?),
            None => 0,
        };
        let store = SledStore {
            path: path.clone(),
            definitions: tree("definitions")?,
            definition_latest: tree("definition_latest")?,
            sagas: tree("sagas")?,
            saga_steps: tree("saga_steps")?,
            saga_inputs: tree("saga_inputs")?,
            idempotency: tree("idempotency")?,
            by_state: tree("by_state")?,
            by_name: tree("by_name")?,
            outbox,
            timers: tree("timers")?,
            timer_index: tree("timer_index")?,
            finished: tree("finished")?,
            queued: tree("queued")?,
            admission: tree("admission")?,
            service_policies: tree("service_policies")?,
            meta: tree("meta")?,
            seq_offset,
            saga_rows: AtomicUsize::new(0),
            outbox_rows: AtomicUsize::new(0),
            timer_rows: AtomicUsize::new(0),
            outbox_written: AtomicU64::new(0),
            outbox_durable: AtomicU64::new(0),
            commit_lock: Mutex::new(()),
            db,
        };
        if from == Some(MARKER_FORMAT_WHOLE_SAGAS) {
            store.store_whole_sagas_anew()?;
        }
        let outbox_rows = count(&store.outbox).map_err(&open_error)?;
        let timer_rows = count(&store.timers).map_err(&open_error)?;
        // One `by_name` row per saga, and its rows are smaller than records.
        let saga_rows = count(&store.by_name).map_err(&open_error)?;
        store.outbox_rows.store(outbox_rows, Ordering::Relaxed);
        store.timer_rows.store(timer_rows, Ordering::Relaxed);
        store.saga_rows.store(saga_rows, Ordering::Relaxed);
        // The rows found are durable once this flush returns (sled may have
        // written them to the file without syncing it before a crash).
        if let Some(seq) = last_seq {
            store.db.flush().map_err(&open_error)?;
            store.outbox_written.store(seq + 1, Ordering::Relaxed);
            store.outbox_durable.store(seq + 1, Ordering::Relaxed);
        }
        if store
            .db
            .get(FINISHED_INDEX_KEY)
            .map_err(&open_error)?
            .is_none()
        {
            store.backfill_finished()?;
        }
        if from.is_some() {
            // Last, so that a store that failed to open is left as it was.
            store
                .db
                .insert(MARKER_KEY, MARKER_FORMAT)
                .map_err(&open_error)?;
            store.db.flush().map_err(&open_error)?;
            tracing::info!(
                from = %String::from_utf8_lossy(from.unwrap_or_default()),
                "store: format 3 (a saga of up to {} bytes in one row, a larger one in parts)",
                crate::ONE_ROW_MAX
            );
        }
        Ok(store)
    }

    /// Stores every saga record of a format-1 store (the whole saga JSON
    /// in `sagas`) anew: in one row, or in parts (header, steps, input) if
    /// it is larger, one transaction per saga. A crash midway leaves some
    /// sagas stored anew (the marker then says [`MARKER_FORMAT_CONVERTING`]),
    /// and the next open does the rest. The caller marks the store format 3.
    fn store_whole_sagas_anew(&self) -> Result<(), StoreError> {
        let total = self.sagas.len();
        let mut done = 0usize;
        for entry in self.sagas.iter() {
            let (id, bytes) = entry?;
            if is_one_row(&bytes) {
                continue;
            }
            let saga: jetsaga_core::saga::state::Saga = decode("sagas", &id, &bytes)?;
            if saga.steps.is_empty() {
                // Stored in parts by an open of an earlier version that
                // crashed before marking the store (a definition has at
                // least one step).
                continue;
            }
            let form = RowForm::of_whole(&saga)?;
            // One saga's parts in one transaction (no parts are stored yet).
            let write = crate::SagaWrite::Whole(saga);
            (&self.sagas, &self.saga_steps, &self.saga_inputs)
                .transaction(|(sagas, steps, inputs)| {
                    put_saga((sagas, steps, inputs), &form, &write, None)
                })
                .map_err(super::codec::tx_error)?;
            done += 1;
            if done.is_multiple_of(10_000) {
                tracing::info!(done, total, "store: storing sagas anew");
            }
        }
        self.db.flush()?;
        tracing::info!(
            sagas = done,
            "store: sagas stored anew, in one row or, when larger, in parts (header, \
             steps, input) (`jetsaga store compact` reclaims the space the old records held)"
        );
        Ok(())
    }

    /// Fills the `finished` tree from the terminal sagas of a store written
    /// before the tree existed, then marks it complete. Runs once.
    fn backfill_finished(&self) -> Result<(), StoreError> {
        let mut filled = 0usize;
        for state in jetsaga_core::saga::state::SagaState::terminal() {
            let prefix = join(state.name().as_bytes(), b"");
            for key in self.by_state.scan_prefix(&prefix).keys() {
                let key = key?;
                let id = &key[prefix.len()..];
                if let Some(saga) = self.saga_by_key(id)?
                    && let Some(finished) = finished_key(&saga)
                {
                    self.finished.insert(finished, &[])?;
                    filled += 1;
                }
            }
        }
        self.db.insert(FINISHED_INDEX_KEY, b"1")?;
        self.db.flush()?;
        if filled > 0 {
            tracing::info!(
                sagas = filled,
                "store: indexed finished sagas by finish time"
            );
        }
        Ok(())
    }
}

/// How a sled error opening the store at `path` is reported: another
/// process's lock is [`StoreError::Locked`], anything else
/// [`StoreError::Open`].
fn open_error(path: &str) -> impl Fn(sled::Error) -> StoreError + '_ {
    move |source| {
        if is_lock_error(&source) {
            StoreError::Locked {
                path: path.to_owned(),
            }
        } else {
            StoreError::Open {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// [`StoreError::Open`] for a store at `path` that sled opened but that is
/// damaged as a store.
fn damaged(path: &str, what: String) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        source: sled::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, what)),
    }
}

/// Runs `f`, catching a panic like [`std::panic::catch_unwind`] but without
/// the panic hook printing it (message and backtrace, as if the process had
/// crashed) when it comes from `f` on this thread. Panics of other threads,
/// and of this one outside `f`, are reported by the hook as before.
fn catch_unwind_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    thread_local! {
        static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // `try_with`: a panic while this thread's locals are being
            // destroyed is reported, not turned into an abort.
            if !QUIET.try_with(std::cell::Cell::get).unwrap_or(false) {
                report(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

/// Whether `error` is sled's "could not acquire lock" from opening a
/// directory another handle holds. sled 0.34 turns the `flock` failure into
/// `io::ErrorKind::Other` with this text (config.rs, `try_lock`).
fn is_lock_error(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock")
        }
        _ => false,
    }
}

fn count(tree: &Tree) -> Result<usize, sled::Error> {
    let mut n = 0;
    for entry in tree.iter().keys() {
        entry?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sled_store::codec::step_key;
    use crate::sled_store::test_support::*;
    use crate::{Change, GroupCommit, Prior, SagaWrite};

    #[test]
    fn reopen_finds_everything_and_outbox_stays_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let first_seq;
        {
            let store = SledStore::open(&path).unwrap();
            store
                .put_definition(&definition("order", "reserve"))
                .unwrap();
            store
                .put_definition(&definition("order", "reserve_v2"))
                .unwrap();
            let mut s = saga("0001", "order", running());
            s.idempotency_key = Some("req".into());
            store
                .commit(Change {
                    saga: Some(s.into()),
                    idempotency_key: Some("req".into()),
                    outbox: vec![msg(1), msg(2)],
                    timers_add: vec![timer("0001", TimerKind::SagaTimeout, 10)],
                    timers_remove: vec![],
                    ..Default::default()
                })
                .unwrap();
            first_seq = store.outbox(u64::MAX, 1).unwrap()[0].0;
            futures::executor::block_on(store.flush()).unwrap();
        }
        {
            let store = SledStore::open(&path).unwrap();
            assert_eq!(store.saga("0001").unwrap().unwrap().status, running());
            assert_eq!(
                store.saga_by_idempotency_key("req").unwrap().as_deref(),
                Some("0001")
            );
            assert_eq!(
                store.latest_definition("order").unwrap().unwrap().version,
                2
            );
            assert_eq!(store.definition("order", 1).unwrap().unwrap().version, 1);
            assert_eq!(ids(&store.unfinished_sagas().unwrap()), vec!["0001"]);
            assert_eq!(store.outbox_len(), 2);
            assert_eq!(store.timers_len(), 1);
            assert_eq!(
                store.next_timer().unwrap(),
                Some(timer("0001", TimerKind::SagaTimeout, 10))
            );
            // Rows committed after the restart sort after the old ones.
            store
                .commit(Change {
                    outbox: vec![msg(3)],
                    ..Change::default()
                })
                .unwrap();
            let all = store.outbox(u64::MAX, 10).unwrap();
            assert_eq!(all[0].0, first_seq);
            let got: Vec<_> = all.iter().map(|(_, m)| m.clone()).collect();
            assert_eq!(got, vec![msg(1), msg(2), msg(3)]);
            // Drop without flush: sled flushes on drop.
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.outbox_len(), 3);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Locked { path } if path == &dir.path().display().to_string()),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("E-STORE-LOCKED"), "{err}");
        drop(first);
        // Released with the store.
        SledStore::open(dir.path()).unwrap();
    }

    #[test]
    fn a_garbage_config_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("conf"),
            b"this is not a sled config file at all",
        )
        .unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        // sled: "Read corrupted data at file offset None ...".
        assert!(err.to_string().starts_with("E-STORE-OPEN"), "{err}");
        assert!(err.to_string().contains("corrupted"), "{err}");
    }

    #[test]
    fn a_garbage_data_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            put(&store, saga("0001", "order", running()));
        }
        let garbage: Vec<u8> = (0..1_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(dir.path().join("db"), garbage).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    }

    #[test]
    fn panics_are_caught_quietly_and_only_inside() {
        let caught = catch_unwind_quietly(|| -> u8 { panic!("sled-like damage") }).unwrap_err();
        assert_eq!(caught.downcast_ref::<&str>(), Some(&"sled-like damage"));
        assert_eq!(catch_unwind_quietly(|| 7).unwrap(), 7);
        // Nested: the outer call stays quiet after the inner one returns.
        let outer = catch_unwind_quietly(|| {
            let _ = catch_unwind_quietly(|| ());
            panic!("outer")
        });
        assert!(outer.is_err());
    }

    #[test]
    fn a_directory_that_is_a_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = SledStore::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_data_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            put(&store, saga("0001", "order", running()));
        }
        std::fs::remove_file(dir.path().join("db")).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("missing or damaged"), "{err}");
    }

    /// A saga of `steps` steps, each with one attempt, for the split tests.
    fn whole(id: &str, steps: usize) -> Saga {
        let mut s = saga(id, "order", running());
        s.steps = (0..steps)
            .map(|i| jetsaga_core::saga::state::StepState {
                output: Some(serde_json::json!({ "step": i })),
                ..Default::default()
            })
            .collect();
        s
    }

    /// Writes `sagas` as a store of format `format` held them: a format-1
    /// store the whole saga JSON in `sagas`, no parts, with `split` of them
    /// already in parts (by an open that crashed before marking the store);
    /// a format-2 store all in parts.
    /// Returns the open database, for the caller to add to or drop.
    fn old_store(dir: &std::path::Path, format: &[u8], sagas: &[Saga], split: usize) -> sled::Db {
        let db = sled_config(dir).open().unwrap();
        db.insert(MARKER_KEY, format).unwrap();
        let (records, by_state, by_name) = (
            db.open_tree("sagas").unwrap(),
            db.open_tree("by_state").unwrap(),
            db.open_tree("by_name").unwrap(),
        );
        let (steps, inputs) = (
            db.open_tree("saga_steps").unwrap(),
            db.open_tree("saga_inputs").unwrap(),
        );
        for (n, s) in sagas.iter().enumerate() {
            let id = s.id.as_bytes();
            if n < split {
                inputs
                    .insert(id, serde_json::to_vec(&s.input).unwrap())
                    .unwrap();
                for (i, step) in s.steps.iter().enumerate() {
                    steps
                        .insert(step_key(id, i as u32), serde_json::to_vec(step).unwrap())
                        .unwrap();
                }
                let header = crate::header_of(s);
                records
                    .insert(id, serde_json::to_vec(&header).unwrap())
                    .unwrap();
            } else {
                records.insert(id, serde_json::to_vec(s).unwrap()).unwrap();
            }
            by_state.insert(join(b"running", id), &[]).unwrap();
            by_name.insert(join(b"order", id), &[]).unwrap();
        }
        db.flush().unwrap();
        db
    }

    /// A saga too large for one row.
    fn large(id: &str) -> Saga {
        let mut s = whole(id, 2);
        s.input = serde_json::json!({ "blob": "x".repeat(crate::ONE_ROW_MAX) });
        s
    }

    #[test]
    fn a_format_1_store_is_stored_anew_at_open_even_after_a_crash_midway() {
        let dir = tempfile::tempdir().unwrap();
        let sagas = [whole("0001", 3), whole("0002", 2), large("0003")];
        drop(old_store(dir.path(), MARKER_FORMAT_WHOLE_SAGAS, &sagas, 1));
        let store = SledStore::open(dir.path()).unwrap();
        for s in &sagas {
            assert_eq!(store.saga(&s.id).unwrap().as_ref(), Some(s), "{}", s.id);
        }
        let row = |id: &str| store.sagas.get(id).unwrap().unwrap();
        // The one the crashed open had split stays in parts; the other
        // small one is now one row, the large one in parts.
        assert!(!is_one_row(&row("0001")));
        assert!(is_one_row(&row("0002")));
        assert!(!is_one_row(&row("0003")));
        assert_eq!(store.saga_steps.len(), 3 + 2);
        assert_eq!(store.saga_inputs.len(), 2);
        assert_eq!(
            store.db.get(MARKER_KEY).unwrap().as_deref(),
            Some(MARKER_FORMAT)
        );
        assert_eq!(
            ids(&store.unfinished_sagas().unwrap()),
            vec!["0001", "0002", "0003"]
        );
        drop(store);
        // Opened again, it is format 3 and nothing is stored anew twice.
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.saga("0002").unwrap().as_ref(), Some(&sagas[1]));
    }

    #[test]
    fn a_format_1_conversion_that_fails_midway_stays_marked_as_one_and_is_finished_later() {
        let dir = tempfile::tempdir().unwrap();
        let sagas = [whole("0001", 3), whole("0002", 2)];
        let db = old_store(dir.path(), MARKER_FORMAT_WHOLE_SAGAS, &sagas, 0);
        // The second saga's record is damaged: the conversion stops there.
        let records = db.open_tree("sagas").unwrap();
        let good = records.insert("0002", &b"{not json"[..]).unwrap().unwrap();
        db.flush().unwrap();
        drop((records, db));
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if key == "sagas/0002"),
            "{err:?}"
        );
        // An earlier version refuses the half-converted store by name: its
        // marker is neither "1" nor "2". The first saga is one row already.
        let db = reopen_raw(dir.path());
        assert_eq!(
            db.get(MARKER_KEY).unwrap().as_deref(),
            Some(MARKER_FORMAT_CONVERTING)
        );
        let records = db.open_tree("sagas").unwrap();
        assert!(is_one_row(&records.get("0001").unwrap().unwrap()));
        // Repaired, the next open converts the rest and marks the store 3.
        records.insert("0002", good).unwrap();
        db.flush().unwrap();
        drop((records, db));
        let store = SledStore::open(dir.path()).unwrap();
        for s in &sagas {
            assert_eq!(store.saga(&s.id).unwrap().as_ref(), Some(s), "{}", s.id);
            assert!(is_one_row(&store.sagas.get(&s.id).unwrap().unwrap()));
        }
        assert_eq!(
            store.db.get(MARKER_KEY).unwrap().as_deref(),
            Some(MARKER_FORMAT)
        );
    }

    #[test]
    fn a_format_2_store_that_fails_to_open_stays_format_2() {
        let dir = tempfile::tempdir().unwrap();
        let db = old_store(dir.path(), MARKER_FORMAT_PARTS, &[whole("0001", 2)], 1);
        // An outbox key of the wrong length fails the open after the marker
        // was read.
        db.open_tree("outbox")
            .unwrap()
            .insert(b"bad", &b"x"[..])
            .unwrap();
        db.flush().unwrap();
        drop(db);
        assert!(SledStore::open(dir.path()).is_err());
        let db = reopen_raw(dir.path());
        assert_eq!(
            db.get(MARKER_KEY).unwrap().as_deref(),
            Some(MARKER_FORMAT_PARTS)
        );
    }

    /// The database in `dir`, opened as sled opens it (waiting, as
    /// [`SledStore::open`] does, for a just-dropped store's lock).
    fn reopen_raw(dir: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match sled_config(dir).open() {
                Ok(db) => return db,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn a_format_2_store_opens_as_it_is_and_its_sagas_move_to_one_row_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let sagas = [whole("0001", 3), large("0002")];
        drop(old_store(
            dir.path(),
            MARKER_FORMAT_PARTS,
            &sagas,
            sagas.len(),
        ));
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(
            store.db.get(MARKER_KEY).unwrap().as_deref(),
            Some(MARKER_FORMAT)
        );
        for s in &sagas {
            assert_eq!(store.saga(&s.id).unwrap().as_ref(), Some(s), "{}", s.id);
        }
        let mut small = sagas[0].clone();
        small.steps[1].output = Some(serde_json::json!("rewritten"));
        store
            .commit(Change {
                saga: Some(SagaWrite::of_transition(&small, &[1])),
                prior: Prior::of(&sagas[0]),
                ..Change::default()
            })
            .unwrap();
        assert!(is_one_row(&store.sagas.get("0001").unwrap().unwrap()));
        assert_eq!(store.saga("0001").unwrap(), Some(small));
        // Its parts are gone; the large saga's stay.
        assert_eq!(store.saga_steps.len(), 2);
        assert_eq!(store.saga_inputs.len(), 1);
        assert_eq!(store.saga("0002").unwrap().as_ref(), Some(&sagas[1]));
    }

    #[test]
    fn a_store_of_a_later_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled_config(dir.path()).open().unwrap();
            db.insert(MARKER_KEY, b"4").unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("unknown store format \"4\""),
            "{err}"
        );
    }
}
