//! `ShuffleEnvironment`: the per-process entry point (Flink's NettyShuffleEnvironment).
//!
//! A worker needs only the arena and plain descriptors ([`ResultPartitionConfig`],
//! [`InputGateConfig`]) to take part: the environment creates partitions and gates from
//! them; consumers find producers through the directory in the arena.

use crate::error::Result;
use crate::gate::{InputGateConfig, SingleInputGate, UnionInputGate};
use crate::memory::{liveness, Arena};
use crate::partition::{
    wait_finished, BlockingPartitionFile, BlockingResultPartition, BufferTimeout, ChannelSelector, FileChannelManager,
    RecordWriter, ResultPartition, ResultPartitionConfig, ResultPartitionId, ResultPartitionManager,
    ResultPartitionType,
};
use std::sync::Arc;

/// The shuffle environment of one process: its worker slot in the arena (pid and start
/// time, so peers can tell when it dies) and the partition directory.
///
/// Build it in one of three ways:
/// - [`ShuffleEnvironment::join_inherited`] in a child process the parent prepared with
///   [`Arena::inherit_fd_into`] (claims a free slot);
/// - [`ShuffleEnvironment::join`] over an arena you already hold (the creator, or a process
///   that attached a named arena);
/// - [`ShuffleEnvironment::new`] with a slot a coordinator assigned (the job runtime).
///
/// Dropping the last clone marks the slot as left cleanly (peers then see "exited", not
/// "died") and drops this process's reference to the arena. Partitions and gates created
/// from it keep the arena mapped until they drop.
#[derive(Debug, Clone)]
pub struct ShuffleEnvironment {
    arena: Arc<Arena>,
    worker: u32,
    manager: ResultPartitionManager,
    _exit: Arc<ExitGuard>,
}

/// Marks the worker record as left cleanly when the last clone of the environment drops.
#[derive(Debug)]
struct ExitGuard {
    arena: Arc<Arena>,
    worker: u32,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        liveness::mark_exited(&self.arena, self.worker);
    }
}

impl ShuffleEnvironment {
    /// An environment over `arena` for worker slot `worker` (assigned by a coordinator):
    /// registers this process's pid and start time there, so peers can tell if it dies
    /// (a dead previous holder of the slot is reclaimed first). A slot outside the arena's
    /// worker table, or one a live process holds, is not registered (peers then cannot
    /// detect this process's death): [`ShuffleEnvironment::register`] reports that instead.
    pub fn new(arena: Arc<Arena>, worker: u32) -> Self {
        let _ = crate::partition::reclaim::register_worker(&arena, worker);
        Self::registered(arena, worker)
    }

    /// An environment over `arena` for worker slot `worker`, registered there (refused if
    /// the slot is held by a live process; a dead holder is reclaimed first, see
    /// [`crate::partition::reclaim`]).
    ///
    /// # Errors
    /// [`crate::Error::SlotHeld`] naming the live holder's pid;
    /// [`crate::Error::ProtocolViolation`] for a slot outside the worker table.
    pub fn register(arena: Arc<Arena>, worker: u32) -> Result<Self> {
        crate::partition::reclaim::register_worker(&arena, worker)?;
        Ok(Self::registered(arena, worker))
    }

    fn registered(arena: Arc<Arena>, worker: u32) -> Self {
        let manager = ResultPartitionManager::new(arena.clone());
        let exit = Arc::new(ExitGuard { arena: arena.clone(), worker });
        Self { arena, worker, manager, _exit: exit }
    }

    /// Reclaims every process attached to the arena that died (see
    /// [`crate::partition::reclaim_dead_peers`]): their segments return to the pool, their
    /// channel and gate blocks and directory entries become free, and the live peers of
    /// their channels fail those channels with [`crate::Error::PeerDied`]. Idempotent;
    /// callable from any live process.
    ///
    /// # Errors
    /// As [`crate::partition::reclaim_dead_peers`].
    pub fn reclaim_dead_peers(&self) -> Result<crate::partition::ReclaimReport> {
        crate::partition::reclaim_dead_peers(&self.arena)
    }

    /// Whether the process in worker slot `slot` is alive, left cleanly, or died.
    pub fn peer_liveness(&self, slot: u32) -> crate::memory::liveness::Liveness {
        crate::partition::peer_liveness(&self.arena, slot)
    }

    /// An environment that claims a free worker slot itself (library users without a
    /// coordinator).
    ///
    /// # Errors
    /// [`crate::Error::OutOfSlots`] when the worker table is full.
    pub fn join(arena: Arc<Arena>) -> Result<Self> {
        let worker = liveness::claim(&arena)?;
        Ok(Self::new(arena, worker))
    }

    /// Attaches to the arena the parent process passed down (see
    /// [`Arena::inherit_fd_into`]) and claims a free worker slot there: the partner of
    /// `inherit_fd_into` for programs without a coordinator.
    ///
    /// # Errors
    /// As [`Arena::attach_inherited`] (no arena was passed down) and
    /// [`ShuffleEnvironment::join`] (the worker table is full).
    pub fn join_inherited() -> Result<Self> {
        Self::join(Arc::new(Arena::attach_inherited()?))
    }

    /// Attaches to the arena passed down by the parent process (see
    /// [`Arena::inherit_fd_into`]) as worker slot `worker`, which a coordinator assigned to
    /// this process. Without a coordinator, use [`ShuffleEnvironment::join_inherited`].
    ///
    /// # Errors
    /// As [`Arena::attach_inherited`].
    pub fn attach_inherited(worker: u32) -> Result<Self> {
        Ok(Self::new(Arc::new(Arena::attach_inherited()?), worker))
    }

    /// The arena.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// This process's worker slot.
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// The partition directory.
    pub fn partition_manager(&self) -> &ResultPartitionManager {
        &self.manager
    }

    /// Creates and registers a result partition (the ResultPartitionFactory).
    ///
    /// # Errors
    /// As [`ResultPartition::new`].
    pub fn create_result_partition(&self, cfg: &ResultPartitionConfig) -> Result<ResultPartition> {
        let mut cfg = cfg.clone();
        cfg.worker = self.worker;
        ResultPartition::new(self.arena.clone(), &cfg)
    }

    /// Creates a partition and a record writer over it.
    ///
    /// # Errors
    /// As [`ResultPartition::new`] and [`RecordWriter::new`].
    pub fn create_record_writer<R: ?Sized, S: ChannelSelector<R>>(
        &self,
        cfg: &ResultPartitionConfig,
        selector: S,
        timeout: BufferTimeout,
    ) -> Result<RecordWriter<S>> {
        RecordWriter::new(self.create_result_partition(cfg)?, selector, timeout)
    }

    /// Creates a BLOCKING or BLOCKING_PERSISTENT partition (a file under `files`) and
    /// registers it in the arena's directory, where consumers find it once it is finished
    /// (the ResultPartitionFactory for the blocking types).
    ///
    /// # Errors
    /// As [`BlockingResultPartition::new`] and [`BlockingResultPartition::register`].
    pub fn create_blocking_partition(
        &self,
        files: &FileChannelManager,
        id: ResultPartitionId,
        partition_type: ResultPartitionType,
        num_subpartitions: u32,
    ) -> Result<BlockingResultPartition> {
        let mut p = BlockingResultPartition::new(files, id, partition_type, num_subpartitions)?;
        p.register(self.manager.clone())?;
        Ok(p)
    }

    /// Opens a finished blocking partition for reading (waiting, at most `timeout`, until
    /// its producer finished it, as Flink schedules consumers of blocking results).
    ///
    /// # Errors
    /// As [`wait_finished`] and [`BlockingPartitionFile::open`];
    /// [`crate::Error::Timeout`] when it is not finished within `timeout`.
    pub fn open_blocking_partition(
        &self,
        files: &FileChannelManager,
        id: ResultPartitionId,
        timeout: std::time::Duration,
    ) -> Result<BlockingPartitionFile> {
        let never = crate::sync::AtomicBool::new(false);
        let deadline = std::time::Instant::now() + timeout;
        wait_finished(&self.manager, &[id], &never, timeout, || {
            if std::time::Instant::now() >= deadline {
                Err(crate::Error::Timeout(timeout, "a finished blocking partition"))
            } else {
                Ok(())
            }
        })?;
        BlockingPartitionFile::open(files, id)
    }

    /// Creates an input gate (the SingleInputGateFactory).
    ///
    /// # Errors
    /// As [`SingleInputGate::new`].
    pub fn create_input_gate(&self, cfg: &InputGateConfig) -> Result<SingleInputGate> {
        let mut cfg = cfg.clone();
        cfg.worker = Some(self.worker);
        SingleInputGate::new(self.arena.clone(), &cfg)
    }

    /// Creates a union of gates.
    ///
    /// # Errors
    /// As [`UnionInputGate::new`].
    pub fn create_union_gate(&self, cfgs: &[InputGateConfig]) -> Result<UnionInputGate> {
        let cfgs: Vec<InputGateConfig> = cfgs
            .iter()
            .cloned()
            .map(|mut c| {
                c.worker = Some(self.worker);
                c
            })
            .collect();
        UnionInputGate::new(self.arena.clone(), &cfgs)
    }
}
