//! The built-in account store: a sharded, memory-lean ledger of signed
//! 64-bit balances keyed by string ids.
//!
//! Layout per shard (chosen for ≤ 100 bytes per account at 10⁷ accounts):
//! account ids are packed back to back in one byte arena (`names` + `ends`),
//! the hash table stores only a `u32` index into them, and balances live in a
//! parallel vector. An account costs its id's bytes + 4 (end offset) + 8
//! (balance) + ~5–9 (table slot and control byte at hashbrown's load factor).

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::RwLock;
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::phase::{BalanceSummary, Directory, Refusal, Work};
use crate::sync::{AtomicI64, Ordering};
/// Longest account id accepted, in bytes.
pub const MAX_ACCOUNT_ID_BYTES: usize = 255;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// A sharded store of account balances; a [`Participant`](crate::Participant).
///
/// Cloning gives another handle to the same accounts. Reads through a handle
/// (`balance`) are not isolated from transactions in flight; use
/// [`Coordinator::audit`](crate::Coordinator::audit) for a consistent cut.
///
/// ```
/// use dtc::Ledger;
/// let ledger = Ledger::new();
/// ledger.create_account("acct-1", 100).unwrap();
/// assert_eq!(ledger.balance("acct-1"), Some(100));
/// assert!(ledger.create_account("acct-1", 5).is_err());
/// ```
#[derive(Clone)]
pub struct Ledger {
    core: Arc<LedgerCore>,
}

struct LedgerCore {
    hasher: DefaultHashBuilder,
    shards: Box<[RwLock<Shard>]>,
}

#[derive(Default)]
struct Shard {
    table: HashTable<u32>,
    names: Vec<u8>,
    ends: Vec<u32>,
    balances: Vec<AtomicI64>,
}

impl Shard {
    fn name(&self, index: u32) -> &[u8] {
        name_at(&self.names, &self.ends, index)
    }

    fn find(&self, hash: u64, id: &[u8]) -> Option<u32> {
        self.table.find(hash, |&i| self.name(i) == id).copied()
    }
}

/// Account `index`'s id in a shard's arena (ids are stored back to back;
/// `ends[i]` is where id `i` stops).
fn name_at<'a>(names: &'a [u8], ends: &[u32], index: u32) -> &'a [u8] {
    let i = index as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &names[start..ends[i] as usize]
}

fn key(shard: usize, index: u32) -> u64 {
    ((shard as u64) << 32) | u64::from(index)
}

fn split(key: u64) -> (usize, usize) {
    ((key >> 32) as usize, (key & 0xffff_ffff) as usize)
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty ledger with room for about `accounts` accounts.
    pub fn with_capacity(accounts: usize) -> Self {
        let per_shard = accounts.div_ceil(SHARDS);
        let shards = (0..SHARDS)
            .map(|_| {
                RwLock::new(Shard {
                    table: HashTable::with_capacity(per_shard),
                    names: Vec::with_capacity(per_shard * 12),
                    ends: Vec::with_capacity(per_shard),
                    balances: Vec::with_capacity(per_shard),
                })
            })
            .collect();
        Self { core: Arc::new(LedgerCore { hasher: DefaultHashBuilder::default(), shards }) }
    }

    /// Creates an account with a starting balance (≥ 0).
    pub fn create_account(&self, id: &str, balance: i64) -> Result<()> {
        validate_account_id(id)?;
        if balance < 0 {
            return Err(Error::InvalidBalance { account: id.to_string(), balance });
        }
        let hash = self.core.hasher.hash_one(id.as_bytes());
        let mut shard = self.core.shards[shard_of(hash)].write();
        if shard.find(hash, id.as_bytes()).is_some() {
            return Err(Error::AccountExists { service: String::new(), account: id.to_string() });
        }
        let index = u32::try_from(shard.ends.len()).map_err(|_| Error::Config("ledger shard full".into()))?;
        let end = u32::try_from(shard.names.len() + id.len())
            .map_err(|_| Error::Config("ledger shard id arena full".into()))?;
        shard.names.extend_from_slice(id.as_bytes());
        shard.ends.push(end);
        shard.balances.push(AtomicI64::new(balance));
        let Shard { table, names, ends, .. } = &mut *shard;
        let hasher = &self.core.hasher;
        table.insert_unique(hash, index, |&i| hasher.hash_one(name_at(names, ends, i)));
        Ok(())
    }

    /// The current balance of `id` (not isolated from transactions in flight).
    pub fn balance(&self, id: &str) -> Option<i64> {
        self.lookup(id).map(|k| self.balance_of(k))
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.core.shards.iter().map(|s| s.read().ends.len()).sum()
    }

    /// True when the ledger has no account.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held by the ledger's structures (capacity, not just length).
    pub fn memory_bytes(&self) -> usize {
        self.core
            .shards
            .iter()
            .map(|s| {
                let s = s.read();
                s.table.allocation_size()
                    + s.names.capacity()
                    + s.ends.capacity() * std::mem::size_of::<u32>()
                    + s.balances.capacity() * std::mem::size_of::<AtomicI64>()
            })
            .sum::<usize>()
            + SHARDS * std::mem::size_of::<RwLock<Shard>>()
    }

    /// Sum, count and negatives over all accounts (not isolated).
    pub fn summary(&self) -> BalanceSummary {
        let mut sum = BalanceSummary::default();
        for shard in self.core.shards.iter() {
            let shard = shard.read();
            for b in &shard.balances {
                // Relaxed: the coordinator's locks order this read against
                // commits; the value itself is a plain counter.
                let v = b.load(Ordering::Relaxed);
                sum.accounts += 1;
                sum.total += i128::from(v);
                sum.negative += u64::from(v < 0);
            }
        }
        sum
    }

    /// Every account and balance, in no particular order (for snapshots).
    pub fn for_each_account(&self, mut f: impl FnMut(&str, i64)) {
        for shard in self.core.shards.iter() {
            let shard = shard.read();
            for (i, b) in shard.balances.iter().enumerate() {
                let name = std::str::from_utf8(shard.name(i as u32)).unwrap_or("");
                f(name, b.load(Ordering::Relaxed));
            }
        }
    }

    /// Sets the balance of an existing account, or creates it (recovery).
    pub(crate) fn put(&self, id: &str, balance: i64) -> Result<()> {
        match self.lookup(id) {
            Some(k) => {
                self.with_balance(k, |b| b.store(balance, Ordering::Relaxed));
                Ok(())
            }
            None => self.create_account(id, balance),
        }
    }

    /// Adds `delta` to an account during replay (creating it at 0 if an
    /// account was made after the last checkpoint without a record).
    pub(crate) fn adjust(&self, id: &str, delta: i64) -> Result<()> {
        let key = match self.lookup(id) {
            Some(k) => k,
            None => {
                tracing::warn!(account = id, "replay touches an account missing from the checkpoint; creating it");
                self.create_account(id, 0)?;
                self.lookup(id).ok_or_else(|| Error::Config("account vanished during replay".into()))?
            }
        };
        // Relaxed: replay runs before any transaction.
        self.with_balance(key, |b| b.fetch_add(delta, Ordering::Relaxed));
        Ok(())
    }

    pub(crate) fn lookup(&self, id: &str) -> Option<u64> {
        let hash = self.core.hasher.hash_one(id.as_bytes());
        let s = shard_of(hash);
        self.core.shards[s].read().find(hash, id.as_bytes()).map(|i| key(s, i))
    }

    fn with_balance<R>(&self, key: u64, f: impl FnOnce(&AtomicI64) -> R) -> R {
        let (s, i) = split(key);
        let shard = self.core.shards[s].read();
        f(&shard.balances[i])
    }

    fn balance_of(&self, key: u64) -> i64 {
        // Relaxed: see `summary`.
        self.with_balance(key, |b| b.load(Ordering::Relaxed))
    }

    /// Whether adding `delta` keeps the balance valid: `Err(true)` for
    /// insufficient funds, `Err(false)` for overflow. The caller holds the
    /// account's lock (the engine's direct batch path).
    pub(crate) fn check(&self, key: u64, delta: i64) -> std::result::Result<(), bool> {
        match self.balance_of(key).checked_add(delta) {
            None => Err(false),
            Some(after) if after < 0 && delta < 0 => Err(true),
            Some(_) => Ok(()),
        }
    }

    /// Adds `delta` after a successful `check` (same lock held).
    pub(crate) fn apply(&self, key: u64, delta: i64) {
        // Relaxed: the account lock orders this against every other access.
        self.with_balance(key, |b| b.fetch_add(delta, Ordering::Relaxed));
    }

    fn valid_key(&self, key: u64) -> bool {
        let (s, i) = split(key);
        s < SHARDS && i < self.core.shards[s].read().balances.len()
    }
}

/// The shard of an id's hash. Not the top bits: hashbrown keeps the top 7
/// bits of the hash as each slot's control byte, so sharding on them left
/// only two control values per shard and every probe compared about half
/// of a group's names. Not the low bits either (the table's bucket index).
/// Bits 32.. are used by neither below 2³² buckets per shard.
fn shard_of(hash: u64) -> usize {
    ((hash >> 32) as usize) & (SHARDS - 1)
}

pub(crate) fn validate_account_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::InvalidName { name: id.to_string(), why: "empty" });
    }
    if id.len() > MAX_ACCOUNT_ID_BYTES {
        return Err(Error::InvalidName { name: id.chars().take(32).collect(), why: "longer than 255 bytes" });
    }
    Ok(())
}

impl Directory for LedgerCore {
    fn lookup(&self, account: &str) -> Option<u64> {
        let hash = self.hasher.hash_one(account.as_bytes());
        let s = shard_of(hash);
        self.shards[s].read().find(hash, account.as_bytes()).map(|i| key(s, i))
    }
}

/// What the ledger keeps between prepare and commit: the net change per
/// account (opaque; wrappers of a ledger pass it through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHold(SmallVec<[(u64, i64); 4]>);

impl Ledger {
    /// The participant's prepare: checks funds and accounts for the legs of
    /// `work` and returns the net change to apply, changing nothing.
    pub(crate) fn hold(&self, work: Work<'_>) -> std::result::Result<LedgerHold, Refusal> {
        let Work::Transfers(ops) = work else {
            return Err(Refusal::new("payload_unsupported", "a ledger takes transfer legs, not payloads"));
        };
        // Net change per account, keeping a name for the refusal message.
        let mut pending: SmallVec<[(u64, i64, &str); 4]> = SmallVec::new();
        for op in ops {
            let key = op
                .key
                .filter(|k| self.valid_key(*k))
                .or_else(|| self.lookup(op.account))
                .ok_or_else(|| Refusal::UnknownAccount { account: op.account.to_string() })?;
            match pending.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, delta, _)) => {
                    *delta = delta
                        .checked_add(op.delta)
                        .ok_or_else(|| Refusal::Overflow { account: op.account.to_string() })?;
                }
                None => pending.push((key, op.delta, op.account)),
            }
        }
        for &(key, delta, account) in &pending {
            match self.balance_of(key).checked_add(delta) {
                None => {
                    return Err(Refusal::Overflow { account: account.to_string() });
                }
                Some(after) if after < 0 && delta < 0 => {
                    return Err(Refusal::InsufficientFunds { account: account.to_string() });
                }
                Some(_) => {}
            }
        }
        Ok(LedgerHold(pending.iter().map(|&(k, d, _)| (k, d)).collect()))
    }

    /// The participant's commit: applies a held change (the caller holds
    /// the accounts' locks).
    pub(crate) fn commit_hold(&self, prepared: &LedgerHold) {
        for &(key, delta) in &prepared.0 {
            // Relaxed: the coordinator holds this account's lock; the lock
            // release publishes the new balance to the next transaction.
            self.with_balance(key, |b| b.fetch_add(delta, Ordering::Relaxed));
        }
    }

    /// The participant's directory: the ledger's account lookup.
    pub(crate) fn account_directory(&self) -> Arc<dyn Directory> {
        self.core.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_accounts_round_trip() {
        let l = Ledger::with_capacity(10_000);
        for i in 0..10_000 {
            l.create_account(&format!("acct-{i}"), i).unwrap();
        }
        for i in (0..10_000).step_by(97) {
            assert_eq!(l.balance(&format!("acct-{i}")), Some(i));
        }
        assert_eq!(l.len(), 10_000);
        assert!(l.memory_bytes() / 10_000 < 100, "{} bytes per account", l.memory_bytes() / 10_000);
    }
}
