//! The wait policy: spin a bounded, adaptive time, then park on an [`EventCount`].
//!
//! On the machines we run on, waking a halted vCPU costs tens of microseconds (see
//! MACHINE.md), so the spin phase matters: it adapts between `min_spin` and `max_spin`,
//! growing when spinning pays off and shrinking when the waiter ends up parking anyway, so
//! an idle process stops burning its core quickly while a busy pipeline never sleeps.

use super::{spin_loop, EventCount};
use std::time::Duration;

/// How a waiter waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Lower bound of the adaptive spin phase.
    pub min_spin: Duration,
    /// Upper bound of the adaptive spin phase.
    pub max_spin: Duration,
    /// Whether to park after spinning; `false` spins (and yields) forever: "spin mode".
    pub park: bool,
    /// The longest single park; the waiter wakes at least this often to let the caller
    /// check for dead peers and deadlines.
    pub park_slice: Duration,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self::adaptive()
    }
}

impl WaitPolicy {
    /// Spin up to 100 µs (twice a cross-core futex round trip here), then park.
    pub const fn adaptive() -> Self {
        Self {
            min_spin: Duration::from_micros(2),
            max_spin: Duration::from_micros(100),
            park: true,
            park_slice: Duration::from_millis(50),
        }
    }

    /// Never park: lowest latency, one core busy while waiting.
    pub const fn spin() -> Self {
        Self {
            min_spin: Duration::from_secs(3600),
            max_spin: Duration::from_secs(3600),
            park: false,
            park_slice: Duration::from_millis(50),
        }
    }

    /// Park at once after one check: lowest CPU use.
    pub const fn park() -> Self {
        Self { min_spin: Duration::ZERO, max_spin: Duration::ZERO, park: true, park_slice: Duration::from_millis(50) }
    }
}

/// What a bounded wait ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome<T> {
    /// The condition produced a value.
    Ready(T),
    /// The deadline passed first.
    TimedOut,
}

/// Process-local state of one waiting side: the policy and its current spin budget.
#[derive(Debug, Clone)]
pub struct Waiter {
    policy: WaitPolicy,
    budget_ns: u64,
    /// How many times this waiter parked (for metrics and tests).
    pub parks: u64,
}

#[cfg(loom)]
const LOOM_SPINS: u32 = 1;

/// In spin mode, how long to spin between two yields of the core.
const SPIN_YIELD_NS: u64 = 20_000;

impl Waiter {
    /// A waiter following `policy`, starting with its largest spin budget.
    pub fn new(policy: WaitPolicy) -> Self {
        Self { policy, budget_ns: policy.max_spin.as_nanos() as u64, parks: 0 }
    }

    /// The policy.
    pub fn policy(&self) -> WaitPolicy {
        self.policy
    }

    /// Waits until `poll` returns `Some`, spinning then parking on `ec`. `poll` is called
    /// again after every wake-up; it must be cheap and must observe what the notifier of
    /// `ec` publishes. Returns `TimedOut` once `timeout` has passed (never when `None`).
    pub fn wait<T>(
        &mut self,
        ec: &EventCount,
        timeout: Option<Duration>,
        mut poll: impl FnMut() -> Option<T>,
    ) -> WaitOutcome<T> {
        if let Some(v) = poll() {
            return WaitOutcome::Ready(v);
        }
        let start = super::now_nanos();
        let deadline = timeout.map(|t| start.saturating_add(t.as_nanos() as u64));
        // Spin phase.
        let spin_end = start.saturating_add(self.budget_ns);
        let mut i: u32 = 0;
        let mut last_yield = start;
        // A yield since the last clock reading (spin mode).
        let mut yielded = false;
        // A zero budget (WaitPolicy::park) skips the spin phase: park right after the check.
        while self.budget_ns > 0 || !self.policy.park {
            spin_loop();
            i = i.wrapping_add(1);
            if let Some(v) = poll() {
                if self.policy.park {
                    // Spinning paid off: allow a little more next time.
                    self.budget_ns =
                        (self.budget_ns + self.budget_ns / 4 + 64).min(self.policy.max_spin.as_nanos() as u64);
                }
                return WaitOutcome::Ready(v);
            }
            #[cfg(loom)]
            if i >= LOOM_SPINS {
                break;
            }
            if i % 64 == 0 {
                let now = super::now_nanos();
                if deadline.is_some_and(|d| now >= d) {
                    return WaitOutcome::TimedOut;
                }
                if !self.policy.park {
                    // Spin mode: every ~20 µs give the core away once, so a peer that shares
                    // it (more runnable threads than cores) is not starved; on an idle
                    // machine sched_yield returns at once. The clock is not read right after
                    // the yield: a peer that ran meanwhile (a generator on this core) may
                    // just have published what we wait for, and the poll comes first; the
                    // next ~20 µs count from the next reading (not from before the yield,
                    // which under load would give the core away again at once).
                    if yielded {
                        last_yield = now;
                        yielded = false;
                    } else if now.wrapping_sub(last_yield) >= SPIN_YIELD_NS {
                        super::yield_now();
                        yielded = true;
                    }
                    continue;
                }
                if now >= spin_end {
                    break;
                }
            }
        }
        if !self.policy.park {
            // Only reachable under loom, whose spin phase is bounded by count.
            return match poll() {
                Some(v) => WaitOutcome::Ready(v),
                None => WaitOutcome::TimedOut,
            };
        }
        // Park phase. Spinning did not pay off: spin less next time.
        self.budget_ns = (self.budget_ns / 2).max(self.policy.min_spin.as_nanos() as u64);
        loop {
            let token = ec.prepare_wait();
            if let Some(v) = poll() {
                return WaitOutcome::Ready(v);
            }
            let mut slice = self.policy.park_slice;
            if let Some(d) = deadline {
                let now = super::now_nanos();
                if now >= d {
                    return WaitOutcome::TimedOut;
                }
                slice = slice.min(Duration::from_nanos(d - now));
            }
            self.parks += 1;
            #[cfg(not(loom))]
            let _ = ec.wait(token, Some(slice));
            #[cfg(loom)]
            {
                // Under loom a timed wait returns at once; only an untimed one blocks, which
                // is what lets loom find a lost wake-up (a deadlock).
                let _ = slice;
                let _ = ec.wait(token, if deadline.is_some() { Some(slice) } else { None });
            }
            if let Some(v) = poll() {
                return WaitOutcome::Ready(v);
            }
            #[cfg(loom)]
            if deadline.is_some() {
                return WaitOutcome::TimedOut;
            }
        }
    }
}
