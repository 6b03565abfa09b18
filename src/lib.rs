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
//! ([`DataDir`] inspects one offline). [`Coordinator::execute_batch`] runs
//! many transactions with one lock set and one sync. Workflows that cannot
//! hold locks use [`SagaExecutor`] (steps and compensations, resumed after a
//! crash) or [`ClosureTx`] (per-transaction prepare/commit/rollback closures).
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
mod closures;
mod coordinator;
mod durable;
mod error;
mod fault;
mod handlers;
pub mod http;
mod ledger;
mod metrics;
mod operator;
mod participant;
#[cfg(feature = "postgres")]
pub mod pg;
mod remote;
mod saga;
mod sync;
mod txn;
mod wal;

pub use branch_store::{
    BranchFilter, BranchInfo, BranchState, BranchStore, BranchStoreOptions, CommitVerdict, MAX_PREPARED_BYTES,
    PrepareVerdict, RecordingParticipant, RollbackVerdict, StoreError, StoreStats, StoredParticipant,
};
pub use closures::{
    ClosureError, ClosureOutcome, ClosureParticipant, ClosureStats, ClosureTx, DEFAULT_PREPARE_TIMEOUT,
    MAX_CLOSURE_PARTICIPANTS, PrepareResult, PreparedClosureTx, RollbackCause, closure_stats,
};
pub use coordinator::{
    Audit, Builder, Coordinator, DEFAULT_IDEMPOTENCY_HORIZON, Durability, IdempotencyStats, LogStats, MAX_BATCH,
    MAX_PAYLOAD_BYTES, MAX_SERVICE_NAME_BYTES, RetryPolicy,
};
pub use durable::{
    DataDir, MAX_VERIFY_PROBLEMS, RecoveryReport, RecoverySummary, TxStatus, VerifyProblem, VerifyReport,
};
pub use error::{Error, Result};
pub use fault::{FaultCounter, FaultPlan, FaultRates, Faulty, InjectedFaults};
pub use handlers::Handlers;
pub use ledger::{Ledger, LedgerHold, MAX_ACCOUNT_ID_BYTES};
pub use metrics::render_prometheus;
pub use metrics::{LatencySummary, MetricsSnapshot};
pub use operator::{
    CallError, MAX_REASON_BYTES, OperatorAction, ParticipantState, Resolution, ResolveReport, RetryReport, TxKind,
    TxState, UnfinishedTx,
};
pub use participant::{
    BalanceSummary, BranchId, Directory, Failure, Operation, Participant, ParticipantKind, Refusal, Work,
};
pub use remote::{Allowlist, Endpoints, HttpParticipant, RemotePrepared, RoutedRequest};
pub use saga::{
    Backoff, Clock, DEFAULT_STEP_TIMEOUT, IdempotencyKey, MAX_INPUT_BYTES, ManualClock, MemoryLog, SagaBuilder,
    SagaDefinition, SagaError, SagaExecutor, SagaExecutorBuilder, SagaInfo, SagaMetrics, SagaState, Step, StepContext,
    StepError, SystemClock,
};
pub use txn::{
    AbortReason, AccountRef, Branch, MAX_ID_CLOCK_SKEW, Outcome, ParseTxIdError, Transaction, Transfer, TxId,
};
pub use wal::LogBackend;

/// Testing aids (fault-injecting storage for crash simulations). Not API.
#[doc(hidden)]
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
