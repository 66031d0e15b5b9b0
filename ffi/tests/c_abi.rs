//! The C ABI from a caller's side: every function refuses bad arguments with
//! `SHMFLOW_EINVAL` and a message (never a crash), and the happy path moves a segment from
//! one TaskManager to another and back to the free stack.

use shmflow_ffi::*;
use std::ffi::{c_char, CString};
use std::ptr::{null, null_mut};

/// A registry directory and arena name private to one test; removes both on drop.
struct Scratch {
    dir: std::path::PathBuf,
    name: String,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let name = format!("shmflow-ffi-test-{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{name}.reg"));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch { dir, name }
    }

    fn open(&self, tm: &str) -> Result<u64, (i32, String)> {
        let name = CString::new(self.name.clone()).unwrap();
        let dir = CString::new(self.dir.to_str().unwrap()).unwrap();
        let tm = CString::new(tm).unwrap();
        let mut h = 0;
        let (size, segment) = (8 << 20, 32 << 10);
        // SAFETY: valid strings and out pointer.
        let rc = unsafe { shmflow_arena_open(name.as_ptr(), dir.as_ptr(), tm.as_ptr(), size, segment, 10_000, &mut h) };
        if rc == 0 {
            Ok(h)
        } else {
            Err((rc, last_error()))
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(std::path::Path::new("/dev/shm").join(&self.name));
    }
}

fn err_text() -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: buf has 512 bytes.
    let n = unsafe { shmflow_last_error(buf.as_mut_ptr(), buf.len()) };
    assert!(n >= 0);
    // SAFETY: NUL-terminated by shmflow_last_error.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

fn assert_inval(rc: i32, needle: &str) {
    assert_eq!(rc, code::EINVAL, "expected EINVAL, last error: {}", err_text());
    let e = err_text();
    assert!(e.contains(needle), "error {e:?} does not mention {needle:?}");
}

const BOGUS: u64 = 0xdead_0000_0042;

#[test]
fn every_function_refuses_bad_handles_and_null_pointers() {
    let s = Scratch::new("bad");
    let a = s.open("tm-a").expect("open");
    let mut u = 0u64;
    let mut i = 0i32;
    let mut peer = 0i64;
    let mut info = ArenaInfo::default();
    let mut p: *mut u8 = null_mut();
    let m = Msg { kind: 5, segment: -1, ..Msg::default() };
    let mut msgs = [Msg::default(); 4];
    let mut ids = [0i32; 4];
    let mut counters = [0u64; 4];
    let tm = CString::new("tm-a").unwrap();
    // SAFETY: arguments are either valid or deliberately null/bogus, which the functions
    // must refuse before touching memory.
    unsafe {
        // Null strings and out pointers.
        assert_inval(shmflow_arena_open(null(), tm.as_ptr(), tm.as_ptr(), 1 << 20, 4096, 0, &mut u), "name");
        assert_inval(shmflow_arena_open(tm.as_ptr(), null(), tm.as_ptr(), 1 << 20, 4096, 0, &mut u), "registry_dir");
        assert_inval(shmflow_arena_open(tm.as_ptr(), tm.as_ptr(), null(), 1 << 20, 4096, 0, &mut u), "tm_id");
        assert_inval(shmflow_arena_open(tm.as_ptr(), tm.as_ptr(), tm.as_ptr(), 1 << 20, 4096, 0, null_mut()), "out");
        assert_inval(shmflow_arena_info(a, null_mut()), "out");
        assert_inval(shmflow_peer_lookup(a, null(), &mut peer), "tm_id");
        assert_inval(shmflow_peer_lookup(a, tm.as_ptr(), null_mut()), "out_peer");
        assert_inval(shmflow_peer_state(a, 0, null_mut()), "out");
        assert_inval(shmflow_wait(a, 0, null_mut(), 4, 0, &mut i), "ids");
        assert_inval(shmflow_wait(a, 0, ids.as_mut_ptr(), 4, 0, null_mut()), "out_n");
        assert_inval(shmflow_channel_connect(a, 0, null_mut(), &mut i), "out_channel");
        assert_inval(shmflow_channel_connect(a, 0, &mut u, null_mut()), "out_id");
        assert_inval(shmflow_channel_accept(a, 0, null_mut()), "out_channel");
        assert_inval(shmflow_segment_ptr(a, 0, null_mut()), "out");
        // Bogus handles, and an arena handle where a channel is wanted (and back).
        assert_inval(shmflow_arena_close(BOGUS), "not a live handle");
        assert_inval(shmflow_arena_info(BOGUS, &mut info), "not a live handle");
        assert_inval(shmflow_peer_lookup(BOGUS, tm.as_ptr(), &mut peer), "not a live handle");
        assert_inval(shmflow_peer_state(BOGUS, 0, &mut i), "not a live handle");
        assert_inval(shmflow_wait(BOGUS, 0, ids.as_mut_ptr(), 4, 0, &mut i), "not a live handle");
        assert_inval(shmflow_wake(BOGUS, 0), "not a live handle");
        assert_inval(shmflow_set_spin(BOGUS, 0, 0), "not a live handle");
        assert_inval(shmflow_channel_connect(BOGUS, 0, &mut u, &mut i), "not a live handle");
        assert_inval(shmflow_channel_accept(BOGUS, 0, &mut u), "not a live handle");
        assert_inval(shmflow_segment_ptr(BOGUS, 0, &mut p), "not a live handle");
        assert_inval(shmflow_reclaim(BOGUS, counters.as_mut_ptr()), "not a live handle");
        assert_inval(shmflow_reclaim(a, null_mut()), "out");
        assert_inval(shmflow_channel_close(a), "not a channel");
        assert_inval(shmflow_channel_status(a, &mut i), "not a channel");
        assert_inval(shmflow_channel_counters(a, counters.as_mut_ptr()), "not a channel");
        assert_inval(shmflow_segment_acquire(a, 0, &mut i), "not a channel");
        assert_inval(shmflow_segment_release(a, 0), "not a channel");
        assert_inval(shmflow_send(a, &m, 0), "not a channel");
        assert_inval(shmflow_poll(a, msgs.as_mut_ptr(), 4, &mut i), "not a channel");
        assert_inval(shmflow_add_credit(a, 1, 0), "not a channel");
        assert_inval(shmflow_bank_credit(a, 1), "not a channel");
        assert_inval(shmflow_bank_credit(BOGUS, 1), "not a live handle");
        assert_inval(shmflow_take_credit(a, &mut i), "not a channel");
        assert_inval(shmflow_take_credit(BOGUS, &mut i), "not a live handle");
        assert_inval(shmflow_task_polls(a, 1), "not a channel");
        assert_inval(shmflow_task_polls(BOGUS, 1), "not a live handle");
        assert_inval(shmflow_channel_close(BOGUS), "not a live handle");
        // Out-of-range numbers on a live arena.
        assert_inval(shmflow_peer_state(a, -1, &mut i), "negative");
        assert_inval(shmflow_peer_state(a, 1 << 20, &mut i), "outside");
        assert_inval(shmflow_wait(a, 2, ids.as_mut_ptr(), 4, 0, &mut i), "side");
        assert_inval(shmflow_wait(a, 0, ids.as_mut_ptr(), 0, 0, &mut i), "max");
        assert_inval(shmflow_wait(a, 0, ids.as_mut_ptr(), 4, -5, &mut i), "timeout");
        assert_inval(shmflow_wake(a, -1), "side");
        assert_inval(shmflow_set_spin(a, 2, 0), "side");
        assert_inval(shmflow_set_spin(a, 0, -1), "outside");
        assert_inval(shmflow_set_spin(a, 1, 1_000_000_001), "outside");
        assert_eq!(shmflow_set_spin(a, 0, 250_000), 0, "{}", err_text());
        assert_inval(shmflow_channel_connect(a, -1, &mut u, &mut i), "negative");
        assert_inval(shmflow_channel_connect(a, 0, &mut u, &mut i), "not a handle from a look-up");
        assert_inval(shmflow_peer_state(a, (1 << 32) | (1 << 20), &mut i), "outside");
        assert_inval(shmflow_channel_accept(a, -1, &mut u), "negative");
        assert_inval(shmflow_channel_accept(a, 1 << 30, &mut u), "outside");
        assert_inval(shmflow_channel_accept(a, 3, &mut u), "not open");
        assert_inval(shmflow_segment_ptr(a, -1, &mut p), "outside");
        assert_inval(shmflow_segment_ptr(a, i32::MAX, &mut p), "outside");
        assert_eq!(shmflow_last_error(null_mut(), 16), -1);
    }
    assert_eq!(shmflow_arena_close(a), 0);
    assert_inval(shmflow_arena_close(a), "not a live handle");
}

#[test]
fn bad_open_settings_are_errors_with_messages() {
    let s = Scratch::new("settings");
    let name = CString::new(s.name.clone()).unwrap();
    let dir = CString::new(s.dir.to_str().unwrap()).unwrap();
    let tm = CString::new("tm").unwrap();
    let mut h = 0;
    // SAFETY: valid strings and out pointers; an all-zero statvfs is a valid value.
    unsafe {
        // Too small for two segments.
        let rc = shmflow_arena_open(name.as_ptr(), dir.as_ptr(), tm.as_ptr(), 64 << 10, 32 << 10, 0, &mut h);
        assert_eq!(rc, code::ECONFIG, "{}", err_text());
        assert!(err_text().contains("segments"), "{}", err_text());
        // More than 2^24 segments (was capped silently: a 512 GiB sparse arena).
        let rc = shmflow_arena_open(name.as_ptr(), dir.as_ptr(), tm.as_ptr(), 1 << 62, 32 << 10, 0, &mut h);
        assert_eq!(rc, code::ECONFIG, "{}", err_text());
        assert!(err_text().contains("more than 16777216 segments"), "{}", err_text());
        // Within the caps but more than /dev/shm has free (a later SIGBUS otherwise); only
        // where /dev/shm has less than 512 GiB free.
        let mut st: libc::statvfs = std::mem::zeroed();
        let shm = CString::new("/dev/shm").unwrap();
        let big: u64 = 1 << 39;
        if libc::statvfs(shm.as_ptr(), &mut st) == 0 && st.f_bavail.saturating_mul(st.f_frsize) < big {
            let rc = shmflow_arena_open(name.as_ptr(), dir.as_ptr(), tm.as_ptr(), big, 16 << 20, 0, &mut h);
            assert_eq!(rc, code::ECONFIG, "{}", err_text());
            assert!(err_text().contains("free in /dev/shm"), "{}", err_text());
            assert!(!std::path::Path::new("/dev/shm").join(&s.name).exists(), "a refused arena was created");
        }
        // Segment size not a power of two.
        let rc = shmflow_arena_open(name.as_ptr(), dir.as_ptr(), tm.as_ptr(), 8 << 20, 5000, 0, &mut h);
        assert_eq!(rc, code::ECONFIG, "{}", err_text());
        // A registry directory that cannot be created.
        let bad = CString::new("/proc/self/shmflow-no").unwrap();
        let rc = shmflow_arena_open(name.as_ptr(), bad.as_ptr(), tm.as_ptr(), 8 << 20, 32 << 10, 0, &mut h);
        assert_eq!(rc, code::EIO, "{}", err_text());
        assert!(err_text().contains("registry directory"), "{}", err_text());
        // A name with a slash.
        let slash = CString::new("a/b").unwrap();
        assert_inval(
            shmflow_arena_open(slash.as_ptr(), dir.as_ptr(), tm.as_ptr(), 8 << 20, 32 << 10, 0, &mut h),
            "arena name",
        );
        // An absurd spin budget.
        assert_inval(
            shmflow_arena_open(name.as_ptr(), dir.as_ptr(), tm.as_ptr(), 8 << 20, 32 << 10, u64::MAX, &mut h),
            "spin",
        );
    }
    // A second TaskManager with another segment size cannot share the arena.
    let a = s.open("tm-1").expect("open");
    let tm2 = CString::new("tm-2").unwrap();
    // SAFETY: valid strings and out pointer.
    let rc = unsafe { shmflow_arena_open(name.as_ptr(), dir.as_ptr(), tm2.as_ptr(), 8 << 20, 64 << 10, 0, &mut h) };
    assert_eq!(rc, code::ECONFIG, "{}", err_text());
    assert_eq!(shmflow_arena_close(a), 0);
}

#[test]
fn a_slot_nobody_registered_is_free_not_alive_and_connect_to_it_fails() {
    let s = Scratch::new("free-slot");
    let a = s.open("tm-a").expect("open");
    let (mut state, mut ch, mut id) = (9, 0u64, -1);
    // SAFETY: valid out pointers.
    unsafe {
        assert_eq!(shmflow_peer_state(a, 40, &mut state), 0, "{}", err_text());
        assert_eq!(state, 2, "a never registered slot is free");
        // A handle of slot 40 with a generation nobody registered under.
        let peer = (7 << 32) | 40;
        assert_eq!(shmflow_peer_state(a, peer, &mut state), 0, "{}", err_text());
        assert_eq!(state, 2, "a never registered slot is free");
        let rc = shmflow_channel_connect(a, peer, &mut ch, &mut id);
        assert_eq!(rc, code::EPEER, "connect to a free slot: {}", err_text());
        assert!(err_text().contains("not alive"), "{}", err_text());
    }
    assert_eq!(ch, 0, "no channel handle was handed out");
    assert_eq!(shmflow_arena_close(a), 0);
}

#[test]
fn a_process_that_opens_and_closes_again_and_again_reuses_its_worker_slots() {
    let s = Scratch::new("reopen");
    let a = s.open("tm-a").expect("open a");
    // 64 worker slots: every round used a fresh one before, the 64th open failed.
    for i in 0..100 {
        let b = s.open(&format!("tm-b{i}")).unwrap_or_else(|e| panic!("open #{i}: {e:?}"));
        assert_eq!(shmflow_arena_close(b), 0);
    }
    assert_eq!(shmflow_arena_close(a), 0);
}

/// Channel blocks of the scratch arena that are neither free nor closed (in use, or lost).
fn blocks_in_use(s: &Scratch) -> usize {
    use shmflow::memory::{Arena, CHANNEL_CLOSED, CHANNEL_FREE};
    let arena = Arena::attach_read_only(&std::path::Path::new("/dev/shm").join(&s.name)).expect("the arena");
    arena.channels().iter().filter(|b| ![CHANNEL_FREE, CHANNEL_CLOSED].contains(&b.state())).count()
}

#[test]
fn a_channel_its_producer_never_accepted_is_freed_when_both_have_left() {
    let s = Scratch::new("unaccepted");
    let a = s.open("tm-a").expect("open a");
    // Round 0: the producer leaves first, then the consumer closes; round 1: the other way.
    for round in 0..2 {
        let tm = format!("tm-b{round}");
        let b = s.open(&tm).expect("open b");
        let (tm_c, mut slot, mut ch, mut id) = (CString::new(tm).unwrap(), -1i64, 0u64, -1);
        // SAFETY: valid pointers throughout.
        unsafe {
            assert_eq!(shmflow_peer_lookup(a, tm_c.as_ptr(), &mut slot), 0, "{}", err_text());
            assert_eq!(shmflow_channel_connect(a, slot, &mut ch, &mut id), 0, "{}", err_text());
        }
        assert_eq!(blocks_in_use(&s), 1);
        if round == 0 {
            assert_eq!(shmflow_arena_close(b), 0);
            assert_eq!(shmflow_channel_close(ch), 0);
        } else {
            assert_eq!(shmflow_channel_close(ch), 0);
            assert_eq!(shmflow_arena_close(b), 0);
        }
        assert_eq!(blocks_in_use(&s), 0, "round {round}: the channel's block was never freed");
    }
    assert_eq!(shmflow_arena_close(a), 0);
}

fn connect_pair(s: &Scratch) -> (u64, u64, u64, u64) {
    let a = s.open("tm-producer").expect("open a");
    let b = s.open("tm-consumer").expect("open b");
    let mut slot = -1i64;
    let tm = CString::new("tm-producer").unwrap();
    // SAFETY: valid pointers throughout.
    unsafe {
        assert_eq!(shmflow_peer_lookup(b, tm.as_ptr(), &mut slot), 0, "{}", err_text());
        let nobody = CString::new("tm-nobody").unwrap();
        assert_eq!(shmflow_peer_lookup(b, nobody.as_ptr(), &mut 0), code::ENOENT);
        let mut state = 9;
        assert_eq!(shmflow_peer_state(b, slot, &mut state), 0);
        assert_eq!(state, 1);
        let (mut cons, mut id) = (0u64, -1);
        assert_eq!(shmflow_channel_connect(b, slot, &mut cons, &mut id), 0, "{}", err_text());
        let mut ids = [0i32; 8];
        let mut n = 0;
        assert_eq!(shmflow_wait(a, 1, ids.as_mut_ptr(), 8, 1000, &mut n), 0, "{}", err_text());
        assert_eq!(&ids[..n as usize], &[id]);
        let mut prod = 0u64;
        assert_eq!(shmflow_channel_accept(a, id, &mut prod), 0, "{}", err_text());
        assert_inval(shmflow_channel_accept(a, id, &mut 0), "already accepted");
        assert_inval(shmflow_channel_accept(b, id, &mut 0), "not addressed");
        (a, b, prod, cons)
    }
}

#[test]
fn a_segment_goes_over_with_flink_metadata_and_comes_back() {
    let s = Scratch::new("happy");
    let (a, b, prod, cons) = connect_pair(&s);
    let mut info = ArenaInfo::default();
    // SAFETY: valid pointers throughout; the segment bytes are written by its holder only.
    unsafe {
        assert_eq!(shmflow_arena_info(a, &mut info), 0);
        let total = info.segment_count;
        assert_eq!(info.free_segments, total);
        // Credit travels consumer -> producer.
        assert_eq!(shmflow_add_credit(cons, 2, 100), 0, "{}", err_text());
        assert_inval(shmflow_add_credit(cons, 0, 100), "not positive");
        assert_inval(shmflow_add_credit(prod, 1, 100), "consumer");
        let mut msgs = [Msg::default(); 4];
        let mut n = 0;
        assert_eq!(shmflow_poll(prod, msgs.as_mut_ptr(), 4, &mut n), 0);
        assert_eq!(n, 1);
        assert_eq!((msgs[0].kind, msgs[0].arg), (i32::from(KIND_CREDIT), 2));
        // A buffer with Flink's metadata.
        let mut seg = -1;
        assert_eq!(shmflow_segment_acquire(prod, 100, &mut seg), 0, "{}", err_text());
        let mut p: *mut u8 = null_mut();
        assert_eq!(shmflow_segment_ptr(a, seg, &mut p), 0);
        std::ptr::copy_nonoverlapping(b"hello".as_ptr(), p, 5);
        let m = Msg {
            kind: 7,
            segment: seg,
            size: 5,
            subpartition: 3,
            seq: 41,
            backlog: 2,
            data_type: 1,
            flags: 1,
            arg: -9,
        };
        // Bad messages first.
        assert_inval(shmflow_send(prod, null(), 0), "msg");
        assert_inval(shmflow_send(prod, &Msg { kind: 0, ..m }, 0), "kind");
        assert_inval(shmflow_send(prod, &Msg { size: 1 << 20, ..m }, 0), "size");
        assert_inval(shmflow_send(prod, &Msg { flags: 4, ..m }, 0), "flags");
        assert_inval(shmflow_send(prod, &Msg { data_type: 300, ..m }, 0), "data type");
        assert_inval(shmflow_send(prod, &Msg { segment: -1, ..m }, 0), "without a segment");
        assert_inval(shmflow_send(prod, &Msg { segment: total, ..m }, 0), "outside");
        assert_inval(shmflow_send(prod, &Msg { segment: (seg + 1) % total, ..m }, 0), "not held");
        assert_inval(shmflow_send(prod, &m, -1), "timeout");
        assert_eq!(shmflow_send(prod, &m, 100), 0, "{}", err_text());
        // The producer no longer holds it.
        assert_inval(shmflow_segment_release(prod, seg), "not held");
        let mut ids = [0i32; 8];
        assert_eq!(shmflow_wait(b, 0, ids.as_mut_ptr(), 8, 1000, &mut n), 0);
        assert_eq!(n, 1);
        assert_inval(shmflow_poll(cons, null_mut(), 4, &mut n), "out");
        assert_inval(shmflow_poll(cons, msgs.as_mut_ptr(), 0, &mut n), "max");
        assert_inval(shmflow_poll(cons, msgs.as_mut_ptr(), 4, null_mut()), "out_n");
        assert_eq!(shmflow_poll(cons, msgs.as_mut_ptr(), 4, &mut n), 0);
        assert_eq!(n, 1);
        assert_eq!(msgs[0], m);
        let mut q: *mut u8 = null_mut();
        assert_eq!(shmflow_segment_ptr(b, msgs[0].segment, &mut q), 0);
        assert_eq!(std::slice::from_raw_parts(q, 5), b"hello");
        let mut c = [0u64; 4];
        assert_eq!(shmflow_channel_counters(cons, c.as_mut_ptr()), 0);
        assert_eq!(c, [1, 5, 1, 5]);
        assert_inval(shmflow_channel_counters(cons, null_mut()), "out");
        assert_inval(shmflow_segment_release(cons, -1), "outside");
        assert_eq!(shmflow_segment_release(cons, seg), 0);
        assert_inval(shmflow_segment_release(cons, seg), "not held");
        // Acquire and abort.
        assert_inval(shmflow_segment_acquire(prod, -1, &mut seg), "timeout");
        assert_inval(shmflow_segment_acquire(prod, 0, null_mut()), "out_segment");
        assert_eq!(shmflow_segment_acquire(prod, 0, &mut seg), 0);
        assert_eq!(shmflow_segment_release(prod, seg), 0);
        // Closing: the consumer first, then the producer sees it and frees the block.
        let mut st = -1;
        assert_eq!(shmflow_channel_status(prod, &mut st), 0);
        assert_eq!(st, 0);
        assert_inval(shmflow_channel_status(prod, null_mut()), "out");
        assert_eq!(shmflow_channel_close(cons), 0);
        assert_eq!(shmflow_channel_status(prod, &mut st), 0);
        assert_eq!(st, 1);
        assert_eq!(shmflow_send(prod, &Msg { kind: 9, segment: -1, ..Msg::default() }, 0), code::EPEER);
        assert_eq!(shmflow_channel_close(prod), 0);
        assert_eq!(shmflow_arena_info(a, &mut info), 0);
        assert_eq!(info.free_segments, total);
    }
    assert_eq!(shmflow_arena_close(b), 0);
    assert_eq!(shmflow_arena_close(a), 0);
    assert!(!std::path::Path::new("/dev/shm").join(&s.name).exists(), "the last TaskManager out unlinks the arena");
}

#[test]
fn banked_credit_reaches_the_producer_and_wakes_it_only_when_it_asked() {
    let s = Scratch::new("bank");
    let (a, _b, prod, cons) = connect_pair(&s);
    let mut ids = [0i32; 8];
    let (mut n, mut got) = (0, -1);
    // SAFETY: valid pointers throughout.
    unsafe {
        // Bad arguments: not positive, the wrong end, a null out pointer.
        assert_inval(shmflow_bank_credit(cons, 0), "not positive");
        assert_inval(shmflow_bank_credit(cons, -3), "not positive");
        assert_inval(shmflow_bank_credit(prod, 1), "consumer");
        assert_inval(shmflow_take_credit(cons, &mut got), "producer");
        assert_inval(shmflow_take_credit(prod, null_mut()), "out_n");
        // Banked before the producer asked: no wake-up, the credit waits in the bank.
        assert_eq!(shmflow_bank_credit(cons, 2), 0, "{}", err_text());
        assert_eq!(shmflow_bank_credit(cons, 3), 0, "{}", err_text());
        assert_eq!(shmflow_wait(a, 1, ids.as_mut_ptr(), 8, 0, &mut n), 0, "{}", err_text());
        assert_eq!(n, 0, "a bank the producer did not ask for woke it: {:?}", &ids[..n as usize]);
        assert_eq!(shmflow_take_credit(prod, &mut got), 0, "{}", err_text());
        assert_eq!(got, 5);
        // The producer found nothing: the next bank wakes it with this channel marked.
        assert_eq!(shmflow_take_credit(prod, &mut got), 0, "{}", err_text());
        assert_eq!(got, 0);
        assert_eq!(shmflow_bank_credit(cons, 1), 0, "{}", err_text());
        assert_eq!(shmflow_wait(a, 1, ids.as_mut_ptr(), 8, 1000, &mut n), 0, "{}", err_text());
        assert_eq!(n, 1, "the producer that asked for credit was not woken");
        assert_eq!(shmflow_take_credit(prod, &mut got), 0, "{}", err_text());
        assert_eq!(got, 1);
        // Nothing travelled in the ring.
        let mut msgs = [Msg::default(); 4];
        assert_eq!(shmflow_poll(prod, msgs.as_mut_ptr(), 4, &mut n), 0, "{}", err_text());
        assert_eq!(n, 0);
        assert_eq!(shmflow_channel_close(cons), 0);
        assert_eq!(shmflow_channel_close(prod), 0);
    }
}

#[test]
fn a_pollable_buffer_marks_the_consumer_only_while_its_task_does_not_poll() {
    let s = Scratch::new("polls");
    let (a, b, prod, cons) = connect_pair(&s);
    // SAFETY: valid pointers throughout.
    unsafe {
        assert_inval(shmflow_task_polls(prod, 1), "consumer");
        assert_inval(shmflow_task_polls(cons, 2), "0 or 1");
        assert_inval(shmflow_task_polls(cons, -1), "0 or 1");
        let bad = Msg { kind: 3, flags: 4, ..Msg::default() };
        assert_inval(shmflow_send(prod, &bad, 0), "flags");
        // Pollable only on data buffers: not on an event, nor on the transport's credit.
        let pollable = i32::from(FLAG_POLLABLE);
        for (kind, data_type) in [(3, 0), (3, 2), (3, 3), (3, 4), (1, 1)] {
            let m = Msg { kind, data_type, flags: pollable, arg: 1, ..Msg::default() };
            assert_inval(shmflow_send(prod, &m, 0), "only data buffers");
        }
        let (mut none, mut n) = ([Msg::default(); 4], -1);
        assert_eq!(shmflow_poll(cons, none.as_mut_ptr(), 4, &mut n), 0, "{}", err_text());
        assert_eq!(n, 0, "a refused message was published");
        let send = |flags: i32, seq: i32| {
            let mut seg = -1;
            assert_eq!(shmflow_segment_acquire(prod, 100, &mut seg), 0, "{}", err_text());
            let data_type = if flags & pollable != 0 { 1 } else { 2 };
            let m = Msg { kind: 3, segment: seg, size: 8, seq, data_type, flags, ..Msg::default() };
            assert_eq!(shmflow_send(prod, &m, 100), 0, "{}", err_text());
        };
        let marked = || {
            let (mut ids, mut n) = ([0i32; 8], 0);
            assert_eq!(shmflow_wait(b, 0, ids.as_mut_ptr(), 8, 0, &mut n), 0, "{}", err_text());
            n
        };
        let poll_one = || {
            let (mut msgs, mut n) = ([Msg::default(); 4], 0);
            assert_eq!(shmflow_poll(cons, msgs.as_mut_ptr(), 4, &mut n), 0, "{}", err_text());
            assert_eq!(n, 1);
            assert_eq!(shmflow_segment_release(cons, msgs[0].segment), 0, "{}", err_text());
            msgs[0]
        };
        let take = |want: i32| {
            let m = poll_one();
            assert_eq!((m.seq, m.flags), (want, 0), "the pollable bit travelled to the consumer");
        };
        // The task does not poll: a pollable buffer marks as any message does.
        send(i32::from(FLAG_POLLABLE), 1);
        assert_eq!(marked(), 1, "a pollable buffer did not mark a consumer whose task does not poll");
        take(1);
        // The task polls: a pollable buffer marks nothing, an event (no bit) still marks.
        assert_eq!(shmflow_task_polls(cons, 1), 0, "{}", err_text());
        send(i32::from(FLAG_POLLABLE) | 1, 2);
        assert_eq!(marked(), 0, "a pollable buffer marked a consumer whose task polls");
        let m = poll_one();
        assert_eq!((m.seq, m.flags), (2, 1), "compressed kept, pollable dropped");
        send(0, 3);
        assert_eq!(marked(), 1, "a message without the bit must always mark");
        take(3);
        // Stopped: marks again.
        assert_eq!(shmflow_task_polls(cons, 0), 0, "{}", err_text());
        send(i32::from(FLAG_POLLABLE), 4);
        assert_eq!(marked(), 1, "a pollable buffer did not mark after the task stopped polling");
        take(4);
        assert_eq!(shmflow_channel_close(cons), 0);
        assert_inval(shmflow_task_polls(cons, 1), "not a live handle");
        assert_eq!(shmflow_channel_close(prod), 0);
    }
    let _ = a;
}

/// The Flink module's task-thread publication sends with timeout 0 and leaves the buffer
/// to its dispatcher on `EAGAIN`: a full data ring (64 messages, whatever the credit) must
/// give that at once, publish nothing, and leave the segment held for writing.
#[test]
fn a_send_without_timeout_on_a_full_ring_is_eagain_and_keeps_the_segment() {
    let s = Scratch::new("full");
    let (a, b, prod, cons) = connect_pair(&s);
    // SAFETY: valid pointers throughout.
    unsafe {
        // Events without a payload (they take no credit) until the ring refuses one.
        let mut sent = 0;
        while sent < 1000 && shmflow_send(prod, &Msg { kind: 2, segment: -1, seq: sent, ..Msg::default() }, 0) == 0 {
            sent += 1;
        }
        assert_eq!(sent, 64, "messages the data ring holds");
        let mut seg = -1;
        assert_eq!(shmflow_segment_acquire(prod, 0, &mut seg), 0, "{}", err_text());
        let m = Msg { kind: 3, segment: seg, size: 8, seq: sent, ..Msg::default() };
        assert_eq!(shmflow_send(prod, &m, 0), code::EAGAIN);
        assert!(err_text().contains("full"), "{}", err_text());
        // Not published: still ours to send later (or to release).
        let mut msgs = [Msg::default(); 80];
        let mut n = 0;
        assert_eq!(shmflow_poll(cons, msgs.as_mut_ptr(), 1, &mut n), 0, "{}", err_text());
        assert_eq!((n, msgs[0].seq), (1, 0));
        assert_eq!(shmflow_send(prod, &m, 0), 0, "{}", err_text());
        assert_eq!(shmflow_poll(cons, msgs.as_mut_ptr(), 80, &mut n), 0, "{}", err_text());
        assert_eq!(n, 64);
        let seqs: Vec<i32> = msgs[..64].iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=64).collect::<Vec<i32>>(), "in order, the refused one last");
        assert_eq!(msgs[63].segment, seg);
        assert_eq!(shmflow_segment_release(cons, seg), 0, "{}", err_text());
        assert_eq!(shmflow_channel_close(cons), 0);
        assert_eq!(shmflow_channel_close(prod), 0);
    }
    assert_eq!(shmflow_arena_close(b), 0);
    assert_eq!(shmflow_arena_close(a), 0);
}

#[test]
fn segments_queued_when_both_ends_close_go_back_to_the_free_stack() {
    let s = Scratch::new("cancel");
    let (a, b, prod, cons) = connect_pair(&s);
    let mut info = ArenaInfo::default();
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(shmflow_arena_info(a, &mut info), 0);
        let total = info.free_segments;
        for k in 0..5 {
            let mut seg = -1;
            assert_eq!(shmflow_segment_acquire(prod, 100, &mut seg), 0);
            assert_eq!(shmflow_send(prod, &Msg { kind: 2, segment: seg, size: 8, seq: k, ..Msg::default() }, 100), 0);
        }
        assert_eq!(shmflow_arena_info(a, &mut info), 0);
        assert_eq!(info.free_segments, total - 5);
        // A cancelled consumer leaves without reading; the producer closes after it.
        assert_eq!(shmflow_channel_close(prod), 0);
        assert_eq!(shmflow_channel_close(cons), 0);
        assert_eq!(shmflow_arena_info(a, &mut info), 0);
        assert_eq!(info.free_segments, total);
    }
    assert_eq!(shmflow_arena_close(a), 0);
    assert_eq!(shmflow_arena_close(b), 0);
}

#[test]
fn a_channel_its_consumer_closed_before_the_accept_comes_back_with_its_request() {
    let s = Scratch::new("abandon");
    let a = s.open("tm-producer").expect("open a");
    let b = s.open("tm-consumer").expect("open b");
    let tm = CString::new("tm-producer").unwrap();
    let mut info = ArenaInfo::default();
    // SAFETY: valid pointers throughout.
    unsafe {
        assert_eq!(shmflow_arena_info(a, &mut info), 0);
        let total = info.free_segments;
        let mut slot = -1i64;
        assert_eq!(shmflow_peer_lookup(b, tm.as_ptr(), &mut slot), 0, "{}", err_text());
        let (mut cons, mut id) = (0u64, -1);
        assert_eq!(shmflow_channel_connect(b, slot, &mut cons, &mut id), 0, "{}", err_text());
        // A partition request with a payload, then the task is cancelled at once.
        let mut seg = -1;
        assert_eq!(shmflow_segment_acquire(cons, 100, &mut seg), 0, "{}", err_text());
        assert_eq!(shmflow_send(cons, &Msg { kind: 2, segment: seg, size: 16, ..Msg::default() }, 100), 0);
        assert_eq!(shmflow_channel_close(cons), 0);
        // The producer's dispatcher gets to the channel only now: it is refused, its
        // request's segment goes back, and the block is free for the next connect.
        let mut prod = 0u64;
        assert_eq!(shmflow_channel_accept(a, id, &mut prod), code::EPEER, "{}", err_text());
        assert!(err_text().contains("before it was accepted"), "{}", err_text());
        assert_inval(shmflow_channel_accept(a, id, &mut prod), "not open");
        assert_eq!(shmflow_arena_info(a, &mut info), 0);
        assert_eq!(info.free_segments, total, "the request's segment is back");
        let (mut again, mut id2) = (0u64, -1);
        assert_eq!(shmflow_channel_connect(b, slot, &mut again, &mut id2), 0, "{}", err_text());
        assert_eq!(id2, id, "the first block is free again (not left CONSUMER_GONE)");
        assert_eq!(shmflow_channel_accept(a, id2, &mut prod), 0, "{}", err_text());
        assert_eq!(shmflow_channel_close(again), 0);
        assert_eq!(shmflow_channel_close(prod), 0);
    }
    assert_eq!(shmflow_arena_close(b), 0);
    assert_eq!(shmflow_arena_close(a), 0);
}

#[test]
fn a_waiting_dispatcher_times_out_empty_and_wakes_on_request() {
    let s = Scratch::new("wait");
    let a = s.open("tm-w").expect("open");
    let mut ids = [0i32; 2];
    let mut n = -1;
    // SAFETY: valid pointers.
    unsafe {
        assert_eq!(shmflow_wait(a, 0, ids.as_mut_ptr(), 2, 20, &mut n), 0);
        assert_eq!(n, 0);
    }
    let handle = a;
    let t = std::thread::spawn(move || {
        let mut ids = [0i32; 2];
        let mut n = -1;
        // SAFETY: valid pointers.
        let rc = unsafe { shmflow_wait(handle, 1, ids.as_mut_ptr(), 2, 60_000, &mut n) };
        (rc, n)
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(shmflow_wake(a, 1), 0);
    assert_eq!(shmflow_arena_close(a), 0);
    let (rc, n) = t.join().unwrap();
    assert_eq!((rc, n), (0, 0), "the closed arena's dispatcher returns empty");
}

/// The producer half of `a_killed_producer_fails_its_channels_and_reclaim_frees_its_segments`,
/// run in a child process (a no-op in a normal test run).
#[test]
fn child_producer() {
    let (Ok(name), Ok(dir)) = (std::env::var("SHMFLOW_FFI_CHILD_NAME"), std::env::var("SHMFLOW_FFI_CHILD_DIR")) else {
        return;
    };
    let s = Scratch { dir: dir.into(), name };
    let a = s.open("tm-doomed").expect("child open");
    let mut ids = [0i32; 4];
    let mut n = 0;
    // SAFETY: valid pointers.
    unsafe {
        let mut waited = 0;
        while n == 0 && waited < 100 {
            assert_eq!(shmflow_wait(a, 1, ids.as_mut_ptr(), 4, 100, &mut n), 0);
            waited += 1;
        }
        assert_eq!(n, 1, "a consumer connected");
        let mut prod = 0;
        assert_eq!(shmflow_channel_accept(a, ids[0], &mut prod), 0, "{}", err_text());
        for k in 0..3 {
            let mut seg = -1;
            assert_eq!(shmflow_segment_acquire(prod, 1000, &mut seg), 0);
            assert_eq!(
                shmflow_send(prod, &Msg { kind: 16, segment: seg, size: 100, seq: k, ..Msg::default() }, 1000),
                0
            );
        }
        let mut held = -1;
        assert_eq!(shmflow_segment_acquire(prod, 1000, &mut held), 0);
    }
    println!("child-ready");
    // Killed by the parent; never leaves on its own before 60 s.
    std::thread::sleep(std::time::Duration::from_secs(60));
    std::mem::forget(s);
}

/// Kills the child when dropped (also when an assertion fails).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_producer_fails_its_channels_and_reclaim_frees_its_segments() {
    use std::io::BufRead;
    let s = Scratch::new("kill");
    let b = s.open("tm-survivor").expect("open");
    let mut child = Child(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_producer", "--nocapture", "--test-threads", "1"])
            .env("SHMFLOW_FFI_CHILD_NAME", &s.name)
            .env("SHMFLOW_FFI_CHILD_DIR", &s.dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the child"),
    );
    let tm = CString::new("tm-doomed").unwrap();
    let mut slot = -1i64;
    let mut info = ArenaInfo::default();
    // SAFETY: valid pointers.
    unsafe {
        for _ in 0..500 {
            if shmflow_peer_lookup(b, tm.as_ptr(), &mut slot) == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(slot >= 0, "the child registered: {}", err_text());
        let (mut cons, mut id) = (0u64, -1);
        assert_eq!(shmflow_channel_connect(b, slot, &mut cons, &mut id), 0, "{}", err_text());
        // The harness prints its own lines first; the reader stays open so the child can
        // keep printing.
        let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        for _ in 0..20 {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 || line.contains("child-ready") {
                break;
            }
        }
        assert!(line.contains("child-ready"), "child said {line:?}");
        assert_eq!(shmflow_arena_info(b, &mut info), 0);
        assert_eq!(info.free_segments, info.segment_count - 4, "3 in flight, 1 being written");
        // Read one; the other two stay queued.
        let mut msgs = [Msg::default(); 1];
        let mut n = 0;
        assert_eq!(shmflow_poll(cons, msgs.as_mut_ptr(), 1, &mut n), 0);
        assert_eq!(n, 1);
        let mut st = -1;
        assert_eq!(shmflow_channel_status(cons, &mut st), 0);
        assert_eq!(st, 0, "producer alive");
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert_eq!(shmflow_channel_status(cons, &mut st), 0);
        assert_eq!(st, 2, "a dead producer is seen at once");
        let mut r = [0u64; 4];
        assert_eq!(shmflow_reclaim(b, r.as_mut_ptr()), 0, "{}", err_text());
        assert_eq!(r[0], 1, "one dead process reclaimed: {r:?}");
        let mut again = [0u64; 4];
        assert_eq!(shmflow_reclaim(b, again.as_mut_ptr()), 0);
        assert_eq!(again[0], 0, "exactly once");
        assert_eq!(shmflow_channel_status(cons, &mut st), 0);
        assert_eq!(st, 2);
        // The survivor lets go of what it read and leaves; everything is free again.
        assert_eq!(shmflow_segment_release(cons, msgs[0].segment), 0, "{}", err_text());
        assert_eq!(shmflow_channel_close(cons), 0);
        assert_eq!(shmflow_reclaim(b, r.as_mut_ptr()), 0);
        assert_eq!(shmflow_arena_info(b, &mut info), 0);
        assert_eq!(info.free_segments, info.segment_count, "no segment held by the dead process");
        assert_eq!(shmflow_peer_lookup(b, tm.as_ptr(), &mut slot), code::ENOENT);
    }
    assert_eq!(shmflow_arena_close(b), 0);
}
