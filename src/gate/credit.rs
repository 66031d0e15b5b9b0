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
//!      ran dry and do not want (revoke), then serve the wanting channels again
//!  EndOfPartition on a channel: its floating credits return to the pool at once
//! ```
//!
//! A revoke is eager for unused credit and lazy for credit in flight (`ring::floating`
//! has the protocol and why no credit is counted twice):
//!
//! ```text
//!  channel c holds held[c] = unused + in flight (its floating word, shared with the producer)
//!  revoke_from(c):  k = CreditReturn::revoke_unused(held[c])  CAS on the word: the unused
//!                       credits, which an idle channel's producer never spends, come back
//!                       now (free += k); a publish racing for one either wins it or not
//!                   CreditReturn::revoke(held[c] - k)         the in-flight rest comes back
//!                       into `free` as those segments are released
//!                   held[c] = 0
//! ```
//!
//! State ([`FloatingCredits`]): `free`, the pool's count, shared with every channel's
//! `CreditReturn` (a credit revoked in flight comes back into it when its segment is
//! released); `held[c]`, the floating credits channel `c` holds; `wanting`, channels whose
//! producer asked and got none yet; and scratch lists kept so the per-segment path
//! allocates nothing. Credits are conserved: `free + sum(held) + pending revokes` is the
//! gate's floating total at every step.

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
    /// Scratch of `revoke_idle`: the channels left wanting (false between calls).
    left_wanting: Vec<bool>,
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
            left_wanting: vec![false; channels],
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

    /// Channel `c` ended (EndOfPartition, after the producer's last publish): what it held
    /// goes back to the pool, and the channel's floating word is cleared so none of it comes
    /// back again (releases of those segments now go to the finished producer).
    pub(super) fn give_back(&mut self, c: usize, ch: &InputChannel) {
        let n = std::mem::take(&mut self.held[c]);
        if let Some(l) = ch.local() {
            // The word holds what our books say (n) unless the producer corrupted it: the
            // books decide what the pool gets.
            let _ = l.reader.channel().credit_return().end_floating();
        }
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
        self.wanting = wanting;
        if self.serve(channels)? {
            // Short: take back what idle channels hold (their unused credit at once), and
            // give it to the channels still wanting.
            self.revoke_idle(channels);
            if self.free.get() > 0 {
                self.serve(channels)?;
            }
        }
        Ok(())
    }

    /// One credit to each channel of `wanting`, in order, while the pool has any; the
    /// channels left without stay in `wanting`. Returns whether any was left without.
    fn serve(&mut self, channels: &[InputChannel]) -> Result<bool> {
        let mut wanting = std::mem::take(&mut self.wanting);
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
            l.reader.channel().credit_return().grant_floating(1)?;
            self.held[c as usize] += 1;
            self.free.set(self.free.get() - 1);
        }
        let short = !unserved.is_empty();
        // The emptied lists keep their allocations for the next round.
        wanting.append(&mut unserved);
        self.unserved = unserved;
        self.wanting = wanting;
        Ok(short)
    }

    /// Takes the floating credits back from every channel that ran dry and whose producer
    /// does not ask for credit (unused ones at once, the rest as segments are released).
    /// A channel just left wanting is skipped even if its producer stopped asking since
    /// (it was served by a release meanwhile): it would give back what it is about to use.
    fn revoke_idle(&mut self, channels: &[InputChannel]) {
        let mut left = std::mem::take(&mut self.left_wanting);
        for &c in &self.wanting {
            if let Some(w) = left.get_mut(c as usize) {
                *w = true;
            }
        }
        for (c, ch) in channels.iter().enumerate() {
            if !left.get(c).copied().unwrap_or(false) {
                self.revoke_from(c, ch, !ch.queued);
            }
        }
        for &c in &self.wanting {
            if let Some(w) = left.get_mut(c as usize) {
                *w = false;
            }
        }
        self.left_wanting = left;
    }

    /// Channel `c` ran dry. Its floating credits stay with it unless another channel is
    /// waiting for one and the pool has none left: taking them back at every dry moment
    /// made a fast channel fall back to its exclusive credits and stall ~40% of the time.
    /// (A channel's own want does not count: its producer may still say it wants credit
    /// it was just granted, and taking that back helps nobody.) What comes back at once
    /// (unused credit) goes to the wanting channels now, before their producers get
    /// exclusive credit back and stop asking.
    pub(super) fn ran_dry(&mut self, c: usize, channels: &[InputChannel]) -> Result<()> {
        if self.free.get() > 0 || self.wanting.iter().all(|&w| w as usize == c) {
            return Ok(());
        }
        let Some(ch) = channels.get(c) else { return Ok(()) };
        self.revoke_from(c, ch, true);
        if self.free.get() > 0 {
            self.serve(channels)?;
        }
        Ok(())
    }

    fn revoke_from(&mut self, c: usize, ch: &InputChannel, idle: bool) {
        let Some(l) = ch.local() else { return };
        if idle && self.held[c] > 0 && !l.reader.channel().credit_wanted() {
            let cr = l.reader.channel().credit_return();
            // Eager: the unused credits, by CAS against the producer's publish (at most
            // what the channel holds, whatever the shared word says).
            let now = cr.revoke_unused(self.held[c]);
            self.free.set(self.free.get() + now);
            // Lazy: the rest is in flight and comes back with its releases.
            cr.revoke(self.held[c] - now);
            self.held[c] = 0;
        }
    }
}
