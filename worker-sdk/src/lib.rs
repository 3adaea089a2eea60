//! jetsaga worker SDK.

pub mod protocol;
