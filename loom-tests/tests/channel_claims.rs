//! Loom model of claiming runs of channel blocks (`ResultPartitionManager::claim_channels`),
//! the lock-free first-fit allocator partitions take their channel blocks from.
//!
//! What is modelled: an arena of 4 channel blocks and two threads that each claim a run of
//! 2 at the same moment, on the shipping code: a scan holds the blocks of the run it tries
//! (PROBING), waits for a block another scan holds, and hands its blocks back when it meets
//! one claimed for good. Both claims must succeed (the arena fits them exactly), their runs
//! must not overlap, and a third claim afterwards must fail (nothing left).
//!
//! What a failure means: an assertion that a claim failed means a scan skipped blocks that
//! were about to come free and left a gap (the bug this protocol replaced: two partitions
//! created at once in an arena sized for them failed with blocks free); overlapping runs
//! mean two partitions would share a channel block; a deadlock means two scans waited for
//! each other.
//!
//! Weakenings checked by editing a scratch copy: making a scan skip a PROBING block instead
//! of waiting for it makes the model fail (one claim finds no run).
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::memory::Arena;
use shmflow::partition::ResultPartitionManager;
use std::sync::Arc;

#[test]
fn two_claims_fill_the_blocks_exactly() {
    common::check("channel_claims::two_claims_fill_the_blocks_exactly", Some(3), || {
        let cfg = shmflow::memory::ArenaConfig { max_channels: 4, ..common::tiny_config() };
        let arena = Arc::new(Arena::heap(&cfg).expect("a valid loom config"));
        let claimers: Vec<_> = (0..2)
            .map(|_| {
                let arena = Arc::clone(&arena);
                thread::spawn(move || ResultPartitionManager::new(arena).claim_channels(2))
            })
            .collect();
        let mut firsts: Vec<u32> =
            claimers.into_iter().map(|t| t.join().unwrap().expect("the arena fits both runs")).collect();
        firsts.sort_unstable();
        assert_eq!(firsts, vec![0, 2], "runs overlap or leave a gap");
        assert!(ResultPartitionManager::new(arena).claim_channels(1).is_err(), "a block beyond a full arena");
    });
}
