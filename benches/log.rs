//! Criterion benchmark of the write-ahead log alone: append + group commit
//! (wait until durable) from 1, 4 and 16 threads on a real directory, with
//! each write backend (`pwrite` and `fdatasync`, the default, or the mapping
//! and `msync`), so the sync path of both is measured side by side; and with
//! one sync at a time against overlapping syncs (the default, 2 in flight).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dtc::testing::{FsStorage, Wal, WalConfig};

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("log/append+sync");
    group.sample_size(10);
    let cases = [("pwrite", 2), ("mmap", 2), ("pwrite", 1)];
    for (backend, syncs_in_flight) in cases {
        // One sync at a time only where overlap can matter.
        let thread_counts: &[usize] = if syncs_in_flight == 1 { &[4, 16] } else { &[1, 4, 16] };
        for &threads in thread_counts {
            let tmp = tempfile::tempdir().expect("tempdir");
            let storage = FsStorage::new(tmp.path()).expect("storage");
            // 16 MiB segments: creating them (real zeros) stays quick for
            // `cargo bench -- --test`.
            let config = WalConfig {
                segment_size_bytes: 16 << 20,
                max_segments: 8,
                backend: backend.parse().expect("backend"),
                syncs_in_flight,
                ..WalConfig::default()
            };
            let (wal, _) = Wal::open(Arc::new(storage), config).expect("open");
            let wal = Arc::new(wal);
            let payload = [7u8; 96];
            let name = if syncs_in_flight == 1 { format!("{backend}-one-sync") } else { backend.to_string() };
            group.bench_function(format!("{name}/{threads}-threads"), |b| {
                // One iteration: every thread appends one record and waits for it.
                b.iter_custom(|iterations| {
                    let started = Instant::now();
                    std::thread::scope(|scope| {
                        for _ in 0..threads {
                            let wal = wal.clone();
                            scope.spawn(move || {
                                for _ in 0..iterations {
                                    let lsn = wal.append(1, &payload).expect("append");
                                    wal.wait_durable(lsn).expect("durable");
                                }
                            });
                        }
                    });
                    let elapsed = started.elapsed();
                    // Time per record, comparable across thread counts.
                    Duration::from_secs_f64(elapsed.as_secs_f64() / threads as f64)
                });
                // Keep the log bounded across iterations.
                let end = wal.end_lsn();
                let _ = wal.checkpoint(end, b"bench");
            });
        }
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
