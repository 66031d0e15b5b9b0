//! A producer's quota of segments (Flink's LocalBufferPool).
//!
//! The pool is process-local: the producer task owns it. Segments leave it for a
//! [`BufferBuilder`](super::BufferBuilder), travel to readers (maybe in other processes)
//! and come back by index through a [`RecycleSource`] (the credit rings), which the pool
//! checks against its own record of what it handed out, so a peer cannot make it recycle a
//! segment twice or take one it never owned.
//!
//! Exhaustion is backpressure: [`LocalBufferPool::request_blocking`] parks on the
//! source's wake-up until a reader recycles something.

use super::network_pool::NetworkBufferPool;
use crate::error::{ConfigError, Error, Result};
use crate::memory::{Arena, MemorySegment, Owner, FINISHED};
use crate::sync::{EventCount, Ordering, WaitOutcome, Waiter};
use std::sync::Arc;
use std::time::Duration;

/// Sizes of a [`LocalBufferPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPoolConfig {
    /// Segments drawn from the network pool at creation and kept until the pool drops.
    pub min: u32,
    /// The most segments the pool may hold (cached plus handed out).
    pub max: u32,
    /// The most segments one channel may hold at once (Flink's max-buffers-per-channel).
    pub max_per_channel: u32,
    /// Number of channels the pool serves.
    pub channels: u32,
}

/// Where recycled segments come back from, and the wake-up that announces them.
pub trait RecycleSource {
    /// Moves every segment that came back into `pool` (with
    /// [`LocalBufferPool::recycle_index`]); returns how many.
    ///
    /// # Errors
    /// A protocol violation or a failed peer.
    fn reclaim(&mut self, pool: &mut LocalBufferPool) -> Result<usize>;

    /// The event count that is notified after something comes back. It must live in the
    /// arena (not inside the source), since it is used while the source is borrowed.
    fn wake(&self) -> &EventCount;
}

/// Releases still expected for a broadcast segment.
#[derive(Debug, Clone, Copy)]
struct Shares {
    /// Readers that have not released it, in `1..=fanout`.
    left: u32,
    /// A reader reported that its release took the refcount to zero.
    last_seen: bool,
    /// A release was taken for a dead reader (the refcount may be one off).
    lenient: bool,
}

/// A quota of segments drawn from the [`NetworkBufferPool`].
///
/// Dropping it returns the segments it holds available to the arena-wide free stack;
/// segments it handed out stay with their holders (builders, consumers) until released.
pub struct LocalBufferPool {
    global: NetworkBufferPool,
    id: u32,
    worker: u32,
    config: LocalPoolConfig,
    available: std::collections::VecDeque<MemorySegment>,
    /// Bit i set: segment i is handed out by this pool and not back yet.
    outstanding: Vec<u64>,
    outstanding_count: u32,
    per_channel: Vec<u32>,
    /// Channel each outstanding segment was requested for (absent: no channel).
    by_channel: std::collections::HashMap<u32, u32>,
    /// Outstanding segments whose last reader let go before their writer finished them (a
    /// consumer that left mid-segment): they come back once finished, never while written.
    deferred: Vec<u32>,
    /// Segments published on more than one channel (broadcast): releases still to come,
    /// and whether the reader that took the refcount to zero was among those seen.
    shares: std::collections::HashMap<u32, Shares>,
    /// Nanoseconds spent blocked in `request_blocking` (back-pressured time).
    pub blocked_ns: u64,
}

impl std::fmt::Debug for LocalBufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBufferPool")
            .field("id", &self.id)
            .field("config", &self.config)
            .field("available", &self.available.len())
            .field("outstanding", &self.outstanding_count)
            .finish()
    }
}

impl LocalBufferPool {
    /// Creates a pool with id `id` for worker slot `worker`, drawing `min` segments now.
    ///
    /// # Errors
    /// [`Error::PoolExhausted`] if the network pool cannot supply `min` segments (they are
    /// returned); [`ConfigError::Conflict`] for bounds that contradict each other.
    pub fn new(arena: Arc<Arena>, id: u32, worker: u32, config: LocalPoolConfig) -> Result<Self> {
        if config.min > config.max || config.max == 0 || config.max_per_channel == 0 {
            return Err(ConfigError::Conflict {
                what: "local pool config",
                detail: format!("needs 0 < min <= max and max_per_channel > 0, got {config:?}"),
            }
            .into());
        }
        let words = (arena.segment_count() as usize).div_ceil(64);
        let mut pool = Self {
            global: NetworkBufferPool::new(arena),
            id,
            worker,
            config,
            available: std::collections::VecDeque::with_capacity(config.max as usize),
            outstanding: vec![0; words],
            outstanding_count: 0,
            per_channel: vec![0; config.channels as usize],
            by_channel: std::collections::HashMap::new(),
            deferred: Vec::new(),
            shares: std::collections::HashMap::new(),
            blocked_ns: 0,
        };
        for _ in 0..config.min {
            match pool.global.request(Owner::Pool { pool: id, worker }, id + 1)? {
                Some(s) => pool.available.push_back(s),
                None => return Err(Error::PoolExhausted),
            }
        }
        Ok(pool)
    }

    /// The arena.
    pub fn arena(&self) -> &Arc<Arena> {
        self.global.arena()
    }

    /// The pool id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The configuration.
    pub fn config(&self) -> LocalPoolConfig {
        self.config
    }

    /// Segments the pool holds: cached plus handed out.
    pub fn size(&self) -> u32 {
        self.available.len() as u32 + self.outstanding_count
    }

    /// Segments handed out and not back yet.
    pub fn outstanding(&self) -> u32 {
        self.outstanding_count
    }

    /// Segments handed out for `channel`.
    pub fn outstanding_for(&self, channel: u32) -> u32 {
        self.per_channel.get(channel as usize).copied().unwrap_or(0)
    }

    /// Flink's outPoolUsage: handed-out segments over the quota, in `0.0..=1.0`.
    pub fn usage(&self) -> f64 {
        f64::from(self.outstanding_count) / f64::from(self.config.max)
    }

    /// Takes a segment for `channel` (or for no channel in particular, e.g. broadcast)
    /// without blocking. `Ok(None)` means backpressure: the quota or the channel's share
    /// is used up, or the network pool is empty.
    ///
    /// # Errors
    /// A corrupt network pool.
    pub fn request(&mut self, channel: Option<u32>) -> Result<Option<MemorySegment>> {
        if !self.deferred.is_empty() {
            self.recycle_deferred();
        }
        if let Some(c) = channel {
            match self.per_channel.get(c as usize) {
                Some(&n) if n >= self.config.max_per_channel => return Ok(None),
                Some(_) => {}
                None => {
                    return Err(Error::ProtocolViolation {
                        place: format!("local buffer pool {}", self.id),
                        detail: format!("channel {c} outside 0..{}", self.config.channels),
                    })
                }
            }
        }
        let seg = match self.available.pop_front() {
            Some(s) => s,
            None if self.size() < self.config.max => {
                match self.global.request(Owner::Pool { pool: self.id, worker: self.worker }, self.id + 1)? {
                    Some(s) => s,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let i = seg.index() as usize;
        self.outstanding[i / 64] |= 1 << (i % 64);
        self.outstanding_count += 1;
        if let Some(c) = channel {
            self.per_channel[c as usize] += 1;
            self.by_channel.insert(seg.index(), c);
        }
        Ok(Some(seg))
    }

    /// Takes a segment, parking on `source`'s wake-up until one is recycled; reclaims from
    /// `source` before each try. Time spent here is added to `blocked_ns`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`, or whatever `source` reports (a failed peer).
    pub fn request_blocking(
        &mut self,
        channel: Option<u32>,
        source: &mut dyn RecycleSource,
        waiter: &mut Waiter,
        timeout: Option<Duration>,
    ) -> Result<MemorySegment> {
        if let Some(s) = self.request(channel)? {
            return Ok(s);
        }
        let start = crate::sync::now_nanos();
        // The wake-up lives in the arena, which outlives this call; take it through our
        // own Arc so `source` stays free to borrow mutably inside the poll.
        let arena = self.arena().clone();
        let wake: *const EventCount = source.wake();
        // SAFETY: `wake` points into the arena (or into `source`, which outlives this
        // call and is not moved), kept alive by `arena`/`source` for the whole wait.
        let wake = unsafe { &*wake };
        let outcome = waiter.wait(wake, timeout, || {
            let r: Result<Option<MemorySegment>> = (|| {
                source.reclaim(self)?;
                self.request(channel)
            })();
            match r {
                Ok(None) => None,
                Ok(Some(s)) => Some(Ok(s)),
                Err(e) => Some(Err(e)),
            }
        });
        drop(arena);
        self.blocked_ns += crate::sync::now_nanos().saturating_sub(start);
        match outcome {
            WaitOutcome::Ready(r) => r,
            WaitOutcome::TimedOut => Err(Error::Timeout(timeout.unwrap_or_default(), "a buffer from the local pool")),
        }
    }

    /// Takes back segment `index` that this pool handed out, after its last reader
    /// released it. The index came from shared memory and
    /// is checked: a segment this pool does not have outstanding is a protocol violation.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for an index out of range or not outstanding here.
    pub fn recycle_index(&mut self, index: u32) -> Result<()> {
        let i = index as usize;
        if index >= self.arena().segment_count() || self.outstanding[i / 64] & (1 << (i % 64)) == 0 {
            return Err(Error::ProtocolViolation {
                place: format!("local buffer pool {}", self.id),
                detail: format!("recycled segment {index} is not one this pool handed out"),
            });
        }
        if !self.is_finished(index) {
            // Its writer still writes into it: handing it out again now would give it a
            // second writer (and another channel's reader the first one's bytes).
            if !self.deferred.contains(&index) {
                self.deferred.push(index);
            }
            return Ok(());
        }
        self.recycle_finished(index);
        Ok(())
    }

    fn is_finished(&self, index: u32) -> bool {
        // Acquire: pairs with the Release store of FINISHED in `BufferBuilder::finish` (by
        // this pool's writer), so reuse comes after its last write.
        self.arena().controls()[index as usize].position.load(Ordering::Acquire) & FINISHED != 0
    }

    /// Recycles the deferred segments whose writer has finished them since.
    fn recycle_deferred(&mut self) {
        let mut i = 0;
        while i < self.deferred.len() {
            let index = self.deferred[i];
            if self.is_finished(index) {
                self.deferred.swap_remove(i);
                self.recycle_finished(index);
            } else {
                i += 1;
            }
        }
    }

    /// Takes back outstanding segment `index`, which no reader or writer uses any more.
    fn recycle_finished(&mut self, index: u32) {
        let i = index as usize;
        self.outstanding[i / 64] &= !(1 << (i % 64));
        self.outstanding_count -= 1;
        self.uncount_channel(index);
        // SAFETY: the bit proved the segment was handed out by this pool and not returned
        // yet; the recycle message said its last reader is done with it, and its FINISHED
        // bit that its writer is.
        let seg = unsafe { MemorySegment::from_index(self.arena().clone(), index) };
        let ctl = &self.arena().controls()[i];
        // Relaxed: bookkeeping, published at the next hand-over.
        ctl.owner.store(Owner::Pool { pool: self.id, worker: self.worker }.pack(), crate::sync::Ordering::Relaxed);
        if self.size() > self.config.max {
            drop(seg); // the quota shrank: back to the network pool
        } else {
            self.available.push_back(seg);
        }
    }

    /// Segment `index`, handed out by this pool, was published to `readers` channels
    /// (broadcast): it comes back once each of them released it
    /// ([`release_share`](Self::release_share)). One reader needs no call.
    pub fn expect_readers(&mut self, index: u32, readers: u32) {
        if readers > 1 {
            self.shares.insert(index, Shares { left: readers, last_seen: false, lenient: false });
        }
    }

    /// One channel's reader released segment `index` (`last`: its decrement took the
    /// shared refcount to zero; `dead_reader`: the release is taken on behalf of a reader
    /// whose process died, which may or may not have decremented the refcount). The
    /// segment is recycled once every reader released it: the count this pool keeps
    /// decides, never the shared refcount, so a peer that inflates or deflates the
    /// refcount causes neither a leak nor a double free, only an error.
    ///
    /// # Errors
    /// A description of the violation (the caller names the peer): a refcount that did not
    /// reach zero with the last reader (inflated above the fanout; the segment is recycled
    /// anyway), one that reached zero twice (deflated; the segment is kept until every
    /// reader released it), or a segment this pool did not hand out.
    pub fn release_share(&mut self, index: u32, last: bool, dead_reader: bool) -> std::result::Result<(), String> {
        let mut problem = None;
        if let Some(sh) = self.shares.get_mut(&index) {
            sh.left -= 1;
            let twice = last && sh.last_seen;
            sh.last_seen |= last;
            sh.lenient |= dead_reader;
            if twice && !sh.lenient {
                // Two readers each took the count to zero: someone decremented it for a
                // reader it is not (below the fanout). Keep it until every reader released.
                problem = Some(format!("segment {index}'s refcount reached zero twice (below its fanout)"));
            }
            if sh.left > 0 {
                return problem.map_or(Ok(()), Err);
            }
            let sh = self.shares.remove(&index).expect("looked up above");
            if !sh.last_seen && !sh.lenient {
                problem = Some(format!(
                    "segment {index}'s refcount stayed above zero after all of its readers released it (above its fanout)"
                ));
            }
        } else if !last && !dead_reader {
            problem = Some(format!(
                "segment {index}'s refcount stayed above zero after its one reader released it (above its fanout of 1)"
            ));
        }
        self.recycle_index(index).map_err(|e| e.to_string())?;
        problem.map_or(Ok(()), Err)
    }

    /// Marks the handed-out segment `index` as given up for good (its reader died with
    /// it and recovery returned it to the network pool directly).
    pub fn forget_outstanding(&mut self, index: u32) {
        let i = index as usize;
        if i / 64 < self.outstanding.len() && self.outstanding[i / 64] & (1 << (i % 64)) != 0 {
            self.deferred.retain(|&s| s != index);
            self.shares.remove(&index);
            self.outstanding[i / 64] &= !(1 << (i % 64));
            self.outstanding_count -= 1;
            self.uncount_channel(index);
        }
    }

    fn uncount_channel(&mut self, index: u32) {
        if let Some(c) = self.by_channel.remove(&index) {
            if let Some(n) = self.per_channel.get_mut(c as usize) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Changes the quota; segments above a smaller `max` go back to the network pool as
    /// they come back.
    pub fn set_max(&mut self, max: u32) {
        self.config.max = max.max(self.config.min).max(1);
        while self.size() > self.config.max {
            if self.available.pop_back().is_none() {
                break;
            }
        }
    }
}
