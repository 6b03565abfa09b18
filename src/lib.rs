//! # dtc — fast in-process distributed transactions
//!
//! `dtc` runs atomic transactions across many services inside one process.
//! Each service is a [`Participant`] served by its own worker thread; the
//! [`Coordinator`] drives two-phase commit across them with ordered striped
//! locks (serializable, deadlock-free), idempotent phases, timeouts, retries
//! with backoff, and survives panics inside participants.
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

mod closures;
mod coordinator;
mod durable;
mod error;
mod fault;
mod ledger;
mod metrics;
mod participant;
mod saga;
mod sync;
mod txn;
mod wal;

pub use closures::{
    ClosureError, ClosureOutcome, ClosureParticipant, ClosureStats, ClosureTx, DEFAULT_PREPARE_TIMEOUT,
    MAX_CLOSURE_PARTICIPANTS, PrepareResult, PreparedClosureTx, RollbackCause, closure_stats,
};
pub use coordinator::{Audit, Builder, Coordinator, Durability, LogStats, MAX_SERVICE_NAME_BYTES, RetryPolicy};
pub use durable::{DataDir, RecoveryReport, RecoverySummary, TxStatus};
pub use error::{Error, Result};
pub use fault::{FaultCounter, FaultPlan, FaultRates, Faulty, InjectedFaults};
pub use ledger::{Ledger, MAX_ACCOUNT_ID_BYTES};
pub use metrics::{LatencySummary, MetricsSnapshot};
pub use participant::{BalanceSummary, Directory, Failure, Operation, Participant, Prepared, Refusal};
pub use saga::{
    Backoff, Clock, DEFAULT_STEP_TIMEOUT, IdempotencyKey, MAX_INPUT_BYTES, ManualClock, MemoryLog, SagaBuilder,
    SagaDefinition, SagaError, SagaExecutor, SagaExecutorBuilder, SagaInfo, SagaMetrics, SagaState, Step, StepContext,
    StepError, SystemClock,
};
pub use txn::{AbortReason, AccountRef, Outcome, ParseTxIdError, Transfer, TxId};

/// Testing aids (fault-injecting storage for crash simulations). Not API.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod testing {
    pub use crate::wal::{FaultKind, FaultOp, MemStorage};
}

/// Internals exposed to the loom models in `tests/loom_*.rs` (not API).
#[cfg(loom)]
#[doc(hidden)]
pub mod __loom {
    pub use crate::wal::group::{Failed, GroupCommit, WaitError};
}
