//! The deserializer: reads records of one channel in place, reassembling only those that
//! span segments — or, with [`RecordReader::set_spans_in_place`], reading those in place
//! too, as a chain of chunks ([`RecordChunks`]) over the segments they cover; or, with
//! [`RecordReader::set_spans_streamed`], handing them out piece by piece as their segments
//! arrive ([`RecordPiece`]), each segment released once its piece was read.

use super::frame::{self, Frame, LEN_PREFIX};
use super::DEFAULT_MAX_RECORD;
use crate::buffer::{BufferConsumer, SpareLease};
use crate::error::{Error, Result};
use crate::ring::{ChannelReader, Descriptor};

/// What [`RecordReader::poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A record is ready: take it with [`RecordReader::record`].
    Record,
    /// A non-buffer descriptor (event or barrier) came next in the data ring.
    Event(Descriptor),
    /// Nothing available now.
    Empty,
}

enum Last {
    None,
    InPlace {
        offset: u32,
        len: u32,
    },
    Spanned,
    /// A record that spans segments, read in place: the chunks in `held`, then
    /// `[offset, offset + len)` of the current segment.
    Chunked {
        offset: u32,
        len: u32,
    },
    /// A piece of a record that spans segments, streamed: `[offset, offset + len)` of the
    /// current segment holds the record's bytes `[at, at + len)` of `total`.
    Piece {
        offset: u32,
        len: u32,
        at: u32,
        total: u32,
    },
}

/// Reads the records of one channel.
pub struct RecordReader {
    channel: ChannelReader,
    current: Option<BufferConsumer>,
    /// The lease of the last segment read, kept to read the next one without allocating.
    spare: Option<crate::buffer::SpareLease>,
    /// Reassembly of a record that spans segments: bytes so far, and the payload length.
    span: Vec<u8>,
    span_len: Option<usize>,
    /// Whether spanning records are read in place ([`Self::set_spans_in_place`]).
    in_place: bool,
    /// Whether spanning records are handed out piece by piece ([`Self::set_spans_streamed`]).
    streamed: bool,
    /// The record being read spans segments and is streamed: its bytes handed out so far
    /// (in `0..span_len`).
    streaming: Option<usize>,
    /// The record being read spans segments and is read in place so far: its earlier
    /// segments, each with the chunk of the record it holds, and its bytes so far.
    held: Vec<(BufferConsumer, u32, u32)>,
    held_bytes: usize,
    /// Segments of a record read in place that may stay held while the reader waits for
    /// the rest ([`RecordReader::set_hold_budget`]).
    hold_budget: usize,
    /// Leases of released held segments, reused for the next segments (no allocation once
    /// the list has grown to the longest record's segment count).
    spares: Vec<SpareLease>,
    last: Last,
    /// Whether records are also found by their prefix word in the data, ahead of the
    /// writer's commits ([`Self::set_data_reads`]).
    data_reads: bool,
    max_record: usize,
    /// Records read.
    pub records: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// Records that had to be reassembled.
    pub spanned: u64,
    /// Records that spanned segments and were handed out in place, as chunks (never
    /// copied unless the caller asked for [`RecordReader::record_contiguous`]).
    pub spanned_in_place: u64,
    /// Records that spanned segments and were handed out piece by piece
    /// ([`RecordReader::set_spans_streamed`]; never copied).
    pub spanned_streamed: u64,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordReader({:?}, {} records)", self.channel, self.records)
    }
}

impl RecordReader {
    /// Done with the current segment: releases it (now, as dropping it would) and keeps
    /// its lease for the next one.
    fn retire_current(&mut self) {
        if let Some(c) = self.current.take() {
            self.spare = c.recycle();
        }
    }

    /// Reads records from `channel`.
    pub fn new(channel: ChannelReader) -> Self {
        Self {
            channel,
            current: None,
            spare: None,
            span: Vec::new(),
            span_len: None,
            in_place: false,
            streamed: false,
            streaming: None,
            held: Vec::new(),
            held_bytes: 0,
            hold_budget: 0,
            spares: Vec::new(),
            last: Last::None,
            data_reads: false,
            max_record: DEFAULT_MAX_RECORD,
            records: 0,
            bytes: 0,
            spanned: 0,
            spanned_in_place: 0,
            spanned_streamed: 0,
        }
    }

    /// Reads records that span segments in place (`true`) instead of reassembling them
    /// (`false`, the default). In place, the segments a record covers stay held until the
    /// next poll, and the record is read with [`record_chunks`](Self::record_chunks) (or
    /// copied once by [`record_contiguous`](Self::record_contiguous));
    /// [`record`](Self::record) then panics for such a record.
    ///
    /// When the reader would wait in the middle of such a record holding more segments
    /// than the [hold budget](Self::set_hold_budget) (its producer may need them back as
    /// credit to write the rest), the chunks so far are copied to the reassembly buffer,
    /// the segments released, and that record is reassembled ([`Self::spanned`]) — so
    /// holding segments never deadlocks a producer short of credit.
    pub fn set_spans_in_place(&mut self, on: bool) {
        self.in_place = on;
    }

    /// Hands out records that span segments piece by piece (`true`) as their segments
    /// arrive, instead of reassembling them (`false`, the default): each poll that
    /// returns [`Step::Record`] for such a record hands out its part in the next segment
    /// ([`record_piece`](Self::record_piece): the bytes, where they lie in the record and
    /// its length), and the segment is released at the next poll. Nothing is copied and
    /// nothing is held, so any record size streams within any credit: the read of a
    /// deserializer that consumes a byte stream (a checksum, a parser that keeps its own
    /// state). Records in one segment come as one piece. [`record`](Self::record),
    /// [`record_chunks`](Self::record_chunks) and
    /// [`record_contiguous`](Self::record_contiguous) panic for a piece of a spanning
    /// record. Takes precedence over [`set_spans_in_place`](Self::set_spans_in_place);
    /// changed mid-record, it applies from the next record on.
    pub fn set_spans_streamed(&mut self, on: bool) {
        self.streamed = on;
    }

    /// How many segments of a record read in place may stay held while the reader waits
    /// for the rest (default 0: any wait with a segment held reassembles the record). Safe
    /// up to 2 below the segments its producer can have in flight on the channel (the
    /// channel's credit, the producer's per-channel and pool limits): the producer then
    /// keeps one to write on. More can block the producer on segments held here.
    pub fn set_hold_budget(&mut self, segments: usize) {
        self.hold_budget = segments;
    }

    /// Releases the segments held for the last record (their leases kept for reuse).
    fn release_held(&mut self) {
        for (c, _, _) in self.held.drain(..) {
            if let Some(s) = c.recycle() {
                self.spares.push(s);
            }
        }
        self.held_bytes = 0;
    }

    /// Forgets the last record: its reassembly buffer and the segments held for it.
    fn release_last(&mut self) {
        match self.last {
            Last::Spanned => self.span.clear(),
            Last::Chunked { .. } => self.release_held(),
            Last::None | Last::InPlace { .. } | Last::Piece { .. } => {}
        }
        self.last = Last::None;
    }

    /// Copies a record read in place so far (held chunks, then `tail` of the current
    /// segment) into the reassembly buffer and releases the held segments.
    fn spill_held(&mut self, tail: Option<(u32, u32)>) {
        self.span.clear();
        self.span.reserve(self.span_len.unwrap_or(self.held_bytes).min(8 << 20));
        for (c, off, len) in &self.held {
            crate::buffer::extend_bytes(&mut self.span, c.bytes_at(*off, *len));
        }
        if let (Some((off, len)), Some(c)) = (tail, self.current.as_ref()) {
            crate::buffer::extend_bytes(&mut self.span, c.bytes_at(off, len));
        }
        self.release_held();
    }

    /// Finds records by their prefix word in the data too (`true`), not only below the
    /// writer's committed position (`false`, the default): a record is read as soon as its
    /// writer wrote its prefix (a Release store after the payload,
    /// [`BufferConsumer::record_at_read`]), in one cache-line transfer, before the commit
    /// that makes it visible to everyone else. For a reader that spins on its producer
    /// (a gate in spin mode): one that reads while its producer streams would pull the
    /// lines the producer is filling, record by record, instead of once per commit.
    pub fn set_data_reads(&mut self, on: bool) {
        self.data_reads = on;
    }

    /// Takes the record at the read position if its prefix word says it was written
    /// ([`set_data_reads`](Self::set_data_reads) on, nothing half read): `true` when it
    /// did, read as `poll` reads a whole record in place.
    #[inline]
    fn poll_data(&mut self) -> bool {
        if !self.data_reads || self.span_len.is_some() {
            return false;
        }
        let max = self.max_record;
        let Some(c) = self.current.as_mut() else {
            return false;
        };
        let read_pos = c.read_position();
        let Some(len) = c.record_at_read().map(<[u8]>::len) else {
            return false;
        };
        if len > max {
            // The position path reports it.
            return false;
        }
        c.consume(frame::framed_len(len) as u32);
        self.last = Last::InPlace { offset: read_pos + LEN_PREFIX as u32, len: len as u32 };
        self.records += 1;
        self.bytes += len as u64;
        true
    }

    /// For a reader spinning on this channel: whether the prefix word at the read position
    /// says a record was written (one load of the data's line), `None` when the word cannot
    /// tell (data reads off, no segment, a record half read, an unaligned read position):
    /// then use [`has_input`](Self::has_input).
    #[inline]
    pub fn data_input(&self) -> Option<bool> {
        if !self.data_reads || self.span_len.is_some() {
            return None;
        }
        self.current.as_ref()?.record_written_at_read()
    }

    /// Sets the largest payload accepted; a longer length prefix is a protocol violation.
    pub fn set_max_record(&mut self, max: usize) {
        self.max_record = max;
    }

    /// The channel.
    pub fn channel(&self) -> &ChannelReader {
        &self.channel
    }

    /// The channel, mutably (for priority events).
    pub fn channel_mut(&mut self) -> &mut ChannelReader {
        &mut self.channel
    }

    /// The segment being read and the bytes of it not read yet (what an unaligned barrier
    /// overtakes in the current segment).
    ///
    /// # Errors
    /// Protocol violations in the segment's position.
    pub fn unread_in_current(&self) -> Result<Option<(u32, u32, u32)>> {
        match &self.current {
            Some(c) => {
                let (pos, _) = c.writer_position()?;
                // Below the read position while reading ahead of the commits: nothing unread.
                Ok(Some((c.index(), c.read_position(), pos.max(c.read_position()))))
            }
            None => Ok(None),
        }
    }

    /// Whether a record is half reassembled.
    pub fn in_span(&self) -> bool {
        self.span_len.is_some()
    }

    fn violation(&self, detail: String) -> Error {
        Error::ProtocolViolation { place: format!("channel {}", self.channel.id()), detail }
    }

    /// The common case of [`poll`](Self::poll), cheap enough to run per record: the next
    /// record lies whole in the bytes of the current segment known to be published. On
    /// `true` it is read exactly as `poll` would read it; on `false` nothing changed and
    /// the caller uses `poll`.
    #[inline]
    pub fn poll_known(&mut self) -> bool {
        if self.span_len.is_some() || matches!(self.last, Last::Spanned | Last::Chunked { .. }) {
            return false;
        }
        let Some(c) = self.current.as_mut() else {
            return false;
        };
        let Frame::Whole { payload, framed } = frame::decode(c.peek_known()) else {
            return self.poll_data();
        };
        let len = payload.len();
        if len > self.max_record {
            return false;
        }
        let read_pos = c.read_position();
        c.consume(framed as u32);
        self.last = Last::InPlace { offset: read_pos + LEN_PREFIX as u32, len: len as u32 };
        self.records += 1;
        self.bytes += len as u64;
        true
    }

    /// Hands every whole record already published in the current segment (at most `max`)
    /// to `f`, in place, with one load of the writer's position for the lot: the batch
    /// path for consumers that want throughput. Returns how many; 0 when the next thing is
    /// not a whole record in the current segment (then use [`poll`](Self::poll)). `f`
    /// inlines into the loop (generic, not a trait object).
    ///
    /// # Errors
    /// A length above the limit (protocol violation), or `f`'s error (records before it
    /// count as read).
    pub fn drain_whole<F>(&mut self, max: usize, f: &mut F) -> Result<usize>
    where
        F: FnMut(&[u8]) -> Result<()> + ?Sized,
    {
        // Its own loop, not `drain_batch`'s iterator: through the iterator a caller's
        // closure kept its state in memory (emit bench read-back 2.26 -> 2.6 ns per record).
        if self.span_len.is_some() {
            return Ok(0);
        }
        self.release_last();
        let max_record = self.max_record;
        let place = self.channel.id();
        let Some(c) = self.current.as_mut() else {
            return Ok(0);
        };
        let (bytes, _) = c.peek_final()?;
        let (mut off, mut n, mut payload) = (0usize, 0usize, 0u64);
        let mut result = Ok(());
        while n < max {
            let rest = &bytes[off..];
            let Some(len) = frame::peek_len(rest) else {
                break;
            };
            if len > max_record {
                result = Err(too_long_error(place, len, max_record));
                break;
            }
            // `len` is at most `max_record`: no overflow.
            let Some(rec) = rest.get(LEN_PREFIX..LEN_PREFIX + len) else {
                break;
            };
            off += LEN_PREFIX + len;
            n += 1;
            payload += len as u64;
            if let Err(e) = f(rec) {
                result = Err(e);
                break;
            }
        }
        c.consume(off as u32);
        self.records += n as u64;
        self.bytes += payload;
        result.map(|()| n)
    }

    /// [`drain_whole`](Self::drain_whole) with the loop in the caller's hands: `f` gets the
    /// whole records already published in the current segment (at most `max`) as an
    /// iterator, so its per-record state stays in locals for the batch. Every record the
    /// iterator hands out counts as read (the ones `f` leaves do not). Returns how many.
    ///
    /// A record counts as read when the iterator yields it, not when `f` uses it: adapters
    /// that pull one past what they pass on (`take_while`, `peekable().peek()`, `zip` with
    /// a shorter iterator second) silently drop that record. Stop with
    /// [`WholeRecords::next_if`] or [`WholeRecords::peek`] instead.
    ///
    /// # Errors
    /// A length above the limit (protocol violation, found when the iterator reaches it:
    /// it ends there), or `f`'s error.
    #[inline]
    pub fn drain_batch<F>(&mut self, max: usize, f: F) -> Result<usize>
    where
        F: FnOnce(&mut WholeRecords<'_>) -> Result<()>,
    {
        if self.span_len.is_some() {
            return Ok(0);
        }
        self.release_last();
        let max_record = self.max_record;
        let place = self.channel.id();
        let Some(c) = self.current.as_mut() else {
            return Ok(0);
        };
        let (bytes, _) = c.peek_final()?;
        let mut records = WholeRecords { bytes, rest: bytes, n: 0, max, max_record, too_long: None };
        let result = f(&mut records);
        let off = records.taken();
        let WholeRecords { n, too_long, .. } = records;
        c.consume(off as u32);
        self.records += n as u64;
        // Each record handed out took its prefix and its payload.
        self.bytes += (off - n * LEN_PREFIX) as u64;
        result?;
        match too_long {
            Some(len) => Err(too_long_error(place, len, max_record)),
            None => Ok(n),
        }
    }

    /// Advances to the next record or event.
    ///
    /// # Errors
    /// Protocol violations (bad lengths, an event inside a spanning record, malformed
    /// descriptors), a failed producer.
    pub fn poll(&mut self) -> Result<Step> {
        self.release_last();
        loop {
            let flow = if self.current.is_none() {
                self.poll_descriptor()?
            } else if self.streaming.is_some() {
                self.poll_span_streamed()?
            } else if self.span_len.is_some() && !self.held.is_empty() {
                self.poll_span_in_place()?
            } else if self.span_len.is_some() {
                self.poll_span_reassembling()?
            } else {
                self.poll_current()?
            };
            if let Flow::Return(step) = flow {
                return Ok(step);
            }
        }
    }

    /// No current segment: the next descriptor of the data ring.
    #[inline]
    fn poll_descriptor(&mut self) -> Result<Flow> {
        match self.channel.poll_data()? {
            Some(Descriptor::Buffer(s)) => {
                self.current = Some(match self.spare.take().or_else(|| self.spares.pop()) {
                    Some(spare) => self.channel.consumer_reusing(spare, s),
                    None => self.channel.consumer(s),
                });
                Ok(Flow::Continue)
            }
            Some(d) => {
                if self.span_len.is_some() {
                    self.release_held();
                    return Err(self.violation(format!("{d:?} inside a record that spans segments")));
                }
                Ok(Flow::Return(Step::Event(d)))
            }
            None => {
                if self.held.len() > self.hold_budget {
                    // The next segment of a record held in place is not there yet:
                    // reassemble it instead (see `set_spans_in_place`).
                    self.spill_held(None);
                }
                Ok(Flow::Return(Step::Empty))
            }
        }
    }

    /// Nothing more in the current segment for now: read on behind it if a descriptor is
    /// queued and it turned out finished, else "empty".
    #[inline]
    fn empty_or_next(&mut self) -> Result<Flow> {
        if self.next_queued_behind_current()? {
            return Ok(Flow::Continue);
        }
        Ok(Flow::Return(Step::Empty))
    }

    /// A spanning record read in place: this segment's part is a chunk, consumed once the
    /// record ends in it or the segment is finished.
    fn poll_span_in_place(&mut self) -> Result<Flow> {
        let need = self.span_len.expect("a record spans");
        let c = self.current.as_mut().expect("current segment");
        let off = c.read_position();
        let (bytes, fin) = c.peek_final()?;
        let take = (need - self.held_bytes).min(bytes.len());
        if self.held_bytes + take == need {
            c.consume(take as u32);
            self.held_bytes = need;
            self.span_len = None;
            self.last = Last::Chunked { offset: off, len: take as u32 };
            self.records += 1;
            self.bytes += need as u64;
            self.spanned_in_place += 1;
            return Ok(Flow::Return(Step::Record));
        }
        if fin && take == bytes.len() {
            c.consume(take as u32);
            self.held_bytes += take;
            if take == 0 {
                self.retire_current();
            } else {
                let c = self.current.take().expect("current segment");
                self.held.push((c, off, take as u32));
            }
            return Ok(Flow::Continue);
        }
        // The rest is not there yet.
        if self.held.len() > self.hold_budget {
            // Its producer may need the held segments back to write the rest: reassemble
            // this record instead (from the current read position on).
            self.spill_held(None);
            return Ok(Flow::Continue);
        }
        self.empty_or_next()
    }

    /// A spanning record streamed: hand out what this segment holds of it (as published
    /// so far) as its next piece; move on once the segment is read to its end.
    fn poll_span_streamed(&mut self) -> Result<Flow> {
        let (Some(need), Some(at)) = (self.span_len, self.streaming) else {
            // Not inside a streamed record (both are set together): read on normally.
            self.streaming = None;
            return Ok(Flow::Continue);
        };
        let c = self.current.as_mut().expect("current segment");
        let off = c.read_position();
        let (bytes, fin) = c.peek_final()?;
        let take = (need - at).min(bytes.len());
        if take > 0 {
            c.consume(take as u32);
            // `need` fits a u32 (the length prefix is one), so do `at` and `take`.
            self.last = Last::Piece { offset: off, len: take as u32, at: at as u32, total: need as u32 };
            if at + take == need {
                self.span_len = None;
                self.streaming = None;
                self.records += 1;
                self.bytes += need as u64;
                self.spanned_streamed += 1;
            } else {
                self.streaming = Some(at + take);
            }
            return Ok(Flow::Return(Step::Record));
        }
        if fin {
            // Read to its end (the record goes on in the next segment).
            self.retire_current();
            return Ok(Flow::Continue);
        }
        self.empty_or_next()
    }

    /// A spanning record being reassembled: append this segment's part.
    fn poll_span_reassembling(&mut self) -> Result<Flow> {
        let need = self.span_len.expect("a record spans");
        let c = self.current.as_mut().expect("current segment");
        let bytes = c.peek()?;
        let take = (need - self.span.len()).min(bytes.len());
        crate::buffer::extend_bytes(&mut self.span, &bytes[..take]);
        c.consume(take as u32);
        if self.span.len() == need {
            self.span_len = None;
            self.last = Last::Spanned;
            self.records += 1;
            self.bytes += need as u64;
            self.spanned += 1;
            return Ok(Flow::Return(Step::Record));
        }
        if c.check_finished()? {
            self.retire_current();
            return Ok(Flow::Continue);
        }
        self.empty_or_next()
    }

    /// The next record of the current segment: whole in place, or the start of one that
    /// spans into the next segment.
    #[inline]
    fn poll_current(&mut self) -> Result<Flow> {
        let c = self.current.as_mut().expect("current segment");
        let read_pos = c.read_position();
        let seg = c.index();
        // Bytes known published from the last load come first: while they hold a whole
        // record, the writer's position is not loaded again.
        let known = c.peek_known();
        let whole = matches!(frame::decode(known), Frame::Whole { .. });
        if !whole && self.poll_data() {
            return Ok(Flow::Return(Step::Record));
        }
        let c = self.current.as_mut().expect("current segment");
        let (bytes, fin) = if whole { (c.peek_known(), false) } else { c.peek_final()? };
        let avail = bytes.len();
        let Some(len) = frame::peek_len(bytes) else {
            if avail == 0 && fin {
                self.retire_current();
                return Ok(Flow::Continue);
            }
            if avail > 0 && fin {
                return Err(self.violation(format!("segment {seg} ends inside a length prefix")));
            }
            return self.empty_or_next();
        };
        if len > self.max_record {
            let max = self.max_record;
            return Err(self.violation(format!("record length {len} above the limit {max}")));
        }
        if let Frame::Whole { framed, .. } = frame::decode(bytes) {
            c.consume(framed as u32);
            self.last = Last::InPlace { offset: read_pos + LEN_PREFIX as u32, len: len as u32 };
            self.records += 1;
            self.bytes += len as u64;
            return Ok(Flow::Return(Step::Record));
        }
        if !fin {
            return self.empty_or_next();
        }
        // The record continues in the next segment of this channel. Streamed: the rest of
        // this segment is its first piece (read on at the next poll when it is empty).
        if self.streamed {
            c.consume(LEN_PREFIX as u32);
            self.span_len = Some(len);
            self.streaming = Some(0);
            return Ok(Flow::Continue);
        }
        // (In place only with payload bytes in this segment: a record whose prefix ends
        // the segment is reassembled.)
        if self.in_place && avail > LEN_PREFIX {
            c.consume(avail as u32);
            self.span_len = Some(len);
            self.held_bytes = avail - LEN_PREFIX;
            let c = self.current.take().expect("current segment");
            self.held.push((c, read_pos + LEN_PREFIX as u32, self.held_bytes as u32));
            return Ok(Flow::Continue);
        }
        self.span.clear();
        // At most 8 MiB up front: the length is the peer's word (checked against
        // `max_record` only); the buffer grows as bytes arrive.
        self.span.reserve(len.min(8 << 20));
        crate::buffer::extend_bytes(&mut self.span, &bytes[LEN_PREFIX..]);
        c.consume(avail as u32);
        self.span_len = Some(len);
        self.retire_current();
        Ok(Flow::Continue)
    }

    /// The writer finishes a segment before it publishes the next descriptor on the same
    /// channel. So when a descriptor is queued behind the current, unfinished-looking
    /// segment, the segment's position is loaded again (after the Acquire of the ring tail
    /// that saw the descriptor): finished now means "read on" (`true`); still unfinished
    /// means a peer broke the protocol — without this check the reader would wait forever.
    fn next_queued_behind_current(&mut self) -> Result<bool> {
        let Some(c) = self.current.as_ref() else {
            return Ok(false);
        };
        if !self.channel.has_next_data()? {
            return Ok(false);
        }
        let (_, fin) = c.writer_position()?;
        if fin {
            return Ok(true);
        }
        let seg = c.index();
        Err(self.violation(format!("segment {seg} is not finished although the next descriptor is already queued")))
    }

    /// Prefetches the lines of the current segment that the writer fills next
    /// ([`BufferConsumer::prefetch_unread`](crate::buffer::BufferConsumer::prefetch_unread)):
    /// for a reader that polls [`has_input`](Self::has_input) while it waits, so a new
    /// record's bytes travel together with the position that publishes them.
    #[inline]
    pub fn prefetch_unread(&self) {
        if let Some(c) = &self.current {
            c.prefetch_unread();
        }
    }

    /// Whether [`poll`](Self::poll) might find something without waiting: a descriptor is
    /// queued or the current segment has unread published bytes.
    ///
    /// # Errors
    /// Protocol violations.
    pub fn has_input(&mut self) -> Result<bool> {
        if let Some(c) = &self.current {
            let (pos, fin) = c.writer_position()?;
            if pos > c.read_position() || fin {
                return Ok(true);
            }
            return Ok(false);
        }
        self.channel.has_next()
    }

    /// The record [`poll`](Self::poll) just returned: borrowed in place from shared memory,
    /// or from the reassembly buffer when it spanned segments.
    ///
    /// # Panics
    /// If the last poll did not return [`Step::Record`], or the record spans segments and
    /// was read in place ([`set_spans_in_place`](Self::set_spans_in_place); use
    /// [`record_chunks`](Self::record_chunks) or [`record_contiguous`](Self::record_contiguous)).
    pub fn record(&self) -> &[u8] {
        match self.last {
            Last::InPlace { offset, len } => {
                self.current.as_ref().expect("the record's segment is still held").bytes_at(offset, len)
            }
            Last::Spanned => &self.span,
            Last::Chunked { .. } => {
                panic!("the record spans segments in place: use record_chunks or record_contiguous")
            }
            Last::Piece { .. } => panic!("the record spans segments and is streamed: use record_piece"),
            Last::None => panic!("no record: the last poll did not return Step::Record"),
        }
    }

    /// The record [`poll`](Self::poll) just returned as one contiguous slice: as
    /// [`record`](Self::record), except that a record read in place across segments is
    /// copied into the reassembly buffer now (once; its segments are released then).
    ///
    /// # Panics
    /// If the last poll did not return [`Step::Record`].
    pub fn record_contiguous(&mut self) -> &[u8] {
        if let Last::Chunked { offset, len } = self.last {
            self.spill_held(Some((offset, len)));
            self.last = Last::Spanned;
        }
        self.record()
    }

    /// What [`poll`](Self::poll) just returned as a piece of its record, in place: the
    /// next part of a record that spans segments and is streamed
    /// ([`set_spans_streamed`](Self::set_spans_streamed)), or a whole record as one piece
    /// (a reassembled one from the reassembly buffer).
    ///
    /// # Panics
    /// If the last poll did not return [`Step::Record`], or the record spans segments and
    /// was read in place as chunks ([`set_spans_in_place`](Self::set_spans_in_place)).
    #[inline]
    pub fn record_piece(&self) -> RecordPiece<'_> {
        if let Last::Piece { offset, len, at, total } = self.last {
            let c = self.current.as_ref().expect("the piece's segment is still held");
            return RecordPiece { bytes: c.bytes_at(offset, len), at: at as usize, len: total as usize };
        }
        let bytes = self.record();
        RecordPiece { bytes, at: 0, len: bytes.len() }
    }

    /// The record [`poll`](Self::poll) just returned as its chunks, in order, without
    /// copying: one chunk for a record in one segment (or a reassembled one), one per
    /// segment it covers for a record read in place across segments.
    ///
    /// # Panics
    /// If the last poll did not return [`Step::Record`].
    pub fn record_chunks(&self) -> RecordChunks<'_> {
        let (held, tail): (&[(BufferConsumer, u32, u32)], &[u8]) = match self.last {
            Last::Chunked { offset, len } => (
                &self.held,
                self.current.as_ref().expect("the record's last segment is still held").bytes_at(offset, len),
            ),
            _ => (&[], self.record()),
        };
        let len = held.iter().map(|(_, _, l)| *l as usize).sum::<usize>() + tail.len();
        RecordChunks { held, tail, len }
    }
}

/// How far ahead of its read position [`WholeRecords`] prefetches, once per line its
/// records reach: a batch's lines were written last by the producer's core.
const READ_AHEAD: usize = 1024;

/// The whole records of one segment that [`RecordReader::drain_batch`] hands out, in
/// place, in order: an iterator of their payloads. It ends at the first thing that is not
/// a whole published record (or after the batch's `max`).
///
/// Every record [`next`](Iterator::next) yields counts as read the moment it is yielded,
/// whether or not the caller then uses it. So an adapter that pulls one record past the
/// ones it passes on loses that record for good: [`take_while`](Iterator::take_while)
/// (and `map_while`) drop the record their predicate refuses,
/// [`peekable`](Iterator::peekable)`().peek()` takes the record it shows, and
/// [`zip`](Iterator::zip) with this iterator first drops one record when the other side
/// ends first. Use [`next_if`](Self::next_if) or [`peek`](Self::peek) to stop at a record
/// without taking it, `by_ref().take(n)` to take at most `n`, and put this iterator second
/// in a `zip`.
#[derive(Debug)]
pub struct WholeRecords<'a> {
    /// The segment's published bytes from the read position.
    bytes: &'a [u8],
    /// The part of `bytes` behind the records handed out (its tail: the bytes of the
    /// records handed out are `bytes.len() - rest.len()`).
    rest: &'a [u8],
    /// Records handed out.
    n: usize,
    max: usize,
    max_record: usize,
    /// A length above `max_record` where the iteration ended.
    too_long: Option<usize>,
}

impl<'a> Iterator for WholeRecords<'a> {
    type Item = &'a [u8];

    #[inline(always)]
    fn next(&mut self) -> Option<&'a [u8]> {
        let rec = self.front()?;
        Some(self.advance(rec))
    }
}

impl<'a> WholeRecords<'a> {
    /// The next record, without taking it: it does not count as read and the next
    /// [`next`](Iterator::next), [`next_if`](Self::next_if) or drain hands it out again.
    #[inline]
    pub fn peek(&mut self) -> Option<&'a [u8]> {
        self.front()
    }

    /// Takes the next record only if `pred` accepts it: when `pred` refuses (or there is
    /// none), it is left unread for the next call or the next drain. The way to stop a
    /// batch at a record without losing it, where [`Iterator::take_while`] would drop it.
    #[inline(always)]
    pub fn next_if(&mut self, pred: impl FnOnce(&[u8]) -> bool) -> Option<&'a [u8]> {
        let rec = self.front()?;
        if pred(rec) {
            Some(self.advance(rec))
        } else {
            None
        }
    }

    /// The next whole record, not yet taken (a length above the limit ends the batch).
    #[inline(always)]
    fn front(&mut self) -> Option<&'a [u8]> {
        if self.n >= self.max {
            return None;
        }
        let len = frame::peek_len(self.rest)?;
        if len > self.max_record {
            self.too_long = Some(len);
            self.max = 0;
            return None;
        }
        // `len` is at most `max_record`: no overflow.
        self.rest.get(LEN_PREFIX..LEN_PREFIX + len)
    }

    /// Bytes of the records handed out.
    fn taken(&self) -> usize {
        self.bytes.len() - self.rest.len()
    }

    /// Takes `rec`, the record [`front`](Self::front) just returned: it counts as read.
    #[inline(always)]
    fn advance(&mut self, rec: &'a [u8]) -> &'a [u8] {
        let before = self.rest.as_ptr() as usize;
        // The slice `front` took `rec` from: `rest` holds its prefix and `rec`.
        self.rest = self.rest.get(LEN_PREFIX + rec.len()..).unwrap_or_default();
        self.n += 1;
        // Once per line the records reach (by address: the batch starts anywhere in a
        // line): the line READ_AHEAD bytes on (at most the batch's
        // last byte: the lines past it are the writer's), which the writer's core holds;
        // asked for early, it crosses while the records before it are read.
        if (before ^ self.rest.as_ptr() as usize) >= 64 {
            let at = (self.taken() + READ_AHEAD).min(self.bytes.len() - 1);
            crate::sync::prefetch_line(self.bytes.as_ptr().wrapping_add(at));
        }
        rec
    }
}

/// A piece of a record, in place ([`RecordReader::record_piece`]): `bytes` are the record's
/// bytes `[at, at + bytes.len())` of `len`. A record's pieces come in order, the first at
/// 0, the last ending at `len`; a record in one segment is one piece.
#[derive(Debug, Clone, Copy)]
pub struct RecordPiece<'a> {
    /// The bytes of this piece.
    pub bytes: &'a [u8],
    /// Where they start in the record.
    pub at: usize,
    /// The record's whole length.
    pub len: usize,
}

impl RecordPiece<'_> {
    /// Whether this is the record's first piece.
    pub fn is_first(&self) -> bool {
        self.at == 0
    }

    /// Whether this is the record's last piece (the record is complete with it).
    pub fn is_last(&self) -> bool {
        self.at + self.bytes.len() == self.len
    }

    /// Whether the piece is the whole record.
    pub fn is_whole(&self) -> bool {
        self.at == 0 && self.bytes.len() == self.len
    }
}

/// The error for a length prefix above the limit, built off the per-record path.
#[cold]
#[inline(never)]
fn too_long_error(channel: u32, len: usize, max: usize) -> Error {
    Error::ProtocolViolation {
        place: format!("channel {channel}"),
        detail: format!("record length {len} above the limit {max}"),
    }
}

/// What one step of [`RecordReader::poll`] decided.
enum Flow {
    /// Look again (the state moved on).
    Continue,
    /// Hand this out.
    Return(Step),
}

/// A record as the chunks of the segments it covers, in order (from
/// [`RecordReader::record_chunks`]): iterate it for `&[u8]` chunks, or read it as a byte
/// stream with [`RecordChunks::cursor`]. Borrowed from shared memory; nothing is copied.
#[derive(Clone, Copy)]
pub struct RecordChunks<'a> {
    held: &'a [(BufferConsumer, u32, u32)],
    tail: &'a [u8],
    len: usize,
}

impl std::fmt::Debug for RecordChunks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordChunks({} bytes in {} chunks)", self.len, self.held.len() + 1)
    }
}

impl<'a> RecordChunks<'a> {
    /// A record that lies in one slice (one chunk).
    pub fn contiguous(bytes: &'a [u8]) -> Self {
        Self { held: &[], tail: bytes, len: bytes.len() }
    }

    /// Payload bytes in all chunks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many chunks (1 for a record that lies in one segment).
    pub fn chunk_count(&self) -> usize {
        self.held.len() + 1
    }

    /// The chunks, in order.
    pub fn iter(&self) -> ChunkIter<'a> {
        ChunkIter { held: self.held, tail: Some(self.tail) }
    }

    /// A reader over the payload that walks the chunks in place.
    pub fn cursor(&self) -> ChunkCursor<'a> {
        let mut c = ChunkCursor { held: self.held, tail: self.tail, chunk: &[], remaining: self.len };
        c.load_next();
        c
    }

    /// Appends the whole payload to `out` (the one copy, when a contiguous copy is wanted).
    pub fn copy_to_vec(&self, out: &mut Vec<u8>) {
        out.reserve(self.len);
        for c in self.iter() {
            out.extend_from_slice(c);
        }
    }
}

impl<'a> IntoIterator for RecordChunks<'a> {
    type Item = &'a [u8];
    type IntoIter = ChunkIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The chunks of a record, in order ([`RecordChunks::iter`]).
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    held: &'a [(BufferConsumer, u32, u32)],
    tail: Option<&'a [u8]>,
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if let Some(((c, off, len), rest)) = self.held.split_first() {
            self.held = rest;
            return Some(c.bytes_at(*off, *len));
        }
        self.tail.take()
    }
}

/// A `Buf`-like reader over a record's chunks ([`RecordChunks::cursor`]): the unread part
/// of the current chunk ([`chunk`](Self::chunk)), [`advance`](Self::advance), and copies
/// that cross chunk boundaries ([`copy_to_slice`](Self::copy_to_slice), [`std::io::Read`]).
#[derive(Debug, Clone)]
pub struct ChunkCursor<'a> {
    held: &'a [(BufferConsumer, u32, u32)],
    tail: &'a [u8],
    chunk: &'a [u8],
    remaining: usize,
}

impl<'a> ChunkCursor<'a> {
    /// Makes `chunk` the next non-empty chunk when the current one is used up.
    fn load_next(&mut self) {
        while self.chunk.is_empty() {
            if let Some(((c, off, len), rest)) = self.held.split_first() {
                self.chunk = c.bytes_at(*off, *len);
                self.held = rest;
            } else if !self.tail.is_empty() {
                self.chunk = std::mem::take(&mut self.tail);
            } else {
                return;
            }
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The unread bytes of the current chunk (empty only at the end).
    pub fn chunk(&self) -> &'a [u8] {
        self.chunk
    }

    /// Skips `n` bytes (at most [`remaining`](Self::remaining); more stops at the end).
    pub fn advance(&mut self, mut n: usize) {
        n = n.min(self.remaining);
        self.remaining -= n;
        while n > 0 {
            let k = n.min(self.chunk.len());
            self.chunk = &self.chunk[k..];
            n -= k;
            self.load_next();
        }
        self.load_next();
    }

    /// Fills `out` from the record, across chunks; `false` (and nothing read) when fewer
    /// than `out.len()` bytes remain.
    pub fn copy_to_slice(&mut self, out: &mut [u8]) -> bool {
        if out.len() > self.remaining {
            return false;
        }
        let mut done = 0;
        while done < out.len() {
            let k = (out.len() - done).min(self.chunk.len());
            out[done..done + k].copy_from_slice(&self.chunk[..k]);
            done += k;
            self.advance(k);
        }
        true
    }
}

impl std::io::Read for ChunkCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = buf.len().min(self.chunk.len());
        buf[..k].copy_from_slice(&self.chunk[..k]);
        self.advance(k);
        Ok(k)
    }
}
