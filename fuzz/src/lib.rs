//! Fuzz harnesses for shmflow's trust boundaries: everything a process reads from shared
//! memory (or from a file it attaches to) is validated, so no byte pattern may panic, crash
//! or read out of bounds; a bad value is an `Err`.
//!
//! ```text
//!  arena_header  header bytes + file length -> validate_header_bytes, Arena::attach_fd (memfd)
//!  ring_values   u64s -> Descriptor/Credit decode; or a heap arena whose ring slots, ring
//!                positions, segment controls and channel fields the input scribbles on
//!                while a ChannelReader/RecordReader and a ChannelWriter use the channel
//!  records       payload bytes -> FromRecord (&str, tuples, integers, Synthetic)
//!  blocking_file file bytes -> BlockingPartitionFile::open_path (a memfd), every
//!                subpartition read to the end
//! ```
//!
//! The harnesses live here (not in `fuzz_targets/`) so `tests/corpus.rs` replays the
//! corpus and the regression inputs on stable, without libFuzzer.

#![allow(clippy::missing_panics_doc)]

mod arena_header;
mod blocking_file;
mod records;
mod ring_values;
pub mod seeds;
/// The shuffle job's record, from the command line's built-in jobs (not part of the library).
#[path = "../../src/bin/shmflow/jobs/synthetic.rs"]
pub mod synthetic;

pub use arena_header::arena_header;
pub use blocking_file::blocking_file;
pub use records::records;
pub use ring_values::ring_values;

/// Reads fixed-width values from the front of the input; past its end every read is zero.
pub(crate) struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// The `place` closure the decoders take.
pub(crate) fn place() -> String {
    "fuzz".to_string()
}
