//! 1 MiB records over 32 KiB segments (each covers 33 segments), read reassembled (the
//! default: `SingleInputGate::next`, one copy into the reassembly buffer) against read in
//! place as chunks (`set_spans_in_place` + `next_view`, issue 14 item 3) and streamed piece
//! by piece as the segments arrive (`set_spans_streamed` + `next_piece`), interleaved in one
//! run (the order rotates per round), plus a cache-hot memcpy of one record for scale (not
//! the throughput bench's memcpy bar, which the 1 MiB goal is measured against). The
//! consumer "deserializes" each record by summing its bytes (one pass, as a decoder would);
//! the checksums of all modes must agree.
//!
//! A record read in place holds its segments until the next one is read: the channel gets
//! 40 exclusive credits and the producer 40 segments per channel (a 1 MiB record needs
//! 33), in both modes alike, and the gate may hold 38 while it waits for a record's rest.
//! With Flink's defaults (2 + 8 floating credits, 10 per channel) such a record is copied
//! once the reader has to wait for it; streamed, it is neither copied nor held (the
//! throughput bench's consumer reads it so), and it gets the same 40 credits here.
//!
//! `cargo bench --bench spans [-- --rounds N --records N]` (argv holds `--bench`) is the
//! full run; without `--bench` (as `cargo test --benches` runs it) a smoke run of a few
//! records checks that every mode delivers the same bytes.

use shmflow::gate::{GateItem, GatePiece, GateView, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BroadcastPartitioner, BufferTimeout, RequestBackoff, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::ShuffleEnvironment;
use std::process::ExitCode;

#[path = "common/args.rs"]
mod args;
use args::BenchArgs;
use clap::Parser;

/// The spans bench's flags.
#[derive(Parser)]
#[command(name = "spans", about = "1 MiB records over 32 KiB segments: reassembled vs chunked in place")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    /// Rounds (A/B pairs; default 7 in a full run, 1 in a quick one).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// Records per round (default 256 in a full run, 4 in a quick one).
    #[arg(long, value_name = "N")]
    records: Option<usize>,
}
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const SEG: u32 = 32 << 10;
const T: Option<Duration> = Some(Duration::from_secs(60));
type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Reassembled,
    Chunked,
    Streamed,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Reassembled, Mode::Chunked, Mode::Streamed];

    fn index(self) -> usize {
        match self {
            Mode::Reassembled => 0,
            Mode::Chunked => 1,
            Mode::Streamed => 2,
        }
    }
}

/// What one round measured.
struct Round {
    gbps: f64,
    checksum: u64,
    /// (reassembled, in place) spanning records.
    spanned: (u64, u64),
}

fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| b as u64).sum()
}

fn round(mode: Mode, records: usize, record: &Arc<Vec<u8>>) -> Res<Round> {
    let cfg =
        ArenaConfig { segment_size: SEG, segment_count: 128, max_channels: 4, max_gates: 2, ..ArenaConfig::default() };
    let arena = Arc::new(Arena::heap(&cfg)?);
    let id = ResultPartitionId::new(1, 0);
    let (a, rec) = (arena.clone(), record.clone());
    let producer = std::thread::spawn(move || -> shmflow::Result<()> {
        let env = ShuffleEnvironment::new(a, 0);
        let mut cfg = ResultPartitionConfig::new(id, ResultPartitionType::PipelinedBounded, 1);
        cfg.timeout = T;
        cfg.max_buffers_per_channel = 40;
        cfg.pool_max = cfg.pool_max.max(48);
        let mut w =
            env.create_record_writer::<[u8], _>(&cfg, BroadcastPartitioner, BufferTimeout::from_millis(1).unwrap())?;
        for _ in 0..records {
            w.emit(&rec[..])?;
        }
        w.finish()?;
        w.into_partition().release_when_consumed(T)
    });
    let env = ShuffleEnvironment::new(arena.clone(), 1);
    let mut gcfg = InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }]);
    gcfg.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(2) };
    gcfg.exclusive_credits = 40;
    let mut gate = env.create_input_gate(&gcfg)?;
    gate.set_spans_in_place(mode == Mode::Chunked);
    gate.set_spans_streamed(mode == Mode::Streamed);
    // 2 below the channel's 40 credits and the producer's 40 per channel.
    gate.set_span_hold_budget(38);
    let (mut checksum, mut n) = (0u64, 0usize);
    let t0 = Instant::now();
    // Bounded: the records and the end.
    for _ in 0..records + 2 {
        match mode {
            Mode::Reassembled => match gate.next(T)? {
                GateItem::Record { data, .. } => {
                    checksum = checksum.wrapping_add(sum(data));
                    n += 1;
                }
                GateItem::End => break,
                other => return Err(format!("unexpected {other:?}").into()),
            },
            Mode::Chunked => match gate.next_view(T)? {
                GateView::Record { record, .. } => {
                    for c in record.iter() {
                        checksum = checksum.wrapping_add(sum(c));
                    }
                    n += 1;
                }
                GateView::Item(GateItem::End) => break,
                GateView::Item(other) => return Err(format!("unexpected {other:?}").into()),
            },
            // A record comes in pieces, one per segment it covers (34 at most).
            Mode::Streamed => {
                let mut ended = false;
                for _ in 0..64 {
                    match gate.next_piece(T)? {
                        GatePiece::Record { piece, .. } => {
                            checksum = checksum.wrapping_add(sum(piece.bytes));
                            if piece.is_last() {
                                n += 1;
                                ended = true;
                                break;
                            }
                        }
                        GatePiece::Item(GateItem::End) => return Err(format!("ended after {n} records").into()),
                        GatePiece::Item(other) => return Err(format!("unexpected {other:?}").into()),
                    }
                }
                if !ended {
                    return Err(format!("record {n} did not end within 64 pieces").into());
                }
            }
        }
        if n == records && mode == Mode::Streamed {
            // The end follows the last record.
            match gate.next_piece(T)? {
                GatePiece::Item(GateItem::End) => break,
                other => return Err(format!("unexpected {other:?}").into()),
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let spanned = gate.spanned_records();
    drop(gate);
    producer.join().map_err(|_| "producer panicked")??;
    if n != records {
        return Err(format!("{mode:?}: read {n} of {records} records").into());
    }
    Ok(Round { gbps: (records * record.len()) as f64 / secs / 1e9, checksum, spanned })
}

/// memcpy of the record, record by record, into a 4 MiB ring (cache-hot), for scale.
fn memcpy_round(records: usize, record: &[u8]) -> f64 {
    let mut ring = vec![0u8; 4 * MIB];
    let t0 = Instant::now();
    for i in 0..records {
        let at = (i % 3) * record.len();
        ring[at..at + record.len()].copy_from_slice(record);
        std::hint::black_box(&ring);
    }
    (records * record.len()) as f64 / t0.elapsed().as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spans: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<()> {
    let c = Cli::parse();
    let full = c.bench.full;
    let rounds = c.rounds.unwrap_or(if full { 7 } else { 1 });
    let records = c.records.unwrap_or(if full { 256 } else { 4 });
    let record: Arc<Vec<u8>> = Arc::new((0..MIB).map(|i| (i * 31 + (i >> 12)) as u8).collect());
    let want = sum(&record).wrapping_mul(records as u64);
    // Per mode: GB/s per round, ratio to reassembled per round, (reassembled, in place) counts.
    let mut gbps: [Vec<f64>; 3] = Default::default();
    let mut ratio: [Vec<f64>; 3] = Default::default();
    let mut spanned = [(0u64, 0u64); 3];
    let mut mc = Vec::new();
    for r in 0..rounds {
        // Every mode once, the order rotated per round.
        let mut got = [0.0; 3];
        for k in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(r + k) % Mode::ALL.len()];
            let x = round(mode, records, &record)?;
            if x.checksum != want {
                return Err(format!("{mode:?}: checksum {} != {want}", x.checksum).into());
            }
            let i = mode.index();
            got[i] = x.gbps;
            spanned[i].0 += x.spanned.0;
            spanned[i].1 += x.spanned.1;
        }
        mc.push(memcpy_round(records, &record));
        println!(
            "round {r}: reassembled {:.2} GB/s, chunked {:.2} GB/s, streamed {:.2} GB/s, chunked/reassembled {:.2}, streamed/reassembled {:.2}, memcpy {:.2} GB/s",
            got[0],
            got[1],
            got[2],
            got[1] / got[0],
            got[2] / got[0],
            mc[r]
        );
        for i in 0..3 {
            gbps[i].push(got[i]);
            ratio[i].push(got[i] / got[0]);
        }
    }
    let [m_re, m_ch, m_st] = gbps.map(median);
    let [_, r_ch, r_st] = ratio.map(median);
    let m_mc = median(mc);
    println!(
        "1 MiB records, 32 KiB segments, {records} records x {rounds} rounds (medians): reassembled {m_re:.2} GB/s, \
         chunked in place {m_ch:.2} GB/s, streamed {m_st:.2} GB/s; chunked/reassembled {r_ch:.2}x, \
         streamed/reassembled {r_st:.2}x (medians of per-round ratios); memcpy of one cache-hot record {m_mc:.2} GB/s \
         (scale only: not the throughput bench's memcpy bar)"
    );
    println!(
        "spanning records (reassembled / in place): reassembled mode {} / {}; chunked mode {} / {}; streamed mode {} / {}",
        spanned[0].0, spanned[0].1, spanned[1].0, spanned[1].1, spanned[2].0, spanned[2].1
    );
    if let Some(path) = &c.bench.json {
        let run = if full { "full" } else { "quick" };
        let rec = |system: &str, mode: &str, v: f64| {
            format!(
                "  {{\"bench\":\"spans\",\"run\":\"{run}\",\"system\":\"{system}\",\"mode\":\"{mode}\",\"record_bytes\":{MIB},\"metric\":\"gb_per_s\",\"value\":{v:.3}}}"
            )
        };
        let lines = [
            rec("shmflow", "reassembled", m_re),
            rec("shmflow", "chunked", m_ch),
            rec("shmflow", "streamed", m_st),
            rec("memcpy", "cache-hot", m_mc),
        ];
        std::fs::write(path, format!("[\n{}\n]\n", lines.join(",\n")))?;
    }
    let all = (records * rounds) as u64;
    if spanned[0] != (all, 0) {
        return Err("the default mode read a record in place".into());
    }
    // Within the hold budget every record stays in place, however the threads interleave.
    if spanned[1] != (0, all) {
        return Err("the chunked mode copied a record".into());
    }
    if spanned[2] != (0, all) {
        return Err("the streamed mode copied a record".into());
    }
    Ok(())
}
