//! The machine a run was measured on, recorded in `DIR/machine.json`.
//!
//! `shmflow-tools machine DIR start [--quick]` writes what is known before the benchmarks
//! run (CPU, topology, caches, kernel, load average, date, git commit); `shmflow-tools
//! machine DIR end [--failed "a b"]` adds the load average and date at the end and the
//! benchmarks that failed. The report puts it at the top: on a shared, noisy machine the
//! load while it ran says as much about a figure as the CPU model.

use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// The file name of the machine record in the results directory.
pub const FILE: &str = "machine.json";

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `/proc/cpuinfo`'s first value for `key`.
fn cpuinfo_field<'a>(cpuinfo: &'a str, key: &str) -> Option<&'a str> {
    cpuinfo
        .lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
}

/// Physical cores: distinct (physical id, core id) pairs in `/proc/cpuinfo`.
fn physical_cores(cpuinfo: &str) -> usize {
    let mut pairs = std::collections::BTreeSet::new();
    let (mut phys, mut core) = (None, None);
    for l in cpuinfo.lines().chain(std::iter::once("")) {
        match l.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("physical id", v)) => phys = Some(v.to_string()),
            Some(("core id", v)) => core = Some(v.to_string()),
            None if l.trim().is_empty() => {
                if let Some(c) = core.take() {
                    pairs.insert((phys.take(), c));
                }
            }
            _ => {}
        }
    }
    pairs.len()
}

/// A sysfs cache size ("1024K", "32M") in bytes.
fn parse_size(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1024.0),
        'M' => (&s[..s.len() - 1], 1024.0 * 1024.0),
        'G' => (&s[..s.len() - 1], 1024.0 * 1024.0 * 1024.0),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// cpu0's data/unified cache of level `level`, as "1 MiB" (the raw string if unparsable).
fn cache_size(level: &str) -> Option<String> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    let mut found = None;
    for e in dir.flatten() {
        let p = e.path();
        let get = |f: &str| read(&p.join(f).to_string_lossy());
        if get("level").as_deref() == Some(level) && get("type").as_deref() != Some("Instruction") {
            found = get("size").map(|raw| parse_size(&raw).map_or(raw, crate::units::bytes));
        }
    }
    found
}

fn now() -> String {
    run("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]).unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    read("/proc/loadavg").map_or("unknown".into(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The git commit of the work tree, with " (dirty)" when tracked files differ from it.
fn commit() -> String {
    let Some(hash) = run("git", &["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    // --no-optional-locks: a report must not touch the repository's index.
    let dirty = run("git", &["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{hash} (dirty)")
    } else {
        hash
    }
}

/// What is known about the machine now, for the start of a run of kind `run`.
pub fn probe(run_kind: &str) -> Map<String, Value> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let logical = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let cores = physical_cores(&cpuinfo);
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("run", run_kind.into());
    put("cpu_model", cpuinfo_field(&cpuinfo, "model name").unwrap_or("unknown").into());
    put("logical_cpus", logical.into());
    put("cores", if cores > 0 { cores.into() } else { Value::Null });
    put("threads_per_core", logical.checked_div(cores).map_or(Value::Null, Value::from));
    put(
        "smt_siblings_of_cpu0",
        read("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").map_or(Value::Null, Value::from),
    );
    put("l2", cache_size("2").map_or(Value::Null, Value::from));
    put("l3", cache_size("3").map_or(Value::Null, Value::from));
    put("kernel", read("/proc/sys/kernel/osrelease").map_or(Value::Null, Value::from));
    put("load_start", loadavg().into());
    put("started", now().into());
    put("commit", commit().into());
    m
}

/// Adds the end of the run to a machine record: load average, date and the benchmarks that
/// failed (empty when all ran).
pub fn finish(m: &mut Map<String, Value>, failed: &[String]) {
    m.insert("load_end".into(), loadavg().into());
    m.insert("finished".into(), now().into());
    m.insert("failed".into(), failed.iter().map(|s| Value::from(s.as_str())).collect());
}

/// Reads `DIR/machine.json`, if there is one.
///
/// # Errors
/// A file that exists but is not a JSON object.
pub fn load(dir: &Path) -> Result<Option<Map<String, Value>>, String> {
    let p = dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(None);
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(format!("{}: not a JSON object", p.display())),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Writes `DIR/machine.json`.
///
/// # Errors
/// The file cannot be written.
pub fn save(dir: &Path, m: &Map<String, Value>) -> Result<(), String> {
    let p = dir.join(FILE);
    let text = serde_json::to_string_pretty(&Value::Object(m.clone())).map_err(|e| e.to_string())?;
    std::fs::write(&p, text + "\n").map_err(|e| format!("{}: {e}", p.display()))
}

/// The machine as a Markdown list (or a line saying it was not recorded).
pub fn markdown(m: Option<&Map<String, Value>>) -> String {
    let Some(m) = m else {
        return "- machine: not recorded (no machine.json in the results directory)\n".into();
    };
    let s = |k: &str| match m.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "unknown".into(),
        Some(v) => v.to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "- CPU: {}", s("cpu_model"));
    let _ = writeln!(
        out,
        "- logical CPUs: {}, physical cores: {}, threads per core: {} (cpu0's SMT siblings: {})",
        s("logical_cpus"),
        s("cores"),
        s("threads_per_core"),
        s("smt_siblings_of_cpu0")
    );
    let _ = writeln!(out, "- caches (cpu0): L2 {}, L3 {}", s("l2"), s("l3"));
    let _ = writeln!(out, "- kernel: {}", s("kernel"));
    let _ = writeln!(out, "- started {}, finished {}", s("started"), s("finished"));
    let _ =
        writeln!(out, "- load average (1, 5, 15 min): {} at the start, {} at the end", s("load_start"), s("load_end"));
    let _ = writeln!(out, "- commit: {}", s("commit"));
    if let Some(Value::Array(f)) = m.get("failed") {
        if !f.is_empty() {
            let names: Vec<String> = f.iter().map(|v| v.as_str().unwrap_or("?").to_string()).collect();
            let _ = writeln!(
                out,
                "- **benchmarks that failed in this run** (their figures are missing): {}",
                names.join(", ")
            );
        }
    }
    out
}

/// A one-line summary of the machine (for the README): CPU, CPUs, kernel, date, commit.
pub fn summary(m: Option<&Map<String, Value>>) -> String {
    let Some(m) = m else {
        return "an unrecorded machine".into();
    };
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string).or_else(|| m.get(k).map(Value::to_string));
    format!(
        "`{}`, {} logical CPUs ({} cores), kernel {}, {}, commit {}",
        s("cpu_model").unwrap_or_default(),
        s("logical_cpus").unwrap_or_default(),
        s("cores").unwrap_or_else(|| "?".into()),
        s("kernel").unwrap_or_default(),
        s("started").unwrap_or_default(),
        s("commit").unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPUINFO: &str = "processor\t: 0\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n\n\
                           processor\t: 1\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n\n\
                           processor\t: 2\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 1\n";

    #[test]
    fn cache_sizes_are_read() {
        assert_eq!(parse_size("2048K"), Some(2097152.0));
        assert_eq!(parse_size("32M"), Some(33554432.0));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn cores_count_distinct_core_ids() {
        assert_eq!(physical_cores(CPUINFO), 2);
        assert_eq!(cpuinfo_field(CPUINFO, "model name"), Some("Test CPU"));
    }

    #[test]
    fn the_machine_record_has_start_and_end() {
        let mut m = probe("quick");
        assert_eq!(m["run"], "quick");
        assert!(m["logical_cpus"].as_u64().unwrap() >= 1);
        finish(&mut m, &["scaling".to_string()]);
        let md = markdown(Some(&m));
        assert!(md.contains("at the end"), "{md}");
        assert!(md.contains("failed in this run** (their figures are missing): scaling"), "{md}");
        assert!(markdown(None).contains("not recorded"));
    }
}
