//! Transaction ids: the one piece of transaction vocabulary the error type
//! needs, kept as a leaf so that `error.rs` and `txn.rs` do not import each
//! other.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering, THREAD_SHARDS, thread_shard};

/// A 128-bit transaction id, unique within a process and ordered by time.
///
/// The high 64 bits are a logical clock in nanoseconds since the Unix epoch
/// (never less than the previous id's, so ids stay strictly increasing even if
/// the wall clock steps back); the low 64 bits are chosen once per
/// coordinator, so ids of two processes do not collide.
///
/// ```
/// use dtc::TxId;
/// let id: TxId = "0000000000000001000000000000002a".parse().unwrap();
/// assert_eq!(id.as_u128(), (1u128 << 64) | 42);
/// assert_eq!(id.to_string(), "0000000000000001000000000000002a");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(u128);

impl TxId {
    /// The id with this numeric value.
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }
    /// The numeric value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
    /// The logical timestamp part (nanoseconds since the Unix epoch).
    pub const fn timestamp_ns(self) -> u64 {
        (self.0 >> 64) as u64
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxId({:032x})", self.0)
    }
}

/// Why a string is not a [`TxId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a transaction id (1 to 32 hex digits expected): {0:?}")]
pub struct ParseTxIdError(pub String);

impl FromStr for TxId {
    type Err = ParseTxIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() || t.len() > 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseTxIdError(s.to_string()));
        }
        u128::from_str_radix(t, 16).map(TxId).map_err(|_| ParseTxIdError(s.to_string()))
    }
}

/// Serialized as its 32-digit hex form, like `Display`.
impl serde::Serialize for TxId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TxId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Hands out unique, time-ordered ids without a shared hot location.
///
/// An id is `(unix ns << 64) | (salt ^ shard)`: each thread shard (see
/// [`thread_shard`]) keeps its own last timestamp in its own cache line and
/// never repeats it, and ids of different shards differ in their low bits,
/// so ids are unique without every transaction of every core
/// compare-and-swapping one word. They increase strictly along one thread,
/// and across threads as far as the clock tells events apart (two cores may
/// draw the same nanosecond; their ids are then ordered by shard). `observe`
/// raises one shared floor that every shard starts above (after recovery,
/// and for callers' ids), read on each `next` but written only when it
/// rises.
#[derive(Debug)]
pub(crate) struct TxIdGen {
    last_ns: [CachePadded<AtomicU64>; THREAD_SHARDS],
    floor_ns: CachePadded<AtomicU64>,
    salt: u64,
}

impl TxIdGen {
    pub(crate) fn new(salt: u64) -> Self {
        Self {
            last_ns: std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))),
            floor_ns: CachePadded::new(AtomicU64::new(0)),
            salt,
        }
    }

    pub(crate) fn next(&self) -> TxId {
        let shard = thread_shard();
        // Relaxed is enough: uniqueness comes from the CAS on the shard's
        // location, and no other memory is published through it. The floor
        // is a lower bound; a stale read of it is covered by `observe`'s
        // callers ordering their own ids (recovery runs before any `next`).
        let floor = self.floor_ns.load(Ordering::Relaxed);
        let now = unix_nanos().max(floor.saturating_add(1));
        let last = &self.last_ns[shard];
        let mut prev = last.load(Ordering::Relaxed);
        loop {
            // `observe` only takes ids that passed `check_issued` (never far
            // in the future), so this cannot reach the end of time.
            debug_assert!(prev < u64::MAX, "id clock exhausted");
            let next = now.max(prev.saturating_add(1));
            match last.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return TxId(((next as u128) << 64) | u128::from(self.salt ^ shard as u64)),
                Err(actual) => prev = actual,
            }
        }
    }

    /// Never hand out an id at or below `seen` again (after recovery).
    pub(crate) fn observe(&self, seen: TxId) {
        let seen = seen.timestamp_ns();
        // Relaxed: see `next`. Read first so that the common case (an id
        // below the floor) does not write the shared line.
        if self.floor_ns.load(Ordering::Relaxed) < seen {
            self.floor_ns.fetch_max(seen, Ordering::Relaxed);
        }
    }
}

/// How far ahead of this machine's clock a caller's id may be (clock skew
/// between machines): an id further in the future is refused, since it would
/// drag the id clock forward and outlive every horizon.
pub const MAX_ID_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}
