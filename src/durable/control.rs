//! The operator channel of a running coordinator: files in `DIR/control/`.
//!
//! dtc runs inside its user's process, with no port of its own. To reach a
//! running coordinator, `dtc txs`, `dtc retry-now` and `dtc resolve` drop a
//! request file into its data directory; the coordinator's background thread
//! picks it up within a tenth of a second, answers with a response file and
//! the tool prints the answer. Both files are written to a temporary name
//! and renamed, so neither side ever reads half a file.
//!
//! Bounded: a coordinator handles at most `MAX_REQUESTS_PER_POLL` requests
//! per poll and ignores request files larger than `MAX_REQUEST_BYTES`
//! (answering them with an error); a tool waits at most its timeout and
//! removes its request if nobody took it; answers nobody collected are
//! removed after five minutes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::operator::{Resolution, ResolveReport, RetryReport, UnfinishedTx};
use crate::txn::TxId;

/// Subdirectory of a data directory holding requests and responses.
pub(crate) const CONTROL_DIR: &str = "control";
/// Requests handled per poll.
pub(crate) const MAX_REQUESTS_PER_POLL: usize = 16;
/// Largest request file read.
pub(crate) const MAX_REQUEST_BYTES: u64 = 16 << 10;
/// Uncollected answers older than this are removed.
const STALE_AFTER: Duration = Duration::from_secs(300);
/// How often a coordinator looks for requests.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(100);

/// What a tool asks of a running coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub(crate) enum Request {
    Unfinished,
    RetryNow { tx: Option<TxId>, reason: String },
    Resolve { tx: TxId, resolution: Resolution, reason: String },
}

/// A coordinator's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub(crate) enum Response {
    Unfinished { transactions: Vec<UnfinishedTx> },
    Retried { report: RetryReport },
    Resolved { report: ResolveReport },
    Refused { code: String, message: String },
}

impl Response {
    pub(crate) fn refused(error: &Error) -> Response {
        Response::Refused { code: error.code().into(), message: error.to_string() }
    }
}

fn control_dir(dir: &Path) -> PathBuf {
    dir.join(CONTROL_DIR)
}

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes).map_err(io(format!("writing {}", temp.display())))?;
    std::fs::rename(&temp, path).map_err(io(format!("renaming {}", temp.display())))
}

/// Tool side: sends `request` to the coordinator running on `dir` and
/// waits up to `timeout` for its answer.
pub(crate) fn call(dir: &Path, request: &Request, timeout: Duration) -> Result<Response> {
    let control = control_dir(dir);
    std::fs::create_dir_all(&control).map_err(io(format!("creating {}", control.display())))?;
    let name = format!("{}-{}", std::process::id(), crate::txn::unix_nanos());
    let request_path = control.join(format!("{name}.req"));
    let response_path = control.join(format!("{name}.resp"));
    let bytes = serde_json::to_vec(request).expect("requests always serialize");
    write_atomic(&request_path, &bytes)?;
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::read(&response_path) {
            Ok(bytes) => {
                let _ = std::fs::remove_file(&response_path);
                return serde_json::from_slice(&bytes).map_err(|e| Error::Control {
                    dir: dir.display().to_string(),
                    reason: format!("unreadable answer: {e}"),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("reading {}", response_path.display()))(e)),
        }
        if Instant::now() >= deadline {
            // Taken back unless the coordinator took it meanwhile (then its
            // answer is left behind; harmless, and cleaned below next time).
            let _ = std::fs::remove_file(&request_path);
            return Err(Error::Control {
                dir: dir.display().to_string(),
                reason: format!("no answer within {timeout:?} from the process holding it"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True if a request waits in `dir` (cheap: one directory listing).
pub(crate) fn has_requests(dir: &Path) -> bool {
    std::fs::read_dir(control_dir(dir))
        .map(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "req")))
        .unwrap_or(false)
}

/// Coordinator side: answers the pending requests in `dir` with `handle`.
pub(crate) fn serve(dir: &Path, mut handle: impl FnMut(Request) -> Response) {
    let control = control_dir(dir);
    let Ok(entries) = std::fs::read_dir(&control) else { return };
    let paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // Answers nobody collected (the tool gave up) are removed after a while.
    for stale in paths.iter().filter(|p| p.extension().is_some_and(|x| x == "resp")) {
        let age = std::fs::metadata(stale).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age > STALE_AFTER) {
            let _ = std::fs::remove_file(stale);
        }
    }
    let mut requests: Vec<PathBuf> = paths.into_iter().filter(|p| p.extension().is_some_and(|x| x == "req")).collect();
    requests.sort();
    for path in requests.into_iter().take(MAX_REQUESTS_PER_POLL) {
        let response_path = path.with_extension("resp");
        let too_big = std::fs::metadata(&path).map_or(true, |m| m.len() > MAX_REQUEST_BYTES);
        let bytes = if too_big { Err(()) } else { std::fs::read(&path).map_err(|_| ()) };
        // Taken: a second poll never answers it twice.
        if std::fs::remove_file(&path).is_err() {
            continue;
        }
        let response = match bytes {
            Err(()) => Response::Refused { code: "bad_request".into(), message: "unreadable or too large".into() },
            Ok(bytes) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(request) => handle(request),
                Err(e) => Response::Refused { code: "bad_request".into(), message: e.to_string() },
            },
        };
        let bytes = serde_json::to_vec(&response).expect("responses always serialize");
        if let Err(error) = write_atomic(&response_path, &bytes) {
            tracing::warn!(%error, "could not answer an operator request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(dir: &Path, name: &str) -> Response {
        serde_json::from_slice(&std::fs::read(control_dir(dir).join(name)).unwrap()).unwrap()
    }

    #[test]
    fn bad_requests_get_a_refusal_and_never_reach_the_handler() {
        let tmp = tempfile::tempdir().unwrap();
        let control = control_dir(tmp.path());
        std::fs::create_dir_all(&control).unwrap();
        std::fs::write(control.join("a.req"), b"{not json").unwrap();
        std::fs::write(control.join("b.req"), vec![b' '; MAX_REQUEST_BYTES as usize + 1]).unwrap();
        std::fs::write(control.join("c.req"), br#"{"action":"unfinished"}"#).unwrap();
        let mut handled = 0;
        serve(tmp.path(), |request| {
            assert!(matches!(request, Request::Unfinished));
            handled += 1;
            Response::Unfinished { transactions: Vec::new() }
        });
        assert_eq!(handled, 1);
        assert!(matches!(answer(tmp.path(), "a.resp"), Response::Refused { ref code, .. } if code == "bad_request"));
        assert!(matches!(answer(tmp.path(), "b.resp"), Response::Refused { ref code, .. } if code == "bad_request"));
        assert!(matches!(answer(tmp.path(), "c.resp"), Response::Unfinished { .. }));
        // Taken: a second poll answers nothing twice.
        serve(tmp.path(), |_| panic!("answered twice"));
    }

    #[test]
    fn a_call_without_a_server_times_out_and_takes_its_request_back() {
        let tmp = tempfile::tempdir().unwrap();
        let error = call(tmp.path(), &Request::Unfinished, Duration::from_millis(30)).unwrap_err();
        assert_eq!(error.code(), "control");
        assert_eq!(std::fs::read_dir(control_dir(tmp.path())).unwrap().count(), 0);
    }
}
