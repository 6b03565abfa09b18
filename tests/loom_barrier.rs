//! Loom model of the per-participant phase barrier
//! (`src/coordinator/barrier.rs`) under racing duplicate deliveries.
//!
//! The engine's `Barrier` runs unchanged behind the engine's own `Mutex`
//! (`dtc::__loom`), with a counting fake participant; `prepare`, `commit`
//! and `rollback` below transcribe `Service::prepare/commit/rollback`
//! (`src/coordinator/worker.rs`) minus logging, metrics and panics.
//!
//! Run: RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!      cargo test --release --test loom_barrier
#![cfg(loom)]

use dtc::__loom::{Barrier, Decision, Mutex, Phase};
use loom::sync::Arc;
use loom::thread;

const TX: u128 = 7;

/// Counts what the participant actually did.
#[derive(Debug, Default)]
struct Counting {
    /// A prepared change is held (prepare ok, not yet committed or undone).
    holding: bool,
    prepares: u32,
    commits: u32,
    rollbacks: u32,
    /// Prepares refuse (vote no) instead of preparing.
    refuse: bool,
}

/// Which barrier the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The engine as written.
    Engine,
    /// Broken on purpose: an empty rollback (before any prepare) is not
    /// recorded, so a late prepare is let through.
    ForgetsEmptyRollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Yes,
    No,
    LateRefused,
    Panicked,
    Done,
    Violation,
}

struct Core {
    barrier: Barrier,
    participant: Counting,
}

struct Service {
    core: Mutex<Core>,
    variant: Variant,
}

impl Service {
    fn new(variant: Variant, refuse: bool) -> Arc<Self> {
        let participant = Counting { refuse, ..Counting::default() };
        Arc::new(Self { core: Mutex::new(Core { barrier: Barrier::new(8), participant }), variant })
    }

    fn deliver(&self, phase: Phase) -> Answer {
        // One request at a time under the core lock, as the worker and the
        // inline path both do.
        let mut core = self.core.lock();
        match phase {
            Phase::Prepare => self.prepare(&mut core),
            Phase::Commit => self.commit(&mut core),
            Phase::Rollback => self.rollback(&mut core),
        }
    }

    /// Mirrors `Service::prepare` (the `plan.is_cancelled()` shortcut is the
    /// same `rolled_back` record as an empty rollback, modelled below).
    fn prepare(&self, core: &mut Core) -> Answer {
        match core.barrier.decide(TX, Phase::Prepare) {
            Decision::AlreadyDone => return Answer::Yes,
            Decision::AlreadyFailed => return Answer::Panicked,
            Decision::RefuseLate => return Answer::LateRefused,
            Decision::Violation => return Answer::Violation,
            Decision::Call => {}
        }
        let p = &mut core.participant;
        p.prepares += 1;
        if p.refuse {
            core.barrier.rolled_back(TX);
            return Answer::No;
        }
        assert!(!p.holding, "prepared twice");
        p.holding = true;
        core.barrier.prepared_ok(TX, Some(p.prepares));
        Answer::Yes
    }

    /// Mirrors `Service::commit` (one successful attempt).
    fn commit(&self, core: &mut Core) -> Answer {
        match core.barrier.decide(TX, Phase::Commit) {
            Decision::AlreadyDone => return Answer::Done,
            Decision::Call => {}
            _ => return Answer::Violation,
        }
        core.barrier.prepared(TX).expect("decide() checked the prepared value");
        let p = &mut core.participant;
        assert!(p.holding, "commit without a prepared change");
        assert_eq!(p.rollbacks, 0, "commit after rollback");
        p.holding = false;
        p.commits += 1;
        core.barrier.committed(TX);
        Answer::Done
    }

    /// Mirrors `Service::rollback` (one successful attempt).
    fn rollback(&self, core: &mut Core) -> Answer {
        match core.barrier.decide(TX, Phase::Rollback) {
            Decision::AlreadyDone => return Answer::Done,
            Decision::Call => {}
            _ => return Answer::Violation,
        }
        if !core.barrier.holds(TX) {
            if self.variant == Variant::Engine {
                core.barrier.rolled_back(TX);
            }
            return Answer::Done;
        }
        let p = &mut core.participant;
        assert_eq!(p.commits, 0, "rollback after commit");
        p.holding = false;
        p.rollbacks += 1;
        core.barrier.rolled_back(TX);
        Answer::Done
    }
}

fn spawn(service: &Arc<Service>, phases: &'static [Phase]) -> thread::JoinHandle<Vec<Answer>> {
    let service = Arc::clone(service);
    thread::spawn(move || {
        let mut answers = Vec::new();
        for &phase in phases {
            let answer = service.deliver(phase);
            answers.push(answer);
            // The coordinator sends commit only after a yes.
            if phase == Phase::Prepare && answer != Answer::Yes {
                break;
            }
        }
        answers
    })
}

/// Three deliveries of prepare and two of commit: one prepare call, one
/// commit call, every copy answered as the first.
#[test]
fn duplicate_prepares_and_commits_have_one_effect() {
    loom::model(|| {
        let service = Service::new(Variant::Engine, false);
        let a = spawn(&service, &[Phase::Prepare, Phase::Commit]);
        let b = spawn(&service, &[Phase::Prepare, Phase::Commit]);
        let c = spawn(&service, &[Phase::Prepare]);
        assert_eq!(a.join().unwrap(), [Answer::Yes, Answer::Done]);
        assert_eq!(b.join().unwrap(), [Answer::Yes, Answer::Done]);
        assert_eq!(c.join().unwrap(), [Answer::Yes]);
        let core = service.core.lock();
        let p = &core.participant;
        assert_eq!((p.prepares, p.commits, p.rollbacks, p.holding), (1, 1, 0, false));
        assert_eq!(core.barrier.live(), 0);
    });
}

/// A refused prepare delivered twice: one participant call, both answers
/// negative, a duplicate rollback is a no-op.
#[test]
fn a_refused_prepare_stays_refused() {
    loom::model(|| {
        let service = Service::new(Variant::Engine, true);
        let a = spawn(&service, &[Phase::Prepare]);
        let b = spawn(&service, &[Phase::Prepare]);
        let c = spawn(&service, &[Phase::Rollback]);
        let answers = [a.join().unwrap()[0], b.join().unwrap()[0]];
        assert_eq!(c.join().unwrap(), [Answer::Done]);
        let core = service.core.lock();
        let p = &core.participant;
        // Either the rollback came first (no call at all) or one prepare
        // was called and refused.
        assert!(p.prepares <= 1, "{p:?}");
        assert!(answers.iter().all(|a| matches!(a, Answer::No | Answer::LateRefused)), "{answers:?}");
        assert_eq!(answers.iter().filter(|&&a| a == Answer::No).count(), p.prepares as usize);
        assert_eq!((p.commits, p.rollbacks, p.holding), (0, 0, false));
    });
}

/// Prepare (twice) races the coordinator's rollback. Whatever wins, nothing
/// is left prepared, and a rollback that wins makes every prepare refused
/// without a participant call.
fn rollback_racing_prepare(variant: Variant) {
    loom::model(move || {
        let service = Service::new(variant, false);
        let a = spawn(&service, &[Phase::Prepare]);
        let b = spawn(&service, &[Phase::Prepare]);
        let rollback = spawn(&service, &[Phase::Rollback]);
        let answers = [a.join().unwrap()[0], b.join().unwrap()[0]];
        assert_eq!(rollback.join().unwrap(), [Answer::Done]);
        let core = service.core.lock();
        let p = &core.participant;
        assert!(!p.holding, "a prepare took effect after its rollback: {p:?} {answers:?}");
        assert_eq!(core.barrier.live(), 0, "prepared after its rollback");
        assert_eq!(p.commits, 0);
        assert_eq!(p.prepares, p.rollbacks, "every prepare undone exactly once: {p:?}");
        if p.prepares == 0 {
            assert_eq!(answers, [Answer::LateRefused; 2]);
        }
    });
}

#[test]
fn rollback_racing_prepare_leaves_nothing_prepared() {
    rollback_racing_prepare(Variant::Engine);
}

/// The check bites: without the empty-rollback record, loom finds the
/// schedule rollback → prepare that leaves a change prepared forever.
#[test]
#[should_panic(expected = "prepare took effect after its rollback")]
fn broken_barrier_forgetting_the_empty_rollback_is_caught() {
    rollback_racing_prepare(Variant::ForgetsEmptyRollback);
}

/// A commit and a rollback for the same transaction (which the protocol
/// never sends) race a prepare: at most one of them takes effect, and a
/// commit never follows a rollback (or the reverse).
#[test]
fn commit_never_follows_rollback() {
    loom::model(|| {
        let service = Service::new(Variant::Engine, false);
        let a = spawn(&service, &[Phase::Prepare, Phase::Commit]);
        let b = spawn(&service, &[Phase::Rollback, Phase::Commit]);
        let first = a.join().unwrap();
        let second = b.join().unwrap();
        let core = service.core.lock();
        let p = &core.participant;
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
