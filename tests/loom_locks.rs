//! Loom model of the ordered striped key locks (`src/coordinator/locks.rs`).
//!
//! Three threads take overlapping stripe sets through the engine's
//! `StripedLocks::acquire` (run unchanged; under loom its timed lock is a
//! plain lock, so a lost wake-up or a lock-order cycle shows as a loom
//! deadlock rather than a timeout). Inside the critical section each thread
//! claims a per-stripe owner slot: finding it taken is a mutual-exclusion
//! failure.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_locks
#![cfg(loom)]

use dtc::__loom::StripedLocks;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

const STRIPES: usize = 4;
const FREE: usize = usize::MAX;

struct Model {
    locks: StripedLocks,
    owner: [AtomicUsize; STRIPES],
}

impl Model {
    fn new() -> Arc<Self> {
        Arc::new(Self { locks: StripedLocks::new(STRIPES), owner: std::array::from_fn(|_| AtomicUsize::new(FREE)) })
    }

    /// The critical section: claim every stripe, yield to let others try,
    /// release. Relaxed is enough: the stripe lock is what must order these.
    fn critical(&self, me: usize, stripes: &[usize]) {
        for &s in stripes {
            let was = self.owner[s].swap(me, Ordering::Relaxed);
            assert_eq!(was, FREE, "stripe {s} held by {was} and {me} at once");
        }
        thread::yield_now();
        for &s in stripes {
            let was = self.owner[s].swap(FREE, Ordering::Relaxed);
            assert_eq!(was, me, "stripe {s} taken over while {me} held it");
        }
    }

    /// The engine's way: one `acquire` of the ascending set.
    fn transact(&self, me: usize, sorted: &[usize]) {
        let held = self.locks.acquire(sorted).expect("no deadline under loom");
        self.critical(me, sorted);
        drop(held);
    }
}

fn run(sets: [&'static [usize]; 3], transact: fn(&Model, usize, &'static [usize])) {
    run_bounded(sets, transact, None)
}

/// `preemptions`: at least this bound, whatever `LOOM_MAX_PREEMPTIONS` says.
fn run_bounded(sets: [&'static [usize]; 3], transact: fn(&Model, usize, &'static [usize]), preemptions: Option<usize>) {
    let mut builder = loom::model::Builder::new();
    if let Some(p) = preemptions {
        builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(p).max(p));
    }
    builder.check(move || {
        let model = Model::new();
        let threads: Vec<_> = sets
            .iter()
            .enumerate()
            .map(|(me, &set)| {
                let model = Arc::clone(&model);
                thread::spawn(move || transact(&model, me, set))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for owner in &model.owner {
            assert_eq!(owner.load(Ordering::Relaxed), FREE);
        }
    });
}

/// {0,1}, {1,2}, {0,2}: every pair overlaps, and the three sets would form
/// a cycle if taken in the wrong order.
#[test]
fn overlapping_sorted_sets_are_exclusive_and_deadlock_free() {
    run([&[0, 1], &[1, 2], &[0, 2]], Model::transact);
}

/// The same without a preemption bound smaller than 4 (slow).
#[test]
#[ignore = "long: cargo test --release --test loom_locks -- --ignored"]
fn overlapping_sorted_sets_bound_4() {
    run_bounded([&[0, 1], &[1, 2], &[0, 2]], Model::transact, Some(4));
}

/// All four stripes, a cut like the audit's `acquire_all` against pairs.
#[test]
fn a_full_cut_against_pairs() {
    run([&[0, 1, 2, 3], &[1, 3], &[0, 2]], Model::transact);
}

/// The check bites (deadlock): stripes taken one `acquire` at a time in the
/// order given, the third thread going high to low. loom reports the
/// {0→1, 1→2, 2→0} cycle as a deadlock; its panic then aborts the process
/// (a second panic while unwinding the model's threads), so the broken model
/// runs in a child process of this test binary and the parent checks that
/// the child died reporting "deadlock".
#[test]
fn unsorted_acquisition_deadlocks() {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "unsorted_acquisition_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the unsorted model passed:\n{stderr}");
    assert!(stderr.contains("deadlock"), "the unsorted model failed, but not by deadlock:\n{stderr}");
}

const CHILD: &str = "DTC_LOOM_DEADLOCK_CHILD";

/// The broken model itself; does nothing unless run by the test above.
#[test]
fn unsorted_acquisition_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    fn one_at_a_time(model: &Model, me: usize, order: &'static [usize]) {
        let held: Vec<_> = order.iter().map(|&s| model.locks.acquire(&[s]).expect("lock")).collect();
        model.critical(me, order);
        drop(held);
    }
    run([&[0, 1], &[1, 2], &[2, 0]], one_at_a_time);
}

/// The check bites (exclusion): a thread that skips the lock on its first
/// stripe is caught by the owner slots.
#[test]
#[should_panic(expected = "at once")]
fn skipping_a_stripe_lock_breaks_exclusion() {
    fn skips_first(model: &Model, me: usize, sorted: &'static [usize]) {
        let held = model.locks.acquire(&sorted[1..]).expect("lock");
        model.critical(me, sorted);
        drop(held);
    }
    run([&[0, 1], &[1, 2], &[0, 2]], skips_first);
}
