//! The saga executor: starts sagas, records their progress in its own log,
//! resumes them after a restart, and reports their states.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::durable::control;
use serde::de::DeserializeOwned;

use super::clock::{Clock, SystemClock};
use super::core::{Config, Core, Counters, ErasedDefinition, LogState, SagaInfo, SagaState, bump, clip, info_of, read};
use super::definition::SagaDefinition;
use super::error::SagaError;
use super::jitter::JitterSource;
use super::log::{Phase, Rec, Row, Table};
use super::run;
use crate::retry::{Jitter, RetryPolicy};
use crate::sync::{AtomicUsize, Mutex};
use crate::txn::{TxId, TxIdGen};
use crate::wal::{FsStorage, MemStorage, Storage, Wal, WalConfig};

/// Largest encoded (JSON) saga input, in bytes.
pub const MAX_INPUT_BYTES: usize = 16 << 10;
/// Most saga definitions one executor holds.
pub const MAX_DEFINITIONS: usize = 1024;

/// Counters and gauges of one executor (since it was opened).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SagaMetrics {
    /// Sagas started.
    pub started: u64,
    /// Sagas resumed after a restart or retried after being stuck.
    pub resumed: u64,
    /// Sagas that completed.
    pub completed: u64,
    /// Sagas that were compensated.
    pub compensated: u64,
    /// Times a saga became stuck.
    pub stuck_events: u64,
    /// Sagas stuck now.
    pub stuck: u64,
    /// Sagas not finished now (running, compensating or stuck).
    pub open: u64,
    /// Action calls made.
    pub step_attempts: u64,
    /// Action retries (calls after a failed one).
    pub step_retries: u64,
    /// Action or compensation calls that timed out.
    pub timeouts: u64,
    /// Action or compensation calls that panicked.
    pub panics: u64,
    /// Steps that failed for good.
    pub step_failures: u64,
    /// Sagas whose deadline passed.
    pub deadlines_exceeded: u64,
    /// Compensation calls made.
    pub compensation_attempts: u64,
    /// Compensation retries.
    pub compensation_retries: u64,
}

/// An in-memory saga log that can simulate crashes, for tests and demos.
/// Clones share the same files.
#[derive(Debug, Clone, Default)]
pub struct MemoryLog(MemStorage);

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self(MemStorage::new())
    }
    /// What a crash right now would leave: only the durable bytes. This
    /// handle is unaffected.
    pub fn crash(&self) -> MemoryLog {
        Self(self.0.crash())
    }
    /// Arms a crash just before durability point `n + 1`: that operation and
    /// every later one fail (the executor stops where it is), and
    /// [`MemoryLog::crash_image`] returns what was durable after `n` points.
    pub fn crash_after_syncs(&self, n: u64) {
        self.0.crash_after_syncs(n);
    }
    /// The image captured by an armed crash, once it happened.
    pub fn crash_image(&self) -> Option<MemoryLog> {
        self.0.crash_image().map(Self)
    }
    /// Durability points passed so far.
    pub fn sync_count(&self) -> u64 {
        self.0.sync_count()
    }
}

#[derive(Debug, Clone)]
enum LogChoice {
    None,
    Dir(PathBuf),
    Memory(MemoryLog),
}

/// Configures and opens a [`SagaExecutor`].
pub struct SagaExecutorBuilder {
    log: LogChoice,
    clock: Arc<dyn Clock>,
    seed: Option<u64>,
    config: Config,
    segment_size_bytes: u64,
}

impl fmt::Debug for SagaExecutorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaExecutorBuilder").field("log", &self.log).field("config", &self.config).finish()
    }
}

impl SagaExecutorBuilder {
    /// Keep the saga log in `dir` (created if missing).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log = LogChoice::Dir(dir.into());
        self
    }
    /// Keep the saga log in memory (crashes can be simulated on it).
    pub fn memory_log(mut self, log: MemoryLog) -> Self {
        self.log = LogChoice::Memory(log);
        self
    }
    /// No log: nothing survives the process (the default).
    pub fn no_log(mut self) -> Self {
        self.log = LogChoice::None;
        self
    }
    /// The clock for backoff and deadlines (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Seed of the jitter generator (default: random).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Retry policy of compensations; past its attempts the saga is
    /// [`SagaState::Stuck`] (default: 10 ms doubling to 5 s, full jitter, 20
    /// calls).
    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        self.config.compensation_retry = policy;
        self
    }
    /// Most unfinished sagas (stuck ones included) at once (default 10 000).
    pub fn max_open_sagas(mut self, limit: usize) -> Self {
        self.config.max_open_sagas = limit;
        self
    }
    /// Finished sagas remembered for [`SagaExecutor::sagas`] (default 1024).
    pub fn max_finished_sagas(mut self, limit: usize) -> Self {
        self.config.max_finished_sagas = limit;
        self
    }
    /// Size of each saga log segment (default 1 MiB; a multiple of 4096, at
    /// least 64 KiB). The log keeps at most 8 segments and checkpoints every
    /// quarter segment.
    pub fn segment_size_bytes(mut self, bytes: u64) -> Self {
        self.segment_size_bytes = bytes;
        self
    }
    /// Testing aid: call every successful action and compensation again
    /// `copies` more times with the same key, to show that duplicates have
    /// one effect.
    #[doc(hidden)]
    pub fn redeliver_for_testing(mut self, copies: u32) -> Self {
        self.config.redeliver = copies.min(16);
        self
    }

    /// Opens the log (recovering what it holds) and the executor. Sagas found
    /// unfinished wait for [`SagaExecutor::resume`].
    pub fn open(self) -> Result<SagaExecutor, SagaError> {
        let config_error = |reason: &str| SagaError::Config { reason: reason.into() };
        if self.config.max_open_sagas == 0 {
            return Err(config_error("max_open_sagas must be positive"));
        }
        if self.segment_size_bytes < 64 << 10 {
            return Err(config_error("segment_size_bytes must be at least 64 KiB"));
        }
        let mut lock = None;
        let (storage, location): (Arc<dyn Storage>, String) = match &self.log {
            LogChoice::None => return Ok(SagaExecutor::with(self, None, Table::new(0))),
            LogChoice::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| SagaError::Open {
                    location: dir.display().to_string(),
                    cause: format!("cannot create the directory: {e}"),
                })?;
                // One process per directory (the kernel drops it on exit).
                lock = Some(
                    crate::durable::dirlock::DirLock::acquire(dir)
                        .map_err(|e| SagaError::Open { location: dir.display().to_string(), cause: e.to_string() })?,
                );
                let storage = FsStorage::new(dir).map_err(|e| SagaError::Open {
                    location: dir.display().to_string(),
                    cause: format!("cannot open the directory: {e}"),
                })?;
                (Arc::new(storage), dir.display().to_string())
            }
            LogChoice::Memory(log) => (Arc::new(log.0.clone()), "memory".to_string()),
        };
        let wal_config =
            WalConfig { segment_size_bytes: self.segment_size_bytes, max_segments: 8, ..WalConfig::default() };
        let open_error = |cause: String| SagaError::Open { location: location.clone(), cause };
        let (wal, recovery) = Wal::open(storage, wal_config).map_err(|e| open_error(e.to_string()))?;
        let max_finished = self.config.max_finished_sagas;
        let (checkpoint_lsn, mut table) = match &recovery.checkpoint {
            Some((lsn, bytes)) => {
                (lsn.0, Table::decode(bytes, max_finished).map_err(|e| open_error(format!("checkpoint: {e}")))?)
            }
            None => (0, Table::new(max_finished)),
        };
        for record in &recovery.records {
            let rec = Rec::decode(record.kind, &record.payload)
                .map_err(|e| open_error(format!("record at {}: {e}", record.lsn)))?;
            if let Err(why) = table.apply(&rec) {
                tracing::warn!(lsn = record.lsn.0, %why, "saga log record does not fit; skipped");
            }
        }
        tracing::info!(
            %location,
            records = recovery.records.len(),
            open = table.open(),
            "saga log recovered"
        );
        let log = LogState { wal, checkpoint_lsn: Mutex::new(checkpoint_lsn), _lock: lock };
        Ok(SagaExecutor::with(self, Some(log), table))
    }
}

/// Runs sagas: each step's action in order (parallel groups concurrently),
/// retried under its policy within the saga's deadline; on a failure for
/// good or a passed deadline, the compensations of every completed step in
/// reverse order of completion. Progress goes to the executor's own log, so
/// reopening it on the same directory and calling [`SagaExecutor::resume`]
/// finishes what a crash interrupted.
///
/// `Send + Sync`: sagas may be run from many threads at once; each runs on
/// the thread that calls [`SagaExecutor::run`].
///
/// See [`SagaDefinition`] for an example.
pub struct SagaExecutor {
    core: Arc<Core>,
}

impl fmt::Debug for SagaExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaExecutor").field("metrics", &self.metrics()).finish()
    }
}

impl SagaExecutor {
    /// Configures an executor.
    pub fn builder() -> SagaExecutorBuilder {
        SagaExecutorBuilder {
            log: LogChoice::None,
            clock: Arc::new(SystemClock),
            seed: None,
            config: Config {
                compensation_retry: RetryPolicy::new(Duration::from_millis(10), Duration::from_secs(5), 20)
                    .with_jitter(Jitter::Full),
                max_open_sagas: 10_000,
                max_finished_sagas: 1024,
                checkpoint_every_bytes: 256 << 10,
                redeliver: 0,
            },
            segment_size_bytes: 1 << 20,
        }
    }

    /// An executor whose log lives in `dir`, with default settings.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SagaExecutor, SagaError> {
        Self::builder().dir(dir).open()
    }

    /// An executor with no log (nothing survives the process).
    pub fn in_memory() -> SagaExecutor {
        let builder = Self::builder();
        Self::with(builder, None, Table::new(1024))
    }

    fn with(builder: SagaExecutorBuilder, log: Option<LogState>, mut table: Table) -> SagaExecutor {
        let SagaExecutorBuilder { clock, seed, mut config, segment_size_bytes, log: choice, .. } = builder;
        config.checkpoint_every_bytes = segment_size_bytes / 4;
        table.max_finished = config.max_finished_sagas;
        let ids = TxIdGen::new(rand::random());
        if let Some(newest) = table.rows.keys().max() {
            ids.observe(*newest);
        }
        let executor = SagaExecutor {
            core: Arc::new(Core {
                log,
                table: Mutex::new(table),
                clock,
                jitter: JitterSource::new(seed.unwrap_or_else(rand::random)),
                config,
                counters: Counters::default(),
                in_flight: Arc::new(AtomicUsize::new(0)),
                ids,
                active: Mutex::new(HashSet::new()),
                definitions: Mutex::new(HashMap::new()),
            }),
        };
        if let LogChoice::Dir(dir) = choice {
            spawn_control(Arc::downgrade(&executor.core), dir);
        }
        executor
    }

    /// Unfinished sagas (running, compensating, stuck) as
    /// [`UnfinishedTx`](crate::operator::UnfinishedTx) rows, like
    /// [`Coordinator::unfinished`](crate::Coordinator::unfinished).
    pub fn unfinished(&self) -> Vec<crate::operator::UnfinishedTx> {
        self.sagas().into_iter().filter_map(unfinished_row).collect()
    }

    /// Answers one operator request from the control channel.
    fn handle_control(&self, request: control::Request) -> control::Response {
        use control::{Request, Response};
        let refused = |code: &str, message: String| Response::Refused { code: code.into(), message };
        match request {
            Request::Unfinished => Response::Unfinished { transactions: self.unfinished() },
            Request::Resolve { .. } => refused(
                "unsupported",
                "a saga has no commit or abort to force: fix what its failing step calls, then retry-now".into(),
            ),
            Request::RetryNow { tx, reason } => {
                let stuck: Vec<TxId> = match tx {
                    Some(tx) => match self.saga(tx) {
                        Some(info) if info.state == SagaState::Stuck => vec![tx],
                        Some(_) | None => return refused("not_stuck", format!("saga {tx} is not stuck")),
                    },
                    None => self.sagas().into_iter().filter(|s| s.state == SagaState::Stuck).map(|s| s.id).collect(),
                };
                let executor = SagaExecutor { core: Arc::clone(&self.core) };
                let sagas = stuck.clone();
                // Compensations may take long (their own retries): answer now.
                let spawned = std::thread::Builder::new().name("dtc-saga-retry".into()).spawn(move || {
                    for saga in sagas {
                        if let Err(error) = executor.retry_stuck_because(saga, &reason) {
                            tracing::error!(%saga, %error, "operator retry of a stuck saga failed");
                        }
                    }
                });
                match spawned {
                    Ok(_) => {
                        let redelivered = stuck.len();
                        Response::Retried {
                            report: crate::operator::RetryReport { transactions: stuck, redelivered, woken: 0 },
                        }
                    }
                    Err(e) => refused("io", format!("cannot start the retry: {e}")),
                }
            }
        }
    }

    /// Registers `definition` under its name, so that its unfinished sagas
    /// can be resumed. Registering the same definition again is a no-op;
    /// a different one under a taken name is refused.
    pub fn register<I>(&self, definition: &SagaDefinition<I>) -> Result<(), SagaError>
    where
        I: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let mut definitions = self.core.definitions.lock();
        let name = definition.name();
        if let Some(existing) = definitions.get(name) {
            let same = std::ptr::addr_eq(Arc::as_ptr(existing), Arc::as_ptr(&definition.inner));
            return if same { Ok(()) } else { Err(SagaError::DefinitionConflict { definition: name.to_string() }) };
        }
        if definitions.len() >= MAX_DEFINITIONS {
            return Err(SagaError::Config { reason: format!("more than {MAX_DEFINITIONS} saga definitions") });
        }
        let erased: Arc<dyn ErasedDefinition> = definition.inner.clone();
        definitions.insert(name.to_string(), erased);
        Ok(())
    }

    /// Starts a saga of `definition` (registering it if needed) with `input`
    /// and drives it to its end on this thread: completed, compensated or
    /// stuck. The input is logged as JSON and every call sees the logged
    /// copy, so a resumed saga sees exactly the same input.
    ///
    /// An `Err` means the saga could not be started, or the log failed
    /// midway (the saga then stops where it is, to be resumed on reopen).
    pub fn run<I>(&self, definition: &SagaDefinition<I>, input: &I) -> Result<SagaInfo, SagaError>
    where
        I: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.register(definition)?;
        let name = definition.name();
        let input_error = |phase, e: serde_json::Error| SagaError::Input {
            saga: None,
            definition: name.to_string(),
            phase,
            cause: e.to_string(),
        };
        let json = serde_json::to_string(input).map_err(|e| input_error("encoding", e))?;
        if json.len() > MAX_INPUT_BYTES {
            return Err(SagaError::InputTooLarge {
                definition: name.to_string(),
                bytes: json.len(),
                limit: MAX_INPUT_BYTES,
            });
        }
        let logged: I = serde_json::from_str(&json).map_err(|e| input_error("decoding", e))?;
        let inner = &definition.inner;
        let saga = self.core.start(name, inner.steps.len(), inner.deadline, json)?;
        let _claim = self.core.claim(saga)?;
        tracing::info!(%saga, definition = name, "saga started");
        run::drive(&self.core, inner, saga, Arc::new(logged))
    }

    /// Drives every unfinished (running or compensating) saga whose
    /// definition is registered to its end, oldest first, on this thread;
    /// returns their final states. Sagas whose definition is not registered,
    /// or is registered with another step count, are left as they are (and
    /// logged); stuck sagas wait for [`SagaExecutor::retry_stuck`].
    pub fn resume(&self) -> Result<Vec<SagaInfo>, SagaError> {
        let mut pending: Vec<Row> = {
            let table = self.core.table.lock();
            table.rows.values().filter(|r| matches!(r.phase, Phase::Forward | Phase::Compensating)).cloned().collect()
        };
        pending.sort_by_key(|r| r.id);
        let mut resumed = Vec::with_capacity(pending.len());
        for row in pending {
            let Some(definition) = self.core.definitions.lock().get(&row.definition).cloned() else {
                tracing::warn!(saga = %row.id, definition = %row.definition, "unfinished saga's definition is not registered; left as is");
                continue;
            };
            let Ok(_claim) = self.core.claim(row.id) else { continue };
            match self.drive_row(&*definition, &row) {
                Ok(info) => resumed.push(info),
                Err(e @ (SagaError::DefinitionMismatch { .. } | SagaError::Input { .. })) => {
                    tracing::warn!(error = %e, code = e.code(), "saga not resumed");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(resumed)
    }

    fn drive_row(&self, definition: &dyn ErasedDefinition, row: &Row) -> Result<SagaInfo, SagaError> {
        if definition.step_count() != row.steps.len() {
            return Err(SagaError::DefinitionMismatch {
                saga: row.id,
                definition: row.definition.clone(),
                logged_steps: row.steps.len(),
                registered_steps: definition.step_count(),
            });
        }
        bump(&self.core.counters.resumed);
        tracing::info!(saga = %row.id, definition = %row.definition, "resuming saga");
        definition.drive_logged(&self.core, row)
    }

    /// Runs the compensations of a stuck saga again (after an operator fixed
    /// what made them fail), from where they stopped.
    pub fn retry_stuck(&self, saga: TxId) -> Result<SagaInfo, SagaError> {
        self.retry_stuck_because(saga, "")
    }

    /// [`retry_stuck`](Self::retry_stuck), with the operator's reason
    /// recorded in the log (`dtc retry-now --dir D --tx ID --reason R`
    /// reaches a running executor through its directory).
    pub fn retry_stuck_because(&self, saga: TxId, reason: &str) -> Result<SagaInfo, SagaError> {
        let row = self.core.row(saga)?;
        let state = info_of(&row, None).state;
        if state != SagaState::Stuck {
            return Err(SagaError::NotStuck { saga, state });
        }
        let Some(definition) = self.core.definitions.lock().get(&row.definition).cloned() else {
            return Err(SagaError::NotRegistered { saga, definition: row.definition });
        };
        let _claim = self.core.claim(saga)?;
        let reason = clip(reason.to_string());
        tracing::warn!(%saga, %reason, "operator retries a stuck saga");
        self.core.record(Rec::StuckRetried { saga, reason }, None)?;
        let row = self.core.row(saga)?;
        self.drive_row(&*definition, &row)
    }

    /// Every saga the executor knows (unfinished ones, stuck ones, and the
    /// most recent finished ones), oldest first.
    pub fn sagas(&self) -> Vec<SagaInfo> {
        let mut rows: Vec<Row> = self.core.table.lock().rows.values().cloned().collect();
        rows.sort_by_key(|r| r.id);
        let definitions = self.core.definitions.lock();
        rows.iter().map(|row| info_of(row, definitions.get(&row.definition).map(|d| &**d))).collect()
    }

    /// One saga, if known.
    pub fn saga(&self, saga: TxId) -> Option<SagaInfo> {
        self.core.info(saga).ok()
    }

    /// Counters since opening, and current gauges.
    pub fn metrics(&self) -> SagaMetrics {
        let c = &self.core.counters;
        let (open, stuck) = {
            let table = self.core.table.lock();
            (table.open() as u64, table.stuck() as u64)
        };
        SagaMetrics {
            started: read(&c.started),
            resumed: read(&c.resumed),
            completed: read(&c.completed),
            compensated: read(&c.compensated),
            stuck_events: read(&c.stuck_events),
            stuck,
            open,
            step_attempts: read(&c.step_attempts),
            step_retries: read(&c.step_retries),
            timeouts: read(&c.timeouts),
            panics: read(&c.panics),
            step_failures: read(&c.step_failures),
            deadlines_exceeded: read(&c.deadlines_exceeded),
            compensation_attempts: read(&c.compensation_attempts),
            compensation_retries: read(&c.compensation_retries),
        }
    }
}

/// An unfinished saga as an operator's row (`None` once finished).
pub(crate) fn unfinished_row(saga: SagaInfo) -> Option<crate::operator::UnfinishedTx> {
    use crate::operator::{ParticipantState, TxKind, TxState};
    let state = match saga.state {
        SagaState::Running => TxState::Committing,
        SagaState::Compensating => TxState::RollingBack,
        SagaState::Stuck => TxState::Stuck,
        _ => return None,
    };
    let compensated_from = saga.completed_steps.len().saturating_sub(saga.compensated_steps);
    let participants = saga
        .completed_steps
        .iter()
        .enumerate()
        .map(|(i, name)| ParticipantState {
            name: name.clone(),
            branch: None,
            phase: if i >= compensated_from { "compensated" } else { "completed" }.into(),
            attempts: 0,
            next_retry_in_ms: None,
            last_error: None,
        })
        .collect();
    Some(crate::operator::UnfinishedTx {
        tx: saga.id,
        kind: TxKind::Saga,
        state,
        age_seconds: crate::operator::age_seconds(saga.id),
        participants,
        reason: saga.failure,
    })
}

/// Serves the control channel of a saga directory (see `durable::control`)
/// until the executor is dropped. The executor is held only while a request
/// is being answered, so dropping it releases the directory at once.
fn spawn_control(core: std::sync::Weak<Core>, dir: PathBuf) {
    let spawned = std::thread::Builder::new().name("dtc-saga-control".into()).spawn(move || {
        loop {
            std::thread::sleep(control::POLL_EVERY);
            if core.strong_count() == 0 {
                return;
            }
            if !control::has_requests(&dir) {
                continue;
            }
            let Some(core) = core.upgrade() else { return };
            let executor = SagaExecutor { core };
            control::serve(&dir, |request| executor.handle_control(request));
        }
    });
    if let Err(error) = spawned {
        tracing::error!(%error, "saga control thread not started: dtc txs/retry-now cannot reach this executor");
    }
}
