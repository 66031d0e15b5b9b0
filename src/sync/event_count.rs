//! An event count on a futex word: the cross-process wake-up of DESIGN.md §4.5.
//!
//! ```text
//!  word: [ epoch : 31 bits | WAITING : 1 bit ]
//!
//!  waiter                                   notifier
//!  t = prepare_wait()  (fetch_or WAITING)   publish the data (Release store)
//!  fence(SeqCst)                            fence(SeqCst)
//!  if condition holds: return               v = load(word)
//!  wait(t)  (futex: sleep while word == t)  if v & WAITING: bump epoch, clear WAITING,
//!                                                             FUTEX_WAKE all
//! ```
//!
//! The two SeqCst fences make this Dekker's pattern: either the notifier sees WAITING and
//! wakes, or the waiter's re-check sees the published data. A notifier that sees no
//! WAITING bit makes no system call, which keeps the fast path free of syscalls. The epoch
//! bump makes a waiter that is just about to sleep return at once (the futex value check).

use super::{fence, FutexWaitResult, FutexWord, Ordering};
use std::time::Duration;

const WAITING: u32 = 1;

/// A wake-up word shared by processes. `#[repr(C)]`, 4 bytes outside loom.
#[repr(C)]
#[derive(Debug, Default)]
pub struct EventCount {
    futex: FutexWord,
}

/// Proof that a waiter announced itself; handed back to [`EventCount::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a prepared wait must be followed by a re-check of the condition"]
pub struct WaitToken(u32);

impl EventCount {
    /// A fresh event count.
    pub fn new() -> Self {
        Self { futex: FutexWord::new(0) }
    }

    /// Announces a waiter. The caller must re-check its condition before calling `wait`.
    #[inline]
    pub fn prepare_wait(&self) -> WaitToken {
        // SeqCst RMW + fence: the waiter's half of the Dekker pair; pairs with the fence in
        // `notify`, so either `notify` sees WAITING or the caller's re-check sees the data.
        let prev = self.futex.atomic().fetch_or(WAITING, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        WaitToken(prev | WAITING)
    }

    /// Sleeps until notified (or spuriously, or after `timeout`). Returns at once if a
    /// notification came after `token` was taken.
    pub fn wait(&self, token: WaitToken, timeout: Option<Duration>) -> FutexWaitResult {
        self.futex.wait(token.0, timeout)
    }

    /// Wakes every parked waiter, and does nothing (no system call) when none is parked.
    /// Call after publishing what the waiters wait for.
    #[inline]
    pub fn notify(&self) {
        // SeqCst fence: the notifier's half of the Dekker pair; pairs with the fence in
        // `prepare_wait`. Orders the caller's publishing store before the load below.
        fence(Ordering::SeqCst);
        // Relaxed: the fence above already orders this load; a stale "no waiter" is
        // impossible because of the fence pair.
        let v = self.futex.atomic().load(Ordering::Relaxed);
        if v & WAITING != 0 {
            self.notify_slow();
        }
    }

    /// Wakes every parked waiter unconditionally (used to unblock peers on failure).
    pub fn notify_all_forced(&self) {
        fence(Ordering::SeqCst);
        self.notify_slow();
    }

    #[cold]
    fn notify_slow(&self) {
        // AcqRel: the epoch bump must be visible to a waiter's futex value check; the kernel
        // orders the check itself. Pairs with `prepare_wait`'s fetch_or.
        let _ = self
            .futex
            .atomic()
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| Some((v & !WAITING).wrapping_add(2)));
        self.futex.wake(u32::MAX);
    }

    /// The raw word (for inspection tools and tests).
    pub fn raw(&self) -> u32 {
        // Relaxed: a diagnostic read with no ordering needs.
        self.futex.atomic().load(Ordering::Relaxed)
    }
}
