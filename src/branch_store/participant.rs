//! [`StoredParticipant`]: an in-process [`Durable`](ParticipantKind::Durable)
//! participant whose branch records live in a [`BranchStore`], so that it
//! survives a crash of its process like a remote service would.

use std::fmt;
use std::sync::Arc;

use super::{BranchStore, CommitVerdict, PrepareVerdict, RollbackVerdict, StoreError};
use crate::participant::{BranchId, Failure, Participant, ParticipantKind, Refusal, Work};

/// The closures of a [`RecordingParticipant`].
type PrepareFn = fn(BranchId, Work<'_>) -> Result<Vec<u8>, Refusal>;
type CommitFn = fn(BranchId, &[u8]) -> Result<(), Failure>;
type RollbackFn = fn(BranchId, Option<&[u8]>) -> Result<(), Failure>;

/// A [`StoredParticipant`] that accepts every branch and records its payload
/// (a transfer branch: nothing) as the prepared value; commit and rollback
/// only record. Made by [`StoredParticipant::recording`].
pub type RecordingParticipant = StoredParticipant<PrepareFn, CommitFn, RollbackFn>;

/// A participant made of three closures whose phases are recorded in a
/// [`BranchStore`]: a [`Durable`](ParticipantKind::Durable) participant whose
/// [`recover`](Participant::recover) lists the store's prepared branches.
///
/// - `prepare(branch, work) -> Result<Vec<u8>, Refusal>` runs only for a
///   branch the store has not seen; its value is durable before the vote.
/// - `commit(branch, &value)` runs once per prepared branch (again after a
///   crash that lost the commit record: make its effect idempotent or keep
///   it in state rebuilt from the store).
/// - `rollback(branch, Option<&value>)`: `None` for a branch never prepared.
///
/// Every answer follows the store's verdicts: a duplicate prepare returns
/// the recorded value, a prepare after a rollback is refused with code
/// `already_rolled_back`, a commit of an unknown branch fails with code
/// `unknown_branch`, a rollback of a committed one with `already_committed`.
/// A store error is a refusal in prepare (a safe "no") and a retryable
/// failure in commit and rollback.
///
/// A coordinator asks `recover()` when it opens with a data directory
/// ([`Durability::Sync`](crate::Durability::Sync)); without one, branches
/// left prepared by an earlier process stay prepared in the store.
///
/// Use it for crash tests of a coordinator: open the store on a directory,
/// run transactions, kill the process, reopen both; the coordinator's
/// recovery sees exactly the branches that were durably prepared.
///
/// ```
/// use std::sync::Arc;
/// use dtc::{Branch, Coordinator, Outcome, Transaction, store::{BranchStore, StoredParticipant}};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = Arc::new(BranchStore::open(dir.path()).unwrap());
/// let dtc = Coordinator::builder()
///     .service("hotel", StoredParticipant::recording(Arc::clone(&store)))
///     .open()
///     .unwrap();
/// let booking = Transaction::new().branch(Branch::new("hotel", &br#"{"room":7}"#[..]));
/// assert_eq!(dtc.run(&booking).unwrap(), Outcome::Committed);
/// assert!(store.prepared().is_empty());
/// ```
pub struct StoredParticipant<P, C, R> {
    store: Arc<BranchStore>,
    prepare: P,
    commit: C,
    rollback: R,
}

impl<P: Clone, C: Clone, R: Clone> Clone for StoredParticipant<P, C, R> {
    /// Another participant on the same store (for
    /// [`Builder::concurrent_service`](crate::Builder::concurrent_service)).
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            prepare: self.prepare.clone(),
            commit: self.commit.clone(),
            rollback: self.rollback.clone(),
        }
    }
}

impl<P, C, R> fmt::Debug for StoredParticipant<P, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredParticipant").field("store", &self.store).finish_non_exhaustive()
    }
}

impl<P, C, R> StoredParticipant<P, C, R>
where
    P: FnMut(BranchId, Work<'_>) -> Result<Vec<u8>, Refusal> + Send + 'static,
    C: FnMut(BranchId, &[u8]) -> Result<(), Failure> + Send + 'static,
    R: FnMut(BranchId, Option<&[u8]>) -> Result<(), Failure> + Send + 'static,
{
    /// A participant recording its phases in `store` and calling these
    /// closures.
    pub fn new(store: Arc<BranchStore>, prepare: P, commit: C, rollback: R) -> Self {
        Self { store, prepare, commit, rollback }
    }

    /// The store it records in.
    pub fn store(&self) -> &Arc<BranchStore> {
        &self.store
    }
}

impl RecordingParticipant {
    /// Accepts every branch, recording its payload as the prepared value.
    pub fn recording(store: Arc<BranchStore>) -> Self {
        fn prepare(_: BranchId, work: Work<'_>) -> Result<Vec<u8>, Refusal> {
            Ok(work.payload().to_vec())
        }
        fn commit(_: BranchId, _: &[u8]) -> Result<(), Failure> {
            Ok(())
        }
        fn rollback(_: BranchId, _: Option<&[u8]>) -> Result<(), Failure> {
            Ok(())
        }
        StoredParticipant::new(store, prepare, commit, rollback)
    }
}

fn store_failure(error: StoreError) -> Failure {
    match error {
        StoreError::Service(failure) => failure,
        other => Failure::with_code("store_failed", other.to_string()),
    }
}

impl<P, C, R> Participant for StoredParticipant<P, C, R>
where
    P: FnMut(BranchId, Work<'_>) -> Result<Vec<u8>, Refusal> + Send + 'static,
    C: FnMut(BranchId, &[u8]) -> Result<(), Failure> + Send + 'static,
    R: FnMut(BranchId, Option<&[u8]>) -> Result<(), Failure> + Send + 'static,
{
    type Prepared = Vec<u8>;

    fn kind(&self) -> ParticipantKind {
        ParticipantKind::Durable
    }

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<Vec<u8>, Refusal> {
        let prepare = &mut self.prepare;
        match self.store.prepare(branch, || prepare(branch, work)) {
            Ok(PrepareVerdict::Prepared(value) | PrepareVerdict::AlreadyPrepared(value)) => Ok(value),
            Ok(PrepareVerdict::Refused(refusal)) => Err(refusal),
            Ok(PrepareVerdict::AlreadyRolledBack) => {
                Err(Refusal::new("already_rolled_back", "the branch was rolled back before its prepare"))
            }
            Ok(PrepareVerdict::AlreadyCommitted) => {
                Err(Refusal::new("already_committed", "the branch was prepared and committed already"))
            }
            Ok(PrepareVerdict::Expired) => {
                Err(Refusal::new("branch_expired", "the transaction is older than branches already forgotten"))
            }
            Err(error) => Err(Refusal::new("store_failed", error.to_string())),
        }
    }

    fn commit(&mut self, branch: BranchId, _prepared: &Vec<u8>) -> Result<(), Failure> {
        let commit = &mut self.commit;
        match self.store.commit(branch, |value| commit(branch, value)).map_err(store_failure)? {
            CommitVerdict::Committed | CommitVerdict::AlreadyCommitted => Ok(()),
            CommitVerdict::Unknown => Err(Failure::with_code("unknown_branch", "the branch was never prepared")),
            CommitVerdict::AlreadyRolledBack => {
                Err(Failure::with_code("already_rolled_back", "the branch was rolled back"))
            }
        }
    }

    fn rollback(&mut self, branch: BranchId, _prepared: Option<&Vec<u8>>) -> Result<(), Failure> {
        let rollback = &mut self.rollback;
        match self.store.rollback(branch, |value| rollback(branch, value)).map_err(store_failure)? {
            RollbackVerdict::RolledBack | RollbackVerdict::AlreadyRolledBack | RollbackVerdict::NothingPrepared => {
                Ok(())
            }
            RollbackVerdict::AlreadyCommitted => {
                Err(Failure::with_code("already_committed", "the branch was committed"))
            }
        }
    }

    fn recover(&mut self) -> Vec<(BranchId, Vec<u8>)> {
        self.store.prepared()
    }

    fn encode_prepared(&self, prepared: &Vec<u8>) -> Option<Vec<u8>> {
        Some(prepared.clone())
    }

    fn decode_prepared(&self, _branch: BranchId, bytes: &[u8]) -> Option<Vec<u8>> {
        Some(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::txn::{Branch, Outcome, Transaction, TxId};
    use crate::wal::MemStorage;
    use crate::{
        Coordinator, Refusal,
        branch_store::{BranchState, BranchStoreOptions, PrepareVerdict},
    };

    use super::*;

    fn store() -> Arc<BranchStore> {
        Arc::new(BranchStoreOptions::default().open_storage(Arc::new(MemStorage::new())).unwrap())
    }

    #[test]
    fn a_branch_left_prepared_without_a_decision_is_rolled_back_by_the_coordinators_recovery() {
        let store = store();
        let orphan = BranchId { tx: TxId::from_u128(5 << 64), index: 0 };
        let verdict = store.prepare(orphan, || Ok::<_, Refusal>(b"{}".to_vec())).unwrap();
        assert!(matches!(verdict, PrepareVerdict::Prepared(_)));
        // A durable coordinator with no record of it: presumed abort.
        let dir = tempfile::tempdir().unwrap();
        let dtc = Coordinator::builder()
            .dir(dir.path())
            .durability(crate::Durability::Sync)
            .service("hotel", StoredParticipant::recording(Arc::clone(&store)))
            .open()
            .unwrap();
        // The rollback is delivered by the service's worker: wait (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.state(orphan) == Some(BranchState::Prepared) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(store.state(orphan), Some(BranchState::RolledBack));
        assert!(store.prepared().is_empty());
        // And it goes on serving transactions through the store.
        let booking = Transaction::new().branch(Branch::new("hotel", &b"{\"room\":1}"[..]));
        assert_eq!(dtc.run(&booking).unwrap(), Outcome::Committed);
        assert_eq!(store.stats().finished, 2);
    }

    #[test]
    fn a_refusal_of_the_closure_aborts_the_transaction_and_is_recorded() {
        let store = store();
        let participant = StoredParticipant::new(
            Arc::clone(&store),
            |_, _| Err(Refusal::new("full", "no rooms")),
            |_, _| Ok(()),
            |_, _| Ok(()),
        );
        let dtc = Coordinator::builder().service("hotel", participant).open().unwrap();
        let booking = Transaction::new().branch(Branch::new("hotel", &b"{}"[..]));
        assert!(matches!(dtc.run(&booking).unwrap(), Outcome::Aborted { .. }));
        let all = store.branches(crate::branch_store::BranchFilter::All);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, BranchState::Refused);
    }
}
