//! An external participant whose commits and rollbacks fail on demand.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dtc::{BranchId, Failure, Participant, Refusal, Work};

/// Failures to inject: counts of calls left to fail (`u32::MAX`: forever).
#[derive(Debug, Default)]
pub struct Switches {
    pub fail_commits: AtomicU32,
    pub fail_rollbacks: AtomicU32,
    pub refuse_prepare: AtomicBool,
    /// Refuse only once this other participant has prepared (at most 5 s).
    pub refuse_after: parking_lot::Mutex<Option<Arc<Switches>>>,
    pub prepares: AtomicU32,
    pub commit_calls: AtomicU32,
    pub commits: AtomicU32,
    pub rollback_calls: AtomicU32,
    pub rollbacks: AtomicU32,
    /// The code failures carry.
    pub code: parking_lot::Mutex<String>,
}

impl Switches {
    pub fn failing(code: &str, commits: u32, rollbacks: u32) -> Arc<Switches> {
        let s = Switches::default();
        s.fail_commits.store(commits, Ordering::SeqCst);
        s.fail_rollbacks.store(rollbacks, Ordering::SeqCst);
        *s.code.lock() = code.to_string();
        Arc::new(s)
    }

    fn take_failure(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok()
    }

    pub fn heal(&self) {
        self.fail_commits.store(0, Ordering::SeqCst);
        self.fail_rollbacks.store(0, Ordering::SeqCst);
    }
}

pub struct Flaky(pub Arc<Switches>);

impl Participant for Flaky {
    type Prepared = ();

    fn prepare(&mut self, _branch: BranchId, _work: Work<'_>) -> Result<(), Refusal> {
        self.0.prepares.fetch_add(1, Ordering::SeqCst);
        if self.0.refuse_prepare.load(Ordering::SeqCst) {
            if let Some(other) = self.0.refuse_after.lock().clone() {
                eventually("the other participant's prepare", Duration::from_secs(5), || {
                    other.prepares.load(Ordering::SeqCst) > 0
                });
            }
            return Err(Refusal::Other { code: "closed".into(), message: "not today".into() });
        }
        Ok(())
    }
    fn commit(&mut self, _branch: BranchId, _prepared: &()) -> Result<(), Failure> {
        self.0.commit_calls.fetch_add(1, Ordering::SeqCst);
        if Switches::take_failure(&self.0.fail_commits) {
            return Err(Failure::with_code(self.0.code.lock().clone(), "commit failed"));
        }
        self.0.commits.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn rollback(&mut self, _branch: BranchId, _prepared: Option<&()>) -> Result<(), Failure> {
        self.0.rollback_calls.fetch_add(1, Ordering::SeqCst);
        if Switches::take_failure(&self.0.fail_rollbacks) {
            return Err(Failure::with_code(self.0.code.lock().clone(), "rollback failed"));
        }
        self.0.rollbacks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Polls `condition` until it holds; panics with `what` after `limit`.
pub fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
