//! Report (a module of the throughput bench).

use super::*;

/// The single-thread limits at one record size.
pub(crate) struct Limit {
    pub(crate) size: usize,
    pub(crate) memcpy: Option<Rate>,
    pub(crate) memread: Option<Rate>,
    /// Above a segment only.
    pub(crate) handoff: Option<Rate>,
}

pub(crate) fn limit_of(limits: &[Limit], size: usize, system: System) -> Option<Rate> {
    let l = limits.iter().find(|l| l.size == size)?;
    match system {
        System::Memcpy => l.memcpy,
        System::Memread => l.memread,
        System::Handoff => l.handoff,
        _ => None,
    }
}

pub(crate) fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        "-".into()
    } else if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

pub(crate) fn fmt_ns(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(crate) fn ratio(a: Option<Rate>, b: Option<Rate>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if b.records_per_s > 0.0 => a.records_per_s / b.records_per_s,
        _ => f64::NAN,
    }
}

/// The peers shmflow is compared with, in column order.
pub(crate) const PEERS: [System; 4] = [System::Tcp, System::Unix, System::Pipe, System::InProcess];

pub(crate) fn print_table(plan: &Plan, results: &[CaseResult], limits: &[Limit]) {
    let peers = PEERS.iter().map(|s| s.short()).collect::<Vec<_>>();
    println!(
        "| record | shape | timeout | shmflow rec/s | shmflow GB/s | {} | {} | shmflow/memcpy | shmflow/memread | bare \
         RTT |",
        peers.iter().map(|p| format!("{p} rec/s")).collect::<Vec<_>>().join(" | "),
        peers.iter().map(|p| format!("shmflow/{p}")).collect::<Vec<_>>().join(" | "),
    );
    println!("|---|---|---:|---:|---:|{}---:|---:|---:|", "---:|".repeat(2 * PEERS.len()));
    let rate = |m: Option<Rate>| m.map_or_else(|| "-".into(), |m| fmt_rate(m.records_per_s));
    let ratio_cell = |x: f64| if x.is_finite() { format!("{x:.2}") } else { "-".into() };
    for r in results {
        let c = r.case;
        let shm = r.median(System::Shmflow);
        let mut cells = vec![
            size_name(c.size),
            c.shape_name(),
            format!("{} ms", c.timeout_ms),
            rate(shm),
            shm.map_or_else(|| "-".into(), |m| format!("{:.3}", m.gb_per_s)),
        ];
        cells.extend(PEERS.iter().map(|&p| rate(r.median(p))));
        cells.extend(PEERS.iter().map(|&p| ratio_cell(ratio(shm, r.median(p)))));
        for l in [System::Memcpy, System::Memread] {
            let x = ratio(shm, limit_of(limits, c.size, l));
            cells.push(if x.is_finite() { format!("{x:.3}") } else { "-".into() });
        }
        cells.push(format!("{:.0} ns", median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN)));
        println!("| {} |", cells.join(" | "));
    }
    println!("\nCPU ns per record (producer + consumer process in the window):\n");
    println!("| record | shape | timeout | shmflow | {} |", peers.join(" | "));
    println!("|---|---|---:|---:|{}", "---:|".repeat(PEERS.len()));
    for r in results {
        let c = r.case;
        let mut cells = vec![size_name(c.size), c.shape_name(), format!("{} ms", c.timeout_ms)];
        cells.extend(
            std::iter::once(System::Shmflow)
                .chain(PEERS)
                .map(|s| r.median(s).map_or_else(|| "-".into(), |m| fmt_ns(m.cpu_ns_per_record))),
        );
        println!("| {} |", cells.join(" | "));
    }
    println!();
    println!("| record | memcpy rec/s | memcpy GB/s | memread rec/s | memread GB/s | handoff GB/s | handoff/memcpy |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let gb = |m: Option<Rate>| m.map_or_else(|| "-".into(), |m| format!("{:.2}", m.gb_per_s));
    for l in limits {
        let x = ratio(l.handoff, l.memcpy);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            size_name(l.size),
            rate(l.memcpy),
            gb(l.memcpy),
            rate(l.memread),
            gb(l.memread),
            gb(l.handoff),
            if x.is_finite() { format!("{x:.2}") } else { "-".into() }
        );
    }
    println!(
        "\n(rec/s: records written per second, a broadcast record once; GB/s = 1e9 payload bytes of those per \
         second; medians over {} round(s); the ratios are of records/s; tcp, unix, pipe: a process per side with \
         the credit protocol; in-process: writer threads and the consumer in one process, crossbeam channels; \
         memcpy: one thread copying the records into a 4 MiB ring; memread: one thread checksumming them in a \
         64 MiB region; handoff (records above 32 KiB): two threads on the two CPUs, one copying the records in \
         32 KiB pieces into a ring of 10 buffers, the other checksumming each piece, the faster of ordinary and \
         streaming stores: the cross-core limit of a 1x1 shmflow run; bare RTT: one cache line between the two CPUs, ~120 ns near, ~410 ns far on our EPYC)",
        plan.rounds
    );
}

/// Min, median and max of `f` over the cases that `keep` selects.
pub(crate) fn spread(
    results: &[CaseResult],
    keep: impl Fn(&Case) -> bool,
    f: impl Fn(&CaseResult) -> f64,
) -> Option<[f64; 3]> {
    let mut v: Vec<f64> = results.iter().filter(|r| keep(&r.case)).map(f).filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Some([*v.first()?, median(v.clone())?, *v.last()?])
}

pub(crate) fn print_summary(results: &[CaseResult], limits: &[Limit]) {
    println!();
    let line = |what: &str, s: Option<[f64; 3]>, goal: &str| match s {
        Some([lo, med, hi]) if lo == hi => println!("- {what}: {med:.2}; goal {goal}"),
        Some([lo, med, hi]) => println!("- {what}: median {med:.2} (min {lo:.2}, max {hi:.2}); goal {goal}"),
        None => println!("- {what}: not measured"),
    };
    let one = |size: usize, shape: Shape, t: i64| {
        move |c: &Case| c.size == size && c.shape == shape && c.timeout_ms == t && c.segment == SEGMENT
    };
    let shm = |r: &CaseResult| r.median(System::Shmflow);
    line(
        "8 B records, 1x1, 100 ms: shmflow million records/s",
        spread(results, one(LONG, Shape::new(1, 1), 100), |r| shm(r).map_or(f64::NAN, |m| m.records_per_s / 1e6)),
        ">= 100 (issue 6)",
    );
    line(
        "8 B records, 1x1, 100 ms: shmflow/tcp",
        spread(results, one(LONG, Shape::new(1, 1), 100), |r| ratio(shm(r), r.median(System::Tcp))),
        ">= 10 (issue 6)",
    );
    for t in [0, 1, 100] {
        let small = |c: &Case| c.size == LONG && c.timeout_ms == t;
        if !results.iter().any(|r| small(&r.case)) {
            continue;
        }
        line(
            &format!("8 B records, timeout {t} ms, shmflow/tcp over shapes"),
            spread(results, small, |r| ratio(shm(r), r.median(System::Tcp))),
            ">= 5 (issue 3)",
        );
        line(
            &format!("8 B records, timeout {t} ms, shmflow/unix over shapes"),
            spread(results, small, |r| ratio(shm(r), r.median(System::Unix))),
            ">= 3 (issue 3)",
        );
    }
    line(
        "32 KiB segment stream, 1x1: shmflow GB/s",
        spread(results, |c| c.size == SEG_RECORD, |r| shm(r).map_or(f64::NAN, |m| m.gb_per_s)),
        ">= 2x iceoryx2 with 32 KiB samples in the same run (its own bench; MACHINE.md: 8.2 GB/s near, 2.2 far)",
    );
    for (what, segment) in [("32 KiB segments", SEGMENT), ("4 MiB segments", LARGE_SEGMENT)] {
        let keep = |c: &Case| c.size == MIB && c.segment == segment;
        if !results.iter().any(|r| keep(&r.case)) {
            continue;
        }
        let gb = spread(results, keep, |r| shm(r).map_or(f64::NAN, |m| m.gb_per_s));
        let to = |l: System| {
            spread(results, keep, |r| ratio(shm(r), limit_of(limits, MIB, l)))
                .map_or_else(|| "-".into(), |[_, m, _]| format!("{m:.2}"))
        };
        println!(
            "- 1 MiB records, {what}: shmflow {} GB/s, {} x memcpy, {} x memread, {} x handoff; goal >= 0.8 x \
             memcpy{}",
            gb.map_or_else(|| "-".into(), |[_, m, _]| format!("{m:.2}")),
            to(System::Memcpy),
            to(System::Memread),
            to(System::Handoff),
            if segment == SEGMENT { " (issue 14)" } else { " (the default segments hold it; this is a tuning)" }
        );
    }
    let per_system = |f: &dyn Fn(Rate) -> f64, keep: &dyn Fn(&Case) -> bool, digits: usize| {
        System::STREAMS
            .iter()
            .map(|&s| {
                let v = spread(results, keep, |r| r.median(s).map_or(f64::NAN, f));
                format!("{} {}", s.short(), v.map_or_else(|| "-".into(), |[_, med, _]| format!("{med:.digits$}")))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "- 8 B records, 1x1, 100 ms, million records/s: {}",
        per_system(&|m| m.records_per_s / 1e6, &one(LONG, Shape::new(1, 1), 100), 1)
    );
    println!(
        "- CPU ns per record (producer + consumer), 8 B records, 1x1, 100 ms: {}",
        per_system(&|m| m.cpu_ns_per_record, &one(LONG, Shape::new(1, 1), 100), 1)
    );
    println!(
        "- CPU cores busy (producer + consumer, of 2), median over cases: {} (below 2: a side waited, or the \
         shared machine gave it less)",
        per_system(&|m| m.cpu_cores, &|_| true, 2)
    );
}

/// Flat JSON records, one per figure.
pub(crate) fn json_records(plan: &Plan, results: &[CaseResult], limits: &[Limit]) -> String {
    // `extra`: fields after the configuration (shmflow's segment size).
    let record = |system: &str, case: Option<Case>, size: usize, extra: &str, metric: &str, value: f64| {
        let v = if value.is_finite() { format!("{value:.4}") } else { "null".into() };
        let (shape_fields, timeout) = match case {
            Some(c) => (
                format!(
                    "\"shape\":\"{}\",\"pattern\":\"{}\",\"writers\":{},\"channels\":{}",
                    c.shape_name(),
                    c.shape.pattern.name(),
                    c.shape.writers,
                    c.shape.channels
                ),
                c.timeout_ms.to_string(),
            ),
            None => ("\"shape\":\"single-thread\"".into(), "null".into()),
        };
        format!(
            "  {{\"bench\":\"throughput\",\"run\":\"{}\",\"system\":\"{system}\",{shape_fields},\
             \"timeout_ms\":{timeout},\"record_bytes\":{size}{extra},\"metric\":\"{metric}\",\"value\":{v}}}",
            plan.run_kind()
        )
    };
    let mut out = Vec::new();
    for r in results {
        let (case, size) = (Some(r.case), r.case.size);
        for s in System::STREAMS {
            let extra =
                if s == System::Shmflow { format!(",\"segment_bytes\":{}", r.case.segment) } else { String::new() };
            if let Some(m) = r.median(s) {
                out.push(record(s.name(), case, size, &extra, "records_per_s", m.records_per_s));
                out.push(record(s.name(), case, size, &extra, "gb_per_s", m.gb_per_s));
                out.push(record(s.name(), case, size, &extra, "cpu_ns_per_record", m.cpu_ns_per_record));
                out.push(record(s.name(), case, size, &extra, "cpu_cores", m.cpu_cores));
                if r.case.shape.pattern == Pattern::Broadcast {
                    out.push(record(s.name(), case, size, &extra, "deliveries_per_s", m.deliveries_per_s));
                }
            }
        }
        let shm = r.median(System::Shmflow);
        let others = PEERS
            .iter()
            .map(|&p| (p, r.median(p)))
            .chain([System::Memcpy, System::Memread, System::Handoff].map(|l| (l, limit_of(limits, size, l))));
        for (other, rate) in others {
            if rate.is_some() {
                let name = format!("shmflow/{}", other.name());
                out.push(record(&name, case, size, "", "records_per_s_ratio", ratio(shm, rate)));
            }
        }
        let rtt = median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN);
        out.push(record("bare-atomic", case, size, "", "rtt_ns", rtt));
    }
    for l in limits {
        for (system, rate) in [(System::Memcpy, l.memcpy), (System::Memread, l.memread), (System::Handoff, l.handoff)] {
            if let Some(m) = rate {
                out.push(record(system.name(), None, l.size, "", "records_per_s", m.records_per_s));
                out.push(record(system.name(), None, l.size, "", "gb_per_s", m.gb_per_s));
                out.push(record(system.name(), None, l.size, "", "cpu_ns_per_record", m.cpu_ns_per_record));
            }
        }
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
