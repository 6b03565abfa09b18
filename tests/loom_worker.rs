//! Loom model of a service's inline-vs-queued FIFO protocol and of worker
//! shutdown, running the engine's own worker (`src/coordinator/worker.rs`:
//! `Service::submit`, `send`, `enqueue`, `run`, the barrier and the
//! participant call) through `dtc::__loom::Service`, on the loom twin of
//! the crossbeam channel (`src/sync.rs`, `channel`). A transaction is a
//! number; the participant appends the numbers it commits.
//!
//! Properties, over every schedule within the preemption bound:
//! - nothing is lost: every submitted commit is applied before the worker
//!   exits on `Shutdown`, and `pending` ends at 0;
//! - nothing runs twice;
//! - FIFO: a commit submitted after another one's `submit` returned (the
//!   engine's key locks give that order between conflicting transactions)
//!   is never applied before it.
//!
//! A second model adds the direct path (`Service::is_idle`): a caller that
//! holds the key lock and finds nothing queued applies its commit itself,
//! without the service's core lock, as the coordinator does for built-in
//! ledgers; FIFO must still hold against the queued and inline commits.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_worker
#![cfg(loom)]

use dtc::__loom::{Broken, Service, Step};
use dtc::{BranchId, Failure, Participant, Refusal, Work};
use loom::sync::{Arc, Mutex};
use loom::thread;

/// Commits succeed at once; each commit appends its transaction's number.
struct Recording {
    applied: Arc<Mutex<Vec<u128>>>,
}

impl Participant for Recording {
    type Prepared = ();
    fn prepare(&mut self, _: BranchId, _: Work<'_>) -> Result<(), Refusal> {
        Ok(())
    }
    fn commit(&mut self, branch: BranchId, _: &()) -> Result<(), Failure> {
        self.applied.lock().unwrap().push(branch.tx.as_u128());
        Ok(())
    }
    fn rollback(&mut self, _: BranchId, _: Option<&()>) -> Result<(), Failure> {
        Ok(())
    }
    fn is_nonblocking(&self) -> bool {
        true
    }
}

/// The key lock of the transactions: who holds it in turn, numbered.
struct KeyLock {
    turn: Mutex<u32>,
}

/// Submits the commit of `tx` while holding the key lock; its turn.
fn locked_submit(service: &Service, keys: &KeyLock, tx: u128) -> u32 {
    let mut turn = keys.turn.lock().unwrap();
    *turn += 1;
    service.submit(tx, Step::Commit);
    *turn
}

/// The FIFO violation of the broken variant needs three preemptions (the
/// first caller preempted around its failed `try_lock`, the worker between
/// batches, the worker again after waking), so the model runs with a bound of
/// at least 3 whatever `LOOM_MAX_PREEMPTIONS` says.
const MIN_PREEMPTIONS: usize = 3;

/// How a caller applies its commit under the key lock.
#[derive(Clone, Copy)]
enum Path {
    /// `Service::submit` (inline or queued).
    Submit,
    /// The direct path when `Service::is_idle`, else `submit`.
    Direct,
}

/// Applies the commit of `tx` while holding the key lock; its turn.
fn locked_apply(service: &Service, keys: &KeyLock, applied: &Mutex<Vec<u128>>, tx: u128, path: Path) -> u32 {
    if let Path::Submit = path {
        return locked_submit(service, keys, tx);
    }
    let mut turn = keys.turn.lock().unwrap();
    *turn += 1;
    if service.is_idle() {
        // What the direct path does to a ledger: the change itself.
        applied.lock().unwrap().push(tx);
    } else {
        service.submit(tx, Step::Commit);
    }
    *turn
}

fn model(broken: Option<Broken>, min_preemptions: usize) {
    model_paths(broken, min_preemptions, Path::Submit);
}

fn model_paths(broken: Option<Broken>, min_preemptions: usize, path: Path) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.unwrap_or(min_preemptions).max(min_preemptions));
    builder.check(move || {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (service, worker) = Service::new(Recording { applied: applied.clone() }, broken);
        for tx in 0..3 {
            service.adopt(tx);
        }
        let service = Arc::new(service);
        // A commit already queued when the callers start (an earlier
        // transaction's): the worker may be busy with it.
        service.enqueue_commit(0);
        let worker = thread::spawn(move || worker.run());
        let keys = Arc::new(KeyLock { turn: Mutex::new(0) });
        let callers: Vec<_> = [1, 2]
            .into_iter()
            .map(|tx| {
                let (service, keys, applied) = (Arc::clone(&service), Arc::clone(&keys), Arc::clone(&applied));
                thread::spawn(move || (locked_apply(&service, &keys, &applied, tx, path), tx))
            })
            .collect();
        let mut order: Vec<(u32, u128)> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        order.sort_unstable();
        // Shutdown while requests may still be queued (the coordinator sends
        // it once no caller is in flight, as here).
        service.shutdown();
        worker.join().unwrap();

        let applied = applied.lock().unwrap().clone();
        let mut seen = applied.clone();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "lost or run twice: applied {applied:?}");
        let position = |n: u128| applied.iter().position(|&a| a == n).expect("applied");
        let (first, second) = (order[0].1, order[1].1);
        assert!(
            position(first) < position(second),
            "FIFO broken: {second} submitted after {first} returned but applied before it: {applied:?}"
        );
        // The commit queued before the callers started precedes both (it
        // stands for a conflicting transaction that released its keys).
        assert!(position(0) < position(first), "FIFO broken: {first} applied before the queued 0: {applied:?}");
        assert_eq!(service.pending(), 0, "pending leaked (or left in the queue)");
    });
}

#[test]
fn inline_and_queued_requests_keep_fifo_and_shutdown_drains() {
    model(None, MIN_PREEMPTIONS);
}

/// The same at a preemption bound of 5 (minutes).
#[test]
#[ignore = "long: cargo test --release --test loom_worker -- --ignored"]
fn inline_and_queued_requests_keep_fifo_and_shutdown_drains_bound_5() {
    model(None, 5);
}

/// The check bites: an inline path that skips the `pending` check lets the
/// second caller run before the first caller's queued request.
#[test]
#[should_panic(expected = "FIFO broken")]
fn inline_path_without_pending_check_breaks_fifo() {
    model(Some(Broken::InlineIgnoresPending), MIN_PREEMPTIONS);
}

/// The direct path keeps FIFO: a caller that finds nothing queued under its
/// key lock applies after every earlier commit, without the core lock.
#[test]
fn direct_path_keeps_fifo_with_queued_and_inline_commits() {
    model_paths(None, MIN_PREEMPTIONS, Path::Direct);
}

/// The check bites: a direct path that skips the `pending` check applies
/// before the commit still queued ahead of it.
#[test]
#[should_panic(expected = "FIFO broken")]
fn direct_path_without_pending_check_breaks_fifo() {
    model_paths(Some(Broken::DirectIgnoresPending), MIN_PREEMPTIONS, Path::Direct);
}
