//! What can go wrong when a [`PgParticipant`](super::PgParticipant) opens or
//! an operator inspects PostgreSQL, and how the server's errors map onto
//! dtc's refusals and failures.

use crate::participant::{Failure, Refusal};
use crate::txn::AbortReason;

/// SQLSTATEs of a prepare that may well succeed if the transaction is run
/// again: `40001` serialization failure, `40P01` deadlock detected, `55P03`
/// lock not available (`lock_timeout`).
pub const RETRYABLE_SQLSTATES: [&str; 3] = ["40001", "40P01", "55P03"];

/// Refusal code: the connection broke (or none could be made) before the
/// branch prepared; nothing of it is left prepared. Worth retrying.
pub const CONNECTION_CODE: &str = "pg_connection";
/// Refusal code: every pooled connection stayed busy past the checkout
/// timeout. Worth retrying.
pub const POOL_EXHAUSTED_CODE: &str = "pg_pool_exhausted";
/// Refusal code: the coordinator's vote deadline passed before the branch
/// began (it had waited for a connection, say); nothing was done. Worth
/// retrying.
pub const VOTE_DEADLINE_PASSED_CODE: &str = "pg_vote_deadline_passed";

/// True if a refusal with this code is worth running again (a serialization
/// failure, a deadlock or lock timeout detected by the server, or a lost
/// connection before the prepare).
///
/// ```
/// assert!(dtc::pg::is_retryable_code("40P01"));
/// assert!(!dtc::pg::is_retryable_code("23514")); // a CHECK constraint
/// ```
pub fn is_retryable_code(code: &str) -> bool {
    RETRYABLE_SQLSTATES.contains(&code)
        || code == CONNECTION_CODE
        || code == POOL_EXHAUSTED_CODE
        || code == VOTE_DEADLINE_PASSED_CODE
}

/// True if a transaction aborted for a reason that running it again (with a
/// new id) may get past: see [`is_retryable_code`].
pub fn is_retryable(reason: &AbortReason) -> bool {
    matches!(reason, AbortReason::Refused { code, .. } if is_retryable_code(code))
}

/// An error opening a [`PgParticipant`](super::PgParticipant), or of its
/// operator calls. Each message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The options are not usable (the message says which).
    #[error("invalid PostgreSQL participant options: {0}")]
    Options(String),
    /// The connection string does not parse.
    #[error("invalid PostgreSQL connection string: {0}")]
    Url(String),
    /// Called from inside an async runtime: the blocking client runs a
    /// runtime of its own and cannot be driven from within another.
    #[error(
        "PgParticipant called from inside an async runtime; the blocking postgres client cannot run there: \
         open and use it from a plain thread (e.g. tokio::task::spawn_blocking)"
    )]
    InsideAsyncRuntime,
    /// The server could not be reached, or closed the connection.
    #[error("cannot reach PostgreSQL at {server}: {message}")]
    Unreachable {
        /// Host and port (never the password).
        server: String,
        /// What the client said.
        message: String,
    },
    /// The server refused the role's credentials.
    #[error("PostgreSQL refused role {role:?}: {message}")]
    Authentication {
        /// The role.
        role: String,
        /// The server's message.
        message: String,
    },
    /// The database does not exist on that server, or is not the one that
    /// holds the configured table.
    #[error("wrong database: {message}")]
    WrongDatabase {
        /// The database.
        database: String,
        /// What is wrong, and what to check.
        message: String,
    },
    /// Two-phase commit is disabled on the server.
    #[error(
        "PostgreSQL at {server} has max_prepared_transactions = 0, so it cannot take part in two-phase commit: \
         set max_prepared_transactions in postgresql.conf (at least the number of branches prepared at once, \
         e.g. max_connections) and restart the server (a reload is not enough; a hot standby needs at least the \
         primary's value)"
    )]
    TwoPhaseDisabled {
        /// Host and port.
        server: String,
    },
    /// The role lacks a privilege the participant needs.
    #[error("role {role:?} lacks {privilege}: {fix}")]
    MissingPrivilege {
        /// The role.
        role: String,
        /// What it lacks.
        privilege: String,
        /// How to fix it.
        fix: String,
    },
    /// The server is older than the participant supports.
    #[error("PostgreSQL {version} is too old: 10 or later is needed")]
    ServerTooOld {
        /// `server_version`.
        version: String,
    },
    /// Every connection stayed busy past the checkout timeout.
    #[error("no PostgreSQL connection free within {timeout_ms} ms (raise max_connections or lower the load)")]
    PoolExhausted {
        /// The checkout timeout.
        timeout_ms: u64,
    },
    /// A statement failed.
    #[error("PostgreSQL {what} failed: {message}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// SQLSTATE, if the server sent one.
        code: Option<String>,
        /// The server's or client's message.
        message: String,
    },
    /// A gid is not this coordinator's (operator calls touch only ours).
    #[error("{gid:?} is not a prepared transaction of this coordinator (its gids start with {prefix:?})")]
    NotOurs {
        /// The gid.
        gid: String,
        /// This coordinator's prefix.
        prefix: String,
    },
}

/// The SQLSTATE of an error, if the server sent one.
pub(crate) fn sqlstate(error: &postgres::Error) -> Option<&str> {
    error.code().map(|c| c.code())
}

/// The server's message with its detail, or the client's.
pub(crate) fn describe(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => match (db.detail(), db.constraint()) {
            (Some(detail), _) => format!("{} ({detail})", db.message()),
            (None, Some(constraint)) => format!("{} (constraint {constraint})", db.message()),
            (None, None) => db.message().to_string(),
        },
        None => error.to_string(),
    }
}

/// How a failed statement counts: a server error (with its SQLSTATE), a
/// broken connection, or the client refusing before sending (wrong number
/// of parameters and the like).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    Server,
    Connection,
    Client,
}

pub(crate) fn cause(error: &postgres::Error) -> Cause {
    if error.as_db_error().is_some() {
        Cause::Server
    } else if error.is_closed() || is_io(error) {
        Cause::Connection
    } else {
        Cause::Client
    }
}

fn is_io(error: &postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A refusal for a failed statement of a branch's work: the server's
/// SQLSTATE as the code.
pub(crate) fn refusal(error: &postgres::Error, context: &str) -> Refusal {
    let message = format!("{context}{}", describe(error));
    match (cause(error), sqlstate(error)) {
        (Cause::Server, Some(code)) => Refusal::new(code, message),
        (Cause::Connection, _) => Refusal::new(CONNECTION_CODE, message),
        _ => Refusal::new("pg_client", message),
    }
}

/// A failed COMMIT PREPARED or ROLLBACK PREPARED: retried by the
/// coordinator (a connection error, or a server error such as a restart
/// in progress) under the server's SQLSTATE.
pub(crate) fn failure(error: &postgres::Error, what: &str) -> Failure {
    let message = format!("{what}: {}", describe(error));
    match (cause(error), sqlstate(error)) {
        (Cause::Server, Some(code)) => Failure::with_code(code, message),
        (Cause::Connection, _) => Failure::with_code(CONNECTION_CODE, message),
        _ => Failure::with_code("pg_client", message),
    }
}

/// A query error of an operator call or of `open`.
pub(crate) fn query_error(what: &'static str, error: &postgres::Error) -> PgError {
    PgError::Query { what, code: sqlstate(error).map(str::to_string), message: describe(error) }
}
