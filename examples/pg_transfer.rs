//! Money moves between a PostgreSQL `accounts` table and an in-process
//! ledger, atomically: two-phase commit with PostgreSQL's
//! `PREPARE TRANSACTION`.
//!
//! ```text
//! scripts/pg-cluster.sh start      # a throwaway server with max_prepared_transactions set
//! cargo run --features postgres --example pg_transfer
//! ```
//!
//! `DTC_PG_URL` names another server (default: the script's,
//! `postgresql://dtc@127.0.0.1:54329/dtc`). The example (re)creates the
//! tables `accounts` and `transfer_log` there.

use dtc::pg::{Accounts, PgOptions, PgParticipant, PgWork};
use dtc::{AbortReason, Coordinator, Durability, Ledger, Outcome, Transaction, Transfer};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DTC_PG_URL").unwrap_or_else(|_| "postgresql://dtc@127.0.0.1:54329/dtc".into());

    // The database side: a table of balances that may not go negative.
    let mut sql = postgres::Client::connect(&url, postgres::NoTls)
        .map_err(|e| format!("{url}: {e} (start a server with scripts/pg-cluster.sh start, or set DTC_PG_URL)"))?;
    sql.batch_execute(
        "DROP TABLE IF EXISTS accounts, transfer_log;
         CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
         CREATE TABLE transfer_log (note text NOT NULL, amount bigint NOT NULL);
         INSERT INTO accounts VALUES ('alice', 1000);",
    )?;

    // The participant: one per database. The coordinator id names this
    // coordinator's prepared transactions (`dtc:example:<tx>:<branch>`);
    // keep it the same across restarts, unique per coordinator.
    let pg = PgParticipant::open(&url, PgOptions::new("example").accounts(Accounts::new("accounts")))?;
    let ledger = Ledger::new();
    ledger.create_account("bob", 0)?;

    // The coordinator's log makes the decision durable before PostgreSQL
    // hears "commit"; after a crash, opening the directory again commits or
    // rolls back whatever PostgreSQL still holds prepared.
    let dir = tempfile_dir()?;
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 4)
        .service("ledger", ledger.clone())
        .durability(Durability::Sync)
        .dir(&dir)
        .open()?;

    // 250 from alice (PostgreSQL) to bob (the ledger), and a row in the
    // database's log: a branch given as statements with parameters.
    let note = |text: &str, amount: i64| {
        PgWork::new().statement("INSERT INTO transfer_log (note, amount) VALUES ($1, $2)", [json!(text), json!(amount)])
    };
    let rent = note("rent", 250);
    let t = Transaction::new()
        .transfer(Transfer::new("pg", "alice", "ledger", "bob", 250))
        .branch(rent.branch("pg")?.lock("transfer_log"));
    println!("alice -> bob 250:   {:?}", dtc.run(&t)?);

    // Too much: the CHECK constraint refuses (SQLSTATE 23514), so the
    // ledger's credit and the log row are rolled back with it.
    let greed = note("yacht", 5_000);
    let t = Transaction::new()
        .transfer(Transfer::new("pg", "alice", "ledger", "bob", 5_000))
        .branch(greed.branch("pg")?.lock("transfer_log"));
    match dtc.run(&t)? {
        Outcome::Aborted(AbortReason::Refused { code, message, .. }) => {
            println!("alice -> bob 5000:  refused {code} ({message})");
        }
        other => println!("alice -> bob 5000:  {other:?}"),
    }

    let audit = dtc.audit()?;
    let alice: i64 = sql.query_one("SELECT balance FROM accounts WHERE id = 'alice'", &[])?.get(0);
    let logged: i64 = sql.query_one("SELECT count(*) FROM transfer_log", &[])?.get(0);
    println!(
        "alice {alice} (PostgreSQL), bob {} (ledger), {logged} row(s) in transfer_log",
        ledger.balance("bob").unwrap_or(0)
    );
    println!("audit across both: total {} over {} accounts, {} negative", audit.total, audit.accounts, audit.negative);
    // A rollback is acknowledged in the background once the outcome is
    // returned; shutdown waits for it.
    dtc.shutdown()?;
    println!("left prepared in PostgreSQL: {}", pg.gauges()?.prepared);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A fresh directory for the coordinator's log.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("dtc-pg-transfer-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
