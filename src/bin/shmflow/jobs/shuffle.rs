//! `shmflow run shuffle` (records keyed by sequence number through one exchange) and its
//! `--latency` variant (stamped records at a fixed rate, latency recorded by the sinks).

use super::output::merge_parts;
use super::synthetic::{pattern_mismatches, write_pattern, Synthetic};
use super::wordcount::part_path;
use shmflow::partition::SelectorKind;
use shmflow::record::{FromRecord, Record};
use shmflow::runtime::{Collector, JobBuilder, JobGraph, Source, SourceContext, TaskInfo};
use shmflow::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct ShuffleSink {
    path: PathBuf,
    /// Records and the wrapping sum of their sequence numbers, in [`SINK_LANES`] lanes
    /// picked by bits of the sequence number and added up at the end: consecutive records
    /// mostly update different lanes, so the per-record additions do not wait on each
    /// other through memory (one pair of counters, updated in place, was a chain of
    /// store-to-load forwards that bounded the 16 B job's sink).
    lanes: [[u64; 2]; SINK_LANES],
    bad: u64,
    /// Busy work per record (to play a slow downstream operator).
    work_ns: u64,
}

/// Spins for `ns` nanoseconds: the busy work that plays a slow operator (out of line, so
/// the jobs without it keep a short record loop).
#[inline(never)]
fn busy_work(ns: u64) {
    let until = shmflow::sync::now_nanos().saturating_add(ns);
    // Ends when the clock passes `until`.
    while shmflow::sync::now_nanos() < until {
        std::hint::spin_loop();
    }
}

impl Collector<Synthetic> for ShuffleSink {
    #[inline]
    fn collect(&mut self, r: Synthetic) -> Result<()> {
        if self.work_ns > 0 {
            busy_work(self.work_ns);
        }
        // Bits 1-2: rebalance deals every other record of a generator to a sink, so bit 0
        // is constant there.
        let lane = &mut self.lanes[(r.seq >> 1) as usize % SINK_LANES];
        lane[0] += 1;
        lane[1] = lane[1].wrapping_add(r.seq);
        if r.bad != 0 {
            self.bad += u64::from(r.bad);
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        let (records, seq_sum) = self.totals();
        std::fs::write(&self.path, format!("{records}\t{seq_sum}\t{}\n", self.bad))
            .map_err(|e| Error::Io { op: "writing the shuffle result".into(), source: e })
    }
}

/// How many counter lanes a shuffle sink keeps (see [`ShuffleSink`]).
const SINK_LANES: usize = 4;

impl ShuffleSink {
    fn new(path: PathBuf, work_ns: u64) -> Self {
        Self { path, lanes: [[0; 2]; SINK_LANES], bad: 0, work_ns }
    }

    /// Records counted and the wrapping sum of their sequence numbers.
    fn totals(&self) -> (u64, u64) {
        self.lanes.iter().fold((0, 0), |(n, sum), l| (n + l[0], sum.wrapping_add(l[1])))
    }
}

/// The capacity-planning job: `parallelism` generators of `records` records in all, of
/// `payload` bytes, through an exchange of `selector` into `parallelism` counting and
/// checksumming sinks.
/// `work_ns` = (source, sink) busy work per record: plays a slow upstream or downstream
/// operator.
pub fn shuffle_job(
    records: u64,
    payload: u32,
    selector: SelectorKind,
    parallelism: u32,
    dir: PathBuf,
    work_ns: (u64, u64),
) -> JobGraph {
    let (source_work_ns, sink_work_ns) = work_ns;
    let payload = payload.max(8);
    let stream = JobBuilder::new("shuffle", parallelism)
        .source_with("generator", ShuffleSource { records, payload, work_ns: source_work_ns });
    let sink = shuffle_sink(dir, sink_work_ns);
    match selector {
        SelectorKind::KeyHash => stream.key_by(|s: &Synthetic| &s.seq).into_stream().sink("count and checksum", sink),
        SelectorKind::Rebalance => stream.rebalance(None).sink("count and checksum", sink),
        SelectorKind::Rescale => stream.rescale(None).sink("count and checksum", sink),
        SelectorKind::Broadcast => stream.broadcast(None).sink("count and checksum", sink),
        SelectorKind::Forward => stream.forward().sink("count and checksum", sink),
        SelectorKind::Global => stream.global().sink("count and checksum", sink),
    }
}

/// The shuffle job's generator: subtask `i` emits its share of `0..records`.
struct ShuffleSource {
    records: u64,
    payload: u32,
    work_ns: u64,
}

impl Source<Synthetic> for ShuffleSource {
    fn run<C: Collector<Synthetic>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
        let info = ctx.info;
        // u128: `records * p` must not wrap.
        let share = |k: u32| (u128::from(self.records) * u128::from(k) / u128::from(info.parallelism)) as u64;
        let (seqs, len) = (share(info.subtask)..share(info.subtask + 1), self.payload);
        if self.work_ns == 0 {
            // The loop without busy work: the record is all it does.
            for seq in seqs {
                out.collect(Synthetic { seq, len, bad: 0 })?;
            }
            return Ok(());
        }
        for seq in seqs {
            busy_work(self.work_ns);
            out.collect(Synthetic { seq, len, bad: 0 })?;
        }
        Ok(())
    }
}

fn shuffle_sink(dir: PathBuf, work_ns: u64) -> impl Fn(&TaskInfo) -> Result<ShuffleSink> + Send + Sync + Clone {
    let dir = Arc::new(dir);
    move |info| Ok(ShuffleSink::new(part_path(&dir, info), work_ns))
}

/// Set in a warm-up record's stamp (not measured): the other bits are its generator's
/// schedule start, from which a sink knows when each later record of that generator was
/// due. `CLOCK_MONOTONIC` nanoseconds stay below it (292 years of uptime).
pub const WARM_UP: u64 = 1 << 63;

/// A stamped record of the latency shuffle (`run shuffle --latency`): a sequence number,
/// the generator's monotonic clock when it emitted the record (or, in a warm-up record,
/// [`WARM_UP`] and its schedule start), then the payload pattern of [`Synthetic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamped {
    /// Sequence number (also the key).
    pub seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at emission (one clock for every process of the host);
    /// for warm-up records [`WARM_UP`] | the generator's schedule start.
    pub stamp: u64,
    /// Record bytes (at least 16).
    pub len: u32,
    /// Payload bytes that did not match the pattern (after decoding).
    pub bad: u32,
}

impl Stamped {
    /// The schedule start a warm-up record carries; `None` for a measured record.
    pub fn warm_up_start(&self) -> Option<u64> {
        (self.stamp & WARM_UP != 0).then_some(self.stamp & !WARM_UP)
    }
}

impl Record for Stamped {
    fn serialized_len(&self) -> usize {
        self.len as usize
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.stamp.to_le_bytes());
        write_pattern(self.seq, &mut out[16..]);
    }
}

impl<'a> FromRecord<'a> for Stamped {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        let Some((head, payload)) = bytes.split_first_chunk::<16>() else {
            return Err(super::synthetic::short_record("latency shuffle record", bytes.len(), 16));
        };
        let (seq, stamp) = head.split_at(8);
        let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
        let stamp = u64::from_le_bytes(stamp.try_into().unwrap_or_default());
        Ok(Stamped { seq, stamp, len: bytes.len() as u32, bad: pattern_mismatches(seq, payload) })
    }
}

/// The latency shuffle's send schedule, which generators and sinks both know: generator
/// `g` of `parallelism` sends the sequence numbers [`share(g)`](Self::share) of
/// `0..records`, its `k`-th record due `k` intervals after its start (an interval:
/// `parallelism / rate` seconds); the first tenth of each share is warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSchedule {
    records: u64,
    parallelism: u32,
    interval: u64,
}

impl RateSchedule {
    /// `records` in all from `parallelism` generators at `rate` records per second in all
    /// (0 counts as 1, for both).
    pub fn new(records: u64, parallelism: u32, rate: u64) -> Self {
        let parallelism = parallelism.max(1);
        Self { records, parallelism, interval: u64::from(parallelism).saturating_mul(1_000_000_000) / rate.max(1) }
    }

    /// Where generator `g`'s share starts (`g` = parallelism: the end of the last).
    fn bound(&self, g: u32) -> u64 {
        // u128: `records * g` must not wrap.
        (u128::from(self.records) * u128::from(g) / u128::from(self.parallelism)) as u64
    }

    /// The sequence numbers generator `g` sends.
    pub fn share(&self, g: u32) -> std::ops::Range<u64> {
        self.bound(g.min(self.parallelism))..self.bound(g.saturating_add(1).min(self.parallelism))
    }

    /// How many records at the start of generator `g`'s share are warm-up.
    pub fn warm_up(&self, g: u32) -> u64 {
        let s = self.share(g);
        (s.end - s.start) / 10
    }

    /// The generator that sends `seq` (`None` past the end: a peer's bad record).
    pub fn generator_of(&self, seq: u64) -> Option<u32> {
        if seq >= self.records {
            return None;
        }
        // bound(g) <= seq for this first guess; the share holding `seq` is this one or a
        // later one (empty shares sit at one bound when records < parallelism).
        let mut g = (u128::from(seq) * u128::from(self.parallelism) / u128::from(self.records)) as u32;
        // Bounded: g < parallelism, since bound(parallelism) = records > seq.
        while self.bound(g + 1) <= seq {
            g += 1;
        }
        Some(g)
    }

    /// Generator `g`'s start at or after `now` (nanoseconds of the monotonic clock, which
    /// every process reads alike): the first instant congruent to `g` parallelism-ths of an
    /// interval modulo the interval, so the generators' records are due staggered evenly
    /// through each interval instead of at whatever phase each happened to start.
    pub fn staggered_start(&self, g: u32, now: u64) -> u64 {
        if self.interval == 0 {
            return now;
        }
        let phase = self.interval / u64::from(self.parallelism) * u64::from(g.min(self.parallelism - 1));
        let base = now - now % self.interval + phase;
        if base >= now {
            base
        } else {
            base.saturating_add(self.interval)
        }
    }

    /// When the `k`-th record of a generator that started at `start` is due.
    pub fn due(&self, start: u64, k: u64) -> u64 {
        start.saturating_add(k.saturating_mul(self.interval))
    }

    /// When record `seq` was due, given its generator's start (`None` past the end).
    pub fn due_of(&self, seq: u64, start_of: impl FnOnce(u32) -> Option<u64>) -> Option<u64> {
        let g = self.generator_of(seq)?;
        Some(self.due(start_of(g)?, seq - self.share(g).start))
    }
}

/// How long before a record is due the generator stops sleeping and spins: the sleep is
/// set to end this early, so that a wake-up a little late still sends on time.
const SPIN_BEFORE_DUE_NS: u64 = 3_000;

/// The latency shuffle's generator: subtask `g` emits its share of `0..records` on its
/// [`RateSchedule`], each stamped right before it is emitted, from a start staggered
/// against the other generators' ([`RateSchedule::staggered_start`]): a generator's wake-up
/// and emit keep its core from the sink that shares it for a few µs, and generators that
/// happened to start in phase sent each record to the other core's sink while that core's
/// generator had it (10k rec/s, p=2, pinned, 3 interleaved rounds at load 8-39, p99 of
/// the stamped latency: in phase 8.4-13.2 µs, staggered 3.2-4.1 µs, each generator's own
/// start as before 3.0-14.6 µs). Before it waits for a record
/// that is not due yet it flushes what it wrote, so no record waits for the buffer timeout
/// while the generator waits, and yields its core once so that a sink on the same core
/// reads it at once; it sleeps to an absolute deadline [`SPIN_BEFORE_DUE_NS`] before the
/// record is due (with a timer slack of 1 ns, not the default 50 µs) and spins for the
/// rest. Warm-up records carry [`WARM_UP`] and the schedule's start instead of a stamp.
struct RateSource {
    records: u64,
    payload: u32,
    rate: u64,
}

impl Source<Stamped> for RateSource {
    fn run<C: Collector<Stamped>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
        let info = ctx.info;
        let schedule = RateSchedule::new(self.records, info.parallelism, self.rate);
        let share = schedule.share(info.subtask);
        let warm = schedule.warm_up(info.subtask);
        shmflow::sync::set_precise_timers();
        let start = schedule.staggered_start(info.subtask, shmflow::sync::now_nanos());
        let mut last_stamp = None;
        for (k, seq) in share.enumerate() {
            wait_until_due(schedule.due(start, k as u64), last_stamp, out)?;
            let stamp = if (k as u64) < warm { WARM_UP | start } else { shmflow::sync::now_nanos() };
            last_stamp = (stamp & WARM_UP == 0).then_some(stamp);
            out.collect(Stamped { seq, stamp, len: self.payload, bad: 0 })?;
        }
        Ok(())
    }
}

/// Co-scheduled, how long the generator polls its slice's sinks between two yields of its
/// core (the spinning wait's interval).
const CO_YIELD_NS: u64 = 20_000;

/// How long after the last stamp a record must be due for the generator to take it as not
/// due yet without reading the clock (the emit between them takes ~0.15 µs).
const STAMP_HINT_NS: u64 = 2_000;

/// The generator's wait for a record's due time (see [`RateSource`]); returns at once when
/// it is due already (a late generator catches up without waiting). `stamp` is the clock
/// as read before the last record was emitted, if it was: a record due well after it is
/// not due yet, so the flush and the yield to a sink on this core come without a clock
/// read (~55 ns here) between them and the record.
fn wait_until_due<C: Collector<Stamped>>(due: u64, stamp: Option<u64>, out: &mut C) -> Result<()> {
    let mut now = match stamp {
        Some(t) if due.saturating_sub(t) > STAMP_HINT_NS => t,
        _ => shmflow::sync::now_nanos(),
    };
    let mut flushed = false;
    let mut last_yield = now;
    // Ends when the clock passes `due`.
    loop {
        if now >= due {
            return Ok(());
        }
        // Flush before any wait, also a spin: when gaps are too short to sleep through
        // the generator never sleeps, so a flush only before sleeping left every record to
        // the buffer timeout (p50 52 ms at 100 ms).
        if !flushed {
            out.flush()?;
            flushed = true;
            // Then give the core away once: a sink that shares it (more tasks than cores,
            // or pinned slices) reads what was just flushed at once, instead of after the
            // sleep's system call and timer set-up (pinned, 2 vCPUs: p90 8.3 -> 2.4 µs;
            // rechecked in session 11 with staggered generators, 4 interleaved rounds at
            // load 14-94: p50 / p99 1.98-2.17 / 4.7-5.5 µs with it, 2.75-4.10 / 13.6-16.1
            // without).
            // Co-scheduled (`--co-schedule`), the sink of this slice takes its turn here
            // instead, on this thread.
            if shmflow::runtime::take_turns().is_none() {
                shmflow::sync::yield_now();
            }
        } else if shmflow::runtime::take_turns().is_some() {
            // Co-scheduled: the sinks of this slice read in this thread's turns, so it
            // polls them until the record is due rather than sleep (and gives the core away
            // every ~20 µs, as a spinning wait does).
            if now.wrapping_sub(last_yield) >= CO_YIELD_NS {
                shmflow::sync::yield_now();
                last_yield = shmflow::sync::now_nanos();
            }
        } else if due - now > SPIN_BEFORE_DUE_NS {
            // Sleep through the gap rather than spin: a spinning generator took a core the
            // sinks needed (4 tasks on 2 cores: p99 1.7-2.3 ms from time slices).
            shmflow::sync::sleep_until(due - SPIN_BEFORE_DUE_NS);
        } else {
            std::hint::spin_loop();
        }
        now = shmflow::sync::now_nanos();
    }
}

/// The latency shuffle's sink: counts and checks like the throughput sink, and records
/// each measured record's latency twice, in histograms written next to the part file when
/// the input ends (hdrhistogram's V2 format): its arrival minus its stamp (`lat-NNN.hdr`,
/// what Flink's latency markers and ShuffleBench measure) and its arrival minus when it
/// was due on its generator's schedule (`due-NNN.hdr`: a generator that woke late or fell
/// behind counts too, so coordinated omission does not hide it; for generators whose
/// warm-up told this sink their start).
struct LatencySink {
    sink: ShuffleSink,
    hist: hdrhistogram::Histogram<u64>,
    from_due: hdrhistogram::Histogram<u64>,
    schedule: RateSchedule,
    /// Each generator's schedule start, once one of its warm-up records came here.
    starts: Vec<Option<u64>>,
    /// Where `hist` and `from_due` go.
    paths: (PathBuf, PathBuf),
}

impl Collector<Stamped> for LatencySink {
    #[inline]
    fn collect(&mut self, r: Stamped) -> Result<()> {
        if let Some(start) = r.warm_up_start() {
            let g = self.schedule.generator_of(r.seq);
            if let Some(s) = g.and_then(|g| self.starts.get_mut(g as usize)) {
                *s = Some(start);
            }
        } else {
            let now = shmflow::sync::now_nanos();
            // A stamp from the future (a peer's bad clock word) counts as 0 ns.
            self.hist.saturating_record(now.saturating_sub(r.stamp));
            let starts = &self.starts;
            if let Some(due) = self.schedule.due_of(r.seq, |g| starts.get(g as usize).copied().flatten()) {
                self.from_due.saturating_record(now.saturating_sub(due));
            }
        }
        self.sink.collect(Synthetic { seq: r.seq, len: r.len, bad: r.bad })
    }
    fn finish(&mut self) -> Result<()> {
        write_histogram(&self.hist, &self.paths.0)?;
        write_histogram(&self.from_due, &self.paths.1)?;
        self.sink.finish()
    }
}

fn new_histogram() -> Result<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| Error::Invalid { what: "latency histogram", detail: e.to_string() })
}

fn write_histogram(h: &hdrhistogram::Histogram<u64>, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    use hdrhistogram::serialization::Serializer;
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| Error::Invalid { what: "latency histogram", detail: format!("serializing: {e}") })?;
    std::fs::write(path, bytes).map_err(|e| Error::Io { op: format!("writing {}", path.display()), source: e })
}

/// The latency shuffle (`run shuffle --latency --rate N`): generators emit `records` stamped
/// records of `payload` bytes (at least 16) at `rate` records per second in all, through an
/// exchange of `selector` (key hash or rebalance) into sinks that histogram each record's
/// latency across the exchange (Flink's latency markers, ShuffleBench `--latency true
/// --rate N`), and from when it was due. Read the result with [`latency_histogram`] and
/// [`shuffle_totals`].
pub fn shuffle_latency_job(
    records: u64,
    payload: u32,
    selector: SelectorKind,
    parallelism: u32,
    dir: PathBuf,
    rate: u64,
) -> JobGraph {
    let source = RateSource { records, payload: payload.max(16), rate: rate.max(1) };
    let stream = JobBuilder::new("shuffle-latency", parallelism).source_with("rate-limited generator", source);
    let dir = Arc::new(dir);
    let sink = move |info: &TaskInfo| -> Result<LatencySink> {
        Ok(LatencySink {
            sink: ShuffleSink::new(part_path(&dir, info), 0),
            hist: new_histogram()?,
            from_due: new_histogram()?,
            schedule: RateSchedule::new(records, info.parallelism, rate),
            starts: vec![None; info.parallelism as usize],
            paths: (
                dir.join(format!("{}{:03}.hdr", Latency::FromStamp.prefix(), info.subtask)),
                dir.join(format!("{}{:03}.hdr", Latency::FromDue.prefix(), info.subtask)),
            ),
        })
    };
    match selector {
        SelectorKind::KeyHash => stream.key_by(|s: &Stamped| &s.seq).into_stream().sink("latency histogram", sink),
        _ => stream.rebalance(None).sink("latency histogram", sink),
    }
}

/// Which latency of the latency shuffle's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Arrival minus the stamp taken when the record was emitted.
    FromStamp,
    /// Arrival minus when the record was due on its generator's schedule.
    FromDue,
}

impl Latency {
    fn prefix(self) -> &'static str {
        match self {
            Latency::FromStamp => "lat-",
            Latency::FromDue => "due-",
        }
    }
}

/// The latency histograms (`which` of them) of every sink under `dir`, merged
/// (nanoseconds).
///
/// # Errors
/// I/O errors, or a histogram file that does not decode.
pub fn latency_histogram(dir: &Path, which: Latency) -> Result<hdrhistogram::Histogram<u64>> {
    let mut all = new_histogram()?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Io { op: format!("listing {}", dir.display()), source: e })?;
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(which.prefix())) {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::Io { op: format!("reading {}", p.display()), source: e })?;
        let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| Error::Invalid { what: "latency histogram", detail: format!("{}: {e:?}", p.display()) })?;
        all.add(&h).map_err(|e| Error::Invalid { what: "latency histogram", detail: format!("merging: {e:?}") })?;
    }
    Ok(all)
}

/// Sums the shuffle sinks' part files: (records, sum of sequence numbers, bad bytes).
///
/// # Errors
/// I/O errors or malformed part files.
pub fn shuffle_totals(dir: &Path) -> Result<(u64, u64, u64)> {
    let mut t = (0u64, 0u64, 0u64);
    for l in merge_parts(dir, None)? {
        let s = String::from_utf8_lossy(&l);
        let v: Vec<u64> = s.split('\t').filter_map(|x| x.parse().ok()).collect();
        if v.len() != 3 {
            return Err(Error::Invalid { what: "shuffle result", detail: format!("malformed line {s:?}") });
        }
        t = (t.0.saturating_add(v[0]), t.1.wrapping_add(v[1]), t.2.saturating_add(v[2]));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::{LatencySink, RateSchedule, RateSource, ShuffleSink, Stamped, WARM_UP};
    use shmflow::runtime::{Collector, Source, SourceContext, TaskInfo};

    #[test]
    fn the_rate_schedule_deals_every_record_to_one_generator_and_spaces_them_evenly() {
        for (records, parallelism) in [(1000, 2), (7, 3), (2, 5), (1, 1), (10_001, 4), (0, 2)] {
            let s = RateSchedule::new(records, parallelism, 10_000);
            let mut next = 0;
            for g in 0..parallelism {
                let share = s.share(g);
                assert_eq!(share.start, next, "shares must be contiguous ({records}, {parallelism})");
                next = share.end;
                for seq in share {
                    assert_eq!(s.generator_of(seq), Some(g), "seq {seq} of {records} over {parallelism}");
                }
            }
            assert_eq!(next, records, "the shares must cover every record");
            assert_eq!(s.generator_of(records), None, "past the end");
            assert_eq!(s.generator_of(u64::MAX), None, "a bad record");
        }
        // 10,000 records/s in all from 2 generators: each sends one every 200 µs.
        let s = RateSchedule::new(1000, 2, 10_000);
        assert_eq!(s.due(5_000, 0), 5_000);
        assert_eq!(s.due(5_000, 3), 5_000 + 3 * 200_000);
        // Record 503 is generator 1's 4th (its share starts at 500).
        assert_eq!(s.due_of(503, |g| (g == 1).then_some(7_000)), Some(7_000 + 3 * 200_000));
        assert_eq!(s.due_of(3, |g| (g == 1).then_some(7_000)), None, "generator 0's start is not known");
        assert_eq!(s.warm_up(0), 50);
        // Rate 0 counts as 1 per second, parallelism 0 as 1: nothing divides by zero.
        assert_eq!(RateSchedule::new(10, 0, 0).due(0, 2), 2_000_000_000);
    }

    #[test]
    fn generators_start_staggered_evenly_through_the_interval_at_or_after_now() {
        for (parallelism, rate) in [(2u32, 10_000u64), (3, 7_000), (1, 10_000), (4, 3)] {
            let s = RateSchedule::new(100, parallelism, rate);
            let interval = s.interval;
            for now in [0u64, 1, interval - 1, interval, 123_456_789_012, u64::MAX / 2] {
                for g in 0..parallelism {
                    let start = s.staggered_start(g, now);
                    assert!(start >= now && start - now < interval, "g {g} now {now}: start {start}");
                    assert_eq!(start % interval, interval / u64::from(parallelism) * u64::from(g), "g {g} now {now}");
                }
            }
        }
        // A rate above 1 record per ns per generator leaves no interval to stagger in.
        assert_eq!(RateSchedule::new(10, 2, u64::MAX).staggered_start(1, 77), 77);
    }

    #[test]
    fn the_latency_sink_measures_from_the_schedule_only_once_a_warm_up_record_told_it_the_start() {
        let dir = std::env::temp_dir();
        let info = TaskInfo { job: "t".into(), vertex: 1, vertex_name: "s".into(), subtask: 0, parallelism: 2 };
        let mut sink = LatencySink {
            sink: ShuffleSink::new(dir.join("unused"), 0),
            hist: super::new_histogram().unwrap(),
            from_due: super::new_histogram().unwrap(),
            schedule: RateSchedule::new(100, info.parallelism, 1000),
            starts: vec![None; 2],
            paths: (dir.join("unused-lat"), dir.join("unused-due")),
        };
        let start = shmflow::sync::now_nanos();
        let rec = |seq, stamp| Stamped { seq, stamp, len: 16, bad: 0 };
        // Generator 1 (records 50..100): a measured record before its warm-up told us its
        // start counts from its stamp only.
        sink.collect(rec(60, start)).unwrap();
        assert_eq!((sink.hist.len(), sink.from_due.len()), (1, 0));
        // Its warm-up record: not measured, but now its start is known...
        sink.collect(rec(50, WARM_UP | start)).unwrap();
        assert_eq!((sink.hist.len(), sink.from_due.len()), (1, 0));
        assert_eq!(sink.starts, vec![None, Some(start)]);
        sink.collect(rec(61, start)).unwrap();
        assert_eq!((sink.hist.len(), sink.from_due.len()), (2, 1));
        // ...generator 0's is not; and a record past the end (a peer's bad word) is
        // measured from its stamp alone, without a panic.
        sink.collect(rec(1, start)).unwrap();
        sink.collect(rec(u64::MAX, start)).unwrap();
        sink.collect(rec(u64::MAX, WARM_UP)).unwrap();
        assert_eq!((sink.hist.len(), sink.from_due.len()), (4, 1));
        assert_eq!(sink.sink.totals().0, 6, "every record is counted");
    }

    #[test]
    fn the_generator_waits_until_due_flushing_first_and_trusts_its_last_stamp_only_as_a_hint() {
        #[derive(Default)]
        struct Flushes(u64);
        impl Collector<Stamped> for Flushes {
            fn collect(&mut self, _: Stamped) -> shmflow::Result<()> {
                Ok(())
            }
            fn flush(&mut self) -> shmflow::Result<()> {
                self.0 += 1;
                Ok(())
            }
        }
        let now = shmflow::sync::now_nanos();
        // Due long ago, no hint: nothing to wait for, nothing flushed.
        let mut out = Flushes::default();
        super::wait_until_due(now - 1_000_000, None, &mut out).unwrap();
        assert_eq!(out.0, 0);
        // A stale hint says "not due": one flush (harmless), then the clock says it is due.
        let mut out = Flushes::default();
        super::wait_until_due(now - 1_000_000, Some(now - 2_000_000), &mut out).unwrap();
        assert_eq!(out.0, 1);
        // Due in 1 ms: the wait returns once the clock has passed it, after one flush.
        let due = shmflow::sync::now_nanos() + 1_000_000;
        let mut out = Flushes::default();
        super::wait_until_due(due, Some(due - 1_000_000), &mut out).unwrap();
        assert!(shmflow::sync::now_nanos() >= due, "returned before the record was due");
        assert_eq!(out.0, 1);
    }

    #[test]
    fn rate_source_flushes_before_it_waits_also_when_it_only_spins() {
        struct Count {
            records: u64,
            flushes: u64,
        }
        impl Collector<Stamped> for Count {
            fn collect(&mut self, _: Stamped) -> shmflow::Result<()> {
                self.records += 1;
                Ok(())
            }
            fn flush(&mut self) -> shmflow::Result<()> {
                self.flushes += 1;
                Ok(())
            }
        }
        let info = TaskInfo { job: "t".into(), vertex: 0, vertex_name: "g".into(), subtask: 0, parallelism: 1 };
        // 10 µs between records: the generator sleeps little or not at all (it spins through
        // the last 3 µs); records must not be left to the buffer timeout either way.
        let source = RateSource { records: 1000, payload: 16, rate: 100_000 };
        let mut out = Count { records: 0, flushes: 0 };
        source.run(&SourceContext::for_test(&info), &mut out).unwrap();
        assert_eq!(out.records, 1000);
        assert!(out.flushes > 0, "the generator waited between records without flushing");
    }
}
