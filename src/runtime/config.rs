//! How to run a job: the coordinator's and the workers' settings ([`RuntimeConfig`]), and the
//! arena a job needs under them.

use super::execution::TaskSettings;
use super::graph::ExecutionGraph;
use super::job::JobGraph;
use super::progress::ProgressTotal;
use crate::error::{ConfigError, Result};
use crate::gate::InputGateConfig;
use crate::memory::ArenaConfig;
use crate::partition::{BufferTimeout, RequestBackoff};
use crate::sync::WaitPolicy;
use std::time::Duration;

/// How to run a job.
///
/// The coordinator starts [`RuntimeConfig::workers`] copies of this binary (with
/// [`RuntimeConfig::worker_args`]); their stdin and stdout are `/dev/null`, their stderr
/// this process's. See [`run`](super::run) for what re-running `main` asks of a program.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker processes; subtasks are dealt to them round-robin. Default 2.
    pub workers: u32,
    /// Flink's buffer timeout: how long a record may wait in a partly filled segment.
    /// Default 100 ms (Flink's default).
    pub buffer_timeout: BufferTimeout,
    /// Segment size in bytes (a power of two, 4 KiB..16 MiB). Default 32 KiB (Flink's).
    pub segment_size: u32,
    /// Arena size in bytes: every segment and channel of the job lives in it. Default
    /// 64 MiB (the command line's default is 256 MiB).
    pub arena_size: u64,
    /// How tasks wait for input and buffers. Default [`WaitPolicy::adaptive`] (spin
    /// briefly, then park on a futex).
    pub wait_policy: WaitPolicy,
    /// Partition request backoff: how long a consumer retries a partition not registered
    /// yet. Default 1 ms doubling up to 10 s (Flink's defaults are 100 ms and 10 s).
    pub backoff: RequestBackoff,
    /// Show the job's progress on stderr: a bar with percent and ETA on a terminal when
    /// [`RuntimeConfig::progress_total`] is known, else a plain line every second. Default
    /// off.
    pub progress: bool,
    /// How much input the job has, for the percent and ETA of the progress bar. Default
    /// `None` (no bar: plain lines).
    pub progress_total: Option<ProgressTotal>,
    /// Arguments the workers are started with. Default `None`: this process's own, so a
    /// job binary's workers build the same job. Each worker re-runs this binary's `main`
    /// with them and runs the first [`run`](super::run) it reaches: a process that runs
    /// more than one job, or a `#[test]` (its binary runs every test by default), sets them
    /// so that the workers reach this job's `run`, e.g. `["--exact", "<test name>",
    /// "--test-threads=1"]` for a test. Workers run with stdin and stdout on `/dev/null`
    /// and stderr inherited.
    pub worker_args: Option<Vec<std::ffi::OsString>>,
    /// Buffer debloating on every gate. Default `None` (off).
    pub debloat: Option<crate::gate::DebloatConfig>,
    /// How long the coordinator waits without hearing from a worker (its first message, a
    /// heartbeat or any other message) before it fails the job, and how long a write to a
    /// worker may make no progress. Workers send heartbeats every
    /// [`RuntimeConfig::heartbeat_interval`]. Default 30 s, or the milliseconds in the
    /// environment variable `SHMFLOW_HEARTBEAT_TIMEOUT_MS` when
    /// it is set ([`run_job`](super::run_job) refuses a value that is not a number in 100..=3600000, the range
    /// of `shmflow run --heartbeat-timeout-ms`).
    pub heartbeat_timeout: Duration,
    /// Pin every subtask's thread to one CPU: subtask `s` of every vertex to the `s`-th CPU
    /// (modulo their count) of the set the worker was started with, so a slice of the
    /// pipeline (the subtasks of one index, which round-robin dealing puts in one worker
    /// when there are as many workers as subtasks per vertex) shares a core. With more tasks than cores and
    /// [`WaitPolicy::spin`], a spinning consumer keeps its core and a record to the consumer
    /// of its own slice costs a thread switch within the process, not a wait for a time
    /// slice (the latency shuffle on 2 vCPUs: p99 12 µs pinned, milliseconds unpinned).
    /// For latency, not throughput: a busy pipeline runs slower pinned (`run shuffle` 1 KiB
    /// rebalance at p=2 on 2 vCPUs: about half the records/s), since a slice's producer and
    /// consumer then take turns on one core. Default off; a CPU that cannot be set leaves
    /// the thread unpinned.
    pub pin_cpus: bool,
    /// Co-schedule each pipeline slice in a worker on one thread: the sinks (vertices with
    /// an input and no output) of subtask `s` take turns, without waiting, in every wait of
    /// the slice's first other task (its source, say) instead of running on threads of
    /// their own. A record from that task to a sink of its slice is then read by the same
    /// thread in its next wait (no thread switch, no wake-up), and the worker runs one
    /// thread per slice, which neither preempts another of the job's nor waits for a time
    /// slice behind one. The thread polls and never parks, whatever
    /// [`wait_policy`](Self::wait_policy) says: for latency with spare cores (the latency
    /// shuffle on 2 vCPUs), not for throughput (a sink then reads only while its slice's
    /// producer waits). A source that waits for something of its own between records
    /// should poll and call [`take_turns`](super::take_turns) rather than sleep: one that
    /// blocks outside the runtime (a socket read, a sleep, a channel `recv`) starves its
    /// slice's sinks until it returns, and a source that never waits lets them read only
    /// once its output is full (a sink's latency is then the pipeline's buffer depth). A
    /// sink's own code (`collect`, `finish`) must not block either: it runs inside the
    /// source's wait, and while it waits no other task of the slice runs. A co-scheduled
    /// sink's gate reports no idle or back-pressured time (it never waits in the gate).
    /// Default off.
    pub co_schedule: bool,
}

/// Environment variable read by [`RuntimeConfig::default`]: the heartbeat timeout in
/// milliseconds (100..=3600000, as `--heartbeat-timeout-ms`).
pub const HEARTBEAT_TIMEOUT_ENV: &str = "SHMFLOW_HEARTBEAT_TIMEOUT_MS";

/// The heartbeat timeout named by [`HEARTBEAT_TIMEOUT_ENV`], if set.
pub(super) fn heartbeat_timeout_from_env() -> Result<Option<Duration>> {
    let Some(v) = std::env::var_os(HEARTBEAT_TIMEOUT_ENV) else {
        return Ok(None);
    };
    match v.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(ms) if (100..=3_600_000).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(ConfigError::Conflict {
            what: HEARTBEAT_TIMEOUT_ENV,
            detail: format!(
                "{v:?} is not a number of milliseconds in 100..=3600000 (the range of --heartbeat-timeout-ms)"
            ),
        }
        .into()),
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            buffer_timeout: BufferTimeout::Interval(Duration::from_millis(100)),
            segment_size: 32 * 1024,
            arena_size: 64 << 20,
            wait_policy: WaitPolicy::adaptive(),
            backoff: RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(10) },
            progress: false,
            progress_total: None,
            worker_args: None,
            debloat: None,
            heartbeat_timeout: heartbeat_timeout_from_env().ok().flatten().unwrap_or(Duration::from_secs(30)),
            pin_cpus: false,
            co_schedule: false,
        }
    }
}

impl RuntimeConfig {
    /// How often workers send a heartbeat: a tenth of [`RuntimeConfig::heartbeat_timeout`],
    /// at least 50 ms (never more than the timeout) and at most 1 s.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.heartbeat_timeout / 10)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
            .min(self.heartbeat_timeout)
    }

    /// The settings every task gets.
    pub fn task_settings(&self) -> TaskSettings {
        TaskSettings {
            buffer_timeout: self.buffer_timeout,
            wait_policy: self.wait_policy,
            backoff: self.backoff,
            debloat: self.debloat,
            pin_cpus: self.pin_cpus,
        }
    }

    /// The arena this job needs, or a clear error saying why the sizes do not fit.
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for `workers` not in 1..=256; [`ConfigError::Conflict`]
    /// for a segment size that is not a power of two in 4096..=16 MiB, a job too large for
    /// any arena, or an arena too small for the job's channels and pools.
    pub fn arena_config(&self, job: &JobGraph, graph: &ExecutionGraph) -> Result<ArenaConfig> {
        ConfigError::check_range("--workers", self.workers.into(), 1, 256)?;
        let max_p = job.vertices.iter().map(|v| v.parallelism).max().unwrap_or(1);
        let channels = graph.channels_needed();
        let per_gate = u64::from(max_p).div_ceil(64) * 64;
        let base = ArenaConfig {
            segment_size: self.segment_size,
            segment_count: 1,
            ring_capacity: 64,
            max_channels: (channels + 8).min(1 << 20) as u32,
            max_partitions: (graph.subtasks.len() + 8) as u32,
            max_gates: (graph.gates_needed() + 8).min(65536) as u32,
            max_channels_per_gate: per_gate.max(64) as u32,
            max_workers: self.workers.max(1) + 1,
            max_tasks: (graph.subtasks.len() + 8) as u32,
        };
        if !self.segment_size.is_power_of_two() || !(4096..=16 << 20).contains(&self.segment_size) {
            return Err(ConfigError::Conflict {
                what: "--segment-size",
                detail: format!("{} is not a power of two between 4096 and 16 MiB", self.segment_size),
            }
            .into());
        }
        base.validate().map_err(|e| ConfigError::Conflict {
            what: "job size",
            detail: format!("{e} (the job has {} subtasks and {channels} channels)", graph.subtasks.len()),
        })?;
        let need = partition_segments(graph);
        let cfg = base.with_arena_size(self.arena_size).map_err(|e| ConfigError::Conflict {
            what: "--arena-size",
            detail: format!(
                "{e} (the job has {channels} channels); use --arena-size {} or more",
                arena_size_for(&base, need)
            ),
        })?;
        if u64::from(cfg.segment_count) < need {
            return Err(ConfigError::Conflict {
                what: "--arena-size",
                detail: format!(
                    "an arena of {} bytes holds {} segments of {} bytes, but this job's {} channels need at least {need}; \
                     use --arena-size {} or more",
                    self.arena_size,
                    cfg.segment_count,
                    self.segment_size,
                    channels,
                    arena_size_for(&base, need)
                ),
            }
            .into());
        }
        Ok(cfg)
    }
}

/// The segments the partitions of `graph` need: every partition keeps subpartitions + 1,
/// and needs one more per channel to make progress.
fn partition_segments(graph: &ExecutionGraph) -> u64 {
    graph.subtasks.iter().filter_map(|s| s.output.as_ref()).map(|o| 2 * u64::from(o.num_subpartitions) + 1).sum()
}

/// How many times over [`RuntimeConfig::fit_segment_size`] wants the arena to hold the
/// segments a job can have in flight at a candidate size: a job then uses at most a quarter
/// of its arena.
pub const SEGMENT_FIT_HEADROOM: u64 = 4;

impl RuntimeConfig {
    /// The segments `graph` can have in flight: every partition's own
    /// (`2 * subpartitions + 1`, what [`arena_config`](Self::arena_config) requires) and every
    /// gate's credits (the defaults of [`InputGateConfig::new`] the runtime's gates use:
    /// Flink's 2 exclusive per channel and 8 floating per gate).
    pub fn segments_in_flight(graph: &ExecutionGraph) -> u64 {
        let credits = InputGateConfig::new(Vec::new());
        let gates = graph.subtasks.iter().filter(|s| s.input.is_some()).count() as u64;
        partition_segments(graph)
            + u64::from(credits.exclusive_credits) * graph.channels_needed()
            + u64::from(credits.floating_credits) * gates
    }

    /// The first of `sizes` (largest first) at which this configuration's arena holds
    /// `job` and four (`SEGMENT_FIT_HEADROOM`) times the segments it can have in flight
    /// ([`segments_in_flight`](Self::segments_in_flight)); the configured
    /// [`segment_size`](Self::segment_size) when none does. The
    /// arena's size stays what it is, so the memory the job maps does not change; only
    /// how much of it may be in flight at once (per gate, its credits times the size).
    ///
    /// Why: with more tasks than cores a producer and a consumer take turns on a core,
    /// and each turn moves at most the segments in flight. `run shuffle` at p=2 on 2 vCPUs
    /// switched threads about once per 32 KiB segment; 256 KiB segments took the job's
    /// CPU per 16 B record from 14-22 ns to 11 ns and per 1 KiB record from 170-200 ns to
    /// 93-108 ns (docs/performance-history.md, "Jobs beside Apache Flink 2.3", its
    /// paragraph "Session 8: the throughput shuffle picks its segment size").
    ///
    /// # Errors
    /// An invalid `job` ([`ExecutionGraph::build`]).
    pub fn fit_segment_size(&self, job: &JobGraph, sizes: &[u32]) -> Result<u32> {
        let graph = ExecutionGraph::build(job, 0)?;
        let in_flight = Self::segments_in_flight(&graph);
        let fits = |size: u32| {
            let c = Self { segment_size: size, ..self.clone() };
            c.arena_config(job, &graph)
                .is_ok_and(|a| u64::from(a.segment_count) >= in_flight.saturating_mul(SEGMENT_FIT_HEADROOM))
        };
        Ok(sizes.iter().copied().find(|&s| fits(s)).unwrap_or(self.segment_size))
    }
}

/// The smallest arena size, in whole MiB, whose segments (after the control regions this
/// job's `base` configuration needs, which grow with its channels, gates and tasks) number
/// at least `need`: the size an `--arena-size` error suggests.
fn arena_size_for(base: &ArenaConfig, need: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let exact =
        ArenaConfig { segment_count: need.clamp(2, 1 << 24) as u32, ..*base }.layout().map_or(0, |l| l.total_size);
    let mut size = exact.div_ceil(MIB).max(1) * MIB;
    // `with_arena_size` sizes the control regions for one segment and rounds: a few more
    // MiB settle that (bounded).
    for _ in 0..64 {
        if base.with_arena_size(size).is_ok_and(|c| u64::from(c.segment_count) >= need) {
            break;
        }
        size += MIB;
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Discard;
    impl crate::runtime::Collector<u64> for Discard {
        fn collect(&mut self, _: u64) -> Result<()> {
            Ok(())
        }
    }

    fn shuffle(p: u32) -> JobGraph {
        crate::runtime::JobBuilder::new("fit", p)
            .source("s", |_: &crate::runtime::TaskInfo, _: &mut dyn crate::runtime::Collector<u64>| Ok(()))
            .rebalance(None)
            .sink("k", |_: &crate::runtime::TaskInfo| Ok(Discard))
    }

    #[test]
    fn the_segment_size_that_fits_is_the_largest_whose_in_flight_segments_fill_a_quarter_of_the_arena() {
        const SIZES: [u32; 4] = [256 << 10, 128 << 10, 64 << 10, 32 << 10];
        let job = shuffle(2);
        let graph = ExecutionGraph::build(&job, 0).unwrap();
        // p=2: partitions 2 * (2 * 2 + 1), gates 2 * 2 channels * 2 + 2 * 8 floating.
        assert_eq!(RuntimeConfig::segments_in_flight(&graph), 10 + 8 + 16);
        let cfg = |arena_size| RuntimeConfig { arena_size, ..RuntimeConfig::default() };
        assert_eq!(cfg(256 << 20).fit_segment_size(&job, &SIZES).unwrap(), 256 << 10);
        // 34 segments in flight, 4 times over: 136 segments, not 256 KiB ones in 32 MiB.
        assert_eq!(cfg(32 << 20).fit_segment_size(&job, &SIZES).unwrap(), 128 << 10);
        assert_eq!(cfg(8 << 20).fit_segment_size(&job, &SIZES).unwrap(), 32 << 10);
        // None fits: the configured size stays (and `arena_config` says why it fails).
        let tiny = RuntimeConfig { segment_size: 16 << 10, ..cfg(2 << 20) };
        assert_eq!(tiny.fit_segment_size(&job, &SIZES).unwrap(), 16 << 10);
    }

    #[test]
    fn the_heartbeat_interval_is_a_tenth_of_the_timeout_within_bounds() {
        let c = |ms| RuntimeConfig { heartbeat_timeout: Duration::from_millis(ms), ..RuntimeConfig::default() };
        assert_eq!(c(30_000).heartbeat_interval(), Duration::from_secs(1));
        assert_eq!(c(2_000).heartbeat_interval(), Duration::from_millis(200));
        assert_eq!(c(100).heartbeat_interval(), Duration::from_millis(50));
        assert_eq!(c(20).heartbeat_interval(), Duration::from_millis(20));
    }
}
