//! The id archive: outcomes of caller-chosen ids that left the in-memory
//! recent table, kept on disk for the horizon (default 24 hours) in
//! immutable sorted *run* files, so a resubmission inside the horizon gets
//! its recorded outcome however many ids finished since.
//!
//! # Files
//!
//! `ids-<seq as 16 lowercase hex digits>.run` in the data directory, written
//! through the log's [`Storage`] (so `MemStorage` crash-tests it like the
//! log). A run is written once (temp file, fsync, rename, fsync directory:
//! [`Storage::write_file_with`]) and never changed; it is removed whole by
//! expiry or after compaction merged it into a larger run.
//!
//! # Run layout (little-endian)
//!
//! ```text
//! header  (32 B)  magic "DTCIDRUN" | version u16 = 1 | entry bytes u16 = 32
//!                 | reserved u32 = 0 | seq u64 | crc32 of bytes 0..24 u32
//!                 | reserved u32 = 0
//! table   (count × 32 B, sorted by tx, strictly increasing)
//!         entry i: tx u128 | fingerprint u64 | reason ref u32
//!                  | crc32(i as u64 ‖ bytes 0..28) u32
//!         reason ref 0 = committed; r > 0 = aborted, its reason record at
//!         blob offset (r - 1) × 8
//! blob    (blob bytes, a multiple of 8) reason records, each 8-aligned:
//!         tx u128 | len u32 | crc32(tx ‖ len ‖ bytes) u32 | bytes (the
//!         log's abort reason encoding) | zero padding
//! footer  (88 B)  magic "DTCIDEND" | seq u64 | first seq u64 | last seq u64
//!                 | count u64 | blob bytes u64 | min tx u128 | max tx u128
//!                 | header crc u32 | crc32 of bytes 0..84 u32
//! ```
//!
//! Entries are fixed width, so a lookup is a binary search by positional
//! reads; the crc of each entry covers its index, so a misplaced entry is as
//! detectable as a flipped bit. Every entry a lookup reads is checked (crc,
//! and the order against the bracket it was read in), every reason record
//! too (crc, and the tx it names); damage is [`Error::Corrupt`] with file and
//! offset, never a wrong answer, a panic or an allocation sized by the file.
//!
//! # Invariants
//!
//! - `[first seq, last seq]` (the *cover*) names the `add_run` calls whose
//!   entries a run holds: `[seq, seq]` for a run written by `add_run`, the
//!   union of its inputs' covers for a merged run (whose own seq is new). The
//!   covers of live runs are disjoint; a newer cover means newer data, and a
//!   lookup searches runs newest cover first, so the last outcome added for
//!   an id wins.
//! - A run whose cover lies inside another's is *superseded* (a crash after
//!   a merge became durable but before its inputs were removed): `open`
//!   removes it, `open_read_only` ignores it. Partly overlapping covers
//!   cannot be produced by this module and are `Error::Corrupt`.
//! - Expiry removes a run only when its newest id (max tx) has a timestamp
//!   older than `now - horizon`, so every id inside the horizon stays exact.
//!
//! # Contract with the coordinator
//!
//! - Spill at checkpoints: `add_run` the ids that finished up to the
//!   checkpoint's position *before* writing the checkpoint that lets their
//!   log records go. The checkpoint then need not carry them. A crash in
//!   between replays them from the log into the table as well, which is
//!   harmless. Drop them from the in-memory table only after `add_run`
//!   returns, so a lookup that misses the table finds the run. Then call
//!   `compact` and `expire(now)`.
//! - Admission: refuse an id with `timestamp < now - horizon`; otherwise ask
//!   the table, then `lookup` (`BeyondHorizon` is refused as well, and
//!   closes the race with a concurrent `expire` and a clock stepped back).
//! - Persist `expired_before_unix_ns` in the checkpoint and give it back
//!   with `set_expired_before` after `open`.
//! - An id dated in the future keeps its run until its own timestamp plus
//!   the horizon, so bound the timestamps accepted (now + the allowed skew).
//! - Open the log first: its open removes leftover `*.tmp` files, ours
//!   included.
//!
//! # Sizes and speed (`two_million_ids_across_runs`, `benches/ids.rs`)
//!
//! Measured on the 2 shared cores of the development box under load
//! (treat them as ±30 %), FsStorage in a tempdir, page cache warm.
//!
//! - Disk: 32 bytes per committed id; an aborted one adds its reason record
//!   (24 bytes + the encoded reason, rounded up to 8: 48 bytes for
//!   `InsufficientFunds { "svc-3", "acct-123456" }`); 120 bytes per run.
//!   2 000 000 ids with 10 % aborted: 36.8 bytes per id. A day at 30 000
//!   ids per second is 2.6 × 10⁹ ids: ~83 GB if all commit.
//! - Memory: per run ~300 bytes plus a sparse index of at most 1 024 keys
//!   (16 KiB), whatever its size; `compact` keeps at most 64 runs (about 55
//!   in the steady state), so ~1 MiB in all however many ids. 2 000 000 ids
//!   in 20 runs: 254 KB (0.13 bytes per id; 0.0004 at a day's 2.6 × 10⁹).
//!   Merges stream: 32 KiB per input (at most 16), 1 MiB for the blob copy,
//!   the storage's 1 MiB write buffer.
//! - Lookups, present / absent: one run of 1 000 000 ids 3.5 / 3.4 µs (the
//!   sparse index leaves ~1 000 candidates: three 32-byte reads and one
//!   4 KiB read); 64 time-ordered runs of 16 000 (one run covers the id)
//!   1.7 / 1.3 µs; 64 interleaved runs (every run covers every id, the worst
//!   case) 34 / 78 µs. An id outside every run's range costs no read. A run
//!   of 40 000 000 ids (a day in 64 runs) needs about 8 reads.
//! - Writes: a run of 100 000 ids in 31 ms (3.2 million ids per second,
//!   sort, encode, two fsyncs and the read-back of its index); the steady
//!   state of 20 000-id flushes, each followed by `compact` and `expire`,
//!   12 ms per flush, all merges included.
//!
//! # Why a sorted file of our own rather than an embedded store
//!
//! The data are written once, in rough time order, never updated, and
//! dropped by age. An LSM's memtable, log, update path and tombstones, or a
//! B-tree's copy-on-write pages and free list, would go unused. What matters
//! here fits in one module:
//!
//! 1. Crash behaviour goes through the crate's own `Storage` contract, so
//!    `MemStorage::crash`, `crash_after_syncs` and `flip_bit` test it the way
//!    they test the log. redb, fjall, sled and RocksDB do their own file I/O
//!    and would get only real-process kill tests.
//! 2. Entries are 32 bytes, fixed width, each with its own crc. A lookup is
//!    a binary search of 1 to 8 positional reads, with no cache to size. A
//!    B-tree or SSTable store adds per-page or per-block overhead, plus
//!    per-value framing.
//! 3. Expiry removes one file. A store would need a range delete and then a
//!    compaction to reclaim the space.
//! 4. No new dependency, and no second durability mechanism (its own
//!    journal or commit protocol) to reason about next to the log. fjall
//!    brings lsm-tree, lz4_flex, xxhash-rust, byteview, flume and tempfile.
//!
//! The cost is owning a format. It is specified above and tested with crash
//! points, bit flips, truncations, hostile sizes and random bytes.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use super::codec::{Reader, Remembered, Writer, read_reason, write_reason};
use crate::error::{Error, Result};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::txn::{AbortReason, TxId};
use crate::wal::{ReadFile, Storage};

const HEADER_MAGIC: &[u8; 8] = b"DTCIDRUN";
const FOOTER_MAGIC: &[u8; 8] = b"DTCIDEND";
const VERSION: u16 = 1;
const HEADER_BYTES: u64 = 32;
const ENTRY_BYTES: u64 = 32;
const FOOTER_BYTES: u64 = 88;
const REASON_HEADER_BYTES: u64 = 24;
const BLOB_ALIGN_BYTES: u64 = 8;
/// The longest abort reason the codec writes: slot + three u16-length strings.
const MAX_REASON_BYTES: u64 = 1 + 3 * (2 + u16::MAX as u64);
/// A reason ref is a u32 counting 8-byte units from 1.
const MAX_BLOB_BYTES: u64 = (u32::MAX as u64 - 1) * BLOB_ALIGN_BYTES;

/// Live runs `compact` leaves at most (it keeps about half of them full-size).
pub const MAX_RUNS: usize = 64;
/// Runs one merge reads at once (bounds the merge's buffers).
const MAX_MERGE_INPUTS: usize = 16;
/// Keys of the in-memory sparse index of one run.
const MAX_SAMPLES: u64 = 1024;
/// Below this many candidates a lookup reads them in one go (4 KiB).
const PAGE_ENTRIES: u64 = 128;
/// Entries a merge input reads at once (32 KiB).
const CURSOR_ENTRIES: u64 = 1024;
const COPY_CHUNK_BYTES: u64 = 1 << 20;

/// One run as `runs()` describes it, for tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// File name in the data directory.
    pub name: String,
    /// The file's sequence number (in its name).
    pub seq: u64,
    /// Oldest `add_run` whose entries it holds.
    pub first_seq: u64,
    /// Newest `add_run` whose entries it holds.
    pub last_seq: u64,
    /// Entries (distinct ids).
    pub ids: u64,
    /// Bytes of abort reasons.
    pub blob_bytes: u64,
    /// File length.
    pub file_bytes: u64,
    /// Smallest id.
    pub min_tx: TxId,
    /// Largest id; its timestamp decides expiry.
    pub max_tx: TxId,
}

impl RunInfo {
    /// Timestamp of the newest id, nanoseconds since the Unix epoch.
    pub fn newest_unix_ns(&self) -> u64 {
        self.max_tx.timestamp_ns()
    }
}

/// Totals over the live runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Live run files.
    pub runs: usize,
    /// Ids remembered (an id in two runs counts twice).
    pub ids: u64,
    /// Sum of the run files' lengths.
    pub bytes_on_disk: u64,
    /// Heap and inline bytes of the in-memory metadata (sparse indexes, names).
    pub bytes_in_memory: u64,
    /// Bytes of runs `add_run` wrote since open.
    pub bytes_added: u64,
    /// Bytes of runs merges wrote since open (write amplification =
    /// `bytes_merged / bytes_added`).
    pub bytes_merged: u64,
}

/// A run's fixed-width entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawEntry {
    tx: u128,
    fingerprint: u64,
    reason_ref: u32,
}

/// An open, validated run.
#[derive(Debug)]
struct Run {
    info: RunInfo,
    file: Arc<dyn ReadFile>,
    /// Keys at `sample_index(i)`, strictly increasing, first = min, last = max.
    samples: Box<[u128]>,
}

struct Writers {
    next_seq: u64,
}

/// What lookups see, replaced together so that a lookup never misses a run
/// that expiry removed without also seeing the watermark that refuses it.
struct Live {
    /// Newest cover first.
    runs: Arc<Vec<Arc<Run>>>,
    /// Ids with an older timestamp are beyond the horizon (never lowered).
    expired_before_unix_ns: u64,
}

/// What the archive knows of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Its recorded outcome.
    Remembered(Remembered),
    /// Nothing: inside the horizon, so it never finished (or never ran).
    Unknown,
    /// Its timestamp is older than what expiry may have removed: its outcome
    /// cannot be known, so it must be refused, never run.
    BeyondHorizon {
        /// The expiry watermark it is older than.
        expired_before_unix_ns: u64,
    },
}

/// The archive of runs in one data directory. Lookups run concurrently with
/// each other and with one writer (`add_run`, `expire`, `compact` are
/// serialised among themselves).
pub struct IdArchive {
    storage: Arc<dyn Storage>,
    horizon: Duration,
    read_only: bool,
    /// Replaced whole; lookups clone the Arc and read without the lock.
    live: Mutex<Live>,
    writers: Mutex<Writers>,
    /// Bytes of runs written by `add_run` and by merges since open.
    bytes_added: AtomicU64,
    bytes_merged: AtomicU64,
}

impl std::fmt::Debug for IdArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdArchive")
            .field("horizon", &self.horizon)
            .field("expired_before_unix_ns", &self.expired_before_unix_ns())
            .field("stats", &self.stats())
            .finish()
    }
}

fn run_name(seq: u64) -> String {
    format!("ids-{seq:016x}.run")
}

fn parse_run_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("ids-")?.strip_suffix(".run")?;
    let lower_hex = hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower_hex {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn corrupt(file: &str, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt { file: file.to_owned(), offset, reason: reason.into() }
}

fn io_error(op: impl Into<String>, source: io::Error) -> Error {
    Error::Io { op: op.into(), source }
}

/// A failed positional read: past the end means the file is not what its
/// footer says.
fn read_error(file: &str, offset: u64, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::UnexpectedEof {
        corrupt(file, offset, "file shorter than its footer says")
    } else {
        io_error(format!("reading {file} at {offset}"), source)
    }
}

fn read_exact(run: &Run, offset: u64, buf: &mut [u8]) -> Result<()> {
    run.file.read_at(offset, buf).map_err(|e| read_error(&run.info.name, offset, e))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u128_at(bytes: &[u8], at: usize) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[at..at + 16]);
    u128::from_le_bytes(b)
}

fn entry_crc(index: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(body);
    h.finalize()
}

fn encode_entry(index: u64, e: RawEntry) -> [u8; ENTRY_BYTES as usize] {
    let mut out = [0u8; ENTRY_BYTES as usize];
    out[..16].copy_from_slice(&e.tx.to_le_bytes());
    out[16..24].copy_from_slice(&e.fingerprint.to_le_bytes());
    out[24..28].copy_from_slice(&e.reason_ref.to_le_bytes());
    let crc = entry_crc(index, &out[..28]);
    out[28..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn entry_offset(index: u64) -> u64 {
    HEADER_BYTES + index * ENTRY_BYTES
}

/// Entry `index` of `run` from its 32 bytes, crc checked.
fn decode_entry(run: &Run, index: u64, bytes: &[u8]) -> Result<RawEntry> {
    debug_assert_eq!(bytes.len() as u64, ENTRY_BYTES);
    if u32_at(bytes, 28) != entry_crc(index, &bytes[..28]) {
        return Err(corrupt(&run.info.name, entry_offset(index), format!("entry {index}: checksum mismatch")));
    }
    Ok(RawEntry { tx: u128_at(bytes, 0), fingerprint: u64_at(bytes, 16), reason_ref: u32_at(bytes, 24) })
}

fn read_entry(run: &Run, index: u64) -> Result<RawEntry> {
    let mut buf = [0u8; ENTRY_BYTES as usize];
    read_exact(run, entry_offset(index), &mut buf)?;
    decode_entry(run, index, &buf)
}

fn encode_header(seq: u64) -> [u8; HEADER_BYTES as usize] {
    let mut h = [0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(HEADER_MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(ENTRY_BYTES as u16).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a footer says, before it is checked against the file.
struct Footer {
    seq: u64,
    first_seq: u64,
    last_seq: u64,
    count: u64,
    blob_bytes: u64,
    min_tx: u128,
    max_tx: u128,
}

fn encode_footer(f: &Footer, header_crc: u32) -> [u8; FOOTER_BYTES as usize] {
    let mut w = Writer(Vec::with_capacity(FOOTER_BYTES as usize));
    w.0.extend_from_slice(FOOTER_MAGIC);
    for v in [f.seq, f.first_seq, f.last_seq, f.count, f.blob_bytes] {
        w.u64(v);
    }
    w.u128(f.min_tx);
    w.u128(f.max_tx);
    w.u32(header_crc);
    let crc = crc32fast::hash(&w.0);
    w.u32(crc);
    let mut out = [0u8; FOOTER_BYTES as usize];
    out.copy_from_slice(&w.0);
    out
}

/// The reason record for `tx`, padded to 8 bytes.
fn encode_reason_record(tx: u128, reason: &AbortReason, out: &mut Vec<u8>) {
    let mut w = Writer::new();
    write_reason(&mut w, reason);
    let len = w.0.len() as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&tx.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(&w.0);
    out.extend_from_slice(&tx.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&w.0);
    let padded = out.len().next_multiple_of(BLOB_ALIGN_BYTES as usize);
    out.resize(padded, 0);
}

/// Writes the table as entries arrive: indexes, crcs, order and bounds.
struct TableWriter<'w> {
    out: &'w mut dyn Write,
    count: u64,
    min_tx: u128,
    max_tx: u128,
}

impl<'w> TableWriter<'w> {
    fn new(out: &'w mut dyn Write, seq: u64) -> io::Result<Self> {
        out.write_all(&encode_header(seq))?;
        Ok(TableWriter { out, count: 0, min_tx: 0, max_tx: 0 })
    }

    fn push(&mut self, e: RawEntry) -> io::Result<()> {
        // The readers' binary search relies on this; checked again on read.
        if self.count > 0 && e.tx <= self.max_tx {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "run entries out of order"));
        }
        if self.count == 0 {
            self.min_tx = e.tx;
        }
        self.max_tx = e.tx;
        self.out.write_all(&encode_entry(self.count, e))?;
        self.count += 1;
        Ok(())
    }
}

/// Entries sorted by tx with the last of equal ones kept (stable sort).
fn sort_dedup_keep_last(mut entries: Vec<Remembered>) -> Vec<Remembered> {
    entries.sort_by_key(|e| e.tx);
    let mut out: Vec<Remembered> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some(last) if last.tx == e.tx => *last = e,
            _ => out.push(e),
        }
    }
    out
}

fn sample_count(count: u64) -> u64 {
    count.min(MAX_SAMPLES).min(count / PAGE_ENTRIES + 2)
}

/// Entry index of sample `i` of `samples` (evenly spaced, first and last entry included).
fn sample_index(i: u64, samples: u64, count: u64) -> u64 {
    if samples <= 1 {
        0
    } else {
        // u128: `i * (count - 1)` overflows u64 for hostile counts.
        (u128::from(i) * u128::from(count - 1) / u128::from(samples - 1)) as u64
    }
}

fn read_only_error() -> Error {
    io_error("changing the id archive", io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"))
}

/// Checks `name`'s header and footer against each other and the file length,
/// then reads the sparse index (each sample entry crc checked, in order).
fn load_run(storage: &dyn Storage, name: &str, seq: u64) -> Result<Run> {
    let file = storage.open_read(name).map_err(|e| io_error(format!("opening {name}"), e))?;
    let file_bytes = file.len();
    if file_bytes < HEADER_BYTES + FOOTER_BYTES {
        return Err(corrupt(name, 0, format!("{file_bytes} bytes, shorter than a header and a footer")));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_at(0, &mut header).map_err(|e| read_error(name, 0, e))?;
    check_header(name, seq, &header)?;
    let footer_at = file_bytes - FOOTER_BYTES;
    let mut footer = [0u8; FOOTER_BYTES as usize];
    file.read_at(footer_at, &mut footer).map_err(|e| read_error(name, footer_at, e))?;
    let f = check_footer(name, seq, footer_at, &footer, u32_at(&header, 24))?;
    let table_bytes = f.count.checked_mul(ENTRY_BYTES);
    let expected =
        table_bytes.and_then(|t| t.checked_add(HEADER_BYTES + FOOTER_BYTES)).and_then(|t| t.checked_add(f.blob_bytes));
    if expected != Some(file_bytes) {
        let reason =
            format!("footer says {} entries and {} blob bytes, file has {file_bytes} bytes", f.count, f.blob_bytes);
        return Err(corrupt(name, footer_at, reason));
    }
    let info = RunInfo {
        name: name.to_owned(),
        seq,
        first_seq: f.first_seq,
        last_seq: f.last_seq,
        ids: f.count,
        blob_bytes: f.blob_bytes,
        file_bytes,
        min_tx: TxId::from_u128(f.min_tx),
        max_tx: TxId::from_u128(f.max_tx),
    };
    let mut run = Run { info, file, samples: Box::new([]) };
    run.samples = read_samples(&run)?;
    Ok(run)
}

fn check_header(name: &str, seq: u64, h: &[u8]) -> Result<()> {
    if &h[..8] != HEADER_MAGIC {
        return Err(corrupt(name, 0, "not an id archive run (bad magic)"));
    }
    if u32_at(h, 24) != crc32fast::hash(&h[..24]) {
        return Err(corrupt(name, 24, "header checksum mismatch"));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    let entry_bytes = u16::from_le_bytes([h[10], h[11]]);
    if version != VERSION || u64::from(entry_bytes) != ENTRY_BYTES {
        return Err(corrupt(name, 8, format!("version {version} with {entry_bytes}-byte entries is not supported")));
    }
    if u32_at(h, 12) != 0 || u32_at(h, 28) != 0 {
        return Err(corrupt(name, 12, "reserved header bytes are not zero"));
    }
    if u64_at(h, 16) != seq {
        return Err(corrupt(name, 16, format!("header names run {:016x}", u64_at(h, 16))));
    }
    Ok(())
}

fn check_footer(name: &str, seq: u64, at: u64, b: &[u8], header_crc: u32) -> Result<Footer> {
    if &b[..8] != FOOTER_MAGIC {
        return Err(corrupt(name, at, "bad footer magic (truncated or extended file?)"));
    }
    if u32_at(b, 84) != crc32fast::hash(&b[..84]) {
        return Err(corrupt(name, at + 84, "footer checksum mismatch"));
    }
    let f = Footer {
        seq: u64_at(b, 8),
        first_seq: u64_at(b, 16),
        last_seq: u64_at(b, 24),
        count: u64_at(b, 32),
        blob_bytes: u64_at(b, 40),
        min_tx: u128_at(b, 48),
        max_tx: u128_at(b, 64),
    };
    let problem = if f.seq != seq {
        Some(format!("footer names run {:016x}", f.seq))
    } else if u32_at(b, 80) != header_crc {
        Some("footer belongs to another header".into())
    } else if f.count == 0 {
        Some("empty run".into())
    } else if !f.blob_bytes.is_multiple_of(BLOB_ALIGN_BYTES) || f.blob_bytes > MAX_BLOB_BYTES {
        Some(format!("blob of {} bytes", f.blob_bytes))
    } else if f.min_tx > f.max_tx || (f.count == 1) != (f.min_tx == f.max_tx) {
        Some(format!("{} entries from {:032x} to {:032x}", f.count, f.min_tx, f.max_tx))
    } else if f.first_seq > f.last_seq || f.last_seq > seq {
        Some(format!("cover {}..={} of run {seq}", f.first_seq, f.last_seq))
    } else {
        None
    };
    match problem {
        Some(reason) => Err(corrupt(name, at, reason)),
        None => Ok(f),
    }
}

fn read_samples(run: &Run) -> Result<Box<[u128]>> {
    let count = run.info.ids;
    let n = sample_count(count);
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let index = sample_index(i, n, count);
        let e = read_entry(run, index)?;
        if samples.last().is_some_and(|&prev| e.tx <= prev) {
            return Err(corrupt(&run.info.name, entry_offset(index), format!("entry {index} out of order")));
        }
        samples.push(e.tx);
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    if first != run.info.min_tx.as_u128() || last != run.info.max_tx.as_u128() {
        return Err(corrupt(&run.info.name, entry_offset(0), "first or last entry differs from the footer's range"));
    }
    Ok(samples.into_boxed_slice())
}

/// The entry for `tx` in `run`, if any: sparse index, then a binary search
/// by positional reads down to one page, then that page in one read. Every
/// entry read must lie strictly inside the bracket it was read in.
fn search(run: &Run, tx: u128) -> Result<Option<RawEntry>> {
    if tx < run.info.min_tx.as_u128() || tx > run.info.max_tx.as_u128() {
        return Ok(None);
    }
    let count = run.info.ids;
    let n = run.samples.len() as u64;
    let j = run.samples.partition_point(|&k| k <= tx) as u64;
    debug_assert!(j >= 1, "tx >= min = samples[0]");
    let below = sample_index(j - 1, n, count);
    if run.samples[(j - 1) as usize] == tx {
        let e = read_entry(run, below)?;
        if e.tx != tx {
            return Err(corrupt(&run.info.name, entry_offset(below), "entry differs from the index read at open"));
        }
        return Ok(Some(e));
    }
    // samples[j - 1] < tx < samples[j] (tx <= max = the last sample).
    let (mut lo, mut hi) = (below + 1, sample_index(j, n, count));
    let (mut lo_key, mut hi_key) = (run.samples[(j - 1) as usize], run.samples[j as usize]);
    while hi - lo > PAGE_ENTRIES {
        let mid = lo + (hi - lo) / 2;
        let e = read_entry(run, mid)?;
        check_bracket(run, mid, e.tx, lo_key, hi_key)?;
        match e.tx.cmp(&tx) {
            std::cmp::Ordering::Equal => return Ok(Some(e)),
            std::cmp::Ordering::Less => (lo, lo_key) = (mid + 1, e.tx),
            std::cmp::Ordering::Greater => (hi, hi_key) = (mid, e.tx),
        }
    }
    let mut page = [0u8; (PAGE_ENTRIES * ENTRY_BYTES) as usize];
    let page = &mut page[..((hi - lo) * ENTRY_BYTES) as usize];
    read_exact(run, entry_offset(lo), page)?;
    let (mut a, mut b) = (0, hi - lo);
    while a < b {
        let mid = a + (b - a) / 2;
        let at = (mid * ENTRY_BYTES) as usize;
        let e = decode_entry(run, lo + mid, &page[at..at + ENTRY_BYTES as usize])?;
        check_bracket(run, lo + mid, e.tx, lo_key, hi_key)?;
        match e.tx.cmp(&tx) {
            std::cmp::Ordering::Equal => return Ok(Some(e)),
            std::cmp::Ordering::Less => (a, lo_key) = (mid + 1, e.tx),
            std::cmp::Ordering::Greater => (b, hi_key) = (mid, e.tx),
        }
    }
    Ok(None)
}

fn check_bracket(run: &Run, index: u64, tx: u128, lo_key: u128, hi_key: u128) -> Result<()> {
    if lo_key < tx && tx < hi_key {
        Ok(())
    } else {
        Err(corrupt(&run.info.name, entry_offset(index), format!("entry {index} out of order")))
    }
}

/// The outcome an entry records, its reason record read and checked.
fn outcome(run: &Run, e: RawEntry) -> Result<Remembered> {
    let tx = TxId::from_u128(e.tx);
    if e.reason_ref == 0 {
        return Ok(Remembered { tx, fingerprint: e.fingerprint, aborted: None });
    }
    let name = &run.info.name;
    let blob_at = u64::from(e.reason_ref - 1) * BLOB_ALIGN_BYTES;
    let blob_start = entry_offset(run.info.ids);
    let at = blob_start + blob_at;
    if blob_at + REASON_HEADER_BYTES > run.info.blob_bytes {
        return Err(corrupt(name, at, "reason reference past the end of the blob"));
    }
    let mut header = [0u8; REASON_HEADER_BYTES as usize];
    read_exact(run, at, &mut header)?;
    let len = u64::from(u32_at(&header, 16));
    if u128_at(&header, 0) != e.tx {
        return Err(corrupt(name, at, "reason record of another id"));
    }
    if len > MAX_REASON_BYTES || blob_at + REASON_HEADER_BYTES + len > run.info.blob_bytes {
        return Err(corrupt(name, at + 16, format!("reason of {len} bytes")));
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact(run, at + REASON_HEADER_BYTES, &mut bytes)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..20]);
    h.update(&bytes);
    if h.finalize() != u32_at(&header, 20) {
        return Err(corrupt(name, at, "reason record checksum mismatch"));
    }
    let mut r = Reader::new(&bytes, "abort reason");
    let reason = read_reason(&mut r).and_then(|reason| r.finish().map(|()| reason));
    let reason = reason.map_err(|d| corrupt(name, at + REASON_HEADER_BYTES + d.offset as u64, d.to_string()))?;
    Ok(Remembered { tx, fingerprint: e.fingerprint, aborted: Some(reason) })
}

/// Reads one run's entries in order, a fixed number at a time, crc and
/// order checked (merges and `verify`).
struct Cursor<'r> {
    run: &'r Run,
    buf: Vec<u8>,
    /// Index of the first entry in `buf`.
    buf_start: u64,
    next: u64,
    last: Option<u128>,
}

impl<'r> Cursor<'r> {
    fn new(run: &'r Run) -> Self {
        Cursor { run, buf: Vec::new(), buf_start: 0, next: 0, last: None }
    }

    fn next_entry(&mut self) -> Result<Option<RawEntry>> {
        let count = self.run.info.ids;
        if self.next >= count {
            return Ok(None);
        }
        let buffered = self.buf.len() as u64 / ENTRY_BYTES;
        if self.next >= self.buf_start + buffered {
            let n = CURSOR_ENTRIES.min(count - self.next);
            self.buf.resize((n * ENTRY_BYTES) as usize, 0);
            read_exact(self.run, entry_offset(self.next), &mut self.buf)?;
            self.buf_start = self.next;
        }
        let at = ((self.next - self.buf_start) * ENTRY_BYTES) as usize;
        let e = decode_entry(self.run, self.next, &self.buf[at..at + ENTRY_BYTES as usize])?;
        if self.last.is_some_and(|last| e.tx <= last) {
            return Err(corrupt(
                &self.run.info.name,
                entry_offset(self.next),
                format!("entry {} out of order", self.next),
            ));
        }
        self.last = Some(e.tx);
        self.next += 1;
        Ok(Some(e))
    }
}

/// The adjacent runs (in cover order) to merge next, if any; `runs` holds
/// (file bytes, blob bytes) per run. Two rules, the first first:
///
/// 1. Tiering: a run merges with its newer neighbour when it is at most
///    twice that neighbour's size and the sum stays within a target of 1/32
///    of all bytes (the smallest such pair first). Sizes then fall
///    geometrically from old to new like a binary counter, so an id is
///    rewritten about log2(target / flush) times, and no run spans more than
///    ~1/32 of the horizon, so expiry (of whole runs) keeps at most ~3 %
///    expired ids. Simulated with flushes of random size
///    (`merge_policy_amplification`): 4 320 flushes per horizon (a day of
///    checkpoints every 20 s) rewrite each byte 6.7 times with at most 55
///    runs; 43 200 flushes, 10.2 times with at most 58. "Merge the smallest
///    pair once over the bound" alone feeds every new run into the newest
///    one: 32 and (extrapolated) 300 times.
/// 2. Bound: over `MAX_RUNS`, the window of the fewest bytes merges, as many
///    runs at once as bring the count back (at most `MAX_MERGE_INPUTS`).
///
/// A window whose abort reasons would not fit one run is never chosen.
fn plan_merge(runs: &[(u64, u64)]) -> Option<std::ops::Range<usize>> {
    let target_bytes = runs.iter().map(|r| r.0).sum::<u64>() / (MAX_RUNS as u64 / 2);
    let tier = (0..runs.len().saturating_sub(1))
        .filter(|&i| {
            let (older, newer) = (runs[i].0, runs[i + 1].0);
            older + newer <= target_bytes && older <= 2 * newer && blob_fits(&runs[i..i + 2])
        })
        .min_by_key(|&i| runs[i].0 + runs[i + 1].0);
    if let Some(i) = tier {
        return Some(i..i + 2);
    }
    if runs.len() <= MAX_RUNS {
        return None;
    }
    smallest_window(runs, (runs.len() - MAX_RUNS + 1).min(MAX_MERGE_INPUTS))
}

fn blob_fits(window: &[(u64, u64)]) -> bool {
    window.iter().map(|r| r.1).sum::<u64>() <= MAX_BLOB_BYTES
}

/// The `k` adjacent runs with the fewest bytes whose reasons fit one run.
fn smallest_window(runs: &[(u64, u64)], k: usize) -> Option<std::ops::Range<usize>> {
    if k < 2 || k > runs.len() {
        return None;
    }
    (0..=runs.len() - k)
        .filter(|&start| blob_fits(&runs[start..start + k]))
        .min_by_key(|&start| runs[start..start + k].iter().map(|r| r.0).sum::<u64>())
        .map(|start| start..start + k)
}

/// Splits listed runs into live ones and superseded ones (cover inside a
/// live run's). Partly overlapping covers are corruption.
fn resolve_covers(mut runs: Vec<Run>) -> Result<(Vec<Run>, Vec<Run>)> {
    runs.sort_by_key(|r| (r.info.first_seq, std::cmp::Reverse(r.info.last_seq), std::cmp::Reverse(r.info.seq)));
    let (mut live, mut superseded): (Vec<Run>, Vec<Run>) = (Vec::new(), Vec::new());
    for run in runs {
        match live.last() {
            Some(outer) if run.info.last_seq <= outer.info.last_seq => superseded.push(run),
            Some(outer) if run.info.first_seq <= outer.info.last_seq => {
                let reason = format!(
                    "holds runs {}..={}, partly overlapping {} ({}..={})",
                    run.info.first_seq, run.info.last_seq, outer.info.name, outer.info.first_seq, outer.info.last_seq
                );
                return Err(corrupt(&run.info.name, run.info.file_bytes - FOOTER_BYTES, reason));
            }
            _ => live.push(run),
        }
    }
    Ok((live, superseded))
}

fn horizon_ns(horizon: Duration) -> u64 {
    u64::try_from(horizon.as_nanos()).unwrap_or(u64::MAX)
}

impl IdArchive {
    /// Opens the runs in `storage`: checks every run's header, footer, length
    /// and sparse index (a damaged run is `Error::Corrupt`), removes runs a
    /// merge superseded, ignores temp files.
    pub fn open(storage: Arc<dyn Storage>, horizon: Duration) -> Result<IdArchive> {
        Self::open_with(storage, horizon, false)
    }

    /// Like `open`, but never changes the directory: superseded runs are
    /// ignored, and `add_run`, `expire` and `compact` fail.
    pub fn open_read_only(storage: Arc<dyn Storage>, horizon: Duration) -> Result<IdArchive> {
        Self::open_with(storage, horizon, true)
    }

    fn open_with(storage: Arc<dyn Storage>, horizon: Duration, read_only: bool) -> Result<IdArchive> {
        let names = storage.list().map_err(|e| io_error("listing the data directory", e))?;
        let mut runs = Vec::new();
        for name in names {
            if let Some(seq) = parse_run_name(&name) {
                runs.push(load_run(storage.as_ref(), &name, seq)?);
            }
        }
        let next_seq = runs.iter().map(|r| r.info.seq.max(r.info.last_seq)).max().map_or(1, |s| s + 1);
        let (mut live, superseded) = resolve_covers(runs)?;
        if !read_only && !superseded.is_empty() {
            for run in &superseded {
                storage.remove(&run.info.name).map_err(|e| io_error(format!("removing {}", run.info.name), e))?;
            }
            storage.sync_dir().map_err(|e| io_error("syncing the data directory", e))?;
        }
        live.sort_by_key(|r| std::cmp::Reverse(r.info.last_seq));
        let live = live.into_iter().map(Arc::new).collect();
        Ok(IdArchive {
            storage,
            horizon,
            read_only,
            live: Mutex::new(Live { runs: Arc::new(live), expired_before_unix_ns: 0 }),
            writers: Mutex::new(Writers { next_seq }),
            bytes_added: AtomicU64::new(0),
            bytes_merged: AtomicU64::new(0),
        })
    }

    /// How long an id is remembered after its timestamp.
    pub fn horizon(&self) -> Duration {
        self.horizon
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Run>>> {
        self.live.lock().runs.clone()
    }

    /// Ids older than this (ns since the Unix epoch) are beyond the horizon:
    /// the largest `now - horizon` any `expire` used, or what
    /// `set_expired_before` restored. Independent of the clock going back.
    pub fn expired_before_unix_ns(&self) -> u64 {
        self.live.lock().expired_before_unix_ns
    }

    /// Raises the expiry watermark, e.g. to the value a checkpoint saved
    /// (so a clock stepped back after a restart cannot revive expired ids).
    pub fn set_expired_before(&self, unix_ns: u64) {
        let mut live = self.live.lock();
        live.expired_before_unix_ns = live.expired_before_unix_ns.max(unix_ns);
    }

    /// Writes one run of `entries` (sorted by id, the last of equal ids
    /// kept); durable when it returns. Nothing to do for no entries.
    pub fn add_run(&self, entries: Vec<Remembered>) -> Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        if entries.is_empty() {
            return Ok(());
        }
        let entries = sort_dedup_keep_last(entries);
        let mut blob = Vec::new();
        let mut table = Vec::with_capacity(entries.len());
        for e in &entries {
            let reason_ref = match &e.aborted {
                None => 0,
                Some(reason) => {
                    let units = blob.len() as u64 / BLOB_ALIGN_BYTES + 1;
                    encode_reason_record(e.tx.as_u128(), reason, &mut blob);
                    u32::try_from(units).unwrap_or(u32::MAX)
                }
            };
            table.push(RawEntry { tx: e.tx.as_u128(), fingerprint: e.fingerprint, reason_ref });
        }
        if blob.len() as u64 > MAX_BLOB_BYTES {
            let why = "abort reasons of one run exceed 32 GiB: add fewer entries at once";
            return Err(io_error("writing an id archive run", io::Error::new(io::ErrorKind::InvalidInput, why)));
        }
        let mut writers = self.writers.lock();
        let seq = writers.next_seq;
        writers.next_seq += 1;
        let name = run_name(seq);
        self.storage
            .write_file_with(&name, &mut |out| {
                let mut t = TableWriter::new(out, seq)?;
                for &e in &table {
                    t.push(e)?;
                }
                let footer = Footer {
                    seq,
                    first_seq: seq,
                    last_seq: seq,
                    count: t.count,
                    blob_bytes: blob.len() as u64,
                    min_tx: t.min_tx,
                    max_tx: t.max_tx,
                };
                t.out.write_all(&blob)?;
                t.out.write_all(&encode_footer(&footer, header_crc(seq)))
            })
            .map_err(|e| io_error(format!("writing {name}"), e))?;
        // Read back what is now durable: the same checks as at open.
        let run = load_run(self.storage.as_ref(), &name, seq)?;
        // Relaxed: a statistic.
        self.bytes_added.fetch_add(run.info.file_bytes, Ordering::Relaxed);
        self.publish(&[], Some(run));
        Ok(())
    }

    /// Replaces the runs named in `removed` (and adds `added`) in the live list.
    fn publish(&self, removed: &[u64], added: Option<Run>) {
        let mut live = self.live.lock();
        let mut next: Vec<Arc<Run>> = live.runs.iter().filter(|r| !removed.contains(&r.info.seq)).cloned().collect();
        next.extend(added.map(Arc::new));
        next.sort_by_key(|r| std::cmp::Reverse(r.info.last_seq));
        live.runs = Arc::new(next);
    }

    /// The remembered outcome of `tx`: the runs whose id range covers it,
    /// newest first. An id outside every range costs no read. Says nothing
    /// of the horizon: the coordinator wants `lookup`.
    pub fn get(&self, tx: TxId) -> Result<Option<Remembered>> {
        search_runs(&self.snapshot(), tx)
    }

    /// What the archive knows of `tx`, the expiry watermark included: an id
    /// older than it is `BeyondHorizon` even if a run still holds it. The
    /// runs and the watermark are read together, so a concurrent `expire`
    /// can never make an id inside the old horizon look `Unknown`.
    pub fn lookup(&self, tx: TxId) -> Result<Lookup> {
        let (runs, expired_before_unix_ns) = {
            let live = self.live.lock();
            (live.runs.clone(), live.expired_before_unix_ns)
        };
        if tx.timestamp_ns() < expired_before_unix_ns {
            return Ok(Lookup::BeyondHorizon { expired_before_unix_ns });
        }
        Ok(search_runs(&runs, tx)?.map_or(Lookup::Unknown, Lookup::Remembered))
    }

    /// Removes the runs whose newest id is older than `now_unix_ns - horizon`
    /// (so every id inside the horizon stays). Returns how many.
    pub fn expire(&self, now_unix_ns: u64) -> Result<usize> {
        if self.read_only {
            return Err(read_only_error());
        }
        let _writers = self.writers.lock();
        let expired = {
            let mut live = self.live.lock();
            // A clock stepped back never lowers the watermark.
            let cutoff_ns = now_unix_ns.saturating_sub(horizon_ns(self.horizon)).max(live.expired_before_unix_ns);
            let (expired, kept): (Vec<Arc<Run>>, Vec<Arc<Run>>) =
                live.runs.iter().cloned().partition(|r| r.info.newest_unix_ns() < cutoff_ns);
            // Watermark and list together, before any file goes (a lookup
            // holding an old list keeps reading its open files).
            live.expired_before_unix_ns = cutoff_ns;
            live.runs = Arc::new(kept);
            expired
        };
        if expired.is_empty() {
            return Ok(0);
        }
        self.remove_files(&expired)?;
        Ok(expired.len())
    }

    fn remove_files(&self, runs: &[Arc<Run>]) -> Result<()> {
        for run in runs {
            self.storage.remove(&run.info.name).map_err(|e| io_error(format!("removing {}", run.info.name), e))?;
        }
        self.storage.sync_dir().map_err(|e| io_error("syncing the data directory", e))
    }

    /// Merges adjacent runs as `plan_merge` says: neighbours of similar size
    /// up to 1/32 of all bytes, then whatever brings the count to at most
    /// `MAX_RUNS`. Call it after each `add_run` (cheap when nothing is due).
    /// Each merge is durable before its inputs are removed; a crash in
    /// between leaves the inputs superseded (removed by the next `open`).
    pub fn compact(&self) -> Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        let mut writers = self.writers.lock();
        loop {
            let mut runs: Vec<Arc<Run>> = self.snapshot().iter().cloned().collect();
            runs.sort_by_key(|r| r.info.first_seq);
            let sizes: Vec<(u64, u64)> = runs.iter().map(|r| (r.info.file_bytes, r.info.blob_bytes)).collect();
            let Some(window) = plan_merge(&sizes) else {
                return Ok(());
            };
            let inputs = &runs[window];
            let seq = writers.next_seq;
            writers.next_seq += 1;
            let merged = self.merge(inputs, seq)?;
            // Relaxed: a statistic.
            self.bytes_merged.fetch_add(merged.info.file_bytes, Ordering::Relaxed);
            let seqs: Vec<u64> = inputs.iter().map(|r| r.info.seq).collect();
            self.publish(&seqs, Some(merged));
            self.remove_files(inputs)?;
        }
    }

    /// Writes run `seq` holding `inputs` (adjacent, oldest cover first): a
    /// k-way merge of their tables (the newest cover wins an id found in
    /// several), then their blobs concatenated (references rebased; reasons
    /// of dropped duplicates stay as dead bytes).
    fn merge(&self, inputs: &[Arc<Run>], seq: u64) -> Result<Run> {
        let name = run_name(seq);
        let mut failure: Option<Error> = None;
        let written = self.storage.write_file_with(&name, &mut |out| {
            merge_into(out, inputs, seq).map_err(|e| {
                let message = e.to_string();
                failure = Some(e);
                io::Error::other(message)
            })
        });
        if let Err(e) = written {
            return Err(failure.take().unwrap_or_else(|| io_error(format!("writing {name}"), e)));
        }
        load_run(self.storage.as_ref(), &name, seq)
    }

    /// The live runs, newest cover first.
    pub fn runs(&self) -> Vec<RunInfo> {
        self.snapshot().iter().map(|r| r.info.clone()).collect()
    }

    /// Reads all of run `seq` (every entry's crc and order, every reason
    /// record): what `open` does not, as its cost grows with the ids.
    /// Returns the entries checked.
    pub fn verify(&self, seq: u64) -> Result<u64> {
        let runs = self.snapshot();
        let run = runs.iter().find(|r| r.info.seq == seq).ok_or_else(|| {
            io_error(format!("verifying run {seq:016x}"), io::Error::new(io::ErrorKind::NotFound, "no such live run"))
        })?;
        let mut cursor = Cursor::new(run);
        let mut checked = 0;
        while let Some(e) = cursor.next_entry()? {
            if checked == 0 && e.tx != run.info.min_tx.as_u128() {
                return Err(corrupt(&run.info.name, entry_offset(0), "first entry differs from the footer's range"));
            }
            outcome(run, e)?;
            checked += 1;
        }
        if cursor.last != Some(run.info.max_tx.as_u128()) {
            return Err(corrupt(&run.info.name, entry_offset(checked), "last entry differs from the footer's range"));
        }
        Ok(checked)
    }

    /// Totals over the live runs.
    pub fn stats(&self) -> ArchiveStats {
        let runs = self.snapshot();
        let per_run = |r: &Run| {
            let inline = std::mem::size_of::<Run>() + std::mem::size_of::<Arc<Run>>();
            (inline + r.info.name.capacity() + std::mem::size_of_val(&*r.samples)) as u64
        };
        ArchiveStats {
            runs: runs.len(),
            ids: runs.iter().map(|r| r.info.ids).sum(),
            bytes_on_disk: runs.iter().map(|r| r.info.file_bytes).sum(),
            bytes_in_memory: std::mem::size_of::<IdArchive>() as u64 + runs.iter().map(|r| per_run(r)).sum::<u64>(),
            // Relaxed: statistics.
            bytes_added: self.bytes_added.load(Ordering::Relaxed),
            bytes_merged: self.bytes_merged.load(Ordering::Relaxed),
        }
    }
}

fn search_runs(runs: &[Arc<Run>], tx: TxId) -> Result<Option<Remembered>> {
    for run in runs {
        if let Some(e) = search(run, tx.as_u128())? {
            return outcome(run, e).map(Some);
        }
    }
    Ok(None)
}

fn header_crc(seq: u64) -> u32 {
    u32_at(&encode_header(seq), 24)
}

/// The merged run's bytes (see `IdArchive::merge`), streamed into `out`.
fn merge_into(out: &mut dyn Write, inputs: &[Arc<Run>], seq: u64) -> Result<()> {
    let write_error = |e: io::Error| io_error(format!("writing {}", run_name(seq)), e);
    let mut bases = Vec::with_capacity(inputs.len());
    let mut blob_bytes = 0u64;
    for run in inputs {
        bases.push(blob_bytes / BLOB_ALIGN_BYTES);
        blob_bytes += run.info.blob_bytes;
    }
    debug_assert!(blob_bytes <= MAX_BLOB_BYTES, "plan_merge keeps the blob addressable");
    let mut cursors: Vec<Cursor<'_>> = inputs.iter().map(|r| Cursor::new(r)).collect();
    let mut heads = Vec::with_capacity(cursors.len());
    for c in &mut cursors {
        heads.push(c.next_entry()?);
    }
    let mut table = TableWriter::new(out, seq).map_err(write_error)?;
    while let Some(tx) = heads.iter().flatten().map(|e| e.tx).min() {
        // Inputs are in cover order: the last holding `tx` is the newest.
        let mut chosen = None;
        for (i, cursor) in cursors.iter_mut().enumerate() {
            if let Some(e) = heads[i].filter(|e| e.tx == tx) {
                chosen = Some((i, e));
                heads[i] = cursor.next_entry()?;
            }
        }
        let Some((i, mut e)) = chosen else { unreachable!("some head holds the minimum") };
        if e.reason_ref != 0 {
            let rebased = u64::from(e.reason_ref) + bases[i];
            e.reason_ref =
                u32::try_from(rebased).map_err(|_| corrupt(&inputs[i].info.name, 0, "reason ref overflow"))?;
        }
        table.push(e).map_err(write_error)?;
    }
    let footer = Footer {
        seq,
        first_seq: inputs[0].info.first_seq,
        last_seq: inputs[inputs.len() - 1].info.last_seq,
        count: table.count,
        blob_bytes,
        min_tx: table.min_tx,
        max_tx: table.max_tx,
    };
    let out = table.out;
    let mut chunk = vec![0u8; COPY_CHUNK_BYTES.min(blob_bytes) as usize];
    for run in inputs {
        let start = entry_offset(run.info.ids);
        let mut done = 0;
        while done < run.info.blob_bytes {
            let n = COPY_CHUNK_BYTES.min(run.info.blob_bytes - done) as usize;
            read_exact(run, start + done, &mut chunk[..n])?;
            out.write_all(&chunk[..n]).map_err(write_error)?;
            done += n as u64;
        }
    }
    out.write_all(&encode_footer(&footer, header_crc(seq))).map_err(write_error)
}

#[cfg(test)]
mod tests;
