//! The one place the crate gets its concurrency primitives from.
//!
//! Under `cfg(loom)` every type here is the `loom` model-checked twin, so the
//! same engine code runs inside loom models (`tests/loom_*.rs`). Code that is
//! part of a loom model must use these names, never `std::sync` or
//! `parking_lot` directly.

// A shim re-exports more than any one build uses.
#![allow(dead_code, unused_imports)]

#[cfg(not(loom))]
mod imp {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
    pub use std::thread;

    /// A mutex without poisoning: a panic inside a participant must not make
    /// the engine's own bookkeeping unusable.
    #[derive(Debug, Default)]
    pub struct Mutex<T>(parking_lot::Mutex<T>);
    pub type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Self(parking_lot::Mutex::new(value))
        }
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock()
        }
        pub fn try_lock_for(&self, timeout: std::time::Duration) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock_for(timeout)
        }
    }

    #[derive(Debug, Default)]
    pub struct Condvar(parking_lot::Condvar);
    impl Condvar {
        pub fn new() -> Self {
            Self(parking_lot::Condvar::new())
        }
        pub fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }
        /// Waits at most `timeout`; the flag is true when the wait timed out.
        pub fn wait_for<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> (MutexGuard<'a, T>, bool) {
            let timed_out = self.0.wait_for(&mut guard, timeout).timed_out();
            (guard, timed_out)
        }
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
    }
}

/// The channels between callers and workers: crossbeam's, or under loom a
/// model-checked twin (a `Mutex<VecDeque>` with two condition variables)
/// with the same names, so that the worker code runs inside loom models.
#[cfg(not(loom))]
pub mod channel {
    pub use crossbeam_channel::{
        Receiver, RecvTimeoutError, SendError, SendTimeoutError, Sender, TryRecvError, bounded, unbounded,
    };
}

#[cfg(loom)]
pub mod channel {
    use std::collections::VecDeque;
    use std::time::Instant;

    use super::imp::{Arc, Condvar, Mutex};

    struct State<T> {
        items: VecDeque<T>,
        senders: usize,
        receivers: usize,
    }

    struct Shared<T> {
        state: Mutex<State<T>>,
        ready: Condvar,
        space: Condvar,
        capacity: Option<usize>,
    }

    pub struct Sender<T>(Arc<Shared<T>>);
    pub struct Receiver<T>(Arc<Shared<T>>);

    #[derive(Debug, PartialEq, Eq)]
    pub struct SendError<T>(pub T);
    #[derive(Debug, PartialEq, Eq)]
    pub enum SendTimeoutError<T> {
        Timeout(T),
        Disconnected(T),
    }
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RecvTimeoutError {
        Timeout,
        Disconnected,
    }
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TryRecvError {
        Empty,
        Disconnected,
    }
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RecvError;

    fn channel<T>(capacity: Option<usize>) -> (Sender<T>, Receiver<T>) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { items: VecDeque::new(), senders: 1, receivers: 1 }),
            ready: Condvar::new(),
            space: Condvar::new(),
            capacity,
        });
        (Sender(shared.clone()), Receiver(shared))
    }

    pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
        channel(Some(capacity.max(1)))
    }

    pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
        channel(None)
    }

    impl<T> Sender<T> {
        pub fn send(&self, item: T) -> Result<(), SendError<T>> {
            let mut state = self.0.state.lock();
            loop {
                if state.receivers == 0 {
                    return Err(SendError(item));
                }
                if self.0.capacity.is_none_or(|c| state.items.len() < c) {
                    state.items.push_back(item);
                    drop(state);
                    self.0.ready.notify_all();
                    return Ok(());
                }
                state = self.0.space.wait(state);
            }
        }

        /// loom has no time: a send with a deadline is a plain send.
        pub fn send_deadline(&self, item: T, _deadline: Instant) -> Result<(), SendTimeoutError<T>> {
            self.send(item).map_err(|SendError(item)| SendTimeoutError::Disconnected(item))
        }
    }

    impl<T> Receiver<T> {
        pub fn recv(&self) -> Result<T, RecvError> {
            let mut state = self.0.state.lock();
            loop {
                if let Some(item) = state.items.pop_front() {
                    drop(state);
                    self.0.space.notify_all();
                    return Ok(item);
                }
                if state.senders == 0 {
                    return Err(RecvError);
                }
                state = self.0.ready.wait(state);
            }
        }

        pub fn try_recv(&self) -> Result<T, TryRecvError> {
            let mut state = self.0.state.lock();
            match state.items.pop_front() {
                Some(item) => {
                    drop(state);
                    self.0.space.notify_all();
                    Ok(item)
                }
                None if state.senders == 0 => Err(TryRecvError::Disconnected),
                None => Err(TryRecvError::Empty),
            }
        }

        /// loom has no time: a receive with a deadline waits like `recv`.
        pub fn recv_deadline(&self, _deadline: Instant) -> Result<T, RecvTimeoutError> {
            self.recv().map_err(|RecvError| RecvTimeoutError::Disconnected)
        }
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            self.0.state.lock().senders += 1;
            Sender(self.0.clone())
        }
    }

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            self.0.state.lock().receivers += 1;
            Receiver(self.0.clone())
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            self.0.state.lock().senders -= 1;
            self.0.ready.notify_all();
        }
    }

    impl<T> Drop for Receiver<T> {
        fn drop(&mut self) {
            self.0.state.lock().receivers -= 1;
            self.0.space.notify_all();
        }
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
    pub use loom::thread;

    #[derive(Debug, Default)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);
    pub type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
        /// loom has no timed waits: model a timed lock as a plain lock.
        pub fn try_lock_for(&self, _timeout: std::time::Duration) -> Option<MutexGuard<'_, T>> {
            Some(self.lock())
        }
    }

    #[derive(Debug, Default)]
    pub struct Condvar(loom::sync::Condvar);
    impl Condvar {
        pub fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }
        pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(guard).unwrap_or_else(|e| e.into_inner())
        }
        /// loom has no timed waits: a timed wait is modelled as a plain wait
        /// that never times out.
        pub fn wait_for<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            _timeout: std::time::Duration,
        ) -> (MutexGuard<'a, T>, bool) {
            (self.wait(guard), false)
        }
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
    }
}

pub use imp::*;

/// How many shards per-thread striped state has (counters, id clocks,
/// histograms): a power of two, more than this machine class has cores.
#[cfg(not(loom))]
pub const THREAD_SHARDS: usize = 8;
/// One under loom: its threads are coroutines of one OS thread, so they
/// share one `thread_local` shard anyway, and eight cache-padded copies of
/// every counter overflowed the models' coroutine stacks.
#[cfg(loom)]
pub const THREAD_SHARDS: usize = 1;

thread_local! {
    static THREAD_SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// The calling thread's shard in `0..THREAD_SHARDS`, handed out round-robin
/// on first use and fixed for the thread's life. Only a placement hint:
/// threads may share a shard, so striped state stays atomic.
pub fn thread_shard() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    THREAD_SHARD.with(|s| {
        if s.get() == usize::MAX {
            // Relaxed: a round-robin hint, ordering nothing.
            s.set(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % THREAD_SHARDS);
        }
        s.get()
    })
}
