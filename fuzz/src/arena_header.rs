//! Header bytes and file lengths against `validate_header_bytes` and `Arena::attach_fd`.
//!
//! ```text
//!  input = [ flags : u8 ][ param : u64 LE ][ file bytes ... ]
//!  flags bit 0      recompute the checksum first (to get past it and reach the checks after)
//!  flags bits 1..2  the file length: 0 = the bytes' length, 1 = param,
//!                   2 = the header's own total_size, 3 = total_size + (param as i16)
//! ```
//!
//! The same bytes go into a memfd of that length (capped at [`MAX_FILE`]: beyond it the
//! file is as long as the bytes) for `attach_fd`, which must agree with the byte validator
//! on the file's first bytes. An arena that attaches gets a few free-stack pops, whose head
//! and links also come from the file.

use shmflow::buffer::NetworkBufferPool;
use shmflow::memory::{validate_header_bytes, Arena, ArenaLayout, Owner, RegionKind, StaticHeader, PAGE};
use shmflow::ArenaError;
use std::fs::File;
use std::mem::{offset_of, size_of};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The largest memfd the harness creates (sparse: only the header page is ever touched).
pub const MAX_FILE: u64 = 1 << 32;

/// Recomputes the checksum of the header at the start of `bytes`.
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < size_of::<StaticHeader>() {
        return;
    }
    // SAFETY: `bytes` holds a whole StaticHeader, a repr(C) struct of integers valid for any
    // bit pattern; read_unaligned copes with any alignment.
    let h = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<StaticHeader>()) };
    let at = offset_of!(StaticHeader, checksum);
    bytes[at..at + 8].copy_from_slice(&h.compute_checksum().to_ne_bytes());
}

/// The harness.
pub fn arena_header(data: &[u8]) {
    if data.len() < 9 {
        check_direct(data, data.len() as u64);
        return;
    }
    let flags = data[0];
    let param = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
    let mut bytes = data[9..].to_vec();
    if flags & 1 != 0 {
        reseal(&mut bytes);
    }
    let declared = bytes.get(16..24).map_or(0, |b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
    let file_len = match (flags >> 1) & 3 {
        0 => bytes.len() as u64,
        1 => param,
        2 => declared,
        _ => declared.wrapping_add(param as i16 as i64 as u64),
    };
    check_direct(&bytes, file_len);
    // Also with the length the bytes really have.
    check_direct(&bytes, bytes.len() as u64);
    attach(&bytes, if file_len <= MAX_FILE { file_len } else { bytes.len() as u64 });
}

/// `validate_header_bytes`, and what an accepted layout must satisfy.
fn check_direct(bytes: &[u8], file_len: u64) -> Option<ArenaLayout> {
    match validate_header_bytes(bytes, file_len) {
        Ok(layout) => {
            check_layout(&layout, file_len);
            Some(layout)
        }
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

fn check_layout(l: &ArenaLayout, file_len: u64) {
    assert!(l.total_size <= file_len, "accepted an arena larger than its file");
    assert!(l.total_size.is_multiple_of(PAGE));
    assert!(l.config.validate().is_ok(), "accepted an invalid config {:?}", l.config);
    assert_eq!(l.config.layout().expect("valid config").regions, l.regions);
    let mut end = size_of::<shmflow::memory::ArenaHeader>() as u64;
    for r in &l.regions {
        assert!(r.offset >= end, "regions overlap: {:?}", l.regions);
        end = r.offset.checked_add(r.len).expect("region end overflows");
    }
    assert!(end <= l.total_size);
    let data = l.region(RegionKind::Data);
    assert_eq!(data.offset % PAGE, 0);
    assert_eq!(data.len, u64::from(l.config.segment_size) * u64::from(l.config.segment_count));
}

fn memfd(bytes: &[u8], len: u64) -> Option<OwnedFd> {
    // SAFETY: a valid NUL-terminated name and valid flags.
    let raw = unsafe { libc::memfd_create(c"shmflow-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a fresh fd nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let visible = &bytes[..bytes.len().min(usize::try_from(len).unwrap_or(usize::MAX))];
    file.write_all_at(visible, 0).ok()?;
    file.set_len(len).ok()?;
    Some(OwnedFd::from(file))
}

fn attach(bytes: &[u8], len: u64) {
    let Some(fd) = memfd(bytes, len) else { return };
    // What the file's first bytes are: the input cut to the file, zeros after it.
    let visible = bytes.len().min(len as usize);
    let mut prefix = bytes[..visible].to_vec();
    let need = size_of::<StaticHeader>();
    if prefix.len() < need {
        prefix.resize(need.min(len as usize), 0);
    }
    let expected = validate_header_bytes(&prefix, len);
    let got = Arena::attach_fd(fd);
    match (&expected, &got) {
        (Err(e), Err(g)) => {
            assert_eq!(std::mem::discriminant(e), std::mem::discriminant(g), "validate said {e}, attach said {g}");
        }
        (Err(e), Ok(_)) => panic!("attach accepted a file that validate_header_bytes refuses: {e}"),
        (Ok(_), Err(ArenaError::NotReady | ArenaError::Io { .. })) => {}
        (Ok(_), Err(g)) => panic!("validate_header_bytes accepted a file that attach refuses: {g}"),
        (Ok(l), Ok(a)) => assert_eq!(a.layout(), l),
    }
    if let Ok(arena) = got {
        let _ = format!("{arena:?}");
        let pool = NetworkBufferPool::new(Arc::new(arena));
        let _ = pool.available();
        let mut held = Vec::new();
        for _ in 0..3 {
            match pool.request(Owner::Pool { pool: 0, worker: 0 }, 1) {
                Ok(Some(s)) => {
                    assert!(s.index() < pool.total());
                    held.push(s);
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = e.to_string();
                    break;
                }
            }
        }
    }
}
