//! The record stream between two threads of one process (the multi-process versions are in
//! `tests/foundation_processes.rs`).

use shmflow::memory::{Arena, ArenaConfig};
use shmflow::ring::{StreamReader, StreamWriter};
use shmflow::sync::WaitPolicy;
use std::sync::Arc;
use std::time::Duration;

fn small_arena() -> Arc<Arena> {
    let cfg = ArenaConfig { segment_size: 4096, segment_count: 64, max_channels: 4, ..ArenaConfig::default() };
    Arc::new(Arena::heap(&cfg).unwrap())
}

#[test]
fn records_arrive_in_order_and_segments_return() {
    records_in_order(WaitPolicy::adaptive(), 200_000, 0);
}

/// The reader spins (`StreamReader::next`'s hot spin on the slot, then the full wait) while
/// the writer pauses now and then, often at a segment's end: every record still arrives,
/// in order, and the end of the stream too.
#[test]
fn records_arrive_in_order_when_the_reader_spins() {
    records_in_order(WaitPolicy::spin(), 50_000, 997);
}

/// `n` records of 8-57 bytes through a stream whose reader waits with `policy`; the writer
/// flushes every 1000 records and, with `pause_every` > 0, sleeps 50 µs after every
/// `pause_every`-th record.
fn records_in_order(policy: WaitPolicy, n: u64, pause_every: u64) {
    let arena = small_arena();
    let total_before = arena.header_atomics().free_stack.len();
    let a2 = arena.clone();
    let consumer = std::thread::spawn(move || {
        let mut r = StreamReader::new(a2, 0, 4, policy).unwrap();
        let mut expect = 0u64;
        let mut sum = 0u64;
        while let Some(v) = r
            .next(Some(Duration::from_secs(20)), |p| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&p[..8]);
                (u64::from_le_bytes(b), p.len())
            })
            .unwrap()
        {
            assert_eq!(v.0, expect);
            assert_eq!(v.1, 8 + (v.0 % 50) as usize);
            sum += v.0;
            expect += 1;
        }
        (expect, sum)
    });
    let mut w = StreamWriter::new(arena.clone(), 0, 4, WaitPolicy::adaptive(), Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    for i in 0..n {
        let len = 8 + (i % 50) as usize;
        if i % 2 == 0 {
            buf[..8].copy_from_slice(&i.to_le_bytes());
            w.write(&buf[..len]).unwrap();
        } else {
            // In place: the closure gets exactly the record's bytes in the segment.
            w.write_with(len, |dst| {
                assert_eq!(dst.len(), len);
                dst[..8].copy_from_slice(&i.to_le_bytes());
                dst[8..].fill(0xAB);
            })
            .unwrap();
        }
        if i % 1000 == 0 {
            w.flush().unwrap();
        }
        if pause_every > 0 && i % pause_every == 0 {
            w.flush().unwrap();
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let too_big = w.write_with(4096 - 3, |_| unreachable!("a record that cannot fit is never filled"));
    assert!(matches!(too_big, Err(shmflow::Error::TooLarge { .. })), "{too_big:?}");
    w.finish().unwrap();
    let (count, sum) = consumer.join().unwrap();
    assert_eq!(count, n);
    assert_eq!(sum, n * (n - 1) / 2);
    assert!(w.max_in_flight <= 4, "in flight {} above credit", w.max_in_flight);
    w.reclaim().unwrap();
    assert_eq!(w.pool().outstanding(), 0);
    drop(w);
    assert_eq!(arena.header_atomics().free_stack.len(), total_before);
}
