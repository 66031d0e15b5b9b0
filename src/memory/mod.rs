//! Memory: the shared arena, its layout descriptor and the structures in its regions.
//!
//! ```text
//!   ArenaConfig --layout()--> ArenaLayout --create/attach--> Arena (mapping)
//!                                                   |-- SegmentControl[]  (position, refcount, owner)
//!                                                   |-- ChannelBlock[] + ring slots
//!                                                   |-- partition directory, gates, workers, metrics
//!                                                   '-- segment data (MemorySegment)
//! ```

mod arena;
mod blocks;
pub mod check;
mod header;
mod layout;
pub mod liveness;
pub mod recovery;
mod segment;
mod stack;

pub use arena::{
    parse_proc_stat, proc_stat, process_start_ticks, validate_header, validate_header_bytes, Arena, HugePages,
    ProcStat, RingKind, ARENA_FD_ENV, HUGE_PAGE, HUGE_PAGES_ENV,
};
pub use blocks::*;
pub use header::{fnv1a, ArenaHeader, StaticHeader, LAYOUT_VERSION, MAGIC, STATE_INITIALIZING, STATE_READY};
pub use layout::{ArenaConfig, ArenaLayout, Region, RegionKind, PAGE, REGION_COUNT, REGION_NAMES, RINGS_PER_CHANNEL};
pub(crate) use segment::own_lane;
pub use segment::MemorySegment;
pub use stack::{head_top, SegmentStack, StackHead, TakeStop, Taken};
