//! The consumer: runs every case, prints the table (a module of the throughput bench).

use super::*;

/// Rates of one system in one case, one per round.
pub(crate) struct CaseResult {
    pub(crate) case: Case,
    pub(crate) rates: Vec<(System, Vec<Rate>)>,
    pub(crate) bare_rtt_ns: Vec<f64>,
}

impl CaseResult {
    pub(crate) fn median(&self, system: System) -> Option<Rate> {
        let rates = &self.rates.iter().find(|(s, _)| *s == system)?.1;
        median_rate(rates)
    }
}

pub(crate) fn median_rate(rates: &[Rate]) -> Option<Rate> {
    let m = |f: fn(&Rate) -> f64| median(rates.iter().map(f).collect()).unwrap_or(f64::NAN);
    if rates.is_empty() {
        return None;
    }
    Some(Rate {
        records_per_s: m(|r| r.records_per_s),
        deliveries_per_s: m(|r| r.deliveries_per_s),
        gb_per_s: m(|r| r.gb_per_s),
        cpu_ns_per_record: m(|r| r.cpu_ns_per_record),
        cpu_cores: m(|r| r.cpu_cores),
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

pub(crate) fn consumer_main() -> Res<()> {
    let args = parse_args()?;
    let plan = Plan::new(&args);
    self_check(&plan.sizes)?;
    for &c in &plan.cases {
        arena_config(c)?;
    }
    let cpus = if args.pin { cpu_pair() } else { None };
    if let Some((mine, _)) = cpus {
        pin_to(mine)?;
    }
    print_machine(&plan, cpus);
    let mut results: Vec<CaseResult> = plan
        .cases
        .iter()
        .map(|&case| CaseResult {
            case,
            rates: System::STREAMS
                .iter()
                .filter(|&&s| plan.systems.contains(&s) && case.runs(s))
                .map(|&s| (s, Vec::new()))
                .collect(),
            bare_rtt_ns: Vec::new(),
        })
        .collect();
    // A case none of the selected systems runs (a `--system` filter) is left out.
    results.retain(|r| !r.rates.is_empty());
    // Per record size: memcpy's, memread's and (above a segment) the hand-off's rates, one
    // per round.
    let mut limits: Vec<(usize, [Vec<Rate>; 3])> = plan.sizes.iter().map(|&s| (s, Default::default())).collect();
    let mut region = Vec::new();
    let started = Instant::now();
    for round in 0..plan.rounds {
        for (size, [copy, read, handoff]) in limits.iter_mut() {
            if plan.systems.contains(&System::Memcpy) {
                copy.push(run_memcpy(*size, &plan)?);
            }
            if plan.systems.contains(&System::Memread) {
                read.push(run_memread(*size, &plan, &mut region)?);
            }
            if plan.systems.contains(&System::Handoff) && *size > SEGMENT {
                handoff.push(best_handoff(*size, &plan, cpus)?);
            }
        }
        region = Vec::new();
        for r in results.iter_mut() {
            r.bare_rtt_ns.push(bare_rtt_ns(cpus)?);
            for (system, rates) in r.rates.iter_mut() {
                let what = || format!("{} {} (round {})", system.name(), describe(r.case), round + 1);
                let rate = run_stream(*system, r.case, &plan, cpus).map_err(|e| format!("{}: {e}", what()))?;
                rates.push(rate);
            }
            if plan.full {
                eprintln!("  done: {} after {:.0?} (round {})", describe(r.case), started.elapsed(), round + 1);
            }
        }
    }
    let limits: Vec<Limit> = limits
        .into_iter()
        .map(|(size, [copy, read, handoff])| Limit {
            size,
            memcpy: median_rate(&copy),
            memread: median_rate(&read),
            handoff: median_rate(&handoff),
        })
        .collect();
    println!("- load average at the end: {}; {:.0?} in all\n", load_average(), started.elapsed());
    print_table(&plan, &results, &limits);
    print_summary(&results, &limits);
    if let Some(path) = &args.json {
        std::fs::write(path, json_records(&plan, &results, &limits))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

pub(crate) fn describe(case: Case) -> String {
    format!("{} {} timeout {} ms", size_name(case.size), case.shape_name(), case.timeout_ms)
}

pub(crate) fn run_stream(system: System, case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    match system {
        System::Shmflow => run_shmflow(case, plan, cpus),
        s if s.is_stream_peer() => run_socket(system, case, plan, cpus),
        System::InProcess => run_in_process(case, plan, cpus),
        s => Err(format!("{} is not a stream", s.name()).into()),
    }
}

/// The arena of one shmflow run: the case's segments (32 KiB unless tuned), enough for
/// every writer's pool quota (Flink's 2 exclusive credits per channel + 8 floating: 2C + 8
/// segments per writer) and about 2 MiB more (at least 8 segments), channel blocks for all
/// W x C channels and one gate that reads them all.
pub(crate) fn arena_config(case: Case) -> Res<ArenaConfig> {
    let shape = case.shape;
    let Shape { writers, channels, .. } = shape;
    let quota = u64::from(writers) * (u64::from(channels) * 2 + u64::from(FLOATING_PER_WRITER));
    let segments = quota + ((2 << 20) / case.segment as u64).max(8);
    let all = writers * channels;
    let cfg = ArenaConfig {
        segment_size: case.segment as u32,
        segment_count: segments as u32,
        max_channels: all.max(1024).next_multiple_of(64),
        max_channels_per_gate: all.max(1024).next_multiple_of(64),
        max_partitions: writers.max(256),
        max_gates: (writers + 8).max(256),
        // A channel's rings hold its whole credit: 2 exclusive + the gate's floating ones.
        ring_capacity: (2 + FLOATING_PER_WRITER * writers + 1).next_power_of_two().max(64),
        ..ArenaConfig::default()
    };
    let bytes = segments * case.segment as u64;
    if bytes > ARENA_LIMIT {
        return Err(format!(
            "shape {} needs {} MiB of segments (2 per channel + 8 per writer), above the {} MiB this bench allows",
            case.shape_name(),
            bytes >> 20,
            ARENA_LIMIT >> 20
        )
        .into());
    }
    Ok(cfg)
}

pub(crate) fn run_shmflow(case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let arena = Arc::new(Arena::create_memfd(&arena_config(case)?, "throughput")?);
    // Every page mapped before the run (see the module docs: the first touch of a page
    // is a fault, which the socket peers, reusing their buffers, never pay twice).
    arena.prefault()?;
    let mut cmd = producer_command(System::Shmflow, case, cpus.map(|c| c.1))?;
    arena.inherit_fd_into(&mut cmd)?;
    let mut producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
    producer.expect_line("ready")?;
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let Shape { writers, channels, .. } = case.shape;
    let inputs = (0..writers)
        .flat_map(|w| {
            (0..channels)
                .map(move |c| InputSpec { partition: ResultPartitionId::new(u64::from(w), 0), subpartition: c })
        })
        .collect();
    // Flink's receiver here is a union of W gates with 8 floating buffers each; this one
    // gate over all channels gets the same total.
    let mut gate_cfg = InputGateConfig::new(inputs);
    gate_cfg.floating_credits = FLOATING_PER_WRITER * writers;
    if let Some(policy) = consumer_wait()? {
        gate_cfg.wait_policy = policy;
    }
    let mut gate = env.create_input_gate(&gate_cfg)?;
    // Records that span segments (1 MiB over 32 KiB) are read as a deserializer that
    // consumes a byte stream reads them: piece by piece in place, as their segments arrive,
    // each segment released once its piece is checksummed (nothing copied, nothing held).
    gate.set_spans_streamed(true);
    let mut tally = Tally::default();
    let mut next = vec![0u64; (writers * channels) as usize];
    // The writer of each channel (a look-up: a division per record cost 40% of the 8 B
    // case's callback).
    let writer_of: Vec<u32> = (0..writers * channels).map(|c| c / channels).collect();
    let mut pieces = vec![PieceSum::default(); (writers * channels) as usize];
    let every = check_every(case.size);
    let mut until_check = every;
    let mut idle_since: Option<Instant> = None;
    // Batches taken by the batch path, records handed out one by one, waits that timed out.
    let (mut batches, mut singles, mut timeouts) = (0u64, 0u64, 0u64);
    let mut in_window = Vec::new();
    producer.send("go")?;
    let mut window = Window::new(plan.timing(case), process_cpu_ns, Some(producer.guard.child.id()));
    // Batches of at least 1024 records timed (SHMFLOW_TPUT_VERBOSE, see `ChunkTimes`).
    let timed = std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some();
    let mut chunks = ChunkTimes::default();
    loop {
        let t0 = timed.then(Instant::now);
        // The batch path: every whole record already published on the channel being
        // served, in one go (one load of the writer's position for the lot), the loop
        // over them here (`Tally::add_batch`).
        let drained = gate.drain_batch(4096, &mut |channel, records| {
            let c = channel as usize;
            tally.add_batch(records, case.size, &mut next[c], writer_of[c]);
            Ok(())
        })?;
        if let (Some(t0), true) = (t0, drained >= 1024) {
            chunks.push(t0.elapsed(), drained as u64);
        }
        if drained > 0 {
            batches += 1;
            until_check = until_check.saturating_sub(drained as u64);
            if until_check == 0 {
                until_check = every;
                idle_since = None;
                let t = window.tick(tally.records);
                if matches!(t, Tick::Opened | Tick::Closed) {
                    in_window.push((batches, singles, tally.records));
                }
                on_tick(t, &mut producer)?;
            }
            continue;
        }
        match gate.next_piece(Some(POLL_SLICE)) {
            Ok(GatePiece::Record { channel, piece }) => {
                let c = channel as usize;
                singles += 1;
                tally.add_piece(piece, case.size, &mut next[c], writer_of[c], &mut pieces[c]);
                until_check -= 1;
                if until_check == 0 {
                    until_check = every;
                    idle_since = None;
                    let t = window.tick(tally.records);
                    if matches!(t, Tick::Opened | Tick::Closed) {
                        in_window.push((batches, singles, tally.records));
                    }
                    on_tick(t, &mut producer)?;
                }
            }
            Ok(GatePiece::Item(GateItem::End)) => break,
            Ok(GatePiece::Item(other)) => return Err(format!("unexpected {other:?}").into()),
            Err(shmflow::Error::Timeout(..)) => {
                timeouts += 1;
                producer.check_alive()?;
                if idle_since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT {
                    return Err(format!("no record within {WAIT_TIMEOUT:?}").into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let counts = producer.finish(writers)?;
    tally.verify(case, &counts)?;
    let (copied, _) = gate.spanned_records();
    if copied > 0 {
        return Err(format!("{copied} records were reassembled although the gate streams spans").into());
    }
    if verbose(System::Shmflow, &tally) {
        eprintln!("    {batches} batches, {singles} single records, {timeouts} waits timed out");
        eprintln!("    consumer, batches of >= 1024 records: {}", chunks.describe());
        if let [(b0, s0, r0), (b1, s1, r1)] = in_window[..] {
            eprintln!("    in the window: {} batches, {} single records, {} records", b1 - b0, s1 - s0, r1 - r0);
        }
        if let Some((own, peer)) = window.split_ns_per_record() {
            eprintln!("    CPU ns per record read in the window: consumer {own:.2}, producer {peer:.2}");
        }
    }
    window.rate(case)
}

/// The consumer gate's wait policy from `SHMFLOW_TPUT_CONSUMER_WAIT` (`adaptive`, the
/// default; `park`; `spin`), for runs that look at what the consumer's waiting costs the
/// producer (see the module doc of the bench).
fn consumer_wait() -> Res<Option<shmflow::sync::WaitPolicy>> {
    use shmflow::sync::WaitPolicy;
    match std::env::var("SHMFLOW_TPUT_CONSUMER_WAIT").as_deref() {
        Err(_) | Ok("adaptive") => Ok(None),
        Ok("park") => Ok(Some(WaitPolicy::park())),
        Ok("spin") => Ok(Some(WaitPolicy::spin())),
        Ok(other) => Err(format!("SHMFLOW_TPUT_CONSUMER_WAIT={other:?}: expected adaptive, park or spin").into()),
    }
}
