//! Why a job failed, as the coordinator saw it: one variant per kind of failure, each with
//! what the user needs to find the cause (the task and its error first, then the worker and
//! its pid). It becomes the crate's [`Error`] at the API: a stop signal as
//! [`Error::Interrupted`], everything else as [`Error::JobFailed`] with the message below.

use crate::error::Error;
use std::process::ExitStatus;
use std::time::Duration;

/// A worker process as failures name it: its slot and pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WorkerId {
    /// The worker's slot, `0..workers`.
    pub slot: usize,
    /// Its pid.
    pub pid: u32,
}

impl std::fmt::Display for WorkerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {} (pid {})", self.slot, self.pid)
    }
}

/// How a task was reported in a report the coordinator refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reported {
    /// "task ... running".
    Running,
    /// "task ... finished".
    Finished,
    /// "task ... failed".
    Failed,
}

/// What failed a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobFailure {
    /// A task failed. With `symptom` its error was a consequence of another failure (a
    /// cancellation, a peer gone); the coordinator reports such a failure only when no cause
    /// arrived within its grace period.
    Task {
        /// "wordcount-map (2/4)".
        task: String,
        /// Where it ran.
        worker: WorkerId,
        /// The task's error, root cause first.
        error: String,
        /// Whether the error is a consequence of another failure.
        symptom: bool,
    },
    /// Writing a worker its deployment failed.
    Deploy {
        /// The worker.
        worker: WorkerId,
        /// Why.
        error: String,
    },
    /// A worker reported something about a task that is not its to report.
    Protocol {
        /// The worker.
        worker: WorkerId,
        /// The task it reported, labelled.
        task: String,
        /// What it reported.
        reported: Reported,
        /// Why that report is refused.
        why: String,
    },
    /// A worker that is not this run's: started with another run's token, or its `run` call
    /// builds another job or graph (it reached another `run` of the same binary: a
    /// `#[test]` binary started without [`RuntimeConfig::worker_args`](super::RuntimeConfig::worker_args),
    /// a `main` with two jobs, a graph built from the pid or the time). Refused before it is
    /// deployed anything.
    Foreign {
        /// The worker.
        worker: WorkerId,
        /// What differs, both sides named.
        why: String,
    },
    /// A worker sent a line that is not a control message.
    Malformed {
        /// The worker.
        worker: WorkerId,
        /// The parse error.
        error: String,
    },
    /// A worker's control socket closed while it had tasks: it died with `status`, or (when
    /// `None`) it did not exit within a second of closing.
    Died {
        /// The worker.
        worker: WorkerId,
        /// Its exit status, if it exited.
        status: Option<ExitStatus>,
    },
    /// A worker exited unsuccessfully; `running` says whether its tasks were still running
    /// (else every task had ended and only its exit failed).
    Exited {
        /// The worker.
        worker: WorkerId,
        /// Its exit status.
        status: ExitStatus,
        /// Whether it still had tasks.
        running: bool,
    },
    /// The coordinator heard nothing from a worker for `timeout` (`first`: not even its
    /// first message).
    Silent {
        /// The worker.
        worker: WorkerId,
        /// The heartbeat timeout.
        timeout: Duration,
        /// Whether the worker never sent anything.
        first: bool,
    },
    /// Every control socket closed at once.
    AllSocketsClosed,
    /// The coordinator got a stop signal (Ctrl-C, SIGTERM); it outranks what it caused.
    Stopped {
        /// The signal number.
        signal: i32,
    },
}

/// `d` for a message: "30 s", "1.5 s".
pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Task { task, worker, error, .. } => {
                write!(f, "task {task} on worker {} (pid {}) failed: {error}", worker.slot, worker.pid)
            }
            Self::Deploy { worker, error } => write!(f, "deploying subtasks to {worker} failed: {error}"),
            Self::Protocol { worker, task, reported, why } => {
                let what = match reported {
                    Reported::Running => "running",
                    Reported::Finished => "finished",
                    Reported::Failed => "failed",
                };
                write!(f, "{worker} broke the control protocol: it reported task {task} {what}, {why}")
            }
            Self::Foreign { worker, why } => write!(
                f,
                "{worker} is not this job's worker, refused: {why}. Workers re-run this binary's main \
                 with the same arguments up to its first run, whose graph must be this one: a program with \
                 several run calls, or a #[test], sets RuntimeConfig::worker_args so that its workers reach \
                 this run only (a test: [\"--exact\", \"<its name>\", \"--test-threads=1\"])"
            ),
            Self::Malformed { worker, error } => write!(f, "{worker} sent a malformed control message: {error}"),
            Self::Died { worker, status: Some(s) } => {
                write!(f, "{worker} died with {s} while its tasks were running")
            }
            Self::Died { worker, status: None } => {
                write!(f, "{worker} closed its control socket while its tasks were running")
            }
            Self::Exited { worker, status, running: true } => {
                write!(f, "{worker} exited with {status} while its tasks were running")
            }
            Self::Exited { worker, status, running: false } => write!(f, "{worker} exited with {status}"),
            Self::Silent { worker, timeout, first: false } => {
                write!(f, "{worker} sent no heartbeat for {}: is it stopped or hung?", secs(*timeout))
            }
            Self::Silent { worker, timeout, first: true } => write!(
                f,
                "{worker} sent no first message within {} of its start: is it stopped or hung?",
                secs(*timeout)
            ),
            Self::AllSocketsClosed => write!(f, "every worker closed its control socket"),
            Self::Stopped { signal } => write!(f, "stopped by signal {signal}"),
        }
    }
}

impl From<JobFailure> for Error {
    fn from(f: JobFailure) -> Self {
        match f {
            JobFailure::Stopped { signal } => Error::Interrupted { signal },
            other => Error::JobFailed(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    const W: WorkerId = WorkerId { slot: 1, pid: 4242 };

    #[test]
    fn a_task_failure_names_the_task_and_its_error_before_the_worker() {
        let f = JobFailure::Task { task: "map (2/4)".into(), worker: W, error: "boom".into(), symptom: false };
        assert_eq!(f.to_string(), "task map (2/4) on worker 1 (pid 4242) failed: boom");
        assert!(matches!(Error::from(f), Error::JobFailed(m) if m.ends_with("failed: boom")));
    }

    #[test]
    fn worker_failures_say_what_the_worker_did() {
        let killed = ExitStatus::from_raw(9); // killed by SIGKILL
        let cases = [
            (JobFailure::Died { worker: W, status: Some(killed) }, "worker 1 (pid 4242) died with signal: 9"),
            (JobFailure::Died { worker: W, status: None }, "closed its control socket while its tasks were running"),
            (JobFailure::Exited { worker: W, status: killed, running: true }, "while its tasks were running"),
            (
                JobFailure::Silent { worker: W, timeout: Duration::from_millis(1500), first: false },
                "no heartbeat for 1.5 s",
            ),
            (
                JobFailure::Silent { worker: W, timeout: Duration::from_secs(30), first: true },
                "no first message within 30 s",
            ),
            (
                JobFailure::Protocol {
                    worker: W,
                    task: "sink (1/1)".into(),
                    reported: Reported::Failed,
                    why: "x".into(),
                },
                "worker 1 (pid 4242) broke the control protocol: it reported task sink (1/1) failed, x",
            ),
        ];
        for (f, want) in cases {
            assert!(f.to_string().contains(want), "{f} lacks {want:?}");
        }
        let after = JobFailure::Exited { worker: W, status: killed, running: false }.to_string();
        assert!(!after.contains("running"), "{after}");
    }

    #[test]
    fn a_stop_signal_becomes_interrupted_not_a_job_failure() {
        assert!(matches!(Error::from(JobFailure::Stopped { signal: 2 }), Error::Interrupted { signal: 2 }));
    }
}
