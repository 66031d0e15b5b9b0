//! Consistency check of an arena (`shmflow check`) and cleanup of stale named arenas
//! (`shmflow clean`). Both only read the arena; `clean` removes files no running process uses.

use super::arena::{validate_header_bytes, Arena};
use super::blocks::Owner;
use crate::sync::Ordering;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ArenaReport {
    /// Segments in the arena.
    pub segments: u32,
    /// The free stack's length counter.
    pub free_counter: u32,
    /// Segments found by walking the free stack.
    pub free_walked: u32,
    /// Segments whose control block says Free.
    pub owner_free: u32,
    /// Segments held by local pools.
    pub owner_pool: u32,
    /// Segments being written.
    pub owner_writer: u32,
    /// Segments in flight on channels.
    pub owner_in_flight: u32,
    /// Segments with an owner word no layout writes.
    pub owner_invalid: u32,
    /// Segments off the free stack whose holder process is gone (not reclaimed yet:
    /// `partition::reclaim_dead_peers` returns them). Every other segment off the stack is
    /// held by a live process. A holder pid that a worker record names is compared with
    /// that record's start time too (a recycled pid is not its holder).
    pub owner_dead: u32,
    /// Problems found (empty: consistent).
    pub problems: Vec<String>,
}

impl ArenaReport {
    /// Whether nothing is wrong and every segment is free (a finished job leaked nothing).
    pub fn all_free(&self) -> bool {
        self.problems.is_empty() && self.free_walked == self.segments
    }
}

/// Checks `arena` without writing to it: walks the free stack (bounded, detecting cycles
/// and out-of-range links) and counts segment owners.
pub fn check(arena: &Arena) -> ArenaReport {
    let n = arena.segment_count();
    let mut r =
        ArenaReport { segments: n, free_counter: arena.header_atomics().free_stack.len(), ..Default::default() };
    let controls = arena.controls();
    let mut on_stack = vec![false; n as usize];
    // Relaxed: an observer's walk; a concurrent pop/push makes it approximate, which the
    // caller accepts by checking an idle arena.
    let head = arena.header_atomics().free_stack_head();
    let mut cur = super::stack::head_top(head);
    while cur != 0 {
        let idx = cur - 1;
        if idx >= n {
            r.problems.push(format!("free-stack link {cur} is outside 1..={n}"));
            break;
        }
        if on_stack[idx as usize] {
            r.problems.push(format!("free stack has a cycle at segment {idx}"));
            break;
        }
        on_stack[idx as usize] = true;
        r.free_walked += 1;
        // Relaxed: as above.
        cur = controls[idx as usize].next_free.load(Ordering::Relaxed);
    }
    let mut alive: Vec<(u32, bool)> = Vec::new();
    for (i, c) in controls.iter().enumerate() {
        // Relaxed: as above.
        let holder = c.holder_pid.load(Ordering::Relaxed);
        if holder != 0 && !on_stack[i] {
            let running = match alive.iter().find(|(p, _)| *p == holder) {
                Some(&(_, r)) => r,
                None => {
                    let r = super::liveness::holder_running(arena, holder);
                    alive.push((holder, r));
                    r
                }
            };
            if !running {
                r.owner_dead += 1;
            }
        }
        // Relaxed: as above.
        let owner = Owner::unpack(c.owner.load(Ordering::Relaxed));
        match owner {
            Owner::Free => r.owner_free += 1,
            Owner::Pool { .. } => r.owner_pool += 1,
            Owner::Writer { .. } => r.owner_writer += 1,
            Owner::InFlight { .. } => r.owner_in_flight += 1,
            Owner::Invalid(v) => {
                r.owner_invalid += 1;
                r.problems.push(format!("segment {i} has an invalid owner word {v:#x}"));
            }
        }
        if on_stack[i] && owner != Owner::Free {
            r.problems.push(format!("segment {i} is on the free stack but owned by {owner:?}"));
        }
    }
    for (slot, w) in arena.workers().iter().enumerate() {
        // Relaxed (both): an observer's look, as above.
        let (st, generation) = (w.state.load(Ordering::Relaxed), w.generation.load(Ordering::Relaxed));
        if st != super::liveness::WORKER_FREE && st & super::liveness::WORKER_RECLAIMING == 0 && generation == 0 {
            r.problems.push(format!("worker slot {slot} is registered (state {st}) with generation 0"));
        }
    }
    if r.free_walked != r.free_counter {
        r.problems
            .push(format!("the free stack holds {} segments but its counter says {}", r.free_walked, r.free_counter));
    }
    r
}

/// A named arena under `/dev/shm`, whether its creator still runs and which running
/// processes are attached to it.
#[derive(Debug, Clone, Serialize)]
pub struct NamedArena {
    /// The file.
    pub path: PathBuf,
    /// The creator's pid.
    pub creator_pid: u32,
    /// Whether the creator is alive (the same process that created it).
    pub creator_alive: bool,
    /// The running processes registered in its worker records
    /// ([`attached_pids`](super::liveness::attached_pids)); empty when it could not be
    /// mapped.
    pub attached: Vec<u32>,
}

impl NamedArena {
    /// Whether a running process may still use it: its creator, or any attached process.
    /// Only an arena nobody uses is stale.
    pub fn in_use(&self) -> bool {
        self.creator_alive || !self.attached.is_empty()
    }
}

/// Lists the shmflow arenas in `dir` (normally `/dev/shm`) that belong to this user.
pub fn list_named(dir: &Path) -> Vec<NamedArena> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if !meta.is_file() || meta.uid() != me {
            continue;
        }
        let mut head = vec![0u8; std::mem::size_of::<super::header::StaticHeader>()];
        let Ok(mut f) = std::fs::File::open(&path) else { continue };
        if f.read_exact(&mut head).is_err() || validate_header_bytes(&head, meta.len()).is_err() {
            continue;
        }
        // SAFETY: `head` holds a whole StaticHeader (validated above); any bit pattern is a
        // valid value of it.
        let h: super::header::StaticHeader = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
        let alive = super::liveness::process_alive(h.creator_pid, h.creator_start_ticks);
        // An arena that cannot be mapped read-only (not ready, truncated) has no readable
        // worker records: its creator alone decides.
        let attached = Arena::attach_read_only(&path).map(|a| super::liveness::attached_pids(&a)).unwrap_or_default();
        out.push(NamedArena { path, creator_pid: h.creator_pid, creator_alive: alive, attached });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}
