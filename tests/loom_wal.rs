//! Loom model of the group-commit state machine (`src/wal/group.rs`).
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_wal
#![cfg(loom)]

use dtc::__loom::{GroupCommit, WaitError};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::thread;

const RECORD_BYTES: u64 = 10;
const SLOTS: usize = 3;

/// The log around the group-commit struct: a reservation counter, a
/// "written" flag per reservation standing for the copied bytes, and a
/// simulated storage that records which slots were synced. A sync covers
/// exactly its range `[from, to)` (as `msync` does; `fdatasync` covers
/// more), so a model that publishes a later sync before an earlier one
/// completes is caught.
struct Model {
    group: GroupCommit,
    reserved: AtomicU64,
    written: [AtomicBool; SLOTS],
    synced: [AtomicBool; SLOTS],
    /// Syncs running now, and the most seen at once.
    syncing: AtomicUsize,
    max_syncing: AtomicUsize,
    syncs_in_flight: usize,
    fail_syncs: bool,
}

impl Model {
    fn new(fail_syncs: bool) -> Arc<Model> {
        Self::build(GroupCommit::new(0), 1, fail_syncs)
    }

    /// Up to two syncs in flight.
    fn overlapping() -> Arc<Model> {
        Self::build(GroupCommit::new(0).with_syncs_in_flight(2), 2, false)
    }

    fn build(group: GroupCommit, syncs_in_flight: usize, fail_syncs: bool) -> Arc<Model> {
        let flags = || [AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false)];
        Arc::new(Model {
            group,
            reserved: AtomicU64::new(0),
            written: flags(),
            synced: flags(),
            syncing: AtomicUsize::new(0),
            max_syncing: AtomicUsize::new(0),
            syncs_in_flight,
            fail_syncs,
        })
    }

    fn synced_below(&self, position: u64) -> bool {
        (0..position / RECORD_BYTES).all(|slot| self.synced[slot as usize].load(Ordering::Relaxed))
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
        // Never more syncs at once than allowed (one, unless overlapping).
        let running = self.syncing.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(running <= self.syncs_in_flight, "{running} syncs at once");
        self.max_syncing.fetch_max(running, Ordering::Relaxed);
        assert!(from < to, "empty sync {from}..{to}");
        // Every byte of the range was completely written before the sync.
        for slot in from / RECORD_BYTES..to / RECORD_BYTES {
            assert!(self.written[slot as usize].load(Ordering::Relaxed), "synced unwritten slot {slot}");
        }
        let result = if self.fail_syncs {
            Err(std::io::Error::other("injected"))
        } else {
            for slot in from / RECORD_BYTES..to / RECORD_BYTES {
                self.synced[slot as usize].store(true, Ordering::Relaxed);
            }
            Ok(())
        };
        self.syncing.fetch_sub(1, Ordering::Relaxed);
        result
    }

    fn wait(&self, position: u64) -> Result<(), ()> {
        match self.group.wait_durable(position, |_| {}, |from, to| self.sync(from, to)) {
            Ok(()) => {
                // No waiter is released before every byte below it is synced.
                assert!(self.synced_below(position), "released before sync");
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
        assert!(!model.synced_below(RECORD_BYTES));
        assert_eq!(model.group.durable(), 0);
    });
}

/// Two writers, two syncs allowed in flight: the second group's sync may
/// start (and finish) while the first is running, yet nobody is released
/// before every byte below its position is synced.
fn overlapping_writers(model: &Arc<Model>) {
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let model = Arc::clone(model);
            thread::spawn(move || {
                let end = model.append();
                model.wait(end).expect("durable");
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread");
    }
}

#[test]
fn two_syncs_in_flight_acknowledge_in_log_order() {
    // Outside the model: std types (loom's only work inside `model`).
    let overlapped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::clone(&overlapped);
    loom::model(move || {
        let model = Model::overlapping();
        overlapping_writers(&model);
        assert_eq!(model.group.durable(), 2 * RECORD_BYTES);
        if model.max_syncing.load(Ordering::Relaxed) == 2 {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // The model did explore executions with two syncs running at once.
    assert!(overlapped.load(std::sync::atomic::Ordering::Relaxed), "no execution overlapped two syncs");
}

/// Two syncs in flight with a slow earlier writer and a pure waiter.
#[test]
fn two_syncs_in_flight_with_a_slow_writer_and_a_waiter() {
    loom::model(|| {
        let model = Model::overlapping();
        let start = model.reserved.fetch_add(RECORD_BYTES, Ordering::Relaxed);
        let slow = {
            let model = Arc::clone(&model);
            thread::spawn(move || {
                model.written[0].store(true, Ordering::Relaxed);
                model.group.complete(start, start + RECORD_BYTES);
                model.wait(RECORD_BYTES).expect("durable");
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

/// The deliberately broken variant: publishing a sync's end as soon as it
/// completes, ahead of an earlier sync still in flight, releases a waiter
/// whose bytes are not synced; the model catches it.
#[test]
#[should_panic(expected = "released before sync")]
fn publishing_out_of_order_is_caught() {
    loom::model(|| {
        let model = Model::build(GroupCommit::new(0).with_syncs_in_flight(2).with_out_of_order_publication(), 2, false);
        overlapping_writers(&model);
    });
}
