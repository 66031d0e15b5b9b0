//! What the commands share: the error type, a child guard, the bounds on records.

/// What the commands return: any error, printed by `main`.
pub(crate) type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Kills and reaps the child if the parent leaves early.
pub(crate) struct ChildGuard(pub(crate) Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The most records a job or the demo takes: far more than a run of days moves, and small
/// enough that no count or share computed from it wraps.
pub(crate) const MAX_RECORDS: u64 = 1_000_000_000_000;

/// The most busy work per record: one second.
pub(crate) const MAX_WORK_NS: u64 = 1_000_000_000;

pub(crate) fn check_records(records: u64) -> AnyResult<()> {
    if records > MAX_RECORDS {
        return Err(format!("--records {records} is out of range (0..={MAX_RECORDS})").into());
    }
    Ok(())
}

/// The first error writing stdout (a full disk, `> /dev/full`, a closed pipe).
pub(crate) static STDOUT_ERROR: std::sync::OnceLock<std::io::Error> = std::sync::OnceLock::new();

/// Whether a write to stdout failed.
pub(crate) fn stdout_failed() -> bool {
    STDOUT_ERROR.get().is_some()
}

/// The exit of a command whose output could not be written: quiet with status 141 (128 +
/// SIGPIPE, as a shell reports a writer killed by it) when the reader closed the pipe
/// (`shmflow ... | head`), an error on stderr with status 1 otherwise.
pub(crate) fn stdout_error_exit() -> Option<std::process::ExitCode> {
    use std::io::Write as _;
    if let Err(e) = std::io::stdout().flush() {
        let _ = STDOUT_ERROR.set(e);
    }
    let e = STDOUT_ERROR.get()?;
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        return Some(std::process::ExitCode::from(128 + libc::SIGPIPE as u8));
    }
    let who =
        if shmflow::runtime::is_worker() { format!("shmflow worker {}", std::process::id()) } else { "shmflow".into() };
    eprintln!("{who}: error: writing stdout: {e}");
    Some(std::process::ExitCode::FAILURE)
}
