//! The command line's flags and subcommands (clap).

use clap::{Args, Parser, Subcommand, ValueEnum};
use shmflow::sync::WaitPolicy;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "shmflow", version, about = "Zero-copy shared-memory shuffle runtime")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    /// Spin while waiting (lowest latency, a core busy).
    Spin,
    /// Poll briefly, yielding the core between polls, then park on a futex (the default but
    /// for `run shuffle --latency`).
    Adaptive,
    /// Park at once.
    Park,
}

impl Mode {
    /// `--wait`'s default for every job but the latency shuffle.
    pub(crate) const DEFAULT: Mode = Mode::Adaptive;
    /// `--wait`'s default for `run shuffle --latency`: its sinks spin, so a record finds
    /// them running (a parked sink's futex wake-up costs tens of µs on these VMs).
    pub(crate) const LATENCY: Mode = Mode::Spin;

    pub(crate) fn policy(self) -> WaitPolicy {
        match self {
            Mode::Spin => WaitPolicy::spin(),
            Mode::Adaptive => WaitPolicy::adaptive(),
            Mode::Park => WaitPolicy::park(),
        }
    }
}

/// Options every job takes.
#[derive(Args, Clone)]
pub(crate) struct JobOpts {
    /// Parallelism of every vertex.
    #[arg(long, default_value_t = 2)]
    pub(crate) parallelism: u32,
    /// Worker processes (each runs several subtasks as threads).
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: u32,
    /// Flink's buffer timeout in ms: 0 = flush every record, -1 = only full segments.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub(crate) buffer_timeout: i64,
    /// Segment size in bytes (a power of two, 4 KiB..16 MiB). Default 32 KiB (Flink's);
    /// `run shuffle` without `--latency` takes the largest of 256, 128, 64 and 32 KiB at
    /// which the job's in-flight segments fill at most a quarter of the arena (the arena's
    /// size, the memory mapped, stays `--arena-size`).
    #[arg(long)]
    pub(crate) segment_size: Option<u32>,
    /// Arena size in bytes.
    #[arg(long, default_value_t = 256 << 20)]
    pub(crate) arena_size: u64,
    /// Buffer debloating (Flink's FLIP-183): gates keep about `MS` ms of their throughput in
    /// flight instead of whole segments (1000 is Flink's default target).
    #[arg(long, value_name = "MS")]
    pub(crate) debloat: Option<u64>,
    /// Fail the job when a worker sends nothing (not even a heartbeat) for this long: a
    /// stopped or hung worker (default 30000, or SHMFLOW_HEARTBEAT_TIMEOUT_MS).
    #[arg(long, value_name = "MS")]
    pub(crate) heartbeat_timeout_ms: Option<u64>,
    /// Print the summary as JSON (and no progress on stderr, as with --quiet).
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress on stderr (by default a bar with percent and ETA on a terminal, a plain
    /// line a second otherwise).
    #[arg(long)]
    pub(crate) quiet: bool,
    /// How tasks wait for input and for buffers: spin (lowest latency, a core busy per
    /// waiting task), adaptive (poll briefly, yielding the core, then park) or park.
    /// Default adaptive; spin for `run shuffle --latency`; park for `run wordcount` when
    /// its source and reducer per subtask outnumber the CPUs (2 x --parallelism > CPUs, e.g.
    /// the default p=2 on 2 CPUs).
    #[arg(long, value_enum)]
    pub(crate) wait: Option<Mode>,
    /// Pin subtask `s` of every vertex to the `s`-th CPU the job may use (a pipeline slice
    /// per core; with --wait spin, the lowest latency when tasks outnumber cores; slower
    /// for busy throughput jobs). `--pin-cpus false` leaves threads unpinned. Default off;
    /// on for `run shuffle --latency` when its tasks outnumber the CPUs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) pin_cpus: Option<bool>,
    /// Co-schedule each pipeline slice of a worker on one thread: the sinks of subtask `s`
    /// read in turns, without waiting, whenever the slice's source (or other task) waits,
    /// instead of on threads of their own (no thread switch for a record within a slice;
    /// one thread per slice, polling, never parked). For latency, not throughput.
    /// `--co-schedule false` turns it off. Default off; on for `run shuffle --latency` when
    /// its tasks outnumber the CPUs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub(crate) co_schedule: Option<bool>,
    /// Exchange kind: pipelined (shared memory) or blocking (files; wordcount only).
    #[arg(long, value_enum, default_value_t = Exchange::Pipelined)]
    pub(crate) exchange: Exchange,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Exchange {
    /// Flink's PIPELINED_BOUNDED: consumed while produced, through the arena.
    Pipelined,
    /// Flink's BLOCKING: written completely to files, then read.
    Blocking,
}

#[derive(Subcommand)]
pub(crate) enum JobCmd {
    /// Flink's WordCount: count every word of the input across worker processes.
    Wordcount {
        /// A text file, UTF-8 (other bytes outside ASCII separate words; default: a generated
        /// text of --generated-mb MB). It is memory-mapped: truncating it while the job reads
        /// it can kill the job (SIGBUS); a file whose length changes fails the job.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Where to write `word<TAB>count` lines sorted by word (checked before the job runs;
        /// written to `<output>.tmp-<pid>` and renamed when complete; not `-`: no stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Size of the generated default text: MB x 10^6 / 66 lines, about 1.2x MB megabytes
        /// (the benchmarks' text; progress counts its real size).
        #[arg(long, default_value_t = 300, conflicts_with = "input")]
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
        /// before the job runs; written to `<output>.tmp-<pid>` and renamed when complete;
        /// not `-`: no stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Size of the generated default text: MB x 10^6 / 66 lines, about 1.2x MB megabytes
        /// (the benchmarks' text; progress counts its real size).
        #[arg(long, default_value_t = 300, conflicts_with = "input")]
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
        /// Records in all (at most 10^12). Default 100,000,000; with --latency, --rate x 10,
        /// about ten seconds of records at that rate.
        #[arg(long)]
        records: Option<u64>,
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
        /// stamp each record, the sinks report percentiles of arrival minus stamp and of
        /// arrival minus when the record was due on the generators' schedule (coordinated
        /// omission included); the first tenth of each generator's records is warm-up.
        /// Payload at least 16 bytes; key-hash or rebalance. Sinks spin, and pipeline slices
        /// are pinned when the tasks outnumber the CPUs, unless --wait or --pin-cpus say
        /// otherwise.
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
pub(crate) struct ArenaSel {
    /// The coordinator's pid of a running job (its memfd arena is found through /proc).
    #[arg(long)]
    pub(crate) pid: Option<u32>,
    /// A named arena under /dev/shm.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// An arena file at any path.
    #[arg(long)]
    pub(crate) path: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// Remove named arenas under /dev/shm whose creator process is dead and that no running
    /// process is attached to (a live worker record keeps an arena), and job
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
