//! Backpressure: one producer process, one consumer process throttled to 10% of the
//! unthrottled rate. In-flight bytes, the producer's back-pressured time, and how fast the
//! producer stops when the consumer stops reading and restarts when it reads again.
//!
//! ```text
//!  parent (this process: orchestrates and samples the arena's metrics, sleeps between)
//!   |- producer (this binary re-executed, SHMFLOW_BP_ROLE=producer)
//!   |    one ResultPartition, 1 subpartition, Flink's pool (10 segments of 32 KiB), buffer
//!   |    timeout 100 ms, task metrics in the arena; 12-byte records [i u64][0 u32] as fast
//!   |    as it can; publishes its record count (every record) and every stall longer than
//!   |    10 ms (begin, end: now_nanos(), read every 16 records) on the board
//!   '- consumer (SHMFLOW_BP_ROLE=consumer)
//!        one gate, Flink's credits (2 exclusive + 8 floating); checks every record's
//!        sequence; paces itself by busy-waiting per record when the parent sets a period
//!        (no sleeping: waking a halted vCPU is slow here); pauses and resumes on command,
//!        stamping when it actually stops and resumes
//!  board: a small memfd of atomics besides the arena
//! ```
//!
//! Phases: (1) unthrottled: the consumer reads as fast as it can; its rate R is the
//! producer's unthrottled rate as far as this pipeline can carry it (if the consumer is the
//! slower side, the producer shows back-pressured time here too). (2) throttled: the
//! consumer paced to R / 10; sampled every 10 ms: in-flight bytes (channel backlog x
//! segment size: memory held by published, unreleased segments), outPoolUsage, and the
//! records produced but not consumed (x 16 B framed); the producer's
//! backPressuredTimeMsPerSecond from its task metrics block between the window's ends.
//! (3) stop/restart cycles, with the consumer throttled and at full speed: the consumer
//! stops reading at T; the parent waits until the producer's count stood still for 30 ms
//! and samples what is in flight; the consumer resumes at T2. `stop_ns` = the moment the
//! producer's count stopped growing (the start of its long stall) - T, 0 when it was
//! already blocked at T (counted in `stop_already_blocked`); `restart_ns` = the end of
//! that stall (its first record after it) - T2. Both ends are the processes' own
//! CLOCK_MONOTONIC stamps, so the parent's sleeping does not enter them. With credit-based
//! flow control a restart needs the consumer to finish the segment it was reading (the
//! credit comes back with the recycled segment), which at 10% speed takes a while.
//!
//! `cargo bench --bench backpressure [-- --json PATH --cycles N --pin]` (argv holds
//! `--bench`) runs about 10 s; without `--bench` (as `cargo test --benches` runs it) a
//! quick run with one cycle of each kind, checking correctness only. Every wait is bounded,
//! children die with the bench, a watchdog kills a child that outlives its deadline,
//! guards kill and reap them on every exit path, and nothing goes to /dev/shm.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::metrics::{channel_snapshot, out_pool_usage, task_snapshot, TaskMetricsHandle, TaskRates};
use shmflow::partition::{
    BufferTimeout, ForwardPartitioner, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::record::LEN_PREFIX;
use shmflow::sync::{now_nanos, spin_loop, CachePadded, Ordering};
use shmflow::ShuffleEnvironment;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use clap::Parser;
use common::args::BenchArgs;
use common::{
    cpu_model, cpu_pair, die_with_parent, exit_code, load_average, pin_to, ready_go_stop, rusage, say, stdin_lines,
    Producer, Res, Shared, SharedBlock,
};

/// `shmflow::sync`'s atomic, as the project asks of code outside src/sync; the allow is
/// for clippy resolving the re-export to the std type.
#[allow(clippy::disallowed_types)]
type Word = shmflow::sync::AtomicU64;

/// `producer` or `consumer`; its presence makes the process a child.
const ENV_ROLE: &str = "SHMFLOW_BP_ROLE";
/// The inherited fd of the board.
const ENV_BOARD: &str = "SHMFLOW_BP_BOARD";
/// The CPU a child pins itself to.
const ENV_CPU: &str = "SHMFLOW_BP_CPU";
/// The longest one wait for another process may take before the run fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
/// A child that lives longer than this is killed.
const CHILD_DEADLINE: Duration = Duration::from_secs(180);
/// How often a waiting process looks whether its peers are still alive.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// How often the parent looks at the board while it waits for something.
const LOOK_EVERY: Duration = Duration::from_millis(1);
/// How often in-flight bytes are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
const SEGMENT: u32 = 32 * 1024;
/// Payload bytes of a record: sequence u64 + u32.
const RECORD: usize = 12;
/// The producer's buffer timeout (Flink's default).
const TIMEOUT_MS: i64 = 100;
/// The throttled consumer's rate, in percent of the unthrottled one.
const THROTTLE_PCT: u64 = 10;
/// The producer reads the clock every this many records.
const CLOCK_EVERY: u64 = 16;
/// A producer stall longer than this is logged on the board.
const LONG_STALL: Duration = Duration::from_millis(10);
/// The producer counts as stopped once its count stood still this long.
const HOLD: Duration = Duration::from_millis(30);
/// How long after a resume the producer's stall must show up (else the cycle is discarded).
const RESTART_TIMEOUT: Duration = Duration::from_secs(2);
/// Long stalls the board remembers.
const LOG: usize = 16;
/// The slowest pacing the consumer accepts (a bound on its busy-wait per record).
const MAX_PERIOD_NS: u64 = 1_000_000;

/// What the three processes share besides the arena.
#[repr(C)]
struct Board {
    /// Producer: records emitted so far.
    produced: CachePadded<Word>,
    /// Producer: long stalls logged so far; stall k is at `stall_log[k % LOG]`.
    stalls: CachePadded<Word>,
    /// Producer: (begin, end) in now_nanos() of the logged stalls.
    stall_log: [[Word; 2]; LOG],
    /// Consumer: records read so far.
    consumed: CachePadded<Word>,
    /// Parent -> consumer: ns per record to pace at, 0 for full speed.
    period_ns: CachePadded<Word>,
    /// Parent -> consumer: a command count; odd = pause, even = read.
    cmd: CachePadded<Word>,
    /// Consumer -> parent: the last command acted on.
    ack: CachePadded<Word>,
    /// Consumer: when it last stopped reading / resumed (now_nanos()).
    paused_at: CachePadded<Word>,
    resumed_at: CachePadded<Word>,
}

// SAFETY: `Board` is repr(C) and holds only atomics, bare or in CachePadded (a single-field
// repr(align(128)) wrapper; every process of the bench is this same executable, so they
// agree on its layout); all-zero bytes are valid atomics; 128 <= 4096.
unsafe impl SharedBlock for Board {}

fn main() -> ExitCode {
    match std::env::var(ENV_ROLE).as_deref() {
        Ok("producer") => exit_code("backpressure producer", producer_main()),
        Ok("consumer") => exit_code("backpressure consumer", consumer_main()),
        Ok(other) => exit_code("backpressure", Err(format!("unknown role {other:?}").into())),
        Err(_) => exit_code("backpressure", parent_main()),
    }
}

// ---------------------------------------------------------------------------------------
// Plan and arguments

/// The backpressure bench's flags.
#[derive(Parser)]
#[command(name = "backpressure", about = "Backpressure: a producer paced against a slow consumer")]
struct Args {
    #[command(flatten)]
    bench: BenchArgs,
    /// Cycles of the pace pattern (default 10 in a full run, 1 in a quick one).
    #[arg(long, value_name = "N")]
    cycles: Option<u32>,
    /// Pin the consumer and the producer to one CPU each (off by default: on a shared
    /// machine a pinned, busy-waiting consumer loses its CPU to other load and misses its
    /// pace).
    #[arg(long)]
    pin: bool,
}

fn parse_args() -> Res<Args> {
    Ok(Args::parse())
}

struct Plan {
    full: bool,
    warm: Duration,
    unthrottled: Duration,
    settle: Duration,
    throttled: Duration,
    cycles: u32,
    before_stop: Duration,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let ms = Duration::from_millis;
        if args.bench.full {
            Plan {
                full: true,
                warm: ms(300),
                unthrottled: ms(1000),
                settle: ms(300),
                throttled: ms(2000),
                cycles: args.cycles.unwrap_or(10),
                before_stop: ms(150),
            }
        } else {
            Plan {
                full: false,
                warm: ms(50),
                unthrottled: ms(200),
                settle: ms(50),
                throttled: ms(200),
                cycles: args.cycles.unwrap_or(1),
                before_stop: ms(30),
            }
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

/// What one steady phase measured.
#[derive(Default)]
struct Phase {
    consumed_per_s: f64,
    produced_per_s: f64,
    producer: TaskRates,
    consumer: TaskRates,
    inflight_bytes: Vec<u64>,
    pool_usage: Vec<f64>,
    inflight_record_bytes: Vec<u64>,
}

/// One stop/restart cycle.
#[derive(Debug, Clone, Copy)]
struct Cycle {
    stop_ns: u64,
    already_blocked: bool,
    restart_ns: u64,
    inflight_bytes: u64,
    inflight_record_bytes: u64,
    pool_usage: f64,
}

struct Outcome {
    unthrottled: Phase,
    throttled: Phase,
    period_ns: u64,
    /// (consumer kind, valid cycles, cycles discarded).
    cycles: Vec<(&'static str, Vec<Cycle>, u32)>,
    records: u64,
    rss_kib: (u64, u64),
    arena_kib: u64,
}

/// Where the parent finds the producer's metrics in the arena.
struct Ids {
    producer_task: u32,
    consumer_task: u32,
    partition_slot: u32,
    channel: u32,
}

fn parent_main() -> Res<()> {
    let args = parse_args()?;
    let plan = Plan::new(&args);
    let cpus = if args.pin { cpu_pair() } else { None };
    println!("# backpressure: a consumer at {THROTTLE_PCT}% of the producer's rate, and stop/restart\n");
    println!("- machine: {}, load average {} at start", cpu_model(), load_average());
    match cpus {
        Some((a, b)) => {
            println!("- consumer process pinned to CPU {a}, producer process to CPU {b}; parent not pinned")
        }
        None => println!("- not pinned (--pin pins the consumer and the producer)"),
    }
    println!(
        "- run {}: {RECORD}-byte records, 1 producer x 1 subpartition, buffer timeout {TIMEOUT_MS} ms, {} KiB \
         segments, Flink's defaults (pool 10 segments, credits 2 exclusive + 8 floating), adaptive waits; \
         unthrottled {:?}, throttled {:?} (consumer busy-waits per record), {} stop/restart cycles each with the \
         consumer throttled and at full speed\n",
        plan.run_kind(),
        SEGMENT / 1024,
        plan.unthrottled,
        plan.throttled,
        plan.cycles
    );
    let o = run(&plan, cpus)?;
    print_report(&o);
    if let Some(path) = &args.bench.json {
        std::fs::write(path, json_records(&plan, &o)?).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn arena_config() -> ArenaConfig {
    ArenaConfig {
        segment_size: SEGMENT,
        segment_count: 64,
        max_channels: 16,
        max_partitions: 8,
        max_gates: 8,
        max_channels_per_gate: 64,
        max_workers: 8,
        max_tasks: 8,
        ..ArenaConfig::default()
    }
}

fn child_command(role: &str, cpu: Option<usize>) -> Res<Command> {
    // If a concurrent build replaced our file, /proc/self/exe still execs this very binary.
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(if exe.exists() { exe } else { "/proc/self/exe".into() });
    cmd.env(ENV_ROLE, role).stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(cpu) = cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    die_with_parent(&mut cmd);
    Ok(cmd)
}

/// `key=value` fields of a child's status line.
fn field<T: std::str::FromStr>(line: &str, key: &str) -> Res<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let v = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .ok_or_else(|| format!("no {key}= in {line:?}"))?;
    Ok(v.parse()?)
}

fn run(plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Outcome> {
    let arena = Arc::new(Arena::create_memfd(&arena_config(), "backpressure")?);
    let arena_kib = arena.layout().total_size / 1024;
    let board = Shared::<Board>::create("backpressure")?;
    let spawn = |role: &'static str, cpu: Option<usize>| -> Res<Producer> {
        let mut cmd = child_command(role, cpu)?;
        arena.inherit_fd_into(&mut cmd)?;
        board.inherit_into(&mut cmd, ENV_BOARD);
        Producer::spawn_as(&mut cmd, "backpressure", role, CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)
    };
    let mut producer = spawn("producer", cpus.map(|c| c.1))?;
    let ready = producer.expect_line("ready")?;
    let (producer_task, partition_slot, channel) =
        (field(&ready, "task")?, field(&ready, "partition")?, field(&ready, "channel")?);
    let mut consumer = spawn("consumer", cpus.map(|c| c.0))?;
    let consumer_task = field(&consumer.expect_line("ready")?, "task")?;
    let ids = Ids { producer_task, consumer_task, partition_slot, channel };

    producer.send("go")?;
    std::thread::sleep(plan.warm);
    let unthrottled = measure_phase(&arena, &board, &ids, plan.unthrottled, &mut [&mut producer, &mut consumer])?;
    if unthrottled.consumed_per_s <= 0.0 {
        return Err("no records flowed in the unthrottled phase".into());
    }
    let period_ns =
        ((1e9 / (unthrottled.consumed_per_s * THROTTLE_PCT as f64 / 100.0)).round() as u64).clamp(1, MAX_PERIOD_NS);
    // Relaxed: the consumer rereads the period before every batch; when it takes effect
    // does not matter to within a batch.
    board.period_ns.store(period_ns, Ordering::Relaxed);
    std::thread::sleep(plan.settle);
    let throttled = measure_phase(&arena, &board, &ids, plan.throttled, &mut [&mut producer, &mut consumer])?;

    let mut cycles = Vec::new();
    for (kind, period) in [("throttled", period_ns), ("full", 0)] {
        // Relaxed: as above.
        board.period_ns.store(period, Ordering::Relaxed);
        let mut done = Vec::new();
        let mut discarded = 0;
        // A cycle in which the producer was only descheduled, not blocked, is discarded
        // and run again (bounded).
        for k in 0..plan.cycles * 3 + 3 {
            if done.len() == plan.cycles as usize {
                break;
            }
            std::thread::sleep(plan.before_stop);
            match stop_restart(&arena, &board, &ids, &mut [&mut producer, &mut consumer])
                .map_err(|e| format!("{kind} cycle {k}: {e}"))?
            {
                Some(c) => done.push(c),
                None => discarded += 1,
            }
        }
        if done.len() < plan.cycles as usize {
            return Err(format!("{kind}: only {} valid stop/restart cycles of {}", done.len(), plan.cycles).into());
        }
        cycles.push((kind, done, discarded));
    }

    // Drain at full speed, stop, and check the counts.
    // Relaxed: as above.
    board.period_ns.store(0, Ordering::Relaxed);
    producer.send("stop")?;
    let line = producer.expect_line("done")?;
    let (sent, producer_rss): (u64, u64) = (field(&line, "sent")?, field(&line, "rss_kib")?);
    let line = consumer.expect_line("done")?;
    let (got, consumer_rss): (u64, u64) = (field(&line, "received")?, field(&line, "rss_kib")?);
    if got != sent {
        return Err(format!("{got} records received, {sent} sent").into());
    }
    producer.close_and_wait()?;
    consumer.close_and_wait()?;
    Ok(Outcome {
        unthrottled,
        throttled,
        period_ns,
        cycles,
        records: sent,
        rss_kib: (producer_rss, consumer_rss),
        arena_kib,
    })
}

fn check_alive(children: &mut [&mut Producer]) -> Res<()> {
    children.iter_mut().try_for_each(|c| c.check_alive())
}

/// In-flight now: backlog bytes, outPoolUsage, record bytes produced and not consumed.
fn inflight(arena: &Arena, board: &Board, ids: &Ids) -> (u64, f64, u64) {
    let backlog = channel_snapshot(arena, ids.channel).map_or(0, |s| u64::from(s.backlog));
    // Relaxed (both): counters; consumed is read first, so the difference is not negative
    // except by a race that saturates to 0.
    let consumed = board.consumed.load(Ordering::Relaxed);
    let produced = board.produced.load(Ordering::Relaxed);
    (
        backlog * u64::from(SEGMENT),
        out_pool_usage(arena, ids.partition_slot).unwrap_or(0.0),
        produced.saturating_sub(consumed) * (RECORD + LEN_PREFIX) as u64,
    )
}

fn measure_phase(
    arena: &Arena,
    board: &Board,
    ids: &Ids,
    length: Duration,
    children: &mut [&mut Producer],
) -> Res<Phase> {
    let snap = |slot| task_snapshot(arena, slot).ok_or("no task metrics block");
    // Relaxed (all): counters sampled for rates.
    let (t0, c0, p0) = (Instant::now(), board.consumed.load(Ordering::Relaxed), board.produced.load(Ordering::Relaxed));
    let (pt0, ct0) = (snap(ids.producer_task)?, snap(ids.consumer_task)?);
    let mut phase = Phase::default();
    while t0.elapsed() < length {
        std::thread::sleep(SAMPLE_EVERY);
        let (b, u, r) = inflight(arena, board, ids);
        phase.inflight_bytes.push(b);
        phase.pool_usage.push(u);
        phase.inflight_record_bytes.push(r);
    }
    check_alive(children)?;
    let (pt1, ct1) = (snap(ids.producer_task)?, snap(ids.consumer_task)?);
    // Relaxed (both): as above.
    let (c1, p1) = (board.consumed.load(Ordering::Relaxed), board.produced.load(Ordering::Relaxed));
    let s = t0.elapsed().as_secs_f64();
    phase.consumed_per_s = c1.saturating_sub(c0) as f64 / s;
    phase.produced_per_s = p1.saturating_sub(p0) as f64 / s;
    phase.producer = TaskRates::between(&pt0, &pt1);
    phase.consumer = TaskRates::between(&ct0, &ct1);
    Ok(phase)
}

/// Polls `f` every LOOK_EVERY until it yields; `None` after `timeout`.
fn poll_for<T>(timeout: Duration, children: &mut [&mut Producer], mut f: impl FnMut() -> Option<T>) -> Res<Option<T>> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(Some(v));
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        check_alive(children)?;
        std::thread::sleep(LOOK_EVERY);
    }
}

/// Polls `f` every LOOK_EVERY until it yields, at most WAIT_TIMEOUT.
fn wait_for<T>(what: &str, children: &mut [&mut Producer], f: impl FnMut() -> Option<T>) -> Res<T> {
    poll_for(WAIT_TIMEOUT, children, f)?.ok_or_else(|| format!("no {what} within {WAIT_TIMEOUT:?}").into())
}

/// Sends command `cmd` to the consumer and waits until it acted on it.
fn command(board: &Board, cmd: u64, children: &mut [&mut Producer]) -> Res<()> {
    // Release: pairs with the consumer's Acquire load of `cmd` (it then sees the period).
    board.cmd.store(cmd, Ordering::Release);
    // Acquire: pairs with the consumer's Release store of `ack`, after its stamps.
    wait_for("acknowledgement from the consumer", children, || (board.ack.load(Ordering::Acquire) == cmd).then_some(()))
}

/// One stop/restart cycle; `None` if the producer turned out not to be blocked (it only
/// stood still, descheduled, and went on before the consumer resumed).
fn stop_restart(arena: &Arena, board: &Board, ids: &Ids, children: &mut [&mut Producer]) -> Res<Option<Cycle>> {
    // Relaxed: only this thread writes `cmd`.
    let cmd = board.cmd.load(Ordering::Relaxed);
    // Pause; T is when the consumer actually stopped reading.
    command(board, cmd + 1, children)?;
    // Relaxed: ordered by the Acquire on `ack` in `command`.
    let t_stop = board.paused_at.load(Ordering::Relaxed);
    // The producer stopped once its count stands still for HOLD.
    let mut last = (u64::MAX, Instant::now());
    wait_for("stop of the producer", children, || {
        // Relaxed: a counter.
        let n = board.produced.load(Ordering::Relaxed);
        if n != last.0 {
            last = (n, Instant::now());
            None
        } else {
            (last.1.elapsed() >= HOLD).then_some(())
        }
    })?;
    // CLOCK_MONOTONIC, as the producer's stamps: its stall began before this.
    let decided = now_nanos();
    let (inflight_bytes, pool_usage, inflight_record_bytes) = inflight(arena, board, ids);
    // Resume; T2 is when the consumer actually read again.
    command(board, cmd + 2, children)?;
    // Relaxed: ordered by the Acquire on `ack` in `command`.
    let t_resume = board.resumed_at.load(Ordering::Relaxed);
    // The producer's stall that spans the resume.
    let found = poll_for(RESTART_TIMEOUT, children, || {
        // Acquire: pairs with the producer's Release increment, after it logged the stall.
        let n = board.stalls.load(Ordering::Acquire);
        (n.saturating_sub(LOG as u64)..n).rev().find_map(|k| {
            let e = &board.stall_log[(k % LOG as u64) as usize];
            // Relaxed (both): ordered by the Acquire above.
            let (b, en) = (e[0].load(Ordering::Relaxed), e[1].load(Ordering::Relaxed));
            (b < t_resume && en >= t_resume).then_some((b, en))
        })
    })?;
    // Valid only if the producer was blocked from before the parent decided it had stopped
    // until after the resume.
    let Some((begin, end)) = found.filter(|&(b, _)| b <= decided) else {
        return Ok(None);
    };
    Ok(Some(Cycle {
        stop_ns: begin.saturating_sub(t_stop),
        already_blocked: begin < t_stop,
        restart_ns: end - t_resume,
        inflight_bytes,
        inflight_record_bytes,
        pool_usage,
    }))
}

// ---------------------------------------------------------------------------------------
// The children

fn pin_from_env() -> Res<()> {
    if let Ok(cpu) = std::env::var(ENV_CPU) {
        pin_to(cpu.parse()?)?;
    }
    Ok(())
}

fn producer_main() -> Res<()> {
    pin_from_env()?;
    let board = Shared::<Board>::attach_inherited(ENV_BOARD)?;
    // Worker slots: 0 the parent, 1 the producer, 2 the consumer.
    let env = ShuffleEnvironment::attach_inherited(1)?;
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::PipelinedBounded, 1);
    cfg.timeout = Some(WAIT_TIMEOUT);
    let mut writer =
        env.create_record_writer::<[u8], _>(&cfg, ForwardPartitioner, BufferTimeout::from_millis(TIMEOUT_MS)?)?;
    let task = TaskMetricsHandle::claim(env.arena().clone(), env.worker())?;
    writer.partition_mut().set_task_metrics(task.clone());
    let info = writer.partition().info();
    let stop = ready_go_stop(
        stdin_lines(),
        &format!("ready task={} partition={} channel={}", task.slot(), info.slot, info.first_channel),
        CHILD_DEADLINE,
        CHILD_DEADLINE,
    )?;
    let long = LONG_STALL.as_nanos() as u64;
    let mut rec = [0u8; RECORD];
    let mut i = 0u64;
    let mut last = now_nanos();
    // Relaxed: as above.
    while !stop.load(Ordering::Relaxed) {
        rec[..8].copy_from_slice(&i.to_le_bytes());
        writer.emit(&rec[..])?;
        i += 1;
        // Relaxed: a counter the parent samples.
        board.produced.store(i, Ordering::Relaxed);
        if i % CLOCK_EVERY == 0 {
            let now = now_nanos();
            if now - last > long {
                // Relaxed: a single writer (this thread).
                let k = board.stalls.load(Ordering::Relaxed);
                let e = &board.stall_log[(k % LOG as u64) as usize];
                // Relaxed (both): published by the Release increment below.
                e[0].store(last, Ordering::Relaxed);
                e[1].store(now, Ordering::Relaxed);
                // Release: pairs with the parent's Acquire load; the entry is visible first.
                board.stalls.store(k + 1, Ordering::Release);
            }
            last = now;
        }
    }
    writer.flush_all()?;
    writer.finish()?;
    writer.into_partition().release_when_consumed(Some(WAIT_TIMEOUT))?;
    task.end(false);
    let u = rusage(libc::RUSAGE_SELF)?;
    say(&format!("done sent={i} rss_kib={} cpu_ns={}", u.maxrss_kib, u.cpu_ns))
}

/// Busy-waits (no sleeping) until the next record is due; `period` ns apart. After a
/// stall no catch-up burst beyond 1 ms.
#[inline]
fn pace(next_due: &mut u64, period: u64) {
    let mut now = now_nanos();
    if *next_due + 1_000_000 < now {
        *next_due = now;
    }
    // Bounded: next_due <= now + max(period, 1 ms), and period <= MAX_PERIOD_NS.
    while now < *next_due {
        spin_loop();
        now = now_nanos();
    }
    *next_due += period;
}

fn consumer_main() -> Res<()> {
    pin_from_env()?;
    let board = Shared::<Board>::attach_inherited(ENV_BOARD)?;
    let env = ShuffleEnvironment::attach_inherited(2)?;
    let inputs = vec![InputSpec { partition: ResultPartitionId::new(0, 0), subpartition: 0 }];
    let mut gate = env.create_input_gate(&InputGateConfig::new(inputs))?;
    let task = TaskMetricsHandle::claim(env.arena().clone(), env.worker())?;
    gate.set_task_metrics(task.clone());
    say(&format!("ready task={}", task.slot()))?;
    let mut next = 0u64;
    let mut bad: Option<String> = None;
    let mut acted = 0u64;
    let mut next_due = 0u64;
    let mut idle_since: Option<Instant> = None;
    let check = |data: &[u8], next: &mut u64, bad: &mut Option<String>| {
        let ok = data.len() == RECORD && data[..8] == next.to_le_bytes();
        if !ok && bad.is_none() {
            *bad = Some(format!("record {} of {} bytes, expected record {next}", data.len(), data.len()));
        }
        *next += 1;
        // Relaxed: a counter the parent samples.
        board.consumed.store(*next, Ordering::Relaxed);
    };
    loop {
        // Acquire: pairs with the parent's Release store of `cmd`.
        let cmd = board.cmd.load(Ordering::Acquire);
        if cmd != acted {
            acted = cmd;
            // Relaxed: ordered by the Release store of `ack` below.
            let stamp = if cmd % 2 == 1 { &board.paused_at } else { &board.resumed_at };
            stamp.store(now_nanos(), Ordering::Relaxed);
            // Release: pairs with the parent's Acquire load; the stamp is visible first.
            board.ack.store(cmd, Ordering::Release);
            if cmd % 2 == 1 {
                // Stopped: sleep (nothing to do, and the producer needs the core), looking
                // for the resume every millisecond, bounded.
                let since = Instant::now();
                // Acquire: as above.
                while board.cmd.load(Ordering::Acquire) == cmd {
                    if since.elapsed() > CHILD_DEADLINE {
                        return Err("paused for longer than the deadline".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            next_due = now_nanos();
        }
        // Relaxed: a setting; see the parent.
        let period = board.period_ns.load(Ordering::Relaxed).min(MAX_PERIOD_NS);
        let max = if period > 0 { 64 } else { 4096 };
        let n = gate.drain_records(max, &mut |_, data| {
            check(data, &mut next, &mut bad);
            if period > 0 {
                pace(&mut next_due, period);
            }
            Ok(())
        })?;
        if n == 0 {
            match gate.next(Some(POLL_SLICE)) {
                Ok(GateItem::Record { data, .. }) => {
                    check(data, &mut next, &mut bad);
                    if period > 0 {
                        pace(&mut next_due, period);
                    }
                }
                Ok(GateItem::End) => break,
                Ok(other) => return Err(format!("unexpected {other:?}").into()),
                Err(shmflow::Error::Timeout(..)) => {
                    if idle_since.get_or_insert_with(Instant::now).elapsed() > CHILD_DEADLINE {
                        return Err(format!("no input within {CHILD_DEADLINE:?}").into());
                    }
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        idle_since = None;
        if let Some(why) = bad.take() {
            return Err(why.into());
        }
    }
    if let Some(why) = bad.take() {
        return Err(why.into());
    }
    task.end(false);
    let u = rusage(libc::RUSAGE_SELF)?;
    say(&format!("done received={next} rss_kib={} cpu_ns={}", u.maxrss_kib, u.cpu_ns))
}

// ---------------------------------------------------------------------------------------
// Report

/// The nearest-rank `q` quantile (0..=1) of `v` (sorted here).
fn quantile<T: Copy + PartialOrd>(v: &[T], q: f64) -> Option<T> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if s.is_empty() {
        return None;
    }
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// (phase, metric, value) of every figure.
fn figures(o: &Outcome) -> Vec<(&'static str, String, Option<f64>)> {
    let mut f = Vec::new();
    for (name, ph) in [("unthrottled", &o.unthrottled), ("throttled", &o.throttled)] {
        let u = |v: Option<u64>| v.map(|x| x as f64);
        f.extend([
            (name, "records_per_s".to_string(), Some(ph.consumed_per_s)),
            (name, "producer_records_per_s".into(), Some(ph.produced_per_s)),
            (name, "producer_back_pressured_ms_per_s".into(), Some(ph.producer.back_pressured_ms_per_s)),
            (name, "producer_busy_ms_per_s".into(), Some(ph.producer.busy_ms_per_s)),
            (name, "consumer_idle_ms_per_s".into(), Some(ph.consumer.idle_ms_per_s)),
            (name, "inflight_bytes_p50".into(), u(quantile(&ph.inflight_bytes, 0.5))),
            (name, "inflight_bytes_max".into(), u(quantile(&ph.inflight_bytes, 1.0))),
            (name, "inflight_record_bytes_p50".into(), u(quantile(&ph.inflight_record_bytes, 0.5))),
            (name, "out_pool_usage_p50".into(), quantile(&ph.pool_usage, 0.5)),
            (name, "samples".into(), Some(ph.inflight_bytes.len() as f64)),
        ]);
    }
    f.push((
        "throttled",
        "rate_ratio_to_unthrottled".into(),
        Some(o.throttled.consumed_per_s / o.unthrottled.consumed_per_s.max(1.0)),
    ));
    f.push(("throttled", "consumer_period_ns".into(), Some(o.period_ns as f64)));
    for (kind, cycles, discarded) in &o.cycles {
        let phase = if *kind == "throttled" { "cycles-throttled" } else { "cycles-full" };
        let stop: Vec<u64> = cycles.iter().map(|c| c.stop_ns).collect();
        let restart: Vec<u64> = cycles.iter().map(|c| c.restart_ns).collect();
        let bytes: Vec<u64> = cycles.iter().map(|c| c.inflight_bytes).collect();
        let rec: Vec<u64> = cycles.iter().map(|c| c.inflight_record_bytes).collect();
        let pool: Vec<f64> = cycles.iter().map(|c| c.pool_usage).collect();
        let u = |v: Option<u64>| v.map(|x| x as f64);
        f.extend([
            (phase, "stop_ns_p50".to_string(), u(quantile(&stop, 0.5))),
            (phase, "stop_ns_max".into(), u(quantile(&stop, 1.0))),
            (phase, "restart_ns_p50".into(), u(quantile(&restart, 0.5))),
            (phase, "restart_ns_max".into(), u(quantile(&restart, 1.0))),
            (phase, "stop_inflight_bytes_p50".into(), u(quantile(&bytes, 0.5))),
            (phase, "stop_inflight_bytes_max".into(), u(quantile(&bytes, 1.0))),
            (phase, "stop_inflight_record_bytes_p50".into(), u(quantile(&rec, 0.5))),
            (phase, "stop_out_pool_usage_p50".into(), quantile(&pool, 0.5)),
            (phase, "stop_already_blocked".into(), Some(cycles.iter().filter(|c| c.already_blocked).count() as f64)),
            (phase, "cycles".into(), Some(cycles.len() as f64)),
            (phase, "cycles_discarded".into(), Some(f64::from(*discarded))),
        ]);
    }
    f.extend([
        ("run", "peak_rss_kib".to_string(), Some(o.rss_kib.0.max(o.rss_kib.1) as f64)),
        ("run", "peak_rss_kib_producer".into(), Some(o.rss_kib.0 as f64)),
        ("run", "peak_rss_kib_consumer".into(), Some(o.rss_kib.1 as f64)),
        ("run", "arena_kib".into(), Some(o.arena_kib as f64)),
        ("run", "records_total".into(), Some(o.records as f64)),
    ]);
    f
}

fn kib(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), |b| format!("{:.0} KiB", b as f64 / 1024.0))
}

fn us(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), |n| format!("{:.1} us", n as f64 / 1e3))
}

fn print_report(o: &Outcome) {
    println!(
        "| phase | consumer rec/s | producer rec/s | producer back-pressured ms/s | consumer idle ms/s | in-flight p50 \
         | in-flight max | records in flight p50 | outPoolUsage p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, ph) in [("unthrottled", &o.unthrottled), ("throttled", &o.throttled)] {
        println!(
            "| {name} | {:.2} M | {:.2} M | {:.0} | {:.0} | {} | {} | {} | {} |",
            ph.consumed_per_s / 1e6,
            ph.produced_per_s / 1e6,
            ph.producer.back_pressured_ms_per_s,
            ph.consumer.idle_ms_per_s,
            kib(quantile(&ph.inflight_bytes, 0.5)),
            kib(quantile(&ph.inflight_bytes, 1.0)),
            kib(quantile(&ph.inflight_record_bytes, 0.5)),
            quantile(&ph.pool_usage, 0.5).map_or_else(|| "-".into(), |u| format!("{:.0}%", u * 100.0)),
        );
    }
    println!(
        "\nthrottled: consumer paced at {} ns per record = {:.1}% of the unthrottled rate (target {THROTTLE_PCT}%)\n",
        o.period_ns,
        o.throttled.consumed_per_s / o.unthrottled.consumed_per_s.max(1.0) * 100.0
    );
    println!(
        "| consumer before stop | cycles | stop p50 | stop max | already blocked at T | in flight at stop p50 (max) \
         | records in flight at stop p50 | restart p50 | restart max |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (kind, cycles, discarded) in &o.cycles {
        let stop: Vec<u64> = cycles.iter().map(|c| c.stop_ns).collect();
        let restart: Vec<u64> = cycles.iter().map(|c| c.restart_ns).collect();
        let bytes: Vec<u64> = cycles.iter().map(|c| c.inflight_bytes).collect();
        let rec: Vec<u64> = cycles.iter().map(|c| c.inflight_record_bytes).collect();
        let discarded = if *discarded > 0 { format!(" (+{discarded} discarded)") } else { String::new() };
        println!(
            "| {kind} | {}{discarded} | {} | {} | {} | {} ({}) | {} | {} | {} |",
            cycles.len(),
            us(quantile(&stop, 0.5)),
            us(quantile(&stop, 1.0)),
            cycles.iter().filter(|c| c.already_blocked).count(),
            kib(quantile(&bytes, 0.5)),
            kib(quantile(&bytes, 1.0)),
            kib(quantile(&rec, 0.5)),
            us(quantile(&restart, 0.5)),
            us(quantile(&restart, 1.0)),
        );
    }
    for (kind, cycles, _) in &o.cycles {
        let each: Vec<String> =
            cycles.iter().map(|c| format!("{:.0}/{:.0}", c.stop_ns as f64 / 1e3, c.restart_ns as f64 / 1e3)).collect();
        println!("\n{kind}: stop/restart per cycle (us): {}", each.join(" "));
    }
    println!(
        "\npeak RSS: producer {:.1} MiB, consumer {:.1} MiB; arena {:.1} MiB; {} records, all checked in order",
        o.rss_kib.0 as f64 / 1024.0,
        o.rss_kib.1 as f64 / 1024.0,
        o.arena_kib as f64 / 1024.0,
        o.records
    );
    println!(
        "(in flight: channel backlog x segment size; records in flight: produced - consumed, x {} B framed; stop: \
         producer's last record before its stall - consumer stopped (0 when already blocked); restart: producer's \
         first record after the stall - consumer resumed; all stamps CLOCK_MONOTONIC in the processes themselves)",
        RECORD + LEN_PREFIX
    );
}

/// Flat JSON records, one per figure.
fn json_records(plan: &Plan, o: &Outcome) -> Res<String> {
    let mut out = Vec::new();
    for (phase, metric, value) in figures(o) {
        out.push(serde_json::json!({
            "bench": "backpressure",
            "system": "shmflow",
            "run": plan.run_kind(),
            "mode": "adaptive",
            "phase": phase,
            "payload_bytes": RECORD,
            "timeout_ms": TIMEOUT_MS,
            "throttle_pct": THROTTLE_PCT,
            "metric": metric,
            "value": value.filter(|v| v.is_finite()),
        }));
    }
    Ok(serde_json::to_string_pretty(&out)? + "\n")
}
