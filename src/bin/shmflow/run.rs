//! `shmflow run`: the built-in jobs with their options, job directory, input, output and summary.

use crate::cli::*;
use crate::common::*;
use crate::jobdir::*;
use crate::jobs::{self, TextSource};
use shmflow::partition::{BufferTimeout, ResultPartitionType, SelectorKind};
use shmflow::runtime::{is_worker, run, JobSummary, ProgressTotal, RuntimeConfig};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) fn runtime_config(o: &JobOpts) -> AnyResult<RuntimeConfig> {
    if o.parallelism == 0 || o.parallelism > 1024 {
        return Err(format!("--parallelism {} is out of range (1..=1024)", o.parallelism).into());
    }
    if o.workers == 0 || o.workers > 256 {
        return Err(format!("--workers {} is out of range (1..=256)", o.workers).into());
    }
    if o.arena_size < 1 << 20 || o.arena_size > 1 << 40 {
        return Err(format!("--arena-size {} is out of range (1 MiB..=1 TiB)", o.arena_size).into());
    }
    let defaults = RuntimeConfig::default();
    let heartbeat_timeout = match o.heartbeat_timeout_ms {
        None => defaults.heartbeat_timeout,
        Some(ms) if (100..=3_600_000).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => return Err(format!("--heartbeat-timeout-ms {ms} is out of range (100..=3600000)").into()),
    };
    Ok(RuntimeConfig {
        workers: o.workers,
        heartbeat_timeout,
        buffer_timeout: BufferTimeout::from_millis(o.buffer_timeout)?,
        segment_size: o.segment_size.unwrap_or(defaults.segment_size),
        arena_size: o.arena_size,
        progress: !o.quiet && !o.json,
        wait_policy: o.wait.unwrap_or(Mode::DEFAULT).policy(),
        pin_cpus: o.pin_cpus.unwrap_or(false),
        co_schedule: o.co_schedule.unwrap_or(false),
        debloat: match o.debloat {
            None => None,
            Some(ms) if (1..=60_000).contains(&ms) => Some(shmflow::gate::DebloatConfig {
                target: Duration::from_millis(ms),
                ..shmflow::gate::DebloatConfig::default()
            }),
            Some(ms) => return Err(format!("--debloat {ms} is out of range (1..=60000 ms)").into()),
        },
        ..defaults
    })
}

pub(crate) fn print_summary(s: &JobSummary, json: bool, extra: serde_json::Value) {
    if json {
        let mut v = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        out!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    out!(
        "{}: {} records, {:.1} MB through the first exchange in {:.3} s: {:.2} M records/s ({} workers, {} subtasks)",
        s.job,
        s.records,
        s.bytes as f64 / 1e6,
        s.elapsed_s,
        s.records_per_s / 1e6,
        s.workers,
        s.subtasks
    );
    for (name, a) in &s.accumulators {
        match a {
            shmflow::runtime::accumulators::Accumulator::Sum(v) => out!("  accumulator {name}: {v}"),
            shmflow::runtime::accumulators::Accumulator::List(l) => out!("  accumulator {name}: {l:?}"),
        }
    }
    for e in &s.edges {
        out!(
            "  edge {} -> {} [{} {}]: {} records, {:.1} MB, max in flight {} segments ({:.1} MB), back-pressured {:.0} ms ({:.1}%)",
            e.from,
            e.to,
            e.selector,
            e.partition_type,
            e.records,
            e.bytes as f64 / 1e6,
            e.max_in_flight_segments,
            e.max_in_flight_bytes as f64 / 1e6,
            e.back_pressured_ms,
            e.back_pressured_ratio * 100.0
        );
    }
}

/// The input file's length as the coordinator saw it, handed to the workers so that every
/// subtask reads the same text (see [`TextSource::File`]).
pub(crate) const INPUT_LEN_ENV: &str = "SHMFLOW_INPUT_LEN";

pub(crate) fn text_source(input: Option<PathBuf>, mb: u64) -> AnyResult<TextSource> {
    let mut src = match input {
        Some(p) => TextSource::file(p),
        None => {
            if mb == 0 || mb > 100_000 {
                return Err(format!("--generated-mb {mb} is out of range (1..=100000)").into());
            }
            TextSource::generated_mb(mb)
        }
    };
    if is_worker() {
        if let TextSource::File { len, .. } = &mut src {
            let v = std::env::var(INPUT_LEN_ENV).map_err(|_| format!("worker started without {INPUT_LEN_ENV}"))?;
            *len = Some(v.parse().map_err(|_| format!("{INPUT_LEN_ENV}={v:?} is not a length"))?);
        }
    } else {
        if let TextSource::File { path, .. } = &src {
            refuse_inherited(path)?;
            refuse_unsized(path)?;
        }
        if let Some(note) = src.validate()? {
            eprintln!("shmflow: note: {note}");
        }
        if let TextSource::File { len: Some(n), .. } = &src {
            // Workers are started from this process and inherit the variable.
            std::env::set_var(INPUT_LEN_ENV, n.to_string());
        }
    }
    Ok(src)
}

/// The input of a text job for the progress bar: the file's bytes, or the generated
/// text's (its expected size: about 1.2x `--generated-mb` MB, see
/// [`TextSource::expected_bytes`]).
pub(crate) fn text_total(src: &TextSource, generated_mb: u64) -> ProgressTotal {
    let bytes = src.expected_bytes().unwrap_or_else(|| generated_mb.saturating_mul(1_000_000));
    ProgressTotal::SourceInputBytes(bytes)
}

/// Refuses an input that names one of this process's open descriptors (`/dev/stdin`,
/// `/dev/fd/N`, `/proc/self/fd/N`, directly or through symlinks): the workers open
/// `--input` by its path, and theirs are other descriptors (stdin `/dev/null`), so they
/// would fail with "not a regular file" or read something else.
pub(crate) fn refuse_inherited(path: &std::path::Path) -> AnyResult<()> {
    use std::path::Path;
    let own = format!("/proc/{}/fd", std::process::id());
    let prefixes = [Path::new("/dev/stdin"), Path::new("/dev/fd"), Path::new("/proc/self/fd"), Path::new(&own)];
    let prefixes = [&prefixes[..], &[Path::new("/proc/thread-self/fd")]].concat();
    let mut p = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    // Following the links one by one (bounded as the kernel's 40): the last is the file
    // itself, which canonicalize would give without saying it was a descriptor.
    for _ in 0..40 {
        // The directories on the way resolved (`..`, a symlink to /proc/self/fd), the last
        // component kept as it is.
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            if let Ok(dir) = std::fs::canonicalize(dir) {
                p = dir.join(name);
            }
        }
        if prefixes.iter().any(|d| p.starts_with(d)) {
            return Err(format!(
                "--input {} is a descriptor of this process (standard input?), which the workers do not \
                 inherit (they open --input by its path): save the input to a file and pass its path",
                path.display()
            )
            .into());
        }
        match std::fs::read_link(&p) {
            Ok(t) => p = p.parent().map_or_else(|| t.clone(), |d| d.join(&t)),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Refuses an input whose size the kernel reports as 0 although it has content (files of
/// /proc and /sys): the input is memory-mapped by its length, so it would count no words.
pub(crate) fn refuse_unsized(path: &std::path::Path) -> AnyResult<()> {
    use std::io::Read;
    let Ok(m) = std::fs::metadata(path) else {
        return Ok(()); // `validate` says what is wrong with it.
    };
    if m.is_file() && m.len() == 0 {
        let mut byte = [0u8; 1];
        let has_content = std::fs::File::open(path).and_then(|mut f| f.read(&mut byte)).is_ok_and(|n| n > 0);
        if has_content {
            return Err(format!(
                "--input {} reports a size of 0 bytes but has content (a file of /proc or /sys?); \
                 shmflow maps its input by its size: copy it to a regular file first",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

/// `--output`, checked and created (as a temp file) by the coordinator before the job runs;
/// workers do not write it.
/// An output that is the input file is refused.
pub(crate) fn output_file(src: &TextSource, output: Option<&std::path::Path>) -> AnyResult<Option<jobs::OutputFile>> {
    match output {
        Some(p) if !is_worker() => {
            if p == std::path::Path::new("-") {
                // Not stdout: the output is written to a temp file and renamed, and the
                // summary goes to stdout. Silently making a file named "-" surprised users.
                return Err(
                    "--output - (standard output) is not supported: name a file (./- for a file named -)".into()
                );
            }
            if let TextSource::File { path, .. } = src {
                jobs::refuse_output_over_input(path, p)?;
            }
            remove_stale_temps(p);
            Ok(Some(jobs::OutputFile::create(p)?))
        }
        _ => Ok(None),
    }
}

/// Removes the temp files `<output>.tmp-<pid>` that runs killed before they finished left
/// beside `output` (their pid is gone; a live pid's file is kept, it may be writing it).
pub(crate) fn remove_stale_temps(output: &std::path::Path) {
    // The temp file sits beside the file a symlink points to (as `OutputFile` does).
    let target = std::fs::canonicalize(output).unwrap_or_else(|_| output.to_path_buf());
    let (Some(name), Some(dir)) = (target.file_name().and_then(|n| n.to_str()), target.parent()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|f| temp_pid(f, name)) else {
            continue;
        };
        let stale = pid != std::process::id() && !pid_alive(pid) && own_regular_file(&e.path());
        if stale && std::fs::remove_file(e.path()).is_ok() {
            eprintln!("shmflow: note: removed {}, left by a run (pid {pid}) that died", e.path().display());
        }
    }
}

pub(crate) fn blocking_unsupported(o: &JobOpts, job: &str) -> AnyResult<()> {
    if o.exchange == Exchange::Blocking {
        return Err(format!("--exchange blocking is supported by wordcount only, not by {job}").into());
    }
    Ok(())
}

/// `run shuffle`'s records when `--records` is not given: 100,000,000, or with `--latency`
/// ten seconds' worth at `--rate` (the throughput default would take hours at a latency
/// rate, with the progress line stuck at 0.0%).
pub(crate) fn shuffle_records(records: Option<u64>, latency_rate: Option<u64>) -> u64 {
    const LATENCY_SECONDS: u64 = 10;
    records.unwrap_or_else(|| latency_rate.map_or(100_000_000, |r| r.saturating_mul(LATENCY_SECONDS)))
}

pub(crate) fn run_builtin(job: JobCmd) -> AnyResult<()> {
    match job {
        JobCmd::Wordcount { input, output, generated_mb, opts } => {
            let mut cfg = runtime_config(&opts)?;
            if opts.wait.is_none() {
                let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                cfg.wait_policy = wordcount_wait(opts.parallelism, cpus).policy();
            }
            let src = text_source(input, generated_mb)?;
            // Only a progress bar needs the total: for the generated text it takes the
            // generator, which a coordinator otherwise never builds (its workers do).
            if cfg.progress {
                cfg.progress_total = Some(text_total(&src, generated_mb));
            }
            let out_file = output_file(&src, output.as_deref())?;
            let dir = JobDir::get()?;
            dir.note_output(out_file.as_ref())?;
            let ptype = match opts.exchange {
                Exchange::Pipelined => ResultPartitionType::PipelinedBounded,
                Exchange::Blocking => ResultPartitionType::Blocking,
            };
            let graph = jobs::wordcount_job_with(src, opts.parallelism, dir.path.clone(), ptype);
            if let Some(s) = run(graph, &cfg)? {
                let m = merge_interruptibly(&dir.path, out_file, cfg.progress)?;
                let lines = &m.lines;
                let total: u64 = lines.iter().filter_map(|l| count_of(l)).sum();
                let extra = serde_json::json!({ "distinct_words": lines.len(), "words": total, "merge_s": m.secs });
                print_summary(&s, opts.json, extra);
                if !opts.json {
                    m.print(s.elapsed_s);
                }
                if output.is_none() && !opts.json {
                    out!("{} distinct words, {total} words; the most frequent:", lines.len());
                    for l in jobs::most_frequent(lines, 10, count_of) {
                        out!("  {}", String::from_utf8_lossy(l));
                    }
                }
            }
        }
        JobCmd::WindowWordcount { input, output, generated_mb, window, slide, opts } => {
            blocking_unsupported(&opts, "window-wordcount")?;
            if window == 0 || slide == 0 || slide > window {
                return Err(format!("--window {window} and --slide {slide} must satisfy 0 < slide <= window").into());
            }
            let mut cfg = runtime_config(&opts)?;
            let src = text_source(input, generated_mb)?;
            // Only a progress bar needs the total: for the generated text it takes the
            // generator, which a coordinator otherwise never builds (its workers do).
            if cfg.progress {
                cfg.progress_total = Some(text_total(&src, generated_mb));
            }
            let out_file = output_file(&src, output.as_deref())?;
            let dir = JobDir::get()?;
            dir.note_output(out_file.as_ref())?;
            let graph = jobs::window_wordcount_job(src, opts.parallelism, window, slide, dir.path.clone());
            if let Some(s) = run(graph, &cfg)? {
                let m = merge_interruptibly(&dir.path, out_file, cfg.progress)?;
                print_summary(&s, opts.json, serde_json::json!({ "window_results": m.lines.len(), "merge_s": m.secs }));
                if !opts.json {
                    m.print(s.elapsed_s);
                    out!("{} window results", m.lines.len());
                }
            }
        }
        JobCmd::Shuffle { records, payload, selector, latency: true, rate, opts, .. } => {
            shuffle_latency(shuffle_records(records, rate.or(Some(0))), payload, &selector, rate.unwrap_or(0), opts)?;
        }
        JobCmd::Shuffle { records, payload, selector, sink_work_ns, source_work_ns, opts, .. } => {
            let records = shuffle_records(records, None);
            blocking_unsupported(&opts, "shuffle")?;
            let kind: SelectorKind = selector.parse()?;
            if !(8..=256 << 20).contains(&payload) {
                return Err(format!("--payload {payload} is out of range (8..=268435456)").into());
            }
            check_records(records)?;
            for (flag, ns) in [("--sink-work-ns", sink_work_ns), ("--source-work-ns", source_work_ns)] {
                if ns > MAX_WORK_NS {
                    return Err(format!("{flag} {ns} is out of range (0..={MAX_WORK_NS})").into());
                }
            }
            let mut cfg = runtime_config(&opts)?;
            cfg.progress_total = Some(ProgressTotal::SourceRecords(records));
            let dir = JobDir::get()?;
            let graph = jobs::shuffle_job(
                records,
                payload,
                kind,
                opts.parallelism,
                dir.path.clone(),
                (source_work_ns, sink_work_ns),
            );
            if opts.segment_size.is_none() {
                cfg.segment_size = cfg.fit_segment_size(&graph, &THROUGHPUT_SEGMENT_SIZES)?;
            }
            if let Some(s) = run(graph, &cfg)? {
                let (n, sum, bad) = jobs::shuffle_totals(&dir.path)?;
                let fan = if kind == SelectorKind::Broadcast { u64::from(opts.parallelism) } else { 1 };
                // Within bounds (records <= 10^12, fan <= 1024); checked all the same.
                let want = records.checked_mul(fan).ok_or("--records times --parallelism overflows")?;
                // The sinks sum sequence numbers with wrapping_add: the exact sum (u128, no
                // wrap before the halving) modulo 2^64.
                let seq_sum = u128::from(records) * u128::from(records.saturating_sub(1)) / 2;
                let want_sum = (seq_sum as u64).wrapping_mul(fan);
                if n != want || sum != want_sum || bad != 0 {
                    return Err(format!(
                        "shuffle check failed: {n} records (expected {want}), sequence sum {sum} (expected {want_sum}), {bad} bad bytes"
                    )
                    .into());
                }
                let mbps = s.records as f64 * f64::from(payload) / s.elapsed_s / 1e6;
                let extra =
                    serde_json::json!({ "mb_per_s": mbps, "checksum_ok": true, "segment_size": cfg.segment_size });
                print_summary(&s, opts.json, extra);
                if !opts.json {
                    out!("{:.1} MB/s of payload end to end; every record arrived intact", mbps);
                }
            }
        }
    }
    Ok(())
}

/// `--wait`'s default for `run wordcount`: park when its `2 * parallelism` tasks (a source
/// and a reducer per subtask) outnumber the `cpus` it may use, adaptive otherwise. With more
/// busy tasks than cores a task waiting for input or credit has another of the job's tasks
/// to give its core to, and polling (adaptive) costs that task time: session 10, 40 MB of
/// generated text, interleaved rounds under load 13-17, parking took 7% less CPU per word
/// at p=2 (medians of 3: 210 vs 226 ns), about the same at p=4 (210 vs 215 ns), and ran
/// faster in 6 of 6 pairs (p=2 elapsed 3.6 vs 5.1 s, p=4 2.6 vs 4.3 s).
pub(crate) fn wordcount_wait(parallelism: u32, cpus: usize) -> Mode {
    if 2 * parallelism as usize > cpus {
        Mode::Park
    } else {
        Mode::DEFAULT
    }
}

/// The segment sizes `run shuffle` (throughput) tries when `--segment-size` is not given,
/// largest first ([`RuntimeConfig::fit_segment_size`]). With four tasks on two vCPUs a
/// generator and a sink take turns on a core, and a turn moves at most the segments in
/// flight: 16 B records, CPU per record about 14-22 ns at 32 KiB and 11 ns at 256 KiB,
/// 1 KiB records 170-200 ns and 93-108 ns (issue 12, session 8: docs/performance-history.md,
/// "Jobs beside Apache Flink 2.3", its paragraph "Session 8: the throughput shuffle picks
/// its segment size").
pub(crate) const THROUGHPUT_SEGMENT_SIZES: [u32; 4] = [256 << 10, 128 << 10, 64 << 10, 32 << 10];

/// The runtime settings of `run shuffle --latency`: as every job's, but its sinks spin and,
/// when its tasks (a generator and a sink per subtask) outnumber the CPUs it may use, each
/// pipeline slice (generator `s` and sink `s`, one worker process) shares the `s`-th CPU,
/// unless `--wait` or `--pin-cpus` say otherwise. Four tasks on two vCPUs leave no core to
/// spin on unpinned: a sink then waits for time slices (medians of 3 interleaved rounds at
/// load 13-18: p50 / p99 3.1 / 851 us unpinned, 2.0 / 8.5 us pinned). With a core per task
/// pinning would only make a generator and a sink take turns on one.
pub(crate) fn latency_config(opts: &JobOpts) -> AnyResult<RuntimeConfig> {
    let mut cfg = runtime_config(opts)?;
    cfg.wait_policy = opts.wait.unwrap_or(Mode::LATENCY).policy();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    cfg.pin_cpus = opts.pin_cpus.unwrap_or_else(|| pin_latency_tasks(opts.parallelism, cpus));
    cfg.co_schedule = opts.co_schedule.unwrap_or(false);
    Ok(cfg)
}

/// Whether the latency shuffle pins its pipeline slices by default: when its `2 *
/// parallelism` tasks outnumber the `cpus` it may use.
pub(crate) fn pin_latency_tasks(parallelism: u32, cpus: usize) -> bool {
    2 * parallelism as usize > cpus
}

/// `run shuffle --latency --rate N`.
pub(crate) fn shuffle_latency(records: u64, payload: u32, selector: &str, rate: u64, opts: JobOpts) -> AnyResult<()> {
    blocking_unsupported(&opts, "shuffle --latency")?;
    let kind: SelectorKind = selector.parse()?;
    if !matches!(kind, SelectorKind::KeyHash | SelectorKind::Rebalance) {
        return Err(format!("--latency takes --selector key-hash or rebalance, not {selector}").into());
    }
    if !(16..=256 << 20).contains(&payload) {
        return Err(format!("--payload {payload} is out of range for --latency (16..=268435456)").into());
    }
    if !(1..=100_000_000).contains(&rate) {
        return Err(format!("--rate {rate} is out of range (1..=100000000)").into());
    }
    check_records(records)?;
    let mut cfg = latency_config(&opts)?;
    cfg.progress_total = Some(ProgressTotal::SourceRecords(records));
    let dir = JobDir::get()?;
    let graph = jobs::shuffle_latency_job(records, payload, kind, opts.parallelism, dir.path.clone(), rate);
    let Some(s) = run(graph, &cfg)? else {
        return Ok(());
    };
    let (n, sum, bad) = jobs::shuffle_totals(&dir.path)?;
    let want_sum = (u128::from(records) * u128::from(records.saturating_sub(1)) / 2) as u64;
    if n != records || sum != want_sum || bad != 0 {
        return Err(format!(
            "shuffle check failed: {n} records (expected {records}), sequence sum {sum} (expected {want_sum}), {bad} bad bytes"
        )
        .into());
    }
    let h = jobs::latency_histogram(&dir.path, jobs::Latency::FromStamp)?;
    let d = jobs::latency_histogram(&dir.path, jobs::Latency::FromDue)?;
    print_summary(
        &s,
        opts.json,
        serde_json::json!({
            "rate": rate,
            "latency_us": percentiles_us(&h),
            "latency_from_schedule_us": percentiles_us(&d),
            "checksum_ok": true,
        }),
    );
    if !opts.json {
        for (h, what) in [(&h, "record latency"), (&d, "from the send schedule")] {
            if h.is_empty() {
                // The first tenth of each generator's share is warm-up, not measured; a sink
                // measures from the schedule only once a warm-up record told it the start.
                out!("{what} at {rate} records/s: no samples (too few records: the first tenth of each generator's are warm-up)");
                continue;
            }
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            out!(
                "{what} at {rate} records/s over {} samples: p50 {:.2} us, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, p99.99 {:.2}, max {:.2}",
                h.len(),
                us(0.5),
                us(0.9),
                us(0.99),
                us(0.999),
                us(0.9999),
                h.max() as f64 / 1e3
            );
        }
    }
    Ok(())
}

/// A latency histogram's report (microseconds): samples, p50 .. p99.99, max; only the
/// samples (0) for an empty one.
pub(crate) fn percentiles_us(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::json!({ "samples": 0 });
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    serde_json::json!({
        "samples": h.len(),
        "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p99_9": us(0.999), "p99_99": us(0.9999),
        "max": h.max() as f64 / 1e3,
    })
}

/// The text jobs' output merged after the job: its lines, from how many part files, in
/// how long (single-threaded, after the job's own time: the summary says both).
pub(crate) struct Merged {
    pub(crate) lines: Vec<Vec<u8>>,
    pub(crate) parts: usize,
    /// Whether the lines were sorted and written to `--output`.
    pub(crate) written: bool,
    pub(crate) secs: f64,
}

impl Merged {
    /// The summary's line on the merge, beside the job's `job_s`.
    pub(crate) fn print(&self, job_s: f64) {
        out!(
            "  after the job's {job_s:.3} s: {} lines merged from {} part files{} in {:.3} s",
            self.lines.len(),
            self.parts,
            if self.written { ", sorted and written to --output" } else { "" },
            self.secs
        );
    }
}

/// [`jobs::merge_parts`] on a thread of its own, so that a stop signal ends the run at
/// once, however large the output: the temp output is removed (the job directory goes when
/// the caller's [`JobDir`] drops) and the run ends with [`shmflow::Error::Interrupted`].
/// With `progress`, says on stderr that the merge runs (it can take longer than the job
/// for many distinct words).
pub(crate) fn merge_interruptibly(
    dir: &std::path::Path,
    out: Option<jobs::OutputFile>,
    progress: bool,
) -> AnyResult<Merged> {
    use std::sync::mpsc::RecvTimeoutError;
    let start = std::time::Instant::now();
    let parts = jobs::part_files(dir)?.len();
    let written = out.is_some();
    if progress {
        let then = if written { ", sorting by word and writing --output" } else { "" };
        eprintln!("merging {parts} part files{then}...");
    }
    let tmp = out.as_ref().and_then(|o| o.temp_path().map(std::path::Path::to_path_buf));
    let dir = dir.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("merge".into()).spawn(move || {
        let _ = tx.send(jobs::merge_parts(&dir, out));
    })?;
    // Ends when the merge thread sends its result or ends without one.
    loop {
        if let Some(signal) = shmflow::sync::stop_signal() {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(shmflow::Error::Interrupted { signal }.into());
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(r) => return Ok(Merged { lines: r?, parts, written, secs: start.elapsed().as_secs_f64() }),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err("merging the part files failed (a panic)".into()),
        }
    }
}

pub(crate) fn count_of(line: &[u8]) -> Option<u64> {
    let tab = line.iter().rposition(|&c| c == b'\t')?;
    std::str::from_utf8(&line[tab + 1..]).ok()?.parse().ok()
}
