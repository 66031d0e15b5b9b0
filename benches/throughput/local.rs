//! The in-process peer and the limits: a crossbeam channel between threads, memcpy, memory read, the bare cache-line round trip (a module of the throughput bench).

use super::*;

/// The in-process peer's writer threads; dropping it stops them and joins them (their
/// channels to the consumer close first, so none stays blocked in a send).
pub(crate) struct InProcessWriters {
    pub(crate) signals: Arc<Signals>,
    /// Per writer: its frames, and the way back for empty buffers.
    pub(crate) links: Vec<BufferLink>,
    pub(crate) threads: Vec<std::thread::JoinHandle<Res<u64>>>,
}

impl InProcessWriters {
    /// Joins the writers after they ended their streams; their record counts.
    pub(crate) fn join(mut self) -> Res<Vec<u64>> {
        let mut counts = Vec::new();
        for t in std::mem::take(&mut self.threads) {
            counts.push(t.join().map_err(|_| "a writer panicked")??);
        }
        Ok(counts)
    }
}

impl Drop for InProcessWriters {
    fn drop(&mut self) {
        set_start(&self.signals.start, 2);
        // Relaxed: a stop request, as in the producer process.
        self.signals.stop.store(true, Ordering::Relaxed);
        self.links.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The in-process peer: W writer threads in this process (pinned to the producer's CPU)
/// frame their records into 32 KiB buffers as the stream peers do and pass them through a
/// bounded crossbeam channel per writer (the credit window: 2C + 8 buffers);
/// the consumer decodes and checks them as it does a socket's frames, and sends every
/// buffer back for reuse.
pub(crate) fn run_in_process(case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let Shape { writers, channels, .. } = case.shape;
    let (signals, ready_rx) = Signals::new();
    let mut writers_of = InProcessWriters { signals: signals.clone(), links: Vec::new(), threads: Vec::new() };
    for w in 0..writers {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(in_process_window(channels));
        let (back_tx, back_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        writers_of.links.push((rx, back_tx));
        let signals = signals.clone();
        writers_of.threads.push(std::thread::spawn(move || -> Res<u64> {
            let r = (|| {
                if let Some((_, b)) = cpus {
                    pin_to(b)?;
                }
                framed_writer(ChannelOut::new(tx, back_rx, channels), case, w, &signals)
            })();
            if let Err(e) = &r {
                signals.ready(Err(format!("writer {w}: {e}").into()));
            }
            r
        }));
    }
    for _ in 0..writers {
        match ready_rx.recv_timeout(WAIT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a writer did not get ready".into()),
        }
    }
    let mut decs: Vec<Vec<ChanDec>> =
        (0..writers).map(|_| (0..channels).map(|_| ChanDec::default()).collect()).collect();
    let mut open = vec![true; writers as usize];
    let mut live = writers as usize;
    let mut tally = Tally::default();
    let mut idle_since: Option<Instant> = None;
    set_start(&signals.start, 1);
    let mut window = Window::new(plan.timing(case), process_cpu_ns, None);
    let stop = |tick: Tick| {
        if tick == Tick::Closed {
            // Relaxed: a stop request, read by the writers between records.
            signals.stop.store(true, Ordering::Relaxed);
        }
    };
    while live > 0 {
        let mut got = false;
        for (w, (rx, back)) in writers_of.links.iter().enumerate() {
            if !open[w] {
                continue;
            }
            // At most 16 buffers of one writer, then the next (as the socket loop).
            for _ in 0..16 {
                match rx.try_recv() {
                    Ok(buf) => {
                        got = true;
                        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                        let (c, len) = (word(0) as usize, word(4) as usize);
                        if buf.len() < HDR || c >= channels as usize || len == 0 || len != buf.len() - HDR {
                            return Err(format!("bad buffer: channel {c}, {len} bytes in {}", buf.len()).into());
                        }
                        decs[w][c].feed(&buf[HDR..], case.size, w as u32, &mut tally)?;
                        // The writer may have ended already: then the buffer is dropped.
                        let _ = back.send(buf);
                        stop(window.tick(tally.records));
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open[w] = false;
                        live -= 1;
                        break;
                    }
                }
            }
        }
        if got || live == 0 {
            idle_since = None;
            continue;
        }
        let mut sel = crossbeam_channel::Select::new();
        for (w, (rx, _)) in writers_of.links.iter().enumerate() {
            if open[w] {
                sel.recv(rx);
            }
        }
        if sel.ready_timeout(POLL_SLICE).is_err()
            && idle_since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT
        {
            return Err(format!("no buffer within {WAIT_TIMEOUT:?}").into());
        }
    }
    if decs.iter().flatten().any(ChanDec::mid_record) {
        return Err("a stream ended inside a record".into());
    }
    let counts = writers_of.join()?;
    tally.verify(case, &counts)?;
    verbose(System::InProcess, &tally);
    window.rate(case)
}

/// The same payload bytes copied record by record into a ring, in this thread.
pub(crate) fn run_memcpy(size: usize, plan: &Plan) -> Res<Rate> {
    let mut src = base_record(size);
    let slots = (MEMCPY_RING / size).max(4);
    let mut dst = vec![0u8; slots * size];
    let mut records = 0u64;
    let every = check_every(size);
    let mut window = Window::new((plan.warm, plan.window), thread_cpu_ns, None);
    let mut slot = 0usize;
    let mut i = 0u64;
    // Records above a segment are timed one by one (see `RecordTimes`), when verbose.
    let mut times = (size > SEGMENT && std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some()).then(RecordTimes::default);
    loop {
        for _ in 0..every {
            stamp(&mut src, i);
            let at = slot * size;
            let t0 = times.is_some().then(Instant::now);
            dst[at..at + size].copy_from_slice(std::hint::black_box(&src[..]));
            if let (Some(t), Some(t0)) = (times.as_mut(), t0) {
                t.push(t0.elapsed());
            }
            slot += 1;
            if slot == slots {
                slot = 0;
            }
            i += 1;
        }
        std::hint::black_box(&mut dst);
        records += every;
        if window.tick(records) == Tick::Closed {
            break;
        }
    }
    if let Some(t) = times {
        eprintln!("    memcpy {}: {}", size_name(size), t.describe(size));
    }
    window.rate(Case::new(Shape::new(1, 1), 0, size))
}

/// The memory-read limit: records of `size` bytes laid end to end over a 64 MiB region
/// (beyond the L3), read in order with the consumer's checksum (every byte), in this
/// thread. `region` is reused between calls.
pub(crate) fn run_memread(size: usize, plan: &Plan, region: &mut Vec<u8>) -> Res<Rate> {
    let slots = (MEMREAD_REGION / size).max(1);
    region.clear();
    let rec = base_record(size);
    for _ in 0..slots {
        region.extend_from_slice(&rec);
    }
    let mut records = 0u64;
    let every = check_every(size);
    let mut window = Window::new((plan.warm, plan.window), thread_cpu_ns, None);
    let mut slot = 0usize;
    let mut sum = 0u64;
    loop {
        for _ in 0..every {
            let at = slot * size;
            sum = sum.wrapping_add(record_checksum(&region[at..at + size]));
            slot += 1;
            if slot == slots {
                slot = 0;
            }
        }
        std::hint::black_box(sum);
        records += every;
        if window.tick(records) == Tick::Closed {
            break;
        }
    }
    window.rate(Case::new(Shape::new(1, 1), 0, size))
}

/// Mean round trip of one cache line between the two CPUs (threads spinning with PAUSE):
/// tells "near" (~120 ns on our EPYC) from "far" (~410 ns) placement of the vCPUs.
pub(crate) fn bare_rtt_ns(cpus: Option<(usize, usize)>) -> Res<f64> {
    const N: u64 = 10_000;
    let words: Arc<[CachePadded<Word>; 2]> = Arc::new([CachePadded::new(Word::new(0)), CachePadded::new(Word::new(0))]);
    let w2 = words.clone();
    let peer = std::thread::spawn(move || -> Res<()> {
        if let Some((_, b)) = cpus {
            pin_to(b)?;
        }
        for i in 1..=N {
            // Acquire/Release: a plain hand-off of the counter; pairs with the main
            // thread's Release store / Acquire load of the same words.
            spin_until(|| w2[0].load(Ordering::Acquire) == i, "answer", WAIT_TIMEOUT)?;
            w2[1].store(i, Ordering::Release);
        }
        Ok(())
    });
    let t0 = Instant::now();
    let mut out = Ok(());
    for i in 1..=N {
        // Release/Acquire: pairs with the peer's Acquire load / Release store above.
        words[0].store(i, Ordering::Release);
        if let Err(e) = spin_until(|| words[1].load(Ordering::Acquire) == i, "answer", WAIT_TIMEOUT) {
            out = Err(e);
            break;
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / N as f64;
    peer.join().map_err(|_| "the ping-pong thread panicked")??;
    out?;
    Ok(ns)
}

/// Bytes per buffer of the hand-off limit: the default segment size.
pub(crate) const HANDOFF_BUFFER: usize = 32 * 1024;
/// Buffers in the hand-off limit's ring: the credit window of a 1x1 shmflow run (2
/// exclusive + 8 floating credits).
pub(crate) const HANDOFF_RING: usize = 10;

/// How the hand-off limit's writer stores its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stores {
    /// Ordinary stores (`copy_from_slice`).
    Cached,
    /// Non-temporal stores and a store fence per buffer, as shmflow's builder copies a large
    /// record's pieces.
    Streaming,
}

/// Copies `src` into `dst` (equal lengths, `dst` 16-aligned) as `stores` says.
fn handoff_copy(dst: &mut [u8], src: &[u8], stores: Stores) {
    #[cfg(target_arch = "x86_64")]
    if stores == Stores::Streaming && dst.as_ptr() as usize % 16 == 0 {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let body = dst.len() / 16 * 16;
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        let mut i = 0;
        while i < body {
            // SAFETY: i + 16 <= body <= both lengths; d + i is 16-aligned (checked above).
            unsafe { _mm_stream_si128(d.add(i).cast::<__m128i>(), _mm_loadu_si128(s.add(i).cast::<__m128i>())) };
            i += 16;
        }
        dst[body..].copy_from_slice(&src[body..]);
        // SAFETY: SSE is part of x86_64; orders the streaming stores before the Release
        // store that hands the buffer over.
        unsafe { _mm_sfence() };
        return;
    }
    dst.copy_from_slice(src);
}

/// The cross-core hand-off limit for records above a segment: two threads of this process
/// on the two CPUs (the producer's and the consumer's), the writer copying each record
/// (stamped, as the producers do) in 32 KiB pieces into a ring of [`HANDOFF_RING`] buffers,
/// the reader checksumming every byte of each piece (`xor_words`, as the consumer) and
/// handing the buffer back; one atomic counter per direction, spinning. Nothing of
/// shmflow: what moving the bytes between the cores costs, with the writer's `stores`.
/// Also returns the writer's median time per record ([`RecordTimes::describe`]).
pub(crate) fn run_handoff(
    size: usize,
    plan: &Plan,
    cpus: Option<(usize, usize)>,
    stores: Stores,
) -> Res<(Rate, String)> {
    // The ring, 4 KiB-aligned, shared by address (the threads are joined before it drops).
    let mut ring = vec![0u8; HANDOFF_RING * HANDOFF_BUFFER + 4096];
    let base = ring.as_mut_ptr() as usize;
    let base = base + (base.wrapping_neg() & 4095);
    let pieces = size.div_ceil(HANDOFF_BUFFER) as u64;
    // [filled, emptied, stop]
    let words: Arc<[CachePadded<Word>; 3]> =
        Arc::new([CachePadded::new(Word::new(0)), CachePadded::new(Word::new(0)), CachePadded::new(Word::new(0))]);
    let w2 = words.clone();
    let writer = std::thread::spawn(move || -> Res<RecordTimes> {
        if let Some((_, b)) = cpus {
            pin_to(b)?;
        }
        let mut rec = base_record(size);
        let mut filled = 0u64;
        let mut times = RecordTimes::default();
        for i in 0.. {
            stamp(&mut rec, i);
            let t0 = Instant::now();
            for piece in rec.chunks(HANDOFF_BUFFER) {
                // Acquire: pairs with the reader's Release store of `emptied`, so its reads
                // of the buffer come before our writes.
                let free = || w2[1].load(Ordering::Acquire) + HANDOFF_RING as u64 > filled;
                // Relaxed: a stop request.
                let stop = || w2[2].load(Ordering::Relaxed) != 0;
                wait_spinning(|| free() || stop(), "a free buffer")?;
                if stop() {
                    return Ok(times);
                }
                let at = base + (filled % HANDOFF_RING as u64) as usize * HANDOFF_BUFFER;
                // SAFETY: slot `filled % RING` lies inside the ring; the reader is done with
                // it (the Acquire above) and reads it only after our Release below.
                let dst = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, piece.len()) };
                handoff_copy(dst, piece, stores);
                filled += 1;
                // Release: publishes the buffer's bytes; pairs with the reader's Acquire.
                w2[0].store(filled, Ordering::Release);
            }
            times.push(t0.elapsed());
        }
        Ok(times)
    });
    let result = (|| -> Res<Rate> {
        let mut window = Window::new((plan.warm, plan.window), thread_cpu_ns, None);
        let mut emptied = 0u64;
        let mut sum = 0u64;
        let tail = size - (pieces as usize - 1) * HANDOFF_BUFFER;
        loop {
            // Acquire: pairs with the writer's Release store of `filled`.
            wait_spinning(|| words[0].load(Ordering::Acquire) > emptied, "a filled buffer")?;
            let len = if (emptied + 1) % pieces == 0 { tail } else { HANDOFF_BUFFER };
            let at = base + (emptied % HANDOFF_RING as u64) as usize * HANDOFF_BUFFER;
            // SAFETY: the writer filled this slot (the Acquire above) and does not touch it
            // until our Release below.
            let buf = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
            sum = sum.wrapping_add(xor_words(buf));
            emptied += 1;
            // Release: hands the buffer back; pairs with the writer's Acquire.
            words[1].store(emptied, Ordering::Release);
            if emptied % pieces == 0 && window.tick(emptied / pieces) == Tick::Closed {
                break;
            }
        }
        std::hint::black_box(sum);
        window.rate(Case::new(Shape::new(1, 1), 0, size))
    })();
    // Relaxed: a stop request, read by the writer between pieces.
    words[2].store(1, Ordering::Relaxed);
    let joined = writer.join().map_err(|_| "the hand-off writer panicked")?;
    drop(ring);
    let rate = result?;
    Ok((rate, joined?.describe(size)))
}

/// Spins with PAUSE until `ready()` holds, yielding the CPU between looks once a wait
/// outlasts about 16k spins (tens of microseconds: the other thread was descheduled, as
/// happens on a shared machine; shmflow's adaptive waits park then); fails after
/// [`WAIT_TIMEOUT`].
fn wait_spinning(mut ready: impl FnMut() -> bool, what: &str) -> Res<()> {
    for _ in 0..1u32 << 14 {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let since = Instant::now();
    while !ready() {
        if since.elapsed() > WAIT_TIMEOUT {
            return Err(format!("no {what} within {WAIT_TIMEOUT:?}").into());
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// The hand-off limit of one round: the faster of ordinary and streaming stores (which
/// one wins depends on where the vCPUs sit; SHMFLOW_TPUT_VERBOSE prints both).
pub(crate) fn best_handoff(size: usize, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let (cached, cached_times) = run_handoff(size, plan, cpus, Stores::Cached)?;
    let (streaming, streaming_times) = run_handoff(size, plan, cpus, Stores::Streaming)?;
    if std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some() {
        eprintln!(
            "    handoff {}: cached stores {:.2} GB/s (writer: {cached_times}), streaming stores {:.2} GB/s \
             (writer: {streaming_times})",
            size_name(size),
            cached.gb_per_s,
            streaming.gb_per_s
        );
    }
    Ok(if cached.gb_per_s >= streaming.gb_per_s { cached } else { streaming })
}
