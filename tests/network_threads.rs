//! The network stack between threads of one process: partitions, record writers, gates,
//! spanning records, broadcast, barriers. (Across processes: `tests/network_processes.rs`.)

use shmflow::event::{CheckpointBarrier, Event};
use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BroadcastPartitioner, BufferTimeout, RebalancePartitioner, RequestBackoff, ResultPartitionConfig,
    ResultPartitionId, ResultPartitionType,
};
use shmflow::ShuffleEnvironment;
use std::sync::Arc;
use std::time::Duration;

const T: Option<Duration> = Some(Duration::from_secs(30));

fn arena() -> Arc<Arena> {
    let cfg = ArenaConfig {
        segment_size: 4096,
        segment_count: 256,
        max_channels: 64,
        max_gates: 16,
        ..ArenaConfig::default()
    };
    Arc::new(Arena::heap(&cfg).unwrap())
}

fn gate_cfg(producers: u32, sub: u32) -> InputGateConfig {
    let mut g = InputGateConfig::new(
        (0..producers)
            .map(|p| InputSpec { partition: ResultPartitionId::new(p as u64, 0), subpartition: sub })
            .collect(),
    );
    g.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(2) };
    g
}

fn payload(p: u32, i: u64) -> Vec<u8> {
    // Mostly small, sometimes spanning several segments.
    let len = if i % 97 == 0 { 9000 + (i % 5) as usize * 1000 } else { 12 + (i % 40) as usize };
    let mut v = vec![(i as u8) ^ (p as u8); len];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v[8..12].copy_from_slice(&p.to_le_bytes());
    v
}

/// Producer `p` on its own thread: a partition of `subs` subpartitions written round-robin
/// with `timeout`, records `payload(p, 0..n)`, then finished and released once consumed.
fn spawn_producer(
    arena: &Arc<Arena>,
    p: u32,
    subs: u32,
    timeout: BufferTimeout,
    n: u64,
) -> std::thread::JoinHandle<shmflow::partition::PartitionStats> {
    let a = arena.clone();
    std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, p);
        let mut cfg = ResultPartitionConfig::new(
            ResultPartitionId::new(p as u64, 0),
            ResultPartitionType::PipelinedBounded,
            subs,
        );
        cfg.timeout = T;
        let mut w = env.create_record_writer::<[u8], _>(&cfg, RebalancePartitioner::new(p as u64), timeout).unwrap();
        for i in 0..n {
            w.emit(&payload(p, i)[..]).unwrap();
        }
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        part.stats()
    })
}

#[test]
fn rebalance_two_producers_three_consumers_exactly_once_in_order() {
    let arena = arena();
    let n = 20_000u64;
    let timeout = BufferTimeout::from_millis(1).unwrap();
    let producers: Vec<_> = (0..2u32).map(|p| spawn_producer(&arena, p, 3, timeout, n)).collect();
    let mut consumers = Vec::new();
    for c in 0..3u32 {
        let a = arena.clone();
        consumers.push(std::thread::spawn(move || {
            let env = ShuffleEnvironment::new(a, 10 + c);
            let mut gate = env.create_input_gate(&gate_cfg(2, c)).unwrap();
            let mut last = [None::<u64>; 2];
            let mut count = 0u64;
            loop {
                match gate.next(T).unwrap() {
                    GateItem::Record { channel, data } => {
                        let i = u64::from_le_bytes(data[..8].try_into().unwrap());
                        let p = u32::from_le_bytes(data[8..12].try_into().unwrap());
                        assert_eq!(p, channel, "producer id matches the channel");
                        assert_eq!(data, &payload(p, i)[..]);
                        if let Some(prev) = last[p as usize] {
                            assert!(i > prev, "order per channel: {i} after {prev}");
                        }
                        last[p as usize] = Some(i);
                        count += 1;
                    }
                    GateItem::End => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            count
        }));
    }
    let total: u64 = consumers.into_iter().map(|h| h.join().unwrap()).sum();
    let stats: Vec<_> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(total, 2 * n);
    assert!(stats.iter().all(|s| s.spanning_records > 0));
    assert_eq!(arena.header_atomics().free_stack.len(), 256, "every segment is back");
}

#[test]
fn broadcast_is_one_copy_read_by_every_consumer() {
    let arena = arena();
    let n = 10_000u64;
    let a = arena.clone();
    let producer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 0);
        let mut cfg =
            ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::PipelinedBounded, 3);
        cfg.timeout = T;
        let mut w =
            env.create_record_writer::<[u8], _>(&cfg, BroadcastPartitioner, BufferTimeout::FullSegmentsOnly).unwrap();
        let mut bytes = 0u64;
        for i in 0..n {
            let p = payload(0, i);
            bytes += p.len() as u64 + 4;
            w.emit(&p[..]).unwrap();
        }
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        (part.stats(), bytes)
    });
    let mut consumers = Vec::new();
    for c in 0..3u32 {
        let a = arena.clone();
        consumers.push(std::thread::spawn(move || {
            let env = ShuffleEnvironment::new(a, 10 + c);
            let mut gate = env.create_input_gate(&gate_cfg(1, c)).unwrap();
            let mut next = 0u64;
            loop {
                match gate.next(T).unwrap() {
                    GateItem::Record { data, .. } => {
                        assert_eq!(data, &payload(0, next)[..]);
                        next += 1;
                    }
                    GateItem::End => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            next
        }));
    }
    for h in consumers {
        assert_eq!(h.join().unwrap(), n);
    }
    let (stats, bytes) = producer.join().unwrap();
    // One copy: the segments used are about bytes / segment size, not three times that.
    assert!(stats.segments_out <= bytes / 4096 + 2, "{} segments for {bytes} bytes", stats.segments_out);
    assert_eq!(arena.header_atomics().free_stack.len(), 256);
}

fn barrier(id: u64, unaligned: bool) -> Event {
    Event::CheckpointBarrier(CheckpointBarrier { checkpoint_id: id, timestamp: id * 10, unaligned })
}

#[test]
fn aligned_barrier_blocks_channels_until_all_arrive() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut parts = Vec::new();
    for p in 0..2u64 {
        let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(p, 0), ResultPartitionType::Pipelined, 1);
        cfg.timeout = T;
        parts.push(env.create_result_partition(&cfg).unwrap());
    }
    let mut gate = env.create_input_gate(&gate_cfg(2, 0)).unwrap();
    // Producer 0: a, barrier 1, b.  Producer 1: x, y, barrier 1, z.
    parts[0].emit(&b"a"[..], 0).unwrap();
    parts[0].broadcast_event(&barrier(1, false)).unwrap();
    parts[0].emit(&b"b"[..], 0).unwrap();
    parts[0].flush_all().unwrap();
    parts[1].emit(&b"x"[..], 0).unwrap();
    parts[1].emit(&b"y"[..], 0).unwrap();
    parts[1].flush_all().unwrap();
    let mut seen = Vec::new();
    while let Some(item) = gate.poll_next().unwrap() {
        match item {
            GateItem::Record { data, .. } => seen.push(String::from_utf8(data.to_vec()).unwrap()),
            other => seen.push(format!("{other:?}")),
        }
    }
    // Channel 0 is blocked after its barrier: "b" must not come out yet.
    seen.sort();
    assert_eq!(seen, vec!["a", "x", "y"]);
    parts[1].broadcast_event(&barrier(1, false)).unwrap();
    parts[1].emit(&b"z"[..], 0).unwrap();
    parts[1].flush_all().unwrap();
    let mut after = Vec::new();
    while let Some(item) = gate.poll_next().unwrap() {
        match item {
            GateItem::Record { data, .. } => after.push(String::from_utf8(data.to_vec()).unwrap()),
            GateItem::Barrier(b) => after.push(format!("barrier {}", b.checkpoint_id)),
            other => after.push(format!("{other:?}")),
        }
    }
    assert_eq!(after[0], "barrier 1", "the barrier comes out once aligned, before later data: {after:?}");
    let mut rest = after[1..].to_vec();
    rest.sort();
    assert_eq!(rest, vec!["b", "z"]);
    for p in &mut parts {
        p.finish().unwrap();
    }
    assert!(matches!(gate.next(T).unwrap(), GateItem::End));
}

#[test]
fn unaligned_barrier_overtakes_queued_data_and_reports_it() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::Pipelined, 1);
    cfg.timeout = T;
    let mut part = env.create_result_partition(&cfg).unwrap();
    let mut gate = env.create_input_gate(&gate_cfg(1, 0)).unwrap();
    for i in 0..10u64 {
        part.emit(&i, 0).unwrap();
    }
    part.flush_all().unwrap();
    part.broadcast_event(&barrier(7, true)).unwrap();
    match gate.next(T).unwrap() {
        GateItem::UnalignedBarrier { barrier, overtaken, .. } => {
            assert_eq!(barrier.checkpoint_id, 7);
            let bytes: u32 = overtaken.iter().map(|o| o.to - o.from).sum();
            assert_eq!(bytes, 10 * 12, "ten 8-byte records with 4-byte prefixes overtaken");
        }
        other => panic!("expected the unaligned barrier first, got {other:?}"),
    }
    for i in 0..10u64 {
        match gate.next(T).unwrap() {
            GateItem::Record { data, .. } => assert_eq!(data, &i.to_le_bytes()[..]),
            other => panic!("expected record {i}, got {other:?}"),
        }
    }
    part.finish().unwrap();
    assert!(matches!(gate.next(T).unwrap(), GateItem::End));
}

#[test]
fn user_events_and_end_of_data_reach_the_gate() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::Pipelined, 1);
    cfg.timeout = T;
    let mut part = env.create_result_partition(&cfg).unwrap();
    let mut gate = env.create_input_gate(&gate_cfg(1, 0)).unwrap();
    part.emit("hello", 0).unwrap();
    part.broadcast_event(&Event::User(b"tick".to_vec())).unwrap();
    part.broadcast_event(&Event::EndOfData).unwrap();
    part.finish().unwrap();
    assert!(matches!(gate.next(T).unwrap(), GateItem::Record { data, .. } if data == b"hello"));
    assert!(matches!(gate.next(T).unwrap(), GateItem::Event { event: Event::User(ref b), .. } if b == b"tick"));
    assert!(matches!(gate.next(T).unwrap(), GateItem::EndOfData));
    assert!(matches!(gate.next(T).unwrap(), GateItem::End));
}

#[test]
fn blocking_partition_types_are_refused_clearly() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena, 0);
    let cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::Blocking, 1);
    let err = env.create_result_partition(&cfg).unwrap_err().to_string();
    assert!(err.contains("not supported yet"), "{err}");
}

#[test]
fn missing_partition_is_not_found_after_backoff_and_released_says_released() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut g = gate_cfg(1, 0);
    g.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_millis(8) };
    let err = env.create_input_gate(&g).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::Pipelined, 1);
    cfg.timeout = T;
    let mut part = env.create_result_partition(&cfg).unwrap();
    part.finish().unwrap();
    {
        let mut gate = env.create_input_gate(&g).unwrap();
        assert!(matches!(gate.next(T).unwrap(), GateItem::End));
    }
    part.release_when_consumed(T).unwrap();
    let err = env.create_input_gate(&g).unwrap_err().to_string();
    assert!(err.contains("released"), "{err}");
}

#[test]
fn metrics_in_the_arena_show_a_slow_consumer() {
    use shmflow::metrics::{channel_snapshot, in_pool_usage, out_pool_usage, task_snapshot, TaskMetricsHandle};
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::PipelinedBounded, 1);
    cfg.timeout = T;
    let mut part = env.create_result_partition(&cfg).unwrap();
    let task = TaskMetricsHandle::claim(arena.clone(), 0).unwrap();
    part.set_task_metrics(task.clone());
    let slot = part.info().slot;
    let first = part.info().first_channel;
    let a = arena.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let consumer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a.clone(), 1);
        let mut gate = env.create_input_gate(&gate_cfg(1, 0)).unwrap();
        go_rx.recv().unwrap(); // stay away until the producer is surely blocked
        let mut n = 0u64;
        while let GateItem::Record { .. } = gate.next(T).unwrap() {
            n += 1;
        }
        n
    });
    // Fill credit (2 exclusive + floating) and block: a helper thread lets the consumer go
    // once the producer's in-flight count stops growing.
    let a2 = arena.clone();
    let watcher = std::thread::spawn(move || {
        let mut last = 0;
        let mut stable = 0;
        for _ in 0..20_000 {
            let s = channel_snapshot(&a2, first).unwrap();
            if s.backlog == last && s.backlog > 0 {
                stable += 1;
            } else {
                stable = 0;
            }
            last = s.backlog;
            if stable > 200 {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let usage = (out_pool_usage(&a2, slot).unwrap(), in_pool_usage(&a2, 1).unwrap_or(0.0), last);
        go_tx.send(()).unwrap();
        usage
    });
    let rec = vec![7u8; 1000];
    for _ in 0..2000 {
        part.emit(&rec[..], 0).unwrap();
    }
    part.finish().unwrap();
    let (out_usage, _in_usage, backlog) = watcher.join().unwrap();
    assert_eq!(consumer.join().unwrap(), 2000);
    part.release_when_consumed(T).unwrap();
    assert!((2..=10).contains(&backlog), "in flight {backlog} within credit while blocked");
    assert!(out_usage > 0.0, "the producer pool shows usage while blocked");
    let snap = task_snapshot(&arena, task.slot()).unwrap();
    assert!(snap.back_pressured_ns > 0, "back-pressured time is counted in the arena");
    assert_eq!(snap.records_out, 2000);
    let ch = channel_snapshot(&arena, first).unwrap();
    assert_eq!(ch.records_in, 2000);
    assert!(ch.buffers_in > 0 && ch.buffers_in == ch.buffers_out);
}

#[test]
fn debloating_makes_segments_smaller_under_backpressure() {
    use shmflow::gate::DebloatConfig;
    let arena = arena();
    let a = arena.clone();
    let n = 4000u64;
    let consumer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 1);
        let mut cfg = gate_cfg(1, 0);
        // A tiny target, so that the slow consumer's throughput x target is well below the
        // credit window of whole 4 KiB segments.
        cfg.debloat = Some(DebloatConfig {
            target: Duration::from_millis(1),
            period: Duration::from_millis(20),
            ..DebloatConfig::default()
        });
        let mut gate = env.create_input_gate(&cfg).unwrap();
        let (mut got, mut asked) = (0u64, 0u32);
        loop {
            match gate.next(T).unwrap() {
                GateItem::Record { data, .. } => {
                    assert_eq!(data.len(), 500);
                    got += 1;
                    // A slow operator: ~20 µs of work per record.
                    let until = std::time::Instant::now() + Duration::from_micros(20);
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    if gate.debloat_bytes() != 0 {
                        asked = gate.debloat_bytes();
                    }
                }
                GateItem::End => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        (got, asked)
    });
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::PipelinedBounded, 1);
    cfg.timeout = T;
    let mut part = env.create_result_partition(&cfg).unwrap();
    let rec = vec![3u8; 500];
    for _ in 0..n {
        part.emit(&rec[..], 0).unwrap();
    }
    part.finish().unwrap();
    let (got, asked) = consumer.join().unwrap();
    part.release_when_consumed(T).unwrap();
    assert_eq!(got, n);
    assert!((shmflow::partition::MIN_DEBLOAT_BYTES..4096).contains(&asked), "the gate asked for {asked}-byte segments");
    // Whole 4 KiB segments would need about n * 504 / 4096 of them; smaller fills need more.
    let whole = n * 504 / 4096;
    assert!(part.stats().segments_out > whole * 5 / 4, "{} segments for {whole} whole ones", part.stats().segments_out);
}

/// Ten claimers racing for runs of channel blocks that fill the arena exactly: every one
/// gets its run (a claimer that finds another's half-claimed run starts over instead of
/// failing with blocks free), the runs never overlap, and all come back.
#[test]
fn racing_channel_claims_fill_the_arena_exactly() {
    use shmflow::partition::ResultPartitionManager;
    const CLAIMERS: u32 = 10;
    const RUN: u32 = 4;
    let cfg =
        ArenaConfig { segment_size: 4096, segment_count: 16, max_channels: CLAIMERS * RUN, ..ArenaConfig::default() };
    let arena = Arc::new(Arena::heap(&cfg).unwrap());
    for round in 0..50 {
        let barrier = Arc::new(std::sync::Barrier::new(CLAIMERS as usize));
        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|_| {
                let (arena, barrier) = (arena.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let m = ResultPartitionManager::new(arena);
                    barrier.wait();
                    m.claim_channels(RUN)
                })
            })
            .collect();
        let mut firsts: Vec<u32> = claimers
            .into_iter()
            .map(|t| t.join().unwrap().unwrap_or_else(|e| panic!("round {round}: a claim failed: {e}")))
            .collect();
        firsts.sort_unstable();
        let expected: Vec<u32> = (0..CLAIMERS).map(|i| i * RUN).collect();
        assert_eq!(firsts, expected, "round {round}: runs overlap or leave gaps");
        let m = ResultPartitionManager::new(arena.clone());
        assert!(m.claim_channels(1).is_err(), "round {round}: a block beyond the full arena");
        for f in firsts {
            m.release_channels(f, RUN);
        }
    }
}

/// Recovery of a quiescent arena hands back channel blocks a dead claimer left mid-scan:
/// afterwards a run over them is claimed at once.
#[test]
fn recovery_frees_blocks_left_mid_scan() {
    use shmflow::memory::{recovery::reclaim_quiescent, CHANNEL_FREE, CHANNEL_PROBING};
    use shmflow::partition::ResultPartitionManager;
    let cfg = ArenaConfig { segment_size: 4096, segment_count: 16, max_channels: 4, ..ArenaConfig::default() };
    let arena = Arc::new(Arena::heap(&cfg).unwrap());
    for b in &arena.channels()[1..3] {
        b.publish_state(CHANNEL_PROBING);
    }
    let r = reclaim_quiescent(&arena).unwrap();
    assert_eq!(r.channel_blocks, 2);
    assert!(arena.channels().iter().all(|b| b.state() == CHANNEL_FREE));
    assert_eq!(ResultPartitionManager::new(arena).claim_channels(4).unwrap(), 0);
}

#[test]
fn waiting_for_a_late_consumer_is_not_back_pressure() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::PipelinedBounded, 1);
    cfg.timeout = T;
    let mut part = env.create_result_partition(&cfg).unwrap();
    let a = arena.clone();
    let consumer = std::thread::spawn(move || {
        // Attach late: the writer waits for its first credit meanwhile.
        std::thread::sleep(Duration::from_millis(150));
        let env = ShuffleEnvironment::new(a, 1);
        let mut gate = env.create_input_gate(&gate_cfg(1, 0)).unwrap();
        let mut n = 0u64;
        while let GateItem::Record { .. } = gate.next(T).unwrap() {
            n += 1;
        }
        n
    });
    // A few records that fit the consumer's credit: once it attached, nothing blocks.
    for i in 0..10u64 {
        part.emit(&i, 0).unwrap();
    }
    part.finish().unwrap();
    assert_eq!(consumer.join().unwrap(), 10);
    let s = part.stats();
    assert!(s.awaiting_consumer_ns >= 100_000_000, "the wait for the consumer was counted: {s:?}");
    assert!(
        s.back_pressured_ns < s.awaiting_consumer_ns / 10,
        "waiting for a consumer to attach is not back-pressure: {s:?}"
    );
    part.release_when_consumed(T).unwrap();
}

/// Partitions (0, 0) and (1, 0), one subpartition each.
fn two_partitions(env: &ShuffleEnvironment) -> Vec<shmflow::partition::ResultPartition> {
    (0..2u64)
        .map(|p| {
            let mut cfg =
                ResultPartitionConfig::new(ResultPartitionId::new(p, 0), ResultPartitionType::PipelinedBounded, 1);
            cfg.timeout = T;
            env.create_result_partition(&cfg).unwrap()
        })
        .collect()
}

/// One gate per partition of [`two_partitions`], for a union.
fn one_gate_per_partition() -> Vec<InputGateConfig> {
    (0..2).map(|p| gate_cfg_of(ResultPartitionId::new(p, 0))).collect()
}

fn gate_cfg_of(partition: ResultPartitionId) -> InputGateConfig {
    let mut g = InputGateConfig::new(vec![InputSpec { partition, subpartition: 0 }]);
    g.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(2) };
    g
}

#[test]
fn union_gate_reads_every_input_and_ends_when_all_end() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut parts = two_partitions(&env);
    let a = arena.clone();
    let consumer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 1);
        let cfgs = one_gate_per_partition();
        let mut union = env.create_union_gate(&cfgs).unwrap();
        let mut sums = [0u64; 2];
        let mut counts = [0u64; 2];
        loop {
            match union.next(T).unwrap() {
                (g, GateItem::Record { data, .. }) => {
                    sums[g] += u64::from_le_bytes(data[..8].try_into().unwrap());
                    counts[g] += 1;
                }
                (_, GateItem::End) => break,
                (_, other) => panic!("unexpected {other:?}"),
            }
        }
        (counts, sums)
    });
    for i in 0..5000u64 {
        parts[(i % 2) as usize].emit(&i, 0).unwrap();
    }
    for p in &mut parts {
        p.finish().unwrap();
    }
    let (counts, sums) = consumer.join().unwrap();
    assert_eq!(counts, [2500, 2500]);
    assert_eq!(sums, [(0..5000u64).step_by(2).sum::<u64>(), (1..5000u64).step_by(2).sum::<u64>()]);
    for p in &mut parts {
        p.release_when_consumed(T).unwrap();
    }
}

#[test]
fn union_gate_with_one_input_ended_and_one_silent_times_out() {
    // One input ends, the other stays open and silent: `next` must wait and time out, not
    // spin on the ended gate forever.
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut parts = two_partitions(&env);
    let cfgs = one_gate_per_partition();
    let env1 = ShuffleEnvironment::new(arena.clone(), 1);
    let mut union = env1.create_union_gate(&cfgs).unwrap();
    parts[0].emit(&7u64, 0).unwrap();
    parts[0].finish().unwrap();
    match union.next(T).unwrap() {
        (0, GateItem::Record { data, .. }) => assert_eq!(data, 7u64.to_le_bytes()),
        (g, other) => panic!("unexpected {other:?} from gate {g}"),
    }
    let err = union.next(Some(Duration::from_millis(200))).unwrap_err();
    assert!(matches!(err, shmflow::Error::Timeout(..)), "{err}");
    // The silent input speaks and ends: the union ends.
    parts[1].emit(&8u64, 0).unwrap();
    parts[1].finish().unwrap();
    match union.next(T).unwrap() {
        (1, GateItem::Record { data, .. }) => assert_eq!(data, 8u64.to_le_bytes()),
        (g, other) => panic!("unexpected {other:?} from gate {g}"),
    }
    assert!(matches!(union.next(T).unwrap(), (_, GateItem::End)));
}

#[test]
fn a_buffer_descriptor_in_the_priority_ring_is_a_protocol_violation() {
    use shmflow::ring::{ChannelWriter, Descriptor};
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut cfg = ResultPartitionConfig::new(ResultPartitionId::new(0, 0), ResultPartitionType::PipelinedBounded, 1);
    cfg.timeout = T;
    let part = env.create_result_partition(&cfg).unwrap();
    let env1 = ShuffleEnvironment::new(arena.clone(), 1);
    let mut gate = env1.create_input_gate(&gate_cfg(1, 0)).unwrap();
    // A faulty producer end of the same channel puts a buffer where only events go.
    let mut rogue = ChannelWriter::open(arena.clone(), part.info().first_channel).unwrap();
    rogue.publish_priority(Descriptor::Buffer(0)).unwrap();
    let err = gate.next(T).unwrap_err();
    assert!(err.to_string().contains("priority ring"), "{err}");
}

/// A gate in spin mode polls the channel that gave its last record in the data while it
/// waits (not only the notify set): two producers flushing every record (some spanning
/// segments, so the polled channel moves on to new segments), one spinning consumer; every
/// record arrives once, intact and in order per channel, the hot channel switches between
/// producers, and every segment comes back.
#[test]
fn spinning_gate_polls_data_exactly_once_in_order() {
    gate_polls_data_exactly_once_in_order(shmflow::sync::WaitPolicy::spin());
}

/// As [`spinning_gate_polls_data_exactly_once_in_order`], for a gate that parks at once
/// (`WaitPolicy::park()`): it polls the hot channel's committed position around each park
/// and, woken, reads the record before it drains the notify set (some of its waits end by
/// that poll, which the notify set alone would not show).
#[test]
fn parking_gate_polls_data_exactly_once_in_order() {
    let ended_by_data = gate_polls_data_exactly_once_in_order(shmflow::sync::WaitPolicy::park());
    assert!(ended_by_data > 0, "the parking gate's data poll ended none of its waits");
}

/// Reads both producers' records through a gate waiting by `policy`; returns how many of
/// the gate's waits its data poll ended.
fn gate_polls_data_exactly_once_in_order(policy: shmflow::sync::WaitPolicy) -> u64 {
    let arena = arena();
    let n = 4_000u64;
    let producers: Vec<_> = (0..2u32).map(|p| spawn_producer(&arena, p, 1, BufferTimeout::EveryRecord, n)).collect();
    let env = ShuffleEnvironment::new(arena.clone(), 10);
    let mut cfg = gate_cfg(2, 0);
    cfg.wait_policy = policy;
    let mut gate = env.create_input_gate(&cfg).unwrap();
    let mut next = [0u64; 2];
    let mut switches = 0u64;
    let mut prev_channel = None;
    loop {
        match gate.next(T).unwrap() {
            GateItem::Record { channel, data } => {
                let p = channel as usize;
                assert_eq!(data, &payload(channel, next[p])[..], "channel {channel} record {}", next[p]);
                next[p] += 1;
                if prev_channel.is_some_and(|c| c != channel) {
                    switches += 1;
                }
                prev_channel = Some(channel);
            }
            GateItem::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let ended_by_data = gate.waits_ended_by_data();
    drop(gate);
    for h in producers {
        h.join().unwrap();
    }
    assert_eq!(next, [n, n], "every record of both channels, once");
    assert!(switches > 0, "both channels were served");
    assert_eq!(arena.header_atomics().free_stack.len(), 256, "every segment is back");
    ended_by_data
}

/// A record of `i`'s 4-byte multiple of a length (every prefix lands 4-aligned).
fn aligned(i: u64) -> Vec<u8> {
    let mut v = vec![i as u8; 8 + 4 * (i % 5) as usize];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

/// A gate in spin mode reads records by their prefix words in the data, before their
/// producer commits them: a producer that flushes only full segments writes ten records
/// (each prefix 4-aligned, a word the gate polls) and finishes only once the gate said it
/// has all ten; a gate that read only committed bytes would see none of them.
#[test]
fn spinning_gate_reads_records_before_their_commit() {
    const N: u64 = 10;
    let arena = arena();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let a = arena.clone();
    let producer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 0);
        let id = ResultPartitionId::new(0, 0);
        let mut cfg = ResultPartitionConfig::new(id, ResultPartitionType::PipelinedBounded, 1);
        cfg.timeout = T;
        let partitioner = RebalancePartitioner::new(0);
        let mut w = env.create_record_writer::<[u8], _>(&cfg, partitioner, BufferTimeout::FullSegmentsOnly).unwrap();
        for i in 0..N {
            w.emit(&aligned(i)[..]).unwrap();
        }
        let told = rx.recv_timeout(Duration::from_secs(30)).is_ok();
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        told
    });
    let env = ShuffleEnvironment::new(arena.clone(), 10);
    let mut cfg = gate_cfg(1, 0);
    cfg.wait_policy = shmflow::sync::WaitPolicy::spin();
    let mut gate = env.create_input_gate(&cfg).unwrap();
    for i in 0..N {
        match gate.next(Some(Duration::from_secs(20))) {
            Ok(GateItem::Record { data, .. }) => assert_eq!(data, &aligned(i)[..], "record {i}"),
            other => panic!("record {i} not read before its commit: {other:?}"),
        }
    }
    tx.send(()).unwrap();
    assert!(matches!(gate.next(T).unwrap(), GateItem::End));
    drop(gate);
    assert!(producer.join().unwrap(), "the producer finished only after the gate read everything");
    assert_eq!(arena.header_atomics().free_stack.len(), 256, "every segment is back");
}
