//! A bounded pool of blocking connections shared by a participant's clones
//! (its lanes). A branch holds one connection from its `BEGIN` to its
//! `PREPARE TRANSACTION`; a commit or rollback of a prepared transaction
//! takes any free one for one statement.
//!
//! A connection goes back to the pool only outside a transaction: every
//! path that began one ends it (prepare, or rollback), and a connection
//! whose state is unknown (a client or connection error mid-way) is
//! dropped instead, which makes the server roll back whatever it held.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use postgres::{Client, NoTls, Statement};

use super::error::{PgError, describe};

/// Prepared statements cached per connection before the cache is cleared.
const STATEMENT_CACHE: usize = 128;

/// One pooled session.
pub(crate) struct Conn {
    pub client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    /// The server-side prepared statement for `sql`, cached per session.
    pub(crate) fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(sql)?;
        if self.statements.len() >= STATEMENT_CACHE {
            // Bounded: a workload of ever-new SQL texts must not grow it.
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

struct State {
    idle: Vec<Conn>,
    /// Connections in existence: idle, leased, or being opened.
    open: usize,
}

pub(crate) struct Pool {
    config: postgres::Config,
    setup: String,
    max: usize,
    checkout_timeout: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

/// A connection on loan; back to the pool on drop unless marked broken.
pub(crate) struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    broken: bool,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("a lease holds its connection until dropped")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a lease holds its connection until dropped")
    }
}

impl Lease<'_> {
    /// Do not reuse this connection: its state is unknown.
    pub(crate) fn discard(&mut self) {
        self.broken = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take().expect("dropped once");
        let reusable = !self.broken && !conn.client.is_closed();
        let mut state = self.pool.state.lock();
        if reusable {
            state.idle.push(conn);
        } else {
            state.open -= 1;
            drop(state);
            // Dropping the client closes the session; the server rolls back
            // an open transaction (never a prepared one).
            drop(conn);
        }
        self.pool.freed.notify_one();
    }
}

impl Pool {
    pub(crate) fn new(config: postgres::Config, setup: String, max: usize, checkout_timeout: Duration) -> Pool {
        Pool {
            config,
            setup,
            max,
            checkout_timeout,
            state: Mutex::new(State { idle: Vec::with_capacity(max), open: 0 }),
            freed: Condvar::new(),
        }
    }

    /// Host and port, for messages (never the password).
    pub(crate) fn server(&self) -> String {
        describe_server(&self.config)
    }

    /// A free connection, a new one if fewer than `max` exist, or
    /// [`PgError::PoolExhausted`] after the checkout timeout.
    pub(crate) fn lease(&self) -> Result<Lease<'_>, PgError> {
        self.lease_before(None)
    }

    /// [`lease`](Self::lease), waiting for a free connection until `limit`
    /// at most when that comes before the checkout timeout.
    pub(crate) fn lease_before(&self, limit: Option<Instant>) -> Result<Lease<'_>, PgError> {
        let now = Instant::now();
        let deadline = limit.map_or(now + self.checkout_timeout, |l| l.min(now + self.checkout_timeout));
        let mut state = self.state.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Lease { pool: self, conn: Some(conn), broken: false });
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Lease { pool: self, conn: Some(conn), broken: false }),
                    Err(error) => {
                        self.state.lock().open -= 1;
                        self.freed.notify_one();
                        Err(error)
                    }
                };
            }
            if self.freed.wait_until(&mut state, deadline).timed_out() {
                let waited = deadline.saturating_duration_since(now);
                return Err(PgError::PoolExhausted { timeout_ms: waited.as_millis() as u64 });
            }
        }
    }

    /// Drops every idle connection (after a server restart, say).
    pub(crate) fn clear_idle(&self) {
        let idle = {
            let mut state = self.state.lock();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(idle);
        self.freed.notify_all();
    }

    /// (open, idle) connections now.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.open, state.idle.len())
    }

    fn connect(&self) -> Result<Conn, PgError> {
        let mut client = self.config.connect(NoTls).map_err(|e| connect_error(&self.config, &e))?;
        client.batch_execute(&self.setup).map_err(|e| super::error::query_error("session setup", &e))?;
        Ok(Conn { client, statements: HashMap::new() })
    }
}

pub(crate) fn describe_server(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// A connection error, told apart: wrong database, refused credentials,
/// missing CONNECT privilege, unreachable server.
pub(crate) fn connect_error(config: &postgres::Config, error: &postgres::Error) -> PgError {
    let server = describe_server(config);
    let role = config.get_user().unwrap_or("(default)").to_string();
    let database = config.get_dbname().unwrap_or(&role).to_string();
    let message = describe(error);
    match super::error::sqlstate(error) {
        Some("3D000") => PgError::WrongDatabase {
            message: format!(
                "database {database:?} does not exist on {server} ({message}): check the connection string"
            ),
            database,
        },
        Some("28000" | "28P01") => PgError::Authentication { role, message },
        Some("42501") => PgError::MissingPrivilege {
            role,
            privilege: format!("CONNECT on database {database:?}"),
            fix: format!("GRANT CONNECT ON DATABASE {database} TO the role ({message})"),
        },
        Some("53300") => PgError::Unreachable {
            server,
            message: format!("{message} (raise the server's max_connections or lower the pool's)"),
        },
        _ => PgError::Unreachable { server, message },
    }
}
