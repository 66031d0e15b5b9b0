//! Loom models of the notify set (DESIGN.md §4.7, `shmflow::ring::NotifySet`) and of the
//! gate-attach handshake between a `ChannelWriter` and a `ChannelReader` (`set_gate`).
//!
//! What is modelled, on a heap arena with the tiny config (one gate block, a 64-member
//! bitmap) and the notify set of gate block 0:
//! - two markers on different members (0 and 1), each publishing two items: a marker
//!   publishes an item (a Release store of its member's "data" counter, which lives outside
//!   the set, as a channel's ring tail does) and then calls `mark`; the owner runs the
//!   gate's loop by hand: `drain`, then read the data of the marked members only (Acquire,
//!   as a ring consumer does), and when nothing was marked `prepare_wait`, re-check with
//!   `any`, `wait`. A marker's second mark takes the "bit already set" shortcut whenever the
//!   owner has not drained its first one yet;
//! - two markers on the same member, one item each (a shared counter bumped with a Release
//!   `fetch_add`): the second marker finds the bit set (in `mark`'s load or its `fetch_or`)
//!   and neither sets it nor notifies. The test asserts that the search reached executions
//!   where the two marks were coalesced into one;
//! - one marker that publishes on two members, issues one `fence(SeqCst)` and then marks
//!   both: first with `mark_all_fenced` (one `fetch_or` for the word, the batched flush of
//!   `ResultPartition::flush_all`), then again with `mark_fenced` for each (the output
//!   flusher's `notify_channel_fenced`), racing a plain `mark` on one of the members;
//! - the gate-attach handshake: the producer's `ChannelWriter` publishes two payload-free
//!   `EndOfData` events (they take no credit) and calls `notify_consumer` after each, while
//!   the consumer thread builds its `ChannelReader`, calls `set_gate(0, 1)` (member 1, so a
//!   stale member index would mark the wrong bit), scans the channel once, and otherwise
//!   parks on the set's wake-up until its member is marked, then reads what is there.
//!
//! What a failure means: loom reports a deadlock when the owner (or consumer) sleeps forever
//! although an item was published: a lost item or lost wake-up. For the notify set, the
//! SeqCst fence pair of `mark` and `drain` did not do its job (a marker took the "already
//! set" shortcut on a bit the owner had already swapped out, while the owner's reads after
//! its swap missed the marker's data), or the event count's own Dekker pair failed. For the
//! handshake, the fence pair of `ChannelWriter::notify_consumer_slow` and
//! `ChannelReader::set_gate` did not do its job (the producer saw no gate and notified the
//! channel's `consumer_wake`, nobody's wake-up, while the consumer's first scan missed the
//! event), or the producer saw the gate id without the member index stored before it and
//! marked the wrong member. A failed assertion means an item counted twice, an unexpected
//! descriptor, or a protocol violation raised against a legal peer state.
//!
//! Which weakenings these models catch (each checked by editing a scratch copy of the crate,
//! all at preemption bound 3): removing the SeqCst fence in `mark` or the one in `drain`
//! makes all three models deadlock (the handshake model's second event takes the cached-gate
//! `mark` path); removing the fence in `set_gate` or the one in `notify_consumer_slow`, or
//! making the store of `gate` in `set_gate` or its load in `notify_consumer_slow` Relaxed,
//! makes the handshake model deadlock; dropping the one fence of the batched marker
//! (leaving `mark_fenced` unfenced) makes the batched model deadlock. The Relaxed
//! `gate` store and load is a bug this model found: with both Relaxed (and the fences on the wrong side of them to order them), a producer could see
//! the gate id but the old member index, mark (and cache) the wrong member, and the
//! consumer's channel was never served again.
//!
//! Loom treats `fence(SeqCst)` as a join with one global causality (stronger than the C++
//! fence rules) and SeqCst accesses as AcqRel; see `event_count.rs` for what that means.
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::memory::Arena;
use shmflow::ring::{ChannelReader, ChannelWriter, Descriptor, EventCode, NotifySet};
use shmflow::sync::{AtomicU32, Ordering};
use std::sync::Arc;

// Counts, outside the model (a plain std atomic, not loom's), the executions of the
// same-member model in which the owner drained fewer marks than were made, to prove the
// search reached the coalescing ("bit already set") paths.
#[allow(clippy::disallowed_types)]
static COALESCED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn set(arena: &Arena) -> NotifySet<'_> {
    NotifySet::new(arena, 0).expect("gate block 0 exists")
}

/// The owner's loop (the gate's `collect_marks` + serve + `next`'s park, by hand): returns
/// once `seen` reaches `expected` for every member, and how many marks it drained.
/// `data[i]` is member `i`'s published-item counter.
fn own(arena: &Arena, data: &[AtomicU32], expected: &[u32]) -> u32 {
    let set = set(arena);
    let members = data.len() as u32;
    let mut seen = vec![0u32; data.len()];
    let mut drained = 0;
    while seen != expected {
        let mut marked = vec![false; data.len()];
        let n = set.drain(members, |i| marked[i as usize] = true);
        drained += n;
        if n > 0 {
            for (i, m) in marked.iter().enumerate() {
                if *m {
                    // Acquire: as a ring consumer's load of the tail; pairs with the
                    // marker's Release publication.
                    let v = data[i].load(Ordering::Acquire);
                    assert!(v >= seen[i] && v <= expected[i], "member {i}: {v} after {}", seen[i]);
                    seen[i] = v;
                }
            }
            continue;
        }
        let token = set.wake().prepare_wait();
        if set.any(members) {
            continue;
        }
        // Woken (or the word moved on since the token): loop, drain again.
        let _ = set.wake().wait(token, None);
    }
    drained
}

/// Two markers on members 0 and 1, two items each, one owner.
#[test]
fn distinct_members_no_lost_item() {
    common::check("notify_set::distinct_members_no_lost_item", Some(3), || {
        let arena = common::tiny_arena();
        let data: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let markers: Vec<_> = (0..2u32)
            .map(|member| {
                let (arena, data) = (Arc::clone(&arena), Arc::clone(&data));
                thread::spawn(move || {
                    for k in 1..=2 {
                        // Release: publishes the item, as a ring push's tail store does.
                        data[member as usize].store(k, Ordering::Release);
                        set(&arena).mark(member).expect("member inside the set");
                    }
                })
            })
            .collect();
        own(&arena, &data[..], &[2, 2]);
        for m in markers {
            m.join().unwrap();
        }
    });
}

/// One marker publishing an item on each of members 0 and 1, then one `fence(SeqCst)` and
/// marking both (`mark_all_fenced`, what `ResultPartition::flush_all` does for many
/// channels; the second time `mark_fenced` for each), while a second marker uses `mark` on
/// member 1: the shared fence must stand for the per-mark fences.
#[test]
fn batched_marks_one_fence_no_lost_item() {
    common::check("notify_set::batched_marks_one_fence_no_lost_item", Some(3), || {
        let arena = common::tiny_arena();
        let data: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let batch = {
            let (arena, data) = (Arc::clone(&arena), Arc::clone(&data));
            thread::spawn(move || {
                for round in 0..2 {
                    for d in data.iter() {
                        // Release: publishes the item, as a builder's commit does.
                        d.fetch_add(1, Ordering::Release);
                    }
                    // SeqCst fence: the one fence of the batch, as in `flush_all`.
                    shmflow::sync::fence(Ordering::SeqCst);
                    if round == 0 {
                        // Both members' bits in one read-modify-write (as `flush_all`).
                        set(&arena).mark_all_fenced([0, 1]).expect("members inside the set");
                    } else {
                        // One by one (as the output flusher's `notify_channel_fenced`).
                        for member in 0..2 {
                            set(&arena).mark_fenced(member).expect("member inside the set");
                        }
                    }
                }
            })
        };
        let single = {
            let (arena, data) = (Arc::clone(&arena), Arc::clone(&data));
            thread::spawn(move || {
                // Release: publishes the item.
                data[1].fetch_add(1, Ordering::Release);
                set(&arena).mark(1).expect("member inside the set");
            })
        };
        own(&arena, &data[..], &[2, 3]);
        batch.join().unwrap();
        single.join().unwrap();
    });
}

/// Two markers on the same member, one item each, one owner: the "bit already set"
/// shortcut (and the `fetch_or` that finds the bit set) must not lose the second item.
#[test]
fn same_member_shortcut_no_lost_item() {
    common::check("notify_set::same_member_shortcut_no_lost_item", Some(3), || {
        let arena = common::tiny_arena();
        let data: Arc<[AtomicU32; 1]> = Arc::new([AtomicU32::new(0)]);
        let markers: Vec<_> = (0..2)
            .map(|_| {
                let (arena, data) = (Arc::clone(&arena), Arc::clone(&data));
                thread::spawn(move || {
                    // Release: publishes the item (two producers share the counter here).
                    data[0].fetch_add(1, Ordering::Release);
                    set(&arena).mark(0).expect("member inside the set");
                })
            })
            .collect();
        let drained = own(&arena, &data[..], &[2]);
        for m in markers {
            m.join().unwrap();
        }
        if drained < 2 {
            // Relaxed: statistic outside the model.
            COALESCED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Relaxed: the search is over.
    assert!(COALESCED.load(std::sync::atomic::Ordering::Relaxed) > 0, "no execution coalesced two marks");
}

/// The consumer's member in the gate's set (not 0: a stale index would mark member 0).
const MEMBER: u32 = 1;
const MEMBERS: u32 = 2;

/// Reads every descriptor queued in the channel (all `EndOfData` here); returns how many.
fn read_all(reader: &mut ChannelReader) -> u32 {
    let mut n = 0;
    while let Some(d) = reader.poll().expect("a valid descriptor") {
        assert_eq!(d, Descriptor::Event(EventCode::EndOfData));
        n += 1;
    }
    n
}

/// The producer publishes while the consumer attaches its gate: the consumer must see the
/// events in its first scan or be marked.
#[test]
fn gate_attach_first_scan_or_mark() {
    common::check("notify_set::gate_attach_first_scan_or_mark", Some(3), || {
        let arena = common::tiny_arena();
        let mut writer = ChannelWriter::open(Arc::clone(&arena), 0).expect("channel 0 exists");

        let producer = thread::spawn(move || {
            for _ in 0..2 {
                // Payload-free: takes no credit; `publish` calls `notify_consumer`.
                writer.publish(Descriptor::Event(EventCode::EndOfData)).expect("room in the data ring");
            }
        });

        let consumer = {
            let arena = Arc::clone(&arena);
            thread::spawn(move || {
                let set_arena = Arc::clone(&arena);
                let set = set(&set_arena);
                let mut reader = ChannelReader::open(arena, 0).expect("channel 0 exists");
                reader.set_gate(0, MEMBER);
                // The one scan after attaching (the gate starts with every channel queued).
                let mut got = 0;
                if reader.has_next().expect("a valid ring") {
                    got += read_all(&mut reader);
                }
                while got < 2 {
                    // Parked until our member is marked (a mark on another member would be
                    // another channel's: not served here), then the channel is read again.
                    loop {
                        let mut mine = false;
                        if set.drain(MEMBERS, |i| mine |= i == MEMBER) > 0 && mine {
                            break;
                        }
                        let token = set.wake().prepare_wait();
                        if set.any(MEMBERS) {
                            continue;
                        }
                        let _ = set.wake().wait(token, None);
                    }
                    got += read_all(&mut reader);
                }
            })
        };

        producer.join().unwrap();
        consumer.join().unwrap();
    });
}
