//! Seeded fault injection for simulated services.
//!
//! [`Faulty`] wraps any [`Participant`] and, before delegating a call, draws
//! from a seeded generator whether to refuse (prepare) or fail (commit,
//! rollback), panic, or stall past the caller's timeout. The same seed and
//! the same sequence of calls give the same faults.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::participant::{BalanceSummary, BranchId, Directory, Failure, Participant, ParticipantKind, Refusal, Work};

/// Fault rates for one phase, each a probability in `[0, 1]`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultRates {
    /// Refuse the prepare (vote no), or fail the commit/rollback call.
    pub refuse: f64,
    /// Panic inside the call.
    pub panic: f64,
    /// Sleep for [`FaultPlan::stall_for`] before answering.
    pub stall: f64,
}

/// Which faults to inject, and how often.
///
/// ```
/// use dtc::{Ledger, fault::{FaultPlan, Faulty}};
/// use std::time::Duration;
/// let plan = FaultPlan::new(42).refuse(0.01).panic(0.001).stall(0.001, Duration::from_millis(20));
/// let service = Faulty::new(Ledger::new(), plan);
/// assert_eq!(service.injected().panics, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultPlan {
    /// Seed of the generator.
    pub seed: u64,
    /// Rates while preparing.
    pub prepare: FaultRates,
    /// Rates while committing.
    pub commit: FaultRates,
    /// Rates while rolling back.
    pub rollback: FaultRates,
    /// How long a stall lasts.
    pub stall_for: Duration,
}

impl FaultPlan {
    /// No faults yet; add them with the other methods.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            prepare: FaultRates::default(),
            commit: FaultRates::default(),
            rollback: FaultRates::default(),
            stall_for: Duration::from_millis(10),
        }
    }

    /// Refuse prepares (and fail commits/rollbacks, which are then retried) at `rate`.
    pub fn refuse(mut self, rate: f64) -> Self {
        self.prepare.refuse = rate;
        self.commit.refuse = rate;
        self.rollback.refuse = rate;
        self
    }

    /// Panic in any phase at `rate`.
    pub fn panic(mut self, rate: f64) -> Self {
        self.prepare.panic = rate;
        self.commit.panic = rate;
        self.rollback.panic = rate;
        self
    }

    /// Stall for `duration` in any phase at `rate`.
    pub fn stall(mut self, rate: f64, duration: Duration) -> Self {
        self.prepare.stall = rate;
        self.commit.stall = rate;
        self.rollback.stall = rate;
        self.stall_for = duration;
        self
    }
}

/// How many faults a [`Faulty`] participant has injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectedFaults {
    /// Refused prepares and failed commits/rollbacks.
    pub refusals: u64,
    /// Panics.
    pub panics: u64,
    /// Stalls.
    pub stalls: u64,
}

#[derive(Default)]
struct Counts {
    refusals: AtomicU64,
    panics: AtomicU64,
    stalls: AtomicU64,
}

/// A participant with injected faults.
pub struct Faulty<P> {
    inner: P,
    plan: FaultPlan,
    rng: SmallRng,
    counts: Arc<Counts>,
}

/// A handle to read a [`Faulty`] participant's counts after it was moved
/// into a coordinator.
#[derive(Clone)]
pub struct FaultCounter(Arc<Counts>);

impl FaultCounter {
    /// The counts so far.
    pub fn get(&self) -> InjectedFaults {
        read(&self.0)
    }
}

fn read(c: &Counts) -> InjectedFaults {
    InjectedFaults {
        refusals: c.refusals.load(Ordering::Relaxed),
        panics: c.panics.load(Ordering::Relaxed),
        stalls: c.stalls.load(Ordering::Relaxed),
    }
}

enum Fault {
    None,
    Refuse,
}

impl<P: Participant> Faulty<P> {
    /// Wraps `inner` with the faults of `plan`.
    pub fn new(inner: P, plan: FaultPlan) -> Self {
        Self { inner, rng: SmallRng::seed_from_u64(plan.seed), plan, counts: Arc::default() }
    }

    /// The counts so far.
    pub fn injected(&self) -> InjectedFaults {
        read(&self.counts)
    }

    /// A handle that keeps reading the counts after `self` is moved.
    pub fn counter(&self) -> FaultCounter {
        FaultCounter(self.counts.clone())
    }

    fn draw(&mut self, rates: FaultRates, what: &str, tx: BranchId) -> Fault {
        // Relaxed: statistics.
        if rates.stall > 0.0 && self.rng.random_bool(rates.stall.clamp(0.0, 1.0)) {
            self.counts.stalls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(self.plan.stall_for);
        }
        if rates.panic > 0.0 && self.rng.random_bool(rates.panic.clamp(0.0, 1.0)) {
            self.counts.panics.fetch_add(1, Ordering::Relaxed);
            panic!("injected panic in {what} of {tx}");
        }
        if rates.refuse > 0.0 && self.rng.random_bool(rates.refuse.clamp(0.0, 1.0)) {
            self.counts.refusals.fetch_add(1, Ordering::Relaxed);
            return Fault::Refuse;
        }
        Fault::None
    }
}

impl<P: Participant> Participant for Faulty<P> {
    type Prepared = P::Prepared;

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<P::Prepared, Refusal> {
        match self.draw(self.plan.prepare, "prepare", branch) {
            Fault::Refuse => Err(Refusal::new("injected", "injected refusal")),
            Fault::None => self.inner.prepare(branch, work),
        }
    }

    fn commit(&mut self, branch: BranchId, prepared: &P::Prepared) -> Result<(), Failure> {
        match self.draw(self.plan.commit, "commit", branch) {
            Fault::Refuse => Err(Failure::new("injected commit failure")),
            Fault::None => self.inner.commit(branch, prepared),
        }
    }

    fn rollback(&mut self, branch: BranchId, prepared: Option<&P::Prepared>) -> Result<(), Failure> {
        match self.draw(self.plan.rollback, "rollback", branch) {
            Fault::Refuse => Err(Failure::new("injected rollback failure")),
            Fault::None => self.inner.rollback(branch, prepared),
        }
    }

    fn kind(&self) -> ParticipantKind {
        self.inner.kind()
    }

    fn recover(&mut self) -> Vec<(BranchId, P::Prepared)> {
        self.inner.recover()
    }

    fn encode_prepared(&self, prepared: &P::Prepared) -> Option<Vec<u8>> {
        self.inner.encode_prepared(prepared)
    }

    fn decode_prepared(&self, branch: BranchId, bytes: &[u8]) -> Option<P::Prepared> {
        self.inner.decode_prepared(branch, bytes)
    }

    fn prepared_from_request(&self, branch: BranchId, request: Work<'_>) -> Option<P::Prepared> {
        self.inner.prepared_from_request(branch, request)
    }

    fn directory(&self) -> Option<Arc<dyn Directory>> {
        self.inner.directory()
    }

    fn balances(&mut self) -> Option<BalanceSummary> {
        self.inner.balances()
    }

    fn ledger(&self) -> Option<crate::Ledger> {
        self.inner.ledger()
    }

    // Stalls block: with any, never run on a caller's thread.
    fn is_nonblocking(&self) -> bool {
        let stalls = [self.plan.prepare.stall, self.plan.commit.stall, self.plan.rollback.stall];
        stalls.iter().all(|&rate| rate <= 0.0) && self.inner.is_nonblocking()
    }
}
