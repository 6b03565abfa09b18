//! What an operator sees and does on a running coordinator: the unfinished
//! transactions with each participant's phase, retry-now, and resolve.
//!
//! Every action is recorded in the log as an `Operator` record with the
//! operator's reason before it takes effect, and an action that would break
//! atomicity is refused with [`Error::UnsafeResolution`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Inner;
use super::outstanding::{Stall, until};
use super::plan::Plan;
use super::worker::{Request, Step, Submitted};
use crate::durable::Entry;
use crate::durable::codec::{Action, MAX_OPERATOR_HISTORY, OperatorRecord};
use crate::error::{Error, Result};
use crate::operator::{
    ParticipantState, Resolution, ResolveReport, RetryReport, TxKind, TxState, UnfinishedTx, age_seconds, check_reason,
};
use crate::participant::BranchId;
use crate::protocol::resolve::{self, Decided};
use crate::txn::{AbortReason, Outcome, TxId, unix_nanos};

impl Inner {
    /// Every transaction with a failing, parked, or unacknowledged call.
    pub(super) fn unfinished(&self) -> Vec<UnfinishedTx> {
        let mut by_tx: BTreeMap<TxId, UnfinishedTx> = BTreeMap::new();
        for stall in self.outstanding.stalls() {
            let entry = by_tx.entry(stall.key.tx).or_insert_with(|| self.unfinished_entry(stall.key.tx));
            let commit = stall.step == Step::Commit;
            let phase = match (stall.resolved, stall.is_parked(), commit) {
                (true, _, _) => "resolving",
                (false, true, true) => "parked-commit",
                (false, true, false) => "parked-rollback",
                (false, false, true) => "committing",
                (false, false, false) => "rolling-back",
            };
            if stall.is_parked() {
                entry.state = TxState::Stuck;
            } else if !commit && entry.state == TxState::Committing {
                entry.state = TxState::RollingBack;
            }
            entry.participants.push(ParticipantState {
                name: self.name(stall.service),
                branch: Some(stall.key.branch),
                phase: phase.into(),
                attempts: stall.attempts,
                next_retry_in_ms: stall.next_retry.map(|at| until(at).as_millis() as u64),
                last_error: Some(stall.last_error.clone()),
            });
        }
        for (tx, owed) in self.outstanding.unresolved() {
            let entry = by_tx.entry(tx).or_insert_with(|| self.unfinished_entry(tx));
            let commit = owed.step == Step::Commit;
            if !commit && entry.state == TxState::Committing {
                entry.state = TxState::RollingBack;
            }
            for b in owed.branches {
                let name = self.name(b.service);
                if !entry.participants.iter().any(|p| p.name == name && p.branch == Some(b.branch)) {
                    entry.participants.push(ParticipantState {
                        name,
                        branch: Some(b.branch),
                        phase: if commit { "awaiting-ack" } else { "awaiting-rollback" }.into(),
                        attempts: 0,
                        next_retry_in_ms: None,
                        last_error: None,
                    });
                }
            }
        }
        let mut list: Vec<UnfinishedTx> = by_tx.into_values().collect();
        for tx in &mut list {
            if tx.state != TxState::Committing
                && let Ok(Some((Outcome::Aborted(reason), _))) = self.recent.get(tx.tx)
            {
                tx.reason = Some(reason.to_string());
            }
        }
        list
    }

    fn unfinished_entry(&self, tx: TxId) -> UnfinishedTx {
        UnfinishedTx {
            tx,
            kind: TxKind::TwoPhase,
            state: TxState::Committing,
            age_seconds: age_seconds(tx),
            participants: Vec::new(),
            reason: None,
        }
    }

    /// Logs an operator action (and any records it implies) and waits until
    /// it is durable; keeps it in the history checkpoints carry.
    fn record_action(&self, tx: TxId, action: Action, reason: &str, implied: &[Entry]) -> Result<()> {
        let record = OperatorRecord { tx, action, reason: reason.to_string(), at_unix_ns: unix_nanos() };
        self.remember_operator(record.clone());
        tracing::warn!(%tx, action = action.as_str(), reason, "operator action");
        let Some(journal) = &self.journal else { return Ok(()) };
        let lsn = self.log_or_fail(journal.append_operator(record, implied))?;
        self.log_or_fail(journal.wait(lsn))
    }

    /// Delivers parked calls again, with a fresh attempt budget, and wakes
    /// calls waiting out a backoff. `None`: every parked call.
    pub(super) fn retry_now(&self, tx: Option<TxId>, reason: &str) -> Result<RetryReport> {
        check_reason(reason)?;
        let _in_flight = self.enter()?;
        if let Some(tx) = tx
            && self.outstanding.stalls_of(tx).iter().all(|s| s.resolved)
        {
            return Err(Error::NotStuck { tx });
        }
        // Taken off the parked list first, so the audit records name exactly
        // the calls delivered below (a log failure stops the coordinator).
        let (redeliver, woken) = self.outstanding.retry_now(tx);
        let mut transactions: Vec<TxId> = match tx {
            Some(tx) => vec![tx],
            None => redeliver.iter().map(|s| s.key.tx).collect(),
        };
        transactions.sort_unstable();
        transactions.dedup();
        for &t in &transactions {
            self.record_action(t, Action::RetryNow, reason, &[])?;
        }
        for stall in &redeliver {
            self.deliver(stall);
        }
        Ok(RetryReport { transactions, redelivered: redeliver.len(), woken })
    }

    /// Hands a parked call to its service again (its reply is not awaited).
    fn deliver(&self, stall: &Stall) {
        let plan = Arc::new(Plan::bare(stall.key, stall.service));
        let (reply, _ignored) = crate::sync::channel::bounded(1);
        let handle = self.lane(stall.service, BranchId { tx: stall.key.tx, index: stall.key.branch });
        // A parked commit was delivered once already, so its decision is durable.
        let after = (stall.step == Step::Commit).then_some(crate::wal::Lsn(0));
        if matches!(handle.submit(&plan, 0, stall.step, &reply, None, after), Submitted::Full) {
            tracing::error!(tx = %stall.key.tx, service = %handle.name, "worker gone: retry not delivered");
        }
    }

    /// See [`Coordinator::resolve`](crate::Coordinator::resolve).
    pub(super) fn resolve(&self, tx: TxId, resolution: Resolution, reason: &str) -> Result<ResolveReport> {
        check_reason(reason)?;
        let _in_flight = self.enter()?;
        let stalls = self.outstanding.stalls_of(tx);
        let awaiting = self.outstanding.awaiting(tx);
        let recorded = self.recent.get(tx)?.map(|(outcome, _)| outcome);
        let owed_step = awaiting.as_ref().map(|o| o.step);
        let commit_decided = stalls.iter().any(|s| s.step == Step::Commit)
            || owed_step == Some(Step::Commit)
            || matches!(recorded, Some(ref o) if o.is_committed());
        let abort_decided = stalls.iter().any(|s| s.step == Step::Rollback)
            || owed_step == Some(Step::Rollback)
            || matches!(recorded, Some(Outcome::Aborted(_)));
        let mut settled: Vec<String> = stalls.iter().map(|s| self.name(s.service)).collect();
        for b in awaiting.iter().flat_map(|o| &o.branches) {
            let service = self.name(b.service);
            if !settled.contains(&service) {
                settled.push(service);
            }
        }
        let window = self.config.tx_timeout + self.config.call_timeout;
        let facts = resolve::Facts {
            decided: match (commit_decided, abort_decided) {
                (true, _) => Some(Decided::Commit),
                (false, true) => Some(Decided::Abort),
                (false, false) => None,
            },
            conflicting: commit_decided && abort_decided,
            owing: !settled.is_empty(),
            // A begun, undecided transaction is still running here.
            begun: false,
            forgettable: self.forgettable(tx),
            maybe_running: tx.timestamp_ns().saturating_add(window.as_nanos() as u64) > unix_nanos(),
        };
        let horizon_s = self.config.idempotency_horizon.as_secs();
        let step = resolve::rule(facts, resolution, horizon_s, window)
            .map_err(|reason| Error::UnsafeResolution { tx, reason })?;
        let report = |settled: Vec<String>, note: &str| ResolveReport { tx, resolution, settled, note: note.into() };
        match step {
            resolve::Step::Nothing { note } => Ok(report(settled, note)),
            resolve::Step::Settle { decided, note } => {
                let action = if decided == Decided::Commit { Action::Commit } else { Action::Abort };
                let implied: &[Entry] =
                    if decided == Decided::Commit || owed_step.is_some() { &[Entry::Done { tx }] } else { &[] };
                self.record_action(tx, action, reason, implied)?;
                self.outstanding.forget_acks(tx);
                for stall in self.outstanding.resolve(tx) {
                    let request = Request::Settle { key: stall.key, step: stall.step };
                    let deadline = Some(std::time::Instant::now() + self.config.call_timeout);
                    let lane = self.lane(stall.service, BranchId { tx: stall.key.tx, index: stall.key.branch });
                    if !matches!(lane.enqueue(request, deadline), Submitted::Queued) {
                        tracing::error!(%tx, service = %self.name(stall.service), "worker gone: settle not delivered");
                    }
                }
                Ok(report(settled, note))
            }
            resolve::Step::RecordAbort { note } => {
                debug_assert!(recorded.is_none());
                let outcome = Outcome::Aborted(AbortReason::Operator { reason: reason.into() });
                match self.recent.abort_unknown(tx, outcome)? {
                    None => {}
                    Some(None) => return Err(Error::TxInProgress { tx }),
                    Some(Some(_)) => {
                        let reason = "its outcome was recorded meanwhile; look again".into();
                        return Err(Error::UnsafeResolution { tx, reason });
                    }
                }
                let abort = Entry::Abort {
                    tx,
                    fingerprint: super::recent::ANY_FINGERPRINT,
                    reason: AbortReason::Operator { reason: reason.into() },
                };
                self.record_action(tx, Action::Abort, reason, &[abort])?;
                Ok(report(Vec::new(), note))
            }
        }
    }

    /// True if the outcome of `tx` may be forgotten: older than the
    /// idempotency horizon or than the ids whose outcomes are remembered.
    fn forgettable(&self, tx: TxId) -> bool {
        let horizon_ns = u64::try_from(self.config.idempotency_horizon.as_nanos()).unwrap_or(u64::MAX);
        let expired_before = self.recent.archive().map_or(0, |a| a.expired_before_unix_ns());
        let beyond_horizon = tx.timestamp_ns() < expired_before.max(unix_nanos().saturating_sub(horizon_ns));
        self.recent.forgotten().is_some_and(|f| tx <= f) || beyond_horizon
    }

    /// Keeps an operator action in the bounded history.
    pub(super) fn remember_operator(&self, record: OperatorRecord) {
        let mut history = self.operator_history.lock();
        history.push_back(record);
        while history.len() > MAX_OPERATOR_HISTORY {
            history.pop_front();
        }
    }

    /// The newest operator actions (for checkpoints).
    pub(super) fn operator_history(&self) -> Vec<OperatorRecord> {
        self.operator_history.lock().iter().cloned().collect()
    }
}
