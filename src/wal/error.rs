//! Errors of the write-ahead log, one variant per distinct failure.

use std::io;

use super::Lsn;

/// Everything that can go wrong in the log. Each variant says when it happens.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A storage operation failed. `op` names the operation (`"create segment"`,
    /// `"write checkpoint"`, ...), `file` the file it was applied to. Returned
    /// for failures that do not compromise already-acknowledged records
    /// (opening, checkpointing, creating a segment); a failed sync or a failed
    /// write into a reserved range turns the log into [`WalError::Failed`].
    #[error("{op} {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: io::Error,
    },

    /// Recovery found bytes it cannot accept and refuses to start: an invalid
    /// record that is provably inside the durable part of the log (a later
    /// valid sync marker says the bytes were synced), a missing segment file
    /// with valid records after it, a segment of the wrong size, or no usable
    /// checkpoint while the log no longer starts at position 0. `offset` is the
    /// byte offset inside `file`.
    #[error("corrupt log: {file} at offset {offset}: {reason}")]
    Corrupt { file: String, offset: u64, reason: String },

    /// A sync (or a write into a reserved range) failed earlier. The log never
    /// retries and never acknowledges anything after that: every waiter and
    /// appender gets this error until the log is reopened (which recovers
    /// whatever reached the disk).
    #[error("log failed after a storage error ({cause})")]
    Failed { cause: io::ErrorKind },

    /// Appending would need a segment beyond `max_segments` live ones. Nothing
    /// was reserved; a checkpoint frees segments.
    #[error("log full: {max_segments} live segments; write a checkpoint to free some")]
    LogFull { max_segments: usize },

    /// One record (or one batch) is larger than the largest reservation a
    /// segment accepts (`max_bytes`, a quarter of a segment).
    #[error("record of {bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    RecordTooLarge { bytes: u64, max_bytes: u64 },

    /// The kind byte is reserved by the log (0, 0xFE sync marker, 0xFF padding).
    #[error("record kind {kind} is reserved by the log")]
    ReservedKind { kind: u8 },

    /// `wait_durable` or `checkpoint` was given a position beyond everything
    /// reserved so far (waiting for it would never end).
    #[error("position {lsn} is beyond the end of the log ({end})")]
    LsnBeyondEnd { lsn: Lsn, end: Lsn },

    /// `checkpoint` was given a position below the newest checkpoint.
    #[error("checkpoint at {lsn} is older than the newest checkpoint at {newest}")]
    CheckpointRegression { lsn: Lsn, newest: Lsn },

    /// The configuration cannot be used (segment size not a multiple of 4096,
    /// too small or too large, fewer than 2 segments, or more live segment
    /// files on disk than `max_segments`).
    #[error("invalid configuration: {reason}")]
    Config { reason: String },
}

impl WalError {
    pub(super) fn io(op: &'static str, file: impl Into<String>, source: io::Error) -> Self {
        WalError::Io { op, file: file.into(), source }
    }
}
