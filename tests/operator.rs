//! Operator tooling on a running coordinator: failing calls are tracked with
//! attempts, next retry and last error; parked after their policy's limit
//! (or at once for a non-retryable code); retry-now and resolve act on them,
//! are recorded in the log, and are refused when they would break atomicity.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::flaky::{Flaky, Switches, eventually};
use dtc::{
    AbortReason, Coordinator, Durability, Error, Jitter, Ledger, Outcome, Participant, RetryPolicy, Transfer, TxId,
    ops::{DataDir, Resolution, TxState, TxStatus},
};

const WAIT: Duration = Duration::from_secs(20);

fn fast(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), max_attempts)
}

/// `bank` (a ledger with account `a` holding 1000) and `shipping` (flaky),
/// durable in `dir`.
fn open(dir: &Path, shipping: impl Participant, policy: RetryPolicy) -> Coordinator {
    let bank = Ledger::new();
    bank.create_account("a", 1_000).unwrap();
    Coordinator::builder()
        .durability(Durability::Sync)
        .dir(dir)
        .segment_size_bytes(1 << 20)
        .call_timeout(Duration::from_secs(2))
        .service("bank", bank)
        .service("shipping", shipping)
        .retry_for("shipping", policy)
        .open()
        .unwrap()
}

fn ship(dtc: &Coordinator, tx: TxId) -> Outcome {
    dtc.execute_as(tx, &[Transfer::new("bank", "a", "shipping", "parcel", 5)]).unwrap()
}

fn stuck(dtc: &Coordinator) -> bool {
    dtc.unfinished().iter().any(|u| u.state == TxState::Stuck)
}

/// A coordinator on `dir` whose `shipping` fails every commit with `code`,
/// and one transaction whose commit is parked.
fn parked_commit(dir: &Path, code: &str, policy: RetryPolicy) -> (Coordinator, Arc<Switches>, TxId) {
    let switches = Switches::failing(code, u32::MAX, 0);
    let dtc = open(dir, Flaky(switches.clone()), policy);
    let tx = dtc.new_tx_id();
    assert_eq!(ship(&dtc, tx), Outcome::CommitPending);
    eventually("the commit to park", WAIT, || stuck(&dtc));
    (dtc, switches, tx)
}

#[test]
fn a_commit_is_parked_after_max_attempts_and_retry_now_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (dtc, switches, tx) = parked_commit(tmp.path(), "unavailable", fast(3));

    let list = dtc.unfinished();
    assert_eq!(list.len(), 1, "{list:?}");
    let (u, p) = (&list[0], &list[0].participants[0]);
    assert_eq!((u.tx, u.state), (tx, TxState::Stuck));
    assert_eq!((p.name.as_str(), p.phase.as_str(), p.attempts), ("shipping", "parked-commit", 3));
    assert_eq!(p.next_retry_in_ms, None);
    assert_eq!(p.last_error.as_ref().unwrap().code, "unavailable");
    assert_eq!(switches.commit_calls.load(Ordering::SeqCst), 3, "exactly max_attempts calls");
    assert_eq!((dtc.metrics().parked, dtc.parked_count()), (1, 1));
    let exposition = dtc::ops::render_prometheus(&dtc.metrics(), None);
    assert!(exposition.contains("dtc_parked_calls 1\n"), "{exposition}");
    assert!(exposition.contains("dtc_unfinished_transactions{state=\"stuck\"} 1\n"), "{exposition}");

    // The same view through the data directory (the control channel).
    let ageless = |mut list: Vec<dtc::ops::UnfinishedTx>| {
        list.iter_mut().for_each(|u| u.age_seconds = 0.0);
        list
    };
    let live = DataDir::new(tmp.path()).unfinished().unwrap();
    assert_eq!(ageless(live), ageless(list));

    assert!(matches!(dtc.retry_now(tx, " "), Err(Error::InvalidReason(_))));
    switches.heal();
    let report = dtc.retry_now(tx, "shipping is back").unwrap();
    assert_eq!((report.transactions.as_slice(), report.redelivered), (&[tx][..], 1));
    eventually("the retried commit to finish", WAIT, || dtc.unfinished().is_empty());
    assert_eq!(switches.commits.load(Ordering::SeqCst), 1);
    assert_eq!(dtc.parked_count(), 0);
    assert!(matches!(dtc.retry_now(tx, "again"), Err(Error::NotStuck { tx: t }) if t == tx));
    dtc.shutdown().unwrap();
    drop(dtc);

    let data = DataDir::new(tmp.path());
    assert!(data.unfinished().unwrap().is_empty(), "the late acknowledgement logged Done");
    assert_eq!(data.status(&[tx]).unwrap()[0].1, TxStatus::Committed);
    let actions = data.operator_actions().unwrap();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!((actions[0].tx, actions[0].action.as_str()), (tx, "retry-now"));
    assert_eq!(actions[0].reason, "shipping is back");
}

#[test]
fn a_non_retryable_code_parks_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (dtc, switches, _) = parked_commit(tmp.path(), "account_closed", fast(100).non_retryable(["account_closed"]));
    let list = dtc.unfinished();
    assert_eq!(list[0].participants[0].attempts, 1);
    assert_eq!(switches.commit_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_waiting_retry_shows_its_next_retry_and_retry_now_cuts_the_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let switches = Switches::failing("timeout", 1, 0);
    let slow = RetryPolicy::new(Duration::from_secs(120), Duration::from_secs(120), 5).with_jitter(Jitter::None);
    let dtc = open(tmp.path(), Flaky(switches.clone()), slow);
    let tx = dtc.new_tx_id();
    assert_eq!(ship(&dtc, tx), Outcome::CommitPending);
    let list = dtc.unfinished();
    assert_eq!(list.len(), 1, "{list:?}");
    let p = &list[0].participants[0];
    assert_eq!((list[0].state, p.phase.as_str(), p.attempts), (TxState::Committing, "committing", 1));
    assert!(p.next_retry_in_ms.unwrap() > 60_000, "{p:?}");
    let report = dtc.retry_now(tx, "do not wait two minutes").unwrap();
    assert_eq!((report.redelivered, report.woken), (0, 1));
    // Without the retry-now this would take two minutes.
    eventually("the woken retry to finish", WAIT, || dtc.unfinished().is_empty());
    assert_eq!(switches.commits.load(Ordering::SeqCst), 1);
}

#[test]
fn resolve_commit_settles_a_parked_commit_without_calling_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (dtc, switches, tx) = parked_commit(tmp.path(), "unavailable", fast(3));

    let refused = dtc.resolve(tx, Resolution::Abort, "undo it").unwrap_err();
    assert!(matches!(refused, Error::UnsafeResolution { .. }), "{refused}");
    assert_eq!(refused.code(), "unsafe_resolution");
    assert!(matches!(dtc.resolve(tx, Resolution::Commit, ""), Err(Error::InvalidReason(_))));
    let long = "x".repeat(dtc::ops::MAX_REASON_BYTES + 1);
    assert!(matches!(dtc.resolve(tx, Resolution::Commit, &long), Err(Error::InvalidReason(_))));

    let report = dtc.resolve(tx, Resolution::Commit, "parcel booked by hand, ticket 42").unwrap();
    assert_eq!(report.settled, ["shipping"]);
    eventually("the settled commit to leave the list", WAIT, || dtc.unfinished().is_empty());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(switches.commit_calls.load(Ordering::SeqCst), 3, "not called again");
    let again = dtc.resolve(tx, Resolution::Commit, "twice").unwrap();
    assert!(again.settled.is_empty(), "{again:?}");
    dtc.shutdown().unwrap();
    drop(dtc);

    // The decision and the operator's reason survive a restart.
    let dtc = open(tmp.path(), Flaky(Switches::failing("x", 0, 0)), fast(3));
    assert!(dtc.unfinished().is_empty());
    assert_eq!(dtc.outcome_of(tx).expect("outcome_of"), Some(Outcome::Committed));
    dtc.checkpoint().unwrap();
    dtc.shutdown().unwrap();
    drop(dtc);
    let actions = DataDir::new(tmp.path()).operator_actions().unwrap();
    assert!(
        actions.iter().any(|a| a.tx == tx && a.action == "resolve-commit" && a.reason.contains("ticket 42")),
        "kept across checkpoints: {actions:?}"
    );
}

#[test]
fn a_stuck_rollback_shows_its_reason_and_resolves_only_by_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let shipping = Switches::failing("unavailable", 0, u32::MAX);
    let customs = Switches::failing("x", 0, 0);
    customs.refuse_prepare.store(true, Ordering::SeqCst);
    *customs.refuse_after.lock() = Some(shipping.clone());
    let bank = Ledger::new();
    bank.create_account("a", 1_000).unwrap();
    let dtc = Coordinator::builder()
        .durability(Durability::Sync)
        .dir(tmp.path())
        .segment_size_bytes(1 << 20)
        .service("bank", bank)
        .service("shipping", Flaky(shipping.clone()))
        .service("customs", Flaky(customs))
        .retry(fast(3))
        .open()
        .unwrap();
    let tx = dtc.new_tx_id();
    let legs = [Transfer::new("bank", "a", "shipping", "parcel", 5), Transfer::new("bank", "a", "customs", "fee", 1)];
    let outcome = dtc.execute_as(tx, &legs).unwrap();
    assert!(matches!(outcome, Outcome::Aborted(AbortReason::Refused { ref service, .. }) if service == "customs"));
    eventually("the rollback to park", WAIT, || stuck(&dtc));
    let list = dtc.unfinished();
    let u = list.iter().find(|u| u.tx == tx).unwrap();
    assert_eq!(u.participants[0].phase, "parked-rollback");
    assert!(u.reason.as_deref().unwrap().contains("customs"), "{u:?}");

    let refused = dtc.resolve(tx, Resolution::Commit, "commit it anyway").unwrap_err();
    assert!(matches!(refused, Error::UnsafeResolution { .. }), "{refused}");
    let report = dtc.resolve(tx, Resolution::Abort, "reservation released by hand").unwrap();
    assert_eq!(report.settled, ["shipping"]);
    eventually("the settled rollback to leave the list", WAIT, || dtc.unfinished().is_empty());
    assert_eq!(shipping.rollback_calls.load(Ordering::SeqCst), 3);
    assert_eq!(dtc.audit().unwrap().total, 1_000, "nothing moved");
}

#[test]
fn undecided_ids_may_only_be_aborted_and_the_abort_answers_resubmissions() {
    let tmp = tempfile::tempdir().unwrap();
    let dtc = open(tmp.path(), Flaky(Switches::failing("x", 0, 0)), fast(3));

    // Committed: never aborted; resolving the commit is a no-op.
    let done = dtc.new_tx_id();
    assert_eq!(ship(&dtc, done), Outcome::Committed);
    assert!(matches!(dtc.resolve(done, Resolution::Abort, "oops"), Err(Error::UnsafeResolution { .. })));
    assert!(dtc.resolve(done, Resolution::Commit, "check").unwrap().settled.is_empty());

    // No decision: commit is refused (the votes are unknown), abort is recorded
    // (an id issued a minute ago: past the transaction and call timeouts,
    // inside the idempotency horizon).
    let minute_ago =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() - Duration::from_secs(60);
    let lost = TxId::from_u128((minute_ago.as_nanos() << 64) | 7);
    // An id older than the horizon may have an outcome nobody remembers.
    let ancient = TxId::from_u128(7);
    let refused = dtc.resolve(ancient, Resolution::Abort, "fence").unwrap_err();
    assert!(matches!(refused, Error::UnsafeResolution { .. }), "{refused}");
    let refused = dtc.resolve(lost, Resolution::Commit, "force").unwrap_err();
    assert!(matches!(refused, Error::UnsafeResolution { .. }), "{refused}");
    dtc.resolve(lost, Resolution::Abort, "client gave up").unwrap();
    let expected = Outcome::Aborted(AbortReason::Operator { reason: "client gave up".into() });
    assert_eq!(ship(&dtc, lost), expected, "a resubmission gets the operator's abort");
    assert!(dtc.resolve(lost, Resolution::Abort, "again").unwrap().note.contains("already"));

    // A fresh id may still be running somewhere: refused.
    let fresh = dtc.new_tx_id();
    assert!(matches!(dtc.resolve(fresh, Resolution::Abort, "too soon"), Err(Error::UnsafeResolution { .. })));
    dtc.shutdown().unwrap();
    drop(dtc);

    let data = DataDir::new(tmp.path());
    let status = data.status(&[lost, done]).unwrap();
    assert_eq!(status[0].1, TxStatus::Aborted(AbortReason::Operator { reason: "client gave up".into() }));
    assert_eq!(status[1].1, TxStatus::Committed);
    let dtc = open(tmp.path(), Flaky(Switches::failing("x", 0, 0)), fast(3));
    assert_eq!(ship(&dtc, lost), expected, "after a restart too");
}

#[test]
fn a_late_acknowledgement_logs_done() {
    let tmp = tempfile::tempdir().unwrap();
    let switches = Switches::failing("slow", 1, 0);
    let dtc = open(
        tmp.path(),
        Flaky(switches.clone()),
        RetryPolicy::new(Duration::from_secs(3), Duration::from_secs(3), 3).with_jitter(Jitter::None),
    );
    let tx = dtc.new_tx_id();
    assert_eq!(ship(&dtc, tx), Outcome::CommitPending);
    assert_eq!(dtc.unresolved_count(), 1);
    eventually("the late commit", WAIT, || dtc.unfinished().is_empty());
    assert_eq!(dtc.unresolved_count(), 0);
    dtc.shutdown().unwrap();
    drop(dtc);
    assert!(DataDir::new(tmp.path()).unfinished().unwrap().is_empty());
}

#[test]
fn parked_calls_are_bounded_and_never_dropped() {
    let switches = Switches::failing("unavailable", u32::MAX, 0);
    let bank = Ledger::new();
    bank.create_account("a", 1_000).unwrap();
    let dtc = Coordinator::builder()
        .service("bank", bank)
        .service("shipping", Flaky(switches.clone()))
        .call_timeout(Duration::from_millis(100))
        .retry(fast(2))
        .max_parked(1)
        .open()
        .unwrap();
    let first = dtc.new_tx_id();
    assert_eq!(ship(&dtc, first), Outcome::CommitPending);
    eventually("the first commit to park", WAIT, || dtc.parked_count() == 1);
    // The table is full: the second keeps retrying instead of parking.
    let second = dtc.new_tx_id();
    assert_eq!(ship(&dtc, second), Outcome::CommitPending);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(dtc.parked_count(), 1);
    switches.heal();
    eventually("the unparked second commit to finish by itself", WAIT, || switches.commits.load(Ordering::SeqCst) == 1);
    assert_eq!(dtc.parked_count(), 1, "the parked one waits for an operator");
    let report = dtc.retry_all_parked("all clear").unwrap();
    assert_eq!(report.transactions, [first]);
    eventually("every commit", WAIT, || switches.commits.load(Ordering::SeqCst) == 2);
    eventually("an empty list", WAIT, || dtc.unfinished().is_empty());
}

#[test]
fn retry_policies_are_validated() {
    let build = |policy_for: &str, policy: RetryPolicy| {
        Coordinator::builder().service("bank", Ledger::new()).retry_for(policy_for, policy).open().map(|_| ())
    };
    assert!(matches!(build("nope", fast(3)), Err(Error::Config(_))));
    let inverted = RetryPolicy::new(Duration::from_secs(2), Duration::from_secs(1), 3);
    assert!(matches!(build("bank", inverted), Err(Error::Config(_))));
    assert!(build("bank", fast(3)).is_ok());
}

#[test]
fn shutdown_stops_a_worker_waiting_out_a_long_backoff() {
    let tmp = tempfile::tempdir().unwrap();
    let switches = Switches::failing("timeout", u32::MAX, 0);
    let slow = RetryPolicy::new(Duration::from_secs(600), Duration::from_secs(600), 5);
    let dtc = open(tmp.path(), Flaky(switches.clone()), slow);
    let tx = dtc.new_tx_id();
    assert_eq!(ship(&dtc, tx), Outcome::CommitPending);
    let started = std::time::Instant::now();
    dtc.shutdown().unwrap();
    // Not a timing claim: without the wake-up this would wait ten minutes.
    assert!(started.elapsed() < Duration::from_secs(120), "{:?}", started.elapsed());
    assert_eq!(switches.commit_calls.load(Ordering::SeqCst), 1);
    drop(dtc);
    let listed = DataDir::new(tmp.path()).unfinished().unwrap();
    assert_eq!((listed.len(), listed[0].tx), (1, tx), "still owed an acknowledgement: {listed:?}");
}
