//! `dtc bench --limits`: what this machine allows, to report the engine as a
//! ratio to it, and where a sync's time goes (the "sync path" probes).

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
    fdatasync_4k_overwrite_p99_us: f64,
    /// Every way of making 4 KiB durable, measured interleaved in this run.
    #[serde(flatten)]
    sync_path: SyncPath,
    write_mb_per_s_sync_every_64k: f64,
    write_mb_per_s_sync_every_1m: f64,
    /// Sequential `pwrite` over a preallocated file with an `fdatasync`
    /// every 128 KiB: what the log does with a batch of 1 000 transfers.
    write_mb_per_s_overwrite_sync_every_128k: f64,
    channel_round_trip_ns: f64,
    uncontended_lock_unlock_ns: f64,
    http: HttpLimits,
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

/// Like `bandwidth`, over the preallocated probe file (cycling through it)
/// as the log writes its preallocated segments: no allocation, no size
/// change for a sync to carry.
fn overwrite_bandwidth(path: &Path, chunk: usize, budget: Duration) -> std::io::Result<f64> {
    use std::os::unix::fs::FileExt as _;
    assert!(PROBE_FILE_BYTES.is_multiple_of(chunk as u64), "chunks divide the probe file");
    let file = preallocated(path, 0)?;
    let data = vec![0x5au8; chunk];
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < budget && bytes < 512 << 20 {
        // Chunks divide the file: every write is whole and inside it.
        file.write_all_at(&data, bytes % PROBE_FILE_BYTES)?;
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
    let (over_p50, over_p99, _) = sync_latency(&probe, true, budget)?;
    let bw64 = bandwidth(&probe, 64 << 10, budget)?;
    let bw1m = bandwidth(&probe, 1 << 20, budget)?;
    let over128k = overwrite_bandwidth(&probe, 128 << 10, budget)?;
    let _ = std::fs::remove_file(&probe);
    let limits = Limits {
        fdatasync_4k_append_p50_us: p50,
        fdatasync_4k_append_p99_us: p99,
        fdatasync_4k_append_syncs_per_s: rate,
        fdatasync_4k_overwrite_p50_us: over_p50,
        fdatasync_4k_overwrite_p99_us: over_p99,
        sync_path: sync_path(dir, budget)?,
        write_mb_per_s_sync_every_64k: bw64,
        write_mb_per_s_sync_every_1m: bw1m,
        write_mb_per_s_overwrite_sync_every_128k: over128k,
        channel_round_trip_ns: channel_round_trip(),
        uncontended_lock_unlock_ns: lock_unlock(),
        http: http_limits(Duration::from_secs(1))?,
    };
    if json {
        println!("{}", serde_json::to_string(&limits)?);
    } else {
        println!("4 KiB append + fdatasync: p50 {p50:.0} µs, p99 {p99:.0} µs, {rate:.0} syncs/s");
        println!("4 KiB overwrite + fdatasync: p50 {over_p50:.0} µs, p99 {over_p99:.0} µs");
        limits.sync_path.print();
        println!("sequential write: {bw64:.0} MB/s syncing every 64 KiB, {bw1m:.0} MB/s every 1 MiB");
        println!("sequential overwrite of preallocated space: {over128k:.0} MB/s syncing every 128 KiB");
        println!(
            "channel round trip: {:.0} ns; uncontended lock/unlock: {:.1} ns",
            limits.channel_round_trip_ns, limits.uncontended_lock_unlock_ns
        );
        let h = &limits.http;
        println!(
            "loopback HTTP, empty handler, kept-alive connection: round trip p50 {:.1} µs, p99 {:.1} µs; {:.0} requests/s from 1 client, {:.0} from {} clients",
            h.round_trip_p50_us,
            h.round_trip_p99_us,
            h.requests_per_s_1_client,
            h.requests_per_s_many_clients,
            h.clients
        );
    }
    Ok(ExitCode::SUCCESS)
}

// ---- Loopback HTTP: the ceiling of remote participants on this machine ----

/// What loopback HTTP costs here: `dtc::http::Server` with an empty handler,
/// `ureq` clients on kept-alive connections, both in this process (the
/// coordinator and its participants share these cores the same way).
#[derive(serde::Serialize, Default)]
pub struct HttpLimits {
    round_trip_p50_us: f64,
    round_trip_p99_us: f64,
    requests_per_s_1_client: f64,
    requests_per_s_many_clients: f64,
    clients: u32,
}

fn http_limits(budget: Duration) -> Result<HttpLimits, Box<dyn std::error::Error>> {
    use dtc::http::{Request, Response, Server, ServerConfig};
    const CLIENTS: u32 = 16;
    let config = ServerConfig { handler_threads: 8, max_connections: 256, ..ServerConfig::default() };
    let server = Server::start("127.0.0.1:0", config, |_: &Request| Response::empty(200))?;
    let url = format!("http://{}/", server.local_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(CLIENTS as usize)
        .build()
        .into();
    let call = |agent: &ureq::Agent| -> bool { agent.post(&url).send(&b""[..]).is_ok_and(|r| r.status() == 200) };
    // Warm up the connection, then one client in a loop.
    call(&agent);
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 2).expect("valid bounds");
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < budget && n < 200_000 {
        let t = Instant::now();
        if !call(&agent) {
            return Err("the loopback HTTP probe failed".into());
        }
        let _ = h.record(t.elapsed().as_nanos() as u64);
        n += 1;
    }
    let one = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let total: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (agent, call) = (&agent, &call);
                scope.spawn(move || {
                    let mut n = 0u64;
                    while started.elapsed() < budget && n < 200_000 && call(agent) {
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let many = total as f64 / started.elapsed().as_secs_f64();
    server.stop();
    Ok(HttpLimits {
        round_trip_p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
        round_trip_p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
        requests_per_s_1_client: one,
        requests_per_s_many_clients: many,
        clients: CLIENTS,
    })
}

// ---- The sync path: where a durable 4 KiB write's time goes ----

/// Bytes of each probe file: preallocated (written with real zeros and
/// synced) before any measurement, so no probe allocates blocks or changes
/// a file's length.
const PROBE_FILE_BYTES: u64 = 16 << 20;
const BLOCK_BYTES: usize = 4096;
/// A log-shaped record: what one small transfer appends.
const RECORD_BYTES: usize = 128;
/// The log's sync marker (header + u64).
const MARKER_BYTES: usize = 40;
/// Iterations of one probe before the next probe runs: the probes take
/// turns so that the machine's drift hits them all alike.
const ROUND_ITERATIONS: u64 = 50;
/// Most iterations of one probe.
const MAX_ITERATIONS: u64 = 20_000;

/// Same-run figures of every way to make bytes durable, in microseconds.
#[derive(serde::Serialize, Default)]
pub struct SyncPath {
    /// 4 KiB stored through the log's mapped backend, then `msync(MS_SYNC)`.
    mmap_msync_4k_p50_us: f64,
    mmap_msync_4k_p99_us: f64,
    /// Of that: the store alone (it takes the write-protect fault, since
    /// the last msync made the page read-only again)...
    mmap_store_after_msync_4k_p50_us: f64,
    /// ...the same store into a page that is already dirty (no fault)...
    mmap_store_dirty_4k_p50_us: f64,
    /// ...and the msync alone.
    msync_only_4k_p50_us: f64,
    /// 4 KiB `pwrite` + `fdatasync` (the log's default backend).
    pwrite_fdatasync_4k_p50_us: f64,
    pwrite_fdatasync_4k_p99_us: f64,
    /// The `pwrite` alone (copy into the page cache).
    pwrite_only_4k_p50_us: f64,
    /// 4 KiB `pwrite` + `fsync`: what syncing the inode's metadata adds.
    pwrite_fsync_4k_p50_us: f64,
    /// 4 KiB `pwrite` on a file opened `O_DSYNC`.
    odsync_4k_p50_us: f64,
    odsync_4k_p99_us: f64,
    /// 4 KiB `pwrite` on a file opened `O_DIRECT | O_DSYNC`.
    odirect_dsync_4k_p50_us: f64,
    odirect_dsync_4k_p99_us: f64,
    /// One 128-byte record `pwrite` + `fdatasync`, records appended
    /// back to back (32 syncs per page), as the log does for one writer.
    pwrite_fdatasync_record_p50_us: f64,
    /// The same plus the log's 40-byte sync marker before each sync.
    pwrite_fdatasync_record_marker_p50_us: f64,
    /// The same two through the mapping.
    mmap_msync_record_p50_us: f64,
    mmap_msync_record_marker_p50_us: f64,
    /// The log itself, one thread: `append` (96-byte payload) + `wait_durable`.
    log_append_wait_pwrite_p50_us: f64,
    log_append_wait_pwrite_p99_us: f64,
    log_append_wait_mmap_p50_us: f64,
    log_append_wait_mmap_p99_us: f64,
}

impl SyncPath {
    pub fn print(&self) {
        println!("sync path (same run, interleaved; p50 / p99 µs):");
        let rows = [
            ("mmap store + msync, 4 KiB", self.mmap_msync_4k_p50_us, Some(self.mmap_msync_4k_p99_us)),
            ("  store after msync (write-protect fault)", self.mmap_store_after_msync_4k_p50_us, None),
            ("  store into a dirty page", self.mmap_store_dirty_4k_p50_us, None),
            ("  msync alone", self.msync_only_4k_p50_us, None),
            ("pwrite + fdatasync, 4 KiB", self.pwrite_fdatasync_4k_p50_us, Some(self.pwrite_fdatasync_4k_p99_us)),
            ("  pwrite alone", self.pwrite_only_4k_p50_us, None),
            ("pwrite + fsync, 4 KiB", self.pwrite_fsync_4k_p50_us, None),
            ("O_DSYNC pwrite, 4 KiB", self.odsync_4k_p50_us, Some(self.odsync_4k_p99_us)),
            ("O_DIRECT|O_DSYNC pwrite, 4 KiB", self.odirect_dsync_4k_p50_us, Some(self.odirect_dsync_4k_p99_us)),
            ("pwrite + fdatasync, 128 B record", self.pwrite_fdatasync_record_p50_us, None),
            ("  with the sync marker", self.pwrite_fdatasync_record_marker_p50_us, None),
            ("mmap + msync, 128 B record", self.mmap_msync_record_p50_us, None),
            ("  with the sync marker", self.mmap_msync_record_marker_p50_us, None),
            (
                "log append + wait, pwrite backend",
                self.log_append_wait_pwrite_p50_us,
                Some(self.log_append_wait_pwrite_p99_us),
            ),
            (
                "log append + wait, mmap backend",
                self.log_append_wait_mmap_p50_us,
                Some(self.log_append_wait_mmap_p99_us),
            ),
        ];
        for (what, p50, p99) in rows {
            match p99 {
                Some(p99) => println!("  {what:<44} {p50:>8.1} {p99:>8.1}"),
                None => println!("  {what:<44} {p50:>8.1}"),
            }
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 2).expect("valid bounds")
}

fn us(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1e3
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// One measured operation; `step(i)` does iteration `i` and records into
/// the probe's own histograms (several for the split ones).
type Step<'a> = Box<dyn FnMut(u64) -> std::io::Result<()> + 'a>;

/// A preallocated probe file: real zeros, synced, never grown.
fn preallocated(path: &Path, custom_flags: i32) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    {
        let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..PROBE_FILE_BYTES / (1 << 20) {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
    }
    OpenOptions::new().read(true).write(true).custom_flags(custom_flags).open(path)
}

/// Offset of 4 KiB block `i`, cycling through the probe file.
fn block_offset(i: u64) -> u64 {
    (i * BLOCK_BYTES as u64) % PROBE_FILE_BYTES
}

/// Offset of record `i`, cycling through the probe file; with `marker`,
/// each record is followed by a marker.
fn record_offset(i: u64, marker: bool) -> u64 {
    let stride = (RECORD_BYTES + if marker { MARKER_BYTES } else { 0 }) as u64;
    (i * stride) % (PROBE_FILE_BYTES - stride)
}

fn timed(h: &mut Histogram<u64>, op: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<Duration> {
    let started = Instant::now();
    op()?;
    let took = started.elapsed();
    let _ = h.record(ns(took));
    Ok(took)
}

/// Runs every probe in turns until each had `budget` (or `MAX_ITERATIONS`).
fn interleave(steps: &mut [Step<'_>], budget: Duration) -> std::io::Result<()> {
    let mut spent = vec![Duration::ZERO; steps.len()];
    let mut done = vec![0u64; steps.len()];
    while spent.iter().zip(&done).any(|(s, &d)| *s < budget && d < MAX_ITERATIONS) {
        for (k, step) in steps.iter_mut().enumerate() {
            if spent[k] >= budget || done[k] >= MAX_ITERATIONS {
                continue;
            }
            let started = Instant::now();
            for _ in 0..ROUND_ITERATIONS {
                step(done[k])?;
                done[k] += 1;
            }
            spent[k] += started.elapsed();
        }
    }
    Ok(())
}

/// Measures every way to make 4 KiB (and one log record) durable on `dir`'s
/// file system, interleaved, on preallocated files; then the log itself with
/// each backend.
pub fn sync_path(dir: &Path, budget: Duration) -> Result<SyncPath, Box<dyn std::error::Error>> {
    use std::os::unix::fs::FileExt as _;

    use dtc::testing::{FsStorage, Storage as _};

    let scratch = dir.join("limits-sync-path");
    std::fs::create_dir_all(&scratch)?;
    let storage = FsStorage::new(&scratch)?;
    let block = vec![0xabu8; BLOCK_BYTES];
    let record = vec![0xcdu8; RECORD_BYTES];
    let marker = vec![0xefu8; MARKER_BYTES];
    // O_DIRECT needs an aligned buffer: take the aligned 4 KiB inside 8 KiB.
    let mut direct_buffer = vec![0xabu8; 2 * BLOCK_BYTES];
    let align = direct_buffer.as_ptr().align_offset(BLOCK_BYTES).min(BLOCK_BYTES);
    let direct_block = &mut direct_buffer[align..align + BLOCK_BYTES];
    direct_block.fill(0xab);
    let direct_block: &[u8] = direct_block;

    let plain = preallocated(&scratch.join("pwrite.probe"), 0)?;
    let plain_fsync = preallocated(&scratch.join("fsync.probe"), 0)?;
    let dsync = preallocated(&scratch.join("dsync.probe"), libc::O_DSYNC)?;
    let direct = preallocated(&scratch.join("direct.probe"), libc::O_DIRECT | libc::O_DSYNC);
    let records = preallocated(&scratch.join("records.probe"), 0)?;
    let records_marker = preallocated(&scratch.join("records-marker.probe"), 0)?;
    // The log's own mapped backend (`create_segment` writes real zeros and
    // syncs them): the same code path as the log's writes.
    let mapped = storage.create_segment("mmap.probe", PROBE_FILE_BYTES, "mmap".parse()?)?;
    let mapped_records = storage.create_segment("mmap-records.probe", PROBE_FILE_BYTES, "mmap".parse()?)?;
    let mapped_marker = storage.create_segment("mmap-marker.probe", PROBE_FILE_BYTES, "mmap".parse()?)?;

    let mut h: Vec<Histogram<u64>> = (0..16).map(|_| histogram()).collect();
    let [
        mmap_total,
        mmap_store,
        mmap_dirty,
        msync_only,
        pwrite_total,
        pwrite_only,
        fsync_total,
        odsync,
        odirect,
        rec,
        rec_marker,
        mrec,
        mrec_marker,
        ..,
    ] = &mut h[..]
    else {
        unreachable!("16 histograms")
    };
    {
        let mut steps: Vec<Step<'_>> = vec![
            Box::new(|i| {
                let at = block_offset(i);
                let store = timed(mmap_store, || mapped.write_at(at, &block))?;
                timed(mmap_dirty, || mapped.write_at(at, &block))?;
                let sync = timed(msync_only, || mapped.sync(at, BLOCK_BYTES as u64))?;
                let _ = mmap_total.record(ns(store + sync));
                Ok(())
            }),
            Box::new(|i| {
                let at = block_offset(i);
                let write = timed(pwrite_only, || plain.write_all_at(&block, at))?;
                let started = Instant::now();
                plain.sync_data()?;
                let _ = pwrite_total.record(ns(write + started.elapsed()));
                Ok(())
            }),
            Box::new(|i| {
                timed(fsync_total, || {
                    plain_fsync.write_all_at(&block, block_offset(i))?;
                    plain_fsync.sync_all()
                })
                .map(drop)
            }),
            Box::new(|i| timed(odsync, || dsync.write_all_at(&block, block_offset(i))).map(drop)),
            Box::new(|i| {
                timed(rec, || {
                    records.write_all_at(&record, record_offset(i, false))?;
                    records.sync_data()
                })
                .map(drop)
            }),
            Box::new(|i| {
                timed(rec_marker, || {
                    let at = record_offset(i, true);
                    records_marker.write_all_at(&record, at)?;
                    records_marker.write_all_at(&marker, at + RECORD_BYTES as u64)?;
                    records_marker.sync_data()
                })
                .map(drop)
            }),
            Box::new(|i| {
                timed(mrec, || {
                    let at = record_offset(i, false);
                    mapped_records.write_at(at, &record)?;
                    mapped_records.sync(at, RECORD_BYTES as u64)
                })
                .map(drop)
            }),
            Box::new(|i| {
                timed(mrec_marker, || {
                    let at = record_offset(i, true);
                    mapped_marker.write_at(at, &record)?;
                    mapped_marker.write_at(at + RECORD_BYTES as u64, &marker)?;
                    mapped_marker.sync(at, (RECORD_BYTES + MARKER_BYTES) as u64)
                })
                .map(drop)
            }),
        ];
        // O_DIRECT is not supported everywhere (tmpfs): then it is left out.
        if let Ok(direct) = &direct {
            steps.push(Box::new(move |i| {
                timed(odirect, || direct.write_all_at(direct_block, block_offset(i))).map(drop)
            }));
        }
        interleave(&mut steps, budget)?;
    }
    let (log_pwrite, log_mmap) = log_append_wait(&scratch, budget)?;
    let _ = std::fs::remove_dir_all(&scratch);
    let [
        mmap_total,
        mmap_store,
        mmap_dirty,
        msync_only,
        pwrite_total,
        pwrite_only,
        fsync_total,
        odsync,
        odirect,
        rec,
        rec_marker,
        mrec,
        mrec_marker,
        ..,
    ] = &h[..]
    else {
        unreachable!("16 histograms")
    };
    let direct_ok = direct.is_ok();
    Ok(SyncPath {
        mmap_msync_4k_p50_us: us(mmap_total, 0.5),
        mmap_msync_4k_p99_us: us(mmap_total, 0.99),
        mmap_store_after_msync_4k_p50_us: us(mmap_store, 0.5),
        mmap_store_dirty_4k_p50_us: us(mmap_dirty, 0.5),
        msync_only_4k_p50_us: us(msync_only, 0.5),
        pwrite_fdatasync_4k_p50_us: us(pwrite_total, 0.5),
        pwrite_fdatasync_4k_p99_us: us(pwrite_total, 0.99),
        pwrite_only_4k_p50_us: us(pwrite_only, 0.5),
        pwrite_fsync_4k_p50_us: us(fsync_total, 0.5),
        odsync_4k_p50_us: us(odsync, 0.5),
        odsync_4k_p99_us: us(odsync, 0.99),
        odirect_dsync_4k_p50_us: if direct_ok { us(odirect, 0.5) } else { f64::NAN },
        odirect_dsync_4k_p99_us: if direct_ok { us(odirect, 0.99) } else { f64::NAN },
        pwrite_fdatasync_record_p50_us: us(rec, 0.5),
        pwrite_fdatasync_record_marker_p50_us: us(rec_marker, 0.5),
        mmap_msync_record_p50_us: us(mrec, 0.5),
        mmap_msync_record_marker_p50_us: us(mrec_marker, 0.5),
        log_append_wait_pwrite_p50_us: us(&log_pwrite, 0.5),
        log_append_wait_pwrite_p99_us: us(&log_pwrite, 0.99),
        log_append_wait_mmap_p50_us: us(&log_mmap, 0.5),
        log_append_wait_mmap_p99_us: us(&log_mmap, 0.99),
    })
}

/// The log itself with each backend, one thread, interleaved: append a
/// 96-byte record and wait until it is durable.
fn log_append_wait(
    scratch: &Path,
    budget: Duration,
) -> Result<(Histogram<u64>, Histogram<u64>), Box<dyn std::error::Error>> {
    use std::sync::Arc;

    use dtc::testing::{FsStorage, Wal, WalConfig};

    let open = |name: &str, backend: &str| -> Result<Wal, Box<dyn std::error::Error>> {
        let storage = FsStorage::new(scratch.join(name))?;
        let config = WalConfig {
            segment_size_bytes: 16 << 20,
            max_segments: 8,
            backend: backend.parse()?,
            ..WalConfig::default()
        };
        Ok(Wal::open(Arc::new(storage), config)?.0)
    };
    let (pwrite, mmap) = (open("log-pwrite", "pwrite")?, open("log-mmap", "mmap")?);
    let (mut h_pwrite, mut h_mmap) = (histogram(), histogram());
    let payload = [7u8; 96];
    {
        let mut steps: Vec<Step<'_>> = Vec::new();
        for (wal, h) in [(&pwrite, &mut h_pwrite), (&mmap, &mut h_mmap)] {
            steps.push(Box::new(move |i| {
                let started = Instant::now();
                let lsn = wal.append(1, &payload).map_err(io_error)?;
                wal.wait_durable(lsn).map_err(io_error)?;
                let _ = h.record(ns(started.elapsed()));
                // Bounded: a checkpoint now and then lets segments recycle
                // (10 000 records are about 1.4 MB, well inside the log).
                if i % 10_000 == 9_999 {
                    wal.checkpoint(lsn, b"limits").map_err(io_error)?;
                }
                Ok(())
            }));
        }
        interleave(&mut steps, budget)?;
    }
    Ok((h_pwrite, h_mmap))
}

fn io_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
