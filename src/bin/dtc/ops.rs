//! Commands over a data directory: `recover`, `status`, `verify`, `sagas`,
//! `txs`, `retry-now`, `resolve`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args as ClapArgs;
use dtc::{
    TxId,
    ops::{DataDir, Resolution, TxStatus, UnfinishedTx},
};

#[derive(ClapArgs, Debug)]
pub struct RecoverArgs {
    /// The data directory.
    #[arg(long)]
    dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn recover(args: RecoverArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let summary = DataDir::new(&args.dir).recover()?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        let r = &summary.report;
        println!("segments scanned        {}", r.segments);
        println!("checkpoint at           {}", r.checkpoint_lsn);
        println!(
            "records replayed        {} ({} commits, {} aborts)",
            r.records_replayed, r.commits_replayed, r.aborts_replayed
        );
        println!("torn tail truncated     {} bytes", r.torn_tail_bytes);
        println!("in-doubt resolved       {}", r.in_doubt_resolved);
        println!("unresolved external     {}", summary.unresolved_external);
        println!("services                {}", summary.services.join(", "));
        println!("accounts                {}", summary.accounts);
        println!("total balance           {}", summary.total_balance);
        println!("negative balances       {}", summary.negative_balances);
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(ClapArgs, Debug)]
pub struct StatusArgs {
    /// The data directory.
    #[arg(long)]
    dir: PathBuf,
    /// A file with one transaction id per line (32 hex digits).
    #[arg(long)]
    ids: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct StatusLine {
    id: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_code: Option<&'static str>,
    /// Operator actions the log records for this id (audit trail).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    operator: Vec<dtc::ops::OperatorAction>,
}

pub fn status(args: StatusArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(&args.ids).map_err(|e| format!("reading {}: {e}", args.ids.display()))?;
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        // Accept the ack-log format too: the id is the first word.
        let Some(word) = line.split_whitespace().next() else { continue };
        let id: TxId = word.parse().map_err(|e| format!("{}:{}: {e}", args.ids.display(), n + 1))?;
        ids.push(id);
    }
    let data = DataDir::new(&args.dir);
    let statuses = data.status(&ids)?;
    let actions = data.operator_actions()?;
    let lines: Vec<StatusLine> = statuses
        .iter()
        .map(|(id, status)| StatusLine {
            id: id.to_string(),
            status: status.as_str(),
            reason: match status {
                TxStatus::Aborted(reason) => Some(reason.to_string()),
                _ => None,
            },
            reason_code: match status {
                TxStatus::Aborted(reason) => Some(reason.code()),
                _ => None,
            },
            operator: actions.iter().filter(|a| a.tx == *id).cloned().collect(),
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string(&lines)?);
    } else {
        for l in &lines {
            let reason = l.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
            let operator: String =
                l.operator.iter().map(|a| format!(" [operator {}: {}]", a.action, a.reason)).collect();
            println!("{} {}{reason}{operator}", l.id, l.status);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(ClapArgs, Debug)]
pub struct VerifyArgs {
    /// The data directory.
    #[arg(long)]
    dir: PathBuf,
    /// Also check that the total balance after replay is this amount.
    #[arg(long)]
    expect_total: Option<i128>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Exit 0: every check held. 1: problems found (or the directory could not
/// be read). 2: recovery would refuse the directory, or would start over
/// without its committed state.
pub fn verify(args: VerifyArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let data = DataDir::new(&args.dir);
    let report = match args.expect_total {
        Some(total) => data.verify_expecting_total(total)?,
        None => data.verify()?,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let checkpoint = report.checkpoint_lsn.map_or_else(|| "none".to_string(), |lsn| lsn.to_string());
        println!("segments scanned        {}", report.segments);
        println!("checkpoint at           {checkpoint}");
        println!("records after it        {} ({} commits, {} aborts)", report.records, report.commits, report.aborts);
        println!("log ends at             {}", report.end_lsn);
        println!("torn tail               {} bytes", report.torn_tail_bytes);
        println!("services                {}", report.services.join(", "));
        println!("accounts                {}", report.accounts);
        println!("checkpoint total        {}", report.checkpoint_total);
        println!("total balance           {}", report.total_balance);
        println!("negative balances       {}", report.negative_balances);
        for note in &report.notes {
            println!("note     {}:{} {}: {}", note.file, note.offset, note.kind, note.detail);
        }
        for p in &report.problems {
            let severity = if p.fatal { "FATAL  " } else { "problem" };
            println!("{severity}  {}:{} {}: {}", p.file, p.offset, p.kind, p.detail);
        }
        if report.problems_omitted > 0 {
            println!("… and {} more problems", report.problems_omitted);
        }
        let verdict = match (report.ok, report.recoverable) {
            (true, _) => "ok",
            (false, true) => "PROBLEMS FOUND",
            (false, false) => "CORRUPT: recovery would refuse or lose committed state",
        };
        println!("verdict                 {verdict}");
    }
    Ok(match (report.ok, report.recoverable) {
        (true, _) => ExitCode::SUCCESS,
        (false, true) => ExitCode::from(1),
        (false, false) => ExitCode::from(2),
    })
}

#[derive(ClapArgs, Debug)]
pub struct SagasArgs {
    /// The saga executor's data directory.
    #[arg(long)]
    dir: PathBuf,
    /// Only sagas in this state (running, compensating, completed, compensated, stuck).
    #[arg(long)]
    state: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct SagaLine {
    id: String,
    definition: String,
    state: &'static str,
    steps: usize,
    completed_steps: Vec<String>,
    compensated_steps: usize,
    failure: Option<String>,
}

/// Lists the sagas a saga log knows, with their state (stuck ones included).
pub fn sagas(args: SagasArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    const STATES: [&str; 5] = ["running", "compensating", "completed", "compensated", "stuck"];
    if let Some(state) = &args.state
        && !STATES.contains(&state.as_str())
    {
        return Err(format!("--state {state:?}: expected one of {}", STATES.join(", ")).into());
    }
    if !args.dir.is_dir() {
        return Err(format!("{}: no such saga directory", args.dir.display()).into());
    }
    let executor = dtc::saga::SagaExecutor::open(&args.dir)?;
    let lines: Vec<SagaLine> = executor
        .sagas()
        .into_iter()
        .filter(|s| args.state.as_deref().is_none_or(|want| s.state.code() == want))
        .map(|s| SagaLine {
            id: s.id.to_string(),
            definition: s.definition,
            state: s.state.code(),
            steps: s.steps,
            completed_steps: s.completed_steps,
            compensated_steps: s.compensated_steps,
            failure: s.failure,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string(&lines)?);
    } else {
        for l in &lines {
            let failure = l.failure.as_deref().map(|f| format!(" ({f})")).unwrap_or_default();
            println!(
                "{} {} {} steps done {}/{} compensated {}{failure}",
                l.id,
                l.definition,
                l.state,
                l.completed_steps.len(),
                l.steps,
                l.compensated_steps
            );
        }
        let stuck = lines.iter().filter(|l| l.state == "stuck").count();
        println!("{} sagas, {stuck} stuck", lines.len());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(ClapArgs, Debug)]
pub struct TxsArgs {
    /// The data directory (a coordinator's or a saga executor's).
    #[arg(long)]
    dir: PathBuf,
    /// Only transactions in this state.
    #[arg(long, value_parser = ["in-doubt", "committing", "rolling-back", "stuck"])]
    state: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[cfg(feature = "postgres")]
    #[command(flatten)]
    pg: crate::ops_pg::PgArgs,
}

/// Lists unfinished transactions: live from a running coordinator, else
/// from the log (read-only).
pub fn txs(args: TxsArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let list: Vec<UnfinishedTx> = DataDir::new(&args.dir)
        .unfinished()?
        .into_iter()
        .filter(|u| args.state.as_deref().is_none_or(|s| u.state.as_str() == s))
        .collect();
    if args.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    for u in &list {
        let kind = serde_json::to_value(u.kind)?;
        let kind = kind.as_str().unwrap_or("?");
        let reason = u.reason.as_deref().map(|r| format!(" — {r}")).unwrap_or_default();
        println!("{} {kind} {} age {:.1} s{reason}", u.tx, u.state.as_str(), u.age_seconds);
        for p in &u.participants {
            let mut line = format!("    {} {}", p.name, p.phase);
            if p.attempts > 0 {
                line.push_str(&format!(" attempts {}", p.attempts));
            }
            if let Some(ms) = p.next_retry_in_ms {
                line.push_str(&format!(" next retry in {ms} ms"));
            }
            if let Some(e) = &p.last_error {
                line.push_str(&format!(" last error {}: {}", e.code, e.message));
            }
            println!("{line}");
        }
    }
    println!("{} unfinished", list.len());
    #[cfg(feature = "postgres")]
    crate::ops_pg::txs(&args.pg, &args.dir)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(ClapArgs, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["tx", "all_parked"])))]
pub struct RetryNowArgs {
    /// The data directory of a running coordinator.
    #[arg(long)]
    dir: PathBuf,
    /// The transaction whose parked or waiting calls to retry now.
    #[arg(long)]
    tx: Option<TxId>,
    /// Retry every parked call.
    #[arg(long)]
    all_parked: bool,
    /// Why (recorded in the log with the action).
    #[arg(long, default_value = "operator retry-now")]
    reason: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Asks the coordinator running on a directory to retry parked calls now.
pub fn retry_now(args: RetryNowArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let tx = if args.all_parked { None } else { args.tx };
    let report = DataDir::new(&args.dir).retry_now(tx, &args.reason)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} transactions: {} parked calls delivered again, {} waiting calls woken",
            report.transactions.len(),
            report.redelivered,
            report.woken
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(ClapArgs, Debug)]
#[command(group(clap::ArgGroup::new("resolution").required(true).args(["commit", "abort"])))]
pub struct ResolveArgs {
    /// The data directory (a running coordinator is asked through it;
    /// otherwise the log is updated offline).
    #[arg(long)]
    dir: PathBuf,
    /// The transaction.
    #[arg(long)]
    tx: TxId,
    /// Declare the recorded commit finished (the participants that did not
    /// acknowledge were fixed by hand). Refused without a commit decision.
    #[arg(long)]
    commit: bool,
    /// Abort an undecided transaction, or declare a stuck rollback finished.
    /// Refused for a recorded commit.
    #[arg(long)]
    abort: bool,
    /// Why (required; recorded in the log with the action).
    #[arg(long)]
    reason: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[cfg(feature = "postgres")]
    #[command(flatten)]
    pg: crate::ops_pg::PgArgs,
}

/// Resolves a stuck or undecided transaction by an operator's decision.
pub fn resolve(args: ResolveArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let resolution = if args.commit { Resolution::Commit } else { Resolution::Abort };
    #[cfg(feature = "postgres")]
    crate::ops_pg::resolve(&args.pg, &args.dir, args.tx, &resolution)?;
    let report = DataDir::new(&args.dir).resolve(args.tx, resolution, &args.reason)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let settled =
            if report.settled.is_empty() { String::new() } else { format!(" ({})", report.settled.join(", ")) };
        println!("{} {}: {}{settled}", report.tx, if args.commit { "commit" } else { "abort" }, report.note);
    }
    Ok(ExitCode::SUCCESS)
}
