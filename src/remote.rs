//! Remote participants over HTTP: a participant that is a URL.
//!
//! The wire protocol is in `docs/participant-protocol.md`. In short, the
//! coordinator `POST`s to the branch's prepare, commit and rollback URLs
//! with the headers `Dtc-Transaction` (32 hex digits) and `Dtc-Branch`
//! (decimal); prepare's body is the branch payload (JSON), its 2xx answer's
//! body (bounded) is the branch's prepared value, which the coordinator
//! records with its commit decision and sends back as the body of commit
//! (and rollback, when it has it).
//!
//! | answer | prepare | commit / rollback |
//! | --- | --- | --- |
//! | 2xx | yes; the body is the prepared value (JSON or empty; any other body is an unknown vote: `bad_answer`, rolled back) | done |
//! | 409 | a definite no, with the body's `{"code", "message"}` | cannot be applied: parked for an operator at once |
//! | other 4xx | a definite no (`http_<status>`: the request is wrong) | parked for an operator at once |
//! | 425, 429, 5xx, timeout, refused connection, unreadable answer | not known yet: asked again until the call timeout or the coordinator's vote deadline ([`vote_deadline`](crate::participant::vote_deadline)), then a no (`unavailable`) | not known yet: retried with the service's retry policy, parked after its attempts |
//!
//! Why ureq 3: pure Rust and blocking (the engine has no async runtime),
//! one `Agent` shares a keep-alive pool between clones, per-call timeouts,
//! bounded response reads, no proxy taken from the environment unless
//! asked. Its defaults are changed where a coordinator needs it: statuses
//! are answers, not errors (409 and 425 mean something here); idle
//! connections per host match the service's lanes (its fan-out); redirects
//! are not followed (a participant that moved is a configuration error, and
//! following would let an answer send the coordinator elsewhere).
//!
//! TLS is not compiled in (`ureq` without default features): participants
//! are reached over a trusted network or through a local proxy.

use std::fmt;
use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::participant::{BranchId, Failure, Participant, ParticipantKind, Refusal, Work};

/// Header carrying the transaction id (32 lowercase hex digits).
pub const TRANSACTION_HEADER: &str = "Dtc-Transaction";
/// Header carrying the branch index (decimal).
pub const BRANCH_HEADER: &str = "Dtc-Branch";
/// Largest answer body read from a participant, by default.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 10;
/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// The three URLs of one remote participant.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    /// Where prepares go.
    pub prepare: String,
    /// Where commits go.
    pub commit: String,
    /// Where rollbacks go.
    pub rollback: String,
}

impl fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoints({} | {} | {})", self.prepare, self.commit, self.rollback)
    }
}

impl Endpoints {
    /// `{base}/prepare`, `{base}/commit`, `{base}/rollback`.
    ///
    /// ```
    /// let e = dtc::remote::Endpoints::from_base("http://127.0.0.1:8001/flights").unwrap();
    /// assert_eq!(e.commit, "http://127.0.0.1:8001/flights/commit");
    /// ```
    pub fn from_base(base: &str) -> Result<Endpoints> {
        let base = base.trim_end_matches('/');
        Self::given(&format!("{base}/prepare"), &format!("{base}/commit"), &format!("{base}/rollback"))
    }

    /// From the prepare URL: commit and rollback replace its last path
    /// segment.
    ///
    /// ```
    /// let e = dtc::remote::Endpoints::from_prepare("http://127.0.0.1:8001/v1/hotel/prepare").unwrap();
    /// assert_eq!(e.rollback, "http://127.0.0.1:8001/v1/hotel/rollback");
    /// ```
    pub fn from_prepare(prepare: &str) -> Result<Endpoints> {
        let url = parse_url(prepare)?;
        let path = url.path();
        let Some(cut) = path.rfind('/').filter(|&i| i + 1 < path.len()) else {
            return Err(Error::InvalidUrl { url: prepare.into(), why: "no last path segment to replace".into() });
        };
        if url.query().is_some() {
            return Err(Error::InvalidUrl { url: prepare.into(), why: "a query string cannot be derived from".into() });
        }
        let prefix = &prepare[..prepare.len() - (path.len() - cut - 1)];
        Self::given(prepare, &format!("{prefix}commit"), &format!("{prefix}rollback"))
    }

    /// Three URLs given one by one.
    pub fn given(prepare: &str, commit: &str, rollback: &str) -> Result<Endpoints> {
        for url in [prepare, commit, rollback] {
            parse_url(url)?;
        }
        Ok(Endpoints { prepare: prepare.into(), commit: commit.into(), rollback: rollback.into() })
    }

    /// Every URL's host is allowed by `allowlist`.
    pub fn check(&self, allowlist: &Allowlist) -> Result<()> {
        for url in [&self.prepare, &self.commit, &self.rollback] {
            allowlist.check(url)?;
        }
        Ok(())
    }
}

fn parse_url(url: &str) -> Result<ureq::http::Uri> {
    let bad = |why: &str| Error::InvalidUrl { url: url.chars().take(200).collect(), why: why.into() };
    if url.len() > MAX_URL_BYTES {
        return Err(bad("longer than 2048 bytes"));
    }
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(_) => return Err(bad("only http:// is supported")),
        None => return Err(bad("no scheme (http://host:port/path)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// The hosts a coordinator may call: a request naming any other is refused
/// before anything runs (a coordinator that calls URLs from requests must
/// not be a way to reach arbitrary hosts).
///
/// Entries: `host` (any port), `host:port`, `*.domain` (any subdomain),
/// bracketed IPv6 `[::1]`. Names are compared as written, case-insensitively;
/// no DNS lookup widens them.
///
/// ```
/// use dtc::remote::Allowlist;
/// let list = Allowlist::loopback();
/// assert!(list.check("http://127.0.0.1:8001/prepare").is_ok());
/// assert!(list.check("http://10.0.0.7/prepare").is_err());
/// let list = Allowlist::parse("pay.internal:443,*.svc.cluster").unwrap();
/// assert!(list.check("http://a.svc.cluster:80/x").is_ok());
/// assert!(list.check("http://pay.internal:80/x").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<(String, Option<u16>)>,
}

impl Allowlist {
    /// 127.0.0.1, ::1 and localhost, any port (the default).
    pub fn loopback() -> Allowlist {
        Allowlist { entries: ["127.0.0.1", "[::1]", "localhost"].iter().map(|h| (h.to_string(), None)).collect() }
    }

    /// A comma-separated list of entries (see the type's docs).
    pub fn parse(list: &str) -> Result<Allowlist> {
        let mut entries = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| Error::Config(format!("allowlist entry {entry:?}: {why}"));
            let (host, port) = match entry.rsplit_once(':') {
                Some((host, port)) if !entry.ends_with(']') && !host.is_empty() => {
                    (host, Some(port.parse::<u16>().map_err(|_| bad("not a port"))?))
                }
                _ => (entry, None),
            };
            if host.contains('/') || host.contains('@') || host.is_empty() {
                return Err(bad("a host, host:port or *.domain"));
            }
            entries.push((host.to_ascii_lowercase(), port));
        }
        if entries.is_empty() {
            return Err(Error::Config("the allowlist is empty".into()));
        }
        Ok(Allowlist { entries })
    }

    /// Ok if `url` is a valid http URL whose host (and port) an entry allows.
    pub fn check(&self, url: &str) -> Result<()> {
        let uri = parse_url(url)?;
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(80);
        let allowed = self.entries.iter().any(|(pattern, p)| {
            let host_ok = match pattern.strip_prefix("*.") {
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == *pattern,
            };
            host_ok && p.is_none_or(|p| p == port)
        });
        if allowed { Ok(()) } else { Err(Error::UrlNotAllowed { url: url.chars().take(200).collect(), host }) }
    }
}

impl Default for Allowlist {
    fn default() -> Self {
        Self::loopback()
    }
}

/// How a remote participant is called.
#[derive(Debug, Clone)]
struct CallConfig {
    call_timeout: Duration,
    max_response_bytes: usize,
    /// Routed mode: the branch payload names the endpoints; only hosts on
    /// this list are called.
    allowlist: Option<Allowlist>,
}

/// A branch of a routed [`HttpParticipant`]: where to send it and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoutedRequest {
    /// The participant's URLs.
    pub endpoints: Endpoints,
    /// The prepare body (JSON; `null` for none).
    #[serde(default)]
    pub body: serde_json::Value,
}

/// What an [`HttpParticipant`] keeps between prepare and commit, and
/// records with the decision: the prepare answer's body, and for a routed
/// participant the endpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemotePrepared {
    /// Where the branch lives (routed participants).
    pub endpoints: Option<Endpoints>,
    /// The prepare answer's body, sent back as commit's body.
    pub value: Vec<u8>,
}

/// A participant reached over HTTP (see the module docs for the protocol
/// and the answers' meaning). Clones share one connection pool; register it
/// with [`Builder::concurrent_service`](crate::Builder::concurrent_service)
/// so calls to it run concurrently (`lanes` in flight at most):
///
/// ```no_run
/// use dtc::{Coordinator, remote::{Endpoints, HttpParticipant}};
/// let hotel = HttpParticipant::new(Endpoints::from_base("http://127.0.0.1:8002/hotel").unwrap(), 16);
/// let dtc = Coordinator::builder().concurrent_service("hotel", hotel, 16).open().unwrap();
/// ```
#[derive(Clone)]
pub struct HttpParticipant {
    agent: ureq::Agent,
    endpoints: Option<Arc<Endpoints>>,
    config: Arc<CallConfig>,
}

impl fmt::Debug for HttpParticipant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpParticipant").field("endpoints", &self.endpoints).field("config", &self.config).finish()
    }
}

fn agent(connections: usize) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .max_idle_connections_per_host(connections.max(1))
        .max_idle_connections(connections.max(1) * 4)
        .build();
    ureq::Agent::with_parts(config, ureq::unversioned::transport::DefaultConnector::new(), LiteralFirst::default())
}

/// Name resolution that answers an IP-literal host (`127.0.0.1`, `[::1]`)
/// at once and leaves names to ureq's resolver. ureq's own resolves every
/// call, even on a kept-alive connection, and with a timeout set it does
/// so on a new thread: one thread spawned per call, a quarter of the
/// coordinator's CPU in `dtc bench --http` (measured with perf: clone3,
/// TLB shootdowns, mmap_lock contention).
#[derive(Debug, Default)]
struct LiteralFirst(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if let Some(authority) = uri.authority() {
            let host = authority.host().trim_start_matches('[').trim_end_matches(']');
            let port = authority.port_u16().or_else(|| match uri.scheme_str() {
                Some("http") => Some(80),
                Some("https") => Some(443),
                _ => None,
            });
            if let (Ok(ip), Some(port)) = (host.parse::<std::net::IpAddr>(), port) {
                let mut addresses = self.empty();
                addresses.push(std::net::SocketAddr::new(ip, port));
                return Ok(addresses);
            }
        }
        self.0.resolve(uri, config, timeout)
    }
}

impl HttpParticipant {
    /// A participant at `endpoints`, keeping up to `connections` connections
    /// alive (match the service's lanes).
    pub fn new(endpoints: Endpoints, connections: usize) -> HttpParticipant {
        HttpParticipant {
            agent: agent(connections),
            endpoints: Some(Arc::new(endpoints)),
            config: Arc::new(CallConfig {
                call_timeout: Duration::from_secs(5),
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                allowlist: None,
            }),
        }
    }

    /// A participant whose branches say where they go: each branch payload
    /// is a [`RoutedRequest`] (JSON), and only hosts on `allowlist` are
    /// called. This is what `dtc serve` registers.
    pub fn routed(allowlist: Allowlist, connections: usize) -> HttpParticipant {
        HttpParticipant {
            agent: agent(connections),
            endpoints: None,
            config: Arc::new(CallConfig {
                call_timeout: Duration::from_secs(5),
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
                allowlist: Some(allowlist),
            }),
        }
    }

    /// Time for one call, connect included (default 5 s). Prepare keeps
    /// asking while answers say "not known yet", until this much has passed.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).call_timeout = timeout;
        self
    }

    /// Largest answer body read (default 64 KiB); a larger one is an error.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_response_bytes = bytes;
        self
    }

    /// One POST: the status and the body (bounded), or why there is none.
    fn post(&self, url: &str, branch: BranchId, body: &[u8], deadline: Instant) -> Answer {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Answer::Unknown("the call timeout passed".into());
        }
        let request = self
            .agent
            .post(url)
            .header(TRANSACTION_HEADER, branch.tx.to_string())
            .header(BRANCH_HEADER, branch.index.to_string())
            .header("Content-Type", "application/json")
            .config()
            .timeout_global(Some(left))
            .build();
        let mut response = match request.send(body) {
            Ok(response) => response,
            Err(error) => return Answer::Unknown(format!("{url}: {error}")),
        };
        let status = response.status().as_u16();
        let limit = self.config.max_response_bytes;
        let mut bytes = Vec::new();
        let read = response.body_mut().as_reader().take(limit as u64 + 1).read_to_end(&mut bytes);
        match read {
            Err(error) => Answer::Unknown(format!("{url}: answer {status} unreadable: {error}")),
            Ok(_) if bytes.len() > limit => {
                Answer::Garbage(format!("{url}: answer {status} larger than {limit} bytes"))
            }
            Ok(_) => Answer::Status(status, bytes),
        }
    }

    /// The endpoints and the prepare body of a branch.
    fn route(&self, work: Work<'_>) -> std::result::Result<(Endpoints, Vec<u8>), Refusal> {
        let payload = work.payload();
        match (&self.endpoints, &self.config.allowlist) {
            (Some(endpoints), _) => Ok(((**endpoints).clone(), payload.to_vec())),
            (None, allowlist) => {
                let routed: RoutedRequest = serde_json::from_slice(payload)
                    .map_err(|e| Refusal::new("invalid_request", format!("not a routed request: {e}")))?;
                if let Some(allowlist) = allowlist {
                    routed.endpoints.check(allowlist).map_err(|e| Refusal::new(e.code(), e.to_string()))?;
                }
                let body = serde_json::to_vec(&routed.body).unwrap_or_default();
                Ok((routed.endpoints, body))
            }
        }
    }

    fn endpoints_of<'a>(&'a self, prepared: Option<&'a RemotePrepared>) -> Option<&'a Endpoints> {
        self.endpoints.as_deref().or_else(|| prepared.and_then(|p| p.endpoints.as_ref()))
    }

    /// Commit or rollback: one call, its answer as the engine needs it.
    fn finish(&self, url: &str, branch: BranchId, body: &[u8], what: &str) -> std::result::Result<(), Failure> {
        let deadline = Instant::now() + self.config.call_timeout;
        match self.post(url, branch, body, deadline) {
            Answer::Status(status, _) if (200..300).contains(&status) => Ok(()),
            Answer::Status(409, body) => {
                let (code, message) = refusal_of(&body, "conflict");
                Err(Failure::definite(code, format!("{what} refused (409): {message}")))
            }
            Answer::Status(status, body) if is_not_known(status) => {
                Err(Failure::with_code(format!("http_{status}"), excerpt(&body)))
            }
            Answer::Status(status, body) => {
                Err(Failure::definite(format!("http_{status}"), format!("{what}: {}", excerpt(&body))))
            }
            Answer::Garbage(why) | Answer::Unknown(why) => Err(Failure::with_code("unavailable", why)),
        }
    }
}

/// What one call got.
enum Answer {
    Status(u16, Vec<u8>),
    /// A status with an unusable body (too large).
    Garbage(String),
    /// No answer: transport error or timeout.
    Unknown(String),
}

/// 425 Too Early, 429 Too Many Requests and 5xx mean "not known yet".
fn is_not_known(status: u16) -> bool {
    status == 425 || status == 429 || (500..600).contains(&status)
}

/// The `{"code", "message"}` of a refusal body, or a default code and the
/// body's start.
fn refusal_of(body: &[u8], default_code: &str) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Body {
        code: Option<String>,
        message: Option<String>,
        error: Option<Box<Body>>,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => {
            let b = match b.error {
                Some(inner) if b.code.is_none() => *inner,
                _ => b,
            };
            let code = b.code.filter(|c| !c.is_empty() && c.len() <= 64).unwrap_or_else(|| default_code.into());
            (code, b.message.unwrap_or_default().chars().take(512).collect())
        }
        Err(_) => (default_code.into(), excerpt(body)),
    }
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned()
}

/// Backoff between prepare attempts while the answer is "not known yet".
const PREPARE_RETRY_START: Duration = Duration::from_millis(5);
const PREPARE_RETRY_MAX: Duration = Duration::from_millis(200);

impl Participant for HttpParticipant {
    type Prepared = RemotePrepared;

    fn kind(&self) -> ParticipantKind {
        ParticipantKind::External
    }

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> std::result::Result<RemotePrepared, Refusal> {
        let (endpoints, body) = self.route(work)?;
        // Asked again while the answer is "not known yet", until the call
        // timeout or the coordinator's vote deadline, whichever comes first:
        // past the vote deadline the transaction has moved on, and this lane
        // serves the service's next transactions.
        let call_end = Instant::now() + self.config.call_timeout;
        let deadline = crate::participant::vote_deadline().map_or(call_end, |vote| vote.min(call_end));
        let mut delay = PREPARE_RETRY_START;
        loop {
            let why = match self.post(&endpoints.prepare, branch, &body, deadline) {
                Answer::Status(status, value) if (200..300).contains(&status) => {
                    // A prepared value is JSON or empty (the protocol, §3).
                    // Anything else is not taken as a yes: a web server at a
                    // wrong URL answers 200 to any POST, and committing on
                    // its word would commit a branch nobody holds. It may be
                    // a participant that did prepare, so the vote is unknown
                    // and the branch rolled back.
                    if !value.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_err() {
                        let message = format!(
                            "{}: answer {status} is not JSON (a prepared value is JSON or empty): {}",
                            endpoints.prepare,
                            excerpt(&value)
                        );
                        return Err(Refusal::Unknown { code: "bad_answer".into(), message });
                    }
                    let endpoints = self.endpoints.is_none().then_some(endpoints);
                    return Ok(RemotePrepared { endpoints, value });
                }
                Answer::Status(409, body) => {
                    let (code, message) = refusal_of(&body, "refused");
                    return Err(Refusal::Other { code, message: format!("{}: {message}", endpoints.prepare) });
                }
                Answer::Status(status, body) if !is_not_known(status) => {
                    let message = format!("{}: {}", endpoints.prepare, excerpt(&body));
                    return Err(Refusal::new(format!("http_{status}"), message));
                }
                // It answered, with a status that may mean yes: roll it back.
                Answer::Garbage(why) => return Err(Refusal::Unknown { code: "bad_answer".into(), message: why }),
                Answer::Status(status, body) => format!("{status}: {}", excerpt(&body)),
                Answer::Unknown(why) => why,
            };
            // Not known yet: ask again, until the call timeout.
            if Instant::now() + delay >= deadline {
                // Not a definite no: the branch may be prepared over there.
                return Err(Refusal::Unknown {
                    code: "unavailable".into(),
                    message: format!(
                        "{}: no answer before the call timeout or the vote deadline: {why}",
                        endpoints.prepare
                    ),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(PREPARE_RETRY_MAX);
        }
    }

    fn commit(&mut self, branch: BranchId, prepared: &RemotePrepared) -> std::result::Result<(), Failure> {
        let Some(endpoints) = self.endpoints_of(Some(prepared)) else {
            return Err(Failure::definite("unroutable", "no endpoints recorded for this branch"));
        };
        self.finish(&endpoints.commit, branch, &prepared.value, "commit")
    }

    fn rollback(&mut self, branch: BranchId, prepared: Option<&RemotePrepared>) -> std::result::Result<(), Failure> {
        let Some(endpoints) = self.endpoints_of(prepared) else {
            // Only a routed branch whose request was unreadable, which never
            // prepared (prepare refused it first).
            return Err(Failure::definite("unroutable", "no endpoints known for this branch"));
        };
        let body = prepared.map_or(&[][..], |p| &p.value[..]);
        self.finish(&endpoints.rollback, branch, body, "rollback")
    }

    fn encode_prepared(&self, prepared: &RemotePrepared) -> Option<Vec<u8>> {
        serde_json::to_vec(prepared).ok()
    }

    fn decode_prepared(&self, _branch: BranchId, bytes: &[u8]) -> Option<RemotePrepared> {
        serde_json::from_slice(bytes).ok()
    }

    /// A routed branch rolled back after a restart, undecided: its
    /// endpoints come from the logged request.
    fn prepared_from_request(&self, _branch: BranchId, request: Work<'_>) -> Option<RemotePrepared> {
        self.endpoints
            .is_none()
            .then(|| self.route(request).ok())
            .flatten()
            .map(|(endpoints, _)| RemotePrepared { endpoints: Some(endpoints), value: Vec::new() })
    }
}
