//! `dtc bench` and `dtc memory`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, ValueEnum};
use dtc::{Coordinator, Durability};

use crate::workload::{Shape, Tally, ledgers, micros, run_thread, service_name};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DurabilityArg {
    None,
    Sync,
}

#[derive(ClapArgs, Debug)]
pub struct Args {
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
    let shape = Shape {
        services: usize::from(args.services),
        accounts: args.accounts,
        balance: args.balance,
        legs: usize::from(args.legs),
    };
    let durability = match args.durability {
        DurabilityArg::None => Durability::None,
        DurabilityArg::Sync => Durability::Sync,
    };
    let mut builder = Coordinator::builder().durability(durability).max_legs(usize::from(args.legs).max(1));
    if let Some(dir) = &args.dir {
        builder = builder.dir(dir);
    } else if durability == Durability::Sync {
        return Err("--durability sync needs --dir".into());
    }
    let ack = match &args.ack_log {
        None => None,
        Some(path) => Some(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
    };
    for (s, ledger) in ledgers(&shape)?.into_iter().enumerate() {
        builder = builder.service(service_name(s), ledger);
    }
    let dtc = builder.open()?;
    let expected_total = i128::from(args.balance) * i128::from(args.accounts);

    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(args.seconds);
    let mut total = Tally::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads as usize)
            .map(|t| {
                let (dtc, shape) = (&dtc, &shape);
                let ack = ack.as_ref();
                scope.spawn(move || run_thread(dtc, shape, args.seed, t, stop, ack, |_| {}))
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
    let audit = dtc.audit()?;
    dtc.shutdown()?;

    let report = Report {
        system: "dtc",
        durability: match args.durability {
            DurabilityArg::None => "none",
            DurabilityArg::Sync => "sync",
        },
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
            "{} threads, {} services, {} accounts, {} legs: {:.0} tx/s, committed {}, aborted {}, p50 {:.1} µs, p99 {:.1} µs",
            report.threads,
            report.services,
            report.accounts,
            report.legs,
            report.tx_per_s,
            report.committed,
            report.aborted,
            report.p50_us,
            report.p99_us
        );
    }
    let conserved = audit.total == expected_total && audit.negative == 0;
    if !conserved || total.errors > 0 {
        eprintln!(
            "dtc bench: audit FAILED (total {} expected {}, negative {}, errors {})",
            audit.total, expected_total, audit.negative, total.errors
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
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
    let shape = Shape { services: usize::from(args.services), accounts: args.accounts, balance: 1000, legs: 1 };
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
