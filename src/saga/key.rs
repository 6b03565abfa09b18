//! Idempotency keys handed to every step, compensation and closure call.

use std::fmt;

use crate::txn::TxId;

/// A stable key naming one effect: `"<id>/<name>/<phase>"`, where `id` is
/// the saga or transaction id, `name` the step or participant and `phase`
/// one of `action`, `compensate` (sagas) or `prepare`, `commit`, `rollback`
/// (closure participants). Redelivered calls, retries and calls after a
/// restart get the same key, so a callee that records the keys it has
/// applied turns at-least-once delivery into an effect that happens once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub(crate) fn new(id: TxId, name: &str, phase: &str) -> Self {
        Self(format!("{id}/{name}/{phase}"))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
