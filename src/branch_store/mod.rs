//! A durable record of a participant service's branches: the helper that
//! makes a correct participant (in process or behind HTTP) easy to write.
//!
//! A participant must answer every phase idempotently, keyed by (transaction,
//! branch, phase), and must remember its answers across restarts: a
//! duplicate prepare gets the same prepared value, a prepare after its
//! rollback is refused ("hanging" prevention), a rollback before any prepare
//! succeeds and is remembered ("null compensation"), and so on (the full
//! table is in docs/participant-protocol.md). [`BranchStore`] keeps those
//! records in dtc's own write-ahead log:
//!
//! - Each transition is one log record, appended under the branch's shard
//!   lock together with the in-memory change, so the log order of one
//!   branch's records is the order of its transitions and a checkpoint (which
//!   takes every shard lock) sees a consistent cut.
//! - Every answer is returned only once the record it reports is durable:
//!   the wait is group commit (`Wal::wait_durable`), outside every lock, so
//!   concurrent callers share syncs.
//! - A business closure (reserve, apply, undo) runs outside the shard lock
//!   while the branch is marked busy; other calls on the same branch wait for
//!   it, calls on other branches do not. A closure that panics or fails
//!   leaves the branch as it was.
//! - When the log has grown by `checkpoint_every_bytes` since the last
//!   checkpoint, the caller that notices writes a snapshot of every
//!   remembered branch and the log recycles the segments below it, so the
//!   directory stays within `max_segments` segment files plus one checkpoint.
//! - Finished branches (committed, rolled back, refused) are remembered for
//!   `finished_horizon` and at most `max_finished` of them; prepared ones are
//!   never dropped. When a finished branch is forgotten, the store raises a
//!   watermark, `forgotten_below_ns`, past the timestamp of its transaction id
//!   (dtc ids start with a clock, see [`TxId`](crate::TxId); the watermark
//!   never passes the store's own clock); a prepare of an
//!   unknown branch whose transaction is older than the watermark is answered
//!   [`PrepareVerdict::Expired`] instead of reserving anything, because it may
//!   be a late duplicate of a forgotten one. A commit of a forgotten branch
//!   is [`CommitVerdict::Unknown`] (the coordinator parks it for an
//!   operator), a rollback of one [`RollbackVerdict::NothingPrepared`]
//!   (nothing recorded, no undo called).

mod codec;
mod participant;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::hash::{BuildHasher, Hash};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::participant::{BranchId, Failure, Refusal};
use crate::saga::{Clock, SystemClock};
use crate::sync::{Condvar, Mutex, MutexGuard};
use crate::wal::{FsStorage, Lsn, Storage, Wal, WalConfig, WalError};

pub use participant::{RecordingParticipant, StoredParticipant};

/// Largest prepared value by default (the wire protocol's bound).
pub const MAX_PREPARED_BYTES: usize = 64 << 10;

/// Name of the lock file that keeps a second process out of a store's
/// directory.
const LOCK_FILE: &str = "LOCK";

/// Number of independently locked parts of the branch table.
const SHARDS: usize = 32;

/// Forgotten branches removed per operation beyond the one its own finish
/// may push out, so pruning work stays bounded per call.
const PRUNE_PER_CALL: usize = 8;

/// What the store remembers of one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Prepared, holding the value its prepare returned.
    Prepared(Vec<u8>),
    Committed {
        at_ns: u64,
    },
    /// Rolled back; `had_prepare` is false for a rollback that came first.
    RolledBack {
        at_ns: u64,
        had_prepare: bool,
    },
    /// The prepare was refused with this reason (a "no" vote, remembered so
    /// that a duplicate gets the same answer and never reserves).
    Refused {
        at_ns: u64,
        code: String,
        message: String,
    },
}

impl Stored {
    fn finished_at(&self) -> Option<u64> {
        match self {
            Stored::Prepared(_) => None,
            Stored::Committed { at_ns } | Stored::RolledBack { at_ns, .. } | Stored::Refused { at_ns, .. } => {
                Some(*at_ns)
            }
        }
    }

    fn public(&self) -> BranchState {
        match self {
            Stored::Prepared(_) => BranchState::Prepared,
            Stored::Committed { .. } => BranchState::Committed,
            Stored::RolledBack { .. } => BranchState::RolledBack,
            Stored::Refused { .. } => BranchState::Refused,
        }
    }
}

/// Where a branch stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BranchState {
    /// Prepared and not yet decided: what [`BranchStore::prepared`] lists.
    Prepared,
    /// Committed.
    Committed,
    /// Rolled back (after a prepare, or before any).
    RolledBack,
    /// Its prepare was refused; it holds nothing.
    Refused,
}

impl BranchState {
    /// The state's name on the wire: `prepared`, `committed`, `rolled_back`
    /// or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Prepared => "prepared",
            BranchState::Committed => "committed",
            BranchState::RolledBack => "rolled_back",
            BranchState::Refused => "refused",
        }
    }
}

impl fmt::Display for BranchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which branches [`BranchStore::branches`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BranchFilter {
    /// Prepared, undecided branches.
    Prepared,
    /// Committed branches still remembered.
    Committed,
    /// Rolled-back branches still remembered.
    RolledBack,
    /// Every remembered branch, refused ones included.
    All,
}

impl BranchFilter {
    fn admits(self, state: BranchState) -> bool {
        match self {
            BranchFilter::Prepared => state == BranchState::Prepared,
            BranchFilter::Committed => state == BranchState::Committed,
            BranchFilter::RolledBack => state == BranchState::RolledBack,
            BranchFilter::All => true,
        }
    }
}

impl std::str::FromStr for BranchFilter {
    type Err = String;
    /// `prepared`, `committed`, `rolled_back` or `all`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prepared" => Ok(BranchFilter::Prepared),
            "committed" => Ok(BranchFilter::Committed),
            "rolled_back" => Ok(BranchFilter::RolledBack),
            "all" => Ok(BranchFilter::All),
            other => Err(format!("unknown branch filter {other:?} (prepared, committed, rolled_back or all)")),
        }
    }
}

/// One remembered branch, as [`BranchStore::branches`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchInfo {
    /// The branch.
    pub branch: BranchId,
    /// Its state.
    pub state: BranchState,
    /// The prepared value, for a prepared branch.
    pub prepared: Option<Vec<u8>>,
}

/// The answer to [`BranchStore::prepare`]. Every answer is durable when it is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrepareVerdict {
    /// The business check ran, said yes, and the branch is now durably
    /// prepared with this value.
    Prepared(Vec<u8>),
    /// A duplicate: the branch was already prepared with this value (the
    /// business check did not run again).
    AlreadyPrepared(Vec<u8>),
    /// The business check said no (now or in an earlier call, which this one
    /// duplicates): nothing is held. Its code and message as recorded.
    Refused(Refusal),
    /// The branch was rolled back before this prepare arrived: refused,
    /// nothing reserved (the business check did not run).
    AlreadyRolledBack,
    /// The branch was prepared and committed already: a stale duplicate.
    AlreadyCommitted,
    /// The branch is unknown and its transaction is older than branches the
    /// store has forgotten: it may be a late duplicate of one of them, so it
    /// is refused without running the business check.
    Expired,
}

/// The answer to [`BranchStore::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitVerdict {
    /// The apply closure ran and the commit is durably recorded.
    Committed,
    /// A duplicate: already committed (apply did not run again).
    AlreadyCommitted,
    /// The store never saw this branch prepared (never prepared, refused, or
    /// forgotten): it cannot commit it.
    Unknown,
    /// The branch was rolled back: it cannot be committed.
    AlreadyRolledBack,
}

/// The answer to [`BranchStore::rollback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackVerdict {
    /// The undo closure ran on the prepared value and the rollback is
    /// durably recorded.
    RolledBack,
    /// A duplicate: already rolled back.
    AlreadyRolledBack,
    /// Nothing was prepared (the branch is unknown, or its prepare was
    /// refused). For an unknown branch the undo closure ran with `None` and
    /// the rollback is durably recorded, so a late prepare is refused; a
    /// refused branch already refuses it; for an expired one (see
    /// [`PrepareVerdict::Expired`]) nothing ran and nothing was recorded.
    NothingPrepared,
    /// The branch was committed: it cannot be rolled back.
    AlreadyCommitted,
}

/// Why a store call failed. After an `Err` the branch is as it was before
/// the call (a closure's own side effects aside); the call may be repeated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another store in this one) holds the directory.
    #[error("branch store directory {dir} is in use by another process")]
    InUse {
        /// The directory.
        dir: String,
    },
    /// A file operation outside the log failed (creating the directory,
    /// taking its lock).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The log failed. With `failed` set, a sync or write failed and the
    /// store acknowledges nothing more until it is reopened (fail-stop);
    /// otherwise the error concerns this call only (the log is full and a
    /// checkpoint is due, or a file could not be created).
    #[error("branch store log: {reason}")]
    Log {
        /// The log's error.
        reason: String,
        /// True when the log is now failed for good.
        failed: bool,
    },
    /// Recovery found a record or snapshot it cannot read.
    #[error("branch store is corrupt: {reason}")]
    Corrupt {
        /// What is wrong.
        reason: String,
    },
    /// The reserve closure returned a prepared value larger than the limit;
    /// nothing was recorded.
    #[error("prepared value of {bytes} bytes, the limit is {limit}")]
    PreparedTooLarge {
        /// Its size.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The apply or undo closure failed; nothing was recorded and the branch
    /// is still prepared (or still unknown).
    #[error("the service failed: {0}")]
    Service(Failure),
    /// The options cannot be used.
    #[error("invalid branch store options: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    fn log(error: WalError) -> StoreError {
        let failed = matches!(error, WalError::Failed { .. });
        match error {
            WalError::Corrupt { .. } => StoreError::Corrupt { reason: error.to_string() },
            other => StoreError::Log { reason: other.to_string(), failed },
        }
    }

    /// A stable machine-readable code: `in_use`, `io`, `log_failed`, `log`,
    /// `corrupt`, `prepared_too_large`, `service_failed` or `config`.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::InUse { .. } => "in_use",
            StoreError::Io { .. } => "io",
            StoreError::Log { failed: true, .. } => "log_failed",
            StoreError::Log { failed: false, .. } => "log",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::PreparedTooLarge { .. } => "prepared_too_large",
            StoreError::Service(_) => "service_failed",
            StoreError::Config { .. } => "config",
        }
    }
}

/// How a [`BranchStore`] is opened. Start from `BranchStoreOptions::default()`.
#[derive(Clone)]
pub struct BranchStoreOptions {
    finished_horizon: Duration,
    max_finished: usize,
    checkpoint_every_bytes: u64,
    segment_size_bytes: u64,
    max_prepared_bytes: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for BranchStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BranchStoreOptions")
            .field("finished_horizon", &self.finished_horizon)
            .field("max_finished", &self.max_finished)
            .field("checkpoint_every_bytes", &self.checkpoint_every_bytes)
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("max_prepared_bytes", &self.max_prepared_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for BranchStoreOptions {
    /// Finished branches kept 24 hours and at most 100 000 of them; a
    /// checkpoint every MiB of log; 1 MiB segments; prepared values up to
    /// [`MAX_PREPARED_BYTES`]; the system clock.
    fn default() -> Self {
        BranchStoreOptions {
            finished_horizon: Duration::from_secs(24 * 3600),
            max_finished: 100_000,
            checkpoint_every_bytes: 1 << 20,
            segment_size_bytes: 1 << 20,
            max_prepared_bytes: MAX_PREPARED_BYTES,
            clock: Arc::new(SystemClock),
        }
    }
}

impl BranchStoreOptions {
    /// How long a finished branch is remembered for duplicate detection.
    pub fn finished_horizon(mut self, horizon: Duration) -> Self {
        self.finished_horizon = horizon;
        self
    }

    /// How many finished branches are remembered at most (the oldest go
    /// first). At least 1.
    pub fn max_finished(mut self, count: usize) -> Self {
        self.max_finished = count;
        self
    }

    /// Log growth after which a checkpoint is written (at least 4 KiB).
    pub fn checkpoint_every_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_every_bytes = bytes;
        self
    }

    /// Size of each log segment file: a multiple of 4096, at least four
    /// times the largest record (a prepared value plus 64 bytes).
    pub fn segment_size_bytes(mut self, bytes: u64) -> Self {
        self.segment_size_bytes = bytes;
        self
    }

    /// Largest prepared value accepted (at most 16 MiB).
    pub fn max_prepared_bytes(mut self, bytes: usize) -> Self {
        self.max_prepared_bytes = bytes;
        self
    }

    /// The clock that stamps finished branches (tests pass a
    /// [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Opens (or creates) the store in `dir` and recovers it. One process at
    /// a time: a second open of the same directory is [`StoreError::InUse`].
    pub fn open(self, dir: impl AsRef<Path>) -> Result<BranchStore, StoreError> {
        let dir = dir.as_ref();
        let shown = dir.display().to_string();
        let storage = FsStorage::new(dir).map_err(|source| StoreError::Io {
            op: "creating directory",
            path: shown.clone(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let mut store = self.open_storage(Arc::new(storage))?;
        store.dir_lock = Some(lock);
        Ok(store)
    }

    /// Opens the store in any log storage (tests use `MemStorage`).
    #[doc(hidden)]
    pub fn open_storage(self, storage: Arc<dyn Storage>) -> Result<BranchStore, StoreError> {
        let config = self.wal_config()?;
        let (wal, recovery) = Wal::open(storage, config).map_err(StoreError::log)?;
        let mut forgotten_below_ns = 0;
        let mut table: HashMap<BranchId, Stored> = HashMap::new();
        let checkpoint_lsn = recovery.checkpoint.as_ref().map_or(Lsn(0), |(lsn, _)| *lsn);
        if let Some((_, bytes)) = &recovery.checkpoint {
            let snapshot = codec::decode_snapshot(bytes)
                .map_err(|reason| StoreError::Corrupt { reason: format!("checkpoint snapshot: {reason}") })?;
            forgotten_below_ns = snapshot.forgotten_through_ns;
            table.extend(snapshot.entries);
        }
        for record in &recovery.records {
            let (branch, state) = codec::decode_record(record.kind, &record.payload).map_err(|reason| {
                StoreError::Corrupt { reason: format!("record at {} (kind {}): {reason}", record.lsn, record.kind) }
            })?;
            table.insert(branch, state);
        }
        let store = BranchStore::from_table(self, wal, table, forgotten_below_ns, checkpoint_lsn);
        store.prune(usize::MAX);
        if !recovery.records.is_empty() {
            // Bounds the next recovery to what is written from now on.
            store.checkpoint()?;
        }
        Ok(store)
    }

    fn wal_config(&self) -> Result<WalConfig, StoreError> {
        let bad = |reason: String| Err(StoreError::Config { reason });
        if self.max_finished == 0 {
            return bad("max_finished must be at least 1".into());
        }
        if self.max_prepared_bytes > 16 << 20 {
            return bad("max_prepared_bytes must be at most 16 MiB".into());
        }
        if self.checkpoint_every_bytes < 4096 {
            return bad("checkpoint_every_bytes must be at least 4096".into());
        }
        let largest_record = self.max_prepared_bytes as u64 + 64;
        if self.segment_size_bytes / 4 < largest_record {
            return bad(format!(
                "segment_size_bytes {} is less than four times the largest record ({largest_record} bytes)",
                self.segment_size_bytes
            ));
        }
        // Room for the log to grow twice the checkpoint distance while a
        // checkpoint is written, plus the segment being filled.
        let segments_per_checkpoint = self.checkpoint_every_bytes.div_ceil(self.segment_size_bytes);
        let max_segments = (2 + 2 * segments_per_checkpoint).clamp(4, 1 << 16) as usize;
        let config = WalConfig {
            segment_size_bytes: self.segment_size_bytes,
            max_segments,
            preallocate_next: true,
            ..WalConfig::default()
        };
        Ok(config)
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io { op: "opening lock file", path: path.display().to_string(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { dir: dir.display().to_string() }),
        Err(std::fs::TryLockError::Error(source)) => {
            Err(StoreError::Io { op: "locking", path: path.display().to_string(), source })
        }
    }
}

/// One branch in the table.
struct Slot {
    /// What is recorded; `None` only while a first prepare is in flight.
    state: Option<Stored>,
    /// The record that established `state` (0 for recovered state): an
    /// answer reporting `state` waits until it is durable.
    lsn: Lsn,
    /// A closure runs on this branch: other calls on it wait.
    busy: bool,
}

struct Shard {
    table: Mutex<HashMap<BranchId, Slot>>,
    /// Notified whenever a slot stops being busy.
    idle: Condvar,
}

/// A durable, concurrent record of one participant service's branches: see
/// the [module docs](self) for how it works and
/// docs/participant-protocol.md for the rules it implements.
///
/// `Send + Sync`: share it as `Arc<BranchStore>` between request threads.
/// A closure given to a call must not call the store for the same branch
/// (it would wait for itself).
///
/// ```
/// use dtc::{BranchId, BranchStore, CommitVerdict, PrepareVerdict, Refusal, RollbackVerdict, TxId};
///
/// let dir = tempfile::tempdir().unwrap();
/// let branch = BranchId { tx: TxId::from_u128(7 << 64), index: 0 };
/// {
///     let store = BranchStore::open(dir.path()).unwrap();
///     // The business check runs once; its value is durable before the answer.
///     let verdict = store.prepare(branch, || Ok::<_, Refusal>(br#"{"seat":"12A"}"#.to_vec())).unwrap();
///     assert_eq!(verdict, PrepareVerdict::Prepared(br#"{"seat":"12A"}"#.to_vec()));
///     let again = store.prepare(branch, || unreachable!("a duplicate does not reserve again")).unwrap();
///     assert_eq!(again, PrepareVerdict::AlreadyPrepared(br#"{"seat":"12A"}"#.to_vec()));
/// }
/// // After a restart the prepared branch is still there, for recover().
/// let store = BranchStore::open(dir.path()).unwrap();
/// assert_eq!(store.prepared(), vec![(branch, br#"{"seat":"12A"}"#.to_vec())]);
/// let committed = store.commit(branch, |_seat| Ok(())).unwrap();
/// assert_eq!(committed, CommitVerdict::Committed);
/// // A rollback of a committed branch is refused; one of an unknown branch is
/// // remembered, so that its late prepare is refused.
/// assert_eq!(store.rollback(branch, |_| Ok(())).unwrap(), RollbackVerdict::AlreadyCommitted);
/// let other = BranchId { index: 1, ..branch };
/// assert_eq!(store.rollback(other, |_| Ok(())).unwrap(), RollbackVerdict::NothingPrepared);
/// assert_eq!(store.prepare(other, || unreachable!()).unwrap(), PrepareVerdict::AlreadyRolledBack);
/// ```
pub struct BranchStore {
    wal: Wal,
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    /// Finished branches in the order they finished, for forgetting.
    finished: Mutex<VecDeque<(u64, BranchId)>>,
    /// Prepares of unknown branches with a transaction timestamp below this
    /// are `Expired`. Raised (AcqRel) before a forgotten branch leaves its
    /// shard, so a snapshot taken under the shard locks that lacks the
    /// branch has the raised value.
    forgotten_below_ns: AtomicU64,
    /// Position of the newest checkpoint; the mutex serializes checkpoints.
    checkpoint: Mutex<Lsn>,
    /// The same position, for the cheap "is one due?" check (Relaxed: a
    /// stale read only delays or repeats a check).
    checkpoint_hint: AtomicU64,
    options: BranchStoreOptions,
    dir_lock: Option<File>,
}

impl fmt::Debug for BranchStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BranchStore").field("options", &self.options).field("log", &self.wal).finish_non_exhaustive()
    }
}

/// Marks a branch busy; if dropped before `finish` (the closure failed or
/// panicked) it puts the branch back as it was and wakes its waiters.
struct Busy<'a> {
    store: &'a BranchStore,
    branch: BranchId,
    done: bool,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shard = self.store.shard(self.branch);
        let mut table = shard.table.lock();
        let remove = match table.get_mut(&self.branch) {
            Some(slot) => {
                slot.busy = false;
                slot.state.is_none()
            }
            None => false,
        };
        if remove {
            table.remove(&self.branch);
        }
        drop(table);
        shard.idle.notify_all();
    }
}

impl<'a> Busy<'a> {
    /// Records the transition to `state` (append under the shard lock, so
    /// log order is transition order) and returns its position.
    fn finish(mut self, state: Stored) -> Result<Lsn, StoreError> {
        let store = self.store;
        let shard = store.shard(self.branch);
        let (kind, payload) = codec::encode_record(self.branch, &state);
        let mut table = shard.table.lock();
        let lsn = store.wal.append(kind, &payload).map_err(StoreError::log)?;
        let finished = state.finished_at();
        // A busy slot stays in its shard until it is finished or dropped.
        let slot = table.entry(self.branch).or_insert(Slot { state: None, lsn, busy: true });
        slot.state = Some(state);
        slot.lsn = lsn;
        slot.busy = false;
        self.done = true;
        drop(table);
        shard.idle.notify_all();
        if let Some(at_ns) = finished {
            store.finished.lock().push_back((at_ns, self.branch));
        }
        Ok(lsn)
    }
}

impl BranchStore {
    /// Opens (or creates) a store in `dir` with default options and recovers
    /// it; see [`BranchStoreOptions`].
    pub fn open(dir: impl AsRef<Path>) -> Result<BranchStore, StoreError> {
        BranchStoreOptions::default().open(dir)
    }

    fn from_table(
        options: BranchStoreOptions,
        wal: Wal,
        table: HashMap<BranchId, Stored>,
        forgotten_below_ns: u64,
        checkpoint_lsn: Lsn,
    ) -> BranchStore {
        let shards: Box<[Shard]> =
            (0..SHARDS).map(|_| Shard { table: Mutex::new(HashMap::new()), idle: Condvar::new() }).collect();
        let store = BranchStore {
            wal,
            shards,
            hasher: std::collections::hash_map::RandomState::new(),
            finished: Mutex::new(VecDeque::new()),
            forgotten_below_ns: AtomicU64::new(forgotten_below_ns),
            checkpoint: Mutex::new(checkpoint_lsn),
            checkpoint_hint: AtomicU64::new(checkpoint_lsn.0),
            options,
            dir_lock: None,
        };
        let mut finished: Vec<(u64, BranchId)> = Vec::new();
        for (branch, state) in table {
            if let Some(at_ns) = state.finished_at() {
                finished.push((at_ns, branch));
            }
            let slot = Slot { state: Some(state), lsn: Lsn(0), busy: false };
            store.shard(branch).table.lock().insert(branch, slot);
        }
        finished.sort_unstable();
        *store.finished.lock() = finished.into();
        store
    }

    fn shard(&self, branch: BranchId) -> &Shard {
        let hash = self.hasher.hash_one(branch) as usize;
        &self.shards[hash % SHARDS]
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.options.clock.now().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The shard's table with `branch` not busy.
    fn idle_table(&self, branch: BranchId) -> MutexGuard<'_, HashMap<BranchId, Slot>> {
        let shard = self.shard(branch);
        let mut table = shard.table.lock();
        while table.get(&branch).is_some_and(|slot| slot.busy) {
            table = shard.idle.wait(table);
        }
        table
    }

    /// Marks `branch` busy in `table` (inserting it with no state if absent).
    fn mark_busy<'a>(&'a self, table: &mut HashMap<BranchId, Slot>, branch: BranchId) -> Busy<'a> {
        table.entry(branch).or_insert(Slot { state: None, lsn: Lsn(0), busy: false }).busy = true;
        Busy { store: self, branch, done: false }
    }

    fn durable(&self, lsn: Lsn) -> Result<(), StoreError> {
        self.wal.wait_durable(lsn).map_err(StoreError::log)
    }

    fn is_expired(&self, branch: BranchId) -> bool {
        // Acquire: pairs with the AcqRel raise in `prune`.
        branch.tx.timestamp_ns() < self.forgotten_below_ns.load(Ordering::Acquire)
    }

    /// Prepares `branch`: for a branch the store has not seen, runs
    /// `reserve` (the business check, which must not make anything final)
    /// and durably records its value, or its refusal, before answering. A
    /// known branch gets the answer its record gives, without `reserve`.
    ///
    /// If this returns `Err`, nothing was recorded: whatever `reserve` did
    /// must be undone by the service itself (the coordinator's later
    /// rollback arrives as [`rollback`](Self::rollback) of an unknown branch,
    /// whose undo gets `None`).
    pub fn prepare(
        &self,
        branch: BranchId,
        reserve: impl FnOnce() -> Result<Vec<u8>, Refusal>,
    ) -> Result<PrepareVerdict, StoreError> {
        let mut table = self.idle_table(branch);
        // An idle slot always has a state (a stateless one is busy or gone).
        if let Some(Slot { state: Some(state), lsn, .. }) = table.get(&branch) {
            let lsn = *lsn;
            let verdict = match state {
                Stored::Prepared(value) => PrepareVerdict::AlreadyPrepared(value.clone()),
                Stored::Committed { .. } => PrepareVerdict::AlreadyCommitted,
                Stored::RolledBack { .. } => PrepareVerdict::AlreadyRolledBack,
                Stored::Refused { code, message, .. } => PrepareVerdict::Refused(Refusal::new(code, message)),
            };
            drop(table);
            self.durable(lsn)?;
            return Ok(verdict);
        }
        if self.is_expired(branch) {
            return Ok(PrepareVerdict::Expired);
        }
        let busy = self.mark_busy(&mut table, branch);
        drop(table);
        let (state, verdict) = match reserve() {
            Ok(value) if value.len() > self.options.max_prepared_bytes => {
                return Err(StoreError::PreparedTooLarge {
                    bytes: value.len(),
                    limit: self.options.max_prepared_bytes,
                });
            }
            Ok(value) => (Stored::Prepared(value.clone()), PrepareVerdict::Prepared(value)),
            Err(refusal) => {
                let (code, message) = refusal_parts(&refusal);
                let (code, message) = (codec::cut(&code).to_owned(), codec::cut(&message).to_owned());
                let verdict = PrepareVerdict::Refused(Refusal::new(&code, &message));
                (Stored::Refused { at_ns: self.now_ns(), code, message }, verdict)
            }
        };
        self.record(busy, state)?;
        Ok(verdict)
    }

    /// Commits `branch`: for a prepared branch runs `apply` with its prepared
    /// value, then durably records the commit before answering.
    ///
    /// `apply` runs again if the process crashes before the commit record is
    /// durable (the branch is then still prepared after the restart, and the
    /// coordinator commits it again): its effect must be idempotent, or kept
    /// in state that is rebuilt from this store. If `apply` fails, nothing is
    /// recorded and the error is [`StoreError::Service`].
    pub fn commit(
        &self,
        branch: BranchId,
        apply: impl FnOnce(&[u8]) -> Result<(), Failure>,
    ) -> Result<CommitVerdict, StoreError> {
        let mut table = self.idle_table(branch);
        let (verdict, lsn) = match table.get(&branch) {
            None => return Ok(CommitVerdict::Unknown),
            Some(Slot { state: Some(Stored::Prepared(value)), .. }) => {
                let value = value.clone();
                let busy = self.mark_busy(&mut table, branch);
                drop(table);
                apply(&value).map_err(StoreError::Service)?;
                self.record(busy, Stored::Committed { at_ns: self.now_ns() })?;
                return Ok(CommitVerdict::Committed);
            }
            Some(slot) => match &slot.state {
                Some(Stored::Committed { .. }) => (CommitVerdict::AlreadyCommitted, slot.lsn),
                Some(Stored::RolledBack { .. }) => (CommitVerdict::AlreadyRolledBack, slot.lsn),
                _ => (CommitVerdict::Unknown, slot.lsn),
            },
        };
        drop(table);
        self.durable(lsn)?;
        Ok(verdict)
    }

    /// Rolls `branch` back: for a prepared branch runs `undo` with its value;
    /// for an unknown one runs `undo(None)` (undo whatever a prepare that
    /// crashed before its record may have done; usually nothing) and records
    /// the rollback, so that a late prepare is refused. Durable before it
    /// answers. If `undo` fails, nothing is recorded
    /// ([`StoreError::Service`]).
    pub fn rollback(
        &self,
        branch: BranchId,
        undo: impl FnOnce(Option<&[u8]>) -> Result<(), Failure>,
    ) -> Result<RollbackVerdict, StoreError> {
        let mut table = self.idle_table(branch);
        let (verdict, lsn) = match table.get(&branch) {
            None if self.is_expired(branch) => return Ok(RollbackVerdict::NothingPrepared),
            None => {
                let busy = self.mark_busy(&mut table, branch);
                drop(table);
                undo(None).map_err(StoreError::Service)?;
                self.record(busy, Stored::RolledBack { at_ns: self.now_ns(), had_prepare: false })?;
                return Ok(RollbackVerdict::NothingPrepared);
            }
            Some(Slot { state: Some(Stored::Prepared(value)), .. }) => {
                let value = value.clone();
                let busy = self.mark_busy(&mut table, branch);
                drop(table);
                undo(Some(&value)).map_err(StoreError::Service)?;
                self.record(busy, Stored::RolledBack { at_ns: self.now_ns(), had_prepare: true })?;
                return Ok(RollbackVerdict::RolledBack);
            }
            Some(slot) => match &slot.state {
                Some(Stored::Committed { .. }) => (RollbackVerdict::AlreadyCommitted, slot.lsn),
                Some(Stored::Refused { .. }) => (RollbackVerdict::NothingPrepared, slot.lsn),
                _ => (RollbackVerdict::AlreadyRolledBack, slot.lsn),
            },
        };
        drop(table);
        self.durable(lsn)?;
        Ok(verdict)
    }

    /// Records a busy branch's transition, waits until it is durable, then
    /// does the housekeeping it may have made due.
    fn record(&self, busy: Busy<'_>, state: Stored) -> Result<(), StoreError> {
        let lsn = busy.finish(state)?;
        self.durable(lsn)?;
        self.prune(PRUNE_PER_CALL);
        self.maybe_checkpoint();
        Ok(())
    }

    /// Every prepared, undecided branch with its prepared value, in branch
    /// order: what a [`Participant::recover`](crate::Participant::recover)
    /// lists after a restart.
    pub fn prepared(&self) -> Vec<(BranchId, Vec<u8>)> {
        let mut out: Vec<(BranchId, Vec<u8>)> = Vec::new();
        for shard in self.shards.iter() {
            let table = shard.table.lock();
            for (branch, slot) in table.iter() {
                if let Some(Stored::Prepared(value)) = &slot.state {
                    out.push((*branch, value.clone()));
                }
            }
        }
        out.sort_unstable_by_key(|(branch, _)| *branch);
        out
    }

    /// Where `branch` stands (`None`: never seen, or forgotten). A call in
    /// flight on it shows the state before that call.
    pub fn state(&self, branch: BranchId) -> Option<BranchState> {
        let table = self.shard(branch).table.lock();
        table.get(&branch).and_then(|slot| slot.state.as_ref()).map(Stored::public)
    }

    /// The remembered branches that pass `filter`, in branch order.
    pub fn branches(&self, filter: BranchFilter) -> Vec<BranchInfo> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let table = shard.table.lock();
            for (branch, slot) in table.iter() {
                let Some(state) = &slot.state else { continue };
                if filter.admits(state.public()) {
                    let prepared = match state {
                        Stored::Prepared(value) => Some(value.clone()),
                        _ => None,
                    };
                    out.push(BranchInfo { branch: *branch, state: state.public(), prepared });
                }
            }
        }
        out.sort_unstable_by_key(|info| info.branch);
        out
    }

    /// Prepares of unknown branches whose transaction timestamp (see
    /// [`TxId::timestamp_ns`](crate::TxId::timestamp_ns)) is below this are
    /// [`PrepareVerdict::Expired`]; 0 while nothing has been forgotten.
    pub fn forgotten_below_ns(&self) -> u64 {
        self.forgotten_below_ns.load(Ordering::Acquire)
    }

    /// Forgets up to `limit` finished branches beyond the count bound or
    /// older than the horizon (and always those beyond the count bound).
    fn prune(&self, limit: usize) {
        let horizon_ns = u64::try_from(self.options.finished_horizon.as_nanos()).unwrap_or(u64::MAX);
        let now_ns = self.now_ns();
        let mut removed = 0usize;
        loop {
            let next = {
                let mut finished = self.finished.lock();
                let over_count = finished.len() > self.options.max_finished;
                match finished.front() {
                    Some(&(at_ns, _))
                        if over_count || (removed < limit && at_ns.saturating_add(horizon_ns) <= now_ns) =>
                    {
                        finished.pop_front()
                    }
                    _ => None,
                }
            };
            let Some((at_ns, branch)) = next else { return };
            removed += 1;
            // Raise the watermark before the branch leaves its shard (see
            // the field's comment). Never past now: one future-dated id
            // must not expire every prepare to come.
            let below = branch.tx.timestamp_ns().saturating_add(1).min(now_ns);
            self.forgotten_below_ns.fetch_max(below, Ordering::AcqRel);
            let mut table = self.shard(branch).table.lock();
            let forget = table
                .get(&branch)
                .is_some_and(|slot| !slot.busy && slot.state.as_ref().and_then(Stored::finished_at) == Some(at_ns));
            if forget {
                table.remove(&branch);
            }
        }
    }

    fn maybe_checkpoint(&self) {
        // Relaxed: see the field.
        let since = self.wal.end_lsn().0.saturating_sub(self.checkpoint_hint.load(Ordering::Relaxed));
        if since < self.options.checkpoint_every_bytes {
            return;
        }
        // Another caller is writing one: it covers us.
        let Some(mut newest) = self.checkpoint.try_lock() else { return };
        if let Err(error) = self.checkpoint_locked(&mut newest) {
            // The call that got here is durable already; a failed checkpoint
            // only delays recycling (and is retried by the next call).
            tracing::warn!(%error, "branch store checkpoint failed");
        }
    }

    /// Writes a checkpoint of every remembered branch now and lets the log
    /// recycle the segments below it. Called by the store itself as the log
    /// grows; call it before a planned shutdown to make the next open fast.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_locked(&mut self.checkpoint.lock())
    }

    /// `checkpoint` with the checkpoint mutex held (`newest` is its value).
    fn checkpoint_locked(&self, newest: &mut Lsn) -> Result<(), StoreError> {
        let (lsn, snapshot) = {
            let tables: Vec<_> = self.shards.iter().map(|shard| shard.table.lock()).collect();
            // Every append happens under a shard lock, so with all of them
            // held the end of the log is a consistent cut of the table.
            let lsn = self.wal.end_lsn();
            let forgotten_below_ns = self.forgotten_below_ns.load(Ordering::Acquire);
            let entries: Vec<(BranchId, &Stored)> = tables
                .iter()
                .flat_map(|table| table.iter().filter_map(|(branch, slot)| slot.state.as_ref().map(|s| (*branch, s))))
                .collect();
            (lsn, codec::encode_snapshot(forgotten_below_ns, entries.into_iter()))
        };
        if lsn == *newest && lsn.0 != 0 {
            // Nothing appended since: the newest checkpoint says it all
            // (branches forgotten since are forgotten again on replay).
            return Ok(());
        }
        self.wal.checkpoint(lsn, &snapshot).map_err(StoreError::log)?;
        *newest = lsn;
        // Relaxed: see the field.
        self.checkpoint_hint.store(lsn.0, Ordering::Relaxed);
        Ok(())
    }

    /// Counters for metrics and tests. Counts every shard (32 short locks).
    pub fn stats(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        for shard in self.shards.iter() {
            let table = shard.table.lock();
            for slot in table.values() {
                match slot.state {
                    Some(Stored::Prepared(_)) => stats.prepared += 1,
                    Some(_) => stats.finished += 1,
                    None => {}
                }
            }
        }
        let log = self.wal.stats();
        stats.log_syncs = log.syncs;
        stats.log_records = log.records;
        stats.log_segments_live = log.segments_live;
        stats.checkpoints = log.checkpoints;
        stats
    }
}

/// What [`BranchStore::stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Branches prepared and undecided now.
    pub prepared: u64,
    /// Finished branches remembered now.
    pub finished: u64,
    /// Syncs of the log since open (group commit shares one among callers).
    pub log_syncs: u64,
    /// Records appended since open.
    pub log_records: u64,
    /// Segment files holding live log now.
    pub log_segments_live: u64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
}

/// The code and message a refusal is recorded with.
fn refusal_parts(refusal: &Refusal) -> (String, String) {
    let code = match refusal {
        Refusal::InsufficientFunds { .. } => "insufficient_funds",
        Refusal::UnknownAccount { .. } => "unknown_account",
        Refusal::Overflow { .. } => "overflow",
        Refusal::Other { code, message } => return (code.clone(), message.clone()),
    };
    (code.to_owned(), refusal.to_string())
}
