//! Co-scheduling (`RuntimeConfig::co_schedule`): a pipeline slice's sinks read in turns on
//! the thread of its source. Every record arrives exactly once when the sinks are slower
//! than the sources (the sources wait on full outputs, and their waits are the sinks'
//! turns), with a vertex between them on a thread of its own, and a failing sink or source
//! fails the job with its own error instead of hanging the thread it shares.
//!
//! The jobs run across worker processes that re-run this test binary on the test that
//! started them (`--exact NAME`): in a worker, `run` runs the deployed tasks and the test
//! returns. Each job runs under a watchdog: a deadlock fails the test instead of hanging.

use shmflow::runtime::accumulators::{self, Accumulator};
use shmflow::runtime::{is_worker, run, Collector, JobBuilder, JobGraph, JobSummary, RuntimeConfig, TaskInfo};
use shmflow::sync::WaitPolicy;
use std::time::Duration;

/// Records per source subtask.
const PER_SOURCE: u64 = 400_000;

fn config(test: &str, co_schedule: bool) -> RuntimeConfig {
    RuntimeConfig {
        workers: 2,
        worker_args: Some(["--exact", test, "--nocapture", "--test-threads=1"].map(Into::into).to_vec()),
        co_schedule,
        wait_policy: WaitPolicy::spin(),
        // Small segments and a small arena: the sources run into full outputs often.
        segment_size: 4096,
        arena_size: 16 << 20,
        ..RuntimeConfig::default()
    }
}

/// Runs `job` as `test`; in the coordinator under a watchdog of 120 s (the job's own
/// heartbeats keep a deadlocked job alive forever otherwise).
fn run_as(test: &'static str, job: JobGraph, co_schedule: bool) -> Option<shmflow::Result<JobSummary>> {
    if is_worker() {
        let _ = run(job, &config(test, co_schedule));
        return None;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(run(job, &config(test, co_schedule)).map(|s| s.expect("the coordinator's summary")));
    });
    Some(rx.recv_timeout(Duration::from_secs(120)).expect("the job did not end within 120 s: a deadlock"))
}

/// Counts, sums and names the thread it ran on (once); does a little work per record so
/// that it is slower than the source.
struct SlowSink {
    subtask: u32,
    count: i64,
    sum: i64,
    fail_at: Option<i64>,
}

impl Collector<u64> for SlowSink {
    fn collect(&mut self, v: u64) -> shmflow::Result<()> {
        self.count += 1;
        self.sum += v as i64;
        if self.fail_at == Some(self.count) {
            return Err(shmflow::Error::Invalid {
                what: "record",
                detail: format!("sink {} refuses it", self.subtask),
            });
        }
        // Slower than the source: a few hundred ns per record.
        let mut x = v;
        for _ in 0..200 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        std::hint::black_box(x);
        Ok(())
    }
    fn finish(&mut self) -> shmflow::Result<()> {
        accumulators::add("received", self.count);
        accumulators::add("sum", self.sum);
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        accumulators::collect("sink threads", format!("{}@{thread}", self.subtask));
        Ok(())
    }
}

/// Two sources of `PER_SOURCE` numbers each (the first `fail_source_at` records, if set),
/// optionally a map vertex, a key-hash exchange into two slow sinks.
fn job(middle: bool, fail_sink_at: Option<i64>, fail_source_at: Option<u64>) -> JobGraph {
    let source =
        JobBuilder::new("co-scheduled", 2).source("numbers", move |info: &TaskInfo, out: &mut dyn Collector<u64>| {
            for i in 0..PER_SOURCE {
                if fail_source_at == Some(i) {
                    return Err(shmflow::Error::Invalid { what: "source", detail: "the source gives up".into() });
                }
                out.collect(i * 2 + u64::from(info.subtask))?;
            }
            accumulators::add("emitted", PER_SOURCE as i64);
            Ok(())
        });
    let sink = move |info: &TaskInfo| Ok(SlowSink { subtask: info.subtask, count: 0, sum: 0, fail_at: fail_sink_at });
    if middle {
        source.rebalance(None).map("same", |v: u64| v).key_by(|v: &u64| v).into_stream().sink("slow", sink)
    } else {
        source.key_by(|v: &u64| v).into_stream().sink("slow", sink)
    }
}

fn sum_all() -> i64 {
    (0..2 * PER_SOURCE).sum::<u64>() as i64
}

fn sink_threads(s: &JobSummary) -> Vec<String> {
    let Accumulator::List(l) = &s.accumulators["sink threads"] else { panic!("a list: {:?}", s.accumulators) };
    let mut l = l.clone();
    l.sort();
    l
}

#[test]
fn co_scheduled_sinks_read_every_record_once_on_their_sources_threads_under_backpressure() {
    const NAME: &str = "co_scheduled_sinks_read_every_record_once_on_their_sources_threads_under_backpressure";
    let Some(r) = run_as(NAME, job(false, None, None), true) else { return };
    let s = r.unwrap();
    assert_eq!(s.accumulators["emitted"], Accumulator::Sum(2 * PER_SOURCE as i64));
    assert_eq!(s.accumulators["received"], Accumulator::Sum(2 * PER_SOURCE as i64));
    assert_eq!(s.accumulators["sum"], Accumulator::Sum(sum_all()));
    // Sink s ran on the thread of source s (vertex 0, subtask s), not a thread of its own.
    assert_eq!(sink_threads(&s), ["0@0-0", "1@0-1"]);
    // The sources did wait on full outputs: the sinks' turns came from those waits.
    let back_pressured: f64 = s.edges.iter().map(|e| e.back_pressured_ms).sum();
    assert!(back_pressured > 0.0, "no back-pressure: {:?}", s.edges);
}

#[test]
fn without_co_scheduling_every_sink_has_a_thread_of_its_own() {
    const NAME: &str = "without_co_scheduling_every_sink_has_a_thread_of_its_own";
    let Some(r) = run_as(NAME, job(false, None, None), false) else { return };
    let s = r.unwrap();
    assert_eq!(s.accumulators["received"], Accumulator::Sum(2 * PER_SOURCE as i64));
    assert_eq!(sink_threads(&s), ["0@1-0", "1@1-1"]);
}

#[test]
fn a_vertex_with_an_output_between_keeps_its_own_thread_and_every_record_arrives() {
    const NAME: &str = "a_vertex_with_an_output_between_keeps_its_own_thread_and_every_record_arrives";
    let Some(r) = run_as(NAME, job(true, None, None), true) else { return };
    let s = r.unwrap();
    assert_eq!(s.accumulators["received"], Accumulator::Sum(2 * PER_SOURCE as i64));
    assert_eq!(s.accumulators["sum"], Accumulator::Sum(sum_all()));
    // The sinks (vertex 2) ride on the sources' threads; the map vertex has its own.
    assert_eq!(sink_threads(&s), ["0@0-0", "1@0-1"]);
}

#[test]
fn a_co_scheduled_sink_that_fails_fails_the_job_with_its_error() {
    const NAME: &str = "a_co_scheduled_sink_that_fails_fails_the_job_with_its_error";
    let Some(r) = run_as(NAME, job(false, Some(1000), None), true) else { return };
    let e = r.expect_err("a sink failed").to_string();
    assert!(e.contains("refuses it"), "{e}");
}

#[test]
fn a_source_that_fails_under_co_scheduling_fails_the_job_and_its_sinks_stop() {
    const NAME: &str = "a_source_that_fails_under_co_scheduling_fails_the_job_and_its_sinks_stop";
    let Some(r) = run_as(NAME, job(false, None, Some(50_000)), true) else { return };
    let e = r.expect_err("a source failed").to_string();
    assert!(e.contains("the source gives up"), "{e}");
}
