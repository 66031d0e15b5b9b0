//! The TaskExecutor: a worker process that attaches to the arena, receives its subtasks over
//! the control socket and runs each on its own thread. A thread of its own sends the
//! coordinator a heartbeat every heartbeat interval, busy tasks or not.

use super::config::RuntimeConfig;
use super::cosched::{Passenger, TaskSteps, Turn};
use super::execution::{TaskEvent, TaskIo, TaskSettings};
use super::job::JobGraph;
use super::protocol::{
    recv, send, FromWorker, SubtaskSpec, ToWorker, CONTROL_FD_ENV, HEARTBEAT_INTERVAL_ENV, RUN_TOKEN_ENV,
};
use crate::error::GraphError;
use crate::error::{ConfigError, Error, Result};
use crate::metrics::TaskMetricsHandle;
use crate::sync::{AtomicBool, Ordering};
use crate::ShuffleEnvironment;
use std::cell::Cell;
use std::io::BufReader;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the coordinator's `spec` cannot be run by this job, if it cannot: a vertex this
/// graph does not have, or has under another name, parallelism or kind (a source, a vertex
/// with an input, one with an output), as when `main` builds its graph from something that
/// differs between the coordinator and its workers (see [`super::run`]).
fn check_spec(job: &JobGraph, spec: &SubtaskSpec) -> Option<String> {
    let Some(v) = job.vertices.get(spec.vertex) else {
        return Some(format!("vertex {} is out of range: the job has {} vertices", spec.vertex, job.vertices.len()));
    };
    let differs = "the worker built another graph than the coordinator (run re-runs this binary's main \
                   with the same arguments: the graph must not depend on anything else)";
    if spec.name != v.name {
        return Some(format!(
            "vertex {} is {:?} in the coordinator's graph but {:?} here: {differs}",
            spec.vertex, spec.name, v.name
        ));
    }
    let kind = |has_input: bool, has_output: bool| match (has_input, has_output) {
        (false, _) => "a source",
        (true, true) => "a vertex with an input and an output",
        (true, false) => "a sink vertex",
    };
    let has_output = job.vertices.iter().any(|c| c.inputs.iter().any(|&(u, _)| u == spec.vertex));
    let (theirs, ours) = (kind(spec.input.is_some(), spec.output.is_some()), kind(!v.inputs.is_empty(), has_output));
    if theirs != ours {
        return Some(format!(
            "vertex {} ({}) is {theirs} in the coordinator's graph but {ours} here: {differs}",
            spec.vertex, v.name
        ));
    }
    if spec.parallelism == 0 || spec.parallelism != v.parallelism {
        return Some(format!(
            "vertex {} ({}) was deployed with parallelism {}, but its parallelism is {}",
            spec.vertex, v.name, spec.parallelism, v.parallelism
        ));
    }
    if spec.subtask >= spec.parallelism {
        return Some(format!(
            "subtask {} of vertex {} ({}) is out of range: its parallelism is {}",
            spec.subtask, spec.vertex, v.name, spec.parallelism
        ));
    }
    None
}

/// Whether this process was started as a worker by a coordinator: `SHMFLOW_CONTROL_FD` names
/// an open Unix socket whose other end belongs to this process's parent (the coordinator
/// that created the pair and started us). A variable inherited further down (a command a
/// task runs, a shell that exported it) names no such socket, and that process is no
/// worker. A socket made by a process that is gone counts as a coordinator's that died (the
/// worker then says so instead of running the job as a coordinator of its own). Decided
/// once per process.
pub fn is_worker() -> bool {
    static IS_WORKER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IS_WORKER.get_or_init(|| {
        let Some(peer) = std::env::var(CONTROL_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()).and_then(socket_peer)
        else {
            return false;
        };
        // Our parent made the socket: its worker. Or the one who made it is gone already
        // (a worker whose coordinator died while it started): still a worker, which then
        // says the coordinator died, rather than running the job again as a coordinator.
        // SAFETY: getppid has no preconditions and cannot fail.
        peer == unsafe { libc::getppid() } || !process_lives(peer)
    })
}

/// The pid of the process that made the Unix socket `fd` (its peer), if `fd` is one.
fn socket_peer(fd: i32) -> Option<libc::pid_t> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a valid ucred; on a
    // descriptor that is not an open socket it fails and writes nothing.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

/// In a worker: [`Error::CoordinatorDied`] if the coordinator that started it is gone
/// already (a worker checks before it does anything else; later it notices its control
/// socket closing).
///
/// # Errors
/// [`Error::CoordinatorDied`].
pub fn check_coordinator() -> Result<()> {
    let peer = std::env::var(CONTROL_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()).and_then(socket_peer);
    match peer {
        Some(p) if !process_lives(p) => Err(Error::CoordinatorDied { pid: p as u32 }),
        _ => Ok(()),
    }
}

/// Whether process `pid` exists and is not a zombie.
fn process_lives(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 sends nothing: kill only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')'.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
        .is_none_or(|state| state != 'Z' && state != 'X')
}

fn io_err(op: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io { op: op.to_string(), source: e }
}

/// [`io_err`], but a control socket the coordinator's end of which went away (reset, broken
/// pipe, cut short) is [`Error::CoordinatorDied`]: "Connection reset by peer" told a user
/// nothing about what happened.
fn gone_or(coordinator: u32, op: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    move |e| match e.kind() {
        BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof => Error::CoordinatorDied { pid: coordinator },
        _ => io_err(op)(e),
    }
}

/// The worker's end of the control socket, shared by the tasks, the heartbeat and the
/// event threads (one message at a time).
type Control = Arc<Mutex<UnixStream>>;

/// Sends `msg` to the coordinator; a failure is left to the control thread, which sees the
/// socket close.
fn tell(control: &Control, msg: &FromWorker) {
    let _ = send(&mut *control.lock().unwrap_or_else(std::sync::PoisonError::into_inner), msg);
}

/// Runs the worker side: attach, receive the deployment, run the subtasks, report.
///
/// # Errors
/// A missing or bad control fd or arena, a control socket an earlier call in this process
/// took already, or a broken control socket. Task failures are reported to the
/// coordinator, and make this return an error too.
pub fn run_worker(job: &JobGraph, config: &RuntimeConfig) -> Result<()> {
    match run_worker_once(job, config)? {
        true => Ok(()),
        false => Err(ConfigError::Conflict {
            what: "worker start",
            detail: "this worker ran a job already: a worker runs the first run it reaches".into(),
        }
        .into()),
    }
}

/// [`run_worker`], or `Ok(false)` without doing anything when an earlier (or concurrent)
/// call in this process took the control socket: a worker runs the first `run` it reaches.
pub(crate) fn run_worker_once(job: &JobGraph, config: &RuntimeConfig) -> Result<bool> {
    // The coordinator: this process's parent, asked first (once it dies, getppid names
    // whoever adopted us).
    // SAFETY: getppid has no preconditions and cannot fail.
    let coordinator = unsafe { libc::getppid() } as u32;
    let Some(sock) = control_socket()? else {
        return Ok(false);
    };
    let mut reader = BufReader::new(sock.try_clone().map_err(io_err("cloning the control socket"))?);
    let control: Control = Arc::new(Mutex::new(sock));
    let arena = Arc::new(crate::memory::Arena::attach_inherited()?);
    let hello = FromWorker::Hello {
        pid: std::process::id(),
        token: std::env::var(RUN_TOKEN_ENV).unwrap_or_default(),
        job: job.name.clone(),
        graph: job.shape(),
    };
    send(&mut *control.lock().expect("control socket"), &hello)
        .map_err(gone_or(coordinator, "writing to the coordinator"))?;
    start_heartbeats(&control, config)?;
    // Refused (another job's worker) or cancelled before the deployment: the coordinator
    // reports why.
    let (worker, subtasks) =
        match recv::<ToWorker>(&mut reader).map_err(gone_or(coordinator, "reading the deployment"))? {
            Some(ToWorker::Deploy { worker, subtasks }) => (worker, subtasks),
            Some(ToWorker::Cancel) => return Err(Error::Cancelled),
            None => return Err(Error::CoordinatorDied { pid: coordinator }),
        };
    let cancel = Arc::new(AtomicBool::new(false));
    // Set once this worker's tasks have ended (or never started): the control thread's
    // backstop then leaves the process to end on its own.
    let ended = Arc::new(AtomicBool::new(false));
    let stopped = watch_coordinator(reader, coordinator, &cancel, &ended)?;
    // A bad deployment is refused as a whole, before any task starts; the coordinator
    // reports it (and cancels us), so the worker's `run` stays quiet like after any other
    // task failure.
    if let Some((spec, why)) = subtasks.iter().find_map(|s| Some((s, check_spec(job, s)?))) {
        let error = format!("bad deployment: {why}");
        tell(&control, &FromWorker::TaskFailed { vertex: spec.vertex, subtask: spec.subtask, error, symptom: false });
        // Release: pairs with the backstop's Acquire load (no task runs).
        ended.store(true, Ordering::Release);
        return await_verdict(&stopped, Some(GraphError::Deployment(why).into())).map(|()| true);
    }
    // Tasks that outnumber the CPUs take turns on them: a reader that evicted the segments
    // it read would push out the lines its own core's producer writes next.
    let tasks: u64 = job.vertices.iter().map(|v| u64::from(v.parallelism)).sum();
    if tasks > std::thread::available_parallelism().map_or(1, |n| n.get() as u64) {
        crate::sync::set_evict_segments(false);
    }
    let env = ShuffleEnvironment::new(arena.clone(), worker);
    let settings = config.task_settings();
    install_panic_hook();
    let mut handles = Vec::new();
    let mut first_err = None;
    for (spec, passengers) in thread_plan(job, subtasks, config.co_schedule) {
        let (vertex, subtask) = (spec.vertex, spec.subtask);
        let task =
            Task { job: job.clone(), env: env.clone(), cancel: cancel.clone(), control: control.clone(), settings };
        let spawned = std::thread::Builder::new()
            .name(format!("{vertex}-{subtask}"))
            .spawn(move || task.run_slice(spec, passengers))
            .map_err(io_err("starting a task thread"));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Relaxed: a stop request for the tasks already started.
                cancel.store(true, Ordering::Relaxed);
                tell(&control, &FromWorker::TaskFailed { vertex, subtask, error: e.to_string(), symptom: false });
                first_err = Some(e);
                break;
            }
        }
    }
    // Task failures were reported to the coordinator, which reports the job's error: the
    // worker itself ends quietly (run() returns Ok(None) after a Cancel), so a job
    // binary's `main` prints one error (the coordinator's), not one per worker.
    let mut failed = false;
    for h in handles {
        failed |= !matches!(h.join(), Ok(Ok(())));
    }
    // Release: pairs with the backstop's Acquire load in `watch_coordinator`.
    ended.store(true, Ordering::Release);
    if first_err.is_none() && !failed {
        return Ok(true);
    }
    await_verdict(&stopped, first_err).map(|()| true)
}

/// The control socket this worker inherited, checked and made close-on-exec; `None` if an
/// earlier call took it (it owns, and may have closed, the fd: a second owner of one fd
/// closes it twice, which Rust's I/O safety check aborts the process for).
fn control_socket() -> Result<Option<UnixStream>> {
    static TAKEN: Mutex<bool> = Mutex::new(false);
    if std::mem::replace(&mut *TAKEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner), true) {
        return Ok(None);
    }
    let raw: i32 = std::env::var(CONTROL_FD_ENV).ok().and_then(|v| v.parse().ok()).ok_or_else(|| {
        ConfigError::Conflict { what: "worker start", detail: format!("{CONTROL_FD_ENV} is not an fd number") }
    })?;
    // SAFETY: fcntl(F_GETFD) on any integer is harmless; it fails for a closed fd.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(ConfigError::Conflict {
            what: "worker start",
            detail: format!("{CONTROL_FD_ENV}={raw} is not open"),
        }
        .into());
    }
    check_coordinator()?;
    // Not inherited by the commands tasks run (they are no workers).
    // SAFETY: fcntl on an open fd; FD_CLOEXEC is its only descriptor flag.
    unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the fd is open and was passed to this process to own; TAKEN makes this the
    // only owner this process ever makes of it.
    Ok(Some(unsafe { UnixStream::from_raw_fd(raw) }))
}

/// Heartbeats, from a thread of their own so busy tasks do not hold them up; they end with
/// the process (or when the coordinator is gone).
fn start_heartbeats(control: &Control, config: &RuntimeConfig) -> Result<()> {
    let interval = std::env::var(HEARTBEAT_INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or_else(|| config.heartbeat_interval(), Duration::from_millis)
        .max(Duration::from_millis(1));
    let control = control.clone();
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let mut w = control.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if send(&mut *w, &FromWorker::Heartbeat).is_err() {
                break;
            }
        })
        .map_err(io_err("starting the heartbeat thread"))?;
    Ok(())
}

/// Why the coordinator stopped us, once it did: a Cancel (the job failed elsewhere or was
/// interrupted, and the coordinator reports it) or the socket closing (it died).
type Stopped = Arc<Mutex<Option<Error>>>;

/// How long a worker whose coordinator died gives its tasks to stop on the cancel flag
/// before the control thread ends the process ([`watch_coordinator`]).
const ORPHAN_GRACE: Duration = Duration::from_secs(3);

/// The exit status of a worker ended by that backstop.
const ORPHAN_EXIT_CODE: i32 = 70;

/// Reads the control socket after the deployment on a thread of its own: a Cancel or the
/// coordinator's death sets `cancel` for every task and is kept as the verdict.
/// If the coordinator died and the tasks have not ended (`ended`) [`ORPHAN_GRACE`] later,
/// it says so on stderr and ends the process with [`ORPHAN_EXIT_CODE`].
fn watch_coordinator(
    mut reader: BufReader<UnixStream>,
    coordinator: u32,
    cancel: &Arc<AtomicBool>,
    ended: &Arc<AtomicBool>,
) -> Result<Stopped> {
    let stopped: Stopped = Arc::new(Mutex::new(None));
    let (cancel, verdict, ended) = (cancel.clone(), stopped.clone(), ended.clone());
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let why = loop {
                match recv::<ToWorker>(&mut reader) {
                    Ok(Some(ToWorker::Deploy { .. })) => {}
                    Ok(Some(ToWorker::Cancel)) => break Error::Cancelled,
                    Ok(None) | Err(_) => break Error::CoordinatorDied { pid: coordinator },
                }
            };
            let died = matches!(why, Error::CoordinatorDied { .. });
            *verdict.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            // Relaxed: a stop request, polled by every task.
            cancel.store(true, Ordering::Relaxed);
            if died {
                // The backstop: a task that does not reach a cancellation check (a user
                // function busy for long, a sink working through a batch record by record)
                // would keep an orphaned worker running. Nobody is left to report to; the
                // process normally ends long before this sleep does.
                std::thread::sleep(ORPHAN_GRACE);
                // Acquire: pairs with the Release store after the tasks were joined.
                if ended.load(Ordering::Acquire) {
                    return;
                }
                eprintln!(
                    "shmflow worker {}: {}; its tasks did not stop within {} s of it: exiting",
                    std::process::id(),
                    Error::CoordinatorDied { pid: coordinator },
                    ORPHAN_GRACE.as_secs()
                );
                std::process::exit(ORPHAN_EXIT_CODE);
            }
        })
        .map_err(io_err("starting the control thread"))?;
    Ok(stopped)
}

/// After a failure: stopped by the coordinator, what the tasks saw then (a consumer gone,
/// ...) is a consequence; the coordinator's Cancel (quiet: it reports) or its death (said by
/// every worker, as nobody else can) is the cause. A task may see the consequence (its
/// consumer in another worker stopped) before the Cancel arrives: the coordinator's verdict
/// is awaited a moment (bounded).
fn await_verdict(stopped: &Stopped, first_err: Option<Error>) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(why) = stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            return Err(why);
        }
        if std::time::Instant::now() >= deadline {
            // No verdict: the failures were reported, the coordinator says the rest.
            return first_err.map_or(Ok(()), Err);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The CPUs the calling thread may run on, in ascending order (empty if the set cannot be
/// read).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads one bit of `set`; every index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Pins the calling thread to the `index`-th CPU (modulo their count) of the set it may run
/// on ([`RuntimeConfig::pin_cpus`](super::RuntimeConfig::pin_cpus)); leaves it unpinned if
/// the set cannot be read or changed.
fn pin_thread(index: u32) {
    let allowed = allowed_cpus();
    let Some(&cpu) = allowed.get(index as usize % allowed.len().max(1)) else {
        return;
    };
    // SAFETY: as in allowed_cpus: the empty set.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from allowed_cpus, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut one) };
    // SAFETY: `one` is a valid cpu_set_t of the size passed; pid 0 is the calling thread. A
    // failure leaves the thread's affinity as it was.
    let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) };
}

/// The worker's threads: each runs a task, and co-scheduled (`co_schedule`) the task's
/// passengers: the other tasks of its pipeline slice (its subtask index) that can run in
/// turns, sinks fed by an exchange (an input, no output, a [`JobVertex::steps`]
/// body). A slice's first other task drives its thread (topological order: its source);
/// a slice of sinks only is driven by its first sink. Further tasks with an output in a
/// slice run on threads of their own (a passenger never waits, and only a task without
/// an output can promise that).
///
/// [`JobVertex::steps`]: super::JobVertex::steps
fn thread_plan(job: &JobGraph, subtasks: Vec<SubtaskSpec>, co_schedule: bool) -> Vec<(SubtaskSpec, Vec<SubtaskSpec>)> {
    if !co_schedule {
        return subtasks.into_iter().map(|s| (s, Vec::new())).collect();
    }
    let mut slices: std::collections::BTreeMap<u32, Vec<SubtaskSpec>> = std::collections::BTreeMap::new();
    for s in subtasks {
        slices.entry(s.subtask).or_default().push(s);
    }
    let mut plan = Vec::new();
    for (_, slice) in slices {
        let rides = |s: &SubtaskSpec| s.input.is_some() && s.output.is_none() && job.vertices[s.vertex].steps.is_some();
        let (mut passengers, mut drivers): (Vec<_>, Vec<_>) = slice.into_iter().partition(rides);
        if drivers.is_empty() {
            drivers.push(passengers.remove(0));
        }
        let mut drivers = drivers.into_iter();
        if let Some(first) = drivers.next() {
            plan.push((first, passengers));
        }
        plan.extend(drivers.map(|s| (s, Vec::new())));
    }
    plan
}

/// What a task thread needs from its worker.
#[derive(Clone)]
struct Task {
    job: JobGraph,
    env: ShuffleEnvironment,
    cancel: Arc<AtomicBool>,
    control: Control,
    settings: TaskSettings,
}

impl Task {
    /// Runs subtask `spec` on this thread, its `passengers` in turns in its waits and after
    /// it ended (see [`super::cosched`]), and reports how each ended: an error if any failed.
    fn run_slice(self, spec: SubtaskSpec, passengers: Vec<SubtaskSpec>) -> std::result::Result<(), TaskError> {
        if passengers.is_empty() {
            return self.run(spec);
        }
        // (`run` pins the thread, for the passengers' turns too.)
        let failed = Rc::new(Cell::new(false));
        let riders = passengers.into_iter().map(|p| Box::new(self.board(p, &failed)) as Box<dyn Passenger>).collect();
        super::cosched::board(riders);
        let r = self.run(spec);
        super::cosched::run_to_end();
        match r {
            Ok(()) if failed.get() => Err(TaskError { message: "a co-scheduled task failed".into(), symptom: true }),
            r => r,
        }
    }

    /// Runs subtask `spec` on this thread and reports how it ended.
    fn run(self, spec: SubtaskSpec) -> std::result::Result<(), TaskError> {
        let (vertex, subtask) = (spec.vertex, spec.subtask);
        if self.settings.pin_cpus {
            pin_thread(subtask);
        }
        let metrics = self.announce(vertex, subtask);
        let r = self.run_body(spec, metrics.clone());
        self.report(vertex, subtask, metrics.as_ref(), &r, super::accumulators::take());
        r
    }

    /// Claims the task's block of counters and tells the coordinator it runs.
    fn announce(&self, vertex: usize, subtask: u32) -> Option<TaskMetricsHandle> {
        let metrics = TaskMetricsHandle::claim(self.env.arena().clone(), self.env.worker()).ok();
        if let Some(m) = &metrics {
            m.set_identity(vertex as u32, subtask);
            tell(&self.control, &FromWorker::TaskRunning { vertex, subtask, metrics_slot: m.slot() });
        }
        metrics
    }

    /// Tells the coordinator how the task ended (a failure also cancels the worker's other
    /// tasks).
    fn report(
        &self,
        vertex: usize,
        subtask: u32,
        metrics: Option<&TaskMetricsHandle>,
        r: &std::result::Result<(), TaskError>,
        accumulators: super::accumulators::Accumulators,
    ) {
        if let Some(m) = metrics {
            m.end(r.is_err());
        }
        let msg = match r {
            Ok(()) => FromWorker::TaskFinished { vertex, subtask, accumulators },
            Err(e) => {
                // Relaxed: a stop request for the other tasks of this worker.
                self.cancel.store(true, Ordering::Relaxed);
                FromWorker::TaskFailed { vertex, subtask, error: e.message.clone(), symptom: e.symptom }
            }
        };
        tell(&self.control, &msg);
    }

    /// The subtask's I/O; its "partition consumable" events are forwarded from a thread of
    /// their own (it ends once the I/O is dropped).
    fn open_io(
        &self,
        spec: SubtaskSpec,
        metrics: Option<TaskMetricsHandle>,
    ) -> std::result::Result<(TaskIo, std::thread::JoinHandle<()>), TaskError> {
        let (vertex, subtask) = (spec.vertex, spec.subtask);
        let (tx, rx) = std::sync::mpsc::channel();
        let control = self.control.clone();
        let forward = std::thread::Builder::new()
            .name(format!("{vertex}-{subtask}-events"))
            .spawn(move || {
                while let Ok(TaskEvent::PartitionConsumable(p)) = rx.recv() {
                    tell(&control, &FromWorker::PartitionConsumable { partition: p });
                }
            })
            .map_err(|e| TaskError::from(Error::Io { op: "starting a task's event thread".into(), source: e }))?;
        Ok((TaskIo::new(self.env.clone(), spec, self.settings, self.cancel.clone(), metrics, tx), forward))
    }

    /// The vertex's body over the subtask's I/O, a panic caught as a failure.
    fn run_body(&self, spec: SubtaskSpec, metrics: Option<TaskMetricsHandle>) -> std::result::Result<(), TaskError> {
        let vertex = spec.vertex;
        let (mut io, forward) = self.open_io(spec, metrics)?;
        let info = self.job.task_info(io.spec());
        let body = self.job.vertices[vertex].body.clone();
        let _ = super::accumulators::take();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&info, &mut io)));
        drop(io);
        let _ = forward.join();
        match r {
            Ok(r) => r.map_err(TaskError::from),
            Err(p) => Err(TaskError::panicked(p.as_ref())),
        }
    }

    /// Subtask `spec` as a passenger of this thread: announced now, run in turns; a
    /// failure (also one to start it) sets `failed`.
    fn board(&self, spec: SubtaskSpec, failed: &Rc<Cell<bool>>) -> Rider {
        let (vertex, subtask) = (spec.vertex, spec.subtask);
        let metrics = self.announce(vertex, subtask);
        let mut rider = Rider {
            task: self.clone(),
            vertex,
            subtask,
            steps: None,
            forward: None,
            metrics: metrics.clone(),
            accumulators: Default::default(),
            failed: failed.clone(),
        };
        let started = self.open_io(spec, metrics).and_then(|(io, forward)| {
            rider.forward = Some(forward);
            let info = self.job.task_info(io.spec());
            let Some(steps) = self.job.vertices[vertex].steps.clone() else {
                return Err(TaskError { message: format!("{} cannot run in turns", info.vertex_name), symptom: false });
            };
            rider.with_accumulators(|| {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| steps(&info, io))) {
                    Ok(r) => r.map_err(TaskError::from),
                    Err(p) => Err(TaskError::panicked(p.as_ref())),
                }
            })
        });
        match started {
            Ok(steps) => rider.steps = Some(steps),
            Err(e) => rider.end(Err(e)),
        }
        rider
    }
}

/// A passenger task (see [`super::cosched`]) as its worker runs it.
struct Rider {
    task: Task,
    vertex: usize,
    subtask: u32,
    /// `None` once it ended.
    steps: Option<Box<dyn TaskSteps>>,
    forward: Option<std::thread::JoinHandle<()>>,
    metrics: Option<TaskMetricsHandle>,
    /// Its accumulators, swapped in for its turns.
    accumulators: super::accumulators::Accumulators,
    /// Set when it failed.
    failed: Rc<Cell<bool>>,
}

impl Rider {
    /// Runs `f` with this task's accumulators in place of the thread's driver's.
    fn with_accumulators<R>(&mut self, f: impl FnOnce() -> R) -> R {
        super::accumulators::swap(&mut self.accumulators);
        let r = f();
        super::accumulators::swap(&mut self.accumulators);
        r
    }

    /// The task ended: its I/O closed, then reported.
    fn end(&mut self, r: std::result::Result<(), TaskError>) {
        self.steps = None;
        if let Some(f) = self.forward.take() {
            let _ = f.join();
        }
        if r.is_err() {
            self.failed.set(true);
        }
        let accumulators = std::mem::take(&mut self.accumulators);
        self.task.report(self.vertex, self.subtask, self.metrics.as_ref(), &r, accumulators);
    }
}

impl Passenger for Rider {
    fn turn(&mut self) -> Turn {
        let Some(mut steps) = self.steps.take() else {
            return Turn::Ended;
        };
        let r = self.with_accumulators(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| steps.step())));
        let ended = match r {
            Ok(Ok(Turn::Ended)) => Ok(()),
            Ok(Ok(turn)) => {
                self.steps = Some(steps);
                return turn;
            }
            Ok(Err(e)) => Err(TaskError::from(e)),
            Err(p) => Err(TaskError::panicked(p.as_ref())),
        };
        drop(steps);
        self.end(ended);
        Turn::Ended
    }
}

/// Why a task failed, as the coordinator is told.
#[derive(Debug)]
struct TaskError {
    message: String,
    /// A consequence of a failure elsewhere (see [`is_symptom`]).
    symptom: bool,
}

impl From<Error> for TaskError {
    fn from(e: Error) -> Self {
        TaskError { symptom: is_symptom(&e), message: e.to_string() }
    }
}

impl TaskError {
    /// A panic of the task's code: its message and where it happened (recorded by the
    /// panic hook [`install_panic_hook`] sets).
    fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("(a panic payload that is not a string)");
        let at = PANIC_LOCATION.with(|l| l.borrow_mut().take());
        let message = match at {
            Some(at) => format!("panicked at {at}: {msg}"),
            None => format!("panicked: {msg}"),
        };
        TaskError { message, symptom: false }
    }
}

/// Whether `e` is a consequence of a failure elsewhere in the job rather than a cause: a
/// cancellation, a consumer that went away or a producer that failed.
pub(crate) fn is_symptom(e: &Error) -> bool {
    matches!(
        e,
        Error::Cancelled | Error::ConsumerGone { .. } | Error::ProducerFailed { .. } | Error::PartitionFailed(_)
    )
}

thread_local! {
    /// Where the last panic on this thread happened (`file:line:column`).
    static PANIC_LOCATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records each panic's location for [`TaskError::panicked`], then runs the hook that was
/// installed before (which prints it to stderr as usual). Installed once per process.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(l) = info.location() {
                let at = format!("{}:{}:{}", l.file(), l.line(), l.column());
                PANIC_LOCATION.with(|p| *p.borrow_mut() = Some(at));
            }
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::{allowed_cpus, gone_or, pin_thread, thread_plan};
    use crate::Error;

    #[test]
    fn a_co_scheduled_slice_carries_its_sinks_on_the_thread_of_its_source() {
        use crate::runtime::{Collector, ExecutionGraph, JobBuilder, TaskInfo};
        struct Discard;
        impl Collector<u64> for Discard {
            fn collect(&mut self, _: u64) -> crate::Result<()> {
                Ok(())
            }
        }
        let job = JobBuilder::new("plan", 2)
            .source("s", |_: &TaskInfo, _: &mut dyn Collector<u64>| Ok(()))
            .rebalance(None)
            .map("m", |v: u64| v)
            .rebalance(None)
            .sink("k", |_: &TaskInfo| Ok(Discard));
        let specs = ExecutionGraph::build(&job, 0).unwrap().subtasks;
        type Plan = Vec<((usize, u32), Vec<(usize, u32)>)>;
        let plan = |specs: Vec<_>, co| -> Plan {
            thread_plan(&job, specs, co)
                .into_iter()
                .map(|(d, p)| ((d.vertex, d.subtask), p.iter().map(|s| (s.vertex, s.subtask)).collect()))
                .collect()
        };
        // Off: a thread per task.
        let off = plan(specs.clone(), false);
        assert_eq!(off.len(), 6);
        assert!(off.iter().all(|(_, p)| p.is_empty()), "{off:?}");
        // On: per slice, the source drives and the sink rides; the map vertex (it has an
        // output, so it may wait) keeps a thread of its own.
        let on = vec![((0, 0), vec![(2, 0)]), ((1, 0), vec![]), ((0, 1), vec![(2, 1)]), ((1, 1), vec![])];
        assert_eq!(plan(specs.clone(), true), on);
        // A worker with sinks only: each slice's sink drives its own thread.
        let sinks: Vec<_> = specs.into_iter().filter(|s| s.vertex == 2).collect();
        assert_eq!(plan(sinks, true), vec![((2, 0), vec![]), ((2, 1), vec![])]);
    }

    #[test]
    fn a_control_socket_reset_by_the_coordinator_says_the_coordinator_died() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = gone_or(4242, "reading the deployment")(reset);
        assert!(matches!(e, Error::CoordinatorDied { pid: 4242 }), "{e}");
        assert!(e.to_string().contains("coordinator (pid 4242)"), "{e}");
        let other = std::io::Error::from(std::io::ErrorKind::InvalidData);
        assert!(gone_or(1, "reading the deployment")(other).to_string().contains("reading the deployment"));
    }

    #[test]
    fn a_pinned_task_thread_runs_on_the_cpu_of_its_index_in_the_allowed_set() {
        let pinned = std::thread::spawn(|| {
            let before = allowed_cpus();
            pin_thread(3);
            (before, allowed_cpus())
        })
        .join()
        .unwrap();
        let (before, after) = pinned;
        assert!(!before.is_empty(), "the allowed set could not be read");
        assert_eq!(after, vec![before[3 % before.len()]]);
        assert_eq!(allowed_cpus(), before, "pinning a thread changed another thread's set");
    }
}
