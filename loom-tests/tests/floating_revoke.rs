//! Loom model of eager floating-credit revocation (`ring::floating`): the gate takes back
//! a channel's unused floating credit with a CAS on the channel's floating word while the
//! producer spends it on a publish, and the releases of segments published with floating
//! credit either keep it on the channel or, once revoked, hand it to the gate's pool.
//!
//! What is modelled, on the shipping code of one channel of the tiny arena: the producer's
//! `ChannelWriter::publish` (exclusive credit 0, so every segment takes floating credit
//! through `floating::take`), the consumer's `ChannelReader::poll`, its `CreditReturn` as
//! the release sink of the segments it read, `grant_floating`, `revoke_unused` and the lazy
//! `revoke`; the gate's books (`held`, what `FloatingCredits` keeps) are the few lines of
//! `FloatingCredits::revoke_from`, repeated here; the pool is the shared `Rc<Cell>` the
//! `CreditReturn` returns revoked credits into.
//!
//! - `revoke_races_publish`: one floating credit; the producer publishes a segment while
//!   the gate revokes. Exactly one wins: the publish fails for want of credit and the
//!   credit is in the pool at once, or the segment goes out and its release brings the
//!   credit to the pool.
//! - `release_races_publish_and_revoke`: one floating credit; the producer tries to
//!   publish two segments (each goes out only if the credit is there, granted and not yet
//!   revoked; the credit the first one's release keeps on the channel is not the
//!   producer's to take before it reclaimed that release, which the model does not), while
//!   the gate reads and releases what arrived and then revokes.
//! - `convert_races_release_and_revoke`: one floating credit, spent on a segment; the
//!   producer then gets an exclusive credit back and trades it (`floating::convert`, what
//!   `ChannelWriter::reclaim` does for a `Credit::Release { credit: true }`; called
//!   directly, the model has no buffer pool) while the gate releases the segment and
//!   revokes. The floating credit must end in the pool once, and the producer must gain
//!   exactly one exclusive credit (by the trade's refusal or by the release's credit).
//!
//! What a failure means: the pool ends with 2 (a credit counted twice: returned by the
//! revoke and by a release, or the release of an exclusive segment taken for floating) or
//! 0 (a credit lost), the word is not back to (0 unused, 0 in flight), or a publish
//! succeeded with no credit left. Weakenings checked by editing a scratch copy of
//! `ring/floating.rs`: a plain store in place of the CAS in `revoke` makes
//! `revoke_races_publish` and `release_races_publish_and_revoke` fail (the producer spent
//! the credit the revoke also took); a `release` that keeps the credit without lowering
//! `in_flight` (the release counted twice: once as kept, and again by the next release or
//! trade, which finds the count still up) makes `release_races_publish_and_revoke` and
//! `convert_races_release_and_revoke` fail; a `release` that lowers `in_flight` with a
//! plain store instead of its CAS makes `convert_races_release_and_revoke` fail (the
//! release and the trade both count the one in-flight credit).
#![cfg(loom)]

mod common;

use loom::thread;
use shmflow::buffer::ReleaseSink;
use shmflow::memory::{Arena, RingKind};
use shmflow::ring::{floating, ChannelReader, ChannelWriter, Credit, Descriptor, Ring, RingConsumer};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

/// Whether a publish failed only for want of credit (the expected loss of a race).
fn no_credit(r: &shmflow::error::Result<()>) -> bool {
    matches!(r, Err(shmflow::error::Error::ProtocolViolation { detail, .. }) if detail == "publish without credit")
}

/// The gate's revoke of channel 0, as `FloatingCredits::revoke_from` does it: the unused
/// credits at once (into the pool), the rest lazily. Returns how many came back at once.
fn revoke_all(reader: &ChannelReader, pool: &Cell<u32>, held: &mut u32) -> u32 {
    let cr = reader.credit_return();
    let now = cr.revoke_unused(*held);
    pool.set(pool.get() + now);
    cr.revoke(*held - now);
    *held = 0;
    now
}

/// Reads what arrived and releases each segment as its last reader would.
fn release_arrived(reader: &mut ChannelReader) -> u32 {
    let mut n = 0;
    // Bounded: at most the two segments a model publishes.
    for _ in 0..3 {
        match reader.poll().expect("the rings are sane") {
            Some(Descriptor::Buffer(s)) => {
                reader.release_sink().release(s, true, false);
                n += 1;
            }
            Some(other) => panic!("unexpected descriptor {other:?}"),
            None => break,
        }
    }
    n
}

fn open(arena: &Arc<Arena>) -> (ChannelWriter, ChannelReader, Rc<Cell<u32>>) {
    let writer = ChannelWriter::open(Arc::clone(arena), 0).expect("channel 0 exists");
    let pool = Rc::new(Cell::new(0));
    let reader = ChannelReader::open_with_floating(Arc::clone(arena), 0, pool.clone()).expect("channel 0 exists");
    (writer, reader, pool)
}

#[test]
fn revoke_races_publish() {
    common::check("floating_revoke::revoke_races_publish", None, || {
        let arena = common::tiny_arena();
        let (mut writer, mut reader, pool) = open(&arena);
        let mut held = 1;
        reader.credit_return().grant_floating(1).expect("the producer's wake-up is sane");
        let producer = thread::spawn(move || {
            let r = writer.publish(Descriptor::Buffer(0));
            assert!(r.is_ok() || no_credit(&r), "{r:?}");
            r.is_ok()
        });
        let now = revoke_all(&reader, &pool, &mut held);
        let published = producer.join().unwrap();
        assert_eq!(published, now == 0, "exactly one of publish and revoke got the credit");
        assert_eq!(release_arrived(&mut reader), u32::from(published));
        let word = arena.channels()[0].floating_credit();
        assert_eq!((floating::unused(word), floating::in_flight(word)), (0, 0), "the word is settled");
        assert_eq!(pool.get(), 1, "the credit came back exactly once");
        assert_eq!(reader.credit_return().pending_revokes(), 0);
    });
}

#[test]
fn release_races_publish_and_revoke() {
    common::check("floating_revoke::release_races_publish_and_revoke", None, || {
        let arena = common::tiny_arena();
        let (mut writer, mut reader, pool) = open(&arena);
        let mut held = 1;
        reader.credit_return().grant_floating(1).expect("the producer's wake-up is sane");
        let producer = thread::spawn(move || {
            let mut published = 0;
            for s in 0..2 {
                let r = writer.publish(Descriptor::Buffer(s));
                assert!(r.is_ok() || no_credit(&r), "{r:?}");
                published += u32::from(r.is_ok());
            }
            published
        });
        let mut released = release_arrived(&mut reader);
        revoke_all(&reader, &pool, &mut held);
        let published = producer.join().unwrap();
        released += release_arrived(&mut reader);
        assert_eq!(released, published, "every published segment was read and released");
        let word = arena.channels()[0].floating_credit();
        assert_eq!((floating::unused(word), floating::in_flight(word)), (0, 0), "the word is settled");
        assert_eq!(pool.get(), 1, "the credit came back exactly once");
        assert_eq!(reader.credit_return().pending_revokes(), 0);
    });
}

/// Exclusive credits the producer gains from the entries in the credit ring (what its
/// `reclaim` would add).
fn credits_returned(arena: &Arc<Arena>) -> u32 {
    let r = Ring::new(&arena.channels()[0].credit, arena.ring_slots(0, RingKind::Credit));
    let mut c = RingConsumer::attach(&r);
    let place = || "credit ring".to_string();
    let mut n = 0;
    // Bounded: the ring holds at most its capacity.
    for _ in 0..r.capacity() + 1 {
        match c.pop(&r, &place).expect("the ring is sane") {
            Some(v) => match Credit::decode(v, arena.segment_count(), &place).expect("a valid entry") {
                Credit::Release { credit, .. } => n += u32::from(credit),
                Credit::Grant(k) => n += k,
            },
            None => break,
        }
    }
    n
}

#[test]
fn convert_races_release_and_revoke() {
    common::check("floating_revoke::convert_races_release_and_revoke", None, || {
        let arena = common::tiny_arena();
        let (mut writer, mut reader, pool) = open(&arena);
        let mut held = 1;
        reader.credit_return().grant_floating(1).expect("the producer's wake-up is sane");
        writer.publish(Descriptor::Buffer(0)).expect("the floating credit is there");
        let producer = thread::spawn(move || {
            // An exclusive credit comes back (the release of a segment not modelled here):
            // the producer trades it if floating credit is still in flight.
            let word = writer.block().floating_credit();
            u32::from(!floating::convert(word))
        });
        release_arrived(&mut reader);
        revoke_all(&reader, &pool, &mut held);
        let kept_exclusive = producer.join().unwrap();
        release_arrived(&mut reader);
        let word = arena.channels()[0].floating_credit();
        assert_eq!((floating::unused(word), floating::in_flight(word)), (0, 0), "the word is settled");
        assert_eq!(pool.get(), 1, "the floating credit came back exactly once");
        assert_eq!(reader.credit_return().pending_revokes(), 0);
        assert_eq!(kept_exclusive + credits_returned(&arena), 1, "one exclusive credit, counted once");
    });
}
