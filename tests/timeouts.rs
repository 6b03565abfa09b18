//! Timeouts: a participant that does not vote in time aborts the
//! transaction with nothing applied; one that does not acknowledge a commit
//! in time leaves it pending, applied exactly once later; a lock held past a
//! transaction's deadline aborts it with `LockTimeout`.
//!
//! Stalls are made with `Probe` holds, released by the test only after the
//! outcome it checks has been returned, so the outcomes do not depend on
//! scheduling.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Bank, Probe, ProbeControl, wait_until};
use dtc::{
    AbortReason, Coordinator, Outcome,
    fault::{FaultPlan, FaultRates, Faulty},
};

const WAIT: Duration = Duration::from_secs(10);

/// Two services: svc-0 a `Probe` (registered first, so a missing vote is
/// blamed on it), svc-1 a plain ledger. acct-0 and acct-2 are on svc-0,
/// acct-1 and acct-3 on svc-1, each with 100.
fn probed(call_timeout: Duration, tx_timeout: Duration) -> (Bank, Arc<ProbeControl>, Coordinator) {
    let bank = Bank::new(2, 4, 100);
    let control = ProbeControl::new();
    let dtc = bank
        .builder_with(|s, ledger| -> common::Boxed {
            if s == 0 { Box::new(Probe::new(ledger, &control)) } else { Box::new(ledger) }
        })
        .call_timeout(call_timeout)
        .transaction_timeout(tx_timeout)
        .open()
        .unwrap();
    (bank, control, dtc)
}

fn prepare_timeout_on_svc0() -> Outcome {
    Outcome::Aborted(AbortReason::PrepareTimeout { service: "svc-0".into() })
}

/// A stalled prepare aborts a two-service transaction with `PrepareTimeout`; nothing applied; retry commits.
#[test]
fn stalled_prepare_two_services_times_out_and_applies_nothing() {
    let (bank, control, dtc) = probed(Duration::from_millis(100), WAIT);
    let legs = [bank.leg(1, 0, 40)]; // svc-1/acct-1 → svc-0/acct-0
    let hold = control.hold_prepare();
    let tx = dtc.new_tx_id();
    assert_eq!(dtc.execute_as(tx, &legs).unwrap(), prepare_timeout_on_svc0());
    assert_eq!(control.held(), 1, "the prepare is still stalled");
    hold.release();
    wait_until("the late prepare to be rolled back", WAIT, || control.calls(tx).rollback_ok == 1);
    let calls = control.calls(tx);
    assert_eq!((calls.prepare, calls.commit, calls.rollback), (1, 0, 1), "{calls:?}");
    bank.check_audit(&dtc, "after the timeout");
    assert_eq!(bank.balances(), [100, 100, 100, 100], "a timed-out transaction applied something");

    assert_eq!(dtc.execute(&legs).unwrap(), Outcome::Committed);
    bank.check_audit(&dtc, "after the retry");
    assert_eq!(bank.balances(), [140, 60, 100, 100]);
    let m = dtc.metrics();
    assert_eq!(m.aborted, m.aborted.iter().map(|&(c, _)| (c, u64::from(c == "prepare_timeout"))).collect::<Vec<_>>());
    assert!(m.timeouts >= 1, "{m:?}");
    dtc.shutdown().unwrap();
}

/// The same for one service (one phase): the late prepare is rolled back, not committed.
#[test]
fn stalled_prepare_one_service_times_out_and_applies_nothing() {
    let (bank, control, dtc) = probed(Duration::from_millis(100), WAIT);
    let legs = [bank.leg(2, 0, 40)]; // both on svc-0
    let hold = control.hold_prepare();
    let tx = dtc.new_tx_id();
    assert_eq!(dtc.execute_as(tx, &legs).unwrap(), prepare_timeout_on_svc0());
    hold.release();
    wait_until("the late prepare to be rolled back", WAIT, || control.calls(tx).rollback_ok == 1);
    let calls = control.calls(tx);
    assert_eq!((calls.prepare, calls.commit, calls.rollback), (1, 0, 1), "{calls:?}");
    bank.check_audit(&dtc, "after the timeout");
    assert_eq!(bank.balances(), [100, 100, 100, 100]);

    assert_eq!(dtc.execute(&legs).unwrap(), Outcome::Committed);
    bank.check_audit(&dtc, "after the retry");
    assert_eq!(bank.balances(), [140, 100, 60, 100]);
    dtc.shutdown().unwrap();
}

/// A late commit acknowledgement gives `CommitPending`; the commit is then applied once, in FIFO order.
#[test]
fn stalled_commit_is_pending_then_applied_once() {
    let (bank, control, dtc) = probed(Duration::from_millis(100), WAIT);
    let hold = control.hold_commit();
    let tx = dtc.new_tx_id();
    // svc-1/acct-1 → svc-0/acct-0: svc-1 commits at once, svc-0 stalls.
    assert_eq!(dtc.execute_as(tx, &[bank.leg(1, 0, 40)]).unwrap(), Outcome::CommitPending);
    assert_eq!(bank.balances(), [100, 60, 100, 100], "svc-0's commit is still stalled");
    hold.release();
    // Spends the pending credit: only possible if the commit comes first.
    assert_eq!(dtc.execute(&[bank.leg(0, 3, 140)]).unwrap(), Outcome::Committed);
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), [0, 60, 100, 240]);
    assert_eq!(control.calls(tx).commit_ok, 1);
    let m = dtc.metrics();
    assert_eq!((m.commit_pending, m.committed), (1, 1), "{m:?}");
}

/// A commit still stalling at `shutdown` is drained by it and applied once (one and two phases).
#[test]
fn shutdown_drains_a_pending_commit() {
    for (legs, expected) in [
        (vec![(1usize, 0usize, 40u64)], [140, 60, 100, 100]), // svc-1 → svc-0: two phases
        (vec![(2, 0, 40)], [140, 100, 60, 100]),              // svc-0 only: one phase
    ] {
        let bank = Bank::new(2, 4, 100);
        let plan = FaultPlan {
            commit: FaultRates { stall: 1.0, ..FaultRates::default() },
            stall_for: Duration::from_millis(500),
            ..FaultPlan::new(1)
        };
        let mut counter = None;
        let dtc = bank
            .builder_with(|s, ledger| -> common::Boxed {
                if s == 0 {
                    let faulty = Faulty::new(ledger, plan);
                    counter = Some(faulty.counter());
                    Box::new(faulty)
                } else {
                    Box::new(ledger)
                }
            })
            .call_timeout(Duration::from_millis(50))
            .open()
            .unwrap();
        assert_eq!(dtc.execute(&bank.transfers(&legs)).unwrap(), Outcome::CommitPending, "{legs:?}");
        dtc.shutdown().unwrap();
        assert_eq!(bank.balances(), expected, "{legs:?}: after shutdown");
        assert_eq!(counter.unwrap().get().stalls, 1, "{legs:?}: one commit call");
    }
}

/// A lock wait past `transaction_timeout` aborts with `LockTimeout` and changes nothing.
#[test]
fn lock_held_past_the_deadline_is_lock_timeout() {
    // The lock is held by a batch waiting for a commit stalled in its participant: a batch collects its
    // acknowledgements under its locks (single transactions release theirs once every commit is queued, FIFO
    // making it visible to the next one), and a prepare stall cannot outlast a later transaction's deadline,
    // because the holder's vote wait is capped by its own, earlier, deadline.
    let (bank, control, dtc) = probed(Duration::from_secs(30), Duration::from_millis(300));
    let hold = control.hold_commit();
    let holder = {
        let (dtc, accounts) = (dtc.clone(), bank.accounts.clone());
        // svc-1/acct-1 → svc-0/acct-0, stalls in svc-0's commit holding both locks.
        std::thread::spawn(move || {
            let legs = [dtc::Transfer::new("svc-1", &accounts[1], "svc-0", &accounts[0], 40)];
            dtc.execute_batch(&[&legs[..]]).map(|mut outcomes| outcomes.remove(0))
        })
    };
    wait_until("the holder's commit to stall", WAIT, || control.held() == 1);
    let waiter = [bank.leg(1, 3, 10)]; // svc-1 only, shares acct-1's lock
    assert_eq!(dtc.execute(&waiter).unwrap(), Outcome::Aborted(AbortReason::LockTimeout));
    assert_eq!(bank.balances()[3], 100, "a lock-timed-out transaction applied something");
    let m = dtc.metrics();
    assert!(m.aborted.contains(&("lock_timeout", 1)), "{m:?}");
    hold.release();
    assert_eq!(holder.join().unwrap().unwrap().unwrap(), Outcome::Committed);
    assert_eq!(dtc.execute(&waiter).unwrap(), Outcome::Committed);
    bank.check_audit(&dtc, "end");
    assert_eq!(bank.balances(), [140, 50, 100, 110]);
    dtc.shutdown().unwrap();
}
