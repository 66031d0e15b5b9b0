//! The flat benchmark records: loading `DIR/*.json`, bringing older records to the current
//! conventions, and looking fields up.
//!
//! A record is one JSON object per figure: `bench`, `system`, `metric` and `value` always;
//! `run` (`full` or `quick`, the run kind); `mode` (the wait mode: spin, park, adaptive) where
//! one applies; configuration fields (`payload_bytes`, `record_bytes`, `shape`, `timeout_ms`,
//! `processes`, `batch`, ...) as plain fields. A `system` of the form `a/b` is a ratio of `a`
//! to `b`; a `metric` starting with `curve_` is a point of a percentile curve (with a
//! `percentile` field) that is drawn, not tabulated.

use serde_json::{Map, Value};
use std::path::Path;

/// One figure: a flat JSON object.
pub type Record = Map<String, Value>;

/// Files in the results directory that are not benchmark output.
const NOT_RECORDS: [&str; 2] = ["results.json", "machine.json"];

/// Reads every `DIR/*.json` except `results.json` and `machine.json` (in name order), checks
/// that each is an array of objects with `metric` and `value`, and returns the records,
/// normalized (see [`normalize`]), each with the file it came from as `source` (unless it
/// names one). A directory with no benchmark files but a `results.json` (a published run
/// kept without its parts) is read from that.
///
/// # Errors
/// A directory or file that cannot be read, a file that is not a JSON array of objects, or
/// a record without `metric` or `value`.
pub fn load_dir(dir: &Path) -> Result<Vec<Record>, String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !NOT_RECORDS.contains(&n))
        })
        .collect();
    files.sort();
    if files.is_empty() && dir.join("results.json").exists() {
        files.push(dir.join("results.json"));
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        for mut r in parse(&text).map_err(|e| format!("{}: {e}", f.display()))? {
            r.entry("source").or_insert_with(|| stem.clone().into());
            out.push(r);
        }
    }
    Ok(out)
}

/// Marks the records of a system that more than one benchmark binary measured in the same
/// benchmark (the bare atomic ping-pong beside shmflow in `latency.json` and beside
/// iceoryx2 in `iceoryx2.json`): those from a file not named after the benchmark get
/// `measured_in = "<file> run"`, which the tables and plots show beside the system's name.
pub fn mark_sources(recs: &mut [Record]) {
    let mut sources: Vec<(String, String, Vec<String>)> = Vec::new();
    for r in recs.iter() {
        let (b, s) = (bench_of(r).to_string(), system_of(r).to_string());
        let src = str_of(r, "source").unwrap_or("").to_string();
        match sources.iter_mut().find(|(bb, ss, _)| *bb == b && *ss == s) {
            Some((_, _, v)) => {
                if !v.contains(&src) {
                    v.push(src);
                }
            }
            None => sources.push((b, s, vec![src])),
        }
    }
    for r in recs.iter_mut() {
        let (b, s) = (bench_of(r).to_string(), system_of(r).to_string());
        let src = str_of(r, "source").unwrap_or("").to_string();
        let several = sources.iter().any(|(bb, ss, v)| *bb == b && *ss == s && v.len() > 1);
        if several && src != b && !src.is_empty() {
            r.insert("measured_in".into(), format!("{src} run").into());
        }
    }
}

/// Parses one file's text: a JSON array of records, normalized.
///
/// # Errors
/// Text that is not a JSON array of objects each with `metric` and `value`.
pub fn parse(text: &str) -> Result<Vec<Record>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let arr = v.as_array().ok_or("not a JSON array")?;
    arr.iter()
        .map(|r| match r.as_object() {
            Some(o) if o.contains_key("metric") && o.contains_key("value") => Ok(normalize(o.clone())),
            _ => Err(format!("a record without metric and value: {r}")),
        })
        .collect()
}

/// Brings a record written before the current conventions to them, so that older result
/// files can still be reported:
/// - the run kind in `mode` (`"full"`, `"quick"`, `"smoke"`) moves to `run`, and `"smoke"`
///   becomes `"quick"`;
/// - a wait mode folded into the system name (`shmflow-spin`, `shmflow-park/futex`) moves to
///   `mode` (`shmflow` and `shmflow/futex`).
pub fn normalize(mut r: Record) -> Record {
    let run_kind = |v: &Value| matches!(v.as_str(), Some("full" | "quick" | "smoke"));
    if r.get("mode").is_some_and(run_kind) && !r.contains_key("run") {
        let m = r.remove("mode").unwrap_or(Value::Null);
        r.insert("run".into(), m);
    }
    if r.get("run").and_then(Value::as_str) == Some("smoke") {
        r.insert("run".into(), "quick".into());
    }
    if !r.contains_key("mode") {
        if let Some(sys) = r.get("system").and_then(Value::as_str).map(str::to_string) {
            let sys = sys.as_str();
            let (first, rest) = sys.split_once('/').map_or((sys, None), |(a, b)| (a, Some(b)));
            if let Some((name, mode)) = first.rsplit_once('-') {
                if matches!(mode, "spin" | "park" | "adaptive") {
                    let system = rest.map_or(name.to_string(), |b| format!("{name}/{b}"));
                    r.insert("system".into(), system.into());
                    r.insert("mode".into(), mode.into());
                }
            }
        }
    }
    r
}

/// The string field `k`, if present and a string.
pub fn str_of<'a>(r: &'a Record, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str)
}

/// The numeric field `k`, if present and a number.
pub fn num_of(r: &Record, k: &str) -> Option<f64> {
    r.get(k).and_then(Value::as_f64)
}

/// The record's `value` as a finite number.
pub fn value_of(r: &Record) -> Option<f64> {
    num_of(r, "value").filter(|v| v.is_finite())
}

/// The record's `bench` ("?" if absent).
pub fn bench_of(r: &Record) -> &str {
    str_of(r, "bench").unwrap_or("?")
}

/// The record's `system` ("?" if absent).
pub fn system_of(r: &Record) -> &str {
    str_of(r, "system").unwrap_or("?")
}

/// The record's `metric` ("?" if absent).
pub fn metric_of(r: &Record) -> &str {
    str_of(r, "metric").unwrap_or("?")
}

/// Whether the record is a point of a percentile curve (drawn, not tabulated).
pub fn is_curve(r: &Record) -> bool {
    metric_of(r).starts_with("curve_")
}

/// Whether the record is a ratio of two systems (`system` = "a/b").
pub fn is_ratio(r: &Record) -> bool {
    system_of(r).contains('/')
}

/// Whether field `k` of `r` holds `want` (numbers compared as numbers, so `64` matches
/// `64.0`).
pub fn field_is(r: &Record, k: &str, want: &Value) -> bool {
    match (r.get(k), want) {
        (Some(a), b) if a.is_number() && b.is_number() => a.as_f64() == b.as_f64(),
        (Some(a), b) => a == b,
        (None, _) => false,
    }
}

/// The run kind of a set of records: `"quick"` if any record says so, `"full"` if any says
/// that, else `None`.
pub fn run_kind(records: &[Record]) -> Option<&'static str> {
    let kinds: Vec<&str> = records.iter().filter_map(|r| str_of(r, "run")).collect();
    if kinds.contains(&"quick") {
        Some("quick")
    } else if kinds.contains(&"full") {
        Some("full")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Record {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn old_run_kind_moves_from_mode_to_run() {
        let r = normalize(rec(json!({"bench":"latency","system":"pipe","mode":"full","metric":"p50_ns","value":1})));
        assert_eq!(str_of(&r, "run"), Some("full"));
        assert_eq!(r.get("mode"), None);
        let r = normalize(rec(json!({"bench":"debloat","system":"shmflow","run":"smoke","mode":"debloat",
            "metric":"x","value":1})));
        assert_eq!(str_of(&r, "run"), Some("quick"));
        assert_eq!(str_of(&r, "mode"), Some("debloat"));
    }

    #[test]
    fn wait_mode_moves_out_of_the_system_name() {
        let r = normalize(rec(json!({"system":"shmflow-spin","mode":"full","metric":"m","value":1})));
        assert_eq!((system_of(&r), str_of(&r, "mode"), str_of(&r, "run")), ("shmflow", Some("spin"), Some("full")));
        let r = normalize(rec(json!({"system":"shmflow-park/futex","metric":"m","value":1})));
        assert_eq!((system_of(&r), str_of(&r, "mode")), ("shmflow/futex", Some("park")));
        // Names that merely contain a dash stay as they are.
        let r = normalize(rec(json!({"system":"tcp-nodelay","metric":"m","value":1})));
        assert_eq!((system_of(&r), r.get("mode")), ("tcp-nodelay", None));
        // A record that has a mode keeps its system name.
        let r = normalize(rec(json!({"system":"shmflow-spin","mode":"park","run":"full","metric":"m","value":1})));
        assert_eq!(system_of(&r), "shmflow-spin");
    }

    #[test]
    fn a_system_measured_by_two_binaries_is_told_apart() {
        let mut recs: Vec<Record> = [
            json!({"bench":"latency","system":"bare-atomic","source":"latency","metric":"m","value":1}),
            json!({"bench":"latency","system":"bare-atomic","source":"iceoryx2","metric":"m","value":1}),
            json!({"bench":"latency","system":"iceoryx2","source":"iceoryx2","metric":"m","value":1}),
        ]
        .into_iter()
        .map(rec)
        .collect();
        mark_sources(&mut recs);
        assert_eq!(recs[0].get("measured_in"), None);
        assert_eq!(str_of(&recs[1], "measured_in"), Some("iceoryx2 run"));
        assert_eq!(recs[2].get("measured_in"), None);
    }

    #[test]
    fn a_directory_is_read_file_by_file_or_from_its_merged_results() {
        let dir = std::env::temp_dir().join(format!("shmflow-tools-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let one = r#"[{"bench":"a","system":"s","metric":"m","value":1}]"#;
        std::fs::write(dir.join("results.json"), one).unwrap();
        // Only the merged file: read from it.
        let r = load_dir(&dir).unwrap();
        assert_eq!((r.len(), str_of(&r[0], "source")), (1, Some("results")));
        // Benchmark files and machine.json: the merged file and the machine are skipped.
        std::fs::write(dir.join("b.json"), r#"[{"bench":"b","system":"s","metric":"m","value":2,"mode":"quick"}]"#)
            .unwrap();
        std::fs::write(dir.join("machine.json"), r#"{"cpu_model":"x"}"#).unwrap();
        let r = load_dir(&dir).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((bench_of(&r[0]), str_of(&r[0], "source"), str_of(&r[0], "run")), ("b", Some("b"), Some("quick")));
        std::fs::write(dir.join("c.json"), "{}").unwrap();
        assert!(load_dir(&dir).unwrap_err().contains("c.json: not a JSON array"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn parse_rejects_records_without_metric_or_value() {
        assert!(parse(r#"[{"bench":"x","metric":"m"}]"#).is_err());
        assert!(parse(r#"{"bench":"x"}"#).is_err());
        assert_eq!(parse(r#"[{"bench":"x","metric":"m","value":null}]"#).unwrap().len(), 1);
    }

    #[test]
    fn fields_compare_numbers_as_numbers() {
        let r = rec(json!({"payload_bytes":64,"shape":"1x1"}));
        assert!(field_is(&r, "payload_bytes", &json!(64.0)));
        assert!(field_is(&r, "shape", &json!("1x1")));
        assert!(!field_is(&r, "shape", &json!("2x2")));
        assert!(!field_is(&r, "mode", &json!("spin")));
    }
}
