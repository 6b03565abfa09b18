//! The store's rules, its durability (crash at every sync point, through
//! `MemStorage`), forgetting, checkpoints and concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::saga::ManualClock;
use crate::txn::TxId;
use crate::wal::MemStorage;

/// A branch of a transaction created at `tx` seconds (dtc ids carry a time).
fn branch(tx: u64, index: u16) -> BranchId {
    BranchId { tx: TxId::from_u128(((tx as u128 + 1) * 1_000_000_000) << 64), index }
}

fn value(b: BranchId) -> Vec<u8> {
    format!("{{\"branch\":\"{b}\"}}").into_bytes()
}

/// Small segments and frequent checkpoints, so that tests cross segments
/// and recycle them.
fn small() -> BranchStoreOptions {
    BranchStoreOptions::default().max_prepared_bytes(1024).segment_size_bytes(8192).checkpoint_every_bytes(4096)
}

fn open_mem(storage: &MemStorage, options: BranchStoreOptions) -> BranchStore {
    options.open_storage(Arc::new(storage.clone())).unwrap()
}

fn ok(b: BranchId) -> impl FnOnce() -> Result<Vec<u8>, Refusal> {
    move || Ok(value(b))
}

fn never<T>() -> impl FnOnce() -> T {
    || panic!("the business closure must not run")
}

fn applied(_: &[u8]) -> Result<(), Failure> {
    Ok(())
}

fn undone(_: Option<&[u8]>) -> Result<(), Failure> {
    Ok(())
}

fn no_apply(_: &[u8]) -> Result<(), Failure> {
    panic!("apply must not run")
}

fn no_undo(_: Option<&[u8]>) -> Result<(), Failure> {
    panic!("undo must not run")
}

#[test]
fn a_fresh_prepare_runs_the_check_once_and_duplicates_get_the_same_value() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    assert_eq!(store.prepare(b, ok(b)).unwrap(), PrepareVerdict::Prepared(value(b)));
    assert_eq!(store.prepare(b, never()).unwrap(), PrepareVerdict::AlreadyPrepared(value(b)));
    assert_eq!(store.state(b), Some(BranchState::Prepared));
    assert_eq!(store.prepared(), vec![(b, value(b))]);
}

#[test]
fn a_refusal_is_remembered_and_repeated_without_running_the_check() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    let refused = store.prepare(b, || Err(Refusal::new("sold_out", "no seats"))).unwrap();
    assert_eq!(refused, PrepareVerdict::Refused(Refusal::new("sold_out", "no seats")));
    assert_eq!(store.prepare(b, never()).unwrap(), refused);
    assert_eq!(store.state(b), Some(BranchState::Refused));
    assert!(store.prepared().is_empty());
    // A refused branch holds nothing: its rollback succeeds, its commit is unknown.
    assert_eq!(store.rollback(b, no_undo).unwrap(), RollbackVerdict::NothingPrepared);
    assert_eq!(store.commit(b, no_apply).unwrap(), CommitVerdict::Unknown);
}

#[test]
fn a_typed_refusal_is_recorded_with_its_code() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    let verdict = store.prepare(b, || Err(Refusal::InsufficientFunds { account: "a-1".into() })).unwrap();
    assert_eq!(verdict, PrepareVerdict::Refused(Refusal::new("insufficient_funds", "insufficient funds in a-1")));
}

#[test]
fn commit_applies_once_and_duplicates_are_acknowledged() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    store.prepare(b, ok(b)).unwrap();
    let mut seen = None;
    assert_eq!(
        store
            .commit(b, |v| {
                seen = Some(v.to_vec());
                Ok(())
            })
            .unwrap(),
        CommitVerdict::Committed
    );
    assert_eq!(seen, Some(value(b)));
    assert_eq!(store.commit(b, no_apply).unwrap(), CommitVerdict::AlreadyCommitted);
    assert_eq!(store.state(b), Some(BranchState::Committed));
    assert!(store.prepared().is_empty());
}

#[test]
fn commit_of_a_branch_never_prepared_or_rolled_back_is_refused() {
    let store = open_mem(&MemStorage::new(), small());
    let unknown = branch(1, 0);
    assert_eq!(store.commit(unknown, no_apply).unwrap(), CommitVerdict::Unknown);
    assert_eq!(store.state(unknown), None, "an unknown commit records nothing");
    let rolled = branch(1, 1);
    store.prepare(rolled, ok(rolled)).unwrap();
    store.rollback(rolled, undone).unwrap();
    assert_eq!(store.commit(rolled, no_apply).unwrap(), CommitVerdict::AlreadyRolledBack);
}

#[test]
fn rollback_undoes_the_prepared_value_once() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    store.prepare(b, ok(b)).unwrap();
    let mut seen = None;
    let verdict = store
        .rollback(b, |v| {
            seen = Some(v.map(<[u8]>::to_vec));
            Ok(())
        })
        .unwrap();
    assert_eq!(verdict, RollbackVerdict::RolledBack);
    assert_eq!(seen, Some(Some(value(b))));
    assert_eq!(store.rollback(b, no_undo).unwrap(), RollbackVerdict::AlreadyRolledBack);
    assert_eq!(store.prepare(b, never()).unwrap(), PrepareVerdict::AlreadyRolledBack);
}

#[test]
fn a_rollback_before_the_prepare_is_remembered_and_refuses_the_late_prepare() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    let mut undo_got = Some(Some(Vec::new()));
    let verdict = store
        .rollback(b, |v| {
            undo_got = Some(v.map(<[u8]>::to_vec));
            Ok(())
        })
        .unwrap();
    assert_eq!(verdict, RollbackVerdict::NothingPrepared);
    assert_eq!(undo_got, Some(None), "undo learns that nothing was prepared");
    assert_eq!(store.prepare(b, never()).unwrap(), PrepareVerdict::AlreadyRolledBack, "no hanging reservation");
    assert_eq!(store.rollback(b, no_undo).unwrap(), RollbackVerdict::AlreadyRolledBack);
    assert!(store.prepared().is_empty());
}

#[test]
fn a_committed_branch_cannot_be_rolled_back_or_prepared_again() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    store.prepare(b, ok(b)).unwrap();
    store.commit(b, applied).unwrap();
    assert_eq!(store.rollback(b, no_undo).unwrap(), RollbackVerdict::AlreadyCommitted);
    assert_eq!(store.prepare(b, never()).unwrap(), PrepareVerdict::AlreadyCommitted);
}

#[test]
fn every_rule_holds_after_a_reopen() {
    let storage = MemStorage::new();
    let [prepared, committed, rolled, null, refused] = [0, 1, 2, 3, 4].map(|i| branch(1, i));
    {
        let store = open_mem(&storage, small());
        store.prepare(prepared, ok(prepared)).unwrap();
        store.prepare(committed, ok(committed)).unwrap();
        store.commit(committed, applied).unwrap();
        store.prepare(rolled, ok(rolled)).unwrap();
        store.rollback(rolled, undone).unwrap();
        store.rollback(null, undone).unwrap();
        store.prepare(refused, || Err(Refusal::new("no", "never"))).unwrap();
    }
    // Only what was durable survives: every verdict above was.
    let store = open_mem(&storage.crash(), small());
    assert_eq!(store.prepared(), vec![(prepared, value(prepared))]);
    assert_eq!(store.prepare(prepared, never()).unwrap(), PrepareVerdict::AlreadyPrepared(value(prepared)));
    assert_eq!(store.commit(committed, no_apply).unwrap(), CommitVerdict::AlreadyCommitted);
    assert_eq!(store.rollback(committed, no_undo).unwrap(), RollbackVerdict::AlreadyCommitted);
    assert_eq!(store.prepare(rolled, never()).unwrap(), PrepareVerdict::AlreadyRolledBack);
    assert_eq!(store.commit(rolled, no_apply).unwrap(), CommitVerdict::AlreadyRolledBack);
    assert_eq!(store.prepare(null, never()).unwrap(), PrepareVerdict::AlreadyRolledBack);
    assert_eq!(store.prepare(refused, never()).unwrap(), PrepareVerdict::Refused(Refusal::new("no", "never")));
    assert_eq!(store.commit(branch(1, 9), no_apply).unwrap(), CommitVerdict::Unknown);
    let all: Vec<_> = store.branches(BranchFilter::All).into_iter().map(|i| (i.branch, i.state)).collect();
    assert_eq!(
        all,
        vec![
            (prepared, BranchState::Prepared),
            (committed, BranchState::Committed),
            (rolled, BranchState::RolledBack),
            (null, BranchState::RolledBack),
            (refused, BranchState::Refused),
        ]
    );
}

#[test]
fn a_real_directory_is_reopened_and_held_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let b = branch(1, 0);
    {
        let store = BranchStore::open(dir.path()).unwrap();
        store.prepare(b, ok(b)).unwrap();
        assert!(matches!(BranchStore::open(dir.path()), Err(StoreError::InUse { .. })));
    }
    let store = BranchStore::open(dir.path()).unwrap();
    assert_eq!(store.prepared(), vec![(b, value(b))]);
}

#[test]
fn a_failing_or_panicking_closure_leaves_the_branch_as_it_was() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = store.prepare(b, || panic!("reserve blew up"));
    }));
    assert!(panicked.is_err());
    assert_eq!(store.state(b), None);
    store.prepare(b, ok(b)).unwrap();
    let failed = store.commit(b, |_| Err(Failure::new("downstream is down")));
    assert!(matches!(failed, Err(StoreError::Service(_))));
    assert_eq!(store.state(b), Some(BranchState::Prepared));
    let failed = store.rollback(b, |_| Err(Failure::new("downstream is down")));
    assert!(matches!(failed, Err(StoreError::Service(_))));
    assert_eq!(store.commit(b, applied).unwrap(), CommitVerdict::Committed);
}

#[test]
fn an_oversized_prepared_value_is_an_error_and_records_nothing() {
    let store = open_mem(&MemStorage::new(), small());
    let b = branch(1, 0);
    let error = store.prepare(b, || Ok(vec![0; 1025])).unwrap_err();
    assert!(matches!(error, StoreError::PreparedTooLarge { bytes: 1025, limit: 1024 }));
    assert_eq!(store.state(b), None);
}

#[test]
fn bad_options_are_typed_errors() {
    for options in [
        BranchStoreOptions::default().max_finished(0),
        BranchStoreOptions::default().segment_size_bytes(8192),
        BranchStoreOptions::default().segment_size_bytes(1000),
        BranchStoreOptions::default().checkpoint_every_bytes(10),
        BranchStoreOptions::default().max_prepared_bytes(32 << 20),
    ] {
        let result = options.open_storage(Arc::new(MemStorage::new()));
        assert!(matches!(result, Err(StoreError::Config { .. })), "{result:?}");
    }
}

#[test]
fn finished_branches_beyond_the_count_are_forgotten_and_their_late_prepares_expire() {
    let storage = MemStorage::new();
    let options = || small().max_finished(3);
    let store = open_mem(&storage, options());
    let held = branch(0, 0);
    store.prepare(held, ok(held)).unwrap();
    for tx in 1..=5 {
        let b = branch(tx, 0);
        store.prepare(b, ok(b)).unwrap();
        store.commit(b, applied).unwrap();
    }
    assert_eq!(store.stats().finished, 3);
    assert_eq!(store.state(branch(1, 0)), None, "the oldest finished branches are forgotten");
    assert_eq!(store.state(branch(3, 0)), Some(BranchState::Committed));
    assert_eq!(store.state(held), Some(BranchState::Prepared), "prepared branches are never dropped");
    // A late duplicate of a forgotten branch must not reserve again.
    assert_eq!(store.prepare(branch(1, 0), never()).unwrap(), PrepareVerdict::Expired);
    assert_eq!(store.prepare(branch(2, 7), never()).unwrap(), PrepareVerdict::Expired);
    assert_eq!(store.commit(branch(1, 0), no_apply).unwrap(), CommitVerdict::Unknown);
    assert_eq!(store.rollback(branch(1, 0), no_undo).unwrap(), RollbackVerdict::NothingPrepared);
    // Newer transactions are unaffected.
    let fresh = branch(9, 0);
    assert_eq!(store.prepare(fresh, ok(fresh)).unwrap(), PrepareVerdict::Prepared(value(fresh)));
    // The watermark survives a restart, through the checkpoint or the replay.
    drop(store);
    let store = open_mem(&storage.crash(), options());
    assert_eq!(store.prepare(branch(2, 0), never()).unwrap(), PrepareVerdict::Expired);
    assert_eq!(store.prepared(), vec![(held, value(held)), (fresh, value(fresh))]);
}

#[test]
fn finished_branches_older_than_the_horizon_are_forgotten() {
    let clock = ManualClock::new(Duration::from_secs(1_000));
    let options = || small().finished_horizon(Duration::from_secs(60)).clock(Arc::new(clock.clone()));
    let store = open_mem(&MemStorage::new(), options());
    let old = branch(1, 0);
    store.rollback(old, undone).unwrap();
    clock.advance(Duration::from_secs(59));
    let b = branch(2, 0);
    store.prepare(b, ok(b)).unwrap();
    assert_eq!(store.state(old), Some(BranchState::RolledBack), "still inside the horizon");
    clock.advance(Duration::from_secs(2));
    store.commit(b, applied).unwrap();
    assert_eq!(store.state(old), None, "forgotten once the horizon passed");
    assert_eq!(store.state(b), Some(BranchState::Committed));
    assert_eq!(store.prepare(old, never()).unwrap(), PrepareVerdict::Expired);
}

#[test]
fn checkpoints_bound_the_log_and_keep_every_branch() {
    let storage = MemStorage::new();
    let options = || small().max_finished(50);
    let store = open_mem(&storage, options());
    let mut held = Vec::new();
    for tx in 0..600u64 {
        let b = branch(tx, 1);
        store.prepare(b, ok(b)).unwrap();
        if tx % 10 == 0 {
            held.push((b, value(b)));
        } else if tx % 2 == 0 {
            store.commit(b, applied).unwrap();
        } else {
            store.rollback(b, undone).unwrap();
        }
    }
    let stats = store.stats();
    assert!(stats.checkpoints > 10, "{stats:?}");
    assert!(stats.log_segments_live <= 4, "{stats:?}");
    let files = storage.file_names();
    assert!(files.len() <= 6, "segments, one checkpoint, nothing else: {files:?}");
    drop(store);
    let store = open_mem(&storage.crash(), options());
    assert_eq!(store.prepared(), held);
    assert_eq!(store.stats().finished, 50);
}

#[test]
fn concurrent_callers_share_syncs_and_each_branch_reserves_once() {
    // A real directory: its syncs take long enough for callers to pile up.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(BranchStore::open(dir.path()).unwrap());
    let reserved = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = Arc::clone(&store);
            let reserved = Arc::clone(&reserved);
            std::thread::spawn(move || {
                for i in 0..100u16 {
                    // Two threads race on every branch.
                    let b = branch(t / 2, i);
                    let verdict = store
                        .prepare(b, || {
                            reserved.fetch_add(1, Ordering::Relaxed);
                            Ok(value(b))
                        })
                        .unwrap();
                    // The other thread may have prepared, or prepared and committed.
                    let fine = match verdict {
                        PrepareVerdict::Prepared(v) | PrepareVerdict::AlreadyPrepared(v) => v == value(b),
                        verdict => verdict == PrepareVerdict::AlreadyCommitted,
                    };
                    assert!(fine, "{b}");
                    let committed = store.commit(b, applied).unwrap();
                    assert!(matches!(committed, CommitVerdict::Committed | CommitVerdict::AlreadyCommitted));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(reserved.load(Ordering::Relaxed), 400, "one reservation per branch");
    let stats = store.stats();
    assert_eq!(stats.log_records, 800);
    assert_eq!(stats.finished, 400);
    // Group commit: with waiters racing, a sync serves more than one record.
    assert!(stats.log_syncs < stats.log_records, "{stats:?}");
}

/// One step of a crash-test script.
#[derive(Debug, Clone, Copy)]
enum Op {
    Prepare(BranchId, bool),
    Commit(BranchId),
    Rollback(BranchId),
}

/// The rules as a model: (state after, verdict) for `op` from `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Prepare(PrepareVerdict),
    Commit(CommitVerdict),
    Rollback(RollbackVerdict),
}

fn model(state: Option<BranchState>, op: Op) -> (Option<BranchState>, Verdict) {
    use BranchState::*;
    match op {
        Op::Prepare(b, refuse) => match state {
            None if refuse => (Some(Refused), Verdict::Prepare(PrepareVerdict::Refused(refusal()))),
            None => (Some(Prepared), Verdict::Prepare(PrepareVerdict::Prepared(value(b)))),
            Some(Prepared) => (state, Verdict::Prepare(PrepareVerdict::AlreadyPrepared(value(b)))),
            Some(Committed) => (state, Verdict::Prepare(PrepareVerdict::AlreadyCommitted)),
            Some(RolledBack) => (state, Verdict::Prepare(PrepareVerdict::AlreadyRolledBack)),
            Some(Refused) => (state, Verdict::Prepare(PrepareVerdict::Refused(refusal()))),
        },
        Op::Commit(_) => match state {
            Some(Prepared) => (Some(Committed), Verdict::Commit(CommitVerdict::Committed)),
            Some(Committed) => (state, Verdict::Commit(CommitVerdict::AlreadyCommitted)),
            Some(RolledBack) => (state, Verdict::Commit(CommitVerdict::AlreadyRolledBack)),
            None | Some(Refused) => (state, Verdict::Commit(CommitVerdict::Unknown)),
        },
        Op::Rollback(_) => match state {
            None => (Some(RolledBack), Verdict::Rollback(RollbackVerdict::NothingPrepared)),
            Some(Prepared) => (Some(RolledBack), Verdict::Rollback(RollbackVerdict::RolledBack)),
            Some(Committed) => (state, Verdict::Rollback(RollbackVerdict::AlreadyCommitted)),
            Some(RolledBack) => (state, Verdict::Rollback(RollbackVerdict::AlreadyRolledBack)),
            Some(Refused) => (state, Verdict::Rollback(RollbackVerdict::NothingPrepared)),
        },
    }
}

fn refusal() -> Refusal {
    Refusal::new("full", "no room")
}

fn run(store: &BranchStore, op: Op) -> Result<Verdict, StoreError> {
    Ok(match op {
        Op::Prepare(b, refuse) => {
            Verdict::Prepare(store.prepare(b, || if refuse { Err(refusal()) } else { Ok(value(b)) })?)
        }
        Op::Commit(b) => Verdict::Commit(store.commit(b, applied)?),
        Op::Rollback(b) => Verdict::Rollback(store.rollback(b, undone)?),
    })
}

fn script(seed: u64, branches: u16, len: usize, tx: u64) -> Vec<Op> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            let b = branch(tx, rng.random_range(0..branches));
            match rng.random_range(0..10) {
                0..4 => Op::Prepare(b, rng.random_range(0..6) == 0),
                4..7 => Op::Commit(b),
                _ => Op::Rollback(b),
            }
        })
        .collect()
}

/// Runs `ops` from the model's `states`; returns the op that failed, if one
/// did. Every verdict returned must be the model's.
fn run_script(store: &BranchStore, ops: &[Op], states: &mut HashMap<BranchId, BranchState>) -> Option<Op> {
    for &op in ops {
        let b = match op {
            Op::Prepare(b, _) | Op::Commit(b) | Op::Rollback(b) => b,
        };
        let (after, expected) = model(states.get(&b).copied(), op);
        match run(store, op) {
            Ok(verdict) => {
                assert_eq!(verdict, expected, "{op:?}");
                match after {
                    Some(state) => states.insert(b, state),
                    None => states.remove(&b),
                };
            }
            Err(_) => return Some(op),
        }
    }
    None
}

/// After a reopen: every acknowledged state holds, except that the one
/// unacknowledged op may or may not have taken effect; nothing else shows.
fn check_recovered(store: &BranchStore, acknowledged: &HashMap<BranchId, BranchState>, failed: &[Op]) {
    let mut allowed: HashMap<BranchId, Vec<Option<BranchState>>> =
        acknowledged.iter().map(|(b, s)| (*b, vec![Some(*s)])).collect();
    for &op in failed {
        let b = match op {
            Op::Prepare(b, _) | Op::Commit(b) | Op::Rollback(b) => b,
        };
        let before = acknowledged.get(&b).copied();
        let (after, _) = model(before, op);
        allowed.entry(b).or_insert_with(|| vec![before]).push(after);
    }
    for info in store.branches(BranchFilter::All) {
        let options = allowed.get(&info.branch).cloned().unwrap_or_else(|| vec![None]);
        assert!(options.contains(&Some(info.state)), "{} is {:?}, allowed {options:?}", info.branch, info.state);
        if info.state == BranchState::Prepared {
            assert_eq!(info.prepared, Some(value(info.branch)), "half a prepared value");
        }
    }
    for (b, options) in allowed {
        assert!(options.contains(&store.state(b)), "{b} is {:?}, allowed {options:?}", store.state(b));
    }
}

#[test]
fn every_verdict_survives_a_crash_at_every_sync_point() {
    for seed in 0..3 {
        let ops = script(seed, 12, 60, 1);
        // How many durability points a run without a crash passes.
        let full = MemStorage::new();
        run_script(&open_mem(&full, small()), &ops, &mut HashMap::new());
        let points = full.sync_count();
        assert!(points > 12, "{points} sync points");
        for crash_at in 0..=points {
            let storage = MemStorage::new();
            storage.crash_after_syncs(crash_at);
            let mut acknowledged = HashMap::new();
            let failed = match small().open_storage(Arc::new(storage.clone())) {
                Ok(store) => run_script(&store, &ops, &mut acknowledged),
                Err(_) => None,
            };
            let Some(image) = storage.crash_image() else { continue };
            let store = open_mem(&image, small());
            check_recovered(&store, &acknowledged, failed.as_slice());
            // The recovered store goes on by the same rules.
            let mut states: HashMap<_, _> =
                store.branches(BranchFilter::All).into_iter().map(|i| (i.branch, i.state)).collect();
            assert!(run_script(&store, &ops, &mut states).is_none());
        }
    }
}

#[test]
fn concurrent_verdicts_survive_a_crash() {
    let mut rng = SmallRng::seed_from_u64(7);
    for _ in 0..8 {
        let storage = MemStorage::new();
        let store = Arc::new(open_mem(&storage, small()));
        storage.crash_after_syncs(storage.sync_count() + rng.random_range(5..80));
        // Each thread owns its branches, so each has its own exact model.
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let ops = script(t, 8, 60, t + 1);
                    let mut acknowledged = HashMap::new();
                    let failed = run_script(&store, &ops, &mut acknowledged);
                    (acknowledged, failed)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        drop(store);
        let image = storage.crash_image().unwrap_or_else(|| storage.crash());
        let store = open_mem(&image, small());
        let acknowledged: HashMap<_, _> = results.iter().flat_map(|(a, _)| a.clone()).collect();
        let failed: Vec<Op> = results.iter().filter_map(|(_, f)| *f).collect();
        check_recovered(&store, &acknowledged, &failed);
    }
}

#[test]
fn damaged_files_never_panic_the_open() {
    let storage = MemStorage::new();
    {
        let store = open_mem(&storage, small());
        for tx in 0..40 {
            let b = branch(tx, 0);
            store.prepare(b, ok(b)).unwrap();
            if tx % 3 == 0 {
                store.commit(b, applied).unwrap();
            }
        }
    }
    let files = storage.file_names();
    let mut rng = SmallRng::seed_from_u64(3);
    for name in files.iter().filter(|n| !n.ends_with("LOCK")) {
        let len = storage.read_durable(name).map_or(0, |bytes| bytes.len() as u64);
        for _ in 0..16 {
            let damaged = storage.crash();
            let bit = rng.random_range(0..(len * 8).clamp(1, 8 * 4096));
            damaged.flip_bit(name, bit);
            // Either a clean recovery (the damage hit unused bytes or a
            // discarded tail) or a typed error; never a panic.
            match small().open_storage(Arc::new(damaged)) {
                Ok(store) => {
                    let _ = store.prepared();
                }
                Err(error) => assert!(matches!(error, StoreError::Corrupt { .. } | StoreError::Log { .. }), "{error}"),
            }
        }
    }
}
