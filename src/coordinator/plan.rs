//! Validation and the execution plan of one transaction.
//!
//! Everything a caller can get wrong is checked here, on the caller's thread,
//! before any lock is taken or any message sent: a bad transaction has no
//! side effect at all.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::coordinator::locks::StripedLocks;
use crate::error::{Error, Result};
use crate::ledger::validate_account_id;
use crate::participant::{Directory, Operation};
use crate::sync::{AtomicU8, Ordering};
use crate::txn::{Transfer, TxId};

/// What the coordinator knows of a registered service when planning.
pub(crate) struct ServiceInfo {
    pub name: Arc<str>,
    pub directory: Option<Arc<dyn Directory>>,
}

/// One merged change to one account.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanOp {
    pub key: Option<u64>,
    pub delta: i64,
    name_start: u32,
    name_end: u32,
}

/// The contiguous operations of one service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group {
    pub service: u16,
    start: u32,
    end: u32,
}

const OPEN: u8 = 0;
const COMMIT_CLAIMED: u8 = 1;
const CANCELLED: u8 = 2;

/// A validated transaction, shared by the caller and the workers it involves.
pub(crate) struct Plan {
    pub tx: TxId,
    /// This execution's number (see `barrier::TxKey`); 0 only for recovery.
    pub attempt: u64,
    /// Record per-stage latencies for this one (a sample: clock reads cost).
    pub timed: bool,
    names: String,
    pub ops: Vec<PlanOp>,
    pub groups: SmallVec<[Group; 4]>,
    pub stripes: SmallVec<[usize; 8]>,
    /// Identifies the legs (stable across processes) for idempotent resubmission.
    pub fingerprint: u64,
    /// Settles the race between a caller giving up on a vote and a worker
    /// about to apply a one-phase commit (or to start a prepare): exactly one
    /// of `claim_commit` / `cancel` wins.
    decision: AtomicU8,
}

impl Plan {
    /// A plan with no operations, for commit/rollback of a recovered
    /// in-doubt transaction on one service.
    pub(crate) fn bare(tx: TxId, service: u16) -> Plan {
        Self::bare_for(tx.into(), service)
    }

    /// A plan with no operations for one execution of a transaction on one
    /// service: an operator's retry of a parked commit or rollback.
    pub(crate) fn bare_for(key: crate::coordinator::barrier::TxKey, service: u16) -> Plan {
        Plan {
            tx: key.tx,
            attempt: key.attempt,
            timed: false,
            names: String::new(),
            ops: Vec::new(),
            groups: smallvec::smallvec![Group { service, start: 0, end: 0 }],
            stripes: SmallVec::new(),
            fingerprint: 0,
            decision: AtomicU8::new(COMMIT_CLAIMED),
        }
    }

    /// Every operation of `group`.
    pub(crate) fn group_ops(&self, group: usize) -> &[PlanOp] {
        let g = self.groups[group];
        &self.ops[g.start as usize..g.end as usize]
    }

    /// (account, delta) of every operation of `group`.
    pub(crate) fn changes(&self, group: usize) -> impl Iterator<Item = (&str, i64)> {
        self.group_ops(group).iter().map(|op| (self.account(op), op.delta))
    }

    pub(crate) fn key(&self) -> crate::coordinator::barrier::TxKey {
        crate::coordinator::barrier::TxKey { tx: self.tx, attempt: self.attempt }
    }

    pub(crate) fn account(&self, op: &PlanOp) -> &str {
        &self.names[op.name_start as usize..op.name_end as usize]
    }

    pub(crate) fn service_of(&self, group: usize) -> u16 {
        self.groups[group].service
    }

    pub(crate) fn operations(&self, group: usize) -> SmallVec<[Operation<'_>; 8]> {
        let g = self.groups[group];
        self.ops[g.start as usize..g.end as usize]
            .iter()
            .map(|op| Operation { account: self.account(op), key: op.key, delta: op.delta })
            .collect()
    }

    /// Worker side: about to apply a one-phase commit. False if the caller
    /// already gave up (then the worker must roll back instead).
    pub(crate) fn claim_commit(&self) -> bool {
        // AcqRel/Acquire: the winner's view of the plan is the one the other
        // side acts on; this single location is the whole agreement.
        match self.decision.compare_exchange(OPEN, COMMIT_CLAIMED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(state) => state == COMMIT_CLAIMED,
        }
    }

    /// Caller side: giving up on the vote. False if a worker already claimed
    /// the commit (then the transaction is committing and must be reported so).
    pub(crate) fn cancel(&self) -> bool {
        // See `claim_commit`.
        match self.decision.compare_exchange(OPEN, CANCELLED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(state) => state == CANCELLED,
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        // Acquire: pairs with `cancel`; a stale `false` only costs a wasted prepare.
        self.decision.load(Ordering::Acquire) == CANCELLED
    }
}

/// One transaction in this many records per-stage latencies.
const STAGE_SAMPLE: u64 = 8;

/// Execution numbers, unique in the process and never 0.
fn next_attempt() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    // Relaxed: uniqueness only.
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// FNV-1a: a fingerprint that is the same in every process (no random seed).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

pub(crate) fn fingerprint(legs: &[Transfer<'_>]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for leg in legs {
        for part in [leg.from.service, leg.from.account, leg.to.service, leg.to.account] {
            fnv(&mut h, &(part.len() as u32).to_le_bytes());
            fnv(&mut h, part.as_bytes());
        }
        fnv(&mut h, &leg.amount.to_le_bytes());
    }
    // 0 is `recent::ANY_FINGERPRINT` (an operator's abort matches any legs).
    h.max(1)
}

struct Side<'a> {
    service: u16,
    account: &'a str,
    key: Option<u64>,
    delta: i64,
    leg: usize,
}

/// Validates `legs` and builds the plan. No side effect.
pub(crate) fn build(
    tx: TxId,
    legs: &[Transfer<'_>],
    services: &[ServiceInfo],
    find: impl Fn(&str) -> Option<u16>,
    locks: &StripedLocks,
    max_legs: usize,
    tracked: bool,
) -> Result<Plan> {
    if legs.is_empty() {
        return Err(Error::EmptyTransaction);
    }
    if legs.len() > max_legs {
        return Err(Error::TooManyLegs { legs: legs.len(), limit: max_legs });
    }
    let mut sides: SmallVec<[Side<'_>; 8]> = SmallVec::with_capacity(legs.len() * 2);
    for (i, leg) in legs.iter().enumerate() {
        if leg.amount == 0 {
            return Err(Error::NonPositiveAmount { leg: i });
        }
        let amount = i64::try_from(leg.amount).map_err(|_| Error::AmountOverflow { leg: i })?;
        let service =
            |name: &str| find(name).ok_or_else(|| Error::UnknownService { leg: i, service: name.to_string() });
        let from = service(leg.from.service)?;
        let to = service(leg.to.service)?;
        validate_account_id(leg.from.account)?;
        validate_account_id(leg.to.account)?;
        if from == to && leg.from.account == leg.to.account {
            return Err(Error::SameAccount {
                leg: i,
                service: leg.from.service.to_string(),
                account: leg.from.account.to_string(),
            });
        }
        for (svc, account, delta) in [(from, leg.from.account, -amount), (to, leg.to.account, amount)] {
            let key = match &services[svc as usize].directory {
                Some(dir) => Some(dir.lookup(account).ok_or_else(|| Error::UnknownAccount {
                    leg: i,
                    service: services[svc as usize].name.to_string(),
                    account: account.to_string(),
                })?),
                None => None,
            };
            sides.push(Side { service: svc, account, key, delta, leg: i });
        }
    }
    sides.sort_unstable_by(|a, b| (a.service, a.account).cmp(&(b.service, b.account)));

    let mut plan = Plan {
        tx,
        attempt: 0,
        timed: false,
        names: String::new(),
        ops: Vec::with_capacity(sides.len()),
        groups: SmallVec::new(),
        stripes: SmallVec::new(),
        // Only ids a caller can resubmit need one.
        fingerprint: if tracked { fingerprint(legs) } else { 0 },
        decision: AtomicU8::new(OPEN),
    };
    let mut last: Option<(u16, &str)> = None;
    for side in &sides {
        if last == Some((side.service, side.account)) {
            // Same account again: merge into one net change.
            let op = plan.ops.last_mut().expect("merged into the previous op");
            op.delta = op.delta.checked_add(side.delta).ok_or(Error::AmountOverflow { leg: side.leg })?;
            continue;
        }
        last = Some((side.service, side.account));
        let name_start = plan.names.len() as u32;
        plan.names.push_str(side.account);
        plan.ops.push(PlanOp { key: side.key, delta: side.delta, name_start, name_end: plan.names.len() as u32 });
        plan.stripes.push(locks.stripe_of(side.service, side.account));
        let index = (plan.ops.len() - 1) as u32;
        match plan.groups.last_mut() {
            Some(g) if g.service == side.service => g.end = index + 1,
            _ => plan.groups.push(Group { service: side.service, start: index, end: index + 1 }),
        }
    }
    plan.attempt = next_attempt();
    plan.timed = plan.attempt.is_multiple_of(STAGE_SAMPLE);
    plan.stripes.sort_unstable();
    plan.stripes.dedup();
    Ok(plan)
}
