//! Blocking partition files against `BlockingPartitionFile::open_path` and its readers.
//!
//! ```text
//!  input = [ flags : u8 ][ file bytes ... ]
//!  flags bit 0   recompute the checksum of every region the index names, then the index
//!                checksum (to get past them and reach the checks after)
//! ```
//!
//! The file bytes go into a memfd, opened by its `/proc/self/fd` path. Every subpartition
//! of a file that opens is read to the end: records must lie inside the file, and a reader
//! that saw no error must have read as many records as the index says.

use shmflow::partition::BlockingPartitionFile;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

const HEADER_LEN: usize = 32;
const FOOTER_LEN: usize = 48;

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Recomputes the region checksums and the index checksum of the file in `bytes`, as far
/// as its footer and index make sense (format version 2: per subpartition [records u64]
/// [regions u64], then per region [offset u64][len u64][checksum u64]).
pub fn reseal(bytes: &mut [u8]) {
    let len = bytes.len();
    if len < HEADER_LEN + FOOTER_LEN {
        return;
    }
    let foot = len - FOOTER_LEN;
    let (Some(index_off), Some(index_len)) = (u64_at(bytes, foot + 8), u64_at(bytes, foot + 16)) else { return };
    let Ok(index_off) = usize::try_from(index_off) else { return };
    if index_off < HEADER_LEN || usize::try_from(index_len).ok().and_then(|l| index_off.checked_add(l)) != Some(foot) {
        return;
    }
    let mut at = index_off;
    while at + 16 <= foot {
        let count = u64_at(bytes, at + 8).unwrap_or(0);
        at += 16;
        for _ in 0..count {
            if at + 24 > foot {
                break;
            }
            let (off, rl) = (u64_at(bytes, at).unwrap_or(0), u64_at(bytes, at + 8).unwrap_or(0));
            let region = usize::try_from(off)
                .ok()
                .zip(usize::try_from(rl).ok())
                .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                .filter(|r| r.start >= HEADER_LEN && r.end <= index_off);
            if let Some(r) = region {
                let sum = BlockingPartitionFile::region_checksum(&bytes[r]);
                bytes[at + 16..at + 24].copy_from_slice(&sum.to_le_bytes());
            }
            at += 24;
        }
    }
    let sum = fnv1a(fnv1a(0xcbf2_9ce4_8422_2325, &bytes[index_off..foot]), &bytes[foot..foot + 40]);
    bytes[foot + 40..].copy_from_slice(&sum.to_le_bytes());
}

fn memfd(bytes: &[u8]) -> Option<OwnedFd> {
    // SAFETY: a valid NUL-terminated name and valid flags.
    let raw = unsafe { libc::memfd_create(c"shmflow-fuzz-blk".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a fresh fd nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    file.write_all_at(bytes, 0).ok()?;
    Some(OwnedFd::from(file))
}

/// The harness.
pub fn blocking_file(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if flags & 1 != 0 {
        reseal(&mut bytes);
    }
    let Some(fd) = memfd(&bytes) else { return };
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let f = match BlockingPartitionFile::open_path(&path, None) {
        Ok(f) => f,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = format!("{f:?} {}", f.id());
    assert!(f.num_subpartitions() > 0);
    for s in 0..f.num_subpartitions() {
        let expected = f.records(s).expect("a subpartition in range");
        let mut reader = f.subpartition(s).expect("a subpartition in range");
        let (mut n, mut payload, mut failed) = (0u64, 0u64, false);
        for r in reader.by_ref() {
            match r {
                Ok(rec) => {
                    assert!(rec.len() < bytes.len());
                    n += 1;
                    payload += rec.len() as u64;
                }
                Err(e) => {
                    let _ = e.to_string();
                    failed = true;
                }
            }
        }
        assert_eq!((reader.records_read(), reader.bytes_read()), (n, payload));
        if !failed {
            assert_eq!(n, expected, "subpartition {s} read without an error, but not as many records as indexed");
        }
    }
    assert!(f.subpartition(f.num_subpartitions()).is_err());
}
