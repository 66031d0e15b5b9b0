//! Blocking (file-backed) result partitions: the wordcount over a blocking exchange equals
//! the pipelined one, a killed consumer reads everything again, release rules per type,
//! unwritable directories and corrupt files are clear errors.
//!
//! The child processes are `child_entry` run with `--exact`; it does nothing unless
//! `SHMFLOW_BLOCKING_TEST_ROLE` is set.

/// The command line's built-in jobs (they live next to the binary, not in the library).
#[path = "../src/bin/shmflow/jobs/mod.rs"]
#[allow(dead_code, unused_imports)]
mod jobs;

use jobs::{reference_wordcount, TextSource};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BlockingPartitionFile, BlockingResultPartition, FileChannelManager, ResultPartitionId, ResultPartitionManager,
    ResultPartitionType, PARTITION_FINISHED, PARTITION_REGISTERED,
};
use shmflow::Error;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{self_command, shmflow, TempDir};

const ROLE: &str = "SHMFLOW_BLOCKING_TEST_ROLE";
const DIR: &str = "SHMFLOW_BLOCKING_TEST_DIR";
const ID: ResultPartitionId = ResultPartitionId::new(0x5eed, 3);
const RECORDS: u64 = 60_000;
const SUBS: u32 = 3;

/// Record `i` of subpartition `s`: mostly short, sometimes larger than a region.
fn payload(s: u32, i: u64) -> Vec<u8> {
    let len = if i % 5003 == 0 { 40_000 + (i % 7) as usize } else { 4 + (i % 29) as usize };
    let mut v = vec![(s as u8).wrapping_mul(31) ^ (i as u8); len];
    v[..4].copy_from_slice(&(i as u32).to_le_bytes());
    v
}

fn digest(acc: u64, rec: &[u8]) -> u64 {
    rec.iter().fold(acc.rotate_left(5) ^ rec.len() as u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn expected_digest(s: u32) -> (u64, u64) {
    let mut d = 0;
    for i in 0..RECORDS {
        d = digest(d, &payload(s, i));
    }
    d = digest(d, b"broadcast");
    (RECORDS + 1, d)
}

fn write_partition(files: &FileChannelManager, directory: Option<ResultPartitionManager>, ptype: ResultPartitionType) {
    let mut p = BlockingResultPartition::new(files, ID, ptype, SUBS).unwrap();
    if let Some(d) = directory {
        p.register(d).unwrap();
    }
    for i in 0..RECORDS {
        for s in 0..SUBS {
            p.emit(&payload(s, i)[..], s).unwrap();
        }
    }
    p.broadcast_emit(&b"broadcast"[..]).unwrap();
    p.finish().unwrap();
    assert_eq!(p.stats().records_out, RECORDS * u64::from(SUBS) + 1);
}

fn read_all(files: &FileChannelManager, s: u32) -> (u64, u64) {
    let f = BlockingPartitionFile::open(files, ID).unwrap();
    let (mut n, mut d) = (0, 0);
    for r in f.subpartition(s).unwrap() {
        d = digest(d, r.unwrap());
        n += 1;
    }
    (n, d)
}

fn child(role: &str, dir: &Path) -> Command {
    let mut cmd = self_command("child_entry", ROLE, role);
    cmd.env(DIR, dir).stdout(Stdio::piped());
    cmd
}

/// The child: `half` reads half of subpartition 1, says so, and waits to be killed;
/// `all` reads all of it and prints the count and digest.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    if role == "full" {
        // A full disk, simulated: files of this process may not grow past 64 KiB.
        let limit = libc::rlimit { rlim_cur: 64 << 10, rlim_max: 64 << 10 };
        // SAFETY: plain system calls on this process: ignore SIGXFSZ so the write fails
        // with EFBIG instead of killing us, and lower our own file-size limit.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        let files = FileChannelManager::new(std::env::var_os(DIR).unwrap()).unwrap();
        let mut p = BlockingResultPartition::new(&files, ID, ResultPartitionType::Blocking, 2).unwrap();
        let rec = vec![7u8; 1000];
        let mut err = None;
        for i in 0..1000u32 {
            if let Err(e) = p.emit(&rec[..], i % 2) {
                err = Some(e);
                break;
            }
        }
        let err = match err {
            Some(e) => e,
            None => p.finish().expect_err("1 MB cannot fit in 64 KiB"),
        };
        let mut out = std::io::stdout();
        writeln!(out, "RESULT full {}", matches!(err, Error::Io { .. })).unwrap();
        writeln!(out, "RESULT-MESSAGE {err}").unwrap();
        return;
    }
    let files = FileChannelManager::new(std::env::var_os(DIR).unwrap()).unwrap();
    let f = BlockingPartitionFile::open(&files, ID).unwrap();
    let mut out = std::io::stdout();
    if role == "half" {
        let mut n = 0;
        for r in f.subpartition(1).unwrap().take((RECORDS / 2) as usize) {
            r.unwrap();
            n += 1;
        }
        writeln!(out, "RESULT half {n}").unwrap();
        out.flush().unwrap();
        std::thread::sleep(Duration::from_secs(600));
    } else {
        let (n, d) = read_all(&files, 1);
        writeln!(out, "RESULT all {n} {d}").unwrap();
    }
}

fn result_line(stdout: impl std::io::Read) -> String {
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn a_killed_consumer_reads_the_whole_partition_again() {
    let tmp = TempDir::new("restart");
    let files = FileChannelManager::new(&tmp.0).unwrap();
    write_partition(&files, None, ResultPartitionType::Blocking);
    let mut c = child("half", &tmp.0).spawn().unwrap();
    let line = result_line(c.stdout.take().unwrap());
    assert_eq!(line, format!("half {}", RECORDS / 2));
    c.kill().unwrap();
    c.wait().unwrap();
    // The restarted consumer (a new process) and this one read every record again.
    let out = child("all", &tmp.0).output().unwrap();
    assert!(out.status.success());
    let (n, d) = expected_digest(1);
    assert_eq!(result_line(&out.stdout[..]), format!("all {n} {d}"));
    assert_eq!(read_all(&files, 1), (n, d));
    for s in [0, 2] {
        assert_eq!(read_all(&files, s), expected_digest(s));
    }
}

fn arena() -> Arc<Arena> {
    let cfg =
        ArenaConfig { segment_size: 4096, segment_count: 64, max_channels: 16, max_gates: 8, ..ArenaConfig::default() };
    Arc::new(Arena::heap(&cfg).unwrap())
}

#[test]
fn blocking_is_released_after_consumption_persistent_only_explicitly() {
    let tmp = TempDir::new("release");
    let files = FileChannelManager::new(&tmp.0).unwrap();
    let dir = ResultPartitionManager::new(arena());
    // Not readable before the producer finished; registered, not finished.
    let mut p = BlockingResultPartition::new(&files, ID, ResultPartitionType::Blocking, 2).unwrap();
    p.register(dir.clone()).unwrap();
    p.emit(&b"x"[..], 0).unwrap();
    assert_eq!(dir.lookup_once(ID).unwrap().state, PARTITION_REGISTERED);
    let e = BlockingPartitionFile::open(&files, ID).unwrap_err();
    assert!(e.to_string().contains("not finished"), "{e}");
    p.finish().unwrap();
    drop(p);
    let info = dir.lookup_once(ID).unwrap();
    assert_eq!((info.state, info.partition_type), (PARTITION_FINISHED, ResultPartitionType::Blocking));
    let path = files.path_of(ID);
    assert!(path.is_file());
    assert!(!files.consumer_done(&dir, ID).unwrap());
    assert!(path.is_file(), "released before its last consumer was done");
    assert!(files.consumer_done(&dir, ID).unwrap());
    assert!(!path.exists(), "BLOCKING must be gone after consumption");
    assert!(matches!(dir.lookup_once(ID), Err(Error::PartitionReleased(_))));

    // BLOCKING_PERSISTENT: consumed by everyone, still there; gone on explicit release.
    // (A released id is not registered again: the directory would still report it released.)
    let id = ResultPartitionId::new(0x5eed, 4);
    let path = files.path_of(id);
    let mut p = BlockingResultPartition::new(&files, id, ResultPartitionType::BlockingPersistent, 2).unwrap();
    p.register(dir.clone()).unwrap();
    p.emit(&b"y"[..], 1).unwrap();
    p.finish().unwrap();
    for _ in 0..2 {
        assert!(!files.consumer_done(&dir, id).unwrap());
    }
    assert!(path.is_file(), "BLOCKING_PERSISTENT must stay until released");
    let f = BlockingPartitionFile::open(&files, id).unwrap();
    assert_eq!(f.subpartition(1).unwrap().map(|r| r.unwrap().to_vec()).collect::<Vec<_>>(), vec![b"y".to_vec()]);
    drop(f);
    p.release().unwrap();
    assert!(!path.exists());
    assert!(matches!(dir.lookup_once(id), Err(Error::PartitionReleased(_))));

    // A producer that never finishes leaves nothing behind and fails its entry.
    let id2 = ResultPartitionId::new(9, 9);
    let mut p = BlockingResultPartition::new(&files, id2, ResultPartitionType::Blocking, 1).unwrap();
    p.register(dir.clone()).unwrap();
    p.emit(&b"z"[..], 0).unwrap();
    drop(p);
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0);
    assert!(matches!(dir.lookup_once(id2), Err(Error::PartitionFailed(_))));
    // The pipelined constructor still refuses blocking types.
    assert!(ResultPartitionType::Blocking.check_supported().unwrap_err().to_string().contains("not supported yet"));
}

#[test]
fn an_unwritable_directory_is_a_clear_error() {
    let tmp = TempDir::new("unwritable");
    let file = tmp.0.join("a-regular-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let bad = file.join("blocking");
    let e = FileChannelManager::new(&bad).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    // The directory disappears (replaced by a file) after the manager was made.
    let d = tmp.0.join("gone");
    let files = FileChannelManager::new(&d).unwrap();
    std::fs::remove_dir(&d).unwrap();
    std::fs::write(&d, b"x").unwrap();
    let e = BlockingResultPartition::new(&files, ID, ResultPartitionType::Blocking, 2).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains(&d.display().to_string()), "{e}");
}

#[test]
fn a_full_disk_is_a_clear_error() {
    let tmp = TempDir::new("full");
    let out = self_command("child_entry", ROLE, "full").env(DIR, &tmp.0).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "the child failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RESULT full true"), "a write error is Error::Io: {text}");
    assert!(text.contains(&tmp.0.display().to_string()), "the error names the file: {text}");
}

/// A finished 2-subpartition file of 40 short records in 64-byte regions under `dir`:
/// its manager, path and bytes.
fn small_finished_file(dir: &Path) -> (FileChannelManager, std::path::PathBuf, Vec<u8>) {
    let files = FileChannelManager::new(dir).unwrap().with_region_bytes(64);
    let mut p = BlockingResultPartition::new(&files, ID, ResultPartitionType::Blocking, 2).unwrap();
    for i in 0..40u64 {
        p.emit(&format!("record {i:5}")[..], (i % 2) as u32).unwrap();
    }
    p.finish().unwrap();
    drop(p);
    let path = files.path_of(ID);
    let good = std::fs::read(&path).unwrap();
    (files, path, good)
}

#[test]
fn a_corrupt_file_is_a_clear_error_never_a_panic() {
    let tmp = TempDir::new("corrupt");
    let (files, path, good) = small_finished_file(&tmp.0);
    let index_off = u64::from_le_bytes(good[good.len() - 40..good.len() - 32].try_into().unwrap()) as usize;
    let write = |b: &[u8]| std::fs::write(&path, b).unwrap();
    let read = || -> Result<u64, Error> {
        let f = BlockingPartitionFile::open(&files, ID)?;
        let mut n = 0;
        for s in 0..f.num_subpartitions() {
            for r in f.subpartition(s)? {
                r?;
                n += 1;
            }
        }
        Ok(n)
    };
    assert_eq!(read().unwrap(), 40);
    // Flipped index bytes: the checksum catches them.
    let mut b = good.clone();
    b[index_off + 3] ^= 0xff;
    b[index_off + 20] ^= 0x10;
    write(&b);
    let e = read().unwrap_err();
    assert!(matches!(e, Error::ProtocolViolation { .. }), "{e:?}");
    assert!(e.to_string().contains("checksum"), "{e}");
    // A damaged record length inside a region: caught while reading (by the region's
    // checksum, before the length is looked at).
    let mut b = good.clone();
    b[32] = 0xff;
    write(&b);
    let e = read().unwrap_err();
    assert!(matches!(e, Error::ProtocolViolation { .. }) && e.to_string().contains("region 0 of"), "{e}");
    // Truncated: no footer.
    write(&good[..good.len() - 10]);
    assert!(matches!(read().unwrap_err(), Error::ProtocolViolation { .. }));
    write(&good[..10]);
    assert!(matches!(read().unwrap_err(), Error::ProtocolViolation { .. }));
    // Every single-byte flip anywhere: an error or (data bytes) other payloads, never a panic.
    for at in 0..good.len() {
        let mut b = good.clone();
        b[at] ^= 0x5a;
        write(&b);
        if let Ok(n) = read() {
            assert!(at < index_off, "flip at {at} (index or footer) went unnoticed");
            assert_eq!(n, 40);
        }
    }
}

fn run_wordcount(exchange: &str, p: &str, out: &Path) -> String {
    let o = shmflow()
        .args(["run", "wordcount", "--generated-mb", "3", "--parallelism", p, "--workers", "2", "--exchange"])
        .arg(exchange)
        .arg("--output")
        .arg(out)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(o.status.success(), "{exchange} wordcount failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn blocking_wordcount_equals_pipelined() {
    let tmp = TempDir::new("wc");
    let reference = reference_wordcount(&TextSource::generated_mb(3)).unwrap();
    let expected: Vec<String> = reference.iter().map(|(w, c)| format!("{w}\t{c}")).collect();
    let before: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n.to_string_lossy().starts_with("shmflow-blocking-") && !n.to_string_lossy().contains("test"))
        .collect();
    for p in ["2", "3"] {
        let (a, b) = (tmp.0.join(format!("pipelined-{p}")), tmp.0.join(format!("blocking-{p}")));
        let start = Instant::now();
        run_wordcount("pipelined", p, &a);
        let tp = start.elapsed();
        let summary = run_wordcount("blocking", p, &b);
        assert!(summary.contains("Blocking"), "{summary}");
        let (a, b) = (std::fs::read_to_string(&a).unwrap(), std::fs::read_to_string(&b).unwrap());
        assert_eq!(a, b, "blocking and pipelined wordcount differ at parallelism {p}");
        assert_eq!(b.lines().collect::<Vec<_>>(), expected, "blocking wordcount differs from the reference");
        eprintln!("parallelism {p}: pipelined {tp:?}, total {:?}", start.elapsed());
    }
    let after: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n.to_string_lossy().starts_with("shmflow-blocking-") && !n.to_string_lossy().contains("test"))
        .collect();
    assert!(after.iter().all(|n| before.contains(n)), "blocking files left behind: {after:?}");
}

#[test]
fn blocking_is_refused_where_unsupported() {
    let o =
        shmflow().args(["run", "shuffle", "--records", "1000", "--exchange", "blocking", "--quiet"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("wordcount only"));
}

#[test]
fn the_environment_creates_and_opens_blocking_partitions() {
    let tmp = TempDir::new("env");
    let files = FileChannelManager::new(&tmp.0).unwrap();
    let arena = Arc::new(Arena::heap(&ArenaConfig { segment_count: 16, ..ArenaConfig::default() }).unwrap());
    let env = shmflow::ShuffleEnvironment::new(arena.clone(), 0);
    // The pipelined factory refuses the blocking types and says where to go.
    let e = env
        .create_result_partition(&shmflow::partition::ResultPartitionConfig::new(ID, ResultPartitionType::Blocking, 2))
        .unwrap_err();
    assert!(e.to_string().contains("BlockingResultPartition"), "{e}");
    let mut p = env.create_blocking_partition(&files, ID, ResultPartitionType::Blocking, 2).unwrap();
    p.emit(&b"one"[..], 0).unwrap();
    p.emit(&b"two"[..], 1).unwrap();
    // Not finished yet: a consumer waits, and here times out.
    let e = env.open_blocking_partition(&files, ID, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, Error::Timeout(..)), "{e}");
    p.finish().unwrap();
    let f = env.open_blocking_partition(&files, ID, Duration::from_secs(10)).unwrap();
    let got: Vec<Vec<u8>> = f.subpartition(1).unwrap().map(|r| r.unwrap().to_vec()).collect();
    assert_eq!(got, vec![b"two".to_vec()]);
}

/// The regions of every subpartition of a finished file, from its index (format version 2:
/// per subpartition [records][regions], then per region [offset][len][checksum]).
fn regions_of(file: &[u8]) -> Vec<Vec<(usize, usize)>> {
    let u64_at = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().unwrap()) as usize;
    let n = u32::from_le_bytes(file[12..16].try_into().unwrap());
    let mut at = u64_at(file.len() - 40);
    let mut subs = Vec::new();
    for _ in 0..n {
        let count = u64_at(at + 8);
        at += 16;
        subs.push((0..count).map(|r| (u64_at(at + 24 * r), u64_at(at + 24 * r + 8))).collect());
        at += 24 * count;
    }
    subs
}

/// The records of one region: its length-prefixed payloads.
fn records_in(mut region: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !region.is_empty() {
        let len = u32::from_le_bytes(region[..4].try_into().unwrap()) as usize;
        out.push(region[4..4 + len].to_vec());
        region = &region[4 + len..];
    }
    out
}

#[test]
fn a_flipped_byte_in_a_data_region_is_an_error_naming_the_region_and_no_record_of_it_is_read() {
    let tmp = TempDir::new("region-checksum");
    let files = FileChannelManager::new(&tmp.0).unwrap().with_region_bytes(256);
    let mut p = BlockingResultPartition::new(&files, ID, ResultPartitionType::Blocking, SUBS).unwrap();
    for i in 0..600u64 {
        for s in 0..SUBS {
            p.emit(&payload(s, i % 5003 + 1)[..], s).unwrap();
        }
    }
    p.finish().unwrap();
    drop(p);
    let path = files.path_of(ID);
    let good = std::fs::read(&path).unwrap();
    let regions = regions_of(&good);
    assert!(regions[1].len() > 3, "{:?}", regions[1]);
    let all = |s: u32| -> Vec<Vec<u8>> {
        let f = BlockingPartitionFile::open(&files, ID).unwrap();
        f.subpartition(s).unwrap().map(|r| r.unwrap().to_vec()).collect()
    };
    let expected: Vec<Vec<Vec<u8>>> = (0..SUBS).map(all).collect();
    assert_eq!(expected[1].len(), 600);

    // A payload byte in the middle of subpartition 1's region 2 (not a length prefix, so
    // only the checksum can notice).
    let (off, len) = regions[1][2];
    let before: usize = regions[1][..2].iter().map(|&(o, l)| records_in(&good[o..o + l]).len()).sum();
    let mut at = off + len / 2;
    let mut walk = off;
    while walk <= at {
        let rec = u32::from_le_bytes(good[walk..walk + 4].try_into().unwrap()) as usize;
        if at < walk + 4 {
            at = walk + 4; // the first payload byte instead of a length byte
        }
        walk += 4 + rec;
    }
    let mut bad = good.clone();
    bad[at] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();

    let f = BlockingPartitionFile::open(&files, ID).unwrap();
    let mut got = Vec::new();
    let mut err = None;
    for r in f.subpartition(1).unwrap() {
        match r {
            Ok(rec) => got.push(rec.to_vec()),
            Err(e) => err = Some(e),
        }
    }
    let e = err.expect("a flipped payload byte must not go unnoticed");
    assert!(matches!(e, Error::ProtocolViolation { .. }), "{e:?}");
    let msg = e.to_string();
    for part in [&path.display().to_string(), "subpartition 1", "region 2 of", "checksum"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert_eq!(got, expected[1][..before], "only the records of the regions before the damaged one");
    // The other subpartitions are intact and read in full.
    for s in [0, 2] {
        let read: Vec<Vec<u8>> = f.subpartition(s).unwrap().map(|r| r.unwrap().to_vec()).collect();
        assert_eq!(read, expected[s as usize], "subpartition {s}");
    }
}

#[test]
fn every_flipped_data_byte_is_caught_by_a_region_checksum() {
    let tmp = TempDir::new("every-flip");
    let (files, path, good) = small_finished_file(&tmp.0);
    let data_end = u64::from_le_bytes(good[good.len() - 40..good.len() - 32].try_into().unwrap()) as usize;
    for at in 32..data_end {
        for flip in [0x01u8, 0x80] {
            let mut b = good.clone();
            b[at] ^= flip;
            std::fs::write(&path, &b).unwrap();
            let f = BlockingPartitionFile::open(&files, ID).unwrap();
            let errors: Vec<String> = (0..2)
                .flat_map(|s| f.subpartition(s).unwrap().filter_map(|r| r.err().map(|e| e.to_string())))
                .collect();
            assert_eq!(errors.len(), 1, "flip {flip:#x} at byte {at}: {errors:?}");
            assert!(errors[0].contains("checksum"), "flip at {at}: {}", errors[0]);
        }
    }
}

#[test]
fn a_version_1_file_is_refused_naming_both_versions() {
    fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }
    // What the version 1 writer made of one record "hello" in one subpartition: no region
    // checksums in the index, a valid index checksum.
    let mut file = Vec::new();
    file.extend_from_slice(b"SHMFBLK1");
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&ID.partition.to_le_bytes());
    file.extend_from_slice(&ID.attempt.to_le_bytes());
    file.extend_from_slice(&5u32.to_le_bytes());
    file.extend_from_slice(b"hello");
    let index_off = file.len() as u64;
    let mut index = Vec::new();
    for v in [1u64, 1, 32, 9] {
        index.extend_from_slice(&v.to_le_bytes());
    }
    let mut footer = Vec::new();
    footer.extend_from_slice(b"SHMFEND1");
    footer.extend_from_slice(&index_off.to_le_bytes());
    footer.extend_from_slice(&(index.len() as u64).to_le_bytes());
    footer.extend_from_slice(&1u32.to_le_bytes());
    footer.extend_from_slice(&1u32.to_le_bytes());
    footer.extend_from_slice(&1u64.to_le_bytes());
    let sum = fnv1a(fnv1a(0xcbf2_9ce4_8422_2325, &index), &footer);
    footer.extend_from_slice(&sum.to_le_bytes());
    file.extend_from_slice(&index);
    file.extend_from_slice(&footer);

    let tmp = TempDir::new("old-version");
    let files = FileChannelManager::new(&tmp.0).unwrap();
    let path = files.path_of(ID);
    std::fs::write(&path, &file).unwrap();
    let e = BlockingPartitionFile::open(&files, ID).unwrap_err();
    assert!(matches!(e, Error::ProtocolViolation { .. }), "{e:?}");
    let msg = e.to_string();
    for part in [&path.display().to_string(), "version 1", "only version 2"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

/// The gate reads blocking partitions through file channels: the partition request is the
/// wait for FINISHED (the gate polls it while it waits), records come from the file in
/// order per channel, a RecordWriter over the blocking partition chooses subpartitions
/// like over a pipelined one, and the file is released once the gate read every
/// subpartition.
#[test]
fn a_gate_reads_blocking_partitions_once_their_producers_finished_and_releases_them() {
    use shmflow::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
    use shmflow::partition::{BufferTimeout, RecordWriter, RescalePartitioner};
    let tmp = TempDir::new("gate");
    let files = FileChannelManager::new(&tmp.0).unwrap();
    let arena = arena();
    let dir = ResultPartitionManager::new(arena.clone());
    let ids = [ResultPartitionId::new(0x6a7e, 1), ResultPartitionId::new(0x6a7e, 2)];
    let mut writers = Vec::new();
    for id in ids {
        let mut p = BlockingResultPartition::new(&files, id, ResultPartitionType::Blocking, 2).unwrap();
        p.register(dir.clone()).unwrap();
        // Round robin over both subpartitions: records 0, 2, 4 go to subpartition 0.
        writers.push(RecordWriter::new::<u64>(p, RescalePartitioner::default(), BufferTimeout::EveryRecord).unwrap());
    }
    let mut cfg = InputGateConfig::new(ids.iter().map(|&partition| InputSpec { partition, subpartition: 0 }).collect());
    cfg.blocking_files = Some(files.clone());
    let mut gate = SingleInputGate::new(arena.clone(), &cfg).unwrap();
    // Registered, not finished: nothing to read yet, and the gate says so without blocking.
    assert!(gate.poll_next().unwrap().is_none());
    for (k, w) in writers.iter_mut().enumerate() {
        for i in 0..6u64 {
            w.emit(&(100 * k as u64 + i)).unwrap();
        }
    }
    assert!(gate.poll_next().unwrap().is_none(), "not finished: not readable");
    for w in &mut writers {
        w.finish().unwrap();
    }
    let mut got = [Vec::new(), Vec::new()];
    loop {
        match gate.next(Some(Duration::from_secs(10))).unwrap() {
            GateItem::Record { channel, data } => {
                got[channel as usize].push(u64::from_le_bytes(data.try_into().unwrap()))
            }
            GateItem::End => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, [vec![0, 2, 4], vec![100, 102, 104]]);
    assert_eq!((gate.records_read(0), gate.records_read(1)), (3, 3));
    // Subpartition 1 of each is still unread: the files stay until it is.
    for id in ids {
        assert!(files.path_of(id).is_file());
        assert!(files.consumer_done(&dir, id).unwrap(), "the second consumer releases it");
        assert!(!files.path_of(id).exists());
    }
    drop(gate);
    drop(writers);
}

/// A blocking producer that fails while the gate waits for its partition is the
/// partition's error (PartitionFailed from the directory), not the runtime's JobFailed.
#[test]
fn a_gate_waiting_for_a_failed_blocking_partition_gets_partition_failed() {
    use shmflow::gate::{InputGateConfig, InputSpec, SingleInputGate};
    let tmp = TempDir::new("gatefail");
    let files = FileChannelManager::new(&tmp.0).unwrap();
    let arena = arena();
    let dir = ResultPartitionManager::new(arena.clone());
    let id = ResultPartitionId::new(0xfa11, 1);
    let mut p = BlockingResultPartition::new(&files, id, ResultPartitionType::Blocking, 1).unwrap();
    p.register(dir).unwrap();
    p.emit(&b"lost"[..], 0).unwrap();
    let mut cfg = InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }]);
    cfg.blocking_files = Some(files);
    let mut gate = SingleInputGate::new(arena, &cfg).unwrap();
    assert!(gate.poll_next().unwrap().is_none());
    p.fail();
    let e = gate.next(Some(Duration::from_secs(10))).unwrap_err();
    assert!(matches!(e, Error::PartitionFailed(_)), "{e}");
}
