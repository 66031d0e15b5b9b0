//! All-to-all scaling: P producer processes x P consumer processes over one shared arena
//! (P = 1, 2, 4, 8, 16: up to 32 processes on the 2 vCPUs of our machines, on purpose).
//!
//! ```text
//!  parent (this process: orchestrates, sleeps, samples)
//!   |- producer p (this binary re-executed, SHMFLOW_SCALE_ROLE=producer:p:P), p in 0..P
//!   |    one ResultPartition (p, 0) with P subpartitions, RecordWriter round robin
//!   |    (RebalancePartitioner from channel 0: record i goes to consumer i % P),
//!   |    buffer timeout 1 ms; record i = [i u64][p u32] (12 B), and every 1021st record
//!   |    (a prime, so every consumer gets some) carries [now_nanos u64] too (20 B)
//!   '- consumer c (SHMFLOW_SCALE_ROLE=consumer:c:P), c in 0..P
//!        one SingleInputGate over subpartition c of every producer (P channels);
//!        checks every record: producer id == channel, sequence == c, c + P, c + 2P, ...;
//!        stamped records inside the window: now_nanos() - stamp into an hdrhistogram
//!  one memfd arena for all of them; a small memfd "board" (parent -> consumers: the phase;
//!  consumers -> parent: records received so far)
//! ```
//!
//! Every process waits with the library's adaptive policy (spin up to 100 µs, then park on
//! a futex). Per P: all children start and attach; an idle phase measures the CPU they
//! burn with nothing to do (producers waiting for "go", consumers waiting in their gate);
//! then "go", a warm-up, a measured window, "stop"; producers finish, consumers read to
//! the end, and every count is checked (total received == total sent, per producer and
//! consumer). Figures:
//! - `records_per_s`: records received by all consumers over the window, per second;
//!   `records_per_s_ratio_to_p1` against P = 1 of the same run;
//! - `cpu_ns_per_record`: CPU time (all threads, /proc/PID/task/*/schedstat) of every
//!   producer and consumer over the window / records in the window; `cpu_ns_per_record_run`
//!   the same from getrusage(RUSAGE_CHILDREN) over the children's whole lives (start, idle
//!   phase and drain included) / all records; `cpu_cores_busy`: window CPU / window wall time;
//!   `idle_cpu_ms_per_s_producers` / `_consumers`: CPU per wall second in the idle phase,
//!   summed over the processes of that role (the 1 ms output flusher thread of each
//!   producer ticks there);
//! - `latency_p50_ns` ... : stamp to consumer (CLOCK_MONOTONIC, one clock for all processes
//!   of the host) under full load, which with bounded buffers is mostly time spent queued
//!   in the credit window;
//! - `peak_rss_kib`: the largest getrusage(RUSAGE_SELF).ru_maxrss any child reported just
//!   before it exited (shared arena pages it touched count in it), beside `arena_kib`.
//!
//! `cargo bench --bench scaling [-- --json PATH --window-ms MS --rounds N --procs 1,2,4]`
//! (argv holds `--bench`) runs 3 rounds over P = 1, 2, 4, 8, 16 with a 2 s window each
//! (about a minute; rates are medians over the rounds, CPU and latency pooled); without `--bench` (as
//! `cargo test --benches` runs it) a quick run of P = 1, 2, 4, 16 with short windows that
//! checks correctness only. Every wait is bounded, children die with the bench
//! (PR_SET_PDEATHSIG), a watchdog kills a child that outlives its deadline, guards kill and
//! reap them on every exit path, and nothing goes to /dev/shm (memfds only).

use hdrhistogram::Histogram;
use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, RebalancePartitioner, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::sync::{now_nanos, CachePadded, Ordering};
use shmflow::ShuffleEnvironment;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use clap::Parser;
use common::args::BenchArgs;
use common::{
    cpu_model, die_with_parent, exit_code, load_average, machine_cpu_ticks, proc_cpu_ns, ready_go_stop, rusage, say,
    stdin_lines, Producer, Res, Shared, SharedBlock,
};

/// `shmflow::sync`'s atomic, as the project asks of code outside src/sync; the allow is
/// for clippy resolving the re-export to the std type.
#[allow(clippy::disallowed_types)]
type Word = shmflow::sync::AtomicU64;

/// `producer:INDEX:P` or `consumer:INDEX:P`; its presence makes the process a child.
const ENV_ROLE: &str = "SHMFLOW_SCALE_ROLE";
/// The inherited fd of the board.
const ENV_BOARD: &str = "SHMFLOW_SCALE_BOARD";
/// The longest one wait for another process may take before the run fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// A child that lives longer than this is killed.
const CHILD_DEADLINE: Duration = Duration::from_secs(180);
/// How often a waiting process looks whether its peers are still alive.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// The largest P.
const MAX_P: usize = 16;
/// Every this many records, a producer stamps one (a prime: every consumer gets stamps).
const STAMP_EVERY: u64 = 1021;
/// Payload bytes of a record: sequence u64 + producer u32.
const RECORD: usize = 12;
/// Payload bytes of a stamped record: + now_nanos u64.
const STAMPED: usize = 20;
/// The buffer timeout of every producer.
const TIMEOUT_MS: i64 = 1;
const SEGMENT: u32 = 32 * 1024;

/// Board phases (parent -> consumers): stamps are recorded only in the window.
const PHASE_WARM: u64 = 0;
const PHASE_WINDOW: u64 = 1;
const PHASE_DONE: u64 = 2;

/// What the processes of one P share besides the arena.
#[repr(C)]
struct Board {
    /// Parent -> consumers: PHASE_*.
    phase: CachePadded<Word>,
    /// Consumer c -> parent: records received so far.
    received: [CachePadded<Word>; MAX_P],
}

// SAFETY: `Board` is repr(C) and holds only atomics in CachePadded (a single-field
// repr(align(128)) wrapper; every process of the bench is this same executable, so they
// agree on its layout); all-zero bytes are valid atomics; 128 <= 4096.
unsafe impl SharedBlock for Board {}

fn main() -> ExitCode {
    match std::env::var(ENV_ROLE) {
        Ok(role) => {
            let who = format!("scaling {role}");
            exit_code(&who, child_main(&role))
        }
        Err(_) => exit_code("scaling", parent_main()),
    }
}

// ---------------------------------------------------------------------------------------
// Plan and arguments

struct Args {
    full: bool,
    json: Option<PathBuf>,
    window_ms: Option<u64>,
    rounds: Option<u32>,
    procs: Option<Vec<u32>>,
}

/// The scaling bench's flags.
#[derive(Parser)]
#[command(name = "scaling", about = "Scaling: aggregate throughput of P producer-consumer process pairs")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    /// Measurement window in ms.
    #[arg(long, value_name = "MS")]
    window_ms: Option<u64>,
    /// Rounds per P.
    #[arg(long, value_name = "N")]
    rounds: Option<u32>,
    /// The P values (such as 1,2,4).
    #[arg(long, value_name = "P,..")]
    procs: Option<String>,
}

fn parse_args() -> Res<Args> {
    let c = Cli::parse();
    let procs = match c.procs {
        None => None,
        Some(list) => {
            let ps: Vec<u32> = common::args::list(&list).map_err(|e| format!("--procs: {e}"))?;
            if ps.iter().any(|&p| p == 0 || p as usize > MAX_P) {
                return Err(format!("--procs: every P must be in 1..={MAX_P}").into());
            }
            Some(ps)
        }
    };
    Ok(Args {
        full: c.bench.full,
        json: c.bench.json,
        window_ms: c.window_ms,
        rounds: c.rounds.map(|r| r.max(1)),
        procs,
    })
}

struct Plan {
    full: bool,
    procs: Vec<u32>,
    rounds: u32,
    idle: Duration,
    warm: Duration,
    window: Duration,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let (procs, rounds, idle, warm, window) =
            if args.full { (vec![1, 2, 4, 8, 16], 3, 300, 300, 2000) } else { (vec![1, 2, 4, 16], 1, 100, 100, 200) };
        Plan {
            full: args.full,
            procs: args.procs.clone().unwrap_or(procs),
            rounds: args.rounds.unwrap_or(rounds),
            idle: Duration::from_millis(idle),
            warm: Duration::from_millis(warm),
            window: Duration::from_millis(args.window_ms.unwrap_or(window)),
        }
    }

    fn run_kind(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parent

/// What one P measured.
struct Outcome {
    p: u32,
    arena_kib: u64,
    window_s: f64,
    window_records: u64,
    window_cpu_ns: u64,
    /// Window CPU of the producers and of the consumers.
    window_cpu_ns_by_role: (u64, u64),
    /// CPU seconds spent on everything else on the machine (other processes, the
    /// hypervisor's steal) in the window, if /proc/stat could be read.
    other_cpu_s: Option<f64>,
    total_records: u64,
    run_cpu_ns: u64,
    idle_cpu_ms_per_s: (f64, f64),
    latency: Histogram<u64>,
    peak_rss_kib: (u64, u64),
    /// records/s of each round.
    rates: Vec<f64>,
}

impl Outcome {
    /// The median over the rounds.
    fn records_per_s(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => 0.0,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }

    fn other_cores_busy(&self) -> Option<f64> {
        self.other_cpu_s.map(|s| s / self.window_s)
    }

    /// Adds another round of the same P: sums, maxima, merged histograms, and the idle
    /// figures averaged over the rounds.
    fn merge(&mut self, o: Outcome) -> Res<()> {
        let n = self.rates.len() as f64;
        self.window_s += o.window_s;
        self.window_records += o.window_records;
        self.window_cpu_ns += o.window_cpu_ns;
        self.window_cpu_ns_by_role.0 += o.window_cpu_ns_by_role.0;
        self.window_cpu_ns_by_role.1 += o.window_cpu_ns_by_role.1;
        self.other_cpu_s = self.other_cpu_s.zip(o.other_cpu_s).map(|(a, b)| a + b);
        self.total_records += o.total_records;
        self.run_cpu_ns += o.run_cpu_ns;
        self.idle_cpu_ms_per_s.0 = (self.idle_cpu_ms_per_s.0 * n + o.idle_cpu_ms_per_s.0) / (n + 1.0);
        self.idle_cpu_ms_per_s.1 = (self.idle_cpu_ms_per_s.1 * n + o.idle_cpu_ms_per_s.1) / (n + 1.0);
        self.latency.add(&o.latency)?;
        self.peak_rss_kib = (self.peak_rss_kib.0.max(o.peak_rss_kib.0), self.peak_rss_kib.1.max(o.peak_rss_kib.1));
        self.arena_kib = self.arena_kib.max(o.arena_kib);
        self.rates.extend(o.rates);
        Ok(())
    }
}

fn parent_main() -> Res<()> {
    let args = parse_args()?;
    let plan = Plan::new(&args);
    println!("# scaling: P producer processes x P consumer processes, all to all, one shared arena\n");
    println!(
        "- machine: {}, {} CPUs, load average {} at start",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "- run {}: {} round(s) over P in {:?}; per P an idle phase of {:?}, a warm-up of {:?}, then a {:?} window; records \
         ({RECORD} B: u64 sequence + u32 producer; one in {STAMP_EVERY} stamped, {STAMPED} B) round robin to \
         all P consumers; buffer timeout {TIMEOUT_MS} ms; {} KiB segments, Flink's default credits (2 \
         exclusive per channel, 8 floating per gate) and pools (2 x subpartitions + 8); adaptive waits \
         (spin <= 100 us, then park); processes not pinned\n",
        plan.run_kind(),
        plan.rounds,
        plan.procs,
        plan.idle,
        plan.warm,
        plan.window,
        SEGMENT / 1024
    );
    // Rounds go over every P in turn, so that the machine's changing load (MACHINE.md)
    // spreads over all of them; the figures are medians (rates) and sums over the rounds.
    let mut outcomes: Vec<Outcome> = Vec::new();
    for round in 0..plan.rounds {
        for &p in &plan.procs {
            let o = run_case(p, &plan).map_err(|e| format!("P = {p}, round {round}: {e}"))?;
            println!(
                "  round {round}, P = {p:2}: {:.2} M records/s, {} records checked, {:.0} ns CPU per record, other load \
                 {} cores",
                o.records_per_s() / 1e6,
                o.total_records,
                o.window_cpu_ns as f64 / o.window_records.max(1) as f64,
                o.other_cores_busy().map_or_else(|| "?".into(), |c| format!("{c:.2}"))
            );
            match outcomes.iter_mut().find(|x| x.p == p) {
                Some(x) => x.merge(o)?,
                None => outcomes.push(o),
            }
        }
    }
    println!();
    print_table(&outcomes);
    if let Some(path) = &args.json {
        std::fs::write(path, json_records(&plan, &outcomes)?)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// 32 KiB segments; enough for every producer's pool quota, plus slack.
fn arena_config(p: u32) -> ArenaConfig {
    let quota = p * (2 * p + 8);
    ArenaConfig { segment_size: SEGMENT, segment_count: (quota + 64).next_power_of_two(), ..ArenaConfig::default() }
}

fn child_command(role: &str) -> Res<Command> {
    // If a concurrent build replaced our file, /proc/self/exe still execs this very binary.
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(if exe.exists() { exe } else { "/proc/self/exe".into() });
    cmd.env(ENV_ROLE, role).stdin(Stdio::piped()).stdout(Stdio::piped());
    die_with_parent(&mut cmd);
    Ok(cmd)
}

/// CPU time so far of the children's threads.
fn cpu_of(children: &[&Producer]) -> u64 {
    children.iter().map(|c| proc_cpu_ns(c.guard.child.id()).unwrap_or(0)).sum()
}

fn received(board: &Board, p: u32) -> u64 {
    // Relaxed: counters; their exact instant does not matter within a window of seconds.
    board.received[..p as usize].iter().map(|r| r.load(Ordering::Relaxed)).sum()
}

/// `key=value` fields of a child's status line.
fn field<'a>(line: &'a str, key: &str) -> Res<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .ok_or_else(|| format!("no {key}= in {line:?}").into())
}

fn run_case(p: u32, plan: &Plan) -> Res<Outcome> {
    let arena = Arc::new(Arena::create_memfd(&arena_config(p), "scaling")?);
    let arena_kib = arena.layout().total_size / 1024;
    let board = Shared::<Board>::create("scaling")?;
    let usage0 = rusage(libc::RUSAGE_CHILDREN)?;
    let spawn = |role: String, who: &'static str| -> Res<Producer> {
        let mut cmd = child_command(&role)?;
        arena.inherit_fd_into(&mut cmd)?;
        board.inherit_into(&mut cmd, ENV_BOARD);
        Producer::spawn_as(&mut cmd, "scaling", who, CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)
    };
    let mut producers = Vec::new();
    for i in 0..p {
        producers.push(spawn(format!("producer:{i}:{p}"), "producer")?);
    }
    for pr in &mut producers {
        pr.expect_line("ready")?;
    }
    // Consumers look the partitions up, so they start once every producer registered.
    let mut consumers = Vec::new();
    for i in 0..p {
        consumers.push(spawn(format!("consumer:{i}:{p}"), "consumer")?);
    }
    for c in &mut consumers {
        c.expect_line("ready")?;
    }

    // Idle: everyone attached, nothing flows.
    let idle_cpu_ms_per_s = {
        let t0 = Instant::now();
        let (p0, c0) = (cpu_of(&producers.iter().collect::<Vec<_>>()), cpu_of(&consumers.iter().collect::<Vec<_>>()));
        std::thread::sleep(plan.idle);
        let (p1, c1) = (cpu_of(&producers.iter().collect::<Vec<_>>()), cpu_of(&consumers.iter().collect::<Vec<_>>()));
        let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
        (p1.saturating_sub(p0) as f64 / 1e6 / wall_ms * 1e3, c1.saturating_sub(c0) as f64 / 1e6 / wall_ms * 1e3)
    };

    // Relaxed: the phase is a hint for which stamps to record (see the consumer).
    board.phase.store(PHASE_WARM, Ordering::Relaxed);
    for pr in &mut producers {
        pr.send("go")?;
    }
    std::thread::sleep(plan.warm);
    let (prods, conss): (Vec<&Producer>, Vec<&Producer>) = (producers.iter().collect(), consumers.iter().collect());
    let (t0, r0, cpu0) = (Instant::now(), received(&board, p), (cpu_of(&prods), cpu_of(&conss)));
    let machine0 = machine_cpu_ticks();
    // Relaxed: as above.
    board.phase.store(PHASE_WINDOW, Ordering::Relaxed);
    std::thread::sleep(plan.window);
    let (r1, cpu1) = (received(&board, p), (cpu_of(&prods), cpu_of(&conss)));
    let machine1 = machine_cpu_ticks();
    let window_s = t0.elapsed().as_secs_f64();
    // Relaxed: as above.
    board.phase.store(PHASE_DONE, Ordering::Relaxed);
    drop((prods, conss));
    let by_role = (cpu1.0.saturating_sub(cpu0.0), cpu1.1.saturating_sub(cpu0.1));
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let other_cpu_s = match (machine0, machine1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            let all = (b1 - b0) as f64 / (t1 - t0) as f64 * ncpu * window_s;
            Some((all - (by_role.0 + by_role.1) as f64 / 1e9).max(0.0))
        }
        _ => None,
    };
    for pr in &mut producers {
        pr.send("stop")?;
    }

    let (total_sent, rss, latency) = collect_counts(&mut producers, &mut consumers, p)?;
    for child in producers.iter_mut().chain(consumers.iter_mut()) {
        child.close_and_wait()?;
    }
    let usage1 = rusage(libc::RUSAGE_CHILDREN)?;
    Ok(Outcome {
        p,
        arena_kib,
        window_s,
        window_records: r1.saturating_sub(r0),
        window_cpu_ns: by_role.0 + by_role.1,
        window_cpu_ns_by_role: by_role,
        other_cpu_s,
        total_records: total_sent,
        run_cpu_ns: usage1.cpu_ns.saturating_sub(usage0.cpu_ns),
        idle_cpu_ms_per_s,
        latency,
        peak_rss_kib: rss,
        rates: vec![r1.saturating_sub(r0) as f64 / window_s],
    })
}

/// Every producer's count, then every consumer's counts per producer, checked against each
/// other; returns the records sent, the peak RSS (producers, consumers) and the merged
/// latency histogram.
fn collect_counts(
    producers: &mut [Producer],
    consumers: &mut [Producer],
    p: u32,
) -> Res<(u64, (u64, u64), Histogram<u64>)> {
    let mut sent = Vec::new();
    let mut rss = (0u64, 0u64);
    for pr in producers.iter_mut() {
        let line = pr.expect_line("done")?;
        sent.push(field(&line, "sent")?.parse::<u64>()?);
        rss.0 = rss.0.max(field(&line, "rss_kib")?.parse()?);
    }
    let mut latency = new_histogram()?;
    let mut total_received = 0u64;
    for (c, cons) in consumers.iter_mut().enumerate() {
        let line = cons.expect_line("done")?;
        rss.1 = rss.1.max(field(&line, "rss_kib")?.parse()?);
        let counts = field(&line, "counts")?.split(',').map(str::parse).collect::<Result<Vec<u64>, _>>()?;
        if counts.len() != p as usize {
            return Err(format!("consumer {c} reported {} producers", counts.len()).into());
        }
        for (i, (&got, &n)) in counts.iter().zip(&sent).enumerate() {
            // Records c, c + P, ... below n.
            let want = n.saturating_sub(c as u64).div_ceil(u64::from(p));
            if got != want {
                return Err(format!("consumer {c} got {got} records of producer {i}, which sent {want} to it").into());
            }
            total_received += got;
        }
        let hist = field(&line, "hist")?;
        for pair in hist.split(',').filter(|s| !s.is_empty()) {
            let (v, n) = pair.split_once(':').ok_or_else(|| format!("bad histogram entry {pair:?}"))?;
            latency.record_n(v.parse()?, n.parse()?)?;
        }
    }
    let total_sent: u64 = sent.iter().sum();
    if total_received != total_sent {
        return Err(format!("{total_received} records received, {total_sent} sent").into());
    }
    Ok((total_sent, rss, latency))
}

fn new_histogram() -> Res<Histogram<u64>> {
    // 1 ns .. 60 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

// ---------------------------------------------------------------------------------------
// The children

fn child_main(role: &str) -> Res<()> {
    let parts: Vec<&str> = role.split(':').collect();
    let [kind, index, p] = parts[..] else {
        return Err(format!("bad role {role:?}").into());
    };
    let (index, p): (u32, u32) = (index.parse()?, p.parse()?);
    if p == 0 || p as usize > MAX_P || index >= p {
        return Err(format!("bad role {role:?}").into());
    }
    match kind {
        "producer" => producer_main(index, p),
        "consumer" => consumer_main(index, p),
        _ => Err(format!("bad role {role:?}").into()),
    }
}

fn producer_main(index: u32, p: u32) -> Res<()> {
    // Worker slots: 0 is the parent, 1..=P the producers, P+1..=2P the consumers.
    let env = ShuffleEnvironment::attach_inherited(1 + index)?;
    let mut cfg = ResultPartitionConfig::new(
        ResultPartitionId::new(u64::from(index), 0),
        ResultPartitionType::PipelinedBounded,
        p,
    );
    cfg.timeout = Some(WAIT_TIMEOUT);
    // Round robin from channel 0: record i goes to consumer i % P (checked there).
    let mut writer = env.create_record_writer::<[u8], _>(
        &cfg,
        RebalancePartitioner::new(0),
        BufferTimeout::from_millis(TIMEOUT_MS)?,
    )?;
    let stop = ready_go_stop(stdin_lines(), "ready", CHILD_DEADLINE, CHILD_DEADLINE)?;
    let mut rec = [0u8; STAMPED];
    rec[8..12].copy_from_slice(&index.to_le_bytes());
    let mut i = 0u64;
    // Relaxed: as above.
    while !stop.load(Ordering::Relaxed) {
        rec[..8].copy_from_slice(&i.to_le_bytes());
        if i % STAMP_EVERY == 0 {
            rec[RECORD..].copy_from_slice(&now_nanos().to_le_bytes());
            writer.emit(&rec[..])?;
        } else {
            writer.emit(&rec[..RECORD])?;
        }
        i += 1;
    }
    writer.flush_all()?;
    writer.finish()?;
    writer.into_partition().release_when_consumed(Some(WAIT_TIMEOUT))?;
    let u = rusage(libc::RUSAGE_SELF)?;
    say(&format!("done sent={i} rss_kib={} cpu_ns={}", u.maxrss_kib, u.cpu_ns))
}

/// A consumer's view of its channels (gate channel i reads producer i).
struct Check {
    p: u64,
    next: Vec<u64>,
    counts: Vec<u64>,
    total: u64,
    bad: Option<String>,
    latency: Histogram<u64>,
}

impl Check {
    #[inline]
    fn record(&mut self, channel: u32, data: &[u8], board: &Board) {
        let ch = channel as usize;
        if ch >= self.next.len() || (data.len() != RECORD && data.len() != STAMPED) {
            self.fail(format!("a record of {} bytes on channel {channel}", data.len()));
            return;
        }
        let seq = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let producer = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
        if producer != channel || seq != self.next[ch] {
            self.fail(format!(
                "channel {channel}: record {seq} of producer {producer}, expected {} of producer {channel}",
                self.next[ch]
            ));
            return;
        }
        self.next[ch] += self.p;
        self.counts[ch] += 1;
        self.total += 1;
        if data.len() == STAMPED {
            if seq % STAMP_EVERY != 0 {
                self.fail(format!("record {seq} of producer {producer} is stamped"));
                return;
            }
            // Relaxed: which phase we are in is a hint; a stamp at the edge of the window
            // may land on either side.
            if board.phase.load(Ordering::Relaxed) == PHASE_WINDOW {
                let stamp = u64::from_le_bytes(data[RECORD..].try_into().expect("8 bytes"));
                self.latency.saturating_record(now_nanos().saturating_sub(stamp).max(1));
            }
        } else if seq % STAMP_EVERY == 0 {
            self.fail(format!("record {seq} of producer {producer} is not stamped"));
        }
    }

    #[cold]
    fn fail(&mut self, why: String) {
        self.bad.get_or_insert(why);
    }
}

fn consumer_main(index: u32, p: u32) -> Res<()> {
    let board = Shared::<Board>::attach_inherited(ENV_BOARD)?;
    let env = ShuffleEnvironment::attach_inherited(1 + p + index)?;
    let inputs =
        (0..p).map(|i| InputSpec { partition: ResultPartitionId::new(u64::from(i), 0), subpartition: index }).collect();
    // Flink's defaults, adaptive wait policy.
    let mut gate = env.create_input_gate(&InputGateConfig::new(inputs))?;
    say("ready")?;
    let mut check = Check {
        p: u64::from(p),
        next: vec![u64::from(index); p as usize],
        counts: vec![0; p as usize],
        total: 0,
        bad: None,
        latency: new_histogram()?,
    };
    let received = &board.received[index as usize];
    let mut idle_since: Option<Instant> = None;
    loop {
        let n = gate.drain_records(4096, &mut |c, data| {
            check.record(c, data, &board);
            Ok(())
        })?;
        if n == 0 {
            match gate.next(Some(POLL_SLICE)) {
                Ok(GateItem::Record { channel, data }) => check.record(channel, data, &board),
                Ok(GateItem::End) => break,
                Ok(other) => return Err(format!("unexpected {other:?}").into()),
                Err(shmflow::Error::Timeout(..)) => {
                    // Nothing for a while (the idle phase, or the parent is slow): bounded.
                    if idle_since.get_or_insert_with(Instant::now).elapsed() > CHILD_DEADLINE {
                        return Err(format!("no input within {CHILD_DEADLINE:?}").into());
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        idle_since = None;
        if let Some(why) = check.bad.take() {
            return Err(why.into());
        }
        // Relaxed: a counter the parent samples.
        received.store(check.total, Ordering::Relaxed);
    }
    if let Some(why) = check.bad.take() {
        return Err(why.into());
    }
    // Relaxed: as above.
    received.store(check.total, Ordering::Relaxed);
    let counts: Vec<String> = check.counts.iter().map(u64::to_string).collect();
    let hist: Vec<String> =
        check.latency.iter_recorded().map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value())).collect();
    let u = rusage(libc::RUSAGE_SELF)?;
    say(&format!(
        "done rss_kib={} cpu_ns={} counts={} hist={}",
        u.maxrss_kib,
        u.cpu_ns,
        counts.join(","),
        hist.join(",")
    ))
}

// ---------------------------------------------------------------------------------------
// Report

/// The percentiles reported as `latency_*` figures and drawn as curve points.
const PERCENTILES: [(f64, &str); 4] = [(50.0, "p50"), (99.0, "p99"), (99.9, "p999"), (100.0, "max")];
const CURVE: [f64; 8] = [0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0];

fn latency_at(h: &Histogram<u64>, pct: f64) -> Option<u64> {
    (!h.is_empty()).then(|| if pct >= 100.0 { h.max() } else { h.value_at_percentile(pct) })
}

/// The figures of one outcome, by metric name.
fn figures(o: &Outcome, p1_rate: Option<f64>) -> Vec<(String, Option<f64>)> {
    let rate = o.records_per_s();
    let mut f: Vec<(String, Option<f64>)> = vec![
        ("records_per_s".into(), Some(rate)),
        ("records_per_s_ratio_to_p1".into(), p1_rate.map(|r| rate / r)),
        ("cpu_ns_per_record".into(), Some(o.window_cpu_ns as f64 / o.window_records.max(1) as f64)),
        ("cpu_ns_per_record_run".into(), Some(o.run_cpu_ns as f64 / o.total_records.max(1) as f64)),
        ("cpu_cores_busy".into(), Some(o.window_cpu_ns as f64 / 1e9 / o.window_s)),
        ("cpu_cores_busy_producers".into(), Some(o.window_cpu_ns_by_role.0 as f64 / 1e9 / o.window_s)),
        ("cpu_cores_busy_consumers".into(), Some(o.window_cpu_ns_by_role.1 as f64 / 1e9 / o.window_s)),
        ("other_cores_busy".into(), o.other_cores_busy()),
        ("rounds".into(), Some(o.rates.len() as f64)),
        ("idle_cpu_ms_per_s_producers".into(), Some(o.idle_cpu_ms_per_s.0)),
        ("idle_cpu_ms_per_s_consumers".into(), Some(o.idle_cpu_ms_per_s.1)),
    ];
    for (pct, name) in PERCENTILES {
        f.push((format!("latency_{name}_ns"), latency_at(&o.latency, pct).map(|v| v as f64)));
    }
    f.extend([
        ("latency_samples".into(), Some(o.latency.len() as f64)),
        ("records_total".into(), Some(o.total_records as f64)),
        ("peak_rss_kib".into(), Some(o.peak_rss_kib.0.max(o.peak_rss_kib.1) as f64)),
        ("peak_rss_kib_producer".into(), Some(o.peak_rss_kib.0 as f64)),
        ("peak_rss_kib_consumer".into(), Some(o.peak_rss_kib.1 as f64)),
        ("arena_kib".into(), Some(o.arena_kib as f64)),
    ]);
    f
}

fn p1_rate(outcomes: &[Outcome]) -> Option<f64> {
    outcomes.iter().find(|o| o.p == 1).map(Outcome::records_per_s)
}

fn micros(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), |n| format!("{:.1} us", n as f64 / 1e3))
}

fn print_table(outcomes: &[Outcome]) {
    let p1 = p1_rate(outcomes);
    println!(
        "| P | processes | records/s | vs P=1 | CPU ns/record (window) | cores busy (producers + consumers) \
         | other load (cores) | CPU ns/record (whole run) \
         | idle CPU ms/s (producers / consumers) | latency p50 | p99 | p99.9 | max | peak RSS (producer / \
         consumer) | arena |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let rate = o.records_per_s();
        println!(
            "| {} | {} | {:.2} M | {} | {:.1} | {:.2} ({:.2} + {:.2}) | {} | {:.1} | {:.1} / {:.1} | {} | {} | {} | {} \
             | {:.1} / {:.1} MiB \
             | {:.1} MiB |",
            o.p,
            2 * o.p,
            rate / 1e6,
            p1.map_or_else(|| "-".into(), |r| format!("{:.2}", rate / r)),
            o.window_cpu_ns as f64 / o.window_records.max(1) as f64,
            o.window_cpu_ns as f64 / 1e9 / o.window_s,
            o.window_cpu_ns_by_role.0 as f64 / 1e9 / o.window_s,
            o.window_cpu_ns_by_role.1 as f64 / 1e9 / o.window_s,
            o.other_cores_busy().map_or_else(|| "-".into(), |c| format!("{c:.2}")),
            o.run_cpu_ns as f64 / o.total_records.max(1) as f64,
            o.idle_cpu_ms_per_s.0,
            o.idle_cpu_ms_per_s.1,
            micros(latency_at(&o.latency, 50.0)),
            micros(latency_at(&o.latency, 99.0)),
            micros(latency_at(&o.latency, 99.9)),
            micros(latency_at(&o.latency, 100.0)),
            o.peak_rss_kib.0 as f64 / 1024.0,
            o.peak_rss_kib.1 as f64 / 1024.0,
            o.arena_kib as f64 / 1024.0,
        );
    }
    println!(
        "\n(records/s: received by all consumers over the window; CPU: every thread of every producer and consumer \
         process (/proc schedstat) over the window, and getrusage(RUSAGE_CHILDREN) over their whole lives; cores \
         busy: window CPU / wall time (2 vCPUs here); other load: CPUs busy with anything else on the machine in \
         the window, from /proc/stat, steal included; latency: producer stamp to consumer, one record in \
         {STAMP_EVERY}, CLOCK_MONOTONIC; peak RSS: ru_maxrss, arena pages touched included)"
    );
}

/// Flat JSON records, one per figure.
fn json_records(plan: &Plan, outcomes: &[Outcome]) -> Res<String> {
    let p1 = p1_rate(outcomes);
    let base = |o: &Outcome| {
        serde_json::json!({
            "bench": "scaling",
            "system": "shmflow",
            "run": plan.run_kind(),
            "mode": "adaptive",
            "shape": format!("{}x{}", o.p, o.p),
            "producers": o.p,
            "consumers": o.p,
            "processes": 2 * o.p,
            "timeout_ms": TIMEOUT_MS,
            "payload_bytes": RECORD,
            "window_ms": plan.window.as_millis() as u64,
            "rounds": plan.rounds,
        })
    };
    let mut out = Vec::new();
    for o in outcomes {
        for (metric, value) in figures(o, p1) {
            let mut r = base(o);
            r["metric"] = metric.into();
            r["value"] = value.filter(|v| v.is_finite()).into();
            out.push(r);
        }
        for pct in CURVE {
            if let Some(v) = latency_at(&o.latency, pct) {
                let mut r = base(o);
                r["metric"] = "curve_latency_ns".into();
                r["percentile"] = pct.into();
                r["value"] = v.into();
                out.push(r);
            }
        }
    }
    Ok(serde_json::to_string_pretty(&out)? + "\n")
}
