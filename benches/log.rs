//! Criterion benchmark of the write-ahead log alone: append + group commit
//! (wait until durable) from 1, 4 and 16 threads on a real directory, with
//! each write backend (`pwrite` + `fdatasync`, the default, and the mapping
//! + `msync`), so the sync path of both is measured side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dtc::testing::{FsStorage, Wal, WalConfig};

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("log/append+sync");
    group.sample_size(10);
    for backend in ["pwrite", "mmap"] {
        for threads in [1usize, 4, 16] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let storage = FsStorage::new(tmp.path()).expect("storage");
            // 16 MiB segments: creating them (real zeros) stays quick for
            // `cargo bench -- --test`.
            let config = WalConfig {
                segment_size_bytes: 16 << 20,
                max_segments: 8,
                backend: backend.parse().expect("backend"),
                ..WalConfig::default()
            };
            let (wal, _) = Wal::open(Arc::new(storage), config).expect("open");
            let wal = Arc::new(wal);
            let payload = [7u8; 96];
            group.bench_function(format!("{backend}/{threads}-threads"), |b| {
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
