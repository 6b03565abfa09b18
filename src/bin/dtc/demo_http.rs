//! `dtc demo --http`: three reference participants (flight, hotel,
//! payment) with injected faults and a coordinator service (`dtc serve`) on
//! loopback ports; concurrent bookings through the coordinator's JSON API,
//! one coordinator SIGKILL and restart mid-run; then a summary, and a check
//! that every participant agrees with every recorded outcome.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dtc::TxId;
use hdrhistogram::Histogram;

use crate::procs::{Proc, free_port};

const PARTICIPANTS: [(&str, &[&str]); 3] = [
    ("flight", &["--refuse", "0.01"]),
    ("hotel", &["--fail", "0.02"]),
    ("payment", &["--stall", "0.003", "--stall-ms", "600"]),
];

/// What a client was told about one booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Committed,
    RolledBack,
    /// No answer (the coordinator was killed meanwhile) or `failed`.
    Nothing,
}

fn participant(name: &str, faults: &[&str], dir: &std::path::Path, seed: u64) -> Result<Proc, String> {
    let mut args: Vec<String> =
        ["participant", "--name", name, "--listen", "127.0.0.1:0", "--dir"].iter().map(|s| s.to_string()).collect();
    args.push(dir.join(name).display().to_string());
    args.extend(faults.iter().map(|s| s.to_string()));
    args.extend(["--seed".to_string(), seed.to_string()]);
    Proc::start(&args, None, Duration::from_secs(20))
}

fn coordinator(dir: &std::path::Path, port: u16) -> Result<Proc, String> {
    let args: Vec<String> = [
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--call-timeout-ms",
        "300",
        "--lanes",
        "48",
        "--handlers",
        "48",
        "--dir",
        &dir.join("coordinator").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Proc::start(&args, Some("ready"), Duration::from_secs(60))
}

/// POSTs `body` as JSON; the answer's JSON, if any.
pub fn post_json(agent: &ureq::Agent, url: &str, body: &serde_json::Value) -> Option<serde_json::Value> {
    let bytes = serde_json::to_vec(body).ok()?;
    let mut response = agent.post(url).header("Content-Type", "application/json").send(&bytes[..]).ok()?;
    serde_json::from_reader(response.body_mut().as_reader()).ok()
}

/// GETs `url`; the answer's JSON, if any.
pub fn get_json(agent: &ureq::Agent, url: &str) -> Option<serde_json::Value> {
    let mut response = agent.get(url).call().ok()?;
    serde_json::from_reader(response.body_mut().as_reader()).ok()
}

fn fresh_id(n: u64) -> TxId {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    TxId::from_u128((u128::from(ns) << 64) | u128::from(std::process::id()) << 32 | u128::from(n))
}

pub fn run(seconds: u64, threads: u32, seed: u64) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("dtc-demo-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, seconds, threads, seed);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    dir: &std::path::Path,
    seconds: u64,
    threads: u32,
    seed: u64,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut participants = Vec::new();
    for (i, (name, faults)) in PARTICIPANTS.iter().enumerate() {
        participants.push((*name, participant(name, faults, dir, seed + i as u64)?));
    }
    let port = free_port()?;
    let mut serve = coordinator(dir, port)?;
    let base = format!("http://127.0.0.1:{port}");
    println!(
        "dtc demo --http: coordinator on 127.0.0.1:{port}; {}; {threads} client threads, {seconds} s; faults: flight refuses 1%, hotel answers 503 on 2%, payment stalls 0.3% past the 300 ms call timeout; the coordinator is killed (SIGKILL) and restarted half-way",
        participants.iter().map(|(n, p)| format!("{n} on {}", p.addr)).collect::<Vec<_>>().join(", ")
    );
    let services: Vec<String> = participants.iter().map(|(_, p)| format!("http://{}/prepare", p.addr)).collect();
    let told: Mutex<HashMap<TxId, Told>> = Mutex::new(HashMap::new());
    let latency = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)?);
    let started = Instant::now();
    let stop = started + Duration::from_secs(seconds);
    let crash_at = started + Duration::from_secs(seconds) / 2;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .max_idle_connections_per_host(threads as usize)
        .build()
        .into();
    let mut restarted = false;
    std::thread::scope(|scope| -> Result<(), String> {
        for t in 0..threads {
            let (agent, services, told, latency, base) = (&agent, &services, &told, &latency, &base);
            scope.spawn(move || {
                let mut n = u64::from(t) << 24;
                while Instant::now() < stop {
                    n += 1;
                    let id = fresh_id(n);
                    let body = serde_json::json!({
                        "id": id.to_string(),
                        "timeout": 2000,
                        "services": services.iter().map(|s| serde_json::json!({"prepare": s, "payload": {"amount": 1}})).collect::<Vec<_>>(),
                    });
                    let sent = Instant::now();
                    let answer = post_json(agent, &format!("{base}/v1/transactions"), &body);
                    let status = answer.as_ref().and_then(|a| a["status"].as_str().map(str::to_string));
                    let outcome = match status.as_deref() {
                        Some("committed") => Told::Committed,
                        Some("rolled_back") => Told::RolledBack,
                        _ => Told::Nothing,
                    };
                    if outcome != Told::Nothing
                        && let Ok(mut h) = latency.lock()
                    {
                        let _ = h.record(sent.elapsed().as_micros() as u64);
                    }
                    if let Ok(mut told) = told.lock() {
                        told.insert(id, outcome);
                    }
                    if outcome == Told::Nothing {
                        std::thread::sleep(Duration::from_millis(20)); // the coordinator is restarting
                    }
                }
            });
        }
        std::thread::sleep(crash_at.saturating_duration_since(Instant::now()));
        serve.kill();
        println!("coordinator killed at {:.1} s; restarting on the same directory", started.elapsed().as_secs_f64());
        serve = coordinator(dir, port)?;
        restarted = true;
        println!("coordinator back at {:.1} s (recovered its log)", started.elapsed().as_secs_f64());
        Ok(())
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    // Every pending transaction finishes without an operator.
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        let open = get_json(&agent, &format!("{base}/v1/transactions"));
        if open.as_ref().and_then(|v| v.as_array()).is_some_and(Vec::is_empty) || Instant::now() > settle {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let told = told.into_inner().map_err(|_| "a client thread panicked")?;
    // What each participant holds, per transaction.
    let mut states: Vec<HashMap<TxId, String>> = Vec::new();
    for (_, p) in &participants {
        let list = get_json(&agent, &format!("http://{}/branches?state=all", p.addr))
            .and_then(|v| v.as_array().cloned())
            .ok_or_else(|| format!("participant on {} did not list its branches", p.addr))?;
        states.push(
            list.into_iter()
                .filter_map(|b| {
                    let tx = b["transaction"].as_str()?.parse().ok()?;
                    Some((tx, b["state"].as_str()?.to_string()))
                })
                .collect(),
        );
    }
    let (mut committed, mut rolled_back, mut unanswered, mut disagreements, mut lied) = (0, 0, 0, 0, 0);
    for (&tx, &outcome) in &told {
        let recorded = get_json(&agent, &format!("{base}/v1/transactions/{tx}"))
            .ok_or_else(|| format!("the coordinator did not answer for {tx}"))?;
        let is_committed = recorded["status"] == "committed";
        match outcome {
            Told::Committed => committed += 1,
            Told::RolledBack => rolled_back += 1,
            Told::Nothing => unanswered += 1,
        }
        if (outcome == Told::Committed && !is_committed) || (outcome == Told::RolledBack && is_committed) {
            lied += 1;
        }
        for (pi, held) in states.iter().enumerate() {
            let state = held.get(&tx).map(String::as_str);
            let agrees = if is_committed {
                state == Some("committed")
            } else {
                state != Some("committed") && state != Some("prepared")
            };
            if !agrees {
                disagreements += 1;
                if disagreements <= 5 {
                    let name = participants[pi].0;
                    println!(
                        "  DISAGREEMENT {tx}: recorded {}, {name} holds {state:?}, told {outcome:?}",
                        recorded["status"]
                    );
                }
            }
        }
    }
    let h = latency.into_inner().map_err(|_| "poisoned")?;
    println!(
        "\nbookings       {} ({committed} committed, {rolled_back} rolled back, {unanswered} unanswered: in flight at the kill or refused while down)",
        told.len()
    );
    println!("throughput     {:.0} bookings/s answered", (committed + rolled_back) as f64 / elapsed);
    println!(
        "latency        p50 {:.2} ms, p99 {:.2} ms",
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3
    );
    println!("restarted      {}", if restarted { "yes, recovery finished every pending transaction" } else { "no" });
    let agree = disagreements == 0 && lied == 0;
    println!(
        "agreement      {} ({} participants × {} bookings checked; {lied} answers contradicted by the record)",
        if agree { "every participant agrees with every recorded outcome" } else { "NO" },
        participants.len(),
        told.len()
    );
    drop(serve);
    Ok(if agree { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
