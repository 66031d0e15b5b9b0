//! Report (a module of the latency bench).

use super::*;

pub(crate) fn find(results: &[CaseResult], case: Case) -> Option<&CaseResult> {
    results.iter().find(|r| r.case == case)
}

/// The RTT at percentile `p` (0..=100).
pub(crate) fn rtt_at(h: &Histogram<u64>, p: f64) -> u64 {
    if p >= 100.0 {
        h.max()
    } else {
        h.value_at_percentile(p)
    }
}

/// One-way latency at percentile `p`: RTT / 2.
pub(crate) fn oneway_at(h: &Histogram<u64>, p: f64) -> f64 {
    rtt_at(h, p) as f64 / 2.0
}

/// The one-way percentiles of the table and the JSON records, with their metric names.
pub(crate) const ONEWAY: [(&str, f64); 5] = [
    ("oneway_p50_ns", 50.0),
    ("oneway_p90_ns", 90.0),
    ("oneway_p99_ns", 99.0),
    ("oneway_p999_ns", 99.9),
    ("oneway_max_ns", 100.0),
];

pub(crate) fn print_table(results: &[CaseResult]) {
    println!(
        "| system | mode | payload | samples | RTT p50 | one-way p50 | one-way p90 | one-way p99 | one-way p99.9 | \
         one-way max |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let h = &r.merged;
        let one: Vec<String> = ONEWAY.iter().map(|&(_, p)| format!("{:.0}", oneway_at(h, p))).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.case.peer.system(),
            r.case.peer.mode(),
            size_label(r.case.payload),
            h.len(),
            rtt_at(h, 50.0),
            one.join(" | ")
        );
    }
    println!(
        "\n(all figures in ns; one-way = RTT / 2; bare-atomic and futex carry no payload; shmflow segments are \
         32 KiB up to 1 KiB payloads, then the smallest power of two that holds the record, for the stream and \
         the network stack alike)"
    );
}

/// A ratio of two cases' p50s: over all samples, and round by round.
pub(crate) struct Ratio {
    pub(crate) num: Case,
    pub(crate) den: Case,
    pub(crate) overall: f64,
    pub(crate) per_round: Vec<f64>,
}

impl Ratio {
    /// The median of the per-round ratios: robust against the vCPUs moving mid-run.
    pub(crate) fn round_median(&self) -> f64 {
        let mut v = self.per_round.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The `system` of its JSON records, such as "shmflow/bare-atomic" (the `mode` is the
    /// numerator's).
    pub(crate) fn system(&self) -> String {
        format!("{}/{}", self.num.peer.system(), self.den.peer.system())
    }
}

pub(crate) fn ratio(results: &[CaseResult], num: Case, den: Case) -> Option<Ratio> {
    let (n, d) = (find(results, num)?, find(results, den)?);
    let div = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    Some(Ratio {
        num,
        den,
        overall: div(n.merged.value_at_quantile(0.5), d.merged.value_at_quantile(0.5)),
        per_round: n.round_p50.iter().zip(&d.round_p50).map(|(&a, &b)| div(a, b)).collect(),
    })
}

/// The numerator and denominator peers of the ratios, in print order.
pub(crate) const RATIOS: [(Peer, Peer); 5] = [
    (Peer::ShmSpin, Peer::Bare),
    (Peer::ShmAdaptive, Peer::Bare),
    (Peer::ShmPark, Peer::Futex),
    (Peer::NetSpin, Peer::Bare),
    (Peer::NetPark, Peer::Futex),
];

/// Every ratio of [`RATIOS`] at every size (the denominators carry no payload).
pub(crate) fn ratios(results: &[CaseResult], sizes: &[usize]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &payload in sizes {
        for (n, d) in RATIOS {
            out.extend(ratio(results, Case { peer: n, payload }, Case { peer: d, payload: 0 }));
        }
    }
    out
}

pub(crate) fn print_ratios(results: &[CaseResult], ratios: &[Ratio]) {
    // Only the ratios whose peers ran (`--peers` may leave some out).
    let columns: Vec<(Peer, Peer)> =
        RATIOS.into_iter().filter(|&(n, d)| ratios.iter().any(|r| r.num.peer == n && r.den.peer == d)).collect();
    if !columns.is_empty() {
        println!("\np50 ratios, over all samples (median of the per-round ratios):\n");
        let head: Vec<String> = columns.iter().map(|(n, d)| format!("{} / {}", n.name(), d.name())).collect();
        println!("| payload | {} |", head.join(" | "));
        println!("|---:|{}", "---:|".repeat(columns.len()));
    }
    let mut sizes: Vec<usize> = ratios.iter().map(|r| r.num.payload).collect();
    sizes.dedup();
    for payload in sizes {
        let cells: Vec<String> = columns
            .iter()
            .map(|&(n, d)| {
                ratios
                    .iter()
                    .find(|r| r.num == Case { peer: n, payload } && r.den.peer == d)
                    .map_or_else(|| "-".into(), |r| format!("{:.2} ({:.2})", r.overall, r.round_median()))
            })
            .collect();
        println!("| {} | {} |", size_label(payload), cells.join(" | "));
    }
    println!();
    for (peer, label) in [(Peer::ShmSpin, "headline: shmflow spin"), (Peer::NetSpin, "shmflow-netstack spin")] {
        let Some(r) = ratios.iter().find(|r| r.num == Case { peer, payload: HEADLINE } && r.den.peer == Peer::Bare)
        else {
            continue;
        };
        let rounds: Vec<String> = r.per_round.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "- {label} at {} / bare-atomic, p50: {:.2} over all samples; median of rounds {:.2} (per round: {})",
            size_label(HEADLINE),
            r.overall,
            r.round_median(),
            rounds.join(", ")
        );
    }
    if let Some(bare) = find(results, Case { peer: Peer::Bare, payload: 0 }) {
        let p: Vec<String> = bare.round_p50.iter().map(|v| v.to_string()).collect();
        println!(
            "- bare-atomic RTT p50 per round: {} ns (a shift between rounds means the vCPUs moved; \
             MACHINE.md: near ~120, far ~410 on its EPYC)",
            p.join(", ")
        );
    }
}

/// One flat JSON record. `extra` holds further `"key":value` fields, already encoded.
pub(crate) fn json_record(
    run: &str,
    system: &str,
    mode: &str,
    payload: usize,
    extra: &[String],
    metric: &str,
    value: String,
) -> String {
    let mut fields = vec![
        "\"bench\":\"latency\"".to_string(),
        format!("\"system\":\"{system}\""),
        format!("\"mode\":\"{mode}\""),
        format!("\"payload_bytes\":{payload}"),
    ];
    fields.extend(extra.iter().cloned());
    fields.push(format!("\"metric\":\"{metric}\""));
    fields.push(format!("\"value\":{value}"));
    fields.push(format!("\"run\":\"{run}\""));
    format!("  {{{}}}", fields.join(","))
}

/// Flat JSON records, one per figure: per case the one-way percentiles, the RTT p50, the
/// sample count and the one-way curve points; per ratio its two figures.
pub(crate) fn json_records(plan: &Plan, results: &[CaseResult], ratios: &[Ratio]) -> String {
    let run = plan.run();
    let mut out = Vec::new();
    for r in results {
        let (peer, h) = (r.case.peer, &r.merged);
        let seg: Vec<String> = r.case.segment_bytes().map(|s| format!("\"segment_bytes\":{s}")).into_iter().collect();
        let rec = |extra: &[String], metric: &str, value: String| {
            json_record(run, peer.system(), peer.mode(), r.case.payload, extra, metric, value)
        };
        for (metric, p) in ONEWAY {
            out.push(rec(&seg, metric, format!("{:.1}", oneway_at(h, p))));
        }
        out.push(rec(&seg, "rtt_p50_ns", rtt_at(h, 50.0).to_string()));
        out.push(rec(&seg, "samples", h.len().to_string()));
        for p in CURVE {
            let mut extra = seg.clone();
            extra.push(format!("\"percentile\":{p}"));
            out.push(rec(&extra, "curve_oneway_ns", format!("{:.1}", oneway_at(h, p))));
        }
    }
    for r in ratios {
        let (system, mode) = (r.system(), r.num.peer.mode());
        out.push(json_record(run, &system, mode, r.num.payload, &[], "p50_ratio", format!("{:.3}", r.overall)));
        let median = format!("{:.3}", r.round_median());
        out.push(json_record(run, &system, mode, r.num.payload, &[], "p50_ratio_round_median", median));
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
