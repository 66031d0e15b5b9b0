//! # shmflow-ffi
//!
//! A C ABI (and JNI entry points) over shmflow for the same-host transport between Apache
//! Flink TaskManagers (`flink/` in this repository). The header is `include/shmflow.h`.
//!
//! ```text
//!  C / Java caller --handles (u64)--> HANDLES table --Arc--> ArenaCtx / ChannelCtx (core.rs)
//!        ^                                                          |
//!        '--- 0 or a negative code; shmflow_last_error() explains --'
//! ```
//!
//! Rules at the boundary: every entry point runs inside `catch_unwind` (a panic becomes
//! [`code::EPANIC`], never an unwind into C or the JVM); every pointer is checked for null,
//! every handle against the table (a stale or foreign handle is [`code::EINVAL`], never a
//! dangling access), every number against its range; the message of the last error is kept
//! per thread for `shmflow_last_error`.

#![warn(missing_docs)]

pub mod banked;
pub mod core;
pub mod handshake;
mod jni_api;
pub mod polled;

pub use crate::core::{
    code, ArenaCtx, ChannelCtx, FfiError, Msg, OpenOptions, Side, DATA_BUFFER_TYPES, FLAG_POLLABLE, KIND_CREDIT,
};
use crate::core::{FResult, MAX_TIMEOUT_MS};
use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};
use std::time::Duration;

enum Object {
    Arena(Arc<ArenaCtx>),
    Channel(Arc<ChannelCtx>),
}

/// Live objects: slot `i` holds handle `(generation << 32) | (i + 1)`.
struct Table {
    slots: Vec<(u32, Option<Object>)>,
    free: Vec<u32>,
}

static HANDLES: RwLock<Table> = RwLock::new(Table { slots: Vec::new(), free: Vec::new() });

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn table_write() -> std::sync::RwLockWriteGuard<'static, Table> {
    HANDLES.write().unwrap_or_else(|e| e.into_inner())
}

fn table_read() -> std::sync::RwLockReadGuard<'static, Table> {
    HANDLES.read().unwrap_or_else(|e| e.into_inner())
}

fn insert(o: Object) -> u64 {
    let mut t = table_write();
    let i = match t.free.pop() {
        Some(i) => i,
        None => {
            t.slots.push((0, None));
            (t.slots.len() - 1) as u32
        }
    };
    let s = &mut t.slots[i as usize];
    s.0 = s.0.wrapping_add(1);
    s.1 = Some(o);
    (u64::from(s.0) << 32) | (u64::from(i) + 1)
}

fn lookup<T>(h: u64, pick: impl FnOnce(&Object) -> Option<T>, what: &str) -> FResult<T> {
    let t = table_read();
    let idx = (h as u32).wrapping_sub(1) as usize;
    match t.slots.get(idx) {
        Some((generation, Some(o))) if *generation == (h >> 32) as u32 => {
            pick(o).ok_or_else(|| FfiError::new(code::EINVAL, format!("handle {h:#x} is not {what}")))
        }
        _ => Err(FfiError::new(code::EINVAL, format!("handle {h:#x} is not a live handle (closed, or never opened)"))),
    }
}

fn remove(h: u64) -> Option<Object> {
    let mut t = table_write();
    let idx = (h as u32).wrapping_sub(1) as usize;
    let live = matches!(t.slots.get(idx), Some((g, Some(_))) if *g == (h >> 32) as u32);
    if !live {
        return None;
    }
    let o = t.slots[idx].1.take();
    t.free.push(idx as u32);
    o
}

fn arena_of(h: u64) -> FResult<Arc<ArenaCtx>> {
    lookup(
        h,
        |o| match o {
            Object::Arena(a) => Some(a.clone()),
            Object::Channel(_) => None,
        },
        "an arena",
    )
}

fn channel_of(h: u64) -> FResult<Arc<ChannelCtx>> {
    lookup(
        h,
        |o| match o {
            Object::Channel(c) => Some(c.clone()),
            Object::Arena(_) => None,
        },
        "a channel",
    )
}

/// Runs `f` at the boundary: no unwinding out, errors recorded for `shmflow_last_error`.
pub(crate) fn entry(f: impl FnOnce() -> FResult<()>) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(FfiError::new(code::EPANIC, format!("internal error (panic caught at the boundary): {what}")))
    });
    match r {
        Ok(()) => 0,
        Err(e) => {
            LAST_ERROR.with(|l| *l.borrow_mut() = e.msg);
            e.code
        }
    }
}

/// The calling thread's last error message.
pub fn last_error() -> String {
    LAST_ERROR.with(|l| l.borrow().clone())
}

fn out_ptr<'a, T>(p: *mut T, what: &str) -> FResult<&'a mut T> {
    // SAFETY: the C contract says a non-null out pointer points to a writable T; null is
    // refused here.
    unsafe { p.as_mut() }.ok_or_else(|| FfiError::new(code::EINVAL, format!("{what} is a null pointer")))
}

fn c_str<'a>(p: *const c_char, what: &str) -> FResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::new(code::EINVAL, format!("{what} is a null pointer")));
    }
    // SAFETY: the C contract: a non-null pointer to a NUL-terminated string, valid for
    // the duration of the call.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| FfiError::new(code::EINVAL, format!("{what} is not UTF-8")))
}

fn timeout(ms: i32) -> FResult<Duration> {
    if !(0..=MAX_TIMEOUT_MS).contains(&ms) {
        return Err(FfiError::new(code::EINVAL, format!("timeout {ms} ms is outside 0..={MAX_TIMEOUT_MS}")));
    }
    Ok(Duration::from_millis(ms as u64))
}

fn side(v: i32) -> FResult<Side> {
    match v {
        0 => Ok(Side::Consumer),
        1 => Ok(Side::Producer),
        _ => Err(FfiError::new(code::EINVAL, format!("side {v} is neither 0 (consumer) nor 1 (producer)"))),
    }
}

/// Copies the calling thread's last error message into `buf` (NUL-terminated, truncated
/// to `cap - 1` bytes). Returns the message's full length in bytes, or -1 for a null
/// `buf` with a non-zero `cap`.
///
/// # Safety
/// `buf` must point to `cap` writable bytes (or be null with `cap == 0`).
#[no_mangle]
pub unsafe extern "C" fn shmflow_last_error(buf: *mut c_char, cap: usize) -> i32 {
    catch_unwind(|| {
        let msg = last_error();
        if cap == 0 {
            return msg.len().min(i32::MAX as usize) as i32;
        }
        if buf.is_null() {
            return -1;
        }
        let n = msg.len().min(cap - 1);
        // SAFETY: `buf` has `cap > n` writable bytes by the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
        msg.len().min(i32::MAX as usize) as i32
    })
    .unwrap_or(-1)
}

/// Creates the host's arena `name` (under /dev/shm, O_EXCL, mode 0600) or attaches to it,
/// claims a worker slot and registers TaskManager `tm_id` in `registry_dir`.
///
/// # Safety
/// Strings must be NUL-terminated; `out` must point to a writable u64.
#[no_mangle]
pub unsafe extern "C" fn shmflow_arena_open(
    name: *const c_char,
    registry_dir: *const c_char,
    tm_id: *const c_char,
    arena_bytes: u64,
    segment_size: u32,
    spin_ns: u64,
    out: *mut u64,
) -> i32 {
    entry(|| {
        let out = out_ptr(out, "out")?;
        // The process-wide eviction knob (`shmflow::sync::set_evict_segments`): OFF in a
        // TaskManager unless `SHMFLOW_EVICT_SEGMENTS=1` is in its environment. A TaskManager's
        // tasks and dispatchers share cores with the other TaskManagers' (idle flink/bench,
        // cross-TM 1 KiB: 1.63 M rec/s and 1453 ns CPU per record with it off, 1.13 M and
        // 2098 ns with it on). Read once per arena open, not per record.
        shmflow::sync::set_evict_segments(std::env::var_os("SHMFLOW_EVICT_SEGMENTS").is_some_and(|v| v == "1"));
        let opts = OpenOptions {
            name: c_str(name, "name")?.to_string(),
            registry_dir: c_str(registry_dir, "registry_dir")?.into(),
            tm_id: c_str(tm_id, "tm_id")?.to_string(),
            arena_bytes,
            segment_size,
            spin_ns,
        };
        *out = insert(Object::Arena(ArenaCtx::open(opts)?));
        Ok(())
    })
}

/// Leaves the arena: unregisters, and unlinks it when this was the last TaskManager.
/// Channels opened through it must be closed first (they keep the mapping alive).
#[no_mangle]
pub extern "C" fn shmflow_arena_close(arena: u64) -> i32 {
    entry(|| {
        arena_of(arena)?;
        if let Some(Object::Arena(a)) = remove(arena) {
            a.close();
        }
        Ok(())
    })
}

/// What [`shmflow_arena_info`] reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct ArenaInfo {
    /// This TaskManager's worker slot.
    pub slot: i32,
    /// Bytes per segment.
    pub segment_size: i32,
    /// Segments in all.
    pub segment_count: i32,
    /// Segments on the free stack now.
    pub free_segments: i32,
    /// Start of the data region (segment i at `data + i * segment_size`).
    pub data: *mut u8,
    /// Length of the data region in bytes.
    pub data_len: u64,
}

/// Reports the arena's geometry, free segments and data region.
///
/// # Safety
/// `out` must point to a writable `shmflow_arena_info`.
#[no_mangle]
pub unsafe extern "C" fn shmflow_arena_info(arena: u64, out: *mut ArenaInfo) -> i32 {
    entry(|| {
        let out = out_ptr(out, "out")?;
        let a = arena_of(arena)?;
        let (free, count) = a.segment_counts();
        let (data, data_len) = a.arena.data_region();
        *out = ArenaInfo {
            slot: a.slot as i32,
            segment_size: a.arena.segment_size() as i32,
            segment_count: count as i32,
            free_segments: free as i32,
            data,
            data_len,
        };
        Ok(())
    })
}

/// The peer handle of TaskManager `tm_id` (its worker slot in the low 32 bits, that
/// slot's generation in the high 32; never negative), if it is registered on this host's
/// arena and its process is alive; [`code::ENOENT`] otherwise. Keep the handle, not the
/// slot: a slot is registered again by another TaskManager after its holder leaves or
/// dies, and only the generation tells them apart.
///
/// # Safety
/// `tm_id` NUL-terminated; `out_peer` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_peer_lookup(arena: u64, tm_id: *const c_char, out_peer: *mut i64) -> i32 {
    entry(|| {
        let out = out_ptr(out_peer, "out_peer")?;
        let a = arena_of(arena)?;
        *out = a.lookup(c_str(tm_id, "tm_id")?)?;
        Ok(())
    })
}

/// Liveness of the TaskManager `peer` names (a handle from [`shmflow_peer_lookup`]): 1
/// alive, 0 left cleanly, -1 died, 2 free (nobody registered in it, or its dead holder
/// was reclaimed) or held by another TaskManager now. Only 1 is alive. A bare slot
/// (generation 0) asks about the slot, whoever holds it.
///
/// # Safety
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_peer_state(arena: u64, peer: i64, out: *mut i32) -> i32 {
    entry(|| {
        let out = out_ptr(out, "out")?;
        let a = arena_of(arena)?;
        *out = a.peer_state(peer)?;
        Ok(())
    })
}

/// Waits (spin budget, then futex) until channels of `side` (0 consumer, 1 producer)
/// have news, or `timeout_ms`; writes up to `max` channel ids to `ids` and their number
/// to `out_n` (0 on timeout).
///
/// # Safety
/// `ids` must have room for `max` ints; `out_n` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_wait(
    arena: u64,
    side_: i32,
    ids: *mut i32,
    max: i32,
    timeout_ms: i32,
    out_n: *mut i32,
) -> i32 {
    entry(|| {
        let out_n = out_ptr(out_n, "out_n")?;
        if ids.is_null() || !(1..=1 << 20).contains(&max) {
            return Err(FfiError::new(code::EINVAL, format!("ids must be non-null with max in 1..=2^20 (max {max})")));
        }
        let a = arena_of(arena)?;
        let s = side(side_)?;
        let t = timeout(timeout_ms)?;
        // SAFETY: `ids` has room for `max` ints by the caller's contract.
        let ids = unsafe { std::slice::from_raw_parts_mut(ids, max as usize) };
        *out_n = a.wait(s, ids, t)? as i32;
        Ok(())
    })
}

/// Sets how long `shmflow_wait` of `side` spins before it parks (0 ..= 10^9 ns).
#[no_mangle]
pub extern "C" fn shmflow_set_spin(arena: u64, side_: i32, spin_ns: i64) -> i32 {
    entry(|| {
        let a = arena_of(arena)?;
        let s = side(side_)?;
        if !(0..=1_000_000_000).contains(&spin_ns) {
            return Err(FfiError::new(code::EINVAL, format!("spin budget {spin_ns} ns is outside 0..=10^9")));
        }
        a.set_spin(s, spin_ns as u64)
    })
}

/// Wakes this TaskManager's own dispatcher of `side` (for shutdown).
#[no_mangle]
pub extern "C" fn shmflow_wake(arena: u64, side_: i32) -> i32 {
    entry(|| {
        let a = arena_of(arena)?;
        a.wake(side(side_)?);
        Ok(())
    })
}

/// Consumer side: opens a channel to the TaskManager `producer_peer` names (a handle from
/// [`shmflow_peer_lookup`]; a bare slot is refused).
///
/// # Safety
/// `out_channel` and `out_id` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_channel_connect(
    arena: u64,
    producer_peer: i64,
    out_channel: *mut u64,
    out_id: *mut i32,
) -> i32 {
    entry(|| {
        let out_channel = out_ptr(out_channel, "out_channel")?;
        let out_id = out_ptr(out_id, "out_id")?;
        let a = arena_of(arena)?;
        let c = ChannelCtx::connect(&a, producer_peer)?;
        *out_id = c.id as i32;
        *out_channel = insert(Object::Channel(c));
        Ok(())
    })
}

/// Producer side: takes channel `id` that [`shmflow_wait`] reported for side 1. A channel
/// its consumer closed before this call is freed here (with what the consumer queued in
/// it) and reported as [`code::EPEER`].
///
/// # Safety
/// `out_channel` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_channel_accept(arena: u64, id: i32, out_channel: *mut u64) -> i32 {
    entry(|| {
        let out = out_ptr(out_channel, "out_channel")?;
        let a = arena_of(arena)?;
        if id < 0 {
            return Err(FfiError::new(code::EINVAL, format!("channel id {id} is negative")));
        }
        *out = insert(Object::Channel(ChannelCtx::accept(&a, id as u32)?));
        Ok(())
    })
}

/// Closes this end of a channel (the second end to close frees what is still queued).
#[no_mangle]
pub extern "C" fn shmflow_channel_close(channel: u64) -> i32 {
    entry(|| {
        channel_of(channel)?;
        if let Some(Object::Channel(c)) = remove(channel) {
            c.close();
        }
        Ok(())
    })
}

/// The other end of the channel: 0 open, 1 closed it, 2 its process died.
///
/// # Safety
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_channel_status(channel: u64, out: *mut i32) -> i32 {
    entry(|| {
        let out = out_ptr(out, "out")?;
        *out = channel_of(channel)?.peer_status();
        Ok(())
    })
}

/// The channel's counters: buffers out, bytes out (producer), buffers in, bytes in
/// (consumer).
///
/// # Safety
/// `out` must have room for 4 u64.
#[no_mangle]
pub unsafe extern "C" fn shmflow_channel_counters(channel: u64, out: *mut u64) -> i32 {
    entry(|| {
        if out.is_null() {
            return Err(FfiError::new(code::EINVAL, "out is a null pointer"));
        }
        let v = channel_of(channel)?.counters();
        // SAFETY: `out` has room for 4 u64 by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, 4) };
        Ok(())
    })
}

/// Takes a free segment for writing (waits up to `timeout_ms` for one).
///
/// # Safety
/// `out_segment` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_segment_acquire(channel: u64, timeout_ms: i32, out_segment: *mut i32) -> i32 {
    entry(|| {
        let out = out_ptr(out_segment, "out_segment")?;
        let c = channel_of(channel)?;
        *out = c.acquire(timeout(timeout_ms)?)? as i32;
        Ok(())
    })
}

/// Returns a segment this end received (or acquired and did not send).
#[no_mangle]
pub extern "C" fn shmflow_segment_release(channel: u64, segment: i32) -> i32 {
    entry(|| channel_of(channel)?.release(segment))
}

/// The address of segment `segment`'s first byte.
///
/// # Safety
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_segment_ptr(arena: u64, segment: i32, out: *mut *mut u8) -> i32 {
    entry(|| {
        let out = out_ptr(out, "out")?;
        let a = arena_of(arena)?;
        if segment < 0 || segment as u32 >= a.arena.segment_count() {
            return Err(FfiError::new(
                code::EINVAL,
                format!("segment {segment} is outside 0..{}", a.arena.segment_count()),
            ));
        }
        let (data, _) = a.arena.data_region();
        // SAFETY: segment < segment_count keeps the offset inside the data region.
        *out = unsafe { data.add(segment as usize * a.arena.segment_size() as usize) };
        Ok(())
    })
}

/// Publishes `msg` to the other end (with its segment, which this end must hold from
/// [`shmflow_segment_acquire`]); waits up to `timeout_ms` for ring room.
///
/// # Safety
/// `msg` must point to a readable `shmflow_msg`.
#[no_mangle]
pub unsafe extern "C" fn shmflow_send(channel: u64, msg: *const Msg, timeout_ms: i32) -> i32 {
    entry(|| {
        // SAFETY: a non-null `msg` is readable by the caller's contract.
        let m = unsafe { msg.as_ref() }.ok_or_else(|| FfiError::new(code::EINVAL, "msg is a null pointer"))?;
        channel_of(channel)?.send(m, timeout(timeout_ms)?)
    })
}

/// Takes up to `max` messages into `out`; their number goes to `out_n`.
///
/// # Safety
/// `out` must have room for `max` messages; `out_n` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_poll(channel: u64, out: *mut Msg, max: i32, out_n: *mut i32) -> i32 {
    entry(|| {
        let out_n = out_ptr(out_n, "out_n")?;
        if out.is_null() || !(1..=1 << 16).contains(&max) {
            return Err(FfiError::new(code::EINVAL, format!("out must be non-null with max in 1..=65536 (max {max})")));
        }
        let c = channel_of(channel)?;
        // SAFETY: room for `max` messages by the caller's contract; Msg is plain data.
        let out = unsafe { std::slice::from_raw_parts_mut(out, max as usize) };
        *out_n = c.poll(out)? as i32;
        Ok(())
    })
}

/// Consumer side: announces `n` more credits to the producer (a CREDIT message, in
/// order with the channel's other messages).
#[no_mangle]
pub extern "C" fn shmflow_add_credit(channel: u64, n: i32, timeout_ms: i32) -> i32 {
    entry(|| {
        let c = channel_of(channel)?;
        if c.side != Side::Consumer {
            return Err(FfiError::new(code::EINVAL, "credit is announced by the consumer end"));
        }
        if n <= 0 {
            return Err(FfiError::new(code::EINVAL, format!("credit {n} is not positive")));
        }
        let m = Msg { kind: i32::from(KIND_CREDIT), segment: -1, arg: i64::from(n), ..Msg::default() };
        c.send(&m, timeout(timeout_ms)?)
    })
}

/// Consumer side: banks `n` more credits for the producer instead of sending a CREDIT
/// message (see the `banked` module: not ordered with the channel's messages; for channels
/// whose initial credit is positive). Wakes the producer's dispatcher only when it said it
/// waits for credit.
#[no_mangle]
pub extern "C" fn shmflow_bank_credit(channel: u64, n: i32) -> i32 {
    entry(|| {
        let c = channel_of(channel)?;
        let n = u32::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| FfiError::new(code::EINVAL, format!("credit {n} is not positive")))?;
        c.bank_credit(n)
    })
}

/// Producer side: takes the credit the consumer banked into `out_n` (0 when none; then the
/// consumer's next [`shmflow_bank_credit`] wakes the producer dispatcher with this channel
/// marked).
///
/// # Safety
/// `out_n` writable.
#[no_mangle]
pub unsafe extern "C" fn shmflow_take_credit(channel: u64, out_n: *mut i32) -> i32 {
    entry(|| {
        let out = out_ptr(out_n, "out_n")?;
        *out = channel_of(channel)?.take_credit()? as i32;
        Ok(())
    })
}

/// Consumer side: `on` != 0: this end's task polls the data ring itself from now on, so the
/// producer marks this TaskManager's notify set only for messages sent without
/// `FLAG_POLLABLE` (see the `polled` module); 0: it stops, and the caller polls once more
/// afterwards (a message published meanwhile was not marked).
#[no_mangle]
pub extern "C" fn shmflow_task_polls(channel: u64, on: i32) -> i32 {
    entry(|| {
        let on = match on {
            0 => false,
            1 => true,
            _ => return Err(FfiError::new(code::EINVAL, format!("on = {on}: 0 or 1"))),
        };
        channel_of(channel)?.set_task_polls(on)
    })
}

/// Reclaims what dead TaskManagers left in the arena (their segments, channels, slots):
/// `shmflow::partition::reclaim::reclaim_dead_peers`, exactly once per dead process
/// whoever calls it. `out` receives: processes reclaimed, segments freed, segments left to
/// their live readers (orphaned), channels failed.
///
/// # Safety
/// `out` must have room for 4 u64.
#[no_mangle]
pub unsafe extern "C" fn shmflow_reclaim(arena: u64, out: *mut u64) -> i32 {
    entry(|| {
        if out.is_null() {
            return Err(FfiError::new(code::EINVAL, "out is a null pointer"));
        }
        let a = arena_of(arena)?;
        let r = crate::core::reclaim(&a)?;
        let v = [
            r.reclaimed.len() as u64,
            u64::from(r.segments_freed),
            u64::from(r.segments_orphaned),
            u64::from(r.channels_failed),
        ];
        // SAFETY: `out` has room for 4 u64 by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), out, 4) };
        Ok(())
    })
}
