//! The sled implementation of [`super::Store`].
//!
//! Layout (one sled tree each; `‖` is concatenation, integers are big-endian
//! so byte order is numeric order):
//!
//! | tree                | key                                      | value              |
//! |---------------------|------------------------------------------|--------------------|
//! | `definitions`       | name ‖ 0x00 ‖ version u32                | definition JSON    |
//! | `definition_latest` | name                                     | version u32        |
//! | `sagas`             | saga id                                  | saga JSON          |
//! | `idempotency`       | idempotency key                          | saga id            |
//! | `by_state`          | state name ‖ 0x00 ‖ saga id              | empty              |
//! | `by_name`           | saga name ‖ 0x00 ‖ saga id               | empty              |
//! | `outbox`            | seq u64                                  | outbox frame (below) |
//! | `timers`            | due u64 ‖ saga id ‖ 0x00 ‖ timer JSON    | [`TimerRow`] JSON  |
//! | `timer_index`       | saga id ‖ 0x00 ‖ timer JSON              | due u64            |
//! | `finished`          | finished_at u64 ‖ saga id                | empty              |
//! | `queued`            | enqueue seq u64                          | [`QueuedRow`] JSON |
//! | `admission`         | `h` ‖ hold seq u64                       | [`super::HeldTask`] JSON |
//! |                     | `b` ‖ service                            | breaker state JSON |
//! | `service_policies`  | service                                  | service policy JSON |
//!
//! `finished` holds the terminal sagas by the time they finished (written in
//! the transaction of the terminal transition, removed when the saga leaves
//! the terminal state or is deleted), so pruning old finished sagas
//! ([`Store::finished_before`]) reads only the rows it deletes. A store
//! written before that tree existed gets it filled once at open.
//!
//! An outbox row is a frame `0x01 ‖ header length u32 ‖ header JSON ‖
//! payload`: the header holds subject, message id and headers, the payload
//! follows as raw bytes (JSON would spell each byte as a decimal number, and
//! the relay would parse it back number by number). Rows written before the
//! frame existed are a JSON [`OutboxMessage`]; they start with `{` and are
//! still read.
//!
//! Saga ids are UUIDv7, so key order is creation order and listings walk the
//! trees backwards for newest first. Outbox sequence numbers come from
//! [`sled::Db::generate_id`], which stays monotonic across restarts.
//!
//! Counting rows in sled is a full scan, so the store keeps the outbox and
//! timer row counts in memory (counted once at open, then adjusted by every
//! write). It also keeps the highest outbox sequence written and the highest
//! one a completed flush covered ([`Store::outbox_durable`]).

use super::{
    Applied, Change, OutboxMessage, Prior, QueuedRow, SagaFilter, Store, StoreError, TimerRow,
};
use futures::future::BoxFuture;
use jetsaga_core::saga::definition::SagaDefinition;
use jetsaga_core::saga::state::{Millis, Saga, TimerKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{IVec, Tree};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Page size of [`Store::list_sagas`] when the filter's `limit` is 0.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// States a saga can still leave: what [`Store::unfinished_sagas`] returns.
const UNFINISHED_STATES: [&str; 3] = ["pending", "running", "compensating"];

/// Key separator between variable-length parts.
const SEP: u8 = 0x00;

/// Key of the marker record in sled's default tree, written when a store is
/// created. sled recovers a damaged or missing data file as an *empty*
/// database without any error, so a store directory that existed before but
/// lacks the marker has lost its data and must not be used as if new.
const MARKER_KEY: &[u8] = b"jetsaga.store.format";
/// Value of the marker: the on-disk format of this module.
const MARKER_FORMAT: &[u8] = b"1";
/// Key of the record in sled's default tree saying that the `finished` tree
/// is complete (stores written before it existed are backfilled at open).
const FINISHED_INDEX_KEY: &[u8] = b"jetsaga.store.finished_index";

/// [`super::Store`] on sled 0.34: one directory, one process at a time.
pub struct SledStore {
    path: String,
    db: sled::Db,
    definitions: Tree,
    definition_latest: Tree,
    sagas: Tree,
    idempotency: Tree,
    by_state: Tree,
    by_name: Tree,
    outbox: Tree,
    timers: Tree,
    timer_index: Tree,
    finished: Tree,
    /// The start queue of the concurrency limits (`jetsaga_core::limits`).
    queued: Tree,
    /// Held tasks and circuit breakers ([`jetsaga_core::admission`]).
    admission: Tree,
    /// Service policies ([`jetsaga_core::saga::definition::ServicePolicy`]).
    service_policies: Tree,
    /// Rows in `sagas`.
    saga_rows: AtomicUsize,
    /// Rows in `outbox`.
    outbox_rows: AtomicUsize,
    /// Rows in `timers`.
    timer_rows: AtomicUsize,
    /// Highest outbox sequence written plus one (0: none).
    outbox_written: AtomicU64,
    /// Highest outbox sequence a completed flush covered plus one (0: none).
    outbox_durable: AtomicU64,
    /// Held across id generation and the transaction of a commit, so outbox
    /// sequence numbers become visible in order even with concurrent writers
    /// (a reader paging with `after` never skips a row committed later).
    commit_lock: Mutex<()>,
}

impl std::fmt::Debug for SledStore {
    // sled's own `Debug` of a tree dumps every node: keep this short.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("outbox_rows", &self.outbox_len())
            .field("timer_rows", &self.timers_len())
            .finish_non_exhaustive()
    }
}

/// How the engine's sled database in `dir` is opened. No periodic flush:
/// the engine flushes at every group commit and nothing it has not flushed
/// is promised to anyone, so sled's background fsyncs would only cost IO.
fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
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

    /// Copies every tree of this store into a new sled database at `target`
    /// (which must not hold one) and checks the copy against the original
    /// (sled's checksum over every key and value). The copy holds only live
    /// data: the space of removed records stays behind. See
    /// [`crate::compact`].
    pub fn copy_into(&self, target: &Path) -> Result<(), StoreError> {
        let path = target.display().to_string();
        let copy = sled_config(target)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        if !copy.is_empty() || copy.tree_names().len() > 1 {
            return Err(StoreError::Compact {
                path,
                reason: "the copy's directory already holds data".into(),
            });
        }
        for name in self.db.tree_names() {
            let from = self.db.open_tree(&name)?;
            let to = copy.open_tree(&name)?;
            let mut batch = sled::Batch::default();
            let mut rows = 0usize;
            for entry in from.iter() {
                let (key, value) = entry?;
                batch.insert(key, value);
                rows += 1;
                if rows.is_multiple_of(1024) {
                    to.apply_batch(std::mem::take(&mut batch))?;
                }
            }
            to.apply_batch(batch)?;
        }
        copy.flush()?;
        if copy.checksum()? != self.checksum()? {
            return Err(StoreError::Compact {
                path,
                reason: "the copy's checksum differs from the store's".into(),
            });
        }
        Ok(())
    }

    /// sled's CRC32 over every key and value of the store.
    pub fn checksum(&self) -> Result<u32, StoreError> {
        Ok(self.db.checksum()?)
    }

    /// A temporary store for tests, deleted when dropped.
    pub fn temporary() -> Result<Self, StoreError> {
        let config = sled::Config::new().temporary(true);
        Self::from_config(config, "<temporary>".to_owned(), false)
    }

    fn from_config(config: sled::Config, path: String, existed: bool) -> Result<Self, StoreError> {
        let open_error = |source: sled::Error| {
            if is_lock_error(&source) {
                StoreError::Locked { path: path.clone() }
            } else {
                StoreError::Open {
                    path: path.clone(),
                    source,
                }
            }
        };
        let damaged = |what: String| StoreError::Open {
            path: path.clone(),
            source: sled::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, what)),
        };
        // sled answers some kinds of damage with a panic instead of an error;
        // the engine must report those like any other unopenable store.
        let opened = catch_unwind_quietly(|| config.open());
        let db = match opened {
            Ok(result) => result.map_err(open_error)?,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                return Err(damaged(format!("sled panicked while opening: {what}")));
            }
        };
        match db.get(MARKER_KEY).map_err(open_error)? {
            Some(format) if format.as_ref() == MARKER_FORMAT => {}
            Some(format) => {
                return Err(damaged(format!(
                    "unknown store format {:?} (written by a newer jetsaga?)",
                    String::from_utf8_lossy(&format)
                )));
            }
            None if existed => {
                return Err(damaged(
                    "the directory held a store, but its data file is missing or damaged \
                     (it reads as empty); restore it from a backup, or remove the directory \
                     to start with an empty store"
                        .to_owned(),
                ));
            }
            None => {
                db.insert(MARKER_KEY, MARKER_FORMAT).map_err(open_error)?;
                db.flush().map_err(open_error)?;
            }
        }
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        let store = SledStore {
            path: path.clone(),
            definitions: tree("definitions")?,
            definition_latest: tree("definition_latest")?,
            sagas: tree("sagas")?,
            idempotency: tree("idempotency")?,
            by_state: tree("by_state")?,
            by_name: tree("by_name")?,
            outbox: tree("outbox")?,
            timers: tree("timers")?,
            timer_index: tree("timer_index")?,
            finished: tree("finished")?,
            queued: tree("queued")?,
            admission: tree("admission")?,
            service_policies: tree("service_policies")?,
            saga_rows: AtomicUsize::new(0),
            outbox_rows: AtomicUsize::new(0),
            timer_rows: AtomicUsize::new(0),
            outbox_written: AtomicU64::new(0),
            outbox_durable: AtomicU64::new(0),
            commit_lock: Mutex::new(()),
            db,
        };
        let outbox_rows = count(&store.outbox).map_err(open_error)?;
        let timer_rows = count(&store.timers).map_err(open_error)?;
        // One `by_name` row per saga, and its rows are smaller than records.
        let saga_rows = count(&store.by_name).map_err(open_error)?;
        store.outbox_rows.store(outbox_rows, Ordering::Relaxed);
        store.timer_rows.store(timer_rows, Ordering::Relaxed);
        store.saga_rows.store(saga_rows, Ordering::Relaxed);
        // The rows found are durable once this flush returns (sled may have
        // written them to the file without syncing it before a crash).
        if let Some((key, _)) = store.outbox.last().map_err(open_error)? {
            let seq = u64_of("outbox", &key, &key)?;
            store.db.flush().map_err(open_error)?;
            store.outbox_written.store(seq + 1, Ordering::Relaxed);
            store.outbox_durable.store(seq + 1, Ordering::Relaxed);
        }
        if store
            .db
            .get(FINISHED_INDEX_KEY)
            .map_err(open_error)?
            .is_none()
        {
            store.backfill_finished()?;
        }
        Ok(store)
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

    /// Loads the saga records of `ids`, in that order, keeping those that
    /// pass `keep`, up to `limit`.
    fn load_sagas(
        &self,
        ids: impl Iterator<Item = Result<IVec, StoreError>>,
        keep: impl Fn(&Saga) -> bool,
        limit: usize,
    ) -> Result<Vec<Saga>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= limit {
                break;
            }
            let id = id?;
            // Indexes are written in the same transaction as the record, so a
            // missing record cannot happen; skipping is the safe reading.
            let Some(saga) = self.saga_by_key(&id)? else {
                continue;
            };
            if keep(&saga) {
                out.push(saga);
            }
        }
        Ok(out)
    }

    fn saga_by_key(&self, id: &[u8]) -> Result<Option<Saga>, StoreError> {
        match self.sagas.get(id)? {
            Some(bytes) => decode("sagas", id, &bytes).map(Some),
            None => Ok(None),
        }
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

/// `a ‖ 0x00 ‖ b`.
fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + 1 + b.len());
    key.extend_from_slice(a);
    key.push(SEP);
    key.extend_from_slice(b);
    key
}

/// `finished_at u64 ‖ saga id`: the `finished` key of a terminal saga
/// (`None` for one that is not terminal). A terminal saga always has
/// `finished_at`; `updated_at` stands in should it lack one.
fn finished_key(saga: &Saga) -> Option<Vec<u8>> {
    if !saga.status.is_terminal() {
        return None;
    }
    let at = saga.finished_at.unwrap_or(saga.updated_at);
    Some(finished_key_at(at, saga.id.as_bytes()))
}

/// `at u64 ‖ id`.
fn finished_key_at(at: Millis, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&at.to_be_bytes());
    key.extend_from_slice(id);
    key
}

/// First byte of an outbox frame. Rows written as JSON start with `{`.
const OUTBOX_FRAME: u8 = 0x01;

/// The header of an outbox frame: everything but the payload.
#[derive(serde::Serialize)]
struct OutboxHeaderRef<'a> {
    subject: &'a str,
    msg_id: &'a str,
    headers: &'a [(String, String)],
}

/// [`OutboxHeaderRef`], read back.
#[derive(serde::Deserialize)]
struct OutboxHeader {
    subject: String,
    msg_id: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
}

/// `0x01 ‖ header length u32 ‖ header JSON ‖ payload`.
fn encode_outbox(key: &[u8], msg: &OutboxMessage) -> Result<Vec<u8>, StoreError> {
    let header = encode(
        "outbox",
        key,
        &OutboxHeaderRef {
            subject: &msg.subject,
            msg_id: &msg.msg_id,
            headers: &msg.headers,
        },
    )?;
    let len = u32::try_from(header.len()).map_err(|_| StoreError::Encode {
        key: printable("outbox", key),
        source: serde::ser::Error::custom("outbox header over 4 GiB"),
    })?;
    let mut frame = Vec::with_capacity(5 + header.len() + msg.payload.len());
    frame.push(OUTBOX_FRAME);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&msg.payload);
    Ok(frame)
}

/// Reads an outbox row: a frame, or the JSON of rows written before frames.
fn decode_outbox(key: &[u8], bytes: &[u8]) -> Result<OutboxMessage, StoreError> {
    let Some((&OUTBOX_FRAME, rest)) = bytes.split_first() else {
        return decode("outbox", key, bytes);
    };
    let corrupt = |what: &str| StoreError::Corrupt {
        key: printable("outbox", key),
        source: serde::de::Error::custom(what),
    };
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("outbox frame shorter than its header length"))?;
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if rest.len() < len {
        return Err(corrupt("outbox frame shorter than its header"));
    }
    let (header, payload) = rest.split_at(len);
    let header: OutboxHeader = decode("outbox", key, header)?;
    Ok(OutboxMessage {
        subject: header.subject,
        msg_id: header.msg_id,
        headers: header.headers,
        payload: payload.to_vec(),
    })
}

/// Key of held task `seq` in the `admission` tree.
fn held_key(seq: u64) -> Vec<u8> {
    join_prefix(b'h', &seq.to_be_bytes())
}

/// Key of `service`'s breaker in the `admission` tree.
fn breaker_key(service: &str) -> Vec<u8> {
    join_prefix(b'b', service.as_bytes())
}

fn join_prefix(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(rest.len() + 1);
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

fn definition_key(name: &str, version: u32) -> Vec<u8> {
    join(name.as_bytes(), &version.to_be_bytes())
}

/// `saga id ‖ 0x00 ‖ timer JSON`: the `timer_index` key, and the tail of the
/// `timers` key.
fn timer_ident(saga_id: &str, timer: &TimerKind) -> Result<Vec<u8>, StoreError> {
    let kind = encode("timer_index", saga_id.as_bytes(), timer)?;
    Ok(join(saga_id.as_bytes(), &kind))
}

fn timer_key(due: Millis, ident: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + ident.len());
    key.extend_from_slice(&due.to_be_bytes());
    key.extend_from_slice(ident);
    key
}

fn u64_of(tree: &str, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: printable(tree, key),
        source: serde::de::Error::custom(format!("expected 8 bytes, found {}", bytes.len())),
    })?;
    Ok(u64::from_be_bytes(arr))
}

fn u32_of(tree: &str, key: &[u8], bytes: &[u8]) -> Result<u32, StoreError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        key: printable(tree, key),
        source: serde::de::Error::custom(format!("expected 4 bytes, found {}", bytes.len())),
    })?;
    Ok(u32::from_be_bytes(arr))
}

/// A key as text for error messages: `tree/part/part`.
fn printable(tree: &str, key: &[u8]) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).replace('\0', "/");
    let shown = match tree {
        "outbox" | "queued" => match <[u8; 8]>::try_from(key) {
            Ok(seq) => u64::from_be_bytes(seq).to_string(),
            Err(_) => text(key),
        },
        "timers" | "finished" if key.len() >= 8 => {
            let (due, ident) = key.split_at(8);
            let due = u64::from_be_bytes(due.try_into().unwrap_or_default());
            format!("{due}/{}", text(ident))
        }
        "definitions" if key.len() >= 5 => {
            let (name, version) = key.split_at(key.len() - 4);
            let version = u32::from_be_bytes(version.try_into().unwrap_or_default());
            format!("{}v{version}", text(name))
        }
        _ => text(key),
    };
    format!("{tree}/{shown}")
}

fn decode<T: DeserializeOwned>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: printable(tree, key),
        source,
    })
}

fn encode<T: Serialize + ?Sized>(tree: &str, key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        key: printable(tree, key),
        source,
    })
}

fn tx_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Io(e),
    }
}

/// Two definitions are the same content when they are equal as JSON with the
/// version left out.
fn same_content(a: &SagaDefinition, b: &SagaDefinition) -> Result<bool, StoreError> {
    let value = |d: &SagaDefinition| {
        let mut d = d.clone();
        d.version = 0;
        serde_json::to_value(&d).map_err(|source| StoreError::Encode {
            key: format!("definitions/{}", d.name),
            source,
        })
    };
    Ok(value(a)? == value(b)?)
}

/// A change's saga record and index keys, encoded.
struct SagaRow {
    id: Vec<u8>,
    bytes: Vec<u8>,
    state_key: Vec<u8>,
    name_key: Vec<u8>,
    finished_key: Option<Vec<u8>>,
    prior: Prior,
    idempotency_key: Option<String>,
}

/// A [`Change`] encoded for the transaction (outbox rows are added under
/// the commit lock, which numbers them).
struct Encoded {
    saga: Option<SagaRow>,
    outbox: Vec<OutboxRow>,
    timer_removes: Vec<Vec<u8>>,
    timer_adds: Vec<TimerAdd>,
    queue_adds: Vec<([u8; 8], Vec<u8>)>,
    queue_removes: Vec<u64>,
    held_adds: Vec<(Vec<u8>, Vec<u8>)>,
    held_removes: Vec<u64>,
    breakers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Encoded {
    fn of(change: &Change) -> Result<Self, StoreError> {
        debug_assert!(
            change.idempotency_key.is_none() || change.saga.is_some(),
            "an idempotency key needs the saga it binds to"
        );
        let saga = match &change.saga {
            Some(saga) => Some(SagaRow {
                id: saga.id.as_bytes().to_vec(),
                bytes: encode("sagas", saga.id.as_bytes(), saga)?,
                state_key: join(saga.status.name().as_bytes(), saga.id.as_bytes()),
                name_key: join(saga.name.as_bytes(), saga.id.as_bytes()),
                finished_key: finished_key(saga),
                prior: change.prior.clone(),
                idempotency_key: change.idempotency_key.clone(),
            }),
            None => None,
        };
        let timer_removes = change
            .timers_remove
            .iter()
            .map(|(id, kind)| timer_ident(id, kind))
            .collect::<Result<Vec<_>, _>>()?;
        let timer_adds = change
            .timers_add
            .iter()
            .map(|row| {
                let ident = timer_ident(&row.saga_id, &row.timer)?;
                let row_bytes = encode("timers", &timer_key(row.due, &ident), row)?;
                Ok(TimerAdd {
                    ident,
                    due: row.due,
                    row: row_bytes,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let queue_adds = change
            .queue_add
            .iter()
            .map(|(seq, row)| {
                Ok((
                    seq.to_be_bytes(),
                    encode("queued", &seq.to_be_bytes(), row)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // Held tasks and breakers ([`jetsaga_core::admission`]).
        let held_adds = change
            .held_add
            .iter()
            .map(|(seq, task)| {
                let key = held_key(*seq);
                let value = encode("admission", &key, task)?;
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let breakers = change
            .breakers
            .iter()
            .map(|(service, state)| {
                let key = breaker_key(service);
                let value = match state {
                    Some(state) => Some(encode("admission", &key, state)?),
                    None => None,
                };
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Encoded {
            saga,
            outbox: Vec::new(),
            timer_removes,
            timer_adds,
            queue_adds,
            queue_removes: change.queue_remove.clone(),
            held_adds,
            held_removes: change.held_remove.clone(),
            breakers,
        })
    }
}

/// Debug builds check that a known [`Prior`] is the stored record's: a
/// writer whose memory drifted from the store would otherwise leave stale
/// index entries behind.
#[cfg(debug_assertions)]
fn check_prior(
    sagas: &sled::transaction::TransactionalTree,
    id: &[u8],
    prior: &Prior,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let stored = match sagas.get(id)? {
        Some(bytes) => {
            Some(decode::<Saga>("sagas", id, &bytes).map_err(ConflictableTransactionError::Abort)?)
        }
        None => None,
    };
    match (prior, stored) {
        (Prior::Unknown, _) | (Prior::Absent, None) => {}
        (Prior::Stored { .. }, Some(stored)) => {
            debug_assert_eq!(&Prior::of(&stored), prior, "stale prior of saga {stored:?}")
        }
        (prior, stored) => panic!("prior {prior:?} of a saga stored as {stored:?}"),
    }
    Ok(())
}

/// An outbox row ready to insert.
struct OutboxRow {
    key: [u8; 8],
    value: Vec<u8>,
}

/// A timer to arm, encoded.
struct TimerAdd {
    ident: Vec<u8>,
    due: Millis,
    row: Vec<u8>,
}

impl Store for SledStore {
    fn put_definition(&self, def: &SagaDefinition) -> Result<Applied, StoreError> {
        let name = def.name.as_str();
        (&self.definitions, &self.definition_latest)
            .transaction(|(definitions, latest)| {
                let current = match latest.get(name.as_bytes())? {
                    Some(v) => Some(
                        u32_of("definition_latest", name.as_bytes(), &v)
                            .map_err(ConflictableTransactionError::Abort)?,
                    ),
                    None => None,
                };
                if let Some(version) = current {
                    let key = definition_key(name, version);
                    if let Some(bytes) = definitions.get(&key)? {
                        let stored: SagaDefinition = decode("definitions", &key, &bytes)
                            .map_err(ConflictableTransactionError::Abort)?;
                        if same_content(&stored, def)
                            .map_err(ConflictableTransactionError::Abort)?
                        {
                            return Ok(Applied {
                                name: name.to_owned(),
                                version,
                                changed: false,
                            });
                        }
                    }
                }
                let version = current.map_or(1, |v| v.saturating_add(1));
                let key = definition_key(name, version);
                let mut stored = def.clone();
                stored.version = version;
                let bytes = encode("definitions", &key, &stored)
                    .map_err(ConflictableTransactionError::Abort)?;
                definitions.insert(key, bytes)?;
                latest.insert(name.as_bytes(), &version.to_be_bytes())?;
                Ok(Applied {
                    name: name.to_owned(),
                    version,
                    changed: true,
                })
            })
            .map_err(tx_error)
    }

    fn definition(&self, name: &str, version: u32) -> Result<Option<SagaDefinition>, StoreError> {
        let key = definition_key(name, version);
        match self.definitions.get(&key)? {
            Some(bytes) => decode("definitions", &key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn latest_definition(&self, name: &str) -> Result<Option<SagaDefinition>, StoreError> {
        match self.definition_latest.get(name.as_bytes())? {
            Some(v) => self.definition(name, u32_of("definition_latest", name.as_bytes(), &v)?),
            None => Ok(None),
        }
    }

    fn list_definitions(&self) -> Result<Vec<SagaDefinition>, StoreError> {
        let mut out = Vec::new();
        for entry in self.definition_latest.iter() {
            let (name, v) = entry?;
            let version = u32_of("definition_latest", &name, &v)?;
            let key = join(&name, &version.to_be_bytes());
            if let Some(bytes) = self.definitions.get(&key)? {
                out.push(decode("definitions", &key, &bytes)?);
            }
        }
        Ok(out)
    }

    fn saga(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        self.saga_by_key(id.as_bytes())
    }

    fn saga_by_idempotency_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        match self.idempotency.get(key.as_bytes())? {
            Some(id) => match String::from_utf8(id.to_vec()) {
                Ok(id) => Ok(Some(id)),
                Err(e) => Err(StoreError::Corrupt {
                    key: printable("idempotency", key.as_bytes()),
                    source: serde::de::Error::custom(e),
                }),
            },
            None => Ok(None),
        }
    }

    fn list_sagas(&self, filter: &SagaFilter) -> Result<Vec<Saga>, StoreError> {
        let limit = if filter.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            filter.limit
        };
        let before = filter.before.as_deref().map(str::as_bytes);
        let index = match (&filter.state, &filter.name) {
            (Some(state), _) => Some((&self.by_state, state.as_bytes())),
            (None, Some(name)) => Some((&self.by_name, name.as_bytes())),
            (None, None) => None,
        };
        let keep = |s: &Saga| {
            filter
                .state
                .as_deref()
                .is_none_or(|st| s.status.name() == st)
                && filter.name.as_deref().is_none_or(|n| s.name == n)
        };
        match index {
            Some((tree, value)) => {
                let prefix = join(value, b"");
                let skip = prefix.len();
                let iter = match before {
                    Some(before) => tree.range(prefix.clone()..join(value, before)),
                    None => tree.scan_prefix(&prefix),
                };
                let ids = iter.keys().rev().map(|k| {
                    k.map(|k| k.subslice(skip, k.len() - skip))
                        .map_err(StoreError::Io)
                });
                self.load_sagas(ids, keep, limit)
            }
            None => {
                let iter = match before {
                    Some(before) => self.sagas.range::<&[u8], _>(..before),
                    None => self.sagas.iter(),
                };
                let mut out = Vec::new();
                for entry in iter.rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let (id, bytes) = entry?;
                    out.push(decode("sagas", &id, &bytes)?);
                }
                Ok(out)
            }
        }
    }

    fn unfinished_sagas(&self) -> Result<Vec<Saga>, StoreError> {
        let mut ids = Vec::new();
        for state in UNFINISHED_STATES {
            let prefix = join(state.as_bytes(), b"");
            for key in self.by_state.scan_prefix(&prefix).keys() {
                let key = key?;
                ids.push(key.subslice(prefix.len(), key.len() - prefix.len()));
            }
        }
        ids.sort();
        ids.dedup();
        self.load_sagas(ids.into_iter().map(Ok), |_| true, usize::MAX)
    }

    fn commit_many(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        // Encode everything first: the transaction closure may run more than
        // once and should only move bytes.
        let mut encoded = changes
            .iter()
            .map(Encoded::of)
            .collect::<Result<Vec<_>, StoreError>>()?;

        let _guard = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Ids come before the transaction (it may be retried), in order, so
        // the batch's rows keep their order and later commits sort after.
        let mut last_seq = None;
        for (change, enc) in changes.iter().zip(&mut encoded) {
            enc.outbox.reserve(change.outbox.len());
            for msg in &change.outbox {
                let seq = self.db.generate_id()?;
                let key = seq.to_be_bytes();
                enc.outbox.push(OutboxRow {
                    value: encode_outbox(&key, msg)?,
                    key,
                });
                last_seq = Some(seq);
            }
        }

        let (timer_delta, new_sagas) = (
            &self.sagas,
            &self.idempotency,
            &self.by_state,
            &self.by_name,
            &self.outbox,
            &self.timers,
            &self.timer_index,
            &self.finished,
            &self.queued,
            &self.admission,
        )
            .transaction(
                |(
                    sagas,
                    idempotency,
                    by_state,
                    by_name,
                    outbox,
                    timers,
                    timer_index,
                    finished,
                    queued,
                    admission,
                )| {
                    let mut new_sagas = 0usize;
                    let mut delta: isize = 0;
                    for enc in &encoded {
                        if let Some(saga) = &enc.saga {
                            let id = saga.id.as_slice();
                            #[cfg(debug_assertions)]
                            check_prior(sagas, id, &saga.prior)?;
                            match &saga.prior {
                                Prior::Unknown => {
                                    // Reads this transaction's earlier writes too.
                                    if let Some(prev) = sagas.get(id)? {
                                        let prev: Saga = decode("sagas", id, &prev)
                                            .map_err(ConflictableTransactionError::Abort)?;
                                        by_state.remove(join(prev.status.name().as_bytes(), id))?;
                                        by_name.remove(join(prev.name.as_bytes(), id))?;
                                        if let Some(key) = finished_key(&prev) {
                                            finished.remove(key)?;
                                        }
                                    } else {
                                        new_sagas += 1;
                                    }
                                    by_state.insert(saga.state_key.as_slice(), &[])?;
                                    by_name.insert(saga.name_key.as_slice(), &[])?;
                                    if let Some(key) = &saga.finished_key {
                                        finished.insert(key.as_slice(), &[])?;
                                    }
                                }
                                Prior::Absent => {
                                    new_sagas += 1;
                                    by_state.insert(saga.state_key.as_slice(), &[])?;
                                    by_name.insert(saga.name_key.as_slice(), &[])?;
                                    if let Some(key) = &saga.finished_key {
                                        finished.insert(key.as_slice(), &[])?;
                                    }
                                }
                                Prior::Stored {
                                    state,
                                    finished: finished_at,
                                } => {
                                    // Same saga, same name: `by_name` stays.
                                    let old_state = join(state.as_bytes(), id);
                                    if old_state != saga.state_key {
                                        by_state.remove(old_state)?;
                                        by_state.insert(saga.state_key.as_slice(), &[])?;
                                    }
                                    let old_finished =
                                        finished_at.map(|at| finished_key_at(at, id));
                                    if old_finished != saga.finished_key {
                                        if let Some(key) = old_finished {
                                            finished.remove(key)?;
                                        }
                                        if let Some(key) = &saga.finished_key {
                                            finished.insert(key.as_slice(), &[])?;
                                        }
                                    }
                                }
                            }
                            sagas.insert(id, saga.bytes.as_slice())?;
                            if let Some(key) = &saga.idempotency_key {
                                idempotency.insert(key.as_bytes(), id)?;
                            }
                        }
                        for row in &enc.outbox {
                            outbox.insert(&row.key, row.value.as_slice())?;
                        }
                        for ident in &enc.timer_removes {
                            if let Some(due) = timer_index.remove(ident.as_slice())? {
                                let due = u64_of("timer_index", ident, &due)
                                    .map_err(ConflictableTransactionError::Abort)?;
                                if timers.remove(timer_key(due, ident))?.is_some() {
                                    delta -= 1;
                                }
                            }
                        }
                        for add in &enc.timer_adds {
                            // Re-arming a timer moves it: drop the row at its old due time.
                            if let Some(old) =
                                timer_index.insert(add.ident.as_slice(), &add.due.to_be_bytes())?
                            {
                                let old = u64_of("timer_index", &add.ident, &old)
                                    .map_err(ConflictableTransactionError::Abort)?;
                                if timers.remove(timer_key(old, &add.ident))?.is_some() {
                                    delta -= 1;
                                }
                            }
                            if timers
                                .insert(timer_key(add.due, &add.ident), add.row.as_slice())?
                                .is_none()
                            {
                                delta += 1;
                            }
                        }
                        for (key, row) in &enc.queue_adds {
                            queued.insert(key, row.as_slice())?;
                        }
                        for seq in &enc.queue_removes {
                            queued.remove(&seq.to_be_bytes())?;
                        }
                        for (key, value) in &enc.held_adds {
                            admission.insert(key.as_slice(), value.as_slice())?;
                        }
                        for seq in &enc.held_removes {
                            admission.remove(held_key(*seq))?;
                        }
                        for (key, value) in &enc.breakers {
                            match value {
                                Some(value) => {
                                    admission.insert(key.as_slice(), value.as_slice())?
                                }
                                None => admission.remove(key.as_slice())?,
                            };
                        }
                    }
                    Ok((delta, new_sagas))
                },
            )
            .map_err(tx_error)?;
        self.saga_rows.fetch_add(new_sagas, Ordering::Relaxed);
        let rows: usize = encoded.iter().map(|e| e.outbox.len()).sum();
        self.outbox_rows.fetch_add(rows, Ordering::Relaxed);
        if timer_delta >= 0 {
            self.timer_rows
                .fetch_add(timer_delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            self.timer_rows
                .fetch_sub(timer_delta.unsigned_abs(), Ordering::Relaxed);
        }
        if let Some(seq) = last_seq {
            // Written (not yet durable): the next flush covers it.
            self.outbox_written.store(seq + 1, Ordering::Release);
        }
        Ok(())
    }

    fn delete_saga(&self, id: &str) -> Result<Option<Saga>, StoreError> {
        // Writes are serialized by the commit lock, so the saga's timers
        // listed here (a sled transaction cannot scan) are all of them.
        let _guard = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prefix = join(id.as_bytes(), b"");
        let mut timer_idents = Vec::new();
        for key in self.timer_index.scan_prefix(&prefix).keys() {
            timer_idents.push(key?);
        }
        let (deleted, removed_timers) = (
            &self.sagas,
            &self.idempotency,
            &self.by_state,
            &self.by_name,
            &self.timers,
            &self.timer_index,
            &self.finished,
        )
            .transaction(
                |(sagas, idempotency, by_state, by_name, timers, timer_index, finished)| {
                    let Some(bytes) = sagas.remove(id.as_bytes())? else {
                        return Ok((None, 0));
                    };
                    let saga: Saga = decode("sagas", id.as_bytes(), &bytes)
                        .map_err(ConflictableTransactionError::Abort)?;
                    by_state.remove(join(saga.status.name().as_bytes(), id.as_bytes()))?;
                    by_name.remove(join(saga.name.as_bytes(), id.as_bytes()))?;
                    if let Some(key) = finished_key(&saga) {
                        finished.remove(key)?;
                    }
                    if let Some(key) = &saga.idempotency_key {
                        // Only the binding to this saga: never another saga's.
                        if idempotency.get(key.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                            idempotency.remove(key.as_bytes())?;
                        }
                    }
                    let mut removed = 0usize;
                    for ident in &timer_idents {
                        if let Some(due) = timer_index.remove(ident)? {
                            let due = u64_of("timer_index", ident, &due)
                                .map_err(ConflictableTransactionError::Abort)?;
                            if timers.remove(timer_key(due, ident))?.is_some() {
                                removed += 1;
                            }
                        }
                    }
                    Ok((Some(saga), removed))
                },
            )
            .map_err(tx_error)?;
        self.timer_rows.fetch_sub(removed_timers, Ordering::Relaxed);
        if deleted.is_some() {
            self.saga_rows.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(deleted)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // Rows written before the flush starts are durable when it returns
        // (it syncs everything written by the time it runs, maybe more).
        let written = self.outbox_written.load(Ordering::Acquire);
        Box::pin(async move {
            self.db.flush_async().await?;
            self.outbox_durable.fetch_max(written, Ordering::AcqRel);
            Ok(())
        })
    }

    fn outbox_durable(&self) -> Option<u64> {
        self.outbox_durable.load(Ordering::Acquire).checked_sub(1)
    }

    fn outbox(&self, through: u64, limit: usize) -> Result<Vec<(u64, OutboxMessage)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.outbox.range(..=through.to_be_bytes()).take(limit) {
            let (key, bytes) = entry?;
            let seq = u64_of("outbox", &key, &key)?;
            out.push((seq, decode_outbox(&key, &bytes)?));
        }
        Ok(out)
    }

    fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let removed = self
            .outbox
            .transaction(|outbox| {
                let mut removed = 0usize;
                for seq in seqs {
                    if outbox.remove(&seq.to_be_bytes())?.is_some() {
                        removed += 1;
                    }
                }
                Ok(removed)
            })
            .map_err(tx_error)?;
        self.outbox_rows.fetch_sub(removed, Ordering::Relaxed);
        Ok(())
    }

    fn outbox_len(&self) -> usize {
        self.outbox_rows.load(Ordering::Relaxed)
    }

    fn next_timer(&self) -> Result<Option<TimerRow>, StoreError> {
        match self.timers.first()? {
            Some((key, bytes)) => decode("timers", &key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn due_timers(&self, now: Millis, limit: usize) -> Result<Vec<TimerRow>, StoreError> {
        // Every key whose due prefix is <= now sorts before (now + 1) ‖ ….
        let iter = match now.checked_add(1) {
            Some(end) => self.timers.range(..end.to_be_bytes()),
            None => self.timers.iter(),
        };
        let mut out = Vec::new();
        for entry in iter.take(limit) {
            let (key, bytes) = entry?;
            out.push(decode("timers", &key, &bytes)?);
        }
        Ok(out)
    }

    fn timers_len(&self) -> usize {
        self.timer_rows.load(Ordering::Relaxed)
    }

    fn finished_before(&self, before: Millis, limit: usize) -> Result<Vec<String>, StoreError> {
        // Every key finished at or before `before` sorts before (before + 1) ‖ ….
        let iter = match before.checked_add(1) {
            Some(end) => self.finished.range(..end.to_be_bytes()),
            None => self.finished.iter(),
        };
        let mut out = Vec::new();
        for key in iter.keys().take(limit) {
            let key = key?;
            let id = key.get(8..).unwrap_or_default();
            match std::str::from_utf8(id) {
                Ok(id) => out.push(id.to_owned()),
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        key: printable("finished", &key),
                        source: serde::de::Error::custom(e),
                    });
                }
            }
        }
        Ok(out)
    }

    fn sagas_len(&self) -> usize {
        self.saga_rows.load(Ordering::Relaxed)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn queued(&self) -> Result<Vec<(u64, QueuedRow)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.queued.iter() {
            let (key, bytes) = entry?;
            out.push((
                u64_of("queued", &key, &key)?,
                decode("queued", &key, &bytes)?,
            ));
        }
        Ok(out)
    }

    fn queue_position(&self, id: &str) -> Result<Option<usize>, StoreError> {
        for (n, entry) in self.queued.iter().enumerate() {
            let (key, bytes) = entry?;
            let row: QueuedRow = decode("queued", &key, &bytes)?;
            if row.saga_id == id {
                return Ok(Some(n + 1));
            }
        }
        Ok(None)
    }

    fn held_tasks(&self) -> Result<Vec<(u64, super::HeldTask)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.admission.scan_prefix([b'h']) {
            let (key, bytes) = entry?;
            let seq = u64_of("admission", &key, &key[1..])?;
            out.push((seq, decode("admission", &key, &bytes)?));
        }
        Ok(out)
    }

    fn held_task(&self, seq: u64) -> Result<Option<super::HeldTask>, StoreError> {
        let key = held_key(seq);
        match self.admission.get(&key)? {
            Some(bytes) => decode("admission", &key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn breakers(&self) -> Result<Vec<(String, jetsaga_core::admission::BreakerState)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.admission.scan_prefix([b'b']) {
            let (key, bytes) = entry?;
            let service = String::from_utf8_lossy(&key[1..]).into_owned();
            out.push((service, decode("admission", &key, &bytes)?));
        }
        Ok(out)
    }

    fn put_service_policy(
        &self,
        policy: &jetsaga_core::saga::definition::ServicePolicy,
    ) -> Result<bool, StoreError> {
        let key = policy.service.as_bytes();
        let value = encode("service_policies", key, policy)?;
        let old = self.service_policies.insert(key, value.as_slice())?;
        Ok(old.as_deref() != Some(value.as_slice()))
    }

    fn service_policies(
        &self,
    ) -> Result<Vec<jetsaga_core::saga::definition::ServicePolicy>, StoreError> {
        let mut out = Vec::new();
        for entry in self.service_policies.iter() {
            let (key, bytes) = entry?;
            out.push(decode("service_policies", &key, &bytes)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsaga_core::saga::definition::{RetryPolicy, StepDefinition};
    use jetsaga_core::saga::state::{SagaState, SagaStatus};
    use jetsaga_protocol::TaskKind;
    use std::time::Duration;

    fn saga(id: &str, name: &str, status: SagaStatus) -> Saga {
        Saga {
            id: id.to_owned(),
            name: name.to_owned(),
            definition_version: 1,
            input: serde_json::json!({ "order": id }),
            idempotency_key: None,
            generation: 0,
            status,
            steps: vec![],
            created_at: 1_000,
            updated_at: 1_000,
            finished_at: None,
            trace_parent: None,
            event_seq: 0,
        }
    }

    fn definition(name: &str, operation: &str) -> SagaDefinition {
        SagaDefinition {
            name: name.to_owned(),
            version: 0,
            timeout: Some(Duration::from_secs(60)),
            steps: vec![StepDefinition {
                id: "reserve".to_owned(),
                service: "inventory".to_owned(),
                operation: operation.to_owned(),
                compensation: Some("release".to_owned()),
                timeout: Duration::from_secs(5),
                retry: RetryPolicy::default(),
                depends_on: vec![],
            }],
            triggers: Vec::new(),
            policy: Default::default(),
            max_running: None,
        }
    }

    fn msg(n: u32) -> OutboxMessage {
        OutboxMessage {
            subject: format!("jetsaga.task.{n}"),
            msg_id: format!("msg-{n}"),
            headers: vec![("k".to_owned(), n.to_string())],
            payload: n.to_be_bytes().to_vec(),
        }
    }

    fn timer(saga_id: &str, timer: TimerKind, due: Millis) -> TimerRow {
        TimerRow {
            saga_id: saga_id.to_owned(),
            timer,
            due,
        }
    }

    fn step_timeout(step: usize, attempt: u32) -> TimerKind {
        TimerKind::StepTimeout {
            step,
            kind: TaskKind::Action,
            attempt,
        }
    }

    fn put(store: &SledStore, s: Saga) {
        store
            .commit(Change {
                saga: Some(s),
                ..Change::default()
            })
            .unwrap();
    }

    fn ids(sagas: &[Saga]) -> Vec<&str> {
        sagas.iter().map(|s| s.id.as_str()).collect()
    }

    fn running() -> SagaStatus {
        SagaStatus::Running
    }

    #[test]
    fn definitions_are_versioned_by_content() {
        let store = SledStore::temporary().unwrap();
        assert_eq!(store.latest_definition("order").unwrap(), None);

        let v1 = definition("order", "reserve");
        let applied = store.put_definition(&v1).unwrap();
        assert_eq!(
            applied,
            Applied {
                name: "order".into(),
                version: 1,
                changed: true
            }
        );
        // Same content (whatever the version field says) keeps the version.
        let mut again = v1.clone();
        again.version = 7;
        let applied = store.put_definition(&again).unwrap();
        assert_eq!((applied.version, applied.changed), (1, false));

        let v2 = definition("order", "reserve_v2");
        let applied = store.put_definition(&v2).unwrap();
        assert_eq!((applied.version, applied.changed), (2, true));

        let old = store.definition("order", 1).unwrap().unwrap();
        assert_eq!(old.version, 1);
        assert_eq!(old.steps[0].operation, "reserve");
        let latest = store.latest_definition("order").unwrap().unwrap();
        assert_eq!(latest.version, 2);
        assert_eq!(latest.steps[0].operation, "reserve_v2");
        assert_eq!(store.definition("order", 3).unwrap(), None);

        // Going back to old content is a new version, not a rollback.
        let applied = store.put_definition(&v1).unwrap();
        assert_eq!((applied.version, applied.changed), (3, true));

        store
            .put_definition(&definition("billing", "charge"))
            .unwrap();
        let all = store.list_definitions().unwrap();
        let names: Vec<_> = all.iter().map(|d| (d.name.as_str(), d.version)).collect();
        assert_eq!(names, vec![("billing", 1), ("order", 3)]);
    }

    #[test]
    fn commit_writes_saga_index_outbox_and_timers_together() {
        let store = SledStore::temporary().unwrap();
        let mut s = saga("0001", "order", SagaStatus::Pending);
        s.idempotency_key = Some("req-1".into());
        store
            .commit(Change {
                saga: Some(s.clone()),
                idempotency_key: Some("req-1".into()),
                outbox: vec![msg(1), msg(2)],
                timers_add: vec![timer("0001", TimerKind::SagaTimeout, 5_000)],
                timers_remove: vec![("0001".into(), step_timeout(0, 1))],
                ..Default::default()
            })
            .unwrap();

        assert_eq!(store.saga("0001").unwrap(), Some(s.clone()));
        assert_eq!(store.saga("0002").unwrap(), None);
        assert_eq!(
            store.saga_by_idempotency_key("req-1").unwrap().as_deref(),
            Some("0001")
        );
        assert_eq!(store.saga_by_idempotency_key("req-2").unwrap(), None);
        let rows = store.outbox(u64::MAX, 10).unwrap();
        assert_eq!(
            rows.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
            vec![msg(1), msg(2)]
        );
        assert_eq!(store.outbox_len(), 2);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0001", TimerKind::SagaTimeout, 5_000))
        );
        assert_eq!(store.timers_len(), 1);
        let pending = SagaFilter {
            state: Some("pending".into()),
            ..SagaFilter::default()
        };
        assert_eq!(store.list_sagas(&pending).unwrap(), vec![s]);
        futures::executor::block_on(store.flush()).unwrap();
    }

    #[test]
    fn a_failed_commit_writes_nothing() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0001", "order", running()));
        // Damage the stored record: the commit must decode it to move the
        // state index, fails, and must leave no outbox row or timer behind.
        store.sagas.insert("0001", &b"{not json"[..]).unwrap();
        let err = store
            .commit(Change {
                saga: Some(saga("0001", "order", SagaStatus::Completed)),
                idempotency_key: Some("k".into()),
                outbox: vec![msg(1)],
                timers_add: vec![timer("0001", TimerKind::SagaTimeout, 1)],
                timers_remove: vec![],
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if key == "sagas/0001"),
            "{err}"
        );
        assert!(err.to_string().starts_with("E-STORE-CORRUPT"), "{err}");
        assert_eq!(store.outbox(u64::MAX, 10).unwrap(), vec![]);
        assert_eq!(store.outbox_len(), 0);
        assert_eq!(store.next_timer().unwrap(), None);
        assert_eq!(store.timers_len(), 0);
        assert_eq!(store.saga_by_idempotency_key("k").unwrap(), None);
        assert!(matches!(
            store.saga("0001"),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn state_index_follows_status_changes() {
        let store = SledStore::temporary().unwrap();
        let by_state = |state: &str| {
            let filter = SagaFilter {
                state: Some(state.into()),
                ..SagaFilter::default()
            };
            store
                .list_sagas(&filter)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
        };
        put(&store, saga("0001", "order", SagaStatus::Pending));
        put(&store, saga("0002", "order", SagaStatus::Pending));
        assert_eq!(by_state("pending"), vec!["0002", "0001"]);

        put(&store, saga("0001", "order", running()));
        assert_eq!(by_state("pending"), vec!["0002"]);
        assert_eq!(by_state("running"), vec!["0001"]);

        put(
            &store,
            saga(
                "0001",
                "order",
                SagaStatus::Compensating {
                    reason: "boom".into(),
                },
            ),
        );
        put(
            &store,
            saga(
                "0001",
                "order",
                SagaStatus::PartiallyCompensated {
                    reason: "boom".into(),
                    stuck_steps: vec!["reserve".into()],
                },
            ),
        );
        assert!(by_state("running").is_empty());
        assert!(by_state("compensating").is_empty());
        assert_eq!(by_state("partially_compensated"), vec!["0001"]);
        assert_eq!(store.by_state.len(), 2, "one index entry per saga");
        assert_eq!(store.by_name.len(), 2);
        assert_eq!(ids(&store.unfinished_sagas().unwrap()), vec!["0002"]);
    }

    #[test]
    fn unfinished_states_are_the_non_terminal_ones() {
        let all = [
            SagaStatus::Pending,
            SagaStatus::Running,
            SagaStatus::Compensating { reason: "r".into() },
            SagaStatus::Completed,
            SagaStatus::Compensated { reason: "r".into() },
            SagaStatus::Failed { reason: "r".into() },
            SagaStatus::PartiallyCompensated {
                reason: "r".into(),
                stuck_steps: vec![],
            },
            SagaStatus::Cancelled { reason: "r".into() },
        ];
        let names: Vec<_> = all.iter().map(SagaStatus::name).collect();
        let every: Vec<_> = SagaState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, every, "a status is missing here");
        let unfinished: Vec<_> = all
            .iter()
            .filter(|s| !s.is_terminal())
            .map(SagaStatus::name)
            .collect();
        assert_eq!(unfinished, UNFINISHED_STATES);
    }

    #[test]
    fn unfinished_sagas_are_oldest_first() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0003", "order", SagaStatus::Pending));
        put(&store, saga("0001", "order", running()));
        put(&store, saga("0002", "order", SagaStatus::Completed));
        put(
            &store,
            saga(
                "0004",
                "ship",
                SagaStatus::Compensating { reason: "x".into() },
            ),
        );
        put(
            &store,
            saga("0005", "ship", SagaStatus::Cancelled { reason: "x".into() }),
        );
        assert_eq!(
            ids(&store.unfinished_sagas().unwrap()),
            vec!["0001", "0003", "0004"]
        );
    }

    #[test]
    fn list_sagas_filters_pages_and_orders_newest_first() {
        let store = SledStore::temporary().unwrap();
        for n in 0..120u32 {
            let name = if n % 2 == 0 { "order" } else { "ship" };
            let status = if n % 3 == 0 {
                SagaStatus::Completed
            } else {
                running()
            };
            put(&store, saga(&format!("{n:04}"), name, status));
        }
        let list = |f: SagaFilter| store.list_sagas(&f).unwrap();

        // No filter, default limit.
        let all = list(SagaFilter::default());
        assert_eq!(all.len(), DEFAULT_LIST_LIMIT);
        assert_eq!(all[0].id, "0119");
        assert_eq!(all[99].id, "0020");

        // Paging with `before` walks the rest without overlap.
        let page = list(SagaFilter {
            before: Some(all[99].id.clone()),
            limit: 50,
            ..SagaFilter::default()
        });
        assert_eq!(page.len(), 20);
        assert_eq!(page[0].id, "0019");
        assert_eq!(page[19].id, "0000");

        // By name.
        let ships = list(SagaFilter {
            name: Some("ship".into()),
            limit: 3,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&ships), vec!["0119", "0117", "0115"]);
        let ships = list(SagaFilter {
            name: Some("ship".into()),
            before: Some("0115".into()),
            limit: 2,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&ships), vec!["0113", "0111"]);

        // By state, and by state and name.
        let done = list(SagaFilter {
            state: Some("completed".into()),
            limit: 3,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&done), vec!["0117", "0114", "0111"]);
        let done_orders = list(SagaFilter {
            state: Some("completed".into()),
            name: Some("order".into()),
            limit: 3,
            ..SagaFilter::default()
        });
        assert_eq!(ids(&done_orders), vec!["0114", "0108", "0102"]);
        let done_orders = list(SagaFilter {
            state: Some("completed".into()),
            name: Some("order".into()),
            before: Some("0102".into()),
            limit: 1,
        });
        assert_eq!(ids(&done_orders), vec!["0096"]);

        // Nothing matches.
        assert!(
            list(SagaFilter {
                state: Some("nope".into()),
                ..SagaFilter::default()
            })
            .is_empty()
        );
        assert!(
            list(SagaFilter {
                name: Some("ord".into()),
                ..SagaFilter::default()
            })
            .is_empty(),
            "a name is not a prefix match"
        );
        assert!(
            list(SagaFilter {
                before: Some("0000".into()),
                ..SagaFilter::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn idempotency_key_binds_to_its_saga() {
        let store = SledStore::temporary().unwrap();
        let mut s = saga("0001", "order", SagaStatus::Pending);
        s.idempotency_key = Some("order-42".into());
        store
            .commit(Change {
                saga: Some(s),
                idempotency_key: Some("order-42".into()),
                ..Change::default()
            })
            .unwrap();
        // Later commits of the saga leave the binding alone.
        put(&store, saga("0001", "order", running()));
        assert_eq!(
            store
                .saga_by_idempotency_key("order-42")
                .unwrap()
                .as_deref(),
            Some("0001")
        );
    }

    #[test]
    fn delete_removes_the_saga_its_indexes_timers_and_key_binding_together() {
        let store = SledStore::temporary().unwrap();
        let mut doomed = saga("0001", "order", SagaStatus::Completed);
        doomed.idempotency_key = Some("order-42".into());
        let mut other = saga("0002", "order", SagaStatus::Completed);
        other.idempotency_key = Some("order-43".into());
        for s in [&doomed, &other] {
            store
                .commit(Change {
                    saga: Some(s.clone()),
                    idempotency_key: s.idempotency_key.clone(),
                    outbox: vec![msg(1)],
                    timers_add: vec![
                        timer(&s.id, TimerKind::SagaTimeout, 500),
                        timer(&s.id, step_timeout(0, 1), 100),
                    ],
                    timers_remove: vec![],
                    ..Default::default()
                })
                .unwrap();
        }
        // A saga whose id extends the doomed one's: its timers must stay.
        store
            .commit(Change {
                timers_add: vec![timer("00011", TimerKind::SagaTimeout, 50)],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 5);

        assert_eq!(store.delete_saga("0001").unwrap(), Some(doomed.clone()));
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(store.saga_by_idempotency_key("order-42").unwrap(), None);
        assert_eq!(
            store
                .saga_by_idempotency_key("order-43")
                .unwrap()
                .as_deref(),
            Some("0002")
        );
        let all = store.list_sagas(&SagaFilter::default()).unwrap();
        assert_eq!(ids(&all), vec!["0002"]);
        let completed = SagaFilter {
            state: Some("completed".into()),
            ..SagaFilter::default()
        };
        assert_eq!(ids(&store.list_sagas(&completed).unwrap()), vec!["0002"]);
        let by_name = SagaFilter {
            name: Some("order".into()),
            ..SagaFilter::default()
        };
        assert_eq!(ids(&store.list_sagas(&by_name).unwrap()), vec!["0002"]);
        assert_eq!(store.by_state.len(), 1);
        assert_eq!(store.by_name.len(), 1);
        let timers = store.due_timers(u64::MAX, usize::MAX).unwrap();
        assert!(timers.iter().all(|t| t.saga_id != "0001"), "{timers:?}");
        assert_eq!(timers.len(), 3);
        assert_eq!(store.timers_len(), 3);
        assert_eq!(store.timer_index.len(), 3);
        // The outbox is the relay's: left alone.
        assert_eq!(store.outbox_len(), 2);

        // Deleting again, or an unknown id, changes nothing.
        assert_eq!(store.delete_saga("0001").unwrap(), None);
        assert_eq!(store.delete_saga("nope").unwrap(), None);
        assert_eq!(store.timers_len(), 3);

        // The freed key binds to a new saga.
        let mut reborn = saga("0003", "order", SagaStatus::Pending);
        reborn.idempotency_key = Some("order-42".into());
        store
            .commit(Change {
                saga: Some(reborn),
                idempotency_key: Some("order-42".into()),
                ..Change::default()
            })
            .unwrap();
        assert_eq!(
            store
                .saga_by_idempotency_key("order-42")
                .unwrap()
                .as_deref(),
            Some("0003")
        );
    }

    #[test]
    fn delete_leaves_a_key_bound_to_another_saga_alone_and_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            // The saga names a key that is bound to another saga.
            let mut s = saga("0001", "order", SagaStatus::Failed { reason: "x".into() });
            s.idempotency_key = Some("shared".into());
            put(&store, s);
            let mut owner = saga("0002", "order", SagaStatus::Completed);
            owner.idempotency_key = Some("shared".into());
            store
                .commit(Change {
                    saga: Some(owner),
                    idempotency_key: Some("shared".into()),
                    ..Change::default()
                })
                .unwrap();
            assert!(store.delete_saga("0001").unwrap().is_some());
            assert_eq!(
                store.saga_by_idempotency_key("shared").unwrap().as_deref(),
                Some("0002")
            );
            futures::executor::block_on(store.flush()).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(
            ids(&store.list_sagas(&SagaFilter::default()).unwrap()),
            vec!["0002"]
        );
    }

    #[test]
    fn a_failed_delete_changes_nothing() {
        let store = SledStore::temporary().unwrap();
        let mut s = saga("0001", "order", SagaStatus::Completed);
        s.idempotency_key = Some("k".into());
        store
            .commit(Change {
                saga: Some(s),
                idempotency_key: Some("k".into()),
                timers_add: vec![timer("0001", TimerKind::SagaTimeout, 1)],
                ..Change::default()
            })
            .unwrap();
        store.sagas.insert("0001", &b"{not json"[..]).unwrap();
        let err = store.delete_saga("0001").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert_eq!(
            store.sagas.get("0001").unwrap().as_deref(),
            Some(&b"{not json"[..])
        );
        assert_eq!(
            store.saga_by_idempotency_key("k").unwrap().as_deref(),
            Some("0001")
        );
        assert_eq!(store.timers_len(), 1);
        assert_eq!(store.by_state.len(), 1);
    }

    #[test]
    fn timers_are_ordered_by_due_and_removed_by_saga_and_kind() {
        let store = SledStore::temporary().unwrap();
        store
            .commit(Change {
                timers_add: vec![
                    timer("0002", TimerKind::SagaTimeout, 300),
                    timer("0001", step_timeout(0, 1), 100),
                    timer("0001", TimerKind::SagaTimeout, 200),
                    timer("0003", step_timeout(1, 2), 100),
                ],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 4);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0001", step_timeout(0, 1), 100))
        );
        assert_eq!(store.due_timers(99, 10).unwrap(), vec![]);
        assert_eq!(
            store.due_timers(200, 10).unwrap(),
            vec![
                timer("0001", step_timeout(0, 1), 100),
                timer("0003", step_timeout(1, 2), 100),
                timer("0001", TimerKind::SagaTimeout, 200),
            ]
        );
        assert_eq!(store.due_timers(u64::MAX, 2).unwrap().len(), 2);
        assert_eq!(store.due_timers(u64::MAX, 10).unwrap().len(), 4);

        // Disarm by (saga, kind); a missing one is no error; a different
        // attempt of the same step is a different timer.
        store
            .commit(Change {
                timers_remove: vec![
                    ("0001".into(), step_timeout(0, 1)),
                    ("0001".into(), step_timeout(0, 9)),
                    ("0009".into(), TimerKind::SagaTimeout),
                ],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 3);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0003", step_timeout(1, 2), 100))
        );

        // Arming an armed timer moves it.
        store
            .commit(Change {
                timers_add: vec![timer("0003", step_timeout(1, 2), 1_000)],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 3);
        assert_eq!(
            store.due_timers(999, 10).unwrap(),
            vec![
                timer("0001", TimerKind::SagaTimeout, 200),
                timer("0002", TimerKind::SagaTimeout, 300),
            ]
        );

        // Remove and add of the same timer in one change: removes first.
        store
            .commit(Change {
                timers_remove: vec![("0002".into(), TimerKind::SagaTimeout)],
                timers_add: vec![timer("0002", TimerKind::SagaTimeout, 50)],
                ..Change::default()
            })
            .unwrap();
        assert_eq!(store.timers_len(), 3);
        assert_eq!(
            store.next_timer().unwrap(),
            Some(timer("0002", TimerKind::SagaTimeout, 50))
        );
        assert_eq!(store.timers.len(), 3);
        assert_eq!(store.timer_index.len(), 3);
    }

    #[test]
    fn outbox_keeps_commit_order_and_pages() {
        let store = SledStore::temporary().unwrap();
        for batch in 0..5u32 {
            store
                .commit(Change {
                    outbox: (0..3).map(|i| msg(batch * 3 + i)).collect(),
                    ..Change::default()
                })
                .unwrap();
        }
        let all = store.outbox(u64::MAX, 100).unwrap();
        let got: Vec<_> = all.iter().map(|(_, m)| m.clone()).collect();
        assert_eq!(got, (0..15).map(msg).collect::<Vec<_>>());
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(store.outbox_len(), 15);

        let first = store.outbox(u64::MAX, 4).unwrap();
        assert_eq!(first.len(), 4);
        // Nothing above `through` is read.
        let upto = store.outbox(first[1].0, 100).unwrap();
        assert_eq!(upto, first[..2].to_vec());
        assert_eq!(store.outbox(u64::MAX, 0).unwrap(), vec![]);

        let seqs: Vec<u64> = first.iter().map(|(s, _)| *s).collect();
        store.outbox_remove(&seqs).unwrap();
        // Removing again (or an unknown seq) is harmless.
        store.outbox_remove(&[seqs[0], u64::MAX]).unwrap();
        assert_eq!(store.outbox_len(), 11);
        assert_eq!(store.outbox(u64::MAX, 1).unwrap()[0].1, msg(4));
    }

    /// Every index entry of every saga: `(state, name, finished)` rows.
    fn index_rows(store: &SledStore) -> (Vec<IVec>, Vec<IVec>, Vec<IVec>) {
        let keys = |tree: &Tree| tree.iter().keys().map(Result::unwrap).collect::<Vec<_>>();
        (
            keys(&store.by_state),
            keys(&store.by_name),
            keys(&store.finished),
        )
    }

    #[test]
    fn commit_many_writes_a_batch_in_order_and_a_known_prior_moves_the_same_indexes() {
        let mut done = saga("0001", "order", SagaStatus::Completed);
        done.finished_at = Some(9_000);
        let steps = [
            saga("0001", "order", SagaStatus::Pending),
            saga("0001", "order", running()),
            done,
        ];
        // The same three transitions, one commit each with the store reading
        // the record, and one batch with every prior given.
        let read = SledStore::temporary().unwrap();
        for s in &steps {
            put(&read, s.clone());
        }
        let batch = SledStore::temporary().unwrap();
        let priors = [Prior::Absent, Prior::of(&steps[0]), Prior::of(&steps[1])];
        let changes: Vec<Change> = steps
            .iter()
            .zip(priors)
            .enumerate()
            .map(|(i, (s, prior))| Change {
                saga: Some(s.clone()),
                prior,
                idempotency_key: (i == 0).then(|| "req-1".to_owned()),
                outbox: vec![msg(i as u32)],
                ..Change::default()
            })
            .collect();
        batch.commit_many(&changes).unwrap();
        assert_eq!(index_rows(&batch), index_rows(&read));
        assert_eq!(batch.saga("0001").unwrap(), Some(steps[2].clone()));
        assert_eq!(batch.sagas_len(), 1);
        assert_eq!(
            batch.saga_by_idempotency_key("req-1").unwrap().as_deref(),
            Some("0001")
        );
        let rows: Vec<_> = batch.outbox(u64::MAX, 10).unwrap();
        assert_eq!(
            rows.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
            vec![msg(0), msg(1), msg(2)]
        );
        assert_eq!(batch.finished_before(9_000, 10).unwrap(), vec!["0001"]);

        // Leaving the terminal state again (a retry) with a known prior.
        let again = saga(
            "0001",
            "order",
            SagaStatus::Compensating {
                reason: "retry".into(),
            },
        );
        for (store, prior) in [(&read, Prior::Unknown), (&batch, Prior::of(&steps[2]))] {
            store
                .commit(Change {
                    saga: Some(again.clone()),
                    prior,
                    ..Change::default()
                })
                .unwrap();
        }
        assert_eq!(index_rows(&batch), index_rows(&read));
        assert_eq!(
            batch.finished_before(u64::MAX, 10).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_failed_batch_writes_none_of_its_changes() {
        let store = SledStore::temporary().unwrap();
        put(&store, saga("0002", "order", running()));
        store.sagas.insert("0002", &b"{not json"[..]).unwrap();
        let err = store
            .commit_many(&[
                Change {
                    saga: Some(saga("0001", "order", running())),
                    prior: Prior::Absent,
                    outbox: vec![msg(1)],
                    ..Change::default()
                },
                Change {
                    // Unknown prior: the damaged record is read, and fails.
                    saga: Some(saga("0002", "order", SagaStatus::Completed)),
                    timers_add: vec![timer("0002", TimerKind::SagaTimeout, 1)],
                    ..Change::default()
                },
            ])
            .unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { key, .. } if key == "sagas/0002"));
        assert_eq!(store.saga("0001").unwrap(), None);
        assert_eq!(store.outbox(u64::MAX, 10).unwrap(), vec![]);
        assert_eq!((store.outbox_len(), store.timers_len()), (0, 0));
        assert_eq!(store.sagas_len(), 1);
    }

    #[test]
    fn outbox_rows_are_frames_with_raw_payloads_and_old_json_rows_still_read() {
        let store = SledStore::temporary().unwrap();
        let mut big = msg(7);
        big.payload = (0..=255u8).cycle().take(10_000).collect();
        store
            .commit(Change {
                outbox: vec![big.clone()],
                ..Change::default()
            })
            .unwrap();
        let (seq, row) = store.outbox(u64::MAX, 1).unwrap().remove(0);
        assert_eq!(row, big);
        let stored = store.outbox.get(seq.to_be_bytes()).unwrap().unwrap();
        assert_eq!(stored[0], OUTBOX_FRAME);
        assert!(stored.len() < big.payload.len() + 100, "{}", stored.len());

        // A row as the JSON format wrote it (say, before an upgrade).
        let old = msg(3);
        let key = (seq + 1).to_be_bytes();
        store
            .outbox
            .insert(key, serde_json::to_vec(&old).unwrap())
            .unwrap();
        let rows: Vec<_> = store.outbox(u64::MAX, 10).unwrap();
        assert_eq!(rows, vec![(seq, big), (seq + 1, old)]);

        // A cut frame is reported as corrupt, never read as a short payload.
        store
            .outbox
            .insert(key, &[OUTBOX_FRAME, 0, 0, 1, 0, b'{'][..])
            .unwrap();
        let err = store.outbox(u64::MAX, 10).unwrap_err();
        let cut = format!("outbox/{}", seq + 1);
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if *key == cut),
            "{err}"
        );
    }

    #[test]
    fn outbox_rows_are_durable_after_a_flush_and_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.outbox_durable(), None);
        store
            .commit(Change {
                outbox: vec![msg(1), msg(2)],
                ..Change::default()
            })
            .unwrap();
        let last = store.outbox(u64::MAX, 10).unwrap()[1].0;
        // Written, not flushed: not durable yet.
        assert_eq!(store.outbox_durable(), None);
        // A flush covers what was written before it was asked for.
        let flush = store.flush();
        store
            .commit(Change {
                outbox: vec![msg(3)],
                ..Change::default()
            })
            .unwrap();
        futures::executor::block_on(flush).unwrap();
        assert_eq!(store.outbox_durable(), Some(last));
        futures::executor::block_on(store.flush()).unwrap();
        let newest = store.outbox(u64::MAX, 10).unwrap()[2].0;
        assert_eq!(store.outbox_durable(), Some(newest));
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.outbox_durable(), Some(newest));
    }

    #[test]
    fn held_tasks_breakers_and_service_policies_survive_a_reopen() {
        use crate::HeldTask;
        use jetsaga_core::admission::BreakerState;
        use jetsaga_core::saga::definition::{BreakerConfig, ServicePolicy};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let held = |n: u32| HeldTask {
            service: "pay".into(),
            saga_id: format!("000{n}"),
            step: 0,
            kind: TaskKind::Action,
            attempt: n,
            timeout_ms: 1000,
            message: msg(n),
        };
        let open = BreakerState::Open {
            since: 5,
            failures: 3,
        };
        let policy = ServicePolicy {
            service: "pay".into(),
            max_in_flight: Some(2),
            circuit_breaker: Some(BreakerConfig {
                failure_threshold: 3,
                success_threshold: 1,
                open_timeout: Duration::from_secs(1),
            }),
        };
        {
            let store = SledStore::open(&path).unwrap();
            // Held rows come and go with the saga change that holds them.
            store
                .commit(Change {
                    saga: Some(saga("0001", "order", running())),
                    held_add: vec![(1, held(1)), (2, held(2)), (3, held(3))],
                    breakers: vec![
                        ("pay".into(), Some(open.clone())),
                        ("gone".into(), Some(BreakerState::default())),
                    ],
                    ..Default::default()
                })
                .unwrap();
            store
                .commit(Change {
                    outbox: vec![held(2).message],
                    held_remove: vec![2],
                    breakers: vec![("gone".into(), None)],
                    ..Default::default()
                })
                .unwrap();
            assert!(store.put_service_policy(&policy).unwrap());
            assert!(!store.put_service_policy(&policy).unwrap(), "unchanged");
            futures::executor::block_on(store.flush()).unwrap();
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.held_tasks().unwrap(),
            vec![(1, held(1)), (3, held(3))],
            "in hold order"
        );
        assert_eq!(store.held_task(3).unwrap(), Some(held(3)));
        assert_eq!(store.held_task(2).unwrap(), None);
        assert_eq!(store.breakers().unwrap(), vec![("pay".to_string(), open)]);
        assert_eq!(store.service_policies().unwrap(), vec![policy]);
        assert_eq!(store.outbox_len(), 1);
    }

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
                    saga: Some(s),
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

    mod model {
        use super::*;
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
                (0..3u8, 0..3u32, 0..20u64).prop_map(|(saga, attempt, due)| Op::Arm {
                    saga,
                    attempt,
                    due
                }),
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
    }
}
