//! The stream peers seen from the producer: framed buffers, Flink's credits, one writer per stream or channel (a module of the throughput bench).

use super::*;

/// A writer's open buffer per channel: `HDR` bytes for the frame header, then up to
/// `SEGMENT` bytes of `[u32 len][payload]` records (a record may continue in the
/// channel's next buffer). Allocated on the channel's first record.
pub(crate) struct Buffers {
    pub(crate) open: Vec<Vec<u8>>,
    /// Channels written since their last flush (`is_dirty` marks them).
    pub(crate) dirty: Vec<u32>,
    pub(crate) is_dirty: Vec<bool>,
}

impl Buffers {
    pub(crate) fn new(channels: u32) -> Self {
        Self {
            open: (0..channels).map(|_| Vec::new()).collect(),
            dirty: Vec::new(),
            is_dirty: vec![false; channels as usize],
        }
    }

    /// Marks channel `c` written, allocating its buffer if it has none.
    #[inline]
    pub(crate) fn touch(&mut self, c: usize) {
        if !self.is_dirty[c] {
            self.is_dirty[c] = true;
            self.dirty.push(c as u32);
            if self.open[c].len() < HDR {
                self.open[c] = empty_buffer();
            }
        }
    }

    pub(crate) fn has_data(&self, c: usize) -> bool {
        self.open[c].len() > HDR
    }
}

/// A buffer with room for a header and a segment's worth of records, holding none.
pub(crate) fn empty_buffer() -> Vec<u8> {
    let mut b = Vec::with_capacity(HDR + SEGMENT);
    b.resize(HDR, 0);
    b
}

/// Writes the frame header into `buf`'s first `HDR` bytes.
pub(crate) fn set_header(buf: &mut [u8], c: usize, backlog: usize) {
    let len = (buf.len() - HDR) as u32;
    buf[..4].copy_from_slice(&(c as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&len.to_le_bytes());
    buf[8..HDR].copy_from_slice(&(backlog as u32).to_le_bytes());
}

/// Where a framed writer's buffers go: a stream with credits, or an in-process channel.
pub(crate) trait FrameSink {
    fn buffers(&mut self) -> &mut Buffers;

    /// Channel `c`'s open buffer is full: pass it on; leaves an empty open buffer.
    fn full(&mut self, c: usize) -> Res<()>;

    /// Sends what channel `c` holds (buffer timeout 0).
    fn flush_channel(&mut self, c: usize) -> Res<()>;

    /// Sends what every channel holds (the flusher's tick).
    fn flush_all(&mut self) -> Res<()>;

    /// Sends everything and ends the stream.
    fn finish(self) -> Res<()>;

    /// Appends `[u32 len][payload]` to channel `c`'s stream.
    #[inline]
    fn put_record(&mut self, c: usize, payload: &[u8]) -> Res<()> {
        let b = self.buffers();
        b.touch(c);
        let buf = &mut b.open[c];
        let prefix = (payload.len() as u32).to_le_bytes();
        if HDR + SEGMENT - buf.len() >= 4 + payload.len() {
            buf.extend_from_slice(&prefix);
            buf.extend_from_slice(payload);
            if buf.len() == HDR + SEGMENT {
                self.full(c)?;
            }
            return Ok(());
        }
        // The record continues in the channel's next buffer(s).
        self.put_spanning(c, &prefix)?;
        self.put_spanning(c, payload)
    }

    fn put_spanning(&mut self, c: usize, mut data: &[u8]) -> Res<()> {
        while !data.is_empty() {
            let buf = &mut self.buffers().open[c];
            let n = (HDR + SEGMENT - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if buf.len() == HDR + SEGMENT {
                self.full(c)?;
            }
        }
        Ok(())
    }
}

/// Channel `c`'s side of the credit protocol at the writer.
#[derive(Default)]
pub(crate) struct SendState {
    /// Frames the consumer has room for.
    pub(crate) credit: u32,
    /// Full buffers waiting for credit, oldest first (at most `MAX_QUEUED`).
    pub(crate) queued: std::collections::VecDeque<Vec<u8>>,
    /// The open buffer is to go out as soon as there is credit (a timeout flush): until
    /// then records still join it.
    pub(crate) flush: bool,
}

/// A writer's stream with Flink's credit protocol (its Netty path: one connection per
/// writer, a frame per buffer; the consumer's AddCredit messages come back on the same
/// socket, or on a second pipe).
///
/// A buffer goes out as one frame `[u32 channel][u32 bytes][u32 backlog][bytes]` only
/// while its channel has credit (one per frame); `backlog` is the number of buffers queued
/// behind it on that channel. Without credit, full buffers queue per channel, at most
/// `MAX_QUEUED`, beyond which the writer blocks until credit comes; a flushed partial
/// buffer waits for credit while records still join it. Credit messages are read without
/// blocking the send path: when the channel at hand has none, every `POLL_EVERY_FRAMES`
/// completed buffers while any wait, and at every timeout flush; blocking only when a
/// channel's queue is full and at the end. Small frames gather in a 64 KiB send buffer;
/// full ones go out with it in one writev, without a copy.
pub(crate) struct CreditedOut {
    pub(crate) bufs: Buffers,
    pub(crate) out: File,
    /// Where credits come from: a second fd of the socket, or the credit pipe.
    pub(crate) credits_in: File,
    pub(crate) socket: bool,
    pub(crate) chans: Vec<SendState>,
    /// Empty buffers to reuse.
    pub(crate) free: Vec<Vec<u8>>,
    pub(crate) gather: Vec<u8>,
    /// Full buffers queued on all channels.
    pub(crate) queued: usize,
    pub(crate) frames_since_poll: u32,
    pub(crate) inbox: Vec<u8>,
    /// A credit message split between reads.
    pub(crate) carry: Vec<u8>,
    /// Channels that got credit in the last read (reused).
    pub(crate) credited: Vec<u32>,
    /// Time spent blocked for credit (a full queue).
    pub(crate) blocked: Duration,
}

impl CreditedOut {
    /// Opens the stream with the writer's number.
    pub(crate) fn new(mut out: File, credits_in: File, socket: bool, w: u32, channels: u32) -> Res<Self> {
        out.write_all(&w.to_le_bytes())?;
        if !socket {
            set_nonblocking(credits_in.as_raw_fd())?;
        }
        Ok(Self {
            bufs: Buffers::new(channels),
            out,
            credits_in,
            socket,
            chans: (0..channels).map(|_| SendState::default()).collect(),
            free: Vec::new(),
            gather: Vec::with_capacity(GATHER),
            queued: 0,
            frames_since_poll: 0,
            inbox: vec![0; 16 * 1024],
            carry: Vec::with_capacity(CREDIT_MSG),
            credited: Vec::new(),
            blocked: Duration::ZERO,
        })
    }

    /// One read of credit messages without blocking: `Ok(None)` when there are none.
    pub(crate) fn read_credits(&mut self) -> Res<Option<usize>> {
        let fd = self.credits_in.as_raw_fd();
        let (ptr, len) = (self.inbox.as_mut_ptr().cast::<libc::c_void>(), self.inbox.len());
        loop {
            let n = if self.socket {
                // SAFETY: `ptr` is valid for `len` writable bytes (our inbox); MSG_DONTWAIT
                // makes this one call non-blocking while the socket stays blocking for
                // the writes.
                unsafe { libc::recv(fd, ptr, len, libc::MSG_DONTWAIT) }
            } else {
                // SAFETY: as above; the credit pipe's read end is non-blocking.
                unsafe { libc::read(fd, ptr, len) }
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => return Ok(None),
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(format!("reading credits: {e}").into()),
            }
        }
    }

    /// Reads the credit messages that arrived (without blocking) and sends what they
    /// allow.
    pub(crate) fn poll_credits(&mut self) -> Res<()> {
        self.frames_since_poll = 0;
        // At most 16 reads: what arrives meanwhile waits for the next poll.
        for _ in 0..16 {
            let Some(n) = self.read_credits()? else { break };
            if n == 0 {
                return Err("the consumer closed the credit stream".into());
            }
            let mut data = &self.inbox[..n];
            let mut msg = [0u8; CREDIT_MSG];
            loop {
                if !self.carry.is_empty() || data.len() < CREDIT_MSG {
                    let k = (CREDIT_MSG - self.carry.len()).min(data.len());
                    self.carry.extend_from_slice(&data[..k]);
                    data = &data[k..];
                    if self.carry.len() < CREDIT_MSG {
                        break;
                    }
                    msg.copy_from_slice(&self.carry);
                    self.carry.clear();
                } else {
                    msg.copy_from_slice(&data[..CREDIT_MSG]);
                    data = &data[CREDIT_MSG..];
                }
                let c = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
                let k = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
                let st = self.chans.get_mut(c).ok_or_else(|| format!("credit for channel {c}"))?;
                // A channel holds at most its exclusive buffers and all floating ones.
                if k == 0 || st.credit + k > EXCLUSIVE_CREDITS + FLOATING_PER_WRITER {
                    return Err(format!("bad credit: {k} more for channel {c}, which has {}", st.credit).into());
                }
                if st.credit == 0 {
                    self.credited.push(c as u32);
                }
                st.credit += k;
            }
            if n < self.inbox.len() {
                break;
            }
        }
        for k in 0..self.credited.len() {
            self.try_send(self.credited[k] as usize)?;
        }
        self.credited.clear();
        self.send_gathered()
    }

    /// Sends channel `c`'s queued buffers, then its flushed open buffer, while it has
    /// credit.
    pub(crate) fn try_send(&mut self, c: usize) -> Res<()> {
        // Bounded: each turn spends a credit on a buffer, or ends.
        loop {
            let st = &mut self.chans[c];
            if st.credit == 0 {
                return Ok(());
            }
            if let Some(mut buf) = st.queued.pop_front() {
                let behind = st.queued.len() + usize::from(st.flush && self.bufs.has_data(c));
                st.credit -= 1;
                self.queued -= 1;
                set_header(&mut buf, c, behind);
                send_frame(&mut self.out, &mut self.gather, &buf)?;
                buf.truncate(HDR);
                self.free.push(buf);
            } else if st.flush && self.bufs.has_data(c) {
                st.credit -= 1;
                st.flush = false;
                let buf = &mut self.bufs.open[c];
                set_header(buf, c, 0);
                send_frame(&mut self.out, &mut self.gather, buf)?;
                buf.truncate(HDR);
            } else {
                return Ok(());
            }
        }
    }

    pub(crate) fn send_gathered(&mut self) -> Res<()> {
        if !self.gather.is_empty() {
            self.out.write_all(&self.gather)?;
            self.gather.clear();
        }
        Ok(())
    }

    /// Whether channel `c` holds data to send.
    pub(crate) fn pending(&self, c: usize) -> bool {
        !self.chans[c].queued.is_empty() || (self.chans[c].flush && self.bufs.has_data(c))
    }

    /// Blocks until credit messages arrive (bounded by `deadline`), then reads them.
    pub(crate) fn wait_credits(&mut self, deadline: Instant, what: &dyn Fn() -> String) -> Res<()> {
        self.send_gathered()?;
        if Instant::now() > deadline {
            return Err(format!("no credit within {WAIT_TIMEOUT:?} ({})", what()).into());
        }
        wait_readable(self.credits_in.as_raw_fd(), POLL_SLICE)?;
        self.poll_credits()
    }
}

/// Queues `frame` in the send buffer, or, if it is large, writes it with what is queued
/// before it in one writev.
pub(crate) fn send_frame(out: &mut File, gather: &mut Vec<u8>, frame: &[u8]) -> Res<()> {
    if frame.len() >= GATHER / 4 {
        write_all_vectored(out, &mut [IoSlice::new(gather), IoSlice::new(frame)])?;
        gather.clear();
    } else {
        if gather.len() + frame.len() > GATHER {
            out.write_all(gather)?;
            gather.clear();
        }
        gather.extend_from_slice(frame);
    }
    Ok(())
}

impl FrameSink for CreditedOut {
    fn buffers(&mut self) -> &mut Buffers {
        &mut self.bufs
    }

    fn full(&mut self, c: usize) -> Res<()> {
        if self.chans[c].queued.len() >= MAX_QUEUED {
            // Back-pressured: the channel's queue is full.
            let t0 = Instant::now();
            let deadline = t0 + WAIT_TIMEOUT;
            while self.chans[c].queued.len() >= MAX_QUEUED {
                self.wait_credits(deadline, &|| format!("channel {c} has {MAX_QUEUED} buffers queued"))?;
            }
            self.blocked += t0.elapsed();
        }
        let fresh = self.free.pop().unwrap_or_else(empty_buffer);
        let full = std::mem::replace(&mut self.bufs.open[c], fresh);
        let st = &mut self.chans[c];
        st.queued.push_back(full);
        // The flushed data went out with the full buffer.
        st.flush = false;
        self.queued += 1;
        self.try_send(c)?;
        if self.queued > 0 {
            self.frames_since_poll += 1;
            if self.chans[c].credit == 0 || self.frames_since_poll >= POLL_EVERY_FRAMES {
                self.poll_credits()?;
            }
        }
        Ok(())
    }

    fn flush_channel(&mut self, c: usize) -> Res<()> {
        if self.bufs.has_data(c) {
            self.chans[c].flush = true;
            if self.chans[c].credit == 0 {
                self.poll_credits()?;
            }
            self.try_send(c)?;
        }
        self.send_gathered()
    }

    fn flush_all(&mut self) -> Res<()> {
        let mut starved = false;
        for k in 0..self.bufs.dirty.len() {
            let c = self.bufs.dirty[k] as usize;
            self.bufs.is_dirty[c] = false;
            if self.bufs.has_data(c) {
                self.chans[c].flush = true;
                starved |= self.chans[c].credit == 0;
            }
        }
        if starved || self.queued > 0 {
            self.poll_credits()?;
        }
        for k in 0..self.bufs.dirty.len() {
            self.try_send(self.bufs.dirty[k] as usize)?;
        }
        self.bufs.dirty.clear();
        self.send_gathered()
    }

    fn finish(mut self) -> Res<()> {
        self.flush_all()?;
        let deadline = Instant::now() + WAIT_TIMEOUT;
        // Bounded by the deadline: each turn waits at most a poll slice.
        while let Some(c) = (0..self.chans.len()).find(|&c| self.pending(c)) {
            self.wait_credits(deadline, &|| format!("channel {c} still holds data at the end"))?;
        }
        self.send_gathered()?;
        if std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some() {
            eprintln!("    writer blocked for credit {:?}", self.blocked);
        }
        // End the data stream, then read the credit stream to its end (the consumer closes
        // it when it has read everything): closing a TCP socket with unread credits in it
        // would reset the connection under data the consumer has not read yet.
        let Self { out, credits_in, socket, mut inbox, .. } = self;
        if socket {
            // SAFETY: shutdown on a socket fd we own; it takes no pointers.
            if unsafe { libc::shutdown(out.as_raw_fd(), libc::SHUT_WR) } != 0 {
                return Err(format!("shutdown: {}", std::io::Error::last_os_error()).into());
            }
        }
        drop(out);
        let until = Instant::now() + WAIT_TIMEOUT;
        loop {
            if Instant::now() > until {
                return Err("the consumer did not close the credit stream".into());
            }
            if !wait_readable(credits_in.as_raw_fd(), POLL_SLICE)? {
                continue;
            }
            match (&credits_in).read(&mut inbox) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The in-process peer's writer: each buffer, framed as on a stream (backlog 0), goes
/// through a bounded crossbeam channel (2C + 8 buffers in flight, the credit window of
/// the stream peers); empty buffers come back on a second channel for reuse. A full buffer waits
/// for room (blocking send, bounded); a flushed partial one does not: while the channel is
/// full, records still join it and it goes out at the next chance (as a flushed buffer
/// waits for credit on the streams).
pub(crate) struct ChannelOut {
    pub(crate) bufs: Buffers,
    pub(crate) tx: crossbeam_channel::Sender<Vec<u8>>,
    pub(crate) back: crossbeam_channel::Receiver<Vec<u8>>,
    /// Channels whose flushed buffer found the channel full (`is_waiting` marks them).
    pub(crate) waiting: Vec<u32>,
    pub(crate) is_waiting: Vec<bool>,
}

impl ChannelOut {
    pub(crate) fn new(
        tx: crossbeam_channel::Sender<Vec<u8>>,
        back: crossbeam_channel::Receiver<Vec<u8>>,
        channels: u32,
    ) -> Self {
        Self { bufs: Buffers::new(channels), tx, back, waiting: Vec::new(), is_waiting: vec![false; channels as usize] }
    }

    /// Sends channel `c`'s open buffer; without `block` only if the channel has room
    /// (false: the buffer stays open).
    pub(crate) fn send_open(&mut self, c: usize, block: bool) -> Res<bool> {
        let mut buf = std::mem::take(&mut self.bufs.open[c]);
        set_header(&mut buf, c, 0);
        if block {
            self.tx.send_timeout(buf, WAIT_TIMEOUT).map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => format!("no room within {WAIT_TIMEOUT:?}"),
                crossbeam_channel::SendTimeoutError::Disconnected(_) => "the consumer is gone".to_string(),
            })?;
        } else {
            match self.tx.try_send(buf) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(buf)) => {
                    self.bufs.open[c] = buf;
                    return Ok(false);
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err("the consumer is gone".into()),
            }
        }
        self.bufs.open[c] = match self.back.try_recv() {
            Ok(mut b) => {
                b.truncate(HDR);
                b
            }
            Err(_) => empty_buffer(),
        };
        Ok(true)
    }

    /// Flushes channel `c` if the channel has room; else `c` waits.
    pub(crate) fn flush_or_wait(&mut self, c: usize) -> Res<()> {
        if self.bufs.has_data(c) && !self.send_open(c, false)? && !self.is_waiting[c] {
            self.is_waiting[c] = true;
            self.waiting.push(c as u32);
        }
        Ok(())
    }

    /// Sends the waiting flushed buffers while the channel has room.
    pub(crate) fn retry_waiting(&mut self) -> Res<()> {
        // Bounded: each turn removes a channel, or ends.
        while let Some(&c) = self.waiting.last() {
            let c = c as usize;
            if self.bufs.has_data(c) && !self.send_open(c, false)? {
                break;
            }
            self.is_waiting[c] = false;
            self.waiting.pop();
        }
        Ok(())
    }
}

impl FrameSink for ChannelOut {
    fn buffers(&mut self) -> &mut Buffers {
        &mut self.bufs
    }

    fn full(&mut self, c: usize) -> Res<()> {
        self.send_open(c, true)?;
        if !self.waiting.is_empty() {
            self.retry_waiting()?;
        }
        Ok(())
    }

    fn flush_channel(&mut self, c: usize) -> Res<()> {
        if !self.waiting.is_empty() {
            self.retry_waiting()?;
        }
        self.flush_or_wait(c)
    }

    fn flush_all(&mut self) -> Res<()> {
        self.retry_waiting()?;
        for k in 0..self.bufs.dirty.len() {
            let c = self.bufs.dirty[k] as usize;
            self.bufs.is_dirty[c] = false;
            self.flush_or_wait(c)?;
        }
        self.bufs.dirty.clear();
        Ok(())
    }

    fn finish(mut self) -> Res<()> {
        for c in 0..self.bufs.open.len() {
            if self.bufs.has_data(c) {
                self.send_open(c, true)?;
            }
        }
        Ok(())
        // Dropping `tx` ends the stream.
    }
}

/// writev until every byte of `bufs` is written.
pub(crate) fn write_all_vectored(out: &mut File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One framed writer (stream peers, in-process channel): the case's records, framed per
/// channel, flushed per the buffer timeout.
pub(crate) fn framed_writer(mut out: impl FrameSink, case: Case, w: u32, signals: &Signals) -> Res<u64> {
    let timeout = BufferTimeout::from_millis(case.timeout_ms)?;
    let flusher = match timeout {
        BufferTimeout::Interval(d) => Some(OutputFlusher::start(d)?),
        _ => None,
    };
    let every_record = timeout == BufferTimeout::EveryRecord;
    let channels = case.shape.channels;
    let mut picker = Picker::new(case.shape.pattern, w, channels);
    let mut rec = base_record(case.size);
    signals.ready(Ok(()));
    if !wait_start(&signals.start) {
        return Err("no go".into());
    }
    let mut i = 0u64;
    // Relaxed: a stop request; a few more records after it are fine.
    while !signals.stop.load(Ordering::Relaxed) {
        stamp(&mut rec, stamp_of(w, i));
        match picker.next() {
            Some(c) => {
                out.put_record(c as usize, &rec)?;
                if every_record {
                    out.flush_channel(c as usize)?;
                }
            }
            None => {
                for c in 0..channels as usize {
                    out.put_record(c, &rec)?;
                }
                if every_record {
                    out.flush_all()?;
                }
            }
        }
        if flusher.as_ref().is_some_and(|f| f.take()) {
            out.flush_all()?;
        }
        i += 1;
    }
    out.finish()?;
    Ok(i)
}
