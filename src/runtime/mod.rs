//! The small job runtime: a job API, the execution graph, a coordinator process
//! (JobMaster) and worker processes (TaskExecutor) that run subtasks as threads.
//!
//! ```text
//!  JobBuilder -> JobGraph --expand--> ExecutionGraph (subtasks, partitions, gates)
//!  coordinator: creates the memfd arena, spawns W workers (same binary, arena fd and a
//!    control socket inherited), deploys subtasks over the socket, collects
//!    "partition consumable" and task states, cancels everything on the first failure
//!  worker: attaches to the arena, runs each deployed subtask on a thread
//! ```

pub mod accumulators;
mod config;
mod coordinator;
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
pub use execution::{ExchangeOut, TaskEvent, TaskIo, TaskSettings};
pub use graph::{partition_id, ExecutionGraph, GraphError};
pub use job::{
    Chain, CountWindow, CountWindowOp, EdgeSpec, Emitter, FilterOp, FlatMapOp, FnSource, InputChain, JavaHash,
    JobBuilder, JobGraph, JobVertex, Keyed, KeyedStream, Map, MapOp, Operator, Reduce, ReduceOp, Source, SourceChain,
    SourceContext, Stream, Tee, Then, VertexBody,
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
/// # Errors
/// The job's first failure (the cause, not what it caused downstream).
pub fn run(job: JobGraph, config: &RuntimeConfig) -> crate::Result<Option<JobSummary>> {
    if is_worker() {
        match run_worker(&job, config) {
            Ok(()) | Err(crate::Error::Cancelled) => Ok(None),
            Err(e) => Err(e),
        }
    } else {
        run_job(&job, config).map(Some)
    }
}
