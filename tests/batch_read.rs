//! The gate's batch path with the record loop in the caller's hands
//! (`SingleInputGate::drain_batch`), and small records that go whole into the next segment
//! instead of spanning.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, RebalancePartitioner, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::ShuffleEnvironment;
use std::sync::Arc;
use std::time::Duration;

const T: Option<Duration> = Some(Duration::from_secs(30));

#[test]
fn drain_batch_counts_what_the_caller_took_and_small_records_never_span() {
    // 4 KiB segments: 8 B records (12 framed) leave 4 bytes at the end of the first one,
    // where they used to span.
    let cfg =
        ArenaConfig { segment_size: 4096, segment_count: 64, max_channels: 8, max_gates: 4, ..ArenaConfig::default() };
    let arena = Arc::new(Arena::heap(&cfg).unwrap());
    let n = 5_000u64;
    let a = arena.clone();
    let producer = std::thread::spawn(move || {
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
    });
    let env = ShuffleEnvironment::new(arena.clone(), 2);
    let spec = InputSpec { partition: ResultPartitionId::new(1, 0), subpartition: 0 };
    let mut gate = env.create_input_gate(&InputGateConfig::new(vec![spec])).unwrap();
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
