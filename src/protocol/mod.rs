//! The transaction protocol as pure state machines: events in, actions out.
//!
//! Nothing here touches a thread, a channel, a clock, a lock or a file. The
//! coordinator's thread driver (`coordinator/driver.rs`, for single
//! transactions and each member of a batch) executes the actions with
//! workers, channels, the striped locks and the journal, and feeds back
//! what happened as events; the deterministic
//! simulation (`sim.rs`, a test) executes the same actions against a seeded
//! model of participants and of a log that crashes, with deliveries
//! reordered, duplicated and dropped. Both run this code unchanged.
//!
//! - [`tx`]: one two-phase (or one-phase) transaction, from taking its locks
//!   to its answer, alone or as a member of a batch. The durability rules
//!   are asserted here: a participant with its own storage is told to commit
//!   only after the decision's position is known and waited for, and no
//!   outcome is answered before its record is durable.
//! - [`recovery`]: what a restarted coordinator delivers to each branch of a
//!   transaction the log leaves open, and to each branch a participant lists
//!   as prepared.
//! - [`resolve`]: the operator's resolve rules, shared by a live coordinator
//!   and the offline `DataDir`.

pub(crate) mod recovery;
pub(crate) mod resolve;
pub(crate) mod tx;

#[cfg(test)]
mod sim;

/// Where a participant keeps its state, as the protocol sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keeper {
    /// A built-in ledger (or a wrapper of one): its state is rebuilt from
    /// the coordinator's log, so it may commit before the decision is
    /// durable, and a restart re-applies what the log decided.
    Log,
    /// Process memory only: a crash loses it whatever was decided.
    Memory,
    /// Its own durable storage; after a restart it lists what it holds
    /// prepared (`Participant::recover`).
    Own,
    /// Somewhere the coordinator cannot list (a remote service): its branch
    /// is in the log before it is asked to prepare (the begin record).
    External,
}

impl Keeper {
    /// May hear "commit" before the decision is durable (nothing outlives a
    /// crash that the log would not rebuild).
    pub(crate) fn early_commit(self) -> bool {
        matches!(self, Keeper::Log | Keeper::Memory)
    }
}
