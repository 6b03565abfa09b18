//! `execute_batch`: each transaction succeeds or fails on its own, exactly as
//! if submitted one by one in order, on the direct path (plain ledgers) and
//! the participant path (wrapped ledgers), in memory and durable.

mod common;

use common::{Bank, random_legs, seed};
use dtc::testing::MemStorage;
use dtc::{
    Durability, Error, Outcome,
    fault::{FaultPlan, Faulty},
};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn kinds(outcomes: &[Result<Outcome, Error>]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(Outcome::Committed) => "committed".to_string(),
            Ok(Outcome::Aborted(reason)) => format!("aborted:{}", reason.code()),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("error:{}", e.code()),
        })
        .collect()
}

fn compare(wrap: bool, seed: u64) {
    let batched = Bank::new(4, 40, 20);
    let single = Bank::new(4, 40, 20);
    let wrapper = |_: usize, ledger: dtc::Ledger| -> common::Boxed {
        if wrap { Box::new(Faulty::new(ledger, FaultPlan::new(1))) } else { Box::new(ledger) }
    };
    let a = batched.builder_with(wrapper).open().unwrap();
    let b = single.builder_with(wrapper).open().unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    for round in 0..50 {
        let txs: Vec<Vec<common::Leg>> = (0..40).map(|_| random_legs(&mut rng, 40, 3, 15)).collect();
        let transfers_a: Vec<Vec<dtc::Transfer<'_>>> = txs.iter().map(|l| batched.transfers(l)).collect();
        let refs: Vec<&[dtc::Transfer<'_>]> = transfers_a.iter().map(Vec::as_slice).collect();
        let got = a.execute_batch(&refs).unwrap();
        let want: Vec<Result<Outcome, Error>> = txs.iter().map(|l| b.execute(&single.transfers(l))).collect();
        assert_eq!(kinds(&got), kinds(&want), "seed {seed}, round {round}");
        a.audit().unwrap();
        b.audit().unwrap();
        assert_eq!(batched.balances(), single.balances(), "seed {seed}, round {round}");
    }
    batched.check_audit(&a, "batched");
    assert!(a.metrics().committed > 0 && a.metrics().aborted_total() > 0, "both outcomes exercised");
}

/// Plain ledgers take the direct path; the outcomes equal one-by-one submission.
#[test]
fn direct_batches_match_one_by_one() {
    compare(false, seed(0xBA7C_0001));
}

/// Wrapped ledgers take the participant path; the outcomes equal one-by-one submission.
#[test]
fn participant_batches_match_one_by_one() {
    compare(true, seed(0xBA7C_0002));
}

/// An invalid transaction gets its own error; the others of the batch still run.
#[test]
fn invalid_members_fail_alone() {
    let bank = Bank::new(2, 4, 100);
    let dtc = bank.builder().open().unwrap();
    let good = [bank.leg(0, 1, 5)];
    let zero = [bank.leg(0, 1, 0)];
    let unknown = [dtc::Transfer::new("svc-9", "acct-0", "svc-0", "acct-1", 1)];
    let out = dtc.execute_batch(&[&good[..], &zero[..], &unknown[..], &good[..]]).unwrap();
    assert_eq!(kinds(&out), ["committed", "error:non_positive_amount", "error:unknown_service", "committed"]);
    assert_eq!(bank.balances()[0], 90);
    let empty: Vec<&[dtc::Transfer<'_>]> = Vec::new();
    assert!(dtc.execute_batch(&empty).unwrap().is_empty());
}

/// Durable batches: every acknowledged batch survives a crash, whole.
#[test]
fn durable_batches_survive_a_crash() {
    let mem = MemStorage::new();
    let bank = Bank::new(3, 30, 50);
    let dtc = bank.builder().durability(Durability::Sync).storage_for_testing(mem.clone()).open().unwrap();
    let mut rng = SmallRng::seed_from_u64(seed(0xBA7C_0003));
    for _ in 0..20 {
        let txs: Vec<Vec<common::Leg>> = (0..25).map(|_| random_legs(&mut rng, 30, 2, 20)).collect();
        let transfers: Vec<Vec<dtc::Transfer<'_>>> = txs.iter().map(|l| bank.transfers(l)).collect();
        let refs: Vec<&[dtc::Transfer<'_>]> = transfers.iter().map(Vec::as_slice).collect();
        dtc.execute_batch(&refs).unwrap();
    }
    let acknowledged = bank.balances();
    // Crash: only what was synced survives; every batch above was acknowledged.
    let crashed = mem.crash();
    drop(dtc);
    let fresh = Bank::new(3, 30, 0);
    let reopened = fresh.builder().durability(Durability::Sync).storage_for_testing(crashed).open().unwrap();
    reopened.audit().unwrap();
    assert_eq!(fresh.balances(), acknowledged, "recovered state differs from the acknowledged one");
}
