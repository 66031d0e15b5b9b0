//! Bad input: attaching to things that are not (good) arenas, and shared structures that a
//! faulty peer filled with garbage. Each must answer its specific error, with a message
//! that names what is wrong, and never crash.
//!
//! ```text
//!  file bytes ──attach_path / attach_named──> ArenaError::{BadMagic, Truncated, Version,
//!                                             Checksum, Inconsistent, NotReady, Io, Config}
//!  ring slot  ──ChannelReader::poll ─────────> Error::ProtocolViolation { place: "channel N" }
//!  credit     ──ChannelWriter::reclaim ──────> Error::ProtocolViolation { place: "channel N" }
//!  position   ──BufferConsumer ──────────────> Error::ProtocolViolation { place: "channel N" }
//! ```
//!
//! Files go to a unique directory under the system temp dir (removed on drop); named
//! arenas are removed by their handle's drop.

use shmflow::buffer::{BufferBuilder, LocalBufferPool, LocalPoolConfig};
use shmflow::memory::{
    validate_header_bytes, Arena, ArenaConfig, ArenaHeader, RingKind, StaticHeader, LAYOUT_VERSION, MAGIC,
};
use shmflow::ring::{ChannelReader, ChannelWriter, Descriptor, StreamReader};
use shmflow::sync::{Ordering, WaitPolicy};
use shmflow::{ArenaError, Error};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const SEG: u32 = 4096;
const SEGMENTS: u32 = 64;
/// The channel the ring tests use: not 0, so a message naming "channel 2" names it.
const CH: u32 = 2;

fn config() -> ArenaConfig {
    ArenaConfig {
        segment_size: SEG,
        segment_count: SEGMENTS,
        ring_capacity: 16,
        max_channels: 4,
        max_partitions: 4,
        max_gates: 4,
        max_channels_per_gate: 64,
        max_workers: 4,
        max_tasks: 4,
    }
}

/// A name no other test or process uses.
fn unique(what: &str) -> String {
    static N: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let n = {
        let mut g = N.lock().unwrap_or_else(|e| e.into_inner());
        *g += 1;
        *g
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("shmflow-test-{what}-{}-{}-{nanos}", std::process::id(), n)
}

/// A directory of its own under the temp dir, removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(unique("attach"));
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }

    /// Writes `bytes` to a new file in the directory.
    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bytes of a freshly created (named, then removed) arena.
fn real_arena_bytes() -> Vec<u8> {
    let name = unique("source");
    let arena = Arena::create_named(&name, &config()).unwrap();
    let path = Path::new("/dev/shm").join(&name);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, arena.layout().total_size);
    drop(arena);
    assert!(!path.exists(), "dropping the creator's handle did not remove {}", path.display());
    bytes
}

/// The static header at the start of `bytes`.
fn header(bytes: &[u8]) -> StaticHeader {
    assert!(bytes.len() >= size_of::<StaticHeader>());
    // SAFETY: `bytes` holds at least size_of::<StaticHeader>() bytes, StaticHeader is a
    // repr(C) struct of integers (valid for any bit pattern), and read_unaligned copes with
    // any alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<StaticHeader>()) }
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Recomputes the header checksum, so a patch is seen as what it is and not as damage.
fn reseal(bytes: &mut [u8]) {
    let c = header(bytes).compute_checksum();
    put_u64(bytes, offset_of!(StaticHeader, checksum), c);
}

/// Attaches to a file holding `bytes`, through the file and through the byte validator,
/// and returns the file attach's error (both must fail alike).
fn attach_err(dir: &TempDir, name: &str, bytes: &[u8]) -> ArenaError {
    let path = dir.file(name, bytes);
    let e = Arena::attach_path(&path).expect_err("attached to a bad arena file");
    let direct = validate_header_bytes(bytes, bytes.len() as u64);
    if !matches!(e, ArenaError::NotReady) {
        let d = direct.expect_err("validate_header_bytes accepted what attach refused");
        assert_eq!(std::mem::discriminant(&d), std::mem::discriminant(&e), "{d} vs {e}");
    }
    e
}

fn assert_mentions(e: &dyn std::fmt::Display, words: &[&str]) {
    let msg = e.to_string();
    for w in words {
        assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
    }
}

#[test]
fn a_copy_of_a_real_arena_attaches() {
    // The control case: the copies below fail only because of what each test changes.
    let dir = TempDir::new();
    let bytes = real_arena_bytes();
    let path = dir.file("good", &bytes);
    let a = Arena::attach_path(&path).unwrap();
    assert_eq!(a.segment_count(), SEGMENTS);
    assert_eq!(a.segment_size(), SEG);
    assert_eq!(a.static_header().version, LAYOUT_VERSION);
    assert_eq!(a.header_atomics().free_stack.len(), SEGMENTS);
    let layout = validate_header_bytes(&bytes, bytes.len() as u64).unwrap();
    assert_eq!(&layout, a.layout());
}

#[test]
fn random_bytes_are_not_an_arena() {
    let dir = TempDir::new();
    for (i, len) in [4096usize, 65536, 300_000].into_iter().enumerate() {
        let mut bytes: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        if bytes[..8] == MAGIC {
            bytes[0] ^= 1;
        }
        let e = attach_err(&dir, &format!("random{i}"), &bytes);
        match &e {
            ArenaError::BadMagic { found, expected } => {
                assert_eq!(found[..], bytes[..8]);
                assert_eq!(*expected, MAGIC);
            }
            other => panic!("random bytes gave {other:?}"),
        }
        assert_mentions(&e, &["not a shmflow arena", "magic"]);
    }
    // A text file.
    let e = attach_err(&dir, "text", "hello, this is not an arena at all\n".repeat(20).as_bytes());
    assert!(matches!(e, ArenaError::BadMagic { .. }), "{e:?}");
}

#[test]
fn an_empty_file_is_truncated() {
    let dir = TempDir::new();
    let e = attach_err(&dir, "empty", &[]);
    match &e {
        ArenaError::Truncated { what, needed, actual } => {
            assert_eq!(*what, "the header");
            assert_eq!(*needed, size_of::<StaticHeader>() as u64);
            assert_eq!(*actual, 0);
        }
        other => panic!("an empty file gave {other:?}"),
    }
    assert_mentions(&e, &["truncated", "header", &size_of::<StaticHeader>().to_string(), "has 0"]);
}

#[test]
fn a_truncated_arena_is_refused() {
    let dir = TempDir::new();
    let bytes = real_arena_bytes();
    let total = bytes.len() as u64;
    for keep in [bytes.len() / 2, bytes.len() - 1, 4096, 233] {
        let e = attach_err(&dir, &format!("cut{keep}"), &bytes[..keep]);
        match &e {
            ArenaError::Truncated { what, needed, actual } => {
                assert_eq!(*what, "the arena");
                assert_eq!(*needed, total);
                assert_eq!(*actual, keep as u64);
            }
            other => panic!("an arena cut to {keep} bytes gave {other:?}"),
        }
        assert_mentions(&e, &["truncated", "the arena", &total.to_string(), &keep.to_string()]);
    }
    // Cut inside the header itself.
    for keep in [100, size_of::<StaticHeader>() - 1] {
        let e = attach_err(&dir, &format!("head{keep}"), &bytes[..keep]);
        assert!(matches!(e, ArenaError::Truncated { what: "the header", .. }), "{e:?}");
        assert_mentions(&e, &["truncated", "the header", &keep.to_string()]);
    }
}

#[test]
fn another_layout_version_is_refused() {
    let dir = TempDir::new();
    let mut bytes = real_arena_bytes();
    put_u32(&mut bytes, offset_of!(StaticHeader, version), LAYOUT_VERSION + 7);
    reseal(&mut bytes);
    let e = attach_err(&dir, "version", &bytes);
    match &e {
        ArenaError::Version { found, expected } => {
            assert_eq!(*found, LAYOUT_VERSION + 7);
            assert_eq!(*expected, LAYOUT_VERSION);
        }
        other => panic!("a patched version gave {other:?}"),
    }
    assert_mentions(
        &e,
        &[
            &format!("layout version {}", LAYOUT_VERSION + 7),
            "not supported",
            &format!("reads version {LAYOUT_VERSION}"),
        ],
    );
}

#[test]
fn a_damaged_header_fails_its_checksum() {
    let dir = TempDir::new();
    let good = real_arena_bytes();
    let stored = header(&good).checksum;
    // A flipped bit in a field, in the region table, and in the checksum itself.
    for (i, at) in [
        offset_of!(StaticHeader, segment_size),
        offset_of!(StaticHeader, creator_pid),
        offset_of!(StaticHeader, regions) + 17,
        offset_of!(StaticHeader, checksum) + 3,
    ]
    .into_iter()
    .enumerate()
    {
        let mut bytes = good.clone();
        bytes[at] ^= 0x10;
        let e = attach_err(&dir, &format!("damaged{i}"), &bytes);
        match &e {
            ArenaError::Checksum { stored: s, computed } => {
                assert_ne!(s, computed);
                assert_eq!(*s, header(&bytes).checksum);
                if at < offset_of!(StaticHeader, checksum) {
                    assert_eq!(*s, stored);
                }
            }
            other => panic!("a damaged byte at {at} gave {other:?}"),
        }
        assert_mentions(&e, &["checksum mismatch", "damaged"]);
    }
}

#[test]
fn sizes_that_do_not_add_up_are_inconsistent() {
    let dir = TempDir::new();
    let good = real_arena_bytes();
    let h = header(&good);
    type Patch = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(&str, Patch, &[&str])> = vec![
        (
            "segment_count",
            Box::new(move |b| put_u32(b, offset_of!(StaticHeader, segment_count), h.segment_count + 1)),
            &["region table", "does not match"],
        ),
        (
            "total_size",
            Box::new(move |b| put_u64(b, offset_of!(StaticHeader, total_size), h.total_size + 4096)),
            &["region table", "total"],
        ),
        (
            "region",
            // The data region's offset (the last region's first field).
            Box::new(|b| {
                let at = offset_of!(StaticHeader, regions) + 8 * 16;
                let v = u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
                put_u64(b, at, v + 4096);
            }),
            &["region table"],
        ),
        (
            "header_size",
            Box::new(move |b| put_u32(b, offset_of!(StaticHeader, header_size), h.header_size + 8)),
            &["header_size is"],
        ),
        (
            "segment_size",
            Box::new(|b| put_u32(b, offset_of!(StaticHeader, segment_size), 5000)),
            &["segment_size", "5000"],
        ),
        (
            "ring_capacity",
            Box::new(|b| put_u32(b, offset_of!(StaticHeader, ring_capacity), 3)),
            &["ring_capacity", "3"],
        ),
    ];
    for (what, patch, words) in cases {
        let mut bytes = good.clone();
        patch(&mut bytes);
        reseal(&mut bytes);
        let e = attach_err(&dir, what, &bytes);
        assert!(matches!(e, ArenaError::Inconsistent(_)), "patched {what}: {e:?}");
        assert_mentions(&e, &["arena header is inconsistent"]);
        assert_mentions(&e, words);
    }
}

#[test]
fn a_not_ready_arena_is_refused() {
    let dir = TempDir::new();
    let mut bytes = real_arena_bytes();
    // `state` is not part of the checksummed header: the creator sets it last.
    put_u32(&mut bytes, offset_of!(ArenaHeader, state), 0);
    assert!(validate_header_bytes(&bytes, bytes.len() as u64).is_ok(), "the header itself is fine");
    let e = attach_err(&dir, "initializing", &bytes);
    assert!(matches!(e, ArenaError::NotReady), "{e:?}");
    assert_mentions(&e, &["not ready", "initializing"]);
}

#[test]
fn a_named_arena_that_does_not_exist() {
    let name = unique("missing");
    let e = Arena::attach_named(&name).expect_err("attached to a missing arena");
    match &e {
        ArenaError::Io { op, source } => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert!(op.contains(&format!("/dev/shm/{name}")), "{op}");
        }
        other => panic!("a missing arena gave {other:?}"),
    }
    assert_mentions(&e, &[&name, "No such file"]);
}

#[test]
fn bad_names_are_refused() {
    let long = "x".repeat(201);
    for name in ["", "a/b", "../etc/passwd", ".hidden", "a\0b", &long] {
        for e in [
            Arena::attach_named(name).expect_err("attached by a bad name"),
            Arena::create_named(name, &config()).expect_err("created by a bad name"),
        ] {
            assert!(matches!(e, ArenaError::Config(_)), "name {name:?} gave {e:?}");
            assert_mentions(&e, &["arena name", &format!("{name:?}")]);
        }
    }
}

#[test]
fn a_corrupted_named_arena_is_refused_by_name() {
    use std::os::unix::fs::FileExt;
    let name = unique("corrupt");
    let creator = Arena::create_named(&name, &config()).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(Path::new("/dev/shm").join(&name)).unwrap();
    // A good arena first, then one whose magic a peer overwrote.
    drop(Arena::attach_named(&name).unwrap());
    f.write_all_at(b"NOTANARENA", 0).unwrap();
    let e = Arena::attach_named(&name).expect_err("attached to a corrupted arena");
    assert!(matches!(e, ArenaError::BadMagic { .. }), "{e:?}");
    assert_mentions(&e, &["not a shmflow arena"]);
    drop(creator);
    assert!(!Path::new("/dev/shm").join(&name).exists(), "the named arena was left behind");
}

#[test]
fn header_mutations_never_attach() {
    // Any change to the checksummed header is refused (never a panic, never a layout).
    let good = real_arena_bytes();
    let n = size_of::<StaticHeader>();
    for round in 0..5000 {
        let mut bytes = good[..4096].to_vec();
        let flips = 1 + round % 4;
        for _ in 0..flips {
            let at = rand::random::<usize>() % n;
            bytes[at] = rand::random();
        }
        let changed = bytes[..n] != good[..n];
        let r = validate_header_bytes(&bytes, good.len() as u64);
        assert_eq!(r.is_ok(), !changed, "round {round}: {r:?}");
        // A file shorter than the header, from the same bytes.
        let cut = rand::random::<usize>() % n;
        assert!(matches!(validate_header_bytes(&bytes[..cut], cut as u64), Err(ArenaError::Truncated { .. })));
    }
}

// ---------------------------------------------------------------------------------------
// Garbage in the rings and the segment positions
// ---------------------------------------------------------------------------------------

fn heap_arena() -> Arc<Arena> {
    Arc::new(Arena::heap(&config()).unwrap())
}

/// Pushes raw `values` into ring `kind` of channel `ch` as a (faulty) producer would:
/// slots first, then the tail.
fn inject(arena: &Arena, ch: u32, kind: RingKind, values: &[u64]) {
    let b = &arena.channels()[ch as usize];
    let h = match kind {
        RingKind::Data => &b.data,
        RingKind::Credit => &b.credit,
        RingKind::Priority => &b.priority,
    };
    let slots = arena.ring_slots(ch, kind);
    let mut tail = h.tail.load(Ordering::Relaxed);
    for v in values {
        slots[tail as usize & (slots.len() - 1)].store(*v, Ordering::Relaxed);
        tail += 1;
    }
    h.tail.store(tail, Ordering::Release);
}

fn assert_violation(e: Error, place: &str, words: &[&str]) {
    match &e {
        Error::ProtocolViolation { place: p, detail } => {
            assert_eq!(p, place, "{e}");
            for w in words {
                assert!(detail.contains(w), "{detail:?} does not mention {w:?}");
            }
        }
        other => panic!("expected a protocol violation in {place}, got {other:?}"),
    }
    assert_mentions(&e, &[&format!("protocol violation in {place}")]);
}

#[test]
fn garbage_in_the_data_ring_is_a_protocol_violation() {
    let kind = |k: u64| k << 56;
    let cases: Vec<(&[RingKind], Vec<u64>, Vec<String>)> = vec![
        (
            &[RingKind::Data, RingKind::Priority],
            vec![kind(1) | u64::from(SEGMENTS)],
            vec![format!("segment {SEGMENTS}, outside 0..{SEGMENTS}")],
        ),
        (&[RingKind::Data], vec![kind(2) | 0xffff_fff0], vec!["segment 4294967280".into()]),
        (&[RingKind::Data, RingKind::Priority], vec![kind(9)], vec!["unknown descriptor kind 9".into()]),
        (&[RingKind::Data], vec![kind(0)], vec!["unknown descriptor kind 0".into()]),
        (&[RingKind::Data], vec![kind(3) | (77 << 32)], vec!["unknown event code 77".into()]),
        (&[RingKind::Data], vec![kind(1) | (5 << 32) | 1], vec!["stray bits".into()]),
        (&[RingKind::Data], vec![kind(3) | (1 << 32) | 9], vec!["stray bits".into()]),
        (&[RingKind::Data], vec![kind(4)], vec!["barrier".into(), "payload slots".into()]),
        (&[RingKind::Data, RingKind::Priority], vec![kind(4) | (7 << 32), 1, 2], vec!["malformed barrier".into()]),
    ];
    for (rings, values, words) in cases {
        for &ring in rings {
            let arena = heap_arena();
            let mut r = ChannelReader::open(arena.clone(), CH).unwrap();
            inject(&arena, CH, ring, &values);
            let e = r.poll().expect_err(&format!("{values:x?} in the {ring:?} ring was accepted"));
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            assert_violation(e, &format!("channel {CH}"), &words);
        }
    }
    // A tail that runs more than a ring's capacity ahead of the head.
    let arena = heap_arena();
    let mut r = ChannelReader::open(arena.clone(), CH).unwrap();
    arena.channels()[CH as usize].data.tail.store(1000, Ordering::Release);
    assert_violation(r.poll().unwrap_err(), &format!("channel {CH}"), &["ring tail 1000"]);
    // A tail that goes back.
    let arena = heap_arena();
    let mut r = ChannelReader::open(arena.clone(), CH).unwrap();
    inject(&arena, CH, RingKind::Data, &[Descriptor::Buffer(1).encode(), Descriptor::Buffer(2).encode()]);
    assert_eq!(r.poll().unwrap(), Some(Descriptor::Buffer(1)));
    arena.channels()[CH as usize].data.tail.store(0, Ordering::Release);
    assert_eq!(r.poll().unwrap(), Some(Descriptor::Buffer(2)), "already seen: read from the cached tail");
    assert_violation(r.poll().unwrap_err(), &format!("channel {CH}"), &["ring tail 0"]);
}

fn writer_and_pool(arena: &Arc<Arena>) -> (ChannelWriter, LocalBufferPool) {
    let w = ChannelWriter::open(arena.clone(), CH).unwrap();
    let pool =
        LocalBufferPool::new(arena.clone(), CH, 0, LocalPoolConfig { min: 1, max: 4, max_per_channel: 4, channels: 1 })
            .unwrap();
    (w, pool)
}

#[test]
fn garbage_in_the_credit_ring_is_a_protocol_violation() {
    let kind = |k: u64| k << 56;
    let release = |credit: u64, seg_plus_1: u64| kind(1) | (credit << 32) | seg_plus_1;
    let cap = u64::from(config().ring_capacity);
    let cases: Vec<(Vec<u64>, Vec<String>)> = vec![
        (
            vec![release(1, u64::from(SEGMENTS) + 1)],
            vec![format!("credit returns segment {SEGMENTS}, outside 0..{SEGMENTS}")],
        ),
        (vec![release(1, 0xffff_ffff)], vec!["credit returns segment 4294967294".into()]),
        (vec![kind(7)], vec!["malformed credit".into()]),
        (vec![release(5, 1)], vec!["malformed credit".into()]),
        (vec![kind(2)], vec!["malformed credit".into()]),
        (vec![kind(2) | (1 << 32) | 3], vec!["malformed credit".into()]),
        (vec![release(1, 1)], vec!["release with no segment in flight".into()]),
        (vec![kind(2) | ((cap + 1) << 32)], vec![format!("exceeds the ring capacity {cap}")]),
    ];
    for (values, words) in cases {
        let arena = heap_arena();
        let (mut w, mut pool) = writer_and_pool(&arena);
        inject(&arena, CH, RingKind::Credit, &values);
        let e = w.reclaim(&mut pool).expect_err(&format!("{values:x?} in the credit ring was accepted"));
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        assert_violation(e, &format!("channel {CH}"), &words);
    }

    // A segment in range, but not one this producer's pool handed out.
    let arena = heap_arena();
    let (mut w, mut pool) = writer_and_pool(&arena);
    let r = ChannelReader::open(arena.clone(), CH).unwrap();
    r.grant(2).unwrap();
    w.reclaim(&mut pool).unwrap();
    assert_eq!(w.credit(), 2);
    let seg = pool.request(None).unwrap().unwrap();
    let mine = seg.index();
    let b = BufferBuilder::new(seg, 1);
    w.publish(Descriptor::Buffer(b.index())).unwrap();
    let foreign = (0..SEGMENTS).find(|&s| s != mine).unwrap();
    inject(&arena, CH, RingKind::Credit, &[release(1, u64::from(foreign) + 1)]);
    let e = w.reclaim(&mut pool).unwrap_err();
    assert_violation(e, &format!("channel {CH}"), &[&format!("release of segment {foreign}"), "not in flight"]);
}

/// A writer and a reader on channel `CH` with one published segment holding `bytes`
/// (committed, not finished); returns the segment's consumer and builder.
fn one_segment(
    arena: &Arc<Arena>,
    bytes: &[u8],
) -> (shmflow::buffer::BufferConsumer, BufferBuilder, ChannelWriter, ChannelReader) {
    let (mut w, mut pool) = writer_and_pool(arena);
    let mut r = ChannelReader::open(arena.clone(), CH).unwrap();
    r.grant(2).unwrap();
    w.reclaim(&mut pool).unwrap();
    let mut b = BufferBuilder::new(pool.request(None).unwrap().unwrap(), 1);
    assert_eq!(b.append(bytes), bytes.len());
    b.commit();
    w.publish(Descriptor::Buffer(b.index())).unwrap();
    let Some(Descriptor::Buffer(i)) = r.poll().unwrap() else { panic!("no buffer descriptor") };
    assert_eq!(i, b.index());
    let c = r.consumer(i);
    // The pool must outlive nothing here: segments it cached go back to the arena on drop.
    drop(pool);
    (c, b, w, r)
}

#[test]
fn a_segment_position_beyond_the_segment_is_a_protocol_violation() {
    let place = format!("channel {CH}");
    for bad in [SEG + 1, SEG + 1 + (1 << 31), (1 << 31) - 1] {
        let arena = heap_arena();
        let (mut c, b, _w, _r) = one_segment(&arena, b"hello, segment");
        let first = c.poll().unwrap().expect("the committed bytes");
        assert_eq!(&*first, b"hello, segment");
        let pos = &arena.controls()[b.index() as usize].position;
        pos.store(bad, Ordering::Release);
        let want = format!("writer position {}", bad & ((1 << 31) - 1));
        let seg = format!("segment {}", b.index());
        assert_violation(c.poll().unwrap_err(), &place, &[&want, &seg, &format!("..={SEG}")]);
        assert_violation(c.peek().map(|_| ()).unwrap_err(), &place, &[&want]);
        assert_violation(c.writer_position().unwrap_err(), &place, &[&want]);
        assert_violation(c.check_finished().unwrap_err(), &place, &[&want]);
    }
    // A position that goes back below what was read.
    let arena = heap_arena();
    let (mut c, b, _w, _r) = one_segment(&arena, &[7u8; 100]);
    assert_eq!(c.poll().unwrap().map(|v| v.len()), Some(100));
    arena.controls()[b.index() as usize].position.store(40, Ordering::Release);
    assert_violation(c.poll().unwrap_err(), &place, &["writer position 40 outside 100..="]);
}

#[test]
fn a_record_running_past_its_segment_is_a_protocol_violation() {
    use shmflow::record::frame::SLOT_VALID;
    // A stream segment whose first slot promises a record as long as the whole segment.
    let arena = heap_arena();
    let mut r = StreamReader::new(arena.clone(), CH, 2, WaitPolicy::park()).unwrap();
    let (mut w, mut pool) = writer_and_pool(&arena);
    w.reclaim(&mut pool).unwrap();
    let b = BufferBuilder::new(pool.request(None).unwrap().unwrap(), 1);
    arena.segment_word(b.index(), 0).store(SLOT_VALID | arena.segment_size(), Ordering::Release);
    w.publish(Descriptor::Buffer(b.index())).unwrap();
    let e = r.next(Some(Duration::from_secs(5)), |p| p.len()).unwrap_err();
    assert_violation(e, &format!("channel {CH}"), &[&format!("segment {}", b.index()), "not a record"]);

    // A slot without the valid bit is garbage too.
    let arena = heap_arena();
    let mut r = StreamReader::new(arena.clone(), CH, 2, WaitPolicy::park()).unwrap();
    let (mut w, mut pool) = writer_and_pool(&arena);
    w.reclaim(&mut pool).unwrap();
    let b = BufferBuilder::new(pool.request(None).unwrap().unwrap(), 1);
    arena.segment_word(b.index(), 0).store(12, Ordering::Release);
    w.publish(Descriptor::Buffer(b.index())).unwrap();
    let e = r.next(Some(Duration::from_secs(5)), |p| p.len()).unwrap_err();
    assert_violation(e, &format!("channel {CH}"), &["slot 0xc", "not a record"]);

    // The writer ends the segment after 10 bytes but never published a record in them.
    let arena = heap_arena();
    let mut r = StreamReader::new(arena.clone(), CH, 2, WaitPolicy::park()).unwrap();
    let (mut w, mut pool) = writer_and_pool(&arena);
    w.reclaim(&mut pool).unwrap();
    let mut b = BufferBuilder::new(pool.request(None).unwrap().unwrap(), 1);
    b.append(&[0u8; 4]); // a clear slot, then bytes no slot announces
    b.append(&[1u8; 6]);
    b.finish();
    w.publish(Descriptor::Buffer(b.index())).unwrap();
    let e = r.next(Some(Duration::from_secs(5)), |p| p.len()).unwrap_err();
    assert_violation(e, &format!("channel {CH}"), &[&format!("segment {}", b.index()), "ends at 10 with no record"]);
}

#[test]
fn ring_positions_no_honest_peer_writes_are_protocol_violations() {
    // Found by fuzz/ (ring_values): positions near the end of u64, or a head far behind
    // the tail, made the ring arithmetic overflow (a panic, not an error).
    let place = format!("channel {CH}");
    let max = u64::MAX;

    // The consumer attaches at a head near the end; the tail then goes back to 0.
    let arena = heap_arena();
    arena.channels()[CH as usize].data.head.store(max - 3, Ordering::Release);
    let mut r = ChannelReader::open(arena.clone(), CH).unwrap();
    assert_violation(r.poll().unwrap_err(), &place, &["ring tail 0 outside", &format!("..={max}")]);

    // The consumer's credit ring ends at u64::MAX: its next grant cannot advance the tail.
    let arena = heap_arena();
    let credit = &arena.channels()[CH as usize].credit;
    credit.tail.store(max, Ordering::Release);
    credit.head.store(max - 1, Ordering::Release);
    let r = ChannelReader::open(arena.clone(), CH).unwrap();
    assert_violation(r.grant(1).unwrap_err(), &format!("channel {CH} credit ring"), &["cannot advance"]);

    // The producer's data ring ends at u64::MAX with a head far behind it.
    let arena = heap_arena();
    arena.channels()[CH as usize].data.tail.store(max, Ordering::Release);
    let (mut w, _pool) = writer_and_pool(&arena);
    assert!(!w.has_room(1), "a ring whose head is far behind has no room");
    assert!(!w.consumed());
    let e = w.publish(Descriptor::Event(shmflow::ring::EventCode::EndOfData)).unwrap_err();
    assert_violation(e, &place, &["cannot advance"]);

    // A head more than a ring behind the tail: the ring looks full, and the push says why.
    let arena = heap_arena();
    arena.channels()[CH as usize].data.tail.store(1000, Ordering::Release);
    let (mut w, _pool) = writer_and_pool(&arena);
    assert!(!w.has_room(1));
    let e = w.publish(Descriptor::Event(shmflow::ring::EventCode::EndOfData)).unwrap_err();
    assert_violation(e, &place, &["ring head 0 outside"]);
}
