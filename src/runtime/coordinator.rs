//! The coordinator (JobMaster): creates the arena, spawns the workers, deploys subtasks,
//! tracks their state and "partition consumable" notifications, watches the children and
//! cancels everything on the first failure.

use super::execution::{ExecutionGraph, SubtaskSpec, TaskSettings};
use super::job::JobGraph;
use super::protocol::{recv, send, FromWorker, ToWorker};
use super::worker::CONTROL_FD_ENV;
use crate::error::{Error, Result};
use crate::memory::{Arena, ArenaConfig};
use crate::metrics::{channel_snapshot, task_snapshot, TaskRates, TaskSnapshot};
use crate::partition::{BufferTimeout, RequestBackoff, ResultPartitionId, ResultPartitionManager};
use crate::sync::WaitPolicy;
use serde::Serialize;
use std::collections::HashMap;
use std::io::BufReader;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker processes.
    pub workers: u32,
    /// Flink's buffer timeout.
    pub buffer_timeout: BufferTimeout,
    /// Segment size in bytes.
    pub segment_size: u32,
    /// Arena size in bytes.
    pub arena_size: u64,
    /// How tasks wait.
    pub wait_policy: WaitPolicy,
    /// Partition request backoff.
    pub backoff: RequestBackoff,
    /// Print progress to stderr every second.
    pub progress: bool,
    /// Arguments the workers are started with (default: this process's own).
    pub worker_args: Option<Vec<std::ffi::OsString>>,
    /// Buffer debloating on every gate (off when `None`).
    pub debloat: Option<crate::gate::DebloatConfig>,
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
            worker_args: None,
            debloat: None,
        }
    }
}

impl RuntimeConfig {
    /// The settings every task gets.
    pub fn task_settings(&self) -> TaskSettings {
        TaskSettings {
            buffer_timeout: self.buffer_timeout,
            wait_policy: self.wait_policy,
            backoff: self.backoff,
            debloat: self.debloat,
        }
    }

    /// The arena this job needs, or a clear error saying why the sizes do not fit.
    ///
    /// # Errors
    /// [`Error::Invalid`] when the arena is too small for the job's channels and pools.
    pub fn arena_config(&self, job: &JobGraph, graph: &ExecutionGraph) -> Result<ArenaConfig> {
        if self.workers == 0 || self.workers > 256 {
            return Err(Error::Invalid { what: "--workers", detail: format!("{} not in 1..=256", self.workers) });
        }
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
        let cfg = base.with_arena_size(self.arena_size).map_err(|e| Error::Invalid {
            what: "--arena-size",
            detail: format!("{e} (the job has {channels} channels)"),
        })?;
        // Every partition keeps subpartitions + 1 segments, and needs one more per channel
        // to make progress.
        let need: u64 = graph
            .subtasks
            .iter()
            .filter_map(|s| s.output.as_ref())
            .map(|o| 2 * u64::from(o.num_subpartitions) + 1)
            .sum();
        if u64::from(cfg.segment_count) < need {
            return Err(Error::Invalid {
                what: "--arena-size",
                detail: format!(
                    "an arena of {} bytes holds {} segments of {} bytes, but this job's {} channels need at least {need}; \
                     use --arena-size {} or more",
                    self.arena_size,
                    cfg.segment_count,
                    self.segment_size,
                    channels,
                    (need + 64) * u64::from(self.segment_size) + (8 << 20)
                ),
            });
        }
        Ok(cfg)
    }
}

/// Figures for one edge of the job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeSummary {
    /// Producer vertex.
    pub from: String,
    /// Consumer vertex.
    pub to: String,
    /// Selector.
    pub selector: String,
    /// Partition type.
    pub partition_type: String,
    /// Records that crossed it.
    pub records: u64,
    /// Bytes that crossed it.
    pub bytes: u64,
    /// The most segments seen in flight on it at once (sampled).
    pub max_in_flight_segments: u64,
    /// The most bytes that could have been in flight (segments x segment size).
    pub max_in_flight_bytes: u64,
    /// Milliseconds its producers spent back-pressured, summed over subtasks.
    pub back_pressured_ms: f64,
    /// That time as a share of the producers' run time.
    pub back_pressured_ratio: f64,
}

/// The outcome of a job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobSummary {
    /// Job name.
    pub job: String,
    /// Worker processes.
    pub workers: u32,
    /// Subtasks.
    pub subtasks: usize,
    /// Records the sources produced.
    pub records: u64,
    /// Bytes the sources produced into the first exchange.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// Records per second (sources).
    pub records_per_s: f64,
    /// Per edge.
    pub edges: Vec<EdgeSummary>,
    /// Partitions that announced they are consumable.
    pub consumable_partitions: usize,
    /// Segments in the arena.
    pub arena_segments: u32,
    /// Segments back on the free stack after every worker exited (equal to
    /// `arena_segments` unless segments leaked).
    pub arena_free_after: u32,
    /// Problems `shmflow check` found in the arena after the job (none expected).
    pub arena_problems: Vec<String>,
}

struct Worker {
    slot: u32,
    child: Option<Child>,
    sock: UnixStream,
    pid: u32,
}

impl Worker {
    fn cancel(&mut self) {
        let _ = send(&mut self.sock, &ToWorker::Cancel);
    }
}

/// Kills and reaps every worker still running when the coordinator leaves.
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            w.cancel();
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for w in &mut self.0 {
            if let Some(c) = w.child.as_mut() {
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The directory of a job's blocking partition files, named to the workers through
/// [`crate::partition::BLOCKING_DIR_ENV`]; removed when the job ends if this coordinator
/// created it.
struct BlockingDir {
    path: std::path::PathBuf,
    owned: bool,
}

impl BlockingDir {
    fn for_job(job: &JobGraph) -> Result<Option<Self>> {
        if job.vertices.iter().filter_map(|v| v.input).all(|e| e.partition_type.is_pipelined()) {
            return Ok(None);
        }
        if let Some(p) = std::env::var_os(crate::partition::BLOCKING_DIR_ENV).filter(|p| !p.is_empty()) {
            return Ok(Some(Self { path: p.into(), owned: false }));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("shmflow-blocking-{}-{nanos}", std::process::id());
        let path = match std::env::var_os("SHMFLOW_JOB_DIR").filter(|p| !p.is_empty()) {
            Some(d) => std::path::PathBuf::from(d).join(name),
            None => std::env::temp_dir().join(name),
        };
        crate::partition::FileChannelManager::new(&path)?;
        Ok(Some(Self { path, owned: true }))
    }
}

impl Drop for BlockingDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn io(op: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io { op: op.to_string(), source: e }
}

/// Runs `job` across worker processes and waits for it.
///
/// # Errors
/// A bad configuration (before any worker starts), or the first failure of any task or
/// worker (after every worker was stopped and the arena released).
pub fn run_job(job: &JobGraph, config: &RuntimeConfig) -> Result<JobSummary> {
    let graph = ExecutionGraph::build(job, 0)?;
    let arena_cfg = config.arena_config(job, &graph)?;
    crate::sync::install_stop_handler();
    let arena = Arc::new(Arena::create_memfd(&arena_cfg, &job.name)?);
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, Option<FromWorker>)>();
    let args: Vec<std::ffi::OsString> =
        config.worker_args.clone().unwrap_or_else(|| std::env::args_os().skip(1).collect());
    let exe = std::env::current_exe().map_err(io("finding the current executable"))?;
    let blocking_dir = BlockingDir::for_job(job)?;
    let mut workers = Workers(Vec::new());
    for w in 0..config.workers {
        let (mine, theirs) = UnixStream::pair().map_err(io("creating a control socket"))?;
        let mut cmd = Command::new(&exe);
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null());
        let fd = theirs.as_raw_fd();
        cmd.env(CONTROL_FD_ENV, fd.to_string());
        arena.inherit_fd_into(&mut cmd)?;
        if let Some(d) = &blocking_dir {
            cmd.env(crate::partition::BLOCKING_DIR_ENV, &d.path);
        }
        // SAFETY: the closure only calls fcntl (async-signal-safe) on an fd that is open in
        // the parent, hence in the forked child.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(io("starting a worker"))?;
        drop(theirs);
        let pid = child.id();
        let mut reader = BufReader::new(mine.try_clone().map_err(io("cloning a control socket"))?);
        let txw = tx.clone();
        let idx = w as usize;
        std::thread::spawn(move || loop {
            match recv::<FromWorker>(&mut reader) {
                Ok(Some(m)) => {
                    if txw.send((idx, Some(m))).is_err() {
                        break;
                    }
                }
                _ => {
                    let _ = txw.send((idx, None));
                    break;
                }
            }
        });
        workers.0.push(Worker { slot: w, child: Some(child), sock: mine, pid });
    }
    drop(tx);
    // Deploy: subtask k goes to worker k mod W.
    let mut per_worker: Vec<Vec<SubtaskSpec>> = vec![Vec::new(); config.workers as usize];
    for (k, s) in graph.subtasks.iter().enumerate() {
        per_worker[k % config.workers as usize].push(s.clone());
    }
    for (w, subtasks) in workers.0.iter_mut().zip(per_worker) {
        send(&mut w.sock, &ToWorker::Deploy { worker: w.slot, subtasks }).map_err(io("deploying subtasks"))?;
    }
    let mut remaining: HashMap<(usize, u32), usize> =
        graph.subtasks.iter().enumerate().map(|(k, s)| ((s.vertex, s.subtask), k % config.workers as usize)).collect();
    let mut metrics_slots: HashMap<(usize, u32), u32> = HashMap::new();
    let mut consumable = 0usize;
    let mut max_in_flight: HashMap<usize, u64> = HashMap::new();
    let mut last_sample = Instant::now();
    let mut last_progress = Instant::now();
    let mut prev_snaps: Option<(Vec<TaskSnapshot>, Instant)> = None;
    let mut failure: Option<String> = None;
    let manager = ResultPartitionManager::new(arena.clone());
    while !remaining.is_empty() && failure.is_none() {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((w, Some(msg))) => match msg {
                FromWorker::Hello { .. } => {}
                FromWorker::TaskRunning { vertex, subtask, metrics_slot } => {
                    metrics_slots.insert((vertex, subtask), metrics_slot);
                }
                FromWorker::PartitionConsumable { .. } => consumable += 1,
                FromWorker::TaskFinished { vertex, subtask } => {
                    remaining.remove(&(vertex, subtask));
                }
                FromWorker::TaskFailed { vertex, subtask, error } => {
                    let (name, parallelism) =
                        job.vertices.get(vertex).map_or(("an unknown vertex", 0), |v| (v.name.as_str(), v.parallelism));
                    failure = Some(format!(
                        "task {name} ({}/{parallelism}) on worker {w} (pid {}) failed: {error}",
                        subtask.saturating_add(1),
                        workers.0[w].pid
                    ));
                }
            },
            Ok((w, None)) => {
                if remaining.values().any(|&ww| ww == w) {
                    let status = workers.0[w].child.as_mut().and_then(|c| c.wait().ok());
                    failure = Some(format!(
                        "worker {w} (pid {}) died with {} while its tasks were running",
                        workers.0[w].pid,
                        status.map_or("an unknown status".to_string(), |s| s.to_string())
                    ));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                failure.get_or_insert_with(|| "every worker closed its control socket".into());
            }
        }
        for w in &mut workers.0 {
            if let Some(c) = w.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    if !status.success() && remaining.values().any(|&ww| ww == w.slot as usize) {
                        failure.get_or_insert_with(|| {
                            format!(
                                "worker {} (pid {}) exited with {status} while its tasks were running",
                                w.slot, w.pid
                            )
                        });
                    }
                }
            }
        }
        if let Some(sig) = crate::sync::stop_signal() {
            failure.get_or_insert_with(|| format!("stopped by signal {sig}"));
        }
        if last_sample.elapsed() >= Duration::from_millis(100) {
            last_sample = Instant::now();
            sample_in_flight(job, &graph, &manager, &arena, &mut max_in_flight);
        }
        if config.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            let snaps: Vec<TaskSnapshot> = metrics_slots.values().filter_map(|&s| task_snapshot(&arena, s)).collect();
            if let Some((prev, _)) = &prev_snaps {
                let (mut rin, mut bp) = (0.0, 0.0f64);
                let mut bytes = 0u64;
                for (a, b) in prev.iter().zip(&snaps) {
                    let r = TaskRates::between(a, b);
                    rin += r.records_in_per_s;
                    bp = bp.max(r.back_pressured_ms_per_s);
                    // Saturating: the counters are workers' words in the arena.
                    bytes = bytes.saturating_add(b.bytes_out);
                }
                eprintln!(
                    "[{:>6.1}s] {:>12.0} records/s in, {:>8.1} MB out so far, max back-pressure {:>5.0} ms/s, {} tasks left",
                    start.elapsed().as_secs_f64(),
                    rin,
                    bytes as f64 / 1e6,
                    bp,
                    remaining.len()
                );
            }
            prev_snaps = Some((snaps, Instant::now()));
        }
    }
    if let Some(f) = failure {
        // Workers are cancelled, given a moment, then killed and reaped by the guard; the
        // arena goes with the last mapping.
        drop(workers);
        return Err(Error::JobFailed(f));
    }
    // Everything finished: let the workers exit on their own, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    for w in &mut workers.0 {
        if let Some(c) = w.child.as_mut() {
            loop {
                match c.try_wait() {
                    Ok(Some(status)) if !status.success() => {
                        return Err(Error::JobFailed(format!(
                            "worker {} (pid {}) exited with {status}",
                            w.slot, w.pid
                        )));
                    }
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => break,
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    sample_in_flight(job, &graph, &manager, &arena, &mut max_in_flight);
    let mut summary = summarize(job, &graph, &arena, &metrics_slots, &max_in_flight, elapsed, config, consumable);
    drop(workers);
    let report = crate::memory::check::check(&arena);
    summary.arena_segments = report.segments;
    summary.arena_free_after = report.free_walked;
    summary.arena_problems = report.problems;
    Ok(summary)
}

fn sample_in_flight(
    job: &JobGraph,
    graph: &ExecutionGraph,
    manager: &ResultPartitionManager,
    arena: &Arena,
    max: &mut HashMap<usize, u64>,
) {
    let _ = job;
    let mut per_edge: HashMap<usize, u64> = HashMap::new();
    for s in &graph.subtasks {
        if let Some(o) = &s.output {
            let id = ResultPartitionId::new(o.partition.0, o.partition.1);
            // Blocking partitions have no channels in the arena.
            if let Some(info) = manager.lookup_once(id).ok().filter(|i| i.partition_type.is_pipelined()) {
                let n: u64 = (0..info.num_subpartitions)
                    .filter_map(|i| channel_snapshot(arena, info.first_channel + i))
                    .map(|c| u64::from(c.backlog))
                    .sum();
                *per_edge.entry(o.edge).or_default() += n;
            }
        }
    }
    for (e, n) in per_edge {
        let m = max.entry(e).or_default();
        *m = (*m).max(n);
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    job: &JobGraph,
    graph: &ExecutionGraph,
    arena: &Arena,
    slots: &HashMap<(usize, u32), u32>,
    max_in_flight: &HashMap<usize, u64>,
    elapsed: f64,
    config: &RuntimeConfig,
    consumable: usize,
) -> JobSummary {
    let snap = |v: usize, i: u32| slots.get(&(v, i)).and_then(|&s| task_snapshot(arena, s));
    let mut edges = Vec::new();
    for (v, vx) in job.vertices.iter().enumerate().skip(1) {
        let e = vx.input.expect("every vertex after the first has an input edge");
        let (mut records, mut bytes, mut bp, mut run) = (0u64, 0u64, 0u64, 0u64);
        for i in 0..job.vertices[v - 1].parallelism {
            if let Some(s) = snap(v - 1, i) {
                // Saturating: the counters are workers' words in the arena.
                records = records.saturating_add(s.records_out);
                bytes = bytes.saturating_add(s.bytes_out);
                bp = bp.saturating_add(s.back_pressured_ns);
                run = run.saturating_add(s.ended_ns.max(s.started_ns) - s.started_ns);
            }
        }
        let segs = max_in_flight.get(&(v - 1)).copied().unwrap_or(0);
        edges.push(EdgeSummary {
            from: job.vertices[v - 1].name.clone(),
            to: vx.name.clone(),
            selector: format!("{:?}", e.selector),
            partition_type: format!("{:?}", e.partition_type),
            records,
            bytes,
            max_in_flight_segments: segs,
            max_in_flight_bytes: segs.saturating_mul(u64::from(config.segment_size)),
            back_pressured_ms: bp as f64 / 1e6,
            back_pressured_ratio: if run > 0 { bp as f64 / run as f64 } else { 0.0 },
        });
    }
    let (records, bytes) = edges.first().map_or((0, 0), |e| (e.records, e.bytes));
    JobSummary {
        job: job.name.clone(),
        workers: config.workers,
        subtasks: graph.subtasks.len(),
        records,
        bytes,
        elapsed_s: elapsed,
        records_per_s: records as f64 / elapsed.max(1e-9),
        edges,
        consumable_partitions: consumable,
        ..JobSummary::default()
    }
}
