//! Records and checksums (a module of the throughput bench).

use super::*;

/// The fixed filler of a record of `size` bytes (at least 8): bytes 0..8 are overwritten
/// by the record's stamp.
pub(crate) fn base_record(size: usize) -> Vec<u8> {
    (0..size).map(|k| (k as u32).wrapping_mul(131).wrapping_add(7) as u8).collect()
}

/// The stamp of record `i` of writer `w`: its first 8 bytes (little endian).
#[inline]
pub(crate) fn stamp_of(w: u32, i: u64) -> u64 {
    (u64::from(w) << SEQ_BITS) | (i & SEQ_MASK)
}

#[inline]
pub(crate) fn stamp(rec: &mut [u8], v: u64) {
    rec[..8].copy_from_slice(&v.to_le_bytes());
}

/// The second field of a 12-byte `(u64, u32)` record: the filler's bytes 8..12.
pub(crate) fn pair_tail() -> u32 {
    let b = base_record(PAIR);
    u32::from_le_bytes([b[8], b[9], b[10], b[11]])
}

/// XOR of the little-endian 8-byte words of `data` (the last one zero-padded) in four
/// lanes by word index mod 4, the lanes rotated apart. Linear in the bytes, so the sum over
/// all records sent can be computed without generating them (see `expected_sum`).
#[inline]
pub(crate) fn xor_words(data: &[u8]) -> u64 {
    let mut lanes = [0u64; 4];
    let rest = xor_blocks(&mut lanes, data);
    // The last 0..=31 bytes: whole words, then a zero-padded tail (built byte by byte:
    // a variable-length copy would be a memcpy call per record).
    let mut words = rest.chunks_exact(8);
    let mut l = 0;
    for w in &mut words {
        lanes[l] ^= word(w);
        l += 1;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        lanes[l] ^= tail_word(tail);
    }
    fold_lanes(&lanes)
}

/// XORs the whole 32-byte blocks of `data` into the lanes (word `k` of a block into lane
/// `k`); returns the bytes after the last block.
#[inline]
fn xor_blocks<'a>(lanes: &mut [u64; 4], data: &'a [u8]) -> &'a [u8] {
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane ^= word(&c[l * 8..l * 8 + 8]);
        }
    }
    chunks.remainder()
}

/// The little-endian word of 8 bytes.
#[inline]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    u64::from_le_bytes(w)
}

/// The little-endian word of fewer than 8 bytes, zero-padded (byte by byte: no memcpy call).
#[inline]
fn tail_word(tail: &[u8]) -> u64 {
    tail.iter().enumerate().fold(0u64, |v, (k, &b)| v | u64::from(b) << (8 * k))
}

#[inline]
fn fold_lanes(lanes: &[u64; 4]) -> u64 {
    lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48)
}

/// `xor_words` of a record read in pieces (a record that spans segments, streamed by the
/// gate): the same value as `xor_words` of the pieces laid end to end, with the state
/// carried from piece to piece (lanes, words so far, the bytes of a word a piece ended in).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PieceSum {
    lanes: [u64; 4],
    /// Whole words XORed so far.
    words: usize,
    /// The first `pending_len` bytes (0..8) of the next word.
    pending: u64,
    pending_len: usize,
    /// Bytes so far.
    pub(crate) len: usize,
    /// The record's first 8 bytes (its stamp), once `len >= 8`.
    pub(crate) stamp: u64,
}

impl PieceSum {
    /// Adds the record's next bytes.
    pub(crate) fn update(&mut self, mut b: &[u8]) {
        let start = self.len;
        self.len += b.len();
        // Complete a word the last piece ended in, byte by byte.
        while self.pending_len > 0 && !b.is_empty() {
            self.pending |= u64::from(b[0]) << (8 * self.pending_len);
            self.pending_len += 1;
            b = &b[1..];
            if self.pending_len == 8 {
                let w = std::mem::take(&mut self.pending);
                self.push_word(w);
                self.pending_len = 0;
            }
        }
        // Word by word up to a block boundary (lane 0), then whole blocks.
        while self.words % 4 != 0 && b.len() >= 8 {
            self.push_word(word(&b[..8]));
            b = &b[8..];
        }
        if self.words % 4 == 0 {
            let blocks = b.len() / 32;
            if start == 0 && b.len() >= 8 {
                self.stamp = word(&b[..8]);
            }
            b = xor_blocks(&mut self.lanes, b);
            self.words += blocks * 4;
        }
        while b.len() >= 8 {
            self.push_word(word(&b[..8]));
            b = &b[8..];
        }
        for &x in b {
            self.pending |= u64::from(x) << (8 * self.pending_len);
            self.pending_len += 1;
        }
    }

    #[inline]
    fn push_word(&mut self, w: u64) {
        if self.words == 0 {
            self.stamp = w;
        }
        self.lanes[self.words % 4] ^= w;
        self.words += 1;
    }

    /// `xor_words` of all bytes added.
    pub(crate) fn finish(&self) -> u64 {
        let mut lanes = self.lanes;
        if self.pending_len > 0 {
            lanes[self.words % 4] ^= self.pending;
        }
        fold_lanes(&lanes)
    }
}

/// Non-linear finish, so that a sum over records does not cancel.
#[inline]
pub(crate) fn mix(x: u64, len: usize) -> u64 {
    let v = (x ^ (len as u64).rotate_left(40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    v ^ (v >> 29)
}

/// The checksum of one record: reads every byte.
#[inline]
pub(crate) fn record_checksum(data: &[u8]) -> u64 {
    if let Ok(w) = <[u8; 8]>::try_from(data) {
        // One word (a `u64` record): `xor_words` is the word itself.
        return mix(u64::from_le_bytes(w), LONG);
    }
    mix(xor_words(data), data.len())
}

/// `xor_words` of the filler with bytes 0..8 zeroed: record `(w, i)` then has
/// `xor_words == stamp_of(w, i) ^ filler_xor` (the stamp is word 0).
pub(crate) fn filler_xor(size: usize) -> u64 {
    let mut base = base_record(size);
    base[..8].fill(0);
    xor_words(&base)
}

/// The sum of the checksums of records `0..counts[w]` of every writer `w`, each read
/// `fanout` times.
pub(crate) fn expected_sum(size: usize, counts: &[u64], fanout: u64) -> u64 {
    let fx = filler_xor(size);
    let mut sum = 0u64;
    for (w, &n) in counts.iter().enumerate() {
        for i in 0..n {
            sum = sum.wrapping_add(mix(stamp_of(w as u32, i) ^ fx, size));
        }
    }
    sum.wrapping_mul(fanout)
}

/// Checks the closed form of `expected_sum` against real records, and that the typed
/// records serialize to the bytes the socket peers send.
pub(crate) fn self_check(sizes: &[usize]) -> Res<()> {
    for &size in sizes {
        let mut rec = base_record(size);
        let fx = filler_xor(size);
        for (w, i) in [(0u32, 0u64), (3, 12_345), (99, SEQ_MASK / 3)] {
            stamp(&mut rec, stamp_of(w, i));
            if record_checksum(&rec) != mix(stamp_of(w, i) ^ fx, size) {
                return Err(format!("checksum self-check failed for {size}-byte records").into());
            }
        }
        // Read in pieces (split at awkward places), the sum is the same.
        for step in [1usize, 3, 7, 8, 13, 32, 33, 100, 32 * 1024 - 4] {
            let mut p = PieceSum::default();
            for piece in rec.chunks(step) {
                p.update(piece);
            }
            if p.finish() != xor_words(&rec) || p.len != size || (size >= 8 && p.stamp != word(&rec[..8])) {
                return Err(format!(
                    "piecewise checksum self-check failed for {size}-byte records in {step}-byte pieces"
                )
                .into());
            }
        }
    }
    let v = stamp_of(7, 3);
    let mut rec = base_record(LONG);
    stamp(&mut rec, v);
    let mut b = [0u8; LONG];
    v.serialize_into(&mut b);
    if b[..] != rec[..] {
        return Err("a u64 record does not serialize as its 8 little-endian bytes".into());
    }
    let mut rec = base_record(PAIR);
    stamp(&mut rec, v);
    let mut b = [0u8; PAIR];
    let t = (v, pair_tail());
    if t.serialized_len() != PAIR {
        return Err("a (u64, u32) record is not 12 bytes".into());
    }
    t.serialize_into(&mut b);
    if b[..] != rec[..] {
        return Err("a (u64, u32) record does not serialize as [u64 LE][u32 LE]".into());
    }
    Ok(())
}

/// What the consumer saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    /// Records read (a broadcast record once per channel).
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) sum: u64,
    /// Records whose sequence number did not grow on their channel.
    pub(crate) disorder: u64,
    /// Records of the wrong size.
    pub(crate) bad_len: u64,
    /// Records on a channel of another writer.
    pub(crate) foreign: u64,
    /// 8 B records read in batches that were on another writer's channel or out of order
    /// ([`Tally::add_longs`]).
    pub(crate) foreign_or_disorder: u64,
}

impl Tally {
    /// [`Tally::add`] for a batch of records of one channel, with the tally and the
    /// channel's sequence in locals for the batch (registers, where the per-record callback
    /// of `drain_records` loaded and stored them through its captures on every record).
    #[inline]
    pub(crate) fn add_batch<'a>(
        &mut self,
        records: impl Iterator<Item = &'a [u8]>,
        size: usize,
        next: &mut u64,
        writer: u32,
    ) {
        if size == LONG {
            return self.add_longs(records, next, writer);
        }
        let mut t = *self;
        let mut n = *next;
        for data in records {
            t.add(data, size, &mut n, writer);
        }
        *self = t;
        *next = n;
    }

    /// [`Tally::add_batch`] for 8 B records: the same checks and checksum per record (the
    /// `u64` case of [`Tally::add`]) with fewer values live in the loop: records and bytes
    /// counted once for the batch, so the loop's state fits the registers beside the
    /// reader's iterator (it spilled to the stack per record). A record of another length
    /// and the rest of the batch go through `add`, after the loop (no call in it).
    #[inline(always)]
    fn add_longs<'a>(&mut self, mut records: impl Iterator<Item = &'a [u8]>, next: &mut u64, writer: u32) {
        // `odd`: records on another writer's channel or out of order (one count for both:
        // two made LLVM pack them into a vector register, a cost per record).
        let (mut longs, mut sum, mut odd) = (0u64, 0u64, 0u64);
        let mut n = *next;
        let mut other = None;
        for data in records.by_ref() {
            let Ok(w) = <[u8; 8]>::try_from(data) else {
                other = Some(data);
                break;
            };
            let v = u64::from_le_bytes(w);
            longs += 1;
            sum = sum.wrapping_add(mix(v, LONG));
            let seq = v & SEQ_MASK;
            odd += u64::from(((v >> SEQ_BITS) as u32 != writer) | (seq < n));
            n = seq + 1;
        }
        self.records += longs;
        self.bytes += longs * LONG as u64;
        self.sum = self.sum.wrapping_add(sum);
        self.foreign_or_disorder += odd;
        *next = n;
        if let Some(data) = other {
            self.add_rest(data, records, next, writer);
        }
    }

    /// The rest of [`Tally::add_longs`]'s batch from a record of another length on, record
    /// by record.
    #[cold]
    #[inline(never)]
    fn add_rest<'a>(&mut self, first: &[u8], records: impl Iterator<Item = &'a [u8]>, next: &mut u64, writer: u32) {
        self.add(first, LONG, next, writer);
        for data in records {
            self.add(data, LONG, next, writer);
        }
    }

    /// Counts and checksums one record read on a channel of writer `writer`; `next` is the
    /// smallest sequence number the channel may carry next.
    // inline(always): left to LLVM it stayed a call per record in `add_batch`'s loop.
    #[inline(always)]
    pub(crate) fn add(&mut self, data: &[u8], size: usize, next: &mut u64, writer: u32) {
        self.records += 1;
        self.bytes += data.len() as u64;
        // A `u64` record's checksum inline (`record_checksum`'s first case): the call it
        // otherwise stays was a tenth of the 8 B case's per-record callback.
        let sum = match <[u8; 8]>::try_from(data) {
            Ok(w) => mix(u64::from_le_bytes(w), LONG),
            Err(_) => record_checksum(data),
        };
        self.sum = self.sum.wrapping_add(sum);
        if data.len() != size || data.len() < 8 {
            self.bad_len += 1;
            return;
        }
        self.check_stamp(word(&data[..8]), next, writer);
    }

    /// Counts and checksums a piece of a record (`Tally::add` for a record read in pieces,
    /// the sum carried in `state`, one per channel): a record is counted with its last
    /// piece. A whole record is `add`ed as it is.
    #[inline]
    pub(crate) fn add_piece(
        &mut self,
        piece: shmflow::record::RecordPiece<'_>,
        size: usize,
        next: &mut u64,
        writer: u32,
        state: &mut PieceSum,
    ) {
        if piece.is_whole() {
            return self.add(piece.bytes, size, next, writer);
        }
        if piece.is_first() {
            *state = PieceSum::default();
        }
        if state.len != piece.at {
            // A piece that does not continue the record: the record is broken.
            self.bad_len += 1;
            *state = PieceSum { len: usize::MAX / 2, ..PieceSum::default() };
            return;
        }
        state.update(piece.bytes);
        if !piece.is_last() {
            return;
        }
        self.records += 1;
        self.bytes += state.len as u64;
        self.sum = self.sum.wrapping_add(mix(state.finish(), state.len));
        if state.len != size || state.len < 8 {
            self.bad_len += 1;
            return;
        }
        self.check_stamp(state.stamp, next, writer);
    }

    /// Checks a record's stamp `v`: its writer and its sequence number on its channel.
    #[inline]
    fn check_stamp(&mut self, v: u64, next: &mut u64, writer: u32) {
        if (v >> SEQ_BITS) as u32 != writer {
            self.foreign += 1;
        }
        let seq = v & SEQ_MASK;
        if seq < *next {
            self.disorder += 1;
        }
        *next = seq + 1;
    }

    pub(crate) fn verify(&self, case: Case, counts: &[u64]) -> Res<()> {
        let fanout = case.shape.fanout();
        let sent: u64 = counts.iter().sum::<u64>() * fanout;
        if self.records != sent {
            return Err(format!("received {} records, the producer sent {sent} (fanout included)", self.records).into());
        }
        if self.bad_len > 0 || self.disorder > 0 || self.foreign > 0 || self.foreign_or_disorder > 0 {
            return Err(format!(
                "{} records of the wrong size, {} out of order on their channel, {} on another writer's channel, {} 8 B records of a batch either",
                self.bad_len, self.disorder, self.foreign, self.foreign_or_disorder
            )
            .into());
        }
        if self.sum != expected_sum(case.size, counts, fanout) {
            return Err("checksum mismatch".into());
        }
        Ok(())
    }
}

/// With SHMFLOW_TPUT_VERBOSE set, says how many records a run moved in all (for
/// normalizing `perf stat` counts per record); whether it is set.
pub(crate) fn verbose(system: System, t: &Tally) -> bool {
    let on = std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some();
    if on {
        eprintln!("  {}: {} records, {} bytes in all", system.name(), t.records, t.bytes);
    }
    on
}

/// Records between two looks at the clock: about 256 KiB of payload, at most 4096.
pub(crate) fn check_every(size: usize) -> u64 {
    ((256 * 1024 / size.max(1)) as u64).clamp(1, 4096)
}

/// CPU time of this process (every thread, user + system) in nanoseconds.
pub(crate) fn process_cpu_ns() -> u64 {
    rusage(libc::RUSAGE_SELF).map_or(0, |u| u.cpu_ns)
}

/// CPU time of the calling thread in nanoseconds.
pub(crate) fn thread_cpu_ns() -> u64 {
    rusage(libc::RUSAGE_THREAD).map_or(0, |u| u.cpu_ns)
}

/// A throughput figure of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    /// Records written per second (a broadcast record counts once).
    pub(crate) records_per_s: f64,
    /// Records read per second (records_per_s times the fanout).
    pub(crate) deliveries_per_s: f64,
    /// records_per_s times the payload bytes.
    pub(crate) gb_per_s: f64,
    /// CPU time of producer and consumer per record written.
    pub(crate) cpu_ns_per_record: f64,
    /// CPU time of producer and consumer per second of the window.
    pub(crate) cpu_cores: f64,
}

/// What the window saw, in the consumer: time, records read, this process's CPU time and
/// the producer's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    pub(crate) at: Instant,
    pub(crate) records: u64,
    pub(crate) cpu_ns: u64,
    pub(crate) peer_ns: Option<u64>,
}

/// What a tick of the window did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    Nothing,
    /// The warm-up ended.
    Opened,
    /// The window closed: stop the producer.
    Closed,
}

/// The measurement window: opens `warm` after `begin`, closes `window` later.
pub(crate) struct Window {
    pub(crate) begin: Instant,
    pub(crate) warm: Duration,
    pub(crate) window: Duration,
    pub(crate) cpu: fn() -> u64,
    /// The producer process, whose CPU time counts too.
    pub(crate) peer: Option<u32>,
    pub(crate) start: Option<Mark>,
    pub(crate) end: Option<Mark>,
}

impl Window {
    pub(crate) fn new(timing: (Duration, Duration), cpu: fn() -> u64, peer: Option<u32>) -> Self {
        Self { begin: Instant::now(), warm: timing.0, window: timing.1, cpu, peer, start: None, end: None }
    }

    pub(crate) fn mark(&self, at: Instant, records: u64) -> Mark {
        Mark { at, records, cpu_ns: (self.cpu)(), peer_ns: self.peer.and_then(proc_cpu_ns) }
    }

    /// Looks at the clock with `records` read so far.
    pub(crate) fn tick(&mut self, records: u64) -> Tick {
        if self.end.is_some() {
            return Tick::Nothing;
        }
        let now = Instant::now();
        match self.start {
            None => {
                if now.duration_since(self.begin) >= self.warm {
                    self.start = Some(self.mark(now, records));
                    return Tick::Opened;
                }
                Tick::Nothing
            }
            Some(s) => {
                if now.duration_since(s.at) >= self.window {
                    self.end = Some(self.mark(now, records));
                    Tick::Closed
                } else {
                    Tick::Nothing
                }
            }
        }
    }

    /// CPU ns per record read in the window, of this process and of the producer (for
    /// the verbose report: which side is the bottleneck).
    pub(crate) fn split_ns_per_record(&self) -> Option<(f64, f64)> {
        let (s, e) = (self.start?, self.end?);
        let read = e.records.saturating_sub(s.records).max(1) as f64;
        let peer = e.peer_ns?.saturating_sub(s.peer_ns?);
        Some((e.cpu_ns.saturating_sub(s.cpu_ns) as f64 / read, peer as f64 / read))
    }

    /// The figure.
    pub(crate) fn rate(&self, case: Case) -> Res<Rate> {
        let (Some(s), Some(e)) = (self.start, self.end) else {
            return Err("the stream ended before the measurement window closed".into());
        };
        let secs = e.at.duration_since(s.at).as_secs_f64();
        let read = (e.records - s.records) as f64;
        let written = read / case.shape.fanout() as f64;
        let own = e.cpu_ns.saturating_sub(s.cpu_ns);
        let cpu = match (self.peer, s.peer_ns, e.peer_ns) {
            (None, _, _) => own as f64,
            (Some(_), Some(a), Some(b)) => (own + b.saturating_sub(a)) as f64,
            _ => f64::NAN,
        };
        Ok(Rate {
            records_per_s: written / secs,
            deliveries_per_s: read / secs,
            gb_per_s: written * case.size as f64 / secs / 1e9,
            cpu_ns_per_record: if written > 0.0 { cpu / written } else { f64::NAN },
            cpu_cores: cpu / 1e9 / secs,
        })
    }
}

/// Stops the producer when the window closed.
pub(crate) fn on_tick(tick: Tick, producer: &mut Producer) -> Res<()> {
    match tick {
        Tick::Nothing | Tick::Opened => Ok(()),
        Tick::Closed => producer.send("stop"),
    }
}

/// Per-record times of large records (at most 1M kept), for their median: on a shared
/// machine the median record is one neither side was descheduled in, so it tells the
/// pipeline's own speed where a rate over the window does not (SHMFLOW_TPUT_VERBOSE).
#[derive(Default)]
pub(crate) struct RecordTimes {
    ns: Vec<u64>,
}

impl RecordTimes {
    /// Runs `f`, keeping its duration.
    pub(crate) fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.push(t0.elapsed());
        out
    }

    /// Keeps one record's duration.
    pub(crate) fn push(&mut self, d: Duration) {
        if self.ns.len() < 1 << 20 {
            self.ns.push(d.as_nanos() as u64);
        }
    }

    /// "median 61.2 µs per record (17.1 GB/s)" for records of `size` bytes.
    pub(crate) fn describe(&self, size: usize) -> String {
        let Some(m) = median(self.ns.iter().map(|&n| n as f64).collect()) else {
            return "no record timed".into();
        };
        format!("median {:.1} µs per record ({:.1} GB/s)", m / 1e3, size as f64 / m)
    }
}

/// Time per record of chunks of records (SHMFLOW_TPUT_VERBOSE): each side's own cost per
/// record, free of the other side. The CPU time per record of a window counts a side's
/// spinning while it waits for the other (both sides spin at first when they wait), and on a
/// shared machine its preemptions too; the fastest chunks (p10) were neither waited nor
/// preempted in.
#[derive(Default)]
pub(crate) struct ChunkTimes {
    /// ns per record of each chunk (at most 1 << 20 chunks kept).
    ns: Vec<f64>,
}

impl ChunkTimes {
    /// A chunk of `records` records took `d`.
    pub(crate) fn push(&mut self, d: Duration, records: u64) {
        if records > 0 && self.ns.len() < 1 << 20 {
            self.ns.push(d.as_nanos() as f64 / records as f64);
        }
    }

    /// "p10 4.12, median 5.03 ns per record (123 chunks)".
    pub(crate) fn describe(&self) -> String {
        let mut v = self.ns.clone();
        if v.is_empty() {
            return "no chunk timed".into();
        }
        v.sort_by(f64::total_cmp);
        format!("p10 {:.2}, median {:.2} ns per record ({} chunks)", v[v.len() / 10], v[v.len() / 2], v.len())
    }
}
