//! The wire format of records, serializer and deserializer side by side; the framing
//! itself (both formats: length-prefixed and slot-framed) is defined once in [`frame`].
//!
//! ```text
//!  record  = [ len : u32 LE ][ payload : len bytes ]
//!  the prefix never spans segments (a segment with fewer than 4 bytes left is finished);
//!  the payload may span any number of segments of the same channel.
//!
//!  writer: fits?  claim(4 + len) and serialize in place (no intermediate copy)
//!          spans? serialize once into a scratch buffer, append it across segments
//!  reader: fits?  &[u8] borrowed from shared memory (zero copy)
//!          spans? reassembled into a per-channel buffer, or (set_spans_in_place) read in
//!                 place as chunks, one per segment, while its segments arrive without waiting,
//!                 or (set_spans_streamed) handed out piece by piece, one per segment, each
//!                 segment released once read (no copy, no segment held)
//! ```
//!
//! Payload encodings ([`Record`] / [`FromRecord`]): a top-level byte slice or string is its
//! raw bytes; integers are little-endian fixed width; a tuple is its fields in order, where
//! byte and string fields carry their own u32 length prefix ([`Field`]).

mod codec;
pub mod frame;
mod reader;
mod writer;

pub use codec::{copy_payload, java_string_hash, Field, FromField, FromRecord, Record};
pub use reader::{ChunkCursor, ChunkIter, RecordChunks, RecordPiece, RecordReader, Step, WholeRecords};
pub use writer::{write_record, write_spanning_head, WriteOutcome};

/// Bytes of the length prefix (defined in [`frame`]).
pub use frame::LEN_PREFIX;

/// The largest record payload a reader accepts by default (a peer claiming more is a
/// protocol violation, not an allocation).
pub const DEFAULT_MAX_RECORD: usize = 256 << 20;
