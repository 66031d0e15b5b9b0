//! The network-stack peer: ResultPartition / RecordWriter -> SingleInputGate each way (a module of the latency bench).

use super::*;

/// The partition the requester writes its requests to (read by the responder's gate).
pub(crate) const NET_REQUESTS: ResultPartitionId = ResultPartitionId::new(1, 0);
/// The partition the responder writes its answers to (read by the requester's gate).
pub(crate) const NET_ANSWERS: ResultPartitionId = ResultPartitionId::new(2, 0);
/// Worker slots of the two processes in the arena's liveness table.
pub(crate) const REQUESTER_WORKER: u32 = 0;
pub(crate) const RESPONDER_WORKER: u32 = 1;

/// The partition config of either direction: Flink's defaults for one subpartition
/// (pool 2..10 segments, gate credits 2 exclusive + 8 floating), the peer's wait policy for
/// a writer blocked on credit, and bounded waits.
pub(crate) fn net_partition_config(id: ResultPartitionId, policy: WaitPolicy) -> ResultPartitionConfig {
    let mut cfg = ResultPartitionConfig::new(id, ResultPartitionType::PipelinedBounded, 1);
    cfg.wait_policy = policy;
    cfg.timeout = Some(WAIT_TIMEOUT);
    cfg
}

/// The stream peers' arena (same segment sizes, so the rows compare like for like) with
/// room for two partitions, each with its notify set, and two gates.
pub(crate) fn net_arena_config(payload: usize) -> Res<ArenaConfig> {
    let pool_max = net_partition_config(NET_REQUESTS, WaitPolicy::spin()).pool_max;
    Ok(ArenaConfig {
        // Both pools at their quota, with room to spare (a round trip uses a few).
        segment_count: 2 * pool_max + 4,
        max_partitions: 2,
        max_gates: 4,
        ..arena_config(payload)?
    })
}

/// Creates and registers this side's partition `id` of one subpartition, written through a
/// record writer with Flink's buffer timeout 0: every `emit` commits the record and
/// notifies the consumer's gate (the job runtime's write path at that setting).
pub(crate) fn net_writer(env: &ShuffleEnvironment, id: ResultPartitionId, policy: WaitPolicy) -> Res<NetWriter> {
    let cfg = net_partition_config(id, policy);
    Ok(env.create_record_writer::<[u8], _>(&cfg, ForwardPartitioner, BufferTimeout::EveryRecord)?)
}

/// Creates a gate of one channel over subpartition 0 of `id`, waiting with `policy`. It
/// looks the partition up with a short request backoff, so it waits (bounded) while the
/// other process has not registered it yet.
pub(crate) fn net_gate(env: &ShuffleEnvironment, id: ResultPartitionId, policy: WaitPolicy) -> Res<SingleInputGate> {
    let mut cfg = InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }]);
    cfg.wait_policy = policy;
    cfg.backoff = RequestBackoff { initial: Duration::from_millis(1), max: WAIT_TIMEOUT };
    Ok(env.create_input_gate(&cfg)?)
}

pub(crate) type NetWriter = RecordWriter<ForwardPartitioner>;

/// The network stack each way over one arena: a [`RecordWriter`] (forward partitioner,
/// buffer timeout 0) over a `ResultPartition` of one subpartition, read by a
/// [`SingleInputGate`] of one channel in the other process.
pub(crate) struct NetPeer {
    pub(crate) writer: NetWriter,
    pub(crate) gate: SingleInputGate,
    /// Bytes per request (checked by the responder).
    pub(crate) payload: usize,
    /// Dropped last: marks this worker as having left cleanly.
    pub(crate) _env: ShuffleEnvironment,
}

/// The answer to the request it holds, as a record: serializing it copies the request (read in
/// place in the arena) straight into the answer's place in the outgoing segment, fused
/// with the checksum, then seals it ([`ShmPeer`]'s `write_with`, through the [`Record`]
/// trait). Were it to span segments, the partition serializes it into a scratch buffer
/// first.
pub(crate) struct Answer<'a>(pub(crate) &'a [u8]);

impl Record for Answer<'_> {
    fn serialized_len(&self) -> usize {
        self.0.len()
    }

    fn serialize_into(&self, out: &mut [u8]) {
        let sum = copy_checksum(self.0, out);
        seal_answer(out, sum);
    }
}

/// An item other than a record where the record of request `seq` was expected.
pub(crate) fn not_a_record(item: &GateItem<'_>, seq: u64) -> Box<dyn std::error::Error + Send + Sync> {
    format!("{item:?} on the gate where a record of round trip {seq} was expected").into()
}

impl Requester for NetPeer {
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()> {
        // Buffer timeout 0: the emit commits the record and notifies the responder's gate.
        self.writer.emit(msg)?;
        // The answer is compared in place, in the arena (or in the gate's reassembly
        // buffer, when it spanned segments).
        match self.gate.next(Some(WAIT_TIMEOUT))? {
            GateItem::Record { data, .. } if data == want => Ok(()),
            GateItem::Record { .. } => Err(wrong_answer(seq)),
            other => Err(not_a_record(&other, seq)),
        }
    }
}

impl Responder for NetPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        match self.gate.next(Some(WAIT_TIMEOUT))? {
            GateItem::Record { data, .. } => {
                check_request(data, seq, self.payload)?;
                self.writer.emit(&Answer(data))?;
                Ok(())
            }
            other => Err(not_a_record(&other, seq)),
        }
    }
}
