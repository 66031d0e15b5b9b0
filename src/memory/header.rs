//! The arena header: identity, sizes and the region table, then the few arena-wide atomics.
//!
//! # Memory layout
//!
//! ```text
//!   0  magic "SHMFLOW\0"          8  version u32     12 header_size u32
//!  16  total_size u64             24 segment_size    28 segment_count
//!  32  ring_capacity  36 max_channels  40 max_partitions  44 max_gates
//!  48  max_channels_per_gate  52 max_workers  56 max_tasks  60 creator_pid
//!  64  creator_uid  68 reserved  72 creator_start_ticks u64
//!  80  regions [Region; 9] (offset, len)       224 checksum u64 (FNV-1a of bytes 0..224)
//! 256  state (own cache line pair)  384 generation   512 free-stack head (own line pair)
//! ```
//!
//! The static part (up to the checksum) is written once by the creator before `state`
//! becomes READY; attachers copy it out with volatile reads, validate the copy and never
//! read it from the mapping again, so a peer that scribbles on it later cannot change what
//! an attached process believes about the layout.

use super::layout::{ArenaConfig, ArenaLayout, Region, HEADER_BYTES, REGION_COUNT};
use super::stack::StackHead;
use crate::sync::{AtomicU32, AtomicU64, CachePadded};

/// The arena's magic bytes.
pub const MAGIC: [u8; 8] = *b"SHMFLOW\0";
/// The layout version; bumped whenever any shared structure changes.
pub const LAYOUT_VERSION: u32 = 4;

/// `state`: the creator is still building the arena.
pub const STATE_INITIALIZING: u32 = 0;
/// `state`: the arena is ready to attach.
pub const STATE_READY: u32 = 1;

/// The immutable identity of an arena, as written by its creator.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`LAYOUT_VERSION`].
    pub version: u32,
    /// `size_of::<ArenaHeader>()` of the creator.
    pub header_size: u32,
    /// Total arena bytes.
    pub total_size: u64,
    /// See [`ArenaConfig`].
    pub segment_size: u32,
    /// See [`ArenaConfig`].
    pub segment_count: u32,
    /// See [`ArenaConfig`].
    pub ring_capacity: u32,
    /// See [`ArenaConfig`].
    pub max_channels: u32,
    /// See [`ArenaConfig`].
    pub max_partitions: u32,
    /// See [`ArenaConfig`].
    pub max_gates: u32,
    /// See [`ArenaConfig`].
    pub max_channels_per_gate: u32,
    /// See [`ArenaConfig`].
    pub max_workers: u32,
    /// See [`ArenaConfig`].
    pub max_tasks: u32,
    /// Pid of the creating process.
    pub creator_pid: u32,
    /// Uid of the creating process.
    pub creator_uid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Start time of the creating process in clock ticks since boot (from /proc), so a
    /// recycled pid is not mistaken for the creator.
    pub creator_start_ticks: u64,
    /// The region table.
    pub regions: [Region; REGION_COUNT],
    /// FNV-1a of every byte above.
    pub checksum: u64,
}

impl StaticHeader {
    /// The header of a new arena with `layout`, created by process `creator_pid` (user
    /// `creator_uid`, started at `creator_start_ticks`), checksum included.
    pub fn new(layout: &ArenaLayout, creator_pid: u32, creator_uid: u32, creator_start_ticks: u64) -> Self {
        let c = layout.config;
        let mut h = StaticHeader {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            header_size: std::mem::size_of::<ArenaHeader>() as u32,
            total_size: layout.total_size,
            segment_size: c.segment_size,
            segment_count: c.segment_count,
            ring_capacity: c.ring_capacity,
            max_channels: c.max_channels,
            max_partitions: c.max_partitions,
            max_gates: c.max_gates,
            max_channels_per_gate: c.max_channels_per_gate,
            max_workers: c.max_workers,
            max_tasks: c.max_tasks,
            creator_pid,
            creator_uid,
            reserved: 0,
            creator_start_ticks,
            regions: layout.regions,
            checksum: 0,
        };
        h.checksum = h.compute_checksum();
        h
    }

    /// The configuration recorded in the header.
    pub fn config(&self) -> ArenaConfig {
        ArenaConfig {
            segment_size: self.segment_size,
            segment_count: self.segment_count,
            ring_capacity: self.ring_capacity,
            max_channels: self.max_channels,
            max_partitions: self.max_partitions,
            max_gates: self.max_gates,
            max_channels_per_gate: self.max_channels_per_gate,
            max_workers: self.max_workers,
            max_tasks: self.max_tasks,
        }
    }

    /// FNV-1a over the fields before `checksum`.
    pub fn compute_checksum(&self) -> u64 {
        let n = std::mem::offset_of!(StaticHeader, checksum);
        // SAFETY: `self` is a plain `repr(C)` struct of integers without padding before
        // `checksum` (checked by the const assertions below), so its first `n` bytes are
        // initialized and readable.
        let bytes = unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), n) };
        fnv1a(bytes)
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The header at offset 0 of every arena.
#[repr(C)]
pub struct ArenaHeader {
    /// Identity and layout, immutable after creation.
    pub fixed: StaticHeader,
    /// [`STATE_INITIALIZING`] then [`STATE_READY`]; written once by the creator.
    pub state: CachePadded<AtomicU32>,
    /// Reserved for a job-restart generation (zero today: an arena serves one job attempt,
    /// and a restarted job gets a fresh arena).
    pub generation: CachePadded<AtomicU64>,
    /// The NetworkBufferPool's free stack of segments.
    pub free_stack: CachePadded<StackHead>,
}

impl ArenaHeader {
    /// The raw free-stack head word (for the consistency check).
    pub fn free_stack_head(&self) -> u64 {
        self.free_stack.raw_head()
    }
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<StaticHeader>() == 232);
    assert!(std::mem::offset_of!(StaticHeader, regions) == 80);
    assert!(std::mem::offset_of!(StaticHeader, checksum) == 224);
    assert!(std::mem::offset_of!(ArenaHeader, state) == 256);
};

// The layout reserves HEADER_BYTES for the header without naming it (the layout is below the
// header): checked in every build, loom's bigger atomics included.
const _: () = assert!(std::mem::size_of::<ArenaHeader>() as u64 <= HEADER_BYTES);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_64_bit_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_checksum_covers_every_byte_before_it_and_nothing_after() {
        let layout = ArenaConfig::default().layout().unwrap();
        let h = StaticHeader::new(&layout, 7, 1000, 12345);
        assert_eq!(h.checksum, h.compute_checksum());
        assert_eq!(h.config(), layout.config);
        let n = std::mem::offset_of!(StaticHeader, checksum);
        for i in 0..n {
            let mut c = StaticHeader { ..h };
            // SAFETY: `c` is a plain repr(C) struct of integers and `i` is inside it; any
            // bit pattern is a valid value.
            unsafe { *(&mut c as *mut StaticHeader).cast::<u8>().add(i) ^= 1 };
            assert_ne!(c.compute_checksum(), h.checksum, "byte {i} is not covered");
        }
        let c = StaticHeader { checksum: 0, ..h };
        assert_eq!(c.compute_checksum(), h.checksum, "the checksum field itself is not covered");
    }
}
