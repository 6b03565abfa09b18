//! The coordinator's side of durability: what it logs for a decision,
//! recovery on open, and checkpoints.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::plan::Plan;
use super::worker::{Request, Step, Submitted};
use super::{Inner, replies};
use smallvec::SmallVec;

use crate::durable::{
    Checkpoint, Encoded, Entry, RecoveryReport, Remembered, Replayed, Unresolved, encode_commit, unresolved_commits,
};
use crate::durable::{codec, control};
use crate::error::{Error, Result};
use crate::sync::Ordering;
use crate::txn::{Outcome, TxId};

impl Inner {
    /// The commit record of `plan`: every ledger change, and the external
    /// services that must acknowledge.
    pub(super) fn commit_entry(&self, plan: &Plan) -> Encoded {
        let mut changes: SmallVec<[(&str, &str, i64); 8]> = SmallVec::new();
        let mut external: SmallVec<[&str; 4]> = SmallVec::new();
        for group in 0..plan.groups.len() {
            let service = usize::from(plan.service_of(group));
            let name: &str = &self.services[service].name;
            if self.ledgers[service].is_some() {
                changes.extend(plan.changes(group).map(|(account, delta)| (name, account, delta)));
            } else {
                external.push(name);
            }
        }
        let bytes = encode_commit(plan.tx, plan.fingerprint, changes.into_iter(), &external);
        Encoded { kind: codec::KIND_COMMIT, bytes }
    }

    fn ledger_index(&self, service: &str) -> Result<usize> {
        self.services.iter().position(|s| &*s.name == service).filter(|&i| self.ledgers[i].is_some()).ok_or_else(|| {
            Error::Config(format!("the log holds ledger service {service:?}, which is not registered as a ledger"))
        })
    }

    /// Rebuilds state from the last checkpoint and the records after it, and
    /// resolves external participants' in-doubt transactions (presumed abort).
    pub(super) fn restore(&self, replayed: Replayed) -> Result<RecoveryReport> {
        let Replayed { checkpoint, entries, mut report } = replayed;
        let mut committed = unresolved_commits(checkpoint.as_ref(), entries.iter().map(|(_, e)| e));
        if let Some(c) = checkpoint {
            self.ids.observe(TxId::from_u128(c.high_water));
            for (service, accounts) in &c.ledgers {
                let ledger = self.ledgers[self.ledger_index(service)?].as_ref().expect("ledger_index checked");
                for (account, balance) in accounts {
                    ledger.put(account, *balance)?;
                }
            }
            for m in c.recent {
                let outcome = m.aborted.map_or(Outcome::Committed, Outcome::Aborted);
                self.recent.finish(m.tx, m.fingerprint, outcome);
            }
            for record in c.operator {
                self.remember_operator(record);
            }
        }
        for (_, entry) in entries {
            match entry {
                Entry::Commit { tx, fingerprint, changes, .. } => {
                    self.ids.observe(tx);
                    for change in &changes {
                        let ledger = self.ledgers[self.ledger_index(&change.service)?].as_ref().expect("checked");
                        ledger.adjust(&change.account, change.delta)?;
                    }
                    self.recent.finish(tx, fingerprint, Outcome::Committed);
                }
                Entry::Abort { tx, fingerprint, reason } => {
                    self.ids.observe(tx);
                    self.recent.finish(tx, fingerprint, Outcome::Aborted(reason));
                }
                Entry::Done { .. } => {}
                Entry::Account { service, account, balance } => {
                    let ledger = self.ledgers[self.ledger_index(&service)?].as_ref().expect("checked");
                    ledger.put(&account, balance)?;
                }
                Entry::Operator { tx, action, reason, at_unix_ns } => {
                    let record = codec::OperatorRecord { tx, action, reason, at_unix_ns };
                    self.remember_operator(record);
                }
            }
        }
        // External participants: commit what the log decided, roll back the
        // rest (presumed abort). Every transaction a participant still holds
        // prepared is resolved, however old.
        let mut in_doubt: Vec<(usize, TxId, Step)> = Vec::new();
        let mut holders: HashMap<TxId, Vec<String>> = HashMap::new();
        for (i, handle) in self.handles.iter().enumerate() {
            for tx in handle.recover_in_doubt() {
                let commit = committed.contains_key(&tx) || matches!(self.recent.get(tx), Some(o) if o.is_committed());
                in_doubt.push((i, tx, if commit { Step::Commit } else { Step::Rollback }));
                holders.entry(tx).or_default().push(handle.name.to_string());
            }
        }
        // A decided commit that a participant no longer holds prepared was
        // applied there before the crash (it voted yes, and `recover` lists
        // every prepared, unfinished transaction): only the holders are
        // still owed an acknowledgement.
        let mut done = Vec::new();
        committed.retain(|tx, external| {
            let held = holders.get(tx);
            external.retain(|s| held.is_some_and(|h| h.contains(s)));
            if external.is_empty() {
                done.push(*tx);
            }
            !external.is_empty()
        });
        self.outstanding.restore_unresolved(committed);
        if let (Some(journal), false) = (&self.journal, done.is_empty()) {
            let records: Vec<Encoded> = done.iter().map(|&tx| Entry::Done { tx }.encoded()).collect();
            journal.append_batch(&records)?;
        }
        let (reply, _replies) = replies();
        for (i, tx, step) in in_doubt {
            let handle = &self.handles[i];
            tracing::info!(%tx, service = %handle.name, ?step, "resolving in-doubt transaction");
            let plan = Arc::new(Plan::bare(tx, handle.index));
            if !matches!(handle.submit(&plan, 0, step, &reply, None), Submitted::Inline(_) | Submitted::Queued) {
                return Err(Error::ServiceUnavailable { service: handle.name.to_string() });
            }
            report.in_doubt_resolved += 1;
        }
        Ok(report)
    }

    /// Takes a consistent cut of the ledgers, the recent ids and the
    /// unresolved commits, and writes it as a checkpoint.
    pub(super) fn checkpoint_now(&self) -> Result<()> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let _one_at_a_time = self.checkpoint_lock.lock();
        let deadline = Instant::now() + self.config.tx_timeout;
        let Some(locks) = self.locks.acquire_all(deadline) else {
            return Err(Error::Log("checkpoint could not take the locks before its deadline".into()));
        };
        // Every commit enqueued so far must be applied before the snapshot:
        // a flush request behind them in each ledger's queue proves it.
        self.flush_ledgers(deadline)?;
        // No transaction holds a lock, so every record below `lsn` has been
        // applied, and no record of an unapplied transaction lies below it.
        let lsn = journal.end();
        let mut checkpoint = Checkpoint { high_water: self.ids.next().as_u128(), ..Default::default() };
        for (i, ledger) in self.ledgers.iter().enumerate() {
            if let Some(ledger) = ledger {
                let mut accounts = Vec::with_capacity(ledger.len());
                ledger.for_each_account(|name, balance| accounts.push((name.to_string(), balance)));
                checkpoint.ledgers.push((self.services[i].name.to_string(), accounts));
            }
        }
        checkpoint.recent = self
            .recent
            .snapshot()
            .into_iter()
            .map(|(tx, fingerprint, outcome)| Remembered {
                tx,
                fingerprint,
                aborted: match outcome {
                    Outcome::Aborted(reason) => Some(reason),
                    _ => None,
                },
            })
            .collect();
        checkpoint.unresolved =
            self.outstanding.unresolved().into_iter().map(|(tx, external)| Unresolved { tx, external }).collect();
        checkpoint.operator = self.operator_history();
        drop(locks);
        let started = Instant::now();
        journal.checkpoint(lsn, &checkpoint)?;
        tracing::info!(lsn = lsn.0, elapsed = ?started.elapsed(), "checkpoint written");
        Ok(())
    }

    /// Waits until every request queued to a ledger service so far is handled.
    fn flush_ledgers(&self, deadline: Instant) -> Result<()> {
        let (reply, replies) = replies();
        let mut waiting = 0;
        for (i, handle) in self.handles.iter().enumerate() {
            if self.ledgers[i].is_some() {
                match handle.enqueue(Request::Audit { reply: reply.clone() }, Some(deadline)) {
                    Submitted::Queued => waiting += 1,
                    _ => return Err(Error::Log("checkpoint could not reach a ledger worker".into())),
                }
            }
        }
        while waiting > 0 {
            match replies.recv_deadline(deadline) {
                Ok(super::Reply::Audit { .. }) => waiting -= 1,
                Ok(_) => {}
                Err(_) => return Err(Error::Log("checkpoint timed out waiting for a ledger worker".into())),
            }
        }
        Ok(())
    }
}

/// Checkpoints in the background whenever enough log was written, and
/// answers operator requests dropped into the data directory (see
/// `durable::control`).
pub(super) fn spawn_checkpointer(inner: &Arc<Inner>) -> Result<std::thread::JoinHandle<()>> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let dir = inner.config.dir.clone().filter(|_| inner.config.storage.is_none());
    std::thread::Builder::new()
        .name("dtc-checkpoint".into())
        .spawn(move || {
            let mut polled = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let Some(inner) = weak.upgrade() else { return };
                // SeqCst: pairs with `shutdown`.
                if inner.closing.load(Ordering::SeqCst) {
                    return;
                }
                let due = inner.journal.as_ref().is_some_and(|j| j.checkpoint_due());
                if due && let Err(error) = inner.checkpoint_now() {
                    tracing::error!(%error, "checkpoint failed");
                }
                if let Some(dir) = &dir
                    && polled.elapsed() >= control::POLL_EVERY
                {
                    polled = Instant::now();
                    control::serve(dir, |request| inner.handle_control(request));
                }
            }
        })
        .map_err(|source| Error::Io { op: "spawning the checkpoint thread".into(), source })
}

impl Inner {
    /// Answers one operator request from the control channel.
    fn handle_control(&self, request: control::Request) -> control::Response {
        use control::{Request, Response};
        match request {
            Request::Unfinished => Response::Unfinished { transactions: self.unfinished() },
            Request::RetryNow { tx, reason } => match self.retry_now(tx, &reason) {
                Ok(report) => Response::Retried { report },
                Err(error) => Response::refused(&error),
            },
            Request::Resolve { tx, resolution, reason } => match self.resolve(tx, resolution, &reason) {
                Ok(report) => Response::Resolved { report },
                Err(error) => Response::refused(&error),
            },
        }
    }
}
