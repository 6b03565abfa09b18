//! Injected time. Every retry, backoff and deadline of sagas and closure
//! transactions asks a [`Clock`], so tests can use a [`ManualClock`] and
//! never sleep.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sync::Mutex;

/// Where time comes from.
///
/// `now` is wall time since the Unix epoch: saga deadlines are written to the
/// log as absolute times and must mean the same after a restart.
pub trait Clock: Send + Sync + 'static {
    /// The current time, since the Unix epoch.
    fn now(&self) -> Duration;
    /// Waits for `duration` (a backoff delay).
    fn sleep(&self, duration: Duration);
}

/// The real clock: `SystemTime` and `thread::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
    }
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Most sleeps a [`ManualClock`] remembers (the oldest are forgotten).
pub const MAX_RECORDED_SLEEPS: usize = 4096;

#[derive(Debug)]
struct ManualState {
    now: Duration,
    sleeps: VecDeque<Duration>,
}

/// A clock for tests: time moves only through [`ManualClock::advance`] or a
/// `sleep`, which advances time by its duration and returns at once. Every
/// sleep is recorded, so a test can check backoff delays.
///
/// Clones share the same time.
///
/// ```
/// use dtc::{saga::{Clock, ManualClock}};
/// use std::time::Duration;
/// let clock = ManualClock::new(Duration::from_secs(100));
/// clock.sleep(Duration::from_millis(5));
/// assert_eq!(clock.now(), Duration::from_millis(100_005));
/// assert_eq!(clock.sleeps(), vec![Duration::from_millis(5)]);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Duration) -> Self {
        Self { state: Arc::new(Mutex::new(ManualState { now: start, sleeps: VecDeque::new() })) }
    }

    /// Moves time forward by `by` (no sleep is recorded).
    pub fn advance(&self, by: Duration) {
        let mut state = self.state.lock();
        state.now = state.now.saturating_add(by);
    }

    /// The sleeps so far, oldest first (at most `MAX_RECORDED_SLEEPS`).
    pub fn sleeps(&self) -> Vec<Duration> {
        self.state.lock().sleeps.iter().copied().collect()
    }

    /// The sleeps so far, forgetting them.
    pub fn take_sleeps(&self) -> Vec<Duration> {
        self.state.lock().sleeps.drain(..).collect()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new(Duration::from_secs(1_700_000_000))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.state.lock().now
    }
    fn sleep(&self, duration: Duration) {
        let mut state = self.state.lock();
        state.now = state.now.saturating_add(duration);
        if state.sleeps.len() == MAX_RECORDED_SLEEPS {
            state.sleeps.pop_front();
        }
        state.sleeps.push_back(duration);
    }
}
