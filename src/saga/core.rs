//! The executor's shared state (`Core`) and the vocabulary the driving code
//! (`run.rs`) and the executor's API (`executor.rs`) both use: a saga's
//! state and info, the counters, the configuration. It uses neither of them,
//! so the imports of `saga/` point one way: executor → run → core.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::clock::Clock;
use super::error::SagaError;
use super::jitter::JitterSource;
use super::log::{End, Phase, Rec, Row, StepState, Table};
use crate::retry::RetryPolicy;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::txn::{TxId, TxIdGen};
use crate::wal::Wal;

/// Longest failure explanation kept in the log, in bytes.
const MAX_REASON_BYTES: usize = 1024;

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SagaState {
    /// Going forward (or waiting to be resumed after a restart).
    Running,
    /// A step failed for good or the deadline passed; compensations are
    /// running (or waiting to be resumed).
    Compensating,
    /// Every step is done.
    Completed,
    /// Every completed step was compensated.
    Compensated,
    /// A compensation kept failing past the limit: an operator must look.
    /// See [`SagaExecutor::retry_stuck`](super::SagaExecutor::retry_stuck).
    Stuck,
}

impl SagaState {
    /// A stable machine-readable name.
    pub fn code(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
            SagaState::Stuck => "stuck",
        }
    }

    /// True for `Completed`, `Compensated` and `Stuck`.
    pub fn is_final(self) -> bool {
        matches!(self, SagaState::Completed | SagaState::Compensated | SagaState::Stuck)
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One saga as the executor knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaInfo {
    /// The saga's id.
    pub id: TxId,
    /// Its definition's name.
    pub definition: String,
    /// Where it is.
    pub state: SagaState,
    /// Steps in the definition.
    pub steps: usize,
    /// Steps whose action completed, in completion order (by name when the
    /// definition is registered, else by index).
    pub completed_steps: Vec<String>,
    /// Steps whose compensation completed.
    pub compensated_steps: usize,
    /// Why it compensated, or why it is stuck.
    pub failure: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub started: AtomicU64,
    pub resumed: AtomicU64,
    pub completed: AtomicU64,
    pub compensated: AtomicU64,
    pub stuck_events: AtomicU64,
    pub step_attempts: AtomicU64,
    pub step_retries: AtomicU64,
    pub timeouts: AtomicU64,
    pub panics: AtomicU64,
    pub step_failures: AtomicU64,
    pub deadlines_exceeded: AtomicU64,
    pub compensation_attempts: AtomicU64,
    pub compensation_retries: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    // Relaxed: statistics; no other memory is published through them.
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn read(counter: &AtomicU64) -> u64 {
    // Relaxed: see `bump`.
    counter.load(Ordering::Relaxed)
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub compensation_retry: RetryPolicy,
    pub max_open_sagas: usize,
    pub max_finished_sagas: usize,
    pub checkpoint_every_bytes: u64,
    pub redeliver: u32,
}

pub(crate) struct LogState {
    pub wal: Wal,
    /// Position of the newest checkpoint; also serializes checkpoints.
    pub checkpoint_lsn: Mutex<u64>,
    /// Held while the executor lives (directory logs only).
    pub _lock: Option<crate::durable::dirlock::DirLock>,
}

/// What drives one definition's sagas, its input type erased.
pub(crate) trait ErasedDefinition: Send + Sync {
    fn step_count(&self) -> usize;
    fn step_name(&self, step: usize) -> Option<&str>;
    fn drive_logged(&self, core: &Core, row: &Row) -> Result<SagaInfo, SagaError>;
}

/// The executor's shared state, used by the driving code in `run`.
pub(crate) struct Core {
    pub log: Option<LogState>,
    pub table: Mutex<Table>,
    pub clock: Arc<dyn Clock>,
    pub jitter: JitterSource,
    pub config: Config,
    pub counters: Counters,
    pub in_flight: Arc<AtomicUsize>,
    pub ids: TxIdGen,
    pub active: Mutex<HashSet<TxId>>,
    pub definitions: Mutex<HashMap<String, Arc<dyn ErasedDefinition>>>,
}

/// Marks a saga as driven by this thread until dropped.
pub(crate) struct Claim<'a> {
    core: &'a Core,
    saga: TxId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.core.active.lock().remove(&self.saga);
    }
}

pub(crate) fn clip(mut text: String) -> String {
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl Core {
    pub(crate) fn row(&self, saga: TxId) -> Result<Row, SagaError> {
        self.table.lock().rows.get(&saga).cloned().ok_or(SagaError::UnknownSaga { saga })
    }

    pub(crate) fn claim(&self, saga: TxId) -> Result<Claim<'_>, SagaError> {
        if !self.active.lock().insert(saga) {
            return Err(SagaError::InProgress { saga });
        }
        Ok(Claim { core: self, saga })
    }

    /// Appends `rec`, applies it to the table, and waits until it is
    /// durable. Appending and applying happen under the table lock, so a
    /// snapshot taken under that lock matches a log position exactly.
    pub(crate) fn record(&self, rec: Rec, step: Option<&str>) -> Result<(), SagaError> {
        self.record_checked(rec, step, |_| Ok(()))
    }

    /// `record`, after `check` accepted the table (under the same lock).
    pub(crate) fn record_checked(
        &self,
        rec: Rec,
        step: Option<&str>,
        check: impl FnOnce(&Table) -> Result<(), SagaError>,
    ) -> Result<(), SagaError> {
        let log_error = |cause: String| SagaError::Log {
            saga: rec.saga(),
            step: step.map(str::to_string),
            record: rec.name(),
            cause,
        };
        let lsn = {
            let mut table = self.table.lock();
            check(&table)?;
            let lsn = match &self.log {
                Some(log) => Some(log.wal.append(rec.kind(), &rec.encode()).map_err(|e| log_error(e.to_string()))?),
                None => None,
            };
            if let Err(why) = table.apply(&rec) {
                debug_assert!(false, "saga record does not fit the table: {why}");
                tracing::error!(%why, "saga record does not fit the table");
            }
            lsn
        };
        if let (Some(log), Some(lsn)) = (&self.log, lsn) {
            log.wal.wait_durable(lsn).map_err(|e| log_error(e.to_string()))?;
        }
        if let Rec::Finished { end, .. } = &rec {
            match end {
                End::Completed => bump(&self.counters.completed),
                End::Compensated => bump(&self.counters.compensated),
                End::Stuck => bump(&self.counters.stuck_events),
            }
        }
        self.maybe_checkpoint();
        Ok(())
    }

    /// Writes a checkpoint once the log has grown by a quarter segment since
    /// the last one, so the log stays within its segments. A failure is
    /// logged; the log itself is still whole.
    fn maybe_checkpoint(&self) {
        let Some(log) = &self.log else { return };
        // Cheap check first: most records do not need a checkpoint.
        if log.wal.end_lsn().0.saturating_sub(*log.checkpoint_lsn.lock()) < self.config.checkpoint_every_bytes {
            return;
        }
        let mut newest = log.checkpoint_lsn.lock();
        if log.wal.end_lsn().0.saturating_sub(*newest) < self.config.checkpoint_every_bytes {
            return;
        }
        let (lsn, snapshot) = {
            let table = self.table.lock();
            (log.wal.end_lsn(), table.encode())
        };
        match log.wal.checkpoint(lsn, &snapshot) {
            Ok(()) => *newest = lsn.0,
            Err(e) => {
                let error = SagaError::Checkpoint { lsn: lsn.0, cause: e.to_string() };
                tracing::warn!(%error, "saga log checkpoint failed; will retry after the next saga");
            }
        }
    }

    pub(crate) fn start(
        &self,
        definition: &str,
        steps: usize,
        deadline: Duration,
        input: String,
    ) -> Result<TxId, SagaError> {
        let deadline_at_ms = u64::try_from(self.clock.now().saturating_add(deadline).as_millis()).unwrap_or(u64::MAX);
        let saga = self.ids.next();
        let rec = Rec::Started { saga, definition: definition.to_string(), steps: steps as u16, deadline_at_ms, input };
        let limit = self.config.max_open_sagas;
        self.record_checked(rec, None, |table| {
            if table.open() >= limit {
                return Err(SagaError::TooManySagas { definition: definition.to_string(), limit });
            }
            Ok(())
        })?;
        bump(&self.counters.started);
        Ok(saga)
    }

    pub(crate) fn info(&self, saga: TxId) -> Result<SagaInfo, SagaError> {
        let row = self.row(saga)?;
        let definition = self.definitions.lock().get(&row.definition).cloned();
        Ok(info_of(&row, definition.as_deref()))
    }
}

pub(crate) fn info_of(row: &Row, definition: Option<&dyn ErasedDefinition>) -> SagaInfo {
    let state = match row.phase {
        Phase::Forward => SagaState::Running,
        Phase::Compensating => SagaState::Compensating,
        Phase::Finished(End::Completed) => SagaState::Completed,
        Phase::Finished(End::Compensated) => SagaState::Compensated,
        Phase::Finished(End::Stuck) => SagaState::Stuck,
    };
    let name = |i: u16| match definition.and_then(|d| d.step_name(usize::from(i))) {
        Some(name) => name.to_string(),
        None => format!("#{i}"),
    };
    SagaInfo {
        id: row.id,
        definition: row.definition.clone(),
        state,
        steps: row.steps.len(),
        completed_steps: row.done_order.iter().map(|&i| name(i)).collect(),
        compensated_steps: row.steps.iter().filter(|s| **s == StepState::Compensated).count(),
        failure: row.failure.clone(),
    }
}
