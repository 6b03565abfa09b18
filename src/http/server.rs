//! The server: one accept thread, one thread per open connection (at most
//! `max_connections`), handlers run on the connection's own thread with at
//! most `handler_threads` running at once, and a stop that joins them all.
//!
//! Why handlers run inline: handing each request to a pool thread and its
//! answer back cost two context switches per request, which on a 2-core
//! machine was the largest cost of `dtc bench --http` (perf: the channel's
//! spin-then-yield and `finish_task_switch` dominated the participants).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use super::connection::{Connection, ReadError};
use super::message::{Request, Response};
use super::router::Handler;
use crate::sync::{Condvar, Mutex};

/// Connections over the bound that are still answered `429` (each on a
/// short-lived thread of its own); beyond these they are closed unanswered.
const MAX_REJECTING: usize = 4;

/// How long a closing connection keeps reading what the client still sends,
/// so that the answer is not lost to a reset.
const LINGER: Duration = Duration::from_millis(200);

/// The server's bounds. Build with `..ServerConfig::default()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Handlers running at once (at least 1); requests beyond them wait.
    /// Each runs on its connection's thread.
    pub handler_threads: usize,
    /// Open connections at most (at least 1); one more is answered `429
    /// too_many_connections` and closed.
    pub max_connections: usize,
    /// Largest request body; a larger `Content-Length` is answered `413`
    /// without reading the body.
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers); beyond it `431`.
    pub max_head_bytes: usize,
    /// Time for a request's whole head, from its first byte; then `408`.
    pub head_timeout: Duration,
    /// Time for a request's whole body, from the end of its head; then `408`.
    pub body_timeout: Duration,
    /// How long a connection may stay open with no request in progress
    /// (before its first request and between requests); then it is closed.
    pub idle_timeout: Duration,
    /// Time for each write of an answer; a client that does not read is
    /// disconnected.
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    /// 4 handler threads, 64 connections, 1 MiB bodies, 16 KiB heads, 5 s
    /// for a head, 10 s for a body, 30 s idle, 5 s per write.
    fn default() -> Self {
        ServerConfig {
            handler_threads: 4,
            max_connections: 64,
            max_body_bytes: 1 << 20,
            max_head_bytes: 16 << 10,
            head_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ServerError> {
        let reason = if self.handler_threads == 0 || self.handler_threads > 1024 {
            "handler_threads must be between 1 and 1024"
        } else if self.max_connections == 0 || self.max_connections > 65_536 {
            "max_connections must be between 1 and 65536"
        } else if self.max_head_bytes < 256 {
            "max_head_bytes must be at least 256"
        } else if [self.head_timeout, self.body_timeout, self.idle_timeout, self.write_timeout]
            .iter()
            .any(|t| t.is_zero())
        {
            "timeouts must be positive"
        } else {
            return Ok(());
        };
        Err(ServerError::Config { reason: reason.into() })
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The address could not be bound (in use, not local, bad syntax).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a server thread: {0}")]
    Spawn(#[source] io::Error),
    /// The configuration cannot be used.
    #[error("invalid server configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

/// Counters, read with [`Server::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections open now.
    pub open_connections: u64,
    /// Connections accepted since start (rejected ones included).
    pub accepted: u64,
    /// Connections answered `429` (or closed) because of the bound.
    pub rejected: u64,
    /// Requests answered by a handler.
    pub requests: u64,
    /// Requests answered with an error by the server itself (malformed,
    /// too large, too slow).
    pub refused_requests: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    requests: AtomicU64,
    refused_requests: AtomicU64,
}

// Relaxed: counters are statistics; nothing else depends on them.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// An open connection as the stop sees it.
struct Open {
    /// A handle on the same socket, to shut it down from outside.
    stream: TcpStream,
    /// Waiting for a request's first byte: safe to close at once.
    idle: bool,
}

#[derive(Default)]
struct Registry {
    stopping: bool,
    next_id: u64,
    open: HashMap<u64, Open>,
    rejecting: usize,
    /// Connection and rejection threads, joined on stop (finished ones are
    /// reaped as new ones start, so this stays within the bounds).
    threads: Vec<JoinHandle<()>>,
}

/// The right to run a handler: `handler_threads` tokens in a channel,
/// taken before a handler runs and given back when it returns (or panics).
struct Permits {
    give: Sender<()>,
    take: Receiver<()>,
}

/// A taken permit; given back on drop.
struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // The channel holds exactly the permits taken from it: never full.
        let _ = self.0.give.try_send(());
    }
}

struct Shared {
    config: ServerConfig,
    registry: Mutex<Registry>,
    /// Notified when the server has stopped.
    stopped: Condvar,
    stopped_flag: Mutex<bool>,
    handler: Arc<dyn Handler>,
    permits: Permits,
    counters: Counters,
}

/// The running server's threads, taken by the one `stop` that joins them.
struct Threads {
    accept: JoinHandle<()>,
}

/// A blocking HTTP/1.1 server with every resource bounded (see the
/// [module docs](super) for the bounds and why it is not tiny_http).
///
/// `Send + Sync`: [`stop`](Self::stop) may be called from any thread; it
/// returns once every thread of the server has been joined. Dropping the
/// server stops it too.
///
/// ```
/// use dtc::http::{Request, Response, Server, ServerConfig};
/// let server = Server::start("127.0.0.1:0", ServerConfig::default(), |r: &Request| {
///     Response::json(200, &serde_json::json!({ "path": r.path() }))
/// })
/// .unwrap();
/// let port = server.local_addr().port();
/// assert_ne!(port, 0);
/// server.stop();
/// ```
pub struct Server {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Mutex<Option<Threads>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.local_addr).field("stats", &self.stats()).finish()
    }
}

impl Server {
    /// Binds `addr` (port 0: any free port, see [`local_addr`](Self::local_addr))
    /// and starts serving `handler`.
    pub fn start(addr: impl ToSocketAddrs, config: ServerConfig, handler: impl Handler) -> Result<Server, ServerError> {
        config.validate()?;
        let shown = addr.to_socket_addrs().map(|mut a| a.next().map(|a| a.to_string())).ok().flatten();
        let listener = TcpListener::bind(addr)
            .map_err(|source| ServerError::Bind { addr: shown.clone().unwrap_or_default(), source })?;
        let local_addr =
            listener.local_addr().map_err(|source| ServerError::Bind { addr: shown.unwrap_or_default(), source })?;
        let handler_threads = config.handler_threads.max(1);
        let (give, take) = crossbeam_channel::bounded(handler_threads);
        for _ in 0..handler_threads {
            give.try_send(()).expect("room for every permit");
        }
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::default()),
            stopped: Condvar::new(),
            stopped_flag: Mutex::new(false),
            handler: Arc::new(handler),
            permits: Permits { give, take },
            counters: Counters::default(),
            config,
        });
        let accept_shared = Arc::clone(&shared);
        let accept = match std::thread::Builder::new()
            .name("dtc-http-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
        {
            Ok(thread) => thread,
            Err(e) => return Err(ServerError::Spawn(e)),
        };
        Ok(Server { local_addr, shared, threads: Mutex::new(Some(Threads { accept })) })
    }

    /// The address the server listens on (with the port chosen for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters and the connections open now.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            open_connections: self.shared.registry.lock().open.len() as u64,
            // Relaxed: statistics.
            accepted: c.accepted.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            refused_requests: c.refused_requests.load(Ordering::Relaxed),
        }
    }

    /// Stops: no new connections; idle ones are closed at once; a request
    /// in progress is finished and answered (its connection then closes);
    /// returns once every server thread has been joined. Bounded by the
    /// read and write timeouts plus the longest handler call. Idempotent.
    ///
    /// Not from inside a handler: it waits for that handler's own request
    /// (call it from a thread the handler spawns instead).
    pub fn stop(&self) {
        let Some(threads) = self.threads.lock().take() else {
            self.wait();
            return;
        };
        {
            let mut registry = self.shared.registry.lock();
            registry.stopping = true;
            for open in registry.open.values().filter(|open| open.idle) {
                let _ = open.stream.shutdown(Shutdown::Both);
            }
        }
        wake(self.local_addr);
        let _ = threads.accept.join();
        // No thread is started after the accept thread ended.
        let connection_threads = std::mem::take(&mut self.shared.registry.lock().threads);
        for thread in connection_threads {
            let _ = thread.join();
        }
        *self.shared.stopped_flag.lock() = true;
        self.shared.stopped.notify_all();
    }

    /// Blocks until the server has stopped (by [`stop`](Self::stop) on
    /// another thread).
    pub fn wait(&self) {
        let mut stopped = self.shared.stopped_flag.lock();
        while !*stopped {
            stopped = self.shared.stopped.wait(stopped);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects to the listener once so that its blocking `accept` returns.
fn wake(addr: SocketAddr) {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port()),
        _ => addr,
    };
    let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.registry.lock().stopping {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                bump(&shared.counters.accepted);
                admit(stream, shared);
            }
            Err(error) => {
                // Out of descriptors, a connection aborted before accept: the
                // listener itself is fine; back off a little and go on.
                tracing::warn!(%error, "accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Registers and starts a connection, or turns it away over the bound.
fn admit(stream: TcpStream, shared: &Arc<Shared>) {
    let config = &shared.config;
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(config.write_timeout)).is_err() {
        return;
    }
    let mut registry = shared.registry.lock();
    registry.threads.retain(|thread| !thread.is_finished());
    if registry.open.len() >= config.max_connections {
        bump(&shared.counters.rejected);
        if registry.rejecting >= MAX_REJECTING {
            // Under a flood even the 429 is not worth a thread.
            return;
        }
        registry.rejecting += 1;
        let reject_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new().name("dtc-http-reject".into()).spawn(move || {
            // 429: the client (one of too many) should come back later.
            let answer = Response::error(
                429,
                "too_many_connections",
                &format!("the server holds {} connections already", reject_shared.config.max_connections),
            );
            Connection::new(stream).close_after(Some(&answer), LINGER);
            reject_shared.registry.lock().rejecting -= 1;
        });
        match spawned {
            Ok(thread) => registry.threads.push(thread),
            Err(_) => registry.rejecting -= 1,
        }
        return;
    }
    let Ok(handle) = stream.try_clone() else { return };
    let id = registry.next_id;
    registry.next_id += 1;
    registry.open.insert(id, Open { stream: handle, idle: true });
    let connection_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name("dtc-http-connection".into())
        .spawn(move || serve_connection(Connection::new(stream), id, &connection_shared));
    match spawned {
        Ok(thread) => registry.threads.push(thread),
        Err(error) => {
            tracing::warn!(%error, "cannot start a connection thread");
            registry.open.remove(&id);
        }
    }
}

/// Marks the connection idle (or busy); false if the server is stopping.
fn set_idle(shared: &Shared, id: u64, idle: bool) -> bool {
    let mut registry = shared.registry.lock();
    if let Some(open) = registry.open.get_mut(&id) {
        open.idle = idle;
    }
    !registry.stopping
}

fn serve_connection(mut connection: Connection, id: u64, shared: &Shared) {
    let config = &shared.config;
    let mut first = true;
    while set_idle(shared, id, true) {
        // The first request must come as fast as a head; later ones may
        // wait for the idle time (keep-alive).
        let wait = if first { config.head_timeout.min(config.idle_timeout) } else { config.idle_timeout };
        first = false;
        let incoming = match connection.read_request(config, wait) {
            Ok(incoming) => incoming,
            Err(ReadError::Closed | ReadError::Idle) => break,
            Err(ReadError::Answer(response)) => {
                bump(&shared.counters.refused_requests);
                connection.close_after(Some(&response), LINGER);
                break;
            }
        };
        let stopping = !set_idle(shared, id, false);
        let head_only = incoming.request.method() == "HEAD";
        let response = call_handler(shared, incoming.request);
        bump(&shared.counters.requests);
        let close = incoming.close || stopping || shared.registry.lock().stopping;
        if connection.write_response(&response, close, head_only).is_err() || close {
            break;
        }
    }
    shared.registry.lock().open.remove(&id);
}

fn call_handler(shared: &Shared, request: Request) -> Response {
    if shared.registry.lock().stopping {
        return Response::error(503, "stopping", "the server is stopping");
    }
    // Waits while `handler_threads` handlers run; the permit is given back
    // however the handler ends.
    if shared.permits.take.recv().is_err() {
        return Response::error(503, "stopping", "the server is stopping");
    }
    let _permit = Permit(&shared.permits);
    std::panic::catch_unwind(AssertUnwindSafe(|| shared.handler.handle(&request)))
        .unwrap_or_else(|_| Response::error(500, "internal", "the handler failed (panicked)"))
}
