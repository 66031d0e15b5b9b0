//! The requester: runs every case, prints the tables (a module of the latency bench).

use super::*;

/// One case's samples: merged over rounds, and the p50 of each round.
pub(crate) struct CaseResult {
    pub(crate) case: Case,
    pub(crate) merged: Histogram<u64>,
    pub(crate) round_p50: Vec<u64>,
    /// Per round, the RTT p50 of the case's limit ([`Peer::limit`]) measured just before
    /// and just after it (empty for the limits and the kernel peers).
    pub(crate) paired: Vec<(u64, u64)>,
}

pub(crate) fn requester_main() -> Res<()> {
    let args = parse_args()?;
    let rounds = args.rounds.unwrap_or(if args.full { 4 } else { 1 });
    let plan = Plan { full: args.full, rounds, sizes: args.sizes.clone() };
    let cpus = if args.pin { cpu_pair() } else { None };
    if let Some((mine, _)) = cpus {
        pin_to(mine)?;
    }
    print_machine(&plan, cpus);
    let mut results = Vec::new();
    for case in cases(&plan.sizes, &args.peers) {
        results.push(CaseResult { case, merged: new_histogram()?, round_p50: Vec::new(), paired: Vec::new() });
    }
    let start = Instant::now();
    for round in 0..plan.rounds {
        for r in results.iter_mut() {
            let at = |e| format!("{} at {} (round {}): {e}", r.case.peer.name(), size_label(r.case.payload), round + 1);
            // The limit beside the case: the vCPUs move between placements within minutes,
            // so a ratio is only honest against a limit measured under the same one.
            let limit = |peer: Peer| -> Res<u64> {
                let h = run_case(Case { peer, payload: 0 }, plan.paired_counts(r.case), cpus.map(|c| c.1))?;
                Ok(h.value_at_quantile(0.5))
            };
            let before = r.case.peer.limit().map(limit).transpose().map_err(at)?;
            let h = run_case(r.case, plan.counts(r.case), cpus.map(|c| c.1)).map_err(at)?;
            let after = r.case.peer.limit().map(limit).transpose().map_err(at)?;
            if let (Some(b), Some(a)) = (before, after) {
                r.paired.push((b, a));
            }
            r.round_p50.push(h.value_at_quantile(0.5));
            r.merged.add(&h).map_err(|e| format!("merging histograms: {e:?}"))?;
        }
        println!("- round {}/{} done, {:.1} s in all", round + 1, plan.rounds, start.elapsed().as_secs_f64());
    }
    println!();
    print_table(&results);
    let ratios = ratios(&results, &plan.sizes);
    print_ratios(&results, &ratios);
    let paired = paired_ratios(&results);
    print_paired(&paired);
    print_limit_sides(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, json_records(&plan, &results, &ratios, &paired))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

pub(crate) fn new_histogram() -> Res<Histogram<u64>> {
    // 1 ns .. 60 s at 3 significant digits; larger values saturate.
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

/// Starts a responder for `case`, measures, and checks that the responder exits cleanly.
pub(crate) fn run_case(case: Case, counts: Counts, responder_cpu: Option<usize>) -> Res<Histogram<u64>> {
    let mut session = start(case, counts.warmup + counts.measured, responder_cpu)?;
    // On an error the session drops: the requester's ends close, then the guard kills the
    // responder.
    let hist = measure(session.requester.as_mut(), case.payload, counts)?;
    let Session { requester, mut child } = session;
    drop(requester);
    child.finish(WAIT_TIMEOUT)?;
    Ok(hist)
}

/// Runs `warmup + measured` round trips with sequence numbers from 1 and records the
/// measured ones. Each request and the answer it must get are prepared before the clock
/// starts; reading and checking the answer is part of the round trip.
pub(crate) fn measure(req: &mut dyn Requester, payload: usize, counts: Counts) -> Res<Histogram<u64>> {
    let mut hist = new_histogram()?;
    let mut msg: Vec<u8> = (0..payload).map(|i| (i as u8) ^ 0x5a).collect();
    let mut want = msg.clone();
    for seq in 1..=counts.warmup + counts.measured {
        if payload > 0 {
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            want[..8].copy_from_slice(&seq.to_le_bytes());
            want[payload - 8..].copy_from_slice(&checksum(&msg).to_le_bytes());
        }
        let t0 = Instant::now();
        req.round_trip(seq, &msg, &want)?;
        let rtt = t0.elapsed();
        if seq > counts.warmup {
            hist.saturating_record(rtt.as_nanos().min(u128::from(u64::MAX)) as u64);
        }
    }
    Ok(hist)
}
