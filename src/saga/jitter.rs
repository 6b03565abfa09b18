//! The seeded generator that draws retry delays for an executor or a closure
//! transaction, so that a seeded test sees the same delays every run.

use std::time::Duration;

use rand::rngs::SmallRng;

use crate::retry::RetryPolicy;
use crate::sync::Mutex;

/// A seeded generator for jitter, shared by the threads of one executor.
#[derive(Debug)]
pub(crate) struct JitterSource(Mutex<SmallRng>);

impl JitterSource {
    pub(crate) fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self(Mutex::new(SmallRng::seed_from_u64(seed)))
    }

    /// The delay before the call numbered `attempt` (1-based, so at least
    /// 2 for a retry), drawn under `policy`.
    pub(crate) fn before_call(&self, policy: &RetryPolicy, attempt: u32) -> Duration {
        debug_assert!(attempt >= 2, "the first call is not delayed");
        policy.draw(attempt.saturating_sub(1), &mut *self.0.lock())
    }
}
