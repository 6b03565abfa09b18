//! Participants with their own durable storage survive coordinator crashes
//! atomically: a transaction of transfer legs between two ledgers plus one
//! branch on a `Durable` shelf (it lists its prepared branches after a
//! restart) and one on an `External` shelf (it cannot; the coordinator logs
//! its branches before they prepare) is cut by a crash of the coordinator's
//! storage at every sync boundary, and at random moments while threads run.
//! After recovery: every branch of every transaction agrees with its recorded
//! outcome (sold on both shelves iff committed, nothing left prepared), every
//! acknowledged outcome stands, and the ledgers hold exactly the money the
//! committed transactions moved.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::durable::Shelf;
use dtc::testing::MemStorage;
use dtc::{Branch, BranchId, Coordinator, Durability, Ledger, Outcome, ParticipantKind, Transaction, Transfer, TxId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ITEMS: [&str; 3] = ["lamp", "desk", "sofa"];
const CAPACITY: u32 = 40;
const ACCOUNTS: usize = 6;
const BALANCE: i64 = 1_000;

/// One planned transaction: an optional transfer (from, to, amount) between
/// accounts `acct-i` (on `bank-{i % 2}`) and the items reserved on each shelf.
#[derive(Debug, Clone)]
struct Planned {
    tx: TxId,
    transfer: Option<(usize, usize, u64)>,
    durable_item: &'static str,
    external_item: &'static str,
}

impl Planned {
    /// Branch indices of the two shelf branches (ledger branches come first,
    /// one per ledger service the transfer touches).
    fn shelf_branches(&self) -> (BranchId, BranchId) {
        let ledgers = match self.transfer {
            None => 0,
            Some((from, to, _)) if from % 2 == to % 2 => 1,
            Some(_) => 2,
        };
        (BranchId { tx: self.tx, index: ledgers }, BranchId { tx: self.tx, index: ledgers + 1 })
    }
}

fn plan(seed: u64, count: usize) -> Vec<Planned> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let transfer = rng.random_bool(0.8).then(|| {
                let from = rng.random_range(0..ACCOUNTS);
                let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                (from, to, rng.random_range(1..=400))
            });
            Planned {
                tx: TxId::from_u128((u128::from(dtc_now_ns()) << 64) | (u128::from(seed) << 20) | i as u128),
                transfer,
                durable_item: ITEMS[rng.random_range(0..ITEMS.len())],
                external_item: ITEMS[rng.random_range(0..ITEMS.len())],
            }
        })
        .collect()
}

fn dtc_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn account(i: usize) -> String {
    format!("acct-{i}")
}

fn bank(i: usize) -> &'static str {
    ["bank-0", "bank-1"][i % 2]
}

/// The world outside the coordinator's process: the shelves' storage.
struct World {
    durable: Shelf,
    external: Shelf,
}

impl World {
    fn new() -> Self {
        World { durable: Shelf::new(&ITEMS, CAPACITY), external: Shelf::new(&ITEMS, CAPACITY) }
    }
}

/// A coordinator on `mem` with fresh ledgers (a restarted process) and the
/// world's shelves.
fn open(mem: &MemStorage, world: &World) -> dtc::Result<(Coordinator, Vec<Ledger>)> {
    let ledgers: Vec<Ledger> = (0..2).map(|_| Ledger::new()).collect();
    for i in 0..ACCOUNTS {
        ledgers[i % 2].create_account(&account(i), BALANCE).expect("create");
    }
    let dtc = Coordinator::builder()
        .service("bank-0", ledgers[0].clone())
        .service("bank-1", ledgers[1].clone())
        .service("shelf-d", world.durable.participant(ParticipantKind::Durable))
        .service("shelf-x", world.external.participant(ParticipantKind::External))
        .storage_for_testing(mem.clone())
        .durability(Durability::Sync)
        .segment_size_bytes(16 << 10)
        .call_timeout(Duration::from_secs(2))
        .open()?;
    Ok((dtc, ledgers))
}

fn run(dtc: &Coordinator, p: &Planned) -> dtc::Result<Outcome> {
    let (from_acct, to_acct) = p.transfer.map(|(f, t, _)| (account(f), account(t))).unwrap_or_default();
    let mut tx = Transaction::new();
    if let Some((from, to, amount)) = p.transfer {
        tx = tx.transfer(Transfer::new(bank(from), &from_acct, bank(to), &to_acct, amount));
    }
    let tx = tx
        .branch(Branch::new("shelf-d", p.durable_item.as_bytes()).lock(p.durable_item))
        .branch(Branch::new("shelf-x", p.external_item.as_bytes()));
    dtc.run_as(p.tx, &tx)
}

/// Runs `plans` on `threads` threads until done or the coordinator fails;
/// returns the acknowledged outcomes.
fn workload(dtc: &Coordinator, plans: &[Planned], threads: usize) -> HashMap<TxId, Outcome> {
    let chunks: Vec<&[Planned]> = plans.chunks(plans.len().div_ceil(threads).max(1)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    for p in chunk {
                        match run(dtc, p) {
                            Ok(outcome) => acked.push((p.tx, outcome)),
                            Err(_) => break, // the log died: the process is "crashed"
                        }
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker thread")).collect()
    })
}

/// Recovers from `image` and checks every invariant; returns how many
/// transactions are recorded as committed.
fn recover_and_check(
    image: &MemStorage,
    world: &World,
    plans: &[Planned],
    acked: &HashMap<TxId, Outcome>,
    label: &str,
) -> usize {
    let (dtc, ledgers) = open(image, world).unwrap_or_else(|e| panic!("{label}: recovery failed: {e}"));
    // Recovery hands commits and rollbacks to the shelves' workers; wait.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(world.durable.0.lock().prepared.is_empty()
        && world.external.0.lock().prepared.is_empty()
        && dtc.unresolved_count() == 0)
    {
        assert!(Instant::now() < deadline, "{label}: recovery did not finish: {} unresolved", dtc.unresolved_count());
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut model: Vec<i64> = vec![BALANCE; ACCOUNTS];
    let mut committed = 0;
    for p in plans {
        let recorded = dtc.outcome_of(p.tx).expect("outcome_of");
        let is_committed = recorded.as_ref().is_some_and(Outcome::is_committed);
        if let Some(outcome) = acked.get(&p.tx) {
            assert_eq!(
                recorded.as_ref().map(Outcome::is_committed),
                Some(outcome.is_committed()),
                "{label}: {} was acknowledged {outcome:?} but is recorded {recorded:?}",
                p.tx
            );
        }
        let (d, x) = p.shelf_branches();
        let sold_d = world.durable.0.lock().sold.contains_key(&d);
        let sold_x = world.external.0.lock().sold.contains_key(&x);
        assert_eq!(
            (sold_d, sold_x),
            (is_committed, is_committed),
            "{label}: {} recorded {recorded:?} but durable shelf sold={sold_d}, external shelf sold={sold_x}",
            p.tx
        );
        if is_committed {
            committed += 1;
            if let Some((from, to, amount)) = p.transfer {
                model[from] -= amount as i64;
                model[to] += amount as i64;
            }
        }
    }
    let balances: Vec<i64> = (0..ACCOUNTS).map(|i| ledgers[i % 2].balance(&account(i)).unwrap()).collect();
    assert_eq!(balances, model, "{label}: ledgers differ from the committed transactions");
    assert!(balances.iter().all(|&b| b >= 0), "{label}: negative balance");
    for shelf in [&world.durable, &world.external] {
        let s = shelf.0.lock();
        assert!(s.violations.is_empty(), "{label}: contract broken: {:?}", s.violations);
        assert!(s.within_capacity(), "{label}: over capacity");
    }
    let metrics = dtc.metrics();
    assert_eq!(metrics.parked, 0, "{label}: parked calls");
    assert_eq!(metrics.protocol_violations, 0, "{label}: protocol violations");
    dtc.shutdown().unwrap();
    committed
}

/// One run cut by a crash just before durability point `n + 1` (`None`: no
/// crash; the storage is crashed after the workload instead).
fn crash_run(seed: u64, plans: &[Planned], threads: usize, n: Option<u64>) -> (MemStorage, u64, usize) {
    let world = World::new();
    let mem = MemStorage::new();
    if let Some(n) = n {
        mem.crash_after_syncs(n);
    }
    let acked = match open(&mem, &world) {
        Ok((dtc, _ledgers)) => {
            let acked = workload(&dtc, plans, threads);
            // The process is gone: nothing it does from here may reach storage.
            let _ = dtc.shutdown();
            acked
        }
        Err(_) => HashMap::new(), // crashed while opening
    };
    let syncs = mem.sync_count();
    let image = mem.crash_image().unwrap_or_else(|| mem.crash());
    let label = format!("seed {seed}, crash after {n:?} syncs");
    let committed = recover_and_check(&image, &world, plans, &acked, &label);
    (image, syncs, committed)
}

#[test]
fn a_crash_at_every_sync_boundary_keeps_every_branch_atomic() {
    let plans = plan(1, 24);
    let (_, total_syncs, committed) = crash_run(1, &plans, 1, None);
    assert!(committed > 10, "the workload should mostly commit: {committed}");
    let mut cut = 0;
    for n in 0..=total_syncs {
        crash_run(1, &plans, 1, Some(n));
        cut += 1;
    }
    eprintln!("{cut} crash points over {total_syncs} syncs, {committed} of {} committed without a crash", plans.len());
}

#[test]
fn crashes_at_random_moments_under_threads_keep_every_branch_atomic() {
    let started = Instant::now();
    let mut runs = 0;
    for seed in 0..12u64 {
        if started.elapsed() > Duration::from_secs(40) {
            break; // bounded in time on a slow machine; every seed run so far checked
        }
        let plans = plan(100 + seed, 120);
        let (_, total_syncs, _) = crash_run(seed, &plans, 4, None);
        let mut rng = SmallRng::seed_from_u64(seed);
        for _ in 0..3 {
            crash_run(seed, &plans, 4, Some(rng.random_range(0..=total_syncs)));
            runs += 1;
        }
    }
    assert!(runs >= 3, "too few runs: {runs}");
}

#[test]
fn a_crash_after_recovery_began_is_recovered_again() {
    // Crash the run, then crash the recovery itself at every sync boundary:
    // recovery repeats from the log and still converges.
    let plans = plan(7, 16);
    let world = World::new();
    let mem = MemStorage::new();
    mem.crash_after_syncs(30);
    let acked = match open(&mem, &world) {
        Ok((dtc, _l)) => {
            let acked = workload(&dtc, &plans, 2);
            let _ = dtc.shutdown();
            acked
        }
        Err(_) => HashMap::new(),
    };
    let image = mem.crash_image().unwrap_or_else(|| mem.crash());
    for n in 0..12 {
        let second = image.crash();
        second.crash_after_syncs(n);
        if let Ok((dtc, _l)) = open(&second, &world) {
            let _ = dtc.shutdown();
        }
        let again = second.crash_image().unwrap_or_else(|| second.crash());
        recover_and_check(&again, &world, &plans, &acked, &format!("recovery crashed after {n} syncs"));
    }
}
