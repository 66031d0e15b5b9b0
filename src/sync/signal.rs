//! A process-wide "stop" flag raised by SIGINT / SIGTERM / SIGHUP, so a coordinator can stop its
//! workers and clean up instead of dying with them still running.
//!
//! The flag is a plain std atomic even under loom: signal handlers are not modelled, and
//! the handler may only touch lock-free, async-signal-safe state.

#[allow(clippy::disallowed_types)]
static STOP: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Relaxed: a flag polled by the coordinator's loop; nothing else to order.
    STOP.store(sig, core::sync::atomic::Ordering::Relaxed);
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP (a closed terminal) (idempotent).
pub fn install_stop_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the
    // handler pointer is valid for the life of the process.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGHUP, handler as libc::sighandler_t);
    }
}

/// The signal that asked us to stop, if any.
pub fn stop_signal() -> Option<i32> {
    // Relaxed: see `on_signal`.
    match STOP.load(core::sync::atomic::Ordering::Relaxed) {
        0 => None,
        s => Some(s),
    }
}

/// The read-only mapping an observer guards: `[start, end)`, 0 when none.
#[allow(clippy::disallowed_types)]
static GUARDED_START: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
#[allow(clippy::disallowed_types)]
static GUARDED_END: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
#[allow(clippy::disallowed_types)]
static PAGE_SIZE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(4096);
/// Raised when a read of the guarded mapping hit a page past the end of its file.
#[allow(clippy::disallowed_types)]
static TRUNCATED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    use core::sync::atomic::Ordering::Relaxed;
    // SAFETY: the kernel passes a valid siginfo for a handler installed with SA_SIGINFO.
    let addr = unsafe { (*info).si_addr() } as usize;
    // Relaxed: set once before the handler is installed (sigaction orders them).
    let (start, end, page) = (GUARDED_START.load(Relaxed), GUARDED_END.load(Relaxed), PAGE_SIZE.load(Relaxed));
    if start != 0 && (start..end).contains(&addr) {
        // SAFETY: the page lies inside the observer's own read-only mapping of a file that
        // was truncated under it: replacing it with a private zero page (mmap is a plain
        // system call here) makes the faulting read return zeros when it restarts, which
        // the observer discards once it sees the flag. Nothing else refers to that page.
        let p = unsafe {
            libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            // Relaxed: a flag the observer polls after its reads; nothing else to order.
            TRUNCATED.store(true, Relaxed);
            return;
        }
    }
    // Not the guarded mapping (or the page could not be replaced): die as SIGBUS would.
    // SAFETY: signal and raise are async-signal-safe.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// For a read-only observer (`shmflow top`, `check`) of a file mapping `[start, start +
/// len)` that another process may truncate: a read past the new end of the file raises
/// SIGBUS, which then maps a zero page there and raises [`mapping_truncated`] instead of
/// killing the process. A SIGBUS anywhere else still kills it. One mapping per process;
/// a later call replaces the earlier one.
///
/// # Errors
/// The OS error of `sigaction`.
pub fn guard_read_only_mapping(start: *const u8, len: usize) -> std::io::Result<()> {
    use core::sync::atomic::Ordering::Relaxed;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // Relaxed: published to the handler by the sigaction below (a system call).
    PAGE_SIZE.store(usize::try_from(page).unwrap_or(4096).max(1), Relaxed);
    GUARDED_START.store(start as usize, Relaxed);
    GUARDED_END.store((start as usize).saturating_add(len), Relaxed);
    // SAFETY: a zeroed sigaction is valid; the handler only touches atomics and makes
    // async-signal-safe calls (see `on_sigbus`), and is valid for the life of the process.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        let handler = on_sigbus as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a read of the mapping guarded by [`guard_read_only_mapping`] hit a page past
/// the end of its file (it was truncated; what was read since is not to be trusted).
pub fn mapping_truncated() -> bool {
    // Relaxed: see `on_sigbus`.
    TRUNCATED.load(core::sync::atomic::Ordering::Relaxed)
}
