//! Jepsen-style bank check: transfer threads run random multi-leg
//! transactions while audit threads take consistent cuts; every audit must
//! show the initial total and no negative balance, and so must the ledgers
//! at the end.
//!
//! Two banks: plain ledgers (nonblocking, so mostly the inline path) and
//! ledgers behind `Faulty` with refusals (worker path, retries). The CI
//! version stops after `CI_AUDITS` audits or `CI_TIME`, whichever first; the
//! ignored long version requires 10^6 audits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Bank, random_legs, seed, with_watchdog};
use dtc::{Coordinator, Outcome, RetryPolicy, fault::FaultPlan};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const SERVICES: usize = 4;
const ACCOUNTS: usize = 32;
const BALANCE: i64 = 1_000;
const TRANSFER_THREADS: usize = 4;
const AUDIT_THREADS: usize = 2;

const CI_AUDITS: u64 = 100_000;
const CI_TIME: Duration = Duration::from_secs(8);

#[derive(Debug, Default)]
struct Counts {
    audits: AtomicU64,
    committed: AtomicU64,
    aborted: AtomicU64,
    pending: AtomicU64,
}

fn open(bank: &Bank, faulty: bool, seed: u64) -> Coordinator {
    let builder = if faulty {
        bank.faulty_builder(|s| FaultPlan::new(seed.wrapping_add(s as u64)).refuse(0.02)).0
    } else {
        bank.builder()
    };
    builder
        // Few stripes: an audit takes all of them.
        .lock_stripes(64)
        .call_timeout(Duration::from_secs(5))
        .retry(RetryPolicy::new(Duration::from_micros(100), Duration::from_millis(2), 10_000))
        .open()
        .expect("open")
}

/// Runs the check until `audits` audits were taken or `time` passed (at
/// least `min_audits` required), returns the counts.
fn bank_check(faulty: bool, audits: u64, min_audits: u64, time: Duration) -> Arc<Counts> {
    let seed = seed(0xBA4C_0001);
    let bank = Arc::new(Bank::new(SERVICES, ACCOUNTS, BALANCE));
    let dtc = open(&bank, faulty, seed);
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = Instant::now() + time;
    let mut threads = Vec::new();
    for t in 0..TRANSFER_THREADS {
        let (bank, dtc, counts, stop) = (bank.clone(), dtc.clone(), counts.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(seed ^ (t as u64 + 1) << 32);
            while !stop.load(Ordering::Relaxed) {
                let legs = random_legs(&mut rng, ACCOUNTS, 4, 300);
                let outcome = dtc.execute(&bank.transfers(&legs)).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                let counter = match outcome {
                    Outcome::Committed => &counts.committed,
                    Outcome::Aborted(_) => &counts.aborted,
                    _ => &counts.pending,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..AUDIT_THREADS {
        let (bank, dtc, counts, stop) = (bank.clone(), dtc.clone(), counts.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = counts.audits.fetch_add(1, Ordering::Relaxed);
                bank.check_audit(&dtc, &format!("seed {seed}, audit {n}"));
                if n + 1 >= audits || Instant::now() >= give_up {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in threads {
        t.join().expect("a checker thread failed");
    }
    dtc.shutdown().expect("shutdown");
    bank.check_ledgers(&format!("seed {seed}, after shutdown"));
    let done = counts.audits.load(Ordering::Relaxed);
    assert!(done >= min_audits, "only {done} audits");
    let committed = counts.committed.load(Ordering::Relaxed);
    assert!(committed > 0, "no transfer committed: {counts:?}");
    eprintln!("bank check (faulty: {faulty}): {counts:?}");
    counts
}

#[test]
fn audits_see_a_constant_total_plain_ledgers() {
    with_watchdog("bank check", Duration::from_secs(60), || bank_check(false, CI_AUDITS, 1_000, CI_TIME));
}

#[test]
fn audits_see_a_constant_total_faulty_ledgers() {
    with_watchdog("bank check", Duration::from_secs(60), || bank_check(true, CI_AUDITS, 1_000, CI_TIME));
}

/// The long version: 10^6 audits (several minutes on 2 cores).
#[test]
#[ignore = "long: cargo test --release --test bank_checker -- --ignored"]
fn a_million_audits() {
    bank_check(false, 1_000_000, 1_000_000, Duration::from_secs(3_600));
    bank_check(true, 1_000_000, 1_000_000, Duration::from_secs(3_600));
}
