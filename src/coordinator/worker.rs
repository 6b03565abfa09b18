//! One worker thread per service: the only caller of its participant.
//!
//! Requests arrive over a bounded crossbeam channel and are handled in FIFO
//! order. FIFO is load-bearing: once a commit or rollback is enqueued, every
//! later request to the same service observes it applied, so the caller may
//! release its key locks without waiting for a slow acknowledgement.
//!
//! Commit and rollback must eventually succeed; a failing one is retried in
//! place with capped exponential backoff (blocking the queue, which keeps the
//! FIFO promise). After `max_attempts` it is parked: counted, logged, and
//! left prepared for an operator.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use crate::sync::channel::{Receiver, SendTimeoutError, Sender};

use crate::coordinator::barrier::{Barrier, Decision, Phase, TxKey};
use crate::coordinator::outstanding::{Failed, Outstanding, Park, Wake};
use crate::coordinator::plan::Plan;
use crate::durable::Journal;
use crate::metrics::Metrics;
use crate::operator::CallError;
use crate::participant::{BalanceSummary, BranchId, Erased, Kept, ParticipantKind, Refusal, VoteDeadlineScope};
use crate::protocol::Keeper;
use crate::retry::RetryPolicy;
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering};
use crate::txn::TxId;
use crate::wal::Lsn;

pub(crate) enum Request {
    Phase {
        plan: Arc<Plan>,
        branch: usize,
        step: Step,
        reply: Sender<Reply>,
        /// A commit to a participant with its own storage: the log position
        /// the decision must be durable up to before the participant is told.
        after: Option<Lsn>,
    },
    Audit {
        reply: Sender<Reply>,
    },
    /// An operator resolved a parked call: record it as applied (commit) or
    /// undone (rollback) without calling the participant.
    Settle {
        key: TxKey,
        step: Step,
    },
    Shutdown,
}

// Defined beside the retry bookkeeping that also keys on it, so that
// `outstanding` needs nothing from this module.
pub(crate) use super::outstanding::Step;

#[derive(Debug)]
pub(crate) enum Answer {
    /// Prepared; with what an external participant needs at commit
    /// ([`Participant::encode_prepared`](crate::Participant::encode_prepared)).
    Yes(Option<Vec<u8>>),
    No(Refusal),
    Panicked,
    LateRefused,
    /// Commit or rollback applied (or found already applied).
    Done,
    /// One-phase: prepared but the caller had given up; rolled back.
    Cancelled,
    /// Retries exhausted; left for an operator.
    Parked,
    /// A request the protocol never sends.
    Violation,
    /// The log failed before the decision became durable: the commit was
    /// not delivered (the participant stays prepared; recovery decides).
    LogFailed,
}

pub(crate) enum Reply {
    Phase { tx: TxId, branch: u16, step: Step, answer: Answer },
    Audit { service: u16, summary: Option<BalanceSummary> },
}

/// A participant with its barrier: everything one call needs, behind one lock.
pub(crate) struct Core {
    pub participant: Box<dyn Erased>,
    pub barrier: Barrier<Kept>,
}

/// One registered service: its participant, its queue and its worker's
/// bookkeeping, shared by the worker thread and the callers.
pub(crate) struct Service {
    pub index: u16,
    pub name: Arc<str>,
    core: Mutex<Core>,
    /// Requests enqueued and not yet handled. A caller may run a request on
    /// its own thread only while this is zero (see `submit`).
    pending: AtomicUsize,
    /// The participant never blocks, so running it inline is safe.
    inline: bool,
    /// The participant is the built-in ledger itself (no wrapper).
    pub builtin_ledger: bool,
    /// Where the participant keeps its state (see `ParticipantKind`).
    pub kind: ParticipantKind,
    /// Who keeps its state, as the protocol core sees it: the log (a ledger
    /// or a wrapper of one) or this process's memory may be told to commit
    /// before the decision is durable (`Keeper::early_commit`).
    pub keeper: Keeper,
    journal: Option<Arc<Journal>>,
    sender: Sender<Request>,
    metrics: Arc<Metrics>,
    outstanding: Arc<Outstanding>,
    retry: RetryPolicy,
    redeliver: Option<(u64, u32)>,
    /// Loom models only: a rule this service skips on purpose, to show the
    /// model catches it.
    #[cfg(loom)]
    pub(crate) broken: Option<LoomBroken>,
}

/// Rules a deliberately broken service skips in the loom models.
#[cfg(loom)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoomBroken {
    /// The inline path runs without checking that nothing is queued.
    InlineIgnoresPending,
    /// A rollback before any prepare is not recorded.
    ForgetsEmptyRollback,
    /// The direct path runs without checking that nothing is queued.
    DirectIgnoresPending,
}

/// The lanes of one service: a service registered with
/// [`Builder::concurrent_service`](crate::Builder::concurrent_service) has
/// several, each a `Service` with its own participant instance, queue,
/// worker thread and barrier, so calls to it run concurrently. A branch
/// always takes the lane its (transaction, branch) hashes to, so its barrier
/// entry lives in one place. FIFO holds per lane
/// only, so the coordinator keeps a transaction's locks until such a
/// service acknowledged its decision (see `Inner::drive`).
pub(crate) struct Lanes(Box<[Arc<Service>]>);

impl Lanes {
    pub(crate) fn new(lanes: Vec<Arc<Service>>) -> Self {
        assert!(!lanes.is_empty(), "a service has at least one lane");
        Lanes(lanes.into_boxed_slice())
    }

    /// Lane 0: the service's description (name, kind) and its single lane
    /// for everything that is not one transaction's (audit, recovery).
    pub(crate) fn first(&self) -> &Arc<Service> {
        &self.0[0]
    }

    /// The lane of one branch: always the same for it, and the branches of
    /// one transaction spread over the lanes, so they are called at once.
    pub(crate) fn for_branch(&self, tx: TxId, branch: u16) -> &Arc<Service> {
        if self.0.len() == 1 {
            return &self.0[0];
        }
        let v = tx.as_u128();
        let h = ((v as u64) ^ ((v >> 64) as u64) ^ u64::from(branch)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        &self.0[(h >> 32) as usize % self.0.len()]
    }

    pub(crate) fn all(&self) -> &[Arc<Service>] {
        &self.0
    }

    /// More than one lane: FIFO does not hold across them.
    pub(crate) fn is_concurrent(&self) -> bool {
        self.0.len() > 1
    }
}

/// What became of a submitted request.
pub(crate) enum Submitted {
    /// Ran on the caller's thread; here is the answer.
    Inline(Answer),
    /// In the worker's queue; the answer will come on the reply channel.
    Queued,
    /// The queue stayed full until the deadline.
    Full,
}

/// A transaction's deadline: fixed, or a timeout counted from the first
/// time anything needs the deadline (see [`PhaseDeadline`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Limit {
    At(Instant),
    After(Duration),
}

/// A phase's deadline, read from the clock only if something waits:
/// `timeout` from its first use, but never past the transaction's
/// deadline, which is itself read from the clock at its first use when it
/// is a [`Limit::After`].
///
/// A transaction whose locks are free and whose calls run inline thus reads
/// no clock at all for its deadlines: clock reads are a visible cost per
/// transaction. A lazy transaction deadline counts from the first time
/// anything waits, so it is late by the CPU work done before that
/// (microseconds, never a wait).
pub(crate) struct PhaseDeadline {
    limit: std::cell::Cell<Limit>,
    timeout: Duration,
    at: std::cell::Cell<Option<Instant>>,
}

/// `now + timeout`, saturating to a year for timeouts past the clock's end.
fn after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

impl PhaseDeadline {
    /// `timeout` from the first use, but never past `limit`.
    pub(crate) fn new(limit: Limit, timeout: Duration) -> Self {
        Self { limit: std::cell::Cell::new(limit), timeout, at: std::cell::Cell::new(None) }
    }

    /// The transaction's deadline (fixed from now if it was not yet).
    pub(crate) fn limit(&self) -> Instant {
        self.limit_from(Instant::now)
    }

    fn limit_from(&self, now: impl FnOnce() -> Instant) -> Instant {
        match self.limit.get() {
            Limit::At(at) => at,
            Limit::After(timeout) => {
                let at = after(now(), timeout);
                self.limit.set(Limit::At(at));
                at
            }
        }
    }

    /// The phase's deadline.
    pub(crate) fn get(&self) -> Instant {
        match self.at.get() {
            Some(at) => at,
            None => {
                let now = Instant::now();
                let at = self.limit_from(|| now).min(after(now, self.timeout));
                self.at.set(Some(at));
                at
            }
        }
    }
}

/// The argument of `Service::skips`: the rule under loom, nothing otherwise.
#[cfg(loom)]
macro_rules! loom_rule {
    ($rule:ident) => {
        LoomBroken::$rule
    };
}
#[cfg(not(loom))]
macro_rules! loom_rule {
    ($rule:ident) => {
        ()
    };
}

/// How many times to spin on a busy participant before queueing instead.
#[cfg(not(loom))]
const INLINE_SPINS: u32 = 64;
/// Under loom one attempt reaches every state more spins would: loom tries
/// the lock at every point a later spin could.
#[cfg(loom)]
const INLINE_SPINS: u32 = 1;
/// Longest an inline caller waits for a busy participant before queueing.
#[cfg(not(loom))]
const INLINE_WAIT: Duration = Duration::from_millis(1);
/// Requests a worker handles per lock acquisition.
const WORKER_BATCH: usize = 64;

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: u16,
        name: Arc<str>,
        participant: Box<dyn Erased>,
        journal: Option<Arc<Journal>>,
        barrier_capacity: usize,
        sender: Sender<Request>,
        metrics: Arc<Metrics>,
        outstanding: Arc<Outstanding>,
        retry: RetryPolicy,
        redeliver: Option<(u64, u32)>,
    ) -> Self {
        let inline = participant.is_nonblocking();
        let builtin_ledger = participant.is_builtin_ledger();
        let kind = participant.kind();
        let keeper = match kind {
            _ if participant.ledger().is_some() => Keeper::Log,
            ParticipantKind::Volatile => Keeper::Memory,
            ParticipantKind::Durable => Keeper::Own,
            ParticipantKind::External => Keeper::External,
        };
        Self {
            index,
            name,
            core: Mutex::new(Core { participant, barrier: Barrier::new(barrier_capacity) }),
            pending: AtomicUsize::new(0),
            inline,
            builtin_ledger,
            kind,
            keeper,
            journal,
            sender,
            metrics,
            outstanding,
            retry,
            redeliver,
            #[cfg(loom)]
            broken: None,
        }
    }

    /// True if this (loom-only, deliberately broken) service skips `rule`.
    #[cfg(loom)]
    fn skips(&self, rule: LoomBroken) -> bool {
        self.broken == Some(rule)
    }

    #[cfg(not(loom))]
    #[inline(always)]
    fn skips(&self, _rule: ()) -> bool {
        false
    }

    /// Asks the participant for branches it holds prepared from before a
    /// restart. Call before any transaction runs, then `adopt` each in the
    /// lane of its transaction.
    pub(crate) fn recover_in_doubt(&self) -> Vec<(BranchId, Kept)> {
        let mut core = self.core.lock();
        match catch_unwind(AssertUnwindSafe(|| core.participant.recover())) {
            Ok(found) => found,
            Err(_) => {
                self.metrics.panics.add(1);
                tracing::error!(service = %self.name, "participant panicked in recover()");
                Vec::new()
            }
        }
    }

    /// Records a recovered branch as prepared, so a commit or rollback can
    /// follow. False if this lane already knew it.
    pub(crate) fn adopt(&self, branch: BranchId, prepared: Kept) -> bool {
        let mut core = self.core.lock();
        let key = TxKey::recovered(branch);
        if core.barrier.decide(key, Phase::Prepare) != Decision::Call {
            return false;
        }
        core.barrier.prepared_ok(key, Some(prepared));
        true
    }

    /// Records a branch as prepared with the value rebuilt from the commit
    /// record (an external participant after a restart), so that its commit
    /// can be delivered again. False if the participant cannot rebuild it.
    pub(crate) fn restore_prepared(&self, branch: BranchId, bytes: &[u8]) -> bool {
        let mut core = self.core.lock();
        let key = TxKey::recovered(branch);
        if core.barrier.decide(key, Phase::Prepare) != Decision::Call {
            return core.barrier.prepared(key).is_some();
        }
        let participant = &core.participant;
        match catch_unwind(AssertUnwindSafe(|| participant.decode(branch, bytes))) {
            Ok(Some(kept)) => {
                core.barrier.prepared_ok(key, Some(kept));
                true
            }
            Ok(None) => false,
            Err(_) => {
                self.metrics.panics.add(1);
                false
            }
        }
    }

    /// Records a branch as possibly prepared (an external participant after
    /// a restart, no decision), with what the participant rebuilds from the
    /// logged request, if anything: its rollback must reach the participant.
    pub(crate) fn restore_unknown(&self, branch: BranchId, request: Option<&[u8]>) {
        let mut core = self.core.lock();
        let key = TxKey::recovered(branch);
        if core.barrier.decide(key, Phase::Prepare) != Decision::Call {
            return;
        }
        let participant = &core.participant;
        let kept = request.and_then(|r| {
            catch_unwind(AssertUnwindSafe(|| participant.rebuild_from_request(branch, r))).unwrap_or_else(|_| {
                self.metrics.panics.add(1);
                None
            })
        });
        core.barrier.prepared_failed(key, kept);
    }

    /// Copies of one phase request to deliver (1 unless testing redelivery).
    fn copies(&self, plan: &Plan, step: Step) -> u32 {
        match self.redeliver {
            None => 1,
            Some((seed, max)) => {
                let mut h = seed ^ (plan.tx.as_u128() as u64) ^ ((plan.tx.as_u128() >> 64) as u64);
                h ^= (step as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(self.index) << 48;
                h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
                1 + ((h >> 33) % u64::from(max)) as u32
            }
        }
    }

    /// True if a commit that must wait for `after` can run now.
    fn durable_by(&self, after: Option<Lsn>) -> bool {
        match (after, &self.journal) {
            (Some(lsn), Some(journal)) => journal.durable() >= lsn,
            _ => true,
        }
    }

    /// Runs `step` on the caller's thread when that keeps per-service FIFO
    /// order, otherwise enqueues it for the worker.
    ///
    /// FIFO argument: two requests that must be ordered belong to
    /// conflicting transactions, and the later transaction cannot submit
    /// before the earlier one released its key locks, which happens only after
    /// the earlier `submit` returned. `pending` is incremented before a
    /// request is sent and decremented only after the worker handled it,
    /// under the core lock; so a caller that holds the core lock and reads
    /// `pending == 0` knows every earlier request has been applied. Otherwise
    /// it queues behind them.
    ///
    /// `after`: a commit that may reach the participant only once the log is
    /// durable up to there (see `ParticipantKind`). It runs inline only if
    /// that already holds; otherwise the worker waits for it, so the
    /// request keeps its place in the queue and the caller's locks may drop.
    pub(crate) fn submit(
        &self,
        plan: &Arc<Plan>,
        branch: usize,
        step: Step,
        reply: &Sender<Reply>,
        deadline: Option<&PhaseDeadline>,
        after: Option<Lsn>,
    ) -> Submitted {
        let copies = self.copies(plan, step);
        if let (Step::Prepare | Step::OnePhase, Some(deadline)) = (step, deadline) {
            // What the participant's prepare may read as its vote deadline.
            plan.vote_by.get_or_init(|| deadline.get());
        }
        if self.inline
            && self.durable_by(after)
            && let Some(mut core) = self.try_core()
        {
            // SeqCst pairs with the increments in `enqueue` (see above).
            if self.pending.load(Ordering::SeqCst) == 0 || self.skips(loom_rule!(InlineIgnoresPending)) {
                // Duplicates are answered from the barrier; the first
                // delivery's answer is the one that counts.
                let (answer, mut handoff) = self.step(&mut core, plan, branch, step, true, after);
                for _ in 1..copies {
                    if handoff.is_none() {
                        handoff = self.step(&mut core, plan, branch, step, true, after).1;
                    }
                }
                if let Some(retry) = handoff {
                    // A commit or rollback failed inline: hand it to the
                    // worker, which retries with backoff. Count it as
                    // pending before the core lock drops so that no later
                    // request overtakes it. Its reply is not awaited.
                    self.pending.fetch_add(1, Ordering::SeqCst);
                    drop(core);
                    let request =
                        Request::Phase { plan: plan.clone(), branch, step: retry, reply: reply.clone(), after };
                    if matches!(self.send(request, None), Submitted::Full) {
                        tracing::error!(tx = %plan.tx, service = %self.name, "worker gone: {retry:?} not handed over");
                    }
                }
                return Submitted::Inline(answer);
            }
        }
        let mut result = Submitted::Queued;
        for _ in 0..copies {
            self.pending.fetch_add(1, Ordering::SeqCst);
            result = self.send(
                Request::Phase { plan: plan.clone(), branch, step, reply: reply.clone(), after },
                deadline.map(PhaseDeadline::get),
            );
            if !matches!(result, Submitted::Queued) {
                break;
            }
        }
        result
    }

    /// Enqueues a request already counted in `pending` (uncounted again if
    /// it could not be sent).
    fn send(&self, request: Request, deadline: Option<Instant>) -> Submitted {
        let sent = match deadline {
            Some(d) => match self.sender.send_deadline(request, d) {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Timeout(_)) => Err(Submitted::Full),
                Err(SendTimeoutError::Disconnected(_)) => Err(Submitted::Full),
            },
            None => self.sender.send(request).map_err(|_| Submitted::Full),
        };
        match sent {
            Ok(()) => Submitted::Queued,
            Err(not_sent) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                not_sent
            }
        }
    }

    /// True if nothing is queued for this service. Read by a caller that
    /// holds the key locks of its accounts, it means every earlier request
    /// that touched them has been applied (the FIFO argument of `submit`:
    /// such a request was counted before its transaction released the keys
    /// we hold, and the count drops only after it took effect; the SeqCst
    /// load synchronizes with that decrement), so the caller may check and
    /// change those balances of a built-in ledger directly — the direct
    /// path, without the core lock. Whatever is enqueued or runs inline
    /// after this read belongs to transactions holding other keys (or
    /// waiting for ours), so it touches other balances.
    pub(crate) fn is_idle(&self) -> bool {
        // SeqCst: see `submit` and above.
        self.pending.load(Ordering::SeqCst) == 0 || self.skips(loom_rule!(DirectIgnoresPending))
    }

    /// Enqueues a request that is not a transaction phase (audit, shutdown).
    pub(crate) fn enqueue(&self, request: Request, deadline: Option<Instant>) -> Submitted {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.send(request, deadline)
    }

    /// The core for an inline call. Another caller holds it only for a few
    /// hundred nanoseconds, so waiting (spin, then park) beats the queue's
    /// thread hop by far; the worker may hold it longer (a batch, or a retry
    /// backoff), so the wait is bounded and the queue is the fallback.
    fn try_core(&self) -> Option<MutexGuard<'_, Core>> {
        for _ in 0..INLINE_SPINS {
            if let Some(core) = self.core.try_lock() {
                return Some(core);
            }
            std::hint::spin_loop();
        }
        // loom has no time: the bounded wait is modelled as elapsed (the
        // attempts above already reach "got it"), so the queued path runs.
        #[cfg(loom)]
        return None;
        #[cfg(not(loom))]
        self.core.try_lock_for(INLINE_WAIT)
    }

    /// Requests enqueued and not yet handled (for the loom models).
    #[cfg(loom)]
    pub(crate) fn pending_requests(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// The worker thread's loop: handle requests in FIFO order, several per
    /// lock acquisition, until a shutdown request.
    pub(crate) fn run(&self, requests: Receiver<Request>) {
        'serve: while let Ok(first) = requests.recv() {
            let mut core = self.core.lock();
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(request) = next.take() {
                let stop = self.handle(&mut core, request);
                // SeqCst: see `submit`. Decrement after the request took effect.
                self.pending.fetch_sub(1, Ordering::SeqCst);
                if stop {
                    break 'serve;
                }
                handled += 1;
                if handled < WORKER_BATCH {
                    next = requests.try_recv().ok();
                }
            }
        }
        let core = self.core.lock();
        if core.barrier.live() > 0 {
            tracing::warn!(service = %self.name, prepared = core.barrier.live(), "worker stopped with undecided transactions");
        }
    }

    /// Handles one request; true for shutdown.
    fn handle(&self, core: &mut Core, request: Request) -> bool {
        match request {
            Request::Phase { plan, branch, step, reply, after } => {
                let (answer, handoff) = self.step(core, &plan, branch, step, false, after);
                debug_assert!(handoff.is_none(), "the worker retries in place");
                // The caller may have gone; its loss.
                let id = plan.branch_id(branch).index;
                let _ = reply.send(Reply::Phase { tx: plan.tx, branch: id, step, answer });
                false
            }
            Request::Audit { reply } => {
                let summary = match catch_unwind(AssertUnwindSafe(|| core.participant.balances())) {
                    Ok(s) => s,
                    Err(_) => {
                        self.metrics.panics.add(1);
                        None
                    }
                };
                let _ = reply.send(Reply::Audit { service: self.index, summary });
                false
            }
            Request::Settle { key, step } => {
                self.settle(core, key, step);
                false
            }
            Request::Shutdown => true,
        }
    }

    /// Records an operator-resolved call as finished without calling the
    /// participant (the operator made its state match the decision).
    fn settle(&self, core: &mut Core, key: TxKey, step: Step) {
        let phase = if step == Step::Commit { Phase::Commit } else { Phase::Rollback };
        if core.barrier.decide(key, phase) == Decision::Call && core.barrier.holds(key) {
            match step {
                Step::Commit if core.barrier.prepared(key).is_some() => core.barrier.committed(key),
                Step::Commit => {}
                _ => core.barrier.rolled_back(key),
            }
            tracing::warn!(tx = %key.tx, branch = key.branch, service = %self.name, ?step, "settled by an operator without calling the participant");
        }
        self.outstanding.cleared(key, self.index);
    }

    /// One step, and for an inline call whose commit or rollback failed,
    /// the step the worker must take over (inline callers never sleep in a
    /// backoff while holding the participant).
    fn step(
        &self,
        core: &mut Core,
        plan: &Plan,
        branch: usize,
        step: Step,
        inline: bool,
        after: Option<Lsn>,
    ) -> (Answer, Option<Step>) {
        let key = plan.key(branch);
        let id = plan.branch_id(branch);
        match step {
            Step::Prepare => (self.prepare(core, plan, branch), None),
            Step::OnePhase => match self.prepare(core, plan, branch) {
                Answer::Yes(_) if plan.claim_commit() => match self.commit(core, key, id, inline, None) {
                    // Decided commit, applied later by the worker.
                    None => (Answer::Parked, Some(Step::Commit)),
                    Some(answer) => (answer, None),
                },
                Answer::Yes(_) => {
                    tracing::debug!(tx = %plan.tx, service = %self.name, "one-phase cancelled by the caller; rolling back");
                    match self.rollback(core, key, id, inline) {
                        Some(Answer::Done) => (Answer::Cancelled, None),
                        Some(other) => (other, None),
                        None => (Answer::Cancelled, Some(Step::Rollback)),
                    }
                }
                // A panic may have left something half-prepared.
                Answer::Panicked => match self.rollback(core, key, id, inline) {
                    None => (Answer::Panicked, Some(Step::Rollback)),
                    Some(_) => (Answer::Panicked, None),
                },
                other => (other, None),
            },
            Step::Commit => match self.commit(core, key, id, inline, after) {
                None => (Answer::Parked, Some(Step::Commit)),
                Some(answer) => (answer, None),
            },
            Step::Rollback => match self.rollback(core, key, id, inline) {
                None => (Answer::Done, Some(Step::Rollback)),
                Some(answer) => (answer, None),
            },
        }
    }

    fn prepare(&self, core: &mut Core, plan: &Plan, branch: usize) -> Answer {
        let (key, id) = (plan.key(branch), plan.branch_id(branch));
        match core.barrier.decide(key, Phase::Prepare) {
            Decision::AlreadyDone => return Answer::Yes(self.encoded(core, key)),
            Decision::AlreadyFailed => return Answer::Panicked,
            Decision::RefuseLate => return Answer::LateRefused,
            Decision::Violation => return self.violation(id, "prepare"),
            Decision::Call => {}
        }
        if plan.is_cancelled() {
            // The caller gave up before we started: refuse without calling,
            // and remember it so a duplicate prepare is refused too.
            core.barrier.rolled_back(key);
            return Answer::LateRefused;
        }
        let work = plan.work(branch);
        let participant = &mut core.participant;
        let _deadline = VoteDeadlineScope::enter(plan.vote_by.get().copied());
        match catch_unwind(AssertUnwindSafe(|| participant.prepare(id, work.as_work()))) {
            Ok(Ok(prepared)) => {
                core.barrier.prepared_ok(key, Some(prepared));
                tracing::trace!(branch = %id, service = %self.name, "prepared");
                Answer::Yes(self.encoded(core, key))
            }
            Ok(Err(refusal @ Refusal::Unknown { .. })) => {
                // It may hold the branch prepared: the rollback must reach it,
                // with what the participant rebuilds from the request.
                let kept = self.kept_from_request(core, plan, branch);
                core.barrier.prepared_failed(key, kept);
                tracing::debug!(branch = %id, service = %self.name, %refusal, "vote not known; counted as no");
                Answer::No(refusal)
            }
            Ok(Err(refusal)) => {
                core.barrier.rolled_back(key);
                tracing::debug!(branch = %id, service = %self.name, %refusal, "prepare refused");
                Answer::No(refusal)
            }
            Err(_) => {
                self.metrics.panics.add(1);
                // It may have half-prepared: rollback must still be called.
                let kept = self.kept_from_request(core, plan, branch);
                core.barrier.prepared_failed(key, kept);
                tracing::warn!(branch = %id, service = %self.name, "participant panicked in prepare");
                Answer::Panicked
            }
        }
    }

    /// What rollback gets for a branch that may be prepared without a value
    /// (an unknown vote, a panic): rebuilt from its request, if it has one.
    fn kept_from_request(&self, core: &Core, plan: &Plan, branch: usize) -> Option<Kept> {
        let request = plan.payload(branch)?;
        let id = plan.branch_id(branch);
        catch_unwind(AssertUnwindSafe(|| core.participant.rebuild_from_request(id, request))).unwrap_or_else(|_| {
            self.metrics.panics.add(1);
            None
        })
    }

    /// What an external participant wants recorded with the commit decision.
    fn encoded(&self, core: &Core, key: TxKey) -> Option<Vec<u8>> {
        if self.kind != ParticipantKind::External {
            return None;
        }
        let kept = core.barrier.prepared(key)?;
        catch_unwind(AssertUnwindSafe(|| core.participant.encode(kept))).unwrap_or_else(|_| {
            self.metrics.panics.add(1);
            None
        })
    }

    fn commit(&self, core: &mut Core, key: TxKey, id: BranchId, inline: bool, after: Option<Lsn>) -> Option<Answer> {
        match core.barrier.decide(key, Phase::Commit) {
            Decision::AlreadyDone => {
                // A duplicate delivery: acknowledging again is harmless.
                self.outstanding.acknowledged(key, self.index, Step::Commit);
                return Some(Answer::Done);
            }
            Decision::Call => {}
            _ => return Some(self.violation(id, "commit")),
        }
        // The rule that keeps a participant with its own storage atomic with
        // the rest: it hears "commit" only once the decision is durable.
        assert!(
            self.keeper.early_commit() || self.journal.is_none() || after.is_some(),
            "commit to {} ({:?}) without a durable decision to wait for",
            self.name,
            self.kind
        );
        if let (Some(lsn), Some(journal)) = (after, &self.journal)
            && journal.durable() < lsn
        {
            debug_assert!(!inline, "inline commits run only once durable (see `submit`)");
            if let Err(error) = journal.wait(lsn) {
                tracing::error!(branch = %id, service = %self.name, %error, "log failed before the decision was durable; commit not delivered");
                return Some(Answer::LogFailed);
            }
        }
        let done = self.retrying(core, key, Step::Commit, inline, |core| {
            let prepared = core.barrier.prepared(key).expect("decide() checked the prepared value");
            core.participant.commit(id, prepared)
        })?;
        Some(if done {
            core.barrier.committed(key);
            tracing::trace!(branch = %id, service = %self.name, "committed");
            if !self.builtin_ledger {
                self.outstanding.acknowledged(key, self.index, Step::Commit);
            }
            Answer::Done
        } else {
            Answer::Parked
        })
    }

    fn rollback(&self, core: &mut Core, key: TxKey, id: BranchId, inline: bool) -> Option<Answer> {
        match core.barrier.decide(key, Phase::Rollback) {
            Decision::AlreadyDone => {
                // Refused, cancelled or rolled back before: it holds nothing.
                self.outstanding.acknowledged(key, self.index, Step::Rollback);
                return Some(Answer::Done);
            }
            Decision::Call => {}
            _ => return Some(self.violation(id, "rollback")),
        }
        if !core.barrier.holds(key) {
            // Rollback before (or instead of) prepare: nothing to undo, but
            // remember it so a late prepare is refused.
            if !self.skips(loom_rule!(ForgetsEmptyRollback)) {
                core.barrier.rolled_back(key);
            }
            self.outstanding.acknowledged(key, self.index, Step::Rollback);
            return Some(Answer::Done);
        }
        let done = self.retrying(core, key, Step::Rollback, inline, |core| {
            let prepared = core.barrier.prepared(key);
            core.participant.rollback(id, prepared)
        })?;
        Some(if done {
            core.barrier.rolled_back(key);
            tracing::trace!(branch = %id, service = %self.name, "rolled back");
            self.outstanding.acknowledged(key, self.index, Step::Rollback);
            Answer::Done
        } else {
            Answer::Parked
        })
    }

    /// Calls `f` until it succeeds, with capped exponential backoff; false
    /// once the call is parked (retries exhausted, or a non-retryable code).
    /// Inline callers get one attempt (`None` after a retryable failure:
    /// the worker takes over) so that they never sleep holding the core.
    /// Failures are tracked in `outstanding` for operators, who may cut a
    /// wait short (retry-now) or resolve the call (then it counts as done:
    /// the operator made the participant's state match the decision).
    fn retrying(
        &self,
        core: &mut Core,
        key: TxKey,
        step: Step,
        inline: bool,
        mut f: impl FnMut(&mut Core) -> Result<(), crate::participant::Failure>,
    ) -> Option<bool> {
        let what = if step == Step::Commit { "commit" } else { "rollback" };
        let mut definite = false;
        let branch = BranchId { tx: key.tx, index: key.branch };
        let max_attempts = self.retry.max_attempts.max(1);
        let mut calls = 0u32;
        loop {
            calls = calls.saturating_add(1);
            let error = match catch_unwind(AssertUnwindSafe(|| f(core))) {
                Ok(Ok(())) => {
                    self.outstanding.cleared(key, self.index);
                    return Some(true);
                }
                Ok(Err(failure)) => {
                    definite = !failure.retryable;
                    CallError { code: failure.code, message: failure.message }
                }
                Err(_) => {
                    self.metrics.panics.add(1);
                    CallError { code: "panicked".into(), message: "participant panicked".into() }
                }
            };
            let (code, message) = (error.code.clone(), error.message.clone());
            let Failed { resolved, round } = self.outstanding.failed(key, self.index, step, error, calls);
            if resolved {
                return self.resolved_meanwhile(key);
            }
            let retryable = !definite && self.retry.is_retryable(&code);
            let exhausted = !retryable || round >= max_attempts;
            if inline && !exhausted {
                self.metrics.retries.add(1);
                tracing::warn!(%branch, service = %self.name, %code, %message, "{what} failed inline; handing it to the worker");
                return None;
            }
            let mut delay = self.retry.sleep_for(round);
            if exhausted {
                match self.outstanding.park(key, self.index) {
                    Park::Parked => {
                        self.metrics.parked.add(1);
                        tracing::error!(%branch, service = %self.name, attempts = round, %code, %message, "{what} parked for an operator");
                        return Some(false);
                    }
                    Park::Resolved => return self.resolved_meanwhile(key),
                    Park::Full if inline => return None,
                    Park::Full => {
                        tracing::error!(%branch, service = %self.name, %code, "{what} cannot park (too many parked calls); retrying");
                        delay = self.retry.max_delay;
                    }
                }
            }
            self.metrics.retries.add(1);
            tracing::warn!(%branch, service = %self.name, %code, %message, attempt = round, ?delay, "{what} failed; retrying");
            match self.outstanding.wait(key, self.index, Instant::now() + delay) {
                Wake::Retry => {}
                Wake::Resolved => return self.resolved_meanwhile(key),
                Wake::Closing => {
                    tracing::warn!(%branch, service = %self.name, "{what} not retried further: shutting down");
                    return Some(false);
                }
            }
        }
    }

    /// An operator resolved the call while it was failing: it counts as
    /// done (the operator made the participant match the decision).
    fn resolved_meanwhile(&self, key: TxKey) -> Option<bool> {
        tracing::warn!(tx = %key.tx, branch = key.branch, service = %self.name, "resolved by an operator; not calling the participant again");
        self.outstanding.cleared(key, self.index);
        Some(true)
    }

    fn violation(&self, branch: BranchId, what: &str) -> Answer {
        self.metrics.violations.add(1);
        tracing::error!(%branch, service = %self.name, "protocol violation: unexpected {what}");
        Answer::Violation
    }
}
