//! Transfers across four bank services whose participants panic and stall
//! now and then, from several threads; then an audit shows that no money was
//! created or lost.
//!
//! Run: `cargo run --example bank`

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use dtc::{
    Coordinator, Ledger, Outcome, Transfer,
    fault::{FaultPlan, Faulty},
};

const BANKS: usize = 4;
const ACCOUNTS_PER_BANK: usize = 50;
const BALANCE: i64 = 1_000;
const THREADS: usize = 4;
const TRANSFERS_PER_THREAD: usize = 400;

fn main() -> ExitCode {
    // Injected panics are caught by the engine; keep the default hook quiet.
    std::panic::set_hook(Box::new(|_| {}));
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e} ({})", e.code());
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, dtc::Error> {
    let names: Vec<String> = (0..BANKS).map(|b| format!("bank-{b}")).collect();
    let mut builder = Coordinator::builder().call_timeout(Duration::from_millis(50));
    let mut counters = Vec::new();
    for (b, name) in names.iter().enumerate() {
        let ledger = Ledger::new();
        for a in 0..ACCOUNTS_PER_BANK {
            ledger.create_account(&format!("acct-{a}"), BALANCE)?;
        }
        // Panics and stalls longer than the call timeout, in every phase.
        let plan = FaultPlan::new(b as u64 + 1).panic(0.01).stall(0.005, Duration::from_millis(80));
        let service = Faulty::new(ledger, plan);
        counters.push(service.counter());
        builder = builder.service(name.clone(), service);
    }
    let dtc = builder.open()?;
    let before = dtc.audit()?;
    println!("{} banks, {} accounts, total {} before", BANKS, before.accounts, before.total);

    let started = Instant::now();
    let outcomes = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (dtc, names) = (&dtc, &names);
                scope.spawn(move || transfers(dtc, names, t as u64))
            })
            .collect();
        let mut all: BTreeMap<&'static str, u64> = BTreeMap::new();
        for worker in workers {
            match worker.join() {
                Ok(Ok(counts)) => counts.into_iter().for_each(|(k, v)| *all.entry(k).or_default() += v),
                Ok(Err(e)) => eprintln!("worker failed: {e}"),
                Err(_) => eprintln!("worker panicked"),
            }
        }
        all
    });
    let elapsed = started.elapsed();
    println!("{} transfers in {:.2?} from {THREADS} threads:", THREADS * TRANSFERS_PER_THREAD, elapsed);
    for (outcome, count) in &outcomes {
        println!("  {outcome:<22} {count}");
    }
    for (name, counter) in names.iter().zip(&counters) {
        let f = counter.get();
        println!("  {name}: injected {} panics, {} stalls", f.panics, f.stalls);
    }

    let audit = dtc.audit()?;
    dtc.shutdown()?;
    let conserved = audit.total == before.total && audit.negative == 0;
    println!(
        "audit: {} accounts, total {} (was {}), negative balances {} -> total conserved: {}",
        audit.accounts,
        audit.total,
        before.total,
        audit.negative,
        if conserved { "yes" } else { "NO" }
    );
    Ok(conserved)
}

/// One thread's transfers between random accounts of random banks.
fn transfers(dtc: &Coordinator, names: &[String], seed: u64) -> Result<BTreeMap<&'static str, u64>, dtc::Error> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |n: usize| {
        // xorshift: enough randomness for picking accounts.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut counts = BTreeMap::new();
    for _ in 0..TRANSFERS_PER_THREAD {
        let (from_bank, to_bank) = (next(BANKS), next(BANKS));
        let (from, mut to) = (next(ACCOUNTS_PER_BANK), next(ACCOUNTS_PER_BANK));
        if from_bank == to_bank && from == to {
            to = (to + 1) % ACCOUNTS_PER_BANK;
        }
        let (from, to) = (format!("acct-{from}"), format!("acct-{to}"));
        let amount = 1 + next(300) as u64;
        let leg = Transfer::new(&names[from_bank], &from, &names[to_bank], &to, amount);
        let label = match dtc.execute(&[leg])? {
            Outcome::Committed => "committed",
            Outcome::CommitPending => "commit pending",
            Outcome::Aborted(reason) => reason.code(),
            _ => "other",
        };
        *counts.entry(label).or_default() += 1;
    }
    Ok(counts)
}
