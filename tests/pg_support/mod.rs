//! Helpers of the PostgreSQL tests (`tests/pg_*.rs`): finding the server,
//! fresh tables, and looking at `pg_prepared_xacts` directly.
//!
//! The server is `DTC_PG_URL` (what `scripts/pg-cluster.sh start` prints),
//! else that script's default address. Without a server a test prints
//! `skipping: …` and passes, except under CI (`CI` set), where a missing
//! server fails it.

#![allow(dead_code)]

use std::time::Duration;

use postgres::{Client, NoTls};

/// The address `scripts/pg-cluster.sh start` gives the main cluster.
pub const DEFAULT_URL: &str = "postgresql://dtc@127.0.0.1:54329/dtc";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn reachable(url: &str) -> Result<(), String> {
    let mut config: postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    config.connect_timeout(Duration::from_secs(3));
    config.connect(NoTls).map(drop).map_err(|e| e.to_string())
}

/// The server's URL from the environment variable `var` (falling back to
/// `default`), or `None` after printing why the test is skipped. Under CI a
/// missing server is a failure.
pub fn url_from(var: &str, default: Option<&str>) -> Option<String> {
    let url = std::env::var(var).ok().or_else(|| default.map(str::to_string));
    let problem = match &url {
        Some(url) => reachable(url).err().map(|e| format!("{url}: {e}")),
        None => Some(format!("{var} is not set")),
    };
    match problem {
        None => url,
        Some(problem) if in_ci() => {
            panic!("no PostgreSQL under CI ({problem}): .ci/run must start one (scripts/pg-cluster.sh start)")
        }
        Some(problem) => {
            eprintln!("skipping: no PostgreSQL (set DTC_PG_URL or run scripts/pg-cluster.sh start) [{problem}]");
            None
        }
    }
}

/// The main server (two-phase commit enabled).
pub fn url() -> Option<String> {
    url_from("DTC_PG_URL", Some(DEFAULT_URL))
}

/// Returns from the test with a skip message when there is no server.
#[macro_export]
macro_rules! require_pg {
    () => {
        match pg_support::url() {
            Some(url) => url,
            None => return,
        }
    };
}

pub fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).expect("connect")
}

/// A coordinator id unique to this test and process.
pub fn coordinator_id(test: &str) -> String {
    format!("t-{test}-{}", std::process::id())
}

/// `accounts`-shaped table `name`, dropped and made again with these rows:
/// text ids, bigint balances, CHECK (balance >= 0).
pub fn accounts_table(client: &mut Client, name: &str, rows: &[(&str, i64)]) {
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; \
             CREATE TABLE {name} (id text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))"
        ))
        .unwrap();
    for (id, balance) in rows {
        client.execute(&format!("INSERT INTO {name} VALUES ($1, $2)"), &[id, balance]).unwrap();
    }
}

/// The balance of `id` in table `name`.
pub fn balance(client: &mut Client, table: &str, id: &str) -> i64 {
    client.query_one(&format!("SELECT balance FROM {table} WHERE id = $1"), &[&id]).unwrap().get(0)
}

/// Sum of the balances of table `name`.
pub fn total(client: &mut Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT coalesce(sum(balance), 0)::int8 FROM {table}"), &[]).unwrap().get(0)
}

/// Gids prepared with this prefix, in any database.
pub fn prepared_with_prefix(client: &mut Client, prefix: &str) -> Vec<String> {
    client
        .query("SELECT gid FROM pg_prepared_xacts WHERE left(gid, length($1)) = $1 ORDER BY gid", &[&prefix])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Rolls back whatever a previous run with this prefix left prepared.
pub fn clear_prepared(client: &mut Client, prefix: &str) {
    for gid in prepared_with_prefix(client, prefix) {
        let _ = client.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"));
    }
}

/// Waits (at most `limit`) until `done` holds.
pub fn eventually(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A payload participant in memory whose prepare runs a hook first: to act
/// at a precise moment of a transaction (once the PostgreSQL branch has
/// prepared, say). Volatile: it keeps nothing.
#[derive(Clone)]
pub struct Gate {
    pub hook: std::sync::Arc<dyn Fn(dtc::BranchId) -> Result<(), dtc::Refusal> + Send + Sync>,
}

impl Gate {
    pub fn new(hook: impl Fn(dtc::BranchId) -> Result<(), dtc::Refusal> + Send + Sync + 'static) -> Gate {
        Gate { hook: std::sync::Arc::new(hook) }
    }

    pub fn open() -> Gate {
        Gate::new(|_| Ok(()))
    }
}

impl dtc::Participant for Gate {
    type Prepared = ();
    fn kind(&self) -> dtc::ParticipantKind {
        dtc::ParticipantKind::Volatile
    }
    fn prepare(&mut self, branch: dtc::BranchId, _work: dtc::Work<'_>) -> Result<(), dtc::Refusal> {
        (self.hook)(branch)
    }
    fn commit(&mut self, _branch: dtc::BranchId, _prepared: &()) -> Result<(), dtc::Failure> {
        Ok(())
    }
    fn rollback(&mut self, _branch: dtc::BranchId, _prepared: Option<&()>) -> Result<(), dtc::Failure> {
        Ok(())
    }
}

/// Waits (at most 10 s) until `gid` is prepared; false if it never was.
pub fn wait_prepared(client: &mut Client, gid: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let n: i64 = client.query_one("SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", &[&gid]).unwrap().get(0);
        if n > 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
