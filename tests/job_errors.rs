//! The error a failed job reports is its cause: a sink's own error, not the "consumer is
//! gone" it causes upstream (every time); a panic with its message and location; and the
//! workers end quietly, so the job binary prints that error once.
//!
//! The jobs run across worker processes that re-run this test binary on the test that
//! started them (`--exact NAME`): in a worker, `run` runs the deployed tasks and the test
//! returns.

use shmflow::runtime::{is_worker, run, Collector, JobBuilder, JobGraph, JobSummary, RuntimeConfig, TaskInfo};
use std::process::Command;

/// A sink that fails (returns an error, or panics) at its `at`-th record.
struct Failing {
    at: u64,
    seen: u64,
    panic: bool,
}

impl Collector<u64> for Failing {
    fn collect(&mut self, _: u64) -> shmflow::Result<()> {
        self.seen += 1;
        if self.seen == self.at {
            if self.panic {
                panic!("the sink blew up at record {}", self.at);
            }
            return Err(shmflow::Error::Invalid {
                what: "record",
                detail: format!("the sink refuses record {}", self.at),
            });
        }
        Ok(())
    }
}

/// Two generators of many numbers, a rebalance, two sinks that fail at their 1000th record
/// (long before the generators are done: they are back-pressured when the sinks go).
fn failing_job(panic: bool) -> JobGraph {
    JobBuilder::new("failing", 2)
        .source("numbers", |_: &TaskInfo, out: &mut dyn Collector<u64>| {
            for i in 0..50_000_000u64 {
                out.collect(i)?;
            }
            Ok(())
        })
        .rebalance(None)
        .sink("failing sink", move |_: &TaskInfo| Ok(Failing { at: 1000, seen: 0, panic }))
}

fn run_as(test: &str, job: JobGraph) -> shmflow::Result<Option<JobSummary>> {
    let config = RuntimeConfig {
        worker_args: Some(["--exact", test, "--nocapture", "--test-threads=1"].map(Into::into).to_vec()),
        ..RuntimeConfig::default()
    };
    run(job, &config)
}

#[test]
fn a_sink_error_is_the_error_the_job_reports_every_time() {
    const NAME: &str = "a_sink_error_is_the_error_the_job_reports_every_time";
    if is_worker() {
        let _ = run_as(NAME, failing_job(false));
        return;
    }
    for i in 0..20 {
        let e = run_as(NAME, failing_job(false)).expect_err("the sink fails").to_string();
        assert!(
            e.contains("failing sink") && e.contains("the sink refuses record 1000"),
            "run {i} of 20 reported a consequence, not the sink's error: {e}"
        );
    }
}

#[test]
fn a_panic_is_reported_with_its_message_and_location() {
    const NAME: &str = "a_panic_is_reported_with_its_message_and_location";
    if is_worker() {
        let _ = run_as(NAME, failing_job(true));
        return;
    }
    let e = run_as(NAME, failing_job(true)).expect_err("the sink panics").to_string();
    assert!(e.contains("panicked at tests/job_errors.rs:"), "no location: {e}");
    assert!(e.contains("the sink blew up at record 1000"), "no message: {e}");
    assert!(!e.contains("invalid task"), "a panic is not an invalid task: {e}");
}

/// Run by `the_workers_end_quietly_so_the_error_is_printed_once` as a job binary would be:
/// `main` prints the job's error.
#[test]
fn quiet_child() {
    const NAME: &str = "quiet_child";
    if std::env::var_os("SHMFLOW_TEST_QUIET_CHILD").is_none() {
        return;
    }
    match run_as(NAME, failing_job(false)) {
        Err(e) => eprintln!("error: {e}"),
        Ok(_) if is_worker() => {}
        Ok(_) => eprintln!("error: the job succeeded"),
    }
}

#[test]
fn the_workers_end_quietly_so_the_error_is_printed_once() {
    if is_worker() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "quiet_child", "--nocapture", "--test-threads=1"])
        .env("SHMFLOW_TEST_QUIET_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("the sink refuses record 1000").count(), 1, "the error once, from the coordinator:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "one error line:\n{err}");
}
