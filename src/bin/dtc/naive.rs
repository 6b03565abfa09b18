//! The way a newcomer would do it, for comparison in the same binary: one
//! global mutex over per-service hash maps, and in sync mode an append-only
//! file with one `fdatasync` per transaction, under that mutex.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use dtc::{AbortReason, Outcome, Transfer};

use crate::workload::{Shape, System};

/// Per-service balances, and the log file in sync mode.
type State = (Vec<HashMap<String, i64>>, Option<File>);

pub struct Naive {
    state: Mutex<State>,
    services: HashMap<String, usize>,
    next_id: AtomicU64,
}

impl Naive {
    pub fn open(shape: &Shape, log: Option<File>) -> Self {
        let mut maps: Vec<HashMap<String, i64>> = (0..shape.services).map(|_| HashMap::new()).collect();
        for i in 0..shape.accounts {
            maps[(i % shape.services as u64) as usize].insert(format!("acct-{i}"), shape.balance);
        }
        let services = (0..shape.services).map(|s| (crate::workload::service_name(s), s)).collect();
        Self { state: Mutex::new((maps, log)), services, next_id: AtomicU64::new(1) }
    }

    pub fn total(&self) -> (i128, u64) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i128;
        let mut negative = 0;
        for map in &state.0 {
            for v in map.values() {
                total += i128::from(*v);
                negative += u64::from(*v < 0);
            }
        }
        (total, negative)
    }
}

impl System for Naive {
    fn one(&self, legs: &[Transfer<'_>], _track: bool) -> Result<(String, Outcome), String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.state.lock().map_err(|_| "poisoned".to_string())?;
        let (maps, log) = &mut *guard;
        let index = |s: &str| self.services.get(s).copied().ok_or_else(|| format!("unknown service {s}"));
        // Check every debit against the balance net of earlier legs.
        let mut pending: Vec<(usize, &str, i64)> = Vec::new();
        for leg in legs {
            for (svc, acct, delta) in [
                (leg.from.service, leg.from.account, -(leg.amount as i64)),
                (leg.to.service, leg.to.account, leg.amount as i64),
            ] {
                let s = index(svc)?;
                match pending.iter_mut().find(|(ps, pa, _)| *ps == s && *pa == acct) {
                    Some(p) => p.2 += delta,
                    None => pending.push((s, acct, delta)),
                }
            }
        }
        for &(s, acct, delta) in &pending {
            let balance = *maps[s].get(acct).ok_or_else(|| format!("unknown account {acct}"))?;
            if balance + delta < 0 {
                let reason = AbortReason::InsufficientFunds { service: String::new(), account: acct.to_string() };
                return Ok((id.to_string(), Outcome::Aborted(reason)));
            }
        }
        for &(s, acct, delta) in &pending {
            if let Some(b) = maps[s].get_mut(acct) {
                *b += delta;
            }
        }
        if let Some(file) = log {
            let mut line = format!("{id}");
            for &(s, acct, delta) in &pending {
                line.push_str(&format!(" {s}/{acct}/{delta}"));
            }
            line.push('\n');
            file.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
            file.sync_data().map_err(|e| e.to_string())?;
        }
        Ok((id.to_string(), Outcome::Committed))
    }
}
