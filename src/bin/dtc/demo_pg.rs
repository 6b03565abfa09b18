//! `dtc demo --postgres URL [--dir D]`: the bank demo with one service in
//! PostgreSQL (a `PgParticipant` on the table `dtc_demo_accounts`) and three
//! ledgers, then the audit across all of them.
//!
//! With `--dir` the coordinator's log survives a crash (kill it at any
//! moment); a second run on the same directory and database recovers it
//! first: PostgreSQL's prepared transactions of the demo are committed or
//! rolled back from the log, nothing is left prepared, and the money is the
//! same across PostgreSQL and the ledgers.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dtc::pg::{Accounts, PgOptions, PgParticipant};
use dtc::{Coordinator, Durability, Ledger, Transfer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const TABLE: &str = "dtc_demo_accounts";
const LEDGERS: usize = 3;
const ACCOUNTS: usize = 200;
const BALANCE: i64 = 1_000;
/// The demo coordinator's id: its gids are `dtc:demo:<tx>:<branch>`.
const COORDINATOR_ID: &str = "demo";

fn service(s: usize) -> String {
    if s == 0 { "pg".to_string() } else { format!("ledger-{s}") }
}

fn account(i: usize) -> String {
    format!("acct-{i}")
}

/// Makes the table afresh, or keeps it when the log it belongs to is kept.
fn prepare_table(url: &str, fresh: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut sql = postgres::Client::connect(url, postgres::NoTls).map_err(|e| format!("{url}: {e}"))?;
    let exists: bool = sql.query_one("SELECT to_regclass($1) IS NOT NULL", &[&TABLE])?.get(0);
    if exists && !fresh {
        return Ok(());
    }
    if exists {
        // A fresh log: whatever an earlier run left prepared on this table
        // belongs to a log that is gone; presumed abort.
        for row in sql.query(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'dtc:demo:%' AND database = current_database()",
            &[],
        )? {
            let gid: String = row.get(0);
            sql.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))?;
        }
    }
    sql.batch_execute(&format!(
        "DROP TABLE IF EXISTS {TABLE}; \
         CREATE TABLE {TABLE} (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0)); \
         INSERT INTO {TABLE} SELECT 'acct-' || i, {BALANCE} FROM generate_series(0, {}) AS i",
        ACCOUNTS - 1
    ))?;
    Ok(())
}

pub fn run(
    url: &str,
    dir: Option<&Path>,
    seconds: u64,
    threads: u32,
    seed: u64,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let fresh = dir.is_none_or(|d| std::fs::read_dir(d).map_or(true, |mut e| e.next().is_none()));
    prepare_table(url, fresh)?;
    let lanes = (threads as usize).clamp(1, 16);
    let pg =
        PgParticipant::open(url, PgOptions::new(COORDINATOR_ID).accounts(Accounts::new(TABLE)).max_connections(lanes))?;
    let in_doubt = pg.prepared_transactions()?.len();
    let mut builder = Coordinator::builder().concurrent_service("pg", pg.clone(), lanes);
    for s in 1..=LEDGERS {
        let ledger = Ledger::new();
        for i in 0..ACCOUNTS {
            ledger.create_account(&account(i), BALANCE)?;
        }
        builder = builder.service(service(s), ledger);
    }
    if let Some(dir) = dir {
        builder = builder.durability(Durability::Sync).dir(dir);
    }
    let dtc = builder.open()?;
    println!(
        "dtc demo --postgres: {} accounts of {BALANCE} in PostgreSQL ({TABLE}) and in each of {LEDGERS} ledgers, {threads} threads, {seconds} s{}",
        ACCOUNTS,
        dir.map(|d| format!(", log in {}", d.display())).unwrap_or_else(|| ", no log".into())
    );
    if !fresh {
        let r = dtc.recovery();
        println!(
            "recovered the log first: {} in-doubt branches resolved; PostgreSQL held {in_doubt} prepared transaction(s) of this coordinator",
            r.in_doubt_resolved
        );
    }

    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    let (mut committed, mut aborted, mut errors) = (0u64, 0u64, 0u64);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (dtc, stop) = (&dtc, &stop);
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed ^ u64::from(t) << 32);
                    let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits");
                    let (mut c, mut a, mut e) = (0u64, 0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let (from, to) = (rng.random_range(0..=LEDGERS), rng.random_range(0..=LEDGERS));
                        let (x, y) = (rng.random_range(0..ACCOUNTS), rng.random_range(0..ACCOUNTS));
                        if from == to && x == y {
                            continue;
                        }
                        let (fs, ts, fa, ta) = (service(from), service(to), account(x), account(y));
                        let started = Instant::now();
                        match dtc.execute(&[Transfer::new(&fs, &fa, &ts, &ta, rng.random_range(1..200))]) {
                            Ok(o) if o.is_committed() => c += 1,
                            Ok(_) => a += 1,
                            Err(_) => e += 1,
                        }
                        let _ = h.record(started.elapsed().as_micros() as u64);
                    }
                    (h, c, a, e)
                })
            })
            .collect();
        for handle in handles {
            if let Ok((h, c, a, e)) = handle.join() {
                let _ = latency.add(h);
                (committed, aborted, errors) = (committed + c, aborted + a, errors + e);
            }
        }
    });
    stop.store(true, Ordering::Relaxed);
    let audit = dtc.audit()?;
    dtc.shutdown()?;
    let left_prepared = pg.gauges()?.prepared;

    println!("\ncommitted      {committed}");
    println!("aborted        {aborted} (refusals: insufficient funds, and retryable conflicts)");
    println!("errors         {errors}");
    println!("throughput     {:.0} tx/s", (committed + aborted) as f64 / seconds as f64);
    println!("latency        p50 {} µs, p99 {} µs", latency.value_at_quantile(0.5), latency.value_at_quantile(0.99));
    for (name, summary) in &audit.services {
        println!("  {name:<10} {} accounts, total {}", summary.accounts, summary.total);
    }
    let expected = i128::from(BALANCE) * ((LEDGERS + 1) * ACCOUNTS) as i128;
    let conserved = audit.total == expected && audit.negative == 0 && errors == 0 && left_prepared == 0;
    println!(
        "audit          total {} (expected {expected}) across PostgreSQL and the ledgers, {} negative, {left_prepared} left prepared in PostgreSQL: conserved {}",
        audit.total,
        audit.negative,
        if conserved { "yes" } else { "NO" }
    );
    Ok(if conserved { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
