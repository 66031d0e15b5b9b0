//! The ResultPartitionManager: a directory of partitions inside the arena, so a consumer in
//! any process finds a partition by its id without asking the producer.
//!
//! ```text
//!  PartitionEntry.state: FREE -> CLAIMED (producer fills it in) -> REGISTERED (Release)
//!                        -> FINISHED -> RELEASED            (or FAILED at any point)
//!  lookup: Acquire-load state, read the id, re-check state (an entry being reused changes
//!          it), validate every field against the arena's limits.
//! ```
//!
//! It also hands out channel blocks (contiguous runs, claimed with CAS per block) and gate
//! blocks (used as notify sets).

use super::types::{ResultPartitionId, ResultPartitionType};
use crate::error::{ConfigError, Error, Result};
use crate::memory::{
    channel_probing, Arena, PartitionEntry, CHANNEL_CLAIMED, CHANNEL_CLOSED, CHANNEL_FREE, CHANNEL_PROBING_BY,
};
use crate::ring::NotifySet;
use crate::sync::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Entry unused.
pub const PARTITION_FREE: u32 = 0;
/// Entry claimed by a producer filling it in (an unknown one; a producer writes
/// [`PARTITION_CLAIMED_BY`] with its pid).
pub const PARTITION_CLAIMED: u32 = 1;
/// Flag of an entry's state: `PARTITION_CLAIMED_BY | pid` is an entry process `pid` is
/// filling in (claim and claimer in one CAS, for the reclamation of a dead claimer).
pub const PARTITION_CLAIMED_BY: u32 = 1 << 30;
/// Partition registered: consumers may attach.
pub const PARTITION_REGISTERED: u32 = 2;
/// Producer finished writing.
pub const PARTITION_FINISHED: u32 = 3;
/// Partition released.
pub const PARTITION_RELEASED: u32 = 4;
/// Producer failed.
pub const PARTITION_FAILED: u32 = 5;

/// Gate block unused.
pub const GATE_FREE: u32 = 0;
/// Gate block in use (by a process not known; a claimer writes [`GATE_OWNED_BY`] with its
/// pid).
pub const GATE_OPEN: u32 = 1;
/// Flag of a gate block's state: `GATE_OWNED_BY | pid` is a block process `pid` uses.
pub const GATE_OWNED_BY: u32 = 1 << 30;

/// What a consumer learns about a registered partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Directory slot.
    pub slot: u32,
    /// The type.
    pub partition_type: ResultPartitionType,
    /// Number of subpartitions.
    pub num_subpartitions: u32,
    /// Channel block of subpartition 0; subpartition i uses `first_channel + i`.
    pub first_channel: u32,
    /// Directory state when looked up.
    pub state: u32,
}

/// Flink's partition request backoff: how long a consumer keeps asking for a partition
/// that is not registered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBackoff {
    /// First pause (Flink: taskmanager.network.request-backoff.initial, 100 ms).
    pub initial: Duration,
    /// Longest pause; the request fails once a pause would exceed it (Flink: 10 s).
    pub max: Duration,
}

impl Default for RequestBackoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(10) }
    }
}

/// The directory, over an arena.
#[derive(Debug, Clone)]
pub struct ResultPartitionManager {
    arena: Arc<Arena>,
}

fn id_of(e: &PartitionEntry) -> ResultPartitionId {
    // Relaxed (both): read between two Acquire loads of the state (see `lookup_once`).
    ResultPartitionId::new(e.id[0].load(Ordering::Relaxed), e.id[1].load(Ordering::Relaxed))
}

impl ResultPartitionManager {
    /// The directory of `arena`.
    pub fn new(arena: Arc<Arena>) -> Self {
        Self { arena }
    }

    /// The arena.
    pub fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }

    /// Claims a directory entry for `id` (state CLAIMED). Reuses a released entry when no
    /// free one is left.
    ///
    /// # Errors
    /// [`Error::OutOfSlots`] when the directory is full; [`Error::PartitionExists`] if `id`
    /// is already registered and neither released nor failed.
    pub fn claim_entry(&self, id: ResultPartitionId) -> Result<u32> {
        if let Ok(Some(info)) = self.find(id) {
            if info.state != PARTITION_RELEASED && info.state != PARTITION_FAILED {
                return Err(Error::PartitionExists(id.to_string()));
            }
        }
        for from in [PARTITION_FREE, PARTITION_RELEASED, PARTITION_FAILED] {
            for (i, e) in self.arena.partitions().iter().enumerate() {
                // A failed entry is reused only once its producer is gone (a live one may
                // still release it).
                // Relaxed: the claimer's pid, a hint; the CAS below decides.
                if from == PARTITION_FAILED
                    && crate::memory::liveness::pid_running(e.producer_pid.load(Ordering::Relaxed))
                {
                    continue;
                }
                // Acquire on success: we take over the entry after its previous user's last
                // writes. Relaxed on failure: we just move on.
                let claimed = PARTITION_CLAIMED_BY | std::process::id();
                if e.state.compare_exchange(from, claimed, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    // Relaxed (both): published by the Release store of REGISTERED.
                    e.id[0].store(id.partition, Ordering::Relaxed);
                    e.id[1].store(id.attempt, Ordering::Relaxed);
                    // Relaxed: the consumer-done count of blocking partitions, published
                    // by the Release store of REGISTERED like the id.
                    e.reserved.store(0, Ordering::Relaxed);
                    // Relaxed: who claimed it, for the reclamation of a dead producer
                    // (read only once this process is gone).
                    e.producer_pid.store(std::process::id(), Ordering::Relaxed);
                    return Ok(i as u32);
                }
            }
        }
        Err(Error::OutOfSlots("partition directory entry"))
    }

    /// Fills in and publishes entry `slot` (claimed by us).
    pub fn publish(&self, slot: u32, ptype: ResultPartitionType, num_subpartitions: u32, first_channel: u32) {
        let e = &self.arena.partitions()[slot as usize];
        // Relaxed (all): published by the Release store below.
        e.partition_type.store(ptype.code(), Ordering::Relaxed);
        e.num_subpartitions.store(num_subpartitions, Ordering::Relaxed);
        e.first_channel.store(first_channel, Ordering::Relaxed);
        e.producer_pid.store(std::process::id(), Ordering::Relaxed);
        // Release: pairs with the Acquire load in `lookup_once`; publishes the fields above
        // and the channel blocks the producer set up.
        e.state.store(PARTITION_REGISTERED, Ordering::Release);
    }

    /// Sets entry `slot`'s state (FINISHED, RELEASED, FAILED).
    pub fn set_state(&self, slot: u32, state: u32) {
        if let Some(e) = self.arena.partitions().get(slot as usize) {
            // Release: pairs with the Acquire load in `lookup_once`.
            e.state.store(state, Ordering::Release);
        }
    }

    /// Counts one consumer that finished reading a subpartition of the blocking partition
    /// in entry `slot`; returns the count including this one.
    pub fn consumer_done(&self, slot: u32) -> u32 {
        self.arena.partitions().get(slot as usize).map_or(0, |e| {
            // AcqRel: pairs with the other consumers' AcqRel increments, so the one that
            // sees the last count sees every other consumer's reads done before it
            // releases the partition.
            // Wrapping: the word is shared, and a peer's garbage must not panic us (a wrong
            // count only means the partition is not released by this count).
            e.reserved.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
        })
    }

    /// Looks `id` up once.
    ///
    /// # Errors
    /// [`Error::PartitionNotFound`], [`Error::PartitionReleased`], or
    /// [`Error::ProtocolViolation`] for an entry whose fields break the arena's limits.
    pub fn lookup_once(&self, id: ResultPartitionId) -> Result<PartitionInfo> {
        self.find(id)?.ok_or_else(|| Error::PartitionNotFound(id.to_string()))
    }

    /// [`Self::lookup_once`], with "not registered" as `Ok(None)`: no error value is built
    /// while a consumer waits for its producer.
    fn find(&self, id: ResultPartitionId) -> Result<Option<PartitionInfo>> {
        let cfg = self.arena.config();
        for (i, e) in self.arena.partitions().iter().enumerate() {
            // Acquire: pairs with the Release store in `publish` / `set_state`.
            let state = e.state.load(Ordering::Acquire);
            if !(PARTITION_REGISTERED..=PARTITION_FAILED).contains(&state) || id_of(e) != id {
                continue;
            }
            // Relaxed (all): ordered by the Acquire load above.
            let ptype = e.partition_type.load(Ordering::Relaxed);
            let n = e.num_subpartitions.load(Ordering::Relaxed);
            let first = e.first_channel.load(Ordering::Relaxed);
            // Acquire: the entry may have been reused while we read it.
            if e.state.load(Ordering::Acquire) != state || id_of(e) != id {
                continue;
            }
            if state == PARTITION_RELEASED {
                return Err(Error::PartitionReleased(id.to_string()));
            }
            if state == PARTITION_FAILED {
                return Err(Error::PartitionFailed(id.to_string()));
            }
            let place = format!("partition directory entry {i}");
            let Some(partition_type) = ResultPartitionType::from_code(ptype) else {
                return Err(Error::ProtocolViolation { place, detail: format!("unknown partition type {ptype}") });
            };
            if n == 0 || u64::from(first) + u64::from(n) > u64::from(cfg.max_channels) {
                return Err(Error::ProtocolViolation {
                    place,
                    detail: format!(
                        "channels {first}..{} outside 0..{}",
                        u64::from(first) + u64::from(n),
                        cfg.max_channels
                    ),
                });
            }
            return Ok(Some(PartitionInfo {
                slot: i as u32,
                partition_type,
                num_subpartitions: n,
                first_channel: first,
                state,
            }));
        }
        Ok(None)
    }

    /// Looks `id` up, retrying with exponential backoff while it is not registered yet
    /// (Flink's partition request backoff).
    ///
    /// # Errors
    /// [`Error::PartitionNotFound`] once the backoff runs out; other errors at once.
    pub fn lookup(&self, id: ResultPartitionId, backoff: RequestBackoff) -> Result<PartitionInfo> {
        let mut pause = backoff.initial;
        loop {
            match self.find(id)? {
                Some(info) => return Ok(info),
                None if pause <= backoff.max => {
                    std::thread::sleep(pause);
                    pause = if pause.is_zero() { Duration::from_millis(1) } else { pause * 2 };
                }
                None => return Err(Error::PartitionNotFound(id.to_string())),
            }
        }
    }

    /// Claims `n` contiguous channel blocks and resets them; returns the first.
    ///
    /// First fit, without a lock: a scan holds the blocks of the run it tries (PROBING).
    /// A scan that meets a block another scan holds waits for it to settle (claimed or
    /// handed back, for at most half a second) instead of skipping it: skipping made
    /// concurrent creators leave gaps, so partitions created at once in an arena sized for
    /// exactly them could fail with enough blocks free. A scan only ever waits for a block
    /// above the ones it holds, so two scans cannot wait for each other.
    ///
    /// # Errors
    /// [`Error::OutOfSlots`] when no run of `n` free blocks exists.
    pub fn claim_channels(&self, n: u32) -> Result<u32> {
        /// How long a scan waits for another scan's block (a scanner descheduled mid-run
        /// holds its blocks until it runs again).
        const PATIENCE: Duration = Duration::from_millis(500);
        let deadline = crate::sync::now_nanos() + PATIENCE.as_nanos() as u64;
        self.claim_channels_until(n as usize, deadline).ok_or(Error::OutOfSlots("run of channel blocks"))
    }

    fn claim_channels_until(&self, n: usize, deadline: u64) -> Option<u32> {
        let blocks = self.arena.channels();
        let mut start = 0;
        'outer: while start + n <= blocks.len() {
            let run = start..start + n;
            for j in run {
                let block = &blocks[j];
                loop {
                    // Acquire on success: after the previous user's last writes to the block.
                    let probing = CHANNEL_PROBING_BY | std::process::id();
                    let ok = block.try_claim(CHANNEL_FREE, probing).is_ok()
                        || block.try_claim(CHANNEL_CLOSED, probing).is_ok();
                    if ok {
                        // Who holds the block, for the reclamation of a dead claimer
                        // (read only once this process is gone).
                        block.record_claimer(std::process::id());
                        break;
                    }
                    // Relaxed: only decides whether to wait; the CAS above synchronizes.
                    if channel_probing(block.peek_state()) && crate::sync::now_nanos() < deadline {
                        crate::sync::yield_now();
                        continue;
                    }
                    for b in &blocks[start..j] {
                        // Release: hands the block back unchanged.
                        b.publish_state(CHANNEL_FREE);
                    }
                    start = j + 1;
                    continue 'outer;
                }
            }
            for b in &blocks[start..start + n] {
                b.reset();
                // Release: the run is ours (PROBING); publishes the claimer pid to a reclaimer
                // that Acquires the state (the partition's publication orders the rest).
                b.publish_state(CHANNEL_CLAIMED);
            }
            return Some(start as u32);
        }
        None
    }

    /// Returns channel blocks to the free list (their segments are all back).
    pub fn release_channels(&self, first: u32, n: u32) {
        for b in self.arena.channels().iter().skip(first as usize).take(n as usize) {
            // Release: our last writes to the block happen-before the next claimer's use.
            b.publish_state(CHANNEL_CLOSED);
        }
    }

    /// Claims a gate block (a notify set), cleared; returns its id.
    ///
    /// # Errors
    /// [`Error::OutOfSlots`] when all are in use.
    pub fn claim_gate(&self, members: u32) -> Result<u32> {
        if members > self.arena.config().max_channels_per_gate {
            return Err(ConfigError::OutOfRange {
                what: "gate size in channels (the arena's max_channels_per_gate)",
                value: members.into(),
                min: 0,
                max: self.arena.config().max_channels_per_gate.into(),
            }
            .into());
        }
        for (i, g) in self.arena.gates().iter().enumerate() {
            // Acquire on success: after the previous user's release.
            let owned = GATE_OWNED_BY | std::process::id();
            if g.state.compare_exchange(GATE_FREE, owned, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                NotifySet::new(&self.arena, i as u32)?.reset();
                // Relaxed (all): bookkeeping for tools, published with the gate's channels.
                g.num_channels.store(members, Ordering::Relaxed);
                g.credit_capacity.store(0, Ordering::Relaxed);
                g.consumer_task.store(0, Ordering::Relaxed);
                return Ok(i as u32);
            }
        }
        Err(Error::OutOfSlots("gate block"))
    }

    /// Returns a gate block.
    pub fn release_gate(&self, id: u32) {
        if let Some(g) = self.arena.gates().get(id as usize) {
            // Release: our last use happens-before the next claimer's.
            g.state.store(GATE_FREE, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ArenaConfig;

    #[test]
    fn a_garbage_consumer_count_does_not_panic() {
        let arena = Arc::new(Arena::heap(&ArenaConfig { segment_count: 16, ..ArenaConfig::default() }).unwrap());
        let m = ResultPartitionManager::new(arena.clone());
        // Relaxed: single-threaded test; a peer's scribble on the shared word.
        arena.partitions()[0].reserved.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(m.consumer_done(0), 0, "the count wraps instead of panicking");
        assert_eq!(m.consumer_done(u32::MAX), 0, "a slot beyond the directory counts nothing");
    }
}
