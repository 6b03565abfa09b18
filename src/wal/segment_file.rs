//! The contract of one segment file, whatever writes it (`pwrite.rs`,
//! `mmap.rs` through `storage.rs`, `memory.rs`): a leaf, so that the
//! backends and the storage that picks one need nothing from each other.

use std::fmt::Debug;
use std::io;

/// One fixed-size segment file, open for writing.
///
/// Contract: `write_at` may be called concurrently for disjoint ranges (and
/// concurrently with `sync`); bytes
/// written are visible to `read_at` at once but durable only after a `sync`
/// covering them returns `Ok`. After a failed `sync` nothing is known about
/// the range (the log never retries: see `WalError::Failed`).
pub trait SegmentFile: Send + Sync + Debug {
    /// Length in bytes; fixed for the life of the file.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Writes `parts` one after another from `offset`, with the same
    /// guarantees as `write_at` for their whole range. The default is one
    /// `write_at` per part; a backend whose writes are system calls gathers
    /// them into one (a batch of 1 000 records is 3 000 parts).
    fn write_parts_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        let mut offset = offset;
        for part in parts {
            self.write_at(offset, part)?;
            offset += part.len() as u64;
        }
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes `[offset, offset + len)` durable (fdatasync semantics: the
    /// length never changes, so no metadata needs to reach the disk). Every
    /// byte whose `write_at` returned before this call started is covered
    /// when it returns `Ok`; an implementation may make more durable.
    fn sync(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Overwrites the whole file with zeros (not durable until `sync`).
    fn zero_fill(&self) -> io::Result<()> {
        const CHUNK_BYTES: u64 = 1 << 20;
        let len = self.len();
        let zeros = vec![0u8; CHUNK_BYTES.min(len) as usize];
        let mut offset = 0;
        while offset < len {
            let n = CHUNK_BYTES.min(len - offset);
            self.write_at(offset, &zeros[..n as usize])?;
            offset += n;
        }
        Ok(())
    }
}
