//! The synthetic record of `shmflow run shuffle`: a sequence number and a payload derived
//! from it, checked byte by byte when read (also read by the fuzz targets).

use shmflow::record::{FromRecord, Record};
use shmflow::{Error, Result};

/// A synthetic record of the shuffle job: a sequence number and a payload derived from
/// it. Serializes in place without allocation; decoding checks every payload byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthetic {
    /// Sequence number (also the key).
    pub seq: u64,
    /// Payload bytes (at least 8).
    pub len: u32,
    /// Payload bytes that did not match the pattern (after decoding).
    pub bad: u32,
}

/// The payload pattern after the sequence number: byte `k` is `31 * seq + k` (mod 256), so
/// the payload is a run of the byte cycle 0, 1, .., 255 starting at `31 * seq`. Written and
/// checked by copying and comparing slices of [`CYCLE`] (memcpy and memcmp speed), not
/// byte by byte.
pub(super) fn pattern_start(seq: u64) -> usize {
    usize::from((seq as u8).wrapping_mul(31))
}

/// Two rounds of the byte cycle: any 256 consecutive pattern bytes are one slice of it.
static CYCLE: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// `dst = src` for slices of one length: two overlapping 8-byte moves for 8..=16 bytes
/// (the 16 B record's pattern: a `memcpy` call cost more than the copy), `memcpy` otherwise.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    if (8..=16).contains(&dst.len()) && src.len() == dst.len() {
        if let (Some(d), Some(s)) = (dst.first_chunk_mut::<8>(), src.first_chunk::<8>()) {
            *d = *s;
        }
        if let (Some(d), Some(s)) = (dst.last_chunk_mut::<8>(), src.last_chunk::<8>()) {
            *d = *s;
        }
    } else {
        dst.copy_from_slice(src);
    }
}

/// `a == b` for slices of one length: two overlapping 8-byte compares for 8..=16 bytes
/// (inline, where a `bcmp` call was 12% of the 16 B job), `bcmp` otherwise.
#[inline(always)]
fn equal_short(a: &[u8], b: &[u8]) -> bool {
    if (8..=16).contains(&a.len()) && a.len() == b.len() {
        a.first_chunk::<8>() == b.first_chunk::<8>() && a.last_chunk::<8>() == b.last_chunk::<8>()
    } else {
        a == b
    }
}

/// How many bytes of `a` and `b` differ: only for a chunk that does, so out of line (the
/// count loop kept the sink's per-record function from inlining into the gate's drain).
#[cold]
#[inline(never)]
fn count_mismatches(a: &[u8], b: &[u8]) -> u32 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u32
}

/// The 8 pattern bytes of `seq` (the whole payload after the sequence number of a 16 B
/// record, the default): one load from [`CYCLE`].
#[inline(always)]
fn pattern_word(seq: u64) -> u64 {
    let s = pattern_start(seq);
    // s <= 255, so s + 8 <= 263 lies inside the 512-byte table (the compiler sees it too).
    CYCLE.get(s..s + 8).and_then(|w| w.first_chunk::<8>()).map_or(0, |w| u64::from_le_bytes(*w))
}

/// The pattern bytes of `seq` for `out` (the bytes after the sequence number).
#[inline]
pub(super) fn write_pattern(seq: u64, out: &mut [u8]) {
    let s = pattern_start(seq);
    for chunk in out.chunks_mut(256) {
        copy_short(chunk, &CYCLE[s..s + chunk.len()]);
    }
}

/// How many bytes of `payload` (the bytes after the sequence number) differ from `seq`'s
/// pattern: a slice comparison per 256 bytes, a count only for a chunk that differs.
#[inline]
pub(super) fn pattern_mismatches(seq: u64, payload: &[u8]) -> u32 {
    let s = pattern_start(seq);
    let mut bad = 0u32;
    for chunk in payload.chunks(256) {
        let want = &CYCLE[s..s + chunk.len()];
        if !equal_short(chunk, want) {
            bad = bad.saturating_add(count_mismatches(chunk, want));
        }
    }
    bad
}

impl Record for Synthetic {
    fn serialized_len(&self) -> usize {
        self.len as usize
    }
    // inline(always): with the 16 B case below LLVM left it (and the writer's emit around
    // it) out of line, a call per record.
    #[inline(always)]
    fn serialize_into(&self, out: &mut [u8]) {
        // The default 16 B record: one 16-byte store (the generic path's chunk loop and
        // bounds looks were a good part of the 16 B job's generator).
        if let Ok(rec) = <&mut [u8; 16]>::try_from(&mut *out) {
            let word = u128::from(self.seq) | u128::from(pattern_word(self.seq)) << 64;
            *rec = word.to_le_bytes();
            return;
        }
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        write_pattern(self.seq, &mut out[8..]);
    }
}

/// The error for a record of `len` bytes, shorter than the `min` its type needs. Cold and
/// out of line: it keeps the formatting out of `from_record`, which then inlines into the
/// sink's loop (a `Result` returned through memory cost the shuffle sink a store-forwarding
/// stall per record, about a fifth of the 16 B job).
#[cold]
#[inline(never)]
pub(super) fn short_record(place: &'static str, len: usize, min: usize) -> Error {
    Error::ProtocolViolation { place: place.into(), detail: format!("{len} bytes, fewer than {min}") }
}

impl<'a> FromRecord<'a> for Synthetic {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        // The default 16 B record: two word loads and one compare, no loop.
        if let Ok(rec) = <&[u8; 16]>::try_from(bytes) {
            let word = u128::from_le_bytes(*rec);
            let seq = word as u64;
            let payload = (word >> 64) as u64;
            let want = pattern_word(seq);
            let bad = if payload == want { 0 } else { count_mismatches(&payload.to_le_bytes(), &want.to_le_bytes()) };
            return Ok(Synthetic { seq, len: 16, bad });
        }
        // The error value is built only when the record is short.
        let Some((head, payload)) = bytes.split_first_chunk::<8>() else {
            return Err(short_record("shuffle record", bytes.len(), 8));
        };
        let seq = u64::from_le_bytes(*head);
        Ok(Synthetic { seq, len: bytes.len() as u32, bad: pattern_mismatches(seq, payload) })
    }
}

#[cfg(test)]
mod tests {
    use super::Synthetic;
    use shmflow::record::{FromRecord, Record};

    #[test]
    fn synthetic_records_round_trip_and_count_each_corrupted_byte() {
        for len in [8u32, 9, 16, 255, 264, 1024, 1031, 4096] {
            for seq in [0u64, 1, 7, 255, 256, 1 << 40, u64::MAX] {
                let r = Synthetic { seq, len, bad: 0 };
                let mut buf = vec![0u8; r.serialized_len()];
                r.serialize_into(&mut buf);
                for (k, &b) in buf[8..].iter().enumerate() {
                    assert_eq!(b, (seq as u8).wrapping_mul(31).wrapping_add(k as u8), "len {len} seq {seq} byte {k}");
                }
                assert_eq!(Synthetic::from_record(&buf).unwrap(), r);
                if len > 8 {
                    let last = buf.len() - 1;
                    buf[last] ^= 1;
                    buf[8] ^= 0x80;
                    let bad = if last == 8 { 1 } else { 2 };
                    assert_eq!(Synthetic::from_record(&buf).unwrap().bad, bad, "len {len} seq {seq}");
                }
            }
        }
        assert!(Synthetic::from_record(&[1, 2, 3]).is_err(), "a record shorter than its sequence number");
    }
}
