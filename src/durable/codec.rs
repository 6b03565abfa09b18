//! Byte layout of the engine's log records and checkpoints (little-endian).
//!
//! The log module frames, checksums and orders records; this module gives
//! their payloads meaning. Decoding never panics: every read is bounds
//! checked and a malformed payload is a `DecodeError`.

use crate::txn::{AbortReason, TxId};

/// Record kinds (the log reserves 0).
pub(crate) const KIND_COMMIT: u8 = 1;
pub(crate) const KIND_ABORT: u8 = 2;
pub(crate) const KIND_DONE: u8 = 3;
pub(crate) const KIND_ACCOUNT: u8 = 4;
pub(crate) const KIND_OPERATOR: u8 = 5;
/// A commit decision naming its non-ledger branches (kind 1 is the
/// ledger-only form, and the form earlier versions wrote).
pub(crate) const KIND_DECISION: u8 = 6;
pub(crate) const KIND_BEGIN: u8 = 7;

/// What an operator did (the `action` of an `Operator` record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Declared the commit finished where participants had not acknowledged.
    Commit = 1,
    /// Aborted an undecided transaction, or declared a rollback finished.
    Abort = 2,
    /// Asked for an immediate retry of parked or waiting calls.
    RetryNow = 3,
}

impl Action {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Action::Commit => "resolve-commit",
            Action::Abort => "resolve-abort",
            Action::RetryNow => "retry-now",
        }
    }
}

/// Checkpoints before branches (unresolved commits named services only).
const CHECKPOINT_MAGIC_V1: &[u8; 8] = b"DTCCKPT1";
const CHECKPOINT_MAGIC: &[u8; 8] = b"DTCCKPT2";

/// Largest prepared value a decision record carries for one branch.
pub(crate) const MAX_PREPARED_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} at byte {offset}")]
pub(crate) struct DecodeError {
    pub what: &'static str,
    pub offset: usize,
}

/// A record ready for the log: its kind and encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub kind: u8,
    pub bytes: Vec<u8>,
}

/// The payload of a ledger-only commit record (kind 1), written straight
/// from borrowed parts (the hot path builds no intermediate `Entry`).
pub(crate) fn encode_commit<'a>(
    tx: TxId,
    fingerprint: u64,
    changes: impl ExactSizeIterator<Item = (&'a str, &'a str, i64)>,
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(48 + changes.len() * 32);
    write_commit(&mut bytes, tx, fingerprint, changes);
    bytes
}

/// `encode_commit` appended to `bytes` (a batch's shared buffer).
pub(crate) fn write_commit<'a>(
    bytes: &mut Vec<u8>,
    tx: TxId,
    fingerprint: u64,
    changes: impl ExactSizeIterator<Item = (&'a str, &'a str, i64)>,
) {
    // Moves the buffer in and out: no allocation.
    let mut w = Writer(std::mem::take(bytes));
    w.u128(tx.as_u128());
    w.u64(fingerprint);
    write_changes(&mut w, changes);
    // No external services: kind 1 predates branches (see `KIND_DECISION`).
    w.u64(0);
    *bytes = w.0;
}

/// Records encoded one after another into one buffer, as a batch collects
/// its commit records for one append: once the buffers have grown, no
/// allocation per record (a `Vec` per record was one allocation and one
/// free per transfer of a durable batch).
#[derive(Debug, Default)]
pub(crate) struct Records {
    bytes: Vec<u8>,
    /// (kind, end of its payload in `bytes`) per record, in order.
    ends: Vec<(u8, usize)>,
}

impl Records {
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Appends a record whose payload `encode` appends to the buffer.
    pub(crate) fn push_with(&mut self, kind: u8, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.bytes);
        self.ends.push((kind, self.bytes.len()));
    }

    pub(crate) fn push(&mut self, record: &Encoded) {
        self.push_with(record.kind, |bytes| bytes.extend_from_slice(&record.bytes));
    }

    /// (kind, payload) of every record, in order.
    pub(crate) fn parts(&self) -> Vec<(u8, &[u8])> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&(kind, end)| {
                let part = (kind, &self.bytes[start..end]);
                start = end;
                part
            })
            .collect()
    }
}

impl FromIterator<Encoded> for Records {
    fn from_iter<I: IntoIterator<Item = Encoded>>(records: I) -> Self {
        let mut all = Records::default();
        for record in records {
            all.push(&record);
        }
        all
    }
}

/// A branch as a decision record names it: service, index, and what an
/// external participant needs at commit.
pub(crate) type NamedBranch<'a> = (&'a str, u16, Option<&'a [u8]>);

/// The payload of a commit decision with non-ledger branches (kind 6).
pub(crate) fn encode_decision<'a>(
    tx: TxId,
    fingerprint: u64,
    changes: impl ExactSizeIterator<Item = (&'a str, &'a str, i64)>,
    branches: impl ExactSizeIterator<Item = NamedBranch<'a>>,
) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(48 + changes.len() * 32 + branches.len() * 24));
    w.u128(tx.as_u128());
    w.u64(fingerprint);
    write_changes(&mut w, changes);
    w.u64(branches.len() as u64);
    for (service, index, prepared) in branches {
        write_branch(&mut w, service, index, prepared);
    }
    w.0
}

fn write_changes<'a>(w: &mut Writer, changes: impl ExactSizeIterator<Item = (&'a str, &'a str, i64)>) {
    w.u64(changes.len() as u64);
    for (service, account, delta) in changes {
        w.str(service);
        w.str(account);
        w.i64(delta);
    }
}

fn write_branch(w: &mut Writer, service: &str, index: u16, prepared: Option<&[u8]>) {
    w.str(service);
    w.u16(index);
    match prepared {
        None => w.u8(0),
        Some(bytes) => {
            debug_assert!(bytes.len() <= MAX_PREPARED_BYTES);
            w.u8(1);
            w.u32(bytes.len() as u32);
            w.0.extend_from_slice(bytes);
        }
    }
}

fn read_branch(r: &mut Reader<'_>) -> Result<BranchRecord, DecodeError> {
    let service = r.str()?;
    let index = r.u16()?;
    let at = r.at;
    let prepared = match r.u8()? {
        0 => None,
        1 => {
            let len = r.u32()? as usize;
            if len > MAX_PREPARED_BYTES {
                return Err(DecodeError { what: "prepared value length", offset: at });
            }
            Some(r.take(len)?.to_vec())
        }
        _ => return Err(DecodeError { what: "prepared value flag", offset: at }),
    };
    Ok(BranchRecord { service, index, prepared })
}

/// The payload of a begin record: the external branches about to be asked
/// to prepare, each with its request (a payload branch's bytes).
pub(crate) fn encode_begin<'a>(tx: TxId, branches: impl ExactSizeIterator<Item = NamedBranch<'a>>) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(32 + branches.len() * 24));
    w.u128(tx.as_u128());
    w.u64(branches.len() as u64);
    for (service, index, request) in branches {
        write_branch(&mut w, service, index, request);
    }
    w.0
}

/// One ledger change in a commit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub service: String,
    pub account: String,
    pub delta: i64,
}

/// One non-ledger branch named by a decision or a begin record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BranchRecord {
    pub service: String,
    pub index: u16,
    /// What the participant needs at commit (external participants).
    pub prepared: Option<Vec<u8>>,
}

/// What a log record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// The commit decision: ledger effects, and the non-ledger branches that
    /// must acknowledge before a `Done`.
    Commit { tx: TxId, fingerprint: u64, changes: Vec<Change>, branches: Vec<BranchRecord> },
    /// External branches about to be asked to prepare (durable before the
    /// first prepare is sent, so recovery can roll back each one).
    Begin { tx: TxId, branches: Vec<BranchRecord> },
    /// The abort decision (logged so that a resubmitted id keeps its answer).
    Abort { tx: TxId, fingerprint: u64, reason: AbortReason },
    /// Every branch owing an acknowledgement applied the decision.
    Done { tx: TxId },
    /// An account created after the store was opened.
    Account { service: String, account: String, balance: i64 },
    /// An operator's action on a transaction, with the reason given (audit).
    Operator { tx: TxId, action: Action, reason: String, at_unix_ns: u64 },
}

pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    pub(crate) fn new() -> Self {
        Self(Vec::with_capacity(64))
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u128(&mut self, v: u128) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A string of at most 65 535 bytes (longer ones are cut at a char boundary).
    pub(crate) fn str(&mut self, s: &str) {
        let mut end = s.len().min(usize::from(u16::MAX));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, at: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => Err(DecodeError { what: self.what, offset: self.at }),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub(crate) fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    pub(crate) fn str(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let at = self.at;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError { what: self.what, offset: at })
    }
    /// A count that cannot exceed what the remaining bytes could hold.
    pub(crate) fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let at = self.at;
        let n = self.u64()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.bytes.len() - self.at {
            return Err(DecodeError { what: self.what, offset: at });
        }
        Ok(n)
    }
    pub(crate) fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.at == self.bytes.len() { Ok(()) } else { Err(DecodeError { what: self.what, offset: self.at }) }
    }
}

pub(crate) fn write_reason(w: &mut Writer, reason: &AbortReason) {
    w.u8(reason.slot() as u8);
    let (a, b, c) = match reason {
        AbortReason::InsufficientFunds { service, account } => (service.as_str(), account.as_str(), ""),
        AbortReason::Refused { service, code, message } => (service.as_str(), code.as_str(), message.as_str()),
        AbortReason::PrepareTimeout { service }
        | AbortReason::ParticipantPanicked { service }
        | AbortReason::AlreadyRolledBack { service } => (service.as_str(), "", ""),
        AbortReason::LockTimeout => ("", "", ""),
        AbortReason::Operator { reason } => (reason.as_str(), "", ""),
    };
    w.str(a);
    w.str(b);
    w.str(c);
}

pub(crate) fn read_reason(r: &mut Reader<'_>) -> Result<AbortReason, DecodeError> {
    let at = r.at;
    let slot = usize::from(r.u8()?);
    let (a, b, c) = (r.str()?, r.str()?, r.str()?);
    let code = AbortReason::CODES.get(slot).copied();
    Ok(match code {
        Some("insufficient_funds") => AbortReason::InsufficientFunds { service: a, account: b },
        Some("refused") => AbortReason::Refused { service: a, code: b, message: c },
        Some("prepare_timeout") => AbortReason::PrepareTimeout { service: a },
        Some("participant_panicked") => AbortReason::ParticipantPanicked { service: a },
        Some("lock_timeout") => AbortReason::LockTimeout,
        Some("already_rolled_back") => AbortReason::AlreadyRolledBack { service: a },
        Some("operator") => AbortReason::Operator { reason: a },
        _ => return Err(DecodeError { what: "abort reason", offset: at }),
    })
}

fn write_operator(w: &mut Writer, o: &OperatorRecord) {
    w.u128(o.tx.as_u128());
    w.u8(o.action as u8);
    w.str(&o.reason);
    w.u64(o.at_unix_ns);
}

fn read_operator(r: &mut Reader<'_>) -> Result<OperatorRecord, DecodeError> {
    let tx = TxId::from_u128(r.u128()?);
    let at = r.at;
    let action = match r.u8()? {
        1 => Action::Commit,
        2 => Action::Abort,
        3 => Action::RetryNow,
        _ => return Err(DecodeError { what: "operator action", offset: at }),
    };
    Ok(OperatorRecord { tx, action, reason: r.str()?, at_unix_ns: r.u64()? })
}

impl Entry {
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Entry::Commit { branches, .. } if branches.is_empty() => KIND_COMMIT,
            Entry::Commit { .. } => KIND_DECISION,
            Entry::Begin { .. } => KIND_BEGIN,
            Entry::Abort { .. } => KIND_ABORT,
            Entry::Done { .. } => KIND_DONE,
            Entry::Account { .. } => KIND_ACCOUNT,
            Entry::Operator { .. } => KIND_OPERATOR,
        }
    }

    pub(crate) fn encoded(&self) -> Encoded {
        Encoded { kind: self.kind(), bytes: self.encode() }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Entry::Commit { tx, fingerprint, changes, branches } => {
                let changes = changes.iter().map(|c| (c.service.as_str(), c.account.as_str(), c.delta));
                if branches.is_empty() {
                    return encode_commit(*tx, *fingerprint, changes);
                }
                let branches = branches.iter().map(|b| (b.service.as_str(), b.index, b.prepared.as_deref()));
                return encode_decision(*tx, *fingerprint, changes, branches);
            }
            Entry::Begin { tx, branches } => {
                return encode_begin(
                    *tx,
                    branches.iter().map(|b| (b.service.as_str(), b.index, b.prepared.as_deref())),
                );
            }
            Entry::Abort { tx, fingerprint, reason } => {
                w.u128(tx.as_u128());
                w.u64(*fingerprint);
                write_reason(&mut w, reason);
            }
            Entry::Done { tx } => w.u128(tx.as_u128()),
            Entry::Account { service, account, balance } => {
                w.str(service);
                w.str(account);
                w.i64(*balance);
            }
            Entry::Operator { tx, action, reason, at_unix_ns } => {
                let record =
                    OperatorRecord { tx: *tx, action: *action, reason: reason.clone(), at_unix_ns: *at_unix_ns };
                write_operator(&mut w, &record);
            }
        }
        w.0
    }

    pub(crate) fn decode(kind: u8, payload: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader::new(payload, "log record");
        let entry = match kind {
            KIND_COMMIT | KIND_DECISION => {
                let tx = TxId::from_u128(r.u128()?);
                let fingerprint = r.u64()?;
                let n = r.count(12)?;
                let mut changes = Vec::with_capacity(n);
                for _ in 0..n {
                    changes.push(Change { service: r.str()?, account: r.str()?, delta: r.i64()? });
                }
                let n = r.count(2)?;
                let mut branches = Vec::with_capacity(n);
                for _ in 0..n {
                    branches.push(if kind == KIND_COMMIT {
                        // Written before branches: one per external service.
                        BranchRecord { service: r.str()?, index: 0, prepared: None }
                    } else {
                        read_branch(&mut r)?
                    });
                }
                Entry::Commit { tx, fingerprint, changes, branches }
            }
            KIND_BEGIN => {
                let tx = TxId::from_u128(r.u128()?);
                let n = r.count(5)?;
                let mut branches = Vec::with_capacity(n);
                for _ in 0..n {
                    branches.push(read_branch(&mut r)?);
                }
                Entry::Begin { tx, branches }
            }
            KIND_ABORT => {
                Entry::Abort { tx: TxId::from_u128(r.u128()?), fingerprint: r.u64()?, reason: read_reason(&mut r)? }
            }
            KIND_DONE => Entry::Done { tx: TxId::from_u128(r.u128()?) },
            KIND_ACCOUNT => Entry::Account { service: r.str()?, account: r.str()?, balance: r.i64()? },
            KIND_OPERATOR => {
                let OperatorRecord { tx, action, reason, at_unix_ns } = read_operator(&mut r)?;
                Entry::Operator { tx, action, reason, at_unix_ns }
            }
            _ => return Err(DecodeError { what: "record kind", offset: 0 }),
        };
        r.finish()?;
        Ok(entry)
    }
}

/// A finished transaction remembered in a checkpoint or an id archive run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// The caller-chosen id.
    pub tx: TxId,
    /// The legs' fingerprint (`ANY_FINGERPRINT` for an operator's abort).
    pub fingerprint: u64,
    /// `None` for committed.
    pub aborted: Option<AbortReason>,
}

/// A decided transaction some non-ledger branches have not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unresolved {
    pub tx: TxId,
    /// True for a commit, false for a rollback (of logged external branches).
    pub commit: bool,
    pub branches: Vec<BranchRecord>,
}

/// An operator's action, kept across checkpoints (audit trail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OperatorRecord {
    pub tx: TxId,
    pub action: Action,
    pub reason: String,
    pub at_unix_ns: u64,
}

impl From<OperatorRecord> for crate::operator::OperatorAction {
    fn from(r: OperatorRecord) -> Self {
        crate::operator::OperatorAction {
            tx: r.tx,
            action: r.action.as_str().into(),
            reason: r.reason,
            at_unix_ns: r.at_unix_ns,
        }
    }
}

/// Operator actions a checkpoint keeps (newest).
pub(crate) const MAX_OPERATOR_HISTORY: usize = 1024;

/// Everything needed to restart without the log before `lsn`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub high_water: u128,
    /// (service, accounts with balances).
    pub ledgers: Vec<(String, Vec<(String, i64)>)>,
    pub recent: Vec<Remembered>,
    pub unresolved: Vec<Unresolved>,
    /// Newest operator actions, oldest first (at most `MAX_OPERATOR_HISTORY`).
    /// An optional trailing section: checkpoints without it decode as empty.
    pub operator: Vec<OperatorRecord>,
    /// The id archive's expiry watermark (ns since the Unix epoch): ids
    /// older than it are refused even if the clock steps back. Version 2
    /// only; 0 when absent.
    pub ids_expired_before: u64,
    /// The coordinator's idempotency horizon in nanoseconds, for offline
    /// tools. Version 2 only; 0 when absent.
    pub ids_horizon_ns: u64,
}

impl Checkpoint {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let accounts: usize = self.ledgers.iter().map(|(_, a)| a.len()).sum();
        let mut w = Writer(Vec::with_capacity(64 + accounts * 24));
        w.0.extend_from_slice(CHECKPOINT_MAGIC);
        w.u128(self.high_water);
        w.u64(self.ledgers.len() as u64);
        for (service, accounts) in &self.ledgers {
            w.str(service);
            w.u64(accounts.len() as u64);
            for (account, balance) in accounts {
                w.str(account);
                w.i64(*balance);
            }
        }
        w.u64(self.recent.len() as u64);
        for m in &self.recent {
            w.u128(m.tx.as_u128());
            w.u64(m.fingerprint);
            match &m.aborted {
                None => w.u8(0),
                Some(reason) => {
                    w.u8(1);
                    write_reason(&mut w, reason);
                }
            }
        }
        w.u64(self.unresolved.len() as u64);
        for u in &self.unresolved {
            w.u128(u.tx.as_u128());
            w.u8(u8::from(u.commit));
            w.u64(u.branches.len() as u64);
            for b in &u.branches {
                write_branch(&mut w, &b.service, b.index, b.prepared.as_deref());
            }
        }
        w.u64(self.operator.len() as u64);
        for o in &self.operator {
            write_operator(&mut w, o);
        }
        w.u64(self.ids_expired_before);
        w.u64(self.ids_horizon_ns);
        w.0
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
        let mut r = Reader::new(bytes, "checkpoint");
        let version = match r.take(8)? {
            m if m == CHECKPOINT_MAGIC => 2,
            m if m == CHECKPOINT_MAGIC_V1 => 1,
            _ => return Err(DecodeError { what: "checkpoint magic", offset: 0 }),
        };
        let mut c = Checkpoint { high_water: r.u128()?, ..Default::default() };
        for _ in 0..r.count(10)? {
            let service = r.str()?;
            let n = r.count(10)?;
            let mut accounts = Vec::with_capacity(n);
            for _ in 0..n {
                accounts.push((r.str()?, r.i64()?));
            }
            c.ledgers.push((service, accounts));
        }
        for _ in 0..r.count(25)? {
            let tx = TxId::from_u128(r.u128()?);
            let fingerprint = r.u64()?;
            let aborted = match r.u8()? {
                0 => None,
                1 => Some(read_reason(&mut r)?),
                _ => return Err(DecodeError { what: "checkpoint outcome", offset: r.at }),
            };
            c.recent.push(Remembered { tx, fingerprint, aborted });
        }
        for _ in 0..r.count(24)? {
            let tx = TxId::from_u128(r.u128()?);
            let at = r.at;
            let commit = match version {
                1 => true,
                _ => match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError { what: "checkpoint decision", offset: at }),
                },
            };
            let n = r.count(2)?;
            let mut branches = Vec::with_capacity(n);
            for _ in 0..n {
                branches.push(match version {
                    1 => BranchRecord { service: r.str()?, index: 0, prepared: None },
                    _ => read_branch(&mut r)?,
                });
            }
            c.unresolved.push(Unresolved { tx, commit, branches });
        }
        if !r.is_done() {
            for _ in 0..r.count(27)? {
                c.operator.push(read_operator(&mut r)?);
            }
        }
        if version >= 2 {
            c.ids_expired_before = r.u64()?;
            c.ids_horizon_ns = r.u64()?;
        }
        r.finish()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_in_one_buffer_are_the_records_encoded_alone() {
        let changes = [("bank", "a", -5i64), ("bank", "b", 5)];
        let mut records = Records::default();
        assert!(records.is_empty() && records.parts().is_empty());
        records.push_with(KIND_COMMIT, |bytes| write_commit(bytes, TxId::from_u128(1), 9, changes.into_iter()));
        let done = Entry::Done { tx: TxId::from_u128(2) }.encoded();
        records.push(&done);
        records
            .push_with(KIND_COMMIT, |bytes| write_commit(bytes, TxId::from_u128(3), 0, changes[..1].iter().copied()));
        let parts = records.parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], (KIND_COMMIT, &encode_commit(TxId::from_u128(1), 9, changes.into_iter())[..]));
        assert_eq!(parts[1], (done.kind, &done.bytes[..]));
        assert_eq!(parts[2], (KIND_COMMIT, &encode_commit(TxId::from_u128(3), 0, changes[..1].iter().copied())[..]));
    }

    fn samples() -> Vec<Entry> {
        vec![
            Entry::Commit {
                tx: TxId::from_u128(7 << 64 | 3),
                fingerprint: 99,
                changes: vec![
                    Change { service: "svc-0".into(), account: "acct-1".into(), delta: -5 },
                    Change { service: "svc-1".into(), account: "acct-2".into(), delta: 5 },
                ],
                branches: vec![],
            },
            Entry::Commit {
                tx: TxId::from_u128(7 << 64 | 4),
                fingerprint: 98,
                changes: vec![Change { service: "svc-0".into(), account: "acct-1".into(), delta: -5 }],
                branches: vec![
                    BranchRecord { service: "inventory".into(), index: 1, prepared: None },
                    BranchRecord { service: "flights".into(), index: 2, prepared: Some(b"seat 12A".to_vec()) },
                ],
            },
            Entry::Begin {
                tx: TxId::from_u128(7 << 64 | 5),
                branches: vec![
                    BranchRecord {
                        service: "flights".into(),
                        index: 0,
                        prepared: Some(b"{\"seat\":\"12A\"}".to_vec()),
                    },
                    BranchRecord { service: "hotel".into(), index: 1, prepared: None },
                ],
            },
            Entry::Abort {
                tx: TxId::from_u128(8),
                fingerprint: 1,
                reason: AbortReason::InsufficientFunds { service: "svc-0".into(), account: "acct-1".into() },
            },
            Entry::Abort { tx: TxId::from_u128(9), fingerprint: 2, reason: AbortReason::LockTimeout },
            Entry::Done { tx: TxId::from_u128(10) },
            Entry::Account { service: "svc-3".into(), account: "new".into(), balance: 12 },
            Entry::Operator {
                tx: TxId::from_u128(11),
                action: Action::Abort,
                reason: "ticket 7".into(),
                at_unix_ns: 5,
            },
            Entry::Abort {
                tx: TxId::from_u128(12),
                fingerprint: 0,
                reason: AbortReason::Operator { reason: "stuck since Monday".into() },
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        for e in samples() {
            assert_eq!(Entry::decode(e.kind(), &e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn checkpoint_round_trips() {
        let c = Checkpoint {
            high_water: 5,
            ledgers: vec![("svc-0".into(), vec![("a".into(), 1), ("b".into(), 2)])],
            recent: vec![
                Remembered { tx: TxId::from_u128(1), fingerprint: 3, aborted: None },
                Remembered { tx: TxId::from_u128(2), fingerprint: 4, aborted: Some(AbortReason::LockTimeout) },
            ],
            unresolved: vec![
                Unresolved {
                    tx: TxId::from_u128(1),
                    commit: true,
                    branches: vec![BranchRecord { service: "x".into(), index: 3, prepared: Some(vec![1, 2]) }],
                },
                Unresolved {
                    tx: TxId::from_u128(3),
                    commit: false,
                    branches: vec![BranchRecord { service: "y".into(), index: 0, prepared: None }],
                },
            ],
            operator: vec![OperatorRecord {
                tx: TxId::from_u128(2),
                action: Action::Commit,
                reason: "applied by hand".into(),
                at_unix_ns: 9,
            }],
            ids_expired_before: 1_700_000_000_000_000_000,
            ids_horizon_ns: 86_400_000_000_000,
        };
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for e in samples() {
            let bytes = e.encode();
            for cut in 0..bytes.len() {
                assert!(Entry::decode(e.kind(), &bytes[..cut]).is_err(), "{e:?} cut at {cut}");
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(kind in 0u8..9, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Entry::decode(kind, &bytes);
            let _ = Checkpoint::decode(&bytes);
        }

        #[test]
        fn mutated_records_never_panic(index in 0usize..9, at in any::<usize>(), byte in any::<u8>()) {
            let e = &samples()[index];
            let mut bytes = e.encode();
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = Entry::decode(e.kind(), &bytes);
        }
    }
}
