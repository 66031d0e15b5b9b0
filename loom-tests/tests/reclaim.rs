//! Loom models of online reclamation (`partition::reclaim`): the two races the design
//! names, on the shipping code.
//!
//! 1. `reclaimer_and_live_reader_free_a_segment_once`: a producer process "dies" (the model
//!    thread that plays it stops without cleaning up, and its liveness record names a pid
//!    that does not exist) after publishing one segment to a consumer that is alive. A
//!    reclaimer thread runs `reclaim_dead_peers` while the consumer thread reads the
//!    segment and lets go of it. The reclaimer orphans the segment (`fetch_or` on its
//!    refcount) and the reader's release (`fetch_sub`) frees it when it comes second; when
//!    the reader came first, the reclaimer frees it. Afterwards the reclaimer reuses
//!    whatever it can pop from the free stack, writing every byte.
//! 2. `two_reclaimers_reclaim_once`: two threads run `reclaim_dead_peers` at once over a
//!    dead producer that held one segment in its pool and one in flight to a consumer that
//!    never attached.
//!
//! 3. `readers_leaving_at_once_free_a_half_published_broadcast_segment_once`: a producer
//!    dies between publishing a broadcast segment on channel 0 and on channel 1 (the
//!    segment counts two readers, one ring names it) and is reclaimed; then both readers
//!    leave at once, reader 0 after reading and releasing it: each close hands its channel
//!    on, and each settler, after its CLOSED, looks for another of the producer's channels
//!    with a reader. The one that comes last frees the segment.
//!
//! 4. `settlers_racing_a_reuse_free_a_broadcast_segment_once`: as in model 3, but reader 0
//!    has read and released the segment before the race, and a third thread plays a live
//!    producer that takes whatever comes back on the free stack and publishes it again on
//!    channel 0 with fanout 2: the same owner word as the dead producer's use. Both
//!    channels' settlers may find no unsettled channel (the fence promises at least one);
//!    if one frees the segment and it is reused before the other decides, the other must
//!    not free the new use.
//!
//! What a failure means: in model 1, a witness-cell race is a segment freed (and reused by
//! the reclaimer) while the reader still reads it; a free stack without the segment is a
//! leak (neither side freed it), one with it twice a double free. In model 2, both or
//! neither reporting the dead process means the liveness CAS does not make exactly one
//! reclaimer; a wrong free-stack content means a segment freed twice or not at all.
//!
//! Weakenings checked by editing the shipped code (see the commit message): removing the
//! orphan hand-off from `Lease`'s drop (the last reader does not free) leaks in model 1;
//! deciding in `orphan_segment` from a load instead of the `fetch_or` leaks in model 1;
//! replacing `begin_reclaim`'s CAS with a load and a store lets both reclaimers report the
//! process in model 2; removing the SeqCst fence after CLOSED in `close_block` lets both
//! settlers miss each other's CLOSED and leak the segment in model 3; letting the owner
//! word's CAS decide in `free_shared_leftovers` (the code before the refcount CAS) frees
//! the reused segment a second time in model 4 (it is on the free stack while the new
//! producer holds it).
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::{BufferBuilder, LocalBufferPool, LocalPoolConfig};
use shmflow::memory::{liveness, Arena, ArenaConfig, Owner};
use shmflow::partition::reclaim::settle_if_orphaned;
use shmflow::partition::reclaim_dead_peers;
use shmflow::ring::{close_channel, ChannelReader, ChannelWriter, Descriptor};
use shmflow::sync::Ordering;
use std::sync::Arc;

/// A pid above Linux's largest (`pid_max` is at most 2^22): no such process runs.
const DEAD_PID: u32 = 0x3fff_fff0;

const PAYLOAD: [u8; 6] = [1, 2, 3, 4, 5, 6];

/// Plays the producer process in slot 0 up to its death: registers, takes `segments` from
/// its pool, publishes the first on channel 0 (granted one credit by a reader that then
/// goes away without reading), keeps the others cached, and "dies": nothing of its
/// process-local state is dropped, and every record that names its pid names `DEAD_PID`.
/// Returns the published segment.
fn dead_producer(arena: &Arc<Arena>, segments: u32) -> u32 {
    liveness::register(arena, 0).expect("slot 0 is free");
    let config = LocalPoolConfig { min: segments, max: segments, max_per_channel: segments, channels: 1 };
    let mut pool = LocalBufferPool::new(Arc::clone(arena), 0, 0, config).expect("the arena has the segments");
    let mut writer = ChannelWriter::open(Arc::clone(arena), 0).expect("channel 0 exists");
    {
        let granter = ChannelReader::open(Arc::clone(arena), 0).expect("channel 0 exists");
        granter.grant(1).expect("room in the credit ring");
    }
    writer.reclaim(&mut pool).expect("a well-formed grant");
    let segment = pool.request(Some(0)).expect("pool not corrupt").expect("a cached segment");
    let index = segment.index();
    let mut builder = BufferBuilder::new(segment, 1);
    assert_eq!(builder.append(&PAYLOAD), PAYLOAD.len());
    builder.finish();
    writer.publish(Descriptor::Buffer(index)).expect("credit and room");
    // Death: no destructor runs.
    std::mem::forget(builder);
    std::mem::forget(writer);
    std::mem::forget(pool);
    // Relaxed (all): set-up before any model thread starts (spawn orders it).
    arena.workers()[0].pid.store(DEAD_PID, Ordering::Relaxed);
    arena.channels()[0].record_claimer(DEAD_PID);
    arena.channels()[0].record_consumer(0);
    for c in arena.controls() {
        if c.holder_pid.load(Ordering::Relaxed) != 0 {
            c.holder_pid.store(DEAD_PID, Ordering::Relaxed);
        }
    }
    index
}

// Count, outside the model (plain std atomics, not loom's), the executions in which the
// reclaimer freed the segment itself (the reader had let go first) and those in which it
// left that to the reader, to prove the search reached both orders.
#[allow(clippy::disallowed_types)]
static RECLAIMER_FREED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[allow(clippy::disallowed_types)]
static READER_FREED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Pops everything on the free stack (sorted).
fn drain_free(arena: &Arena) -> Vec<u32> {
    let mut out = Vec::new();
    while let Some(i) = arena.free_stack().pop().expect("an intact free stack") {
        assert!(out.len() < 8, "a cycle on the free stack: {out:?}");
        out.push(i);
    }
    out.sort_unstable();
    out
}

#[test]
fn reclaimer_and_live_reader_free_a_segment_once() {
    common::check("reclaim::reclaimer_and_live_reader_free_a_segment_once", None, || {
        let arena = common::tiny_arena();
        let index = dead_producer(&arena, 1);
        // The consumer is alive (this process) and attached.
        // Relaxed: set-up before the threads start.
        arena.channels()[0].record_consumer(std::process::id());

        let reader = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let mut reader = ChannelReader::open(arena, 0).expect("channel 0 exists");
                let Some(Descriptor::Buffer(i)) = reader.poll().expect("a valid descriptor") else {
                    panic!("the published segment's descriptor is in the ring")
                };
                assert_eq!(i, index);
                let mut consumer = reader.consumer(i);
                let view = consumer.poll().expect("a valid position").expect("published bytes");
                assert_eq!(&view[..], &PAYLOAD, "read in place while the reclaimer runs");
                drop(view);
                drop(consumer); // the release: frees the segment when orphaned and last
            })
        };
        let reclaimer = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let report = reclaim_dead_peers(&arena).expect("reclamation");
                assert_eq!(report.reclaimed.len(), 1, "the dead producer is reclaimed: {report:?}");
                assert_eq!(report.segments_freed + report.segments_orphaned, 1, "{report:?}");
                let order = if report.segments_freed == 1 { &RECLAIMER_FREED } else { &READER_FREED };
                // Relaxed: a statistic outside the model.
                order.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A live process reuses what came back at once: the witness cells see a
                // write racing with the reader's reads if the segment came back too early.
                if let Some(i) = arena.free_stack().pop().expect("an intact free stack") {
                    // SAFETY: popped from the free stack, so no one else may use it.
                    let mut seg = unsafe { shmflow::memory::MemorySegment::from_index(Arc::clone(&arena), i) };
                    seg.as_mut_slice().fill(0xEE);
                    drop(seg); // back again
                }
            })
        };
        reader.join().unwrap();
        reclaimer.join().unwrap();
        assert_eq!(drain_free(&arena), vec![0, 1], "each segment on the free stack exactly once");
        // Relaxed: after the joins.
        assert_eq!(Owner::unpack(arena.controls()[index as usize].owner.load(Ordering::Relaxed)), Owner::Free);
    });
    // Relaxed (both): the search is over.
    assert!(RECLAIMER_FREED.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution had the reclaimer free it");
    assert!(READER_FREED.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution had the reader free it");
}

#[test]
fn two_reclaimers_reclaim_once() {
    common::check("reclaim::two_reclaimers_reclaim_once", None, || {
        let arena = common::tiny_arena();
        let published = dead_producer(&arena, 2);
        let reclaimers: Vec<_> = (0..2)
            .map(|_| {
                let arena = Arc::clone(&arena);
                thread::spawn(move || reclaim_dead_peers(&arena).expect("reclamation"))
            })
            .collect();
        let reports: Vec<_> = reclaimers.into_iter().map(|t| t.join().unwrap()).collect();
        let winners = reports.iter().filter(|r| r.reclaimed.len() == 1).count();
        assert_eq!(winners, 1, "exactly one reclaimer: {reports:?}");
        assert!(reports.iter().all(|r| r.reclaimed.len() <= 1), "{reports:?}");
        let freed: u32 = reports.iter().map(|r| r.segments_freed).sum();
        assert_eq!(freed, 2, "the cached and the in-flight segment, once each: {reports:?}");
        assert_eq!(drain_free(&arena), vec![0, 1], "each segment on the free stack exactly once");
        // Relaxed (both): after the joins.
        assert_eq!(arena.workers()[0].state.load(Ordering::Relaxed), liveness::WORKER_FREE);
        assert_eq!(arena.channels()[0].peek_state(), shmflow::memory::CHANNEL_CLOSED);
        let _ = published;
    });
}

/// Model 3's set-up: a producer in slot 0 with a broadcast segment for channels 0 and 1,
/// published on channel 0 only when it died; reclaimed while both readers (this process)
/// are attached. Returns the segment.
fn half_published_broadcast(arena: &Arc<Arena>) -> u32 {
    liveness::register(arena, 0).expect("slot 0 is free");
    let config = LocalPoolConfig { min: 1, max: 1, max_per_channel: 1, channels: 2 };
    let mut pool = LocalBufferPool::new(Arc::clone(arena), 0, 0, config).expect("the arena has the segments");
    let mut writers: Vec<ChannelWriter> =
        (0..2).map(|c| ChannelWriter::open(Arc::clone(arena), c).expect("channel exists")).collect();
    for (c, w) in writers.iter_mut().enumerate() {
        let granter = ChannelReader::open(Arc::clone(arena), c as u32).expect("channel exists");
        granter.grant(1).expect("room in the credit ring");
        drop(granter);
        w.reclaim(&mut pool).expect("a well-formed grant");
    }
    let segment = pool.request(None).expect("pool not corrupt").expect("a cached segment");
    let index = segment.index();
    let mut builder = BufferBuilder::new(segment, 2);
    assert_eq!(builder.append(&PAYLOAD), PAYLOAD.len());
    pool.expect_readers(index, 2);
    writers[0].publish(Descriptor::Buffer(index)).expect("credit and room");
    // Death between the two publishes: no destructor runs.
    std::mem::forget(builder);
    std::mem::forget(writers);
    std::mem::forget(pool);
    // Relaxed (all): set-up before any model thread starts (spawn orders it).
    arena.workers()[0].pid.store(DEAD_PID, Ordering::Relaxed);
    for c in 0..2 {
        arena.channels()[c].record_claimer(DEAD_PID);
        arena.channels()[c].record_consumer(std::process::id());
    }
    for c in arena.controls() {
        if c.holder_pid.load(Ordering::Relaxed) != 0 {
            c.holder_pid.store(DEAD_PID, Ordering::Relaxed);
        }
    }
    let report = reclaim_dead_peers(arena).expect("reclamation");
    assert_eq!((report.channels_failed, report.segments_orphaned), (2, 1), "{report:?}");
    index
}

#[test]
fn readers_leaving_at_once_free_a_half_published_broadcast_segment_once() {
    common::check("reclaim::readers_leaving_at_once_free_a_half_published_broadcast_segment_once", None, || {
        let config = ArenaConfig { max_channels: 2, ..common::tiny_config() };
        let arena = Arc::new(Arena::heap(&config).expect("a valid loom config"));
        let index = half_published_broadcast(&arena);
        let readers: Vec<_> = (0..2u32)
            .map(|c| {
                let arena = Arc::clone(&arena);
                thread::spawn(move || {
                    let mut reader = ChannelReader::open(Arc::clone(&arena), c).expect("channel exists");
                    if c == 0 {
                        let Some(Descriptor::Buffer(i)) = reader.poll().expect("a valid descriptor") else {
                            panic!("the published segment's descriptor is in ring 0")
                        };
                        assert_eq!(i, index);
                        drop(reader.consumer(i)); // reads nothing more, lets go of it
                    }
                    // The gate's way out: close, then settle what it handed on.
                    if reader.close() {
                        settle_if_orphaned(&arena, c);
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(drain_free(&arena), vec![0, 1], "the broadcast segment comes back exactly once");
        // Relaxed: after the joins.
        assert_eq!(Owner::unpack(arena.controls()[index as usize].owner.load(Ordering::Relaxed)), Owner::Free);
    });
}

// Executions of model 4 in which the segment was reused (counted outside the model).
#[allow(clippy::disallowed_types)]
static REUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn settlers_racing_a_reuse_free_a_broadcast_segment_once() {
    common::check("reclaim::settlers_racing_a_reuse_free_a_broadcast_segment_once", Some(3), || {
        let config = ArenaConfig { max_channels: 2, ..common::tiny_config() };
        let arena = Arc::new(Arena::heap(&config).expect("a valid loom config"));
        let index = half_published_broadcast(&arena);
        // The other segment is held elsewhere: only the broadcast one can come back.
        let other = arena.free_stack().pop().expect("an intact free stack").expect("the other segment is free");
        assert_ne!(other, index);
        {
            // Reader 0 reads it and lets go before the race (one share left, never released).
            let mut reader = ChannelReader::open(Arc::clone(&arena), 0).expect("channel exists");
            let Some(Descriptor::Buffer(i)) = reader.poll().expect("a valid descriptor") else {
                panic!("the published segment's descriptor is in ring 0")
            };
            assert_eq!(i, index);
            drop(reader.consumer(i));
        }
        let settlers: Vec<_> = (0..2u32)
            .map(|c| {
                let arena = Arc::clone(&arena);
                thread::spawn(move || {
                    // The gate's way out: close, then settle what it handed on.
                    if close_channel(&arena, c) {
                        settle_if_orphaned(&arena, c);
                    }
                })
            })
            .collect();
        let reuse = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let i = arena.free_stack().pop().expect("an intact free stack")?;
                // SAFETY: popped from the free stack, so no one else may use it.
                let seg = unsafe { shmflow::memory::MemorySegment::from_index(Arc::clone(&arena), i) };
                let builder = BufferBuilder::new(seg, 2);
                // What `ChannelWriter::publish` does to the owner word, on channel 0 again
                // (the reuse's channel claim and ring push are left out of the model).
                // Relaxed: as in `publish`; nothing reads it before the joins but settlers.
                arena.controls()[i as usize]
                    .owner
                    .swap(Owner::InFlight { channel: 0, fanout: 2 }.pack(), Ordering::Relaxed);
                // The new producer lives on and holds it.
                std::mem::forget(builder);
                Some(i)
            })
        };
        for s in settlers {
            s.join().unwrap();
        }
        let reused = reuse.join().unwrap();
        // Relaxed: after the joins.
        let owner = Owner::unpack(arena.controls()[index as usize].owner.load(Ordering::Relaxed));
        match reused {
            Some(i) => {
                assert_eq!(i, index);
                // Relaxed: a statistic outside the model.
                REUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                assert_eq!(
                    drain_free(&arena),
                    Vec::<u32>::new(),
                    "the reused segment was freed under its new producer"
                );
                assert_eq!(owner, Owner::InFlight { channel: 0, fanout: 2 });
            }
            None => {
                assert_eq!(drain_free(&arena), vec![index], "the broadcast segment comes back exactly once");
                assert_eq!(owner, Owner::Free);
            }
        }
    });
    // Relaxed: the search is over.
    assert!(REUSED.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution reused the segment");
}
