//! The deserializer: reads records of one channel in place, reassembling only those that
//! span segments.

use super::{DEFAULT_MAX_RECORD, LEN_PREFIX};
use crate::buffer::BufferConsumer;
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
    InPlace { offset: u32, len: u32 },
    Spanned,
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
    last: Last,
    max_record: usize,
    /// Records read.
    pub records: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// Records that had to be reassembled.
    pub spanned: u64,
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
            last: Last::None,
            max_record: DEFAULT_MAX_RECORD,
            records: 0,
            bytes: 0,
            spanned: 0,
        }
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
                Ok(Some((c.index(), c.read_position(), pos)))
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
        if self.span_len.is_some() || matches!(self.last, Last::Spanned) {
            return false;
        }
        let Some(c) = self.current.as_mut() else {
            return false;
        };
        let known = c.peek_known();
        if known.len() < LEN_PREFIX {
            return false;
        }
        let len = u32::from_le_bytes(known[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        if len > self.max_record || known.len() - LEN_PREFIX < len {
            return false;
        }
        let read_pos = c.read_position();
        c.consume((LEN_PREFIX + len) as u32);
        self.last = Last::InPlace { offset: read_pos + LEN_PREFIX as u32, len: len as u32 };
        self.records += 1;
        self.bytes += len as u64;
        true
    }

    /// Hands every whole record already published in the current segment (at most `max`)
    /// to `f`, in place, with one load of the writer's position for the lot: the batch
    /// path for consumers that want throughput. Returns how many; 0 when the next thing is
    /// not a whole record in the current segment (then use [`poll`](Self::poll)).
    ///
    /// # Errors
    /// A length above the limit (protocol violation), or `f`'s error (records before it
    /// count as read).
    pub fn drain_whole(&mut self, max: usize, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<usize> {
        if self.span_len.is_some() {
            return Ok(0);
        }
        if matches!(self.last, Last::Spanned) {
            self.span.clear();
        }
        self.last = Last::None;
        let max_record = self.max_record;
        let place = self.channel.id();
        let Some(c) = self.current.as_mut() else {
            return Ok(0);
        };
        let (bytes, _) = c.peek_final()?;
        let (mut off, mut n, mut payload) = (0usize, 0usize, 0u64);
        let mut result = Ok(());
        while n < max && bytes.len() - off >= LEN_PREFIX {
            let len = u32::from_le_bytes(bytes[off..off + LEN_PREFIX].try_into().expect("4 bytes")) as usize;
            if len > max_record {
                result = Err(Error::ProtocolViolation {
                    place: format!("channel {place}"),
                    detail: format!("record length {len} above the limit {max_record}"),
                });
                break;
            }
            if bytes.len() - off - LEN_PREFIX < len {
                break;
            }
            let rec = &bytes[off + LEN_PREFIX..off + LEN_PREFIX + len];
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

    /// Advances to the next record or event.
    ///
    /// # Errors
    /// Protocol violations (bad lengths, an event inside a spanning record, malformed
    /// descriptors), a failed producer.
    pub fn poll(&mut self) -> Result<Step> {
        if matches!(self.last, Last::Spanned) {
            self.span.clear();
        }
        self.last = Last::None;
        loop {
            if let Some(c) = self.current.as_mut() {
                if let Some(need) = self.span_len {
                    let bytes = c.peek()?;
                    let take = (need - self.span.len()).min(bytes.len());
                    self.span.extend_from_slice(&bytes[..take]);
                    c.consume(take as u32);
                    if self.span.len() == need {
                        self.span_len = None;
                        self.last = Last::Spanned;
                        self.records += 1;
                        self.bytes += need as u64;
                        self.spanned += 1;
                        return Ok(Step::Record);
                    }
                    if c.check_finished()? {
                        self.retire_current();
                        continue;
                    }
                    if self.next_queued_behind_current()? {
                        continue;
                    }
                    return Ok(Step::Empty);
                }
                let read_pos = c.read_position();
                let seg = c.index();
                // Bytes known published from the last load come first: while they hold a
                // whole record, the writer's position is not loaded again.
                let known = c.peek_known();
                let whole = known.len() >= LEN_PREFIX
                    && known.len() - LEN_PREFIX
                        >= u32::from_le_bytes(known[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
                let (bytes, fin) = if whole { (known, false) } else { c.peek_final()? };
                let avail = bytes.len();
                if avail >= LEN_PREFIX {
                    let len = u32::from_le_bytes(bytes[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
                    if len > self.max_record {
                        let max = self.max_record;
                        return Err(self.violation(format!("record length {len} above the limit {max}")));
                    }
                    if avail - LEN_PREFIX >= len {
                        c.consume((LEN_PREFIX + len) as u32);
                        self.last = Last::InPlace { offset: read_pos + LEN_PREFIX as u32, len: len as u32 };
                        self.records += 1;
                        self.bytes += len as u64;
                        return Ok(Step::Record);
                    }
                    if fin {
                        // The record continues in the next segment of this channel.
                        self.span.clear();
                        // At most 8 MiB up front: the length is the peer's word (checked
                        // against `max_record` only); the buffer grows as bytes arrive.
                        self.span.reserve(len.min(8 << 20));
                        self.span.extend_from_slice(&bytes[LEN_PREFIX..]);
                        c.consume(avail as u32);
                        self.span_len = Some(len);
                        self.retire_current();
                        continue;
                    }
                    if self.next_queued_behind_current()? {
                        continue;
                    }
                    return Ok(Step::Empty);
                }
                if avail == 0 && fin {
                    self.retire_current();
                    continue;
                }
                if avail > 0 && fin {
                    return Err(self.violation(format!("segment {seg} ends inside a length prefix")));
                }
                if self.next_queued_behind_current()? {
                    continue;
                }
                return Ok(Step::Empty);
            }
            match self.channel.poll_data()? {
                Some(Descriptor::Buffer(s)) => {
                    self.current = Some(match self.spare.take() {
                        Some(spare) => self.channel.consumer_reusing(spare, s),
                        None => self.channel.consumer(s),
                    })
                }
                Some(d) => {
                    if self.span_len.is_some() {
                        return Err(self.violation(format!("{d:?} inside a record that spans segments")));
                    }
                    return Ok(Step::Event(d));
                }
                None => return Ok(Step::Empty),
            }
        }
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
    /// If the last poll did not return [`Step::Record`].
    pub fn record(&self) -> &[u8] {
        match self.last {
            Last::InPlace { offset, len } => {
                self.current.as_ref().expect("the record's segment is still held").bytes_at(offset, len)
            }
            Last::Spanned => &self.span,
            Last::None => panic!("no record: the last poll did not return Step::Record"),
        }
    }
}
