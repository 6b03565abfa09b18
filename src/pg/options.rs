//! How a [`PgParticipant`](super::PgParticipant) connects and what it
//! accepts.

use std::time::Duration;

use super::error::PgError;
use super::gid::invalid_coordinator_id;

/// Most pooled connections one participant may hold.
pub const MAX_PG_CONNECTIONS: usize = 256;

/// The isolation level each branch's transaction runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Isolation {
    /// PostgreSQL's default. dtc's own locks (accounts, lock keys) already
    /// order conflicting transactions; row locks do the rest.
    #[default]
    ReadCommitted,
    /// `REPEATABLE READ`: a concurrent update is a refusal `40001` (retryable).
    RepeatableRead,
    /// `SERIALIZABLE`: serialization failures are refusals `40001` (retryable).
    Serializable,
}

impl Isolation {
    pub(crate) fn begin(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// A table of balances that transfer legs on the service move money in:
/// each leg is `UPDATE <table> SET <balance> = <balance> + delta WHERE <id>
/// = account`, exactly one row or the branch is refused (`unknown account`),
/// and a balance below zero is refused (`insufficient funds`) unless a
/// `CHECK` constraint refuses it first (its SQLSTATE `23514`). Audits sum the
/// table.
///
/// Identifiers are `[A-Za-z_][A-Za-z0-9_]*`, the table optionally
/// schema-qualified (`bank.accounts`); they are quoted in the SQL, so they
/// are case-sensitive as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub(crate) table: String,
    pub(crate) id_column: String,
    pub(crate) balance_column: String,
}

impl Accounts {
    /// The table `table` with columns `id` and `balance`.
    pub fn new(table: impl Into<String>) -> Accounts {
        Accounts { table: table.into(), id_column: "id".into(), balance_column: "balance".into() }
    }

    /// The column holding the account id (default `id`; any type whose
    /// text form is the account id).
    pub fn id_column(mut self, column: impl Into<String>) -> Accounts {
        self.id_column = column.into();
        self
    }

    /// The column holding the balance (default `balance`; an integer or
    /// numeric type).
    pub fn balance_column(mut self, column: impl Into<String>) -> Accounts {
        self.balance_column = column.into();
        self
    }

    /// The table as written (`schema.table` or `table`).
    pub fn table(&self) -> &str {
        &self.table
    }

    fn validate(&self) -> Result<(), PgError> {
        let parts: Vec<&str> = self.table.split('.').collect();
        if parts.len() > 2 || parts.iter().any(|p| !is_identifier(p)) {
            return Err(PgError::Options(format!("accounts table {:?}: not [schema.]identifier", self.table)));
        }
        for column in [&self.id_column, &self.balance_column] {
            if !is_identifier(column) {
                return Err(PgError::Options(format!("accounts column {column:?}: not an identifier")));
            }
        }
        Ok(())
    }

    /// The table, quoted.
    pub(crate) fn quoted_table(&self) -> String {
        self.table.split('.').map(quote).collect::<Vec<_>>().join(".")
    }

    pub(crate) fn quoted_id(&self) -> String {
        quote(&self.id_column)
    }

    pub(crate) fn quoted_balance(&self) -> String {
        quote(&self.balance_column)
    }
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= 63
}

/// Identifiers are checked by `is_identifier`, so quoting cannot be escaped.
fn quote(identifier: &str) -> String {
    debug_assert!(is_identifier(identifier));
    format!("\"{identifier}\"")
}

/// Options of a [`PgParticipant`](super::PgParticipant): the coordinator's
/// identity (required), the pool, timeouts and bounds.
///
/// ```
/// use std::time::Duration;
/// use dtc::pg::{Accounts, PgOptions};
/// let options = PgOptions::new("bank-eu-1")
///     .max_connections(16)
///     .statement_timeout(Duration::from_secs(2))
///     .accounts(Accounts::new("accounts"));
/// assert_eq!(options.gid_prefix(), "dtc:bank-eu-1:");
/// ```
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub(crate) coordinator_id: String,
    pub(crate) max_connections: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) checkout_timeout: Duration,
    pub(crate) statement_timeout: Duration,
    pub(crate) lock_timeout: Duration,
    pub(crate) idle_in_transaction_timeout: Duration,
    pub(crate) isolation: Isolation,
    pub(crate) accounts: Option<Accounts>,
    pub(crate) max_statements: usize,
    pub(crate) max_sql_bytes: usize,
    pub(crate) max_params: usize,
    pub(crate) max_param_bytes: usize,
    pub(crate) stale_after: Duration,
    pub(crate) application_name: String,
}

impl PgOptions {
    /// Options for the coordinator identified by `coordinator_id`: 1 to 64
    /// bytes of `[A-Za-z0-9_.-]`, the same across its restarts and unique
    /// among the coordinators (and other applications) that prepare
    /// transactions on the server. Its prepared transactions are named
    /// `dtc:<coordinator_id>:…` and recovery touches no other.
    pub fn new(coordinator_id: impl Into<String>) -> PgOptions {
        PgOptions {
            coordinator_id: coordinator_id.into(),
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            checkout_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            lock_timeout: Duration::ZERO,
            idle_in_transaction_timeout: Duration::from_secs(60),
            isolation: Isolation::default(),
            accounts: None,
            max_statements: 32,
            max_sql_bytes: 8 << 10,
            max_params: 64,
            max_param_bytes: 16 << 10,
            stale_after: Duration::from_secs(60),
            application_name: "dtc".into(),
        }
    }

    /// Most connections open at once (default 8, at most
    /// [`MAX_PG_CONNECTIONS`]). A branch holds one from its first statement
    /// to its `PREPARE TRANSACTION`; a commit or rollback holds one for one
    /// statement. Register the participant with at most this many lanes.
    pub fn max_connections(mut self, connections: usize) -> PgOptions {
        self.max_connections = connections;
        self
    }

    /// How long to wait for a new connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> PgOptions {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a free pooled connection before it is
    /// refused or failed as retryable (default 5 s).
    pub fn checkout_timeout(mut self, timeout: Duration) -> PgOptions {
        self.checkout_timeout = timeout;
        self
    }

    /// `statement_timeout` of the participant's sessions (default 5 s; zero
    /// for none). Bounds a statement stuck behind a lock, e.g. one held by
    /// a prepared transaction waiting for its decision.
    pub fn statement_timeout(mut self, timeout: Duration) -> PgOptions {
        self.statement_timeout = timeout;
        self
    }

    /// `lock_timeout` of the participant's sessions (default zero: none, the
    /// statement timeout bounds waits). A lock wait that times out is the
    /// retryable refusal `55P03`.
    pub fn lock_timeout(mut self, timeout: Duration) -> PgOptions {
        self.lock_timeout = timeout;
        self
    }

    /// `idle_in_transaction_session_timeout` (default 60 s): a session
    /// abandoned between a branch's statements cannot hold locks forever.
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> PgOptions {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// The isolation level of every branch (default read committed).
    pub fn isolation(mut self, isolation: Isolation) -> PgOptions {
        self.isolation = isolation;
        self
    }

    /// Lets transfer legs on the service move money in this table, and
    /// audits sum it (see [`Accounts`]).
    pub fn accounts(mut self, accounts: Accounts) -> PgOptions {
        self.accounts = Some(accounts);
        self
    }

    /// Most statements in one branch (default 32).
    pub fn max_statements(mut self, statements: usize) -> PgOptions {
        self.max_statements = statements;
        self
    }

    /// Longest SQL text of one statement, in bytes (default 8 KiB).
    pub fn max_sql_bytes(mut self, bytes: usize) -> PgOptions {
        self.max_sql_bytes = bytes;
        self
    }

    /// Most parameters of one statement (default 64).
    pub fn max_params(mut self, params: usize) -> PgOptions {
        self.max_params = params;
        self
    }

    /// Most bytes of all parameters of one statement, in their text form
    /// (default 16 KiB).
    pub fn max_param_bytes(mut self, bytes: usize) -> PgOptions {
        self.max_param_bytes = bytes;
        self
    }

    /// Age past which a prepared transaction of this coordinator counts as
    /// stale (default 60 s): listed by
    /// [`PgParticipant::stale`](super::PgParticipant::stale), counted by its
    /// gauges, warned about when the participant opens.
    pub fn stale_after(mut self, age: Duration) -> PgOptions {
        self.stale_after = age;
        self
    }

    /// `application_name` of the sessions (default `dtc`), shown in
    /// `pg_stat_activity`.
    pub fn application_name(mut self, name: impl Into<String>) -> PgOptions {
        self.application_name = name.into();
        self
    }

    /// The prefix of every gid this coordinator prepares: `dtc:<id>:`.
    pub fn gid_prefix(&self) -> String {
        super::gid::prefix(&self.coordinator_id)
    }

    /// The coordinator id.
    pub fn coordinator_id(&self) -> &str {
        &self.coordinator_id
    }

    pub(crate) fn validate(&self) -> Result<(), PgError> {
        if let Some(why) = invalid_coordinator_id(&self.coordinator_id) {
            return Err(PgError::Options(format!("coordinator id {:?}: {why}", self.coordinator_id)));
        }
        if self.max_connections == 0 || self.max_connections > MAX_PG_CONNECTIONS {
            return Err(PgError::Options(format!("max_connections must be 1..={MAX_PG_CONNECTIONS}")));
        }
        if self.connect_timeout.is_zero() || self.checkout_timeout.is_zero() {
            return Err(PgError::Options("connect and checkout timeouts must be positive".into()));
        }
        if self.max_statements == 0 || self.max_sql_bytes == 0 || self.max_param_bytes == 0 {
            return Err(PgError::Options("max_statements, max_sql_bytes and max_param_bytes must be positive".into()));
        }
        if self.application_name.len() > 63 || !self.application_name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PgError::Options("application_name: at most 63 printable ASCII bytes".into()));
        }
        if let Some(accounts) = &self.accounts {
            accounts.validate()?;
        }
        Ok(())
    }

    /// The session settings every pooled connection starts with.
    pub(crate) fn session_setup(&self) -> String {
        let ms = |d: Duration| d.as_millis().min(i32::MAX as u128);
        format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; SET idle_in_transaction_session_timeout = {}",
            ms(self.statement_timeout),
            ms(self.lock_timeout),
            ms(self.idle_in_transaction_timeout)
        )
    }
}
