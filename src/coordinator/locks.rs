//! Striped key locks, always taken in ascending stripe order.
//!
//! Why this is deadlock-free: every transaction takes its stripes in one
//! global order (ascending index, duplicates removed). A cycle in the
//! waits-for graph would need some transaction to wait for a stripe lower
//! than one it holds, which ascending acquisition never does.
//!
//! Why it gives serializable execution: a transaction holds every stripe
//! covering the accounts it touches from before prepare until its decision is
//! applied (strict two-phase locking), so two conflicting transactions are
//! ordered by the first stripe they share.

use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Instant;

use smallvec::SmallVec;

use crate::sync::{Mutex, MutexGuard};

/// Held stripes; dropping it releases them (in reverse order).
pub(crate) struct LockSet<'a> {
    guards: SmallVec<[MutexGuard<'a, ()>; 8]>,
}

impl LockSet<'_> {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.guards.len()
    }
}

impl Drop for LockSet<'_> {
    fn drop(&mut self) {
        while self.guards.pop().is_some() {}
    }
}

pub(crate) struct StripedLocks {
    /// One byte each, not padded to a cache line: a transaction touches
    /// stripes at random, and 16 384 padded stripes (2 MiB) would miss the
    /// cache on every lock, where unpadded ones (16 KiB) stay in it; two
    /// cores sharing a line of 64 stripes is the rarer, cheaper cost.
    stripes: Box<[Mutex<()>]>,
    mask: usize,
    hasher: hashbrown::DefaultHashBuilder,
}

impl StripedLocks {
    /// `count` is rounded up to a power of two (at least 1).
    pub(crate) fn new(count: usize) -> Self {
        let count = count.max(1).next_power_of_two();
        let stripes = (0..count).map(|_| Mutex::new(())).collect();
        Self { stripes, mask: count - 1, hasher: hashbrown::DefaultHashBuilder::default() }
    }

    /// The stripe covering `account` of service number `service`.
    pub(crate) fn stripe_of(&self, service: u16, account: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        service.hash(&mut h);
        account.hash(&mut h);
        (h.finish() as usize) & self.mask
    }

    /// Takes every stripe of `sorted` (strictly ascending) or none, waiting
    /// until `deadline()` at most; `deadline` is called only if a stripe is
    /// taken (so an uncontended transaction reads no clock for it).
    pub(crate) fn acquire(&self, sorted: &[usize], deadline: impl Fn() -> Instant) -> Option<LockSet<'_>> {
        assert!(sorted.windows(2).all(|w| w[0] < w[1]), "lock set must be strictly ascending");
        let mut guards = SmallVec::new();
        for &stripe in sorted {
            let lock = &self.stripes[stripe];
            let guard = match lock.try_lock() {
                Some(g) => g,
                None => {
                    let left = deadline().saturating_duration_since(Instant::now());
                    lock.try_lock_for(left)?
                }
            };
            guards.push(guard);
        }
        Some(LockSet { guards })
    }

    /// Takes every stripe, in order (a consistent cut of the whole store).
    pub(crate) fn acquire_all(&self, deadline: Instant) -> Option<LockSet<'_>> {
        let all: Vec<usize> = (0..self.stripes.len()).collect();
        self.acquire(&all, || deadline)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn opposite_orders_never_deadlock() {
        let locks = Arc::new(StripedLocks::new(8));
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (locks, counter) = (locks.clone(), counter.clone());
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let (a, b) = if (t + i) % 2 == 0 { (1, 6) } else { (6, 1) };
                        let mut set = [a, b];
                        set.sort_unstable();
                        let held = locks.acquire(&set, || Instant::now() + Duration::from_secs(60)).unwrap();
                        assert_eq!(held.len(), 2);
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 16_000);
    }

    #[test]
    fn acquire_times_out_and_releases_what_it_took() {
        let locks = StripedLocks::new(4);
        let held = locks.acquire(&[2], || Instant::now() + Duration::from_secs(1)).unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(locks.acquire(&[1, 2], || soon).is_none());
        // Stripe 1 was released when the attempt failed.
        assert!(locks.acquire(&[1], Instant::now).is_some());
        drop(held);
        assert!(locks.acquire_all(Instant::now() + Duration::from_secs(1)).is_some());
    }
}
