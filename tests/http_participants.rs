//! `HttpParticipant` end to end: an in-process `Coordinator` (durable log in
//! a temporary directory) whose services are real `dtc participant`
//! processes on 127.0.0.1:0, and, where a hostile answer is needed, a
//! scripted in-test server (`Stub`: also a proxy in front of a real
//! participant, to lose, delay or replace its answers) or a raw socket that
//! does not speak HTTP. What each participant's durable store holds at the
//! end is checked through its `/branches` inquiry. Every process is killed
//! by its guard, every wait is bounded.

mod http_support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtc::http::Response;
use dtc::{
    AbortReason, Branch, Coordinator, Durability, Error, Outcome, RetryPolicy, Transaction, TxId,
    ops::TxState,
    remote::{Allowlist, Endpoints, HttpParticipant, RoutedRequest},
};
use http_support::{
    DeadPort, Proc, RawServer, Stub, agent, branches, forward, participant, participant_on, state_of, try_post,
    wait_until,
};
use serde_json::{Value, json};

/// Lanes (and kept-alive connections) of each HTTP service.
const LANES: usize = 4;

/// Long enough for any settling on a loaded machine; a pass takes far less.
const SETTLE: Duration = Duration::from_secs(15);

/// A participant at `base` whose calls give up after `timeout_ms`.
fn http(base: &str, timeout_ms: u64) -> HttpParticipant {
    let endpoints = Endpoints::from_base(base).expect("a valid base URL");
    HttpParticipant::new(endpoints, LANES).call_timeout(Duration::from_millis(timeout_ms))
}

/// A durable coordinator in `dir` with these concurrent services; votes
/// and acknowledgements are awaited `call_timeout`; failing commits and
/// rollbacks retry from 5 ms to 100 ms, 50 times, before they park.
fn open(dir: &Path, services: Vec<(&str, HttpParticipant)>, call_timeout: Duration) -> Coordinator {
    open_with(dir, services, call_timeout, RetryPolicy::new(Duration::from_millis(5), Duration::from_millis(100), 50))
}

/// `open` with another retry policy.
fn open_with(
    dir: &Path,
    services: Vec<(&str, HttpParticipant)>,
    call_timeout: Duration,
    retry: RetryPolicy,
) -> Coordinator {
    let mut builder =
        Coordinator::builder().durability(Durability::Sync).dir(dir).call_timeout(call_timeout).retry(retry);
    for (name, p) in services {
        builder = builder.concurrent_service(name, p, LANES);
    }
    builder.open().expect("open the coordinator")
}

/// One branch per service, each reserving one unit.
fn transaction<'a>(services: &[&'a str]) -> Transaction<'a> {
    services.iter().fold(Transaction::new(), |tx, service| {
        tx.branch(Branch::json(service, &json!({"amount": 1})).expect("a JSON payload"))
    })
}

/// Runs `tx` under a fresh id: the id (as participants see it) and the outcome.
fn run(dtc: &Coordinator, tx: &Transaction<'_>) -> (String, Outcome) {
    let id = dtc.new_tx_id();
    let outcome = dtc.run_as(id, tx).expect("the transaction runs");
    (id.to_string(), outcome)
}

/// The refusal an outcome carries: (service, code, message).
fn refusal(outcome: &Outcome) -> (&str, &str, &str) {
    match outcome {
        Outcome::Aborted(AbortReason::Refused { service, code, message }) => (service, code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Waits until no participant in `bases` holds anything prepared, then
/// returns, for each, the (branch, state) it recorded of `tx`.
fn settled(client: &ureq::Agent, bases: &[&str], tx: &str) -> Vec<Vec<(u16, String)>> {
    for base in bases {
        wait_until(SETTLE, &format!("{base} holds nothing prepared"), || branches(client, base, "prepared").is_empty());
    }
    bases
        .iter()
        .map(|base| {
            branches(client, base, "all")
                .into_iter()
                .filter(|b| b["transaction"] == tx)
                .map(|b| (b["branch"].as_u64().unwrap() as u16, b["state"].as_str().unwrap().to_string()))
                .collect()
        })
        .collect()
}

/// A participant's states of one transaction: prepared and rolled back, or
/// never asked (another's no came before its prepare was sent).
fn rolled_back_or_not_asked(states: &[(u16, String)]) -> bool {
    states.len() <= 1 && states.iter().all(|(_, s)| s == "rolled_back")
}

/// Waits until the coordinator has nothing unfinished.
fn finished(dtc: &Coordinator) {
    wait_until(SETTLE, "the coordinator has nothing unfinished", || dtc.unfinished().is_empty());
}

#[test]
fn all_yes_commits_at_every_participant() {
    let root = tempfile::tempdir().unwrap();
    let ps: Vec<Proc> = ["a", "b", "c"].iter().map(|n| participant(root.path(), n, &[])).collect();
    let services =
        vec![("a", http(&ps[0].base(), 2000)), ("b", http(&ps[1].base(), 2000)), ("c", http(&ps[2].base(), 2000))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(5));
    let client = agent(Duration::from_secs(5));
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (id, outcome) = run(&dtc, &transaction(&["a", "b", "c"]));
        assert_eq!(outcome, Outcome::Committed, "{id}");
        ids.push(id);
    }
    for (i, p) in ps.iter().enumerate() {
        let committed = branches(&client, &p.base(), "committed");
        let mut seen: Vec<(String, u64)> = committed
            .iter()
            .map(|b| (b["transaction"].as_str().unwrap().to_string(), b["branch"].as_u64().unwrap()))
            .collect();
        seen.sort();
        let expected: Vec<(String, u64)> = ids.iter().map(|id| (id.clone(), i as u64)).collect();
        assert_eq!(seen, expected, "participant {i} committed exactly the four branches it was given");
        assert!(branches(&client, &p.base(), "prepared").is_empty());
    }
    assert!(dtc.unfinished().is_empty());
    assert_eq!(dtc.metrics().committed, 4);
}

#[test]
fn a_refusal_rolls_back_everywhere_and_its_reason_reaches_the_outcome() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let b = participant(root.path(), "b", &["--capacity", "0"]);
    let c = participant(root.path(), "c", &[]);
    let services = vec![("a", http(&a.base(), 2000)), ("b", http(&b.base(), 2000)), ("c", http(&c.base(), 2000))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(5));
    let (id, outcome) = run(&dtc, &transaction(&["a", "b", "c"]));
    let (service, code, message) = refusal(&outcome);
    assert_eq!((service, code), ("b", "insufficient_capacity"), "{outcome:?}");
    assert!(message.contains("would exceed the capacity of 0"), "the participant's own words: {message}");
    assert!(message.contains(&format!("{}/prepare", b.base())), "and where they came from: {message}");
    let client = agent(Duration::from_secs(5));
    let states = settled(&client, &[&a.base(), &b.base(), &c.base()], &id);
    assert_eq!(states[1], [(1, "refused".to_string())], "b recorded its refusal");
    assert!(rolled_back_or_not_asked(&states[0]) && rolled_back_or_not_asked(&states[2]), "{states:?}");
    finished(&dtc);
}

#[test]
fn a_participant_that_is_down_rolls_back_the_others_and_its_rollback_waits_for_it() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let b = participant(root.path(), "b", &[]);
    // c's address, where nothing listens yet.
    let dead = DeadPort::new();
    let (c_addr, c_base) = (dead.addr(), format!("http://{}", dead.addr()));
    let services = vec![("a", http(&a.base(), 2000)), ("b", http(&b.base(), 2000)), ("c", http(&c_base, 400))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(3));
    let (id, outcome) = run(&dtc, &transaction(&["a", "b", "c"]));
    let (service, code, message) = refusal(&outcome);
    // c's own call timeout (400 ms) gave up on it, not the vote deadline.
    assert_eq!((service, code), ("c", "unavailable"), "{outcome:?}");
    assert!(message.contains(&format!("{c_base}/prepare")), "the error names the participant: {message}");
    let client = agent(Duration::from_secs(5));
    let states = settled(&client, &[&a.base(), &b.base()], &id);
    assert!(states.iter().all(|s| rolled_back_or_not_asked(s)), "{states:?}");
    // An unanswered prepare may have been applied (c could have prepared
    // and become unreachable): c's rollback is kept, failing.
    let tx: TxId = id.parse().unwrap();
    wait_until(SETTLE, "c's rollback is failing", || {
        dtc.unfinished().iter().any(|u| {
            u.tx == tx
                && u.participants.iter().any(|p| {
                    p.name == "c" && p.attempts >= 1 && p.last_error.as_ref().is_some_and(|e| e.code == "unavailable")
                })
        })
    });
    // Once c is up, the rollback reaches it (retry-now cuts a backoff short
    // or redelivers a parked call; it may also have just finished).
    drop(dead);
    let c = participant_on(&c_addr, "c", &root.path().join("c"), &[]);
    let _ = dtc.retry_now(tx, "c is back");
    finished(&dtc);
    assert_eq!(state_of(&client, &c.base(), &id, 2).as_deref(), Some("rolled_back"), "null compensation, recorded");
}

#[test]
fn a_prepare_stalling_past_the_call_timeout_is_rolled_back_in_bounded_time() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    // b prepares, then sleeps 20 s before answering; its rollbacks answer at once.
    let b = participant(root.path(), "b", &["--stall", "1", "--stall-ms", "20000", "--stall-phase", "prepare"]);
    let services = vec![("a", http(&a.base(), 2000)), ("b", http(&b.base(), 500))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(2));
    let started = Instant::now();
    let (id, outcome) = run(&dtc, &transaction(&["a", "b"]));
    let elapsed = started.elapsed();
    let (service, code, _) = refusal(&outcome);
    assert_eq!((service, code), ("b", "unavailable"), "{outcome:?}");
    assert!(
        elapsed < Duration::from_secs(10),
        "b's 500 ms call timeout bounds the transaction, not its stall: {elapsed:?}"
    );
    // b did prepare (the answer was lost, not the work): the rollback of an
    // unknown vote must reach it.
    let client = agent(Duration::from_secs(5));
    let states = settled(&client, &[&a.base(), &b.base()], &id);
    assert!(rolled_back_or_not_asked(&states[0]), "{states:?}");
    assert_eq!(states[1], [(1, "rolled_back".to_string())]);
    finished(&dtc);
}

#[test]
fn a_prepare_answered_503_stops_asking_at_the_vote_deadline_not_its_call_timeout() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    // b answers every prepare "not known yet"; rollbacks answer at once.
    let b = Stub::start(|phase, _, _| match phase {
        "prepare" => Response::error(503, "busy", "call again"),
        _ => Response::json(200, &json!({})),
    });
    // b's own call timeout is 30 s; the coordinator waits 400 ms for votes.
    let services = vec![("a", http(&a.base(), 2000)), ("b", http(&b.base, 30_000))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_millis(400));
    let started = Instant::now();
    let (_, outcome) = run(&dtc, &transaction(&["a", "b"]));
    assert!(matches!(outcome, Outcome::Aborted(_)), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the vote deadline bounds the transaction");
    // The prepare loop ends at the vote deadline too (not 30 s later): the
    // rollback that follows it on b's lane arrives, and the asking stops.
    wait_until(SETTLE, "b's rollback arrives", || b.calls("rollback") >= 1);
    let asked = b.calls("prepare");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(b.calls("prepare"), asked, "no prepare is sent after the transaction gave up");
    assert!(asked >= 2, "a 503 is asked again before the deadline: {asked}");
    finished(&dtc);
}

#[test]
fn a_rollback_overtaking_a_late_prepare_leaves_nothing_held() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let b = participant(root.path(), "b", &["--capacity", "1"]);
    // A proxy in front of b that holds each prepare 2 s before passing it on
    // (the coordinator gave up after 300 ms), and passes the rest at once.
    let late = Arc::new(Mutex::new(None::<(u16, String)>));
    let (target, fwd, seen) = (b.base(), agent(Duration::from_secs(5)), Arc::clone(&late));
    let proxy = Stub::start(move |phase, _, request| {
        if phase != "prepare" {
            return forward(&fwd, &target, phase, request);
        }
        std::thread::sleep(Duration::from_millis(2000));
        let answer = forward(&fwd, &target, phase, request);
        *seen.lock().unwrap() = Some((answer.status(), String::from_utf8_lossy(answer.body()).into_owned()));
        answer
    });
    let services = vec![("a", http(&a.base(), 2000)), ("b", http(&proxy.base, 300))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(2));
    let (id, outcome) = run(&dtc, &transaction(&["a", "b"]));
    assert_eq!(refusal(&outcome).0, "b", "{outcome:?}");
    wait_until(SETTLE, "the late prepare reached b", || late.lock().unwrap().is_some());
    let (status, body) = late.lock().unwrap().clone().unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("already_rolled_back")),
        "the late prepare reserves nothing"
    );
    let client = agent(Duration::from_secs(5));
    let states = settled(&client, &[&a.base(), &b.base()], &id);
    assert!(rolled_back_or_not_asked(&states[0]), "{states:?}");
    assert_eq!(states[1], [(1, "rolled_back".to_string())]);
    finished(&dtc);
    // b's one unit of capacity is free: no hanging reservation holds it.
    let fresh = dtc.new_tx_id().to_string();
    let headers = [("Dtc-Transaction", fresh.as_str()), ("Dtc-Branch", "0")];
    let answer = try_post(&client, &format!("{}/prepare", b.base()), &headers, br#"{"amount": 1}"#).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
}

#[test]
fn a_commit_answered_503_is_retried_until_the_participant_has_it() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let b = participant(root.path(), "b", &[]);
    // Commits to b: two 503s before anything is done, then one applied whose
    // answer is replaced by a 503, then through.
    let (target, fwd) = (b.base(), agent(Duration::from_secs(5)));
    let proxy = Stub::start(move |phase, nth, request| match (phase, nth) {
        ("commit", 1 | 2) => Response::error(503, "busy", "nothing done, call again"),
        ("commit", 3) => {
            let applied = forward(&fwd, &target, phase, request);
            assert_eq!(applied.status(), 200, "b applies the commit");
            Response::error(503, "busy", "applied, but this answer says otherwise")
        }
        _ => forward(&fwd, &target, phase, request),
    });
    let services = vec![("a", http(&a.base(), 2000)), ("b", http(&proxy.base, 2000))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(5));
    let (id, outcome) = run(&dtc, &transaction(&["a", "b"]));
    assert!(outcome.is_committed(), "{outcome:?}");
    finished(&dtc);
    assert_eq!(proxy.calls("commit"), 4, "retried until a 2xx, then not again");
    assert!(dtc.metrics().retries >= 3, "{:?}", dtc.metrics());
    let client = agent(Duration::from_secs(5));
    let states = settled(&client, &[&a.base(), &b.base()], &id);
    assert_eq!(states, [vec![(0, "committed".to_string())], vec![(1, "committed".to_string())]]);
}

#[test]
fn a_commit_answered_409_is_parked_at_once_with_its_reason_until_an_operator_retries() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let b = participant(root.path(), "b", &[]);
    let frozen = Arc::new(AtomicBool::new(true));
    let (target, fwd, is_frozen) = (b.base(), agent(Duration::from_secs(5)), Arc::clone(&frozen));
    let proxy = Stub::start(move |phase, _, request| {
        // SeqCst: the test flips it between two calls it waits for.
        if phase == "commit" && is_frozen.load(Ordering::SeqCst) {
            return Response::json(409, &json!({"code": "account_frozen", "message": "account 7 is frozen"}));
        }
        forward(&fwd, &target, phase, request)
    });
    let services = vec![("a", http(&a.base(), 2000)), ("b", http(&proxy.base, 2000))];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(5));
    let (id, outcome) = run(&dtc, &transaction(&["a", "b"]));
    assert_eq!(outcome, Outcome::CommitPending, "decided, not acknowledged by b");
    let tx: TxId = id.parse().unwrap();
    let stuck = || dtc.unfinished().into_iter().find(|u| u.tx == tx && u.state == TxState::Stuck);
    wait_until(SETTLE, "the transaction is stuck", || stuck().is_some());
    let unfinished = stuck().unwrap();
    assert_eq!(unfinished.participants.len(), 1, "{unfinished:?}");
    let p = &unfinished.participants[0];
    assert_eq!((p.name.as_str(), p.branch, p.phase.as_str(), p.attempts), ("b", Some(1), "parked-commit", 1), "{p:?}");
    let error = p.last_error.as_ref().expect("the reason is kept");
    assert_eq!(error.code, "account_frozen");
    assert!(error.message.contains("account 7 is frozen"), "{error:?}");
    assert_eq!(dtc.parked_count(), 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(proxy.calls("commit"), 1, "a 409 is not retried blindly");
    let client = agent(Duration::from_secs(5));
    assert_eq!(state_of(&client, &b.base(), &id, 1).as_deref(), Some("prepared"), "b still holds it");
    assert_eq!(state_of(&client, &a.base(), &id, 0).as_deref(), Some("committed"));
    // The operator fixes the account and retries.
    frozen.store(false, Ordering::SeqCst);
    let report = dtc.retry_now(tx, "account 7 unfrozen").expect("a parked call to retry");
    assert_eq!((report.transactions, report.redelivered), (vec![tx], 1));
    finished(&dtc);
    assert_eq!(proxy.calls("commit"), 2);
    assert_eq!(state_of(&client, &b.base(), &id, 1).as_deref(), Some("committed"));
}

#[test]
fn a_participant_killed_before_its_commit_gets_it_after_its_restart() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let mut b = participant(root.path(), "b", &[]);
    // c's vote takes 3 s: the window in which b is killed, prepared.
    let c = participant(root.path(), "c", &["--stall", "1", "--stall-ms", "3000", "--stall-phase", "prepare"]);
    // The coordinator reaches b through a proxy that says when b's yes is on
    // its way back: b's store shows the branch prepared a moment before b
    // answers, and a kill in that moment loses the vote (an abort, rightly).
    // While b is down the proxy answers 502: not known yet.
    let (b_addr, b_base) = (b.addr.clone(), b.base());
    let voted = Arc::new(AtomicBool::new(false));
    let (target, fwd, b_voted) = (b_base.clone(), agent(Duration::from_secs(5)), Arc::clone(&voted));
    let proxy = Stub::start(move |phase, _, request| {
        let answer = forward(&fwd, &target, phase, request);
        if phase == "prepare" && answer.status() == 200 {
            // SeqCst: read by the test thread before it kills b.
            b_voted.store(true, Ordering::SeqCst);
        }
        answer
    });
    let services = vec![("a", http(&a.base(), 6000)), ("b", http(&proxy.base, 6000)), ("c", http(&c.base(), 6000))];
    // Patient retries (100 ms apart, 1000 of them): the commit waits for b.
    let retry = RetryPolicy::new(Duration::from_millis(5), Duration::from_millis(100), 1000);
    let dtc = open_with(&root.path().join("coordinator"), services, Duration::from_secs(6), retry);
    let id = dtc.new_tx_id();
    let running = {
        let dtc = dtc.clone();
        std::thread::spawn(move || dtc.run_as(id, &transaction(&["a", "b", "c"])))
    };
    let client = agent(Duration::from_secs(5));
    let tx = id.to_string();
    wait_until(Duration::from_secs(10), "b voted yes", || voted.load(Ordering::SeqCst));
    assert_eq!(state_of(&client, &c.base(), &tx, 2).as_deref(), Some("prepared"), "c is stalling its answer");
    assert_eq!(proxy.calls("commit"), 0, "killed before its commit");
    b.kill();
    // c votes yes, the commit is decided, b's commit fails and is retried.
    wait_until(SETTLE, "b's commit is being retried", || {
        dtc.unfinished().iter().any(|u| {
            u.tx == id
                && u.state == TxState::Committing
                && u.participants.iter().any(|p| p.name == "b" && p.attempts >= 2)
        })
    });
    assert_eq!(state_of(&client, &a.base(), &tx, 0).as_deref(), Some("committed"), "a has the decision");
    let b = participant_on(&b_addr, "b", &root.path().join("b"), &[]);
    let outcome = running.join().unwrap().expect("the transaction runs");
    assert!(outcome.is_committed(), "{outcome:?}");
    finished(&dtc);
    let states = settled(&client, &[&a.base(), &b.base(), &c.base()], &tx);
    let committed = |i: u16| vec![(i, "committed".to_string())];
    assert_eq!(
        states,
        [committed(0), committed(1), committed(2)],
        "b kept its prepare across the kill and committed it"
    );
}

#[test]
fn hostile_prepare_answers_are_clear_refusals_never_panics() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let ok = |_: &str| Response::json(200, &json!({}));
    let garbage = RawServer::start(b"this is not HTTP at all\r\n\r\n");
    let truncated =
        RawServer::start(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"cut");
    let huge = Stub::start(move |phase, _, _| match phase {
        "prepare" => Response::bytes(200, "application/json", format!("\"{}\"", "x".repeat(4096))),
        other => ok(other),
    });
    let html_no = Stub::start(move |phase, _, _| match phase {
        "prepare" => Response::bytes(409, "text/html", "<html><body>No way</body></html>"),
        other => ok(other),
    });
    let html_yes = Stub::start(move |phase, _, _| match phase {
        "prepare" => Response::bytes(200, "text/html", "<html><body>Welcome to nginx!</body></html>"),
        other => ok(other),
    });
    let empty_yes = Stub::start(move |phase, _, _| match phase {
        "prepare" => Response::empty(200),
        other => ok(other),
    });
    let services = vec![
        ("a", http(&a.base(), 2000)),
        ("garbage", http(&garbage.base, 300)),
        ("truncated", http(&truncated.base, 300)),
        ("huge", http(&huge.base, 300).max_response_bytes(1024)),
        ("html_no", http(&html_no.base, 300)),
        ("html_yes", http(&html_yes.base, 300)),
        ("empty_yes", http(&empty_yes.base, 300)),
    ];
    let dtc = open(&root.path().join("coordinator"), services, Duration::from_secs(3));
    let mut ids = Vec::new();
    let mut outcome_with = |hostile: &str| {
        let (id, outcome) = run(&dtc, &transaction(&["a", hostile]));
        ids.push(id);
        outcome
    };

    // Not HTTP, or a body cut short: no answer, asked again until the call
    // timeout, then a no that may hide a prepared branch.
    for (name, base, connections) in [("garbage", &garbage.base, &garbage), ("truncated", &truncated.base, &truncated)]
    {
        let outcome = outcome_with(name);
        let (service, code, message) = refusal(&outcome);
        assert_eq!((service, code), (name, "unavailable"), "{outcome:?}");
        assert!(message.contains(&format!("{base}/prepare")), "{message}");
        assert!(connections.connections() >= 2, "{name}: asked again while the answer was not known");
    }
    // Larger than max_response_bytes: not read further, not asked again.
    let outcome = outcome_with("huge");
    let (service, code, message) = refusal(&outcome);
    assert_eq!((service, code), ("huge", "bad_answer"), "{outcome:?}");
    assert!(message.contains("larger than 1024 bytes"), "{message}");
    assert_eq!(huge.calls("prepare"), 1);
    wait_until(SETTLE, "huge's rollback (it said 200)", || huge.calls("rollback") == 1);
    // A 409 whose body is not JSON: a refusal with the body's start as reason.
    let outcome = outcome_with("html_no");
    let (service, code, message) = refusal(&outcome);
    assert_eq!((service, code), ("html_no", "refused"), "{outcome:?}");
    assert!(message.contains("<html><body>No way"), "{message}");
    // A 200 whose body is not JSON (a web page at a wrong URL): not a yes.
    let outcome = outcome_with("html_yes");
    let (service, code, message) = refusal(&outcome);
    assert_eq!((service, code), ("html_yes", "bad_answer"), "{outcome:?}");
    assert!(message.contains("not JSON"), "{message}");
    wait_until(SETTLE, "html_yes's rollback", || html_yes.calls("rollback") == 1);
    // An empty 200 is a yes with an empty prepared value.
    assert_eq!(outcome_with("empty_yes"), Outcome::Committed);
    assert_eq!(empty_yes.calls("commit"), 1);

    assert_eq!(html_no.calls("rollback"), 0, "a definite no is not rolled back");
    let client = agent(Duration::from_secs(5));
    wait_until(SETTLE, "a holds nothing prepared", || branches(&client, &a.base(), "prepared").is_empty());
    for (i, id) in ids.iter().enumerate() {
        let state = state_of(&client, &a.base(), id, 0);
        match i {
            // The last one, with `empty_yes`.
            _ if i == ids.len() - 1 => assert_eq!(state.as_deref(), Some("committed")),
            // Prepared and rolled back, or never asked.
            _ => assert!(matches!(state.as_deref(), None | Some("rolled_back")), "transaction {i}: {state:?}"),
        }
    }
    let metrics = dtc.metrics();
    assert_eq!((metrics.panics, metrics.protocol_violations), (0, 0), "{metrics:?}");
}

#[test]
fn a_routed_participant_calls_only_hosts_on_its_allowlist() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let b = participant(root.path(), "b", &[]);
    let outside = Stub::start(|_, _, _| Response::json(200, &json!({})));
    let allow = Allowlist::parse(&format!("127.0.0.1:{},127.0.0.1:{}", a.port(), b.port())).unwrap();
    // The typed error, from the list and from a participant's endpoints.
    let outside_url = format!("{}/prepare", outside.base);
    let error = allow.check(&outside_url).unwrap_err();
    assert!(matches!(&error, Error::UrlNotAllowed { host, .. } if host == "127.0.0.1"), "{error:?}");
    let endpoints = Endpoints::from_base(&outside.base).unwrap();
    assert!(matches!(endpoints.check(&allow), Err(Error::UrlNotAllowed { .. })));
    assert!(allow.check(&format!("{}/prepare", a.base())).is_ok());

    let remote = HttpParticipant::routed(allow, LANES).call_timeout(Duration::from_secs(2));
    let dtc = open(&root.path().join("coordinator"), vec![("remote", remote)], Duration::from_secs(5));
    let routed = |base: &str| {
        let request = RoutedRequest { endpoints: Endpoints::from_base(base).unwrap(), body: json!({"amount": 1}) };
        Branch::json("remote", &request).unwrap()
    };
    let client = agent(Duration::from_secs(5));
    // Allowed hosts: committed at each.
    let (id, outcome) = run(&dtc, &Transaction::new().branch(routed(&a.base())).branch(routed(&b.base())));
    assert_eq!(outcome, Outcome::Committed);
    assert_eq!(state_of(&client, &a.base(), &id, 0).as_deref(), Some("committed"));
    assert_eq!(state_of(&client, &b.base(), &id, 1).as_deref(), Some("committed"));
    // A host off the list: refused with the error's code, never called.
    let (id, outcome) = run(&dtc, &Transaction::new().branch(routed(&a.base())).branch(routed(&outside.base)));
    let (_, code, message) = refusal(&outcome);
    assert_eq!(code, error.code(), "{outcome:?}");
    assert!(message.contains(&outside_url), "{message}");
    // A payload that is not a routed request at all.
    let not_routed = Branch::json("remote", &json!({"amount": 1})).unwrap();
    let (_, outcome) = run(&dtc, &Transaction::new().branch(routed(&a.base())).branch(not_routed));
    assert_eq!(refusal(&outcome).1, "invalid_request", "{outcome:?}");
    let states = settled(&client, &[&a.base()], &id);
    assert!(rolled_back_or_not_asked(&states[0]), "{states:?}");
    finished(&dtc);
    let calls: usize = ["prepare", "commit", "rollback"].iter().map(|p| outside.calls(p)).sum();
    assert_eq!(calls, 0, "the host off the list was never called");
}
