//! The producer's per-record cost alone (issue 14 item 4), measured in one thread so that
//! neither the consumer nor the other processes of a shared machine enter the figure: a
//! `RecordWriter` (round robin over one channel, 100 ms buffer timeout: the throughput
//! bench's 1x1 shape) emits a batch of records, timed; then, untimed, the writer flushes and
//! a gate in the same thread reads the batch back (returning the segments as credit).
//!
//! ```text
//!  [timed]   RecordWriter::emit x BATCH  ──> ResultPartition (12 of its 16 segments)
//!  [untimed] flush_all; SingleInputGate::next x BATCH, checksum
//! ```
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

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, RebalancePartitioner, RecordWriter, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::ShuffleEnvironment;
use std::process::ExitCode;
use std::sync::Arc;

#[path = "common/args.rs"]
mod args;
use args::BenchArgs;
use clap::Parser;

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

/// What the batches of one record kind measured: ns per record, sorted.
struct Figures {
    ns: Vec<f64>,
}

impl Figures {
    fn at(&self, q: f64) -> f64 {
        self.ns[((self.ns.len() - 1) as f64 * q).round() as usize]
    }
}

/// Emits `batches` batches of `batch` records of `record_len` bytes through `emit`, with
/// `window` segments of credit (a batch must fit), reading each back; returns the timed ns
/// per record of each batch.
fn run_kind<R: shmflow::record::Record + ?Sized>(
    batches: usize,
    batch: usize,
    record_len: u64,
    window: u32,
    emit: &mut dyn FnMut(&mut RecordWriter<RebalancePartitioner>, u64) -> shmflow::Result<()>,
    sum_of: fn(&[u8]) -> u64,
    expected_sum: fn(u64) -> u64,
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
    let mut gate = env.create_input_gate(&gcfg)?;
    let mut ns = Vec::with_capacity(batches);
    let mut i = 0u64;
    for _ in 0..batches {
        let first = i;
        let t0 = Instant::now();
        for _ in 0..batch {
            emit(&mut w, i)?;
            i += 1;
        }
        ns.push(t0.elapsed().as_nanos() as f64 / batch as f64);
        w.flush_all()?;
        let mut sum = 0u64;
        for _ in 0..batch {
            match gate.next(T)? {
                GateItem::Record { data, .. } => sum = sum.wrapping_add(sum_of(data)),
                other => return Err(format!("unexpected {other:?}").into()),
            }
        }
        let want = (first..i).fold(0u64, |a, k| a.wrapping_add(expected_sum(k)));
        if sum != want {
            return Err(format!("batch from record {first}: checksum {sum:#x}, expected {want:#x}").into());
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
    Ok(Figures { ns })
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
    Figures { ns }
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
    let long = run_kind::<u64>(batches, batch, 8, 16, &mut |w, i| w.emit(&i), u64_of, |k| k)?;
    let mut rec = [0u8; 16];
    let bytes = run_kind::<[u8]>(
        batches,
        batch * 12 / 20,
        16,
        16,
        &mut |w, i| {
            rec[..8].copy_from_slice(&i.to_le_bytes());
            w.emit(&rec[..])
        },
        u64_of,
        |k| k,
    )?;
    // 1 MiB records: 33 segments each, written across them (one record a batch).
    let mut big = vec![7u8; MIB];
    let large = run_kind::<[u8]>(
        batches,
        1,
        MIB as u64,
        40,
        &mut |w, i| {
            big[..8].copy_from_slice(&i.to_le_bytes());
            w.emit(&big[..])
        },
        u64_of,
        |k| k,
    )?;
    // The same from a page-aligned source (an mmap'd file, an aligned allocation): the
    // segment's copy then lands a few bytes above the source modulo 4 KiB.
    let mut backing = vec![7u8; MIB + 4096];
    let skip = (4096 - backing.as_ptr() as usize % 4096) % 4096;
    let aligned = &mut backing[skip..skip + MIB];
    let large_aligned = run_kind::<[u8]>(
        batches,
        1,
        MIB as u64,
        40,
        &mut |w, i| {
            aligned[..8].copy_from_slice(&i.to_le_bytes());
            w.emit(&aligned[..])
        },
        u64_of,
        |k| k,
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
    )?;
    let copy = memcpy_segments(batches, &big);
    println!("| record | min ns | p10 ns | median ns | p10 M rec/s |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("8 B (u64)", &long),
        ("16 B ([u8])", &bytes),
        ("1 MiB ([u8])", &large),
        ("1 MiB, page-aligned source", &large_aligned),
        ("1 MiB, source 8 B below", &large_near),
        ("1 MiB memcpy", &copy),
    ] {
        println!("| {name} | {:.2} | {:.2} | {:.2} | {:.3} |", f.at(0.0), f.at(0.1), f.at(0.5), 1e3 / f.at(0.1));
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
