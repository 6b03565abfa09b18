//! What a restarted coordinator delivers, from what its log holds and what
//! the participants list as prepared: commit what the log decided, roll
//! back the rest (presumed abort), however old. The driver
//! (`coordinator/durability.rs`) and the simulation follow these rules.

use super::Keeper;

/// A phase to deliver after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deliver {
    Commit,
    Rollback,
}

/// A branch a participant with its own storage lists as prepared: commit it
/// if the log (or the remembered outcomes) decided a commit, else roll it
/// back (nothing decided means nobody was told to commit).
pub(crate) fn listed(committed: bool) -> Deliver {
    if committed { Deliver::Commit } else { Deliver::Rollback }
}

/// One branch of a transaction the log leaves open (decided or only begun):
/// what to deliver to it (beyond [`listed`]), and whether it still owes an
/// acknowledgement, so that the transaction's `Done` waits for it.
/// `held`: its participant listed it as prepared.
pub(crate) fn open_branch(keeper: Keeper, commit: bool, held: bool) -> (Option<Deliver>, bool) {
    match keeper {
        // Its state died with the process, or is rebuilt from the log.
        Keeper::Log | Keeper::Memory => (None, false),
        // A decided branch it no longer lists was applied before the crash
        // (it voted yes, and it lists every prepared, unfinished branch);
        // one it lists gets its phase from `listed`.
        Keeper::Own => (None, held),
        // It cannot list: its phase goes again (idempotent by contract).
        Keeper::External => (Some(listed(commit)), true),
    }
}
