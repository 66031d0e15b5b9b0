//! The seed corpus: valid inputs and targeted mutations of them, one list per target.
//! `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus` writes them to
//! `fuzz/corpus/<target>/seed-<name>` (the files are committed; the fuzzer adds its own).

use crate::arena_header::reseal;
use crate::blocking_file::reseal as reseal_blocking;
use shmflow::memory::{Arena, ArenaConfig, StaticHeader};
use shmflow::partition::{BlockingResultPartition, FileChannelManager, ResultPartitionId, ResultPartitionType};
use shmflow::record::Record;
use shmflow::ring::{BarrierDescriptor, Credit, Descriptor, EventCode};
use crate::synthetic::Synthetic;
use std::mem::offset_of;
use std::os::fd::AsRawFd;

/// One seed: its target, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    out.extend(arena_header().into_iter().map(|(n, b)| ("arena_header", n, b)));
    out.extend(ring_values().into_iter().map(|(n, b)| ("ring_values", n, b)));
    out.extend(records().into_iter().map(|(n, b)| ("records", n, b)));
    out.extend(blocking_file().into_iter().map(|(n, b)| ("blocking_file", n, b)));
    out
}

/// The first `n` bytes of a freshly created memfd arena, and its total size.
pub fn real_header(config: &ArenaConfig, n: usize) -> (Vec<u8>, u64) {
    let arena = Arena::create_memfd(config, "seed").expect("create a memfd arena");
    let fd = arena.fd().expect("a memfd arena has an fd").as_raw_fd();
    let mut buf = vec![0u8; n];
    // SAFETY: `buf` has `n` writable bytes; `fd` is open for as long as `arena` lives.
    let got = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), n, 0) };
    assert_eq!(got, n as isize, "short read of the arena header");
    (buf, arena.layout().total_size)
}

fn small_config() -> ArenaConfig {
    ArenaConfig {
        segment_size: 4096,
        segment_count: 8,
        ring_capacity: 4,
        max_channels: 1,
        max_partitions: 1,
        max_gates: 1,
        max_channels_per_gate: 64,
        max_workers: 1,
        max_tasks: 1,
    }
}

fn header_input(flags: u8, param: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&param.to_le_bytes());
    v.extend_from_slice(bytes);
    v
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `arena_header` seeds: the real header at several file lengths, then one mutation per
/// check of the validator.
pub fn arena_header() -> Vec<(String, Vec<u8>)> {
    let (real, total) = real_header(&ArenaConfig::default(), 4096);
    let (small, small_total) = real_header(&small_config(), 4096);
    let mut out = vec![
        // flags 0: the file is as long as the bytes (truncated arena).
        ("default-4096".to_string(), header_input(0, 0, &real)),
        // flags 2: param is the file length; exactly the arena: attaches.
        ("default-exact".into(), header_input(2, total, &real)),
        // flags 4: the header's own total_size.
        ("small-declared".into(), header_input(4, 0, &small)),
        // flags 6: total_size - 1.
        ("small-one-short".into(), header_input(6, u64::MAX, &small)),
        ("small-longer".into(), header_input(2, small_total + 4096, &small)),
        ("header-only".into(), header_input(2, small_total, &small[..size_of::<StaticHeader>()])),
        ("short".into(), header_input(0, 0, &small[..100])),
        ("tiny".into(), small[..5].to_vec()),
    ];
    // The mutations keep the header's first 640 bytes: the static part, `state` (256) and
    // the free-stack head (512); the rest of the header page is zeros anyway.
    let head = &small[..640];
    let mut mutate = |name: &str, f: &dyn Fn(&mut Vec<u8>), reseal_flag: u8| {
        let mut b = head.to_vec();
        f(&mut b);
        out.push((format!("small-{name}"), header_input(4 | reseal_flag, 0, &b)));
    };
    mutate("magic", &|b| b[0] = b'X', 0);
    mutate("version", &|b| put32(b, offset_of!(StaticHeader, version), 2), 1);
    mutate("checksum", &|b| b[40] ^= 1, 0);
    mutate("header-size", &|b| put32(b, offset_of!(StaticHeader, header_size), 4096), 1);
    mutate("segment-size", &|b| put32(b, offset_of!(StaticHeader, segment_size), 5000), 1);
    mutate("segment-count-0", &|b| put32(b, offset_of!(StaticHeader, segment_count), 0), 1);
    mutate("segment-count-max", &|b| put32(b, offset_of!(StaticHeader, segment_count), u32::MAX), 1);
    mutate("ring-capacity", &|b| put32(b, offset_of!(StaticHeader, ring_capacity), 3), 1);
    mutate("gate-width", &|b| put32(b, offset_of!(StaticHeader, max_channels_per_gate), 65), 1);
    mutate("region", &|b| put64(b, offset_of!(StaticHeader, regions) + 16, 1 << 40), 1);
    mutate("total", &|b| put64(b, offset_of!(StaticHeader, total_size), 1 << 50), 1);
    mutate("not-ready", &|b| put32(b, 256, 0), 0);
    // The free-stack head (offset 512) names a segment past the end, or the links are bad.
    mutate("stack-head", &|b| put64(b, 512, (7 << 32) | 1000), 0);
    mutate("stack-empty", &|b| put64(b, 512, 0), 0);
    mutate("resealed-garbage", &|b| b[..224].iter_mut().for_each(|x| *x = x.wrapping_mul(7)), 1);
    // Keep reseal in use for seeds that patch fields and then fix the checksum here.
    let mut b = head.to_vec();
    put32(&mut b, offset_of!(StaticHeader, max_workers), 4097);
    reseal(&mut b);
    out.push(("small-workers".into(), header_input(4, 0, &b)));
    out
}

fn e2e(shape: u8, ops: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![1, shape];
    for op in ops {
        v.extend_from_slice(op);
    }
    v
}

/// `ring_values` seeds: decodable and malformed values, then end-to-end scripts.
pub fn ring_values() -> Vec<(String, Vec<u8>)> {
    let mut values = Vec::new();
    for d in [
        Descriptor::Buffer(3),
        Descriptor::EventBuffer(0),
        Descriptor::Event(EventCode::EndOfPartition),
        Descriptor::Event(EventCode::EndOfData),
        Descriptor::Event(EventCode::ProducerFailed),
    ] {
        values.push(d.encode());
    }
    let (b, _) =
        Descriptor::Barrier(BarrierDescriptor { checkpoint_id: 42, timestamp: 7, unaligned: true }).encode_slots();
    values.extend_from_slice(&b);
    for c in [
        Credit::Release { segment: Some(2), credit: true, last: false },
        Credit::Release { segment: None, credit: false, last: true },
        Credit::Grant(5),
    ] {
        values.push(c.encode());
    }
    values.extend_from_slice(&[0, u64::MAX, 9 << 56, (1 << 56) | (5 << 32) | 1, (4 << 56) | (7 << 32)]);
    let mut decode = vec![0u8, 1, 7]; // mode 0, segment_count = 1 + 7
    for v in &values {
        decode.extend_from_slice(&v.to_le_bytes());
    }
    let mut wide = vec![0u8, 0];
    wide.extend_from_slice(&u32::MAX.to_le_bytes());
    for v in &values {
        wide.extend_from_slice(&v.to_le_bytes());
    }

    // Op codes of `ring_values::step`.
    const OPEN_READER: u8 = 9;
    const OPEN_WRITER: u8 = 11;
    const GRANT: u8 = 10;
    const RECLAIM: u8 = 12;
    const PRODUCE: u8 = 13;
    const POLL_RECORD: u8 = 5;
    const POLL_CHANNEL: u8 = 6;
    const CONSUMER: u8 = 7;
    const PUSH: u8 = 2;
    const POSITION: u8 = 1;
    const CONTROL: u8 = 3;
    const CHANNEL_FIELD: u8 = 4;
    const EVENTS: u8 = 15;
    const BUILDER: u8 = 14;
    let setup: &[&[u8]] = &[&[OPEN_READER, 0, 0], &[OPEN_WRITER, 0x43], &[GRANT, 0, 4], &[RECLAIM]];
    let produce_two: &[u8] = &[PRODUCE, 0, 2, 10, 0, 20, 0, 0];
    let polls: &[&[u8]] = &[&[POLL_RECORD], &[POLL_RECORD], &[POLL_RECORD], &[POLL_RECORD]];
    fn cat<'a>(parts: &[&[&'a [u8]]]) -> Vec<&'a [u8]> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }
    let mut out = vec![
        ("decode-small".to_string(), decode),
        ("decode-wide".to_string(), wide),
        ("e2e-honest".into(), e2e(0x3d, &cat(&[setup, &[produce_two], polls, &[&[RECLAIM]]]))),
        (
            "e2e-spanning".into(),
            e2e(
                0x3d,
                &cat(&[setup, &[&[PRODUCE, 0, 1, 0x94, 0x11, 0], &[PRODUCE, 0, 1, 10, 0, 0]], polls, &[&[RECLAIM]]]),
            ),
        ),
        (
            "e2e-committed-then-more".into(),
            e2e(
                0x1d,
                &cat(&[
                    setup,
                    &[&[PRODUCE, 0, 1, 10, 0, 1]],
                    polls,
                    &[&[BUILDER, 0, 4, 0], &[BUILDER, 2, 0, 0]],
                    polls,
                ]),
            ),
        ),
        (
            "e2e-garbage-descriptors".into(),
            e2e(
                0x3d,
                &cat(&[
                    setup,
                    &[&[PUSH, 0, 3, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 1, 0, 1, 4, 0]],
                    polls,
                ]),
            ),
        ),
        (
            "e2e-garbage-credits".into(),
            e2e(
                0x3d,
                &cat(&[setup, &[&[PUSH, 1, 3, 2, 5, 3, 200, 0, 1, 2, 3, 4, 5, 6, 7, 8]], &[&[RECLAIM]], &[&[RECLAIM]]]),
            ),
        ),
        (
            "e2e-positions".into(),
            e2e(
                0x3d,
                &cat(&[
                    setup,
                    &[produce_two],
                    &[&[POSITION, 0, 2, 0], &[POSITION, 0x80, 1, 3], &[POSITION, 1, 1, 1]],
                    polls,
                    &[&[RECLAIM]],
                ]),
            ),
        ),
        (
            "e2e-tails-at-the-end".into(),
            e2e(
                0x3d,
                &cat(&[&[&[POSITION, 1, 2, 0], &[POSITION, 0x81, 2, 3]], setup, &[produce_two], polls, &[&[RECLAIM]]]),
            ),
        ),
        (
            "e2e-segment-control".into(),
            e2e(
                0x3d,
                &cat(&[
                    setup,
                    &[produce_two],
                    &[&[CONTROL, 0, 1, 0x10, 0x10, 1], &[CONTROL, 0, 2, 3, 0]],
                    polls,
                    &[&[RECLAIM]],
                ]),
            ),
        ),
        (
            "e2e-consumers".into(),
            e2e(
                0x3d,
                &cat(&[
                    setup,
                    &[produce_two],
                    &[&[POLL_CHANNEL, 0], &[CONSUMER, 0, 0, 0, 0], &[CONSUMER, 0, 4, 3, 0, 9], &[CONSUMER, 0, 1, 5, 0]],
                    &[&[CONSUMER, 0, 7, 0, 0], &[RECLAIM]],
                ]),
            ),
        ),
        (
            "e2e-events".into(),
            e2e(
                0x3d,
                &cat(&[
                    setup,
                    &[
                        &[EVENTS, 0, 2, 0, 0],
                        &[EVENTS, 1, 6, 1, 2, 0, 3, 0, 0],
                        &[EVENTS, 5, 0, 0, 0],
                        &[CHANNEL_FIELD, 8, 0, 0, 0, 0, 5],
                    ],
                    polls,
                ]),
            ),
        ),
    ];
    out.push(("e2e-empty-ops".into(), vec![1, 0, 17, 16, 0, 8, 0]));
    out
}

/// `records` seeds: each decoder's valid encodings and near misses.
pub fn records() -> Vec<(String, Vec<u8>)> {
    fn enc<R: Record + ?Sized>(r: &R) -> Vec<u8> {
        let mut v = vec![0u8; r.serialized_len()];
        r.serialize_into(&mut v);
        v
    }
    let pair = enc(&("hello", 42u64));
    let mut short_field = pair.clone();
    short_field[0] = 200;
    vec![
        ("empty".into(), Vec::new()),
        ("str".into(), b"the quick brown fox".to_vec()),
        ("not-utf8".into(), vec![b'a', 0xff, 0xfe, b'b']),
        ("u64".into(), enc(&0x0102_0304_0506_0708u64)),
        ("string-u64".into(), pair),
        ("string-u64-long-field".into(), short_field),
        ("bytes-u32-u64".into(), enc(&(&[1u8, 2, 3][..], 7u32, 9u64))),
        ("bytes-u32-u64-trailing".into(), [enc(&(&[1u8][..], 7u32, 9u64)), vec![0]].concat()),
        ("synthetic".into(), enc(&Synthetic { seq: 12345, len: 40, bad: 0 })),
        ("synthetic-min".into(), enc(&Synthetic { seq: 1, len: 8, bad: 0 })),
        ("synthetic-damaged".into(), {
            let mut v = enc(&Synthetic { seq: 77, len: 24, bad: 0 });
            v[20] ^= 0x55;
            v
        }),
    ]
}

/// A finished blocking partition file: `records` records spread over `subs` subpartitions
/// (record `i` to subpartition `i % subs`, none to the last of three or more), then one
/// broadcast record, written with regions of `region_bytes`.
fn blocking_bytes(subs: u32, records: u64, record_len: usize, region_bytes: usize) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("shmflow-fuzz-seeds-{}", std::process::id()));
    let files = FileChannelManager::new(&dir).expect("a temporary directory").with_region_bytes(region_bytes);
    let id = ResultPartitionId::new(7, 1);
    let mut p = BlockingResultPartition::new(&files, id, ResultPartitionType::Blocking, subs).expect("a partition");
    let targets = if subs >= 3 { subs - 1 } else { subs };
    for i in 0..records {
        let rec = vec![i as u8; record_len + (i % 5) as usize];
        p.emit(&rec[..], (i % u64::from(targets)) as u32).expect("emit");
    }
    p.broadcast_emit(&b"all"[..]).expect("broadcast");
    p.finish().expect("finish");
    let bytes = std::fs::read(files.path_of(id)).expect("read the file");
    files.remove_all().expect("remove the temporary directory");
    bytes
}

fn flagged(flags: u8, bytes: &[u8]) -> Vec<u8> {
    [&[flags][..], bytes].concat()
}

/// `blocking_file` seeds: real files, then damaged ones (flags 1: checksums recomputed
/// after the damage, so the checks behind them are reached).
pub fn blocking_file() -> Vec<(String, Vec<u8>)> {
    let small = blocking_bytes(2, 20, 6, 64);
    let three = blocking_bytes(3, 12, 3, 64);
    let large = blocking_bytes(1, 2, 150, 64);
    let empty = blocking_bytes(1, 0, 0, 64);
    let index_off = |b: &[u8]| u64::from_le_bytes(b[b.len() - 40..b.len() - 32].try_into().expect("8 bytes")) as usize;
    let mut out = vec![
        ("two-subs".to_string(), flagged(0, &small)),
        ("two-subs-resealed".into(), flagged(1, &small)),
        ("empty-sub".into(), flagged(0, &three)),
        ("large-record".into(), flagged(0, &large)),
        ("broadcast-only".into(), flagged(0, &empty)),
        ("truncated".into(), flagged(0, &small[..small.len() - 10])),
        ("tiny".into(), flagged(0, &small[..40])),
    ];
    let mut damaged = |name: &str, base: &[u8], f: &dyn Fn(&mut Vec<u8>, usize), flags: u8| {
        let mut b = base.to_vec();
        let ix = index_off(&b);
        f(&mut b, ix);
        if flags & 1 != 0 {
            // Stored resealed too, so the seed shows the state the harness reads.
            reseal_blocking(&mut b);
        }
        out.push((name.to_string(), flagged(flags, &b)));
    };
    damaged("data-byte", &small, &|b, _| b[40] ^= 1, 0);
    damaged("record-length", &small, &|b, _| b[32] = 0xff, 1);
    damaged("record-length-short", &small, &|b, _| b[32] = 3, 1);
    damaged("index-byte", &small, &|b, ix| b[ix + 3] ^= 0x10, 0);
    damaged("region-count", &three, &|b, ix| b[ix + 8] = 9, 1);
    damaged("record-count", &three, &|b, ix| b[ix] += 1, 1);
    damaged("region-offset", &large, &|b, ix| b[ix + 16] = 0, 1);
    damaged("region-len", &large, &|b, ix| b[ix + 24] = 0xf0, 1);
    damaged(
        "version-1",
        &small,
        &|b, _| {
            b[8] = 1;
            let at = b.len() - 20;
            b[at] = 1;
        },
        1,
    );
    damaged("versions-differ", &small, &|b, _| b[8] = 3, 1);
    damaged("subpartitions", &small, &|b, _| b[12] = 0xff, 1);
    out
}
