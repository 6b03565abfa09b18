//! `dtc bench` (dtc or the naive baseline, single or batched, uniform or
//! skewed), `dtc bench --limits` and `dtc memory`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use dtc::{Coordinator, Durability};

use crate::naive::Naive;
use crate::workload::{Accounts, Shape, System, Tally, ledgers, micros, run_thread, service_name};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DurabilityArg {
    None,
    Sync,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum SystemArg {
    /// The engine.
    Dtc,
    /// One global mutex over hash maps; one fdatasync per transaction.
    Naive,
}

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Which system runs the workload.
    #[arg(long, value_enum, default_value_t = SystemArg::Dtc)]
    system: SystemArg,
    /// Number of services.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    services: u16,
    /// Number of accounts (at least 2), spread over the services.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(2..=100_000_000))]
    accounts: u64,
    /// Caller threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    threads: u32,
    /// Run time in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Legs per transaction.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    legs: u16,
    /// Transactions per call (`execute_batch`); 1 submits them one by one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    batch: u32,
    /// Choose accounts Zipf-distributed with this exponent (e.g. 0.99) instead of uniformly.
    #[arg(long)]
    skew: Option<f64>,
    /// Starting balance of every account.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(0..))]
    balance: i64,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Durability mode.
    #[arg(long, value_enum, default_value_t = DurabilityArg::None)]
    durability: DurabilityArg,
    /// Data directory (durability sync): reused if it holds a log.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Append `<tx-id> committed|aborted` per outcome to this file (direct writes).
    #[arg(long)]
    ack_log: Option<std::path::PathBuf>,
    /// Write the engine's metrics in the Prometheus text format to this file at the end.
    #[arg(long)]
    metrics_out: Option<std::path::PathBuf>,
    /// Group-commit gather limit in microseconds (durability sync; 0 syncs at once).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    gather_us: Option<u64>,
    /// Group-commit syncs in flight at once (durability sync; 1 = one at a time).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4))]
    syncs_in_flight: Option<u64>,
    /// How the log writes its segments (durability sync): `pwrite` (+ fdatasync) or `mmap` (+ msync).
    #[arg(long, default_value = "pwrite")]
    log_backend: dtc::LogBackend,
    /// Measure the machine's limits (sync latency, bandwidth, channel, lock) instead.
    #[arg(long)]
    limits: bool,
    /// Transactions of payload branches to reference participant services over
    /// loopback HTTP (`dtc participant` processes; their state durable too with
    /// --durability sync) instead of ledger transfers.
    #[arg(long)]
    http: bool,
    /// With --http: participants per transaction (one process each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    participants: u16,
    /// Transactions of this many payload branches to in-process participants
    /// that record every phase in a durable branch store of their own
    /// (synced with --durability sync) instead of ledger transfers.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    branches: Option<u16>,
    /// Resolve every account once before the run and build transfers from
    /// that (dtc: `Coordinator::account` handles; naive: prebuilt names),
    /// as a caller that reuses accounts would.
    #[arg(long)]
    handles: bool,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

#[derive(serde::Serialize)]
struct Report {
    system: &'static str,
    durability: &'static str,
    threads: u32,
    services: u16,
    accounts: u64,
    legs: u16,
    committed: u64,
    aborted: u64,
    tx_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

pub fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.limits {
        return crate::limits::run(args.dir.as_deref(), args.json);
    }
    if args.http || args.branches.is_some() {
        return branches(&args);
    }
    if let Some(s) = args.skew
        && !(s.is_finite() && s > 0.0)
    {
        return Err(format!("--skew {s}: the Zipf exponent must be a positive number").into());
    }
    if args.ack_log.is_some() && args.batch > 1 {
        return Err("--ack-log needs single transactions (--batch 1)".into());
    }
    let shape = Shape {
        services: usize::from(args.services),
        accounts: args.accounts,
        balance: args.balance,
        legs: usize::from(args.legs),
        skew: args.skew,
    };
    let sync = args.durability == DurabilityArg::Sync;
    let dir = match (&args.dir, sync) {
        (Some(dir), _) => Some(dir.clone()),
        (None, true) => return Err("--durability sync needs --dir".into()),
        (None, false) => None,
    };
    let ack = match &args.ack_log {
        None => None,
        Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
    };
    let expected_total = i128::from(args.balance) * i128::from(args.accounts);

    let (system, coordinator, naive): (&str, Option<Coordinator>, Option<Naive>) = match args.system {
        SystemArg::Dtc => {
            let durability = if sync { Durability::Sync } else { Durability::None };
            let mut builder = Coordinator::builder().durability(durability).max_legs(usize::from(args.legs));
            builder = builder.log_backend(args.log_backend);
            if let Some(syncs) = args.syncs_in_flight {
                builder = builder.group_commit_syncs_in_flight(syncs as usize);
            }
            if let Some(us) = args.gather_us {
                builder = builder.group_commit_gather(std::time::Duration::from_micros(us));
            }
            if let Some(dir) = &dir {
                builder = builder.dir(dir);
            }
            for (s, ledger) in ledgers(&shape)?.into_iter().enumerate() {
                builder = builder.service(service_name(s), ledger);
            }
            ("dtc", Some(builder.open()?), None)
        }
        SystemArg::Naive => {
            let log = match &dir {
                Some(dir) if sync => {
                    std::fs::create_dir_all(dir)?;
                    Some(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("naive.log"))?)
                }
                _ => None,
            };
            ("naive", None, Some(Naive::open(&shape, log)))
        }
    };
    let target: &dyn System = match (&coordinator, &naive) {
        (Some(c), _) => c,
        (None, Some(n)) => n,
        (None, None) => unreachable!("one system is always built"),
    };

    let accounts = match (args.handles, &coordinator) {
        (false, _) => None,
        (true, Some(c)) => Some(Accounts::handles(c, &shape)?),
        (true, None) => Some(Accounts::names(&shape)),
    };

    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(args.seconds);
    let mut total = Tally::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads as usize)
            .map(|t| {
                let (shape, ack, accounts) = (&shape, ack.as_ref(), accounts.as_ref());
                let batch = args.batch as usize;
                scope.spawn(move || run_thread(target, shape, args.seed, t, stop, batch, ack, accounts, |_| {}))
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(tally) => total.merge(&tally),
                Err(_) => total.errors += 1,
            }
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (audit_total, negative) = match (&coordinator, &naive) {
        (Some(c), _) => {
            let audit = c.audit()?;
            if let Some(stats) = c.log_stats() {
                let per_sync = stats.records as f64 / stats.syncs.max(1) as f64;
                tracing::info!(?stats, per_sync, "log");
                if !args.json {
                    println!("log: {} syncs, {} records, {per_sync:.1} records per sync", stats.syncs, stats.records);
                }
            }
            if let Some(path) = &args.metrics_out {
                std::fs::write(path, dtc::ops::render_prometheus(&c.metrics(), c.log_stats().as_ref()))?;
            }
            c.shutdown()?;
            (audit.total, audit.negative)
        }
        (None, Some(n)) => n.total(),
        (None, None) => (0, 0),
    };

    let report = Report {
        system,
        durability: if sync { "sync" } else { "none" },
        threads: args.threads,
        services: args.services,
        accounts: args.accounts,
        legs: args.legs,
        committed: total.committed,
        aborted: total.aborted,
        tx_per_s: (total.committed + total.aborted) as f64 / elapsed,
        p50_us: micros(total.latency_ns.value_at_quantile(0.50)),
        p99_us: micros(total.latency_ns.value_at_quantile(0.99)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} ({}), {} threads, {} services, {} accounts, {} legs, batch {}: {:.0} tx/s, committed {}, aborted {}, p50 {:.1} µs, p99 {:.1} µs (per call)",
            report.system,
            report.durability,
            report.threads,
            report.services,
            report.accounts,
            report.legs,
            args.batch,
            report.tx_per_s,
            report.committed,
            report.aborted,
            report.p50_us,
            report.p99_us
        );
    }
    if audit_total != expected_total || negative != 0 || total.errors > 0 {
        eprintln!(
            "dtc bench: audit FAILED (total {audit_total} expected {expected_total}, negative {negative}, errors {})",
            total.errors
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--http` and `--branches`: payload branches to participants that keep
/// their own state (see `bench_branches`).
fn branches(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use crate::bench_branches::{Participants, Spec};
    let (participants, count) = match args.branches {
        Some(n) if !args.http => (Participants::Stored, usize::from(n)),
        Some(_) => return Err("--http and --branches are two workloads: pick one".into()),
        None => (Participants::Http, usize::from(args.participants)),
    };
    let sync = args.durability == DurabilityArg::Sync;
    let m = crate::bench_branches::run(Spec {
        participants,
        count,
        threads: args.threads,
        seconds: args.seconds,
        sync,
        dir: args.dir.clone(),
    })?;
    let report = Report {
        system: m.system,
        durability: if sync { "sync" } else { "none" },
        threads: args.threads,
        services: count as u16,
        accounts: 0,
        legs: 0,
        committed: m.committed,
        aborted: m.aborted,
        tx_per_s: m.tx_per_s,
        p50_us: m.p50_us,
        p99_us: m.p99_us,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let per_sync = m.records_per_sync.map(|r| format!(", {r:.1} log records per sync")).unwrap_or_default();
        println!(
            "{} ({}), {} threads, {count} participants per transaction: {:.0} tx/s, committed {}, aborted {}, p50 {:.1} µs, p99 {:.1} µs{per_sync}",
            report.system,
            report.durability,
            report.threads,
            report.tx_per_s,
            report.committed,
            report.aborted,
            report.p50_us,
            report.p99_us
        );
    }
    Ok(if m.errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[derive(ClapArgs, Debug)]
pub struct MemoryArgs {
    /// Accounts to create.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..=200_000_000))]
    accounts: u64,
    /// Services to spread them over.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    services: u16,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[derive(serde::Serialize)]
struct MemoryReport {
    accounts: u64,
    structure_bytes_per_account: f64,
    resident_bytes_per_account: Option<f64>,
    seconds_to_create: f64,
}

pub fn memory(args: MemoryArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let before = resident_bytes();
    let started = Instant::now();
    let shape =
        Shape { services: usize::from(args.services), accounts: args.accounts, balance: 1000, legs: 1, skew: None };
    let ledgers = ledgers(&shape)?;
    let seconds = started.elapsed().as_secs_f64();
    let after = resident_bytes();
    let structure: usize = ledgers.iter().map(|l| l.memory_bytes()).sum();
    let report = MemoryReport {
        accounts: args.accounts,
        structure_bytes_per_account: structure as f64 / args.accounts as f64,
        resident_bytes_per_account: before.zip(after).map(|(b, a)| a.saturating_sub(b) as f64 / args.accounts as f64),
        seconds_to_create: seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} accounts: {:.1} bytes/account in the ledger's structures, {} resident, created in {:.1} s",
            report.accounts,
            report.structure_bytes_per_account,
            report.resident_bytes_per_account.map_or("?".into(), |b| format!("{b:.1} bytes/account")),
            report.seconds_to_create
        );
    }
    Ok(ExitCode::SUCCESS)
}
