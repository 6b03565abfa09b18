//! The default segment backend: `pwrite` into the page cache and
//! `fdatasync` to make it durable. Safe code only.
//!
//! Why not the mapping (measured in one run, docs/performance.md "Sync
//! path"): every `msync` write-protects the pages it cleaned, so the next
//! store into the same page takes a write-protect fault, and on this virtual
//! machine that fault plus the msync page walk cost more than the sync
//! itself; `pwrite` copies into the page cache with no fault and
//! `fdatasync` writes the dirty pages of an already allocated file without
//! any metadata (the file is fully written at creation and never changes
//! length).
//!
//! Concurrent `write_at` on disjoint ranges is sound: each is one positional
//! `pwrite` system call on a shared descriptor (no file offset is shared),
//! and the kernel orders them on the page cache. Even overlapping ranges
//! would only race on file content, never on memory of this process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::mmap::write_zeros;

/// A fixed-size segment file written with `pwrite`.
#[derive(Debug)]
pub struct PwriteFile {
    file: File,
    len_bytes: u64,
}

fn out_of_bounds(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

impl PwriteFile {
    /// Wraps `file`, which must be open for reading and writing and have its
    /// final, nonzero length.
    pub fn new(file: File) -> io::Result<Self> {
        let len_bytes = file.metadata()?.len();
        if len_bytes == 0 {
            return Err(out_of_bounds("segment length must be nonzero"));
        }
        Ok(PwriteFile { file, len_bytes })
    }

    fn check(&self, offset: u64, len: u64, what: &str) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len_bytes => Ok(()),
            _ => Err(out_of_bounds(what)),
        }
    }
}

impl super::segment_file::SegmentFile for PwriteFile {
    fn len(&self) -> u64 {
        self.len_bytes
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        // Never past the end: the file keeps its length forever, so a sync
        // never has to commit a size change.
        self.check(offset, bytes.len() as u64, "write past the end of the segment")?;
        self.file.write_all_at(bytes, offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len() as u64, "read past the end of the segment")?;
        self.file.read_exact_at(buf, offset)
    }

    /// `fdatasync` of the whole file: Linux has no durable range sync
    /// (`sync_file_range` does not flush the device cache nor wait for
    /// metadata), and only the pages dirtied since the last sync are
    /// written, so the range would save nothing.
    fn sync(&self, offset: u64, len: u64) -> io::Result<()> {
        self.check(offset, len, "sync past the end of the segment")?;
        self.file.sync_data()
    }

    fn zero_fill(&self) -> io::Result<()> {
        write_zeros(&self.file, self.len_bytes)
    }
}
