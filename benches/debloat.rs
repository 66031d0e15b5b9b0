//! Buffer debloating (Flink's FLIP-183) under backpressure: in-flight bytes and checkpoint
//! barrier travel time, with and without debloating, side by side in the same run.
//!
//! ```text
//!  consumer (this process, CPU a)                 producer (this binary re-executed with
//!                                                 SHMFLOW_DEBLOAT_CHILD=1, CPU b)
//!  one gate over 4 channels  <=================== one ResultPartition, 4 subpartitions,
//!  ~20 us busy spin per record (~50k rec/s)       16-byte records round robin (i % 4) as
//!  barrier out of the gate: now - timestamp       fast as it can, and every 100 ms an
//!  sampler thread, every 10 ms: sum over the      aligned barrier stamped now_nanos()
//!  channels of backlog x segment fill in effect
//! ```
//!
//! In-flight bytes: per channel, `backlog` (segments published, not yet released) times the
//! segment fill in effect (`debloat_bytes` when the consumer asked for one, else the segment
//! size). Barrier travel time: `now_nanos()` (CLOCK_MONOTONIC, one clock for every process
//! of the host) when the barrier comes out of the consumer's gate, minus the `timestamp`
//! the producer put in it. Both are measured after a warm-up that lets the debloater
//! converge.
//!
//! `cargo bench --bench debloat [-- --json PATH --no-pin]` (argv holds `--bench`) runs each
//! configuration for a few seconds; without `--bench` (as `cargo test --benches` runs it) a
//! quick smoke runs the three in about 2 s. Every wait is bounded, a watchdog kills a producer
//! that outlives its deadline, a guard kills and reaps it on every exit path, and nothing
//! goes to /dev/shm (memfd arenas only).

use shmflow::event::{CheckpointBarrier, Event};
use shmflow::gate::{DebloatConfig, GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{ResultPartitionConfig, ResultPartitionId, ResultPartitionType};
use shmflow::sync::{now_nanos, Ordering};
use shmflow::ShuffleEnvironment;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use clap::Parser;
use common::args::BenchArgs;
use common::{cpu_model, cpu_pair, die_with_parent, exit_code, pin_to, ready_go_stop, say, stdin_lines, Producer, Res};

/// `shmflow::sync`'s atomics, as clippy.toml asks; the allow is for clippy resolving the
/// re-export to the std type it bans.
#[allow(clippy::disallowed_types)]
type Flag = shmflow::sync::AtomicBool;

/// Its presence makes the process the producer.
const ENV_CHILD: &str = "SHMFLOW_DEBLOAT_CHILD";
/// The CPU the producer pins itself to.
const ENV_CPU: &str = "SHMFLOW_DEBLOAT_CPU";
/// The longest one wait for the other side may take before the run fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
/// A producer that lives longer than this is killed.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
/// How often a waiting consumer looks whether the producer is still alive.
const POLL_SLICE: Duration = Duration::from_millis(100);
const SEGMENT: u32 = 32 * 1024;
const CHANNELS: u32 = 4;
/// Payload bytes of one record.
const RECORD: usize = 16;
/// The producer's barrier interval.
const BARRIER_EVERY: Duration = Duration::from_millis(100);
/// How long the consumer spins per record (~50k records/s).
const SPIN_PER_RECORD: Duration = Duration::from_micros(20);
/// The in-flight sampling interval.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    if std::env::var_os(ENV_CHILD).is_some() {
        exit_code("debloat producer", producer_main())
    } else {
        exit_code("debloat", consumer_main())
    }
}

// ---------------------------------------------------------------------------------------
// The plan

/// The debloat bench's flags.
#[derive(Parser)]
#[command(name = "debloat", about = "Buffer debloating: in-flight bytes and barrier alignment with and without it")]
struct Args {
    #[command(flatten)]
    bench: BenchArgs,
    /// Do not pin the consumer and the producer to CPUs.
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pin: bool,
}

fn parse_args() -> Res<Args> {
    Ok(Args::parse())
}

/// One configuration of the run.
#[derive(Debug, Clone, Copy)]
struct Mode {
    name: &'static str,
    debloat: Option<DebloatConfig>,
}

const MODES: [Mode; 3] = [
    Mode { name: "no-debloat", debloat: None },
    Mode { name: "debloat", debloat: Some(DEFAULT_DEBLOAT) },
    Mode {
        name: "debloat-100ms",
        debloat: Some(DebloatConfig { target: Duration::from_millis(100), ..DEFAULT_DEBLOAT }),
    },
];

/// `DebloatConfig::default()`, as a constant (checked against it at start).
const DEFAULT_DEBLOAT: DebloatConfig = DebloatConfig {
    target: Duration::from_secs(1),
    min_bytes: 1024,
    period: Duration::from_millis(200),
    threshold_percent: 50,
};

struct Plan {
    full: bool,
    warm: Duration,
    window: Duration,
}

impl Plan {
    fn mode(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "smoke"
        }
    }
}

// ---------------------------------------------------------------------------------------
// The consumer

/// What one configuration measured.
struct Outcome {
    mode: Mode,
    inflight: Vec<u64>,
    barrier_ns: Vec<u64>,
    records_per_s: f64,
    /// The segment fill the gate asked for at the end (0: none).
    debloat_bytes: u32,
    /// When (since "go", +- 10 ms) the fill asked of the producer changed, and to what.
    fills: Vec<(Duration, u32)>,
}

fn consumer_main() -> Res<()> {
    let args = parse_args()?;
    if DebloatConfig::default() != DEFAULT_DEBLOAT {
        return Err(format!(
            "DebloatConfig::default() is {:?}, this bench assumes {DEFAULT_DEBLOAT:?}",
            DebloatConfig::default()
        )
        .into());
    }
    let plan = if args.bench.full {
        Plan { full: true, warm: Duration::from_millis(1500), window: Duration::from_secs(4) }
    } else {
        Plan { full: false, warm: Duration::from_millis(300), window: Duration::from_millis(350) }
    };
    let cpus = if args.pin { cpu_pair() } else { None };
    if let Some((mine, _)) = cpus {
        pin_to(mine)?;
    }
    println!("# debloat: in-flight bytes and barrier travel time under backpressure\n");
    println!("- machine: {}", cpu_model());
    match cpus {
        Some((a, b)) => println!("- consumer pinned to CPU {a}, producer process to CPU {b}"),
        None => println!("- not pinned"),
    }
    println!(
        "- mode {}: per configuration {:?} warm-up, then a {:?} window; 1 producer, {CHANNELS} subpartitions \
         (round robin), one gate, {} KiB segments, {RECORD}-byte records, consumer spins {:?} per record, \
         aligned barrier every {:?}; debloat = DebloatConfig::default() {:?}\n",
        plan.mode(),
        plan.warm,
        plan.window,
        SEGMENT / 1024,
        SPIN_PER_RECORD,
        BARRIER_EVERY,
        DEFAULT_DEBLOAT,
    );
    let mut outcomes = Vec::new();
    for mode in MODES {
        let o = run(mode, &plan, cpus).map_err(|e| format!("{}: {e}", mode.name))?;
        outcomes.push(o);
    }
    print_table(&outcomes);
    if let Some(path) = &args.bench.json {
        std::fs::write(path, json_records(&plan, &outcomes)).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn arena_config() -> ArenaConfig {
    ArenaConfig {
        segment_size: SEGMENT,
        segment_count: 256,
        max_channels: 64,
        max_partitions: 16,
        max_gates: 16,
        max_channels_per_gate: 64,
        ..ArenaConfig::default()
    }
}

/// Bytes published but not yet consumed on every channel of the arena (only this run's
/// channels are in use).
fn inflight(arena: &Arena) -> u64 {
    arena
        .channels()
        .iter()
        .map(|c| {
            // Relaxed (both): a sample for a statistic.
            let backlog = u64::from(c.backlog());
            let fill = match c.segment_fill_wanted().unwrap_or(0) {
                0 => SEGMENT,
                n => n.min(SEGMENT),
            };
            backlog * u64::from(fill)
        })
        .sum()
}

/// Spins (no syscall) for `d`.
#[inline]
fn busy_spin(d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn run(mode: Mode, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Outcome> {
    let arena = Arc::new(Arena::create_memfd(&arena_config(), "debloat")?);
    let mut cmd = producer_command(cpus.map(|c| c.1))?;
    arena.inherit_fd_into(&mut cmd)?;
    let mut producer = Producer::spawn(&mut cmd, "debloat", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
    producer.expect_line("ready")?;
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let inputs =
        (0..CHANNELS).map(|c| InputSpec { partition: ResultPartitionId::new(0, 0), subpartition: c }).collect();
    let mut cfg = InputGateConfig::new(inputs);
    cfg.debloat = mode.debloat;
    let mut gate = env.create_input_gate(&cfg)?;

    // The sampler: every 10 ms once the window opens, until told to stop.
    let stop = Arc::new(Flag::new(false));
    let (warm, window) = (plan.warm, plan.window);
    let sampler = {
        let (arena, stop) = (arena.clone(), stop.clone());
        std::thread::spawn(move || {
            let begin = Instant::now();
            let mut samples = Vec::new();
            let mut fills: Vec<(Duration, u32)> = Vec::new();
            // Relaxed: a stop request.
            while !stop.load(Ordering::Relaxed) && begin.elapsed() < warm + window + WAIT_TIMEOUT {
                std::thread::sleep(SAMPLE_EVERY);
                if begin.elapsed() >= warm {
                    samples.push(inflight(&arena));
                }
                // Relaxed: a sample. The fill asked of the first channel, when it changes.
                let fill = arena.channels().iter().map(|c| c.segment_fill_wanted().unwrap_or(0)).max().unwrap_or(0);
                if fills.last().map_or(fill != 0, |&(_, f)| f != fill) {
                    fills.push((begin.elapsed(), fill));
                }
            }
            (samples, fills)
        })
    };
    let finish_sampler = |stop: &Flag| {
        // Relaxed: a stop request.
        stop.store(true, Ordering::Relaxed);
    };

    producer.send("go")?;
    let begin = Instant::now();
    let mut window_start: Option<(Instant, u64)> = None;
    let mut window_end: Option<(Instant, u64)> = None;
    let mut records = 0u64;
    let mut barrier_ns = Vec::new();
    let mut idle_since: Option<Instant> = None;
    let result: Res<()> = (|| loop {
        match gate.next(Some(POLL_SLICE)) {
            Ok(GateItem::Record { data, .. }) => {
                if data.len() != RECORD {
                    return Err(format!("a record of {} bytes", data.len()).into());
                }
                records += 1;
                idle_since = None;
                if window_end.is_none() {
                    busy_spin(SPIN_PER_RECORD);
                }
            }
            Ok(GateItem::Barrier(b)) => {
                let ns = now_nanos().saturating_sub(b.timestamp);
                if window_start.is_some() && window_end.is_none() {
                    barrier_ns.push(ns);
                }
            }
            Ok(GateItem::End) => return Ok(()),
            Ok(other) => return Err(format!("unexpected {other:?}").into()),
            Err(shmflow::Error::Timeout(..)) => {
                producer.check_alive()?;
                if idle_since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT {
                    return Err(format!("no record within {WAIT_TIMEOUT:?}").into());
                }
            }
            Err(e) => return Err(e.into()),
        }
        if window_end.is_none() && records % 64 == 0 {
            let now = Instant::now();
            match window_start {
                None if now.duration_since(begin) >= plan.warm => window_start = Some((now, records)),
                Some((s, _)) if now.duration_since(s) >= plan.window => {
                    window_end = Some((now, records));
                    finish_sampler(&stop);
                    producer.send("stop")?;
                }
                _ => {}
            }
        }
    })();
    finish_sampler(&stop);
    let (inflight, fills) = sampler.join().map_err(|_| "the sampler panicked")?;
    result?;
    producer.expect_line("done")?;
    producer.close_and_wait()?;
    let records_per_s = match (window_start, window_end) {
        (Some((t0, r0)), Some((t1, r1))) => (r1 - r0) as f64 / t1.duration_since(t0).as_secs_f64(),
        _ => return Err("the stream ended before the window closed".into()),
    };
    Ok(Outcome { mode, inflight, barrier_ns, records_per_s, debloat_bytes: gate.debloat_bytes(), fills })
}

// ---------------------------------------------------------------------------------------
// The producer process, seen from the consumer

fn producer_command(cpu: Option<usize>) -> Res<Command> {
    // If a concurrent build replaced our file, /proc/self/exe still execs this very binary.
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(if exe.exists() { exe } else { "/proc/self/exe".into() });
    cmd.env(ENV_CHILD, "1").stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(cpu) = cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    die_with_parent(&mut cmd);
    Ok(cmd)
}

// ---------------------------------------------------------------------------------------
// The producer process

fn producer_main() -> Res<()> {
    if let Ok(cpu) = std::env::var(ENV_CPU) {
        pin_to(cpu.parse()?)?;
    }
    let env = ShuffleEnvironment::attach_inherited(1)?;
    let mut cfg =
        ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::PipelinedBounded, CHANNELS);
    cfg.timeout = Some(WAIT_TIMEOUT);
    let mut part = env.create_result_partition(&cfg)?;
    // Commands from the consumer, line by line; "stop", EOF or the deadline ends the run.
    let stop = ready_go_stop(stdin_lines(), "ready", WAIT_TIMEOUT, CHILD_DEADLINE)?;
    let mut rec = [0u8; RECORD];
    let mut i = 0u64;
    let mut checkpoint = 0u64;
    let mut next_barrier = now_nanos() + BARRIER_EVERY.as_nanos() as u64;
    // Relaxed: as above.
    while !stop.load(Ordering::Relaxed) {
        rec[..8].copy_from_slice(&i.to_le_bytes());
        part.emit(&rec[..], (i % u64::from(CHANNELS)) as u32)?;
        i += 1;
        let now = now_nanos();
        if now >= next_barrier {
            checkpoint += 1;
            let b = CheckpointBarrier { checkpoint_id: checkpoint, timestamp: now, unaligned: false };
            part.broadcast_event(&Event::CheckpointBarrier(b))?;
            next_barrier = now + BARRIER_EVERY.as_nanos() as u64;
        }
    }
    part.flush_all()?;
    part.finish()?;
    part.release_when_consumed(Some(WAIT_TIMEOUT))?;
    say(&format!("done {i} records {checkpoint} barriers"))
}

// ---------------------------------------------------------------------------------------
// Report

/// The nearest-rank `p` quantile (0..=1) of sorted `v`.
fn quantile(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// The figures of one outcome, by metric name.
fn figures(o: &Outcome) -> Vec<(&'static str, Option<f64>)> {
    let mut inflight = o.inflight.clone();
    inflight.sort_unstable();
    let mut bar = o.barrier_ns.clone();
    bar.sort_unstable();
    let ms = |v: Option<u64>| v.map(|n| n as f64 / 1e6);
    vec![
        ("inflight_bytes_p50", quantile(&inflight, 0.5).map(|b| b as f64)),
        ("inflight_bytes_max", inflight.last().map(|&b| b as f64)),
        ("barrier_ms_p50", ms(quantile(&bar, 0.5))),
        ("barrier_ms_p90", ms(quantile(&bar, 0.9))),
        ("barrier_ms_max", ms(bar.last().copied())),
        ("barriers", Some(bar.len() as f64)),
        ("inflight_samples", Some(inflight.len() as f64)),
        ("records_per_s", Some(o.records_per_s)),
        ("debloat_bytes", Some(f64::from(o.debloat_bytes))),
    ]
}

fn kib(b: Option<f64>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{:.1} KiB", b / 1024.0))
}

fn millis(m: Option<f64>) -> String {
    m.map_or_else(|| "-".into(), |m| format!("{m:.1} ms"))
}

fn print_table(outcomes: &[Outcome]) {
    println!(
        "| mode | in-flight p50 | in-flight max | barrier p50 | barrier p90 | barrier max | barriers | consumer rec/s \
         | segment fill asked |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let f = figures(o);
        let get = |name: &str| f.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} k | {} |",
            o.mode.name,
            kib(get("inflight_bytes_p50")),
            kib(get("inflight_bytes_max")),
            millis(get("barrier_ms_p50")),
            millis(get("barrier_ms_p90")),
            millis(get("barrier_ms_max")),
            o.barrier_ns.len(),
            o.records_per_s / 1e3,
            if o.debloat_bytes == 0 { "-".into() } else { format!("{} B", o.debloat_bytes) },
        );
    }
    for o in outcomes.iter().filter(|o| !o.fills.is_empty()) {
        let steps: Vec<String> = o.fills.iter().map(|(t, f)| format!("{f} B at {:.2} s", t.as_secs_f64())).collect();
        println!("\n- {}: fill asked of the producer: {}", o.mode.name, steps.join(", "));
    }
    println!(
        "\n(in-flight: sum over the channels of backlog segments x fill in effect, sampled every {SAMPLE_EVERY:?}; \
         barrier: source timestamp to out of the gate, CLOCK_MONOTONIC across the two processes)"
    );
}

/// Flat JSON records, one per figure.
fn json_records(plan: &Plan, outcomes: &[Outcome]) -> String {
    let mut out = Vec::new();
    for o in outcomes {
        for (metric, value) in figures(o) {
            let v = value.filter(|v| v.is_finite()).map_or_else(|| "null".into(), |v| format!("{v:.4}"));
            out.push(format!(
                "  {{\"bench\":\"debloat\",\"system\":\"shmflow\",\"run\":\"{}\",\"mode\":\"{}\",\"metric\":\"{metric}\",\
                 \"value\":{v}}}",
                // The run kind as every benchmark writes it (the console says "smoke").
                if plan.full { "full" } else { "quick" },
                o.mode.name
            ));
        }
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
