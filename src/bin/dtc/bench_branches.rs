//! `dtc bench --http` and `dtc bench --branches N`: transactions of payload
//! branches to participants that keep their own state — reference
//! participant services over loopback HTTP (each its own process), or
//! in-process participants recording every phase in a durable branch store —
//! instead of ledger transfers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtc::{
    Branch, Coordinator, Durability, Transaction,
    remote::{Endpoints, HttpParticipant},
    store::BranchStoreOptions,
};
use hdrhistogram::Histogram;

use crate::procs::Proc;

/// What the participants are.
pub enum Participants {
    /// `dtc participant` processes, reached over HTTP.
    Http,
    /// In-process participants over a branch store each.
    Stored,
}

pub struct Spec {
    pub participants: Participants,
    pub count: usize,
    pub threads: u32,
    pub seconds: f64,
    pub sync: bool,
    pub dir: Option<PathBuf>,
}

/// The measured run, in `dtc bench`'s report fields.
pub struct Measured {
    pub system: &'static str,
    pub committed: u64,
    pub aborted: u64,
    pub errors: u64,
    pub tx_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub records_per_sync: Option<f64>,
}

/// Where the run keeps its files: `--dir`, or a fresh temporary directory
/// removed afterwards.
struct Scratch {
    dir: PathBuf,
    remove: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn scratch(dir: &Option<PathBuf>) -> std::io::Result<Scratch> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok(Scratch { dir: dir.clone(), remove: false })
        }
        None => {
            let dir = std::env::temp_dir().join(format!("dtc-bench-branches-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            Ok(Scratch { dir, remove: true })
        }
    }
}

fn reference_participant(name: &str, dir: &Path, sync: bool, threads: u32) -> Result<Proc, String> {
    let mut args: Vec<String> = ["participant", "--name", name, "--listen", "127.0.0.1:0", "--max-connections", "1024"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--handler-threads".into(), threads.clamp(1, 64).to_string()]);
    args.extend(["--dir".into(), dir.join(name).display().to_string()]);
    if !sync {
        args.push("--no-sync".into());
    }
    Proc::start(&args, None, Duration::from_secs(30))
}

pub fn run(spec: Spec) -> Result<Measured, Box<dyn std::error::Error>> {
    let scratch = scratch(&spec.dir)?;
    let lanes = (spec.threads as usize).clamp(1, 64);
    let names: Vec<String> = (0..spec.count).map(|i| format!("p{i}")).collect();
    let mut builder = Coordinator::builder().max_branches(spec.count.max(1));
    if spec.sync {
        builder = builder.durability(Durability::Sync).dir(scratch.dir.join("coordinator"));
    }
    let mut processes = Vec::new();
    let system = match spec.participants {
        Participants::Http => {
            for name in &names {
                let proc = reference_participant(name, &scratch.dir, spec.sync, spec.threads)?;
                let endpoints = Endpoints::from_base(&format!("http://{}", proc.addr))?;
                builder = builder.concurrent_service(name.clone(), HttpParticipant::new(endpoints, lanes), lanes);
                processes.push(proc);
            }
            "dtc-http"
        }
        Participants::Stored => {
            for name in &names {
                let store = BranchStoreOptions::default().sync(spec.sync).open(scratch.dir.join(name))?;
                let participant = dtc::store::RecordingParticipant::recording(Arc::new(store));
                builder = builder.concurrent_service(name.clone(), participant, lanes);
            }
            "dtc-branches"
        }
    };
    let dtc = builder.open()?;
    let payload = br#"{"amount":1}"#;
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(spec.seconds);
    let tallies: Vec<(u64, u64, u64, Histogram<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..spec.threads)
            .map(|_| {
                let (dtc, names) = (&dtc, &names);
                scope.spawn(move || {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
                    let (mut committed, mut aborted, mut errors) = (0u64, 0u64, 0u64);
                    let tx = names.iter().fold(Transaction::new(), |t, n| t.branch(Branch::new(n, &payload[..])));
                    while Instant::now() < stop {
                        let sent = Instant::now();
                        match dtc.run(&tx) {
                            Ok(o) if o.is_committed() => committed += 1,
                            Ok(_) => aborted += 1,
                            Err(_) => errors += 1,
                        }
                        let _ = h.record(sent.elapsed().as_nanos() as u64);
                    }
                    (committed, aborted, errors, h)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut committed, mut aborted, mut errors) = (0, 0, 0);
    for (c, a, e, h) in &tallies {
        committed += c;
        aborted += a;
        errors += e;
        latency.add(h)?;
    }
    let records_per_sync = dtc.log_stats().map(|s| s.records as f64 / s.syncs.max(1) as f64);
    dtc.shutdown()?;
    drop(dtc);
    drop(processes);
    Ok(Measured {
        system,
        committed,
        aborted,
        errors,
        tx_per_s: (committed + aborted) as f64 / elapsed,
        p50_us: latency.value_at_quantile(0.5) as f64 / 1e3,
        p99_us: latency.value_at_quantile(0.99) as f64 / 1e3,
        records_per_sync,
    })
}
