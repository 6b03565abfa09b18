//! One worker thread per service: the only caller of its participant.
//!
//! Requests arrive over a bounded crossbeam channel and are handled in FIFO
//! order. FIFO is load-bearing: once a commit or rollback is enqueued, every
//! later request to the same service observes it applied, so the caller may
//! release its key locks without waiting for a slow acknowledgement.
//!
//! Commit and rollback must eventually succeed; a failing one is retried in
//! place with capped exponential backoff (blocking the queue, which keeps the
//! FIFO promise). After `max_attempts` it is parked: counted, logged, and
//! left prepared for an operator.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::coordinator::barrier::{Barrier, Decision, Phase};
use crate::coordinator::plan::Plan;
use crate::metrics::Metrics;
use crate::participant::{BalanceSummary, Participant, Prepared, Refusal};
use crate::txn::TxId;

/// Backoff for commit/rollback redelivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay.
    pub initial_delay: Duration,
    /// Largest delay (the backoff doubles up to it).
    pub max_delay: Duration,
    /// Attempts before the call is parked for an operator.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(200),
            max_attempts: 1_000,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt` (1-based retry count).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.initial_delay
            .saturating_mul(factor)
            .min(self.max_delay)
    }
}

pub(crate) enum Request {
    Phase {
        plan: Arc<Plan>,
        group: usize,
        step: Step,
        reply: Sender<Reply>,
    },
    Audit {
        reply: Sender<Reply>,
    },
    Shutdown,
}

/// What a caller asks of one service for one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Prepare,
    /// Prepare and, if yes and the caller has not given up, commit at once.
    OnePhase,
    Commit,
    Rollback,
}

#[derive(Debug)]
pub(crate) enum Answer {
    Yes,
    No(Refusal),
    Panicked,
    LateRefused,
    /// Commit or rollback applied (or found already applied).
    Done,
    /// One-phase: prepared but the caller had given up; rolled back.
    Cancelled,
    /// Retries exhausted; left for an operator.
    Parked,
    /// A request the protocol never sends.
    Violation,
}

pub(crate) enum Reply {
    Phase {
        tx: TxId,
        service: u16,
        step: Step,
        answer: Answer,
    },
    Audit {
        service: u16,
        summary: Option<BalanceSummary>,
    },
}

pub(crate) struct Worker {
    pub service: u16,
    pub name: Arc<str>,
    pub participant: Box<dyn Participant>,
    pub barrier: Barrier<Prepared>,
    pub metrics: Arc<Metrics>,
    pub retry: RetryPolicy,
    pub requests: Receiver<Request>,
}

impl Worker {
    pub(crate) fn run(mut self) {
        while let Ok(request) = self.requests.recv() {
            match request {
                Request::Phase {
                    plan,
                    group,
                    step,
                    reply,
                } => {
                    let answer = self.step(&plan, group, step);
                    // The caller may have gone; its loss.
                    let _ = reply.send(Reply::Phase {
                        tx: plan.tx,
                        service: self.service,
                        step,
                        answer,
                    });
                }
                Request::Audit { reply } => {
                    let summary =
                        match catch_unwind(AssertUnwindSafe(|| self.participant.balances())) {
                            Ok(s) => s,
                            Err(_) => {
                                self.metrics.panics.add(1);
                                None
                            }
                        };
                    let _ = reply.send(Reply::Audit {
                        service: self.service,
                        summary,
                    });
                }
                Request::Shutdown => break,
            }
        }
        if self.barrier.live() > 0 {
            tracing::warn!(service = %self.name, prepared = self.barrier.live(), "worker stopped with undecided transactions");
        }
    }

    fn step(&mut self, plan: &Plan, group: usize, step: Step) -> Answer {
        let tx = plan.tx;
        match step {
            Step::Prepare => self.prepare(plan, group),
            Step::OnePhase => match self.prepare(plan, group) {
                Answer::Yes if plan.claim_commit() => self.commit(tx),
                Answer::Yes => {
                    tracing::debug!(%tx, service = %self.name, "one-phase cancelled by the caller; rolling back");
                    match self.rollback(tx) {
                        Answer::Done => Answer::Cancelled,
                        other => other,
                    }
                }
                // A panic may have left something half-prepared.
                Answer::Panicked => {
                    self.rollback(tx);
                    Answer::Panicked
                }
                other => other,
            },
            Step::Commit => self.commit(tx),
            Step::Rollback => self.rollback(tx),
        }
    }

    fn prepare(&mut self, plan: &Plan, group: usize) -> Answer {
        let tx = plan.tx;
        match self.barrier.decide(tx, Phase::Prepare) {
            Decision::AlreadyDone => return Answer::Yes,
            Decision::RefuseLate => return Answer::LateRefused,
            Decision::Violation => return self.violation(tx, "prepare"),
            Decision::Call => {}
        }
        if plan.is_cancelled() {
            // The caller gave up before we started: refuse without calling,
            // and remember it so a duplicate prepare is refused too.
            self.barrier.rolled_back(tx);
            return Answer::LateRefused;
        }
        let ops = plan.operations(group);
        let participant = &mut self.participant;
        match catch_unwind(AssertUnwindSafe(|| participant.prepare(tx, &ops))) {
            Ok(Ok(prepared)) => {
                self.barrier.prepared_ok(tx, Some(prepared));
                tracing::trace!(%tx, service = %self.name, "prepared");
                Answer::Yes
            }
            Ok(Err(refusal)) => {
                self.barrier.rolled_back(tx);
                tracing::debug!(%tx, service = %self.name, %refusal, "prepare refused");
                Answer::No(refusal)
            }
            Err(_) => {
                self.metrics.panics.add(1);
                // It may have half-prepared: rollback must still be called.
                self.barrier.prepared_ok(tx, None);
                tracing::warn!(%tx, service = %self.name, "participant panicked in prepare");
                Answer::Panicked
            }
        }
    }

    fn commit(&mut self, tx: TxId) -> Answer {
        match self.barrier.decide(tx, Phase::Commit) {
            Decision::AlreadyDone => return Answer::Done,
            Decision::RefuseLate | Decision::Violation => return self.violation(tx, "commit"),
            Decision::Call => {}
        }
        let done = self.retrying(tx, "commit", |participant, barrier| {
            let prepared = barrier
                .prepared(tx)
                .expect("decide() checked the prepared value");
            participant.commit(tx, prepared)
        });
        if done {
            self.barrier.committed(tx);
            Answer::Done
        } else {
            Answer::Parked
        }
    }

    fn rollback(&mut self, tx: TxId) -> Answer {
        match self.barrier.decide(tx, Phase::Rollback) {
            Decision::AlreadyDone => return Answer::Done,
            Decision::RefuseLate | Decision::Violation => return self.violation(tx, "rollback"),
            Decision::Call => {}
        }
        if !self.barrier.holds(tx) {
            // Rollback before (or instead of) prepare: nothing to undo, but
            // remember it so a late prepare is refused.
            self.barrier.rolled_back(tx);
            return Answer::Done;
        }
        if self.retrying(tx, "rollback", |participant, _| participant.rollback(tx)) {
            self.barrier.rolled_back(tx);
            Answer::Done
        } else {
            Answer::Parked
        }
    }

    /// Calls `f` until it succeeds, with capped exponential backoff; false
    /// once `max_attempts` calls have failed.
    fn retrying(
        &mut self,
        tx: TxId,
        what: &'static str,
        mut f: impl FnMut(&mut Box<dyn Participant>, &Barrier<Prepared>) -> Result<(), crate::Failure>,
    ) -> bool {
        for attempt in 1..=self.retry.max_attempts.max(1) {
            let participant = &mut self.participant;
            let barrier = &self.barrier;
            let error = match catch_unwind(AssertUnwindSafe(|| f(participant, barrier))) {
                Ok(Ok(())) => return true,
                Ok(Err(failure)) => failure.message,
                Err(_) => {
                    self.metrics.panics.add(1);
                    "participant panicked".to_string()
                }
            };
            if attempt == self.retry.max_attempts.max(1) {
                break;
            }
            self.metrics.retries.add(1);
            let delay = self.retry.delay(attempt);
            tracing::warn!(%tx, service = %self.name, %error, attempt, ?delay, "{what} failed; retrying");
            std::thread::sleep(delay);
        }
        self.metrics.parked.add(1);
        tracing::error!(%tx, service = %self.name, attempts = self.retry.max_attempts, "{what} parked after exhausting retries");
        false
    }

    fn violation(&self, tx: TxId, what: &str) -> Answer {
        self.metrics.violations.add(1);
        tracing::error!(%tx, service = %self.name, "protocol violation: unexpected {what}");
        Answer::Violation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(50),
            max_attempts: 9,
        };
        let delays: Vec<u128> = (1..=8).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 50, 50, 50]);
        assert_eq!(p.delay(200), Duration::from_millis(50));
    }
}
