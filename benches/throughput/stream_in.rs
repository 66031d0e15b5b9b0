//! The stream peers seen from the consumer: frame decoding per channel, Flink's credits, one connection per writer, and the poll loop (a module of the throughput bench).

use super::*;

/// One channel of a socket connection: the `[u32 len][payload]` stream of its frames,
/// decoded as it arrives.
#[derive(Default)]
pub(crate) struct ChanDec {
    /// The smallest sequence number the channel may carry next.
    pub(crate) next: u64,
    /// A length prefix split between frames.
    pub(crate) hdr: [u8; 4],
    pub(crate) hdr_have: usize,
    /// A record split between frames: its bytes so far and its length.
    pub(crate) rec: Vec<u8>,
    pub(crate) have: usize,
    pub(crate) need: Option<usize>,
}

impl ChanDec {
    /// Decodes `data`, the next bytes of this channel's stream; whole records in `data`
    /// are checked in place.
    #[inline]
    pub(crate) fn feed(&mut self, mut data: &[u8], size: usize, writer: u32, tally: &mut Tally) -> Res<()> {
        while !data.is_empty() {
            if let Some(need) = self.need {
                let n = (need - self.have).min(data.len());
                self.rec[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                self.complete(size, writer, tally);
                continue;
            }
            if self.hdr_have > 0 || data.len() < 4 {
                let n = (4 - self.hdr_have).min(data.len());
                self.hdr[self.hdr_have..self.hdr_have + n].copy_from_slice(&data[..n]);
                self.hdr_have += n;
                data = &data[n..];
                if self.hdr_have == 4 {
                    self.hdr_have = 0;
                    self.start(u32::from_le_bytes(self.hdr) as usize, size, writer, tally)?;
                }
                continue;
            }
            let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if data.len() - 4 >= len {
                tally.add(&data[4..4 + len], size, &mut self.next, writer);
                data = &data[4 + len..];
            } else {
                data = &data[4..];
                self.start(len, size, writer, tally)?;
            }
        }
        Ok(())
    }

    /// A record of `len` bytes begins whose bytes come later.
    pub(crate) fn start(&mut self, len: usize, size: usize, writer: u32, tally: &mut Tally) -> Res<()> {
        if len > shmflow::record::DEFAULT_MAX_RECORD {
            return Err(format!("record length {len} above the limit").into());
        }
        if len == 0 {
            tally.add(&[], size, &mut self.next, writer);
            return Ok(());
        }
        if self.rec.len() < len {
            self.rec.resize(len, 0);
        }
        self.have = 0;
        self.need = Some(len);
        Ok(())
    }

    /// Checks the record being reassembled if it is whole.
    #[inline]
    pub(crate) fn complete(&mut self, size: usize, writer: u32, tally: &mut Tally) {
        if self.need == Some(self.have) {
            tally.add(&self.rec[..self.have], size, &mut self.next, writer);
            self.need = None;
            self.have = 0;
        }
    }

    pub(crate) fn mid_record(&self) -> bool {
        self.need.is_some() || self.hdr_have > 0
    }
}

/// The consumer's side of the credit protocol on one connection (one writer's C
/// channels): Flink's RemoteInputChannels of one writer with their exclusive buffers, and
/// the floating buffers of the writer's gate.
///
/// Channel c owns `EXCLUSIVE_CREDITS + held[c]` buffers. A frame of c occupies one; once
/// it is processed the buffer is empty again and, as a credit, goes back to the producer,
/// unless c holds more buffers than it needs (`held[c] > backlog[c]`, Flink's "available >
/// required": 2 + backlog), in which case a floating one returns to the pool, from where
/// channels waiting for floating buffers get it. A frame that reports a backlog larger than
/// the channel's floating buffers takes floating buffers from the pool while there are
/// any (each an extra credit), else the channel waits in line for them.
pub(crate) struct Credits {
    /// Floating buffers not given to a channel.
    pub(crate) pool: u32,
    /// Floating buffers channel c holds.
    pub(crate) held: Vec<u32>,
    /// The backlog of channel c's latest frame.
    pub(crate) backlog: Vec<u32>,
    /// Credits granted to channel c (sent or due) minus its frames received: a frame on a
    /// channel without one breaks the protocol.
    pub(crate) outstanding: Vec<u32>,
    /// Channels whose backlog exceeds their floating buffers, in arrival order.
    pub(crate) waiting: std::collections::VecDeque<u32>,
    pub(crate) is_waiting: Vec<bool>,
    /// Credits to announce per channel, and the channels that have some.
    pub(crate) due: Vec<u32>,
    pub(crate) due_list: Vec<u32>,
    /// Encoded credit messages not written yet (the socket or pipe was full).
    pub(crate) out: Vec<u8>,
    pub(crate) out_at: usize,
    /// Frames received, floating grants and credit writes, for the verbose output.
    pub(crate) frames: u64,
    pub(crate) floating_grants: u64,
    pub(crate) writes: u64,
}

impl Credits {
    /// The state of a new connection: every channel's exclusive credits are due.
    pub(crate) fn new(channels: u32) -> Self {
        let n = channels as usize;
        let mut c = Self {
            pool: FLOATING_PER_WRITER,
            held: vec![0; n],
            backlog: vec![0; n],
            outstanding: vec![0; n],
            waiting: std::collections::VecDeque::new(),
            is_waiting: vec![false; n],
            due: vec![0; n],
            due_list: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            frames: 0,
            floating_grants: 0,
            writes: 0,
        };
        for ch in 0..n {
            c.grant(ch, EXCLUSIVE_CREDITS);
        }
        c
    }

    pub(crate) fn grant(&mut self, c: usize, n: u32) {
        if self.due[c] == 0 {
            self.due_list.push(c as u32);
        }
        self.due[c] += n;
        self.outstanding[c] += n;
    }

    /// Gives channel `c` floating buffers from the pool up to its backlog.
    pub(crate) fn take_floating(&mut self, c: usize) {
        while self.held[c] < self.backlog[c] && self.pool > 0 {
            self.pool -= 1;
            self.held[c] += 1;
            self.floating_grants += 1;
            self.grant(c, 1);
        }
    }

    /// A frame of channel `c` arrived, with `backlog` buffers queued behind it.
    pub(crate) fn frame_arrived(&mut self, c: usize, backlog: u32) -> Res<()> {
        if self.outstanding[c] == 0 {
            return Err(format!("a frame on channel {c} without credit").into());
        }
        self.outstanding[c] -= 1;
        self.frames += 1;
        self.backlog[c] = backlog;
        self.take_floating(c);
        if self.held[c] < self.backlog[c] && !self.is_waiting[c] {
            self.is_waiting[c] = true;
            self.waiting.push_back(c as u32);
        }
        Ok(())
    }

    /// A frame of channel `c` was processed: its buffer is free again.
    pub(crate) fn frame_done(&mut self, c: usize) {
        if self.held[c] > self.backlog[c] {
            self.held[c] -= 1;
            self.pool += 1;
            // The waiting channels, first come first served; bounded: each turn either
            // grants a buffer or ends the loop.
            while self.pool > 0 {
                let Some(w) = self.waiting.pop_front() else { break };
                let w = w as usize;
                self.is_waiting[w] = false;
                self.take_floating(w);
                if self.held[w] < self.backlog[w] {
                    self.is_waiting[w] = true;
                    self.waiting.push_front(w as u32);
                    break;
                }
            }
        } else {
            self.grant(c, 1);
        }
    }

    /// Encodes the due credits, one message per channel, after what is still unwritten.
    pub(crate) fn encode_due(&mut self) {
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
        for &c in &self.due_list {
            self.out.extend_from_slice(&c.to_le_bytes());
            self.out.extend_from_slice(&self.due[c as usize].to_le_bytes());
            self.due[c as usize] = 0;
        }
        self.due_list.clear();
    }

    pub(crate) fn unwritten(&self) -> bool {
        self.out_at < self.out.len()
    }
}

/// One connection of a stream consumer (TCP, Unix socket, or a data pipe with a credit
/// pipe beside it): the frames of one writer's C channels in, its credits out.
pub(crate) struct Conn {
    pub(crate) file: File,
    /// Where credit messages go: the same socket (a second fd of it), or the credit pipe;
    /// `None` once the stream ended.
    pub(crate) credit_out: Option<File>,
    pub(crate) socket: bool,
    /// The writer, from the 4-byte hello that opens the stream.
    pub(crate) writer: Option<u32>,
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The frame being read: its channel and the bytes still to come.
    pub(crate) frame: Option<(usize, usize)>,
    pub(crate) chans: Vec<ChanDec>,
    pub(crate) credits: Credits,
    pub(crate) eof: bool,
}

/// What one read did.
pub(crate) enum Pump {
    Progress,
    WouldBlock,
    Eof,
}

impl Conn {
    /// A connection over `data` (read) and `credit_out` (written; for a socket, a second
    /// fd of it).
    pub(crate) fn new(data: OwnedFd, credit_out: OwnedFd, socket: bool, channels: u32) -> Res<Self> {
        set_nonblocking(data.as_raw_fd())?;
        set_nonblocking(credit_out.as_raw_fd())?;
        Ok(Self {
            file: File::from(data),
            credit_out: Some(File::from(credit_out)),
            socket,
            writer: None,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            frame: None,
            chans: (0..channels).map(|_| ChanDec::default()).collect(),
            credits: Credits::new(channels),
            eof: false,
        })
    }

    /// Writes the due credits (one write for all of them, as Netty flushes once per read
    /// loop); what the kernel does not take now waits for the next call.
    pub(crate) fn send_credits(&mut self) -> Res<()> {
        let Some(out) = self.credit_out.as_ref() else { return Ok(()) };
        self.credits.encode_due();
        let cr = &mut self.credits;
        // Bounded: each turn writes some bytes, or stops.
        while cr.out_at < cr.out.len() {
            match (&*out).write(&cr.out[cr.out_at..]) {
                Ok(0) => return Err("the credit stream closed".into()),
                Ok(n) => {
                    cr.out_at += n;
                    cr.writes += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("writing credits: {e}").into()),
            }
        }
        Ok(())
    }

    /// Whether credit messages wait for room in the socket or pipe.
    pub(crate) fn wants_write(&self) -> bool {
        self.credit_out.is_some() && self.credits.unwritten()
    }

    /// The stream ended: no more credits; the producer, reading its credit stream to its
    /// end before it closes, may go.
    pub(crate) fn close_credits(&mut self) {
        if let Some(out) = self.credit_out.take() {
            if self.socket {
                // SAFETY: shutdown on a socket fd we own; it takes no pointers.
                unsafe { libc::shutdown(out.as_raw_fd(), libc::SHUT_WR) };
            }
        }
    }

    /// One read system call, then decodes every frame byte it brought.
    pub(crate) fn pump(&mut self, size: usize, tally: &mut Tally) -> Res<Pump> {
        // The rest of a large record goes straight into its buffer.
        if let (Some((c, left)), Some(w)) = (self.frame, self.writer) {
            let d = &mut self.chans[c];
            if let (true, Some(need)) = (self.start == self.end, d.need) {
                let want = (need - d.have).min(left);
                if want >= DIRECT_MIN {
                    let n = match self.file.read(&mut d.rec[d.have..d.have + want]) {
                        Ok(0) => return Err("end of stream inside a frame".into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pump::WouldBlock),
                        Err(e) => return Err(e.into()),
                    };
                    d.have += n;
                    d.complete(size, w, tally);
                    self.frame = (left > n).then_some((c, left - n));
                    if left == n {
                        self.credits.frame_done(c);
                    }
                    return Ok(Pump::Progress);
                }
            }
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = match self.file.read(&mut self.buf[self.end..]) {
            Ok(0) => {
                if self.end > self.start || self.frame.is_some() || self.chans.iter().any(ChanDec::mid_record) {
                    return Err("end of stream inside a frame or a record".into());
                }
                self.eof = true;
                self.close_credits();
                return Ok(Pump::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pump::WouldBlock),
            Err(e) => return Err(e.into()),
        };
        self.end += n;
        loop {
            let s = self.start;
            let avail = self.end - s;
            let b = &self.buf;
            let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let Some(w) = self.writer else {
                if avail < 4 {
                    break;
                }
                self.writer = Some(word(s));
                self.start += 4;
                continue;
            };
            match self.frame {
                None => {
                    if avail < HDR {
                        break;
                    }
                    let (c, len, backlog) = (word(s) as usize, word(s + 4) as usize, word(s + 8));
                    if c >= self.chans.len() || len == 0 || len > SEGMENT || backlog as usize > MAX_QUEUED + 1 {
                        return Err(format!("bad frame header: channel {c}, {len} bytes, backlog {backlog}").into());
                    }
                    self.credits.frame_arrived(c, backlog)?;
                    self.frame = Some((c, len));
                    self.start += HDR;
                }
                Some((c, left)) => {
                    let take = left.min(avail);
                    if take == 0 {
                        break;
                    }
                    self.chans[c].feed(&self.buf[s..s + take], size, w, tally)?;
                    self.start += take;
                    self.frame = (left > take).then_some((c, left - take));
                    if left == take {
                        self.credits.frame_done(c);
                    }
                }
            }
        }
        Ok(Pump::Progress)
    }
}

pub(crate) fn set_nonblocking(fd: RawFd) -> Res<()> {
    // SAFETY: fcntl on an fd we own, with valid commands and flags.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(format!("O_NONBLOCK: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// A pipe: (read end, write end), both close-on-exec.
pub(crate) fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array it is given, which has room for them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: pipe2 succeeded: both fds are open and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until `fd` is readable (or hung up), at most `timeout`; false on timeout.
pub(crate) fn wait_readable(fd: RawFd, timeout: Duration) -> Res<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `p` is one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, timeout.as_millis().clamp(1, 60_000) as i32) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e.into());
    }
    Ok(rc > 0)
}

/// One writer's stream: (data in, credits out, is a socket).
type Link = (OwnedFd, OwnedFd, bool);

/// Starts the producer of a stream peer and connects one stream per writer to it.
fn connect_streams(system: System, case: Case, cpus: Option<(usize, usize)>) -> Res<(Producer, Vec<Link>)> {
    let writers = case.shape.writers;
    let mut cmd = producer_command(system, case, cpus.map(|c| c.1))?;
    Ok(match system {
        System::Tcp => {
            let listener = TcpListener::bind(("127.0.0.1", 0))?;
            cmd.env(ENV_PORT, listener.local_addr()?.port().to_string());
            let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
            let mut links = Vec::new();
            for _ in 0..writers {
                let s = accept_within(&listener, WAIT_TIMEOUT, "producer")?;
                // Credit messages are small writes: Nagle must not hold them back.
                s.set_nodelay(true)?;
                let fd = OwnedFd::from(s);
                let credit = fd.try_clone()?;
                links.push((fd, credit, true));
            }
            (producer, links)
        }
        System::Unix => {
            let mut links = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..writers {
                let (a, b) = UnixStream::pair()?;
                let a = OwnedFd::from(a);
                let credit = a.try_clone()?;
                links.push((a, credit, true));
                theirs.push(OwnedFd::from(b));
            }
            let raw: Vec<RawFd> = theirs.iter().map(|f| f.as_raw_fd()).collect();
            pass_fds(&mut cmd, ENV_FDS, &raw);
            let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
            drop(theirs); // the child has its copies; our ends must see EOF when it closes them
            (producer, links)
        }
        System::Pipe => {
            let mut links = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..writers {
                let (data_r, data_w) = pipe()?;
                let (credit_r, credit_w) = pipe()?;
                // Best effort: a larger pipe, as a user streaming through pipes would set.
                // SAFETY: fcntl on a pipe fd we own, with a valid command and size.
                unsafe { libc::fcntl(data_w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
                links.push((data_r, credit_w, false));
                theirs.push(data_w);
                theirs.push(credit_r);
            }
            let raw: Vec<RawFd> = theirs.iter().map(|f| f.as_raw_fd()).collect();
            pass_fds(&mut cmd, ENV_FDS, &raw);
            let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
            drop(theirs); // as above: EOF on our ends when the child closes its ends
            (producer, links)
        }
        _ => return Err(format!("{} is not a stream peer", system.name()).into()),
    })
}

/// The stream peers: TCP, a Unix socket or a pipe per writer, with Flink's credit protocol.
pub(crate) fn run_socket(system: System, case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let Shape { writers, channels, .. } = case.shape;
    let (mut producer, links) = connect_streams(system, case, cpus)?;
    producer.expect_line("ready")?;
    let mut conns = links
        .into_iter()
        .map(|(data, credit, socket)| Conn::new(data, credit, socket, channels))
        .collect::<Res<Vec<_>>>()?;
    // Every channel's exclusive credits, as Flink's partition request announces them.
    for c in conns.iter_mut() {
        c.send_credits()?;
    }
    let mut tally = Tally::default();
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(2 * conns.len());
    let mut idle_since: Option<Instant> = None;
    producer.send("go")?;
    let mut window = Window::new(plan.timing(case), process_cpu_ns, Some(producer.guard.child.id()));
    while conns.iter().any(|c| !c.eof) {
        pollfds.clear();
        for c in &conns {
            let fd = if c.eof { -1 } else { c.file.as_raw_fd() };
            pollfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            let out = match (&c.credit_out, c.wants_write()) {
                (Some(f), true) => f.as_raw_fd(),
                _ => -1,
            };
            pollfds.push(libc::pollfd { fd: out, events: libc::POLLOUT, revents: 0 });
        }
        let (fds, n, ms) = (pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, POLL_SLICE.as_millis() as i32);
        // SAFETY: `fds` points at a valid array of `n` pollfd structs; negative fds are
        // ignored by the kernel.
        let rc = unsafe { libc::poll(fds, n, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if rc == 0 {
            producer.check_alive()?;
            if idle_since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT {
                return Err(format!("no data within {WAIT_TIMEOUT:?}").into());
            }
            continue;
        }
        idle_since = None;
        for (i, c) in conns.iter_mut().enumerate() {
            if pollfds[2 * i + 1].revents != 0 {
                c.send_credits()?;
            }
            if pollfds[2 * i].revents == 0 || c.eof {
                continue;
            }
            // Read until the stream is empty (as an epoll loop does), at most 16 times;
            // the credits each read freed go out after it.
            for _ in 0..16 {
                match c.pump(case.size, &mut tally)? {
                    Pump::Progress => {
                        c.send_credits()?;
                        on_tick(window.tick(tally.records), &mut producer)?;
                    }
                    Pump::WouldBlock | Pump::Eof => break,
                }
            }
        }
    }
    let mut seen: Vec<u32> = conns.iter().filter_map(|c| c.writer).collect();
    seen.sort_unstable();
    if seen != (0..writers).collect::<Vec<_>>() {
        return Err(format!("connections from writers {seen:?}, expected 0..{writers}").into());
    }
    let counts = producer.finish(writers)?;
    tally.verify(case, &counts)?;
    if verbose(system, &tally) {
        let sum = |f: fn(&Credits) -> u64| conns.iter().map(|c| f(&c.credits)).sum::<u64>();
        eprintln!(
            "    {} frames, {} floating grants, {} credit writes",
            sum(|c| c.frames),
            sum(|c| c.floating_grants),
            sum(|c| c.writes)
        );
    }
    window.rate(case)
}

/// The consumer's ends of an in-process writer's channels: buffers in, empty buffers back.
pub(crate) type BufferLink = (crossbeam_channel::Receiver<Vec<u8>>, crossbeam_channel::Sender<Vec<u8>>);
