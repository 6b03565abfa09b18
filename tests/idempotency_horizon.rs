//! Exact idempotency for the whole horizon: a caller-chosen id resubmitted
//! after hundreds of thousands of other transactions (millions in the
//! ignored long version) returns its recorded outcome, also after a restart;
//! an id older than the horizon, or dated in the future, is refused with its
//! own error and never runs; the memory kept per remembered id stays bounded
//! while the archive on disk takes them.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Bank;
use dtc::{AbortReason, Coordinator, Durability, Error, Outcome, TxId};

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// An id dated `ns` with a per-test salt.
fn id_at(ns: u64, n: u64) -> TxId {
    TxId::from_u128((u128::from(ns) << 64) | u128::from(n))
}

fn durable(bank: &Bank, dir: &std::path::Path) -> dtc::Builder {
    bank.builder()
        .durability(Durability::Sync)
        .dir(dir)
        .segment_size_bytes(1 << 20)
        .checkpoint_every_bytes(256 << 10)
        .recent_ids(4_096)
}

/// An id with its legs (from, to, amount) and the outcome it was given.
type Kept = (TxId, Vec<(usize, usize, u64)>, Outcome);

/// Runs `count` tracked transfers on `threads` threads; returns the ids with
/// their outcomes (every 97th id kept, to resubmit later).
fn flood(dtc: &Coordinator, bank: &Bank, count: u64, threads: u64, salt: u64) -> Vec<Kept> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut kept = Vec::new();
                    for i in (t..count).step_by(threads as usize) {
                        let legs = vec![((i % 8) as usize, ((i + 3) % 8) as usize, 1 + i % 5)];
                        let tx = id_at(now_ns(), (salt << 40) | i);
                        let outcome = dtc.execute_as(tx, &bank.transfers(&legs)).expect("execute_as");
                        if i % 97 == 0 {
                            kept.push((tx, legs, outcome));
                        }
                    }
                    kept
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

fn resubmitted_after(count: u64) {
    let bank = Bank::new(2, 8, 1_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let dtc = durable(&bank, tmp.path()).open().unwrap();
    // One id refused for funds, so aborts are remembered too.
    let poor = id_at(now_ns(), 1);
    let too_much = [bank.leg(0, 1, 10_000_000)];
    let refused = dtc.execute_as(poor, &too_much).unwrap();
    assert!(matches!(refused, Outcome::Aborted(AbortReason::InsufficientFunds { .. })));
    let started = Instant::now();
    let kept = flood(&dtc, &bank, count, 8, 7);
    let elapsed = started.elapsed();
    let stats = dtc.idempotency_stats();
    eprintln!(
        "{count} tracked transactions in {elapsed:?}: {} in memory, {} archived in {} runs, {:.1} bytes/id on disk, \
         {} bytes of archive metadata in memory ({:.4} bytes/id)",
        stats.in_memory,
        stats.archived,
        stats.archive_runs,
        stats.archive_bytes_on_disk as f64 / stats.archived.max(1) as f64,
        stats.archive_bytes_in_memory,
        stats.archive_bytes_in_memory as f64 / stats.archived.max(1) as f64,
    );
    assert!(stats.archived > 0, "nothing moved to the archive: {stats:?}");
    // The table is spilled whenever it passes its bound (4 096) and at every
    // checkpoint; between two polls of the checkpointer a few thousand more
    // may finish.
    assert!(stats.in_memory < 4_096 * 16, "the in-memory table is not bounded: {stats:?}");
    assert!(stats.archive_bytes_in_memory < 2 << 20, "archive metadata is not bounded: {stats:?}");
    let check = |dtc: &Coordinator, when: &str| {
        assert_eq!(dtc.execute_as(poor, &too_much).unwrap(), refused, "{when}: the refused id");
        for (tx, legs, outcome) in &kept {
            assert_eq!(&dtc.execute_as(*tx, &bank.transfers(legs)).unwrap(), outcome, "{when}: {tx}");
            let other = [bank.leg(5, 6, 1)];
            assert!(matches!(dtc.execute_as(*tx, &other), Err(Error::TxIdReused { .. })), "{when}: {tx} reused");
            assert_eq!(dtc.outcome_of(*tx).unwrap().as_ref(), Some(outcome), "{when}: outcome_of {tx}");
        }
    };
    let before = bank.balances();
    check(&dtc, "after the flood");
    assert_eq!(bank.balances(), before, "a resubmission ran again");
    dtc.shutdown().unwrap();
    drop(dtc); // releases the directory
    // After a restart, from the checkpoint, the log and the archive.
    let again = Bank::new(2, 8, 1_000_000);
    let dtc = durable(&again, tmp.path()).open().unwrap();
    let restored = again.balances();
    check(&dtc, "after a restart");
    assert_eq!(again.balances(), restored, "a resubmission ran again after the restart");
    dtc.shutdown().unwrap();
}

#[test]
fn an_id_resubmitted_after_many_others_returns_its_outcome() {
    resubmitted_after(60_000);
}

#[test]
#[ignore = "long: two million transactions (run with --ignored)"]
fn an_id_resubmitted_after_millions_of_others_returns_its_outcome() {
    resubmitted_after(2_000_000);
}

#[test]
fn an_id_older_than_the_horizon_is_refused_and_never_runs() {
    let bank = Bank::new(2, 8, 100);
    let tmp = tempfile::tempdir().unwrap();
    let horizon = Duration::from_millis(1_500);
    let dtc = durable(&bank, tmp.path())
        .call_timeout(Duration::from_millis(200))
        .transaction_timeout(Duration::from_millis(500))
        .idempotency_horizon(horizon)
        .open()
        .unwrap();
    let legs = [bank.leg(0, 1, 5)];
    let tx = dtc.new_tx_id();
    assert_eq!(dtc.execute_as(tx, &legs).unwrap(), Outcome::Committed);
    // An id dated well before the horizon was never seen: refused all the same.
    let old = id_at(now_ns() - 10 * horizon.as_nanos() as u64, 3);
    assert!(matches!(dtc.execute_as(old, &legs), Err(Error::TxIdExpired { .. })));
    std::thread::sleep(horizon + Duration::from_millis(200));
    dtc.checkpoint().unwrap(); // moves `tx` to the archive and expires what the horizon left
    let err = dtc.execute_as(tx, &legs).unwrap_err();
    assert!(matches!(err, Error::TxIdExpired { tx: t, .. } if t == tx), "{err:?}");
    assert_eq!(err.code(), "tx_id_expired");
    assert_eq!(bank.balances()[..2], [95, 105], "the expired id ran again");
    dtc.shutdown().unwrap();
    drop(dtc); // releases the directory
    // The watermark survives a restart.
    let dtc = durable(&bank, tmp.path())
        .call_timeout(Duration::from_millis(200))
        .transaction_timeout(Duration::from_millis(500))
        .idempotency_horizon(horizon)
        .open()
        .unwrap();
    assert!(matches!(dtc.execute_as(tx, &legs), Err(Error::TxIdExpired { .. })));
    dtc.shutdown().unwrap();
}

#[test]
fn ids_dated_in_the_future_are_refused_without_overflow() {
    let bank = Bank::new(2, 8, 100);
    let dtc = bank.builder().open().unwrap();
    let legs = [bank.leg(0, 1, 5)];
    for tx in [TxId::from_u128(u128::MAX), id_at(now_ns() + 3_600_000_000_000, 1), id_at(u64::MAX, 0)] {
        let err = dtc.execute_as(tx, &legs).unwrap_err();
        assert!(matches!(err, Error::TxIdInFuture { .. }), "{tx}: {err:?}");
    }
    // The id clock was not dragged forward: fresh ids are still of today.
    let fresh = dtc.new_tx_id();
    assert!(fresh.timestamp_ns() < now_ns() + 1_000_000_000, "{fresh}");
    assert_eq!(dtc.execute_as(fresh, &legs).unwrap(), Outcome::Committed);
    assert_eq!(bank.balances()[..2], [95, 105]);
}

#[test]
fn without_a_log_a_forgotten_id_is_refused_never_run_again() {
    let bank = Bank::new(2, 8, 1_000_000);
    let dtc = bank.builder().recent_ids(64).open().unwrap();
    let first = dtc.new_tx_id();
    let legs = [bank.leg(0, 1, 5)];
    assert_eq!(dtc.execute_as(first, &legs).unwrap(), Outcome::Committed);
    // One thread: each fresh id is newer than every remembered one, so none
    // is refused (with several threads and a table of 64, an id whose thread
    // was descheduled while 64 newer ones finished would be).
    flood(&dtc, &bank, 5_000, 1, 9);
    let before = bank.balances();
    assert!(matches!(dtc.execute_as(first, &legs), Err(Error::TxIdExpired { .. })));
    assert_eq!(bank.balances(), before);
}
