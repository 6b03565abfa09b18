//! Criterion benchmark of the id archive on a real directory: writing a run
//! of 100 000 ids, and looking up present and absent ids in one large run,
//! in 64 time-ordered runs (disjoint ranges: one run searched) and in 64
//! interleaved runs (every range covers every id: the worst case); and the
//! steady state of flushes with compaction and expiry.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use dtc::testing::{FsStorage, IdArchive, Remembered};
use dtc::{AbortReason, TxId};

const NOW_NS: u64 = 1_700_000_000_000_000_000;
/// 30 000 ids per second.
const STEP_NS: u64 = 33_333;
const HORIZON: Duration = Duration::from_secs(86_400);

/// Id `n` of a stream at 30 000 ids per second; even counters only, so
/// `absent(n)` lies inside the same ranges.
fn tx(n: u64) -> TxId {
    TxId::from_u128(u128::from(NOW_NS + n * STEP_NS) << 64 | u128::from(2 * n))
}

fn absent(n: u64) -> TxId {
    TxId::from_u128(tx(n).as_u128() + 1)
}

/// One in ten aborted, as in the module docs' size figures.
fn entry(n: u64) -> Remembered {
    let aborted = n
        .is_multiple_of(10)
        .then(|| AbortReason::InsufficientFunds { service: "svc-3".into(), account: format!("acct-{n}") });
    Remembered { tx: tx(n), fingerprint: n + 1, aborted }
}

fn archive_in(dir: &tempfile::TempDir) -> IdArchive {
    IdArchive::open(Arc::new(FsStorage::new(dir.path()).expect("storage")), HORIZON).expect("open")
}

fn add_run(c: &mut Criterion) {
    let mut group = c.benchmark_group("ids/add_run");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = archive_in(&dir);
    let entries: Vec<Remembered> = (0..100_000).map(entry).collect();
    group.throughput(criterion::Throughput::Elements(entries.len() as u64));
    group.bench_function("100000-ids", |b| {
        b.iter_batched(
            || {
                // Keep the directory small: drop every run between samples.
                archive.expire(u64::MAX).expect("expire");
                entries.clone()
            },
            |entries| archive.add_run(entries).expect("add_run"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// `runs` runs of `per_run` ids; `interleaved` puts id n in run n % runs.
fn filled(runs: u64, per_run: u64, interleaved: bool) -> (tempfile::TempDir, IdArchive, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = archive_in(&dir);
    let total = runs * per_run;
    for run in 0..runs {
        let ids: Vec<Remembered> = if interleaved {
            (0..per_run).map(|i| entry(i * runs + run)).collect()
        } else {
            (run * per_run..(run + 1) * per_run).map(entry).collect()
        };
        archive.add_run(ids).expect("add_run");
    }
    (dir, archive, total)
}

fn get(c: &mut Criterion) {
    let mut group = c.benchmark_group("ids/get");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (label, runs, per_run, interleaved) in [
        ("1-run-of-1000000", 1, 1_000_000, false),
        ("64-runs-ordered", 64, 16_000, false),
        ("64-runs-interleaved", 64, 16_000, true),
    ] {
        let (_dir, archive, total) = filled(runs, per_run, interleaved);
        // A fixed pseudo-random walk over the ids, so pages are not all hot.
        let mut n = 0u64;
        let mut next = move || {
            n = (n + 7_919_993) % total;
            n
        };
        group.bench_function(format!("{label}/present"), |b| {
            b.iter(|| archive.get(tx(next())).expect("get").expect("present"))
        });
        group.bench_function(format!("{label}/absent"), |b| {
            b.iter(|| assert!(archive.get(absent(next())).expect("get").is_none()))
        });
    }
    group.finish();
}

/// The steady state of a coordinator: flushes of 20 000 ids, each followed
/// by `compact` and `expire`, with a horizon of 60 s of id time (1.8 million
/// ids live), so merges of every size are included, amortised.
fn flush_and_compact(c: &mut Criterion) {
    const PER_FLUSH: u64 = 20_000;
    let mut group = c.benchmark_group("ids/steady");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(criterion::Throughput::Elements(PER_FLUSH));
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(FsStorage::new(dir.path()).expect("storage"));
    let archive = IdArchive::open(storage, Duration::from_secs(60)).expect("open");
    let next = std::cell::Cell::new(0u64);
    group.bench_function("flush-20000+compact+expire", |b| {
        b.iter_batched(
            || {
                let start = next.get();
                next.set(start + PER_FLUSH);
                (start..start + PER_FLUSH).map(entry).collect::<Vec<_>>()
            },
            |entries| {
                archive.add_run(entries).expect("add_run");
                archive.compact().expect("compact");
                archive.expire(tx(next.get()).timestamp_ns()).expect("expire");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let stats = archive.stats();
    eprintln!(
        "ids/steady: {} flushes, {} runs live, {} ids live, write amplification {:.2}",
        next.get() / PER_FLUSH,
        stats.runs,
        stats.ids,
        stats.bytes_merged as f64 / stats.bytes_added.max(1) as f64
    );
}

criterion_group!(benches, add_run, get, flush_and_compact);
criterion_main!(benches);
