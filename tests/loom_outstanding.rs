//! Loom model of the table of failing calls (`src/coordinator/outstanding.rs`),
//! run unchanged: a worker waiting out a retry backoff is always woken by an
//! operator's retry-now, resolve, or shutdown (loom has no time, so a lost
//! wake-up is a deadlock); a call parked while an operator resolves it is
//! settled exactly once; a failure recorded on one thread is seen by the
//! success on another (the `tracked` fast path); the last acknowledgement of
//! a commit clears it whatever the interleaving.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_outstanding
#![cfg(loom)]

use dtc::__loom::Outstanding;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

const TX: u128 = 7;

#[test]
fn retry_now_always_wakes_a_waiting_worker() {
    loom::model(|| {
        let table = Arc::new(Outstanding::new(4));
        table.failed(TX, 0);
        let operator = {
            let table = table.clone();
            thread::spawn(move || table.retry_now(TX))
        };
        assert_eq!(table.wait(TX, 0), "retry");
        let (redelivered, woken) = operator.join().unwrap();
        assert_eq!((redelivered, woken), (0, 1), "a waiting call is woken, not redelivered");
    });
}

#[test]
fn shutdown_always_wakes_a_waiting_worker() {
    loom::model(|| {
        let table = Arc::new(Outstanding::new(4));
        table.failed(TX, 0);
        let closer = {
            let table = table.clone();
            thread::spawn(move || table.close())
        };
        assert_eq!(table.wait(TX, 0), "closing");
        closer.join().unwrap();
    });
}

#[test]
fn a_call_parked_while_resolved_is_settled_exactly_once() {
    loom::model(|| {
        let table = Arc::new(Outstanding::new(4));
        table.failed(TX, 0);
        let operator = {
            let table = table.clone();
            thread::spawn(move || table.resolve(TX))
        };
        let parked = table.park(TX, 0);
        let handed_to_operator = operator.join().unwrap();
        // Either the worker saw the resolution (it settles), or it parked
        // first and the operator got the parked call (it settles): never both,
        // never neither.
        match parked {
            "resolved" => assert_eq!(handed_to_operator, 0),
            "parked" => assert_eq!(handed_to_operator, 1),
            other => panic!("unexpected {other}"),
        }
    });
}

/// A failure on the inline thread, handed to the worker with `publish` /
/// `observe` (the engine hands it over through the worker's channel: a
/// release/acquire edge), then the worker's success.
fn hand_off(publish: Ordering, observe: Ordering) {
    loom::model(move || {
        let table = Arc::new(Outstanding::new(4));
        let handed_over = Arc::new(AtomicBool::new(false));
        let inline = {
            let (table, handed_over) = (table.clone(), handed_over.clone());
            thread::spawn(move || {
                table.failed(TX, 0);
                handed_over.store(true, publish);
            })
        };
        if handed_over.load(observe) {
            table.cleared(TX, 0);
            assert_eq!(table.tracked(), 0, "the success saw the failure it follows");
        }
        inline.join().unwrap();
    });
}

#[test]
fn a_failure_recorded_on_one_thread_is_cleared_by_a_success_on_another() {
    hand_off(Ordering::Release, Ordering::Acquire);
}

#[test]
fn the_last_acknowledgement_clears_a_commit() {
    loom::model(|| {
        let table = Arc::new(Outstanding::new(4));
        table.expect_acks(TX, 2);
        let other = {
            let table = table.clone();
            thread::spawn(move || table.acknowledged(TX, 1))
        };
        table.acknowledged(TX, 0);
        other.join().unwrap();
        assert_eq!(table.unresolved(), 0);
    });
}

/// The model catches a missing hand-off: with a relaxed flag instead of
/// the channel's happens-before edge, the success may not see the failure
/// and leaves it tracked.
#[test]
#[should_panic(expected = "the success saw the failure it follows")]
fn without_the_hand_off_a_success_can_miss_the_failure() {
    hand_off(Ordering::Relaxed, Ordering::Relaxed);
}
