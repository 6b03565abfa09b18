//! The format file: the data directory describes its own log, so that every
//! opener (the coordinator, the offline tools, the saga executor) uses the
//! parameters the log was written with, whatever it was configured with.
//!
//! ```text
//! offset  size  field
//!      0     4  magic               u32 LE = "DFMT"
//!      4     4  version             u32 LE = 1
//!      8     8  segment_size_bytes  u64 LE (a multiple of 4096, 8 KiB ..= 1 GiB)
//!     16     8  max_segments        u64 LE (2 ..= 2^20)
//!     24     4  reserved            zero
//!     28     4  crc                 u32 LE crc32 of bytes 0..28
//! ```
//!
//! Written once, when a log is created (or when an older directory without it
//! is first opened), with `Storage::write_file_atomic`, so a crash leaves
//! either no format file or a complete one. Never rewritten afterwards: the
//! parameters of a directory do not change.

use super::storage::Storage;
use super::{WalConfig, WalError};

/// Name of the format file inside the data directory.
pub const FORMAT_FILE: &str = "dtc-format";

const MAGIC: u32 = u32::from_le_bytes(*b"DFMT");
/// The only version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Exact length of a version-1 format file.
pub const FORMAT_BYTES: usize = 32;

/// The on-disk parameters of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub segment_size_bytes: u64,
    pub max_segments: usize,
}

impl Format {
    pub fn of(config: &WalConfig) -> Self {
        Format { segment_size_bytes: config.segment_size_bytes, max_segments: config.max_segments }
    }

    /// `config` with this format's parameters; logs at info level when the
    /// caller asked for other ones (they only matter for a new directory).
    pub fn apply(self, config: &WalConfig) -> WalConfig {
        if Format::of(config) != self {
            tracing::info!(
                asked_segment_size_bytes = config.segment_size_bytes,
                asked_max_segments = config.max_segments,
                segment_size_bytes = self.segment_size_bytes,
                max_segments = self.max_segments,
                "the data directory's log format differs from the configuration; using the directory's"
            );
        }
        WalConfig { segment_size_bytes: self.segment_size_bytes, max_segments: self.max_segments, ..config.clone() }
    }

    pub fn encode(self) -> [u8; FORMAT_BYTES] {
        let mut bytes = [0u8; FORMAT_BYTES];
        bytes[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.segment_size_bytes.to_le_bytes());
        bytes[16..24].copy_from_slice(&(self.max_segments as u64).to_le_bytes());
        let crc = crc32fast::hash(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Validates a format file's bytes. Never panics: damage is
    /// `WalError::Corrupt`, a version this code does not know is
    /// `WalError::Config` (written by a newer dtc).
    pub fn decode(bytes: &[u8]) -> Result<Format, WalError> {
        let corrupt = |reason: &str| WalError::Corrupt { file: FORMAT_FILE.into(), offset: 0, reason: reason.into() };
        let (Some(magic), Some(version)) = (le_u32(bytes, 0), le_u32(bytes, 4)) else {
            return Err(corrupt("format file shorter than its header"));
        };
        if magic != MAGIC {
            return Err(corrupt("bad format file magic"));
        }
        // The version is checked before the length and crc: a newer version
        // may have another layout, and deserves "unsupported", not "corrupt".
        if version != FORMAT_VERSION {
            return Err(WalError::Config {
                reason: format!(
                    "{FORMAT_FILE} has format version {version}; this dtc reads version {FORMAT_VERSION} only"
                ),
            });
        }
        if bytes.len() != FORMAT_BYTES {
            return Err(corrupt(&format!("format file has {} bytes, expected {FORMAT_BYTES}", bytes.len())));
        }
        if le_u32(bytes, 28) != Some(crc32fast::hash(&bytes[0..28])) {
            return Err(corrupt("format file checksum mismatch"));
        }
        if bytes[24..28] != [0; 4] {
            return Err(corrupt("format file reserved bytes are not zero"));
        }
        let segment_size_bytes = le_u64(bytes, 8).unwrap_or(0);
        let max_segments = usize::try_from(le_u64(bytes, 16).unwrap_or(0)).unwrap_or(usize::MAX);
        let format = Format { segment_size_bytes, max_segments };
        let probe = WalConfig { segment_size_bytes, max_segments, ..WalConfig::default() };
        probe.validate().map_err(|e| corrupt(&format!("format file holds unusable parameters: {e}")))?;
        Ok(format)
    }
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Reads the format file: `None` if the directory has none (new, or
/// written before format files existed).
pub fn read(storage: &dyn Storage, names: &[String]) -> Result<Option<Format>, WalError> {
    if !names.iter().any(|n| n == FORMAT_FILE) {
        return Ok(None);
    }
    // A format file is 32 bytes; a much larger file under its name is not
    // read into memory.
    let len_bytes = storage
        .open_read(FORMAT_FILE)
        .map(|file| file.len())
        .map_err(|e| WalError::io("read format file", FORMAT_FILE, e))?;
    if len_bytes > 4096 {
        return Err(WalError::Corrupt {
            file: FORMAT_FILE.into(),
            offset: 0,
            reason: format!("format file has {len_bytes} bytes, expected {FORMAT_BYTES}"),
        });
    }
    let bytes = storage.read_file(FORMAT_FILE).map_err(|e| WalError::io("read format file", FORMAT_FILE, e))?;
    Format::decode(&bytes).map(Some)
}

/// Writes the format file durably (temp, fsync, rename, fsync directory).
pub fn write(storage: &dyn Storage, format: Format) -> Result<(), WalError> {
    storage
        .write_file_atomic(FORMAT_FILE, &[&format.encode()])
        .map_err(|e| WalError::io("write format file", FORMAT_FILE, e))
}
