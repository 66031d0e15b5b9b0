//! The small job runtime: a job API, the execution graph, a coordinator process
//! (JobMaster) and worker processes (TaskExecutor) that run subtasks as threads.
//!
//! ```text
//!  JobBuilder -> JobGraph --expand--> ExecutionGraph (subtasks, partitions, gates)
//!  coordinator: creates the memfd arena, spawns W workers (same binary, arena fd and a
//!    control socket inherited), deploys subtasks over the socket, collects
//!    "partition consumable" and task states, cancels everything on the first failure
//!  worker: attaches to the arena, runs each deployed subtask on a thread (or, co-scheduled,
//!    a pipeline slice's sinks in turns on the thread of its first task: cosched)
//! ```

pub mod accumulators;
mod config;
mod coordinator;
mod cosched;
mod execution;
mod failure;
mod graph;
mod job;
mod progress;
mod protocol;
mod summary;
mod task;
mod worker;

pub use config::RuntimeConfig;
pub use coordinator::run_job;
pub use cosched::{take_turns, TaskSteps, Turn};
pub use execution::{ExchangeOut, InputSteps, TaskEvent, TaskIo, TaskSettings};
pub use graph::{partition_id, ExecutionGraph, GraphError};
pub use job::{
    Chain, CountWindow, CountWindowOp, EdgeSpec, Emitter, FilterOp, FlatMapOp, FnSource, InputChain, JavaHash,
    JobBuilder, JobGraph, JobVertex, Keyed, KeyedStream, Map, MapOp, Operator, Reduce, ReduceOp, Source, SourceChain,
    SourceContext, StepBody, Stream, Tee, Then, VertexBody,
};
pub use progress::ProgressTotal;
pub use protocol::{InputSpecs, OutputSpec, SubtaskSpec};
pub use summary::{EdgeSummary, JobSummary};
pub use task::{BoxCollector, Collector, Data, TaskInfo};
pub use worker::{check_coordinator, is_worker, run_worker};

/// Runs `job` the way a job binary should: as a worker when started by a coordinator,
/// else as the coordinator that starts the workers (which re-run this same binary with the
/// same arguments, so they build the same job).
///
/// In a worker it returns `Ok(None)` when its tasks ended, or were cancelled by the
/// coordinator after a failure (the coordinator reports the job's error, so a `main` that
/// prints the error prints it once); it returns an error only for what the coordinator
/// cannot report itself, such as its own death.
///
/// # Workers re-run `main`
///
/// - Each worker runs this binary's whole `main` again, with the same arguments (or
///   [`RuntimeConfig::worker_args`]), up to its `run`: everything before it runs once per
///   worker too, and the graph it builds must be the coordinator's (same vertices, names,
///   parallelism and kinds; a worker whose graph differs refuses the deployment and the
///   job fails naming the vertex). So build the graph from the arguments and constants,
///   not from the time, a random number or input read from stdin.
/// - A worker's stdin and stdout are `/dev/null`: a sink's `println!` prints nothing.
///   Return results through [`accumulators`] (they arrive in [`JobSummary::accumulators`])
///   or files; stderr is inherited (`eprintln!` works for diagnostics).
/// - Only one `run` per process: a worker runs the first `run` it reaches; a later `run`
///   in that worker (or one in another thread of it) returns `Ok(None)` at once and runs
///   nothing.
/// - A worker first tells the coordinator its run's token (the coordinator passes each
///   `run` call's own to its workers), the job name and the graph's shape
///   ([`JobGraph::shape`]); the coordinator refuses a worker whose `run` builds another job
///   or graph, and the job fails with an error naming both ("is not this job's worker,
///   refused"), before anything is deployed: never a merged or wrong result. Two jobs of
///   the same name and shape cannot be told apart this way, so:
/// - **A `#[test]` that calls `run`** must set [`RuntimeConfig::worker_args`] to
///   `["--exact", "<its name>", "--test-threads=1"]`: a test binary runs every test (in
///   parallel threads) unless told which, and without it a worker started by one test runs
///   whichever test's `run` it reaches first. In the test, a worker's `run` returns
///   `Ok(None)`: return from the test then (see `tests/job_api.rs`). The same goes for a
///   `main` that runs several jobs: the workers of each must be started with arguments
///   that reach that job's `run` first.
///
/// # Errors
/// The job's first failure (the cause, not what it caused downstream).
pub fn run(job: JobGraph, config: &RuntimeConfig) -> crate::Result<Option<JobSummary>> {
    if is_worker() {
        match worker::run_worker_once(&job, config) {
            Ok(_) | Err(crate::Error::Cancelled) => Ok(None),
            Err(e) => Err(e),
        }
    } else {
        run_job(&job, config).map(Some)
    }
}
