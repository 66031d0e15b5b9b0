//! The `shmflow` command line.
//!
//! `shmflow demo` runs the foundation end to end across two processes: this process creates
//! a memfd arena, spawns itself as the consumer with the arena fd inherited, streams records
//! through pool, builder, rings, credits and wake-ups, and both sides check a checksum.

use clap::{Args, Parser, Subcommand, ValueEnum};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{BufferTimeout, ResultPartitionType, SelectorKind};
use shmflow::ring::{StreamReader, StreamWriter};
mod jobs;

use jobs::TextSource;
use shmflow::runtime::{is_worker, run, JobSummary, ProgressTotal, RuntimeConfig};
use shmflow::sync::WaitPolicy;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "shmflow", version, about = "Zero-copy shared-memory shuffle runtime")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Spin while waiting (lowest latency, a core busy).
    Spin,
    /// Spin briefly, then park on a futex (the default).
    Adaptive,
    /// Park at once.
    Park,
}

impl Mode {
    fn policy(self) -> WaitPolicy {
        match self {
            Mode::Spin => WaitPolicy::spin(),
            Mode::Adaptive => WaitPolicy::adaptive(),
            Mode::Park => WaitPolicy::park(),
        }
    }
}

/// Options every job takes.
#[derive(Args, Clone)]
struct JobOpts {
    /// Parallelism of every vertex.
    #[arg(long, default_value_t = 2)]
    parallelism: u32,
    /// Worker processes (each runs several subtasks as threads).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Flink's buffer timeout in ms: 0 = flush every record, -1 = only full segments.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    buffer_timeout: i64,
    /// Segment size in bytes (a power of two, 4 KiB..16 MiB).
    #[arg(long, default_value_t = 32 * 1024)]
    segment_size: u32,
    /// Arena size in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    arena_size: u64,
    /// Buffer debloating (Flink's FLIP-183): gates keep about `MS` ms of their throughput in
    /// flight instead of whole segments (1000 is Flink's default target).
    #[arg(long, value_name = "MS")]
    debloat: Option<u64>,
    /// Fail the job when a worker sends nothing (not even a heartbeat) for this long: a
    /// stopped or hung worker (default 30000, or SHMFLOW_HEARTBEAT_TIMEOUT_MS).
    #[arg(long, value_name = "MS")]
    heartbeat_timeout_ms: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress on stderr (by default a bar with percent and ETA on a terminal, a plain
    /// line a second otherwise).
    #[arg(long)]
    quiet: bool,
    /// How tasks wait for input and for buffers: spin (lowest latency, a core busy per
    /// waiting task), adaptive (spin briefly, then park) or park.
    #[arg(long, value_enum, default_value_t = Mode::Adaptive)]
    wait: Mode,
    /// Exchange kind: pipelined (shared memory) or blocking (files; wordcount only).
    #[arg(long, value_enum, default_value_t = Exchange::Pipelined)]
    exchange: Exchange,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Exchange {
    /// Flink's PIPELINED_BOUNDED: consumed while produced, through the arena.
    Pipelined,
    /// Flink's BLOCKING: written completely to files, then read.
    Blocking,
}

#[derive(Subcommand)]
enum JobCmd {
    /// Flink's WordCount: count every word of the input across worker processes.
    Wordcount {
        /// A text file, UTF-8 (other bytes outside ASCII separate words; default: a generated
        /// text of --generated-mb MB). It is memory-mapped: truncating it while the job reads
        /// it can kill the job (SIGBUS); a file whose length changes fails the job.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Where to write `word<TAB>count` lines sorted by word (checked before the job runs;
        /// written to `<output>.tmp-<pid>` and renamed when complete).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Size of the generated default text in MB.
        #[arg(long, default_value_t = 300)]
        generated_mb: u64,
        #[command(flatten)]
        opts: JobOpts,
    },
    /// Flink's WindowWordCount: count windows of `--window` words sliding by `--slide`.
    WindowWordcount {
        /// A text file, UTF-8 (other bytes outside ASCII separate words; default: a generated
        /// text of --generated-mb MB). It is memory-mapped: truncating it while the job reads
        /// it can kill the job (SIGBUS); a file whose length changes fails the job.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Where to write one `word<TAB>sum` line per window firing, sorted by word (checked
        /// before the job runs; written to `<output>.tmp-<pid>` and renamed when complete).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Size of the generated default text in MB.
        #[arg(long, default_value_t = 300)]
        generated_mb: u64,
        /// Window size in words (Flink's example: 250).
        #[arg(long, default_value_t = 250)]
        window: u64,
        /// Slide in words (Flink's example: 150); equal to --window for tumbling windows.
        #[arg(long, default_value_t = 150)]
        slide: u64,
        #[command(flatten)]
        opts: JobOpts,
    },
    /// Capacity planning: generators -> exchange -> counting, checksumming sinks.
    Shuffle {
        /// Records in all (at most 10^12).
        #[arg(long, default_value_t = 100_000_000)]
        records: u64,
        /// Payload bytes per record (at least 8).
        #[arg(long, default_value_t = 16)]
        payload: u32,
        /// key-hash, rebalance, rescale, broadcast, forward or global.
        #[arg(long, default_value = "key-hash")]
        selector: String,
        /// Busy work per record at the sinks, in ns (plays a slow downstream operator; at most
        /// 1 s).
        #[arg(long, default_value_t = 0)]
        sink_work_ns: u64,
        /// Busy work per record at the generators, in ns (plays a slow upstream operator; at
        /// most 1 s).
        #[arg(long, default_value_t = 0)]
        source_work_ns: u64,
        /// Measure record latency instead of throughput: rate-limited generators (--rate)
        /// stamp each record, the sinks report percentiles of arrival minus stamp (the first
        /// tenth of each generator's records is warm-up). Payload at least 16 bytes; key-hash
        /// or rebalance.
        #[arg(long, requires = "rate", conflicts_with_all = ["sink_work_ns", "source_work_ns"])]
        latency: bool,
        /// Records per second in all, for --latency (1..=100000000).
        #[arg(long, requires = "latency")]
        rate: Option<u64>,
        #[command(flatten)]
        opts: JobOpts,
    },
}

/// Which arena a tool looks at: at most one of these (none: the one running job's).
#[derive(Args, Clone)]
struct ArenaSel {
    /// The coordinator's pid of a running job (its memfd arena is found through /proc).
    #[arg(long)]
    pid: Option<u32>,
    /// A named arena under /dev/shm.
    #[arg(long)]
    name: Option<String>,
    /// An arena file at any path.
    #[arg(long)]
    path: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a built-in job across worker processes.
    Run {
        #[command(subcommand)]
        job: JobCmd,
    },
    /// Stream records from this process to a child process through a shared arena.
    Demo {
        /// Number of records (at most 10^12).
        #[arg(long, default_value_t = 20_000_000)]
        records: u64,
        /// Payload bytes per record (at least 8, at most segment size - 4).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// How both sides wait.
        #[arg(long, value_enum, default_value_t = Mode::Adaptive)]
        mode: Mode,
        /// Segment size in bytes (a power of two, 4 KiB..16 MiB).
        #[arg(long, default_value_t = 32 * 1024)]
        segment_size: u32,
        /// Segments the consumer grants as credit (and the producer's pool quota).
        #[arg(long, default_value_t = 8)]
        credit: u32,
    },
    /// Show a running job's tasks, partitions and channels, live, from the arena's counters
    /// (read-only: it never writes to the arena).
    Top {
        #[command(flatten)]
        arena: ArenaSel,
        /// Print one snapshot and exit.
        #[arg(long)]
        once: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Milliseconds between refreshes (and over which rates are measured).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Check an arena's consistency (free stack, segment owners) without writing to it.
    Check {
        #[command(flatten)]
        arena: ArenaSel,
        /// Also fail unless every segment is free (a finished job leaked nothing).
        #[arg(long)]
        idle: bool,
        /// When no live process uses the arena any more, return every segment the dead
        /// left behind to the free list first (needs write access: named arenas).
        #[arg(long)]
        recover: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove named arenas under /dev/shm whose creator process is dead, and job
    /// directories (`shmflow-job-<pid>-*`, `shmflow-blocking-<pid>-*`) under the temp dir
    /// ($TMPDIR or /tmp) whose coordinator pid is gone, with the temp output
    /// (`<output>.tmp-<pid>`) such a coordinator left. A directory whose pid belongs to a
    /// live process is kept even if that process is not shmflow (the pid may have been
    /// reused): stop it or remove the directory by hand. Pids are this PID namespace's: a
    /// job in another container that shares /dev/shm or the temp dir looks dead here, so
    /// run clean where the jobs run.
    Clean {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// The consumer half of `demo` (started by `demo` itself).
    #[command(hide = true)]
    DemoConsumer {
        #[arg(long)]
        credit: u32,
        #[arg(long, value_enum)]
        mode: Mode,
        /// The producer's pid (this process's parent when it started): given on the
        /// command line, so a producer that dies before we look is not mistaken for init.
        #[arg(long)]
        producer: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Run { .. }) && !is_worker() {
        // From the start: a Ctrl-C (or SIGTERM, SIGHUP) at any moment of a run, also before
        // the workers start or while the output is merged, stops it and cleans up.
        shmflow::sync::install_stop_handler();
    }
    let r = match cli.command {
        Cmd::Demo { records, payload, mode, segment_size, credit } => {
            demo(records, payload, mode, segment_size, credit)
        }
        Cmd::DemoConsumer { credit, mode, producer } => demo_consumer(credit, mode, producer),
        // A worker whose coordinator is gone already says so before anything else.
        Cmd::Run { job } => {
            if is_worker() { shmflow::runtime::check_coordinator().map_err(Into::into) } else { Ok(()) }
                .and_then(|()| run_builtin(job))
        }
        Cmd::Top { arena, once, json, interval_ms } => top(arena, once, json, interval_ms),
        Cmd::Check { arena, idle, recover, json } => check(arena, idle, recover, json),
        Cmd::Clean { dry_run } => clean(dry_run),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(&shmflow::Error::Interrupted { signal }) = e.downcast_ref::<shmflow::Error>() {
                // One line; the workers were stopped quietly.
                eprintln!("shmflow: interrupted");
                return ExitCode::from(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)));
            }
            // A worker stopped by its coordinator exits quietly: the coordinator reports.
            if is_worker() && matches!(e.downcast_ref::<shmflow::Error>(), Some(shmflow::Error::Cancelled)) {
                return ExitCode::from(3);
            }
            let who = if is_worker() { format!("shmflow worker {}", std::process::id()) } else { "shmflow".into() };
            eprintln!("{who}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// `println!` that ignores a closed stdout (`shmflow ... | head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Kills and reaps the child if the parent leaves early.
struct ChildGuard(Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The most records a job or the demo takes: far more than a run of days moves, and small
/// enough that no count or share computed from it wraps.
const MAX_RECORDS: u64 = 1_000_000_000_000;

/// The most busy work per record: one second.
const MAX_WORK_NS: u64 = 1_000_000_000;

fn check_records(records: u64) -> AnyResult<()> {
    if records > MAX_RECORDS {
        return Err(format!("--records {records} is out of range (0..={MAX_RECORDS})").into());
    }
    Ok(())
}

fn demo(records: u64, payload: usize, mode: Mode, segment_size: u32, credit: u32) -> AnyResult<()> {
    check_records(records)?;
    if !segment_size.is_power_of_two() || !(4096..=16 << 20).contains(&segment_size) {
        return Err(format!("--segment-size {segment_size} must be a power of two in 4096..=16777216").into());
    }
    // `segment_size >= 4096` from here on: no subtraction below wraps.
    let max_payload = segment_size as usize - 4;
    if !(8..=max_payload).contains(&payload) {
        return Err(
            format!("--payload {payload} must be in 8..={max_payload} for a segment of {segment_size} bytes").into()
        );
    }
    let ring_capacity = ArenaConfig::default().ring_capacity;
    if credit == 0 || credit >= ring_capacity {
        return Err(format!("--credit {credit} is out of range (1..={})", ring_capacity - 1).into());
    }
    let cfg =
        ArenaConfig { segment_size, segment_count: (credit * 2).max(16), max_channels: 2, ..ArenaConfig::default() };
    let arena = Arc::new(Arena::create_memfd(&cfg, "demo")?);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "demo-consumer",
        "--producer",
        &std::process::id().to_string(),
        "--credit",
        &credit.to_string(),
        "--mode",
    ]);
    cmd.arg(match mode {
        Mode::Spin => "spin",
        Mode::Adaptive => "adaptive",
        Mode::Park => "park",
    });
    cmd.stdout(Stdio::piped());
    arena.inherit_fd_into(&mut cmd)?;
    let mut child = ChildGuard(Some(cmd.spawn()?));
    let consumer = child.0.as_ref().map_or(0, std::process::Child::id);
    // Waits end every liveness interval to look at the consumer.
    let mut w = StreamWriter::new(arena.clone(), 0, credit, mode.policy(), Some(LIVENESS_INTERVAL))?;
    let consumer_alive = || !child_exited(consumer);
    let mut buf = vec![0u8; payload];
    let mut sum = 0u64;
    let start = Instant::now();
    for i in 0..records {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        sum = sum.wrapping_add(i);
        while_peer_lives(|| w.write(&buf), &consumer_alive, "consumer", consumer)?;
    }
    while_peer_lives(|| w.finish(), &consumer_alive, "consumer", consumer)?;
    let out = child.0.take().expect("child").wait_with_output()?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("consumer failed ({}): {text}", out.status).into());
    }
    let mut it = text.split_whitespace();
    let (n, s): (u64, u64) = (it.next().unwrap_or("0").parse()?, it.next().unwrap_or("0").parse()?);
    if n != records || s != sum {
        return Err(format!("consumer saw {n} records with sum {s}, expected {records} with sum {sum}").into());
    }
    let secs = elapsed.as_secs_f64();
    out!(
        "{records} records of {payload} B across two processes in {secs:.3} s: {:.1} M records/s, {:.2} GB/s; \
         {} segments, producer back-pressured {:.1} ms, checksums match",
        records as f64 / secs / 1e6,
        records as f64 * payload as f64 / secs / 1e9,
        w.segments,
        w.pool().blocked_ns as f64 / 1e6,
    );
    Ok(())
}

/// How often the demo's two sides look at each other while they wait (as the gates do by
/// default): a dead peer is noticed within about this long.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long the demo's sides wait without progress for a peer that lives.
const DEMO_PATIENCE: Duration = Duration::from_secs(30);

/// Whether child `pid` has exited (without reaping it).
fn child_exited(pid: u32) -> bool {
    // SAFETY: a zeroed siginfo_t is valid; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOWAIT leaves the child to be reaped by its owner; WNOHANG never blocks.
    let r = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // SAFETY: waitid filled `info` (si_pid stays 0 while the child runs).
    r == 0 && unsafe { info.si_pid() } != 0
}

/// Runs `op`, whose waits end after [`LIVENESS_INTERVAL`], again after each timeout while
/// the peer lives, for at most [`DEMO_PATIENCE`]; a dead peer ends it with an error
/// naming it.
fn while_peer_lives<T>(
    mut op: impl FnMut() -> shmflow::Result<T>,
    alive: &dyn Fn() -> bool,
    role: &str,
    pid: u32,
) -> AnyResult<T> {
    // Read the clock only once a wait timed out: this wraps every record.
    let mut deadline = None;
    loop {
        match op() {
            Err(shmflow::Error::Timeout(..)) => {
                if !alive() {
                    return Err(format!("the {role} (pid {pid}) died").into());
                }
                if Instant::now() >= *deadline.get_or_insert_with(|| Instant::now() + DEMO_PATIENCE) {
                    return Err(format!("the {role} (pid {pid}) made no progress for {DEMO_PATIENCE:?}").into());
                }
            }
            r => return Ok(r?),
        }
    }
}

fn demo_consumer(credit: u32, mode: Mode, producer: u32) -> AnyResult<()> {
    let arena = Arc::new(Arena::attach_inherited()?);
    let mut r = StreamReader::new(arena, 0, credit, mode.policy())?;
    // SAFETY: getppid has no preconditions and cannot fail; a dead parent leaves us to
    // another (init or a subreaper), also when it died before we first looked.
    let producer_alive = || unsafe { libc::getppid() } as u32 == producer;
    let (mut n, mut sum) = (0u64, 0u64);
    let seq = |p: &[u8]| p.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes);
    while let Some(v) =
        while_peer_lives(|| r.next(Some(LIVENESS_INTERVAL), seq), &producer_alive, "producer", producer)?
    {
        let Some(v) = v else {
            return Err(format!("record {n} is shorter than its 8-byte sequence number").into());
        };
        if v != n {
            return Err(format!("record {n} carried sequence number {v}").into());
        }
        sum = sum.wrapping_add(v);
        n += 1;
    }
    out!("{n} {sum}");
    Ok(())
}

fn runtime_config(o: &JobOpts) -> AnyResult<RuntimeConfig> {
    if o.parallelism == 0 || o.parallelism > 1024 {
        return Err(format!("--parallelism {} is out of range (1..=1024)", o.parallelism).into());
    }
    if o.workers == 0 || o.workers > 256 {
        return Err(format!("--workers {} is out of range (1..=256)", o.workers).into());
    }
    if o.arena_size < 1 << 20 || o.arena_size > 1 << 40 {
        return Err(format!("--arena-size {} is out of range (1 MiB..=1 TiB)", o.arena_size).into());
    }
    let defaults = RuntimeConfig::default();
    let heartbeat_timeout = match o.heartbeat_timeout_ms {
        None => defaults.heartbeat_timeout,
        Some(ms) if (100..=3_600_000).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => return Err(format!("--heartbeat-timeout-ms {ms} is out of range (100..=3600000)").into()),
    };
    Ok(RuntimeConfig {
        workers: o.workers,
        heartbeat_timeout,
        buffer_timeout: BufferTimeout::from_millis(o.buffer_timeout)?,
        segment_size: o.segment_size,
        arena_size: o.arena_size,
        progress: !o.quiet && !o.json,
        wait_policy: o.wait.policy(),
        debloat: match o.debloat {
            None => None,
            Some(ms) if (1..=60_000).contains(&ms) => Some(shmflow::gate::DebloatConfig {
                target: Duration::from_millis(ms),
                ..shmflow::gate::DebloatConfig::default()
            }),
            Some(ms) => return Err(format!("--debloat {ms} is out of range (1..=60000 ms)").into()),
        },
        ..defaults
    })
}

/// The directory the sinks write part files to: made by the coordinator (mode 0700, named
/// `shmflow-job-<pid>-<nanos>` under the temp dir; `shmflow clean` removes it once that pid
/// is gone), named to the workers through the environment. Removed by the coordinator when
/// it drops.
struct JobDir {
    path: PathBuf,
    owned: bool,
}

impl JobDir {
    const ENV: &'static str = "SHMFLOW_JOB_DIR";

    fn get() -> AnyResult<Self> {
        if is_worker() {
            let p = std::env::var_os(Self::ENV).ok_or("worker started without SHMFLOW_JOB_DIR")?;
            return Ok(Self { path: PathBuf::from(p), owned: false });
        }
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{JOB_DIR_PREFIX}{}-{nanos}", std::process::id()));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
        }
        // Workers are started from this process and inherit the variable.
        std::env::set_var(Self::ENV, &path);
        Ok(Self { path, owned: true })
    }
}

impl JobDir {
    /// The file in the job directory that names the run's temp output, for `shmflow clean`
    /// after a coordinator killed before it could remove either.
    const OUTPUT_NOTE: &'static str = "output-temp";

    /// Notes where the temp output is (coordinator only).
    fn note_output(&self, out: Option<&jobs::OutputFile>) -> AnyResult<()> {
        if let (true, Some(tmp)) = (self.owned, out.and_then(jobs::OutputFile::temp_path)) {
            let note = self.path.join(Self::OUTPUT_NOTE);
            std::fs::write(&note, tmp.as_os_str().as_encoded_bytes())
                .map_err(|e| format!("writing {}: {e}", note.display()))?;
        }
        Ok(())
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn print_summary(s: &JobSummary, json: bool, extra: serde_json::Value) {
    if json {
        let mut v = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    out!(
        "{}: {} records, {:.1} MB through the first exchange in {:.3} s: {:.2} M records/s ({} workers, {} subtasks)",
        s.job,
        s.records,
        s.bytes as f64 / 1e6,
        s.elapsed_s,
        s.records_per_s / 1e6,
        s.workers,
        s.subtasks
    );
    for (name, a) in &s.accumulators {
        match a {
            shmflow::runtime::accumulators::Accumulator::Sum(v) => out!("  accumulator {name}: {v}"),
            shmflow::runtime::accumulators::Accumulator::List(l) => out!("  accumulator {name}: {l:?}"),
        }
    }
    for e in &s.edges {
        out!(
            "  edge {} -> {} [{} {}]: {} records, {:.1} MB, max in flight {} segments ({:.1} MB), back-pressured {:.0} ms ({:.1}%)",
            e.from,
            e.to,
            e.selector,
            e.partition_type,
            e.records,
            e.bytes as f64 / 1e6,
            e.max_in_flight_segments,
            e.max_in_flight_bytes as f64 / 1e6,
            e.back_pressured_ms,
            e.back_pressured_ratio * 100.0
        );
    }
}

/// The input file's length as the coordinator saw it, handed to the workers so that every
/// subtask reads the same text (see [`TextSource::File`]).
const INPUT_LEN_ENV: &str = "SHMFLOW_INPUT_LEN";

fn text_source(input: Option<PathBuf>, mb: u64) -> AnyResult<TextSource> {
    let mut src = match input {
        Some(p) => TextSource::file(p),
        None => {
            if mb == 0 || mb > 100_000 {
                return Err(format!("--generated-mb {mb} is out of range (1..=100000)").into());
            }
            TextSource::generated_mb(mb)
        }
    };
    if is_worker() {
        if let TextSource::File { len, .. } = &mut src {
            let v = std::env::var(INPUT_LEN_ENV).map_err(|_| format!("worker started without {INPUT_LEN_ENV}"))?;
            *len = Some(v.parse().map_err(|_| format!("{INPUT_LEN_ENV}={v:?} is not a length"))?);
        }
    } else {
        if let TextSource::File { path, .. } = &src {
            refuse_unsized(path)?;
        }
        if let Some(note) = src.validate()? {
            eprintln!("shmflow: note: {note}");
        }
        if let TextSource::File { len: Some(n), .. } = &src {
            // Workers are started from this process and inherit the variable.
            std::env::set_var(INPUT_LEN_ENV, n.to_string());
        }
    }
    Ok(src)
}

/// The input of a text job for the progress bar: the file's bytes, or about
/// `generated_mb` MB of generated text.
fn text_total(src: &TextSource, generated_mb: u64) -> ProgressTotal {
    match src {
        TextSource::File { len: Some(n), .. } => ProgressTotal::SourceInputBytes(*n),
        _ => ProgressTotal::SourceInputBytes(generated_mb.saturating_mul(1_000_000)),
    }
}

/// Refuses an input whose size the kernel reports as 0 although it has content (files of
/// /proc and /sys): the input is memory-mapped by its length, so it would count no words.
fn refuse_unsized(path: &std::path::Path) -> AnyResult<()> {
    use std::io::Read;
    let Ok(m) = std::fs::metadata(path) else {
        return Ok(()); // `validate` says what is wrong with it.
    };
    if m.is_file() && m.len() == 0 {
        let mut byte = [0u8; 1];
        let has_content = std::fs::File::open(path).and_then(|mut f| f.read(&mut byte)).is_ok_and(|n| n > 0);
        if has_content {
            return Err(format!(
                "--input {} reports a size of 0 bytes but has content (a file of /proc or /sys?); \
                 shmflow maps its input by its size: copy it to a regular file first",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// `--output`, checked and created (as a temp file) by the coordinator before the job runs;
/// workers do not write it.
fn output_file(output: Option<&std::path::Path>) -> AnyResult<Option<jobs::OutputFile>> {
    match output {
        Some(p) if !is_worker() => {
            remove_stale_temps(p);
            Ok(Some(jobs::OutputFile::create(p)?))
        }
        _ => Ok(None),
    }
}

/// The pid in `<name>.tmp-<pid>` (the temp file of `--output <name>`), canonical decimal.
fn temp_pid(file_name: &str, name: &str) -> Option<u32> {
    let digits = file_name.strip_prefix(name)?.strip_prefix(".tmp-")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&p| p <= i32::MAX as u32)
}

/// Whether `path` is a regular file (not a link) of this user.
fn own_regular_file(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == me)
}

/// Removes the temp files `<output>.tmp-<pid>` that runs killed before they finished left
/// beside `output` (their pid is gone; a live pid's file is kept, it may be writing it).
fn remove_stale_temps(output: &std::path::Path) {
    // The temp file sits beside the file a symlink points to (as `OutputFile` does).
    let target = std::fs::canonicalize(output).unwrap_or_else(|_| output.to_path_buf());
    let (Some(name), Some(dir)) = (target.file_name().and_then(|n| n.to_str()), target.parent()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|f| temp_pid(f, name)) else {
            continue;
        };
        let stale = pid != std::process::id() && !pid_alive(pid) && own_regular_file(&e.path());
        if stale && std::fs::remove_file(e.path()).is_ok() {
            eprintln!("shmflow: note: removed {}, left by a run (pid {pid}) that died", e.path().display());
        }
    }
}

fn blocking_unsupported(o: &JobOpts, job: &str) -> AnyResult<()> {
    if o.exchange == Exchange::Blocking {
        return Err(format!("--exchange blocking is supported by wordcount only, not by {job}").into());
    }
    Ok(())
}

fn run_builtin(job: JobCmd) -> AnyResult<()> {
    match job {
        JobCmd::Wordcount { input, output, generated_mb, opts } => {
            let mut cfg = runtime_config(&opts)?;
            let src = text_source(input, generated_mb)?;
            cfg.progress_total = Some(text_total(&src, generated_mb));
            let out_file = output_file(output.as_deref())?;
            let dir = JobDir::get()?;
            dir.note_output(out_file.as_ref())?;
            let ptype = match opts.exchange {
                Exchange::Pipelined => ResultPartitionType::PipelinedBounded,
                Exchange::Blocking => ResultPartitionType::Blocking,
            };
            let graph = jobs::wordcount_job_with(src, opts.parallelism, dir.path.clone(), ptype);
            if let Some(s) = run(graph, &cfg)? {
                let lines = merge_interruptibly(&dir.path, out_file)?;
                let total: u64 = lines.iter().filter_map(|l| count_of(l)).sum();
                print_summary(&s, opts.json, serde_json::json!({ "distinct_words": lines.len(), "words": total }));
                if output.is_none() && !opts.json {
                    let mut top: Vec<_> = lines.iter().filter_map(|l| Some((count_of(l)?, l))).collect();
                    top.sort_by_key(|t| std::cmp::Reverse(t.0));
                    out!("{} distinct words, {total} words; the most frequent:", lines.len());
                    for (_, l) in top.iter().take(10) {
                        out!("  {}", String::from_utf8_lossy(l));
                    }
                }
            }
        }
        JobCmd::WindowWordcount { input, output, generated_mb, window, slide, opts } => {
            blocking_unsupported(&opts, "window-wordcount")?;
            if window == 0 || slide == 0 || slide > window {
                return Err(format!("--window {window} and --slide {slide} must satisfy 0 < slide <= window").into());
            }
            let mut cfg = runtime_config(&opts)?;
            let src = text_source(input, generated_mb)?;
            cfg.progress_total = Some(text_total(&src, generated_mb));
            let out_file = output_file(output.as_deref())?;
            let dir = JobDir::get()?;
            dir.note_output(out_file.as_ref())?;
            let graph = jobs::window_wordcount_job(src, opts.parallelism, window, slide, dir.path.clone());
            if let Some(s) = run(graph, &cfg)? {
                let lines = merge_interruptibly(&dir.path, out_file)?;
                print_summary(&s, opts.json, serde_json::json!({ "window_results": lines.len() }));
                if !opts.json {
                    out!("{} window results", lines.len());
                }
            }
        }
        JobCmd::Shuffle { records, payload, selector, latency: true, rate, opts, .. } => {
            shuffle_latency(records, payload, &selector, rate.unwrap_or(0), opts)?;
        }
        JobCmd::Shuffle { records, payload, selector, sink_work_ns, source_work_ns, opts, .. } => {
            blocking_unsupported(&opts, "shuffle")?;
            let kind: SelectorKind = selector.parse()?;
            if !(8..=256 << 20).contains(&payload) {
                return Err(format!("--payload {payload} is out of range (8..=268435456)").into());
            }
            check_records(records)?;
            for (flag, ns) in [("--sink-work-ns", sink_work_ns), ("--source-work-ns", source_work_ns)] {
                if ns > MAX_WORK_NS {
                    return Err(format!("{flag} {ns} is out of range (0..={MAX_WORK_NS})").into());
                }
            }
            let mut cfg = runtime_config(&opts)?;
            cfg.progress_total = Some(ProgressTotal::SourceRecords(records));
            let dir = JobDir::get()?;
            let graph = jobs::shuffle_job(
                records,
                payload,
                kind,
                opts.parallelism,
                dir.path.clone(),
                (source_work_ns, sink_work_ns),
            );
            if let Some(s) = run(graph, &cfg)? {
                let (n, sum, bad) = jobs::shuffle_totals(&dir.path)?;
                let fan = if kind == SelectorKind::Broadcast { u64::from(opts.parallelism) } else { 1 };
                // Within bounds (records <= 10^12, fan <= 1024); checked all the same.
                let want = records.checked_mul(fan).ok_or("--records times --parallelism overflows")?;
                // The sinks sum sequence numbers with wrapping_add: the exact sum (u128, no
                // wrap before the halving) modulo 2^64.
                let seq_sum = u128::from(records) * u128::from(records.saturating_sub(1)) / 2;
                let want_sum = (seq_sum as u64).wrapping_mul(fan);
                if n != want || sum != want_sum || bad != 0 {
                    return Err(format!(
                        "shuffle check failed: {n} records (expected {want}), sequence sum {sum} (expected {want_sum}), {bad} bad bytes"
                    )
                    .into());
                }
                let mbps = s.records as f64 * f64::from(payload) / s.elapsed_s / 1e6;
                print_summary(&s, opts.json, serde_json::json!({ "mb_per_s": mbps, "checksum_ok": true }));
                if !opts.json {
                    out!("{:.1} MB/s of payload end to end; every record arrived intact", mbps);
                }
            }
        }
    }
    Ok(())
}

/// `run shuffle --latency --rate N`.
fn shuffle_latency(records: u64, payload: u32, selector: &str, rate: u64, opts: JobOpts) -> AnyResult<()> {
    blocking_unsupported(&opts, "shuffle --latency")?;
    let kind: SelectorKind = selector.parse()?;
    if !matches!(kind, SelectorKind::KeyHash | SelectorKind::Rebalance) {
        return Err(format!("--latency takes --selector key-hash or rebalance, not {selector}").into());
    }
    if !(16..=256 << 20).contains(&payload) {
        return Err(format!("--payload {payload} is out of range for --latency (16..=268435456)").into());
    }
    if !(1..=100_000_000).contains(&rate) {
        return Err(format!("--rate {rate} is out of range (1..=100000000)").into());
    }
    check_records(records)?;
    let mut cfg = runtime_config(&opts)?;
    cfg.progress_total = Some(ProgressTotal::SourceRecords(records));
    let dir = JobDir::get()?;
    let graph = jobs::shuffle_latency_job(records, payload, kind, opts.parallelism, dir.path.clone(), rate);
    let Some(s) = run(graph, &cfg)? else {
        return Ok(());
    };
    let (n, sum, bad) = jobs::shuffle_totals(&dir.path)?;
    let want_sum = (u128::from(records) * u128::from(records.saturating_sub(1)) / 2) as u64;
    if n != records || sum != want_sum || bad != 0 {
        return Err(format!(
            "shuffle check failed: {n} records (expected {records}), sequence sum {sum} (expected {want_sum}), {bad} bad bytes"
        )
        .into());
    }
    let h = jobs::latency_histogram(&dir.path)?;
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let lat = serde_json::json!({
        "samples": h.len(),
        "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p99_9": us(0.999), "p99_99": us(0.9999),
        "max": h.max() as f64 / 1e3,
    });
    print_summary(&s, opts.json, serde_json::json!({ "rate": rate, "latency_us": lat, "checksum_ok": true }));
    if !opts.json {
        out!(
            "record latency at {rate} records/s over {} samples: p50 {:.2} us, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, p99.99 {:.2}, max {:.2}",
            h.len(),
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            us(0.9999),
            h.max() as f64 / 1e3
        );
    }
    Ok(())
}

/// [`jobs::merge_parts`] on a thread of its own, so that a stop signal ends the run at
/// once, however large the output: the temp output is removed (the job directory goes when
/// the caller's [`JobDir`] drops) and the run ends with [`shmflow::Error::Interrupted`].
fn merge_interruptibly(dir: &std::path::Path, out: Option<jobs::OutputFile>) -> AnyResult<Vec<Vec<u8>>> {
    use std::sync::mpsc::RecvTimeoutError;
    let tmp = out.as_ref().and_then(|o| o.temp_path().map(std::path::Path::to_path_buf));
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("merge".into()).spawn(move || {
        let _ = tx.send(jobs::merge_parts(&dir, out));
    })?;
    // Ends when the merge thread sends its result or ends without one.
    loop {
        if let Some(signal) = shmflow::sync::stop_signal() {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(shmflow::Error::Interrupted { signal }.into());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(r) => return Ok(r?),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("merging the part files failed (a panic)".into()),
        }
    }
}

fn count_of(line: &[u8]) -> Option<u64> {
    let tab = line.iter().rposition(|&c| c == b'\t')?;
    std::str::from_utf8(&line[tab + 1..]).ok()?.parse().ok()
}

/// The uid owning `path`, for messages.
fn owner_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or_else(|_| "another user".into(), |m| format!("uid {}", m.uid()))
}

/// The arena a tool looks at, and the pid of the job's coordinator when it was picked by
/// pid (so `top` can stop when that job ends).
fn arena_path(sel: ArenaSel) -> AnyResult<(PathBuf, Option<u32>)> {
    Ok(match (sel.pid, sel.name, sel.path) {
        (Some(p), None, None) => {
            let fds = PathBuf::from(format!("/proc/{p}/fd"));
            match std::fs::read_dir(&fds) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(format!(
                        "permission denied: process {p} belongs to {} and this user may not read its                          descriptors (run as that user)",
                        owner_of(std::path::Path::new(&format!("/proc/{p}")))
                    )
                    .into());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(format!("no process {p} is running").into());
                }
                _ => {}
            }
            let path = Arena::find_memfd_arenas(p)
                .into_iter()
                .next()
                .ok_or_else(|| format!("process {p} holds no shmflow arena (is it a running job's coordinator?)"))?;
            (path, Some(p))
        }
        // The library's rule for arena names: `--name ../x` or `--name /x` named a file
        // outside /dev/shm (that is what --path is for).
        (None, Some(n), None) => (Arena::named_path(&n).map_err(|e| format!("--name: {e}"))?, None),
        (None, None, Some(p)) => (p, None),
        (None, None, None) => {
            // No arena named: the one running job's, if there is exactly one.
            let mut found = Arena::find_all_memfd_arenas();
            match found.len() {
                0 => return Err("no running shmflow job found; name an arena with --pid, --name or --path".into()),
                1 => {
                    let (pid, path) = found.remove(0);
                    (path, Some(pid))
                }
                _ => {
                    let list: Vec<String> = found
                        .iter()
                        .map(|(pid, p)| {
                            let label = std::fs::read_link(p).map(|t| t.display().to_string()).unwrap_or_default();
                            format!("--pid {pid} ({label})")
                        })
                        .collect();
                    return Err(format!("several shmflow jobs are running; pick one: {}", list.join(", ")).into());
                }
            }
        }
        _ => return Err("name at most one of --pid, --name or --path".into()),
    })
}

/// Refuses what cannot be an arena before opening it: opening a FIFO would wait for a
/// writer, a device or directory is no arena. Names permission problems as such.
fn check_arena_file(path: &std::path::Path) -> AnyResult<()> {
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!("permission denied: {} (this user may not look it up)", path.display()).into());
        }
        Err(e) => return Err(format!("{}: {e}", path.display()).into()),
    };
    if !m.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(format!("{} is {what}, not an arena file", path.display()).into());
    }
    Ok(())
}

/// Attaches read-only, as an observer that survives the file being truncated under it
/// (see [`shmflow::sync::guard_read_only_mapping`]).
fn observe_arena(path: &std::path::Path) -> AnyResult<Arena> {
    check_arena_file(path)?;
    let arena = Arena::attach_read_only(path).map_err(|e| permission_said(e, path))?;
    let len = usize::try_from(arena.layout().total_size)?;
    shmflow::sync::guard_read_only_mapping((arena.header_atomics() as *const _) as *const u8, len)?;
    Ok(arena)
}

/// An attach error, with a permission problem said as one (naming the file's owner).
fn permission_said(e: shmflow::ArenaError, path: &std::path::Path) -> Box<dyn std::error::Error> {
    match &e {
        shmflow::ArenaError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "permission denied: {} belongs to {} and this user may not open it (run as that user)",
            path.display(),
            owner_of(path)
        )
        .into(),
        _ => e.into(),
    }
}

/// Why the arena an observer maps is gone, if it is: truncated under it (a read hit a page
/// past the end, or the file is now shorter than the mapping).
fn arena_truncated(arena: &Arena, path: &std::path::Path) -> Option<String> {
    let len = arena.fd().and_then(|fd| fd.try_clone_to_owned().ok()).map(std::fs::File::from);
    let size = len.and_then(|f| f.metadata().ok()).map(|m| m.len());
    let want = arena.layout().total_size;
    if shmflow::sync::mapping_truncated() || size.is_some_and(|n| n < want) {
        return Some(format!(
            "{} was truncated under us (it now has {} bytes, the arena {want}); what it showed since is void",
            path.display(),
            size.map_or_else(|| "?".into(), |n| n.to_string())
        ));
    }
    None
}

fn check(sel: ArenaSel, idle: bool, recover: bool, json: bool) -> AnyResult<()> {
    let (path, _) = arena_path(sel)?;
    check_arena_file(&path)?;
    if recover {
        let arena = Arena::attach_path(&path).map_err(|e| permission_said(e, &path))?;
        let r = shmflow::memory::recovery::reclaim_quiescent(&arena)?;
        if !json {
            out!(
                "recovered {} segments and {} channel blocks ({} dead processes)",
                r.segments,
                r.channel_blocks,
                r.dead_workers
            );
        }
    }
    let arena = observe_arena(&path)?;
    let r = shmflow::memory::check::check(&arena);
    if let Some(why) = arena_truncated(&arena, &path) {
        return Err(why.into());
    }
    if json {
        out!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        out!(
            "{}: {} segments, {} free (counter {}), owners: {} free, {} in pools, {} being written, {} in flight; \
             {} held by dead processes",
            path.display(),
            r.segments,
            r.free_walked,
            r.free_counter,
            r.owner_free,
            r.owner_pool,
            r.owner_writer,
            r.owner_in_flight,
            r.owner_dead
        );
        for p in &r.problems {
            out!("  problem: {p}");
        }
    }
    if !r.problems.is_empty() {
        return Err(format!("{} problems in the arena", r.problems.len()).into());
    }
    if idle && !r.all_free() {
        return Err(format!("{} of {} segments are not free", r.segments - r.free_walked, r.segments).into());
    }
    Ok(())
}

/// Prefix of the CLI's job directories under the temp dir: `shmflow-job-<pid>-<nanos>`.
const JOB_DIR_PREFIX: &str = "shmflow-job-";

/// Prefix of the blocking partition directories a coordinator makes directly under the temp
/// dir when it runs without a job directory (`shmflow-blocking-<pid>-<nanos>`, or
/// `shmflow-blocking-<pid>` from `FileChannelManager::default_dir`).
const BLOCKING_DIR_PREFIX: &str = "shmflow-blocking-";

/// The pid in a job directory's name, `<prefix><pid>` or `<prefix><pid>-<rest>` with a
/// canonical decimal pid; `None` for any other name (such a directory is left alone).
fn job_dir_pid(name: &str) -> Option<u32> {
    let rest = [JOB_DIR_PREFIX, BLOCKING_DIR_PREFIX].iter().find_map(|p| name.strip_prefix(p))?;
    let digits = rest.split_once('-').map_or(rest, |(d, _)| d);
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = digits.parse().ok()?;
    (pid <= i32::MAX as u32).then_some(pid)
}

/// Whether a process `pid` exists. Anything but "no such process" counts as alive (the
/// safe side: the directory is kept).
fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 sends nothing: kill only checks that the process exists.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The job directories under `tmp` owned by this user: (path, pid), sorted. Symlinks and
/// other users' directories are never touched.
fn job_dirs(tmp: &std::path::Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(tmp) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(job_dir_pid) else {
            continue;
        };
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() && meta.uid() == me {
            out.push((path, pid));
        }
    }
    out.sort();
    out
}

/// The temp output `<output>.tmp-<pid>` a job directory of coordinator `pid` names, if it
/// is still there: a regular file of this user whose name carries that same pid.
fn noted_temp_output(dir: &std::path::Path, pid: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let note = std::fs::read(dir.join(JobDir::OUTPUT_NOTE)).ok()?;
    let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&note));
    let file = tmp.file_name()?.to_str()?;
    let (name, _) = file.rsplit_once(".tmp-")?;
    (temp_pid(file, name) == Some(pid) && own_regular_file(&tmp)).then_some(tmp)
}

fn clean(dry_run: bool) -> AnyResult<()> {
    let mut removed = 0;
    for a in shmflow::memory::check::list_named(std::path::Path::new("/dev/shm")) {
        if a.creator_alive {
            out!("keep   {} (creator pid {} is running)", a.path.display(), a.creator_pid);
            continue;
        }
        if dry_run {
            out!("stale  {} (creator pid {} is gone)", a.path.display(), a.creator_pid);
        } else {
            std::fs::remove_file(&a.path).map_err(|e| format!("removing {}: {e}", a.path.display()))?;
            out!("removed {} (creator pid {} is gone)", a.path.display(), a.creator_pid);
            removed += 1;
        }
    }
    if !dry_run {
        out!("{removed} stale arenas removed");
    }
    // Job directories a killed coordinator left behind (part and blocking partition files).
    // A live pid keeps its directory even if it now belongs to another program.
    let (mut removed, mut failed) = (0, Vec::new());
    for (path, pid) in job_dirs(&std::env::temp_dir()) {
        if pid_alive(pid) {
            out!("keep   {} (pid {pid} is running)", path.display());
        } else if dry_run {
            out!("stale  {} (pid {pid} is gone)", path.display());
            if let Some(t) = noted_temp_output(&path, pid) {
                out!("stale  {} (pid {pid} is gone)", t.display());
            }
        } else {
            if let Some(t) = noted_temp_output(&path, pid) {
                match std::fs::remove_file(&t) {
                    Ok(()) => out!("removed {} (pid {pid} is gone)", t.display()),
                    Err(e) => failed.push(format!("removing {}: {e}", t.display())),
                }
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    out!("removed {} (pid {pid} is gone)", path.display());
                    removed += 1;
                }
                Err(e) => failed.push(format!("removing {}: {e}", path.display())),
            }
        }
    }
    if !dry_run {
        out!("{removed} stale job directories removed");
    }
    if !failed.is_empty() {
        return Err(failed.join("; ").into());
    }
    Ok(())
}

fn top(sel: ArenaSel, once: bool, json: bool, interval_ms: u64) -> AnyResult<()> {
    let (path, job) = arena_path(sel)?;
    if !(10..=60_000).contains(&interval_ms) {
        return Err(format!("--interval-ms {interval_ms} is out of range (10..=60000)").into());
    }
    let arena = observe_arena(&path)?;
    let interval = Duration::from_millis(interval_ms);
    loop {
        let view = shmflow::metrics::observe(&arena, interval);
        if let Some(why) = arena_truncated(&arena, &path) {
            return Err(why.into());
        }
        // The job ended (its coordinator holds the arena no more): so does top.
        if let Some(pid) = job.filter(|&p| Arena::find_memfd_arenas(p).is_empty()) {
            out!("the job of process {pid} ended");
            return Ok(());
        }
        if json {
            out!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            if !once {
                print!("\x1b[2J\x1b[H");
            }
            out!("shmflow top  {}  segments free {}/{}", path.display(), view.free_segments, view.segments);
            out!(
                "{:>6} {:>8} {:>7} {:>7} {:>7} {:>5} {:>12} {:>12}",
                "task",
                "state",
                "busy",
                "idle",
                "backpr",
                "bp",
                "rec in/s",
                "rec out/s"
            );
            for t in &view.tasks {
                out!(
                    "{:>3}/{:<2} {:>8} {:>7.0} {:>7.0} {:>7.0} {:>5} {:>12.0} {:>12.0}",
                    t.vertex,
                    t.subtask,
                    t.state,
                    t.busy_ms_per_s,
                    t.idle_ms_per_s,
                    t.back_pressured_ms_per_s,
                    t.back_pressure,
                    t.records_in_per_s,
                    t.records_out_per_s
                );
            }
            for p in &view.partitions {
                out!("partition {} (slot {}): outPoolUsage {:.0}%", p.id, p.slot, p.out_pool_usage * 100.0);
                for c in view.channels.iter().filter(|c| c.partition == p.slot) {
                    out!(
                        "    subpartition {:>3}: backlog {:>3} ({:>8} B in flight), credit granted {:>6}{}",
                        c.subpartition,
                        c.backlog,
                        c.in_flight_bytes,
                        c.credit_granted,
                        if c.credit_wanted { ", producer waits for credit" } else { "" }
                    );
                }
            }
        }
        if once {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_temp_file_of_this_output_with_a_canonical_pid_is_a_temp_output() {
        assert_eq!(temp_pid("counts.tmp-123", "counts"), Some(123));
        assert_eq!(temp_pid("counts.txt.tmp-7", "counts.txt"), Some(7));
        // Another output's, or not a temp file at all.
        assert_eq!(temp_pid("counts2.tmp-123", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-123", "counts2"), None);
        assert_eq!(temp_pid("counts", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-", "counts"), None);
        // Not the pid a run writes: leading zero, sign, letters, out of range.
        assert_eq!(temp_pid("counts.tmp-0123", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-+12", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-12x", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-4294967295", "counts"), None);
    }

    #[test]
    fn shuffle_options_that_latency_mode_would_ignore_are_refused() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["shmflow", "run", "shuffle"], args].concat()).map(|_| ());
        assert!(parse(&["--latency", "--rate", "10"]).is_ok());
        assert!(parse(&["--source-work-ns", "5"]).is_ok());
        // --rate alone would run the throughput shuffle at full speed.
        let e = parse(&["--rate", "10"]).unwrap_err().to_string();
        assert!(e.contains("--latency"), "{e}");
        // The latency shuffle has no busy work per record.
        for extra in ["--sink-work-ns", "--source-work-ns"] {
            let e = parse(&["--latency", "--rate", "10", extra, "5"]).unwrap_err().to_string();
            assert!(e.contains(extra), "{e}");
        }
    }

    #[test]
    fn an_arena_name_names_a_file_in_dev_shm_only() {
        let name = |n: &str| arena_path(ArenaSel { pid: None, name: Some(n.into()), path: None });
        assert_eq!(name("job-1").unwrap().0, PathBuf::from("/dev/shm/job-1"));
        for bad in ["../../etc/passwd", "/etc/passwd", ".hidden", ""] {
            let e = name(bad).unwrap_err().to_string();
            assert!(e.contains("--name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_job_dir_names_its_temp_output_only_if_the_pids_match() {
        let dir = std::env::temp_dir().join(format!("shmflow-unit-note-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join("out.tmp-4242");
        std::fs::write(&tmp, "partial").unwrap();
        std::fs::write(dir.join(JobDir::OUTPUT_NOTE), tmp.to_str().unwrap()).unwrap();
        let noted = noted_temp_output(&dir, 4242);
        let other_pid = noted_temp_output(&dir, 4243);
        std::fs::write(dir.join(JobDir::OUTPUT_NOTE), "/etc/passwd").unwrap();
        let foreign = noted_temp_output(&dir, 4242);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(noted, Some(tmp));
        assert_eq!(other_pid, None, "a note naming another pid's file is ignored");
        assert_eq!(foreign, None, "a note naming any other file is ignored");
    }
}
