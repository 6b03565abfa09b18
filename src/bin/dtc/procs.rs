//! Child `dtc` processes for the HTTP demo and benchmark: reference
//! participants and a coordinator service, each killed when its guard drops.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped.
pub struct Proc {
    child: Child,
    pub addr: String,
    /// The rest of its standard output (kept open so it never blocks writing).
    _stdout: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Runs `dtc <args>` and waits until it printed `listening on ADDR`
    /// and then, if `ready` is given, a line equal to it (at most `limit`).
    pub fn start(args: &[String], ready: Option<&str>, limit: Duration) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting dtc {}: {e}", args.join(" ")))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (lines, got) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || forward(stdout, lines));
        let deadline = Instant::now() + limit;
        let mut proc = Proc { child, addr: String::new(), _stdout: Some(reader) };
        let mut want_ready = ready;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line: String = got.recv_timeout(left).map_err(|_| format!("dtc {} did not start", args.join(" ")))?;
            if let Some(addr) = line.strip_prefix("listening on ") {
                proc.addr = addr.trim().to_string();
            } else if want_ready.is_some_and(|r| line.trim() == r) {
                want_ready = None;
            }
            if !proc.addr.is_empty() && want_ready.is_none() {
                return Ok(proc);
            }
        }
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward(stdout: ChildStdout, lines: std::sync::mpsc::Sender<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { return };
        // The receiver stops listening once the process is up; keep reading
        // so the child never blocks on a full pipe.
        let _ = lines.send(line);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port now (for a process that must come back on the
/// same address after a restart).
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
