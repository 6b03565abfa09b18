//! Tests of the log against `MemStorage` (faults, crashes) and `FsStorage`.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::format;
use super::record::{self, HEADER_BYTES};
use super::segment::segment_name;
use super::*;

const SMALL_SEGMENT_BYTES: u64 = 64 << 10;
const TINY_SEGMENT_BYTES: u64 = 8 << 10;

fn config(segment_size_bytes: u64, max_segments: usize) -> WalConfig {
    WalConfig { segment_size_bytes, max_segments, preallocate_next: false, ..WalConfig::default() }
}

fn open(storage: &MemStorage, config: &WalConfig) -> (Wal, Recovery) {
    Wal::open(Arc::new(storage.clone()), config.clone()).expect("open")
}

fn try_open(storage: &MemStorage, config: &WalConfig) -> Result<(Wal, Recovery), WalError> {
    Wal::open(Arc::new(storage.clone()), config.clone())
}

fn payload(tag: u64, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = tag.to_le_bytes().to_vec();
    bytes.extend((0..len).map(|i| (tag as usize * 31 + i * 7) as u8));
    bytes
}

/// (start lsn, end lsn, kind, payload) of records the test appended.
type Appended = Vec<(Lsn, Lsn, u8, Vec<u8>)>;

fn append(wal: &Wal, out: &mut Appended, kind: u8, bytes: Vec<u8>) -> Lsn {
    let end = wal.append(kind, &bytes).expect("append");
    let start = Lsn(end.0 - record::record_bytes(bytes.len() as u64));
    out.push((start, end, kind, bytes));
    end
}

fn as_records(appended: &Appended) -> Vec<Record> {
    appended.iter().map(|(lsn, _, kind, payload)| Record { lsn: *lsn, kind: *kind, payload: payload.clone() }).collect()
}

/// Every recovered record is one we wrote, with the same content.
fn assert_all_genuine(recovered: &[Record], appended: &Appended) {
    let by_lsn: BTreeMap<Lsn, &Record> = recovered.iter().map(|r| (r.lsn, r)).collect();
    assert_eq!(by_lsn.len(), recovered.len(), "duplicate positions");
    let written: BTreeMap<Lsn, Record> = as_records(appended).into_iter().map(|r| (r.lsn, r)).collect();
    for record in recovered {
        assert_eq!(Some(record), written.get(&record.lsn), "recovered a record never written");
    }
}

/// A few records with a sync after each, so that sync markers follow.
fn durable_log(config: &WalConfig, count: u64) -> (MemStorage, Appended) {
    let storage = MemStorage::new();
    let (wal, _) = open(&storage, config);
    let mut appended = Vec::new();
    for i in 0..count {
        let end = append(&wal, &mut appended, 1 + (i % 3) as u8, payload(i, (i * 13 % 50) as usize));
        wal.wait_durable(end).expect("durable");
    }
    (storage, appended)
}

#[test]
fn round_trip() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let storage = MemStorage::new();
    let (wal, recovery) = open(&storage, &config);
    assert_eq!(recovery.records, vec![]);
    assert_eq!(recovery.end_lsn, Lsn(0));
    let mut appended = Vec::new();
    for i in 0..50 {
        append(&wal, &mut appended, 7, payload(i, i as usize * 3));
    }
    let batch_payloads = [payload(100, 0), payload(101, 5), payload(102, 64)];
    let batch: Vec<(u8, &[u8])> = batch_payloads.iter().map(|p| (9u8, p.as_slice())).collect();
    let batch_start = wal.end_lsn();
    let end = wal.append_batch(&batch).expect("batch");
    let mut position = batch_start.0;
    for p in &batch_payloads {
        let next = position + record::record_bytes(p.len() as u64);
        appended.push((Lsn(position), Lsn(next), 9, p.clone()));
        position = next;
    }
    assert_eq!(end, Lsn(position));
    wal.wait_durable(end).expect("durable");
    assert_eq!(wal.durable_lsn(), wal.end_lsn());
    let stats = wal.stats();
    assert_eq!(stats.records, 53);
    assert!(stats.syncs >= 1);
    drop(wal);

    let (wal, recovery) = open(&storage.crash(), &config);
    assert_eq!(recovery.records, as_records(&appended));
    assert_eq!(recovery.torn_tail_bytes, 0);
    for (record, (_, end, _, _)) in recovery.records.iter().zip(&appended) {
        assert_eq!(record.end_lsn(), *end);
    }
    // Appending continues after the recovered end.
    let next = wal.append(3, b"after").expect("append");
    assert!(next > end);
}

#[test]
fn reserved_kinds_and_sizes_are_refused() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let (wal, _) = open(&MemStorage::new(), &config);
    for kind in [0u8, KIND_SYNC_MARKER, KIND_PADDING] {
        assert!(matches!(wal.append(kind, b"x"), Err(WalError::ReservedKind { .. })));
    }
    let big = vec![1u8; config.max_record_bytes() as usize];
    assert!(matches!(wal.append(1, &big), Err(WalError::RecordTooLarge { .. })));
    assert!(matches!(wal.wait_durable(Lsn(1 << 40)), Err(WalError::LsnBeyondEnd { .. })));
    assert!(matches!(
        Wal::open(Arc::new(MemStorage::new()), config_with(|c| c.segment_size_bytes = 5000)),
        Err(WalError::Config { .. })
    ));
}

fn config_with(edit: impl FnOnce(&mut WalConfig)) -> WalConfig {
    let mut config = config(SMALL_SEGMENT_BYTES, 4);
    edit(&mut config);
    config
}

fn concurrent_workload(config: &WalConfig, threads: u64, per_thread: u64) {
    let storage = MemStorage::new();
    let (wal, _) = open(&storage, config);
    let wal = Arc::new(wal);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    let tag = t << 32 | i;
                    let bytes = payload(tag, ((t * 37 + i * 11) % 300) as usize);
                    let end = wal.append(1 + t as u8, &bytes).expect("append");
                    if i % 5 == t % 5 {
                        wal.wait_durable(end).expect("durable");
                    }
                    mine.push((Lsn(end.0 - record::record_bytes(bytes.len() as u64)), end, 1 + t as u8, bytes));
                }
                mine
            })
        })
        .collect();
    let mut appended: Appended = handles.into_iter().flat_map(|h| h.join().expect("thread")).collect();
    appended.sort_by_key(|a| a.0);
    let end = wal.end_lsn();
    wal.wait_durable(end).expect("durable");
    let stats = wal.stats();
    drop(wal);
    for (start, end, _, _) in &appended {
        // A record never straddles segments.
        assert_eq!(start.0 / config.segment_size_bytes, (end.0 - 1) / config.segment_size_bytes);
    }
    let (_, recovery) = open(&storage.crash(), config);
    assert_eq!(recovery.records, as_records(&appended));
    assert_eq!(stats.records, threads * per_thread);
}

#[test]
fn concurrent_appends_recover_in_order() {
    concurrent_workload(&config(SMALL_SEGMENT_BYTES, 16), 8, 300);
}

#[test]
fn segment_boundary_races() {
    // Tiny segments: a seal every few dozen records, raced by 4 threads.
    concurrent_workload(&config(TINY_SEGMENT_BYTES, 128), 4, 400);
}

#[test]
fn wait_durable_returns_only_after_sync() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let storage = MemStorage::new();
    let (wal, _) = open(&storage, &config);
    let bytes = payload(1, 40);
    let end = wal.append(5, &bytes).expect("append");
    let name = segment_name(0);
    let header_len = HEADER_BYTES as usize;
    let written = storage.read_written(&name).expect("segment");
    assert_eq!(written[0..4], record::MAGIC.to_le_bytes());
    let durable = storage.read_durable(&name).expect("segment");
    assert!(durable[..header_len].iter().all(|&b| b == 0), "durable before any sync");
    let (_, recovery) = open(&storage.crash(), &config);
    assert!(recovery.records.is_empty());

    wal.wait_durable(end).expect("durable");
    let durable = storage.read_durable(&name).expect("segment");
    assert_eq!(durable[..end.0 as usize], written[..end.0 as usize]);
    let (_, recovery) = open(&storage.crash(), &config);
    assert_eq!(recovery.records.len(), 1);
    assert_eq!(recovery.records[0].payload, bytes);
}

#[test]
fn waiters_on_many_threads_all_see_their_bytes_durable() {
    let config = config(SMALL_SEGMENT_BYTES, 8);
    let storage = MemStorage::new();
    let (wal, _) = open(&storage, &config);
    let wal = Arc::new(wal);
    let handles: Vec<_> = (0..6u64)
        .map(|t| {
            let (wal, storage) = (Arc::clone(&wal), storage.clone());
            std::thread::spawn(move || {
                for i in 0..60 {
                    let bytes = payload(t * 1000 + i, 20);
                    let end = wal.append(1, &bytes).expect("append");
                    wal.wait_durable(end).expect("durable");
                    let id = (end.0 - 1) / SMALL_SEGMENT_BYTES;
                    let durable = storage.read_durable(&segment_name(id)).expect("segment");
                    let offset = (end.0 - id * SMALL_SEGMENT_BYTES) as usize;
                    let written = storage.read_written(&segment_name(id)).expect("segment");
                    let record_len = record::record_bytes(bytes.len() as u64) as usize;
                    assert_eq!(durable[offset - record_len..offset], written[offset - record_len..offset]);
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread");
    }
    assert!(wal.stats().syncs <= 360);
}

/// The scripted workload of the crash test: appends (some batched), waits,
/// rollovers through tiny segments, and checkpoints that recycle segments.
/// Returns the records acknowledged durable and the last successful
/// checkpoint, stopping at the first error.
fn scripted_workload(wal: &Wal) -> (Appended, Option<Lsn>) {
    let mut acked = Vec::new();
    let mut pending = Vec::new();
    let mut checkpoint = None;
    for i in 0..120u64 {
        let bytes = payload(i, (i * 29 % 400) as usize);
        let Ok(end) = wal.append(1 + (i % 4) as u8, &bytes) else {
            break;
        };
        pending.push((Lsn(end.0 - record::record_bytes(bytes.len() as u64)), end, 1 + (i % 4) as u8, bytes));
        if i % 3 == 2 {
            if wal.wait_durable(end).is_err() {
                break;
            }
            acked.append(&mut pending);
        }
        if i % 40 == 39 {
            let lsn = wal.durable_lsn();
            if wal.checkpoint(lsn, &lsn.0.to_le_bytes()).is_err() {
                break;
            }
            checkpoint = Some(lsn);
        }
    }
    (acked, checkpoint)
}

#[test]
fn crash_at_every_sync_boundary() {
    let config = config(TINY_SEGMENT_BYTES, 4);
    let reference = MemStorage::new();
    {
        let (wal, _) = open(&reference, &config);
        let (acked, _) = scripted_workload(&wal);
        assert!(acked.len() > 100);
    }
    let total_syncs = reference.sync_count();
    assert!(total_syncs > 30, "workload too small: {total_syncs} syncs");
    for crash_at in 0..total_syncs {
        let storage = MemStorage::new();
        storage.crash_after_syncs(crash_at);
        let (acked, checkpoint) = match try_open(&storage, &config) {
            Ok((wal, _)) => scripted_workload(&wal),
            Err(_) => (Vec::new(), None),
        };
        let image = storage.crash_image().unwrap_or_else(|| storage.crash());
        let (_, recovery) =
            try_open(&image, &config).unwrap_or_else(|e| panic!("crash at sync {crash_at}: reopen failed: {e}"));
        let from = recovery.checkpoint.as_ref().map_or(Lsn(0), |(lsn, _)| *lsn);
        if let Some((lsn, snapshot)) = &recovery.checkpoint {
            assert_eq!(snapshot, &lsn.0.to_le_bytes(), "checkpoint content");
        }
        if let Some(acked_checkpoint) = checkpoint {
            assert!(from >= acked_checkpoint, "crash at {crash_at}: lost an acknowledged checkpoint");
        }
        let recovered: BTreeMap<Lsn, &Record> = recovery.records.iter().map(|r| (r.lsn, r)).collect();
        for record in as_records(&acked) {
            if record.lsn >= from {
                assert_eq!(recovered.get(&record.lsn), Some(&&record), "crash at {crash_at}: lost acknowledged record");
            }
        }
        assert!(recovery.records.iter().all(|r| r.lsn >= from));
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let (storage, appended) = durable_log(&config, 6);
    let (last_start, _, _, last_payload) = appended[appended.len() - 1].clone();
    let kept = as_records(&appended[..appended.len() - 1].to_vec());
    let name = segment_name(0);
    // Header and payload; the alignment bytes after them are zero anyway.
    let total = HEADER_BYTES as usize + last_payload.len();
    for keep in 0..total {
        let copy = storage.crash();
        let zeros = vec![0u8; total - keep];
        assert!(copy.set_bytes(&name, last_start.0 + keep as u64, &zeros));
        let original = copy.read_written(&name).expect("segment");
        let nonzero_kept = original[last_start.0 as usize..last_start.0 as usize + keep].iter().any(|&b| b != 0);
        let (_, recovery) = try_open(&copy, &config).unwrap_or_else(|e| panic!("keep {keep}: {e}"));
        assert_eq!(recovery.records, kept, "keep {keep}");
        assert_eq!(recovery.end_lsn, last_start);
        if nonzero_kept {
            assert!(recovery.torn_tail_bytes > 0, "keep {keep}: torn bytes not reported");
        }
        // Truncation is durable and idempotent.
        let (_, again) = open(&copy.crash(), &config);
        assert_eq!(again.records, kept);
        assert_eq!(again.torn_tail_bytes, 0);
        assert_eq!(again.end_lsn, last_start);
    }
}

#[test]
fn tear_last_write_is_a_torn_tail() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let storage = MemStorage::new();
    let (wal, _) = open(&storage, &config);
    let mut appended = Vec::new();
    let end = append(&wal, &mut appended, 1, payload(1, 30));
    wal.wait_durable(end).expect("durable");
    append(&wal, &mut appended, 1, payload(2, 100));
    assert!(storage.tear_last_write(10));
    let end = wal.end_lsn();
    // The torn record is still "complete" as far as the log knows; syncing
    // it makes the tear durable, which recovery must catch.
    wal.wait_durable(end).expect("durable");
    let (_, recovery) = open(&storage.crash(), &config);
    assert_eq!(recovery.records, as_records(&appended[..1].to_vec()));
    assert!(recovery.torn_tail_bytes > 0);
}

#[test]
fn every_single_bit_flip_is_detected() {
    let config = config(TINY_SEGMENT_BYTES, 4);
    let (storage, appended) = durable_log(&config, 8);
    let name = segment_name(0);
    let end_bits =
        storage.read_written(&name).expect("segment").iter().rposition(|&b| b != 0).expect("data") as u64 * 8 + 8;
    let originals = as_records(&appended);
    let (mut refused, mut truncated) = (0, 0);
    for bit in 0..end_bits {
        let copy = storage.crash();
        assert!(copy.flip_bit(&name, bit));
        match try_open(&copy, &config) {
            Err(WalError::Corrupt { file, .. }) => {
                assert_eq!(file, name);
                refused += 1;
            }
            Err(e) => panic!("bit {bit}: unexpected error {e}"),
            Ok((_, recovery)) => {
                // Never accepted with wrong content: a prefix of what was written.
                assert_eq!(recovery.records[..], originals[..recovery.records.len()], "bit {bit}");
                if recovery.records.len() < originals.len() {
                    truncated += 1;
                }
            }
        }
    }
    assert!(refused > 0 && truncated > 0, "refused {refused}, truncated {truncated}");
}

#[test]
fn mid_log_corruption_refuses_to_open_and_names_the_place() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let (storage, appended) = durable_log(&config, 10);
    let victim = &appended[3];
    let name = segment_name(0);
    // Flip a bit inside the victim's payload.
    assert!(storage.flip_bit(&name, (victim.0.0 + HEADER_BYTES + 2) * 8));
    let before = storage.read_written(&name);
    let inspection = Wal::inspect(&storage, &config).expect("inspect");
    assert_eq!(storage.read_written(&name), before, "inspect modified the log");
    assert_eq!(inspection.records, as_records(&appended[..3].to_vec()));
    assert!(matches!(&inspection.verdict, Verdict::Corrupt { offset, .. } if *offset == victim.0.0));
    assert!(inspection.problems.iter().any(|p| p.file == name && p.offset == victim.0.0));
    assert!(inspection.records_after_break >= 6);
    match try_open(&storage, &config) {
        Err(WalError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, name);
            assert_eq!(offset, victim.0.0);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(storage.read_written(&name), before, "a refused open modified the log");
}

#[test]
fn misdirected_and_stale_records_are_rejected() {
    let config = config(TINY_SEGMENT_BYTES, 8);
    let (storage, appended) = durable_log(&config, 120);
    let name0 = segment_name(0);
    let image = storage.read_written(&name0).expect("segment");
    let (start, end, _, _) = &appended[1];
    let record_bytes = image[start.0 as usize..end.0 as usize].to_vec();

    // Into the middle of the log, over another record: refused.
    let copy = storage.crash();
    let target = &appended[4];
    assert!(copy.set_bytes(&name0, target.0.0, &record_bytes));
    assert!(matches!(try_open(&copy, &config), Err(WalError::Corrupt { offset, .. }) if offset == target.0.0));

    // Past the end of the log: discarded as tail garbage, never accepted.
    let copy = storage.crash();
    let (_, full) = open(&storage.crash(), &config);
    let last_id = full.end_lsn.0 / TINY_SEGMENT_BYTES;
    let tail_offset = (full.end_lsn.0 % TINY_SEGMENT_BYTES).next_multiple_of(8) + 64;
    assert!(copy.set_bytes(&segment_name(last_id), tail_offset, &record_bytes));
    let (_, recovery) = open(&copy, &config);
    assert_eq!(recovery.records, full.records);
    assert!(recovery.torn_tail_bytes > 0);

    // Same offset, another segment (stale segment id): rejected by the decoder.
    let id = 1;
    let bytes = storage.read_written(&segment_name(id)).expect("segment");
    assert!(matches!(
        record::decode(&record_bytes, start.0 + id * TINY_SEGMENT_BYTES, id),
        Err(record::Invalid::WrongLsn)
    ));
    assert!(matches!(record::decode(&record_bytes, start.0, id), Err(record::Invalid::WrongSegment)));
    assert!(record::decode(&record_bytes, start.0, 0).is_ok());
    assert!(matches!(record::decode(&[0u8; 64], 0, 0), Err(record::Invalid::Zero)));
    assert_eq!(bytes.len() as u64, TINY_SEGMENT_BYTES);
}

#[test]
fn failed_sync_is_fatal_for_everyone() {
    for kind in [FaultKind::NoSpace, FaultKind::Io] {
        let config = config(SMALL_SEGMENT_BYTES, 4);
        let storage = MemStorage::new();
        let (wal, _) = open(&storage, &config);
        let wal = Arc::new(wal);
        let mut appended = Vec::new();
        let first = append(&wal, &mut appended, 1, payload(1, 10));
        wal.wait_durable(first).expect("durable");
        storage.fail_next(FaultOp::Sync, 1, kind);
        let second = append(&wal, &mut appended, 1, payload(2, 10));
        let err = wal.wait_durable(second).expect_err("sync must fail");
        assert!(matches!(err, WalError::Failed { .. }), "{err}");
        if kind == FaultKind::NoSpace {
            assert!(matches!(err, WalError::Failed { cause: std::io::ErrorKind::StorageFull }));
        }
        // Never retried, never acknowledged after, for anyone.
        assert!(matches!(wal.wait_durable(second), Err(WalError::Failed { .. })));
        assert!(matches!(wal.append(1, b"later"), Err(WalError::Failed { .. })));
        let other = Arc::clone(&wal);
        let from_thread = std::thread::spawn(move || other.wait_durable(second)).join().expect("thread");
        assert!(matches!(from_thread, Err(WalError::Failed { .. })));
        assert!(wal.stats().failed);
        assert_eq!(wal.durable_lsn(), first);
        drop(wal);
        let (_, recovery) = open(&storage.crash(), &config);
        assert_eq!(recovery.records[0], as_records(&appended)[0]);
    }
}

#[test]
fn failed_write_is_fatal_and_other_faults_surface_as_errors() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let storage = MemStorage::new();
    storage.fail_next(FaultOp::Create, 1, FaultKind::NoSpace);
    let (wal, _) = open(&storage, &config);
    assert!(matches!(wal.append(1, b"x"), Err(WalError::Io { .. })));
    let end = wal.append(1, b"y").expect("append after the create fault cleared");
    wal.wait_durable(end).expect("durable");
    storage.fail_next(FaultOp::Write, 1, FaultKind::Io);
    assert!(matches!(wal.append(1, b"z"), Err(WalError::Failed { .. })));
    assert!(matches!(wal.wait_durable(wal.end_lsn()), Err(WalError::Failed { .. })));
}

#[test]
fn waiter_blocked_behind_failed_sync_gets_failed() {
    for syncs_in_flight in [1, 2, 4] {
        let config = config_with(|c| c.syncs_in_flight = syncs_in_flight);
        let storage = MemStorage::new();
        let (wal, _) = open(&storage, &config);
        let wal = Arc::new(wal);
        storage.fail_next(FaultOp::Sync, 1000, FaultKind::Io);
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let wal = Arc::clone(&wal);
                std::thread::spawn(move || {
                    let end = wal.append(1, &payload(i, 8))?;
                    wal.wait_durable(end)
                })
            })
            .collect();
        for handle in handles {
            assert!(matches!(handle.join().expect("thread"), Err(WalError::Failed { .. })));
        }
        // No sync starts after a failure; syncs already in flight beside the
        // failed one may fail too (with overlap allowed, as CI once saw: 2).
        let failures = wal.stats().sync_failures;
        assert!(
            (1..=syncs_in_flight as u64).contains(&failures),
            "{failures} failed syncs with {syncs_in_flight} in flight: a failed sync is never retried"
        );
    }
}

#[test]
fn crash_during_recovery_is_safe() {
    let config = config(TINY_SEGMENT_BYTES, 4);
    let (storage, appended) = durable_log(&config, 30);
    // Leave a torn tail that recovery must truncate.
    let (last_start, last_end, _, _) = appended[appended.len() - 1];
    let base = last_start.0 / TINY_SEGMENT_BYTES * TINY_SEGMENT_BYTES;
    let name = segment_name(last_start.0 / TINY_SEGMENT_BYTES);
    let torn = storage.crash();
    assert!(torn.set_bytes(&name, last_start.0 - base + 20, &vec![0u8; (last_end.0 - last_start.0 - 20) as usize]));
    let (_, expected) = open(&torn.crash(), &config);
    assert!(expected.torn_tail_bytes > 0);
    for crash_at in 0..16 {
        let attempt = torn.crash();
        let start = attempt.sync_count();
        attempt.crash_after_syncs(start + crash_at);
        let _ = try_open(&attempt, &config);
        let image = attempt.crash_image().unwrap_or_else(|| attempt.crash());
        let (_, recovery) = open(&image, &config);
        assert_eq!(recovery.records, expected.records, "crash at {crash_at}");
        assert_eq!(recovery.end_lsn, expected.end_lsn);
    }
}

#[test]
fn log_full_until_checkpoint() {
    let config = config(TINY_SEGMENT_BYTES, 2);
    let storage = MemStorage::new();
    let (wal, _) = open(&storage, &config);
    let mut appended = Vec::new();
    let full = loop {
        match wal.append(1, &payload(appended.len() as u64, 200)) {
            Ok(end) => appended.push(end),
            Err(e) => break e,
        }
        assert!(appended.len() < 1000, "never became full");
    };
    assert!(matches!(full, WalError::LogFull { max_segments: 2 }), "{full}");
    let end = wal.end_lsn();
    wal.checkpoint(end, b"snapshot").expect("checkpoint");
    wal.append(1, b"room again").expect("append after checkpoint");
    assert!(storage.file_names().iter().filter(|n| n.starts_with("seg-")).count() <= 2);
    assert!(wal.stats().log_full_rejections >= 1);
}

fn checkpointed_workload(storage: &MemStorage, config: &WalConfig, rounds: u64) -> (Appended, Lsn) {
    let (wal, _) = open(storage, config);
    let mut appended = Vec::new();
    let mut checkpoint = Lsn(0);
    for i in 0..rounds {
        let bytes = payload(i, (i * 17 % 300) as usize);
        match wal.append(1, &bytes) {
            Ok(end) => appended.push((Lsn(end.0 - record::record_bytes(bytes.len() as u64)), end, 1, bytes)),
            Err(WalError::LogFull { .. }) => {
                checkpoint = wal.end_lsn();
                wal.checkpoint(checkpoint, &checkpoint.0.to_le_bytes()).expect("checkpoint");
                continue;
            }
            Err(e) => panic!("append: {e}"),
        }
        if i % 7 == 0 {
            wal.wait_durable(wal.end_lsn()).expect("durable");
        }
        let live = storage.file_names().iter().filter(|n| n.starts_with("seg-")).count();
        assert!(live <= config.max_segments, "{live} segment files");
        assert!(wal.stats().segments_live <= config.max_segments as u64);
    }
    wal.wait_durable(wal.end_lsn()).expect("durable");
    assert!(wal.stats().checkpoints > 3);
    (appended, checkpoint)
}

#[test]
fn checkpoints_keep_segments_bounded() {
    let config = config(TINY_SEGMENT_BYTES, 3);
    let storage = MemStorage::new();
    let (appended, checkpoint) = checkpointed_workload(&storage, &config, 1500);
    let (_, recovery) = open(&storage.crash(), &config);
    let (lsn, snapshot) = recovery.checkpoint.expect("checkpoint");
    assert_eq!(lsn, checkpoint);
    assert_eq!(snapshot, checkpoint.0.to_le_bytes());
    let expected: Vec<_> = as_records(&appended).into_iter().filter(|r| r.lsn >= checkpoint).collect();
    assert_eq!(recovery.records, expected);
    assert_eq!(storage.file_names().iter().filter(|n| n.starts_with("checkpoint-")).count(), 1);
}

#[test]
fn torn_checkpoint_falls_back() {
    let config = config(SMALL_SEGMENT_BYTES, 4);
    let storage = MemStorage::new();
    let (wal, _) = open(&storage, &config);
    let mut appended = Vec::new();
    for i in 0..5 {
        append(&wal, &mut appended, 1, payload(i, 30));
    }
    let first = wal.end_lsn();
    wal.checkpoint(first, b"first").expect("checkpoint");
    for i in 5..10 {
        append(&wal, &mut appended, 1, payload(i, 30));
    }
    let second = wal.end_lsn();
    // Crash after the second checkpoint is durable but before the first is
    // removed (the removal's directory sync is the third point).
    storage.crash_after_syncs(storage.sync_count() + 2 + 1);
    let _ = wal.checkpoint(second, b"second");
    drop(wal);
    let image = storage.crash_image().expect("crashed");
    let names = image.file_names();
    let second_name = checkpoint::checkpoint_name(second.0);
    assert!(names.contains(&second_name) && names.contains(&checkpoint::checkpoint_name(first.0)));

    // Intact: the newest wins.
    let (_, recovery) = open(&image.crash(), &config);
    assert_eq!(recovery.checkpoint, Some((second, b"second".to_vec())));
    // Torn newest: the previous one is used and the records after it return.
    let torn = image.crash();
    let len = torn.read_written(&second_name).expect("checkpoint").len() as u64;
    assert!(torn.flip_bit(&second_name, (len - 1) * 8));
    let inspection = Wal::inspect(&torn, &config).expect("inspect");
    assert!(inspection.problems.iter().any(|p| p.file == second_name));
    let (_, recovery) = open(&torn, &config);
    assert_eq!(recovery.checkpoint, Some((first, b"first".to_vec())));
    let expected: Vec<_> = as_records(&appended).into_iter().filter(|r| r.lsn >= first).collect();
    assert_eq!(recovery.records, expected);

    // Only checkpoint torn: full scan from the start of the log.
    let only = MemStorage::new();
    {
        let (wal, _) = open(&only, &config);
        let end = wal.append(1, b"a").expect("append");
        wal.checkpoint(end, b"only").expect("checkpoint");
        wal.append(1, b"b").expect("append");
        wal.wait_durable(wal.end_lsn()).expect("durable");
    }
    let name = checkpoint::checkpoint_name(record::record_bytes(1));
    assert!(only.flip_bit(&name, 3));
    let (_, recovery) = open(&only.crash(), &config);
    assert_eq!(recovery.checkpoint, None);
    let payloads: Vec<_> = recovery.records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn torn_checkpoint_after_recycling_refuses() {
    let config = config(TINY_SEGMENT_BYTES, 3);
    let storage = MemStorage::new();
    let (_, checkpoint) = checkpointed_workload(&storage, &config, 600);
    let name = checkpoint::checkpoint_name(checkpoint.0);
    assert!(storage.flip_bit(&name, 20 * 8));
    assert!(matches!(try_open(&storage.crash(), &config), Err(WalError::Corrupt { .. })));
}

/// Both write backends; every test on the real file system runs with each.
const BACKENDS: [LogBackend; 2] = [LogBackend::Pwrite, LogBackend::Mmap];

#[test]
fn fs_storage_round_trip_with_rollover_and_recycling() {
    for backend in BACKENDS {
        fs_round_trip(backend);
    }
}

fn fs_round_trip(backend: LogBackend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WalConfig { segment_size_bytes: TINY_SEGMENT_BYTES, max_segments: 3, backend, ..WalConfig::default() };
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(dir.path()).expect("storage"));
    let mut appended = Vec::new();
    let mut checkpoint = Lsn(0);
    {
        let (wal, _) = Wal::open(Arc::clone(&storage), config.clone()).expect("open");
        let wal = Arc::new(wal);
        for i in 0..400u64 {
            let bytes = payload(i, (i * 7 % 200) as usize);
            match wal.append(2, &bytes) {
                Ok(end) => appended.push((Lsn(end.0 - record::record_bytes(bytes.len() as u64)), end, 2, bytes)),
                Err(WalError::LogFull { .. }) => {
                    checkpoint = wal.durable_lsn().max(wal.end_lsn());
                    wal.checkpoint(checkpoint, b"fs").expect("checkpoint");
                }
                Err(e) => panic!("{e}"),
            }
            if i % 10 == 0 {
                wal.wait_durable(wal.end_lsn()).expect("durable");
            }
        }
        wal.wait_durable(wal.end_lsn()).expect("durable");
    }
    let segment_files = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("seg-")))
        .count();
    assert!(segment_files <= 3, "{segment_files} segment files");
    let (_, recovery) = Wal::open(Arc::clone(&storage), config.clone()).expect("reopen");
    let expected: Vec<_> = as_records(&appended).into_iter().filter(|r| r.lsn >= checkpoint).collect();
    assert!(checkpoint > Lsn(0));
    assert_eq!(recovery.records, expected);
    let inspection = Wal::inspect(&*storage, &config).expect("inspect");
    assert_eq!(inspection.verdict, Verdict::Clean);
    assert_eq!(inspection.records, expected);
}

fn valid_image() -> (MemStorage, WalConfig, Appended) {
    let config = config(TINY_SEGMENT_BYTES, 4);
    let (storage, appended) = durable_log(&config, 12);
    (storage, config, appended)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decoder_never_panics_and_accepts_only_checksummed_records(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        lsn in 0u64..4096,
        segment in 0u64..4,
    ) {
        if let Ok(decoded) = record::decode(&bytes, lsn, segment) {
            // Accepted only if re-encoding gives the same header.
            let payload = &bytes[decoded.payload_start..decoded.payload_start + decoded.payload_len];
            let header = if decoded.kind == KIND_PADDING {
                record::encode_padding(lsn, segment, decoded.total_bytes)
            } else {
                Some(record::encode_header(lsn, segment, decoded.kind, payload))
            };
            prop_assert_eq!(header.map(|h| h.to_vec()), Some(bytes[..32].to_vec()));
        }
    }

    #[test]
    fn recovery_of_mutated_segments_never_accepts_wrong_content(
        edits in proptest::collection::vec((0u64..TINY_SEGMENT_BYTES, any::<u8>()), 1..6),
    ) {
        let (storage, config, appended) = valid_image();
        let copy = storage.crash();
        for (offset, byte) in &edits {
            copy.set_bytes(&segment_name(0), *offset, &[*byte]);
        }
        match try_open(&copy, &config) {
            Ok((_, recovery)) => assert_all_genuine(&recovery.records, &appended),
            Err(WalError::Corrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {}", e),
        }
        let _ = Wal::inspect(&copy, &config);
    }

    #[test]
    fn recovery_of_random_segments_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), TINY_SEGMENT_BYTES as usize),
    ) {
        let config = config(TINY_SEGMENT_BYTES, 4);
        let storage = MemStorage::new();
        {
            let (wal, _) = open(&storage, &config);
            wal.append(1, b"x").expect("append");
        }
        prop_assert!(storage.set_bytes(&segment_name(0), 0, &bytes));
        if let Ok((_, recovery)) = try_open(&storage, &config) {
            prop_assert!(recovery.records.is_empty());
        }
    }
}

// ---- The format file: the directory describes its own log ----

fn format_bytes(storage: &MemStorage) -> Vec<u8> {
    storage.read_written(FORMAT_FILE).expect("format file")
}

#[test]
fn a_new_log_records_its_format_and_every_opener_uses_it() {
    let written = config(TINY_SEGMENT_BYTES, 7);
    let (storage, appended) = durable_log(&written, 40);
    assert_eq!(format_bytes(&storage).len(), format::FORMAT_BYTES);
    assert_eq!(format::Format::decode(&format_bytes(&storage)).expect("valid"), format::Format::of(&written));
    // Openers configured otherwise (the defaults, or other values) get the
    // directory's parameters, and the records.
    for asked in [WalConfig { preallocate_next: false, ..WalConfig::default() }, config(SMALL_SEGMENT_BYTES, 3)] {
        let inspection = Wal::inspect(&storage.crash(), &asked).expect("inspect");
        assert_eq!(inspection.verdict, Verdict::Clean);
        assert_eq!(inspection.records, as_records(&appended));
        assert_eq!(inspection.config.segment_size_bytes, TINY_SEGMENT_BYTES);
        assert_eq!(inspection.config.max_segments, 7);
        let (wal, recovery) = open(&storage.crash(), &asked);
        assert_eq!(recovery.records, as_records(&appended));
        assert_eq!((wal.config().segment_size_bytes, wal.config().max_segments), (TINY_SEGMENT_BYTES, 7));
        // Non-format settings stay the caller's.
        assert_eq!(wal.config().gather_limit, asked.gather_limit);
        wal.append(1, b"more").expect("append with the directory's format");
    }
}

#[test]
fn a_directory_without_format_file_is_inferred_and_recorded_on_open_only() {
    let written = config(TINY_SEGMENT_BYTES, 6);
    let (storage, appended) = durable_log(&written, 200);
    let old = storage.crash();
    old.remove(FORMAT_FILE).expect("remove");
    old.sync_dir().expect("sync");
    let segment_files = old.file_names().iter().filter(|n| n.starts_with("seg-")).count();
    assert!(segment_files >= 2, "{segment_files}");

    let asked = WalConfig { preallocate_next: false, ..WalConfig::default() };
    let inspection = Wal::inspect(&old, &asked).expect("inspect");
    assert_eq!(inspection.verdict, Verdict::Clean);
    assert_eq!(inspection.records, as_records(&appended));
    assert_eq!(inspection.config.segment_size_bytes, TINY_SEGMENT_BYTES);
    assert!(old.read_written(FORMAT_FILE).is_none(), "inspect wrote the format file");

    let (_, recovery) = open(&old, &asked);
    assert_eq!(recovery.records, as_records(&appended));
    let recorded = format::Format::decode(&format_bytes(&old)).expect("written on open");
    assert_eq!(recorded.segment_size_bytes, TINY_SEGMENT_BYTES);
    // The caller's 4 or the files found, whichever is more.
    assert_eq!(recorded.max_segments, asked.max_segments.max(segment_files));
    // Durable: a crash right after the open keeps it.
    assert_eq!(old.crash().read_written(FORMAT_FILE), Some(recorded.encode().to_vec()));
}

#[test]
fn a_damaged_format_file_is_a_typed_error_never_a_panic() {
    let written = config(TINY_SEGMENT_BYTES, 4);
    let (storage, _) = durable_log(&written, 5);
    let good = format_bytes(&storage);
    let replace = |bytes: &[u8]| {
        let copy = storage.crash();
        copy.write_file_atomic(FORMAT_FILE, &[bytes]).expect("write");
        copy
    };
    // Every single bit flip is caught.
    for bit in 0..good.len() * 8 {
        let mut bytes = good.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let copy = replace(&bytes);
        for result in [try_open(&copy, &written).map(|_| ()), Wal::inspect(&copy, &written).map(|_| ())] {
            match result {
                Err(WalError::Corrupt { file, .. }) => assert_eq!(file, FORMAT_FILE),
                // Bits of the version field: an unknown version.
                Err(WalError::Config { .. }) => assert!((32..64).contains(&bit), "bit {bit}"),
                other => panic!("bit {bit}: {other:?}"),
            }
        }
    }
    // Truncated, extended, empty, huge: typed errors.
    for bytes in [&good[..8], &[good.as_slice(), &[0u8; 4]].concat()[..], &[][..], &vec![7u8; 1 << 20][..]] {
        assert!(matches!(try_open(&replace(bytes), &written), Err(WalError::Corrupt { .. })), "{} bytes", bytes.len());
    }
    // A newer version is "unsupported", even with another layout.
    let mut newer = good.clone();
    newer[4..8].copy_from_slice(&2u32.to_le_bytes());
    newer.extend_from_slice(&[0u8; 16]);
    match try_open(&replace(&newer), &written) {
        Err(WalError::Config { reason }) => assert!(reason.contains("version 2"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Valid checksum, unusable parameters.
    let bad = format::Format { segment_size_bytes: 5000, max_segments: 4 }.encode();
    assert!(matches!(try_open(&replace(&bad), &written), Err(WalError::Corrupt { .. })));
    let bad = format::Format { segment_size_bytes: TINY_SEGMENT_BYTES, max_segments: 1 }.encode();
    assert!(matches!(try_open(&replace(&bad), &written), Err(WalError::Corrupt { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn format_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(format) = format::Format::decode(&bytes) {
            prop_assert_eq!(format.encode().to_vec(), bytes);
        }
    }
}

// ---- Hostile names in the directory ----

/// A durable log on the real file system, in a fresh directory.
fn fs_log(backend: LogBackend, count: u64) -> (tempfile::TempDir, WalConfig, Appended) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WalConfig { backend, ..config(TINY_SEGMENT_BYTES, 4) };
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(dir.path()).expect("storage"));
    let (wal, _) = Wal::open(storage, config.clone()).expect("open");
    let mut appended = Vec::new();
    for i in 0..count {
        let end = append(&wal, &mut appended, 1 + (i % 3) as u8, payload(i, (i * 13 % 50) as usize));
        wal.wait_durable(end).expect("durable");
    }
    (dir, config, appended)
}

fn fs_open(dir: &std::path::Path, config: &WalConfig) -> Result<(Wal, Recovery), WalError> {
    Wal::open(Arc::new(FsStorage::new(dir).expect("storage")), config.clone())
}

fn fs_inspect(dir: &std::path::Path, config: &WalConfig) -> Inspection {
    Wal::inspect(&FsStorage::new(dir).expect("storage"), config).expect("inspect")
}

fn has_problem(inspection: &Inspection, file: &str, kind: &str) -> bool {
    inspection.problems.iter().any(|p| p.file == file && p.kind == kind)
}

#[test]
fn hostile_names_are_ignored_and_reported() {
    for backend in BACKENDS {
        let (dir, config, appended) = fs_log(backend, 20);
        let path = dir.path();
        let far = "seg-fffffffffffffff0.wal";
        std::fs::write(path.join(far), vec![0u8; TINY_SEGMENT_BYTES as usize]).expect("write");
        for name in
            ["seg-zz.wal", "seg-1.wal", "seg-000000000000000A.wal", "seg-+000000000000001.wal", "checkpoint-1.ckpt"]
        {
            std::fs::write(path.join(name), b"junk").expect("write");
        }
        std::fs::create_dir(path.join("seg-0000000000000005.wal")).expect("mkdir");
        std::os::unix::fs::symlink(path.join(segment_name(0)), path.join("seg-0000000000000006.wal")).expect("symlink");
        std::os::unix::fs::symlink("/nonexistent", path.join("checkpoint-0000000000000000.ckpt")).expect("symlink");
        // The id archive's side files: not ours, not reported; its leftover
        // temp files are removed by open like every temp.
        std::fs::write(path.join("ids-00000000000000ff.run"), b"ids").expect("write");
        std::fs::write(path.join("ids-0000000000000100.run.tmp"), b"half").expect("write");

        let inspection = fs_inspect(path, &config);
        assert_eq!(inspection.verdict, Verdict::Clean, "{:?}", inspection.problems);
        assert_eq!(inspection.records, as_records(&appended));
        assert!(has_problem(&inspection, far, "stray_segment_name"));
        for name in
            ["seg-zz.wal", "seg-1.wal", "seg-000000000000000A.wal", "seg-+000000000000001.wal", "checkpoint-1.ckpt"]
        {
            assert!(has_problem(&inspection, name, "malformed_name"), "{name}: {:?}", inspection.problems);
        }
        assert!(has_problem(&inspection, "seg-0000000000000005.wal", "not_a_regular_file"));
        assert!(has_problem(&inspection, "seg-0000000000000006.wal", "not_a_regular_file"));
        assert!(has_problem(&inspection, "checkpoint-0000000000000000.ckpt", "not_a_regular_file"));
        assert!(!inspection.problems.iter().any(|p| p.file.starts_with("ids-") && p.kind != "leftover_temp_file"));

        let (wal, recovery) = fs_open(path, &config).expect("open ignores them");
        assert_eq!(recovery.records, as_records(&appended));
        wal.wait_durable(wal.append(1, b"after").expect("append")).expect("durable");
        drop(wal);
        // Left alone: the log never removes or follows what it does not own.
        for name in
            [far, "seg-zz.wal", "seg-0000000000000005.wal", "seg-0000000000000006.wal", "ids-00000000000000ff.run"]
        {
            assert!(std::fs::symlink_metadata(path.join(name)).is_ok(), "{name} removed");
        }
        assert_eq!(std::fs::read(path.join("ids-00000000000000ff.run")).expect("side file"), b"ids");
        assert!(!path.join("ids-0000000000000100.run.tmp").exists(), "leftover temp kept");
        assert_eq!(fs_open(path, &config).expect("reopen").1.records.len(), appended.len() + 1);
    }
}

#[test]
fn far_future_segment_in_memory_storage_costs_one_entry() {
    // An in-range id far beyond the log: a file after a gap, holding no
    // valid record, so a torn tail (removed by open), found without
    // iterating over the ids in between.
    let config = config(TINY_SEGMENT_BYTES, 4);
    let (storage, appended) = durable_log(&config, 10);
    let copy = storage.crash();
    let far = segment_name(1 << 40);
    copy.write_file_atomic(&far, &[&vec![0u8; TINY_SEGMENT_BYTES as usize]]).expect("write");
    let inspection = Wal::inspect(&copy, &config).expect("inspect");
    assert_eq!(inspection.records, as_records(&appended));
    let (_, recovery) = open(&copy, &config);
    assert_eq!(recovery.records, as_records(&appended));
    assert!(!copy.file_names().contains(&far), "a file after a gap is removed");
    // One holding garbage is the same.
    let copy = storage.crash();
    copy.write_file_atomic(&far, &[&vec![0x5au8; TINY_SEGMENT_BYTES as usize]]).expect("write");
    assert_eq!(open(&copy, &config).1.records, as_records(&appended));
}

#[test]
fn zero_length_and_wrong_size_segments_are_typed_errors() {
    for backend in BACKENDS {
        let (dir, config, _) = fs_log(backend, 30);
        let path = dir.path();
        // A zero-length live segment: corrupt, named, never mapped.
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(path, copy.path());
        std::fs::write(copy.path().join(segment_name(0)), b"").expect("truncate");
        match fs_open(copy.path(), &config) {
            Err(WalError::Corrupt { file, .. }) => assert_eq!(file, segment_name(0)),
            other => panic!("{backend}: {other:?}"),
        }
        assert!(matches!(fs_inspect(copy.path(), &config).verdict, Verdict::Corrupt { kind: "segment_size", .. }));
        // A wrong-size far-future segment: also corrupt (not silently removed).
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(path, copy.path());
        std::fs::write(copy.path().join(segment_name(1 << 30)), vec![0u8; 4096]).expect("write");
        assert!(matches!(fs_open(copy.path(), &config), Err(WalError::Corrupt { .. })), "{backend}");
        let inspection = fs_inspect(copy.path(), &config);
        assert!(has_problem(&inspection, &segment_name(1 << 30), "segment_size"));
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

// ---- Torn writes and bit flips on the real file system, both backends ----

/// `dir`'s files copied into a fresh directory.
fn fs_copy(dir: &std::path::Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir, copy.path());
    copy
}

fn patch(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    file.write_all_at(bytes, offset).expect("patch");
}

#[test]
fn fs_torn_tail_at_every_byte_of_the_last_record() {
    for written_by in BACKENDS {
        let (dir, config, appended) = fs_log(written_by, 6);
        let (last_start, _, _, last_payload) = appended[appended.len() - 1].clone();
        let kept = as_records(&appended[..appended.len() - 1].to_vec());
        let total = HEADER_BYTES as usize + last_payload.len();
        for keep in 0..total {
            // Read back with the other backend half of the time: the bytes
            // on disk do not depend on the backend.
            let read_by = BACKENDS[keep % 2];
            let config = WalConfig { backend: read_by, ..config.clone() };
            let copy = fs_copy(dir.path());
            patch(&copy.path().join(segment_name(0)), last_start.0 + keep as u64, &vec![0u8; total - keep]);
            let (_, recovery) =
                fs_open(copy.path(), &config).unwrap_or_else(|e| panic!("{written_by}/{read_by} keep {keep}: {e}"));
            assert_eq!(recovery.records, kept, "{written_by}/{read_by} keep {keep}");
            assert_eq!(recovery.end_lsn, last_start);
            let (_, again) = fs_open(copy.path(), &config).expect("reopen");
            assert_eq!((again.records.len(), again.torn_tail_bytes), (kept.len(), 0), "truncation is durable");
        }
    }
}

#[test]
fn fs_bit_flips_in_the_durable_log_are_detected() {
    for written_by in BACKENDS {
        let (dir, config, appended) = fs_log(written_by, 8);
        let originals = as_records(&appended);
        // Every bit of one record in the middle (header and payload): inside
        // the synced log, so each flip refuses or truncates, never accepts.
        // (The alignment bytes after the payload are not covered by the crc.)
        let (start, _, _, payload) = &appended[3];
        let end = start.0 + HEADER_BYTES + payload.len() as u64;
        let (mut refused, mut truncated) = (0, 0);
        for bit in start.0 * 8..end * 8 {
            let read_by = BACKENDS[(bit % 2) as usize];
            let config = WalConfig { backend: read_by, ..config.clone() };
            let copy = fs_copy(dir.path());
            let path = copy.path().join(segment_name(0));
            let mut byte = [0u8];
            std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&path).expect("open"), &mut byte, bit / 8)
                .expect("read");
            patch(&path, bit / 8, &[byte[0] ^ (1 << (bit % 8))]);
            match fs_open(copy.path(), &config) {
                Err(WalError::Corrupt { file, .. }) => {
                    assert_eq!(file, segment_name(0));
                    refused += 1;
                }
                Err(e) => panic!("{written_by}/{read_by} bit {bit}: {e}"),
                Ok((_, recovery)) => {
                    assert_eq!(recovery.records[..], originals[..recovery.records.len()], "bit {bit}");
                    assert!(recovery.records.len() < originals.len(), "{written_by}/{read_by} bit {bit} accepted");
                    truncated += 1;
                }
            }
        }
        assert!(refused > 0, "{written_by}: refused {refused}, truncated {truncated}");
    }
}

// ---- Overlapping syncs ----

#[test]
fn overlapping_syncs_release_nobody_before_their_bytes_are_durable() {
    // MemStorage syncs exactly the page range asked (as msync does), so a
    // later sync published ahead of an earlier one would show as a released
    // writer whose bytes are not in the durable image.
    for syncs_in_flight in [1, 2, 4] {
        let config = WalConfig { syncs_in_flight, ..config(SMALL_SEGMENT_BYTES, 8) };
        let storage = MemStorage::new();
        let (wal, _) = open(&storage, &config);
        let wal = Arc::new(wal);
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let (wal, storage) = (Arc::clone(&wal), storage.clone());
                std::thread::spawn(move || {
                    for i in 0..40 {
                        let end = wal.append(1, &payload(t * 1000 + i, 20)).expect("append");
                        wal.wait_durable(end).expect("durable");
                        // Every byte below the acknowledged end is durable.
                        let id = (end.0 - 1) / SMALL_SEGMENT_BYTES;
                        let offset = (end.0 - id * SMALL_SEGMENT_BYTES) as usize;
                        let durable = storage.read_durable(&segment_name(id)).expect("segment");
                        let written = storage.read_written(&segment_name(id)).expect("segment");
                        assert_eq!(durable[..offset], written[..offset], "{syncs_in_flight} in flight");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("thread");
        }
    }
    for bad in [0, 5] {
        let config = WalConfig { syncs_in_flight: bad, ..config(SMALL_SEGMENT_BYTES, 4) };
        assert!(matches!(try_open(&MemStorage::new(), &config), Err(WalError::Config { .. })), "{bad}");
    }
}
