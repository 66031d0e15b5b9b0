//! `BufferBuilder` and `BufferConsumer`: one writer and one (or, for broadcast, several)
//! readers of one segment, coordinated by the segment's position marker (DESIGN.md §4.2).
//!
//! ```text
//!  SegmentControl::position = [FINISHED:1 | pos:31]
//!
//!  writer (BufferBuilder)                          reader (BufferConsumer), any process
//!  write bytes [committed, pos)                    p = position.load(Acquire)
//!  position.store(pos, Release)  --------------->  read [read_pos, p & POS) in place
//!  ...                                             ...
//!  position.store(pos | FINISHED, Release) ----->  finished once read_pos == final pos
//!                                                  last Lease drop: refcount.fetch_sub(AcqRel)
//!                                                  == 1 -> ReleaseSink::release(seg, last)
//! ```
//!
//! Both record formats are defined in [`crate::record::frame`]; this module writes and
//! reads them in place.
//!
//! Slot-framed records (the record stream's format, used where one reader spins on one
//! writer and every cache line counts): each record is `[slot: u32][payload][pad to 4]`,
//! and the slot is an atomic word the writer stores last, `len | SLOT_VALID` with
//! Release, after clearing the next record's slot. The reader polls the slot at its read
//! position (Acquire) and reads the payload when it turns valid: the record's own cache
//! line carries its publication, so the reader does not wait for the position word's line
//! as well. The position marker still ends the segment (FINISHED) and still serves the
//! commits of `flush`.
//!
//! ```text
//!  writer (write_slotted)                          reader (slot_record)
//!  payload -> [pos+4, pos+4+len)                   v = slot(read_pos).load(Acquire)
//!  slot(next).store(0, Relaxed)                    v == 0: nothing yet (or the end:
//!  slot(pos).store(len | VALID, Release) ------->      look for FINISHED at read_pos)
//!                                                  else read [read_pos+4, +len), advance
//! ```
//!
//! Published in the data (the network stack's length-prefixed records, read by a gate in
//! spin mode; same bytes as before, DESIGN.md's position protocol unchanged for every other
//! reader). A record whose prefix starts at a 4-aligned offset is also published by that
//! prefix, an atomic word the writer stores last, so a reader spinning on the word at its
//! read position finds the record in the record's own line, one cross-core transfer, where
//! the position word (then the data) costs two, plus the notify set's:
//!
//! ```text
//!  writer (put_framed: try_write_framed, write_framed)   reader (record_at_read)
//!  payload -> [pos+4, pos+4+len)                          v = word(read_pos).load(Acquire)
//!  word(pos+4+len).store(UNWRITTEN, Relaxed)              v == UNWRITTEN: nothing yet
//!    (if 4-aligned with a word's room in the segment)     4 + v past the segment's end: not
//!  word(pos).store(len, Release) -------------------->      a whole record (a spanning head):
//!    (unaligned pos: plain bytes, nobody polls there)       ask the position
//!  ... commit: position.store(pos, Release) as above      else read [read_pos+4, +v), move on
//! ```
//!
//! What keeps a stale word (a previous use of the segment) from passing for a record: the
//! builder stores UNWRITTEN at offset 0 before the segment's descriptor is pushed, and
//! behind every record (the tail of a spanning record too, `end_record`), before the store
//! that publishes the record in front of it; a reader reaches a word only through that
//! record. What keeps a spanning record's head from passing for a whole record: a record
//! spans only when it does not fit the rest of the segment (a debloating limit it would
//! cross moves behind it instead, `write_framed`), so its length runs past the segment's
//! end. Such a reader may run ahead of the commits (`writer_position` then tolerates a
//! position below the read position, not below where reading ahead began, nor a finished
//! one). Loom model: `loom-tests/tests/gate_data_read.rs`.
//!
//! The writer never writes below its published position (or a published prefix) and
//! readers never read above it, so the two never touch the same bytes at once. A segment published on several channels
//! (broadcast) starts with `refcount = fanout`; each channel's reader drops one, and the one
//! that reaches zero recycles it.

use crate::error::{Error, Result};
use crate::memory::{
    Arena, MemorySegment, Owner, SegmentControl, EVICT_MAX_FLUSHES, FINISHED, POSITION_MASK, REFCOUNT_MASK,
    REFCOUNT_ORPHANED, SKIP_EVICT_FLUSHED, SKIP_EVICT_STREAMED,
};
use crate::record::frame::{self, slot_framed_len, LEN_PREFIX};
use crate::sync::Ordering;
use std::rc::Rc;
use std::sync::Arc;

/// Bytes of a slot (the slot-framed format is defined in [`crate::record::frame`]).
const SLOT_BYTES: u32 = LEN_PREFIX as u32;

/// The piece size [`copy_bytes`] splits a copy into when it must: below the size from which
/// glibc's `memcpy` moves data with `rep movsb` (between 2 and 4 KiB here).
const COPY_PIECE: usize = 2048;

/// Copies `src` into `dst` (of the same length), steering clear of a slow case of
/// `rep movsb`: on AMD Zen 4 a copy whose destination lies 1 to 63 bytes above its source
/// modulo 4 KiB runs 14-16x slower (32 KiB in 9.4 us instead of 0.6 us; a 1 MiB record
/// written across 32 KiB segments from such a source in 310 us instead of 29 us,
/// `benches/emit`). Whether a record's bytes land there depends on where the caller's
/// buffer sits and on the segment's fill, so such copies go in pieces small enough for
/// `memcpy`'s vector loop; every other copy is one `memcpy`.
/// Copies of [`LARGE_COPY`] bytes and more (a large record's piece of a segment) go with
/// streaming stores ([`copy_streaming`]) where the CPU's default or the process says so
/// ([`streams_large_copies`](crate::sync::streams_large_copies)).
/// Returns whether the copy was a large one, whose segment its last reader need not evict
/// (see [`SegmentControl::streamed`]).
#[inline]
fn copy_bytes(dst: &mut [u8], src: &[u8]) -> bool {
    copy_bytes_with(dst, src, src.len() >= LARGE_COPY && crate::sync::streams_large_copies())
}

/// [`copy_bytes`] with streaming stores for a large copy or not (`streaming`).
#[inline]
fn copy_bytes_with(dst: &mut [u8], src: &[u8], streaming: bool) -> bool {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    if streaming && src.len() >= LARGE_COPY {
        copy_streaming(dst, src);
        return true;
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    let _ = streaming;
    if needs_pieces(dst.as_ptr() as usize, src) {
        for (d, s) in dst.chunks_mut(COPY_PIECE).zip(src.chunks(COPY_PIECE)) {
            d.copy_from_slice(s);
        }
    } else {
        dst.copy_from_slice(src);
    }
    src.len() >= LARGE_COPY
}

/// A copy of at least this many bytes into one segment is a large record's piece: it may
/// go with streaming stores ([`copy_bytes`]), and its segment is not evicted by its last
/// reader either way (with streaming stores its lines are in memory already; with ordinary
/// ones, where those are the faster choice, evicting 32 KiB cost the reader more than the
/// writer saved: 1.7 -> 3.8 us per 32 KiB read, 1.7 -> 2.4 us written, Intel Xeon).
const LARGE_COPY: usize = 8192;

/// Copies with non-temporal stores, then a store fence. A segment's lines were last read
/// by the consumer on the other core; on AMD EPYC ordinary stores must take each line back
/// from that core's cache first (a 1 MiB record into 32 KiB segments moved at 7 GB/s that
/// way, with 4 MiB segments, whose lines have left that cache, at 31 GB/s). Streaming
/// stores write whole lines without asking for them: the same records at 15-17 GB/s, 2.1x
/// (3 interleaved rounds, idle machine, `benches/throughput --size 1048576 --shape 1x1`).
/// On Intel Xeon the ordinary stores are the faster ones (see
/// [`streams_large_copies`](crate::sync::streams_large_copies)).
#[cfg(all(not(loom), target_arch = "x86_64"))]
fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let head = dst.as_ptr().align_offset(16).min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let body = (dst.len() - head) / 16 * 16;
    let (d, s) = (dst[head..head + body].as_mut_ptr(), src[head..head + body].as_ptr());
    let mut i = 0;
    while i < body {
        // SAFETY: i + 16 <= body: both ranges are inside their slices; d + i is 16-aligned.
        unsafe { _mm_stream_si128(d.add(i).cast::<__m128i>(), _mm_loadu_si128(s.add(i).cast::<__m128i>())) };
        i += 16;
    }
    let rest = head + body;
    dst[rest..].copy_from_slice(&src[rest..]);
    // SAFETY: SSE is part of x86_64. Orders the streaming stores before the Release store
    // that publishes them (non-temporal stores are not ordered by it).
    unsafe { _mm_sfence() };
}

/// Appends `src` to `v` as [`copy_bytes`] copies (a reader reassembling a record that
/// spans segments meets the same slow case).
#[inline]
pub(crate) fn extend_bytes(v: &mut Vec<u8>, src: &[u8]) {
    v.reserve(src.len());
    // After the reserve the buffer stays put, so every piece keeps this distance.
    if needs_pieces(v.as_ptr() as usize + v.len(), src) {
        for piece in src.chunks(COPY_PIECE) {
            v.extend_from_slice(piece);
        }
    } else {
        v.extend_from_slice(src);
    }
}

/// Whether a copy of `src` to address `dst` falls in `rep movsb`'s slow case (see
/// [`copy_bytes`]).
#[inline]
fn needs_pieces(dst: usize, src: &[u8]) -> bool {
    src.len() > COPY_PIECE && (1..64).contains(&(dst.wrapping_sub(src.as_ptr() as usize) % 4096))
}

/// How far ahead of its write position a builder prefetches for writing, once per line its
/// small records reach ([`BufferBuilder::try_write_framed`]): a few hundred ns of 8 B
/// records, about the time a line takes to come back from the consumer's core.
#[cfg_attr(loom, allow(dead_code))] // loom builds prefetch nothing
const WRITE_AHEAD: usize = 1024;

/// The writer's cursor over one segment.
///
/// Dropping it finishes its segment (readers see the end of what was written; none waits
/// forever for a builder that was abandoned).
pub struct BufferBuilder {
    arena: Arc<Arena>,
    /// Start of the segment's bytes in the mapping (kept alive by `arena`).
    base: *mut u8,
    index: u32,
    /// Where the builder ends the segment: the segment size, or a debloating limit below it.
    size: u32,
    /// The segment's size (the arena's, kept here for the per-record path).
    segment_size: u32,
    /// Bytes written, in `committed..=size`.
    pos: u32,
    /// Bytes published to readers, in `0..=pos`.
    committed: u32,
    finished: bool,
    /// Whether some of the segment was a large record's piece (written with streaming
    /// stores where they are the faster choice; then the segment's
    /// [`SegmentControl::streamed`] hint says so: [`copy_bytes`]).
    streamed: bool,
    /// Flushes into this segment so far ([`note_flush`](Self::note_flush)), counted up to
    /// one above `EVICT_MAX_FLUSHES` (then the segment's hint says "do not evict").
    flushes: u32,
    /// Whether the builder may prefetch lines for writing (the CPU can:
    /// [`has_prefetch_write`](crate::sync::has_prefetch_write)).
    #[cfg_attr(loom, allow(dead_code))] // loom builds prefetch nothing
    write_ahead: bool,
    /// Whether small records prefetch the lines ahead for writing, once per line
    /// ([`prefetch_ahead`](Self::prefetch_ahead)): only where readers cannot evict a
    /// segment's lines before they hand it back
    /// ([`has_flush_opt`](crate::sync::has_flush_opt)). Where they do, the lines come
    /// from memory in order, which the CPU's own prefetchers run ahead of: the emit
    /// bench's 8 B records, read back on another CPU, took 4.23-4.49 ns (p10) without it,
    /// 4.58-4.80 with it.
    ahead_per_line: bool,
}

// SAFETY: `base` points into the arena mapping that the builder's own `Arc<Arena>` keeps
// alive (and `Arena` is Send + Sync); the builder is its segment's only writer wherever it
// moves, exactly as when it addressed the segment through the arena.
unsafe impl Send for BufferBuilder {}

impl std::fmt::Debug for BufferBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufferBuilder(segment {}, {}/{} committed {})", self.index, self.pos, self.size, self.committed)
    }
}

impl BufferBuilder {
    /// Starts writing into `segment`, to be read by `fanout` readers (1 unless broadcast).
    /// The control block is reset here and published with the segment's descriptor.
    pub fn new(segment: MemorySegment, fanout: u32) -> Self {
        let arena = segment.arena().clone();
        let index = segment.into_index();
        let ctl = &arena.controls()[index as usize];
        // Relaxed (both): published to readers by the Release push of this segment's
        // descriptor on the data ring, which readers Acquire before looking here.
        ctl.position.store(0, Ordering::Relaxed);
        ctl.refcount.store(fanout.max(1), Ordering::Relaxed);
        // Relaxed: a hint for the last reader (`Lease::evict`), published with the fields
        // above.
        ctl.streamed.store(0, Ordering::Relaxed);
        // Relaxed (both): ownership bookkeeping, published with the descriptor like the
        // fields above; read by recovery and `shmflow check`.
        if let Owner::Pool { pool, worker } = Owner::unpack(ctl.owner.load(Ordering::Relaxed)) {
            ctl.owner.store(Owner::Writer { pool, worker }.pack(), Ordering::Relaxed);
        }
        let size = arena.segment_size();
        let base = arena.segment_ptr(index, 0);
        let write_ahead = crate::sync::has_prefetch_write();
        let ahead_per_line = write_ahead && !crate::sync::has_flush_opt();
        let b = Self {
            arena,
            base,
            index,
            size,
            segment_size: size,
            pos: 0,
            committed: 0,
            finished: false,
            streamed: false,
            flushes: 0,
            write_ahead,
            ahead_per_line,
        };
        // The first record's prefix word says "nothing yet" (a polling reader must not take
        // what a previous use left there for a record); published with the descriptor.
        b.clear_word(0);
        b
    }

    fn control(&self) -> &SegmentControl {
        &self.arena.controls()[self.index as usize]
    }

    /// The segment index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Bytes written so far (committed or not).
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// Bytes published to readers.
    pub fn committed(&self) -> u32 {
        self.committed
    }

    /// Shrinks the segment's usable size to `limit` bytes (buffer debloating): the builder
    /// is full once `limit` bytes are written. Never below what is already written, never
    /// above the segment.
    pub fn set_limit(&mut self, limit: u32) {
        if self.finished {
            // Stays without room (see `finish`).
            return;
        }
        self.size = limit.clamp(self.pos.max(1), self.arena.segment_size());
    }

    /// Bytes still free.
    pub fn remaining(&self) -> u32 {
        self.size - self.pos
    }

    /// The size of the segment (the most a debloating limit can be).
    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// No byte left.
    pub fn is_full(&self) -> bool {
        self.pos == self.size
    }

    /// Whether [`BufferBuilder::finish`] ran.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Writes as much of `data` as fits; returns how many bytes were taken. Not visible to
    /// readers until [`commit`](Self::commit) or [`finish`](Self::finish).
    pub fn append(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.remaining() as usize);
        if n > 0 {
            if copy_bytes(self.claim(n as u32), &data[..n]) && !self.streamed {
                self.streamed = true;
                // Relaxed: a hint for the last reader (`Lease::evict`), published with
                // the position that covers these bytes; any value is safe.
                self.control().streamed.store(SKIP_EVICT_STREAMED, Ordering::Relaxed);
            }
            self.pos += n as u32;
        }
        n
    }

    /// The next `len` bytes, for serializing in place; call [`advance`](Self::advance) to
    /// keep them. `len` must be at most [`remaining`](Self::remaining).
    ///
    /// # Panics
    /// If `len` exceeds the remaining space or the builder is finished.
    pub fn claim(&mut self, len: u32) -> &mut [u8] {
        assert!(!self.finished && len <= self.remaining(), "claim of {len} bytes with {} left", self.remaining());
        // SAFETY: [pos, pos+len) is inside the segment (checked above) and above the
        // published position, so no reader looks at it; we are the only writer.
        unsafe { self.arena.segment_bytes_mut(self.index, self.pos, len) }
    }

    /// Writes one length-prefixed record when it fits with room to spare (the segment is
    /// not full afterwards); returns false, writing nothing, otherwise. The per-record fast
    /// path of the record writer: no bounds re-checks, no recompute of the length. The
    /// record is published in its data for a reader that polls it (see the module doc,
    /// "published in the data"), and to every reader by the next commit.
    // inline(always): the per-record path of `ResultPartition::emit` (inline(always) too);
    // left to LLVM it stayed out of line for `[u8]` records (emit bench, 16 B: 5.85 ns per
    // record, 4.04 inlined).
    #[inline(always)]
    pub fn try_write_framed<R: crate::record::Record + ?Sized>(&mut self, record: &R, len: usize) -> bool {
        let total = frame::framed_len(len);
        // A finished builder has no room (`finish` set the limit to the position).
        if total >= self.remaining() as usize {
            debug_assert!(!self.finished || self.remaining() == 0);
            return false;
        }
        let before = self.pos;
        // The record ends before the segment's limit: a prefix's room behind it.
        self.put_framed::<true>(len, |out| record.serialize_into(out));
        // Once per line the records reach.
        if self.ahead_per_line && (before ^ self.pos) >= 64 {
            self.prefetch_ahead();
        }
        true
    }

    /// Writes one length-prefixed record of `len` payload bytes that `fill` produces in
    /// place, when it fits in the rest of the segment (up to its limit, or beyond the limit
    /// when it fits the segment: a record that fits is never split by a debloating limit,
    /// see the module doc); returns false, writing nothing, otherwise.
    pub fn write_framed(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> bool {
        let total = frame::framed_len(len) as u64;
        if self.finished || total > u64::from(self.segment_size - self.pos) {
            return false;
        }
        if total > u64::from(self.remaining()) {
            // Past the debloating limit but inside the segment: the limit moves to the end
            // of this record (the segment is full after it).
            self.size = self.pos + total as u32;
        }
        self.put_framed::<false>(len, fill);
        true
    }

    /// Writes a length-prefixed record at the position (the caller checked that it fits):
    /// the payload, then the cleared word behind it, then its prefix, last (see the module
    /// doc). `ROOM`: the caller checked that the record ends below the segment's limit
    /// (then a 4-aligned word behind it lies in the segment without a look).
    #[inline(always)]
    fn put_framed<const ROOM: bool>(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        let pos = self.pos;
        let total = frame::framed_len(len) as u32;
        // SAFETY: the caller checked that the record fits: [pos, pos + total) is inside the
        // segment and at or above the position, above every published position and prefix.
        fill(unsafe { self.payload_at(self.base, pos, len) });
        if ROOM {
            debug_assert!(pos + total < self.size);
            // The word behind ends inside the segment: `at` < size <= segment_size, both
            // multiples of 4 where it is stored.
            self.clear_word_inside(pos + total);
        } else {
            self.clear_word(pos + total);
        }
        self.put_prefix(pos, len);
        self.pos = pos + total;
    }

    /// The payload bytes `[pos + 4, pos + 4 + len)` of a record framed at `pos` (its prefix
    /// word is not part of the slice); `base` is the builder's own `base` (passed in so a
    /// run keeps it in a register).
    ///
    /// # Safety
    /// `[pos, pos + 4 + len)` is inside the segment and at or above the builder's position
    /// (no reader looks there: above every published position and prefix), and no other
    /// slice of those bytes is alive.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    unsafe fn payload_at(&self, base: *mut u8, pos: u32, len: usize) -> &mut [u8] {
        debug_assert!(u64::from(pos) + frame::framed_len(len) as u64 <= u64::from(self.segment_size));
        #[cfg(not(loom))]
        // SAFETY: inside the segment and unseen by readers (the caller's contract); we are
        // the only writer; `base` points into the mapping that `self.arena` keeps alive.
        return unsafe { std::slice::from_raw_parts_mut(base.add((pos + SLOT_BYTES) as usize), len) };
        #[cfg(loom)]
        return {
            let _ = base;
            // SAFETY: as above, through the arena so loom's witness cells see the write.
            unsafe { self.arena.segment_bytes_mut(self.index, pos + SLOT_BYTES, len as u32) }
        };
    }

    /// [`clear_word`](Self::clear_word) for an offset known to lie below the segment's
    /// limit (the per-record path: no bounds look).
    #[inline(always)]
    fn clear_word_inside(&self, at: u32) {
        debug_assert!(at < self.size && self.segment_size % SLOT_BYTES == 0);
        if at % SLOT_BYTES == 0 {
            // Relaxed: as in `clear_word`.
            // SAFETY: 4-aligned (checked), and `at + 4 <= segment_size`: `at` is below the
            // limit, itself at most the segment size, and both are multiples of 4.
            unsafe { self.word(at) }.store(frame::UNWRITTEN, Ordering::Relaxed);
        }
    }

    /// Stores the "nothing yet" word at `at` when a record may start there that a reader
    /// polls ([`frame::UNWRITTEN`] at a 4-aligned offset with room for a prefix in the
    /// segment; the debloating limit does not count, the reader does not know it).
    #[inline(always)]
    fn clear_word(&self, at: u32) {
        if at % SLOT_BYTES == 0 && u64::from(at) + u64::from(SLOT_BYTES) <= u64::from(self.segment_size) {
            // Relaxed: ordered before any reader's look at it by the Release store of the
            // prefix in front of it (`put_prefix`), by a commit, or by the descriptor's
            // push (for the segment's first word), which the reader Acquires first.
            // SAFETY: 4-aligned, and the word lies in the segment (both checked above).
            unsafe { self.word(at) }.store(frame::UNWRITTEN, Ordering::Relaxed);
        }
    }

    /// The 4-byte word at `at` of this segment as an atomic, from the builder's own base
    /// pointer: the per-record path's [`Arena::segment_word`] without its bounds checks
    /// and call (they cost 2.7x on 8 B records: emit 2.9 -> 7.9 ns).
    ///
    /// # Safety
    /// `at` is a multiple of 4 and `at + 4` at most the segment size.
    #[inline(always)]
    unsafe fn word(&self, at: u32) -> &crate::sync::AtomicU32 {
        debug_assert!(at % SLOT_BYTES == 0 && u64::from(at) + 4 <= u64::from(self.arena.segment_size()));
        #[cfg(not(loom))]
        // SAFETY: inside this segment (the caller's contract) of the mapping `self.arena`
        // keeps alive; 4-aligned (segments start on page boundaries); the segment's words
        // that readers poll are accessed atomically only, as `Arena::segment_word` says.
        return unsafe { crate::sync::AtomicU32::from_ptr(self.base.add(at as usize).cast()) };
        #[cfg(loom)]
        return self.arena.segment_word(self.index, at);
    }

    /// Writes the length prefix of the record at `pos` (its payload, or the part of it
    /// that fits, is written already): at a 4-aligned offset an atomic store, Release,
    /// that publishes the record to a reader polling the word; elsewhere plain bytes
    /// (nobody polls there).
    #[inline(always)]
    fn put_prefix(&mut self, pos: u32, len: usize) {
        // Release: pairs with the Acquire load in `BufferConsumer::record_at_read`;
        // publishes the payload written above and the word cleared behind it.
        self.store_prefix(pos, len, Ordering::Release);
    }

    /// The prefix of a record inside a run ([`FramedRun`]), not its first: published by
    /// the Release store of the run's first prefix, which comes after it, so Relaxed.
    #[inline(always)]
    fn put_run_prefix(&mut self, pos: u32, len: usize) {
        // Relaxed: no reader looks at this word before it acquired the run's first prefix
        // (it reaches a word only through the record in front of it), whose Release store
        // in `FramedRun::drop` comes after this one.
        self.store_prefix(pos, len, Ordering::Relaxed);
    }

    /// The store of [`put_prefix`](Self::put_prefix) and
    /// [`put_run_prefix`](Self::put_run_prefix), with the ordering each names (a constant
    /// at both call sites, so the branch-free store each had before).
    #[inline(always)]
    fn store_prefix(&mut self, pos: u32, len: usize, order: Ordering) {
        debug_assert!(len <= u32::MAX as usize);
        if pos % SLOT_BYTES != 0 {
            // SAFETY: [pos, pos + 4) is inside the segment (the caller's record or head
            // fits) and above every published position; no reader polls an unaligned word.
            frame::put_len(unsafe { self.arena.segment_bytes_mut(self.index, pos, SLOT_BYTES) }, len);
            return;
        }
        #[cfg(loom)]
        // SAFETY: as above. Under loom the arena's words are separate from its bytes:
        // the bytes (read by a reader of committed bytes) are written here as well.
        frame::put_len(unsafe { self.arena.segment_bytes_mut(self.index, pos, SLOT_BYTES) }, len);
        // The ordering is the caller's (see its comment). The value's bytes are the
        // little-endian prefix that readers of committed bytes decode.
        // SAFETY: 4-aligned (checked above) and the prefix lies in the segment (the
        // caller's record or head fits).
        unsafe { self.word(pos) }.store((len as u32).to_le(), order);
    }

    /// Starts a run of length-prefixed records ([`FramedRun`]) with `record` (`len`
    /// payload bytes) when it fits with room to spare, as
    /// [`try_write_framed`](Self::try_write_framed); `None`, writing nothing, otherwise.
    /// The run's records are published together when it ends (see [`FramedRun`]).
    // inline(always): the batch path of `ResultPartition::emit_batch`.
    #[inline(always)]
    pub fn start_run<R: crate::record::Record + ?Sized>(&mut self, record: &R, len: usize) -> Option<FramedRun<'_>> {
        // (`len` is a record's: a length that does not fit the segment fails below.)
        let total = frame::framed_len(len);
        // A finished builder has no room (`finish` set the limit to the position).
        if total >= self.remaining() as usize {
            return None;
        }
        let pos = self.pos;
        // SAFETY: [pos, pos + total) fits below the limit (checked), at the position.
        record.serialize_into(unsafe { self.payload_at(self.base, pos, len) });
        let end = pos + total as u32;
        if self.ahead_per_line && (pos ^ end) >= 64 {
            self.prefetch_from(end);
        }
        Some(FramedRun {
            base: self.base,
            pos: end,
            size: self.size,
            first: pos,
            first_len: len as u32,
            records: 1,
            ahead_per_line: self.ahead_per_line,
            builder: self,
        })
    }

    /// Writes the head of a record that spans segments: its length prefix (`len` payload
    /// bytes in all) and as much of `payload` (the record's first bytes) as fits; returns
    /// the payload bytes written. The builder must have at least [`LEN_PREFIX`] bytes
    /// left, and the record must not fit the rest of the segment ([`write_framed`](Self::write_framed)
    /// would have written it): a reader polling the prefix sees a length that runs past
    /// the segment and leaves the record to the position.
    pub fn write_span_head(&mut self, len: usize, payload: &[u8]) -> usize {
        debug_assert!(self.remaining() >= SLOT_BYTES && !self.finished);
        debug_assert!(
            frame::framed_len(len) as u64 > u64::from(self.arena.segment_size() - self.pos),
            "a spanning record's head must not look whole to a polling reader"
        );
        let pos = self.pos;
        self.pos += SLOT_BYTES;
        let n = self.append(payload);
        self.put_prefix(pos, len);
        n
    }

    /// Ends a record written with [`append`](Self::append)s (the tail of one that spans
    /// segments): clears the word behind it, for a reader that polls the next record's
    /// prefix there (see the module doc). Call before the next commit.
    pub fn end_record(&self) {
        self.clear_word(self.pos);
    }

    /// Prefetches for writing the line [`WRITE_AHEAD`] bytes past the write position (at
    /// most the segment's last line): the segment was read last by a consumer on another
    /// core that left its lines in its caches, so every line the writer reaches must first
    /// cross back; asked for early, it does so while the records before it are written (see
    /// [`prefetch_write_line`](crate::sync::prefetch_write_line)).
    #[inline]
    fn prefetch_ahead(&self) {
        if self.ahead_per_line {
            self.prefetch_from(self.pos);
        }
    }

    /// Prefetches for writing the line [`WRITE_AHEAD`] bytes past `pos` (at most the
    /// segment's last line).
    #[inline(always)]
    fn prefetch_from(&self, pos: u32) {
        #[cfg(not(loom))]
        {
            let at = (pos as usize + WRITE_AHEAD).min((self.size as usize).saturating_sub(1));
            crate::sync::prefetch_write_line(self.base.wrapping_add(at));
        }
        #[cfg(loom)]
        let _ = pos;
    }

    /// Prefetches for writing the line after the one holding the write position, for a
    /// writer that just committed and comes back to this segment only after writing many
    /// others (a flush of a partition with many channels): the next records of this
    /// segment go there, and the line, last read by a consumer on another core or long
    /// out of the caches, crosses while the other channels are written instead of
    /// stalling the stores that reach it. The line holding the position is left alone:
    /// the consumer is about to read what was just committed in it.
    #[inline]
    pub fn prefetch_next_line(&self) {
        #[cfg(not(loom))]
        if self.write_ahead {
            let at = ((self.pos as usize | 63) + 1).min((self.size as usize).saturating_sub(1));
            crate::sync::prefetch_write_line(self.base.wrapping_add(at));
        }
    }

    /// Clears the slot at the start of the segment, for a segment that will carry
    /// slot-framed records: call before the segment is handed to its reader (its
    /// descriptor's Release publication orders this store before the reader's first poll).
    pub fn clear_first_slot(&self) {
        // Relaxed: published with the segment's descriptor (see above).
        self.arena.segment_word(self.index, 0).store(0, Ordering::Relaxed);
    }

    /// Writes a slot-framed record of `len` bytes that `fill` produces in place, and
    /// publishes it at once (no commit needed for a slot-polling reader). Returns false,
    /// writing nothing, when it does not fit in the rest of the segment.
    pub fn write_slotted(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> bool {
        let need = slot_framed_len(len);
        if self.finished || need > self.remaining() as usize || len > frame::MAX_SLOT_PAYLOAD {
            return false;
        }
        let pos = self.pos;
        debug_assert!(pos % SLOT_BYTES == 0, "slot-framed records stay 4-byte aligned");
        // SAFETY: [pos + 4, pos + 4 + len) is inside the segment (need <= remaining) and
        // above every published position and slot, so no reader looks at it; we are the
        // only writer. The slot word itself is not part of the slice.
        let dst = unsafe { self.arena.segment_bytes_mut(self.index, pos + SLOT_BYTES, len as u32) };
        fill(dst);
        let next = pos + need as u32;
        if u64::from(next) + u64::from(SLOT_BYTES) <= u64::from(self.arena.segment_size()) {
            // Relaxed: ordered before the reader's look at it by the Release store below,
            // which the reader Acquires before it moves on to `next`.
            self.arena.segment_word(self.index, next).store(0, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire load in `BufferConsumer::slot_record`; publishes
        // the payload and the cleared next slot.
        self.arena.segment_word(self.index, pos).store(frame::slot_word(len), Ordering::Release);
        self.pos = next;
        true
    }

    /// Keeps `len` bytes of the last claim.
    ///
    /// # Panics
    /// If `len` exceeds the remaining space.
    pub fn advance(&mut self, len: u32) {
        assert!(len <= self.remaining());
        self.pos += len;
    }

    /// Publishes everything written so far (Flink's flush of a builder). Returns whether
    /// anything new became visible.
    pub fn commit(&mut self) -> bool {
        debug_assert!(!self.finished);
        if self.pos == self.committed {
            return false;
        }
        self.committed = self.pos;
        self.note_flush();
        // Release: pairs with the Acquire load in `BufferConsumer::poll`; publishes the
        // bytes written below `pos`.
        self.control().position.store(self.pos, Ordering::Release);
        true
    }

    /// Counts a flush of this segment to its reader (a [`commit`](Self::commit) does, a
    /// stream's flush calls it). A segment flushed more than `EVICT_MAX_FLUSHES` times is
    /// not evicted by its last reader: its writer is paced by its flushes (latency mode),
    /// not by taking lines back from the reader, and the eviction would delay the reader
    /// between two records.
    #[inline]
    pub(crate) fn note_flush(&mut self) {
        if self.flushes <= EVICT_MAX_FLUSHES {
            self.flushes += 1;
            if self.flushes > EVICT_MAX_FLUSHES && !self.streamed {
                // Relaxed: a hint for the last reader (`Lease::evict`), published with the
                // position that ends the segment; any value is safe.
                self.control().streamed.store(SKIP_EVICT_FLUSHED, Ordering::Relaxed);
            }
        }
    }

    /// Publishes the final position with FINISHED; the writer is done with the segment.
    /// Returns the final size. Idempotent.
    pub fn finish(&mut self) -> u32 {
        if !self.finished {
            self.finished = true;
            // No room left: what keeps `try_write_framed` from writing, without a look at
            // `finished` per record.
            self.size = self.pos;
            self.committed = self.pos;
            // Release: pairs with the Acquire load in `BufferConsumer::poll`; publishes
            // every byte and the end of the segment.
            self.control().position.store(self.pos | FINISHED, Ordering::Release);
        }
        self.pos
    }
}

impl Drop for BufferBuilder {
    fn drop(&mut self) {
        // A builder abandoned mid-way still ends its segment, so no reader waits forever.
        self.finish();
    }
}

/// A run of length-prefixed records written into one builder's segment and published
/// together ([`BufferBuilder::start_run`], then [`try_push`](Self::try_push) per record):
/// the batch path of [`ResultPartition::emit_batch`](crate::partition::ResultPartition::emit_batch).
/// The write position, the limit and the count stay in the run (in registers, once
/// inlined) and go back to the builder when the run ends (drop or
/// [`finish`](Self::finish)).
///
/// ```text
///  start_run(r0): payload r0 -> [p0+4, ..)           (r0's prefix word stays UNWRITTEN)
///  try_push(rk):  payload rk, then prefix rk at pk   (Relaxed: nobody reads it yet)
///  end:           word behind the last record = UNWRITTEN   (Relaxed)
///                 prefix r0 at p0 (Release) ------------>  reader: word(p0).load(Acquire)
///                                                          sees r0, and through it r1..rn
/// ```
///
/// A reader polling the data reaches a record's prefix word only through the record in
/// front of it, so every prefix of the run but the first is published by the first one's
/// Release store, which comes last, as a single record's is by its own (module doc,
/// "published in the data"). The bytes are those [`BufferBuilder::try_write_framed`]
/// writes record by record. Loom model: `loom-tests/tests/gate_data_read.rs`
/// (`run_read_no_torn_or_stale_record`).
pub struct FramedRun<'a> {
    builder: &'a mut BufferBuilder,
    /// The builder's base pointer, kept here for the per-record path.
    base: *mut u8,
    /// The write position: behind the run's last record, below `size`.
    pos: u32,
    /// The builder's limit.
    size: u32,
    /// The run's first record: where its prefix goes, and its payload length.
    first: u32,
    first_len: u32,
    /// Records in the run (at least 1).
    records: u32,
    ahead_per_line: bool,
}

impl std::fmt::Debug for FramedRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FramedRun({} records from {} to {})", self.records, self.first, self.pos)
    }
}

impl FramedRun<'_> {
    /// Writes `record` (`len` payload bytes) behind the run's records when it fits with
    /// room to spare (the segment is not full afterwards); returns false, writing nothing,
    /// otherwise. Not visible to any reader before the run ends.
    #[inline(always)]
    pub fn try_push<R: crate::record::Record + ?Sized>(&mut self, record: &R, len: usize) -> bool {
        let total = frame::framed_len(len);
        if total >= (self.size - self.pos) as usize {
            return false;
        }
        let pos = self.pos;
        // SAFETY: [pos, pos + total) fits below the limit (checked); `pos` is the run's
        // write position, at or above the builder's (never published while the run lives).
        record.serialize_into(unsafe { self.builder.payload_at(self.base, pos, len) });
        self.builder.put_run_prefix(pos, len);
        let end = pos + total as u32;
        self.pos = end;
        self.records += 1;
        if self.ahead_per_line && (pos ^ end) >= 64 {
            self.builder.prefetch_from(end);
        }
        true
    }

    /// Records in the run so far.
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Ends the run (publishes its records, as dropping it does); returns how many it
    /// holds and the builder's position behind them.
    #[inline(always)]
    pub fn finish(self) -> (u32, u32) {
        (self.records, self.pos)
    }
}

impl Drop for FramedRun<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        let b = &mut *self.builder;
        // Every record left room to spare: the word behind the last lies below the limit.
        b.clear_word_inside(self.pos);
        b.put_prefix(self.first, self.first_len as usize);
        b.pos = self.pos;
    }
}

/// Told when a reader is done with a segment. Implemented by the consumer side of a
/// channel: it returns a credit and names the segment (the producer checks that it was in
/// flight on that channel, and takes it back once every reader released it). Not told
/// about orphaned segments (their producer is gone; the last reader frees them).
pub trait ReleaseSink {
    /// Reader of `segment` is done; `last` when it was the last of all readers (refcount
    /// reached zero), `violation` when the refcount was already zero (a faulty peer).
    fn release(&self, segment: u32, last: bool, violation: bool);
}

/// One reader's claim on a segment. The last [`Buffer`] or consumer of this reader to go
/// drops it, which releases the segment.
pub struct Lease {
    arena: Arc<Arena>,
    index: u32,
    sink: Rc<dyn ReleaseSink>,
}

/// [`Lease::index`] of a lease whose segment was released (a [`SpareLease`]).
const RELEASED: u32 = u32::MAX;

impl Lease {
    /// Releases the segment (once): the reader's decrement of its refcount, and the report
    /// to the sink.
    fn release(&mut self) {
        if self.index == RELEASED {
            return;
        }
        let ctl = &self.arena.controls()[self.index as usize];
        // AcqRel: Release orders this reader's reads of the payload before the decrement;
        // Acquire (for the last reader) pairs with the other readers' Release decrements,
        // so recycling happens after every reader is done. Also pairs with the reclaimer's
        // AcqRel `fetch_or` in `orphan_segment`: one of the two sees the other.
        let prev = ctl.refcount.fetch_sub(1, Ordering::AcqRel);
        if prev & REFCOUNT_MASK == 0 {
            // A faulty peer zeroed it: undo and do not recycle a segment others may use.
            // Relaxed: restores our own decrement, nothing to order.
            ctl.refcount.fetch_add(1, Ordering::Relaxed);
            self.sink.release(self.index, false, true);
        } else if prev & REFCOUNT_ORPHANED != 0 {
            // The producer's pool is gone (its process died and was reclaimed): nobody
            // reads the credit ring; the last reader puts the segment back itself.
            if prev & REFCOUNT_MASK == 1 {
                // Relaxed: the owner word is stable while readers hold the segment; the
                // CAS in `free_segment_if` decides.
                let owner = ctl.owner.load(Ordering::Relaxed);
                crate::memory::recovery::free_segment_if(&self.arena, self.index, owner);
            }
        } else {
            let last = prev & REFCOUNT_MASK == 1;
            if last {
                self.evict(ctl);
            }
            self.sink.release(self.index, last, false);
        }
        self.index = RELEASED;
    }
}

impl Lease {
    /// The last reader, before the segment goes back to its producer: evicts the lines
    /// written into it from every cache ([`evict_lines`](crate::sync::evict_lines)), so the
    /// producer's next writes there do not take them back one by one from this core.
    fn evict(&self, ctl: &SegmentControl) {
        // Relaxed: a hint (see `SegmentControl::streamed`); lines of a large record's
        // piece are in memory already (streaming stores) or cost this reader more to evict
        // than they cost the writer to take back (ordinary ones, see `copy_bytes`); a
        // segment flushed record by record is read by a reader waiting for each record.
        if !crate::sync::evicts_segments() || ctl.streamed.load(Ordering::Relaxed) != 0 {
            return;
        }
        // Relaxed: only how far to evict (a hint; any value is safe, clamped to the
        // segment).
        let written = (ctl.position.load(Ordering::Relaxed) & POSITION_MASK).min(self.arena.segment_size());
        // SAFETY: `[0, written)` of the segment is inside the arena's mapping (`written` is
        // clamped to the segment size), which this lease's `Arc<Arena>` keeps mapped.
        unsafe { crate::sync::evict_lines(self.arena.segment_ptr(self.index, 0), written as usize) };
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

/// The allocation of a consumer's lease after its segment was released
/// ([`BufferConsumer::recycle`]), to read the channel's next segment without allocating
/// ([`BufferConsumer::reuse`]). Holds no segment.
pub struct SpareLease(Rc<Lease>);

impl std::fmt::Debug for SpareLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpareLease")
    }
}

/// A read view on `[offset, offset + len)` of a segment, in place in shared memory. The
/// segment stays valid while any view or its consumer lives.
///
/// Dropping the last view and the consumer releases this reader's claim on the segment;
/// the last reader's release hands it back to its producer through the credit ring.
pub struct Buffer {
    lease: Rc<Lease>,
    offset: u32,
    len: u32,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer(segment {}, {}..{})", self.lease.index, self.offset, self.offset + self.len)
    }
}

impl Buffer {
    /// The segment index.
    pub fn segment(&self) -> u32 {
        self.lease.index
    }

    /// Offset of the view inside the segment.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// A narrower view of the same bytes.
    ///
    /// # Panics
    /// If the range is outside this view.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Buffer {
        assert!(range.start <= range.end && range.end <= self.len as usize);
        Buffer {
            lease: self.lease.clone(),
            offset: self.offset + range.start as u32,
            len: (range.end - range.start) as u32,
        }
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the range was below a position the writer published (Acquire in poll)
        // and inside the segment (validated there); the lease keeps the segment from being
        // recycled, and the writer never writes below its published position.
        unsafe { self.lease.arena.segment_bytes(self.lease.index, self.offset, self.len) }
    }
}

/// The reader's cursor over one segment.
///
/// Dropping it (once no [`Buffer`] view of it is left either) releases this reader's claim
/// on the segment; the last reader's release hands it back to its producer.
pub struct BufferConsumer {
    lease: Rc<Lease>,
    size: u32,
    read_pos: u32,
    finished: bool,
    place: u32,
    /// The writer position of the last load in `peek_final` (validated there).
    known: u32,
    /// Where reading ahead of the writer's position began ([`record_at_read`](Self::record_at_read)
    /// took a record the position did not cover yet; `u32::MAX`: not ahead): a position
    /// below the read position but not below this is a writer that did not commit yet,
    /// not one that went back.
    ahead_from: u32,
}

impl std::fmt::Debug for BufferConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufferConsumer(segment {}, read {} finished {})", self.lease.index, self.read_pos, self.finished)
    }
}

impl BufferConsumer {
    /// Releases the segment now, as dropping the consumer would; when no [`Buffer`] view
    /// shares its lease any more, hands back the lease's allocation for the next segment
    /// of the same channel ([`BufferConsumer::reuse`]). Otherwise the last view releases
    /// the segment, as usual.
    pub fn recycle(self) -> Option<SpareLease> {
        let mut lease = self.lease;
        let l = Rc::get_mut(&mut lease)?;
        l.release();
        Some(SpareLease(lease))
    }

    /// [`BufferConsumer::new`] in a spare lease of the same channel (same arena and sink).
    pub fn reuse(spare: SpareLease, index: u32, channel: u32) -> Self {
        let mut lease = spare.0;
        let size = match Rc::get_mut(&mut lease) {
            Some(l) => {
                debug_assert!(index < l.arena.segment_count());
                debug_assert_eq!(l.index, RELEASED, "a spare lease holds no segment");
                l.index = index;
                l.arena.segment_size()
            }
            // A SpareLease is made only from an unshared lease and never cloned.
            None => unreachable!("a spare lease is not shared"),
        };
        Self { lease, size, read_pos: 0, finished: false, place: channel, known: 0, ahead_from: u32::MAX }
    }

    /// Starts reading segment `index` (validated by the caller's descriptor check),
    /// reporting the release to `sink`. `channel` names the place in errors.
    pub fn new(arena: Arc<Arena>, index: u32, sink: Rc<dyn ReleaseSink>, channel: u32) -> Self {
        debug_assert!(index < arena.segment_count());
        let size = arena.segment_size();
        Self {
            lease: Rc::new(Lease { arena, index, sink }),
            size,
            read_pos: 0,
            finished: false,
            place: channel,
            known: 0,
            ahead_from: u32::MAX,
        }
    }

    /// The segment index.
    pub fn index(&self) -> u32 {
        self.lease.index
    }

    /// Bytes read so far.
    pub fn read_position(&self) -> u32 {
        self.read_pos
    }

    /// Loads the writer's position: `(published bytes, finished)`. Below the read position
    /// only while this reader reads ahead of the commits
    /// ([`record_at_read`](Self::record_at_read)) and the segment is not finished.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] if the position is beyond the segment or went back.
    pub fn writer_position(&self) -> Result<(u32, bool)> {
        let ctl = &self.lease.arena.controls()[self.lease.index as usize];
        // Acquire: pairs with the Release stores in `BufferBuilder::commit` / `finish`.
        let p = ctl.position.load(Ordering::Acquire);
        let pos = p & POSITION_MASK;
        let fin = p & FINISHED != 0;
        let floor = if fin { self.read_pos } else { self.read_pos.min(self.ahead_from) };
        if pos > self.size || pos < floor {
            return Err(Error::ProtocolViolation {
                place: format!("channel {}", self.place),
                detail: format!(
                    "segment {} writer position {pos} outside {}..={}",
                    self.lease.index, self.read_pos, self.size
                ),
            });
        }
        Ok((pos, fin))
    }

    /// Takes everything published since the last call as an in-place view; `Ok(None)` when
    /// nothing new. After the writer finished and everything was read,
    /// [`is_finished`](Self::is_finished) turns true.
    ///
    /// # Errors
    /// As [`writer_position`](Self::writer_position).
    pub fn poll(&mut self) -> Result<Option<Buffer>> {
        if self.finished {
            return Ok(None);
        }
        let (pos, fin) = self.writer_position()?;
        let out = if pos > self.read_pos {
            let b = Buffer { lease: self.lease.clone(), offset: self.read_pos, len: pos - self.read_pos };
            self.read_pos = pos;
            Some(b)
        } else {
            None
        };
        if fin {
            self.finished = true;
        }
        Ok(out)
    }

    /// The bytes `[read_pos, published)` without consuming them: lets a record reader look
    /// at data in place and then [`consume`](Self::consume) what it used.
    ///
    /// # Errors
    /// As [`writer_position`](Self::writer_position).
    pub fn peek(&mut self) -> Result<&[u8]> {
        Ok(self.peek_final()?.0)
    }

    /// As [`peek`](Self::peek), also telling whether the writer finished the segment (so
    /// the bytes returned are all there will ever be).
    ///
    /// # Errors
    /// As [`writer_position`](Self::writer_position).
    pub fn peek_final(&mut self) -> Result<(&[u8], bool)> {
        let (pos, fin) = self.writer_position()?;
        if pos >= self.read_pos {
            self.known = pos;
            self.ahead_from = u32::MAX;
        }
        if fin && pos == self.read_pos {
            self.finished = true;
        }
        let n = pos.saturating_sub(self.read_pos);
        // SAFETY: [read_pos, read_pos + n) is published (Acquire above) and inside the
        // segment (validated); the lease keeps the segment alive.
        Ok((unsafe { self.lease.arena.segment_bytes(self.lease.index, self.read_pos, n) }, fin))
    }

    /// The length-prefixed record at the read position, in place, when its prefix word
    /// says it was written (a network-stack reader that polls the data, see the module doc):
    /// the read position is 4-aligned, its word is not [`frame::UNWRITTEN`], and the record
    /// lies whole in the segment. `None` otherwise, also for the head of a record that
    /// spans segments (its length runs past the segment): the writer's position tells
    /// then. The record may lie above the writer's position (written, not committed yet).
    /// After using it, [`consume`](Self::consume) its [`frame::framed_len`].
    #[inline]
    pub fn record_at_read(&mut self) -> Option<&[u8]> {
        let at = self.read_pos;
        if at % SLOT_BYTES != 0 || u64::from(at) + u64::from(SLOT_BYTES) > u64::from(self.size) {
            return None;
        }
        // Acquire: pairs with the Release store in `BufferBuilder::put_prefix`: the
        // payload and the word cleared behind it are visible.
        let v = u32::from_le(self.lease.arena.segment_word(self.lease.index, at).load(Ordering::Acquire));
        let end = u64::from(at) + u64::from(SLOT_BYTES) + u64::from(v);
        if v == frame::UNWRITTEN || end > u64::from(self.size) {
            return None;
        }
        if at >= self.known {
            self.ahead_from = self.ahead_from.min(at);
        }
        // SAFETY: inside the segment (checked above); written before the prefix's Release
        // store that we Acquired, and never written again while the segment is ours; the
        // lease keeps the segment alive.
        Some(unsafe { self.lease.arena.segment_bytes(self.lease.index, at + SLOT_BYTES, v) })
    }

    /// Whether [`record_at_read`](Self::record_at_read) would find a record now (the one
    /// load of the prefix word, for a reader spinning on it). `None` when the word cannot
    /// tell (unaligned read position, no room for a prefix): ask the writer's position.
    #[inline]
    pub fn record_written_at_read(&self) -> Option<bool> {
        let at = self.read_pos;
        if at % SLOT_BYTES != 0 || u64::from(at) + u64::from(SLOT_BYTES) > u64::from(self.size) {
            return None;
        }
        // Relaxed: only a hint; `record_at_read` Acquires the word before anything is read.
        let v = u32::from_le(self.lease.arena.segment_word(self.lease.index, at).load(Ordering::Relaxed));
        Some(v != frame::UNWRITTEN && u64::from(at) + u64::from(SLOT_BYTES) + u64::from(v) <= u64::from(self.size))
    }

    /// The slot-framed record at the read position, in place, once its writer published
    /// it (`Ok(None)` while its slot is clear, or when no slot fits before the end of the
    /// segment). After using it, [`consume`](Self::consume) its
    /// [`slot_framed_len`].
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for a slot that is neither clear nor valid, or whose
    /// length runs past the segment.
    pub fn slot_record(&self) -> Result<Option<&[u8]>> {
        if u64::from(self.read_pos) + u64::from(SLOT_BYTES) > u64::from(self.size) {
            return Ok(None);
        }
        // Acquire: pairs with the Release store in `BufferBuilder::write_slotted`.
        let v = self.lease.arena.segment_word(self.lease.index, self.read_pos).load(Ordering::Acquire);
        if v == 0 {
            return Ok(None);
        }
        let len = frame::slot_len(v).unwrap_or(u32::MAX);
        if len == u32::MAX || u64::from(self.read_pos) + u64::from(SLOT_BYTES) + u64::from(len) > u64::from(self.size) {
            return Err(Error::ProtocolViolation {
                place: format!("channel {}", self.place),
                detail: format!(
                    "segment {} slot {v:#x} at {} is not a record of this segment",
                    self.lease.index, self.read_pos
                ),
            });
        }
        // SAFETY: inside the segment (checked above); published by the writer's Release
        // store of the slot that we Acquired, and the writer never writes a published
        // record again; the lease keeps the segment alive.
        Ok(Some(unsafe { self.lease.arena.segment_bytes(self.lease.index, self.read_pos + SLOT_BYTES, len) }))
    }

    /// Where the writer ended the segment, once it did (`None` before). Unlike
    /// [`writer_position`](Self::writer_position) this does not require the position to
    /// be at or above the read position: a slot-framed reader runs ahead of the commits.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for a position beyond the segment.
    pub fn finished_at(&self) -> Result<Option<u32>> {
        let ctl = &self.lease.arena.controls()[self.lease.index as usize];
        // Acquire: pairs with the Release store in `BufferBuilder::finish` (every slot
        // written before it is visible after it).
        let p = ctl.position.load(Ordering::Acquire);
        let pos = p & POSITION_MASK;
        if pos > self.size {
            return Err(Error::ProtocolViolation {
                place: format!("channel {}", self.place),
                detail: format!("segment {} writer position {pos} beyond {}", self.lease.index, self.size),
            });
        }
        Ok((p & FINISHED != 0).then_some(pos))
    }

    /// Prefetches the cache lines at the read position that the writer fills next (see
    /// [`prefetch_line`](crate::sync::prefetch_line)): called by a reader that found
    /// nothing new and is about to poll again, so the data arrives with the position.
    #[inline]
    pub fn prefetch_unread(&self) {
        if self.read_pos < self.size {
            let p = self.lease.arena.segment_ptr(self.lease.index, self.read_pos);
            crate::sync::prefetch_line(p);
            // The second line: a small record with its prefix often straddles two.
            crate::sync::prefetch_line(p.wrapping_add(64));
        }
    }

    /// The bytes from the read position up to the writer position that the last
    /// [`peek_final`](Self::peek_final) loaded, without loading it again (a cross-core
    /// cache miss while the writer commits often). Possibly empty.
    #[inline]
    pub fn peek_known(&self) -> &[u8] {
        let n = self.known.saturating_sub(self.read_pos);
        // SAFETY: [read_pos, known) lies below a writer position that `peek_final` loaded
        // with Acquire and validated (inside the segment); the writer never writes below a
        // published position, and the lease keeps the segment alive.
        unsafe { self.lease.arena.segment_bytes(self.lease.index, self.read_pos, n) }
    }

    /// Marks `n` more bytes as read (after [`peek`](Self::peek)).
    ///
    /// # Panics
    /// If more bytes are consumed than were peeked.
    pub fn consume(&mut self, n: u32) {
        self.read_pos += n;
    }

    /// A view of `[offset, offset+len)` that keeps the segment alive (for records that are
    /// handed out as owned views).
    ///
    /// # Panics
    /// If the range goes beyond what was read.
    pub fn view(&self, offset: u32, len: u32) -> Buffer {
        assert!(offset + len <= self.read_pos);
        Buffer { lease: self.lease.clone(), offset, len }
    }

    /// Bytes `[offset, offset + len)` already read (below the read position), in place.
    ///
    /// # Panics
    /// If the range goes beyond what was read.
    pub fn bytes_at(&self, offset: u32, len: u32) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|e| e <= self.read_pos), "range beyond the read position");
        // SAFETY: the range is below the read position, hence published (Acquire when it
        // was read) and inside the segment; the lease keeps the segment alive.
        unsafe { self.lease.arena.segment_bytes(self.lease.index, offset, len) }
    }

    /// The writer finished and every byte was read.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Re-checks for the end of the segment (after a `peek` that consumed everything).
    ///
    /// # Errors
    /// As [`writer_position`](Self::writer_position).
    pub fn check_finished(&mut self) -> Result<bool> {
        if !self.finished {
            let (pos, fin) = self.writer_position()?;
            self.finished = fin && pos == self.read_pos;
        }
        Ok(self.finished)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A heap arena of 4 segments of `segment_size` bytes and its pool.
    fn test_pool(segment_size: u32) -> (Arc<Arena>, crate::buffer::NetworkBufferPool) {
        let cfg = crate::memory::ArenaConfig {
            segment_size,
            segment_count: 4,
            max_channels: 2,
            max_gates: 2,
            ..Default::default()
        };
        let arena = Arc::new(Arena::heap(&cfg).unwrap());
        let pool = crate::buffer::NetworkBufferPool::new(arena.clone());
        (arena, pool)
    }

    #[test]
    fn a_run_writes_the_bytes_of_records_written_one_by_one() {
        let (arena, pool) = test_pool(4096);
        let mut one = BufferBuilder::new(pool.request(Owner::Free, 0).unwrap().unwrap(), 1);
        let mut run_b = BufferBuilder::new(pool.request(Owner::Free, 0).unwrap().unwrap(), 1);
        // Records of 1 to 13 bytes: prefixes at aligned and unaligned offsets.
        let records: Vec<Vec<u8>> = (0..400u32).map(|i| vec![i as u8; 1 + (i % 13) as usize]).collect();
        let mut written = 0;
        for r in &records {
            if !one.try_write_framed(&r[..], r.len()) {
                break;
            }
            written += 1;
        }
        assert!(written < records.len(), "the segment fills up before the records end");
        let mut run = run_b.start_run(&records[0][..], records[0].len()).expect("the first fits");
        for r in &records[1..] {
            if !run.try_push(&r[..], r.len()) {
                break;
            }
        }
        assert_eq!(run.records() as usize, written, "the run stops where try_write_framed did");
        let (n, pos) = run.finish();
        assert_eq!((n as usize, pos), (written, one.position()));
        assert_eq!(run_b.position(), one.position());
        let len = one.position() + 4;
        // SAFETY: both builders are ours and no reader exists; only read here.
        let (a, b) = unsafe {
            (arena.segment_bytes(one.index(), 0, len).to_vec(), arena.segment_bytes(run_b.index(), 0, len).to_vec())
        };
        assert_eq!(a, b, "same bytes, including the word behind the last record");
        // A record without room starts no run and writes nothing.
        assert!(run_b.start_run(&[0u8; 4096][..], 4096).is_none(), "a record without room is refused");
        assert_eq!(run_b.position(), one.position());
    }

    #[test]
    fn a_large_piece_asks_its_reader_not_to_evict_the_segment_whichever_store_copied_it() {
        let (_arena, pool) = test_pool(16384);
        let hint = |b: &BufferBuilder| b.control().streamed.load(Ordering::Relaxed);
        let data = vec![7u8; LARGE_COPY];
        let mut small = BufferBuilder::new(pool.request(Owner::Free, 0).unwrap().unwrap(), 1);
        assert_eq!(small.append(&data[..LARGE_COPY - 1]), LARGE_COPY - 1);
        assert_eq!(hint(&small), 0, "a piece under {LARGE_COPY} bytes leaves the hint clear");
        let mut large = BufferBuilder::new(pool.request(Owner::Free, 0).unwrap().unwrap(), 1);
        assert_eq!(large.append(&data), LARGE_COPY);
        assert_eq!(hint(&large), SKIP_EVICT_STREAMED, "a piece of {LARGE_COPY} bytes sets the hint");
    }

    #[test]
    fn a_segment_flushed_more_than_the_limit_asks_its_reader_not_to_evict_it() {
        let (arena, pool) = test_pool(4096);
        let seg = pool.request(Owner::Free, 0).unwrap().unwrap();
        let mut b = BufferBuilder::new(seg, 1);
        let hint = |b: &BufferBuilder| b.control().streamed.load(Ordering::Relaxed);
        for i in 0..EVICT_MAX_FLUSHES {
            b.append(&[1, 2, 3, 4]);
            assert!(b.commit());
            assert_eq!(hint(&b), 0, "after {} commits", i + 1);
        }
        // A commit with nothing new is no flush.
        assert!(!b.commit());
        assert_eq!(hint(&b), 0);
        b.append(&[5]);
        assert!(b.commit());
        assert_eq!(hint(&b), SKIP_EVICT_FLUSHED);
        // A segment taken again starts with no hint.
        let index = b.index();
        b.finish();
        drop(b);
        // SAFETY: the builder is gone and no reader was ever given the segment.
        let seg = unsafe { MemorySegment::from_index(arena.clone(), index) };
        let b = BufferBuilder::new(seg, 1);
        assert_eq!(hint(&b), 0);
    }

    /// `src`'s offset whose bytes sit `distance` below `dst` modulo 4 KiB.
    fn offset_for(src: &[u8], dst: usize, distance: usize) -> usize {
        (dst.wrapping_sub(distance).wrapping_sub(src.as_ptr() as usize)) % 4096
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn large_copies_arrive_whole_at_every_alignment_and_leave_their_neighbours_alone() {
        let src: Vec<u8> = (0..40_000u32).map(|i| (i * 13 + i / 509) as u8).collect();
        for streaming in [false, true] {
            for len in [LARGE_COPY - 1, LARGE_COPY, LARGE_COPY + 1, 10_007, 32_768] {
                for at in 0..17 {
                    for from in [0usize, 1, 15] {
                        let mut out = vec![0xa5u8; len + 64];
                        let large = copy_bytes_with(&mut out[at..at + len], &src[from..from + len], streaming);
                        assert_eq!(large, len >= LARGE_COPY, "len {len}");
                        assert_eq!(&out[at..at + len], &src[from..from + len], "len {len} at {at} from {from}");
                        assert!(out[..at].iter().chain(&out[at + len..]).all(|&b| b == 0xa5), "len {len} at {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn copies_a_few_bytes_above_their_source_go_in_pieces_and_arrive_whole() {
        let src: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for distance in [0, 4, 8, 63, 64, 4095] {
            let mut v: Vec<u8> = Vec::with_capacity(12_000);
            v.push(0xee);
            let dst = v.as_ptr() as usize + v.len();
            let o = offset_for(&src, dst, distance);
            let part = &src[o..o + 10_000];
            assert_eq!(needs_pieces(dst, part), (1..64).contains(&distance), "distance {distance}");
            extend_bytes(&mut v, part);
            assert_eq!(v.len(), 10_001);
            assert_eq!(&v[1..], part, "distance {distance}");

            let mut out = vec![0u8; 12_000];
            let at = 100;
            let o = offset_for(&src, out.as_ptr() as usize + at, distance);
            copy_bytes(&mut out[at..at + 10_000], &src[o..o + 10_000]);
            assert_eq!(&out[at..at + 10_000], &src[o..o + 10_000], "distance {distance}");
        }
        // Short copies never go in pieces.
        assert!(!needs_pieces(src.as_ptr() as usize + 8, &src[..COPY_PIECE]));
    }
}
