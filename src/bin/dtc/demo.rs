//! `dtc demo`: a simulated bank of 8 services with faults injected, busy for
//! a while, then a summary and an audit.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use dtc::{
    Coordinator,
    fault::{FaultPlan, Faulty},
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::workload::{Shape, Tally, ledgers, micros, run_thread, service_name};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// Caller threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,
    /// Seed for the workload and the faults.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Remote participants instead: three reference participant services and a
    /// coordinator service on loopback ports, bookings through its JSON API, one
    /// coordinator crash and restart mid-run, then an agreement check.
    #[arg(long)]
    http: bool,
    /// Runs the bank with one service in PostgreSQL at this URL instead (see demo_pg.rs).
    #[cfg(feature = "postgres")]
    #[arg(long)]
    postgres: Option<String>,
    /// With --postgres: the coordinator's data directory (a second run recovers it first).
    #[cfg(feature = "postgres")]
    #[arg(long, requires = "postgres")]
    dir: Option<std::path::PathBuf>,
}

const SERVICES: usize = 8;
const ACCOUNTS: u64 = 100_000;
const BALANCE: i64 = 1_000;

pub fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.http {
        return crate::demo_http::run(args.seconds, args.threads, args.seed);
    }
    #[cfg(feature = "postgres")]
    if let Some(url) = &args.postgres {
        return crate::demo_pg::run(url, args.dir.as_deref(), args.seconds, args.threads, args.seed);
    }
    let shape = Shape { services: SERVICES, accounts: ACCOUNTS, balance: BALANCE, legs: 2, skew: None };
    println!(
        "dtc demo: {SERVICES} services, {ACCOUNTS} accounts of {BALANCE}, {} threads, {} s; faults: 0.2% refusals and 0.05% panics everywhere, 0.02% stalls of 100 ms (past a 50 ms call timeout) on svc-7",
        args.threads, args.seconds
    );
    let mut builder =
        Coordinator::builder().call_timeout(Duration::from_millis(50)).transaction_timeout(Duration::from_secs(2));
    let mut counters = Vec::new();
    for (s, ledger) in ledgers(&shape)?.into_iter().enumerate() {
        let mut plan = FaultPlan::new(args.seed.wrapping_add(s as u64)).refuse(0.002).panic(0.0005);
        if s == SERVICES - 1 {
            // One slow service: stalls past the call timeout (its calls go
            // through its worker thread, so a stall is a timeout, not a hang).
            plan = plan.stall(0.0002, Duration::from_millis(100));
        }
        let service = Faulty::new(ledger, plan);
        counters.push(service.counter());
        builder = builder.service(service_name(s), service);
    }
    let dtc = builder.open()?;

    let bar = ProgressBar::new(args.seconds);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let stop = started + Duration::from_secs(args.seconds);
    let mut total = Tally::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads as usize)
            .map(|t| {
                let (dtc, shape, done) = (&dtc, &shape, &done);
                scope.spawn(move || {
                    run_thread(dtc, shape, args.seed, t, stop, 1, None, None, |n| {
                        done.fetch_add(n, Ordering::Relaxed);
                    })
                })
            })
            .collect();
        while Instant::now() < stop {
            std::thread::sleep(Duration::from_millis(200).min(stop.saturating_duration_since(Instant::now())));
            let secs = started.elapsed().as_secs_f64();
            bar.set_position(secs as u64);
            bar.set_message(format!("{:.0} tx/s", done.load(Ordering::Relaxed) as f64 / secs.max(1e-9)));
        }
        for h in handles {
            if let Ok(tally) = h.join() {
                total.merge(&tally);
            }
        }
    });
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let audit = dtc.audit()?;
    let metrics = dtc.metrics();
    let unfinished = dtc.unfinished().len();
    dtc.shutdown()?;

    let injected =
        counters.iter().map(|c| c.get()).fold((0, 0, 0), |a, c| (a.0 + c.refusals, a.1 + c.panics, a.2 + c.stalls));
    println!("\ncommitted      {}", metrics.committed + metrics.commit_pending);
    println!("  of which commit-pending (acknowledged late) {}", metrics.commit_pending);
    println!("aborted        {}", metrics.aborted_total());
    for (reason, n) in metrics.aborted.iter().filter(|(_, n)| *n > 0) {
        println!("  {reason:<22} {n}");
    }
    println!("retries        {} (parked {}, unfinished at the end {unfinished})", metrics.retries, metrics.parked);
    println!("timeouts       {}", metrics.timeouts);
    println!(
        "panics survived {} (injected {}, refusals injected {}, stalls injected {})",
        metrics.panics, injected.1, injected.0, injected.2
    );
    println!("throughput     {:.0} tx/s", (total.committed + total.aborted) as f64 / elapsed);
    println!(
        "latency        p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        micros(total.latency_ns.value_at_quantile(0.5)),
        micros(total.latency_ns.value_at_quantile(0.99)),
        micros(total.latency_ns.max())
    );
    let expected = i128::from(BALANCE) * i128::from(ACCOUNTS);
    let conserved = audit.total == expected && audit.negative == 0 && total.errors == 0;
    println!(
        "audit          total {} (expected {expected}), {} accounts, {} negative: conserved {}",
        audit.total,
        audit.accounts,
        audit.negative,
        if conserved { "yes" } else { "NO" }
    );
    Ok(if conserved { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
