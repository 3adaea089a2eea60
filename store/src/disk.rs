//! Disk footprint: what a store takes on disk ([`DiskUsage`]), and what a
//! store directory takes while no store is open on it ([`dir_bytes`]).

use crate::StoreError;

/// The size of a store on disk: the `engine_store_size_bytes` gauge and the
/// `scale` reports.
pub trait DiskUsage: Send + Sync {
    /// Bytes the store's files take on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// Bytes of the files under `dir`, subdirectories included: what a store
/// directory takes on disk (`jetsaga store compact`, the `bench` and
/// `scale` reports).
/// A file removed while it is walked (a running store rotates its files)
/// counts nothing.
pub fn dir_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = match entry.and_then(|e| Ok((e.metadata()?, e.path()))) {
            Ok(found) => found,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        total += match meta {
            (m, path) if m.is_dir() => match dir_bytes(&path) {
                Err(e) if gone(&e) => 0,
                other => other?,
            },
            (m, _) => m.len(),
        };
    }
    Ok(total)
}
