//! The transport behind the C ABI: arenas shared by TaskManagers, channels between them,
//! segments and messages. Everything here returns [`FfiError`]; `lib.rs` turns that into
//! error codes at the boundary.
//!
//! ```text
//!  TaskManager A (producer side)                        TaskManager B (consumer side)
//!  wait(PRODUCER) <- notify set 2*slotA+1 <-- mark --   connect(slotA) claims channel c
//!  accept(c)                                            send(REQUEST, segment)  -- credit ring -->
//!  send(BUFFER, segment, seq, backlog, ...) -- data ring --> wait(CONSUMER) <- notify set 2*slotB
//!                                                       poll(c) -> copy out, release(segment)
//!  poll(c): CREDIT n, RESUME, TASK_EVENT ... <-- credit ring -- send(CREDIT n) ...
//! ```
//!
//! A channel is one [`ChannelBlock`] of the arena: its data ring carries messages from the
//! producer, its credit ring messages from the consumer. A message is four ring slots
//! pushed together (one publication):
//!
//! ```text
//!  slot 0  [ kind : 8 | data type : 8 | flags : 8 | 0 : 8 | size : 32 ]
//!  slot 1  [ segment + 1 : 32 | subpartition : 32 ]     segment + 1 == 0: no payload
//!  slot 2  [ sequence number : 32 | backlog : 32 ]
//!  slot 3  [ arg : 64 ]                                 (CREDIT: the number of credits)
//! ```
//!
//! Kind 1 ([`KIND_CREDIT`]) is the transport's own credit announcement; kinds 2..=255 are
//! the caller's (the Flink module's BUFFER, ERROR, REQUEST, RESUME, ...). Credit travels
//! in order with the other messages (not in a shared counter) because Flink's
//! resume-consumption resets the producer's credit to zero: credit announced before the
//! resume must be dropped, credit announced after it kept.
//!
//! Each TaskManager holds one worker slot of the arena (`liveness`) and two notify sets
//! (gate blocks `2*slot` for what it consumes and `2*slot+1` for what it produces): a
//! sender marks the receiver's set after publishing, and one dispatcher thread per side
//! and TaskManager waits on it (spinning for a budget, then parking on the futex).
//!
//! Segment ownership (`SegmentControl::owner`, `holder_pid`, `refcount`) is kept exact at
//! every hand-over, so `shmflow check` and the online reclaimer (`shmflow::partition::
//! reclaim`, run through [`reclaim`] when a peer is seen dead) can tell who holds what:
//! acquire = `Writer { worker }` held by our pid, send = `InFlight { channel }` with one
//! reader, release = `Free` (a compare-and-swap on the owner word, so a segment is freed
//! once, by us or by a reclaimer). A channel block records the producer's pid as its
//! `claim_pid` and the consumer's as `consumer_pid`, as the reclaimer expects.

use crate::handshake;
use parking_lot::Mutex;
use shmflow::buffer::NetworkBufferPool;
use shmflow::memory::liveness::{self, Liveness};
use shmflow::memory::recovery::free_own_segment_if;
use shmflow::memory::{
    process_start_ticks, Arena, ArenaConfig, ChannelBlock, Owner, RingKind, CHANNEL_CLOSED, CHANNEL_CONSUMER_DIED,
    CHANNEL_CONSUMER_GONE, CHANNEL_ORPHANED, CHANNEL_PRODUCER_DIED, CHANNEL_PRODUCER_FAILED, REFCOUNT_MASK,
};
use shmflow::partition::reclaim::{reclaim_dead_peers, ReclaimReport};
use shmflow::ring::{NotifySet, Ring, RingConsumer, RingProducer};
use shmflow::sync::{spin_loop, AtomicBool, AtomicU64, EventCount, Ordering};
use shmflow::{ArenaError, PushError};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Error codes of the C ABI (negative; 0 is success). Mirrored in `include/shmflow.h`.
pub mod code {
    /// An argument is invalid (null pointer, out of range, wrong handle, bad string).
    pub const EINVAL: i32 = -1;
    /// Would block: nothing arrived, no segment or ring room before the timeout.
    pub const EAGAIN: i32 = -2;
    /// The peer closed its end of the channel, or its process died.
    pub const EPEER: i32 = -3;
    /// A system call failed (arena file, registry directory).
    pub const EIO: i32 = -4;
    /// The peer broke the protocol (a malformed message in shared memory).
    pub const EPROTO: i32 = -5;
    /// A panic was caught at the boundary (a bug in shmflow).
    pub const EPANIC: i32 = -6;
    /// Not found (a TaskManager not registered, or not alive).
    pub const ENOENT: i32 = -7;
    /// The arena cannot be had with these settings (too small, other segment size).
    pub const ECONFIG: i32 = -8;
}

/// An error code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfiError {
    /// One of [`code`].
    pub code: i32,
    /// What went wrong, for the caller's log.
    pub msg: String,
}

impl FfiError {
    /// An error with code `code`.
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into() }
    }
}

/// Result of every operation here.
pub type FResult<T> = Result<T, FfiError>;

fn inval(msg: impl Into<String>) -> FfiError {
    FfiError::new(code::EINVAL, msg)
}

fn from_lib(e: impl Into<shmflow::Error>) -> FfiError {
    use shmflow::Error as E;
    let e = e.into();
    let c = match &e {
        E::Arena(a) => return from_arena_ref(a, e.to_string()),
        E::ProtocolViolation { .. } => code::EPROTO,
        E::RingFull { .. } | E::Timeout(..) | E::PoolExhausted => code::EAGAIN,
        E::PeerDied { .. } | E::ConsumerGone { .. } | E::ProducerFailed { .. } => code::EPEER,
        E::Config(_) | E::Invalid { .. } | E::TooLarge { .. } => code::EINVAL,
        E::OutOfSlots(_) => code::ECONFIG,
        E::PartitionNotFound(_) => code::ENOENT,
        _ => code::EIO,
    };
    FfiError::new(c, e.to_string())
}

fn from_arena_ref(e: &ArenaError, msg: String) -> FfiError {
    let c = match e {
        ArenaError::Io { .. } => code::EIO,
        _ => code::ECONFIG,
    };
    FfiError::new(c, msg)
}

fn from_arena(e: ArenaError) -> FfiError {
    let msg = e.to_string();
    from_arena_ref(&e, msg)
}

/// The transport's own message kind: `arg` more credits (consumer to producer).
pub const KIND_CREDIT: u8 = 1;
/// Flag bit: the payload is compressed (Flink's `Buffer.isCompressed`).
pub const FLAG_COMPRESSED: u8 = 1;
/// Flag bit of a message sent by the producer, not carried in the ring: a data buffer the
/// consumer's task may take by polling, so the consumer's notify set is marked only when
/// its task does not poll this channel (the `polled` module). Events never carry it: sending refuses it on anything but a data buffer
/// ([`DATA_BUFFER_TYPES`]).
pub const FLAG_POLLABLE: u8 = 2;
/// The data types ([`Msg::data_type`], Flink's `Buffer.DataType` ordinals) of a data
/// buffer, the only messages that may carry [`FLAG_POLLABLE`]: `DATA_BUFFER` (1) and
/// `DATA_BUFFER_WITH_CLEAR_END` (8), those whose `isBuffer()` is true.
pub const DATA_BUFFER_TYPES: [i32; 2] = [1, 8];
/// Ring slots per message.
const SLOTS: u64 = 4;
/// Longest wait any single call accepts (one hour), so every loop is bounded.
pub const MAX_TIMEOUT_MS: i32 = 3_600_000;

/// One message, as the caller sees it (`shmflow_msg` in the header).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Msg {
    /// Message kind, 1..=255 ([`KIND_CREDIT`] is the transport's).
    pub kind: i32,
    /// Segment carrying the payload, or -1 for none.
    pub segment: i32,
    /// Payload bytes in the segment (0 without a segment).
    pub size: i32,
    /// Flink: subpartition index of the buffer.
    pub subpartition: i32,
    /// Flink: sequence number.
    pub seq: i32,
    /// Flink: the sender's backlog.
    pub backlog: i32,
    /// Flink: `Buffer.DataType` ordinal, 0..=255.
    pub data_type: i32,
    /// Bit 0: compressed.
    pub flags: i32,
    /// Free argument (credits for CREDIT, a buffer size, ...).
    pub arg: i64,
}

impl Msg {
    fn encode(&self, segment_size: u32) -> FResult<[u64; 4]> {
        if !(1..=255).contains(&self.kind) {
            return Err(inval(format!("message kind {} is outside 1..=255", self.kind)));
        }
        if !(0..=255).contains(&self.data_type) {
            return Err(inval(format!("data type {} is outside 0..=255", self.data_type)));
        }
        if !(0..=3).contains(&self.flags) {
            return Err(inval(format!(
                "flags {:#x}: only bit 0 (compressed) and bit 1 (pollable) are defined",
                self.flags
            )));
        }
        if self.flags & i32::from(FLAG_POLLABLE) != 0
            && (self.kind == i32::from(KIND_CREDIT) || !DATA_BUFFER_TYPES.contains(&self.data_type))
        {
            return Err(inval(format!(
                "flag pollable on kind {} with data type {}: only data buffers (a caller's kind with \
                 data type {DATA_BUFFER_TYPES:?}) carry it; events always mark",
                self.kind, self.data_type
            )));
        }
        if self.size < 0 || self.size as u32 > segment_size {
            return Err(inval(format!("size {} is outside 0..={segment_size}", self.size)));
        }
        if self.segment < 0 && (self.segment != -1 || self.size != 0) {
            return Err(inval(format!(
                "segment {} with size {}: a message without a segment has size 0",
                self.segment, self.size
            )));
        }
        if self.kind == i32::from(KIND_CREDIT) && !(1..=i64::from(i32::MAX)).contains(&self.arg) {
            return Err(inval(format!("a credit message must carry 1..=2^31-1 credits, not {}", self.arg)));
        }
        let s0 = ((self.kind as u64) << 56)
            | ((self.data_type as u64) << 48)
            | (((self.flags & i32::from(FLAG_COMPRESSED)) as u64) << 40)
            | self.size as u32 as u64;
        let s1 = (((self.segment + 1) as u32 as u64) << 32) | self.subpartition as u32 as u64;
        let s2 = ((self.seq as u32 as u64) << 32) | self.backlog as u32 as u64;
        Ok([s0, s1, s2, self.arg as u64])
    }

    fn decode(s: [u64; 4], segment_size: u32, segment_count: u32) -> FResult<Self> {
        let bad = |d: String| FfiError::new(code::EPROTO, d);
        let kind = (s[0] >> 56) as i32;
        let flags = ((s[0] >> 40) & 0xff) as i32;
        let size = s[0] as u32;
        if kind == 0 || (s[0] >> 32) & 0xff != 0 || flags > 1 || size > segment_size {
            return Err(bad(format!("malformed message header {:#x}", s[0])));
        }
        let seg1 = (s[1] >> 32) as u32;
        if seg1 > segment_count || (seg1 == 0 && size != 0) {
            return Err(bad(format!(
                "message names segment {} with size {size} (segments 0..{segment_count})",
                seg1 as i64 - 1
            )));
        }
        if kind == i32::from(KIND_CREDIT) && !(1..=u64::from(i32::MAX as u32)).contains(&s[3]) {
            return Err(bad(format!("credit message with {} credits", s[3])));
        }
        Ok(Msg {
            kind,
            segment: seg1 as i32 - 1,
            size: size as i32,
            subpartition: s[1] as u32 as i32,
            seq: (s[2] >> 32) as u32 as i32,
            backlog: s[2] as u32 as i32,
            data_type: ((s[0] >> 48) & 0xff) as i32,
            flags,
            arg: s[3] as i64,
        })
    }
}

/// Settings of [`ArenaCtx::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Name under /dev/shm.
    pub name: String,
    /// Registry directory: one entry per attached TaskManager.
    pub registry_dir: PathBuf,
    /// The TaskManager's id (Flink's ResourceID), any bytes but NUL, 1..=1024 of them.
    pub tm_id: String,
    /// Arena size in bytes (used when this call creates it).
    pub arena_bytes: u64,
    /// Segment size (Flink's memory segment size; must match an existing arena's).
    pub segment_size: u32,
    /// How long a dispatcher spins before it parks.
    pub spin_ns: u64,
}

/// Most segments an arena holds (segment indexes are packed in 24 bits).
const MAX_SEGMENTS: u64 = 1 << 24;

/// Geometry of every arena this module creates, apart from the size and segment size.
///
/// # Errors
/// [`code::ECONFIG`] for a size with room for fewer than two segments or for more than
/// 2^24 (it used to be capped silently: a huge sparse arena).
pub fn arena_config(segment_size: u32, arena_bytes: u64) -> FResult<ArenaConfig> {
    if segment_size != 0 && arena_bytes / u64::from(segment_size) > MAX_SEGMENTS {
        return Err(FfiError::new(
            code::ECONFIG,
            format!(
                "arena of {arena_bytes} bytes with {segment_size}-byte segments: more than {MAX_SEGMENTS} segments \
                 (at most about {} bytes with this segment size)",
                MAX_SEGMENTS * u64::from(segment_size)
            ),
        ));
    }
    let base = ArenaConfig {
        segment_size,
        segment_count: 2,
        // 64 messages of 4 slots each way per channel. Not a bound of Flink's credit
        // (configurable beyond it; events take none): a full ring makes `send` wait, or
        // fail with EAGAIN at once with timeout 0 (the Flink module's task-thread path).
        ring_capacity: 256,
        max_channels: 1024,
        max_partitions: 1,
        // Two notify sets per TaskManager, one more for "a segment came back".
        max_gates: 2 * 64 + 1,
        max_channels_per_gate: 1024,
        max_workers: 64,
        max_tasks: 1,
    };
    base.with_arena_size(arena_bytes).map_err(|e| {
        FfiError::new(code::ECONFIG, format!("arena of {arena_bytes} bytes with {segment_size}-byte segments: {e}"))
    })
}

/// Refuses to create an arena larger than the space free in `dir` (its tmpfs): the file
/// is sparse, so it would be created, and a TaskManager would die of SIGBUS later when a
/// write reaches a page the file system cannot back.
fn check_room(dir: &Path, config: &ArenaConfig) -> FResult<()> {
    let size = config.layout().map_err(from_arena)?.total_size;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return Ok(());
    };
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Ok(()); // cannot tell: creating it reports what is wrong, if anything
    }
    #[allow(clippy::useless_conversion)] // the field widths differ between targets
    let free = room_free(u64::from(st.f_blocks), u64::from(st.f_bavail), u64::from(st.f_frsize));
    if let Some(free) = free.filter(|&free| size > free) {
        return Err(FfiError::new(
            code::ECONFIG,
            format!(
                "an arena of {size} bytes does not fit in the {free} bytes free in {} (a write past the free \
                 space would kill the TaskManager with SIGBUS): make the arena smaller or {} larger",
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// The bytes free for an arena from `statvfs`'s numbers, or `None` when they cannot tell:
/// a file system reporting no blocks at all (a tmpfs mounted with `size=0`, unlimited)
/// also reports none available, and must not refuse every arena.
fn room_free(blocks: u64, bavail: u64, frsize: u64) -> Option<u64> {
    (blocks != 0).then(|| bavail.saturating_mul(frsize))
}

/// One TaskManager's attachment to the host's arena.
pub struct ArenaCtx {
    /// The mapping.
    pub arena: Arc<Arena>,
    /// Our worker slot.
    pub slot: u32,
    /// Its generation since our registration (`liveness::generation`): with the slot,
    /// what names this TaskManager to its peers ([`peer_handle`]).
    pub generation: u32,
    opts: OpenOptions,
    /// Set by `close` before it marks our slot exited: `accept` refuses from then on (under
    /// the `accepted` lock, which `close`'s scan of unaccepted channels takes after it).
    leaving: AtomicBool,
    entry: PathBuf,
    accepted: Mutex<HashSet<u32>>,
    pending: [Mutex<VecDeque<u32>>; 2],
    /// Spin budget of each side's wait in ns ([`ArenaCtx::set_spin`]; `opts.spin_ns` at first).
    spin: [AtomicU64; 2],
    closed: Mutex<bool>,
}

/// A yield in a wait's spin that took longer than this gave the core to another thread
/// for a while: the core is needed, and the wait parks instead of spinning on.
const YIELD_CONTENDED: Duration = Duration::from_micros(50);

impl std::fmt::Debug for ArenaCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArenaCtx({:?}, slot {})", self.opts.name, self.slot)
    }
}

/// Which of a TaskManager's two notify sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Channels this TaskManager consumes.
    Consumer = 0,
    /// Channels this TaskManager produces.
    Producer = 1,
}

fn set_id(slot: u32, side: Side) -> u32 {
    2 * slot + side as u32
}

/// The notify-set member that [`ArenaCtx::wake`] marks: the last channel block, which
/// `connect` never hands out.
fn wake_member(arena: &Arena) -> u32 {
    arena.config().max_channels - 1
}

fn segments_wake(arena: &Arena) -> &EventCount {
    // The last gate block is the arena-wide "a segment came back" wake-up.
    &arena.gates()[arena.gates().len() - 1].wake
}

/// What names a TaskManager to its peers: its worker slot (low 32 bits) and that slot's
/// generation (high 32; a generation has 31 bits, so the handle is never negative). A
/// peer keeps the handle, never the bare slot: after the TaskManager leaves or dies, its
/// slot may be registered again by another, whose generation differs.
pub fn peer_handle(slot: u32, generation: u32) -> i64 {
    (i64::from(generation & liveness::GENERATION_MASK) << 32) | i64::from(slot)
}

/// The slot and generation of a [`peer_handle`]. `None` for a negative handle.
pub fn split_peer(peer: i64) -> Option<(u32, u32)> {
    (peer >= 0).then_some((peer as u32, (peer >> 32) as u32))
}

/// A registry entry: which slot of which arena a TaskManager holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Worker slot.
    pub slot: u32,
    /// The slot's generation at registration.
    pub generation: u32,
    /// Pid of the TaskManager's process.
    pub pid: u32,
    /// Its start time in clock ticks.
    pub start: u64,
    /// The arena name.
    pub arena: String,
}

/// The registry entry's file name of `tm_id`: `tm-` and the id's UTF-8 bytes in lowercase
/// hex. The Java side decodes it (`ShmTransport.registryEntryId`, counting the live
/// TaskManagers for the zero-copy cap): change both together.
fn entry_name(tm_id: &str) -> String {
    let mut s = String::with_capacity(3 + 2 * tm_id.len());
    s.push_str("tm-");
    for b in tm_id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn read_entry(path: &Path) -> Option<Entry> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut e = Entry { slot: u32::MAX, generation: 0, pid: 0, start: 0, arena: String::new() };
    for line in text.lines().take(16) {
        let (k, v) = line.split_once('=')?;
        match k {
            "slot" => e.slot = v.parse().ok()?,
            "generation" => e.generation = v.parse().ok()?,
            "pid" => e.pid = v.parse().ok()?,
            "start" => e.start = v.parse().ok()?,
            "arena" => e.arena = v.to_string(),
            _ => {}
        }
    }
    (e.slot != u32::MAX && e.pid != 0).then_some(e)
}

fn pid_alive(pid: u32, start: u64) -> bool {
    liveness::process_alive(pid, start)
}

struct DirLock(std::fs::File);

impl DirLock {
    fn take(dir: &Path) -> FResult<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            FfiError::new(code::EIO, format!("registry directory {} cannot be created: {e}", dir.display()))
        })?;
        let path = dir.join(".lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| {
            FfiError::new(code::EIO, format!("registry directory {} is not writable: {e}", dir.display()))
        })?;
        // SAFETY: flock on an fd we own; blocks until the other holder (a TaskManager
        // attaching or leaving, a few milliseconds) unlocks or dies.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(FfiError::new(
                code::EIO,
                format!("locking {}: {}", path.display(), std::io::Error::last_os_error()),
            ));
        }
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own fd (closing it would unlock too).
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The live entries of `dir` for arena `name`, removing the files of dead processes.
fn live_entries(dir: &Path, name: &str) -> Vec<(PathBuf, Entry)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for d in rd.flatten().take(100_000) {
        let p = d.path();
        if !d.file_name().to_string_lossy().starts_with("tm-") {
            continue;
        }
        match read_entry(&p) {
            Some(e) if pid_alive(e.pid, e.start) => {
                if e.arena == name {
                    out.push((p, e));
                }
            }
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    out
}

impl ArenaCtx {
    /// Creates the host's arena (O_EXCL, 0600) or attaches to it, claims a worker slot and
    /// registers this TaskManager in the registry directory.
    ///
    /// # Errors
    /// [`code::EIO`] for an unusable registry directory or arena file, [`code::ECONFIG`]
    /// for an arena too small or with another segment size, [`code::EINVAL`] for bad
    /// options.
    pub fn open(opts: OpenOptions) -> FResult<Arc<Self>> {
        if opts.tm_id.is_empty() || opts.tm_id.len() > 1024 || opts.tm_id.contains('\0') {
            return Err(inval("the TaskManager id must be 1..=1024 bytes without NUL"));
        }
        if opts.name.is_empty()
            || opts.name.len() > 200
            || opts.name.contains(['/', '\0'])
            || opts.name.starts_with('.')
        {
            return Err(inval(format!(
                "arena name {:?} must be 1..=200 characters without '/' and not start with '.'",
                opts.name
            )));
        }
        if opts.spin_ns > 1_000_000_000 {
            return Err(inval(format!("spin budget {} ns is above one second", opts.spin_ns)));
        }
        let config = arena_config(opts.segment_size, opts.arena_bytes)?;
        let _lock = DirLock::take(&opts.registry_dir)?;
        let live = live_entries(&opts.registry_dir, &opts.name);
        let shm = Path::new("/dev/shm").join(&opts.name);
        let mut arena = if live.is_empty() {
            // Nobody alive uses it: whatever is there is left over from a dead cluster.
            let _ = std::fs::remove_file(&shm);
            None
        } else {
            match Arena::attach_named(&opts.name) {
                Ok(a) => Some(a),
                Err(ArenaError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(from_arena(e)),
            }
        };
        if arena.is_none() {
            check_room(Path::new("/dev/shm"), &config)?;
            let mut a = Arena::create_named(&opts.name, &config).map_err(from_arena)?;
            a.keep();
            arena = Some(a);
        }
        let arena = Arc::new(arena.expect("set above"));
        if arena.segment_size() != opts.segment_size {
            return Err(FfiError::new(
                code::ECONFIG,
                format!(
                    "arena {} has segments of {} bytes, this TaskManager uses {}",
                    opts.name,
                    arena.segment_size(),
                    opts.segment_size
                ),
            ));
        }
        let c = arena.config();
        if c.max_gates < 2 * c.max_workers + 1
            || c.max_channels_per_gate < c.max_channels
            || c.ring_capacity < 2 * SLOTS as u32
        {
            return Err(FfiError::new(
                code::ECONFIG,
                format!("arena {} was not made by this module (geometry {c:?})", opts.name),
            ));
        }
        // What TaskManagers that died on this arena left behind comes back first (a
        // replacement TaskManager joining after a kill), exactly once whoever runs it.
        let _ = reclaim_dead_peers(&arena);
        let slot = liveness::claim(&arena).map_err(from_lib)?;
        // Ours since the claim: only our registration (or a reclaimer of our dead process)
        // changes it.
        let generation = liveness::generation(&arena, slot);
        for side in [Side::Consumer, Side::Producer] {
            NotifySet::new(&arena, set_id(slot, side)).map_err(from_lib)?.reset();
        }
        let entry = opts.registry_dir.join(entry_name(&opts.tm_id));
        let pid = std::process::id();
        let text = format!(
            "slot={slot}\ngeneration={generation}\npid={pid}\nstart={}\narena={}\n",
            process_start_ticks(pid).unwrap_or(0),
            opts.name
        );
        let tmp = opts.registry_dir.join(format!(".{}.tmp", entry_name(&opts.tm_id)));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &entry));
        if let Err(e) = written {
            liveness::mark_exited(&arena, slot);
            let _ = std::fs::remove_file(&tmp);
            return Err(FfiError::new(code::EIO, format!("registry directory {}: {e}", opts.registry_dir.display())));
        }
        let spin = opts.spin_ns;
        Ok(Arc::new(ArenaCtx {
            arena,
            slot,
            generation,
            opts,
            leaving: AtomicBool::new(false),
            entry,
            accepted: Mutex::new(HashSet::new()),
            pending: [Mutex::new(VecDeque::new()), Mutex::new(VecDeque::new())],
            spin: [AtomicU64::new(spin), AtomicU64::new(spin)],
            closed: Mutex::new(false),
        }))
    }

    /// Leaves: marks our slot exited, gives back the channels consumers opened towards us
    /// that we never accepted, removes our registry entry, and unlinks the arena file when
    /// no other live TaskManager is registered. Idempotent.
    ///
    /// The slot is marked before the scan of unaccepted channels: a consumer that opens a
    /// channel towards us at the same time either is seen by the scan, or sees us gone
    /// after its `open` and withdraws the channel itself (see `handshake`).
    pub fn close(&self) {
        let mut closed = self.closed.lock();
        if *closed {
            return;
        }
        *closed = true;
        // Relaxed: read under the `accepted` lock, which the scan below takes after this.
        self.leaving.store(true, Ordering::Relaxed);
        // Our EXITED, then a fence (paired with `ChannelCtx::connect`'s second look at us,
        // after its OPEN): of the two, at least one is seen.
        handshake::leave(|| liveness::mark_exited(&self.arena, self.slot));
        self.refuse_unaccepted();
        let lock = DirLock::take(&self.opts.registry_dir);
        let _ = std::fs::remove_file(&self.entry);
        if lock.is_ok() && live_entries(&self.opts.registry_dir, &self.opts.name).is_empty() {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(&self.opts.name));
        }
        drop(closed);
        self.wake(Side::Consumer);
        self.wake(Side::Producer);
    }

    /// At `close`: every channel a consumer opened towards us that we never accepted is
    /// taken and closed as `accept` followed by the channel's `close` would (the same
    /// handshake steps in the same order): one its consumer already closed is drained and
    /// freed; an open one is failed, and its consumer's close frees it. Without this, each
    /// such channel kept its block for good once we left (nobody else takes it while we
    /// run). The ids go into `accepted` under its lock, so a concurrent `accept` of the same
    /// channel fails there and never uses it.
    fn refuse_unaccepted(&self) {
        let arena = &self.arena;
        let (me, max) = (std::process::id(), arena.config().max_workers);
        let mut accepted = self.accepted.lock();
        for (i, b) in arena.channels().iter().enumerate() {
            let id = i as u32;
            // Ordered by `take`'s Acquire; a block towards our slot for another pid is a
            // previous holder's, for the reclaimer.
            if accepted.contains(&id) || b.producer_worker() != Some(self.slot) || b.claimer() != me {
                continue;
            }
            match handshake::take(b, self.slot, self.generation, me, max) {
                handshake::Take::Open { consumer_slot, .. } => {
                    accepted.insert(id);
                    match handshake::close(b, handshake::End::Producer) {
                        handshake::Closed::First => {
                            let set = NotifySet::new(arena, set_id(consumer_slot, Side::Consumer));
                            let _ = set.and_then(|s| s.mark(id));
                        }
                        // Its consumer closed it since `take`: ours to drain and free.
                        handshake::Closed::Last => self.drain_and_free(id),
                        // Its consumer died since `take`.
                        handshake::Closed::Other(CHANNEL_CONSUMER_DIED) => self.refuse_dead_consumer(id),
                        handshake::Closed::Other(_) => {}
                    }
                }
                handshake::Take::Abandoned => self.drain_and_free(id),
                // Its consumer died before we took it: the reclaimer failed it towards us
                // and nobody else will hand it back.
                handshake::Take::NotOpen(CHANNEL_CONSUMER_DIED) => self.refuse_dead_consumer(id),
                handshake::Take::NotOurs | handshake::Take::NotOpen(_) => {}
            }
        }
    }

    /// Channel `id` of ours, never accepted, whose consumer died (the reclaimer marked it
    /// CONSUMER_DIED and orphaned what that consumer had queued to us, its live reader):
    /// releases what is queued towards us (the last reader's release frees an orphaned
    /// segment; we never wrote the other ring) and hands the block on as CLOSED, as a
    /// producer's `close` does for a channel it had accepted. The CAS makes it once.
    fn refuse_dead_consumer(&self, id: u32) {
        drain_segments(self, id, RingKind::Credit, None);
        // Release: pairs with the Acquire CAS in `connect` of the next user.
        let _ = self.arena.channels()[id as usize].try_hand_over(CHANNEL_CONSUMER_DIED, CHANNEL_CLOSED);
    }

    /// Releases what is queued either way in channel `id`, which we hold without ever
    /// having read it, and frees its block.
    fn drain_and_free(&self, id: u32) {
        drain_segments(self, id, RingKind::Credit, None);
        drain_segments(self, id, RingKind::Data, None);
        handshake::free(&self.arena.channels()[id as usize]);
    }

    /// The [`peer_handle`] (worker slot and its generation) of TaskManager `tm_id` if it is
    /// registered on this arena and alive.
    ///
    /// # Errors
    /// [`code::ENOENT`] when it is not.
    pub fn lookup(&self, tm_id: &str) -> FResult<i64> {
        if tm_id.is_empty() || tm_id.len() > 1024 || tm_id.contains('\0') {
            return Err(inval("the TaskManager id must be 1..=1024 bytes without NUL"));
        }
        let p = self.opts.registry_dir.join(entry_name(tm_id));
        let not = |why: &str| FfiError::new(code::ENOENT, format!("TaskManager {tm_id:?}: {why}"));
        let e = read_entry(&p).ok_or_else(|| not("not registered on this host"))?;
        if e.arena != self.opts.name || e.slot >= self.arena.config().max_workers {
            return Err(not("registered on another arena"));
        }
        if !pid_alive(e.pid, e.start) {
            return Err(not("its process is gone"));
        }
        let w = &self.arena.workers()[e.slot as usize];
        // The slot still holds the process and the registration the entry names: the
        // generation first (Acquire), then the pid and start time it was written with.
        let generation = liveness::generation(&self.arena, e.slot);
        // Relaxed (both): ordered by the Acquire above; a stale value only makes us refuse
        // (and fall back to Netty).
        let (pid, start) = (w.pid.load(Ordering::Relaxed), w.start_ticks.load(Ordering::Relaxed));
        if !liveness::same_generation(generation, e.generation)
            || pid != e.pid
            || (start != 0 && e.start != 0 && start != e.start)
            || liveness::liveness(&self.arena, e.slot) != Liveness::Alive
        {
            return Err(not("its arena slot is not alive"));
        }
        Ok(peer_handle(e.slot, generation))
    }

    /// Whether the TaskManager `peer` names ([`peer_handle`]) is alive (1), left cleanly
    /// (0) or died (-1); 2 for a free slot (nobody registered in it, or its dead holder was
    /// reclaimed) and for a slot that another TaskManager holds now (its generation is not
    /// `peer`'s), which are not alive either. A handle of generation 0 (a bare slot) asks
    /// about the slot whoever holds it.
    ///
    /// # Errors
    /// [`code::EINVAL`] for a negative handle or a slot out of range.
    pub fn peer_state(&self, peer: i64) -> FResult<i32> {
        let Some((slot, generation)) = split_peer(peer) else {
            return Err(inval(format!("peer {peer} is negative")));
        };
        if slot >= self.arena.config().max_workers {
            return Err(inval(format!("worker slot {slot} is outside 0..{}", self.arena.config().max_workers)));
        }
        if generation != 0 && !liveness::same_generation(liveness::generation(&self.arena, slot), generation) {
            return Ok(2);
        }
        // Relaxed: a look at the state word; `liveness` below reads it again with Acquire. A
        // slot registered right after this look is reported free, as it was a moment ago.
        if self.arena.workers()[slot as usize].state.load(Ordering::Relaxed) == liveness::WORKER_FREE {
            return Ok(2);
        }
        let state = match liveness::liveness(&self.arena, slot) {
            Liveness::Alive => 1,
            Liveness::Exited => 0,
            Liveness::Dead { .. } => -1,
        };
        // The generation again, after `liveness`'s Acquire load of the state (see
        // `liveness::generation`): a slot freed and registered by another TaskManager
        // since the first look read as that one's state; it is not `peer`'s.
        if generation != 0 && !liveness::same_generation(liveness::generation(&self.arena, slot), generation) {
            return Ok(2);
        }
        Ok(state)
    }

    /// Sets how long waits of side `side` spin before they park (at most one second).
    ///
    /// # Errors
    /// [`code::EINVAL`] for a budget above one second.
    pub fn set_spin(&self, side: Side, spin_ns: u64) -> FResult<()> {
        if spin_ns > 1_000_000_000 {
            return Err(inval(format!("spin budget {spin_ns} ns is above one second")));
        }
        // Relaxed: a setting; a wait that starts later picks it up, none depends on when.
        self.spin[side as usize].store(spin_ns, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until channels of side `side` were marked (or `timeout`): writes up to
    /// `out.len()` channel ids, returns how many. Spins for the side's spin budget first,
    /// unless the core is contended: a spin gives the core away every 8th round, and when
    /// such a yield comes back late (another thread ran meanwhile) it parks at once.
    ///
    /// # Errors
    /// [`code::EPROTO`] for a corrupt notify set.
    pub fn wait(&self, side: Side, out: &mut [i32], timeout: Duration) -> FResult<usize> {
        let set = NotifySet::new(&self.arena, set_id(self.slot, side)).map_err(from_lib)?;
        let members = self.arena.config().max_channels;
        let mut pending = self.pending[side as usize].lock();
        let deadline = Instant::now() + timeout;
        // Relaxed: a setting (see set_spin).
        let spin_until = Instant::now() + Duration::from_nanos(self.spin[side as usize].load(Ordering::Relaxed));
        let mut contended = false;
        // Bounded: each round either returns or waits until the deadline, which is finite.
        for round in 0u64.. {
            let mut woken = false;
            if pending.is_empty() {
                set.drain(members, |i| {
                    if i == wake_member(&self.arena) {
                        woken = true;
                    } else {
                        pending.push_back(i);
                    }
                });
            }
            if woken || !pending.is_empty() || *self.closed.lock() {
                let n = out.len().min(pending.len());
                for (o, id) in out.iter_mut().zip(pending.drain(..n)) {
                    *o = id as i32;
                }
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            if now < spin_until && round < 1 << 24 && !contended {
                // Every 8th round gives the core away: on a host with fewer cores than busy
                // threads (the TaskManager's task threads, the other side's dispatcher), a
                // pure spin takes the time slice the thread that would mark us needs. A
                // yield that came back late means such threads are there: park.
                if round % 8 == 7 {
                    std::thread::yield_now();
                    contended = now.elapsed() > YIELD_CONTENDED;
                } else {
                    spin_loop();
                }
                continue;
            }
            let token = set.wake().prepare_wait();
            if set.any(members) || *self.closed.lock() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            set.wake().wait(token, Some(left.min(Duration::from_millis(500))));
        }
        Ok(0)
    }

    /// Wakes our own dispatcher of side `side` (it has work from this process, or must
    /// stop). Marks a member no channel uses, so the wake-up is not lost when the
    /// dispatcher is between its last check and its sleep.
    pub fn wake(&self, side: Side) {
        if let Ok(s) = NotifySet::new(&self.arena, set_id(self.slot, side)) {
            let _ = s.mark(wake_member(&self.arena));
        }
    }

    /// Segments on the free stack, and in all.
    pub fn segment_counts(&self) -> (u32, u32) {
        (self.arena.header_atomics().free_stack.len(), self.arena.segment_count())
    }
}

/// One end of a channel.
pub struct ChannelCtx {
    /// The TaskManager's arena.
    pub ctx: Arc<ArenaCtx>,
    /// Channel block index.
    pub id: u32,
    /// Which end.
    pub side: Side,
    /// The other end's worker slot.
    pub peer: u32,
    /// That slot's generation when the channel was opened.
    peer_generation: u32,
    peer_set: u32,
    out: Mutex<RingProducer>,
    inn: Mutex<RingConsumer>,
    /// Segments this end received and has not released yet (only these, and segments it
    /// acquired itself, may it release).
    held: Mutex<HashSet<u32>>,
    closed: Mutex<bool>,
}

impl std::fmt::Debug for ChannelCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelCtx({}, {:?}, peer {})", self.id, self.side, self.peer)
    }
}

fn ring_of(arena: &Arena, id: u32, kind: RingKind) -> Ring<'_> {
    let b = &arena.channels()[id as usize];
    let h = match kind {
        RingKind::Data => &b.data,
        RingKind::Credit => &b.credit,
        RingKind::Priority => &b.priority,
    };
    Ring::new(h, arena.ring_slots(id, kind))
}

impl ChannelCtx {
    fn block(&self) -> &ChannelBlock {
        &self.ctx.arena.channels()[self.id as usize]
    }

    fn out_kind(&self) -> RingKind {
        match self.side {
            Side::Producer => RingKind::Data,
            Side::Consumer => RingKind::Credit,
        }
    }

    fn in_kind(&self) -> RingKind {
        match self.side {
            Side::Producer => RingKind::Credit,
            Side::Consumer => RingKind::Data,
        }
    }

    /// Consumer side: claims a free channel block towards the TaskManager `peer` names (a
    /// [`peer_handle`] from [`ArenaCtx::lookup`]) and wakes its producer dispatcher.
    ///
    /// # Errors
    /// [`code::EINVAL`] for a negative handle, a bare slot (generation 0) or a slot out of
    /// range, [`code::EPEER`] for a TaskManager that is not alive (left, died, never
    /// registered, or its slot is another's now: [`ArenaCtx::peer_state`] is not 1, before
    /// or right after the channel is opened), [`code::ECONFIG`] when every channel block
    /// is taken.
    pub fn connect(ctx: &Arc<ArenaCtx>, peer: i64) -> FResult<Arc<Self>> {
        let gone = |producer: u32| {
            FfiError::new(code::EPEER, format!("the TaskManager in slot {producer} (peer {peer}) is not alive"))
        };
        let Some((producer, producer_generation)) = split_peer(peer) else {
            return Err(inval(format!("peer {peer} is negative")));
        };
        if producer_generation == 0 {
            return Err(inval(format!("peer {peer} is not a handle from a look-up (no generation)")));
        }
        if ctx.peer_state(peer)? != 1 {
            return Err(gone(producer));
        }
        let arena = &ctx.arena;
        let usable = wake_member(arena) as usize;
        // Relaxed: the producer's pid for the reclaimer, from a record we just saw alive.
        let producer_pid = arena.workers()[producer as usize].pid.load(Ordering::Relaxed);
        let me = std::process::id();
        for (i, b) in arena.channels().iter().enumerate().take(usable) {
            // Taken as PROBING by our pid (not CLAIMED) until OPEN: the state itself names
            // the claimer, so a reclaimer never reads the previous owner's `claim_pid` for
            // a block that is already ours (see `handshake`).
            if !handshake::claim(b, me) {
                continue;
            }
            let id = i as u32;
            let route = handshake::Route {
                producer_pid,
                consumer_pid: me,
                producer_slot: producer,
                consumer_slot: ctx.slot,
                producer_generation,
                consumer_generation: ctx.generation,
                consumer_set: set_id(ctx.slot, Side::Consumer),
                producer_set: set_id(producer, Side::Producer),
                member: id,
            };
            handshake::open(b, &route);
            let ch = Arc::new(ChannelCtx {
                ctx: ctx.clone(),
                id,
                side: Side::Consumer,
                peer: producer,
                peer_generation: producer_generation,
                peer_set: set_id(producer, Side::Producer),
                out: Mutex::new(RingProducer::attach(&ring_of(arena, id, RingKind::Credit))),
                inn: Mutex::new(RingConsumer::attach(&ring_of(arena, id, RingKind::Data))),
                held: Mutex::new(HashSet::new()),
                closed: Mutex::new(false),
            });
            // The look again after our OPEN (`handshake::still_there_after_open`: a fence
            // paired with `ArenaCtx::close`'s and with the reclaimer's in
            // `partition::reclaim::reclaim_slot`): a producer that left or died since our
            // first look and whose scan missed our OPEN is seen here (EXITED, RECLAIMING,
            // or its slot taken again).
            if !handshake::still_there_after_open(|| ctx.peer_state(peer) == Ok(1)) {
                ch.withdraw();
                return Err(gone(producer));
            }
            if let Err(e) = ch.notify_peer() {
                // The block is OPEN towards a producer that will not hear of it: withdrawn
                // (freed, or left to a producer that took it meanwhile), not left open
                // until that producer's close scan.
                ch.withdraw();
                return Err(e);
            }
            return Ok(ch);
        }
        Err(FfiError::new(code::ECONFIG, "every channel block of the arena is taken"))
    }

    /// Producer side: takes channel `id`, which our producer dispatcher saw marked.
    ///
    /// # Errors
    /// [`code::EINVAL`] for an id out of range, a channel that is not open towards us, or
    /// one we already accepted.
    pub fn accept(ctx: &Arc<ArenaCtx>, id: u32) -> FResult<Arc<Self>> {
        let arena = &ctx.arena;
        let Some(b) = arena.channels().get(id as usize) else {
            return Err(inval(format!("channel {id} is outside 0..{}", arena.config().max_channels)));
        };
        // Held across the check, `take`, and the insert or the abandoned drain-and-free:
        // `refuse_unaccepted` and a producer's `close` do their take/close and free under it
        // too, so no two of them ever free the same block (a CONSUMER_GONE seen here after
        // one of them took it would otherwise read as "abandoned" and be freed twice).
        // Nothing taken under it takes this lock or one held around it elsewhere.
        let mut accepted = ctx.accepted.lock();
        if accepted.contains(&id) {
            return Err(inval(format!("channel {id} is already accepted")));
        }
        // Relaxed: `close` sets it before it takes this lock for its scan; under the lock
        // we see it if the scan came first.
        if ctx.leaving.load(Ordering::Relaxed) {
            return Err(FfiError::new(code::EPEER, format!("channel {id}: this TaskManager is closing its arena")));
        }
        let max = arena.config().max_workers;
        let (consumer, consumer_generation) =
            match handshake::take(b, ctx.slot, ctx.generation, std::process::id(), max) {
                handshake::Take::Open { consumer_slot, consumer_generation } => (consumer_slot, consumer_generation),
                handshake::Take::Abandoned => {
                    // Its consumer left before we took it (a task cancelled right after its
                    // partition request): the request it queued is ours to release, and the
                    // block goes back (it would stay CONSUMER_GONE for good otherwise).
                    drain_segments(ctx, id, RingKind::Credit, None);
                    drain_segments(ctx, id, RingKind::Data, None);
                    handshake::free(b);
                    return Err(FfiError::new(
                        code::EPEER,
                        format!("channel {id}: its consumer closed it before it was accepted"),
                    ));
                }
                handshake::Take::NotOurs => {
                    return Err(inval(format!("channel {id} is not addressed to this TaskManager")));
                }
                handshake::Take::NotOpen(_) => return Err(inval(format!("channel {id} is not open"))),
            };
        accepted.insert(id);
        drop(accepted);
        Ok(Arc::new(ChannelCtx {
            ctx: ctx.clone(),
            id,
            side: Side::Producer,
            peer: consumer,
            peer_generation: consumer_generation,
            peer_set: set_id(consumer, Side::Consumer),
            out: Mutex::new(RingProducer::attach(&ring_of(arena, id, RingKind::Data))),
            inn: Mutex::new(RingConsumer::attach(&ring_of(arena, id, RingKind::Credit))),
            held: Mutex::new(HashSet::new()),
            closed: Mutex::new(false),
        }))
    }

    fn check_open(&self) -> FResult<()> {
        if *self.closed.lock() {
            return Err(inval(format!("channel {} is closed", self.id)));
        }
        Ok(())
    }

    fn notify_peer(&self) -> FResult<()> {
        NotifySet::new(&self.ctx.arena, self.peer_set).and_then(|s| s.mark(self.id)).map_err(from_lib)
    }

    /// Takes a free segment for writing, waiting up to `timeout` for one to come back.
    ///
    /// # Errors
    /// [`code::EAGAIN`] when none came back in time; [`code::EPROTO`] for a corrupt free
    /// stack.
    pub fn acquire(&self, timeout: Duration) -> FResult<u32> {
        self.check_open()?;
        let arena = &self.ctx.arena;
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline: every round parks for the rest of it at most.
        loop {
            // Through our slot's free-stack lane: a SIGKILL between the pop and the owner
            // swap leaves the segment to our slot's online reclaimer.
            let owner = Owner::Writer { pool: 0, worker: self.ctx.slot };
            if let Some(s) = NetworkBufferPool::new(arena.clone()).request(owner, 0).map_err(from_lib)? {
                let s = s.into_index();
                // Relaxed: bookkeeping for checkers and the reclaimer; the segment is ours
                // alone now.
                arena.controls()[s as usize].refcount.store(0, Ordering::Relaxed);
                return Ok(s);
            }
            let token = segments_wake(arena).prepare_wait();
            if !arena.header_atomics().free_stack.is_empty() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FfiError::new(code::EAGAIN, format!("no free segment within {timeout:?}")));
            }
            segments_wake(arena).wait(token, Some(left.min(Duration::from_millis(100))));
        }
    }

    /// Returns a segment to the free stack: one this end received, or one it acquired and
    /// did not send.
    ///
    /// # Errors
    /// [`code::EINVAL`] for an index out of range or a segment this end does not hold.
    pub fn release(&self, segment: i32) -> FResult<()> {
        let received = segment >= 0 && self.held.lock().remove(&(segment as u32));
        let r = release_segment(&self.ctx, self.id, segment, received);
        if r.is_err() && received {
            self.held.lock().insert(segment as u32);
        }
        r
    }

    /// Publishes `msg` (with its segment, if any) to the other end, waiting up to
    /// `timeout` for room in the ring.
    ///
    /// # Errors
    /// [`code::EINVAL`] for a bad message or a segment we do not hold; [`code::EPEER`]
    /// when the other end closed or died; [`code::EAGAIN`] when the ring stayed full.
    pub fn send(&self, msg: &Msg, timeout: Duration) -> FResult<()> {
        self.check_open()?;
        let arena = &self.ctx.arena;
        let slots = msg.encode(arena.segment_size())?;
        if msg.segment >= 0 {
            let s = msg.segment as u32;
            let Some(ctl) = arena.controls().get(s as usize) else {
                return Err(inval(format!("segment {s} is outside 0..{}", arena.segment_count())));
            };
            // Relaxed: only we write the owner of a segment we hold.
            if ctl.owner.load(Ordering::Relaxed) != (Owner::Writer { pool: 0, worker: self.ctx.slot }).pack() {
                return Err(inval(format!("segment {s} is not held by this TaskManager for writing")));
            }
        }
        let ring = ring_of(arena, self.id, self.out_kind());
        let place = || format!("channel {}", self.id);
        let deadline = Instant::now() + timeout;
        let mut out = self.out.lock();
        let mut pause = Duration::from_micros(20);
        // Bounded by the deadline.
        loop {
            self.peer_gone()?;
            self.mark_in_flight(msg.segment, true);
            match out.push_all(&ring, &slots, &place) {
                Ok(()) => break,
                Err(PushError::Full) => self.mark_in_flight(msg.segment, false),
                Err(PushError::Violation(v)) => {
                    // Not published: the segment stays ours, so a later release or the
                    // reclaimer finds it held for writing, not in flight to no one.
                    self.mark_in_flight(msg.segment, false);
                    return Err(from_lib(v));
                }
            }
            if Instant::now() >= deadline {
                return Err(FfiError::new(
                    code::EAGAIN,
                    format!("channel {}: the ring stayed full for {timeout:?}", self.id),
                ));
            }
            // The ring is full only when the other side stopped reading (64 messages):
            // a rare, slow path; sleep with a growing pause instead of a second wake-up word.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        drop(out);
        if self.side == Side::Producer && msg.size > 0 {
            let b = self.block();
            // Relaxed (both): statistics.
            b.buffers_out.fetch_add(1, Ordering::Relaxed);
            b.bytes_out.fetch_add(msg.size as u64, Ordering::Relaxed);
        }
        if self.side == Side::Producer
            && msg.flags & i32::from(FLAG_POLLABLE) != 0
            && !crate::polled::must_mark(self.block())
        {
            return Ok(());
        }
        self.notify_peer()
    }

    /// Consumer side: whether this end's task polls the data ring itself from now on (the
    /// `polled` module); `false` also orders the caller's next poll after it.
    ///
    /// # Errors
    /// [`code::EINVAL`] on a producer end or a closed end.
    pub fn set_task_polls(&self, on: bool) -> FResult<()> {
        self.check_open()?;
        if self.side != Side::Consumer {
            return Err(inval("the task polls on the consumer end"));
        }
        if on {
            crate::polled::start(self.block());
        } else {
            crate::polled::stop(self.block());
        }
        Ok(())
    }

    /// Marks `segment` (when there is one) as in flight on this channel with one reader,
    /// just before its message is pushed, or back as held for writing by this
    /// TaskManager when the push did not happen.
    fn mark_in_flight(&self, segment: i32, in_flight: bool) {
        let Ok(s) = usize::try_from(segment) else { return };
        let Some(ctl) = self.ctx.arena.controls().get(s) else { return };
        let (refs, owner) = if in_flight {
            (1, Owner::InFlight { channel: self.id, fanout: 1 })
        } else {
            (0, Owner::Writer { pool: 0, worker: self.ctx.slot })
        };
        // Relaxed (both): when in flight, the Release store of the ring tail in push_all
        // publishes them; one reader holds the segment until it releases (the reclaimer's
        // orphaning works on this count). Otherwise nothing was published.
        ctl.refcount.store(refs, Ordering::Relaxed);
        ctl.owner.store(owner.pack(), Ordering::Relaxed);
    }

    /// Consumer side: banks `n` more credits for the producer (`banked`), waking its
    /// dispatcher only when it said it waits for credit.
    ///
    /// # Errors
    /// [`code::EINVAL`] on a producer end, a closed end or `n` = 0; [`code::EPEER`] when
    /// the producer closed its end or died.
    pub fn bank_credit(&self, n: u32) -> FResult<()> {
        self.check_open()?;
        if self.side != Side::Consumer {
            return Err(inval("credit is banked by the consumer end"));
        }
        if n == 0 {
            return Err(inval("banking 0 credits"));
        }
        self.peer_gone()?;
        let b = self.block();
        b.count_credit_granted(n);
        if crate::banked::bank(b, n) {
            self.notify_peer()?;
        }
        Ok(())
    }

    /// Producer side: takes the credit the consumer banked (0 when there is none; then the
    /// consumer's next bank wakes this side's dispatcher with this channel marked).
    ///
    /// # Errors
    /// [`code::EINVAL`] on a consumer end or a closed end.
    pub fn take_credit(&self) -> FResult<u32> {
        self.check_open()?;
        if self.side != Side::Producer {
            return Err(inval("banked credit is taken by the producer end"));
        }
        Ok(crate::banked::take(self.block()))
    }

    /// Takes up to `out.len()` messages; returns how many.
    ///
    /// # Errors
    /// [`code::EPROTO`] for a malformed message; [`code::EPEER`] when nothing is left and
    /// the other end closed or died.
    pub fn poll(&self, out: &mut [Msg]) -> FResult<usize> {
        self.check_open()?;
        let arena = &self.ctx.arena;
        let ring = ring_of(arena, self.id, self.in_kind());
        let place = || format!("channel {}", self.id);
        let mut inn = self.inn.lock();
        let mut n = 0;
        let (mut bytes, mut bufs) = (0u64, 0u64);
        while n < out.len() {
            if inn.available(&ring, &place).map_err(from_lib)? < SLOTS {
                break;
            }
            let mut s = [0u64; 4];
            for v in &mut s {
                *v = inn.pop(&ring, &place).map_err(from_lib)?.unwrap_or(0);
            }
            let m = Msg::decode(s, arena.segment_size(), arena.segment_count())?;
            if m.segment >= 0 {
                let ctl = &arena.controls()[m.segment as usize];
                // Relaxed: ordered after the sender's store by the ring's Acquire.
                if ctl.owner.load(Ordering::Relaxed) != (Owner::InFlight { channel: self.id, fanout: 1 }).pack() {
                    return Err(FfiError::new(
                        code::EPROTO,
                        format!("channel {}: message names segment {} that is not in flight here", self.id, m.segment),
                    ));
                }
                self.held.lock().insert(m.segment as u32);
                bufs += 1;
                bytes += m.size as u64;
            }
            out[n] = m;
            n += 1;
        }
        drop(inn);
        if n == 0 {
            self.peer_gone()?;
        } else if self.side == Side::Consumer {
            let b = self.block();
            // Relaxed (both): statistics.
            b.buffers_in.fetch_add(bufs, Ordering::Relaxed);
            b.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// 0 open, 1 the other end closed, 2 the other end's process died.
    pub fn peer_status(&self) -> i32 {
        let gone_mark = match self.side {
            Side::Consumer => CHANNEL_PRODUCER_FAILED,
            Side::Producer => CHANNEL_CONSUMER_GONE,
        };
        let died_mark = match self.side {
            Side::Consumer => CHANNEL_PRODUCER_DIED,
            Side::Producer => CHANNEL_CONSUMER_DIED,
        };
        // Acquire: pairs with the Release CAS in `close` and the reclaimer's AcqRel CAS.
        let st = self.block().state();
        if st == gone_mark {
            return 1;
        }
        if st == died_mark || st == CHANNEL_ORPHANED {
            return 2;
        }
        if !liveness::same_generation(liveness::generation(&self.ctx.arena, self.peer), self.peer_generation) {
            // The slot was registered again (or freed): the process we talked to left it.
            // A death would have marked the channel (the reclaimer fails it first).
            return 1;
        }
        let state = match liveness::liveness(&self.ctx.arena, self.peer) {
            Liveness::Alive => 0,
            Liveness::Exited => 1,
            Liveness::Dead { .. } => 2,
        };
        // Again after `liveness`'s Acquire load of the state (see `ArenaCtx::peer_state`):
        // the state read may be the next holder's.
        if !liveness::same_generation(liveness::generation(&self.ctx.arena, self.peer), self.peer_generation) {
            return 1;
        }
        state
    }

    /// 0 open, 1 the other end closed, 2 it died, from the block's state word alone (no
    /// look at `/proc`): what the per-message paths check. A peer that died without anybody
    /// noticing yet is found by [`peer_status`](Self::peer_status), which the caller's
    /// liveness tick runs (every 200 ms in the Flink module), and which reclaims it.
    pub fn peer_mark(&self) -> i32 {
        let (gone_mark, died_mark) = match self.side {
            Side::Consumer => (CHANNEL_PRODUCER_FAILED, CHANNEL_PRODUCER_DIED),
            Side::Producer => (CHANNEL_CONSUMER_GONE, CHANNEL_CONSUMER_DIED),
        };
        // Acquire: pairs with the Release CAS in `close` and the reclaimer's AcqRel CAS.
        match self.block().state() {
            s if s == gone_mark => 1,
            s if s == died_mark || s == CHANNEL_ORPHANED => 2,
            _ => 0,
        }
    }

    fn peer_gone(&self) -> FResult<()> {
        match self.peer_mark() {
            0 => Ok(()),
            1 => Err(FfiError::new(code::EPEER, format!("channel {}: the other end closed it", self.id))),
            _ => Err(FfiError::new(code::EPEER, format!("channel {}: the other end's process died", self.id))),
        }
    }

    /// Buffers and bytes that went out (producer) and came in (consumer) on this channel.
    pub fn counters(&self) -> [u64; 4] {
        let b = self.block();
        // Relaxed (all): statistics.
        [
            b.buffers_out.load(Ordering::Relaxed),
            b.bytes_out.load(Ordering::Relaxed),
            b.buffers_in.load(Ordering::Relaxed),
            b.bytes_in.load(Ordering::Relaxed),
        ]
    }

    /// Closes this end. The first end to close marks the block and wakes the other; the
    /// second frees every segment still queued in either ring and frees the block.
    /// Idempotent.
    pub fn close(&self) {
        let mut closed = self.closed.lock();
        if *closed {
            return;
        }
        *closed = true;
        // Segments we received and the caller never released (a cancelled task).
        for s in std::mem::take(&mut *self.held.lock()) {
            let _ = release_segment(&self.ctx, self.id, s as i32, true);
        }
        let b = self.block();
        // Producer: the id leaves `accepted`, and the block is closed (and freed if ours),
        // under its lock, as in `accept` and `refuse_unaccepted`: an `accept` of the same id
        // racing with this close would otherwise see CONSUMER_GONE as "abandoned" and free
        // the block a second time. Locks taken under it: `inn` (ours alone).
        let accepted = (self.side == Side::Producer).then(|| {
            let mut a = self.ctx.accepted.lock();
            a.remove(&self.id);
            a
        });
        let end = match self.side {
            Side::Consumer => handshake::End::Consumer,
            Side::Producer => handshake::End::Producer,
        };
        match handshake::close(b, end) {
            handshake::Closed::First => {
                drop(accepted);
                let _ = self.notify_peer();
            }
            handshake::Closed::Last => {
                // The other end is done: segments still queued either way are ours to free.
                let mut inn = self.inn.lock();
                drain_segments(&self.ctx, self.id, self.in_kind(), Some(&mut inn));
                drain_segments(&self.ctx, self.id, self.out_kind(), None);
                handshake::free(b);
            }
            handshake::Closed::Other(st) => self.close_dead_peer(st),
        }
    }

    /// Consumer side, in `connect`: the producer left (or died) between our look at it and
    /// our `open`, and may never look at the block again: takes the channel back
    /// (`handshake::withdraw`), and frees the block when that makes it ours.
    fn withdraw(&self) {
        *self.closed.lock() = true;
        let b = self.block();
        match handshake::withdraw(b, std::process::id()) {
            handshake::Withdrawn::Free => {
                let mut inn = self.inn.lock();
                drain_segments(&self.ctx, self.id, self.in_kind(), Some(&mut inn));
                drain_segments(&self.ctx, self.id, self.out_kind(), None);
                handshake::free(b);
            }
            handshake::Withdrawn::ProducerFrees => {}
            handshake::Withdrawn::Other(st) => self.close_dead_peer(st),
        }
    }

    /// The rest of `close` when the block was not open: the reclaimer marked it because
    /// the other end's process died.
    fn close_dead_peer(&self, st: u32) {
        let arena = &self.ctx.arena;
        let b = self.block();
        match st {
            CHANNEL_CONSUMER_DIED if self.side == Side::Producer => {
                // The reclaimer failed the channel of our dead consumer and freed what it
                // held; what we published there is ours to take back: the dead reader
                // cannot release it. What it queued to us (its live reader) and we never
                // polled the reclaimer orphaned: our release of it frees it.
                let mut inn = self.inn.lock();
                drain_segments(&self.ctx, self.id, self.in_kind(), Some(&mut inn));
                drop(inn);
                let me = std::process::id();
                for (i, ctl) in arena.controls().iter().enumerate() {
                    // Relaxed (both): re-checked by the owner CAS in free_own_segment_if.
                    let owner = ctl.owner.load(Ordering::Relaxed);
                    if ctl.holder_pid.load(Ordering::Relaxed) == me
                        && owner == (Owner::InFlight { channel: self.id, fanout: 1 }).pack()
                    {
                        free_own_segment_if(arena, i as u32, owner, self.ctx.slot);
                    }
                }
                segments_wake(arena).notify();
                // Release: pairs with the Acquire CAS in `connect` of the next user.
                let _ = b.try_hand_over(CHANNEL_CONSUMER_DIED, CHANNEL_CLOSED);
            }
            CHANNEL_PRODUCER_DIED if self.side == Side::Consumer => {
                // Our dead producer's segments still queued to us were orphaned by the
                // reclaimer: releasing them (the last reader) frees them.
                let mut inn = self.inn.lock();
                drain_segments(&self.ctx, self.id, self.in_kind(), Some(&mut inn));
                // AcqRel: hands the block to the reclaimer's settling pass (its Acquire CAS).
                let _ = b.try_transition(CHANNEL_PRODUCER_DIED, CHANNEL_ORPHANED);
                let _ = reclaim_dead_peers(arena);
            }
            _ => {}
        }
    }
}

/// Takes every message still queued in ring `kind` of channel `id` (through `consumer`, the
/// end's own ring consumer, or a fresh one) and releases the segments they carry. Bounded
/// by the ring's capacity.
fn drain_segments(ctx: &ArenaCtx, id: u32, kind: RingKind, consumer: Option<&mut RingConsumer>) {
    let arena = &ctx.arena;
    let ring = ring_of(arena, id, kind);
    let place = || format!("channel {id}");
    let mut fresh;
    let c = match consumer {
        Some(c) => c,
        None => {
            fresh = RingConsumer::attach(&ring);
            &mut fresh
        }
    };
    for _ in 0..ring.capacity() / SLOTS {
        if c.available(&ring, &place).unwrap_or(0) < SLOTS {
            break;
        }
        let mut s = [0u64; 4];
        for v in &mut s {
            *v = c.pop(&ring, &place).ok().flatten().unwrap_or(0);
        }
        if let Ok(m) = Msg::decode(s, arena.segment_size(), arena.segment_count()) {
            if m.segment >= 0 {
                let _ = release_segment(ctx, id, m.segment, true);
            }
        }
    }
}

/// Reclaims what dead TaskManagers (of any process attached to `ctx`'s arena) left
/// behind: the online reclamation of `shmflow::partition::reclaim`, exactly once per dead
/// process whoever calls it.
pub fn reclaim(ctx: &ArenaCtx) -> FResult<ReclaimReport> {
    reclaim_dead_peers(&ctx.arena).map_err(from_lib)
}

/// Frees `segment`: one this end `received` on `channel` (its one reader lets go; when the
/// reclaimer orphaned it because its producer died, this release frees it all the same), or
/// one this TaskManager acquired and never sent.
fn release_segment(ctx: &ArenaCtx, channel: u32, segment: i32, received: bool) -> FResult<()> {
    let arena = &ctx.arena;
    if segment < 0 || segment as u32 >= arena.segment_count() {
        return Err(inval(format!("segment {segment} is outside 0..{}", arena.segment_count())));
    }
    let ctl = &arena.controls()[segment as usize];
    let held = if received {
        Owner::InFlight { channel, fanout: 1 }.pack()
    } else {
        Owner::Writer { pool: 0, worker: ctx.slot }.pack()
    };
    // Relaxed: a first look; the CAS in free_own_segment_if decides.
    if ctl.owner.load(Ordering::Relaxed) != held {
        return Err(inval(format!("segment {segment} is not held by this end of channel {channel}")));
    }
    if received {
        // AcqRel: pairs with the reclaimer's fetch_or in `orphan_segment`: exactly one of
        // us sees "orphaned and zero"; our reads of the payload come before its reuse.
        let prev = ctl.refcount.fetch_sub(1, Ordering::AcqRel);
        if prev & REFCOUNT_MASK != 1 {
            return Err(FfiError::new(
                code::EPROTO,
                format!("segment {segment} had {} readers, not 1", prev & REFCOUNT_MASK),
            ));
        }
    }
    // The owner CAS inside decides between us and a reclaimer that saw the count at zero:
    // one of us pushes the segment, we through our slot's lane (a SIGKILL in here leaves
    // it to our slot's online reclaimer).
    free_own_segment_if(arena, segment as u32, held, ctx.slot);
    segments_wake(arena).notify();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_unknown_on_a_file_system_without_block_counts() {
        // An unlimited tmpfs: no blocks, none available.
        assert_eq!(room_free(0, 0, 4096), None);
        assert_eq!(room_free(1000, 10, 4096), Some(40960));
        // A full (limited) file system still refuses.
        assert_eq!(room_free(1000, 0, 4096), Some(0));
        assert_eq!(room_free(u64::MAX, u64::MAX, 4096), Some(u64::MAX));
    }

    /// Removes the arena and its registry even when the test fails (a panic skips
    /// `close`).
    struct Scratch(String, PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.1);
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(&self.0));
        }
    }

    impl Scratch {
        /// A scratch arena named after this process and `tag`.
        fn new(tag: &str) -> Self {
            let name = format!("shmflow-ffi-unit-{}-{tag}", std::process::id());
            let dir = std::env::temp_dir().join(format!("{name}.reg"));
            Scratch(name, dir)
        }

        /// Registers TaskManager `tm` on it.
        fn open(&self, tm: &str) -> FResult<Arc<ArenaCtx>> {
            ArenaCtx::open(OpenOptions {
                name: self.0.clone(),
                registry_dir: self.1.clone(),
                tm_id: tm.into(),
                arena_bytes: 8 << 20,
                segment_size: 32 << 10,
                spin_ns: 0,
            })
        }
    }

    #[test]
    fn closing_an_arena_hands_back_an_unaccepted_channel_whose_consumer_died() {
        let scratch = Scratch::new("dead-consumer");
        let run = || -> FResult<()> {
            let a = scratch.open("tm-producer")?;
            let b = scratch.open("tm-consumer")?;
            let cons = ChannelCtx::connect(&b, b.lookup("tm-producer")?)?;
            let seg = cons.acquire(Duration::from_secs(1))?;
            cons.send(&Msg { kind: 7, segment: seg as i32, size: 1, ..Msg::default() }, Duration::ZERO)?;
            let block = &a.arena.channels()[cons.id as usize];
            // What the reclaimer does when the consumer's process dies before the
            // producer accepted (its queued segment stays in flight to us, its reader).
            block.try_transition(shmflow::memory::CHANNEL_OPEN, CHANNEL_CONSUMER_DIED).expect("the channel was open");
            a.close();
            assert_eq!(block.state(), CHANNEL_CLOSED, "the block was not handed back");
            let ctl = &a.arena.controls()[seg as usize];
            // Relaxed: single-threaded test.
            assert_eq!(ctl.owner.load(Ordering::Relaxed), Owner::Free.pack(), "the queued segment was not freed");
            b.close();
            Ok(())
        };
        run().unwrap();
    }

    /// The pid of a process that ran and was reaped.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().expect("`true` runs");
        let pid = c.id();
        c.wait().expect("reaped");
        pid
    }

    /// Channel blocks of `arena` that are neither free nor closed (in use, or lost).
    fn blocks_in_use(arena: &Arena) -> usize {
        arena
            .channels()
            .iter()
            .filter(|b| ![shmflow::memory::CHANNEL_FREE, CHANNEL_CLOSED].contains(&b.state()))
            .count()
    }

    #[test]
    fn a_slot_at_the_last_31_bit_generation_wraps_to_1_and_its_handle_round_trips() {
        let scratch = Scratch::new("gen-wrap");
        let run = || -> FResult<()> {
            let b = scratch.open("tm-consumer")?;
            for w in b.arena.workers() {
                // Relaxed (both): single-threaded set-up before the next registration.
                if w.state.load(Ordering::Relaxed) == liveness::WORKER_FREE {
                    w.generation.store(liveness::GENERATION_MASK, Ordering::Relaxed);
                }
            }
            let x = scratch.open("tm-x")?;
            assert_eq!(x.generation, 1, "2^31 - 1 bumps to 1 (2^31 made a handle of generation 0)");
            let h = b.lookup("tm-x")?;
            assert_eq!(h, peer_handle(x.slot, 1));
            assert_eq!(split_peer(h), Some((x.slot, 1)));
            assert_eq!(
                split_peer(peer_handle(x.slot, liveness::GENERATION_MASK)),
                Some((x.slot, liveness::GENERATION_MASK))
            );
            assert_eq!(b.peer_state(h)?, 1);
            let cons = ChannelCtx::connect(&b, h)?;
            let prod = ChannelCtx::accept(&x, cons.id)?;
            prod.close();
            cons.close();
            x.close();
            b.close();
            Ok(())
        };
        run().unwrap();
    }

    #[test]
    fn a_peer_handle_of_a_taskmanager_whose_slot_was_registered_again_reaches_nobody() {
        let scratch = Scratch::new("slot-reuse");
        let run = || -> FResult<()> {
            let b = scratch.open("tm-consumer")?;
            let x = scratch.open("tm-x")?;
            let old = b.lookup("tm-x")?;
            assert_eq!(split_peer(old), Some((x.slot, x.generation)));
            assert_eq!(b.peer_state(old)?, 1);
            // tm-x's process dies (its record names a dead pid) and is reclaimed: its slot
            // is free, and the next TaskManager to register takes it.
            let w = &b.arena.workers()[x.slot as usize];
            // Relaxed (both): single-threaded set-up, published by the reclaimer's CAS.
            w.pid.store(dead_pid(), Ordering::Relaxed);
            w.start_ticks.store(0, Ordering::Relaxed);
            assert_eq!(reclaim(&b)?.reclaimed.len(), 1);
            let y = scratch.open("tm-y")?;
            assert_eq!(y.slot, x.slot, "the freed slot is taken again");
            assert_ne!(y.generation, x.generation);
            // The old handle names tm-x, which is gone: not the TaskManager in its slot now.
            assert_eq!(b.peer_state(old)?, 2, "a handle of the previous holder");
            let e = ChannelCtx::connect(&b, old).expect_err("a channel to the slot's next holder");
            assert_eq!(e.code, code::EPEER, "{e:?}");
            assert_eq!(b.lookup("tm-x").map_err(|e| e.code), Err(code::ENOENT), "tm-x's entry is stale");
            assert_eq!(blocks_in_use(&b.arena), 0, "the refused connect holds no block");
            // tm-y through its own handle works, and a block addressed to tm-x's generation
            // (opened by a consumer that looked tm-x up just before the reuse) is not
            // taken by tm-y.
            let new = b.lookup("tm-y")?;
            assert_ne!(new, old);
            let cons = ChannelCtx::connect(&b, new)?;
            let prod = ChannelCtx::accept(&y, cons.id)?;
            prod.close();
            cons.close();
            let blk = &b.arena.channels()[0];
            assert!(handshake::claim(blk, std::process::id()));
            let route = handshake::Route {
                producer_pid: std::process::id(),
                consumer_pid: std::process::id(),
                producer_slot: x.slot,
                consumer_slot: b.slot,
                producer_generation: x.generation,
                consumer_generation: b.generation,
                consumer_set: set_id(b.slot, Side::Consumer),
                producer_set: set_id(x.slot, Side::Producer),
                member: 0,
            };
            handshake::open(blk, &route);
            let e = ChannelCtx::accept(&y, 0).expect_err("tm-y took a channel meant for tm-x");
            assert_eq!(e.code, code::EINVAL, "{e:?}");
            assert!(e.msg.contains("not addressed"), "{e:?}");
            y.close();
            b.close();
            Ok(())
        };
        run().unwrap();
    }

    #[test]
    fn a_producer_closing_a_channel_whose_consumer_died_frees_what_that_consumer_queued() {
        let scratch = Scratch::new("dead-consumer-accepted");
        let run = || -> FResult<()> {
            let a = scratch.open("tm-producer")?;
            let b = scratch.open("tm-consumer")?;
            let cons = ChannelCtx::connect(&b, b.lookup("tm-producer")?)?;
            let prod = ChannelCtx::accept(&a, cons.id)?;
            // A request with a payload (as the partition request is), never polled.
            let seg = cons.acquire(Duration::from_secs(1))?;
            cons.send(&Msg { kind: 7, segment: seg as i32, size: 1, ..Msg::default() }, Duration::ZERO)?;
            let block = &a.arena.channels()[cons.id as usize];
            let ctl = &a.arena.controls()[seg as usize];
            // The consumer is another process (both ends run here): the segment it sent
            // names it as holder.
            // Relaxed: single-threaded set-up.
            ctl.holder_pid.store(dead_pid(), Ordering::Relaxed);
            // What the reclaimer does when the consumer's process dies.
            block.try_transition(shmflow::memory::CHANNEL_OPEN, CHANNEL_CONSUMER_DIED).expect("the channel was open");
            assert_eq!(prod.peer_status(), 2);
            prod.close();
            assert_eq!(block.state(), CHANNEL_CLOSED, "the block was not handed back");
            // Relaxed: single-threaded test.
            assert_eq!(ctl.owner.load(Ordering::Relaxed), Owner::Free.pack(), "the queued segment was not freed");
            b.close();
            a.close();
            Ok(())
        };
        run().unwrap();
    }

    #[test]
    fn channels_opened_while_their_producer_opens_and_closes_again_and_again_are_all_freed() {
        let scratch = Scratch::new("close-race");
        let b = scratch.open("tm-consumer").unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (mut connected, mut refused) = (0u32, 0u32);
        std::thread::scope(|sc| {
            let producer = sc.spawn(|| {
                // Bounded: 300 registrations; each accepts what its dispatcher saw, briefly.
                for _ in 0..300 {
                    let p = scratch.open("tm-p").unwrap();
                    let mut ids = [0i32; 8];
                    if let Ok(n) = p.wait(Side::Producer, &mut ids, Duration::ZERO) {
                        for &id in &ids[..n] {
                            if let Ok(ch) = ChannelCtx::accept(&p, id as u32) {
                                ch.close();
                            }
                        }
                    }
                    p.close();
                }
                // Relaxed: a stop flag; the join orders the rest.
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            // Bounded by the producer's 300 rounds (and a count, should it hang).
            for _ in 0..1_000_000 {
                // Relaxed: see above.
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(peer) = b.lookup("tm-p") else { continue };
                match ChannelCtx::connect(&b, peer) {
                    Ok(ch) => {
                        connected += 1;
                        ch.close();
                    }
                    Err(e) => {
                        assert_eq!(e.code, code::EPEER, "{e:?}");
                        refused += 1;
                    }
                }
            }
            producer.join().unwrap();
        });
        assert_eq!(blocks_in_use(&b.arena), 0, "{connected} connected, {refused} refused: a channel block leaked");
        assert_eq!(b.segment_counts().0, b.segment_counts().1, "a segment leaked");
        b.close();
    }

    #[test]
    fn a_send_refused_for_a_corrupt_ring_leaves_its_segment_held_for_writing() {
        let scratch = Scratch::new("violation");
        let open = |tm: &str| scratch.open(tm);
        let run = || -> FResult<()> {
            let a = open("tm-producer")?;
            let b = open("tm-consumer")?;
            let cons = ChannelCtx::connect(&b, b.lookup("tm-producer")?)?;
            let prod = ChannelCtx::accept(&a, cons.id)?;
            let event = Msg { kind: 9, segment: -1, ..Msg::default() };
            // Fill the data ring: the next push must look at the consumer's head.
            let mut sent = 0;
            while prod.send(&event, Duration::ZERO).is_ok() {
                sent += 1;
                assert!(sent <= 1024, "the data ring never filled");
            }
            let seg = prod.acquire(Duration::from_secs(1))?;
            // Relaxed: the test corrupts the consumer's word as a broken peer would.
            a.arena.channels()[prod.id as usize].data.head.store(u64::MAX, Ordering::Relaxed);
            let e = prod.send(&Msg { kind: 7, segment: seg as i32, size: 1, ..Msg::default() }, Duration::ZERO);
            assert_eq!(e.map_err(|e| e.code), Err(code::EPROTO));
            let ctl = &a.arena.controls()[seg as usize];
            // Relaxed: single-threaded test.
            assert_eq!(ctl.owner.load(Ordering::Relaxed), Owner::Writer { pool: 0, worker: a.slot }.pack());
            assert_eq!(ctl.refcount.load(Ordering::Relaxed), 0);
            prod.release(seg as i32)?;
            prod.close();
            cons.close();
            b.close();
            a.close();
            Ok(())
        };
        run().unwrap();
    }
}
