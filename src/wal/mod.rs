//! The write-ahead log: fixed-size segment files (written with `pwrite` or
//! through a mapping, read with `pread`), lock-free appends, group commit,
//! crash recovery and checkpoints.
//!
//! Layout, invariants and crash analysis are in docs/design.md Part II. In
//! short:
//!
//! - A position (`Lsn`) is a byte of one unbounded log; segment `id` holds
//!   positions `[id * S, (id + 1) * S)`. Positions are never reused: a
//!   recycled file gets a new id and so new positions.
//! - `append` reserves a range with a CAS on the end position, copies the
//!   record into the mapping and publishes completion. A record never
//!   straddles segments: the writer that does not fit seals the segment with
//!   a padding record and moves on.
//! - `wait_durable` is group commit (see `group.rs`).
//! - Recovery stops at the first invalid record; it refuses to start only
//!   when it can prove the bad bytes had been synced (see `recovery.rs`).
//!
//! Reserved record kinds: 0 (never valid), 0xFE (sync marker), 0xFF
//! (padding). The engine uses 1..=0xFD.

// The log API is wider than the engine uses today (fault injection for
// tests, reads and batches for tools): the unused parts are kept on purpose.
#![allow(dead_code, unused_imports, missing_docs)]

mod checkpoint;
mod error;
mod format;
pub mod group;
mod memory;
// The crate's only `unsafe` code, audited there (`// SAFETY:` on each block).
#[allow(unsafe_code)]
mod mmap;
mod pwrite;
mod record;
mod recovery;
pub(crate) mod reserve;
mod segment;
mod segment_file;
mod storage;
#[cfg(all(test, not(loom)))]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;

// The id archive (`durable::ids`) reads its run files through this.
pub use storage::ReadFile;

pub use error::WalError;
pub use format::FORMAT_FILE;
pub use memory::{FaultKind, FaultOp, MemStorage};
pub use record::{KIND_PADDING, KIND_SYNC_MARKER};
pub use recovery::{Inspection, Problem, Record, Recovery, Verdict};
pub use storage::{FsStorage, LogBackend, SegmentFile, Storage};

use format::Format;
use group::{GroupCommit, WaitError};
use record::{HEADER_BYTES, encode_header, encode_padding, record_bytes};
use reserve::{Claim, Cursor};
use segment::{Ring, parse_segment_name, segment_name};

/// A byte position in the log. Monotonic, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Log configuration. Build it with `..WalConfig::default()`.
///
/// `segment_size_bytes` and `max_segments` are the on-disk format: they only
/// matter when a new log is created. A directory records them in its format
/// file (`FORMAT_FILE`), and `Wal::open` / `Wal::inspect` use the recorded
/// values whatever is asked here (`Wal::config` tells which).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of every segment file: a multiple of 4096, 8 KiB ..= 1 GiB.
    pub segment_size_bytes: u64,
    /// Live segment files at most (2 ..= 2^20); appending past them returns
    /// `WalError::LogFull` until a checkpoint frees segments.
    pub max_segments: usize,
    /// How segment files are written (`pwrite` + `fdatasync` by default, or
    /// through a shared mapping + `msync`); not part of the on-disk format.
    pub backend: LogBackend,
    /// A background thread creates or recycles the next segment ahead of need.
    pub preallocate_next: bool,
    /// Longest a sync leader waits for more writers to join its sync (never
    /// more than half the recent sync time; see `group::GroupCommit::gather`).
    /// Zero: sync at once.
    pub gather_limit: std::time::Duration,
    /// Group-commit syncs allowed in flight at once (1 ..= 4): the next
    /// group's sync starts while earlier ones run; acknowledgements stay in
    /// log order (docs/design.md, "Overlapping syncs"). 1: one at a time.
    pub syncs_in_flight: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_size_bytes: 64 << 20,
            max_segments: 4,
            backend: LogBackend::default(),
            preallocate_next: true,
            gather_limit: DEFAULT_GATHER_LIMIT,
            syncs_in_flight: DEFAULT_SYNCS_IN_FLIGHT,
        }
    }
}

/// See `WalConfig::syncs_in_flight`.
pub const DEFAULT_SYNCS_IN_FLIGHT: usize = 2;

/// See `WalConfig::gather_limit`.
pub const DEFAULT_GATHER_LIMIT: std::time::Duration = std::time::Duration::from_micros(200);

const PAGE_BYTES: u64 = 4096;
/// Most live segments a log may have.
const MAX_SEGMENTS_LIMIT: usize = 1 << 20;

impl WalConfig {
    pub(crate) fn validate(&self) -> Result<(), WalError> {
        let size = self.segment_size_bytes;
        let reason = if !size.is_multiple_of(PAGE_BYTES) {
            "segment_size_bytes must be a multiple of 4096"
        } else if !(8 << 10..=1 << 30).contains(&size) {
            "segment_size_bytes must be between 8 KiB and 1 GiB"
        } else if self.max_segments < 2 || self.max_segments > MAX_SEGMENTS_LIMIT {
            "max_segments must be between 2 and 2^20"
        } else if self.gather_limit > std::time::Duration::from_millis(10) {
            "gather_limit must be at most 10 ms"
        } else if !(1..=group::MAX_SYNCS_IN_FLIGHT).contains(&self.syncs_in_flight) {
            "syncs_in_flight must be between 1 and 4"
        } else {
            return Ok(());
        };
        Err(WalError::Config { reason: reason.into() })
    }

    /// Largest reservation (one record or one batch), a quarter of a segment,
    /// so that sealing wastes at most a quarter and a record always fits a
    /// fresh segment.
    pub fn max_record_bytes(&self) -> u64 {
        self.segment_size_bytes / 4
    }
}

/// Counters, read with `Wal::stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct WalStats {
    /// Completed group-commit syncs.
    pub syncs: u64,
    /// Engine records appended.
    pub records: u64,
    /// Bytes reserved for engine records (headers and alignment included).
    pub bytes_written: u64,
    /// Segment files holding live segments.
    pub segments_live: u64,
    pub records_per_sync: f64,
    pub sync_markers: u64,
    /// Segments sealed with padding.
    pub seals: u64,
    pub checkpoints: u64,
    pub sync_failures: u64,
    pub log_full_rejections: u64,
    pub durable_lsn: Lsn,
    pub end_lsn: Lsn,
    pub failed: bool,
}

#[derive(Debug, Default)]
struct Counters {
    syncs: AtomicU64,
    records: AtomicU64,
    bytes_written: AtomicU64,
    sync_markers: AtomicU64,
    seals: AtomicU64,
    checkpoints: AtomicU64,
    sync_failures: AtomicU64,
    log_full_rejections: AtomicU64,
}

// Relaxed everywhere: counters are statistics, no other memory depends on them.
fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

struct Shared {
    storage: Arc<dyn Storage>,
    config: WalConfig,
    segment_bytes: u64,
    /// Next free position: everything below is reserved.
    cursor: Cursor,
    group: GroupCommit,
    ring: Ring,
    /// Durable position stated by the newest sync marker (leader only).
    last_marker: AtomicU64,
    /// Newest checkpoint position; also serializes checkpoints.
    checkpoint: Mutex<u64>,
    counters: Counters,
}

struct Preallocator {
    requests: Sender<u64>,
    thread: JoinHandle<()>,
}

/// The log. `Send + Sync`; share it as `Arc<Wal>`.
pub struct Wal {
    shared: Arc<Shared>,
    preallocator: Option<Preallocator>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal").field("stats", &self.stats()).finish()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(preallocator) = self.preallocator.take() {
            drop(preallocator.requests);
            // A panic in the background thread has already been reported;
            // there is nothing more to do with it here.
            let _ = preallocator.thread.join();
        }
    }
}

fn failed(kind: std::io::ErrorKind) -> WalError {
    WalError::Failed { cause: kind }
}

impl Shared {
    fn segment_of(&self, position: u64) -> u64 {
        position / self.segment_bytes
    }

    fn file(&self, id: u64) -> Result<&Arc<dyn SegmentFile>, WalError> {
        self.ring.file(id).ok_or_else(|| {
            // A reservation is only granted in a ready segment, and a segment
            // is only recycled below a durable checkpoint, so this is a bug.
            debug_assert!(false, "segment {id} not ready for a granted reservation");
            WalError::io("look up segment", segment_name(id), std::io::Error::other("segment not ready"))
        })
    }

    fn ensure_ready(&self, id: u64) -> Result<(), WalError> {
        if self.ring.is_ready(id) {
            return Ok(());
        }
        self.ring.prepare(&*self.storage, id).inspect_err(|e| {
            if matches!(e, WalError::LogFull { .. }) {
                bump(&self.counters.log_full_rejections, 1);
            }
        })
    }

    /// Writes `parts` at `start` and publishes completion of `[start, end)`;
    /// a failed write fails the log (the range is then never completed).
    fn write_and_complete(&self, start: u64, end: u64, parts: &[&[u8]]) -> Result<(), WalError> {
        let id = self.segment_of(start);
        let file = match self.file(id) {
            Ok(file) => file,
            Err(e) => {
                // The range can never complete: fail the log so that no
                // leader waits for it forever.
                self.group.fail(std::io::ErrorKind::NotFound);
                return Err(e);
            }
        };
        let offset = start - id * self.segment_bytes;
        if let Err(e) = file.write_parts_at(offset, parts) {
            tracing::error!(segment = id, offset, error = %e, "write into a reserved range failed; the log is now failed");
            self.group.fail(e.kind());
            return Err(failed(e.kind()));
        }
        self.group.complete(start, end);
        Ok(())
    }

    /// Reserves `size` bytes inside one segment; seals segments that are too
    /// full on the way. Returns the start position.
    fn reserve(&self, size: u64, mut on_new_segment: impl FnMut(u64)) -> Result<u64, WalError> {
        debug_assert!(size <= self.config.max_record_bytes() && size.is_multiple_of(record::ALIGN_BYTES));
        loop {
            if let Some(f) = self.group.failure() {
                return Err(failed(f.0));
            }
            match self.cursor.attempt(size, |id| self.ensure_ready(id))? {
                Some(Claim::Record { start }) => return Ok(start),
                Some(Claim::Seal { start, end }) => {
                    self.seal(start, end)?;
                    on_new_segment(self.segment_of(end));
                }
                None => {}
            }
        }
    }

    /// Fills `[start, segment_end)` (we own it) with a padding record, or
    /// leaves it zero when it is shorter than a header.
    fn seal(&self, start: u64, segment_end: u64) -> Result<(), WalError> {
        bump(&self.counters.seals, 1);
        let gap = segment_end - start;
        if gap < HEADER_BYTES {
            self.group.complete(start, segment_end);
            return Ok(());
        }
        let id = self.segment_of(start);
        match encode_padding(start, id, gap) {
            Some(header) => self.write_and_complete(start, segment_end, &[&header]),
            None => {
                self.group.fail(std::io::ErrorKind::InvalidData);
                Err(failed(std::io::ErrorKind::InvalidData))
            }
        }
    }

    /// Leader hook: appends a sync marker stating `durable`, if it fits in
    /// the current segment without preparing or sealing anything.
    fn write_marker(&self, durable: u64) {
        // Relaxed: only the preparing leader reads and writes it; there is
        // one at a time, and the leader mutex (which sets and clears
        // `preparing`) orders successive ones.
        if durable == 0 || durable <= self.last_marker.load(Ordering::Relaxed) {
            return;
        }
        let size = record_bytes(record::SYNC_MARKER_PAYLOAD_BYTES);
        let Some(start) = self.cursor.claim_in_segment(size, |id| self.ring.is_ready(id)) else {
            return;
        };
        let payload = durable.to_le_bytes();
        let header = encode_header(start, self.segment_of(start), record::KIND_SYNC_MARKER, &payload);
        if self.write_and_complete(start, start + size, &[&header, &payload]).is_ok() {
            bump(&self.counters.sync_markers, 1);
            // Relaxed: see the load above.
            self.last_marker.store(durable, Ordering::Relaxed);
        }
    }

    /// Syncs the pages covering `[from, to)`, segment by segment.
    fn sync_range(&self, from: u64, to: u64) -> std::io::Result<()> {
        debug_assert!(from < to);
        for id in self.segment_of(from)..=self.segment_of(to - 1) {
            let base = id * self.segment_bytes;
            let lo = from.max(base) - base;
            let hi = to.min(base + self.segment_bytes) - base;
            let lo = lo / PAGE_BYTES * PAGE_BYTES;
            let hi = hi.div_ceil(PAGE_BYTES).saturating_mul(PAGE_BYTES).min(self.segment_bytes);
            let file = self.ring.file(id).ok_or_else(|| std::io::Error::other("segment to sync is not hosted"))?;
            file.sync(lo, hi - lo)?;
        }
        bump(&self.counters.syncs, 1);
        Ok(())
    }

    fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        // Relaxed: a caller waits for positions it got from its own append
        // (sequenced before) or from another thread through some
        // synchronization; either way this read is at least that new.
        let end = self.cursor.position();
        if lsn.0 > end {
            return Err(WalError::LsnBeyondEnd { lsn, end: Lsn(end) });
        }
        self.group
            .wait_durable(lsn.0, |durable| self.write_marker(durable), |from, to| self.sync_range(from, to))
            .map_err(|e| match e {
                WaitError::Sync(error) => {
                    bump(&self.counters.sync_failures, 1);
                    tracing::error!(error = %error, "sync failed; the log is now failed");
                    failed(error.kind())
                }
                WaitError::Failed(f) => failed(f.0),
            })
    }
}

impl Wal {
    /// Opens (or creates) the log in `storage` and recovers it, with the
    /// directory's own format (see `WalConfig`). See docs/design.md Part II
    /// for the rules. Running it again after a crash during open gives the
    /// same records.
    pub fn open(storage: Arc<dyn Storage>, config: WalConfig) -> Result<(Wal, Recovery), WalError> {
        config.validate()?;
        let names = storage.list().map_err(|e| WalError::io("list directory", "", e))?;
        let (config, recorded) = directory_config(&*storage, &config, &names)?;
        let scan = recovery::scan(&*storage, &config, names)?;
        if let Some(error) = scan.corrupt {
            return Err(error);
        }
        if !recorded {
            // A new directory, or one written before format files existed:
            // record the format before anything else is written, so that
            // every later opener uses it.
            format::write(&*storage, Format::of(&config))?;
        }
        let segment_bytes = config.segment_size_bytes;
        let first_live = scan.start / segment_bytes;
        let ring = Ring::new(config.max_segments, segment_bytes, first_live, config.backend);

        // Segments first_live.. that exist without a gap stay; after a gap
        // (nothing valid there, or the scan would have refused) they go.
        let mut ready_end = first_live;
        let mut remove = Vec::new();
        for (&id, name) in &scan.segments {
            if id == ready_end {
                if id >= first_live + config.max_segments as u64 {
                    return Err(WalError::Config {
                        reason: format!("more live segment files than max_segments = {}", config.max_segments),
                    });
                }
                let file = storage
                    .open_segment(name, config.backend)
                    .map_err(|e| WalError::io("open segment", name.clone(), e))?;
                ring.install(id, file);
                ready_end += 1;
            } else {
                remove.push(name.clone());
            }
        }
        // Obsolete files become recycling candidates for their slot; one of
        // the wrong size (never opened: a zero-length file cannot be mapped)
        // is only removed.
        for (&id, name) in &scan.obsolete {
            let len = storage
                .open_read(name)
                .map(|file| file.len())
                .map_err(|e| WalError::io("open segment", name.clone(), e))?;
            if len != segment_bytes {
                remove.push(name.clone());
                continue;
            }
            let file = storage
                .open_segment(name, config.backend)
                .map_err(|e| WalError::io("open segment", name.clone(), e))?;
            if !ring.install(id, file) {
                remove.push(name.clone());
            }
        }
        ring.set_ready_end(ready_end);

        // Discard the tail: zero [end, torn_end) where files exist, durably.
        let end = scan.end;
        truncate(&ring, segment_bytes, end, scan.torn_end.min(ready_end * segment_bytes))?;
        // Recovered bytes may sit only in the page cache (process crash):
        // make them durable before handing them out as recovered.
        for id in first_live..ready_end {
            if let Some(file) = ring.file(id) {
                file.sync(0, segment_bytes).map_err(|e| WalError::io("sync segment", segment_name(id), e))?;
            }
        }
        remove.extend(scan.temps.iter().cloned());
        remove.extend(scan.stale_checkpoints.iter().cloned());
        if !remove.is_empty() {
            for name in &remove {
                storage.remove(name).map_err(|e| WalError::io("remove", name.clone(), e))?;
            }
            storage.sync_dir().map_err(|e| WalError::io("sync directory", "", e))?;
        }

        let recovery = Recovery {
            checkpoint: scan.checkpoint,
            records: scan.records,
            segments_scanned: scan.segments_scanned,
            torn_tail_bytes: scan.torn_end.saturating_sub(end),
            end_lsn: Lsn(end),
        };
        if recovery.torn_tail_bytes > 0 {
            tracing::warn!(bytes = recovery.torn_tail_bytes, end = end, "discarded a torn log tail");
        }
        let newest_checkpoint = recovery.checkpoint.as_ref().map_or(0, |(lsn, _)| lsn.0);
        let shared = Arc::new(Shared {
            storage,
            segment_bytes,
            cursor: Cursor::new(end, segment_bytes),
            group: GroupCommit::new(end).with_gather(config.gather_limit).with_syncs_in_flight(config.syncs_in_flight),
            ring,
            last_marker: AtomicU64::new(0),
            checkpoint: Mutex::new(newest_checkpoint),
            counters: Counters::default(),
            config,
        });
        let preallocator = if shared.config.preallocate_next { Some(spawn_preallocator(&shared)?) } else { None };
        let wal = Wal { shared, preallocator };
        wal.request_segment(wal.shared.segment_of(end) + 1);
        Ok((wal, recovery))
    }

    /// Read-only version of the recovery scan: modifies nothing and lists
    /// every problem found instead of stopping at the first.
    pub fn inspect(storage: &dyn Storage, config: &WalConfig) -> Result<Inspection, WalError> {
        config.validate()?;
        let names = storage.list().map_err(|e| WalError::io("list directory", "", e))?;
        let (config, _) = directory_config(storage, config, &names)?;
        let scan = recovery::scan(storage, &config, names)?;
        let verdict = match &scan.corrupt {
            Some(WalError::Corrupt { file, offset, reason }) => Verdict::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
                kind: scan.corrupt_kind,
            },
            _ if scan.torn_end > scan.end => Verdict::TornTail { bytes: scan.torn_end - scan.end },
            _ => Verdict::Clean,
        };
        Ok(Inspection {
            problems: scan.problems,
            records: scan.records,
            checkpoint: scan.checkpoint,
            segments_scanned: scan.segments_scanned,
            records_after_break: scan.records_after_break,
            end_lsn: Lsn(scan.end),
            verdict,
            config,
        })
    }

    /// The configuration in force: the caller's, with the directory's
    /// recorded format.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Asks the background thread (if any) to get segment `id` ready.
    fn request_segment(&self, id: u64) {
        if let Some(preallocator) = &self.preallocator {
            match preallocator.requests.try_send(id) {
                Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    fn check_kind(kind: u8) -> Result<(), WalError> {
        if record::is_engine_kind(kind) { Ok(()) } else { Err(WalError::ReservedKind { kind }) }
    }

    fn check_size(&self, bytes: u64) -> Result<(), WalError> {
        let max_bytes = self.shared.config.max_record_bytes();
        if bytes > max_bytes {
            return Err(WalError::RecordTooLarge { bytes, max_bytes });
        }
        Ok(())
    }

    /// Appends one record; returns the position just past it (what to wait
    /// for). Lock-free except when a segment must be created on the spot.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        Self::check_kind(kind)?;
        let size = record_bytes(payload.len() as u64);
        self.check_size(size)?;
        let shared = &*self.shared;
        let start = shared.reserve(size, |id| self.request_segment(id + 1))?;
        let header = encode_header(start, shared.segment_of(start), kind, payload);
        shared.write_and_complete(start, start + size, &[&header, payload])?;
        bump(&shared.counters.records, 1);
        bump(&shared.counters.bytes_written, size);
        Ok(Lsn(start + size))
    }

    /// Appends several records in one reservation, contiguously and in
    /// order; returns the position past the last. The batch as a whole must
    /// fit `max_record_bytes`.
    pub fn append_batch(&self, records: &[(u8, &[u8])]) -> Result<Lsn, WalError> {
        let mut total = 0u64;
        for (kind, payload) in records {
            Self::check_kind(*kind)?;
            total = total.saturating_add(record_bytes(payload.len() as u64));
        }
        if records.is_empty() {
            return Ok(self.end_lsn());
        }
        self.check_size(total)?;
        let shared = &*self.shared;
        let start = shared.reserve(total, |id| self.request_segment(id + 1))?;
        let id = shared.segment_of(start);
        let mut headers = Vec::with_capacity(records.len());
        let mut position = start;
        for (kind, payload) in records {
            headers.push(encode_header(position, id, *kind, payload));
            position += record_bytes(payload.len() as u64);
        }
        let padding = [0u8; 8];
        let mut parts: Vec<&[u8]> = Vec::with_capacity(records.len() * 3);
        for ((_, payload), header) in records.iter().zip(&headers) {
            parts.push(header);
            parts.push(payload);
            let pad = record_bytes(payload.len() as u64) - HEADER_BYTES - payload.len() as u64;
            // Alignment bytes must be zero; the segment is zero there
            // already, but writing them keeps `parts` contiguous.
            parts.push(&padding[..pad as usize]);
        }
        shared.write_and_complete(start, start + total, &parts)?;
        bump(&shared.counters.records, records.len() as u64);
        bump(&shared.counters.bytes_written, total);
        Ok(Lsn(start + total))
    }

    /// Group commit: returns once every byte below `lsn` is durable. After a
    /// failed sync, returns `WalError::Failed` forever.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        self.shared.wait_durable(lsn)
    }

    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.shared.group.durable())
    }

    /// Everything reserved so far (including the log's own markers).
    pub fn end_lsn(&self) -> Lsn {
        // Acquire is not needed for a snapshot value: Relaxed.
        Lsn(self.shared.cursor.position())
    }

    /// Writes a checkpoint covering every record below `lsn` (a position
    /// returned by `append`, `append_batch`, `end_lsn` or `durable_lsn`),
    /// then lets segments wholly below it be recycled. Waits for `lsn` to be
    /// durable first.
    pub fn checkpoint(&self, lsn: Lsn, snapshot: &[u8]) -> Result<(), WalError> {
        let shared = &*self.shared;
        shared.wait_durable(lsn)?;
        let mut newest = shared.checkpoint.lock();
        if lsn.0 < *newest {
            return Err(WalError::CheckpointRegression { lsn, newest: Lsn(*newest) });
        }
        checkpoint::write(&*shared.storage, lsn, snapshot)?;
        // Keep only the newest checkpoint.
        let names = shared.storage.list().map_err(|e| WalError::io("list directory", "", e))?;
        let mut removed = false;
        for name in names {
            if checkpoint::parse_checkpoint_name(&name).is_some_and(|other| other != lsn.0) {
                shared.storage.remove(&name).map_err(|e| WalError::io("remove checkpoint", name.clone(), e))?;
                removed = true;
            }
        }
        if removed {
            shared.storage.sync_dir().map_err(|e| WalError::io("sync directory", "", e))?;
        }
        *newest = lsn.0;
        shared.ring.advance_first_live(shared.segment_of(lsn.0));
        bump(&shared.counters.checkpoints, 1);
        drop(newest);
        self.request_segment(shared.segment_of(self.end_lsn().0) + 1);
        Ok(())
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        // Relaxed: statistics.
        let syncs = c.syncs.load(Ordering::Relaxed);
        let records = c.records.load(Ordering::Relaxed);
        WalStats {
            syncs,
            records,
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            segments_live: self.shared.ring.live_segments(),
            records_per_sync: if syncs == 0 { 0.0 } else { records as f64 / syncs as f64 },
            sync_markers: c.sync_markers.load(Ordering::Relaxed),
            seals: c.seals.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            sync_failures: c.sync_failures.load(Ordering::Relaxed),
            log_full_rejections: c.log_full_rejections.load(Ordering::Relaxed),
            durable_lsn: self.durable_lsn(),
            end_lsn: self.end_lsn(),
            failed: self.shared.group.failure().is_some(),
        }
    }
}

/// The caller's configuration with the directory's format, and whether the
/// directory records it (false: open must write the format file). Without a
/// format file, the parameters are inferred from the segment files (an
/// older directory) or are the caller's (a new one).
fn directory_config(
    storage: &dyn Storage,
    config: &WalConfig,
    names: &[String],
) -> Result<(WalConfig, bool), WalError> {
    if let Some(format) = format::read(storage, names)? {
        return Ok((format.apply(config), true));
    }
    let segments: Vec<&String> = names.iter().filter(|n| parse_segment_name(n).is_some()).collect();
    if segments.is_empty() {
        return Ok((config.clone(), false));
    }
    let inferred = infer_format(storage, config, &segments);
    Ok((inferred.apply(config), false))
}

/// The format of a directory written before format files existed: the size
/// most of its segment files have (among sizes a log could have written;
/// ties go to the larger), and at least as many segments as there are
/// files. A stray file of another size is then reported as the wrong size
/// instead of making every real segment look wrong.
fn infer_format(storage: &dyn Storage, config: &WalConfig, segments: &[&String]) -> Format {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for name in segments {
        let Ok(len) = storage.open_read(name).map(|file| file.len()) else { continue };
        let probe = WalConfig { segment_size_bytes: len, ..config.clone() };
        if probe.validate().is_ok() {
            *counts.entry(len).or_default() += 1;
        }
    }
    let size = counts.iter().max_by_key(|&(size, count)| (*count, *size)).map(|(size, _)| *size);
    Format {
        segment_size_bytes: size.unwrap_or(config.segment_size_bytes),
        max_segments: config.max_segments.max(segments.len().min(MAX_SEGMENTS_LIMIT)),
    }
}

/// Zeroes `[from, to)` (global positions) and syncs it.
fn truncate(ring: &Ring, segment_bytes: u64, from: u64, to: u64) -> Result<(), WalError> {
    let mut position = from;
    while position < to {
        let id = position / segment_bytes;
        let base = id * segment_bytes;
        let until = to.min(base + segment_bytes);
        let offset = position - base;
        let len = until - position;
        if let Some(file) = ring.file(id) {
            let zeros = vec![0u8; len as usize];
            file.write_at(offset, &zeros)
                .and_then(|()| file.sync(offset, len))
                .map_err(|e| WalError::io("truncate torn tail", segment_name(id), e))?;
        }
        position = until;
    }
    Ok(())
}

fn spawn_preallocator(shared: &Arc<Shared>) -> Result<Preallocator, WalError> {
    // Bounded: one outstanding request is enough, later ones cover it.
    let (requests, receiver) = crossbeam_channel::bounded::<u64>(1);
    let shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name("dtc-wal-prealloc".into())
        .spawn(move || {
            while let Ok(id) = receiver.recv() {
                match shared.ring.prepare(&*shared.storage, id) {
                    Ok(()) | Err(WalError::LogFull { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "preparing the next segment failed; appends will retry"),
                }
            }
        })
        .map_err(|e| WalError::io("spawn preallocator", "", e))?;
    Ok(Preallocator { requests, thread })
}
