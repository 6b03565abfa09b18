//! `dtc participant` as a black box: the built binary on 127.0.0.1:0, spoken
//! to with a plain HTTP client. Every idempotency rule of the protocol, a
//! SIGKILL and restart in the middle of a load, injected fault rates, the
//! capacity. Every process started is killed when its guard drops, even when
//! a test fails; every loop is bounded in count and time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running participant; killed (SIGKILL) and reaped on drop.
struct Participant {
    child: Child,
    base: String,
}

impl Drop for Participant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `dtc participant` on `dir` and waits (at most 20 s) for its
/// `listening on` line.
fn start(dir: &Path, extra: &[&str]) -> Participant {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtc"))
        .args(["participant", "--name", "hotel", "--dir"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dtc participant");
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    // The guard exists before the wait, so a failed start still kills it.
    let mut participant = Participant { child, base: String::new() };
    let line = line_rx.recv_timeout(Duration::from_secs(20)).expect("a `listening on` line within 20 s");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    participant.base = format!("http://{addr}");
    participant
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

/// A transaction id of dtc's shape (clock in the high half), distinct per n.
fn tx(n: u64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    format!("{:016x}{:016x}", now, n)
}

/// One protocol call: (status, body as JSON, or Null when empty or not JSON).
fn call(agent: &ureq::Agent, base: &str, phase: &str, tx: &str, branch: u16, body: &Value) -> (u16, Value) {
    try_call(agent, base, phase, tx, branch, body).expect("the participant answers")
}

fn try_call(
    agent: &ureq::Agent,
    base: &str,
    phase: &str,
    tx: &str,
    branch: u16,
    body: &Value,
) -> Result<(u16, Value), ureq::Error> {
    let mut answer = agent
        .post(&format!("{base}/{phase}"))
        .header("Dtc-Transaction", tx)
        .header("Dtc-Branch", &branch.to_string())
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())?;
    let status = answer.status().as_u16();
    let bytes = answer.body_mut().read_to_vec()?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut answer = agent.get(url).call().expect("the participant answers");
    (answer.status().as_u16(), answer.body_mut().read_to_string().unwrap())
}

fn branches(agent: &ureq::Agent, base: &str, state: &str) -> Vec<Value> {
    let (status, body) = get(agent, &format!("{base}/branches?state={state}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<Value>>(&body).unwrap()
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

/// The answers the calls of `every_idempotency_rule_...` must keep giving.
fn duplicates(agent: &ureq::Agent, base: &str, t: &str, room: &Value, fifth: &Value) {
    let (status, value) = call(agent, base, "prepare", t, 0, room);
    assert_eq!((status, code(&value)), (409, "already_committed"), "a stale prepare of a committed branch");
    assert_eq!(call(agent, base, "commit", t, 0, &json!(null)).0, 200, "a duplicate commit");
    // A rollback of a committed branch is a definite no.
    let (status, body) = call(agent, base, "rollback", t, 0, &json!(null));
    assert_eq!((status, code(&body)), (409, "already_committed"));
    // A commit of a branch never prepared.
    let (status, body) = call(agent, base, "commit", t, 1, &json!({}));
    assert_eq!((status, code(&body)), (409, "unknown_branch"));
    assert_eq!(body["error"]["code"], "unknown_branch", "also in the error shape");
    // The late prepare after a null compensation reserves nothing (no hanging).
    assert_eq!(call(agent, base, "rollback", t, 2, &json!(null)).0, 200);
    let (status, body) = call(agent, base, "prepare", t, 2, room);
    assert_eq!((status, code(&body)), (409, "already_rolled_back"));
    // Rolled back after a prepare: commit refused, rollback repeated fine.
    assert_eq!(call(agent, base, "rollback", t, 3, room).0, 200);
    let (status, body) = call(agent, base, "commit", t, 3, room);
    assert_eq!((status, code(&body)), (409, "unknown_branch"));
    let (status, body) = call(agent, base, "prepare", t, 3, room);
    assert_eq!((status, code(&body)), (409, "already_rolled_back"));
    // The refusal is repeated, even for a good payload now.
    let (status, body) = call(agent, base, "prepare", t, 4, room);
    assert_eq!((status, code(&body)), (409, "invalid_payload"));
    // The prepared branch keeps its value.
    assert_eq!(call(agent, base, "prepare", t, 5, room), (200, fifth.clone()));
}

#[test]
fn every_idempotency_rule_holds_and_holds_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Duration::from_secs(10));
    let t = tx(1);
    let room = json!({"room": 12, "amount": 1});
    let first = {
        let p = start(dir.path(), &[]);
        let base = p.base.as_str();
        // Duplicate prepare: the same prepared value.
        let (status, first) = call(&agent, base, "prepare", &t, 0, &room);
        assert_eq!(status, 200);
        assert_eq!(first["reservation"], room);
        assert_eq!(call(&agent, base, "prepare", &t, 0, &room), (200, first.clone()));
        // Commit, and its duplicate.
        assert_eq!(call(&agent, base, "commit", &t, 0, &first).0, 200);
        assert_eq!(call(&agent, base, "commit", &t, 0, &first).0, 200);
        // Null compensation: a rollback first succeeds and is remembered...
        assert_eq!(call(&agent, base, "rollback", &t, 2, &json!(null)).0, 200);
        // Prepared then rolled back.
        assert_eq!(call(&agent, base, "prepare", &t, 3, &room).0, 200);
        assert_eq!(call(&agent, base, "rollback", &t, 3, &room).0, 200);
        // A bad payload is a refusal, remembered like any other.
        let (status, body) = call(&agent, base, "prepare", &t, 4, &json!([1, 2]));
        assert_eq!((status, code(&body)), (409, "invalid_payload"));
        // A branch left prepared.
        let (status, fifth) = call(&agent, base, "prepare", &t, 5, &room);
        assert_eq!(status, 200);
        // Every duplicate and late call, before and after a restart.
        duplicates(&agent, base, &t, &room, &fifth);
        (first, fifth)
        // The guard kills the process here (SIGKILL).
    };
    let p = start(dir.path(), &[]);
    duplicates(&agent, &p.base, &t, &room, &first.1);
    let prepared = branches(&agent, &p.base, "prepared");
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    assert_eq!((prepared[0]["transaction"].as_str(), prepared[0]["branch"].as_u64()), (Some(t.as_str()), Some(5)));
    assert_eq!(prepared[0]["state"], "prepared");
    assert_eq!(prepared[0]["prepared"]["reservation"], room);
    let states: Vec<_> =
        branches(&agent, &p.base, "all").iter().map(|b| b["state"].as_str().unwrap().to_owned()).collect();
    assert_eq!(states, ["committed", "rolled_back", "rolled_back", "refused", "prepared"]);
    assert_eq!(branches(&agent, &p.base, "committed").len(), 1);
    assert_eq!(branches(&agent, &p.base, "rolled_back").len(), 2);
}

#[test]
fn malformed_calls_and_the_service_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Duration::from_secs(10));
    let p = start(dir.path(), &[]);
    let base = p.base.as_str();
    for (t, branch) in [("ABC", "0"), (&*"A".repeat(32), "0"), (&*tx(1), "x"), (&*tx(1), "70000"), (&*tx(1), "-1")] {
        let mut answer = agent
            .post(&format!("{base}/prepare"))
            .header("Dtc-Transaction", t)
            .header("Dtc-Branch", branch)
            .send(&b"{}"[..])
            .unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{t} {branch}");
        let body: Value = serde_json::from_slice(&answer.body_mut().read_to_vec().unwrap()).unwrap();
        assert!(body["error"]["code"].as_str().unwrap().starts_with("bad_"), "{body}");
    }
    // Too large for a prepare: a refusal; beyond the server's bound: 413.
    let big = json!({"blob": "x".repeat(61 << 10)});
    let (status, body) = call(&agent, base, "prepare", &tx(3), 0, &big);
    assert_eq!((status, code(&body)), (409, "payload_too_large"));
    let huge = json!({"blob": "x".repeat(65 << 10)});
    let (status, body) = call(&agent, base, "prepare", &tx(3), 1, &huge);
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")));
    let (status, body) = get(&agent, &format!("{base}/healthz"));
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["status"].clone()), (200, json!("ok")));
    assert_eq!(get(&agent, &format!("{base}/branches?state=bogus")).0, 400);
    assert_eq!(get(&agent, &format!("{base}/nowhere")).0, 404);
    call(&agent, base, "prepare", &tx(2), 0, &json!({"amount": 3}));
    let (status, metrics) = get(&agent, &format!("{base}/metrics"));
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"dtc_participant_requests_total{participant="hotel",phase="prepare",status="200"} 1"#));
    assert!(metrics.contains(r#"dtc_participant_requests_total{participant="hotel",phase="prepare",status="400"} 5"#));
    assert!(metrics.contains(r#"dtc_participant_prepared_branches{participant="hotel"} 1"#), "{metrics}");
}

#[test]
fn a_sigkill_in_the_middle_of_a_load_loses_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[]);
    let base = Arc::new(p.base.clone());
    let stop = Arc::new(AtomicBool::new(false));
    // Four clients: prepare, then commit the even branches, roll back the odd.
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let base = Arc::clone(&base);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let agent = agent(Duration::from_secs(2));
                let t = tx(100 + c);
                let mut answered = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(20);
                for branch in 0..500u16 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let payload = json!({"client": c, "branch": branch});
                    let Ok((200, value)) = try_call(&agent, &base, "prepare", &t, branch, &payload) else { break };
                    answered.push((branch, "prepare", value.clone()));
                    let phase = if branch % 2 == 0 { "commit" } else { "rollback" };
                    let Ok((200, _)) = try_call(&agent, &base, phase, &t, branch, &value) else { break };
                    answered.push((branch, phase, value));
                }
                (t, answered)
            })
        })
        .collect();
    // Kill once some answers are out, while the clients are still calling.
    let agent = agent(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    while branches(&agent, &p.base, "all").len() < 60 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(p); // SIGKILL
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let total: usize = results.iter().map(|(_, a)| a.len()).sum();
    assert!(total >= 60, "only {total} answers before the kill");

    let p = start(dir.path(), &[]);
    for (t, answered) in &results {
        for (branch, phase, value) in answered {
            let (status, body) = match *phase {
                // The prepared value is the same as first answered (or the
                // branch went on to commit or roll back, also answered).
                "prepare" => call(&agent, &p.base, "prepare", t, *branch, &json!({})),
                phase => call(&agent, &p.base, phase, t, *branch, value),
            };
            let decided = answered.iter().any(|(b, ph, _)| b == branch && *ph != "prepare");
            // The decision this client sends for the branch (it may have
            // taken effect even if its answer was lost to the kill).
            let decision = if branch % 2 == 0 { "already_committed" } else { "already_rolled_back" };
            match *phase {
                "prepare" if decided => assert_eq!((status, code(&body)), (409, decision), "{t}/{branch}"),
                "prepare" => assert!(
                    (status, &body) == (200, value) || (status, code(&body)) == (409, decision),
                    "{t}/{branch}: {status} {body}"
                ),
                _ => assert_eq!(status, 200, "{phase} of {t}/{branch} answered before the kill: {body}"),
            }
        }
    }
}

#[test]
fn injected_faults_come_at_roughly_their_rates() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &["--refuse", "0.3", "--fail", "0.2", "--seed", "11"]);
    let agent = agent(Duration::from_secs(10));
    let t = tx(7);
    let (mut ok, mut refused, mut failed) = (0, 0, 0);
    for branch in 0..300u16 {
        let (status, body) = call(&agent, &p.base, "prepare", &t, branch, &json!({"n": branch}));
        match (status, code(&body)) {
            (200, _) => ok += 1,
            (409, "injected_refusal") => {
                refused += 1;
                // A refusal is recorded: its duplicate is refused again (or fails).
                let (again, body) = call(&agent, &p.base, "prepare", &t, branch, &json!({"n": branch}));
                assert!(again == 503 || code(&body) == "injected_refusal", "{again} {body}");
            }
            (503, _) => {
                failed += 1;
                assert_eq!(body["error"]["code"], "injected_failure", "{body}");
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // Failures ~ 0.2 of calls; refusals ~ 0.3 of the prepares that got through.
    assert!((30..=95).contains(&failed), "{failed} failures of 300");
    assert!((40..=110).contains(&refused), "{refused} refusals of {}", 300 - failed);
    assert_eq!(ok + refused + failed, 300);
}

#[test]
fn stalls_outlast_a_call_timeout_and_the_work_is_done_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &["--stall", "0.5", "--stall-ms", "400", "--seed", "5"]);
    let impatient = agent(Duration::from_millis(150));
    let patient = agent(Duration::from_secs(10));
    let t = tx(9);
    let mut timed_out = 0;
    for branch in 0..20u16 {
        match try_call(&impatient, &p.base, "prepare", &t, branch, &json!({"n": branch})) {
            Ok((200, _)) => {}
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(_) => timed_out += 1,
        }
    }
    assert!((3..=17).contains(&timed_out), "{timed_out} of 20 timed out");
    // A stalled call had done its work before stalling: every branch is prepared.
    let deadline = Instant::now() + Duration::from_secs(10);
    while branches(&patient, &p.base, "prepared").len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(branches(&patient, &p.base, "prepared").len(), 20);
}

#[test]
fn stall_phase_stalls_only_the_phase_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &["--stall", "1", "--stall-ms", "3000", "--stall-phase", "commit"]);
    let impatient = agent(Duration::from_millis(1000));
    let t = tx(13);
    // Prepares and rollbacks answer at once.
    for branch in 0..2u16 {
        assert_eq!(call(&impatient, &p.base, "prepare", &t, branch, &json!({"n": branch})).0, 200);
    }
    assert_eq!(call(&impatient, &p.base, "rollback", &t, 1, &json!(null)).0, 200);
    // A commit does its work, then outlasts the call timeout.
    assert!(try_call(&impatient, &p.base, "commit", &t, 0, &json!(null)).is_err(), "the commit stalls");
    let patient = agent(Duration::from_secs(10));
    let committed = branches(&patient, &p.base, "committed");
    assert_eq!((committed.len(), committed[0]["branch"].as_u64()), (1, Some(0)), "{committed:?}");
    assert_eq!(branches(&patient, &p.base, "rolled_back").len(), 1);
}

#[test]
fn the_capacity_bounds_held_units_and_is_rebuilt_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(Duration::from_secs(10));
    let t = tx(3);
    {
        let p = start(dir.path(), &["--capacity", "10"]);
        assert_eq!(call(&agent, &p.base, "prepare", &t, 0, &json!({"amount": 6})).0, 200);
        let (status, body) = call(&agent, &p.base, "prepare", &t, 1, &json!({"amount": 5}));
        assert_eq!((status, code(&body)), (409, "insufficient_capacity"));
        let (status, body) = call(&agent, &p.base, "prepare", &t, 2, &json!({"amount": -1}));
        assert_eq!((status, code(&body)), (409, "invalid_payload"));
        assert_eq!(call(&agent, &p.base, "prepare", &t, 3, &json!({"amount": 4})).0, 200);
    }
    let p = start(dir.path(), &["--capacity", "10"]);
    // 10 units held from before the restart.
    let (status, body) = call(&agent, &p.base, "prepare", &t, 4, &json!({"amount": 1}));
    assert_eq!((status, code(&body)), (409, "insufficient_capacity"));
    assert_eq!(call(&agent, &p.base, "rollback", &t, 0, &json!(null)).0, 200);
    assert_eq!(call(&agent, &p.base, "prepare", &t, 5, &json!({"amount": 6})).0, 200);
    assert_eq!(call(&agent, &p.base, "commit", &t, 3, &json!(null)).0, 200);
    assert_eq!(call(&agent, &p.base, "prepare", &t, 6, &json!({"amount": 4})).0, 200);
}
