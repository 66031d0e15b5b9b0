//! Floating credit (Flink's BufferManager): besides its exclusive credits (granted once,
//! when the gate opens the channel), each channel may get floating credits from a pool
//! the gate shares among its channels, granted to producers that say they are blocked for
//! want of credit, largest backlog first.
//!
//! ```text
//!  producer blocked: ChannelBlock::set_credit_wanted(true), marks the gate's notify set
//!  gate collects marks -> want(c) -> grant(): by backlog, one credit per wanting channel
//!                                   while the pool has any; the rest stay wanting
//!  pool empty and someone still wants: take the floating credits back from channels that
//!      ran dry and do not want (revoke: they return as those channels' segments are
//!      released, through the channel's CreditReturn into `free`)
//!  EndOfPartition on a channel: its floating credits return to the pool at once
//! ```
//!
//! State ([`FloatingCredits`]): `free`, the pool's count, shared with every channel's
//! `CreditReturn` (a revoked credit comes back into it when its segment is released);
//! `held[c]`, the floating credits channel `c` holds; `wanting`, channels whose producer
//! asked and got none yet; and scratch lists kept so the per-segment path allocates nothing.

use super::channel::{ChannelState, InputChannel};
use crate::error::Result;
use std::cell::Cell;
use std::cmp::Reverse;
use std::rc::Rc;

/// The gate's floating credits.
#[derive(Debug)]
pub(super) struct FloatingCredits {
    /// Credits in the pool, not held by any channel (shared with the channels'
    /// `CreditReturn`s, which put revoked credits back).
    free: Rc<Cell<u32>>,
    /// Floating credits each channel holds.
    held: Vec<u32>,
    /// Channels whose producers want credit (may hold duplicates until `grant` sorts).
    wanting: Vec<u32>,
    /// Scratch lists of `grant`.
    by_backlog: Vec<(Reverse<u32>, u32)>,
    unserved: Vec<u32>,
}

impl FloatingCredits {
    /// A pool of `total` floating credits for `channels` channels.
    pub(super) fn new(total: u32, channels: usize) -> Self {
        Self {
            free: Rc::new(Cell::new(total)),
            held: vec![0; channels],
            wanting: Vec::new(),
            by_backlog: Vec::new(),
            unserved: Vec::new(),
        }
    }

    /// The shared count revoked credits return to (for `ChannelReader::open_with_floating`).
    pub(super) fn pool(&self) -> Rc<Cell<u32>> {
        self.free.clone()
    }

    /// Credits not held by any channel now.
    pub(super) fn available(&self) -> u32 {
        self.free.get()
    }

    /// Floating credits channel `c` holds.
    pub(super) fn held(&self, c: usize) -> u32 {
        self.held.get(c).copied().unwrap_or(0)
    }

    /// Channel `c`'s producer wants credit.
    pub(super) fn want(&mut self, c: u32) {
        self.wanting.push(c);
    }

    /// Channel `c` ended: what it held goes back to the pool.
    pub(super) fn give_back(&mut self, c: usize) {
        let n = std::mem::take(&mut self.held[c]);
        self.free.set(self.free.get() + n);
    }

    /// Grants floating credits to channels whose producers want credit, largest backlog
    /// first. Channels left without one stay wanting, and the credits of channels that
    /// ran dry are taken back so they can be granted next.
    pub(super) fn grant(&mut self, channels: &[InputChannel]) -> Result<()> {
        if self.wanting.is_empty() {
            return Ok(());
        }
        let mut wanting = std::mem::take(&mut self.wanting);
        wanting.sort_unstable();
        wanting.dedup();
        // Each backlog is read once: producers change them while we sort, and a sort whose
        // keys move under it may panic (the order would not be total). The backlog only
        // orders our choice.
        let mut by_backlog = std::mem::take(&mut self.by_backlog);
        by_backlog.extend(
            wanting.iter().filter_map(|&c| {
                channels[c as usize].local().map(|l| (Reverse(l.reader.channel().block().backlog()), c))
            }),
        );
        by_backlog.sort_unstable();
        wanting.clear();
        wanting.extend(by_backlog.drain(..).map(|(_, c)| c));
        self.by_backlog = by_backlog;
        let mut unserved = std::mem::take(&mut self.unserved);
        for c in wanting.drain(..) {
            let ch = &channels[c as usize];
            let Some(l) = ch.local() else { continue };
            if ch.state == ChannelState::Finished || !l.reader.channel().credit_wanted() {
                continue;
            }
            if self.free.get() == 0 {
                unserved.push(c);
                continue;
            }
            l.reader.channel().grant(1)?;
            self.held[c as usize] += 1;
            self.free.set(self.free.get() - 1);
        }
        let short = !unserved.is_empty();
        // The emptied lists keep their allocations for the next round.
        wanting.append(&mut unserved);
        self.unserved = unserved;
        self.wanting = wanting;
        if short {
            self.revoke_idle(channels);
        }
        Ok(())
    }

    /// Takes the floating credits back from every channel that ran dry and whose producer
    /// does not ask for credit (they return to the pool as its segments are released).
    fn revoke_idle(&mut self, channels: &[InputChannel]) {
        for (c, ch) in channels.iter().enumerate() {
            self.revoke_from(c, ch, !ch.queued);
        }
    }

    /// Channel `c` ran dry. Its floating credits stay with it unless another channel is
    /// waiting for one and the pool has none left: taking them back at every dry moment
    /// made a fast channel fall back to its exclusive credits and stall ~40% of the time.
    pub(super) fn ran_dry(&mut self, c: usize, ch: &InputChannel) {
        if self.free.get() > 0 || self.wanting.is_empty() {
            return;
        }
        self.revoke_from(c, ch, true);
    }

    fn revoke_from(&mut self, c: usize, ch: &InputChannel, idle: bool) {
        let Some(l) = ch.local() else { return };
        if idle && self.held[c] > 0 && !l.reader.channel().credit_wanted() {
            l.reader.channel().credit_return().revoke(self.held[c]);
            self.held[c] = 0;
        }
    }
}
