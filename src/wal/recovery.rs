//! The recovery scan, shared by `Wal::open` (which then acts on it) and
//! `Wal::inspect` (which only reports).
//!
//! Rules (see WAL_NOTES.md):
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
use super::record::{self, HEADER_BYTES, Invalid, KIND_SYNC_MARKER};
use super::segment::{parse_segment_name, segment_name};
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
    /// `torn_tail` (it ends at an invalid record), `bytes_after_end`.
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

/// Scans the log in `storage` without modifying anything.
pub(super) fn scan(storage: &dyn Storage, config: &WalConfig) -> Result<Scan, WalError> {
    let segment_bytes = config.segment_size_bytes;
    let names = storage.list().map_err(|e| WalError::io("list directory", "", e))?;
    let mut segment_files = BTreeMap::new();
    let mut checkpoints = BTreeMap::new();
    let mut temps = Vec::new();
    for name in names {
        if name.ends_with(TEMP_SUFFIX) {
            temps.push(name);
        } else if let Some(id) = parse_segment_name(&name) {
            segment_files.insert(id, name);
        } else if let Some(lsn) = parse_checkpoint_name(&name) {
            checkpoints.insert(lsn, name);
        }
    }
    let mut problems = Vec::new();
    for temp in &temps {
        problems.push(Problem {
            file: temp.clone(),
            offset: 0,
            kind: "leftover_temp_file",
            what: "leftover temporary file (removed on open)".into(),
        });
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
    let last_id = segments.keys().next_back().copied().unwrap_or(first_id);
    let mut corrupt = None;
    let mut corrupt_kind = "invalid_record";
    for id in first_id..=last_id.max(first_id) {
        let base = id * segment_bytes;
        let name = segment_name(id);
        let scan = scans.get(&id);
        if let Some(size) = scan.and_then(|s| s.wrong_size) {
            let reason = format!("segment has {size} bytes, expected {segment_bytes}");
            problems.push(Problem { file: name.clone(), offset: 0, kind: "segment_size", what: reason.clone() });
            if corrupt.is_none() {
                corrupt = Some(WalError::Corrupt { file: name.clone(), offset: 0, reason });
                corrupt_kind = "segment_size";
            }
        }
        if let Some(error) = scan.and_then(|s| s.read_error.as_ref()) {
            return Err(WalError::io("read segment", name, std::io::Error::other(error.clone())));
        }
        let scan = scan.filter(|s| s.wrong_size.is_none());
        match (&broke, scan) {
            (None, None) => {
                if segments.range(id..).next().is_some() {
                    broke = Some(Break {
                        position: base.max(start),
                        segment: id,
                        reason: "segment file missing".into(),
                        missing_segment: true,
                        kind: "missing_segment",
                    });
                    end = base.max(start);
                    torn_end = end;
                } else {
                    // No file at or after this id: the chain ran off the end.
                    break;
                }
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
