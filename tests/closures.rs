//! Closure participants: prepare outputs reach commit, every failure kind
//! rolls every participant back, commits and rollbacks are retried.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dtc::{
    Jitter, RetryPolicy,
    closure::{ClosureOutcome, ClosureParticipant, ClosureTx, PrepareResult, RollbackCause, closure_stats},
    saga::{IdempotencyKey, ManualClock},
};

/// Every call made, as `participant:phase:key`.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    fn note(&self, who: &str, phase: &str, key: &IdempotencyKey) {
        self.0.lock().unwrap().push(format!("{who}:{phase}:{key}"));
    }
    fn calls(&self, phase: &str) -> Vec<String> {
        let needle = format!(":{phase}:");
        self.0.lock().unwrap().iter().filter(|c| c.contains(&needle)).cloned().collect()
    }
    fn who(&self, phase: &str) -> Vec<String> {
        let mut who: Vec<String> =
            self.calls(phase).iter().map(|c| c.split(':').next().unwrap_or("").to_string()).collect();
        who.sort();
        who
    }
}

/// A participant that prepares `Ok(input * 10)` and notes every call.
fn counter(journal: &Journal, name: &'static str, input: u64) -> ClosureParticipant {
    let (p, c, r) = (journal.clone(), journal.clone(), journal.clone());
    ClosureParticipant::new(
        name,
        input,
        move |key, n: &u64| {
            p.note(name, "prepare", key);
            Ok::<u64, String>(n * 10)
        },
        move |key, out: &u64| {
            c.note(name, &format!("commit={out}"), key);
            Ok(())
        },
        move |key, out: Option<&u64>| {
            r.note(name, &format!("rollback={out:?}"), key);
            Ok(())
        },
    )
}

fn fast_retry(tx: ClosureTx) -> ClosureTx {
    tx.clock(Arc::new(ManualClock::default()))
        .retry(RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(8), 4).with_jitter(Jitter::Full))
}

#[test]
fn prepare_outputs_reach_their_commits() {
    let journal = Journal::default();
    let mut tx = fast_retry(ClosureTx::new());
    let id = tx.id();
    tx.add(counter(&journal, "inventory", 2)).unwrap();
    tx.add(counter(&journal, "payment", 7)).unwrap();
    // A participant with a structured output.
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    tx.add(ClosureParticipant::new(
        "shipping",
        "Main St 1".to_string(),
        |_key, address: &String| Ok::<_, String>((address.clone(), 42u32)),
        move |_key, label: &(String, u32)| {
            *s.lock().unwrap() = Some(label.clone());
            Ok(())
        },
        |_key, _label| Ok(()),
    ))
    .unwrap();
    assert_eq!(tx.commit().unwrap(), ClosureOutcome::Committed);
    assert_eq!(journal.calls("commit=20"), vec![format!("inventory:commit=20:{id}/inventory/commit")]);
    assert_eq!(journal.calls("commit=70"), vec![format!("payment:commit=70:{id}/payment/commit")]);
    assert_eq!(*seen.lock().unwrap(), Some(("Main St 1".to_string(), 42)));
    assert!(journal.calls("rollback").is_empty() && journal.calls("rollback=None").is_empty());
}

#[test]
fn an_explicit_rollback_rolls_every_participant_back_with_its_output() {
    let journal = Journal::default();
    let mut tx = fast_retry(ClosureTx::new());
    tx.add(counter(&journal, "a", 1)).unwrap();
    tx.add(counter(&journal, "b", 2)).unwrap();
    let PrepareResult::Prepared(prepared) = tx.prepare().unwrap() else { panic!("prepare failed") };
    assert_eq!(prepared.output::<u64>("b"), Some(&20));
    assert_eq!(prepared.output::<String>("b"), None, "wrong type");
    prepared.rollback().unwrap();
    assert_eq!(journal.who("rollback=Some(10)"), ["a"]);
    assert_eq!(journal.who("rollback=Some(20)"), ["b"]);
    assert!(journal.0.lock().unwrap().iter().all(|c| !c.contains("commit")));

    // Dropping a prepared transaction rolls it back too.
    let journal = Journal::default();
    let mut tx = fast_retry(ClosureTx::new());
    tx.add(counter(&journal, "c", 3)).unwrap();
    let PrepareResult::Prepared(prepared) = tx.prepare().unwrap() else { panic!("prepare failed") };
    drop(prepared);
    assert_eq!(journal.who("rollback=Some(30)"), ["c"]);

    // Rolling back before prepare calls nothing.
    let journal = Journal::default();
    let mut tx = ClosureTx::new();
    tx.add(counter(&journal, "d", 4)).unwrap();
    tx.rollback();
    assert!(journal.0.lock().unwrap().is_empty());
}

fn refusing(journal: &Journal, name: &'static str) -> ClosureParticipant {
    let r = journal.clone();
    ClosureParticipant::new(
        name,
        (),
        |_key, _: &()| Err::<u64, _>("out of stock"),
        |_key, _: &u64| Ok::<(), &str>(()),
        move |key, out: Option<&u64>| {
            r.note(name, &format!("rollback={out:?}"), key);
            Ok(())
        },
    )
}

#[test]
fn a_failed_prepare_rolls_everyone_back() {
    let journal = Journal::default();
    let mut tx = fast_retry(ClosureTx::new());
    tx.add(counter(&journal, "a", 1)).unwrap();
    tx.add(refusing(&journal, "stock")).unwrap();
    tx.add(counter(&journal, "c", 3)).unwrap();
    let outcome = tx.commit().unwrap();
    let ClosureOutcome::RolledBack(cause) = outcome else { panic!("{outcome:?}") };
    assert_eq!(cause, RollbackCause::PrepareFailed { participant: "stock".into(), message: "out of stock".into() });
    assert_eq!(cause.code(), "prepare_failed");
    assert_eq!(journal.who("rollback=Some(10)"), ["a"]);
    assert_eq!(journal.who("rollback=None"), ["stock"]);
    assert_eq!(journal.who("rollback=Some(30)"), ["c"]);
    assert!(journal.0.lock().unwrap().iter().all(|c| !c.contains("commit")));
}

#[test]
fn a_panicking_prepare_rolls_everyone_back() {
    let journal = Journal::default();
    let mut tx = fast_retry(ClosureTx::new());
    tx.add(counter(&journal, "a", 1)).unwrap();
    tx.add(ClosureParticipant::new(
        "boom",
        (),
        |_key, _: &()| -> Result<u64, String> { panic!("bug in prepare") },
        |_key, _: &u64| Ok(()),
        |_key, _| Ok(()),
    ))
    .unwrap();
    let outcome = tx.commit().unwrap();
    let ClosureOutcome::RolledBack(RollbackCause::PreparePanicked { participant, message }) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((participant.as_str(), message.as_str()), ("boom", "bug in prepare"));
    assert_eq!(journal.who("rollback=Some(10)"), ["a"]);
}

#[test]
fn a_panicking_commit_is_retried_with_the_same_key() {
    let journal = Journal::default();
    let attempts = Arc::new(AtomicU32::new(0));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let (a, k) = (attempts.clone(), keys.clone());
    let mut tx = fast_retry(ClosureTx::new());
    tx.add(counter(&journal, "a", 1)).unwrap();
    tx.add(ClosureParticipant::new(
        "flaky",
        (),
        |_key, _: &()| Ok::<_, String>(5u8),
        move |key, out: &u8| {
            k.lock().unwrap().push(key.to_string());
            if a.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("commit crashed");
            }
            assert_eq!(*out, 5);
            Ok(())
        },
        |_key, _| Ok(()),
    ))
    .unwrap();
    assert_eq!(tx.commit().unwrap(), ClosureOutcome::Committed);
    let keys = keys.lock().unwrap();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| *k == keys[0] && k.ends_with("/flaky/commit")));
}

#[test]
fn a_prepare_timeout_rolls_everyone_back_and_the_late_prepare_too() {
    let before = closure_stats();
    let journal = Journal::default();
    let r = journal.clone();
    let mut tx = fast_retry(ClosureTx::new()).prepare_timeout(Duration::from_secs(5));
    tx.add(counter(&journal, "a", 1)).unwrap();
    tx.add(
        ClosureParticipant::new(
            "slow",
            (),
            |_key, _: &()| {
                std::thread::sleep(Duration::from_millis(300));
                Ok::<_, String>(9u64)
            },
            |_key, _: &u64| Ok(()),
            move |key, out: Option<&u64>| {
                r.note("slow", &format!("rollback={out:?}"), key);
                Ok(())
            },
        )
        .timeout(Duration::from_millis(40)),
    )
    .unwrap();
    let started = Instant::now();
    let outcome = tx.commit().unwrap();
    assert!(started.elapsed() < Duration::from_millis(250), "did not wait for the slow prepare");
    let ClosureOutcome::RolledBack(RollbackCause::PrepareTimedOut { participant, timeout }) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((participant.as_str(), timeout), ("slow", Duration::from_millis(40)));
    assert_eq!(journal.who("rollback=Some(10)"), ["a"]);
    assert_eq!(journal.who("rollback=None"), ["slow"]);
    // When the abandoned prepare answers, its output is rolled back as well.
    let deadline = Instant::now() + Duration::from_secs(5);
    while journal.calls("rollback=Some(9)").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(journal.who("rollback=Some(9)"), ["slow"]);
    let after = closure_stats();
    assert!(after.prepares_timed_out > before.prepares_timed_out);
    assert!(after.late_rollbacks > before.late_rollbacks);
}

#[test]
fn prepares_run_concurrently() {
    let arrived = Arc::new((Mutex::new(0usize), Condvar::new()));
    let mut tx = fast_retry(ClosureTx::new());
    for name in ["x", "y", "z"] {
        let meet = arrived.clone();
        tx.add(ClosureParticipant::new(
            name,
            (),
            move |_key, _: &()| {
                let (lock, cv) = &*meet;
                let mut n = lock.lock().unwrap();
                *n += 1;
                cv.notify_all();
                let (n, _) = cv.wait_timeout_while(n, Duration::from_secs(5), |n| *n < 3).unwrap();
                if *n >= 3 { Ok(()) } else { Err("prepares ran one after another") }
            },
            |_key, _: &()| Ok(()),
            |_key, _| Ok(()),
        ))
        .unwrap();
    }
    assert_eq!(tx.commit().unwrap(), ClosureOutcome::Committed);
}

#[test]
fn commits_and_rollbacks_that_never_succeed_are_reported() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut tx = fast_retry(ClosureTx::new());
    let id = tx.id();
    tx.add(ClosureParticipant::new(
        "ledger",
        (),
        |_key, _: &()| Ok::<_, String>(()),
        move |_key, _: &()| {
            c.fetch_add(1, Ordering::SeqCst);
            Err("disk full".to_string())
        },
        |_key, _| Ok(()),
    ))
    .unwrap();
    let error = tx.commit().unwrap_err();
    assert_eq!(error.code(), "commit_incomplete");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let text = error.to_string();
    assert!(text.contains(&id.to_string()) && text.contains("ledger") && text.contains("disk full"), "{text}");

    let journal = Journal::default();
    let mut tx = fast_retry(ClosureTx::new());
    tx.add(refusing(&journal, "stock")).unwrap();
    tx.add(ClosureParticipant::new(
        "stuck",
        (),
        |_key, _: &()| Ok::<_, String>(()),
        |_key, _: &()| Ok(()),
        |_key, _| Err("still locked".to_string()),
    ))
    .unwrap();
    let error = tx.commit().unwrap_err();
    assert_eq!(error.code(), "rollback_incomplete");
    assert!(error.to_string().contains("stuck"));
    assert_eq!(journal.who("rollback=None"), ["stock"], "the others are still rolled back");
}

#[test]
fn participants_are_validated() {
    let journal = Journal::default();
    let mut tx = ClosureTx::new();
    tx.add(counter(&journal, "a", 1)).unwrap();
    assert_eq!(tx.add(counter(&journal, "a", 2)).unwrap_err().code(), "duplicate_participant");
    assert_eq!(tx.add(counter(&journal, "a/b", 2)).unwrap_err().code(), "invalid_name");
    assert_eq!(tx.add(counter(&journal, "", 2)).unwrap_err().code(), "invalid_name");
}
