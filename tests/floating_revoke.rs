//! Eager revocation of floating credit (`ring::floating`, `gate::credit`): a channel that
//! went idle holding a floating credit gives it back at once when another channel of the
//! gate wants credit and the pool is empty, and no credit is lost or counted twice.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{RequestBackoff, ResultPartitionConfig, ResultPartitionId, ResultPartitionType};
use shmflow::ring::floating;
use shmflow::sync::Ordering;
use shmflow::ShuffleEnvironment;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

const T: Option<Duration> = Some(Duration::from_secs(30));
/// Records written to the busy channel.
const BUSY: u64 = 24;
/// The busy channel's records, a bit under a segment (4 KiB).
const RECORD: usize = 3000;
/// The idle channel's one record: it spans two segments, so the gate holds the first
/// segment until the second is published (it is read in place).
const SPANNING: usize = 6000;

fn arena() -> Arc<Arena> {
    let cfg =
        ArenaConfig { segment_size: 4096, segment_count: 64, max_channels: 8, max_gates: 8, ..ArenaConfig::default() };
    Arc::new(Arena::heap(&cfg).unwrap())
}

/// Waits (bounded, never asserting on time) until `cond` holds; false if it never did.
fn wait_until(cond: impl Fn() -> bool) -> bool {
    for _ in 0..30_000 {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    cond()
}

/// Reads the next item if one is ready (counting records per channel) and checks that the
/// gate's floating credit is conserved. Returns whether something was read and whether the
/// gate ended.
fn step(gate: &mut SingleInputGate, records: &mut [u64; 3]) -> (bool, bool) {
    let (read, end) = match gate.poll_next().unwrap() {
        Some(GateItem::Record { channel, data }) => {
            assert_eq!(data.len(), if channel == 0 { SPANNING } else { RECORD });
            records[channel as usize] += 1;
            (true, false)
        }
        Some(GateItem::End) => (true, true),
        Some(_) => (true, false),
        None => (false, false),
    };
    // The pool plus what the channels hold is the whole floating credit (no credit is
    // ever promised back in flight here: every revoke finds it unused).
    let total = gate.floating_available() + (0..3).map(|c| gate.floating_held(c)).sum::<u32>();
    assert_eq!(total, 1, "floating credit conserved");
    if !read {
        std::thread::sleep(Duration::from_micros(100));
    }
    (read, end)
}

#[test]
fn an_idle_channels_floating_credit_moves_to_a_busy_channel() {
    let arena = arena();
    let (ids_tx, ids_rx) = mpsc::channel::<[u32; 3]>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let a = arena.clone();
    // Producer: partition 0's two subpartitions are channels 0 (writes one record and
    // goes idle) and 1 (busy later) of one gate; partition 1's one is channel 2 (quiet).
    let producer = std::thread::spawn(move || {
        let env = ShuffleEnvironment::new(a, 0);
        let mut parts: Vec<_> = [2, 1]
            .into_iter()
            .enumerate()
            .map(|(p, subs)| {
                let mut cfg = ResultPartitionConfig::new(
                    ResultPartitionId::new(p as u64, 0),
                    ResultPartitionType::PipelinedBounded,
                    subs,
                );
                cfg.timeout = T;
                env.create_result_partition(&cfg).unwrap()
            })
            .collect();
        let (p0, p1) = (parts[0].info().first_channel, parts[1].info().first_channel);
        ids_tx.send([p0, p0 + 1, p1]).unwrap();
        let rec = vec![7u8; RECORD];
        go_rx.recv().unwrap();
        // The record needs a second segment. With one exclusive credit, spent on the first
        // segment, the writer waits for credit: the gate grants its floating credit (or
        // reads and releases the first segment: then the writer trades the exclusive
        // credit that comes back for the floating one in flight, `floating::convert`).
        parts[0].emit(&vec![9u8; SPANNING][..], 0).unwrap();
        parts[0].flush(0).unwrap();
        go_rx.recv().unwrap();
        for _ in 0..BUSY {
            parts[0].emit(&rec[..], 1).unwrap();
        }
        for p in &mut parts {
            p.finish().unwrap();
        }
        for p in &mut parts {
            p.release_when_consumed(T).unwrap();
        }
    });
    let ids = ids_rx.recv().unwrap();
    let [idle, busy, _] = ids;
    let env = ShuffleEnvironment::new(arena.clone(), 1);
    let mut cfg = InputGateConfig::new(
        [(0, 0), (0, 1), (1, 0)]
            .map(|(p, subpartition)| InputSpec { partition: ResultPartitionId::new(p, 0), subpartition })
            .to_vec(),
    );
    cfg.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(2) };
    cfg.exclusive_credits = 1;
    cfg.floating_credits = 1;
    let mut gate = env.create_input_gate(&cfg).unwrap();
    let block = |id: u32| &arena.channels()[id as usize];

    // 0. Every channel opened and got its exclusive credit first, so the producer's only
    //    wait for credit is the one for its second segment.
    let mut records = [0u64; 3];
    // Polled until it finds nothing: every channel was looked at and ran dry, so the
    // gate's next look collects the producers' marks (and grants) before it reads.
    for _ in 0..30_000 {
        let (read, end) = step(&mut gate, &mut records);
        assert!(!end, "no channel ended yet");
        if !read && ids.iter().all(|&id| block(id).credit_granted() >= 1) {
            break;
        }
    }
    assert!(ids.iter().all(|&id| block(id).credit_granted() == 1), "one exclusive credit each");

    // 1. The idle-to-be channel's producer waits for credit; the gate grants it the one
    //    floating credit, it writes the rest of its record into a second segment, and the
    //    reader releases the first segment. The floating credit stays with the channel,
    //    which has nothing more to send: unused, or in flight in the open second segment
    //    until the producer trades the exclusive credit the release gave it back.
    go_tx.send(()).unwrap();
    assert!(wait_until(|| block(idle).credit_wanted()), "the producer waits for credit");
    let mut settled = false;
    for _ in 0..30_000 {
        assert!(!step(&mut gate, &mut records).1, "no channel ended yet");
        // Relaxed: a counter the consumer (this thread) wrote.
        if records[0] == 1 && block(idle).buffers_in.load(Ordering::Relaxed) == 1 {
            let word = block(idle).floating_credit();
            settled = floating::unused(word) + floating::in_flight(word) == 1;
            break;
        }
    }
    assert!(
        settled,
        "channel 0 read {} records; its floating word {:?}; held {}, pool {}",
        records[0],
        block(idle).floating_credit(),
        gate.floating_held(0),
        gate.floating_available()
    );
    assert_eq!((gate.floating_held(0), gate.floating_available()), (1, 0), "the idle channel holds the credit");

    // 2. The busy channel's producer (the same partition: it drains the idle channel's
    //    credit ring too, trading if it has to, so the credit is unused now) waits for
    //    credit with the pool empty: the gate takes the idle channel's unused credit back
    //    at once and grants it to the busy one (a lazy revoke would wait for a release the
    //    idle channel never makes).
    go_tx.send(()).unwrap();
    assert!(wait_until(|| block(busy).credit_wanted()), "the busy producer waits for credit");
    let mut moved = None;
    let mut done = false;
    for _ in 0..100_000 {
        done = step(&mut gate, &mut records).1;
        if moved.is_none() && gate.floating_held(1) == 1 {
            assert_eq!(gate.floating_held(0), 0, "the credit left the idle channel");
            let word = block(idle).floating_credit();
            moved = Some((floating::unused(word), floating::in_flight(word)));
        }
        if done {
            break;
        }
    }
    assert!(done, "the gate ended; records {records:?}");
    assert_eq!(moved, Some((0, 0)), "the floating credit moved from the idle channel (word emptied) to the busy one");
    assert_eq!(records, [1, BUSY, 0]);
    // Every channel ended: the whole floating pool is back, once.
    assert_eq!(gate.floating_available(), 1);
    assert!((0..3).all(|c| gate.floating_held(c) == 0));
    drop(gate);
    producer.join().unwrap();
}
