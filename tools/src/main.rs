//! `shmflow-tools report DIR`: merges the flat JSON records the benchmarks wrote into
//! `DIR/*.json` (each an array of objects with `bench`, `system`, ..., `metric`, `value`)
//! into `DIR/results.json`, and writes `DIR/report.md`: the machine, then one table per
//! benchmark with a row per configuration and a column per metric, so any two systems can
//! be compared side by side. `tools/bench-report` runs the benchmarks and then this.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || args[1] != "report" {
        eprintln!("usage: shmflow-tools report DIR");
        std::process::exit(2);
    }
    if let Err(e) = report(Path::new(&args[2])) {
        eprintln!("shmflow-tools: error: {e}");
        std::process::exit(1);
    }
}

fn read_records(dir: &Path) -> Result<Vec<Map<String, Value>>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.file_name().is_some_and(|n| n != "results.json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        let arr = v.as_array().ok_or_else(|| format!("{}: not a JSON array", f.display()))?;
        for r in arr {
            match r.as_object() {
                Some(o) if o.contains_key("metric") && o.contains_key("value") => out.push(o.clone()),
                _ => return Err(format!("{}: a record without metric and value: {r}", f.display())),
            }
        }
    }
    Ok(out)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let siblings = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list")
        .map_or("unknown".to_string(), |s| s.trim().to_string());
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or("unknown".into(), |s| s.trim().to_string());
    format!("- CPU: {model}\n- logical CPUs: {cpus}\n- SMT siblings of cpu0: {siblings}\n- kernel: {kernel}\n")
}

fn cell(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.abs() >= 1e6 => format!("{:.3}e6", x / 1e6),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.3}"),
        None => v.to_string(),
    }
}

fn report(dir: &Path) -> Result<(), String> {
    let records = read_records(dir)?;
    if records.is_empty() {
        return Err(format!("no benchmark records in {}", dir.display()));
    }
    let all: Vec<Value> = records.iter().cloned().map(Value::Object).collect();
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut md = String::from("# shmflow benchmark report\n\nMeasured side by side in one run on:\n\n");
    md.push_str(&machine());
    // bench -> configuration (all fields but metric/value/bench) -> metric -> value
    let mut by_bench: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> = BTreeMap::new();
    let mut metrics: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &records {
        let bench = r.get("bench").and_then(Value::as_str).unwrap_or("?").to_string();
        let metric = r["metric"].as_str().unwrap_or("?").to_string();
        let config: Vec<String> = r
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "bench" | "metric" | "value"))
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
            .collect();
        by_bench
            .entry(bench.clone())
            .or_default()
            .entry(config.join(" "))
            .or_default()
            .insert(metric.clone(), r["value"].clone());
        metrics.entry(bench).or_default().insert(metric);
    }
    for (bench, rows) in &by_bench {
        let cols: Vec<&String> = metrics[bench].iter().collect();
        let _ = writeln!(md, "\n## {bench}\n");
        let _ = writeln!(md, "| configuration | {} |", cols.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(cols.len()));
        for (config, vals) in rows {
            let cells: Vec<String> = cols.iter().map(|c| vals.get(*c).map_or(String::new(), cell)).collect();
            let _ = writeln!(md, "| {config} | {} |", cells.join(" | "));
        }
    }
    md.push_str("\nRe-run with `tools/bench-report [--quick] [--out DIR]`.\n");
    std::fs::write(dir.join("report.md"), md).map_err(|e| e.to_string())?;
    println!("wrote {} and {}", dir.join("results.json").display(), dir.join("report.md").display());
    Ok(())
}
