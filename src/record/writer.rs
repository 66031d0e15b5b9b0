//! The serializer: writes a record into a segment in place, or says it must span.

use super::codec::Record;
use super::frame::{self, LEN_PREFIX};
use crate::buffer::BufferBuilder;

/// What [`write_record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The whole record is in the segment.
    Written,
    /// Not even the length prefix fits: finish this segment and retry in a new one.
    NeedsNewSegment,
    /// The prefix fits but the payload does not: the caller serializes into a scratch
    /// buffer and uses [`write_spanning_head`] then appends the rest to later segments.
    Spans,
}

/// Writes `record` into `b` in place when it fits (no intermediate copy).
pub fn write_record<R: Record + ?Sized>(b: &mut BufferBuilder, record: &R) -> WriteOutcome {
    let len = record.serialized_len();
    let rem = b.remaining() as usize;
    if rem < LEN_PREFIX {
        return WriteOutcome::NeedsNewSegment;
    }
    if rem - LEN_PREFIX < len {
        return WriteOutcome::Spans;
    }
    let total = frame::framed_len(len) as u32;
    frame::encode(b.claim(total), len, |out| record.serialize_into(out));
    b.advance(total);
    WriteOutcome::Written
}

/// Writes the length prefix of a spanning record of `payload.len()` bytes and as much of
/// the payload as fits; returns the payload bytes written. The builder must have at least
/// [`LEN_PREFIX`] bytes left.
pub fn write_spanning_head(b: &mut BufferBuilder, payload: &[u8]) -> usize {
    debug_assert!(b.remaining() as usize >= LEN_PREFIX);
    let mut prefix = [0u8; LEN_PREFIX];
    frame::put_len(&mut prefix, payload.len());
    let n = b.append(&prefix);
    debug_assert_eq!(n, LEN_PREFIX);
    b.append(payload)
}
