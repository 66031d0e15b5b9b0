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
        median(self.per_round.clone())
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
    for r in ratios_to_record(results) {
        let rounds: Vec<String> = r.per_round.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "- shmflow spin at {} / {} (the same payload's lines, no software around them), p50: {:.2} over all \
             samples; median of rounds {:.2} (per round: {})",
            size_label(r.num.payload),
            r.den.peer.name(),
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

/// The stream's spin cases over each record peer at the same payload, where both ran (the
/// rounds run them a few seconds apart, not side by side as the paired ratios do).
pub(crate) fn ratios_to_record(results: &[CaseResult]) -> Vec<Ratio> {
    let spin = || results.iter().filter(|r| r.case.peer == Peer::ShmSpin);
    [Peer::Record, Peer::RecordMoving]
        .into_iter()
        .flat_map(|peer| spin().filter_map(move |r| ratio(results, r.case, Case { peer, payload: r.case.payload })))
        .collect()
}

/// A ratio against the limit measured beside its numerator ([`Peer::limit`]), round by
/// round.
pub(crate) struct Paired {
    pub(crate) num: Case,
    pub(crate) limit: Peer,
    /// Per round: the numerator's RTT p50 over its limit's (the mean of the limit's p50 just
    /// before and just after the numerator), and that limit's RTT p50.
    pub(crate) rounds: Vec<(f64, f64)>,
}

impl Paired {
    /// The `system` of its JSON records, as [`Ratio::system`].
    pub(crate) fn system(&self) -> String {
        format!("{}/{}", self.num.peer.system(), self.limit.system())
    }
}

/// Every case's ratio against the limit measured beside it.
pub(crate) fn paired_ratios(results: &[CaseResult]) -> Vec<Paired> {
    let mut out = Vec::new();
    for r in results {
        let Some(limit) = r.case.peer.limit() else { continue };
        if r.paired.is_empty() {
            continue;
        }
        let rounds = r
            .round_p50
            .iter()
            .zip(&r.paired)
            .map(|(&p50, &(before, after))| {
                let lim = (before + after) as f64 / 2.0;
                (p50 as f64 / lim.max(1.0), lim)
            })
            .collect();
        out.push(Paired { num: r.case, limit, rounds });
    }
    out
}

/// Where the run's limit RTTs of `limit` split into two placements of the vCPUs: the
/// geometric mean of the lowest and the highest, when the highest is at least 1.8x the
/// lowest (near and far differ 3-4x on our machines; MACHINE.md); `None`: one placement.
pub(crate) fn placement_split(paired: &[Paired], limit: Peer) -> Option<f64> {
    let all = || paired.iter().filter(|p| p.limit == limit).flat_map(|p| p.rounds.iter().map(|r| r.1));
    let lo = all().reduce(f64::min)?;
    let hi = all().reduce(f64::max)?;
    (hi >= 1.8 * lo).then(|| (lo * hi).sqrt())
}

/// The median of `v` (NaN when empty).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One placement's share of a paired ratio.
pub(crate) struct Group {
    /// "all", "near" or "far".
    pub(crate) placement: &'static str,
    /// Median of the per-round ratios.
    pub(crate) ratio: f64,
    /// Median of the limit's one-way p50 (RTT / 2) in those rounds, ns.
    pub(crate) limit_oneway_ns: f64,
    pub(crate) rounds: usize,
}

/// The rounds of `p` in all, then split by placement at `split` (near: a limit RTT below
/// it); groups without rounds are left out.
pub(crate) fn groups(p: &Paired, split: Option<f64>) -> Vec<Group> {
    let group = |placement: &'static str, keep: &dyn Fn(f64) -> bool| {
        let rounds: Vec<(f64, f64)> = p.rounds.iter().copied().filter(|r| keep(r.1)).collect();
        (!rounds.is_empty()).then(|| Group {
            placement,
            ratio: median(rounds.iter().map(|r| r.0).collect()),
            limit_oneway_ns: median(rounds.iter().map(|r| r.1 / 2.0).collect()),
            rounds: rounds.len(),
        })
    };
    let mut out: Vec<Group> = group("all", &|_| true).into_iter().collect();
    if let Some(s) = split {
        out.extend(group("near", &|l| l < s));
        out.extend(group("far", &|l| l >= s));
    }
    out
}

pub(crate) fn print_paired(paired: &[Paired]) {
    if paired.is_empty() {
        return;
    }
    println!(
        "
p50 against the limit measured beside each case (per round: the case's RTT p50 over the mean of its \
         limit's just before and just after it; median over rounds, then by placement of the vCPUs):\n"
    );
    println!("| payload | ratio | all rounds | near | far |");
    println!("|---:|---|---:|---:|---:|");
    for p in paired {
        let split = placement_split(paired, p.limit);
        let gs = groups(p, split);
        let cell = |placement: &str| {
            gs.iter().find(|g| g.placement == placement).map_or_else(
                || "-".to_string(),
                |g| {
                    format!(
                        "{:.2} ({} rounds, {} one-way {:.0} ns)",
                        g.ratio,
                        g.rounds,
                        p.limit.name(),
                        g.limit_oneway_ns
                    )
                },
            )
        };
        println!(
            "| {} | {} / {} | {} | {} | {} |",
            size_label(p.num.payload),
            p.num.peer.name(),
            p.limit.name(),
            cell("all"),
            cell("near"),
            cell("far")
        );
    }
    for limit in [Peer::Bare, Peer::Futex] {
        let rtts: Vec<f64> =
            paired.iter().filter(|p| p.limit == limit).flat_map(|p| p.rounds.iter().map(|r| r.1 / 2.0)).collect();
        let (Some(lo), Some(hi)) = (rtts.iter().copied().reduce(f64::min), rtts.iter().copied().reduce(f64::max))
        else {
            continue;
        };
        let how = match placement_split(paired, limit) {
            Some(s) => format!("two placements, near below {:.0} ns", s / 2.0),
            None => "one placement (less than 1.8x apart)".to_string(),
        };
        println!("- {} one-way p50 beside the cases: {lo:.0}..{hi:.0} ns: {how}", limit.name());
    }
}

/// For each limit, the median over cases and rounds of its one-way p50 just before and just
/// after the cases it is paired with: the run before a case follows another case (often a
/// spinning one), the run after follows the case itself, so a gap between the two shows
/// the limit still settling from what ran before it (a drift the ratios would inherit).
pub(crate) fn print_limit_sides(results: &[CaseResult]) {
    for limit in [Peer::Bare, Peer::Futex] {
        let sides = || results.iter().filter(|r| r.case.peer.limit() == Some(limit)).flat_map(|r| r.paired.iter());
        if sides().next().is_none() {
            continue;
        }
        let before = median(sides().map(|&(b, _)| b as f64 / 2.0).collect());
        let after = median(sides().map(|&(_, a)| a as f64 / 2.0).collect());
        println!(
            "- {} one-way p50 just before / just after the cases it is paired with (median over cases and \
             rounds): {before:.0} / {after:.0} ns",
            limit.name()
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
pub(crate) fn json_records(plan: &Plan, results: &[CaseResult], ratios: &[Ratio], paired: &[Paired]) -> String {
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
    // Per paired ratio and placement ("all", then "near" / "far" when the run saw both): the
    // median of its per-round ratios, its rounds and its limit's one-way p50.
    for p in paired {
        let (system, mode) = (p.system(), p.num.peer.mode());
        for g in groups(p, placement_split(paired, p.limit)) {
            let extra = [format!("\"placement\":\"{}\"", g.placement)];
            let rec =
                |metric: &str, value: String| json_record(run, &system, mode, p.num.payload, &extra, metric, value);
            out.push(rec("p50_ratio_paired", format!("{:.3}", g.ratio)));
            out.push(rec("paired_rounds", g.rounds.to_string()));
            out.push(rec("paired_limit_oneway_p50_ns", format!("{:.1}", g.limit_oneway_ns)));
        }
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
