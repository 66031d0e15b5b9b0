//! Plumbing shared by the multi-process tests: re-executing the test binary as a child in
//! some role, a guard that kills and reaps a child on drop, a child whose stdout arrives as
//! lines and whose stderr is collected, a temp dir that removes itself, and the `shmflow`
//! binary of this build.
//!
//! Each test file is its own crate and uses only some of these, hence `dead_code` is
//! allowed here.

#![allow(dead_code)]

use shmflow::memory::Arena;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

/// One multi-process test at a time (the machine has two vCPUs).
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The variable `name` parsed as a number, if set; panics if it is not a number.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// The `shmflow` binary of this build.
pub fn shmflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmflow"))
}

/// A command that re-executes this test binary running only the test `entry`, with
/// `role_env` set to `role` (the entry does nothing when that variable is not set).
pub fn self_command(entry: &str, role_env: &str, role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("path of the test binary"));
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"]).env(role_env, role);
    cmd
}

/// A child process that is killed and reaped when this guard drops (a no-op kill after a
/// clean exit), whatever state the test is in. Derefs to the [`Child`].
pub struct KillOnDrop(pub Child);

impl Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `stderr` to its end on a thread of its own (so the child never blocks on a full
/// pipe); the thread returns the text.
pub fn collect_stderr(stderr: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut s);
        s
    })
}

/// A spawned child with all three standard streams piped: stdout arrives line by line on
/// `lines` (a reader thread), stderr is collected by the `stderr` thread.
pub struct Piped {
    /// The child, killed and reaped on drop.
    pub child: KillOnDrop,
    pub stdin: Option<ChildStdin>,
    /// The child's stdout lines; disconnected once stdout closes.
    pub lines: Receiver<String>,
    /// Everything the child wrote to stderr, once it closes it.
    pub stderr: JoinHandle<String>,
}

impl Piped {
    /// Pipes the three streams of `cmd` and spawns it.
    pub fn spawn(cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = KillOnDrop(cmd.spawn().expect("spawn the child test process"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = collect_stderr(stderr);
        let stdin = child.stdin.take();
        Self { child, stdin, lines, stderr }
    }
}

/// The rest of `line` after `marker` (the harness may print "test child_entry ... " before
/// the child's first line).
pub fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

/// A child process running a test entry in some role, which reports on stdout with
/// `SHMFLOW_...` lines. Dropping it kills and reaps it. Every wait is bounded by
/// `op_timeout`; a failure panics with everything the child said.
pub struct ChildProc {
    /// Names the child in failure messages.
    pub name: String,
    pub child: KillOnDrop,
    pub stdin: Option<ChildStdin>,
    pub lines: Receiver<String>,
    /// Every stdout line received so far.
    pub seen: Vec<String>,
    pub stderr: Option<JoinHandle<String>>,
    /// The exit status, once [`ChildProc::try_exit`] has seen it.
    pub exited: Option<ExitStatus>,
    /// Bound of one wait for a line.
    pub op_timeout: Duration,
}

impl ChildProc {
    /// Spawns `cmd` (a [`self_command`] with the child's environment) with piped streams.
    pub fn start(name: String, mut cmd: Command, arena: &Arena, op_timeout: Duration) -> Self {
        arena.inherit_fd_into(&mut cmd).expect("a memfd arena can be inherited");
        let Piped { child, stdin, lines, stderr } = Piped::spawn(&mut cmd);
        Self { name, child, stdin, lines, seen: Vec::new(), stderr: Some(stderr), exited: None, op_timeout }
    }

    /// Kills the child (if still running) and panics with `msg` and what the child said.
    pub fn fail(&mut self, msg: impl std::fmt::Display) -> ! {
        panic!("{msg}\n{}", self.output());
    }

    /// Kills the child (if still running) and returns everything it said.
    pub fn output(&mut self) -> String {
        let _ = self.child.kill();
        let status = self.child.wait();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        format!("--- child {} ({status:?}) stdout:\n{}\n--- child stderr:\n{stderr}", self.name, self.seen.join("\n"))
    }

    /// The rest of the first stdout line holding `prefix`, if one has arrived.
    pub fn try_line(&mut self, prefix: &str) -> Option<String> {
        loop {
            match self.lines.try_recv() {
                Ok(l) => {
                    let hit = after(&l, prefix).map(str::to_string);
                    self.seen.push(l);
                    if hit.is_some() {
                        return hit;
                    }
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => self.fail(format!("the child closed stdout before {prefix}")),
            }
        }
    }

    /// Waits (bounded) for a stdout line holding `prefix`; returns the rest of it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + self.op_timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    let hit = after(&l, prefix).map(str::to_string);
                    self.seen.push(l);
                    if let Some(rest) = hit {
                        return rest;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let t = self.op_timeout;
                    self.fail(format!("no {prefix} line from the child in {t:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => self.fail(format!("the child closed stdout before {prefix}")),
            }
        }
    }

    /// Sends one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        let r = self.stdin.as_mut().map(|s| writeln!(s, "{line}").and_then(|()| s.flush()));
        if !matches!(r, Some(Ok(()))) {
            self.fail(format!("could not send {line:?} to the child: {r:?}"));
        }
    }

    /// The exit status, once the child has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            match self.child.try_wait() {
                Ok(s) => self.exited = s,
                Err(e) => self.fail(format!("waiting for the child: {e}")),
            }
        }
        self.exited
    }

    /// After the child exited: collects the rest of stdout (bounded), fails on an
    /// `SHMFLOW_ERROR` line and returns the `k=v` pairs of its `SHMFLOW_RESULT` line.
    pub fn result_values(&mut self) -> HashMap<String, String> {
        // The child has exited, so its stdout reaches EOF and the reader thread ends.
        let deadline = Instant::now() + self.op_timeout;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) => self.seen.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => self.fail("the child's stdout stayed open after it exited"),
            }
        }
        if let Some(e) = self.seen.iter().find_map(|l| after(l, "SHMFLOW_ERROR")) {
            let e = e.to_string();
            self.fail(format!("the child reported {e}"));
        }
        let Some(result) = self.seen.iter().find_map(|l| after(l, "SHMFLOW_RESULT ")) else {
            self.fail("the child printed no SHMFLOW_RESULT line");
        };
        result
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// A directory of its own under the system temp dir (`shmflow-test-{tag}-{pid}`), removed
/// with everything in it on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("shmflow-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pids of `pid`'s children (from /proc), sorted.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in rd.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}
