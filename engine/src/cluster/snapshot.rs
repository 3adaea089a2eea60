//! Snapshots of a partition's store, in the object store
//! `<PREFIX>_SNAPSHOTS` (object `partition.<partition>`, the position it
//! holds in its metadata), so that the journal can be trimmed and an engine
//! with an empty data directory starts from the latest snapshot and the
//! journal's tail.
//!
//! A snapshot is taken where the store is quiet and holds only records the
//! journal took: by a standby between two records it applies, and by an
//! engine taking a partition over before it runs it. After the upload the
//! journal is trimmed up to the snapshot's record, but never past a record
//! whose outbox messages may not be published yet.

use super::journal::Journal;
use async_nats::jetstream::{self, object_store};
use jetsaga_protocol::Subjects;
use jetsaga_store::{JournalPosition, SledStore};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The snapshots of an installation.
#[derive(Clone)]
pub struct Snapshots {
    bucket: object_store::ObjectStore,
    journal: Journal,
}

fn object(partition: u32) -> String {
    format!("partition.{partition}")
}

impl Snapshots {
    /// Opens (or creates) the bucket.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: usize,
        journal: Journal,
    ) -> Result<Self, String> {
        let name = subjects.snapshots_bucket();
        let bucket = crate::streams::get_or_create(
            &name,
            || js.get_object_store(&name),
            || {
                js.create_object_store(object_store::Config {
                    bucket: name.clone(),
                    description: Some(
                        "jetsaga: the latest snapshot of each partition's store".into(),
                    ),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
            },
        )
        .await
        .map_err(|first| format!("cannot create the snapshot bucket {name}: {first}"))?;
        Ok(Self { bucket, journal })
    }

    /// The position of the latest snapshot of `partition`, if any.
    pub async fn latest(&self, partition: u32) -> Option<JournalPosition> {
        let info = self.bucket.info(object(partition)).await.ok()?;
        if info.deleted {
            return None;
        }
        position_of(&info.metadata)
    }

    /// Writes a snapshot of `store` (the caller keeps it from being
    /// written meanwhile), uploads it, and trims `partition`'s journal up
    /// to it (never past `outbox_from`). Answers the snapshot's position.
    pub async fn take(
        &self,
        store: &Arc<SledStore>,
        partition: u32,
        outbox_from: u64,
    ) -> Result<JournalPosition, String> {
        let started = std::time::Instant::now();
        let file = tempfile::NamedTempFile::new()
            .map_err(|e| format!("cannot create a temporary file for the snapshot: {e}"))?;
        let (path, store2) = (file.path().to_path_buf(), store.clone());
        let position = tokio::task::spawn_blocking(move || {
            let out = std::fs::File::create(&path)?;
            let mut out = std::io::BufWriter::new(out);
            let position = store2
                .write_snapshot(&mut out)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            std::io::Write::flush(&mut out)?;
            Ok::<_, std::io::Error>(position)
        })
        .await
        .map_err(|e| format!("the snapshot task failed: {e}"))?
        .map_err(|e| format!("cannot write the snapshot: {e}"))?;
        // Another engine may have uploaded a newer one meanwhile: keep it.
        if let Some(latest) = self.latest(partition).await
            && latest.record >= position.record
        {
            tracing::debug!(
                partition,
                record = position.record,
                latest = latest.record,
                "a newer snapshot exists; not uploading this one"
            );
            return Ok(latest);
        }
        let mut reader = tokio::fs::File::open(file.path())
            .await
            .map_err(|e| format!("cannot read the snapshot back: {e}"))?;
        let metadata = HashMap::from([
            ("record".to_string(), position.record.to_string()),
            ("epoch".to_string(), position.epoch.to_string()),
            ("resume_seq".to_string(), position.resume_seq.to_string()),
        ]);
        let info = self
            .bucket
            .put(
                object_store::ObjectMetadata {
                    name: object(partition),
                    description: Some(format!(
                        "partition {partition} after journal record {}",
                        position.record
                    )),
                    metadata,
                    ..Default::default()
                },
                &mut reader,
            )
            .await
            .map_err(|e| format!("cannot upload the snapshot: {e}"))?;
        let keep_from = position.resume_seq.min(outbox_from);
        let trimmed = if keep_from > 1 {
            self.journal
                .trim(partition, keep_from)
                .await
                .map_err(|e| format!("snapshot uploaded, but {e}"))?
        } else {
            0
        };
        tracing::info!(
            partition,
            record = position.record,
            bytes = info.size,
            trimmed_records = trimmed,
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(position)
    }

    /// Restores the latest snapshot of `partition` into `dir` (which must
    /// not hold a store); `None` when there is none.
    pub async fn restore(&self, partition: u32, dir: &Path) -> Result<Option<SledStore>, String> {
        let Some(position) = self.latest(partition).await else {
            return Ok(None);
        };
        let mut object = self
            .bucket
            .get(object(partition))
            .await
            .map_err(|e| format!("cannot read the snapshot: {e}"))?;
        let file = tempfile::NamedTempFile::new()
            .map_err(|e| format!("cannot create a temporary file for the snapshot: {e}"))?;
        let mut out = tokio::fs::File::create(file.path())
            .await
            .map_err(|e| format!("cannot write the snapshot down: {e}"))?;
        tokio::io::copy(&mut object, &mut out)
            .await
            .map_err(|e| format!("cannot download the snapshot: {e}"))?;
        drop(out);
        let (path, dir) = (file.path().to_path_buf(), dir.to_path_buf());
        let store = tokio::task::spawn_blocking(move || {
            let input = std::fs::File::open(&path)?;
            SledStore::restore_snapshot(&dir, &mut std::io::BufReader::new(input))
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .map_err(|e| format!("the restore task failed: {e}"))?
        .map_err(|e| format!("cannot restore the snapshot: {e}"))?;
        tracing::info!(
            partition,
            record = position.record,
            "restored the store from the latest snapshot"
        );
        Ok(Some(store))
    }
}

fn position_of(metadata: &HashMap<String, String>) -> Option<JournalPosition> {
    let get = |k: &str| metadata.get(k)?.parse::<u64>().ok();
    Some(JournalPosition {
        record: get("record")?,
        epoch: get("epoch")?,
        resume_seq: get("resume_seq")?,
    })
}
