//! `shmflow top --once --json` against a running job: a slow downstream operator shows as a
//! back-pressured (HIGH) upstream task; a slow upstream one does not.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::shmflow;

struct Job(Child);

impl Drop for Job {
    fn drop(&mut self) {
        // SIGTERM: the coordinator stops its workers and removes its files.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(extra: &[&str]) -> Job {
    let child = shmflow()
        .args(["run", "shuffle", "--records", "50000000", "--parallelism", "1", "--workers", "2", "--quiet"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Job(child)
}

fn top(pid: u32) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = shmflow()
            .args(["top", "--pid", &pid.to_string(), "--once", "--json", "--interval-ms", "500"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let tasks = v["tasks"].as_array().map_or(0, |t| t.len());
            if tasks == 2 && v["tasks"][0]["records_out"].as_u64().unwrap_or(0) > 0 {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "top never saw the running job: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn source_status(v: &serde_json::Value) -> String {
    let t = v["tasks"].as_array().unwrap().iter().find(|t| t["vertex"] == 0).expect("the source task");
    t["back_pressure"].as_str().unwrap().to_string()
}

#[test]
fn top_shows_back_pressure_from_a_slow_sink_and_none_from_a_slow_source() {
    let slow_sink = start(&["--sink-work-ns", "5000"]);
    let v = top(slow_sink.0.id());
    assert_eq!(source_status(&v), "HIGH", "{v:#}");
    assert!(v["channels"].as_array().unwrap().iter().any(|c| c["backlog"].as_u64().unwrap() > 0), "{v:#}");
    drop(slow_sink);

    let slow_source = start(&["--source-work-ns", "5000"]);
    let v = top(slow_source.0.id());
    assert_eq!(source_status(&v), "OK", "{v:#}");
    drop(slow_source);
}

#[test]
fn top_refuses_a_process_without_an_arena() {
    // A process that surely holds no arena (this test binary may: other tests create some).
    let sleeper = common::KillOnDrop(std::process::Command::new("sleep").arg("30").spawn().unwrap());
    let out = shmflow().args(["top", "--pid", &sleeper.id().to_string(), "--once"]).output().unwrap();
    drop(sleeper);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no shmflow arena"));
}

#[test]
fn running_arenas_are_found_without_a_pid() {
    use shmflow::memory::{Arena, ArenaConfig};
    let arena = Arena::create_memfd(&ArenaConfig { segment_count: 16, ..ArenaConfig::default() }, "find-me").unwrap();
    let me = std::process::id();
    let found = Arena::find_all_memfd_arenas();
    let mine: Vec<_> = found.iter().filter(|(pid, _)| *pid == me).collect();
    assert!(!mine.is_empty(), "our own memfd arena is among {found:?}");
    // Each is listed once, and what is listed attaches read-only as an arena.
    let ours: Vec<_> = mine
        .iter()
        .filter(|(_, p)| std::fs::read_link(p).is_ok_and(|t| t.to_string_lossy().contains("find-me")))
        .collect();
    assert_eq!(ours.len(), 1, "{found:?}");
    let seen = Arena::attach_read_only(&ours[0].1).unwrap();
    assert_eq!(seen.segment_count(), arena.segment_count());
}
