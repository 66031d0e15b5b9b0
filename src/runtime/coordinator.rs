//! The coordinator (JobMaster): creates the arena, spawns the workers, deploys subtasks,
//! tracks their state and "partition consumable" notifications, watches the children and
//! cancels everything on the first failure.
//!
//! Workers are watched Flink-style: each sends a heartbeat every
//! [`RuntimeConfig::heartbeat_interval`] from a thread of its own, and a worker the
//! coordinator has heard nothing from for [`RuntimeConfig::heartbeat_timeout`] (its first
//! message included) fails the job. Writes to a worker give up after the same time without
//! progress, and every message a worker sends is checked: a malformed one, or a report about
//! a task that was not deployed to it, fails the job naming the worker.

use super::config::{heartbeat_timeout_from_env, RuntimeConfig};
use super::graph::ExecutionGraph;
use super::job::JobGraph;
use super::progress::ProgressReporter;
use super::protocol::{encode, recv, FromWorker, SubtaskSpec, ToWorker, CONTROL_FD_ENV, HEARTBEAT_INTERVAL_ENV};
use crate::error::{Error, Result};
use crate::memory::Arena;
use crate::metrics::{channel_snapshot, task_snapshot};
use crate::partition::{ResultPartitionId, ResultPartitionManager};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The tasks' accumulators, merged (see [`super::accumulators`]).
    pub accumulators: super::accumulators::Accumulators,
}

/// How long the coordinator waits, after a task failed as a consequence of another failure,
/// for the cause to be reported (by another worker, over another socket) before it reports
/// the consequence.
const ROOT_CAUSE_GRACE: Duration = Duration::from_secs(2);

/// Blocking writes to a worker's socket wake this often to check for a stop signal and the
/// write deadline.
const WRITE_SLICE: Duration = Duration::from_millis(100);

/// When the coordinator last heard from a worker (its start time until its first message),
/// and whether it has heard anything; updated by the worker's reader thread.
type Heard = Arc<Mutex<(Instant, bool)>>;

struct Worker {
    slot: u32,
    child: Option<Child>,
    sock: UnixStream,
    pid: u32,
    heard: Heard,
    /// Its reader thread ended (socket closed or a malformed message): no more heartbeats.
    closed: bool,
    /// A write to it failed (it may hold half a message): nothing more is sent.
    broken: bool,
}

impl Worker {
    fn cancel(&mut self) {
        if !self.broken {
            // Short: a worker that does not read is killed soon anyway.
            if let Ok(line) = encode(&ToWorker::Cancel) {
                self.broken = write_bounded(&mut self.sock, &line, Duration::from_millis(200)).is_err();
            }
        }
    }
}

/// Writes `line` to a worker's socket (whose write timeout is [`WRITE_SLICE`]), giving up
/// when the worker has taken no byte for `patience` or a stop signal arrived.
fn write_bounded(sock: &mut UnixStream, line: &[u8], patience: Duration) -> std::io::Result<()> {
    let mut done = 0;
    let mut progress = Instant::now();
    while done < line.len() {
        match sock.write(&line[done..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                done += n;
                progress = Instant::now();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if let Some(sig) = crate::sync::stop_signal() {
                    return Err(std::io::Error::other(format!("stopped by signal {sig}")));
                }
                if progress.elapsed() >= patience {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the worker read nothing for {} ({done} of {} bytes sent)", secs(patience), line.len()),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `d` for a message: "30 s", "1.5 s".
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
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
        if job.vertices.iter().flat_map(|v| &v.inputs).all(|(_, e)| e.partition_type.is_pipelined()) {
            return Ok(None);
        }
        if let Some(p) = std::env::var_os(crate::partition::BLOCKING_DIR_ENV).filter(|p| !p.is_empty()) {
            // An existing directory, or an error before any worker starts.
            crate::partition::FileChannelManager::from_env()?;
            return Ok(Some(Self { path: p.into(), owned: false }));
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("shmflow-blocking-{}-{nanos}", std::process::id());
        let path = match std::env::var_os("SHMFLOW_JOB_DIR").filter(|p| !p.is_empty()) {
            Some(d) => std::path::PathBuf::from(d).join(name),
            None => std::env::temp_dir().join(name),
        };
        // Private (0700): the partition files hold the job's records. `shmflow clean`
        // removes the directory if this process dies without removing it.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| Error::Io {
                op: format!("creating the blocking partition directory {}", path.display()),
                source: e,
            })?;
        }
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

/// What a worker's reader thread passes on (heartbeats only update [`Worker::heard`]).
enum ReaderEvent {
    Msg(FromWorker),
    /// End of stream (the worker exited, or died while writing).
    Closed,
    /// A line that is not a message, or one over the size limit; nothing more is read.
    Malformed(String),
}

/// A report about a task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    Running,
    /// Finished or failed.
    Ended,
}

/// Which worker each task was deployed to and where it stands: a worker may report only on
/// its own tasks, running at most once and before it ended, and ended once.
#[derive(Debug)]
struct TaskTable {
    owner: HashMap<(usize, u32), usize>,
    running: HashSet<(usize, u32)>,
    ended: HashSet<(usize, u32)>,
}

impl TaskTable {
    fn new(owner: HashMap<(usize, u32), usize>) -> Self {
        Self { owner, running: HashSet::new(), ended: HashSet::new() }
    }

    /// Records worker `w`'s report on `task`, or says why it is a protocol violation.
    fn report(&mut self, w: usize, task: (usize, u32), report: Report) -> std::result::Result<(), String> {
        match self.owner.get(&task) {
            None => return Err("which is not a task of this job".into()),
            Some(&o) if o != w => return Err(format!("which was deployed to worker {o}")),
            Some(_) => {}
        }
        if self.ended.contains(&task) {
            return Err("which had already ended".into());
        }
        match report {
            Report::Running if !self.running.insert(task) => Err("which was already reported running".into()),
            Report::Running => Ok(()),
            Report::Ended => {
                self.ended.insert(task);
                Ok(())
            }
        }
    }

    /// Tasks not ended yet.
    fn left(&self) -> usize {
        self.owner.len() - self.ended.len()
    }

    /// Whether worker `w` has tasks not ended yet.
    fn left_on(&self, w: usize) -> bool {
        self.owner.iter().any(|(t, &o)| o == w && !self.ended.contains(t))
    }
}

/// "wordcount-map (2/4)", or the raw indices of a task the job does not have.
fn task_label(job: &JobGraph, vertex: usize, subtask: u32) -> String {
    match job.vertices.get(vertex) {
        Some(v) => format!("{} ({}/{})", v.name, subtask.saturating_add(1), v.parallelism),
        None => format!("vertex {vertex} subtask {subtask}"),
    }
}

/// Why worker `w`'s control socket closed while it had tasks: its exit status if it exits
/// within a second (never blocks longer).
fn closed_early(w: &mut Worker) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    let status = loop {
        match w.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(s))) => break Some(s),
            Some(Ok(None)) if Instant::now() < deadline && crate::sync::stop_signal().is_none() => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => break None,
        }
    };
    match status {
        Some(s) => format!("worker {} (pid {}) died with {s} while its tasks were running", w.slot, w.pid),
        None => format!("worker {} (pid {}) closed its control socket while its tasks were running", w.slot, w.pid),
    }
}

/// Runs `job` across worker processes and waits for it.
///
/// # Errors
/// A bad configuration (before any worker starts), or the first failure of any task or
/// worker (after every worker was stopped and the arena released).
pub fn run_job(job: &JobGraph, config: &RuntimeConfig) -> Result<JobSummary> {
    let graph = ExecutionGraph::build(job, 0)?;
    let arena_cfg = config.arena_config(job, &graph)?;
    heartbeat_timeout_from_env()?;
    if config.heartbeat_timeout.is_zero() {
        return Err(Error::Invalid { what: "heartbeat timeout", detail: "0: it must be above zero".into() });
    }
    // Deploy: subtask k goes to worker k mod W. Encoded before any worker starts, so a
    // deployment too large for the control protocol is refused up front.
    let mut per_worker: Vec<Vec<SubtaskSpec>> = vec![Vec::new(); config.workers as usize];
    for (k, s) in graph.subtasks.iter().enumerate() {
        per_worker[k % config.workers as usize].push(s.clone());
    }
    let deployments = per_worker
        .into_iter()
        .enumerate()
        .map(|(w, subtasks)| {
            encode(&ToWorker::Deploy { worker: w as u32, subtasks }).map_err(|e| Error::Invalid {
                what: "deployment",
                detail: format!("the subtasks of worker {w}: {e}; use more --workers or a lower --parallelism"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    crate::sync::install_stop_handler();
    let arena = Arc::new(Arena::create_memfd(&arena_cfg, &job.name)?);
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, ReaderEvent)>();
    let args: Vec<std::ffi::OsString> =
        config.worker_args.clone().unwrap_or_else(|| std::env::args_os().skip(1).collect());
    let exe = std::env::current_exe().map_err(io("finding the current executable"))?;
    let blocking_dir = BlockingDir::for_job(job)?;
    let mut workers = Workers(Vec::new());
    let interval_ms = config.heartbeat_interval().as_millis().max(1).to_string();
    for w in 0..config.workers {
        let (mine, theirs) = UnixStream::pair().map_err(io("creating a control socket"))?;
        mine.set_write_timeout(Some(WRITE_SLICE)).map_err(io("setting a control socket's write timeout"))?;
        let mut cmd = Command::new(&exe);
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null());
        let fd = theirs.as_raw_fd();
        cmd.env(CONTROL_FD_ENV, fd.to_string()).env(HEARTBEAT_INTERVAL_ENV, &interval_ms);
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
        let heard: Heard = Arc::new(Mutex::new((Instant::now(), false)));
        let (txw, heard_w) = (tx.clone(), heard.clone());
        let idx = w as usize;
        let spawned = std::thread::Builder::new().name(format!("control-{w}")).spawn(move || loop {
            let event = match recv::<FromWorker>(&mut reader) {
                Ok(Some(m)) => {
                    // Any message shows the worker is alive.
                    *heard_w.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (Instant::now(), true);
                    if matches!(m, FromWorker::Heartbeat) {
                        continue;
                    }
                    ReaderEvent::Msg(m)
                }
                Ok(None) => ReaderEvent::Closed,
                // Only a line that does not parse is the worker's fault; a reset or any other
                // I/O error means its end went away (a worker that exits with our deployment
                // unread resets the socket), and its exit status says why.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => ReaderEvent::Malformed(e.to_string()),
                Err(_) => ReaderEvent::Closed,
            };
            let last = !matches!(event, ReaderEvent::Msg(_));
            if txw.send((idx, event)).is_err() || last {
                break;
            }
        });
        workers.0.push(Worker { slot: w, child: Some(child), sock: mine, pid, heard, closed: false, broken: false });
        spawned.map_err(io("starting a control socket reader"))?;
    }
    drop(tx);
    let mut failure: Option<String> = None;
    for (w, line) in workers.0.iter_mut().zip(&deployments) {
        if let Err(e) = write_bounded(&mut w.sock, line, config.heartbeat_timeout) {
            w.broken = true;
            failure = Some(format!("deploying subtasks to worker {} (pid {}) failed: {e}", w.slot, w.pid));
            break;
        }
    }
    drop(deployments);
    let mut tasks = TaskTable::new(
        graph.subtasks.iter().enumerate().map(|(k, s)| ((s.vertex, s.subtask), k % config.workers as usize)).collect(),
    );
    let mut metrics_slots: HashMap<(usize, u32), u32> = HashMap::new();
    let mut consumable = 0usize;
    let mut max_in_flight: HashMap<usize, u64> = HashMap::new();
    let mut last_sample = Instant::now();
    let mut progress = config.progress.then(|| ProgressReporter::new(config.progress_total));
    let mut last_turn = Instant::now();
    let manager = ResultPartitionManager::new(arena.clone());
    // The first failure that was a consequence of another (a cancellation, a consumer gone,
    // a producer failed), and when it came: the job fails with it only if no cause is
    // reported within ROOT_CAUSE_GRACE (or before every task ended).
    let mut consequence: Option<(String, Instant)> = None;
    let mut job_accumulators = super::accumulators::Accumulators::new();
    while tasks.left() > 0 && failure.is_none() {
        if let Some((f, at)) = &consequence {
            if at.elapsed() >= ROOT_CAUSE_GRACE {
                failure = Some(f.clone());
                break;
            }
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((w, ReaderEvent::Msg(msg))) => {
                let pid = workers.0[w].pid;
                let violation = |what: &str, vertex: usize, subtask: u32, why: String| {
                    format!(
                        "worker {w} (pid {pid}) broke the control protocol: it reported task {} {what}, {why}",
                        task_label(job, vertex, subtask)
                    )
                };
                match msg {
                    FromWorker::Hello { .. } | FromWorker::Heartbeat => {}
                    FromWorker::TaskRunning { vertex, subtask, metrics_slot } => {
                        match tasks.report(w, (vertex, subtask), Report::Running) {
                            Ok(()) => {
                                metrics_slots.insert((vertex, subtask), metrics_slot);
                            }
                            Err(why) => failure = Some(violation("running", vertex, subtask, why)),
                        }
                    }
                    FromWorker::PartitionConsumable { .. } => consumable += 1,
                    FromWorker::TaskFinished { vertex, subtask, accumulators } => {
                        match tasks.report(w, (vertex, subtask), Report::Ended) {
                            Ok(()) => super::accumulators::merge_into(&mut job_accumulators, accumulators),
                            Err(why) => failure = Some(violation("finished", vertex, subtask, why)),
                        }
                    }
                    FromWorker::TaskFailed { vertex, subtask, error, symptom } => {
                        match tasks.report(w, (vertex, subtask), Report::Ended) {
                            Ok(()) => {
                                let f = format!(
                                    "task {} on worker {w} (pid {pid}) failed: {error}",
                                    task_label(job, vertex, subtask)
                                );
                                if symptom {
                                    // A consequence: the cause may still be on its way from
                                    // another worker. Reported if none comes.
                                    consequence.get_or_insert_with(|| (f, Instant::now()));
                                } else {
                                    failure = Some(f);
                                }
                            }
                            Err(why) => {
                                failure =
                                    Some(violation("failed", vertex, subtask, format!("{why} (its error: {error})")))
                            }
                        }
                    }
                }
            }
            Ok((w, ReaderEvent::Malformed(e))) => {
                workers.0[w].closed = true;
                // The worker may still be running: the guard below cancels, then kills it.
                failure = Some(format!("worker {w} (pid {}) sent a malformed control message: {e}", workers.0[w].pid));
            }
            Ok((w, ReaderEvent::Closed)) => {
                workers.0[w].closed = true;
                if tasks.left_on(w) {
                    failure = Some(closed_early(&mut workers.0[w]));
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
                    if !status.success() && tasks.left_on(w.slot as usize) {
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
        let now = Instant::now();
        if now.saturating_duration_since(last_turn) > (config.heartbeat_timeout / 2).max(Duration::from_secs(1)) {
            // This process itself was stopped or starved: what it did not hear meanwhile is
            // not the workers' fault.
            for w in &workers.0 {
                w.heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = now;
            }
        }
        last_turn = now;
        for w in workers.0.iter().filter(|w| !w.closed) {
            let (at, any) = *w.heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if failure.is_none() && now.saturating_duration_since(at) > config.heartbeat_timeout {
                let t = secs(config.heartbeat_timeout);
                failure = Some(if any {
                    format!("worker {} (pid {}) sent no heartbeat for {t}: is it stopped or hung?", w.slot, w.pid)
                } else {
                    format!(
                        "worker {} (pid {}) sent no first message within {t} of its start: is it stopped or hung?",
                        w.slot, w.pid
                    )
                });
            }
        }
        if last_sample.elapsed() >= Duration::from_millis(100) {
            last_sample = Instant::now();
            sample_in_flight(job, &graph, &manager, &arena, &mut max_in_flight);
        }
        if let Some(p) = progress.as_mut().filter(|p| p.due()) {
            let snaps = metrics_slots.iter().filter_map(|(&k, &s)| Some((k, task_snapshot(&arena, s)?))).collect();
            p.update(snaps, tasks.left());
        }
    }
    if let Some(p) = progress.as_mut() {
        p.finish();
    }
    if let Some(signal) = crate::sync::stop_signal() {
        // A stop signal outranks what it caused (workers killed by the same Ctrl-C, ...).
        drop(workers);
        return Err(Error::Interrupted { signal });
    }
    if failure.is_none() {
        failure = consequence.map(|(f, _)| f);
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
                if let Some(signal) = crate::sync::stop_signal() {
                    // A Ctrl-C now also hit the workers: it is the cause of their exits.
                    return Err(Error::Interrupted { signal });
                }
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
    summary.accumulators = job_accumulators;
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
    // Records and bytes the sources (vertices without inputs) wrote into their exchanges.
    let (mut source_records, mut source_bytes) = (0u64, 0u64);
    for vx in &job.vertices {
        for &(u, e) in &vx.inputs {
            let (mut records, mut bytes, mut bp, mut run) = (0u64, 0u64, 0u64, 0u64);
            for i in 0..job.vertices[u].parallelism {
                if let Some(s) = snap(u, i) {
                    // Saturating: the counters are workers' words in the arena.
                    records = records.saturating_add(s.records_out);
                    bytes = bytes.saturating_add(s.bytes_out);
                    bp = bp.saturating_add(s.back_pressured_ns);
                    run = run.saturating_add(s.ended_ns.max(s.started_ns) - s.started_ns);
                }
            }
            if job.vertices[u].inputs.is_empty() {
                source_records = source_records.saturating_add(records);
                source_bytes = source_bytes.saturating_add(bytes);
            }
            let segs = max_in_flight.get(&u).copied().unwrap_or(0);
            edges.push(EdgeSummary {
                from: job.vertices[u].name.clone(),
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
    }
    let (records, bytes) = (source_records, source_bytes);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_reports_only_on_its_own_tasks_each_state_once() {
        let mut t = TaskTable::new([((0, 0), 0), ((1, 0), 1), ((1, 1), 0)].into_iter().collect());
        assert_eq!(t.left(), 3);
        let e = t.report(0, (1, 0), Report::Ended).unwrap_err();
        assert!(e.contains("deployed to worker 1"), "{e}");
        let e = t.report(0, (5, 0), Report::Running).unwrap_err();
        assert!(e.contains("not a task of this job"), "{e}");
        let e = t.report(0, (0, 7), Report::Ended).unwrap_err();
        assert!(e.contains("not a task of this job"), "{e}");
        assert_eq!(t.left(), 3, "refused reports change nothing");
        t.report(0, (0, 0), Report::Running).unwrap();
        let e = t.report(0, (0, 0), Report::Running).unwrap_err();
        assert!(e.contains("already reported running"), "{e}");
        t.report(0, (0, 0), Report::Ended).unwrap();
        assert_eq!(t.left(), 2);
        assert!(t.left_on(0), "(1, 1) is still on worker 0");
        let e = t.report(0, (0, 0), Report::Ended).unwrap_err();
        assert!(e.contains("already ended"), "{e}");
        let e = t.report(0, (0, 0), Report::Running).unwrap_err();
        assert!(e.contains("already ended"), "{e}");
        // A task may end without a running report (its metrics block was not claimed).
        t.report(0, (1, 1), Report::Ended).unwrap();
        assert!(!t.left_on(0));
        assert!(t.left_on(1));
        t.report(1, (1, 0), Report::Ended).unwrap();
        assert_eq!(t.left(), 0);
    }
}
