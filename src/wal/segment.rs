//! Segment naming and the ring of segment files.
//!
//! Segment `id` covers the global positions `[id * S, (id + 1) * S)`, S being
//! the segment size. At most `max_segments` ids are live at once
//! (`first_live..first_live + max_segments`), so slot `id % max_segments` of
//! the ring can hold segment `id`. A slot keeps its file object for the life of
//! the log: recycling zero-fills the file and renames it to the new id, so a
//! writer can look its segment up with two atomic loads and no lock.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::WalError;
use super::storage::{LogBackend, SegmentFile, Storage};

const NO_SEGMENT: u64 = u64::MAX;

pub fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.wal")
}

/// The id of a segment file name, only for the canonical spelling
/// `segment_name` writes (16 lowercase hex digits): `seg-1.wal`,
/// `seg-000000000000000A.wal` or `seg-+00000000000001.wal` would otherwise
/// alias a real segment under another name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".wal")?;
    parse_hex16(hex)
}

/// Exactly 16 lowercase hex digits.
pub fn parse_hex16(hex: &str) -> Option<u64> {
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// True for names the log would take for a segment file but cannot be one
/// (reported by `inspect`, otherwise ignored).
pub fn looks_like_segment(name: &str) -> bool {
    name.starts_with("seg-") && name.ends_with(".wal")
}

/// First position of segment `id`, if every position of the segment fits a
/// u64 (a stray `seg-fffffffffffffff0.wal` does not).
pub fn segment_base(id: u64, segment_bytes: u64) -> Option<u64> {
    let base = id.checked_mul(segment_bytes)?;
    base.checked_add(segment_bytes)?;
    Some(base)
}

#[derive(Debug)]
struct Slot {
    file: OnceLock<Arc<dyn SegmentFile>>,
    /// Id of the segment this slot's file currently holds, or `NO_SEGMENT`.
    hosted: AtomicU64,
}

#[derive(Debug)]
pub struct Ring {
    slots: Box<[Slot]>,
    segment_bytes: u64,
    /// Segments below this id exist under their name, were zeroed before use
    /// and the directory entry is durable. Only grows.
    ready_end: AtomicU64,
    /// Segments below this id are covered by a durable checkpoint and may be
    /// recycled. Only grows.
    first_live: AtomicU64,
    /// Serializes preparing segments (creating or recycling files).
    prepare_lock: Mutex<()>,
    /// How new segment files are written.
    backend: LogBackend,
}

impl Ring {
    pub fn new(max_segments: usize, segment_bytes: u64, first_live: u64, backend: LogBackend) -> Self {
        let slots =
            (0..max_segments).map(|_| Slot { file: OnceLock::new(), hosted: AtomicU64::new(NO_SEGMENT) }).collect();
        Ring {
            slots,
            segment_bytes,
            ready_end: AtomicU64::new(first_live),
            first_live: AtomicU64::new(first_live),
            prepare_lock: Mutex::new(()),
            backend,
        }
    }

    fn slot(&self, id: u64) -> &Slot {
        &self.slots[(id % self.slots.len() as u64) as usize]
    }

    /// Installs an existing file for segment `id` (while opening, before the
    /// ring is shared). Returns false if the slot is already taken.
    pub fn install(&self, id: u64, file: Arc<dyn SegmentFile>) -> bool {
        let slot = self.slot(id);
        if slot.file.set(file).is_err() {
            return false;
        }
        // Relaxed: the ring is not shared yet; sharing it (Arc, thread spawn)
        // publishes these stores.
        slot.hosted.store(id, Ordering::Relaxed);
        true
    }

    /// Marks segments below `id` as ready (while opening).
    pub fn set_ready_end(&self, id: u64) {
        // Relaxed: only called before the ring is shared.
        self.ready_end.store(id, Ordering::Relaxed);
    }

    pub fn is_ready(&self, id: u64) -> bool {
        // Acquire: pairs with the Release in `prepare`, so the slot's file and
        // hosted id written before it are visible to this thread.
        self.ready_end.load(Ordering::Acquire) > id
    }

    pub fn ready_end(&self) -> u64 {
        // Acquire: see `is_ready`.
        self.ready_end.load(Ordering::Acquire)
    }

    pub fn first_live(&self) -> u64 {
        // Acquire: pairs with the Release in `advance_first_live`.
        self.first_live.load(Ordering::Acquire)
    }

    /// Segments below `id` are covered by a durable checkpoint.
    pub fn advance_first_live(&self, id: u64) {
        // Release: the checkpoint was made durable before; a preparer that
        // sees the new value recycles only after it.
        self.first_live.fetch_max(id, Ordering::Release);
    }

    /// The file of segment `id` if it is ready and hosted.
    pub fn file(&self, id: u64) -> Option<&Arc<dyn SegmentFile>> {
        let slot = self.slot(id);
        // Acquire: pairs with the Release stores of `prepare` / `install`.
        if slot.hosted.load(Ordering::Acquire) != id {
            return None;
        }
        slot.file.get()
    }

    /// Makes every segment up to `id` ready, creating or recycling files in
    /// order. Fails with `LogFull` when `id` is not allowed yet.
    pub fn prepare(&self, storage: &dyn Storage, id: u64) -> Result<(), WalError> {
        let _guard = self.prepare_lock.lock();
        loop {
            let next = self.ready_end();
            if next > id {
                return Ok(());
            }
            if next >= self.first_live() + self.slots.len() as u64 {
                return Err(WalError::LogFull { max_segments: self.slots.len() });
            }
            self.prepare_one(storage, next).map_err(|e| WalError::io("prepare segment", segment_name(next), e))?;
            // Release: publishes the slot's file and hosted id (stored in
            // `prepare_one`) to reservers that Acquire-load `ready_end`.
            self.ready_end.store(next + 1, Ordering::Release);
        }
    }

    fn prepare_one(&self, storage: &dyn Storage, id: u64) -> io::Result<()> {
        let slot = self.slot(id);
        match slot.file.get() {
            None => {
                let file = storage.create_segment(&segment_name(id), self.segment_bytes, self.backend)?;
                if slot.file.set(file).is_err() {
                    return Err(io::Error::other("segment slot filled twice"));
                }
            }
            Some(file) => {
                // Relaxed: written only under `prepare_lock`, which we hold.
                let old = slot.hosted.load(Ordering::Relaxed);
                debug_assert!(old == NO_SEGMENT || old < self.first_live());
                // Zero first, then rename: a crash in between leaves a zeroed
                // file under an obsolete name, which recovery ignores.
                file.zero_fill()?;
                file.sync(0, file.len())?;
                if old != NO_SEGMENT {
                    storage.rename(&segment_name(old), &segment_name(id))?;
                }
                storage.sync_dir()?;
            }
        }
        // Release: see `prepare`; also read by `file` directly.
        slot.hosted.store(id, Ordering::Release);
        Ok(())
    }

    /// Number of segment files holding live segments.
    pub fn live_segments(&self) -> u64 {
        self.ready_end().saturating_sub(self.first_live())
    }
}
