//! # dtc — fast in-process distributed transactions
//!
//! `dtc` runs atomic transactions across many services inside one process.
//! Each service is a [`Participant`] served by its own worker thread; the
//! [`Coordinator`] drives two-phase commit across them with ordered striped
//! locks (serializable, deadlock-free), idempotent phases, timeouts, retries
//! with backoff, and survives panics inside participants.
//!
//! With [`Durability::Sync`] and a data directory, every outcome is returned
//! only once its record is durable in a group-committed, memory-mapped
//! write-ahead log; opening the directory again recovers it
//! ([`ops::DataDir`] inspects one offline). [`Coordinator::execute_batch`] runs
//! many transactions with one lock set and one sync. Workflows that cannot
//! hold locks use [`saga::SagaExecutor`] (steps and compensations, resumed after a
//! crash) or [`closure::ClosureTx`] (per-transaction prepare/commit/rollback closures).
//!
//! ```
//! use dtc::{Coordinator, Ledger, Outcome, Transfer};
//!
//! let eu = Ledger::new();
//! eu.create_account("acct-1", 1_000).unwrap();
//! let us = Ledger::new();
//! us.create_account("acct-9", 0).unwrap();
//!
//! let dtc = Coordinator::builder()
//!     .service("bank-eu", eu)
//!     .service("bank-us", us)
//!     .open()
//!     .unwrap();
//!
//! let outcome = dtc
//!     .execute(&[Transfer::new("bank-eu", "acct-1", "bank-us", "acct-9", 250)])
//!     .unwrap();
//! assert_eq!(outcome, Outcome::Committed);
//!
//! let audit = dtc.audit().unwrap();
//! assert_eq!(audit.total, 1_000);
//! assert_eq!(audit.negative, 0);
//! ```

#![warn(missing_docs)]
// The one audited `unsafe` module is `wal::mmap` (allowed there, nowhere else).
#![deny(unsafe_code)]

mod branch_store;
pub mod closure;
mod coordinator;
mod datadir;
mod durable;
mod error;
pub mod fault;
mod handlers;
pub mod http;
mod ledger;
mod metrics;
mod operator;
pub mod participant;
#[cfg(feature = "postgres")]
pub mod pg;
mod phase;
mod protocol;
pub mod remote;
mod retry;
pub mod saga;
mod sync;
mod txid;
mod txn;
mod wal;

// What a newcomer needs: the coordinator and its configuration, the ledger,
// a transaction and its outcome, the participant trait with the vocabulary
// of its methods, and the error. Everything else sits in a module named
// after its concept.
pub use coordinator::{
    Builder, Coordinator, DEFAULT_IDEMPOTENCY_HORIZON, Durability, MAX_BATCH, MAX_LANES, MAX_PAYLOAD_BYTES,
    MAX_SERVICE_NAME_BYTES,
};
pub use error::{Error, Result};
pub use handlers::Handlers;
pub use ledger::{Ledger, LedgerHold, MAX_ACCOUNT_ID_BYTES};
pub use participant::{BranchId, Failure, Participant, ParticipantKind, Refusal, Work};
pub use retry::{Jitter, RetryPolicy};
pub use txn::{
    AbortReason, Account, AccountRef, Branch, MAX_ID_CLOCK_SKEW, Outcome, ParseTxIdError, Transaction, Transfer, TxId,
};
pub use wal::LogBackend;

/// Operating a coordinator: unfinished transactions and their resolution,
/// the offline data directory (`dtc txs`, `dtc verify`), metrics and
/// statistics.
///
/// ```
/// use dtc::{Coordinator, Ledger, Transfer};
///
/// let bank = Ledger::new();
/// bank.create_account("a", 100).unwrap();
/// bank.create_account("b", 0).unwrap();
/// let dtc = Coordinator::builder().service("bank", bank).open().unwrap();
/// dtc.execute(&[Transfer::new("bank", "a", "bank", "b", 5)]).unwrap();
/// // Nothing is left unfinished, and the metrics say one commit.
/// assert!(dtc.unfinished().is_empty());
/// assert_eq!(dtc.metrics().committed, 1);
/// let text = dtc::ops::render_prometheus(&dtc.metrics(), dtc.log_stats().as_ref());
/// assert!(text.contains("dtc_transactions_total"));
/// ```
pub mod ops {
    pub use crate::coordinator::{Audit, IdempotencyStats, LogStats};
    pub use crate::datadir::{DataDir, MAX_VERIFY_PROBLEMS, RecoverySummary, TxStatus, VerifyProblem, VerifyReport};
    pub use crate::durable::RecoveryReport;
    pub use crate::metrics::{LatencySummary, MetricsSnapshot, render_prometheus};
    pub use crate::operator::{
        CallError, MAX_REASON_BYTES, OperatorAction, ParticipantState, Resolution, ResolveReport, RetryReport, TxKind,
        TxState, UnfinishedTx,
    };
}

pub mod store {
    //! A durable record of a participant service's branches: the helper that
    //! makes a correct participant (in process or behind HTTP) easy to write.
    //!
    //! A participant must answer every phase idempotently, keyed by (transaction,
    //! branch, phase), and must remember its answers across restarts: a
    //! duplicate prepare gets the same prepared value, a prepare after its
    //! rollback is refused ("hanging" prevention), a rollback before any prepare
    //! succeeds and is remembered ("null compensation"), and so on (the full
    //! table is in docs/participant-protocol.md). [`BranchStore`] keeps those
    //! records in dtc's own write-ahead log:
    //!
    //! - Each transition is one log record, appended under the branch's shard
    //!   lock together with the in-memory change, so the log order of one
    //!   branch's records is the order of its transitions and a checkpoint (which
    //!   takes every shard lock) sees a consistent cut.
    //! - Every answer is returned only once the record it reports is durable:
    //!   the wait is group commit (`Wal::wait_durable`), outside every lock, so
    //!   concurrent callers share syncs.
    //! - A business closure (reserve, apply, undo) runs outside the shard lock
    //!   while the branch is marked busy; other calls on the same branch wait for
    //!   it, calls on other branches do not. A closure that panics or fails
    //!   leaves the branch as it was.
    //! - When the log has grown by `checkpoint_every_bytes` since the last
    //!   checkpoint, the caller that notices writes a snapshot of every
    //!   remembered branch and the log recycles the segments below it, so the
    //!   directory stays within `max_segments` segment files plus one checkpoint.
    //! - Finished branches (committed, rolled back, refused) are remembered for
    //!   `finished_horizon` and at most `max_finished` of them; prepared ones are
    //!   never dropped. When a finished branch is forgotten, the store raises a
    //!   watermark, `forgotten_below_ns`, past the timestamp of its transaction id
    //!   (dtc ids start with a clock, see [`TxId`](crate::TxId); the watermark
    //!   never passes the store's own clock); a prepare of an
    //!   unknown branch whose transaction is older than the watermark is answered
    //!   [`PrepareVerdict::Expired`] instead of reserving anything, because it may
    //!   be a late duplicate of a forgotten one. A commit of a forgotten branch
    //!   is [`CommitVerdict::Unknown`] (the coordinator parks it for an
    //!   operator), a rollback of one [`RollbackVerdict::NothingPrepared`]
    //!   (nothing recorded, no undo called).

    pub use crate::branch_store::{
        BranchFilter, BranchInfo, BranchState, BranchStore, BranchStoreOptions, CommitVerdict, MAX_PREPARED_BYTES,
        PrepareVerdict, RecordingParticipant, RollbackVerdict, StoreError, StoreStats, StoredParticipant,
    };
}

/// Crash simulation and the engine's storage layers, for tests: an
/// in-memory storage that can lose what was not synced
/// ([`MemStorage`](testing::MemStorage), given to
/// [`Builder::storage_for_testing`]), fault injection into it, and direct
/// access to the log and the id archive. Not needed to use dtc.
#[allow(missing_docs)]
pub mod testing {
    pub use crate::durable::codec::Remembered;
    pub use crate::durable::ids::{ArchiveStats, IdArchive, Lookup, RunInfo};
    pub use crate::wal::{FaultKind, FaultOp, FsStorage, LogBackend, Lsn, MemStorage, Storage, Wal, WalConfig};
}

/// Internals exposed to the loom models in `tests/loom_*.rs` (not API).
#[cfg(loom)]
#[doc(hidden)]
#[path = "loom_exports.rs"]
pub mod __loom;
