//! What two-phase commit over PostgreSQL costs: a transfer between a
//! PostgreSQL account and a ledger account through dtc (PREPARE TRANSACTION,
//! the coordinator's durable decision, COMMIT PREPARED), next to the same
//! transfer done as one local PostgreSQL transaction between two rows (no
//! 2PC), at 1 and 16 threads, in the same run against the same server.
//!
//! ```text
//! scripts/pg-cluster.sh start
//! cargo run --release --features postgres --example pg_bench -- [seconds per run, default 5]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use dtc::pg::{Accounts, PgOptions, PgParticipant};
use dtc::{Coordinator, Durability, Ledger, Transfer};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: usize = 10_000;
const BALANCE: i64 = 1_000_000;

struct Run {
    transactions: u64,
    latency_us: Histogram<u64>,
    elapsed: Duration,
}

/// `threads` loops of `one` for `seconds`, latencies merged.
fn measure(
    threads: usize,
    seconds: u64,
    one: impl Fn(&mut SmallRng, &mut ThreadState) + Sync,
    setup: impl Fn() -> ThreadState + Sync,
) -> Run {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let results: Vec<(u64, Histogram<u64>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (one, setup) = (&one, &setup);
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(t as u64);
                    let mut state = setup();
                    let mut h = Histogram::<u64>::new(3).unwrap();
                    let mut n = 0;
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        one(&mut rng, &mut state);
                        h.record(t0.elapsed().as_micros() as u64).unwrap();
                        n += 1;
                    }
                    (n, h)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut latency_us = Histogram::<u64>::new(3).unwrap();
    let mut transactions = 0;
    for (n, h) in results {
        transactions += n;
        latency_us.add(h).unwrap();
    }
    Run { transactions, latency_us, elapsed: started.elapsed() }
}

enum ThreadState {
    None,
    Client(Box<postgres::Client>),
}

fn report(what: &str, threads: usize, run: &Run) {
    println!(
        "| {what:<38} | {threads:>2} | {:>7.0} | {:>7} | {:>7} |",
        run.transactions as f64 / run.elapsed.as_secs_f64(),
        run.latency_us.value_at_quantile(0.5),
        run.latency_us.value_at_quantile(0.99)
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let url = std::env::var("DTC_PG_URL").unwrap_or_else(|_| "postgresql://dtc@127.0.0.1:54329/dtc".into());
    let mut sql = postgres::Client::connect(&url, postgres::NoTls)?;
    sql.batch_execute(&format!(
        "DROP TABLE IF EXISTS bench_accounts; \
         CREATE TABLE bench_accounts (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0)); \
         INSERT INTO bench_accounts SELECT 'a' || i, {BALANCE} FROM generate_series(0, {}) AS i",
        ACCOUNTS - 1
    ))?;
    let setting = |name: &str| -> String {
        postgres::Client::connect(&url, postgres::NoTls)
            .and_then(|mut c| c.query_one(&format!("SHOW {name}"), &[]).map(|r| r.get(0)))
            .unwrap_or_else(|_| "?".into())
    };
    println!(
        "PostgreSQL {} at {url}: synchronous_commit={}, fsync={}, wal_sync_method={}; dtc log: Durability::Sync in {}",
        setting("server_version"),
        setting("synchronous_commit"),
        setting("fsync"),
        setting("wal_sync_method"),
        std::env::temp_dir().display()
    );
    println!("{} s per run, {ACCOUNTS} accounts, random pairs\n", seconds);
    println!("| transfer                               |  T |    tx/s | p50 µs | p99 µs |");
    println!("| --- | --: | --: | --: | --: |");
    for threads in [1usize, 16] {
        // One local PostgreSQL transaction: two UPDATEs and COMMIT.
        let local = measure(
            threads,
            seconds,
            |rng, state| {
                let ThreadState::Client(c) = state else { unreachable!() };
                let (a, b) = (rng.random_range(0..ACCOUNTS), rng.random_range(0..ACCOUNTS));
                let (a, b) =
                    (format!("a{}", a.min(b)), format!("a{}", if a == b { (b + 1) % ACCOUNTS } else { a.max(b) }));
                let mut t = c.transaction().unwrap();
                t.execute("UPDATE bench_accounts SET balance = balance - 1 WHERE id = $1", &[&a]).unwrap();
                t.execute("UPDATE bench_accounts SET balance = balance + 1 WHERE id = $1", &[&b]).unwrap();
                t.commit().unwrap();
            },
            || ThreadState::Client(Box::new(postgres::Client::connect(&url, postgres::NoTls).unwrap())),
        );
        report("one local PostgreSQL transaction", threads, &local);

        // Through dtc: PostgreSQL branch + ledger branch, durable log.
        let dir = std::env::temp_dir().join(format!("dtc-pg-bench-{}-{threads}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pg = PgParticipant::open(
            &url,
            PgOptions::new(format!("bench-{}", std::process::id()))
                .accounts(Accounts::new("bench_accounts"))
                .max_connections(threads.max(1)),
        )?;
        let ledger = Ledger::new();
        for i in 0..ACCOUNTS {
            ledger.create_account(&format!("a{i}"), BALANCE)?;
        }
        let dtc = Arc::new(
            Coordinator::builder()
                .concurrent_service("pg", pg, threads.max(1))
                .service("ledger", ledger)
                .durability(Durability::Sync)
                .dir(&dir)
                .open()?,
        );
        let two_pc = measure(
            threads,
            seconds,
            |rng, _| {
                let (a, b) =
                    (format!("a{}", rng.random_range(0..ACCOUNTS)), format!("a{}", rng.random_range(0..ACCOUNTS)));
                let leg = if rng.random_bool(0.5) {
                    Transfer::new("pg", &a, "ledger", &b, 1)
                } else {
                    Transfer::new("ledger", &b, "pg", &a, 1)
                };
                assert!(dtc.execute(&[leg]).unwrap().is_committed());
            },
            || ThreadState::None,
        );
        report("PostgreSQL + ledger through dtc (2PC)", threads, &two_pc);
        dtc.shutdown()?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
