//! Offline tools over a data directory: transaction status, recovery, and
//! read-only verification.

use std::path::{Path, PathBuf};

use hashbrown::HashMap;

use crate::coordinator::{Coordinator, Durability};
use crate::durable::codec::{Action, Checkpoint, Entry, OperatorRecord};
use crate::durable::dirlock::DirLock;
use crate::durable::{
    Journal, JournalConfig, RecoveryReport, control, open_transactions, read_checkpoint, read_entry, recorded_outcomes,
    wal_error,
};
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::operator::{
    OperatorAction, ParticipantState, Resolution, ResolveReport, RetryReport, TxKind, TxState, UnfinishedTx,
    age_seconds, check_reason,
};
use crate::protocol::resolve::{self, Decided};
use crate::txn::{AbortReason, Outcome, TxId, unix_nanos};

/// How long a tool waits for a running coordinator's answer.
const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The error a running coordinator refused with, as the same typed error
/// where it has one.
fn refused(dir: &Path, tx: Option<TxId>, code: &str, message: String) -> Error {
    match (code, tx) {
        ("unsafe_resolution", Some(tx)) => {
            let prefix = format!("refused to resolve {tx}: ");
            Error::UnsafeResolution { tx, reason: message.strip_prefix(&prefix).unwrap_or(&message).to_string() }
        }
        ("not_stuck", Some(tx)) => Error::NotStuck { tx },
        ("tx_in_progress", Some(tx)) => Error::TxInProgress { tx },
        ("invalid_reason", _) => Error::InvalidReason(message),
        _ => Error::Control { dir: dir.display().to_string(), reason: format!("refused ({code}): {message}") },
    }
}
use crate::durable::ids::IdArchive;
use crate::wal::{FsStorage, Inspection, Storage, Verdict, Wal, WalConfig, WalError};
use std::sync::Arc;

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

/// The services of an open transaction's branches, each named once.
fn services_of(open: &crate::durable::Open) -> Vec<String> {
    let mut names: Vec<String> = open.branches.iter().map(|b| b.service.clone()).collect();
    names.dedup();
    names
}

/// A data directory written by a coordinator in durable mode.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

/// True if a scan shows a saga executor's log: a coordinator's log starts
/// with a checkpoint; a saga log writes its first snapshot only after a while.
fn holds_sagas(inspection: &Inspection) -> bool {
    match &inspection.checkpoint {
        Some((_, bytes)) => bytes.starts_with(crate::saga::SNAPSHOT_MAGIC),
        None => !inspection.records.is_empty(),
    }
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

    /// Scans the log without changing anything.
    fn inspect(&self) -> Result<Inspection> {
        let storage = self.storage()?;
        // The directory's format file (or its segment files) decides the
        // on-disk parameters; the defaults only fill in the rest.
        Wal::inspect(&storage as &dyn Storage, &WalConfig::default()).map_err(wal_error)
    }

    /// Reads the checkpoint and the records after it without changing anything.
    fn read(&self) -> Result<(Option<Checkpoint>, Vec<Entry>)> {
        Self::decode(self.inspect()?)
    }

    /// The checkpoint and records of a scan, refused if recovery would refuse it.
    fn decode(inspection: Inspection) -> Result<(Option<Checkpoint>, Vec<Entry>)> {
        if let crate::wal::Verdict::Corrupt { file, offset, reason, .. } = inspection.verdict {
            return Err(Error::Corrupt { file, offset, reason });
        }
        let checkpoint = match &inspection.checkpoint {
            Some((_, bytes)) => Some(read_checkpoint(bytes)?),
            None => None,
        };
        let entries = inspection.records.iter().map(read_entry).collect::<Result<Vec<_>>>()?;
        Ok((checkpoint, entries))
    }

    /// The id archive of the directory, read-only (ids whose outcomes
    /// moved out of the log).
    fn archive(&self) -> Result<IdArchive> {
        IdArchive::open_read_only(Arc::new(self.storage()?), crate::coordinator::DEFAULT_IDEMPOTENCY_HORIZON)
    }

    /// The recorded outcome of each id: the log, then the id archive.
    /// Read-only.
    pub fn status(&self, ids: &[TxId]) -> Result<Vec<(TxId, TxStatus)>> {
        let (checkpoint, entries) = self.read()?;
        let known = recorded_outcomes(checkpoint.as_ref(), &entries);
        let archive = self.archive()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let outcome = match known.get(id) {
                Some(outcome) => Some(outcome.clone()),
                None => archive.get(*id)?.map(|r| r.aborted.map_or(Outcome::Committed, Outcome::Aborted)),
            };
            let status = match outcome {
                Some(Outcome::Aborted(reason)) => TxStatus::Aborted(reason),
                Some(_) => TxStatus::Committed,
                None => TxStatus::Unknown,
            };
            out.push((*id, status));
        }
        Ok(out)
    }

    /// The operator actions the log records, oldest first (the newest
    /// `MAX_OPERATOR_HISTORY` survive checkpoints). Read-only.
    pub fn operator_actions(&self) -> Result<Vec<OperatorAction>> {
        let (checkpoint, entries) = self.read()?;
        let mut actions: Vec<OperatorAction> =
            checkpoint.map(|c| c.operator.into_iter().map(OperatorAction::from).collect()).unwrap_or_default();
        for entry in entries {
            if let Entry::Operator { tx, action, reason, at_unix_ns } = entry {
                actions.push(OperatorRecord { tx, action, reason, at_unix_ns }.into());
            }
        }
        Ok(actions)
    }

    /// Every unfinished transaction of the directory, oldest first.
    ///
    /// If a coordinator is running on it, its live view (through the
    /// control channel): failing calls with attempts, next retry and last
    /// error, parked calls, unacknowledged commits. Otherwise what the log
    /// shows (read-only): decided transactions whose non-ledger branches
    /// have not all acknowledged, and begun ones without a decision (the
    /// next open rolls them back). A saga executor's directory lists its
    /// unfinished sagas.
    pub fn unfinished(&self) -> Result<Vec<UnfinishedTx>> {
        if self.is_live()? {
            return match self.control(&control::Request::Unfinished)? {
                control::Response::Unfinished { transactions } => Ok(transactions),
                other => Err(self.unexpected(other)),
            };
        }
        let inspection = self.inspect()?;
        if holds_sagas(&inspection) {
            return self.unfinished_sagas();
        }
        let (checkpoint, entries) = Self::decode(inspection)?;
        let open = open_transactions(checkpoint.as_ref(), &entries);
        let mut list: Vec<UnfinishedTx> = open
            .into_iter()
            .map(|(tx, open)| {
                let (state, phase) = match open.decision {
                    Some(true) => (TxState::Committing, "awaiting-ack"),
                    Some(false) => (TxState::RollingBack, "awaiting-rollback"),
                    None => (TxState::InDoubt, "in-doubt"),
                };
                UnfinishedTx {
                    tx,
                    kind: TxKind::TwoPhase,
                    state,
                    age_seconds: age_seconds(tx),
                    participants: open
                        .branches
                        .into_iter()
                        .map(|b| ParticipantState {
                            name: b.service,
                            branch: Some(b.index),
                            phase: phase.into(),
                            attempts: 0,
                            next_retry_in_ms: None,
                            last_error: None,
                        })
                        .collect(),
                    reason: None,
                }
            })
            .collect();
        list.sort_by_key(|u| u.tx);
        Ok(list)
    }

    fn unfinished_sagas(&self) -> Result<Vec<UnfinishedTx>> {
        let executor = crate::saga::SagaExecutor::open(&self.path)
            .map_err(|e| Error::Config(format!("{}: {e}", self.path.display())))?;
        Ok(executor.unfinished())
    }

    /// True if a running process holds the directory.
    fn is_live(&self) -> Result<bool> {
        self.storage()?;
        DirLock::is_held(&self.path)
    }

    fn control(&self, request: &control::Request) -> Result<control::Response> {
        let tx = match request {
            control::Request::Unfinished => None,
            control::Request::RetryNow { tx, .. } => *tx,
            control::Request::Resolve { tx, .. } => Some(*tx),
        };
        match control::call(&self.path, request, CONTROL_TIMEOUT)? {
            control::Response::Refused { code, message } => Err(refused(&self.path, tx, &code, message)),
            response => Ok(response),
        }
    }

    fn unexpected(&self, response: control::Response) -> Error {
        Error::Control { dir: self.path.display().to_string(), reason: format!("unexpected answer {response:?}") }
    }

    /// Retries the parked calls of `tx` (every parked call if `None`) in the
    /// coordinator running on this directory, through its control channel.
    /// Nothing is retried offline: the next coordinator to open the
    /// directory resolves every unfinished transaction at once; without a
    /// running one this is `Error::Control`.
    pub fn retry_now(&self, tx: Option<TxId>, reason: &str) -> Result<RetryReport> {
        if !self.is_live()? {
            return Err(Error::Control {
                dir: self.path.display().to_string(),
                reason: "no coordinator is running on it: nothing is being retried (the next one to open it \
                         resolves every unfinished transaction at once)"
                    .into(),
            });
        }
        match self.control(&control::Request::RetryNow { tx, reason: reason.into() })? {
            control::Response::Retried { report } => Ok(report),
            other => Err(self.unexpected(other)),
        }
    }

    /// An operator's resolution of `tx`, with the same rules as
    /// [`Coordinator::resolve`]: through the control channel if a
    /// coordinator runs on the directory, else offline, from what the log
    /// records (the directory is locked meanwhile). Offline:
    ///
    /// * `Commit` of a commit whose external participants have not all
    ///   acknowledged: records it finished (`Done`).
    /// * `Abort` of an id with no recorded outcome, newer than the oldest id
    ///   the log remembers: recorded as aborted by the operator, so recovery
    ///   rolls back any participant holding it prepared and a resubmission is
    ///   answered with the abort.
    /// * Anything else that would change an outcome: `Error::UnsafeResolution`.
    pub fn resolve(&self, tx: TxId, resolution: Resolution, reason: &str) -> Result<ResolveReport> {
        check_reason(reason)?;
        let inspection = self.inspect()?;
        if holds_sagas(&inspection) {
            return Err(Error::Config(format!(
                "{} holds sagas: resolve them with SagaExecutor::retry_stuck in their process",
                self.path.display()
            )));
        }
        // Opening the journal below would start a fresh log in an empty directory.
        let coordinator_log = inspection.checkpoint.is_some();
        if !self.is_live()? {
            if !coordinator_log {
                return Err(Error::Config(format!("{} holds no coordinator checkpoint", self.path.display())));
            }
            match self.resolve_offline(tx, resolution, reason) {
                Err(Error::DirInUse { .. }) => {} // started meanwhile: ask it
                other => return other,
            }
        }
        match self.control(&control::Request::Resolve { tx, resolution, reason: reason.into() })? {
            control::Response::Resolved { report } => Ok(report),
            other => Err(self.unexpected(other)),
        }
    }

    fn resolve_offline(&self, tx: TxId, resolution: Resolution, reason: &str) -> Result<ResolveReport> {
        // The log opens with the directory's own format (see `Wal::open`).
        let (journal, replayed) = Journal::open_dir(&self.path, JournalConfig::default())?;
        let entries = replayed.entries.iter().map(|(_, e)| e);
        let outcomes = recorded_outcomes(replayed.checkpoint.as_ref(), entries.clone());
        let archive = IdArchive::open_read_only(journal.storage(), crate::coordinator::DEFAULT_IDEMPOTENCY_HORIZON)?;
        let outcome = match outcomes.get(&tx) {
            Some(outcome) => Some(outcome.clone()),
            None => archive.get(tx)?.map(|r| r.aborted.map_or(Outcome::Committed, Outcome::Aborted)),
        };
        // Outcomes are exact above the archive's expiry watermark; a
        // checkpoint of an older version kept a count-bounded table instead,
        // exact only above its oldest id.
        let checkpoint = replayed.checkpoint.as_ref();
        let expired_before = checkpoint.map_or(0, |c| c.ids_expired_before);
        let horizon_ns = checkpoint.map_or(0, |c| c.ids_horizon_ns);
        let horizon_ns = if horizon_ns == 0 {
            u64::try_from(crate::coordinator::DEFAULT_IDEMPOTENCY_HORIZON.as_nanos()).unwrap_or(u64::MAX)
        } else {
            horizon_ns
        };
        let horizon_start = unix_nanos().saturating_sub(horizon_ns).max(expired_before);
        let oldest_kept = checkpoint.and_then(|c| c.recent.iter().map(|m| m.tx).min());
        let forgettable = tx.timestamp_ns() < horizon_start || oldest_kept.is_some_and(|o| tx < o);
        let awaiting = open_transactions(replayed.checkpoint.as_ref(), entries).remove(&tx);
        let facts = resolve::Facts {
            decided: outcome.map(|o| if o.is_committed() { Decided::Commit } else { Decided::Abort }),
            conflicting: false,
            owing: awaiting.is_some(),
            begun: awaiting.as_ref().is_some_and(|o| o.decision.is_none()),
            forgettable,
            // The directory is locked: no coordinator runs it.
            maybe_running: false,
        };
        let step = resolve::rule(facts, resolution, horizon_ns / 1_000_000_000, std::time::Duration::ZERO)
            .map_err(|why| Error::UnsafeResolution { tx, reason: why })?;
        let record = |action: Action, implied: Entry| -> Result<()> {
            let record = OperatorRecord { tx, action, reason: reason.into(), at_unix_ns: unix_nanos() };
            journal.wait(journal.append_operator(record, &[implied])?)
        };
        let report = |settled: Vec<String>, note: &str| ResolveReport { tx, resolution, settled, note: note.into() };
        match step {
            resolve::Step::Nothing { note } => Ok(report(Vec::new(), note)),
            resolve::Step::Settle { decided, note } => {
                record(if decided == Decided::Commit { Action::Commit } else { Action::Abort }, Entry::Done { tx })?;
                Ok(report(awaiting.as_ref().map(services_of).unwrap_or_default(), note))
            }
            resolve::Step::RecordAbort { note } => {
                // Begun, no decision: presumed abort already makes it an
                // abort; the next open rolls its external branches back.
                let abort =
                    Entry::Abort { tx, fingerprint: 0, reason: AbortReason::Operator { reason: reason.into() } };
                record(Action::Abort, abort)?;
                Ok(report(Vec::new(), note))
            }
        }
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

/// One thing `DataDir::verify` found, located by file and byte offset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyProblem {
    /// The file concerned (`seg-….wal`, `checkpoint-….ckpt`), or `replay` for
    /// a property of the state rebuilt from the whole log.
    pub file: String,
    /// Byte offset inside `file` (0 for `replay`).
    pub offset: u64,
    /// Log position of the record concerned, when there is one.
    pub lsn: Option<u64>,
    /// A stable identifier of the problem (see `docs/operations.md`), e.g.
    /// `checksum_mismatch`, `missing_segment`, `checkpoint_invalid`,
    /// `money_not_conserved`, `negative_balance`.
    pub kind: &'static str,
    /// Human-readable explanation.
    pub detail: String,
    /// True when recovery would refuse the directory, or would silently
    /// start over without the committed state, because of this problem.
    pub fatal: bool,
}

/// What `DataDir::verify` checked and found. Serializable (`dtc verify --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// True when the directory holds no log and no checkpoint.
    pub fresh: bool,
    /// Segment files scanned (those at or after the checkpoint).
    pub segments: usize,
    /// Valid engine records after the checkpoint.
    pub records: usize,
    /// Commit decisions among them.
    pub commits: usize,
    /// Abort decisions among them.
    pub aborts: usize,
    /// Log position the checkpoint covers, if there is a valid one.
    pub checkpoint_lsn: Option<u64>,
    /// Where the valid log ends (appending would continue here).
    pub end_lsn: u64,
    /// Bytes after the end of the log that recovery would discard as an
    /// unacknowledged tail (normal after a crash).
    pub torn_tail_bytes: u64,
    /// Ledger services in the checkpoint.
    pub services: Vec<String>,
    /// Accounts after replay.
    pub accounts: u64,
    /// Sum of the checkpoint's balances.
    pub checkpoint_total: i128,
    /// Money added after the checkpoint by account-creation records.
    pub created_total: i128,
    /// Net money moved into the ledgers by commits that also involve
    /// external (non-ledger) participants; transfers among ledgers add 0.
    pub external_net: i128,
    /// Sum of all balances after replay; must equal
    /// `checkpoint_total + created_total + external_net`.
    pub total_balance: i128,
    /// The total the caller expects, if given (`verify_expecting_total`).
    pub expected_total: Option<i128>,
    /// Accounts below zero after replay (must be 0).
    pub negative_balances: u64,
    /// Everything wrong, in the order found (at most `MAX_VERIFY_PROBLEMS`).
    pub problems: Vec<VerifyProblem>,
    /// Problems found beyond the listed ones.
    pub problems_omitted: usize,
    /// Findings that are normal after a crash and that recovery handles
    /// (a torn tail, a leftover temporary file); they do not fail `ok`.
    pub notes: Vec<VerifyProblem>,
    /// True when every check held: no problems.
    pub ok: bool,
    /// False when some problem is fatal (recovery would refuse, or would
    /// start over without the committed state).
    pub recoverable: bool,
}

/// Bound on the problems (and on the notes) one report lists.
pub const MAX_VERIFY_PROBLEMS: usize = 1000;

/// Bytes of a sync marker record (32-byte header, 8-byte payload): the only
/// records the log writes between engine records inside a segment.
const SYNC_MARKER_RECORD_BYTES: u64 = 40;
/// Size of a checkpoint file's header (see `wal/checkpoint.rs`).
const CHECKPOINT_HEADER_BYTES: u64 = 32;

/// Mirrors the log's file naming (`wal/segment.rs`, `wal/checkpoint.rs`),
/// which it does not export.
fn segment_file(id: u64) -> String {
    format!("seg-{id:016x}.wal")
}

fn checkpoint_file(lsn: u64) -> String {
    format!("checkpoint-{lsn:016x}.ckpt")
}

/// Turns a log-scan message into a stable problem kind.
/// Collects problems and notes, bounded.
struct Findings {
    report: VerifyReport,
    segment_bytes: u64,
}

impl Findings {
    fn problem(
        &mut self,
        file: String,
        offset: u64,
        lsn: Option<u64>,
        kind: &'static str,
        detail: String,
        fatal: bool,
    ) {
        if fatal {
            self.report.recoverable = false;
        }
        if self.report.problems.len() < MAX_VERIFY_PROBLEMS {
            self.report.problems.push(VerifyProblem { file, offset, lsn, kind, detail, fatal });
        } else {
            self.report.problems_omitted += 1;
        }
    }

    /// A problem about the record at log position `lsn`.
    fn at_record(&mut self, lsn: u64, kind: &'static str, detail: String, fatal: bool) {
        let (file, offset) = (segment_file(lsn / self.segment_bytes), lsn % self.segment_bytes);
        self.problem(file, offset, Some(lsn), kind, detail, fatal);
    }

    fn in_replay(&mut self, lsn: Option<u64>, kind: &'static str, detail: String) {
        match lsn {
            Some(lsn) => self.at_record(lsn, kind, detail, false),
            None => self.problem("replay".into(), 0, None, kind, detail, false),
        }
    }

    fn note(&mut self, file: String, offset: u64, kind: &'static str, detail: String) {
        if self.report.notes.len() < MAX_VERIFY_PROBLEMS {
            self.report.notes.push(VerifyProblem { file, offset, lsn: None, kind, detail, fatal: false });
        }
    }
}

/// The scratch state replay builds: balance and the last record that
/// changed it, per (service, account).
type Balances = HashMap<String, HashMap<String, (i64, Option<u64>)>>;

impl DataDir {
    /// Checks the directory offline and reports every problem found; reads
    /// only, never writes, and never runs recovery.
    ///
    /// Checks: every record's checksum and header (through the log's
    /// read-only scan, which also says whether recovery would refuse), the
    /// continuity of log positions, that the checkpoint decodes, names each
    /// service once and each account once per service and holds no negative
    /// balance, that every record decodes, and a replay into a scratch state
    /// (checkpoint balances, then every record in order) that touches only
    /// accounts the checkpoint or an account record created, that balances
    /// each commit among ledgers to zero, that conserves money overall and
    /// leaves no balance below zero.
    ///
    /// `Err` only when the directory cannot be read (missing, permissions,
    /// I/O errors); damage is reported in `VerifyReport::problems`.
    pub fn verify(&self) -> Result<VerifyReport> {
        let storage = self.storage()?;
        let mut findings = Findings {
            report: VerifyReport { recoverable: true, ..VerifyReport::default() },
            segment_bytes: WalConfig::default().segment_size_bytes,
        };
        let inspection = match Wal::inspect(&storage as &dyn Storage, &WalConfig::default()) {
            Ok(inspection) => inspection,
            Err(WalError::Config { reason }) => {
                // A format file of a version this dtc cannot read.
                findings.problem(crate::wal::FORMAT_FILE.into(), 0, None, "format_unsupported", reason, true);
                return Ok(finish(findings.report));
            }
            Err(WalError::Corrupt { file, offset, reason }) => {
                // A damaged format file: the log's parameters are unknown.
                findings.problem(file, offset, None, "format_invalid", reason, true);
                return Ok(finish(findings.report));
            }
            Err(other) => return Err(wal_error(other)),
        };
        findings.segment_bytes = inspection.config.segment_size_bytes;
        check_scan(&mut findings, &inspection);
        let checkpoint = check_checkpoint(&mut findings, &inspection);
        let entries = decode_records(&mut findings, &inspection);
        check_positions(&mut findings, &inspection);
        if let Some(checkpoint) = checkpoint {
            replay(&mut findings, &checkpoint, &entries);
        }
        Ok(finish(findings.report))
    }

    /// [`DataDir::verify`], and also checks that the total balance after
    /// replay is `expected_total` (the money the operator knows the system
    /// holds). This catches an edited checkpoint, which internal consistency
    /// alone cannot: the checkpoint is the reference for everything after it.
    pub fn verify_expecting_total(&self, expected_total: i128) -> Result<VerifyReport> {
        let mut report = self.verify()?;
        report.expected_total = Some(expected_total);
        if report.total_balance != expected_total && report.checkpoint_lsn.is_some() {
            let detail = format!(
                "total balance after replay is {}, expected {expected_total} (difference {})",
                report.total_balance,
                report.total_balance - expected_total
            );
            report.problems.push(VerifyProblem {
                file: "replay".into(),
                offset: 0,
                lsn: None,
                kind: "money_not_conserved",
                detail,
                fatal: false,
            });
        }
        Ok(finish(report))
    }
}

fn finish(mut report: VerifyReport) -> VerifyReport {
    report.ok = report.problems.is_empty() && report.problems_omitted == 0;
    report
}

/// The log scan's verdict and problems: corruption recovery refuses is
/// fatal; a torn tail and leftovers recovery cleans up are notes.
fn check_scan(findings: &mut Findings, inspection: &Inspection) {
    let report = &mut findings.report;
    report.segments = inspection.segments_scanned;
    report.end_lsn = inspection.end_lsn.0;
    report.fresh = inspection.checkpoint.is_none()
        && inspection.records.is_empty()
        && inspection.segments_scanned == 0
        && inspection.problems.is_empty();
    let corrupt_at = match &inspection.verdict {
        Verdict::Corrupt { file, offset, reason, kind } => {
            let detail = format!("recovery refuses: {reason}");
            findings.problem(file.clone(), *offset, None, kind, detail, true);
            Some((file.clone(), *offset))
        }
        Verdict::TornTail { bytes } => {
            findings.report.torn_tail_bytes = *bytes;
            None
        }
        Verdict::Clean => None,
    };
    let chosen = inspection.checkpoint.is_some();
    for p in &inspection.problems {
        let at_break = matches!(p.kind, "torn_tail" | "missing_segment");
        if at_break && corrupt_at.as_ref().is_some_and(|(file, offset)| *file == p.file && *offset == p.offset) {
            // The verdict above already reports this position.
            continue;
        }
        match p.kind {
            "missing_segment" | "segment_size" => {
                findings.problem(p.file.clone(), p.offset, None, p.kind, p.what.clone(), true)
            }
            // Without a valid checkpoint, recovery refuses the records or
            // starts over from nothing.
            "checkpoint_invalid" => findings.problem(p.file.clone(), p.offset, None, p.kind, p.what.clone(), !chosen),
            "leftover_temp_file" | "bytes_after_end" | "torn_tail" => {
                findings.note(p.file.clone(), p.offset, p.kind, p.what.clone())
            }
            _ => findings.problem(p.file.clone(), p.offset, None, p.kind, p.what.clone(), false),
        }
    }
}

/// Decodes the checkpoint and checks what it holds on its own.
fn check_checkpoint(findings: &mut Findings, inspection: &Inspection) -> Option<Checkpoint> {
    let Some((lsn, bytes)) = &inspection.checkpoint else {
        if !inspection.records.is_empty() {
            let detail = "the log holds records but no valid checkpoint to start from".to_string();
            findings.problem("checkpoint".into(), 0, None, "no_checkpoint", detail, true);
        }
        return None;
    };
    findings.report.checkpoint_lsn = Some(lsn.0);
    let file = checkpoint_file(lsn.0);
    let checkpoint = match Checkpoint::decode(bytes) {
        Ok(checkpoint) => checkpoint,
        Err(e) => {
            let offset = CHECKPOINT_HEADER_BYTES + e.offset as u64;
            findings.problem(file, offset, None, "checkpoint_undecodable", e.to_string(), true);
            return None;
        }
    };
    let mut services: HashMap<&str, HashMap<&str, ()>> = HashMap::new();
    for (service, accounts) in &checkpoint.ledgers {
        findings.report.services.push(service.clone());
        if services.contains_key(service.as_str()) {
            let detail = format!("service {service:?} appears twice");
            findings.problem(file.clone(), 0, None, "checkpoint_duplicate_service", detail, false);
        }
        let seen = services.entry(service.as_str()).or_default();
        for (account, balance) in accounts {
            if seen.insert(account.as_str(), ()).is_some() {
                let detail = format!("account {service}/{account} appears twice");
                findings.problem(file.clone(), 0, None, "checkpoint_duplicate_account", detail, false);
            }
            if *balance < 0 {
                let detail = format!("account {service}/{account} has balance {balance}");
                findings.problem(file.clone(), 0, None, "checkpoint_negative_balance", detail, false);
            }
            findings.report.checkpoint_total += i128::from(*balance);
        }
    }
    drop(services);
    Some(checkpoint)
}

/// Decodes every record; one that does not decode makes recovery refuse.
fn decode_records(findings: &mut Findings, inspection: &Inspection) -> Vec<(u64, Entry)> {
    let mut entries = Vec::with_capacity(inspection.records.len());
    for record in &inspection.records {
        match Entry::decode(record.kind, &record.payload) {
            Ok(entry) => {
                match entry {
                    Entry::Commit { .. } => findings.report.commits += 1,
                    Entry::Abort { .. } => findings.report.aborts += 1,
                    _ => {}
                }
                entries.push((record.lsn.0, entry));
            }
            Err(e) => {
                let detail = format!("{e} (kind {}, valid checksum)", record.kind);
                findings.at_record(record.lsn.0, "undecodable_record", detail, true);
            }
        }
    }
    findings.report.records = inspection.records.len();
    entries
}

/// Records follow each other in log order without overlap, never straddle
/// a segment, and only sync markers sit between them inside a segment.
fn check_positions(findings: &mut Findings, inspection: &Inspection) {
    let segment_bytes = findings.segment_bytes;
    let mut previous_end = inspection.checkpoint.as_ref().map_or(0, |(lsn, _)| lsn.0);
    for record in &inspection.records {
        let (start, end) = (record.lsn.0, record.end_lsn().0);
        let segment_start = start / segment_bytes * segment_bytes;
        if start < previous_end {
            let detail = format!("record at {start} starts before the previous one ends ({previous_end})");
            findings.at_record(start, "lsn_overlap", detail, false);
        } else if !(start - previous_end.max(segment_start)).is_multiple_of(SYNC_MARKER_RECORD_BYTES) {
            let detail = format!("unexplained gap between {previous_end} and the record at {start}");
            findings.at_record(start, "lsn_gap", detail, false);
        }
        if (end - 1) / segment_bytes != start / segment_bytes {
            findings.at_record(
                start,
                "lsn_straddles_segment",
                format!("record {start}..{end} crosses a segment end"),
                false,
            );
        }
        previous_end = previous_end.max(end);
    }
}

/// Replays the checkpoint and the records into a scratch state and checks
/// money conservation and balances.
fn replay(findings: &mut Findings, checkpoint: &Checkpoint, entries: &[(u64, Entry)]) {
    let mut balances: Balances = HashMap::new();
    for (service, accounts) in &checkpoint.ledgers {
        let ledger = balances.entry(service.clone()).or_default();
        for (account, balance) in accounts {
            ledger.insert(account.clone(), (*balance, None));
        }
    }
    for (lsn, entry) in entries {
        match entry {
            Entry::Commit { tx, changes, branches, .. } => {
                replay_commit(findings, &mut balances, *lsn, tx, changes, !branches.is_empty())
            }
            Entry::Account { service, account, balance } => {
                let Some(ledger) = balances.get_mut(service) else {
                    let detail =
                        format!("account record for {service}/{account}: no such ledger service in the checkpoint");
                    findings.at_record(*lsn, "unknown_service", detail, true);
                    continue;
                };
                let old = ledger.insert(account.clone(), (*balance, Some(*lsn))).map_or(0, |(b, _)| b);
                findings.report.created_total += i128::from(*balance) - i128::from(old);
            }
            Entry::Abort { .. } | Entry::Begin { .. } | Entry::Done { .. } | Entry::Operator { .. } => {}
        }
    }
    let report = &mut findings.report;
    let mut total = 0i128;
    let mut negative = Vec::new();
    for (service, ledger) in &balances {
        for (account, (balance, last)) in ledger {
            report.accounts += 1;
            total += i128::from(*balance);
            if *balance < 0 {
                negative.push((format!("{service}/{account}"), *balance, *last));
            }
        }
    }
    report.total_balance = total;
    report.negative_balances = negative.len() as u64;
    negative.sort();
    for (account, balance, last) in negative {
        let detail = format!("account {account} ends replay at {balance} (last changed by the record here)");
        findings.in_replay(last, "negative_balance", detail);
    }
    let expected = findings.report.checkpoint_total + findings.report.created_total + findings.report.external_net;
    if findings.report.total_balance != expected {
        let detail = format!(
            "total after replay is {}, but the checkpoint's {} plus {} created plus {} moved by external participants is {expected}",
            findings.report.total_balance,
            findings.report.checkpoint_total,
            findings.report.created_total,
            findings.report.external_net
        );
        findings.in_replay(None, "money_not_conserved", detail);
    }
}

fn replay_commit(
    findings: &mut Findings,
    balances: &mut Balances,
    lsn: u64,
    tx: &TxId,
    changes: &[crate::durable::codec::Change],
    external: bool,
) {
    let mut net = 0i128;
    for change in changes {
        net += i128::from(change.delta);
        let Some(ledger) = balances.get_mut(&change.service) else {
            let detail = format!(
                "commit {tx} changes {}/{}: no such ledger service in the checkpoint",
                change.service, change.account
            );
            findings.at_record(lsn, "unknown_service", detail, true);
            continue;
        };
        let slot = match ledger.get_mut(&change.account) {
            Some(slot) => slot,
            None => {
                let detail = format!(
                    "commit {tx} changes {}/{}, which neither the checkpoint nor an account record created",
                    change.service, change.account
                );
                findings.at_record(lsn, "account_missing", detail, false);
                // Recovery creates it at 0; replay does the same.
                ledger.entry(change.account.clone()).or_insert((0, None))
            }
        };
        match slot.0.checked_add(change.delta) {
            Some(balance) => *slot = (balance, Some(lsn)),
            None => {
                let detail = format!(
                    "commit {tx}: {}/{} overflows ({} + {})",
                    change.service, change.account, slot.0, change.delta
                );
                findings.at_record(lsn, "balance_overflow", detail, false);
            }
        }
    }
    if !external {
        if net != 0 {
            let detail = format!("commit {tx} among ledgers only changes the total by {net}");
            findings.at_record(lsn, "money_not_conserved", detail, false);
        }
    } else {
        // Money may flow to or from participants that keep their own books.
        findings.report.external_net += net;
    }
}
