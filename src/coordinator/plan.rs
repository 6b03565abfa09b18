//! Validation and the execution plan of one transaction.
//!
//! Everything a caller can get wrong is checked here, on the caller's thread,
//! before any lock is taken or any message sent: a bad transaction has no
//! side effect at all.
//!
//! A plan is a list of *branches*, each for one service: first one branch
//! per service touched by transfer legs (the legs merged per account, in
//! service order), then the caller's payload branches in the order given.
//! A branch's index in that list is its [`BranchId::index`].

use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use crate::coordinator::barrier::TxKey;
use crate::coordinator::locks::StripedLocks;
use crate::error::{Error, Result};
use crate::ledger::validate_account_id;
use crate::participant::{BranchId, Directory, Operation};
use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU8, Ordering, THREAD_SHARDS, thread_shard};
use crate::txn::{Account, AccountRef, Branch, Resolved, Transfer, TxId};

/// What the coordinator knows of a registered service when planning.
pub(crate) struct ServiceInfo {
    pub name: Arc<str>,
    pub directory: Option<Arc<dyn Directory>>,
    /// Unique in the process: an [`Account`] handle names the registration
    /// it was resolved against, so no other coordinator trusts it.
    pub registration: u64,
}

impl ServiceInfo {
    pub(crate) fn new(name: Arc<str>, directory: Option<Arc<dyn Directory>>) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        // Relaxed: uniqueness only.
        let registration = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { name, directory, registration }
    }
}

/// Resolves one account of the service at `index` for an [`Account`]
/// handle: the same checks and lookup a transfer by name makes.
pub(crate) fn resolve_account(
    index: u16,
    services: &[ServiceInfo],
    account: &str,
    locks: &StripedLocks,
) -> Result<Account> {
    validate_account_id(account)?;
    let info = &services[usize::from(index)];
    let key = directory_key(info, account, 0)?;
    let resolved = Resolved::new(info.registration, index, key, locks.stripe_of(index, account));
    Ok(Account::new(info.name.clone(), account, resolved))
}

/// `account`'s key in the service's directory (`None` without one), or
/// the unknown-account error of leg `leg`.
fn directory_key(info: &ServiceInfo, account: &str, leg: usize) -> Result<Option<u64>> {
    match &info.directory {
        Some(dir) => dir.lookup(account).map(Some).ok_or_else(|| Error::UnknownAccount {
            leg,
            service: info.name.to_string(),
            account: account.to_string(),
        }),
        None => Ok(None),
    }
}

/// A handle's resolution, if it is this coordinator's: its service index,
/// its key when the directory's keys are stable, and its lock stripe.
fn trusted(side: &AccountRef<'_>, services: &[ServiceInfo]) -> Option<(u16, Option<Option<u64>>, usize)> {
    let handle = side.handle?;
    // The ref's names are public fields: trust the resolution only for the
    // names it was made for (the handle's own line, already in the cache).
    if side.account != handle.id() || side.service != handle.service() {
        return None;
    }
    let r = handle.resolved();
    let info = services.get(usize::from(r.service)).filter(|i| i.registration == r.registration)?;
    let key = match &info.directory {
        Some(dir) if dir.keys_are_stable() => Some(r.key()),
        Some(_) => None,
        None => Some(None),
    };
    Some((r.service, key, r.stripe()))
}

/// Bounds on one transaction, from the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_legs: usize,
    pub max_branches: usize,
    pub max_payload_bytes: usize,
}

/// Most lock keys one branch may declare.
pub(crate) const MAX_LOCK_KEYS: usize = 64;
/// Longest lock key, in bytes.
pub(crate) const MAX_LOCK_KEY_BYTES: usize = 255;

/// One merged change to one account.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanOp {
    pub key: Option<u64>,
    pub delta: i64,
    name_start: u32,
    name_end: u32,
}

/// What one branch carries: a range of `ops` or of `payloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carries {
    Ops,
    Payload,
}

/// One branch: its service and its part of the plan's arenas.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanBranch {
    pub service: u16,
    carries: Carries,
    start: u32,
    end: u32,
}

/// The work of one branch, as the participant receives it.
// A stack temporary for one call: boxing the operations would allocate on
// the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum BranchWork<'a> {
    Ops(SmallVec<[Operation<'a>; 8]>),
    Payload(&'a [u8]),
}

impl BranchWork<'_> {
    pub(crate) fn as_work(&self) -> crate::participant::Work<'_> {
        match self {
            BranchWork::Ops(ops) => crate::participant::Work::Transfers(ops),
            BranchWork::Payload(bytes) => crate::participant::Work::Payload(bytes),
        }
    }
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
    pub ops: SmallVec<[PlanOp; 4]>,
    payloads: Vec<u8>,
    pub branches: SmallVec<[PlanBranch; 4]>,
    /// Index of `branches[0]` in its transaction: 0, except for a bare plan
    /// that stands for one branch of a transaction.
    first_index: u16,
    pub stripes: SmallVec<[usize; 8]>,
    /// Identifies the content (stable across processes) for idempotent resubmission.
    pub fingerprint: u64,
    /// Settles the race between a caller giving up on a vote and a worker
    /// about to apply a one-phase commit (or to start a prepare): exactly one
    /// of `claim_commit` / `cancel` wins.
    decision: AtomicU8,
    /// When the caller stops waiting for this plan's votes, set with its
    /// first prepare; participants read it through
    /// [`participant::vote_deadline`](crate::participant::vote_deadline).
    pub vote_by: std::sync::OnceLock<Instant>,
}

impl Plan {
    /// A plan with no operations for one branch of one execution on one
    /// service: recovery's and an operator's commit or rollback of a branch.
    pub(crate) fn bare(key: TxKey, service: u16) -> Plan {
        Plan {
            tx: key.tx,
            attempt: key.attempt,
            branches: smallvec::smallvec![PlanBranch { service, carries: Carries::Ops, start: 0, end: 0 }],
            first_index: key.branch,
            decision: AtomicU8::new(COMMIT_CLAIMED),
            ..Plan::empty()
        }
    }

    /// A plan of nothing: filled by `build` (after `reset`), or the base of
    /// a bare one.
    fn empty() -> Plan {
        Plan {
            tx: TxId::from_u128(0),
            attempt: 0,
            timed: false,
            names: String::new(),
            ops: SmallVec::new(),
            payloads: Vec::new(),
            branches: SmallVec::new(),
            first_index: 0,
            stripes: SmallVec::new(),
            fingerprint: 0,
            decision: AtomicU8::new(OPEN),
            vote_by: std::sync::OnceLock::new(),
        }
    }

    /// Empties an owned plan for transaction `id`, keeping its buffers, with
    /// room for `name_bytes` of account names and `op_count` operations
    /// (sized once: growing them would reallocate on the hot path).
    fn reset(&mut self, id: TxId, content: u64, name_bytes: usize, op_count: usize) {
        // Destructured: a field added to `Plan` must be reset here too.
        let Plan {
            tx,
            attempt,
            timed,
            names,
            ops,
            payloads,
            branches,
            first_index,
            stripes,
            fingerprint,
            decision,
            vote_by,
        } = self;
        *tx = id;
        *attempt = 0;
        *timed = false;
        names.clear();
        names.reserve(name_bytes);
        ops.clear();
        ops.reserve(op_count);
        payloads.clear();
        branches.clear();
        *first_index = 0;
        stripes.clear();
        *fingerprint = content;
        *decision = AtomicU8::new(OPEN);
        *vote_by = std::sync::OnceLock::new();
    }

    /// Whether keeping this plan's buffers for the next transaction holds
    /// no more memory than a small transaction's plan.
    #[cfg(not(loom))]
    fn is_small(&self) -> bool {
        self.names.capacity() <= SPARE_NAME_BYTES
            && self.payloads.capacity() == 0
            && !self.ops.spilled()
            && !self.branches.spilled()
            && !self.stripes.spilled()
    }

    /// Every operation of `branch` (none for a payload branch).
    pub(crate) fn branch_ops(&self, branch: usize) -> &[PlanOp] {
        let b = self.branches[branch];
        match b.carries {
            Carries::Ops => &self.ops[b.start as usize..b.end as usize],
            Carries::Payload => &[],
        }
    }

    /// (account, delta) of every operation of `branch`.
    pub(crate) fn changes(&self, branch: usize) -> impl Iterator<Item = (&str, i64)> {
        self.branch_ops(branch).iter().map(|op| (self.account(op), op.delta))
    }

    /// The barrier key of `branch`.
    pub(crate) fn key(&self, branch: usize) -> TxKey {
        TxKey { tx: self.tx, attempt: self.attempt, branch: self.branch_index(branch) }
    }

    /// The id the participant sees for `branch`.
    pub(crate) fn branch_id(&self, branch: usize) -> BranchId {
        BranchId { tx: self.tx, index: self.branch_index(branch) }
    }

    fn branch_index(&self, branch: usize) -> u16 {
        // Plans hold at most `u16::MAX` branches (checked by `build`).
        self.first_index + branch as u16
    }

    pub(crate) fn account(&self, op: &PlanOp) -> &str {
        &self.names[op.name_start as usize..op.name_end as usize]
    }

    pub(crate) fn service_of(&self, branch: usize) -> u16 {
        self.branches[branch].service
    }

    /// The payload of `branch`, if it is a payload branch.
    pub(crate) fn payload(&self, branch: usize) -> Option<&[u8]> {
        let b = self.branches[branch];
        (b.carries == Carries::Payload).then(|| &self.payloads[b.start as usize..b.end as usize])
    }

    /// True if `branch` carries transfer legs (false: a payload).
    pub(crate) fn is_transfer(&self, branch: usize) -> bool {
        self.branches[branch].carries == Carries::Ops
    }

    /// What the participant of `branch` is asked to do.
    pub(crate) fn work(&self, branch: usize) -> BranchWork<'_> {
        let b = self.branches[branch];
        let (start, end) = (b.start as usize, b.end as usize);
        match b.carries {
            Carries::Ops => BranchWork::Ops(
                self.ops[start..end]
                    .iter()
                    .map(|op| Operation { account: self.account(op), key: op.key, delta: op.delta })
                    .collect(),
            ),
            Carries::Payload => BranchWork::Payload(&self.payloads[start..end]),
        }
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

/// Largest name buffer a recycled plan keeps (bytes).
#[cfg(not(loom))]
const SPARE_NAME_BYTES: usize = 128;
/// Most plans a thread keeps for reuse: a batch of this many transfers
/// builds all its plans from recycled ones (at most ~530 bytes each with
/// their names).
#[cfg(not(loom))]
const SPARE_PLANS: usize = 1024;

#[cfg(not(loom))]
thread_local! {
    /// Plans of this thread's finished transactions that nobody else holds:
    /// `build` fills one instead of allocating. Bounded (`SPARE_PLANS`, and
    /// only small plans: `Plan::is_small`), so the memory kept is bounded
    /// by the number of caller threads.
    static SPARE: std::cell::RefCell<Vec<Arc<Plan>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One of this thread's recycled plans, if any (never one someone else holds).
fn spare() -> Option<Arc<Plan>> {
    #[cfg(not(loom))]
    {
        // `try_with`: a thread being torn down allocates instead.
        SPARE.try_with(|spare| spare.borrow_mut().pop()).ok().flatten()
    }
    // Under loom a plan's atomics belong to one model execution.
    #[cfg(loom)]
    None
}

/// Hands a finished transaction's plan back for this thread's next ones, if
/// this was its last owner, it is small and the thread keeps fewer than
/// `SPARE_PLANS`; otherwise it is just dropped.
pub(crate) fn recycle(plan: Arc<Plan>) {
    #[cfg(not(loom))]
    {
        let mut plan = plan;
        if Arc::get_mut(&mut plan).is_some_and(|p| p.is_small()) {
            let _ = SPARE.try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_PLANS {
                    spare.push(plan);
                }
            });
        }
    }
    #[cfg(loom)]
    drop(plan);
}

/// One transaction in this many records per-stage latencies.
const STAGE_SAMPLE: u64 = 8;

/// Execution numbers, unique in the process and never 0: a count per
/// thread shard (its own cache line, so cores do not pass one counter back
/// and forth per transaction) above the shard's number.
fn next_attempt() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: [CachePadded<AtomicU64>; THREAD_SHARDS] =
        [const { CachePadded::new(AtomicU64::new(1)) }; THREAD_SHARDS];
    let shard = thread_shard();
    // Relaxed: uniqueness only.
    let n = NEXT[shard].fetch_add(1, Ordering::Relaxed);
    (n << THREAD_SHARDS.trailing_zeros()) | shard as u64
}

/// Whether the transaction with this execution number records stage
/// latencies: one in `STAGE_SAMPLE` of each thread shard's, starting with
/// its first (so even a short run has a sample).
fn sampled(attempt: u64) -> bool {
    (attempt >> THREAD_SHARDS.trailing_zeros()) % STAGE_SAMPLE == 1
}

/// FNV-1a: a fingerprint that is the same in every process (no random seed).
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

fn fnv_part(hash: &mut u64, bytes: &[u8]) {
    fnv(hash, &(bytes.len() as u64).to_le_bytes());
    fnv(hash, bytes);
}

/// Identifies a transaction's content: its legs, and its branches (service,
/// payload, lock keys) in order.
pub(crate) fn fingerprint(legs: &[Transfer<'_>], branches: &[Branch<'_>]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325;
    for leg in legs {
        for part in [leg.from.service, leg.from.account, leg.to.service, leg.to.account] {
            // u32 lengths, as in earlier versions: transfer-only fingerprints
            // recorded by them stay valid.
            fnv(&mut h, &(part.len() as u32).to_le_bytes());
            fnv(&mut h, part.as_bytes());
        }
        fnv(&mut h, &leg.amount.to_le_bytes());
    }
    for branch in branches {
        fnv(&mut h, b"\xffbranch");
        fnv_part(&mut h, branch.service().as_bytes());
        fnv_part(&mut h, branch.payload());
        for key in branch.locks() {
            fnv_part(&mut h, key.as_bytes());
        }
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
    stripe: usize,
}

/// Validates the legs and branches of one transaction and builds its plan.
/// No side effect.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build(
    tx: TxId,
    legs: &[Transfer<'_>],
    branches: &[Branch<'_>],
    services: &[ServiceInfo],
    find: impl Fn(&str) -> Option<u16>,
    locks: &StripedLocks,
    limits: &Limits,
    tracked: bool,
) -> Result<Arc<Plan>> {
    if legs.is_empty() && branches.is_empty() {
        return Err(Error::EmptyTransaction);
    }
    if legs.len() > limits.max_legs {
        return Err(Error::TooManyLegs { legs: legs.len(), limit: limits.max_legs });
    }
    let mut sides: SmallVec<[Side<'_>; 8]> = SmallVec::with_capacity(legs.len() * 2);
    for (i, leg) in legs.iter().enumerate() {
        if leg.amount == 0 {
            return Err(Error::NonPositiveAmount { leg: i });
        }
        let amount = i64::try_from(leg.amount).map_err(|_| Error::AmountOverflow { leg: i })?;
        let first = sides.len();
        for (side, delta) in [(&leg.from, -amount), (&leg.to, amount)] {
            let account = side.account;
            let (service, key, stripe) = match trusted(side, services) {
                // A handle of this coordinator: checked when it was made.
                Some((service, Some(key), stripe)) => (service, key, stripe),
                resolved => {
                    let service = match resolved {
                        Some((service, _, _)) => service,
                        None => find(side.service)
                            .ok_or_else(|| Error::UnknownService { leg: i, service: side.service.to_string() })?,
                    };
                    validate_account_id(account)?;
                    let key = directory_key(&services[usize::from(service)], account, i)?;
                    (service, key, locks.stripe_of(service, account))
                }
            };
            sides.push(Side { service, account, key, delta, leg: i, stripe });
        }
        // Service indices first: names are compared only within one service.
        let (from, to) = (&sides[first], &sides[first + 1]);
        if from.service == to.service && from.account == to.account {
            return Err(Error::SameAccount {
                leg: i,
                service: leg.from.service.to_string(),
                account: leg.from.account.to_string(),
            });
        }
    }
    sides.sort_unstable_by(|a, b| (a.service, a.account).cmp(&(b.service, b.account)));

    // Built in place, in this thread's recycled plan when it has one (see
    // `recycle`): a new `Arc` was an allocation, a 384-byte copy into it
    // and, for the names, a second allocation per transaction.
    let mut shared = spare().unwrap_or_else(|| Arc::new(Plan::empty()));
    let plan = Arc::get_mut(&mut shared).expect("a new or recycled plan has no other owner");
    plan.reset(
        tx,
        // Only ids a caller can resubmit need one.
        if tracked { fingerprint(legs, branches) } else { 0 },
        sides.iter().map(|s| s.account.len()).sum(),
        sides.len(),
    );
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
        plan.stripes.push(side.stripe);
        let index = (plan.ops.len() - 1) as u32;
        match plan.branches.last_mut() {
            Some(b) if b.service == side.service => b.end = index + 1,
            _ => plan.branches.push(PlanBranch {
                service: side.service,
                carries: Carries::Ops,
                start: index,
                end: index + 1,
            }),
        }
    }
    let total = plan.branches.len() + branches.len();
    if total > limits.max_branches.min(usize::from(u16::MAX)) {
        return Err(Error::TooManyBranches { branches: total, limit: limits.max_branches });
    }
    let payload_bytes: usize = branches.iter().map(|b| b.payload().len()).sum();
    if payload_bytes > u32::MAX as usize {
        // The arena's offsets are u32; no configuration allows this much.
        return Err(Error::PayloadTooLarge { branch: 0, bytes: payload_bytes, limit: u32::MAX as usize });
    }
    plan.payloads.reserve_exact(payload_bytes.min(limits.max_payload_bytes.saturating_mul(branches.len())));
    for (i, branch) in branches.iter().enumerate() {
        let service = find(branch.service())
            .ok_or_else(|| Error::UnknownBranchService { branch: i, service: branch.service().to_string() })?;
        let payload = branch.payload();
        if payload.len() > limits.max_payload_bytes {
            return Err(Error::PayloadTooLarge { branch: i, bytes: payload.len(), limit: limits.max_payload_bytes });
        }
        for (n, key) in branch.locks().enumerate() {
            let why = if n >= MAX_LOCK_KEYS {
                Some(format!("more than {MAX_LOCK_KEYS} lock keys"))
            } else if key.is_empty() {
                Some("empty lock key".to_string())
            } else if key.len() > MAX_LOCK_KEY_BYTES {
                Some(format!("lock key longer than {MAX_LOCK_KEY_BYTES} bytes"))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::InvalidLockKey { branch: i, why });
            }
            plan.stripes.push(locks.stripe_of(service, key));
        }
        let start = plan.payloads.len() as u32;
        plan.payloads.extend_from_slice(payload);
        plan.branches.push(PlanBranch { service, carries: Carries::Payload, start, end: plan.payloads.len() as u32 });
    }
    plan.attempt = next_attempt();
    plan.timed = sampled(plan.attempt);
    plan.stripes.sort_unstable();
    plan.stripes.dedup();
    Ok(shared)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ledger::Ledger;

    fn services() -> Vec<ServiceInfo> {
        let ledger = Ledger::new();
        for account in ["alice", "bob", "carol"] {
            ledger.create_account(account, 100).unwrap();
        }
        vec![ServiceInfo::new("bank".into(), Some(ledger.account_directory())), ServiceInfo::new("hotel".into(), None)]
    }

    fn plan_of(
        services: &[ServiceInfo],
        locks: &StripedLocks,
        tx: u128,
        legs: &[Transfer<'_>],
        branches: &[Branch<'_>],
        tracked: bool,
    ) -> Arc<Plan> {
        let limits = Limits { max_legs: 16, max_branches: 16, max_payload_bytes: 1024 };
        let find = |name: &str| services.iter().position(|s| &*s.name == name).map(|i| i as u16);
        build(TxId::from_u128(tx), legs, branches, services, find, locks, &limits, tracked).unwrap()
    }

    /// Everything a plan's users read, as one comparable value.
    fn contents(plan: &Plan) -> impl PartialEq + std::fmt::Debug {
        let ops: Vec<_> = plan.ops.iter().map(|op| (plan.account(op).to_string(), op.key, op.delta)).collect();
        let branches: Vec<_> = (0..plan.branches.len())
            .map(|b| (plan.service_of(b), plan.is_transfer(b), plan.payload(b).map(<[u8]>::to_vec)))
            .collect();
        (
            plan.tx,
            plan.first_index,
            plan.fingerprint,
            ops,
            branches,
            plan.stripes.to_vec(),
            plan.is_cancelled(),
            plan.vote_by.get().copied(),
            plan.payloads.len(),
        )
    }

    /// A recycled plan carries nothing of the transaction before it: a
    /// tracked two-leg plan with lock keys that was cancelled and given a
    /// vote deadline, then a one-leg untracked plan built from its buffers,
    /// must equal the same one-leg plan built fresh.
    #[test]
    fn a_recycled_plan_equals_a_fresh_one() {
        let services = services();
        let locks = StripedLocks::new(64);
        let legs = [Transfer::new("bank", "alice", "bank", "bob", 5), Transfer::new("bank", "bob", "bank", "carol", 7)];
        let branches = [Branch::new("hotel", &b""[..]).lock("room-1").lock("room-2")];
        let mut first = plan_of(&services, &locks, 1, &legs, &branches, true);
        assert!(first.cancel());
        first.vote_by.set(Instant::now()).unwrap();
        assert!(Arc::get_mut(&mut first).is_some_and(|p| p.is_small()), "this plan is one the thread keeps");
        let address = Arc::as_ptr(&first);
        recycle(first);

        let one = [Transfer::new("bank", "carol", "bank", "alice", 3)];
        let reused = plan_of(&services, &locks, 2, &one, &[], false);
        assert_eq!(Arc::as_ptr(&reused), address, "the thread's spare plan was filled");
        let fresh = std::thread::scope(|s| s.spawn(|| plan_of(&services, &locks, 2, &one, &[], false)).join().unwrap());
        assert_ne!(Arc::as_ptr(&fresh), address);
        assert_eq!(contents(&reused), contents(&fresh));
        assert!(reused.claim_commit(), "the recycled plan's decision is open again");
        assert_ne!(reused.attempt, 0);
    }

    /// A plan someone else still holds, or one with large buffers, is not
    /// kept: the next plan is a new allocation.
    #[test]
    fn shared_or_large_plans_are_not_recycled() {
        let services = services();
        let locks = StripedLocks::new(64);
        let one = [Transfer::new("bank", "alice", "bank", "bob", 1)];
        let held = plan_of(&services, &locks, 1, &one, &[], false);
        let other_owner = Arc::clone(&held);
        recycle(held);
        assert!(spare().is_none(), "a plan a worker still holds is never refilled");
        assert_eq!(other_owner.tx, TxId::from_u128(1));

        let payload = vec![7u8; 64];
        let large = plan_of(&services, &locks, 3, &one, &[Branch::new("hotel", payload)], false);
        recycle(large);
        assert!(spare().is_none(), "a plan with a payload buffer is dropped, not kept");

        let small = plan_of(&services, &locks, 4, &one, &[], false);
        recycle(small);
        assert!(spare().is_some(), "a small plan nobody else holds is kept");
        assert!(spare().is_none());

        // The pool is bounded.
        let plans: Vec<_> =
            (0..SPARE_PLANS + 10).map(|i| plan_of(&services, &locks, 10 + i as u128, &one, &[], false)).collect();
        plans.into_iter().for_each(recycle);
        assert_eq!(std::iter::from_fn(spare).count(), SPARE_PLANS);
    }
}
