//! `dtc txs`, `dtc retry-now`, `dtc resolve` as an operator runs them: on a
//! directory held by a running coordinator in another process (through its
//! control channel), then on the same directory after that process was
//! SIGKILLed, and on a directory left by a SIGKILLed `dtc bench`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::flaky::{Flaky, Switches};
use dtc::{Coordinator, Durability, Ledger, Outcome, RetryPolicy, Transfer};

fn dtc(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dtc")).args(args).arg("--dir").arg(dir).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stdout {}\nstderr {}", String::from_utf8_lossy(&out.stdout), stderr(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

/// Run by `a_running_coordinator_is_operated_from_another_process` in a
/// child process: parks one commit, prints its id, then waits to be killed.
#[test]
#[ignore = "a child process of another test"]
fn child_holds_a_parked_commit() {
    let Ok(dir) = std::env::var("DTC_CHILD_DIR") else { return };
    let bank = Ledger::new();
    bank.create_account("a", 1_000).unwrap();
    let dtc = Coordinator::builder()
        .durability(Durability::Sync)
        .dir(&dir)
        .segment_size_bytes(1 << 20)
        .service("bank", bank)
        .service("shipping", Flaky(Switches::failing("unavailable", u32::MAX, 0)))
        .retry_for("shipping", RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), 3))
        .open()
        .unwrap();
    let tx = dtc.new_tx_id();
    let outcome = dtc.execute_as(tx, &[Transfer::new("bank", "a", "shipping", "parcel", 5)]).unwrap();
    assert_eq!(outcome, Outcome::CommitPending);
    while dtc.parked_count() == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("READY {tx}");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_running_coordinator_is_operated_from_another_process() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holds_a_parked_commit", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("DTC_CHILD_DIR", dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let tx = loop {
        let line = lines.next().expect("the child ended before parking").unwrap();
        // The harness prints "test NAME ... " on the same line first.
        if let Some((_, tx)) = line.split_once("READY ") {
            break tx.trim().to_string();
        }
    };

    // Live, through the running process.
    let listed = json(&dtc(&["txs", "--json", "--state", "stuck"], dir));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let entry = &listed[0];
    assert_eq!((entry["tx"].as_str(), entry["kind"].as_str()), (Some(tx.as_str()), Some("2pc")));
    let p = &entry["participants"][0];
    assert_eq!(
        (p["name"].as_str(), p["phase"].as_str(), p["attempts"].as_u64()),
        (Some("shipping"), Some("parked-commit"), Some(3))
    );
    assert_eq!(p["last_error"]["code"], "unavailable");
    assert!(ok(&dtc(&["txs", "--state", "rolling-back"], dir)).contains("0 unfinished"));
    let text = ok(&dtc(&["txs"], dir));
    assert!(text.contains("last error unavailable"), "{text}");

    let refused = dtc(&["resolve", "--tx", &tx, "--abort", "--reason", "undo"], dir);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("refused to resolve"), "{}", stderr(&refused));
    let retried = json(&dtc(&["retry-now", "--json", "--tx", &tx, "--reason", "try again"], dir));
    assert_eq!(retried["redelivered"], 1);
    // Still failing: it parks again after three more attempts.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while json(&dtc(&["txs", "--json", "--state", "stuck"], dir)).as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the retried commit did not park again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = json(&dtc(&["retry-now", "--json", "--all-parked"], dir));
    assert_eq!(all["transactions"], serde_json::json!([tx]));

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Offline: the log shows the commit decided, the acknowledgement missing.
    let listed = json(&dtc(&["txs", "--json"], dir));
    assert_eq!(listed[0]["tx"].as_str(), Some(tx.as_str()), "{listed}");
    assert_eq!(listed[0]["state"], "committing");
    assert_eq!(listed[0]["participants"][0]["phase"], "awaiting-ack");
    let offline_retry = dtc(&["retry-now", "--tx", &tx], dir);
    assert_eq!(offline_retry.status.code(), Some(1));
    assert!(stderr(&offline_retry).contains("no coordinator is running"), "{}", stderr(&offline_retry));
    let refused = dtc(&["resolve", "--tx", &tx, "--abort", "--reason", "undo"], dir);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let resolved = json(&dtc(&["resolve", "--json", "--tx", &tx, "--commit", "--reason", "booked by phone"], dir));
    assert_eq!(resolved["settled"], serde_json::json!(["shipping"]));
    assert!(ok(&dtc(&["txs"], dir)).contains("0 unfinished"));
    ok(&dtc(&["verify"], dir));
    let ids = dir.join("ids");
    std::fs::write(&ids, format!("{tx}\n")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_dtc"))
        .args(["status", "--json", "--dir"])
        .arg(dir)
        .arg("--ids")
        .arg(&ids)
        .output()
        .unwrap();
    let status = json(&status);
    assert_eq!(status[0]["status"], "committed");
    let actions: Vec<&str> =
        status[0]["operator"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["retry-now", "retry-now", "resolve-commit"], "the audit trail: {status}");
    assert_eq!(status[0]["operator"][2]["reason"], "booked by phone");
}

#[test]
fn a_killed_bench_directory_is_resolved_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let acks = tmp.path().join("acks");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_dtc"))
        .args(["bench", "--durability", "sync", "--threads", "2", "--services", "2", "--seconds", "60"])
        .args(["--accounts", "100", "--dir"])
        .arg(&dir)
        .arg("--ack-log")
        .arg(&acks)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Until something is acknowledged, then SIGKILL.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&acks).map_or(true, |s| s.lines().count() < 10) {
        assert!(std::time::Instant::now() < deadline, "bench acknowledged nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    bench.kill().unwrap();
    bench.wait().unwrap();
    let acked =
        std::fs::read_to_string(&acks).unwrap().lines().next().unwrap().split_whitespace().next().unwrap().to_string();

    assert!(ok(&dtc(&["txs", "--state", "stuck"], &dir)).contains("0 unfinished"));
    let refused = dtc(&["resolve", "--tx", &acked, "--abort", "--reason", "undo"], &dir);
    assert_eq!(refused.status.code(), Some(1), "an acknowledged commit is never aborted");
    assert!(stderr(&refused).contains("commit decision is recorded"), "{}", stderr(&refused));
    let ancient = "00000000000000000000000000000007";
    let refused = dtc(&["resolve", "--tx", ancient, "--abort", "--reason", "fence"], &dir);
    assert_eq!(refused.status.code(), Some(1), "older than the log's memory: its outcome may be forgotten");
    assert!(stderr(&refused).contains("idempotency horizon"), "{}", stderr(&refused));
    // An id issued now was never run: no decision is recorded.
    let now_ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let lost = format!("{now_ns:016x}{:016x}", 1);
    let lost = lost.as_str();
    let refused = dtc(&["resolve", "--tx", lost, "--commit", "--reason", "force"], &dir);
    assert_eq!(refused.status.code(), Some(1), "no decision: commit refused");
    assert!(stderr(&refused).contains("no commit decision"), "{}", stderr(&refused));
    ok(&dtc(&["resolve", "--tx", lost, "--abort", "--reason", "fenced after the crash"], &dir));
    let ids = tmp.path().join("ids");
    std::fs::write(&ids, format!("{lost}\n")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_dtc"))
        .args(["status", "--dir"])
        .arg(&dir)
        .arg("--ids")
        .arg(&ids)
        .output()
        .unwrap();
    assert!(ok(&status).contains("aborted by an operator: fenced after the crash"));
    let missing = Command::new(env!("CARGO_BIN_EXE_dtc"))
        .args(["resolve", "--tx", lost, "--reason", "r", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "--commit or --abort is required");
    ok(&dtc(&["verify"], &dir));
    let help = Command::new(env!("CARGO_BIN_EXE_dtc")).args(["resolve", "--help"]).output().unwrap();
    assert!(ok(&help).contains("Refused"), "--help explains the refusals");
}
