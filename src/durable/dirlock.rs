//! One process at a time per data directory.
//!
//! A coordinator holds an exclusive advisory lock (`flock`) on `LOCK` in its
//! data directory for as long as it runs; offline tools that write (`dtc
//! resolve`) take the same lock, so they never write beside a running
//! coordinator. The kernel drops the lock when the process dies, SIGKILL
//! included, so a crash never leaves a stale lock behind. Read-only tools
//! (`verify`, `status`, `txs`) take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, Result};

/// Name of the lock file inside a data directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Held for as long as it lives.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

fn open(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io { op: format!("opening {}", path.display()), source })
}

impl DirLock {
    /// Takes the lock, or `Error::DirInUse` if another holder has it.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let file = open(dir)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::DirInUse { dir: dir.display().to_string() }),
            Err(TryLockError::Error(source)) => {
                Err(Error::Io { op: format!("locking {}", dir.join(LOCK_FILE).display()), source })
            }
        }
    }

    /// True if a running coordinator (or another tool) holds `dir`.
    pub(crate) fn is_held(dir: &Path) -> Result<bool> {
        if !dir.join(LOCK_FILE).exists() {
            return Ok(false);
        }
        match Self::acquire(dir) {
            Ok(_released_on_drop) => Ok(false),
            Err(Error::DirInUse { .. }) => Ok(true),
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!DirLock::is_held(dir.path()).unwrap());
        let first = DirLock::acquire(dir.path()).unwrap();
        assert!(matches!(DirLock::acquire(dir.path()), Err(Error::DirInUse { .. })));
        assert!(DirLock::is_held(dir.path()).unwrap());
        drop(first);
        assert!(!DirLock::is_held(dir.path()).unwrap());
        DirLock::acquire(dir.path()).unwrap();
    }
}
