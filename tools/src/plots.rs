//! SVG plots of a run, written to `DIR/plots/`:
//! - `latency-<size>-<mode>.svg`: one-way latency by percentile, a line per system, in the
//!   HdrHistogram style (the x axis spreads the tail: 50%, 90%, 99%, 99.9%, ... max at equal
//!   steps, i.e. log10 of 1/(1-p); the y axis is logarithmic), from `curve_oneway_ns` records;
//! - `throughput-<size>-<group>.svg`: records/s per shape (and buffer timeout), systems side
//!   by side, one chart per group of shapes (one channel with the single-core limits, 2x2,
//!   many channels, broadcast) so that each stays legible at the README's width; a log y
//!   axis when the bars span more than 10×;
//! - `scaling.svg`: aggregate records/s against P (P producer and P consumer processes), a
//!   line per system.
//!
//! Log axes are drawn as linear axes of log10 of the value, so that their ticks can sit at
//! 1-2-5 steps with unit labels. The legend has its own panel right of the chart.

use crate::pivot::{system_label, system_rank};
use crate::records::{bench_of, is_ratio, metric_of, num_of, str_of, value_of, Record};
use crate::units::{count, field_cell, time_ns};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// A plot written to disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// Which benchmark it draws.
    pub bench: String,
    /// Its title.
    pub title: String,
    /// Its path relative to the results directory (`plots/latency-64B-spin.svg`).
    pub file: String,
}

const SIZE: (u32, u32) = (960, 560);
const FONT: &str = "sans-serif";

/// A color per system: shmflow blue, iceoryx2 orange, the kernel transports warm, the
/// limits black and grey; others from a palette. A second series of the same kind of system
/// (iceoryx2 per record and in batches) gets a lighter shade, a third a darker one.
fn colors(labels: &[String]) -> Vec<RGBColor> {
    let mut seen: Vec<u8> = Vec::new();
    labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let rank = system_rank(label);
            let base = match rank {
                0 => RGBColor(0x1f, 0x5f, 0xd0),
                1 => RGBColor(0xf0, 0x8a, 0x00),
                2 => RGBColor(0xc8, 0x1e, 0x1e),
                3 => RGBColor(0x8e, 0x3c, 0xb0),
                4 => RGBColor(0x8c, 0x56, 0x2a),
                6 => RGBColor(0x2a, 0x9d, 0x3a),
                7 => RGBColor(0x10, 0x10, 0x10),
                8 => RGBColor(0x80, 0x80, 0x80),
                9 => RGBColor(0x40, 0x40, 0x40),
                10 => RGBColor(0xb0, 0xb0, 0xb0),
                _ => {
                    let c = Palette99::pick(i + 3).to_rgba();
                    RGBColor(c.0, c.1, c.2)
                }
            };
            let nth = seen.iter().filter(|r| **r == rank).count();
            seen.push(rank);
            if rank == 5 {
                // Other systems already differ: each its own palette color.
                return base;
            }
            let shade = |c: u8, f: f64| -> u8 {
                if f >= 0.0 {
                    (f64::from(c) + (255.0 - f64::from(c)) * f) as u8
                } else {
                    (f64::from(c) * (1.0 + f)) as u8
                }
            };
            let f = match nth {
                0 => 0.0,
                n if n % 2 == 1 => 0.45,
                _ => -0.4,
            };
            RGBColor(shade(base.0, f), shade(base.1, f), shade(base.2, f))
        })
        .collect()
}

/// Tick positions (log10 of the value) for a log axis from `lo` to `hi`: 1, 2 and 5 times
/// each power of ten, or only the powers when that would be too many.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let b = hi.log10().ceil() as i32;
    // At most 40 decades, whatever `lo` is (0 would be -inf).
    let a = (lo.log10().floor() as i32).max(b.saturating_sub(40));
    let steps: &[f64] = if b - a > 4 { &[1.0] } else { &[1.0, 2.0, 5.0] };
    let mut t = Vec::new();
    for e in a..=b {
        for m in steps {
            let v = m * 10f64.powi(e);
            if v >= lo && v <= hi {
                t.push(v.log10());
            }
        }
    }
    t
}

/// Evenly spaced round ticks (1, 2 or 5 times a power of ten apart) from 0 to `hi`.
pub fn linear_ticks(hi: f64) -> Vec<f64> {
    if hi <= 0.0 {
        return vec![0.0];
    }
    let raw = hi / 6.0;
    let p = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p);
    (0..64).map(|i| f64::from(i) * step).take_while(|v| *v <= hi).collect()
}

/// The position of percentile `p` (0..100) on the x axis: log10(1/(1-p)); 90% is 1, 99% 2.
pub fn tail_x(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-12).log10()
}

/// Ticks for a tail axis whose last finite percentile sits at `x_last`, with the max one
/// step further: (position, label).
pub fn tail_ticks(x_last: f64) -> (Vec<(f64, String)>, f64) {
    let x_max = x_last.ceil().max(1.0) + 1.0;
    let mut ticks = vec![(tail_x(50.0), "50%".to_string())];
    let mut d = 1;
    while (d as f64) < x_max {
        let p = 100.0 - 100.0 / 10f64.powi(d);
        ticks.push((d as f64, format!("{}%", (p * 1e6).round() / 1e6)));
        d += 1;
    }
    ticks.push((x_max, "max".to_string()));
    (ticks, x_max)
}

/// A linear f64 axis whose ticks are exactly the given points (plotters' own key-point
/// wrapper has no label formatter for f64).
struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let frac = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

fn slug(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect()
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Width of the legend panel for these labels (8 px a character is generous at 14 px).
fn legend_width(legend: &[(String, RGBColor, Key)]) -> u32 {
    let chars = legend.iter().map(|(l, _, _)| l.chars().count()).max().unwrap_or(0) as u32;
    (44 + 8 * chars).max(150)
}

/// How a legend entry is drawn.
enum Key {
    /// A line of this width.
    Line(u32),
    /// A filled box.
    Box,
}

/// The SVG canvas of a plot: white, titled, with a legend panel at the right (drawn here,
/// outside the plotting area, so it never hides data). `width` is that of the chart; the
/// legend adds to it. Returns the area for the chart.
fn frame<'a>(
    path: &'a Path,
    width: u32,
    title: &str,
    legend: &[(String, RGBColor, Key)],
) -> Result<DrawingArea<SVGBackend<'a>, Shift>, String> {
    let width = width + legend_width(legend);
    let root = SVGBackend::new(path, (width, SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let body = root.titled(title, (FONT, 20)).map_err(err)?;
    let (chart, key) = body.split_horizontally(width.saturating_sub(legend_width(legend)));
    for (i, (label, c, k)) in legend.iter().enumerate() {
        let y = 30 + 22 * i as i32;
        match k {
            Key::Line(w) => key.draw(&PathElement::new(vec![(4, y), (28, y)], c.stroke_width(*w))),
            Key::Box => key.draw(&Rectangle::new([(10, y - 6), (22, y + 6)], c.filled())),
        }
        .map_err(err)?;
        key.draw(&Text::new(label.clone(), (36, y - 8), (FONT, 14))).map_err(err)?;
    }
    Ok(chart)
}

/// Series of (x, y) points by label, in label order.
type Series = Vec<(String, Vec<(f64, f64)>)>;

fn push_point(series: &mut Series, label: String, pt: (f64, f64)) {
    match series.iter_mut().find(|(l, _)| *l == label) {
        Some((_, pts)) => pts.push(pt),
        None => series.push((label, vec![pt])),
    }
}

/// A record's series label: the system (with variants) and, when it has one, the mode.
fn series_label(r: &Record) -> String {
    match str_of(r, "mode") {
        Some(m) => format!("{} {m}", system_label(r)),
        None => system_label(r),
    }
}

/// What a plot draws.
enum Data {
    Curves(Series),
    Bars(Bars),
    /// The lines and the x axis' description.
    Scaling(Series, &'static str),
}

/// Latency percentile curves, one plot per payload size and mode.
fn latency_curves(recs: &[Record]) -> Vec<(Plot, Data)> {
    let curves: Vec<&Record> =
        recs.iter().filter(|r| bench_of(r) == "latency" && metric_of(r) == "curve_oneway_ns" && !is_ratio(r)).collect();
    // (payload, mode): modes in order of first appearance, payloads ascending. A system
    // without a mode (a pipe, the futex limit) is drawn in every mode of its payload.
    let mut groups: Vec<(Option<f64>, Option<String>)> = Vec::new();
    // A limit measured without a payload (0 B) is drawn beside every payload.
    let any_payload = curves.iter().any(|r| num_of(r, "payload_bytes").is_some_and(|p| p > 0.0));
    let payload_of = |r: &Record| num_of(r, "payload_bytes").filter(|p| !(any_payload && *p == 0.0));
    for r in curves.iter().filter(|r| str_of(r, "mode").is_some() && payload_of(r).is_some()) {
        let g = (payload_of(r), str_of(r, "mode").map(str::to_string));
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for r in &curves {
        let payload = payload_of(r);
        if (payload.is_some() || !any_payload) && !groups.iter().any(|g| g.0 == payload) {
            groups.push((payload, None));
        }
    }
    groups.sort_by(|a, b| a.0.unwrap_or(0.0).total_cmp(&b.0.unwrap_or(0.0)));
    let mut plots = Vec::new();
    for (payload, mode) in groups {
        let mut series: Series = Vec::new();
        for r in &curves {
            let (m, p) = (str_of(r, "mode"), payload_of(r));
            if (p.is_none() || p == payload) && (m.is_none() || mode.is_none() || m == mode.as_deref()) {
                if let (Some(p), Some(v)) = (num_of(r, "percentile"), value_of(r)) {
                    if v > 0.0 {
                        push_point(&mut series, system_label(r), (p, v));
                    }
                }
            }
        }
        if series.is_empty() {
            continue;
        }
        series.sort_by_key(|(l, _)| system_rank(l));
        let size = payload.map_or("any size".to_string(), |x| field_cell("payload_bytes", Some(&x.into())));
        let mode_s = mode.clone().unwrap_or_else(|| "any mode".into());
        let file = format!("plots/latency-{}-{}.svg", slug(&size), slug(&mode_s));
        let title = format!("One-way latency by percentile, {size} payload, {mode_s}");
        plots.push((Plot { bench: "latency".into(), title, file }, Data::Curves(series)));
    }
    plots
}

fn draw_curves(path: &Path, title: &str, series: &Series) -> Result<(), String> {
    let finite: Vec<f64> = series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.0)).filter(|p| *p < 100.0).collect();
    let x_last = finite.iter().map(|p| tail_x(*p)).fold(tail_x(99.0), f64::max);
    let (ticks, x_max) = tail_ticks(x_last);
    let x_min = finite.iter().map(|p| tail_x(*p)).fold(tail_x(50.0), f64::min);
    let ys = series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1));
    let (y_lo, y_hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let x_of = |p: f64| if p >= 100.0 { x_max } else { tail_x(p) };

    let width_of = |label: &str| if system_rank(label) == 0 { 3 } else { 2 };
    let labels: Vec<String> = series.iter().map(|(l, _)| l.clone()).collect();
    let cs = colors(&labels);
    let legend: Vec<_> = labels.iter().zip(&cs).map(|(l, c)| (l.clone(), *c, Key::Line(width_of(l)))).collect();
    let root = frame(path, SIZE.0 - 200, title, &legend)?;
    // y is log10 of the latency, so that the axis can be labelled at 1-2-5 steps.
    let (ly_lo, ly_hi) = ((y_lo / 1.3).log10(), (y_hi * 1.3).log10());
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            Ticked { lo: x_min - 0.05, hi: x_max + 0.1, ticks: ticks.iter().map(|t| t.0).collect() },
            Ticked { lo: ly_lo, hi: ly_hi, ticks: log_ticks(y_lo / 1.3, y_hi * 1.3) },
        )
        .map_err(err)?;
    let tick_label = |x: &f64| ticks.iter().find(|t| (t.0 - x).abs() < 1e-9).map_or_else(String::new, |t| t.1.clone());
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("one-way latency")
        .x_label_formatter(&tick_label)
        .y_label_formatter(&|y| time_ns(10f64.powf(*y)))
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    for ((label, pts), c) in series.iter().zip(&cs) {
        let mut pts: Vec<(f64, f64)> = pts.iter().map(|&(p, v)| (x_of(p), v.log10())).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(width_of(label)))).map_err(err)?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    root.present().map_err(err)
}

/// Bars: groups along x, a bar per series within a group.
struct Bars {
    groups: Vec<String>,
    /// Series label and a value per group (`None`: no bar).
    series: Vec<(String, Vec<Option<f64>>)>,
}

/// A chart of throughput shapes: (file suffix, title words, order).
type Family = (&'static str, &'static str, u8);

/// The chart a throughput shape is drawn in. One chart per
/// group of shapes keeps each readable at the README's width: one channel (with the
/// single-core limits beside it), 2x2, many channels, broadcast.
fn shape_family(shape: Option<&str>) -> Family {
    match shape {
        None | Some("single-thread") => ("1x1", "one channel (1x1) and single-core limits", 0),
        Some(s) if s.starts_with("1x1") => ("1x1", "one channel (1x1) and single-core limits", 0),
        Some(s) if s.contains("broadcast") => ("broadcast", "broadcast", 3),
        Some(s) if s.starts_with("2x2") => ("2x2", "2x2", 1),
        Some(_) => ("many", "many channels", 2),
    }
}

fn throughput_bars(recs: &[Record]) -> Vec<(Plot, Data)> {
    let tp: Vec<&Record> = recs
        .iter()
        .filter(|r| bench_of(r) == "throughput" && metric_of(r) == "records_per_s" && !is_ratio(r))
        .filter(|r| value_of(r).is_some_and(|v| v > 0.0))
        .collect();
    let size_of = |r: &Record| num_of(r, "record_bytes").or_else(|| num_of(r, "payload_bytes"));
    let family_of = |r: &Record| shape_family(str_of(r, "shape"));
    // (size, family) in size order, then family order.
    let mut charts: Vec<(Option<f64>, Family)> = Vec::new();
    for r in &tp {
        let key = (size_of(r), family_of(r));
        if !charts.contains(&key) {
            charts.push(key);
        }
    }
    charts.sort_by(|a, b| a.0.unwrap_or(0.0).total_cmp(&b.0.unwrap_or(0.0)).then(a.1 .2.cmp(&b.1 .2)));
    // Limits alone (memcpy with no shmflow bar beside it) make no chart.
    charts.retain(|(size, fam)| {
        tp.iter().any(|r| size_of(r) == *size && family_of(r) == *fam && system_rank(&series_label(r)) < 7)
    });
    let mut plots = Vec::new();
    for (size, family) in charts {
        let these: Vec<&Record> = tp.iter().copied().filter(|r| size_of(r) == size && family_of(r) == family).collect();
        // A group per shape and timeout (the fields that vary among these records).
        let group_fields: Vec<&str> = ["shape", "timeout_ms"]
            .into_iter()
            .filter(|f| these.iter().any(|r| r.get(*f) != these[0].get(*f)))
            .collect();
        let group_of = |r: &Record| {
            let parts: Vec<String> = group_fields
                .iter()
                .filter(|f| r.get(**f).is_some_and(|v| !v.is_null()))
                .map(|f| field_cell(f, r.get(*f)))
                .collect();
            if parts.is_empty() {
                "all".to_string()
            } else {
                parts.join(", ")
            }
        };
        let mut bars = Bars { groups: Vec::new(), series: Vec::new() };
        for r in &these {
            let g = group_of(r);
            if !bars.groups.contains(&g) {
                bars.groups.push(g);
            }
        }
        for r in &these {
            let gi = bars.groups.iter().position(|g| *g == group_of(r)).unwrap_or(0);
            let label = series_label(r);
            let n = bars.groups.len();
            let s = match bars.series.iter_mut().position(|(l, _)| *l == label) {
                Some(i) => &mut bars.series[i],
                None => {
                    bars.series.push((label, vec![None; n]));
                    bars.series.last_mut().expect("just pushed")
                }
            };
            s.1[gi] = value_of(r);
        }
        bars.series.sort_by_key(|(l, _)| system_rank(l));
        let size_s = size.map_or("any size".to_string(), |x| field_cell("record_bytes", Some(&x.into())));
        let file = format!("plots/throughput-{}-{}.svg", slug(&size_s), family.0);
        let title = format!("Throughput, {size_s} records, {} (records/s)", family.1);
        plots.push((Plot { bench: "throughput".into(), title, file }, Data::Bars(bars)));
    }
    plots
}

fn draw_bars(path: &Path, title: &str, bars: &Bars) -> Result<(), String> {
    let values: Vec<f64> = bars.series.iter().flat_map(|(_, v)| v.iter().flatten().copied()).collect();
    let (lo, hi) = values.iter().fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let labels: Vec<String> = bars.series.iter().map(|(l, _)| l.clone()).collect();
    let cs = colors(&labels);
    let legend: Vec<_> = labels.iter().zip(&cs).map(|(l, c)| (l.clone(), *c, Key::Box)).collect();
    // Room for every bar and for the group's label under it (8 px a character at 15 px).
    let longest = bars.groups.iter().map(|g| g.chars().count()).max().unwrap_or(0) as u32;
    let group_w = (14 * bars.series.len() as u32 + 24).max(8 * longest + 16).max(90);
    let width = (110 + group_w * bars.groups.len() as u32).max(SIZE.0 - 280);
    let root = frame(path, width, title, &legend)?;
    // A log axis (y = log10 of the value) when the bars span more than 10x.
    let log = hi / lo > 10.0;
    let (y, base) = if log {
        let (a, b) = (lo / 2.0, hi * 2.0);
        (Ticked { lo: a.log10(), hi: b.log10(), ticks: log_ticks(a, b) }, a.log10())
    } else {
        (Ticked { lo: 0.0, hi: hi * 1.15, ticks: linear_ticks(hi * 1.15) }, 0.0)
    };
    let n = bars.groups.len() as f64;
    let centers: Vec<f64> = (0..bars.groups.len()).map(|g| g as f64 + 0.5).collect();
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(Ticked { lo: 0.0, hi: n, ticks: centers }, y)
        .map_err(err)?;
    let group_label = |x: &f64| bars.groups.get(x.floor() as usize).cloned().unwrap_or_default();
    let y_label = |v: &f64| count(if log { 10f64.powf(*v) } else { *v });
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("records/s")
        .x_label_formatter(&group_label)
        .y_label_formatter(&y_label)
        .label_style((FONT, 15))
        .draw()
        .map_err(err)?;
    let k = bars.series.len().max(1) as f64;
    for (i, ((_, vals), c)) in bars.series.iter().zip(&cs).enumerate() {
        let rects = vals.iter().enumerate().filter_map(|(g, v)| {
            let x0 = g as f64 + 0.1 + 0.8 * i as f64 / k;
            v.map(|v| Rectangle::new([(x0, base), (x0 + 0.8 / k, if log { v.log10() } else { v })], c.filled()))
        });
        chart.draw_series(rects).map_err(err)?;
    }
    root.present().map_err(err)
}

fn scaling_lines(recs: &[Record]) -> Vec<(Plot, Data)> {
    let metric = ["records_per_s", "aggregate_records_per_s"]
        .into_iter()
        .find(|m| recs.iter().any(|r| bench_of(r) == "scaling" && metric_of(r) == *m));
    let Some(metric) = metric else {
        return Vec::new();
    };
    let mut series: Series = Vec::new();
    let p_field = crate::goals::p_field(recs);
    for r in recs.iter().filter(|r| bench_of(r) == "scaling" && metric_of(r) == metric && !is_ratio(r)) {
        if let (Some(p), Some(v)) = (num_of(r, p_field), value_of(r)) {
            if p > 0.0 {
                push_point(&mut series, series_label(r), (p, v));
            }
        }
    }
    if series.is_empty() {
        return Vec::new();
    }
    series.sort_by_key(|(l, _)| system_rank(l));
    let file = "plots/scaling.svg".to_string();
    let title = "All-to-all: aggregate records/s, P producers × P consumers".to_string();
    let x_desc = if p_field == "producers" { "P (producer processes = consumer processes)" } else { "processes" };
    vec![(Plot { bench: "scaling".into(), title, file }, Data::Scaling(series, x_desc))]
}

fn draw_scaling(path: &Path, title: &str, series: &Series, x_desc: &str) -> Result<(), String> {
    // x is log2(P), so that 1, 2, 4, 8, 16 are evenly spaced.
    let ps: Vec<f64> = series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.0.log2())).collect();
    let (p_lo, p_hi) = ps.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    let y_hi = series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1)).fold(0f64, f64::max);
    let mut ticks: Vec<f64> = ps.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();

    let labels: Vec<String> = series.iter().map(|(l, _)| l.clone()).collect();
    let cs = colors(&labels);
    let legend: Vec<_> = labels.iter().zip(&cs).map(|(l, c)| (l.clone(), *c, Key::Line(2))).collect();
    let root = frame(path, SIZE.0 - 200, title, &legend)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(
            Ticked { lo: p_lo - 0.3, hi: p_hi + 0.3, ticks },
            Ticked { lo: 0.0, hi: y_hi * 1.15, ticks: linear_ticks(y_hi * 1.15) },
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("aggregate records/s")
        .x_label_formatter(&|x| format!("{}", x.exp2().round()))
        .y_label_formatter(&|v| count(*v))
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    for ((_, pts), c) in series.iter().zip(&cs) {
        let mut pts: Vec<(f64, f64)> = pts.iter().map(|&(p, v)| (p.log2(), v)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2))).map_err(err)?;
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    root.present().map_err(err)
}

/// Draws every plot the records allow into `DIR/plots/` and returns them.
///
/// # Errors
/// The directory or a file cannot be written.
pub fn draw_all(recs: &[Record], dir: &Path) -> Result<Vec<Plot>, String> {
    let plots_dir = dir.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|e| format!("{}: {e}", plots_dir.display()))?;
    // Plots of an earlier report in the same directory would be linked by nothing.
    if let Ok(old) = std::fs::read_dir(&plots_dir) {
        for e in old.flatten() {
            if e.path().extension().is_some_and(|x| x == "svg") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut plots = Vec::new();
    for (plot, data) in specs(recs) {
        let path = dir.join(&plot.file);
        match &data {
            Data::Curves(s) => draw_curves(&path, &plot.title, s)?,
            Data::Bars(b) => draw_bars(&path, &plot.title, b)?,
            Data::Scaling(s, x) => draw_scaling(&path, &plot.title, s, x)?,
        }
        plots.push(plot);
    }
    Ok(plots)
}

fn specs(recs: &[Record]) -> Vec<(Plot, Data)> {
    let mut specs = latency_curves(recs);
    specs.extend(throughput_bars(recs));
    specs.extend(scaling_lines(recs));
    specs
}

/// The plots [`draw_all`] draws for `recs`, without drawing them.
pub fn plan(recs: &[Record]) -> Vec<Plot> {
    specs(recs).into_iter().map(|(p, _)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::parse;

    #[test]
    fn axis_ticks() {
        let t: Vec<f64> = log_ticks(90.0, 2500.0).into_iter().map(|x| (10f64.powf(x) * 1e6).round() / 1e6).collect();
        assert_eq!(t, [100.0, 200.0, 500.0, 1000.0, 2000.0]);
        assert_eq!(log_ticks(1.0, 1e9).len(), 10);
        assert_eq!(linear_ticks(160e6), [0.0, 5e7, 1e8, 1.5e8]);
        assert_eq!(linear_ticks(0.0), [0.0]);
        let c = colors(&["shmflow".into(), "iceoryx2 (a)".into(), "iceoryx2 (b)".into()]);
        assert_ne!(c[1], c[2]);
    }

    #[test]
    fn the_tail_axis_puts_each_nine_one_step_further() {
        assert!((tail_x(90.0) - 1.0).abs() < 1e-12);
        assert!((tail_x(99.9) - 3.0).abs() < 1e-9);
        let (ticks, x_max) = tail_ticks(tail_x(99.99));
        let labels: Vec<&str> = ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["50%", "90%", "99%", "99.9%", "99.99%", "max"]);
        assert_eq!(x_max, 5.0);
    }

    #[test]
    fn plots_are_written_for_curves_bars_and_scaling() {
        let dir = std::env::temp_dir().join(format!("shmflow-tools-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::from("[");
        let mut first = true;
        for (sys, base) in [("shmflow", 200.0), ("iceoryx2", 330.0), ("bare-atomic", 140.0)] {
            for p in [50.0f64, 90.0, 99.0, 99.9, 99.99, 100.0] {
                if !first {
                    text.push(',');
                }
                first = false;
                text.push_str(&format!(
                    r#"{{"bench":"latency","system":"{sys}","mode":"spin","payload_bytes":64,"metric":"curve_oneway_ns","percentile":{p},"value":{}}}"#,
                    base * (1.0 + tail_x(p.min(99.999)))
                ));
            }
        }
        for (sys, shape, v) in [
            ("shmflow", "1x1", 1.2e8),
            ("tcp", "1x1", 4e7),
            ("shmflow", "4x100", 9e7),
            ("memcpy", "single-thread", 2e10),
        ] {
            text.push_str(&format!(
                r#",{{"bench":"throughput","system":"{sys}","shape":"{shape}","record_bytes":8,"metric":"records_per_s","value":{v}}}"#
            ));
        }
        for (p, v) in [(1, 5e7), (2, 6e7), (4, 5.5e7), (16, 4e7)] {
            text.push_str(&format!(
                r#",{{"bench":"scaling","system":"shmflow","processes":{p},"metric":"records_per_s","value":{v}}}"#
            ));
        }
        text.push(']');
        let plots = draw_all(&parse(&text).unwrap(), &dir).unwrap();
        let files: Vec<&str> = plots.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "plots/latency-64B-spin.svg",
                "plots/throughput-8B-1x1.svg",
                "plots/throughput-8B-many.svg",
                "plots/scaling.svg"
            ]
        );
        for p in &plots {
            let svg = std::fs::read_to_string(dir.join(&p.file)).unwrap();
            assert!(svg.starts_with("<svg"), "{}", p.file);
            assert!(svg.contains(&p.title), "{} lacks its title", p.file);
        }
        // The one-channel chart carries the single-core limit beside it; 4x100 is elsewhere.
        let one = std::fs::read_to_string(dir.join("plots/throughput-8B-1x1.svg")).unwrap();
        assert!(one.contains("memcpy") && !one.contains("4x100"));
        let lat = std::fs::read_to_string(dir.join("plots/latency-64B-spin.svg")).unwrap();
        for label in ["99.99%", "max", "shmflow", "iceoryx2", "bare-atomic"] {
            assert!(lat.contains(label), "latency plot lacks {label}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
