//! A small local ledger standing in for the downstream systems the example
//! workers "call".
//!
//! Each service appends one JSON line per effect to `<dir>/<service>.jsonl`,
//! fsynced before the handler reports success, so a saga's forward effects and
//! the compensations that undo them can be read back afterwards. The ledger
//! also plays the part of a downstream service that honours idempotency keys:
//! [`Ledger::apply`] records an effect only the first time it sees a key and
//! appends a `{"duplicate_of": key, ...}` line for every later attempt, so
//! tests can count the duplicates it suppressed.
//!
//! Several worker processes of the same service may share one ledger file:
//! every append happens under an exclusive advisory file lock after reading
//! what the other processes appended, so duplicate suppression holds across
//! processes too.

use jetsaga_worker::protocol::TaskKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// One line of a ledger file.
///
/// An *effect* record has `duplicate_of == None`. A *duplicate* record repeats
/// the fields of the suppressed attempt and names the idempotency key whose
/// effect already happened in `duplicate_of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Set on duplicate records only: the idempotency key already applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<String>,
    /// Wall-clock time of the append, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Service that applied the effect.
    pub service: String,
    /// Operation that produced it (`register`, `deregister`, ...).
    pub operation: String,
    /// Whether a step's action or its compensation produced it.
    pub kind: TaskKind,
    /// Saga instance id.
    pub saga_id: String,
    /// Step id within the saga.
    pub step_id: String,
    /// The step's idempotency key (stable across attempts).
    pub idempotency_key: String,
    /// Attempt number that produced the record.
    pub attempt: u32,
    /// Identity of the worker process that wrote the record.
    pub worker: String,
    /// Human-readable description of the effect.
    pub effect: String,
}

impl LedgerEntry {
    /// Whether this record is a suppressed duplicate rather than an effect.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate_of.is_some()
    }
}

/// Result of [`Ledger::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The effect was recorded: this was the first time the key was seen.
    First,
    /// The key had already been applied; only a duplicate marker was written.
    Duplicate,
}

/// The ledger of one service: `<dir>/<service>.jsonl`.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    service: String,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Idempotency keys with an effect record in the file.
    applied: HashSet<String>,
    /// Bytes of the file already folded into `applied`.
    read_upto: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Path of the ledger file of `service` under `dir`.
pub fn ledger_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.jsonl"))
}

impl Ledger {
    /// Opens (creating if needed) the ledger of `service` under `dir`, and
    /// loads the idempotency keys already applied in it.
    pub fn open(dir: impl AsRef<Path>, service: &str) -> io::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let path = ledger_path(dir, service);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let ledger = Self {
            path,
            service: service.to_string(),
            inner: Mutex::new(Inner {
                file,
                applied: HashSet::new(),
                read_upto: 0,
            }),
        };
        {
            let mut inner = ledger.lock();
            inner.file.lock_shared()?;
            let caught_up = inner.catch_up();
            inner.file.unlock()?;
            caught_up?;
        }
        Ok(ledger)
    }

    /// Path of the ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Service whose effects this ledger records.
    pub fn service(&self) -> &str {
        &self.service
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the file consistent (every
        // line is written with one call), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `entry`'s effect unless its idempotency key was applied before,
    /// in which case a duplicate marker is appended instead. The line is
    /// fsynced before this returns. `entry.duplicate_of` is ignored.
    ///
    /// This does blocking file I/O; from async code use [`Ledger::apply_async`].
    pub fn apply(&self, entry: &LedgerEntry) -> io::Result<Applied> {
        let mut inner = self.lock();
        inner.file.lock()?;
        let result = inner.apply_locked(entry);
        let unlocked = inner.file.unlock();
        let applied = result?;
        unlocked?;
        Ok(applied)
    }

    /// [`Ledger::apply`] on the blocking thread pool.
    pub async fn apply_async(self: &Arc<Self>, entry: LedgerEntry) -> io::Result<Applied> {
        let ledger = Arc::clone(self);
        tokio::task::spawn_blocking(move || ledger.apply(&entry))
            .await
            .map_err(io::Error::other)?
    }

    /// Whether an effect with `idempotency_key` is recorded (as of the last
    /// read of the file by this process).
    pub fn contains(&self, idempotency_key: &str) -> bool {
        self.lock().applied.contains(idempotency_key)
    }

    /// Reads back every record of this ledger's file.
    pub fn entries(&self) -> io::Result<Vec<LedgerEntry>> {
        read_file(&self.path)
    }
}

impl Inner {
    /// Folds the complete lines appended since the last read into `applied`.
    fn catch_up(&mut self) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        if len <= self.read_upto {
            return Ok(());
        }
        self.file.seek(SeekFrom::Start(self.read_upto))?;
        let mut buf = Vec::with_capacity((len - self.read_upto) as usize);
        (&mut self.file)
            .take(len - self.read_upto)
            .read_to_end(&mut buf)?;
        // Only whole lines count; a torn tail (a crash mid-write) is skipped
        // once a newline follows it.
        let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        for line in buf[..=last_nl].split(|b| *b == b'\n') {
            if let Ok(e) = serde_json::from_slice::<LedgerEntry>(line)
                && e.duplicate_of.is_none()
            {
                self.applied.insert(e.idempotency_key);
            }
        }
        self.read_upto += last_nl as u64 + 1;
        Ok(())
    }

    fn apply_locked(&mut self, entry: &LedgerEntry) -> io::Result<Applied> {
        self.catch_up()?;
        let first = !self.applied.contains(&entry.idempotency_key);
        let mut record = entry.clone();
        record.duplicate_of = if first {
            None
        } else {
            Some(entry.idempotency_key.clone())
        };
        let len = self.file.metadata()?.len();
        if len > self.read_upto {
            // A torn line without newline at the end: terminate it so the
            // new record stands on a line of its own.
            self.file.write_all(b"\n")?;
        }
        let mut line = serde_json::to_vec(&record).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.read_upto = self.file.metadata()?.len();
        if first {
            self.applied.insert(entry.idempotency_key.clone());
            Ok(Applied::First)
        } else {
            Ok(Applied::Duplicate)
        }
    }
}

/// Reads every parseable record of one ledger file (a missing file reads as
/// empty; torn or foreign lines are skipped).
pub fn read_file(path: &Path) -> io::Result<Vec<LedgerEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Reads every `*.jsonl` ledger under `dir`, ordered by `at_ms` (records of
/// the same millisecond keep their order within a file). A missing or
/// unreadable directory reads as empty.
pub fn read_dir(dir: impl AsRef<Path>) -> Vec<LedgerEntry> {
    let Ok(rd) = std::fs::read_dir(dir.as_ref()) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    paths.sort();
    let mut all: Vec<LedgerEntry> = paths
        .iter()
        .filter_map(|p| read_file(p).ok())
        .flatten()
        .collect();
    all.sort_by_key(|e| e.at_ms);
    all
}

/// `(saga_id, step_id, kind)`: what the ledger helpers group records by.
pub type StepKey = (String, String, TaskKind);

/// Effect records (duplicates excluded) of one step's action or compensation.
pub fn effects<'a>(
    entries: &'a [LedgerEntry],
    saga_id: &str,
    step_id: &str,
    kind: TaskKind,
) -> Vec<&'a LedgerEntry> {
    entries
        .iter()
        .filter(|e| {
            !e.is_duplicate() && e.saga_id == saga_id && e.step_id == step_id && e.kind == kind
        })
        .collect()
}

/// Duplicate records (suppressed repeats) of one step's action or compensation.
pub fn duplicates<'a>(
    entries: &'a [LedgerEntry],
    saga_id: &str,
    step_id: &str,
    kind: TaskKind,
) -> Vec<&'a LedgerEntry> {
    entries
        .iter()
        .filter(|e| {
            e.is_duplicate() && e.saga_id == saga_id && e.step_id == step_id && e.kind == kind
        })
        .collect()
}

/// Number of effect records (duplicates excluded) per `(saga_id, step_id, kind)`.
pub fn effect_counts(entries: &[LedgerEntry]) -> BTreeMap<StepKey, usize> {
    let mut counts = BTreeMap::new();
    for e in entries.iter().filter(|e| !e.is_duplicate()) {
        *counts
            .entry((e.saga_id.clone(), e.step_id.clone(), e.kind))
            .or_insert(0) += 1;
    }
    counts
}

/// Number of suppressed duplicates per `(saga_id, step_id, kind)`.
pub fn duplicate_counts(entries: &[LedgerEntry]) -> BTreeMap<StepKey, usize> {
    let mut counts = BTreeMap::new();
    for e in entries.iter().filter(|e| e.is_duplicate()) {
        *counts
            .entry((e.saga_id.clone(), e.step_id.clone(), e.kind))
            .or_insert(0) += 1;
    }
    counts
}

/// Step ids of one saga whose records of `kind` are effects, in ledger order
/// (for example the order in which compensations undid the steps).
pub fn step_order(entries: &[LedgerEntry], saga_id: &str, kind: TaskKind) -> Vec<String> {
    entries
        .iter()
        .filter(|e| !e.is_duplicate() && e.saga_id == saga_id && e.kind == kind)
        .map(|e| e.step_id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key_step: &str, kind: TaskKind, attempt: u32) -> LedgerEntry {
        LedgerEntry {
            duplicate_of: None,
            at_ms: now_ms(),
            service: "manifest".into(),
            operation: "register".into(),
            kind,
            saga_id: "s1".into(),
            step_id: key_step.into(),
            idempotency_key: format!("s1.{key_step}.{kind}"),
            attempt,
            worker: "test".into(),
            effect: format!("did {key_step}"),
        }
    }

    #[test]
    fn appends_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), "manifest").unwrap();
        assert_eq!(
            ledger.apply(&entry("a", TaskKind::Action, 1)).unwrap(),
            Applied::First
        );
        assert_eq!(
            ledger.apply(&entry("b", TaskKind::Action, 1)).unwrap(),
            Applied::First
        );
        assert_eq!(
            ledger
                .apply(&entry("a", TaskKind::Compensation, 1))
                .unwrap(),
            Applied::First
        );
        let all = read_dir(dir.path());
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|e| !e.is_duplicate()));
        assert_eq!(effects(&all, "s1", "a", TaskKind::Action).len(), 1);
        assert_eq!(effects(&all, "s1", "a", TaskKind::Compensation).len(), 1);
        assert_eq!(effects(&all, "s1", "b", TaskKind::Compensation).len(), 0);
        assert_eq!(
            step_order(&all, "s1", TaskKind::Action),
            vec!["a".to_string(), "b".to_string()]
        );
        let text = std::fs::read_to_string(ledger.path()).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["kind"], "action");
        assert_eq!(first["idempotency_key"], "s1.a.action");
        assert!(first.get("duplicate_of").is_none());
        assert!(first["at_ms"].as_u64().unwrap() > 0);
    }

    #[test]
    fn suppresses_duplicates_by_idempotency_key() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path(), "manifest").unwrap();
        assert_eq!(
            ledger.apply(&entry("a", TaskKind::Action, 1)).unwrap(),
            Applied::First
        );
        assert_eq!(
            ledger.apply(&entry("a", TaskKind::Action, 2)).unwrap(),
            Applied::Duplicate
        );
        assert_eq!(
            ledger.apply(&entry("a", TaskKind::Action, 2)).unwrap(),
            Applied::Duplicate
        );
        assert!(ledger.contains("s1.a.action"));
        let all = ledger.entries().unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(effects(&all, "s1", "a", TaskKind::Action).len(), 1);
        let dups = duplicates(&all, "s1", "a", TaskKind::Action);
        assert_eq!(dups.len(), 2);
        assert_eq!(dups[0].duplicate_of.as_deref(), Some("s1.a.action"));
        let key = ("s1".to_string(), "a".to_string(), TaskKind::Action);
        assert_eq!(effect_counts(&all)[&key], 1);
        assert_eq!(duplicate_counts(&all)[&key], 2);
    }

    #[test]
    fn duplicates_are_seen_across_reopen_and_other_writers() {
        let dir = tempfile::tempdir().unwrap();
        let one = Ledger::open(dir.path(), "manifest").unwrap();
        let two = Ledger::open(dir.path(), "manifest").unwrap();
        assert_eq!(
            one.apply(&entry("a", TaskKind::Action, 1)).unwrap(),
            Applied::First
        );
        // Another handle (another process) sees the key written by the first.
        assert_eq!(
            two.apply(&entry("a", TaskKind::Action, 2)).unwrap(),
            Applied::Duplicate
        );
        drop((one, two));
        let reopened = Ledger::open(dir.path(), "manifest").unwrap();
        assert!(reopened.contains("s1.a.action"));
        assert_eq!(
            reopened.apply(&entry("a", TaskKind::Action, 3)).unwrap(),
            Applied::Duplicate
        );
        assert_eq!(
            reopened
                .apply(&entry("a", TaskKind::Compensation, 1))
                .unwrap(),
            Applied::First
        );
    }

    #[test]
    fn torn_tail_is_skipped_and_terminated() {
        let dir = tempfile::tempdir().unwrap();
        let path = ledger_path(dir.path(), "manifest");
        std::fs::write(&path, b"{\"at_ms\": 1, \"serv").unwrap();
        let ledger = Ledger::open(dir.path(), "manifest").unwrap();
        assert_eq!(
            ledger.apply(&entry("a", TaskKind::Action, 1)).unwrap(),
            Applied::First
        );
        assert_eq!(
            ledger.apply(&entry("a", TaskKind::Action, 1)).unwrap(),
            Applied::Duplicate
        );
        let all = ledger.entries().unwrap();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn read_dir_merges_services_and_tolerates_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_dir(dir.path().join("nope")).is_empty());
        let a = Ledger::open(dir.path(), "manifest").unwrap();
        let b = Ledger::open(dir.path(), "gateway").unwrap();
        a.apply(&entry("a", TaskKind::Action, 1)).unwrap();
        let mut e = entry("b", TaskKind::Action, 1);
        e.service = "gateway".into();
        b.apply(&e).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let all = read_dir(dir.path());
        assert_eq!(all.len(), 2);
        assert_eq!(effect_counts(&all).len(), 2);
    }

    #[tokio::test]
    async fn apply_async_works() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(dir.path(), "manifest").unwrap());
        assert_eq!(
            ledger
                .apply_async(entry("a", TaskKind::Action, 1))
                .await
                .unwrap(),
            Applied::First
        );
    }
}
