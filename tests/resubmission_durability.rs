//! "Returned" means durable on every path: a resubmission of an id racing
//! its first execution, and `outcome_of`, answer only once the decision's
//! record is durable — never while the disk withholds the sync. A seeded
//! run then drives several threads resubmitting the same ids while syncs are
//! held and released at random; every outcome any of them was given is in a
//! crash image taken the moment it was given.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Bank;
use dtc::testing::MemStorage;
use dtc::{Coordinator, Durability, Error, Outcome, TxId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Releases held syncs when dropped, so a failing assertion never leaves
/// the other threads blocked on the disk.
struct Released<'a>(&'a MemStorage);

impl Drop for Released<'_> {
    fn drop(&mut self) {
        self.0.release_syncs();
    }
}

fn durable(bank: &Bank, mem: &MemStorage) -> Coordinator {
    bank.builder()
        .storage_for_testing(mem.clone())
        .durability(Durability::Sync)
        .segment_size_bytes(64 << 10)
        .open()
        .unwrap()
}

/// Submits until the id has an outcome (`TxInProgress` while the first
/// execution has not decided yet).
fn submit_until_answered(dtc: &Coordinator, tx: TxId, legs: &[dtc::Transfer<'_>]) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match dtc.execute_as(tx, legs) {
            Ok(outcome) => return outcome,
            Err(Error::TxInProgress { .. }) if Instant::now() < deadline => std::thread::yield_now(),
            Err(e) => panic!("{tx}: {e}"),
        }
    }
}

#[test]
fn a_racing_resubmission_waits_until_the_decision_is_durable() {
    let bank = Bank::new(2, 4, 100);
    let mem = MemStorage::new();
    let dtc = durable(&bank, &mem);
    mem.hold_syncs();
    let tx = dtc.new_tx_id();
    let (done, answers) = mpsc::channel();
    std::thread::scope(|scope| {
        let _release = Released(&mem);
        for _ in 0..3 {
            let (dtc, bank, done) = (&dtc, &bank, done.clone());
            scope.spawn(move || {
                let legs = [bank.leg(0, 1, 7)];
                done.send(submit_until_answered(dtc, tx, &legs)).unwrap();
            });
        }
        // Every submitter (the first, and the resubmissions racing it) must
        // still be waiting: the decision is not durable.
        assert!(
            answers.recv_timeout(Duration::from_millis(400)).is_err(),
            "an outcome was returned before it was durable"
        );
        let (sent, probed) = mpsc::channel();
        let dtc_ref = &dtc;
        scope.spawn(move || sent.send(dtc_ref.outcome_of(tx)).unwrap());
        let early = probed.recv_timeout(Duration::from_millis(200)).ok();
        assert!(!matches!(early, Some(Ok(Some(_)))), "outcome_of showed an outcome that is not durable: {early:?}");
        // A crash now keeps nothing of it.
        let image = mem.crash();
        mem.release_syncs();
        for _ in 0..3 {
            assert_eq!(answers.recv_timeout(Duration::from_secs(10)).unwrap(), Outcome::Committed);
        }
        if early.is_none() {
            let late = probed.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
            assert!(matches!(late, None | Some(Outcome::Committed)), "{late:?}");
        }
        let lost = Bank::new(2, 4, 100);
        let after_crash = durable(&lost, &image);
        assert_eq!(after_crash.outcome_of(tx).unwrap(), None, "the crash image was taken before the sync");
        after_crash.shutdown().unwrap();
    });
    assert_eq!(dtc.outcome_of(tx).unwrap(), Some(Outcome::Committed));
    dtc.shutdown().unwrap();
}

#[test]
fn seeded_resubmission_races_never_see_a_non_durable_outcome() {
    let started = Instant::now();
    for seed in 0..6u64 {
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
        let bank = Bank::new(2, 8, 1_000);
        let mem = MemStorage::new();
        let dtc = durable(&bank, &mem);
        let mut rng = SmallRng::seed_from_u64(seed);
        let ids: Vec<TxId> = (0..40).map(|_| dtc.new_tx_id()).collect();
        let legs: Vec<(usize, usize, u64)> =
            ids.iter().map(|_| (rng.random_range(0..4), 4 + rng.random_range(0..4), rng.random_range(1..50))).collect();
        let (given, outcomes) = mpsc::channel();
        std::thread::scope(|scope| {
            let _release = Released(&mem);
            for t in 0..4u64 {
                let (dtc, bank, ids, legs, given, mem) = (&dtc, &bank, &ids, &legs, given.clone(), &mem);
                scope.spawn(move || {
                    let mut rng = SmallRng::seed_from_u64(seed << 8 | t);
                    for _ in 0..60 {
                        let i = rng.random_range(0..ids.len());
                        let transfer = bank.transfers(&legs[i..=i]);
                        let outcome = submit_until_answered(dtc, ids[i], &transfer);
                        // The moment it was given: it must already be durable.
                        given.send((ids[i], outcome, mem.crash())).unwrap();
                    }
                });
            }
            drop(given);
            // The disk withholds and grants syncs at random meanwhile.
            let mut rng = SmallRng::seed_from_u64(!seed);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && Instant::now() - started < Duration::from_secs(45) {
                mem.hold_syncs();
                std::thread::sleep(Duration::from_micros(rng.random_range(50..3_000)));
                mem.release_syncs();
                std::thread::sleep(Duration::from_micros(rng.random_range(50..1_000)));
                if Instant::now() - started > Duration::from_secs(1) && rng.random_bool(0.01) {
                    break;
                }
            }
            mem.release_syncs();
        });
        let mut checked = 0;
        for (tx, outcome, image) in outcomes.try_iter() {
            let reopened = Bank::new(2, 8, 1_000);
            let dtc = durable(&reopened, &image);
            assert_eq!(
                dtc.outcome_of(tx).unwrap(),
                Some(outcome.clone()),
                "seed {seed}: {tx} given {outcome:?} before durable"
            );
            dtc.shutdown().unwrap();
            checked += 1;
            if checked >= 40 {
                break; // each reopen recovers a whole image: bound the work
            }
        }
        assert!(checked > 0, "seed {seed}: nothing was answered");
        dtc.shutdown().unwrap();
    }
}
