//! `dtc serve`: the coordinator as a service. Takes JSON transactions over
//! HTTP whose branches are remote participants (their prepare URLs), runs
//! them with two-phase commit over the durable log of `--dir`, and answers
//! once the outcome is durable. The API is in the README and
//! `docs/participant-protocol.md`.
//!
//! Every participant URL must be on the allowlist (default: loopback), so a
//! request cannot make the coordinator call arbitrary hosts; every request,
//! body, answer, connection and thread is bounded (see `dtc::http`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use dtc::http::{Request, Response, Server, ServerConfig};
use dtc::{
    Branch, Coordinator, Durability, Error, Outcome, Transaction, TxId,
    ops::{Resolution, TxState, UnfinishedTx},
    remote::{Allowlist, Endpoints, HttpParticipant, RoutedRequest},
};
use serde::{Deserialize, Serialize};

/// The service name every remote branch goes through.
pub const REMOTE_SERVICE: &str = "remote";
/// Most participants in one transaction.
pub const MAX_SERVICES: usize = 64;
/// Longest transaction timeout a request may ask for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

#[derive(ClapArgs, Debug, Clone)]
pub struct Args {
    /// Data directory: the coordinator's durable log (recovered on start).
    #[arg(long)]
    pub dir: PathBuf,
    /// Address to listen on (loopback unless told otherwise); port 0 picks a free one (printed at start).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: String,
    /// Hosts participants may be on: comma-separated `host`, `host:port` or `*.domain`.
    #[arg(long, default_value = "127.0.0.1,localhost,[::1]")]
    pub allow: String,
    /// Bearer token that enables operator actions over HTTP (also `DTC_OPERATOR_TOKEN`); without one they answer 403 (401 to a request without a bearer token).
    #[arg(long, env = "DTC_OPERATOR_TOKEN", hide_env_values = true)]
    pub operator_token: Option<String>,
    /// Calls to participants in flight at most (lanes of the remote service).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub lanes: u32,
    /// Transactions handled at once (HTTP handler threads).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub handlers: u32,
    /// Open client connections at most.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_connections: u32,
    /// Timeout of one call to a participant, in milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub call_timeout_ms: u64,
}

/// `POST /v1/transactions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransactionRequest {
    /// Participants: prepare URLs, or objects with explicit URLs and a payload.
    services: Vec<ServiceSpec>,
    /// Milliseconds for the whole transaction (votes included).
    timeout: Option<u64>,
    /// A caller-chosen id (32 hex digits): resubmission is idempotent.
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceSpec {
    Prepare(String),
    Full(FullSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FullSpec {
    prepare: String,
    commit: Option<String>,
    rollback: Option<String>,
    payload: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TransactionAnswer {
    transaction_id: String,
    /// `committed`, `rolled_back` or `failed`.
    status: &'static str,
    errors: Vec<String>,
    /// Participants (prepare URLs) that have not acknowledged the commit yet;
    /// the coordinator keeps retrying them.
    pending: Vec<String>,
}

struct State {
    dtc: OnceLock<Coordinator>,
    allowlist: Allowlist,
    token: Option<String>,
    started: Instant,
}

fn error(status: u16, code: &str, message: impl AsRef<str>) -> Response {
    Response::error(status, code, message.as_ref())
}

/// The HTTP status of an error the engine refused a request with.
fn status_of(e: &Error) -> u16 {
    match e {
        Error::TxIdReused { .. } | Error::TxInProgress { .. } | Error::UnsafeResolution { .. } => 409,
        Error::NotStuck { .. } => 404,
        Error::PayloadTooLarge { .. } => 413,
        Error::UrlNotAllowed { .. } => 403,
        e if e.is_storage() => 503,
        Error::ShuttingDown | Error::ServiceUnavailable { .. } | Error::Io { .. } => 503,
        _ => 400,
    }
}

impl State {
    fn dtc(&self) -> Result<&Coordinator, Response> {
        self.dtc.get().ok_or_else(|| error(503, "recovering", "the coordinator is still recovering its log"))
    }

    fn handle(&self, request: &Request) -> Response {
        let path = request.path();
        let method = request.method();
        let answer = match (method, path) {
            ("GET", "/healthz") => Ok(Response::json(200, &serde_json::json!({"ok": true}))),
            ("GET", "/readyz") => self.dtc().map(|_| Response::json(200, &serde_json::json!({"ready": true}))),
            ("GET", "/metrics") => self.metrics(),
            ("POST", "/v1/transactions") => self.run(request),
            ("GET", "/v1/transactions") => self.list(request),
            (_, "/healthz" | "/readyz" | "/metrics" | "/v1/transactions") => {
                Err(error(405, "method_not_allowed", format!("{method} is not allowed on {path}")))
            }
            _ => match path.strip_prefix("/v1/transactions/") {
                Some(rest) => self.one(method, rest, request),
                None => Err(error(404, "not_found", format!("no such path {path}"))),
            },
        };
        answer.unwrap_or_else(|e| e)
    }

    fn metrics(&self) -> Result<Response, Response> {
        let dtc = self.dtc()?;
        let text = dtc::ops::render_prometheus(&dtc.metrics(), dtc.log_stats().as_ref());
        Ok(Response::bytes(200, "text/plain; version=0.0.4", text))
    }

    /// `POST /v1/transactions`: validate, run, answer once durable.
    fn run(&self, request: &Request) -> Result<Response, Response> {
        let body: TransactionRequest = request.json()?;
        if body.services.is_empty() {
            return Err(error(400, "no_services", "services must name at least one participant"));
        }
        if body.services.len() > MAX_SERVICES {
            return Err(error(
                400,
                "too_many_services",
                format!("{} services, at most {MAX_SERVICES}", body.services.len()),
            ));
        }
        let timeout = match body.timeout {
            None => None,
            Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Some(Duration::from_millis(ms)),
            Some(ms) => {
                return Err(error(400, "invalid_timeout", format!("timeout {ms} ms: 1 to {MAX_TIMEOUT_MS} expected")));
            }
        };
        let id = match &body.id {
            None => None,
            Some(text) => Some(text.parse::<TxId>().map_err(|e| error(400, "invalid_id", e.to_string()))?),
        };
        let mut urls = Vec::with_capacity(body.services.len());
        let mut payloads = Vec::with_capacity(body.services.len());
        for (i, spec) in body.services.into_iter().enumerate() {
            let (endpoints, payload) = match spec {
                ServiceSpec::Prepare(url) => (Endpoints::from_prepare(&url), serde_json::json!({})),
                ServiceSpec::Full(full) => {
                    let derived = Endpoints::from_prepare(&full.prepare);
                    let endpoints = match (full.commit, full.rollback, derived) {
                        (Some(c), Some(r), _) => Endpoints::given(&full.prepare, &c, &r),
                        (c, r, Ok(d)) => Endpoints::given(
                            &full.prepare,
                            c.as_deref().unwrap_or(&d.commit),
                            r.as_deref().unwrap_or(&d.rollback),
                        ),
                        (_, _, Err(e)) => Err(e),
                    };
                    (endpoints, full.payload.unwrap_or_else(|| serde_json::json!({})))
                }
            };
            let endpoints = endpoints.map_err(|e| error(400, e.code(), format!("services[{i}]: {e}")))?;
            endpoints
                .check(&self.allowlist)
                .map_err(|e| error(status_of(&e), e.code(), format!("services[{i}]: {e}")))?;
            urls.push(endpoints.prepare.clone());
            let routed = RoutedRequest { endpoints, body: payload };
            payloads.push(serde_json::to_vec(&routed).map_err(|e| error(400, "invalid_payload", e.to_string()))?);
        }
        let dtc = self.dtc()?;
        let mut tx = Transaction::new();
        for payload in &payloads {
            tx = tx.branch(Branch::new(REMOTE_SERVICE, payload.as_slice()));
        }
        if let Some(timeout) = timeout {
            tx = tx.timeout(timeout);
        }
        let id = id.unwrap_or_else(|| dtc.new_tx_id());
        let outcome = match dtc.run_as(id, &tx) {
            Ok(outcome) => outcome,
            Err(e) if status_of(&e) == 503 => {
                let answer = TransactionAnswer {
                    transaction_id: id.to_string(),
                    status: "failed",
                    errors: vec![e.to_string()],
                    pending: Vec::new(),
                };
                return Ok(Response::json(503, &answer));
            }
            Err(e) => return Err(error(status_of(&e), e.code(), e.to_string())),
        };
        let (status, errors, pending) = match outcome {
            Outcome::Committed => ("committed", Vec::new(), Vec::new()),
            Outcome::CommitPending => {
                let pending = dtc
                    .unfinished()
                    .into_iter()
                    .filter(|u| u.tx == id)
                    .flat_map(|u| u.participants)
                    .filter_map(|p| p.branch.and_then(|b| urls.get(usize::from(b)).cloned()))
                    .collect();
                ("committed", Vec::new(), pending)
            }
            Outcome::Aborted(reason) => ("rolled_back", vec![reason.to_string()], Vec::new()),
            other => ("failed", vec![format!("{other:?}")], Vec::new()),
        };
        let answer = TransactionAnswer { transaction_id: id.to_string(), status, errors, pending };
        Ok(Response::json(200, &answer))
    }

    /// `GET /v1/transactions?state=...`: the unfinished ones.
    fn list(&self, request: &Request) -> Result<Response, Response> {
        let dtc = self.dtc()?;
        let state = match request.query_param("state") {
            None => None,
            Some(name) => Some(TxState::parse(&name).ok_or_else(|| {
                error(400, "invalid_state", format!("state {name:?}: in-doubt, committing, rolling-back or stuck"))
            })?),
        };
        let list: Vec<UnfinishedTx> =
            dtc.unfinished().into_iter().filter(|u| state.is_none_or(|s| u.state == s)).collect();
        Ok(Response::json(200, &list))
    }

    /// `GET /v1/transactions/{id}` and the operator actions on it.
    fn one(&self, method: &str, rest: &str, request: &Request) -> Result<Response, Response> {
        let (id, action) = match rest.split_once('/') {
            Some((id, action)) => (id, Some(action)),
            None => (rest, None),
        };
        let tx: TxId = id.parse().map_err(|e: dtc::ParseTxIdError| error(400, "invalid_id", e.to_string()))?;
        match (method, action) {
            ("GET", None) => self.status(tx),
            ("POST", Some("retry-now")) => self.operator(request, |dtc, reason| {
                dtc.retry_now(tx, reason).map(|r| serde_json::to_value(r).unwrap_or_default())
            }),
            ("POST", Some("resolve")) => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Resolve {
                    resolution: Resolution,
                    reason: String,
                }
                self.authorized(request)?;
                let body: Resolve = request.json()?;
                let dtc = self.dtc()?;
                dtc.resolve(tx, body.resolution, &body.reason)
                    .map(|r| Response::json(200, &r))
                    .map_err(|e| error(status_of(&e), e.code(), e.to_string()))
            }
            (_, None | Some("retry-now" | "resolve")) => {
                Err(error(405, "method_not_allowed", format!("{method} is not allowed here")))
            }
            (_, Some(other)) => Err(error(404, "not_found", format!("no action {other:?}"))),
        }
    }

    /// The recorded status of `tx` and its unfinished participants.
    fn status(&self, tx: TxId) -> Result<Response, Response> {
        let dtc = self.dtc()?;
        let recorded = dtc.outcome_of(tx).map_err(|e| error(status_of(&e), e.code(), e.to_string()))?;
        let unfinished = dtc.unfinished().into_iter().find(|u| u.tx == tx);
        let (status, reason) = match &recorded {
            Some(Outcome::Aborted(reason)) => ("rolled_back", Some(reason.to_string())),
            Some(_) => ("committed", None),
            None if unfinished.is_some() => ("in_progress", None),
            None => ("unknown", None),
        };
        Ok(Response::json(
            200,
            &serde_json::json!({
                "transactionId": tx.to_string(),
                "status": status,
                "reason": reason,
                "state": unfinished.as_ref().map(|u| u.state.as_str()),
                "participants": unfinished.map(|u| u.participants).unwrap_or_default(),
            }),
        ))
    }

    /// Ok if the request carries the configured operator token: 401 (with
    /// `WWW-Authenticate: Bearer`) when it carries no bearer token, 403 when
    /// the token is wrong or operator actions are disabled.
    fn authorized(&self, request: &Request) -> Result<(), Response> {
        let Some(token) = &self.token else {
            return Err(error(403, "operator_disabled", "operator actions need --operator-token"));
        };
        let Some(given) = request.header("authorization").and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(error(401, "unauthorized", "operator actions need an Authorization: Bearer <token> header")
                .with_header("WWW-Authenticate", "Bearer realm=\"dtc operator\""));
        };
        // Compare without an early exit, so timing does not tell how much matched.
        let same =
            given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same { Ok(()) } else { Err(error(403, "forbidden", "wrong operator token")) }
    }

    fn operator(
        &self,
        request: &Request,
        act: impl FnOnce(&Coordinator, &str) -> dtc::Result<serde_json::Value>,
    ) -> Result<Response, Response> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reason {
            reason: String,
        }
        self.authorized(request)?;
        let body: Reason = request.json()?;
        let dtc = self.dtc()?;
        act(dtc, &body.reason)
            .map(|v| Response::json(200, &v))
            .map_err(|e| error(status_of(&e), e.code(), e.to_string()))
    }
}

/// Starts the HTTP server at once (health answers during recovery), opens the
/// coordinator (recovering the log), then serves until killed.
pub fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let allowlist = Allowlist::parse(&args.allow)?;
    if args.operator_token.as_deref().is_some_and(|t| t.len() < 16) {
        return Err("--operator-token must be at least 16 characters".into());
    }
    let state = Arc::new(State {
        dtc: OnceLock::new(),
        allowlist: allowlist.clone(),
        token: args.operator_token.clone(),
        started: Instant::now(),
    });
    let config = ServerConfig {
        handler_threads: args.handlers as usize,
        max_connections: args.max_connections as usize,
        max_body_bytes: 256 << 10,
        ..ServerConfig::default()
    };
    let handler_state = state.clone();
    let server = Server::start(args.listen.as_str(), config, move |r: &Request| handler_state.handle(r))?;
    println!("listening on {}", server.local_addr());
    let call_timeout = Duration::from_millis(args.call_timeout_ms);
    let remote = HttpParticipant::routed(allowlist, args.lanes as usize).call_timeout(call_timeout);
    let dtc = Coordinator::builder()
        .concurrent_service(REMOTE_SERVICE, remote, args.lanes as usize)
        .durability(Durability::Sync)
        .dir(&args.dir)
        .call_timeout(call_timeout)
        .transaction_timeout(Duration::from_millis(MAX_TIMEOUT_MS))
        .max_branches(MAX_SERVICES)
        .max_payload_bytes(64 << 10)
        .open()?;
    let report = dtc.recovery();
    tracing::info!(?report, elapsed = ?state.started.elapsed(), "recovered; ready");
    let _ = state.dtc.set(dtc);
    println!("ready");
    server.wait();
    Ok(ExitCode::SUCCESS)
}
