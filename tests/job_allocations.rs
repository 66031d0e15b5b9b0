//! No allocation per record on the job path in steady state (issue 12): the shuffle and
//! wordcount jobs run in this process (every subtask on a thread of its own, over one memfd
//! arena, exactly the task code a worker runs), under a global allocator that counts every
//! allocation of every thread. Each job runs at two sizes; the difference in allocations,
//! divided by the difference in records, is what a record costs once setup is paid, and
//! must stay under 1 per 10,000 records.
//!
//! Runs without the test harness, so no harness thread allocates while the jobs run.

/// The command line's built-in jobs (they live next to the binary, not in the library).
#[path = "../src/bin/shmflow/jobs/mod.rs"]
#[allow(dead_code, unused_imports)]
mod jobs;

use jobs::TextSource;
use shmflow::memory::Arena;
use shmflow::runtime::{ExecutionGraph, JobGraph, RuntimeConfig, TaskEvent, TaskIo};
use shmflow::sync::AtomicBool;
use shmflow::ShuffleEnvironment;
use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts allocations (and reallocations, which may move) of every thread.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // Relaxed: a statistic read after the threads are joined.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Relaxed: as in `alloc`.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Relaxed: as in `alloc`.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs every subtask of `job` on a thread of this process; returns the allocations made
/// while they ran.
fn run_in_process(job: &JobGraph) -> Result<u64, String> {
    let config = RuntimeConfig { workers: 1, arena_size: 64 << 20, ..RuntimeConfig::default() };
    let graph = ExecutionGraph::build(job, 0).map_err(|e| e.to_string())?;
    let arena_cfg = config.arena_config(job, &graph).map_err(|e| e.to_string())?;
    let arena = Arc::new(Arena::create_memfd(&arena_cfg, "alloc-test").map_err(|e| e.to_string())?);
    let env = ShuffleEnvironment::join(arena).map_err(|e| e.to_string())?;
    let settings = config.task_settings();
    let cancel = Arc::new(AtomicBool::new(false));
    // Relaxed: read after the threads are joined.
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let handles: Vec<_> = graph
        .subtasks
        .iter()
        .cloned()
        .map(|spec| {
            let (job, env, cancel) = (job.clone(), env.clone(), cancel.clone());
            std::thread::spawn(move || {
                let (tx, rx) = std::sync::mpsc::channel::<TaskEvent>();
                let mut io = TaskIo::new(env, spec.clone(), settings, cancel.clone(), None, tx);
                let info = job.task_info(io.spec());
                let r = (job.vertices[spec.vertex].body)(&info, &mut io);
                drop(rx);
                if r.is_err() {
                    // Relaxed: a stop request for the other tasks.
                    cancel.store(true, shmflow::sync::Ordering::Relaxed);
                }
                r.map_err(|e| format!("task {}/{}: {e}", spec.vertex, spec.subtask))
            })
        })
        .collect();
    let mut first_err = None;
    for h in handles {
        if let Err(e) = h.join().map_err(|_| "a task panicked".to_string()).and_then(|r| r) {
            first_err.get_or_insert(e);
        }
    }
    // Relaxed: every task thread was joined.
    let used = ALLOCATIONS.load(Ordering::Relaxed) - before;
    first_err.map_or(Ok(used), Err)
}

/// Allocations per 10,000 records between a run of `small` and one of `large` records.
fn per_10k(name: &str, small: (u64, &JobGraph), large: (u64, &JobGraph)) -> Result<f64, String> {
    // A first run warms up what is made once per process (the text generator, thread
    // locals), so the two measured runs pay the same setup.
    run_in_process(small.1)?;
    let a = run_in_process(small.1)?;
    let b = run_in_process(large.1)?;
    let per = (b as f64 - a as f64) / (large.0 - small.0) as f64 * 10_000.0;
    println!(
        "{name}: {a} allocations for {} records, {b} for {}: {per:.3} per 10,000 records in steady state",
        small.0, large.0
    );
    Ok(per)
}

fn shuffle(records: u64, dir: &std::path::Path) -> JobGraph {
    jobs::shuffle_job(records, 16, shmflow::partition::SelectorKind::KeyHash, 2, dir.to_path_buf(), (0, 0))
}

fn wordcount(lines: u64, dir: &std::path::Path) -> (u64, JobGraph) {
    let src = TextSource::Generated { lines, seed: 7 };
    let words = jobs::reference_wordcount(&src).map(|m| m.values().sum::<u64>()).unwrap_or(0);
    (words, jobs::wordcount_job(src, 2, dir.to_path_buf()))
}

/// Words of 23 to 40 bytes (longer than `Word::INLINE`, as URLs' tokens and long
/// compounds): 50 of them, repeated over `lines` lines of 10 words each, in a text file
/// under `dir`.
fn long_words_file(lines: u64, dir: &std::path::Path) -> Result<TextSource, String> {
    let words: Vec<String> = (0..50u8)
        .map(|k| {
            let len = 23 + usize::from(k % 18);
            let mut w = format!("long{}{}", char::from(b'a' + k % 26), char::from(b'a' + k / 26));
            w.extend(std::iter::repeat_n('q', len - w.len()));
            w
        })
        .collect();
    let mut text = String::new();
    for l in 0..lines {
        for j in 0..10 {
            text.push_str(&words[((l * 7 + j * 13) % 50) as usize]);
            text.push(if j == 9 { '\n' } else { ' ' });
        }
    }
    let path = dir.join(format!("long-words-{lines}.txt"));
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let mut src = TextSource::file(path);
    src.validate().map_err(|e| e.to_string())?;
    Ok(src)
}

fn long_wordcount(lines: u64, dir: &std::path::Path) -> Result<(u64, JobGraph), String> {
    let src = long_words_file(lines, dir)?;
    let out = dir.join(format!("out-long-{lines}"));
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    Ok((10 * lines, jobs::wordcount_job(src, 2, out)))
}

/// Removes the test's temp directory however `main` ends (a panicking job included).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> ExitCode {
    let guard = TempDir(std::env::temp_dir().join(format!("shmflow-alloc-test-{}", std::process::id())));
    let dir = guard.0.clone();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let (s1, s2) = (100_000, 800_000);
    let shuffle_per = per_10k("shuffle (16 B, key hash, p=2)", (s1, &shuffle(s1, &dir)), (s2, &shuffle(s2, &dir)));
    let (w1, g1) = wordcount(10_000, &dir);
    let (w2, g2) = wordcount(80_000, &dir);
    let wordcount_per = per_10k("wordcount (generated text, p=2)", (w1, &g1), (w2, &g2));
    let long_per = long_wordcount(5_000, &dir).and_then(|(l1, g1)| {
        let (l2, g2) = long_wordcount(40_000, &dir)?;
        per_10k("wordcount (words of 23-40 bytes, p=2)", (l1, &g1), (l2, &g2))
    });
    drop(guard);
    let mut failed = 0;
    let results = [("shuffle", shuffle_per), ("wordcount", wordcount_per), ("wordcount, long words", long_per)];
    let cases = results.len();
    for (name, r) in results {
        match r {
            Ok(per) if per < 1.0 => {}
            Ok(per) => {
                eprintln!("{name}: {per:.3} allocations per 10,000 records in steady state, expected < 1");
                failed += 1;
            }
            Err(e) => {
                eprintln!("{name}: the job failed: {e}");
                failed += 1;
            }
        }
    }
    println!("{} passed, {failed} failed", cases - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
