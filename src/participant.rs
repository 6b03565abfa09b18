//! The contract between the coordinator and a service.

use std::cell::Cell;
use std::time::Instant;

use crate::ledger::{Ledger, LedgerHold};

pub use crate::phase::{BalanceSummary, BranchId, Directory, Failure, Operation, Refusal, Work};

/// Where a participant keeps its state, which decides what the coordinator
/// must make durable before it talks to it (see [`Participant`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ParticipantKind {
    /// State in this process's memory only: a crash loses it with the
    /// coordinator's own memory. May be told to commit before the decision
    /// is durable (the outcome is still returned only once it is).
    Volatile,
    /// Keeps its prepared branches in its own durable storage and lists them
    /// in [`Participant::recover`] after a restart. Told to commit only once
    /// the commit decision is durable. The default: the safe choice.
    #[default]
    Durable,
    /// Keeps durable state that it cannot list (a remote service, closures
    /// with side effects elsewhere). The coordinator makes the branch
    /// durable in its log *before* the prepare is sent, so that after a
    /// crash it can roll back every branch that may have prepared without a
    /// decision, and it records [`Participant::encode_prepared`] in the
    /// commit decision so that it can commit again without the participant.
    /// Told to commit only once the decision is durable.
    External,
}

/// A service taking part in transactions.
///
/// The coordinator calls a participant from one thread at a time (its
/// service's worker, or a caller's thread while the service is idle), so an
/// implementation needs no locking of its own. Within one coordinator
/// process the coordinator makes every phase idempotent and ordered: a
/// duplicate prepare, commit or rollback is answered from its own record and
/// never reaches the participant twice, and a rollback that arrives before
/// its prepare makes that prepare refused without a call. Isolation is the
/// coordinator's job too: it holds a lock on every account (and every lock
/// key a branch declares) from before prepare until the decision is applied.
///
/// # Durability contract
///
/// What the coordinator promises depends on [`kind`](Self::kind):
///
/// * Every kind: the outcome is returned to the caller only once the
///   decision is durable in the coordinator's log (with
///   [`Durability::Sync`](crate::Durability::Sync)); a commit or rollback
///   that fails is retried (see [`Failure`]), and is delivered again after a
///   coordinator restart if it was not acknowledged.
/// * [`ParticipantKind::Durable`] and [`ParticipantKind::External`]: `commit`
///   is called only after the commit decision is durable. So when `prepare`
///   returns `Ok`, the branch's prepared state must be durable in the
///   participant's storage (a crash of either side must not lose it), and
///   until `commit` or `rollback` returns `Ok` it must survive restarts.
///   When `commit` returns `Ok` its effect must be durable; when `rollback`
///   returns `Ok` the prepared state must be durably gone.
/// * [`ParticipantKind::Durable`]: after a restart, [`recover`](Self::recover)
///   must list every branch prepared and not yet committed or rolled back,
///   with the value prepare returned. The coordinator commits each one whose
///   commit decision it recorded and rolls back the rest (presumed abort); a
///   decided branch that is no longer listed counts as committed.
/// * [`ParticipantKind::External`]: the coordinator logs the branch before
///   sending its prepare, and after a restart rolls back every logged branch
///   without a commit decision (`rollback(branch, None)`, also for a branch
///   whose prepare never arrived: answer `Ok` and remember it so a late
///   prepare is refused) and commits every decided, unacknowledged one with
///   the value [`decode_prepared`](Self::decode_prepared) rebuilds from what
///   [`encode_prepared`](Self::encode_prepared) gave at prepare time.
///   Calls may therefore repeat across restarts: commit and rollback must be
///   idempotent in the participant's own storage.
///
/// ```
/// use dtc::{BranchId, Failure, Participant, ParticipantKind, Refusal, Work};
///
/// /// Counts reserved units of stock, in memory.
/// struct Stock { left: i64 }
///
/// impl Participant for Stock {
///     type Prepared = i64;
///     fn kind(&self) -> ParticipantKind {
///         ParticipantKind::Volatile
///     }
///     fn prepare(&mut self, _branch: BranchId, work: Work<'_>) -> Result<i64, Refusal> {
///         let change: i64 = work.operations().iter().map(|op| op.delta).sum();
///         if self.left + change < 0 {
///             return Err(Refusal::new("out_of_stock", "sold out"));
///         }
///         Ok(change)
///     }
///     fn commit(&mut self, _branch: BranchId, change: &i64) -> Result<(), Failure> {
///         self.left += change;
///         Ok(())
///     }
///     fn rollback(&mut self, _branch: BranchId, _change: Option<&i64>) -> Result<(), Failure> {
///         Ok(())
///     }
/// }
/// ```
pub trait Participant: Send + 'static {
    /// What prepare keeps for commit (and rollback).
    type Prepared: Send + 'static;

    /// Vote: check that `work` can be done and keep what commit will need.
    /// Must not make the change visible yet.
    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<Self::Prepared, Refusal>;

    /// Apply what was prepared. Called at most once successfully per branch
    /// within one process; called again after a failure.
    fn commit(&mut self, branch: BranchId, prepared: &Self::Prepared) -> Result<(), Failure>;

    /// Drop what was prepared (`None`: prepare panicked, or the branch is
    /// rolled back after a restart without its prepared value). Called again
    /// after a failure.
    fn rollback(&mut self, branch: BranchId, prepared: Option<&Self::Prepared>) -> Result<(), Failure>;

    /// Where this participant keeps its state (default
    /// [`ParticipantKind::Durable`]).
    fn kind(&self) -> ParticipantKind {
        ParticipantKind::Durable
    }

    /// Branches this participant holds prepared from before a restart
    /// ([`ParticipantKind::Durable`]; see the contract above).
    fn recover(&mut self) -> Vec<(BranchId, Self::Prepared)> {
        Vec::new()
    }

    /// Bytes the coordinator records with its commit decision so that it can
    /// commit this branch after a crash without asking the participant
    /// ([`ParticipantKind::External`]). `None`: nothing needed
    /// ([`decode_prepared`](Self::decode_prepared) gets empty bytes).
    fn encode_prepared(&self, _prepared: &Self::Prepared) -> Option<Vec<u8>> {
        None
    }

    /// Rebuilds a prepared value from what
    /// [`encode_prepared`](Self::encode_prepared) gave, to commit after a
    /// crash. `None` if it cannot: the commit is then parked for an
    /// operator rather than guessed.
    fn decode_prepared(&self, _branch: BranchId, _bytes: &[u8]) -> Option<Self::Prepared> {
        None
    }

    /// What rollback needs, after a restart, for a branch whose prepare may
    /// have run but whose decision was never recorded, rebuilt from the
    /// branch's request ([`ParticipantKind::External`]: the coordinator logs
    /// the request before sending the prepare). `None` (the default):
    /// rollback gets `None`.
    fn prepared_from_request(&self, _branch: BranchId, _request: Work<'_>) -> Option<Self::Prepared> {
        None
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
    /// it). The coordinator logs and snapshots ledger state itself, so its
    /// state is rebuilt from the coordinator's log after a crash.
    fn ledger(&self) -> Option<Ledger> {
        None
    }

    /// True only for the built-in [`Ledger`](Ledger) itself (wrappers
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

/// The built-in ledger's side of the contract: prepare checks the legs and
/// holds their net change, commit applies it, rollback has nothing to undo.
impl Participant for Ledger {
    type Prepared = LedgerHold;

    /// Its state is rebuilt from the coordinator's log.
    fn kind(&self) -> ParticipantKind {
        ParticipantKind::Volatile
    }

    fn prepare(&mut self, _branch: BranchId, work: Work<'_>) -> Result<LedgerHold, Refusal> {
        self.hold(work)
    }

    fn commit(&mut self, _branch: BranchId, prepared: &LedgerHold) -> Result<(), Failure> {
        self.commit_hold(prepared);
        Ok(())
    }

    fn rollback(&mut self, _branch: BranchId, _prepared: Option<&LedgerHold>) -> Result<(), Failure> {
        // Prepare changes nothing; there is nothing to undo.
        Ok(())
    }

    fn directory(&self) -> Option<std::sync::Arc<dyn Directory>> {
        Some(self.account_directory())
    }

    fn balances(&mut self) -> Option<BalanceSummary> {
        Some(self.summary())
    }

    fn ledger(&self) -> Option<Ledger> {
        Some(self.clone())
    }

    fn is_builtin_ledger(&self) -> bool {
        true
    }

    fn is_nonblocking(&self) -> bool {
        true
    }
}

impl<P: Participant + ?Sized> Participant for Box<P> {
    type Prepared = P::Prepared;
    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<Self::Prepared, Refusal> {
        (**self).prepare(branch, work)
    }
    fn commit(&mut self, branch: BranchId, prepared: &Self::Prepared) -> Result<(), Failure> {
        (**self).commit(branch, prepared)
    }
    fn rollback(&mut self, branch: BranchId, prepared: Option<&Self::Prepared>) -> Result<(), Failure> {
        (**self).rollback(branch, prepared)
    }
    fn kind(&self) -> ParticipantKind {
        (**self).kind()
    }
    fn recover(&mut self) -> Vec<(BranchId, Self::Prepared)> {
        (**self).recover()
    }
    fn encode_prepared(&self, prepared: &Self::Prepared) -> Option<Vec<u8>> {
        (**self).encode_prepared(prepared)
    }
    fn decode_prepared(&self, branch: BranchId, bytes: &[u8]) -> Option<Self::Prepared> {
        (**self).decode_prepared(branch, bytes)
    }
    fn prepared_from_request(&self, branch: BranchId, request: Work<'_>) -> Option<Self::Prepared> {
        (**self).prepared_from_request(branch, request)
    }
    fn directory(&self) -> Option<std::sync::Arc<dyn Directory>> {
        (**self).directory()
    }
    fn balances(&mut self) -> Option<BalanceSummary> {
        (**self).balances()
    }
    fn ledger(&self) -> Option<Ledger> {
        (**self).ledger()
    }
    fn is_builtin_ledger(&self) -> bool {
        (**self).is_builtin_ledger()
    }
    fn is_nonblocking(&self) -> bool {
        (**self).is_nonblocking()
    }
}

/// A prepared value with its type erased, held by the engine between a
/// branch's prepare and its decision. Only the [`Participant`] that made it
/// ever sees it again, through [`Typed`], which restores the type.
pub(crate) type Kept = Box<dyn std::any::Any + Send>;

/// The engine's view of a participant: its calls with the prepared value's
/// type erased, so that services of different participant types live in
/// one table.
pub(crate) trait Erased: Send {
    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<Kept, Refusal>;
    fn commit(&mut self, branch: BranchId, kept: &Kept) -> Result<(), Failure>;
    fn rollback(&mut self, branch: BranchId, kept: Option<&Kept>) -> Result<(), Failure>;
    fn recover(&mut self) -> Vec<(BranchId, Kept)>;
    fn encode(&self, kept: &Kept) -> Option<Vec<u8>>;
    fn decode(&self, branch: BranchId, bytes: &[u8]) -> Option<Kept>;
    fn rebuild_from_request(&self, branch: BranchId, request: &[u8]) -> Option<Kept>;
    fn kind(&self) -> ParticipantKind;
    fn directory(&self) -> Option<std::sync::Arc<dyn Directory>>;
    fn balances(&mut self) -> Option<BalanceSummary>;
    fn ledger(&self) -> Option<Ledger>;
    fn is_builtin_ledger(&self) -> bool;
    fn is_nonblocking(&self) -> bool;
}

/// Restores the type of what a participant prepared.
pub(crate) struct Typed<P>(pub P);

/// A kept value that is not of the participant's type: only an engine bug
/// could hand one over, and it must not panic the engine.
fn foreign() -> Failure {
    Failure::with_code("engine_bug", "prepared value of another participant (report this)")
}

impl<P: Participant> Erased for Typed<P> {
    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<Kept, Refusal> {
        self.0.prepare(branch, work).map(|p| Box::new(p) as Kept)
    }
    fn commit(&mut self, branch: BranchId, kept: &Kept) -> Result<(), Failure> {
        let prepared = kept.downcast_ref::<P::Prepared>().ok_or_else(foreign)?;
        self.0.commit(branch, prepared)
    }
    fn rollback(&mut self, branch: BranchId, kept: Option<&Kept>) -> Result<(), Failure> {
        let prepared = match kept {
            Some(kept) => Some(kept.downcast_ref::<P::Prepared>().ok_or_else(foreign)?),
            None => None,
        };
        self.0.rollback(branch, prepared)
    }
    fn recover(&mut self) -> Vec<(BranchId, Kept)> {
        self.0.recover().into_iter().map(|(b, p)| (b, Box::new(p) as Kept)).collect()
    }
    fn encode(&self, kept: &Kept) -> Option<Vec<u8>> {
        kept.downcast_ref::<P::Prepared>().and_then(|p| self.0.encode_prepared(p))
    }
    fn decode(&self, branch: BranchId, bytes: &[u8]) -> Option<Kept> {
        self.0.decode_prepared(branch, bytes).map(|p| Box::new(p) as Kept)
    }
    fn rebuild_from_request(&self, branch: BranchId, request: &[u8]) -> Option<Kept> {
        self.0.prepared_from_request(branch, Work::Payload(request)).map(|p| Box::new(p) as Kept)
    }
    fn kind(&self) -> ParticipantKind {
        self.0.kind()
    }
    fn directory(&self) -> Option<std::sync::Arc<dyn Directory>> {
        self.0.directory()
    }
    fn balances(&mut self) -> Option<BalanceSummary> {
        self.0.balances()
    }
    fn ledger(&self) -> Option<Ledger> {
        self.0.ledger()
    }
    fn is_builtin_ledger(&self) -> bool {
        self.0.is_builtin_ledger()
    }
    fn is_nonblocking(&self) -> bool {
        self.0.is_nonblocking()
    }
}

thread_local! {
    static VOTE_DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// While a coordinator runs a participant's
/// [`prepare`](Participant::prepare) on the current thread: the instant after
/// which it counts the vote as a no — the transaction's deadline or the call
/// timeout, whichever comes first. A participant that retries or waits
/// inside `prepare` (a remote call answered "not known yet", a lock wait of
/// its own) should give up by then: the transaction has moved on, and the
/// thread it holds serves the service's next transactions. `None` outside a
/// prepare, and for calls no caller waits for.
///
/// ```
/// assert_eq!(dtc::participant::vote_deadline(), None);
/// ```
pub fn vote_deadline() -> Option<Instant> {
    VOTE_DEADLINE.with(Cell::get)
}

/// Sets [`vote_deadline`] for one prepare call; the previous value comes
/// back when it drops (a panic in the call included).
pub(crate) struct VoteDeadlineScope(Option<Instant>);

impl VoteDeadlineScope {
    pub(crate) fn enter(deadline: Option<Instant>) -> Self {
        Self(VOTE_DEADLINE.with(|d| d.replace(deadline)))
    }
}

impl Drop for VoteDeadlineScope {
    fn drop(&mut self) {
        VOTE_DEADLINE.with(|d| d.set(self.0));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::txn::TxId;

    fn op(account: &str, delta: i64) -> Operation<'_> {
        Operation { account, key: None, delta }
    }

    fn ops<'a>(ops: &'a [Operation<'a>]) -> Work<'a> {
        Work::Transfers(ops)
    }

    #[test]
    fn prepare_checks_funds_and_commit_applies() {
        let mut l = Ledger::new();
        l.create_account("a", 10).unwrap();
        l.create_account("b", 0).unwrap();
        let tx = BranchId { tx: TxId::from_u128(1), index: 0 };
        let refused = l.prepare(tx, ops(&[op("a", -11), op("b", 11)])).unwrap_err();
        assert_eq!(refused, Refusal::InsufficientFunds { account: "a".into() });
        let p = l.prepare(tx, ops(&[op("a", -4), op("b", 4), op("a", -6), op("b", 6)])).unwrap();
        assert_eq!(l.balance("a"), Some(10), "prepare must not change balances");
        l.commit(tx, &p).unwrap();
        assert_eq!((l.balance("a"), l.balance("b")), (Some(0), Some(10)));
        assert_eq!(l.summary(), BalanceSummary { accounts: 2, total: 10, negative: 0 });
    }

    #[test]
    fn unknown_and_overflow_are_refused() {
        let mut l = Ledger::new();
        l.create_account("a", i64::MAX).unwrap();
        let tx = BranchId { tx: TxId::from_u128(2), index: 0 };
        assert!(matches!(l.prepare(tx, ops(&[op("zz", 1)])), Err(Refusal::UnknownAccount { .. })));
        assert!(matches!(l.prepare(tx, ops(&[op("a", 1)])), Err(Refusal::Overflow { .. })));
        assert!(matches!(l.prepare(tx, Work::Payload(b"x")), Err(Refusal::Other { .. })));
    }

    #[test]
    fn a_vote_deadline_scope_sets_and_restores_even_through_a_panic() {
        let (outer, inner) = (Instant::now() + Duration::from_secs(2), Instant::now() + Duration::from_secs(1));
        assert_eq!(vote_deadline(), None);
        {
            let _outer = VoteDeadlineScope::enter(Some(outer));
            assert_eq!(vote_deadline(), Some(outer));
            let caught = std::panic::catch_unwind(|| {
                let _inner = VoteDeadlineScope::enter(Some(inner));
                assert_eq!(vote_deadline(), Some(inner));
                panic!("a participant panicked");
            });
            assert!(caught.is_err());
            assert_eq!(vote_deadline(), Some(outer), "restored when the panicking call's scope dropped");
            // Another thread sees none of it.
            assert_eq!(std::thread::spawn(vote_deadline).join().unwrap(), None);
        }
        assert_eq!(vote_deadline(), None);
    }
}
