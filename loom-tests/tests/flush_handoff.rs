//! Loom model of the buffer timeout's flush from the flusher thread (`FlushHandoff`): the
//! writer stages the position of its open builder after each record (a Release store in
//! its own process), the flusher commits a staged position into the segment's position
//! word with a CAS, and the writer, before it finishes a segment, runs a Dekker handshake
//! (`retire`) so the flusher never stores a position into a segment that ended or was
//! reused.
//!
//! `flushed_bytes_are_visible`: the writer appends 4 bytes and stages them; the flusher
//! flushes; a reader loads the position (Acquire) and reads the bytes below it. A failure
//! (a race on the witness cells, or wrong bytes) means the flusher's commit does not
//! publish what the writer staged.
//!
//! `no_stale_commit_after_reuse`: the writer stages 4 bytes of builder 1, retires it,
//! finishes the segment, reuses the segment for builder 2 (position back to 0) and stages
//! 2 bytes of it, while the flusher flushes. The position must end as 0 or 2, never as
//! builder 1's 4. Weakenings checked by editing a scratch copy: without the wait in
//! `retire`, or without its SeqCst fence, loom finds the flusher storing 4 into the reused
//! segment. (With SeqCst loads and stores in place of the two fences loom reports the same
//! failure: it models SeqCst accesses as AcqRel, so the Dekker pair uses fences.)
//!
//! `one_batch_over_two_slots_never_reaches_a_reused_segment`: the flusher commits two
//! slots in one batch (one `busy` store and one fence for both, as the output flusher
//! does) while the writer retires slot 1, finishes and reuses its segment. Slot 1's
//! segment must end as 0 or 2, slot 0's as 0 or 4. Weakening checked by editing a scratch
//! copy: re-checking the staged word only before the fence (not after it) lets loom find
//! builder 1's 4 in the reused segment.
//!
//! `a_remembered_slot_is_committed_once_restaged`: the flusher keeps its `FlushState`
//! (which skips slots staged as it last found them committed) across two flushes while
//! the writer stages 4 bytes and then 4 more; a reader checks the bytes below whatever
//! position it sees, and a last flush with the same state must commit the final 8: the
//! memory of an earlier flush never hides a newer stage.
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::{BufferBuilder, NetworkBufferPool};
use shmflow::memory::{Arena, Owner, FINISHED, POSITION_MASK};
use shmflow::partition::{FlushHandoff, FlushState};
use shmflow::sync::Ordering;
use std::sync::Arc;

fn builder(arena: &Arc<Arena>) -> BufferBuilder {
    let pool = NetworkBufferPool::new(Arc::clone(arena));
    let segment = pool
        .request(Owner::Writer { pool: 0, worker: 0 }, 0)
        .expect("the free stack is not corrupt")
        .expect("a fresh arena has free segments");
    BufferBuilder::new(segment, 1)
}

#[test]
fn flushed_bytes_are_visible() {
    common::check("flush_handoff::flushed_bytes_are_visible", Some(3), || {
        let arena = common::tiny_arena();
        let handoff = Arc::new(FlushHandoff::new(1));
        let mut b = builder(&arena);
        let seg = b.index();
        handoff.open(0, 1, seg);
        let flusher = {
            let (arena, handoff) = (Arc::clone(&arena), Arc::clone(&handoff));
            thread::spawn(move || handoff.flush(&arena, |_| {}))
        };
        let reader = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                // Acquire: pairs with the flusher's Release CAS (or the writer's commit).
                let p = arena.controls()[seg as usize].position.load(Ordering::Acquire) & POSITION_MASK;
                if p > 0 {
                    // SAFETY: below a position loaded with Acquire; the segment is alive.
                    let bytes = unsafe { arena.segment_bytes(seg, 0, p) };
                    assert_eq!(bytes, &[1, 2, 3, 4][..p as usize]);
                }
            })
        };
        assert_eq!(b.append(&[1, 2, 3, 4]), 4);
        handoff.stage(0, 1, b.position());
        flusher.join().unwrap();
        reader.join().unwrap();
        handoff.retire(0, 1);
        b.finish();
    });
}

#[test]
fn no_stale_commit_after_reuse() {
    common::check("flush_handoff::no_stale_commit_after_reuse", Some(3), || {
        let arena = common::tiny_arena();
        let handoff = Arc::new(FlushHandoff::new(1));
        let seg = {
            let b = builder(&arena);
            let seg = b.index();
            std::mem::forget(b); // the model drives the position word by hand below
            seg
        };
        let ctl = |a: &Arena| -> u32 {
            // Acquire: the final look after both threads joined.
            a.controls()[seg as usize].position.load(Ordering::Acquire)
        };
        handoff.open(0, 1, seg);
        let flusher = {
            let (arena, handoff) = (Arc::clone(&arena), Arc::clone(&handoff));
            thread::spawn(move || handoff.flush(&arena, |_| {}))
        };
        // Builder 1: 4 bytes staged, then retired and finished.
        handoff.stage(0, 1, 4);
        handoff.retire(0, 1);
        // Release: as `BufferBuilder::finish`.
        arena.controls()[seg as usize].position.store(4 | FINISHED, Ordering::Release);
        // Reuse: a new builder on the same segment starts at 0 (as `BufferBuilder::new`).
        // Release: as the reset of a fresh builder.
        arena.controls()[seg as usize].position.store(0, Ordering::Release);
        handoff.open(0, 2, seg);
        handoff.stage(0, 2, 2);
        flusher.join().unwrap();
        let end = ctl(&arena);
        assert!(end == 0 || end == 2, "position {end:#x}: builder 1's position reached the reused segment");
    });
}

#[test]
fn one_batch_over_two_slots_never_reaches_a_reused_segment() {
    common::check("flush_handoff::one_batch_over_two_slots_never_reaches_a_reused_segment", Some(3), || {
        let arena = common::tiny_arena();
        let handoff = Arc::new(FlushHandoff::new(2));
        let (s0, s1) = (0u32, 1u32);
        let pos = |a: &Arena, seg: u32| -> u32 {
            // Acquire: the final look after both threads joined.
            a.controls()[seg as usize].position.load(Ordering::Acquire)
        };
        // Both segments start at position 0 (a fresh arena); the model drives the position
        // words by hand, as the builders would.
        handoff.open(0, 1, s0);
        handoff.open(1, 1, s1);
        handoff.stage(0, 1, 4);
        let flusher = {
            let (arena, handoff) = (Arc::clone(&arena), Arc::clone(&handoff));
            thread::spawn(move || {
                let mut state = FlushState::default();
                handoff.flush_with(&arena, &mut state);
                state.raised().to_vec()
            })
        };
        handoff.stage(1, 1, 4);
        handoff.retire(1, 1);
        // Release: as `BufferBuilder::finish`.
        arena.controls()[s1 as usize].position.store(4 | FINISHED, Ordering::Release);
        // Release: as the reset of a fresh builder on the reused segment.
        arena.controls()[s1 as usize].position.store(0, Ordering::Release);
        handoff.open(1, 2, s1);
        handoff.stage(1, 2, 2);
        let raised = flusher.join().unwrap();
        let (end0, end1) = (pos(&arena, s0), pos(&arena, s1));
        assert!(end1 == 0 || end1 == 2, "position {end1:#x}: builder 1's position reached the reused segment");
        assert_eq!(end0, 4, "slot 0 was staged before the flush began");
        assert!(raised.contains(&0), "slot 0 raised: {raised:?}");
    });
}

#[test]
fn a_remembered_slot_is_committed_once_restaged() {
    common::check("flush_handoff::a_remembered_slot_is_committed_once_restaged", Some(2), || {
        let arena = common::tiny_arena();
        let handoff = Arc::new(FlushHandoff::new(1));
        let mut b = builder(&arena);
        let seg = b.index();
        handoff.open(0, 1, seg);
        let flusher = {
            let (arena, handoff) = (Arc::clone(&arena), Arc::clone(&handoff));
            thread::spawn(move || {
                let mut state = FlushState::default();
                handoff.flush_with(&arena, &mut state);
                handoff.flush_with(&arena, &mut state);
                // Acquire: pairs with the flusher's own Release CAS (program order) or the
                // writer's; the bytes below are checked against what was written.
                let p = arena.controls()[seg as usize].position.load(Ordering::Acquire) & POSITION_MASK;
                // SAFETY: below a position loaded with Acquire; the segment is alive.
                let bytes = unsafe { arena.segment_bytes(seg, 0, p) };
                assert_eq!(bytes, &[1, 2, 3, 4, 5, 6, 7, 8][..p as usize]);
                state
            })
        };
        assert_eq!(b.append(&[1, 2, 3, 4]), 4);
        handoff.stage(0, 1, b.position());
        assert_eq!(b.append(&[5, 6, 7, 8]), 4);
        handoff.stage(0, 1, b.position());
        let mut state = flusher.join().unwrap();
        handoff.flush_with(&arena, &mut state);
        // Acquire: everything joined; the last flush ran on this thread.
        let end = arena.controls()[seg as usize].position.load(Ordering::Acquire);
        assert_eq!(end, 8, "the last flush skipped a slot staged after the flusher's memory of it");
        handoff.retire(0, 1);
        b.finish();
    });
}
