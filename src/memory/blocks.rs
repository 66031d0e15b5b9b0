//! The fixed-size shared structures that fill the arena's regions.
//!
//! All are `#[repr(C)]`, pointer-free, made of atomics only (a peer in another process may
//! write any of them at any time, so even "plain" fields are atomics: a racy read is then a
//! stale value, never undefined behaviour), and padded to cache lines where two processes
//! write. Sizes and offsets are asserted at compile time outside loom.

use crate::sync::{AtomicU32, AtomicU64, CachePadded, EventCount, Ordering};

/// Bit 31 of [`SegmentControl::position`]: the writer finished the segment.
pub const FINISHED: u32 = 1 << 31;
/// Mask of the byte position in [`SegmentControl::position`].
pub const POSITION_MASK: u32 = FINISHED - 1;

/// One segment's control block (Flink's PositionMarker plus ownership).
///
/// ```text
///  0 position   u32  [FINISHED:1 | bytes written:31], written by the one BufferBuilder
///  4 refcount   u32  readers still to finish it (broadcast: one per channel), in 0..=channels
///  8 next_free  u32  link (index+1) while on a free stack
/// 12 pool       u32  id of the producer's LocalBufferPool that owns it, +1 (0 = global)
/// 16 owner      u64  who holds it now, see [`Owner`]
/// 24 seq        u64  hand-over counter (bumped when taken from a free stack)
/// 32 holder_pid  u32  pid of the process whose pool took it off the free stack (0: free)
/// 36 streamed   u32  a hint from the writer, nonzero: the last reader need not evict the
///                    segment's lines (see the field), else 0
/// .. padding to 64 bytes so writers of neighbouring segments never share a line
/// ```
///
/// `refcount` is `[ORPHANED:1 | readers:31]` (see [`REFCOUNT_ORPHANED`]): the flag says
/// that the pool which owns the segment is gone (its process died and was reclaimed), so
/// the reader that drops the count to zero puts the segment on the free stack itself.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct SegmentControl {
    /// `[FINISHED:1 | position:31]`; position in `0..=segment_size`.
    pub position: AtomicU32,
    /// Readers that have not released the segment yet.
    pub refcount: AtomicU32,
    /// Free-stack link: index + 1 of the next free segment, 0 at the end.
    pub next_free: AtomicU32,
    /// Owning local pool id + 1; 0 while in the global pool.
    pub pool: AtomicU32,
    /// Packed [`Owner`].
    pub owner: AtomicU64,
    /// Hand-over counter.
    pub seq: AtomicU64,
    /// Pid of the process whose pool holds the segment (set when it leaves the free stack);
    /// reclamation returns the segments of a dead pid.
    pub holder_pid: AtomicU32,
    /// A hint, never relied on: nonzero when the last reader should not evict the segment's
    /// lines before handing it back (see `Lease::evict`): 1 when the
    /// writer filled it with a large record's copy (with streaming stores, whose lines are
    /// not in any cache, or with ordinary ones where those are faster, see
    /// `sync::streams_large_copies`); 2 when the writer flushed it often (latency mode),
    /// where the eviction would sit between two records on the reader's thread.
    pub streamed: AtomicU32,
}

/// [`SegmentControl::streamed`]: the segment holds a large record's piece (written with
/// streaming stores where the CPU's default says so).
pub(crate) const SKIP_EVICT_STREAMED: u32 = 1;
/// [`SegmentControl::streamed`]: the segment was flushed more than
/// [`EVICT_MAX_FLUSHES`] times.
pub(crate) const SKIP_EVICT_FLUSHED: u32 = 2;
/// Flushes into one segment above which its last reader does not evict it: such a writer
/// waits on its flushes, not on the lines it takes back from the reader, and each
/// eviction (up to 512 CLFLUSHOPTs for a 32 KiB segment) lands between two records on the
/// reader's thread (64 B latency bench, stream spin: one-way p99.9 491 -> 1712 ns with it).
pub(crate) const EVICT_MAX_FLUSHES: u32 = 8;

/// Bit 31 of [`SegmentControl::refcount`]: the owning pool is gone (set once, by the
/// reclaimer of its dead process, with a `fetch_or`). Whoever takes the count to zero with
/// this bit set frees the segment: the reader's last release, the reclaimer itself when
/// the count was already zero, or the settler of a dead producer's last channel (a CAS to
/// zero, for shares nobody will release). The read-modify-writes on the one word decide which.
pub const REFCOUNT_ORPHANED: u32 = 1 << 31;
/// Mask of the reader count in [`SegmentControl::refcount`].
pub const REFCOUNT_MASK: u32 = REFCOUNT_ORPHANED - 1;

/// Who holds a segment; packed into [`SegmentControl::owner`] as `[kind:8 | a:24 | b:32]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// On the arena-wide free stack.
    Free,
    /// Cached by local pool `pool`, held by worker `worker`.
    Pool {
        /// Pool id.
        pool: u32,
        /// Worker slot.
        worker: u32,
    },
    /// Being written by a BufferBuilder of pool `pool`.
    Writer {
        /// Pool id.
        pool: u32,
        /// Worker slot.
        worker: u32,
    },
    /// Published on channel `channel`; readers hold it until they release it.
    InFlight {
        /// Channel id.
        channel: u32,
        /// Number of channels it was published on (1 unless broadcast).
        fanout: u32,
    },
    /// A value no version of this layout writes.
    Invalid(u64),
}

impl Owner {
    /// Packs into the shared word: kind in the top byte, `worker` / `fanout` in the next 24
    /// bits, `pool` / `channel` in the low 32. The layout's limits keep the 24-bit fields
    /// exact (`max_workers` <= 4096, a fanout <= `max_channels` <= 2^20; checked at compile
    /// time in `layout`).
    pub fn pack(self) -> u64 {
        let p = |k: u64, a: u32, b: u32| (k << 56) | (u64::from(a & 0xff_ffff) << 32) | u64::from(b);
        match self {
            Owner::Free => 0,
            Owner::Pool { pool, worker } => p(1, worker, pool),
            Owner::Writer { pool, worker } => p(2, worker, pool),
            Owner::InFlight { channel, fanout } => p(3, fanout, channel),
            Owner::Invalid(v) => v,
        }
    }

    /// Unpacks a shared word.
    pub fn unpack(v: u64) -> Self {
        let a = ((v >> 32) & 0xff_ffff) as u32;
        let b = v as u32;
        match v >> 56 {
            0 if v == 0 => Owner::Free,
            1 => Owner::Pool { pool: b, worker: a },
            2 => Owner::Writer { pool: b, worker: a },
            3 => Owner::InFlight { channel: b, fanout: a },
            _ => Owner::Invalid(v),
        }
    }
}

/// The two positions of one single-producer/single-consumer ring, each on its own lines.
///
/// Positions count slots and only grow; `tail - head` is in `0..=capacity`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingHeader {
    /// Slots consumed; written only by the consumer.
    pub head: CachePadded<AtomicU64>,
    /// Slots produced; written only by the producer.
    pub tail: CachePadded<AtomicU64>,
}

/// `ChannelBlock::state`: unused.
pub const CHANNEL_FREE: u32 = 0;
/// `ChannelBlock::state`: allocated and live.
pub const CHANNEL_OPEN: u32 = 1;
/// `ChannelBlock::state`: the producer side failed (its process died or it gave up).
pub const CHANNEL_PRODUCER_FAILED: u32 = 2;
/// `ChannelBlock::state`: the consumer side went away.
pub const CHANNEL_CONSUMER_GONE: u32 = 3;
/// `ChannelBlock::state`: the consumer read EndOfPartition: nothing more to deliver.
pub const CHANNEL_CONSUMED: u32 = 6;
/// `ChannelBlock::state`: claimed by a partition that is being set up.
pub const CHANNEL_CLAIMED: u32 = 4;
/// `ChannelBlock::state`: held for a moment by a claimer that scans for a run of free
/// blocks; it becomes `CHANNEL_CLAIMED` when the run is complete, `CHANNEL_FREE` when not.
/// A scan writes [`CHANNEL_PROBING_BY`] with its pid; this value is a prober not known.
pub const CHANNEL_PROBING: u32 = 7;
/// Flag of `ChannelBlock::state`: `CHANNEL_PROBING_BY | pid` is a block held by the scan
/// of process `pid` (pids are below 2^22), so the block and its prober are taken in one
/// CAS and a reclaimer never mistakes a live prober's block for a dead one's.
pub const CHANNEL_PROBING_BY: u32 = 1 << 30;

/// Whether a channel state is a scan's hold ([`CHANNEL_PROBING`] or [`CHANNEL_PROBING_BY`]).
pub fn channel_probing(state: u32) -> bool {
    state == CHANNEL_PROBING || state & CHANNEL_PROBING_BY != 0
}
/// `ChannelBlock::state`: the producer finished and released the channel; its segments
/// are all back.
pub const CHANNEL_CLOSED: u32 = 5;
/// `ChannelBlock::state`: the producer's process died and was reclaimed while a live
/// consumer still read the channel; its segments are orphaned (the reader frees them).
/// The consumer reads what is left, fails with `PeerDied` (with `ProducerFailed` when the
/// producer had failed the channel before it died), and hands the block on as
/// [`CHANNEL_ORPHANED`] when it leaves.
pub const CHANNEL_PRODUCER_DIED: u32 = 8;

/// In `ChannelBlock::peer_pid`: the dead producer had failed the channel first (pids
/// stay below 2^22 on Linux, so the top bit is free).
const PEER_FAILED_FIRST: u32 = 1 << 31;
/// `ChannelBlock::state`: the consumer's process died; the live producer takes back the
/// segments it had in flight here and releases the block with its partition.
pub const CHANNEL_CONSUMER_DIED: u32 = 9;
/// `ChannelBlock::state`: both ends are gone (a dead producer's consumer left): the next
/// reclamation pass frees what is still in flight here and closes the block.
pub const CHANNEL_ORPHANED: u32 = 10;
/// `ChannelBlock::state`: one reclaimer is settling the block (exclusive, by CAS).
pub const CHANNEL_SETTLING: u32 = 11;

impl ChannelBlock {
    /// Resets positions, routing and counters of a block its caller just claimed (nobody
    /// else can be using it).
    pub fn reset(&self) {
        use crate::sync::Ordering::Relaxed;
        // Relaxed (all): the block is claimed and not yet published; the directory's
        // Release store publishes these values with the partition.
        for r in [&self.data, &self.credit, &self.priority] {
            r.head.store(0, Relaxed);
            r.tail.store(0, Relaxed);
        }
        for a in [
            &self.gate,
            &self.gate_index,
            &self.partition,
            &self.subpartition,
            &self.producer_worker,
            &self.consumer_worker,
            &self.consumer_pid,
            &self.peer_pid,
            &self.credit_granted,
            &self.backlog,
            &self.credit_wanted,
            &self.producer_set,
            &self.producer_set_index,
            &self.debloat_bytes,
            &self.task_polls,
            &self.producer_generation,
            &self.consumer_generation,
            &self.taken,
        ] {
            a.store(0, Relaxed);
        }
        for a in
            [&self.records_out, &self.bytes_out, &self.buffers_out, &self.records_in, &self.bytes_in, &self.buffers_in]
        {
            a.store(0, Relaxed);
        }
        self.floating.store(0, Relaxed);
    }
}

/// The producer/consumer protocol of a channel block, one method per meaning: the fields
/// behind these are private, so the partition, the gate, the reclaimer and the tools say
/// what they mean ("route my wake-ups here", "I want credit") instead of storing raw words.
/// Stored ids are `value + 1` with 0 for "none"; the methods hide that.
impl ChannelBlock {
    // --- where the block belongs (producer, before the partition is published) ---

    /// Records the partition directory slot and subpartition this block serves.
    pub fn set_origin(&self, partition_slot: u32, subpartition: u32) {
        // Relaxed (both): published by the directory's Release store (consumers find the
        // block only through it).
        self.partition.store(partition_slot, Ordering::Relaxed);
        self.subpartition.store(subpartition, Ordering::Relaxed);
    }

    /// The partition directory slot and subpartition this block serves (the peer's word:
    /// validate before indexing with it).
    pub fn origin(&self) -> (u32, u32) {
        // Relaxed (both): written before publication; callers that need them current
        // order this after an Acquire of the directory entry or of the block's state.
        (self.partition.load(Ordering::Relaxed), self.subpartition.load(Ordering::Relaxed))
    }

    /// Records the producing worker's slot (for ownership and liveness checks).
    pub fn set_producer_worker(&self, slot: u32) {
        // Relaxed: published with the partition (the directory's Release store).
        self.producer_worker.store(slot.wrapping_add(1), Ordering::Relaxed);
    }

    /// The producing worker's slot, if it gave one.
    pub fn producer_worker(&self) -> Option<u32> {
        // Relaxed: a hint written before publication; liveness checks act on it by CAS.
        self.producer_worker.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Records the consuming worker's slot (the producer's liveness probe reads it).
    pub fn set_consumer_worker(&self, slot: u32) {
        // Relaxed: a hint for the producer's liveness probe.
        self.consumer_worker.store(slot.wrapping_add(1), Ordering::Relaxed);
    }

    /// The consuming worker's slot, if one attached and gave it.
    pub fn consumer_worker(&self) -> Option<u32> {
        // Relaxed: a hint (see `set_consumer_worker`).
        self.consumer_worker.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Records the generations ([`WorkerRecord::generation`]) of the producer's and the
    /// consumer's worker slots, which the block's user read when it opened the channel.
    pub fn set_generations(&self, producer: u32, consumer: u32) {
        // Relaxed (both): published with the route (the opener's Release store of OPEN).
        self.producer_generation.store(producer, Ordering::Relaxed);
        self.consumer_generation.store(consumer, Ordering::Relaxed);
    }

    /// Producer: records that it took the open channel. False when its consumer withdrew
    /// it first ([`mark_withdrawn`](Self::mark_withdrawn)): the consumer frees it.
    pub fn mark_taken(&self) -> bool {
        // AcqRel: the swaps of the two ends on this word are totally ordered; each learns
        // from the other's value whether it came second (pairs with `mark_withdrawn`).
        self.taken.swap(1, Ordering::AcqRel) != 2
    }

    /// Consumer: records that it withdrew the channel it opened (its producer left before
    /// it could be told). False when the producer took it first
    /// ([`mark_taken`](Self::mark_taken)): the producer's close frees it.
    pub fn mark_withdrawn(&self) -> bool {
        // AcqRel: pairs with the producer's swap in `mark_taken`.
        self.taken.swap(2, Ordering::AcqRel) != 1
    }

    /// The generations of the producer's and the consumer's worker slots recorded by
    /// [`set_generations`](Self::set_generations) (0 when nobody recorded them).
    pub fn generations(&self) -> (u32, u32) {
        // Relaxed (both): read after an Acquire load of the state that published them.
        (self.producer_generation.load(Ordering::Relaxed), self.consumer_generation.load(Ordering::Relaxed))
    }

    // --- the channel state (`CHANNEL_*`; see the state diagram in DESIGN.md) ---
    //
    // Every change of state either publishes (Release) what its writer did to the block
    // before, or acquires what the previous holder did, or both; each method says which.
    // The caller's comment names the store or CAS its ordering pairs with.

    /// The channel state, with Acquire: the caller sees what the writer of that state did
    /// to the block before it (route, pids, ring positions).
    pub fn state(&self) -> u32 {
        // Acquire: pairs with the Release stores (`publish_state`) and the Release halves of
        // the CASes below, whichever wrote the state read.
        self.state.load(Ordering::Acquire)
    }

    /// The channel state as a hint (Relaxed): for decisions a later CAS confirms, for
    /// messages, and for quiescent arenas.
    pub fn peek_state(&self) -> u32 {
        // Relaxed: a hint; callers act on it by CAS or only report it.
        self.state.load(Ordering::Relaxed)
    }

    /// Publishes state `to` (Release store): the caller's writes to the block before it
    /// happen-before anything done by a process that Acquires this state.
    pub fn publish_state(&self, to: u32) {
        // Release: pairs with the Acquire load in `state` and the Acquire CAS in
        // `try_claim` of whoever takes the block next.
        self.state.store(to, Ordering::Release);
    }

    /// Sets the state of a block nobody else can be using (Relaxed): a quiescent arena's
    /// recovery, a single-threaded test faking a crashed holder.
    pub fn set_state_unshared(&self, to: u32) {
        // Relaxed: no other process uses the block now; the next claimer's CAS reads it.
        self.state.store(to, Ordering::Relaxed);
    }

    /// Takes the block from state `from` into a hold `to` (usually `CHANNEL_PROBING_BY |
    /// pid`): on success (Acquire) after the previous users' last writes. `Err` carries the
    /// state seen instead.
    pub fn try_claim(&self, from: u32, to: u32) -> core::result::Result<(), u32> {
        // Acquire on success: pairs with the Release store (`publish_state`) or Release CAS
        // (`try_hand_over`) that made the block `from`. Relaxed on failure: nothing taken.
        self.state.compare_exchange(from, to, Ordering::Acquire, Ordering::Relaxed).map(|_| ())
    }

    /// Hands the block on from `from` to `to` (Release on success): publishes the caller's
    /// last writes to whoever acquires `to`; acquires nothing itself. `Err` carries the
    /// state seen instead.
    pub fn try_hand_over(&self, from: u32, to: u32) -> core::result::Result<(), u32> {
        // Release on success: pairs with the next holder's Acquire (`try_claim`, `state`).
        // Relaxed on failure: nothing handed over.
        self.state.compare_exchange(from, to, Ordering::Release, Ordering::Relaxed).map(|_| ())
    }

    /// Moves the block from `from` to `to` (AcqRel on success): after the previous writer
    /// of `from`, and published to the next reader of `to`. Relaxed on failure; `Err`
    /// carries the state seen instead.
    pub fn try_transition(&self, from: u32, to: u32) -> core::result::Result<(), u32> {
        // AcqRel on success: Acquire pairs with the Release that wrote `from`; Release with
        // the Acquire of whoever reads `to`. Relaxed on failure: the caller only reports or
        // retries it.
        self.state.compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed).map(|_| ())
    }

    /// As [`try_transition`](Self::try_transition), but a failure also Acquires the state
    /// seen (the caller acts on it: `Err` carries it).
    pub fn try_transition_or_acquire(&self, from: u32, to: u32) -> core::result::Result<(), u32> {
        // AcqRel on success: as in `try_transition`. Acquire on failure: pairs with the
        // Release that wrote the state seen, which the caller then acts on.
        self.state.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire).map(|_| ())
    }

    // --- who holds the block (pids, for attach checks and reclamation) ---

    /// Records the pid of the process that claimed the block (the producer, or the route's
    /// producer for a consumer-claimed block). Written while the block is PROBING (or
    /// before its Release store of `CHANNEL_OPEN`); reclamation releases the blocks of a
    /// dead claimer.
    pub fn record_claimer(&self, pid: u32) {
        // Relaxed: published by the caller's Release store of the state (CLAIMED / OPEN);
        // a reclaimer reads it only once this process is gone.
        self.claim_pid.store(pid, Ordering::Relaxed);
    }

    /// The pid of the process that claimed the block (0 none yet; the peer's word).
    pub fn claimer(&self) -> u32 {
        // Relaxed: callers order it after an Acquire of the state or of the directory
        // entry, or only compare it with a pid (a stale value fails the comparison).
        self.claim_pid.load(Ordering::Relaxed)
    }

    /// A consumer process tries to become this channel's only reader: `Ok` if it took the
    /// free word (0), `Err(holder)` with the pid already there (possibly `pid` itself).
    pub fn try_attach_consumer(&self, pid: u32) -> core::result::Result<(), u32> {
        // AcqRel: one consumer wins the channel (pairs with the Release half of another's
        // CAS in `detach_consumer`); Acquire orders the caller's look at the block after
        // the producer's set-up (published with the directory entry it read).
        self.consumer_pid.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire).map(|_| ())
    }

    /// Gives up consumer `pid`'s claim from [`try_attach_consumer`](Self::try_attach_consumer);
    /// another process's claim stays. Returns whether the claim was ours.
    pub fn detach_consumer(&self, pid: u32) -> bool {
        // AcqRel: pairs with the next consumer's CAS in `try_attach_consumer`; only our
        // own claim is given up.
        self.consumer_pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Records the pid of the consumer process reading this channel (a reader set up
    /// without the attach CAS, or a consumer-claimed block's route).
    pub fn record_consumer(&self, pid: u32) {
        // Relaxed: who reads the channel, for reclamation and the producer's messages;
        // published by the caller's next Release (the first credit grant's push, or the
        // Release store of `CHANNEL_OPEN`).
        self.consumer_pid.store(pid, Ordering::Relaxed);
    }

    /// The pid of the consumer process (0 until one attached; the peer's word).
    pub fn consumer_pid(&self) -> u32 {
        // Relaxed: for reclamation checks, attach checks and messages; decisions on it are
        // made by CAS of the state or of this word.
        self.consumer_pid.load(Ordering::Relaxed)
    }

    // --- wake-up routing ---

    /// Routes "credit came back" wake-ups to member `index` of notify set `set` (the
    /// producing partition's). Call before the partition is published.
    pub fn route_producer_wakeups(&self, set: u32, index: u32) {
        // Relaxed (both): published to the consumer by the partition directory's Release
        // (the consumer finds the channel only through it).
        self.producer_set.store(set.wrapping_add(1), Ordering::Relaxed);
        self.producer_set_index.store(index, Ordering::Relaxed);
    }

    /// Where "credit came back" wake-ups go: (notify set, member), or `None` for the
    /// block's own `producer_wake`.
    pub fn producer_wakeups(&self) -> Option<(u32, u32)> {
        // Relaxed (both): written by the producer before the partition was published in
        // the directory, which a consumer reads with Acquire before opening the channel.
        let set = self.producer_set.load(Ordering::Relaxed).checked_sub(1)?;
        Some((set, self.producer_set_index.load(Ordering::Relaxed)))
    }

    /// Routes "data arrived" wake-ups to member `index` of the consumer gate's notify set
    /// `set`. The caller fences after this (see `ChannelReader::set_gate`).
    pub fn route_consumer_wakeups(&self, set: u32, index: u32) {
        // Relaxed: published by the Release store of `gate` below.
        self.gate_index.store(index, Ordering::Relaxed);
        // Release: a producer that sees the gate id sees the index too (pairs with the
        // Acquire load in `consumer_wakeups`).
        self.gate.store(set.wrapping_add(1), Ordering::Release);
    }

    /// Where "data arrived" wake-ups go: (the gate's notify set, member), or `None` for
    /// the block's own `consumer_wake` (no gate attached).
    pub fn consumer_wakeups(&self) -> Option<(u32, u32)> {
        // Acquire: pairs with the Release store of `gate` in `route_consumer_wakeups`, so
        // the index loaded next is the one stored with it.
        let set = self.gate.load(Ordering::Acquire).checked_sub(1)?;
        // Relaxed: ordered by the Acquire load above.
        Some((set, self.gate_index.load(Ordering::Relaxed)))
    }

    // --- flow control ---

    /// Publishes the producer's backlog: segments published and not yet released.
    pub fn set_backlog(&self, segments: u32) {
        // Relaxed: a statistic the gate orders its floating credits by (any value is safe).
        self.backlog.store(segments, Ordering::Relaxed);
    }

    /// The producer's backlog (see [`set_backlog`](Self::set_backlog)).
    pub fn backlog(&self) -> u32 {
        // Relaxed: as in `set_backlog`.
        self.backlog.load(Ordering::Relaxed)
    }

    /// The producer says it is (or no longer is) blocked for want of credit here; the
    /// gate grants floating credit to channels that say so.
    pub fn set_credit_wanted(&self, wanted: bool) {
        // Relaxed: a hint, published by the producer's notify that follows a raise
        // (Release fetch_or / fence); a stale value only delays a floating credit.
        self.credit_wanted.store(u32::from(wanted), Ordering::Relaxed);
    }

    /// Whether the producer says it is blocked for want of credit here.
    pub fn credit_wanted(&self) -> bool {
        // Relaxed: a hint (see `set_credit_wanted`).
        self.credit_wanted.load(Ordering::Relaxed) != 0
    }

    /// Counts `n` more credits granted by the consumer.
    pub fn count_credit_granted(&self, n: u32) {
        // Relaxed: a statistic for observers. The credit itself travels either in the
        // credit ring (`Credit::Grant`) or in the channel's floating word (the runtime's
        // floating credit, the ffi transport's banked credit, `shmflow_bank_credit`).
        self.credit_granted.fetch_add(n, Ordering::Relaxed);
    }

    /// Credits granted so far (cumulative).
    pub fn credit_granted(&self) -> u32 {
        // Relaxed: a statistic.
        self.credit_granted.load(Ordering::Relaxed)
    }

    /// Buffer debloating: the consumer asks the producer to finish segments at about
    /// `bytes` (0: whole segments).
    pub fn ask_segment_fill(&self, bytes: u32) {
        // Relaxed: a size hint the producer reads when it opens its next segment.
        self.debloat_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The Flink transport's "the consumer's task polls" word (`ffi/src/polled.rs`); the
    /// runtime's own channels leave it 0.
    pub fn task_polls(&self) -> &AtomicU32 {
        &self.task_polls
    }

    /// The channel's floating-credit word (see `ring::floating`).
    pub fn floating_credit(&self) -> &AtomicU64 {
        &self.floating
    }

    /// The segment fill the consumer asked for, `None` for whole segments. Any value is
    /// safe: the producer clamps it.
    pub fn segment_fill_wanted(&self) -> Option<u32> {
        // Relaxed: a size hint (see `ask_segment_fill`); it only moves where segments end.
        match self.debloat_bytes.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    // --- failure ---

    /// Records the pid of the peer whose death fails the channel. The caller publishes it
    /// with its CAS of `state` to `CHANNEL_PRODUCER_DIED` / `CHANNEL_CONSUMER_DIED`.
    pub fn record_dead_peer(&self, pid: u32) {
        // Relaxed: published by the caller's AcqRel CAS of the state.
        self.peer_pid.store(pid & !PEER_FAILED_FIRST, Ordering::Relaxed);
    }

    /// As [`record_dead_peer`](Self::record_dead_peer) for a producer that had failed the
    /// channel (`CHANNEL_PRODUCER_FAILED`) before it died: its reader still reports the
    /// failure, the cause, and not the exit that followed ([`failed_before_death`](Self::failed_before_death)).
    pub fn record_dead_peer_after_failure(&self, pid: u32) {
        // Relaxed: published by the caller's AcqRel CAS of the state.
        self.peer_pid.store(pid | PEER_FAILED_FIRST, Ordering::Relaxed);
    }

    /// The pid of the peer whose death failed the channel (read after an Acquire load of
    /// `state` that saw a *_DIED state).
    pub fn dead_peer(&self) -> u32 {
        // Relaxed: ordered by the caller's Acquire load of the state.
        self.peer_pid.load(Ordering::Relaxed) & !PEER_FAILED_FIRST
    }

    /// Whether the dead producer had failed the channel before it died (read, as
    /// [`dead_peer`](Self::dead_peer), after an Acquire load of `state` that saw
    /// `CHANNEL_PRODUCER_DIED` or `CHANNEL_ORPHANED`).
    pub fn failed_before_death(&self) -> bool {
        // Relaxed: ordered by the caller's Acquire load of the state.
        self.peer_pid.load(Ordering::Relaxed) & PEER_FAILED_FIRST != 0
    }
}

/// One producer-to-consumer connection: rings, wake-ups, flow-control state and counters.
///
/// Fields are grouped by writer: what the producer writes and what the consumer writes sit
/// on different cache lines (separated by `_producer_end`), so a segment hand-over does not
/// bounce one line between the two cores.
///
/// # Memory layout
///
/// Offsets in bytes on x86_64 and aarch64, where [`CachePadded`] aligns to 128 bytes (a
/// pair of 64-byte lines, the unit the adjacent-line prefetcher pulls in). "P" is the
/// producer's process, "C" the consumer's, "R" a reclaimer (any live process, after the
/// other one died).
///
/// ```text
///  offset  line  field                  writer  meaning
///     0     0    data.head        u64   C       descriptors consumed        (one 128 B pair each)
///   128     2    data.tail        u64   P       descriptors published
///   256     4    credit.head      u64   P       credit entries consumed
///   384     6    credit.tail      u64   C       credit entries published
///   512     8    priority.head    u64   C       priority descriptors consumed
///   640    10    priority.tail    u64   P       priority descriptors published
///   768    12    consumer_wake    u32   C+P     C parks (WAITING bit), P notifies (epoch)
///   896    14    producer_wake    u32   P+C     P parks, C notifies
///  --- producer words: lines 16-17 ---------------------------------------------------
///  1024    16    state            u32   P (C, R: state changes; CAS)
///  1028          partition        u32   P       directory slot of the partition
///  1032          subpartition     u32   P
///  1036          producer_worker  u32   P       worker slot + 1
///  1040          backlog          u32   P       segments in flight
///  1044          credit_wanted    u32   P       0 or 1
///  1048          producer_set     u32   P       notify set id + 1 (0: producer_wake)
///  1052          producer_set_index u32 P
///  1056          claim_pid        u32   P       written while PROBING
///  1060          peer_pid         u32   R       the dead peer, for PeerDied (bit 31: it failed first)
///  1064          records_out      u64   P       counters
///  1072          bytes_out        u64   P
///  1080          buffers_out      u64   P
///  1088..1152    (padding: _producer_end aligns the next field to 128)
///  --- consumer words: lines 18-19 ---------------------------------------------------
///  1152    18    gate             u32   C       gate notify set id + 1 (0: consumer_wake)
///  1156          gate_index       u32   C
///  1160          consumer_worker  u32   C       worker slot + 1
///  1164          consumer_pid     u32   C
///  1168          credit_granted   u32   C       cumulative grants
///  1176          records_in       u64   C       counters
///  1184          bytes_in         u64   C
///  1192          buffers_in       u64   C
///  1200          debloat_bytes    u32   C       wanted bytes per segment (0: whole)
///  1204          task_polls       u32   C       1 while the consumer task polls the data ring
///  1208          floating         u64   C+P     (unused, in flight) floating credits, by RMW
///                                                 (ring::floating; P only when out of credit)
///  1216..1280    (padding: _consumer_end rounds the size to 128)
///  size 1280, align 128
/// ```
///
/// Every ring position and wake-up word has a 128-byte pair of lines to itself; the
/// producer's words and the consumer's words each share one pair, written by one process
/// (`state` is the exception: the consumer and a reclaimer change it rarely, by CAS or a
/// Release store). The layout is checked at compile time below the type definitions
/// (offsets where padding is 128 bytes, the grouping on every target), outside loom, where
/// atomics are bigger.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ChannelBlock {
    /// Descriptors, producer to consumer.
    pub data: RingHeader,
    /// Credits and recycled segments, consumer to producer.
    pub credit: RingHeader,
    /// Priority descriptors (unaligned checkpoint barriers), producer to consumer.
    pub priority: RingHeader,
    /// The consumer parks here when no gate is attached; producers notify it.
    pub consumer_wake: CachePadded<EventCount>,
    /// The producer parks here for credit or segments; consumers notify it.
    pub producer_wake: CachePadded<EventCount>,
    // --- written by the producer (and rarely, for state changes, by the consumer) ---
    /// One of the `CHANNEL_*` states.
    state: AtomicU32,
    /// Partition directory slot of the producing partition.
    partition: AtomicU32,
    /// Subpartition index in the producing partition.
    subpartition: AtomicU32,
    /// Producer worker slot + 1 (0 unknown).
    producer_worker: AtomicU32,
    /// Segments published but not yet released by the consumer (backlog).
    backlog: AtomicU32,
    /// Set by a producer blocked for want of credit on this channel; the consumer's gate
    /// grants floating credit to channels that have it set. 0 or 1.
    credit_wanted: AtomicU32,
    /// Notify-set (gate block) id + 1 that the consumer marks when it returns credit: the
    /// producer's partition-wide wake-up (0 = use `producer_wake`).
    producer_set: AtomicU32,
    /// Index of this channel in that set.
    producer_set_index: AtomicU32,
    /// Pid of the process that claimed the block (the producer), written while it is
    /// PROBING; reclamation releases the blocks of a dead pid.
    claim_pid: AtomicU32,
    /// Pid of the peer whose death failed the channel (`CHANNEL_PRODUCER_DIED` /
    /// `CHANNEL_CONSUMER_DIED`), for the `PeerDied` error of the survivor.
    peer_pid: AtomicU32,
    /// Records written into this channel.
    pub records_out: AtomicU64,
    /// Bytes written into this channel.
    pub bytes_out: AtomicU64,
    /// Segments published on this channel.
    pub buffers_out: AtomicU64,
    /// The producer worker slot's generation ([`WorkerRecord::generation`]) when the
    /// channel was opened: a later holder of that slot (another TaskManager, or the same
    /// process registered again) does not take it.
    producer_generation: AtomicU32,
    /// Flink transport (`ffi/src/handshake.rs`): 0 while an open channel is neither taken
    /// by its producer (1) nor withdrawn by its consumer (2); each end swaps its value in,
    /// and the one that finds the other's value first knows who frees the block.
    taken: AtomicU32,
    _producer_end: CachePadded<()>,
    // --- written by the consumer ---
    /// Notify-set (gate block) id + 1 the producer marks when data arrives: the consumer
    /// gate's wake-up (0 = use `consumer_wake`).
    gate: AtomicU32,
    /// Index of this channel inside that gate's set.
    gate_index: AtomicU32,
    /// Consumer worker slot + 1 (0 unknown).
    consumer_worker: AtomicU32,
    /// Pid of the consumer process (0 until one attached).
    consumer_pid: AtomicU32,
    /// Credit granted so far (cumulative grants), written by the consumer.
    credit_granted: AtomicU32,
    /// Records read from this channel.
    pub records_in: AtomicU64,
    /// Bytes read from this channel.
    pub bytes_in: AtomicU64,
    /// Segments released by the consumer.
    pub buffers_in: AtomicU64,
    /// Buffer debloating: the bytes the consumer wants per segment on this channel (the
    /// producer finishes segments at that fill); 0 = whole segments.
    debloat_bytes: AtomicU32,
    /// Flink transport (`ffi/src/polled.rs`): 1 while the consumer's task polls the data
    /// ring itself, so the producer need not mark the consumer's notify set for data. Sits
    /// in the 4 bytes before `floating`'s alignment: the block's size does not change.
    task_polls: AtomicU32,
    /// Floating credits: unused (high 32 bits) and in flight (low 32), changed by both
    /// sides with read-modify-writes (the protocol of `ring::floating`). The producer
    /// touches it only when its exclusive credit is used up.
    floating: AtomicU64,
    /// The consumer worker slot's generation when the channel was opened (see
    /// `producer_generation`).
    consumer_generation: AtomicU32,
    _consumer_end: CachePadded<()>,
}

/// One entry of the partition directory (the ResultPartitionManager).
#[repr(C)]
#[derive(Debug, Default)]
pub struct PartitionEntry {
    /// Entry state (free, registering, registered, finished, released, failed).
    pub state: AtomicU32,
    /// `ResultPartitionType` code.
    pub partition_type: AtomicU32,
    /// Number of subpartitions.
    pub num_subpartitions: AtomicU32,
    /// First channel block of its subpartitions (they are contiguous).
    pub first_channel: AtomicU32,
    /// Producer worker slot + 1.
    pub producer_worker: AtomicU32,
    /// Producer task metrics slot + 1.
    pub producer_task: AtomicU32,
    /// Pid of the producing process.
    pub producer_pid: AtomicU32,
    /// Blocking partitions: consumers that finished reading a subpartition (else zero).
    pub reserved: AtomicU32,
    /// ResultPartitionID, high then low 64 bits.
    pub id: [AtomicU64; 2],
    /// Producer's pool usage: segments held by its LocalBufferPool.
    pub pool_segments: AtomicU64,
    /// Producer's pool quota (max segments).
    pub pool_max: AtomicU64,
}

/// One input gate's shared part: its wake-up and who is waiting.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GateBlock {
    /// The gate parks here; producers notify it after marking their channel's bit.
    pub wake: CachePadded<EventCount>,
    /// Gate state (free, open, closed).
    pub state: AtomicU32,
    /// Number of channels (bits used in the bitmap).
    pub num_channels: AtomicU32,
    /// Consumer worker slot + 1.
    pub consumer_worker: AtomicU32,
    /// Consumer task metrics slot + 1.
    pub consumer_task: AtomicU32,
    /// Credits the gate can hand out in all (exclusive per channel + floating): the
    /// denominator of inPoolUsage.
    pub credit_capacity: AtomicU32,
}

/// One process's liveness record.
#[repr(C)]
#[derive(Debug, Default)]
pub struct WorkerRecord {
    /// 0 free, 1 alive, 2 exited cleanly, 3 declared dead, bit 31 + reclaimer pid: being
    /// reclaimed (see [`liveness`](super::liveness)).
    pub state: AtomicU32,
    /// Pid.
    pub pid: AtomicU32,
    /// Process start time in clock ticks since boot (tells a recycled pid apart).
    pub start_ticks: AtomicU64,
    /// Monotonic nanoseconds of registration (liveness itself is read from `/proc`:
    /// pid plus start time, so a frozen process is alive and a dead one is seen at once).
    pub heartbeat: AtomicU64,
    /// The process's lane on the free stack: the segment its pop is taking, until the
    /// owner swap records it (see the `memory::stack` module); 0 when idle.
    pub taking: AtomicU64,
    /// Bumped every time the slot is taken (`liveness::register`) and every time it is
    /// freed (`liveness::finish_reclaim`); never 0 for a registered slot. Whoever keeps
    /// a slot number for later (a TaskManager's peer, a channel block's route) keeps the
    /// generation with it, and a changed generation means another holder.
    pub generation: AtomicU32,
    _pad: u32,
}

/// Counters of one task, in the arena so `shmflow top` can read them live.
#[repr(C)]
#[derive(Debug, Default)]
pub struct TaskMetrics {
    /// 0 free, 1 running, 2 finished, 3 failed.
    pub state: AtomicU32,
    /// Worker slot + 1.
    pub worker: AtomicU32,
    /// Job vertex index of the task.
    pub vertex: AtomicU32,
    /// Subtask index of the task.
    pub subtask: AtomicU32,
    /// Records read.
    pub records_in: AtomicU64,
    /// Records written.
    pub records_out: AtomicU64,
    /// Bytes read.
    pub bytes_in: AtomicU64,
    /// Bytes written.
    pub bytes_out: AtomicU64,
    /// Nanoseconds blocked on an empty pool or missing credit.
    pub back_pressured_ns: AtomicU64,
    /// Nanoseconds waiting for input.
    pub idle_ns: AtomicU64,
    /// Monotonic nanoseconds when the task started (busy = now - start - idle -
    /// back-pressured).
    pub started_ns: AtomicU64,
    /// Monotonic nanoseconds when the task ended (0 while running).
    pub ended_ns: AtomicU64,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<SegmentControl>() == 64);
    assert!(size_of::<RingHeader>() == 256);
    assert!(size_of::<PartitionEntry>() == 64);
    assert!(size_of::<WorkerRecord>() == 40);
    assert!(size_of::<TaskMetrics>() == 80);
};

/// [`ChannelBlock`]'s layout: each writer's words together, away from the other's.
#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    type B = ChannelBlock;
    // The padding unit (128 bytes on x86_64 and aarch64, other sizes elsewhere).
    const PAD: usize = align_of::<CachePadded<u64>>();
    // Any target: the rings and wake-ups come first, each on its own padded unit; the
    // producer's words start a unit, the consumer's start a later one.
    assert!(align_of::<B>() == PAD);
    assert!(offset_of!(B, consumer_wake) == 6 * PAD);
    assert!(offset_of!(B, producer_wake) == 7 * PAD);
    assert!(offset_of!(B, state) == 8 * PAD);
    assert!(offset_of!(B, gate) % PAD == 0);
    assert!(offset_of!(B, gate) >= offset_of!(B, buffers_out) + size_of::<AtomicU64>());
    // The diagram's numbers, where it applies.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        assert!(size_of::<B>() == 1280);
        assert!(offset_of!(B, data) == 0);
        assert!(offset_of!(B, credit) == 256);
        assert!(offset_of!(B, priority) == 512);
        assert!(offset_of!(B, consumer_wake) == 768);
        assert!(offset_of!(B, producer_wake) == 896);
        assert!(offset_of!(B, state) == 1024);
        assert!(offset_of!(B, claim_pid) == 1056);
        assert!(offset_of!(B, peer_pid) == 1060);
        assert!(offset_of!(B, records_out) == 1064);
        assert!(offset_of!(B, buffers_out) == 1080);
        assert!(offset_of!(B, gate) == 1152);
        assert!(offset_of!(B, consumer_pid) == 1164);
        assert!(offset_of!(B, credit_granted) == 1168);
        assert!(offset_of!(B, records_in) == 1176);
        assert!(offset_of!(B, buffers_in) == 1192);
        assert!(offset_of!(B, debloat_bytes) == 1200);
        assert!(offset_of!(B, task_polls) == 1204);
        assert!(offset_of!(B, floating) == 1208);
        assert!(offset_of!(B, producer_generation) == 1088);
        assert!(offset_of!(B, taken) == 1092);
        assert!(offset_of!(B, consumer_generation) == 1216);
    }
};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn every_owner_round_trips_through_its_packed_word() {
        let max24 = 0xff_ffff;
        for o in [
            Owner::Free,
            Owner::Pool { pool: 0, worker: 0 },
            Owner::Pool { pool: u32::MAX, worker: max24 },
            Owner::Writer { pool: 7, worker: 3 },
            Owner::Writer { pool: u32::MAX, worker: max24 },
            Owner::InFlight { channel: 0, fanout: 1 },
            Owner::InFlight { channel: u32::MAX, fanout: max24 },
        ] {
            assert_eq!(Owner::unpack(o.pack()), o, "{o:?} packs to {:#x}", o.pack());
        }
    }

    #[test]
    fn owner_fields_sit_where_the_layout_says() {
        assert_eq!(Owner::Free.pack(), 0);
        assert_eq!(Owner::Pool { pool: 5, worker: 2 }.pack(), (1 << 56) | (2 << 32) | 5);
        assert_eq!(Owner::Writer { pool: 5, worker: 2 }.pack(), (2 << 56) | (2 << 32) | 5);
        assert_eq!(Owner::InFlight { channel: 9, fanout: 4 }.pack(), (3 << 56) | (4 << 32) | 9);
    }

    #[test]
    fn a_worker_or_fanout_above_24_bits_is_cut_to_its_field_not_spilled_into_the_kind() {
        let o = Owner::Pool { pool: 1, worker: 0x0100_0001 };
        assert_eq!(o.pack() >> 56, 1, "the kind is intact");
        assert_eq!(Owner::unpack(o.pack()), Owner::Pool { pool: 1, worker: 1 });
    }

    #[test]
    fn words_no_layout_writes_unpack_as_invalid_and_keep_their_value() {
        for v in [1, u64::from(u32::MAX), 4 << 56, u64::MAX, (0xff << 56) | 3] {
            assert_eq!(Owner::unpack(v), Owner::Invalid(v));
            assert_eq!(Owner::Invalid(v).pack(), v);
        }
    }

    #[test]
    fn a_reset_channel_block_has_zero_positions_routing_and_counters() {
        let b = ChannelBlock::default();
        b.data.tail.store(5, crate::sync::Ordering::Relaxed);
        b.gate.store(3, crate::sync::Ordering::Relaxed);
        b.buffers_in.store(8, crate::sync::Ordering::Relaxed);
        b.debloat_bytes.store(100, crate::sync::Ordering::Relaxed);
        b.set_state_unshared(CHANNEL_CLAIMED);
        b.reset();
        assert_eq!(b.data.tail.load(crate::sync::Ordering::Relaxed), 0);
        assert_eq!(b.gate.load(crate::sync::Ordering::Relaxed), 0);
        assert_eq!(b.buffers_in.load(crate::sync::Ordering::Relaxed), 0);
        assert_eq!(b.debloat_bytes.load(crate::sync::Ordering::Relaxed), 0);
        assert_eq!(b.peek_state(), CHANNEL_CLAIMED, "the claimer's state stays");
    }

    #[test]
    fn probing_states_are_recognized_with_or_without_a_pid() {
        assert!(channel_probing(CHANNEL_PROBING));
        assert!(channel_probing(CHANNEL_PROBING_BY | 4_194_303));
        for s in [CHANNEL_FREE, CHANNEL_OPEN, CHANNEL_CLAIMED, CHANNEL_SETTLING, CHANNEL_ORPHANED] {
            assert!(!channel_probing(s), "state {s}");
        }
    }
}
