//! The coordinator's error type: bad input and engine failures.
//!
//! A business "no" (insufficient funds, a participant's refusal, a timeout)
//! is not an error: it is an [`Outcome::Aborted`](crate::Outcome::Aborted).
//! An [`Error`] means the transaction was not run at all (bad input, checked
//! before any side effect) or the engine itself cannot go on.

use crate::txid::TxId;

/// Everything `Coordinator` calls can fail with. Each variant has a stable
/// code ([`Error::code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transaction has no legs.
    #[error("transaction has no legs")]
    EmptyTransaction,
    /// More legs than `Builder::max_legs` allows.
    #[error("transaction has {legs} legs, the limit is {limit}")]
    TooManyLegs {
        /// Legs given.
        legs: usize,
        /// The configured limit.
        limit: usize,
    },
    /// More transactions in one `execute_batch` call than allowed.
    #[error("batch of {transactions} transactions, the limit is {limit}")]
    BatchTooLarge {
        /// Transactions given.
        transactions: usize,
        /// The limit.
        limit: usize,
    },
    /// A leg's amount is zero.
    #[error("leg {leg}: amount must be positive")]
    NonPositiveAmount {
        /// Index of the leg.
        leg: usize,
    },
    /// A leg's amount exceeds `i64::MAX`, or the net change of one account
    /// over all legs overflows.
    #[error("leg {leg}: amount overflows a signed 64-bit balance")]
    AmountOverflow {
        /// Index of the leg.
        leg: usize,
    },
    /// A leg names a service that was not registered.
    #[error("leg {leg}: unknown service {service:?}")]
    UnknownService {
        /// Index of the leg.
        leg: usize,
        /// The name given.
        service: String,
    },
    /// A branch names a service that was not registered.
    #[error("branch {branch}: unknown service {service:?}")]
    UnknownBranchService {
        /// Index of the branch among the transaction's branches.
        branch: usize,
        /// The name given.
        service: String,
    },
    /// More branches in one transaction than `Builder::max_branches` allows.
    #[error("transaction has {branches} branches, the limit is {limit}")]
    TooManyBranches {
        /// Branches given (payload branches plus one per ledger service).
        branches: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A branch's payload exceeds `Builder::max_payload_bytes`.
    #[error("branch {branch}: payload of {bytes} bytes, the limit is {limit}")]
    PayloadTooLarge {
        /// Index of the branch among the transaction's branches.
        branch: usize,
        /// Its size.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A payload could not be built (`Branch::json` of a value serde refuses).
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// A branch's lock key is empty, too long, or one of too many.
    #[error("branch {branch}: invalid lock key: {why}")]
    InvalidLockKey {
        /// Index of the branch among the transaction's branches.
        branch: usize,
        /// What is wrong.
        why: String,
    },
    /// A caller-chosen id is older than the idempotency horizon: its outcome
    /// may no longer be remembered, so it is refused rather than run twice.
    #[error("transaction id {tx} is older than the idempotency horizon ({horizon_s} s); use a fresh id")]
    TxIdExpired {
        /// The id.
        tx: TxId,
        /// The horizon, in seconds.
        horizon_s: u64,
    },
    /// A caller-chosen id carries a timestamp further in the future than the
    /// allowed clock skew.
    #[error("transaction id {tx} is dated in the future (more than {skew_s} s ahead of this clock)")]
    TxIdInFuture {
        /// The id.
        tx: TxId,
        /// The allowed skew, in seconds.
        skew_s: u64,
    },
    /// A participant URL is malformed or of an unsupported kind.
    #[error("invalid URL {url:?}: {why}")]
    InvalidUrl {
        /// The URL given (cut at 200 characters).
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A participant URL names a host the allowlist does not allow.
    #[error("URL {url:?}: host {host:?} is not on the allowlist")]
    UrlNotAllowed {
        /// The URL given (cut at 200 characters).
        url: String,
        /// Its host.
        host: String,
    },
    /// A leg names an account its service does not have.
    #[error("leg {leg}: service {service:?} has no account {account:?}")]
    UnknownAccount {
        /// Index of the leg (`usize::MAX` when a participant reported it).
        leg: usize,
        /// The service.
        service: String,
        /// The account.
        account: String,
    },
    /// A leg moves money from an account to itself.
    #[error("leg {leg}: {service}/{account} is on both sides")]
    SameAccount {
        /// Index of the leg.
        leg: usize,
        /// The service.
        service: String,
        /// The account.
        account: String,
    },
    /// A service or account name is empty or too long.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A starting balance is negative.
    #[error("account {account:?}: starting balance {balance} is negative")]
    InvalidBalance {
        /// The account.
        account: String,
        /// The balance given.
        balance: i64,
    },
    /// An account with this id already exists in the service.
    #[error("service {service:?} already has account {account:?}")]
    AccountExists {
        /// The service.
        service: String,
        /// The account.
        account: String,
    },
    /// A service was registered twice, or no service at all.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The id was already used for a transaction with different legs.
    #[error("transaction id {tx} was already used for a different transaction")]
    TxIdReused {
        /// The id.
        tx: TxId,
    },
    /// A transaction with this id is running right now.
    #[error("transaction {tx} is already running")]
    TxInProgress {
        /// The id.
        tx: TxId,
    },
    /// An operator action that would break atomicity, e.g. force-committing
    /// a transaction with no recorded commit decision, or aborting one whose
    /// commit is recorded.
    #[error("refused to resolve {tx}: {reason}")]
    UnsafeResolution {
        /// The transaction.
        tx: TxId,
        /// Why the action is unsafe.
        reason: String,
    },
    /// Retry-now for a transaction with no failing call to retry.
    #[error("transaction {tx} has no parked or retrying call")]
    NotStuck {
        /// The transaction.
        tx: TxId,
    },
    /// An operator action's reason is empty or longer than
    /// [`MAX_REASON_BYTES`](crate::operator::MAX_REASON_BYTES).
    #[error("invalid reason: {0}")]
    InvalidReason(String),
    /// Another process holds the data directory (a running coordinator).
    #[error("{dir} is in use by another process")]
    DirInUse {
        /// The directory.
        dir: String,
    },
    /// The operator control channel of a data directory failed: no running
    /// coordinator answered, or its answer was unreadable.
    #[error("control channel of {dir}: {reason}")]
    Control {
        /// The directory.
        dir: String,
        /// What went wrong.
        reason: String,
    },
    /// `shutdown` was called; no new transactions are accepted.
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// A service's worker is gone (its thread ended).
    #[error("service {service:?} is unavailable")]
    ServiceUnavailable {
        /// The service.
        service: String,
    },
    /// The data directory holds damage recovery must not guess about.
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file (or log position) concerned.
        file: String,
        /// Byte offset in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The engine could not take every lock for an audit before its deadline.
    #[error("audit timed out waiting for in-flight transactions")]
    AuditTimeout,
    /// A sync or a write of the write-ahead log failed: nothing written
    /// after it is acknowledged and the coordinator accepts no more work.
    /// Reopening the directory recovers whatever reached the disk.
    #[error("write-ahead log failed after a storage error ({cause}); reopen the directory to recover")]
    LogFailed {
        /// The kind of the I/O error that failed the log.
        cause: std::io::ErrorKind,
    },
    /// Backpressure: the log has no free segment because checkpoints are not
    /// keeping up. Nothing of this request was done; it may be retried.
    #[error("log full ({max_segments} live segments): checkpoints are not keeping up")]
    LogFull {
        /// The log's bound on live segment files.
        max_segments: usize,
    },
    /// A checkpoint could not get what it needs before its deadline (the
    /// engine's locks, or an answer from a ledger's worker). Nothing was
    /// lost; a later checkpoint tries again.
    #[error("checkpoint timed out waiting for {waiting_for}")]
    CheckpointTimeout {
        /// What it waited for.
        waiting_for: &'static str,
    },
    /// A storage operation of the log failed without touching acknowledged
    /// records (opening, creating a segment, writing a checkpoint).
    #[error("write-ahead log: {op} {file}: {source}")]
    LogIo {
        /// The operation.
        op: &'static str,
        /// The file it was applied to.
        file: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log refused what the engine asked of it (a record larger than a
    /// segment accepts, an invalid log configuration, ...): a
    /// misconfiguration or a bug, with the log's reason.
    #[error("write-ahead log refused: {reason}")]
    LogRefused {
        /// The log's reason.
        reason: String,
    },
    /// An I/O error outside the log (opening the data directory, …).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::EmptyTransaction => "empty_transaction",
            Error::TooManyLegs { .. } => "too_many_legs",
            Error::BatchTooLarge { .. } => "batch_too_large",
            Error::NonPositiveAmount { .. } => "non_positive_amount",
            Error::AmountOverflow { .. } => "amount_overflow",
            Error::UnknownService { .. } => "unknown_service",
            Error::UnknownBranchService { .. } => "unknown_service",
            Error::TooManyBranches { .. } => "too_many_branches",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::InvalidPayload(_) => "invalid_payload",
            Error::InvalidLockKey { .. } => "invalid_lock_key",
            Error::TxIdExpired { .. } => "tx_id_expired",
            Error::TxIdInFuture { .. } => "tx_id_in_future",
            Error::InvalidUrl { .. } => "invalid_url",
            Error::UrlNotAllowed { .. } => "url_not_allowed",
            Error::UnknownAccount { .. } => "unknown_account",
            Error::SameAccount { .. } => "same_account",
            Error::InvalidName { .. } => "invalid_name",
            Error::InvalidBalance { .. } => "invalid_balance",
            Error::AccountExists { .. } => "account_exists",
            Error::Config(_) => "config",
            Error::TxIdReused { .. } => "tx_id_reused",
            Error::TxInProgress { .. } => "tx_in_progress",
            Error::UnsafeResolution { .. } => "unsafe_resolution",
            Error::NotStuck { .. } => "not_stuck",
            Error::InvalidReason(_) => "invalid_reason",
            Error::DirInUse { .. } => "dir_in_use",
            Error::Control { .. } => "control",
            Error::ShuttingDown => "shutting_down",
            Error::ServiceUnavailable { .. } => "service_unavailable",
            Error::Corrupt { .. } => "corrupt",
            Error::AuditTimeout => "audit_timeout",
            Error::LogFailed { .. } => "log_failed",
            Error::LogFull { .. } => "log_full",
            Error::CheckpointTimeout { .. } => "checkpoint_timeout",
            Error::LogIo { .. } => "log_io",
            Error::LogRefused { .. } => "log_refused",
            Error::Io { .. } => "io",
        }
    }
}

impl Error {
    /// True for the errors of the log itself (and corrupt data): a batch
    /// stops at the first, and a service answers them "unavailable".
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            Error::LogFailed { .. }
                | Error::LogFull { .. }
                | Error::LogIo { .. }
                | Error::LogRefused { .. }
                | Error::Corrupt { .. }
                | Error::CheckpointTimeout { .. }
        )
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
