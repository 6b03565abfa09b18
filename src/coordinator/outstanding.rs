//! Unfinished work an operator may need to see or act on: commit and
//! rollback calls that failed and are being retried or are parked, and
//! commits whose external participants have not all acknowledged.
//!
//! Workers write here when a call fails and when it finally succeeds; the
//! coordinator reads it for [`Coordinator::unfinished`](crate::Coordinator::unfinished)
//! and acts on it for `retry_now` / `resolve`. A worker waiting out a backoff
//! waits on this table's condition variable, so an operator's retry-now or
//! resolve cuts the wait short.
//!
//! Bounded: at most `capacity` failing calls are tracked. A call that would
//! park while the table is full is not parked: its worker keeps retrying at
//! the policy's largest delay (its service stalls, which callers see as
//! prepare timeouts) — nothing is ever dropped out of sight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::barrier::TxKey;
use crate::durable::{Entry, Journal};
use crate::operator::CallError;
use crate::sync::{AtomicUsize, Condvar, Mutex, Ordering};
use crate::txn::TxId;

/// What a caller asks of one service for one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Prepare,
    /// Prepare and, if yes and the caller has not given up, commit at once.
    OnePhase,
    Commit,
    Rollback,
}

/// A branch that still owes an acknowledgement of its transaction's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwedBranch {
    pub service: u16,
    pub branch: u16,
    /// What an external participant needs to commit after a restart
    /// (recorded with the decision; carried by checkpoints).
    pub prepared: Option<Arc<[u8]>>,
}

/// A decided transaction whose non-ledger branches have not all applied
/// the decision yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owed {
    /// `Commit` or `Rollback`.
    pub step: Step,
    pub branches: Vec<OwedBranch>,
}

/// Where a call is tracked: (transaction, service, branch).
type CallKey = (TxId, u16, u16);

fn call_key(key: TxKey, service: u16) -> CallKey {
    (key.tx, service, key.branch)
}

/// One failing commit or rollback call at one service.
#[derive(Debug, Clone)]
pub(crate) struct Stall {
    pub key: TxKey,
    pub service: u16,
    pub step: Step,
    /// Failed calls so far, over every delivery.
    pub attempts: u32,
    /// Failed calls since the last operator retry-now.
    pub round: u32,
    pub last_error: CallError,
    /// When the worker calls again; `None` once parked.
    pub next_retry: Option<Instant>,
    /// An operator asked for the wait to end now.
    pub poked: bool,
    /// An operator resolved it: stop calling, settle the barrier.
    pub resolved: bool,
}

impl Stall {
    pub(crate) fn is_parked(&self) -> bool {
        self.next_retry.is_none() && !self.resolved
    }
}

/// What `Outstanding::failed` tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed {
    /// An operator resolved the call: do not call again, settle.
    pub resolved: bool,
    /// Failed calls since the call was delivered (or an operator asked for
    /// a retry): the worker parks it when this reaches the policy's limit.
    pub round: u32,
}

/// What a worker waiting out a backoff should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Call the participant again.
    Retry,
    /// An operator resolved the call: do not call, settle.
    Resolved,
    /// The coordinator is shutting down: stop retrying (the participant
    /// keeps the call's transaction prepared; recovery resolves it).
    Closing,
}

/// What a parking worker may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Park {
    /// Parked: visible, counted, waiting for an operator.
    Parked,
    /// The table is full: keep retrying.
    Full,
    /// An operator resolved it meanwhile.
    Resolved,
}

pub(crate) struct Outstanding {
    stalls: Mutex<HashMap<CallKey, Stall>>,
    /// `stalls.len()`, readable without the lock: a successful call checks
    /// it (the common case is 0) before taking the lock.
    tracked: AtomicUsize,
    wake: Condvar,
    /// Set by shutdown: waiting workers stop retrying.
    closing: crate::sync::AtomicBool,
    capacity: usize,
    /// Decided; these branches have not applied the decision yet.
    unresolved: Mutex<HashMap<TxId, Owed>>,
    /// `unresolved.len()`, readable without the lock (hot path).
    watching: AtomicUsize,
    journal: Option<Arc<Journal>>,
}

impl Outstanding {
    pub(crate) fn new(capacity: usize, journal: Option<Arc<Journal>>) -> Self {
        Self {
            stalls: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
            wake: Condvar::new(),
            closing: crate::sync::AtomicBool::new(false),
            capacity: capacity.max(1),
            unresolved: Mutex::new(HashMap::new()),
            watching: AtomicUsize::new(0),
            journal,
        }
    }

    /// A call failed (`calls`: the calls of this delivery so far). Records
    /// the error; see [`Failed`].
    pub(crate) fn failed(&self, key: TxKey, service: u16, step: Step, error: CallError, calls: u32) -> Failed {
        let mut stalls = self.stalls.lock();
        let full = stalls.len() >= self.capacity;
        match stalls.get_mut(&call_key(key, service)) {
            Some(stall) => {
                stall.attempts = stall.attempts.saturating_add(1);
                stall.round = stall.round.saturating_add(1);
                stall.last_error = error;
                Failed { resolved: stall.resolved, round: stall.round }
            }
            // Untracked beyond capacity; the worker retries regardless.
            None if full => Failed { resolved: false, round: calls },
            None => {
                let stall = Stall {
                    key,
                    service,
                    step,
                    attempts: 1,
                    round: 1,
                    last_error: error,
                    next_retry: Some(Instant::now()),
                    poked: false,
                    resolved: false,
                };
                stalls.insert(call_key(key, service), stall);
                // SeqCst: read by `cleared` on the worker that retries this
                // call, which got it from this thread (or is this thread).
                self.tracked.store(stalls.len(), Ordering::SeqCst);
                Failed { resolved: false, round: 1 }
            }
        }
    }

    /// Waits until `until`, or less if an operator pokes or resolves it.
    pub(crate) fn wait(&self, key: TxKey, service: u16, until: Instant) -> Wake {
        let mut stalls = self.stalls.lock();
        let at = call_key(key, service);
        if let Some(stall) = stalls.get_mut(&at) {
            stall.next_retry = Some(until);
        }
        loop {
            // SeqCst: pairs with `close` (flag, then notify under the lock).
            if self.closing.load(Ordering::SeqCst) {
                return Wake::Closing;
            }
            match stalls.get_mut(&at) {
                Some(stall) if stall.resolved => return Wake::Resolved,
                Some(stall) if stall.poked => {
                    stall.poked = false;
                    return Wake::Retry;
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= until {
                return Wake::Retry;
            }
            let (guard, _) = self.wake.wait_for(stalls, until - now);
            stalls = guard;
        }
    }

    /// Shutdown: every worker waiting out a backoff stops retrying.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _stalls = self.stalls.lock();
        self.wake.notify_all();
    }

    /// Retries are exhausted: park it if there is room.
    pub(crate) fn park(&self, key: TxKey, service: u16) -> Park {
        let mut stalls = self.stalls.lock();
        match stalls.get_mut(&call_key(key, service)) {
            Some(stall) if stall.resolved => Park::Resolved,
            Some(stall) => {
                stall.next_retry = None;
                Park::Parked
            }
            None => Park::Full,
        }
    }

    /// The call succeeded, or was settled after an operator resolved it.
    pub(crate) fn cleared(&self, key: TxKey, service: u16) {
        // SeqCst: see `failed`.
        if self.tracked.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut stalls = self.stalls.lock();
        if stalls.remove(&call_key(key, service)).is_some() {
            self.tracked.store(stalls.len(), Ordering::SeqCst);
            drop(stalls);
            self.wake.notify_all();
        }
    }

    /// Every tracked call, oldest transaction first.
    pub(crate) fn stalls(&self) -> Vec<Stall> {
        let mut all: Vec<Stall> = self.stalls.lock().values().cloned().collect();
        all.sort_by_key(|s| (s.key.tx, s.service, s.key.branch));
        all
    }

    /// Parked calls of `tx` (every transaction if `None`) are marked as
    /// retrying and returned so the caller can redeliver them; calls waiting
    /// out a backoff are woken. Returns (redeliver, woken).
    pub(crate) fn retry_now(&self, tx: Option<TxId>) -> (Vec<Stall>, usize) {
        let mut stalls = self.stalls.lock();
        let mut redeliver = Vec::new();
        let mut woken = 0;
        for stall in stalls.values_mut().filter(|s| tx.is_none_or(|t| s.key.tx == t) && !s.resolved) {
            if stall.next_retry.is_none() {
                stall.next_retry = Some(Instant::now());
                stall.round = 0;
                redeliver.push(stall.clone());
            } else if tx.is_some() {
                stall.poked = true;
                woken += 1;
            }
        }
        drop(stalls);
        self.wake.notify_all();
        (redeliver, woken)
    }

    /// Marks every call of `tx` resolved (waking waiting workers) and
    /// returns the parked ones, which the caller must settle through their
    /// workers.
    pub(crate) fn resolve(&self, tx: TxId) -> Vec<Stall> {
        let mut stalls = self.stalls.lock();
        let mut parked = Vec::new();
        for stall in stalls.values_mut().filter(|s| s.key.tx == tx) {
            if stall.is_parked() {
                parked.push(stall.clone());
            }
            stall.resolved = true;
        }
        drop(stalls);
        self.wake.notify_all();
        parked
    }

    /// The calls of `tx`.
    pub(crate) fn stalls_of(&self, tx: TxId) -> Vec<Stall> {
        self.stalls.lock().values().filter(|s| s.key.tx == tx).cloned().collect()
    }

    pub(crate) fn parked_count(&self) -> usize {
        self.stalls.lock().values().filter(|s| s.is_parked()).count()
    }

    /// A decision is about to be delivered to branches that must
    /// acknowledge it: its `Done` record follows once every one of them did.
    pub(crate) fn expect(&self, tx: TxId, owed: Owed) {
        debug_assert!(matches!(owed.step, Step::Commit | Step::Rollback) && !owed.branches.is_empty());
        let mut unresolved = self.unresolved.lock();
        unresolved.insert(tx, owed);
        // SeqCst: the decision is delivered after this store (on this
        // thread, or through the worker's channel), so its worker sees it.
        self.watching.store(unresolved.len(), Ordering::SeqCst);
    }

    /// A branch applied the decision `step` of its transaction. The last one
    /// to do so appends the `Done` record.
    pub(crate) fn acknowledged(&self, key: TxKey, service: u16, step: Step) {
        // SeqCst: pairs with `expect`.
        if self.watching.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut unresolved = self.unresolved.lock();
        let Some(owed) = unresolved.get_mut(&key.tx).filter(|o| o.step == step) else { return };
        owed.branches.retain(|b| (b.service, b.branch) != (service, key.branch));
        if owed.branches.is_empty() {
            unresolved.remove(&key.tx);
            self.watching.store(unresolved.len(), Ordering::SeqCst);
            drop(unresolved);
            self.log_done(key.tx);
        }
    }

    /// Forgets the acknowledgements `tx` waits for (an operator resolved it).
    pub(crate) fn forget_acks(&self, tx: TxId) -> bool {
        let mut unresolved = self.unresolved.lock();
        let found = unresolved.remove(&tx).is_some();
        self.watching.store(unresolved.len(), Ordering::SeqCst);
        found
    }

    fn log_done(&self, tx: TxId) {
        if let Some(journal) = &self.journal
            && let Err(error) = journal.append(&Entry::Done { tx }.encoded())
        {
            // Not fatal: without `Done`, recovery asks the participants
            // again and they answer from their own record.
            tracing::warn!(%tx, %error, "could not log Done");
        }
    }

    /// The branches `tx` still waits for, if any.
    pub(crate) fn awaiting(&self, tx: TxId) -> Option<Owed> {
        self.unresolved.lock().get(&tx).cloned()
    }

    /// Every decision waiting for acknowledgements, oldest transaction first.
    pub(crate) fn unresolved(&self) -> Vec<(TxId, Owed)> {
        let mut all: Vec<_> = self.unresolved.lock().iter().map(|(tx, o)| (*tx, o.clone())).collect();
        all.sort_by_key(|(tx, _)| *tx);
        all
    }

    pub(crate) fn unresolved_count(&self) -> usize {
        self.unresolved.lock().len()
    }

    /// Replaces the table (recovery).
    pub(crate) fn restore_unresolved(&self, table: HashMap<TxId, Owed>) {
        let mut unresolved = self.unresolved.lock();
        *unresolved = table;
        self.watching.store(unresolved.len(), Ordering::SeqCst);
    }
}

/// `Duration` until `at`, zero if past.
pub(crate) fn until(at: Instant) -> Duration {
    at.saturating_duration_since(Instant::now())
}
