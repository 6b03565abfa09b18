//! Global transaction ids: the name a branch is prepared under in
//! PostgreSQL, and the way back from `pg_prepared_xacts` to the branch.
//!
//! `dtc:<coordinator-id>:<transaction, 32 lowercase hex digits>:<branch index>`
//!
//! The coordinator id is 1 to [`MAX_COORDINATOR_ID_BYTES`] bytes of
//! `[A-Za-z0-9_.-]`, so no `:` can occur in it and one coordinator's
//! prefix is never the start of another's; the whole gid is at most
//! 4 + 64 + 1 + 32 + 1 + 5 = 107 bytes, well under PostgreSQL's 200, and
//! needs no quoting inside a string literal.

use crate::participant::BranchId;

/// Every gid dtc prepares starts with this.
pub const GID_PREFIX: &str = "dtc:";

/// Longest coordinator id, in bytes.
pub const MAX_COORDINATOR_ID_BYTES: usize = 64;

/// Longest gid dtc makes (PostgreSQL's limit is 199 bytes).
pub const MAX_GID_BYTES: usize = GID_PREFIX.len() + MAX_COORDINATOR_ID_BYTES + 1 + 32 + 1 + 5;

const _: () = assert!(MAX_GID_BYTES < 200, "gids must fit PostgreSQL's GIDSIZE");

/// Why a coordinator id is not accepted, or `None` if it is.
pub(crate) fn invalid_coordinator_id(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("empty");
    }
    if id.len() > MAX_COORDINATOR_ID_BYTES {
        return Some("longer than 64 bytes");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Some("only letters, digits, '_', '.' and '-' are allowed");
    }
    None
}

/// `dtc:<id>:`: what every gid of this coordinator starts with.
pub(crate) fn prefix(coordinator_id: &str) -> String {
    debug_assert!(invalid_coordinator_id(coordinator_id).is_none());
    format!("{GID_PREFIX}{coordinator_id}:")
}

/// The gid of `branch` under `prefix`.
pub(crate) fn gid(prefix: &str, branch: BranchId) -> String {
    let gid = format!("{prefix}{}:{}", branch.tx, branch.index);
    debug_assert!(gid.len() <= MAX_GID_BYTES);
    debug_assert_eq!(parse(prefix, &gid), Some(branch), "a gid parses back to its branch");
    gid
}

/// The branch a gid under `prefix` names; `None` if it is not one of ours
/// or not in dtc's format (then it is never touched).
pub(crate) fn parse(prefix: &str, gid: &str) -> Option<BranchId> {
    let rest = gid.strip_prefix(prefix)?;
    let (tx, index) = rest.split_once(':')?;
    if tx.len() != 32 || !tx.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    if index.is_empty() || index.len() > 5 || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if index.len() > 1 && index.starts_with('0') {
        return None; // one spelling per branch: the one `gid` writes
    }
    Some(BranchId { tx: tx.parse().ok()?, index: index.parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::TxId;

    #[test]
    fn gids_round_trip_and_fit() {
        let p = prefix(&"x".repeat(MAX_COORDINATOR_ID_BYTES));
        let b = BranchId { tx: TxId::from_u128(u128::MAX), index: u16::MAX };
        let g = gid(&p, b);
        assert_eq!(g.len(), MAX_GID_BYTES);
        assert_eq!(parse(&p, &g), Some(b));
        let p = prefix("bank-1");
        let b = BranchId { tx: TxId::from_u128(42), index: 3 };
        assert_eq!(gid(&p, b), "dtc:bank-1:0000000000000000000000000000002a:3");
    }

    #[test]
    fn foreign_and_malformed_gids_are_not_ours() {
        let p = prefix("a");
        for g in [
            "dtc:ab:0000000000000000000000000000002a:3",
            "dtc:b:0000000000000000000000000000002a:3",
            "other-app-gid",
            "dtc:a:0000000000000000000000000000002A:3",
            "dtc:a:000000000000000000000000000002a:3",
            "dtc:a:0000000000000000000000000000002a:",
            "dtc:a:0000000000000000000000000000002a:03",
            "dtc:a:0000000000000000000000000000002a:65536",
            "dtc:a:0000000000000000000000000000002a:3:x",
        ] {
            assert_eq!(parse(&p, g), None, "{g}");
        }
    }

    #[test]
    fn coordinator_ids_are_checked() {
        assert!(invalid_coordinator_id("bank-1.eu_2").is_none());
        for bad in ["", "a:b", "a b", "a'b", "é", &"x".repeat(65)] {
            assert!(invalid_coordinator_id(bad).is_some(), "{bad:?}");
        }
    }
}
