//! The remembered outcomes of caller-chosen transaction ids: a resubmitted
//! id gets its recorded outcome instead of a second execution, exactly,
//! for the whole idempotency horizon (default 24 hours).
//!
//! Two tiers. The in-memory table holds ids that are running or finished
//! recently; with a log, finished ids whose records are durable are spilled
//! into the id archive on disk (`durable::ids`, sorted run files) at every
//! checkpoint and whenever the table grows past its bound, so memory stays
//! bounded however many ids the horizon holds. A lookup that misses the
//! table asks the archive, under the table shard's lock, so an id can never
//! fall between the two tiers while it moves (a spill removes ids from the
//! table only after the run holding them is durable).
//!
//! Without a log there is no archive: beyond its bound the table forgets
//! the finished ids with the oldest timestamps, and an unknown id at or
//! below the newest forgotten one is refused (`Begin::Expired`) rather than
//! run a second time. Forgetting by timestamp rather than by finish order
//! keeps fresh ids from being refused: one is refused only if the table
//! already holds `capacity` newer ones.

use std::collections::BTreeSet;
use std::sync::Arc;

use hashbrown::HashMap;

use crate::durable::codec::Remembered;
use crate::durable::ids::{IdArchive, Lookup};
use crate::error::Result;
use crate::sync::{AtomicUsize, Mutex, Ordering};
use crate::txn::{Outcome, TxId};
use crate::wal::Lsn;

const SHARDS: usize = 16;

/// The fingerprint of an id an operator aborted before it ran: it matches
/// any legs, so a resubmission is answered with the operator's abort.
/// Fingerprints of real transactions are never 0 (see `plan::fingerprint`).
pub(crate) const ANY_FINGERPRINT: u64 = 0;

pub(crate) enum Begin {
    /// First time: run it.
    New,
    /// Finished before, with the same content; answer once `Lsn` is durable.
    Done(Outcome, Option<Lsn>),
    /// Running right now.
    InProgress,
    /// Seen before with different content.
    Mismatch,
    /// Its outcome may have been forgotten (beyond the horizon): refuse it.
    Expired,
}

struct Slot {
    fingerprint: u64,
    outcome: Option<Outcome>,
    /// Where the decision's record ends: it is answered only once durable.
    lsn: Option<Lsn>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<TxId, Slot>,
    /// Finished ids by timestamp (no log: the oldest are forgotten first).
    order: BTreeSet<TxId>,
    /// The largest id this shard forgot (no log): ids at or below it may
    /// have an outcome nobody remembers.
    forgotten: Option<TxId>,
}

impl Shard {
    fn trim(&mut self, per_shard: usize) {
        while self.order.len() > per_shard {
            if let Some(old) = self.order.pop_first()
                && self.map.get(&old).is_some_and(|s| s.outcome.is_some())
            {
                self.map.remove(&old);
                self.forgotten = self.forgotten.max(Some(old));
            }
        }
    }
}

pub(crate) struct RecentIds {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    /// With a log: where finished ids go once durable.
    archive: Option<Arc<IdArchive>>,
    /// Finished ids in the table (the spill trigger).
    finished: AtomicUsize,
    /// One spill at a time.
    spilling: Mutex<()>,
}

fn shard_of(tx: TxId) -> usize {
    let v = tx.as_u128();
    ((v ^ (v >> 64)) as usize ^ (v >> 17) as usize) % SHARDS
}

fn remembered(slot: &Slot, tx: TxId) -> Option<Remembered> {
    let aborted = match slot.outcome.as_ref()? {
        Outcome::Aborted(reason) => Some(reason.clone()),
        _ => None,
    };
    Some(Remembered { tx, fingerprint: slot.fingerprint, aborted })
}

fn outcome_of(r: &Remembered) -> Outcome {
    r.aborted.clone().map_or(Outcome::Committed, Outcome::Aborted)
}

impl RecentIds {
    /// A table of about `capacity` finished ids (at least one per shard):
    /// forgotten beyond it without an archive, spilled into `archive` with one.
    pub(crate) fn new(capacity: usize, archive: Option<Arc<IdArchive>>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            archive,
            finished: AtomicUsize::new(0),
            spilling: Mutex::new(()),
        }
    }

    /// The archive, with a log.
    pub(crate) fn archive(&self) -> Option<&Arc<IdArchive>> {
        self.archive.as_ref()
    }

    /// What a submission of `tx` with this content means.
    pub(crate) fn begin(&self, tx: TxId, fingerprint: u64) -> Result<Begin> {
        let mut shard = self.shards[shard_of(tx)].lock();
        if let Some(slot) = shard.map.get(&tx) {
            return Ok(if slot.fingerprint != fingerprint && slot.fingerprint != ANY_FINGERPRINT {
                Begin::Mismatch
            } else {
                match &slot.outcome {
                    Some(o) => Begin::Done(o.clone(), slot.lsn),
                    None => Begin::InProgress,
                }
            });
        }
        match &self.archive {
            // Under the shard lock: a spill drops ids from the table only
            // after their run is durable, so this finds the id in one tier.
            Some(archive) => match archive.lookup(tx)? {
                Lookup::Remembered(r) if r.fingerprint != fingerprint && r.fingerprint != ANY_FINGERPRINT => {
                    return Ok(Begin::Mismatch);
                }
                Lookup::Remembered(r) => return Ok(Begin::Done(outcome_of(&r), None)),
                Lookup::BeyondHorizon { .. } => return Ok(Begin::Expired),
                Lookup::Unknown => {}
            },
            None if shard.forgotten.is_some_and(|f| tx <= f) => return Ok(Begin::Expired),
            None => {}
        }
        shard.map.insert(tx, Slot { fingerprint, outcome: None, lsn: None });
        Ok(Begin::New)
    }

    /// Records the outcome of `tx`, whose record ends at `lsn` (if logged).
    pub(crate) fn finish(&self, tx: TxId, fingerprint: u64, outcome: Outcome, lsn: Option<Lsn>) {
        let mut shard = self.shards[shard_of(tx)].lock();
        let was_finished = shard
            .map
            .insert(tx, Slot { fingerprint, outcome: Some(outcome), lsn })
            .is_some_and(|s| s.outcome.is_some());
        if !was_finished {
            // Relaxed: a trigger for the checkpointer, nothing depends on it.
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
        if self.archive.is_none() {
            shard.order.insert(tx);
            let before = shard.map.len();
            shard.trim(self.per_shard);
            // Relaxed: see above.
            self.finished.fetch_sub(before - shard.map.len(), Ordering::Relaxed);
        }
    }

    /// The largest id whose outcome the table forgot (no log), if any.
    pub(crate) fn forgotten(&self) -> Option<TxId> {
        self.shards.iter().filter_map(|s| s.lock().forgotten).max()
    }

    /// Records an operator's abort of an id that has no outcome yet (it
    /// matches any content). Returns what is there instead, if anything:
    /// `Some(None)` while the id is running.
    pub(crate) fn abort_unknown(&self, tx: TxId, outcome: Outcome) -> Result<Option<Option<Outcome>>> {
        let mut shard = self.shards[shard_of(tx)].lock();
        if let Some(slot) = shard.map.get(&tx) {
            return Ok(Some(slot.outcome.clone()));
        }
        if let Some(archive) = &self.archive
            && let Lookup::Remembered(r) = archive.lookup(tx)?
        {
            return Ok(Some(Some(outcome_of(&r))));
        }
        shard.map.insert(tx, Slot { fingerprint: ANY_FINGERPRINT, outcome: Some(outcome), lsn: None });
        // Relaxed: see `finish`.
        self.finished.fetch_add(1, Ordering::Relaxed);
        if self.archive.is_none() {
            shard.order.insert(tx);
            shard.trim(self.per_shard);
        }
        Ok(None)
    }

    /// The id's run ended in an error before any decision: forget it.
    pub(crate) fn forget(&self, tx: TxId) {
        let mut shard = self.shards[shard_of(tx)].lock();
        if matches!(shard.map.get(&tx), Some(Slot { outcome: None, .. })) {
            shard.map.remove(&tx);
        }
    }

    /// The outcome of `tx` and where its record ends (wait for it before
    /// showing the outcome to anyone): the table, then the archive.
    pub(crate) fn get(&self, tx: TxId) -> Result<Option<(Outcome, Option<Lsn>)>> {
        let shard = self.shards[shard_of(tx)].lock();
        if let Some(slot) = shard.map.get(&tx) {
            return Ok(slot.outcome.clone().map(|o| (o, slot.lsn)));
        }
        match &self.archive {
            Some(archive) => Ok(archive.get(tx)?.map(|r| (outcome_of(&r), None))),
            None => Ok(None),
        }
    }

    /// True when the table holds more finished ids than its bound.
    pub(crate) fn spill_due(&self) -> bool {
        // Relaxed: a heuristic trigger.
        self.archive.is_some() && self.finished.load(Ordering::Relaxed) > self.per_shard * SHARDS
    }

    /// Moves every finished id whose record is durable (below `durable`)
    /// into the archive, then out of the table. Returns how many moved.
    pub(crate) fn spill(&self, durable: Lsn) -> Result<usize> {
        let Some(archive) = &self.archive else { return Ok(0) };
        let _one_at_a_time = self.spilling.lock();
        let mut moving: Vec<Remembered> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for (tx, slot) in &shard.map {
                if slot.lsn.is_none_or(|lsn| lsn <= durable)
                    && let Some(r) = remembered(slot, *tx)
                {
                    moving.push(r);
                }
            }
        }
        if moving.is_empty() {
            return Ok(0);
        }
        archive.add_run(moving.clone())?;
        // Durable in the archive now: the table may let them go (unless a
        // slot changed meanwhile, which only an operator's abort of an
        // unknown id does, and that one stays).
        let mut moved = 0;
        for r in &moving {
            let mut shard = self.shards[shard_of(r.tx)].lock();
            let same = shard.map.get(&r.tx).is_some_and(|slot| remembered(slot, r.tx).as_ref() == Some(r));
            if same {
                shard.map.remove(&r.tx);
                moved += 1;
            }
        }
        // Relaxed: see `finish`.
        self.finished.fetch_sub(moved, Ordering::Relaxed);
        Ok(moved)
    }

    /// Finished ids in the table now.
    pub(crate) fn len(&self) -> usize {
        // Relaxed: a statistic.
        self.finished.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::AbortReason;

    #[test]
    fn resubmission_and_bounds_without_a_log() {
        let r = RecentIds::new(32, None);
        let t = TxId::from_u128(5);
        assert!(matches!(r.begin(t, 1).unwrap(), Begin::New));
        assert!(matches!(r.begin(t, 1).unwrap(), Begin::InProgress));
        r.finish(t, 1, Outcome::Committed, Some(Lsn(7)));
        assert!(matches!(r.begin(t, 1).unwrap(), Begin::Done(Outcome::Committed, Some(Lsn(7)))));
        assert!(matches!(r.begin(t, 2).unwrap(), Begin::Mismatch));
        for i in 100..10_000 {
            let id = TxId::from_u128(i);
            assert!(matches!(r.begin(id, 9).unwrap(), Begin::New));
            r.finish(id, 9, Outcome::Committed, None);
        }
        let kept: usize = r.shards.iter().map(|s| s.lock().map.len()).sum();
        assert!(kept <= 32 + SHARDS, "{kept}");
        // A forgotten id is refused, never run again.
        assert!(matches!(r.begin(TxId::from_u128(100), 9).unwrap(), Begin::Expired));
        assert!(matches!(r.begin(TxId::from_u128(5), 1).unwrap(), Begin::Expired));
    }

    #[test]
    fn spilled_ids_are_answered_from_the_archive() {
        let storage: Arc<dyn crate::wal::Storage> = Arc::new(crate::wal::MemStorage::new());
        let archive = Arc::new(IdArchive::open(storage, std::time::Duration::from_secs(3600)).unwrap());
        let r = RecentIds::new(16, Some(archive));
        let now = crate::txn::unix_nanos();
        let id = |i: u64| TxId::from_u128((u128::from(now) << 64) | u128::from(i));
        for i in 0..100 {
            assert!(matches!(r.begin(id(i), 3).unwrap(), Begin::New));
            let outcome = if i % 2 == 0 { Outcome::Committed } else { Outcome::Aborted(AbortReason::LockTimeout) };
            r.finish(id(i), 3, outcome, Some(Lsn(i)));
        }
        assert!(r.spill_due());
        // Only records already durable move.
        assert_eq!(r.spill(Lsn(49)).unwrap(), 50);
        assert_eq!(r.len(), 50);
        assert!(matches!(r.begin(id(2), 3).unwrap(), Begin::Done(Outcome::Committed, None)));
        assert!(matches!(r.begin(id(3), 3).unwrap(), Begin::Done(Outcome::Aborted(AbortReason::LockTimeout), None)));
        assert!(matches!(r.begin(id(2), 4).unwrap(), Begin::Mismatch));
        assert!(matches!(r.begin(id(60), 3).unwrap(), Begin::Done(_, Some(Lsn(60)))));
        assert_eq!(r.get(id(4)).unwrap(), Some((Outcome::Committed, None)));
        assert!(matches!(r.begin(id(1000), 3).unwrap(), Begin::New));
    }
}
