//! `MemStorage`: an in-memory [`Storage`] that models what a crash keeps and
//! injects faults, for tests and for the engine's deterministic simulation.
//!
//! Each file has a *written* image (what reads see) and a *durable* image
//! (what survives a crash); `sync` copies a range from the first to the
//! second. The directory is modelled the same way: creating, renaming and
//! removing change the current name table, `sync_dir` makes it durable.
//! [`MemStorage::crash`] returns a new storage holding only durable names and
//! durable images. Safe Rust only.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use super::storage::{LogBackend, SegmentFile, Storage, TEMP_SUFFIX};

/// Operations that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultOp {
    /// `SegmentFile::sync`.
    Sync,
    /// `SegmentFile::write_at` (also the zero fill of a recycled segment).
    Write,
    /// `Storage::create_segment`.
    Create,
    /// `Storage::write_file_atomic`.
    WriteFile,
    /// `Storage::rename`.
    Rename,
    /// `Storage::remove`.
    Remove,
    /// `Storage::sync_dir`.
    SyncDir,
}

/// The error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// ENOSPC.
    NoSpace,
    /// EIO.
    Io,
}

impl FaultKind {
    fn error(self) -> io::Error {
        match self {
            FaultKind::NoSpace => io::Error::from_raw_os_error(28),
            FaultKind::Io => io::Error::from_raw_os_error(5),
        }
    }
}

#[derive(Debug, Default)]
struct Images {
    written: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct MemFile {
    images: Mutex<Images>,
}

impl MemFile {
    fn with_durable(bytes: Vec<u8>) -> Arc<MemFile> {
        Arc::new(MemFile { images: Mutex::new(Images { written: bytes.clone(), durable: bytes }) })
    }
}

struct LastWrite {
    file: Arc<MemFile>,
    offset: usize,
    before: Vec<u8>,
}

#[derive(Default)]
struct State {
    names: BTreeMap<String, Arc<MemFile>>,
    durable_names: BTreeMap<String, Arc<MemFile>>,
    faults: BTreeMap<FaultOp, (u64, FaultKind)>,
    /// Durability points passed so far (segment syncs, directory syncs, and
    /// the internal fsyncs of `create_segment` / `write_file_atomic`).
    sync_count: u64,
    /// Crash just before durability point number `n + 1`.
    crash_after_syncs: Option<u64>,
    crash_image: Option<MemStorage>,
    /// After the armed crash every operation fails with EIO.
    dead: bool,
    last_write: Option<LastWrite>,
}

impl State {
    fn check(&mut self, op: FaultOp) -> io::Result<()> {
        if self.dead {
            return Err(FaultKind::Io.error());
        }
        if let Some((count, kind)) = self.faults.get_mut(&op) {
            let kind = *kind;
            *count -= 1;
            if *count == 0 {
                self.faults.remove(&op);
            }
            return Err(kind.error());
        }
        Ok(())
    }

    /// Called before each durability point; may trigger the armed crash.
    fn durability_point(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(FaultKind::Io.error());
        }
        if self.crash_after_syncs == Some(self.sync_count) {
            self.crash_image = Some(self.durable_copy());
            self.dead = true;
            return Err(FaultKind::Io.error());
        }
        self.sync_count += 1;
        Ok(())
    }

    fn durable_copy(&self) -> MemStorage {
        let names: BTreeMap<String, Arc<MemFile>> = self
            .durable_names
            .iter()
            .map(|(name, file)| (name.clone(), MemFile::with_durable(file.images.lock().durable.clone())))
            .collect();
        let state = State { durable_names: names.clone(), names, ..State::default() };
        MemStorage { inner: Arc::new(Inner::new(state)) }
    }

    fn file(&self, name: &str) -> io::Result<Arc<MemFile>> {
        self.names.get(name).cloned().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }
}

struct Inner {
    state: Mutex<State>,
    /// Segment syncs wait while this is true (`hold_syncs`).
    held: Mutex<bool>,
    released: parking_lot::Condvar,
}

impl Inner {
    fn new(state: State) -> Inner {
        Inner { state: Mutex::new(state), held: Mutex::new(false), released: parking_lot::Condvar::new() }
    }
}

/// In-memory storage; cloning gives another handle to the same files.
#[derive(Clone)]
pub struct MemStorage {
    inner: Arc<Inner>,
}

impl Default for MemStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("MemStorage")
            .field("files", &state.names.keys().collect::<Vec<_>>())
            .field("sync_count", &state.sync_count)
            .finish()
    }
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> Self {
        MemStorage { inner: Arc::new(Inner::new(State::default())) }
    }

    /// Segment syncs block until [`release_syncs`](Self::release_syncs): a
    /// disk that withholds durability, to show that nothing is answered
    /// before it is durable.
    pub fn hold_syncs(&self) {
        *self.inner.held.lock() = true;
    }

    /// Lets held and later segment syncs proceed.
    pub fn release_syncs(&self) {
        *self.inner.held.lock() = false;
        self.inner.released.notify_all();
    }

    /// A new storage holding only what was durable: names as of the last
    /// `sync_dir` (or durable create/atomic write), contents as of the last
    /// sync of each range. This handle is unaffected.
    pub fn crash(&self) -> MemStorage {
        self.inner.state.lock().durable_copy()
    }

    /// Number of durability points passed so far.
    pub fn sync_count(&self) -> u64 {
        self.inner.state.lock().sync_count
    }

    /// Arms a crash just before durability point `n + 1`: that operation and
    /// every later one fail with EIO, and [`MemStorage::crash_image`] returns
    /// what was durable after `n` points.
    pub fn crash_after_syncs(&self, n: u64) {
        self.inner.state.lock().crash_after_syncs = Some(n);
    }

    /// The image saved by `crash_after_syncs`, once that crash point passed.
    pub fn crash_image(&self) -> Option<MemStorage> {
        self.inner.state.lock().crash_image.clone()
    }

    /// The next `count` calls of `op` fail with `kind`.
    pub fn fail_next(&self, op: FaultOp, count: u64, kind: FaultKind) {
        let mut state = self.inner.state.lock();
        if count == 0 {
            state.faults.remove(&op);
        } else {
            state.faults.insert(op, (count, kind));
        }
    }

    /// Current file names.
    pub fn file_names(&self) -> Vec<String> {
        self.inner.state.lock().names.keys().cloned().collect()
    }

    /// A file as written (synced or not).
    pub fn read_written(&self, name: &str) -> Option<Vec<u8>> {
        let file = self.inner.state.lock().names.get(name).cloned()?;
        let images = file.images.lock();
        Some(images.written.clone())
    }

    /// A file as a crash now would leave it.
    pub fn read_durable(&self, name: &str) -> Option<Vec<u8>> {
        let file = self.inner.state.lock().names.get(name).cloned()?;
        let images = file.images.lock();
        Some(images.durable.clone())
    }

    fn edit(&self, name: &str, edit: impl Fn(&mut Vec<u8>) -> bool) -> bool {
        let Some(file) = self.inner.state.lock().names.get(name).cloned() else {
            return false;
        };
        let mut images = file.images.lock();
        let Images { written, durable } = &mut *images;
        edit(written) & edit(durable)
    }

    /// Flips bit `bit` (0 = lowest bit of byte 0) of `name` in both images.
    /// Returns false when the file or bit does not exist.
    pub fn flip_bit(&self, name: &str, bit: u64) -> bool {
        let byte = (bit / 8) as usize;
        self.edit(name, |bytes| match bytes.get_mut(byte) {
            Some(b) => {
                *b ^= 1 << (bit % 8);
                true
            }
            None => false,
        })
    }

    /// Overwrites bytes of `name` in both images (e.g. a record's bytes at a
    /// wrong offset or in a wrong segment). False when out of range.
    pub fn set_bytes(&self, name: &str, offset: u64, new: &[u8]) -> bool {
        let start = offset as usize;
        self.edit(name, |bytes| match bytes.get_mut(start..start + new.len()) {
            Some(range) => {
                range.copy_from_slice(new);
                true
            }
            None => false,
        })
    }

    /// Tears the most recent `write_at`: only its first `keep_bytes` bytes
    /// stay, the rest go back to what was there before, in both images.
    pub fn tear_last_write(&self, keep_bytes: usize) -> bool {
        let Some(last) = self.inner.state.lock().last_write.take() else {
            return false;
        };
        let mut images = last.file.images.lock();
        let Images { written, durable } = &mut *images;
        for image in [written, durable] {
            for (i, &old) in last.before.iter().enumerate().skip(keep_bytes) {
                if let Some(b) = image.get_mut(last.offset + i) {
                    *b = old;
                }
            }
        }
        true
    }

    fn make_durable(&self, op: FaultOp, name: &str, bytes: Vec<u8>) -> io::Result<Arc<MemFile>> {
        let mut state = self.inner.state.lock();
        state.check(op)?;
        let temp = format!("{name}{TEMP_SUFFIX}");
        state.names.insert(temp.clone(), MemFile::with_durable(Vec::new()));
        // Point 1: the temp file's content is durable.
        state.durability_point()?;
        let file = MemFile::with_durable(bytes);
        state.names.remove(&temp);
        state.names.insert(name.to_owned(), file.clone());
        // Point 2: the directory (rename) is durable.
        state.durability_point()?;
        state.durable_names = state.names.clone();
        Ok(file)
    }
}

#[derive(Debug)]
struct MemSegment {
    storage: MemStorage,
    file: Arc<MemFile>,
    len_bytes: u64,
}

impl fmt::Debug for MemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MemFile")
    }
}

fn range(offset: u64, len: u64, file_len: u64) -> io::Result<std::ops::Range<usize>> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(offset as usize..end as usize),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "range past the end of the file")),
    }
}

impl SegmentFile for MemSegment {
    fn len(&self) -> u64 {
        self.len_bytes
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let range = range(offset, bytes.len() as u64, self.len_bytes)?;
        let mut state = self.storage.inner.state.lock();
        state.check(FaultOp::Write)?;
        let mut images = self.file.images.lock();
        let target = images
            .written
            .get_mut(range.clone())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "file shorter than its length"))?;
        let before = target.to_vec();
        target.copy_from_slice(bytes);
        state.last_write = Some(LastWrite { file: self.file.clone(), offset: range.start, before });
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let range = range(offset, buf.len() as u64, self.len_bytes)?;
        let images = self.file.images.lock();
        let source =
            images.written.get(range).ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short file"))?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn sync(&self, offset: u64, len: u64) -> io::Result<()> {
        let range = range(offset, len, self.len_bytes)?;
        {
            let mut held = self.storage.inner.held.lock();
            while *held {
                self.storage.inner.released.wait(&mut held);
            }
        }
        let mut state = self.storage.inner.state.lock();
        state.check(FaultOp::Sync)?;
        state.durability_point()?;
        let mut images = self.file.images.lock();
        let Images { written, durable } = &mut *images;
        if durable.len() < written.len() {
            durable.resize(written.len(), 0);
        }
        if let (Some(from), Some(to)) = (written.get(range.clone()), durable.get_mut(range)) {
            to.copy_from_slice(from);
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let state = self.inner.state.lock();
        if state.dead {
            return Err(FaultKind::Io.error());
        }
        Ok(state.names.keys().cloned().collect())
    }

    // The backend is a property of the file system path; this storage models
    // the medium, which both backends see the same way.
    fn create_segment(&self, name: &str, len: u64, _backend: LogBackend) -> io::Result<Arc<dyn SegmentFile>> {
        let size =
            usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        let file = self.make_durable(FaultOp::Create, name, vec![0; size])?;
        Ok(Arc::new(MemSegment { storage: self.clone(), file, len_bytes: len }))
    }

    fn open_segment(&self, name: &str, _backend: LogBackend) -> io::Result<Arc<dyn SegmentFile>> {
        let state = self.inner.state.lock();
        if state.dead {
            return Err(FaultKind::Io.error());
        }
        let file = state.file(name)?;
        let len_bytes = file.images.lock().written.len() as u64;
        Ok(Arc::new(MemSegment { storage: self.clone(), file, len_bytes }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.inner.state.lock();
        state.check(FaultOp::Remove)?;
        state.file(name)?;
        state.names.remove(name);
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.inner.state.lock();
        state.check(FaultOp::Rename)?;
        let file = state.file(from)?;
        state.names.remove(from);
        state.names.insert(to.to_owned(), file);
        Ok(())
    }

    fn write_file_atomic(&self, name: &str, parts: &[&[u8]]) -> io::Result<()> {
        self.make_durable(FaultOp::WriteFile, name, parts.concat()).map(|_| ())
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        let file = {
            let state = self.inner.state.lock();
            if state.dead {
                return Err(FaultKind::Io.error());
            }
            state.file(name)?
        };
        let images = file.images.lock();
        Ok(images.written.clone())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.inner.state.lock();
        state.check(FaultOp::SyncDir)?;
        state.durability_point()?;
        state.durable_names = state.names.clone();
        Ok(())
    }

    fn open_read(&self, name: &str) -> io::Result<Arc<dyn super::storage::ReadFile>> {
        let state = self.inner.state.lock();
        if state.dead {
            return Err(FaultKind::Io.error());
        }
        let file = state.file(name)?;
        let len_bytes = file.images.lock().written.len() as u64;
        Ok(Arc::new(MemReadFile { storage: self.clone(), file, len_bytes }))
    }

    fn write_file_with(
        &self,
        name: &str,
        fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut bytes = Vec::new();
        fill(&mut bytes)?;
        self.make_durable(FaultOp::WriteFile, name, bytes).map(|_| ())
    }
}

/// `MemStorage::open_read`'s handle: reads the written image of the file it
/// opened, even after a rename or removal (like a descriptor).
#[derive(Debug)]
struct MemReadFile {
    storage: MemStorage,
    file: Arc<MemFile>,
    len_bytes: u64,
}

impl super::storage::ReadFile for MemReadFile {
    fn len(&self) -> u64 {
        self.len_bytes
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.storage.inner.state.lock().dead {
            return Err(FaultKind::Io.error());
        }
        let images = self.file.images.lock();
        let source = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= images.written.len() as u64)
            .and_then(|end| images.written.get(offset as usize..end as usize))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"))?;
        buf.copy_from_slice(source);
        Ok(())
    }
}
