//! Deterministic simulation of the protocol core: the real [`TxCore`] and
//! the real recovery rules, driven by a seeded scheduler against a model of
//! participants (each kind of [`Keeper`]) and of a log that syncs, fails and
//! crashes (an unsynced tail survives only as a prefix of random length).
//!
//! The scheduler interleaves many transactions and, at every step, picks at
//! random: start a transaction, let a participant handle a queued request
//! (in any order across transactions, a commit only once the log is
//! durable up to its `after`), deliver a reply (reordered, duplicated or
//! dropped), fire a vote or acknowledgement timeout, sync the log, fail the
//! log (an append may fail after its bytes landed), or crash and recover.
//!
//! Checked: while it runs, a participant with its own storage commits only
//! a durable decision, no answer precedes its durable record, no commit
//! reaches an unprepared branch, no rollback a committed one; at the end,
//! after every queue drained and a last crash and recovery: each
//! transaction committed everywhere or nowhere (memory-only branches apart,
//! which a crash loses by design), nothing is left prepared at a
//! participant with storage, every answered commit is committed and every
//! answered abort committed nowhere. `broken_variants_are_caught` runs a
//! deliberately broken core for each rule and requires the checks to fail.
//!
//! `DTC_PROTOCOL_SIM_SEEDS=<n>` runs n seeds (default 2000).

use hashbrown::{HashMap, HashSet};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::Keeper;
use super::recovery::{self, Deliver};
use super::tx::{Action, Broken, Event, Setup, TxCore, Verdict, Vote};
use crate::wal::Lsn;

const KEEPERS: [Keeper; 4] = [Keeper::Log, Keeper::Memory, Keeper::Own, Keeper::External];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Prepared,
    Committed,
    RolledBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rec {
    Begin(usize),
    Commit(usize),
    Abort(usize),
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Req {
    Prepare { tx: usize, branch: usize },
    Commit { tx: usize, branch: usize, after: Option<Lsn> },
    Rollback { tx: usize, branch: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Vote { tx: usize, branch: usize, yes: bool },
    Ack { tx: usize, branch: usize },
}

struct Spec {
    keepers: Vec<Keeper>,
    yes: Vec<bool>,
    /// Crashes seen since it started (memory-only branches are lost then).
    epoch: u64,
}

/// A transaction in flight: its core and what it waits for.
struct Live {
    core: TxCore,
    waiting: Action,
    cancelled: bool,
}

#[derive(Debug, Default)]
struct Stats {
    committed: u64,
    aborted: u64,
    failed: u64,
    crashes: u64,
    log_failures: u64,
    duplicates: u64,
    dropped: u64,
    timeouts: u64,
}

struct Sim {
    rng: SmallRng,
    logged: bool,
    broken: Option<Broken>,
    specs: Vec<Spec>,
    live: HashMap<usize, Live>,
    /// Participants' branch states.
    state: HashMap<(usize, usize), State>,
    log: Vec<Rec>,
    /// Records durable (a prefix of `log`).
    durable: usize,
    log_failed: bool,
    reqs: Vec<Req>,
    msgs: Vec<Msg>,
    /// Decided transactions' branches that have not applied the decision
    /// (their last one appends `Done`).
    owed: HashMap<usize, HashSet<usize>>,
    answers: HashMap<usize, Verdict>,
    epoch: u64,
    /// Check the rules as they happen, not only the end state.
    immediate: bool,
    violations: Vec<String>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, broken: Option<Broken>, immediate: bool) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let logged = rng.random_bool(0.8);
        Sim {
            rng,
            logged,
            broken,
            specs: Vec::new(),
            live: HashMap::new(),
            state: HashMap::new(),
            log: Vec::new(),
            durable: 0,
            log_failed: false,
            reqs: Vec::new(),
            msgs: Vec::new(),
            owed: HashMap::new(),
            answers: HashMap::new(),
            epoch: 0,
            immediate,
            violations: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    fn position(&self, rec: Rec) -> Option<usize> {
        self.log.iter().position(|r| *r == rec)
    }

    fn durable_commit(&self, tx: usize) -> bool {
        self.position(Rec::Commit(tx)).is_some_and(|at| at < self.durable)
    }

    fn append(&mut self, rec: Rec) -> Event {
        if self.log_failed {
            return Event::LogFailed;
        }
        if self.rng.random_bool(0.01) {
            // A failed write whose bytes may land all the same.
            self.log_failed = true;
            self.stats.log_failures += 1;
            if self.rng.random_bool(0.5) {
                self.log.push(rec);
            }
            return Event::LogFailed;
        }
        self.log.push(rec);
        Event::Appended(Lsn(self.log.len() as u64))
    }

    fn start(&mut self) {
        let tx = self.specs.len();
        let n = self.rng.random_range(1..=3);
        let keepers: Vec<Keeper> = (0..n).map(|_| KEEPERS[self.rng.random_range(0..KEEPERS.len())]).collect();
        let yes = (0..n).map(|_| self.rng.random_bool(0.85)).collect();
        self.specs.push(Spec { keepers: keepers.clone(), yes, epoch: self.epoch });
        let setup = Setup { logged: self.logged, batch: false, unordered: self.rng.random_bool(0.3) };
        let mut core = TxCore::new(setup, keepers);
        core.broken = self.broken;
        let action = core.on(Event::Start);
        self.live.insert(tx, Live { core, waiting: action, cancelled: false });
        self.run(tx, None);
    }

    /// Feeds `event` (if any) and executes actions until the transaction
    /// waits or ends.
    fn run(&mut self, tx: usize, event: Option<Event>) {
        let mut event = event;
        loop {
            let Some(live) = self.live.get_mut(&tx) else { return };
            let action = match event.take() {
                Some(event) => live.core.on(event),
                None => live.waiting,
            };
            live.waiting = action;
            let next = match action {
                Action::AwaitVote | Action::AwaitLateVote | Action::AwaitAck => return,
                Action::WaitDurable(lsn) => {
                    if self.log_failed {
                        Event::LogFailed
                    } else if self.durable as u64 >= lsn.0 {
                        Event::Durable(Lsn(self.durable as u64))
                    } else {
                        return;
                    }
                }
                Action::Finish => {
                    let live = self.live.remove(&tx).expect("live");
                    let verdict = live.core.verdict().expect("finished with a verdict");
                    if let Some(lsn) = live.core.answer_lsn()
                        && self.immediate
                        && (self.durable as u64) < lsn.0
                    {
                        self.violation(format!("tx {tx}: answered {verdict:?} before its record was durable"));
                    }
                    match verdict {
                        Verdict::Aborted(_) => self.stats.aborted += 1,
                        _ => self.stats.committed += 1,
                    }
                    self.answers.insert(tx, verdict);
                    return;
                }
                Action::Fail => {
                    self.live.remove(&tx);
                    self.stats.failed += 1;
                    return;
                }
                action => self.execute(tx, action),
            };
            event = Some(next);
        }
    }

    fn execute(&mut self, tx: usize, action: Action) -> Event {
        match action {
            Action::Lock if self.rng.random_bool(0.02) => Event::LockTimeout,
            Action::Lock if self.specs[tx].keepers.iter().all(|&k| k == Keeper::Log) && self.rng.random_bool(0.3) => {
                // The direct path: the coordinator's own ledgers, checked
                // and applied under the key locks.
                if !self.specs[tx].yes.iter().all(|&y| y) {
                    return Event::AppliedDirect { committed: false, lsn: None };
                }
                for branch in 0..self.specs[tx].keepers.len() {
                    self.state.insert((tx, branch), State::Committed);
                }
                match self.logged.then(|| self.append(Rec::Commit(tx))) {
                    None => Event::AppliedDirect { committed: true, lsn: None },
                    Some(Event::Appended(lsn)) => Event::AppliedDirect { committed: true, lsn: Some(lsn) },
                    Some(other) => other,
                }
            }
            Action::Lock => Event::Locked,
            Action::AppendBegin if self.rng.random_bool(0.02) => Event::TooLarge,
            Action::AppendBegin => self.append(Rec::Begin(tx)),
            Action::AppendCommit if self.rng.random_bool(0.02) => Event::TooLarge,
            Action::AppendCommit => self.append(Rec::Commit(tx)),
            Action::Prepare(branch) | Action::Commit { branch, .. } | Action::Rollback(branch) => {
                self.request(tx, action, branch)
            }
            Action::OnePhase => self.request(tx, action, 0),
            Action::Cancel => {
                // One phase: the worker may have just claimed the queued
                // call (it commits and answers later).
                let queued = self.reqs.iter().position(|r| *r == Req::Prepare { tx, branch: 0 });
                let one_phase = self.specs[tx].keepers.len() == 1 && !self.logged;
                if one_phase && self.state.get(&(tx, 0)) == Some(&State::Committed) {
                    return Event::Cancelled(false); // claimed and committed already
                }
                if let Some(at) = queued.filter(|_| one_phase && self.specs[tx].yes[0] && self.rng.random_bool(0.3)) {
                    self.reqs.swap_remove(at);
                    let reply = self.handle(Req::Prepare { tx, branch: 0 }, 1);
                    self.msgs.extend(reply);
                    return Event::Cancelled(false);
                }
                self.live.get_mut(&tx).expect("live").cancelled = true;
                Event::Cancelled(true)
            }
            Action::OweCommits => {
                let owed = (0..self.specs[tx].keepers.len()).filter(|&b| self.specs[tx].keepers[b] != Keeper::Log);
                let owed: HashSet<usize> =
                    owed.filter(|&b| self.state.get(&(tx, b)) != Some(&State::Committed)).collect();
                self.owe(tx, owed);
                Event::Done
            }
            Action::OweRollbacks => {
                let owed = (0..self.specs[tx].keepers.len()).filter(|&b| self.specs[tx].keepers[b] == Keeper::External);
                let owed: HashSet<usize> =
                    owed.filter(|&b| self.state.get(&(tx, b)) != Some(&State::RolledBack)).collect();
                self.owe(tx, owed);
                Event::Done
            }
            Action::Record { lsn } => {
                let aborted = matches!(self.live[&tx].core.decision(), Some(Verdict::Aborted(_)));
                if aborted && self.logged {
                    match self.append(Rec::Abort(tx)) {
                        Event::Appended(lsn) => Event::Recorded(Some(lsn)),
                        other => other,
                    }
                } else {
                    Event::Recorded(lsn)
                }
            }
            Action::Release => Event::Done,
            other => unreachable!("{other:?} is handled by `run`"),
        }
    }

    fn owe(&mut self, tx: usize, owed: HashSet<usize>) {
        if owed.is_empty() {
            // Nothing owed: the real engine tracks nothing, and logs no Done.
            return;
        }
        self.owed.insert(tx, owed);
    }

    /// A phase request: handled at once (inline) or queued.
    fn request(&mut self, tx: usize, action: Action, branch: usize) -> Event {
        let req = match action {
            Action::Prepare(_) | Action::OnePhase => Req::Prepare { tx, branch },
            Action::Commit { after, .. } => Req::Commit { tx, branch, after },
            _ => Req::Rollback { tx, branch },
        };
        let copies = if self.rng.random_bool(0.1) { 2 } else { 1 };
        if self.rng.random_bool(0.5) && self.ready(req) {
            let reply = self.handle(req, copies);
            return match (action, reply) {
                (Action::Rollback(_), _) => Event::Done,
                (Action::OnePhase, Some(Msg::Vote { yes, .. })) => {
                    let vote = if yes { Vote::Committed } else { Vote::No };
                    Event::Voted { branch, vote }
                }
                (_, Some(Msg::Vote { yes, .. })) => {
                    Event::Voted { branch, vote: if yes { Vote::Yes } else { Vote::No } }
                }
                (_, Some(Msg::Ack { .. })) => Event::Acked { branch, done: true },
                (_, None) => unreachable!("prepare and commit answer"),
            };
        }
        if matches!(action, Action::Prepare(_) | Action::OnePhase) && self.rng.random_bool(0.02) {
            return Event::Unsent;
        }
        for _ in 0..copies {
            self.reqs.push(req);
        }
        if matches!(action, Action::Rollback(_)) { Event::Done } else { Event::Queued }
    }

    /// A commit waits until the log is durable up to its `after`.
    fn ready(&self, req: Req) -> bool {
        match req {
            Req::Commit { after: Some(lsn), .. } => self.durable as u64 >= lsn.0,
            _ => true,
        }
    }

    /// A participant handles a request `copies` times; the first reply.
    fn handle(&mut self, req: Req, copies: u32) -> Option<Msg> {
        let mut first = None;
        for _ in 0..copies {
            let reply = self.apply(req);
            first = first.or(reply);
        }
        first
    }

    fn apply(&mut self, req: Req) -> Option<Msg> {
        match req {
            Req::Prepare { tx, branch } => {
                let one_phase = self.specs[tx].keepers.len() == 1 && !self.logged;
                let yes = match self.state.get(&(tx, branch)) {
                    Some(State::RolledBack) => false,
                    Some(State::Prepared | State::Committed) => true,
                    None if self.live.get(&tx).is_none_or(|l| l.cancelled) => {
                        self.state.insert((tx, branch), State::RolledBack);
                        false
                    }
                    None if self.specs[tx].yes[branch] => {
                        let done = if one_phase { State::Committed } else { State::Prepared };
                        self.state.insert((tx, branch), done);
                        true
                    }
                    None => {
                        self.state.insert((tx, branch), State::RolledBack);
                        false
                    }
                };
                Some(Msg::Vote { tx, branch, yes })
            }
            Req::Commit { tx, branch, .. } => {
                let keeper = self.specs[tx].keepers[branch];
                if self.immediate && self.logged && !keeper.early_commit() && !self.durable_commit(tx) {
                    self.violation(format!(
                        "tx {tx}: {keeper:?} branch {branch} committed before the decision was durable"
                    ));
                }
                match self.state.get(&(tx, branch)) {
                    Some(State::Prepared | State::Committed) => {}
                    other => self.violation(format!("tx {tx}: commit of branch {branch} in state {other:?}")),
                }
                self.state.insert((tx, branch), State::Committed);
                self.applied(tx, branch);
                Some(Msg::Ack { tx, branch })
            }
            Req::Rollback { tx, branch } => {
                if self.state.get(&(tx, branch)) == Some(&State::Committed) {
                    self.violation(format!("tx {tx}: rollback of committed branch {branch}"));
                } else {
                    self.state.insert((tx, branch), State::RolledBack);
                }
                self.applied(tx, branch);
                None
            }
        }
    }

    /// A branch applied its decision: the last one owed appends `Done`.
    fn applied(&mut self, tx: usize, branch: usize) {
        let Some(owed) = self.owed.get_mut(&tx) else { return };
        owed.remove(&branch);
        if owed.is_empty() {
            self.owed.remove(&tx);
            if self.logged && !self.log_failed {
                self.log.push(Rec::Done(tx));
            }
        }
    }

    /// One scheduler step; false once nothing is left to do and `more` is false.
    fn step(&mut self, more: bool) -> bool {
        let idle = self.live.is_empty() && self.reqs.is_empty() && self.msgs.is_empty();
        if idle && !more {
            if self.log_failed {
                self.crash(); // fail-stop: the failed log is reopened
                return true;
            }
            return false;
        }
        let roll = self.rng.random_range(0..100);
        match roll {
            0..15 if more && !self.log_failed => self.start(),
            15..40 if !self.reqs.is_empty() => {
                let at = self.rng.random_range(0..self.reqs.len());
                let req = self.reqs[at];
                if self.ready(req) {
                    self.reqs.swap_remove(at);
                    if let Some(reply) = self.handle(req, 1) {
                        self.msgs.push(reply);
                    }
                }
            }
            40..65 if !self.msgs.is_empty() => self.deliver(),
            65..75 if !self.log_failed => {
                self.durable = self.log.len();
                let waiting: Vec<usize> = self.live.keys().copied().collect();
                for tx in waiting {
                    self.run(tx, None);
                }
            }
            75..80 => self.timeout(),
            85 if more && self.logged && !self.log_failed && self.rng.random_bool(0.2) => {
                self.log_failed = true;
                self.stats.log_failures += 1;
            }
            86 | 87 if more && self.logged => self.crash(),
            _ if self.log_failed && self.rng.random_bool(0.2) => self.crash(),
            _ => {
                // Nothing else can move: let time pass.
                if self.reqs.is_empty() && self.msgs.is_empty() {
                    self.timeout();
                    if self.log_failed {
                        self.crash();
                    }
                }
            }
        }
        true
    }

    fn deliver(&mut self) {
        let at = self.rng.random_range(0..self.msgs.len());
        let msg = self.msgs[at];
        let (tx, branch) = match msg {
            Msg::Vote { tx, branch, .. } | Msg::Ack { tx, branch } => (tx, branch),
        };
        let Some(live) = self.live.get(&tx) else {
            self.msgs.swap_remove(at); // its caller is gone
            return;
        };
        let event = match (msg, live.waiting) {
            (Msg::Vote { yes, .. }, Action::AwaitVote | Action::AwaitLateVote) => {
                let one_phase = self.specs[tx].keepers.len() == 1 && !self.logged;
                let vote = match (yes, one_phase) {
                    (true, true) => Vote::Committed,
                    (true, false) => Vote::Yes,
                    (false, _) => Vote::No,
                };
                Event::Voted { branch, vote }
            }
            (Msg::Ack { .. }, Action::AwaitAck) => Event::Acked { branch, done: true },
            _ => return, // not waited for yet: it stays queued
        };
        if self.rng.random_bool(0.05) {
            self.stats.dropped += 1;
            self.msgs.swap_remove(at);
            return;
        }
        if self.rng.random_bool(0.1) {
            self.stats.duplicates += 1; // stays queued as well
        } else {
            self.msgs.swap_remove(at);
        }
        self.run(tx, Some(event));
    }

    fn timeout(&mut self) {
        let waiting: Vec<usize> = self
            .live
            .iter()
            .filter(|(_, l)| matches!(l.waiting, Action::AwaitVote | Action::AwaitLateVote | Action::AwaitAck))
            .map(|(&tx, _)| tx)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let tx = waiting[self.rng.random_range(0..waiting.len())];
        self.stats.timeouts += 1;
        let event = if self.live[&tx].waiting == Action::AwaitAck { Event::AckTimeout } else { Event::VoteTimeout };
        self.run(tx, Some(event));
    }

    /// The process dies (memory, queues and replies are lost; an unsynced
    /// tail of the log survives as a prefix of random length) and restarts.
    fn crash(&mut self) {
        if !self.logged {
            return;
        }
        self.stats.crashes += 1;
        self.epoch += 1;
        self.live.clear();
        self.reqs.clear();
        self.msgs.clear();
        self.owed.clear();
        let survive = self.rng.random_range(self.durable..=self.log.len());
        self.log.truncate(survive);
        self.durable = self.log.len();
        self.log_failed = false;
        self.recover();
    }

    /// The restarted coordinator: rebuilds the ledgers from the log, then
    /// follows `protocol::recovery` for what participants list and what the
    /// log leaves open.
    fn recover(&mut self) {
        let commits: HashSet<usize> =
            self.log.iter().filter_map(|r| if let Rec::Commit(tx) = r { Some(*tx) } else { None }).collect();
        let done: HashSet<usize> =
            self.log.iter().filter_map(|r| if let Rec::Done(tx) = r { Some(*tx) } else { None }).collect();
        let mut open: Vec<usize> = self
            .log
            .iter()
            .filter_map(|r| match r {
                Rec::Begin(tx) | Rec::Commit(tx) if !done.contains(tx) => Some(*tx),
                _ => None,
            })
            .collect();
        open.sort_unstable();
        open.dedup();
        let keys: Vec<(usize, usize)> = self.state.keys().copied().collect();
        let mut deliver = Vec::new();
        let mut held = HashSet::new();
        for (tx, branch) in keys {
            match self.specs[tx].keepers[branch] {
                Keeper::Memory => {
                    self.state.remove(&(tx, branch));
                }
                Keeper::Log => {
                    if commits.contains(&tx) {
                        self.state.insert((tx, branch), State::Committed);
                    } else {
                        self.state.remove(&(tx, branch));
                    }
                }
                Keeper::Own if self.state[&(tx, branch)] == State::Prepared => {
                    held.insert((tx, branch));
                    deliver.push((tx, branch, recovery::listed(commits.contains(&tx))));
                }
                Keeper::Own | Keeper::External => {}
            }
        }
        for &tx in &open {
            for (branch, &keeper) in self.specs[tx].keepers.iter().enumerate() {
                let (step, _owes) = recovery::open_branch(keeper, commits.contains(&tx), held.contains(&(tx, branch)));
                if let Some(step) = step {
                    deliver.push((tx, branch, step));
                }
            }
        }
        for (tx, branch, step) in deliver {
            let req = match step {
                Deliver::Commit => Req::Commit { tx, branch, after: None },
                Deliver::Rollback => Req::Rollback { tx, branch },
            };
            self.apply(req);
        }
        for tx in open {
            self.log.push(Rec::Done(tx));
        }
        self.durable = self.log.len();
    }

    /// The end state's checks (see the module docs).
    fn check(&mut self, memory_too: bool) {
        for tx in 0..self.specs.len() {
            let spec = &self.specs[tx];
            let counted = |b: usize| spec.keepers[b] != Keeper::Memory || (memory_too && spec.epoch == self.epoch);
            let states: Vec<Option<State>> =
                (0..spec.keepers.len()).map(|b| self.state.get(&(tx, b)).copied()).collect();
            let committed = (0..states.len()).filter(|&b| counted(b) && states[b] == Some(State::Committed)).count();
            let total = (0..states.len()).filter(|&b| counted(b)).count();
            let mut problems = Vec::new();
            if committed > 0 && committed < total {
                problems.push(format!(
                    "tx {tx}: committed at {committed} of {total} branches: {states:?} {:?}",
                    spec.keepers
                ));
            }
            for (b, state) in states.iter().enumerate() {
                if *state == Some(State::Prepared) && matches!(spec.keepers[b], Keeper::Own | Keeper::External) {
                    problems.push(format!("tx {tx}: {:?} branch {b} left prepared", spec.keepers[b]));
                }
            }
            match self.answers.get(&tx) {
                Some(Verdict::Committed | Verdict::Pending) if committed < total => {
                    problems.push(format!("tx {tx}: answered committed, committed at {committed} of {total}"))
                }
                Some(Verdict::Aborted(_)) if committed > 0 => {
                    problems.push(format!("tx {tx}: answered aborted, committed at {committed} of {total}"))
                }
                _ => {}
            }
            self.violations.extend(problems);
        }
    }
}

/// Runs one seed: the violations found (empty when every check held).
fn run_seed(seed: u64, broken: Option<Broken>, immediate: bool) -> (Vec<String>, Stats) {
    let mut sim = Sim::new(seed, broken, immediate);
    for _ in 0..400 {
        sim.step(true);
    }
    let mut steps = 0;
    while sim.step(false) {
        steps += 1;
        assert!(steps < 100_000, "seed {seed}: the run does not drain");
    }
    sim.check(true);
    sim.crash();
    sim.check(false);
    (sim.violations, sim.stats)
}

fn seeds() -> u64 {
    std::env::var("DTC_PROTOCOL_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
}

#[test]
fn the_core_keeps_atomicity_and_durability_under_every_schedule() {
    let mut total = Stats::default();
    for seed in 0..seeds() {
        let (violations, stats) = run_seed(seed, None, true);
        assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
        total.committed += stats.committed;
        total.aborted += stats.aborted;
        total.failed += stats.failed;
        total.crashes += stats.crashes;
        total.log_failures += stats.log_failures;
        total.duplicates += stats.duplicates;
        total.dropped += stats.dropped;
        total.timeouts += stats.timeouts;
    }
    eprintln!("protocol simulation, {} seeds: {total:?}", seeds());
    // The schedule must reach every kind of event, or it checks little.
    assert!(total.committed > 100 * seeds() / 10 && total.aborted > seeds(), "{total:?}");
    assert!(total.crashes > seeds() && total.log_failures > seeds() / 10 && total.failed > 0, "{total:?}");
    assert!(total.duplicates > 0 && total.dropped > 0 && total.timeouts > seeds(), "{total:?}");
}

#[test]
fn broken_variants_are_caught() {
    // Both by the rules checked as they happen and, without those, by what
    // a crash makes of the end state.
    for immediate in [true, false] {
        for broken in [Broken::CommitBeforeDurable, Broken::AnswerBeforeDurable, Broken::NoBeginRecord] {
            let caught = (0..seeds()).find_map(|seed| {
                let found = run_seed(seed, Some(broken), immediate).0;
                (!found.is_empty()).then(|| (seed, found[0].clone()))
            });
            let Some((seed, found)) = caught else { panic!("no seed catches {broken:?} (immediate: {immediate})") };
            eprintln!("{broken:?} (immediate checks: {immediate}): caught by seed {seed}: {found}");
        }
    }
}
