//! Errors of the saga executor.
//!
//! A saga that fails and is compensated is not an error: it is a
//! [`SagaState::Compensated`](super::SagaState::Compensated) result. A
//! [`SagaError`] means the request could not be served (bad definition, bad
//! input, limits) or the executor's log failed.

use crate::txn::TxId;

/// Everything [`SagaExecutor`](super::SagaExecutor) calls can fail with. Each
/// variant has a stable code ([`SagaError::code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// A saga definition is unusable (no steps, duplicate or invalid step
    /// names, too many steps, a parallel group too large, a zero deadline).
    #[error("saga definition {definition:?}: {reason}")]
    InvalidDefinition {
        /// The definition's name.
        definition: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A different definition with the same name is already registered.
    #[error("a different saga definition named {definition:?} is already registered")]
    DefinitionConflict {
        /// The name.
        definition: String,
    },
    /// The log holds a saga whose registered definition has a different
    /// number of steps; it is left as it is.
    #[error("saga {saga}: definition {definition:?} has {registered_steps} steps, the log says {logged_steps}")]
    DefinitionMismatch {
        /// The saga.
        saga: TxId,
        /// The definition's name.
        definition: String,
        /// Steps recorded when the saga started.
        logged_steps: usize,
        /// Steps of the definition registered now.
        registered_steps: usize,
    },
    /// A saga's input could not be encoded, or its logged input could not
    /// be decoded into the registered definition's input type.
    #[error("saga {saga:?} of {definition:?}: input {phase} failed: {cause}")]
    Input {
        /// The saga, once it has an id.
        saga: Option<TxId>,
        /// The definition's name.
        definition: String,
        /// `"encoding"` or `"decoding"`.
        phase: &'static str,
        /// The serializer's explanation.
        cause: String,
    },
    /// The encoded input is larger than the log accepts.
    #[error("saga of {definition:?}: input is {bytes} bytes, the limit is {limit}")]
    InputTooLarge {
        /// The definition's name.
        definition: String,
        /// Encoded size.
        bytes: usize,
        /// [`MAX_INPUT_BYTES`](super::MAX_INPUT_BYTES).
        limit: usize,
    },
    /// As many sagas as `max_open_sagas` are unfinished (stuck ones
    /// included); finish or repair some first.
    #[error("saga of {definition:?} refused: {limit} sagas are already open")]
    TooManySagas {
        /// The definition's name.
        definition: String,
        /// The configured limit.
        limit: usize,
    },
    /// No saga with this id is known (never started, or finished and
    /// forgotten).
    #[error("saga {saga} is unknown")]
    UnknownSaga {
        /// The id.
        saga: TxId,
    },
    /// Another thread is driving this saga right now.
    #[error("saga {saga} is being run by another thread")]
    InProgress {
        /// The id.
        saga: TxId,
    },
    /// `retry_stuck` on a saga that is not stuck.
    #[error("saga {saga} is not stuck (it is {state})")]
    NotStuck {
        /// The id.
        saga: TxId,
        /// Its state.
        state: super::SagaState,
    },
    /// The saga's definition is not registered, so it cannot be driven.
    #[error("saga {saga}: definition {definition:?} is not registered")]
    NotRegistered {
        /// The id.
        saga: TxId,
        /// The definition's name.
        definition: String,
    },
    /// Writing or syncing the saga log failed. The saga stops where it is
    /// (nothing more takes effect) and resumes when the executor is
    /// reopened on the same directory.
    #[error("saga {saga}: logging {record} of step {step:?} failed: {cause}")]
    Log {
        /// The saga.
        saga: TxId,
        /// The step concerned, if any.
        step: Option<String>,
        /// The record being written (`"StepDone"`, ...).
        record: &'static str,
        /// The log's explanation.
        cause: String,
    },
    /// The saga log or its checkpoint could not be opened or decoded.
    #[error("saga log in {location}: {cause}")]
    Open {
        /// The directory (or `"memory"`).
        location: String,
        /// What went wrong.
        cause: String,
    },
    /// A checkpoint of the saga log failed (the log itself is intact).
    #[error("saga log checkpoint at {lsn}: {cause}")]
    Checkpoint {
        /// Log position of the checkpoint.
        lsn: u64,
        /// What went wrong.
        cause: String,
    },
    /// An executor setting is out of range.
    #[error("invalid saga executor configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
}

impl SagaError {
    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            SagaError::InvalidDefinition { .. } => "invalid_definition",
            SagaError::DefinitionConflict { .. } => "definition_conflict",
            SagaError::DefinitionMismatch { .. } => "definition_mismatch",
            SagaError::Input { .. } => "input",
            SagaError::InputTooLarge { .. } => "input_too_large",
            SagaError::TooManySagas { .. } => "too_many_sagas",
            SagaError::UnknownSaga { .. } => "unknown_saga",
            SagaError::InProgress { .. } => "in_progress",
            SagaError::NotStuck { .. } => "not_stuck",
            SagaError::NotRegistered { .. } => "not_registered",
            SagaError::Log { .. } => "log",
            SagaError::Open { .. } => "open",
            SagaError::Checkpoint { .. } => "checkpoint",
            SagaError::Config { .. } => "config",
        }
    }
}
