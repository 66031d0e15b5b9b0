//! The `shmflow` command line: `main` parses ([`cli`]) and dispatches to a module per
//! command.
//!
//! ```text
//!  cli      the flags and subcommands (clap)
//!  run      shmflow run wordcount | window-wordcount | shuffle: options, input, output, summary
//!  jobs/    the built-in jobs themselves (tests and benches include them by path)
//!  jobdir   the job directory and temp output that run makes and clean finds
//!  inspect  shmflow check, shmflow top (read-only attach)
//!  clean    shmflow clean
//!  demo     shmflow demo (and its consumer process)
//!  common   the error type, a child guard, the bounds on records
//! ```

use clap::Parser;
mod jobs;

use shmflow::runtime::is_worker;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Run { .. }) && !is_worker() {
        // From the start: a Ctrl-C (or SIGTERM, SIGHUP) at any moment of a run, also before
        // the workers start or while the output is merged, stops it and cleans up.
        shmflow::sync::install_stop_handler();
    }
    let r = match cli.command {
        Cmd::Demo { records, payload, mode, segment_size, credit } => {
            demo(records, payload, mode, segment_size, credit)
        }
        Cmd::DemoConsumer { credit, mode, producer } => demo_consumer(credit, mode, producer),
        // A worker whose coordinator is gone already says so before anything else.
        Cmd::Run { job } => {
            if is_worker() { shmflow::runtime::check_coordinator().map_err(Into::into) } else { Ok(()) }
                .and_then(|()| run_builtin(job))
        }
        Cmd::Top { arena, once, json, interval_ms } => top(arena, once, json, interval_ms),
        Cmd::Check { arena, idle, recover, json } => check(arena, idle, recover, json),
        Cmd::Clean { dry_run } => clean(dry_run),
    };
    match r {
        Ok(()) => common::stdout_error_exit().unwrap_or(ExitCode::SUCCESS),
        Err(e) => {
            if let Some(&shmflow::Error::Interrupted { signal }) = e.downcast_ref::<shmflow::Error>() {
                // One line; the workers were stopped quietly.
                eprintln!("shmflow: interrupted");
                return ExitCode::from(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)));
            }
            // A worker stopped by its coordinator exits quietly: the coordinator reports.
            if is_worker() && matches!(e.downcast_ref::<shmflow::Error>(), Some(shmflow::Error::Cancelled)) {
                return ExitCode::from(3);
            }
            let who = if is_worker() { format!("shmflow worker {}", std::process::id()) } else { "shmflow".into() };
            eprintln!("{who}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `println!` that does not panic when stdout fails: the first error is kept in
/// [`common::STDOUT_ERROR`] (later lines are not written) and `main` ends with it once the command
/// has cleaned up.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if !crate::common::stdout_failed() {
            if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
                let _ = crate::common::STDOUT_ERROR.set(e);
            }
        }
    }};
}

mod clean;
mod cli;
mod common;
mod demo;
mod inspect;
mod jobdir;
mod run;

use clean::clean;
use cli::{Cli, Cmd};
use demo::{demo, demo_consumer};
use inspect::{check, top};
use run::run_builtin;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clean::*;
    use crate::cli::*;
    use crate::inspect::*;
    use crate::jobdir::*;
    use std::path::PathBuf;

    #[test]
    fn run_shuffle_latency_defaults_to_ten_seconds_of_records_at_its_rate() {
        use clap::Parser;
        let records = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Cmd::Run { job: JobCmd::Shuffle { records, latency, rate, .. } } => {
                crate::run::shuffle_records(records, rate.filter(|_| latency))
            }
            _ => panic!("not run shuffle"),
        };
        assert_eq!(records(&["shmflow", "run", "shuffle", "--latency", "--rate", "10000"]), 100_000);
        assert_eq!(records(&["shmflow", "run", "shuffle", "--latency", "--rate", "10000", "--records", "7"]), 7);
        assert_eq!(records(&["shmflow", "run", "shuffle"]), 100_000_000);
    }

    #[test]
    fn only_a_temp_file_of_this_output_with_a_canonical_pid_is_a_temp_output() {
        assert_eq!(temp_pid("counts.tmp-123", "counts"), Some(123));
        assert_eq!(temp_pid("counts.txt.tmp-7", "counts.txt"), Some(7));
        // Another output's, or not a temp file at all.
        assert_eq!(temp_pid("counts2.tmp-123", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-123", "counts2"), None);
        assert_eq!(temp_pid("counts", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-", "counts"), None);
        // Not the pid a run writes: leading zero, sign, letters, out of range.
        assert_eq!(temp_pid("counts.tmp-0123", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-+12", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-12x", "counts"), None);
        assert_eq!(temp_pid("counts.tmp-4294967295", "counts"), None);
    }

    #[test]
    fn the_progress_total_of_the_generated_text_is_its_size() {
        use crate::jobs::{generator, TextSource};
        let src = TextSource::generated_mb(2);
        let TextSource::Generated { lines, seed } = src else { unreachable!() };
        // What the sources report as read: every line with its newline.
        let mut real = 0u64;
        let mut buf = String::new();
        for l in 0..lines {
            buf.clear();
            generator().line(seed, l, &mut buf);
            real += buf.len() as u64 + 1;
        }
        let shmflow::runtime::ProgressTotal::SourceInputBytes(total) = crate::run::text_total(&src, 2) else {
            panic!("a text job's progress counts input bytes");
        };
        let off = (total as f64 - real as f64).abs() / real as f64;
        assert!(off < 0.005, "progress total {total} bytes, the text has {real} ({:.3}% off)", off * 100.0);
    }

    #[test]
    fn generated_mb_with_an_input_is_refused_not_ignored() {
        for job in ["wordcount", "window-wordcount"] {
            let parse = |args: &[&str]| Cli::try_parse_from([&["shmflow", "run", job], args].concat()).map(|_| ());
            assert!(parse(&["--input", "t.txt"]).is_ok(), "{job}");
            assert!(parse(&["--generated-mb", "5"]).is_ok(), "{job}");
            let e = parse(&["--input", "t.txt", "--generated-mb", "5"]).unwrap_err().to_string();
            assert!(e.contains("--generated-mb") && e.contains("--input"), "{job}: {e}");
        }
    }

    #[test]
    fn shuffle_options_that_latency_mode_would_ignore_are_refused() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["shmflow", "run", "shuffle"], args].concat()).map(|_| ());
        assert!(parse(&["--latency", "--rate", "10"]).is_ok());
        assert!(parse(&["--source-work-ns", "5"]).is_ok());
        // --rate alone would run the throughput shuffle at full speed.
        let e = parse(&["--rate", "10"]).unwrap_err().to_string();
        assert!(e.contains("--latency"), "{e}");
        // The latency shuffle has no busy work per record.
        for extra in ["--sink-work-ns", "--source-work-ns"] {
            let e = parse(&["--latency", "--rate", "10", extra, "5"]).unwrap_err().to_string();
            assert!(e.contains(extra), "{e}");
        }
    }

    #[test]
    fn the_latency_shuffle_spins_pinned_unless_told_otherwise_and_other_jobs_do_not() {
        use shmflow::sync::WaitPolicy;
        let opts = |args: &[&str]| match Cli::try_parse_from([&["shmflow", "run", "shuffle"], args].concat()) {
            Ok(Cli { command: Cmd::Run { job: JobCmd::Shuffle { opts, .. } } }) => opts,
            _ => panic!("{args:?} did not parse as run shuffle"),
        };
        let latency = |args: &[&str]| {
            let c = crate::run::latency_config(&opts(&[&["--latency", "--rate", "10"], args].concat())).unwrap();
            (c.wait_policy, c.pin_cpus)
        };
        // Pinned by default when the 4 tasks of p=2 outnumber the CPUs (2 vCPUs here).
        let pin = crate::run::pin_latency_tasks(2, std::thread::available_parallelism().map_or(1, usize::from));
        assert_eq!(latency(&[]), (WaitPolicy::spin(), pin));
        assert_eq!(latency(&["--wait", "adaptive"]), (WaitPolicy::adaptive(), pin));
        assert_eq!(latency(&["--pin-cpus", "false"]), (WaitPolicy::spin(), false));
        assert_eq!(latency(&["--pin-cpus", "--wait", "park"]), (WaitPolicy::park(), true));
        assert!(crate::run::pin_latency_tasks(2, 2) && crate::run::pin_latency_tasks(2, 3));
        assert!(!crate::run::pin_latency_tasks(2, 4) && !crate::run::pin_latency_tasks(1, 16));
        // The throughput shuffle (and every other job) keeps adaptive waits, unpinned.
        let c = crate::run::runtime_config(&opts(&[])).unwrap();
        assert_eq!((c.wait_policy, c.pin_cpus), (WaitPolicy::adaptive(), false));
        let c = crate::run::runtime_config(&opts(&["--pin-cpus", "--wait", "spin"])).unwrap();
        assert_eq!((c.wait_policy, c.pin_cpus), (WaitPolicy::spin(), true));
        // Co-scheduling is off unless asked for, the latency shuffle's too.
        let co = |args: &[&str]| crate::run::runtime_config(&opts(args)).unwrap().co_schedule;
        assert!(!co(&[]) && co(&["--co-schedule"]) && !co(&["--co-schedule", "false"]));
        let co = |args: &[&str]| {
            crate::run::latency_config(&opts(&[&["--latency", "--rate", "10"], args].concat())).unwrap().co_schedule
        };
        assert!(!co(&[]) && co(&["--co-schedule", "true"]));
        // `run wordcount` parks when its source and reducer per subtask outnumber the CPUs.
        let wc = |p, cpus| crate::run::wordcount_wait(p, cpus).policy();
        assert_eq!((wc(2, 2), wc(4, 2), wc(2, 3)), (WaitPolicy::park(), WaitPolicy::park(), WaitPolicy::park()));
        assert_eq!(
            (wc(1, 2), wc(2, 4), wc(4, 16)),
            (WaitPolicy::adaptive(), WaitPolicy::adaptive(), WaitPolicy::adaptive())
        );
    }

    #[test]
    fn an_arena_name_names_a_file_in_dev_shm_only() {
        let name = |n: &str| arena_path(ArenaSel { pid: None, name: Some(n.into()), path: None });
        assert_eq!(name("job-1").unwrap().0, PathBuf::from("/dev/shm/job-1"));
        for bad in ["../../etc/passwd", "/etc/passwd", ".hidden", ""] {
            let e = name(bad).unwrap_err().to_string();
            assert!(e.contains("--name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_job_dir_names_its_temp_output_only_if_the_pids_match() {
        let dir = std::env::temp_dir().join(format!("shmflow-unit-note-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join("out.tmp-4242");
        std::fs::write(&tmp, "partial").unwrap();
        std::fs::write(dir.join(JobDir::OUTPUT_NOTE), tmp.to_str().unwrap()).unwrap();
        let noted = noted_temp_output(&dir, 4242);
        let other_pid = noted_temp_output(&dir, 4243);
        std::fs::write(dir.join(JobDir::OUTPUT_NOTE), "/etc/passwd").unwrap();
        let foreign = noted_temp_output(&dir, 4242);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(noted, Some(tmp));
        assert_eq!(other_pid, None, "a note naming another pid's file is ignored");
        assert_eq!(foreign, None, "a note naming any other file is ignored");
    }
}
