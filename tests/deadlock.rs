//! Deadlock freedom: many threads moving money in opposite directions
//! between the same two hot accounts all finish (a watchdog fails the test
//! instead of hanging), and money is conserved.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Bank, check_audit, with_watchdog};
use dtc::{Coordinator, Ledger, Outcome, Transfer, fault::FaultPlan};

const THREADS: usize = 16;
const BALANCE: i64 = 1_000_000;
const WATCHDOG: Duration = Duration::from_secs(120);

/// `THREADS` threads, half moving a → b and half b → a, `per_thread`
/// transfers each (amounts 1..=3), all started together. Returns how many
/// committed.
fn opposite_directions(dtc: &Coordinator, a: (&str, &str), b: (&str, &str), per_thread: usize) -> u64 {
    let (dtc, a, b) = (dtc.clone(), (a.0.to_owned(), a.1.to_owned()), (b.0.to_owned(), b.1.to_owned()));
    with_watchdog("16 threads on two hot accounts", WATCHDOG, move || {
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (dtc, a, b, start) = (dtc.clone(), a.clone(), b.clone(), start.clone());
                std::thread::spawn(move || {
                    let (from, to) = if t % 2 == 0 { (&a, &b) } else { (&b, &a) };
                    start.wait();
                    let mut committed = 0u64;
                    for i in 0..per_thread {
                        let leg = Transfer::new(&from.0, &from.1, &to.0, &to.1, 1 + (i % 3) as u64);
                        match dtc.execute(&[leg]) {
                            Ok(Outcome::Committed) => committed += 1,
                            other => panic!("thread {t}, transfer {i}: {other:?}"),
                        }
                    }
                    committed
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    })
}

/// 16 threads in opposite directions between two hot accounts on two services all finish.
#[test]
fn opposite_transfers_across_two_services_finish() {
    let bank = Bank::new(2, 2, BALANCE); // acct-0 on svc-0, acct-1 on svc-1
    let dtc = bank.builder().open().unwrap();
    let per_thread = 3_000;
    let committed = opposite_directions(&dtc, ("svc-0", "acct-0"), ("svc-1", "acct-1"), per_thread);
    assert_eq!(committed, (THREADS * per_thread) as u64);
    bank.check_audit(&dtc, "end");
    dtc.shutdown().unwrap();
    bank.check_ledgers("after shutdown");
    // Same number of threads and amounts each way: the balances are back.
    assert_eq!(bank.balances(), [BALANCE, BALANCE]);
}

/// The same through worker threads (`Faulty` without faults is blocking, never inline).
#[test]
fn opposite_transfers_through_workers_finish() {
    let bank = Bank::new(2, 2, BALANCE);
    let (builder, _) = bank.faulty_builder(|_| FaultPlan::new(0));
    let dtc = builder.open().unwrap();
    let per_thread = 1_000;
    let committed = opposite_directions(&dtc, ("svc-0", "acct-0"), ("svc-1", "acct-1"), per_thread);
    assert_eq!(committed, (THREADS * per_thread) as u64);
    bank.check_audit(&dtc, "end");
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), [BALANCE, BALANCE]);
}

/// 16 threads in opposite directions between two hot accounts on one service all finish.
#[test]
fn opposite_transfers_on_one_service_finish() {
    let ledger = Ledger::new();
    ledger.create_account("hot-a", BALANCE).unwrap();
    ledger.create_account("hot-b", BALANCE).unwrap();
    let dtc = Coordinator::builder().service("svc-0", ledger.clone()).open().unwrap();
    let per_thread = 3_000;
    let committed = opposite_directions(&dtc, ("svc-0", "hot-a"), ("svc-0", "hot-b"), per_thread);
    assert_eq!(committed, (THREADS * per_thread) as u64);
    check_audit(&dtc, 2 * i128::from(BALANCE), 2, "end");
    dtc.shutdown().unwrap();
    assert_eq!((ledger.balance("hot-a"), ledger.balance("hot-b")), (Some(BALANCE), Some(BALANCE)));
}

/// Two-leg transfers around a cycle of three services, in both directions, all finish.
#[test]
fn cyclic_two_leg_transfers_finish() {
    let bank = Arc::new(Bank::new(3, 3, BALANCE));
    let dtc = bank.builder().open().unwrap();
    let per_thread = 1_000;
    let (b, d) = (bank.clone(), dtc.clone());
    let committed: u64 = with_watchdog("cyclic transfers", WATCHDOG, move || {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (bank, dtc) = (b.clone(), d.clone());
                std::thread::spawn(move || {
                    let (x, y, z) =
                        if t % 2 == 0 { (t % 3, (t + 1) % 3, (t + 2) % 3) } else { (t % 3, (t + 2) % 3, (t + 1) % 3) };
                    let mut committed = 0;
                    for i in 0..per_thread {
                        let legs = [bank.leg(x, y, 2), bank.leg(y, z, 1 + (i % 2) as u64)];
                        match dtc.execute(&legs) {
                            Ok(Outcome::Committed) => committed += 1,
                            other => panic!("thread {t}, transfer {i}: {other:?}"),
                        }
                    }
                    committed
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert_eq!(committed, (THREADS * per_thread) as u64);
    bank.check_audit(&dtc, "end");
    dtc.shutdown().unwrap();
    bank.check_ledgers("after shutdown");
}

/// Long variant, 20 000 per thread: `cargo test --release --test deadlock -- --ignored`.
#[test]
#[ignore = "long; run with --release -- --ignored"]
fn opposite_transfers_long() {
    let bank = Bank::new(2, 2, BALANCE);
    let dtc = bank.builder().open().unwrap();
    let committed = opposite_directions(&dtc, ("svc-0", "acct-0"), ("svc-1", "acct-1"), 20_000);
    assert_eq!(committed, (THREADS * 20_000) as u64);
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), [BALANCE, BALANCE]);
}
