//! PostgreSQL under concurrency: transfers on the same rows from many
//! threads (dtc's ordered locks plus the server's row locks never
//! deadlock), a deadlock the server detects between payload branches that
//! declared no lock keys (a clean, retryable abort), and the bank invariant
//! across PostgreSQL and two ledgers under load with audits running.

#![cfg(feature = "postgres")]

mod pg_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dtc::pg::{Accounts, PgOptions, PgParticipant, PgWork};
use dtc::{AbortReason, Coordinator, Durability, Ledger, Outcome, Transaction, Transfer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn participant(url: &str, test: &str, table: &str) -> PgParticipant {
    PgParticipant::open(
        url,
        PgOptions::new(pg_support::coordinator_id(test)).accounts(Accounts::new(table)).max_connections(16),
    )
    .unwrap()
}

#[test]
fn transfers_on_the_same_rows_from_many_threads_never_deadlock() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "k_hot", &[("a", 10_000), ("b", 10_000), ("c", 10_000)]);
    let pg = participant(&url, "hot", "k_hot");
    let ledger = Ledger::new();
    for id in ["x", "y"] {
        ledger.create_account(id, 10_000).unwrap();
    }
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 8)
        .service("ledger", ledger)
        .transaction_timeout(Duration::from_secs(20))
        .open()
        .unwrap();
    let refused = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (dtc, refused) = (&dtc, &refused);
            scope.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                let deadline = Instant::now() + Duration::from_secs(10);
                for _ in 0..40 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let rows = ["a", "b", "c"];
                    let (i, j) = (rng.random_range(0..3), rng.random_range(1..3));
                    let (from, to) = (rows[i], rows[(i + j) % 3]);
                    // Both directions over the same rows, within PostgreSQL
                    // and across to the ledger, in one transaction.
                    let legs = [
                        Transfer::new("pg", from, "pg", to, rng.random_range(1..50)),
                        Transfer::new("pg", to, "ledger", if t % 2 == 0 { "x" } else { "y" }, rng.random_range(1..50)),
                    ];
                    if let Outcome::Aborted(reason) = dtc.execute(&legs).unwrap() {
                        assert!(matches!(reason, AbortReason::InsufficientFunds { .. }), "{reason:?}");
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let audit = dtc.audit().unwrap();
    assert_eq!(audit.total, 50_000);
    assert_eq!(audit.negative, 0);
    assert!(pg_support::prepared_with_prefix(&mut admin, pg.gid_prefix()).is_empty());
    dtc.shutdown().unwrap();
}

fn debit_then_credit(first: &str, second: &str) -> PgWork {
    let update = "UPDATE k_dead SET balance = balance + $1 WHERE id = $2";
    PgWork::new()
        .statement(update, [json!(-1), json!(first)])
        .expect_rows(1)
        .statement("SELECT pg_sleep(0.3)", [])
        .statement(update, [json!(1), json!(second)])
        .expect_rows(1)
}

#[test]
fn a_deadlock_the_server_detects_is_a_clean_retryable_abort() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "k_dead", &[("a", 100), ("b", 100)]);
    let pg = participant(&url, "dead", "k_dead");
    // 16 lanes: two transactions rarely share one (which would serialize them).
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 16)
        .transaction_timeout(Duration::from_secs(20))
        .open()
        .unwrap();
    let (ab, ba) = (debit_then_credit("a", "b"), debit_then_credit("b", "a"));
    let mut deadlocks = 0;
    for _attempt in 0..5 {
        let barrier = std::sync::Barrier::new(2);
        let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
            let handles: Vec<_> = [&ab, &ba]
                .into_iter()
                .map(|work| {
                    let (dtc, barrier) = (&dtc, &barrier);
                    // No lock keys: dtc cannot order them; the server must.
                    scope.spawn(move || {
                        barrier.wait();
                        dtc.run(&Transaction::new().branch(work.branch("pg").unwrap())).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let losers: Vec<&AbortReason> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Aborted(reason) => Some(reason),
                _ => None,
            })
            .collect();
        for reason in &losers {
            assert!(
                matches!(reason, AbortReason::Refused { code, .. } if code == "40P01") && dtc::pg::is_retryable(reason),
                "{reason:?}"
            );
        }
        assert!(losers.len() <= 1, "the server aborts one side of a deadlock: {outcomes:?}");
        if losers.len() == 1 {
            deadlocks += 1;
            // The caller runs it again: it goes through.
            let retry = if outcomes[0].is_committed() { &ba } else { &ab };
            assert_eq!(dtc.run(&Transaction::new().branch(retry.branch("pg").unwrap())).unwrap(), Outcome::Committed);
            break;
        }
    }
    assert!(deadlocks > 0, "no deadlock happened in 5 attempts");
    assert_eq!(pg_support::total(&mut admin, "k_dead"), 200);
    pg_support::eventually(Duration::from_secs(10), "nothing prepared", || {
        pg_support::prepared_with_prefix(&mut admin, pg.gid_prefix()).is_empty()
    });
    dtc.shutdown().unwrap();
}

#[test]
fn the_bank_invariant_holds_across_postgres_and_ledgers_under_load_with_audits() {
    const ACCOUNTS: usize = 16;
    const BALANCE: i64 = 1_000;
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("acct-{i}")).collect();
    let rows: Vec<(&str, i64)> = names.iter().map(|n| (n.as_str(), BALANCE)).collect();
    pg_support::accounts_table(&mut admin, "k_bank", &rows);
    let pg = participant(&url, "bank", "k_bank");
    let ledgers: Vec<Ledger> = (0..2).map(|_| Ledger::new()).collect();
    for ledger in &ledgers {
        for name in &names {
            ledger.create_account(name, BALANCE).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 8)
        .service("eu", ledgers[0].clone())
        .service("us", ledgers[1].clone())
        .durability(Durability::Sync)
        .dir(dir.path())
        .open()
        .unwrap();
    let expected = i128::from(BALANCE) * 3 * ACCOUNTS as i128;
    let stop = AtomicBool::new(false);
    let (committed, audits) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        let auditor = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let audit = dtc.audit().unwrap();
                assert_eq!(audit.total, expected, "an audit saw money created or lost: {audit:?}");
                assert_eq!(audit.negative, 0);
                audits.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let workers: Vec<_> = (0..6u64)
            .map(|t| {
                let (dtc, names, committed) = (&dtc, &names, &committed);
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(100 + t);
                    let deadline = Instant::now() + Duration::from_secs(4);
                    let services = ["pg", "eu", "us"];
                    for _ in 0..400 {
                        if Instant::now() > deadline {
                            break;
                        }
                        let (a, b) = (rng.random_range(0..ACCOUNTS), rng.random_range(0..ACCOUNTS));
                        let (s, r) = (services[rng.random_range(0..3)], services[rng.random_range(0..3)]);
                        if s == r && a == b {
                            continue;
                        }
                        let leg = Transfer::new(s, &names[a], r, &names[b], rng.random_range(1..300));
                        if dtc.execute(&[leg]).unwrap().is_committed() {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        auditor.join().unwrap();
    });
    assert!(committed.load(Ordering::Relaxed) > 100, "too little load to mean anything");
    assert!(audits.load(Ordering::Relaxed) > 5);
    let pg_total = i128::from(pg_support::total(&mut admin, "k_bank"));
    let ledger_total: i128 = ledgers.iter().map(|l| l.summary().total).sum();
    assert_eq!(pg_total + ledger_total, expected);
    assert!(pg_support::prepared_with_prefix(&mut admin, pg.gid_prefix()).is_empty());
    eprintln!("{} committed, {} audits", committed.load(Ordering::Relaxed), audits.load(Ordering::Relaxed));
    dtc.shutdown().unwrap();
}
