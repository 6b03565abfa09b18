//! A stuck commit, seen and fixed by an operator. A shop's `shipping`
//! service accepts orders (prepare) but its carrier API is down when the
//! commit comes: the commit is retried per the service's policy, then parked.
//! The operator lists it (`Coordinator::unfinished`, or `dtc txs --dir D`
//! from another terminal), retries it once the carrier is back
//! (`retry_now`), and resolves a second one that was booked by phone
//! (`resolve`). An attempt to abort a decided commit is refused.
//!
//! Run: `cargo run --example stuck`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dtc::{
    BranchId, Coordinator, Durability, Error, Failure, Ledger, Outcome, Participant, Refusal, RetryPolicy, Transfer,
    TxId, Work,
    ops::{Resolution, TxState},
};

/// Books parcels with a carrier that may be down.
struct Shipping {
    carrier_up: Arc<AtomicBool>,
}

impl Participant for Shipping {
    type Prepared = ();
    fn prepare(&mut self, _branch: BranchId, _work: Work<'_>) -> Result<(), Refusal> {
        Ok(())
    }
    fn commit(&mut self, _branch: BranchId, _prepared: &()) -> Result<(), Failure> {
        if self.carrier_up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Failure::with_code("carrier_down", "carrier API returned 503"))
        }
    }
    fn rollback(&mut self, _branch: BranchId, _prepared: Option<&()>) -> Result<(), Failure> {
        Ok(())
    }
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let carrier_up = Arc::new(AtomicBool::new(false));
    let payments = Ledger::new();
    payments.create_account("alice", 100)?;
    let dtc = Coordinator::builder()
        .durability(Durability::Sync)
        .dir(dir.path())
        .service("payments", payments)
        .service("shipping", Shipping { carrier_up: carrier_up.clone() })
        // Three calls a few milliseconds apart, then park: never forever.
        .retry_for("shipping", RetryPolicy::new(Duration::from_millis(2), Duration::from_millis(10), 3))
        .open()?;

    let order = |dtc: &Coordinator| -> Result<TxId, Box<dyn std::error::Error>> {
        let tx = dtc.new_tx_id();
        let outcome = dtc.execute_as(tx, &[Transfer::new("payments", "alice", "shipping", "parcel", 10)])?;
        println!("order {tx}: {outcome:?} (the decision is commit; shipping has not applied it)");
        assert_eq!(outcome, Outcome::CommitPending);
        Ok(tx)
    };
    let first = order(&dtc)?;
    let second = order(&dtc)?;
    wait_until("both commits to park", || dtc.parked_count() == 2)?;

    println!("\nunfinished transactions:");
    for u in dtc.unfinished() {
        for p in &u.participants {
            let error = p.last_error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_default();
            println!(
                "  {} {} — {} {} after {} attempts ({error})",
                u.tx,
                u.state.as_str(),
                p.name,
                p.phase,
                p.attempts
            );
        }
        assert_eq!(u.state, TxState::Stuck);
    }

    match dtc.resolve(first, Resolution::Abort, "customer changed their mind") {
        Err(Error::UnsafeResolution { reason, .. }) => println!("\nabort refused: {reason}"),
        other => return Err(format!("an abort of a decided commit must be refused, got {other:?}").into()),
    }

    println!("\nthe carrier is back: retry the first order now");
    carrier_up.store(true, Ordering::SeqCst);
    dtc.retry_now(first, "carrier API recovered (incident 1234)")?;
    println!("the second was booked by phone meanwhile: resolve it as committed");
    let report = dtc.resolve(second, Resolution::Commit, "booked by phone, ticket 42")?;
    println!("  {}: {}", report.tx, report.note);
    wait_until("nothing left unfinished", || dtc.unfinished().is_empty())?;
    println!("\nunfinished transactions: none; parked calls now: {}", dtc.parked_count());
    dtc.shutdown()?;
    Ok(ExitCode::SUCCESS)
}
