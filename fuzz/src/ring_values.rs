//! Values read from the rings, alone and end to end.
//!
//! ```text
//!  input[0] bit 0 = 0: decode   [ sel : u8 ][ (segment_count : u32) ][ v : u64 ]...
//!     every v through Descriptor::decode and Credit::decode, every three through
//!     decode_barrier; what decodes must re-encode to the same bits
//!  input[0] bit 0 = 1: end to end   [ shape : u8 ][ op : u8, args ]...
//!     a heap arena (shape picks the ring capacity and segment count); each op either
//!     scribbles on channel 0 as a faulty peer would (ring slots, head/tail positions,
//!     segment control blocks, channel block fields) or drives the real endpoints:
//!     RecordReader::poll + record(), ChannelReader polls and BufferConsumers,
//!     ChannelWriter::reclaim into a LocalBufferPool, and an honest producer
//! ```
//!
//! Nothing may panic or read out of bounds; any `Err` is fine, and endpoints keep being
//! driven after one (a process may retry or clean up after a violation).

use crate::{place, Input};
use shmflow::buffer::{Buffer, BufferBuilder, BufferConsumer, LocalBufferPool, LocalPoolConfig};
use shmflow::memory::{Arena, ArenaConfig, RingKind};
use shmflow::record::{FromRecord, RecordReader, Step};
use shmflow::ring::{BarrierDescriptor, ChannelReader, ChannelWriter, Credit, Descriptor, EventCode};
use shmflow::sync::{AtomicU32, AtomicU64, Ordering};
use shmflow::Error;
use std::sync::Arc;

/// The harness.
pub fn ring_values(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    if mode & 1 == 0 {
        decode_values(&mut inp);
    } else {
        end_to_end(&mut inp);
    }
}

fn decode_values(inp: &mut Input<'_>) {
    let sel = inp.u8();
    let segment_count = match sel % 4 {
        0 => inp.u32(),
        1 => 1 + u32::from(inp.u8()),
        2 => 0,
        _ => u32::MAX,
    };
    let mut window = [0u64; 3];
    while !inp.is_empty() {
        let v = inp.u64();
        match Descriptor::decode(v, segment_count, &place) {
            Ok(d) => {
                assert_eq!(d.encode(), v, "{d:?} decoded from {v:#x}");
                assert_eq!(Descriptor::slots_for_header(v), 1);
                match d {
                    Descriptor::Buffer(s) | Descriptor::EventBuffer(s) => assert!(s < segment_count),
                    Descriptor::Event(_) => {}
                    Descriptor::Barrier(_) => panic!("a one-slot decode returned a barrier"),
                }
            }
            Err(e) => assert_violation(e),
        }
        match Credit::decode(v, segment_count, &place) {
            Ok(c) => {
                assert_eq!(c.encode(), v, "{c:?} decoded from {v:#x}");
                match c {
                    Credit::Release { segment: Some(s), .. } => assert!(s < segment_count),
                    Credit::Release { segment: None, .. } => {}
                    Credit::Grant(n) => assert!(n > 0 && n <= 0xff_ffff),
                }
            }
            Err(e) => assert_violation(e),
        }
        window = [window[1], window[2], v];
        let slots = [window[0], window[1], window[2]];
        match Descriptor::decode_barrier(slots, &place) {
            Ok(d) => {
                assert!(matches!(d, Descriptor::Barrier(_)));
                assert_eq!(d.encode_slots(), (slots, 3));
                assert_eq!(Descriptor::slots_for_header(slots[0]), 3);
            }
            Err(e) => assert_violation(e),
        }
        // What the encoders make, the decoders take.
        if segment_count > 0 {
            let s = (v as u32) % segment_count;
            for d in [Descriptor::Buffer(s), Descriptor::EventBuffer(s)] {
                assert_eq!(Descriptor::decode(d.encode(), segment_count, &place).ok(), Some(d));
            }
            let c = Credit::Release { segment: Some(s), credit: v & 1 << 40 != 0, last: v & 1 << 41 != 0 };
            assert_eq!(Credit::decode(c.encode(), segment_count, &place).ok(), Some(c));
        }
        let g = Credit::Grant(((v >> 32) as u32 & 0xff_ffff).max(1));
        assert_eq!(Credit::decode(g.encode(), segment_count, &place).ok(), Some(g));
        let b = Descriptor::Barrier(BarrierDescriptor { checkpoint_id: v, timestamp: !v, unaligned: v & 1 == 1 });
        let (slots, n) = b.encode_slots();
        assert_eq!(n, 3);
        assert_eq!(Descriptor::decode_barrier(slots, &place).ok(), Some(b));
    }
}

fn assert_violation(e: impl Into<Error>) {
    let e: Error = e.into();
    assert!(matches!(e, Error::ProtocolViolation { .. }), "{e:?}");
    let _ = e.to_string();
}

/// Channel 0's endpoints and what they hold.
struct World {
    arena: Arc<Arena>,
    reader: Option<RecordReader>,
    consumers: Vec<BufferConsumer>,
    views: Vec<Buffer>,
    writer: Option<ChannelWriter>,
    pool: Option<LocalBufferPool>,
    builders: Vec<BufferBuilder>,
}

const CH: u32 = 0;

fn config(shape: u8) -> ArenaConfig {
    ArenaConfig {
        segment_size: 4096,
        segment_count: 1 + u32::from((shape >> 2) & 7),
        ring_capacity: 2 << (shape & 3),
        max_channels: 1,
        max_partitions: 1,
        max_gates: 1,
        max_channels_per_gate: 64,
        max_workers: 1,
        max_tasks: 1,
    }
}

fn ring_header(arena: &Arena, kind: RingKind) -> &shmflow::memory::RingHeader {
    let b = &arena.channels()[CH as usize];
    match kind {
        RingKind::Data => &b.data,
        RingKind::Credit => &b.credit,
        RingKind::Priority => &b.priority,
    }
}

fn ring_kind(b: u8) -> RingKind {
    match b % 3 {
        0 => RingKind::Data,
        1 => RingKind::Credit,
        _ => RingKind::Priority,
    }
}

/// A value near what an honest peer would write (so the fuzzer reaches the states past the
/// first check), or any value.
fn near(inp: &mut Input<'_>, current: u64) -> u64 {
    let how = inp.u8();
    match how % 4 {
        0 => inp.u64(),
        1 => current.wrapping_add(i64::from(inp.u8() as i8) as u64),
        2 => u64::MAX - u64::from(inp.u8()),
        _ => u64::from(inp.u8()),
    }
}

fn near32(inp: &mut Input<'_>, current: u32) -> u32 {
    let how = inp.u8();
    match how % 4 {
        0 => inp.u32(),
        1 => current.wrapping_add(i32::from(inp.u8() as i8) as u32),
        2 => u32::MAX - u32::from(inp.u8()),
        _ => u32::from(inp.u8()),
    }
}

fn store32(a: &AtomicU32, inp: &mut Input<'_>) {
    // Relaxed: single-threaded scribbling.
    let v = near32(inp, a.load(Ordering::Relaxed));
    a.store(v, Ordering::Release);
}

fn store64(a: &AtomicU64, inp: &mut Input<'_>) {
    // Relaxed: single-threaded scribbling.
    let v = near(inp, a.load(Ordering::Relaxed));
    a.store(v, Ordering::Release);
}

fn a_descriptor(inp: &mut Input<'_>, segment_count: u32) -> Descriptor {
    let k = inp.u8();
    let s = u32::from(inp.u8()) % segment_count;
    match k % 7 {
        0 => Descriptor::Buffer(s),
        1 => Descriptor::EventBuffer(s),
        2 => Descriptor::Event(EventCode::EndOfPartition),
        3 => Descriptor::Event(EventCode::EndOfData),
        4 => Descriptor::Event(EventCode::ProducerFailed),
        _ => Descriptor::Barrier(BarrierDescriptor {
            checkpoint_id: u64::from(inp.u16()),
            timestamp: u64::from(inp.u16()),
            unaligned: k & 0x80 != 0,
        }),
    }
}

fn end_to_end(inp: &mut Input<'_>) {
    let shape = inp.u8();
    let Ok(arena) = Arena::heap(&config(shape)) else { return };
    let mut w = World {
        arena: Arc::new(arena),
        reader: None,
        consumers: Vec::new(),
        views: Vec::new(),
        writer: None,
        pool: None,
        builders: Vec::new(),
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 256 {
        ops += 1;
        step(&mut w, inp);
    }
    // Tear down in an order that drops leases while the reader is still there, then the
    // other way round.
    if shape & 0x80 != 0 {
        w.views.clear();
        w.consumers.clear();
        w.reader = None;
    } else {
        w.reader = None;
        w.views.clear();
        w.consumers.clear();
    }
    w.builders.clear();
    if let (Some(wr), Some(pool)) = (w.writer.as_mut(), w.pool.as_mut()) {
        let _ = wr.reclaim(pool);
    }
}

fn step(w: &mut World, inp: &mut Input<'_>) {
    let arena = w.arena.clone();
    let count = arena.segment_count();
    let op = inp.u8();
    match op % 18 {
        // Scribble on a ring slot.
        0 => {
            let kind = ring_kind(inp.u8());
            let slots = arena.ring_slots(CH, kind);
            let i = usize::from(inp.u8()) % slots.len();
            let v = inp.u64();
            // Relaxed: single-threaded scribbling, published by the tail stores.
            slots[i].store(v, Ordering::Relaxed);
        }
        // Scribble on a head or tail.
        1 => {
            let which = inp.u8();
            let h = ring_header(&arena, ring_kind(which));
            store64(if which & 0x80 != 0 { &h.head } else { &h.tail }, inp);
        }
        // Push raw values as a faulty producer (slots, then the tail).
        2 => {
            let kind = ring_kind(inp.u8());
            let n = usize::from(inp.u8() % 8);
            let slots = arena.ring_slots(CH, kind);
            let h = ring_header(&arena, kind);
            // Relaxed: single-threaded.
            let mut tail = h.tail.load(Ordering::Relaxed);
            for _ in 0..n {
                let v = match inp.u8() % 4 {
                    0 => inp.u64(),
                    1 => a_descriptor(inp, count).encode(),
                    2 => Credit::Release { segment: Some(u32::from(inp.u8()) % count), credit: true, last: false }.encode(),
                    _ => Credit::Grant(u32::from(inp.u8()).max(1)).encode(),
                };
                slots[(tail % slots.len() as u64) as usize].store(v, Ordering::Relaxed);
                tail = tail.wrapping_add(1);
            }
            h.tail.store(tail, Ordering::Release);
        }
        // Scribble on a segment control block.
        3 => {
            let c = &arena.controls()[usize::from(inp.u8()) % count as usize];
            match inp.u8() % 6 {
                0 => store32(&c.position, inp),
                1 => {
                    // A position with or without FINISHED, near the segment's size.
                    let v = u32::from(inp.u16() % 4100) | (u32::from(inp.u8() & 1) << 31);
                    c.position.store(v, Ordering::Release);
                }
                2 => store32(&c.refcount, inp),
                3 => store32(&c.next_free, inp),
                4 => store32(&c.pool, inp),
                _ => store64(&c.owner, inp),
            }
        }
        // Scribble on a channel block field.
        4 => {
            // Any 32-bit word of the block (its fields are private: the peer's view is bytes).
            let b = &arena.channels()[CH as usize];
            let words = std::mem::size_of_val(b) / 4;
            let at = usize::from(inp.u16()) % words;
            // SAFETY: the block is a repr(C) run of atomic words in the arena's mapping, 4-byte
            // aligned and `words * 4` bytes long; this process is the only one touching it
            // (single-threaded), so a 32-bit store into any word is a valid scribble.
            let word = unsafe { &*(b as *const _ as *const AtomicU32).add(at) };
            store32(word, inp);
        }
        // RecordReader::poll, and the record it found.
        5 => {
            if let Some(r) = w.reader.as_mut() {
                match r.poll() {
                    Ok(Step::Record) => {
                        let rec = r.record();
                        let _ = <(&str, u64)>::from_record(rec);
                        let _ = <&str>::from_record(rec);
                        let sum: u64 = rec.iter().map(|&b| u64::from(b)).sum();
                        std::hint::black_box(sum);
                    }
                    Ok(Step::Event(_) | Step::Empty) => {}
                    Err(e) => drop(e.to_string()),
                }
            }
        }
        // ChannelReader, directly.
        6 => {
            let sub = inp.u8();
            if let Some(r) = w.reader.as_mut() {
                let ch = r.channel_mut();
                let found = match sub % 7 {
                    0 => ch.poll(),
                    1 => ch.poll_priority(),
                    2 => ch.poll_data(),
                    3 => ch.has_next().map(|_| None),
                    4 => ch.priority_pending().map(|_| None),
                    5 => ch.queued_data().map(|v| {
                        for d in &v {
                            if let Descriptor::Buffer(s) | Descriptor::EventBuffer(s) = d {
                                assert!(*s < count);
                            }
                        }
                        None
                    }),
                    _ => ch.has_next().and_then(|_| ch.poll()),
                };
                match found {
                    Ok(Some(Descriptor::Buffer(s) | Descriptor::EventBuffer(s))) => {
                        assert!(s < count, "a descriptor named segment {s} of {count}");
                        if w.consumers.len() < 8 {
                            w.consumers.push(r.channel().consumer(s));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => drop(e.to_string()),
                }
            }
        }
        // A BufferConsumer: poll, peek, consume, views, drop.
        7 => {
            let i = usize::from(inp.u8());
            let sub = inp.u8();
            let n = u32::from(inp.u16());
            if w.consumers.is_empty() {
                return;
            }
            let i = i % w.consumers.len();
            let c = &mut w.consumers[i];
            match sub % 8 {
                0 => match c.poll() {
                    Ok(Some(b)) => {
                        std::hint::black_box(b.iter().fold(0u8, |a, &x| a ^ x));
                        if w.views.len() < 8 {
                            w.views.push(b);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => drop(e.to_string()),
                },
                1 => match c.peek_final() {
                    Ok((bytes, _)) => {
                        let take = n.min(bytes.len() as u32);
                        c.consume(take);
                    }
                    Err(e) => drop(e.to_string()),
                },
                2 => drop(c.check_finished()),
                3 => drop(c.writer_position()),
                4 => {
                    let read = c.read_position();
                    if read > 0 {
                        let off = n % read;
                        let len = (read - off).min(u32::from(inp.u8()));
                        std::hint::black_box(c.bytes_at(off, len).len());
                        if w.views.len() < 8 {
                            w.views.push(c.view(off, len));
                        }
                    }
                }
                5 => {
                    if let Ok(b) = c.peek() {
                        std::hint::black_box(b.len());
                    }
                }
                6 => {
                    let _ = c.is_finished();
                    let _ = format!("{c:?}");
                }
                _ => drop(w.consumers.swap_remove(i)),
            }
        }
        // Drop views.
        8 => {
            if !w.views.is_empty() {
                let i = usize::from(inp.u8()) % w.views.len();
                let v = w.views.swap_remove(i);
                std::hint::black_box((v.segment(), v.offset(), v.len()));
                if v.len() > 1 {
                    drop(v.slice(1..v.len()));
                }
            }
        }
        // (Re)open the reader: it attaches at the heads in the arena now.
        9 => {
            let max = inp.u16();
            w.reader = None;
            if let Ok(ch) = ChannelReader::open(arena.clone(), CH) {
                let mut r = RecordReader::new(ch);
                if max & 1 != 0 {
                    r.set_max_record(usize::from(max));
                }
                w.reader = Some(r);
            }
        }
        // Reader-side messages.
        10 => {
            let sub = inp.u8();
            let n = u32::from(inp.u8());
            if let Some(r) = w.reader.as_mut() {
                let ch = r.channel();
                let res = match sub % 6 {
                    0 => ch.grant(n.max(1)),
                    1 => ch.mark_consumed(),
                    2 => {
                        ch.set_gate(n % 2, u32::from(inp.u8()));
                        Ok(())
                    }
                    3 => {
                        ch.credit_return().revoke(n % 4);
                        Ok(())
                    }
                    4 => {
                        let _ = ch.credit_wanted();
                        ch.credit_return().notify_producer()
                    }
                    _ => {
                        ch.close();
                        Ok(())
                    }
                };
                if let Err(e) = res {
                    drop(e.to_string());
                }
                let _ = r.in_span();
                let _ = r.has_input();
                let _ = r.unread_in_current();
            }
        }
        // (Re)open the writer and its pool.
        11 => {
            let sizes = inp.u8();
            w.builders.clear();
            w.writer = None;
            w.pool = None;
            let max = 1 + u32::from(sizes & 7);
            let cfg = LocalPoolConfig { min: u32::from(sizes >> 6).min(max), max, max_per_channel: max, channels: 1 };
            if let Ok(pool) = LocalBufferPool::new(arena.clone(), 0, 0, cfg) {
                if let Ok(wr) = ChannelWriter::open(arena.clone(), CH) {
                    w.writer = Some(wr);
                    w.pool = Some(pool);
                }
            }
        }
        // The writer drains the credit ring.
        12 => {
            if let (Some(wr), Some(pool)) = (w.writer.as_mut(), w.pool.as_mut()) {
                match wr.reclaim(pool) {
                    // Checked after every entry taken (a writer that saw a violation before
                    // may still be over it when nothing new came).
                    Ok(n) if n > 0 => assert!(wr.credit() + wr.in_flight() <= arena.config().ring_capacity),
                    Ok(_) => {}
                    Err(e) => drop(e.to_string()),
                }
                assert!(pool.size() <= count);
            }
        }
        // An honest producer: a segment with records, committed or finished, published.
        13 => {
            let fanout = 1 + u32::from(inp.u8() % 2);
            let n = usize::from(inp.u8() % 6);
            let mut records = Vec::new();
            for _ in 0..n {
                let len = usize::from(inp.u16() % 5000);
                records.push(len);
            }
            let finish = inp.u8();
            let (Some(wr), Some(pool)) = (w.writer.as_mut(), w.pool.as_mut()) else { return };
            if wr.credit() == 0 {
                let _ = wr.want_credit();
                return;
            }
            let seg = match pool.request(Some(0)) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => return drop(e.to_string()),
            };
            let mut b = BufferBuilder::new(seg, fanout);
            for len in records {
                b.append(&(len as u32).to_le_bytes());
                b.append(&vec![len as u8; len]);
            }
            match finish % 3 {
                0 => drop(b.finish()),
                1 => drop(b.commit()),
                _ => {}
            }
            let res = wr.publish(Descriptor::Buffer(b.index()));
            if let Err(e) = res {
                drop(e.to_string());
            }
            if w.builders.len() < 4 {
                w.builders.push(b);
            }
        }
        // The producer's builders: more bytes, commit, finish, drop.
        14 => {
            let sub = inp.u8();
            let len = usize::from(inp.u16() % 5000);
            if w.builders.is_empty() {
                return;
            }
            let i = usize::from(sub >> 2) % w.builders.len();
            let b = &mut w.builders[i];
            match sub % 4 {
                0 if !b.is_finished() => drop(b.append(&vec![7u8; len])),
                1 if !b.is_finished() => drop(b.commit()),
                2 => drop(b.finish()),
                _ => drop(w.builders.swap_remove(i)),
            }
            if let Some(wr) = w.writer.as_mut() {
                let _ = wr.notify_consumer();
            }
        }
        // Producer-side events and queries.
        15 => {
            let sub = inp.u8();
            let d = a_descriptor(inp, count);
            let n = u64::from(inp.u8());
            let Some(wr) = w.writer.as_mut() else { return };
            let res = match sub % 7 {
                0 if !matches!(d, Descriptor::Buffer(_) | Descriptor::EventBuffer(_)) => wr.publish(d),
                1 => wr.publish_priority(d),
                2 => {
                    let _ = wr.has_room(n);
                    Ok(())
                }
                3 => {
                    let _ = wr.consumed();
                    let _ = wr.is_consumed();
                    Ok(())
                }
                4 => wr.want_credit(),
                5 => {
                    wr.set_producer_set(u32::from(sub >> 3) % 2, n as u32);
                    wr.notify_consumer()
                }
                _ => {
                    if sub & 0x80 != 0 {
                        wr.fail();
                    }
                    Ok(())
                }
            };
            if let Err(e) = res {
                drop(e.to_string());
            }
        }
        // Ring observers.
        16 => {
            let kind = ring_kind(inp.u8());
            let r = shmflow::ring::Ring::new(ring_header(&arena, kind), arena.ring_slots(CH, kind));
            assert!(r.len() <= r.capacity());
            let _ = r.is_empty();
        }
        // The network pool directly: pop and push back.
        _ => {
            let pool = shmflow::buffer::NetworkBufferPool::new(arena.clone());
            let _ = pool.available();
            match pool.request(shmflow::memory::Owner::Pool { pool: 9, worker: 0 }, 10) {
                Ok(Some(s)) => {
                    assert!(s.index() < count);
                    pool.recycle(s);
                }
                Ok(None) => {}
                Err(e) => drop(e.to_string()),
            }
        }
    }
}
