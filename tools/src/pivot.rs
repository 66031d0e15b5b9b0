//! Tables from flat records: pivots that put the systems side by side.
//!
//! The kinds of table per benchmark:
//! - a **matrix** for one headline metric: a row per configuration (payload × mode, shape ×
//!   timeout × record size, ...), a column per system, shmflow first and the hardware limits
//!   last, so a row reads as "shmflow against each peer";
//! - a **summary** of key metrics, for a benchmark with one system (nothing to put side by
//!   side): a row per configuration, a column per metric;
//! - the **ratios** the benchmark computed itself (systems `a/b`), a column per ratio;
//! - **all figures**: a row per configuration and system, a column per metric; split by
//!   payload or record size when long, transposed (a row per metric) when much wider than
//!   long.
//!
//! Only fields that vary among the table's records become columns; fields with one value
//! are reported once under the table, and fields a `shape` already says (writers, channels,
//! producers) are left out. In a matrix, a record without a field the others have (a pipe
//! has no spin mode, iceoryx2 no buffer timeout, memcpy no shape, a limit measured without
//! a payload has `payload_bytes` 0) is shown in every row that agrees with it on the fields
//! it has, and a field only one system has (shmflow's segment size) is left to the details.

use crate::records::{is_curve, is_ratio, metric_of, system_of, Record};
use crate::units::{field_cell, metric_cell, metric_label, metric_order};
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Fields that are not configuration: identity, figure and run kind.
const NOT_CONFIG: [&str; 7] = ["bench", "system", "metric", "value", "run", "percentile", "source"];

/// Fields that qualify a system rather than a configuration (iceoryx2 one sample per record
/// or per 32 KiB batch; the binary that measured a system two binaries measured): they join
/// the system's column label.
const VARIANT_FIELDS: [&str; 2] = ["batch", "measured_in"];

/// Configuration fields in the order their columns appear; others follow by name.
const FIELD_ORDER: [&str; 10] = [
    "payload_bytes",
    "record_bytes",
    "shape",
    "timeout_ms",
    "processes",
    "mode",
    "exchange",
    "parallelism",
    "workers",
    "text_mb",
];

/// A Markdown table.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Column headings.
    pub header: Vec<String>,
    /// The first `left` columns are labels (left-aligned), the rest figures (right-aligned).
    pub left: usize,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
    /// Fields that had one value among the table's records, as "field = value".
    pub constants: Vec<String>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
}

impl Table {
    /// The table in GitHub Markdown, followed by its constant fields, if any.
    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = String::new();
        out.push_str(&format!("| {} |\n", self.header.iter().map(|h| esc(h)).collect::<Vec<_>>().join(" | ")));
        let align: Vec<&str> = (0..self.header.len()).map(|i| if i < self.left { "---" } else { "---:" }).collect();
        out.push_str(&format!("|{}|\n", align.join("|")));
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")));
        }
        if !self.constants.is_empty() {
            out.push_str(&format!("\n({})\n", self.constants.join(", ")));
        }
        for n in &self.notes {
            out.push_str(&format!("\n{n}.\n"));
        }
        out
    }
}

/// Where a system's column goes: shmflow, then iceoryx2, the other transports, the
/// in-process channel, and the hardware limits last.
pub fn system_rank(system: &str) -> u8 {
    let s = system.to_ascii_lowercase();
    let starts = |p: &str| s.starts_with(p);
    if starts("shmflow") {
        0
    } else if starts("iceoryx") {
        1
    } else if starts("tcp") {
        2
    } else if starts("unix") {
        3
    } else if starts("pipe") {
        4
    } else if starts("crossbeam") || starts("in-process") {
        6
    } else if starts("bare") || starts("atomic") {
        7
    } else if starts("futex") {
        8
    } else if starts("memcpy") {
        9
    } else if starts("mem") {
        10
    } else {
        5
    }
}

/// The column label of a record's system: the system, with its variant fields
/// (`iceoryx2 (32k-batch)`).
pub fn system_label(r: &Record) -> String {
    let variants: Vec<String> = VARIANT_FIELDS
        .iter()
        .filter_map(|f| r.get(*f).filter(|v| !v.is_null()))
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .collect();
    if variants.is_empty() {
        system_of(r).to_string()
    } else {
        format!("{} ({})", system_of(r), variants.join(", "))
    }
}

/// A column heading for configuration field `f`: `payload_bytes` → `payload`,
/// `timeout_ms` → `timeout`, `processes` → `P`.
pub fn field_label(f: &str) -> String {
    match f {
        "processes" => "P".into(),
        _ => f.trim_end_matches("_bytes").trim_end_matches("_ms").trim_end_matches("_mb").replace('_', " "),
    }
}

/// The systems among `recs` as column labels, in column order (rank, then first
/// appearance).
pub fn ordered_systems(recs: &[&Record]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for r in recs {
        let l = system_label(r);
        if !seen.contains(&l) {
            seen.push(l);
        }
    }
    // A stable sort keeps first appearance within a rank.
    seen.sort_by_key(|l| system_rank(l));
    seen
}

/// One part of a row key, ordered: numbers ascending, strings in order of first appearance,
/// missing last.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Part {
    Num(f64),
    Str(usize, String),
    Missing,
}

/// The configuration fields among `recs` that vary (in column order), and those with one
/// value as "label = value".
fn config_fields(recs: &[&Record]) -> (Vec<String>, Vec<String>) {
    let mut fields: Vec<String> = Vec::new();
    for r in recs {
        for k in r.keys() {
            if !NOT_CONFIG.contains(&k.as_str()) && !VARIANT_FIELDS.contains(&k.as_str()) && !fields.contains(k) {
                fields.push(k.clone());
            }
        }
    }
    let rank = |f: &str| FIELD_ORDER.iter().position(|x| *x == f).unwrap_or(FIELD_ORDER.len());
    fields.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    let (mut varying, mut constant) = (Vec::new(), Vec::new());
    for f in fields {
        let first = recs[0].get(&f).filter(|v| !v.is_null());
        let same = recs.iter().all(|r| same_value(r.get(&f).filter(|v| !v.is_null()), first));
        if !same {
            varying.push(f);
        } else if first.is_some() {
            constant.push(format!("{} = {}", field_label(&f), field_cell(&f, first)));
        }
    }
    (varying, constant)
}

fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) if x.is_number() && y.is_number() => x.as_f64() == y.as_f64(),
        (x, y) => x == y,
    }
}

/// Row keys: each field's string values numbered in order of first appearance.
struct Keys {
    fields: Vec<String>,
    order: BTreeMap<String, Vec<String>>,
}

impl Keys {
    fn new(recs: &[&Record], fields: Vec<String>) -> Self {
        let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in &fields {
            let seen = order.entry(f.clone()).or_default();
            for r in recs {
                if let Some(s) = r.get(f).and_then(Value::as_str) {
                    if !seen.iter().any(|x| x == s) {
                        seen.push(s.to_string());
                    }
                }
            }
        }
        Keys { fields, order }
    }

    fn key(&self, r: &Record) -> Vec<Part> {
        self.fields
            .iter()
            .map(|f| match r.get(f) {
                None | Some(Value::Null) => Part::Missing,
                Some(Value::String(s)) => {
                    Part::Str(self.order[f].iter().position(|x| x == s).unwrap_or(usize::MAX), s.clone())
                }
                Some(v) => v.as_f64().map_or_else(|| Part::Str(usize::MAX, v.to_string()), Part::Num),
            })
            .collect()
    }

    fn cells(&self, key: &[Part]) -> Vec<String> {
        self.fields
            .iter()
            .zip(key)
            .map(|(f, p)| match p {
                Part::Missing => "–".into(),
                Part::Str(_, s) => s.clone(),
                Part::Num(x) => field_cell(f, Some(&Value::from(*x))),
            })
            .collect()
    }
}

fn sort_rows<T>(rows: &mut [(Vec<Part>, T)]) {
    rows.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
}

/// The records of a benchmark that go into tables: not curve points.
fn tabulated(recs: &[Record]) -> Vec<&Record> {
    recs.iter().filter(|r| !is_curve(r)).collect()
}

/// Fields that a `shape` such as `4x100` or `16x16` already says (writers, channels,
/// producers, ...): hidden when the shape determines them.
const SHAPE_DERIVED: [&str; 6] = ["writers", "channels", "pattern", "producers", "consumers", "processes"];

/// Whether field `f` has one value for each value of field `by` among `recs`.
fn determined_by(recs: &[&Record], f: &str, by: &str) -> bool {
    let mut seen: Vec<(&Value, Option<&Value>)> = Vec::new();
    for r in recs.iter().filter(|r| r.get(f).is_some_and(|v| !v.is_null())) {
        if let Some(k) = r.get(by) {
            match seen.iter().find(|(sk, _)| *sk == k) {
                Some((_, v)) if *v != r.get(f) => return false,
                Some(_) => {}
                None => seen.push((k, r.get(f))),
            }
        }
    }
    true
}

/// Drops the configuration fields a reader does not need to tell rows apart: those the
/// shape determines.
fn without_derived(recs: &[&Record], fields: Vec<String>) -> Vec<String> {
    let has_shape = fields.iter().any(|f| f == "shape");
    fields
        .into_iter()
        .filter(|f| !(has_shape && SHAPE_DERIVED.contains(&f.as_str()) && determined_by(recs, f, "shape")))
        .collect()
}

/// Drops, for a matrix, fields that only one system has (shmflow's segment size beside a
/// payload, iceoryx2's wait mode in the throughput benchmark) when its rows stay distinct
/// without them: they describe that system, not the comparison.
fn without_private(recs: &[&Record], fields: Vec<String>, keys: &Keys) -> Vec<String> {
    let mut keep = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let mut owners: Vec<&str> = Vec::new();
        for r in recs.iter().filter(|r| r.get(f).is_some_and(|v| !v.is_null())) {
            if !owners.contains(&system_of(r)) {
                owners.push(system_of(r));
            }
        }
        let private = owners.len() == 1;
        // Would two records of one column of that system share a row without the field?
        let clash = || {
            let mut seen: Vec<(Vec<Part>, String, Option<&Value>)> = Vec::new();
            for r in recs.iter().filter(|r| system_of(r) == owners[0]) {
                let mut k = keys.key(r);
                k.remove(i);
                let l = system_label(r);
                match seen.iter().find(|(sk, sl, _)| *sk == k && *sl == l) {
                    Some((_, _, v)) if *v != r.get(f) => return true,
                    Some(_) => {}
                    None => seen.push((k, l, r.get(f))),
                }
            }
            false
        };
        if !private || clash() {
            keep.push(f.clone());
        }
    }
    keep
}

/// A matrix of metric `metric`: a row per configuration, a column per system; `None` when
/// fewer than two systems have the metric (a matrix would compare nothing).
///
/// A record that lacks a configuration field the others have (iceoryx2 has no buffer
/// timeout, memcpy no shape; a limit measured without a payload has `payload_bytes` 0) is
/// shown in every row that agrees with it on the fields it has.
pub fn matrix(recs: &[Record], metric: &str) -> Option<Table> {
    let recs: Vec<&Record> = tabulated(recs).into_iter().filter(|r| !is_ratio(r) && metric_of(r) == metric).collect();
    let systems = ordered_systems(&recs);
    if systems.len() < 2 {
        return None;
    }
    let (fields, constants) = config_fields(&recs);
    let fields = without_derived(&recs, fields);
    let fields = without_private(&recs, fields.clone(), &Keys::new(&recs, fields));
    let keys = Keys::new(&recs, fields);
    let payload_at = keys.fields.iter().position(|f| f == "payload_bytes");
    let payloads = |k: &Part| matches!(k, Part::Num(x) if *x > 0.0);
    let mut keyed: Vec<(Vec<Part>, &Record)> = recs.iter().map(|r| (keys.key(r), *r)).collect();
    let mut notes = Vec::new();
    if let Some(i) = payload_at {
        if keyed.iter().any(|(k, _)| payloads(&k[i])) {
            let mut without: Vec<String> = Vec::new();
            for (k, r) in keyed.iter_mut() {
                if k[i] == Part::Num(0.0) {
                    k[i] = Part::Missing;
                    let l = system_label(r);
                    if !without.contains(&l) {
                        without.push(l);
                    }
                }
            }
            if !without.is_empty() {
                notes.push(format!("{}: measured without a payload, shown in every payload's row", without.join(", ")));
            }
        }
    }
    // Complete records make the rows, shmflow's before its peers'; the others join them.
    keyed.sort_by_key(|(k, r)| (k.iter().filter(|p| **p == Part::Missing).count(), system_rank(system_of(r))));
    let fits =
        |a: &[Part], b: &[Part]| a.iter().zip(b).all(|(x, y)| x == y || *x == Part::Missing || *y == Part::Missing);
    let mut rows: Vec<(Vec<Part>, BTreeMap<String, String>)> = Vec::new();
    for (k, r) in keyed {
        let (label, cell) = (system_label(r), metric_cell(metric, r.get("value")));
        let complete = !k.contains(&Part::Missing);
        let mut joined = false;
        for (rk, cells) in rows.iter_mut() {
            if *rk == k || (!complete && fits(rk, &k)) {
                cells.entry(label.clone()).or_insert_with(|| cell.clone());
                joined = true;
            }
        }
        if !joined {
            rows.push((k, BTreeMap::from([(label, cell)])));
        }
    }
    sort_rows(&mut rows);
    let mut header: Vec<String> = keys.fields.iter().map(|f| field_label(f)).collect();
    let left = header.len();
    header.extend(systems.iter().cloned());
    let rows = rows
        .into_iter()
        .map(|(k, cells)| {
            let mut row = keys.cells(&k);
            row.extend(systems.iter().map(|s| cells.get(s).cloned().unwrap_or_else(|| "–".into())));
            row
        })
        .collect();
    Some(Table { header, left, rows, constants, notes })
}

/// The ratios a benchmark computed (systems `a/b`): a row per configuration, a column per
/// ratio (and per ratio metric, when there are several).
pub fn ratios(recs: &[Record]) -> Option<Table> {
    let recs: Vec<&Record> = tabulated(recs).into_iter().filter(|r| is_ratio(r)).collect();
    if recs.is_empty() {
        return None;
    }
    let mut metrics: Vec<&str> = recs.iter().map(|r| metric_of(r)).collect();
    metrics.sort_by(|a, b| metric_order(a, b));
    metrics.dedup();
    let col = |r: &Record| {
        if metrics.len() > 1 {
            format!("{} {}", system_label(r), metric_label(metric_of(r)))
        } else {
            system_label(r)
        }
    };
    let mut cols: Vec<String> = Vec::new();
    for r in &recs {
        let c = col(r);
        if !cols.contains(&c) {
            cols.push(c);
        }
    }
    cols.sort_by_key(|c| system_rank(c.split('/').nth(1).unwrap_or(c)));
    let (fields, constants) = config_fields(&recs);
    let keys = Keys::new(&recs, fields);
    let mut rows: Vec<(Vec<Part>, BTreeMap<String, String>)> = Vec::new();
    for r in &recs {
        let k = keys.key(r);
        let cell = metric_cell(metric_of(r), r.get("value"));
        match rows.iter_mut().find(|(rk, _)| *rk == k) {
            Some((_, cells)) => {
                cells.insert(col(r), cell);
            }
            None => rows.push((k, BTreeMap::from([(col(r), cell)]))),
        }
    }
    sort_rows(&mut rows);
    let mut header: Vec<String> = keys.fields.iter().map(|f| field_label(f)).collect();
    let left = header.len();
    header.extend(cols.iter().cloned());
    let rows = rows
        .into_iter()
        .map(|(k, cells)| {
            let mut row = keys.cells(&k);
            row.extend(cols.iter().map(|c| cells.get(c).cloned().unwrap_or_else(|| "–".into())));
            row
        })
        .collect();
    Some(Table { header, left, rows, constants, notes: Vec::new() })
}

/// Every tabulated figure of a benchmark that is not a ratio: a row per configuration and
/// system, a column per metric (percentiles in order). Split into sections by the first
/// configuration field when that is a payload or record size and the table would be long.
///
/// A table much wider than long (one system with many metrics: scaling, backpressure) is
/// transposed: a row per metric, a column per configuration.
pub fn details(recs: &[Record]) -> Vec<(Option<String>, Table)> {
    figures(recs, None)
}

/// The metrics of `only` that a benchmark has (in that order), a row per configuration and
/// system: the key figures of a benchmark that has one system (no matrix compares it).
/// `None` when fewer than two of them are present.
pub fn summary(recs: &[Record], only: &[&str]) -> Option<Table> {
    let present = only.iter().filter(|m| recs.iter().any(|r| !is_curve(r) && metric_of(r) == **m)).count();
    if present < 2 {
        return None;
    }
    figures(recs, Some(only)).into_iter().next().map(|(_, t)| t)
}

/// Longer than this many metric columns, a table of at most as many rows is transposed.
const TRANSPOSE_OVER: usize = 8;

fn figures(recs: &[Record], only: Option<&[&str]>) -> Vec<(Option<String>, Table)> {
    let recs: Vec<&Record> = tabulated(recs)
        .into_iter()
        .filter(|r| !is_ratio(r) && only.is_none_or(|o| o.contains(&metric_of(r))))
        .collect();
    if recs.is_empty() {
        return Vec::new();
    }
    let (fields, constants) = config_fields(&recs);
    let fields = without_derived(&recs, fields);
    let systems = ordered_systems(&recs);
    let mut metrics: Vec<&str> = recs.iter().map(|r| metric_of(r)).collect();
    match only {
        Some(o) => metrics = o.iter().copied().filter(|m| metrics.contains(m)).collect(),
        None => {
            metrics.sort_by(|a, b| metric_order(a, b));
            metrics.dedup();
        }
    }
    let keys = Keys::new(&recs, fields);
    let mut rows: Vec<(Vec<Part>, BTreeMap<&str, String>)> = Vec::new();
    for r in &recs {
        let mut k = keys.key(r);
        let label = system_label(r);
        k.push(Part::Str(systems.iter().position(|s| *s == label).unwrap_or(usize::MAX), label));
        let cell = metric_cell(metric_of(r), r.get("value"));
        match rows.iter_mut().find(|(rk, _)| *rk == k) {
            Some((_, cells)) => {
                cells.insert(metric_of(r), cell);
            }
            None => rows.push((k, BTreeMap::from([(metric_of(r), cell)]))),
        }
    }
    sort_rows(&mut rows);
    // One system: its name goes under the table, not in a column.
    let one_system = systems.len() == 1;
    let render = |rows: &[(Vec<Part>, BTreeMap<&str, String>)], skip_first: bool| {
        let from = usize::from(skip_first);
        let mut header: Vec<String> = keys.fields.iter().skip(from).map(|f| field_label(f)).collect();
        if !one_system {
            header.push("system".into());
        }
        let left = header.len();
        header.extend(metrics.iter().map(|m| metric_label(m)));
        let rows = rows
            .iter()
            .map(|(k, cells)| {
                let mut row: Vec<String> = keys.cells(&k[..k.len() - 1]).into_iter().skip(from).collect();
                if !one_system {
                    row.push(match &k[k.len() - 1] {
                        Part::Str(_, s) => s.clone(),
                        _ => "?".into(),
                    });
                }
                row.extend(metrics.iter().map(|m| cells.get(m).cloned().unwrap_or_else(|| "–".into())));
                row
            })
            .collect();
        Table { header, left, rows, constants: Vec::new(), notes: Vec::new() }
    };
    let mut constants = constants;
    if one_system {
        constants.insert(0, format!("system = {}", systems[0]));
    }
    let split = keys.fields.first().is_some_and(|f| f == "payload_bytes" || f == "record_bytes") && rows.len() > 24;
    let transpose = only.is_none() && metrics.len() > TRANSPOSE_OVER && rows.len() <= TRANSPOSE_OVER;
    let mut out = Vec::new();
    if transpose {
        // A column per row of the untransposed table, named by its configuration (and its
        // system, when there are several).
        let names: Vec<String> = rows
            .iter()
            .map(|(k, _)| {
                let mut parts: Vec<String> = keys
                    .fields
                    .iter()
                    .zip(keys.cells(&k[..k.len() - 1]))
                    .filter(|(_, c)| c != "–")
                    .map(|(f, c)| {
                        if keys.fields.len() == 1 || f == "shape" || f == "phase" {
                            c
                        } else {
                            format!("{} {c}", field_label(f))
                        }
                    })
                    .collect();
                if systems.len() > 1 || parts.is_empty() {
                    if let Part::Str(_, s) = &k[k.len() - 1] {
                        parts.push(s.clone());
                    }
                }
                parts.join(", ")
            })
            .collect();
        let mut header = vec!["metric".to_string()];
        header.extend(names);
        let table_rows = metrics
            .iter()
            .map(|m| {
                let mut row = vec![metric_label(m)];
                row.extend(rows.iter().map(|(_, cells)| cells.get(m).cloned().unwrap_or_else(|| "–".into())));
                row
            })
            .collect();
        out.push((None, Table { header, left: 1, rows: table_rows, constants: Vec::new(), notes: Vec::new() }));
    } else if split {
        let mut start = 0;
        while start < rows.len() {
            let end =
                rows[start..].iter().position(|(k, _)| k[0] != rows[start].0[0]).map_or(rows.len(), |n| start + n);
            let title = format!("{} {}", field_label(&keys.fields[0]), keys.cells(&rows[start].0[..1])[0]);
            out.push((Some(title), render(&rows[start..end], true)));
            start = end;
        }
    } else {
        out.push((None, render(&rows, false)));
    }
    if let Some((_, last)) = out.last_mut() {
        last.constants = constants;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::parse;

    fn latency() -> Vec<Record> {
        parse(
            r#"[
            {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":64,"metric":"oneway_p50_ns","value":212,"run":"full"},
            {"bench":"latency","system":"shmflow","mode":"park","payload_bytes":64,"metric":"oneway_p50_ns","value":16543,"run":"full"},
            {"bench":"latency","system":"iceoryx2","mode":"spin","payload_bytes":64,"metric":"oneway_p50_ns","value":335,"run":"full"},
            {"bench":"latency","system":"bare-atomic","mode":"spin","payload_bytes":64,"metric":"oneway_p50_ns","value":140,"run":"full"},
            {"bench":"latency","system":"pipe","payload_bytes":64,"metric":"oneway_p50_ns","value":21407,"run":"full"},
            {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":8,"metric":"oneway_p50_ns","value":200,"run":"full"},
            {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":64,"metric":"oneway_max_ns","value":12075000,"run":"full"},
            {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":64,"metric":"curve_oneway_ns","percentile":50.0,"value":212,"run":"full"},
            {"bench":"latency","system":"shmflow/bare-atomic","mode":"spin","payload_bytes":64,"metric":"p50_ratio","value":1.514,"run":"full"}
            ]"#,
        )
        .unwrap()
    }

    #[test]
    fn matrix_puts_systems_side_by_side_and_modeless_peers_in_every_mode() {
        let t = matrix(&latency(), "oneway_p50_ns").unwrap();
        assert_eq!(t.header, ["payload", "mode", "shmflow", "iceoryx2", "pipe", "bare-atomic"]);
        assert_eq!(t.left, 2);
        assert_eq!(
            t.rows,
            [
                ["8 B", "spin", "200 ns", "–", "–", "–"],
                ["64 B", "spin", "212 ns", "335 ns", "21.4 µs", "140 ns"],
                ["64 B", "park", "16.5 µs", "–", "21.4 µs", "–"],
            ]
        );
        assert!(t.constants.is_empty());
        // One system: nothing to compare.
        assert_eq!(matrix(&latency(), "oneway_max_ns"), None);
    }

    #[test]
    fn ratios_get_their_own_table() {
        let t = ratios(&latency()).unwrap();
        assert_eq!(t.header, ["shmflow/bare-atomic"]);
        assert_eq!(t.rows, [["1.51×"]]);
        assert_eq!(t.constants, ["payload = 64 B", "mode = spin"]);
    }

    #[test]
    fn details_have_a_row_per_configuration_and_system() {
        let d = details(&latency());
        assert_eq!(d.len(), 1);
        let t = &d[0].1;
        assert_eq!(t.header, ["payload", "mode", "system", "one-way p50", "one-way max"]);
        assert_eq!(t.rows[0], ["8 B", "spin", "shmflow", "200 ns", "–"]);
        assert_eq!(t.rows[1], ["64 B", "spin", "shmflow", "212 ns", "12.1 ms"]);
        assert_eq!(t.rows[2], ["64 B", "spin", "iceoryx2", "335 ns", "–"]);
        assert_eq!(t.rows.last().unwrap(), &["64 B", "–", "pipe", "21.4 µs", "–"]);
        assert!(t
            .markdown()
            .starts_with("| payload | mode | system | one-way p50 | one-way max |\n|---|---|---|---:|---:|\n"));
    }

    #[test]
    fn variant_fields_join_the_system_and_strings_keep_their_order() {
        let recs = parse(
            r#"[
            {"bench":"throughput","system":"shmflow","shape":"4x100","record_bytes":32768,"metric":"gb_per_s","value":9.1},
            {"bench":"throughput","system":"shmflow","shape":"1x1","record_bytes":32768,"metric":"gb_per_s","value":8.2},
            {"bench":"throughput","system":"iceoryx2","batch":"32k-batch","shape":"1x1","record_bytes":32768,"metric":"gb_per_s","value":4.1},
            {"bench":"throughput","system":"tcp","shape":"1x1","record_bytes":32768,"metric":"gb_per_s","value":3.4}
            ]"#,
        )
        .unwrap();
        let t = matrix(&recs, "gb_per_s").unwrap();
        assert_eq!(t.header, ["shape", "shmflow", "iceoryx2 (32k-batch)", "tcp"]);
        assert_eq!(t.rows, [["4x100", "9.10 GB/s", "–", "–"], ["1x1", "8.20 GB/s", "4.10 GB/s", "3.40 GB/s"]]);
        assert_eq!(t.constants, ["record = 32 KiB"]);
        assert!(t.markdown().ends_with("\n(record = 32 KiB)\n"));
    }

    #[test]
    fn limits_without_payload_and_private_fields_and_shape_derived_fields() {
        let recs = parse(
            r#"[
            {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":64,"segment_bytes":4096,"metric":"oneway_p50_ns","value":212},
            {"bench":"latency","system":"shmflow","mode":"spin","payload_bytes":32768,"segment_bytes":65536,"metric":"oneway_p50_ns","value":1900},
            {"bench":"latency","system":"bare-atomic","mode":"spin","payload_bytes":0,"metric":"oneway_p50_ns","value":140}
            ]"#,
        )
        .unwrap();
        let t = matrix(&recs, "oneway_p50_ns").unwrap();
        assert_eq!(t.header, ["payload", "shmflow", "bare-atomic"]);
        assert_eq!(t.rows, [["64 B", "212 ns", "140 ns"], ["32 KiB", "1.90 µs", "140 ns"]]);
        assert_eq!(t.constants, ["mode = spin"]);
        assert_eq!(t.notes, ["bare-atomic: measured without a payload, shown in every payload's row"]);
        // The details keep shmflow's segment size.
        assert_eq!(details(&recs)[0].1.header, ["payload", "segment", "system", "one-way p50"]);

        let recs = parse(
            r#"[
            {"bench":"throughput","system":"shmflow","shape":"1x1","writers":1,"channels":1,"timeout_ms":100,"record_bytes":8,"metric":"records_per_s","value":1e8},
            {"bench":"throughput","system":"shmflow","shape":"4x100","writers":4,"channels":100,"timeout_ms":100,"record_bytes":8,"metric":"records_per_s","value":9e7},
            {"bench":"throughput","system":"shmflow","shape":"1x1","writers":1,"channels":1,"timeout_ms":1,"record_bytes":8,"metric":"records_per_s","value":8e7},
            {"bench":"throughput","system":"iceoryx2","batch":"32k-batch","shape":"1x1","record_bytes":8,"metric":"records_per_s","value":5e7},
            {"bench":"throughput","system":"memcpy","shape":"single-thread","record_bytes":8,"metric":"records_per_s","value":2e8}
            ]"#,
        )
        .unwrap();
        let t = matrix(&recs, "records_per_s").unwrap();
        assert_eq!(t.header, ["shape", "timeout", "shmflow", "iceoryx2 (32k-batch)", "memcpy"]);
        assert_eq!(
            t.rows,
            [
                ["1x1", "1 ms", "80.0 M rec/s", "50.0 M rec/s", "–"],
                ["1x1", "100 ms", "100 M rec/s", "50.0 M rec/s", "–"],
                ["4x100", "100 ms", "90.0 M rec/s", "–", "–"],
                ["single-thread", "–", "–", "–", "200 M rec/s"],
            ]
        );
    }

    #[test]
    fn a_peer_with_its_own_fields_joins_shmflows_rows() {
        // iceoryx2 first (its file sorts first), with a wait mode only it has and no timeout.
        let recs = parse(
            r#"[
            {"bench":"throughput","system":"iceoryx2","mode":"spin","batch":"32k-batch","shape":"1x1","record_bytes":8,"metric":"records_per_s","value":1.3e9},
            {"bench":"throughput","system":"iceoryx2","mode":"spin","batch":"sample-per-record","shape":"1x1","record_bytes":8,"metric":"records_per_s","value":3.7e5},
            {"bench":"throughput","system":"shmflow","shape":"1x1","timeout_ms":0,"record_bytes":8,"metric":"records_per_s","value":2.8e6},
            {"bench":"throughput","system":"shmflow","shape":"4x1000","timeout_ms":1,"record_bytes":8,"metric":"records_per_s","value":9.5e6},
            {"bench":"throughput","system":"tcp","shape":"1x1","timeout_ms":0,"record_bytes":8,"metric":"records_per_s","value":8.6e5}
            ]"#,
        )
        .unwrap();
        let t = matrix(&recs, "records_per_s").unwrap();
        assert_eq!(
            t.header,
            ["shape", "timeout", "shmflow", "iceoryx2 (32k-batch)", "iceoryx2 (sample-per-record)", "tcp"]
        );
        assert_eq!(
            t.rows,
            [
                ["1x1", "0 ms", "2.80 M rec/s", "1.30 G rec/s", "370 k rec/s", "860 k rec/s"],
                ["4x1000", "1 ms", "9.50 M rec/s", "–", "–", "–"]
            ]
        );
    }

    #[test]
    fn long_details_split_by_payload() {
        let mut text = String::from("[");
        for (i, p) in [8, 64, 1024].iter().enumerate() {
            for s in 0..10 {
                if i + s > 0 {
                    text.push(',');
                }
                text.push_str(&format!(
                    r#"{{"bench":"latency","system":"s{s}","payload_bytes":{p},"metric":"oneway_p50_ns","value":{}}}"#,
                    100 + s
                ));
            }
        }
        text.push(']');
        let d = details(&parse(&text).unwrap());
        let titles: Vec<_> = d.iter().map(|(t, _)| t.clone().unwrap()).collect();
        assert_eq!(titles, ["payload 8 B", "payload 64 B", "payload 1 KiB"]);
        assert_eq!(d[1].1.header, ["system", "one-way p50"]);
        assert_eq!(d[1].1.rows.len(), 10);
    }

    #[test]
    fn systems_are_ranked_shmflow_first_limits_last() {
        let mut s = vec!["memcpy", "tcp", "bare-atomic", "shmflow", "zzz", "iceoryx2", "futex", "crossbeam"];
        s.sort_by_key(|x| system_rank(x));
        assert_eq!(s, ["shmflow", "iceoryx2", "tcp", "zzz", "crossbeam", "bare-atomic", "futex", "memcpy"]);
    }
}
