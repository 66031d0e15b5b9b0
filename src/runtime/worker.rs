//! The TaskExecutor: a worker process that attaches to the arena, receives its subtasks over
//! the control socket and runs each on its own thread.

use super::coordinator::RuntimeConfig;
use super::execution::{TaskEvent, TaskIo};
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

/// Environment variable naming the worker's control socket fd.
pub const CONTROL_FD_ENV: &str = "SHMFLOW_CONTROL_FD";

/// Whether this process was started as a worker by a coordinator.
pub fn is_worker() -> bool {
    std::env::var_os(CONTROL_FD_ENV).is_some()
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
    let raw: i32 = std::env::var(CONTROL_FD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or(Error::Invalid { what: "worker start", detail: format!("{CONTROL_FD_ENV} is not an fd number") })?;
    // SAFETY: fcntl(F_GETFD) on any integer is harmless; it fails for a closed fd.
    if unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return Err(Error::Invalid { what: "worker start", detail: format!("{CONTROL_FD_ENV}={raw} is not open") });
    }
    // SAFETY: the fd is open and was passed to this process to own.
    let sock = unsafe { UnixStream::from_raw_fd(raw) };
    let mut reader = BufReader::new(sock.try_clone().map_err(io_err("cloning the control socket"))?);
    let writer = Arc::new(Mutex::new(sock));
    let arena = Arc::new(crate::memory::Arena::attach_inherited()?);
    send(&mut *writer.lock().expect("control socket"), &FromWorker::Hello { pid: std::process::id() })
        .map_err(io_err("writing to the coordinator"))?;
    let (worker, subtasks) = match recv::<ToWorker>(&mut reader).map_err(io_err("reading the deployment"))? {
        Some(ToWorker::Deploy { worker, subtasks }) => (worker, subtasks),
        Some(ToWorker::Cancel) | None => return Err(Error::Cancelled),
    };
    let env = ShuffleEnvironment::new(arena.clone(), worker);
    let cancel = Arc::new(AtomicBool::new(false));
    // The coordinator's messages: a Cancel, or the socket closing (it died), stop us.
    {
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while let Ok(Some(ToWorker::Deploy { .. })) = recv::<ToWorker>(&mut reader) {}
                // Relaxed: a stop request, polled by every task.
                cancel.store(true, Ordering::Relaxed);
            })
            .map_err(io_err("starting the control thread"))?;
    }
    let settings = config.task_settings();
    let mut handles = Vec::new();
    for spec in subtasks {
        let (job, env, cancel, writer) = (job.clone(), env.clone(), cancel.clone(), writer.clone());
        let name = format!("{}-{}", spec.vertex, spec.subtask);
        let h = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let (vertex, subtask) = (spec.vertex, spec.subtask);
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
                let forward = std::thread::spawn(move || {
                    while let Ok(TaskEvent::PartitionConsumable(p)) = rx.recv() {
                        let _ = send(
                            &mut *w2.lock().expect("control socket"),
                            &FromWorker::PartitionConsumable { partition: p },
                        );
                    }
                });
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
                                .or(p.downcast_ref::<&str>().copied())
                                .unwrap_or("?")
                        ),
                    }),
                };
                drop(io);
                let _ = forward.join();
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
            .map_err(io_err("starting a task thread"))?;
        handles.push(h);
    }
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(Error::Invalid { what: "task", detail: "task thread panicked".into() });
            }
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
