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
