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
    /// In the spin phase, give the core away (`sched_yield`) between two polls instead of
    /// spinning on it (after a 2 µs spin when the waiter's last yield found the core free:
    /// a peer on another core is then met by a spin). When tasks outnumber cores the peer
    /// that would end the wait is often runnable on this very core, and a spinning waiter
    /// takes its time (a job of 2 generators and 2 sinks on 2 vCPUs); on an otherwise idle core
    /// the yield returns at once and the wait polls as a spin does, a few hundred ns apart.
    /// The spin budget then counts only the yields that returned at once (the core had
    /// nothing else to run: our CPU time); one that handed the core over costs us none, so
    /// the waiter keeps yielding instead of parking, for at most 5 ms of wall time.
    pub yield_core: bool,
}

impl Default for WaitPolicy {
    fn default() -> Self {
        Self::adaptive()
    }
}

impl WaitPolicy {
    /// Poll up to 100 µs (twice a cross-core futex round trip here), giving the core away
    /// between polls ([`WaitPolicy::yield_core`]), then park.
    pub const fn adaptive() -> Self {
        Self {
            min_spin: Duration::from_micros(2),
            max_spin: Duration::from_micros(100),
            park: true,
            park_slice: Duration::from_millis(50),
            yield_core: true,
        }
    }

    /// Never park: lowest latency, one core busy while waiting.
    pub const fn spin() -> Self {
        Self {
            min_spin: Duration::from_secs(3600),
            max_spin: Duration::from_secs(3600),
            park: false,
            park_slice: Duration::from_millis(50),
            yield_core: false,
        }
    }

    /// Park at once after one check: lowest CPU use.
    pub const fn park() -> Self {
        Self {
            min_spin: Duration::ZERO,
            max_spin: Duration::ZERO,
            park: true,
            park_slice: Duration::from_millis(50),
            yield_core: false,
        }
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
    /// Whether this waiter's last yield handed the core to another thread (a peer may be
    /// waiting for this very core): its next wait yields from the first poll instead of
    /// spinning [`PAUSE_NS`] first.
    core_shared: bool,
    /// How many times this waiter parked (for metrics and tests).
    pub parks: u64,
}

#[cfg(loom)]
const LOOM_SPINS: u32 = 1;

/// In spin mode, how long to spin between two yields of the core.
pub(crate) const SPIN_YIELD_NS: u64 = 20_000;

/// With [`WaitPolicy::yield_core`], how long a wait spins before it yields between polls
/// when its last yield found the core to itself (a peer on another core that is about to
/// deliver is met by a spin; the adaptive latency bench's ping-pong); at most half the
/// budget, so a budget at its minimum still yields.
const PAUSE_NS: u64 = 2_000;

/// A yield that took less than this found nothing else to run on the core: its time
/// counts against the spin budget (a system call and a trip through the scheduler take
/// well under it; running another thread and coming back takes longer).
const YIELD_IDLE_NS: u64 = 5_000;

/// The longest wall time a waiter yields (while other threads get the core) before it
/// parks anyway.
const YIELD_WALL_NS: u64 = 5_000_000;

impl Waiter {
    /// A waiter following `policy`, starting with its largest spin budget.
    pub fn new(policy: WaitPolicy) -> Self {
        Self { policy, budget_ns: policy.max_spin.as_nanos() as u64, core_shared: false, parks: 0 }
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
        #[cfg(not(loom))]
        if let Some(turns) = co_turns() {
            return wait_taking_turns(timeout, poll, turns);
        }
        // A zero budget (WaitPolicy::park) skips the spin phase: park right after the check.
        if self.budget_ns == 0 && self.policy.park {
            return self.park(ec, timeout, None, poll);
        }
        let start = super::now_nanos();
        let deadline = timeout.map(|t| start.saturating_add(t.as_nanos() as u64));
        // Spin phase.
        let spin_end = start.saturating_add(self.budget_ns);
        let mut i: u32 = 0;
        let mut last_yield = start;
        // A yield since the last clock reading (spin mode).
        let mut yield_pending = false;
        // When the spin phase gives the core away between polls (`yield_core`): the time
        // spun before plus the time of the yields that found nothing else to run. A waiter
        // that shares its core yields at once (spinning 2 µs first cost the 1 KiB shuffle
        // job 119 vs 91 ns per record).
        let pause_ns = PAUSE_NS.min(self.budget_ns / 2);
        let mut yield_cpu_ns: Option<u64> = (self.policy.yield_core && self.core_shared).then_some(0);
        // Whether the yields ran into their wall-time bound (not the budget).
        let mut yield_wall = false;
        loop {
            match yield_cpu_ns.as_mut() {
                Some(used_ns) => {
                    let (idle_ns, handed_over) = timed_yield();
                    *used_ns += idle_ns;
                    self.core_shared = handed_over;
                }
                None => spin_loop(),
            }
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
            // A yield may hand the core over for a while: look at the clock after each.
            if yield_cpu_ns.is_some() || i % 64 == 0 {
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
                    if yield_pending {
                        last_yield = now;
                        yield_pending = false;
                    } else if now.wrapping_sub(last_yield) >= SPIN_YIELD_NS {
                        super::yield_now();
                        yield_pending = true;
                    }
                    continue;
                }
                match yield_cpu_ns {
                    Some(used_ns) if used_ns >= self.budget_ns => break,
                    Some(_) if now.wrapping_sub(start) >= YIELD_WALL_NS => {
                        yield_wall = true;
                        break;
                    }
                    Some(_) => {}
                    None if self.policy.yield_core && now.wrapping_sub(start) >= pause_ns => {
                        yield_cpu_ns = Some(now.wrapping_sub(start));
                    }
                    None if now >= spin_end => break,
                    None => {}
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
        // Park phase. Spinning did not pay off: spin less next time (not when yields that
        // handed the core to other threads ran out of wall time: they cost us nothing).
        if !yield_wall {
            self.budget_ns = (self.budget_ns / 2).max(self.policy.min_spin.as_nanos() as u64);
        }
        self.park(ec, timeout, deadline, poll)
    }

    /// The park phase of [`wait`](Self::wait): announce, re-check, sleep, until `poll`
    /// answers or the deadline passes. `deadline` is `None` when the wait skipped the spin
    /// phase (no clock read yet): the first park's reading of the clock then starts the
    /// `timeout`, so a parking waiter reads the clock once per park and not on wake-up.
    fn park<T>(
        &mut self,
        ec: &EventCount,
        timeout: Option<Duration>,
        mut deadline: Option<u64>,
        mut poll: impl FnMut() -> Option<T>,
    ) -> WaitOutcome<T> {
        loop {
            let token = ec.prepare_wait();
            if let Some(v) = poll() {
                return WaitOutcome::Ready(v);
            }
            let mut slice = self.policy.park_slice;
            if let Some(t) = timeout {
                let now = super::now_nanos();
                let d = *deadline.get_or_insert_with(|| now.saturating_add(t.as_nanos() as u64));
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
                let _ = ec.wait(token, if timeout.is_some() { Some(slice) } else { None });
            }
            if let Some(v) = poll() {
                return WaitOutcome::Ready(v);
            }
            #[cfg(loom)]
            if timeout.is_some() {
                return WaitOutcome::TimedOut;
            }
        }
    }
}

thread_local! {
    /// The calling thread's co-scheduling turns ([`set_co_turns`]).
    #[cfg(not(loom))]
    static CO_TURNS: std::cell::Cell<Option<fn() -> bool>> = const { std::cell::Cell::new(None) };
}

/// Makes every [`Waiter::wait`] on the calling thread poll instead of spinning, yielding
/// or parking, calling `turns` between two polls (`None` undoes it). `turns` gives the
/// other tasks that share the thread one turn each, without waiting, and answers whether
/// any of them made progress: a task that waits for input or for buffers on a thread of
/// co-scheduled tasks lets the others run meanwhile (the runtime's co-scheduling,
/// [`RuntimeConfig::co_schedule`](crate::runtime::RuntimeConfig::co_schedule)). `turns`
/// must not wait itself (the runtime's do nothing when called from inside one of them).
pub(crate) fn set_co_turns(turns: Option<fn() -> bool>) {
    #[cfg(not(loom))]
    CO_TURNS.with(|t| t.set(turns));
    #[cfg(loom)]
    let _ = turns;
}

/// The calling thread's co-scheduling turns, if it has any ([`set_co_turns`]).
#[cfg(not(loom))]
fn co_turns() -> Option<fn() -> bool> {
    CO_TURNS.with(std::cell::Cell::get)
}

/// Calls the calling thread's co-scheduling turns once ([`set_co_turns`]): whether any
/// other task made progress, or `None` on a thread without them. For a task's own waits
/// outside a [`Waiter`] (a rate-limited source waiting for its next record's due time).
pub(crate) fn take_co_turns() -> Option<bool> {
    #[cfg(not(loom))]
    return co_turns().map(|turns| turns());
    #[cfg(loom)]
    None
}

/// [`Waiter::wait`] on a thread of co-scheduled tasks: poll, give the others a turn, poll
/// again, until `poll` answers or `timeout` passes. It neither yields nor parks: the
/// thread's other tasks are what this wait waits for as often as not (a generator whose
/// output is full waits for the sink that shares its thread), and a parked thread would
/// not run them.
#[cfg(not(loom))]
#[cold]
#[inline(never)]
fn wait_taking_turns<T>(
    timeout: Option<Duration>,
    mut poll: impl FnMut() -> Option<T>,
    turns: fn() -> bool,
) -> WaitOutcome<T> {
    let start = super::now_nanos();
    let deadline = timeout.map(|t| start.saturating_add(t.as_nanos() as u64));
    let mut last_yield = start;
    loop {
        let progressed = turns();
        if let Some(v) = poll() {
            return WaitOutcome::Ready(v);
        }
        if !progressed {
            spin_loop();
        }
        let now = super::now_nanos();
        if deadline.is_some_and(|d| now >= d) {
            return WaitOutcome::TimedOut;
        }
        // As spin mode: the core is given away every ~20 µs (a time slice's worth of
        // fairness to whatever else runs on it; on an idle core the yield returns at once).
        if now.wrapping_sub(last_yield) >= SPIN_YIELD_NS {
            super::yield_now();
            last_yield = super::now_nanos();
        }
    }
}

/// Yields the core once; returns the time it took if the core had nothing else to run
/// (under [`YIELD_IDLE_NS`]: our CPU time, spent on the system call), else 0 (another
/// thread ran meanwhile, on its own time), and whether another thread ran.
fn timed_yield() -> (u64, bool) {
    let t = super::now_nanos();
    super::yield_now();
    let d = super::now_nanos().wrapping_sub(t);
    if d < YIELD_IDLE_NS {
        (d, false)
    } else {
        (0, true)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{WaitOutcome, WaitPolicy, Waiter};
    use crate::sync::{AtomicBool, EventCount, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Pins the calling thread to `cpu`; false if it cannot.
    fn pin(cpu: usize) -> bool {
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (it came from sched_getcpu).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
    }

    /// One wait on a single CPU for a flag that a second thread on that CPU raises once the
    /// waiter has looked at it: whether the waiter got it without parking.
    fn wait_on_one_cpu(policy: WaitPolicy, cpu: usize) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let polled = Arc::new(AtomicBool::new(false));
        let ec = Arc::new(EventCount::new());
        let (f2, p2, ec2) = (flag.clone(), polled.clone(), ec.clone());
        let waiter = std::thread::spawn(move || {
            assert!(pin(cpu), "pinning the waiter");
            let mut w = Waiter::new(policy);
            // Relaxed (both): the flags carry no data; the event count orders the wake-up.
            let out = w.wait(&ec2, Some(Duration::from_secs(30)), || {
                p2.store(true, Ordering::Relaxed);
                f2.load(Ordering::Relaxed).then_some(())
            });
            assert_eq!(out, WaitOutcome::Ready(()), "the raised flag was not seen");
            w.parks == 0
        });
        let raiser = std::thread::spawn(move || {
            assert!(pin(cpu), "pinning the raiser");
            // Bounded: the waiter polls within its first moments on the CPU; should it never
            // (it failed before), the flag goes up after 30 s so neither thread hangs.
            let until = std::time::Instant::now() + Duration::from_secs(30);
            // Relaxed: see above.
            while !polled.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                std::thread::yield_now();
            }
            flag.store(true, Ordering::Relaxed);
            ec.notify();
        });
        raiser.join().expect("raiser");
        waiter.join().expect("waiter")
    }

    #[test]
    fn policies_yield_the_core_only_when_adaptive() {
        assert!(WaitPolicy::adaptive().yield_core);
        assert!(!WaitPolicy::spin().yield_core && !WaitPolicy::park().yield_core);
    }

    #[test]
    fn a_yielding_waiter_lets_the_peer_on_its_core_run_instead_of_parking() {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu < 0 || !pin(cpu as usize) {
            eprintln!("skipped: cannot pin threads here");
            return;
        }
        // A spin budget of 10 µs: spinning on the one CPU the raiser needs, the waiter parks
        // before the raiser runs; yielding, it hands the CPU over and sees the flag. Other
        // work on the machine may delay the raiser past the yields' wall-time bound: one
        // wait of five without a park is enough.
        let budget = |yield_core| WaitPolicy {
            min_spin: Duration::from_micros(10),
            max_spin: Duration::from_micros(10),
            yield_core,
            ..WaitPolicy::adaptive()
        };
        let cpu = cpu as usize;
        assert!((0..5).any(|_| wait_on_one_cpu(budget(true), cpu)), "the yielding waiter parked in all 5 waits");
        // The control: spinning, it parks (but for a rare preemption within its 10 µs).
        let parked = (0..3).filter(|_| !wait_on_one_cpu(budget(false), cpu)).count();
        assert!(parked >= 2, "a spinning waiter saw the flag without parking in {} of 3 waits", 3 - parked);
    }
}
