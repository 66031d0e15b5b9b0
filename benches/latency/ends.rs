//! The two ends of a peer (a module of the latency bench).

use super::*;

/// The requester's end of one peer.
pub(crate) trait Requester {
    /// Sends request `seq` (`msg`, empty for the peers that carry no payload) and waits for
    /// the answer, which must equal `want` byte for byte.
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()>;
}

/// The responder's end of one peer.
pub(crate) trait Responder {
    /// Waits for request `seq` (1, 2, ...) and answers it.
    fn serve(&mut self, seq: u64) -> Res<()>;
}

/// One page of a memfd, mapped shared in both processes.
pub(crate) struct SharedPage {
    pub(crate) map: memmap2::MmapRaw,
    pub(crate) fd: OwnedFd,
}

impl SharedPage {
    pub(crate) fn create() -> Res<Self> {
        // SAFETY: the name is a NUL-terminated literal and the flags are valid.
        let raw = unsafe { libc::memfd_create(c"shmflow-latency".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()).into());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        file.set_len(PAGE as u64)?;
        Self::map(file.into())
    }

    /// Maps the page the requester passed down.
    pub(crate) fn inherited() -> Res<Self> {
        let [fd] = inherited_fds::<1>()?;
        let len = File::from(fd.try_clone()?).metadata()?.len();
        if len < PAGE as u64 {
            return Err(format!("the shared page has {len} bytes, expected {PAGE}").into());
        }
        Self::map(fd)
    }

    pub(crate) fn map(fd: OwnedFd) -> Res<Self> {
        let map = memmap2::MmapOptions::new().len(PAGE).map_raw(&fd)?;
        Ok(Self { map, fd })
    }

    pub(crate) fn atomic(&self, offset: usize) -> &Word {
        assert!(offset % 8 == 0 && offset + 8 <= PAGE, "word offset {offset} is a constant inside the page");
        // SAFETY: the word lies inside the mapping, which lives as long as `self`, and is
        // 8-aligned (the mapping is page-aligned). The memfd starts zero-filled and both
        // processes access this word only through this atomic type, so every value is valid.
        unsafe { &*self.map.as_ptr().add(offset).cast::<Word>() }
    }

    pub(crate) fn futex(&self, offset: usize) -> &FutexWord {
        assert!(offset % 4 == 0 && offset + 4 <= PAGE, "word offset {offset} is a constant inside the page");
        const _: () = assert!(std::mem::size_of::<FutexWord>() == 4);
        // SAFETY: as in `atomic`: inside the mapping, 4-aligned, zero-filled at first and
        // only accessed as a FutexWord, a repr(C) wrapper of one AtomicU32.
        unsafe { &*self.map.as_ptr().add(offset).cast::<FutexWord>() }
    }
}

/// The hardware limit: one atomic word per direction, spinning. Carries only `seq`.
pub(crate) struct BarePeer {
    pub(crate) page: SharedPage,
}

impl Requester for BarePeer {
    fn round_trip(&mut self, seq: u64, _msg: &[u8], _want: &[u8]) -> Res<()> {
        // Release: pairs with the responder's Acquire load of PING; the value itself is
        // all that travels.
        self.page.atomic(PING).store(seq, Ordering::Release);
        let pong = self.page.atomic(PONG);
        // Acquire: pairs with the responder's Release store of PONG.
        spin_until(|| pong.load(Ordering::Acquire) == seq, "bare pong", WAIT_TIMEOUT)
    }
}

impl Responder for BarePeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        let ping = self.page.atomic(PING);
        // Acquire: pairs with the requester's Release store of PING.
        spin_until(|| ping.load(Ordering::Acquire) == seq, "bare ping", WAIT_TIMEOUT)?;
        // Release: pairs with the requester's Acquire load of PONG.
        self.page.atomic(PONG).store(seq, Ordering::Release);
        Ok(())
    }
}

/// The limit of a record of the payload's size: the payload behind a sequence word, written
/// in place and read in place, with nothing else around it (see the module doc,
/// `shm-record`).
pub(crate) struct RecordPeer {
    pub(crate) page: SharedPage,
    pub(crate) payload: usize,
    /// `shm-record-moving`: each record goes behind the previous one (as a stream's
    /// records do) instead of to the same place.
    pub(crate) moving: bool,
    /// Offset of the next record in each direction's region.
    pub(crate) next: usize,
}

impl RecordPeer {
    pub(crate) fn new(page: SharedPage, peer: Peer, payload: usize) -> Self {
        Self { page, payload, moving: peer == Peer::RecordMoving, next: 0 }
    }

    /// The offset of this round trip's records in their regions (both directions use the
    /// same), and moves on: always 0 at a fixed place; moving, the next 8-aligned place
    /// behind the record, back to 0 when the next would not fit the region. Sequence
    /// numbers only grow, so a word left from an earlier lap never looks like the one
    /// awaited: no word needs clearing.
    fn step(&mut self) -> usize {
        let at = self.next;
        if self.moving {
            let stride = (8 + self.payload).next_multiple_of(8);
            self.next = if at + 2 * stride > REC_REGION { 0 } else { at + stride };
        }
        at
    }

    /// The payload bytes of the record at `at` (REC_PING or REC_PONG).
    fn bytes(&self, at: usize) -> *mut u8 {
        assert!(at + 8 + self.payload <= PAGE && self.payload <= RECORD_MAX, "record inside the page");
        self.page.map.as_mut_ptr().wrapping_add(at + 8)
    }

    /// Waits for record `seq` at `at`, asking for its second line while it polls the first.
    fn await_record(&self, at: usize, seq: u64) -> Res<&[u8]> {
        let word = self.page.atomic(at);
        let second = self.page.map.as_ptr().wrapping_add(at + 64);
        // Acquire: pairs with the Release store in `send` on the other side.
        spin_until(
            || {
                shmflow::sync::prefetch_line(second);
                word.load(Ordering::Acquire) == seq
            },
            "record",
            WAIT_TIMEOUT,
        )?;
        // SAFETY: inside the mapping (`bytes` asserts it), which lives as long as `self`;
        // the other side wrote these bytes before its Release store of `seq`, which we
        // Acquired, and writes them again only after our answer.
        Ok(unsafe { std::slice::from_raw_parts(self.bytes(at), self.payload) })
    }

    /// Publishes record `seq` at `at`, its payload filled in place by `fill`.
    fn send(&self, at: usize, seq: u64, fill: impl FnOnce(&mut [u8])) {
        // SAFETY: inside the mapping; the other side reads these bytes only after our
        // Release store of `seq` below, and has read the previous record there before it
        // answered it.
        fill(unsafe { std::slice::from_raw_parts_mut(self.bytes(at), self.payload) });
        // Release: pairs with the Acquire load in `await_record` on the other side.
        self.page.atomic(at).store(seq, Ordering::Release);
    }
}

impl Requester for RecordPeer {
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()> {
        let at = self.step();
        self.send(REC_PING + at, seq, |dst| dst.copy_from_slice(msg));
        if self.await_record(REC_PONG + at, seq)? != want {
            return Err(wrong_answer(seq));
        }
        Ok(())
    }
}

impl Responder for RecordPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        let at = self.step();
        let p = self.await_record(REC_PING + at, seq)?;
        check_request(p, seq, self.payload)?;
        // The request is copied with its checksum in one pass into the answer's place.
        let p: *const [u8] = p;
        self.send(REC_PONG + at, seq, |dst| {
            // SAFETY: the request's bytes, still valid (see `await_record`), and apart
            // from the answer's (in the other region).
            let sum = copy_checksum(unsafe { &*p }, dst);
            seal_answer(dst, sum);
        });
        Ok(())
    }
}

/// The parking limit: the same words as futexes; a waiter never spins. Carries only `seq`.
pub(crate) struct FutexPeer {
    pub(crate) page: SharedPage,
}

impl FutexPeer {
    pub(crate) fn signal(&self, offset: usize, seq: u64) {
        let w = self.page.futex(offset);
        // Release: pairs with the Acquire load in `await_value` on the other side.
        w.atomic().store(seq as u32, Ordering::Release);
        w.wake(1);
    }

    pub(crate) fn await_value(&self, offset: usize, seq: u64) -> Res<()> {
        let w = self.page.futex(offset);
        let want = seq as u32;
        let mut since: Option<Instant> = None;
        loop {
            // Acquire: pairs with the Release store in `signal`.
            let v = w.atomic().load(Ordering::Acquire);
            if v == want {
                return Ok(());
            }
            if since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT {
                return Err(format!("no futex signal {want} within {WAIT_TIMEOUT:?}").into());
            }
            w.wait(v, Some(PARK_SLICE));
        }
    }
}

impl Requester for FutexPeer {
    fn round_trip(&mut self, seq: u64, _msg: &[u8], _want: &[u8]) -> Res<()> {
        self.signal(PING, seq);
        self.await_value(PONG, seq)
    }
}

impl Responder for FutexPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        self.await_value(PING, seq)?;
        self.signal(PONG, seq);
        Ok(())
    }
}

/// A blocking byte stream each way (two pipes, a Unix socket or a TCP connection) and a
/// buffer of one payload.
pub(crate) struct IoPeer<R, W> {
    pub(crate) rx: R,
    pub(crate) tx: W,
    pub(crate) buf: Vec<u8>,
}

impl<R: Read, W: Write> IoPeer<R, W> {
    pub(crate) fn new(rx: R, tx: W, payload: usize) -> Self {
        Self { rx, tx, buf: vec![0; payload] }
    }
}

impl<R: Read, W: Write> Requester for IoPeer<R, W> {
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()> {
        self.tx.write_all(msg)?;
        self.rx.read_exact(&mut self.buf)?;
        if self.buf != want {
            return Err(wrong_answer(seq));
        }
        Ok(())
    }
}

impl<R: Read, W: Write> Responder for IoPeer<R, W> {
    fn serve(&mut self, seq: u64) -> Res<()> {
        self.rx.read_exact(&mut self.buf)?;
        check_request(&self.buf, seq, self.buf.len())?;
        let sum = checksum(&self.buf);
        seal_answer(&mut self.buf, sum);
        self.tx.write_all(&self.buf)?;
        Ok(())
    }
}

/// A shmflow record stream each way over one arena, and (in the responder) a buffer the
/// answer is built in.
pub(crate) struct ShmPeer {
    pub(crate) writer: StreamWriter,
    pub(crate) reader: StreamReader,
    pub(crate) buf: Vec<u8>,
}

impl ShmPeer {
    pub(crate) fn open(
        arena: Arc<Arena>,
        out_channel: u32,
        in_channel: u32,
        policy: WaitPolicy,
        buf: usize,
    ) -> Res<Self> {
        let reader = StreamReader::new(arena.clone(), in_channel, CREDIT, policy)?;
        let writer = StreamWriter::new(arena, out_channel, CREDIT, policy, Some(WAIT_TIMEOUT))?;
        Ok(Self { writer, reader, buf: vec![0; buf] })
    }

    pub(crate) fn send(writer: &mut StreamWriter, record: &[u8]) -> Res<()> {
        writer.write(record)?;
        writer.flush()?;
        Ok(())
    }
}

impl Requester for ShmPeer {
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()> {
        Self::send(&mut self.writer, msg)?;
        // The answer is compared in place, in the arena.
        match self.reader.next(Some(WAIT_TIMEOUT), |p| p == want)? {
            Some(true) => Ok(()),
            Some(false) => Err(wrong_answer(seq)),
            None => Err("the responder ended its stream".into()),
        }
    }
}

impl Responder for ShmPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        let (writer, len) = (&mut self.writer, self.buf.len());
        // The request is read in place, in the arena, and copied with its checksum in one
        // pass straight into the answer's place in the outgoing segment.
        self.reader
            .next(Some(WAIT_TIMEOUT), |p| -> Res<()> {
                check_request(p, seq, len)?;
                writer.write_with(len, |dst| {
                    let sum = copy_checksum(p, dst);
                    seal_answer(dst, sum);
                })?;
                Ok(())
            })?
            .ok_or("the requester ended its stream")??;
        self.writer.flush()?;
        Ok(())
    }
}

/// The shmflow segment size for `payload`: [`SMALL_SEGMENT`], or the smallest power of
/// two that holds the framed record (a stream's records never span segments).
pub(crate) fn segment_size_for(payload: usize) -> usize {
    (payload + LEN_PREFIX).next_power_of_two().max(SMALL_SEGMENT)
}

pub(crate) fn arena_config(payload: usize) -> Res<ArenaConfig> {
    Ok(ArenaConfig {
        segment_size: u32::try_from(segment_size_for(payload))?,
        // Two pools of CREDIT segments, with room to spare.
        segment_count: 16,
        ring_capacity: 16,
        max_channels: 2,
        max_partitions: 1,
        max_gates: 1,
        max_channels_per_gate: 64,
        max_workers: 2,
        max_tasks: 2,
    })
}
