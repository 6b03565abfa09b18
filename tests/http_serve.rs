//! `dtc serve` as a black box: the built binary on 127.0.0.1:0 with two or
//! three `dtc participant` processes (and, for an answer no reference
//! participant gives, a scripted in-test one), spoken to over its JSON API.
//! Outcomes, bad input, idempotent resubmission, status, health, metrics,
//! operator actions and their token, and the coordinator SIGKILLed before
//! and after its decision: after each restart, every participant's durable
//! store agrees with the recorded outcome. Every process is killed by its
//! guard, every wait is bounded.

mod http_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dtc::http::Response;
use http_support::{
    Answer, DeadPort, Proc, Stub, agent, branches, get, participant, post, serve, state_of, try_post, tx_id, wait_until,
};
use serde_json::{Value, json};

/// Long enough for any settling on a loaded machine; a pass takes far less.
const SETTLE: Duration = Duration::from_secs(20);

const TOKEN: &str = "operator-token-0123456789";

fn client() -> ureq::Agent {
    agent(Duration::from_secs(30))
}

/// `POST /v1/transactions`.
fn submit(serve: &Proc, body: &Value) -> Answer {
    post(&client(), &format!("{}/v1/transactions", serve.base()), body)
}

/// `GET /v1/transactions/{id}`.
fn status(serve: &Proc, id: &str) -> Value {
    let answer = get(&client(), &format!("{}/v1/transactions/{id}", serve.base()));
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json
}

fn prepare_url(p: &Proc) -> String {
    format!("{}/prepare", p.base())
}

/// Three reference participants with their stores under `root`.
fn three(root: &Path, c_flags: &[&str]) -> [Proc; 3] {
    [participant(root, "a", &[]), participant(root, "b", &[]), participant(root, "c", c_flags)]
}

/// Waits until none of `ps` holds anything prepared, then returns each
/// one's recorded state of branch `i` (its position) of `id`.
///
/// An abort is answered once one participant refused, while another one's
/// prepare may still be on its way: that participant prepares after the
/// answer and is rolled back after that, so a branch of `id` seen
/// `prepared` is waited on too, not taken as the end state.
fn settled(ps: &[&Proc], id: &str) -> Vec<Option<String>> {
    let client = client();
    for (i, p) in ps.iter().enumerate() {
        wait_until(SETTLE, &format!("{} holds nothing prepared", p.addr), || {
            branches(&client, &p.base(), "prepared").is_empty()
                && state_of(&client, &p.base(), id, i as u16).as_deref() != Some("prepared")
        });
    }
    ps.iter().enumerate().map(|(i, p)| state_of(&client, &p.base(), id, i as u16)).collect()
}

fn error_code(answer: &Answer) -> &str {
    answer.json["error"]["code"].as_str().unwrap_or_else(|| panic!("not a JSON error: {answer:?}"))
}

#[test]
fn all_yes_commits_everywhere_and_a_resubmission_gets_the_recorded_answer() {
    let root = tempfile::tempdir().unwrap();
    let ps = three(root.path(), &[]);
    let serve = serve(&root.path().join("coordinator"), &[]);
    let id = tx_id(1, Duration::ZERO);
    let services: Vec<String> = ps.iter().map(prepare_url).collect();
    let body = json!({"services": services, "timeout": 5000, "id": id});
    let first = submit(&serve, &body);
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json, json!({"transactionId": id, "status": "committed", "errors": [], "pending": []}));
    let committed = Some("committed".to_string());
    assert_eq!(settled(&[&ps[0], &ps[1], &ps[2]], &id), [committed.clone(), committed.clone(), committed]);
    // The same id again: the recorded answer, nothing run twice.
    let again = submit(&serve, &body);
    assert_eq!((again.status, &again.json), (200, &first.json));
    for p in &ps {
        assert_eq!(branches(&client(), &p.base(), "all").len(), 1, "one branch at {}", p.addr);
    }
    // The same id with other content is refused.
    let other = submit(&serve, &json!({"services": [services[0]], "id": id}));
    assert_eq!((other.status, error_code(&other)), (409, "tx_id_reused"), "{}", other.text);
    let recorded = status(&serve, &id);
    assert_eq!((recorded["status"].as_str(), &recorded["state"]), (Some("committed"), &Value::Null), "{recorded}");
    // An id the server chose.
    let chosen = submit(&serve, &json!({"services": services}));
    assert_eq!(chosen.json["status"], "committed", "{}", chosen.text);
    let chosen_id = chosen.json["transactionId"].as_str().unwrap();
    assert_eq!(status(&serve, chosen_id)["status"], "committed");
}

#[test]
fn a_refusal_rolls_back_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let ps = three(root.path(), &["--capacity", "0"]);
    let serve = serve(&root.path().join("coordinator"), &[]);
    let id = tx_id(2, Duration::ZERO);
    let services: Vec<Value> =
        ps.iter().map(|p| json!({"prepare": prepare_url(p), "payload": {"amount": 1}})).collect();
    let body = json!({"services": services, "id": id});
    let answer = submit(&serve, &body);
    assert_eq!((answer.status, answer.json["status"].as_str()), (200, Some("rolled_back")), "{}", answer.text);
    let errors = answer.json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors[0].as_str().unwrap();
    assert!(error.contains("insufficient_capacity") && error.contains(&prepare_url(&ps[2])), "{error}");
    let states = settled(&[&ps[0], &ps[1], &ps[2]], &id);
    assert_eq!(states[2].as_deref(), Some("refused"));
    for state in &states[..2] {
        // Prepared and rolled back, or never asked.
        assert!(matches!(state.as_deref(), None | Some("rolled_back")), "{states:?}");
    }
    let recorded = status(&serve, &id);
    assert_eq!(recorded["status"], "rolled_back", "{recorded}");
    assert!(recorded["reason"].as_str().unwrap().contains("insufficient_capacity"), "{recorded}");
    assert_eq!(submit(&serve, &body).json, answer.json, "a resubmission gets the recorded abort");
}

#[test]
fn a_participant_that_is_down_rolls_back_with_an_error_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let b = participant(root.path(), "b", &[]);
    let serve = serve(&root.path().join("coordinator"), &["--call-timeout-ms", "500"]);
    let dead = DeadPort::new();
    let down = format!("http://{}/prepare", dead.addr());
    let id = tx_id(3, Duration::ZERO);
    let answer = submit(&serve, &json!({"services": [prepare_url(&a), prepare_url(&b), down], "id": id}));
    assert_eq!((answer.status, answer.json["status"].as_str()), (200, Some("rolled_back")), "{}", answer.text);
    let error = answer.json["errors"][0].as_str().unwrap();
    assert!(error.contains(&down) && error.contains("unavailable"), "the error names it: {error}");
    let states = settled(&[&a, &b], &id);
    // Prepared and rolled back, or never asked.
    assert!(states.iter().all(|s| matches!(s.as_deref(), None | Some("rolled_back"))), "{states:?}");
    assert_eq!(status(&serve, &id)["status"], "rolled_back");
}

#[test]
fn bad_input_is_a_4xx_json_error_and_the_server_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let serve = serve(&root.path().join("coordinator"), &[]);
    let url = prepare_url(&a);
    let base = serve.base();
    let client = client();
    let too_many: Vec<&str> = (0..65).map(|_| url.as_str()).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", b"{\"services\": [".to_vec(), 400, "invalid_json"),
        ("not an object", b"[1, 2]".to_vec(), 400, "invalid_json"),
        ("unknown field", json!({"services": [url], "retries": 3}).to_string().into(), 400, "invalid_json"),
        (
            "unknown service field",
            json!({"services": [{"prepare": url, "x": 1}]}).to_string().into(),
            400,
            "invalid_json",
        ),
        ("no services", json!({"services": []}).to_string().into(), 400, "no_services"),
        ("too many services", json!({"services": too_many}).to_string().into(), 400, "too_many_services"),
        ("not http", json!({"services": ["ftp://127.0.0.1/prepare"]}).to_string().into(), 400, "invalid_url"),
        (
            "outside --allow",
            json!({"services": [url, "http://192.0.2.7/prepare"]}).to_string().into(),
            403,
            "url_not_allowed",
        ),
        (
            "timeout above the max",
            json!({"services": [url], "timeout": 60_001}).to_string().into(),
            400,
            "invalid_timeout",
        ),
        ("zero timeout", json!({"services": [url], "timeout": 0}).to_string().into(), 400, "invalid_timeout"),
        ("bad id", json!({"services": [url], "id": "not-hex"}).to_string().into(), 400, "invalid_id"),
        ("id too long", json!({"services": [url], "id": "1".repeat(33)}).to_string().into(), 400, "invalid_id"),
        (
            "id in the future",
            json!({"services": [url], "id": "ffffffffffffffff0000000000000001"}).to_string().into(),
            400,
            "tx_id_in_future",
        ),
        ("body too large", vec![b' '; 300 << 10], 413, "body_too_large"),
    ];
    for (what, body, expected, code) in &cases {
        let answer = try_post(&client, &format!("{base}/v1/transactions"), &[], body).expect("an answer");
        assert_eq!((answer.status, error_code(&answer)), (*expected, *code), "{what}: {}", answer.text);
        assert!(!answer.json["error"]["message"].as_str().unwrap_or_default().is_empty(), "{what}: a message");
    }
    for (what, path, expected, code) in [
        ("status of a bad id", "/v1/transactions/xyz", 400, "invalid_id"),
        ("list by a bad state", "/v1/transactions?state=bogus", 400, "invalid_state"),
        ("no such path", "/v2/anything", 404, "not_found"),
    ] {
        let answer = get(&client, &format!("{base}{path}"));
        assert_eq!((answer.status, error_code(&answer)), (expected, code), "{what}: {}", answer.text);
    }
    let mut wrong_method = client.delete(&format!("{base}/v1/transactions")).call().unwrap();
    assert_eq!(wrong_method.status().as_u16(), 405);
    let body: Value = serde_json::from_str(&wrong_method.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // Without --operator-token, operator actions are off.
    let id = tx_id(4, Duration::ZERO);
    let headers = [("Authorization", "Bearer anything-at-all-0123")];
    let off = try_post(&client, &format!("{base}/v1/transactions/{id}/retry-now"), &headers, br#"{"reason": "x"}"#);
    let off = off.unwrap();
    assert_eq!((off.status, error_code(&off)), (403, "operator_disabled"), "{}", off.text);
    // Nothing reached the participant; the server still serves.
    assert!(branches(&client, &a.base(), "all").is_empty(), "a bad request runs nothing");
    assert_eq!(get(&client, &format!("{base}/healthz")).status, 200);
    let good = submit(&serve, &json!({"services": [url], "id": id}));
    assert_eq!(good.json["status"], "committed", "{}", good.text);
    assert_eq!(state_of(&client, &a.base(), &id, 0).as_deref(), Some("committed"));
}

#[test]
fn health_readiness_and_metrics() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    let full = participant(root.path(), "full", &["--capacity", "0"]);
    let serve = serve(&root.path().join("coordinator"), &[]);
    let client = client();
    let base = serve.base();
    assert_eq!(get(&client, &format!("{base}/healthz")).json, json!({"ok": true}));
    assert_eq!(get(&client, &format!("{base}/readyz")).json, json!({"ready": true}));
    assert_eq!(submit(&serve, &json!({"services": [prepare_url(&a)]})).json["status"], "committed");
    let refused = json!({"services": [prepare_url(&a), {"prepare": prepare_url(&full), "payload": {"amount": 1}}]});
    assert_eq!(submit(&serve, &refused).json["status"], "rolled_back");
    let metrics = get(&client, &format!("{base}/metrics"));
    assert_eq!(metrics.status, 200);
    for line in [
        "dtc_transactions_total{outcome=\"committed\"} 1\n",
        "dtc_transactions_total{outcome=\"aborted\",reason=\"refused\"} 1\n",
        "# TYPE dtc_log_syncs_total counter\n",
        "dtc_parked_calls 0\n",
        "dtc_unfinished_transactions{state=\"stuck\"} 0\n",
    ] {
        assert!(metrics.text.contains(line), "{line:?} in:\n{}", metrics.text);
    }
}

#[test]
fn operator_actions_need_the_right_token_and_then_work() {
    let root = tempfile::tempdir().unwrap();
    let a = participant(root.path(), "a", &[]);
    // A participant whose commits are refused (409) until it is fixed.
    let frozen = Arc::new(AtomicBool::new(true));
    let is_frozen = Arc::clone(&frozen);
    let ledger = Stub::start(move |phase, _, _| match phase {
        // SeqCst: flipped by the test between calls it waits for.
        "commit" if is_frozen.load(Ordering::SeqCst) => {
            Response::json(409, &json!({"code": "frozen", "message": "the ledger is frozen"}))
        }
        _ => Response::json(200, &json!({"ok": true})),
    });
    let serve = serve(&root.path().join("coordinator"), &["--operator-token", TOKEN]);
    let base = serve.base();
    let client = client();
    let id = tx_id(5, Duration::ZERO);
    let ledger_url = format!("{}/prepare", ledger.base);
    let answer = submit(&serve, &json!({"services": [prepare_url(&a), ledger_url], "id": id}));
    assert_eq!(answer.json["status"], "committed", "{}", answer.text);
    assert_eq!(answer.json["pending"], json!([ledger_url]), "the ledger has not acknowledged");
    // It is listed as stuck, with the participant's reason.
    let stuck = get(&client, &format!("{base}/v1/transactions?state=stuck")).json;
    assert!(stuck.as_array().unwrap().iter().any(|u| u["tx"] == id), "{stuck}");
    let recorded = status(&serve, &id);
    assert_eq!((recorded["status"].as_str(), recorded["state"].as_str()), (Some("committed"), Some("stuck")));
    let p = &recorded["participants"][0];
    assert_eq!(
        (p["branch"].as_u64(), p["phase"].as_str(), p["attempts"].as_u64()),
        (Some(1), Some("parked-commit"), Some(1))
    );
    assert_eq!(p["last_error"]["code"], "frozen", "{recorded}");

    let retry = format!("{base}/v1/transactions/{id}/retry-now");
    let resolve = format!("{base}/v1/transactions/{id}/resolve");
    let reason = br#"{"reason": "the ledger is fixed"}"#;
    let wrong = format!("Bearer {}x", TOKEN);
    let right = format!("Bearer {TOKEN}");
    // No bearer token: 401 (with a challenge); a wrong one: 403.
    for (url, headers, status, code) in [
        (&retry, vec![], 401, "unauthorized"),
        (&retry, vec![("Authorization", TOKEN)], 401, "unauthorized"),
        (&retry, vec![("Authorization", wrong.as_str())], 403, "forbidden"),
        (&resolve, vec![("Authorization", wrong.as_str())], 403, "forbidden"),
    ] {
        let answer = try_post(&client, url, &headers, reason).unwrap();
        assert_eq!((answer.status, error_code(&answer)), (status, code), "{url} {headers:?}: {}", answer.text);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ledger.calls("commit"), 1, "refused actions did nothing");
    // The right token: the parked commit is delivered again, and now lands.
    frozen.store(false, Ordering::SeqCst);
    let auth = [("Authorization", right.as_str())];
    let answer = try_post(&client, &retry, &auth, reason).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!((&answer.json["transactions"], &answer.json["redelivered"]), (&json!([id]), &json!(1)));
    wait_until(SETTLE, "the commit is acknowledged", || status(&serve, &id)["state"].is_null());
    assert_eq!(ledger.calls("commit"), 2);
    assert_eq!(status(&serve, &id)["status"], "committed");
    // Resolve: refused when unsafe (an id that may still be running), done
    // for an undecided id old enough, whose resubmission is then an abort.
    let fresh = tx_id(6, Duration::ZERO);
    let abort = br#"{"resolution": "abort", "reason": "the client gave up"}"#;
    let url = format!("{base}/v1/transactions/{fresh}/resolve");
    let answer = try_post(&client, &url, &auth, abort).unwrap();
    assert_eq!((answer.status, error_code(&answer)), (409, "unsafe_resolution"), "{}", answer.text);
    let old = tx_id(7, Duration::from_secs(300));
    let url = format!("{base}/v1/transactions/{old}/resolve");
    let answer = try_post(&client, &url, &auth, abort).unwrap();
    assert_eq!((answer.status, answer.json["resolution"].as_str()), (200, Some("abort")), "{}", answer.text);
    let late = submit(&serve, &json!({"services": [prepare_url(&a)], "id": old}));
    assert_eq!(late.json["status"], "rolled_back", "{}", late.text);
    assert!(late.json["errors"][0].as_str().unwrap().contains("the client gave up"), "{}", late.text);
    assert_eq!(state_of(&client, &a.base(), &old, 0), None, "never sent to a participant");
}

#[test]
fn a_coordinator_killed_between_the_decision_and_the_acknowledgements_commits_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    // c applies its commit, then takes 5 s to say so.
    let ps = three(root.path(), &["--stall", "1", "--stall-ms", "5000", "--stall-phase", "commit"]);
    let dir = root.path().join("coordinator");
    let flags = ["--call-timeout-ms", "15000"];
    let mut first = serve(&dir, &flags);
    let id = tx_id(8, Duration::ZERO);
    let body = json!({"services": ps.iter().map(prepare_url).collect::<Vec<_>>(), "timeout": 20000, "id": id});
    let url = format!("{}/v1/transactions", first.base());
    let posted = body.clone();
    let client_thread = std::thread::spawn(move || try_post(&client(), &url, &[], posted.to_string().as_bytes()));
    let client = client();
    wait_until(SETTLE, "every participant has the commit", || {
        ps.iter().enumerate().all(|(i, p)| state_of(&client, &p.base(), &id, i as u16).as_deref() == Some("committed"))
    });
    // Decided and recorded; c has not acknowledged yet.
    let recorded = status(&first, &id);
    assert_eq!(
        (recorded["status"].as_str(), recorded["state"].as_str()),
        (Some("committed"), Some("committing")),
        "{recorded}"
    );
    let waiting: Vec<&Value> =
        recorded["participants"].as_array().unwrap().iter().filter(|p| p["branch"] == 2).collect();
    assert_eq!(waiting.len(), 1, "{recorded}");
    assert!(matches!(waiting[0]["phase"].as_str(), Some("awaiting-ack" | "committing")), "{recorded}");
    first.kill();
    // The client got no answer, or (on a very slow machine) the true one.
    if let Ok(answer) = client_thread.join().unwrap() {
        assert_eq!(answer.json["status"], "committed", "{}", answer.text);
    }
    let second = serve(&dir, &flags);
    assert_eq!(get(&client, &format!("{}/readyz", second.base())).status, 200);
    wait_until(SETTLE, "the restarted coordinator finishes the commit", || {
        let recorded = status(&second, &id);
        recorded["status"] == "committed" && recorded["state"].is_null()
    });
    let committed = Some("committed".to_string());
    assert_eq!(settled(&[&ps[0], &ps[1], &ps[2]], &id), [committed.clone(), committed.clone(), committed]);
    let again = submit(&second, &body);
    assert_eq!(again.json, json!({"transactionId": id, "status": "committed", "errors": [], "pending": []}));
    let open = get(&client, &format!("{}/v1/transactions", second.base())).json;
    assert_eq!(open, json!([]), "nothing left unfinished");
}

#[test]
fn a_coordinator_killed_between_the_prepares_and_the_decision_rolls_back_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    // c prepares, then takes 6 s to vote.
    let ps = three(root.path(), &["--stall", "1", "--stall-ms", "6000", "--stall-phase", "prepare"]);
    let dir = root.path().join("coordinator");
    let mut first = serve(&dir, &["--call-timeout-ms", "15000"]);
    let id = tx_id(9, Duration::ZERO);
    let body = json!({"services": ps.iter().map(prepare_url).collect::<Vec<_>>(), "timeout": 20000, "id": id});
    let url = format!("{}/v1/transactions", first.base());
    let posted = body.clone();
    let client_thread = std::thread::spawn(move || try_post(&client(), &url, &[], posted.to_string().as_bytes()));
    let client = client();
    wait_until(SETTLE, "every participant has prepared", || {
        ps.iter().enumerate().all(|(i, p)| state_of(&client, &p.base(), &id, i as u16).as_deref() == Some("prepared"))
    });
    first.kill();
    let answer = client_thread.join().unwrap();
    assert!(answer.is_err(), "no decision, so no answer: {answer:?}");
    let second = serve(&dir, &["--call-timeout-ms", "2000"]);
    // Presumed abort: recovery rolls back every branch the log had begun.
    let rolled_back = Some("rolled_back".to_string());
    assert_eq!(settled(&[&ps[0], &ps[1], &ps[2]], &id), [rolled_back.clone(), rolled_back.clone(), rolled_back]);
    wait_until(SETTLE, "the rollbacks are acknowledged", || status(&second, &id)["state"].is_null());
    let recorded = status(&second, &id);
    // No decision was logged, so none is recorded: `unknown`, which presumed
    // abort makes an abort (a recorded `rolled_back` would do as well).
    assert!(matches!(recorded["status"].as_str(), Some("rolled_back" | "unknown")), "never committed: {recorded}");
    // The client's retry of the same id is an abort, and changes nothing.
    let again = submit(&second, &body);
    assert_eq!(again.json["status"], "rolled_back", "{}", again.text);
    // (c stalls its answer to the new prepare too, which it refuses: the
    // rollback that follows waits for the call timeout.)
    let list = format!("{}/v1/transactions", second.base());
    wait_until(SETTLE, "nothing left unfinished", || get(&client, &list).json == json!([]));
    let states = settled(&[&ps[0], &ps[1], &ps[2]], &id);
    assert!(states.iter().all(|s| s.as_deref() == Some("rolled_back")), "{states:?}");
}
