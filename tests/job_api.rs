//! The job API across worker processes: parallelism per operator, accumulators back in the
//! job summary, `exchange_with` refusing a key-hash exchange it cannot route.
//!
//! The jobs run across worker processes that re-run this test binary on the test that
//! started them (`--exact NAME`): in a worker, `run` runs the deployed tasks and the test
//! returns.

use shmflow::partition::{ResultPartitionType, SelectorKind};
use shmflow::runtime::accumulators::{self, Accumulator};
use shmflow::runtime::{is_worker, run, Collector, JobBuilder, JobGraph, JobSummary, RuntimeConfig, TaskInfo};

fn run_as(test: &str, job: JobGraph) -> shmflow::Result<Option<JobSummary>> {
    let config = RuntimeConfig {
        workers: 2,
        worker_args: Some(["--exact", test, "--nocapture", "--test-threads=1"].map(Into::into).to_vec()),
        ..RuntimeConfig::default()
    };
    run(job, &config)
}

/// Counts the (key, count) pairs it receives; reports its subtask once per key.
struct KeyedSink {
    subtask: u32,
}

impl Collector<(u64, u64)> for KeyedSink {
    fn collect(&mut self, (k, c): (u64, u64)) -> shmflow::Result<()> {
        accumulators::add("keys", 1);
        accumulators::add("count", c as i64);
        if k < 3 {
            accumulators::collect("first keys at", format!("{k}@{}", self.subtask));
        }
        Ok(())
    }
}

/// One generator subtask of 0..100000 (as (i % 100, 1)), key_by at parallelism 3, a sum per
/// key, sinks at the keyed vertex's parallelism.
fn keyed_job() -> JobGraph {
    JobBuilder::new("per-operator", 2)
        .source("numbers", |_: &TaskInfo, out: &mut dyn Collector<(u64, u64)>| {
            for i in 0..100_000u64 {
                out.collect((i % 100, 1))?;
            }
            accumulators::add("emitted", 100_000);
            Ok(())
        })
        .parallelism(1)
        .key_by(|t: &(u64, u64)| &t.0)
        .parallelism(3)
        .reduce("sum", |acc, v| acc.1 += v.1)
        .sink("count", |info: &TaskInfo| Ok(KeyedSink { subtask: info.subtask }))
}

#[test]
fn parallelism_per_operator_and_accumulators_come_back_in_the_summary() {
    const NAME: &str = "parallelism_per_operator_and_accumulators_come_back_in_the_summary";
    let job = keyed_job();
    if is_worker() {
        let _ = run_as(NAME, job);
        return;
    }
    let p: Vec<u32> = job.vertices.iter().map(|v| v.parallelism).collect();
    assert_eq!(p, [1, 3], "source at 1, the keyed vertex at 3");
    let s = run_as(NAME, job).unwrap().expect("the coordinator's summary");
    assert_eq!(s.subtasks, 4);
    assert_eq!(s.accumulators["emitted"], Accumulator::Sum(100_000));
    assert_eq!(s.accumulators["keys"], Accumulator::Sum(100));
    assert_eq!(s.accumulators["count"], Accumulator::Sum(100_000));
    let Accumulator::List(firsts) = &s.accumulators["first keys at"] else { panic!("a list: {:?}", s.accumulators) };
    let mut keys: Vec<&str> = firsts.iter().map(|x| x.split('@').next().unwrap()).collect();
    keys.sort();
    assert_eq!(keys, ["0", "1", "2"], "each key once, at one of the 3 sinks: {firsts:?}");
    assert!(firsts.iter().all(|x| ["@0", "@1", "@2"].iter().any(|s| x.ends_with(s))), "{firsts:?}");
}

#[test]
fn exchange_with_refuses_a_key_hash_exchange_it_cannot_route() {
    let stream = JobBuilder::new("x", 2).source("s", |_: &TaskInfo, _: &mut dyn Collector<u64>| Ok(()));
    let e = stream.exchange_with(SelectorKind::KeyHash, ResultPartitionType::PipelinedBounded, None).err();
    let e = e.expect("key hash through exchange_with is an error");
    assert!(matches!(e, shmflow::Error::Graph(shmflow::runtime::GraphError::KeyHashWithoutKey)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("key_by"), "{e}");
    let stream = JobBuilder::new("x", 2).source("s", |_: &TaskInfo, _: &mut dyn Collector<u64>| Ok(()));
    assert!(stream.exchange_with(SelectorKind::Rebalance, ResultPartitionType::Blocking, Some(3)).is_ok());
}

/// Sums what it receives into accumulator `name`.
struct SumInto(&'static str);

impl Collector<u64> for SumInto {
    fn collect(&mut self, v: u64) -> shmflow::Result<()> {
        accumulators::add(self.0, v as i64);
        Ok(())
    }
}

#[test]
fn two_sinks_on_one_stream_both_get_every_value() {
    const NAME: &str = "two_sinks_on_one_stream_both_get_every_value";
    let job = JobBuilder::new("two-sinks", 2)
        .source("numbers", |info: &TaskInfo, out: &mut dyn Collector<u64>| {
            for i in 0..1000u64 {
                out.collect(i * 2 + u64::from(info.subtask))?;
            }
            Ok(())
        })
        .rebalance(None)
        .sink_both("sum twice", |_: &TaskInfo| Ok(SumInto("a")), |_: &TaskInfo| Ok(SumInto("b")));
    if is_worker() {
        let _ = run_as(NAME, job);
        return;
    }
    let s = run_as(NAME, job).unwrap().expect("the coordinator's summary");
    let want = Accumulator::Sum((0..2000).sum());
    assert_eq!(s.accumulators["a"], want);
    assert_eq!(s.accumulators["b"], want);
}

#[test]
fn a_union_of_two_streams_reads_both() {
    const NAME: &str = "a_union_of_two_streams_reads_both";
    let job = JobBuilder::new("union", 2);
    let evens = job
        .clone()
        .source("evens", |_: &TaskInfo, out: &mut dyn Collector<u64>| (0..1000u64).try_for_each(|i| out.collect(2 * i)))
        .parallelism(1);
    let odds = job
        .source("odds", |info: &TaskInfo, out: &mut dyn Collector<u64>| {
            (0..500u64).try_for_each(|i| out.collect(4 * i + 1 + 2 * u64::from(info.subtask)))
        })
        .map("+0", |v| v);
    let job = evens.union(odds).filter("all", |_| true).sink("sum", |_: &TaskInfo| Ok(SumInto("sum")));
    if is_worker() {
        let _ = run_as(NAME, job);
        return;
    }
    let ins: Vec<usize> = job.vertices.iter().map(|v| v.inputs.len()).collect();
    assert_eq!(ins, [0, 0, 2], "two sources, one vertex reading both");
    let s = run_as(NAME, job).unwrap().expect("the coordinator's summary");
    assert_eq!(s.accumulators["sum"], Accumulator::Sum((0..2000).sum()), "every even and odd number below 2000");
    assert_eq!(s.edges.len(), 2, "{:?}", s.edges);
    assert_eq!(s.records, 2000, "records from both sources");
}

#[test]
fn a_bad_graph_and_a_bad_setting_are_refused_with_typed_errors_before_anything_runs() {
    use shmflow::error::ConfigError;
    use shmflow::runtime::{ExecutionGraph, GraphError};
    let job = JobBuilder::new("x", 2)
        .source("s", |_: &TaskInfo, _: &mut dyn Collector<u64>| Ok(()))
        .forward()
        .parallelism(3)
        .sink("k", |_: &TaskInfo| Ok(SumInto("k")));
    let e = ExecutionGraph::build(&job, 0).expect_err("forward 2 -> 3");
    assert!(matches!(e, shmflow::Error::Graph(GraphError::ForwardParallelism { producer: 2, consumer: 3 })), "{e:?}");
    assert_eq!(e.to_string(), "invalid forward edge: parallelism 2 -> 3: forward needs equal parallelism");
    let job = JobBuilder::new("y", 2)
        .source("s", |_: &TaskInfo, _: &mut dyn Collector<u64>| Ok(()))
        .sink("k", |_: &TaskInfo| Ok(SumInto("k")));
    let graph = ExecutionGraph::build(&job, 0).expect("a one-vertex job");
    let config = RuntimeConfig { workers: 0, ..RuntimeConfig::default() };
    let e = config.arena_config(&job, &graph).expect_err("0 workers");
    assert!(matches!(e, shmflow::Error::Config(ConfigError::OutOfRange { what: "--workers", value: 0, .. })), "{e:?}");
    assert_eq!(e.to_string(), "invalid --workers: 0 not in 1..=256");
}

#[test]
fn a_worker_whose_graph_differs_from_the_coordinators_refuses_the_deployment_naming_the_vertex() {
    const NAME: &str = "a_worker_whose_graph_differs_from_the_coordinators_refuses_the_deployment_naming_the_vertex";
    // The same vertex count and parallelism, another operator name in the workers: as a
    // `main` that builds its graph from something besides its arguments would.
    let op = if is_worker() { "double" } else { "square" };
    let job = JobBuilder::new("differs", 2)
        .source("numbers", |_: &TaskInfo, out: &mut dyn Collector<u64>| (0..100u64).try_for_each(|i| out.collect(i)))
        .rebalance(None)
        .map(op, |v| v)
        .sink("sum", |_: &TaskInfo| Ok(SumInto("sum")));
    if is_worker() {
        let _ = run_as(NAME, job);
        return;
    }
    let e = run_as(NAME, job).expect_err("the workers' graph differs").to_string();
    assert!(e.contains("is not this job's worker") && e.contains("another graph"), "{e}");
    assert!(e.contains("square") && e.contains("double"), "names both: {e}");
}

/// A job summing 0..n into accumulator "sum", named `name`.
fn sum_job(name: &str, n: u64) -> JobGraph {
    JobBuilder::new(name, 2)
        .source("numbers", move |info: &TaskInfo, out: &mut dyn Collector<u64>| {
            (u64::from(info.subtask)..n).step_by(info.parallelism as usize).try_for_each(|i| out.collect(i))
        })
        .rebalance(None)
        .sink("sum", |_: &TaskInfo| Ok(SumInto("sum")))
}

#[test]
fn a_worker_whose_run_builds_another_job_is_refused_never_merged() {
    const NAME: &str = "a_worker_whose_run_builds_another_job_is_refused_never_merged";
    // The workers reach a run of another job of the same shape, as a worker of one test
    // reached another test's run in the trial (and ran it with this coordinator's
    // deployment: a merged, wrong sum).
    if is_worker() {
        let _ = run_as(NAME, sum_job("other", 500));
        return;
    }
    let e = run_as(NAME, sum_job("mine", 1000)).expect_err("the workers run another job").to_string();
    assert!(e.contains("is not this job's worker, refused"), "{e}");
    assert!(e.contains("its run builds job \"other\", this coordinator runs job \"mine\""), "{e}");
    assert!(e.contains("worker_args"), "says what to do: {e}");
}

#[test]
fn a_second_run_in_a_worker_returns_none_and_the_first_job_succeeds() {
    const NAME: &str = "a_second_run_in_a_worker_returns_none_and_the_first_job_succeeds";
    if is_worker() {
        // The first run runs the deployed tasks; the second (before: a second owner of the
        // control fd, which closed it twice, and the process aborted with "IO Safety
        // violation") finds the control socket taken and does nothing.
        let first = run_as(NAME, sum_job("first", 1000));
        let second = run_as(NAME, sum_job("second", 2000));
        assert!(matches!((&first, &second), (Ok(None), Ok(None))), "{first:?} {second:?}");
        return;
    }
    let s = run_as(NAME, sum_job("first", 1000)).unwrap().expect("the coordinator's summary");
    assert_eq!(s.accumulators["sum"], Accumulator::Sum(1000 * 999 / 2));
}
