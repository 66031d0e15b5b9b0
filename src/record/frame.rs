//! The two wire formats of records inside a segment (and a blocking partition's regions),
//! defined, encoded and decoded here and nowhere else.
//!
//! ```text
//!  length-prefixed (RecordWriter / SingleInputGate, blocking partition regions, user events)
//!    [ len : u32 LE ][ payload : len bytes ]            framed_len(len) = 4 + len
//!    the prefix never spans segments (a segment with fewer than LEN_PREFIX bytes left is
//!    finished); the payload may span segments of the same channel (record/ handles that),
//!    and does only when the record does not fit the rest of its segment
//!    in a network-stack segment, a prefix at a 4-aligned offset is also an atomic word:
//!    written last (Release) over UNWRITTEN, so a gate polling it finds the record in its
//!    own line (`buffer::builder`, "published in the data"); the bytes are the same
//!
//!  slot-framed (StreamWriter / StreamReader: one writer, one spinning reader)
//!    [ slot : u32 = len | SLOT_VALID ][ payload : len bytes ][ pad to 4 ]
//!                                                        slot_framed_len(len) = (4 + len + 3) & !3
//!    the slot is an aligned atomic word the writer stores last (Release) and the reader
//!    polls (Acquire): 0 means "nothing yet"; the protocol around it is in
//!    `buffer::builder` (write_slotted / slot_record), the word's encoding is here
//! ```
//!
//! This module is a leaf: it depends on nothing (a record's serializer is passed in as a
//! closure), so the buffer layer and the codec may both use it. Everything here is pure and
//! checked by the unit tests below.

/// Bytes of a record's length prefix, and of a slot (the one constant for both: a `u32`).
pub const LEN_PREFIX: usize = 4;

/// The word a network-stack segment holds where the next length-prefixed record will start
/// (at a 4-aligned offset), until its prefix is written: no record is this long.
pub const UNWRITTEN: u32 = u32::MAX;

/// Marks a published slot of a slot-framed record (the other 31 bits are the length).
pub const SLOT_VALID: u32 = 1 << 31;

/// The largest payload a slot can describe.
pub const MAX_SLOT_PAYLOAD: usize = SLOT_VALID as usize - 1;

/// Bytes a length-prefixed record of `len` payload bytes takes.
#[inline]
pub const fn framed_len(len: usize) -> usize {
    LEN_PREFIX + len
}

/// Writes the length prefix of a `len`-byte payload into `dst[..LEN_PREFIX]`.
///
/// # Panics
/// If `dst` is shorter than [`LEN_PREFIX`].
#[inline(always)]
pub fn put_len(dst: &mut [u8], len: usize) {
    debug_assert!(len <= u32::MAX as usize, "a record length fits a u32 (checked against the limit first)");
    dst[..LEN_PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Encodes a payload of `len` bytes length-prefixed into `dst`, which must be exactly
/// [`framed_len`]`(len)` bytes: the prefix, then `serialize` fills the `len` payload bytes
/// (for a record: `|out| record.serialize_into(out)` with `len = record.serialized_len()`).
#[inline(always)]
pub fn encode(dst: &mut [u8], len: usize, serialize: impl FnOnce(&mut [u8])) {
    debug_assert_eq!(dst.len(), framed_len(len));
    put_len(dst, len);
    serialize(&mut dst[LEN_PREFIX..]);
}

/// Encodes `payload` length-prefixed into a new vector (events and tests; not the record
/// path, which encodes in place).
pub fn encode_to_vec(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; framed_len(payload.len())];
    put_len(&mut v, payload.len());
    v[LEN_PREFIX..].copy_from_slice(payload);
    v
}

/// The payload length a length prefix at the start of `bytes` announces, or `None` when
/// `bytes` is shorter than a prefix. The length is the peer's word: check it against a limit.
#[inline(always)]
pub fn peek_len(bytes: &[u8]) -> Option<usize> {
    let p: [u8; LEN_PREFIX] = bytes.get(..LEN_PREFIX)?.try_into().ok()?;
    Some(u32::from_le_bytes(p) as usize)
}

/// What the front of some bytes holds, in the length-prefixed format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Fewer bytes than a length prefix.
    NoPrefix,
    /// A prefix announcing `len` payload bytes, not all of which are there.
    Partial {
        /// The announced payload length.
        len: usize,
    },
    /// A whole record: its payload, and the bytes it takes with its prefix.
    Whole {
        /// The payload, borrowed from the input.
        payload: &'a [u8],
        /// `framed_len(payload.len())`: how far to move past it.
        framed: usize,
    },
}

/// Decodes the record at the front of `bytes`.
#[inline(always)]
pub fn decode(bytes: &[u8]) -> Frame<'_> {
    let Some(len) = peek_len(bytes) else {
        return Frame::NoPrefix;
    };
    match bytes.get(LEN_PREFIX..).and_then(|rest| rest.get(..len)) {
        Some(payload) => Frame::Whole { payload, framed: framed_len(len) },
        None => Frame::Partial { len },
    }
}

/// Bytes a slot-framed record of `len` payload bytes takes in a segment: its slot, the
/// payload, and padding to the next multiple of 4 (slots are aligned words).
#[inline]
pub const fn slot_framed_len(len: usize) -> usize {
    (LEN_PREFIX + len + 3) & !3
}

/// The slot word that publishes a `len`-byte payload (`len` at most [`MAX_SLOT_PAYLOAD`]).
#[inline]
pub const fn slot_word(len: usize) -> u32 {
    debug_assert!(len <= MAX_SLOT_PAYLOAD);
    len as u32 | SLOT_VALID
}

/// The payload length a slot word announces, or `None` for a slot not published yet.
#[inline]
pub const fn slot_len(word: u32) -> Option<u32> {
    if word & SLOT_VALID == 0 {
        None
    } else {
        Some(word & !SLOT_VALID)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    #[test]
    fn a_length_prefixed_record_round_trips_and_reports_its_framed_size() {
        for payload in [&b""[..], b"x", b"hello world", &[7u8; 300][..]] {
            let bytes = encode_to_vec(payload);
            assert_eq!(bytes.len(), framed_len(payload.len()));
            assert_eq!(peek_len(&bytes), Some(payload.len()));
            assert_eq!(decode(&bytes), Frame::Whole { payload, framed: bytes.len() });
        }
    }

    #[test]
    fn encode_writes_the_prefix_then_the_serialized_record_in_place() {
        let rec: &[u8] = b"abc";
        let mut dst = [0xffu8; 7];
        encode(&mut dst[..], 3, |out| rec.serialize_into(out));
        assert_eq!(dst, [3, 0, 0, 0, b'a', b'b', b'c']);
        let s = "hé";
        let mut dst = vec![0u8; framed_len(s.serialized_len())];
        encode(&mut dst[..], s.serialized_len(), |out| s.serialize_into(out));
        assert_eq!(decode(&dst), Frame::Whole { payload: s.as_bytes(), framed: dst.len() });
    }

    #[test]
    fn records_follow_each_other_and_a_cut_is_partial_or_without_prefix() {
        let mut stream = encode_to_vec(b"one");
        stream.extend(encode_to_vec(b"second"));
        let Frame::Whole { payload, framed } = decode(&stream) else { panic!("first record whole") };
        assert_eq!(payload, b"one");
        assert_eq!(decode(&stream[framed..]), Frame::Whole { payload: b"second", framed: 10 });
        // Cut inside the second payload, inside its prefix, and at nothing.
        assert_eq!(decode(&stream[framed..stream.len() - 1]), Frame::Partial { len: 6 });
        assert_eq!(decode(&stream[framed..framed + 3]), Frame::NoPrefix);
        assert_eq!(decode(&[]), Frame::NoPrefix);
        assert_eq!(peek_len(&[1, 2, 3]), None);
    }

    #[test]
    fn a_huge_announced_length_is_partial_not_a_panic_or_an_overflow() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2];
        assert_eq!(decode(&bytes), Frame::Partial { len: u32::MAX as usize });
    }

    #[test]
    fn slot_framed_records_stay_word_aligned() {
        assert_eq!(slot_framed_len(0), 4);
        assert_eq!(slot_framed_len(1), 8);
        assert_eq!(slot_framed_len(4), 8);
        assert_eq!(slot_framed_len(5), 12);
        for len in 0..64 {
            let n = slot_framed_len(len);
            assert_eq!(n % 4, 0);
            assert!(n >= LEN_PREFIX + len && n < LEN_PREFIX + len + 4);
        }
    }

    #[test]
    fn a_slot_word_announces_its_length_and_zero_is_not_published() {
        assert_eq!(slot_len(0), None);
        assert_eq!(slot_len(17), None, "a length without the valid bit is not published");
        for len in [0usize, 1, 4096, MAX_SLOT_PAYLOAD] {
            assert_eq!(slot_len(slot_word(len)), Some(len as u32));
        }
    }
}
