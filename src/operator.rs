//! What operators see and do, shared by every engine: the unfinished
//! transactions (`Coordinator::unfinished`, `SagaExecutor::unfinished`,
//! `DataDir::unfinished`, `dtc txs`), the reports of retry-now and resolve,
//! and the audit trail. The actions themselves live with each engine
//! (`coordinator/operator.rs`, the saga executor, `datadir.rs`).

use crate::error::{Error, Result};
use crate::txn::{TxId, unix_nanos};

/// The last error of a failing call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallError {
    /// The participant's stable code (`panicked` for a panic).
    pub code: String,
    /// Its explanation.
    pub message: String,
}

/// Longest operator reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// Which engine runs a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TxKind {
    /// A two-phase-commit transaction of a [`Coordinator`](crate::Coordinator).
    #[serde(rename = "2pc")]
    TwoPhase,
    /// A saga of a [`SagaExecutor`](crate::saga::SagaExecutor).
    #[serde(rename = "saga")]
    Saga,
}

/// Where an unfinished transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum TxState {
    /// Prepared somewhere, no decision recorded. dtc presumes abort: recovery
    /// rolls such transactions back when it opens the log, so this state
    /// shows only for a saga's step that was running at a crash.
    InDoubt,
    /// Commit decided (a saga: running forward); calls still to be applied.
    Committing,
    /// Abort decided (a saga: compensating); calls still to be undone.
    RollingBack,
    /// A call is parked after exhausting its retries: an operator must act
    /// (retry-now, or resolve after fixing the participant by hand).
    Stuck,
}

impl TxState {
    /// Every state, in the order above.
    pub const ALL: [TxState; 4] = [TxState::InDoubt, TxState::Committing, TxState::RollingBack, TxState::Stuck];

    /// `in-doubt`, `committing`, `rolling-back` or `stuck`.
    pub fn as_str(self) -> &'static str {
        match self {
            TxState::InDoubt => "in-doubt",
            TxState::Committing => "committing",
            TxState::RollingBack => "rolling-back",
            TxState::Stuck => "stuck",
        }
    }

    /// The state named by [`as_str`](Self::as_str).
    pub fn parse(name: &str) -> Option<TxState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One participant of an unfinished transaction.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ParticipantState {
    /// The service (a saga: the step).
    pub name: String,
    /// The branch's index in its transaction (2PC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<u16>,
    /// `committing`, `rolling-back`, `parked-commit`, `parked-rollback`,
    /// `resolving` (an operator resolved it; its worker settles it next),
    /// `awaiting-ack` (commit delivered, not acknowledged yet),
    /// `awaiting-rollback` (rollback of an external branch not acknowledged
    /// yet); for a saga
    /// the step's state (`running`, `completed`, `compensating`, …).
    pub phase: String,
    /// Failed calls so far.
    pub attempts: u32,
    /// Milliseconds until the next call; `None` when parked or idle.
    pub next_retry_in_ms: Option<u64>,
    /// The last failure, with its code.
    pub last_error: Option<CallError>,
}

/// An unfinished transaction: [`Coordinator::unfinished`](crate::Coordinator::unfinished),
/// [`DataDir::unfinished`](crate::datadir::DataDir::unfinished), `dtc txs`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UnfinishedTx {
    /// The transaction (a saga: its id).
    pub tx: TxId,
    /// Two-phase commit or saga.
    pub kind: TxKind,
    /// Where it stands.
    pub state: TxState,
    /// Seconds since its id was issued.
    pub age_seconds: f64,
    /// Its participants that have not finished, with their phase.
    pub participants: Vec<ParticipantState>,
    /// For a rollback, the recorded reason; for a saga, its failure.
    pub reason: Option<String>,
}

/// What [`Coordinator::resolve`](crate::Coordinator::resolve) declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolution {
    /// The commit is finished: the operator made the participants that did
    /// not acknowledge match it. Only for a transaction whose commit decision
    /// is recorded.
    Commit,
    /// The transaction is aborted: for one with no decision recorded (it is
    /// recorded as aborted by the operator), or whose rollback is stuck (the
    /// operator undid it by hand). Never for a decided commit.
    Abort,
}

/// What a resolve did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResolveReport {
    /// The transaction.
    pub tx: TxId,
    /// The resolution applied.
    pub resolution: Resolution,
    /// Services whose calls were settled without calling them again.
    pub settled: Vec<String>,
    /// What happened, in words.
    pub note: String,
}

/// What a retry-now did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryReport {
    /// Transactions retried.
    pub transactions: Vec<TxId>,
    /// Parked calls delivered again (with a fresh attempt budget).
    pub redelivered: usize,
    /// Calls waiting out a backoff that were told to call at once.
    pub woken: usize,
}

/// An operator action the log records (audit trail).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperatorAction {
    /// The transaction acted on.
    pub tx: TxId,
    /// `resolve-commit`, `resolve-abort` or `retry-now`.
    pub action: String,
    /// The operator's reason.
    pub reason: String,
    /// When, in nanoseconds since the Unix epoch.
    pub at_unix_ns: u64,
}

pub(crate) fn check_reason(reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(Error::InvalidReason("an operator action needs a reason".into()));
    }
    if reason.len() > MAX_REASON_BYTES {
        return Err(Error::InvalidReason(format!("{} bytes, at most {MAX_REASON_BYTES}", reason.len())));
    }
    Ok(())
}

/// Seconds since `tx` was issued (ids carry their issue time).
pub(crate) fn age_seconds(tx: TxId) -> f64 {
    unix_nanos().saturating_sub(tx.timestamp_ns()) as f64 / 1e9
}
