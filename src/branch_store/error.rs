//! Why a store call failed, one variant per distinct failure.

use crate::participant::Failure;
use crate::wal::WalError;

/// Why a store call failed. After an `Err` the branch is as it was before
/// the call (a closure's own side effects aside); the call may be repeated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another store in this one) holds the directory.
    #[error("branch store directory {dir} is in use by another process")]
    InUse {
        /// The directory.
        dir: String,
    },
    /// A file operation outside the log failed (creating the directory,
    /// taking its lock).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The log failed. With `failed` set, a sync or write failed and the
    /// store acknowledges nothing more until it is reopened (fail-stop);
    /// otherwise the error concerns this call only (the log is full and a
    /// checkpoint is due, or a file could not be created).
    #[error("branch store log: {reason}")]
    Log {
        /// The log's error.
        reason: String,
        /// True when the log is now failed for good.
        failed: bool,
    },
    /// Recovery found a record or snapshot it cannot read.
    #[error("branch store is corrupt: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// The reserve closure returned a prepared value larger than the limit;
    /// nothing was recorded.
    #[error("prepared value of {bytes} bytes, the limit is {limit}")]
    PreparedTooLarge {
        /// Its size.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The apply or undo closure failed; nothing was recorded and the branch
    /// is still prepared (or still unknown).
    #[error("the service failed: {0}")]
    Service(Failure),
    /// The options cannot be used.
    #[error("invalid branch store options: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    pub(super) fn log(error: WalError) -> StoreError {
        let failed = matches!(error, WalError::Failed { .. });
        match error {
            WalError::Corrupt { .. } => StoreError::Corrupt { reason: error.to_string() },
            other => StoreError::Log { reason: other.to_string(), failed },
        }
    }

    /// A stable machine-readable code: `in_use`, `io`, `log_failed`, `log`,
    /// `corrupt`, `prepared_too_large`, `service_failed` or `config`.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::InUse { .. } => "in_use",
            StoreError::Io { .. } => "io",
            StoreError::Log { failed: true, .. } => "log_failed",
            StoreError::Log { failed: false, .. } => "log",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::PreparedTooLarge { .. } => "prepared_too_large",
            StoreError::Service(_) => "service_failed",
            StoreError::Config { .. } => "config",
        }
    }
}
