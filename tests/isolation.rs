//! Isolation: `audit()` is a consistent cut. While threads transfer money,
//! other threads audit continuously and never see money created, destroyed
//! or a negative balance.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Bank, random_legs, seed, with_watchdog};
use dtc::Outcome;
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Runs `transferors` transfer threads and `auditors` audit threads over
/// `services` services until `target` audits are done; returns
/// (audits, violations, first violation, committed transfers).
fn bank_invariant(
    seed: u64,
    services: usize,
    accounts: usize,
    transferors: u64,
    auditors: u64,
    target: u64,
) -> (u64, u64, Option<String>, u64) {
    const BALANCE: i64 = 1_000;
    let bank = Arc::new(Bank::new(services, accounts, BALANCE));
    let dtc = bank.builder().lock_stripes(64).open().unwrap();
    let audits = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = Arc::new(AtomicBool::new(false));

    let movers: Vec<_> = (0..transferors)
        .map(|t| {
            let (bank, dtc, stop) = (bank.clone(), dtc.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ (t << 40));
                let mut committed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let legs = bank.transfers(&random_legs(&mut rng, accounts, 3, 1_500));
                    let outcome = dtc.execute(&legs).unwrap_or_else(|e| panic!("seed {seed}: transfer failed: {e}"));
                    committed += u64::from(outcome == Outcome::Committed);
                }
                committed
            })
        })
        .collect();
    let checkers: Vec<_> = (0..auditors)
        .map(|_| {
            let (bank, dtc) = (bank.clone(), dtc.clone());
            let (audits, violations, first) = (audits.clone(), violations.clone(), first.clone());
            std::thread::spawn(move || {
                while audits.fetch_add(1, Ordering::Relaxed) < target {
                    let audit = dtc.audit().unwrap_or_else(|e| panic!("seed {seed}: audit failed: {e}"));
                    if audit.total != bank.total || audit.negative != 0 || audit.accounts != accounts as u64 {
                        violations.fetch_add(1, Ordering::Relaxed);
                        first.lock().unwrap().get_or_insert(format!("{audit:?}"));
                    }
                }
                // The failed increment above did not audit.
                audits.fetch_sub(1, Ordering::Relaxed);
            })
        })
        .collect();
    for c in checkers {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let committed = movers.into_iter().map(|m| m.join().unwrap()).sum();
    bank.check_audit(&dtc, &format!("seed {seed}, end"));
    dtc.shutdown().unwrap();
    bank.check_ledgers(&format!("seed {seed}, after shutdown"));
    let first = first.lock().unwrap().clone();
    (audits.load(Ordering::Relaxed), violations.load(Ordering::Relaxed), first, committed)
}

/// 100 000 audits (3 threads) against 2 transfer threads, 3 services, 999 accounts: 0 violations.
#[test]
fn audits_never_see_a_partial_transaction() {
    let seed = seed(0x150_0001);
    let (audits, violations, first, committed) =
        with_watchdog("bank invariant", Duration::from_secs(300), move || bank_invariant(seed, 3, 999, 2, 3, 100_000));
    assert_eq!(violations, 0, "seed {seed}: {violations} of {audits} audits broke the invariant, first: {first:?}");
    assert!(audits >= 100_000, "seed {seed}: only {audits} audits");
    assert!(committed > 0, "seed {seed}: no transfer committed during the audits");
    eprintln!("seed {seed}: {audits} audits, {committed} transfers committed");
}

/// Long variant, 1 000 000 audits: `cargo test --release --test isolation -- --ignored`.
#[test]
#[ignore = "long; run with --release -- --ignored"]
fn audits_never_see_a_partial_transaction_long() {
    let seed = seed(0x150_0002);
    let (audits, violations, first, committed) = bank_invariant(seed, 4, 1_000, 3, 3, 1_000_000);
    assert_eq!(violations, 0, "seed {seed}: {violations} of {audits} audits broke the invariant, first: {first:?}");
    assert!(audits >= 1_000_000, "seed {seed}: only {audits} audits");
    assert!(committed > 0, "seed {seed}: no transfer committed during the audits");
}
