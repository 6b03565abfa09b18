//! Log space reservation: the lock-free cursor every append claims its range
//! from.
//!
//! The log is a sequence of fixed-size segments; a record never crosses a
//! segment boundary. A writer claims `[start, start + size)` with one
//! compare-and-swap on the cursor. A writer whose record does not fit in what
//! is left of the segment claims the rest of it instead (`Claim::Seal`), fills
//! it with padding, and tries again in the next segment. Exclusivity of
//! ranges needs only the atomicity of the read-modify-write, so every access
//! is Relaxed; segment readiness is ordered by the ring's own Acquire
//! (`segment::Ring::is_ready`), which the caller's `prepare` performs.
//!
//! Properties (checked by `tests/loom_reserve.rs` through the `sync` shim):
//! claimed ranges are disjoint and together cover `[start, cursor)` without a
//! gap; no record crosses a segment boundary; a seal ends exactly at one, and
//! each segment is sealed at most once.

use crate::sync::{AtomicU64, Ordering};

/// What one successful attempt claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// `[start, start + size)` is the caller's record.
    Record {
        /// First position of the record.
        start: u64,
    },
    /// `[start, end)`, the tail of a segment too full for the record, is the
    /// caller's to fill with padding; the record goes into the next segment.
    Seal {
        /// First position of the tail.
        start: u64,
        /// The segment's end (the next segment's first position).
        end: u64,
    },
}

/// The next free log position; everything below it is claimed.
#[derive(Debug)]
pub struct Cursor {
    next: AtomicU64,
    segment_bytes: u64,
    #[cfg(loom)]
    broken: bool,
}

impl Cursor {
    /// A cursor at `position` over segments of `segment_bytes`.
    pub fn new(position: u64, segment_bytes: u64) -> Self {
        assert!(segment_bytes > 0, "segments have a size");
        Cursor {
            next: AtomicU64::new(position),
            segment_bytes,
            #[cfg(loom)]
            broken: false,
        }
    }

    /// A cursor that claims with a load and a store instead of a
    /// compare-and-swap (only for the loom model's broken variant).
    #[cfg(loom)]
    pub fn broken(position: u64, segment_bytes: u64) -> Self {
        Cursor { broken: true, ..Cursor::new(position, segment_bytes) }
    }

    /// Everything below this position is claimed.
    pub fn position(&self) -> u64 {
        // Relaxed: see the module comment. A caller compares it with
        // positions it got from its own claims or through some other
        // synchronization, so this read is at least that new.
        self.next.load(Ordering::Relaxed)
    }

    /// One attempt to claim `size` bytes (at most one segment). `prepare` is
    /// called with the segment the claim would touch (the current one for a
    /// record, the next one before sealing, so that a full log leaves
    /// nothing claimed) and may refuse. `Ok(None)`: another writer moved the
    /// cursor first; try again.
    pub fn attempt<E>(&self, size: u64, mut prepare: impl FnMut(u64) -> Result<(), E>) -> Result<Option<Claim>, E> {
        debug_assert!(size > 0 && size <= self.segment_bytes);
        let current = self.position();
        let id = current / self.segment_bytes;
        let segment_end = (id + 1) * self.segment_bytes;
        if current + size <= segment_end {
            prepare(id)?;
            Ok(self.swap(current, current + size).then_some(Claim::Record { start: current }))
        } else {
            prepare(id + 1)?;
            Ok(self.swap(current, segment_end).then_some(Claim::Seal { start: current, end: segment_end }))
        }
    }

    /// Claims `size` bytes only if they fit in the current segment and
    /// `ready(segment)` holds; never seals. Retries lost races itself.
    pub fn claim_in_segment(&self, size: u64, ready: impl Fn(u64) -> bool) -> Option<u64> {
        loop {
            let current = self.position();
            let id = current / self.segment_bytes;
            if current + size > (id + 1) * self.segment_bytes || !ready(id) {
                return None;
            }
            if self.swap(current, current + size) {
                return Some(current);
            }
        }
    }

    fn swap(&self, current: u64, new: u64) -> bool {
        #[cfg(loom)]
        if self.broken {
            // Broken on purpose: another writer may claim between the two.
            let _ = self.next.load(Ordering::Relaxed);
            self.next.store(new, Ordering::Relaxed);
            return true;
        }
        // Relaxed: see the module comment.
        self.next.compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn records_fill_a_segment_then_the_tail_is_sealed() {
        let cursor = Cursor::new(0, 64);
        let mut seen = Vec::new();
        let ok = |_| Ok::<(), ()>(());
        assert_eq!(cursor.attempt(24, ok), Ok(Some(Claim::Record { start: 0 })));
        assert_eq!(cursor.attempt(24, ok), Ok(Some(Claim::Record { start: 24 })));
        assert_eq!(
            cursor.attempt(24, |id| {
                seen.push(id);
                Ok::<(), ()>(())
            }),
            Ok(Some(Claim::Seal { start: 48, end: 64 }))
        );
        assert_eq!(seen, vec![1], "the next segment is prepared before the seal");
        assert_eq!(cursor.attempt(24, ok), Ok(Some(Claim::Record { start: 64 })));
        assert_eq!(cursor.position(), 88);
    }

    #[test]
    fn a_refused_prepare_claims_nothing() {
        let cursor = Cursor::new(56, 64);
        assert_eq!(cursor.attempt(16, |_| Err("full")), Err("full"));
        assert_eq!(cursor.position(), 56);
    }

    #[test]
    fn claim_in_segment_never_seals() {
        let cursor = Cursor::new(56, 64);
        assert_eq!(cursor.claim_in_segment(16, |_| true), None);
        assert_eq!(cursor.claim_in_segment(8, |_| false), None);
        assert_eq!(cursor.claim_in_segment(8, |_| true), Some(56));
        assert_eq!(cursor.position(), 64);
    }
}
