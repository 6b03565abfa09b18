//! The store's bytes: log records (one per phase transition) and the
//! checkpoint snapshot. Little-endian throughout; strings and values carry
//! their length first. Decoding checks every length against what is left, so
//! a damaged snapshot or record is a typed error, never a panic.
//!
//! ```text
//! record kind  payload
//!  1 Prepared     tx u128 | index u16 | value (the rest)
//!  2 Committed    tx u128 | index u16 | at_ns u64
//!  3 RolledBack   tx u128 | index u16 | at_ns u64 | had_prepare u8 (0 or 1)
//!  4 Refused      tx u128 | index u16 | at_ns u64 | code (u16 len, UTF-8) | message (u16 len, UTF-8)
//!
//! snapshot     magic "DBST" u32 | version u32 = 1 | forgotten_through_ns u64 | count u64 |
//!              count x (tx u128 | index u16 | tag u8 | at_ns u64 | tag-specific)
//!              tag 1 prepared: value (u32 len + bytes); 2 committed; 3 rolled back after a
//!              prepare; 4 rolled back without one; 5 refused: code, message as above
//! ```

use crate::participant::BranchId;
use crate::txn::TxId;

use super::Stored;

pub(super) const KIND_PREPARED: u8 = 1;
pub(super) const KIND_COMMITTED: u8 = 2;
pub(super) const KIND_ROLLED_BACK: u8 = 3;
pub(super) const KIND_REFUSED: u8 = 4;

const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"DBST");
const SNAPSHOT_VERSION: u32 = 1;

const TAG_PREPARED: u8 = 1;
const TAG_COMMITTED: u8 = 2;
const TAG_ROLLED_BACK: u8 = 3;
const TAG_NULL_ROLLED_BACK: u8 = 4;
const TAG_REFUSED: u8 = 5;

/// Longest refusal code and message kept (longer ones are cut at a
/// character boundary), so that a refusal record always fits its u16 length.
pub(super) const MAX_REFUSAL_TEXT_BYTES: usize = 1024;

/// Why bytes could not be decoded.
pub(super) type DecodeError = &'static str;

fn put_branch(out: &mut Vec<u8>, branch: BranchId) {
    out.extend_from_slice(&branch.tx.as_u128().to_le_bytes());
    out.extend_from_slice(&branch.index.to_le_bytes());
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    let text = cut(text);
    // `cut` keeps it under u16::MAX bytes.
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// `text` cut to at most `MAX_REFUSAL_TEXT_BYTES` at a character boundary.
pub(super) fn cut(text: &str) -> &str {
    if text.len() <= MAX_REFUSAL_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_REFUSAL_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The log record of a transition into `state`: (kind, payload).
pub(super) fn encode_record(branch: BranchId, state: &Stored) -> (u8, Vec<u8>) {
    let mut out = Vec::with_capacity(32);
    put_branch(&mut out, branch);
    let kind = match state {
        Stored::Prepared(value) => {
            out.extend_from_slice(value);
            KIND_PREPARED
        }
        Stored::Committed { at_ns } => {
            out.extend_from_slice(&at_ns.to_le_bytes());
            KIND_COMMITTED
        }
        Stored::RolledBack { at_ns, had_prepare } => {
            out.extend_from_slice(&at_ns.to_le_bytes());
            out.push(u8::from(*had_prepare));
            KIND_ROLLED_BACK
        }
        Stored::Refused { at_ns, code, message } => {
            out.extend_from_slice(&at_ns.to_le_bytes());
            put_text(&mut out, code);
            put_text(&mut out, message);
            KIND_REFUSED
        }
    };
    (kind, out)
}

/// A cursor over bytes whose every read is checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err("truncated");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }
    fn branch(&mut self) -> Result<BranchId, DecodeError> {
        let tx = TxId::from_u128(u128::from_le_bytes(self.array()?));
        Ok(BranchId { tx, index: self.u16()? })
    }
    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "text is not UTF-8")
    }
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("flag byte is neither 0 nor 1"),
        }
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() { Ok(()) } else { Err("trailing bytes") }
    }
}

/// Decodes a record of this store (`kind` 1..=4).
pub(super) fn decode_record(kind: u8, payload: &[u8]) -> Result<(BranchId, Stored), DecodeError> {
    let mut r = Reader { bytes: payload };
    let branch = r.branch()?;
    let state = match kind {
        KIND_PREPARED => Stored::Prepared(r.rest().to_vec()),
        KIND_COMMITTED => Stored::Committed { at_ns: r.u64()? },
        KIND_ROLLED_BACK => Stored::RolledBack { at_ns: r.u64()?, had_prepare: r.flag()? },
        KIND_REFUSED => Stored::Refused { at_ns: r.u64()?, code: r.text()?, message: r.text()? },
        _ => return Err("unknown record kind"),
    };
    r.finish()?;
    Ok((branch, state))
}

/// The snapshot of a checkpoint: the watermark and every remembered branch.
pub(super) fn encode_snapshot<'a>(
    forgotten_through_ns: u64,
    entries: impl ExactSizeIterator<Item = (BranchId, &'a Stored)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + entries.len() * 40);
    out.extend_from_slice(&SNAPSHOT_MAGIC.to_le_bytes());
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&forgotten_through_ns.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (branch, state) in entries {
        put_branch(&mut out, branch);
        let (tag, at_ns) = match state {
            Stored::Prepared(_) => (TAG_PREPARED, 0),
            Stored::Committed { at_ns } => (TAG_COMMITTED, *at_ns),
            Stored::RolledBack { at_ns, had_prepare: true } => (TAG_ROLLED_BACK, *at_ns),
            Stored::RolledBack { at_ns, had_prepare: false } => (TAG_NULL_ROLLED_BACK, *at_ns),
            Stored::Refused { at_ns, .. } => (TAG_REFUSED, *at_ns),
        };
        out.push(tag);
        out.extend_from_slice(&at_ns.to_le_bytes());
        match state {
            Stored::Prepared(value) => {
                // Values are bounded by `max_prepared_bytes` (<= 16 MiB).
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            Stored::Refused { code, message, .. } => {
                put_text(&mut out, code);
                put_text(&mut out, message);
            }
            Stored::Committed { .. } | Stored::RolledBack { .. } => {}
        }
    }
    out
}

/// A decoded snapshot.
pub(super) struct Snapshot {
    pub forgotten_through_ns: u64,
    pub entries: Vec<(BranchId, Stored)>,
}

pub(super) fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    let mut r = Reader { bytes };
    if r.u32()? != SNAPSHOT_MAGIC {
        return Err("not a branch store snapshot (bad magic)");
    }
    if r.u32()? != SNAPSHOT_VERSION {
        return Err("unknown snapshot version");
    }
    let forgotten_through_ns = r.u64()?;
    let count = r.u64()?;
    // Every entry takes at least 27 bytes: a count beyond that is damage,
    // and must not size an allocation.
    if count > (r.bytes.len() / 27) as u64 {
        return Err("entry count larger than the snapshot");
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let branch = r.branch()?;
        let tag = r.u8()?;
        let at_ns = r.u64()?;
        let state = match tag {
            TAG_PREPARED => {
                let len = r.u32()? as usize;
                Stored::Prepared(r.take(len)?.to_vec())
            }
            TAG_COMMITTED => Stored::Committed { at_ns },
            TAG_ROLLED_BACK => Stored::RolledBack { at_ns, had_prepare: true },
            TAG_NULL_ROLLED_BACK => Stored::RolledBack { at_ns, had_prepare: false },
            TAG_REFUSED => Stored::Refused { at_ns, code: r.text()?, message: r.text()? },
            _ => return Err("unknown entry tag"),
        };
        entries.push((branch, state));
    }
    r.finish()?;
    Ok(Snapshot { forgotten_through_ns, entries })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any payload of any kind decodes or is an error; never a panic.
        #[test]
        fn any_record_bytes_decode_or_fail(kind in 0u8..8, payload in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok((branch, state)) = decode_record(kind, &payload) {
                prop_assert_eq!(encode_record(branch, &state), (kind, payload));
            }
        }

        #[test]
        fn any_snapshot_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_snapshot(&bytes);
        }
    }

    fn branch(n: u128) -> BranchId {
        BranchId { tx: TxId::from_u128(n << 64 | 7), index: n as u16 }
    }

    fn states() -> Vec<Stored> {
        vec![
            Stored::Prepared(b"{\"amount\":3}".to_vec()),
            Stored::Prepared(Vec::new()),
            Stored::Committed { at_ns: 5 },
            Stored::RolledBack { at_ns: 6, had_prepare: true },
            Stored::RolledBack { at_ns: 7, had_prepare: false },
            Stored::Refused { at_ns: 8, code: "no_stock".into(), message: "sold out".into() },
        ]
    }

    #[test]
    fn records_round_trip() {
        for (i, state) in states().into_iter().enumerate() {
            let (kind, payload) = encode_record(branch(i as u128), &state);
            assert_eq!(decode_record(kind, &payload).unwrap(), (branch(i as u128), state));
        }
    }

    #[test]
    fn snapshot_round_trips() {
        let states = states();
        let entries: Vec<_> = states.iter().enumerate().map(|(i, s)| (branch(i as u128), s)).collect();
        let bytes = encode_snapshot(99, entries.iter().copied());
        let snapshot = decode_snapshot(&bytes).unwrap();
        assert_eq!(snapshot.forgotten_through_ns, 99);
        let expected: Vec<_> = entries.into_iter().map(|(b, s)| (b, s.clone())).collect();
        assert_eq!(snapshot.entries, expected);
    }

    #[test]
    fn every_truncation_and_bit_flip_of_a_snapshot_is_an_error_or_a_value() {
        let states = states();
        let bytes = encode_snapshot(1, states.iter().enumerate().map(|(i, s)| (branch(i as u128), s)));
        for len in 0..bytes.len() {
            assert!(decode_snapshot(&bytes[..len]).is_err(), "a truncation to {len} bytes decoded");
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            // Must not panic; a flip inside a value may still decode.
            let _ = decode_snapshot(&flipped);
        }
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(decode_record(KIND_COMMITTED, &[0; 17]).is_err());
        assert!(decode_record(9, &[0; 40]).is_err());
        let (kind, mut payload) = encode_record(branch(1), &Stored::Committed { at_ns: 1 });
        payload.push(0);
        assert!(decode_record(kind, &payload).is_err());
        let (kind, mut payload) = encode_record(branch(1), &Stored::RolledBack { at_ns: 1, had_prepare: true });
        *payload.last_mut().unwrap() = 2;
        assert!(decode_record(kind, &payload).is_err());
    }

    #[test]
    fn long_refusal_texts_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_REFUSAL_TEXT_BYTES);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_REFUSAL_TEXT_BYTES && cut.chars().all(|c| c == 'é'));
    }
}
