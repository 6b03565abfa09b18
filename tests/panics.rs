//! Panics inside participants: a panicking prepare aborts the transaction
//! and is rolled back; panicking commits and rollbacks are retried until they
//! succeed; the worker and the coordinator keep serving; metrics count every
//! panic. Each scenario runs with a blocking participant (always called by
//! its worker thread) and a nonblocking one (called inline on the caller's
//! thread when its worker is idle).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Bank, Probe, ProbeControl, seed, wait_until};
use dtc::{AbortReason, Coordinator, Outcome, RetryPolicy, fault::FaultPlan};

const WAIT: Duration = Duration::from_secs(10);

const FAST_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), 50);

/// svc-0 is a `Probe` (nonblocking or not), svc-1 a plain ledger; acct-0 and
/// acct-2 on svc-0, acct-1 and acct-3 on svc-1, each with 100.
fn probed(nonblocking: bool) -> (Bank, Arc<ProbeControl>, Coordinator) {
    let bank = Bank::new(2, 4, 100);
    let control = ProbeControl::new();
    let dtc = bank
        .builder_with(|s, ledger| -> common::Boxed {
            match s {
                0 if nonblocking => Box::new(Probe::new(ledger, &control).nonblocking()),
                0 => Box::new(Probe::new(ledger, &control)),
                _ => Box::new(ledger),
            }
        })
        .retry(FAST_RETRY)
        .open()
        .unwrap();
    (bank, control, dtc)
}

/// Both shapes touching svc-0: two services (svc-1/acct-1 → svc-0/acct-0)
/// and one (svc-0/acct-2 → svc-0/acct-0).
const SHAPES: [(usize, usize); 2] = [(1, 0), (2, 0)];

fn panic_in_prepare(nonblocking: bool) {
    let (bank, control, dtc) = probed(nonblocking);
    for (n, (from, to)) in SHAPES.into_iter().enumerate() {
        let ctx = format!("nonblocking {nonblocking}, acct-{from} → acct-{to}");
        control.panic_prepares(1);
        let tx = dtc.new_tx_id();
        let outcome = dtc.execute_as(tx, &[bank.leg(from, to, 40)]).unwrap();
        assert_eq!(outcome, Outcome::Aborted(AbortReason::ParticipantPanicked { service: "svc-0".into() }), "{ctx}");
        wait_until(&format!("{ctx}: the rollback"), WAIT, || control.calls(tx).rollback_ok == 1);
        let calls = control.calls(tx);
        assert_eq!((calls.prepare, calls.commit, calls.rollback), (1, 0, 1), "{ctx}: {calls:?}");
        bank.check_audit(&dtc, &ctx);
        assert_eq!(bank.balances(), [100, 100, 100, 100], "{ctx}");
        let m = dtc.metrics();
        assert_eq!(m.panics, n as u64 + 1, "{ctx}: {m:?}");
        assert!(m.aborted.contains(&("participant_panicked", n as u64 + 1)), "{ctx}: {m:?}");
        assert_eq!(m.protocol_violations, 0, "{ctx}: {m:?}");
    }
    // The worker still serves.
    assert_eq!(dtc.execute(&[bank.leg(1, 0, 40)]).unwrap(), Outcome::Committed);
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), [140, 60, 100, 100]);
}

/// A panicking prepare aborts with `ParticipantPanicked` and is rolled back (blocking participant).
#[test]
fn panic_in_prepare_aborts_and_rolls_back() {
    panic_in_prepare(false);
}

/// A panicking prepare aborts with `ParticipantPanicked` and is rolled back (inline participant).
#[test]
fn panic_in_prepare_aborts_and_rolls_back_inline() {
    panic_in_prepare(true);
}

fn panics_in_commit(nonblocking: bool) {
    let (bank, control, dtc) = probed(nonblocking);
    let mut expected = [100i64, 100, 100, 100];
    for (n, (from, to)) in SHAPES.into_iter().enumerate() {
        let ctx = format!("nonblocking {nonblocking}, acct-{from} → acct-{to}");
        control.panic_commits(3);
        let tx = dtc.new_tx_id();
        let outcome = dtc.execute_as(tx, &[bank.leg(from, to, 40)]).unwrap();
        assert!(outcome.is_committed(), "{ctx}: {outcome:?}");
        expected[from] -= 40;
        expected[to] += 40;
        bank.check_audit(&dtc, &ctx); // queued behind the retried commit
        assert_eq!(bank.balances(), expected, "{ctx}");
        let calls = control.calls(tx);
        assert_eq!((calls.prepare, calls.commit, calls.commit_ok, calls.rollback), (1, 4, 1, 0), "{ctx}: {calls:?}");
        let m = dtc.metrics();
        assert_eq!((m.panics, m.retries), (3 * (n as u64 + 1), 3 * (n as u64 + 1)), "{ctx}: {m:?}");
        assert_eq!((m.parked, m.protocol_violations), (0, 0), "{ctx}: {m:?}");
    }
    assert_eq!(dtc.execute(&[bank.leg(0, 1, 10)]).unwrap(), Outcome::Committed);
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), [expected[0] - 10, expected[1] + 10, expected[2], expected[3]]);
}

/// Panicking commits are retried until applied, once; the worker keeps serving (blocking).
#[test]
fn panics_in_commit_are_retried_until_applied() {
    panics_in_commit(false);
}

/// Panicking commits are retried until applied, once (inline: the worker takes over the retries).
#[test]
fn panics_in_commit_are_retried_until_applied_inline() {
    panics_in_commit(true);
}

fn panics_in_rollback(nonblocking: bool) {
    let (bank, control, dtc) = probed(nonblocking);
    for (n, (from, to)) in SHAPES.into_iter().enumerate() {
        let ctx = format!("nonblocking {nonblocking}, acct-{from} → acct-{to}");
        control.panic_prepares(1);
        control.panic_rollbacks(3);
        let tx = dtc.new_tx_id();
        let outcome = dtc.execute_as(tx, &[bank.leg(from, to, 40)]).unwrap();
        assert_eq!(outcome, Outcome::Aborted(AbortReason::ParticipantPanicked { service: "svc-0".into() }), "{ctx}");
        wait_until(&format!("{ctx}: the retried rollback"), WAIT, || control.calls(tx).rollback_ok == 1);
        let calls = control.calls(tx);
        assert_eq!((calls.prepare, calls.commit, calls.rollback), (1, 0, 4), "{ctx}: {calls:?}");
        let m = dtc.metrics();
        assert_eq!((m.panics, m.retries), (4 * (n as u64 + 1), 3 * (n as u64 + 1)), "{ctx}: {m:?}");
        assert_eq!((m.parked, m.protocol_violations), (0, 0), "{ctx}: {m:?}");
    }
    assert_eq!(dtc.execute(&[bank.leg(1, 0, 40)]).unwrap(), Outcome::Committed);
    bank.check_audit(&dtc, "end");
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), [140, 60, 100, 100]);
}

/// Panicking rollbacks are retried until done; the worker keeps serving (blocking participant).
#[test]
fn panics_in_rollback_are_retried_until_done() {
    panics_in_rollback(false);
}

/// Panicking rollbacks are retried until done (inline: the worker must take over as a rollback).
#[test]
fn panics_in_rollback_are_retried_until_done_inline() {
    panics_in_rollback(true);
}

/// Hundreds of panics in every phase: the coordinator keeps working, money conserved, all counted.
#[test]
fn coordinator_survives_many_panics() {
    let seed = seed(0x9A1_0001);
    let bank = Bank::new(3, 30, 1_000);
    let (builder, counters) = bank.faulty_builder(|s| FaultPlan::new(seed + s as u64).panic(0.15));
    let dtc = builder.retry(FAST_RETRY).open().unwrap();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut committed = 0;
    for n in 0..400 {
        let legs = common::random_legs(&mut rng, 30, 3, 300);
        let ctx = format!("seed {seed}, tx {n}, legs {legs:?}");
        let outcome = dtc.execute(&bank.transfers(&legs)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        committed += u64::from(outcome.is_committed());
        if n % 20 == 0 {
            bank.check_audit(&dtc, &ctx);
        }
    }
    bank.check_audit(&dtc, &format!("seed {seed}, end"));
    dtc.shutdown().unwrap();
    bank.check_ledgers(&format!("seed {seed}, after shutdown"));
    let injected: u64 = counters.iter().map(|c| c.get().panics).sum();
    let m = dtc.metrics();
    assert!(injected >= 100, "seed {seed}: only {injected} panics injected");
    assert_eq!(m.panics, injected, "seed {seed}: {m:?}");
    assert_eq!((m.parked, m.protocol_violations), (0, 0), "seed {seed}: {m:?}");
    assert!(committed > 100, "seed {seed}: only {committed} committed");
    assert!(m.aborted.contains(&("participant_panicked", m.aborted[3].1)) && m.aborted[3].1 > 0, "{m:?}");
}

/// An inline participant panicking in every other prepare: alternate aborts and commits, all rolled back.
#[test]
fn inline_participant_survives_many_panics() {
    let (bank, control, dtc) = probed(true);
    let mut ids = Vec::new();
    for n in 0..100 {
        let panics = n % 2 == 0;
        control.panic_prepares(u32::from(panics));
        let (from, to) = if n % 4 < 2 { (1, 0) } else { (0, 1) };
        let tx = dtc.new_tx_id();
        let outcome = dtc.execute_as(tx, &[bank.leg(from, to, 5)]).unwrap();
        if panics {
            assert_eq!(outcome, Outcome::Aborted(AbortReason::ParticipantPanicked { service: "svc-0".into() }));
            ids.push(tx);
        } else {
            assert_eq!(outcome, Outcome::Committed, "tx {n}");
        }
    }
    bank.check_audit(&dtc, "end");
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), [100, 100, 100, 100]);
    for tx in ids {
        assert_eq!(control.calls(tx).rollback_ok, 1, "{tx}");
    }
    let m = dtc.metrics();
    assert_eq!((m.panics, m.committed), (50, 50), "{m:?}");
}
