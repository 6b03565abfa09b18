//! PostgreSQL as a two-phase-commit participant (cargo feature `postgres`).
//!
//! A [`PgParticipant`] is one database (one connection string). Each branch
//! runs in a transaction of its own on a pooled connection, held from the
//! branch's `BEGIN` to its `PREPARE TRANSACTION '<gid>'`; the coordinator's
//! decision is then applied with `COMMIT PREPARED` or `ROLLBACK PREPARED`
//! from any pooled connection. The participant is
//! [`Durable`](crate::ParticipantKind::Durable): PostgreSQL keeps prepared
//! transactions across crashes and restarts and lists them in
//! `pg_prepared_xacts`, so after a coordinator crash [`recover`] lists this
//! coordinator's (by gid prefix, in this database only) and the coordinator
//! commits those its log decided and rolls back the rest (presumed abort).
//!
//! **Gids** are `dtc:<coordinator-id>:<tx, 32 hex>:<branch index>` (at most
//! [`MAX_GID_BYTES`] = 107 bytes; PostgreSQL allows 199). The coordinator
//! id is configured ([`PgOptions::new`]), must stay the same across the
//! coordinator's restarts, and must differ between coordinators sharing a
//! server: recovery never touches a gid without its prefix.
//!
//! **Work.** A transfer leg on the service moves money in the configured
//! [`Accounts`] table; a payload branch is a [`PgWork`], a JSON list of
//! statements with parameters (data, not a closure: it can be logged,
//! resubmitted and checked before it runs). A database error is a refusal
//! with the server's SQLSTATE as its code; a serialization failure, a
//! deadlock or a lock timeout is one the caller can run again
//! ([`is_retryable`]).
//!
//! **Idempotency.** A `COMMIT PREPARED` that finds no such gid (SQLSTATE
//! `42704`) is checked against the transaction id recorded at prepare
//! (`txid_status`): committed means a lost acknowledgement, success;
//! aborted means someone rolled it back outside dtc, a definite failure
//! parked for an operator. Likewise for rollback. Each case is logged.
//!
//! [`recover`]: crate::Participant::recover
//!
//! ```no_run
//! use dtc::pg::{Accounts, PgOptions, PgParticipant};
//! use dtc::{Coordinator, Durability, Ledger, Outcome, Transfer};
//!
//! let pg = PgParticipant::open(
//!     "postgresql://dtc@127.0.0.1:5432/dtc",
//!     PgOptions::new("bank-1").accounts(Accounts::new("accounts")),
//! )?;
//! let ledger = Ledger::new();
//! ledger.create_account("bob", 0)?;
//! let dtc = Coordinator::builder()
//!     .concurrent_service("pg", pg, 8)
//!     .service("ledger", ledger)
//!     .durability(Durability::Sync)
//!     .dir("/var/lib/dtc")
//!     .open()?;
//! let outcome = dtc.execute(&[Transfer::new("pg", "alice", "ledger", "bob", 250)])?;
//! assert_eq!(outcome, Outcome::Committed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod gid;
mod inspect;
mod options;
mod pool;
mod work;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::types::ToSql;

use crate::participant::{BalanceSummary, BranchId, Failure, Operation, Participant, ParticipantKind, Refusal, Work};

pub use error::{
    CONNECTION_CODE, POOL_EXHAUSTED_CODE, PgError, RETRYABLE_SQLSTATES, VOTE_DEADLINE_PASSED_CODE, is_retryable,
    is_retryable_code,
};
pub use gid::{GID_PREFIX, MAX_COORDINATOR_ID_BYTES, MAX_GID_BYTES};
pub use inspect::{PgGauges, PreparedXact};
pub use options::{Accounts, Isolation, MAX_PG_CONNECTIONS, PgOptions};
pub use work::{PgStatement, PgWork, refused_statement};

use error::{Cause, cause, failure, query_error, refusal, sqlstate};
use pool::{Lease, Pool};
use work::TextParam;

/// Gids whose `PREPARE TRANSACTION` outcome is unknown (the connection
/// broke during it), remembered for rolling back.
const MAX_ORPHANS: usize = 1024;
/// An orphan's gid found absent this soon may still be being prepared by
/// a backend that has not noticed its client left: ask again later.
const ORPHAN_SETTLE: Duration = Duration::from_secs(2);
/// Orphans retried per prepare call (bounded work on the hot path).
const ORPHANS_PER_CALL: usize = 2;

/// What a branch keeps between prepare and its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgPrepared {
    /// The gid it is prepared under.
    pub gid: String,
    /// Its transaction id with epoch, to tell after the fact whether a gid
    /// that no longer exists was committed or rolled back.
    pub xid: Option<u64>,
}

/// Counters since the participant opened (shared by its clones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PgStats {
    /// Branches prepared.
    pub prepared: u64,
    /// Prepares refused (by the work, the server or the bounds).
    pub refused: u64,
    /// `COMMIT PREPARED` applied.
    pub committed: u64,
    /// Commits that found the gid already committed (a lost acknowledgement).
    pub commits_already_done: u64,
    /// `ROLLBACK PREPARED` applied.
    pub rolled_back: u64,
    /// Rollbacks that found nothing prepared (never prepared, or done before).
    pub rollbacks_already_done: u64,
    /// Prepares whose outcome was unknown (connection lost during
    /// `PREPARE TRANSACTION`), rolled back afterwards.
    pub orphaned: u64,
    /// Orphans waiting to be rolled back now.
    pub orphans_pending: u64,
}

#[derive(Default)]
struct Counters {
    prepared: AtomicU64,
    refused: AtomicU64,
    committed: AtomicU64,
    commits_already_done: AtomicU64,
    rolled_back: AtomicU64,
    rollbacks_already_done: AtomicU64,
    orphaned: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        // Relaxed: statistics only.
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Orphan {
    gid: String,
    since: Instant,
}

struct Shared {
    options: PgOptions,
    prefix: String,
    pool: Pool,
    server: String,
    database: String,
    role: String,
    /// The SQL of one transfer leg (with an accounts table).
    transfer_sql: Option<String>,
    balances_sql: Option<String>,
    /// The in-doubt listing taken when the participant opened: recovery
    /// works from it even if the server is unreachable by then, so a
    /// coordinator never opens without having seen what is prepared.
    in_doubt: Mutex<Option<Vec<(BranchId, PgPrepared)>>>,
    orphans: Mutex<VecDeque<Orphan>>,
    counters: Counters,
}

/// One PostgreSQL database as a participant. Cheap to clone: clones share
/// the connection pool, so register it with
/// [`Builder::concurrent_service`](crate::Builder::concurrent_service) and
/// at most [`PgOptions::max_connections`] lanes. See the module docs.
#[derive(Clone)]
pub struct PgParticipant {
    shared: Arc<Shared>,
}

impl fmt::Debug for PgParticipant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgParticipant")
            .field("server", &self.shared.server)
            .field("database", &self.shared.database)
            .field("role", &self.shared.role)
            .field("gid_prefix", &self.shared.prefix)
            .finish()
    }
}

/// The blocking client runs its own runtime: refuse to run inside another.
fn outside_async_runtime() -> Result<(), PgError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(PgError::InsideAsyncRuntime),
        Err(_) => Ok(()),
    }
}

impl PgParticipant {
    /// Connects to the database of `url` (`postgresql://user@host:port/db`
    /// or `host=… user=… dbname=…`; no TLS) and checks that it can take
    /// part: two-phase commit enabled (`max_prepared_transactions` > 0), the
    /// database and the accounts table there, the role's privileges on it,
    /// and every prepared transaction of this coordinator owned by the role.
    /// Lists what this coordinator holds prepared, for recovery.
    pub fn open(url: &str, options: PgOptions) -> Result<PgParticipant, PgError> {
        outside_async_runtime()?;
        options.validate()?;
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| PgError::Url(e.to_string()))?;
        config.connect_timeout(options.connect_timeout);
        config.application_name(&options.application_name);
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let pool = Pool::new(config, options.session_setup(), options.max_connections, options.checkout_timeout);
        let server = pool.server();
        let mut lease = pool.lease()?;
        let row = lease
            .client
            .query_one(
                "SELECT current_setting('max_prepared_transactions')::int4, \
                        current_setting('server_version_num')::int4, current_setting('server_version'), \
                        current_database()::text, current_user::text",
                &[],
            )
            .map_err(|e| query_error("reading the server's settings", &e))?;
        let (max_prepared, version_num, version): (i32, i32, String) = (row.get(0), row.get(1), row.get(2));
        let (database, role): (String, String) = (row.get(3), row.get(4));
        if version_num < 100_000 {
            return Err(PgError::ServerTooOld { version });
        }
        if max_prepared == 0 {
            return Err(PgError::TwoPhaseDisabled { server });
        }
        if (max_prepared as usize) < options.max_connections {
            tracing::warn!(%server, max_prepared, pool = options.max_connections, "max_prepared_transactions is below the pool size: prepares beyond it fail (SQLSTATE 53200)");
        }
        let (transfer_sql, balances_sql) = match &options.accounts {
            Some(accounts) => {
                let (transfer, balances) = accounts_sql(accounts);
                check_accounts(&mut lease, accounts, &transfer, &database, &role)?;
                (Some(transfer), Some(balances))
            }
            None => (None, None),
        };
        let prefix = options.gid_prefix();
        // A previous incarnation's sessions may still be finishing a
        // PREPARE TRANSACTION (see `prepares_in_flight`): list after them,
        // waiting at most the connect timeout.
        let settle = Instant::now() + options.connect_timeout;
        loop {
            let in_flight = inspect::prepares_in_flight(&mut lease, &prefix)?;
            if in_flight == 0 {
                break;
            }
            if Instant::now() >= settle {
                tracing::warn!(%server, in_flight, prefix = %prefix, "other sessions are still preparing transactions of this coordinator id (another coordinator with the same id?): listing without them; what they prepare is resolved at the next restart or by an operator");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let ours = inspect::list(&mut lease, &prefix)?;
        if let Some(foreign) = ours.iter().find(|p| p.owner != role) {
            let superuser: bool = lease
                .client
                .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
                .map(|r| r.get(0))
                .unwrap_or(false);
            if !superuser {
                return Err(PgError::MissingPrivilege {
                    role,
                    privilege: format!(
                        "ownership of prepared transaction {:?} (owned by {:?})",
                        foreign.gid, foreign.owner
                    ),
                    fix: format!(
                        "only its owner or a superuser can finish it: connect as {:?} (prepared transactions of \
                         this coordinator must all be finished by the role that prepared them)",
                        foreign.owner
                    ),
                });
            }
        }
        for (other, count) in inspect::elsewhere(&mut lease, &prefix)? {
            tracing::warn!(%server, database = %other, count, prefix = %prefix, "prepared transactions of this coordinator id exist in another database: recovery from this one cannot see them (wrong database, or another service of the coordinator)");
        }
        let stale: Vec<&PreparedXact> = ours.iter().filter(|p| p.age() > options.stale_after).collect();
        if !stale.is_empty() {
            tracing::warn!(%server, %database, stale = stale.len(), oldest_s = stale[0].age_seconds, "prepared transactions of this coordinator are older than stale_after; the coordinator's recovery resolves them when it opens");
        }
        let in_doubt = recoverable(&ours);
        tracing::info!(%server, %database, %role, prefix = %prefix, in_doubt = in_doubt.len(), "PostgreSQL participant open");
        drop(lease);
        Ok(PgParticipant {
            shared: Arc::new(Shared {
                options,
                prefix,
                pool,
                server,
                database,
                role,
                transfer_sql,
                balances_sql,
                in_doubt: Mutex::new(Some(in_doubt)),
                orphans: Mutex::new(VecDeque::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// The prefix of every gid this participant prepares (`dtc:<id>:`).
    pub fn gid_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The gid `branch` is (or would be) prepared under.
    pub fn gid(&self, branch: BranchId) -> String {
        gid::gid(&self.shared.prefix, branch)
    }

    /// The branch a gid of this coordinator names.
    pub fn branch_of(&self, gid: &str) -> Option<BranchId> {
        gid::parse(&self.shared.prefix, gid)
    }

    /// The database connected to.
    pub fn database(&self) -> &str {
        &self.shared.database
    }

    /// Every prepared transaction of this coordinator in this database,
    /// oldest first.
    pub fn prepared_transactions(&self) -> Result<Vec<PreparedXact>, PgError> {
        outside_async_runtime()?;
        let mut lease = self.shared.pool.lease()?;
        inspect::list(&mut lease, &self.shared.prefix)
    }

    /// Those older than `older_than`: after a coordinator crash, until its
    /// recovery runs; or leaked (a coordinator that never came back, a log
    /// that was lost). Each holds its row locks and stops VACUUM.
    pub fn stale(&self, older_than: Duration) -> Result<Vec<PreparedXact>, PgError> {
        Ok(self.prepared_transactions()?.into_iter().filter(|p| p.age() > older_than).collect())
    }

    /// The gauges, computed now (one query; see [`PgGauges`]).
    pub fn gauges(&self) -> Result<PgGauges, PgError> {
        let ours = self.prepared_transactions()?;
        let stale_after = self.shared.options.stale_after;
        let (open, idle) = self.shared.pool.counts();
        Ok(PgGauges {
            prepared: ours.len() as u64,
            stale: ours.iter().filter(|p| p.age() > stale_after).count() as u64,
            oldest_age_seconds: ours.first().map_or(0.0, |p| p.age_seconds),
            stale_after_seconds: stale_after.as_secs_f64(),
            connections_open: open as u64,
            connections_idle: idle as u64,
        })
    }

    /// Counters since the participant opened.
    pub fn stats(&self) -> PgStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PgStats {
            prepared: get(&c.prepared),
            refused: get(&c.refused),
            committed: get(&c.committed),
            commits_already_done: get(&c.commits_already_done),
            rolled_back: get(&c.rolled_back),
            rollbacks_already_done: get(&c.rollbacks_already_done),
            orphaned: get(&c.orphaned),
            orphans_pending: self.shared.orphans.lock().len() as u64,
        }
    }

    /// An operator's `COMMIT PREPARED` of one of this coordinator's gids.
    /// True if it was prepared (false: nothing by that gid). Only for a
    /// transaction the coordinator's log decided to commit: `dtc resolve`
    /// checks that first.
    pub fn commit_prepared(&self, gid: &str) -> Result<bool, PgError> {
        self.operator_finish(gid, true)
    }

    /// An operator's `ROLLBACK PREPARED` of one of this coordinator's gids.
    /// True if it was prepared. Safe for any transaction without a commit
    /// decision (presumed abort).
    pub fn rollback_prepared(&self, gid: &str) -> Result<bool, PgError> {
        self.operator_finish(gid, false)
    }

    fn operator_finish(&self, gid: &str, commit: bool) -> Result<bool, PgError> {
        outside_async_runtime()?;
        if self.branch_of(gid).is_none() {
            return Err(PgError::NotOurs { gid: gid.into(), prefix: self.shared.prefix.clone() });
        }
        let mut lease = self.shared.pool.lease()?;
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        match lease.client.batch_execute(&format!("{verb} PREPARED '{gid}'")) {
            Ok(()) => {
                tracing::warn!(gid, "{verb} PREPARED by an operator");
                Ok(true)
            }
            Err(e) if sqlstate(&e) == Some("42704") => Ok(false),
            Err(e) => Err(query_error(if commit { "COMMIT PREPARED" } else { "ROLLBACK PREPARED" }, &e)),
        }
    }
}

/// The in-doubt branches of a listing (gids in dtc's format only).
fn recoverable(ours: &[PreparedXact]) -> Vec<(BranchId, PgPrepared)> {
    ours.iter()
        .filter_map(|p| match p.branch {
            Some(branch) => Some((branch, PgPrepared { gid: p.gid.clone(), xid: Some(p.xid) })),
            None => {
                tracing::error!(gid = %p.gid, "a prepared transaction has this coordinator's prefix but not dtc's gid format: left alone");
                None
            }
        })
        .collect()
}

/// (one transfer leg, the audit's sums) for an accounts table.
fn accounts_sql(a: &Accounts) -> (String, String) {
    let (t, id, bal) = (a.quoted_table(), a.quoted_id(), a.quoted_balance());
    (
        format!("UPDATE {t} SET {bal} = {bal} + $1 WHERE {id} = $2 RETURNING {bal} < 0"),
        format!(
            "SELECT count(*)::int8, coalesce(sum({bal}), 0)::text, count(*) FILTER (WHERE {bal} < 0)::int8 FROM {t}"
        ),
    )
}

/// The table exists here with those columns (the server parses the leg's
/// statement) and the role may read and update it.
fn check_accounts(
    lease: &mut Lease<'_>,
    accounts: &Accounts,
    transfer: &str,
    database: &str,
    role: &str,
) -> Result<(), PgError> {
    let table = accounts.quoted_table();
    let found: bool = lease
        .client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .map_err(|e| query_error("looking up the accounts table", &e))?
        .get(0);
    if !found {
        return Err(PgError::WrongDatabase {
            database: database.into(),
            message: format!(
                "no table {} in database {database:?} (visible to role {role:?} on its search_path): wrong database, \
                 or create the table first",
                accounts.table()
            ),
        });
    }
    let row = lease
        .client
        .query_one("SELECT has_table_privilege($1, 'SELECT'), has_table_privilege($1, 'UPDATE')", &[&table])
        .map_err(|e| query_error("checking privileges", &e))?;
    for (i, privilege) in ["SELECT", "UPDATE"].iter().enumerate() {
        if !row.get::<_, bool>(i) {
            return Err(PgError::MissingPrivilege {
                role: role.into(),
                privilege: format!("{privilege} on {}", accounts.table()),
                fix: format!("GRANT SELECT, UPDATE ON {} TO {role}", accounts.table()),
            });
        }
    }
    if let Err(e) = lease.statement(transfer) {
        return Err(PgError::Options(format!(
            "accounts table {}: the transfer statement does not parse ({}): check the id and balance columns",
            accounts.table(),
            error::describe(&e)
        )));
    }
    Ok(())
}

/// What one prepare runs.
enum Steps<'a> {
    Transfers(&'a [Operation<'a>]),
    Statements(PgWork),
}

impl Shared {
    fn refuse(&self, refusal: Refusal) -> Refusal {
        Counters::add(&self.counters.refused);
        refusal
    }

    /// A connection in a fresh transaction for one branch. A pooled
    /// connection found dead (the server restarted) is replaced once, with
    /// the other idle ones. Within a coordinator's prepare, waits end at its
    /// vote deadline ([`vote_deadline`](crate::participant::vote_deadline)):
    /// the pool checkout, and every statement of the branch (`SET LOCAL
    /// statement_timeout` to what is left, when that is under 90 % of the
    /// session's), so a lock wait does not hold the lane after the
    /// transaction has moved on.
    fn begin(&self) -> Result<Lease<'_>, Refusal> {
        let vote_by = crate::participant::vote_deadline();
        let mut begin = self.options.isolation.begin().to_string();
        if let Some(vote_by) = vote_by {
            let left = vote_by.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Refusal::new(
                    VOTE_DEADLINE_PASSED_CODE,
                    "the coordinator's vote deadline passed before the branch began",
                ));
            }
            // Only when clearly tighter than the session's own timeout (the
            // defaults are alike, 5 s each): the extra statement costs a
            // parse on every branch.
            let session = self.options.statement_timeout;
            if session.is_zero() || left.saturating_mul(10) < session.saturating_mul(9) {
                // At least 1 ms: 0 would mean no timeout at all.
                let ms = left.as_millis().clamp(1, i32::MAX as u128);
                begin.push_str(&format!("; SET LOCAL statement_timeout = {ms}"));
            }
        }
        for attempt in 0..2 {
            let mut lease = self.pool.lease_before(vote_by).map_err(lease_refusal)?;
            match lease.client.batch_execute(&begin) {
                Ok(()) => return Ok(lease),
                Err(e) => {
                    lease.discard();
                    if cause(&e) != Cause::Connection || attempt == 1 {
                        return Err(refusal(&e, "BEGIN: "));
                    }
                    drop(lease);
                    self.pool.clear_idle();
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn run(&self, lease: &mut Lease<'_>, steps: &Steps<'_>) -> Result<(), Refusal> {
        match steps {
            Steps::Transfers(ops) => self.run_transfers(lease, ops),
            Steps::Statements(work) => run_statements(lease, work),
        }
    }

    fn run_transfers(&self, lease: &mut Lease<'_>, ops: &[Operation<'_>]) -> Result<(), Refusal> {
        let Some(sql) = &self.transfer_sql else {
            return Err(Refusal::new(
                "pg_no_accounts_table",
                "transfer legs on this service need PgOptions::accounts (a table of balances)",
            ));
        };
        let statement = lease.statement(sql).map_err(|e| refusal(&e, "transfer: "))?;
        // The plan gives a branch's legs merged per account and sorted, so
        // every transaction takes its row locks in the same order.
        for op in ops {
            let params = [TextParam(Some(op.delta.to_string())), TextParam(Some(op.account.to_string()))];
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            match lease.client.query_opt(&statement, &refs) {
                Ok(None) => return Err(Refusal::UnknownAccount { account: op.account.to_string() }),
                Ok(Some(row)) if row.get::<_, bool>(0) => {
                    return Err(Refusal::InsufficientFunds { account: op.account.to_string() });
                }
                Ok(Some(_)) => {}
                Err(e) => return Err(refusal(&e, &format!("account {}: ", op.account))),
            }
        }
        Ok(())
    }

    /// Ends the transaction of a refused branch; a connection that cannot
    /// is dropped (the server rolls back what it held).
    fn abandon(&self, lease: &mut Lease<'_>) {
        if lease.client.batch_execute("ROLLBACK").is_err() {
            lease.discard();
        }
    }

    fn prepare(&self, branch: BranchId, work: Work<'_>) -> Result<PgPrepared, Refusal> {
        self.retry_orphans(ORPHANS_PER_CALL);
        let steps = match work {
            Work::Transfers(ops) => Steps::Transfers(ops),
            Work::Payload(bytes) => {
                let work = PgWork::parse(bytes)?;
                work.validate(&self.options)?;
                Steps::Statements(work)
            }
        };
        let gid = gid::gid(&self.prefix, branch);
        let mut lease = self.begin()?;
        if let Err(refusal) = self.run(&mut lease, &steps) {
            self.abandon(&mut lease);
            return Err(refusal);
        }
        // One round trip: the transaction id (to verify a commit or rollback
        // that later finds nothing), then the prepare.
        match lease.client.simple_query(&format!("SELECT txid_current(); PREPARE TRANSACTION '{gid}'")) {
            Ok(messages) => {
                let xid = messages.iter().find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse::<u64>().ok()),
                    _ => None,
                });
                Counters::add(&self.counters.prepared);
                tracing::trace!(%gid, ?xid, "prepared");
                Ok(PgPrepared { gid, xid })
            }
            Err(e) if cause(&e) == Cause::Server => {
                // A failed PREPARE TRANSACTION is a rollback.
                self.abandon(&mut lease);
                Err(refusal(&e, "PREPARE TRANSACTION: "))
            }
            Err(e) => {
                lease.discard();
                drop(lease);
                Counters::add(&self.counters.orphaned);
                tracing::warn!(%gid, error = %e, "connection lost during PREPARE TRANSACTION: outcome unknown, rolling it back");
                self.orphan(gid);
                // It may be prepared: the coordinator rolls it back like a
                // prepared branch (and the orphan list covers a backend still
                // preparing when that rollback finds nothing).
                Err(Refusal::Unknown {
                    code: CONNECTION_CODE.into(),
                    message: format!("connection lost during PREPARE TRANSACTION ({})", error::describe(&e)),
                })
            }
        }
    }

    /// Remembers a gid that may have prepared, and tries to roll it back.
    fn orphan(&self, gid: String) {
        {
            let mut orphans = self.orphans.lock();
            if orphans.len() >= MAX_ORPHANS
                && let Some(dropped) = orphans.pop_front()
            {
                tracing::error!(gid = %dropped.gid, "too many orphaned prepares to track: left to recovery and `stale()`");
            }
            orphans.push_back(Orphan { gid, since: Instant::now() });
        }
        self.retry_orphans(1);
    }

    /// Rolls back up to `limit` orphans (bounded work per call).
    fn retry_orphans(&self, limit: usize) {
        for _ in 0..limit {
            let Some(orphan) = self.orphans.lock().pop_front() else { return };
            let keep = match self.finish_once(&orphan.gid, false) {
                Ok(true) => {
                    tracing::info!(gid = %orphan.gid, "orphaned prepare rolled back");
                    false
                }
                // Absent: rolled back by the server already, unless a
                // backend is still preparing it; ask again until it settled.
                Ok(false) => orphan.since.elapsed() < ORPHAN_SETTLE,
                Err(_) => true,
            };
            if keep {
                self.orphans.lock().push_back(orphan);
                return;
            }
        }
    }

    /// One `COMMIT/ROLLBACK PREPARED`: Ok(true) applied, Ok(false) no such
    /// gid. A dead pooled connection is replaced once.
    fn finish_once(&self, gid: &str, commit: bool) -> Result<bool, postgres_or_pool::Error> {
        let verb = if commit { "COMMIT" } else { "ROLLBACK" };
        for attempt in 0..2 {
            let mut lease = self.pool.lease().map_err(postgres_or_pool::Error::Pool)?;
            match lease.client.batch_execute(&format!("{verb} PREPARED '{gid}'")) {
                Ok(()) => return Ok(true),
                Err(e) if sqlstate(&e) == Some("42704") => return Ok(false),
                Err(e) => {
                    if cause(&e) != Cause::Server {
                        lease.discard();
                    }
                    if cause(&e) != Cause::Connection || attempt == 1 {
                        return Err(postgres_or_pool::Error::Pg(e));
                    }
                    drop(lease);
                    self.pool.clear_idle();
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// What became of a transaction whose gid no longer exists.
    fn status_of(&self, xid: u64) -> Option<String> {
        let mut lease = self.pool.lease().ok()?;
        match lease.client.query_one("SELECT txid_status($1)", &[&(xid as i64)]) {
            Ok(row) => row.get(0),
            Err(e) => {
                tracing::warn!(xid, error = %e, "txid_status failed");
                None
            }
        }
    }

    fn commit(&self, prepared: &PgPrepared) -> Result<(), Failure> {
        let gid = &prepared.gid;
        match self.finish_once(gid, true) {
            Ok(true) => {
                Counters::add(&self.counters.committed);
                Ok(())
            }
            Ok(false) => match prepared.xid.and_then(|x| self.status_of(x)).as_deref() {
                Some("aborted") => {
                    tracing::error!(%gid, "COMMIT PREPARED found nothing, and the transaction was rolled back outside dtc");
                    Err(Failure::definite(
                        "pg_rolled_back_elsewhere",
                        format!(
                            "{gid} was rolled back outside dtc although the decision is commit: fix by hand, then `dtc resolve --commit`"
                        ),
                    ))
                }
                Some("in progress") => {
                    Err(Failure::with_code("pg_in_progress", format!("{gid}: the transaction is still in progress")))
                }
                status => {
                    // The coordinator sends commit only for a branch that
                    // voted yes and was decided: a gid gone is a commit
                    // applied before (a lost acknowledgement).
                    Counters::add(&self.counters.commits_already_done);
                    tracing::info!(%gid, status = status.unwrap_or("unknown"), "COMMIT PREPARED found nothing: already committed");
                    Ok(())
                }
            },
            Err(e) => Err(e.failure("COMMIT PREPARED")),
        }
    }

    fn rollback(&self, gid: &str, xid: Option<u64>) -> Result<(), Failure> {
        match self.finish_once(gid, false) {
            Ok(true) => {
                Counters::add(&self.counters.rolled_back);
                Ok(())
            }
            Ok(false) => {
                if xid.and_then(|x| self.status_of(x)).as_deref() == Some("committed") {
                    tracing::error!(%gid, "ROLLBACK PREPARED found nothing, and the transaction was committed outside dtc");
                    return Err(Failure::definite(
                        "pg_committed_elsewhere",
                        format!(
                            "{gid} was committed outside dtc although the decision is rollback: fix by hand, then `dtc resolve --abort`"
                        ),
                    ));
                }
                Counters::add(&self.counters.rollbacks_already_done);
                tracing::info!(%gid, "ROLLBACK PREPARED found nothing: never prepared, or rolled back before");
                Ok(())
            }
            Err(e) => Err(e.failure("ROLLBACK PREPARED")),
        }
    }

    fn balances(&self) -> Option<BalanceSummary> {
        let sql = self.balances_sql.as_ref()?;
        let mut lease = match self.pool.lease() {
            Ok(lease) => lease,
            Err(e) => {
                tracing::error!(error = %e, "audit: no connection");
                return None;
            }
        };
        match lease.client.query_one(sql.as_str(), &[]) {
            Ok(row) => {
                let total: String = row.get(1);
                Some(BalanceSummary {
                    accounts: row.get::<_, i64>(0) as u64,
                    total: total.parse().unwrap_or_else(|_| {
                        tracing::error!(%total, "audit: the balance sum is not an integer");
                        i128::MIN
                    }),
                    negative: row.get::<_, i64>(2) as u64,
                })
            }
            Err(e) => {
                tracing::error!(error = %e, "audit query failed");
                None
            }
        }
    }
}

/// A refusal when no connection could be had.
fn lease_refusal(error: PgError) -> Refusal {
    match error {
        PgError::PoolExhausted { .. } => Refusal::new(POOL_EXHAUSTED_CODE, error.to_string()),
        other => Refusal::new(CONNECTION_CODE, other.to_string()),
    }
}

/// Errors of one finishing statement.
mod postgres_or_pool {
    use super::{CONNECTION_CODE, POOL_EXHAUSTED_CODE, PgError};
    use crate::participant::Failure;

    pub(super) enum Error {
        Pool(PgError),
        Pg(postgres::Error),
    }

    impl Error {
        /// Retryable, under the server's SQLSTATE where there is one.
        pub(super) fn failure(self, what: &str) -> Failure {
            match self {
                Error::Pool(e @ PgError::PoolExhausted { .. }) => {
                    Failure::with_code(POOL_EXHAUSTED_CODE, e.to_string())
                }
                Error::Pool(e) => Failure::with_code(CONNECTION_CODE, e.to_string()),
                Error::Pg(e) => super::failure(&e, what),
            }
        }
    }
}

fn run_statements(lease: &mut Lease<'_>, work: &PgWork) -> Result<(), Refusal> {
    for (i, s) in work.statements.iter().enumerate() {
        let context = format!("statement {i}: ");
        let statement = lease.statement(&s.sql).map_err(|e| refusal(&e, &context))?;
        if statement.params().len() != s.params.len() {
            return Err(Refusal::new(
                "pg_params",
                format!(
                    "statement {i} takes {} parameters, the payload gives {}",
                    statement.params().len(),
                    s.params.len()
                ),
            ));
        }
        let params: Vec<TextParam> = s.params.iter().map(TextParam::from_json).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = lease.client.execute(&statement, &refs).map_err(|e| refusal(&e, &context))?;
        if let Some(expected) = s.expect_rows
            && rows != expected
        {
            return Err(Refusal::new(
                "pg_unexpected_rows",
                format!("statement {i} affected {rows} rows, {expected} expected"),
            ));
        }
    }
    Ok(())
}

impl Participant for PgParticipant {
    type Prepared = PgPrepared;

    fn kind(&self) -> ParticipantKind {
        ParticipantKind::Durable
    }

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<PgPrepared, Refusal> {
        self.shared.prepare(branch, work).map_err(|r| self.shared.refuse(r))
    }

    fn commit(&mut self, _branch: BranchId, prepared: &PgPrepared) -> Result<(), Failure> {
        self.shared.commit(prepared)
    }

    fn rollback(&mut self, branch: BranchId, prepared: Option<&PgPrepared>) -> Result<(), Failure> {
        match prepared {
            Some(p) => self.shared.rollback(&p.gid, p.xid),
            // A prepare that panicked, or a branch known only by its id: its
            // gid follows from it.
            None => self.shared.rollback(&gid::gid(&self.shared.prefix, branch), None),
        }
    }

    fn recover(&mut self) -> Vec<(BranchId, PgPrepared)> {
        if let Some(listed) = self.shared.in_doubt.lock().take() {
            return listed;
        }
        // Opened before, by another coordinator of this process: list again.
        match self.prepared_transactions() {
            Ok(ours) => recoverable(&ours),
            Err(error) => {
                tracing::error!(%error, "recover(): cannot list prepared transactions; they stay prepared until the next restart or an operator");
                Vec::new()
            }
        }
    }

    fn balances(&mut self) -> Option<BalanceSummary> {
        self.shared.balances()
    }
}
