//! The examples a user copies keep working: each runs as a program (with a small record
//! count) and must report totals that match. tools/test builds the example
//! binaries (`cargo build --examples`) before `cargo test`; these tests run those binaries.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::{collect_stderr, serial, KillOnDrop};

/// The binary of example `name` of this build (`target/<profile>/examples/<name>`).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>").join("examples");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run tools/test (it builds the examples first) or \
         `cargo build --example {name}` first",
        path.display()
    );
    path
}

/// Runs example `name` with `args`, bounded; returns its stdout, panics with its output if
/// it fails.
fn run_example(name: &str, args: &[&str]) -> String {
    let _serial = serial();
    let mut child = KillOnDrop(
        std::process::Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example"),
    );
    let stdout = collect_stderr(child.stdout.take().expect("piped stdout"));
    let stderr = collect_stderr(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for the example") {
            break s;
        }
        assert!(Instant::now() < deadline, "example {name} still runs after 120 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    assert!(status.success(), "example {name} {args:?} failed ({status}):\n{out}\n{err}");
    out
}

#[test]
fn keyed_numbers_moves_every_record_to_the_consumer_of_its_key() {
    let out = run_example("keyed_numbers", &["300000"]);
    assert!(out.contains("300000 records through the network stack"), "{out}");
    assert!(out.contains("totals match"), "{out}");
    // Both consumers got a share: the keys are spread by Flink's key groups.
    for i in 0..2 {
        let n: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("consumer {i}: "))?.strip_suffix(" records")?.parse().ok())
            .unwrap_or_else(|| panic!("no count from consumer {i} in:\n{out}"));
        assert!(n > 0, "consumer {i} got nothing:\n{out}");
    }
}

#[test]
fn keyed_numbers_reading_with_next_only_gets_the_same_totals() {
    let out = run_example("keyed_numbers", &["100000", "next"]);
    assert!(out.contains("100000 records through the network stack") && out.contains("totals match"), "{out}");
}

#[test]
fn keyed_numbers_job_sums_every_key_exactly() {
    let out = run_example("keyed_numbers_job", &["300000"]);
    assert!(out.contains("300000 records through the runtime"), "{out}");
    assert!(out.contains("every key's sum matches"), "{out}");
}

#[test]
fn readmes_library_example_is_readme_sums_and_sums_every_key_once() {
    // README's block is the example's code, so what a reader copies is what runs here.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = &readme[readme.find("## As a library").expect("README's library section")..];
    let start = section.find("```rust\n").expect("README's library example") + "```rust\n".len();
    let block = &section[start..start + section[start..].find("```\n").expect("the end of the example")];
    let example = std::fs::read_to_string(root.join("examples/readme_sums.rs")).expect("the example");
    assert!(example.ends_with(block), "README's library example differs from examples/readme_sums.rs");
    let out = run_example("readme_sums", &[]);
    let sums: Vec<(u64, u64)> = out
        .lines()
        .map(|l| {
            let (k, v) = l.strip_prefix("key ").and_then(|l| l.split_once(": ")).unwrap_or_else(|| panic!("{l:?}"));
            (k.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    // Every key once, each i of 0..1_000_000 counted once (not once per source subtask).
    assert_eq!(sums.iter().map(|s| s.0).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>(), "{out}");
    for (k, sum) in sums {
        assert_eq!(sum, (0..10_000).map(|j| 100 * j + k).sum::<u64>(), "key {k}");
    }
}
