//! What crosses the participant contract: branch ids, the work a phase
//! carries, a refusal or a failure, balances, the account directory. A leaf
//! of its own so that the built-in ledger and the `Participant` trait (which
//! names the ledger) both build on it; the public names live in
//! `dtc::participant` (and the root).

use std::fmt;

use crate::txn::TxId;

/// One branch of one transaction: the transaction and the branch's index in
/// it (its position among the transaction's branches, stable across
/// resubmissions of the same id with the same content).
///
/// ```
/// use dtc::{BranchId, TxId};
/// let b = BranchId { tx: TxId::from_u128(42), index: 3 };
/// assert_eq!(b.to_string(), "0000000000000000000000000000002a/3");
/// assert_eq!(b.to_string().parse::<BranchId>().unwrap(), b);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BranchId {
    /// The transaction.
    pub tx: TxId,
    /// The branch's index in the transaction.
    pub index: u16,
}

impl fmt::Display for BranchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tx, self.index)
    }
}

impl fmt::Debug for BranchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BranchId({self})")
    }
}

impl std::str::FromStr for BranchId {
    type Err = crate::txn::ParseTxIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || crate::txn::ParseTxIdError(s.to_string());
        let (tx, index) = s.split_once('/').ok_or_else(bad)?;
        let index = index.parse::<u16>().map_err(|_| bad())?;
        Ok(BranchId { tx: tx.parse()?, index })
    }
}

/// One change a transaction asks of one service: add `delta` (negative for a
/// debit) to `account`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation<'a> {
    /// The account id, as the caller wrote it.
    pub account: &'a str,
    /// What the service's [`Directory`] resolved the account to, if it has one.
    pub key: Option<u64>,
    /// Signed change in minor units. The coordinator merges all legs of one
    /// transaction that touch the same account into one operation.
    pub delta: i64,
}

/// What one branch asks of its participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Work<'a> {
    /// The transaction's transfer legs on this service, merged per account.
    Transfers(&'a [Operation<'a>]),
    /// The branch's own request: opaque bytes the caller gave
    /// ([`Branch::new`](crate::Branch::new)), JSON for
    /// [`Branch::json`](crate::Branch::json).
    Payload(&'a [u8]),
}

impl<'a> Work<'a> {
    /// The transfer operations, or none for a payload branch.
    pub fn operations(&self) -> &'a [Operation<'a>] {
        match self {
            Work::Transfers(ops) => ops,
            Work::Payload(_) => &[],
        }
    }

    /// The payload, or none for a transfer branch.
    pub fn payload(&self) -> &'a [u8] {
        match self {
            Work::Transfers(_) => &[],
            Work::Payload(bytes) => bytes,
        }
    }
}

/// A participant's "no" vote. A participant that refuses must hold nothing
/// for the branch afterwards: it will not be asked to roll back — except
/// after [`Refusal::Unknown`], which says it might.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The account would go below zero.
    InsufficientFunds {
        /// The account.
        account: String,
    },
    /// The participant has no such account.
    UnknownAccount {
        /// The account.
        account: String,
    },
    /// A balance would overflow.
    Overflow {
        /// The account.
        account: String,
    },
    /// Any other reason, with a stable code.
    Other {
        /// Stable machine-readable code.
        code: String,
        /// Human explanation.
        message: String,
    },
    /// The vote is not known (a remote participant did not answer in
    /// time): counted as a no, but the participant may hold the branch
    /// prepared, so it is rolled back like any prepared branch.
    Unknown {
        /// Stable machine-readable code.
        code: String,
        /// Human explanation.
        message: String,
    },
}

impl Refusal {
    /// A refusal for the participant's own reason.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Refusal::Other { code: code.into(), message: message.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InsufficientFunds { account } => write!(f, "insufficient funds in {account}"),
            Refusal::UnknownAccount { account } => write!(f, "unknown account {account}"),
            Refusal::Overflow { account } => write!(f, "balance of {account} would overflow"),
            Refusal::Other { code, message } | Refusal::Unknown { code, message } => write!(f, "{code}: {message}"),
        }
    }
}

/// A failed commit or rollback. The coordinator retries it with bounded
/// exponential backoff, so it must be safe to call again — unless it is
/// [`definite`](Failure::definite) or its code is one the service's
/// [`RetryPolicy`](crate::RetryPolicy) lists as not retryable, in which case
/// the call is parked for an operator at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
#[non_exhaustive]
pub struct Failure {
    /// Stable machine-readable code (`failed` unless the participant chose one).
    pub code: String,
    /// Human explanation.
    pub message: String,
    /// False when calling again cannot help (the participant said so
    /// definitely, e.g. an HTTP 409): parked at once, never retried blindly.
    pub retryable: bool,
}

impl Failure {
    /// The code [`Failure::new`] gives.
    pub const DEFAULT_CODE: &'static str = "failed";

    /// A failure with this explanation and the code `failed`.
    pub fn new(message: impl Into<String>) -> Self {
        Self { code: Self::DEFAULT_CODE.into(), message: message.into(), retryable: true }
    }

    /// A failure with a stable code, e.g. `account_closed`, that a
    /// [`RetryPolicy`](crate::RetryPolicy) can name as not retryable.
    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), retryable: true }
    }

    /// A failure that calling again cannot fix: the participant cannot
    /// apply the decision as asked. The call is parked for an operator at
    /// once (listed by `dtc txs`, resolved with `dtc resolve`).
    pub fn definite(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), retryable: false }
    }
}

/// Balances a service reports to [`Coordinator::audit`](crate::Coordinator::audit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceSummary {
    /// Number of accounts.
    pub accounts: u64,
    /// Sum of committed balances.
    pub total: i128,
    /// Accounts whose balance is below zero (must stay 0).
    pub negative: u64,
}

/// Resolves account ids on the caller's thread, before anything is sent to
/// the service, so that an unknown account is refused before any side effect.
pub trait Directory: Send + Sync {
    /// The key of `account`, or `None` if the service has no such account.
    fn lookup(&self, account: &str) -> Option<u64>;

    /// Whether a key, once looked up, stays the account's key for the life
    /// of the directory (no account is ever removed or moved). Only then do
    /// [`Account`](crate::Account) handles skip the lookup; the participant
    /// is still handed nothing but keys this directory returned.
    fn keys_are_stable(&self) -> bool {
        false
    }
}
