//! The job runtime end to end through the command line: coordinator and worker processes,
//! outputs compared with single-threaded references, bad input rejected before any worker
//! starts.

/// The command line's built-in jobs (they live next to the binary, not in the library).
#[path = "../src/bin/shmflow/jobs/mod.rs"]
#[allow(dead_code, unused_imports)]
mod jobs;

use jobs::{reference_window_lines, reference_wordcount, TextSource};

mod common;
use common::{children_of, shmflow, TempDir};

fn run_ok(args: &[&str]) -> String {
    let out = shmflow().args(args).arg("--quiet").output().unwrap();
    assert!(out.status.success(), "shmflow {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_err(args: &[&str]) -> String {
    let out = shmflow().args(args).output().unwrap();
    assert!(!out.status.success(), "shmflow {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn wordcount_equals_the_reference_for_several_shapes() {
    let tmp = TempDir::new("wc");
    let reference = reference_wordcount(&TextSource::generated_mb(2)).unwrap();
    let expected: Vec<String> = reference.iter().map(|(w, c)| format!("{w}\t{c}")).collect();
    for (p, w, t) in [("1", "1", "100"), ("2", "2", "0"), ("3", "2", "-1"), ("4", "3", "1")] {
        let out = tmp.0.join(format!("out-{p}-{w}-{t}"));
        run_ok(&[
            "run",
            "wordcount",
            "--generated-mb",
            "2",
            "--parallelism",
            p,
            "--workers",
            w,
            "--buffer-timeout",
            t,
            "--output",
            out.to_str().unwrap(),
            "--segment-size",
            "4096",
        ]);
        let got = std::fs::read_to_string(&out).unwrap();
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(got.len(), expected.len(), "p={p} w={w} t={t}");
        assert!(got.iter().zip(&expected).all(|(a, b)| a == b), "p={p} w={w} t={t}: output differs from the reference");
    }
}

#[test]
fn wordcount_reads_a_file_with_non_ascii_and_mixed_case() {
    let tmp = TempDir::new("wcfile");
    let input = tmp.0.join("in.txt");
    let text = "Hello, hello WORLD!\nnaïve café_au_lait x1 x1\n\n  trailing_space  \nHELLO";
    std::fs::write(&input, text).unwrap();
    let out = tmp.0.join("out");
    run_ok(&[
        "run",
        "wordcount",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--parallelism",
        "3",
    ]);
    let got = std::fs::read_to_string(&out).unwrap();
    let reference = reference_wordcount(&TextSource::file(input)).unwrap();
    let expected: String = reference.iter().map(|(w, c)| format!("{w}\t{c}\n")).collect();
    assert_eq!(got, expected);
    assert!(
        got.contains("hello\t3\n") && got.contains("na\t1\n") && got.contains("ve\t1\n") && got.contains("caf\t1\n")
    );
}

#[test]
fn wordcount_counts_long_words_as_the_reference() {
    // Words longer than `Word::INLINE` (22 bytes), of every length up to past
    // `Word::SPARE_MAX` (255), each many times: the boxes of dropped words are reused.
    let tmp = TempDir::new("wclong");
    let input = tmp.0.join("in.txt");
    let mut text = String::new();
    for l in 0..2000usize {
        for j in 0..8usize {
            let len = 20 + (l * 31 + j * 17) % 260;
            let c = char::from(b'a' + ((l + j) % 7) as u8);
            text.extend(std::iter::repeat_n(c, len));
            text.push(' ');
        }
        text.push('\n');
    }
    std::fs::write(&input, text).unwrap();
    let out = tmp.0.join("out");
    run_ok(&[
        "run",
        "wordcount",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--parallelism",
        "2",
    ]);
    let got = std::fs::read_to_string(&out).unwrap();
    let reference = reference_wordcount(&TextSource::file(input)).unwrap();
    assert!(reference.len() > 1000, "{} distinct words", reference.len());
    let expected: String = reference.iter().map(|(w, c)| format!("{w}\t{c}\n")).collect();
    assert_eq!(got, expected);
}

#[test]
fn window_wordcount_equals_flinks_count_windows() {
    let tmp = TempDir::new("wwc");
    let reference = reference_wordcount(&TextSource::generated_mb(1)).unwrap();
    for (size, slide) in [("250", "150"), ("100", "100")] {
        let out = tmp.0.join(format!("out-{size}-{slide}"));
        run_ok(&[
            "run",
            "window-wordcount",
            "--generated-mb",
            "1",
            "--parallelism",
            "3",
            "--workers",
            "2",
            "--window",
            size,
            "--slide",
            slide,
            "--output",
            out.to_str().unwrap(),
        ]);
        let got = std::fs::read_to_string(&out).unwrap();
        let expected = reference_window_lines(&reference, size.parse().unwrap(), slide.parse().unwrap());
        assert!(!expected.is_empty());
        assert_eq!(got.lines().collect::<Vec<_>>(), expected, "window {size} slide {slide}");
    }
}

#[test]
fn shuffle_job_delivers_every_record_for_each_selector() {
    for sel in ["key-hash", "rebalance", "rescale", "broadcast", "forward", "global"] {
        let s = run_ok(&[
            "run",
            "shuffle",
            "--records",
            "200000",
            "--payload",
            "40",
            "--selector",
            sel,
            "--parallelism",
            "3",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["checksum_ok"], true, "{sel}");
        assert_eq!(v["records"], 200000, "{sel}");
        assert_eq!(v["arena_free_after"], v["arena_segments"], "{sel}: every segment is back after the job");
        assert_eq!(v["arena_problems"].as_array().map(|a| a.len()), Some(0), "{sel}: {v}");
    }
}

#[test]
fn the_throughput_shuffle_picks_the_largest_segment_its_arena_holds_unless_told() {
    let seg = |extra: &[&str]| {
        let mut args = vec!["run", "shuffle", "--records", "20000", "--payload", "16", "--parallelism", "2", "--json"];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
        assert_eq!(v["checksum_ok"], true, "{extra:?}");
        v["segment_size"].as_u64()
    };
    assert_eq!(seg(&[]), Some(256 << 10), "the default 256 MiB arena holds 256 KiB segments");
    // 34 segments in flight at p=2, four times over: 136, not 128 KiB ones in 16 MiB.
    assert_eq!(seg(&["--arena-size", "16777216"]), Some(64 << 10));
    assert_eq!(seg(&["--segment-size", "32768"]), Some(32 << 10), "--segment-size wins");
}

#[test]
fn bad_input_is_a_clear_error_before_workers_start() {
    let tmp = TempDir::new("bad");
    let e = run_err(&["run", "wordcount", "--input", "/nonexistent/file.txt"]);
    assert!(e.contains("/nonexistent/file.txt") && e.contains("No such file"), "{e}");
    let e = run_err(&["run", "wordcount", "--parallelism", "0"]);
    assert!(e.contains("--parallelism"), "{e}");
    let e = run_err(&["run", "wordcount", "--parallelism", "100000"]);
    assert!(e.contains("--parallelism"), "{e}");
    let e = run_err(&["run", "wordcount", "--arena-size", "999999999999999"]);
    assert!(e.contains("--arena-size"), "{e}");
    let e = run_err(&["run", "wordcount", "--generated-mb", "1", "--parallelism", "64", "--arena-size", "2000000"]);
    assert!(e.contains("--arena-size") && e.contains("channels"), "{e}");
    let e = run_err(&["run", "shuffle", "--selector", "sideways"]);
    assert!(e.contains("unknown selector"), "{e}");
    let e = run_err(&["run", "wordcount", "--input", tmp.0.to_str().unwrap()]);
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
fn text_that_is_not_utf8_is_counted_with_a_note() {
    // Latin-1 bytes as real old texts have them: counted, the bytes outside ASCII separate
    // words (as the replacement characters of Flink's UTF-8 decoder would), and a note on
    // stderr says where the first bad byte is.
    let tmp = TempDir::new("latin1");
    let input = tmp.0.join("latin1.txt");
    std::fs::write(&input, b"good words \xff\xfe bad bytes\nGood caf\xe9 words\n").unwrap();
    let output = tmp.0.join("out.txt");
    let out = shmflow()
        .args(["run", "wordcount", "--quiet", "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("not valid UTF-8") && err.contains("offset 11"), "{err}");
    let got = std::fs::read_to_string(&output).unwrap();
    assert_eq!(got, "bad\t1\nbytes\t1\ncaf\t1\ngood\t2\nwords\t2\n");
}

/// Runs `cmd` with its output collected, killed if it has not exited within 20 s: a hang
/// fails the test instead of blocking it. Returns (status, stdout, stderr).
fn run_bounded(cmd: &mut std::process::Command) -> (std::process::ExitStatus, String, String) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = common::KillOnDrop(cmd.spawn().unwrap());
    let out = common::collect_stderr(child.stdout.take().unwrap());
    let err = common::collect_stderr(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within 20 s; stderr: {}", err.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// `shmflow args` must fail (bounded) without panicking; returns its stderr.
fn fails_cleanly(args: &[&str]) -> String {
    let (status, _, err) = run_bounded(shmflow().args(args));
    assert!(!status.success(), "shmflow {args:?} should fail");
    assert_eq!(status.code(), Some(1), "shmflow {args:?} should exit with an error, not a panic or signal: {err}");
    assert!(!err.contains("panicked"), "shmflow {args:?} panicked: {err}");
    err
}

#[test]
fn a_fifo_as_input_is_a_clear_error_not_a_hang() {
    let tmp = TempDir::new("fifo");
    let fifo = tmp.0.join("in.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", fifo.display());
    // Without a writer, opening the FIFO would block: the check must come first.
    let e = fails_cleanly(&["run", "wordcount", "--quiet", "--input", fifo.to_str().unwrap()]);
    assert!(e.contains(fifo.to_str().unwrap()) && e.contains("not a regular file"), "{e}");
}

#[test]
fn an_output_that_cannot_be_written_fails_before_the_job_runs() {
    let tmp = TempDir::new("outdir");
    let dir = tmp.0.to_str().unwrap();
    // The arena is too small for this job: the error says --output, not --arena-size, only
    // if the output was checked before the job started.
    let too_small = ["--generated-mb", "1", "--parallelism", "64", "--arena-size", "2000000", "--quiet"];
    let e = fails_cleanly(&[&["run", "wordcount", "--output", dir][..], &too_small].concat());
    assert!(e.contains("--output") && e.contains(&format!("{dir} is a directory")), "{e}");
    let missing = tmp.0.join("no-such-dir").join("out.txt");
    let missing = missing.to_str().unwrap();
    let e = fails_cleanly(&[&["run", "window-wordcount", "--output", missing][..], &too_small].concat());
    assert!(e.contains("--output") && e.contains(missing) && e.contains("No such file"), "{e}");
    // A directory as output of a job that can run: still refused, nothing left behind.
    let e = fails_cleanly(&["run", "wordcount", "--generated-mb", "1", "--quiet", "--output", dir]);
    assert!(e.contains(&format!("{dir} is a directory")), "{e}");
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0, "files left in {dir}");
}

/// Names in `dir` holding `.tmp-` (an output's temp file).
fn temp_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[test]
fn the_output_is_replaced_atomically() {
    let tmp = TempDir::new("atomic");
    let input = tmp.0.join("in.txt");
    std::fs::write(&input, "b a b\nc\n").unwrap();
    let out = tmp.0.join("out.txt");
    std::fs::write(&out, "old\n").unwrap();
    let (inp, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    // A job that fails: the old output stays as it was, no temp file is left.
    fails_cleanly(&[
        "run",
        "wordcount",
        "--input",
        inp,
        "--output",
        o,
        "--parallelism",
        "64",
        "--arena-size",
        "2000000",
    ]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old\n");
    assert_eq!(temp_files(&tmp.0), Vec::<String>::new());
    // A job that succeeds replaces it whole.
    run_ok(&["run", "wordcount", "--input", inp, "--output", o]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\t1\nb\t2\nc\t1\n");
    assert_eq!(temp_files(&tmp.0), Vec::<String>::new());
    // Through a symlink: the file it points to is replaced, the link stays a link.
    let link = tmp.0.join("link.txt");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    std::fs::write(&input, "z\n").unwrap();
    run_ok(&["run", "wordcount", "--input", inp, "--output", link.to_str().unwrap()]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "z\t1\n");
    assert_eq!(temp_files(&tmp.0), Vec::<String>::new());
    // Not a regular file: written in place (no temp file next to /dev/null).
    run_ok(&["run", "wordcount", "--input", inp, "--output", "/dev/null"]);
}

#[test]
fn a_file_shorter_than_the_parallelism_is_counted_and_a_changed_file_is_an_error() {
    let tmp = TempDir::new("short");
    let input = tmp.0.join("in.txt");
    std::fs::write(&input, "a").unwrap();
    let out = tmp.0.join("out.txt");
    run_ok(&[
        "run",
        "wordcount",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--parallelism",
        "4",
    ]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\t1\n");
    // The length seen at validation is what every subtask insists on.
    std::fs::write(&input, "one two\nthree\n").unwrap();
    let mut src = TextSource::file(&input);
    assert_eq!(src.validate().unwrap(), None);
    assert_eq!(src, TextSource::File { path: input.clone(), len: Some(14) });
    std::fs::write(&input, "one two\nthree\nfour\n").unwrap();
    let e = src.for_each_line(1, 2, &mut |_| Ok(())).unwrap_err().to_string();
    assert!(e.contains(input.to_str().unwrap()) && e.contains("changed") && e.contains("19 bytes now, 14"), "{e}");
}

#[test]
fn numeric_edge_cases_are_errors_not_panics() {
    let e = fails_cleanly(&["demo", "--payload", "18446744073709551612"]);
    assert!(e.contains("--payload 18446744073709551612") && e.contains("8..=32764"), "{e}");
    let e = fails_cleanly(&["demo", "--segment-size", "0"]);
    assert!(e.contains("--segment-size 0") && e.contains("power of two"), "{e}");
    let e = fails_cleanly(&["demo", "--credit", "4294967295"]);
    assert!(e.contains("--credit 4294967295"), "{e}");
    let e = fails_cleanly(&["demo", "--records", "18446744073709551615"]);
    assert!(e.contains("--records 18446744073709551615"), "{e}");
    let e = fails_cleanly(&["run", "shuffle", "--records", "18446744073709551615", "--selector", "broadcast"]);
    assert!(e.contains("--records 18446744073709551615") && e.contains("out of range"), "{e}");
    let e = fails_cleanly(&["run", "shuffle", "--sink-work-ns", "18446744073709551615"]);
    assert!(e.contains("--sink-work-ns 18446744073709551615") && e.contains("out of range"), "{e}");
    let e = fails_cleanly(&["run", "shuffle", "--source-work-ns", "1000000001"]);
    assert!(e.contains("--source-work-ns 1000000001") && e.contains("out of range"), "{e}");
    let e = fails_cleanly(&["run", "wordcount", "--heartbeat-timeout-ms", "5"]);
    assert!(e.contains("--heartbeat-timeout-ms 5") && e.contains("out of range"), "{e}");
}

/// A pid that is not running: a child that exited and was reaped.
fn dead_pid() -> u32 {
    let mut c = shmflow().arg("--version").stdout(std::process::Stdio::null()).spawn().unwrap();
    let pid = c.id();
    assert!(c.wait().unwrap().success());
    pid
}

#[test]
fn clean_removes_job_dirs_whose_pid_is_gone_and_keeps_the_rest() {
    let tmp = TempDir::new("cleanjobs");
    let outside = TempDir::new("cleanjobs-outside");
    let dead = dead_pid();
    let me = std::process::id();
    let mk = |name: &str| {
        let d = tmp.0.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("part-000"), "x").unwrap();
        d
    };
    let stale_job = mk(&format!("shmflow-job-{dead}-123"));
    let stale_blocking = mk(&format!("shmflow-blocking-{dead}-456"));
    // Alive (this test, not shmflow: a reused pid is kept too), and names that do not parse.
    let live = mk(&format!("shmflow-job-{me}-789"));
    let odd = [mk("shmflow-job-notapid-1"), mk(&format!("shmflow-job-0{dead}-1")), mk("shmflow-job-")];
    // A symlink is never followed nor removed.
    let link = tmp.0.join(format!("shmflow-job-{dead}-link"));
    std::os::unix::fs::symlink(&outside.0, &link).unwrap();
    std::fs::write(outside.0.join("keep.txt"), "x").unwrap();
    let clean = |dry: bool| {
        let mut cmd = shmflow();
        cmd.arg("clean").env("TMPDIR", &tmp.0).env("SHMFLOW_SHM_DIR", &tmp.0);
        if dry {
            cmd.arg("--dry-run");
        }
        let (status, out, err) = run_bounded(&mut cmd);
        assert!(status.success(), "{err}");
        out
    };
    let out = clean(true);
    assert!(out.contains(&format!("stale  {}", stale_job.display())), "{out}");
    assert!(stale_job.exists() && stale_blocking.exists(), "a dry run removed something");
    let out = clean(false);
    assert!(out.contains(&format!("removed {}", stale_job.display())), "{out}");
    assert!(out.contains(&format!("removed {}", stale_blocking.display())), "{out}");
    assert!(out.contains(&format!("keep   {} (pid {me} is running)", live.display())), "{out}");
    assert!(out.contains("2 stale job directories removed"), "{out}");
    assert!(!stale_job.exists() && !stale_blocking.exists(), "{out}");
    assert!(live.join("part-000").exists(), "{out}");
    for d in &odd {
        assert!(d.join("part-000").exists() && !out.contains(&format!("{} (", d.display())), "{}: {out}", d.display());
    }
    assert!(std::fs::symlink_metadata(&link).is_ok() && outside.0.join("keep.txt").exists(), "{out}");
}

/// Whether `pid` has exited (gone, or a zombie waiting for its reaper).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next()).is_some_and(|st| st == "Z"),
    }
}

/// SIGKILLs the listed processes that are still running when dropped.
struct KillPids(Vec<u32>);

impl Drop for KillPids {
    fn drop(&mut self) {
        for &p in &self.0 {
            if !exited(p) {
                // SAFETY: kill(2) on a pid we saw as our child's child; no memory involved.
                unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn a_sigkilled_coordinators_private_job_dir_is_removed_by_clean() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};
    let tmp = TempDir::new("killedjob");
    let mut coord = common::KillOnDrop(
        shmflow()
            .args(["run", "shuffle", "--records", "1000000000", "--sink-work-ns", "100000", "--quiet"])
            .env("TMPDIR", &tmp.0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cpid = coord.id();
    let prefix = format!("shmflow-job-{cpid}-");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (dir, workers) = loop {
        let dir = std::fs::read_dir(&tmp.0)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path());
        let w = children_of(cpid);
        if let (Some(d), 2..) = (&dir, w.len()) {
            break (d.clone(), w);
        }
        assert!(coord.try_wait().unwrap().is_none(), "the job ended before its workers were seen");
        assert!(Instant::now() < deadline, "no job dir and workers after 20 s");
        std::thread::sleep(Duration::from_millis(5));
    };
    let workers = KillPids(workers);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    coord.kill().unwrap();
    coord.wait().unwrap();
    // The workers notice the closed control socket and stop.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !workers.0.iter().all(|&p| exited(p)) {
        assert!(Instant::now() < deadline, "workers {:?} still run 20 s after their coordinator died", workers.0);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(dir.exists(), "the killed coordinator's job dir is expected to be left behind");
    let (status, out, err) = run_bounded(shmflow().arg("clean").env("TMPDIR", &tmp.0).env("SHMFLOW_SHM_DIR", &tmp.0));
    assert!(status.success(), "{err}");
    assert!(out.contains(&format!("removed {} (pid {cpid} is gone)", dir.display())), "{out}");
    assert!(!dir.exists());
}

#[test]
fn outputs_that_must_not_be_replaced_are_refused_or_written_in_place() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("outkinds");
    let input = tmp.0.join("in.txt");
    std::fs::write(&input, b"b a b\n").unwrap();
    let input = input.to_str().unwrap();
    // A read-only output is refused, and stays as it was.
    let ro = tmp.0.join("ro.txt");
    std::fs::write(&ro, b"keep\n").unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let e = fails_cleanly(&["run", "wordcount", "--input", input, "--output", ro.to_str().unwrap()]);
    assert!(e.contains("read-only"), "{e}");
    assert_eq!(std::fs::read(&ro).unwrap(), b"keep\n");
    // A symbolic link to nothing is refused (not replaced by a file of its own).
    let dangling = tmp.0.join("dangling");
    std::os::unix::fs::symlink(tmp.0.join("nowhere/at/all"), &dangling).unwrap();
    let e = fails_cleanly(&["run", "wordcount", "--input", input, "--output", dangling.to_str().unwrap()]);
    assert!(e.contains("symbolic link to nothing"), "{e}");
    // A FIFO nobody reads is an error at once, not a hang.
    let fifo = tmp.0.join("out.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = fails_cleanly(&["run", "wordcount", "--input", input, "--output", fifo.to_str().unwrap()]);
    assert!(e.contains("nothing reads"), "{e}");
    // `--output /dev/stdout` with stdout appending to a file: the counts are appended, the
    // file's earlier content stays (it is not renamed over).
    let log = tmp.0.join("log.txt");
    std::fs::write(&log, b"EARLIER\n").unwrap();
    let out = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let status = shmflow()
        .args(["run", "wordcount", "--quiet", "--input", input, "--output", "/dev/stdout"])
        .stdout(out)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("EARLIER\na\t1\nb\t2\n"), "{text}");
}

#[test]
fn progress_is_plain_lines_with_percent_off_a_terminal_and_quiet_silences_it() {
    // 3000 records at 1 ms of busy work each in 2 sinks: the job runs at least 1.5 s, so
    // the coordinator's one-a-second progress line comes while it runs.
    let args = ["run", "shuffle", "--records", "3000", "--sink-work-ns", "1000000", "--parallelism", "2"];
    let out = shmflow().args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("% of the input")).unwrap_or_else(|| panic!("no progress line: {err}"));
    assert!(line.contains("records/s in") && !line.contains('\r'), "a plain line: {line:?}");
    let out = shmflow().args(args).arg("--quiet").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "--quiet prints nothing on stderr");
}

#[test]
fn latency_shuffle_stamps_every_record_after_warm_up_and_reports_percentiles() {
    // The first run takes the latency mode's defaults (spinning sinks, each pipeline slice
    // pinned to a core); the second parks and leaves threads unpinned.
    for (selector, extra) in [("key-hash", &[][..]), ("rebalance", &["--pin-cpus", "false", "--wait", "park"][..])] {
        let mut args = vec![
            "run",
            "shuffle",
            "--latency",
            "--rate",
            "20000",
            "--records",
            "2000",
            "--selector",
            selector,
            "--buffer-timeout",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run_ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["records"], 2000, "{out}");
        assert_eq!(v["checksum_ok"], true, "{out}");
        // Two generators of 1000 records, the first 100 of each warm-up.
        assert_eq!(v["latency_us"]["samples"], 1800, "{out}");
        let (p50, p99, max) = (
            v["latency_us"]["p50"].as_f64().unwrap(),
            v["latency_us"]["p99"].as_f64().unwrap(),
            v["latency_us"]["max"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{out}");
        // The same records from when they were due on their generator's schedule: every
        // sink learnt each generator's start from its warm-up records (100 each, keyed or
        // dealt round robin over both sinks).
        let d = &v["latency_from_schedule_us"];
        assert_eq!(d["samples"], 1800, "{out}");
        for k in ["p50", "p90", "p99", "p99_9", "p99_99", "max"] {
            assert!(d[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {out}");
        }
    }
    let err = run_err(&["run", "shuffle", "--latency", "--rate", "10", "--payload", "8"]);
    assert!(err.contains("--payload 8"), "{err}");
}
