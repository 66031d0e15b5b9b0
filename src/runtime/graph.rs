//! The execution graph: each job vertex of parallelism p becomes p execution vertices
//! (subtasks); each edge becomes an IntermediateResult with one
//! IntermediateResultPartition per producer subtask, wired to the consumers' input gates by
//! the edge's selector. A vertex with several inputs (a union) has one gate over the
//! channels of all of them.
//!
//! ```text
//!  all-to-all (key-hash, rebalance, broadcast, global): producer i has p_consumer
//!      subpartitions; consumer j reads subpartition j of every producer
//!  pointwise (forward, rescale): each consumer reads a contiguous subset of producers, or
//!      each producer feeds a contiguous subset of consumers
//! ```

use super::job::{EdgeSpec, JobGraph};
use super::protocol::{InputSpecs, OutputSpec, SubtaskSpec};
pub use crate::error::GraphError;
use crate::error::Result;
use crate::partition::{ResultPartitionId, SelectorKind};

/// The expanded job.
#[derive(Debug, Clone)]
pub struct ExecutionGraph {
    /// Every subtask, vertex by vertex.
    pub subtasks: Vec<SubtaskSpec>,
}

/// The partition id of producer subtask `i` on edge `edge`.
pub fn partition_id(edge: usize, i: u32, attempt: u64) -> ResultPartitionId {
    ResultPartitionId::new(((edge as u64) << 32) | u64::from(i), attempt)
}

impl ExecutionGraph {
    /// Expands `job`.
    ///
    /// # Errors
    /// [`GraphError`] for a vertex reading a later one, mixed pipelined and blocking inputs,
    /// or a forward edge between different parallelisms.
    pub fn build(job: &JobGraph, attempt: u64) -> Result<Self> {
        let mut subtasks = Vec::new();
        for (v, vx) in job.vertices.iter().enumerate() {
            // The consumer of this vertex's output, and the edge to it.
            let out_edge = job
                .vertices
                .iter()
                .find_map(|n| n.inputs.iter().find(|(u, _)| *u == v).map(|&(_, e)| (e, n.parallelism)));
            if let Some(&(u, _)) = vx.inputs.iter().find(|(u, _)| *u >= v) {
                return Err(GraphError::InputOrder { vertex: v, input: u }.into());
            }
            if vx
                .inputs
                .windows(2)
                .any(|w| w[0].1.partition_type.is_pipelined() != w[1].1.partition_type.is_pipelined())
            {
                return Err(GraphError::MixedInputs { vertex: v, name: vx.name.clone() }.into());
            }
            for i in 0..vx.parallelism {
                let output = out_edge.map(|(e, pc)| OutputSpec {
                    edge: v,
                    partition: {
                        let id = partition_id(v, i, attempt);
                        (id.partition, id.attempt)
                    },
                    partition_type: e.partition_type.code(),
                    num_subpartitions: Self::subpartitions(&e, vx.parallelism, pc, i),
                });
                let input = match vx.inputs.first() {
                    None => None,
                    Some(&(first, e)) => {
                        let mut channels = Vec::new();
                        for &(u, e) in &vx.inputs {
                            let pp = job.vertices[u].parallelism;
                            channels.extend(Self::channels(&e, pp, vx.parallelism, i, u, attempt)?);
                        }
                        Some(InputSpecs { edge: first, channels, partition_type: e.partition_type.code() })
                    }
                };
                subtasks.push(SubtaskSpec {
                    vertex: v,
                    name: vx.name.clone(),
                    subtask: i,
                    parallelism: vx.parallelism,
                    output,
                    input,
                });
            }
        }
        Ok(Self { subtasks })
    }

    fn subpartitions(e: &EdgeSpec, pp: u32, pc: u32, i: u32) -> u32 {
        match e.selector {
            SelectorKind::Forward => 1,
            SelectorKind::Rescale if pc >= pp => (0..pc).filter(|j| j * pp / pc == i).count().max(1) as u32,
            SelectorKind::Rescale => 1,
            _ => pc,
        }
    }

    fn channels(e: &EdgeSpec, pp: u32, pc: u32, j: u32, edge: usize, attempt: u64) -> Result<Vec<(u64, u64, u32)>> {
        let id = |i: u32| {
            let p = partition_id(edge, i, attempt);
            (p.partition, p.attempt)
        };
        Ok(match e.selector {
            SelectorKind::Forward => {
                if pp != pc {
                    return Err(GraphError::ForwardParallelism { producer: pp, consumer: pc }.into());
                }
                let (a, b) = id(j);
                vec![(a, b, 0)]
            }
            SelectorKind::Rescale if pc >= pp => {
                let i = j * pp / pc;
                let index = (0..j).filter(|k| k * pp / pc == i).count() as u32;
                let (a, b) = id(i);
                vec![(a, b, index)]
            }
            SelectorKind::Rescale => (0..pp)
                .filter(|i| i * pc / pp == j)
                .map(|i| {
                    let (a, b) = id(i);
                    (a, b, 0)
                })
                .collect(),
            _ => (0..pp)
                .map(|i| {
                    let (a, b) = id(i);
                    (a, b, j)
                })
                .collect(),
        })
    }

    /// Total channels (subpartitions) the job needs.
    pub fn channels_needed(&self) -> u64 {
        self.subtasks.iter().filter_map(|s| s.output.as_ref()).map(|o| u64::from(o.num_subpartitions)).sum()
    }

    /// Gate blocks the job needs (a notify set per partition and per gate).
    pub fn gates_needed(&self) -> u64 {
        self.subtasks.iter().map(|s| u64::from(s.output.is_some()) + u64::from(s.input.is_some())).sum()
    }
}
