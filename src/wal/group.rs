//! Completion tracking and group commit: the part of the log that decides
//! when a position is durable. Uses only `crate::sync`, so the loom model in
//! `tests/loom_wal.rs` checks exactly this code.
//!
//! Positions are bytes of the log. Writers own disjoint reserved ranges,
//! copy their bytes, then call [`GroupCommit::complete`]. `completed` is the
//! end of the longest prefix whose ranges are all complete; out-of-order
//! completions wait in `pending` until the gap before them closes.
//!
//! A waiter whose position no started sync covers becomes a sync leader: it
//! takes the completed prefix, registers its sync, syncs with no lock held,
//! and on completion publishes the watermark and wakes everyone. Up to
//! `max_in_flight` syncs run at once (the next group's sync starts while one
//! is in flight), but the watermark only moves in registration order: a
//! sync's end is published once it and every sync registered before it
//! completed. A failed sync marks the log failed for good.

use std::collections::{BTreeMap, VecDeque};

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, thread};

/// Leader election and the durable watermark, guarded by one mutex so that a
/// waiter's check-then-sleep cannot miss a leader's notify.
#[derive(Debug)]
struct LeaderState {
    /// A leader was elected and has not registered its sync yet (it is
    /// gathering, writing the marker, taking the prefix). At most one, so
    /// registered syncs take strictly growing prefixes.
    preparing: bool,
    /// Registered syncs in registration order: (end position, completed
    /// successfully). At most `max_in_flight` entries.
    syncs: VecDeque<(u64, bool)>,
    /// Sequence number of `syncs.front()`; a sync's number is its key.
    front_seq: u64,
    /// End of the newest registered sync (`durable` if none is in flight):
    /// bytes below it are covered by a sync that was started.
    started_to: u64,
    /// Mirror of `GroupCommit::durable` under the lock.
    durable: u64,
    /// Highest position any waiter went to sleep for. Positions only grow,
    /// and a waiter above `durable` is still asleep (or about to wake), so a
    /// newly registered sync ending at `to` needs to wake waiters only when
    /// this exceeds `to`: everyone else is covered and waits for the
    /// publication anyway. Saves a wake-up of the whole group per sync.
    highest_waiter: u64,
    /// When the oldest sync in flight started (registration order).
    oldest_started_at: VecDeque<std::time::Instant>,
    /// Kind of the first storage error; set once, never cleared.
    failure: Option<std::io::ErrorKind>,
}

/// Most syncs in flight at once (`WalConfig::syncs_in_flight` is checked
/// against it).
pub const MAX_SYNCS_IN_FLIGHT: usize = 4;

/// Why a wait ended without reaching its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed(pub std::io::ErrorKind);

#[derive(Debug)]
pub struct GroupCommit {
    /// End of the contiguous completed prefix.
    completed: AtomicU64,
    /// Completed ranges (start -> end) that are not yet contiguous with the
    /// prefix. Holds at most one entry per reservation completed while an
    /// earlier one is still being copied.
    pending: Mutex<BTreeMap<u64, u64>>,
    /// Number of entries in `pending`, readable without the lock.
    pending_count: AtomicUsize,
    /// Everything below is durable.
    durable: AtomicU64,
    /// Fast-path copy of `LeaderState::failure.is_some()`.
    failed: AtomicBool,
    leader: Mutex<LeaderState>,
    wakeup: Condvar,
    /// Threads inside `wait_durable` now (the leader included).
    waiting: AtomicUsize,
    /// Recent peak of `waiting` at a sync's start: how many writers the
    /// workload keeps busy. Decays when load drops.
    peak: AtomicUsize,
    /// Longest a leader waits for more writers to join its group; zero
    /// disables gathering (the loom models run without it).
    gather_limit: std::time::Duration,
    /// Moving average of recent sync times, in nanoseconds (leaders write
    /// it): gathering never waits more than half of it.
    sync_ns: AtomicU64,
    /// Syncs allowed in flight at once (1: one sync at a time).
    max_in_flight: usize,
    /// False only in the deliberately broken loom variant, which publishes a
    /// sync's end as soon as it completes, ahead of earlier syncs.
    publish_in_order: bool,
}

impl GroupCommit {
    /// A log whose bytes below `start` are complete and durable.
    pub fn new(start: u64) -> Self {
        GroupCommit {
            completed: AtomicU64::new(start),
            pending: Mutex::new(BTreeMap::new()),
            pending_count: AtomicUsize::new(0),
            durable: AtomicU64::new(start),
            failed: AtomicBool::new(false),
            leader: Mutex::new(LeaderState {
                preparing: false,
                syncs: VecDeque::new(),
                front_seq: 0,
                started_to: start,
                durable: start,
                highest_waiter: start,
                oldest_started_at: VecDeque::new(),
                failure: None,
            }),
            wakeup: Condvar::new(),
            waiting: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            gather_limit: std::time::Duration::ZERO,
            sync_ns: AtomicU64::new(0),
            max_in_flight: 1,
            publish_in_order: true,
        }
    }

    /// Lets up to `syncs` syncs run at once (clamped to
    /// 1..=`MAX_SYNCS_IN_FLIGHT`).
    pub fn with_syncs_in_flight(mut self, syncs: usize) -> Self {
        self.max_in_flight = syncs.clamp(1, MAX_SYNCS_IN_FLIGHT);
        self
    }

    /// The deliberately broken variant for the loom models: a completed
    /// sync publishes its end at once, even while an earlier sync (covering
    /// the bytes below it) is still in flight.
    #[cfg(loom)]
    pub fn with_out_of_order_publication(mut self) -> Self {
        self.publish_in_order = false;
        self
    }

    /// A leader waits up to `limit` for more writers to join its sync (see
    /// `gather`).
    pub fn with_gather(mut self, limit: std::time::Duration) -> Self {
        self.gather_limit = limit;
        self
    }

    /// Publishes that the bytes of the reservation `[start, end)` are written.
    /// Each reservation is completed exactly once.
    pub fn complete(&self, start: u64, end: u64) {
        debug_assert!(start < end, "empty reservation {start}..{end}");
        // SeqCst: with the SeqCst `pending_count` increment and SeqCst reads
        // below this forms a Dekker pair: either this thread sees the
        // successor's pending entry, or the successor sees our new prefix.
        // It also releases our copied bytes to whoever reads `completed`.
        if self.completed.compare_exchange(start, end, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            // SeqCst: the other half of the Dekker pair above.
            if self.pending_count.load(Ordering::SeqCst) > 0 {
                self.drain();
            }
            return;
        }
        {
            let mut pending = self.pending.lock();
            let previous = pending.insert(start, end);
            debug_assert!(previous.is_none(), "range {start} completed twice");
            // SeqCst: Dekker pair with the prefix CAS above (see there).
            self.pending_count.fetch_add(1, Ordering::SeqCst);
        }
        // Our predecessor may have reached `start` after our failed CAS.
        self.drain();
    }

    /// Moves pending ranges that now touch the prefix into it.
    fn drain(&self) {
        let mut pending = self.pending.lock();
        loop {
            // SeqCst: Dekker pair with `complete`; also acquires the bytes of
            // the range that ended at this prefix.
            let prefix = self.completed.load(Ordering::SeqCst);
            let Some(end) = pending.remove(&prefix) else {
                return;
            };
            // SeqCst: see `complete`. Relaxed would do for the decrement
            // itself, but a stale high count only costs an extra drain.
            self.pending_count.fetch_sub(1, Ordering::SeqCst);
            // Only the owner of the range starting at `prefix` may move the
            // prefix from there, and that range is ours (it was pending), so
            // this CAS cannot fail.
            let moved = self.completed.compare_exchange(prefix, end, Ordering::SeqCst, Ordering::SeqCst);
            debug_assert!(moved.is_ok(), "prefix moved under a pending range");
        }
    }

    /// End of the contiguous completed prefix (merging pending ranges first).
    pub fn completed(&self) -> u64 {
        if self.pending_count.load(Ordering::SeqCst) > 0 {
            self.drain();
        }
        // SeqCst (Acquire would do): the caller reads the bytes below.
        self.completed.load(Ordering::SeqCst)
    }

    /// Everything below this is durable.
    pub fn durable(&self) -> u64 {
        // Acquire: pairs with the leader's Release store after its sync.
        self.durable.load(Ordering::Acquire)
    }

    pub fn failure(&self) -> Option<Failed> {
        // Acquire: pairs with the Release in `fail`; the kind is then read
        // under the lock, which orders everything else.
        if self.failed.load(Ordering::Acquire) {
            let state = self.leader.lock();
            return Some(Failed(state.failure.unwrap_or(std::io::ErrorKind::Other)));
        }
        None
    }

    /// Marks the log failed (a sync or a reserved write failed) and wakes all.
    pub fn fail(&self, kind: std::io::ErrorKind) {
        let mut state = self.leader.lock();
        if state.failure.is_none() {
            state.failure = Some(kind);
        }
        // Release: a thread that sees the flag then locks to read the kind.
        self.failed.store(true, Ordering::Release);
        drop(state);
        self.wakeup.notify_all();
    }

    /// Returns once every byte below `position` is durable, leading syncs
    /// when no other thread is. `position` must not exceed what has been
    /// reserved, or this never returns.
    ///
    /// `before_sync(durable)` runs on the leader before it takes the prefix
    /// (the log writes its sync marker there); `sync(from, to)` makes
    /// `[from, to)` durable and runs with no lock held.
    pub fn wait_durable(
        &self,
        position: u64,
        mut before_sync: impl FnMut(u64),
        mut sync: impl FnMut(u64, u64) -> std::io::Result<()>,
    ) -> Result<(), WaitError> {
        if self.durable() >= position {
            return Ok(());
        }
        // Relaxed: heuristic counts (see `gather`).
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(waiting, Ordering::Relaxed);
        let result = self.wait_counted(position, &mut before_sync, &mut sync);
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        result
    }

    fn wait_counted(
        &self,
        position: u64,
        before_sync: &mut impl FnMut(u64),
        sync: &mut impl FnMut(u64, u64) -> std::io::Result<()>,
    ) -> Result<(), WaitError> {
        loop {
            if self.durable() >= position {
                return Ok(());
            }
            let from = {
                let mut state = self.leader.lock();
                loop {
                    if let Some(kind) = state.failure {
                        return Err(WaitError::Failed(Failed(kind)));
                    }
                    if state.durable >= position {
                        return Ok(());
                    }
                    // Lead when no started sync covers `position` and there
                    // is room for another sync; otherwise a started sync (or
                    // the one being prepared) will publish and wake us.
                    if !state.preparing && state.syncs.len() < self.max_in_flight && state.started_to < position {
                        break;
                    }
                    state.highest_waiter = state.highest_waiter.max(position);
                    state = self.wakeup.wait(state);
                }
                state.preparing = true;
                state.started_to
            };
            if !self.wait_unless_late() {
                self.gather();
            }
            // The marker states the published watermark, never `from`: bytes
            // below `from` may still be in flight.
            before_sync(self.durable());
            let to = match self.wait_for_progress(from) {
                Ok(to) => to,
                Err(failed) => {
                    self.abandon();
                    return Err(WaitError::Failed(failed));
                }
            };
            let seq = self.register(to);
            let sync_started = std::time::Instant::now();
            let synced = sync(from, to);
            self.note_sync_time(sync_started.elapsed());
            match synced {
                Ok(()) => self.finish(seq, None),
                Err(error) => {
                    self.finish(seq, Some(error.kind()));
                    return Err(WaitError::Sync(error));
                }
            }
        }
    }

    /// Preparing leader only: how groups are sized when a sync is in flight.
    /// Starting the next sync at once would split the workload into small
    /// groups (the writers of the sync in flight cannot join before it
    /// ends), costing more syncs and wake-ups per record. So the leader
    /// sleeps until the sync in flight ends — then it gathers and syncs as
    /// usual (returns false) — or until that sync is late, older than the
    /// recent average sync time: then the disk stalls and the next group's
    /// sync starts at once, overlapping it (returns true). With gathering
    /// disabled (and in the loom models) an overlapping sync starts at once.
    fn wait_unless_late(&self) -> bool {
        if self.gather_limit.is_zero() {
            return false;
        }
        // Relaxed: a heuristic (see `note_sync_time`).
        let average = std::time::Duration::from_nanos(self.sync_ns.load(Ordering::Relaxed));
        let mut state = self.leader.lock();
        loop {
            if state.failure.is_some() {
                return false;
            }
            let Some(&oldest) = state.oldest_started_at.front() else {
                return false; // nothing in flight (any more): a normal sync
            };
            let late_at = oldest + average;
            let now = std::time::Instant::now();
            if now >= late_at {
                return true;
            }
            // Bounded: woken by the sync's completion, or at the deadline.
            state = self.wakeup.wait_for(state, late_at - now).0;
        }
    }

    /// Leader only, before it takes the prefix. Without it, groups
    /// alternate: the writers a sync releases append their next records just
    /// after the next leader (elected at once among those that missed the
    /// sync) took its prefix, so each sync carries about half the writers.
    /// When several writers are busy, the leader yields the core while the
    /// log keeps growing, until it has been quiet for an eighth of the limit
    /// or the limit passed; the limit is `gather_limit`, and never more than
    /// half the recent sync time, so a fast disk is not slowed down. One
    /// writer alone never waits.
    fn gather(&self) {
        if self.gather_limit.is_zero() {
            return;
        }
        // Relaxed: written by leaders only, read by the next leader.
        let half_sync = std::time::Duration::from_nanos(self.sync_ns.load(Ordering::Relaxed) / 2);
        let limit = self.gather_limit.min(half_sync);
        if limit.is_zero() {
            return;
        }
        // Relaxed: heuristics only; correctness never depends on them.
        let peak = self.peak.load(Ordering::Relaxed);
        let now = self.waiting.load(Ordering::Relaxed);
        self.peak.store(now.max(peak - peak / 4), Ordering::Relaxed);
        if peak <= 1 {
            return; // one writer: nobody to wait for
        }
        let quiet = limit / 8;
        let started = std::time::Instant::now();
        let mut last = self.completed();
        let mut grew = started;
        loop {
            thread::yield_now();
            let at = std::time::Instant::now();
            let completed = self.completed();
            if completed > last {
                last = completed;
                grew = at;
            }
            if at - started >= limit || at - grew >= quiet {
                return;
            }
        }
    }

    /// Leader only: folds one sync's duration into the moving average (1/8).
    fn note_sync_time(&self, took: std::time::Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: a heuristic; two leaders finishing together may lose one
        // sample, which only delays the average by one sync.
        let average = self.sync_ns.load(Ordering::Relaxed);
        let next = if average == 0 { took } else { average - average / 8 + took / 8 };
        self.sync_ns.store(next, Ordering::Relaxed);
    }

    /// Leader only: waits until some completed bytes lie beyond `from`.
    /// Writers finish their copies without blocking, so this is short; it
    /// yields so that a descheduled writer gets the core.
    fn wait_for_progress(&self, from: u64) -> Result<u64, Failed> {
        loop {
            if let Some(failed) = self.failure() {
                return Err(failed);
            }
            let to = self.completed();
            if to > from {
                return Ok(to);
            }
            thread::yield_now();
        }
    }

    /// Preparing leader only: registers its sync of everything below `to`
    /// (a completed prefix beyond `started_to`) and lets the next leader
    /// prepare. Returns the sync's sequence number.
    fn register(&self, to: u64) -> u64 {
        let mut state = self.leader.lock();
        debug_assert!(state.preparing && to > state.started_to, "registered a sync out of order");
        debug_assert!(state.syncs.len() < self.max_in_flight, "too many syncs in flight");
        state.preparing = false;
        state.started_to = to;
        state.syncs.push_back((to, false));
        state.oldest_started_at.push_back(std::time::Instant::now());
        let seq = state.front_seq + state.syncs.len() as u64 - 1;
        let someone_beyond = state.highest_waiter > to;
        drop(state);
        // A waiter beyond `to` may prepare the next sync now; the others
        // wait for the publication (see `highest_waiter`).
        if someone_beyond {
            self.wakeup.notify_all();
        }
        seq
    }

    /// Preparing leader only: gives up preparing (the log failed meanwhile).
    fn abandon(&self) {
        let mut state = self.leader.lock();
        state.preparing = false;
        drop(state);
        self.wakeup.notify_all();
    }

    /// Leader only: its sync `seq` ended. A success publishes the end of the
    /// longest run of completed syncs at the front of the registration
    /// order, so nothing is acknowledged before every earlier sync
    /// completed; a failure fails the log (every waiter, now and later).
    fn finish(&self, seq: u64, failure: Option<std::io::ErrorKind>) {
        let mut state = self.leader.lock();
        let index = usize::try_from(seq - state.front_seq).unwrap_or(usize::MAX);
        if let Some(kind) = failure {
            if state.failure.is_none() {
                state.failure = Some(kind);
            }
            // Release: see `fail`.
            self.failed.store(true, Ordering::Release);
        }
        match state.syncs.get_mut(index) {
            Some(entry) => entry.1 = failure.is_none(),
            None => debug_assert!(false, "sync {seq} finished twice"),
        }
        if !self.publish_in_order && failure.is_none() {
            // The broken variant (loom only): publish this sync's end now.
            let to = state.syncs.get(index).map_or(state.durable, |entry| entry.0);
            if to > state.durable {
                state.durable = to;
                self.durable.store(to, Ordering::Release);
            }
        }
        let mut durable = state.durable;
        while let Some(&(to, true)) = state.syncs.front() {
            state.syncs.pop_front();
            state.oldest_started_at.pop_front();
            state.front_seq += 1;
            durable = durable.max(to);
        }
        if state.failure.is_some() {
            // Nothing is published after a failure; the failed entry stays,
            // so no later sync is ever published either.
        } else if durable > state.durable {
            state.durable = durable;
            // Release: a waiter that sees the watermark without the lock also
            // sees everything the leaders did before (their syncs completed).
            self.durable.store(durable, Ordering::Release);
        }
        drop(state);
        self.wakeup.notify_all();
    }
}

/// How `wait_durable` failed.
#[derive(Debug)]
pub enum WaitError {
    /// This thread led a sync and it failed; the log is now failed.
    Sync(std::io::Error),
    /// The log had already failed.
    Failed(Failed),
}
