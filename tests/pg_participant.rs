//! `PgParticipant` against a real PostgreSQL: commit and rollback across
//! PostgreSQL, a ledger and payload branches; refusals (a CHECK constraint,
//! statements a branch may not run, bounds); idempotent and checked
//! COMMIT/ROLLBACK PREPARED; coordinators sharing a database; stale
//! prepared transactions; the configuration errors at open.
//!
//! Needs a server: `scripts/pg-cluster.sh start` (see `pg_support`).

#![cfg(feature = "postgres")]

mod pg_support;

use std::time::Duration;

use dtc::pg::{Accounts, PgError, PgOptions, PgParticipant, PgWork};
use dtc::{
    AbortReason, Branch, BranchId, Coordinator, Durability, Ledger, Outcome, Participant, Refusal, Transaction,
    Transfer, TxId, Work,
};
use pg_support::Gate;
use serde_json::json;

fn open(url: &str, test: &str, table: &str) -> PgParticipant {
    PgParticipant::open(url, PgOptions::new(pg_support::coordinator_id(test)).accounts(Accounts::new(table))).unwrap()
}

fn refused_code(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Aborted(AbortReason::Refused { code, .. }) => code.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn commit_and_rollback_across_postgres_a_ledger_and_a_payload_branch() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_commit", &[("alice", 1_000), ("carol", 0)]);
    admin.batch_execute("DROP TABLE IF EXISTS p_commit_log; CREATE TABLE p_commit_log (note text NOT NULL)").unwrap();
    let pg = open(&url, "commit", "p_commit");
    let prefix = pg.gid_prefix().to_string();
    let ledger = Ledger::new();
    ledger.create_account("bob", 0).unwrap();
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 4)
        .service("ledger", ledger.clone())
        .service("gate", Gate::open())
        .open()
        .unwrap();
    let note = |text: &str| PgWork::new().statement("INSERT INTO p_commit_log (note) VALUES ($1)", [json!(text)]);

    // Committed: a leg out of PostgreSQL, a payload branch in PostgreSQL,
    // a payload branch elsewhere.
    let t1_note = note("t1");
    let t1 = Transaction::new()
        .transfer(Transfer::new("pg", "alice", "ledger", "bob", 250))
        .branch(t1_note.branch("pg").unwrap())
        .branch(Branch::new("gate", &b"t1"[..]));
    assert_eq!(dtc.run(&t1).unwrap(), Outcome::Committed);
    assert_eq!(pg_support::balance(&mut admin, "p_commit", "alice"), 750);
    assert_eq!(ledger.balance("bob").unwrap(), 250);

    // Rolled back: the payload branch fails (NOT NULL), so the leg into
    // PostgreSQL and the ledger's debit are undone too.
    let bad = PgWork::new().statement("INSERT INTO p_commit_log (note) VALUES ($1)", [json!(null)]);
    let t2 = Transaction::new()
        .transfer(Transfer::new("ledger", "bob", "pg", "carol", 100))
        .branch(bad.branch("pg").unwrap());
    assert_eq!(refused_code(&dtc.run(&t2).unwrap()), "23502");

    // Rolled back by the ledger's refusal after PostgreSQL prepared.
    let t3_note = note("t3");
    let t3 = Transaction::new()
        .transfer(Transfer::new("ledger", "bob", "pg", "carol", 10_000))
        .branch(t3_note.branch("pg").unwrap());
    assert!(matches!(dtc.run(&t3).unwrap(), Outcome::Aborted(AbortReason::InsufficientFunds { .. })));

    assert_eq!(pg_support::balance(&mut admin, "p_commit", "carol"), 0);
    assert_eq!(ledger.balance("bob").unwrap(), 250);
    let notes: Vec<String> =
        admin.query("SELECT note FROM p_commit_log", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(notes, ["t1"]);
    // A rollback is acknowledged in the background once the outcome is
    // returned, and counted just after PostgreSQL ran it: wait for both.
    pg_support::eventually(Duration::from_secs(10), "the rollbacks", || {
        let stats = pg.stats();
        pg_support::prepared_with_prefix(&mut admin, &prefix).is_empty() && stats.prepared == 2 + stats.rolled_back
    });
    let audit = dtc.audit().unwrap();
    assert_eq!(audit.total, 1_000);
    let stats = pg.stats();
    // t1's two branches committed; t2 and t3 prepared at most what was rolled back.
    assert_eq!(stats.committed, 2, "{stats:?}");
    assert_eq!(stats.prepared, 2 + stats.rolled_back, "{stats:?}");
    dtc.shutdown().unwrap();
}

#[test]
fn a_check_constraint_refusal_rolls_everything_back() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_check", &[("alice", 100)]);
    admin
        .batch_execute("DROP TABLE IF EXISTS p_nocheck; CREATE TABLE p_nocheck (id text PRIMARY KEY, balance bigint)")
        .unwrap();
    admin.batch_execute("INSERT INTO p_nocheck VALUES ('dave', 5)").unwrap();
    let pg = open(&url, "check", "p_check");
    let unchecked = PgParticipant::open(
        &url,
        PgOptions::new(pg_support::coordinator_id("check2")).accounts(Accounts::new("p_nocheck")),
    )
    .unwrap();
    let ledger = Ledger::new();
    ledger.create_account("bob", 1_000).unwrap();
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 2)
        .concurrent_service("pg2", unchecked, 2)
        .service("ledger", ledger.clone())
        .open()
        .unwrap();
    // A transfer leg: the CHECK constraint refuses first, with its SQLSTATE.
    let outcome = dtc.execute(&[Transfer::new("pg", "alice", "ledger", "bob", 101)]).unwrap();
    assert_eq!(refused_code(&outcome), "23514");
    // The same through statements.
    let debit = PgWork::new()
        .statement("UPDATE p_check SET balance = balance - $1 WHERE id = $2", [json!(500), json!("alice")])
        .expect_rows(1);
    let t = Transaction::new()
        .transfer(Transfer::new("ledger", "bob", "pg", "alice", 1))
        .branch(debit.branch("pg").unwrap());
    assert_eq!(refused_code(&dtc.run(&t).unwrap()), "23514");
    // Without a CHECK constraint the participant refuses a negative balance itself.
    let outcome = dtc.execute(&[Transfer::new("pg2", "dave", "ledger", "bob", 6)]).unwrap();
    assert!(matches!(outcome, Outcome::Aborted(AbortReason::InsufficientFunds { .. })), "{outcome:?}");
    // An account the table does not have.
    let outcome = dtc.execute(&[Transfer::new("pg", "nobody", "ledger", "bob", 1)]);
    assert!(matches!(outcome, Err(dtc::Error::UnknownAccount { .. })), "{outcome:?}");

    assert_eq!(pg_support::balance(&mut admin, "p_check", "alice"), 100);
    assert_eq!(pg_support::balance(&mut admin, "p_nocheck", "dave"), 5);
    assert_eq!(ledger.balance("bob").unwrap(), 1_000);
    pg_support::eventually(Duration::from_secs(10), "the rollbacks", || {
        pg_support::prepared_with_prefix(&mut admin, pg.gid_prefix()).is_empty()
    });
    dtc.shutdown().unwrap();
}

#[test]
fn statements_that_end_or_prepare_the_transaction_are_refused() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_stmts", &[("alice", 100)]);
    let pg = open(&url, "stmts", "p_stmts");
    let dtc = Coordinator::builder().concurrent_service("pg", pg.clone(), 2).open().unwrap();
    let run = |work: PgWork| refused_code(&dtc.run(&Transaction::new().branch(work.branch("pg").unwrap())).unwrap());
    let one = |sql: &str, params: Vec<serde_json::Value>| PgWork::new().statement(sql, params);
    assert_eq!(run(one("COMMIT", vec![])), "pg_statement_not_allowed");
    assert_eq!(run(one("  /* sneaky */ PREPARE TRANSACTION 'mine'", vec![])), "pg_statement_not_allowed");
    assert_eq!(run(one("SET search_path = elsewhere", vec![])), "pg_statement_not_allowed");
    // Two statements in one entry: the server refuses (extended protocol).
    assert_eq!(run(one("UPDATE p_stmts SET balance = 0; COMMIT", vec![])), "42601");
    assert_eq!(run(one("UPDATE p_stmts SET balance = $1", vec![])), "pg_params");
    assert_eq!(run(one("UPDATE p_stmts SET balance = $1 WHERE id = $2", vec![json!("lots"), json!("alice")])), "22P02");
    let expect_two = one("UPDATE p_stmts SET balance = balance WHERE id = $1", vec![json!("alice")]).expect_rows(2);
    assert_eq!(run(expect_two), "pg_unexpected_rows");
    let too_many = (0..40).fold(PgWork::new(), |w, _| w.statement("SELECT 1", []));
    assert_eq!(run(too_many), "pg_too_many_statements");
    let t = Transaction::new().branch(Branch::new("pg", &b"not json"[..]));
    assert_eq!(refused_code(&dtc.run(&t).unwrap()), "pg_bad_payload");
    // SET LOCAL is transaction-scoped, so allowed.
    let local = one("SET LOCAL lock_timeout = '1s'", vec![])
        .statement("UPDATE p_stmts SET balance = balance + $1 WHERE id = $2", [json!(1), json!("alice")]);
    assert_eq!(dtc.run(&Transaction::new().branch(local.branch("pg").unwrap())).unwrap(), Outcome::Committed);
    assert_eq!(pg_support::balance(&mut admin, "p_stmts", "alice"), 101);
    assert!(pg_support::prepared_with_prefix(&mut admin, pg.gid_prefix()).is_empty());
    // Sessions came back clean: no transaction left open on any.
    let idle_in_tx: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dtc' AND state LIKE 'idle in transaction%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(idle_in_tx, 0);
    dtc.shutdown().unwrap();
}

fn branch(n: u128, index: u16) -> BranchId {
    BranchId { tx: TxId::from_u128(0x1234_0000 + n), index }
}

fn touch(table: &str) -> Vec<u8> {
    PgWork::new()
        .statement(format!("UPDATE {table} SET balance = balance + 1 WHERE id = $1"), [json!("alice")])
        .to_payload()
}

#[test]
fn commit_and_rollback_are_idempotent_and_checked_against_the_server() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_idem", &[("alice", 0)]);
    let mut pg = open(&url, "idem", "p_idem");
    let payload = touch("p_idem");

    let b1 = branch(1, 0);
    let p1 = pg.prepare(b1, Work::Payload(&payload)).unwrap();
    assert_eq!(p1.gid, pg.gid(b1));
    assert!(p1.gid.starts_with("dtc:t-idem-") && p1.gid.len() < 200);
    pg.commit(b1, &p1).unwrap();
    pg.commit(b1, &p1).unwrap(); // a lost acknowledgement: committed already
    assert_eq!(pg_support::balance(&mut admin, "p_idem", "alice"), 1);

    let b2 = branch(2, 1);
    let p2 = pg.prepare(b2, Work::Payload(&payload)).unwrap();
    pg.rollback(b2, Some(&p2)).unwrap();
    pg.rollback(b2, Some(&p2)).unwrap();
    pg.rollback(branch(3, 0), None).unwrap(); // never prepared
    assert_eq!(pg_support::balance(&mut admin, "p_idem", "alice"), 1);

    // Finished outside dtc against the decision: definite failures, which
    // the coordinator parks for an operator instead of retrying.
    let b4 = branch(4, 0);
    let p4 = pg.prepare(b4, Work::Payload(&payload)).unwrap();
    admin.batch_execute(&format!("ROLLBACK PREPARED '{}'", p4.gid)).unwrap();
    let failure = pg.commit(b4, &p4).unwrap_err();
    assert_eq!((failure.code.as_str(), failure.retryable), ("pg_rolled_back_elsewhere", false));
    let b5 = branch(5, 0);
    let p5 = pg.prepare(b5, Work::Payload(&payload)).unwrap();
    admin.batch_execute(&format!("COMMIT PREPARED '{}'", p5.gid)).unwrap();
    let failure = pg.rollback(b5, Some(&p5)).unwrap_err();
    assert_eq!((failure.code.as_str(), failure.retryable), ("pg_committed_elsewhere", false));

    let stats = pg.stats();
    assert_eq!(
        (stats.committed, stats.commits_already_done, stats.rolled_back, stats.rollbacks_already_done),
        (1, 1, 1, 2)
    );
    assert!(pg_support::prepared_with_prefix(&mut admin, pg.gid_prefix()).is_empty());
}

#[test]
fn two_coordinators_on_one_database_never_resolve_each_others_transactions() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_two", &[("alice", 0)]);
    let payload = touch("p_two");
    let mut a = open(&url, "two-a", "p_two");
    pg_support::clear_prepared(&mut admin, a.gid_prefix());
    let mine = branch(10, 0);
    let prepared = a.prepare(mine, Work::Payload(&payload)).unwrap();
    // Another application's prepared transaction, too.
    admin
        .batch_execute("BEGIN; UPDATE p_two SET balance = balance WHERE false; PREPARE TRANSACTION 'app:other'")
        .unwrap();

    // B's coordinator recovers a fresh log: presumed abort of everything
    // B lists, which must be nothing of A's.
    let mut b = open(&url, "two-b", "p_two");
    let dir = tempfile::tempdir().unwrap();
    let dtc = Coordinator::builder()
        .concurrent_service("pg", b.clone(), 2)
        .durability(Durability::Sync)
        .dir(dir.path())
        .open()
        .unwrap();
    dtc.shutdown().unwrap();
    assert!(b.recover().is_empty());
    assert!(b.stale(Duration::ZERO).unwrap().is_empty());
    let listed = pg_support::prepared_with_prefix(&mut admin, "");
    assert!(listed.contains(&prepared.gid) && listed.contains(&"app:other".to_string()), "{listed:?}");
    // A's own listing is exactly its branch (a participant reopened, as after a restart).
    let mut a_again = open(&url, "two-a", "p_two");
    let recovered = a_again.recover();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].0, mine);
    assert_eq!(recovered[0].1.gid, prepared.gid);
    assert_eq!(recovered[0].1.xid, prepared.xid);
    // B's operator calls refuse A's gid.
    assert!(matches!(b.rollback_prepared(&prepared.gid), Err(PgError::NotOurs { .. })));
    a.rollback(mine, Some(&prepared)).unwrap();
    admin.batch_execute("ROLLBACK PREPARED 'app:other'").unwrap();
}

#[test]
fn stale_prepared_transactions_are_listed_counted_and_recovered() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_stale", &[("alice", 0)]);
    let id = pg_support::coordinator_id("stale");
    let options = PgOptions::new(&id).accounts(Accounts::new("p_stale")).stale_after(Duration::from_millis(50));
    let mut pg = PgParticipant::open(&url, options.clone()).unwrap();
    pg_support::clear_prepared(&mut admin, pg.gid_prefix());
    let leaked = branch(20, 2);
    pg.prepare(leaked, Work::Payload(&touch("p_stale"))).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stale = pg.stale(Duration::from_millis(50)).unwrap();
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].branch, Some(leaked));
    assert!(stale[0].age() >= Duration::from_millis(50));
    let gauges = pg.gauges().unwrap();
    assert_eq!((gauges.prepared, gauges.stale), (1, 1));
    assert!(gauges.render_prometheus("pg").contains("dtc_pg_prepared_stale{service=\"pg\"} 1\n"));

    // The coordinator that owns the id opens its (fresh) log: no commit
    // decision, so presumed abort rolls the leak back.
    let dir = tempfile::tempdir().unwrap();
    let reopened = PgParticipant::open(&url, options).unwrap();
    let dtc = Coordinator::builder()
        .concurrent_service("pg", reopened.clone(), 2)
        .durability(Durability::Sync)
        .dir(dir.path())
        .open()
        .unwrap();
    pg_support::eventually(Duration::from_secs(10), "the rollback", || reopened.gauges().unwrap().prepared == 0);
    assert_eq!(pg_support::balance(&mut admin, "p_stale", "alice"), 0);
    dtc.shutdown().unwrap();
}

#[test]
fn a_commit_the_database_lost_is_parked_and_listed() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_parked", &[("alice", 100)]);
    let pg = open(&url, "parked", "p_parked");
    let prefix = pg.gid_prefix().to_string();
    let ledger = Ledger::new();
    ledger.create_account("bob", 0).unwrap();
    // Once PostgreSQL prepared, someone rolls it back behind dtc's back.
    let sabotage_url = url.clone();
    let gate = Gate::new(move |b: BranchId| {
        let mut c = pg_support::connect(&sabotage_url);
        let gid = format!("{prefix}{}:0", b.tx);
        assert!(pg_support::wait_prepared(&mut c, &gid));
        c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).unwrap();
        Ok(())
    });
    let dir = tempfile::tempdir().unwrap();
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 2)
        .service("ledger", ledger.clone())
        .service("gate", gate)
        .durability(Durability::Sync)
        .dir(dir.path())
        .open()
        .unwrap();
    let t = Transaction::new()
        .transfer(Transfer::new("pg", "alice", "ledger", "bob", 10))
        .branch(Branch::new("gate", &b""[..]));
    let outcome = dtc.run(&t).unwrap();
    assert!(outcome.is_committed(), "{outcome:?}");
    pg_support::eventually(Duration::from_secs(10), "the parked commit", || dtc.parked_count() == 1);
    let unfinished = dtc.unfinished();
    assert_eq!(unfinished.len(), 1);
    let pg_side = unfinished[0].participants.iter().find(|p| p.name == "pg").expect("pg listed");
    assert_eq!(pg_side.last_error.as_ref().map(|e| e.code.as_str()), Some("pg_rolled_back_elsewhere"));
    dtc.shutdown().unwrap();
}

#[test]
fn max_prepared_transactions_zero_is_a_clear_configuration_error() {
    let Some(url) = pg_support::url_from("DTC_PG_URL_NO2PC", Some("postgresql://dtc@127.0.0.1:54330/dtc")) else {
        return;
    };
    let error = PgParticipant::open(&url, PgOptions::new("t-no2pc")).unwrap_err();
    assert!(matches!(error, PgError::TwoPhaseDisabled { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("max_prepared_transactions = 0"), "{message}");
    assert!(message.contains("restart the server"), "{message}");
}

#[test]
fn a_wrong_database_missing_table_or_missing_privileges_are_clear_errors() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_privs", &[("alice", 1)]);
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    let error = PgParticipant::open(&format!("{base}/no_such_db"), PgOptions::new("t-x")).unwrap_err();
    assert!(matches!(error, PgError::WrongDatabase { .. }) && error.to_string().contains("no_such_db"), "{error}");
    let error = PgParticipant::open(&url, PgOptions::new("t-x").accounts(Accounts::new("no_such_table"))).unwrap_err();
    assert!(matches!(error, PgError::WrongDatabase { .. }) && error.to_string().contains("no_such_table"), "{error}");
    let error =
        PgParticipant::open(&url, PgOptions::new("t-x").accounts(Accounts::new("p_privs").balance_column("cash")))
            .unwrap_err();
    assert!(matches!(error, PgError::Options(_)), "{error}");
    let error = PgParticipant::open(&url, PgOptions::new("no:colons")).unwrap_err();
    assert!(matches!(error, PgError::Options(_)), "{error}");

    let Some(limited) =
        pg_support::url_from("DTC_PG_URL_LIMITED", Some("postgresql://dtc_limited@127.0.0.1:54329/dtc"))
    else {
        return;
    };
    let error = PgParticipant::open(&limited, PgOptions::new("t-x").accounts(Accounts::new("p_privs"))).unwrap_err();
    assert!(matches!(error, PgError::MissingPrivilege { .. }), "{error:?}");
    assert!(error.to_string().contains("GRANT SELECT, UPDATE ON p_privs"), "{error}");
    // A prepared transaction of the coordinator that this role cannot finish.
    let id = pg_support::coordinator_id("owner");
    let mut owner = PgParticipant::open(&url, PgOptions::new(&id)).unwrap();
    let b = branch(30, 0);
    let p = owner.prepare(b, Work::Payload(&PgWork::new().statement("SELECT 1", []).to_payload())).unwrap();
    let error = PgParticipant::open(&limited, PgOptions::new(&id)).unwrap_err();
    assert!(matches!(error, PgError::MissingPrivilege { .. }) && error.to_string().contains("connect as"), "{error}");
    owner.rollback(b, Some(&p)).unwrap();
}

#[test]
fn a_lock_wait_ends_at_the_vote_deadline_not_at_the_statement_timeout() {
    let url = require_pg!();
    let mut admin = pg_support::connect(&url);
    pg_support::accounts_table(&mut admin, "p_wait", &[("alice", 100)]);
    let pg = PgParticipant::open(
        &url,
        PgOptions::new(pg_support::coordinator_id("wait"))
            .accounts(Accounts::new("p_wait"))
            .statement_timeout(Duration::from_secs(60)),
    )
    .unwrap();
    let ledger = Ledger::new();
    ledger.create_account("bob", 1_000).unwrap();
    // The coordinator waits 500 ms for votes; the session would wait 60 s.
    let dtc = Coordinator::builder()
        .concurrent_service("pg", pg.clone(), 2)
        .service("ledger", ledger.clone())
        .call_timeout(Duration::from_millis(500))
        .open()
        .unwrap();
    // Another session holds alice's row.
    let mut holder = pg_support::connect(&url);
    holder.batch_execute("BEGIN; SELECT balance FROM p_wait WHERE id = 'alice' FOR UPDATE").unwrap();
    let outcome = dtc.execute(&[Transfer::new("pg", "alice", "ledger", "bob", 1)]).unwrap();
    assert!(matches!(outcome, Outcome::Aborted(_)), "{outcome:?}");
    // The branch's UPDATE stops waiting at the vote deadline (its statement
    // timeout was set to what was left of it), not a minute later.
    let waiting = |admin: &mut postgres::Client| -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE '%p_wait%' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0)
    };
    pg_support::eventually(Duration::from_secs(10), "no session of ours waits on the row lock", || {
        waiting(&mut admin) == 0
    });
    holder.batch_execute("ROLLBACK").unwrap();
    pg_support::eventually(Duration::from_secs(10), "nothing of ours prepared", || {
        pg_support::prepared_with_prefix(&mut admin, pg.gid_prefix()).is_empty()
    });
    assert_eq!(pg_support::balance(&mut admin, "p_wait", "alice"), 100);
    assert_eq!(ledger.balance("bob").unwrap(), 1_000);
    // With the row free, the same transfer commits.
    assert!(dtc.execute(&[Transfer::new("pg", "alice", "ledger", "bob", 1)]).unwrap().is_committed());
    dtc.shutdown().unwrap();
}

#[test]
fn refusals_carry_the_sqlstate_and_say_whether_to_retry() {
    assert!(dtc::pg::is_retryable(&AbortReason::Refused {
        service: "pg".into(),
        code: "40001".into(),
        message: String::new()
    }));
    assert!(!dtc::pg::is_retryable(&AbortReason::Refused {
        service: "pg".into(),
        code: "23514".into(),
        message: String::new()
    }));
    let _ = Refusal::new("x", "y");
}
