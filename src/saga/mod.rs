//! Sagas: long-running work as a list of steps, each an action and a
//! compensation, instead of one atomic transaction.
//!
//! A saga holds no locks: its steps take effect one by one, and when one
//! fails for good (or the saga's deadline passes) the compensations of the
//! completed steps undo them in reverse order. Progress is recorded in the
//! executor's own write-ahead log, so a restarted executor finishes what a
//! crash interrupted, calling each action and compensation with the same
//! [`IdempotencyKey`] as before. The log format and resume rules are in
//! docs/sagas.md.

pub(crate) mod call;
mod clock;
mod core;
mod definition;
mod error;
mod executor;
mod jitter;
mod key;
mod log;
mod run;

pub use clock::{Clock, ManualClock, SystemClock};
pub use core::{SagaInfo, SagaState};
pub use definition::{
    DEFAULT_STEP_TIMEOUT, SagaBuilder, SagaDefinition, Step, StepContext, StepError, default_step_retry,
};
pub use error::SagaError;
pub use executor::{MAX_INPUT_BYTES, MemoryLog, SagaExecutor, SagaExecutorBuilder, SagaMetrics};
pub(crate) use jitter::JitterSource;
pub use key::IdempotencyKey;
pub(crate) use log::SNAPSHOT_MAGIC;
