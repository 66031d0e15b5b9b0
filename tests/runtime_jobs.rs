//! The job runtime end to end through the command line: coordinator and worker processes,
//! outputs compared with single-threaded references, bad input rejected before any worker
//! starts.

use shmflow::runtime::builtin::{reference_window_lines, reference_wordcount, TextSource};

mod common;
use common::{shmflow, TempDir};

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
    let reference = reference_wordcount(&TextSource::File(input)).unwrap();
    let expected: String = reference.iter().map(|(w, c)| format!("{w}\t{c}\n")).collect();
    assert_eq!(got, expected);
    assert!(
        got.contains("hello\t3\n") && got.contains("na\t1\n") && got.contains("ve\t1\n") && got.contains("caf\t1\n")
    );
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
