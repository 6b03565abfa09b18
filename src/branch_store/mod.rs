//! The durable branch store; its public face and documentation are `dtc::store` (in lib.rs).

mod codec;
mod error;
mod options;
mod participant;
#[cfg(test)]
mod tests;
mod verdict;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::participant::{BranchId, Failure, Refusal};
use crate::sync::{Condvar, Mutex, MutexGuard};
use crate::wal::{Lsn, Wal};

pub use error::StoreError;
pub use options::BranchStoreOptions;
pub use participant::{RecordingParticipant, StoredParticipant};
pub use verdict::{BranchFilter, BranchInfo, BranchState, CommitVerdict, PrepareVerdict, RollbackVerdict};

/// Largest prepared value by default (the wire protocol's bound).
pub const MAX_PREPARED_BYTES: usize = 64 << 10;

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
/// the [module docs](crate::store) for how it works and
/// docs/participant-protocol.md for the rules it implements.
///
/// `Send + Sync`: share it as `Arc<BranchStore>` between request threads.
/// A closure given to a call must not call the store for the same branch
/// (it would wait for itself).
///
/// ```
/// use dtc::{BranchId, Refusal, TxId, store::{BranchStore, CommitVerdict, PrepareVerdict, RollbackVerdict}};
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
        if !self.options.sync {
            return Ok(());
        }
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
        Refusal::Other { code, message } | Refusal::Unknown { code, message } => {
            return (code.clone(), message.clone());
        }
    };
    (code.to_owned(), refusal.to_string())
}
