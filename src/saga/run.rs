//! Driving one saga: forward through its stages, then (if a step failed for
//! good or the deadline passed) back through its compensations. Every
//! decision is recorded before it takes effect, so a restart continues from
//! the log: see docs/sagas.md for the resume rules.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::call::{CallError, call_with_timeout};
use super::core::{Core, ErasedDefinition, SagaInfo, bump, clip};
use super::definition::{DefinitionInner, Step, StepContext, StepFn};
use super::error::SagaError;
use super::key::IdempotencyKey;
use super::log::{End, FailCause, NO_STEP, Phase, Rec, Row, StepState};
use crate::sync::{AtomicBool, Ordering};
use crate::txn::TxId;

/// Drives saga `saga` of `definition` from wherever the log says it is.
pub(crate) fn drive<I: Send + Sync + 'static>(
    core: &Core,
    definition: &DefinitionInner<I>,
    saga: TxId,
    input: Arc<I>,
) -> Result<SagaInfo, SagaError> {
    let row = core.row(saga)?;
    if row.steps.len() != definition.steps.len() {
        return Err(SagaError::DefinitionMismatch {
            saga,
            definition: definition.name.clone(),
            logged_steps: row.steps.len(),
            registered_steps: definition.steps.len(),
        });
    }
    let saga_run = SagaRun { core, definition, saga, input, deadline: Duration::from_millis(row.deadline_at_ms) };
    if row.phase == Phase::Forward && saga_run.forward(&row.steps)? {
        let rec = Rec::Finished { saga, end: End::Completed, step: NO_STEP, reason: String::new() };
        core.record(rec, None)?;
        tracing::info!(%saga, definition = %definition.name, "saga completed");
        return core.info(saga);
    }
    if core.row(saga)?.phase == Phase::Compensating {
        saga_run.compensate()?;
    }
    core.info(saga)
}

struct SagaRun<'a, I> {
    core: &'a Core,
    definition: &'a DefinitionInner<I>,
    saga: TxId,
    input: Arc<I>,
    /// Absolute, on the executor's clock.
    deadline: Duration,
}

/// How one call of an action or compensation went.
enum Attempt {
    Done,
    Failed { message: String, permanent: bool, uncertain: bool },
}

impl<I: Send + Sync + 'static> SagaRun<'_, I> {
    /// Runs the stages whose steps are not all done. True when every step is
    /// done; false when a failure (already recorded) means compensating.
    fn forward(&self, states: &[StepState]) -> Result<bool, SagaError> {
        for stage in &self.definition.stages {
            let todo: Vec<usize> = stage.iter().copied().filter(|&i| states[i] != StepState::Done).collect();
            if todo.is_empty() {
                continue;
            }
            if self.core.clock.now() >= self.deadline {
                bump(&self.core.counters.deadlines_exceeded);
                tracing::warn!(saga = %self.saga, "saga deadline passed; compensating");
                self.core.record(Rec::DeadlineExceeded { saga: self.saga }, None)?;
                return Ok(false);
            }
            let abort = AtomicBool::new(false);
            let results = if let [only] = todo[..] {
                vec![self.run_step(only, states[only], &abort)]
            } else {
                self.run_parallel(&todo, states, &abort)
            };
            let mut all_done = true;
            for result in results {
                all_done &= result?;
            }
            if !all_done {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs a parallel group, one scoped thread per step (a step whose
    /// thread cannot be started runs on this thread afterwards).
    fn run_parallel(&self, todo: &[usize], states: &[StepState], abort: &AtomicBool) -> Vec<Result<bool, SagaError>> {
        std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(todo.len());
            let mut inline = Vec::new();
            for &i in todo {
                let spawned = std::thread::Builder::new()
                    .name(format!("dtc-saga-step-{i}"))
                    .spawn_scoped(scope, move || self.run_step(i, states[i], abort));
                match spawned {
                    Ok(handle) => handles.push(handle),
                    Err(e) => {
                        tracing::warn!(saga = %self.saga, step = i, error = %e, "cannot start a step thread; running it inline");
                        inline.push(i);
                    }
                }
            }
            let mut results: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload)))
                .collect();
            results.extend(inline.into_iter().map(|i| self.run_step(i, states[i], abort)));
            results
        })
    }

    /// One step, with retries. True when done; false when it failed for
    /// good (recorded). `state` is what the log said when the stage began.
    fn run_step(&self, index: usize, state: StepState, abort: &AtomicBool) -> Result<bool, SagaError> {
        let step = &self.definition.steps[index];
        let core = self.core;
        let key = IdempotencyKey::new(self.saga, &step.name, "action");
        if state != StepState::Started {
            core.record(Rec::StepStarted { saga: self.saga, step: index as u16 }, Some(&step.name))?;
        }
        // A step started before a restart may have taken effect.
        let mut uncertain = state == StepState::Started;
        let mut last = String::from("not attempted");
        let attempts = step.retry.attempts();
        let mut made = 0;
        let cause = 'attempts: {
            for attempt in 1..=attempts {
                if attempt > 1 {
                    // Relaxed: a hint to stop early; correctness does not depend on seeing it.
                    if abort.load(Ordering::Relaxed) {
                        break 'attempts FailCause::Sibling;
                    }
                    let delay = core.jitter.before_call(&step.retry, attempt);
                    if core.clock.now().saturating_add(delay) >= self.deadline {
                        break 'attempts FailCause::Deadline;
                    }
                    bump(&core.counters.step_retries);
                    core.clock.sleep(delay);
                }
                if core.clock.now() >= self.deadline {
                    break 'attempts FailCause::Deadline;
                }
                made = attempt;
                bump(&core.counters.step_attempts);
                match self.attempt(step, &step.action, &key, &key, attempt) {
                    Attempt::Done => {
                        self.redeliver(step, &step.action, &key, &key);
                        core.record(Rec::StepDone { saga: self.saga, step: index as u16 }, Some(&step.name))?;
                        tracing::info!(saga = %self.saga, step = %step.name, attempt, "saga step done");
                        return Ok(true);
                    }
                    Attempt::Failed { message, permanent, uncertain: maybe } => {
                        uncertain |= maybe;
                        tracing::warn!(saga = %self.saga, step = %step.name, attempt, error = %message, "saga step attempt failed");
                        last = message;
                        if permanent {
                            break 'attempts FailCause::Permanent;
                        }
                    }
                }
            }
            FailCause::Exhausted
        };
        // Relaxed: see above.
        abort.store(true, Ordering::Relaxed);
        bump(&core.counters.step_failures);
        let why = match cause {
            FailCause::Permanent => "a permanent error",
            FailCause::Exhausted => "its last allowed attempt",
            FailCause::Deadline => "the saga's deadline",
            FailCause::Sibling => "a failure in its parallel group",
        };
        let reason = clip(format!("step {:?} stopped after {made} attempt(s) by {why}: {last}", step.name));
        tracing::warn!(saga = %self.saga, step = %step.name, %reason, uncertain, "saga step failed; compensating");
        let rec = Rec::StepFailed { saga: self.saga, step: index as u16, attempts: made, cause, uncertain, reason };
        core.record(rec, Some(&step.name))?;
        Ok(false)
    }

    /// One call of `f` (the step's action or compensation).
    fn attempt(
        &self,
        step: &Step<I>,
        f: &StepFn<I>,
        key: &IdempotencyKey,
        action_key: &IdempotencyKey,
        attempt: u32,
    ) -> Attempt {
        let (f, input, saga) = (Arc::clone(f), Arc::clone(&self.input), self.saga);
        let (name, key, action_key) = (step.name.clone(), key.clone(), action_key.clone());
        let thread_name = || format!("dtc-saga-{}", step.name);
        let result = call_with_timeout(thread_name, step.timeout, &self.core.in_flight, move || {
            let context =
                StepContext { saga, step: &name, key: &key, action_key: &action_key, attempt, input: &*input };
            f(&context)
        });
        match result {
            Ok(Ok(())) => Attempt::Done,
            Ok(Err(e)) => {
                let permanent = step.is_permanent(&e);
                Attempt::Failed { message: e.to_string(), permanent, uncertain: false }
            }
            Err(CallError::TimedOut) => {
                bump(&self.core.counters.timeouts);
                let timeout = step.timeout.unwrap_or_default();
                Attempt::Failed { message: format!("no answer within {timeout:?}"), permanent: false, uncertain: true }
            }
            Err(CallError::Panicked(message)) => {
                bump(&self.core.counters.panics);
                Attempt::Failed { message: format!("panicked: {message}"), permanent: false, uncertain: true }
            }
            Err(CallError::Overloaded(message)) => Attempt::Failed { message, permanent: false, uncertain: false },
        }
    }

    /// Testing aid: deliver a successful call again.
    fn redeliver(&self, step: &Step<I>, f: &StepFn<I>, key: &IdempotencyKey, action_key: &IdempotencyKey) {
        for copy in 0..self.core.config.redeliver {
            let _ = self.attempt(step, f, key, action_key, 1_000 + copy);
        }
    }

    /// Compensates, in the order the log implies, every step that may have
    /// taken effect and is not compensated yet.
    fn compensate(&self) -> Result<(), SagaError> {
        let core = self.core;
        let row = core.row(self.saga)?;
        for index in row.compensation_order() {
            let index = usize::from(index);
            let step = &self.definition.steps[index];
            let Some(compensation) = &step.compensation else { continue };
            if row.steps[index] != StepState::Compensating {
                core.record(Rec::CompStarted { saga: self.saga, step: index as u16 }, Some(&step.name))?;
            }
            if let Err(reason) = self.compensate_step(step, compensation) {
                tracing::error!(saga = %self.saga, step = %step.name, %reason, "saga is stuck: a compensation keeps failing");
                let rec = Rec::Finished { saga: self.saga, end: End::Stuck, step: index as u16, reason };
                return core.record(rec, Some(&step.name));
            }
            core.record(Rec::CompDone { saga: self.saga, step: index as u16 }, Some(&step.name))?;
            tracing::info!(saga = %self.saga, step = %step.name, "saga step compensated");
        }
        let rec = Rec::Finished { saga: self.saga, end: End::Compensated, step: NO_STEP, reason: String::new() };
        core.record(rec, None)?;
        tracing::info!(saga = %self.saga, definition = %self.definition.name, "saga compensated");
        Ok(())
    }

    /// Calls a compensation until it succeeds; the reason when it does not
    /// within the executor's compensation policy (or fails permanently).
    fn compensate_step(&self, step: &Step<I>, compensation: &StepFn<I>) -> Result<(), String> {
        let core = self.core;
        let policy = &core.config.compensation_retry;
        let key = IdempotencyKey::new(self.saga, &step.name, "compensate");
        let action_key = IdempotencyKey::new(self.saga, &step.name, "action");
        let mut last = String::new();
        let mut made = 0;
        for attempt in 1..=policy.attempts() {
            if attempt > 1 {
                bump(&core.counters.compensation_retries);
                core.clock.sleep(core.jitter.before_call(policy, attempt));
            }
            made = attempt;
            bump(&core.counters.compensation_attempts);
            match self.attempt(step, compensation, &key, &action_key, attempt) {
                Attempt::Done => {
                    self.redeliver(step, compensation, &key, &action_key);
                    return Ok(());
                }
                Attempt::Failed { message, permanent, .. } => {
                    tracing::warn!(saga = %self.saga, step = %step.name, attempt, error = %message, "compensation attempt failed");
                    last = message;
                    if permanent {
                        break;
                    }
                }
            }
        }
        Err(clip(format!("compensation of step {:?} failed {made} time(s): {last}", step.name)))
    }
}

impl<I> ErasedDefinition for DefinitionInner<I>
where
    I: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn step_count(&self) -> usize {
        self.steps.len()
    }
    fn step_name(&self, step: usize) -> Option<&str> {
        self.steps.get(step).map(|s| s.name.as_str())
    }
    fn drive_logged(&self, core: &Core, row: &Row) -> Result<SagaInfo, SagaError> {
        let input: I = serde_json::from_str(&row.input).map_err(|e| SagaError::Input {
            saga: Some(row.id),
            definition: self.name.clone(),
            phase: "decoding",
            cause: e.to_string(),
        })?;
        drive(core, self, row.id, Arc::new(input))
    }
}
