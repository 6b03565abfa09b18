//! Validation: every bad input is refused with its own `Error` variant
//! before any side effect (balances and metrics unchanged), and business
//! refusals (insufficient funds, balance overflow) are aborted outcomes that
//! change nothing either.

mod common;

use std::collections::HashMap;
use std::mem::{Discriminant, discriminant};

use common::Bank;
use dtc::{AbortReason, Coordinator, Error, Ledger, MAX_ACCOUNT_ID_BYTES, MAX_SERVICE_NAME_BYTES, Outcome, Transfer};

/// The code of each error variant seen; fails if two variants share one.
#[derive(Default)]
struct Codes(HashMap<&'static str, (Discriminant<Error>, String)>);

impl Codes {
    fn note(&mut self, e: &Error) {
        let (variant, first) = self.0.entry(e.code()).or_insert_with(|| (discriminant(e), format!("{e:?}")));
        assert_eq!(*variant, discriminant(e), "code {:?} shared by {first} and {e:?}", e.code());
    }
}

/// Runs `legs`, expects an error, and checks nothing changed; returns it.
fn refused(bank: &Bank, dtc: &Coordinator, legs: &[Transfer<'_>]) -> Error {
    let (balances, metrics) = (bank.balances(), dtc.metrics());
    let tx = dtc.new_tx_id();
    let error = match dtc.execute_as(tx, legs) {
        Err(e) => e,
        Ok(outcome) => panic!("{legs:?}: expected an error, got {outcome:?}"),
    };
    assert_eq!(bank.balances(), balances, "{legs:?}: {error} changed balances");
    assert_eq!(dtc.metrics(), metrics, "{legs:?}: {error} changed metrics");
    assert_eq!(dtc.outcome_of(tx).expect("outcome_of"), None, "{legs:?}: {error} recorded an outcome");
    // The id was not consumed by the refused attempt.
    assert_eq!(dtc.execute_as(tx, &[bank.leg(0, 1, 1)]).unwrap(), Outcome::Committed, "{legs:?}");
    assert_eq!(dtc.execute(&[bank.leg(1, 0, 1)]).unwrap(), Outcome::Committed, "{legs:?}");
    error
}

/// Each malformed transaction gets its own error (right leg/service/account) and changes nothing.
#[test]
fn bad_transactions_are_refused_before_any_side_effect() {
    // acct-0, acct-2 on svc-0; acct-1, acct-3 on svc-1.
    let bank = Bank::new(2, 4, 100);
    let dtc = bank.builder().max_legs(4).open().unwrap();
    let long_account = "a".repeat(MAX_ACCOUNT_ID_BYTES + 1);
    let ok = bank.leg(0, 1, 5);
    let mut codes = Codes::default();
    let mut note = |e: &Error| codes.note(e);

    let e = refused(&bank, &dtc, &[]);
    assert!(matches!(e, Error::EmptyTransaction), "{e:?}");
    note(&e);

    let e = refused(&bank, &dtc, &[ok, bank.leg(2, 3, 0)]);
    assert!(matches!(e, Error::NonPositiveAmount { leg: 1 }), "{e:?}");
    note(&e);

    let e = refused(&bank, &dtc, &[ok, ok, bank.leg(2, 3, i64::MAX as u64 + 1)]);
    assert!(matches!(e, Error::AmountOverflow { leg: 2 }), "{e:?}");
    note(&e);
    let e = refused(&bank, &dtc, &[bank.leg(2, 3, u64::MAX)]);
    assert!(matches!(e, Error::AmountOverflow { leg: 0 }), "{e:?}");

    // Two legs into acct-1 whose sum passes i64::MAX (each alone is valid).
    let e = refused(&bank, &dtc, &[bank.leg(0, 1, i64::MAX as u64), bank.leg(2, 1, 1)]);
    assert!(matches!(e, Error::AmountOverflow { leg: 0 | 1 }), "{e:?}");

    let e = refused(&bank, &dtc, &[ok, Transfer::new("svc-0", "acct-0", "svc-9", "acct-1", 5)]);
    assert!(matches!(&e, Error::UnknownService { leg: 1, service } if service == "svc-9"), "{e:?}");
    note(&e);
    let e = refused(&bank, &dtc, &[Transfer::new("", "acct-0", "svc-1", "acct-1", 5)]);
    assert!(matches!(&e, Error::UnknownService { leg: 0, service } if service.is_empty()), "{e:?}");

    // acct-1 exists, but on svc-1, not svc-0.
    let e = refused(&bank, &dtc, &[ok, Transfer::new("svc-1", "acct-3", "svc-0", "acct-1", 5)]);
    assert!(
        matches!(&e, Error::UnknownAccount { leg: 1, service, account } if service == "svc-0" && account == "acct-1"),
        "{e:?}"
    );
    note(&e);
    let e = refused(&bank, &dtc, &[Transfer::new("svc-0", "nobody", "svc-1", "acct-1", 5)]);
    assert!(matches!(&e, Error::UnknownAccount { leg: 0, account, .. } if account == "nobody"), "{e:?}");

    let e = refused(&bank, &dtc, &[ok, bank.leg(2, 2, 5)]);
    assert!(
        matches!(&e, Error::SameAccount { leg: 1, service, account } if service == "svc-0" && account == "acct-2"),
        "{e:?}"
    );
    note(&e);
    // The same account name on two services is two accounts: not refused.
    let shared = Bank::new(2, 2, 10);
    shared.ledgers[1].create_account("acct-0", 10).unwrap();
    let dtc2 = shared.builder().open().unwrap();
    let cross = [Transfer::new("svc-0", "acct-0", "svc-1", "acct-0", 5)];
    assert_eq!(dtc2.execute(&cross).unwrap(), Outcome::Committed);
    assert_eq!(shared.ledgers[1].balance("acct-0"), Some(15));
    dtc2.shutdown().unwrap();

    let e = refused(&bank, &dtc, &[ok; 5]);
    assert!(matches!(e, Error::TooManyLegs { legs: 5, limit: 4 }), "{e:?}");
    note(&e);
    assert_eq!(dtc.execute(&[ok; 4]).unwrap(), Outcome::Committed, "exactly max_legs is fine");
    assert_eq!(dtc.execute(&[bank.leg(1, 0, 20)]).unwrap(), Outcome::Committed);

    let e = refused(&bank, &dtc, &[ok, Transfer::new("svc-0", "", "svc-1", "acct-1", 5)]);
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    note(&e);
    let e = refused(&bank, &dtc, &[Transfer::new("svc-0", "acct-0", "svc-1", &long_account, 5)]);
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");

    // Every variant produced has its own code.
    assert_eq!(codes.0.len(), 8, "{:#?}", codes.0);
    bank.check_audit(&dtc, "end");
    dtc.shutdown().unwrap();
}

/// Bad configurations and accounts are refused with their own errors.
#[test]
fn bad_setup_is_refused() {
    let mut codes = Codes::default();
    let mut note = |e: Error| codes.note(&e);
    let open_err = |b: dtc::Builder| match b.open() {
        Err(e) => e,
        Ok(_) => panic!("opened"),
    };

    let e = open_err(Coordinator::builder());
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    note(e);
    let e = open_err(Coordinator::builder().service("a", Ledger::new()).service("a", Ledger::new()));
    assert!(matches!(&e, Error::Config(m) if m.contains("twice")), "{e:?}");
    let e = open_err(Coordinator::builder().service("", Ledger::new()));
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    note(e);
    let e = open_err(Coordinator::builder().service("s".repeat(MAX_SERVICE_NAME_BYTES + 1), Ledger::new()));
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    for b in [
        Coordinator::builder().service("a", Ledger::new()).call_timeout(std::time::Duration::ZERO),
        Coordinator::builder().service("a", Ledger::new()).transaction_timeout(std::time::Duration::ZERO),
        Coordinator::builder().service("a", Ledger::new()).max_legs(0),
        Coordinator::builder().service("a", Ledger::new()).queue_capacity(0),
    ] {
        let e = open_err(b);
        assert!(matches!(e, Error::Config(_)), "{e:?}");
    }
    // The longest allowed names are fine.
    let longest = "s".repeat(MAX_SERVICE_NAME_BYTES);
    let ledger = Ledger::new();
    ledger.create_account(&"a".repeat(MAX_ACCOUNT_ID_BYTES), 1).unwrap();
    Coordinator::builder().service(longest, ledger).open().unwrap().shutdown().unwrap();

    let ledger = Ledger::new();
    let e = ledger.create_account("neg", -1).unwrap_err();
    assert!(matches!(&e, Error::InvalidBalance { account, balance: -1 } if account == "neg"), "{e:?}");
    note(e);
    let e = ledger.create_account("", 1).unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    let e = ledger.create_account(&"a".repeat(MAX_ACCOUNT_ID_BYTES + 1), 1).unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    ledger.create_account("once", 7).unwrap();
    let e = ledger.create_account("once", 9).unwrap_err();
    assert!(matches!(&e, Error::AccountExists { account, .. } if account == "once"), "{e:?}");
    note(e);
    assert_eq!(ledger.balance("once"), Some(7));
    assert_eq!((ledger.balance("neg"), ledger.len()), (None, 1));
    assert_eq!(codes.0.len(), 4, "{:#?}", codes.0);
}

/// The error codes of all input and engine errors are distinct snake_case strings.
#[test]
fn error_codes_are_distinct() {
    let tx = dtc::TxId::from_u128(1);
    let errors = [
        Error::EmptyTransaction,
        Error::TooManyLegs { legs: 2, limit: 1 },
        Error::NonPositiveAmount { leg: 0 },
        Error::AmountOverflow { leg: 0 },
        Error::UnknownService { leg: 0, service: "s".into() },
        Error::UnknownAccount { leg: 0, service: "s".into(), account: "a".into() },
        Error::SameAccount { leg: 0, service: "s".into(), account: "a".into() },
        Error::InvalidName { name: String::new(), why: "empty" },
        Error::InvalidBalance { account: "a".into(), balance: -1 },
        Error::AccountExists { service: "s".into(), account: "a".into() },
        Error::Config("c".into()),
        Error::TxIdReused { tx },
        Error::TxInProgress { tx },
        Error::ShuttingDown,
        Error::ServiceUnavailable { service: "s".into() },
        Error::AuditTimeout,
    ];
    let codes: std::collections::HashSet<&str> = errors.iter().map(Error::code).collect();
    assert_eq!(codes.len(), errors.len(), "{codes:?}");
    assert!(codes.iter().all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
}

/// Insufficient funds aborts naming the short service and account, on one service and two; nothing changes.
#[test]
fn insufficient_funds_aborts_and_changes_nothing() {
    let bank = Bank::new(2, 4, 100);
    let dtc = bank.builder().open().unwrap();
    for (legs, service, account) in [
        (vec![bank.leg(0, 2, 101)], "svc-0", "acct-0"),
        (vec![bank.leg(3, 0, 101)], "svc-1", "acct-3"),
        // 60 + 60 out of acct-1: each leg alone is fine, together short.
        (vec![bank.leg(1, 0, 60), bank.leg(1, 2, 60)], "svc-1", "acct-1"),
    ] {
        let (balances, committed) = (bank.balances(), dtc.metrics().committed);
        let outcome = dtc.execute(&legs).unwrap();
        assert_eq!(
            outcome,
            Outcome::Aborted(AbortReason::InsufficientFunds { service: service.into(), account: account.into() }),
            "{legs:?}"
        );
        bank.check_audit(&dtc, "after the abort");
        assert_eq!(bank.balances(), balances, "{legs:?}");
        assert_eq!(dtc.metrics().committed, committed);
    }
    // Exactly the whole balance is fine.
    assert_eq!(dtc.execute(&[bank.leg(0, 2, 100)]).unwrap(), Outcome::Committed);
    assert_eq!(bank.balances(), [0, 100, 200, 100]);
    let m = dtc.metrics();
    assert!(m.aborted.contains(&("insufficient_funds", 3)), "{m:?}");
    dtc.shutdown().unwrap();
}

/// A credit past i64::MAX is an aborted `Refused{code: balance_overflow}` outcome, not an error.
#[test]
fn balance_overflow_is_refused() {
    let rich = Ledger::new();
    rich.create_account("max", i64::MAX).unwrap();
    rich.create_account("one", 1).unwrap();
    let other = Ledger::new();
    other.create_account("two", 2).unwrap();
    let dtc = Coordinator::builder().service("rich", rich.clone()).service("other", other.clone()).open().unwrap();
    for legs in [
        [Transfer::new("rich", "one", "rich", "max", 1)],  // one service
        [Transfer::new("other", "two", "rich", "max", 1)], // two services
    ] {
        let outcome = dtc.execute(&legs).unwrap();
        match &outcome {
            Outcome::Aborted(AbortReason::Refused { service, code, .. }) => {
                assert_eq!((service.as_str(), code.as_str()), ("rich", "balance_overflow"), "{legs:?}");
            }
            other => panic!("{legs:?}: expected a balance_overflow refusal, got {other:?}"),
        }
        assert_eq!(
            (rich.balance("max"), rich.balance("one"), other.balance("two")),
            (Some(i64::MAX), Some(1), Some(2))
        );
    }
    let audit = dtc.audit().unwrap();
    assert_eq!(audit.total, i128::from(i64::MAX) + 3);
    dtc.shutdown().unwrap();
}
