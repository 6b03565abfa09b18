//! What PostgreSQL holds prepared for this coordinator: the listing that
//! recovery, the stale-transaction gauges and the operator tools share.

use std::time::Duration;

use crate::participant::BranchId;

use super::error::{PgError, query_error};
use super::gid;
use super::pool::Conn;

/// One prepared transaction of this coordinator, as `pg_prepared_xacts`
/// shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PreparedXact {
    /// The global id.
    pub gid: String,
    /// The branch it names (`None`: our prefix but not dtc's format; never
    /// touched by recovery).
    #[serde(serialize_with = "branch_as_string")]
    pub branch: Option<BranchId>,
    /// The transaction id, with its epoch (what `txid_status` takes).
    pub xid: u64,
    /// The role that prepared it (only it, or a superuser, can finish it).
    pub owner: String,
    /// The database it lives in.
    pub database: String,
    /// How long ago it was prepared, by the server's clock.
    pub age_seconds: f64,
}

fn branch_as_string<S: serde::Serializer>(branch: &Option<BranchId>, s: S) -> Result<S::Ok, S::Error> {
    match branch {
        Some(b) => s.serialize_some(&b.to_string()),
        None => s.serialize_none(),
    }
}

impl PreparedXact {
    /// Its age.
    pub fn age(&self) -> Duration {
        Duration::from_secs_f64(self.age_seconds.max(0.0))
    }
}

/// Gauges over this coordinator's prepared transactions, computed on demand
/// (reading `pg_prepared_xacts` briefly locks the server's two-phase state:
/// scrape it every few seconds, not in a loop).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PgGauges {
    /// Prepared transactions of this coordinator in this database.
    pub prepared: u64,
    /// Of those, older than the participant's `stale_after`.
    pub stale: u64,
    /// Age of the oldest one (0 if none).
    pub oldest_age_seconds: f64,
    /// The bound `stale` counts against.
    pub stale_after_seconds: f64,
    /// Connections open in the pool, and idle among them.
    pub connections_open: u64,
    /// Idle pooled connections.
    pub connections_idle: u64,
}

impl PgGauges {
    /// Prometheus text exposition of the gauges, labelled with the service
    /// name. A non-zero `dtc_pg_prepared_stale` is worth an alert: a
    /// forgotten prepared transaction holds its locks and stops VACUUM.
    ///
    /// ```
    /// let text = dtc::pg::PgGauges { prepared: 2, stale: 1, ..Default::default() }.render_prometheus("pg");
    /// assert!(text.contains("dtc_pg_prepared_stale{service=\"pg\"} 1\n"));
    /// ```
    pub fn render_prometheus(&self, service: &str) -> String {
        let service: String = service.chars().filter(|c| *c != '"' && *c != '\\' && *c != '\n').collect();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{service=\"{service}\"}} {value}\n"
            ));
        };
        gauge(
            "dtc_pg_prepared",
            "Prepared transactions of this coordinator in the database.",
            self.prepared.to_string(),
        );
        gauge(
            "dtc_pg_prepared_stale",
            "Prepared transactions of this coordinator older than the stale bound (they hold locks and stop VACUUM).",
            self.stale.to_string(),
        );
        gauge(
            "dtc_pg_prepared_oldest_age_seconds",
            "Age of the oldest prepared transaction of this coordinator.",
            format!("{:.3}", self.oldest_age_seconds),
        );
        gauge("dtc_pg_prepared_stale_after_seconds", "The stale bound.", format!("{:.3}", self.stale_after_seconds));
        gauge("dtc_pg_connections_open", "Pooled connections open.", self.connections_open.to_string());
        gauge("dtc_pg_connections_idle", "Pooled connections idle.", self.connections_idle.to_string());
        out
    }
}

/// Ours in this database, oldest first.
pub(crate) fn list(conn: &mut Conn, prefix: &str) -> Result<Vec<PreparedXact>, PgError> {
    let rows = conn
        .client
        .query(
            "SELECT gid, transaction::text::int8, owner::text, database::text, \
                    extract(epoch FROM now() - prepared)::float8, txid_snapshot_xmax(txid_current_snapshot()) \
             FROM pg_prepared_xacts \
             WHERE database = current_database() AND left(gid, length($1)) = $1 \
             ORDER BY prepared",
            &[&prefix],
        )
        .map_err(|e| query_error("listing pg_prepared_xacts", &e))?;
    Ok(rows
        .iter()
        .map(|row| {
            let gid: String = row.get(0);
            let xid32: i64 = row.get(1);
            let next: i64 = row.get(5);
            PreparedXact {
                branch: gid::parse(prefix, &gid),
                gid,
                xid: full_xid(xid32 as u64, next as u64),
                owner: row.get(2),
                database: row.get(3),
                age_seconds: row.get(4),
            }
        })
        .collect())
}

/// Ours in other databases of the server: (database, count).
pub(crate) fn elsewhere(conn: &mut Conn, prefix: &str) -> Result<Vec<(String, i64)>, PgError> {
    let rows = conn
        .client
        .query(
            "SELECT database::text, count(*) FROM pg_prepared_xacts \
             WHERE database <> current_database() AND left(gid, length($1)) = $1 GROUP BY 1 ORDER BY 1",
            &[&prefix],
        )
        .map_err(|e| query_error("listing pg_prepared_xacts", &e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Other sessions executing a `PREPARE TRANSACTION` of this prefix right
/// now. After a coordinator crash its server sessions live on until they
/// notice the closed socket, and one that was running its branch's
/// `PREPARE TRANSACTION` (an fsync on the server) finishes it first: a
/// listing taken before it ends would miss that gid, and the restarted
/// coordinator would leave it prepared, its rows locked.
pub(crate) fn prepares_in_flight(conn: &mut Conn, prefix: &str) -> Result<i64, PgError> {
    let needle = format!("PREPARE TRANSACTION '{prefix}");
    let row = conn
        .client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND state = 'active' AND position($1 in query) > 0",
            &[&needle],
        )
        .map_err(|e| query_error("reading pg_stat_activity", &e))?;
    Ok(row.get(0))
}

/// The 64-bit transaction id of a 32-bit one still prepared, given the next
/// unassigned 64-bit id: it is older, so in the same epoch unless the low
/// half wrapped since.
pub(crate) fn full_xid(xid32: u64, next: u64) -> u64 {
    let (epoch, low) = (next >> 32, next & 0xffff_ffff);
    if xid32 < low || epoch == 0 { epoch << 32 | xid32 } else { (epoch - 1) << 32 | xid32 }
}

#[cfg(test)]
mod tests {
    use super::full_xid;

    #[test]
    fn xids_get_their_epoch() {
        assert_eq!(full_xid(700, 1_000), 700);
        assert_eq!(full_xid(700, 5 << 32 | 1_000), 5 << 32 | 700);
        assert_eq!(full_xid(0xffff_fff0, 5 << 32 | 3), 4 << 32 | 0xffff_fff0);
    }
}
