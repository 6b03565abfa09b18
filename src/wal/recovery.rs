//! The recovery scan, shared by `Wal::open` (which then acts on it) and
//! `Wal::inspect` (which only reports).
//!
//! Rules (see docs/design.md Part II, "Recovery rules"):
//! - Start at the newest valid checkpoint's position (or 0); segments wholly
//!   below it are obsolete and ignored.
//! - Follow the record chain from there across segments. A segment ends
//!   when fewer than 32 bytes remain; padding records fill sealed tails.
//! - The first position where the chain breaks is X (zero bytes there are
//!   the normal end of the log).
//! - After X, look for any valid record (at every 8-byte offset). X is proven
//!   corrupt when a valid sync marker after X states a durable position
//!   above X (those bytes had been synced), or when X is a missing segment
//!   file with valid records after it. Proven corruption refuses to open.
//! - Otherwise everything from X on is an unacknowledged tail: discarded,
//!   and the bytes up to the last nonzero one are reported as torn.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::checkpoint::{self, parse_checkpoint_name};
use super::format::FORMAT_FILE;
use super::record::{self, HEADER_BYTES, Invalid, KIND_SYNC_MARKER};
use super::segment::{looks_like_segment, parse_segment_name, segment_base, segment_name};
use super::storage::{Storage, TEMP_SUFFIX};
use super::{Lsn, WalConfig, WalError};

/// One record handed back by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Position of the record's first byte (its header).
    pub lsn: Lsn,
    pub kind: u8,
    pub payload: Vec<u8>,
}

impl Record {
    /// The position just past the record: what `append` returned for it.
    pub fn end_lsn(&self) -> Lsn {
        Lsn(self.lsn.0 + record::record_bytes(self.payload.len() as u64))
    }
}

/// What `Wal::open` recovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The newest valid checkpoint: its position and snapshot.
    pub checkpoint: Option<(Lsn, Vec<u8>)>,
    /// Every valid engine record at or after the checkpoint, in log order.
    pub records: Vec<Record>,
    pub segments_scanned: usize,
    /// Bytes discarded after the last valid record (from the first invalid
    /// position up to the last nonzero byte after it); 0 after a clean stop.
    pub torn_tail_bytes: u64,
    /// Where appending continues.
    pub end_lsn: Lsn,
}

/// One thing `inspect` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub offset: u64,
    /// Stable kind: `leftover_temp_file`, `checkpoint_invalid`,
    /// `segment_size`, `missing_segment` (the log ends at a missing file),
    /// `torn_tail` (it ends at an invalid record), `bytes_after_end`; and
    /// names the log ignores: `malformed_name` (`seg-1.wal`),
    /// `stray_segment_name` (an id beyond any position),
    /// `not_a_regular_file` (a directory or symlink named like a log file).
    pub kind: &'static str,
    pub what: String,
}

/// What `Wal::open` would decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The log ends cleanly.
    Clean,
    /// Open would discard this many tail bytes.
    TornTail { bytes: u64 },
    /// Open would refuse. `kind`: `segment_size`, `missing_segment`,
    /// `checksum_mismatch` or `invalid_record`.
    Corrupt { file: String, offset: u64, reason: String, kind: &'static str },
}

/// Read-only report of `Wal::inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    pub problems: Vec<Problem>,
    /// The records open would return.
    pub records: Vec<Record>,
    pub checkpoint: Option<(Lsn, Vec<u8>)>,
    pub segments_scanned: usize,
    /// Valid records found after the first invalid position (discarded as
    /// an unacknowledged tail unless the verdict is `Corrupt`).
    pub records_after_break: usize,
    pub end_lsn: Lsn,
    pub verdict: Verdict,
    /// The configuration the scan used: the caller's with the directory's
    /// recorded (or, for an older directory, inferred) format.
    pub config: WalConfig,
}

/// Bound on the problems one inspection lists.
const MAX_PROBLEMS: usize = 1000;

/// Where the chain broke.
#[derive(Debug, Clone)]
pub(super) struct Break {
    pub position: u64,
    pub segment: u64,
    pub reason: String,
    pub missing_segment: bool,
    /// `Invalid::kind` of the record there (`missing_segment` if none).
    pub kind: &'static str,
}

/// Result of the read-only scan.
#[derive(Debug)]
pub(super) struct Scan {
    pub checkpoint: Option<(Lsn, Vec<u8>)>,
    pub start: u64,
    /// Segment files with id >= start / S, by id.
    pub segments: BTreeMap<u64, String>,
    /// Segment files wholly below the checkpoint.
    pub obsolete: BTreeMap<u64, String>,
    pub temps: Vec<String>,
    /// Checkpoint files other than the chosen one.
    pub stale_checkpoints: Vec<String>,
    pub records: Vec<Record>,
    pub end: u64,
    /// End of the last nonzero byte at or after `end` (== `end` if none).
    pub torn_end: u64,
    pub records_after_break: usize,
    pub corrupt: Option<WalError>,
    /// The `Verdict::Corrupt` kind of `corrupt`.
    pub corrupt_kind: &'static str,
    pub problems: Vec<Problem>,
    pub segments_scanned: usize,
}

/// Per-segment result, computed in parallel.
#[derive(Debug, Default)]
struct SegmentScan {
    wrong_size: Option<u64>,
    /// Valid records of the chain: (offset, kind, payload).
    chain: Vec<(u64, u8, Vec<u8>)>,
    /// Offset where the chain stopped, and why (None: segment end reached).
    chain_break: Option<(u64, Invalid)>,
    /// Highest durable position stated by a valid sync marker after the
    /// chain break, and how many valid records were found there.
    marker_after_break: u64,
    /// Highest durable position stated by a sync marker in the chain.
    chain_marker_max: u64,
    valid_after_break: usize,
    /// Invalid regions after the break (offset, reason), bounded.
    invalid_after_break: Vec<(u64, Invalid)>,
    /// End offset of the last nonzero byte after the chain start.
    last_nonzero_end: u64,
    read_error: Option<String>,
}

fn scan_segment(storage: &dyn Storage, name: &str, id: u64, from: u64, segment_bytes: u64) -> SegmentScan {
    let mut out = SegmentScan::default();
    // The length first: a hostile huge file under a segment name is
    // reported, never read into memory.
    match storage.open_read(name).map(|file| file.len()) {
        Ok(len) if len == segment_bytes => {}
        Ok(len) => {
            out.wrong_size = Some(len);
            return out;
        }
        Err(e) => {
            out.read_error = Some(e.to_string());
            return out;
        }
    }
    let bytes = match storage.read_file(name) {
        Ok(bytes) => bytes,
        Err(e) => {
            out.read_error = Some(e.to_string());
            return out;
        }
    };
    if bytes.len() as u64 != segment_bytes {
        out.wrong_size = Some(bytes.len() as u64);
        return out;
    }
    let base = id * segment_bytes;
    out.last_nonzero_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1).max(from);
    let mut offset = from;
    while offset + HEADER_BYTES <= segment_bytes {
        let at = offset as usize;
        match record::decode(&bytes[at..], base + offset, id) {
            Ok(decoded) => {
                if decoded.kind == KIND_SYNC_MARKER {
                    out.chain_marker_max = out.chain_marker_max.max(record::marker_durable(&bytes[at..], &decoded));
                } else if decoded.kind != record::KIND_PADDING {
                    let start = at + decoded.payload_start;
                    out.chain.push((offset, decoded.kind, bytes[start..start + decoded.payload_len].to_vec()));
                }
                offset += decoded.total_bytes;
            }
            Err(why) => {
                out.chain_break = Some((offset, why));
                break;
            }
        }
    }
    let Some((break_offset, _)) = out.chain_break else {
        return out;
    };
    // Resynchronise: try every 8-byte offset after the break.
    let mut offset = break_offset;
    let mut in_invalid_region = false;
    while offset + HEADER_BYTES <= segment_bytes {
        let at = offset as usize;
        match record::decode(&bytes[at..], base + offset, id) {
            Ok(decoded) if offset > break_offset => {
                out.valid_after_break += 1;
                if decoded.kind == KIND_SYNC_MARKER {
                    out.marker_after_break = out.marker_after_break.max(record::marker_durable(&bytes[at..], &decoded));
                }
                in_invalid_region = false;
                offset += decoded.total_bytes;
            }
            Ok(_) => offset += record::ALIGN_BYTES,
            Err(why) => {
                let zero = bytes[at..at + record::ALIGN_BYTES as usize].iter().all(|&b| b == 0);
                if !zero && !in_invalid_region && offset > break_offset && out.invalid_after_break.len() < MAX_PROBLEMS
                {
                    out.invalid_after_break.push((offset, why));
                }
                in_invalid_region = !zero;
                offset += record::ALIGN_BYTES;
            }
        }
    }
    out
}

/// Prefix of the immutable side files another part of the engine keeps in
/// the data directory (`ids-<16 hex>.run`, `durable::ids`): not log files,
/// never read or removed (their leftover temps are, like every `*.tmp`).
const SIDE_FILE_PREFIX: &str = "ids-";

/// The directory sorted into what the log owns, with the names it ignores
/// reported as problems.
struct Listing {
    segment_files: BTreeMap<u64, String>,
    checkpoints: BTreeMap<u64, String>,
    temps: Vec<String>,
    problems: Vec<Problem>,
}

fn ignored(problems: &mut Vec<Problem>, name: &str, kind: &'static str, what: String) {
    if problems.len() < MAX_PROBLEMS {
        problems.push(Problem { file: name.to_owned(), offset: 0, kind, what });
    }
}

/// Sorts `names` (regular files) and `non_files` (everything else). Any
/// name is accepted: the ones that are not exactly what the log writes are
/// ignored, and reported when they look like log files.
fn classify(names: Vec<String>, non_files: Vec<String>, segment_bytes: u64) -> Listing {
    let mut listing = Listing {
        segment_files: BTreeMap::new(),
        checkpoints: BTreeMap::new(),
        temps: Vec::new(),
        problems: Vec::new(),
    };
    for name in non_files {
        if looks_like_segment(&name) || name.starts_with("checkpoint-") || name.starts_with(FORMAT_FILE) {
            let what = "named like a log file but not a regular file (ignored, never followed)".to_string();
            ignored(&mut listing.problems, &name, "not_a_regular_file", what);
        }
    }
    for name in names {
        // Temp files first: every `*.tmp` is a leftover of an interrupted
        // atomic write (the id archive's included, which relies on the log's
        // open to remove them).
        if name.ends_with(TEMP_SUFFIX) {
            listing.temps.push(name);
        } else if name.starts_with(SIDE_FILE_PREFIX) || name == FORMAT_FILE {
            continue;
        } else if let Some(id) = parse_segment_name(&name) {
            if segment_base(id, segment_bytes).is_some() {
                listing.segment_files.insert(id, name);
            } else {
                let what = format!("segment id {id:#x} lies beyond the last position of any log (ignored)");
                ignored(&mut listing.problems, &name, "stray_segment_name", what);
            }
        } else if let Some(lsn) = parse_checkpoint_name(&name) {
            listing.checkpoints.insert(lsn, name);
        } else if looks_like_segment(&name) || name.starts_with("checkpoint-") {
            let what = "not a name the log writes (ignored)".to_string();
            ignored(&mut listing.problems, &name, "malformed_name", what);
        }
    }
    listing
}

/// Scans the log in `storage` without modifying anything. `config` holds
/// the directory's own format (see `format.rs`).
pub(super) fn scan(storage: &dyn Storage, config: &WalConfig, names: Vec<String>) -> Result<Scan, WalError> {
    let segment_bytes = config.segment_size_bytes;
    let non_files = storage.list_non_files().map_err(|e| WalError::io("list directory", "", e))?;
    let Listing { mut segment_files, checkpoints, temps, mut problems } = classify(names, non_files, segment_bytes);
    for temp in &temps {
        ignored(&mut problems, temp, "leftover_temp_file", "leftover temporary file (removed on open)".into());
    }

    // The newest valid checkpoint; newer invalid ones are reported.
    let mut chosen = None;
    let mut stale_checkpoints = Vec::new();
    for (&lsn, name) in checkpoints.iter().rev() {
        if chosen.is_some() {
            stale_checkpoints.push(name.clone());
            continue;
        }
        let verdict = storage
            .read_file(name)
            .map_err(|e| e.to_string())
            .and_then(|bytes| checkpoint::decode(bytes, lsn).map_err(str::to_owned));
        match verdict {
            Ok(snapshot) => chosen = Some((Lsn(lsn), snapshot)),
            Err(what) => {
                problems.push(Problem {
                    file: name.clone(),
                    offset: 0,
                    kind: "checkpoint_invalid",
                    what: format!("invalid checkpoint ignored: {what}"),
                });
                stale_checkpoints.push(name.clone());
            }
        }
    }
    let start = chosen.as_ref().map_or(0, |(lsn, _)| lsn.0);
    let first_id = start / segment_bytes;
    let obsolete = segment_files.split_off(&first_id);
    let (segments, obsolete) = (obsolete, segment_files);

    let scans: Vec<(u64, SegmentScan)> = segments
        .par_iter()
        .map(|(&id, name)| {
            let from = if id == first_id { start - id * segment_bytes } else { 0 };
            (id, scan_segment(storage, name, id, from, segment_bytes))
        })
        .collect();
    let scans: BTreeMap<u64, SegmentScan> = scans.into_iter().collect();

    let mut records = Vec::new();
    let mut broke: Option<Break> = None;
    let mut end = start;
    let mut torn_end = start;
    let mut records_after_break = 0usize;
    let mut marker_after_break = 0u64;
    let mut corrupt = None;
    let mut corrupt_kind = "invalid_record";
    // Over the files found, in id order, never over an id range: a stray
    // far-future name costs one entry, not 2^64 iterations. `expected` is
    // the id the chain needs next; a file beyond it means the ones between
    // are missing.
    let mut expected = first_id;
    for (&id, name) in &segments {
        let base = id * segment_bytes; // fits: `classify` checked `segment_base`
        let scan = scans.get(&id);
        if broke.is_none() && id > expected {
            let position = (expected * segment_bytes).max(start);
            broke = Some(Break {
                position,
                segment: expected,
                reason: "segment file missing".into(),
                missing_segment: true,
                kind: "missing_segment",
            });
            end = position;
            torn_end = end;
        }
        expected = id + 1;
        if let Some(size) = scan.and_then(|s| s.wrong_size) {
            let reason = format!("segment has {size} bytes, expected {segment_bytes}");
            ignored(&mut problems, name, "segment_size", reason.clone());
            if corrupt.is_none() {
                corrupt = Some(WalError::Corrupt { file: name.clone(), offset: 0, reason });
                corrupt_kind = "segment_size";
            }
        }
        if let Some(error) = scan.and_then(|s| s.read_error.as_ref()) {
            return Err(WalError::io("read segment", name.clone(), std::io::Error::other(error.clone())));
        }
        let scan = scan.filter(|s| s.wrong_size.is_none());
        match (&broke, scan) {
            (None, None) => {
                // A file of the wrong size counts as missing (and is corrupt).
                broke = Some(Break {
                    position: base.max(start),
                    segment: id,
                    reason: "segment file missing".into(),
                    missing_segment: true,
                    kind: "missing_segment",
                });
                end = base.max(start);
                torn_end = end;
            }
            (None, Some(scan)) => {
                for (offset, kind, payload) in &scan.chain {
                    records.push(Record { lsn: Lsn(base + offset), kind: *kind, payload: payload.clone() });
                }
                match scan.chain_break {
                    None => end = base + segment_bytes,
                    Some((offset, why)) => {
                        broke = Some(Break {
                            position: base + offset,
                            segment: id,
                            reason: why.describe().into(),
                            missing_segment: false,
                            kind: why.kind(),
                        });
                        end = base + offset;
                        torn_end = base + scan.last_nonzero_end.max(offset);
                        records_after_break += scan.valid_after_break;
                        marker_after_break = marker_after_break.max(scan.marker_after_break);
                        for &(offset, why) in &scan.invalid_after_break {
                            if problems.len() < MAX_PROBLEMS {
                                problems.push(Problem {
                                    file: name.clone(),
                                    offset,
                                    kind: "bytes_after_end",
                                    what: format!("invalid bytes after the end of the log: {}", why.describe()),
                                });
                            }
                        }
                    }
                }
            }
            (Some(_), None) => {}
            (Some(_), Some(scan)) => {
                // Everything in a segment after the break counts as "after".
                records_after_break += scan.chain.len() + scan.valid_after_break;
                marker_after_break = marker_after_break.max(scan.marker_after_break).max(scan.chain_marker_max);
                if scan.last_nonzero_end > 0 {
                    torn_end = torn_end.max(base + scan.last_nonzero_end);
                }
            }
        }
    }
    let segments_scanned = scans.len();
    if let Some(b) = &broke {
        let proven = marker_after_break > b.position || (b.missing_segment && records_after_break > 0);
        let offset = b.position - b.segment * segment_bytes;
        if proven && corrupt.is_none() {
            let reason = if b.missing_segment {
                format!("segment file missing while {records_after_break} valid records follow")
            } else {
                format!(
                    "{}; a later sync marker proves position {} was durable ({} valid records follow)",
                    b.reason, b.position, records_after_break
                )
            };
            corrupt = Some(WalError::Corrupt { file: segment_name(b.segment), offset, reason });
            corrupt_kind = b.kind;
        }
        let torn = torn_end.saturating_sub(b.position);
        if torn > 0 || b.missing_segment {
            problems.push(Problem {
                file: segment_name(b.segment),
                offset,
                kind: if b.missing_segment { "missing_segment" } else { "torn_tail" },
                what: format!(
                    "log ends at an invalid record ({}); {torn} bytes and {records_after_break} valid but unproven records after it",
                    b.reason
                ),
            });
        }
    }
    Ok(Scan {
        checkpoint: chosen,
        start,
        segments,
        obsolete,
        temps,
        stale_checkpoints,
        records,
        end,
        torn_end: torn_end.max(end),
        records_after_break,
        corrupt,
        corrupt_kind,
        problems,
        segments_scanned,
    })
}
