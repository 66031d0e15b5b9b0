//! A running job's progress on stderr, drawn by the coordinator from the task counters in
//! the arena: on a terminal an indicatif bar with the percent of the input read and an ETA
//! (when the job says how much input there is, [`ProgressTotal`]); elsewhere (a log file, a
//! pipe) one plain line a second; nothing when [`super::RuntimeConfig::progress`] is off.

use crate::metrics::{TaskRates, TaskSnapshot};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How much input a job has, and in what its sources (vertex 0) count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressTotal {
    /// Records the sources emit in all (`run shuffle --records`).
    SourceRecords(u64),
    /// Bytes of input the sources read, as they report them through
    /// `SourceContext::read` (`run wordcount --input`: the file's size).
    SourceInputBytes(u64),
}

/// Snapshots of every task, by (vertex, subtask).
pub(crate) type Snapshots = HashMap<(usize, u32), TaskSnapshot>;

/// Draws the progress of one job.
pub(crate) struct ProgressReporter {
    bar: Option<indicatif::ProgressBar>,
    total: Option<ProgressTotal>,
    start: Instant,
    last: Instant,
    every: Duration,
    prev: Option<Snapshots>,
}

impl ProgressReporter {
    /// A reporter for a job with `total` input (a bar only on a terminal, and only when the
    /// total is known).
    pub(crate) fn new(total: Option<ProgressTotal>) -> Self {
        let bar = match total {
            Some(t) if std::io::stderr().is_terminal() => {
                let n = match t {
                    ProgressTotal::SourceRecords(n) | ProgressTotal::SourceInputBytes(n) => n,
                };
                let bar = indicatif::ProgressBar::new(n.max(1));
                let style = indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {percent:>3}% ETA {eta:<4} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                bar.set_style(style);
                Some(bar)
            }
            _ => None,
        };
        let every = if bar.is_some() { Duration::from_millis(250) } else { Duration::from_secs(1) };
        let now = Instant::now();
        Self { bar, total, start: now, last: now, every, prev: None }
    }

    /// Whether it is time for the next update.
    pub(crate) fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    /// Shows `snaps` (taken now); `left` tasks are still running.
    pub(crate) fn update(&mut self, snaps: Snapshots, left: usize) {
        self.last = Instant::now();
        let done: u64 = snaps
            .iter()
            .filter(|((v, _), _)| *v == 0)
            // Saturating: the counters are workers' words in the arena.
            .map(|(_, s)| match self.total {
                Some(ProgressTotal::SourceInputBytes(_)) => s.bytes_in,
                _ => s.records_out,
            })
            .fold(0u64, u64::saturating_add);
        let (rin, bp, bytes) = line_figures(self.prev.as_ref(), &snaps);
        self.prev = Some(snaps);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(format!("{:.1} M records/s in, back-pressure {bp:.0} ms/s", rin / 1e6));
            return;
        }
        let pct = match self.total {
            Some(ProgressTotal::SourceRecords(n) | ProgressTotal::SourceInputBytes(n)) if n > 0 => {
                format!(" {:>5.1}% of the input,", (done as f64 / n as f64 * 100.0).min(100.0))
            }
            _ => String::new(),
        };
        eprintln!(
            "[{:>6.1}s]{pct} {:>12.0} records/s in, {:>8.1} MB out so far, max back-pressure {:>5.0} ms/s, {} tasks left",
            self.start.elapsed().as_secs_f64(),
            rin,
            bytes as f64 / 1e6,
            bp,
            left
        );
    }

    /// Removes the bar (the summary follows on a clean line).
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A progress line's records/s in (summed), back-pressure ms/s (the largest) and bytes out
/// so far (summed) from this update's snapshots and the previous update's. A task without
/// a previous snapshot (every task on the first line) is rated since it started; before,
/// the first line always said 0 records/s and 0.0 MB.
fn line_figures(prev: Option<&Snapshots>, snaps: &Snapshots) -> (f64, f64, u64) {
    let (mut rin, mut bp, mut bytes) = (0.0, 0.0f64, 0u64);
    for (k, b) in snaps {
        // Saturating: the counters are workers' words in the arena.
        bytes = bytes.saturating_add(b.bytes_out);
        let since_start = TaskSnapshot { at_ns: b.started_ns, ..TaskSnapshot::default() };
        let a = match prev.and_then(|p| p.get(k)) {
            Some(a) => a,
            // Not started (or a clock that went backwards): no rate yet.
            None if b.started_ns == 0 || b.started_ns >= b.at_ns => continue,
            None => &since_start,
        };
        let r = TaskRates::between(a, b);
        rin += r.records_in_per_s;
        bp = bp.max(r.back_pressured_ms_per_s);
    }
    (rin, bp, bytes)
}

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_rates_tasks_since_they_started_and_counts_their_bytes() {
        let t = |at_ns, records_in, bytes_out| TaskSnapshot {
            at_ns,
            started_ns: 1_000_000_000,
            records_in,
            bytes_out,
            ..TaskSnapshot::default()
        };
        let first: Snapshots = [((1, 0), t(2_000_000_000, 500, 4_000_000))].into_iter().collect();
        let (rin, _, bytes) = line_figures(None, &first);
        assert_eq!((rin, bytes), (500.0, 4_000_000));
        let second: Snapshots = [((1, 0), t(3_000_000_000, 2_500, 9_000_000))].into_iter().collect();
        let (rin, _, bytes) = line_figures(Some(&first), &second);
        assert_eq!((rin, bytes), (2_000.0, 9_000_000));
    }
}
