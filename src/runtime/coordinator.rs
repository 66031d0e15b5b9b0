//! The coordinator (JobMaster): creates the arena, spawns the workers, deploys subtasks,
//! tracks their state and "partition consumable" notifications, watches the children and
//! cancels everything on the first failure.
//!
//! ```text
//!  Plan::new ──> JobRun::spawn ──> deploy ──> event_loop ──> finish ──> JobSummary
//!  (no process     (arena, workers,   (each worker's   (task states,     (exits awaited,
//!   started yet)    socket readers)    subtasks)        heartbeats,       summary, arena
//!                                         │             exits, signals)   check)
//!                                         └── JobFailure ──┴──────────> finish: workers
//!                                                                stopped, Error::JobFailed
//! ```
//!
//! A failure is a [`JobFailure`](super::failure::JobFailure) (which task or worker, and
//! what it did); a task's failure that is only a consequence of another (a cancelled
//! consumer, a producer gone) waits a grace period for its cause.
//!
//! Workers are watched Flink-style: each sends a heartbeat every
//! [`RuntimeConfig::heartbeat_interval`] from a thread of its own, and a worker the
//! coordinator has heard nothing from for [`RuntimeConfig::heartbeat_timeout`] (its first
//! message included) fails the job. Writes to a worker give up after the same time without
//! progress, and every message a worker sends is checked: a malformed one, or a report about
//! a task that was not deployed to it, fails the job naming the worker.

use super::accumulators::Accumulators;
use super::config::{heartbeat_timeout_from_env, RuntimeConfig};
use super::failure::{secs, JobFailure, Reported, WorkerId};
use super::graph::ExecutionGraph;
use super::job::JobGraph;
use super::progress::ProgressReporter;
use super::protocol::{
    encode, recv, FromWorker, SubtaskSpec, ToWorker, CONTROL_FD_ENV, HEARTBEAT_INTERVAL_ENV, RUN_TOKEN_ENV,
};
use super::summary::{sample_in_flight, summarize, JobSummary};
use crate::error::{ConfigError, Error, Result};
use crate::memory::{Arena, ArenaConfig};
use crate::metrics::task_snapshot;
use crate::partition::ResultPartitionManager;
use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Its exit status if it exits within `patience` (polled; `None` otherwise).
    fn exit_status_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + patience;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => return None,
            }
        }
    }

    fn id(&self) -> WorkerId {
        WorkerId { slot: self.slot as usize, pid: self.pid }
    }

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

/// Kills and reaps every worker still running when the coordinator leaves.
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            w.cancel();
        }
        // A grace for the workers to exit on their own (one killed already exits at once).
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
fn closed_early(w: &mut Worker) -> JobFailure {
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
    JobFailure::Died { worker: w.id(), status }
}

/// Runs `job` across worker processes and waits for it.
///
/// The coordinator goes through four phases, each a method of a private `JobRun`:
///
/// ```text
///  Plan::new   expand the graph, size the arena, encode each worker's deployment
///     |        (a bad job fails here, before any process starts)
///  spawn       create the arena, start the workers and their socket readers
///  deploy      send each worker its subtasks                  --failure--.
///  event loop  task states, heartbeats, exits, stop signals  --failure--+
///  finish      wait for the workers to exit, summarize; or stop them and  <'
///              report the failure (a stop signal outranks it)
/// ```
///
/// # Errors
/// A bad configuration (before any worker starts), or the first failure of any task or
/// worker (after every worker was stopped and the arena released).
pub fn run_job(job: &JobGraph, config: &RuntimeConfig) -> Result<JobSummary> {
    let plan = Plan::new(job, config)?;
    crate::sync::install_stop_handler();
    let mut run = JobRun::spawn(job, config, plan.graph, &plan.arena)?;
    // Each worker is deployed its subtasks once its Hello showed it is this run's.
    run.deployments = plan.deployments.into_iter().map(Some).collect();
    let outcome = run.event_loop();
    run.finish(outcome)
}

/// A job that passed every check that needs no process: its execution graph, its arena and
/// each worker's deployment, encoded.
struct Plan {
    graph: ExecutionGraph,
    arena: ArenaConfig,
    deployments: Vec<Vec<u8>>,
}

impl Plan {
    fn new(job: &JobGraph, config: &RuntimeConfig) -> Result<Self> {
        let graph = ExecutionGraph::build(job, 0)?;
        let arena = config.arena_config(job, &graph)?;
        heartbeat_timeout_from_env()?;
        if config.heartbeat_timeout.is_zero() {
            return Err(
                ConfigError::Conflict { what: "heartbeat timeout", detail: "0: it must be above zero".into() }.into()
            );
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
                encode(&ToWorker::Deploy { worker: w as u32, subtasks }).map_err(|e| {
                    Error::from(ConfigError::Conflict {
                        what: "deployment",
                        detail: format!("the subtasks of worker {w}: {e}; use more --workers or a lower --parallelism"),
                    })
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { graph, arena, deployments })
    }
}

/// A running job: what the coordinator knows from spawn to finish.
struct JobRun<'a> {
    job: &'a JobGraph,
    config: &'a RuntimeConfig,
    graph: ExecutionGraph,
    start: Instant,
    /// Dropped first: cancels, then kills and reaps every worker still running.
    workers: Workers,
    /// Removed after the workers are gone.
    _blocking_dir: Option<BlockingDir>,
    arena: Arc<Arena>,
    manager: ResultPartitionManager,
    /// What the workers' socket readers pass on.
    events: mpsc::Receiver<(usize, ReaderEvent)>,
    tasks: TaskTable,
    metrics_slots: HashMap<(usize, u32), u32>,
    consumable: usize,
    max_in_flight: HashMap<usize, u64>,
    last_sample: Instant,
    progress: Option<ProgressReporter>,
    /// When the event loop last came round (a long gap means this process was stopped).
    last_turn: Instant,
    /// The first failure that was a consequence of another (a cancellation, a consumer
    /// gone, a producer failed), and when it came: the job fails with it only if no cause is
    /// reported within [`ROOT_CAUSE_GRACE`] (or before every task ended).
    consequence: Option<(JobFailure, Instant)>,
    accumulators: Accumulators,
    /// This run's token ([`RUN_TOKEN_ENV`]), and the shape of its graph: what a worker's
    /// Hello must bring.
    token: String,
    shape: String,
    /// Each worker's deployment, encoded, until its Hello came and it was sent.
    deployments: Vec<Option<Vec<u8>>>,
}

/// A token no other `run` call has: this process's pid, the time and a counter.
fn run_token() -> String {
    static RUNS: Mutex<u64> = Mutex::new(0);
    let n = {
        let mut runs = RUNS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *runs += 1;
        *runs
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{n}", std::process::id())
}

impl<'a> JobRun<'a> {
    /// Spawn: creates the arena and starts every worker with a reader thread on its socket.
    fn spawn(job: &'a JobGraph, config: &'a RuntimeConfig, graph: ExecutionGraph, arena: &ArenaConfig) -> Result<Self> {
        // The job's time starts before its arena is made: creating, sizing and mapping it is
        // part of starting the job, as making its channels is part of an in-process one's.
        let start = Instant::now();
        let arena = Arc::new(Arena::create_memfd(arena, &job.name)?);
        let (tx, events) = mpsc::channel::<(usize, ReaderEvent)>();
        let blocking_dir = BlockingDir::for_job(job)?;
        let mut workers = Workers(Vec::new());
        let token = run_token();
        let launcher = Launcher::new(config, &arena, blocking_dir.as_ref(), &token)?;
        for w in 0..config.workers {
            launcher.start(w, &tx, &mut workers)?;
        }
        let tasks = TaskTable::new(
            graph
                .subtasks
                .iter()
                .enumerate()
                .map(|(k, s)| ((s.vertex, s.subtask), k % config.workers as usize))
                .collect(),
        );
        Ok(Self {
            job,
            config,
            graph,
            start,
            workers,
            _blocking_dir: blocking_dir,
            manager: ResultPartitionManager::new(arena.clone()),
            arena,
            events,
            tasks,
            metrics_slots: HashMap::new(),
            consumable: 0,
            max_in_flight: HashMap::new(),
            last_sample: Instant::now(),
            progress: None,
            last_turn: Instant::now(),
            consequence: None,
            accumulators: Accumulators::new(),
            token,
            shape: job.shape(),
            deployments: Vec::new(),
        })
    }

    /// Worker `w` said Hello: refused if it is not this run's (another run's token, or its
    /// `run` builds another job or graph), else sent its subtasks.
    fn hello(&mut self, w: usize, token: &str, job: &str, graph: &str) -> std::result::Result<(), JobFailure> {
        let worker = self.workers.0[w].id();
        let why = if token != self.token {
            Some(format!("it was started by another run (token {token:?}, this run's is {:?})", self.token))
        } else if job != self.job.name {
            Some(format!("its run builds job {job:?}, this coordinator runs job {:?}", self.job.name))
        } else if graph != self.shape {
            Some(format!(
                "its run builds another graph of job {job:?}: its graph is {graph}, this coordinator's is {}",
                self.shape
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(JobFailure::Foreign { worker, why });
        }
        match self.deployments.get_mut(w).and_then(Option::take) {
            Some(line) => self.deploy(w, &line),
            None => Err(JobFailure::Malformed { worker, error: "a second Hello".into() }),
        }
    }

    /// Deploy: sends worker `w` its subtasks.
    fn deploy(&mut self, w: usize, line: &[u8]) -> std::result::Result<(), JobFailure> {
        let w = &mut self.workers.0[w];
        if let Err(e) = write_bounded(&mut w.sock, line, self.config.heartbeat_timeout) {
            w.broken = true;
            // A worker that exited before reading its deployment closed the socket
            // (EPIPE or a reset): its exit status says why, if it comes within a moment.
            if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                if let Some(status) = w.exit_status_within(Duration::from_secs(1)) {
                    return Err(JobFailure::Exited { worker: w.id(), status, running: true });
                }
            }
            return Err(JobFailure::Deploy { worker: w.id(), error: e.to_string() });
        }
        Ok(())
    }

    /// The event loop: until every task ended or something failed.
    fn event_loop(&mut self) -> std::result::Result<(), JobFailure> {
        self.progress = self.config.progress.then(|| ProgressReporter::new(self.config.progress_total));
        while self.tasks.left() > 0 {
            if let Some((f, at)) = &self.consequence {
                if at.elapsed() >= ROOT_CAUSE_GRACE {
                    return Err(f.clone());
                }
            }
            match self.events.recv_timeout(Duration::from_millis(50)) {
                Ok((w, event)) => self.on_event(w, event)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(JobFailure::AllSocketsClosed),
            }
            self.check_workers()?;
            self.observe();
        }
        // Every task ended; a consequence no cause came for is the failure.
        self.consequence.take().map_or(Ok(()), |(f, _)| Err(f))
    }

    fn on_event(&mut self, w: usize, event: ReaderEvent) -> std::result::Result<(), JobFailure> {
        match event {
            ReaderEvent::Msg(msg) => self.on_message(w, msg),
            ReaderEvent::Malformed(error) => {
                self.workers.0[w].closed = true;
                // The worker may still be running: the guard cancels, then kills it.
                Err(JobFailure::Malformed { worker: self.workers.0[w].id(), error })
            }
            ReaderEvent::Closed => {
                self.workers.0[w].closed = true;
                if self.tasks.left_on(w) {
                    return Err(closed_early(&mut self.workers.0[w]));
                }
                Ok(())
            }
        }
    }

    fn on_message(&mut self, w: usize, msg: FromWorker) -> std::result::Result<(), JobFailure> {
        let worker = self.workers.0[w].id();
        match msg {
            FromWorker::Hello { token, job, graph, .. } => self.hello(w, &token, &job, &graph)?,
            FromWorker::Heartbeat => {}
            FromWorker::TaskRunning { vertex, subtask, metrics_slot } => {
                self.report(worker, (vertex, subtask), Reported::Running, None)?;
                self.metrics_slots.insert((vertex, subtask), metrics_slot);
            }
            FromWorker::PartitionConsumable { .. } => self.consumable += 1,
            FromWorker::TaskFinished { vertex, subtask, accumulators } => {
                self.report(worker, (vertex, subtask), Reported::Finished, None)?;
                super::accumulators::merge_into(&mut self.accumulators, accumulators);
            }
            FromWorker::TaskFailed { vertex, subtask, error, symptom } => {
                self.report(worker, (vertex, subtask), Reported::Failed, Some(&error))?;
                let task = task_label(self.job, vertex, subtask);
                let failure = JobFailure::Task { task, worker, error, symptom };
                if !symptom {
                    return Err(failure);
                }
                // A consequence: the cause may still be on its way from another worker.
                // Reported if none comes.
                self.consequence.get_or_insert_with(|| (failure, Instant::now()));
            }
        }
        Ok(())
    }

    /// Records `worker`'s report on `task`, or fails the job for a report that is not its
    /// to make (`error`: the error it reported with it).
    fn report(
        &mut self,
        worker: WorkerId,
        task: (usize, u32),
        reported: Reported,
        error: Option<&str>,
    ) -> std::result::Result<(), JobFailure> {
        let report = if reported == Reported::Running { Report::Running } else { Report::Ended };
        self.tasks.report(worker.slot, task, report).map_err(|why| JobFailure::Protocol {
            worker,
            task: task_label(self.job, task.0, task.1),
            reported,
            why: match error {
                Some(e) => format!("{why} (its error: {e})"),
                None => why,
            },
        })
    }

    /// Exits of workers with tasks, stop signals and silent workers.
    fn check_workers(&mut self) -> std::result::Result<(), JobFailure> {
        for w in &mut self.workers.0 {
            if let Some(Ok(Some(status))) = w.child.as_mut().map(Child::try_wait) {
                if !status.success() && self.tasks.left_on(w.slot as usize) {
                    return Err(JobFailure::Exited { worker: w.id(), status, running: true });
                }
            }
        }
        if let Some(signal) = crate::sync::stop_signal() {
            return Err(JobFailure::Stopped { signal });
        }
        let now = Instant::now();
        let timeout = self.config.heartbeat_timeout;
        if now.saturating_duration_since(self.last_turn) > (timeout / 2).max(Duration::from_secs(1)) {
            // This process itself was stopped or starved: what it did not hear meanwhile is
            // not the workers' fault.
            for w in &self.workers.0 {
                w.heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = now;
            }
        }
        self.last_turn = now;
        for w in self.workers.0.iter_mut().filter(|w| !w.closed) {
            let (at, any) = *w.heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if now.saturating_duration_since(at) > timeout {
                // Declared dead: killed now, so that stopping the workers (which gives the
                // others a grace to exit) does not wait for one that will not answer, and
                // the error comes at the timeout.
                if let Some(c) = w.child.as_mut() {
                    let _ = c.kill();
                }
                return Err(JobFailure::Silent { worker: w.id(), timeout, first: !any });
            }
        }
        Ok(())
    }

    /// Samples segments in flight (every 100 ms) and updates the progress display.
    fn observe(&mut self) {
        if self.last_sample.elapsed() >= Duration::from_millis(100) {
            self.last_sample = Instant::now();
            sample_in_flight(&self.graph, &self.manager, &self.arena, &mut self.max_in_flight);
        }
        if let Some(p) = self.progress.as_mut().filter(|p| p.due()) {
            let snaps =
                self.metrics_slots.iter().filter_map(|(&k, &s)| Some((k, task_snapshot(&self.arena, s)?))).collect();
            p.update(snaps, self.tasks.left());
        }
    }

    /// Finish: on success waits for the workers to exit and summarizes the job; on failure
    /// (or a stop signal, which outranks what it caused) stops the workers and reports it.
    fn finish(mut self, outcome: std::result::Result<(), JobFailure>) -> Result<JobSummary> {
        if let Some(p) = self.progress.as_mut() {
            p.finish();
        }
        if let Some(signal) = crate::sync::stop_signal() {
            // Workers killed by the same Ctrl-C report what the signal caused.
            return Err(Error::Interrupted { signal });
        }
        // On a failure, dropping `self` cancels the workers, gives them a moment, then kills
        // and reaps them; the arena goes with the last mapping.
        outcome?;
        self.wait_for_exits()?;
        let elapsed = self.start.elapsed().as_secs_f64();
        sample_in_flight(&self.graph, &self.manager, &self.arena, &mut self.max_in_flight);
        let mut summary = summarize(
            self.job,
            &self.graph,
            &self.arena,
            &self.metrics_slots,
            &self.max_in_flight,
            elapsed,
            self.config,
            self.consumable,
        );
        drop(self.workers);
        let report = crate::memory::check::check(&self.arena);
        summary.arena_segments = report.segments;
        summary.arena_free_after = report.free_walked;
        summary.arena_problems = report.problems;
        summary.accumulators = self.accumulators;
        Ok(summary)
    }

    /// Every task finished: lets the workers exit on their own (bounded).
    ///
    /// Polled from 100 us, doubling to 5 ms: a worker exits a fraction of a millisecond
    /// after its last task reported, and a fixed 5 ms poll (as before) added 2.5 ms on
    /// average to every job's time (the end of [`JobSummary::elapsed_s`]).
    fn wait_for_exits(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_micros(100);
        for w in &mut self.workers.0 {
            let Some(c) = w.child.as_mut() else { continue };
            loop {
                if let Some(signal) = crate::sync::stop_signal() {
                    // A Ctrl-C now also hit the workers: it is the cause of their exits.
                    return Err(Error::Interrupted { signal });
                }
                match c.try_wait() {
                    Ok(Some(status)) if !status.success() => {
                        let worker = WorkerId { slot: w.slot as usize, pid: w.pid };
                        return Err(JobFailure::Exited { worker, status, running: false }.into());
                    }
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => break,
                    _ => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(5));
                    }
                }
            }
        }
        Ok(())
    }
}

/// How workers are started: this executable with the job's arguments, the arena fd, a
/// control socket and the job's environment.
struct Launcher<'a> {
    exe: std::path::PathBuf,
    args: Vec<std::ffi::OsString>,
    arena: &'a Arena,
    blocking_dir: Option<&'a BlockingDir>,
    interval_ms: String,
    token: &'a str,
}

impl<'a> Launcher<'a> {
    fn new(
        config: &'a RuntimeConfig,
        arena: &'a Arena,
        blocking_dir: Option<&'a BlockingDir>,
        token: &'a str,
    ) -> Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().map_err(io("finding the current executable"))?,
            args: config.worker_args.clone().unwrap_or_else(|| std::env::args_os().skip(1).collect()),
            arena,
            blocking_dir,
            interval_ms: config.heartbeat_interval().as_millis().max(1).to_string(),
            token,
        })
    }

    /// Starts worker `w` into `workers` (whose guard stops it whatever happens next), and a
    /// thread that passes what it sends on to `tx`.
    fn start(&self, w: u32, tx: &mpsc::Sender<(usize, ReaderEvent)>, workers: &mut Workers) -> Result<()> {
        let (mine, theirs) = UnixStream::pair().map_err(io("creating a control socket"))?;
        mine.set_write_timeout(Some(WRITE_SLICE)).map_err(io("setting a control socket's write timeout"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(Stdio::null());
        let fd = theirs.as_raw_fd();
        cmd.env(CONTROL_FD_ENV, fd.to_string())
            .env(HEARTBEAT_INTERVAL_ENV, &self.interval_ms)
            .env(RUN_TOKEN_ENV, self.token);
        self.arena.inherit_fd_into(&mut cmd)?;
        if let Some(d) = self.blocking_dir {
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
        let reader = BufReader::new(mine.try_clone().map_err(io("cloning a control socket"))?);
        let heard: Heard = Arc::new(Mutex::new((Instant::now(), false)));
        let (tx, heard_w) = (tx.clone(), heard.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("control-{w}"))
            .spawn(move || read_worker(w as usize, reader, &heard_w, &tx));
        // Kept (and so killed and reaped) even if its reader could not start.
        workers.0.push(Worker { slot: w, child: Some(child), sock: mine, pid, heard, closed: false, broken: false });
        spawned.map_err(io("starting a control socket reader"))?;
        Ok(())
    }
}

/// A worker's reader thread: passes on each message (a heartbeat only refreshes `heard`)
/// until the socket closes, a line does not parse or the coordinator is gone.
fn read_worker(
    idx: usize,
    mut reader: BufReader<UnixStream>,
    heard: &Mutex<(Instant, bool)>,
    tx: &mpsc::Sender<(usize, ReaderEvent)>,
) {
    loop {
        let event = match recv::<FromWorker>(&mut reader) {
            Ok(Some(m)) => {
                // Any message shows the worker is alive.
                *heard.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = (Instant::now(), true);
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
        if tx.send((idx, event)).is_err() || last {
            break;
        }
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
