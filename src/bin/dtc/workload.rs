//! The bank workload shared by `dtc demo` and `dtc bench`: S services, N
//! accounts (`acct-<i>` on service `i % S`), random transfers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use dtc::{Coordinator, Ledger, Outcome, Transfer};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

pub struct Shape {
    pub services: usize,
    pub accounts: u64,
    pub balance: i64,
    pub legs: usize,
    /// Zipf exponent for choosing accounts; `None` for uniform.
    pub skew: Option<f64>,
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

/// Every account resolved once (`dtc bench --handles`), so transfers are
/// built without formatting a name: dtc's [`dtc::Account`] handles, or for
/// the naive baseline the same names prebuilt.
pub enum Accounts {
    Handles(Vec<dtc::Account>),
    Names { services: Vec<String>, ids: Vec<String> },
}

impl Accounts {
    pub fn handles(dtc: &Coordinator, shape: &Shape) -> Result<Self, dtc::Error> {
        let handles = (0..shape.accounts)
            .map(|i| dtc.account(&service_name((i % shape.services as u64) as usize), &format!("acct-{i}")))
            .collect::<Result<_, _>>()?;
        Ok(Accounts::Handles(handles))
    }

    pub fn names(shape: &Shape) -> Self {
        Accounts::Names {
            services: (0..shape.services).map(service_name).collect(),
            ids: (0..shape.accounts).map(|i| format!("acct-{i}")).collect(),
        }
    }

    fn transfer(&self, from: u64, to: u64, amount: u64) -> Transfer<'_> {
        match self {
            Accounts::Handles(handles) => Transfer::between(&handles[from as usize], &handles[to as usize], amount),
            Accounts::Names { services, ids } => {
                let service = |i: u64| services[(i % services.len() as u64) as usize].as_str();
                Transfer::new(service(from), &ids[from as usize], service(to), &ids[to as usize], amount)
            }
        }
    }
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

    fn count(&mut self, outcome: &Outcome) {
        if outcome.is_committed() {
            self.committed += 1;
        } else {
            self.aborted += 1;
        }
    }
}

/// Random legs over the shape's accounts, reproducible from a seed.
pub struct Generator<'s> {
    shape: &'s Shape,
    rng: SmallRng,
    zipf: Option<Zipf<f64>>,
    services: Vec<String>,
    names: Vec<String>,
    picks: Vec<(u64, u64, u64)>,
    accounts: Option<&'s Accounts>,
}

impl<'s> Generator<'s> {
    /// With `accounts`, transfers name the prebuilt accounts.
    pub fn new(shape: &'s Shape, seed: u64, thread: usize, accounts: Option<&'s Accounts>) -> Self {
        let rng = SmallRng::seed_from_u64(seed ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let zipf = shape.skew.and_then(|s| Zipf::new(shape.accounts as f64, s).ok());
        Self {
            shape,
            rng,
            zipf,
            services: (0..shape.services).map(service_name).collect(),
            names: Vec::new(),
            picks: Vec::new(),
            accounts,
        }
    }

    fn account(&mut self) -> u64 {
        match &self.zipf {
            // Zipf ranks start at 1; rank 1 is the hottest account.
            Some(z) => (z.sample(&mut self.rng) as u64).clamp(1, self.shape.accounts) - 1,
            None => self.rng.random_range(0..self.shape.accounts),
        }
    }

    /// Draws the next transaction's (from, to, amount) legs.
    pub fn draw(&mut self) -> &[(u64, u64, u64)] {
        self.picks.clear();
        for _ in 0..self.shape.legs {
            let from = self.account();
            let mut to = self.account();
            if to == from {
                to = (from + 1 + self.rng.random_range(0..self.shape.accounts - 1)) % self.shape.accounts;
            }
            let amount = self.rng.random_range(1..=10);
            self.picks.push((from, to, amount));
        }
        &self.picks
    }

    /// Draws `count` transactions and hands their transfers to `f` (two
    /// allocations per call, whatever `count`: the harness should cost
    /// little beside what it measures).
    pub fn with_transfers<R>(&mut self, count: usize, f: impl FnOnce(&[&[Transfer<'_>]]) -> R) -> R {
        let legs = self.shape.legs;
        let mut picks = Vec::with_capacity(count * legs);
        for _ in 0..count {
            picks.extend_from_slice(self.draw());
        }
        let flat: Vec<Transfer<'_>> = match self.accounts {
            Some(accounts) => picks.iter().map(|&(from, to, amount)| accounts.transfer(from, to, amount)).collect(),
            None => {
                self.names.resize(picks.len() * 2, String::new());
                for (k, &(from, to, _)) in picks.iter().enumerate() {
                    for (slot, id) in [(2 * k, from), (2 * k + 1, to)] {
                        self.names[slot].clear();
                        let _ = write!(self.names[slot], "acct-{id}");
                    }
                }
                let s = self.shape.services as u64;
                let service = |id: u64| self.services[(id % s) as usize].as_str();
                picks
                    .iter()
                    .enumerate()
                    .map(|(k, &(from, to, amount))| {
                        Transfer::new(service(from), &self.names[2 * k], service(to), &self.names[2 * k + 1], amount)
                    })
                    .collect()
            }
        };
        let txs: Vec<&[Transfer<'_>]> = flat.chunks(legs).collect();
        f(&txs)
    }
}

/// Anything the bench can drive: dtc or the naive baseline.
pub trait System: Sync {
    /// Runs one transaction; with `track`, under an id returned for the ack log.
    fn one(&self, legs: &[Transfer<'_>], track: bool) -> Result<(String, Outcome), String>;
    /// Runs a batch; the default runs them one by one.
    fn batch(&self, txs: &[&[Transfer<'_>]]) -> Result<Vec<Outcome>, String> {
        txs.iter().map(|legs| self.one(legs, false).map(|(_, o)| o)).collect()
    }
}

impl System for Coordinator {
    fn one(&self, legs: &[Transfer<'_>], track: bool) -> Result<(String, Outcome), String> {
        if !track {
            return self.execute(legs).map(|o| (String::new(), o)).map_err(|e| e.to_string());
        }
        let id = self.new_tx_id();
        self.execute_as(id, legs).map(|o| (id.to_string(), o)).map_err(|e| e.to_string())
    }

    fn batch(&self, txs: &[&[Transfer<'_>]]) -> Result<Vec<Outcome>, String> {
        let results = self.execute_batch(txs).map_err(|e| e.to_string())?;
        results.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
    }
}

/// Random transfers until `stop`, `batch` transactions per call; `tick`
/// gets the number of transactions done after each call. With `ack`, every
/// outcome is appended to that file as `<tx-id> committed` or `<tx-id>
/// aborted` (one `write` per line: no user-space buffering) after it was
/// returned (single transactions only).
#[allow(clippy::too_many_arguments)]
pub fn run_thread(
    system: &dyn System,
    shape: &Shape,
    seed: u64,
    thread: usize,
    stop: Instant,
    batch: usize,
    ack: Option<&std::fs::File>,
    accounts: Option<&Accounts>,
    mut tick: impl FnMut(u64),
) -> Tally {
    let mut generator = Generator::new(shape, seed, thread, accounts);
    let mut tally = Tally::new();
    while Instant::now() < stop {
        let started = Instant::now();
        let result = generator.with_transfers(batch, |txs| {
            if batch == 1 {
                system.one(txs[0], ack.is_some()).map(|(id, o)| vec![(id, o)])
            } else {
                system.batch(txs).map(|os| os.into_iter().map(|o| (String::new(), o)).collect())
            }
        });
        match result {
            Ok(outcomes) => {
                let _ = tally.latency_ns.record((started.elapsed().as_nanos() as u64).max(1));
                for (id, outcome) in &outcomes {
                    if let Some(mut file) = ack {
                        let line = format!("{id} {}\n", if outcome.is_committed() { "committed" } else { "aborted" });
                        if let Err(error) = file.write_all(line.as_bytes()) {
                            tracing::error!(%error, "cannot write the ack log");
                            tally.errors += 1;
                            return tally;
                        }
                    }
                    tally.count(outcome);
                }
                tick(outcomes.len() as u64);
            }
            Err(error) => {
                tally.errors += 1;
                tracing::error!(%error, "transaction error");
                break;
            }
        }
    }
    tally
}

pub fn micros(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64() * 1e6
}
