//! The store's vocabulary: where a branch stands, and the answers to each
//! phase.

use std::fmt;

use crate::participant::{BranchId, Refusal};

/// Where a branch stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BranchState {
    /// Prepared and not yet decided: what [`BranchStore::prepared`](super::BranchStore::prepared) lists.
    Prepared,
    /// Committed.
    Committed,
    /// Rolled back (after a prepare, or before any).
    RolledBack,
    /// Its prepare was refused; it holds nothing.
    Refused,
}

impl BranchState {
    /// The state's name on the wire: `prepared`, `committed`, `rolled_back`
    /// or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Prepared => "prepared",
            BranchState::Committed => "committed",
            BranchState::RolledBack => "rolled_back",
            BranchState::Refused => "refused",
        }
    }
}

impl fmt::Display for BranchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which branches [`BranchStore::branches`](super::BranchStore::branches) lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BranchFilter {
    /// Prepared, undecided branches.
    Prepared,
    /// Committed branches still remembered.
    Committed,
    /// Rolled-back branches still remembered.
    RolledBack,
    /// Every remembered branch, refused ones included.
    All,
}

impl BranchFilter {
    pub(super) fn admits(self, state: BranchState) -> bool {
        match self {
            BranchFilter::Prepared => state == BranchState::Prepared,
            BranchFilter::Committed => state == BranchState::Committed,
            BranchFilter::RolledBack => state == BranchState::RolledBack,
            BranchFilter::All => true,
        }
    }
}

impl std::str::FromStr for BranchFilter {
    type Err = String;
    /// `prepared`, `committed`, `rolled_back` or `all`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "prepared" => Ok(BranchFilter::Prepared),
            "committed" => Ok(BranchFilter::Committed),
            "rolled_back" => Ok(BranchFilter::RolledBack),
            "all" => Ok(BranchFilter::All),
            other => Err(format!("unknown branch filter {other:?} (prepared, committed, rolled_back or all)")),
        }
    }
}

/// One remembered branch, as [`BranchStore::branches`](super::BranchStore::branches) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchInfo {
    /// The branch.
    pub branch: BranchId,
    /// Its state.
    pub state: BranchState,
    /// The prepared value, for a prepared branch.
    pub prepared: Option<Vec<u8>>,
}

/// The answer to [`BranchStore::prepare`](super::BranchStore::prepare). Every answer is durable when it is
/// returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrepareVerdict {
    /// The business check ran, said yes, and the branch is now durably
    /// prepared with this value.
    Prepared(Vec<u8>),
    /// A duplicate: the branch was already prepared with this value (the
    /// business check did not run again).
    AlreadyPrepared(Vec<u8>),
    /// The business check said no (now or in an earlier call, which this one
    /// duplicates): nothing is held. Its code and message as recorded.
    Refused(Refusal),
    /// The branch was rolled back before this prepare arrived: refused,
    /// nothing reserved (the business check did not run).
    AlreadyRolledBack,
    /// The branch was prepared and committed already: a stale duplicate.
    AlreadyCommitted,
    /// The branch is unknown and its transaction is older than branches the
    /// store has forgotten: it may be a late duplicate of one of them, so it
    /// is refused without running the business check.
    Expired,
}

/// The answer to [`BranchStore::commit`](super::BranchStore::commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitVerdict {
    /// The apply closure ran and the commit is durably recorded.
    Committed,
    /// A duplicate: already committed (apply did not run again).
    AlreadyCommitted,
    /// The store never saw this branch prepared (never prepared, refused, or
    /// forgotten): it cannot commit it.
    Unknown,
    /// The branch was rolled back: it cannot be committed.
    AlreadyRolledBack,
}

/// The answer to [`BranchStore::rollback`](super::BranchStore::rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollbackVerdict {
    /// The undo closure ran on the prepared value and the rollback is
    /// durably recorded.
    RolledBack,
    /// A duplicate: already rolled back.
    AlreadyRolledBack,
    /// Nothing was prepared (the branch is unknown, or its prepare was
    /// refused). For an unknown branch the undo closure ran with `None` and
    /// the rollback is durably recorded, so a late prepare is refused; a
    /// refused branch already refuses it; for an expired one (see
    /// [`PrepareVerdict::Expired`]) nothing ran and nothing was recorded.
    NothingPrepared,
    /// The branch was committed: it cannot be rolled back.
    AlreadyCommitted,
}
