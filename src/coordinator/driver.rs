//! The thread driver of one transaction: executes what the protocol core
//! (`protocol::tx`) asks for — locks, log appends and waits, phase requests
//! to the workers (inline or queued), waits for votes and acknowledgements
//! with their deadlines — and reports each result back as an event. The
//! protocol's decisions and its durability rules live in the core; this
//! file only knows how to carry them out.

use std::sync::Arc;
use std::time::Instant;

use crate::sync::channel::{Receiver, Sender};
use smallvec::SmallVec;

use super::locks::LockSet;
use super::plan::Plan;
use super::worker::{Answer, Limit, PhaseDeadline, Reply, Step, Submitted};
use super::{Inner, replies, too_large, wait_any};
use crate::durable::{Records, codec};
use crate::error::{Error, Result};
use crate::metrics::Stage;
use crate::protocol::tx::{Action, Cause, Event, Setup, TxCore, Verdict, Vote};
use crate::txn::{AbortReason, Outcome};
use crate::wal::Lsn;

/// One transaction being driven: the core's state plus everything the
/// driver holds for it (locks, answers, reply channel, deadlines).
pub(super) struct Drive<'a, 'b> {
    inner: &'a Inner,
    plan: &'a Arc<Plan>,
    tracked: bool,
    /// A batch's pending commit records (see `batch.rs`).
    deferred: Option<&'b mut Records>,
    locks: Option<LockSet<'a>>,
    /// Each branch's answer to its prepare (kept for the commit record and
    /// for the abort reason).
    votes: SmallVec<[Option<Answer>; 4]>,
    channel: Option<(Sender<Reply>, Receiver<Reply>)>,
    vote_deadline: PhaseDeadline,
    ack_deadline: Option<Instant>,
    /// An abort reason the driver found (too large, the direct path).
    reason: Option<AbortReason>,
    /// The outcome as recorded.
    recorded: Option<Outcome>,
    /// A log failure, answered by `Fail`.
    error: Option<Error>,
    prepare_started: Option<Instant>,
    commit_started: Option<Instant>,
}

impl<'a, 'b> Drive<'a, 'b> {
    pub(super) fn new(
        inner: &'a Inner,
        plan: &'a Arc<Plan>,
        deadline: Limit,
        tracked: bool,
        deferred: Option<&'b mut Records>,
    ) -> Self {
        Drive {
            inner,
            plan,
            tracked,
            deferred,
            locks: None,
            votes: (0..plan.branches.len()).map(|_| None).collect(),
            channel: None,
            vote_deadline: PhaseDeadline::new(deadline, inner.config.call_timeout),
            ack_deadline: None,
            reason: None,
            recorded: None,
            error: None,
            prepare_started: None,
            commit_started: None,
        }
    }

    /// The transaction's deadline (read from the clock now if not yet).
    pub(super) fn deadline(&self) -> Instant {
        self.vote_deadline.limit()
    }

    /// Runs the transaction to its answer: the outcome, and the position it
    /// must be durable up to (already waited for, unless in a batch).
    pub(super) fn run(mut self, batch: bool) -> Result<(Outcome, Option<Lsn>)> {
        let inner = self.inner;
        let setup = Setup { logged: inner.journal.is_some(), batch, unordered: inner.touches_concurrent(self.plan) };
        let keepers =
            (0..self.plan.branches.len()).map(|b| inner.handles[usize::from(self.plan.service_of(b))].first().keeper);
        let mut core = TxCore::new(setup, keepers);
        let mut event = Event::Start;
        loop {
            let action = core.on(event);
            self.timing(action);
            event = match action {
                Action::Finish => return Ok(self.finish(&core)),
                Action::Fail => return Err(self.error.take().expect("the core fails only on a log failure")),
                Action::Record { lsn } => self.record(&core, lsn)?,
                action => self.execute(action),
            };
        }
    }

    /// The reply channel of this caller's thread (taken once, and only when
    /// a phase request goes out: the direct path needs none).
    fn channel(&mut self) -> &(Sender<Reply>, Receiver<Reply>) {
        self.channel.get_or_insert_with(replies)
    }

    fn execute(&mut self, action: Action) -> Event {
        let inner = self.inner;
        let plan = self.plan;
        match action {
            Action::Lock => self.lock(),
            Action::AppendBegin => {
                let journal = inner.journal.as_ref().expect("the core appends only with a log");
                let begin = inner.begin_entry(plan);
                if begin.bytes.len() as u64 + 40 > journal.max_record_bytes() {
                    self.reason =
                        Some(too_large("coordinator", "the begin record is larger than the log's largest record"));
                    return Event::TooLarge;
                }
                self.logged(journal.append(&begin))
            }
            Action::WaitDurable(lsn) => {
                // Timed as the log stage by `durable`.
                match inner.durable(Some(lsn)) {
                    Ok(()) => Event::Durable(lsn),
                    Err(error) => self.failed(error),
                }
            }
            Action::Prepare(branch) => self.ask(branch, Step::Prepare),
            Action::OnePhase => self.ask(0, Step::OnePhase),
            Action::AwaitVote => {
                let step = if self.one_phase() { Step::OnePhase } else { Step::Prepare };
                let until = self.vote_deadline.get();
                self.await_vote(step, until)
            }
            Action::Cancel => Event::Cancelled(plan.cancel()),
            Action::AwaitLateVote => {
                // The worker claimed the commit just as we gave up: give it
                // one more call timeout before reporting it pending.
                let event = self.await_vote(Step::OnePhase, Instant::now() + inner.config.call_timeout);
                if event == Event::VoteTimeout {
                    inner.metrics.timeouts.add(1);
                }
                event
            }
            Action::AppendCommit => self.append_commit(),
            Action::OweCommits => {
                inner.owe_commits(plan, &mut self.votes);
                Event::Done
            }
            Action::Commit { branch, after } => {
                let reply = self.channel().0.clone();
                match inner.submit(plan, branch, Step::Commit, &reply, None, after) {
                    Submitted::Inline(answer) => Event::Acked { branch, done: matches!(answer, Answer::Done) },
                    Submitted::Queued => Event::Queued,
                    Submitted::Full => {
                        // The worker is gone: only possible after an engine bug.
                        let service = inner.name(plan.service_of(branch));
                        tracing::error!(tx = %plan.tx, %service, "commit could not be delivered");
                        Event::Unsent
                    }
                }
            }
            Action::OweRollbacks => {
                inner.owe_rollbacks(plan);
                Event::Done
            }
            Action::Rollback(branch) => {
                // Enqueued or applied before the locks drop: FIFO makes it
                // visible to the next transaction; its answer is not awaited.
                let reply = self.channel().0.clone();
                inner.submit(plan, branch, Step::Rollback, &reply, None, None);
                Event::Done
            }
            Action::AwaitAck => {
                let until = *self.ack_deadline.get_or_insert_with(|| Instant::now() + inner.config.call_timeout);
                let replies = &self.channel().1;
                match wait_any(replies, plan.tx, Step::Commit, until) {
                    Some((branch, answer)) => {
                        let done = matches!(answer, Answer::Done);
                        if !done {
                            tracing::warn!(tx = %plan.tx, branch, ?answer, "commit not applied yet");
                        }
                        Event::Acked { branch: usize::from(branch), done }
                    }
                    None => {
                        inner.metrics.timeouts.add(1);
                        tracing::warn!(tx = %plan.tx, "commit acknowledgement timed out; redelivery continues");
                        Event::AckTimeout
                    }
                }
            }
            Action::Release => {
                // Every commit/rollback is enqueued or applied by now;
                // per-service FIFO makes it visible to the next holder.
                self.locks = None;
                Event::Done
            }
            Action::Record { .. } | Action::Finish | Action::Fail => unreachable!("handled by `run`"),
        }
    }

    fn one_phase(&self) -> bool {
        self.plan.branches.len() == 1 && self.inner.journal.is_none()
    }

    /// Takes the locks; with plain, idle ledgers, applies the plan directly.
    fn lock(&mut self) -> Event {
        let inner = self.inner;
        let plan = self.plan;
        let locked_at = plan.timed.then(Instant::now);
        let Some(locks) = inner.locks.acquire(&plan.stripes, || self.deadline()) else {
            tracing::warn!(tx = %plan.tx, "lock wait passed the transaction deadline");
            return Event::LockTimeout;
        };
        inner.timed(Stage::LockWait, locked_at);
        self.locks = Some(locks);
        if !inner.is_direct(std::iter::once(&**plan)) {
            return Event::Locked;
        }
        // Plain ledgers, idle: check and apply directly under the key locks
        // (see `batch.rs`); the commit record still precedes their release.
        let outcome = inner.apply_direct(plan);
        let lsn = match &inner.journal {
            Some(journal) if outcome == Outcome::Committed => {
                match inner.log_or_fail(journal.append(&inner.commit_entry(plan))) {
                    Ok(lsn) => Some(lsn),
                    Err(error) => {
                        // Applied in memory, not logged: fail-stop (nothing was
                        // answered; recovery starts from the log).
                        self.error = Some(error);
                        return Event::LogFailed;
                    }
                }
            }
            _ => None,
        };
        let committed = outcome == Outcome::Committed;
        if let Outcome::Aborted(reason) = outcome {
            self.reason = Some(reason);
        }
        Event::AppliedDirect { committed, lsn }
    }

    /// A phase request for `branch`; an inline answer is its vote.
    fn ask(&mut self, branch: usize, step: Step) -> Event {
        let reply = self.channel().0.clone();
        match self.inner.submit(self.plan, branch, step, &reply, Some(&self.vote_deadline), None) {
            Submitted::Inline(answer) => self.vote(branch, answer, step),
            Submitted::Queued => Event::Queued,
            Submitted::Full => Event::Unsent,
        }
    }

    fn await_vote(&mut self, step: Step, until: Instant) -> Event {
        let tx = self.plan.tx;
        match wait_any(&self.channel().1, tx, step, until) {
            Some((branch, answer)) => self.vote(usize::from(branch), answer, step),
            None => Event::VoteTimeout,
        }
    }

    /// Keeps the first answer of `branch` and reports its vote.
    fn vote(&mut self, branch: usize, answer: Answer, step: Step) -> Event {
        let vote = match (&answer, step) {
            (Answer::Yes(_), Step::Prepare) => Vote::Yes,
            (Answer::Done, Step::OnePhase) => Vote::Committed,
            (Answer::Parked, Step::OnePhase) => Vote::Pending,
            _ => Vote::No,
        };
        if let Some(slot @ None) = self.votes.get_mut(branch) {
            *slot = Some(answer);
        }
        Event::Voted { branch, vote }
    }

    /// The commit point: the decision is logged before any participant is
    /// told to commit.
    fn append_commit(&mut self) -> Event {
        let inner = self.inner;
        let journal = inner.journal.as_ref().expect("the core appends only with a log");
        match inner.commit_record(self.plan, &self.votes, journal) {
            Err(reason) => {
                self.reason = Some(reason);
                Event::TooLarge
            }
            // A batch of ledger-only transactions appends all its commit
            // records at once, before its locks drop (see `batch.rs`).
            Ok(record) if record.kind == codec::KIND_COMMIT && self.deferred.is_some() => {
                self.deferred.as_mut().expect("checked just above").push(&record);
                Event::Deferred
            }
            Ok(record) => {
                // Earlier transactions of the batch may have funded this
                // one: their records go first.
                if let Some(batch) = self.deferred.as_mut().filter(|b| !b.is_empty())
                    && let Err(error) = inner.log_or_fail(journal.append_batch(&std::mem::take(*batch)))
                {
                    return self.failed(error);
                }
                self.logged(journal.append(&record))
            }
        }
    }

    fn logged(&mut self, appended: Result<Lsn>) -> Event {
        match self.inner.log_or_fail(appended) {
            Ok(lsn) => Event::Appended(lsn),
            Err(error) => self.failed(error),
        }
    }

    fn failed(&mut self, error: Error) -> Event {
        self.error = Some(error);
        Event::LogFailed
    }

    /// Records the decision (see `Inner::decided`).
    fn record(&mut self, core: &TxCore, lsn: Option<Lsn>) -> Result<Event> {
        let outcome = match core.decision().expect("recorded once decided") {
            Verdict::Committed => Outcome::Committed,
            Verdict::Pending => Outcome::CommitPending,
            Verdict::Aborted(cause) => Outcome::Aborted(self.abort_reason(cause)?),
        };
        let event = match self.inner.decided(self.plan, &outcome, lsn, self.tracked) {
            Ok(lsn) => Event::Recorded(lsn),
            Err(error) => self.failed(error),
        };
        self.recorded = Some(outcome);
        Ok(event)
    }

    /// The reason of an abort (or the typed error of an account the
    /// participant does not know).
    fn abort_reason(&mut self, cause: Cause) -> Result<AbortReason> {
        let inner = self.inner;
        let plan = self.plan;
        match cause {
            Cause::Vote(branch) => {
                let answer = self.votes[branch].take().unwrap_or(Answer::Violation);
                inner.abort_reason(plan.service_of(branch), answer)
            }
            Cause::Timeout(branch) => {
                let service = inner.name(plan.service_of(branch));
                inner.metrics.timeouts.add(1);
                tracing::warn!(tx = %plan.tx, %service, "no vote in time; rolling back");
                Ok(AbortReason::PrepareTimeout { service })
            }
            Cause::LockTimeout => Ok(AbortReason::LockTimeout),
            Cause::TooLarge | Cause::Direct => Ok(self.reason.take().expect("the driver kept the reason")),
        }
    }

    fn finish(&mut self, core: &TxCore) -> (Outcome, Option<Lsn>) {
        let mut outcome = self.recorded.take().expect("finished once recorded");
        if core.verdict() == Some(Verdict::Pending) {
            outcome = Outcome::CommitPending;
        }
        if let Some(started) = self.commit_started.take() {
            self.inner.metrics.record(Stage::Commit, started.elapsed());
        }
        (outcome, core.answer_lsn())
    }

    /// Stage latencies of the sampled transactions: the prepare phase from
    /// the first phase request to the decision, the commit phase from the
    /// decision to the answer.
    fn timing(&mut self, action: Action) {
        if !self.plan.timed {
            return;
        }
        match action {
            Action::AppendBegin | Action::Prepare(0) | Action::OnePhase if self.prepare_started.is_none() => {
                self.prepare_started = Some(Instant::now());
            }
            Action::AppendBegin
            | Action::WaitDurable(_)
            | Action::Prepare(_)
            | Action::OnePhase
            | Action::AwaitVote
            | Action::Lock => {}
            _ => {
                if let Some(started) = self.prepare_started.take() {
                    let stage = if self.one_phase() { Stage::Commit } else { Stage::Prepare };
                    self.inner.metrics.record(stage, started.elapsed());
                }
                if matches!(action, Action::OweCommits | Action::Commit { branch: 0, .. })
                    && self.commit_started.is_none()
                {
                    self.commit_started = Some(Instant::now());
                }
            }
        }
    }
}
