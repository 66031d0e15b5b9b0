//! Liveness of the processes attached to an arena (DESIGN.md §5).
//!
//! Every process that takes part writes its pid and start time into a `WorkerRecord`. Any
//! surviving peer can then tell a dead process from a slow one without asking anybody: the
//! pid is gone, or belongs to a process that started at another time (a recycled pid). A
//! process that leaves cleanly marks its record EXITED, so its peers can still read what it
//! published without calling it dead.
//!
//! ```text
//!  FREE --register/claim--> ALIVE --mark_exited--> EXITED
//!                             |  declare_dead (a peer saw it die)
//!                             v
//!                           DEAD
//!  ALIVE | DEAD | EXITED, process gone --begin_reclaim (CAS, one winner)--> RECLAIMING|pid
//!  RECLAIMING|pid of a dead reclaimer --begin_reclaim (CAS)--> RECLAIMING|my pid
//!  RECLAIMING|pid --finish_reclaim--> FREE   (the slot may be registered again)
//! ```
//!
//! A slot is taken only from FREE, from EXITED, or from a record of this very process:
//! [`register`] refuses a slot whose holder still runs, and one whose dead holder was not
//! reclaimed yet (its segments and channels would be charged to the newcomer).
//! `partition::reclaim` runs the reclamation that makes such a slot FREE.
//!
//! A process is its pid *and* its start time: "this very process" and "still runs" both
//! compare the two, so a process that got the pid of a dead holder (pids are recycled) is
//! neither that holder nor keeps it alive. Every take of a slot and every free bumps the
//! record's `generation`: a peer that keeps a slot number (a TaskManager's peer, a channel
//! block's route) keeps the generation with it and sees another holder as a change.

use super::arena::{proc_stat, process_start_ticks, Arena, ProcStat};
use super::blocks::WorkerRecord;
use crate::error::{Error, Result};
use crate::sync::{now_nanos, Ordering};

/// [`Error::SlotHeld`]'s holder while another live process reclaims (or registers in)
/// the slot: a transient state worth waiting for.
pub const BEING_RECLAIMED: &str = "a dead process being reclaimed";

/// Record unused.
pub const WORKER_FREE: u32 = 0;
/// Process registered and (as far as it knows) running.
pub const WORKER_ALIVE: u32 = 1;
/// Process left cleanly.
pub const WORKER_EXITED: u32 = 2;
/// Process declared dead by a peer.
pub const WORKER_DEAD: u32 = 3;
/// Flag of the state word while a live process owns the reclamation of the dead process
/// that held the record: the state is `WORKER_RECLAIMING | reclaimer pid` (pids are below
/// 2^22), so taking the reclamation and naming the reclaimer is one CAS. The dead
/// process's pid stays in `pid`.
pub const WORKER_RECLAIMING: u32 = 1 << 31;

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
/// process reads its `/proc` files. The first [`LivenessMemo::INLINE`] slots are kept
/// without allocating (a waiting gate makes one memo per liveness interval, and a job's
/// steady state allocates nothing); more spill into a vector.
#[derive(Debug)]
pub struct LivenessMemo {
    inline: [(u32, Liveness); LivenessMemo::INLINE],
    len: usize,
    more: Vec<(u32, Liveness)>,
}

impl Default for LivenessMemo {
    fn default() -> Self {
        Self { inline: [(0, Liveness::Alive); Self::INLINE], len: 0, more: Vec::new() }
    }
}

impl LivenessMemo {
    /// Worker slots remembered without allocating.
    pub const INLINE: usize = 16;

    /// An empty memo (one per pass).
    pub fn new() -> Self {
        Self::default()
    }

    /// [`liveness`] of `slot`, looked up only the first time in this memo.
    pub fn liveness(&mut self, arena: &Arena, slot: u32) -> Liveness {
        let seen = self.inline[..self.len].iter().chain(&self.more).find(|(s, _)| *s == slot);
        if let Some(&(_, l)) = seen {
            return l;
        }
        let l = liveness(arena, slot);
        if self.len < Self::INLINE {
            self.inline[self.len] = (slot, l);
            self.len += 1;
        } else {
            self.more.push((slot, l));
        }
        l
    }
}

fn record(arena: &Arena, slot: u32) -> Result<&WorkerRecord> {
    arena.workers().get(slot as usize).ok_or_else(|| Error::ProtocolViolation {
        place: "worker table".into(),
        detail: format!("worker slot {slot} outside 0..{}", arena.config().max_workers),
    })
}

/// Registers this process in worker slot `slot`.
///
/// The slot is taken when it is free, was left cleanly (EXITED), or already holds this
/// process; a slot whose holder still runs is refused, and so is one whose holder died and
/// was not reclaimed yet (`partition::reclaim::reclaim_dead_peers` makes it free, and
/// `partition::reclaim::register_worker` does both in one call).
///
/// # Errors
/// [`Error::SlotHeld`] naming the holder's pid; [`Error::ProtocolViolation`] for a slot out
/// of range.
pub fn register(arena: &Arena, slot: u32) -> Result<()> {
    let r = record(arena, slot)?;
    let (me, my_ticks) = own_identity();
    // Bounded: each failed CAS means another process changed the record; a few rounds.
    for _ in 0..64 {
        // Acquire: pairs with the Release stores of the state (register, mark_exited,
        // finish_reclaim): we take over after the previous holder's last writes.
        let st = r.state.load(Ordering::Acquire);
        // Relaxed: ordered by the Acquire above.
        let pid = r.pid.load(Ordering::Relaxed);
        let takeable = match st {
            WORKER_FREE => true,
            // Pids are below 2^22: a state with the flag is a reclamation (or a register).
            _ if st & WORKER_RECLAIMING != 0 => return Err(Error::SlotHeld { slot, pid, holder: BEING_RECLAIMED }),
            // Our own record (pid and start time): a pid alone could be a dead process's
            // that this process was given again, whose leftovers are not ours.
            _ if is_own(pid, r, me, my_ticks) => true,
            // Left cleanly and still running (a JVM whose TaskManager closed its arena
            // context): reused, or the slot would stay out of use for that process's life.
            // The old holder no longer writes the slot's free-stack lane (`own_lane` wants
            // ALIVE), so the newcomer's lane is its own.
            WORKER_EXITED if process_running(pid, r) => true,
            WORKER_ALIVE if process_running(pid, r) => {
                return Err(Error::SlotHeld { slot, pid, holder: "a live process" });
            }
            _ => return Err(Error::SlotHeld { slot, pid, holder: "a dead process not reclaimed yet" }),
        };
        if !takeable {
            continue;
        }
        // Acquire on success: after the previous holder's (or reclaimer's) last writes.
        // Relaxed on failure: we look again.
        if r.state.compare_exchange(st, WORKER_RECLAIMING | me, Ordering::Acquire, Ordering::Relaxed).is_err() {
            continue;
        }
        // The record is ours: RECLAIMING with our pid keeps everyone else off it while we
        // fill it in, and lets a reclaimer take it over if we die right here.
        // Relaxed (all): published by the Release store of ALIVE below.
        r.pid.store(me, Ordering::Relaxed);
        r.start_ticks.store(my_ticks, Ordering::Relaxed);
        r.heartbeat.store(now_nanos(), Ordering::Relaxed);
        bump_generation(r);
        // Release: pairs with the Acquire loads in `liveness` and `begin_reclaim`.
        r.state.store(WORKER_ALIVE, Ordering::Release);
        return Ok(());
    }
    Err(Error::SlotHeld { slot, pid: r.pid.load(Ordering::Relaxed), holder: "a process that keeps changing it" })
}

/// This process's pid and start time (clock ticks since boot; 0 when `/proc` cannot tell).
/// Read from `/proc` once per process and kept: a gate's liveness tick meets our own slot
/// whenever producer and consumer share a process, and a job's steady state allocates
/// nothing. A forked child (another pid than the one kept) reads it afresh each time.
pub fn own_identity() -> (u32, u64) {
    static OWN: std::sync::OnceLock<(u32, u64)> = std::sync::OnceLock::new();
    let me = std::process::id();
    match *OWN.get_or_init(|| (me, process_start_ticks(me).unwrap_or(0))) {
        (pid, ticks) if pid == me => (me, ticks),
        _ => (me, process_start_ticks(me).unwrap_or(0)),
    }
}

/// Whether record `r`, naming `pid`, is this process's (`me` started at `my_ticks`): the
/// same pid and the same start time. A start time unknown on either side (0) matches.
fn is_own(pid: u32, r: &WorkerRecord, me: u32, my_ticks: u64) -> bool {
    // Relaxed: read after the caller's Acquire load of the state.
    let ticks = r.start_ticks.load(Ordering::Relaxed);
    pid == me && (ticks == 0 || my_ticks == 0 || ticks == my_ticks)
}

/// The bits of a generation: 31, so that a C ABI peer handle (generation in the high 32
/// bits of an `i64`) is never negative. Generations are kept and compared within them.
pub const GENERATION_MASK: u32 = 0x7fff_ffff;

/// Whether generations `a` and `b` are the same (compared within [`GENERATION_MASK`]: a
/// record written by a build that let the generation reach 2^31 matches its handle).
pub fn same_generation(a: u32, b: u32) -> bool {
    a & GENERATION_MASK == b & GENERATION_MASK
}

/// The generation after `g`: within [`GENERATION_MASK`], skipping 0 (which no registered
/// slot has, and which a peer handle uses for "a bare slot").
pub fn next_generation(g: u32) -> u32 {
    match g.wrapping_add(1) & GENERATION_MASK {
        0 => 1,
        n => n,
    }
}

/// Bumps `r`'s generation ([`next_generation`]).
fn bump_generation(r: &WorkerRecord) {
    // Relaxed: only the holder of the record's RECLAIMING state (a registering or
    // reclaiming process) writes it, after its Acquire CAS of that state.
    let g = next_generation(r.generation.load(Ordering::Relaxed));
    // Release: pairs with the Acquire load in `generation`: a reader that sees `g` sees
    // what was written before it (`register`'s pid and start time, the reclamation before
    // `finish_reclaim`). The Release store of the next state also publishes it.
    r.generation.store(g, Ordering::Release);
}

/// The generation of worker slot `slot` ([`WorkerRecord::generation`]); 0 for a slot
/// out of range.
pub fn generation(arena: &Arena, slot: u32) -> u32 {
    // Acquire: pairs with the Release store in `bump_generation`: the pid and start time
    // read after this are the ones written with this generation or a later one. A caller
    // that then reads the state (Acquire) and this again, seeing the same generation,
    // read a state of this generation (a later holder's state is Release-stored after its
    // bump). `ArenaCtx::peer_state` does so.
    record(arena, slot).map(|r| r.generation.load(Ordering::Acquire) & GENERATION_MASK).unwrap_or(0)
}

/// Whether the process `pid` recorded in `r` still runs (same start time, not a zombie).
fn process_running(pid: u32, r: &WorkerRecord) -> bool {
    if pid == 0 {
        return false;
    }
    // Relaxed: read after the caller's Acquire load of the state.
    let ticks = r.start_ticks.load(Ordering::Relaxed);
    if pid == std::process::id() {
        // Us, unless the record is of a process that had our pid before us.
        let (me, my_ticks) = own_identity();
        return is_own(pid, r, me, my_ticks);
    }
    process_alive(pid, ticks)
}

/// Whether process `pid`, recorded with start time `recorded_ticks` (0: unknown), still
/// runs: its `/proc/PID/stat` names a running process of that start time. When `/proc`
/// cannot tell (not mounted, hidden, unreadable), `kill(pid, 0)` decides, erring on the
/// safe side (see [`decide_running`]).
pub fn process_alive(pid: u32, recorded_ticks: u64) -> bool {
    if pid == 0 {
        return false;
    }
    let (_, my_ticks) = own_identity();
    decide_running(proc_stat(pid), recorded_ticks, my_ticks != 0, || signal_reaches(pid))
}

/// The decision of [`process_alive`] from what was read: `stat` (the process's
/// `/proc/PID/stat`), `proc_trusted` (whether this process could read its own
/// `/proc/self/stat`: if not, `/proc` says nothing, and a missing file is no evidence) and
/// `exists` (`kill(pid, 0)`, asked only when `/proc` cannot tell). Only a readable `/proc`
/// declares a process dead: its file absent, ended (zombie), or of another start time (a
/// recycled pid). Otherwise a process that a signal reaches is alive: a live peer taken
/// for dead is reclaimed under its feet, a dead one taken for alive only waits.
pub fn decide_running(stat: ProcStat, recorded_ticks: u64, proc_trusted: bool, exists: impl FnOnce() -> bool) -> bool {
    match stat {
        _ if !proc_trusted => exists(),
        ProcStat::Found { start_ticks, ended } => !ended && (recorded_ticks == 0 || start_ticks == recorded_ticks),
        ProcStat::Absent => false,
        ProcStat::Unknown => exists(),
    }
}

/// Whether a process `pid` exists as `kill(pid, 0)` tells: no only for `ESRCH` (success
/// or `EPERM`: it exists).
fn signal_reaches(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it checks that `p` (a positive pid, so one process,
    // never a group) exists and may be signalled.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Whether process `pid` runs (exists and is not a zombie). Without a start time to
/// compare, a recycled pid counts as running: callers that have the start time use the
/// worker record's (`liveness`); this one is for pids recorded alone (a segment's holder,
/// a reclaimer named in a state word), where "running" errs on the safe side (nothing is
/// taken from a process that might be alive).
pub fn pid_running(pid: u32) -> bool {
    pid != 0 && (pid == std::process::id() || process_alive(pid, 0))
}

/// Whether process `pid`, recorded alone as the holder of something in `arena` (a
/// segment's `holder_pid`), still runs: compared with the start time of the worker
/// records that name it when there are any (a process that got the pid of a dead holder is
/// not that holder), else as [`pid_running`]. Several records naming `pid` with other
/// start times (a dead holder and the process that has its pid now): running if one runs.
pub fn holder_running(arena: &Arena, pid: u32) -> bool {
    let mut named = false;
    for r in arena.workers() {
        // Acquire: pairs with the Release stores of the state (`register`, ...): the pid and
        // start time read below are the ones that state was written with.
        let st = r.state.load(Ordering::Acquire);
        // Relaxed: ordered by the Acquire above.
        if st == WORKER_FREE || r.pid.load(Ordering::Relaxed) != pid {
            continue;
        }
        // Relaxed: as above.
        if r.start_ticks.load(Ordering::Relaxed) == 0 {
            return pid_running(pid);
        }
        named = true;
        if process_running(pid, r) {
            return true;
        }
    }
    !named && pid_running(pid)
}

/// A dead process's record, owned by the caller for reclamation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadProcess {
    /// Its worker slot.
    pub slot: u32,
    /// Its pid.
    pub pid: u32,
    /// Whether it had left cleanly (EXITED) before it ended.
    pub exited: bool,
}

/// Takes ownership of reclaiming slot `slot` when its process is gone: the one CAS that
/// makes exactly one live process its reclaimer (ALIVE, DEAD or EXITED to RECLAIMING). A
/// record left RECLAIMING by a reclaimer that died itself is taken over. `None` when the
/// holder runs, the slot is free, or another live process reclaims it.
pub fn begin_reclaim(arena: &Arena, slot: u32) -> Option<DeadProcess> {
    let r = record(arena, slot).ok()?;
    let me = std::process::id();
    // Acquire: pairs with the Release stores of the state; the holder's records are read
    // after this.
    let st = r.state.load(Ordering::Acquire);
    // Relaxed: ordered by the Acquire above.
    let pid = r.pid.load(Ordering::Relaxed);
    match st {
        WORKER_ALIVE | WORKER_DEAD | WORKER_EXITED => {
            // `process_running` compares the start time too: a record of a process that
            // had our pid before us is not ours, and is dead (`pid_running` below keeps it
            // until we are gone, as for any recycled pid).
            if process_running(pid, r) {
                return None;
            }
            if pid_running(pid) {
                // Its pid was recycled by another process that runs now: the records that
                // name the pid could be either's. Reclaimed once that process is gone too.
                return None;
            }
            // AcqRel: exactly one caller wins (pairs with the other reclaimers' CAS and with
            // `register`'s); Acquire orders the reclamation after the holder's registration.
            r.state.compare_exchange(st, WORKER_RECLAIMING | me, Ordering::AcqRel, Ordering::Relaxed).ok()?;
            Some(DeadProcess { slot, pid, exited: st == WORKER_EXITED })
        }
        _ if st & WORKER_RECLAIMING != 0 => {
            let by = st & !WORKER_RECLAIMING;
            if by == me || pid_running(by) {
                return None; // being registered or reclaimed by a live process
            }
            // AcqRel: one taker-over wins (the steps of reclamation are idempotent).
            r.state.compare_exchange(st, WORKER_RECLAIMING | me, Ordering::AcqRel, Ordering::Relaxed).ok()?;
            Some(DeadProcess { slot, pid, exited: false })
        }
        _ => None,
    }
}

/// Ends a reclamation begun with [`begin_reclaim`]: the slot is free again.
pub fn finish_reclaim(arena: &Arena, dead: DeadProcess) {
    if let Ok(r) = record(arena, dead.slot) {
        bump_generation(r);
        // Release: pairs with the Acquire load in `register`/`claim`: the next holder comes
        // after every write of the reclamation.
        r.state.store(WORKER_FREE, Ordering::Release);
    }
}

/// Claims a worker slot for this process (library users without a coordinator): a free
/// one, else one this very process left cleanly (EXITED with our pid: a process that opens
/// and closes arena contexts again and again would use up every slot otherwise). Both go
/// through [`register`]'s CAS; a slot of a dead process is never taken here (the online
/// reclamation frees it, once).
///
/// # Errors
/// [`Error::OutOfSlots`] when every record is taken.
pub fn claim(arena: &Arena) -> Result<u32> {
    let (me, my_ticks) = own_identity();
    for own_exited in [false, true] {
        for (i, r) in arena.workers().iter().enumerate() {
            // Relaxed (both): a first look; `register` takes the slot with its own CAS and
            // looks again.
            let st = r.state.load(Ordering::Relaxed);
            // Ours: the pid and the start time (a process that had our pid before us left
            // it; `register` would refuse it unless that process still ran).
            let candidate = if own_exited {
                st == WORKER_EXITED && is_own(r.pid.load(Ordering::Relaxed), r, me, my_ticks)
            } else {
                st == WORKER_FREE
            };
            if candidate && register(arena, i as u32).is_ok() {
                return Ok(i as u32);
            }
        }
    }
    Err(Error::OutOfSlots("worker record"))
}

/// The pids of the running processes attached to `arena`: an ALIVE (or DEAD) record whose
/// process still runs, and a live process registering in or reclaiming a slot. A record
/// left cleanly (EXITED) or free names nobody. `shmflow clean` keeps an arena any of them
/// uses, whoever created it (a TaskManager that created the ffi arena may be gone while
/// the others still share it). Sorted, without duplicates.
pub fn attached_pids(arena: &Arena) -> Vec<u32> {
    let mut out = Vec::new();
    for r in arena.workers() {
        // Acquire: pairs with the Release stores of the state (`register`, `mark_exited`,
        // `finish_reclaim`): the pid read below is the one that state was written with.
        let st = r.state.load(Ordering::Acquire);
        // Relaxed: ordered by the Acquire above.
        let pid = r.pid.load(Ordering::Relaxed);
        let live = match st {
            WORKER_ALIVE | WORKER_DEAD if process_running(pid, r) => Some(pid),
            _ if st & WORKER_RECLAIMING != 0 && pid_running(st & !WORKER_RECLAIMING) => Some(st & !WORKER_RECLAIMING),
            _ => None,
        };
        if let Some(p) = live.filter(|&p| p != 0) {
            out.push(p);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Marks slot `slot` as left cleanly.
pub fn mark_exited(arena: &Arena, slot: u32) {
    if let Ok(r) = record(arena, slot) {
        let (me, my_ticks) = own_identity();
        // Relaxed: only this process (pid and start time) may mark its record; a status
        // flag.
        if is_own(r.pid.load(Ordering::Relaxed), r, me, my_ticks) {
            // Release: pairs with the Acquire load in `liveness`.
            r.state.store(WORKER_EXITED, Ordering::Release);
        }
    }
}

/// Whether the process in slot `slot` is alive, left, or died. A slot nobody registered
/// counts as alive (we cannot tell); so does a freed slot (a reclaimed process's peers
/// learn of its death from their channels' states instead).
pub fn liveness(arena: &Arena, slot: u32) -> Liveness {
    let Ok(r) = record(arena, slot) else {
        return Liveness::Alive;
    };
    // Acquire: pairs with the Release stores in `register` / `mark_exited`.
    match r.state.load(Ordering::Acquire) {
        WORKER_EXITED => return Liveness::Exited,
        st if st & WORKER_RECLAIMING != 0 && st & !WORKER_RECLAIMING == r.pid.load(Ordering::Relaxed) => {
            // Being registered by the process it names (see `register`).
            return Liveness::Alive;
        }
        st if st == WORKER_DEAD || st & WORKER_RECLAIMING != 0 => {
            // Relaxed: written before the state.
            return Liveness::Dead { pid: r.pid.load(Ordering::Relaxed) };
        }
        WORKER_ALIVE => {}
        _ => return Liveness::Alive,
    }
    // Relaxed (both): ordered by the Acquire above.
    let pid = r.pid.load(Ordering::Relaxed);
    let ticks = r.start_ticks.load(Ordering::Relaxed);
    if pid == 0 {
        return Liveness::Alive;
    }
    if pid == std::process::id() {
        // Us, or a process that had our pid before us (it died: we run with its pid).
        let (me, my_ticks) = own_identity();
        return if is_own(pid, r, me, my_ticks) { Liveness::Alive } else { Liveness::Dead { pid } };
    }
    // A zombie (exited, not reaped yet) still has a stat file: `process_alive` reads its
    // state too.
    if process_alive(pid, ticks) {
        Liveness::Alive
    } else {
        Liveness::Dead { pid }
    }
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
        self.due_at(now_nanos())
    }

    /// [`due`](Self::due) at `now` ([`now_nanos`]), for a caller that just read the clock.
    #[inline]
    pub fn due_at(&mut self, now: u64) -> bool {
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const FOUND: ProcStat = ProcStat::Found { start_ticks: 500, ended: false };

    /// `decide_running` with `kill(pid, 0)` answering `exists`; also whether it was asked.
    fn decide(stat: ProcStat, recorded: u64, trusted: bool, exists: bool) -> (bool, bool) {
        let asked = std::cell::Cell::new(false);
        let r = decide_running(stat, recorded, trusted, || {
            asked.set(true);
            exists
        });
        (r, asked.get())
    }

    #[test]
    fn a_readable_proc_decides_alone() {
        assert_eq!(decide(FOUND, 500, true, false), (true, false));
        assert_eq!(decide(FOUND, 0, true, false), (true, false));
        // A recycled pid (another start time), a zombie, a missing file: dead whatever a
        // signal says.
        assert_eq!(decide(FOUND, 499, true, true), (false, false));
        assert_eq!(decide(ProcStat::Found { start_ticks: 500, ended: true }, 500, true, true), (false, false));
        assert_eq!(decide(ProcStat::Absent, 500, true, true), (false, false));
    }

    #[test]
    fn a_proc_that_cannot_tell_falls_back_to_a_signal() {
        // hidepid, EACCES, a stat file that does not parse: kill(pid, 0) decides.
        assert_eq!(decide(ProcStat::Unknown, 500, true, true), (true, true));
        assert_eq!(decide(ProcStat::Unknown, 500, true, false), (false, true));
        // Our own /proc/self/stat unreadable (/proc not mounted): an absent file or
        // another start time is no evidence; only a signal that finds nobody is.
        assert_eq!(decide(ProcStat::Absent, 500, false, true), (true, true));
        assert_eq!(decide(FOUND, 499, false, true), (true, true));
        assert_eq!(decide(ProcStat::Unknown, 500, false, true), (true, true));
        assert_eq!(decide(ProcStat::Absent, 500, false, false), (false, true));
    }

    #[test]
    fn generations_stay_within_31_bits_and_skip_0() {
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(GENERATION_MASK), 1);
        assert_eq!(next_generation(u32::MAX), 1);
        assert_eq!(next_generation(1 << 31), 1);
        let arena = Arena::heap(&crate::memory::ArenaConfig::default()).unwrap();
        let r = &arena.workers()[0];
        // Relaxed: single-threaded set-up.
        r.generation.store(GENERATION_MASK, Ordering::Relaxed);
        assert_eq!(generation(&arena, 0), GENERATION_MASK);
        register(&arena, 0).unwrap();
        assert_eq!(generation(&arena, 0), 1, "2^31 - 1 bumps to 1, not 0 and not 2^31");
        assert!(same_generation(1 << 31 | 5, 5));
        assert!(!same_generation(6, 5));
    }

    #[test]
    fn a_signal_reaches_this_process_and_not_a_pid_above_the_limit() {
        assert!(signal_reaches(std::process::id()));
        assert!(!signal_reaches(1 << 23));
        assert!(!signal_reaches(0));
        assert!(!signal_reaches(u32::MAX));
        assert!(process_alive(std::process::id(), 0));
        assert!(!process_alive(1 << 23, 0));
    }
}
