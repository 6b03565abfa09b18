//! The engine's use of the write-ahead log: what it records, how it
//! checkpoints, and what recovery hands back.
//!
//! One record per decision (presumed abort):
//! - `Commit`: written, under the transaction's key locks, *before* any
//!   participant is told to commit; it carries the built-in ledgers' net
//!   changes, so one record makes a cross-service transfer atomic and durable.
//! - `Abort`: for transactions with a caller-chosen id, so a resubmission
//!   after a crash still gets its answer.
//! - `Decision` (kind 6): a commit that also names its non-ledger branches
//!   (and what external participants need to commit after a crash).
//! - `Begin`: external branches about to be asked to prepare, durable before
//!   the first prepare is sent.
//! - `Done`: every non-ledger branch applied the decision.
//!
//! The outcome is returned only once the record is durable (group commit).
//! Locks are released before that wait (early lock release): a dependent
//! transaction appends after us, so its record is durable only if ours is.

pub(crate) mod codec;
pub(crate) mod control;
pub(crate) mod dirlock;
pub(crate) mod ids;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sync::{AtomicU64, Ordering};
use crate::wal::{FsStorage, Lsn, Storage, Wal, WalConfig, WalError};

pub(crate) use codec::{
    BranchRecord, Checkpoint, Encoded, Entry, Records, Unresolved, encode_begin, encode_commit, encode_decision,
    write_commit,
};

/// What recovery found and did, for `Coordinator::recovery` and `dtc recover`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryReport {
    /// True when the data directory held no log yet.
    pub fresh: bool,
    /// Segment files scanned.
    pub segments: usize,
    /// Log position of the checkpoint recovery started from.
    pub checkpoint_lsn: u64,
    /// Records replayed after the checkpoint.
    pub records_replayed: usize,
    /// Bytes of a torn tail that were truncated.
    pub torn_tail_bytes: u64,
    /// Commit decisions replayed.
    pub commits_replayed: usize,
    /// Abort decisions replayed.
    pub aborts_replayed: usize,
    /// In-doubt transactions of external participants resolved (committed or
    /// rolled back).
    pub in_doubt_resolved: usize,
}

pub(crate) fn wal_error(error: WalError) -> Error {
    match error {
        WalError::Corrupt { file, offset, reason } => Error::Corrupt { file, offset, reason },
        WalError::Failed { cause } => Error::LogFailed { cause },
        WalError::LogFull { max_segments } => Error::LogFull { max_segments },
        WalError::Io { op, file, source } => Error::LogIo { op, file, source },
        other => Error::LogRefused { reason: other.to_string() },
    }
}

/// A transaction whose non-ledger branches may not all have applied its
/// outcome: logged as begun (external branches about to prepare) or decided,
/// and no `Done` yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Open {
    /// `Some(true)`: commit decided; `Some(false)`: abort recorded; `None`:
    /// begun without a decision, which presumed abort makes an abort.
    pub decision: Option<bool>,
    pub branches: Vec<BranchRecord>,
}

impl Open {
    pub(crate) fn is_commit(&self) -> bool {
        self.decision == Some(true)
    }
}

/// Every open transaction as of the checkpoint and the records after it.
pub(crate) fn open_transactions<'a>(
    checkpoint: Option<&Checkpoint>,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> hashbrown::HashMap<crate::txn::TxId, Open> {
    let mut open: hashbrown::HashMap<_, _> = checkpoint
        .iter()
        .flat_map(|c| &c.unresolved)
        .map(|u| (u.tx, Open { decision: Some(u.commit), branches: u.branches.clone() }))
        .collect();
    for entry in entries {
        match entry {
            Entry::Begin { tx, branches } => {
                open.entry(*tx).or_insert_with(|| Open { decision: None, branches: branches.clone() });
            }
            Entry::Commit { tx, branches, .. } if !branches.is_empty() => {
                open.insert(*tx, Open { decision: Some(true), branches: branches.clone() });
            }
            Entry::Abort { tx, .. } => {
                if let Some(o) = open.get_mut(tx)
                    && o.decision.is_none()
                {
                    o.decision = Some(false);
                }
            }
            Entry::Done { tx } => {
                open.remove(tx);
            }
            _ => {}
        }
    }
    open
}

/// The recorded outcome of every id the checkpoint remembers or the records
/// after it decide.
pub(crate) fn recorded_outcomes<'a>(
    checkpoint: Option<&Checkpoint>,
    entries: impl IntoIterator<Item = &'a Entry>,
) -> hashbrown::HashMap<crate::txn::TxId, crate::txn::Outcome> {
    use crate::txn::Outcome;
    let mut known: hashbrown::HashMap<_, _> = checkpoint
        .iter()
        .flat_map(|c| &c.recent)
        .map(|m| (m.tx, m.aborted.clone().map_or(Outcome::Committed, Outcome::Aborted)))
        .collect();
    for entry in entries {
        match entry {
            Entry::Commit { tx, .. } => {
                known.insert(*tx, Outcome::Committed);
            }
            Entry::Abort { tx, reason, .. } => {
                known.insert(*tx, Outcome::Aborted(reason.clone()));
            }
            _ => {}
        }
    }
    known
}

pub(crate) fn read_checkpoint(bytes: &[u8]) -> Result<Checkpoint> {
    Checkpoint::decode(bytes).map_err(|e| Error::Corrupt {
        file: "checkpoint".into(),
        offset: e.offset as u64,
        reason: e.to_string(),
    })
}

/// A log record's meaning, or the corruption that prevents reading it.
pub(crate) fn read_entry(record: &crate::wal::Record) -> Result<Entry> {
    Entry::decode(record.kind, &record.payload).map_err(|e| Error::Corrupt {
        file: format!("log position {}", record.lsn),
        offset: e.offset as u64,
        reason: format!("{e} (a record with a valid checksum that the engine cannot read)"),
    })
}

/// Log tuning, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct JournalConfig {
    pub wal: WalConfig,
    /// Write a checkpoint once this many log bytes were appended since the last.
    pub checkpoint_every_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        let wal = WalConfig::default();
        let checkpoint_every_bytes = wal.segment_size_bytes;
        Self { wal, checkpoint_every_bytes }
    }
}

pub(crate) struct Journal {
    wal: Wal,
    /// The directory (or in-memory storage) the log lives in; the id archive
    /// keeps its runs there too.
    storage: Arc<dyn Storage>,
    /// Held while the journal lives (one process per data directory).
    _lock: Option<dirlock::DirLock>,
    config: JournalConfig,
    /// Log position covered by the newest checkpoint.
    checkpointed: AtomicU64,
}

pub(crate) struct Replayed {
    pub checkpoint: Option<Checkpoint>,
    pub entries: Vec<(Lsn, Entry)>,
    pub report: RecoveryReport,
}

impl Journal {
    pub(crate) fn open_dir(dir: &Path, config: JournalConfig) -> Result<(Journal, Replayed)> {
        std::fs::create_dir_all(dir)
            .map_err(|source| Error::Io { op: format!("creating {}", dir.display()), source })?;
        let lock = dirlock::DirLock::acquire(dir)?;
        let storage =
            FsStorage::new(dir).map_err(|source| Error::Io { op: format!("opening {}", dir.display()), source })?;
        let (mut journal, replayed) = Self::open(Arc::new(storage), config)?;
        journal._lock = Some(lock);
        Ok((journal, replayed))
    }

    pub(crate) fn open(storage: Arc<dyn Storage>, mut config: JournalConfig) -> Result<(Journal, Replayed)> {
        let (wal, recovery) = Wal::open(storage.clone(), config.wal.clone()).map_err(wal_error)?;
        // The log runs with the directory's own format, whatever was asked:
        // backpressure and the checkpoint cadence follow it, so a directory
        // with smaller segments than asked checkpoints before it is full.
        config.wal = wal.config().clone();
        let capacity_bytes = config.wal.segment_size_bytes * (config.wal.max_segments as u64).saturating_sub(2).max(1);
        config.checkpoint_every_bytes = config.checkpoint_every_bytes.min(capacity_bytes);
        let mut report = RecoveryReport {
            fresh: recovery.checkpoint.is_none() && recovery.records.is_empty(),
            segments: recovery.segments_scanned,
            torn_tail_bytes: recovery.torn_tail_bytes,
            records_replayed: recovery.records.len(),
            ..RecoveryReport::default()
        };
        let checkpoint = match &recovery.checkpoint {
            None => None,
            Some((lsn, bytes)) => {
                report.checkpoint_lsn = lsn.0;
                Some(read_checkpoint(bytes)?)
            }
        };
        if checkpoint.is_none() && !recovery.records.is_empty() {
            return Err(Error::Corrupt {
                file: "checkpoint".into(),
                offset: 0,
                reason: "the log holds records but no checkpoint to start from".into(),
            });
        }
        let mut entries = Vec::with_capacity(recovery.records.len());
        for record in &recovery.records {
            let entry = read_entry(record)?;
            match entry {
                Entry::Commit { .. } => report.commits_replayed += 1,
                Entry::Abort { .. } => report.aborts_replayed += 1,
                _ => {}
            }
            entries.push((record.lsn, entry));
        }
        let journal =
            Journal { checkpointed: AtomicU64::new(report.checkpoint_lsn), wal, storage, _lock: None, config };
        Ok((journal, Replayed { checkpoint, entries, report }))
    }

    pub(crate) fn append(&self, record: &Encoded) -> Result<Lsn> {
        self.wal.append(record.kind, &record.bytes).map_err(wal_error)
    }

    /// Appends several records contiguously (one reservation).
    pub(crate) fn append_batch(&self, records: &Records) -> Result<Lsn> {
        self.wal.append_batch(&records.parts()).map_err(wal_error)
    }

    /// Appends an operator's action and the records it implies, in one
    /// reservation (the caller waits for the returned position).
    pub(crate) fn append_operator(&self, record: codec::OperatorRecord, implied: &[Entry]) -> Result<Lsn> {
        let codec::OperatorRecord { tx, action, reason, at_unix_ns } = record;
        let operator = Entry::Operator { tx, action, reason, at_unix_ns }.encoded();
        let records: Records = std::iter::once(operator).chain(implied.iter().map(Entry::encoded)).collect();
        self.append_batch(&records)
    }

    pub(crate) fn wait(&self, lsn: Lsn) -> Result<()> {
        self.wal.wait_durable(lsn).map_err(wal_error)
    }

    pub(crate) fn end(&self) -> Lsn {
        self.wal.end_lsn()
    }

    /// The storage the log lives in.
    pub(crate) fn storage(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// Everything below this position is durable.
    pub(crate) fn durable(&self) -> Lsn {
        self.wal.durable_lsn()
    }

    /// Largest record (or batch of records) the log takes.
    pub(crate) fn max_record_bytes(&self) -> u64 {
        self.config.wal.max_record_bytes()
    }

    /// Log bytes written since the newest checkpoint.
    pub(crate) fn since_checkpoint(&self) -> u64 {
        // Relaxed: a heuristic for when to checkpoint.
        self.end().0.saturating_sub(self.checkpointed.load(Ordering::Relaxed))
    }

    pub(crate) fn checkpoint_due(&self) -> bool {
        self.since_checkpoint() >= self.config.checkpoint_every_bytes
    }

    /// Called before taking locks: if the log is close to full, wait (without
    /// locks, so the checkpointer can run) until a checkpoint freed space.
    pub(crate) fn backpressure(&self, deadline: impl Fn() -> Instant) -> Result<()> {
        let limit = self.config.wal.segment_size_bytes * (self.config.wal.max_segments as u64).saturating_sub(2).max(1);
        while self.since_checkpoint() >= limit {
            if Instant::now() >= deadline() {
                return Err(Error::LogFull { max_segments: self.config.wal.max_segments });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Writes `checkpoint` as covering every record before `lsn` (all of
    /// which must already be applied to the state it holds).
    pub(crate) fn checkpoint(&self, lsn: Lsn, checkpoint: &Checkpoint) -> Result<()> {
        // Everything the snapshot reflects is durable before the snapshot
        // replaces it, so a waiter is never answered from a recycled segment.
        self.wal.wait_durable(lsn).map_err(wal_error)?;
        self.wal.checkpoint(lsn, &checkpoint.encode()).map_err(wal_error)?;
        // Relaxed: see `since_checkpoint`.
        self.checkpointed.fetch_max(lsn.0, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn stats(&self) -> crate::wal::WalStats {
        self.wal.stats()
    }
}
