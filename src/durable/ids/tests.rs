//! Tests of the id archive: outcomes, lookups, expiry, compaction, crashes
//! (`MemStorage`), damage, and a 2 000 000-id size report (`FsStorage`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::wal::{FaultKind, FaultOp, FsStorage, MemStorage};

const HOUR_NS: u64 = 3_600_000_000_000;
const NOW_NS: u64 = 1_700_000_000_000_000_000;
const DAY: Duration = Duration::from_secs(86_400);

type Model = BTreeMap<TxId, Remembered>;

fn id(ts_ns: u64, n: u64) -> TxId {
    TxId::from_u128(u128::from(ts_ns) << 64 | u128::from(n))
}

fn committed(tx: TxId, fingerprint: u64) -> Remembered {
    Remembered { tx, fingerprint, aborted: None }
}

fn aborted(tx: TxId, fingerprint: u64, reason: AbortReason) -> Remembered {
    Remembered { tx, fingerprint, aborted: Some(reason) }
}

fn every_reason() -> Vec<AbortReason> {
    // No wildcard: a new variant fails to compile here until it is listed below.
    let _listed = |r: &AbortReason| match r {
        AbortReason::InsufficientFunds { .. }
        | AbortReason::Refused { .. }
        | AbortReason::PrepareTimeout { .. }
        | AbortReason::ParticipantPanicked { .. }
        | AbortReason::LockTimeout
        | AbortReason::AlreadyRolledBack { .. }
        | AbortReason::Operator { .. } => (),
    };
    vec![
        AbortReason::InsufficientFunds { service: "svc-0".into(), account: "acct-1".into() },
        AbortReason::Refused { service: "inventory".into(), code: "out_of_stock".into(), message: "none left".into() },
        AbortReason::PrepareTimeout { service: "slow".into() },
        AbortReason::ParticipantPanicked { service: "buggy".into() },
        AbortReason::LockTimeout,
        AbortReason::AlreadyRolledBack { service: "svc-2".into() },
        AbortReason::Operator { reason: "ticket 42: stuck since Monday".into() },
    ]
}

fn open(storage: &MemStorage) -> IdArchive {
    IdArchive::open(Arc::new(storage.clone()), DAY).expect("open")
}

fn run_files(storage: &MemStorage) -> Vec<String> {
    storage.file_names().into_iter().filter(|n| parse_run_name(n).is_some()).collect()
}

fn live_names(archive: &IdArchive) -> Vec<String> {
    let mut names: Vec<String> = archive.runs().into_iter().map(|r| r.name).collect();
    names.sort();
    names
}

/// A random remembered outcome (one in four aborted).
fn random_entry(rng: &mut SmallRng, tx: TxId) -> Remembered {
    let fingerprint = rng.random_range(1..u64::MAX);
    if rng.random_ratio(1, 4) {
        let reasons = every_reason();
        aborted(tx, fingerprint, reasons[rng.random_range(0..reasons.len())].clone())
    } else {
        committed(tx, fingerprint)
    }
}

/// Adds `entries` as one run and to the model (later runs win).
fn add(archive: &IdArchive, model: &mut Model, entries: Vec<Remembered>) {
    for e in &entries {
        model.insert(e.tx, e.clone());
    }
    archive.add_run(entries).expect("add_run");
}

fn assert_exact(archive: &IdArchive, model: &Model) {
    for (tx, expected) in model {
        assert_eq!(archive.get(*tx).expect("get").as_ref(), Some(expected), "{tx}");
    }
}

fn assert_absent(archive: &IdArchive, model: &Model, rng: &mut SmallRng, probes: usize) {
    let (lo, hi) = match (model.keys().next(), model.keys().next_back()) {
        (Some(lo), Some(hi)) => (lo.as_u128(), hi.as_u128()),
        _ => (0, u128::MAX),
    };
    for _ in 0..probes {
        let tx = TxId::from_u128(rng.random_range(lo.saturating_sub(10)..=hi.saturating_add(10)));
        if !model.contains_key(&tx) {
            assert_eq!(archive.get(tx).expect("get"), None, "{tx}");
        }
    }
}

#[test]
fn every_outcome_round_trips() {
    let storage = MemStorage::new();
    let archive = open(&storage);
    let mut entries = vec![committed(id(NOW_NS, 1), 11)];
    for (n, reason) in every_reason().into_iter().enumerate() {
        entries.push(aborted(id(NOW_NS, 10 + n as u64), 20 + n as u64, reason));
    }
    // An operator's abort of an id that never ran matches any legs.
    entries.push(aborted(id(NOW_NS, 99), crate::coordinator::recent::ANY_FINGERPRINT, AbortReason::LockTimeout));
    let mut model = Model::new();
    add(&archive, &mut model, entries);
    assert_exact(&archive, &model);
    for absent in [id(NOW_NS, 0), id(NOW_NS, 2), id(NOW_NS, 100), id(NOW_NS - 1, 5), id(NOW_NS + 1, 5)] {
        assert_eq!(archive.get(absent).unwrap(), None, "{absent}");
    }
    let reopened = open(&storage);
    assert_exact(&reopened, &model);
    assert_eq!(reopened.verify(reopened.runs()[0].seq).unwrap(), model.len() as u64);
    assert!(archive.add_run(Vec::new()).is_ok());
    assert_eq!(archive.stats().runs, 1, "no entries, no run");
}

#[test]
fn lookups_across_overlapping_runs() {
    let mut rng = SmallRng::seed_from_u64(7);
    let storage = MemStorage::new();
    let archive = open(&storage);
    let mut model = Model::new();
    // Eight runs over the same hour, one large enough for the search to
    // bisect by reads before reading a page.
    for size in [3_000, 50_000, 3_000, 1, 2, 129, 3_000, 700] {
        let mut entries = Vec::new();
        for _ in 0..size {
            let tx = id(NOW_NS - rng.random_range(0..HOUR_NS), rng.random_range(0..1_000));
            entries.push(random_entry(&mut rng, tx));
        }
        // Some ids again, with another outcome: the newer run wins.
        let again: Vec<TxId> = model.keys().take(50).copied().collect();
        entries.extend(again.into_iter().map(|tx| random_entry(&mut rng, tx)));
        add(&archive, &mut model, entries);
    }
    assert_eq!(archive.stats().runs, 8);
    assert_exact(&archive, &model);
    assert_absent(&archive, &model, &mut rng, 20_000);
    let reopened = open(&storage);
    assert_exact(&reopened, &model);
}

#[test]
fn dedup_inside_a_run_keeps_the_last() {
    let storage = MemStorage::new();
    let archive = open(&storage);
    let (a, b) = (id(NOW_NS, 1), id(NOW_NS, 2));
    archive
        .add_run(vec![
            committed(a, 1),
            committed(b, 5),
            aborted(a, 2, AbortReason::LockTimeout),
            committed(a, 3),
            aborted(b, 6, AbortReason::PrepareTimeout { service: "x".into() }),
        ])
        .unwrap();
    assert_eq!(archive.stats().ids, 2);
    assert_eq!(archive.get(a).unwrap(), Some(committed(a, 3)));
    assert_eq!(archive.get(b).unwrap(), Some(aborted(b, 6, AbortReason::PrepareTimeout { service: "x".into() })));
}

#[test]
fn expiry_keeps_exactly_the_ids_inside_the_horizon() {
    let horizon = Duration::from_nanos(HOUR_NS);
    let storage = MemStorage::new();
    let archive = IdArchive::open(Arc::new(storage.clone()), horizon).unwrap();
    let mut model = Model::new();
    // Run i holds ids from the 20 minutes before NOW - (9 - i) half hours.
    for i in 0..10u64 {
        let newest = NOW_NS - (9 - i) * HOUR_NS / 2;
        let entries = (0..100).map(|n| committed(id(newest - n * HOUR_NS / 300, n), n + 1)).collect();
        add(&archive, &mut model, entries);
    }
    let cutoff = NOW_NS - HOUR_NS;
    let expected_removed = archive.runs().iter().filter(|r| r.newest_unix_ns() < cutoff).count();
    assert_eq!(expected_removed, 7, "runs 0..=6 end before the cutoff; run 7 ends on it");
    assert_eq!(archive.expire(NOW_NS).unwrap(), expected_removed);
    assert_eq!(archive.expire(NOW_NS).unwrap(), 0);
    for run in archive.runs() {
        assert!(run.newest_unix_ns() >= cutoff, "{run:?}");
    }
    let inside: Model =
        model.iter().filter(|(tx, _)| tx.timestamp_ns() >= cutoff).map(|(k, v)| (*k, v.clone())).collect();
    assert_eq!(inside.len(), 201, "run 7 only by its newest id, runs 8 and 9 whole");
    assert_exact(&archive, &inside);
    // Runs wholly outside the horizon are gone, on disk too.
    for (tx, _) in model.iter().filter(|(tx, _)| tx.timestamp_ns() <= cutoff - HOUR_NS / 2) {
        assert_eq!(archive.get(*tx).unwrap(), None);
    }
    assert_eq!(run_files(&storage), live_names(&archive));
    let reopened = IdArchive::open(Arc::new(storage.crash()), horizon).unwrap();
    assert_exact(&reopened, &inside);
    assert_eq!(reopened.stats().runs, 3);
}

#[test]
fn the_watermark_refuses_expired_ids_even_when_the_clock_steps_back() {
    let horizon = Duration::from_nanos(HOUR_NS);
    let storage = MemStorage::new();
    let archive = IdArchive::open(Arc::new(storage.clone()), horizon).unwrap();
    let (old, recent) = (id(NOW_NS - 2 * HOUR_NS, 1), id(NOW_NS, 1));
    archive.add_run(vec![committed(old, 1)]).unwrap();
    archive.add_run(vec![committed(recent, 2)]).unwrap();
    assert_eq!(archive.lookup(old).unwrap(), Lookup::Remembered(committed(old, 1)));
    assert_eq!(archive.expire(NOW_NS).unwrap(), 1);
    let cutoff = NOW_NS - HOUR_NS;
    assert_eq!(archive.expired_before_unix_ns(), cutoff);
    let beyond = Lookup::BeyondHorizon { expired_before_unix_ns: cutoff };
    assert_eq!(archive.lookup(old).unwrap(), beyond);
    assert_eq!(archive.lookup(id(cutoff - 1, 7)).unwrap(), beyond, "never stored, still refused");
    assert_eq!(archive.lookup(id(cutoff, 7)).unwrap(), Lookup::Unknown);
    assert_eq!(archive.lookup(recent).unwrap(), Lookup::Remembered(committed(recent, 2)));
    // The clock steps back three hours: nothing comes back to life.
    assert_eq!(archive.expire(NOW_NS - 3 * HOUR_NS).unwrap(), 0);
    assert_eq!(archive.expired_before_unix_ns(), cutoff);
    assert_eq!(archive.lookup(old).unwrap(), beyond);
    // After a restart the watermark comes from the caller (a checkpoint).
    let reopened = IdArchive::open(Arc::new(storage.clone()), horizon).unwrap();
    assert_eq!(reopened.lookup(old).unwrap(), Lookup::Unknown, "run and watermark both gone");
    reopened.set_expired_before(cutoff);
    reopened.set_expired_before(cutoff - 5);
    assert_eq!(reopened.lookup(old).unwrap(), beyond);
}

#[test]
fn compaction_bounds_files_and_keeps_every_entry() {
    let mut rng = SmallRng::seed_from_u64(11);
    let storage = MemStorage::new();
    let archive = open(&storage);
    let mut model = Model::new();
    for run in 0..150u64 {
        let base = NOW_NS - HOUR_NS + run * HOUR_NS / 200;
        let mut entries: Vec<Remembered> = (0..40u64)
            .map(|n| {
                // Mostly time-ordered, with stragglers from anywhere in the hour.
                let ts = if n.is_multiple_of(10) { NOW_NS - rng.random_range(0..HOUR_NS) } else { base + n };
                let tx = id(ts, rng.random_range(0..4));
                random_entry(&mut rng, tx)
            })
            .collect();
        let again: Vec<TxId> = model.keys().skip(rng.random_range(0..model.len().max(1))).take(3).copied().collect();
        entries.extend(again.into_iter().map(|tx| random_entry(&mut rng, tx)));
        add(&archive, &mut model, entries);
    }
    assert_eq!(archive.stats().runs, 150);
    archive.compact().unwrap();
    let stats = archive.stats();
    assert!(stats.runs <= MAX_RUNS, "{stats:?}");
    assert!(stats.bytes_merged > 0 && stats.bytes_added > 0, "{stats:?}");
    // Duplicates merge away inside a merged window; across runs they stay.
    assert!(stats.ids >= model.len() as u64 && stats.ids < 150 * 43, "{stats:?}");
    assert_exact(&archive, &model);
    assert_absent(&archive, &model, &mut rng, 5_000);
    assert_eq!(run_files(&storage), live_names(&archive));
    for run in archive.runs() {
        archive.verify(run.seq).unwrap();
    }
    archive.compact().unwrap();
    assert_eq!(archive.stats(), stats, "nothing to do below the bound");
    let reopened = open(&storage);
    assert_exact(&reopened, &model);
    assert_eq!(reopened.stats().runs, stats.runs);
}

#[test]
fn merges_pick_a_run_and_its_newer_neighbour_then_the_smallest_window() {
    // Tiering: older at most twice newer, sum within 1/32 of the total,
    // smallest first: (10, 9) and (9, 30) qualify, (30, 5) does not.
    let mut runs = vec![(1_000_000, 0); 4];
    runs.extend([(10, 0), (9, 0), (30, 0), (5, 0)]);
    assert_eq!(plan_merge(&runs), Some(4..6));
    // Under the bound and nothing due: nothing to do.
    assert_eq!(plan_merge(&[(100, 0), (10, 0), (1, 0)]), None);
    assert_eq!(plan_merge(&[]), None);
    // Over the bound, equal runs: still the tier rule (a pair is 1/33 of all).
    assert_eq!(plan_merge(&vec![(10, 0); MAX_RUNS + 2]), Some(0..2));
    // A pair whose reasons would not fit one run is skipped.
    let mut heavy = vec![(1_000, 0); 40];
    heavy.extend([(10, MAX_BLOB_BYTES), (10, 8), (10, 0)]);
    assert_eq!(plan_merge(&heavy), Some(41..43));
    // The bound's window: the fewest bytes, as wide as asked.
    let runs = [(100, 0), (5, 0), (6, 0), (50, 0), (1, 0), (2, 0)];
    assert_eq!(smallest_window(&runs, 2), Some(4..6));
    assert_eq!(smallest_window(&runs, 3), Some(3..6));
    assert_eq!(smallest_window(&runs, 1), None);
    assert_eq!(smallest_window(&runs, 7), None);
    let heavy = [(1, MAX_BLOB_BYTES), (1, 8), (10, 0), (10, 0)];
    assert_eq!(smallest_window(&heavy, 2), Some(1..3));
}

/// Steady state of the policy, without I/O: flushes of random size, a
/// horizon of `horizon` flushes, `compact` after each.
fn simulate_policy(flushes: u64, horizon: u64, seed: u64) -> (f64, f64, usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    // (bytes, newest flush)
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let (mut added, mut merged, mut most_runs, mut most_bytes) = (0u64, 0u64, 0usize, 0u64);
    for t in 0..flushes {
        let bytes = rng.random_range(1_000..20_000);
        added += bytes;
        runs.push((bytes, t));
        runs.retain(|r| r.1 + horizon >= t);
        loop {
            let sizes: Vec<(u64, u64)> = runs.iter().map(|r| (r.0, 0)).collect();
            let Some(window) = plan_merge(&sizes) else { break };
            let sum = runs[window.clone()].iter().map(|r| r.0).sum();
            merged += sum;
            let newest = runs[window.end - 1].1;
            runs.splice(window, [(sum, newest)]);
        }
        most_runs = most_runs.max(runs.len());
        most_bytes = most_bytes.max(runs.iter().map(|r| r.0).sum());
    }
    let horizon_bytes = added as f64 / flushes as f64 * (horizon + 1) as f64;
    (merged as f64 / added as f64, most_bytes as f64 / horizon_bytes, most_runs)
}

#[test]
fn merge_policy_amplification() {
    // A day of checkpoints every 20 s, and ten times as many.
    for horizon in [4_320, 43_200] {
        let (amplification, retained, most_runs) = simulate_policy(2 * horizon, horizon, horizon);
        println!(
            "horizon of {horizon} flushes: write amplification {amplification:.1}, {retained:.3} of the horizon kept, {most_runs} runs at most"
        );
        assert!(most_runs <= MAX_RUNS);
        assert!(amplification < 12.0, "{amplification}");
        assert!(retained < 1.1, "{retained}");
    }
}

/// A storage holding one run of 30 ids with their model.
fn base_storage() -> (MemStorage, Model) {
    let storage = MemStorage::new();
    let mut model = Model::new();
    let archive = open(&storage);
    let mut rng = SmallRng::seed_from_u64(3);
    let entries = (0..30).map(|n| random_entry(&mut rng, id(NOW_NS, n * 2))).collect();
    add(&archive, &mut model, entries);
    (storage, model)
}

#[test]
fn a_crash_during_add_run_leaves_the_old_or_the_new_state() {
    let mut seen = (false, false);
    for point in 0..4 {
        let (storage, model) = base_storage();
        let archive = open(&storage);
        let mut rng = SmallRng::seed_from_u64(point);
        let new: Vec<Remembered> = (0..20).map(|n| random_entry(&mut rng, id(NOW_NS, n * 2 + 1))).collect();
        storage.crash_after_syncs(storage.sync_count() + point);
        let result = archive.add_run(new.clone());
        let image = storage.crash_image().unwrap_or_else(|| storage.crash());
        let after = open(&image);
        assert_exact(&after, &model);
        let present = new.iter().filter(|e| after.get(e.tx).unwrap().as_ref() == Some(*e)).count();
        assert!(present == 0 || present == new.len(), "point {point}: {present} of {}", new.len());
        if result.is_ok() {
            assert_eq!(present, new.len(), "point {point}: acknowledged, so durable");
        }
        seen = (seen.0 || present == 0, seen.1 || present > 0);
        // The recovered archive takes new runs.
        let mut recovered = model.clone();
        add(&after, &mut recovered, vec![committed(id(NOW_NS + 1, 0), 1)]);
        assert_exact(&after, &recovered);
    }
    assert_eq!(seen, (true, true), "both outcomes exercised");
}

#[test]
fn a_crash_during_compact_leaves_the_old_or_the_new_state() {
    let mut rng = SmallRng::seed_from_u64(5);
    let storage = MemStorage::new();
    let archive = open(&storage);
    let mut model = Model::new();
    for run in 0..(MAX_RUNS as u64 + 2) {
        let entries = (0..10).map(|n| random_entry(&mut rng, id(NOW_NS + run, n))).collect();
        add(&archive, &mut model, entries);
    }
    let base = storage.crash();
    let reference = open(&base.crash());
    reference.compact().unwrap();
    let compacted_runs = reference.stats().runs;
    assert!(compacted_runs <= MAX_RUNS);
    let mut superseded_seen = false;
    // Every durability point of the whole compaction, then one past it.
    for point in 0.. {
        let storage = base.crash();
        let archive = open(&storage);
        storage.crash_after_syncs(storage.sync_count() + point);
        let result = archive.compact();
        let crashed = storage.crash_image();
        let image = crashed.clone().unwrap_or_else(|| storage.crash());
        let files_before_open = run_files(&image).len();
        let read_only = IdArchive::open_read_only(Arc::new(image.clone()), DAY).unwrap();
        assert_exact(&read_only, &model);
        assert_eq!(run_files(&image).len(), files_before_open, "read-only open removes nothing");
        let after = open(&image);
        superseded_seen |= files_before_open > after.stats().runs;
        assert_exact(&after, &model);
        assert_eq!(run_files(&image), live_names(&after), "point {point}: superseded runs removed at open");
        assert!(after.stats().runs <= MAX_RUNS + 2, "point {point}");
        if result.is_ok() {
            assert_eq!(after.stats().runs, compacted_runs);
        }
        after.compact().unwrap();
        assert!(after.stats().runs <= MAX_RUNS);
        assert_exact(&after, &model);
        if crashed.is_none() {
            assert!(point > 3, "several merges, each with three durability points");
            break;
        }
    }
    assert!(superseded_seen, "a crash between the merge and the removals was exercised");
}

#[test]
fn failed_writes_leave_the_archive_as_it_was() {
    let (storage, model) = base_storage();
    let archive = open(&storage);
    storage.fail_next(FaultOp::WriteFile, 1, FaultKind::NoSpace);
    let err = archive.add_run(vec![committed(id(NOW_NS, 1), 1)]).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(archive.stats().runs, 1);
    assert_exact(&archive, &model);
    assert_eq!(archive.get(id(NOW_NS, 1)).unwrap(), None);
    let mut model = model;
    add(&archive, &mut model, vec![committed(id(NOW_NS, 1), 1)]);
    assert_exact(&open(&storage), &model);
}

#[test]
fn a_damaged_input_stops_a_merge_and_changes_nothing() {
    let storage = MemStorage::new();
    let archive = open(&storage);
    let mut model = Model::new();
    for run in 0..(MAX_RUNS as u64 + 1) {
        // 1000 entries: the sparse index skips most of them.
        let entries = (0..1000).map(|n| committed(id(NOW_NS + run, n), n + 1)).collect();
        add(&archive, &mut model, entries);
    }
    let files = run_files(&storage);
    for name in &files {
        // Entry 3 of every run: never read by open.
        assert!(storage.flip_bit(name, (entry_offset(3) + 5) * 8));
    }
    let err = archive.compact().unwrap_err();
    assert!(matches!(err, Error::Corrupt { offset, .. } if offset == entry_offset(3)), "{err}");
    assert_eq!(run_files(&storage), files);
    assert_eq!(archive.stats().runs, MAX_RUNS + 1);
    let err = archive.verify(archive.runs()[0].seq).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn read_only_archives_refuse_changes() {
    let (storage, model) = base_storage();
    let archive = IdArchive::open_read_only(Arc::new(storage.clone()), DAY).unwrap();
    assert_exact(&archive, &model);
    assert!(archive.add_run(vec![committed(id(NOW_NS, 1), 1)]).is_err());
    assert!(archive.expire(u64::MAX).is_err());
    assert!(archive.compact().is_err());
    assert_eq!(run_files(&storage).len(), 1);
}

#[test]
fn lookups_run_during_writes() {
    let storage = MemStorage::new();
    let archive = Arc::new(IdArchive::open(Arc::new(storage.clone()), Duration::from_nanos(HOUR_NS)).unwrap());
    let kept = id(NOW_NS, 0);
    archive.add_run(vec![committed(kept, 1)]).unwrap();
    std::thread::scope(|scope| {
        let writer = archive.clone();
        scope.spawn(move || {
            for run in 1..200u64 {
                writer.add_run(vec![committed(id(NOW_NS - 2 * HOUR_NS + run, 0), run)]).unwrap();
                writer.compact().unwrap();
                writer.expire(NOW_NS).unwrap();
            }
        });
        for _ in 0..2 {
            let reader = archive.clone();
            scope.spawn(move || {
                for _ in 0..2_000 {
                    assert_eq!(reader.lookup(kept).unwrap(), Lookup::Remembered(committed(kept, 1)));
                }
            });
        }
    });
    assert_eq!(archive.stats().runs, 1, "everything but the kept run expired");
}

/// The bytes of one run file holding `entries`.
fn run_image(entries: Vec<Remembered>) -> Vec<u8> {
    let storage = MemStorage::new();
    open(&storage).add_run(entries).unwrap();
    let names = run_files(&storage);
    storage.read_written(&names[0]).unwrap()
}

const NAME: &str = "ids-0000000000000001.run";

fn storage_with(bytes: &[u8]) -> MemStorage {
    let storage = MemStorage::new();
    storage.write_file_atomic(NAME, &[bytes]).unwrap();
    storage
}

fn small_model() -> Vec<Remembered> {
    vec![
        committed(id(NOW_NS, 1), 1),
        aborted(id(NOW_NS, 3), 2, AbortReason::LockTimeout),
        committed(id(NOW_NS, 5), 3),
        aborted(id(NOW_NS, 7), 4, AbortReason::Refused { service: "s".into(), code: "c".into(), message: "m".into() }),
        committed(id(NOW_NS, 9), 5),
    ]
}

/// Opening and reading damaged `storage` gives the right answer or
/// `Error::Corrupt`, never a wrong answer, another error or a panic.
fn assert_right_or_corrupt(storage: &MemStorage, model: &[Remembered], context: &str) {
    let archive = match IdArchive::open(Arc::new(storage.clone()), DAY) {
        Err(Error::Corrupt { .. }) => return,
        Err(other) => panic!("{context}: {other}"),
        Ok(a) => a,
    };
    for e in model {
        match archive.get(e.tx) {
            Ok(found) => assert_eq!(found.as_ref(), Some(e), "{context}"),
            Err(Error::Corrupt { .. }) => {}
            Err(other) => panic!("{context}: {other}"),
        }
        let absent = TxId::from_u128(e.tx.as_u128() + 1);
        match archive.get(absent) {
            Ok(found) => assert_eq!(found, None, "{context}"),
            Err(Error::Corrupt { .. }) => {}
            Err(other) => panic!("{context}: {other}"),
        }
    }
}

#[test]
fn every_bit_flip_is_corrupt_or_harmless() {
    let model = small_model();
    let image = run_image(model.clone());
    for bit in 0..image.len() as u64 * 8 {
        let storage = storage_with(&image);
        assert!(storage.flip_bit(NAME, bit));
        assert_right_or_corrupt(&storage, &model, &format!("bit {bit}"));
    }
}

#[test]
fn bit_flips_in_a_large_run_are_corrupt_or_harmless() {
    let mut rng = SmallRng::seed_from_u64(9);
    let model: Vec<Remembered> = (0..5_000).map(|n| random_entry(&mut rng, id(NOW_NS, n * 2))).collect();
    let image = run_image(model.clone());
    for _ in 0..100 {
        let bit = rng.random_range(0..image.len() as u64 * 8);
        let storage = storage_with(&image);
        assert!(storage.flip_bit(NAME, bit));
        // The entries around the flip, and a sample of the rest.
        let near = ((bit / 8).saturating_sub(HEADER_BYTES) / ENTRY_BYTES) as usize;
        let mut probe: Vec<Remembered> = model.iter().skip(near.saturating_sub(3)).take(7).cloned().collect();
        probe.extend(model.iter().step_by(97).cloned());
        assert_right_or_corrupt(&storage, &probe, &format!("bit {bit}"));
    }
}

fn open_error(storage: &MemStorage) -> Error {
    IdArchive::open(Arc::new(storage.clone()), DAY).expect_err("damage must be found at open")
}

#[test]
fn truncated_extended_and_foreign_files_are_corrupt() {
    let image = run_image(small_model());
    for cut in 0..image.len() {
        let err = open_error(&storage_with(&image[..cut]));
        assert!(matches!(err, Error::Corrupt { ref file, .. } if file == NAME), "cut {cut}: {err}");
    }
    let mut longer = image.clone();
    longer.push(0);
    assert!(matches!(open_error(&storage_with(&longer)), Error::Corrupt { .. }));
    let storage = storage_with(&image);
    storage.set_bytes(NAME, 0, b"NOTARUN!");
    assert!(matches!(open_error(&storage), Error::Corrupt { offset: 0, .. }));
    // A valid run under another run's name.
    let storage = MemStorage::new();
    storage.write_file_atomic("ids-0000000000000002.run", &[&image]).unwrap();
    assert!(matches!(open_error(&storage), Error::Corrupt { offset: 16, .. }));
    // Names that are not runs are ignored, temp files included.
    let storage = MemStorage::new();
    for name in ["ids-0000000000000001.run.tmp", "ids-1.run", "ids-000000000000000G.run", "ids-000000000000000A.run"] {
        storage.write_file_atomic(name, &[b"junk"]).unwrap();
    }
    assert_eq!(open(&storage).stats().runs, 0);
}

/// `image` with footer fields replaced and the footer's crc made valid again.
fn with_footer(image: &[u8], edit: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut out = image.to_vec();
    let at = out.len() - FOOTER_BYTES as usize;
    let footer = &mut out[at..];
    edit(footer);
    let crc = crc32fast::hash(&footer[..84]);
    footer[84..].copy_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn hostile_sizes_are_corrupt_without_large_allocations() {
    let image = run_image(small_model());
    type Edit = Box<dyn Fn(&mut [u8])>;
    let edits: Vec<(&str, Edit)> = vec![
        ("count u64::MAX", Box::new(|f| f[32..40].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("count overflowing the table", Box::new(|f| f[32..40].copy_from_slice(&(u64::MAX / 32 + 1).to_le_bytes()))),
        ("count zero", Box::new(|f| f[32..40].copy_from_slice(&0u64.to_le_bytes()))),
        ("blob u64::MAX", Box::new(|f| f[40..48].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("blob unaligned", Box::new(|f| f[40..48].copy_from_slice(&3u64.to_le_bytes()))),
        ("min above max", Box::new(|f| f[48..64].copy_from_slice(&u128::MAX.to_le_bytes()))),
        ("cover past the seq", Box::new(|f| f[24..32].copy_from_slice(&9u64.to_le_bytes()))),
        ("cover reversed", Box::new(|f| f[16..24].copy_from_slice(&2u64.to_le_bytes()))),
    ];
    for (what, edit) in edits {
        let err = open_error(&storage_with(&with_footer(&image, edit)));
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
    }
    // A reason record claiming 4 GiB: refused before any buffer is sized by it.
    let storage = storage_with(&image);
    let archive = open(&storage);
    let blob_start = entry_offset(small_model().len() as u64);
    assert!(storage.set_bytes(NAME, blob_start + 16, &u32::MAX.to_le_bytes()));
    let err = archive.get(id(NOW_NS, 3)).unwrap_err();
    assert!(matches!(err, Error::Corrupt { offset, .. } if offset == blob_start + 16), "{err}");
    assert_eq!(archive.get(id(NOW_NS, 1)).unwrap(), Some(committed(id(NOW_NS, 1), 1)));
}

#[test]
fn partly_overlapping_covers_are_corrupt() {
    let storage = MemStorage::new();
    let archive = open(&storage);
    for n in 0..3 {
        archive.add_run(vec![committed(id(NOW_NS, n), 1)]).unwrap();
    }
    // Runs 1 and 2 claimed by run 4, runs 2 and 3 by run 5: no sequence of
    // merges produces that.
    let image = storage.read_written("ids-0000000000000002.run").unwrap();
    for (seq, first, last) in [(4u64, 1u64, 2u64), (5, 2, 3)] {
        let mut bytes = with_footer(&image, |f| {
            f[8..16].copy_from_slice(&seq.to_le_bytes());
            f[16..24].copy_from_slice(&first.to_le_bytes());
            f[24..32].copy_from_slice(&last.to_le_bytes());
        });
        let header = encode_header(seq);
        bytes[..HEADER_BYTES as usize].copy_from_slice(&header);
        let bytes = with_footer(&bytes, |f| f[80..84].copy_from_slice(&header[24..28]));
        storage.write_file_atomic(&run_name(seq), &[&bytes]).unwrap();
    }
    assert!(matches!(open_error(&storage), Error::Corrupt { .. }));
}

proptest! {
    #[test]
    fn random_bytes_as_a_run_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), probe in any::<u128>()) {
        let storage = storage_with(&bytes);
        if let Ok(archive) = IdArchive::open(Arc::new(storage), DAY) {
            let _ = archive.get(TxId::from_u128(probe));
            for run in archive.runs() {
                let _ = archive.verify(run.seq);
            }
        }
    }

    #[test]
    fn overwritten_ranges_are_corrupt_or_harmless(at in any::<usize>(), junk in proptest::collection::vec(any::<u8>(), 1..40)) {
        let model = small_model();
        let image = run_image(model.clone());
        let storage = storage_with(&image);
        let at = at % image.len();
        let end = (at + junk.len()).min(image.len());
        storage.set_bytes(NAME, at as u64, &junk[..end - at]);
        assert_right_or_corrupt(&storage, &model, &format!("{} bytes at {at}", end - at));
    }
}

/// 2 000 000 ids in 20 runs on the real file system: exact lookups, and the
/// sizes the module docs quote (printed; run with `--nocapture`).
#[test]
fn two_million_ids_across_runs() {
    const RUNS: u64 = 20;
    const PER_RUN: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FsStorage::new(dir.path()).unwrap());
    let archive = IdArchive::open(storage.clone(), DAY).unwrap();
    let reason = AbortReason::InsufficientFunds { service: "svc-3".into(), account: "acct-123456".into() };
    // Id n (even counters only, so odd ones are absent inside every range):
    // 30 000 per second from NOW.
    let tx_of = |n: u64| id(NOW_NS + n * 33_333, 2 * n);
    let entry_of = |n: u64| {
        if n.is_multiple_of(10) { aborted(tx_of(n), n + 1, reason.clone()) } else { committed(tx_of(n), n + 1) }
    };
    let started = Instant::now();
    for run in 0..RUNS {
        archive.add_run((run * PER_RUN..(run + 1) * PER_RUN).map(entry_of).collect()).unwrap();
    }
    let write_s = started.elapsed().as_secs_f64();
    let total = RUNS * PER_RUN;
    let mut rng = SmallRng::seed_from_u64(1);
    let started = Instant::now();
    for _ in 0..20_000 {
        let n = rng.random_range(0..total);
        assert_eq!(archive.get(tx_of(n)).unwrap(), Some(entry_of(n)));
    }
    let present_us = started.elapsed().as_secs_f64() * 1e6 / 20_000.0;
    let started = Instant::now();
    for _ in 0..20_000 {
        let n = rng.random_range(0..total);
        let absent = TxId::from_u128(tx_of(n).as_u128() + 1);
        assert_eq!(archive.get(absent).unwrap(), None);
    }
    let absent_us = started.elapsed().as_secs_f64() * 1e6 / 20_000.0;
    let stats = archive.stats();
    assert_eq!(stats.ids, total);
    let reopened = IdArchive::open(storage, DAY).unwrap().stats();
    assert_eq!((reopened.runs, reopened.ids, reopened.bytes_on_disk), (stats.runs, stats.ids, stats.bytes_on_disk));
    println!(
        "id archive: {total} ids in {} runs; {:.2} bytes/id on disk ({} bytes), {:.4} bytes/id in memory ({} bytes); \
         written in {write_s:.2} s ({:.0} ids/s); get present {present_us:.2} µs, absent {absent_us:.2} µs",
        stats.runs,
        stats.bytes_on_disk as f64 / total as f64,
        stats.bytes_on_disk,
        stats.bytes_in_memory as f64 / total as f64,
        stats.bytes_in_memory,
        total as f64 / write_s,
    );
}
