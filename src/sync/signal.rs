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
