//! Liveness of the processes attached to an arena (DESIGN.md §5).
//!
//! Every process that takes part writes its pid and start time into a `WorkerRecord`. Any
//! surviving peer can then tell a dead process from a slow one without asking anybody: the
//! pid is gone, or belongs to a process that started at another time (a recycled pid). A
//! process that leaves cleanly marks its record EXITED, so its peers can still read what it
//! published without calling it dead.

use super::arena::{process_start_ticks, Arena};
use super::blocks::WorkerRecord;
use crate::error::{Error, Result};
use crate::sync::{now_nanos, Ordering};

/// Record unused.
pub const WORKER_FREE: u32 = 0;
/// Process registered and (as far as it knows) running.
pub const WORKER_ALIVE: u32 = 1;
/// Process left cleanly.
pub const WORKER_EXITED: u32 = 2;
/// Process declared dead by a peer.
pub const WORKER_DEAD: u32 = 3;

/// What a peer looks like from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running (or unknown: no record).
    Alive,
    /// Left cleanly.
    Exited,
    /// Gone without leaving cleanly.
    Dead {
        /// Its pid.
        pid: u32,
    },
}

/// [`liveness`] asked once per worker slot during one pass over many channels: a gate
/// over thousands of channels has a handful of producer processes, and each look at a
/// process reads its `/proc` files.
#[derive(Debug, Default)]
pub struct LivenessMemo {
    seen: Vec<(u32, Liveness)>,
}

impl LivenessMemo {
    /// An empty memo (one per pass).
    pub fn new() -> Self {
        Self::default()
    }

    /// [`liveness`] of `slot`, looked up only the first time in this memo.
    pub fn liveness(&mut self, arena: &Arena, slot: u32) -> Liveness {
        if let Some(&(_, l)) = self.seen.iter().find(|(s, _)| *s == slot) {
            return l;
        }
        let l = liveness(arena, slot);
        self.seen.push((slot, l));
        l
    }
}

fn record(arena: &Arena, slot: u32) -> Result<&WorkerRecord> {
    arena.workers().get(slot as usize).ok_or_else(|| Error::ProtocolViolation {
        place: "worker table".into(),
        detail: format!("worker slot {slot} outside 0..{}", arena.config().max_workers),
    })
}

/// Registers this process in worker slot `slot` (overwriting what was there).
///
/// # Errors
/// [`Error::ProtocolViolation`] for a slot out of range.
pub fn register(arena: &Arena, slot: u32) -> Result<()> {
    let r = record(arena, slot)?;
    let pid = std::process::id();
    // Relaxed (all but the state): published by the Release store of the state.
    r.pid.store(pid, Ordering::Relaxed);
    r.start_ticks.store(process_start_ticks(pid).unwrap_or(0), Ordering::Relaxed);
    r.heartbeat.store(now_nanos(), Ordering::Relaxed);
    // Release: pairs with the Acquire load in `liveness`.
    r.state.store(WORKER_ALIVE, Ordering::Release);
    Ok(())
}

/// Claims a free worker slot for this process (library users without a coordinator).
///
/// # Errors
/// [`Error::OutOfSlots`] when every record is taken.
pub fn claim(arena: &Arena) -> Result<u32> {
    for (i, r) in arena.workers().iter().enumerate() {
        // Acquire on success: after the previous holder's last writes.
        if r.state.compare_exchange(WORKER_FREE, WORKER_ALIVE, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            register(arena, i as u32)?;
            return Ok(i as u32);
        }
    }
    Err(Error::OutOfSlots("worker record"))
}

/// Marks slot `slot` as left cleanly.
pub fn mark_exited(arena: &Arena, slot: u32) {
    if let Ok(r) = record(arena, slot) {
        // Relaxed: only our own pid may mark our record; a status flag.
        if r.pid.load(Ordering::Relaxed) == std::process::id() {
            // Release: pairs with the Acquire load in `liveness`.
            r.state.store(WORKER_EXITED, Ordering::Release);
        }
    }
}

/// Whether the process in slot `slot` is alive, left, or died. A slot nobody registered
/// counts as alive (we cannot tell).
pub fn liveness(arena: &Arena, slot: u32) -> Liveness {
    let Ok(r) = record(arena, slot) else {
        return Liveness::Alive;
    };
    // Acquire: pairs with the Release stores in `register` / `mark_exited`.
    match r.state.load(Ordering::Acquire) {
        WORKER_EXITED => return Liveness::Exited,
        WORKER_DEAD => {
            // Relaxed: written before the state.
            return Liveness::Dead { pid: r.pid.load(Ordering::Relaxed) };
        }
        WORKER_ALIVE => {}
        _ => return Liveness::Alive,
    }
    // Relaxed (both): ordered by the Acquire above.
    let pid = r.pid.load(Ordering::Relaxed);
    let ticks = r.start_ticks.load(Ordering::Relaxed);
    if pid == 0 || pid == std::process::id() {
        return Liveness::Alive;
    }
    match process_start_ticks(pid) {
        Some(t) if ticks == 0 || t == ticks => {
            // A zombie (exited, not reaped yet) still has a stat file: check its state.
            if process_is_zombie(pid) {
                Liveness::Dead { pid }
            } else {
                Liveness::Alive
            }
        }
        _ => Liveness::Dead { pid },
    }
}

fn process_is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z') || s[i + 2..].starts_with('X')))
        .unwrap_or(false)
}

/// Declares slot `slot` dead (once: returns true for the caller that did it).
pub fn declare_dead(arena: &Arena, slot: u32) -> bool {
    match record(arena, slot) {
        // AcqRel: exactly one caller wins; its later cleanup is ordered after the death.
        Ok(r) => r.state.compare_exchange(WORKER_ALIVE, WORKER_DEAD, Ordering::AcqRel, Ordering::Relaxed).is_ok(),
        Err(_) => false,
    }
}

/// Checks peers at most every `interval_ns`; cheap to call from a wait loop.
#[derive(Debug, Clone)]
pub struct LivenessProbe {
    interval_ns: u64,
    next_ns: u64,
}

impl LivenessProbe {
    /// A probe that looks at most every `interval` (default 100 ms).
    pub fn new(interval: std::time::Duration) -> Self {
        Self { interval_ns: interval.as_nanos() as u64, next_ns: now_nanos() + interval.as_nanos() as u64 }
    }

    /// Whether it is time to look again.
    #[inline]
    pub fn due(&mut self) -> bool {
        let now = now_nanos();
        if now >= self.next_ns {
            self.next_ns = now + self.interval_ns;
            true
        } else {
            false
        }
    }
}

impl Default for LivenessProbe {
    fn default() -> Self {
        Self::new(std::time::Duration::from_millis(100))
    }
}
