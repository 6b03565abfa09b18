//! The only `unsafe` code of the log: writing into a shared file mapping.
//!
//! Every byte written through the mapping is stored with a relaxed `AtomicU8`
//! store, so even overlapping writes from several threads would be atomic
//! byte stores rather than a data race: the safe `write_at` is sound for any
//! arguments. Nothing in this process reads the mapping (reads use `pread`,
//! syncs are `msync`, both done by the kernel), so there is no mixed atomic /
//! non-atomic or mixed-size access. Byte stores compile to plain moves; the
//! log is bound by sync latency, not by this copy.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU8, Ordering};

use memmap2::MmapRaw;

/// A fixed-size file mapped read-write and shared with the page cache.
///
/// Assumes nobody truncates the file while it is mapped (the log never
/// changes a segment's length; another process doing so would raise SIGBUS,
/// which no mapping-based design can prevent).
#[derive(Debug)]
pub struct MappedFile {
    file: File,
    map: MmapRaw,
    len_bytes: u64,
}

fn out_of_bounds(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

impl MappedFile {
    /// Maps all of `file`, which must be open for reading and writing and
    /// have its final, nonzero length.
    pub fn new(file: File) -> io::Result<Self> {
        let len_bytes = file.metadata()?.len();
        if len_bytes == 0 || usize::try_from(len_bytes).is_err() {
            return Err(out_of_bounds("segment length must be nonzero and addressable"));
        }
        let map = MmapRaw::map_raw(&file)?;
        if map.len() as u64 != len_bytes {
            return Err(out_of_bounds("mapping length differs from the file length"));
        }
        Ok(MappedFile { file, map, len_bytes })
    }

    pub fn len(&self) -> u64 {
        self.len_bytes
    }

    /// Copies `bytes` into the mapping at `offset`.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&end| end <= self.len_bytes)
            .ok_or_else(|| out_of_bounds("write past the end of the segment"))?;
        debug_assert!(end <= self.len_bytes);
        if bytes.is_empty() {
            return Ok(());
        }
        // `offset < len_bytes <= usize::MAX` (checked in `new` and above).
        let start = offset as usize;
        // SAFETY: `start + bytes.len() <= len_bytes == map.len()` (checked
        // above), so the range lies inside the mapping, which lives as long
        // as `self` and is never shrunk (see the type's assumption). `AtomicU8`
        // has the size and alignment of `u8`, so the bytes may be viewed as
        // atomics, and the only accesses to mapped memory from this process
        // are these atomic byte stores (module docs), so no access conflicts.
        let cells: &[AtomicU8] =
            unsafe { std::slice::from_raw_parts(self.map.as_mut_ptr().add(start).cast::<AtomicU8>(), bytes.len()) };
        for (cell, &byte) in cells.iter().zip(bytes) {
            // Relaxed: ordering towards the sync leader comes from the group
            // commit's SeqCst completion CAS that follows every copy.
            cell.store(byte, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads through the page cache (`pread`), never through the mapping.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes zeros over the whole file with `pwrite` (used when recycling;
    /// nobody writes the mapping meanwhile) and leaves them in the page cache.
    pub fn zero_fill(&self) -> io::Result<()> {
        write_zeros(&self.file, self.len_bytes)
    }

    /// `msync(MS_SYNC)` of the pages covering `[offset, offset + len)`.
    pub fn sync(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.len_bytes)
            .ok_or_else(|| out_of_bounds("sync past the end of the segment"))?;
        debug_assert!(end <= self.len_bytes);
        self.map.flush_range(offset as usize, len as usize)
    }
}

/// Writes `len_bytes` zeros at the start of `file` (really written, never a hole).
pub fn write_zeros(file: &File, len_bytes: u64) -> io::Result<()> {
    const CHUNK_BYTES: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK_BYTES.min(len_bytes) as usize];
    let mut offset = 0;
    while offset < len_bytes {
        let n = CHUNK_BYTES.min(len_bytes - offset);
        file.write_all_at(&zeros[..n as usize], offset)?;
        offset += n;
    }
    Ok(())
}
