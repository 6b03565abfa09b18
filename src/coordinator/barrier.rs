//! The per-participant phase record that makes prepare, commit and rollback
//! idempotent (the "sub-transaction barrier" of dtm, Seata's "TCC fence").
//!
//! It is a pure state machine: the worker asks [`Barrier::decide`] what a
//! request means given what it already knows, calls the participant only
//! when told to, and reports the result with [`Barrier::record`].
//!
//! ```text
//!            prepare ok              commit ok
//!   Absent ───────────▶ Prepared ────────────────▶ Committed
//!     │  prepare refused   │  rollback ok
//!     │  rollback (empty)  ▼
//!     └──────────────▶ RolledBack  ◀── a later prepare is refused
//! ```
//! A prepare that panicked, or whose vote is not known, leaves a *failed*
//! `Prepared`: never committed, a duplicate prepare answered as the first
//! was, but rollback must still be called so the participant can clean up
//! (with what it could rebuild from the request, if anything).

use std::collections::VecDeque;

use std::hash::{BuildHasherDefault, Hasher};

use hashbrown::HashMap;

use crate::participant::BranchId;
use crate::txn::TxId;

/// One branch of one execution of a transaction. An id whose run failed
/// before any decision may be run again; its new execution must not be
/// answered from the old one's record, so the barrier keys on (id, execution
/// number, branch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TxKey {
    pub tx: TxId,
    pub attempt: u64,
    pub branch: u16,
}

impl TxKey {
    /// Execution 0: branches recovered after a restart.
    pub(crate) fn recovered(branch: BranchId) -> Self {
        TxKey { tx: branch.tx, attempt: 0, branch: branch.index }
    }
}

/// The three phases a coordinator can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Phase {
    Prepare,
    Commit,
    Rollback,
}

/// What the participant has done for one transaction.
#[derive(Debug)]
pub(crate) enum Entry<P> {
    /// Prepared with this value; `failed`: the prepare panicked or its vote
    /// is not known (no commit, but a rollback is owed).
    Prepared {
        value: Option<P>,
        failed: bool,
    },
    Committed,
    RolledBack,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Call the participant for this phase.
    Call,
    /// Already done: answer yes / acknowledged without calling.
    AlreadyDone,
    /// A duplicate of a prepare that panicked: answer as that one did.
    AlreadyFailed,
    /// A prepare after the rollback: refuse without calling.
    RefuseLate,
    /// A request the protocol never sends (commit after rollback, commit
    /// without prepare, rollback after commit): refuse loudly.
    Violation,
}

/// A multiply-rotate hash (FxHash-like) for `TxKey`: its fields are already
/// unique counters and time-ordered ids, so a keyed hash buys nothing here and
/// costs a visible share of each transaction.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Bounded: finished entries are forgotten oldest first beyond `capacity`.
/// Live (prepared) entries are never forgotten.
pub(crate) struct Barrier<P> {
    entries: HashMap<TxKey, Entry<P>, BuildHasherDefault<KeyHasher>>,
    finished: VecDeque<TxKey>,
    capacity: usize,
    live: usize,
}

impl<P> Barrier<P> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { entries: HashMap::default(), finished: VecDeque::new(), capacity: capacity.max(1), live: 0 }
    }

    pub(crate) fn decide(&self, tx: TxKey, phase: Phase) -> Decision {
        match (self.entries.get(&tx), phase) {
            (None, Phase::Prepare) => Decision::Call,
            (None, Phase::Commit) => Decision::Violation,
            // An empty rollback: record it so a late prepare is refused.
            (None, Phase::Rollback) => Decision::Call,
            // The first prepare failed: a duplicate must not turn it into a yes.
            (Some(Entry::Prepared { failed: true, .. }), Phase::Prepare) => Decision::AlreadyFailed,
            (Some(Entry::Prepared { value: Some(_), .. }), Phase::Prepare) => Decision::AlreadyDone,
            (Some(Entry::Prepared { value: None, .. }), Phase::Prepare) => Decision::AlreadyFailed,
            (Some(Entry::Prepared { value: Some(_), failed: false }), Phase::Commit) => Decision::Call,
            (Some(Entry::Prepared { .. }), Phase::Commit) => Decision::Violation,
            (Some(Entry::Prepared { .. }), Phase::Rollback) => Decision::Call,
            (Some(Entry::Committed), Phase::Prepare | Phase::Commit) => Decision::AlreadyDone,
            (Some(Entry::Committed), Phase::Rollback) => Decision::Violation,
            (Some(Entry::RolledBack), Phase::Prepare) => Decision::RefuseLate,
            (Some(Entry::RolledBack), Phase::Commit) => Decision::Violation,
            (Some(Entry::RolledBack), Phase::Rollback) => Decision::AlreadyDone,
        }
    }

    /// The prepared value, for a commit call.
    pub(crate) fn prepared(&self, tx: TxKey) -> Option<&P> {
        match self.entries.get(&tx) {
            Some(Entry::Prepared { value, .. }) => value.as_ref(),
            _ => None,
        }
    }

    /// True if a participant call is needed to roll back (something was
    /// prepared), false for an empty rollback.
    pub(crate) fn holds(&self, tx: TxKey) -> bool {
        matches!(self.entries.get(&tx), Some(Entry::Prepared { .. }))
    }

    pub(crate) fn prepared_ok(&mut self, tx: TxKey, value: Option<P>) {
        self.insert_prepared(tx, value, false);
    }

    /// A prepare that panicked or whose vote is not known: never committed,
    /// rolled back with `value` (what could be rebuilt), if any.
    pub(crate) fn prepared_failed(&mut self, tx: TxKey, value: Option<P>) {
        self.insert_prepared(tx, value, true);
    }

    fn insert_prepared(&mut self, tx: TxKey, value: Option<P>, failed: bool) {
        debug_assert!(!self.entries.contains_key(&tx), "prepare recorded twice for {tx:?}");
        self.entries.insert(tx, Entry::Prepared { value, failed });
        self.live += 1;
    }

    pub(crate) fn committed(&mut self, tx: TxKey) {
        debug_assert!(matches!(self.entries.get(&tx), Some(Entry::Prepared { value: Some(_), failed: false })));
        self.finish(tx, Entry::Committed);
    }

    /// Rolled back, refused, or rolled back before any prepare.
    pub(crate) fn rolled_back(&mut self, tx: TxKey) {
        debug_assert!(!matches!(self.entries.get(&tx), Some(Entry::Committed)));
        self.finish(tx, Entry::RolledBack);
    }

    /// Transactions prepared and not yet decided here.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    fn is_finished(&self, tx: TxKey) -> bool {
        matches!(self.entries.get(&tx), Some(Entry::Committed | Entry::RolledBack))
    }

    fn finish(&mut self, tx: TxKey, entry: Entry<P>) {
        if let Some(Entry::Prepared { .. }) = self.entries.insert(tx, entry) {
            self.live -= 1;
        }
        self.finished.push_back(tx);
        while self.finished.len() > self.capacity {
            if let Some(old) = self.finished.pop_front()
                && self.is_finished(old)
            {
                self.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TxKey = TxKey { tx: TxId::from_u128(9), attempt: 1, branch: 0 };

    #[test]
    fn duplicates_are_answered_from_the_record() {
        let mut b = Barrier::<u8>::new(8);
        assert_eq!(b.decide(T, Phase::Prepare), Decision::Call);
        b.prepared_ok(T, Some(1));
        assert_eq!(b.decide(T, Phase::Prepare), Decision::AlreadyDone);
        assert_eq!(b.decide(T, Phase::Commit), Decision::Call);
        b.committed(T);
        assert_eq!(b.decide(T, Phase::Commit), Decision::AlreadyDone);
        assert_eq!(b.decide(T, Phase::Prepare), Decision::AlreadyDone);
        assert_eq!(b.decide(T, Phase::Rollback), Decision::Violation);
    }

    #[test]
    fn a_panicked_prepare_stays_failed_and_executions_are_apart() {
        let mut b = Barrier::<u8>::new(8);
        b.prepared_failed(T, Some(5));
        assert_eq!(b.prepared(T), Some(&5), "the rollback gets what was rebuilt");
        assert_eq!(b.decide(T, Phase::Prepare), Decision::AlreadyFailed);
        assert_eq!(b.decide(T, Phase::Commit), Decision::Violation);
        assert_eq!(b.decide(T, Phase::Rollback), Decision::Call);
        let again = TxKey { attempt: 2, ..T };
        assert_eq!(b.decide(again, Phase::Prepare), Decision::Call);
    }

    #[test]
    fn rollback_before_prepare_refuses_the_late_prepare() {
        let mut b = Barrier::<u8>::new(8);
        assert_eq!(b.decide(T, Phase::Rollback), Decision::Call);
        assert!(!b.holds(T));
        b.rolled_back(T);
        assert_eq!(b.decide(T, Phase::Prepare), Decision::RefuseLate);
        assert_eq!(b.decide(T, Phase::Rollback), Decision::AlreadyDone);
        assert_eq!(b.decide(T, Phase::Commit), Decision::Violation);
    }

    #[test]
    fn finished_entries_are_bounded_live_ones_kept() {
        let mut b = Barrier::<u8>::new(4);
        b.prepared_ok(TxKey::recovered(BranchId { tx: TxId::from_u128(1000), index: 0 }), Some(0));
        for i in 0..100 {
            let t = TxKey::recovered(BranchId { tx: TxId::from_u128(i), index: 0 });
            b.prepared_ok(t, Some(0));
            b.committed(t);
        }
        assert!(b.entries.len() <= 5 + 4, "{}", b.entries.len());
        assert!(b.prepared(TxKey::recovered(BranchId { tx: TxId::from_u128(1000), index: 0 })).is_some());
        assert_eq!(b.live(), 1);
    }
}
