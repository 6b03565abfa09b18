//! The storage contract the log relies on, and its file-system implementation.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mmap::{MappedFile, write_zeros};
use super::pwrite::PwriteFile;
pub use super::segment_file::SegmentFile;

/// How segment files are written. Both write the same bytes to the same
/// offsets (the on-disk format does not depend on it); reads always use
/// `pread`. See docs/design.md, "Sync path", for the measured reason of the
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogBackend {
    /// `pwrite` into the page cache, `fdatasync` to make it durable (default).
    #[default]
    Pwrite,
    /// Stores into a shared writable mapping, `msync(MS_SYNC)` to make it
    /// durable.
    Mmap,
}

impl LogBackend {
    /// The name `FromStr` accepts: `pwrite` or `mmap`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogBackend::Pwrite => "pwrite",
            LogBackend::Mmap => "mmap",
        }
    }
}

impl std::fmt::Display for LogBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pwrite" => Ok(LogBackend::Pwrite),
            "mmap" => Ok(LogBackend::Mmap),
            other => Err(format!("unknown log backend {other:?} (pwrite or mmap)")),
        }
    }
}

/// A flat directory of files.
///
/// Contract: `create_segment` and `write_file_atomic` are durable when they
/// return (content, then name: temp file, fsync, rename, fsync directory),
/// so a crash leaves either no file or a complete one under the final name.
/// `remove` and `rename` are atomic but durable only after `sync_dir`.
/// Names are plain file names, no separators.
pub trait Storage: Send + Sync + 'static {
    /// Names of the regular files (symlinks, directories and other entries
    /// are never listed: the log only ever touches regular files).
    fn list(&self) -> io::Result<Vec<String>>;
    /// Names of entries that are not regular files (directories, symlinks,
    /// ...), so that a scan can report the ones named like log files.
    fn list_non_files(&self) -> io::Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Creates `name` holding `len` zero bytes, really written (never sparse),
    /// synced with its directory, written through `backend` from now on.
    fn create_segment(&self, name: &str, len: u64, backend: LogBackend) -> io::Result<Arc<dyn SegmentFile>>;
    /// Opens the existing regular file `name` for writing through `backend`.
    fn open_segment(&self, name: &str, backend: LogBackend) -> io::Result<Arc<dyn SegmentFile>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Replaces `name` with the concatenation of `parts`, atomically and durably.
    fn write_file_atomic(&self, name: &str, parts: &[&[u8]]) -> io::Result<()>;
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>>;
    fn sync_dir(&self) -> io::Result<()>;
    /// Opens `name` for positional reads. Like a file descriptor, the handle
    /// keeps reading the same file after it is renamed or removed.
    fn open_read(&self, name: &str) -> io::Result<Arc<dyn ReadFile>>;
    /// Like `write_file_atomic`, but `fill` writes the content in order, so
    /// a large file needs no buffer of its size. Nothing is left under
    /// `name` when `fill` fails.
    fn write_file_with(&self, name: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()>;
}

/// A file open for positional reads only (the id archive's run files).
///
/// Contract: the length is fixed (the file is immutable); `read_at` fills
/// all of `buf` or fails (`UnexpectedEof` past the end).
pub trait ReadFile: Send + Sync + Debug {
    /// Length in bytes when opened.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// Suffix of files being written; never valid, removed on open.
pub const TEMP_SUFFIX: &str = ".tmp";

/// The real thing: a directory of segment files, written with `pwrite` or
/// through a mapping (`LogBackend`).
#[derive(Debug, Clone)]
pub struct FsStorage {
    dir: PathBuf,
}

impl FsStorage {
    /// Uses `dir`, creating it (and syncing its parent) if needed.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(FsStorage { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad file name {name:?}")));
        }
        Ok(self.dir.join(name))
    }

    /// `path(name)` if it is a regular file. Checked without following
    /// symlinks, so a symlink named like a segment is never written through
    /// (whoever can swap it between this check and the open can write the
    /// directory anyway).
    fn regular_file(&self, name: &str) -> io::Result<PathBuf> {
        let path = self.path(name)?;
        if !fs::symlink_metadata(&path)?.file_type().is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name} is not a regular file")));
        }
        Ok(path)
    }
}

fn segment_file(file: File, backend: LogBackend) -> io::Result<Arc<dyn SegmentFile>> {
    Ok(match backend {
        LogBackend::Pwrite => Arc::new(PwriteFile::new(file)?),
        LogBackend::Mmap => Arc::new(MappedFile::new(file)?),
    })
}

impl SegmentFile for MappedFile {
    fn len(&self) -> u64 {
        MappedFile::len(self)
    }
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        MappedFile::write_at(self, offset, bytes)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        MappedFile::read_at(self, offset, buf)
    }
    fn sync(&self, offset: u64, len: u64) -> io::Result<()> {
        MappedFile::sync(self, offset, len)
    }
    fn zero_fill(&self) -> io::Result<()> {
        MappedFile::zero_fill(self)
    }
}

impl Storage for FsStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().into_string();
            match name {
                Ok(name) if entry.file_type()?.is_file() => names.push(name),
                _ => {}
            }
        }
        names.sort();
        Ok(names)
    }

    fn list_non_files(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn create_segment(&self, name: &str, len: u64, backend: LogBackend) -> io::Result<Arc<dyn SegmentFile>> {
        let path = self.path(name)?;
        let temp = self.path(&format!("{name}{TEMP_SUFFIX}"))?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&temp)?;
        // Zeros really written: a hole written through a mapping can SIGBUS
        // on a full disk, and unwritten extents make every later sync commit
        // metadata.
        write_zeros(&file, len)?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        self.sync_dir()?;
        segment_file(file, backend)
    }

    fn open_segment(&self, name: &str, backend: LogBackend) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new().read(true).write(true).open(self.regular_file(name)?)?;
        segment_file(file, backend)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from)?, self.path(to)?)
    }

    fn write_file_atomic(&self, name: &str, parts: &[&[u8]]) -> io::Result<()> {
        let path = self.path(name)?;
        let temp = self.path(&format!("{name}{TEMP_SUFFIX}"))?;
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
        let mut writer = io::BufWriter::with_capacity(1 << 20, file);
        for part in parts {
            writer.write_all(part)?;
        }
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        self.sync_dir()
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn open_read(&self, name: &str) -> io::Result<Arc<dyn ReadFile>> {
        let file = File::open(self.path(name)?)?;
        let len_bytes = file.metadata()?.len();
        Ok(Arc::new(ReadOnlyFile { file, len_bytes }))
    }

    fn write_file_with(&self, name: &str, fill: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        let path = self.path(name)?;
        let temp = self.path(&format!("{name}{TEMP_SUFFIX}"))?;
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp)?;
        let mut writer = io::BufWriter::with_capacity(1 << 20, file);
        let filled = fill(&mut writer).and_then(|()| writer.into_inner().map_err(|e| e.into_error()));
        let file = match filled {
            Ok(file) => file,
            Err(e) => {
                // Best effort: a leftover temp file is removed on the next open anyway.
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        self.sync_dir()
    }
}

/// `FsStorage::open_read`'s handle: `pread` on a read-only descriptor.
#[derive(Debug)]
struct ReadOnlyFile {
    file: File,
    len_bytes: u64,
}

impl ReadFile for ReadOnlyFile {
    fn len(&self) -> u64 {
        self.len_bytes
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}
