//! All-or-nothing: random multi-leg transactions over 4 faulty services
//! (refusals, panics, stalls past the call timeout) either apply every leg or
//! none, and money is conserved throughout.

mod common;

use std::time::Duration;

use common::{Bank, Model, random_legs, seed};
use dtc::{
    AbortReason, Coordinator, Outcome, RetryPolicy,
    fault::{FaultCounter, FaultPlan},
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const SERVICES: usize = 4;
const ACCOUNTS: usize = 24;
const BALANCE: i64 = 1_000;

/// Faults on every phase of every service: refusals (failed commits and
/// rollbacks are retried), panics, and 60 ms stalls against a 20 ms call
/// timeout.
fn faulty_bank(seed: u64) -> (Bank, Coordinator, Vec<FaultCounter>) {
    let bank = Bank::new(SERVICES, ACCOUNTS, BALANCE);
    let (builder, counters) = bank.faulty_builder(|s| {
        FaultPlan::new(seed.wrapping_add(s as u64)).refuse(0.03).panic(0.02).stall(0.005, Duration::from_millis(60))
    });
    let dtc = builder
        .call_timeout(Duration::from_millis(20))
        .transaction_timeout(Duration::from_secs(10))
        .retry(RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(4), 1_000))
        .open()
        .expect("open");
    (bank, dtc, counters)
}

/// Single-threaded faulty transactions match an exact model after every step: all legs or none, money conserved.
#[test]
fn faulty_transactions_apply_all_legs_or_none() {
    // Committed and commit-pending transactions applied all legs, aborted ones none; a transaction the model
    // says lacks funds never commits.
    let seed = seed(0xA70_0001);
    let (bank, dtc, counters) = faulty_bank(seed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut model = Model::new(ACCOUNTS, BALANCE);
    let (mut committed, mut pending, mut aborted, mut short) = (0u64, 0u64, 0u64, 0u64);
    const TXS: usize = 800;
    for n in 0..TXS {
        let legs = random_legs(&mut rng, ACCOUNTS, 6, 400);
        let transfers = bank.transfers(&legs);
        let lacks_funds = !model.short(&legs).is_empty();
        let ctx = format!("seed {seed}, tx {n}, legs {legs:?}");
        let outcome = dtc.execute(&transfers).unwrap_or_else(|e| panic!("{ctx}: unexpected error {e}"));
        match &outcome {
            Outcome::Committed => committed += 1,
            Outcome::CommitPending => pending += 1,
            Outcome::Aborted(reason) => {
                aborted += 1;
                if matches!(reason, AbortReason::InsufficientFunds { .. }) {
                    short += 1;
                    assert!(lacks_funds, "{ctx}: refused for funds the model has");
                }
            }
            other => panic!("{ctx}: unknown outcome {other:?}"),
        }
        if outcome.is_committed() {
            assert!(!lacks_funds, "{ctx}: committed without funds: {outcome:?}");
            model.apply(&legs);
        }
        // The audit is queued behind every commit enqueued so far, so after
        // it the ledgers can be read directly.
        bank.check_audit(&dtc, &ctx);
        assert_eq!(bank.balances(), model.0, "{ctx}: ledgers differ from the model after {outcome:?}");
    }
    dtc.shutdown().unwrap();
    bank.check_ledgers(&format!("seed {seed}, after shutdown"));
    assert_eq!(bank.balances(), model.0, "seed {seed}: after shutdown");

    let m = dtc.metrics();
    eprintln!("seed {seed}: {m:?}");
    assert_eq!(m.committed, committed, "seed {seed}: {m:?}");
    assert_eq!(m.commit_pending, pending, "seed {seed}: {m:?}");
    assert_eq!(m.aborted_total(), aborted, "seed {seed}: {m:?}");
    assert_eq!(m.parked, 0, "seed {seed}: {m:?}");
    assert_eq!(m.protocol_violations, 0, "seed {seed}: {m:?}");
    // Sanity: the run exercised both outcomes and the fault injector.
    let injected: u64 = counters
        .iter()
        .map(|c| {
            let f = c.get();
            f.refusals + f.panics + f.stalls
        })
        .sum();
    assert!(committed > 0 && short > 0, "seed {seed}: {committed} committed, {short} short");
    assert!(injected > 0, "seed {seed}: no fault injected");
}

/// Four threads of faulty random transactions: periodic audits and the final ledgers conserve money.
#[test]
fn concurrent_faulty_transactions_conserve_money() {
    let seed = seed(0xA70_0002);
    let (bank, dtc, _counters) = faulty_bank(seed);
    let bank = std::sync::Arc::new(bank);
    const THREADS: u64 = 4;
    const TXS: usize = 250;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (bank, dtc) = (bank.clone(), dtc.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ (t << 32));
                let mut ok = 0u64;
                for n in 0..TXS {
                    let legs = random_legs(&mut rng, ACCOUNTS, 6, 400);
                    let transfers = bank.transfers(&legs);
                    let ctx = format!("seed {seed}, thread {t}, tx {n}, legs {legs:?}");
                    dtc.execute(&transfers).unwrap_or_else(|e| panic!("{ctx}: unexpected error {e}"));
                    ok += 1;
                    if n % 10 == 0 {
                        bank.check_audit(&dtc, &ctx);
                    }
                }
                ok
            })
        })
        .collect();
    let ok: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    bank.check_audit(&dtc, &format!("seed {seed}, end"));
    dtc.shutdown().unwrap();
    bank.check_ledgers(&format!("seed {seed}, after shutdown"));
    let m = dtc.metrics();
    eprintln!("seed {seed}: {m:?}");
    assert_eq!(m.committed + m.commit_pending + m.aborted_total(), ok, "seed {seed}: {m:?}");
    assert_eq!(m.parked, 0, "seed {seed}: {m:?}");
    assert_eq!(m.protocol_violations, 0, "seed {seed}: {m:?}");
}

/// A three-service transaction whose last leg lacks funds applies no leg and names the short account.
#[test]
fn one_short_leg_aborts_every_leg() {
    let bank = Bank::new(3, 6, 100);
    let dtc = bank.builder().open().unwrap();
    let before = bank.balances();
    // acct-0 (svc-0) → acct-1 (svc-1), acct-1 → acct-2 (svc-2), acct-5 (svc-2) → acct-0 too much.
    let legs = [bank.leg(0, 1, 50), bank.leg(1, 2, 70), bank.leg(5, 0, 101)];
    let outcome = dtc.execute(&legs).unwrap();
    assert_eq!(
        outcome,
        Outcome::Aborted(AbortReason::InsufficientFunds { service: "svc-2".into(), account: "acct-5".into() })
    );
    bank.check_audit(&dtc, "after the abort");
    assert_eq!(bank.balances(), before);
    // With enough funds the same shape commits everywhere.
    let legs = [bank.leg(0, 1, 50), bank.leg(1, 2, 70), bank.leg(5, 0, 100)];
    assert_eq!(dtc.execute(&legs).unwrap(), Outcome::Committed);
    bank.check_audit(&dtc, "after the commit");
    assert_eq!(bank.balances(), [150, 80, 170, 100, 100, 0]);
    dtc.shutdown().unwrap();
}
