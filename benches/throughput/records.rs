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
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (l, lane) in lanes.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c[l * 8..l * 8 + 8]);
            *lane ^= u64::from_le_bytes(b);
        }
    }
    // The last 0..=31 bytes: whole words, then a zero-padded tail (built byte by byte:
    // a variable-length copy would be a memcpy call per record).
    let mut words = chunks.remainder().chunks_exact(8);
    let mut l = 0;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        lanes[l] ^= u64::from_le_bytes(b);
        l += 1;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let v = tail.iter().enumerate().fold(0u64, |v, (k, &b)| v | u64::from(b) << (8 * k));
        lanes[l] ^= v;
    }
    lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48)
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
}

impl Tally {
    /// Counts and checksums one record read on a channel of writer `writer`; `next` is the
    /// smallest sequence number the channel may carry next.
    #[inline]
    pub(crate) fn add(&mut self, data: &[u8], size: usize, next: &mut u64, writer: u32) {
        self.records += 1;
        self.bytes += data.len() as u64;
        self.sum = self.sum.wrapping_add(record_checksum(data));
        if data.len() != size || data.len() < 8 {
            self.bad_len += 1;
            return;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[..8]);
        let v = u64::from_le_bytes(b);
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
        if self.bad_len > 0 || self.disorder > 0 || self.foreign > 0 {
            return Err(format!(
                "{} records of the wrong size, {} out of order on their channel, {} on another writer's channel",
                self.bad_len, self.disorder, self.foreign
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
