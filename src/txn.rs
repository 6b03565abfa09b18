//! Transaction vocabulary: ids, transfers, outcomes.

use std::fmt;

pub use crate::txid::{MAX_ID_CLOCK_SKEW, ParseTxIdError, TxId};
pub(crate) use crate::txid::{TxIdGen, unix_nanos};

/// One account of one service: names, or an [`Account`] handle's view.
/// Two refs are equal when they name the same account, handle or not.
#[derive(Debug, Clone, Copy)]
pub struct AccountRef<'a> {
    /// The service's registered name.
    pub service: &'a str,
    /// The account id inside that service.
    pub account: &'a str,
    /// The handle this ref was made from, if any: its resolution is used
    /// only while both names above are still the handle's and the
    /// coordinator is the handle's (the fields are public: a changed name
    /// is resolved by name).
    pub(crate) handle: Option<&'a Account>,
}

impl<'a> AccountRef<'a> {
    /// The account `account` of the service registered as `service`.
    pub fn new(service: &'a str, account: &'a str) -> Self {
        Self { service, account, handle: None }
    }
}

impl PartialEq for AccountRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        (self.service, self.account) == (other.service, other.account)
    }
}

impl Eq for AccountRef<'_> {}

impl std::hash::Hash for AccountRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.service, self.account).hash(state);
    }
}

/// What one coordinator resolved for an account: the service's index and
/// registration (unique in the process, so a handle from another
/// coordinator is never trusted), the directory's key and the lock stripe.
/// Packed so that a whole [`Account`] is one cache line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub registration: u64,
    key: u64,
    stripe: u32,
    pub service: u16,
    has_key: bool,
}

impl Resolved {
    pub(crate) fn new(registration: u64, service: u16, key: Option<u64>, stripe: usize) -> Self {
        let stripe = u32::try_from(stripe).expect("lock stripes are counted in u32");
        Self { registration, key: key.unwrap_or(0), stripe, service, has_key: key.is_some() }
    }

    pub(crate) fn key(&self) -> Option<u64> {
        self.has_key.then_some(self.key)
    }

    pub(crate) fn stripe(&self) -> usize {
        self.stripe as usize
    }
}

/// Ids up to this long live inside the handle (most do): a transfer
/// between handles then touches one cache line per account for names.
const INLINE_ID_BYTES: usize = 22;

#[derive(Clone)]
enum Id {
    Inline { len: u8, bytes: [u8; INLINE_ID_BYTES] },
    Heap(Box<str>),
}

impl Id {
    fn new(id: &str) -> Self {
        if id.len() > INLINE_ID_BYTES {
            return Id::Heap(id.into());
        }
        let mut bytes = [0; INLINE_ID_BYTES];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Id::Inline { len: id.len() as u8, bytes }
    }

    fn as_str(&self) -> &str {
        match self {
            // A few nanoseconds to check UTF-8 again, against an unsafe
            // block or a heap pointer (a cache miss) per transfer side.
            Id::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).expect("copied from a str"),
            Id::Heap(id) => id,
        }
    }
}

/// An account resolved once by
/// [`Coordinator::account`](crate::Coordinator::account), for callers that
/// move money between the same accounts many times: a [`Transfer::between`]
/// two handles skips the service search, the id checks, the directory probe
/// and the lock-stripe hash that a transfer by name pays on every call.
///
/// A handle stays valid as long as its coordinator; given to another
/// coordinator it is resolved by name again (same outcome, no shortcut).
/// The participant still checks every key it is handed.
///
/// ```
/// use dtc::{Coordinator, Ledger, Transfer};
/// let bank = Ledger::new();
/// bank.create_account("alice", 100).unwrap();
/// bank.create_account("bob", 0).unwrap();
/// let dtc = Coordinator::builder().service("bank", bank.clone()).open().unwrap();
///
/// let alice = dtc.account("bank", "alice").unwrap();
/// let bob = dtc.account("bank", "bob").unwrap();
/// assert!(dtc.execute(&[Transfer::between(&alice, &bob, 30)]).unwrap().is_committed());
/// assert_eq!(bank.balance(bob.id()), Some(30));
/// assert!(dtc.account("bank", "carol").is_err(), "unknown accounts are refused at once");
/// ```
#[derive(Clone)]
#[repr(align(64))]
pub struct Account {
    /// The coordinator's own copy of the name (shared by its handles).
    service: std::sync::Arc<str>,
    id: Id,
    resolved: Resolved,
}

const _: () = assert!(std::mem::size_of::<Account>() == 64, "an account handle is one cache line");

impl Account {
    pub(crate) fn new(service: std::sync::Arc<str>, id: &str, resolved: Resolved) -> Self {
        Self { service, id: Id::new(id), resolved }
    }

    /// The service's registered name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The account id inside that service.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// This account as a transfer side.
    pub fn to_ref(&self) -> AccountRef<'_> {
        AccountRef { service: &self.service, account: self.id(), handle: Some(self) }
    }

    /// What the coordinator resolved.
    pub(crate) fn resolved(&self) -> &Resolved {
        &self.resolved
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account").field("service", &self.service()).field("id", &self.id()).finish_non_exhaustive()
    }
}

/// One leg of a transaction: move `amount` minor units from one account to
/// another, possibly in another service.
///
/// ```
/// use dtc::Transfer;
/// let leg = Transfer::new("bank-eu", "acct-1", "bank-us", "acct-9", 250);
/// assert_eq!(leg.amount, 250);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transfer<'a> {
    /// Debited account.
    pub from: AccountRef<'a>,
    /// Credited account.
    pub to: AccountRef<'a>,
    /// Minor units; must be in `1..=i64::MAX`.
    pub amount: u64,
}

impl<'a> Transfer<'a> {
    /// A leg moving `amount` from `from_service/from_account` to `to_service/to_account`.
    pub fn new(
        from_service: &'a str,
        from_account: &'a str,
        to_service: &'a str,
        to_account: &'a str,
        amount: u64,
    ) -> Self {
        Self { from: AccountRef::new(from_service, from_account), to: AccountRef::new(to_service, to_account), amount }
    }

    /// A leg moving `amount` between two resolved accounts (see [`Account`]).
    pub fn between(from: &'a Account, to: &'a Account, amount: u64) -> Self {
        Self { from: from.to_ref(), to: to.to_ref(), amount }
    }
}

/// A branch that carries its own request to one service: opaque bytes (a
/// serde-friendly JSON helper is [`Branch::json`]) and, optionally, lock
/// keys the coordinator holds from before its prepare until its decision is
/// applied, with the same ordered striped locks it uses for accounts (so a
/// participant that cannot isolate itself still gets serializable,
/// deadlock-free execution).
///
/// ```
/// use dtc::Branch;
/// let seat = Branch::new("flights", &b"seat 12A on LH123"[..]).lock("LH123/12A");
/// assert_eq!(seat.service(), "flights");
/// assert_eq!(seat.payload(), b"seat 12A on LH123");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Branch<'a> {
    service: &'a str,
    payload: std::borrow::Cow<'a, [u8]>,
    locks: Vec<std::borrow::Cow<'a, str>>,
}

impl<'a> Branch<'a> {
    /// A branch asking `service` to do what `payload` says (bounded by
    /// [`Builder::max_payload_bytes`](crate::Builder::max_payload_bytes)).
    pub fn new(service: &'a str, payload: impl Into<std::borrow::Cow<'a, [u8]>>) -> Self {
        Self { service, payload: payload.into(), locks: Vec::new() }
    }

    /// A branch whose payload is `request` as JSON.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Booking<'a> { room: &'a str, nights: u32 }
    /// let b = dtc::Branch::json("hotel", &Booking { room: "204", nights: 2 }).unwrap();
    /// assert_eq!(b.payload(), br#"{"room":"204","nights":2}"#);
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(service: &'a str, request: &T) -> crate::error::Result<Self> {
        let bytes = serde_json::to_vec(request).map_err(|e| crate::error::Error::InvalidPayload(e.to_string()))?;
        Ok(Self::new(service, bytes))
    }

    /// Adds a lock key (1 to 255 bytes); keys are scoped to the service.
    pub fn lock(mut self, key: impl Into<std::borrow::Cow<'a, str>>) -> Self {
        self.locks.push(key.into());
        self
    }

    /// The service this branch goes to.
    pub fn service(&self) -> &'a str {
        self.service
    }

    /// The request bytes.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The lock keys.
    pub fn locks(&self) -> impl Iterator<Item = &str> {
        self.locks.iter().map(|k| &**k)
    }
}

/// A transaction: transfer legs between accounts of ledger services, and
/// branches carrying their own requests to any participant, all committed
/// or all rolled back together.
///
/// ```
/// use dtc::{Branch, Transaction, Transfer};
/// let tx = Transaction::new()
///     .transfer(Transfer::new("bank", "alice", "bank", "shop", 120))
///     .branch(Branch::new("stock", &b"reserve sku-7"[..]).lock("sku-7"));
/// assert_eq!(tx.transfers().len(), 1);
/// assert_eq!(tx.branches().len(), 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Transaction<'a> {
    transfers: Vec<Transfer<'a>>,
    branches: Vec<Branch<'a>>,
    timeout: Option<std::time::Duration>,
}

impl<'a> Transaction<'a> {
    /// An empty transaction (running it as such is refused with
    /// [`Error::EmptyTransaction`](crate::Error::EmptyTransaction)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a transfer leg.
    pub fn transfer(mut self, leg: Transfer<'a>) -> Self {
        self.transfers.push(leg);
        self
    }

    /// Adds transfer legs.
    pub fn transfers_from(mut self, legs: &[Transfer<'a>]) -> Self {
        self.transfers.extend_from_slice(legs);
        self
    }

    /// Adds a branch.
    pub fn branch(mut self, branch: Branch<'a>) -> Self {
        self.branches.push(branch);
        self
    }

    /// A deadline for this transaction, lock waits and votes included,
    /// shorter than the coordinator's
    /// [`transaction_timeout`](crate::Builder::transaction_timeout) (a longer
    /// one is cut to it).
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The deadline set with [`timeout`](Self::timeout), if any.
    pub fn deadline(&self) -> Option<std::time::Duration> {
        self.timeout
    }

    /// The transfer legs.
    pub fn transfers(&self) -> &[Transfer<'a>] {
        &self.transfers
    }

    /// The payload branches, in the order given.
    pub fn branches(&self) -> &[Branch<'a>] {
        &self.branches
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every participant applied the transaction.
    Committed,
    /// The decision is commit (and durable, when the log is on), but at least
    /// one participant had not acknowledged within the call timeout. The
    /// engine keeps redelivering the commit until it is acknowledged; later
    /// transactions on the same service see it applied (per-service FIFO).
    CommitPending,
    /// Nothing was applied, for this reason.
    Aborted(AbortReason),
}

impl Outcome {
    /// True for [`Outcome::Committed`] and [`Outcome::CommitPending`].
    pub fn is_committed(&self) -> bool {
        matches!(self, Outcome::Committed | Outcome::CommitPending)
    }
}

/// Why a transaction was rolled back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// An account would go below zero.
    InsufficientFunds {
        /// Service of the account.
        service: String,
        /// The account.
        account: String,
    },
    /// A participant voted no for its own reason.
    Refused {
        /// The refusing service.
        service: String,
        /// The participant's stable code.
        code: String,
        /// Its explanation.
        message: String,
    },
    /// A participant did not vote within the call timeout or the deadline.
    PrepareTimeout {
        /// The slow service.
        service: String,
    },
    /// A participant panicked while preparing.
    ParticipantPanicked {
        /// The service whose participant panicked.
        service: String,
    },
    /// The transaction's locks could not be taken before its deadline.
    LockTimeout,
    /// A participant refused a prepare it had already seen rolled back.
    AlreadyRolledBack {
        /// The refusing service.
        service: String,
    },
    /// An operator aborted it (`dtc resolve --abort`, `Coordinator::resolve`)
    /// before any commit decision was recorded.
    Operator {
        /// The operator's reason, as given.
        reason: String,
    },
}

impl AbortReason {
    /// A stable machine-readable code, also used as a metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            AbortReason::InsufficientFunds { .. } => "insufficient_funds",
            AbortReason::Refused { .. } => "refused",
            AbortReason::PrepareTimeout { .. } => "prepare_timeout",
            AbortReason::ParticipantPanicked { .. } => "participant_panicked",
            AbortReason::LockTimeout => "lock_timeout",
            AbortReason::AlreadyRolledBack { .. } => "already_rolled_back",
            AbortReason::Operator { .. } => "operator",
        }
    }

    /// Every code, in a fixed order (index = metrics slot).
    pub const CODES: [&'static str; 7] = [
        "insufficient_funds",
        "refused",
        "prepare_timeout",
        "participant_panicked",
        "lock_timeout",
        "already_rolled_back",
        "operator",
    ];

    pub(crate) fn slot(&self) -> usize {
        let code = self.code();
        Self::CODES.iter().position(|c| *c == code).unwrap_or(0)
    }
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::InsufficientFunds { service, account } => {
                write!(f, "insufficient funds in {service}/{account}")
            }
            AbortReason::Refused { service, code, message } => {
                write!(f, "{service} refused ({code}): {message}")
            }
            AbortReason::PrepareTimeout { service } => write!(f, "{service} did not vote in time"),
            AbortReason::ParticipantPanicked { service } => {
                write!(f, "{service} panicked in prepare")
            }
            AbortReason::LockTimeout => write!(f, "locks not acquired before the deadline"),
            AbortReason::AlreadyRolledBack { service } => {
                write!(f, "{service} had already rolled this transaction back")
            }
            AbortReason::Operator { reason } => write!(f, "aborted by an operator: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_round_trip() {
        let g = TxIdGen::new(7);
        let mut last = g.next();
        for _ in 0..10_000 {
            let id = g.next();
            assert!(id > last);
            assert_eq!(id.to_string().parse::<TxId>().unwrap(), id);
            last = id;
        }
        g.observe(TxId::from_u128(u128::from(u64::MAX - 5) << 64));
        assert!(g.next().timestamp_ns() > u64::MAX - 5);
    }

    #[test]
    fn ids_of_many_threads_are_unique_and_above_the_floor() {
        let g = TxIdGen::new(7);
        g.observe(TxId::from_u128(u128::from(u64::MAX / 2) << 64));
        let ids: Vec<Vec<TxId>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12).map(|_| s.spawn(|| (0..5_000).map(|_| g.next()).collect())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for per_thread in &ids {
            assert!(per_thread.windows(2).all(|w| w[0] < w[1]), "ids increase along a thread");
        }
        let mut all: Vec<TxId> = ids.into_iter().flatten().collect();
        assert!(all.iter().all(|id| id.timestamp_ns() > u64::MAX / 2));
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "every id is unique across threads sharing shards");
    }

    #[test]
    fn bad_ids_are_refused() {
        for s in ["", "xyz", "0123456789abcdef0123456789abcdef0"] {
            assert!(s.parse::<TxId>().is_err(), "{s}");
        }
    }
}
