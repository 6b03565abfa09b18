//! Counters and latency histograms, cheap enough for the hot path.
//!
//! Counters are relaxed atomics (they order nothing). Histograms are sharded
//! by thread so that recording rarely contends; a snapshot merges the shards.

use std::cell::Cell;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::txn::AbortReason;

/// Phases whose latency is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    LockWait = 0,
    Prepare = 1,
    Log = 2,
    Commit = 3,
    Total = 4,
}

const STAGES: [&str; 5] = ["lock_wait", "prepare", "log", "commit", "total"];
const SHARDS: usize = 8;
/// Highest latency tracked; longer ones are clamped (60 s).
const MAX_TRACKED_NS: u64 = 60_000_000_000;

#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        // Relaxed: a statistic, read only for reporting.
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub(crate) struct Metrics {
    pub committed: Counter,
    pub commit_pending: Counter,
    pub aborted: [Counter; AbortReason::CODES.len()],
    pub retries: Counter,
    pub timeouts: Counter,
    pub panics: Counter,
    pub parked: Counter,
    pub violations: Counter,
    histograms: Vec<CachePadded<Mutex<Vec<Histogram<u64>>>>>,
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 2).expect("valid histogram bounds")
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_SHARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn my_shard() -> usize {
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT_SHARD.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS);
        }
        s.get()
    })
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            committed: Counter::default(),
            commit_pending: Counter::default(),
            aborted: Default::default(),
            retries: Counter::default(),
            timeouts: Counter::default(),
            panics: Counter::default(),
            parked: Counter::default(),
            violations: Counter::default(),
            histograms: (0..SHARDS)
                .map(|_| CachePadded::new(Mutex::new(STAGES.iter().map(|_| new_histogram()).collect())))
                .collect(),
        }
    }
}

impl Metrics {
    pub(crate) fn record(&self, stage: Stage, elapsed: Duration) {
        let ns = (elapsed.as_nanos() as u64).clamp(1, MAX_TRACKED_NS);
        let mut shard = self.histograms[my_shard()].lock();
        shard[stage as usize].saturating_record(ns);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let mut merged: Vec<Histogram<u64>> = STAGES.iter().map(|_| new_histogram()).collect();
        for shard in &self.histograms {
            let shard = shard.lock();
            for (m, h) in merged.iter_mut().zip(shard.iter()) {
                // Same bounds everywhere, so adding cannot fail.
                let _ = m.add(h);
            }
        }
        MetricsSnapshot {
            committed: self.committed.get(),
            commit_pending: self.commit_pending.get(),
            aborted: AbortReason::CODES.iter().zip(&self.aborted).map(|(c, n)| (*c, n.get())).collect(),
            retries: self.retries.get(),
            timeouts: self.timeouts.get(),
            panics: self.panics.get(),
            parked: self.parked.get(),
            protocol_violations: self.violations.get(),
            latency: STAGES.iter().zip(&merged).map(|(s, h)| (*s, LatencySummary::of(h))).collect(),
        }
    }
}

/// Latency percentiles of one stage, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
}

impl LatencySummary {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        Self {
            count: h.len(),
            mean_us: h.mean() / 1_000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A point-in-time copy of the coordinator's metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Transactions committed and acknowledged by every participant.
    pub committed: u64,
    /// Transactions decided commit whose acknowledgement came late.
    pub commit_pending: u64,
    /// Aborted transactions by reason code.
    pub aborted: Vec<(&'static str, u64)>,
    /// Commit or rollback calls retried after a failure or panic.
    pub retries: u64,
    /// Prepare votes or commit acknowledgements that missed their timeout.
    pub timeouts: u64,
    /// Participant panics caught.
    pub panics: u64,
    /// Commits or rollbacks that exhausted their retries and wait for an
    /// operator.
    pub parked: u64,
    /// Requests the protocol never sends (a coordinator bug if non-zero).
    pub protocol_violations: u64,
    /// Latency per stage: lock_wait, prepare, log, commit, total.
    pub latency: Vec<(&'static str, LatencySummary)>,
}

impl MetricsSnapshot {
    /// Aborted transactions, all reasons together.
    pub fn aborted_total(&self) -> u64 {
        self.aborted.iter().map(|(_, n)| n).sum()
    }

    /// Latency of one stage by name (`"total"`, `"prepare"`, …).
    pub fn stage(&self, name: &str) -> LatencySummary {
        self.latency.iter().find(|(s, _)| *s == name).map(|(_, l)| *l).unwrap_or_default()
    }
}
