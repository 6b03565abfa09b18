//! `dtc participant`: the reference participant service of the HTTP
//! protocol (docs/participant-protocol.md). It holds durable reservations:
//! a prepare's JSON object is recorded, with the branch's phases, in a
//! `BranchStore` in `--dir`, so every answer it gave holds across a kill -9
//! and restart. Faults are injected at the given rates, from `--seed`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Args as ClapArgs, ValueEnum};
use dtc::http::{Request, Response, Router, Server, ServerConfig};
use dtc::{
    BranchId, Refusal, TxId,
    store::{BranchFilter, BranchStore, CommitVerdict, PrepareVerdict, RollbackVerdict, StoreError},
};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The service's name (in answers and metrics).
    #[arg(long)]
    name: String,
    /// Address to listen on; port 0 picks a free one (printed at start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Directory of the durable branch store (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Rate of prepares refused with 409 `injected_refusal` (recorded: a
    /// duplicate gets the same refusal).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    refuse: f64,
    /// Rate of calls (any phase) answered 503 `injected_failure` before
    /// anything is done: "not known yet", the coordinator retries.
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    fail: f64,
    /// Rate of calls (of the phases --stall-phase names) that sleep
    /// --stall-ms after doing their work and before answering (past the
    /// coordinator's call timeout: the answer is lost).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    stall: f64,
    /// How long a stalled call sleeps.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    stall_ms: u64,
    /// Which calls --stall may stall: one phase (prepare, commit or
    /// rollback), or any (the default). Calls of the other phases answer at
    /// once.
    #[arg(long, value_enum, default_value_t = StallPhase::Any)]
    stall_phase: StallPhase,
    /// Seed of the fault injection (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// Most units (the payloads' `"amount"`, a non-negative integer) held by
    /// prepared reservations at once; more is refused with 409
    /// `insufficient_capacity`. Unlimited when absent.
    #[arg(long)]
    capacity: Option<u64>,
    /// Threads running requests.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    handler_threads: u32,
    /// Open connections at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_connections: u32,
    /// Answer without waiting for the store's records to be durable (for
    /// benchmarks of a volatile service: a crash loses the latest answers).
    #[arg(long)]
    no_sync: bool,
}

/// The phases `--stall` applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StallPhase {
    Prepare,
    Commit,
    Rollback,
    Any,
}

impl StallPhase {
    fn covers(self, phase: &str) -> bool {
        match self {
            StallPhase::Prepare => phase == "prepare",
            StallPhase::Commit => phase == "commit",
            StallPhase::Rollback => phase == "rollback",
            StallPhase::Any => true,
        }
    }
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a rate between 0 and 1")),
    }
}

/// Largest prepare payload accepted (a refusal beyond): its prepared value,
/// the payload wrapped with the name, then stays within the protocol's
/// 64 KiB.
const MAX_PAYLOAD_BYTES: usize = 60 << 10;

/// Longest `--name`.
const MAX_NAME_BYTES: usize = 256;

/// The phases counted in the metrics.
const PHASES: [&str; 3] = ["prepare", "commit", "rollback"];

/// Faults drawn per call.
struct Faults {
    rng: Mutex<SmallRng>,
    refuse: f64,
    fail: f64,
    stall: f64,
    stall_for: Duration,
    stall_phase: StallPhase,
    refused: AtomicU64,
    failed: AtomicU64,
    stalled: AtomicU64,
}

impl Faults {
    fn draw(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().random_bool(p)
    }
}

struct Service {
    name: String,
    store: BranchStore,
    faults: Faults,
    capacity: Option<u64>,
    /// Units held by prepared reservations (rebuilt from the store at start).
    held: Mutex<u64>,
    /// Answers by (phase, status): a handful of keys.
    answers: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

pub fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.name.is_empty() || args.name.len() > MAX_NAME_BYTES {
        return Err(format!("--name must be 1 to {MAX_NAME_BYTES} bytes").into());
    }
    let store = dtc::store::BranchStoreOptions::default().sync(!args.no_sync).open(&args.dir)?;
    let held = store.prepared().iter().map(|(_, value)| amount_of_prepared(value)).sum();
    let seed = args.seed.unwrap_or_else(rand::random);
    let faults = Faults {
        rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        refuse: args.refuse,
        fail: args.fail,
        stall: args.stall,
        stall_for: Duration::from_millis(args.stall_ms),
        stall_phase: args.stall_phase,
        refused: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stalled: AtomicU64::new(0),
    };
    let service = Arc::new(Service {
        name: args.name,
        store,
        faults,
        capacity: args.capacity,
        held: Mutex::new(held),
        answers: Mutex::new(BTreeMap::new()),
    });
    let config = ServerConfig {
        handler_threads: args.handler_threads as usize,
        max_connections: args.max_connections as usize,
        // A commit's body is the prepared value, up to the protocol's bound.
        max_body_bytes: dtc::store::MAX_PREPARED_BYTES,
        ..ServerConfig::default()
    };
    let server = Server::start(args.listen.as_str(), config, router(service))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;
    drop(stdout);
    // Runs until the process is stopped (SIGTERM, SIGKILL): every answer is
    // durable when sent, so there is nothing to flush.
    server.wait();
    Ok(ExitCode::SUCCESS)
}

fn router(service: Arc<Service>) -> Router {
    let phase = |service: &Arc<Service>, phase: &'static str| {
        let service = Arc::clone(service);
        move |request: &Request| service.phase(phase, request)
    };
    let list = Arc::clone(&service);
    let metrics = Arc::clone(&service);
    let health = Arc::clone(&service);
    Router::new()
        .post("/prepare", phase(&service, "prepare"))
        .post("/commit", phase(&service, "commit"))
        .post("/rollback", phase(&service, "rollback"))
        .get("/branches", move |request: &Request| list.branches(request))
        .get("/metrics", move |_: &Request| metrics.metrics())
        .get("/healthz", move |_: &Request| {
            Response::json(200, &serde_json::json!({"status": "ok", "name": health.name}))
        })
}

/// `text` escaped for a Prometheus label value.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A protocol "no": 409 with the code at the top level (what coordinators
/// read) and in the usual error shape.
fn conflict(code: &str, message: &str) -> Response {
    let detail = serde_json::json!({"code": code, "message": message});
    Response::json(409, &serde_json::json!({"code": code, "message": message, "error": detail}))
}

fn unavailable(error: &StoreError) -> Response {
    Response::error(503, "store_unavailable", &error.to_string())
}

/// The branch a call names, from its `Dtc-Transaction` and `Dtc-Branch`
/// headers, or the 400 answer.
#[allow(clippy::result_large_err)]
fn branch_of(request: &Request) -> Result<BranchId, Response> {
    let tx = request.header("dtc-transaction").unwrap_or_default();
    if tx.len() != 32 || !tx.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Response::error(400, "bad_transaction", "Dtc-Transaction must be 32 lowercase hex digits"));
    }
    let index = request.header("dtc-branch").unwrap_or_default();
    let index = match index.parse::<u16>() {
        Ok(n) if index.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => return Err(Response::error(400, "bad_branch", "Dtc-Branch must be a decimal number 0..=65535")),
    };
    let tx = u128::from_str_radix(tx, 16).map_err(|_| Response::error(400, "bad_transaction", "not hex"))?;
    Ok(BranchId { tx: TxId::from_u128(tx), index })
}

/// The `"amount"` of a payload: absent is 0; anything but a non-negative
/// integer is an error message.
fn amount_of(payload: &serde_json::Value) -> Result<u64, String> {
    match payload.get("amount") {
        None => Ok(0),
        Some(value) => value.as_u64().ok_or_else(|| format!("amount must be a non-negative integer, not {value}")),
    }
}

/// The amount a recorded prepared value holds.
fn amount_of_prepared(value: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(value).ok().and_then(|v| amount_of(&v["reservation"]).ok()).unwrap_or(0)
}

impl Service {
    fn phase(&self, phase: &'static str, request: &Request) -> Response {
        let response = self.answer(phase, request);
        *self.answers.lock().entry((phase, response.status())).or_default() += 1;
        if self.faults.stall_phase.covers(phase) && self.faults.draw(self.faults.stall) {
            self.faults.stalled.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(self.faults.stall_for);
        }
        response
    }

    fn answer(&self, phase: &'static str, request: &Request) -> Response {
        let branch = match branch_of(request) {
            Ok(branch) => branch,
            Err(response) => return response,
        };
        if self.faults.draw(self.faults.fail) {
            // Relaxed: a statistic.
            self.faults.failed.fetch_add(1, Ordering::Relaxed);
            return Response::error(503, "injected_failure", "injected failure: nothing was done, call again");
        }
        match phase {
            "prepare" => self.prepare(branch, request),
            "commit" => self.commit(branch),
            _ => self.rollback(branch),
        }
    }

    fn prepare(&self, branch: BranchId, request: &Request) -> Response {
        let mut held_now = 0;
        let reserve = || -> Result<Vec<u8>, Refusal> {
            if request.body().len() > MAX_PAYLOAD_BYTES {
                return Err(Refusal::new(
                    "payload_too_large",
                    format!("a payload of {} bytes exceeds {MAX_PAYLOAD_BYTES}", request.body().len()),
                ));
            }
            let payload: serde_json::Value = serde_json::from_slice(request.body())
                .map_err(|e| Refusal::new("invalid_payload", format!("the payload is not JSON: {e}")))?;
            if !payload.is_object() {
                return Err(Refusal::new("invalid_payload", "the payload must be a JSON object"));
            }
            let amount = amount_of(&payload).map_err(|m| Refusal::new("invalid_payload", m))?;
            if self.faults.draw(self.faults.refuse) {
                self.faults.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::new("injected_refusal", "injected refusal"));
            }
            let mut held = self.held.lock();
            if let Some(capacity) = self.capacity
                && held.saturating_add(amount) > capacity
            {
                return Err(Refusal::new(
                    "insufficient_capacity",
                    format!("{amount} more units would exceed the capacity of {capacity} ({held} held)"),
                ));
            }
            *held += amount;
            held_now = amount;
            let value = serde_json::json!({"participant": self.name, "reservation": payload});
            Ok(value.to_string().into_bytes())
        };
        let verdict = self.store.prepare(branch, reserve);
        if verdict.is_err() && held_now > 0 {
            // Reserved in memory but not recorded: give the units back.
            *self.held.lock() -= held_now;
        }
        match verdict {
            Ok(PrepareVerdict::Prepared(value) | PrepareVerdict::AlreadyPrepared(value)) => {
                Response::bytes(200, "application/json", value)
            }
            Ok(PrepareVerdict::Refused(refusal)) => {
                let (code, message) = match &refusal {
                    Refusal::Other { code, message } => (code.as_str(), message.clone()),
                    other => ("refused", other.to_string()),
                };
                conflict(code, &message)
            }
            Ok(PrepareVerdict::AlreadyRolledBack) => {
                conflict("already_rolled_back", "the branch was rolled back before this prepare; nothing reserved")
            }
            Ok(PrepareVerdict::AlreadyCommitted) => conflict("already_committed", "the branch was committed already"),
            Ok(PrepareVerdict::Expired) => conflict(
                "branch_expired",
                "the transaction is older than branches this participant has forgotten; nothing reserved",
            ),
            Ok(_) => conflict("refused", "refused"),
            Err(error) => unavailable(&error),
        }
    }

    fn release(&self, value: &[u8]) {
        let amount = amount_of_prepared(value);
        let mut held = self.held.lock();
        *held = held.saturating_sub(amount);
    }

    fn commit(&self, branch: BranchId) -> Response {
        let done = || Response::json(200, &serde_json::json!({"branch": branch.to_string(), "state": "committed"}));
        match self.store.commit(branch, |value| {
            self.release(value);
            Ok(())
        }) {
            Ok(CommitVerdict::Committed | CommitVerdict::AlreadyCommitted) => done(),
            Ok(CommitVerdict::AlreadyRolledBack) => conflict("unknown_branch", "the branch was rolled back"),
            Ok(_) => conflict("unknown_branch", "this participant never prepared the branch"),
            Err(error) => unavailable(&error),
        }
    }

    fn rollback(&self, branch: BranchId) -> Response {
        let done = || Response::json(200, &serde_json::json!({"branch": branch.to_string(), "state": "rolled_back"}));
        match self.store.rollback(branch, |value| {
            if let Some(value) = value {
                self.release(value);
            }
            Ok(())
        }) {
            Ok(RollbackVerdict::AlreadyCommitted) => conflict("already_committed", "the branch was committed"),
            Ok(_) => done(),
            Err(error) => unavailable(&error),
        }
    }

    fn branches(&self, request: &Request) -> Response {
        let filter = match request.query_param("state").as_deref().unwrap_or("all").parse::<BranchFilter>() {
            Ok(filter) => filter,
            Err(message) => return Response::error(400, "bad_filter", &message),
        };
        let list: Vec<serde_json::Value> = self
            .store
            .branches(filter)
            .into_iter()
            .map(|info| {
                let prepared = info.prepared.map(|bytes| {
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()))
                });
                serde_json::json!({
                    "transaction": info.branch.tx.to_string(),
                    "branch": info.branch.index,
                    "state": info.state.as_str(),
                    "prepared": prepared,
                })
            })
            .collect();
        Response::json(200, &list)
    }

    fn metrics(&self) -> Response {
        let mut text = String::new();
        let name = label(&self.name);
        text.push_str("# HELP dtc_participant_requests_total Protocol calls answered, by phase and status.\n");
        text.push_str("# TYPE dtc_participant_requests_total counter\n");
        let answers = self.answers.lock().clone();
        for phase in PHASES {
            for ((p, status), count) in answers.iter().filter(|((p, _), _)| *p == phase) {
                text.push_str(&format!(
                    "dtc_participant_requests_total{{participant=\"{name}\",phase=\"{p}\",status=\"{status}\"}} {count}\n"
                ));
            }
        }
        let stats = self.store.stats();
        text.push_str("# HELP dtc_participant_prepared_branches Branches prepared and undecided now.\n");
        text.push_str("# TYPE dtc_participant_prepared_branches gauge\n");
        text.push_str(&format!("dtc_participant_prepared_branches{{participant=\"{name}\"}} {}\n", stats.prepared));
        text.push_str("# HELP dtc_participant_held_units Units held by prepared reservations now.\n");
        text.push_str("# TYPE dtc_participant_held_units gauge\n");
        text.push_str(&format!("dtc_participant_held_units{{participant=\"{name}\"}} {}\n", *self.held.lock()));
        text.push_str("# HELP dtc_participant_injected_faults_total Faults injected, by kind.\n");
        text.push_str("# TYPE dtc_participant_injected_faults_total counter\n");
        let f = &self.faults;
        for (kind, counter) in [("refuse", &f.refused), ("fail", &f.failed), ("stall", &f.stalled)] {
            text.push_str(&format!(
                "dtc_participant_injected_faults_total{{participant=\"{name}\",fault=\"{kind}\"}} {}\n",
                counter.load(Ordering::Relaxed)
            ));
        }
        text.push_str("# HELP dtc_participant_log_syncs_total Syncs of the branch store's log.\n");
        text.push_str("# TYPE dtc_participant_log_syncs_total counter\n");
        text.push_str(&format!("dtc_participant_log_syncs_total{{participant=\"{name}\"}} {}\n", stats.log_syncs));
        Response::bytes(200, "text/plain; version=0.0.4", text)
    }
}
