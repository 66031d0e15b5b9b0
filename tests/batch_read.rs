//! The gate's batch path with the record loop in the caller's hands
//! (`SingleInputGate::drain_batch`), and small records that go whole into the next segment
//! instead of spanning.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, PartitionStats, RebalancePartitioner, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::ShuffleEnvironment;
use std::sync::Arc;
use std::time::Duration;

const T: Option<Duration> = Some(Duration::from_secs(30));

/// A heap arena of 64 4 KiB segments: 8 B records (12 framed) leave 4 bytes at the end of
/// the first one, where they used to span.
fn arena() -> Arc<Arena> {
    let cfg =
        ArenaConfig { segment_size: 4096, segment_count: 64, max_channels: 8, max_gates: 4, ..ArenaConfig::default() };
    Arc::new(Arena::heap(&cfg).unwrap())
}

/// A producer thread emitting `0..n` as `u64`s to the one subpartition; returns its stats.
fn produce(arena: &Arc<Arena>, n: u64) -> std::thread::JoinHandle<PartitionStats> {
    let a = arena.clone();
    std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 1);
        let mut cfg =
            ResultPartitionConfig::new(ResultPartitionId::new(1, 0), ResultPartitionType::PipelinedBounded, 1);
        cfg.timeout = T;
        let timeout = BufferTimeout::from_millis(1).unwrap();
        let mut w = env.create_record_writer::<u64, _>(&cfg, RebalancePartitioner::new(0), timeout).unwrap();
        for i in 0..n {
            w.emit(&i).unwrap();
        }
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        part.stats()
    })
}

/// The gate reading what [`produce`] writes.
fn gate(arena: &Arc<Arena>) -> SingleInputGate {
    let env = ShuffleEnvironment::new(arena.clone(), 2);
    let spec = InputSpec { partition: ResultPartitionId::new(1, 0), subpartition: 0 };
    env.create_input_gate(&InputGateConfig::new(vec![spec])).unwrap()
}

#[test]
fn drain_batch_counts_what_the_caller_took_and_small_records_never_span() {
    let arena = arena();
    let n = 5_000u64;
    let producer = produce(&arena, n);
    let mut gate = gate(&arena);
    let mut next = 0u64;
    let (mut batched, mut batches) = (0u64, 0u64);
    loop {
        // At most 3 of the records on offer each time: the rest must come back later.
        let mut taken = 0usize;
        let got = gate
            .drain_batch(usize::MAX, &mut |channel, records| {
                assert_eq!(channel, 0);
                for r in records.take(3) {
                    assert_eq!(u64::from_le_bytes(r.try_into().unwrap()), next, "in order, once");
                    next += 1;
                    taken += 1;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(got, taken, "what the caller took is what counts as read");
        if got > 0 {
            batched += got as u64;
            batches += 1;
            continue;
        }
        match gate.next(T).unwrap() {
            GateItem::Record { data, .. } => {
                assert_eq!(u64::from_le_bytes(data.try_into().unwrap()), next, "in order, once");
                next += 1;
            }
            GateItem::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(next, n, "every record read");
    assert!(batches > 0 && batched > n / 2, "the batch path read most records ({batched} of {n})");
    let stats = producer.join().unwrap();
    assert!(stats.segments_out > 10, "records filled {} segments", stats.segments_out);
    assert_eq!(stats.spanning_records, 0, "an 8 B record goes whole into the next segment");
    assert_eq!(arena.header_atomics().free_stack.len(), 64, "every segment is back");
}

#[test]
fn next_if_refusing_leaves_the_record_for_the_next_drain() {
    let arena = arena();
    let n = 3_000u64;
    let producer = produce(&arena, n);
    let mut gate = gate(&arena);
    let value = |r: &[u8]| u64::from_le_bytes(r.try_into().unwrap());
    let (mut next, mut refusals, mut peeks) = (0u64, 0u64, 0u64);
    // Each multiple of 7 is refused the first time it is offered: the batch stops there
    // and the record must come first in a later drain, where it is taken.
    let mut refused = None;
    loop {
        let mut taken = 0usize;
        let got = gate
            .drain_batch(usize::MAX, &mut |_, records| {
                for _ in 0..n {
                    let Some(r) = records.next_if(|r| {
                        let v = value(r);
                        if v % 7 != 0 || refused == Some(v) {
                            return true;
                        }
                        refused = Some(v);
                        refusals += 1;
                        false
                    }) else {
                        break;
                    };
                    assert_eq!(value(r), next, "in order, once: a refused record is not lost");
                    next += 1;
                    taken += 1;
                    // A peek shows the next record without taking it.
                    if let Some(p) = records.peek() {
                        assert_eq!(value(p), next, "peek shows the next record");
                        peeks += 1;
                    }
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(got, taken, "a refused or peeked record does not count as read");
        if got > 0 {
            continue;
        }
        match gate.next(T).unwrap() {
            GateItem::Record { data, .. } => {
                assert_eq!(value(data), next, "in order, once: a refused record is not lost");
                next += 1;
            }
            GateItem::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(next, n, "every record read");
    assert!(refusals > 0 && peeks > 0, "next_if refused ({refusals}) and peek showed ({peeks}) records");
    producer.join().unwrap();
    assert_eq!(arena.header_atomics().free_stack.len(), 64, "every segment is back");
}
