//! Loom model of the free stack's lanes (`memory::stack`): a process killed between taking
//! a segment off the arena-wide free stack and recording itself as its owner, reclaimed
//! online while another process keeps taking and giving back segments. The shipped
//! `NetworkBufferPool::request_until` plays the taker and stops where its process is
//! killed; `partition::reclaim_slot` is the reclaimer.
//!
//! What is modelled, for each place the taker can die (`TakeStop`: after writing its lane's
//! ATTEMPT, after the pop's CAS, after its lane says WON, after the owner swap; and, giving
//! a segment it took back, after marking it free before the push, and after the push):
//! - the taker (worker slot 0) takes a segment and "dies" there: its thread ends, nothing
//!   of it is dropped, and once it has ended its liveness record names a pid that does not
//!   run;
//! - a live process (slot 1) takes a segment, writes it and gives it back, racing with
//!   both the taker and the reclaimer; its pop and push help the lane the head names;
//! - the reclaimer (the model's main thread) reclaims slot 0 as soon as the taker is
//!   gone, while the live process still runs.
//!
//! What a failure means: a segment missing from the free stack at the end is a segment
//! lost (the reclaimer did not find what the dead taker held); a segment on it twice, a
//! cycle, or a `request` that finds a segment on the stack owned by someone is a double
//! free (the reclaimer pushed a segment that was still on the stack, or that the live
//! process took); a witness-cell race on a payload byte is two holders at once.
//!
//! Weakenings checked by editing the shipped code (see the commit messages): without the
//! help in `push`/`pop_in`, the AfterPop death loses its segment (the live process's
//! operations replace the head that names the lane, and the reclaimer reads ATTEMPT);
//! treating ATTEMPT as taken in `dead_taker` pushes a segment still on the stack; writing
//! the lane with plain stores instead of swaps lets the AfterPush death end with a
//! helper's stale WON of the earlier pop in the lane, and the reclaimer pushes the segment
//! a second time.
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::NetworkBufferPool;
use shmflow::memory::{liveness, Arena, ArenaConfig, Owner, TakeStop};
use shmflow::partition::reclaim::reclaim_slot;
use shmflow::sync::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A pid above Linux's largest (`pid_max` is at most 2^22): no such process runs.
const DEAD_PID: u32 = 0x3fff_fff0;

/// Two segments, two worker slots (the taker's and the live process's).
fn arena() -> Arc<Arena> {
    let config = ArenaConfig { max_workers: 2, ..common::tiny_config() };
    Arc::new(Arena::heap(&config).expect("a valid loom config"))
}

/// Pops everything on the free stack and checks that each segment is there exactly once.
fn assert_all_free_once(arena: &Arena, stop: TakeStop) {
    let mut seen = BTreeSet::new();
    while let Some(i) = arena.free_stack().pop().expect("an intact free stack") {
        assert!(seen.insert(i), "{stop:?}: segment {i} on the free stack twice (a double free)");
    }
    let all: BTreeSet<u32> = (0..arena.segment_count()).collect();
    assert_eq!(seen, all, "{stop:?}: a segment lost");
    for c in arena.controls() {
        // Relaxed: every thread has been joined.
        assert_eq!(Owner::unpack(c.owner.load(Ordering::Relaxed)), Owner::Free, "{stop:?}");
    }
}

/// Preemption bound 2 where the lane is still to be helped (ATTEMPT, or a pop or push
/// nobody saw yet): the live process's help races the reclaimer's there. Once the lane
/// says WON, or before a push's CAS (no head names it), bound 1 keeps the model to seconds.
fn taker_dies_at(stop: TakeStop, name: &str) {
    let bound = if matches!(stop, TakeStop::AfterWon | TakeStop::AfterOwner | TakeStop::BeforePush) { 1 } else { 2 };
    common::check(name, Some(bound), move || {
        let arena = arena();
        // Both "processes" register their slots (one pid under loom: each lane is checked
        // against the record's pid, which is ours for both until the taker dies).
        liveness::register(&arena, 0).expect("slot 0 is free");
        liveness::register(&arena, 1).expect("slot 1 is free");

        let taker = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let pool = NetworkBufferPool::new(arena);
                let owner = Owner::Pool { pool: 0, worker: 0 };
                if matches!(stop, TakeStop::BeforePush | TakeStop::AfterPush) {
                    // It took one, and dies giving it back.
                    let s = pool.request(owner, 1).expect("an intact stack").expect("a free segment");
                    s.recycle_until(stop);
                } else {
                    let got = pool.request_until(owner, 1, stop).expect("an intact stack");
                    // Death: whatever it holds is not dropped.
                    std::mem::forget(got);
                }
            })
        };
        let live = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let pool = NetworkBufferPool::new(arena);
                // Two segments and the dead taker holds at most one: never empty.
                let mut s = pool
                    .request(Owner::Pool { pool: 1, worker: 1 }, 2)
                    .expect("never a segment on the free stack that someone owns")
                    .expect("a segment is free for the live process");
                s.as_mut_slice()[0] = 0x11;
                assert_eq!(s.as_slice()[0], 0x11, "written by someone else while held");
                pool.recycle(s);
            })
        };
        taker.join().unwrap();
        // The taker's process is gone: its record names a pid that does not run.
        // Relaxed (both): ordered by the join; the reclaimer Acquires the state.
        arena.workers()[0].pid.store(DEAD_PID, Ordering::Relaxed);
        arena.workers()[0].start_ticks.store(0, Ordering::Relaxed);
        let report = reclaim_slot(&arena, 0);
        assert_eq!(report.reclaimed.len(), 1, "{stop:?}: {report:?}");
        let expected = u32::from(!matches!(stop, TakeStop::AfterAttempt | TakeStop::AfterPush));
        assert_eq!(report.segments_freed, expected, "{stop:?}: {report:?}");
        live.join().unwrap();
        assert_all_free_once(&arena, stop);
    });
}

#[test]
fn taker_dies_after_its_attempt() {
    taker_dies_at(TakeStop::AfterAttempt, "free_stack_taker::taker_dies_after_its_attempt");
}

#[test]
fn taker_dies_after_its_pop() {
    taker_dies_at(TakeStop::AfterPop, "free_stack_taker::taker_dies_after_its_pop");
}

#[test]
fn taker_dies_after_its_lane_says_won() {
    taker_dies_at(TakeStop::AfterWon, "free_stack_taker::taker_dies_after_its_lane_says_won");
}

#[test]
fn taker_dies_after_its_owner_swap() {
    taker_dies_at(TakeStop::AfterOwner, "free_stack_taker::taker_dies_after_its_owner_swap");
}

#[test]
fn holder_dies_giving_back_before_its_push() {
    taker_dies_at(TakeStop::BeforePush, "free_stack_taker::holder_dies_giving_back_before_its_push");
}

#[test]
fn holder_dies_giving_back_after_its_push() {
    taker_dies_at(TakeStop::AfterPush, "free_stack_taker::holder_dies_giving_back_after_its_push");
}
