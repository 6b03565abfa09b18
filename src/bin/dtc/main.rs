//! `dtc`: the command-line face of the engine (demo, bench, …).

#![forbid(unsafe_code)]

mod bench;
mod bench_branches;
mod demo;
mod demo_http;
#[cfg(feature = "postgres")]
mod demo_pg;
mod limits;
mod naive;
mod ops;
#[cfg(feature = "postgres")]
mod ops_pg;
mod participant;
mod procs;
mod serve;
mod workload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dtc", version, about = "Fast in-process distributed transactions")]
struct Cli {
    /// Log filter (tracing syntax, e.g. `warn`, `dtc=debug`); overrides RUST_LOG.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A simulated bank with fault injection: transfers for a while, then a summary and an audit.
    Demo(demo::Args),
    /// Measures throughput and latency on the bank workload; one JSON line with --json.
    Bench(bench::Args),
    /// Measures the ledger's memory per account.
    Memory(bench::MemoryArgs),
    /// Recovers a data directory and reports what it holds. Exit 2 on corruption.
    Recover(ops::RecoverArgs),
    /// Prints the recorded outcome of transaction ids: committed, aborted or unknown.
    Status(ops::StatusArgs),
    /// Lists the sagas of a saga log with their state; stuck ones need an operator.
    Sagas(ops::SagasArgs),
    /// Lists unfinished transactions with each participant's phase, attempts, next retry and last error.
    ///
    /// From a running coordinator (through its data directory) the live view; otherwise what the
    /// log shows. A saga executor's directory lists its unfinished sagas.
    Txs(ops::TxsArgs),
    /// Retries parked commit/rollback calls now, in the coordinator (or saga executor) running on the directory.
    RetryNow(ops::RetryNowArgs),
    /// Resolves a stuck or undecided transaction by an operator's decision, recorded with a reason.
    ///
    /// Refused with exit 1 when it would break atomicity: --commit without a recorded commit
    /// decision, --abort of a recorded commit.
    Resolve(ops::ResolveArgs),
    /// Runs the reference participant service of the HTTP protocol, with durable branches in --dir and injected faults.
    Participant(participant::Args),
    /// Checks a data directory offline without changing it. Exit 1 on problems, 2 if recovery would refuse.
    Verify(ops::VerifyArgs),
    /// The coordinator as a service: JSON transactions over HTTP across remote participants, durable in --dir.
    Serve(serve::Args),
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error")),
    };
    use std::io::IsTerminal as _;
    let ansi = std::io::stdout().is_terminal();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stdout).try_init();
}

/// Participant panics are caught and counted by the engine; report them
/// through the log instead of the default hook's stderr message.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!(panic = %info, "participant panic (caught)");
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    quiet_panics();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Memory(args) => bench::memory(args),
        Command::Recover(args) => ops::recover(args),
        Command::Status(args) => ops::status(args),
        Command::Sagas(args) => ops::sagas(args),
        Command::Txs(args) => ops::txs(args),
        Command::RetryNow(args) => ops::retry_now(args),
        Command::Resolve(args) => ops::resolve(args),
        Command::Verify(args) => ops::verify(args),
        Command::Participant(args) => participant::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("dtc: {error}");
            // Corruption is exit 2 (as for invalid flags); other failures 1.
            match error.downcast_ref::<dtc::Error>() {
                Some(dtc::Error::Corrupt { .. }) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
