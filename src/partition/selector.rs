//! Channel selectors (Flink's StreamPartitioners): which subpartition a record goes to.

use crate::error::{ConfigError, Error, Result};

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
#[inline]
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
#[inline]
pub fn key_group_for_hash(key_hash: i32, max_parallelism: u32) -> u32 {
    flink_murmur_hash(key_hash) as u32 % max_parallelism
}

/// Flink's `computeOperatorIndexForKeyGroup`.
#[inline]
pub fn operator_index_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// A key whose Java `hashCode` routes it exactly as Flink's key groups do: the value of
/// `hashCode()` of the equivalent boxed Java value (`Long`, `Integer`, `String`, ...).
///
/// Unsigned integers are Java's signed type of the same width and bits (`u64` is a `Long`,
/// `u8` a `Byte`), `char` is a `Character` (a code point above U+FFFF, which no Java `char`
/// holds, hashes as its `Integer`), a pair is Flink's `Tuple2` and `Option::None` is
/// `null` (0).
///
/// ```
/// use shmflow::partition::JavaHash;
/// assert_eq!(42u64.java_hash(), 42); // Long.valueOf(42).hashCode()
/// assert_eq!((-1i64).java_hash(), 0); // Long.valueOf(-1).hashCode()
/// assert_eq!("abc".java_hash(), 96354); // "abc".hashCode()
/// assert_eq!(true.java_hash(), 1231); // Boolean.TRUE.hashCode()
/// ```
pub trait JavaHash {
    /// Java's `hashCode` of the equivalent Java value.
    fn java_hash(&self) -> i32;
}

impl JavaHash for str {
    fn java_hash(&self) -> i32 {
        crate::record::java_string_hash(self)
    }
}
impl JavaHash for String {
    fn java_hash(&self) -> i32 {
        self.as_str().java_hash()
    }
}
impl JavaHash for i64 {
    /// `Long.hashCode`: the two halves xor'ed.
    fn java_hash(&self) -> i32 {
        let v = *self as u64;
        (v ^ (v >> 32)) as i32
    }
}
impl JavaHash for u64 {
    fn java_hash(&self) -> i32 {
        (*self as i64).java_hash()
    }
}
impl JavaHash for isize {
    fn java_hash(&self) -> i32 {
        (*self as i64).java_hash()
    }
}
impl JavaHash for usize {
    fn java_hash(&self) -> i32 {
        (*self as i64).java_hash()
    }
}
impl JavaHash for i32 {
    /// `Integer.hashCode`: the value.
    fn java_hash(&self) -> i32 {
        *self
    }
}
impl JavaHash for u32 {
    fn java_hash(&self) -> i32 {
        *self as i32
    }
}
impl JavaHash for i16 {
    /// `Short.hashCode`: the value.
    fn java_hash(&self) -> i32 {
        i32::from(*self)
    }
}
impl JavaHash for u16 {
    fn java_hash(&self) -> i32 {
        i32::from(*self as i16)
    }
}
impl JavaHash for i8 {
    /// `Byte.hashCode`: the value.
    fn java_hash(&self) -> i32 {
        i32::from(*self)
    }
}
impl JavaHash for u8 {
    fn java_hash(&self) -> i32 {
        i32::from(*self as i8)
    }
}
impl JavaHash for bool {
    /// `Boolean.hashCode`: 1231 or 1237.
    fn java_hash(&self) -> i32 {
        if *self {
            1231
        } else {
            1237
        }
    }
}
impl JavaHash for char {
    /// `Character.hashCode`: the UTF-16 code unit.
    fn java_hash(&self) -> i32 {
        *self as i32
    }
}
impl JavaHash for f64 {
    /// `Double.hashCode`: `doubleToLongBits` (one canonical NaN), halves xor'ed.
    fn java_hash(&self) -> i32 {
        let bits = if self.is_nan() { 0x7ff8_0000_0000_0000 } else { self.to_bits() };
        (bits as i64).java_hash()
    }
}
impl JavaHash for f32 {
    /// `Float.hashCode`: `floatToIntBits` (one canonical NaN).
    fn java_hash(&self) -> i32 {
        (if self.is_nan() { 0x7fc0_0000 } else { self.to_bits() }) as i32
    }
}
impl<T: JavaHash> JavaHash for Option<T> {
    /// `None` is Java's `null`, which Flink's tuples hash as 0.
    fn java_hash(&self) -> i32 {
        self.as_ref().map_or(0, JavaHash::java_hash)
    }
}
impl<A: JavaHash, B: JavaHash> JavaHash for (A, B) {
    /// Flink's `Tuple2.hashCode`: `31 * f0.hashCode() + f1.hashCode()`.
    fn java_hash(&self) -> i32 {
        self.0.java_hash().wrapping_mul(31).wrapping_add(self.1.java_hash())
    }
}
impl<T: JavaHash + ?Sized> JavaHash for &T {
    fn java_hash(&self) -> i32 {
        (**self).java_hash()
    }
}
impl<T: JavaHash + ?Sized> JavaHash for Box<T> {
    fn java_hash(&self) -> i32 {
        (**self).java_hash()
    }
}

/// How a [`KeyGroupPartitioner`] gets the Java `hashCode` of a record's key: any
/// `FnMut(&R) -> i32`, or [`ByKey`] (a key borrowed from the record, hashed by [`JavaHash`]).
pub trait RecordKeyHash<R: ?Sized> {
    /// The Java `hashCode` of `record`'s key.
    fn key_hash(&mut self, record: &R) -> i32;
}

impl<R: ?Sized, F: FnMut(&R) -> i32> RecordKeyHash<R> for F {
    fn key_hash(&mut self, record: &R) -> i32 {
        self(record)
    }
}

/// A key extractor whose key is hashed by [`JavaHash`] (made by [`KeyGroupPartitioner::by_key`]).
pub struct ByKey<G, K: ?Sized> {
    key: G,
    _key: std::marker::PhantomData<fn(&K)>,
}

impl<G: Clone, K: ?Sized> Clone for ByKey<G, K> {
    fn clone(&self) -> Self {
        Self { key: self.key.clone(), _key: std::marker::PhantomData }
    }
}

impl<R: ?Sized, K: JavaHash + ?Sized, G: Fn(&R) -> &K> RecordKeyHash<R> for ByKey<G, K> {
    fn key_hash(&mut self, record: &R) -> i32 {
        (self.key)(record).java_hash()
    }
}

/// Routes by key: key hash -> key group -> channel, exactly as Flink's
/// KeyGroupStreamPartitioner. Built from a key extractor with [`KeyGroupPartitioner::by_key`]
/// (keys of any [`JavaHash`] type), or from a function returning the key's Java `hashCode`
/// with [`KeyGroupPartitioner::new`].
///
/// ```
/// use shmflow::partition::{ChannelSelector, KeyGroupPartitioner};
/// // Records (key, value), routed by the key as Flink routes a `Long` key.
/// let mut by_key = KeyGroupPartitioner::by_key(|r: &(u64, u64)| &r.0);
/// by_key.setup(4);
/// let channel = by_key.select_channel(&(7, 100));
/// assert!(channel < 4);
/// // Every record of one key goes to one channel.
/// assert_eq!(by_key.select_channel(&(7, 200)), channel);
/// ```
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

/// `max_parallelism` if it is in Flink's bounds.
fn check_max_parallelism(max_parallelism: u32) -> Result<u32> {
    ConfigError::check_range("max parallelism", max_parallelism.into(), 1, 1 << 15)?;
    Ok(max_parallelism)
}

impl<F> KeyGroupPartitioner<F> {
    /// A key-group selector over `max_parallelism` key groups; `key_hash` returns the Java
    /// `hashCode` of a record's key (see [`KeyGroupPartitioner::by_key`] for keys that
    /// implement [`JavaHash`]).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] for a max parallelism of 0 or above 32768 (Flink's bound).
    pub fn new(key_hash: F, max_parallelism: u32) -> Result<Self> {
        Ok(Self { key_hash, max_parallelism: check_max_parallelism(max_parallelism)?, n: 1 })
    }

    /// The same selector over `max_parallelism` key groups.
    ///
    /// # Errors
    /// As [`KeyGroupPartitioner::new`].
    pub fn with_max_parallelism(self, max_parallelism: u32) -> Result<Self> {
        Ok(Self { max_parallelism: check_max_parallelism(max_parallelism)?, ..self })
    }

    /// The number of key groups.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }
}

impl<G, K: ?Sized> KeyGroupPartitioner<ByKey<G, K>> {
    /// Routes each record by the key `key` borrows from it, hashed as Flink hashes the
    /// equivalent Java key ([`JavaHash`]), over [`DEFAULT_MAX_PARALLELISM`] key groups
    /// (change it with [`KeyGroupPartitioner::with_max_parallelism`]).
    pub fn by_key<R: ?Sized>(key: G) -> Self
    where
        G: Fn(&R) -> &K,
        K: JavaHash,
    {
        Self { key_hash: ByKey { key, _key: std::marker::PhantomData }, max_parallelism: DEFAULT_MAX_PARALLELISM, n: 1 }
    }
}

impl<R: ?Sized, F: RecordKeyHash<R>> ChannelSelector<R> for KeyGroupPartitioner<F> {
    fn setup(&mut self, n: u32) {
        self.n = n.max(1);
    }
    #[inline]
    fn select_channel(&mut self, record: &R) -> u32 {
        let (hash, mp) = (self.key_hash.key_hash(record), self.max_parallelism);
        if mp.is_power_of_two() {
            // The same key group and index without the two divisions per record (Flink's
            // default of 128 key groups is a power of two): the hash is not negative, so
            // `% mp` is a mask, and `* n / mp` a shift.
            let kg = flink_murmur_hash(hash) as u32 & (mp - 1);
            return ((u64::from(kg) * u64::from(self.n)) >> mp.trailing_zeros()) as u32;
        }
        operator_index_for_key_group(mp, self.n, key_group_for_hash(hash, mp))
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
                return Err(ConfigError::Unknown {
                    what: "selector",
                    name: s.into(),
                    known: "forward, rebalance, rescale, key-hash, broadcast, global",
                }
                .into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_is_javas_hash_code_of_the_boxed_value() {
        // Values from the JDK: Long.valueOf(1L << 32).hashCode() and so on.
        assert_eq!((1u64 << 32).java_hash(), 1);
        assert_eq!((-1i64).java_hash(), 0);
        assert_eq!(i64::MIN.java_hash(), i32::MIN);
        assert_eq!((-5i32).java_hash(), -5);
        assert_eq!(u32::MAX.java_hash(), -1);
        assert_eq!(200u8.java_hash(), -56);
        assert_eq!(40_000u16.java_hash(), -25_536);
        assert_eq!("hello".java_hash(), 99_162_322);
        assert_eq!(String::from("hello").java_hash(), 99_162_322);
        assert_eq!((false).java_hash(), 1237);
        assert_eq!('a'.java_hash(), 97);
        assert_eq!(1.0f64.java_hash(), 1_072_693_248);
        assert_eq!(f64::NAN.java_hash(), (-f64::NAN).java_hash());
        assert_eq!(1.0f32.java_hash(), 1_065_353_216);
        assert_eq!((1i32, 2i32).java_hash(), 33);
        assert_eq!(None::<i32>.java_hash(), 0);
        assert_eq!(Some(7i32).java_hash(), 7);
        assert_eq!((&&"hello").java_hash(), 99_162_322);
    }

    #[test]
    fn by_key_routes_as_the_hash_function_it_replaces() {
        let mut by_key = KeyGroupPartitioner::by_key(|r: &(u64, u64)| &r.0);
        let mut by_hash =
            KeyGroupPartitioner::new(|r: &(u64, u64)| (r.0 ^ (r.0 >> 32)) as i32, DEFAULT_MAX_PARALLELISM).unwrap();
        by_key.setup(7);
        by_hash.setup(7);
        let mut seen = [0u32; 7];
        for k in (0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let c = by_key.select_channel(&(k, 0));
            assert_eq!(c, by_hash.select_channel(&(k, 0)), "key {k}");
            seen[c as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "every channel gets keys: {seen:?}");
        let mut strings =
            KeyGroupPartitioner::by_key(|r: &(String, u64)| r.0.as_str()).with_max_parallelism(4).unwrap();
        strings.setup(4);
        // 4 key groups over 4 channels: the channel is the key group.
        let word = "flink".to_string();
        assert_eq!(strings.select_channel(&(word, 1)), key_group_for_hash("flink".java_hash(), 4));
        assert!(KeyGroupPartitioner::by_key(|r: &(u64, u64)| &r.0).with_max_parallelism(0).is_err());
    }
}

/// Edge cases of the selectors and of the key-group arithmetic, next to the code.
#[cfg(test)]
mod selector_tests {
    use super::*;

    fn channels<S: ChannelSelector<u64>>(s: &mut S, n: u32, records: u64) -> Vec<u32> {
        s.setup(n);
        (0..records).map(|r| s.select_channel(&r)).collect()
    }

    #[test]
    fn forward_global_and_broadcast_always_name_channel_0() {
        assert!(channels(&mut ForwardPartitioner, 5, 20).iter().all(|&c| c == 0));
        assert!(channels(&mut GlobalPartitioner, 5, 20).iter().all(|&c| c == 0));
        assert!(channels(&mut BroadcastPartitioner, 5, 20).iter().all(|&c| c == 0));
        assert!(ChannelSelector::<u64>::is_broadcast(&BroadcastPartitioner));
        assert!(!ChannelSelector::<u64>::is_broadcast(&ForwardPartitioner));
        assert!(!ChannelSelector::<u64>::is_broadcast(&RebalancePartitioner::new(0)));
        // Through a Box, as the runtime holds them.
        let b: Box<dyn ChannelSelector<u64>> = Box::new(BroadcastPartitioner);
        assert!(b.is_broadcast());
    }

    #[test]
    fn rebalance_visits_every_channel_once_per_round_from_a_seeded_start() {
        let mut r = RebalancePartitioner::new(42);
        let got = channels(&mut r, 5, 10);
        let first = got[0];
        let want: Vec<u32> = (0..10).map(|i| (first + i) % 5).collect();
        assert_eq!(got, want);
        // The same seed starts at the same channel; setup starts over.
        assert_eq!(channels(&mut RebalancePartitioner::new(42), 5, 1)[0], first);
        assert_eq!(channels(&mut r, 5, 1)[0], first);
        // Some seed starts elsewhere (the start is not always channel 0).
        assert!((0..16).any(|seed| channels(&mut RebalancePartitioner::new(seed), 5, 1)[0] != 0));
    }

    #[test]
    fn rescale_starts_at_0_and_wraps() {
        assert_eq!(channels(&mut RescalePartitioner::default(), 3, 7), [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn zero_channels_are_taken_as_one_not_a_division_by_zero() {
        assert!(channels(&mut RebalancePartitioner::new(u64::MAX), 0, 3).iter().all(|&c| c == 0));
        assert!(channels(&mut RescalePartitioner::default(), 0, 3).iter().all(|&c| c == 0));
        let mut k = KeyGroupPartitioner::new(|r: &u64| *r as i32, 1).unwrap();
        assert!(channels(&mut k, 0, 3).iter().all(|&c| c == 0));
    }

    #[test]
    fn one_channel_and_u32_max_channels_stay_in_range() {
        assert!(channels(&mut RebalancePartitioner::new(7), 1, 4).iter().all(|&c| c == 0));
        let got = channels(&mut RebalancePartitioner::new(7), u32::MAX, 3);
        assert!(got.iter().all(|&c| c < u32::MAX), "{got:?}");
        assert_eq!(channels(&mut RescalePartitioner::default(), u32::MAX, 2), [0, 1]);
    }

    #[test]
    fn the_murmur_finalizer_matches_murmur3_on_one_block_and_is_never_negative() {
        // MurmurHash3_x86_32 of the 4 little-endian bytes with seed 0 (the published test
        // vectors), then Flink's absolute value.
        assert_eq!(flink_murmur_hash(0), 0x2362_f9de);
        assert_eq!(flink_murmur_hash(-1), 0x7629_3b50);
        assert_eq!(flink_murmur_hash(0x8765_4321_u32 as i32), -(0xf55b_516b_u32 as i32));
        for code in [i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX] {
            assert!(flink_murmur_hash(code) >= 0, "{code}");
        }
    }

    #[test]
    fn key_groups_and_operator_indexes_stay_in_range_at_the_bounds() {
        for maxp in [1, 2, 128, 1 << 15] {
            for code in [i32::MIN, -1, 0, 1, i32::MAX] {
                assert!(key_group_for_hash(code, maxp) < maxp);
            }
            for p in [1, maxp / 2 + 1, maxp] {
                assert_eq!(operator_index_for_key_group(maxp, p, 0), 0);
                assert_eq!(operator_index_for_key_group(maxp, p, maxp - 1), p - 1, "maxp {maxp} p {p}");
            }
        }
        // As many channels as key groups: the channel is the key group.
        assert!((0..1u32 << 15).all(|kg| operator_index_for_key_group(1 << 15, 1 << 15, kg) == kg));
        // Flink's contiguous ranges: 128 groups over 3 channels split 43/43/42.
        let mut sizes = [0; 3];
        for kg in 0..128 {
            sizes[operator_index_for_key_group(128, 3, kg) as usize] += 1;
        }
        assert_eq!(sizes, [43, 43, 42]);
    }

    #[test]
    fn the_key_group_selector_routes_as_flinks_two_divisions_for_every_max_parallelism() {
        // The selector's mask-and-shift path (max parallelism a power of two) and its
        // division path must both give Flink's channel.
        let codes = (-2000i32..2000).chain([i32::MIN, i32::MIN + 1, i32::MAX, 0x8765_4321_u32 as i32]);
        let codes: Vec<i32> = codes.collect();
        for maxp in [1u32, 2, 3, 100, 128, 129, 4096, 1 << 15] {
            for n in [1u32, 2, 3, 7, maxp] {
                let mut s = KeyGroupPartitioner::new(|r: &i32| *r, maxp).unwrap();
                s.setup(n);
                for &code in &codes {
                    let want = operator_index_for_key_group(maxp, n, key_group_for_hash(code, maxp));
                    assert_eq!(s.select_channel(&code), want, "maxp {maxp} n {n} code {code}");
                }
            }
        }
    }

    #[test]
    fn max_parallelism_is_refused_outside_1_to_32768_with_the_value_in_the_message() {
        assert!(KeyGroupPartitioner::new(|r: &u64| *r as i32, 1).is_ok());
        assert_eq!(KeyGroupPartitioner::new(|r: &u64| *r as i32, 1 << 15).unwrap().max_parallelism(), 1 << 15);
        for bad in [0, (1 << 15) + 1, u32::MAX] {
            let e = KeyGroupPartitioner::new(|r: &u64| *r as i32, bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad} not in 1..=32768")), "{e}");
        }
    }

    #[test]
    fn selector_names_parse_with_their_aliases_in_any_case() {
        for (name, kind) in [
            ("forward", SelectorKind::Forward),
            ("REBALANCE", SelectorKind::Rebalance),
            ("round-robin", SelectorKind::Rebalance),
            ("Rescale", SelectorKind::Rescale),
            ("key-hash", SelectorKind::KeyHash),
            ("keyhash", SelectorKind::KeyHash),
            ("hash", SelectorKind::KeyHash),
            ("key-group", SelectorKind::KeyHash),
            ("broadcast", SelectorKind::Broadcast),
            ("global", SelectorKind::Global),
        ] {
            assert_eq!(name.parse::<SelectorKind>().unwrap(), kind, "{name}");
        }
        for bad in ["", "forwards", "key hash", "\u{0}"] {
            let e = bad.parse::<SelectorKind>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
