//! Producer liveness, seen from the gate: a producer that dies (even by SIGKILL) must turn
//! into a clear error for its consumer, not a hang, and not before the consumer read what
//! the producer left.
//!
//! ```text
//!  every liveness interval while the gate waits (and when asked by a union gate):
//!    for each unfinished local channel: producer dead?  (a reclaimer marked the channel
//!        PRODUCER_DIED, or its worker slot's liveness record says Dead)
//!      - input left: queue the channel and look again (at most 3 looks without progress)
//!      - nothing left: declare the worker dead, reclaim it (the first live process to
//!        notice does), mark its partition FAILED, and fail with PeerDied
//! ```
//!
//! State: per local channel, `dead_progress` and `dead_looks` (`LocalChannel`); the
//! gate's `LivenessProbe` says when a check is due.

use super::channel::ChannelState;
use super::single::SingleInputGate;
use crate::error::{Error, Result};
use crate::memory::liveness::{self, Liveness};
use crate::sync::Ordering;

impl SingleInputGate {
    /// Fails with [`Error::PeerDied`] if the producer of an unfinished channel with
    /// nothing left to read died.
    pub(super) fn check_producers(&mut self) -> Result<()> {
        let mut memo = liveness::LivenessMemo::new();
        for i in 0..self.channels.len() {
            let ch = &mut self.channels[i];
            if ch.state == ChannelState::Finished {
                continue;
            }
            let (state, queued) = (ch.state, ch.queued);
            let Some(l) = ch.local_mut() else { continue };
            let block = l.reader.channel().block();
            let w = block.producer_worker();
            // Acquire: pairs with the reclaimer's AcqRel CAS to PRODUCER_DIED (the pid
            // stored before it).
            let st = block.state();
            // A producer that failed and then died counts as failed (ordered by the Acquire
            // above).
            if st == crate::memory::CHANNEL_PRODUCER_FAILED
                || (st == crate::memory::CHANNEL_PRODUCER_DIED && block.failed_before_death())
            {
                // The producer failed its partition, and may have exited since: reading the
                // channel reports ProducerFailed (the cause), not the exit that followed it.
                if !queued && state == ChannelState::Active {
                    self.channels[i].queued = true;
                    self.ready.push_back(i as u32);
                }
                continue;
            }
            let dead = if st == crate::memory::CHANNEL_PRODUCER_DIED {
                // A reclaimer found the producer dead (its slot may be free again by now).
                // Ordered by the Acquire above.
                Some(block.dead_peer())
            } else if let Some(Liveness::Dead { pid }) = w.map(|w| memo.liveness(&self.arena, w)) {
                Some(pid)
            } else {
                None
            };
            let Some(pid) = dead else { continue };
            // Read what it left first: queue the channel, and report the death only once a
            // few looks in a row found it dead with no progress made.
            if l.reader.records != l.dead_progress {
                l.dead_progress = l.reader.records;
                l.dead_looks = 0;
            }
            if l.dead_looks < 3 && l.reader.has_input()? {
                l.dead_looks += 1;
                if !queued && state == ChannelState::Active {
                    self.channels[i].queued = true;
                    self.ready.push_back(i as u32);
                }
                continue;
            }
            if let (false, Some(w)) = (st == crate::memory::CHANNEL_PRODUCER_DIED, w) {
                liveness::declare_dead(&self.arena, w);
                // The first live process to notice reclaims it (exactly once).
                crate::partition::reclaim::reclaim_slot(&self.arena, w);
            }
            // Bookkeeping written before publication.
            let (p, sp) = l.reader.channel().block().origin();
            self.fail_partition_of_dead(p, pid);
            return Err(Error::PeerDied {
                role: "producer",
                place: format!("partition slot {p} subpartition {sp} (gate channel {i})"),
                pid,
            });
        }
        Ok(())
    }

    /// The partition in directory slot `p` of dead producer `pid` is failed: later lookups
    /// say so (unless its reclamation released the entry already).
    fn fail_partition_of_dead(&self, p: u32, pid: u32) {
        // Relaxed: the entry's producer pid, compared so that an entry reused by a new
        // partition since is left alone.
        if let Some(e) =
            self.arena.partitions().get(p as usize).filter(|e| e.producer_pid.load(Ordering::Relaxed) == pid)
        {
            for from in [crate::partition::PARTITION_REGISTERED, crate::partition::PARTITION_FINISHED] {
                // AcqRel: as `set_state`'s Release (pairs with lookups' Acquire); only an
                // entry still in use is marked.
                let _ = e.state.compare_exchange(
                    from,
                    crate::partition::PARTITION_FAILED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }
}
