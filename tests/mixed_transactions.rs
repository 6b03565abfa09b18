//! Mixed transactions — transfer legs between ledgers plus payload branches
//! to other participants — are atomic across all of them, under refusals,
//! panics, stalls past the call timeout and duplicate deliveries, in memory
//! and with a log. Lock keys make a read-modify-write participant that
//! cannot isolate itself serializable.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::durable::Shelf;
use dtc::testing::MemStorage;
use dtc::{
    Branch, BranchId, Builder, Coordinator, Durability, Failure, Ledger, Outcome, Participant, ParticipantKind,
    Refusal, Transaction, Transfer, TxId, Work,
    fault::{FaultPlan, Faulty},
};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: usize = 6;
const BALANCE: i64 = 5_000;
const ITEMS: [&str; 3] = ["lamp", "desk", "sofa"];

/// Named counters read at prepare and written at commit: without isolation
/// from the coordinator, two concurrent increments would lose one.
#[derive(Clone, Default)]
struct Counters(Arc<Mutex<HashMap<String, u64>>>);

struct CounterParticipant(Counters);

impl Participant for CounterParticipant {
    /// (counter, value read at prepare).
    type Prepared = (String, u64);

    fn kind(&self) -> ParticipantKind {
        ParticipantKind::Volatile
    }

    fn prepare(&mut self, _b: BranchId, work: Work<'_>) -> Result<(String, u64), Refusal> {
        let name = String::from_utf8(work.payload().to_vec()).map_err(|_| Refusal::new("bad_name", "not UTF-8"))?;
        let read = self.0.0.lock().get(&name).copied().unwrap_or(0);
        Ok((name, read))
    }

    fn commit(&mut self, _b: BranchId, (name, read): &(String, u64)) -> Result<(), Failure> {
        self.0.0.lock().insert(name.clone(), read + 1);
        Ok(())
    }

    fn rollback(&mut self, _b: BranchId, _p: Option<&(String, u64)>) -> Result<(), Failure> {
        Ok(())
    }

    fn is_nonblocking(&self) -> bool {
        true
    }
}

struct World {
    ledgers: Vec<Ledger>,
    shelf: Shelf,
    counters: Counters,
}

impl World {
    fn new() -> World {
        let ledgers: Vec<Ledger> = (0..2).map(|_| Ledger::new()).collect();
        for i in 0..ACCOUNTS {
            ledgers[i % 2].create_account(&account(i), BALANCE).unwrap();
        }
        World { ledgers, shelf: Shelf::new(&ITEMS, 1_000_000), counters: Counters::default() }
    }

    /// bank-0 plain, bank-1 and the shelf with faults, counters plain;
    /// every phase request delivered 1 to 3 times.
    fn builder(&self, seed: u64) -> Builder {
        let faults = FaultPlan::new(seed).refuse(0.02).panic(0.01).stall(0.01, Duration::from_millis(40));
        Coordinator::builder()
            .service("bank-0", self.ledgers[0].clone())
            .service("bank-1", Faulty::new(self.ledgers[1].clone(), faults))
            .service(
                "shelf",
                Faulty::new(self.shelf.participant(ParticipantKind::Durable), FaultPlan { seed: seed + 1, ..faults }),
            )
            .service("counters", CounterParticipant(self.counters.clone()))
            .call_timeout(Duration::from_millis(20))
            .retry(dtc::RetryPolicy::new(Duration::from_micros(200), Duration::from_millis(2), 100_000))
            .redeliver_for_testing(seed, 3)
    }
}

fn account(i: usize) -> String {
    format!("acct-{i}")
}

fn bank(i: usize) -> &'static str {
    ["bank-0", "bank-1"][i % 2]
}

/// One transaction's content.
#[derive(Debug, Clone)]
struct Mixed {
    tx: TxId,
    transfer: Option<(usize, usize, u64)>,
    item: Option<&'static str>,
    counter: &'static str,
}

impl Mixed {
    fn run(&self, dtc: &Coordinator) -> dtc::Result<Outcome> {
        let names = self.transfer.map(|(f, t, _)| (account(f), account(t)));
        let mut tx = Transaction::new();
        if let (Some((from, to, amount)), Some((f, t))) = (self.transfer, &names) {
            tx = tx.transfer(Transfer::new(bank(from), f, bank(to), t, amount));
        }
        if let Some(item) = self.item {
            tx = tx.branch(Branch::new("shelf", item.as_bytes()));
        }
        let tx = tx.branch(Branch::new("counters", self.counter.as_bytes()).lock(self.counter));
        dtc.run_as(self.tx, &tx)
    }

    fn shelf_branch(&self) -> Option<BranchId> {
        self.item?;
        let ledgers = match self.transfer {
            None => 0,
            Some((f, t, _)) if f % 2 == t % 2 => 1,
            Some(_) => 2,
        };
        Some(BranchId { tx: self.tx, index: ledgers })
    }
}

fn random_mixed(rng: &mut SmallRng, tx: TxId) -> Mixed {
    let transfer = rng.random_bool(0.7).then(|| {
        let from = rng.random_range(0..ACCOUNTS);
        (from, (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS, rng.random_range(1..=300))
    });
    Mixed {
        tx,
        transfer,
        item: rng.random_bool(0.7).then(|| ITEMS[rng.random_range(0..ITEMS.len())]),
        counter: ["hits", "misses"][rng.random_range(0..2)],
    }
}

/// Runs `per_thread` mixed transactions on 4 threads and checks that every
/// participant agrees with every outcome.
fn run_and_check(dtc: &Coordinator, world: &World, seed: u64, per_thread: usize) {
    let results: Vec<(Mixed, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed << 4 | t);
                    (0..per_thread)
                        .map(|_| {
                            let m = random_mixed(&mut rng, dtc.new_tx_id());
                            let outcome = m.run(dtc).expect("valid transaction");
                            (m, outcome)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    // Pending commits are redelivered until applied: wait for them.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dtc.unresolved_count() > 0 || !world.shelf.0.lock().prepared.is_empty() {
        assert!(std::time::Instant::now() < deadline, "seed {seed}: commits never finished");
        std::thread::sleep(Duration::from_millis(5));
    }
    dtc.audit().unwrap(); // queued behind every commit and rollback
    let mut model = vec![BALANCE; ACCOUNTS];
    let mut increments: HashMap<&str, u64> = HashMap::new();
    let (mut committed, mut aborted) = (0, 0);
    let shelf = world.shelf.0.lock();
    for (m, outcome) in &results {
        let is_committed = outcome.is_committed();
        if is_committed {
            committed += 1;
            if let Some((from, to, amount)) = m.transfer {
                model[from] -= amount as i64;
                model[to] += amount as i64;
            }
            *increments.entry(m.counter).or_default() += 1;
        } else {
            aborted += 1;
        }
        if let Some(branch) = m.shelf_branch() {
            assert_eq!(shelf.sold.contains_key(&branch), is_committed, "seed {seed}: {m:?} {outcome:?} vs the shelf");
        }
        assert_eq!(dtc.outcome_of(m.tx).unwrap().map(|o| o.is_committed()), Some(is_committed), "seed {seed}");
    }
    assert!(shelf.violations.is_empty(), "seed {seed}: {:?}", shelf.violations);
    drop(shelf);
    let balances: Vec<i64> = (0..ACCOUNTS).map(|i| world.ledgers[i % 2].balance(&account(i)).unwrap()).collect();
    assert_eq!(balances, model, "seed {seed}: ledgers differ from the committed transactions");
    // Serializable: no increment lost, though prepare reads and commit writes.
    let counters = world.counters.0.lock().clone();
    for name in ["hits", "misses"] {
        assert_eq!(
            counters.get(name).copied().unwrap_or(0),
            increments.get(name).copied().unwrap_or(0),
            "seed {seed}: counter {name} lost increments"
        );
    }
    assert!(
        committed > 0 && aborted > 0,
        "seed {seed}: {committed} committed, {aborted} aborted: faults not exercised?"
    );
    let m = dtc.metrics();
    assert_eq!(m.protocol_violations, 0, "seed {seed}");
}

#[test]
fn mixed_transactions_are_atomic_in_memory_under_faults_and_duplicates() {
    common::quiet_injected_panics();
    for seed in 1..=3 {
        let world = World::new();
        let dtc = world.builder(seed).open().unwrap();
        run_and_check(&dtc, &world, seed, 150);
        dtc.shutdown().unwrap();
    }
}

#[test]
fn mixed_transactions_are_atomic_with_a_log_under_faults_and_duplicates() {
    common::quiet_injected_panics();
    for seed in 11..=12 {
        let world = World::new();
        let dtc = world
            .builder(seed)
            .storage_for_testing(MemStorage::new())
            .durability(Durability::Sync)
            .segment_size_bytes(64 << 10)
            .open()
            .unwrap();
        run_and_check(&dtc, &world, seed, 120);
        dtc.shutdown().unwrap();
    }
}

#[test]
fn payload_branches_are_validated_before_anything_runs() {
    let world = World::new();
    let dtc = world.builder(5).max_payload_bytes(16).max_branches(3).open().unwrap();
    let cases: Vec<(Transaction<'_>, &str)> = vec![
        (Transaction::new(), "empty_transaction"),
        (Transaction::new().branch(Branch::new("nowhere", &b"x"[..])), "unknown_service"),
        (Transaction::new().branch(Branch::new("counters", vec![b'x'; 17])), "payload_too_large"),
        (Transaction::new().branch(Branch::new("counters", &b"x"[..]).lock("")), "invalid_lock_key"),
        (Transaction::new().branch(Branch::new("counters", &b"x"[..]).lock("k".repeat(256))), "invalid_lock_key"),
        ((0..4).fold(Transaction::new(), |t, _| t.branch(Branch::new("counters", &b"x"[..]))), "too_many_branches"),
    ];
    for (tx, code) in cases {
        let id = dtc.new_tx_id();
        let err = dtc.run_as(id, &tx).unwrap_err();
        assert_eq!(err.code(), code, "{tx:?}: {err}");
        assert_eq!(dtc.outcome_of(id).unwrap(), None, "{code}: recorded an outcome");
    }
    assert!(world.counters.0.lock().is_empty(), "a refused transaction reached a participant");
    assert!(matches!(
        dtc.run(&Transaction::new().branch(Branch::new("bank-0", &b"{}"[..]))).unwrap(),
        Outcome::Aborted(dtc::AbortReason::Refused { code, .. }) if code == "payload_unsupported"
    ));
    let big = dtc::Branch::json("counters", &vec![0u8; 40]).unwrap();
    assert!(big.payload().len() > 16);
    assert_eq!(dtc.run(&Transaction::new().branch(big)).unwrap_err().code(), "payload_too_large");
}
