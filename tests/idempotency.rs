//! Idempotency: duplicated phase requests have the effect of one, and a
//! resubmitted transaction id is answered from the record, never run twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Bank, Model, Probe, ProbeControl, random_legs, seed, wait_until};
use dtc::{AbortReason, Coordinator, Error, Outcome};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const ACCOUNTS: usize = 30;
const BALANCE: i64 = 1_000;

/// Services 0 and 1 are plain ledgers (run inline on the caller's thread when
/// idle), service 2 a `Probe` (always through its worker's queue), so both
/// delivery paths see duplicates.
fn mixed_bank(control: &Arc<ProbeControl>) -> (Bank, dtc::Builder) {
    let bank = Bank::new(3, ACCOUNTS, BALANCE);
    let builder = bank.builder_with(|s, ledger| -> common::Boxed {
        if s == 2 { Box::new(Probe::new(ledger, control)) } else { Box::new(ledger) }
    });
    (bank, builder)
}

/// With every phase delivered 1–5 times, balances always equal a model applying each commit once.
#[test]
fn redelivered_phases_apply_once() {
    let seed = seed(0x1D0_0001);
    let control = ProbeControl::new();
    let (bank, builder) = mixed_bank(&control);
    let dtc = builder.redeliver_for_testing(seed, 5).open().unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut model = Model::new(ACCOUNTS, BALANCE);
    for n in 0..600 {
        let legs = random_legs(&mut rng, ACCOUNTS, 4, 600);
        let short = model.short(&legs);
        let ctx = format!("seed {seed}, tx {n}, legs {legs:?}, short {short:?}");
        let outcome = dtc.execute(&bank.transfers(&legs)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        if short.is_empty() {
            assert_eq!(outcome, Outcome::Committed, "{ctx}");
            model.apply(&legs);
        } else {
            assert!(matches!(outcome, Outcome::Aborted(_)), "{ctx}: {outcome:?}");
        }
        bank.check_audit(&dtc, &ctx);
        assert_eq!(bank.balances(), model.0, "{ctx}: ledgers differ from the model");
    }
    dtc.shutdown().unwrap();
    assert_eq!(bank.balances(), model.0, "seed {seed}: after shutdown");
    assert_eq!(dtc.metrics().protocol_violations, 0, "seed {seed}");
}

/// Four threads under redelivery (inline and queued services) conserve money.
#[test]
fn redelivered_phases_under_concurrency_conserve_money() {
    let seed = seed(0x1D0_0006);
    let control = ProbeControl::new();
    let (bank, builder) = mixed_bank(&control);
    let bank = Arc::new(bank);
    let dtc = builder.redeliver_for_testing(seed, 5).open().unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (bank, dtc) = (bank.clone(), dtc.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed ^ (t << 32));
                for n in 0..300 {
                    let legs = random_legs(&mut rng, ACCOUNTS, 4, 600);
                    let ctx = format!("seed {seed}, thread {t}, tx {n}, legs {legs:?}");
                    dtc.execute(&bank.transfers(&legs)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    if n % 25 == 0 {
                        bank.check_audit(&dtc, &ctx);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    dtc.shutdown().unwrap();
    bank.check_ledgers(&format!("seed {seed}, after shutdown"));
    let m = dtc.metrics();
    assert_eq!(m.committed + m.commit_pending + m.aborted_total(), 1_200, "seed {seed}: {m:?}");
    assert_eq!(m.protocol_violations, 0, "seed {seed}: {m:?}");
}

/// Under redelivery a refused transaction still reports its own refusal, not a duplicate's answer.
#[test]
fn redelivered_refusal_keeps_its_reason() {
    let seed = seed(0x1D0_0002);
    let control = ProbeControl::new();
    let (bank, builder) = mixed_bank(&control);
    let dtc = builder.redeliver_for_testing(seed, 5).open().unwrap();
    let mut wrong = Vec::new();
    // acct-i lives on svc-(i % 3). Each try asks for more than any balance,
    // alone on one service (one phase) and across two (two phases).
    for n in 0..40u64 {
        for (from, to) in [(0, 3), (1, 4), (2, 5), (0, 1), (1, 2), (2, 0)] {
            let outcome = dtc.execute(&[bank.leg(from, to, BALANCE as u64 + 1 + n)]).unwrap();
            let expected = Outcome::Aborted(AbortReason::InsufficientFunds {
                service: bank.services[bank.service_index(from)].clone(),
                account: bank.accounts[from].clone(),
            });
            if outcome != expected {
                wrong.push((n, from, to, outcome));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} of 240 refusals misreported, e.g. {:?}",
        wrong.len(),
        &wrong[..3.min(wrong.len())]
    );
    let m = dtc.metrics();
    assert_eq!(m.aborted_total(), 240, "seed {seed}: {m:?}");
    bank.check_audit(&dtc, "end");
    assert_eq!(bank.balances(), vec![BALANCE; ACCOUNTS]);
}

fn each_phase_at_most_once(seed: u64, nonblocking: bool) {
    let bank = Bank::new(3, ACCOUNTS, BALANCE);
    let controls: Vec<_> = (0..3).map(|_| ProbeControl::new()).collect();
    let dtc = bank
        .builder_with(|s, ledger| {
            let probe = Probe::new(ledger, &controls[s]);
            Box::new(if nonblocking { probe.nonblocking() } else { probe })
        })
        .redeliver_for_testing(seed, 5)
        .open()
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut runs = Vec::new();
    for _ in 0..300 {
        let legs = random_legs(&mut rng, ACCOUNTS, 4, 700);
        let tx = dtc.new_tx_id();
        let outcome = dtc.execute_as(tx, &bank.transfers(&legs)).unwrap();
        runs.push((tx, legs, outcome));
    }
    dtc.shutdown().unwrap(); // drains every queued duplicate
    bank.check_ledgers(&format!("seed {seed}"));
    let (mut committed, mut aborted) = (0, 0);
    for (tx, legs, outcome) in &runs {
        let touched: Vec<usize> = legs.iter().flat_map(|&(f, t, _)| [f % 3, t % 3]).collect();
        for (s, control) in controls.iter().enumerate() {
            let calls = control.calls(*tx);
            let ctx = format!("seed {seed}, {tx}, legs {legs:?}, svc-{s}, {outcome:?}: {calls:?}");
            assert!(calls.prepare <= 1 && calls.commit <= 1 && calls.rollback <= 1, "{ctx}");
            if !touched.contains(&s) {
                assert_eq!(calls, Default::default(), "{ctx}");
            } else if outcome.is_committed() {
                assert_eq!((calls.prepare_ok, calls.commit_ok, calls.rollback), (1, 1, 0), "{ctx}");
            } else {
                assert_eq!(calls.commit, 0, "{ctx}");
                assert_eq!(calls.rollback, calls.prepare_ok, "{ctx}: rollback iff prepared");
            }
        }
        if outcome.is_committed() {
            committed += 1;
        } else {
            aborted += 1;
        }
    }
    assert!(committed > 0 && aborted > 0, "seed {seed}: {committed} committed, {aborted} aborted");
}

/// Under redelivery a (queued) participant sees each phase at most once per transaction.
#[test]
fn participants_see_each_phase_at_most_once() {
    // Committed: exactly one prepare and one commit; aborted: a rollback exactly where the prepare voted yes.
    each_phase_at_most_once(seed(0x1D0_0003), false);
}

/// The same for a nonblocking participant called inline, where duplicates are repeated steps.
#[test]
fn participants_see_each_phase_at_most_once_inline() {
    each_phase_at_most_once(seed(0x1D0_0005), true);
}

/// Resubmitting an id with the same legs returns the recorded outcome without running it again.
#[test]
fn same_id_same_legs_returns_the_recorded_outcome() {
    let bank = Bank::new(2, 4, 100);
    let dtc = bank.builder().open().unwrap();
    // acct-0, acct-2 on svc-0; acct-1, acct-3 on svc-1.
    let cases = [
        (vec![bank.leg(0, 1, 30)], Outcome::Committed),
        (vec![bank.leg(0, 2, 30)], Outcome::Committed),
        (
            vec![bank.leg(3, 0, 500)],
            Outcome::Aborted(AbortReason::InsufficientFunds { service: "svc-1".into(), account: "acct-3".into() }),
        ),
        (
            vec![bank.leg(2, 0, 500)],
            Outcome::Aborted(AbortReason::InsufficientFunds { service: "svc-0".into(), account: "acct-2".into() }),
        ),
    ];
    for (legs, expected) in cases {
        let tx = dtc.new_tx_id();
        assert_eq!(dtc.execute_as(tx, &legs).unwrap(), expected, "{legs:?}");
        let balances = bank.balances();
        let metrics = dtc.metrics();
        for _ in 0..3 {
            let again = dtc.execute_as(tx, &legs);
            assert!(matches!(&again, Ok(o) if *o == expected), "{legs:?}: resubmitted: {again:?}");
        }
        assert_eq!(dtc.outcome_of(tx).expect("outcome_of"), Some(expected.clone()), "{legs:?}");
        bank.check_audit(&dtc, "after resubmissions");
        assert_eq!(bank.balances(), balances, "{legs:?}: resubmission changed balances");
        assert_eq!(dtc.metrics().committed, metrics.committed, "{legs:?}: resubmission ran again");
        assert_eq!(dtc.metrics().aborted_total(), metrics.aborted_total(), "{legs:?}");
    }
    // An aborted id stays aborted even once the funds are there.
    let tx = dtc.new_tx_id();
    let short = [bank.leg(1, 3, 200)];
    assert!(matches!(dtc.execute_as(tx, &short).unwrap(), Outcome::Aborted(_)));
    assert_eq!(dtc.execute(&[bank.leg(2, 1, 100)]).unwrap(), Outcome::Committed);
    assert!(matches!(dtc.execute_as(tx, &short).unwrap(), Outcome::Aborted(_)));
    assert_eq!(bank.balances()[3], 100);
}

/// The same id with different legs is refused with `TxIdReused` and changes nothing.
#[test]
fn same_id_other_legs_is_refused() {
    let bank = Bank::new(2, 4, 100);
    let dtc = bank.builder().open().unwrap();
    let tx = dtc.new_tx_id();
    let legs = [bank.leg(0, 1, 10)];
    assert_eq!(dtc.execute_as(tx, &legs).unwrap(), Outcome::Committed);
    let balances = bank.balances();
    let metrics = dtc.metrics();
    for other in [
        vec![bank.leg(0, 1, 11)],
        vec![bank.leg(0, 3, 10)],
        vec![bank.leg(1, 0, 10)],
        vec![bank.leg(0, 2, 10)],
        vec![bank.leg(0, 1, 10), bank.leg(2, 3, 1)],
    ] {
        let result = dtc.execute_as(tx, &other);
        assert!(matches!(result, Err(Error::TxIdReused { tx: t }) if t == tx), "{other:?}: {result:?}");
    }
    assert_eq!(bank.balances(), balances);
    assert_eq!(dtc.metrics().committed, metrics.committed);
    assert_eq!(dtc.outcome_of(tx).expect("outcome_of"), Some(Outcome::Committed));
}

/// Resubmitting an id while it runs gives `TxInProgress`; once finished, its outcome.
#[test]
fn same_id_while_running_is_in_progress() {
    let bank = Bank::new(2, 4, 100);
    let control = ProbeControl::new();
    let dtc = bank
        .builder_with(|s, ledger| -> common::Boxed {
            if s == 1 { Box::new(Probe::new(ledger, &control)) } else { Box::new(ledger) }
        })
        .open()
        .unwrap();
    let tx = dtc.new_tx_id();
    let hold = control.hold_prepare();
    let first = {
        let (dtc, bank_accounts) = (dtc.clone(), bank.accounts.clone());
        std::thread::spawn(move || {
            dtc.execute_as(tx, &[dtc::Transfer::new("svc-0", &bank_accounts[0], "svc-1", &bank_accounts[1], 25)])
        })
    };
    wait_until("the prepare to block", Duration::from_secs(10), || control.held() == 1);
    let legs = [bank.leg(0, 1, 25)];
    assert!(matches!(dtc.execute_as(tx, &legs), Err(Error::TxInProgress { tx: t }) if t == tx));
    assert!(matches!(dtc.execute_as(tx, &[bank.leg(0, 1, 26)]), Err(Error::TxIdReused { .. })));
    hold.release();
    assert_eq!(first.join().unwrap().unwrap(), Outcome::Committed);
    assert_eq!(dtc.execute_as(tx, &legs).unwrap(), Outcome::Committed);
    bank.check_audit(&dtc, "end");
    assert_eq!(bank.balances(), [75, 125, 100, 100]);
    assert_eq!(control.calls(tx).commit_ok, 1);
}

/// Builds a 3-service bank that remembers only 16 recent ids.
fn forgetful_bank() -> (Bank, Coordinator) {
    let bank = Bank::new(3, 9, 100);
    let dtc = bank.builder().recent_ids(16).open().unwrap();
    (bank, dtc)
}

/// Pushes `tx` out of the recent-id table with fresh committed transactions.
fn forget(dtc: &Coordinator, bank: &Bank, tx: dtc::TxId) {
    let mut n = 0;
    while dtc.outcome_of(tx).expect("outcome_of").is_some() {
        n += 1;
        assert!(n < 10_000, "{tx} never left the recent-id table");
        // acct-6 → acct-7 and back: net zero, always funded.
        let (from, to) = if n % 2 == 0 { (6, 7) } else { (7, 6) };
        assert_eq!(dtc.execute_as(dtc.new_tx_id(), &[bank.leg(from, to, 1)]).unwrap(), Outcome::Committed);
    }
}

/// Without a log the recent-id table is all the coordinator remembers: an id
/// it has forgotten is refused with `TxIdExpired`, never run a second time
/// (earlier versions ran it again as a new transaction).
#[test]
fn forgotten_id_is_refused_never_run_twice() {
    let (bank, dtc) = forgetful_bank();
    let tx = dtc.new_tx_id();
    // acct-0 on svc-0 → acct-1 on svc-1.
    let legs = [bank.leg(0, 1, 40)];
    assert_eq!(dtc.execute_as(tx, &legs).unwrap(), Outcome::Committed);
    forget(&dtc, &bank, tx);
    let before = bank.balances();
    let again = dtc.execute_as(tx, &legs);
    assert!(matches!(again, Err(Error::TxIdExpired { .. })), "{again:?}");
    bank.check_audit(&dtc, "after resubmitting a forgotten id");
    assert_eq!(bank.balances(), before, "a forgotten id ran a second time");
}

/// An id reused with other legs after it was forgotten is refused or run in full, never half-applied.
#[test]
fn forgotten_id_other_legs_is_never_half_applied() {
    let (bank, dtc) = forgetful_bank();
    let tx = dtc.new_tx_id();
    // acct-0 (svc-0) → acct-1 (svc-1), then later acct-4 (svc-1) → acct-2 (svc-2).
    assert_eq!(dtc.execute_as(tx, &[bank.leg(0, 1, 40)]).unwrap(), Outcome::Committed);
    forget(&dtc, &bank, tx);
    let before = bank.balances();
    let reused = dtc.execute_as(tx, &[bank.leg(4, 2, 30)]);
    let after = bank.balances();
    let audit = dtc.audit().unwrap();
    assert_eq!(
        audit.total, bank.total,
        "reusing forgotten id {tx} with other legs returned {reused:?} and broke conservation: \
         acct-4 {} -> {}, acct-2 {} -> {}",
        before[4], after[4], before[2], after[2]
    );
    match reused {
        Ok(o) if o.is_committed() => assert_eq!((after[4], after[2]), (before[4] - 30, before[2] + 30)),
        Ok(_) | Err(Error::TxIdReused { .. } | Error::TxIdExpired { .. }) => assert_eq!(after, before),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// Under redelivery an inline prepare panic still aborts with `ParticipantPanicked`, nothing applied.
#[test]
fn redelivered_panicking_prepare_applies_nothing() {
    // A duplicate prepare must not turn the panic into a yes vote.
    let seed = seed(0x1D0_0004);
    let bank = Bank::new(2, 4, 1_000);
    let control = ProbeControl::new();
    let dtc = bank
        .builder_with(|s, ledger| -> common::Boxed {
            if s == 0 { Box::new(Probe::new(ledger, &control).nonblocking()) } else { Box::new(ledger) }
        })
        .redeliver_for_testing(seed, 5)
        .open()
        .unwrap();
    let expected = Outcome::Aborted(AbortReason::ParticipantPanicked { service: "svc-0".into() });
    let mut wrong = Vec::new();
    for n in 0..40 {
        // Alternately two services (svc-1/acct-1 → svc-0/acct-0) and one (svc-0 only).
        let legs = if n % 2 == 0 { [bank.leg(1, 0, 10)] } else { [bank.leg(2, 0, 10)] };
        control.panic_prepares(1);
        let outcome = dtc.execute(&legs).unwrap();
        bank.check_audit(&dtc, &format!("seed {seed}, tx {n}: {outcome:?}"));
        assert_eq!(bank.balances(), [1_000; 4], "seed {seed}, tx {n}: {outcome:?} applied something");
        if outcome != expected {
            wrong.push((n, outcome));
        }
    }
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} of 40 misreported, e.g. {:?}",
        wrong.len(),
        &wrong[..3.min(wrong.len())]
    );
    assert_eq!(dtc.metrics().protocol_violations, 0, "seed {seed}");
}
