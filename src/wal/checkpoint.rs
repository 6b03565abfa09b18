//! Checkpoint files: a 32-byte header then the engine's opaque snapshot.
//!
//! ```text
//! offset  size  field
//!      0     4  magic         u32 LE = "DCKP"
//!      4     4  version       u32 LE = 1
//!      8     8  lsn           u64 LE, also in the file name
//!     16     8  snapshot_len  u64 LE
//!     24     4  snapshot_crc  u32 LE crc32 of the snapshot
//!     28     4  header_crc    u32 LE crc32 of bytes 0..28
//!     32     .  snapshot
//! ```

use super::storage::Storage;
use super::{Lsn, WalError};

const MAGIC: u32 = u32::from_le_bytes(*b"DCKP");
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;

pub fn checkpoint_name(lsn: u64) -> String {
    format!("checkpoint-{lsn:016x}.ckpt")
}

pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("checkpoint-")?.strip_suffix(".ckpt")?;
    // Canonical spelling only (see `parse_segment_name`).
    super::segment::parse_hex16(hex)
}

fn header(lsn: u64, snapshot: &[u8]) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&lsn.to_le_bytes());
    header[16..24].copy_from_slice(&(snapshot.len() as u64).to_le_bytes());
    // The snapshot can be hundreds of MB: crc32fast hashes it in one
    // streaming pass and it is written straight from the caller's slice.
    header[24..28].copy_from_slice(&crc32fast::hash(snapshot).to_le_bytes());
    let header_crc = crc32fast::hash(&header[0..28]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
    header
}

/// Writes the checkpoint durably under its final name (temp, fsync, rename,
/// fsync directory: the storage contract of `write_file_atomic`).
pub fn write(storage: &dyn Storage, lsn: Lsn, snapshot: &[u8]) -> Result<(), WalError> {
    let name = checkpoint_name(lsn.0);
    let header = header(lsn.0, snapshot);
    storage.write_file_atomic(&name, &[&header, snapshot]).map_err(|e| WalError::io("write checkpoint", name, e))
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Validates a checkpoint file's bytes; returns the snapshot.
pub fn decode(mut bytes: Vec<u8>, expect_lsn: u64) -> Result<Vec<u8>, &'static str> {
    if bytes.len() < HEADER_BYTES {
        return Err("shorter than the checkpoint header");
    }
    if le_u32(&bytes, 0) != MAGIC {
        return Err("bad checkpoint magic");
    }
    if crc32fast::hash(&bytes[0..28]) != le_u32(&bytes, 28) {
        return Err("checkpoint header checksum mismatch");
    }
    if le_u32(&bytes, 4) != VERSION {
        return Err("unknown checkpoint version");
    }
    if le_u64(&bytes, 8) != expect_lsn {
        return Err("checkpoint header names another position than its file name");
    }
    if le_u64(&bytes, 16) != (bytes.len() - HEADER_BYTES) as u64 {
        return Err("checkpoint length mismatch (torn or truncated)");
    }
    if crc32fast::hash(&bytes[HEADER_BYTES..]) != le_u32(&bytes, 24) {
        return Err("checkpoint snapshot checksum mismatch");
    }
    bytes.drain(..HEADER_BYTES);
    Ok(bytes)
}
