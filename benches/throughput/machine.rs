//! CPUs and the machine (a module of the throughput bench).

use super::*;

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn print_machine(plan: &Plan, cpus: Option<(usize, usize)>) {
    println!("# throughput: records from W writers over C channels each, producer and consumer processes\n");
    // SAFETY: sysconf has no preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    println!("- machine: {}, nproc {nproc}", cpu_model());
    match cpus {
        Some((a, b)) => println!("- consumer pinned to CPU {a}, producer process (all its writer threads) to CPU {b}"),
        None => println!("- not pinned"),
    }
    println!("- load average at start: {} (the machine is shared: compare ratios within a row)", load_average());
    println!(
        "- run {}: {} case(s), {} round(s); per run at least {:?} warm-up (and 2 buffer timeouts), then a window \
         of at least {:?} (and 5 buffer timeouts) measured at the consumer",
        plan.run_kind(),
        plan.cases.len(),
        plan.rounds,
        plan.warm,
        plan.window
    );
    println!(
        "- shmflow: {} KiB segments (one case also {} MiB), Flink's defaults (2 exclusive credits per channel, 8 \
         floating per writer's gate, pool max 2C+8), adaptive waits; tcp, unix, pipe: a {} KiB buffer per channel \
         sent as a frame under the same credits (2 per channel, 8 floating per connection, {} queued per channel \
         at most), {} KiB send buffer, {} KiB reads; in-process: the same buffers through a crossbeam channel of \
         2C+8 per writer\n",
        SEGMENT / 1024,
        LARGE_SEGMENT >> 20,
        SEGMENT / 1024,
        MAX_QUEUED,
        GATHER / 1024,
        READ_BUF / 1024
    );
}
