//! The only home of atomics, cells, padding and the futex.
//!
//! Everything else in the crate imports these names from here. Under `cfg(loom)` the same
//! names resolve to loom's model-checked types, so the code that `loom-tests/` checks is
//! the code that ships. A `clippy.toml` `disallowed-types` entry keeps `std::sync::atomic`
//! out of every other module.
//!
//! ```text
//!   std (shipping)                       loom (model checking)
//!   core::sync::atomic::AtomicU32   <->  loom::sync::atomic::AtomicU32
//!   futex(2) on a word in the arena <->  a Mutex + Condvar emulation with the same contract
//!   core::cell::UnsafeCell          <->  loom::cell::UnsafeCell (access-tracked)
//! ```

mod event_count;
mod futex;
mod signal;
mod wait;

pub use event_count::{EventCount, WaitToken};
pub use futex::{FutexWaitResult, FutexWord};
pub use signal::{guard_read_only_mapping, install_stop_handler, mapping_truncated, stop_signal};
pub(crate) use wait::{set_co_turns, take_co_turns, SPIN_YIELD_NS};
pub use wait::{WaitOutcome, WaitPolicy, Waiter};

#[cfg(not(loom))]
#[allow(clippy::disallowed_types)]
pub use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

pub use crossbeam_utils::CachePadded;

/// A hint to the CPU that we are in a spin loop (PAUSE on x86).
#[inline]
pub fn spin_loop() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Asks the CPU to fetch the cache line holding `p` into this core's caches, without
/// reading it (a hint: no memory access in the language's sense, nothing happens under
/// loom or on other architectures). A spinning reader uses it on the line a writer in
/// another process is about to fill, so that line crosses cores in parallel with the
/// line the reader polls instead of after it.
#[inline]
pub fn prefetch_line(p: *const u8) {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    // SAFETY: PREFETCHT0 never faults and does not access memory architecturally, so any
    // address is fine; SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    let _ = p;
}

/// Whether [`prefetch_write_line`] does anything here: the CPU has PREFETCHW (CPUID
/// 0x8000_0001 ECX bit 8, "3dnowprefetch"; every AMD64 CPU and Intel's since Broadwell).
/// Looked up once (CPUID exits to the hypervisor in a VM): callers on a per-record path
/// keep the answer.
pub fn has_prefetch_write() -> bool {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            // Leaf 0x8000_0000 says how far the extended leaves go before 0x8000_0001 is
            // asked (CPUID itself is on every x86_64 CPU).
            let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
            max >= 0x8000_0001 && core::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0
        })
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    false
}

/// Asks the CPU to fetch the cache line holding `p` into this core's caches for writing
/// (PREFETCHW: the line arrives owned, so the stores that follow need not ask other cores
/// for it). A hint as [`prefetch_line`]: nothing happens under loom or on other
/// architectures. Only where [`has_prefetch_write`] said yes (elsewhere the instruction
/// may not exist). A writer streaming small records into a segment that a reader on
/// another core read last uses it a few lines ahead: each line then crosses cores before
/// the stores reach it instead of stalling them.
#[inline]
pub fn prefetch_write_line(p: *const u8) {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    // SAFETY: PREFETCHW never faults and does not access memory architecturally, so any
    // address is fine; the caller checked that the CPU has it (`has_prefetch_write`).
    unsafe {
        core::arch::asm!("prefetchw byte ptr [{0}]", in(reg) p, options(readonly, nostack, preserves_flags));
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    let _ = p;
}

/// Whether readers can evict the segments they are done with here
/// ([`set_evict_segments`]): the CPU has CLFLUSHOPT (CPUID leaf 7 EBX bit 23; AMD since
/// Zen, Intel since Skylake). Looked up once.
pub fn has_flush_opt() -> bool {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            // Leaf 0 says whether leaf 7 exists (CPUID itself is on every x86_64 CPU).
            let max = core::arch::x86_64::__cpuid(0).eax;
            max >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ebx & (1 << 23) != 0
        })
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    false
}

/// Whether this process's readers evict the segments they are done with (`evict_lines`),
/// on by default: see [`set_evict_segments`].
#[cfg(not(loom))]
static EVICT_SEGMENTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the eviction of read segments off (or on again) for this process; on by default
/// (where the CPU has CLFLUSHOPT: [`has_flush_opt`]).
///
/// With it on, the last reader of a segment evicts the lines written into it from every
/// cache (CLFLUSHOPT) before it hands the segment back to its producer, so that the
/// producer, on another core, writes the segment again from memory instead of taking
/// each line back from the reader's cache (the 1x1 8 B throughput bench's producer: about
/// half its CPU per record). It costs the reader about one CLFLUSHOPT per written line,
/// once per segment; segments holding a large piece of a record (8 KiB or more, copied
/// with either kind of store: [`streams_large_copies`]) or flushed more than a few times
/// (latency mode) are not evicted.
///
/// Turn it off where producers and consumers share cores: the lines a reader evicts are
/// then the ones its own core's producer writes next, and both pay. A job whose tasks
/// outnumber the CPUs turns it off in each worker (`run shuffle`, p=2 on 2 vCPUs: CPU per
/// 1 KiB record 73 -> 148 ns with eviction, per 16 B record 11.6 -> 12.4 ns). The Flink
/// transport (the `ffi` crate) turns it off unless `SHMFLOW_EVICT_SEGMENTS=1` is set in the
/// TaskManager's environment (its threads share cores with the other TaskManagers'). Only this process's readers are affected.
pub fn set_evict_segments(on: bool) {
    #[cfg(not(loom))]
    // Relaxed: a hint read by `evicts_segments`; any value is safe.
    EVICT_SEGMENTS.store(on, std::sync::atomic::Ordering::Relaxed);
    #[cfg(loom)]
    let _ = on;
}

/// Whether a reader done with a segment evicts its lines: the CPU can
/// ([`has_flush_opt`]) and the process did not turn it off ([`set_evict_segments`]).
#[inline]
pub(crate) fn evicts_segments() -> bool {
    #[cfg(not(loom))]
    // Relaxed: a hint (see `set_evict_segments`).
    return has_flush_opt() && EVICT_SEGMENTS.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(loom)]
    false
}

/// Whether a writer copies a large piece of a record into a segment with streaming
/// (non-temporal) stores rather than ordinary ones: the process's choice
/// ([`set_stream_large_copies`]), by default whether the CPU is AMD's or Hygon's
/// (CPUID). Measured on AMD EPYC (Zen 4) and Intel Xeon (Sapphire/Emerald Rapids)
/// only; other CPUs of these vendors take their vendor's default unmeasured.
///
/// Which one is faster depends on how the CPU hands a line that another core read over to
/// a writer. On AMD EPYC (Zen 4) an ordinary store takes each line back from the reader's
/// cache, and a 1 MiB record written into recycled 32 KiB segments moved at 7 GB/s with
/// ordinary stores, 15-17 GB/s with streaming ones. On Intel Xeon (Sapphire/Emerald Rapids:
/// 2 MiB L2 per core, one shared L3) the same hand-off with ordinary stores runs at the
/// speed of a one-core `memcpy` (1.7 us per 32 KiB, ~19 GB/s, the reader at the same
/// rate), while streaming stores go to memory and back (3.0 us per 32 KiB written, 2.6 us
/// read): there they are the slower choice (see "1 MiB records on Intel" in
/// docs/performance-history.md).
#[inline]
pub fn streams_large_copies() -> bool {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    {
        // Relaxed: a hint (see `set_stream_large_copies`); any value is safe.
        match STREAM_LARGE_COPIES.load(std::sync::atomic::Ordering::Relaxed) {
            STREAM_ON => true,
            STREAM_OFF => false,
            _ => is_amd(),
        }
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    false
}

/// [`STREAM_LARGE_COPIES`]: the CPU's default (`is_amd`).
#[cfg(all(not(loom), target_arch = "x86_64"))]
const STREAM_DEFAULT: u8 = 0;
/// [`STREAM_LARGE_COPIES`]: streaming stores.
#[cfg(all(not(loom), target_arch = "x86_64"))]
const STREAM_ON: u8 = 1;
/// [`STREAM_LARGE_COPIES`]: ordinary stores.
#[cfg(all(not(loom), target_arch = "x86_64"))]
const STREAM_OFF: u8 = 2;

/// The process's choice for [`streams_large_copies`]: [`STREAM_DEFAULT`] until
/// [`set_stream_large_copies`] is called.
#[cfg(all(not(loom), target_arch = "x86_64"))]
static STREAM_LARGE_COPIES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(STREAM_DEFAULT);

/// Makes this process's writers copy large record pieces (8 KiB and more, into one
/// segment) with streaming stores (`true`) or ordinary ones (`false`), overriding the
/// CPU's default ([`streams_large_copies`]). Either way the last reader of such a segment
/// does not evict it ([`set_evict_segments`]): its lines are in memory already, or the
/// eviction costs the reader more than it saves the writer. No effect off x86_64.
pub fn set_stream_large_copies(on: bool) {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    // Relaxed: a hint read by `streams_large_copies`; any value is safe.
    STREAM_LARGE_COPIES.store(if on { STREAM_ON } else { STREAM_OFF }, std::sync::atomic::Ordering::Relaxed);
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    let _ = on;
}

/// Whether the CPU is AMD's or Hygon's (CPUID leaf 0's vendor string "AuthenticAMD" or
/// "HygonGenuine", Hygon's cores being derived from AMD's Zen). Looked up once.
pub(crate) fn is_amd() -> bool {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    {
        static AMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AMD.get_or_init(|| {
            // The vendor string is in EBX, EDX, ECX, in that order.
            let r = core::arch::x86_64::__cpuid(0);
            let vendor = (r.ebx, r.edx, r.ecx);
            vendor == (0x6874_7541, 0x6974_6E65, 0x444D_4163) || vendor == (0x6F67_7948, 0x6E65_476E, 0x656E_6975)
        })
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    false
}

/// Evicts the cache lines of `[p, p + len)` from every cache of the machine (CLFLUSHOPT,
/// writing back what is modified), where [`has_flush_opt`] says yes (checked here);
/// nothing elsewhere and under loom. A hint as [`prefetch_line`]: it changes no value any load or store
/// sees (the caches stay coherent), only where lines are. A reader done with a segment
/// uses it before handing the segment back: its producer then writes the lines from
/// memory (a stream the prefetchers run ahead of) instead of taking each one back from
/// the reader's cache, which stalled a producer of small records on every line (the 1x1
/// 8 B throughput bench's producer: about 4x its CPU per record, see the section "A segment
/// goes back to its producer evicted" of docs/performance-history.md).
///
/// # Safety
/// Every byte of `[p, p + len)` must be in memory mapped for the whole call (CLFLUSHOPT
/// of an unmapped address faults like a load). `len == 0` touches nothing.
#[inline]
pub(crate) unsafe fn evict_lines(p: *const u8, len: usize) {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    if has_flush_opt() {
        let start = p as usize & !63;
        let end = (p as usize).saturating_add(len);
        let mut at = start;
        // Bounded: one step per line of the range.
        while at < end {
            // SAFETY: CLFLUSHOPT is present (`has_flush_opt`, checked above); `at` is in a
            // line that holds a byte of `[p, p + len)`, mapped (the caller's contract), and a
            // line never straddles pages; it changes no memory contents.
            unsafe {
                core::arch::asm!("clflushopt byte ptr [{0}]", in(reg) at, options(nostack, preserves_flags));
            }
            at += 64;
        }
    }
    #[cfg(any(loom, not(target_arch = "x86_64")))]
    let _ = (p, len);
}

/// Gives the rest of the time slice away.
#[inline]
pub fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// An `UnsafeCell` with loom's closure-based access API in both builds.
#[derive(Debug)]
pub struct UnsafeCell<T>(#[cfg(not(loom))] core::cell::UnsafeCell<T>, #[cfg(loom)] loom::cell::UnsafeCell<T>);

impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub fn new(value: T) -> Self {
        #[cfg(not(loom))]
        return Self(core::cell::UnsafeCell::new(value));
        #[cfg(loom)]
        return Self(loom::cell::UnsafeCell::new(value));
    }

    /// Runs `f` with a shared pointer to the value (a tracked read under loom).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.0.get());
        #[cfg(loom)]
        return self.0.with(f);
    }

    /// Runs `f` with a mutable pointer to the value (a tracked write under loom).
    #[inline]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(not(loom))]
        return f(self.0.get());
        #[cfg(loom)]
        return self.0.with_mut(f);
    }
}

/// A monotonic clock in nanoseconds since an arbitrary start, cheap enough for hot loops.
///
/// Under loom time does not pass: it always answers 0, so spin budgets run out by count.
#[inline]
pub fn now_nanos() -> u64 {
    #[cfg(not(loom))]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
    }
    #[cfg(loom)]
    0
}

/// Sleeps until [`now_nanos`] reads at least `deadline` (an absolute `CLOCK_MONOTONIC`
/// deadline, so a series of sleeps does not drift by the wake-up delay of each); returns
/// at once if it has passed. The wake-up is late by the thread's timer slack (50 µs by
/// default, see [`set_precise_timers`]) and the scheduler's delay.
///
/// Under loom time does not pass: it returns at once.
pub fn sleep_until(deadline: u64) {
    #[cfg(not(loom))]
    {
        let ts = libc::timespec {
            tv_sec: (deadline / 1_000_000_000) as libc::time_t,
            tv_nsec: (deadline % 1_000_000_000) as libc::c_long,
        };
        // Bounded: every EINTR retry is for a signal; the deadline does not move.
        for _ in 0..1000 {
            let (clock, rest) = (libc::CLOCK_MONOTONIC, std::ptr::null_mut());
            // SAFETY: `ts` is a valid timespec; the remainder pointer may be null with
            // TIMER_ABSTIME (it is not written).
            let r = unsafe { libc::clock_nanosleep(clock, libc::TIMER_ABSTIME, &ts, rest) };
            if r != libc::EINTR {
                break;
            }
        }
    }
    #[cfg(loom)]
    let _ = deadline;
}

/// Sets the calling thread's timer slack to 1 ns (`PR_SET_TIMERSLACK`): its sleeps then end
/// when due, not up to 50 µs later (the kernel's default slack, which lets it batch
/// wake-ups). For a thread that keeps a schedule, such as a rate-limited generator; it
/// costs more timer interrupts, so not for every thread. Does nothing if refused.
pub fn set_precise_timers() {
    #[cfg(not(loom))]
    // SAFETY: PR_SET_TIMERSLACK takes a value and changes only the calling thread's slack.
    unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    #[test]
    fn a_process_can_choose_streaming_or_ordinary_stores_for_large_copies() {
        let default = super::streams_large_copies();
        assert_eq!(default, cfg!(target_arch = "x86_64") && super::is_amd());
        super::set_stream_large_copies(!default);
        assert_eq!(super::streams_large_copies(), cfg!(target_arch = "x86_64") && !default);
        super::set_stream_large_copies(default);
        assert_eq!(super::streams_large_copies(), default);
    }

    #[test]
    fn a_process_can_turn_the_eviction_of_read_segments_off_and_on() {
        // Only a hint: other tests running meanwhile read segments either way.
        super::set_evict_segments(false);
        assert!(!super::evicts_segments());
        super::set_evict_segments(true);
        assert_eq!(super::evicts_segments(), super::has_flush_opt());
    }
}
