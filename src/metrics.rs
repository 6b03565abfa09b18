//! Counters and latency histograms, cheap enough for the hot path.
//!
//! Counters are relaxed atomics (they order nothing). Histograms are sharded
//! by thread so that recording rarely contends; a snapshot merges the shards.

use std::time::Duration;

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

use crate::sync::{AtomicU64, Mutex, Ordering, THREAD_SHARDS, thread_shard};
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
const SHARDS: usize = THREAD_SHARDS;
/// Highest latency tracked; longer ones are clamped (60 s).
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// A count kept in one cache line per thread shard, so that threads on
/// different cores counting the same thing do not pass one line back and
/// forth on every transaction; reading sums the shards.
pub(crate) struct Striped([CachePadded<AtomicU64>; SHARDS]);

impl Default for Striped {
    fn default() -> Self {
        Self(std::array::from_fn(|_| CachePadded::new(AtomicU64::new(0))))
    }
}

impl Striped {
    pub(crate) fn add(&self, shard: usize, n: u64, order: Ordering) {
        self.0[shard].fetch_add(n, order);
    }
    pub(crate) fn sub(&self, shard: usize, n: u64, order: Ordering) {
        self.0[shard].fetch_sub(n, order);
    }
    pub(crate) fn sum(&self, order: Ordering) -> u64 {
        self.0.iter().map(|c| c.load(order)).fold(0, u64::wrapping_add)
    }
}

#[derive(Default)]
pub(crate) struct Counter(Striped);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        // Relaxed: a statistic, read only for reporting.
        self.0.add(thread_shard(), n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.sum(Ordering::Relaxed)
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
        let mut shard = self.histograms[thread_shard()].lock();
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
            // Gauges of the coordinator's outstanding work, filled in by
            // `Coordinator::metrics`.
            parked_calls: 0,
            unfinished: Vec::new(),
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
    /// Calls parked now (a gauge; `parked` counts every parking).
    pub parked_calls: u64,
    /// Unfinished transactions now by state (`in-doubt`, `committing`,
    /// `rolling-back`, `stuck`): a gauge, as
    /// [`Coordinator::unfinished`](crate::Coordinator::unfinished) lists them.
    pub unfinished: Vec<(&'static str, u64)>,
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

/// Reads one percentile (in microseconds) out of a [`LatencySummary`].
type Percentile = fn(&LatencySummary) -> f64;

/// Quantiles exported for every phase's latency summary, with the matching
/// field of [`LatencySummary`].
const EXPORTED_QUANTILES: [(&str, Percentile); 4] =
    [("0.5", |l| l.p50_us), ("0.9", |l| l.p90_us), ("0.99", |l| l.p99_us), ("0.999", |l| l.p999_us)];

/// Escapes a label value for the text exposition format.
fn label_value(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// A sample value: Prometheus reads Go float syntax, which has no `inf`.
fn sample_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{value}")
    }
}

/// Microseconds as seconds, rounded to the nanosecond (the histogram's
/// unit) so that `0.001925119` does not print as `0.0019251189999999999`.
fn seconds(us: f64) -> f64 {
    let ns = (us * 1_000.0).round();
    // Parsing a number Rust just printed cannot fail; the fallback is the
    // unrounded value.
    format!("{:.9}", ns / 1e9).parse().unwrap_or(us / 1e6)
}

struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        // Writing into a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        use std::fmt::Write;
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", label_value(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", sample_value(value));
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }
}

/// Renders `snapshot` (and the log's counters, in durable mode) in the
/// Prometheus text exposition format (version 0.0.4), ready to serve as
/// `text/plain; version=0.0.4` from the caller's own HTTP endpoint.
///
/// Families: `dtc_transactions_total{outcome, reason}`, `dtc_retries_total`,
/// `dtc_timeouts_total`, `dtc_panics_total`, `dtc_parked_total`,
/// `dtc_protocol_violations_total`, `dtc_phase_latency_seconds{phase,
/// quantile}` (a summary: quantiles 0.5, 0.9, 0.99 and 0.999, `_sum` and
/// `_count`; percentiles come from a histogram with about 1% precision, and
/// `_count` counts timed samples, which can be fewer than transactions:
/// use `dtc_transactions_total` for rates), and
/// with `log`: `dtc_log_syncs_total`, `dtc_log_records_total`,
/// `dtc_log_bytes_written_total`, `dtc_log_records_per_sync` and
/// `dtc_log_segments_live`.
///
/// Gauges: `dtc_parked_calls` and `dtc_unfinished_transactions{state}`
/// (`in-doubt`, `committing`, `rolling-back`, `stuck`), filled in by
/// [`Coordinator::metrics`](crate::Coordinator::metrics).
///
/// ```
/// use std::io::{BufRead, BufReader, Read, Write};
/// use std::net::{TcpListener, TcpStream};
///
/// use dtc::{Coordinator, Ledger, Transfer, ops::render_prometheus};
///
/// let ledger = Ledger::new();
/// ledger.create_account("a", 100).unwrap();
/// ledger.create_account("b", 0).unwrap();
/// let dtc = Coordinator::builder().service("bank", ledger).open().unwrap();
/// dtc.execute(&[Transfer::new("bank", "a", "bank", "b", 5)]).unwrap();
///
/// // Your endpoint: answer each scrape with a fresh rendering.
/// fn serve(mut stream: TcpStream, dtc: &Coordinator) -> std::io::Result<()> {
///     let mut request_line = String::new();
///     BufReader::new(&stream).read_line(&mut request_line)?; // "GET /metrics HTTP/1.1"
///     let body = render_prometheus(&dtc.metrics(), dtc.log_stats().as_ref());
///     write!(
///         stream,
///         "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
///         body.len()
///     )
/// }
///
/// let listener = TcpListener::bind("127.0.0.1:0").unwrap();
/// let address = listener.local_addr().unwrap();
/// let server = {
///     let dtc = dtc.clone();
///     std::thread::spawn(move || {
///         // One scrape here; a real server loops over `listener.incoming()`.
///         let (stream, _) = listener.accept().unwrap();
///         serve(stream, &dtc).unwrap();
///     })
/// };
///
/// // What Prometheus does on each scrape.
/// let mut scrape = TcpStream::connect(address).unwrap();
/// scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
/// let mut response = String::new();
/// scrape.read_to_string(&mut response).unwrap();
/// server.join().unwrap();
/// assert!(response.contains("dtc_transactions_total{outcome=\"committed\"} 1\n"));
/// assert!(response.contains("dtc_unfinished_transactions{state=\"in-doubt\"} 0\n"));
/// dtc.shutdown().unwrap();
/// ```
pub fn render_prometheus(snapshot: &MetricsSnapshot, log: Option<&LogStats>) -> String {
    let mut out = Exposition(String::with_capacity(4096));
    out.family("dtc_transactions_total", "counter", "Finished transactions by outcome (and abort reason).");
    out.sample("dtc_transactions_total", &[("outcome", "committed")], snapshot.committed as f64);
    out.sample("dtc_transactions_total", &[("outcome", "commit_pending")], snapshot.commit_pending as f64);
    for (reason, n) in &snapshot.aborted {
        out.sample("dtc_transactions_total", &[("outcome", "aborted"), ("reason", reason)], *n as f64);
    }
    out.counter("dtc_retries_total", "Commit or rollback calls retried after a failure or panic.", snapshot.retries);
    out.counter(
        "dtc_timeouts_total",
        "Prepare votes or commit acknowledgements that missed their timeout.",
        snapshot.timeouts,
    );
    out.counter("dtc_panics_total", "Participant panics caught.", snapshot.panics);
    out.counter(
        "dtc_parked_total",
        "Commits or rollbacks that exhausted their retries and wait for an operator.",
        snapshot.parked,
    );
    out.counter(
        "dtc_protocol_violations_total",
        "Requests the protocol never sends (a coordinator bug if non-zero).",
        snapshot.protocol_violations,
    );
    out.family("dtc_parked_calls", "gauge", "Commit or rollback calls parked now, waiting for an operator.");
    out.sample("dtc_parked_calls", &[], snapshot.parked_calls as f64);
    if !snapshot.unfinished.is_empty() {
        out.family("dtc_unfinished_transactions", "gauge", "Unfinished transactions now, by state.");
    }
    for (state, n) in &snapshot.unfinished {
        out.sample("dtc_unfinished_transactions", &[("state", state)], *n as f64);
    }

    let name = "dtc_phase_latency_seconds";
    if !snapshot.latency.is_empty() {
        out.family(name, "summary", "Latency of each transaction phase (lock_wait, prepare, log, commit, total).");
    }
    for (phase, latency) in &snapshot.latency {
        for (quantile, field) in EXPORTED_QUANTILES {
            out.sample(name, &[("phase", phase), ("quantile", quantile)], seconds(field(latency)));
        }
        let sum_seconds = seconds(latency.mean_us * latency.count as f64);
        out.sample("dtc_phase_latency_seconds_sum", &[("phase", phase)], sum_seconds);
        out.sample("dtc_phase_latency_seconds_count", &[("phase", phase)], latency.count as f64);
    }

    if let Some(log) = log {
        out.counter("dtc_log_syncs_total", "Group-commit syncs of the write-ahead log.", log.syncs);
        out.counter("dtc_log_records_total", "Records appended to the write-ahead log.", log.records);
        out.counter(
            "dtc_log_bytes_written_total",
            "Bytes appended to the write-ahead log (headers and alignment included).",
            log.bytes_written,
        );
        let per_sync = if log.syncs == 0 { 0.0 } else { log.records as f64 / log.syncs as f64 };
        out.family("dtc_log_records_per_sync", "gauge", "Records made durable per sync since start (batching factor).");
        out.sample("dtc_log_records_per_sync", &[], per_sync);
        out.family("dtc_log_segments_live", "gauge", "Write-ahead log segment files live now.");
        out.sample("dtc_log_segments_live", &[], log.segments_live as f64);
    }
    out.0
}

/// Counters of the write-ahead log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    /// Group-commit syncs completed.
    pub syncs: u64,
    /// Records appended.
    pub records: u64,
    /// Bytes appended (headers included).
    pub bytes_written: u64,
    /// Segment files live now.
    pub segments_live: u64,
}
