//! The bounded table of recent transaction ids: a caller that resubmits an
//! id gets the recorded outcome instead of a second execution.

use std::collections::VecDeque;

use hashbrown::HashMap;

use crate::sync::Mutex;
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
    /// Finished before, with the same legs; answer once `Lsn` is durable.
    Done(Outcome, Option<Lsn>),
    /// Running right now.
    InProgress,
    /// Seen before with different legs.
    Mismatch,
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
    order: VecDeque<TxId>,
    /// The largest id this shard forgot (outcomes at or below it may be lost).
    forgotten: Option<TxId>,
}

impl Shard {
    fn trim(&mut self, per_shard: usize) {
        while self.order.len() > per_shard {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
                self.forgotten = self.forgotten.max(Some(old));
            }
        }
    }
}

pub(crate) struct RecentIds {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

fn shard_of(tx: TxId) -> usize {
    let v = tx.as_u128();
    ((v ^ (v >> 64)) as usize ^ (v >> 17) as usize) % SHARDS
}

impl RecentIds {
    /// Remembers about `capacity` finished ids (at least one per shard).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    pub(crate) fn begin(&self, tx: TxId, fingerprint: u64) -> Begin {
        let mut shard = self.shards[shard_of(tx)].lock();
        if let Some(slot) = shard.map.get(&tx) {
            return if slot.fingerprint != fingerprint && slot.fingerprint != ANY_FINGERPRINT {
                Begin::Mismatch
            } else {
                match &slot.outcome {
                    Some(o) => Begin::Done(o.clone(), slot.lsn),
                    None => Begin::InProgress,
                }
            };
        }
        shard.map.insert(tx, Slot { fingerprint, outcome: None, lsn: None });
        Begin::New
    }

    /// Records the outcome of `tx`, whose record ends at `lsn` (if logged).
    pub(crate) fn finish(&self, tx: TxId, fingerprint: u64, outcome: Outcome, lsn: Option<Lsn>) {
        let per_shard = self.per_shard;
        let mut shard = self.shards[shard_of(tx)].lock();
        shard.map.insert(tx, Slot { fingerprint, outcome: Some(outcome), lsn });
        shard.order.push_back(tx);
        shard.trim(per_shard);
    }

    /// The largest id whose outcome this table forgot, if any: an id at or
    /// below it may have an outcome nobody remembers.
    pub(crate) fn forgotten(&self) -> Option<TxId> {
        self.shards.iter().filter_map(|s| s.lock().forgotten).max()
    }

    /// Records an operator's abort of an id that has no outcome yet (it
    /// matches any legs). Returns what is there instead, if anything:
    /// `Some(None)` while the id is running.
    pub(crate) fn abort_unknown(&self, tx: TxId, outcome: Outcome) -> Option<Option<Outcome>> {
        let mut shard = self.shards[shard_of(tx)].lock();
        if let Some(slot) = shard.map.get(&tx) {
            return Some(slot.outcome.clone());
        }
        shard.map.insert(tx, Slot { fingerprint: ANY_FINGERPRINT, outcome: Some(outcome), lsn: None });
        shard.order.push_back(tx);
        shard.trim(self.per_shard);
        None
    }

    /// The id's run ended in an error before any decision: forget it.
    pub(crate) fn forget(&self, tx: TxId) {
        let mut shard = self.shards[shard_of(tx)].lock();
        if matches!(shard.map.get(&tx), Some(Slot { outcome: None, .. })) {
            shard.map.remove(&tx);
        }
    }

    /// Finished ids with their fingerprints, oldest first within each shard
    /// (for checkpoints).
    pub(crate) fn snapshot(&self) -> Vec<(TxId, u64, Outcome)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            for tx in &shard.order {
                if let Some(Slot { fingerprint, outcome: Some(outcome), .. }) = shard.map.get(tx) {
                    out.push((*tx, *fingerprint, outcome.clone()));
                }
            }
        }
        out
    }

    /// The outcome of `tx` and where its record ends (wait for it before
    /// showing the outcome to anyone).
    pub(crate) fn get(&self, tx: TxId) -> Option<(Outcome, Option<Lsn>)> {
        self.shards[shard_of(tx)].lock().map.get(&tx).and_then(|s| s.outcome.clone().map(|o| (o, s.lsn)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resubmission_and_bounds() {
        let r = RecentIds::new(32);
        let t = TxId::from_u128(5);
        assert!(matches!(r.begin(t, 1), Begin::New));
        assert!(matches!(r.begin(t, 1), Begin::InProgress));
        r.finish(t, 1, Outcome::Committed, Some(Lsn(7)));
        assert!(matches!(r.begin(t, 1), Begin::Done(Outcome::Committed, Some(Lsn(7)))));
        assert!(matches!(r.begin(t, 2), Begin::Mismatch));
        for i in 100..10_000 {
            let id = TxId::from_u128(i);
            assert!(matches!(r.begin(id, 0), Begin::New));
            r.finish(id, 0, Outcome::Committed, None);
        }
        let kept: usize = r.shards.iter().map(|s| s.lock().map.len()).sum();
        assert!(kept <= 32 + SHARDS, "{kept}");
    }
}
