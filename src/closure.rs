//! Closure participants: two-phase commit over ad-hoc, per-transaction
//! participants, each given as three closures.
//!
//! A [`ClosureTx`] collects participants, each a name, an input and
//! `prepare(key, &input) -> Result<O, E>`, `commit(key, &O)` and
//! `rollback(key, Option<&O>)`. Committing runs every prepare concurrently,
//! each on its own thread under its timeout; if all succeed, every commit
//! runs concurrently with the prepare's output; otherwise (an error, a
//! timeout, a panic) every participant is rolled back. Commits and rollbacks
//! are retried with exponential backoff and full jitter until they succeed,
//! up to the retry policy's attempts, after which the failure is returned
//! ([`ClosureError::CommitIncomplete`], [`ClosureError::RollbackIncomplete`]).
//!
//! Every call gets an [`IdempotencyKey`] (`<tx>/<participant>/<phase>`),
//! the same for every retry of that call: a closure may be called more than
//! once and must make that have one effect. A rollback may also come for a
//! participant whose prepare never ran or has not finished: it must then do
//! nothing, and remember the key so a late prepare has no lasting effect.
//! (The engine helps: a prepare that answers after its timeout is rolled
//! back again, with its output, on its own thread.)

use std::any::Any;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::retry::{Jitter, RetryPolicy};
use crate::saga::call::{CallError, PendingCall, call_inline, spawn_call};
use crate::saga::{Clock, IdempotencyKey, JitterSource, SystemClock};
use crate::sync::{AtomicUsize, Ordering};
// std, not the shim: `STATS` is a const-initialised static (loom atomics are
// not const) holding statistics that no loom model observes.
use crate::txn::{TxId, TxIdGen};
use std::sync::atomic::AtomicU64;

/// Most participants in one closure transaction.
pub const MAX_CLOSURE_PARTICIPANTS: usize = 64;
/// Default timeout of one prepare call.
pub const DEFAULT_PREPARE_TIMEOUT: Duration = Duration::from_secs(5);

static IDS: LazyLock<TxIdGen> = LazyLock::new(|| TxIdGen::new(rand::random()));
/// Prepare threads alive, over all closure transactions of the process.
static IN_FLIGHT: LazyLock<Arc<AtomicUsize>> = LazyLock::new(|| Arc::new(AtomicUsize::new(0)));
static STATS: Stats = Stats {
    prepares_timed_out: AtomicU64::new(0),
    late_rollbacks: AtomicU64::new(0),
    late_rollback_failures: AtomicU64::new(0),
};

struct Stats {
    prepares_timed_out: AtomicU64,
    late_rollbacks: AtomicU64,
    late_rollback_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    // Relaxed: statistics; nothing is published through them.
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Process-wide counters of closure transactions' background work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClosureStats {
    /// Prepares that did not answer within their timeout.
    pub prepares_timed_out: u64,
    /// Prepares that answered after their timeout and were rolled back on
    /// their own thread.
    pub late_rollbacks: u64,
    /// Of those, rollbacks that still failed after every retry (also logged
    /// as errors).
    pub late_rollback_failures: u64,
}

/// Reads the process-wide counters.
pub fn closure_stats() -> ClosureStats {
    // Relaxed: see `bump`.
    ClosureStats {
        prepares_timed_out: STATS.prepares_timed_out.load(Ordering::Relaxed),
        late_rollbacks: STATS.late_rollbacks.load(Ordering::Relaxed),
        late_rollback_failures: STATS.late_rollback_failures.load(Ordering::Relaxed),
    }
}

type Output = Box<dyn Any + Send>;

/// The three closures of one participant, with their types erased.
trait Calls: Send + Sync {
    fn prepare(&self, key: &IdempotencyKey) -> Result<Output, String>;
    fn commit(&self, key: &IdempotencyKey, output: &(dyn Any + Send)) -> Result<(), String>;
    fn rollback(&self, key: &IdempotencyKey, output: Option<&(dyn Any + Send)>) -> Result<(), String>;
}

struct Typed<In, Out, E, P, C, R> {
    input: In,
    prepare: P,
    commit: C,
    rollback: R,
    _types: PhantomData<fn() -> (Out, E)>,
}

impl<In, Out, E, P, C, R> Calls for Typed<In, Out, E, P, C, R>
where
    In: Send + Sync + 'static,
    Out: Send + 'static,
    E: fmt::Display + 'static,
    P: Fn(&IdempotencyKey, &In) -> Result<Out, E> + Send + Sync + 'static,
    C: Fn(&IdempotencyKey, &Out) -> Result<(), E> + Send + Sync + 'static,
    R: Fn(&IdempotencyKey, Option<&Out>) -> Result<(), E> + Send + Sync + 'static,
{
    fn prepare(&self, key: &IdempotencyKey) -> Result<Output, String> {
        (self.prepare)(key, &self.input).map(|out| Box::new(out) as Output).map_err(|e| e.to_string())
    }
    fn commit(&self, key: &IdempotencyKey, output: &(dyn Any + Send)) -> Result<(), String> {
        let output = output.downcast_ref::<Out>().ok_or("prepare output of another type")?;
        (self.commit)(key, output).map_err(|e| e.to_string())
    }
    fn rollback(&self, key: &IdempotencyKey, output: Option<&(dyn Any + Send)>) -> Result<(), String> {
        (self.rollback)(key, output.and_then(|o| o.downcast_ref::<Out>())).map_err(|e| e.to_string())
    }
}

/// One participant of a [`ClosureTx`]: a name and three closures.
pub struct ClosureParticipant {
    name: String,
    timeout: Option<Duration>,
    calls: Arc<dyn Calls>,
}

impl fmt::Debug for ClosureParticipant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClosureParticipant").field("name", &self.name).field("timeout", &self.timeout).finish()
    }
}

impl ClosureParticipant {
    /// A participant named `name` (unique in its transaction, no `/`).
    ///
    /// - `prepare(key, &input)` checks and reserves, returning what commit
    ///   needs. It must not make the change final.
    /// - `commit(key, &output)` makes it final.
    /// - `rollback(key, output)` drops the reservation; `output` is `None`
    ///   when prepare failed, timed out or panicked.
    pub fn new<In, Out, E, P, C, R>(name: impl Into<String>, input: In, prepare: P, commit: C, rollback: R) -> Self
    where
        In: Send + Sync + 'static,
        Out: Send + 'static,
        E: fmt::Display + 'static,
        P: Fn(&IdempotencyKey, &In) -> Result<Out, E> + Send + Sync + 'static,
        C: Fn(&IdempotencyKey, &Out) -> Result<(), E> + Send + Sync + 'static,
        R: Fn(&IdempotencyKey, Option<&Out>) -> Result<(), E> + Send + Sync + 'static,
    {
        let calls = Typed { input, prepare, commit, rollback, _types: PhantomData };
        Self { name: name.into(), timeout: None, calls: Arc::new(calls) }
    }

    /// How long its prepare may take (default: the transaction's).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why a closure transaction was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackCause {
    /// A prepare returned an error (or could not be started).
    PrepareFailed {
        /// The participant.
        participant: String,
        /// Its error.
        message: String,
    },
    /// A prepare did not answer within its timeout.
    PrepareTimedOut {
        /// The participant.
        participant: String,
        /// The timeout.
        timeout: Duration,
    },
    /// A prepare panicked.
    PreparePanicked {
        /// The participant.
        participant: String,
        /// The panic message.
        message: String,
    },
}

impl RollbackCause {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            RollbackCause::PrepareFailed { .. } => "prepare_failed",
            RollbackCause::PrepareTimedOut { .. } => "prepare_timed_out",
            RollbackCause::PreparePanicked { .. } => "prepare_panicked",
        }
    }

    /// The participant concerned.
    pub fn participant(&self) -> &str {
        match self {
            RollbackCause::PrepareFailed { participant, .. }
            | RollbackCause::PrepareTimedOut { participant, .. }
            | RollbackCause::PreparePanicked { participant, .. } => participant,
        }
    }
}

impl fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackCause::PrepareFailed { participant, message } => write!(f, "{participant} refused: {message}"),
            RollbackCause::PrepareTimedOut { participant, timeout } => {
                write!(f, "{participant} did not prepare within {timeout:?}")
            }
            RollbackCause::PreparePanicked { participant, message } => {
                write!(f, "{participant} panicked while preparing: {message}")
            }
        }
    }
}

/// How a closure transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClosureOutcome {
    /// Every participant prepared and committed.
    Committed,
    /// Every participant was rolled back, for this reason.
    RolledBack(RollbackCause),
}

/// Errors of closure transactions. Each variant has a stable code
/// ([`ClosureError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClosureError {
    /// A participant's name is empty, too long or contains `/`.
    #[error("transaction {tx}: participant name {participant:?} is invalid: {why}")]
    InvalidName {
        /// The transaction.
        tx: TxId,
        /// The name given.
        participant: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Two participants have the same name.
    #[error("transaction {tx}: participant {participant:?} added twice")]
    DuplicateParticipant {
        /// The transaction.
        tx: TxId,
        /// The name.
        participant: String,
    },
    /// More than [`MAX_CLOSURE_PARTICIPANTS`] participants.
    #[error("transaction {tx}: more than {limit} participants")]
    TooManyParticipants {
        /// The transaction.
        tx: TxId,
        /// The limit.
        limit: usize,
    },
    /// The decision was commit, but a participant's commit still failed
    /// after every retry. The other participants committed; this one must
    /// be repaired (its commit is idempotent under `key`).
    #[error("transaction {tx}: commit of {participant:?} still failing after {attempts} attempts: {cause}")]
    CommitIncomplete {
        /// The transaction.
        tx: TxId,
        /// The participant.
        participant: String,
        /// Calls made.
        attempts: u32,
        /// The last failure.
        cause: String,
        /// The idempotency key of the commit.
        key: String,
    },
    /// The decision was rollback, but a participant's rollback still failed
    /// after every retry; it may still hold what it prepared.
    #[error("transaction {tx}: rollback of {participant:?} still failing after {attempts} attempts: {cause}")]
    RollbackIncomplete {
        /// The transaction.
        tx: TxId,
        /// The participant.
        participant: String,
        /// Calls made.
        attempts: u32,
        /// The last failure.
        cause: String,
        /// The idempotency key of the rollback.
        key: String,
    },
}

impl ClosureError {
    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ClosureError::InvalidName { .. } => "invalid_name",
            ClosureError::DuplicateParticipant { .. } => "duplicate_participant",
            ClosureError::TooManyParticipants { .. } => "too_many_participants",
            ClosureError::CommitIncomplete { .. } => "commit_incomplete",
            ClosureError::RollbackIncomplete { .. } => "rollback_incomplete",
        }
    }
}

#[derive(Clone)]
struct Settings {
    prepare_timeout: Duration,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    seed: u64,
}

/// A transaction over closure participants.
///
/// ```
/// use dtc::{closure::{ClosureOutcome, ClosureParticipant, ClosureTx}};
/// use std::sync::{Arc, Mutex};
///
/// let stock = Arc::new(Mutex::new(5u32));
/// let (s1, s2) = (stock.clone(), stock.clone());
/// let mut tx = ClosureTx::new();
/// tx.add(ClosureParticipant::new(
///     "inventory",
///     2u32,
///     // prepare: check and reserve; the output goes to commit
///     |_key, &wanted| if wanted <= 5 { Ok(wanted) } else { Err("sold out") },
///     move |_key, &reserved| { *s1.lock().unwrap() -= reserved; Ok(()) },
///     |_key, _reserved| Ok(()),
/// ))
/// .unwrap();
/// tx.add(ClosureParticipant::new(
///     "payment",
///     30u64,
///     |key, &cents| Ok::<_, String>(format!("auth-{}-{cents}", key.as_str().len())),
///     |_key, auth: &String| { assert!(auth.starts_with("auth-")); Ok(()) },
///     |_key, _auth| Ok(()),
/// ))
/// .unwrap();
/// assert_eq!(tx.commit().unwrap(), ClosureOutcome::Committed);
/// assert_eq!(*s2.lock().unwrap(), 3);
/// ```
pub struct ClosureTx {
    id: TxId,
    participants: Vec<ClosureParticipant>,
    settings: Settings,
}

impl fmt::Debug for ClosureTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClosureTx").field("id", &self.id).field("participants", &self.participants).finish()
    }
}

impl Default for ClosureTx {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`ClosureTx::prepare`] ended with.
#[derive(Debug)]
#[must_use = "a prepared transaction is rolled back when dropped"]
pub enum PrepareResult {
    /// Every participant prepared; commit or roll back.
    Prepared(PreparedClosureTx),
    /// A prepare failed; every participant has been rolled back.
    RolledBack(RollbackCause),
}

impl ClosureTx {
    /// An empty transaction with a fresh id.
    pub fn new() -> Self {
        Self::with_id(IDS.next())
    }

    /// An empty transaction with a caller-chosen id (the idempotency keys
    /// derive from it: reuse an id to redeliver the same transaction).
    pub fn with_id(id: TxId) -> Self {
        let settings = Settings {
            prepare_timeout: DEFAULT_PREPARE_TIMEOUT,
            retry: RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(200), 20).with_jitter(Jitter::Full),
            clock: Arc::new(SystemClock),
            seed: id.as_u128() as u64,
        };
        Self { id, participants: Vec::new(), settings }
    }

    /// The id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// Timeout of each prepare without its own (default 5 s).
    pub fn prepare_timeout(mut self, timeout: Duration) -> Self {
        self.settings.prepare_timeout = timeout;
        self
    }

    /// Retry policy of commits and rollbacks (default: 1 ms doubling to
    /// 200 ms, full jitter, 20 calls). A closure's failure is a message
    /// without a code, so the policy's `non_retryable` codes do not apply.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = policy;
        self
    }

    /// The clock backoff sleeps on (default: [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.settings.clock = clock;
        self
    }

    /// Seed of the jitter generator (default: derived from the id).
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = seed;
        self
    }

    /// Adds a participant.
    pub fn add(&mut self, participant: ClosureParticipant) -> Result<&mut Self, ClosureError> {
        let tx = self.id;
        let name = &participant.name;
        let why = if name.is_empty() {
            Some("empty")
        } else if name.len() > 128 {
            Some("longer than 128 bytes")
        } else if name.contains('/') {
            Some("contains '/' (the idempotency key separator)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ClosureError::InvalidName { tx, participant: name.clone(), why });
        }
        if self.participants.iter().any(|p| p.name == *name) {
            return Err(ClosureError::DuplicateParticipant { tx, participant: name.clone() });
        }
        if self.participants.len() >= MAX_CLOSURE_PARTICIPANTS {
            return Err(ClosureError::TooManyParticipants { tx, limit: MAX_CLOSURE_PARTICIPANTS });
        }
        self.participants.push(participant);
        Ok(self)
    }

    /// Prepares every participant, then commits them all, or rolls them all
    /// back if any prepare fails, times out or panics.
    pub fn commit(self) -> Result<ClosureOutcome, ClosureError> {
        match self.prepare()? {
            PrepareResult::Prepared(prepared) => prepared.commit().map(|()| ClosureOutcome::Committed),
            PrepareResult::RolledBack(cause) => Ok(ClosureOutcome::RolledBack(cause)),
        }
    }

    /// Abandons the transaction before anything was prepared: no closure
    /// runs.
    pub fn rollback(self) {
        tracing::debug!(tx = %self.id, "closure transaction dropped before prepare");
    }

    /// Runs every prepare concurrently, each on its own thread, and waits for
    /// each until its timeout. On success the outputs can be read and the
    /// transaction committed or rolled back; otherwise every participant has
    /// been rolled back.
    pub fn prepare(self) -> Result<PrepareResult, ClosureError> {
        let ClosureTx { id, participants, settings } = self;
        let started = Instant::now();
        let pending: Vec<Result<PendingCall<Result<Output, String>>, CallError>> =
            participants.iter().map(|p| start_prepare(id, p, &settings)).collect();
        let mut outputs = Vec::with_capacity(participants.len());
        let mut cause = None;
        for (participant, call) in participants.iter().zip(pending) {
            let timeout = participant.timeout.unwrap_or(settings.prepare_timeout);
            let result = call.and_then(|call| call.wait_until(started + timeout));
            let failure = match result {
                Ok(Ok(output)) => {
                    outputs.push(Some(output));
                    continue;
                }
                Ok(Err(message)) | Err(CallError::Overloaded(message)) => {
                    RollbackCause::PrepareFailed { participant: participant.name.clone(), message }
                }
                Err(CallError::TimedOut) => {
                    bump(&STATS.prepares_timed_out);
                    RollbackCause::PrepareTimedOut { participant: participant.name.clone(), timeout }
                }
                Err(CallError::Panicked(message)) => {
                    RollbackCause::PreparePanicked { participant: participant.name.clone(), message }
                }
            };
            tracing::warn!(tx = %id, participant = %participant.name, cause = %failure, "closure prepare failed");
            outputs.push(None);
            cause.get_or_insert(failure);
        }
        let mut entries: Vec<(ClosureParticipant, Option<Output>)> = participants.into_iter().zip(outputs).collect();
        match cause {
            None => Ok(PrepareResult::Prepared(PreparedClosureTx { id, entries, settings, finished: false })),
            Some(cause) => {
                roll_back_all(id, &mut entries, &settings)?;
                tracing::info!(tx = %id, %cause, "closure transaction rolled back");
                Ok(PrepareResult::RolledBack(cause))
            }
        }
    }
}

/// Starts one prepare on its own thread; a prepare that answers after its
/// caller stopped waiting is rolled back on that thread.
fn start_prepare(
    id: TxId,
    participant: &ClosureParticipant,
    settings: &Settings,
) -> Result<PendingCall<Result<Output, String>>, CallError> {
    let key = IdempotencyKey::new(id, &participant.name, "prepare");
    let calls = Arc::clone(&participant.calls);
    let late_calls = Arc::clone(&participant.calls);
    let (name, late_settings) = (participant.name.clone(), settings.clone());
    spawn_call(
        format!("dtc-prepare-{}", participant.name),
        &IN_FLIGHT,
        move || calls.prepare(&key),
        move |result| {
            if let Ok(output) = result {
                roll_back_late(id, &name, &*late_calls, output, &late_settings);
            }
        },
    )
}

fn roll_back_late(id: TxId, name: &str, calls: &dyn Calls, output: Output, settings: &Settings) {
    bump(&STATS.late_rollbacks);
    tracing::warn!(tx = %id, participant = name, "prepare answered after its timeout; rolling it back");
    let key = IdempotencyKey::new(id, name, "rollback");
    let jitter = JitterSource::new(settings.seed);
    let result = with_retry(&settings.retry, &*settings.clock, &jitter, || calls.rollback(&key, Some(&*output)));
    if let Err((attempts, cause)) = result {
        bump(&STATS.late_rollback_failures);
        tracing::error!(tx = %id, participant = name, attempts, %cause, "rollback of a late prepare failed for good");
    }
}

/// Calls `call` until it succeeds (a panic counts as a failure), at most
/// `policy.attempts()` times with the policy's backoff in between.
fn with_retry(
    policy: &RetryPolicy,
    clock: &dyn Clock,
    jitter: &JitterSource,
    mut call: impl FnMut() -> Result<(), String>,
) -> Result<(), (u32, String)> {
    let mut last = String::new();
    for attempt in 1..=policy.attempts() {
        if attempt > 1 {
            clock.sleep(jitter.before_call(policy, attempt));
        }
        match call_inline(&mut call) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(message)) => last = message,
            Err(CallError::Panicked(message)) => last = format!("panicked: {message}"),
            Err(other) => last = format!("{other:?}"),
        }
    }
    Err((policy.attempts(), last))
}

#[derive(Clone, Copy)]
enum Phase {
    Commit,
    Rollback,
}

/// Runs `phase` for every entry concurrently (one scoped thread each),
/// each retried; the first participant (in order) that still fails.
fn finish_all(
    id: TxId,
    entries: &mut [(ClosureParticipant, Option<Output>)],
    settings: &Settings,
    phase: Phase,
) -> Result<(), ClosureError> {
    let jitter = JitterSource::new(settings.seed);
    let one = |participant: &ClosureParticipant, output: &mut Option<Output>| {
        let label = match phase {
            Phase::Commit => "commit",
            Phase::Rollback => "rollback",
        };
        let key = IdempotencyKey::new(id, &participant.name, label);
        let calls = &*participant.calls;
        let result = with_retry(&settings.retry, &*settings.clock, &jitter, || match (phase, output.as_deref()) {
            (Phase::Commit, Some(output)) => calls.commit(&key, output),
            (Phase::Commit, None) => Err("no prepare output to commit".into()),
            (Phase::Rollback, output) => calls.rollback(&key, output),
        });
        result.map_err(|(attempts, cause)| {
            tracing::error!(tx = %id, participant = %participant.name, attempts, %cause, "closure {label} failed for good");
            let (tx, participant, key) = (id, participant.name.clone(), key.to_string());
            match phase {
                Phase::Commit => ClosureError::CommitIncomplete { tx, participant, attempts, cause, key },
                Phase::Rollback => ClosureError::RollbackIncomplete { tx, participant, attempts, cause, key },
            }
        })
    };
    let one = &one;
    let mut results: Vec<(usize, Result<(), ClosureError>)> = Vec::with_capacity(entries.len());
    let mut unstarted = Vec::new();
    std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(entries.len());
        for (index, (participant, output)) in entries.iter_mut().enumerate() {
            let participant = &*participant;
            let spawned = std::thread::Builder::new()
                .name(format!("dtc-closure-{}", participant.name))
                .spawn_scoped(scope, move || one(participant, output));
            match spawned {
                Ok(handle) => handles.push((index, handle)),
                Err(_) => unstarted.push(index),
            }
        }
        for (index, handle) in handles {
            let result = handle.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload));
            results.push((index, result));
        }
    });
    // No thread to be had for these: run them here.
    for index in unstarted {
        let (participant, output) = &mut entries[index];
        results.push((index, one(participant, output)));
    }
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().try_for_each(|(_, result)| result)
}

fn roll_back_all(
    id: TxId,
    entries: &mut [(ClosureParticipant, Option<Output>)],
    settings: &Settings,
) -> Result<(), ClosureError> {
    finish_all(id, entries, settings, Phase::Rollback)
}

/// A transaction whose participants all prepared. Commit it or roll it
/// back; dropping it rolls it back.
#[must_use = "a prepared transaction is rolled back when dropped"]
pub struct PreparedClosureTx {
    id: TxId,
    entries: Vec<(ClosureParticipant, Option<Output>)>,
    settings: Settings,
    finished: bool,
}

impl fmt::Debug for PreparedClosureTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|(p, _)| p.name.as_str()).collect();
        f.debug_struct("PreparedClosureTx").field("id", &self.id).field("participants", &names).finish()
    }
}

impl PreparedClosureTx {
    /// The id.
    pub fn id(&self) -> TxId {
        self.id
    }

    /// What `participant`'s prepare returned, if it has type `O`.
    pub fn output<O: 'static>(&self, participant: &str) -> Option<&O> {
        let (_, output) = self.entries.iter().find(|(p, _)| p.name == participant)?;
        output.as_ref()?.downcast_ref::<O>()
    }

    /// Commits every participant concurrently, each retried until it
    /// succeeds or its attempts run out.
    pub fn commit(mut self) -> Result<(), ClosureError> {
        self.finished = true;
        let result = finish_all(self.id, &mut self.entries, &self.settings, Phase::Commit);
        if result.is_ok() {
            tracing::info!(tx = %self.id, "closure transaction committed");
        }
        result
    }

    /// Rolls every participant back (their outputs are passed along).
    pub fn rollback(mut self) -> Result<(), ClosureError> {
        self.finished = true;
        roll_back_all(self.id, &mut self.entries, &self.settings)
    }
}

impl Drop for PreparedClosureTx {
    fn drop(&mut self) {
        if !self.finished
            && let Err(error) = roll_back_all(self.id, &mut self.entries, &self.settings)
        {
            tracing::error!(%error, code = error.code(), "rollback of a dropped prepared transaction failed");
        }
    }
}
