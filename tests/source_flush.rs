//! A source that waits for the outside world between records gets its records to the
//! consumers by flushing before it waits (`Collector::flush`), whatever the buffer timeout.
//!
//! The source emits record 1, flushes, then waits (bounded) for the sink, in another
//! worker process, to have received it (the sink creates a marker file); only then it emits
//! record 2 and ends. With "full segments only" (`BufferTimeout::FullSegmentsOnly`), nothing but the
//! flush can deliver record 1, so a flush that does not publish fails the job.
//!
//! Runs without the test harness: the binary is the coordinator and, re-executed by the
//! runtime, every worker.

use shmflow::partition::BufferTimeout;
use shmflow::runtime::{run, Collector, JobBuilder, RuntimeConfig, TaskInfo};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const MARKER: &str = "SHMFLOW_SOURCE_FLUSH_MARKER";

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

fn main() -> ExitCode {
    if std::env::var_os(MARKER).is_none() {
        let dir = std::env::temp_dir().join(format!("shmflow-source-flush-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var(MARKER, dir.join("marker"));
    }
    let job = JobBuilder::new("source-flush", 1)
        .source("sporadic", |_: &TaskInfo, out: &mut dyn Collector<u64>| {
            out.collect(1)?;
            out.flush()?;
            let seen = marker().with_extension("got-1");
            let deadline = Instant::now() + Duration::from_secs(30);
            while !seen.exists() {
                if Instant::now() > deadline {
                    return Err(shmflow::Error::Invalid {
                        what: "test",
                        detail: "the sink never received the flushed record".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            out.collect(2)
        })
        .rebalance(Some(1))
        .sink("mark", |_: &TaskInfo| Ok(Box::new(MarkSink) as Box<dyn Collector<u64>>));
    let config =
        RuntimeConfig { workers: 2, buffer_timeout: BufferTimeout::FullSegmentsOnly, ..RuntimeConfig::default() };
    let result = run(job, &config);
    let Ok(Some(summary)) = result else {
        return match result {
            Ok(None) => ExitCode::SUCCESS, // a worker
            Err(e) => {
                eprintln!("source_flush: the job failed: {e}");
                cleanup();
                ExitCode::FAILURE
            }
            Ok(Some(_)) => unreachable!(),
        };
    };
    let got2 = marker().with_extension("got-2").exists();
    cleanup();
    if summary.records != 2 || !got2 {
        eprintln!("source_flush: {} records through the exchange, record 2 received: {got2}", summary.records);
        return ExitCode::FAILURE;
    }
    println!("source_flush: ok (the flushed record arrived while the source waited)");
    ExitCode::SUCCESS
}

fn cleanup() {
    if let Some(dir) = marker().parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
