//! A participant with its own durable storage, in memory: a shelf of items
//! with a capacity each, whose state survives coordinator crashes (the test
//! keeps the `Shelf` across coordinator restarts, as a separate service
//! keeps its database). Each branch's payload names an item; prepare
//! reserves one unit, commit sells it, rollback releases it.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dtc::{BranchId, Failure, Participant, ParticipantKind, Refusal, TxId, Work};
use parking_lot::Mutex;

/// What the shelf's storage holds. Every change is "durable" at once.
#[derive(Debug, Default)]
pub struct ShelfState {
    pub capacity: HashMap<String, u32>,
    pub prepared: HashMap<BranchId, String>,
    pub sold: HashMap<BranchId, String>,
    /// Branches rolled back (or rolled back before their prepare): a late
    /// prepare is refused.
    pub rolled_back: HashSet<BranchId>,
    /// Calls that should never happen (a commit of an unknown branch, a
    /// rollback of a sold one): the coordinator broke its contract.
    pub violations: Vec<String>,
    pub commits: u64,
    pub rollbacks: u64,
}

impl ShelfState {
    fn reserved(&self, item: &str) -> u32 {
        let held = self.prepared.values().chain(self.sold.values());
        held.filter(|i| *i == item).count() as u32
    }

    /// Every item's units sold or reserved stay within its capacity.
    pub fn within_capacity(&self) -> bool {
        self.capacity.iter().all(|(item, cap)| self.reserved(item) <= *cap)
    }

    /// Transactions with a sold branch.
    pub fn sold_txs(&self) -> HashSet<TxId> {
        self.sold.keys().map(|b| b.tx).collect()
    }
}

/// A handle on one shelf's storage (clone it to keep it across restarts).
#[derive(Clone, Default)]
pub struct Shelf(pub Arc<Mutex<ShelfState>>);

impl Shelf {
    pub fn new(items: &[&str], capacity: u32) -> Self {
        let shelf = Shelf::default();
        shelf.0.lock().capacity = items.iter().map(|i| (i.to_string(), capacity)).collect();
        shelf
    }

    /// A participant of `kind` on this shelf (`Durable`: lists what it holds
    /// prepared; `External`: cannot list, the coordinator logs its branches).
    pub fn participant(&self, kind: ParticipantKind) -> ShelfParticipant {
        ShelfParticipant { shelf: self.clone(), kind }
    }
}

pub struct ShelfParticipant {
    shelf: Shelf,
    kind: ParticipantKind,
}

impl Participant for ShelfParticipant {
    type Prepared = String;

    fn kind(&self) -> ParticipantKind {
        self.kind
    }

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<String, Refusal> {
        let item = String::from_utf8_lossy(work.payload()).into_owned();
        let mut s = self.shelf.0.lock();
        if s.rolled_back.contains(&branch) {
            return Err(Refusal::new("already_rolled_back", "rolled back before"));
        }
        if let Some(held) = s.prepared.get(&branch) {
            return Ok(held.clone());
        }
        let Some(&cap) = s.capacity.get(&item) else {
            return Err(Refusal::new("unknown_item", item));
        };
        if s.reserved(&item) >= cap {
            return Err(Refusal::new("sold_out", item));
        }
        s.prepared.insert(branch, item.clone());
        Ok(item)
    }

    fn commit(&mut self, branch: BranchId, item: &String) -> Result<(), Failure> {
        let mut s = self.shelf.0.lock();
        s.commits += 1;
        if s.sold.contains_key(&branch) {
            return Ok(()); // committed before a crash: idempotent
        }
        match s.prepared.remove(&branch) {
            Some(held) => {
                if held != *item {
                    s.violations.push(format!("{branch}: commit of {item} but {held} was prepared"));
                }
                s.sold.insert(branch, held);
                Ok(())
            }
            None => {
                s.violations.push(format!("{branch}: commit of a branch never prepared"));
                Err(Failure::with_code("unknown_branch", "never prepared"))
            }
        }
    }

    fn rollback(&mut self, branch: BranchId, _item: Option<&String>) -> Result<(), Failure> {
        let mut s = self.shelf.0.lock();
        s.rollbacks += 1;
        if s.sold.contains_key(&branch) {
            s.violations.push(format!("{branch}: rollback of a sold branch"));
            return Err(Failure::with_code("already_committed", "sold"));
        }
        s.prepared.remove(&branch);
        s.rolled_back.insert(branch);
        Ok(())
    }

    fn recover(&mut self) -> Vec<(BranchId, String)> {
        if self.kind != ParticipantKind::Durable {
            return Vec::new();
        }
        self.shelf.0.lock().prepared.iter().map(|(b, i)| (*b, i.clone())).collect()
    }

    fn encode_prepared(&self, item: &String) -> Option<Vec<u8>> {
        Some(item.as_bytes().to_vec())
    }

    fn decode_prepared(&self, _branch: BranchId, bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}
