//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use crate::sync::Mutex;

/// How a failing call is retried: at most `max_attempts` calls; before
/// retry `n` (0-based) the engine sleeps a uniformly random delay in
/// `[0, min(max_delay, base_delay * 2^n)]` ("full jitter", so that many
/// callers failing together do not retry in lockstep).
///
/// ```
/// use dtc::saga::Backoff;
/// use std::time::Duration;
/// let policy = Backoff::new(Duration::from_millis(10), Duration::from_millis(50), 5);
/// assert_eq!(policy.ceiling(0), Duration::from_millis(10));
/// assert_eq!(policy.ceiling(2), Duration::from_millis(40));
/// assert_eq!(policy.ceiling(3), Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub base_delay: Duration,
    /// Largest ceiling (the doubling stops there).
    pub max_delay: Duration,
    /// Calls at most, the first included (0 is treated as 1).
    pub max_attempts: u32,
}

impl Default for Backoff {
    /// 10 ms doubling up to 1 s, 5 attempts.
    fn default() -> Self {
        Self { base_delay: Duration::from_millis(10), max_delay: Duration::from_secs(1), max_attempts: 5 }
    }
}

impl Backoff {
    /// A policy with these bounds.
    pub const fn new(base_delay: Duration, max_delay: Duration, max_attempts: u32) -> Self {
        Self { base_delay, max_delay, max_attempts }
    }

    /// One attempt, no retry.
    pub const fn once() -> Self {
        Self { base_delay: Duration::ZERO, max_delay: Duration::ZERO, max_attempts: 1 }
    }

    /// Attempts allowed, at least 1.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The largest delay before retry `retry` (0-based):
    /// `min(max_delay, base_delay * 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// A seeded generator for jitter, shared by the threads of one executor.
#[derive(Debug)]
pub(crate) struct Jitter(Mutex<SmallRng>);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        Self(Mutex::new(SmallRng::seed_from_u64(seed)))
    }

    /// A delay drawn uniformly from `[0, policy.ceiling(retry)]`.
    pub(crate) fn delay(&self, policy: &Backoff, retry: u32) -> Duration {
        let ceiling_ns = u64::try_from(policy.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        let drawn = self.0.lock().random_range(0..=ceiling_ns);
        let delay = Duration::from_nanos(drawn);
        debug_assert!(delay <= policy.ceiling(retry));
        delay
    }
}
