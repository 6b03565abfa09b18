//! Durable closure participants: three closures registered under a service
//! name when the coordinator opens, so that recovery can call them again.
//!
//! A [`Handlers`] service is an [`External`](crate::ParticipantKind::External)
//! participant: its closures may have effects anywhere (an API, a file, a
//! queue) that the coordinator cannot list after a crash. So each branch is
//! logged before its prepare runs, the prepare's output is recorded (as JSON)
//! with the commit decision, and after a coordinator crash every decided
//! branch is committed again with its recorded output, every undecided one
//! rolled back (with `None`: the output may never have been produced).
//! Commit and rollback may therefore run more than once for one branch across
//! restarts; the [`BranchId`] they receive is a stable idempotency key.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::participant::{BranchId, Failure, Participant, ParticipantKind, Refusal, Work};

/// A participant made of three closures over a typed request and a typed
/// prepare output, both JSON on the wire and in the log.
///
/// - `prepare(branch, request) -> Result<Out, Refusal>` checks and reserves,
///   returning what commit needs; it must not make the change final.
/// - `commit(branch, &out)` makes it final.
/// - `rollback(branch, Option<&out>)` undoes the reservation; `None` after a
///   crash (or a prepare that panicked): undo whatever a prepare of this
///   branch may have done, and do nothing if it never ran.
///
/// ```
/// use dtc::{Branch, Coordinator, Failure, Handlers, Outcome, Refusal, Transaction};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Hold { sku: String, units: u32 }
///
/// let stock = Handlers::new(
///     |_branch, hold: Hold| {
///         if hold.units > 5 { Err(Refusal::new("out_of_stock", "only 5 left")) } else { Ok(hold) }
///     },
///     |_branch, _hold: &Hold| -> Result<(), Failure> { Ok(()) },
///     |_branch, _hold: Option<&Hold>| -> Result<(), Failure> { Ok(()) },
/// );
/// let dtc = Coordinator::builder().service("stock", stock).open().unwrap();
/// let order = Transaction::new().branch(Branch::json("stock", &Hold { sku: "sku-7".into(), units: 2 }).unwrap());
/// assert_eq!(dtc.run(&order).unwrap(), Outcome::Committed);
/// ```
pub struct Handlers<In, Out, P, C, R> {
    prepare: P,
    commit: C,
    rollback: R,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out, P, C, R> fmt::Debug for Handlers<In, Out, P, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handlers(..)")
    }
}

impl<In, Out, P, C, R> Handlers<In, Out, P, C, R>
where
    In: DeserializeOwned + 'static,
    Out: Serialize + DeserializeOwned + Send + 'static,
    P: FnMut(BranchId, In) -> Result<Out, Refusal> + Send + 'static,
    C: FnMut(BranchId, &Out) -> Result<(), Failure> + Send + 'static,
    R: FnMut(BranchId, Option<&Out>) -> Result<(), Failure> + Send + 'static,
{
    /// A participant calling these closures.
    pub fn new(prepare: P, commit: C, rollback: R) -> Self {
        Self { prepare, commit, rollback, _types: PhantomData }
    }
}

impl<In, Out, P, C, R> Participant for Handlers<In, Out, P, C, R>
where
    In: DeserializeOwned + 'static,
    Out: Serialize + DeserializeOwned + Send + 'static,
    P: FnMut(BranchId, In) -> Result<Out, Refusal> + Send + 'static,
    C: FnMut(BranchId, &Out) -> Result<(), Failure> + Send + 'static,
    R: FnMut(BranchId, Option<&Out>) -> Result<(), Failure> + Send + 'static,
{
    type Prepared = Out;

    fn kind(&self) -> ParticipantKind {
        ParticipantKind::External
    }

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<Out, Refusal> {
        let Work::Payload(bytes) = work else {
            return Err(Refusal::new("transfers_unsupported", "closure handlers take a JSON payload"));
        };
        let request = serde_json::from_slice(bytes)
            .map_err(|e| Refusal::new("invalid_request", format!("the payload is not the handler's request: {e}")))?;
        (self.prepare)(branch, request)
    }

    fn commit(&mut self, branch: BranchId, out: &Out) -> Result<(), Failure> {
        (self.commit)(branch, out)
    }

    fn rollback(&mut self, branch: BranchId, out: Option<&Out>) -> Result<(), Failure> {
        (self.rollback)(branch, out)
    }

    fn encode_prepared(&self, out: &Out) -> Option<Vec<u8>> {
        match serde_json::to_vec(out) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                // Without it, a crash would leave the commit to an operator
                // (`decode_prepared` gets nothing to rebuild it from).
                tracing::error!(%error, "a prepare output could not be encoded for the log");
                None
            }
        }
    }

    fn decode_prepared(&self, branch: BranchId, bytes: &[u8]) -> Option<Out> {
        match serde_json::from_slice(bytes) {
            Ok(out) => Some(out),
            Err(error) => {
                tracing::error!(%branch, %error, "recorded prepare output unreadable");
                None
            }
        }
    }
}
