//! Replays every committed input through its harness on the stable toolchain (no libFuzzer,
//! no sanitizers): the seed corpus, what the fuzzer kept, and `regressions/<target>/`, the
//! inputs that once crashed (each named after the bug it found).

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<_> = entries.map(|e| e.expect("a directory entry").path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).expect("read an input");
            eprintln!("{target}: {}", p.display());
            harness(&bytes);
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn arena_header_inputs() {
    replay("arena_header", shmflow_fuzz::arena_header);
}

#[test]
fn ring_values_inputs() {
    replay("ring_values", shmflow_fuzz::ring_values);
}

#[test]
fn records_inputs() {
    replay("records", shmflow_fuzz::records);
}

#[test]
fn blocking_file_inputs() {
    replay("blocking_file", shmflow_fuzz::blocking_file);
}

#[test]
fn seeds_are_what_the_generator_makes() {
    // A seed generator that panics (a changed API, a config the arena refuses) shows here.
    assert!(shmflow_fuzz::seeds::all().len() > 30);
}
