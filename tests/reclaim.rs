//! Online reclamation and the checks around it (issue 15 items 1-3, issue 16's slot
//! refusal), in one process on heap arenas; the multi-process side is `fault_matrix`
//! (every SIGKILL trial ends with every segment free after online reclamation) and the
//! kill soak (`tests/soak.rs`).

mod common;

use shmflow::buffer::{BufferBuilder, LocalBufferPool, LocalPoolConfig};
use shmflow::gate::{InputGateConfig, InputSpec, SingleInputGate};
use shmflow::memory::{
    check, liveness, process_start_ticks, Arena, ArenaConfig, CHANNEL_CLAIMED, CHANNEL_CLOSED, CHANNEL_FREE,
    CHANNEL_PROBING_BY,
};
use shmflow::partition::{
    reclaim_dead_peers, register_worker, ResultPartition, ResultPartitionConfig, ResultPartitionId,
    ResultPartitionType, GATE_FREE, GATE_OWNED_BY, PARTITION_RELEASED,
};
use shmflow::ring::{ChannelReader, ChannelWriter, Descriptor};
use shmflow::sync::Ordering;
use shmflow::{Error, ShuffleEnvironment};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn arena() -> Arc<Arena> {
    Arc::new(
        Arena::heap(&ArenaConfig {
            segment_size: 4096,
            segment_count: 32,
            ring_capacity: 16,
            max_channels: 8,
            max_partitions: 4,
            max_gates: 4,
            max_channels_per_gate: 64,
            max_workers: 4,
            max_tasks: 4,
        })
        .unwrap(),
    )
}

/// The pid of a process that ran and was reaped: nothing runs under it (short of pid
/// reuse within this test).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().expect("`true` runs");
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Makes every record of this process in `arena` name `pid` instead, as if this process
/// were `pid` and had died: its liveness record (slot `slot`), segments, channel blocks it
/// claimed, directory entries and gate blocks (but gate block `keep_gate`, a gate of the
/// live consumer played by this test).
fn die_as(arena: &Arena, slot: u32, pid: u32, keep_gate: Option<usize>) {
    let me = std::process::id();
    // Relaxed (all): single-threaded test set-up.
    arena.workers()[slot as usize].pid.store(pid, Ordering::Relaxed);
    arena.workers()[slot as usize].start_ticks.store(0, Ordering::Relaxed);
    for c in arena.controls() {
        if c.holder_pid.load(Ordering::Relaxed) == me {
            c.holder_pid.store(pid, Ordering::Relaxed);
        }
    }
    for b in arena.channels() {
        if b.claimer() == me {
            b.record_claimer(pid);
        }
        if b.peek_state() == CHANNEL_PROBING_BY | me {
            b.set_state_unshared(CHANNEL_PROBING_BY | pid);
        }
    }
    for e in arena.partitions() {
        if e.producer_pid.load(Ordering::Relaxed) == me {
            e.producer_pid.store(pid, Ordering::Relaxed);
        }
    }
    for (i, g) in arena.gates().iter().enumerate() {
        if g.state.load(Ordering::Relaxed) == GATE_OWNED_BY | me && Some(i) != keep_gate {
            g.state.store(GATE_OWNED_BY | pid, Ordering::Relaxed);
        }
    }
}

/// Reads `gate` until it fails: the records read and the error.
fn read_until_error(gate: &mut SingleInputGate) -> (u32, Error) {
    let mut records = 0;
    loop {
        match gate.next(Some(Duration::from_secs(10))) {
            Ok(shmflow::gate::GateItem::Record { .. }) => records += 1,
            Ok(_) => {}
            Err(e) => return (records, e),
        }
    }
}

#[test]
fn a_slot_held_by_a_live_process_is_refused_naming_it_and_a_dead_ones_only_after_reclamation() {
    let _serial = common::serial();
    let arena = arena();
    let holder = common::KillOnDrop(Command::new("sleep").arg("30").spawn().expect("`sleep` runs"));
    let pid = holder.id();
    let r = &arena.workers()[1];
    // Relaxed (all but the state): published by the Release store of the state.
    r.pid.store(pid, Ordering::Relaxed);
    r.start_ticks.store(process_start_ticks(pid).expect("a running process"), Ordering::Relaxed);
    r.state.store(liveness::WORKER_ALIVE, Ordering::Release);

    let e = liveness::register(&arena, 1).unwrap_err();
    assert!(matches!(e, Error::SlotHeld { slot: 1, pid: p, .. } if p == pid), "{e}");
    let e = ShuffleEnvironment::register(arena.clone(), 1).unwrap_err();
    assert!(e.to_string().contains(&format!("pid {pid}")) && e.to_string().contains("live"), "{e}");
    // Relaxed: the record still names the live holder.
    assert_eq!(r.pid.load(Ordering::Relaxed), pid, "a refused register must not touch the record");

    drop(holder); // killed and reaped
    let e = liveness::register(&arena, 1).unwrap_err();
    assert!(e.to_string().contains("not reclaimed"), "a dead holder's slot is taken only by reclamation: {e}");
    register_worker(&arena, 1).expect("reclaimed, then registered");
    // Relaxed: read back after our own registration.
    assert_eq!(r.pid.load(Ordering::Relaxed), std::process::id());
    assert_eq!(liveness::liveness(&arena, 1), liveness::Liveness::Alive);
    liveness::register(&arena, 1).expect("registering again in our own slot");
}

/// Makes worker slot `slot` of `arena` look held by a process that had this process's pid
/// before it (pids are recycled): our pid, another start time, in state `state`.
fn held_by_our_pids_predecessor(arena: &Arena, slot: u32, state: u32) {
    let me = std::process::id();
    let ticks = process_start_ticks(me).expect("our own start time");
    let r = &arena.workers()[slot as usize];
    // Relaxed (all but the state): published by the Release store of the state.
    r.pid.store(me, Ordering::Relaxed);
    r.start_ticks.store(ticks.wrapping_sub(1).max(1), Ordering::Relaxed);
    r.state.store(state, Ordering::Release);
}

#[test]
fn a_slot_of_a_process_that_had_our_pid_before_us_is_neither_ours_nor_alive() {
    let _serial = common::serial();
    for state in [liveness::WORKER_ALIVE, liveness::WORKER_DEAD, liveness::WORKER_EXITED] {
        let arena = arena();
        // Every slot but 3 is held by our pid's dead predecessor; 3 is taken by a live
        // process, so `claim` has no free slot to fall back on.
        for slot in 0..3 {
            held_by_our_pids_predecessor(&arena, slot, state);
        }
        let holder = common::KillOnDrop(Command::new("sleep").arg("30").spawn().expect("`sleep` runs"));
        let r3 = &arena.workers()[3];
        // Relaxed (all but the state): published by the Release store of the state.
        r3.pid.store(holder.id(), Ordering::Relaxed);
        r3.start_ticks.store(process_start_ticks(holder.id()).expect("a running process"), Ordering::Relaxed);
        r3.state.store(liveness::WORKER_ALIVE, Ordering::Release);

        let e = liveness::register(&arena, 0).unwrap_err();
        assert!(e.to_string().contains("not reclaimed"), "state {state}: a predecessor's slot is not ours: {e}");
        assert!(
            matches!(liveness::claim(&arena), Err(Error::OutOfSlots(_))),
            "state {state}: claim must not take a slot of our pid's predecessor"
        );
        let want = if state == liveness::WORKER_EXITED {
            liveness::Liveness::Exited
        } else {
            liveness::Liveness::Dead { pid: std::process::id() }
        };
        assert_eq!(liveness::liveness(&arena, 0), want, "state {state}");
        liveness::mark_exited(&arena, 1);
        // Relaxed: read back in this thread.
        assert_eq!(arena.workers()[1].state.load(Ordering::Relaxed), state, "only its own process marks a slot");
        assert!(!liveness::attached_pids(&arena).contains(&std::process::id()), "state {state}");
        drop(holder);
    }
}

#[test]
fn check_counts_a_segment_whose_holders_pid_now_runs_another_process_as_held_by_a_dead_one() {
    use shmflow::memory::Owner;
    let _serial = common::serial();
    let arena = arena();
    // A live process plays the one that got the dead holder's pid: worker slot 1 names the
    // pid with another start time (the dead holder's), and a segment off the stack is held
    // by that pid.
    let other = common::KillOnDrop(Command::new("sleep").arg("30").spawn().expect("`sleep` runs"));
    let pid = other.id();
    let ticks = process_start_ticks(pid).expect("a running process");
    let r = &arena.workers()[1];
    // Relaxed (all but the state): published by the Release store of the state.
    r.pid.store(pid, Ordering::Relaxed);
    r.start_ticks.store(ticks.wrapping_sub(1).max(1), Ordering::Relaxed);
    r.generation.store(1, Ordering::Relaxed);
    r.state.store(liveness::WORKER_ALIVE, Ordering::Release);
    let s = arena.free_stack().pop().unwrap().expect("a free segment");
    let ctl = &arena.controls()[s as usize];
    // Relaxed (both): single-threaded test set-up.
    ctl.owner.store(Owner::Writer { pool: 0, worker: 1 }.pack(), Ordering::Relaxed);
    ctl.holder_pid.store(pid, Ordering::Relaxed);
    let c = check::check(&arena);
    assert_eq!(c.owner_dead, 1, "the holder's pid runs, but as another process: {c:?}");
    assert!(!liveness::holder_running(&arena, pid));
    // With the live process's own start time the holder is alive.
    // Relaxed: as above.
    r.start_ticks.store(ticks, Ordering::Relaxed);
    assert_eq!(check::check(&arena).owner_dead, 0);
    assert!(liveness::holder_running(&arena, pid));
    // A registered slot with generation 0 is reported.
    // Relaxed: as above.
    r.generation.store(0, Ordering::Relaxed);
    assert!(check::check(&arena).problems.iter().any(|p| p.contains("generation 0")));
    drop(other);
}

#[test]
fn every_registration_and_every_reclamation_bumps_the_slots_generation() {
    let _serial = common::serial();
    let arena = arena();
    let g0 = liveness::generation(&arena, 0);
    liveness::register(&arena, 0).unwrap();
    let g1 = liveness::generation(&arena, 0);
    assert_ne!(g1, g0);
    assert_ne!(g1, 0, "a registered slot's generation is never 0");
    liveness::mark_exited(&arena, 0);
    assert_eq!(liveness::generation(&arena, 0), g1, "leaving keeps the generation: the state says it");
    liveness::register(&arena, 0).unwrap();
    let g2 = liveness::generation(&arena, 0);
    assert!(g2 != g1 && g2 != 0, "registering again in our own slot is a new holder: {g1} then {g2}");
    die_as(&arena, 0, dead_pid(), None);
    reclaim_dead_peers(&arena).unwrap();
    // Relaxed: read after the reclamation in this thread.
    assert_eq!(arena.workers()[0].state.load(Ordering::Relaxed), liveness::WORKER_FREE);
    let g3 = liveness::generation(&arena, 0);
    assert!(g3 != g2 && g3 != 0, "freeing bumps it: {g2} then {g3}");
    assert_eq!(liveness::generation(&arena, 99), 0, "out of range");
}

#[test]
fn a_dead_producers_segments_blocks_entries_and_gates_come_back_online() {
    let arena = arena();
    liveness::register(&arena, 0).unwrap();
    let id = ResultPartitionId::new(7, 0);
    let cfg = ResultPartitionConfig::new(id, ResultPartitionType::Pipelined, 2);
    let mut p = ResultPartition::new(arena.clone(), &cfg).unwrap(); // notify set: gate block 0
                                                                    // A live consumer of subpartition 0 (this process; gate block 1); nobody reads 1.
    let mut gate =
        SingleInputGate::new(arena.clone(), &InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }]))
            .unwrap();
    p.emit(&b"left behind"[..], 0).unwrap();
    p.flush_all().unwrap(); // a segment in flight to the live reader
                            // It died mid-way through creating a second partition: one block PROBING, one CLAIMED.
                            // Relaxed: single-threaded test.
    let free: Vec<usize> =
        (0..arena.channels().len()).filter(|&c| arena.channels()[c].peek_state() == CHANNEL_FREE).collect();
    for (k, &c) in free.iter().take(2).enumerate() {
        let b = &arena.channels()[c];
        // Relaxed (both): test set-up, single-threaded.
        b.set_state_unshared(if k == 0 { CHANNEL_PROBING_BY | std::process::id() } else { CHANNEL_CLAIMED });
        b.record_claimer(std::process::id());
    }
    std::mem::forget(p); // death: nothing of the process-local state is dropped
    let dead = dead_pid();
    die_as(&arena, 0, dead, Some(1));
    assert!(check::check(&arena).owner_dead > 0, "check sees segments of a dead process");

    let report = reclaim_dead_peers(&arena).unwrap();
    assert_eq!(report.reclaimed.len(), 1, "{report:?}");
    assert_eq!(report.reclaimed[0].pid, dead);
    assert_eq!((report.segments_orphaned, report.channels_failed), (1, 1), "the live reader's: {report:?}");
    assert!(report.segments_freed > 0 && report.channels_closed >= 3, "{report:?}");
    let c = check::check(&arena);
    assert_eq!(c.segments - c.free_walked, 1, "only the segment the live reader holds: {c:?}");
    // The live reader reads what was left, then learns that its producer died.
    let (records, err) = read_until_error(&mut gate);
    assert_eq!(records, 1);
    assert!(matches!(err, Error::PeerDied { role: "producer", pid, .. } if pid == dead), "{err}");
    drop(gate); // hands the channel on: settled, its segment freed
    let c = check::check(&arena);
    assert!(c.all_free() && c.owner_dead == 0, "{c:?}");
    for b in arena.channels() {
        // Relaxed: after the reclamation, single-threaded.
        let st = b.peek_state();
        assert!(st == CHANNEL_FREE || st == CHANNEL_CLOSED, "channel state {st} left behind");
    }
    // Relaxed (all): as above.
    assert!(arena.partitions().iter().all(|e| matches!(e.state.load(Ordering::Relaxed), 0 | PARTITION_RELEASED)));
    assert!(arena.gates().iter().all(|g| g.state.load(Ordering::Relaxed) == GATE_FREE));
    assert_eq!(arena.workers()[0].state.load(Ordering::Relaxed), liveness::WORKER_FREE);
    // A second pass finds nothing; the same partition id can be registered again.
    let again = reclaim_dead_peers(&arena).unwrap();
    assert_eq!(again, Default::default(), "reclamation is idempotent");
    ResultPartition::new(arena.clone(), &cfg).expect("the directory entry and channel blocks are free again");
}

#[test]
fn a_producer_that_failed_its_partition_then_died_is_reported_as_failed_after_reclamation() {
    let arena = arena();
    liveness::register(&arena, 0).unwrap();
    let id = ResultPartitionId::new(9, 0);
    let cfg = ResultPartitionConfig::new(id, ResultPartitionType::Pipelined, 1);
    let mut p = ResultPartition::new(arena.clone(), &cfg).unwrap(); // notify set: gate block 0
    let mut gate =
        SingleInputGate::new(arena.clone(), &InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }]))
            .unwrap();
    p.emit(&b"before the failure"[..], 0).unwrap();
    p.flush_all().unwrap();
    p.fail(); // the task failed: its channels say PRODUCER_FAILED
    std::mem::forget(p); // then its process exited without leaving its slot
    let dead = dead_pid();
    die_as(&arena, 0, dead, Some(1));
    let report = reclaim_dead_peers(&arena).unwrap();
    assert_eq!((report.reclaimed.len(), report.channels_failed), (1, 1), "{report:?}");
    let (records, err) = read_until_error(&mut gate);
    assert_eq!(records, 1, "what was flushed before the failure is still read");
    assert!(matches!(err, Error::ProducerFailed { .. }), "the failure is the cause, not the exit after it: {err}");
    drop(gate);
    let c = check::check(&arena);
    assert!(c.all_free() && c.owner_dead == 0, "{c:?}");
}

/// A producer with one broadcast segment published on channels 0 and 1 of `arena`, and the
/// two readers; returns (pool, writers, readers, segment).
fn broadcast_one(arena: &Arc<Arena>) -> (LocalBufferPool, Vec<ChannelWriter>, Vec<ChannelReader>, u32) {
    let config = LocalPoolConfig { min: 1, max: 4, max_per_channel: 4, channels: 2 };
    let mut pool = LocalBufferPool::new(arena.clone(), 0, 0, config).unwrap();
    let mut writers: Vec<ChannelWriter> = (0..2).map(|c| ChannelWriter::open(arena.clone(), c).unwrap()).collect();
    let readers: Vec<ChannelReader> = (0..2).map(|c| ChannelReader::open(arena.clone(), c).unwrap()).collect();
    for (w, r) in writers.iter_mut().zip(&readers) {
        r.grant(2).unwrap();
        w.reclaim(&mut pool).unwrap();
    }
    let mut b = BufferBuilder::new(pool.request(None).unwrap().unwrap(), 2);
    b.append(b"for everyone");
    b.finish();
    let idx = b.index();
    drop(b);
    pool.expect_readers(idx, 2);
    for w in &mut writers {
        w.publish(Descriptor::Buffer(idx)).unwrap();
    }
    (pool, writers, readers, idx)
}

/// Reader `r` reads its descriptor and lets go of the segment.
fn read_and_release(r: &mut ChannelReader) {
    let Some(Descriptor::Buffer(i)) = r.poll().unwrap() else { panic!("a buffer descriptor") };
    drop(r.consumer(i));
}

#[test]
fn a_broadcast_refcount_above_its_fanout_is_a_violation_naming_the_peer_not_a_leak() {
    let arena = arena();
    let (mut pool, mut writers, mut readers, idx) = broadcast_one(&arena);
    read_and_release(&mut readers[0]);
    // A faulty peer adds a reader that does not exist.
    // Relaxed: the peer's scribble.
    arena.controls()[idx as usize].refcount.fetch_add(1, Ordering::Relaxed);
    read_and_release(&mut readers[1]);
    writers[0].reclaim(&mut pool).expect("the first release is in order");
    assert_eq!(pool.outstanding(), 1, "one reader still to release");
    let e = writers[1].reclaim(&mut pool).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, Error::ProtocolViolation { .. })
            && text.contains("above its fanout")
            && text.contains("consumer pid"),
        "{text}"
    );
    assert_eq!(pool.outstanding(), 0, "the segment came back all the same (no leak)");
}

#[test]
fn a_broadcast_refcount_below_its_fanout_is_reported_and_the_segment_waits_for_every_reader() {
    let arena = arena();
    let (mut pool, mut writers, mut readers, idx) = broadcast_one(&arena);
    // A faulty peer drops a reader's share: the count reaches zero one release early.
    // Relaxed: the peer's scribble.
    arena.controls()[idx as usize].refcount.fetch_sub(1, Ordering::Relaxed);
    read_and_release(&mut readers[0]);
    writers[0].reclaim(&mut pool).unwrap();
    assert_eq!(pool.outstanding(), 1, "not recycled while reader 1 still holds it (no early reuse)");
    read_and_release(&mut readers[1]);
    let e = readers[1].poll().unwrap_err();
    assert!(matches!(e, Error::ProtocolViolation { .. }), "the reader that found the count at zero says so: {e}");
    writers[1].reclaim(&mut pool).unwrap();
    assert_eq!(pool.outstanding(), 0, "recycled once, after both readers (no double free)");
}

#[test]
fn a_release_of_a_segment_not_in_flight_on_the_channel_names_the_consumer() {
    let arena = arena();
    let (mut pool, mut writers, mut readers, idx) = broadcast_one(&arena);
    read_and_release(&mut readers[0]);
    writers[0].reclaim(&mut pool).unwrap();
    // Another segment in flight on channel 0, then its consumer releases the first again.
    let mut b = BufferBuilder::new(pool.request(Some(0)).unwrap().unwrap(), 1);
    b.finish();
    writers[0].publish(Descriptor::Buffer(b.index())).unwrap();
    let mut c = readers[0].consumer(idx);
    drop(c.poll());
    drop(c);
    let e = writers[0].reclaim(&mut pool).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("not in flight") && text.contains(&format!("consumer pid {}", std::process::id())), "{text}");
}

#[test]
fn a_producer_whose_consumer_never_attaches_fails_naming_the_subpartition() {
    let arena = arena();
    let id = ResultPartitionId::new(9, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let a = arena.clone();
    // A thread, so that a producer that blocks forever fails the test instead of hanging it.
    std::thread::spawn(move || {
        let mut cfg = ResultPartitionConfig::new(id, ResultPartitionType::PipelinedBounded, 2);
        cfg.attach_timeout = Duration::from_millis(300);
        let mut p = ResultPartition::new(a.clone(), &cfg).unwrap();
        // A consumer for subpartition 0 only (the one for 1 asked for the wrong one).
        let gate =
            SingleInputGate::new(a, &InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }])).unwrap();
        let r = (|| {
            for _ in 0..10_000 {
                p.emit(&b"to the one who came"[..], 0)?;
                p.emit(&b"to the one who did not"[..], 1)?;
            }
            Ok::<(), Error>(())
        })();
        drop(gate);
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(Duration::from_secs(60)).expect("the producer gave up instead of blocking forever");
    match r {
        Err(e @ Error::NoConsumer { subpartition: 1, .. }) => {
            // The message says which subpartition of which partition, and how long.
            let msg = e.to_string();
            assert!(msg.contains(&format!("subpartition 1 of partition {id} within ")), "{msg}");
        }
        other => panic!("expected NoConsumer for subpartition 1, got {other:?}"),
    }
}

#[test]
fn a_segment_its_taker_died_with_before_naming_itself_holder_is_still_reclaimed() {
    use shmflow::memory::Owner;
    let arena = arena();
    liveness::register(&arena, 0).unwrap();
    // The network pool's request, cut by a SIGKILL after the owner swap and before the
    // holder store: the segment is off the free stack, its pool names the dead worker's
    // slot, its holder is still the previous one (pid 1, alive).
    let s = arena.free_stack().pop().unwrap().expect("a free segment");
    let ctl = &arena.controls()[s as usize];
    // Relaxed (both): single-threaded test set-up.
    ctl.owner.store(Owner::Pool { pool: 1, worker: 0 }.pack(), Ordering::Relaxed);
    ctl.holder_pid.store(1, Ordering::Relaxed);
    let dead = dead_pid();
    die_as(&arena, 0, dead, None);
    let report = reclaim_dead_peers(&arena).unwrap();
    assert_eq!(report.reclaimed.len(), 1, "{report:?}");
    assert_eq!(report.segments_freed, 1, "{report:?}");
    let c = check::check(&arena);
    assert!(c.all_free(), "{c:?}");
}

#[test]
fn a_broadcast_segment_its_producer_died_publishing_comes_back_once_every_reader_left() {
    let arena = arena();
    liveness::register(&arena, 0).unwrap();
    // The producer opens a broadcast segment for channels 0 and 1 and is killed between the
    // two publishes (`open_broadcast`): the segment counts two readers, only channel 0's
    // ring names it, and channel 1's reader never sees it (the fault matrix's trial 68 of
    // seed 1796648920035926584, Producer/Broadcast killed by the parent).
    let config = LocalPoolConfig { min: 1, max: 4, max_per_channel: 4, channels: 2 };
    let mut pool = LocalBufferPool::new(arena.clone(), 0, 0, config).unwrap();
    let mut writers: Vec<ChannelWriter> = (0..2).map(|c| ChannelWriter::open(arena.clone(), c).unwrap()).collect();
    let mut readers: Vec<ChannelReader> = (0..2).map(|c| ChannelReader::open(arena.clone(), c).unwrap()).collect();
    for (w, r) in writers.iter_mut().zip(&readers) {
        r.grant(2).unwrap();
        w.reclaim(&mut pool).unwrap();
    }
    let mut b = BufferBuilder::new(pool.request(None).unwrap().unwrap(), 2);
    b.append(b"half published");
    let idx = b.index();
    pool.expect_readers(idx, 2);
    writers[0].publish(Descriptor::Buffer(idx)).unwrap();
    std::mem::forget((pool, writers, b)); // death: nothing of the process-local state is dropped
    for c in 0..2 {
        // As `claim_channels` would have recorded it (the writers were opened directly).
        arena.channels()[c].record_claimer(std::process::id());
    }
    let dead = dead_pid();
    die_as(&arena, 0, dead, None);
    // The readers are this process (alive): the segment is orphaned to them.
    let report = reclaim_dead_peers(&arena).unwrap();
    assert_eq!((report.reclaimed.len(), report.channels_failed), (1, 2), "{report:?}");
    assert_eq!(report.segments_orphaned, 1, "{report:?}");
    // Reader 0 reads it and lets go; reader 1 never had it. Both leave.
    read_and_release(&mut readers[0]);
    for r in readers.drain(..) {
        let c = r.close();
        drop(r);
        assert!(c, "the dead producer's channel is handed on to be settled");
    }
    let settled = reclaim_dead_peers(&arena).unwrap();
    assert_eq!(settled.channels_closed, 2, "{settled:?}");
    let c = check::check(&arena);
    assert!(c.all_free() && c.owner_dead == 0, "the broadcast segment is back, once: {settled:?} {c:?}");
    // Nothing is freed twice: the stop-the-world pass finds nothing left to do.
    let again = reclaim_dead_peers(&arena).unwrap();
    assert_eq!(again, Default::default(), "{again:?}");
    let rec = shmflow::memory::recovery::reclaim_quiescent(&arena).unwrap();
    assert_eq!(rec.segments, 0, "{rec:?}");
}

#[test]
fn a_segment_its_taker_died_with_between_the_pop_and_the_owner_swap_is_reclaimed_online() {
    use shmflow::buffer::NetworkBufferPool;
    use shmflow::memory::{Owner, TakeStop};
    // The network pool's request, cut by a SIGKILL at each step of taking a segment: the
    // free stack's pop, then the owner swap. Before this closed, a kill right after the pop
    // left the segment free but off the stack: online reclamation never found it.
    for (stop, taken) in [
        (TakeStop::AfterAttempt, false),
        (TakeStop::AfterPop, true),
        (TakeStop::AfterWon, true),
        (TakeStop::AfterOwner, true),
    ] {
        let arena = arena();
        liveness::register(&arena, 0).unwrap();
        let pool = NetworkBufferPool::new(arena.clone());
        let before = pool.available();
        let got = pool.request_until(Owner::Pool { pool: 1, worker: 0 }, 2, stop).unwrap();
        assert!(got.is_none(), "{stop:?}: the taker died");
        assert_eq!(pool.available(), if taken { before - 1 } else { before }, "{stop:?}");
        let dead = dead_pid();
        die_as(&arena, 0, dead, None);
        let report = reclaim_dead_peers(&arena).unwrap();
        assert_eq!(report.reclaimed.len(), 1, "{stop:?}: {report:?}");
        assert_eq!(report.segments_freed, u32::from(taken), "{stop:?}: {report:?}");
        let c = check::check(&arena);
        assert!(c.all_free() && c.problems.is_empty(), "{stop:?}: {c:?}");
        // Exactly once: nothing left for the stop-the-world pass, nothing on the stack twice.
        let rec = shmflow::memory::recovery::reclaim_quiescent(&arena).unwrap();
        assert_eq!(rec.segments, 0, "{stop:?}: {rec:?}");
        let mut seen = std::collections::BTreeSet::new();
        while let Some(i) = arena.free_stack().pop().unwrap() {
            assert!(seen.insert(i), "{stop:?}: segment {i} on the free stack twice");
        }
        assert_eq!(seen.len() as u32, arena.segment_count(), "{stop:?}");
    }
}

#[test]
fn a_segment_its_holder_died_giving_back_is_reclaimed_online_once() {
    use shmflow::buffer::NetworkBufferPool;
    use shmflow::memory::{Owner, TakeStop};
    // Giving a segment back is two words too: its owner marked free, then the push. A
    // SIGKILL in between left it free but off the stack (found by the kill test of
    // tests/fault_matrix.rs); after the push, the stack has it and nothing more is due.
    for (stop, off_stack) in [(TakeStop::BeforePush, true), (TakeStop::AfterPush, false)] {
        let arena = arena();
        liveness::register(&arena, 0).unwrap();
        let pool = NetworkBufferPool::new(arena.clone());
        let s = pool.request(Owner::Pool { pool: 1, worker: 0 }, 2).unwrap().expect("a free segment");
        let before = pool.available();
        s.recycle_until(stop);
        assert_eq!(pool.available(), if off_stack { before } else { before + 1 }, "{stop:?}");
        let dead = dead_pid();
        die_as(&arena, 0, dead, None);
        let report = reclaim_dead_peers(&arena).unwrap();
        assert_eq!(report.reclaimed.len(), 1, "{stop:?}: {report:?}");
        assert_eq!(report.segments_freed, u32::from(off_stack), "{stop:?}: {report:?}");
        let c = check::check(&arena);
        assert!(c.all_free() && c.problems.is_empty(), "{stop:?}: {c:?}");
        let rec = shmflow::memory::recovery::reclaim_quiescent(&arena).unwrap();
        assert_eq!(rec.segments, 0, "{stop:?}: {rec:?}");
    }
}

#[test]
fn a_flink_transport_segment_its_tm_died_taking_or_giving_back_is_reclaimed_online_once() {
    use shmflow::buffer::NetworkBufferPool;
    use shmflow::memory::recovery::free_own_segment_until;
    use shmflow::memory::{Owner, TakeStop};
    // The ffi's acquire (a writer segment of the TM's slot through `request`) and its
    // release (`free_own_segment_if`, for one it acquired or received): a TM killed at
    // each step leaves nothing lost and nothing on the stack twice after online reclamation.
    let writer = Owner::Writer { pool: 0, worker: 0 };
    let received = Owner::InFlight { channel: 3, fanout: 1 };
    let takes = [(TakeStop::AfterPop, 1), (TakeStop::AfterWon, 1), (TakeStop::AfterOwner, 1)];
    let gives = [(TakeStop::AfterOwner, 1), (TakeStop::BeforePush, 1), (TakeStop::AfterPush, 0)];
    let cases = takes
        .iter()
        .map(|&(s, n)| (true, writer, s, n))
        .chain([writer, received].into_iter().flat_map(|o| gives.iter().map(move |&(s, n)| (false, o, s, n))));
    for (take, owner, stop, freed) in cases {
        let what = format!("{}, {owner:?}, {stop:?}", if take { "acquire" } else { "release" });
        let arena = arena();
        liveness::register(&arena, 0).unwrap();
        let pool = NetworkBufferPool::new(arena.clone());
        let before = pool.available();
        if take {
            assert!(pool.request_until(writer, 0, stop).unwrap().is_none(), "{what}: the taker died");
        } else {
            let s = pool.request(writer, 0).unwrap().expect("a free segment").into_index();
            // Relaxed: this test alone uses the arena.
            arena.controls()[s as usize].owner.store(owner.pack(), Ordering::Relaxed);
            assert!(free_own_segment_until(&arena, s, owner.pack(), 0, stop), "{what}");
        }
        assert_eq!(pool.available(), before - freed, "{what}");
        die_as(&arena, 0, dead_pid(), None);
        let report = reclaim_dead_peers(&arena).unwrap();
        assert_eq!(report.reclaimed.len(), 1, "{what}: {report:?}");
        assert_eq!(report.segments_freed, freed, "{what}: {report:?}");
        let c = check::check(&arena);
        assert!(c.all_free() && c.problems.is_empty(), "{what}: {c:?}");
        let rec = shmflow::memory::recovery::reclaim_quiescent(&arena).unwrap();
        assert_eq!(rec.segments, 0, "{what}: {rec:?}");
        let mut seen = std::collections::BTreeSet::new();
        while let Some(i) = arena.free_stack().pop().unwrap() {
            assert!(seen.insert(i), "{what}: segment {i} on the free stack twice");
        }
        assert_eq!(seen.len() as u32, arena.segment_count(), "{what}");
    }
}

#[test]
fn a_process_that_left_its_slot_no_longer_writes_the_slots_lane() {
    use shmflow::buffer::NetworkBufferPool;
    use shmflow::memory::{Owner, TakeStop};
    // After EXITED a newcomer may hold the slot (and its lane) while this process runs on:
    // a take stopped after the lane's ATTEMPT writes nothing there any more (no lane).
    let arena = arena();
    liveness::register(&arena, 0).unwrap();
    liveness::mark_exited(&arena, 0);
    let pool = NetworkBufferPool::new(arena.clone());
    let got = pool.request_until(Owner::Pool { pool: 1, worker: 0 }, 2, TakeStop::AfterAttempt).unwrap();
    // Relaxed: this test alone uses the arena.
    assert_eq!(arena.workers()[0].taking.load(Ordering::Relaxed), 0, "the exited slot's lane was written");
    assert!(got.is_some(), "without a lane the take runs to the end");
}
