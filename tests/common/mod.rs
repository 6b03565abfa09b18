//! Helpers shared by the integration tests: a sharded bank of `Ledger`
//! services, money checks, a watchdog, and `Probe`, a ledger wrapper that
//! counts calls and can be told to block or panic.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod durable;
pub mod flaky;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;

use dtc::{
    BranchId, Builder, Coordinator, Failure, Ledger, LedgerHold, Participant, Refusal, Transfer, TxId, Work,
    fault::{FaultCounter, FaultPlan, Faulty},
    participant::{BalanceSummary, Directory},
};

/// The seed to use: `DTC_TEST_SEED` if set (to replay a failure), else `default`.
pub fn seed(default: u64) -> u64 {
    std::env::var("DTC_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// A participant wrapping a ledger, boxed so that differently wrapped
/// ledgers can be registered by one helper.
pub type Boxed = Box<dyn Participant<Prepared = LedgerHold>>;

/// `accounts` accounts `acct-<i>` spread over `services` ledgers `svc-<i % S>`,
/// each starting at `balance`. The test keeps clones of the ledgers, so it can
/// read balances after the coordinator has shut down.
pub struct Bank {
    /// One ledger per service, index = service number.
    pub ledgers: Vec<Ledger>,
    /// `svc-<s>`.
    pub services: Vec<String>,
    /// `acct-<i>`, on service `i % services`.
    pub accounts: Vec<String>,
    /// Sum of all starting balances.
    pub total: i128,
}

impl Bank {
    pub fn new(services: usize, accounts: usize, balance: i64) -> Self {
        let ledgers: Vec<Ledger> = (0..services).map(|_| Ledger::with_capacity(accounts / services + 1)).collect();
        let names: Vec<String> = (0..accounts).map(|i| format!("acct-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            ledgers[i % services].create_account(name, balance).expect("create account");
        }
        Self {
            ledgers,
            services: (0..services).map(|s| format!("svc-{s}")).collect(),
            accounts: names,
            total: i128::from(balance) * accounts as i128,
        }
    }

    /// Service number of account `i`.
    pub fn service_index(&self, i: usize) -> usize {
        i % self.services.len()
    }

    /// A leg moving `amount` from account `from` to account `to`.
    pub fn leg(&self, from: usize, to: usize, amount: u64) -> Transfer<'_> {
        Transfer::new(
            &self.services[self.service_index(from)],
            &self.accounts[from],
            &self.services[self.service_index(to)],
            &self.accounts[to],
            amount,
        )
    }

    /// The transfers of `legs` (from, to, amount) over account numbers.
    pub fn transfers(&self, legs: &[Leg]) -> Vec<Transfer<'_>> {
        legs.iter().map(|&(f, t, a)| self.leg(f, t, a)).collect()
    }

    /// A builder with every ledger registered as a plain service.
    pub fn builder(&self) -> Builder {
        self.builder_with(|_, ledger| Box::new(ledger))
    }

    /// A builder registering `wrap(service number, ledger)` for each service.
    pub fn builder_with(&self, mut wrap: impl FnMut(usize, Ledger) -> Boxed) -> Builder {
        let mut builder = Coordinator::builder();
        for (s, (name, ledger)) in self.services.iter().zip(&self.ledgers).enumerate() {
            builder = builder.service(name.clone(), wrap(s, ledger.clone()));
        }
        builder
    }

    /// A builder with every ledger wrapped in `Faulty` with `plan(service)`;
    /// also returns the fault counters, index = service number.
    pub fn faulty_builder(&self, plan: impl Fn(usize) -> FaultPlan) -> (Builder, Vec<FaultCounter>) {
        let mut counters = Vec::new();
        let builder = self.builder_with(|s, ledger| {
            let faulty = Faulty::new(ledger, plan(s));
            counters.push(faulty.counter());
            Box::new(faulty)
        });
        (builder, counters)
    }

    /// Current balance of every account, index = account number. Not
    /// isolated: call it when no transaction is in flight (after an audit or
    /// a shutdown).
    pub fn balances(&self) -> Vec<i64> {
        (0..self.accounts.len())
            .map(|i| self.ledgers[self.service_index(i)].balance(&self.accounts[i]).expect("account exists"))
            .collect()
    }

    /// Reads the ledgers directly (no transaction may be in flight) and
    /// checks that money is conserved and no balance is negative.
    pub fn check_ledgers(&self, context: &str) {
        let balances = self.balances();
        let total: i128 = balances.iter().map(|&b| i128::from(b)).sum();
        assert_eq!(total, self.total, "{context}: money not conserved");
        let negative: Vec<(usize, i64)> =
            balances.iter().enumerate().filter(|(_, b)| **b < 0).map(|(i, b)| (i, *b)).collect();
        assert!(negative.is_empty(), "{context}: negative balances {negative:?}");
    }

    /// Audits through the coordinator and checks total, account count and
    /// that nothing is negative.
    pub fn check_audit(&self, dtc: &Coordinator, context: &str) {
        check_audit(dtc, self.total, self.accounts.len() as u64, context);
    }
}

/// One leg over account numbers: (from, to, amount).
pub type Leg = (usize, usize, u64);

/// 1..=`max_legs` legs between distinct random accounts, amounts 1..=`max_amount`.
pub fn random_legs(rng: &mut SmallRng, accounts: usize, max_legs: usize, max_amount: u64) -> Vec<Leg> {
    (0..rng.random_range(1..=max_legs))
        .map(|_| {
            let from = rng.random_range(0..accounts);
            let to = (from + rng.random_range(1..accounts)) % accounts;
            (from, to, rng.random_range(1..=max_amount))
        })
        .collect()
}

/// The balances a test expects, index = account number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model(pub Vec<i64>);

impl Model {
    pub fn new(accounts: usize, balance: i64) -> Self {
        Self(vec![balance; accounts])
    }

    /// Net change per account of `legs`.
    pub fn net(&self, legs: &[Leg]) -> Vec<i64> {
        let mut net = vec![0i64; self.0.len()];
        for &(from, to, amount) in legs {
            net[from] -= amount as i64;
            net[to] += amount as i64;
        }
        net
    }

    /// Accounts that `legs` would take below zero.
    pub fn short(&self, legs: &[Leg]) -> Vec<usize> {
        let net = self.net(legs);
        (0..self.0.len()).filter(|&i| self.0[i] + net[i] < 0).collect()
    }

    /// Applies every leg.
    pub fn apply(&mut self, legs: &[Leg]) {
        let net = self.net(legs);
        for (b, d) in self.0.iter_mut().zip(net) {
            *b += d;
        }
    }
}

/// A consistent audit shows `total` over `accounts` accounts, none negative.
pub fn check_audit(dtc: &Coordinator, total: i128, accounts: u64, context: &str) {
    let audit = dtc.audit().unwrap_or_else(|e| panic!("{context}: audit failed: {e}"));
    assert_eq!(audit.total, total, "{context}: money not conserved: {audit:?}");
    assert_eq!(audit.negative, 0, "{context}: negative balances: {audit:?}");
    assert_eq!(audit.accounts, accounts, "{context}: accounts: {audit:?}");
}

/// Polls `condition` every millisecond; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let give_up = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < give_up, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `work` on its own thread; fails with a message (instead of hanging
/// the suite) if it has not finished within `limit`. Panics inside `work`
/// are propagated.
pub fn with_watchdog<T: Send + 'static>(what: &str, limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let result = work();
        let _ = done.send(());
        result
    });
    match finished.recv_timeout(limit) {
        Ok(()) => handle.join().expect("finished without panicking"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: not finished within {limit:?} (deadlock or livelock?)")
        }
    }
}

/// How often `Probe` was called for one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub prepare: u32,
    /// Prepares that voted yes.
    pub prepare_ok: u32,
    /// Commit calls, failed ones (panics) included.
    pub commit: u32,
    /// Commit calls that returned `Ok` (the change was applied).
    pub commit_ok: u32,
    /// Rollback calls, failed ones included.
    pub rollback: u32,
    pub rollback_ok: u32,
}

/// Shared control and record of a [`Probe`]; keep an `Arc` in the test.
#[derive(Default)]
pub struct ProbeControl {
    calls: Mutex<HashMap<TxId, Calls>>,
    hold_prepare: AtomicBool,
    hold_commit: AtomicBool,
    held: AtomicU32,
    panic_prepare: AtomicU32,
    panic_commit: AtomicU32,
    panic_rollback: AtomicU32,
}

/// Reopens a held phase when dropped (also when a test fails, so that the
/// coordinator's shutdown does not wait forever on a blocked worker).
#[must_use = "the phase is released when the guard is dropped"]
pub struct Hold(Arc<ProbeControl>, bool);

impl Hold {
    pub fn release(self) {}
}

impl Drop for Hold {
    fn drop(&mut self) {
        let flag = if self.1 { &self.0.hold_prepare } else { &self.0.hold_commit };
        flag.store(false, Ordering::SeqCst);
    }
}

impl ProbeControl {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Calls recorded for `tx` so far.
    pub fn calls(&self, tx: TxId) -> Calls {
        self.calls.lock().unwrap().get(&tx).copied().unwrap_or_default()
    }

    /// Every transaction's calls.
    pub fn all_calls(&self) -> HashMap<TxId, Calls> {
        self.calls.lock().unwrap().clone()
    }

    /// Prepares block (before touching the ledger) until the guard drops.
    pub fn hold_prepare(self: &Arc<Self>) -> Hold {
        self.hold_prepare.store(true, Ordering::SeqCst);
        Hold(self.clone(), true)
    }

    /// Commits block (before applying anything) until the guard drops.
    pub fn hold_commit(self: &Arc<Self>) -> Hold {
        self.hold_commit.store(true, Ordering::SeqCst);
        Hold(self.clone(), false)
    }

    /// Calls blocked right now.
    pub fn held(&self) -> u32 {
        self.held.load(Ordering::SeqCst)
    }

    /// The next `n` prepares panic (before touching the ledger).
    pub fn panic_prepares(&self, n: u32) {
        self.panic_prepare.store(n, Ordering::SeqCst);
    }

    /// The next `n` commit calls panic (before applying anything).
    pub fn panic_commits(&self, n: u32) {
        self.panic_commit.store(n, Ordering::SeqCst);
    }

    /// The next `n` rollback calls panic.
    pub fn panic_rollbacks(&self, n: u32) {
        self.panic_rollback.store(n, Ordering::SeqCst);
    }

    fn record(&self, tx: TxId, f: impl FnOnce(&mut Calls)) {
        f(self.calls.lock().unwrap().entry(tx).or_default());
    }

    fn block_while(&self, flag: &AtomicBool) {
        if flag.load(Ordering::SeqCst) {
            self.held.fetch_add(1, Ordering::SeqCst);
            while flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn maybe_panic(budget: &AtomicU32, what: &str, tx: TxId) {
        if budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            panic!("probe: planned panic in {what} of {tx}");
        }
    }
}

/// A `Ledger` participant that records every call per transaction and can
/// block or panic on command (see [`ProbeControl`]).
pub struct Probe {
    ledger: Ledger,
    control: Arc<ProbeControl>,
    nonblocking: bool,
}

impl Probe {
    pub fn new(ledger: Ledger, control: &Arc<ProbeControl>) -> Self {
        Self { ledger, control: control.clone(), nonblocking: false }
    }

    /// Declares the probe nonblocking, so the coordinator may call it on the
    /// caller's thread (do not hold its phases then).
    pub fn nonblocking(mut self) -> Self {
        self.nonblocking = true;
        self
    }
}

impl Participant for Probe {
    type Prepared = LedgerHold;

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<LedgerHold, Refusal> {
        let (c, tx) = (&self.control, branch.tx);
        c.record(tx, |calls| calls.prepare += 1);
        c.block_while(&c.hold_prepare);
        ProbeControl::maybe_panic(&c.panic_prepare, "prepare", tx);
        let result = self.ledger.prepare(branch, work);
        if result.is_ok() {
            c.record(tx, |calls| calls.prepare_ok += 1);
        }
        result
    }

    fn commit(&mut self, branch: BranchId, prepared: &LedgerHold) -> Result<(), Failure> {
        let (c, tx) = (&self.control, branch.tx);
        c.record(tx, |calls| calls.commit += 1);
        c.block_while(&c.hold_commit);
        ProbeControl::maybe_panic(&c.panic_commit, "commit", tx);
        let result = self.ledger.commit(branch, prepared);
        if result.is_ok() {
            c.record(tx, |calls| calls.commit_ok += 1);
        }
        result
    }

    fn rollback(&mut self, branch: BranchId, prepared: Option<&LedgerHold>) -> Result<(), Failure> {
        let (c, tx) = (&self.control, branch.tx);
        c.record(tx, |calls| calls.rollback += 1);
        ProbeControl::maybe_panic(&c.panic_rollback, "rollback", tx);
        let result = self.ledger.rollback(branch, prepared);
        if result.is_ok() {
            c.record(tx, |calls| calls.rollback_ok += 1);
        }
        result
    }

    fn directory(&self) -> Option<Arc<dyn Directory>> {
        self.ledger.directory()
    }

    fn balances(&mut self) -> Option<BalanceSummary> {
        self.ledger.balances()
    }

    fn ledger(&self) -> Option<Ledger> {
        Some(self.ledger.clone())
    }

    fn is_nonblocking(&self) -> bool {
        self.nonblocking
    }
}

/// Silences the panic messages of injected panics (`Faulty`), which the
/// engine catches and counts; other panics still print.
pub fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.starts_with("injected panic") {
                default(info);
            }
        }));
    });
}
