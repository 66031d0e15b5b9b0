//! WordCount end to end: `shmflow run wordcount` (worker processes, the shared-memory
//! shuffle) beside the same job in one process, where threads exchange words through
//! bounded crossbeam channels. The gap between the two is what the process boundary, the
//! serialization and the shared-memory shuffle cost.
//!
//! Both sides read the same generated text ([`TextSource::generated_mb`]): `p` source
//! subtasks tokenize their share of lines ([`TextSource::for_each_line`], [`tokenize`]),
//! route each word exactly as Flink's KeyGroupStreamPartitioner does (Java `hashCode`,
//! murmur finalizer, key group of 128, operator index) to one of `p` reducers, which sum
//! counts per word in a hash map. The in-process exchange batches 1024 words per channel
//! message, as a network buffer batches records. Each run checks that the total word count
//! and the number of distinct words agree between the systems (and, in quick mode, with
//! the single-threaded [`reference_wordcount`]).
//!
//! Like with like: both read the text inside their timed section (generating it as they go,
//! from the same vocabulary), and both write the same output, one `word<TAB>count` part file
//! per reducer through a 64 KiB buffer inside the timed section, then read the part files
//! back ([`jobs::merge_parts`], which sorts only for an `--output`, given to neither here)
//! to count the words outside it (shmflow's coordinator
//! does that after its `elapsed_s`; its CPU time is counted, so the in-process run's is
//! too). Until session 10 the in-process run wrote nothing and summed its hash maps, while
//! shmflow wrote part files and merged them. What still differs is the job's own: shmflow
//! starts worker processes, each of which builds the text's vocabulary (a few ms, printed
//! in the header line) before its first record; the in-process run builds it once, before
//! its timed section.
//!
//! Rates: records/s are words per second of the job's wall clock (shmflow's own
//! `elapsed_s`, which includes creating its arena and starting and stopping its worker
//! processes; the in-process job from spawning its threads to joining them). MB/s counts the input text (line bytes
//! plus one newline per line). CPU ns/record is user + system time of every thread and
//! process of the run per word (`getrusage`), steadier than wall clock on the shared
//! 2-vCPU machine. Ratios pair each shmflow run with the in-process run of the same
//! parallelism in the same repetition (repetitions interleave all configurations) and
//! report the median of those ratios.
//!
//! `cargo bench --bench wordcount [-- --json PATH --mb N --reps N]`: argv holds `--bench`,
//! full mode (default 100 MB of text, 3 repetitions, medians); `--system NAME` and
//! `--parallelism P` run a subset (for profiling); `--shmflow PATH` runs another shmflow
//! binary (an A/B of two builds, each paired with in-process runs of its own). Without `--bench` (as
//! `cargo test --benches` runs it): quick mode, 1 MB, one repetition.

/// The command line's built-in jobs (they live next to the binary, not in the library).
#[path = "../src/bin/shmflow/jobs/mod.rs"]
#[allow(dead_code, unused_imports)]
mod jobs;

use crossbeam_channel::{bounded, Receiver, Sender};
use jobs::{generator, reference_wordcount, tokenize, TextSource};
use shmflow::partition::{key_group_for_hash, operator_index_for_key_group, DEFAULT_MAX_PARALLELISM};
use shmflow::record::java_string_hash;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use clap::Parser;
use common::args::BenchArgs;
use common::{cpu_pair, pin_to, shmflow_exe, Res};
/// What the in-process threads return (an error crosses the join as text).
type ThreadRes<T> = std::result::Result<T, String>;
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Words per channel message of the in-process exchange.
const BATCH_WORDS: usize = 1024;
/// Messages each reducer's channel holds before senders block (about 16 network buffers'
/// worth, as shmflow's default in-flight bound of 16 segments).
const CHANNEL_BATCHES: usize = 16;
/// shmflow's buffer timeout (Flink's default).
const BUFFER_TIMEOUT_MS: u32 = 100;
/// Full-mode text size as asked of the generator (`generated_mb(100)` yields about 120 MB
/// of text: its lines average more than `GENERATED_BYTES_PER_LINE`). 300 MB took about 30 s per shmflow run on the shared 2-vCPU machine, so
/// 3 repetitions of 7 configurations would take many minutes; 100 MB takes 1-2 minutes.
const FULL_MB: u64 = 100;
const QUICK_MB: u64 = 1;

struct Args {
    full: bool,
    json: Option<PathBuf>,
    mb: Option<u64>,
    reps: Option<usize>,
    /// Only this system (for profiling).
    only_system: Option<System>,
    /// Only this parallelism (for profiling).
    only_parallelism: Option<u32>,
    /// `--shmflow`.
    exe: Option<PathBuf>,
}

/// The wordcount bench's flags.
#[derive(Parser)]
#[command(
    name = "wordcount",
    about = "WordCount: the shmflow job against an in-process channel pipeline on the same text"
)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    /// Generated text in MB.
    #[arg(long, value_name = "N")]
    mb: Option<u64>,
    /// Repetitions.
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Only this system: shmflow or in-process-channel (for profiling).
    #[arg(long, value_name = "NAME")]
    system: Option<String>,
    /// Only this parallelism (for profiling).
    #[arg(long, value_name = "P")]
    parallelism: Option<u32>,
    /// The shmflow binary to run (default: the one built beside this bench), for A/B runs
    /// of two builds against the same in-process baseline.
    #[arg(long, value_name = "PATH")]
    shmflow: Option<PathBuf>,
}

fn parse_args() -> Res<Args> {
    let c = Cli::parse();
    let only_system = match c.system {
        None => None,
        Some(n) => Some(
            [System::Shmflow, System::InProcess]
                .into_iter()
                .find(|s| s.name() == n)
                .ok_or_else(|| format!("unknown system {n:?} (shmflow or in-process-channel)"))?,
        ),
    };
    Ok(Args {
        full: c.bench.full,
        json: c.bench.json,
        mb: c.mb,
        reps: c.reps,
        only_system,
        only_parallelism: c.parallelism,
        exe: c.shmflow,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Shmflow,
    InProcess,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Shmflow => "shmflow",
            System::InProcess => "in-process-channel",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Config {
    system: System,
    parallelism: u32,
    /// Worker processes (threads of one process for the in-process system: reported as 1).
    workers: u32,
}

/// One run's outcome.
#[derive(Debug, Clone, Copy)]
struct Run {
    words: u64,
    distinct: u64,
    elapsed_s: f64,
    /// Wall clock of the whole command (both: includes merging the part files).
    wall_s: f64,
    /// CPU seconds (user + system) of every thread or process of the run: steadier than
    /// wall clock when other programs share the two vCPUs.
    cpu_s: f64,
}

/// User + system CPU seconds of this process (`RUSAGE_SELF`) or of its reaped children.
fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a writable rusage; `who` is RUSAGE_SELF or RUSAGE_CHILDREN.
    if unsafe { libc::getrusage(who, &mut u) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

// ---------------------------------------------------------------------------------------
// shmflow through its command line

fn run_shmflow(exe: &PathBuf, mb: u64, parallelism: u32, workers: u32) -> Res<Run> {
    let cpu0 = cpu_seconds(libc::RUSAGE_CHILDREN);
    let t0 = Instant::now();
    let out = Command::new(exe)
        .args(["run", "wordcount", "--generated-mb"])
        .arg(mb.to_string())
        .arg("--parallelism")
        .arg(parallelism.to_string())
        .arg("--workers")
        .arg(workers.to_string())
        .arg("--buffer-timeout")
        .arg(BUFFER_TIMEOUT_MS.to_string())
        .args(["--json", "--quiet"])
        .output()?;
    let wall_s = t0.elapsed().as_secs_f64();
    // The coordinator reaps its workers, so their time is in its children's total.
    let cpu_s = cpu_seconds(libc::RUSAGE_CHILDREN) - cpu0;
    if !out.status.success() {
        return Err(format!(
            "shmflow (p={parallelism}, workers={workers}) exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let field = |k: &str| v.get(k).ok_or_else(|| format!("shmflow's summary has no {k:?}"));
    let num = |k: &str| -> Res<f64> { field(k)?.as_f64().ok_or_else(|| format!("{k:?} is not a number").into()) };
    let words = field("words")?.as_u64().ok_or("\"words\" is not a count")?;
    let records = field("records")?.as_u64().ok_or("\"records\" is not a count")?;
    if records != words {
        return Err(format!("shmflow: sources emitted {records} records but the sinks counted {words} words").into());
    }
    Ok(Run {
        words,
        distinct: field("distinct_words")?.as_u64().ok_or("\"distinct_words\" is not a count")?,
        elapsed_s: num("elapsed_s")?,
        wall_s,
        cpu_s,
    })
}

// ---------------------------------------------------------------------------------------
// The same job in one process: threads and crossbeam channels

/// Up to [`BATCH_WORDS`] words, back to back, and where each ends.
struct Batch {
    text: Vec<u8>,
    ends: Vec<u32>,
}

impl Batch {
    fn new() -> Self {
        Batch { text: Vec::with_capacity(BATCH_WORDS * 8), ends: Vec::with_capacity(BATCH_WORDS) }
    }
}

/// Removes the in-process run's part files however the run ends.
struct PartDir(PathBuf);

impl Drop for PartDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes reducer `k`'s counts as `shmflow run wordcount`'s sinks do: `word<TAB>count` lines
/// through a 64 KiB buffer into `part-k` under `dir`.
fn write_part(dir: &std::path::Path, k: usize, counts: &HashMap<String, u64>) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::fs::File::create(dir.join(format!("part-{k:03}")))?);
    for (w, c) in counts {
        writeln!(out, "{w}\t{c}")?;
    }
    out.flush()
}

/// Returns the run and the bytes of text read.
///
/// Like with like: the job's output is made as `shmflow run wordcount` makes it. Each
/// reducer writes its part file inside the timed section (shmflow's sinks do, inside its
/// `elapsed_s`), and the words and distinct words are counted by merging the part files
/// ([`jobs::merge_parts`], what shmflow's command line does after its job) outside the
/// timed section but inside the CPU time (shmflow's merge runs in its coordinator, whose
/// CPU the bench counts).
fn run_in_process(src: &TextSource, p: u32) -> Res<(Run, u64)> {
    let dir = PartDir(std::env::temp_dir().join(format!("shmflow-wordcount-bench-{}-p{p}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let cpu0 = cpu_seconds(libc::RUSAGE_SELF);
    let t0 = Instant::now();
    let (txs, rxs): (Vec<Sender<Batch>>, Vec<Receiver<Batch>>) = (0..p).map(|_| bounded(CHANNEL_BATCHES)).unzip();
    let parts = &dir.0;
    let bytes = std::thread::scope(|s| -> Res<u64> {
        // Named threads (source-i, reduce-k) tell the two sides apart in a profile.
        let reducers = rxs
            .into_iter()
            .enumerate()
            .map(|(k, rx)| {
                std::thread::Builder::new().name(format!("reduce-{k}")).spawn_scoped(s, move || -> ThreadRes<()> {
                    let mut counts: HashMap<String, u64> = HashMap::default();
                    for b in rx {
                        let mut from = 0usize;
                        for &end in &b.ends {
                            let w = std::str::from_utf8(&b.text[from..end as usize]).map_err(|e| e.to_string())?;
                            from = end as usize;
                            match counts.get_mut(w) {
                                Some(c) => *c += 1,
                                None => {
                                    counts.insert(w.to_owned(), 1);
                                }
                            }
                        }
                    }
                    write_part(parts, k, &counts).map_err(|e| e.to_string())
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let sources = (0..p)
            .map(|i| {
                let txs = txs.clone();
                std::thread::Builder::new().name(format!("source-{i}")).spawn_scoped(s, move || -> ThreadRes<u64> {
                    let mut batches: Vec<Batch> = (0..p).map(|_| Batch::new()).collect();
                    let mut word = String::new();
                    let mut bytes = 0u64;
                    let mut send_err = false;
                    src.for_each_line(i, p, &mut |line| {
                        bytes += line.len() as u64 + 1;
                        tokenize(line, &mut word, &mut |w| {
                            let kg = key_group_for_hash(java_string_hash(w), DEFAULT_MAX_PARALLELISM);
                            let c = operator_index_for_key_group(DEFAULT_MAX_PARALLELISM, p, kg) as usize;
                            let b = &mut batches[c];
                            b.text.extend_from_slice(w.as_bytes());
                            b.ends.push(b.text.len() as u32);
                            if b.ends.len() == BATCH_WORDS {
                                let full = std::mem::replace(b, Batch::new());
                                send_err |= txs[c].send(full).is_err();
                            }
                        });
                        Ok(())
                    })
                    .map_err(|e| e.to_string())?;
                    for (c, b) in batches.into_iter().enumerate() {
                        if !b.ends.is_empty() {
                            send_err |= txs[c].send(b).is_err();
                        }
                    }
                    if send_err {
                        return Err("a reducer hung up".to_string());
                    }
                    Ok(bytes)
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        drop(txs);
        let mut bytes = 0;
        for h in sources {
            bytes += h.join().map_err(|_| "a source thread panicked")??;
        }
        for h in reducers {
            h.join().map_err(|_| "a reducer thread panicked")??;
        }
        Ok(bytes)
    })?;
    let elapsed_s = t0.elapsed().as_secs_f64();
    let lines = jobs::merge_parts(&dir.0, None)?;
    let count = |l: &[u8]| -> Option<u64> {
        let tab = l.iter().rposition(|&c| c == b'\t')?;
        std::str::from_utf8(&l[tab + 1..]).ok()?.parse().ok()
    };
    let words = lines.iter().map(|l| count(l).ok_or("a part file line without a count")).sum::<Result<u64, _>>()?;
    let cpu_s = cpu_seconds(libc::RUSAGE_SELF) - cpu0;
    let wall_s = t0.elapsed().as_secs_f64();
    Ok((Run { words, distinct: lines.len() as u64, elapsed_s, wall_s, cpu_s }, bytes))
}

// ---------------------------------------------------------------------------------------
// Context: where the two vCPUs sit

/// Median round trip of a cache line between two threads pinned to the first two CPUs
/// (spinning), over batches of 1000 for about `budget`: about 120 ns when the vCPUs share
/// an L3 ("near"), 410 ns when not ("far").
fn bare_rtt_ns(budget: Duration) -> Option<f64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    const STOP: u64 = u64::MAX;
    let (a, b) = cpu_pair()?;
    let ping = AtomicU64::new(0);
    let pong = AtomicU64::new(0);
    // Waits until `w` holds something other than `old`; None after 2 s without a change.
    let wait_change = |w: &AtomicU64, old: u64| {
        let t = Instant::now();
        let mut k = 0u32;
        loop {
            let v = w.load(Ordering::Acquire);
            if v != old {
                return Some(v);
            }
            std::hint::spin_loop();
            k = k.wrapping_add(1);
            if k % 4096 == 0 && t.elapsed() > Duration::from_secs(2) {
                return None;
            }
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = 0;
            if pin_to(b).is_ok() {
                while let Some(v) = wait_change(&ping, last) {
                    if v == STOP {
                        break;
                    }
                    last = v;
                    pong.store(v, Ordering::Release);
                }
            }
        });
        // Measured on a helper thread, so this (main) thread's affinity stays as it was.
        s.spawn(|| {
            let mut batches = Vec::new();
            if pin_to(a).is_ok() {
                let t0 = Instant::now();
                let mut i = 0u64;
                'outer: while t0.elapsed() < budget {
                    let tb = Instant::now();
                    for _ in 0..1000 {
                        i += 1;
                        ping.store(i, Ordering::Release);
                        if wait_change(&pong, i - 1).is_none() {
                            break 'outer;
                        }
                    }
                    batches.push(tb.elapsed().as_nanos() as f64 / 1000.0);
                }
            }
            ping.store(STOP, Ordering::Release);
            (!batches.is_empty()).then(|| median(batches))
        })
        .join()
        .ok()
        .flatten()
    })
}

// ---------------------------------------------------------------------------------------
// Driver and report

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    cfg: Config,
    records_per_s: f64,
    mb_per_s: f64,
    elapsed_s: f64,
    wall_s: f64,
    /// CPU nanoseconds per word (all threads and processes of the run).
    cpu_ns_per_record: f64,
    ratio: f64,
    cpu_ratio: f64,
}

fn main() -> Res<()> {
    let args = parse_args()?;
    let mb = args.mb.unwrap_or(if args.full { FULL_MB } else { QUICK_MB });
    let reps = args.reps.unwrap_or(if args.full { 3 } else { 1 }).max(1);
    let exe = match &args.exe {
        Some(p) => p.clone(),
        None => shmflow_exe()?,
    };
    let src = TextSource::generated_mb(mb);
    // The vocabulary is built once, outside every timed run of this process; each shmflow
    // worker builds its own inside the job's time (said in the header line).
    let t_vocab = Instant::now();
    generator();
    let vocab_ms = t_vocab.elapsed().as_secs_f64() * 1e3;
    let configs = configs(&args);
    let rtt = bare_rtt_ns(Duration::from_millis(if args.full { 100 } else { 20 }));
    println!(
        "wordcount: {} mode, {mb} MB of generated text, {reps} repetition(s), buffer timeout {BUFFER_TIMEOUT_MS} ms, \
         in-process batches of {BATCH_WORDS} words, {CHANNEL_BATCHES} per channel; text vocabulary built in \
         {vocab_ms:.1} ms (once here, before the timed runs; by every shmflow worker inside its job); bare \
         cache-line round trip {}",
        if args.full { "full" } else { "quick" },
        rtt.map_or_else(|| "n/a".to_string(), |r| format!("{r:.0} ns ({})", if r < 250.0 { "near" } else { "far" }))
    );
    println!("shmflow: {}", exe.display());

    let t_all = Instant::now();
    let (runs, text_bytes, (words, distinct)) = run_all(&configs, reps, &src, &exe, mb)?;
    let total_s = t_all.elapsed().as_secs_f64();
    // Without an in-process run (filtered out), the text is measured once more, untimed.
    let text_bytes = match text_bytes {
        Some(b) => b,
        None => {
            let mut b = 0u64;
            src.for_each_line(0, 1, &mut |l| {
                b += l.len() as u64 + 1;
                Ok(())
            })?;
            b
        }
    };
    if !args.full {
        let reference = reference_wordcount(&src)?;
        let (rw, rd) = (reference.values().sum::<u64>(), reference.len() as u64);
        if (rw, rd) != (words, distinct) {
            return Err(
                format!("reference: {rw} words, {rd} distinct; the runs: {words} words, {distinct} distinct").into()
            );
        }
    }

    let rows = rows(&configs, &runs, text_bytes);
    println!();
    println!(
        "{words} words, {distinct} distinct, {:.1} MB of text; medians of {reps} (ratios: median of the ratios \
         within each repetition); whole bench {total_s:.0} s",
        text_bytes as f64 / 1e6
    );
    println!();
    println!(
        "| system | parallelism | workers | records/s | MB/s input | job s | wall s | CPU ns/record \
         | records/s ratio shmflow/in-process | CPU ratio shmflow/in-process |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (ratio, cpu_ratio) = if r.cfg.system == System::Shmflow {
            (format!("{:.2}", r.ratio), format!("{:.2}", r.cpu_ratio))
        } else {
            ("1 (baseline)".into(), "1 (baseline)".into())
        };
        println!(
            "| {} | {} | {} | {:.2} M | {:.1} | {:.3} | {:.3} | {:.0} | {ratio} | {cpu_ratio} |",
            r.cfg.system.name(),
            r.cfg.parallelism,
            r.cfg.workers,
            r.records_per_s / 1e6,
            r.mb_per_s,
            r.elapsed_s,
            r.wall_s,
            r.cpu_ns_per_record,
        );
    }

    if let Some(path) = &args.json {
        write_json(path, &rows, rtt, mb, args.full)?;
    }
    Ok(())
}

/// The configurations to run: in-process and shmflow at parallelism 1, 2 and 4 (and shmflow
/// with 4 subtasks in one worker), as far as `--system` and `--parallelism` keep them.
fn configs(args: &Args) -> Vec<Config> {
    let mut configs = Vec::new();
    for p in [1u32, 2, 4] {
        configs.push(Config { system: System::InProcess, parallelism: p, workers: 1 });
        configs.push(Config { system: System::Shmflow, parallelism: p, workers: p });
        if p == 4 {
            configs.push(Config { system: System::Shmflow, parallelism: p, workers: 1 });
        }
    }
    configs.retain(|c| {
        args.only_system.iter().all(|&s| s == c.system) && args.only_parallelism.iter().all(|&p| p == c.parallelism)
    });
    configs
}

/// Runs every configuration `reps` times, interleaved, checking that all count the same;
/// returns the runs per configuration, the text's bytes (if an in-process run measured
/// them) and the (words, distinct words) every run counted.
#[allow(clippy::type_complexity)]
fn run_all(
    configs: &[Config],
    reps: usize,
    src: &TextSource,
    exe: &PathBuf,
    mb: u64,
) -> Res<(Vec<Vec<Run>>, Option<u64>, (u64, u64))> {
    // Repetitions interleave the configurations, so slow phases of the noisy machine
    // spread over all of them rather than one.
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
    let mut text_bytes: Option<u64> = None;
    let mut expect: Option<(u64, u64)> = None;
    for rep in 0..reps {
        for (k, cfg) in configs.iter().enumerate() {
            let run = match cfg.system {
                System::InProcess => {
                    let (r, bytes) = run_in_process(src, cfg.parallelism)?;
                    if *text_bytes.get_or_insert(bytes) != bytes {
                        return Err(format!("text bytes differ between runs: {bytes} vs {text_bytes:?}").into());
                    }
                    r
                }
                System::Shmflow => run_shmflow(exe, mb, cfg.parallelism, cfg.workers)?,
            };
            let got = (run.words, run.distinct);
            let want = *expect.get_or_insert(got);
            if got != want {
                return Err(format!(
                    "{} p={} workers={}: {} words, {} distinct; expected {} words, {} distinct",
                    cfg.system.name(),
                    cfg.parallelism,
                    cfg.workers,
                    got.0,
                    got.1,
                    want.0,
                    want.1
                )
                .into());
            }
            eprintln!(
                "  rep {}/{reps} {:>18} p={} workers={}: {:.3} s, {:.2} M words/s, {:.0} CPU ns/word",
                rep + 1,
                cfg.system.name(),
                cfg.parallelism,
                cfg.workers,
                run.elapsed_s,
                run.words as f64 / run.elapsed_s / 1e6,
                run.cpu_s * 1e9 / run.words as f64
            );
            runs[k].push(run);
        }
    }
    Ok((runs, text_bytes, expect.ok_or("no runs")?))
}

/// Medians per configuration, with each shmflow configuration's ratios to the in-process
/// run of the same parallelism.
fn rows(configs: &[Config], runs: &[Vec<Run>], text_bytes: u64) -> Vec<Row> {
    let rows: Vec<Row> = configs
        .iter()
        .zip(runs)
        .map(|(cfg, rs)| {
            let rates: Vec<f64> = rs.iter().map(|r| r.words as f64 / r.elapsed_s).collect();
            let records_per_s = median(rates);
            let elapsed_s = median(rs.iter().map(|r| r.elapsed_s).collect());
            Row {
                cfg: *cfg,
                records_per_s,
                mb_per_s: median(rs.iter().map(|r| text_bytes as f64 / r.elapsed_s / 1e6).collect()),
                elapsed_s,
                wall_s: median(rs.iter().map(|r| r.wall_s).collect()),
                cpu_ns_per_record: median(rs.iter().map(|r| r.cpu_s * 1e9 / r.words as f64).collect()),
                ratio: f64::NAN,
                cpu_ratio: f64::NAN,
            }
        })
        .collect();
    // Ratios pair each shmflow run with the in-process run of the same parallelism in the
    // same repetition (minutes apart at most, so under similar load), then take the median.
    let per_run = |rs: &[Run], f: fn(&Run) -> f64| rs.iter().map(f).collect::<Vec<f64>>();
    let rate = |r: &Run| r.words as f64 / r.elapsed_s;
    let cpu = |r: &Run| r.cpu_s * 1e9 / r.words as f64;
    let baseline = |p: u32| configs.iter().position(|c| c.system == System::InProcess && c.parallelism == p);
    let paired = |k: usize, f: fn(&Run) -> f64| {
        baseline(configs[k].parallelism).map_or(f64::NAN, |b| {
            median(per_run(&runs[k], f).iter().zip(per_run(&runs[b], f)).map(|(x, y)| x / y).collect())
        })
    };
    let rows: Vec<Row> =
        rows.iter().enumerate().map(|(k, r)| Row { ratio: paired(k, rate), cpu_ratio: paired(k, cpu), ..*r }).collect();
    rows
}

/// Writes the rows (and the bare round trip) as the bench report's JSON records.
fn write_json(path: &std::path::Path, rows: &[Row], rtt: Option<f64>, mb: u64, full: bool) -> Res<()> {
    let mut out = Vec::new();
    let run = if full { "full" } else { "quick" };
    for r in rows {
        let mut metrics = vec![
            ("records_per_s", r.records_per_s),
            ("mb_per_s", r.mb_per_s),
            ("elapsed_s", r.elapsed_s),
            ("cpu_ns_per_record", r.cpu_ns_per_record),
        ];
        if r.cfg.system == System::Shmflow {
            metrics.push(("records_per_s_ratio", r.ratio));
            metrics.push(("cpu_ns_per_record_ratio", r.cpu_ratio));
        }
        for (metric, value) in metrics {
            let v = if value.is_finite() { format!("{value:.4}") } else { "null".into() };
            out.push(format!(
                "  {{\"bench\":\"wordcount\",\"run\":\"{run}\",\"system\":\"{}\",\"parallelism\":{},\"workers\":{},\
                     \"text_mb\":{mb},\"metric\":\"{metric}\",\"value\":{v}}}",
                r.cfg.system.name(),
                r.cfg.parallelism,
                r.cfg.workers
            ));
        }
    }
    if let Some(r) = rtt {
        out.push(format!(
            "  {{\"bench\":\"wordcount\",\"run\":\"{run}\",\"system\":\"bare-atomic\",\"parallelism\":null,\
                 \"workers\":null,\"text_mb\":null,\"metric\":\"rtt_ns\",\"value\":{r:.1}}}"
        ));
    }
    std::fs::write(path, format!("[\n{}\n]\n", out.join(",\n")))?;
    println!("\nwrote {}", path.display());
    Ok(())
}
