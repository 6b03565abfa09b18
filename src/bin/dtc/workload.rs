//! The bank workload shared by `dtc demo` and `dtc bench`: S services, N
//! accounts (`acct-<i>` on service `i % S`), random transfers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use dtc::{Coordinator, Ledger, Outcome, Transfer};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub struct Shape {
    pub services: usize,
    pub accounts: u64,
    pub balance: i64,
    pub legs: usize,
}

pub fn service_name(s: usize) -> String {
    format!("svc-{s}")
}

/// One ledger per service, holding its share of the accounts.
pub fn ledgers(shape: &Shape) -> Result<Vec<Ledger>, dtc::Error> {
    let per = (shape.accounts as usize).div_ceil(shape.services);
    let ledgers: Vec<Ledger> = (0..shape.services).map(|_| Ledger::with_capacity(per)).collect();
    let mut name = String::new();
    for i in 0..shape.accounts {
        name.clear();
        let _ = write!(name, "acct-{i}");
        ledgers[(i % shape.services as u64) as usize].create_account(&name, shape.balance)?;
    }
    Ok(ledgers)
}

/// What one thread saw.
pub struct Tally {
    pub committed: u64,
    pub aborted: u64,
    pub errors: u64,
    pub latency_ns: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Self {
        Self {
            committed: 0,
            aborted: 0,
            errors: 0,
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid bounds"),
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.committed += other.committed;
        self.aborted += other.aborted;
        self.errors += other.errors;
        let _ = self.latency_ns.add(&other.latency_ns);
    }
}

/// Random transfers until `stop`; `tick` is called after each transaction.
/// With `ack`, every outcome is appended to that file as `<tx-id> committed`
/// or `<tx-id> aborted` (one `write` per line: no user-space buffering)
/// after it was returned.
pub fn run_thread(
    dtc: &Coordinator,
    shape: &Shape,
    seed: u64,
    thread: usize,
    stop: Instant,
    ack: Option<&std::fs::File>,
    mut tick: impl FnMut(&Outcome),
) -> Tally {
    let mut rng = SmallRng::seed_from_u64(seed ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let services: Vec<String> = (0..shape.services).map(service_name).collect();
    let mut tally = Tally::new();
    let mut names: Vec<String> = vec![String::new(); shape.legs * 2];
    let mut picks: Vec<(u64, u64, u64)> = Vec::with_capacity(shape.legs);
    while Instant::now() < stop {
        picks.clear();
        for _ in 0..shape.legs {
            let from = rng.random_range(0..shape.accounts);
            let mut to = rng.random_range(0..shape.accounts - 1);
            if to >= from {
                to += 1;
            }
            picks.push((from, to, rng.random_range(1..=10)));
        }
        for (k, &(from, to, _)) in picks.iter().enumerate() {
            for (slot, id) in [(2 * k, from), (2 * k + 1, to)] {
                names[slot].clear();
                let _ = write!(names[slot], "acct-{id}");
            }
        }
        let legs: Vec<Transfer<'_>> = picks
            .iter()
            .enumerate()
            .map(|(k, &(from, to, amount))| {
                Transfer::new(
                    &services[(from % shape.services as u64) as usize],
                    &names[2 * k],
                    &services[(to % shape.services as u64) as usize],
                    &names[2 * k + 1],
                    amount,
                )
            })
            .collect();
        let started = Instant::now();
        let id = dtc.new_tx_id();
        match dtc.execute_as(id, &legs) {
            Ok(outcome) => {
                if let Some(mut file) = ack {
                    let line = format!("{id} {}\n", if outcome.is_committed() { "committed" } else { "aborted" });
                    if let Err(error) = file.write_all(line.as_bytes()) {
                        tracing::error!(%error, "cannot write the ack log");
                        tally.errors += 1;
                        break;
                    }
                }
                let _ = tally.latency_ns.record((started.elapsed().as_nanos() as u64).max(1));
                if outcome.is_committed() {
                    tally.committed += 1;
                } else {
                    tally.aborted += 1;
                }
                tick(&outcome);
            }
            Err(error) => {
                tally.errors += 1;
                tracing::error!(%error, "transaction error");
                if matches!(error, dtc::Error::ShuttingDown | dtc::Error::Log(_) | dtc::Error::Corrupt { .. }) {
                    break;
                }
            }
        }
    }
    tally
}

pub fn micros(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64() * 1e6
}
