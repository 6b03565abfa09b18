//! A branch's work in PostgreSQL, as data: a list of statements with
//! parameters, carried as the branch's JSON payload. Being data, a branch
//! can be logged, resubmitted and inspected; nothing runs but what it says.
//!
//! ```json
//! [{"sql": "UPDATE accounts SET balance = balance - $1 WHERE id = $2", "params": [250, "alice"], "expect_rows": 1},
//!  {"sql": "INSERT INTO transfers (note) VALUES ($1)", "params": ["rent"]}]
//! ```
//!
//! Each entry is one statement, run with the extended protocol (the server
//! refuses two statements in one entry, SQLSTATE `42601`). Parameters are
//! sent in text form and typed by the server from the statement, so
//! `"250"`, `250` and `250.0` all reach a `bigint` as the server parses
//! them; `null` is SQL NULL, JSON arrays and objects are sent as JSON text
//! (for `json`/`jsonb` parameters). `expect_rows` (optional) refuses the
//! branch unless the statement affected (or returned) exactly that many
//! rows. Statements that would end the transaction, prepare one, or change
//! the pooled session beyond it are refused before anything runs (see
//! [`refused_statement`]).

use bytes::BytesMut;
use postgres::types::{Format, IsNull, ToSql, Type};

use crate::participant::Refusal;

use super::options::PgOptions;

/// One statement of a branch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgStatement {
    /// The SQL, with `$1`, `$2`, … for the parameters.
    pub sql: String,
    /// The parameters, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<serde_json::Value>,
    /// Refuse the branch unless exactly this many rows were affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_rows: Option<u64>,
}

/// The work of one branch: statements run in one transaction, in order,
/// then prepared. Build one and turn it into a branch with
/// [`PgWork::branch`]:
///
/// ```
/// use dtc::pg::PgWork;
/// let work = PgWork::new()
///     .statement("UPDATE accounts SET balance = balance - $1 WHERE id = $2", [250.into(), "alice".into()])
///     .expect_rows(1)
///     .statement("INSERT INTO transfers (note) VALUES ($1)", ["rent".into()]);
/// let branch = work.branch("pg").unwrap().lock("accounts/alice");
/// assert_eq!(branch.service(), "pg");
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct PgWork {
    /// The statements.
    pub statements: Vec<PgStatement>,
}

impl PgWork {
    /// No statements yet.
    pub fn new() -> PgWork {
        PgWork::default()
    }

    /// Adds a statement with its parameters.
    pub fn statement(mut self, sql: impl Into<String>, params: impl IntoIterator<Item = serde_json::Value>) -> PgWork {
        self.statements.push(PgStatement { sql: sql.into(), params: params.into_iter().collect(), expect_rows: None });
        self
    }

    /// The last statement must affect exactly `rows` rows.
    pub fn expect_rows(mut self, rows: u64) -> PgWork {
        if let Some(last) = self.statements.last_mut() {
            last.expect_rows = Some(rows);
        }
        self
    }

    /// The payload bytes (JSON).
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("statements always serialize")
    }

    /// A payload branch on `service` carrying this work. Add
    /// [`lock`](crate::Branch::lock) keys for the rows it changes so that
    /// dtc orders conflicting transactions before they reach the server.
    pub fn branch<'a>(&self, service: &'a str) -> crate::Result<crate::Branch<'a>> {
        crate::Branch::json(service, self)
    }

    /// Reads a payload.
    pub(crate) fn parse(payload: &[u8]) -> Result<PgWork, Refusal> {
        serde_json::from_slice(payload).map_err(|e| {
            Refusal::new(
                "pg_bad_payload",
                format!("the payload is not a JSON list of {{\"sql\", \"params\", \"expect_rows\"}}: {e}"),
            )
        })
    }

    /// Checks the bounds and every statement, before anything runs.
    pub(crate) fn validate(&self, options: &PgOptions) -> Result<(), Refusal> {
        if self.statements.is_empty() {
            return Err(Refusal::new("pg_bad_payload", "no statements"));
        }
        if self.statements.len() > options.max_statements {
            return Err(Refusal::new(
                "pg_too_many_statements",
                format!("{} statements, at most {}", self.statements.len(), options.max_statements),
            ));
        }
        for (i, s) in self.statements.iter().enumerate() {
            if s.sql.len() > options.max_sql_bytes {
                return Err(Refusal::new(
                    "pg_statement_too_large",
                    format!("statement {i}: {} bytes of SQL, at most {}", s.sql.len(), options.max_sql_bytes),
                ));
            }
            if s.sql.contains('\0') {
                return Err(Refusal::new("pg_bad_payload", format!("statement {i}: a NUL byte in the SQL")));
            }
            if let Some(keyword) = refused_statement(&s.sql) {
                return Err(Refusal::new(
                    "pg_statement_not_allowed",
                    format!(
                        "statement {i}: {keyword} is not allowed in a branch (dtc begins, prepares and ends the \
                         transaction itself, and sessions are pooled)"
                    ),
                ));
            }
            if s.params.len() > options.max_params {
                return Err(Refusal::new(
                    "pg_too_many_params",
                    format!("statement {i}: {} parameters, at most {}", s.params.len(), options.max_params),
                ));
            }
            let bytes: usize = s.params.iter().map(param_len).sum();
            if bytes > options.max_param_bytes {
                return Err(Refusal::new(
                    "pg_params_too_large",
                    format!("statement {i}: {bytes} bytes of parameters, at most {}", options.max_param_bytes),
                ));
            }
        }
        Ok(())
    }
}

fn param_len(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::String(s) => s.len(),
        serde_json::Value::Null => 0,
        other => other.to_string().len(),
    }
}

/// Leading keywords a branch may not use, with why: transaction control
/// (dtc begins, prepares and ends the transaction), session state that would
/// outlive the transaction on a pooled connection, and what PostgreSQL
/// cannot prepare (LISTEN/UNLISTEN/NOTIFY, cursors).
const REFUSED: &[&str] = &[
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "PREPARE",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "RESET",
    "DISCARD",
    "LISTEN",
    "UNLISTEN",
    "NOTIFY",
    "COPY",
    "EXECUTE",
    "DEALLOCATE",
    "DECLARE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "LOAD",
    "VACUUM",
    "CHECKPOINT",
];

/// The leading keyword of `sql` if a branch may not run it (`SET LOCAL`
/// and `SET CONSTRAINTS` are allowed: they end with the transaction).
/// Comments and opening parentheses before the keyword are skipped.
///
/// ```
/// use dtc::pg::refused_statement;
/// assert_eq!(refused_statement("/* x */ commit"), Some("COMMIT".to_string()));
/// assert_eq!(refused_statement("PREPARE TRANSACTION 'x'"), Some("PREPARE".to_string()));
/// assert_eq!(refused_statement("SET search_path = evil"), Some("SET".to_string()));
/// assert_eq!(refused_statement("SET LOCAL lock_timeout = '1s'"), None);
/// assert_eq!(refused_statement("(SELECT 1)"), None);
/// ```
pub fn refused_statement(sql: &str) -> Option<String> {
    let mut words = Words { rest: sql };
    let first = words.next()?.to_ascii_uppercase();
    if !REFUSED.contains(&first.as_str()) {
        return None;
    }
    if first == "SET" {
        let second = words.next().map(|w| w.to_ascii_uppercase());
        if matches!(second.as_deref(), Some("LOCAL" | "CONSTRAINTS")) {
            return None;
        }
    }
    Some(first)
}

/// The words of SQL text, skipping whitespace, comments and parentheses.
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let s = self.rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
            if let Some(after) = s.strip_prefix("--") {
                self.rest = after.split_once('\n').map_or("", |(_, r)| r);
            } else if s.starts_with("/*") {
                self.rest = skip_block_comment(s);
            } else {
                let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
                if end == 0 {
                    self.rest = s;
                    return None;
                }
                self.rest = &s[end..];
                return Some(&s[..end]);
            }
        }
    }
}

/// After a (nested, as in PostgreSQL) block comment starting `s`.
fn skip_block_comment(s: &str) -> &str {
    let bytes = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return &s[i..];
                }
            }
            _ => i += 1,
        }
    }
    "" // unterminated: nothing after it is SQL
}

/// A parameter in text form, typed by the server: whatever the statement
/// expects, PostgreSQL parses the text as that type (and refuses with its
/// SQLSTATE if it cannot).
#[derive(Debug)]
pub(crate) struct TextParam(pub Option<String>);

impl TextParam {
    pub(crate) fn from_json(value: &serde_json::Value) -> TextParam {
        TextParam(match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
    }
}

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    postgres::types::to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_bounds_hold() {
        let options = PgOptions::new("t").max_statements(2).max_params(2).max_param_bytes(8);
        let ok = br#"[{"sql": "UPDATE a SET b = b + $1 WHERE id = $2", "params": [1, "x"], "expect_rows": 1}]"#;
        let work = PgWork::parse(ok).unwrap();
        assert_eq!(work.statements[0].expect_rows, Some(1));
        work.validate(&options).unwrap();
        let code = |payload: &[u8]| match PgWork::parse(payload).and_then(|w| w.validate(&options)) {
            Err(Refusal::Other { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(b"[]"), "pg_bad_payload");
        assert_eq!(code(b"{\"sql\": 1}"), "pg_bad_payload");
        assert_eq!(code(br#"[{"sql": "SELECT 1", "bogus": 1}]"#), "pg_bad_payload");
        assert_eq!(
            code(br#"[{"sql": "SELECT 1"}, {"sql": "SELECT 1"}, {"sql": "SELECT 1"}]"#),
            "pg_too_many_statements"
        );
        assert_eq!(code(br#"[{"sql": "SELECT $1", "params": [1, 2, 3]}]"#), "pg_too_many_params");
        assert_eq!(code(br#"[{"sql": "SELECT $1", "params": ["123456789"]}]"#), "pg_params_too_large");
        assert_eq!(code(br#"[{"sql": " commit"}]"#), "pg_statement_not_allowed");
        assert_eq!(code(br#"[{"sql": "-- hi\n PREPARE TRANSACTION 'x'"}]"#), "pg_statement_not_allowed");
        assert_eq!(code(br#"[{"sql": "/* a /* b */ c */ ROLLBACK PREPARED 'y'"}]"#), "pg_statement_not_allowed");
    }

    #[test]
    fn only_transaction_scoped_statements_pass() {
        for ok in [
            "SELECT 1",
            "  update t set x = 1",
            "WITH a AS (SELECT 1) SELECT * FROM a",
            "SET LOCAL x = 1",
            "DO $$ BEGIN END $$",
            "CALL p()",
            "set constraints all deferred",
            "startle()",
        ] {
            assert_eq!(refused_statement(ok), None, "{ok}");
        }
        for bad in [
            "begin",
            "START TRANSACTION",
            "End",
            "abort",
            "savepoint a",
            "release a",
            "set x = 1",
            "SET SESSION x = 1",
            "reset all",
            "discard all",
            "listen c",
            "notify c",
            "copy t from stdin",
            "declare c cursor with hold for select 1",
            "vacuum",
            "((COMMIT))",
            "/* unterminated COMMIT",
        ] {
            let refused = refused_statement(bad);
            assert!(refused.is_some() || bad.starts_with("/*"), "{bad}");
        }
    }

    #[test]
    fn builder_makes_the_payload_it_parses() {
        let work = PgWork::new().statement("SELECT $1", [serde_json::json!(null)]).expect_rows(1);
        assert_eq!(PgWork::parse(&work.to_payload()).unwrap(), work);
        assert_eq!(
            String::from_utf8(work.to_payload()).unwrap(),
            r#"[{"sql":"SELECT $1","params":[null],"expect_rows":1}]"#
        );
    }
}
