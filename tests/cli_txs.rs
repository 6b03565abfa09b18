//! `dtc txs` / `DataDir::unfinished`: a commit whose external participant
//! acknowledged late is listed as committing, with that participant.

use std::process::Command;
use std::time::Duration;

use dtc::{DataDir, Durability, Failure, Ledger, Operation, Outcome, Participant, Prepared, Refusal, Transfer, TxId};

/// An external service whose commits are slow.
struct SlowCommit;

impl Participant for SlowCommit {
    fn prepare(&mut self, _tx: TxId, _ops: &[Operation<'_>]) -> Result<Prepared, Refusal> {
        Ok(Prepared::empty())
    }
    fn commit(&mut self, _tx: TxId, _prepared: &Prepared) -> Result<(), Failure> {
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }
    fn rollback(&mut self, _tx: TxId) -> Result<(), Failure> {
        Ok(())
    }
}

#[test]
fn late_acknowledgements_are_listed_as_committing() {
    let tmp = tempfile::tempdir().unwrap();
    let bank = Ledger::new();
    bank.create_account("a", 100).unwrap();
    let dtc = dtc::Coordinator::builder()
        .durability(Durability::Sync)
        .dir(tmp.path())
        .segment_size_bytes(1 << 20)
        .call_timeout(Duration::from_millis(50))
        .service("bank", bank)
        .service("shipping", SlowCommit)
        .open()
        .unwrap();
    let tx = dtc.new_tx_id();
    let outcome = dtc.execute_as(tx, &[Transfer::new("bank", "a", "shipping", "parcel-1", 5)]).unwrap();
    assert_eq!(outcome, Outcome::CommitPending);
    dtc.shutdown().unwrap();

    let unfinished = DataDir::new(tmp.path()).unfinished().unwrap();
    assert_eq!(unfinished.len(), 1, "{unfinished:?}");
    assert_eq!((unfinished[0].tx, unfinished[0].state), (tx, "committing"));
    assert_eq!(unfinished[0].participants, ["shipping"]);

    let out =
        Command::new(env!("CARGO_BIN_EXE_dtc")).args(["txs", "--json", "--dir"]).arg(tmp.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["tx"], tx.to_string());
}
