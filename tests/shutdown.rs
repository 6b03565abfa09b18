//! Shutdown: racing submitters get an outcome or `ShuttingDown`, never a
//! hang or another error; in-flight work is drained; money is conserved;
//! shutdown is idempotent and refuses later work.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Bank, random_legs, seed, wait_until, with_watchdog};
use dtc::{
    Coordinator, Error, Outcome,
    fault::{FaultPlan, FaultRates, Faulty},
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const ACCOUNTS: usize = 40;
const WATCHDOG: Duration = Duration::from_secs(60);

/// 8 threads submit random transfers (7) and audits (1) until refused;
/// `shutdown` comes after `after` transactions. Returns the number of
/// outcomes the submitters got.
fn race_shutdown(seed: u64, bank: Arc<Bank>, dtc: Coordinator, after: u64) -> u64 {
    with_watchdog("shutdown while submitting", WATCHDOG, move || {
        let done = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (bank, dtc, done) = (bank.clone(), dtc.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed ^ (t << 48));
                    let mut outcomes = 0;
                    loop {
                        let ctx = format!("seed {seed}, thread {t}");
                        let refused = if t == 7 {
                            match dtc.audit() {
                                Ok(audit) => {
                                    assert_eq!((audit.total, audit.negative), (bank.total, 0), "{ctx}: {audit:?}");
                                    false
                                }
                                Err(Error::ShuttingDown) => true,
                                Err(e) => panic!("{ctx}: audit: {e:?}"),
                            }
                        } else {
                            let legs = random_legs(&mut rng, ACCOUNTS, 3, 300);
                            match dtc.execute(&bank.transfers(&legs)) {
                                Ok(_) => {
                                    outcomes += 1;
                                    done.fetch_add(1, Ordering::Relaxed);
                                    false
                                }
                                Err(Error::ShuttingDown) => true,
                                Err(e) => panic!("{ctx}: {legs:?}: {e:?}"),
                            }
                        };
                        if refused {
                            // Refused once, refused for good.
                            let legs = bank.transfers(&random_legs(&mut rng, ACCOUNTS, 3, 300));
                            assert!(matches!(dtc.execute(&legs), Err(Error::ShuttingDown)), "{ctx}");
                            assert!(matches!(dtc.audit(), Err(Error::ShuttingDown)), "{ctx}");
                            return outcomes;
                        }
                    }
                })
            })
            .collect();
        wait_until("transactions before the shutdown", WATCHDOG, || done.load(Ordering::Relaxed) >= after);
        dtc.shutdown().unwrap();
        let outcomes: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let m = dtc.metrics();
        assert_eq!(m.committed + m.commit_pending + m.aborted_total(), outcomes, "seed {seed}: {m:?}");
        assert_eq!(m.protocol_violations, 0, "seed {seed}: {m:?}");
        outcomes
    })
}

/// Shutdown during 8 submitting threads (inline ledgers): outcome or `ShuttingDown`, money conserved.
#[test]
fn shutdown_while_submitting_inline() {
    let seed = seed(0x5D0_0001);
    for (round, after) in [0u64, 50, 500, 2_000].into_iter().enumerate() {
        let bank = Arc::new(Bank::new(4, ACCOUNTS, 1_000));
        let dtc = bank.builder().open().unwrap();
        race_shutdown(seed + round as u64, bank.clone(), dtc, after);
        bank.check_ledgers(&format!("seed {seed}, round {round}, after shutdown"));
    }
}

/// The same with stalling blocking participants, so shutdown drains queued and running requests.
#[test]
fn shutdown_while_submitting_through_workers() {
    let seed = seed(0x5D0_0002);
    for (round, after) in [0u64, 50, 500].into_iter().enumerate() {
        let bank = Arc::new(Bank::new(4, ACCOUNTS, 1_000));
        let (builder, _) = bank
            .faulty_builder(|s| FaultPlan::new(seed + s as u64 + round as u64).stall(0.01, Duration::from_millis(5)));
        let dtc = builder.call_timeout(Duration::from_millis(50)).open().unwrap();
        race_shutdown(seed + round as u64, bank.clone(), dtc, after);
        bank.check_ledgers(&format!("seed {seed}, round {round}, after shutdown"));
    }
}

/// `shutdown` twice (and concurrently) is fine; later calls return `ShuttingDown`.
#[test]
fn shutdown_is_idempotent_and_final() {
    let bank = Bank::new(2, 4, 100);
    let dtc = bank.builder().open().unwrap();
    assert_eq!(dtc.execute(&[bank.leg(0, 1, 10)]).unwrap(), Outcome::Committed);
    let other = dtc.clone();
    let concurrent = std::thread::spawn(move || other.shutdown());
    dtc.shutdown().unwrap();
    concurrent.join().unwrap().unwrap();
    dtc.shutdown().unwrap();
    assert!(matches!(dtc.execute(&[bank.leg(0, 1, 10)]), Err(Error::ShuttingDown)));
    assert!(matches!(dtc.execute_as(dtc.new_tx_id(), &[bank.leg(0, 1, 10)]), Err(Error::ShuttingDown)));
    assert!(matches!(dtc.audit(), Err(Error::ShuttingDown)));
    // Even bad input is refused as shutting down, not run.
    assert!(matches!(dtc.execute(&[]), Err(Error::ShuttingDown)));
    assert_eq!(bank.balances(), [90, 110, 100, 100]);
    assert_eq!(dtc.services(), ["svc-0", "svc-1"]);
    assert_eq!(dtc.metrics().committed, 1);
}

/// Dropping the last handle shuts down like `shutdown`, draining a stalled commit.
#[test]
fn dropping_the_last_handle_drains() {
    let bank = Bank::new(2, 4, 100);
    let plan = FaultPlan {
        commit: FaultRates { stall: 1.0, ..FaultRates::default() },
        stall_for: Duration::from_millis(300),
        ..FaultPlan::new(3)
    };
    let dtc = bank
        .builder_with(|s, ledger| -> common::Boxed {
            if s == 0 { Box::new(Faulty::new(ledger, plan)) } else { Box::new(ledger) }
        })
        .call_timeout(Duration::from_millis(30))
        .open()
        .unwrap();
    // svc-1/acct-1 → svc-0/acct-0; svc-0's commit stalls past the call timeout.
    assert_eq!(dtc.execute(&[bank.leg(1, 0, 25)]).unwrap(), Outcome::CommitPending);
    drop(dtc);
    assert_eq!(bank.balances(), [125, 75, 100, 100]);
}
