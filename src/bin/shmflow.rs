//! The `shmflow` command line.
//!
//! `shmflow demo` runs the foundation end to end across two processes: this process creates
//! a memfd arena, spawns itself as the consumer with the arena fd inherited, streams records
//! through pool, builder, rings, credits and wake-ups, and both sides check a checksum.

use clap::{Args, Parser, Subcommand, ValueEnum};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{BufferTimeout, ResultPartitionType, SelectorKind};
use shmflow::ring::{StreamReader, StreamWriter};
use shmflow::runtime::builtin::{self, TextSource};
use shmflow::runtime::{is_worker, run, JobSummary, RuntimeConfig};
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
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
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
    /// ($TMPDIR or /tmp) whose coordinator pid is gone. A directory whose pid belongs to a
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Demo { records, payload, mode, segment_size, credit } => {
            demo(records, payload, mode, segment_size, credit)
        }
        Cmd::DemoConsumer { credit, mode } => demo_consumer(credit, mode),
        Cmd::Run { job } => run_builtin(job),
        Cmd::Top { arena, once, json, interval_ms } => top(arena, once, json, interval_ms),
        Cmd::Check { arena, idle, recover, json } => check(arena, idle, recover, json),
        Cmd::Clean { dry_run } => clean(dry_run),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
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
    cmd.args(["demo-consumer", "--credit", &credit.to_string(), "--mode"]);
    cmd.arg(match mode {
        Mode::Spin => "spin",
        Mode::Adaptive => "adaptive",
        Mode::Park => "park",
    });
    cmd.stdout(Stdio::piped());
    arena.inherit_fd_into(&mut cmd)?;
    let mut child = ChildGuard(Some(cmd.spawn()?));
    let timeout = Some(Duration::from_secs(30));
    let mut w = StreamWriter::new(arena.clone(), 0, credit, mode.policy(), timeout)?;
    let mut buf = vec![0u8; payload];
    let mut sum = 0u64;
    let start = Instant::now();
    for i in 0..records {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        sum = sum.wrapping_add(i);
        w.write(&buf)?;
    }
    w.finish()?;
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

fn demo_consumer(credit: u32, mode: Mode) -> AnyResult<()> {
    let arena = Arc::new(Arena::attach_inherited()?);
    let mut r = StreamReader::new(arena, 0, credit, mode.policy())?;
    let (mut n, mut sum) = (0u64, 0u64);
    while let Some(v) = r.next(Some(Duration::from_secs(30)), |p| {
        p.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes)
    })? {
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

/// `--output`, checked and created (as a temp file) by the coordinator before the job runs;
/// workers do not write it.
fn output_file(output: Option<&std::path::Path>) -> AnyResult<Option<builtin::OutputFile>> {
    match output {
        Some(p) if !is_worker() => Ok(Some(builtin::OutputFile::create(p)?)),
        _ => Ok(None),
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
            let cfg = runtime_config(&opts)?;
            let src = text_source(input, generated_mb)?;
            let out_file = output_file(output.as_deref())?;
            let dir = JobDir::get()?;
            let ptype = match opts.exchange {
                Exchange::Pipelined => ResultPartitionType::PipelinedBounded,
                Exchange::Blocking => ResultPartitionType::Blocking,
            };
            let graph = builtin::wordcount_job_with(src, opts.parallelism, dir.path.clone(), ptype);
            if let Some(s) = run(graph, &cfg)? {
                let lines = builtin::merge_parts(&dir.path, out_file)?;
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
            let cfg = runtime_config(&opts)?;
            let src = text_source(input, generated_mb)?;
            let out_file = output_file(output.as_deref())?;
            let dir = JobDir::get()?;
            let graph = builtin::window_wordcount_job(src, opts.parallelism, window, slide, dir.path.clone());
            if let Some(s) = run(graph, &cfg)? {
                let lines = builtin::merge_parts(&dir.path, out_file)?;
                print_summary(&s, opts.json, serde_json::json!({ "window_results": lines.len() }));
                if !opts.json {
                    out!("{} window results", lines.len());
                }
            }
        }
        JobCmd::Shuffle { records, payload, selector, sink_work_ns, source_work_ns, opts } => {
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
            let cfg = runtime_config(&opts)?;
            let dir = JobDir::get()?;
            let graph = builtin::shuffle_job(
                records,
                payload,
                kind,
                opts.parallelism,
                dir.path.clone(),
                (source_work_ns, sink_work_ns),
            );
            if let Some(s) = run(graph, &cfg)? {
                let (n, sum, bad) = builtin::shuffle_totals(&dir.path)?;
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

fn count_of(line: &[u8]) -> Option<u64> {
    let tab = line.iter().rposition(|&c| c == b'\t')?;
    std::str::from_utf8(&line[tab + 1..]).ok()?.parse().ok()
}

fn arena_path(sel: ArenaSel) -> AnyResult<PathBuf> {
    Ok(match (sel.pid, sel.name, sel.path) {
        (Some(p), None, None) => Arena::find_memfd_arenas(p)
            .into_iter()
            .next()
            .ok_or_else(|| format!("process {p} holds no shmflow arena (is it a running job's coordinator?)"))?,
        (None, Some(n), None) => PathBuf::from("/dev/shm").join(n),
        (None, None, Some(p)) => p,
        (None, None, None) => {
            // No arena named: the one running job's, if there is exactly one.
            let mut found = Arena::find_all_memfd_arenas();
            match found.len() {
                0 => return Err("no running shmflow job found; name an arena with --pid, --name or --path".into()),
                1 => found.remove(0).1,
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

fn check(sel: ArenaSel, idle: bool, recover: bool, json: bool) -> AnyResult<()> {
    let path = arena_path(sel)?;
    if recover {
        let arena = Arena::attach_path(&path)?;
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
    let arena = Arena::attach_read_only(&path)?;
    let r = shmflow::memory::check::check(&arena);
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
        } else {
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
    let path = arena_path(sel)?;
    if !(10..=60_000).contains(&interval_ms) {
        return Err(format!("--interval-ms {interval_ms} is out of range (10..=60000)").into());
    }
    let arena = Arena::attach_read_only(&path)?;
    let interval = Duration::from_millis(interval_ms);
    loop {
        let view = shmflow::metrics::observe(&arena, interval);
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
