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
    records: u64,
    seq_sum: u64,
    bad: u64,
    /// Busy work per record (to play a slow downstream operator).
    work_ns: u64,
}

impl Collector<Synthetic> for ShuffleSink {
    #[inline]
    fn collect(&mut self, r: Synthetic) -> Result<()> {
        if self.work_ns > 0 {
            let until = shmflow::sync::now_nanos().saturating_add(self.work_ns);
            while shmflow::sync::now_nanos() < until {
                std::hint::spin_loop();
            }
        }
        self.records += 1;
        self.seq_sum = self.seq_sum.wrapping_add(r.seq);
        self.bad += u64::from(r.bad);
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        std::fs::write(&self.path, format!("{}\t{}\t{}\n", self.records, self.seq_sum, self.bad))
            .map_err(|e| Error::Io { op: "writing the shuffle result".into(), source: e })
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
        for seq in share(info.subtask)..share(info.subtask + 1) {
            if self.work_ns > 0 {
                let until = shmflow::sync::now_nanos().saturating_add(self.work_ns);
                while shmflow::sync::now_nanos() < until {
                    std::hint::spin_loop();
                }
            }
            out.collect(Synthetic { seq, len: self.payload, bad: 0 })?;
        }
        Ok(())
    }
}

fn shuffle_sink(dir: PathBuf, work_ns: u64) -> impl Fn(&TaskInfo) -> Result<ShuffleSink> + Send + Sync + Clone {
    let dir = Arc::new(dir);
    move |info| Ok(ShuffleSink { path: part_path(&dir, info), records: 0, seq_sum: 0, bad: 0, work_ns })
}

/// A stamped record of the latency shuffle (`run shuffle --latency`): a sequence number,
/// the generator's monotonic clock when it emitted the record (0: a warm-up record, not
/// measured), then the payload pattern of [`Synthetic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamped {
    /// Sequence number (also the key).
    pub seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at emission (one clock for every process of the host);
    /// 0 for warm-up records.
    pub stamp: u64,
    /// Record bytes (at least 16).
    pub len: u32,
    /// Payload bytes that did not match the pattern (after decoding).
    pub bad: u32,
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

/// The latency shuffle's generator: subtask `i` emits its share of `0..records` at
/// `rate / parallelism` records per second, each stamped right before it is emitted. Before
/// it waits for a record that is not due yet it flushes what it wrote, so no record waits
/// for the buffer timeout while the generator waits, and yields its core once so that a
/// sink on the same core reads it at once; it sleeps while the next record is more than
/// 20 µs away and spins for the rest. The first tenth of each share is warm-up (stamp 0).
struct RateSource {
    records: u64,
    payload: u32,
    rate: u64,
}

impl Source<Stamped> for RateSource {
    fn run<C: Collector<Stamped>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
        let info = ctx.info;
        // u128: `records * p` must not wrap.
        let share = |k: u32| (u128::from(self.records) * u128::from(k) / u128::from(info.parallelism)) as u64;
        let (from, to) = (share(info.subtask), share(info.subtask + 1));
        let warm = (to - from) / 10;
        // Nanoseconds between two records of this subtask.
        let interval = u64::from(info.parallelism).saturating_mul(1_000_000_000) / self.rate.max(1);
        let start = shmflow::sync::now_nanos();
        for (k, seq) in (from..to).enumerate() {
            let due = start.saturating_add((k as u64).saturating_mul(interval));
            let mut flushed = false;
            loop {
                let now = shmflow::sync::now_nanos();
                if now >= due {
                    break;
                }
                // Flush before any wait, also a spin: when gaps are too short to sleep
                // through the generator never sleeps, so a flush only before sleeping left
                // every record to the buffer timeout (p50 52 ms at 100 ms).
                if !flushed {
                    out.flush()?;
                    flushed = true;
                    // Then give the core away once: a sink that shares it (more tasks than
                    // cores, or `--pin-cpus`) reads what was just flushed at once, instead
                    // of after the sleep's system call and timer set-up (pinned, 2 vCPUs:
                    // p90 8.3 -> 2.4 µs).
                    shmflow::sync::yield_now();
                    continue;
                }
                // Sleep through the gap rather than spin: the stamp is taken when the record
                // is emitted, so a late wake-up costs rate accuracy (the schedule is absolute
                // and catches up), not latency; a spinning generator took a core the sinks
                // needed (4 tasks on 2 cores: p99 1.7-2.3 ms from time slices).
                if due - now > 20_000 {
                    std::thread::sleep(std::time::Duration::from_nanos(due - now));
                } else {
                    std::hint::spin_loop();
                }
            }
            let stamp = if (k as u64) < warm { 0 } else { shmflow::sync::now_nanos() };
            out.collect(Stamped { seq, stamp, len: self.payload, bad: 0 })?;
        }
        Ok(())
    }
}

/// The latency shuffle's sink: counts and checks like the throughput sink, and records each
/// measured record's latency (its arrival minus its stamp) in a histogram, written next to
/// the part file as `lat-NNN.hdr` (hdrhistogram's V2 format) when the input ends.
struct LatencySink {
    sink: ShuffleSink,
    hist: hdrhistogram::Histogram<u64>,
    hist_path: PathBuf,
}

impl Collector<Stamped> for LatencySink {
    #[inline]
    fn collect(&mut self, r: Stamped) -> Result<()> {
        if r.stamp != 0 {
            // A stamp from the future (a peer's bad clock word) counts as 0 ns.
            self.hist.saturating_record(shmflow::sync::now_nanos().saturating_sub(r.stamp));
        }
        self.sink.collect(Synthetic { seq: r.seq, len: r.len, bad: r.bad })
    }
    fn finish(&mut self) -> Result<()> {
        let mut bytes = Vec::new();
        use hdrhistogram::serialization::Serializer;
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&self.hist, &mut bytes)
            .map_err(|e| Error::Invalid { what: "latency histogram", detail: format!("serializing: {e}") })?;
        std::fs::write(&self.hist_path, bytes)
            .map_err(|e| Error::Io { op: format!("writing {}", self.hist_path.display()), source: e })?;
        self.sink.finish()
    }
}

/// The latency shuffle (`run shuffle --latency --rate N`): generators emit `records` stamped
/// records of `payload` bytes (at least 16) at `rate` records per second in all, through an
/// exchange of `selector` (key hash or rebalance) into sinks that histogram each record's
/// latency across the exchange (Flink's latency markers, ShuffleBench `--latency true
/// --rate N`). Read the result with [`latency_histogram`] and [`shuffle_totals`].
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
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| Error::Invalid { what: "latency histogram", detail: e.to_string() })?;
        Ok(LatencySink {
            sink: ShuffleSink { path: part_path(&dir, info), records: 0, seq_sum: 0, bad: 0, work_ns: 0 },
            hist,
            hist_path: dir.join(format!("lat-{:03}.hdr", info.subtask)),
        })
    };
    match selector {
        SelectorKind::KeyHash => stream.key_by(|s: &Stamped| &s.seq).into_stream().sink("latency histogram", sink),
        _ => stream.rebalance(None).sink("latency histogram", sink),
    }
}

/// The latency histograms of every sink under `dir`, merged (nanoseconds).
///
/// # Errors
/// I/O errors, or a histogram file that does not decode.
pub fn latency_histogram(dir: &Path) -> Result<hdrhistogram::Histogram<u64>> {
    let mut all = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| Error::Invalid { what: "latency histogram", detail: e.to_string() })?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Io { op: format!("listing {}", dir.display()), source: e })?;
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("lat-")) {
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
    use super::{RateSource, Stamped};
    use shmflow::runtime::{Collector, Source, SourceContext, TaskInfo};

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
        // 10 µs between records: below the 20 µs under which the generator spins instead of
        // sleeping, so it never sleeps; records must not be left to the buffer timeout.
        let source = RateSource { records: 1000, payload: 16, rate: 100_000 };
        let mut out = Count { records: 0, flushes: 0 };
        source.run(&SourceContext::for_test(&info), &mut out).unwrap();
        assert_eq!(out.records, 1000);
        assert!(out.flushes > 0, "the generator waited between records without flushing");
    }
}
