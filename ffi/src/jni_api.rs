//! JNI entry points of `org.shmflow.flink.Native` (flink/src/main/java/org/shmflow/flink/Native.java).
//!
//! Each mirrors one C function of `lib.rs` and goes through the same `entry` (no panic
//! crosses into the JVM; errors are negative codes, `Native.lastError()` explains). Values
//! come back as the non-negative return value or through small `long[]` / `int[]` out
//! arrays, so no call allocates Java objects except `data` (one direct buffer per arena)
//! and `lastError`.

use crate::core::{FResult, Msg, MAX_TIMEOUT_MS};
use crate::{
    arena_of, channel_of, code, entry, insert, last_error, remove, ArenaCtx, ChannelCtx, FfiError, Object, OpenOptions,
    Side,
};
use jni::objects::{JClass, JIntArray, JLongArray, JString};
use jni::sys::{jint, jlong, jobject, jstring};
use jni::JNIEnv;
use std::cell::{Cell, RefCell};
use std::time::Duration;

thread_local! {
    /// `Native.wait`'s channel ids, reused across calls on the same thread.
    static WAIT_IDS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
}

fn jerr(e: jni::errors::Error) -> FfiError {
    FfiError::new(code::EINVAL, format!("JNI: {e}"))
}

fn jstr(env: &mut JNIEnv<'_>, s: &JString<'_>, what: &str) -> FResult<String> {
    if s.is_null() {
        return Err(FfiError::new(code::EINVAL, format!("{what} is null")));
    }
    Ok(env.get_string(s).map_err(jerr)?.into())
}

fn put_longs(env: &mut JNIEnv<'_>, a: &JLongArray<'_>, v: &[i64]) -> FResult<()> {
    if a.is_null() || (env.get_array_length(a).map_err(jerr)? as usize) < v.len() {
        return Err(FfiError::new(code::EINVAL, format!("the out array must hold {} longs", v.len())));
    }
    env.set_long_array_region(a, 0, v).map_err(jerr)
}

fn ms(t: jint) -> FResult<Duration> {
    if !(0..=MAX_TIMEOUT_MS).contains(&t) {
        return Err(FfiError::new(code::EINVAL, format!("timeout {t} ms is outside 0..={MAX_TIMEOUT_MS}")));
    }
    Ok(Duration::from_millis(t as u64))
}

/// Runs `f`, returning its non-negative value or the error code.
/// As [`value`], for a `jlong` result (a peer handle, never negative).
fn long_value(f: impl FnOnce() -> FResult<i64>) -> jlong {
    let out = Cell::new(0);
    let rc = entry(|| {
        out.set(f()?);
        Ok(())
    });
    if rc < 0 {
        i64::from(rc)
    } else {
        out.get()
    }
}

fn value(f: impl FnOnce() -> FResult<i32>) -> jint {
    let out = Cell::new(0);
    let rc = entry(|| {
        out.set(f()?);
        Ok(())
    });
    if rc < 0 {
        rc
    } else {
        out.get()
    }
}

fn side(v: jint) -> FResult<Side> {
    crate::side(v)
}

/// `Native.open(name, registryDir, tmId, arenaBytes, segmentSize, spinNs, long[1] out)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_open<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    name: JString<'l>,
    registry_dir: JString<'l>,
    tm_id: JString<'l>,
    arena_bytes: jlong,
    segment_size: jint,
    spin_ns: jlong,
    out: JLongArray<'l>,
) -> jint {
    entry(|| {
        if arena_bytes <= 0 || segment_size <= 0 || spin_ns < 0 {
            return Err(FfiError::new(
                code::EINVAL,
                format!(
                    "arena bytes {arena_bytes}, segment size {segment_size} and spin {spin_ns} ns must be positive"
                ),
            ));
        }
        let opts = OpenOptions {
            name: jstr(&mut env, &name, "name")?,
            registry_dir: jstr(&mut env, &registry_dir, "registryDir")?.into(),
            tm_id: jstr(&mut env, &tm_id, "tmId")?,
            arena_bytes: arena_bytes as u64,
            segment_size: segment_size as u32,
            spin_ns: spin_ns as u64,
        };
        let ctx = ArenaCtx::open(opts)?;
        let h = insert(Object::Arena(ctx.clone()));
        if let Err(e) = put_longs(&mut env, &out, &[h as i64]) {
            remove(h);
            ctx.close();
            return Err(e);
        }
        Ok(())
    })
}

/// `Native.close(arena)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_close<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, arena: jlong) -> jint {
    crate::shmflow_arena_close(arena as u64)
}

/// `Native.info(arena, long[5] out)`: slot, segment size, segment count, free segments,
/// data length.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_info<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    out: JLongArray<'l>,
) -> jint {
    entry(|| {
        let a = arena_of(arena as u64)?;
        let (free, count) = a.segment_counts();
        let v = [
            i64::from(a.slot),
            i64::from(a.arena.segment_size()),
            i64::from(count),
            i64::from(free),
            a.arena.data_region().1 as i64,
        ];
        put_longs(&mut env, &out, &v)
    })
}

/// `Native.data(arena)`: a direct ByteBuffer over the data region (null on error).
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_data<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
) -> jobject {
    let mut out = std::ptr::null_mut();
    entry(|| {
        let a = arena_of(arena as u64)?;
        let (p, len) = a.arena.data_region();
        if len > i32::MAX as u64 {
            return Err(FfiError::new(
                code::ECONFIG,
                format!("a data region of {len} bytes is above Java's 2 GiB buffer limit"),
            ));
        }
        // SAFETY: `p..p+len` is the mapped data region, which lives as long as the arena
        // handle's Arc; the Java side keeps the buffer only while the arena is open
        // (ShmArena closes channels and drops the buffer before closing the arena).
        let b = unsafe { env.new_direct_byte_buffer(p, len as usize) }.map_err(jerr)?;
        out = b.into_raw();
        Ok(())
    });
    out
}

/// `Native.lookup(arena, tmId)`: the peer handle (worker slot and its generation, see
/// `core::peer_handle`), or a negative code.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_lookup<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    tm_id: JString<'l>,
) -> jlong {
    long_value(|| {
        let a = arena_of(arena as u64)?;
        a.lookup(&jstr(&mut env, &tm_id, "tmId")?)
    })
}

/// `Native.peerState(arena, peer)`: 2 alive, 1 left, 0 died, 3 free or another
/// TaskManager's now (the C values + 1), or a negative code.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_peerState<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    peer: jlong,
) -> jint {
    value(|| {
        let a = arena_of(arena as u64)?;
        Ok(a.peer_state(peer)? + 1)
    })
}

/// `Native.await(arena, side, int[] ids, timeoutMs)`: how many ids were written.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_await<'l>(
    env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    side_: jint,
    ids: JIntArray<'l>,
    timeout_ms: jint,
) -> jint {
    value(|| {
        let a = arena_of(arena as u64)?;
        let s = side(side_)?;
        let t = ms(timeout_ms)?;
        if ids.is_null() {
            return Err(FfiError::new(code::EINVAL, "ids is null"));
        }
        let len = env.get_array_length(&ids).map_err(jerr)?;
        if !(1..=1 << 20).contains(&len) {
            return Err(FfiError::new(code::EINVAL, format!("ids has {len} entries (1..=2^20)")));
        }
        // One buffer per thread, reused: the dispatcher calls this on every wake-up.
        WAIT_IDS.with_borrow_mut(|buf| {
            buf.resize(len as usize, 0);
            let n = a.wait(s, &mut buf[..], t)?;
            env.set_int_array_region(&ids, 0, &buf[..n]).map_err(jerr)?;
            Ok(n as i32)
        })
    })
}

/// `Native.setSpin(arena, side, spinNs)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_setSpin<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    side_: jint,
    spin_ns: jlong,
) -> jint {
    crate::shmflow_set_spin(arena as u64, side_, spin_ns)
}

/// `Native.wake(arena, side)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_wake<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    side_: jint,
) -> jint {
    crate::shmflow_wake(arena as u64, side_)
}

/// `Native.connect(arena, producerPeer, long[2] out)`: channel handle and id.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_connect<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    producer_peer: jlong,
    out: JLongArray<'l>,
) -> jint {
    entry(|| {
        let a = arena_of(arena as u64)?;
        let c = ChannelCtx::connect(&a, producer_peer)?;
        let id = c.id;
        let h = insert(Object::Channel(c.clone()));
        if let Err(e) = put_longs(&mut env, &out, &[h as i64, i64::from(id)]) {
            remove(h);
            c.close();
            return Err(e);
        }
        Ok(())
    })
}

/// `Native.accept(arena, id, long[1] out)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_accept<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    id: jint,
    out: JLongArray<'l>,
) -> jint {
    entry(|| {
        let a = arena_of(arena as u64)?;
        if id < 0 {
            return Err(FfiError::new(code::EINVAL, format!("channel id {id} is negative")));
        }
        let c = ChannelCtx::accept(&a, id as u32)?;
        let h = insert(Object::Channel(c.clone()));
        if let Err(e) = put_longs(&mut env, &out, &[h as i64]) {
            remove(h);
            c.close();
            return Err(e);
        }
        Ok(())
    })
}

/// `Native.closeChannel(channel)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_closeChannel<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
) -> jint {
    crate::shmflow_channel_close(ch as u64)
}

/// `Native.status(channel)`: 0 open, 1 the other end closed, 2 it died; or a negative code.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_status<'l>(_env: JNIEnv<'l>, _c: JClass<'l>, ch: jlong) -> jint {
    value(|| Ok(channel_of(ch as u64)?.peer_status()))
}

/// `Native.counters(channel, long[4] out)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_counters<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    out: JLongArray<'l>,
) -> jint {
    entry(|| {
        let v = channel_of(ch as u64)?.counters().map(|x| x as i64);
        put_longs(&mut env, &out, &v)
    })
}

/// `Native.acquire(channel, timeoutMs)`: a segment index, or a negative code.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_acquire<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    timeout_ms: jint,
) -> jint {
    value(|| Ok(channel_of(ch as u64)?.acquire(ms(timeout_ms)?)? as i32))
}

/// `Native.release(channel, segment)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_release<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    seg: jint,
) -> jint {
    crate::shmflow_segment_release(ch as u64, seg)
}

/// `Native.send(channel, kind, segment, size, subpartition, seq, backlog, dataType,
/// flags, arg, timeoutMs)`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_org_shmflow_flink_Native_send<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    kind: jint,
    segment: jint,
    size: jint,
    subpartition: jint,
    seq: jint,
    backlog: jint,
    data_type: jint,
    flags: jint,
    arg: jlong,
    timeout_ms: jint,
) -> jint {
    entry(|| {
        let m = Msg { kind, segment, size, subpartition, seq, backlog, data_type, flags, arg };
        channel_of(ch as u64)?.send(&m, ms(timeout_ms)?)
    })
}

/// Ints per message in [`Java_org_shmflow_flink_Native_poll`]'s array: kind, segment,
/// size, subpartition, seq, backlog, data type, flags, arg low, arg high.
const MSG_INTS: usize = 10;

/// `Native.poll(channel, int[] out)`: messages taken (10 ints each), or a negative code.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_poll<'l>(
    env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    out: JIntArray<'l>,
) -> jint {
    value(|| {
        let c = channel_of(ch as u64)?;
        if out.is_null() {
            return Err(FfiError::new(code::EINVAL, "out is null"));
        }
        let len = env.get_array_length(&out).map_err(jerr)? as usize;
        let max = (len / MSG_INTS).min(64);
        if max == 0 {
            return Err(FfiError::new(code::EINVAL, format!("out must hold at least {MSG_INTS} ints")));
        }
        let mut msgs = [Msg::default(); 64];
        let n = c.poll(&mut msgs[..max])?;
        let mut ints = [0i32; 64 * MSG_INTS];
        for (m, o) in msgs[..n].iter().zip(ints.chunks_exact_mut(MSG_INTS)) {
            o.copy_from_slice(&[
                m.kind,
                m.segment,
                m.size,
                m.subpartition,
                m.seq,
                m.backlog,
                m.data_type,
                m.flags,
                m.arg as i32,
                (m.arg >> 32) as i32,
            ]);
        }
        env.set_int_array_region(&out, 0, &ints[..n * MSG_INTS]).map_err(jerr)?;
        Ok(n as i32)
    })
}

/// `Native.addCredit(channel, n, timeoutMs)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_addCredit<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    n: jint,
    timeout_ms: jint,
) -> jint {
    crate::shmflow_add_credit(ch as u64, n, timeout_ms)
}

/// `Native.bankCredit(channel, n)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_bankCredit<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    n: jint,
) -> jint {
    crate::shmflow_bank_credit(ch as u64, n)
}

/// `Native.takeCredit(channel)`: the credit taken (>= 0) or a negative error code.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_takeCredit<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
) -> jint {
    value(|| Ok(channel_of(ch as u64)?.take_credit()? as i32))
}

/// `Native.taskPolls(channel, on)`.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_taskPolls<'l>(
    _env: JNIEnv<'l>,
    _c: JClass<'l>,
    ch: jlong,
    on: jint,
) -> jint {
    crate::shmflow_task_polls(ch as u64, on)
}

/// `Native.lastError()`: the calling thread's last error message.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_lastError<'l>(env: JNIEnv<'l>, _c: JClass<'l>) -> jstring {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        env.new_string(last_error()).map(|s| s.into_raw()).unwrap_or(std::ptr::null_mut())
    }))
    .unwrap_or(std::ptr::null_mut())
}

/// `Native.reclaim(arena, long[4] out)`: processes reclaimed, segments freed, segments
/// orphaned, channels failed.
#[no_mangle]
pub extern "system" fn Java_org_shmflow_flink_Native_reclaim<'l>(
    mut env: JNIEnv<'l>,
    _c: JClass<'l>,
    arena: jlong,
    out: JLongArray<'l>,
) -> jint {
    entry(|| {
        let a = arena_of(arena as u64)?;
        let r = crate::core::reclaim(&a)?;
        let v = [
            r.reclaimed.len() as i64,
            i64::from(r.segments_freed),
            i64::from(r.segments_orphaned),
            i64::from(r.channels_failed),
        ];
        put_longs(&mut env, &out, &v)
    })
}
