//! The two-phase-commit coordinator: builder, transaction driver, audit and
//! shutdown. Participants live on worker threads (`worker`); isolation comes
//! from ordered striped locks (`locks`); idempotency from the per-participant
//! barrier (`barrier`) and the recent-id table (`recent`).

pub(crate) mod barrier;
mod batch;
mod driver;
mod durability;
pub(crate) mod locks;
mod operator;
pub(crate) mod outstanding;
pub(crate) mod plan;
pub(crate) mod recent;
pub(crate) mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sync::channel::{Receiver, RecvTimeoutError, Sender};
use hashbrown::HashMap;
use smallvec::SmallVec;

use crate::durable::ids::IdArchive;
use crate::durable::{
    Encoded, Entry, Journal, JournalConfig, RecoveryReport, codec, encode_begin, encode_commit, encode_decision,
};
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::metrics::{Metrics, MetricsSnapshot, Stage, Striped};
use crate::participant::{BalanceSummary, BranchId, Erased, Participant, ParticipantKind, Refusal, Typed};
use crate::sync::{AtomicBool, Mutex, Ordering, thread_shard};
use crate::txn::{
    AbortReason, Account, Branch, MAX_ID_CLOCK_SKEW, Outcome, Transaction, Transfer, TxId, TxIdGen, unix_nanos,
};
use crate::wal::Lsn;

use locks::StripedLocks;
use outstanding::Outstanding;
use outstanding::{Owed, OwedBranch};
use plan::{Limits, Plan, ServiceInfo};
use recent::{Begin, RecentIds};
use worker::{Answer, Lanes, Limit, PhaseDeadline, Reply, Request, Service, Step, Submitted};

use crate::operator::{Resolution, ResolveReport, RetryReport, TxState, UnfinishedTx};
pub use crate::retry::RetryPolicy;
pub use batch::MAX_BATCH;
// Defined with the other statistics, which it is one of.
pub use crate::metrics::LogStats;

/// Longest service name accepted, in bytes.
pub const MAX_SERVICE_NAME_BYTES: usize = 64;

/// The largest [`Builder::max_payload_bytes`] accepted.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// How long outcomes of caller-chosen ids are remembered by default.
pub const DEFAULT_IDEMPOTENCY_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// Whether outcomes are made durable before they are returned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// In memory only: a crash loses everything.
    #[default]
    None,
    /// An outcome is returned only after its log record is durable.
    Sync,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub call_timeout: Duration,
    pub tx_timeout: Duration,
    pub max_legs: usize,
    pub max_branches: usize,
    pub max_payload_bytes: usize,
    pub lock_stripes: usize,
    pub queue_capacity: usize,
    pub recent_ids: usize,
    pub idempotency_horizon: Duration,
    pub barrier_capacity: usize,
    pub retry: RetryPolicy,
    /// Per-service overrides of `retry`.
    pub retry_for: Vec<(String, RetryPolicy)>,
    /// Most failing calls tracked (retrying or parked) at once.
    pub max_parked: usize,
    pub durability: Durability,
    pub dir: Option<std::path::PathBuf>,
    pub journal: JournalConfig,
    /// Testing aid: the log's storage instead of a directory.
    pub storage: Option<Arc<dyn crate::wal::Storage>>,
    /// Testing aid: deliver every phase request 1..=max copies (seed, max).
    pub redeliver: Option<(u64, u32)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            tx_timeout: Duration::from_secs(30),
            max_legs: 64,
            max_branches: 64,
            max_payload_bytes: 64 << 10,
            lock_stripes: 16_384,
            queue_capacity: 1024,
            recent_ids: 65_536,
            idempotency_horizon: DEFAULT_IDEMPOTENCY_HORIZON,
            barrier_capacity: 4_096,
            retry: RetryPolicy::default(),
            retry_for: Vec::new(),
            max_parked: 10_000,
            durability: Durability::None,
            dir: None,
            journal: JournalConfig::default(),
            storage: None,
            redeliver: None,
        }
    }
}

/// Configures and opens a [`Coordinator`].
pub struct Builder {
    /// Each service with one participant instance per lane.
    services: Vec<(String, Vec<Box<dyn Erased>>)>,
    config: Config,
}

/// Most lanes (concurrent callers) one service may have.
pub const MAX_LANES: usize = 256;

impl Builder {
    /// Registers a service under `name`. Its participant is called by one
    /// thread at a time.
    pub fn service(mut self, name: impl Into<String>, participant: impl Participant) -> Self {
        self.services.push((name.into(), vec![Box::new(Typed(participant))]));
        self
    }

    /// Registers a service whose calls run concurrently: `lanes` clones of
    /// `participant` (1 to [`MAX_LANES`]), each called by one thread of its
    /// own, a transaction's branches always on the lane its id picks. For a
    /// participant that waits on something else (a remote service, a
    /// database), so that one slow call does not hold up the others; at
    /// most `lanes` calls are in flight. Since calls on different lanes are
    /// not ordered, a transaction keeps its locks until such a service
    /// acknowledged its commit or rollback.
    pub fn concurrent_service<P: Participant + Clone>(
        mut self,
        name: impl Into<String>,
        participant: P,
        lanes: usize,
    ) -> Self {
        let lanes = lanes.clamp(1, MAX_LANES);
        let all = (0..lanes).map(|_| Box::new(Typed(participant.clone())) as Box<dyn Erased>).collect();
        self.services.push((name.into(), all));
        self
    }

    /// Most branches one transaction may have: payload branches plus one
    /// per service its transfer legs touch (default 64).
    pub fn max_branches(mut self, branches: usize) -> Self {
        self.config.max_branches = branches;
        self
    }

    /// Largest payload one branch may carry, in bytes (default 64 KiB, at
    /// most 1 MiB). Larger ones are refused with
    /// [`Error::PayloadTooLarge`] before anything runs.
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.config.max_payload_bytes = bytes;
        self
    }

    /// How long to wait for one participant's vote or acknowledgement
    /// (default 5 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = timeout;
        self
    }

    /// The whole transaction's deadline, lock waits included (default 30 s).
    pub fn transaction_timeout(mut self, timeout: Duration) -> Self {
        self.config.tx_timeout = timeout;
        self
    }

    /// Most legs one transaction may have (default 64).
    pub fn max_legs(mut self, legs: usize) -> Self {
        self.config.max_legs = legs;
        self
    }

    /// Number of key-lock stripes, rounded up to a power of two (default 16 384).
    pub fn lock_stripes(mut self, stripes: usize) -> Self {
        self.config.lock_stripes = stripes;
        self
    }

    /// Requests queued per service before callers wait (default 1024).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }

    /// Finished caller-chosen ids kept in memory (default 65 536). With a
    /// log, older ones move to the id archive on disk, so resubmission stays
    /// exact for the whole [`idempotency_horizon`](Self::idempotency_horizon);
    /// without one they are forgotten, and a forgotten id is refused with
    /// [`Error::TxIdExpired`] rather than run again.
    pub fn recent_ids(mut self, capacity: usize) -> Self {
        self.config.recent_ids = capacity;
        self
    }

    /// How long the outcome of a caller-chosen id is remembered after the
    /// id's timestamp (default 24 hours). A resubmission inside it returns
    /// the recorded outcome; an id older than it is refused with
    /// [`Error::TxIdExpired`].
    pub fn idempotency_horizon(mut self, horizon: Duration) -> Self {
        self.config.idempotency_horizon = horizon;
        self
    }

    /// Retry policy for failing commit/rollback calls of every service
    /// without its own ([`retry_for`](Self::retry_for)).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Retry policy for one service's failing commit/rollback calls. An
    /// unknown service name is refused by [`open`](Self::open).
    pub fn retry_for(mut self, service: impl Into<String>, policy: RetryPolicy) -> Self {
        let service = service.into();
        self.config.retry_for.retain(|(s, _)| *s != service);
        self.config.retry_for.push((service, policy));
        self
    }

    /// Most failing calls tracked at once, retrying or parked (default
    /// 10 000). A call that would park beyond it keeps retrying at its
    /// policy's largest delay instead, so nothing is dropped out of sight.
    pub fn max_parked(mut self, calls: usize) -> Self {
        self.config.max_parked = calls;
        self
    }

    /// Durability mode (default [`Durability::None`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// Data directory for the log and checkpoints.
    pub fn dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.dir = Some(dir.into());
        self
    }

    /// Size of each log segment file (default 64 MiB; a multiple of 4096).
    pub fn segment_size_bytes(mut self, bytes: u64) -> Self {
        self.config.journal.wal.segment_size_bytes = bytes;
        self.config.journal.checkpoint_every_bytes = bytes;
        self
    }

    /// Most live log segment files (default 4, at least 3). With one
    /// checkpoint file, this bounds the data directory: appends wait for a
    /// checkpoint rather than grow the log past it.
    pub fn max_segments(mut self, segments: usize) -> Self {
        self.config.journal.wal.max_segments = segments;
        self
    }

    /// Longest the log's sync leader waits for more transactions to join its
    /// sync (group commit), never more than half the recent sync time
    /// (default 200 µs, at most 10 ms; zero syncs at once). A single caller
    /// never waits. See `docs/design.md`, "Gathering".
    pub fn group_commit_gather(mut self, limit: Duration) -> Self {
        self.config.journal.wal.gather_limit = limit;
        self
    }

    /// Group-commit syncs allowed in flight at once (default 2, 1..=4): the
    /// next group's sync starts while earlier ones run; outcomes are still
    /// acknowledged in log order. 1 syncs one group at a time. See
    /// `docs/design.md`, "Overlapping syncs".
    pub fn group_commit_syncs_in_flight(mut self, syncs: usize) -> Self {
        self.config.journal.wal.syncs_in_flight = syncs;
        self
    }

    /// How the log writes its segment files (default
    /// [`LogBackend::Pwrite`](crate::LogBackend): `pwrite` + `fdatasync`;
    /// [`LogBackend::Mmap`](crate::LogBackend) stores into a shared mapping
    /// and syncs with `msync`). Not part of the on-disk format: a directory
    /// written with one is read with either. See `docs/design.md`, "Sync path".
    pub fn log_backend(mut self, backend: crate::wal::LogBackend) -> Self {
        self.config.journal.wal.backend = backend;
        self
    }

    /// Log bytes between checkpoints (default: one segment).
    pub fn checkpoint_every_bytes(mut self, bytes: u64) -> Self {
        self.config.journal.checkpoint_every_bytes = bytes.max(1);
        self
    }

    /// Testing aid: keep the log in `storage` (an in-memory
    /// [`testing::MemStorage`](crate::testing::MemStorage) that can crash,
    /// tear and fail on demand) instead of a directory.
    #[doc(hidden)]
    pub fn storage_for_testing(mut self, storage: crate::wal::MemStorage) -> Self {
        self.config.storage = Some(Arc::new(storage));
        self
    }

    /// Testing aid: deliver every prepare, commit and rollback request
    /// between 1 and `max_copies` times (drawn from `seed`, the transaction
    /// and the phase), to show that duplicates have the effect of one.
    #[doc(hidden)]
    pub fn redeliver_for_testing(mut self, seed: u64, max_copies: u32) -> Self {
        self.config.redeliver = Some((seed, max_copies.max(1)));
        self
    }

    /// Validates the configuration, starts one worker per service.
    pub fn open(self) -> Result<Coordinator> {
        let Builder { services, config } = self;
        if services.is_empty() {
            return Err(Error::Config("no service registered".into()));
        }
        if services.len() > usize::from(u16::MAX) {
            return Err(Error::Config("more than 65535 services".into()));
        }
        if config.call_timeout.is_zero() || config.tx_timeout.is_zero() {
            return Err(Error::Config("timeouts must be positive".into()));
        }
        if config.idempotency_horizon < config.tx_timeout + config.call_timeout {
            return Err(Error::Config(
                "idempotency_horizon must be longer than the transaction and call timeouts".into(),
            ));
        }
        if config.max_legs == 0 || config.queue_capacity == 0 || config.max_parked == 0 || config.max_branches == 0 {
            return Err(Error::Config("max_legs, max_branches, queue_capacity and max_parked must be positive".into()));
        }
        if config.max_payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(Error::Config(format!("max_payload_bytes must be at most {MAX_PAYLOAD_BYTES}")));
        }
        for (service, policy) in
            std::iter::once(&config.retry).map(|p| ("", p)).chain(config.retry_for.iter().map(|(s, p)| (s.as_str(), p)))
        {
            if !service.is_empty() && !services.iter().any(|(name, _)| name == service) {
                return Err(Error::Config(format!("retry_for names service {service:?}, which is not registered")));
            }
            if policy.initial_delay > policy.max_delay {
                return Err(Error::Config(format!("retry policy {service:?}: initial_delay exceeds max_delay")));
            }
        }
        if config.journal.wal.gather_limit > Duration::from_millis(10) {
            return Err(Error::Config("group_commit_gather must be at most 10 ms".into()));
        }
        if config.durability == Durability::Sync && config.journal.wal.max_segments < 3 {
            return Err(Error::Config("max_segments must be at least 3".into()));
        }
        let opened = match (config.durability, &config.dir) {
            (Durability::None, _) => None,
            (Durability::Sync, _) if config.storage.is_some() => {
                let storage = config.storage.clone().expect("checked just above");
                Some(Journal::open(storage, config.journal.clone())?)
            }
            (Durability::Sync, None) => {
                return Err(Error::Config("durability Sync needs a data directory (dir)".into()));
            }
            (Durability::Sync, Some(dir)) => Some(Journal::open_dir(dir, config.journal.clone())?),
        };
        let (journal, replayed) = match opened {
            Some((journal, replayed)) => (Some(Arc::new(journal)), Some(replayed)),
            None => (None, None),
        };
        // After the log's open, which removed half-written files.
        let archive = match &journal {
            Some(journal) => Some(Arc::new(IdArchive::open(journal.storage(), config.idempotency_horizon)?)),
            None => None,
        };
        let outstanding = Arc::new(Outstanding::new(config.max_parked, journal.clone()));
        let mut by_name = HashMap::new();
        for (i, (name, _)) in services.iter().enumerate() {
            validate_service_name(name)?;
            if by_name.insert(name.clone().into_boxed_str(), i as u16).is_some() {
                return Err(Error::Config(format!("service {name:?} registered twice")));
            }
        }
        let metrics = Arc::new(Metrics::default());
        let mut infos = Vec::with_capacity(services.len());
        let mut handles = Vec::with_capacity(services.len());
        let mut ledgers = Vec::with_capacity(services.len());
        let mut workers = Vec::with_capacity(services.len());
        for (i, (name, participants)) in services.into_iter().enumerate() {
            let name: Arc<str> = name.into();
            infos.push(ServiceInfo::new(name.clone(), participants[0].directory()));
            ledgers.push(participants[0].ledger());
            if participants.len() > 1 && ledgers[i].is_some() {
                return Err(Error::Config(format!("service {name:?}: a ledger cannot have several lanes")));
            }
            let retry = config.retry_for.iter().find(|(s, _)| **s == *name).map_or(&config.retry, |(_, p)| p);
            let mut lanes = Vec::with_capacity(participants.len());
            for (lane, participant) in participants.into_iter().enumerate() {
                let (sender, requests) = crate::sync::channel::bounded(config.queue_capacity);
                let service = Arc::new(Service::new(
                    i as u16,
                    name.clone(),
                    participant,
                    journal.clone(),
                    config.barrier_capacity,
                    sender,
                    metrics.clone(),
                    outstanding.clone(),
                    retry.clone(),
                    config.redeliver,
                ));
                let worker = service.clone();
                let handle = std::thread::Builder::new()
                    .name(if lane == 0 { format!("dtc-{name}") } else { format!("dtc-{name}-{lane}") })
                    .spawn(move || worker.run(requests))
                    .map_err(|source| Error::Io { op: format!("spawning the worker of {name}"), source })?;
                lanes.push(service);
                workers.push(handle);
            }
            handles.push(Lanes::new(lanes));
        }
        let mut inner = Inner {
            locks: StripedLocks::new(config.lock_stripes),
            recent: RecentIds::new(config.recent_ids, archive),
            ids: TxIdGen::new(rand::random()),
            config,
            services: infos,
            handles,
            by_name,
            metrics,
            in_flight: Striped::default(),
            closing: AtomicBool::new(false),
            workers: Mutex::new(workers),
            journal,
            ledgers,
            outstanding,
            operator_history: Mutex::new(std::collections::VecDeque::new()),
            recovery: RecoveryReport::default(),
            checkpoint_lock: Mutex::new(()),
            checkpointer: Mutex::new(None),
        };
        if let Some(replayed) = replayed {
            let fresh = replayed.report.fresh;
            inner.recovery = inner.restore(replayed)?;
            // A fresh log starts from a checkpoint of the initial balances; a
            // recovered one is compacted at once, so recovery's work is saved.
            inner.checkpoint_now()?;
            tracing::info!(fresh, report = ?inner.recovery, "log opened");
        }
        let inner = Arc::new(inner);
        if inner.journal.is_some() {
            *inner.checkpointer.lock() = Some(durability::spawn_checkpointer(&inner)?);
        }
        Ok(Coordinator { inner })
    }
}

fn validate_service_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidName { name: name.into(), why: "empty service name" });
    }
    if name.len() > MAX_SERVICE_NAME_BYTES {
        return Err(Error::InvalidName {
            name: name.chars().take(32).collect(),
            why: "service name longer than 64 bytes",
        });
    }
    Ok(())
}

/// Where the outcomes of caller-chosen ids are remembered
/// ([`Coordinator::idempotency_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct IdempotencyStats {
    /// How long an id's outcome is remembered after its timestamp.
    pub horizon_s: u64,
    /// Finished ids in the in-memory table.
    pub in_memory: u64,
    /// Ids in the on-disk archive (durable mode).
    pub archived: u64,
    /// The archive's run files.
    pub archive_runs: u64,
    /// The archive's bytes on disk.
    pub archive_bytes_on_disk: u64,
    /// The archive's metadata in memory (bounded whatever it holds).
    pub archive_bytes_in_memory: u64,
}

/// A consistent cut of every service's balances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Per service (only services that keep balances).
    pub services: Vec<(String, BalanceSummary)>,
    /// Accounts over all services.
    pub accounts: u64,
    /// Sum of all balances.
    pub total: i128,
    /// Accounts below zero (must be 0).
    pub negative: u64,
}

/// Runs atomic transactions across the registered services.
///
/// Cheap to clone: clones share one engine. The engine shuts down when
/// [`Coordinator::shutdown`] is called or the last clone is dropped.
///
/// ```
/// use dtc::{Coordinator, Ledger, Outcome, Transfer};
///
/// let eu = Ledger::new();
/// eu.create_account("alice", 100).unwrap();
/// let us = Ledger::new();
/// us.create_account("bob", 0).unwrap();
/// let dtc = Coordinator::builder().service("bank-eu", eu).service("bank-us", us).open().unwrap();
///
/// let outcome = dtc.execute(&[Transfer::new("bank-eu", "alice", "bank-us", "bob", 30)]).unwrap();
/// assert_eq!(outcome, Outcome::Committed);
/// let too_much = dtc.execute(&[Transfer::new("bank-eu", "alice", "bank-us", "bob", 500)]).unwrap();
/// assert!(matches!(too_much, Outcome::Aborted(_)));
/// assert_eq!(dtc.audit().unwrap().total, 100);
/// dtc.shutdown().unwrap();
/// ```
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    services: Vec<ServiceInfo>,
    /// Each service's lanes (one, unless registered as concurrent).
    handles: Vec<Lanes>,
    by_name: HashMap<Box<str>, u16>,
    locks: StripedLocks,
    ids: TxIdGen,
    recent: RecentIds,
    metrics: Arc<Metrics>,
    in_flight: Striped,
    closing: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    journal: Option<Arc<Journal>>,
    /// The built-in ledger behind each service, if any (logged and
    /// checkpointed by the coordinator).
    ledgers: Vec<Option<Ledger>>,
    /// Failing calls and unacknowledged commits (shared with the workers).
    outstanding: Arc<Outstanding>,
    /// The newest operator actions, carried by checkpoints.
    operator_history: Mutex<std::collections::VecDeque<crate::durable::codec::OperatorRecord>>,
    recovery: RecoveryReport,
    checkpoint_lock: Mutex<()>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
}

thread_local! {
    /// Each caller thread's reply channel, reused across transactions.
    /// Bounded in practice: every request yields exactly one reply, a caller
    /// has at most 2 × (services of one transaction) requests outstanding,
    /// and stale replies are drained at the start of the next transaction.
    static REPLIES: (Sender<Reply>, Receiver<Reply>) = crate::sync::channel::unbounded();
}

fn replies() -> (Sender<Reply>, Receiver<Reply>) {
    REPLIES.with(|(s, r)| {
        while r.try_recv().is_ok() {}
        (s.clone(), r.clone())
    })
}

/// Counts a caller (a transaction or an operator call) as in flight; see
/// `Inner::enter`. The count is striped by thread (see [`Striped`]) and the
/// guard gives back to the shard it took from.
struct InFlight<'a>(&'a Striped, usize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.sub(self.1, 1, Ordering::SeqCst);
    }
}

impl Coordinator {
    /// Starts configuring a coordinator.
    pub fn builder() -> Builder {
        Builder { services: Vec::new(), config: Config::default() }
    }

    /// A fresh transaction id (unique, time-ordered) for [`Coordinator::execute_as`].
    pub fn new_tx_id(&self) -> TxId {
        self.inner.ids.next()
    }

    /// Resolves `account` of `service` once, for transfers that reuse it
    /// ([`Transfer::between`]): refused at once, with the error a transfer
    /// naming it would get, if either is unknown.
    pub fn account(&self, service: &str, account: &str) -> Result<Account> {
        let index =
            self.inner.find(service).ok_or_else(|| Error::UnknownService { leg: 0, service: service.to_string() })?;
        plan::resolve_account(index, &self.inner.services, account, &self.inner.locks)
    }

    /// Runs one transaction of one or more transfer legs, all or nothing.
    ///
    /// Returns the outcome, or an error if the input is invalid (checked
    /// before any side effect) or the engine cannot run it.
    pub fn execute(&self, legs: &[Transfer<'_>]) -> Result<Outcome> {
        self.inner.run(self.inner.ids.next(), legs, &[], None, false)
    }

    /// Like [`execute`](Self::execute) under a caller-chosen id. Resubmitting
    /// a finished id returns its recorded outcome without running it again;
    /// resubmitting it with other legs is refused with [`Error::TxIdReused`].
    pub fn execute_as(&self, tx: TxId, legs: &[Transfer<'_>]) -> Result<Outcome> {
        self.inner.check_issued(tx)?;
        self.inner.run(tx, legs, &[], None, true)
    }

    /// Runs a [`Transaction`]: its transfer legs and its payload branches,
    /// all committed or all rolled back.
    ///
    /// ```
    /// use dtc::{BranchId, Branch, Coordinator, Failure, Outcome, Participant, ParticipantKind, Refusal, Transaction, Work};
    ///
    /// /// Books seats, in memory.
    /// #[derive(Default)]
    /// struct Seats { booked: Vec<String> }
    /// impl Participant for Seats {
    ///     type Prepared = String;
    ///     fn kind(&self) -> ParticipantKind { ParticipantKind::Volatile }
    ///     fn prepare(&mut self, _b: BranchId, work: Work<'_>) -> Result<String, Refusal> {
    ///         let seat = String::from_utf8_lossy(work.payload()).into_owned();
    ///         if self.booked.contains(&seat) {
    ///             return Err(Refusal::new("taken", format!("seat {seat} is taken")));
    ///         }
    ///         Ok(seat)
    ///     }
    ///     fn commit(&mut self, _b: BranchId, seat: &String) -> Result<(), Failure> {
    ///         self.booked.push(seat.clone());
    ///         Ok(())
    ///     }
    ///     fn rollback(&mut self, _b: BranchId, _seat: Option<&String>) -> Result<(), Failure> {
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let dtc = Coordinator::builder().service("flights", Seats::default()).open().unwrap();
    /// let book = |seat: &'static str| Transaction::new().branch(Branch::new("flights", seat.as_bytes()).lock(seat));
    /// assert_eq!(dtc.run(&book("12A")).unwrap(), Outcome::Committed);
    /// assert!(matches!(dtc.run(&book("12A")).unwrap(), Outcome::Aborted(_)));
    /// ```
    pub fn run(&self, transaction: &Transaction<'_>) -> Result<Outcome> {
        let t = transaction;
        self.inner.run(self.inner.ids.next(), t.transfers(), t.branches(), t.deadline(), false)
    }

    /// Like [`run`](Self::run) under a caller-chosen id: a resubmission of a
    /// finished id returns its recorded outcome, one with other content is
    /// [`Error::TxIdReused`].
    pub fn run_as(&self, tx: TxId, transaction: &Transaction<'_>) -> Result<Outcome> {
        self.inner.check_issued(tx)?;
        let t = transaction;
        self.inner.run(tx, t.transfers(), t.branches(), t.deadline(), true)
    }

    /// The recorded outcome of a recent id run through
    /// [`execute_as`](Self::execute_as) or [`run_as`](Self::run_as): only
    /// once it is durable (this waits for the log if need be).
    pub fn outcome_of(&self, tx: TxId) -> Result<Option<Outcome>> {
        match self.inner.recent.get(tx)? {
            Some((outcome, lsn)) => {
                self.inner.durable(lsn)?;
                Ok(Some(outcome))
            }
            None => Ok(None),
        }
    }

    /// A consistent cut of all balances: the sum equals the total at the
    /// moment of the cut, even while transfers run on every thread.
    pub fn audit(&self) -> Result<Audit> {
        self.inner.audit()
    }

    /// Counters and latency percentiles so far.
    pub fn metrics(&self) -> MetricsSnapshot {
        let mut snapshot = self.inner.metrics.snapshot();
        let unfinished = self.inner.unfinished();
        snapshot.parked_calls = self.inner.outstanding.parked_count() as u64;
        snapshot.unfinished = TxState::ALL
            .iter()
            .map(|state| (state.as_str(), unfinished.iter().filter(|u| u.state == *state).count() as u64))
            .collect();
        snapshot
    }

    /// Names of the registered services, in registration order.
    pub fn services(&self) -> Vec<String> {
        self.inner.services.iter().map(|s| s.name.to_string()).collect()
    }

    /// Commits still waiting for an external participant's acknowledgement.
    pub fn unresolved_count(&self) -> usize {
        self.inner.outstanding.unresolved_count()
    }

    /// Every unfinished transaction: failing calls being retried (attempts,
    /// next retry, last error with its code), parked calls waiting for an
    /// operator, and commits not yet acknowledged by an external service.
    /// Oldest first.
    ///
    /// ```
    /// # let ledger = dtc::Ledger::new();
    /// let dtc = dtc::Coordinator::builder().service("bank", ledger).open().unwrap();
    /// assert!(dtc.unfinished().is_empty());
    /// ```
    pub fn unfinished(&self) -> Vec<UnfinishedTx> {
        self.inner.unfinished()
    }

    /// Parked calls now, as the metrics gauge counts them.
    pub fn parked_count(&self) -> usize {
        self.inner.outstanding.parked_count()
    }

    /// Calls the participants of `tx` whose commit or rollback is parked
    /// again (with a fresh attempt budget), and cuts short the backoff of
    /// those waiting to retry. Logged with `reason` before it takes effect.
    /// [`Error::NotStuck`] if `tx` has no such call.
    pub fn retry_now(&self, tx: TxId, reason: &str) -> Result<RetryReport> {
        self.inner.retry_now(Some(tx), reason)
    }

    /// [`retry_now`](Self::retry_now) for every parked call.
    pub fn retry_all_parked(&self, reason: &str) -> Result<RetryReport> {
        self.inner.retry_now(None, reason)
    }

    /// An operator's decision on a stuck or undecided transaction, logged
    /// with `reason` before it takes effect:
    ///
    /// * [`Resolution::Commit`] of a transaction whose commit is recorded
    ///   but not acknowledged everywhere: the operator made the failing
    ///   participants apply it by hand; dtc stops calling them and records
    ///   the commit finished.
    /// * [`Resolution::Abort`] of a transaction whose rollback is stuck: the
    ///   operator undid it by hand; dtc stops calling. Of an id with no
    ///   recorded outcome (not running, issued more than the transaction
    ///   and call timeouts ago): recorded as aborted, so a resubmission gets
    ///   [`AbortReason::Operator`].
    ///
    /// Anything else would break atomicity and is refused with
    /// [`Error::UnsafeResolution`]: committing without a recorded commit
    /// decision (not every vote is known), aborting a recorded commit.
    pub fn resolve(&self, tx: TxId, resolution: Resolution, reason: &str) -> Result<ResolveReport> {
        self.inner.resolve(tx, resolution, reason)
    }

    /// Where the outcomes of caller-chosen ids are remembered, and what
    /// that costs.
    pub fn idempotency_stats(&self) -> IdempotencyStats {
        let recent = &self.inner.recent;
        let mut stats = IdempotencyStats {
            horizon_s: self.inner.config.idempotency_horizon.as_secs(),
            in_memory: recent.len() as u64,
            ..IdempotencyStats::default()
        };
        if let Some(archive) = recent.archive() {
            let a = archive.stats();
            stats.archived = a.ids;
            stats.archive_runs = a.runs as u64;
            stats.archive_bytes_on_disk = a.bytes_on_disk;
            stats.archive_bytes_in_memory = a.bytes_in_memory;
        }
        stats
    }

    /// What recovery found when this coordinator opened its data directory.
    pub fn recovery(&self) -> RecoveryReport {
        self.inner.recovery.clone()
    }

    /// Writes a checkpoint now (durable mode; a no-op otherwise).
    pub fn checkpoint(&self) -> Result<()> {
        let _in_flight = self.inner.enter()?;
        self.inner.checkpoint_now()
    }

    /// Log counters: syncs, records, bytes, records per sync (durable mode).
    pub fn log_stats(&self) -> Option<LogStats> {
        self.inner.journal.as_ref().map(|j| {
            let s = j.stats();
            LogStats {
                syncs: s.syncs,
                records: s.records,
                bytes_written: s.bytes_written,
                segments_live: s.segments_live,
            }
        })
    }

    /// Stops accepting transactions, waits for those in flight, lets every
    /// worker drain its queue, and joins the workers. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        self.inner.shutdown();
        Ok(())
    }
}

impl Inner {
    /// Registers a caller as in flight unless shutting down. SeqCst on both
    /// sides (here: increment then read `closing`; in `shutdown`: set
    /// `closing` then read the count) guarantees that either this caller sees
    /// `closing` or `shutdown` sees this caller: in the single order of
    /// SeqCst operations, an increment before the store of `closing`
    /// precedes `shutdown`'s later load of that same shard.
    fn enter(&self) -> Result<InFlight<'_>> {
        let shard = thread_shard();
        self.in_flight.add(shard, 1, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight, shard);
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(guard)
    }

    fn find(&self, name: &str) -> Option<u16> {
        if self.services.len() <= 8 {
            self.services.iter().position(|s| &*s.name == name).map(|i| i as u16)
        } else {
            self.by_name.get(name).copied()
        }
    }

    fn name(&self, service: u16) -> String {
        self.services[usize::from(service)].name.to_string()
    }

    /// The bounds `plan::build` checks, from the configuration.
    fn limits(&self) -> Limits {
        Limits {
            max_legs: self.config.max_legs,
            max_branches: self.config.max_branches,
            max_payload_bytes: self.config.max_payload_bytes,
        }
    }

    /// A caller's id must not be dated further ahead than the clock skew
    /// allows: it would drag the id clock forward and outlive every horizon.
    fn check_issued(&self, tx: TxId) -> Result<()> {
        let skew_ns = MAX_ID_CLOCK_SKEW.as_nanos() as u64;
        let now = unix_nanos();
        if tx.timestamp_ns() > now.saturating_add(skew_ns) {
            return Err(Error::TxIdInFuture { tx, skew_s: MAX_ID_CLOCK_SKEW.as_secs() });
        }
        let horizon = self.config.idempotency_horizon;
        if tx.timestamp_ns() < now.saturating_sub(u64::try_from(horizon.as_nanos()).unwrap_or(u64::MAX)) {
            return Err(Error::TxIdExpired { tx, horizon_s: horizon.as_secs() });
        }
        self.ids.observe(tx);
        Ok(())
    }

    fn run(
        &self,
        tx: TxId,
        legs: &[Transfer<'_>],
        branches: &[Branch<'_>],
        timeout: Option<Duration>,
        tracked: bool,
    ) -> Result<Outcome> {
        let _in_flight = self.enter()?;
        let plan =
            plan::build(tx, legs, branches, &self.services, |n| self.find(n), &self.locks, &self.limits(), tracked)?;
        if tracked {
            match self.recent.begin(tx, plan.fingerprint)? {
                Begin::New => {}
                Begin::Done(outcome, lsn) => {
                    // Answered only once its record is durable, like the
                    // first submission.
                    self.durable(lsn)?;
                    return Ok(outcome);
                }
                Begin::InProgress => return Err(Error::TxInProgress { tx }),
                Begin::Mismatch => return Err(Error::TxIdReused { tx }),
                Begin::Expired => {
                    let horizon_s = self.config.idempotency_horizon.as_secs();
                    return Err(Error::TxIdExpired { tx, horizon_s });
                }
            }
        }
        // The whole transaction's latency is recorded for the sampled ones
        // (from here: building the plan is CPU work the caller did).
        let started = plan.timed.then(Instant::now);
        let timeout = timeout.map_or(self.config.tx_timeout, |t| t.min(self.config.tx_timeout));
        let result = self.drive(&plan, Limit::After(timeout), tracked);
        match &result {
            Ok(outcome) => {
                self.count(outcome);
                self.timed(Stage::Total, started);
                tracing::debug!(%tx, ?outcome, "transaction finished");
            }
            Err(error) => {
                if tracked {
                    self.recent.forget(tx);
                }
                tracing::warn!(%tx, %error, "transaction failed");
            }
        }
        plan::recycle(plan);
        result
    }

    fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Committed => self.metrics.committed.add(1),
            Outcome::CommitPending => self.metrics.commit_pending.add(1),
            Outcome::Aborted(reason) => self.metrics.aborted[reason.slot()].add(1),
        }
    }

    /// Runs one transaction through the protocol core (see `driver.rs`).
    fn drive(&self, plan: &Arc<Plan>, deadline: Limit, tracked: bool) -> Result<Outcome> {
        let drive = driver::Drive::new(self, plan, deadline, tracked, None);
        if let Some(journal) = &self.journal {
            journal.backpressure(|| drive.deadline())?;
        }
        drive.run(false).map(|(outcome, _)| outcome)
    }

    /// Records a decision whose record (if any) is at `lsn`: for a tracked
    /// id in the recent-id table, with the position a resubmission must see
    /// durable before it is answered, and for an abort also in the log.
    /// Called before the locks drop, so a checkpoint (which takes every lock)
    /// never misses it. Returns the position the caller must wait for.
    fn decided(&self, plan: &Plan, outcome: &Outcome, lsn: Option<Lsn>, tracked: bool) -> Result<Option<Lsn>> {
        if !tracked {
            return Ok(lsn);
        }
        let lsn = match (outcome, &self.journal) {
            (Outcome::Aborted(reason), Some(journal)) => {
                let entry = Entry::Abort { tx: plan.tx, fingerprint: plan.fingerprint, reason: reason.clone() };
                Some(self.log_or_fail(journal.append(&entry.encoded()))?)
            }
            _ => lsn,
        };
        self.recent.finish(plan.tx, plan.fingerprint, outcome.clone(), lsn);
        Ok(lsn)
    }

    /// Waits for the decision's record to be durable (group commit).
    fn durable(&self, lsn: Option<Lsn>) -> Result<()> {
        let (Some(lsn), Some(journal)) = (lsn, &self.journal) else { return Ok(()) };
        let started = Instant::now();
        self.log_or_fail(journal.wait(lsn))?;
        self.metrics.record(Stage::Log, started.elapsed());
        Ok(())
    }

    /// A log failure is fatal: stop accepting transactions (fail-stop).
    fn log_or_fail<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result {
            tracing::error!(%error, "write-ahead log failed; the coordinator stops accepting transactions");
            // SeqCst: see `enter`.
            self.closing.store(true, Ordering::SeqCst);
        }
        result
    }

    fn submit(
        &self,
        plan: &Arc<Plan>,
        branch: usize,
        step: Step,
        reply: &Sender<Reply>,
        deadline: Option<&PhaseDeadline>,
        after: Option<Lsn>,
    ) -> Submitted {
        self.lane(plan.service_of(branch), plan.branch_id(branch)).submit(plan, branch, step, reply, deadline, after)
    }

    /// Records a stage's latency for the sampled transactions.
    fn timed(&self, stage: Stage, started: Option<Instant>) {
        if let Some(started) = started {
            self.metrics.record(stage, started.elapsed());
        }
    }

    /// The lane of service `service` that handles `branch`.
    fn lane(&self, service: u16, branch: BranchId) -> &Arc<Service> {
        self.handles[usize::from(service)].for_branch(branch.tx, branch.index)
    }

    /// The kind of participant behind service `service`.
    fn kind_of(&self, service: u16) -> ParticipantKind {
        self.handles[usize::from(service)].first().kind
    }

    /// True if some branch of `plan` goes to a service with several lanes,
    /// where FIFO does not order conflicting transactions.
    fn touches_concurrent(&self, plan: &Plan) -> bool {
        (0..plan.branches.len()).any(|b| self.handles[usize::from(plan.service_of(b))].is_concurrent())
    }

    /// True if some branch of `plan` goes to an external participant.
    fn has_external(&self, plan: &Plan) -> bool {
        (0..plan.branches.len()).any(|b| self.kind_of(plan.service_of(b)) == ParticipantKind::External)
    }

    /// The begin record of `plan`: its external branches.
    /// The begin record of `plan`: its external branches, with their
    /// requests (what recovery gives `prepared_from_request`).
    fn begin_entry(&self, plan: &Plan) -> Encoded {
        let branches = (0..plan.branches.len())
            .filter(|&b| self.kind_of(plan.service_of(b)) == ParticipantKind::External)
            .map(|b| (&*self.services[usize::from(plan.service_of(b))].name, b as u16, plan.payload(b)))
            .collect::<SmallVec<[_; 4]>>();
        Encoded { kind: codec::KIND_BEGIN, bytes: encode_begin(plan.tx, branches.into_iter()) }
    }

    /// The commit record of `plan`: every ledger change, and every other
    /// branch with what an external participant needs to commit after a
    /// crash. An abort reason if it cannot be logged (too large).
    fn commit_record(
        &self,
        plan: &Plan,
        votes: &[Option<Answer>],
        journal: &Journal,
    ) -> std::result::Result<Encoded, AbortReason> {
        let mut changes: SmallVec<[(&str, &str, i64); 8]> = SmallVec::new();
        let mut others: SmallVec<[codec::NamedBranch<'_>; 4]> = SmallVec::new();
        for (branch, vote) in votes.iter().enumerate() {
            let service = usize::from(plan.service_of(branch));
            let name: &str = &self.services[service].name;
            if self.ledgers[service].is_some() {
                changes.extend(plan.changes(branch).map(|(account, delta)| (name, account, delta)));
                continue;
            }
            let prepared = match vote {
                Some(Answer::Yes(bytes)) => bytes.as_deref(),
                _ => None,
            };
            if prepared.is_some_and(|p| p.len() > codec::MAX_PREPARED_BYTES) {
                return Err(too_large(name, "its prepared value is larger than 1 MiB"));
            }
            others.push((name, plan.branch_id(branch).index, prepared));
        }
        let encoded = if others.is_empty() {
            Encoded { kind: codec::KIND_COMMIT, bytes: encode_commit(plan.tx, plan.fingerprint, changes.into_iter()) }
        } else {
            let bytes = encode_decision(plan.tx, plan.fingerprint, changes.into_iter(), others.into_iter());
            Encoded { kind: codec::KIND_DECISION, bytes }
        };
        // A record's header is 32 bytes; the log takes a quarter segment at most.
        if encoded.bytes.len() as u64 + 40 > journal.max_record_bytes() {
            return Err(too_large("coordinator", "the commit decision is larger than the log's largest record"));
        }
        Ok(encoded)
    }

    /// With a log, commits to non-ledger branches are tracked until each
    /// one acknowledged; the last acknowledgement appends the `Done` record
    /// (see `Outstanding::acknowledged`), however late it comes.
    fn owe_commits(&self, plan: &Plan, votes: &mut [Option<Answer>]) {
        if self.journal.is_none() {
            // In memory no `Done` is logged; a failing call is listed from
            // the table of failing calls, a slow one is simply in its queue.
            return;
        }
        let branches: Vec<OwedBranch> = (0..plan.branches.len())
            .filter(|&b| self.ledgers[usize::from(plan.service_of(b))].is_none())
            .map(|b| OwedBranch {
                service: plan.service_of(b),
                branch: plan.branch_id(b).index,
                prepared: match votes[b].take() {
                    Some(Answer::Yes(Some(bytes))) => Some(bytes.into()),
                    _ => None,
                },
            })
            .collect();
        if !branches.is_empty() {
            self.outstanding.expect(plan.tx, Owed { step: Step::Commit, branches });
        }
    }

    /// With a log, rollbacks of external branches are tracked until each
    /// one applied it, then `Done` closes the begin record.
    fn owe_rollbacks(&self, plan: &Plan) {
        if self.journal.is_none() || !self.has_external(plan) {
            return;
        }
        let branches: Vec<OwedBranch> = (0..plan.branches.len())
            .filter(|&b| self.kind_of(plan.service_of(b)) == ParticipantKind::External)
            .map(|b| OwedBranch {
                service: plan.service_of(b),
                branch: plan.branch_id(b).index,
                // For a rollback: the request, which a restart needs.
                prepared: plan.payload(b).map(Into::into),
            })
            .collect();
        self.outstanding.expect(plan.tx, Owed { step: Step::Rollback, branches });
    }

    /// Turns a non-yes vote into the reason (or the typed error for an
    /// account the participant does not know).
    fn abort_reason(&self, service: u16, answer: Answer) -> Result<AbortReason> {
        let service_name = self.name(service);
        Ok(match answer {
            Answer::No(Refusal::InsufficientFunds { account }) => {
                AbortReason::InsufficientFunds { service: service_name, account }
            }
            Answer::No(Refusal::UnknownAccount { account }) => {
                return Err(Error::UnknownAccount { leg: usize::MAX, service: service_name, account });
            }
            Answer::No(Refusal::Overflow { account }) => AbortReason::Refused {
                service: service_name,
                code: "balance_overflow".into(),
                message: format!("balance of {account} would overflow"),
            },
            Answer::No(Refusal::Other { code, message } | Refusal::Unknown { code, message }) => {
                AbortReason::Refused { service: service_name, code, message }
            }
            Answer::Panicked => AbortReason::ParticipantPanicked { service: service_name },
            Answer::LateRefused | Answer::Cancelled => AbortReason::AlreadyRolledBack { service: service_name },
            Answer::LogFailed => AbortReason::Refused {
                service: service_name,
                code: "log_failed".into(),
                message: "the coordinator's log failed".into(),
            },
            Answer::Yes(_) | Answer::Done | Answer::Parked | Answer::Violation => AbortReason::Refused {
                service: service_name,
                code: "protocol_violation".into(),
                message: "unexpected answer".into(),
            },
        })
    }

    fn audit(&self) -> Result<Audit> {
        let _in_flight = self.enter()?;
        let deadline = Instant::now() + self.config.tx_timeout;
        let Some(locks) = self.locks.acquire_all(deadline) else {
            return Err(Error::AuditTimeout);
        };
        let (reply, replies) = replies();
        for lanes in &self.handles {
            let service = lanes.first();
            if !matches!(service.enqueue(Request::Audit { reply: reply.clone() }, Some(deadline)), Submitted::Queued) {
                return Err(Error::AuditTimeout);
            }
        }
        let mut parts: Vec<Option<Option<BalanceSummary>>> = vec![None; self.handles.len()];
        let mut got = 0;
        while got < parts.len() {
            match replies.recv_deadline(deadline) {
                Ok(Reply::Audit { service, summary }) => {
                    let slot = &mut parts[usize::from(service)];
                    if slot.is_none() {
                        *slot = Some(summary);
                        got += 1;
                    }
                }
                Ok(Reply::Phase { .. }) => {}
                Err(_) => return Err(Error::AuditTimeout),
            }
        }
        drop(locks);
        let mut audit = Audit { services: Vec::new(), accounts: 0, total: 0, negative: 0 };
        for (service, part) in parts.into_iter().enumerate() {
            if let Some(Some(summary)) = part {
                audit.accounts += summary.accounts;
                audit.total += summary.total;
                audit.negative += summary.negative;
                audit.services.push((self.name(service as u16), summary));
            }
        }
        Ok(audit)
    }

    fn shutdown(&self) {
        // SeqCst: see `enter`.
        self.closing.store(true, Ordering::SeqCst);
        let give_up = Instant::now() + self.config.tx_timeout + self.config.call_timeout * 2;
        while self.in_flight.sum(Ordering::SeqCst) > 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_micros(100));
        }
        let workers = std::mem::take(&mut *self.workers.lock());
        if workers.is_empty() {
            return;
        }
        // Workers waiting out a retry backoff stop; the calls stay prepared
        // at their participants and recovery resolves them.
        self.outstanding.close();
        if let Some(checkpointer) = self.checkpointer.lock().take() {
            // The checkpointer may be the thread dropping the last handle.
            if checkpointer.thread().id() != std::thread::current().id() {
                let _ = checkpointer.join();
            }
        }
        if self.journal.is_some()
            && let Err(error) = self.checkpoint_now()
        {
            tracing::warn!(%error, "final checkpoint failed; recovery will replay the log");
        }
        for service in self.handles.iter().flat_map(Lanes::all) {
            // A worker that is gone already is fine.
            let _ = service.enqueue(Request::Shutdown, None);
        }
        for worker in workers {
            if worker.join().is_err() {
                tracing::error!("a worker thread ended by panic");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An abort because the decision cannot be logged.
fn too_large(service: &str, why: &str) -> AbortReason {
    AbortReason::Refused { service: service.into(), code: "decision_too_large".into(), message: why.into() }
}

/// The next reply for (`tx`, `step`), skipping stale ones, until `deadline`:
/// the branch index and its answer.
fn wait_any(replies: &Receiver<Reply>, tx: TxId, step: Step, deadline: Instant) -> Option<(u16, Answer)> {
    loop {
        match replies.recv_deadline(deadline) {
            Ok(Reply::Phase { tx: t, branch, step: s, answer }) if t == tx && s == step => {
                return Some((branch, answer));
            }
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        }
    }
}
