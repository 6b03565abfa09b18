//! Helpers of the HTTP end-to-end tests (`tests/http_*.rs`): `dtc
//! participant` and `dtc serve` processes behind guards that SIGKILL and
//! reap them on drop, a plain HTTP client, scripted in-test participants
//! (`Stub`, on `dtc::http`) and a raw socket server for answers that are
//! not HTTP at all (`RawServer`). Everything listens on 127.0.0.1:0; every
//! wait is bounded in time.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dtc::http::{Request, Response, Server, ServerConfig};
use serde_json::Value;

/// Lines of a child's output kept for failure messages.
const KEPT_LINES: usize = 200;

/// A running `dtc` child process; SIGKILLed and reaped on drop, even when a
/// test fails. Its stdout and stderr are read to the end by two threads (so
/// it never blocks on a full pipe); the last lines are kept.
pub struct Proc {
    child: Child,
    /// `127.0.0.1:PORT`, from its `listening on` line.
    pub addr: String,
    output: Arc<Mutex<VecDeque<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Runs `dtc <args>` and waits (at most `limit`) for its `listening on
    /// ADDR` line and then, if `ready` is given, a line equal to it.
    pub fn start(args: &[&str], ready: Option<&str>, limit: Duration) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dtc"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start dtc {}: {e}", args.join(" ")));
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (lines, got) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![keep(stdout, Arc::clone(&output), Some(lines)), keep(stderr, Arc::clone(&output), None)];
        // The guard exists before the wait, so a failed start still kills it.
        let mut proc = Proc { child, addr: String::new(), output, readers };
        proc.wait_for_start(&got, ready, limit, args);
        proc
    }

    fn wait_for_start(&mut self, got: &Receiver<String>, ready: Option<&str>, limit: Duration, args: &[&str]) {
        let deadline = Instant::now() + limit;
        let mut want_ready = ready;
        while self.addr.is_empty() || want_ready.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = got.recv_timeout(left) else {
                panic!("dtc {} did not start within {limit:?}; its output:\n{}", args.join(" "), self.output());
            };
            if let Some(addr) = line.strip_prefix("listening on ") {
                self.addr = addr.trim().to_string();
            } else if want_ready.is_some_and(|r| line.trim() == r) {
                want_ready = None;
            }
        }
    }

    /// `http://ADDR`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("ADDR ends with a port")
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its pipes close with it: the readers end.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// The last lines it printed (stdout and stderr), for failure messages.
    pub fn output(&self) -> String {
        let lines = self.output.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `from` to its end, keeping the last lines and sending each to
/// `lines` while someone listens.
fn keep(
    from: impl Read + Send + 'static,
    kept: Arc<Mutex<VecDeque<String>>>,
    lines: Option<Sender<String>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if let Some(lines) = &lines {
                let _ = lines.send(line.clone());
            }
            let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() == KEPT_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    })
}

/// `dtc participant --name NAME --listen LISTEN --dir DIR EXTRA...`, up in
/// at most 20 s.
pub fn participant_on(listen: &str, name: &str, dir: &Path, extra: &[&str]) -> Proc {
    let dir = dir.to_str().expect("a UTF-8 temporary path");
    let mut args = vec!["participant", "--name", name, "--listen", listen, "--dir", dir];
    args.extend_from_slice(extra);
    Proc::start(&args, None, Duration::from_secs(20))
}

/// A participant on a fresh port, its store in `root/NAME`.
pub fn participant(root: &Path, name: &str, extra: &[&str]) -> Proc {
    participant_on("127.0.0.1:0", name, &root.join(name), extra)
}

/// `dtc serve --dir DIR --listen 127.0.0.1:0 EXTRA...`, ready (recovered)
/// in at most 30 s.
pub fn serve(dir: &Path, extra: &[&str]) -> Proc {
    let dir = dir.to_str().expect("a UTF-8 temporary path");
    let mut args = vec!["serve", "--dir", dir, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proc::start(&args, Some("ready"), Duration::from_secs(30))
}

/// A loopback port that refuses connections for as long as this lives: a
/// TCP socket bound to 127.0.0.1:0 that never listens. A port released
/// after use could be taken by a server another test starts meanwhile;
/// this one cannot be (bound without `SO_REUSEADDR`, it conflicts with any
/// other bind, and `bind(0)` skips it).
pub struct DeadPort {
    _socket: socket2::Socket,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a TCP socket");
        let loopback = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        socket.bind(&loopback.into()).expect("bind 127.0.0.1:0");
        let port = socket.local_addr().expect("getsockname").as_socket().expect("an IP address").port();
        DeadPort { _socket: socket, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// An HTTP client whose every call ends within `timeout`; statuses are
/// answers, not errors.
pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .build()
        .into()
}

/// An answer: its status and its body as JSON (`Null` when empty or not
/// JSON), and the raw text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
    pub text: String,
}

fn answer_of(mut response: ureq::http::Response<ureq::Body>) -> Result<Answer, ureq::Error> {
    let status = response.status().as_u16();
    let text = response.body_mut().with_config().limit(16 << 20).read_to_string()?;
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Ok(Answer { status, json, text })
}

/// `GET url`, or the transport error.
pub fn try_get(agent: &ureq::Agent, url: &str) -> Result<Answer, ureq::Error> {
    answer_of(agent.get(url).call()?)
}

/// `GET url`; panics without an answer.
pub fn get(agent: &ureq::Agent, url: &str) -> Answer {
    try_get(agent, url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `POST url` with `body` and extra headers, or the transport error.
pub fn try_post(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Answer, ureq::Error> {
    let mut request = agent.post(url).header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer_of(request.send(body)?)
}

/// `POST url` with a JSON body; panics without an answer.
pub fn post(agent: &ureq::Agent, url: &str, body: &Value) -> Answer {
    try_post(agent, url, &[], body.to_string().as_bytes()).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// A participant's branches in `state` (`prepared`, `committed`,
/// `rolled_back`, `all`), from its `/branches` inquiry.
pub fn branches(agent: &ureq::Agent, base: &str, state: &str) -> Vec<Value> {
    let answer = get(agent, &format!("{base}/branches?state={state}"));
    assert_eq!(answer.status, 200, "{}", answer.text);
    serde_json::from_value(answer.json).expect("a JSON array")
}

/// The state a participant recorded for branch `index` of `tx`, if any.
pub fn state_of(agent: &ureq::Agent, base: &str, tx: &str, index: u16) -> Option<String> {
    branches(agent, base, "all")
        .into_iter()
        .find(|b| b["transaction"] == tx && b["branch"] == index)
        .and_then(|b| b["state"].as_str().map(str::to_string))
}

/// Polls `check` every 20 ms until it is true; panics with `what` after
/// `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A transaction id of dtc's shape (the clock in the high 64 bits), unique
/// per process and `n`, issued `age` ago.
pub fn tx_id(n: u32, age: Duration) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    let ns = now.saturating_sub(age).as_nanos() as u64;
    format!("{ns:016x}{:08x}{n:08x}", std::process::id())
}

/// How a `Stub` answers one protocol call: the phase (`prepare`, `commit`
/// or `rollback`), which call of that phase it is (1-based), the request.
pub type Script = dyn Fn(&str, usize, &Request) -> Response + Send + Sync;

/// A participant written in the test: a `dtc::http` server on 127.0.0.1:0
/// that answers `/prepare`, `/commit` and `/rollback` as its script says,
/// counting the calls of each phase. Stopped on drop (calls in progress
/// finish first: keep a script's sleeps short).
pub struct Stub {
    server: Server,
    pub base: String,
    counts: Arc<[AtomicUsize; 3]>,
}

const PHASES: [&str; 3] = ["prepare", "commit", "rollback"];

impl Stub {
    pub fn start(script: impl Fn(&str, usize, &Request) -> Response + Send + Sync + 'static) -> Stub {
        let counts: Arc<[AtomicUsize; 3]> = Arc::new(Default::default());
        let seen = Arc::clone(&counts);
        let handler = move |request: &Request| {
            let Some(phase) = PHASES.iter().position(|p| request.path() == format!("/{p}")) else {
                return Response::error(404, "not_found", "a stub answers /prepare, /commit and /rollback");
            };
            // Relaxed: a count, read by the test after the calls it waits for.
            let nth = seen[phase].fetch_add(1, Ordering::Relaxed) + 1;
            script(PHASES[phase], nth, request)
        };
        let config = ServerConfig { handler_threads: 8, ..ServerConfig::default() };
        let server = Server::start("127.0.0.1:0", config, handler).expect("a stub server on 127.0.0.1:0");
        let base = format!("http://{}", server.local_addr());
        Stub { server, base, counts }
    }

    /// Calls of `phase` so far.
    pub fn calls(&self, phase: &str) -> usize {
        let i = PHASES.iter().position(|p| *p == phase).expect("a protocol phase");
        self.counts[i].load(Ordering::Relaxed)
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// Forwards a protocol call to the same phase at `target` (a real
/// participant): its answer, or 502 when it gave none.
pub fn forward(agent: &ureq::Agent, target: &str, phase: &str, request: &Request) -> Response {
    let mut headers = Vec::new();
    for name in ["dtc-transaction", "dtc-branch"] {
        if let Some(value) = request.header(name) {
            headers.push((name, value));
        }
    }
    match try_post(agent, &format!("{target}/{phase}"), &headers, request.body()) {
        Ok(answer) => Response::bytes(answer.status, "application/json", answer.text),
        Err(e) => Response::error(502, "no_answer", &e.to_string()),
    }
}

/// A server that answers every connection with the same bytes, whatever
/// was asked (after reading the request), then closes it: for answers that
/// are not HTTP, or are cut short. Stopped on drop.
pub struct RawServer {
    pub base: String,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl RawServer {
    pub fn start(answer: &[u8]) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let base = format!("http://{}", listener.local_addr().expect("a local address"));
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer = answer.to_vec();
        let (stopped, counted) = (Arc::clone(&stop), Arc::clone(&connections));
        let thread = std::thread::spawn(move || {
            // Relaxed: a flag polled every few milliseconds, and a count.
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                        let _ = answer_raw(stream, &answer);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawServer { base, stop, connections, thread: Some(thread) }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Reads one request (head, then `Content-Length` bytes; at most 1 s), then
/// writes `answer` and closes.
fn answer_raw(mut stream: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(1);
    let complete = |seen: &[u8]| {
        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        seen.len() >= end + 4 + length
    };
    while !complete(&seen) && Instant::now() < deadline && seen.len() < 1 << 20 {
        match stream.read(&mut buf)? {
            0 => break,
            n => seen.extend_from_slice(&buf[..n]),
        }
    }
    stream.write_all(answer)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
