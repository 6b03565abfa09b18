//! Record codec: the fixed 32-byte header and its validation.
//!
//! ```text
//! offset  size  field
//!      0     4  magic     u32 LE = MAGIC ("DWAL"), never zero
//!      4     4  len       u32 LE payload length in bytes
//!      8     8  lsn       u64 LE global position of this header
//!     16     8  segment   u64 LE id of the segment file holding it
//!     24     1  kind      u8     1..=0xFD engine kinds, 0xFE sync marker, 0xFF padding
//!     25     3  reserved  zero
//!     28     4  crc       u32 LE crc32 of bytes 0..28 then the payload
//!     32   len  payload   (padding records: not covered by the crc)
//!   then zero bytes up to the next multiple of 8
//! ```

/// Header magic, the ASCII bytes `DWAL` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"DWAL");
/// Size of the fixed header in bytes.
pub const HEADER_BYTES: u64 = 32;
/// Every record starts at a multiple of this.
pub const ALIGN_BYTES: u64 = 8;
/// Kind 0 never validates, so an all-zero header is never a record.
pub const KIND_INVALID: u8 = 0;
/// Written by the sync leader before a sync; payload is the u64 durable
/// position at that moment (everything below it was already synced).
pub const KIND_SYNC_MARKER: u8 = 0xFE;
/// Fills the unusable rest of a segment; its payload is not covered by the CRC.
pub const KIND_PADDING: u8 = 0xFF;
/// Bytes of a sync marker's payload.
pub const SYNC_MARKER_PAYLOAD_BYTES: u64 = 8;

/// True for the kinds the engine may use.
pub fn is_engine_kind(kind: u8) -> bool {
    kind != KIND_INVALID && kind != KIND_SYNC_MARKER && kind != KIND_PADDING
}

/// Bytes a record with `payload_bytes` of payload occupies in the log.
pub fn record_bytes(payload_bytes: u64) -> u64 {
    (HEADER_BYTES + payload_bytes).div_ceil(ALIGN_BYTES) * ALIGN_BYTES
}

/// Encodes a header. `payload` is hashed unless the record is padding.
pub fn encode_header(lsn: u64, segment: u64, kind: u8, payload: &[u8]) -> [u8; 32] {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    encode_header_len(lsn, segment, kind, len, payload)
}

/// Encodes a padding header covering `total_bytes` (header included).
pub fn encode_padding(lsn: u64, segment: u64, total_bytes: u64) -> Option<[u8; 32]> {
    let len = u32::try_from(total_bytes.checked_sub(HEADER_BYTES)?).ok()?;
    Some(encode_header_len(lsn, segment, KIND_PADDING, len, &[]))
}

fn encode_header_len(lsn: u64, segment: u64, kind: u8, len: u32, payload: &[u8]) -> [u8; 32] {
    let mut header = [0u8; 32];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&len.to_le_bytes());
    header[8..16].copy_from_slice(&lsn.to_le_bytes());
    header[16..24].copy_from_slice(&segment.to_le_bytes());
    header[24] = kind;
    let crc = checksum(&header[0..28], payload);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// A record that validated at its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    pub kind: u8,
    /// Offset of the payload inside the buffer given to [`decode`].
    pub payload_start: usize,
    pub payload_len: usize,
    /// Bytes the record occupies (header + payload + alignment).
    pub total_bytes: u64,
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// All 32 header bytes are zero: nothing was written here.
    Zero,
    /// Fewer than 32 bytes remain.
    Short,
    BadMagic,
    /// The length runs past the end of the segment or over the limit.
    BadLength,
    /// The header names another position (stale or misdirected record).
    WrongLsn,
    /// The header names another segment (stale or misdirected record).
    WrongSegment,
    BadKind,
    ReservedNotZero,
    BadChecksum,
}

impl Invalid {
    /// The problem kind `dtc verify` reports for it.
    pub fn kind(self) -> &'static str {
        match self {
            Invalid::BadChecksum => "checksum_mismatch",
            _ => "invalid_record",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Invalid::Zero => "zero bytes where a record header was expected",
            Invalid::Short => "segment ends inside a record header",
            Invalid::BadMagic => "bad magic",
            Invalid::BadLength => "record length runs past the segment end",
            Invalid::WrongLsn => "header names another position (stale or misdirected)",
            Invalid::WrongSegment => "header names another segment (stale or misdirected)",
            Invalid::BadKind => "record kind 0",
            Invalid::ReservedNotZero => "reserved header bytes are not zero",
            Invalid::BadChecksum => "checksum mismatch",
        }
    }
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Validates the record at `buf[0..]`, expected at global position
/// `expect_lsn` inside segment `expect_segment`. `buf` ends where the segment
/// ends. Never panics, whatever the bytes.
pub fn decode(buf: &[u8], expect_lsn: u64, expect_segment: u64) -> Result<Decoded, Invalid> {
    if buf.len() < HEADER_BYTES as usize {
        return Err(Invalid::Short);
    }
    let header = &buf[..HEADER_BYTES as usize];
    if read_u32(header, 0) != MAGIC {
        return Err(if header.iter().all(|&b| b == 0) { Invalid::Zero } else { Invalid::BadMagic });
    }
    let len = read_u32(header, 4) as u64;
    let total_bytes = record_bytes(len);
    if total_bytes > buf.len() as u64 {
        return Err(Invalid::BadLength);
    }
    if read_u64(header, 8) != expect_lsn {
        return Err(Invalid::WrongLsn);
    }
    if read_u64(header, 16) != expect_segment {
        return Err(Invalid::WrongSegment);
    }
    let kind = header[24];
    if kind == KIND_INVALID {
        return Err(Invalid::BadKind);
    }
    if header[25..28] != [0, 0, 0] {
        return Err(Invalid::ReservedNotZero);
    }
    let payload_start = HEADER_BYTES as usize;
    let payload_len = len as usize;
    let covered: &[u8] = if kind == KIND_PADDING { &[] } else { &buf[payload_start..payload_start + payload_len] };
    if checksum(&header[0..28], covered) != read_u32(header, 28) {
        return Err(Invalid::BadChecksum);
    }
    if kind == KIND_SYNC_MARKER && len != SYNC_MARKER_PAYLOAD_BYTES {
        return Err(Invalid::BadLength);
    }
    Ok(Decoded { kind, payload_start, payload_len, total_bytes })
}

/// The durable position a sync marker states. Only call on a decoded marker.
pub fn marker_durable(buf: &[u8], decoded: &Decoded) -> u64 {
    if decoded.payload_len != SYNC_MARKER_PAYLOAD_BYTES as usize {
        return 0;
    }
    read_u64(buf, decoded.payload_start)
}
