//! Channel selectors (Flink's StreamPartitioners): which subpartition a record goes to.

use crate::error::{Error, Result};

/// Chooses the channel (subpartition) of each record.
pub trait ChannelSelector<R: ?Sized> {
    /// Called once with the number of channels before any record.
    fn setup(&mut self, num_channels: u32);
    /// The channel of `record`, in `0..num_channels`.
    fn select_channel(&mut self, record: &R) -> u32;
    /// Whether every record goes to every channel.
    fn is_broadcast(&self) -> bool {
        false
    }
}

impl<R: ?Sized, S: ChannelSelector<R> + ?Sized> ChannelSelector<R> for Box<S> {
    fn setup(&mut self, n: u32) {
        (**self).setup(n)
    }
    fn select_channel(&mut self, record: &R) -> u32 {
        (**self).select_channel(record)
    }
    fn is_broadcast(&self) -> bool {
        (**self).is_broadcast()
    }
}

/// Everything to channel 0: one-to-one connections (Flink's ForwardPartitioner).
#[derive(Debug, Default, Clone)]
pub struct ForwardPartitioner;

impl<R: ?Sized> ChannelSelector<R> for ForwardPartitioner {
    fn setup(&mut self, _: u32) {}
    fn select_channel(&mut self, _: &R) -> u32 {
        0
    }
}

/// Everything to channel 0: the single consumer of a global exchange (GlobalPartitioner).
#[derive(Debug, Default, Clone)]
pub struct GlobalPartitioner;

impl<R: ?Sized> ChannelSelector<R> for GlobalPartitioner {
    fn setup(&mut self, _: u32) {}
    fn select_channel(&mut self, _: &R) -> u32 {
        0
    }
}

/// Round-robin over all channels, starting at a channel derived from `seed` (Flink starts
/// at a random one; a seed keeps runs repeatable).
#[derive(Debug, Clone)]
pub struct RebalancePartitioner {
    next: u32,
    n: u32,
    seed: u64,
}

impl RebalancePartitioner {
    /// A round-robin selector whose first channel derives from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { next: 0, n: 1, seed }
    }
}

impl<R: ?Sized> ChannelSelector<R> for RebalancePartitioner {
    fn setup(&mut self, n: u32) {
        self.n = n.max(1);
        self.next = (self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32 % self.n;
    }
    fn select_channel(&mut self, _: &R) -> u32 {
        let c = self.next;
        self.next = if c + 1 == self.n { 0 } else { c + 1 };
        c
    }
}

/// Round-robin over the channels of this producer, from channel 0 (Flink's
/// RescalePartitioner; the job graph connects each producer to its subset of consumers).
#[derive(Debug, Default, Clone)]
pub struct RescalePartitioner {
    next: u32,
    n: u32,
}

impl<R: ?Sized> ChannelSelector<R> for RescalePartitioner {
    fn setup(&mut self, n: u32) {
        self.n = n.max(1);
        self.next = 0;
    }
    fn select_channel(&mut self, _: &R) -> u32 {
        let c = self.next;
        self.next = if c + 1 == self.n { 0 } else { c + 1 };
        c
    }
}

/// Every record to every channel (BroadcastPartitioner); the record writer serializes it
/// once into a segment all channels read.
#[derive(Debug, Default, Clone)]
pub struct BroadcastPartitioner;

impl<R: ?Sized> ChannelSelector<R> for BroadcastPartitioner {
    fn setup(&mut self, _: u32) {}
    fn select_channel(&mut self, _: &R) -> u32 {
        0
    }
    fn is_broadcast(&self) -> bool {
        true
    }
}

/// Flink's default max parallelism for key groups in these examples.
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;

/// Flink's `MathUtils.murmurHash(int)`: the finalizer Flink applies to a key's hashCode
/// before taking it modulo the max parallelism.
pub fn flink_murmur_hash(code: i32) -> i32 {
    let mut h = code.wrapping_mul(0xcc9e_2d51_u32 as i32);
    h = h.rotate_left(15);
    h = h.wrapping_mul(0x1b87_3593);
    h = h.rotate_left(13);
    h = h.wrapping_mul(5).wrapping_add(0xe654_6b64_u32 as i32);
    h ^= 4;
    // bitMix
    h ^= ((h as u32) >> 16) as i32;
    h = h.wrapping_mul(0x85eb_ca6b_u32 as i32);
    h ^= ((h as u32) >> 13) as i32;
    h = h.wrapping_mul(0xc2b2_ae35_u32 as i32);
    h ^= ((h as u32) >> 16) as i32;
    if h >= 0 {
        h
    } else if h != i32::MIN {
        -h
    } else {
        0
    }
}

/// Flink's `KeyGroupRangeAssignment.assignToKeyGroup` for a key whose Java hashCode is
/// `key_hash`.
pub fn key_group_for_hash(key_hash: i32, max_parallelism: u32) -> u32 {
    flink_murmur_hash(key_hash) as u32 % max_parallelism
}

/// Flink's `computeOperatorIndexForKeyGroup`.
pub fn operator_index_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// Routes by key: key hash -> key group -> channel, exactly as Flink's
/// KeyGroupStreamPartitioner, given a function returning the key's Java `hashCode`
/// (see [`crate::record::java_string_hash`] for string keys).
#[derive(Clone)]
pub struct KeyGroupPartitioner<F> {
    key_hash: F,
    max_parallelism: u32,
    n: u32,
}

impl<F> std::fmt::Debug for KeyGroupPartitioner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyGroupPartitioner(max parallelism {})", self.max_parallelism)
    }
}

impl<F> KeyGroupPartitioner<F> {
    /// A key-group selector over `max_parallelism` key groups.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a max parallelism of 0 or above 32768 (Flink's bound).
    pub fn new(key_hash: F, max_parallelism: u32) -> Result<Self> {
        if max_parallelism == 0 || max_parallelism > 1 << 15 {
            return Err(Error::Invalid {
                what: "max parallelism",
                detail: format!("{max_parallelism} not in 1..=32768"),
            });
        }
        Ok(Self { key_hash, max_parallelism, n: 1 })
    }
}

impl<R: ?Sized, F: FnMut(&R) -> i32> ChannelSelector<R> for KeyGroupPartitioner<F> {
    fn setup(&mut self, n: u32) {
        self.n = n.max(1);
    }
    fn select_channel(&mut self, record: &R) -> u32 {
        let kg = key_group_for_hash((self.key_hash)(record), self.max_parallelism);
        operator_index_for_key_group(self.max_parallelism, self.n, kg)
    }
}

/// The selectors by name, for configuration and the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectorKind {
    /// [`ForwardPartitioner`].
    Forward,
    /// [`RebalancePartitioner`].
    Rebalance,
    /// [`RescalePartitioner`].
    Rescale,
    /// [`KeyGroupPartitioner`].
    KeyHash,
    /// [`BroadcastPartitioner`].
    Broadcast,
    /// [`GlobalPartitioner`].
    Global,
}

impl std::str::FromStr for SelectorKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "forward" => Self::Forward,
            "rebalance" | "round-robin" => Self::Rebalance,
            "rescale" => Self::Rescale,
            "key-hash" | "keyhash" | "hash" | "key-group" => Self::KeyHash,
            "broadcast" => Self::Broadcast,
            "global" => Self::Global,
            _ => {
                return Err(Error::Invalid {
                    what: "selector",
                    detail: format!(
                        "unknown selector {s:?} (forward, rebalance, rescale, key-hash, broadcast, global)"
                    ),
                })
            }
        })
    }
}
