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
pub mod __loom {
    #![allow(missing_docs)]

    /// The engine's mutex shim (`crate::sync::Mutex`, loom's under loom).
    pub struct Mutex<T>(crate::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Self(crate::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> crate::sync::MutexGuard<'_, T> {
            self.0.lock()
        }
        pub fn try_lock(&self) -> Option<crate::sync::MutexGuard<'_, T>> {
            self.0.try_lock()
        }
    }
    pub use crate::wal::group::{Failed, GroupCommit, WaitError};

    use crate::coordinator::barrier as engine_barrier;
    use crate::coordinator::locks as engine_locks;

    /// A phase a coordinator asks for (mirrors the engine's `Phase`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Phase {
        Prepare,
        Commit,
        Rollback,
    }

    /// What a request means (mirrors the engine's `Decision`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Decision {
        Call,
        AlreadyDone,
        AlreadyFailed,
        RefuseLate,
        Violation,
    }

    /// The engine's per-participant barrier (`coordinator::barrier::Barrier`),
    /// every call delegated unchanged; transactions are numbered, execution 1.
    pub struct Barrier(engine_barrier::Barrier<u32>);

    fn key(tx: u128) -> engine_barrier::TxKey {
        engine_barrier::TxKey { tx: crate::txn::TxId::from_u128(tx), attempt: 1, branch: 0 }
    }

    impl Barrier {
        pub fn new(capacity: usize) -> Self {
            Self(engine_barrier::Barrier::new(capacity))
        }
        pub fn decide(&self, tx: u128, phase: Phase) -> Decision {
            let phase = match phase {
                Phase::Prepare => engine_barrier::Phase::Prepare,
                Phase::Commit => engine_barrier::Phase::Commit,
                Phase::Rollback => engine_barrier::Phase::Rollback,
            };
            match self.0.decide(key(tx), phase) {
                engine_barrier::Decision::Call => Decision::Call,
                engine_barrier::Decision::AlreadyDone => Decision::AlreadyDone,
                engine_barrier::Decision::AlreadyFailed => Decision::AlreadyFailed,
                engine_barrier::Decision::RefuseLate => Decision::RefuseLate,
                engine_barrier::Decision::Violation => Decision::Violation,
            }
        }
        pub fn prepared(&self, tx: u128) -> Option<u32> {
            self.0.prepared(key(tx)).copied()
        }
        pub fn holds(&self, tx: u128) -> bool {
            self.0.holds(key(tx))
        }
        pub fn prepared_ok(&mut self, tx: u128, value: Option<u32>) {
            self.0.prepared_ok(key(tx), value)
        }
        pub fn committed(&mut self, tx: u128) {
            self.0.committed(key(tx))
        }
        pub fn rolled_back(&mut self, tx: u128) {
            self.0.rolled_back(key(tx))
        }
        pub fn live(&self) -> usize {
            self.0.live()
        }
    }

    /// The engine's striped key locks (`coordinator::locks::StripedLocks`).
    pub struct StripedLocks(engine_locks::StripedLocks);

    /// Held stripes; dropping releases them.
    pub struct LockSet<'a>(#[allow(dead_code)] engine_locks::LockSet<'a>);

    impl StripedLocks {
        pub fn new(count: usize) -> Self {
            Self(engine_locks::StripedLocks::new(count))
        }
        /// `StripedLocks::acquire` with a deadline far in the future (loom
        /// models a timed lock as a plain one anyway).
        pub fn acquire(&self, sorted: &[usize]) -> Option<LockSet<'_>> {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3600);
            self.0.acquire(sorted, deadline).map(LockSet)
        }
    }

    /// The engine's table of failing calls (`coordinator::outstanding`),
    /// keyed by plain numbers for the models.
    pub struct Outstanding(crate::coordinator::outstanding::Outstanding);

    fn stall_key(tx: u128) -> engine_barrier::TxKey {
        engine_barrier::TxKey { tx: crate::TxId::from_u128(tx), attempt: 1, branch: 0 }
    }

    impl Outstanding {
        pub fn new(capacity: usize) -> Self {
            Self(crate::coordinator::outstanding::Outstanding::new(capacity, None))
        }
        /// A commit call failed; (resolved by an operator meanwhile, round).
        pub fn failed(&self, tx: u128, service: u16) -> (bool, u32) {
            let error = crate::operator::CallError { code: "down".into(), message: "down".into() };
            let f = self.0.failed(stall_key(tx), service, crate::coordinator::worker::Step::Commit, error, 1);
            (f.resolved, f.round)
        }
        /// Waits out a backoff that never ends by itself (loom has no time):
        /// `retry`, `resolved` or `closing`.
        pub fn wait(&self, tx: u128, service: u16) -> &'static str {
            let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
            match self.0.wait(stall_key(tx), service, far) {
                crate::coordinator::outstanding::Wake::Retry => "retry",
                crate::coordinator::outstanding::Wake::Resolved => "resolved",
                crate::coordinator::outstanding::Wake::Closing => "closing",
            }
        }
        /// `parked`, `full` or `resolved`.
        pub fn park(&self, tx: u128, service: u16) -> &'static str {
            match self.0.park(stall_key(tx), service) {
                crate::coordinator::outstanding::Park::Parked => "parked",
                crate::coordinator::outstanding::Park::Full => "full",
                crate::coordinator::outstanding::Park::Resolved => "resolved",
            }
        }
        /// (parked calls to redeliver, waiting calls woken).
        pub fn retry_now(&self, tx: u128) -> (usize, usize) {
            let (redeliver, woken) = self.0.retry_now(Some(crate::TxId::from_u128(tx)));
            (redeliver.len(), woken)
        }
        /// Parked calls the operator must settle through their workers.
        pub fn resolve(&self, tx: u128) -> usize {
            self.0.resolve(crate::TxId::from_u128(tx)).len()
        }
        pub fn close(&self) {
            self.0.close()
        }
        pub fn cleared(&self, tx: u128, service: u16) {
            self.0.cleared(stall_key(tx), service)
        }
        pub fn tracked(&self) -> usize {
            self.0.stalls().len()
        }
        /// A commit owed by services numbered 0.. (branch 0 of each).
        pub fn expect_acks(&self, tx: u128, services: u16) {
            use crate::coordinator::outstanding::{Owed, OwedBranch};
            let branches = (0..services).map(|service| OwedBranch { service, branch: 0, prepared: None }).collect();
            self.0.expect(crate::TxId::from_u128(tx), Owed { step: crate::coordinator::worker::Step::Commit, branches })
        }
        pub fn acknowledged(&self, tx: u128, service: u16) {
            self.0.acknowledged(stall_key(tx), service, crate::coordinator::worker::Step::Commit)
        }
        pub fn unresolved(&self) -> usize {
            self.0.unresolved_count()
        }
    }
}
