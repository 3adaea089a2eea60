//! [`StoreError`]: what a store operation can fail with.

use jetsaga_protocol::ErrorCode;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store directory.
    #[error(
        "{code}: the store at {path} is in use by another process; stop the other engine or choose another --data-dir",
        code = ErrorCode::StoreLocked,
    )]
    Locked {
        /// Store directory.
        path: String,
    },
    /// The store could not be opened (unreadable or corrupt).
    #[error("{code}: cannot open the store at {path}: {source}", code = ErrorCode::StoreOpen)]
    Open {
        /// Store directory.
        path: String,
        /// Cause.
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("{code}: store operation failed: {0}", code = ErrorCode::StoreIo)]
    Io(#[from] sled::Error),
    /// A record could not be encoded for storing (nothing was written).
    #[error("{code}: record {key} cannot be encoded: {source}", code = ErrorCode::StoreEncode)]
    Encode {
        /// Record key, printable.
        key: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// `jetsaga store compact` could not compact the store (it is left as
    /// it was).
    #[error("{code}: cannot compact the store at {path}: {reason}", code = ErrorCode::StoreCompact)]
    Compact {
        /// Store directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("{code}: stored record {key} cannot be decoded: {source}", code = ErrorCode::StoreCorrupt)]
    Corrupt {
        /// Record key, printable.
        key: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// A journal record was offered out of order: its number is not the
    /// stored one plus one (nothing was written).
    #[error(
        "{code}: journal record {offered} cannot follow record {stored}: records apply in order, each once",
        code = ErrorCode::StoreIo,
    )]
    JournalOrder {
        /// Number of the last record the store applied.
        stored: u64,
        /// Number of the record offered.
        offered: u64,
    },
    /// A snapshot could not be written, or not be restored (truncated,
    /// corrupt, not a snapshot, or a target directory that is not empty);
    /// a failed restore leaves no store at the target.
    #[error("{code}: snapshot: {reason}", code = ErrorCode::StoreCorrupt)]
    Snapshot {
        /// Why.
        reason: String,
    },
}
