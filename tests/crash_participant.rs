//! A real process, killed: the coordinator runs in a child process (this
//! test binary, re-executed) with two ledgers and two file-backed shelves
//! that fsync their own records (one `Durable`, listing what it holds
//! prepared; one `External`, which cannot), under load from 4 threads, and
//! is SIGKILLed at a random moment. After every kill the directory and the
//! shelves' files are recovered in this process and checked: every
//! acknowledged outcome stands, each shelf sold exactly the branches of the
//! committed transactions, nothing stays prepared, and money is conserved.
//! The CI run kills 12 times; the ignored long version 300.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dtc::{
    Branch, BranchId, Coordinator, Durability, Failure, Ledger, Outcome, Participant, ParticipantKind, Refusal,
    Transaction, Transfer, TxId, Work,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: usize = 8;
const BALANCE: i64 = 10_000;
const ITEMS: [&str; 4] = ["lamp", "desk", "sofa", "rug"];
const CHILD_ENV: &str = "DTC_CRASH_PARTICIPANT_CHILD";

/// A shelf whose every change is an fsynced line of its own file:
/// `P <branch> <item>`, `C <branch>`, `R <branch>`. A torn last line (a kill
/// in the middle of a write) is ignored on load: its call never returned.
struct FileShelf {
    file: File,
    kind: ParticipantKind,
    prepared: HashMap<BranchId, String>,
    sold: HashMap<BranchId, String>,
    rolled_back: HashSet<BranchId>,
    violations: Vec<String>,
}

impl FileShelf {
    fn open(path: &Path, kind: ParticipantKind) -> FileShelf {
        let mut shelf = FileShelf {
            file: OpenOptions::new().create(true).append(true).open(path).unwrap(),
            kind,
            prepared: HashMap::new(),
            sold: HashMap::new(),
            rolled_back: HashSet::new(),
            violations: Vec::new(),
        };
        let text = std::fs::read(path).unwrap();
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in String::from_utf8_lossy(&text[..complete]).lines() {
            let mut parts = line.split(' ');
            let (Some(op), Some(branch)) = (parts.next(), parts.next().and_then(|b| b.parse::<BranchId>().ok())) else {
                panic!("unreadable shelf line {line:?}");
            };
            match op {
                "P" => {
                    shelf.prepared.insert(branch, parts.next().unwrap().to_string());
                }
                "C" => {
                    let item = shelf.prepared.remove(&branch).unwrap_or_default();
                    shelf.sold.insert(branch, item);
                }
                "R" => {
                    shelf.prepared.remove(&branch);
                    shelf.rolled_back.insert(branch);
                }
                _ => panic!("unknown shelf record {line:?}"),
            }
        }
        shelf
    }

    fn record(&mut self, line: String) -> Result<(), Failure> {
        let io = |e: std::io::Error| Failure::with_code("io", e.to_string());
        self.file.write_all(line.as_bytes()).map_err(io)?;
        self.file.sync_data().map_err(io)
    }
}

impl Participant for FileShelf {
    type Prepared = String;

    fn kind(&self) -> ParticipantKind {
        self.kind
    }

    fn prepare(&mut self, branch: BranchId, work: Work<'_>) -> Result<String, Refusal> {
        let item = String::from_utf8_lossy(work.payload()).into_owned();
        if self.rolled_back.contains(&branch) {
            return Err(Refusal::new("already_rolled_back", "rolled back before"));
        }
        if let Some(held) = self.prepared.get(&branch) {
            return Ok(held.clone());
        }
        // Durable before the yes vote.
        self.record(format!("P {branch} {item}\n")).map_err(|f| Refusal::new("io", f.message))?;
        self.prepared.insert(branch, item.clone());
        Ok(item)
    }

    fn commit(&mut self, branch: BranchId, _item: &String) -> Result<(), Failure> {
        if self.sold.contains_key(&branch) {
            return Ok(());
        }
        let Some(item) = self.prepared.get(&branch).cloned() else {
            self.violations.push(format!("commit of unprepared {branch}"));
            return Err(Failure::with_code("unknown_branch", "never prepared"));
        };
        self.record(format!("C {branch}\n"))?;
        self.prepared.remove(&branch);
        self.sold.insert(branch, item);
        Ok(())
    }

    fn rollback(&mut self, branch: BranchId, _item: Option<&String>) -> Result<(), Failure> {
        if self.sold.contains_key(&branch) {
            self.violations.push(format!("rollback of sold {branch}"));
            return Err(Failure::with_code("already_committed", "sold"));
        }
        if self.rolled_back.contains(&branch) {
            return Ok(());
        }
        self.record(format!("R {branch}\n"))?;
        self.prepared.remove(&branch);
        self.rolled_back.insert(branch);
        Ok(())
    }

    fn recover(&mut self) -> Vec<(BranchId, String)> {
        if self.kind != ParticipantKind::Durable {
            return Vec::new();
        }
        self.prepared.iter().map(|(b, i)| (*b, i.clone())).collect()
    }

    fn encode_prepared(&self, item: &String) -> Option<Vec<u8>> {
        Some(item.as_bytes().to_vec())
    }

    fn decode_prepared(&self, _branch: BranchId, bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

fn account(i: usize) -> String {
    format!("acct-{i}")
}

fn bank(i: usize) -> &'static str {
    ["bank-0", "bank-1"][i % 2]
}

/// A coordinator on `dir` with fresh ledgers and the shelves' files.
fn open(dir: &Path) -> (Coordinator, Vec<Ledger>) {
    let ledgers: Vec<Ledger> = (0..2).map(|_| Ledger::new()).collect();
    for i in 0..ACCOUNTS {
        ledgers[i % 2].create_account(&account(i), BALANCE).unwrap();
    }
    let dtc = Coordinator::builder()
        .service("bank-0", ledgers[0].clone())
        .service("bank-1", ledgers[1].clone())
        .service("shelf-d", FileShelf::open(&dir.join("shelf-d"), ParticipantKind::Durable))
        .service("shelf-x", FileShelf::open(&dir.join("shelf-x"), ParticipantKind::External))
        .durability(Durability::Sync)
        .dir(dir.join("log"))
        .segment_size_bytes(1 << 20)
        .call_timeout(Duration::from_secs(5))
        .open()
        .unwrap();
    (dtc, ledgers)
}

/// The child: run transactions from 4 threads until killed, appending each
/// acknowledged outcome to `acks` (the transaction's shape is in its id:
/// low bits = from, to, amount, items).
fn child(dir: &Path) {
    let (dtc, _ledgers) = open(dir);
    let seed: u64 = std::process::id().into();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let dtc = &dtc;
            scope.spawn(move || {
                let mut acks = OpenOptions::new().create(true).append(true).open(dir.join("acks")).unwrap();
                let mut rng = SmallRng::seed_from_u64(seed << 8 | t);
                loop {
                    let shape = Shape::random(&mut rng);
                    let tx = shape.id(dtc.new_tx_id());
                    let outcome = run(dtc, tx, &shape).expect("run_as");
                    let word = if outcome.is_committed() { "committed" } else { "aborted" };
                    // One write per line: a kill leaves at most a torn last line.
                    acks.write_all(format!("{tx} {word}\n").as_bytes()).unwrap();
                }
            });
        }
    });
}

/// What a transaction does, encoded in the low 32 bits of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    from: usize,
    to: usize,
    amount: u64,
    durable_item: usize,
    external_item: usize,
}

impl Shape {
    fn random(rng: &mut SmallRng) -> Shape {
        let from = rng.random_range(0..ACCOUNTS);
        Shape {
            from,
            to: (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS,
            amount: rng.random_range(1..=500),
            durable_item: rng.random_range(0..ITEMS.len()),
            external_item: rng.random_range(0..ITEMS.len()),
        }
    }

    fn id(&self, fresh: TxId) -> TxId {
        let bits = (self.from as u128)
            | (self.to as u128) << 4
            | u128::from(self.amount) << 8
            | (self.durable_item as u128) << 20
            | (self.external_item as u128) << 24;
        TxId::from_u128(fresh.as_u128() & !0xffff_ffff | bits)
    }

    fn of(tx: TxId) -> Shape {
        let v = tx.as_u128();
        Shape {
            from: (v & 0xf) as usize,
            to: (v >> 4 & 0xf) as usize,
            amount: (v >> 8 & 0xfff) as u64,
            durable_item: (v >> 20 & 0xf) as usize,
            external_item: (v >> 24 & 0xf) as usize,
        }
    }

    /// The shelf branches' ids: after the two ledger branches.
    fn shelf_branches(tx: TxId) -> (BranchId, BranchId) {
        let s = Shape::of(tx);
        let ledgers = if s.from % 2 == s.to % 2 { 1 } else { 2 };
        (BranchId { tx, index: ledgers }, BranchId { tx, index: ledgers + 1 })
    }
}

fn run(dtc: &Coordinator, tx: TxId, s: &Shape) -> dtc::Result<Outcome> {
    let (from, to) = (account(s.from), account(s.to));
    let t = Transaction::new()
        .transfer(Transfer::new(bank(s.from), &from, bank(s.to), &to, s.amount))
        .branch(Branch::new("shelf-d", ITEMS[s.durable_item].as_bytes()))
        .branch(Branch::new("shelf-x", ITEMS[s.external_item].as_bytes()));
    dtc.run_as(tx, &t)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(dir: &Path) -> Killed {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "child_process", "--nocapture", "--include-ignored"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

fn acked(dir: &Path) -> Vec<(TxId, bool)> {
    let Ok(file) = File::open(dir.join("acks")) else { return Vec::new() };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        let mut parts = line.split(' ');
        if let (Some(Ok(tx)), Some(word)) = (parts.next().map(str::parse::<TxId>), parts.next()) {
            match word {
                "committed" => out.push((tx, true)),
                "aborted" => out.push((tx, false)),
                _ => {} // a torn last line
            }
        }
    }
    out
}

/// Recovers `dir` in this process and checks every invariant; returns the
/// number of transactions recorded as committed.
fn recover_and_check(dir: &Path, kill: usize) -> usize {
    let (dtc, _ledgers) = open(dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while dtc.unresolved_count() > 0 {
        assert!(Instant::now() < deadline, "kill {kill}: recovery did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let acks = acked(dir);
    for (tx, committed) in &acks {
        let recorded = dtc.outcome_of(*tx).unwrap();
        assert_eq!(
            recorded.as_ref().map(Outcome::is_committed),
            Some(*committed),
            "kill {kill}: {tx} acknowledged committed={committed}, recorded {recorded:?}"
        );
    }
    dtc.shutdown().unwrap();
    drop(dtc);
    // The shelves' own files, read back as they are on disk now.
    let durable = FileShelf::open(&dir.join("shelf-d"), ParticipantKind::Durable);
    let external = FileShelf::open(&dir.join("shelf-x"), ParticipantKind::External);
    assert!(durable.prepared.is_empty(), "kill {kill}: durable shelf still holds {:?}", durable.prepared);
    assert!(external.prepared.is_empty(), "kill {kill}: external shelf still holds {:?}", external.prepared);
    // Every transaction either shelf ever saw: sold on both or on neither,
    // and sold iff recorded committed.
    let (dtc, ledgers) = open(dir);
    let mut seen: HashSet<TxId> = durable.sold.keys().chain(external.sold.keys()).map(|b| b.tx).collect();
    seen.extend(durable.rolled_back.iter().chain(&external.rolled_back).map(|b| b.tx));
    seen.extend(acks.iter().map(|(tx, _)| *tx));
    let mut committed = 0;
    let mut model = vec![BALANCE; ACCOUNTS];
    for tx in &seen {
        let is_committed = dtc.outcome_of(*tx).unwrap().as_ref().is_some_and(Outcome::is_committed);
        let (d, x) = Shape::shelf_branches(*tx);
        assert_eq!(
            (durable.sold.contains_key(&d), external.sold.contains_key(&x)),
            (is_committed, is_committed),
            "kill {kill}: {tx} committed={is_committed} but the shelves disagree"
        );
        if is_committed {
            committed += 1;
            let s = Shape::of(*tx);
            model[s.from] -= s.amount as i64;
            model[s.to] += s.amount as i64;
        }
    }
    assert!(durable.violations.is_empty() && external.violations.is_empty());
    let audit = dtc.audit().unwrap();
    assert_eq!(audit.total, i128::from(BALANCE) * ACCOUNTS as i128, "kill {kill}: money not conserved");
    assert_eq!(audit.negative, 0);
    let balances: Vec<i64> = (0..ACCOUNTS).map(|i| ledgers[i % 2].balance(&account(i)).unwrap()).collect();
    // Committed transactions outside `seen` (never acknowledged, no shelf
    // record) cannot exist: every commit reaches both shelves.
    assert_eq!(balances, model, "kill {kill}: ledgers differ from the committed transactions");
    dtc.shutdown().unwrap();
    committed
}

fn kill_loop(kills: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().to_path_buf();
    let mut rng = SmallRng::seed_from_u64(kills as u64);
    let mut committed = 0;
    for kill in 0..kills {
        let before = acked(&dir).len();
        let mut child = spawn_child(&dir);
        // Until it acknowledged something new (a slow start must not make
        // the kill land before any load), then a random moment later.
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked(&dir).len() < before + 5 {
            assert!(Instant::now() < deadline, "kill {kill}: the child acknowledged nothing");
            assert!(child.0.try_wait().unwrap().is_none(), "kill {kill}: the child exited");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        committed = recover_and_check(&dir, kill);
    }
    eprintln!("{kills} kills, {} acknowledged, {committed} committed", acked(&dir).len());
}

/// Not a test: the child process's body (see `spawn_child`).
#[test]
#[ignore = "the child process of the kill tests"]
fn child_process() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
}

#[test]
fn a_killed_coordinator_leaves_every_participant_agreeing() {
    kill_loop(12);
}

#[test]
#[ignore = "long: 300 kills (run with --ignored)"]
fn hundreds_of_kills_leave_every_participant_agreeing() {
    kill_loop(300);
}
