//! The contract between the coordinator and a service.

use std::any::Any;
use std::fmt;

use crate::txn::TxId;

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

/// What a participant keeps between its yes vote and the decision. The
/// coordinator stores it and hands it back to [`Participant::commit`].
pub struct Prepared(Box<dyn Any + Send>);

impl Prepared {
    /// Wraps any value.
    pub fn new<T: Any + Send>(value: T) -> Self {
        Self(Box::new(value))
    }
    /// Nothing to remember.
    pub fn empty() -> Self {
        Self::new(())
    }
    /// The value, if it has type `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prepared(..)")
    }
}

/// A participant's "no" vote. A participant that refuses must hold nothing
/// for the transaction afterwards: it will not be asked to roll back.
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
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InsufficientFunds { account } => write!(f, "insufficient funds in {account}"),
            Refusal::UnknownAccount { account } => write!(f, "unknown account {account}"),
            Refusal::Overflow { account } => write!(f, "balance of {account} would overflow"),
            Refusal::Other { code, message } => write!(f, "{code}: {message}"),
        }
    }
}

/// A failed commit or rollback. The coordinator retries it with bounded
/// exponential backoff, so it must be safe to call again — unless its code
/// is one the service's [`RetryPolicy`](crate::RetryPolicy) lists as not
/// retryable, in which case the call is parked for an operator at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    /// Stable machine-readable code (`failed` unless the participant chose one).
    pub code: String,
    /// Human explanation.
    pub message: String,
}

impl Failure {
    /// The code [`Failure::new`] gives.
    pub const DEFAULT_CODE: &'static str = "failed";

    /// A failure with this explanation and the code `failed`.
    pub fn new(message: impl Into<String>) -> Self {
        Self { code: Self::DEFAULT_CODE.into(), message: message.into() }
    }

    /// A failure with a stable code, e.g. `account_closed`, that a
    /// [`RetryPolicy`](crate::RetryPolicy) can name as not retryable.
    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into() }
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
}

/// A service taking part in transactions.
///
/// The coordinator calls a participant from one thread at a time (its
/// service's worker), so an implementation needs no locking of its own.
/// The coordinator also makes every phase idempotent and ordered for it: a
/// duplicate prepare, commit or rollback is answered from the coordinator's
/// own record and never reaches the participant twice, and a rollback that
/// arrives before its prepare makes that prepare refused without a call.
///
/// Isolation is the coordinator's job too: it holds a lock on every account a
/// transaction touches from before prepare until the decision is applied.
///
/// ```
/// use dtc::{Failure, Operation, Participant, Prepared, Refusal, TxId};
///
/// /// Counts reserved units of stock.
/// struct Stock { left: i64 }
///
/// impl Participant for Stock {
///     fn prepare(&mut self, _tx: TxId, ops: &[Operation<'_>]) -> Result<Prepared, Refusal> {
///         let change: i64 = ops.iter().map(|op| op.delta).sum();
///         if self.left + change < 0 {
///             return Err(Refusal::Other { code: "out_of_stock".into(), message: "sold out".into() });
///         }
///         Ok(Prepared::new(change))
///     }
///     fn commit(&mut self, _tx: TxId, prepared: &Prepared) -> Result<(), Failure> {
///         self.left += prepared.downcast_ref::<i64>().copied().unwrap_or(0);
///         Ok(())
///     }
///     fn rollback(&mut self, _tx: TxId) -> Result<(), Failure> {
///         Ok(())
///     }
/// }
/// ```
pub trait Participant: Send + 'static {
    /// Vote: check that `ops` can be applied and keep what commit will need.
    /// Must not make the change visible yet.
    fn prepare(&mut self, tx: TxId, ops: &[Operation<'_>]) -> Result<Prepared, Refusal>;

    /// Apply what was prepared. Called at most once successfully per
    /// transaction; called again after a failure.
    fn commit(&mut self, tx: TxId, prepared: &Prepared) -> Result<(), Failure>;

    /// Drop what was prepared. Called again after a failure.
    fn rollback(&mut self, tx: TxId) -> Result<(), Failure>;

    /// Transactions this participant holds prepared from before a restart
    /// (participants with their own durable storage). The coordinator
    /// resolves each from its log: commit if a commit decision is recorded,
    /// rollback otherwise (presumed abort).
    fn recover(&mut self) -> Vec<(TxId, Prepared)> {
        Vec::new()
    }

    /// The participant's account directory, if it has one.
    fn directory(&self) -> Option<std::sync::Arc<dyn Directory>> {
        None
    }

    /// Balances for an audit, if the participant keeps balances.
    fn balances(&mut self) -> Option<BalanceSummary> {
        None
    }

    /// The built-in ledger behind this participant, if any (wrappers forward
    /// it). The coordinator logs and snapshots ledger state itself.
    fn ledger(&self) -> Option<crate::Ledger> {
        None
    }

    /// True only for the built-in [`Ledger`](crate::Ledger) itself (wrappers
    /// must not forward it): the engine may then apply batches to it directly.
    #[doc(hidden)]
    fn is_builtin_ledger(&self) -> bool {
        false
    }

    /// True if calls never block (no I/O, no waiting): such a participant
    /// may be called on the caller's thread when its worker is idle.
    fn is_nonblocking(&self) -> bool {
        false
    }
}

impl<P: Participant + ?Sized> Participant for Box<P> {
    fn prepare(&mut self, tx: TxId, ops: &[Operation<'_>]) -> Result<Prepared, Refusal> {
        (**self).prepare(tx, ops)
    }
    fn commit(&mut self, tx: TxId, prepared: &Prepared) -> Result<(), Failure> {
        (**self).commit(tx, prepared)
    }
    fn rollback(&mut self, tx: TxId) -> Result<(), Failure> {
        (**self).rollback(tx)
    }
    fn recover(&mut self) -> Vec<(TxId, Prepared)> {
        (**self).recover()
    }
    fn directory(&self) -> Option<std::sync::Arc<dyn Directory>> {
        (**self).directory()
    }
    fn balances(&mut self) -> Option<BalanceSummary> {
        (**self).balances()
    }
    fn ledger(&self) -> Option<crate::Ledger> {
        (**self).ledger()
    }
    fn is_builtin_ledger(&self) -> bool {
        (**self).is_builtin_ledger()
    }
    fn is_nonblocking(&self) -> bool {
        (**self).is_nonblocking()
    }
}
