//! `shmflow clean`: what dead coordinators and creators left (an arena only when no running
//! process is attached to it any more).

use crate::common::*;
use crate::jobdir::*;
use std::path::PathBuf;

/// Prefix of the blocking partition directories a coordinator makes directly under the temp
/// dir when it runs without a job directory (`shmflow-blocking-<pid>-<nanos>`, or
/// `shmflow-blocking-<pid>` from `FileChannelManager::default_dir`).
pub(crate) const BLOCKING_DIR_PREFIX: &str = "shmflow-blocking-";

/// The pid in a job directory's name, `<prefix><pid>` or `<prefix><pid>-<rest>` with a
/// canonical decimal pid; `None` for any other name (such a directory is left alone).
pub(crate) fn job_dir_pid(name: &str) -> Option<u32> {
    let rest = [JOB_DIR_PREFIX, BLOCKING_DIR_PREFIX].iter().find_map(|p| name.strip_prefix(p))?;
    let digits = rest.split_once('-').map_or(rest, |(d, _)| d);
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pid: u32 = digits.parse().ok()?;
    (pid <= i32::MAX as u32).then_some(pid)
}

/// The job directories under `tmp` owned by this user: (path, pid), sorted. Symlinks and
/// other users' directories are never touched.
pub(crate) fn job_dirs(tmp: &std::path::Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(tmp) else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(job_dir_pid) else {
            continue;
        };
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() && meta.uid() == me {
            out.push((path, pid));
        }
    }
    out.sort();
    out
}

/// The temp output `<output>.tmp-<pid>` a job directory of coordinator `pid` names, if it
/// is still there: a regular file of this user whose name carries that same pid. The note
/// holds an absolute path; a relative one (of an older shmflow, relative to that run's cwd,
/// not ours) is ignored rather than resolved against the cwd of `shmflow clean`.
pub(crate) fn noted_temp_output(dir: &std::path::Path, pid: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let note = std::fs::read(dir.join(JobDir::OUTPUT_NOTE)).ok()?;
    let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&note));
    if !tmp.is_absolute() {
        return None;
    }
    let file = tmp.file_name()?.to_str()?;
    let (name, _) = file.rsplit_once(".tmp-")?;
    (temp_pid(file, name) == Some(pid) && own_regular_file(&tmp)).then_some(tmp)
}

pub(crate) fn clean(dry_run: bool) -> AnyResult<()> {
    let mut removed = 0;
    for a in shmflow::memory::check::list_named(std::path::Path::new("/dev/shm")) {
        if a.creator_alive {
            out!("keep   {} (creator pid {} is running)", a.path.display(), a.creator_pid);
            continue;
        }
        if !a.attached.is_empty() {
            // The creator is gone but others still share the arena (a Flink TaskManager that
            // created it was killed and the survivors reclaimed it online).
            let pids: Vec<String> = a.attached.iter().map(u32::to_string).collect();
            out!(
                "keep   {} (creator pid {} is gone; attached pids {} are running)",
                a.path.display(),
                a.creator_pid,
                pids.join(", ")
            );
            continue;
        }
        if dry_run {
            out!("stale  {} (creator pid {} and every attached process are gone)", a.path.display(), a.creator_pid);
        } else {
            std::fs::remove_file(&a.path).map_err(|e| format!("removing {}: {e}", a.path.display()))?;
            out!("removed {} (creator pid {} and every attached process are gone)", a.path.display(), a.creator_pid);
            removed += 1;
        }
    }
    if !dry_run {
        out!("{removed} stale arenas removed");
    }
    // Job directories a killed coordinator left behind (part and blocking partition files).
    // A live pid keeps its directory even if it now belongs to another program.
    let (mut removed, mut failed) = (0, Vec::new());
    for (path, pid) in job_dirs(&std::env::temp_dir()) {
        if pid_alive(pid) {
            out!("keep   {} (pid {pid} is running)", path.display());
        } else if dry_run {
            out!("stale  {} (pid {pid} is gone)", path.display());
            if let Some(t) = noted_temp_output(&path, pid) {
                out!("stale  {} (pid {pid} is gone)", t.display());
            }
        } else {
            if let Some(t) = noted_temp_output(&path, pid) {
                match std::fs::remove_file(&t) {
                    Ok(()) => out!("removed {} (pid {pid} is gone)", t.display()),
                    Err(e) => failed.push(format!("removing {}: {e}", t.display())),
                }
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    out!("removed {} (pid {pid} is gone)", path.display());
                    removed += 1;
                }
                Err(e) => failed.push(format!("removing {}: {e}", path.display())),
            }
        }
    }
    if !dry_run {
        out!("{removed} stale job directories removed");
    }
    if !failed.is_empty() {
        return Err(failed.join("; ").into());
    }
    Ok(())
}
