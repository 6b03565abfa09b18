//! `dtc bench --limits`: what this machine allows, to report the engine as a
//! ratio to it.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[derive(serde::Serialize)]
struct Limits {
    fdatasync_4k_append_p50_us: f64,
    fdatasync_4k_append_p99_us: f64,
    fdatasync_4k_append_syncs_per_s: f64,
    fdatasync_4k_overwrite_p50_us: f64,
    write_mb_per_s_sync_every_64k: f64,
    write_mb_per_s_sync_every_1m: f64,
    channel_round_trip_ns: f64,
    uncontended_lock_unlock_ns: f64,
}

fn sync_latency(path: &Path, overwrite: bool, budget: Duration) -> std::io::Result<(f64, f64, f64)> {
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
    let block = vec![0xabu8; 4096];
    if overwrite {
        for _ in 0..1024 {
            file.write_all(&block)?;
        }
        file.sync_all()?;
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 2).expect("valid bounds");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget && n < 20_000 {
        if overwrite {
            use std::io::Seek as _;
            file.seek(std::io::SeekFrom::Start((n % 1024) * 4096))?;
        }
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        let _ = h.record(t.elapsed().as_nanos() as u64);
        n += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((h.value_at_quantile(0.5) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3, n as f64 / secs))
}

fn bandwidth(path: &Path, chunk: usize, budget: Duration) -> std::io::Result<f64> {
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
    let data = vec![0x5au8; chunk];
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < budget && bytes < 512 << 20 {
        file.write_all(&data)?;
        file.sync_data()?;
        bytes += chunk as u64;
    }
    Ok(bytes as f64 / 1e6 / started.elapsed().as_secs_f64())
}

fn channel_round_trip() -> f64 {
    let (to, from_main) = crossbeam_channel::bounded::<u64>(1);
    let (back, from_echo) = crossbeam_channel::bounded::<u64>(1);
    let echo = std::thread::spawn(move || {
        while let Ok(v) = from_main.recv() {
            if back.send(v).is_err() {
                break;
            }
        }
    });
    let rounds = 100_000u64;
    let started = Instant::now();
    for i in 0..rounds {
        if to.send(i).is_err() || from_echo.recv().is_err() {
            break;
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / rounds as f64;
    drop(to);
    let _ = echo.join();
    ns
}

fn lock_unlock() -> f64 {
    let lock = parking_lot::Mutex::new(0u64);
    let rounds = 10_000_000u64;
    let started = Instant::now();
    for _ in 0..rounds {
        *std::hint::black_box(&lock).lock() += 1;
    }
    started.elapsed().as_nanos() as f64 / rounds as f64
}

pub fn run(dir: Option<&Path>, json: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let dir = dir.ok_or("--limits needs --dir (where to measure the disk)")?;
    std::fs::create_dir_all(dir)?;
    let probe = dir.join("limits.probe");
    let budget = Duration::from_secs(2);
    let (p50, p99, rate) = sync_latency(&probe, false, budget)?;
    let (over_p50, _, _) = sync_latency(&probe, true, budget)?;
    let bw64 = bandwidth(&probe, 64 << 10, budget)?;
    let bw1m = bandwidth(&probe, 1 << 20, budget)?;
    let _ = std::fs::remove_file(&probe);
    let limits = Limits {
        fdatasync_4k_append_p50_us: p50,
        fdatasync_4k_append_p99_us: p99,
        fdatasync_4k_append_syncs_per_s: rate,
        fdatasync_4k_overwrite_p50_us: over_p50,
        write_mb_per_s_sync_every_64k: bw64,
        write_mb_per_s_sync_every_1m: bw1m,
        channel_round_trip_ns: channel_round_trip(),
        uncontended_lock_unlock_ns: lock_unlock(),
    };
    if json {
        println!("{}", serde_json::to_string(&limits)?);
    } else {
        println!("4 KiB append + fdatasync: p50 {p50:.0} µs, p99 {p99:.0} µs, {rate:.0} syncs/s");
        println!("4 KiB overwrite + fdatasync: p50 {over_p50:.0} µs");
        println!("sequential write: {bw64:.0} MB/s syncing every 64 KiB, {bw1m:.0} MB/s every 1 MiB");
        println!(
            "channel round trip: {:.0} ns; uncontended lock/unlock: {:.1} ns",
            limits.channel_round_trip_ns, limits.uncontended_lock_unlock_ns
        );
    }
    Ok(ExitCode::SUCCESS)
}
