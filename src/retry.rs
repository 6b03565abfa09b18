//! One retry policy for every call the engine repeats: a two-phase commit's
//! commit or rollback ([`Builder::retry`](crate::Builder::retry)), a closure
//! participant's commit or rollback
//! ([`closure::ClosureTx::retry`](crate::closure::ClosureTx::retry)), and a
//! saga step's action or compensation
//! ([`saga::Step::retry`](crate::saga::Step::retry),
//! [`saga::SagaExecutorBuilder::compensation_retry`](crate::saga::SagaExecutorBuilder::compensation_retry)).
//!
//! A leaf module: it uses nothing of the crate, so every engine may use it.

use std::time::Duration;

use rand::Rng;

/// How the delay before a retry is drawn below its ceiling, so that calls
/// failing together do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The ceiling itself.
    None,
    /// A uniform draw from `[ceiling / 2, ceiling]` ("equal jitter": spread,
    /// yet never much sooner than the ceiling asks).
    #[default]
    Equal,
    /// A uniform draw from `[0, ceiling]` ("full jitter": the widest spread).
    Full,
}

/// How a failing call is retried.
///
/// Delays double from `initial_delay` up to `max_delay`, each drawn below
/// its ceiling as [`Jitter`] says. A call is made at most `max_attempts`
/// times (the first included; 0 counts as 1), and a failure whose code is
/// listed in `non_retryable` ends the retries at once. What happens then
/// depends on the engine: a two-phase commit's commit or rollback is parked
/// for an operator (listed by
/// [`Coordinator::unfinished`](crate::Coordinator::unfinished) and counted in
/// metrics, never retried forever nor dropped); a saga step fails and the
/// saga compensates; a closure transaction reports what is incomplete.
///
/// ```
/// use dtc::{Jitter, RetryPolicy};
/// use std::time::Duration;
/// let policy = RetryPolicy::new(Duration::from_millis(2), Duration::from_millis(50), 8)
///     .non_retryable(["account_closed"]);
/// assert_eq!(policy.delay(1), Duration::from_millis(2)); // before the second call
/// assert_eq!(policy.delay(3), Duration::from_millis(8));
/// assert_eq!(policy.delay(9), Duration::from_millis(50));
/// assert!(!policy.is_retryable("account_closed"));
/// assert!(policy.is_retryable("timeout"));
/// assert_eq!(policy.jitter, Jitter::Equal);
/// assert_eq!(RetryPolicy::once().attempts(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first delay.
    pub initial_delay: Duration,
    /// Largest ceiling (the doubling stops there).
    pub max_delay: Duration,
    /// Calls at most, the first included (0 counts as 1).
    pub max_attempts: u32,
    /// How each delay is drawn below its ceiling.
    pub jitter: Jitter,
    /// Failure codes ([`Failure::code`](crate::Failure),
    /// [`StepError::with_code`](crate::saga::StepError::with_code)) that end
    /// the retries at once.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    /// 1 ms doubling to 200 ms, equal jitter, 1 000 calls, every code
    /// retryable (the two-phase commit's default; sagas and closures set
    /// their own, documented where they are built).
    fn default() -> Self {
        Self::new(Duration::from_millis(1), Duration::from_millis(200), 1_000)
    }
}

impl RetryPolicy {
    /// A policy with these bounds, equal jitter, every code retryable.
    pub const fn new(initial_delay: Duration, max_delay: Duration, max_attempts: u32) -> Self {
        Self { initial_delay, max_delay, max_attempts, jitter: Jitter::Equal, non_retryable: Vec::new() }
    }

    /// One call, no retry.
    pub const fn once() -> Self {
        Self::new(Duration::ZERO, Duration::ZERO, 1)
    }

    /// The same policy with this jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same policy, with these failure codes ending the retries at once.
    pub fn non_retryable<S: Into<String>>(mut self, codes: impl IntoIterator<Item = S>) -> Self {
        self.non_retryable.extend(codes.into_iter().map(Into::into));
        self
    }

    /// False if a failure with this code ends the retries at once.
    pub fn is_retryable(&self, code: &str) -> bool {
        !self.non_retryable.iter().any(|c| c == code)
    }

    /// Calls allowed, at least 1.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The ceiling of the delay before retry `retry` (1-based: retry 1
    /// comes before the second call): `min(max_delay, initial_delay *
    /// 2^(retry - 1))`.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.initial_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The delay to wait before retry `retry` (1-based), drawn from `rng`
    /// below [`delay`](Self::delay) as the policy's [`Jitter`] says.
    pub fn draw(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.delay(retry);
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let drawn = match self.jitter {
            Jitter::None => return ceiling,
            _ if ceiling_ns == 0 => return ceiling,
            Jitter::Equal => Duration::from_nanos(rng.random_range(ceiling_ns / 2..=ceiling_ns)),
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=ceiling_ns)),
        };
        debug_assert!(drawn <= ceiling);
        drawn
    }

    /// [`draw`](Self::draw) with the thread's generator.
    pub(crate) fn sleep_for(&self, retry: u32) -> Duration {
        self.draw(retry, &mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_double_and_are_capped() {
        let p = RetryPolicy::new(Duration::from_millis(2), Duration::from_millis(50), 9);
        let delays: Vec<u128> = (1..=8).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 50, 50, 50]);
        assert_eq!(p.delay(200), Duration::from_millis(50));
        assert_eq!(p.delay(0), p.delay(1));
        assert_eq!(p.clone().with_jitter(Jitter::None).sleep_for(3), Duration::from_millis(8));
    }

    #[test]
    fn each_jitter_draws_within_its_range() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let base = RetryPolicy::new(Duration::from_millis(100), Duration::from_millis(100), 50);
        for (jitter, low) in [(Jitter::None, 100), (Jitter::Equal, 50), (Jitter::Full, 0)] {
            let p = base.clone().with_jitter(jitter);
            let drawn: Vec<Duration> = (0..200).map(|_| p.draw(1, &mut rng)).collect();
            assert!(drawn.iter().all(|d| *d >= Duration::from_millis(low) && *d <= Duration::from_millis(100)));
            if jitter != Jitter::None {
                // The draws spread over their range, not one value.
                let below_middle = drawn.iter().filter(|d| **d < Duration::from_millis((low + 100) / 2)).count();
                assert!((40..=160).contains(&below_middle), "{jitter:?}: {below_middle} of 200 below the middle");
            }
        }
        assert_eq!(RetryPolicy::once().draw(1, &mut rng), Duration::ZERO);
    }

    #[test]
    fn codes_and_attempts() {
        let p = RetryPolicy::new(Duration::ZERO, Duration::ZERO, 0).non_retryable(["declined"]);
        assert_eq!(p.attempts(), 1);
        assert!(!p.is_retryable("declined") && p.is_retryable("timeout"));
    }
}
