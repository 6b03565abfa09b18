//! Many independent transactions in one call: one lock acquisition, one log
//! append and one sync for the whole batch.
//!
//! The batch takes the union of its transactions' stripes (sorted, so still
//! deadlock-free) and runs them one after another under it, so each still
//! commits or aborts on its own and sees its predecessors' effects, exactly
//! as if they had been submitted one by one in that order. For ledger-only
//! transactions the commit records are collected and appended together
//! before the locks drop (nothing is visible to anyone else before then, and
//! nothing is acknowledged before the sync), so a crash loses the batch
//! whole or keeps each decided transaction whole. A transaction with an
//! external participant still logs its decision before telling it to commit.

use std::sync::Arc;
use std::time::Instant;

use super::worker::Limit;
use super::{Coordinator, Inner, plan};
use crate::durable::Records;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::metrics::Stage;
use crate::txn::{AbortReason, Outcome, Transfer};

// The direct path: when every service of a batch is a built-in ledger
// (no wrapper) and nothing is queued for it, read under the batch's key
// locks (`Service::is_idle`), the batch applies its transactions to the
// ledgers directly: the same checks as the ledger's prepare, the same
// effects as its commit, without the per-call barrier record that only
// redelivered or queued calls need, and without the services' core locks
// (the key locks isolate the accounts; the balances are atomic words).
// Batch transactions have engine-made ids and are never redelivered.

/// Most transactions one batch may hold.
pub const MAX_BATCH: usize = 65_536;

impl Coordinator {
    /// Runs many independent transactions at once. Each succeeds or fails on
    /// its own (its entry is its outcome, or the error of invalid input);
    /// the call fails as a whole only if the engine cannot run it.
    ///
    /// ```
    /// use dtc::{Coordinator, Ledger, Outcome, Transfer};
    /// let bank = Ledger::new();
    /// bank.create_account("a", 10).unwrap();
    /// bank.create_account("b", 0).unwrap();
    /// let dtc = Coordinator::builder().service("bank", bank).open().unwrap();
    /// let first = [Transfer::new("bank", "a", "bank", "b", 7)];
    /// let second = [Transfer::new("bank", "a", "bank", "b", 7)]; // no longer funded
    /// let outcomes = dtc.execute_batch(&[&first[..], &second[..]]).unwrap();
    /// assert_eq!(outcomes[0].as_ref().unwrap(), &Outcome::Committed);
    /// assert!(matches!(outcomes[1], Ok(Outcome::Aborted(_))));
    /// ```
    pub fn execute_batch(&self, transactions: &[&[Transfer<'_>]]) -> Result<Vec<Result<Outcome>>> {
        self.inner.run_batch(transactions)
    }
}

impl Inner {
    fn run_batch(&self, transactions: &[&[Transfer<'_>]]) -> Result<Vec<Result<Outcome>>> {
        if transactions.len() > MAX_BATCH {
            return Err(Error::BatchTooLarge { transactions: transactions.len(), limit: MAX_BATCH });
        }
        let started = Instant::now();
        let _in_flight = self.enter()?;
        let deadline = started + self.config.tx_timeout;
        let plans: Vec<Result<Arc<plan::Plan>>> = transactions
            .iter()
            .map(|legs| {
                plan::build(
                    self.ids.next(),
                    legs,
                    &[],
                    &self.services,
                    |n| self.find(n),
                    &self.locks,
                    &self.limits(),
                    false,
                )
            })
            .collect();
        self.warm(&plans);
        let mut stripes: Vec<usize> = plans.iter().flatten().flat_map(|p| p.stripes.iter().copied()).collect();
        stripes.sort_unstable();
        stripes.dedup();
        if let Some(journal) = &self.journal {
            journal.backpressure(|| deadline)?;
        }
        let locked_at = Instant::now();
        let Some(locks) = self.locks.acquire(&stripes, || deadline) else {
            let outcomes = plans
                .into_iter()
                .map(|p| {
                    p.map(|_| {
                        self.metrics.aborted[AbortReason::LockTimeout.slot()].add(1);
                        Outcome::Aborted(AbortReason::LockTimeout)
                    })
                })
                .collect();
            return Ok(outcomes);
        };
        self.metrics.record(Stage::LockWait, locked_at.elapsed());
        let mut records = Records::default();
        let mut last_lsn = None;
        let mut outcomes = Vec::with_capacity(plans.len());
        let direct = self.direct(&plans);
        for plan in plans {
            if direct {
                outcomes.push(plan.map(|plan| {
                    let outcome = self.apply_direct(&plan);
                    if outcome == Outcome::Committed && self.journal.is_some() {
                        self.push_commit(&plan, &mut records);
                    }
                    self.count(&outcome);
                    plan::recycle(plan);
                    outcome
                }));
                continue;
            }
            let outcome = plan.and_then(|plan| {
                // Acknowledgements are awaited under the batch's locks: its
                // later transactions wait for nothing else anyway.
                let driven =
                    super::driver::Drive::new(self, &plan, Limit::At(deadline), false, Some(&mut records)).run(true);
                let driven = driven.map(|(outcome, lsn)| {
                    last_lsn = last_lsn.max(lsn);
                    self.count(&outcome);
                    outcome
                });
                plan::recycle(plan);
                driven
            });
            match outcome {
                Err(error) if error.is_storage() => return Err(error),
                outcome => outcomes.push(outcome),
            }
        }
        if let Some(journal) = &self.journal
            && !records.is_empty()
        {
            last_lsn = last_lsn.max(Some(self.log_or_fail(journal.append_batch(&records))?));
        }
        drop(locks);
        self.durable(last_lsn)?;
        self.metrics.record(Stage::Total, started.elapsed());
        Ok(outcomes)
    }
}

impl Inner {
    /// Reads every ledger balance the batch will check, before its locks
    /// are taken: independent loads that the processor overlaps, so the
    /// records' cache misses are paid many at a time and outside the
    /// critical section instead of one after another inside it. The values
    /// are discarded (the checks read them again under the locks).
    fn warm(&self, plans: &[Result<Arc<plan::Plan>>]) {
        let mut sum = 0i64;
        for plan in plans.iter().flatten() {
            self.for_each_ledger_op(plan, |ledger, key, _| sum = sum.wrapping_add(ledger.peek(key)));
        }
        std::hint::black_box(sum);
    }

    /// Runs `f(ledger, key, delta)` for every op of `plan` that a built-in
    /// ledger resolved.
    fn for_each_ledger_op(&self, plan: &plan::Plan, mut f: impl FnMut(&Ledger, u64, i64)) {
        for branch in 0..plan.branches.len() {
            if let Some(ledger) = &self.ledgers[usize::from(plan.service_of(branch))] {
                for op in plan.branch_ops(branch) {
                    if let Some(key) = op.key {
                        f(ledger, key, op.delta);
                    }
                }
            }
        }
    }

    fn direct(&self, plans: &[Result<Arc<plan::Plan>>]) -> bool {
        self.is_direct(plans.iter().flatten().map(|p| &**p))
    }

    /// Whether `plans` may take the direct path: every service they touch
    /// is a plain built-in ledger with nothing queued (see `Service::is_idle`;
    /// the caller holds the plans' key locks).
    pub(super) fn is_direct<'p>(&self, plans: impl Iterator<Item = &'p plan::Plan>) -> bool {
        if self.config.redeliver.is_some() {
            return false;
        }
        // No locks are taken, so the services need no order: each branch is
        // checked where it stands (a payload goes to its participant).
        plans.flat_map(|plan| (0..plan.branches.len()).map(move |branch| (plan, branch))).all(|(plan, branch)| {
            let s = usize::from(plan.service_of(branch));
            // Ledgers have one lane.
            let service = self.handles[s].first();
            plan.is_transfer(branch) && service.builtin_ledger && self.ledgers[s].is_some() && service.is_idle()
        })
    }

    /// One transaction on the direct path: check every change, then apply
    /// all (its commit record is the caller's to write).
    pub(super) fn apply_direct(&self, plan: &plan::Plan) -> Outcome {
        for branch in 0..plan.branches.len() {
            let service = usize::from(plan.service_of(branch));
            let Some(ledger) = &self.ledgers[service] else { continue };
            for op in plan.branch_ops(branch) {
                let checked = match op.key {
                    Some(key) => ledger.check(key, op.delta),
                    None => Err(false),
                };
                if let Err(insufficient) = checked {
                    let (service, account) = (self.name(service as u16), plan.account(op).to_string());
                    return Outcome::Aborted(if insufficient {
                        AbortReason::InsufficientFunds { service, account }
                    } else {
                        AbortReason::Refused {
                            service,
                            code: "balance_overflow".into(),
                            message: format!("balance of {account} would overflow"),
                        }
                    });
                }
            }
        }
        self.for_each_ledger_op(plan, |ledger, key, delta| ledger.apply(key, delta));
        Outcome::Committed
    }
}
