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

/// Internal, for tests only: the directory `clean` lists named arenas in instead of
/// `/dev/shm` (a test's private directory, so that its non-dry clean cannot remove the
/// arenas of tests or jobs running at the same time). Not a user setting.
pub(crate) const SHM_DIR_ENV: &str = "SHMFLOW_SHM_DIR";

/// Where `clean` looks for named arenas: [`SHM_DIR_ENV`] when set and not empty, else
/// `/dev/shm`.
fn shm_dir() -> PathBuf {
    std::env::var_os(SHM_DIR_ENV).filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from)
}

/// What [`remove_stale_file`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The file was removed.
    Removed,
    /// The file was already gone (another `clean`, or its owner unlinked it meanwhile).
    AlreadyGone,
}

/// Removes a stale file; one that vanished since it was listed counts as removed.
pub(crate) fn remove_stale_file(path: &std::path::Path) -> std::io::Result<Removal> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(Removal::Removed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Removal::AlreadyGone),
        Err(e) => Err(e),
    }
}

pub(crate) fn clean(dry_run: bool) -> AnyResult<()> {
    // What could not be removed: reported at the end (non-zero exit) after the rest is done.
    let mut failed = Vec::new();
    let mut removed = 0;
    for a in shmflow::memory::check::list_named(&shm_dir()) {
        if a.in_use() {
            if a.creator_alive {
                out!("keep   {} (creator pid {} is running)", a.path.display(), a.creator_pid);
            } else {
                // The creator is gone but others still share the arena (a Flink TaskManager
                // that created it was killed and the survivors reclaimed it online).
                let pids: Vec<String> = a.attached.iter().map(u32::to_string).collect();
                out!(
                    "keep   {} (creator pid {} is gone; attached pids {} are running)",
                    a.path.display(),
                    a.creator_pid,
                    pids.join(", ")
                );
            }
            continue;
        }
        if dry_run {
            out!("stale  {} (creator pid {} and every attached process are gone)", a.path.display(), a.creator_pid);
            continue;
        }
        match remove_stale_file(&a.path) {
            Ok(Removal::Removed) => {
                out!(
                    "removed {} (creator pid {} and every attached process are gone)",
                    a.path.display(),
                    a.creator_pid
                );
                removed += 1;
            }
            Ok(Removal::AlreadyGone) => out!("gone   {} (already gone)", a.path.display()),
            Err(e) => {
                out!("failed {} ({e})", a.path.display());
                failed.push(format!("removing {}: {e}", a.path.display()));
            }
        }
    }
    if !dry_run {
        out!("{removed} stale arenas removed");
    }
    // Job directories a killed coordinator left behind (part and blocking partition files).
    // A live pid keeps its directory even if it now belongs to another program.
    let mut removed = 0;
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
                match remove_stale_file(&t) {
                    Ok(Removal::Removed) => out!("removed {} (pid {pid} is gone)", t.display()),
                    Ok(Removal::AlreadyGone) => out!("gone   {} (already gone)", t.display()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_file_that_is_already_gone_is_not_an_error() {
        let dir = std::env::temp_dir().join(format!("shmflow-unit-remove-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("arena");
        std::fs::write(&path, b"x").unwrap();
        let first = remove_stale_file(&path);
        let second = remove_stale_file(&path);
        // A directory is not a file: a real error, reported rather than hidden.
        let other = remove_stale_file(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(first.unwrap(), Removal::Removed);
        assert_eq!(second.unwrap(), Removal::AlreadyGone);
        assert!(other.is_err(), "{other:?}");
    }
}
