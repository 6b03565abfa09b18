//! Real-process crash test: `dtc bench --durability sync --ack-log` is killed
//! with SIGKILL at random moments and restarted on the same directory. After
//! every kill, every acknowledged outcome is recorded as acknowledged, money is
//! conserved and no balance is negative.
//!
//! Runs once with each log backend (`--log-backend pwrite`, the default, and
//! `mmap`). `DTC_CRASH_KILLS` sets the number of kills (default 100); the ignored test
//! `ten_thousand_kills` runs 10 000 (`cargo test --release --test
//! crash_process -- --ignored`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: u64 = 2_000;
const BALANCE: i64 = 50;

fn dtc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dtc"))
}

fn acknowledged(ack_log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(ack_log).unwrap_or_default();
    // A kill can cut the last line short: only complete lines count.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

fn check(dir: &Path, ack_log: &Path, kill: usize, seed: u64) {
    let acked = acknowledged(ack_log);
    if !acked.is_empty() {
        let out = dtc().args(["status", "--json", "--dir"]).arg(dir).arg("--ids").arg(ack_log).output().unwrap();
        assert!(
            out.status.success(),
            "kill {kill} (seed {seed}): status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let statuses: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let recorded: std::collections::HashMap<String, String> = statuses
            .iter()
            .map(|s| (s["id"].as_str().unwrap().to_string(), s["status"].as_str().unwrap().to_string()))
            .collect();
        for (id, outcome) in &acked {
            assert_eq!(
                recorded.get(id).map(String::as_str),
                Some(outcome.as_str()),
                "kill {kill} (seed {seed}): acknowledged {outcome} id {id} is recorded otherwise"
            );
        }
    }
    let out = dtc().args(["recover", "--json", "--dir"]).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "kill {kill} (seed {seed}): recover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["accounts"], ACCOUNTS, "kill {kill} (seed {seed})");
    assert_eq!(
        summary["total_balance"],
        i64::try_from(ACCOUNTS).unwrap() * BALANCE,
        "kill {kill} (seed {seed}): money not conserved"
    );
    assert_eq!(summary["negative_balances"], 0, "kill {kill} (seed {seed})");
}

fn run(kills: usize, seed: u64, log_backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut rng = SmallRng::seed_from_u64(seed);
    for kill in 0..kills {
        let ack_log = tmp.path().join(format!("ack-{kill}"));
        let mut child = dtc()
            .args(["bench", "--durability", "sync", "--threads", "4", "--services", "4", "--seconds", "60"])
            .args(["--accounts", &ACCOUNTS.to_string(), "--balance", &BALANCE.to_string()])
            .args(["--log-backend", log_backend])
            .args(["--seed", &rng.random::<u32>().to_string(), "--dir"])
            .arg(&dir)
            .arg("--ack-log")
            .arg(&ack_log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(5..250)));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        check(&dir, &ack_log, kill, seed);
    }
}

#[test]
fn acknowledged_outcomes_survive_sigkill() {
    let kills = std::env::var("DTC_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let seed = std::env::var("DTC_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    run(kills, seed, "pwrite");
}

/// The same with the log written through the mapping (the other backend).
#[test]
fn acknowledged_outcomes_survive_sigkill_with_the_mapped_log() {
    let kills = std::env::var("DTC_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let seed = std::env::var("DTC_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    run(kills, seed ^ 0x3a3a, "mmap");
}

#[test]
#[ignore = "long: 10 000 kills"]
fn ten_thousand_kills() {
    run(10_000, 0xdead, "pwrite");
}
