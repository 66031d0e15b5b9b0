//! The serializer: writes a record into a segment in place, or says it must span.

use super::codec::Record;
use super::frame::LEN_PREFIX;
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

/// Writes `record` into `b` in place when it fits (no intermediate copy). A record that
/// fits the rest of the segment but not its debloating limit is written whole (the limit
/// moves behind it): only a record the segment cannot hold spans, so a reader polling a
/// prefix never takes a spanning record's head for a whole record (see
/// `buffer::builder`'s module doc).
pub fn write_record<R: Record + ?Sized>(b: &mut BufferBuilder, record: &R) -> WriteOutcome {
    let len = record.serialized_len();
    if (b.remaining() as usize) < LEN_PREFIX {
        return WriteOutcome::NeedsNewSegment;
    }
    if b.write_framed(len, |out| record.serialize_into(out)) {
        return WriteOutcome::Written;
    }
    WriteOutcome::Spans
}

/// Writes the length prefix of a spanning record of `payload.len()` bytes and as much of
/// the payload as fits; returns the payload bytes written. The builder must have at least
/// [`LEN_PREFIX`] bytes left, and [`write_record`] must have answered
/// [`WriteOutcome::Spans`] for the record. The rest goes to later segments with
/// [`BufferBuilder::append`], then [`BufferBuilder::end_record`].
pub fn write_spanning_head(b: &mut BufferBuilder, payload: &[u8]) -> usize {
    b.write_span_head(payload.len(), payload)
}
