//! The built-in account store: a sharded, memory-lean ledger of signed
//! 64-bit balances keyed by string ids.
//!
//! Layout per shard (chosen for few cache misses per lookup and ≤ 100 bytes
//! per account at 10⁷ accounts): every account is one record in a word
//! arena — its balance, then its id packed little-endian into zero-padded
//! words — and the hash table stores one `u32` per account: the record's
//! word offset (24 bits) and the id's length (8 bits). A lookup touches the
//! table's control bytes, its slot and the record, which holds the balance
//! the transaction reads next: three cache lines, where separate id, offset
//! and balance arrays took five. An account costs 8 (balance) + its id
//! rounded up to 8 bytes + ~5–9 (table slot and control byte at hashbrown's
//! load factor).
//!
//! The arena is a list of chunks that never move (the first as large as
//! asked, then doubling ones allocated when needed), so balances are read and
//! changed through a key without the shard's lock: no atomic
//! read-modify-write on a shared lock word per balance access, which on two
//! cores passed the lock's cache line back and forth and serialised the
//! record misses of a batch. The lock guards the table and the arena's fill
//! mark only.

use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock};

use crossbeam_utils::CachePadded;
use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use hashbrown::{DefaultHashBuilder, HashTable};
use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::phase::{BalanceSummary, Directory, Refusal, Work};
use crate::sync::{AtomicU64, Ordering};
/// Longest account id accepted, in bytes.
pub const MAX_ACCOUNT_ID_BYTES: usize = 255;

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;
/// Words a shard's arena may hold: record offsets are 24 bits of a slot.
const MAX_SHARD_WORDS: usize = 1 << 24;

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
    shards: Box<[ShardLock]>,
    /// `arenas[s]` holds the records of `shards[s]`.
    arenas: Box<[Arena]>,
}

/// A shard's table behind a reader-writer lock whose readers on different
/// cores do not write one cache line: crossbeam's `ShardedLock`, one lock
/// per group of threads, all of them taken by a writer. Every transfer by
/// name reads two shards; only account creation writes one. (A plain
/// reader-writer lock's read is a read-modify-write of its lock word, which
/// the two cores then pass back and forth, next to the table header every
/// lookup reads.) Poisoning is ignored, as `parking_lot` did: nothing under
/// the write lock leaves the shard half-changed before it can panic.
struct ShardLock(ShardedLock<Shard>);

/// Heap bytes of one `ShardLock` beside its inline size: crossbeam keeps
/// eight cache-padded locks per `ShardedLock`.
const SHARD_LOCK_HEAP_BYTES: usize = 8 * std::mem::size_of::<CachePadded<u8>>();

impl ShardLock {
    fn new(shard: Shard) -> Self {
        ShardLock(ShardedLock::new(shard))
    }

    fn read(&self) -> ShardedLockReadGuard<'_, Shard> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> ShardedLockWriteGuard<'_, Shard> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One shard's table of slots (see [`Slot`]) over its arena's records, and
/// how far the arena is written.
struct Shard {
    table: HashTable<u32>,
    /// Words of the arena in use (records and the chunk tails skipped).
    filled: usize,
}

/// Chunks an arena may have: enough for [`MAX_SHARD_WORDS`] from the
/// smallest base.
const MAX_CHUNKS: usize = 24;
/// The smallest first chunk, in words.
const MIN_BASE_BITS: u32 = 8;

/// A shard's records: words in chunks that never move once allocated.
/// Chunk 0 holds words `[0, first)` (the room asked for, exactly); chunk
/// `k ≥ 1` the next `base·2ᵏ⁻¹` words (`base` a power of two near `first`),
/// so growing by a chunk costs what a `Vec` doubling would, with no copy. A
/// record never straddles two chunks (a chunk's tail too short for the next
/// record is skipped). Words are atomics because balances change without
/// the shard's lock; id words are written once, under the shard's write
/// lock, before their slot is inserted, and only read afterwards.
struct Arena {
    first: usize,
    base_bits: u32,
    chunks: [OnceLock<Box<[AtomicU64]>>; MAX_CHUNKS],
}

impl Arena {
    /// An arena whose first chunk holds `words` words.
    fn new(words: usize) -> Self {
        let base_bits = words.checked_ilog2().unwrap_or(0).max(MIN_BASE_BITS);
        let arena = Arena { first: words, base_bits, chunks: std::array::from_fn(|_| OnceLock::new()) };
        if words > 0 {
            arena.chunk(0);
        }
        arena
    }

    /// The chunk holding word `offset`, and the offset of its first word.
    fn locate(&self, offset: usize) -> (usize, usize) {
        let Some(beyond) = offset.checked_sub(self.first) else { return (0, 0) };
        let k = ((beyond >> self.base_bits) + 1).ilog2() as usize;
        (k + 1, self.first + (((1 << k) - 1) << self.base_bits))
    }

    fn chunk_words(&self, k: usize) -> usize {
        match k {
            0 => self.first,
            k => 1 << (self.base_bits as usize + k - 1),
        }
    }

    /// Chunk `k`, allocated (zeroed) if it was not (under the write lock).
    fn chunk(&self, k: usize) -> &[AtomicU64] {
        self.chunks[k].get_or_init(|| (0..self.chunk_words(k)).map(|_| AtomicU64::new(0)).collect())
    }

    /// The `len` words from `offset`, if they lie in one allocated chunk.
    fn words(&self, offset: usize, len: usize) -> Option<&[AtomicU64]> {
        let (k, start) = self.locate(offset);
        let chunk = self.chunks.get(k)?.get()?;
        chunk.get(offset - start..offset - start + len)
    }

    /// Where a record of `len` words goes when `filled` words are in use:
    /// at `filled`, or at the next chunk's start if it would straddle.
    fn place(&self, filled: usize, len: usize) -> usize {
        let (k, start) = self.locate(filled);
        let end = start + self.chunk_words(k);
        if filled + len <= end { filled } else { end }
    }

    /// Heap bytes of the allocated chunks.
    fn allocated_bytes(&self) -> usize {
        (0..MAX_CHUNKS)
            .filter(|&k| self.chunks[k].get().is_some())
            .map(|k| self.chunk_words(k) * std::mem::size_of::<AtomicU64>())
            .sum()
    }
}

/// A table slot: `offset << 8 | id length`. The account's key (see
/// [`key`]) is the slot with the shard number above it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot(u32);

impl Slot {
    fn new(offset: usize, len: usize) -> Option<Slot> {
        debug_assert!(len <= MAX_ACCOUNT_ID_BYTES);
        (offset < MAX_SHARD_WORDS).then_some(Slot(((offset as u32) << 8) | len as u32))
    }
    fn offset(self) -> usize {
        (self.0 >> 8) as usize
    }
    fn len(self) -> usize {
        (self.0 & 0xff) as usize
    }
    /// Words of the record: the balance, then the id.
    fn words(self) -> usize {
        record_words(self.len())
    }
}

/// Words of the record of an id of `len` bytes: the balance, then the id.
fn record_words(len: usize) -> usize {
    1 + len.div_ceil(8)
}

/// Up to eight id bytes as one little-endian, zero-padded word.
fn word_of(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..chunk.len()].copy_from_slice(chunk);
    u64::from_le_bytes(bytes)
}

impl Shard {
    /// Whether `slot` is a whole written record of this shard (whose arena
    /// is `arena`) holding id `id`.
    fn holds(&self, arena: &Arena, slot: Slot, id: &[u8]) -> bool {
        // Relaxed: id words never change after the record was published
        // under the write lock, which the caller's read lock orders after.
        slot.len() == id.len()
            && slot.offset() + slot.words() <= self.filled
            && arena.words(slot.offset(), slot.words()).is_some_and(|record| {
                id.chunks(8).zip(&record[1..]).all(|(c, w)| w.load(Ordering::Relaxed) == word_of(c))
            })
    }

    fn find(&self, arena: &Arena, hash: u64, id: &[u8]) -> Option<Slot> {
        self.table.find(hash, |&s| self.holds(arena, Slot(s), id)).map(|&s| Slot(s))
    }
}

/// The record at `slot`, which must be one this arena's shard handed out.
fn record(arena: &Arena, slot: Slot) -> &[AtomicU64] {
    arena.words(slot.offset(), slot.words()).expect("a slot of this shard lies in an allocated chunk")
}

/// Runs `f` on the id of the record at `slot` of a shard's arena, unpacked
/// into a stack buffer (no allocation: the table rehashes through this).
fn with_id<R>(arena: &Arena, slot: Slot, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; MAX_ACCOUNT_ID_BYTES.next_multiple_of(8)];
    let record = &record(arena, slot)[1..];
    for (chunk, word) in buf.chunks_exact_mut(8).zip(record) {
        chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    f(&buf[..slot.len()])
}

fn key(shard: usize, slot: Slot) -> u64 {
    ((shard as u64) << 32) | u64::from(slot.0)
}

fn split(key: u64) -> (usize, Slot) {
    ((key >> 32) as usize, Slot((key & 0xffff_ffff) as u32))
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
            .map(|_| ShardLock::new(Shard { table: HashTable::with_capacity(per_shard), filled: 0 }))
            .collect();
        // A balance and a 9–16 byte id per account, for a thirty-second more
        // accounts and 16 more: hashing spreads them unevenly (a standard
        // deviation of √n per shard, 0.25 % at 10⁷ accounts, 25 % at 10³),
        // and every word is touched when a chunk is made, so slack is
        // resident memory. A shard past its room adds a chunk.
        let words = per_shard.saturating_add(per_shard / 32 + 16).saturating_mul(3).min(MAX_SHARD_WORDS);
        let arenas = (0..SHARDS).map(|_| Arena::new(words)).collect();
        Self { core: Arc::new(LedgerCore { hasher: DefaultHashBuilder::default(), shards, arenas }) }
    }

    /// Creates an account with a starting balance (≥ 0).
    pub fn create_account(&self, id: &str, balance: i64) -> Result<()> {
        validate_account_id(id)?;
        if balance < 0 {
            return Err(Error::InvalidBalance { account: id.to_string(), balance });
        }
        let hash = self.core.hasher.hash_one(id.as_bytes());
        let s = shard_of(hash);
        let arena = &self.core.arenas[s];
        let mut shard = self.core.shards[s].write();
        if shard.find(arena, hash, id.as_bytes()).is_some() {
            return Err(Error::AccountExists { service: String::new(), account: id.to_string() });
        }
        let words = record_words(id.len());
        let offset = arena.place(shard.filled, words);
        let slot = Slot::new(offset, id.len())
            .filter(|slot| slot.offset() + slot.words() <= MAX_SHARD_WORDS)
            .ok_or_else(|| Error::Config("ledger shard full (2^24 words of accounts)".into()))?;
        // Under the write lock: nobody reads these words before the slot
        // is in the table (the readers' lock orders them after).
        let (k, _) = arena.locate(offset);
        arena.chunk(k);
        let record = record(arena, slot);
        record[0].store(balance as u64, Ordering::Relaxed);
        for (word, chunk) in record[1..].iter().zip(id.as_bytes().chunks(8)) {
            word.store(word_of(chunk), Ordering::Relaxed);
        }
        shard.filled = offset + words;
        let hasher = &self.core.hasher;
        shard.table.insert_unique(hash, slot.0, |&s| with_id(arena, Slot(s), |id| hasher.hash_one(id)));
        Ok(())
    }

    /// The current balance of `id` (not isolated from transactions in flight).
    pub fn balance(&self, id: &str) -> Option<i64> {
        self.lookup(id).map(|k| self.balance_of(k))
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.core.shards.iter().map(|s| s.read().table.len()).sum()
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
            .zip(self.core.arenas.iter())
            .map(|(s, arena)| s.read().table.allocation_size() + arena.allocated_bytes())
            .sum::<usize>()
            + SHARDS * (std::mem::size_of::<ShardLock>() + SHARD_LOCK_HEAP_BYTES + std::mem::size_of::<Arena>())
    }

    /// Sum, count and negatives over all accounts (not isolated).
    pub fn summary(&self) -> BalanceSummary {
        let mut sum = BalanceSummary::default();
        for (shard, arena) in self.core.shards.iter().zip(self.core.arenas.iter()) {
            let shard = shard.read();
            for &slot in shard.table.iter() {
                // Relaxed: the coordinator's locks order this read against
                // commits; the value itself is a plain counter.
                let v = record(arena, Slot(slot))[0].load(Ordering::Relaxed) as i64;
                sum.accounts += 1;
                sum.total += i128::from(v);
                sum.negative += u64::from(v < 0);
            }
        }
        sum
    }

    /// Every account and balance, in no particular order (for snapshots).
    pub fn for_each_account(&self, mut f: impl FnMut(&str, i64)) {
        for (shard, arena) in self.core.shards.iter().zip(self.core.arenas.iter()) {
            let shard = shard.read();
            for &slot in shard.table.iter() {
                let balance = record(arena, Slot(slot))[0].load(Ordering::Relaxed) as i64;
                // Ids were `&str`s when created, so they are UTF-8.
                with_id(arena, Slot(slot), |id| f(std::str::from_utf8(id).unwrap_or(""), balance));
            }
        }
    }

    /// Sets the balance of an existing account, or creates it (recovery).
    pub(crate) fn put(&self, id: &str, balance: i64) -> Result<()> {
        match self.lookup(id) {
            Some(k) => {
                self.with_balance(k, |b| b.store(balance as u64, Ordering::Relaxed));
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
        self.with_balance(key, |b| b.fetch_add(delta as u64, Ordering::Relaxed));
        Ok(())
    }

    pub(crate) fn lookup(&self, id: &str) -> Option<u64> {
        self.core.lookup(id)
    }

    /// Runs `f` on the balance word of `key` (a key this ledger handed out:
    /// its record is written and its chunk never moves, so no lock is
    /// taken), an `i64`'s bits (two's complement: adding a delta is the same
    /// operation).
    fn with_balance<R>(&self, key: u64, f: impl FnOnce(&AtomicU64) -> R) -> R {
        let (s, slot) = split(key);
        let word = self.core.arenas.get(s).and_then(|arena| arena.words(slot.offset(), 1));
        f(word.map(|w| &w[0]).unwrap_or_else(|| panic!("ledger key {key:#x} is not this ledger's")))
    }

    /// The balance of `key` read without any lock, to bring its record into
    /// the cache ahead of a locked check (the value may be stale).
    pub(crate) fn peek(&self, key: u64) -> i64 {
        self.balance_of(key)
    }

    fn balance_of(&self, key: u64) -> i64 {
        // Relaxed: see `summary`.
        self.with_balance(key, |b| b.load(Ordering::Relaxed) as i64)
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
        // Wrapping on the bits is `i64` addition; `check` excluded overflow.
        self.with_balance(key, |b| b.fetch_add(delta as u64, Ordering::Relaxed));
    }

    /// Whether `key` is this ledger's key of `account`: a key from
    /// elsewhere is looked up again by id instead of being trusted.
    fn is_key_of(&self, key: u64, account: &str) -> bool {
        let (s, slot) = split(key);
        s < SHARDS && self.core.shards[s].read().holds(&self.core.arenas[s], slot, account.as_bytes())
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
        self.shards[s].read().find(&self.arenas[s], hash, account.as_bytes()).map(|i| key(s, i))
    }

    /// An account keeps its record (and key) for the life of the ledger;
    /// `hold` also checks every key it is given against the account's id.
    fn keys_are_stable(&self) -> bool {
        true
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
                .filter(|k| self.is_key_of(*k, op.account))
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
            self.with_balance(key, |b| b.fetch_add(delta as u64, Ordering::Relaxed));
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
    use crate::phase::Operation;

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

    #[test]
    fn arena_chunks_tile_the_offsets_and_records_never_straddle() {
        for first in [0, 1, 3, 255, 256, 1000, 4096, 527_000] {
            let arena = Arena::new(first);
            let (mut k, mut start) = (usize::from(first == 0), 0);
            while start < MAX_SHARD_WORDS + 64 {
                let words = arena.chunk_words(k);
                assert!(words > 0 && k < MAX_CHUNKS, "first {first}: chunk {k}");
                for offset in [start, start + words / 2, start + words - 1] {
                    assert_eq!(arena.locate(offset), (k, start), "first {first}, offset {offset}");
                }
                for len in [2, 33] {
                    // A record that would cross the end goes to the next chunk.
                    let end = start + words;
                    assert_eq!(arena.place(end - len, len), end - len);
                    if len <= words {
                        assert_eq!(arena.place(end - len + 1, len), end, "first {first}, chunk {k}");
                    }
                }
                (k, start) = (k + 1, start + words);
            }
            // Only the first chunk exists up front; words of others are not there.
            assert!(arena.words(first, 1).is_none(), "first {first}");
            assert_eq!(arena.allocated_bytes(), first * 8);
        }
    }

    #[test]
    fn accounts_spread_over_many_chunks_keep_ids_and_balances() {
        // Long ids from an empty ledger: each shard grows through several
        // chunks and skips chunk tails.
        let l = Ledger::new();
        let ids: Vec<String> = (0..6_000).map(|i| format!("{i:0>200}")).collect();
        for (i, id) in ids.iter().enumerate() {
            l.create_account(id, i as i64).unwrap();
        }
        let chunks = l.core.arenas.iter().map(|a| a.chunks.iter().filter(|c| c.get().is_some()).count()).max();
        assert!(chunks >= Some(3), "{chunks:?} chunks");
        for (i, id) in ids.iter().enumerate() {
            let key = l.lookup(id).unwrap();
            assert!(l.is_key_of(key, id));
            assert_eq!(l.balance_of(key), i as i64, "{id}");
        }
        // 26 words a record, about twice that allocated at most.
        assert!(l.memory_bytes() < 6_000 * 26 * 8 * 3, "{} bytes", l.memory_bytes());
    }

    #[test]
    fn balances_are_read_and_changed_while_accounts_are_created() {
        // Creation allocates new chunks while other threads read and change
        // existing records through their keys without the shard's lock:
        // every record stays where its key says, with its own balance.
        let l = Ledger::new();
        let old: Vec<String> = (0..2_000).map(|i| format!("old-{i}")).collect();
        for id in &old {
            l.create_account(id, 1_000).unwrap();
        }
        let keys: Vec<u64> = old.iter().map(|id| l.lookup(id).unwrap()).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..30_000 {
                    l.create_account(&format!("new-{i:0>40}"), 5).unwrap();
                }
            });
            for t in 0..2 {
                let (l, keys, old) = (&l, &keys, &old);
                s.spawn(move || {
                    for round in 0..200 {
                        // Each thread moves money only among its own half.
                        for pair in keys[t * 1_000..(t + 1) * 1_000].chunks(2) {
                            let delta = if round % 2 == 0 { 7 } else { -7 };
                            l.apply(pair[0], -delta);
                            l.apply(pair[1], delta);
                        }
                        let (i, key) = (round * 5 % 2_000, keys[round * 5 % 2_000]);
                        assert!(l.is_key_of(key, &old[i]), "{} moved", old[i]);
                    }
                });
            }
        });
        assert!(keys.iter().all(|&k| l.balance_of(k) == 1_000), "every pair is back where it started");
        assert_eq!(l.len(), 32_000);
        assert_eq!(l.summary().total, 2_000 * 1_000 + 30_000 * 5);
        assert_eq!(l.balance(&format!("new-{:0>40}", 29_999)), Some(5));
    }

    #[test]
    fn ids_of_every_length_and_content_round_trip() {
        let l = Ledger::new();
        // Every length, ids that share prefixes, differ only in the last
        // byte or only in length, and hold NUL and multi-byte characters.
        let mut ids: Vec<String> = (1..=MAX_ACCOUNT_ID_BYTES).map(|n| "a".repeat(n)).collect();
        ids.extend((1..=40).map(|n| format!("{}b", "a".repeat(n - 1))));
        ids.extend(["\0", "\0\0", "a\0", "é", "ü-ключ-🦀", "acct-1", "acct-10", "acct-100"].map(String::from));
        for (i, id) in ids.iter().enumerate() {
            l.create_account(id, i as i64).unwrap_or_else(|e| panic!("{id:?}: {e}"));
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(l.balance(id), Some(i as i64), "{id:?}");
        }
        assert_eq!(l.balance("a".repeat(256).as_str()), None);
        assert_eq!(l.balance("acct-1000"), None);
        let mut seen = Vec::new();
        l.for_each_account(|id, b| seen.push((id.to_string(), b)));
        seen.sort();
        let mut want: Vec<(String, i64)> = ids.iter().enumerate().map(|(i, id)| (id.clone(), i as i64)).collect();
        want.sort();
        assert_eq!(seen, want);
        let summary = l.summary();
        assert_eq!(summary.accounts, ids.len() as u64);
        assert_eq!(summary.total, want.iter().map(|(_, b)| i128::from(*b)).sum::<i128>());
    }

    #[test]
    fn balances_keep_their_sign_and_range() {
        let l = Ledger::new();
        l.create_account("x", i64::MAX - 1).unwrap();
        l.create_account("y", 0).unwrap();
        let (x, y) = (l.lookup("x").unwrap(), l.lookup("y").unwrap());
        assert_eq!(l.check(x, 1), Ok(()));
        assert_eq!(l.check(x, 2), Err(false), "overflow");
        assert_eq!(l.check(y, -1), Err(true), "insufficient funds");
        l.apply(y, 5);
        l.apply(y, -7);
        assert_eq!(l.balance("y"), Some(-2), "negative balances read back signed");
        l.put("y", i64::MIN).unwrap();
        assert_eq!(l.balance("y"), Some(i64::MIN));
    }

    #[test]
    fn a_key_from_elsewhere_is_looked_up_again() {
        let (a, b) = (Ledger::new(), Ledger::new());
        a.create_account("only-in-a", 10).unwrap();
        for i in 0..50 {
            b.create_account(&format!("b-{i}"), 1).unwrap();
        }
        a.create_account("shared", 7).unwrap();
        let foreign = b.lookup("b-3").unwrap();
        assert!(!a.is_key_of(foreign, "shared"));
        assert!(!a.is_key_of(u64::MAX, "shared"), "a key past every shard");
        assert!(a.is_key_of(a.lookup("shared").unwrap(), "shared"));
        let ops = [Operation { account: "shared", key: Some(foreign), delta: -7 }];
        let hold = a.hold(Work::Transfers(&ops)).unwrap();
        a.commit_hold(&hold);
        assert_eq!(a.balance("shared"), Some(0), "the foreign key was not trusted");
        assert_eq!(b.balance("b-3"), Some(1));
    }
}
