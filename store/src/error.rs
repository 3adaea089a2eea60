//! [`StoreError`]: what a store operation can fail with.

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store directory.
    #[error(
        "E-STORE-LOCKED: the store at {path} is in use by another process; stop the other engine or choose another --data-dir"
    )]
    Locked {
        /// Store directory.
        path: String,
    },
    /// The store could not be opened (unreadable or corrupt).
    #[error("E-STORE-OPEN: cannot open the store at {path}: {source}")]
    Open {
        /// Store directory.
        path: String,
        /// Cause.
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("E-STORE-IO: store operation failed: {0}")]
    Io(#[from] sled::Error),
    /// A record could not be encoded for storing (nothing was written).
    #[error("E-STORE-ENCODE: record {key} cannot be encoded: {source}")]
    Encode {
        /// Record key, printable.
        key: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// `jetsaga store compact` could not compact the store (it is left as
    /// it was).
    #[error("E-STORE-COMPACT: cannot compact the store at {path}: {reason}")]
    Compact {
        /// Store directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("E-STORE-CORRUPT: stored record {key} cannot be decoded: {source}")]
    Corrupt {
        /// Record key, printable.
        key: String,
        /// Cause.
        source: serde_json::Error,
    },
}
