//! An e-commerce checkout through closure participants: each service is
//! three closures (prepare, commit, rollback) registered for one
//! transaction. The first order commits, with prepare outputs (a
//! reservation, an authorization, a shipping quote) feeding the commits. In
//! the second, the shipping partner does not answer in time: everyone is
//! rolled back, and so is the shipping quote once it arrives late.
//!
//! Run: `cargo run --example closures`

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use dtc::{
    closure::{ClosureError, ClosureOutcome, ClosureParticipant, ClosureTx, closure_stats},
    saga::IdempotencyKey,
};

#[derive(Debug, Clone)]
struct Reservation {
    id: String,
    units: u32,
}

#[derive(Debug, Clone)]
struct Authorization {
    code: String,
    cents: u64,
}

#[derive(Debug, Clone)]
struct Quote {
    carrier: &'static str,
    cents: u64,
}

fn short(key: &IdempotencyKey) -> String {
    // The transaction id is long; keep the digits that differ per
    // transaction, and the participant and phase.
    let text = key.as_str();
    match (text.get(8..16), text.get(32..)) {
        (Some(id), Some(rest)) => format!("{id}…{rest}"),
        _ => text.to_string(),
    }
}

fn inventory(stock: Arc<AtomicU32>, units: u32) -> ClosureParticipant {
    let commit_stock = stock.clone();
    ClosureParticipant::new(
        "inventory",
        units,
        move |key, &units: &u32| {
            let left = stock.load(Ordering::SeqCst);
            if left < units {
                return Err(format!("only {left} left"));
            }
            let reservation = Reservation { id: format!("res-{}", key.as_str().len()), units };
            println!("  inventory prepare [{}]: reserved {units} units as {}", short(key), reservation.id);
            Ok(reservation)
        },
        move |key, reservation: &Reservation| {
            commit_stock.fetch_sub(reservation.units, Ordering::SeqCst);
            println!("  inventory commit  [{}]: {} taken from stock", short(key), reservation.id);
            Ok(())
        },
        |key, reservation: Option<&Reservation>| {
            println!("  inventory rollback[{}]: released {:?}", short(key), reservation.map(|r| &r.id));
            Ok(())
        },
    )
}

fn payment(cents: u64) -> ClosureParticipant {
    ClosureParticipant::new(
        "payment",
        cents,
        |key, &cents: &u64| {
            let auth = Authorization { code: "AUTH-7731".into(), cents };
            println!("  payment   prepare [{}]: authorized {cents} cents ({})", short(key), auth.code);
            Ok::<_, String>(auth)
        },
        |key, auth: &Authorization| {
            println!("  payment   commit  [{}]: captured {} cents of {}", short(key), auth.cents, auth.code);
            Ok(())
        },
        |key, auth: Option<&Authorization>| {
            println!("  payment   rollback[{}]: voided {:?}", short(key), auth.map(|a| &a.code));
            Ok(())
        },
    )
}

fn shipping(delay: Duration) -> ClosureParticipant {
    ClosureParticipant::new(
        "shipping",
        delay,
        |key, &delay: &Duration| {
            std::thread::sleep(delay);
            let quote = Quote { carrier: "ParcelCo", cents: 499 };
            println!("  shipping  prepare [{}]: quoted {} cents with {}", short(key), quote.cents, quote.carrier);
            Ok::<_, String>(quote)
        },
        |key, quote: &Quote| {
            println!("  shipping  commit  [{}]: booked {} for {} cents", short(key), quote.carrier, quote.cents);
            Ok(())
        },
        |key, quote: Option<&Quote>| {
            println!("  shipping  rollback[{}]: cancelled quote {:?}", short(key), quote.map(|q| q.carrier));
            Ok(())
        },
    )
    .timeout(Duration::from_millis(100))
}

fn checkout(label: &str, stock: &Arc<AtomicU32>, shipping_delay: Duration) -> Result<ClosureOutcome, ClosureError> {
    let mut tx = ClosureTx::new();
    println!("{label} (transaction {})", tx.id());
    tx.add(inventory(stock.clone(), 2))?;
    tx.add(payment(5_998))?;
    tx.add(shipping(shipping_delay))?;
    let outcome = tx.commit()?;
    match &outcome {
        ClosureOutcome::Committed => println!("  => committed; stock now {}", stock.load(Ordering::SeqCst)),
        ClosureOutcome::RolledBack(cause) => {
            println!("  => rolled back ({}): {cause}; stock still {}", cause.code(), stock.load(Ordering::SeqCst))
        }
        other => println!("  => {other:?}"),
    }
    Ok(outcome)
}

fn main() -> ExitCode {
    let stock = Arc::new(AtomicU32::new(10));
    let run = || -> Result<bool, ClosureError> {
        let first = checkout("order 1: everything answers", &stock, Duration::from_millis(10))?;
        println!();
        let second = checkout("order 2: the shipping partner hangs for 400 ms", &stock, Duration::from_millis(400))?;
        // The abandoned shipping prepare answers later and is rolled back too.
        std::thread::sleep(Duration::from_millis(500));
        let stats = closure_stats();
        println!(
            "\nprepares timed out: {}, late prepares rolled back: {}",
            stats.prepares_timed_out, stats.late_rollbacks
        );
        Ok(first == ClosureOutcome::Committed && matches!(second, ClosureOutcome::RolledBack(_)))
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("unexpected outcome");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e} ({})", e.code());
            ExitCode::FAILURE
        }
    }
}
