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

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::mmap::write_zeros;

/// Gathering buffers larger than this are not kept between writes.
const MAX_KEPT_GATHER_BYTES: usize = 1 << 20;

thread_local! {
    /// Where `write_parts_at` gathers a record's header, payload and padding
    /// (or a whole batch) into one `pwrite`: one per thread, reused.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

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

    /// One `pwrite` for all the parts: a copy into a per-thread buffer
    /// costs far less than a system call per part (measured: a durable
    /// batch of 1 000 transfers went from 3 000 calls to one).
    fn write_parts_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        if let [one] = parts {
            return self.write_at(offset, one);
        }
        GATHER.with(|cell| {
            // Not re-entered: nothing below calls back into the log.
            let mut buffer = cell.borrow_mut();
            buffer.clear();
            for part in parts {
                buffer.extend_from_slice(part);
            }
            let written = self.write_at(offset, &buffer);
            if buffer.capacity() > MAX_KEPT_GATHER_BYTES {
                *buffer = Vec::new();
            }
            written
        })
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

#[cfg(test)]
mod tests {
    use super::PwriteFile;
    use crate::wal::segment_file::SegmentFile;

    #[test]
    fn gathered_parts_land_contiguously_and_stay_in_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("s"))
            .unwrap();
        file.set_len(4096).unwrap();
        let segment = PwriteFile::new(file).unwrap();
        segment.write_parts_at(100, &[b"head", b"", b"payload", &[0u8; 3]]).unwrap();
        let mut back = [9u8; 16];
        segment.read_at(100, &mut back).unwrap();
        assert_eq!(&back[..14], b"headpayload\0\0\0");
        // The whole gathered range is checked, not each part.
        assert!(segment.write_parts_at(4090, &[b"abc", b"defg"]).is_err());
        let mut tail = [1u8; 6];
        segment.read_at(4090, &mut tail).unwrap();
        assert_eq!(tail, [0u8; 6], "nothing of a refused write lands");
        // A large gather is not kept, a later small one still works.
        let big = vec![7u8; 2 << 20];
        assert!(segment.write_parts_at(0, &[&big, b"x"]).is_err());
        segment.write_parts_at(0, &[b"a", b"b"]).unwrap();
    }
}
