//! The arena layout descriptor: every region's offset and length, computed once from an
//! [`ArenaConfig`] and checked on attach.
//!
//! # Memory layout
//!
//! ```text
//! offset 0           ArenaHeader (one page): magic, version, sizes, region table, checksum,
//!                    state, generation, the NetworkBufferPool free-stack head
//! control            [SegmentControl; segment_count]     64 B each: position|FINISHED,
//!                                                        refcount, free link, owner
//! channels           [ChannelBlock; max_channels]        ring heads/tails, wake-ups, counters
//! ring slots         [AtomicU64; max_channels * 3 * ring_capacity]
//!                                                        data, credit and priority rings
//! partitions         [PartitionEntry; max_partitions]    the ResultPartitionManager directory
//! gates              [GateBlock; max_gates]              gate wake-up + channels-with-data bitmap
//! gate bitmaps       [AtomicU64; max_gates * bitmap_words]
//! workers            [WorkerRecord; max_workers]         liveness: pid, start time, heartbeat, free-stack lane
//! metrics            [TaskMetrics; max_tasks]            counters readable by `shmflow top`
//! data (page-aligned) segment_count * segment_size bytes of payload
//! ```
//!
//! Nothing in the arena is a pointer. Every region starts on a 128-byte boundary (two cache
//! lines, the unit the adjacent-line prefetcher moves), the data region on a page.

use super::blocks::{ChannelBlock, GateBlock, PartitionEntry, SegmentControl, TaskMetrics, WorkerRecord};
use crate::error::ArenaError;
use std::mem::size_of;

/// Alignment of every region (two cache lines).
pub const REGION_ALIGN: u64 = 128;
/// Alignment of the data region and of the whole arena.
pub const PAGE: u64 = 4096;
/// Bytes reserved for the [`ArenaHeader`](super::ArenaHeader) at offset 0: one page (the
/// header module checks at compile time that the header fits).
pub const HEADER_BYTES: u64 = PAGE;
/// Number of rings in one channel: data, credit and priority.
pub const RINGS_PER_CHANNEL: u64 = 3;
/// Most worker slots an arena may have (`ArenaConfig::max_workers`).
pub const MAX_WORKERS: u32 = 4096;
/// Most channel blocks an arena may have (`ArenaConfig::max_channels`).
pub const MAX_CHANNELS: u32 = 1 << 20;

// `Owner::pack` keeps a worker slot or a fanout (at most one per channel) in 24 bits.
const _: () = assert!(MAX_WORKERS < 1 << 24 && MAX_CHANNELS < 1 << 24);

/// The sizes an arena is created with. Everything else is derived from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Bytes per segment: a power of two in `4 KiB..=16 MiB` (64 B..=16 MiB under loom).
    pub segment_size: u32,
    /// Number of segments, `1..=2^24`.
    pub segment_count: u32,
    /// Slots per ring: a power of two in `2..=65536`.
    pub ring_capacity: u32,
    /// Channel blocks (one per subpartition-to-input-channel connection).
    pub max_channels: u32,
    /// Entries in the partition directory.
    pub max_partitions: u32,
    /// Gate blocks.
    pub max_gates: u32,
    /// Channels one gate can read (bits in its channels-with-data bitmap), a multiple of 64.
    pub max_channels_per_gate: u32,
    /// Worker liveness records.
    pub max_workers: u32,
    /// Task metric blocks.
    pub max_tasks: u32,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        Self {
            segment_size: 32 * 1024,
            segment_count: 4096,
            ring_capacity: 64,
            max_channels: 1024,
            max_partitions: 256,
            max_gates: 256,
            max_channels_per_gate: 1024,
            max_workers: 64,
            max_tasks: 256,
        }
    }
}

/// Where a region starts and how long it is, in bytes from the arena's start.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// Offset from the arena base.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The regions of an arena, in address order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum RegionKind {
    /// Segment control blocks.
    Control = 0,
    /// Channel blocks.
    Channels = 1,
    /// Ring slots.
    RingSlots = 2,
    /// Partition directory.
    Partitions = 3,
    /// Gate blocks.
    Gates = 4,
    /// Gate bitmaps.
    GateBitmaps = 5,
    /// Worker records.
    Workers = 6,
    /// Task metrics.
    Metrics = 7,
    /// Segment data.
    Data = 8,
}

/// Number of regions after the header.
pub const REGION_COUNT: usize = 9;

/// Region names, for error messages and `shmflow check`.
pub const REGION_NAMES: [&str; REGION_COUNT] =
    ["control", "channels", "ring slots", "partitions", "gates", "gate bitmaps", "workers", "metrics", "data"];

/// The computed layout of an arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaLayout {
    /// The configuration it was computed from.
    pub config: ArenaConfig,
    /// Every region, indexed by [`RegionKind`].
    pub regions: [Region; REGION_COUNT],
    /// Total size of the arena in bytes (a multiple of the page size).
    pub total_size: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl ArenaConfig {
    /// Checks every field's range.
    ///
    /// # Errors
    /// [`ArenaError::Config`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), ArenaError> {
        let bad = |what: &str, v: u64| Err(ArenaError::Config(format!("{what} = {v} is out of range")));
        let min_seg = if cfg!(loom) { 8 } else { 4096 };
        if !self.segment_size.is_power_of_two() || self.segment_size < min_seg || self.segment_size > 16 << 20 {
            return Err(ArenaError::Config(format!(
                "segment_size = {} must be a power of two between {min_seg} and 16 MiB",
                self.segment_size
            )));
        }
        if self.segment_count == 0 || self.segment_count > 1 << 24 {
            return bad("segment_count (1..=16777216)", self.segment_count.into());
        }
        if !self.ring_capacity.is_power_of_two() || self.ring_capacity < 2 || self.ring_capacity > 65536 {
            return bad("ring_capacity (a power of two, 2..=65536)", self.ring_capacity.into());
        }
        if self.max_channels == 0 || self.max_channels > MAX_CHANNELS {
            return bad("max_channels (1..=1048576)", self.max_channels.into());
        }
        if self.max_partitions == 0 || self.max_partitions > 1 << 16 {
            return bad("max_partitions (1..=65536)", self.max_partitions.into());
        }
        if self.max_gates == 0 || self.max_gates > 1 << 16 {
            return bad("max_gates (1..=65536)", self.max_gates.into());
        }
        if self.max_channels_per_gate == 0
            || self.max_channels_per_gate % 64 != 0
            || self.max_channels_per_gate > 1 << 16
        {
            return bad("max_channels_per_gate (a multiple of 64, up to 65536)", self.max_channels_per_gate.into());
        }
        if self.max_workers == 0 || self.max_workers > MAX_WORKERS {
            return bad("max_workers (1..=4096)", self.max_workers.into());
        }
        if self.max_tasks == 0 || self.max_tasks > 1 << 16 {
            return bad("max_tasks (1..=65536)", self.max_tasks.into());
        }
        Ok(())
    }

    /// Computes the layout.
    ///
    /// # Errors
    /// [`ArenaError::Config`] for a field out of range or a total size above 1 TiB.
    pub fn layout(&self) -> Result<ArenaLayout, ArenaError> {
        self.validate()?;
        let c = self;
        let sizes: [u64; REGION_COUNT] = [
            size_of::<SegmentControl>() as u64 * u64::from(c.segment_count),
            size_of::<ChannelBlock>() as u64 * u64::from(c.max_channels),
            8 * RINGS_PER_CHANNEL * u64::from(c.max_channels) * u64::from(c.ring_capacity),
            size_of::<PartitionEntry>() as u64 * u64::from(c.max_partitions),
            size_of::<GateBlock>() as u64 * u64::from(c.max_gates),
            8 * u64::from(c.max_gates) * u64::from(c.max_channels_per_gate / 64),
            size_of::<WorkerRecord>() as u64 * u64::from(c.max_workers),
            size_of::<TaskMetrics>() as u64 * u64::from(c.max_tasks),
            u64::from(c.segment_size) * u64::from(c.segment_count),
        ];
        let mut regions = [Region::default(); REGION_COUNT];
        let mut at = HEADER_BYTES;
        for (i, len) in sizes.iter().enumerate() {
            let align = if i == RegionKind::Data as usize { PAGE } else { REGION_ALIGN };
            at = align_up(at, align);
            regions[i] = Region { offset: at, len: *len };
            at += len;
        }
        let total_size = align_up(at, PAGE);
        if total_size > 1 << 40 {
            return Err(ArenaError::Config(format!("arena of {total_size} bytes is larger than 1 TiB")));
        }
        Ok(ArenaLayout { config: *c, regions, total_size })
    }

    /// A configuration whose whole arena fits in about `arena_bytes`, keeping every other
    /// field: the segment count is what remains after the fixed regions.
    ///
    /// # Errors
    /// [`ArenaError::Config`] when not even two segments fit.
    pub fn with_arena_size(mut self, arena_bytes: u64) -> Result<Self, ArenaError> {
        self.segment_count = 1;
        let fixed = self.layout()?.total_size - u64::from(self.segment_size);
        let room = arena_bytes.saturating_sub(fixed + PAGE);
        let n = room / u64::from(self.segment_size);
        if n < 2 {
            return Err(ArenaError::Config(format!(
                "an arena of {arena_bytes} bytes leaves room for {n} segments of {} bytes after {fixed} bytes of control regions",
                self.segment_size
            )));
        }
        self.segment_count = n.min(1 << 24) as u32;
        self.layout()?;
        Ok(self)
    }
}

impl ArenaLayout {
    /// A region by kind.
    pub fn region(&self, kind: RegionKind) -> Region {
        self.regions[kind as usize]
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn regions_follow_the_header_in_order_aligned_and_without_overlap() {
        for c in [
            ArenaConfig::default(),
            ArenaConfig {
                segment_count: 1,
                ring_capacity: 2,
                max_channels: 1,
                max_partitions: 1,
                max_gates: 1,
                max_channels_per_gate: 64,
                max_workers: 1,
                max_tasks: 1,
                ..ArenaConfig::default()
            },
        ] {
            let l = c.layout().unwrap();
            let mut end = HEADER_BYTES;
            for (i, r) in l.regions.iter().enumerate() {
                assert!(r.offset >= end, "{} overlaps what precedes it", REGION_NAMES[i]);
                let align = if i == RegionKind::Data as usize { PAGE } else { REGION_ALIGN };
                assert_eq!(r.offset % align, 0, "{}", REGION_NAMES[i]);
                assert!(r.offset - end < align, "{} starts past the next boundary", REGION_NAMES[i]);
                end = r.end();
            }
            assert_eq!(l.total_size % PAGE, 0);
            assert!(l.total_size >= end && l.total_size - end < PAGE);
            let data = l.region(RegionKind::Data);
            assert_eq!(data.len, u64::from(c.segment_size) * u64::from(c.segment_count));
            assert_eq!(
                l.region(RegionKind::Channels).len,
                size_of::<ChannelBlock>() as u64 * u64::from(c.max_channels)
            );
            assert_eq!(l.region(RegionKind::RingSlots).len, 8 * 3 * u64::from(c.max_channels * c.ring_capacity));
        }
    }

    #[test]
    fn every_field_is_refused_one_past_each_end_of_its_range() {
        let ok = ArenaConfig::default();
        let bad: [(&str, ArenaConfig); 16] = [
            ("segment_size", ArenaConfig { segment_size: 2048, ..ok }),
            ("segment_size", ArenaConfig { segment_size: 32 << 20, ..ok }),
            ("segment_size", ArenaConfig { segment_size: 4096 + 4096 / 2, ..ok }),
            ("segment_count", ArenaConfig { segment_count: 0, ..ok }),
            ("segment_count", ArenaConfig { segment_count: (1 << 24) + 1, ..ok }),
            ("ring_capacity", ArenaConfig { ring_capacity: 1, ..ok }),
            ("ring_capacity", ArenaConfig { ring_capacity: 1 << 17, ..ok }),
            ("ring_capacity", ArenaConfig { ring_capacity: 48, ..ok }),
            ("max_channels", ArenaConfig { max_channels: 0, ..ok }),
            ("max_channels", ArenaConfig { max_channels: (1 << 20) + 1, ..ok }),
            ("max_partitions", ArenaConfig { max_partitions: 0, ..ok }),
            ("max_gates", ArenaConfig { max_gates: (1 << 16) + 1, ..ok }),
            ("max_channels_per_gate", ArenaConfig { max_channels_per_gate: 65, ..ok }),
            ("max_channels_per_gate", ArenaConfig { max_channels_per_gate: 0, ..ok }),
            ("max_workers", ArenaConfig { max_workers: 4097, ..ok }),
            ("max_tasks", ArenaConfig { max_tasks: 0, ..ok }),
        ];
        for (field, c) in bad {
            let e = c.layout().unwrap_err();
            assert!(matches!(e, ArenaError::Config(_)), "{e:?}");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        // The ends themselves are accepted (validated only: the sizes would be huge).
        for c in [
            ArenaConfig { segment_size: 4096, segment_count: 1 << 24, ..ok },
            ArenaConfig { segment_size: 16 << 20, segment_count: 1, ring_capacity: 65536, ..ok },
            ArenaConfig { max_channels: 1 << 20, max_gates: 1 << 16, max_channels_per_gate: 1 << 16, ..ok },
            ArenaConfig { max_workers: 4096, max_tasks: 1 << 16, max_partitions: 1 << 16, ..ok },
        ] {
            c.validate().unwrap();
        }
    }

    #[test]
    fn an_arena_above_one_tib_is_refused() {
        let c = ArenaConfig { segment_size: 16 << 20, segment_count: 1 << 24, ..ArenaConfig::default() };
        c.validate().unwrap();
        let e = c.layout().unwrap_err();
        assert!(e.to_string().contains("larger than 1 TiB"), "{e}");
    }

    #[test]
    fn with_arena_size_fills_the_size_and_refuses_one_with_room_for_less_than_two_segments() {
        let c = ArenaConfig::default();
        let sized = c.with_arena_size(64 << 20).unwrap();
        let l = sized.layout().unwrap();
        // "About": the estimate sizes the control region for one segment, so the arena may
        // exceed the size by the other segments' control blocks (and a page of rounding).
        let slack = u64::from(sized.segment_count) * size_of::<SegmentControl>() as u64 + PAGE;
        assert!(l.total_size <= (64 << 20) + slack, "{} bytes", l.total_size);
        assert!(l.total_size + 2 * u64::from(c.segment_size) > 64 << 20, "room for more segments was left");
        assert!(c.with_arena_size(0).is_err());
        let fixed = ArenaConfig { segment_count: 1, ..c }.layout().unwrap().total_size;
        let e = c.with_arena_size(fixed).unwrap_err();
        assert!(e.to_string().contains("leaves room for"), "{e}");
    }
}
