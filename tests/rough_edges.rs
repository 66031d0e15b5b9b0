//! The rough edges of the command line an operator meets (issue 15): stop signals, a
//! coordinator killed by SIGKILL and what it leaves behind, a stale temp output. Every run
//! gets a temp dir of its own (`TMPDIR`), so the job directories checked are its own.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

mod common;
use common::{children_of, serial, shmflow, KillOnDrop, TempDir};

/// Bound of every wait here.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `shmflow` run whose stderr arrives line by line.
struct Run {
    child: KillOnDrop,
    lines: Receiver<String>,
    said: Vec<String>,
}

impl Run {
    /// `shmflow args...` with `TMPDIR=tmp`.
    fn start(tmp: &Path, args: &[&str]) -> Self {
        let mut cmd = shmflow();
        cmd.args(args).env("TMPDIR", tmp);
        Self::spawn(cmd)
    }

    /// `cmd` with stdin and stdout null, stderr piped.
    fn spawn(mut cmd: std::process::Command) -> Self {
        let mut child = KillOnDrop(
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start shmflow"),
        );
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, said: Vec::new() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the job runs: both workers started their task threads (a worker runs
    /// its main, heartbeat and control threads, then a thread and an event thread per task).
    fn wait_running(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let workers = children_of(self.pid());
            let threads = |w: &u32| std::fs::read_dir(format!("/proc/{w}/task")).map_or(0, Iterator::count);
            if workers.len() == 2 && workers.iter().all(|w| threads(w) >= 5) {
                return;
            }
            if let Some(s) = self.child.try_wait().expect("wait for shmflow") {
                panic!("shmflow ended ({s}) before its job ran: {:?}", self.finish().1);
            }
            assert!(Instant::now() < deadline, "the job was not running within {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) has no memory effects; the pid is our child's (not reaped yet).
        unsafe {
            libc::kill(self.pid() as libc::pid_t, sig);
        }
    }

    /// Waits (bounded) for the exit; returns it with every stderr line but the progress
    /// lines. Stderr is read to its end, which comes when every process holding it (the
    /// workers too) is gone.
    fn finish(&mut self) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for shmflow") {
                break s;
            }
            assert!(Instant::now() < deadline, "shmflow still runs after {PATIENCE:?}");
            std::thread::sleep(Duration::from_millis(10));
        };
        loop {
            match self.lines.recv_timeout(PATIENCE) {
                Ok(l) => self.said.push(l),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("shmflow's stderr stayed open: {:?}", self.said),
            }
        }
        (status, self.said.iter().filter(|l| !l.contains("records/s in")).cloned().collect())
    }
}

/// Everything under `dir` but `keep`, by name.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}

/// A pid that no process has (a child that already exited and was reaped).
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().expect("spawn true");
    let pid = c.id();
    c.wait().expect("reap true");
    pid
}

/// A wordcount that runs for minutes unless stopped (the text is generated as it is read).
fn long_wordcount(tmp: &Path, out: &Path) -> Run {
    Run::start(tmp, &["run", "wordcount", "--generated-mb", "100000", "--output", out.to_str().unwrap()])
}

#[test]
fn sigint_sigterm_and_sighup_stop_a_running_job_with_one_line_and_status_128_plus_the_signal() {
    let _serial = serial();
    for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM"), (libc::SIGHUP, "SIGHUP")] {
        let tmp = TempDir::new(&format!("sig{sig}"));
        let out = tmp.0.join("counts");
        let mut run = long_wordcount(&tmp.0, &out);
        // Progress: the workers run their tasks.
        run.wait_running();
        let workers = children_of(run.pid());
        assert_eq!(workers.len(), 2, "{name}: the coordinator's children: {workers:?}");
        run.signal(sig);
        let (status, said) = run.finish();
        assert_eq!(status.code(), Some(128 + sig), "{name}: {status:?}, said {said:?}");
        assert_eq!(said, ["shmflow: interrupted"], "{name}: one line, none from the workers");
        assert_eq!(leftovers(&tmp.0, &[]), Vec::<String>::new(), "{name}: no job dir, no temp output");
        for w in workers {
            assert!(!Path::new(&format!("/proc/{w}")).exists(), "{name}: worker {w} still exists");
        }
    }
}

#[test]
fn ctrl_c_at_a_terminal_which_signals_the_whole_process_group_says_one_line() {
    use std::os::unix::process::CommandExt;
    let _serial = serial();
    let tmp = TempDir::new("sigpgrp");
    let out = tmp.0.join("counts");
    let mut cmd = shmflow();
    // A process group of its own, as a shell gives a foreground job.
    cmd.process_group(0)
        .args(["run", "wordcount", "--generated-mb", "100000", "--output", out.to_str().unwrap()])
        .env("TMPDIR", &tmp.0);
    let mut run = Run::spawn(cmd);
    run.wait_running();
    // SAFETY: kill(2) has no memory effects; the group is the coordinator's and its workers'.
    unsafe {
        libc::kill(-(run.pid() as libc::pid_t), libc::SIGINT);
    }
    let (status, said) = run.finish();
    assert_eq!(status.code(), Some(130), "{status:?}, said {said:?}");
    assert_eq!(said, ["shmflow: interrupted"]);
    assert_eq!(leftovers(&tmp.0, &[]), Vec::<String>::new());
}

#[test]
fn ctrl_c_while_the_output_is_merged_ends_the_run_and_leaves_nothing() {
    let _serial = serial();
    let tmp = TempDir::new("sigmerge");
    // Distinct words make a long merge: the part files hold one line per word.
    let input = tmp.0.join("words.txt");
    let text: String = (0..500_000).map(|i| format!("w{i}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let out = tmp.0.join("counts");
    let mut run = Run::start(
        &tmp.0,
        &["run", "wordcount", "--quiet", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()],
    );
    // The merge starts once the workers have exited: wait until they came and went.
    let deadline = Instant::now() + PATIENCE;
    let mut seen = false;
    loop {
        let now = children_of(run.pid());
        if !now.is_empty() {
            seen = true;
        } else if seen {
            break;
        }
        assert!(Instant::now() < deadline, "the workers did not come and go within {PATIENCE:?}");
        assert!(run.child.try_wait().unwrap().is_none(), "the run ended before its merge was seen");
        std::thread::sleep(Duration::from_millis(2));
    }
    run.signal(libc::SIGINT);
    let (status, said) = run.finish();
    assert_eq!(status.code(), Some(130), "{status:?}, said {said:?}");
    assert_eq!(said, ["shmflow: interrupted"]);
    assert_eq!(leftovers(&tmp.0, &["words.txt"]), Vec::<String>::new(), "no output, temp output or job dir");
}

#[test]
fn a_sigkilled_coordinators_workers_say_it_died_and_clean_removes_what_it_left() {
    let _serial = serial();
    let tmp = TempDir::new("sigkill");
    let out = tmp.0.join("counts");
    let mut run = long_wordcount(&tmp.0, &out);
    run.wait_running();
    let pid = run.pid();
    run.signal(libc::SIGKILL);
    // Stderr ends when the orphaned workers have exited too.
    let (status, said) = run.finish();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let died = format!("the coordinator (pid {pid}) died");
    assert_eq!(said.iter().filter(|l| l.contains(&died)).count(), 2, "each worker says why it stops: {said:?}");
    assert!(said.iter().all(|l| l.contains(&died)), "nothing else: {said:?}");
    let temp_output = format!("counts.tmp-{pid}");
    let left = leftovers(&tmp.0, &[]);
    assert!(left.contains(&temp_output), "the killed run's temp output: {left:?}");
    assert!(left.iter().any(|n| n.starts_with(&format!("shmflow-job-{pid}-"))), "its job dir: {left:?}");
    // A temp output of a live process (this test) is kept.
    let live = tmp.0.join(format!("counts.tmp-{}", std::process::id()));
    std::fs::write(&live, "").unwrap();
    let clean = clean_in(&tmp.0);
    let text = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{text}{}", String::from_utf8_lossy(&clean.stderr));
    assert_eq!(leftovers(&tmp.0, &[]), [format!("counts.tmp-{}", std::process::id())], "clean said:\n{text}");
}

#[test]
fn a_sigkilled_coordinators_workers_stop_though_their_sinks_hold_minutes_of_work() {
    // A sink that takes 100 ms per record, with full segments in flight: before the orphan
    // backstop the workers worked through every record in flight first (hours; the trial
    // saw minutes at 1 ms a record) and stderr stayed open past PATIENCE.
    let _serial = serial();
    let tmp = TempDir::new("sigkillslow");
    let mut run = Run::start(
        &tmp.0,
        &["run", "shuffle", "--quiet", "--records", "100000000", "--payload", "16", "--sink-work-ns", "100000000"],
    );
    run.wait_running();
    // Let the generators fill what the exchange can hold.
    std::thread::sleep(Duration::from_millis(500));
    let pid = run.pid();
    let workers = children_of(pid);
    assert_eq!(workers.len(), 2, "two workers run");
    // Should the backstop regress, the test still stops the workers it started.
    let _reap = KillPids(workers.clone());
    run.signal(libc::SIGKILL);
    // Stderr ends when the orphaned workers have exited too (bounded by PATIENCE).
    let (status, said) = run.finish();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let died = format!("the coordinator (pid {pid}) died");
    assert!(said.iter().any(|l| l.contains(&died)), "the workers say why they stop: {said:?}");
    for w in workers {
        assert!(!std::path::Path::new(&format!("/proc/{w}")).exists() || zombie(w), "worker {w} is gone: {said:?}");
    }
    let clean = clean_in(&tmp.0);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
}

/// `shmflow clean` with its temp and shared-memory directories both `dir`.
fn clean_in(dir: &Path) -> std::process::Output {
    shmflow().arg("clean").env("TMPDIR", dir).env("SHMFLOW_SHM_DIR", dir).output().expect("run shmflow clean")
}

/// SIGKILLs its pids on drop (processes a test started that outlived their parent).
struct KillPids(Vec<u32>);

impl Drop for KillPids {
    fn drop(&mut self) {
        for &p in &self.0 {
            // Only a shmflow process: the pid of one that exited may have been reused.
            let ours = std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.windows(b"shmflow".len()).any(|w| w == b"shmflow"));
            if ours {
                // SAFETY: kill(2) takes any pid and signal; a pid that is gone is ESRCH.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// Whether `pid` is a zombie (exited, not yet reaped by its parent).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}

#[test]
fn the_next_run_of_an_output_removes_a_stale_temp_file_and_keeps_a_live_ones() {
    let _serial = serial();
    let tmp = TempDir::new("staletmp");
    let out: PathBuf = tmp.0.join("counts");
    let stale = tmp.0.join(format!("counts.tmp-{}", dead_pid()));
    let live = tmp.0.join(format!("counts.tmp-{}", std::process::id()));
    let other = tmp.0.join(format!("other.tmp-{}", dead_pid()));
    for f in [&stale, &live, &other] {
        std::fs::write(f, "partial").unwrap();
    }
    let mut run =
        Run::start(&tmp.0, &["run", "wordcount", "--quiet", "--generated-mb", "1", "--output", out.to_str().unwrap()]);
    let (status, said) = run.finish();
    assert!(status.success(), "{said:?}");
    assert!(!stale.exists(), "the dead run's temp file is gone");
    assert!(live.exists() && other.exists(), "a live pid's temp file and another output's stay");
    assert!(out.exists());
    assert!(said.iter().any(|l| l.contains("removed") && l.contains(&stale.display().to_string())), "{said:?}");
}

/// Waits (bounded) for `child` to exit.
fn exit_of(child: &mut KillOnDrop, what: &str) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} still runs after {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `shmflow args...` with stdout and stderr piped; its stdout arrives as lines.
fn observer(args: &[&str]) -> (KillOnDrop, Receiver<String>, std::thread::JoinHandle<String>) {
    let mut child = KillOnDrop(
        shmflow().args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap(),
    );
    let stdout = child.stdout.take().unwrap();
    let stderr = common::collect_stderr(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (child, rx, stderr)
}

#[test]
fn top_and_check_refuse_a_fifo_or_directory_instead_of_hanging() {
    let _serial = serial();
    let tmp = TempDir::new("fifo");
    let fifo = tmp.0.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    for (args, what) in [
        (vec!["check", "--path"], "a FIFO"),
        (vec!["top", "--once", "--path"], "a FIFO"),
        (vec!["check", "--path"], "a directory"),
    ] {
        let target = if what == "a FIFO" { &fifo } else { &tmp.0 };
        let (mut child, _, stderr) = observer(&[args.as_slice(), &[target.to_str().unwrap()]].concat());
        let status = exit_of(&mut child, "shmflow on a FIFO");
        let err = stderr.join().unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("is {what}, not an arena file")), "{args:?}: {err}");
    }
}

#[test]
fn top_survives_a_named_arena_truncated_under_it_with_an_error() {
    use shmflow::memory::{Arena, ArenaConfig};
    let _serial = serial();
    let name = format!("shmflow-test-truncated-{}", std::process::id());
    // Removed from /dev/shm when it drops.
    let _arena = Arena::create_named(&name, &ArenaConfig::default()).expect("a named arena");
    let (mut top, lines, stderr) = observer(&["top", "--json", "--interval-ms", "20", "--name", &name]);
    lines.recv_timeout(PATIENCE).expect("a first view from top");
    std::fs::OpenOptions::new().write(true).open(Path::new("/dev/shm").join(&name)).unwrap().set_len(0).unwrap();
    let status = exit_of(&mut top, "top on a truncated arena");
    let err = stderr.join().unwrap();
    assert_eq!(status.signal(), None, "top was killed: {err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("was truncated under us"), "{err}");
}

#[test]
fn top_on_a_job_exits_when_the_job_ends() {
    let _serial = serial();
    let tmp = TempDir::new("topend");
    let mut run = long_wordcount(&tmp.0, &tmp.0.join("counts"));
    run.wait_running();
    let pid = run.pid().to_string();
    let (mut top, lines, stderr) = observer(&["top", "--json", "--interval-ms", "20", "--pid", &pid]);
    lines.recv_timeout(PATIENCE).expect("a first view from top");
    run.signal(libc::SIGINT);
    let (status, _) = run.finish();
    assert_eq!(status.code(), Some(130));
    let status = exit_of(&mut top, "top --pid after its job ended");
    // Everything top printed: its reader thread ends at the pipe's end (a line can still be
    // on its way after top exited).
    let until = Instant::now() + PATIENCE;
    let mut said = Vec::new();
    while let Ok(l) = lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
        said.push(l);
    }
    assert!(status.success(), "{status:?}: {}", stderr.join().unwrap());
    assert!(said.iter().any(|l| l.contains(&format!("the job of process {pid} ended"))), "{said:?}");
}

#[test]
fn top_and_check_say_permission_denied_for_another_users_arena_or_job() {
    use shmflow::memory::{Arena, ArenaConfig};
    use std::os::unix::process::CommandExt;
    let _serial = serial();
    let name = format!("shmflow-test-foreign-{}", std::process::id());
    let _named = Arena::create_named(&name, &ArenaConfig::default()).expect("a named arena");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let as_other = |args: &[&str]| {
        let mut cmd = shmflow();
        cmd.args(args);
        if root {
            // Another user: nobody.
            cmd.uid(65534).gid(65534);
        }
        let out = cmd.output().expect("run shmflow");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    if !root {
        // Not root: the owner is locked out by the mode instead.
        use std::os::unix::fs::PermissionsExt;
        let p = Path::new("/dev/shm").join(&name);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let (status, err) = as_other(&["check", "--name", &name]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied") && err.contains(&name), "{err}");
    if root {
        assert!(err.contains("belongs to uid 0"), "{err}");
        // A job of another user picked by pid: this test process, holding a memfd arena.
        let _memfd = Arena::create_memfd(&ArenaConfig::default(), "foreign").unwrap();
        let (status, err) = as_other(&["top", "--once", "--pid", &std::process::id().to_string()]);
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(err.contains("permission denied") && err.contains("belongs to uid 0"), "{err}");
    }
}

/// `shmflow args...` with `envs`, in `TMPDIR=tmp`, to its end: (exit code, stdout, stderr).
fn cli(tmp: &Path, envs: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let out = shmflow().args(args).envs(envs.iter().copied()).env("TMPDIR", tmp).output().expect("run shmflow");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SMALL_WORDCOUNT: [&str; 5] = ["run", "wordcount", "--quiet", "--generated-mb", "1"];

#[test]
fn an_input_the_kernel_sizes_as_empty_but_with_content_is_refused_not_counted_as_nothing() {
    let _serial = serial();
    let tmp = TempDir::new("procinput");
    let (code, out, err) = cli(&tmp.0, &[], &["run", "wordcount", "--quiet", "--input", "/proc/version"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("reports a size of 0 bytes but has content"), "{err}");
    // A file that really is empty still counts zero words.
    let empty = tmp.0.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (code, out, err) = cli(&tmp.0, &[], &["run", "wordcount", "--quiet", "--input", empty.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("0 distinct words, 0 words"), "{out}");
}

#[test]
fn environment_variables_are_checked_with_the_ranges_of_their_flags() {
    let _serial = serial();
    let tmp = TempDir::new("envrange");
    for (env, flag) in [(Some("50"), None), (None, Some("50")), (Some("3600001"), None), (None, Some("3600001"))] {
        let mut args = SMALL_WORDCOUNT.to_vec();
        if let Some(f) = flag {
            args.extend(["--heartbeat-timeout-ms", f]);
        }
        let envs: Vec<(&str, &str)> = env.map(|v| ("SHMFLOW_HEARTBEAT_TIMEOUT_MS", v)).into_iter().collect();
        let (code, _, err) = cli(&tmp.0, &envs, &args);
        assert_eq!(code, Some(1), "env {env:?} flag {flag:?}: {err}");
        assert!(err.contains("100..=3600000"), "env {env:?} flag {flag:?}: {err}");
    }
    // The top of the range is taken (the bottom, 100 ms, would fail a job on a loaded machine).
    let (code, _, err) = cli(&tmp.0, &[("SHMFLOW_HEARTBEAT_TIMEOUT_MS", "3600000")], &SMALL_WORDCOUNT);
    assert_eq!(code, Some(0), "the highest value of the range is taken: {err}");
}

#[test]
fn a_missing_blocking_dir_is_an_error_and_not_created() {
    let _serial = serial();
    let tmp = TempDir::new("blockdir");
    let missing = tmp.0.join("typo");
    let mut args = SMALL_WORDCOUNT.to_vec();
    args.extend(["--exchange", "blocking"]);
    let (code, _, err) = cli(&tmp.0, &[("SHMFLOW_BLOCKING_DIR", missing.to_str().unwrap())], &args);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("SHMFLOW_BLOCKING_DIR") && err.contains("it is not created"), "{err}");
    assert!(!missing.exists(), "the directory was created");
    // An existing one is used.
    std::fs::create_dir(&missing).unwrap();
    let (code, _, err) = cli(&tmp.0, &[("SHMFLOW_BLOCKING_DIR", missing.to_str().unwrap())], &args);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn an_inherited_control_fd_variable_does_not_make_a_command_a_worker() {
    let _serial = serial();
    let tmp = TempDir::new("controlfd");
    // fd 0 (stdin) and fd 2 (a pipe): open descriptors, but no coordinator's socket.
    for fd in ["0", "2", "999"] {
        let (code, out, err) = cli(&tmp.0, &[("SHMFLOW_CONTROL_FD", fd)], &SMALL_WORDCOUNT);
        assert_eq!(code, Some(0), "SHMFLOW_CONTROL_FD={fd}: {err}");
        assert!(out.contains("distinct words"), "SHMFLOW_CONTROL_FD={fd} ran as the coordinator: {out}");
    }
}

#[test]
fn the_arena_size_an_error_suggests_runs_the_job() {
    let _serial = serial();
    let tmp = TempDir::new("arenasize");
    // 64 x 64 channels: their control regions alone take more than 8 MiB.
    let job = ["run", "shuffle", "--quiet", "--records", "1000", "--parallelism", "64", "--segment-size", "4096"];
    for small in ["16777216", "1048576"] {
        let (code, _, err) = cli(&tmp.0, &[], &[&job[..], &["--arena-size", small]].concat());
        assert_eq!(code, Some(1), "{err}");
        let suggested = err
            .split("use --arena-size ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no suggestion in {err}"))
            .to_string();
        let (code, out, err) = cli(&tmp.0, &[], &[&job[..], &["--arena-size", &suggested]].concat());
        assert_eq!(code, Some(0), "--arena-size {suggested} (suggested for {small}): {err}");
        assert!(out.contains("every record arrived intact"), "{out}");
    }
}

#[test]
fn demo_notices_a_dead_consumer_or_producer_and_names_it() {
    let _serial = serial();
    let tmp = TempDir::new("demopeer");
    let demo = ["demo", "--records", "1000000000000", "--mode", "park"];
    for kill_consumer in [true, false] {
        let mut run = Run::start(&tmp.0, &demo);
        // The consumer runs: the demo's one child.
        let deadline = Instant::now() + PATIENCE;
        let consumer = loop {
            if let [c] = children_of(run.pid())[..] {
                break c;
            }
            assert!(Instant::now() < deadline, "the demo started no consumer");
            std::thread::sleep(Duration::from_millis(10));
        };
        let (victim, survivor, role) =
            if kill_consumer { (consumer, run.pid(), "consumer") } else { (run.pid(), consumer, "producer") };
        // SAFETY: kill(2) has no memory effects; the victim is our child or its child.
        unsafe {
            libc::kill(victim as libc::pid_t, libc::SIGKILL);
        }
        // Stderr ends once both are gone: the survivor noticed and said so.
        let (_, said) = run.finish();
        let expected = format!("the {role} (pid {victim}) died");
        assert!(said.iter().any(|l| l.contains(&expected)), "no {expected:?} from pid {survivor}: {said:?}");
    }
}

/// Set in the child that plays a coordinator which dies while its worker starts.
const DYING_CREATOR: &str = "SHMFLOW_TEST_DYING_CREATOR";

/// The child role: makes a control socket, starts `shmflow run wordcount` on it as a
/// coordinator starts a worker (through a shell that waits a moment first, so that this
/// process is gone before the worker looks), and exits at once.
#[test]
fn dying_creator_entry() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if std::env::var_os(DYING_CREATOR).is_none() {
        return;
    }
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "sleep 0.3; exec \"$0\" run wordcount --quiet --generated-mb 1", env!("CARGO_BIN_EXE_shmflow")])
        .env("SHMFLOW_CONTROL_FD", fd.to_string())
        .env_remove(DYING_CREATOR);
    // SAFETY: only fcntl (async-signal-safe) on an fd open in the parent, hence the child.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap();
    drop((mine, theirs));
    println!("SHMFLOW_CREATOR {}", std::process::id());
    std::process::exit(0);
}

#[test]
fn a_worker_whose_coordinator_died_before_it_started_says_so_instead_of_running_the_job() {
    let _serial = serial();
    let mut cmd = common::self_command("dying_creator_entry", DYING_CREATOR, "1");
    // Stdout and stderr stay open until the would-be worker exits too.
    let out = cmd.stdin(Stdio::null()).output().expect("run the creator");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let creator = stdout
        .lines()
        .find_map(|l| common::after(l, "SHMFLOW_CREATOR "))
        .unwrap_or_else(|| panic!("the creator said {stdout}{stderr}"));
    let expected = format!("the coordinator (pid {creator}) died");
    assert!(stderr.contains(&expected), "no {expected:?}: {stdout}{stderr}");
    assert!(!stdout.contains("distinct words"), "the worker ran the job as a coordinator: {stdout}");
}

#[test]
fn an_output_that_is_the_input_or_a_link_to_it_is_refused_and_the_input_kept() {
    let _serial = serial();
    let tmp = TempDir::new("outisin");
    let input = tmp.0.join("text.txt");
    let text = "to be or not to be\n";
    std::fs::write(&input, text).unwrap();
    let link = tmp.0.join("link.txt");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    let hard = tmp.0.join("hard.txt");
    std::fs::hard_link(&input, &hard).unwrap();
    for job in ["wordcount", "window-wordcount"] {
        for out in [&input, &link, &hard] {
            let args = ["run", job, "--quiet", "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()];
            let (code, _, err) = cli(&tmp.0, &[], &args);
            assert_eq!(code, Some(1), "{job} --output {}: {err}", out.display());
            assert!(err.contains("is the input file"), "{job} --output {}: {err}", out.display());
            assert_eq!(std::fs::read_to_string(&input).unwrap(), text, "{job} --output {}", out.display());
        }
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is left as it was");
    assert_eq!(leftovers(&tmp.0, &[]), ["hard.txt", "link.txt", "text.txt"], "no temp output, no job dir");
}

#[test]
fn clean_removes_the_temp_output_of_a_relative_output_from_any_cwd_and_nothing_else() {
    let _serial = serial();
    let tmp = TempDir::new("relout");
    let (ran_in, cleaned_in) = (tmp.0.join("ran"), tmp.0.join("elsewhere"));
    std::fs::create_dir(&ran_in).unwrap();
    std::fs::create_dir(&cleaned_in).unwrap();
    let mut cmd = shmflow();
    cmd.current_dir(&ran_in)
        .args(["run", "wordcount", "--generated-mb", "100000", "--output", "counts"])
        .env("TMPDIR", &tmp.0);
    let mut run = Run::spawn(cmd);
    run.wait_running();
    let pid = run.pid();
    run.signal(libc::SIGKILL);
    let _ = run.finish();
    let temp_output = format!("counts.tmp-{pid}");
    assert_eq!(leftovers(&ran_in, &[]), [temp_output.as_str()], "the killed run's temp output");
    // A file of the same name where clean runs is not the run's.
    let decoy = cleaned_in.join(&temp_output);
    std::fs::write(&decoy, "not shmflow's").unwrap();
    let clean = shmflow()
        .arg("clean")
        .current_dir(&cleaned_in)
        .env("TMPDIR", &tmp.0)
        .env("SHMFLOW_SHM_DIR", &tmp.0)
        .output()
        .expect("clean");
    let text = String::from_utf8_lossy(&clean.stdout);
    assert!(clean.status.success(), "{text}{}", String::from_utf8_lossy(&clean.stderr));
    assert!(decoy.exists(), "clean removed a file of its cwd:\n{text}");
    assert_eq!(leftovers(&ran_in, &[]), Vec::<String>::new(), "clean missed the temp output:\n{text}");
    assert_eq!(leftovers(&tmp.0, &[]), ["elsewhere", "ran"], "the job dir is gone:\n{text}");
}

#[test]
fn a_failed_stdout_write_is_an_error_and_a_closed_pipe_a_quiet_exit() {
    let _serial = serial();
    let tmp = TempDir::new("stdoutfull");
    let job = ["run", "shuffle", "--records", "1000", "--json"];
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let out = shmflow().args(job).env("TMPDIR", &tmp.0).stdout(full).output().expect("run shmflow");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("writing stdout") && err.contains("No space left"), "{err}");
    // A reader that closed its end (`| head`): no message, no panic, 128 + SIGPIPE.
    let mut child = KillOnDrop(
        shmflow()
            .args(job)
            .env("TMPDIR", &tmp.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shmflow"),
    );
    drop(child.stdout.take());
    let stderr = child.stderr.take().expect("piped stderr");
    let status = exit_of(&mut child, "shmflow | (closed)");
    let err = std::io::read_to_string(stderr).unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGPIPE), "{err}");
    assert_eq!(err, "", "quiet");
    assert_eq!(leftovers(&tmp.0, &[]), Vec::<String>::new(), "no job dir left");
}

#[test]
fn the_merge_after_the_job_is_announced_and_timed_and_the_top_ten_is_a_full_sorts() {
    let _serial = serial();
    let tmp = TempDir::new("mergetop");
    // 40 words, counts 1..=8 with many ties across the tenth place.
    let input = tmp.0.join("words.txt");
    let text: String = (0..40u32).map(|i| format!("w{i} ").repeat((i * 7 % 8 + 1) as usize) + "\n").collect();
    std::fs::write(&input, text).unwrap();
    let counts = tmp.0.join("counts");
    let (code, _, err) = cli(
        &tmp.0,
        &[],
        &["run", "wordcount", "--quiet", "--input", input.to_str().unwrap(), "--output", counts.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{err}");
    let written = std::fs::read_to_string(&counts).unwrap();
    // The top ten as before: every line sorted by word, then stably by count, highest first.
    let mut lines: Vec<(u64, &str)> =
        written.lines().map(|l| (l.rsplit_once('\t').unwrap().1.parse().unwrap(), l)).collect();
    assert!(lines.windows(2).all(|w| w[0].1 < w[1].1), "the output is sorted by word");
    lines.sort_by_key(|l| std::cmp::Reverse(l.0));
    let want: Vec<String> = lines.iter().take(10).map(|l| format!("  {}", l.1)).collect();
    // Progress on (no --quiet): the merge is announced on stderr and timed in the summary.
    let (code, out, err) = cli(&tmp.0, &[], &["run", "wordcount", "--input", input.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("merging ") && err.contains(" part files"), "{err}");
    assert!(out.contains("after the job's") && out.contains("40 lines merged from"), "{out}");
    let top: Vec<&str> = out.lines().skip_while(|l| !l.contains("the most frequent")).skip(1).collect();
    assert_eq!(top, want, "{out}");
}

#[test]
fn an_input_that_is_the_coordinators_stdin_is_refused_up_front() {
    let _serial = serial();
    let tmp = TempDir::new("stdininput");
    let text = tmp.0.join("text.txt");
    std::fs::write(&text, "to be or not to be\n").unwrap();
    // A directory on the way that leads to the descriptors: `..`, and a symlink to them.
    std::os::unix::fs::symlink("/proc/self/fd", tmp.0.join("fds")).unwrap();
    let via_link = tmp.0.join("fds/0");
    let via_link = via_link.to_str().unwrap();
    for input in ["/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", "/dev/../dev/stdin", via_link] {
        let out = shmflow()
            .args(["run", "wordcount", "--quiet", "--input", input])
            .env("TMPDIR", &tmp.0)
            .stdin(std::fs::File::open(&text).unwrap())
            .output()
            .expect("run shmflow");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{input}: {err}");
        assert!(err.contains("descriptor of this process") && !err.contains("shmflow worker"), "{input}: {err}");
    }
    assert_eq!(leftovers(&tmp.0, &[]), ["fds", "text.txt"]);
}

#[test]
fn a_latency_run_too_short_to_measure_says_no_samples_instead_of_zeros() {
    let _serial = serial();
    let tmp = TempDir::new("nosamples");
    let job = ["run", "shuffle", "--quiet", "--latency", "--rate", "1000", "--records", "10"];
    let (code, out, err) = cli(&tmp.0, &[], &job);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("from the send schedule at 1000 records/s: no samples"), "{out}");
    assert!(!out.contains("over 0 samples"), "{out}");
    let (code, out, err) = cli(&tmp.0, &[], &[&job[..], &["--json"]].concat());
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["latency_from_schedule_us"], serde_json::json!({ "samples": 0 }), "{out}");
}

#[test]
fn output_dash_is_refused_and_makes_no_file_named_dash() {
    let tmp = TempDir::new("output-dash");
    for job in ["wordcount", "window-wordcount"] {
        let out = shmflow()
            .current_dir(&tmp.0)
            .args(["run", job, "--quiet", "--generated-mb", "1", "--output", "-"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{job} --output - succeeded");
        assert!(err.contains("--output - (standard output) is not supported"), "{job}: {err}");
        assert!(!tmp.0.join("-").exists(), "{job} wrote a file named -");
    }
}
