//! What a job reports when it ends ([`JobSummary`]): records, bytes and backpressure per
//! edge from the tasks' counters in the arena, and the most segments seen in flight.

use super::config::RuntimeConfig;
use super::graph::ExecutionGraph;
use super::job::JobGraph;
use crate::memory::Arena;
use crate::metrics::{channel_snapshot, task_snapshot};
use crate::partition::{ResultPartitionId, ResultPartitionManager};
use serde::Serialize;
use std::collections::HashMap;

/// Figures for one edge of the job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EdgeSummary {
    /// Producer vertex.
    pub from: String,
    /// Consumer vertex.
    pub to: String,
    /// Selector.
    pub selector: String,
    /// Partition type.
    pub partition_type: String,
    /// Records that crossed it.
    pub records: u64,
    /// Bytes that crossed it.
    pub bytes: u64,
    /// The most segments seen in flight on it at once (sampled).
    pub max_in_flight_segments: u64,
    /// The most bytes that could have been in flight (segments x segment size).
    pub max_in_flight_bytes: u64,
    /// Milliseconds its producers spent back-pressured, summed over subtasks.
    pub back_pressured_ms: f64,
    /// That time as a share of the producers' run time.
    pub back_pressured_ratio: f64,
}

/// The outcome of a job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobSummary {
    /// Job name.
    pub job: String,
    /// Worker processes.
    pub workers: u32,
    /// Subtasks.
    pub subtasks: usize,
    /// Records the sources produced.
    pub records: u64,
    /// Bytes the sources produced into the first exchange.
    pub bytes: u64,
    /// Wall-clock seconds, from creating the job's arena (before its workers start) to the
    /// last worker's exit.
    pub elapsed_s: f64,
    /// Records per second (sources).
    pub records_per_s: f64,
    /// Per edge.
    pub edges: Vec<EdgeSummary>,
    /// Partitions that announced they are consumable.
    pub consumable_partitions: usize,
    /// Segments in the arena.
    pub arena_segments: u32,
    /// Segments back on the free stack after every worker exited (equal to
    /// `arena_segments` unless segments leaked).
    pub arena_free_after: u32,
    /// Problems `shmflow check` found in the arena after the job (none expected).
    pub arena_problems: Vec<String>,
    /// The tasks' accumulators, merged (see [`super::accumulators`]).
    pub accumulators: super::accumulators::Accumulators,
}

pub(super) fn sample_in_flight(
    graph: &ExecutionGraph,
    manager: &ResultPartitionManager,
    arena: &Arena,
    max: &mut HashMap<usize, u64>,
) {
    let mut per_edge: HashMap<usize, u64> = HashMap::new();
    for s in &graph.subtasks {
        if let Some(o) = &s.output {
            let id = ResultPartitionId::new(o.partition.0, o.partition.1);
            // Blocking partitions have no channels in the arena.
            if let Some(info) = manager.lookup_once(id).ok().filter(|i| i.partition_type.is_pipelined()) {
                let n: u64 = (0..info.num_subpartitions)
                    .filter_map(|i| channel_snapshot(arena, info.first_channel + i))
                    .map(|c| u64::from(c.backlog))
                    .sum();
                *per_edge.entry(o.edge).or_default() += n;
            }
        }
    }
    for (e, n) in per_edge {
        let m = max.entry(e).or_default();
        *m = (*m).max(n);
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn summarize(
    job: &JobGraph,
    graph: &ExecutionGraph,
    arena: &Arena,
    slots: &HashMap<(usize, u32), u32>,
    max_in_flight: &HashMap<usize, u64>,
    elapsed: f64,
    config: &RuntimeConfig,
    consumable: usize,
) -> JobSummary {
    let snap = |v: usize, i: u32| slots.get(&(v, i)).and_then(|&s| task_snapshot(arena, s));
    let mut edges = Vec::new();
    // Records and bytes the sources (vertices without inputs) wrote into their exchanges.
    let (mut source_records, mut source_bytes) = (0u64, 0u64);
    for vx in &job.vertices {
        for &(u, e) in &vx.inputs {
            let (mut records, mut bytes, mut bp, mut run) = (0u64, 0u64, 0u64, 0u64);
            for i in 0..job.vertices[u].parallelism {
                if let Some(s) = snap(u, i) {
                    // Saturating: the counters are workers' words in the arena.
                    records = records.saturating_add(s.records_out);
                    bytes = bytes.saturating_add(s.bytes_out);
                    bp = bp.saturating_add(s.back_pressured_ns);
                    run = run.saturating_add(s.ended_ns.max(s.started_ns) - s.started_ns);
                }
            }
            if job.vertices[u].inputs.is_empty() {
                source_records = source_records.saturating_add(records);
                source_bytes = source_bytes.saturating_add(bytes);
            }
            let segs = max_in_flight.get(&u).copied().unwrap_or(0);
            edges.push(EdgeSummary {
                from: job.vertices[u].name.clone(),
                to: vx.name.clone(),
                selector: format!("{:?}", e.selector),
                partition_type: format!("{:?}", e.partition_type),
                records,
                bytes,
                max_in_flight_segments: segs,
                max_in_flight_bytes: segs.saturating_mul(u64::from(config.segment_size)),
                back_pressured_ms: bp as f64 / 1e6,
                back_pressured_ratio: if run > 0 { bp as f64 / run as f64 } else { 0.0 },
            });
        }
    }
    let (records, bytes) = (source_records, source_bytes);
    JobSummary {
        job: job.name.clone(),
        workers: config.workers,
        subtasks: graph.subtasks.len(),
        records,
        bytes,
        elapsed_s: elapsed,
        records_per_s: records as f64 / elapsed.max(1e-9),
        edges,
        consumable_partitions: consumable,
        ..JobSummary::default()
    }
}
