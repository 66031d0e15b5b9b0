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
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::{BufferBuilder, NetworkBufferPool};
use shmflow::memory::{Arena, Owner, FINISHED, POSITION_MASK};
use shmflow::partition::FlushHandoff;
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
