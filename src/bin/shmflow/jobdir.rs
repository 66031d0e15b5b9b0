//! A run's job directory and its temp output, as `shmflow run` makes them and `shmflow
//! clean` finds what dead runs left of them.

use crate::common::*;
use crate::jobs;
use shmflow::runtime::is_worker;
use std::path::PathBuf;

/// Prefix of the CLI's job directories under the temp dir: `shmflow-job-<pid>-<nanos>`.
pub(crate) const JOB_DIR_PREFIX: &str = "shmflow-job-";

/// Whether a process `pid` exists. Anything but "no such process" counts as alive (the
/// safe side: the directory is kept).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: signal 0 sends nothing: kill only checks that the process exists.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// The directory the sinks write part files to: made by the coordinator (mode 0700, named
/// `shmflow-job-<pid>-<nanos>` under the temp dir; `shmflow clean` removes it once that pid
/// is gone), named to the workers through the environment. Removed by the coordinator when
/// it drops.
pub(crate) struct JobDir {
    pub(crate) path: PathBuf,
    pub(crate) owned: bool,
}

impl JobDir {
    pub(crate) const ENV: &'static str = "SHMFLOW_JOB_DIR";

    pub(crate) fn get() -> AnyResult<Self> {
        if is_worker() {
            let p = std::env::var_os(Self::ENV).ok_or("worker started without SHMFLOW_JOB_DIR")?;
            return Ok(Self { path: PathBuf::from(p), owned: false });
        }
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{JOB_DIR_PREFIX}{}-{nanos}", std::process::id()));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
        }
        // Workers are started from this process and inherit the variable.
        std::env::set_var(Self::ENV, &path);
        Ok(Self { path, owned: true })
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The pid in `<name>.tmp-<pid>` (the temp file of `--output <name>`), canonical decimal.
pub(crate) fn temp_pid(file_name: &str, name: &str) -> Option<u32> {
    let digits = file_name.strip_prefix(name)?.strip_prefix(".tmp-")?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&p| p <= i32::MAX as u32)
}

/// Whether `path` is a regular file (not a link) of this user.
pub(crate) fn own_regular_file(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == me)
}

impl JobDir {
    /// The file in the job directory that names the run's temp output, for `shmflow clean`
    /// after a coordinator killed before it could remove either.
    pub(crate) const OUTPUT_NOTE: &'static str = "output-temp";

    /// Notes where the temp output is (coordinator only): an absolute path
    /// ([`jobs::OutputFile`] resolves the output's directory), since `shmflow clean` may
    /// run from any directory.
    pub(crate) fn note_output(&self, out: Option<&jobs::OutputFile>) -> AnyResult<()> {
        if let (true, Some(tmp)) = (self.owned, out.and_then(jobs::OutputFile::temp_path)) {
            if !tmp.is_absolute() {
                return Err(format!("the temp output {} is not an absolute path", tmp.display()).into());
            }
            let note = self.path.join(Self::OUTPUT_NOTE);
            std::fs::write(&note, tmp.as_os_str().as_encoded_bytes())
                .map_err(|e| format!("writing {}: {e}", note.display()))?;
        }
        Ok(())
    }
}
