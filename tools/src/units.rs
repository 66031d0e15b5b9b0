//! Units read off metric and field names, and numbers written with them.
//!
//! Metric names carry their unit as a word: `oneway_p50_ns`, `barrier_ms_p90`, `elapsed_s`,
//! `inflight_bytes_max`, `gb_per_s`, `records_per_s`, `records_per_s_ratio`. Values are
//! written with three significant digits in the unit that keeps them between 1 and 1000
//! (`212 ns`, `21.4 µs`, `3.21 ms`; `44.8 M rec/s`; `2.05 GB/s`; `32 KiB`; `1.66×`).

use serde_json::Value;

/// What a number measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// A duration; the factor converts the metric's unit to nanoseconds.
    Time(f64),
    /// A size; the factor converts the metric's unit to bytes.
    Bytes(f64),
    /// Bytes per second; the factor converts the metric's unit to bytes/s.
    Bandwidth(f64),
    /// Things per second, with the short name of the thing (`rec`, `words`).
    Rate(String),
    /// A ratio of two figures.
    Ratio,
    /// A percentage.
    Percent,
    /// A plain count or number.
    Plain,
}

/// The unit of metric `metric`, read off its name.
pub fn unit_of(metric: &str) -> Unit {
    let words: Vec<&str> = metric.split('_').collect();
    if words.contains(&"ratio") {
        return Unit::Ratio;
    }
    if let Some(i) = metric.find("_per_s") {
        if metric[i + "_per_s".len()..].is_empty() || metric[i + "_per_s".len()..].starts_with('_') {
            let thing = &metric[..i];
            let last = thing.rsplit('_').next().unwrap_or(thing);
            return match last {
                "gb" => Unit::Bandwidth(1e9),
                "mb" => Unit::Bandwidth(1e6),
                "kb" => Unit::Bandwidth(1e3),
                "bytes" => Unit::Bandwidth(1.0),
                "records" | "record" | "rec" => Unit::Rate("rec".into()),
                "messages" | "msgs" => Unit::Rate("msg".into()),
                other => Unit::Rate(other.to_string()),
            };
        }
    }
    for w in &words {
        match *w {
            "ns" => return Unit::Time(1.0),
            "us" => return Unit::Time(1e3),
            "ms" => return Unit::Time(1e6),
            "bytes" => return Unit::Bytes(1.0),
            "kib" => return Unit::Bytes(1024.0),
            "mib" => return Unit::Bytes(1048576.0),
            "pct" | "percent" => return Unit::Percent,
            _ => {}
        }
    }
    if words.last() == Some(&"s") {
        return Unit::Time(1e9);
    }
    Unit::Plain
}

/// `x` with three significant digits (`212`, `21.4`, `2.05`; `0.0123`).
pub fn sig3(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 99.95 {
        format!("{x:.0}")
    } else if a >= 9.995 {
        format!("{x:.1}")
    } else if a >= 0.9995 {
        format!("{x:.2}")
    } else {
        // 0.0123: as many decimals as three significant digits need.
        let decimals = (2.0 - a.log10().floor()) as usize;
        format!("{x:.decimals$}")
    }
}

/// A duration in nanoseconds, in ns, µs, ms or s.
pub fn time_ns(ns: f64) -> String {
    let a = ns.abs();
    if a < 999.5 {
        format!("{} ns", sig3(ns))
    } else if a < 999_500.0 {
        format!("{} µs", sig3(ns / 1e3))
    } else if a < 999_500_000.0 {
        format!("{} ms", sig3(ns / 1e6))
    } else {
        format!("{} s", sig3(ns / 1e9))
    }
}

/// A size: exact binary multiples as `8 B`, `32 KiB`, `1 MiB`; others with three
/// significant digits in B, KiB, MiB or GiB.
pub fn bytes(b: f64) -> String {
    const UNITS: [(&str, f64); 4] = [("GiB", 1073741824.0), ("MiB", 1048576.0), ("KiB", 1024.0), ("B", 1.0)];
    let a = b.abs();
    for (name, size) in UNITS {
        if a >= size && (a / size).fract() == 0.0 && a / size < 1024.0 {
            return format!("{} {name}", b / size);
        }
    }
    for (name, size) in UNITS {
        if a >= size * 0.9995 {
            return format!("{} {name}", sig3(b / size));
        }
    }
    format!("{} B", sig3(b))
}

/// Bytes per second in GB/s, MB/s or kB/s (decimal, as bandwidths are quoted).
pub fn bandwidth(bps: f64) -> String {
    let a = bps.abs();
    if a >= 0.9995e9 {
        format!("{} GB/s", sig3(bps / 1e9))
    } else if a >= 0.9995e6 {
        format!("{} MB/s", sig3(bps / 1e6))
    } else {
        format!("{} kB/s", sig3(bps / 1e3))
    }
}

/// A count with k, M or G past ten thousand; exact below.
pub fn count(x: f64) -> String {
    let a = x.abs();
    if a >= 0.9995e9 {
        format!("{} G", sig3(x / 1e9))
    } else if a >= 0.9995e6 {
        format!("{} M", sig3(x / 1e6))
    } else if a >= 1e4 {
        format!("{} k", sig3(x / 1e3))
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        sig3(x)
    }
}

/// `v` written in unit `u`.
pub fn format(u: &Unit, v: f64) -> String {
    match u {
        Unit::Time(f) => time_ns(v * f),
        Unit::Bytes(f) => bytes(v * f),
        Unit::Bandwidth(f) => bandwidth(v * f),
        Unit::Rate(thing) => format!("{} {thing}/s", count(v)),
        Unit::Ratio => format!("{}×", sig3(v)),
        Unit::Percent => format!("{} %", sig3(v)),
        Unit::Plain => count(v),
    }
}

/// The value of metric `metric` as a table cell ("–" for a missing or non-finite value).
pub fn metric_cell(metric: &str, v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64).filter(|x| x.is_finite()) {
        Some(x) => format(&unit_of(metric), x),
        None => "–".into(),
    }
}

/// The value of configuration field `field` as a table cell: sizes in B/KiB/MiB, timeouts
/// in ms, strings as they are, a missing field as "–".
pub fn field_cell(field: &str, v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "–".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => match v.as_f64() {
            // A size that is no round KiB (32764: a record that fills a 32 KiB segment with its
            // length) is written exactly.
            Some(x) if field.ends_with("_bytes") && (1024.0..1048576.0).contains(&x) && x % 1024.0 != 0.0 => {
                format!("{x} B")
            }
            Some(x) if field.ends_with("_bytes") => bytes(x),
            Some(x) if field.ends_with("_ms") => format!("{} ms", count(x)),
            Some(x) if field.ends_with("_mb") => format!("{} MB", count(x)),
            Some(x) => count(x),
            None => v.to_string(),
        },
    }
}

/// A percentile written in a metric name (`p50`, `p999`, `p9999`) as a number (50, 99.9,
/// 99.99); `max` is 100 and `min` 0.
pub fn percentile_word(w: &str) -> Option<f64> {
    match w {
        "max" => return Some(100.0),
        "min" => return Some(0.0),
        _ => {}
    }
    let digits = w.strip_prefix('p')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: f64 = digits.parse().ok()?;
    // p5 .. p99 are plain; p999 is 99.9, p9999 99.99.
    Some(if digits.len() <= 2 { n } else { n / 10f64.powi(digits.len() as i32 - 2) })
}

/// A readable column heading for a metric: `oneway_p999_ns` → `one-way p99.9`,
/// `records_per_s` → `records/s`, `cpu_ns_per_record` → `CPU ns/record`. Unit words are
/// dropped (the cells carry the unit).
pub fn metric_label(metric: &str) -> String {
    let m = metric.replace("_per_s", "/s").replace("_per_", "/");
    let mut words: Vec<String> = m
        .split('_')
        .map(|w| match w {
            "oneway" => "one-way".to_string(),
            "cpu" => "CPU".to_string(),
            "rss" => "RSS".to_string(),
            "rtt" => "RTT".to_string(),
            "gb/s" => "GB/s".to_string(),
            "mb/s" => "MB/s".to_string(),
            w => match percentile_word(w) {
                Some(p) if w.starts_with('p') => format!("p{p}"),
                _ => w.to_string(),
            },
        })
        .collect();
    // Unit words go (the cells carry the unit), unless nothing else is left.
    let unit = |w: &String| matches!(w.as_str(), "ns" | "us" | "ms" | "s" | "bytes" | "kib" | "mib");
    if words.iter().any(|w| !unit(w)) {
        words.retain(|w| !unit(w));
    }
    words.join(" ")
}

/// Orders metrics for columns: percentiles by their number (p50 < p99.9 < max), within a
/// family of the same name around them, then everything else by name.
pub fn metric_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn key(m: &str) -> (String, f64) {
        let mut family = Vec::new();
        let mut p = -1.0;
        for w in m.split('_') {
            match percentile_word(w) {
                Some(x) => p = x,
                None => family.push(w),
            }
        }
        (family.join("_"), p)
    }
    let (fa, pa) = key(a);
    let (fb, pb) = key(b);
    fa.cmp(&fb).then(pa.total_cmp(&pb)).then(a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_come_from_metric_names() {
        assert_eq!(unit_of("oneway_p50_ns"), Unit::Time(1.0));
        assert_eq!(unit_of("barrier_ms_p90"), Unit::Time(1e6));
        assert_eq!(unit_of("elapsed_s"), Unit::Time(1e9));
        assert_eq!(unit_of("inflight_bytes_max"), Unit::Bytes(1.0));
        assert_eq!(unit_of("peak_rss_kib"), Unit::Bytes(1024.0));
        assert_eq!(unit_of("gb_per_s"), Unit::Bandwidth(1e9));
        assert_eq!(unit_of("mb_per_s"), Unit::Bandwidth(1e6));
        assert_eq!(unit_of("records_per_s"), Unit::Rate("rec".into()));
        assert_eq!(unit_of("words_per_s"), Unit::Rate("words".into()));
        assert_eq!(unit_of("records_per_s_ratio"), Unit::Ratio);
        assert_eq!(unit_of("p50_ratio_round_median"), Unit::Ratio);
        assert_eq!(unit_of("cpu_ns_per_record"), Unit::Time(1.0));
        assert_eq!(unit_of("samples"), Unit::Plain);
    }

    #[test]
    fn numbers_are_written_with_their_units() {
        assert_eq!(format(&unit_of("oneway_p50_ns"), 212.0), "212 ns");
        assert_eq!(format(&unit_of("oneway_p50_ns"), 21407.0), "21.4 µs");
        assert_eq!(format(&unit_of("max_ns"), 16080895.0), "16.1 ms");
        assert_eq!(format(&unit_of("max_ns"), 9.5), "9.50 ns");
        assert_eq!(format(&unit_of("barrier_ms_p50"), 99.6), "99.6 ms");
        assert_eq!(format(&unit_of("elapsed_s"), 12.34), "12.3 s");
        assert_eq!(format(&unit_of("records_per_s"), 44_812_345.0), "44.8 M rec/s");
        assert_eq!(format(&unit_of("records_per_s"), 538_419.757), "538 k rec/s");
        assert_eq!(format(&unit_of("records_per_s"), 1.234e9), "1.23 G rec/s");
        assert_eq!(format(&unit_of("gb_per_s"), 2.055), "2.06 GB/s");
        assert_eq!(format(&unit_of("gb_per_s"), 0.551), "551 MB/s");
        assert_eq!(format(&unit_of("mb_per_s"), 62.1), "62.1 MB/s");
        assert_eq!(format(&unit_of("shmflow_ratio"), 1.662), "1.66×");
        assert_eq!(format(&unit_of("inflight_bytes_p50"), 262144.0), "256 KiB");
        assert_eq!(format(&unit_of("inflight_bytes_p50"), 39424.0), "38.5 KiB");
        assert_eq!(format(&Unit::Plain, 200000.0), "200 k");
        assert_eq!(format(&Unit::Plain, 4331.0), "4331");
    }

    #[test]
    fn sizes_and_significant_digits() {
        assert_eq!(bytes(8.0), "8 B");
        assert_eq!(bytes(32768.0), "32 KiB");
        assert_eq!(bytes(1048576.0), "1 MiB");
        assert_eq!(bytes(1500.0), "1.46 KiB");
        assert_eq!(bytes(123456789.0), "118 MiB");
        assert_eq!(sig3(0.0123456), "0.0123");
        assert_eq!(sig3(0.5), "0.500");
        assert_eq!(sig3(999.7), "1000");
        assert_eq!(time_ns(999_700.0), "1.00 ms");
    }

    #[test]
    fn field_cells() {
        assert_eq!(field_cell("payload_bytes", Some(&json!(64))), "64 B");
        assert_eq!(field_cell("record_bytes", Some(&json!(1048576))), "1 MiB");
        assert_eq!(field_cell("record_bytes", Some(&json!(32764))), "32764 B");
        assert_eq!(field_cell("timeout_ms", Some(&json!(100))), "100 ms");
        assert_eq!(field_cell("shape", Some(&json!("4x100"))), "4x100");
        assert_eq!(field_cell("processes", Some(&json!(16))), "16");
        assert_eq!(field_cell("mode", None), "–");
        assert_eq!(field_cell("workers", Some(&Value::Null)), "–");
    }

    #[test]
    fn metric_labels_and_order() {
        assert_eq!(metric_label("oneway_p999_ns"), "one-way p99.9");
        assert_eq!(metric_label("oneway_max_ns"), "one-way max");
        assert_eq!(metric_label("records_per_s"), "records/s");
        assert_eq!(metric_label("gb_per_s"), "GB/s");
        assert_eq!(metric_label("cpu_ns_per_record"), "CPU ns/record");
        assert_eq!(metric_label("barrier_ms_p50"), "barrier p50");
        assert_eq!(metric_label("peak_rss_kib_consumer"), "peak RSS consumer");
        assert_eq!(metric_label("elapsed_s"), "elapsed");
        assert_eq!(metric_label("ns"), "ns");
        assert_eq!(metric_label("rtt_ns"), "RTT");
        let mut m =
            vec!["oneway_max_ns", "oneway_p999_ns", "oneway_p50_ns", "oneway_p99_ns", "oneway_p90_ns", "samples"];
        m.sort_by(|a, b| metric_order(a, b));
        assert_eq!(
            m,
            ["oneway_p50_ns", "oneway_p90_ns", "oneway_p99_ns", "oneway_p999_ns", "oneway_max_ns", "samples"]
        );
        assert_eq!(percentile_word("p9999"), Some(99.99));
        assert_eq!(percentile_word("p5"), Some(5.0));
        assert_eq!(percentile_word("pipe"), None);
    }
}
