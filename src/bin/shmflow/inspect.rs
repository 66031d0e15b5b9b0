//! `shmflow check` and `shmflow top`: attaching read-only to an arena.

use crate::cli::*;
use crate::common::*;
use shmflow::memory::Arena;
use std::path::PathBuf;
use std::time::Duration;

/// The uid owning `path`, for messages.
pub(crate) fn owner_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or_else(|_| "another user".into(), |m| format!("uid {}", m.uid()))
}

/// The arena a tool looks at, and the pid of the job's coordinator when it was picked by
/// pid (so `top` can stop when that job ends).
pub(crate) fn arena_path(sel: ArenaSel) -> AnyResult<(PathBuf, Option<u32>)> {
    Ok(match (sel.pid, sel.name, sel.path) {
        (Some(p), None, None) => {
            let fds = PathBuf::from(format!("/proc/{p}/fd"));
            match std::fs::read_dir(&fds) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(format!(
                        "permission denied: process {p} belongs to {} and this user may not read its descriptors (run as that user)",
                        owner_of(std::path::Path::new(&format!("/proc/{p}")))
                    )
                    .into());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(format!("no process {p} is running").into());
                }
                _ => {}
            }
            let path = Arena::find_memfd_arenas(p)
                .into_iter()
                .next()
                .ok_or_else(|| format!("process {p} holds no shmflow arena (is it a running job's coordinator?)"))?;
            (path, Some(p))
        }
        // The library's rule for arena names: `--name ../x` or `--name /x` named a file
        // outside /dev/shm (that is what --path is for).
        (None, Some(n), None) => (Arena::named_path(&n).map_err(|e| format!("--name: {e}"))?, None),
        (None, None, Some(p)) => (p, None),
        (None, None, None) => {
            // No arena named: the one running job's, if there is exactly one.
            let mut found = Arena::find_all_memfd_arenas();
            match found.len() {
                0 => return Err("no running shmflow job found; name an arena with --pid, --name or --path".into()),
                1 => {
                    let (pid, path) = found.remove(0);
                    (path, Some(pid))
                }
                _ => {
                    let list: Vec<String> = found
                        .iter()
                        .map(|(pid, p)| {
                            let label = std::fs::read_link(p).map(|t| t.display().to_string()).unwrap_or_default();
                            format!("--pid {pid} ({label})")
                        })
                        .collect();
                    return Err(format!("several shmflow jobs are running; pick one: {}", list.join(", ")).into());
                }
            }
        }
        _ => return Err("name at most one of --pid, --name or --path".into()),
    })
}

/// Refuses what cannot be an arena before opening it: opening a FIFO would wait for a
/// writer, a device or directory is no arena. Names permission problems as such.
pub(crate) fn check_arena_file(path: &std::path::Path) -> AnyResult<()> {
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(format!("permission denied: {} (this user may not look it up)", path.display()).into());
        }
        Err(e) => return Err(format!("{}: {e}", path.display()).into()),
    };
    if !m.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_dir() {
            "a directory"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(format!("{} is {what}, not an arena file", path.display()).into());
    }
    Ok(())
}

/// Attaches read-only, as an observer that survives the file being truncated under it
/// (see [`shmflow::sync::guard_read_only_mapping`]).
pub(crate) fn observe_arena(path: &std::path::Path) -> AnyResult<Arena> {
    check_arena_file(path)?;
    let arena = Arena::attach_read_only(path).map_err(|e| permission_said(e, path))?;
    let len = usize::try_from(arena.layout().total_size)?;
    shmflow::sync::guard_read_only_mapping((arena.header_atomics() as *const _) as *const u8, len)?;
    Ok(arena)
}

/// An attach error, with a permission problem said as one (naming the file's owner).
pub(crate) fn permission_said(e: shmflow::ArenaError, path: &std::path::Path) -> Box<dyn std::error::Error> {
    match &e {
        shmflow::ArenaError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "permission denied: {} belongs to {} and this user may not open it (run as that user)",
            path.display(),
            owner_of(path)
        )
        .into(),
        _ => e.into(),
    }
}

/// Why the arena an observer maps is gone, if it is: truncated under it (a read hit a page
/// past the end, or the file is now shorter than the mapping).
pub(crate) fn arena_truncated(arena: &Arena, path: &std::path::Path) -> Option<String> {
    let len = arena.fd().and_then(|fd| fd.try_clone_to_owned().ok()).map(std::fs::File::from);
    let size = len.and_then(|f| f.metadata().ok()).map(|m| m.len());
    let want = arena.layout().total_size;
    if shmflow::sync::mapping_truncated() || size.is_some_and(|n| n < want) {
        return Some(format!(
            "{} was truncated under us (it now has {} bytes, the arena {want}); what it showed since is void",
            path.display(),
            size.map_or_else(|| "?".into(), |n| n.to_string())
        ));
    }
    None
}

pub(crate) fn check(sel: ArenaSel, idle: bool, recover: bool, json: bool) -> AnyResult<()> {
    let (path, _) = arena_path(sel)?;
    check_arena_file(&path)?;
    if recover {
        let arena = Arena::attach_path(&path).map_err(|e| permission_said(e, &path))?;
        let r = shmflow::memory::recovery::reclaim_quiescent(&arena)?;
        if !json {
            out!(
                "recovered {} segments and {} channel blocks ({} dead processes)",
                r.segments,
                r.channel_blocks,
                r.dead_workers
            );
        }
    }
    let arena = observe_arena(&path)?;
    let r = shmflow::memory::check::check(&arena);
    if let Some(why) = arena_truncated(&arena, &path) {
        return Err(why.into());
    }
    if json {
        out!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        out!(
            "{}: {} segments, {} free (counter {}), owners: {} free, {} in pools, {} being written, {} in flight; \
             {} held by dead processes",
            path.display(),
            r.segments,
            r.free_walked,
            r.free_counter,
            r.owner_free,
            r.owner_pool,
            r.owner_writer,
            r.owner_in_flight,
            r.owner_dead
        );
        for p in &r.problems {
            out!("  problem: {p}");
        }
    }
    if !r.problems.is_empty() {
        return Err(format!("{} problems in the arena", r.problems.len()).into());
    }
    if idle && !r.all_free() {
        return Err(format!("{} of {} segments are not free", r.segments - r.free_walked, r.segments).into());
    }
    Ok(())
}

pub(crate) fn top(sel: ArenaSel, once: bool, json: bool, interval_ms: u64) -> AnyResult<()> {
    let (path, job) = arena_path(sel)?;
    if !(10..=60_000).contains(&interval_ms) {
        return Err(format!("--interval-ms {interval_ms} is out of range (10..=60000)").into());
    }
    let arena = observe_arena(&path)?;
    let interval = Duration::from_millis(interval_ms);
    loop {
        let view = shmflow::metrics::observe(&arena, interval);
        if let Some(why) = arena_truncated(&arena, &path) {
            return Err(why.into());
        }
        // The job ended (its coordinator holds the arena no more): so does top.
        if let Some(pid) = job.filter(|&p| Arena::find_memfd_arenas(p).is_empty()) {
            out!("the job of process {pid} ended");
            return Ok(());
        }
        if json {
            out!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            if !once {
                print!("\x1b[2J\x1b[H");
            }
            out!("shmflow top  {}  segments free {}/{}", path.display(), view.free_segments, view.segments);
            out!(
                "{:>6} {:>8} {:>7} {:>7} {:>7} {:>5} {:>12} {:>12}",
                "task",
                "state",
                "busy",
                "idle",
                "backpr",
                "bp",
                "rec in/s",
                "rec out/s"
            );
            for t in &view.tasks {
                out!(
                    "{:>3}/{:<2} {:>8} {:>7.0} {:>7.0} {:>7.0} {:>5} {:>12.0} {:>12.0}",
                    t.vertex,
                    t.subtask,
                    t.state,
                    t.busy_ms_per_s,
                    t.idle_ms_per_s,
                    t.back_pressured_ms_per_s,
                    t.back_pressure,
                    t.records_in_per_s,
                    t.records_out_per_s
                );
            }
            for p in &view.partitions {
                out!("partition {} (slot {}): outPoolUsage {:.0}%", p.id, p.slot, p.out_pool_usage * 100.0);
                for c in view.channels.iter().filter(|c| c.partition == p.slot) {
                    out!(
                        "    subpartition {:>3}: backlog {:>3} ({:>8} B in flight), credit granted {:>6}{}",
                        c.subpartition,
                        c.backlog,
                        c.in_flight_bytes,
                        c.credit_granted,
                        if c.credit_wanted { ", producer waits for credit" } else { "" }
                    );
                }
            }
        }
        // A closed or failed stdout ends top (main reports it).
        if once || crate::common::stdout_failed() {
            return Ok(());
        }
    }
}
