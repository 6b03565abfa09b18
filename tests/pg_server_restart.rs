//! The PostgreSQL server restarted while a branch is prepared: the prepared
//! transaction survives the restart (with its locks), and the coordinator
//! resolves it over a new connection — committed when the decision is
//! commit, rolled back when another participant then refuses.
//!
//! Restarts the cluster of `scripts/pg-cluster.sh` (`DTC_PG_BASE`), so this
//! file holds one test: test binaries run one at a time.

#![cfg(feature = "postgres")]

mod pg_support;

use std::time::Duration;

use dtc::pg::{Accounts, PgOptions, PgParticipant};
use dtc::{BranchId, Coordinator, Durability, Ledger, Outcome, Refusal, Transaction, Transfer};
use pg_support::Gate;

fn restart_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");
    let status = std::process::Command::new("bash").arg(script).arg("restart").status().expect("run pg-cluster.sh");
    assert!(status.success(), "pg-cluster.sh restart failed");
}

#[test]
fn a_branch_prepared_across_a_server_restart_is_resolved() {
    let url = require_pg!();
    if std::env::var_os("DTC_PG_BASE").is_none() {
        let message =
            "DTC_PG_BASE is not set: the server is not one scripts/pg-cluster.sh started, so it cannot be restarted";
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipping: {message}");
        return;
    }
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "r_accounts", &[("alice", 1_000)]);
    drop(admin);
    let pg = PgParticipant::open(
        &url,
        PgOptions::new(pg_support::coordinator_id("restart")).accounts(Accounts::new("r_accounts")),
    )
    .unwrap();
    let prefix = pg.gid_prefix().to_string();
    let ledger = Ledger::new();
    ledger.create_account("bob", 0).unwrap();
    // Once PostgreSQL prepared: restart the server, check the prepared
    // transaction is still there, then vote (yes for the first, no after).
    let (gate_url, gate_prefix) = (url.clone(), prefix.clone());
    let votes = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let gate = Gate::new(move |b: BranchId| {
        let gid = format!("{gate_prefix}{}:0", b.tx);
        let mut c = pg_support::connect(&gate_url);
        assert!(pg_support::wait_prepared(&mut c, &gid), "prepared before the restart");
        drop(c);
        restart_server();
        let mut c = pg_support::connect(&gate_url);
        assert!(pg_support::wait_prepared(&mut c, &gid), "{gid} survived the restart");
        // Its row lock survived too: an update of the row waits, and times out.
        c.batch_execute("SET lock_timeout = '200ms'").unwrap();
        let blocked = c.execute("UPDATE r_accounts SET balance = balance WHERE id = 'alice'", &[]).unwrap_err();
        assert_eq!(blocked.code().map(|s| s.code()), Some("55P03"), "{blocked}");
        match votes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(()),
            _ => Err(Refusal::new("no", "the second one is refused")),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 2)
        .service("ledger", ledger.clone())
        .service("gate", gate)
        .durability(Durability::Sync)
        .dir(dir.path())
        .call_timeout(Duration::from_secs(60))
        .transaction_timeout(Duration::from_secs(120))
        .open()
        .unwrap();
    let t = || {
        Transaction::new()
            .transfer(Transfer::new("pg", "alice", "ledger", "bob", 100))
            .branch(dtc::Branch::new("gate", &b""[..]))
    };
    assert_eq!(dtc.run(&t()).unwrap(), Outcome::Committed);
    assert!(matches!(dtc.run(&t()).unwrap(), Outcome::Aborted(_)));
    pg_support::eventually(Duration::from_secs(30), "both resolved", || {
        dtc.unresolved_count() == 0 && pg.prepared_transactions().is_ok_and(|p| p.is_empty())
    });
    let mut admin = pg_support::connect(&url);
    assert_eq!(pg_support::balance(&mut admin, "r_accounts", "alice"), 900);
    assert_eq!(ledger.balance("bob").unwrap(), 100);
    assert!(pg_support::prepared_with_prefix(&mut admin, &prefix).is_empty());
    assert_eq!(dtc.audit().unwrap().total, 1_000);
    dtc.shutdown().unwrap();
}
