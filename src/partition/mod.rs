//! The producer side of the network stack: partition types, the partition directory,
//! result partitions with their subpartitions, channel selectors and record writers.
//!
//! ```text
//!  RecordWriter<S: ChannelSelector, W: PartitionWriter> --emit-->
//!      ResultPartition (pipelined) --subpartition c--> channel block (rings) in the arena,
//!          found by consumers through the ResultPartitionManager directory
//!      BlockingResultPartition (blocking) --subpartition s--> regions of one file, read
//!          by consumers once the directory says FINISHED
//! ```

mod blocking;
mod flush_handoff;
mod manager;
pub mod reclaim;
mod result_partition;
mod selector;
mod types;
mod writer;

pub use blocking::{
    wait_finished, BlockingPartitionFile, BlockingResultPartition, BlockingStats, BlockingSubpartitionReader,
    FileChannelManager, SubpartitionCursor, BLOCKING_DIR_ENV, DEFAULT_REGION_BYTES,
};
pub use flush_handoff::{FlushHandoff, FlushState};
pub use manager::{
    PartitionInfo, RequestBackoff, ResultPartitionManager, GATE_FREE, GATE_OPEN, GATE_OWNED_BY, PARTITION_CLAIMED,
    PARTITION_CLAIMED_BY, PARTITION_FAILED, PARTITION_FINISHED, PARTITION_FREE, PARTITION_REGISTERED,
    PARTITION_RELEASED,
};
pub use reclaim::{peer_liveness, reclaim_dead_peers, register_worker, ReclaimReport};
pub use result_partition::{
    PartitionStats, ResultPartition, ResultPartitionConfig, DEFAULT_ATTACH_TIMEOUT, MIN_DEBLOAT_BYTES,
};
pub use selector::{
    flink_murmur_hash, key_group_for_hash, operator_index_for_key_group, BroadcastPartitioner, ByKey, ChannelSelector,
    ForwardPartitioner, GlobalPartitioner, JavaHash, KeyGroupPartitioner, RebalancePartitioner, RecordKeyHash,
    RescalePartitioner, SelectorKind, DEFAULT_MAX_PARALLELISM,
};
pub use types::{BatchResult, ResultPartitionId, ResultPartitionType};
pub use writer::{
    AnyPartition, BufferTimeout, EmitBatchError, OutputFlusher, PartitionWriter, RecordWriter, EMIT_BATCH_RUN,
};
