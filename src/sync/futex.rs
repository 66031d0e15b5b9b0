//! A process-shared futex word.
//!
//! The word lives in the shared arena; `wait` sleeps only while the word still holds the
//! value the caller saw, and `wake` wakes sleepers on the same physical page from any
//! process that maps it. We never pass `FUTEX_PRIVATE_FLAG`: the sleepers are in other
//! processes.
//!
//! Under loom the kernel is replaced by a `Mutex` + `Condvar` pair stored beside the word,
//! with the same contract: the check of the word and the decision to sleep are atomic with
//! respect to `wake`, a timed wait may time out at any moment (modelled as "at once"), and
//! a wake with nobody asleep is lost, exactly like the real one.

use super::AtomicU32;
#[cfg(loom)]
use super::Ordering;
use std::time::Duration;

/// What a [`FutexWord::wait`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FutexWaitResult {
    /// Woken by `wake`, or spuriously (callers always re-check their condition).
    Woken,
    /// The word no longer held the expected value.
    ValueChanged,
    /// The timeout passed.
    TimedOut,
}

/// A 32-bit word that processes can sleep on. `#[repr(C)]`, 4 bytes outside loom.
#[repr(C)]
#[derive(Debug)]
pub struct FutexWord {
    word: AtomicU32,
    #[cfg(loom)]
    model: LoomKernel,
}

#[cfg(loom)]
#[derive(Debug)]
struct LoomKernel {
    wakes: loom::sync::Mutex<u64>,
    cond: loom::sync::Condvar,
}

impl Default for FutexWord {
    fn default() -> Self {
        Self::new(0)
    }
}

impl FutexWord {
    /// A word holding `value`.
    pub fn new(value: u32) -> Self {
        Self {
            word: AtomicU32::new(value),
            #[cfg(loom)]
            model: LoomKernel { wakes: loom::sync::Mutex::new(0), cond: loom::sync::Condvar::new() },
        }
    }

    /// The atomic itself, for the protocol built on top (the event count).
    #[inline]
    pub fn atomic(&self) -> &AtomicU32 {
        &self.word
    }

    /// Sleeps while the word equals `expected`, at most `timeout` (forever when `None`).
    pub fn wait(&self, expected: u32, timeout: Option<Duration>) -> FutexWaitResult {
        #[cfg(not(loom))]
        {
            let ts;
            let ts_ptr = match timeout {
                Some(d) => {
                    ts = libc::timespec {
                        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
                        tv_nsec: d.subsec_nanos() as libc::c_long,
                    };
                    &ts as *const libc::timespec
                }
                None => core::ptr::null(),
            };
            // SAFETY: the word is a valid, aligned u32 that lives as long as `self`; the
            // timespec pointer is null or points at `ts`, alive for the call. FUTEX_WAIT
            // (without the private flag) only reads the word.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.word.as_ptr(),
                    libc::FUTEX_WAIT,
                    expected,
                    ts_ptr,
                    core::ptr::null::<u32>(),
                    0u32,
                )
            };
            if rc == 0 {
                return FutexWaitResult::Woken;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => FutexWaitResult::ValueChanged,
                Some(libc::ETIMEDOUT) => FutexWaitResult::TimedOut,
                // EINTR and anything unexpected: a spurious wake-up; the caller re-checks.
                _ => FutexWaitResult::Woken,
            }
        }
        #[cfg(loom)]
        {
            let guard = self.model.wakes.lock().unwrap();
            // SeqCst: stands for the kernel's check under the hash-bucket lock.
            if self.word.load(Ordering::SeqCst) != expected {
                return FutexWaitResult::ValueChanged;
            }
            if timeout.is_some() {
                return FutexWaitResult::TimedOut;
            }
            let seen = *guard;
            let mut guard = guard;
            while *guard == seen {
                guard = self.model.cond.wait(guard).unwrap();
            }
            FutexWaitResult::Woken
        }
    }

    /// Wakes up to `n` sleepers; returns how many were woken (0 when nobody slept).
    pub fn wake(&self, n: u32) -> u32 {
        #[cfg(not(loom))]
        {
            // SAFETY: the word is a valid, aligned u32 that lives as long as `self`;
            // FUTEX_WAKE does not access memory other than to hash the address.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    self.word.as_ptr(),
                    libc::FUTEX_WAKE,
                    n.min(i32::MAX as u32),
                    core::ptr::null::<libc::timespec>(),
                    core::ptr::null::<u32>(),
                    0u32,
                )
            };
            rc.max(0) as u32
        }
        #[cfg(loom)]
        {
            let _ = n;
            let mut guard = self.model.wakes.lock().unwrap();
            *guard += 1;
            self.model.cond.notify_all();
            1
        }
    }
}
