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
pub use crate::wal::reserve::{Claim, Cursor};

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
        self.0.acquire(sorted, || deadline).map(LockSet)
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

/// A phase a loom model asks of the engine's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Prepare,
    Commit,
    Rollback,
}

/// The worker's answer (`coordinator::worker::Answer`), simplified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Yes,
    No,
    LateRefused,
    Panicked,
    Done,
    Parked,
    Violation,
    Other(String),
}

/// What became of a submitted request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Inline(Answer),
    Queued,
    Full,
}

/// A rule the engine's worker skips on purpose (the models' broken variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// The inline path runs without checking that nothing is queued.
    InlineIgnoresPending,
    /// A rollback before any prepare is not recorded in the barrier.
    ForgetsEmptyRollback,
    /// The direct path runs without checking that nothing is queued.
    DirectIgnoresPending,
}

use crate::coordinator::worker;

/// The engine's worker (`coordinator::worker::Service`: its `submit`,
/// `enqueue`, `run`, barrier and participant handling, unchanged) around a
/// model's participant, on the loom channel of `crate::sync::channel`.
pub struct Service {
    inner: std::sync::Arc<worker::Service>,
}

/// The receiving end of a service's queue, for its worker thread.
pub struct Worker {
    inner: std::sync::Arc<worker::Service>,
    requests: crate::sync::channel::Receiver<worker::Request>,
}

fn bare(tx: u128) -> std::sync::Arc<crate::coordinator::plan::Plan> {
    let branch = crate::participant::BranchId { tx: crate::TxId::from_u128(tx), index: 0 };
    std::sync::Arc::new(crate::coordinator::plan::Plan::bare(engine_barrier::TxKey::recovered(branch), 0))
}

fn engine_step(step: Step) -> worker::Step {
    match step {
        Step::Prepare => worker::Step::Prepare,
        Step::Commit => worker::Step::Commit,
        Step::Rollback => worker::Step::Rollback,
    }
}

fn answer(answer: worker::Answer) -> Answer {
    match answer {
        worker::Answer::Yes(_) => Answer::Yes,
        worker::Answer::No(_) => Answer::No,
        worker::Answer::LateRefused => Answer::LateRefused,
        worker::Answer::Panicked => Answer::Panicked,
        worker::Answer::Done => Answer::Done,
        worker::Answer::Parked => Answer::Parked,
        worker::Answer::Violation => Answer::Violation,
        other => Answer::Other(format!("{other:?}")),
    }
}

impl Service {
    /// A service (queue of 16) around `participant`, and its worker's end.
    pub fn new<P: crate::Participant<Prepared = ()>>(participant: P, broken: Option<Broken>) -> (Self, Worker) {
        let (sender, requests) = crate::sync::channel::bounded(16);
        let mut service = worker::Service::new(
            0,
            "svc".into(),
            Box::new(crate::participant::Typed(participant)),
            None,
            8,
            sender,
            std::sync::Arc::new(crate::metrics::Metrics::default()),
            std::sync::Arc::new(crate::coordinator::outstanding::Outstanding::new(16, None)),
            crate::RetryPolicy::default(),
            None,
        );
        service.broken = broken.map(|b| match b {
            Broken::InlineIgnoresPending => worker::LoomBroken::InlineIgnoresPending,
            Broken::ForgetsEmptyRollback => worker::LoomBroken::ForgetsEmptyRollback,
            Broken::DirectIgnoresPending => worker::LoomBroken::DirectIgnoresPending,
        });
        let inner = std::sync::Arc::new(service);
        (Self { inner: inner.clone() }, Worker { inner, requests })
    }

    /// Records branch 0 of `tx` as prepared (as recovery does), so that its
    /// commit can be submitted.
    pub fn adopt(&self, tx: u128) {
        let branch = crate::participant::BranchId { tx: crate::TxId::from_u128(tx), index: 0 };
        assert!(self.inner.adopt(branch, Box::new(())), "adopted twice");
    }

    /// `Service::submit` of `step` for branch 0 of `tx` (inline when the
    /// service is idle, else queued; the reply of a queued one is dropped).
    pub fn submit(&self, tx: u128, step: Step) -> Submitted {
        let (reply, _replies) = crate::sync::channel::unbounded();
        match self.inner.submit(&bare(tx), 0, engine_step(step), &reply, None, None) {
            worker::Submitted::Inline(a) => Submitted::Inline(answer(a)),
            worker::Submitted::Queued => Submitted::Queued,
            worker::Submitted::Full => Submitted::Full,
        }
    }

    /// [`submit`](Self::submit), and for a queued request its answer (the
    /// worker must be running).
    pub fn call(&self, tx: u128, step: Step) -> Answer {
        let (reply, replies) = crate::sync::channel::unbounded();
        match self.inner.submit(&bare(tx), 0, engine_step(step), &reply, None, None) {
            worker::Submitted::Inline(a) => answer(a),
            worker::Submitted::Queued => match replies.recv() {
                Ok(worker::Reply::Phase { answer: a, .. }) => answer(a),
                Ok(worker::Reply::Audit { .. }) => Answer::Other("audit".into()),
                Err(_) => Answer::Other("no reply".into()),
            },
            worker::Submitted::Full => Answer::Other("full".into()),
        }
    }

    /// `Service::enqueue` of a commit of `tx` (queued whatever the state).
    pub fn enqueue_commit(&self, tx: u128) {
        let (reply, _replies) = crate::sync::channel::unbounded();
        let plan = bare(tx);
        let request = worker::Request::Phase { plan, branch: 0, step: worker::Step::Commit, reply, after: None };
        assert!(matches!(self.inner.enqueue(request, None), worker::Submitted::Queued));
    }

    /// `Service::enqueue` of the shutdown request.
    pub fn shutdown(&self) {
        self.inner.enqueue(worker::Request::Shutdown, None);
    }

    /// `Service::is_idle`: whether a caller holding its key locks may take
    /// the direct path (change the balances itself, no core lock).
    pub fn is_idle(&self) -> bool {
        self.inner.is_idle()
    }

    /// Requests enqueued and not yet handled.
    pub fn pending(&self) -> usize {
        self.inner.pending_requests()
    }
}

impl Worker {
    /// `Service::run`: handles requests until the shutdown request.
    pub fn run(self) {
        self.inner.run(self.requests)
    }
}
