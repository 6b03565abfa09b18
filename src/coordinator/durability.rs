//! The coordinator's side of durability: what it logs for a decision,
//! recovery on open, and checkpoints.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use hashbrown::HashSet;

use super::barrier::TxKey;
use super::outstanding::{Owed, OwedBranch};
use super::plan::Plan;
use super::worker::{Request, Step, Submitted};
use super::{Inner, replies};
use smallvec::SmallVec;

use crate::durable::{
    BranchRecord, Checkpoint, Encoded, Entry, Open, Records, RecoveryReport, Replayed, Unresolved, encode_commit,
    open_transactions, write_commit,
};
use crate::durable::{codec, control};
use crate::error::{Error, Result};
use crate::participant::BranchId;
use crate::protocol::recovery::{self, Deliver};
use crate::sync::Ordering;
use crate::txn::{Outcome, TxId};
use crate::wal::Lsn;

impl Inner {
    /// The commit record of a plan whose branches are all ledgers: every
    /// ledger change (the direct path; see `two_phase` for the others).
    pub(super) fn commit_entry(&self, plan: &Plan) -> Encoded {
        let changes = self.ledger_changes(plan);
        Encoded { kind: codec::KIND_COMMIT, bytes: encode_commit(plan.tx, plan.fingerprint, changes.into_iter()) }
    }

    /// `commit_entry`, encoded into a batch's buffer.
    pub(super) fn push_commit(&self, plan: &Plan, records: &mut Records) {
        let changes = self.ledger_changes(plan);
        records
            .push_with(codec::KIND_COMMIT, |bytes| write_commit(bytes, plan.tx, plan.fingerprint, changes.into_iter()));
    }

    /// (service, account, delta) of every change of a plan whose branches
    /// are all ledgers.
    fn ledger_changes<'p>(&'p self, plan: &'p Plan) -> SmallVec<[(&'p str, &'p str, i64); 8]> {
        let mut changes = SmallVec::new();
        for branch in 0..plan.branches.len() {
            let service = usize::from(plan.service_of(branch));
            debug_assert!(self.ledgers[service].is_some(), "the direct path takes ledgers only");
            let name: &str = &self.services[service].name;
            changes.extend(plan.changes(branch).map(|(account, delta)| (name, account, delta)));
        }
        changes
    }

    fn ledger_index(&self, service: &str) -> Result<usize> {
        self.services.iter().position(|s| &*s.name == service).filter(|&i| self.ledgers[i].is_some()).ok_or_else(|| {
            Error::Config(format!("the log holds ledger service {service:?}, which is not registered as a ledger"))
        })
    }

    /// Rebuilds state from the last checkpoint and the records after it, and
    /// finishes every transaction whose non-ledger branches may not have
    /// applied its outcome (presumed abort for the undecided).
    pub(super) fn restore(&self, replayed: Replayed) -> Result<RecoveryReport> {
        let Replayed { checkpoint, entries, mut report } = replayed;
        let open = open_transactions(checkpoint.as_ref(), entries.iter().map(|(_, e)| e));
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
                self.recent.finish(m.tx, m.fingerprint, outcome, None);
            }
            for record in c.operator {
                self.remember_operator(record);
            }
            if let Some(archive) = self.recent.archive() {
                archive.set_expired_before(c.ids_expired_before);
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
                    self.recent.finish(tx, fingerprint, Outcome::Committed, None);
                }
                Entry::Begin { tx, .. } => self.ids.observe(tx),
                Entry::Abort { tx, fingerprint, reason } => {
                    self.ids.observe(tx);
                    self.recent.finish(tx, fingerprint, Outcome::Aborted(reason), None);
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
        let mut deliver: Vec<(u16, BranchId, Step)> = Vec::new();
        // Participants with their own storage list what they hold prepared:
        // commit what the log decided, roll back the rest (presumed abort),
        // however old.
        let mut held: HashSet<(TxId, u16, u16)> = HashSet::new();
        for lanes in &self.handles {
            let service = lanes.first().index;
            // Lanes are clones of one participant: lane 0 lists for all.
            for (branch, prepared) in lanes.first().recover_in_doubt() {
                if !lanes.for_branch(branch.tx, branch.index).adopt(branch, prepared) {
                    continue; // listed twice
                }
                let committed = open.get(&branch.tx).is_some_and(Open::is_commit)
                    || matches!(self.recent.get(branch.tx)?, Some((o, _)) if o.is_committed());
                deliver.push((service, branch, step_of(recovery::listed(committed))));
                held.insert((branch.tx, service, branch.index));
            }
        }
        // Transactions the log shows open: who still owes an acknowledgement.
        let mut owed_table: HashMap<TxId, Owed> = HashMap::new();
        let mut done = Vec::new();
        for (tx, o) in &open {
            let step = if o.is_commit() { Step::Commit } else { Step::Rollback };
            let mut branches = Vec::new();
            for b in &o.branches {
                let Some(service) = self.find(&b.service) else {
                    return Err(Error::Config(format!(
                        "the log holds unfinished transaction {tx} with a branch on service {:?}, which is not \
                         registered: register it so the transaction can finish",
                        b.service
                    )));
                };
                let branch = BranchId { tx: *tx, index: b.index };
                let handle = self.lane(service, branch);
                let held = held.contains(&(*tx, service, b.index));
                let (again, owes) = recovery::open_branch(handle.keeper, o.is_commit(), held);
                match again {
                    None => {}
                    Some(Deliver::Rollback) => {
                        handle.restore_unknown(branch, b.prepared.as_deref());
                        deliver.push((service, branch, Step::Rollback));
                    }
                    Some(Deliver::Commit) => {
                        if handle.restore_prepared(branch, b.prepared.as_deref().unwrap_or_default()) {
                            deliver.push((service, branch, Step::Commit));
                        } else {
                            self.park_unrestorable(branch, service);
                        }
                    }
                }
                if owes {
                    branches.push(OwedBranch {
                        service,
                        branch: b.index,
                        prepared: b.prepared.as_deref().map(Into::into),
                    });
                }
            }
            if branches.is_empty() {
                done.push(*tx);
            } else {
                owed_table.insert(*tx, Owed { step, branches });
            }
        }
        self.outstanding.restore_unresolved(owed_table);
        if let (Some(journal), false) = (&self.journal, done.is_empty()) {
            let records: Records = done.iter().map(|&tx| Entry::Done { tx }.encoded()).collect();
            journal.append_batch(&records)?;
        }
        let (reply, _replies) = replies();
        for (service, branch, step) in deliver {
            let handle = self.lane(service, branch);
            tracing::info!(%branch, service = %handle.name, ?step, "resolving in-doubt branch");
            let plan = Arc::new(Plan::bare(TxKey::recovered(branch), service));
            // The decision was read back from the log, which is durable.
            let after = (step == Step::Commit).then_some(Lsn(0));
            if !matches!(handle.submit(&plan, 0, step, &reply, None, after), Submitted::Inline(_) | Submitted::Queued) {
                return Err(Error::ServiceUnavailable { service: handle.name.to_string() });
            }
            report.in_doubt_resolved += 1;
        }
        Ok(report)
    }

    /// A decided commit to an external participant that cannot rebuild its
    /// prepared value: parked for an operator rather than guessed.
    fn park_unrestorable(&self, branch: BranchId, service: u16) {
        let key = TxKey::recovered(branch);
        let error = crate::operator::CallError {
            code: "unrestorable".into(),
            message: "after a restart the participant could not rebuild its prepared value from the commit record"
                .into(),
        };
        tracing::error!(%branch, service = %self.name(service), "commit parked: prepared value not restorable");
        self.outstanding.failed(key, service, Step::Commit, error, 1);
        if self.outstanding.park(key, service) == super::outstanding::Park::Parked {
            self.metrics.parked.add(1);
        }
    }

    /// Takes a consistent cut of the ledgers, the recent ids and the
    /// unresolved commits, and writes it as a checkpoint.
    pub(super) fn checkpoint_now(&self) -> Result<()> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let _one_at_a_time = self.checkpoint_lock.lock();
        let deadline = Instant::now() + self.config.tx_timeout;
        let Some(locks) = self.locks.acquire_all(deadline) else {
            return Err(Error::CheckpointTimeout { waiting_for: "the engine's locks" });
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
        checkpoint.unresolved = self
            .outstanding
            .unresolved()
            .into_iter()
            .map(|(tx, owed)| Unresolved {
                tx,
                commit: owed.step == Step::Commit,
                branches: owed
                    .branches
                    .iter()
                    .map(|b| BranchRecord {
                        service: self.name(b.service),
                        index: b.branch,
                        prepared: b.prepared.as_deref().map(<[u8]>::to_vec),
                    })
                    .collect(),
            })
            .collect();
        checkpoint.operator = self.operator_history();
        drop(locks);
        let started = Instant::now();
        // Every id decided below `lsn` moves to the archive before the
        // checkpoint lets its record go (the records after `lsn` rebuild the
        // table on recovery).
        journal.wait(lsn)?;
        let spilled = self.recent.spill(journal.durable())?;
        if let Some(archive) = self.recent.archive() {
            checkpoint.ids_expired_before = archive.expired_before_unix_ns();
        }
        checkpoint.ids_horizon_ns = u64::try_from(self.config.idempotency_horizon.as_nanos()).unwrap_or(u64::MAX);
        journal.checkpoint(lsn, &checkpoint)?;
        if let Some(archive) = self.recent.archive() {
            archive.compact()?;
            archive.expire(crate::txn::unix_nanos())?;
        }
        tracing::info!(lsn = lsn.0, spilled, elapsed = ?started.elapsed(), "checkpoint written");
        Ok(())
    }

    /// Waits until every request queued to a ledger service so far is handled.
    fn flush_ledgers(&self, deadline: Instant) -> Result<()> {
        let (reply, replies) = replies();
        let mut waiting = 0;
        for (i, lanes) in self.handles.iter().enumerate() {
            if self.ledgers[i].is_some() {
                match lanes.first().enqueue(Request::Audit { reply: reply.clone() }, Some(deadline)) {
                    Submitted::Queued => waiting += 1,
                    _ => return Err(Error::CheckpointTimeout { waiting_for: "a ledger worker (gone)" }),
                }
            }
        }
        while waiting > 0 {
            match replies.recv_deadline(deadline) {
                Ok(super::Reply::Audit { .. }) => waiting -= 1,
                Ok(_) => {}
                Err(_) => return Err(Error::CheckpointTimeout { waiting_for: "a ledger worker" }),
            }
        }
        Ok(())
    }
}

fn step_of(deliver: Deliver) -> Step {
    match deliver {
        Deliver::Commit => Step::Commit,
        Deliver::Rollback => Step::Rollback,
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
                if let Some(journal) = &inner.journal
                    && inner.recent.spill_due()
                    && let Err(error) = inner.recent.spill(journal.durable())
                {
                    tracing::error!(%error, "moving remembered ids to the archive failed");
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
