//! The PostgreSQL side of `dtc txs` and `dtc resolve` (feature `postgres`):
//! `--postgres URL --pg-id ID` lists the coordinator's prepared transactions
//! in that database with their age and what the log says of each, and
//! applies an operator's resolution there too.

use std::path::Path;
use std::time::Duration;

use clap::Args as ClapArgs;
use dtc::pg::{PgOptions, PgParticipant, PreparedXact};
use dtc::{
    TxId,
    ops::{DataDir, Resolution, TxStatus},
};

#[derive(ClapArgs, Debug, Default)]
pub struct PgArgs {
    /// A PostgreSQL participant's database: also list (txs) or finish (resolve) the coordinator's
    /// prepared transactions there.
    #[arg(long)]
    postgres: Option<String>,
    /// The coordinator id its PgParticipant was opened with (gids `dtc:<ID>:…`).
    #[arg(long, requires = "postgres")]
    pg_id: Option<String>,
    /// With `txs`: flag prepared transactions older than this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pg_older_than: f64,
}

impl PgArgs {
    fn open(&self) -> Result<Option<PgParticipant>, Box<dyn std::error::Error>> {
        let Some(url) = &self.postgres else { return Ok(None) };
        let id = self.pg_id.as_deref().ok_or("--postgres needs --pg-id (the coordinator id of the PgParticipant)")?;
        Ok(Some(PgParticipant::open(url, PgOptions::new(id))?))
    }
}

fn what_the_log_says(dir: &Path, xact: &PreparedXact) -> String {
    let Some(branch) = xact.branch else { return "not dtc's gid format: left alone".into() };
    match DataDir::new(dir).status(&[branch.tx]).ok().and_then(|s| s.into_iter().next()).map(|(_, s)| s) {
        Some(TxStatus::Committed) => "log: committed (the coordinator commits it; or `dtc resolve --commit`)".into(),
        Some(TxStatus::Aborted(_)) => "log: aborted (the coordinator rolls it back; or `dtc resolve --abort`)".into(),
        _ => "log: no decision (presumed abort: recovery rolls it back; or `dtc resolve --abort`)".into(),
    }
}

/// `dtc txs … --postgres URL --pg-id ID`: the prepared transactions, oldest first.
pub fn txs(args: &PgArgs, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let Some(pg) = args.open()? else { return Ok(()) };
    let bound = Duration::from_secs_f64(args.pg_older_than.max(0.0));
    let listed = pg.prepared_transactions()?;
    let stale = listed.iter().filter(|x| x.age() > bound).count();
    for x in &listed {
        let flag = if x.age() > bound { " STALE" } else { "" };
        println!("  {} prepared {:.1} s ago{flag} — {}", x.gid, x.age_seconds, what_the_log_says(dir, x));
    }
    println!(
        "{} prepared in PostgreSQL database {} ({stale} older than {:.0} s: they hold locks and stop VACUUM)",
        listed.len(),
        pg.database(),
        bound.as_secs_f64()
    );
    Ok(())
}

/// `dtc resolve … --postgres URL --pg-id ID`: before the resolution is
/// recorded, apply it to the transaction's prepared branches in PostgreSQL —
/// COMMIT PREPARED only if the log holds the commit decision, ROLLBACK
/// PREPARED only if it does not.
pub fn resolve(args: &PgArgs, dir: &Path, tx: TxId, resolution: &Resolution) -> Result<(), Box<dyn std::error::Error>> {
    let Some(pg) = args.open()? else { return Ok(()) };
    let status = DataDir::new(dir).status(&[tx])?.into_iter().next().map(|(_, s)| s);
    let committed = matches!(status, Some(TxStatus::Committed));
    let commit = matches!(resolution, Resolution::Commit);
    if commit != committed {
        return Err(format!(
            "refused: the log {} a commit decision for {tx}, so PostgreSQL's branches must be {}",
            if committed { "holds" } else { "holds no" },
            if committed { "committed" } else { "rolled back" }
        )
        .into());
    }
    for x in pg.prepared_transactions()?.iter().filter(|x| x.branch.is_some_and(|b| b.tx == tx)) {
        let done = if commit { pg.commit_prepared(&x.gid)? } else { pg.rollback_prepared(&x.gid)? };
        println!(
            "{} {} in PostgreSQL{}",
            x.gid,
            if commit { "committed" } else { "rolled back" },
            if done { "" } else { " (already)" }
        );
    }
    Ok(())
}
