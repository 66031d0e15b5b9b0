//! `RecordWriter::emit_batch` (the producer's batch path): the same records on the same
//! channels as `emit` one by one, across segment ends, records that span segments, a
//! channel change in the middle of a run, a record above the limit; and the fallback for a
//! buffer timeout of 0.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, ChannelSelector, PartitionStats, RebalancePartitioner, ResultPartitionConfig, ResultPartitionId,
    ResultPartitionType, EMIT_BATCH_RUN,
};
use shmflow::ShuffleEnvironment;
use std::sync::Arc;
use std::time::Duration;

const T: Option<Duration> = Some(Duration::from_secs(30));

/// A heap arena of 64 4 KiB segments.
fn arena() -> Arc<Arena> {
    let cfg =
        ArenaConfig { segment_size: 4096, segment_count: 64, max_channels: 8, max_gates: 4, ..ArenaConfig::default() };
    Arc::new(Arena::heap(&cfg).unwrap())
}

/// Sends records in runs of `run` to one channel, then the next (round robin over runs).
#[derive(Clone, Copy)]
struct Runs {
    run: u32,
    n: u32,
    at: u32,
}

impl<R: ?Sized> ChannelSelector<R> for Runs {
    fn setup(&mut self, n: u32) {
        self.n = n;
        self.at = 0;
    }

    fn select_channel(&mut self, _: &R) -> u32 {
        let c = (self.at / self.run) % self.n;
        self.at += 1;
        c
    }
}

/// Record `i`: `i` as 8 bytes, then `i % 13` filler bytes; every 500th is 9000 bytes long
/// (spans 4 KiB segments).
fn record(i: u64) -> Vec<u8> {
    let len = if i % 500 == 499 { 9000 } else { 8 + (i % 13) as usize };
    let mut r = vec![(i % 251) as u8; len];
    r[..8].copy_from_slice(&i.to_le_bytes());
    r
}

/// A producer thread writing `records` to `channels` channels with selector `sel`, in
/// batches (`batch` records per `emit_batch`) or one by one (`batch` 0); returns its
/// stats.
fn produce(
    arena: &Arc<Arena>,
    channels: u32,
    sel: Runs,
    timeout_ms: i64,
    batch: usize,
    records: Vec<Vec<u8>>,
) -> std::thread::JoinHandle<PartitionStats> {
    let a = arena.clone();
    std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 1);
        let mut cfg =
            ResultPartitionConfig::new(ResultPartitionId::new(1, 0), ResultPartitionType::PipelinedBounded, channels);
        cfg.timeout = T;
        let timeout = BufferTimeout::from_millis(timeout_ms).unwrap();
        let mut w = env.create_record_writer::<[u8], _>(&cfg, sel, timeout).unwrap();
        if batch == 0 {
            for r in &records {
                w.emit(&r[..]).unwrap();
            }
        } else {
            for chunk in records.chunks(batch) {
                let n = w.emit_batch::<[u8], _>(chunk.iter().map(|r| &r[..])).unwrap();
                assert_eq!(n, chunk.len() as u64, "emit_batch counts every record it wrote");
            }
        }
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        part.stats()
    })
}

/// Reads every channel to its end: the records of each.
fn consume(arena: &Arc<Arena>, channels: u32) -> Vec<Vec<Vec<u8>>> {
    let env = ShuffleEnvironment::new(arena.clone(), 2);
    let specs = (0..channels).map(|c| InputSpec { partition: ResultPartitionId::new(1, 0), subpartition: c }).collect();
    let mut gate: SingleInputGate = env.create_input_gate(&InputGateConfig::new(specs)).unwrap();
    let mut got = vec![Vec::new(); channels as usize];
    // Bounded: each call returns a record or the end within T (or fails the test).
    loop {
        match gate.next(T).unwrap() {
            GateItem::Record { channel, data } => got[channel as usize].push(data.to_vec()),
            GateItem::End => return got,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Runs one producer and the consumer; the records of each channel and the stats.
fn run(
    channels: u32,
    sel: Runs,
    timeout_ms: i64,
    batch: usize,
    records: &[Vec<u8>],
) -> (Vec<Vec<Vec<u8>>>, PartitionStats) {
    let arena = arena();
    let producer = produce(&arena, channels, sel, timeout_ms, batch, records.to_vec());
    let got = consume(&arena, channels);
    (got, producer.join().unwrap())
}

#[test]
fn emit_batch_writes_what_emit_writes() {
    let records: Vec<Vec<u8>> = (0..3000).map(record).collect();
    // Runs of 700 records per channel (longer than a batch's run, across segment ends and
    // spanning records), 3 channels; batches of 1000 (not a multiple of the run length).
    let sel = Runs { run: 700, n: 0, at: 0 };
    let (one_by_one, s1) = run(3, sel, 100, 0, &records);
    let (batched, s2) = run(3, sel, 100, 1000, &records);
    assert_eq!(one_by_one.iter().map(Vec::len).sum::<usize>(), records.len());
    assert_eq!(batched, one_by_one, "the same records on the same channels, in order");
    assert_eq!(s2.records_out, s1.records_out);
    assert_eq!(s2.bytes_out, s1.bytes_out);
    assert_eq!(s2.spanning_records, s1.spanning_records);
    assert!(s1.spanning_records > 0, "the test covers records that span segments");
    assert_eq!(s2.segments_out, s1.segments_out, "records fill segments the same way");
}

#[test]
fn emit_batch_with_a_channel_change_every_record_and_more_than_a_run() {
    // Round robin over 2 channels: every run ends after one record; batches longer than
    // EMIT_BATCH_RUN (the flush flag's look in between).
    let records: Vec<Vec<u8>> = (0..2 * EMIT_BATCH_RUN as u64 + 7).map(|i| i.to_le_bytes().to_vec()).collect();
    let sel = Runs { run: 1, n: 0, at: 0 };
    let (batched, stats) = run(2, sel, 1, records.len(), &records);
    let want: Vec<Vec<Vec<u8>>> = (0..2).map(|c| records.iter().skip(c).step_by(2).cloned().collect()).collect();
    assert_eq!(batched, want);
    assert_eq!(stats.records_out, records.len() as u64);
    assert_eq!(stats.bytes_out, 8 * records.len() as u64);
}

#[test]
fn emit_batch_with_timeout_zero_flushes_as_emit_does() {
    let records: Vec<Vec<u8>> = (0..600).map(record).collect();
    let sel = Runs { run: 50, n: 0, at: 0 };
    let (one_by_one, _) = run(2, sel, 0, 0, &records);
    let (batched, _) = run(2, sel, 0, 64, &records);
    assert_eq!(batched, one_by_one);
}

/// With a buffer timeout of 0 every record is visible as soon as `emit_batch` wrote it:
/// the batch's iterator waits in `next` until the consumer received the record before
/// (which never happens if the records of a run were published together when the run
/// ends). The wait is bounded; the test counts the waits that ran out.
#[test]
fn emit_batch_with_timeout_zero_makes_each_record_visible_before_the_next() {
    use shmflow::sync::{AtomicU64, Ordering};
    const N: u64 = 200;
    let arena = arena();
    let a = arena.clone();
    let received = Arc::new(AtomicU64::new(0));
    let seen = received.clone();
    let producer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 1);
        let mut cfg =
            ResultPartitionConfig::new(ResultPartitionId::new(1, 0), ResultPartitionType::PipelinedBounded, 1);
        cfg.timeout = T;
        let timeout = BufferTimeout::from_millis(0).unwrap();
        let mut w = env.create_record_writer::<u64, _>(&cfg, RebalancePartitioner::new(0), timeout).unwrap();
        // Waits that ran out; after the first one the iterator stops waiting (so a broken
        // writer fails the test after one bounded wait, not N of them).
        let mut timed_out = 0u32;
        let records = (0..N).inspect(|&i| {
            if timed_out == 0 {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                // Bounded by the deadline. Acquire: pairs with the consumer's Release
                // increment (only a count; nothing else is read through it).
                while seen.load(Ordering::Acquire) < i {
                    if std::time::Instant::now() >= deadline {
                        timed_out += 1;
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        });
        let n = w.emit_batch::<u64, _>(records).unwrap();
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        (n, timed_out)
    });
    let env = ShuffleEnvironment::new(arena.clone(), 2);
    let specs = vec![InputSpec { partition: ResultPartitionId::new(1, 0), subpartition: 0 }];
    let mut gate: SingleInputGate = env.create_input_gate(&InputGateConfig::new(specs)).unwrap();
    let mut got = Vec::new();
    // Bounded: each call returns a record or the end within T (or fails the test).
    loop {
        match gate.next(T).unwrap() {
            GateItem::Record { data, .. } => {
                got.push(u64::from_le_bytes(data.try_into().unwrap()));
                // Release: pairs with the producer iterator's Acquire load.
                received.fetch_add(1, Ordering::Release);
            }
            GateItem::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    let (n, timed_out) = producer.join().unwrap();
    assert_eq!(n, N);
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(timed_out, 0, "a record of the batch was not visible before the next was asked for");
}

#[test]
fn emit_batch_of_u64_through_the_rebalance_partitioner() {
    let arena = arena();
    let a = arena.clone();
    let n = 10_000u64;
    let producer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 1);
        let mut cfg =
            ResultPartitionConfig::new(ResultPartitionId::new(1, 0), ResultPartitionType::PipelinedBounded, 1);
        cfg.timeout = T;
        let timeout = BufferTimeout::from_millis(100).unwrap();
        let mut w = env.create_record_writer::<u64, _>(&cfg, RebalancePartitioner::new(0), timeout).unwrap();
        assert_eq!(w.emit_batch::<u64, _>(0..n).unwrap(), n);
        // An empty batch writes nothing.
        assert_eq!(w.emit_batch::<u64, _>(std::iter::empty::<u64>()).unwrap(), 0);
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        part.stats()
    });
    let got = consume(&arena, 1);
    let want: Vec<Vec<u8>> = (0..n).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(got[0], want);
    let stats = producer.join().unwrap();
    assert_eq!((stats.records_out, stats.bytes_out), (n, 8 * n));
}

/// A small record (8 bytes) or one that claims more than the limit.
enum Rec {
    Small(u64),
    Huge,
}

impl shmflow::record::Record for Rec {
    fn serialized_len(&self) -> usize {
        match self {
            Rec::Small(_) => 8,
            Rec::Huge => shmflow::record::DEFAULT_MAX_RECORD + 1,
        }
    }

    fn serialize_into(&self, out: &mut [u8]) {
        match self {
            Rec::Small(v) => out.copy_from_slice(&v.to_le_bytes()),
            Rec::Huge => panic!("a record above the limit is never written"),
        }
    }
}

/// A batch with a record above the limit third: `emit_batch` returns the error with the 2
/// records written before it, and the iterator, passed `by_ref`, resumes after it.
fn stop_at_huge_and_resume(timeout_ms: i64) {
    let arena = arena();
    let a = arena.clone();
    let producer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 1);
        let mut cfg =
            ResultPartitionConfig::new(ResultPartitionId::new(1, 0), ResultPartitionType::PipelinedBounded, 1);
        cfg.timeout = T;
        let timeout = BufferTimeout::from_millis(timeout_ms).unwrap();
        let mut w = env.create_record_writer::<Rec, _>(&cfg, RebalancePartitioner::new(0), timeout).unwrap();
        let batch = [Rec::Small(1), Rec::Small(2), Rec::Huge, Rec::Small(3)];
        let mut it = batch.iter();
        let err = w.emit_batch::<Rec, _>(it.by_ref()).unwrap_err();
        assert!(matches!(err.error, shmflow::Error::TooLarge { .. }), "{err:?}");
        assert_eq!(err.written, 2, "the records before the failing one were written");
        // The partition goes on; the iterator resumes after the failing record.
        assert_eq!(w.emit_batch::<Rec, _>(it).unwrap(), 1);
        assert_eq!(w.emit_batch::<Rec, _>([Rec::Small(4)]).unwrap(), 1);
        // Into the crate's error with `?`.
        let as_error: shmflow::Error = w.emit_batch::<Rec, _>([Rec::Huge]).unwrap_err().into();
        assert!(matches!(as_error, shmflow::Error::TooLarge { .. }), "{as_error:?}");
        w.finish().unwrap();
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
        part.stats()
    });
    let got = consume(&arena, 1);
    let want: Vec<Vec<u8>> = [1u64, 2, 3, 4].iter().map(|v| v.to_le_bytes().to_vec()).collect();
    assert_eq!(got[0], want);
    assert_eq!(producer.join().unwrap().records_out, 4);
}

#[test]
fn emit_batch_stops_at_a_record_above_the_limit_with_the_count_written_and_resumes() {
    stop_at_huge_and_resume(100);
}

#[test]
fn emit_batch_with_timeout_zero_stops_at_a_record_above_the_limit_with_the_count_written() {
    stop_at_huge_and_resume(0);
}
