//! Saga definitions: steps, parallel groups, compensations, policies.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::error::SagaError;
use super::key::IdempotencyKey;
use crate::retry::{Jitter, RetryPolicy};
use crate::txn::TxId;

/// Most steps in one saga.
pub const MAX_STEPS: usize = 256;
/// Most steps in one parallel group.
pub const MAX_PARALLEL_STEPS: usize = 32;
/// Longest definition or step name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// A step's failure, returned by an action or a compensation.
///
/// A retryable failure is retried under the step's [`RetryPolicy`]; a permanent
/// one ends the step at once (e.g. a card was declined). An action that
/// returns an error must not have taken effect.
///
/// A failure may carry a stable code ([`StepError::with_code`]); a step
/// lists the codes it must not retry with [`Step::non_retryable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct StepError {
    message: String,
    permanent: bool,
    code: Option<String>,
}

impl StepError {
    /// A failure worth retrying (a timeout, a busy service).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: false, code: None }
    }
    /// A failure retrying cannot fix (a refusal).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: true, code: None }
    }
    /// A failure with a stable code: retried unless the step lists the code
    /// as [not retryable](Step::non_retryable).
    pub fn with_code(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { message: message.into(), permanent: false, code: Some(code.into()) }
    }
    /// True for [`StepError::permanent`].
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
    /// The code given to [`StepError::with_code`].
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
    /// The explanation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// What an action or compensation is told about its call.
pub struct StepContext<'a, I> {
    pub(crate) saga: TxId,
    pub(crate) step: &'a str,
    pub(crate) key: &'a IdempotencyKey,
    pub(crate) action_key: &'a IdempotencyKey,
    pub(crate) attempt: u32,
    pub(crate) input: &'a I,
}

impl<I> StepContext<'_, I> {
    /// The saga's id.
    pub fn saga_id(&self) -> TxId {
        self.saga
    }
    /// The step's name.
    pub fn step(&self) -> &str {
        self.step
    }
    /// This call's idempotency key (`<saga>/<step>/action` or
    /// `<saga>/<step>/compensate`): the same on every retry, redelivery and
    /// after a restart.
    pub fn key(&self) -> &IdempotencyKey {
        self.key
    }
    /// The key the step's action used (what a compensation undoes).
    pub fn action_key(&self) -> &IdempotencyKey {
        self.action_key
    }
    /// 1 for the first call in this process, then 2, 3, …
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The saga's input.
    pub fn input(&self) -> &I {
        self.input
    }
}

pub(crate) type StepFn<I> = Arc<dyn Fn(&StepContext<'_, I>) -> Result<(), StepError> + Send + Sync>;

/// One step: an action, its compensation, a retry policy and a timeout.
///
/// Both closures may run more than once with the same key (retries,
/// redelivery, resume after a crash) and must make that have one effect. A
/// compensation may also run for an action whose outcome is unknown (it timed
/// out, panicked, or was interrupted by a crash), possibly while a timed-out
/// call of that action is still running: a compensation for an action key
/// that was never applied must do nothing except remember the key (a
/// tombstone), so that the action, if it arrives later, does nothing either.
pub struct Step<I> {
    pub(crate) name: String,
    pub(crate) action: StepFn<I>,
    pub(crate) compensation: Option<StepFn<I>>,
    pub(crate) retry: RetryPolicy,
    pub(crate) non_retryable: Vec<String>,
    pub(crate) timeout: Option<Duration>,
}

impl<I> fmt::Debug for Step<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensated", &self.compensation.is_some())
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A step's retry policy unless [`Step::retry`] sets one: 10 ms doubling to
/// 1 s, full jitter, 5 calls.
pub fn default_step_retry() -> RetryPolicy {
    RetryPolicy::new(Duration::from_millis(10), Duration::from_secs(1), 5).with_jitter(Jitter::Full)
}

/// Default per-call timeout of a step.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

impl<I: Send + Sync + 'static> Step<I> {
    /// A step named `name` (unique in its saga, no `/`) running `action`,
    /// with no compensation, [`default_step_retry`] and
    /// [`DEFAULT_STEP_TIMEOUT`].
    pub fn new(
        name: impl Into<String>,
        action: impl Fn(&StepContext<'_, I>) -> Result<(), StepError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            action: Arc::new(action),
            compensation: None,
            retry: default_step_retry(),
            non_retryable: Vec::new(),
            timeout: Some(DEFAULT_STEP_TIMEOUT),
        }
    }

    /// The compensation undoing the action.
    pub fn compensate(
        mut self,
        compensation: impl Fn(&StepContext<'_, I>) -> Result<(), StepError> + Send + Sync + 'static,
    ) -> Self {
        self.compensation = Some(Arc::new(compensation));
        self
    }

    /// Retry policy of the action (its `non_retryable` codes end the action
    /// at once, as [`Step::non_retryable`] does).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Failure codes ([`StepError::with_code`]) this step's action and
    /// compensation must not retry: such a failure ends the action at once
    /// (the saga compensates) or makes a failing compensation stuck at once.
    pub fn non_retryable<S: Into<String>>(mut self, codes: impl IntoIterator<Item = S>) -> Self {
        self.non_retryable.extend(codes.into_iter().map(Into::into));
        self
    }

    pub(crate) fn is_permanent(&self, error: &StepError) -> bool {
        error.is_permanent()
            || error.code().is_some_and(|c| self.non_retryable.iter().any(|n| n == c) || !self.retry.is_retryable(c))
    }

    /// How long one call of the action or the compensation may take. A call
    /// that does not answer in time counts as a failed attempt whose outcome
    /// is unknown (the step is compensated if it fails for good); the call
    /// runs on its own thread, which is left to finish.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Calls run on the saga's thread with no timeout.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }
}

pub(crate) struct DefinitionInner<I> {
    pub name: String,
    pub steps: Vec<Step<I>>,
    /// Indices into `steps`; each stage runs its steps in parallel.
    pub stages: Vec<Vec<usize>>,
    pub deadline: Duration,
}

/// A named list of steps: register it with an executor, run it with inputs.
/// Cloning is cheap (shared).
///
/// ```
/// use dtc::{saga::{SagaDefinition, SagaExecutor, SagaState, Step, StepError}};
/// use std::sync::{Arc, Mutex};
///
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let (a, b, c) = (log.clone(), log.clone(), log.clone());
/// let order = SagaDefinition::<u32>::builder("order")
///     .step(Step::new("reserve", move |cx| {
///         a.lock().unwrap().push(format!("reserve {}", cx.input()));
///         Ok(())
///     })
///     .compensate(move |cx| {
///         b.lock().unwrap().push(format!("release {}", cx.input()));
///         Ok(())
///     }))
///     .step(Step::new("pay", move |_| {
///         c.lock().unwrap().push("pay".into());
///         Err(StepError::permanent("card declined"))
///     }))
///     .build()
///     .unwrap();
///
/// let executor = SagaExecutor::in_memory();
/// let report = executor.run(&order, &3).unwrap();
/// assert_eq!(report.state, SagaState::Compensated);
/// assert_eq!(*log.lock().unwrap(), ["reserve 3", "pay", "release 3"]);
/// ```
pub struct SagaDefinition<I> {
    pub(crate) inner: Arc<DefinitionInner<I>>,
}

impl<I> Clone for SagaDefinition<I> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<I> fmt::Debug for SagaDefinition<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.inner.name)
            .field("steps", &self.inner.steps)
            .field("stages", &self.inner.stages)
            .field("deadline", &self.inner.deadline)
            .finish()
    }
}

impl<I> SagaDefinition<I> {
    /// Starts a definition named `name`.
    pub fn builder(name: impl Into<String>) -> SagaBuilder<I> {
        SagaBuilder { name: name.into(), steps: Vec::new(), stages: Vec::new(), deadline: Duration::from_secs(300) }
    }
    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// Number of steps.
    pub fn step_count(&self) -> usize {
        self.inner.steps.len()
    }
}

/// Builds a [`SagaDefinition`].
pub struct SagaBuilder<I> {
    name: String,
    steps: Vec<Step<I>>,
    stages: Vec<Vec<usize>>,
    deadline: Duration,
}

impl<I> SagaBuilder<I> {
    /// Appends a step that runs after everything before it.
    pub fn step(mut self, step: Step<I>) -> Self {
        self.stages.push(vec![self.steps.len()]);
        self.steps.push(step);
        self
    }

    /// Appends a group of steps that run concurrently, after everything
    /// before them; the next step waits for all of them.
    pub fn parallel(mut self, steps: impl IntoIterator<Item = Step<I>>) -> Self {
        let mut stage = Vec::new();
        for step in steps {
            stage.push(self.steps.len());
            self.steps.push(step);
        }
        self.stages.push(stage);
        self
    }

    /// The saga's deadline, from its start (default 5 minutes). When it
    /// passes before the last step is done, the saga compensates.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Validates the definition.
    pub fn build(self) -> Result<SagaDefinition<I>, SagaError> {
        let invalid = |reason: String| SagaError::InvalidDefinition { definition: self.name.clone(), reason };
        check_name(&self.name).map_err(|why| invalid(format!("definition name: {why}")))?;
        if self.steps.is_empty() {
            return Err(invalid("no steps".into()));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(invalid(format!("{} steps, the limit is {MAX_STEPS}", self.steps.len())));
        }
        if let Some(stage) = self.stages.iter().find(|s| s.is_empty() || s.len() > MAX_PARALLEL_STEPS) {
            return Err(invalid(format!(
                "a parallel group has {} steps, it needs 1 to {MAX_PARALLEL_STEPS}",
                stage.len()
            )));
        }
        for (i, step) in self.steps.iter().enumerate() {
            check_name(&step.name).map_err(|why| invalid(format!("step {i} name {:?}: {why}", step.name)))?;
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(invalid(format!("two steps are named {:?}", step.name)));
            }
        }
        if self.deadline.is_zero() {
            return Err(invalid("the deadline must be positive".into()));
        }
        Ok(SagaDefinition {
            inner: Arc::new(DefinitionInner {
                name: self.name,
                steps: self.steps,
                stages: self.stages,
                deadline: self.deadline,
            }),
        })
    }
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty")
    } else if name.len() > MAX_NAME_BYTES {
        Err("longer than 128 bytes")
    } else if name.contains('/') {
        Err("contains '/' (the idempotency key separator)")
    } else {
        Ok(())
    }
}
