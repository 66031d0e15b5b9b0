//! Records that span segments read in place (issue 14, item 3): the gate hands them out as
//! the chunks of the segments they cover, pointing into the arena's data region, with no
//! reassembly unless the caller asks for one contiguous slice.

use shmflow::gate::{GateItem, GatePiece, GateView, InputGateConfig, InputSpec, SingleInputGate};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BroadcastPartitioner, BufferTimeout, RequestBackoff, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::ShuffleEnvironment;
use std::io::Read;
use std::sync::{mpsc, Arc};
use std::time::Duration;

const T: Option<Duration> = Some(Duration::from_secs(30));
const SEG: u32 = 4096;
const ID: ResultPartitionId = ResultPartitionId::new(0, 0);

/// Payload sizes: 6000 B from the start of a segment covers 2 segments; 10000 B after it
/// covers 3; then a small one that fits; then 8000 B from near the end of a segment (3).
const SIZES: [usize; 4] = [6000, 10_000, 20, 8000];

fn payload(k: usize) -> Vec<u8> {
    (0..SIZES[k]).map(|i| (i.wrapping_mul(7) + k * 31) as u8 ^ (i >> 8) as u8).collect()
}

fn arena() -> Arc<Arena> {
    let cfg =
        ArenaConfig { segment_size: SEG, segment_count: 64, max_channels: 8, max_gates: 4, ..ArenaConfig::default() };
    Arc::new(Arena::heap(&cfg).unwrap())
}

/// Writes `records` on partition 0 (one subpartition) from a thread, then finishes and
/// signals `written`.
fn spawn_producer(arena: &Arc<Arena>, records: Vec<Vec<u8>>, written: mpsc::Sender<()>) -> std::thread::JoinHandle<()> {
    let a = arena.clone();
    std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 0);
        let mut cfg = ResultPartitionConfig::new(ID, ResultPartitionType::PipelinedBounded, 1);
        cfg.timeout = T;
        let mut w = env
            .create_record_writer::<[u8], _>(&cfg, BroadcastPartitioner, BufferTimeout::from_millis(1).unwrap())
            .unwrap();
        for r in &records {
            w.emit(&r[..]).unwrap();
        }
        w.finish().unwrap();
        let _ = written.send(());
        let mut part = w.into_partition();
        part.release_when_consumed(T).unwrap();
    })
}

/// The gate over partition 0 with these credits.
fn gate(arena: &Arc<Arena>, exclusive: u32, floating: u32) -> SingleInputGate {
    let env = ShuffleEnvironment::new(arena.clone(), 1);
    let mut cfg = InputGateConfig::new(vec![InputSpec { partition: ID, subpartition: 0 }]);
    cfg.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(2) };
    cfg.exclusive_credits = exclusive;
    cfg.floating_credits = floating;
    env.create_input_gate(&cfg).unwrap()
}

/// Writes every record of `SIZES` and returns the gate over them once all of them are
/// published (so every record's segments are there when it is read: none falls back to
/// reassembly).
fn gate_after_all_written(arena: &Arc<Arena>) -> (SingleInputGate, std::thread::JoinHandle<()>) {
    let (written, wait_written) = mpsc::channel();
    let producer = spawn_producer(arena, (0..SIZES.len()).map(payload).collect(), written);
    // Credit for every segment of the records, so the producer finishes before we read.
    let gate = gate(arena, 16, 8);
    wait_written.recv_timeout(Duration::from_secs(30)).expect("the producer wrote every record");
    (gate, producer)
}

fn in_data_region(arena: &Arena, chunk: &[u8]) -> bool {
    let (base, len) = arena.data_region();
    let (start, end) = (base as usize, base as usize + len as usize);
    let p = chunk.as_ptr() as usize;
    p >= start && p + chunk.len() <= end
}

#[test]
fn spanning_records_are_walked_chunk_by_chunk_in_place() {
    let arena = arena();
    let (mut gate, producer) = gate_after_all_written(&arena);
    gate.set_spans_in_place(true);
    let mut chunk_counts = Vec::new();
    let mut k = 0;
    // Bounded: 4 records and the end.
    for _ in 0..16 {
        match gate.next_view(T).unwrap() {
            GateView::Record { channel, record } => {
                assert_eq!(channel, 0);
                let want = payload(k);
                assert_eq!(record.len(), want.len());
                chunk_counts.push(record.chunk_count());
                // Chunk by chunk: the right bytes, each in the arena (no copy), none longer
                // than a segment.
                let mut at = 0;
                for c in record.iter() {
                    assert!(in_data_region(&arena, c), "chunk of record {k} lies in the arena's data region");
                    assert!(c.len() <= SEG as usize);
                    assert_eq!(c, &want[at..at + c.len()], "record {k} bytes {at}..");
                    at += c.len();
                }
                assert_eq!(at, want.len());
                // The Buf-like cursor: fixed-size reads across chunk boundaries, then
                // std::io::Read for the rest.
                let mut cur = record.cursor();
                let mut head = [0u8; 13];
                assert!(cur.copy_to_slice(&mut head));
                assert_eq!(&head[..], &want[..13]);
                cur.advance(3);
                assert_eq!(cur.remaining(), want.len() - 16);
                let mut rest = Vec::new();
                cur.read_to_end(&mut rest).unwrap();
                assert_eq!(rest, &want[16..]);
                assert!(!cur.copy_to_slice(&mut head), "nothing left");
                k += 1;
            }
            GateView::Item(GateItem::End) => break,
            GateView::Item(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(k, SIZES.len(), "every record read");
    assert_eq!(chunk_counts, [2, 3, 1, 3], "records over 2 and 3 segments are handed out as 2 and 3 chunks");
    assert_eq!(gate.spanned_records(), (0, 3), "no spanning record was reassembled");
    drop(gate);
    producer.join().unwrap();
    assert_eq!(arena.header_atomics().free_stack.len(), 64, "every held segment is back");
}

#[test]
fn contiguous_slice_only_when_asked_and_reassembly_by_default() {
    for in_place in [true, false] {
        let arena = arena();
        let (mut gate, producer) = gate_after_all_written(&arena);
        gate.set_spans_in_place(in_place);
        let mut k = 0;
        for _ in 0..16 {
            match gate.next(T).unwrap() {
                GateItem::Record { data, .. } => {
                    assert_eq!(data, &payload(k)[..], "record {k} (in place: {in_place})");
                    k += 1;
                }
                GateItem::End => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(k, SIZES.len());
        // In place, `next` asked for one slice: the records were read in place, then copied
        // once each; by default they were reassembled as they arrived.
        assert_eq!(gate.spanned_records(), if in_place { (0, 3) } else { (3, 0) });
        drop(gate);
        producer.join().unwrap();
        assert_eq!(arena.header_atomics().free_stack.len(), 64, "every segment is back");
    }
}

/// Streams `n` records of 20000 B (each covers 5 or 6 segments of 4 KiB) through a channel
/// with `exclusive` credits and no floating ones, reading them in place while they are
/// written, holding up to `hold_budget` segments while waiting; returns (reassembled, in
/// place).
fn stream_in_place(exclusive: u32, hold_budget: u32) -> (u64, u64) {
    let arena = arena();
    let n = 40usize;
    let rec = |i: usize| -> Vec<u8> { (0..20_000usize).map(|j| (j * 13 + i) as u8).collect() };
    let producer = spawn_producer(&arena, (0..n).map(rec).collect(), mpsc::channel().0);
    let mut gate = gate(&arena, exclusive, 0);
    gate.set_spans_in_place(true);
    gate.set_span_hold_budget(hold_budget);
    let mut got = 0;
    let mut copy = Vec::new();
    for _ in 0..n + 8 {
        match gate.next_view(T).unwrap() {
            GateView::Record { record, .. } => {
                copy.clear();
                record.copy_to_vec(&mut copy);
                assert_eq!(copy, rec(got), "record {got}");
                got += 1;
            }
            GateView::Item(GateItem::End) => break,
            GateView::Item(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, n);
    let spanned = gate.spanned_records();
    assert_eq!(spanned.0 + spanned.1, n as u64);
    drop(gate);
    producer.join().unwrap();
    assert_eq!(arena.header_atomics().free_stack.len(), 64, "every segment is back");
    spanned
}

#[test]
fn a_record_longer_than_the_credit_falls_back_to_reassembly_without_deadlock() {
    // 2 credits: holding the segments would starve the producer, so the reader copies what
    // it holds and releases it whenever it would wait; the records still arrive intact.
    assert_eq!(stream_in_place(2, 0), (40, 0), "every record reassembled");
    // 4 credits: 2 segments may stay held while waiting, fewer than a record needs.
    assert_eq!(stream_in_place(4, 2), (40, 0), "every record reassembled");
}

#[test]
fn records_within_the_credit_stay_in_place_while_the_reader_waits_for_them() {
    // 10 exclusive credits (and the producer's default 10 per channel): a record may hold
    // 8 segments while waiting (it needs 6), so every record is read in place however the
    // reader and writer interleave.
    assert_eq!(stream_in_place(10, 8), (0, 40), "every record in place");
}

#[test]
fn streamed_spans_arrive_piece_by_piece_in_place_within_two_credits_and_are_never_copied() {
    // 2 credits, no floating ones: a 20000 B record covers 5 or 6 segments, more than the
    // credit, so it can only be read as it is written; streamed, every piece is handed out
    // from the arena and its segment released before the next, and none is reassembled.
    let arena = arena();
    let n = 40usize;
    let rec = |i: usize| -> Vec<u8> {
        let len = if i % 4 == 2 { 20 } else { 20_000 };
        (0..len).map(|j| (j * 13 + i) as u8).collect()
    };
    let producer = spawn_producer(&arena, (0..n).map(rec).collect(), mpsc::channel().0);
    let mut gate = gate(&arena, 2, 0);
    gate.set_spans_streamed(true);
    let (mut got, mut pieces, mut at) = (0usize, 0usize, 0usize);
    // Bounded: at most 6 pieces per record, and the end.
    for _ in 0..n * 8 + 8 {
        match gate.next_piece(T).unwrap() {
            GatePiece::Record { channel, piece } => {
                assert_eq!(channel, 0);
                let want = rec(got);
                assert_eq!(piece.len, want.len(), "record {got}'s length with every piece");
                assert_eq!(piece.at, at, "record {got}'s pieces come in order");
                assert!(in_data_region(&arena, piece.bytes), "piece of record {got} lies in the arena");
                assert!(!piece.bytes.is_empty() && piece.bytes.len() <= SEG as usize);
                assert_eq!(piece.bytes, &want[at..at + piece.bytes.len()], "record {got} bytes {at}..");
                assert_eq!(piece.is_first(), at == 0);
                at += piece.bytes.len();
                pieces += 1;
                if piece.is_last() {
                    assert_eq!(at, want.len());
                    assert_eq!(piece.is_whole(), want.len() == 20);
                    got += 1;
                    at = 0;
                }
            }
            GatePiece::Item(GateItem::End) => break,
            GatePiece::Item(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, n, "every record read");
    assert!(pieces >= 30 * 5 + 10, "the large records came in pieces ({pieces} in all)");
    assert_eq!(gate.spanned_records(), (0, 30), "no spanning record was reassembled");
    drop(gate);
    producer.join().unwrap();
    assert_eq!(arena.header_atomics().free_stack.len(), 64, "every segment is back");
}
