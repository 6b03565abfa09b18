//! `dtc verify` on data directories written by real runs: a clean one and
//! one killed with SIGKILL pass; copies damaged in one way each are caught
//! with the right kind, file and offset; and verify never changes a byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dtc::{Coordinator, Durability, Ledger, Outcome, Transfer};

const ACCOUNTS: i128 = 200;
const BALANCE: i128 = 1_000;
const RECORD_HEADER_BYTES: usize = 32;
const CHECKPOINT_HEADER_BYTES: usize = 32;

fn dtc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dtc"))
}

fn bench_args(dir: &Path, seconds: &str) -> Vec<String> {
    let mut args: Vec<String> =
        ["bench", "--durability", "sync", "--threads", "2", "--services", "2", "--accounts", "200"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(["--seconds".into(), seconds.into(), "--json".into(), "--dir".into()]);
    args.push(dir.display().to_string());
    args
}

/// A directory written by a complete one-second run.
fn clean_run(dir: &Path) {
    let out = dtc().args(bench_args(dir, "1")).output().unwrap();
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A directory written by a run killed with SIGKILL while transactions were
/// being committed. The kill comes once 200 outcomes were acknowledged (and
/// ~200 ms more), not after a fixed sleep: on a loaded machine the run may
/// not have committed anything 200 ms after it started.
fn killed_run(dir: &Path, ack_log: &Path) {
    let mut child = dtc()
        .args(bench_args(dir, "60"))
        .arg("--ack-log")
        .arg(ack_log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let acknowledged = std::fs::read_to_string(ack_log).map(|t| t.lines().count()).unwrap_or(0);
        if acknowledged >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the run acknowledged only {acknowledged} outcomes in 60 s");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Every file's name and bytes (hashed: segments are 64 MiB).
fn fingerprint(dir: &Path) -> BTreeMap<String, (u64, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), (bytes.len() as u64, crc32fast::hash(&bytes)))
        })
        .collect()
}

/// Runs `dtc verify --json`, checks that it changed nothing, and returns the
/// exit code and the report.
fn verify(dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let before = fingerprint(dir);
    let out: Output = dtc().args(["verify", "--json", "--dir"]).arg(dir).args(extra).output().unwrap();
    assert_eq!(fingerprint(dir), before, "verify changed {}", dir.display());
    let code = out.status.code().expect("verify exited normally");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (code, report)
}

fn assert_passes(dir: &Path) -> serde_json::Value {
    let (code, report) = verify(dir, &[]);
    assert_eq!(code, 0, "verify failed on an undamaged directory: {report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["accounts"], ACCOUNTS as u64);
    assert_eq!(report["total_balance"].as_i64().map(i128::from), Some(ACCOUNTS * BALANCE));
    assert_eq!(report["negative_balances"], 0);
    report
}

/// The problems of `kind` in `report`.
fn problems<'a>(report: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    report["problems"].as_array().map(|p| p.iter().filter(|p| p["kind"] == kind).collect()).unwrap_or_default()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn file_with(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    files.sort();
    files
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    let found = file_with(dir, "checkpoint-", ".ckpt");
    assert_eq!(found.len(), 1, "one checkpoint in {}", dir.display());
    found[0].clone()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A record in a segment file (the layout of `src/wal/record.rs`).
#[derive(Debug, Clone, Copy)]
struct RecordAt {
    offset: usize,
    kind: u8,
    payload_len: usize,
}

/// The records of segment 0 from `from` on, following the chain as
/// recovery does (padding and sync markers included).
fn records_in(segment: &[u8], from: usize) -> Vec<RecordAt> {
    let mut records = Vec::new();
    let mut offset = from;
    while offset + RECORD_HEADER_BYTES <= segment.len() && &segment[offset..offset + 4] == b"DWAL" {
        let payload_len = u32_at(segment, offset + 4) as usize;
        let kind = segment[offset + 24];
        records.push(RecordAt { offset, kind, payload_len });
        offset += (RECORD_HEADER_BYTES + payload_len).div_ceil(8) * 8;
    }
    records
}

/// Recomputes a record's checksum after its payload was edited.
fn reseal_record(segment: &mut [u8], record: RecordAt) {
    let start = record.offset;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&segment[start..start + 28]);
    hasher.update(&segment[start + RECORD_HEADER_BYTES..start + RECORD_HEADER_BYTES + record.payload_len]);
    let crc = hasher.finalize();
    segment[start + 28..start + 32].copy_from_slice(&crc.to_le_bytes());
}

/// Rewrites the first account's balance in the checkpoint (layout of
/// `src/wal/checkpoint.rs` and `src/durable/codec.rs`) and fixes both
/// checksums, so that only the meaning is damaged.
fn edit_first_balance(checkpoint: &Path, edit: impl FnOnce(i64) -> i64) {
    let mut bytes = std::fs::read(checkpoint).unwrap();
    let snapshot = CHECKPOINT_HEADER_BYTES;
    assert_eq!(&bytes[snapshot..snapshot + 8], b"DTCCKPT2");
    // magic (8), high water (16), ledger count (8), service name, account count (8).
    let mut at = snapshot + 8 + 16 + 8;
    at += 2 + usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    assert!(u64_at(&bytes, at) > 0, "the first ledger has accounts");
    at += 8;
    at += 2 + usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    let balance = i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    bytes[at..at + 8].copy_from_slice(&edit(balance).to_le_bytes());
    let snapshot_crc = crc32fast::hash(&bytes[snapshot..]);
    bytes[24..28].copy_from_slice(&snapshot_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&header_crc.to_le_bytes());
    std::fs::write(checkpoint, bytes).unwrap();
}

#[test]
fn a_clean_run_passes_and_checkpoint_damage_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clean");
    clean_run(&dir);
    let report = assert_passes(&dir);
    assert_eq!(report["recoverable"], true);
    // Asserting the total the operator knows passes too.
    let (code, _) = verify(&dir, &["--expect-total", &(ACCOUNTS * BALANCE).to_string()]);
    assert_eq!(code, 0);

    // A truncated checkpoint: recovery would have nothing to start from.
    let truncated = tmp.path().join("truncated");
    copy_dir(&dir, &truncated);
    let checkpoint = checkpoint_path(&truncated);
    let len = std::fs::metadata(&checkpoint).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&checkpoint).unwrap().set_len(len / 2).unwrap();
    let (code, report) = verify(&truncated, &[]);
    assert_eq!(code, 2, "{report:#}");
    let invalid = problems(&report, "checkpoint_invalid");
    assert_eq!(invalid.len(), 1, "{report:#}");
    assert_eq!(invalid[0]["file"], checkpoint.file_name().unwrap().to_str().unwrap());
    assert_eq!(invalid[0]["fatal"], true);
    assert_eq!(report["recoverable"], false);

    // One balance raised by 1 with valid checksums: the checkpoint is
    // consistent with itself, so only the operator's total catches it.
    let raised = tmp.path().join("raised");
    copy_dir(&dir, &raised);
    edit_first_balance(&checkpoint_path(&raised), |b| b + 1);
    let (code, report) = verify(&raised, &["--expect-total", &(ACCOUNTS * BALANCE).to_string()]);
    assert_eq!(code, 1, "{report:#}");
    let lost = problems(&report, "money_not_conserved");
    assert_eq!(lost.len(), 1, "{report:#}");
    assert!(lost[0]["detail"].as_str().unwrap().contains("difference 1"), "{report:#}");

    // One balance made negative.
    let negative = tmp.path().join("negative");
    copy_dir(&dir, &negative);
    edit_first_balance(&checkpoint_path(&negative), |_| -5);
    let (code, report) = verify(&negative, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(problems(&report, "checkpoint_negative_balance").len(), 1, "{report:#}");
    assert_eq!(problems(&report, "negative_balance").len(), 1, "{report:#}");
    assert_eq!(report["negative_balances"], 1);
}

#[test]
fn a_killed_run_passes_and_record_damage_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("killed");
    killed_run(&dir, &tmp.path().join("acks"));
    let report = assert_passes(&dir);
    assert!(report["records"].as_u64().unwrap() >= 200, "{report:#}");
    assert!(report["commits"].as_u64().unwrap() > 0, "{report:#}");

    let checkpoint_lsn = report["checkpoint_lsn"].as_u64().unwrap() as usize;
    let segment_name = "seg-0000000000000000.wal";
    let segment = std::fs::read(dir.join(segment_name)).unwrap();
    assert!(checkpoint_lsn < segment.len(), "the killed run's records start in segment 0");
    let commits: Vec<RecordAt> = records_in(&segment, checkpoint_lsn).into_iter().filter(|r| r.kind == 1).collect();
    assert!(commits.len() >= 100, "{} commit records", commits.len());
    let middle = commits[commits.len() / 2];

    // A flipped bit in a record in the middle of the log: later sync markers
    // prove it had been synced, so recovery refuses.
    let flipped = tmp.path().join("flipped");
    copy_dir(&dir, &flipped);
    let mut bytes = segment.clone();
    bytes[middle.offset + RECORD_HEADER_BYTES + middle.payload_len / 2] ^= 0x10;
    std::fs::write(flipped.join(segment_name), &bytes).unwrap();
    let (code, report) = verify(&flipped, &[]);
    assert_eq!(code, 2, "{report:#}");
    let bad = problems(&report, "checksum_mismatch");
    assert_eq!(bad.len(), 1, "{report:#}");
    assert_eq!(bad[0]["file"], segment_name);
    assert_eq!(bad[0]["offset"], middle.offset as u64);
    assert_eq!(bad[0]["fatal"], true);

    // A commit whose amounts no longer sum to zero, checksum recomputed: only
    // the replay can tell. A commit payload is tx (16), fingerprint (8),
    // change count (8), then per change service, account, delta (i64).
    let unbalanced = tmp.path().join("unbalanced");
    copy_dir(&dir, &unbalanced);
    let mut bytes = segment.clone();
    let payload = middle.offset + RECORD_HEADER_BYTES;
    let mut at = payload + 16 + 8 + 8;
    for _ in 0..2 {
        at += 2 + usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    }
    let delta = i64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    bytes[at..at + 8].copy_from_slice(&(delta + 7).to_le_bytes());
    reseal_record(&mut bytes, middle);
    std::fs::write(unbalanced.join(segment_name), &bytes).unwrap();
    let (code, report) = verify(&unbalanced, &[]);
    assert_eq!(code, 1, "{report:#}");
    let lost = problems(&report, "money_not_conserved");
    assert_eq!(lost.len(), 2, "the record, then the total: {report:#}");
    assert_eq!(lost[0]["file"], segment_name);
    assert_eq!(lost[0]["offset"], middle.offset as u64);
    assert_eq!(lost[1]["file"], "replay");
    assert_eq!(report["total_balance"].as_i64().map(i128::from), Some(ACCOUNTS * BALANCE + 7));
}

/// A log spread over several small segments (the CLI always uses 64 MiB
/// ones), copied while the coordinator runs: a crash image with records in
/// many segments.
#[test]
fn a_missing_segment_in_the_middle_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let ledgers: Vec<Ledger> = (0..2).map(|_| Ledger::new()).collect();
    for (s, ledger) in ledgers.iter().enumerate() {
        for a in 0..100 {
            ledger.create_account(&format!("acct-{}", s * 100 + a), 1_000).unwrap();
        }
    }
    let dtc = Coordinator::builder()
        .service("svc-0", ledgers[0].clone())
        .service("svc-1", ledgers[1].clone())
        .durability(Durability::Sync)
        .dir(&live)
        .segment_size_bytes(8192)
        .max_segments(32)
        .checkpoint_every_bytes(1 << 30)
        .open()
        .unwrap();
    for i in 0..400 {
        let (from, to) = (format!("acct-{}", i % 100), format!("acct-{}", 100 + i % 100));
        let outcome = dtc.execute(&[Transfer::new("svc-0", &from, "svc-1", &to, 1)]).unwrap();
        assert_eq!(outcome, Outcome::Committed);
    }
    // Let the background thread finish preparing the next segment.
    std::thread::sleep(Duration::from_millis(200));
    let image = tmp.path().join("image");
    copy_dir(&live, &image);
    dtc.shutdown().unwrap();

    let report = assert_passes(&image);
    assert_eq!(report["commits"], 400);
    let segments = file_with(&image, "seg-", ".wal");
    assert!(segments.len() >= 4, "{} segments", segments.len());

    std::fs::remove_file(&segments[1]).unwrap();
    let (code, report) = verify(&image, &[]);
    assert_eq!(code, 2, "{report:#}");
    let missing = problems(&report, "missing_segment");
    assert_eq!(missing.len(), 1, "{report:#}");
    assert_eq!(missing[0]["file"], segments[1].file_name().unwrap().to_str().unwrap());
    assert_eq!(missing[0]["fatal"], true);
}

#[test]
fn an_empty_directory_is_fresh_and_a_missing_one_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, report) = verify(tmp.path(), &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["fresh"], true);

    let missing = tmp.path().join("nope");
    let out = dtc().args(["verify", "--dir"]).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such data directory"));
    assert!(!missing.exists(), "verify must not create the directory");
}
