//! A source that waits for the outside world between records still gets its records to
//! the consumers:
//! - `flush`: with "full segments only" (`BufferTimeout::FullSegmentsOnly`) the source calls
//!   `Collector::flush` before it waits; nothing else could deliver the record.
//! - `timeout`: with a 50 ms buffer timeout and no flush call, the output flusher notices
//!   that the writer's thread is away and commits the record itself (`FlushHandoff`).
//!
//! In both, the source emits record 1 then waits (bounded) for the sink, in another worker
//! process, to have received it (the sink creates a marker file); only then it emits record
//! 2 and ends. If record 1 is not delivered while the source waits, the job fails.
//!
//! Runs without the test harness: the binary is the coordinator and, re-executed by the
//! runtime, every worker (which learns the mode from the environment it inherits).

use shmflow::partition::BufferTimeout;
use shmflow::runtime::{run, Collector, JobBuilder, RuntimeConfig, TaskInfo};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const MARKER: &str = "SHMFLOW_SOURCE_FLUSH_MARKER";
const MODE: &str = "SHMFLOW_SOURCE_FLUSH_MODE";

fn marker() -> PathBuf {
    PathBuf::from(std::env::var_os(MARKER).expect("the coordinator sets the marker path"))
}

struct MarkSink;

impl Collector<u64> for MarkSink {
    fn collect(&mut self, v: u64) -> shmflow::Result<()> {
        let path = marker().with_extension(format!("got-{v}"));
        std::fs::write(&path, b"")
            .map_err(|e| shmflow::Error::Io { op: format!("writing {}", path.display()), source: e })
    }
}

/// Runs the job in `mode` ("flush" or "timeout"); in a worker, runs its tasks.
fn job(mode: &str) -> shmflow::Result<Option<u64>> {
    let explicit_flush = mode == "flush";
    let job = JobBuilder::new("source-flush", 1)
        .source("sporadic", move |_: &TaskInfo, out: &mut dyn Collector<u64>| {
            out.collect(1)?;
            if explicit_flush {
                out.flush()?;
            }
            let seen = marker().with_extension("got-1");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !seen.exists() {
                if Instant::now() > deadline {
                    return Err(shmflow::Error::Invalid {
                        what: "test",
                        detail: "the sink never received record 1 while the source waited".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            out.collect(2)
        })
        .rebalance(Some(1))
        .sink("mark", |_: &TaskInfo| Ok(Box::new(MarkSink) as Box<dyn Collector<u64>>));
    let buffer_timeout = if explicit_flush {
        BufferTimeout::FullSegmentsOnly
    } else {
        BufferTimeout::Interval(Duration::from_millis(50))
    };
    let config = RuntimeConfig { workers: 2, buffer_timeout, ..RuntimeConfig::default() };
    Ok(run(job, &config)?.map(|s| s.records))
}

fn main() -> ExitCode {
    if let Ok(mode) = std::env::var(MODE) {
        // A worker: run the tasks of the job of that mode.
        return match job(&mode) {
            Ok(_) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    let dir = std::env::temp_dir().join(format!("shmflow-source-flush-{}", std::process::id()));
    let mut failed = false;
    for mode in ["flush", "timeout"] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var(MARKER, dir.join("marker"));
        std::env::set_var(MODE, mode);
        let result = job(mode);
        std::env::remove_var(MODE);
        let got2 = marker().with_extension("got-2").exists();
        match result {
            Ok(Some(2)) if got2 => println!("source_flush {mode}: ok (record 1 arrived while the source waited)"),
            other => {
                eprintln!("source_flush {mode}: failed: {other:?}, record 2 received: {got2}");
                failed = true;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
