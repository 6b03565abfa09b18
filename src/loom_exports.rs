//! Internals exposed to the loom models in `tests/loom_*.rs` (not API):
//! thin wrappers over the engine's own types, so a model runs the code the
//! engine runs. Compiled only under `--cfg loom`.

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
