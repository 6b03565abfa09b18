//! Loom model of the group-commit state machine (`src/wal/group.rs`).
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_wal
#![cfg(loom)]

use dtc::__loom::{GroupCommit, WaitError};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::thread;

const RECORD_BYTES: u64 = 10;
const SLOTS: usize = 3;

/// The log around the group-commit struct: a reservation counter, a
/// "written" flag per reservation standing for the copied bytes, and a
/// simulated storage that records what was synced.
struct Model {
    group: GroupCommit,
    reserved: AtomicU64,
    written: [AtomicBool; SLOTS],
    synced_to: AtomicU64,
    syncing: AtomicBool,
    fail_syncs: bool,
}

impl Model {
    fn new(fail_syncs: bool) -> Arc<Model> {
        Arc::new(Model {
            group: GroupCommit::new(0),
            reserved: AtomicU64::new(0),
            written: [AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false)],
            synced_to: AtomicU64::new(0),
            syncing: AtomicBool::new(false),
            fail_syncs,
        })
    }

    /// Reserve, copy, publish: returns the end position.
    fn append(&self) -> u64 {
        // Relaxed: only the atomicity of the reservation matters here.
        let start = self.reserved.fetch_add(RECORD_BYTES, Ordering::Relaxed);
        // Relaxed on purpose: the group's completion must order it.
        self.written[(start / RECORD_BYTES) as usize].store(true, Ordering::Relaxed);
        self.group.complete(start, start + RECORD_BYTES);
        start + RECORD_BYTES
    }

    fn sync(&self, from: u64, to: u64) -> std::io::Result<()> {
        // Never two leaders at once.
        assert!(!self.syncing.swap(true, Ordering::Relaxed), "two leaders syncing at once");
        assert!(from < to, "empty sync {from}..{to}");
        // Every byte of the range was completely written before the sync.
        for slot in from / RECORD_BYTES..to / RECORD_BYTES {
            assert!(self.written[slot as usize].load(Ordering::Relaxed), "synced unwritten slot {slot}");
        }
        let result = if self.fail_syncs {
            Err(std::io::Error::other("injected"))
        } else {
            self.synced_to.fetch_max(to, Ordering::Relaxed);
            Ok(())
        };
        self.syncing.store(false, Ordering::Relaxed);
        result
    }

    fn wait(&self, position: u64) -> Result<(), ()> {
        match self.group.wait_durable(position, |_| {}, |from, to| self.sync(from, to)) {
            Ok(()) => {
                // No waiter is released before its range is synced.
                assert!(self.synced_to.load(Ordering::Relaxed) >= position, "released before sync");
                assert!(self.group.durable() >= position);
                Ok(())
            }
            Err(WaitError::Sync(_)) | Err(WaitError::Failed(_)) => {
                assert!(self.fail_syncs, "failure without a failing sync");
                Err(())
            }
        }
    }
}

/// Two writers append and wait; completions race, leadership races.
#[test]
fn two_writers_wait_for_their_own_records() {
    loom::model(|| {
        let model = Model::new(false);
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let model = Arc::clone(&model);
                thread::spawn(move || {
                    let end = model.append();
                    model.wait(end).expect("durable");
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread");
        }
        assert_eq!(model.group.completed(), 2 * RECORD_BYTES);
    });
}

/// A waiter for the later record while the earlier writer is slow: the
/// watermark must not pass the incomplete reservation, and nobody may miss
/// the wake-up (loom reports a deadlock if they do).
#[test]
fn slow_earlier_writer_holds_the_watermark_back() {
    loom::model(|| {
        let model = Model::new(false);
        // Reserve slot 0 now, complete it later from another thread.
        let start = model.reserved.fetch_add(RECORD_BYTES, Ordering::Relaxed);
        let slow = {
            let model = Arc::clone(&model);
            thread::spawn(move || {
                model.written[0].store(true, Ordering::Relaxed);
                model.group.complete(start, start + RECORD_BYTES);
            })
        };
        let fast = {
            let model = Arc::clone(&model);
            thread::spawn(move || {
                let end = model.append();
                model.wait(end).expect("durable");
            })
        };
        model.wait(RECORD_BYTES).expect("durable");
        slow.join().expect("slow");
        fast.join().expect("fast");
    });
}

/// Three threads: two writers and a pure waiter for everything.
#[test]
fn three_threads_two_writers_one_waiter() {
    loom::model(|| {
        let model = Model::new(false);
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let model = Arc::clone(&model);
                thread::spawn(move || {
                    let end = model.append();
                    model.wait(end).expect("durable");
                })
            })
            .collect();
        // Wait for whatever has been reserved so far (maybe nothing).
        let seen = model.reserved.load(Ordering::Relaxed);
        model.wait(seen).expect("durable");
        for writer in writers {
            writer.join().expect("writer");
        }
    });
}

/// A failed sync fails every waiter, current and future, and is never retried.
#[test]
fn failed_sync_fails_everyone() {
    loom::model(|| {
        let model = Model::new(true);
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let model = Arc::clone(&model);
                thread::spawn(move || {
                    let end = model.append();
                    model.wait(end)
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().expect("thread").is_err());
        }
        assert!(model.group.failure().is_some());
        assert_eq!(model.synced_to.load(Ordering::Relaxed), 0);
        assert_eq!(model.group.durable(), 0);
    });
}
