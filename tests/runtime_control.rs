//! The coordinator <-> worker control protocol under misbehaving workers: a stopped
//! (SIGSTOP) worker of `shmflow run wordcount` fails the job with a heartbeat error, and
//! fake workers (this test binary, re-executed by the coordinator through
//! `RuntimeConfig::worker_args`) that send garbage, an oversized line, reports about tasks
//! that are not theirs, nothing at all, or never read, each fail the job with an error
//! naming the worker instead of hanging it.

use shmflow::runtime::{run_job, Collector, JobBuilder, JobGraph, RuntimeConfig, TaskInfo};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

mod common;
use common::{serial, shmflow, KillOnDrop, TempDir};

/// The variable a coordinator names its worker's control socket in.
const CONTROL_FD: &str = "SHMFLOW_CONTROL_FD";

/// The variable a coordinator passes its run's token to its workers in.
const TOKEN: &str = "SHMFLOW_RUN_TOKEN";

/// Bound of every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(60);

/// `(comm, state, ppid)` of process `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(String, char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let comm = s[open + 1..close].to_string();
    let mut rest = s[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

/// The pids of `parent`'s children.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(_, _, ppid)| ppid == parent))
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; `pid` is a worker of our coordinator child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A worker this test stopped: on drop (whatever state the test is in) it is killed if it
/// is still a `shmflow` worker of the coordinator, and continued if it still is a `shmflow`
/// process (an orphan then notices its closed control socket and exits).
struct Stopped {
    pid: u32,
    coordinator: u32,
}

impl Drop for Stopped {
    fn drop(&mut self) {
        match stat(self.pid) {
            Some((comm, _, ppid)) if comm == "shmflow" => {
                if ppid == self.coordinator {
                    signal(self.pid, libc::SIGKILL);
                }
                signal(self.pid, libc::SIGCONT);
            }
            _ => {}
        }
    }
}

#[test]
fn a_stopped_worker_fails_the_job_with_a_heartbeat_error() {
    let _serial = serial();
    let tmp = TempDir::new("control-stop");
    let out = tmp.0.join("counts");
    let mut coordinator = KillOnDrop(
        shmflow()
            // Large enough that the job is still running when its first progress lines come
            // (after two 1 s samples) on a fast machine; the text is generated as it is read.
            .args(["run", "wordcount", "--generated-mb", "5000", "--workers", "2", "--output"])
            .arg(&out)
            .env("SHMFLOW_HEARTBEAT_TIMEOUT_MS", "3000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shmflow"),
    );
    let cpid = coordinator.id();
    let (tx, lines) = mpsc::channel();
    let stderr = coordinator.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut said = Vec::new();
    // A progress line: the tasks run, so both workers have said hello.
    let deadline = Instant::now() + PATIENCE;
    while !said.last().is_some_and(|l: &String| l.contains("records/s in")) {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => said.push(l),
            Err(e) => panic!("no progress line from shmflow ({e:?}); it said:\n{}", said.join("\n")),
        }
    }
    let workers = children_of(cpid);
    assert_eq!(workers.len(), 2, "the coordinator's children: {workers:?}");
    let stopped = Stopped { pid: workers[0], coordinator: cpid };
    signal(stopped.pid, libc::SIGSTOP);
    let deadline = Instant::now() + PATIENCE;
    let status: ExitStatus = loop {
        if let Some(s) = coordinator.try_wait().expect("wait for shmflow") {
            break s;
        }
        assert!(Instant::now() < deadline, "shmflow still runs {PATIENCE:?} after its worker was stopped");
        std::thread::sleep(Duration::from_millis(20));
    };
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(l) => said.push(l),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("shmflow's stderr stayed open after it exited"),
        }
    }
    let said = said.join("\n");
    assert!(!status.success(), "the job succeeded with a stopped worker:\n{said}");
    let expected = format!("(pid {}) sent no heartbeat for 3 s: is it stopped or hung?", stopped.pid);
    assert!(said.contains(&expected), "no {expected:?} in:\n{said}");
    // The coordinator killed and reaped the stopped worker.
    assert!(
        stat(stopped.pid).is_none_or(|(comm, _, _)| comm != "shmflow"),
        "the stopped worker {} is still there",
        stopped.pid
    );
}

/// The sink of the fake jobs (never run: the fake workers run no task).
struct Discard;

impl Collector<u64> for Discard {
    fn collect(&mut self, _: u64) -> shmflow::Result<()> {
        Ok(())
    }
}

/// Runs a two-vertex job of `parallelism` (rebalance between them) on `workers` fake
/// workers of kind `fake` with heartbeat timeout `timeout_ms`; returns the job's error.
fn run_against(fake: &'static str, workers: u32, parallelism: u32, timeout_ms: u64) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let job = control_job(fake, parallelism);
        let config = RuntimeConfig {
            workers,
            segment_size: 4096,
            // Every producer keeps 2 x parallelism + 1 segments; as much again for the
            // channels' control regions.
            arena_size: 2 * u64::from(parallelism) * (2 * u64::from(parallelism) + 1) * 4096 + (64 << 20),
            heartbeat_timeout: Duration::from_millis(timeout_ms),
            worker_args: Some(
                ["--exact", &format!("fake_worker_{fake}"), "--nocapture", "--test-threads=1"].map(Into::into).to_vec(),
            ),
            ..RuntimeConfig::default()
        };
        let _ = tx.send(run_job(&job, &config).map(|s| s.records));
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(Ok(records)) => panic!("the job on fake workers {fake:?} succeeded ({records} records)"),
        Ok(Err(e)) => e.to_string(),
        Err(e) => panic!("the coordinator did not return ({e:?}) within {PATIENCE:?} on fake workers {fake:?}"),
    }
}

/// The job [`run_against`] runs on fake workers `fake`.
fn control_job(fake: &str, parallelism: u32) -> JobGraph {
    JobBuilder::new(&format!("control-{fake}"), parallelism)
        .source("numbers", |_: &TaskInfo, out: &mut dyn Collector<u64>| out.collect(1))
        .rebalance(None)
        .sink("discard", |_: &TaskInfo| Ok(Box::new(Discard) as Box<dyn Collector<u64>>))
}

/// A misbehaving worker of kind `mode`, when started by a coordinator: says hello (except
/// "mute"), reads its deployment (except "deaf"), misbehaves, then waits (bounded) for the
/// coordinator's Cancel or for its socket to close.
fn fake_worker(mode: &str) {
    let Some(fd) = std::env::var(CONTROL_FD).ok().and_then(|v| v.parse::<i32>().ok()) else { return };
    // SAFETY: the coordinator passed this process the open fd to own.
    let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
    sock.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(sock.try_clone().unwrap());
    let mut say = |line: &[u8]| {
        let _ = sock.write_all(line);
        let _ = sock.write_all(b"\n");
    };
    if mode != "mute" {
        // The Hello of a worker of this run (the coordinator refuses another's), except for
        // the fakes that pretend to be another run's or another job's.
        let job = control_job(mode, if mode == "deaf" { 200 } else { 1 });
        let token = if mode == "stranger" { "another run".into() } else { std::env::var(TOKEN).unwrap_or_default() };
        let name = if mode == "otherjob" { "another job".into() } else { job.name.clone() };
        let hello = serde_json::json!({"Hello": {"pid": std::process::id(), "token": token, "job": name, "graph": job.shape()}});
        say(hello.to_string().as_bytes());
    }
    if mode == "exits" {
        // Gone before it read its deployment: the coordinator sees a reset socket.
        std::process::exit(7);
    }
    if mode == "deaf" {
        // Never reads; killed by the coordinator, or gone once it is (bounded).
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        let deadline = Instant::now() + PATIENCE;
        // SAFETY: as above.
        while Instant::now() < deadline && unsafe { libc::getppid() } == parent {
            std::thread::sleep(Duration::from_millis(50));
        }
        return;
    }
    // The refused ones get no deployment: they wait for the Cancel below.
    if mode != "mute" && mode != "stranger" && mode != "otherjob" {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let deploy: serde_json::Value = serde_json::from_str(&line).unwrap();
        // A Cancel instead (the other fake failed the job first, before our Hello was
        // answered): nothing to misbehave with.
        let Some(subtasks) = deploy["Deploy"]["subtasks"].as_array() else { return };
        let mine: Vec<(u64, u64)> =
            subtasks.iter().map(|s| (s["vertex"].as_u64().unwrap(), s["subtask"].as_u64().unwrap())).collect();
        let finished = |(v, s): (u64, u64)| format!("{{\"TaskFinished\":{{\"vertex\":{v},\"subtask\":{s}}}}}");
        match mode {
            "garbage" => say(b"this is not a control message"),
            "oversized" => say(&vec![b' '; (16 << 20) + 1]),
            "foreign" => {
                let theirs = [(0, 0), (1, 0)].into_iter().find(|t| !mine.contains(t)).unwrap();
                say(finished(theirs).as_bytes());
            }
            "duplicate" => {
                say(finished(mine[0]).as_bytes());
                say(finished(mine[0]).as_bytes());
            }
            _ => {} // "silent": hello, then nothing
        }
    }
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.contains("Cancel") {
        line.clear();
    }
}

#[test]
fn fake_worker_garbage() {
    fake_worker("garbage");
}

#[test]
fn fake_worker_oversized() {
    fake_worker("oversized");
}

#[test]
fn fake_worker_foreign() {
    fake_worker("foreign");
}

#[test]
fn fake_worker_stranger() {
    fake_worker("stranger");
}

#[test]
fn fake_worker_otherjob() {
    fake_worker("otherjob");
}

#[test]
fn fake_worker_duplicate() {
    fake_worker("duplicate");
}

#[test]
fn fake_worker_silent() {
    fake_worker("silent");
}

#[test]
fn fake_worker_mute() {
    fake_worker("mute");
}

#[test]
fn fake_worker_deaf() {
    fake_worker("deaf");
}

#[test]
fn fake_worker_exits() {
    fake_worker("exits");
}

#[test]
fn a_worker_that_exits_at_startup_is_reported_with_its_exit_status() {
    let _serial = serial();
    let e = run_against("exits", 1, 1, 10_000);
    assert!(e.contains("exit status: 7") && !e.contains("malformed"), "{e}");
}

#[test]
fn a_malformed_or_oversized_message_fails_the_job_without_waiting_for_the_worker() {
    let _serial = serial();
    // The fake stays alive after the bad line: the coordinator must not wait for it to die.
    let e = run_against("garbage", 1, 1, 10_000);
    assert!(e.contains("worker 0 (pid ") && e.contains("sent a malformed control message: bad control message"), "{e}");
    let e = run_against("oversized", 1, 1, 10_000);
    assert!(e.contains("worker 0 (pid ") && e.contains("control message exceeds 16 MiB"), "{e}");
}

#[test]
fn a_report_on_a_task_that_is_not_the_workers_fails_the_job() {
    let _serial = serial();
    // Two workers, one task each: each fake reports the other's task finished.
    let e = run_against("foreign", 2, 1, 10_000);
    assert!(e.contains("broke the control protocol") && e.contains("was deployed to worker"), "{e}");
    // One worker with both tasks reports its first one finished twice.
    let e = run_against("duplicate", 1, 1, 10_000);
    assert!(e.contains("worker 0 (pid ") && e.contains("numbers (1/1) finished, which had already ended"), "{e}");
}

#[test]
fn a_worker_of_another_run_or_job_is_refused_before_it_is_deployed_anything() {
    let _serial = serial();
    // Another run's token: a worker that is not this coordinator's.
    let e = run_against("stranger", 1, 1, 10_000);
    assert!(e.contains("worker 0 (pid ") && e.contains("is not this job's worker, refused"), "{e}");
    assert!(e.contains("started by another run"), "{e}");
    // This run's token, another job: a worker whose main reached another run call (a test
    // binary's other test), as in the trial's two tests in one crate.
    let e = run_against("otherjob", 1, 1, 10_000);
    assert!(e.contains("its run builds job \"another job\"") && e.contains("\"control-otherjob\""), "{e}");
    assert!(e.contains("RuntimeConfig::worker_args"), "tells what to do: {e}");
}

#[test]
fn a_silent_worker_fails_the_job_after_the_heartbeat_timeout() {
    let _serial = serial();
    let e = run_against("silent", 1, 1, 2_000);
    assert!(e.contains("worker 0 (pid ") && e.contains("sent no heartbeat for 2 s: is it stopped or hung?"), "{e}");
    let e = run_against("mute", 1, 1, 500);
    assert!(e.contains("worker 0 (pid ") && e.contains("sent no first message within 0.5 s of its start"), "{e}");
}

#[test]
fn a_worker_that_never_reads_its_deployment_fails_the_job() {
    let _serial = serial();
    // Parallelism 200: the deployment (200 x 200 channels, about 1 MB) is larger than the
    // socket buffer of a default kernel, so the write blocks; on a host whose buffers hold
    // it, the worker's missing heartbeats fail the job instead. Either way: no hang.
    let e = run_against("deaf", 1, 200, 500);
    assert!(
        (e.contains("deploying subtasks to worker 0 (pid ") && e.contains("the worker read nothing for 0.5 s"))
            || e.contains("worker 0 (pid ") && e.contains("sent no heartbeat for 0.5 s"),
        "{e}"
    );
}
