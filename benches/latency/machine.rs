//! CPUs and the machine (a module of the latency bench).

use super::*;

/// Online CPUs of the machine (not of this process's affinity mask, which pinning narrows).
pub(crate) fn nproc() -> i64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// The cost of the two clock reads around each round trip (included in every figure).
pub(crate) fn timer_overhead_ns() -> u64 {
    let mut best = u64::MAX;
    for _ in 0..10_000 {
        let t0 = Instant::now();
        let d = t0.elapsed().as_nanos() as u64;
        best = best.min(d);
    }
    best
}

pub(crate) fn print_machine(plan: &Plan, cpus: Option<(usize, usize)>) {
    let sizes: Vec<String> = plan.sizes.iter().map(|&s| size_label(s)).collect();
    println!("# latency: one record ({}), sent and echoed between two processes\n", sizes.join(", "));
    println!("- machine: {}, nproc {}", cpu_model(), nproc());
    match cpus {
        Some((a, b)) => println!("- requester pinned to CPU {a}, responders to CPU {b}"),
        None => println!("- not pinned"),
    }
    println!("- run {}: {} round(s); measured samples per case and round:", plan.run(), plan.rounds);
    let describe = |peer: Peer, payload: usize| {
        let c = plan.counts(Case { peer, payload });
        format!("{} + {} warm-up", c.measured, c.warmup)
    };
    println!("  - no payload (bare-atomic, futex): {}", describe(Peer::Bare, 0));
    for &payload in &plan.sizes {
        println!(
            "  - {}: spinning peers {}, parking peers {}",
            size_label(payload),
            describe(Peer::ShmSpin, payload),
            describe(Peer::ShmPark, payload)
        );
    }
    println!("- timer overhead (Instant::now pair, min): {} ns, included in every RTT\n", timer_overhead_ns());
}
