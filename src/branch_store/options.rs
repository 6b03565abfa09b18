//! How a store is opened: its bounds, its clock, its directory.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{BranchStore, MAX_PREPARED_BYTES, StoreError, Stored, codec};
use crate::participant::BranchId;
use crate::saga::{Clock, SystemClock};
use crate::wal::{FsStorage, Lsn, Storage, Wal, WalConfig};

/// Name of the lock file that keeps a second process out of a store's
/// directory.
const LOCK_FILE: &str = "LOCK";

/// How a [`BranchStore`] is opened. Start from `BranchStoreOptions::default()`.
#[derive(Clone)]
pub struct BranchStoreOptions {
    pub(super) finished_horizon: Duration,
    pub(super) max_finished: usize,
    pub(super) checkpoint_every_bytes: u64,
    pub(super) segment_size_bytes: u64,
    pub(super) max_prepared_bytes: usize,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) sync: bool,
}

impl fmt::Debug for BranchStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BranchStoreOptions")
            .field("finished_horizon", &self.finished_horizon)
            .field("max_finished", &self.max_finished)
            .field("checkpoint_every_bytes", &self.checkpoint_every_bytes)
            .field("segment_size_bytes", &self.segment_size_bytes)
            .field("max_prepared_bytes", &self.max_prepared_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for BranchStoreOptions {
    /// Finished branches kept 24 hours and at most 100 000 of them; a
    /// checkpoint every MiB of log; 1 MiB segments; prepared values up to
    /// [`MAX_PREPARED_BYTES`]; the system clock.
    fn default() -> Self {
        BranchStoreOptions {
            finished_horizon: Duration::from_secs(24 * 3600),
            max_finished: 100_000,
            checkpoint_every_bytes: 1 << 20,
            segment_size_bytes: 1 << 20,
            max_prepared_bytes: MAX_PREPARED_BYTES,
            clock: Arc::new(SystemClock),
            sync: true,
        }
    }
}

impl BranchStoreOptions {
    /// Whether answers wait until their record is durable (default true).
    /// `false` is for measuring a service whose state may be lost: a crash
    /// then loses the latest answers, which breaks the participant contract
    /// of a `Durable` participant — never use it for real data.
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// How long a finished branch is remembered for duplicate detection.
    pub fn finished_horizon(mut self, horizon: Duration) -> Self {
        self.finished_horizon = horizon;
        self
    }

    /// How many finished branches are remembered at most (the oldest go
    /// first). At least 1.
    pub fn max_finished(mut self, count: usize) -> Self {
        self.max_finished = count;
        self
    }

    /// Log growth after which a checkpoint is written (at least 4 KiB). A
    /// checkpoint rewrites every remembered branch (prepared values and
    /// finished entries, ~40 bytes each): a service that holds many large
    /// prepared values at once should raise this so that the rewrite stays
    /// small next to the log written between two of them. The log keeps
    /// room for twice this much plus a segment.
    pub fn checkpoint_every_bytes(mut self, bytes: u64) -> Self {
        self.checkpoint_every_bytes = bytes;
        self
    }

    /// Size of each log segment file: a multiple of 4096, at least four
    /// times the largest record (a prepared value plus 64 bytes).
    pub fn segment_size_bytes(mut self, bytes: u64) -> Self {
        self.segment_size_bytes = bytes;
        self
    }

    /// Largest prepared value accepted (at most 16 MiB).
    pub fn max_prepared_bytes(mut self, bytes: usize) -> Self {
        self.max_prepared_bytes = bytes;
        self
    }

    /// The clock that stamps finished branches (tests pass a
    /// [`ManualClock`](crate::saga::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Opens (or creates) the store in `dir` and recovers it. One process at
    /// a time: a second open of the same directory is [`StoreError::InUse`].
    pub fn open(self, dir: impl AsRef<Path>) -> Result<BranchStore, StoreError> {
        let dir = dir.as_ref();
        let shown = dir.display().to_string();
        let storage = FsStorage::new(dir).map_err(|source| StoreError::Io {
            op: "creating directory",
            path: shown.clone(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let mut store = self.open_storage(Arc::new(storage))?;
        store.dir_lock = Some(lock);
        Ok(store)
    }

    /// Opens the store in any log storage (tests use `MemStorage`).
    #[doc(hidden)]
    pub fn open_storage(self, storage: Arc<dyn Storage>) -> Result<BranchStore, StoreError> {
        let config = self.wal_config()?;
        let (wal, recovery) = Wal::open(storage, config).map_err(StoreError::log)?;
        let mut forgotten_below_ns = 0;
        let mut table: HashMap<BranchId, Stored> = HashMap::new();
        let checkpoint_lsn = recovery.checkpoint.as_ref().map_or(Lsn(0), |(lsn, _)| *lsn);
        if let Some((_, bytes)) = &recovery.checkpoint {
            let snapshot = codec::decode_snapshot(bytes)
                .map_err(|reason| StoreError::Corrupt { reason: format!("checkpoint snapshot: {reason}") })?;
            forgotten_below_ns = snapshot.forgotten_through_ns;
            table.extend(snapshot.entries);
        }
        for record in &recovery.records {
            let (branch, state) = codec::decode_record(record.kind, &record.payload).map_err(|reason| {
                StoreError::Corrupt { reason: format!("record at {} (kind {}): {reason}", record.lsn, record.kind) }
            })?;
            table.insert(branch, state);
        }
        let store = BranchStore::from_table(self, wal, table, forgotten_below_ns, checkpoint_lsn);
        store.prune(usize::MAX);
        if !recovery.records.is_empty() {
            // Bounds the next recovery to what is written from now on.
            store.checkpoint()?;
        }
        Ok(store)
    }

    fn wal_config(&self) -> Result<WalConfig, StoreError> {
        let bad = |reason: String| Err(StoreError::Config { reason });
        if self.max_finished == 0 {
            return bad("max_finished must be at least 1".into());
        }
        if self.max_prepared_bytes > 16 << 20 {
            return bad("max_prepared_bytes must be at most 16 MiB".into());
        }
        if self.checkpoint_every_bytes < 4096 {
            return bad("checkpoint_every_bytes must be at least 4096".into());
        }
        let largest_record = self.max_prepared_bytes as u64 + 64;
        if self.segment_size_bytes / 4 < largest_record {
            return bad(format!(
                "segment_size_bytes {} is less than four times the largest record ({largest_record} bytes)",
                self.segment_size_bytes
            ));
        }
        // Room for the log to grow twice the checkpoint distance while a
        // checkpoint is written, plus the segment being filled.
        let segments_per_checkpoint = self.checkpoint_every_bytes.div_ceil(self.segment_size_bytes);
        let max_segments = (2 + 2 * segments_per_checkpoint).clamp(4, 1 << 16) as usize;
        let config = WalConfig {
            segment_size_bytes: self.segment_size_bytes,
            max_segments,
            preallocate_next: true,
            ..WalConfig::default()
        };
        Ok(config)
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io { op: "opening lock file", path: path.display().to_string(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse { dir: dir.display().to_string() }),
        Err(std::fs::TryLockError::Error(source)) => {
            Err(StoreError::Io { op: "locking", path: path.display().to_string(), source })
        }
    }
}
