//! One transaction's protocol, from its locks to its answer: a pure state
//! machine. [`TxCore::on`] takes what just happened ([`Event`]) and returns
//! the one thing to do next ([`Action`]); the driver does it and reports the
//! result as the next event, until [`Action::Finish`] or [`Action::Fail`].
//! Every action is answered by exactly one event (listed at each action).
//!
//! ```text
//!  Lock ─▶ [AppendBegin ─▶ WaitDurable]        (a log and an external branch)
//!       ─▶ Prepare × n ─▶ AwaitVote …          (stops at the first no)
//!       ─▶ all yes: [AppendCommit] ─▶ [OweCommits] ─▶ Commit × n
//!          else:    Cancel ─▶ [OweRollbacks] ─▶ Rollback × n
//!       ─▶ Record ─▶ [AwaitAck … if unordered] ─▶ Release ─▶ [WaitDurable] ─▶ [AwaitAck …] ─▶ Finish
//! ```
//!
//! One branch without a log runs one phase (`OnePhase`: the participant
//! prepares and commits in one call). A batch member starts with its locks
//! held and leaves the release and the durability wait to its batch. A
//! plan whose services are all idle built-in ledgers is applied by the driver
//! under its key locks ([`Event::AppliedDirect`]) instead of phase requests.
//!
//! The durability rules are checked here, where they are decided:
//! - a branch whose participant keeps its state outside the log
//!   ([`Keeper::Own`], [`Keeper::External`]) is told to commit only with the
//!   decision's log position to wait for (`Commit { after: Some(lsn) }`), and
//!   only after every vote was yes;
//! - with a log, a decision is answered ([`Action::Finish`]) only once its
//!   record is durable;
//! - when the commit record's append failed, the decision is unknown (the
//!   bytes may still reach the disk): only branches whose state the log
//!   rebuilds or that live in memory are rolled back; the others stay
//!   prepared for recovery to decide from what the log holds.

use smallvec::SmallVec;

use super::Keeper;
use crate::wal::Lsn;

/// How a transaction is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setup {
    /// The coordinator keeps a log (`Durability::Sync`).
    pub logged: bool,
    /// A member of a batch: it starts with the batch's locks held; the
    /// batch drops them and waits for durability once for all members.
    pub batch: bool,
    /// Some branch goes to a service with several lanes, which do not order
    /// conflicting transactions: a commit must be acknowledged before the
    /// locks drop.
    pub unordered: bool,
}

/// A participant's answer to a prepare (or to a one-phase call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vote {
    /// Prepared.
    Yes,
    /// Refused, failed, panicked, or anything but a yes.
    No,
    /// One phase: prepared and committed.
    Committed,
    /// One phase: prepared and decided, the commit not applied yet.
    Pending,
}

/// Why a transaction aborted; the driver turns it into an `AbortReason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// This branch voted no (the driver holds its answer).
    Vote(usize),
    /// This branch's vote did not come in time (or could not be asked).
    Timeout(usize),
    /// A record the decision needs is larger than the log takes.
    TooLarge,
    /// The locks did not come before the transaction's deadline.
    LockTimeout,
    /// The direct path refused a change (the driver holds the reason).
    Direct,
}

/// What a transaction came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Committed,
    /// Committed; some participant has not applied it yet.
    Pending,
    Aborted(Cause),
}

/// What happened: the answer to the previous [`Action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The first event.
    Start,
    /// [`Action::Lock`]: held; run the phases.
    Locked,
    /// [`Action::Lock`]: held, and the plan applied to idle built-in ledgers
    /// directly, its commit record (if any) appended at `lsn`.
    AppliedDirect { committed: bool, lsn: Option<Lsn> },
    /// [`Action::Lock`]: the deadline passed first. (A failed append of the
    /// direct path's record is `LogFailed`.)
    LockTimeout,
    /// [`Action::AppendBegin`], [`Action::AppendCommit`]: appended here.
    Appended(Lsn),
    /// [`Action::AppendCommit`] in a batch: a ledger-only commit record,
    /// kept for the batch's one append before its locks drop.
    Deferred,
    /// [`Action::AppendBegin`], [`Action::AppendCommit`]: the record is too
    /// large for the log; nothing was appended.
    TooLarge,
    /// An append or a durability wait failed (the log is fail-stop).
    LogFailed,
    /// [`Action::WaitDurable`]: the log is durable up to here.
    Durable(Lsn),
    /// A vote: inline for [`Action::Prepare`] / [`Action::OnePhase`], or
    /// from [`Action::AwaitVote`] / [`Action::AwaitLateVote`] (possibly a
    /// duplicate, or for a branch out of range: ignored).
    Voted { branch: usize, vote: Vote },
    /// [`Action::Prepare`], [`Action::OnePhase`], [`Action::Commit`]: in the
    /// worker's queue; the answer comes later.
    Queued,
    /// [`Action::Prepare`], [`Action::OnePhase`], [`Action::Commit`]: could
    /// not be delivered (queue full until the deadline, worker gone).
    Unsent,
    /// [`Action::AwaitVote`], [`Action::AwaitLateVote`]: the deadline passed.
    VoteTimeout,
    /// [`Action::Cancel`]: true if no worker had claimed the commit yet.
    Cancelled(bool),
    /// An acknowledgement: inline for [`Action::Commit`], or from
    /// [`Action::AwaitAck`] (stale ones are ignored); `done`: applied.
    Acked { branch: usize, done: bool },
    /// [`Action::AwaitAck`]: the call timeout passed.
    AckTimeout,
    /// [`Action::Record`]: recorded; the answer waits for `Some` position.
    Recorded(Option<Lsn>),
    /// [`Action::OweCommits`], [`Action::OweRollbacks`], [`Action::Rollback`],
    /// [`Action::Release`]: done.
    Done,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Take the locks (→ `Locked`, `AppliedDirect`, `LockTimeout`).
    Lock,
    /// Append the begin record: the external branches with their requests
    /// (→ `Appended`, `TooLarge`, `LogFailed`).
    AppendBegin,
    /// Wait until the log is durable up to here (→ `Durable`, `LogFailed`).
    WaitDurable(Lsn),
    /// Ask this branch to prepare (→ `Voted`, `Queued`, `Unsent`).
    Prepare(usize),
    /// Ask the only branch to prepare and commit (→ `Voted`, `Queued`, `Unsent`).
    OnePhase,
    /// Wait for the next vote until the vote deadline (→ `Voted`, `VoteTimeout`).
    AwaitVote,
    /// Tell workers that have not started to skip the prepare (→ `Cancelled`).
    Cancel,
    /// One phase: the worker claimed the commit as the caller gave up; wait
    /// one more call timeout (→ `Voted`, `VoteTimeout`).
    AwaitLateVote,
    /// Append the commit record: every ledger change and every other branch
    /// with its prepared value (→ `Appended`, `Deferred`, `TooLarge`, `LogFailed`).
    AppendCommit,
    /// Track the commits owed by branches outside the log until each one
    /// acknowledges (→ `Done`).
    OweCommits,
    /// Tell this branch to commit; `after`: only once the log is durable up
    /// to there (→ `Acked`, `Queued`, `Unsent`).
    Commit { branch: usize, after: Option<Lsn> },
    /// Track the rollbacks owed by external branches (→ `Done`).
    OweRollbacks,
    /// Tell this branch to roll back, not waiting for it (→ `Done`).
    Rollback(usize),
    /// Record the decision ([`TxCore::decision`]) for a resubmission (and
    /// log an abort of a caller-chosen id); `lsn`: the decision's record, if
    /// any (→ `Recorded`, `LogFailed`).
    Record { lsn: Option<Lsn> },
    /// Wait for the next acknowledgement of a queued commit, up to the call
    /// timeout from the first wait (→ `Acked`, `AckTimeout`).
    AwaitAck,
    /// Drop the locks (→ `Done`).
    Release,
    /// Answer the caller with [`TxCore::verdict`] (a batch member: after the
    /// batch waited for [`TxCore::answer_lsn`]). Terminal.
    Finish,
    /// The log failed: answer the error. Terminal.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    New,
    Locking,
    Begin,
    BeginSync(Lsn),
    Prepare,
    Votes,
    OnePhaseCancel,
    LateVote,
    Decide,
    OweCommits,
    Commits,
    AbortCancel,
    OweRollbacks,
    Rollbacks,
    Record,
    EarlyAcks,
    Release,
    Sync(Lsn),
    Acks,
    Finished,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Commit,
    /// One phase: decided by the participant, not applied yet.
    Pending,
    Abort(Cause),
}

/// One transaction's protocol state (see the module docs).
#[derive(Debug)]
pub(crate) struct TxCore {
    setup: Setup,
    keepers: SmallVec<[Keeper; 4]>,
    stage: Stage,
    /// Prepares asked so far (the next branch to ask).
    asked: usize,
    /// Commits or rollbacks sent so far.
    sent: usize,
    votes: SmallVec<[Option<Vote>; 4]>,
    /// Prepares queued and not answered yet.
    queued: usize,
    decision: Option<Decision>,
    /// The decision's record.
    lsn: Option<Lsn>,
    /// The position the answer waits for (from `Recorded`).
    answer_lsn: Option<Lsn>,
    /// The log is known durable up to here.
    durable: Lsn,
    /// Branches whose commit is queued and not acknowledged yet.
    acks: SmallVec<[usize; 4]>,
    /// Some commit is not applied yet.
    pending: bool,
    locked: bool,
    /// The commit record's append failed: the decision is unknown.
    unknown: bool,
    /// Testing aid (the simulation's broken variants): skip one rule.
    #[cfg(test)]
    pub(crate) broken: Option<Broken>,
}

/// Rules a deliberately broken core skips, to show the simulation's checks
/// catch each one.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Broken {
    /// Commits to every branch without waiting for the decision to be durable.
    CommitBeforeDurable,
    /// Answers before the decision's record is durable.
    AnswerBeforeDurable,
    /// Skips the begin record of external branches.
    NoBeginRecord,
}

impl TxCore {
    /// A transaction over branches kept as `keepers` (at least one).
    pub(crate) fn new(setup: Setup, keepers: impl IntoIterator<Item = Keeper>) -> Self {
        let keepers: SmallVec<[Keeper; 4]> = keepers.into_iter().collect();
        assert!(!keepers.is_empty(), "a transaction has at least one branch");
        let votes = keepers.iter().map(|_| None).collect();
        TxCore {
            setup,
            keepers,
            stage: Stage::New,
            asked: 0,
            sent: 0,
            votes,
            queued: 0,
            decision: None,
            lsn: None,
            answer_lsn: None,
            durable: Lsn(0),
            acks: SmallVec::new(),
            pending: false,
            locked: false,
            unknown: false,
            #[cfg(test)]
            broken: None,
        }
    }

    /// The decision as recorded for a resubmission (`Pending` only for a
    /// one-phase commit the participant has not applied). `None` before
    /// [`Action::Record`].
    pub(crate) fn decision(&self) -> Option<Verdict> {
        self.decision.map(|d| match d {
            Decision::Commit => Verdict::Committed,
            Decision::Pending => Verdict::Pending,
            Decision::Abort(cause) => Verdict::Aborted(cause),
        })
    }

    /// The answer: the decision, `Pending` if a commit is not acknowledged.
    pub(crate) fn verdict(&self) -> Option<Verdict> {
        match self.decision()? {
            Verdict::Committed if self.pending => Some(Verdict::Pending),
            verdict => Some(verdict),
        }
    }

    /// The position the answer must be durable up to (after `Record`).
    pub(crate) fn answer_lsn(&self) -> Option<Lsn> {
        self.answer_lsn
    }

    fn branches(&self) -> usize {
        self.keepers.len()
    }

    fn one_phase(&self) -> bool {
        self.branches() == 1 && !self.setup.logged
    }

    /// Takes what happened, returns what to do next.
    pub(crate) fn on(&mut self, event: Event) -> Action {
        use Event as E;
        match (self.stage, event) {
            (Stage::New, E::Start) if self.setup.batch => {
                self.locked = true;
                self.begin()
            }
            (Stage::New, E::Start) => self.go(Stage::Locking, Action::Lock),
            (Stage::Locking, E::Locked) => {
                self.locked = true;
                self.begin()
            }
            (Stage::Locking, E::AppliedDirect { committed, lsn }) => {
                assert!(self.keepers.iter().all(|&k| k == Keeper::Log), "the direct path takes built-in ledgers only");
                self.locked = true;
                self.lsn = lsn;
                self.decision = Some(if committed { Decision::Commit } else { Decision::Abort(Cause::Direct) });
                self.record()
            }
            (Stage::Locking, E::LockTimeout) => {
                self.decision = Some(Decision::Abort(Cause::LockTimeout));
                self.record()
            }
            (Stage::Begin, E::Appended(lsn)) => self.go(Stage::BeginSync(lsn), Action::WaitDurable(lsn)),
            (Stage::Begin, E::TooLarge) => self.abort(Cause::TooLarge),
            (Stage::BeginSync(lsn), E::Durable(at)) => {
                assert!(at >= lsn, "durable {at} before the begin record at {lsn}");
                self.durable = self.durable.max(at);
                self.ask_next()
            }
            (Stage::Prepare, E::Voted { branch, vote }) => {
                assert_eq!(branch + 1, self.asked, "an inline vote answers the last prepare");
                self.voted(branch, vote)
            }
            (Stage::Prepare, E::Queued) => {
                self.queued += 1;
                self.ask_next()
            }
            (Stage::Prepare, E::Unsent) if self.one_phase() => self.go(Stage::OnePhaseCancel, Action::Cancel),
            (Stage::Prepare, E::Unsent) => self.abort(Cause::Timeout(self.asked - 1)),
            (Stage::Votes, E::Voted { branch, vote }) => {
                if branch >= self.branches() || self.votes[branch].is_some() {
                    return Action::AwaitVote; // a duplicate delivery's second answer
                }
                self.queued -= 1;
                self.voted(branch, vote)
            }
            (Stage::Votes, E::VoteTimeout) if self.one_phase() => self.go(Stage::OnePhaseCancel, Action::Cancel),
            (Stage::Votes, E::VoteTimeout) => {
                let silent = self.votes.iter().position(Option::is_none).unwrap_or(0);
                self.abort(Cause::Timeout(silent))
            }
            (Stage::OnePhaseCancel, E::Cancelled(true)) => {
                // The worker will refuse the prepare (or roll back its yes).
                self.decision = Some(Decision::Abort(Cause::Timeout(0)));
                self.record()
            }
            (Stage::OnePhaseCancel, E::Cancelled(false)) => self.go(Stage::LateVote, Action::AwaitLateVote),
            (Stage::LateVote, E::Voted { branch: 0, vote }) => self.voted(0, vote),
            (Stage::LateVote, E::Voted { .. }) => Action::AwaitLateVote,
            (Stage::LateVote, E::VoteTimeout) => {
                // The worker claimed the commit: decided, not known applied.
                self.decision = Some(Decision::Pending);
                self.record()
            }
            (Stage::Decide, E::Appended(lsn)) => {
                self.lsn = Some(lsn);
                self.committing()
            }
            (Stage::Decide, E::Deferred) => {
                assert!(
                    self.setup.batch && self.keepers.iter().all(|&k| k == Keeper::Log),
                    "only a batch defers a commit record, and only one of ledgers"
                );
                self.committing()
            }
            (Stage::Decide, E::TooLarge) => {
                self.decision = None;
                self.abort(Cause::TooLarge)
            }
            (Stage::Decide, E::LogFailed) => {
                // The record may reach the disk all the same: leave what
                // outlives a crash prepared for recovery to decide.
                self.decision = None;
                self.unknown = true;
                self.abort(Cause::TooLarge)
            }
            (Stage::OweCommits, E::Done) => self.commit_next(),
            (Stage::Commits, E::Acked { branch, done }) => {
                assert_eq!(branch + 1, self.sent, "an inline acknowledgement answers the last commit");
                self.pending |= !done;
                self.commit_next()
            }
            (Stage::Commits, E::Queued) => {
                self.acks.push(self.sent - 1);
                self.commit_next()
            }
            (Stage::Commits, E::Unsent) => {
                self.pending = true;
                self.commit_next()
            }
            (Stage::AbortCancel, E::Cancelled(_)) => {
                if self.setup.logged && !self.unknown && self.keepers.contains(&Keeper::External) {
                    self.go(Stage::OweRollbacks, Action::OweRollbacks)
                } else {
                    self.rollback_next()
                }
            }
            (Stage::OweRollbacks | Stage::Rollbacks, E::Done) => self.rollback_next(),
            (Stage::Record, E::Recorded(lsn)) => {
                self.answer_lsn = lsn;
                if self.setup.batch {
                    return self.await_acks(Stage::Acks);
                }
                if self.setup.unordered {
                    // The next holder of these locks must find the commit
                    // applied, not just queued.
                    return self.await_acks(Stage::EarlyAcks);
                }
                self.release()
            }
            (Stage::EarlyAcks | Stage::Acks, E::Acked { branch, done }) => {
                if let Some(at) = self.acks.iter().position(|&b| b == branch) {
                    self.acks.swap_remove(at);
                    self.pending |= !done;
                }
                self.await_acks(self.stage)
            }
            (Stage::EarlyAcks | Stage::Acks, E::AckTimeout) => {
                self.pending = true;
                self.acks.clear();
                self.await_acks(self.stage)
            }
            (Stage::Release, E::Done) => {
                self.locked = false;
                self.sync()
            }
            (Stage::Sync(lsn), E::Durable(at)) => {
                assert!(at >= lsn, "durable {at} before the decision at {lsn}");
                self.durable = self.durable.max(at);
                self.await_acks(Stage::Acks)
            }
            // Nothing is decided yet, or the decision is recorded: the
            // answer is the log's error (fail-stop).
            (Stage::Locking | Stage::Begin | Stage::BeginSync(_) | Stage::Record | Stage::Sync(_), E::LogFailed) => {
                self.go(Stage::Failed, Action::Fail)
            }
            (stage, event) => panic!("protocol core: event {event:?} in stage {stage:?}"),
        }
    }

    fn go(&mut self, stage: Stage, action: Action) -> Action {
        self.stage = stage;
        action
    }

    /// Locks held: the begin record if external branches need one, then
    /// the prepares.
    fn begin(&mut self) -> Action {
        let skip = {
            #[cfg(test)]
            {
                self.broken == Some(Broken::NoBeginRecord)
            }
            #[cfg(not(test))]
            false
        };
        if self.setup.logged && !skip && self.keepers.contains(&Keeper::External) {
            return self.go(Stage::Begin, Action::AppendBegin);
        }
        self.ask_next()
    }

    fn ask_next(&mut self) -> Action {
        if self.asked < self.branches() {
            self.asked += 1;
            let action = if self.one_phase() { Action::OnePhase } else { Action::Prepare(self.asked - 1) };
            return self.go(Stage::Prepare, action);
        }
        if self.queued > 0 {
            return self.go(Stage::Votes, Action::AwaitVote);
        }
        debug_assert!(self.votes.iter().all(|v| *v == Some(Vote::Yes)));
        self.decide_commit()
    }

    fn voted(&mut self, branch: usize, vote: Vote) -> Action {
        self.votes[branch] = Some(vote);
        if self.one_phase() {
            self.decision = Some(match vote {
                Vote::Committed => Decision::Commit,
                Vote::Pending => Decision::Pending,
                // A yes is not an answer one phase gives: a violation.
                Vote::Yes | Vote::No => Decision::Abort(Cause::Vote(0)),
            });
            return self.record();
        }
        match vote {
            // One no is enough: the rest are not asked.
            Vote::No | Vote::Committed | Vote::Pending => self.abort(Cause::Vote(branch)),
            Vote::Yes => self.ask_next(),
        }
    }

    /// Every vote is yes: the commit point.
    fn decide_commit(&mut self) -> Action {
        assert!(self.votes.iter().all(|v| *v == Some(Vote::Yes)), "commit without every vote yes");
        self.decision = Some(Decision::Commit);
        if self.setup.logged {
            return self.go(Stage::Decide, Action::AppendCommit);
        }
        self.committing()
    }

    fn committing(&mut self) -> Action {
        self.sent = 0;
        if self.setup.logged && self.keepers.iter().any(|k| *k != Keeper::Log) {
            return self.go(Stage::OweCommits, Action::OweCommits);
        }
        self.commit_next()
    }

    fn commit_next(&mut self) -> Action {
        if self.sent == self.branches() {
            return self.record();
        }
        let branch = self.sent;
        self.sent += 1;
        let early = self.keepers[branch].early_commit();
        #[cfg(test)]
        let early = early || self.broken == Some(Broken::CommitBeforeDurable);
        let after = if early { None } else { self.lsn };
        // The rule that keeps a participant with its own storage atomic
        // with the rest: it hears "commit" only with a durable decision to
        // wait for.
        assert!(
            early || !self.setup.logged || after.is_some(),
            "commit to a {:?} branch without the decision's position",
            self.keepers[branch]
        );
        self.go(Stage::Commits, Action::Commit { branch, after })
    }

    fn abort(&mut self, cause: Cause) -> Action {
        debug_assert!(self.decision.is_none(), "decided twice");
        self.decision = Some(Decision::Abort(cause));
        if self.asked == 0 {
            return self.record(); // nothing was asked: nothing to undo
        }
        self.sent = 0;
        self.go(Stage::AbortCancel, Action::Cancel)
    }

    fn rollback_next(&mut self) -> Action {
        while self.sent < self.branches() {
            let branch = self.sent;
            self.sent += 1;
            if self.unknown && !self.keepers[branch].early_commit() {
                continue; // left prepared: recovery decides from the log
            }
            return self.go(Stage::Rollbacks, Action::Rollback(branch));
        }
        if self.unknown {
            return self.go(Stage::Failed, Action::Fail);
        }
        self.record()
    }

    fn record(&mut self) -> Action {
        self.go(Stage::Record, Action::Record { lsn: self.lsn })
    }

    /// Waits for queued commits' acknowledgements (commits only), then goes
    /// on from `stage`: `EarlyAcks` releases, `Acks` finishes.
    fn await_acks(&mut self, stage: Stage) -> Action {
        if self.decision == Some(Decision::Commit) && !self.acks.is_empty() {
            return self.go(stage, Action::AwaitAck);
        }
        match stage {
            Stage::EarlyAcks => self.release(),
            _ => self.finish(),
        }
    }

    fn release(&mut self) -> Action {
        if self.locked {
            return self.go(Stage::Release, Action::Release);
        }
        self.sync()
    }

    fn sync(&mut self) -> Action {
        #[cfg(test)]
        if self.broken == Some(Broken::AnswerBeforeDurable) {
            return self.await_acks(Stage::Acks);
        }
        match self.answer_lsn {
            Some(lsn) if self.durable < lsn => self.go(Stage::Sync(lsn), Action::WaitDurable(lsn)),
            _ => self.await_acks(Stage::Acks),
        }
    }

    fn finish(&mut self) -> Action {
        #[cfg(test)]
        let skip = self.broken == Some(Broken::AnswerBeforeDurable);
        #[cfg(not(test))]
        let skip = false;
        // No outcome before its record is durable (a batch waits for all).
        assert!(
            skip || self.setup.batch || self.answer_lsn.is_none_or(|lsn| self.durable >= lsn),
            "answer before the decision is durable"
        );
        assert!(self.setup.batch || !self.locked, "answer with the locks held");
        self.go(Stage::Finished, Action::Finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(core: &mut TxCore, script: &[Event]) -> Vec<Action> {
        let mut actions = vec![core.on(Event::Start)];
        for &event in script {
            actions.push(core.on(event));
        }
        actions
    }

    const LOGGED: Setup = Setup { logged: true, batch: false, unordered: false };

    #[test]
    fn an_external_branch_is_logged_before_it_is_asked_and_commits_after_the_decision() {
        let mut core = TxCore::new(LOGGED, [Keeper::Log, Keeper::External]);
        let actions = run(
            &mut core,
            &[
                Event::Locked,
                Event::Appended(Lsn(100)),
                Event::Durable(Lsn(100)),
                Event::Voted { branch: 0, vote: Vote::Yes },
                Event::Queued,
                Event::Voted { branch: 1, vote: Vote::Yes },
                Event::Appended(Lsn(200)),
                Event::Done,
                Event::Acked { branch: 0, done: true },
                Event::Queued,
                Event::Recorded(Some(Lsn(200))),
                Event::Done,
                Event::Durable(Lsn(200)),
                Event::Acked { branch: 1, done: true },
            ],
        );
        use Action as A;
        assert_eq!(
            actions,
            [
                A::Lock,
                A::AppendBegin,
                A::WaitDurable(Lsn(100)),
                A::Prepare(0),
                A::Prepare(1),
                A::AwaitVote,
                A::AppendCommit,
                A::OweCommits,
                A::Commit { branch: 0, after: None },
                A::Commit { branch: 1, after: Some(Lsn(200)) },
                A::Record { lsn: Some(Lsn(200)) },
                A::Release,
                A::WaitDurable(Lsn(200)),
                A::AwaitAck,
                A::Finish,
            ]
        );
        assert_eq!(core.verdict(), Some(Verdict::Committed));
    }

    #[test]
    fn a_no_stops_the_prepares_and_rolls_back_everyone() {
        let mut core = TxCore::new(LOGGED, [Keeper::Log, Keeper::Own, Keeper::Own]);
        let actions = run(
            &mut core,
            &[
                Event::Locked,
                Event::Voted { branch: 0, vote: Vote::Yes },
                Event::Voted { branch: 1, vote: Vote::No },
                Event::Cancelled(true),
                Event::Done,
                Event::Done,
                Event::Done,
                Event::Recorded(None),
                Event::Done,
            ],
        );
        use Action as A;
        assert_eq!(
            actions,
            [
                A::Lock,
                A::Prepare(0),
                A::Prepare(1),
                A::Cancel,
                A::Rollback(0),
                A::Rollback(1),
                A::Rollback(2),
                A::Record { lsn: None },
                A::Release,
                A::Finish
            ]
        );
        assert_eq!(core.verdict(), Some(Verdict::Aborted(Cause::Vote(1))));
    }

    #[test]
    fn a_failed_commit_append_leaves_what_outlives_a_crash_prepared() {
        let mut core = TxCore::new(LOGGED, [Keeper::Log, Keeper::Own, Keeper::External, Keeper::Memory]);
        let mut actions = run(&mut core, &[Event::Locked, Event::Appended(Lsn(1)), Event::Durable(Lsn(1))]);
        for branch in 0..4 {
            actions.push(core.on(Event::Voted { branch, vote: Vote::Yes }));
        }
        actions.push(core.on(Event::LogFailed));
        actions.push(core.on(Event::Cancelled(true)));
        actions.push(core.on(Event::Done));
        actions.push(core.on(Event::Done));
        assert_eq!(
            &actions[actions.len() - 4..],
            [Action::Cancel, Action::Rollback(0), Action::Rollback(3), Action::Fail]
        );
    }

    #[test]
    fn one_phase_without_a_log_and_its_late_claim() {
        let setup = Setup { logged: false, batch: false, unordered: false };
        let mut core = TxCore::new(setup, [Keeper::Memory]);
        let actions = run(
            &mut core,
            &[Event::Locked, Event::Queued, Event::VoteTimeout, Event::Cancelled(false), Event::VoteTimeout],
        );
        assert_eq!(
            actions,
            [
                Action::Lock,
                Action::OnePhase,
                Action::AwaitVote,
                Action::Cancel,
                Action::AwaitLateVote,
                Action::Record { lsn: None }
            ]
        );
        assert_eq!(core.decision(), Some(Verdict::Pending));
    }

    #[test]
    fn an_unordered_service_is_acknowledged_before_the_locks_drop() {
        let setup = Setup { logged: false, batch: false, unordered: true };
        let mut core = TxCore::new(setup, [Keeper::Memory, Keeper::Memory]);
        let actions = run(
            &mut core,
            &[
                Event::Locked,
                Event::Voted { branch: 0, vote: Vote::Yes },
                Event::Voted { branch: 1, vote: Vote::Yes },
                Event::Queued,
                Event::Queued,
                Event::Recorded(None),
                Event::Acked { branch: 1, done: true },
                Event::AckTimeout,
                Event::Done,
            ],
        );
        assert_eq!(
            &actions[5..],
            [Action::Record { lsn: None }, Action::AwaitAck, Action::AwaitAck, Action::Release, Action::Finish]
        );
        assert_eq!(core.verdict(), Some(Verdict::Pending));
    }

    #[test]
    #[should_panic(expected = "answer before the decision is durable")]
    fn answering_before_durable_is_refused() {
        let mut core = TxCore::new(LOGGED, [Keeper::Log]);
        core.on(Event::Start);
        core.on(Event::Locked);
        core.on(Event::Voted { branch: 0, vote: Vote::Yes });
        core.on(Event::Appended(Lsn(9)));
        core.on(Event::Acked { branch: 0, done: true });
        core.on(Event::Recorded(Some(Lsn(9))));
        core.on(Event::Done);
        // The driver claims a durability it was not asked for.
        core.stage = Stage::Sync(Lsn(9));
        core.answer_lsn = Some(Lsn(9));
        core.finish();
    }
}
