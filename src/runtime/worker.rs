//! The TaskExecutor: a worker process that attaches to the arena, receives its subtasks over
//! the control socket and runs each on its own thread. A thread of its own sends the
//! coordinator a heartbeat every heartbeat interval, busy tasks or not.

use super::coordinator::RuntimeConfig;
use super::execution::{SubtaskSpec, TaskEvent, TaskIo};
use super::job::JobGraph;
use super::protocol::{recv, send, FromWorker, ToWorker};
use crate::error::{Error, Result};
use crate::metrics::TaskMetricsHandle;
use crate::sync::{AtomicBool, Ordering};
use crate::ShuffleEnvironment;
use std::io::BufReader;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Environment variable naming the worker's control socket fd.
pub const CONTROL_FD_ENV: &str = "SHMFLOW_CONTROL_FD";

/// Environment variable in which the coordinator passes its workers the heartbeat interval
/// in milliseconds (a worker without it derives one from its own [`RuntimeConfig`]).
pub const HEARTBEAT_INTERVAL_ENV: &str = "SHMFLOW_HEARTBEAT_INTERVAL_MS";

/// Why the coordinator's `spec` cannot be run by this job, if it cannot.
fn check_spec(job: &JobGraph, spec: &SubtaskSpec) -> Option<String> {
    let Some(v) = job.vertices.get(spec.vertex) else {
        return Some(format!("vertex {} is out of range: the job has {} vertices", spec.vertex, job.vertices.len()));
    };
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

/// Runs the worker side: attach, receive the deployment, run the subtasks, report.
///
/// # Errors
/// A missing or bad control fd or arena, or a broken control socket. Task failures are
/// reported to the coordinator, and make this return an error too.
pub fn run_worker(job: &JobGraph, config: &RuntimeConfig) -> Result<()> {
    let raw: i32 = std::env::var(CONTROL_FD_ENV).ok().and_then(|v| v.parse().ok()).ok_or_else(|| Error::Invalid {
        what: "worker start",
        detail: format!("{CONTROL_FD_ENV} is not an fd number"),
    })?;
    // SAFETY: fcntl(F_GETFD) on any integer is harmless; it fails for a closed fd.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(Error::Invalid { what: "worker start", detail: format!("{CONTROL_FD_ENV}={raw} is not open") });
    }
    check_coordinator()?;
    // Not inherited by the commands tasks run (they are no workers).
    // SAFETY: fcntl on an open fd; FD_CLOEXEC is its only descriptor flag.
    unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: the fd is open and was passed to this process to own.
    let sock = unsafe { UnixStream::from_raw_fd(raw) };
    let mut reader = BufReader::new(sock.try_clone().map_err(io_err("cloning the control socket"))?);
    let writer = Arc::new(Mutex::new(sock));
    let arena = Arc::new(crate::memory::Arena::attach_inherited()?);
    send(&mut *writer.lock().expect("control socket"), &FromWorker::Hello { pid: std::process::id() })
        .map_err(io_err("writing to the coordinator"))?;
    // Heartbeats, from a thread of their own so busy tasks do not hold them up; they end
    // with the process (or when the coordinator is gone).
    let interval = std::env::var(HEARTBEAT_INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or_else(|| config.heartbeat_interval(), Duration::from_millis)
        .max(Duration::from_millis(1));
    {
        let writer = writer.clone();
        std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let mut w = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if send(&mut *w, &FromWorker::Heartbeat).is_err() {
                    break;
                }
            })
            .map_err(io_err("starting the heartbeat thread"))?;
    }
    // The coordinator: this process's parent (its pid is gone from getppid once it dies).
    // SAFETY: getppid has no preconditions and cannot fail.
    let coordinator = unsafe { libc::getppid() } as u32;
    let (worker, subtasks) = match recv::<ToWorker>(&mut reader).map_err(io_err("reading the deployment"))? {
        Some(ToWorker::Deploy { worker, subtasks }) => (worker, subtasks),
        Some(ToWorker::Cancel) => return Err(Error::Cancelled),
        None => return Err(Error::CoordinatorDied { pid: coordinator }),
    };
    // A bad deployment is refused as a whole, before any task starts.
    if let Some((spec, why)) = subtasks.iter().find_map(|s| Some((s, check_spec(job, s)?))) {
        let _ = send(
            &mut *writer.lock().expect("control socket"),
            &FromWorker::TaskFailed {
                vertex: spec.vertex,
                subtask: spec.subtask,
                error: format!("bad deployment: {why}"),
            },
        );
        return Err(Error::Invalid { what: "deployment", detail: why });
    }
    let env = ShuffleEnvironment::new(arena.clone(), worker);
    let cancel = Arc::new(AtomicBool::new(false));
    // Why the coordinator stopped us, once it did: a Cancel (the job failed elsewhere or was
    // interrupted, and the coordinator reports it) or the socket closing (it died).
    let stopped: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    {
        let (cancel, stopped) = (cancel.clone(), stopped.clone());
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
                *stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
                // Relaxed: a stop request, polled by every task.
                cancel.store(true, Ordering::Relaxed);
            })
            .map_err(io_err("starting the control thread"))?;
    }
    let settings = config.task_settings();
    let mut handles = Vec::new();
    let mut first_err = None;
    for spec in subtasks {
        let (vertex, subtask) = (spec.vertex, spec.subtask);
        let (job, env, task_cancel, task_writer) = (job.clone(), env.clone(), cancel.clone(), writer.clone());
        let name = format!("{}-{}", spec.vertex, spec.subtask);
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let (cancel, writer) = (task_cancel, task_writer);
                let metrics = TaskMetricsHandle::claim(env.arena().clone(), env.worker()).ok();
                if let Some(m) = &metrics {
                    m.set_identity(vertex as u32, subtask);
                }
                if let Some(m) = &metrics {
                    let _ = send(
                        &mut *writer.lock().expect("control socket"),
                        &FromWorker::TaskRunning { vertex, subtask, metrics_slot: m.slot() },
                    );
                }
                let (tx, rx) = std::sync::mpsc::channel();
                let w2 = writer.clone();
                let forward = std::thread::Builder::new().name(format!("{vertex}-{subtask}-events")).spawn(move || {
                    while let Ok(TaskEvent::PartitionConsumable(p)) = rx.recv() {
                        let _ = send(
                            &mut *w2.lock().expect("control socket"),
                            &FromWorker::PartitionConsumable { partition: p },
                        );
                    }
                });
                let r = match forward {
                    Err(e) => Err(Error::Io { op: "starting a task's event thread".into(), source: e }),
                    Ok(forward) => {
                        let mut io = TaskIo::new(env, spec, settings, cancel.clone(), metrics.clone(), tx);
                        let info = io.info(&job);
                        let body = job.vertices[vertex].body.clone();
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&info, &mut io)));
                        let r = match r {
                            Ok(r) => r,
                            Err(p) => Err(Error::Invalid {
                                what: "task",
                                detail: format!(
                                    "panicked: {}",
                                    p.downcast_ref::<String>()
                                        .map(String::as_str)
                                        .or_else(|| p.downcast_ref::<&str>().copied())
                                        .unwrap_or("?")
                                ),
                            }),
                        };
                        drop(io);
                        let _ = forward.join();
                        r
                    }
                };
                if let Some(m) = &metrics {
                    m.end(r.is_err());
                }
                let msg = match &r {
                    Ok(()) => FromWorker::TaskFinished { vertex, subtask },
                    Err(e) => {
                        // Relaxed: a stop request for the other tasks of this worker.
                        cancel.store(true, Ordering::Relaxed);
                        FromWorker::TaskFailed { vertex, subtask, error: e.to_string() }
                    }
                };
                let _ = send(&mut *writer.lock().expect("control socket"), &msg);
                r
            })
            .map_err(io_err("starting a task thread"));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Relaxed: a stop request for the tasks already started.
                cancel.store(true, Ordering::Relaxed);
                let _ = send(
                    &mut *writer.lock().expect("control socket"),
                    &FromWorker::TaskFailed { vertex, subtask, error: e.to_string() },
                );
                first_err = Some(e);
                break;
            }
        }
    }
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert_with(|| Error::Invalid { what: "task", detail: "task thread panicked".into() });
            }
        }
    }
    match first_err {
        None => Ok(()),
        // Stopped by the coordinator: what the tasks saw then (a consumer gone, ...) is a
        // consequence; the coordinator's Cancel (quiet: it reports) or its death is the cause.
        // A task may see the consequence (its consumer in another worker stopped) before
        // the Cancel arrives: the coordinator's verdict is awaited a moment (bounded).
        Some(e) => {
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            loop {
                if let Some(why) = stopped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                    return Err(why);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
