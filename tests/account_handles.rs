//! `Account` handles: transfers between accounts resolved once behave
//! exactly like transfers by name, and a handle is never trusted where its
//! resolution could be stale (another coordinator, a directory whose keys
//! may change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use dtc::participant::Directory;
use dtc::{
    BranchId, Coordinator, Error, Failure, Ledger, Outcome, Participant, ParticipantKind, Refusal, Transfer, Work,
};

fn bank(accounts: &[(&str, i64)]) -> Ledger {
    let ledger = Ledger::new();
    for &(id, balance) in accounts {
        ledger.create_account(id, balance).unwrap();
    }
    ledger
}

#[test]
fn handles_move_money_like_names_in_single_transfers_and_batches() {
    let eu = bank(&[("a", 100), ("b", 0)]);
    let us = bank(&[("c", 0)]);
    let dtc = Coordinator::builder().service("eu", eu.clone()).service("us", us.clone()).open().unwrap();
    let a = dtc.account("eu", "a").unwrap();
    let b = dtc.account("eu", "b").unwrap();
    let c = dtc.account("us", "c").unwrap();
    assert_eq!((a.service(), a.id()), ("eu", "a"));

    assert_eq!(
        dtc.execute(&[Transfer::between(&a, &b, 10), Transfer::between(&a, &c, 20)]).unwrap(),
        Outcome::Committed
    );
    assert_eq!((eu.balance("a"), eu.balance("b"), us.balance("c")), (Some(70), Some(10), Some(20)));
    // Insufficient funds is the same abort by handle as by name.
    let by_handle = dtc.execute(&[Transfer::between(&b, &c, 11)]).unwrap();
    let by_name = dtc.execute(&[Transfer::new("eu", "b", "us", "c", 11)]).unwrap();
    assert_eq!(by_handle, by_name);
    assert!(!by_handle.is_committed());
    // Handles and names mix, in batches too.
    let one = [Transfer::between(&c, &b, 5)];
    let two = [Transfer::new("eu", "a", "us", "c", 1), Transfer::between(&b, &a, 1)];
    let results = dtc.execute_batch(&[&one, &two]).unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(Outcome::Committed))), "{results:?}");
    assert_eq!((eu.balance("a"), eu.balance("b"), us.balance("c")), (Some(70), Some(14), Some(16)));
    assert_eq!(dtc.audit().unwrap().total, 100);
    dtc.shutdown().unwrap();
}

#[test]
fn bad_handles_are_refused_when_made_and_a_handle_is_its_names() {
    let dtc = Coordinator::builder().service("eu", bank(&[("a", 5), ("b", 0)])).open().unwrap();
    assert!(matches!(dtc.account("nowhere", "a"), Err(Error::UnknownService { .. })));
    assert!(matches!(dtc.account("eu", "zz"), Err(Error::UnknownAccount { .. })));
    assert!(matches!(dtc.account("eu", ""), Err(Error::InvalidName { .. })));
    let a = dtc.account("eu", "a").unwrap();
    let b = dtc.account("eu", "b").unwrap();
    // Equal to the same leg by name: ids and resubmissions see the names only.
    assert_eq!(Transfer::between(&a, &b, 3), Transfer::new("eu", "a", "eu", "b", 3));
    let id = dtc.new_tx_id();
    assert_eq!(dtc.execute_as(id, &[Transfer::between(&a, &b, 3)]).unwrap(), Outcome::Committed);
    assert_eq!(dtc.execute_as(id, &[Transfer::new("eu", "a", "eu", "b", 3)]).unwrap(), Outcome::Committed);
    assert!(matches!(dtc.execute_as(id, &[Transfer::new("eu", "a", "eu", "b", 4)]), Err(Error::TxIdReused { .. })));
    assert!(matches!(dtc.execute(&[Transfer::between(&a, &a, 1)]), Err(Error::SameAccount { .. })));
    dtc.shutdown().unwrap();
}

#[test]
fn a_ref_whose_names_were_changed_is_resolved_by_its_names() {
    let eu = bank(&[("a", 10), ("b", 10), ("c", 0)]);
    let us = bank(&[("a", 0)]);
    let dtc = Coordinator::builder().service("eu", eu.clone()).service("us", us.clone()).open().unwrap();
    let a = dtc.account("eu", "a").unwrap();
    let c = dtc.account("eu", "c").unwrap();
    // The fields are public: a ref made from `a`'s handle, renamed to "b".
    let mut renamed = a.to_ref();
    renamed.account = "b";
    let leg = Transfer { from: renamed, to: c.to_ref(), amount: 4 };
    assert_eq!(dtc.execute(&[leg]).unwrap(), Outcome::Committed);
    assert_eq!((eu.balance("a"), eu.balance("b"), eu.balance("c")), (Some(10), Some(6), Some(4)));
    // Renamed to another service: that service's account.
    let mut moved = a.to_ref();
    moved.service = "us";
    assert_eq!(dtc.execute(&[Transfer { from: c.to_ref(), to: moved, amount: 1 }]).unwrap(), Outcome::Committed);
    assert_eq!((eu.balance("a"), eu.balance("c"), us.balance("a")), (Some(10), Some(3), Some(1)));
    dtc.shutdown().unwrap();
}

#[test]
fn a_handle_from_another_coordinator_is_resolved_by_name() {
    let first = Coordinator::builder().service("eu", bank(&[("a", 50), ("b", 0)])).open().unwrap();
    let a = first.account("eu", "a").unwrap();
    let b = first.account("eu", "b").unwrap();
    first.shutdown().unwrap();

    // Same names, other accounts (created in another order: other keys).
    let ledger = bank(&[("filler", 0), ("b", 0), ("a", 50)]);
    let second = Coordinator::builder().service("eu", ledger.clone()).open().unwrap();
    assert_eq!(second.execute(&[Transfer::between(&a, &b, 20)]).unwrap(), Outcome::Committed);
    assert_eq!((ledger.balance("a"), ledger.balance("b"), ledger.balance("filler")), (Some(30), Some(20), Some(0)));

    // A service the second one lacks, or an account: refused as by name.
    let third = Coordinator::builder().service("us", bank(&[("a", 1), ("b", 1)])).open().unwrap();
    assert!(matches!(third.execute(&[Transfer::between(&a, &b, 1)]), Err(Error::UnknownService { .. })));
    let fourth = Coordinator::builder().service("eu", bank(&[("a", 9)])).open().unwrap();
    assert!(matches!(fourth.execute(&[Transfer::between(&a, &b, 1)]), Err(Error::UnknownAccount { .. })));
    for dtc in [second, third, fourth] {
        dtc.shutdown().unwrap();
    }
}

/// The account and key of every operation a participant was handed.
type Seen = Arc<Mutex<Vec<(String, Option<u64>)>>>;

/// A directory whose keys can change: a handle's key must not be used.
#[derive(Clone, Default)]
struct Moving {
    keys: Arc<Mutex<HashMap<String, u64>>>,
    seen: Seen,
}

impl Directory for Moving {
    fn lookup(&self, account: &str) -> Option<u64> {
        self.keys.lock().unwrap().get(account).copied()
    }
}

impl Participant for Moving {
    type Prepared = ();
    fn kind(&self) -> ParticipantKind {
        ParticipantKind::Volatile
    }
    fn prepare(&mut self, _: BranchId, work: Work<'_>) -> Result<(), Refusal> {
        let Work::Transfers(ops) = work else { return Err(Refusal::new("payload", "transfers only")) };
        self.seen.lock().unwrap().extend(ops.iter().map(|op| (op.account.to_string(), op.key)));
        Ok(())
    }
    fn commit(&mut self, _: BranchId, _: &()) -> Result<(), Failure> {
        Ok(())
    }
    fn rollback(&mut self, _: BranchId, _: Option<&()>) -> Result<(), Failure> {
        Ok(())
    }
    fn directory(&self) -> Option<Arc<dyn Directory>> {
        Some(Arc::new(self.clone()))
    }
}

#[test]
fn a_directory_without_stable_keys_is_asked_again() {
    let moving = Moving::default();
    moving.keys.lock().unwrap().extend([("x".to_string(), 1), ("y".to_string(), 2)]);
    let dtc = Coordinator::builder().service("m", moving.clone()).open().unwrap();
    let x = dtc.account("m", "x").unwrap();
    let y = dtc.account("m", "y").unwrap();
    moving.keys.lock().unwrap().insert("x".to_string(), 7);
    assert_eq!(dtc.execute(&[Transfer::between(&x, &y, 1)]).unwrap(), Outcome::Committed);
    let mut seen = moving.seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, [("x".to_string(), Some(7)), ("y".to_string(), Some(2))]);
    // Removed meanwhile: refused before any side effect, as by name.
    moving.keys.lock().unwrap().remove("y");
    assert!(matches!(dtc.execute(&[Transfer::between(&x, &y, 1)]), Err(Error::UnknownAccount { .. })));
    dtc.shutdown().unwrap();
}

#[test]
fn ids_of_every_length_keep_their_name_in_a_handle() {
    // Around the inline limit (22 bytes), the longest id, multi-byte UTF-8.
    let ids: Vec<String> = [1, 21, 22, 23, 64, 255].iter().map(|&n| "é".repeat(n / 2) + &"x".repeat(n % 2)).collect();
    let ledger = Ledger::new();
    for id in &ids {
        ledger.create_account(id, 10).unwrap();
    }
    let dtc = Coordinator::builder().service("eu", ledger.clone()).open().unwrap();
    let handles: Vec<_> = ids.iter().map(|id| dtc.account("eu", id).unwrap()).collect();
    for (id, handle) in ids.iter().zip(&handles) {
        assert_eq!(handle.id(), id);
        assert_eq!(format!("{handle:?}"), format!("Account {{ service: \"eu\", id: {id:?}, .. }}"));
    }
    for pair in handles.windows(2) {
        assert_eq!(dtc.execute(&[Transfer::between(&pair[0], &pair[1], 1)]).unwrap(), Outcome::Committed);
    }
    assert_eq!(ledger.balance(&ids[0]), Some(9));
    assert_eq!(ledger.balance(&ids[5]), Some(11));
    dtc.shutdown().unwrap();
}
