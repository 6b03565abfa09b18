//! Loom model of the per-participant phase barrier under racing duplicate
//! deliveries, running the engine's own code: `Service::submit` and the
//! worker's `prepare` / `commit` / `rollback` with the real `Barrier`
//! (`src/coordinator/worker.rs`, `barrier.rs`) through `dtc::__loom::Service`,
//! with a counting participant and the service's worker thread: a delivery
//! runs inline on its caller's thread when the service is idle, else it is
//! queued to the worker, exactly as the engine decides.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_barrier
#![cfg(loom)]

use dtc::__loom::{Answer, Broken, Service, Step};
use dtc::{BranchId, Failure, Participant, Refusal, Work};
use loom::sync::{Arc, Mutex};
use loom::thread;

const TX: u128 = 7;

/// Counts what the participant actually did.
#[derive(Debug, Default)]
struct Counts {
    /// A prepared change is held (prepare ok, not yet committed or undone).
    holding: bool,
    prepares: u32,
    commits: u32,
    rollbacks: u32,
}

struct Counting {
    counts: Arc<Mutex<Counts>>,
    /// Prepares refuse (vote no) instead of preparing.
    refuse: bool,
}

impl Participant for Counting {
    type Prepared = ();
    fn prepare(&mut self, _: BranchId, _: Work<'_>) -> Result<(), Refusal> {
        let mut c = self.counts.lock().unwrap();
        c.prepares += 1;
        if self.refuse {
            return Err(Refusal::new("no", "refused"));
        }
        assert!(!c.holding, "prepared twice");
        c.holding = true;
        Ok(())
    }
    fn commit(&mut self, _: BranchId, _: &()) -> Result<(), Failure> {
        let mut c = self.counts.lock().unwrap();
        assert!(c.holding, "commit without a prepared change");
        assert_eq!(c.rollbacks, 0, "commit after rollback");
        c.holding = false;
        c.commits += 1;
        Ok(())
    }
    fn rollback(&mut self, _: BranchId, _: Option<&()>) -> Result<(), Failure> {
        let mut c = self.counts.lock().unwrap();
        assert_eq!(c.commits, 0, "rollback after commit");
        c.holding = false;
        c.rollbacks += 1;
        Ok(())
    }
    fn is_nonblocking(&self) -> bool {
        true
    }
}

/// The service and its worker thread; `stop` shuts the worker down.
struct Running {
    service: Arc<Service>,
    counts: Arc<Mutex<Counts>>,
    worker: thread::JoinHandle<()>,
}

fn service(refuse: bool, broken: Option<Broken>) -> Running {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (service, worker) = Service::new(Counting { counts: counts.clone(), refuse }, broken);
    let worker = thread::spawn(move || worker.run());
    Running { service: Arc::new(service), counts, worker }
}

impl Running {
    /// Stops the worker once every caller joined; the participant's counts.
    fn stop(self) -> Arc<Mutex<Counts>> {
        self.service.shutdown();
        self.worker.join().unwrap();
        assert_eq!(self.service.pending(), 0);
        self.counts
    }
}

fn deliver(service: &Service, step: Step) -> Answer {
    service.call(TX, step)
}

fn spawn(service: &Arc<Service>, steps: &'static [Step]) -> thread::JoinHandle<Vec<Answer>> {
    let service = Arc::clone(service);
    thread::spawn(move || {
        let mut answers = Vec::new();
        for &step in steps {
            let answer = deliver(&service, step);
            let refused = step == Step::Prepare && answer != Answer::Yes;
            answers.push(answer);
            // The coordinator sends commit only after a yes.
            if refused {
                break;
            }
        }
        answers
    })
}

/// Two prepares and a rollback of one branch, each on its own thread (the
/// prepares refused when `refuse`): the prepares' answers and what the
/// participant did, once the worker stopped. The rollback answers `Done`.
fn two_prepares_and_a_rollback(refuse: bool, broken: Option<Broken>) -> ([Answer; 2], Arc<Mutex<Counts>>) {
    let running = service(refuse, broken);
    let service = running.service.clone();
    let a = spawn(&service, &[Step::Prepare]);
    let b = spawn(&service, &[Step::Prepare]);
    let rollback = spawn(&service, &[Step::Rollback]);
    let answers = [a.join().unwrap()[0].clone(), b.join().unwrap()[0].clone()];
    assert_eq!(rollback.join().unwrap(), [Answer::Done]);
    (answers, running.stop())
}

/// Three deliveries of prepare and two of commit: one prepare call, one
/// commit call, every copy answered as the first.
#[test]
fn duplicate_prepares_and_commits_have_one_effect() {
    loom::model(|| {
        let running = service(false, None);
        let service = running.service.clone();
        let a = spawn(&service, &[Step::Prepare, Step::Commit]);
        let b = spawn(&service, &[Step::Prepare, Step::Commit]);
        let c = spawn(&service, &[Step::Prepare]);
        assert_eq!(a.join().unwrap(), [Answer::Yes, Answer::Done]);
        assert_eq!(b.join().unwrap(), [Answer::Yes, Answer::Done]);
        assert_eq!(c.join().unwrap(), [Answer::Yes]);
        let counts = running.stop();
        let p = counts.lock().unwrap();
        assert_eq!((p.prepares, p.commits, p.rollbacks, p.holding), (1, 1, 0, false));
    });
}

/// A refused prepare delivered twice: one participant call, both answers
/// negative, a duplicate rollback is a no-op.
#[test]
fn a_refused_prepare_stays_refused() {
    loom::model(|| {
        let (answers, counts) = two_prepares_and_a_rollback(true, None);
        let p = counts.lock().unwrap();
        // Either the rollback came first (no call at all) or one prepare
        // was called and refused.
        assert!(p.prepares <= 1, "{p:?}");
        assert!(answers.iter().all(|a| matches!(a, Answer::No | Answer::LateRefused)), "{answers:?}");
        assert_eq!(answers.iter().filter(|&a| *a == Answer::No).count(), p.prepares as usize);
        assert_eq!((p.commits, p.rollbacks, p.holding), (0, 0, false));
    });
}

/// Prepare (twice) races the coordinator's rollback. Whatever wins, nothing
/// is left prepared, and a rollback that wins makes every prepare refused
/// without a participant call.
fn rollback_racing_prepare(broken: Option<Broken>) {
    loom::model(move || {
        let (answers, counts) = two_prepares_and_a_rollback(false, broken);
        let p = counts.lock().unwrap();
        assert!(!p.holding, "a prepare took effect after its rollback: {p:?} {answers:?}");
        assert_eq!(p.commits, 0);
        assert_eq!(p.prepares, p.rollbacks, "every prepare undone exactly once: {p:?}");
        if p.prepares == 0 {
            assert_eq!(answers, [Answer::LateRefused, Answer::LateRefused]);
        }
    });
}

#[test]
fn rollback_racing_prepare_leaves_nothing_prepared() {
    rollback_racing_prepare(None);
}

/// The check bites: without the empty-rollback record, loom finds the
/// schedule rollback → prepare that leaves a change prepared forever.
#[test]
#[should_panic(expected = "prepare took effect after its rollback")]
fn broken_barrier_forgetting_the_empty_rollback_is_caught() {
    rollback_racing_prepare(Some(Broken::ForgetsEmptyRollback));
}

/// A commit and a rollback for the same transaction (which the protocol
/// never sends) race a prepare: at most one of them takes effect, and a
/// commit never follows a rollback (or the reverse).
#[test]
fn commit_never_follows_rollback() {
    loom::model(|| {
        let running = service(false, None);
        let service = running.service.clone();
        let a = spawn(&service, &[Step::Prepare, Step::Commit]);
        let b = spawn(&service, &[Step::Rollback, Step::Commit]);
        let first = a.join().unwrap();
        let second = b.join().unwrap();
        let counts = running.stop();
        let p = counts.lock().unwrap();
        assert!(p.commits + p.rollbacks <= 1, "{p:?}");
        assert!(!p.holding || (p.commits == 0 && p.rollbacks == 0), "{p:?}");
        if p.rollbacks == 1 || p.prepares == 0 {
            // The rollback took effect (or came first): both commits refused.
            assert_eq!(p.commits, 0);
            assert!(first.len() < 2 || first[1] == Answer::Violation, "{first:?}");
            assert_eq!(second[1], Answer::Violation);
        }
        if p.commits == 1 {
            assert_eq!(second[0], Answer::Violation, "rollback after commit must be refused");
        }
    });
}
