//! Offline tools over a data directory: transaction status, recovery, and
//! (read-only) inspection.

use std::path::{Path, PathBuf};

use hashbrown::HashMap;

use super::codec::{Checkpoint, Entry};
use super::{RecoveryReport, wal_error};
use crate::coordinator::{Coordinator, Durability};
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::txn::{AbortReason, TxId};
use crate::wal::{FsStorage, Storage, Wal, WalConfig};

/// The recorded fate of a transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxStatus {
    /// A commit decision is recorded.
    Committed,
    /// An abort decision is recorded, with its reason.
    Aborted(AbortReason),
    /// Nothing is recorded (never run, not acknowledged, or forgotten: the
    /// recent-id table keeps the newest ids only).
    Unknown,
}

impl TxStatus {
    /// `committed`, `aborted` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TxStatus::Committed => "committed",
            TxStatus::Aborted(_) => "aborted",
            TxStatus::Unknown => "unknown",
        }
    }
}

/// What `DataDir::recover` did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoverySummary {
    /// The log scan and replay.
    pub report: RecoveryReport,
    /// Ledger services found in the checkpoint.
    pub services: Vec<String>,
    /// Accounts over all ledgers.
    pub accounts: u64,
    /// Sum of all balances.
    pub total_balance: i128,
    /// Accounts below zero (must be 0).
    pub negative_balances: u64,
    /// Commits still waiting for an external participant's acknowledgement.
    pub unresolved_external: usize,
}

/// A data directory written by a coordinator in durable mode.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

/// The log configuration matching the segment files already in `dir`.
pub(crate) fn config_for(dir: &Path, mut config: WalConfig) -> WalConfig {
    let sizes = std::fs::read_dir(dir).into_iter().flatten().flatten().filter_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("seg-") && name.ends_with(".wal") { e.metadata().ok().map(|m| m.len()) } else { None }
    });
    if let Some(size) = sizes.max() {
        config.segment_size_bytes = size;
    }
    config
}

impl DataDir {
    /// A handle on `path` (nothing is read yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn storage(&self) -> Result<FsStorage> {
        if !self.path.is_dir() {
            return Err(Error::Io {
                op: format!("opening {}", self.path.display()),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such data directory"),
            });
        }
        FsStorage::new(&self.path)
            .map_err(|source| Error::Io { op: format!("opening {}", self.path.display()), source })
    }

    /// Reads the checkpoint and the records after it without changing anything.
    fn read(&self) -> Result<(Option<Checkpoint>, Vec<Entry>)> {
        let storage = self.storage()?;
        let config = config_for(&self.path, WalConfig::default());
        let inspection = Wal::inspect(&storage as &dyn Storage, &config).map_err(wal_error)?;
        if let crate::wal::Verdict::Corrupt { file, offset, reason } = inspection.verdict {
            return Err(Error::Corrupt { file, offset, reason });
        }
        let checkpoint = match &inspection.checkpoint {
            Some((_, bytes)) => Some(Checkpoint::decode(bytes).map_err(|e| Error::Corrupt {
                file: "checkpoint".into(),
                offset: e.offset as u64,
                reason: e.to_string(),
            })?),
            None => None,
        };
        let mut entries = Vec::with_capacity(inspection.records.len());
        for r in &inspection.records {
            entries.push(Entry::decode(r.kind, &r.payload).map_err(|e| Error::Corrupt {
                file: format!("log position {}", r.lsn),
                offset: e.offset as u64,
                reason: e.to_string(),
            })?);
        }
        Ok((checkpoint, entries))
    }

    /// The recorded outcome of each id. Read-only.
    pub fn status(&self, ids: &[TxId]) -> Result<Vec<(TxId, TxStatus)>> {
        let (checkpoint, entries) = self.read()?;
        let mut known: HashMap<TxId, TxStatus> = HashMap::new();
        if let Some(c) = checkpoint {
            for m in c.recent {
                known.insert(m.tx, m.aborted.map_or(TxStatus::Committed, TxStatus::Aborted));
            }
        }
        for entry in entries {
            match entry {
                Entry::Commit { tx, .. } => {
                    known.insert(tx, TxStatus::Committed);
                }
                Entry::Abort { tx, reason, .. } => {
                    known.insert(tx, TxStatus::Aborted(reason));
                }
                _ => {}
            }
        }
        Ok(ids.iter().map(|id| (*id, known.get(id).cloned().unwrap_or(TxStatus::Unknown))).collect())
    }

    /// Names of the ledger services the checkpoint holds.
    pub fn ledger_services(&self) -> Result<Vec<String>> {
        let (checkpoint, _) = self.read()?;
        Ok(checkpoint.map(|c| c.ledgers.into_iter().map(|(name, _)| name).collect()).unwrap_or_default())
    }

    /// Runs recovery (replay, torn-tail truncation, a fresh checkpoint) with
    /// one ledger per service the log knows, and reports the result.
    pub fn recover(&self) -> Result<RecoverySummary> {
        let services = self.ledger_services()?;
        if services.is_empty() {
            return Err(Error::Config(format!("{} holds no checkpoint: nothing to recover", self.path.display())));
        }
        let mut builder = Coordinator::builder().durability(Durability::Sync).dir(&self.path);
        let ledgers: Vec<Ledger> = services.iter().map(|_| Ledger::new()).collect();
        for (name, ledger) in services.iter().zip(&ledgers) {
            builder = builder.service(name.clone(), ledger.clone());
        }
        let coordinator = builder.open()?;
        let report = coordinator.recovery();
        let audit = coordinator.audit()?;
        let unresolved = coordinator.unresolved_count();
        coordinator.shutdown()?;
        Ok(RecoverySummary {
            report,
            services,
            accounts: audit.accounts,
            total_balance: audit.total,
            negative_balances: audit.negative,
            unresolved_external: unresolved,
        })
    }
}
