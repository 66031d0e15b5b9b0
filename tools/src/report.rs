//! `shmflow-tools report DIR`: merges `DIR/*.json` into `DIR/results.json`, draws the plots
//! into `DIR/plots/`, and writes `DIR/report.md`: the run kind and machine, the goals
//! checked against the figures, then per benchmark the systems side by side for its headline
//! metrics, the ratios it computed, and all its figures.

use crate::goals::{self, Goal};
use crate::machine;
use crate::pivot::{details, matrix, ratios, summary};
use crate::plots::{self, Plot};
use crate::records::{bench_of, load_dir, mark_sources, metric_of, run_kind, Record};
use crate::units::metric_label;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::path::Path;

/// Benchmarks in report order; others follow by name.
const BENCH_ORDER: [&str; 7] = ["latency", "throughput", "scaling", "backpressure", "wordcount", "blocking", "debloat"];

/// The metrics worth a systems-side-by-side matrix, in order; a benchmark gets a matrix for
/// each it has (at most three).
const HEADLINES: [&str; 8] = [
    "oneway_p50_ns",
    "oneway_p99_ns",
    "records_per_s",
    "aggregate_records_per_s",
    "gb_per_s",
    "words_per_s",
    "cpu_ns_per_record",
    "p99_ns",
];

/// The key figures of a benchmark with a single system (no matrix compares it), in order.
const KEY_FIGURES: [&str; 14] = [
    "records_per_s",
    "records_per_s_ratio_to_p1",
    "gb_per_s",
    "words_per_s",
    "cpu_ns_per_record",
    "cpu_cores_busy",
    "latency_p50_ns",
    "latency_p99_ns",
    "producer_back_pressured_ms_per_s",
    "inflight_bytes_p50",
    "inflight_bytes_max",
    "barrier_ms_p50",
    "peak_rss_kib",
    "arena_kib",
];

/// The key tables of a benchmark: its headline matrices, or, with one system, its key
/// figures.
pub fn key_tables(recs: &[Record]) -> Vec<(String, crate::pivot::Table)> {
    let m = headline_matrices(recs);
    if !m.is_empty() {
        return m;
    }
    summary(recs, &KEY_FIGURES).map(|t| ("Key figures".to_string(), t)).into_iter().collect()
}

/// The benchmarks among `recs`, in report order.
pub fn benches(recs: &[Record]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in recs {
        if !names.iter().any(|n| n == bench_of(r)) {
            names.push(bench_of(r).to_string());
        }
    }
    let rank = |b: &str| BENCH_ORDER.iter().position(|x| *x == b).unwrap_or(BENCH_ORDER.len());
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    names
}

/// The headline matrices of a benchmark: (title, table).
pub fn headline_matrices(recs: &[Record]) -> Vec<(String, crate::pivot::Table)> {
    HEADLINES
        .iter()
        .filter(|m| recs.iter().any(|r| metric_of(r) == **m))
        .filter_map(|m| matrix(recs, m).map(|t| (format!("{}, systems side by side", metric_label(m)), t)))
        .take(3)
        .collect()
}

/// The paragraph that says what kind of run this was.
pub fn run_note(recs: &[Record], machine: Option<&Map<String, Value>>) -> String {
    let kind = machine.and_then(|m| m.get("run")).and_then(Value::as_str).or(run_kind(recs));
    match kind {
        Some("quick") => "**Smoke run** (`tools/bench-report --quick`): each benchmark ran its short smoke mode. \
                          These figures show that every case runs; they are not for publication."
            .into(),
        Some("full") => "Full run (`tools/bench-report`), every system measured side by side in the same run.".into(),
        _ => "Run kind not recorded.".into(),
    }
}

/// The report as Markdown.
pub fn render(recs: &[Record], machine: Option<&Map<String, Value>>, plots: &[Plot], goals: &[Goal]) -> String {
    let mut md = String::from("# shmflow benchmark report\n\n");
    let _ = writeln!(md, "{}\n", run_note(recs, machine));
    md.push_str("## Machine\n\n");
    md.push_str(&machine::markdown(machine));
    md.push_str(
        "\nRe-run: `tools/bench-report [--quick] [--out DIR]` (the default is the full run; `--quick` the smoke \
         run). Every figure is one record in `results.json` (`bench`, `system`, `metric`, `value` and the \
         configuration), so a script can compare any two systems.\n",
    );
    md.push_str("\n## Goals\n\n");
    md.push_str(&goals::markdown(goals));
    for bench in benches(recs) {
        let these: Vec<Record> = recs.iter().filter(|r| bench_of(r) == bench).cloned().collect();
        let _ = writeln!(md, "\n## {bench}\n");
        let mine: Vec<&Plot> = plots.iter().filter(|p| p.bench == bench).collect();
        if !mine.is_empty() {
            md.push_str("Plots: ");
            md.push_str(&mine.iter().map(|p| format!("[{}]({})", p.title, p.file)).collect::<Vec<_>>().join(" · "));
            md.push_str("\n\n");
        }
        for (title, t) in key_tables(&these) {
            let _ = writeln!(md, "### {title}\n\n{}", t.markdown());
        }
        if let Some(t) = ratios(&these) {
            let _ = writeln!(md, "### Ratios computed by the benchmark\n\n{}", t.markdown());
        }
        let d = details(&these);
        if !d.is_empty() {
            md.push_str("### All figures\n\n");
        }
        for (title, t) in d {
            if let Some(title) = title {
                let _ = writeln!(md, "#### {title}\n");
            }
            let _ = writeln!(md, "{}", t.markdown());
        }
    }
    md
}

/// Runs the report on `dir`.
///
/// # Errors
/// Unreadable or malformed inputs, no records at all, or outputs that cannot be written.
pub fn run(dir: &Path) -> Result<(), String> {
    let recs = load_dir(dir)?;
    if recs.is_empty() {
        return Err(format!("no benchmark records in {}", dir.display()));
    }
    let machine = machine::load(dir)?;
    let all: Vec<Value> = recs.iter().cloned().map(Value::Object).collect();
    let results = dir.join("results.json");
    let text = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?;
    std::fs::write(&results, text + "\n").map_err(|e| format!("{}: {e}", results.display()))?;
    let mut recs = recs;
    mark_sources(&mut recs);
    let plots = plots::draw_all(&recs, dir)?;
    let goals = goals::check(&recs);
    let md = render(&recs, machine.as_ref(), &plots, &goals);
    let report = dir.join("report.md");
    std::fs::write(&report, md).map_err(|e| format!("{}: {e}", report.display()))?;
    println!(
        "wrote {}, {} and {} plot(s) in {}",
        results.display(),
        report.display(),
        plots.len(),
        dir.join("plots").display()
    );
    for g in &goals {
        println!("  goal: {} — {} — {}", g.goal, g.measured, g.verdict.text().replace("**", ""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::parse;

    #[test]
    fn the_report_has_machine_goals_and_a_section_per_bench_in_order() {
        let recs = parse(
            r#"[
          {"bench":"wordcount","system":"shmflow","parallelism":2,"metric":"records_per_s","value":9.47e6,"run":"quick"},
          {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":64,"metric":"oneway_p50_ns","value":212,"run":"quick"},
          {"bench":"latency","system":"bare-atomic","mode":"spin","payload_bytes":64,"metric":"oneway_p50_ns","value":140,"run":"quick"},
          {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":64,"metric":"curve_oneway_ns","percentile":50,"value":212,"run":"quick"}
        ]"#,
        )
        .unwrap();
        let plots = vec![Plot { bench: "latency".into(), title: "T".into(), file: "plots/l.svg".into() }];
        let md = render(&recs, None, &plots, &goals::check(&recs));
        assert!(md.contains("**Smoke run**"));
        assert!(md.contains("machine: not recorded"));
        let lat = md.find("\n## latency\n").unwrap();
        let wc = md.find("\n## wordcount\n").unwrap();
        assert!(md.find("\n## Goals\n").unwrap() < lat && lat < wc);
        assert!(md.contains("Plots: [T](plots/l.svg)\n"));
        assert!(md.contains(
            "### one-way p50, systems side by side\n\n| shmflow | bare-atomic |\n|---:|---:|\n| 212 ns | 140 ns |\n"
        ));
        assert!(md.contains(&format!(
            "| 64 B one-way p50, spin: shmflow ≤ 1.5× bare atomic ping-pong | shmflow 212 ns vs bare atomic 140 ns: \
             1.51×{} | **not met** |",
            crate::goals::UNPAIRED
        )));
        // Curve points are drawn, not tabulated.
        assert!(!md.contains("curve"));
        assert_eq!(benches(&recs), ["latency", "wordcount"]);
    }
}
