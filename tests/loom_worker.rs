//! Loom model of a service's inline-vs-queued FIFO protocol and of worker
//! shutdown (`src/coordinator/worker.rs`: `Service::submit`, `send`,
//! `enqueue`, `run`).
//!
//! The crossbeam channel is not loom-aware, so a loom `Mutex<VecDeque>` with
//! a `Condvar` stands in for it (FIFO, blocking `recv`, non-blocking
//! `try_recv`); `pending` and the core lock are the engine's. A request is a
//! number; "handling" it appends the number to the core's `applied` log.
//!
//! Properties, over every schedule within the preemption bound:
//! - nothing is lost: every submitted request is applied before the worker
//!   exits on `Shutdown`, and `pending` ends at 0;
//! - nothing runs twice;
//! - FIFO: a request submitted after another one's `submit` returned (the
//!   engine's key locks give that order between conflicting transactions)
//!   is never applied before it.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_worker
#![cfg(loom)]

use std::collections::VecDeque;

use dtc::__loom::Mutex;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar};
use loom::thread;

/// `WORKER_BATCH` in worker.rs is 64; 2 keeps the batch boundary (the
/// worker re-taking the core lock between batches) reachable in the model.
const WORKER_BATCH: usize = 2;

enum Request {
    Phase(u32),
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `Service::submit` as written.
    Engine,
    /// Broken on purpose: the inline path does not check `pending`.
    InlineIgnoresPending,
}

struct Core {
    applied: Vec<u32>,
}

/// The channel stand-in (crossbeam `bounded`, never full in the model).
struct Channel {
    queue: loom::sync::Mutex<VecDeque<Request>>,
    ready: Condvar,
}

impl Channel {
    fn send(&self, request: Request) {
        self.queue.lock().unwrap().push_back(request);
        self.ready.notify_one();
    }

    fn recv(&self) -> Request {
        let mut queue = self.queue.lock().unwrap();
        loop {
            if let Some(request) = queue.pop_front() {
                return request;
            }
            queue = self.ready.wait(queue).unwrap();
        }
    }

    fn try_recv(&self) -> Option<Request> {
        self.queue.lock().unwrap().pop_front()
    }
}

struct Service {
    core: Mutex<Core>,
    pending: AtomicUsize,
    channel: Channel,
    variant: Variant,
}

#[derive(Debug, PartialEq, Eq)]
enum Submitted {
    Inline,
    Queued,
}

impl Service {
    fn new(variant: Variant) -> Arc<Self> {
        Arc::new(Self {
            core: Mutex::new(Core { applied: Vec::new() }),
            pending: AtomicUsize::new(0),
            channel: Channel { queue: loom::sync::Mutex::new(VecDeque::new()), ready: Condvar::new() },
            variant,
        })
    }

    /// `Service::submit` with one copy and a participant whose commit
    /// succeeds (no hand-off). `try_core` spins `INLINE_SPINS` times on
    /// `try_lock`; one attempt here reaches the same states, since loom
    /// already tries it at every point a later spin could.
    fn submit(&self, request: u32) -> Submitted {
        // worker.rs: `if let Some(mut core) = self.try_core() {`
        if let Some(mut core) = self.core.try_lock() {
            // worker.rs: `if self.pending.load(Ordering::SeqCst) == 0 {`
            if self.variant == Variant::InlineIgnoresPending || self.pending.load(Ordering::SeqCst) == 0 {
                // worker.rs: `self.step(&mut core, plan, group, step, true)`
                core.applied.push(request);
                return Submitted::Inline;
            }
            // The core guard drops here, before queueing, as in worker.rs.
        }
        // worker.rs: `self.pending.fetch_add(1, SeqCst); result = self.send(..)`
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.channel.send(Request::Phase(request));
        Submitted::Queued
    }

    /// `Service::enqueue` (audit, shutdown).
    fn enqueue(&self, request: Request) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.channel.send(request);
    }

    /// `Service::run`, line for line.
    fn run(&self) {
        'serve: loop {
            // `while let Ok(first) = requests.recv()`
            let first = self.channel.recv();
            // `let mut core = self.core.lock();`
            let mut core = self.core.lock();
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(request) = next.take() {
                // `let stop = self.handle(&mut core, request);`
                let stop = match request {
                    Request::Phase(n) => {
                        core.applied.push(n);
                        false
                    }
                    Request::Shutdown => true,
                };
                // `self.pending.fetch_sub(1, Ordering::SeqCst);`
                self.pending.fetch_sub(1, Ordering::SeqCst);
                if stop {
                    break 'serve;
                }
                handled += 1;
                if handled < WORKER_BATCH {
                    next = self.channel.try_recv();
                }
            }
        }
    }
}

/// The key lock of the transactions: who holds it in turn, numbered.
struct KeyLock {
    turn: loom::sync::Mutex<u32>,
}

/// Submits `request` while holding the key lock; returns its turn number.
fn locked_submit(service: &Service, keys: &KeyLock, request: u32) -> u32 {
    let mut turn = keys.turn.lock().unwrap();
    *turn += 1;
    service.submit(request);
    *turn
}

/// The FIFO violation of the broken variant needs three preemptions (the
/// first caller preempted around its failed `try_lock`, the worker between
/// batches, the worker again after waking), so the model runs with a bound of
/// at least 3 whatever `LOOM_MAX_PREEMPTIONS` says.
const MIN_PREEMPTIONS: usize = 3;

fn model(variant: Variant, min_preemptions: usize) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(min_preemptions).max(min_preemptions));
    builder.check(move || {
        let service = Service::new(variant);
        // A request already queued when the callers start (an earlier
        // transaction's, or an audit): the worker may be busy with it.
        service.enqueue(Request::Phase(0));
        let worker = {
            let service = Arc::clone(&service);
            thread::spawn(move || service.run())
        };
        let keys = Arc::new(KeyLock { turn: loom::sync::Mutex::new(0) });
        let callers: Vec<_> = [1, 2]
            .into_iter()
            .map(|request| {
                let (service, keys) = (Arc::clone(&service), Arc::clone(&keys));
                thread::spawn(move || (locked_submit(&service, &keys, request), request))
            })
            .collect();
        let mut order: Vec<(u32, u32)> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        order.sort_unstable();
        // Shutdown while requests may still be queued (the coordinator sends
        // it once no caller is in flight, as here).
        service.enqueue(Request::Shutdown);
        worker.join().unwrap();

        let applied = service.core.lock().applied.clone();
        let mut seen = applied.clone();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "lost or run twice: applied {applied:?}");
        let position = |n: u32| applied.iter().position(|&a| a == n).expect("applied");
        let (first, second) = (order[0].1, order[1].1);
        assert!(
            position(first) < position(second),
            "FIFO broken: {second} submitted after {first} returned but applied before it: {applied:?}"
        );
        assert_eq!(service.pending.load(Ordering::SeqCst), 0, "pending leaked");
        assert!(service.channel.queue.lock().unwrap().is_empty(), "left in the queue");
    });
}

#[test]
fn inline_and_queued_requests_keep_fifo_and_shutdown_drains() {
    model(Variant::Engine, MIN_PREEMPTIONS);
}

/// The same at a preemption bound of 5 (minutes).
#[test]
#[ignore = "long: cargo test --release --test loom_worker -- --ignored"]
fn inline_and_queued_requests_keep_fifo_and_shutdown_drains_bound_5() {
    model(Variant::Engine, 5);
}

/// The check bites: an inline path that skips the `pending` check lets the
/// second caller run before the first caller's queued request.
#[test]
#[should_panic(expected = "FIFO broken")]
fn inline_path_without_pending_check_breaks_fifo() {
    model(Variant::InlineIgnoresPending, MIN_PREEMPTIONS);
}
