//! The producer's per-record cost alone (issue 14 item 4), measured in one thread so that
//! neither the consumer nor the other processes of a shared machine enter the figure: a
//! `RecordWriter` (round robin over one channel, 100 ms buffer timeout: the throughput
//! bench's 1x1 shape) emits a batch of records, timed; then, untimed, the writer flushes and
//! a gate in the same thread reads the batch back (returning the segments as credit).
//!
//! ```text
//!  [timed]   RecordWriter::emit x BATCH  ──> ResultPartition (12 of its 16 segments)
//!            (row "emit_batch": RecordWriter::emit_batch of the BATCH records at once)
//!  [untimed] flush_all; SingleInputGate::next x BATCH, checksum
//! ```
//!
//! Beside each figure, the read-back's ns per record (the consumer's per-record cost in
//! one thread: the throughput bench's batch path, `drain_records`, then `next`). The last
//! rows emit 8 B records whose read-back runs in a thread pinned to another CPU: after
//! each timed batch, never during it (the segments were then last read on that core: what
//! the lines coming back cost the writer), and concurrently with the writes (the
//! throughput bench's 1x1 in two threads; only meaningful on an idle machine).
//!
//! A preempted batch only gets slower, so the figure is the fastest batches (p10 and the
//! minimum, with the median beside them) in ns per record. Records: 8 B (`u64`, Flink's
//! LongValue), 16 B (`[u8]`, as `shmflow run shuffle --payload 16` sends) and 1 MiB (`[u8]`,
//! across 33 segments, 40 segments of credit), the last beside a memcpy of the record into
//! 32 KiB pieces of a ring of 40 (the producer's copy without the protocol).
//!
//! `cargo bench --bench emit [-- --batches N]` (argv holds `--bench`) is the full run;
//! without `--bench` (as `cargo test --benches` runs it) a few batches check that every
//! record comes back with the same checksum.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, RebalancePartitioner, RecordWriter, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::ShuffleEnvironment;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use common::args::BenchArgs;

/// The emit bench's flags.
#[derive(Parser)]
#[command(name = "emit", about = "The producer's ns per record in one thread")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    /// Timed batches per record kind (default 400 in a full run, 4 in a quick one).
    #[arg(long, value_name = "N")]
    batches: Option<usize>,
}
use std::time::{Duration, Instant};

const SEG: u32 = 32 << 10;
const MIB: usize = 1 << 20;
const T: Option<Duration> = Some(Duration::from_secs(10));
type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// What the batches of one record kind measured: ns per record, sorted; and the ns per
/// record of reading each batch back, sorted (in this thread only; else empty).
struct Figures {
    ns: Vec<f64>,
    read_ns: Vec<f64>,
}

impl Figures {
    fn at(&self, q: f64) -> f64 {
        self.ns[((self.ns.len() - 1) as f64 * q).round() as usize]
    }

    /// The read time's quantile `q`, NaN when not measured.
    fn read_at(&self, q: f64) -> f64 {
        self.read_ns.get(((self.read_ns.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(f64::NAN)
    }
}

/// Reads `n` records from `gate` as the throughput bench's consumer does (the batch path,
/// `next` for what it leaves: records that span segments, segment turnover): the sum of
/// `sum_of` over them.
fn read_batch(gate: &mut SingleInputGate, n: usize, sum_of: impl Fn(&[u8]) -> u64) -> Result<u64, String> {
    let mut sum = 0u64;
    let mut left = n;
    // Bounded: each turn reads at least one record or fails.
    while left > 0 {
        let drained = gate
            .drain_records(left, &mut |_, data| {
                sum = sum.wrapping_add(sum_of(data));
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        if drained > 0 {
            left -= drained;
            continue;
        }
        match gate.next(T).map_err(|e| e.to_string())? {
            GateItem::Record { data, .. } => sum = sum.wrapping_add(sum_of(data)),
            other => return Err(format!("unexpected {other:?}")),
        }
        left -= 1;
    }
    Ok(sum)
}

/// Where the batches are read back: in this thread, or in a thread on another CPU
/// ([`Readback::there`]).
enum Readback {
    Here(Box<SingleInputGate>),
    There {
        go: mpsc::Sender<usize>,
        sums: mpsc::Receiver<Result<u64, String>>,
    },
    /// The reader thread reads everything as it comes, concurrently with the writer, and
    /// sends the sum of all once at the end.
    /// `_open` only keeps the reader's gate open until `self` is dropped.
    Streaming {
        _open: mpsc::Sender<usize>,
        sums: mpsc::Receiver<Result<u64, String>>,
    },
}

impl Readback {
    /// A reader thread pinned to CPU `other` (this thread moves to CPU `mine`): the
    /// segments the writer fills were then last read by that CPU, as in the throughput
    /// bench, so each line the writer reaches must first come back from the other core's
    /// caches (the cost the builder's prefetches hide). It reads a batch only after the
    /// batch was timed: on a shared machine the two threads need not run at the same time.
    /// With `stream` (`Some(all records)`), it reads as the writer writes instead, as the
    /// throughput bench's consumer does (a figure for an idle machine: with others on the
    /// CPUs the two threads rarely run at once). The thread ends when `self` is dropped.
    fn there(
        env: &ShuffleEnvironment,
        gcfg: InputGateConfig,
        (mine, other): (usize, usize),
        sum_of: impl Fn(&[u8]) -> u64 + Send + 'static,
        stream: Option<usize>,
    ) -> Res<Self> {
        let (go, go_rx) = mpsc::channel::<usize>();
        let (sum_tx, sums) = mpsc::channel();
        let arena = env.arena().clone();
        std::thread::spawn(move || {
            let gate = common::pin_to(other)
                .map_err(|e| e.to_string())
                .and_then(|()| ShuffleEnvironment::new(arena, 0).create_input_gate(&gcfg).map_err(|e| e.to_string()));
            let mut gate = match gate {
                Ok(g) => g,
                Err(e) => return drop(sum_tx.send(Err(e))),
            };
            let _ = sum_tx.send(Ok(0));
            if let Some(all) = stream {
                let _ = sum_tx.send(read_batch(&mut gate, all, &sum_of));
                // The gate stays until the writer is done (it finishes its partition).
                while go_rx.recv().is_ok() {}
                return;
            }
            // A batch of `n` records per message, its sum back.
            while let Ok(n) = go_rx.recv() {
                if sum_tx.send(read_batch(&mut gate, n, &sum_of)).is_err() {
                    break;
                }
            }
        });
        common::pin_to(mine).map_err(|e| e.to_string())?;
        // The gate exists (or the reader failed) before the first record.
        sums.recv().map_err(|_| "the reader thread ended")??;
        Ok(match stream {
            Some(_) => Self::Streaming { _open: go, sums },
            None => Self::There { go, sums },
        })
    }

    /// Reads the next `n` records: their sum of `sum_of`.
    fn read(&mut self, n: usize, sum_of: impl Fn(&[u8]) -> u64) -> Result<u64, String> {
        match self {
            Self::Here(gate) => read_batch(gate, n, sum_of),
            Self::There { go, sums } => {
                go.send(n).map_err(|_| "the reader thread ended")?;
                sums.recv().map_err(|_| "the reader thread ended")?
            }
            // Everything at once, at the end (`n` is all records then).
            Self::Streaming { sums, .. } => sums.recv().map_err(|_| "the reader thread ended")?,
        }
    }
}

/// Emits `batches` batches of `batch` records of `record_len` bytes through `emit`, with
/// `window` segments of credit (a batch must fit), reading each back (in a thread on CPU
/// `cross.1`, with this one on `cross.0`, when given: [`Readback::there`]; concurrently
/// with the writes when `stream`); returns the timed ns per record of each batch.
#[allow(clippy::too_many_arguments)]
fn run_kind<R: shmflow::record::Record + ?Sized>(
    batches: usize,
    batch: usize,
    // Records one call of `emit` writes (`i..i + per_call`), a divisor of `batch`.
    per_call: usize,
    record_len: u64,
    window: u32,
    // Generic, not `dyn`: the record loop as a writer's own loop, with `emit` inlined (a
    // call per record through a pointer cost 8 B records 40%).
    emit: &mut impl FnMut(&mut RecordWriter<RebalancePartitioner>, u64) -> shmflow::Result<()>,
    // Generic too (`u64_of` itself, not a pointer to it): inlined into the read loop.
    sum_of: impl Fn(&[u8]) -> u64 + Copy + Send + 'static,
    expected_sum: fn(u64) -> u64,
    cross: Option<(usize, usize)>,
    stream: bool,
) -> Res<Figures>
where
    RebalancePartitioner: shmflow::partition::ChannelSelector<R>,
{
    let cfg = ArenaConfig {
        segment_size: SEG,
        segment_count: 2 * window + 16,
        max_channels: 4,
        max_gates: 2,
        ..ArenaConfig::default()
    };
    let arena = Arc::new(Arena::heap(&cfg)?);
    let env = ShuffleEnvironment::new(arena, 0);
    let id = ResultPartitionId::new(1, 0);
    let mut pcfg = ResultPartitionConfig::new(id, ResultPartitionType::PipelinedBounded, 1);
    pcfg.timeout = T;
    pcfg.max_buffers_per_channel = window;
    pcfg.pool_max = pcfg.pool_max.max(window + 4);
    let mut w =
        env.create_record_writer::<R, _>(&pcfg, RebalancePartitioner::new(1), BufferTimeout::from_millis(100)?)?;
    let mut gcfg = InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }]);
    gcfg.exclusive_credits = window;
    let mut readback = match cross {
        Some(cpus) => Readback::there(&env, gcfg, cpus, sum_of, stream.then_some(batches * batch))?,
        None => Readback::Here(Box::new(env.create_input_gate(&gcfg)?)),
    };
    let mut ns = Vec::with_capacity(batches);
    let mut read_ns = Vec::with_capacity(batches);
    let mut i = 0u64;
    for _ in 0..batches {
        let first = i;
        let t0 = Instant::now();
        for _ in 0..batch / per_call {
            emit(&mut w, i)?;
            i += per_call as u64;
        }
        ns.push(t0.elapsed().as_nanos() as f64 / batch as f64);
        w.flush_all()?;
        if matches!(readback, Readback::Streaming { .. }) {
            continue;
        }
        let t1 = Instant::now();
        let sum = readback.read(batch, sum_of)?;
        if matches!(readback, Readback::Here(_)) {
            read_ns.push(t1.elapsed().as_nanos() as f64 / batch as f64);
        }
        let want = (first..i).fold(0u64, |a, k| a.wrapping_add(expected_sum(k)));
        if sum != want {
            return Err(format!("batch from record {first}: checksum {sum:#x}, expected {want:#x}").into());
        }
    }
    if matches!(readback, Readback::Streaming { .. }) {
        let sum = readback.read(batches * batch, sum_of)?;
        let want = (0..i).fold(0u64, |a, k| a.wrapping_add(expected_sum(k)));
        if sum != want {
            return Err(format!("records read concurrently: checksum {sum:#x}, expected {want:#x}").into());
        }
    }
    // The counters the fast path folds per segment add up to what was written.
    let st = w.partition().stats();
    if st.records_out != i || st.bytes_out != i * record_len {
        return Err(format!(
            "stats: {} records, {} bytes; {i} records of {record_len} B written",
            st.records_out, st.bytes_out
        )
        .into());
    }
    w.finish()?;
    let st = w.partition().stats();
    if st.records_out != i || st.bytes_out != i * record_len {
        return Err(
            format!("stats after finish: {} records, {} bytes; {i} written", st.records_out, st.bytes_out).into()
        );
    }
    ns.sort_by(f64::total_cmp);
    read_ns.sort_by(f64::total_cmp);
    Ok(Figures { ns, read_ns })
}

/// memcpy of `rec` into a ring of 40 32 KiB pieces, piece by piece, as the producer copies
/// a record across its segments: ns per record of each round, sorted.
fn memcpy_segments(rounds: usize, rec: &[u8]) -> Figures {
    let mut ring = vec![0u8; 40 * SEG as usize];
    let mut at = 0usize;
    let mut ns = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        for piece in rec.chunks(SEG as usize) {
            if at + piece.len() > ring.len() {
                at = 0;
            }
            ring[at..at + piece.len()].copy_from_slice(piece);
            at += SEG as usize;
        }
        std::hint::black_box(&ring);
        ns.push(t0.elapsed().as_nanos() as f64);
    }
    ns.sort_by(f64::total_cmp);
    Figures { ns, read_ns: Vec::new() }
}

fn u64_of(d: &[u8]) -> u64 {
    d.get(..8).and_then(|b| b.try_into().ok()).map_or(u64::MAX, u64::from_le_bytes)
}

fn run() -> Res<()> {
    let cli = Cli::parse();
    if cli.bench.json.is_some() {
        return Err("--json: this bench prints its table only".into());
    }
    let batches = cli.batches.unwrap_or(if cli.bench.full { 400 } else { 4 });
    // 12 segments' worth of 8-byte records with their 4-byte length.
    let batch = 12 * (SEG as usize / 12) - 16;
    println!("# emit: the producer's ns per record in one thread ({batches} batches of {batch} records)");
    println!("load average: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    let long = run_kind::<u64>(batches, batch, 1, 8, 16, &mut |w, i| w.emit(&i), u64_of, |k| k, None, false)?;
    // The same records through the batch path, a batch per call.
    let long_batch = run_kind::<u64>(
        batches,
        batch,
        batch,
        8,
        16,
        &mut |w, i| w.emit_batch::<u64, _>(i..i + batch as u64).map(|_| ()),
        u64_of,
        |k| k,
        None,
        false,
    )?;
    let mut rec = [0u8; 16];
    let bytes = run_kind::<[u8]>(
        batches,
        batch * 12 / 20,
        1,
        16,
        16,
        &mut |w, i| {
            rec[..8].copy_from_slice(&i.to_le_bytes());
            w.emit(&rec[..])
        },
        u64_of,
        |k| k,
        None,
        false,
    )?;
    // 1 MiB records: 33 segments each, written across them (one record a batch).
    let mut big = vec![7u8; MIB];
    let large = run_kind::<[u8]>(
        batches,
        1,
        1,
        MIB as u64,
        40,
        &mut |w, i| {
            big[..8].copy_from_slice(&i.to_le_bytes());
            w.emit(&big[..])
        },
        u64_of,
        |k| k,
        None,
        false,
    )?;
    // The same from a page-aligned source (an mmap'd file, an aligned allocation): the
    // segment's copy then lands a few bytes above the source modulo 4 KiB.
    let mut backing = vec![7u8; MIB + 4096];
    let skip = (4096 - backing.as_ptr() as usize % 4096) % 4096;
    let aligned = &mut backing[skip..skip + MIB];
    let large_aligned = run_kind::<[u8]>(
        batches,
        1,
        1,
        MIB as u64,
        40,
        &mut |w, i| {
            aligned[..8].copy_from_slice(&i.to_le_bytes());
            w.emit(&aligned[..])
        },
        u64_of,
        |k| k,
        None,
        false,
    )?;
    // And from a source 8 bytes below where each piece lands, modulo 4 KiB: record k starts
    // at byte 4k of a 4 KiB-aligned segment (each takes 1 MiB and its 4-byte length), so a
    // source at 4k - 4 (mod 4 KiB) puts every one of its 33 copies 8 bytes above it, the
    // distance at which `rep movsb` crawls on AMD Zen (`memcpy` of 32 KiB: 9.4 us, not 0.6).
    let mut near = vec![7u8; MIB + 8192];
    let base = (4096 - near.as_ptr() as usize % 4096) % 4096;
    let large_near = run_kind::<[u8]>(
        batches,
        1,
        1,
        MIB as u64,
        40,
        &mut |w, i| {
            let at = base + ((4 * i as usize + 4096 - 4) % 4096);
            let rec = &mut near[at..at + MIB];
            rec[..8].copy_from_slice(&i.to_le_bytes());
            w.emit(&rec[..])
        },
        u64_of,
        |k| k,
        None,
        false,
    )?;
    let copy = memcpy_segments(batches, &big);
    // Last: it pins this thread.
    let mut cross = Vec::new();
    if let Some(cpus) = common::cpu_pair() {
        for (name, stream) in
            [("8 B (u64), read back on another CPU", false), ("8 B (u64), read concurrently on another CPU", true)]
        {
            let f =
                run_kind::<u64>(batches, batch, 1, 8, 16, &mut |w, i| w.emit(&i), u64_of, |k| k, Some(cpus), stream)?;
            cross.push((name, f));
        }
    }
    println!("| record | min ns | p10 ns | median ns | p10 M rec/s | read back: p10 ns | median ns |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, f) in [
        ("8 B (u64)", &long),
        ("8 B (u64), emit_batch", &long_batch),
        ("16 B ([u8])", &bytes),
        ("1 MiB ([u8])", &large),
        ("1 MiB, page-aligned source", &large_aligned),
        ("1 MiB, source 8 B below", &large_near),
        ("1 MiB memcpy", &copy),
    ]
    .into_iter()
    .chain(cross.iter().map(|(name, f)| (*name, f)))
    {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} |",
            f.at(0.0),
            f.at(0.1),
            f.at(0.5),
            1e3 / f.at(0.1),
            f.read_at(0.1),
            f.read_at(0.5)
        );
    }
    println!(
        "1 MiB records: the producer at {:.2}x memcpy's rate into 32 KiB pieces (p10 over p10), {:.2}x from a page-aligned source, {:.2}x from a source 8 B below",
        copy.at(0.1) / large.at(0.1),
        copy.at(0.1) / large_aligned.at(0.1),
        copy.at(0.1) / large_near.at(0.1)
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emit: {e}");
            ExitCode::FAILURE
        }
    }
}
