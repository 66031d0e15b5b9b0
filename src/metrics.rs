//! Metrics that live in the arena, so any process (`shmflow top`, a test, a user's tool)
//! can read them live without asking the job.
//!
//! ```text
//!  ChannelBlock   records/bytes/buffers out (producer) and in (consumer), backlog (segments
//!                 in flight), credit granted, credit wanted
//!  PartitionEntry pool segments / pool max                      -> outPoolUsage
//!  GateBlock      credit capacity; sum of its channels' backlog -> inPoolUsage
//!  TaskMetrics    records/bytes in and out, idle and back-pressured nanoseconds, start
//!                 -> busy / idle / back-pressured ms per second between two snapshots
//! ```
//!
//! Writers add deltas with Relaxed read-modify-writes once per segment or per wait, never
//! per record; readers take snapshots with Relaxed loads (counters, not synchronization).

use crate::error::{Error, Result};
use crate::memory::{Arena, TaskMetrics};
use crate::sync::{now_nanos, Ordering};
use std::sync::Arc;

/// Task slot free.
pub const TASK_FREE: u32 = 0;
/// Task running.
pub const TASK_RUNNING: u32 = 1;
/// Task finished.
pub const TASK_FINISHED: u32 = 2;
/// Task failed.
pub const TASK_FAILED: u32 = 3;

/// A task's metrics block, claimed until [`TaskMetricsHandle::release`].
///
/// Dropping a handle (it is `Clone`: every clone names the same block) does not return the
/// block: a finished task's counters stay readable for observers (`shmflow top`, the job
/// summary) until `release`, or until the arena goes.
#[derive(Clone)]
pub struct TaskMetricsHandle {
    arena: Arc<Arena>,
    slot: u32,
}

impl std::fmt::Debug for TaskMetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TaskMetricsHandle({})", self.slot)
    }
}

impl TaskMetricsHandle {
    /// Claims a free metrics block for a task of worker `worker`.
    ///
    /// # Errors
    /// [`Error::OutOfSlots`] when every block is in use.
    pub fn claim(arena: Arc<Arena>, worker: u32) -> Result<Self> {
        for (i, t) in arena.task_metrics().iter().enumerate() {
            // Acquire on success: after the previous user's last writes.
            if t.state.compare_exchange(TASK_FREE, TASK_RUNNING, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                for c in [&t.records_in, &t.records_out, &t.bytes_in, &t.bytes_out, &t.back_pressured_ns, &t.idle_ns] {
                    // Relaxed: counters.
                    c.store(0, Ordering::Relaxed);
                }
                // Relaxed (all): counters and bookkeeping.
                t.ended_ns.store(0, Ordering::Relaxed);
                t.started_ns.store(now_nanos(), Ordering::Relaxed);
                t.worker.store(worker + 1, Ordering::Relaxed);
                return Ok(Self { arena, slot: i as u32 });
            }
        }
        Err(Error::OutOfSlots("task metrics block"))
    }

    /// Records which task this is (job vertex and subtask), for observers.
    pub fn set_identity(&self, vertex: u32, subtask: u32) {
        let b = self.block();
        // Relaxed (both): labels read by observers.
        b.vertex.store(vertex, Ordering::Relaxed);
        b.subtask.store(subtask, Ordering::Relaxed);
    }

    /// The slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    fn block(&self) -> &TaskMetrics {
        &self.arena.task_metrics()[self.slot as usize]
    }

    /// Adds output counts.
    pub fn add_out(&self, records: u64, bytes: u64) {
        let b = self.block();
        // Relaxed (both): counters.
        b.records_out.fetch_add(records, Ordering::Relaxed);
        b.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds input counts.
    pub fn add_in(&self, records: u64, bytes: u64) {
        let b = self.block();
        // Relaxed (both): counters.
        b.records_in.fetch_add(records, Ordering::Relaxed);
        b.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Adds back-pressured time.
    pub fn add_back_pressured(&self, ns: u64) {
        // Relaxed: counter.
        self.block().back_pressured_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Adds idle time.
    pub fn add_idle(&self, ns: u64) {
        // Relaxed: counter.
        self.block().idle_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Marks the task finished (or failed); the block stays readable until released.
    pub fn end(&self, failed: bool) {
        let b = self.block();
        // Relaxed: bookkeeping read by observers.
        b.ended_ns.store(now_nanos(), Ordering::Relaxed);
        // Release: observers that see the state see the final counters.
        b.state.store(if failed { TASK_FAILED } else { TASK_FINISHED }, Ordering::Release);
    }

    /// Returns the block to the arena.
    pub fn release(self) {
        // Release: our last writes happen-before the next claimer's.
        self.block().state.store(TASK_FREE, Ordering::Release);
    }
}

/// A task's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskSnapshot {
    /// When the snapshot was taken (monotonic ns).
    pub at_ns: u64,
    /// Task state.
    pub state: u32,
    /// Worker slot + 1.
    pub worker: u32,
    /// Job vertex.
    pub vertex: u32,
    /// Subtask.
    pub subtask: u32,
    /// Records read.
    pub records_in: u64,
    /// Records written.
    pub records_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Idle nanoseconds so far.
    pub idle_ns: u64,
    /// Back-pressured nanoseconds so far.
    pub back_pressured_ns: u64,
    /// Start (monotonic ns).
    pub started_ns: u64,
    /// End (monotonic ns), 0 while running.
    pub ended_ns: u64,
}

/// Reads task block `slot`.
pub fn task_snapshot(arena: &Arena, slot: u32) -> Option<TaskSnapshot> {
    let t = arena.task_metrics().get(slot as usize)?;
    // Relaxed (all): counters, read without ordering needs.
    Some(TaskSnapshot {
        at_ns: now_nanos(),
        state: t.state.load(Ordering::Relaxed),
        worker: t.worker.load(Ordering::Relaxed),
        vertex: t.vertex.load(Ordering::Relaxed),
        subtask: t.subtask.load(Ordering::Relaxed),
        records_in: t.records_in.load(Ordering::Relaxed),
        records_out: t.records_out.load(Ordering::Relaxed),
        bytes_in: t.bytes_in.load(Ordering::Relaxed),
        bytes_out: t.bytes_out.load(Ordering::Relaxed),
        idle_ns: t.idle_ns.load(Ordering::Relaxed),
        back_pressured_ns: t.back_pressured_ns.load(Ordering::Relaxed),
        started_ns: t.started_ns.load(Ordering::Relaxed),
        ended_ns: t.ended_ns.load(Ordering::Relaxed),
    })
}

/// Flink's per-task time metrics between two snapshots, in ms per second, and rates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TaskRates {
    /// busyTimeMsPerSecond.
    pub busy_ms_per_s: f64,
    /// idleTimeMsPerSecond.
    pub idle_ms_per_s: f64,
    /// backPressuredTimeMsPerSecond.
    pub back_pressured_ms_per_s: f64,
    /// numRecordsInPerSecond.
    pub records_in_per_s: f64,
    /// numRecordsOutPerSecond.
    pub records_out_per_s: f64,
    /// numBytesInPerSecond.
    pub bytes_in_per_s: f64,
    /// numBytesOutPerSecond.
    pub bytes_out_per_s: f64,
}

impl TaskRates {
    /// Rates between `a` (earlier) and `b`.
    pub fn between(a: &TaskSnapshot, b: &TaskSnapshot) -> Self {
        let wall = b.at_ns.saturating_sub(a.at_ns).max(1) as f64;
        let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 * 1e9 / wall;
        let ms = |x: u64, y: u64| (y.saturating_sub(x) as f64 / wall * 1000.0).min(1000.0);
        let idle = ms(a.idle_ns, b.idle_ns);
        let bp = ms(a.back_pressured_ns, b.back_pressured_ns);
        Self {
            busy_ms_per_s: (1000.0 - idle - bp).max(0.0),
            idle_ms_per_s: idle,
            back_pressured_ms_per_s: bp,
            records_in_per_s: per_s(a.records_in, b.records_in),
            records_out_per_s: per_s(a.records_out, b.records_out),
            bytes_in_per_s: per_s(a.bytes_in, b.bytes_in),
            bytes_out_per_s: per_s(a.bytes_out, b.bytes_out),
        }
    }

    /// Flink's back-pressure status: OK below 10%, LOW up to 50%, HIGH above.
    pub fn back_pressure_status(&self) -> &'static str {
        let ratio = self.back_pressured_ms_per_s / 1000.0;
        if ratio <= 0.10 {
            "OK"
        } else if ratio <= 0.5 {
            "LOW"
        } else {
            "HIGH"
        }
    }
}

/// One channel's shared counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSnapshot {
    /// Channel block id.
    pub channel: u32,
    /// Segments published and not yet released (backlog / in flight).
    pub backlog: u32,
    /// Credit granted so far (cumulative grants).
    pub credit_granted: u32,
    /// The producer waits for credit here.
    pub credit_wanted: bool,
    /// The segment fill the consumer's debloater asks for (0: whole segments).
    pub debloat_bytes: u32,
    /// numRecordsOut.
    pub records_out: u64,
    /// numBytesOut.
    pub bytes_out: u64,
    /// numBuffersOut.
    pub buffers_out: u64,
    /// numRecordsIn.
    pub records_in: u64,
    /// numBytesIn.
    pub bytes_in: u64,
    /// numBuffersIn.
    pub buffers_in: u64,
}

/// Reads channel block `id`.
pub fn channel_snapshot(arena: &Arena, id: u32) -> Option<ChannelSnapshot> {
    let b = arena.channels().get(id as usize)?;
    // Relaxed (all): counters.
    Some(ChannelSnapshot {
        channel: id,
        backlog: b.backlog(),
        credit_granted: b.credit_granted(),
        credit_wanted: b.credit_wanted(),
        debloat_bytes: b.segment_fill_wanted().unwrap_or(0),
        records_out: b.records_out.load(Ordering::Relaxed),
        bytes_out: b.bytes_out.load(Ordering::Relaxed),
        buffers_out: b.buffers_out.load(Ordering::Relaxed),
        records_in: b.records_in.load(Ordering::Relaxed),
        bytes_in: b.bytes_in.load(Ordering::Relaxed),
        buffers_in: b.buffers_in.load(Ordering::Relaxed),
    })
}

/// outPoolUsage of the partition in directory slot `slot`: segments its pool holds out of
/// its quota, in `0.0..=1.0`.
pub fn out_pool_usage(arena: &Arena, slot: u32) -> Option<f64> {
    let e = arena.partitions().get(slot as usize)?;
    // Relaxed (both): counters.
    let used = e.pool_segments.load(Ordering::Relaxed) as f64;
    let max = e.pool_max.load(Ordering::Relaxed).max(1) as f64;
    Some((used / max).min(1.0))
}

/// inPoolUsage of gate `gate`: segments in flight on its channels out of the credits it
/// can grant, in `0.0..=1.0`.
pub fn in_pool_usage(arena: &Arena, gate: u32) -> Option<f64> {
    let g = arena.gates().get(gate as usize)?;
    // Relaxed: a counter.
    let cap = g.credit_capacity.load(Ordering::Relaxed).max(1) as f64;
    let mut used = 0u64;
    for b in arena.channels() {
        if b.consumer_wakeups().is_some_and(|(g, _)| g == gate) {
            used += u64::from(b.backlog());
        }
    }
    Some((used as f64 / cap).min(1.0))
}

/// One task as `shmflow top` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskView {
    /// Metrics slot.
    pub slot: u32,
    /// Job vertex.
    pub vertex: u32,
    /// Subtask.
    pub subtask: u32,
    /// Worker slot.
    pub worker: u32,
    /// "running", "finished" or "failed".
    pub state: &'static str,
    /// busyTimeMsPerSecond.
    pub busy_ms_per_s: f64,
    /// idleTimeMsPerSecond.
    pub idle_ms_per_s: f64,
    /// backPressuredTimeMsPerSecond.
    pub back_pressured_ms_per_s: f64,
    /// OK / LOW / HIGH.
    pub back_pressure: &'static str,
    /// Records in per second.
    pub records_in_per_s: f64,
    /// Records out per second.
    pub records_out_per_s: f64,
    /// Bytes in per second.
    pub bytes_in_per_s: f64,
    /// Bytes out per second.
    pub bytes_out_per_s: f64,
    /// Records read so far.
    pub records_in: u64,
    /// Records written so far.
    pub records_out: u64,
}

/// One channel as `shmflow top` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelView {
    /// Channel block.
    pub channel: u32,
    /// Producing partition's directory slot.
    pub partition: u32,
    /// Subpartition.
    pub subpartition: u32,
    /// Segments in flight (backlog).
    pub backlog: u32,
    /// Bytes those segments can hold (at the debloated fill when debloating is on).
    pub in_flight_bytes: u64,
    /// The segment fill the consumer's debloater asks for (0: whole segments).
    pub debloat_bytes: u32,
    /// Credit granted so far.
    pub credit_granted: u32,
    /// The producer waits for credit.
    pub credit_wanted: bool,
    /// Records written.
    pub records_out: u64,
    /// Records read.
    pub records_in: u64,
}

/// One partition as `shmflow top` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionView {
    /// Directory slot.
    pub slot: u32,
    /// Partition id.
    pub id: String,
    /// Directory state.
    pub state: u32,
    /// outPoolUsage.
    pub out_pool_usage: f64,
    /// Subpartitions.
    pub subpartitions: u32,
}

/// Everything `shmflow top` shows, from two looks at the arena.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArenaView {
    /// Seconds between the two looks.
    pub interval_s: f64,
    /// Segments in the arena.
    pub segments: u32,
    /// Segments on the free stack.
    pub free_segments: u32,
    /// Tasks.
    pub tasks: Vec<TaskView>,
    /// Partitions.
    pub partitions: Vec<PartitionView>,
    /// Channels of live partitions.
    pub channels: Vec<ChannelView>,
}

fn live_tasks(arena: &Arena) -> Vec<(u32, TaskSnapshot)> {
    (0..arena.config().max_tasks)
        .filter_map(|s| task_snapshot(arena, s).map(|t| (s, t)))
        .filter(|(_, t)| t.state != TASK_FREE)
        .collect()
}

/// Looks at `arena` twice, `interval` apart, and describes what moved. Only reads.
pub fn observe(arena: &Arena, interval: std::time::Duration) -> ArenaView {
    let before = live_tasks(arena);
    std::thread::sleep(interval);
    let after = live_tasks(arena);
    let mut tasks = Vec::new();
    for (slot, b) in &after {
        let a = before
            .iter()
            .find(|(s, _)| s == slot)
            .map(|(_, t)| *t)
            // A task that started between the two looks is measured from its start, with
            // every counter at zero then.
            .unwrap_or(TaskSnapshot {
                at_ns: b.started_ns,
                records_in: 0,
                records_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                idle_ns: 0,
                back_pressured_ns: 0,
                ..*b
            });
        let r = TaskRates::between(&a, b);
        tasks.push(TaskView {
            slot: *slot,
            vertex: b.vertex,
            subtask: b.subtask,
            worker: b.worker.saturating_sub(1),
            state: match b.state {
                TASK_RUNNING => "running",
                TASK_FINISHED => "finished",
                _ => "failed",
            },
            busy_ms_per_s: r.busy_ms_per_s,
            idle_ms_per_s: r.idle_ms_per_s,
            back_pressured_ms_per_s: r.back_pressured_ms_per_s,
            back_pressure: r.back_pressure_status(),
            records_in_per_s: r.records_in_per_s,
            records_out_per_s: r.records_out_per_s,
            bytes_in_per_s: r.bytes_in_per_s,
            bytes_out_per_s: r.bytes_out_per_s,
            records_in: b.records_in,
            records_out: b.records_out,
        });
    }
    tasks.sort_by_key(|t| (t.vertex, t.subtask));
    let mut partitions = Vec::new();
    let mut channels = Vec::new();
    let seg = u64::from(arena.segment_size());
    for (i, e) in arena.partitions().iter().enumerate() {
        // Relaxed (all): an observer's snapshot of counters and states.
        let state = e.state.load(Ordering::Relaxed);
        if !(2..=3).contains(&state) {
            continue;
        }
        let n = e.num_subpartitions.load(Ordering::Relaxed);
        let first = e.first_channel.load(Ordering::Relaxed);
        let id = format!("{:016x}@{:x}", e.id[0].load(Ordering::Relaxed), e.id[1].load(Ordering::Relaxed));
        partitions.push(PartitionView {
            slot: i as u32,
            id,
            state,
            out_pool_usage: out_pool_usage(arena, i as u32).unwrap_or(0.0),
            subpartitions: n,
        });
        // Live partitions own disjoint runs of channel blocks, so there are at most
        // `max_channels` views; a garbage directory (overlapping or huge runs) stops there.
        let room = (arena.config().max_channels as usize).saturating_sub(channels.len()) as u32;
        for c in first..first.saturating_add(n.min(room)).min(arena.config().max_channels) {
            if let Some(s) = channel_snapshot(arena, c) {
                channels.push(ChannelView {
                    channel: c,
                    partition: i as u32,
                    subpartition: c - first,
                    backlog: s.backlog,
                    in_flight_bytes: u64::from(s.backlog)
                        * if s.debloat_bytes == 0 { seg } else { u64::from(s.debloat_bytes).min(seg) },
                    debloat_bytes: s.debloat_bytes,
                    credit_granted: s.credit_granted,
                    credit_wanted: s.credit_wanted,
                    records_out: s.records_out,
                    records_in: s.records_in,
                });
            }
        }
    }
    ArenaView {
        interval_s: interval.as_secs_f64(),
        segments: arena.segment_count(),
        free_segments: arena.header_atomics().free_stack.len(),
        tasks,
        partitions,
        channels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at_ns: u64, idle_ns: u64, back_pressured_ns: u64, records_out: u64) -> TaskSnapshot {
        TaskSnapshot { at_ns, idle_ns, back_pressured_ns, records_out, ..TaskSnapshot::default() }
    }

    #[test]
    fn rates_split_each_second_into_busy_idle_and_back_pressured() {
        let r = TaskRates::between(&snap(0, 0, 0, 0), &snap(2_000_000_000, 500_000_000, 300_000_000, 4_000));
        assert_eq!(r.idle_ms_per_s, 250.0);
        assert_eq!(r.back_pressured_ms_per_s, 150.0);
        assert_eq!(r.busy_ms_per_s, 600.0);
        assert_eq!(r.records_out_per_s, 2_000.0);
        assert_eq!(r.back_pressure_status(), "LOW");
    }

    #[test]
    fn counters_that_go_back_or_overrun_the_wall_clock_give_bounded_rates_not_panics() {
        // Counters written by another process: a reused block starts over, or a clock
        // skew reports more idle time than wall time.
        let r = TaskRates::between(&snap(10, u64::MAX, u64::MAX, u64::MAX), &snap(5, 0, 0, 0));
        assert_eq!((r.idle_ms_per_s, r.back_pressured_ms_per_s, r.records_out_per_s), (0.0, 0.0, 0.0));
        assert_eq!(r.busy_ms_per_s, 1000.0);
        let r = TaskRates::between(&snap(0, 0, 0, 0), &snap(1_000, u64::MAX, u64::MAX, 0));
        assert_eq!((r.idle_ms_per_s, r.back_pressured_ms_per_s), (1000.0, 1000.0));
        assert_eq!(r.busy_ms_per_s, 0.0, "never negative");
        assert!(r.records_out_per_s.is_finite());
    }

    #[test]
    fn back_pressure_status_follows_flinks_thresholds() {
        let status = |bp: f64| TaskRates { back_pressured_ms_per_s: bp, ..TaskRates::default() }.back_pressure_status();
        assert_eq!(status(0.0), "OK");
        assert_eq!(status(100.0), "OK");
        assert_eq!(status(100.5), "LOW");
        assert_eq!(status(500.0), "LOW");
        assert_eq!(status(500.5), "HIGH");
        assert_eq!(status(1000.0), "HIGH");
    }
}
