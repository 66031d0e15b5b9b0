//! Floating credit on one channel, eagerly revocable: a credit the gate granted from its
//! floating pool lives in one shared word of the channel block (`ChannelBlock::floating`)
//! while it is unused, so the gate can take it back without the producer's help, from a
//! channel whose producer went idle.
//!
//! The word packs two counts: `unused` (high 32 bits), floating credits granted to the
//! channel and not spent on a segment, and `in_flight` (low 32 bits), segments published
//! with a floating credit and not released yet. Exclusive credits do not enter it: they
//! travel as `Credit::Grant` / `Credit::Release { credit: true }` and live in the
//! producer's local count.
//!
//! ```text
//!   gate (consumer thread)                word (unused, in_flight)            producer
//!
//!   grant(1)        fetch_add ---------->  (u+1, i)
//!                                          (u-1, i+1)  <--------- CAS   take() for a publish
//!                                             |                          (only when its local,
//!                                             |                           exclusive credit is 0)
//!                                             |    segment travels in the data ring
//!   release():  CAS, i > 0 ------------->  (u+1, i-1)  Kept: unused again
//!                   (revoke pending) ---->  (u,   i-1)  ToPool: to the gate's pool
//!               i = 0: Exclusive (Credit::Release { credit: true } to the producer);
//!                   revoke pending, u > 0:  (u-1, 0)   and one unused to the pool
//!                                          (u+1, i-1)  <--------- CAS   convert(): an exclusive
//!                                                                       credit came back while
//!                                                                       i > 0: trade them
//!   revoke(max)     CAS ---------------->  (u-k, i)    k = min(u, max) to the pool at once;
//!                                                      the gate asks the next releases of
//!                                                      the in-flight ones for the rest
//!   end()           swap --------------->  (0, kept)   the producer ended (EndOfPartition)
//! ```
//!
//! Why a credit is counted exactly once: every move of a floating credit is one atomic
//! read-modify-write of this one word, so the modification order decides each race, and
//! each step moves a unit from one count to another (or out to the pool) only if the CAS
//! saw it there. The producer's `take` and the gate's `revoke` both subtract from `unused`
//! by CAS against the value they read: of two racing for the last unused credit one CAS
//! fails and re-reads 0, so a credit is either spent on a segment or returned to the pool,
//! never both. An in-flight credit leaves `in_flight` once: by the consumer's `release`
//! (kept or to the pool) or by the producer's `convert`, both by CAS, so a release is never
//! counted twice. The gate's books (`held[c]` floating credits assigned to channel `c`, `r`
//! pending revokes) keep `held[c] + r = unused + in_flight`, and `r <= in_flight + unused`
//! lets every pending revoke be paid. Which segment carries which credit does not matter:
//! a release that finds `in_flight > 0` counts as floating whichever segment it names, and
//! the producer's exclusive credit (local + segments in flight - `in_flight`) is the same
//! after every step.
//!
//! Orderings: every access is Relaxed. Atomicity alone gives exactly-once; the one
//! happens-before the protocol needs (a release must see the `take` of the segment it
//! releases, or it could count a floating segment as exclusive) comes from the data ring:
//! `take` is sequenced before the producer's Release push of the descriptor, which the
//! consumer's Acquire pop reads before the segment can be released. A grant is seen by a
//! woken producer through the notify that follows it (a Release mark, Acquire by the
//! producer's wait). The loom model `loom-tests/tests/floating_revoke.rs` runs these
//! functions against each other.
//!
//! The producer may be another process: nothing here trusts the word. Counts wrap rather
//! than panic, the gate takes back at most what it assigned, and every loop is bounded.

use crate::sync::{AtomicU64, Ordering};

const UNUSED_ONE: u64 = 1 << 32;
const IN_FLIGHT_MASK: u64 = 0xffff_ffff;
/// CAS attempts before giving up: each failure means the other side moved the word, which
/// an honest peer does a bounded number of times per call (at most the ring's capacity).
const TRIES: usize = 1 << 12;

/// Floating credits granted and not spent.
pub fn unused(word: &AtomicU64) -> u32 {
    // Relaxed: a count; see the module doc for what orders a grant before its use.
    (word.load(Ordering::Relaxed) >> 32) as u32
}

/// Segments published with a floating credit and not released yet.
pub fn in_flight(word: &AtomicU64) -> u32 {
    // Relaxed: a count, as in `unused`.
    (word.load(Ordering::Relaxed) & IN_FLIGHT_MASK) as u32
}

/// Consumer: grants `n` floating credits (then wake the producer).
pub fn grant(word: &AtomicU64, n: u32) {
    // Relaxed: the notify after it publishes it (module doc).
    word.fetch_add(u64::from(n) << 32, Ordering::Relaxed);
}

/// Producer: spends one unused floating credit on a segment about to be published
/// (`ChannelWriter::reserve_credit` takes it before the segment is even requested, so a
/// revoke cannot leave a producer that saw credit with none at publish). False when there
/// is none (the gate revoked it first) or the word kept changing. Call it before pushing
/// the descriptor (the push orders it before the segment's release). A taken credit counts
/// as in flight from then on.
///
/// `out` is the producer's own count of floating credits in flight: taken, less the
/// floating releases (`Credit::Release { credit: false }`) it reclaimed and the trades
/// ([`convert`]) it made. `out - in_flight` are releases the consumer counted and the
/// producer has not reclaimed yet; each may have put its credit back into `unused` while
/// its segment still counts in the producer's in-flight list, so that many unused credits
/// are not taken (the producer gets them once it reclaims): its credit plus its segments
/// in flight never exceed what it was granted.
pub fn take(word: &AtomicU64, out: u32) -> bool {
    // Relaxed: the CAS below decides.
    let mut cur = word.load(Ordering::Relaxed);
    for _ in 0..TRIES {
        let not_reclaimed = out.saturating_sub((cur & IN_FLIGHT_MASK) as u32);
        if (cur >> 32) as u32 <= not_reclaimed {
            return false;
        }
        // unused - 1, in_flight + 1 (in_flight wraps within its half on a corrupt word).
        let next = ((cur - UNUSED_ONE) & !IN_FLIGHT_MASK) | (cur.wrapping_add(1) & IN_FLIGHT_MASK);
        // Relaxed: atomicity decides who gets the credit; the data ring's Release push
        // orders this before the consumer's release of the segment (module doc).
        match word.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(v) => cur = v,
        }
    }
    false
}

/// What a released segment's credit became (see [`release`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// No floating credit in flight: an exclusive credit, for the producer
    /// (`Credit::Release { credit: true }`).
    Exclusive,
    /// An exclusive credit for the producer, and, a revoke being pending with nothing in
    /// flight, one unused floating credit taken for the gate's pool (the producer turned
    /// the in-flight one into unused credit, see [`convert`]).
    ExclusiveAndUnusedToPool,
    /// A floating credit, unused again on this channel.
    Kept,
    /// A floating credit, for the gate's pool (a revoke was pending).
    ToPool,
}

/// Consumer: a segment of this channel was released; `revoking` says whether the gate asked
/// for in-flight floating credits back. Races with the producer's [`convert`] for each
/// in-flight credit (both lower `in_flight`, each by CAS) and with its [`take`].
pub fn release(word: &AtomicU64, revoking: bool) -> Released {
    // Relaxed: the CAS below decides.
    let mut cur = word.load(Ordering::Relaxed);
    for _ in 0..TRIES {
        let (next, what) = match (cur & IN_FLIGHT_MASK != 0, revoking) {
            // in_flight - 1 (no borrow: it is at least 1).
            (true, true) => (cur - 1, Released::ToPool),
            // unused + 1, in_flight - 1 in one step (wraps on a corrupt word).
            (true, false) => (cur.wrapping_add(UNUSED_ONE - 1), Released::Kept),
            (false, true) if cur >> 32 != 0 => (cur - UNUSED_ONE, Released::ExclusiveAndUnusedToPool),
            (false, _) => return Released::Exclusive,
        };
        // Relaxed: atomicity decides which side counts each credit (module doc).
        match word.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return what,
            Err(v) => cur = v,
        }
    }
    // The word kept changing (a corrupt producer): count it as exclusive.
    Released::Exclusive
}

/// Producer: an exclusive credit came back (`Credit::Release { credit: true }`) while a
/// segment published with floating credit is still out. Trades them: the in-flight
/// floating credit becomes exclusive (that segment's credit), and the returned credit
/// becomes unused floating credit, which the gate can revoke at once, instead of exclusive
/// credit in the producer's hands. True if it traded (the caller does not add the credit
/// to its own), false if no floating credit is in flight.
///
/// Without it, a floating credit can stay in flight on a channel that went idle (its
/// producer took the floating credit for a segment while the consumer was releasing an
/// exclusive one), out of reach of an eager revoke.
pub fn convert(word: &AtomicU64) -> bool {
    // Relaxed: the CAS below decides.
    let mut cur = word.load(Ordering::Relaxed);
    for _ in 0..TRIES {
        if cur & IN_FLIGHT_MASK == 0 {
            return false;
        }
        // Relaxed: atomicity decides, against the consumer's `release` (module doc).
        match word.compare_exchange_weak(cur, cur.wrapping_add(UNUSED_ONE - 1), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(v) => cur = v,
        }
    }
    false
}

/// Consumer: takes back up to `max` unused floating credits at once and returns how many
/// it took (the rest of what the channel holds is in flight: revoke those lazily, on
/// release). Races with the producer's [`take`] for each credit; exactly one wins.
pub fn revoke(word: &AtomicU64, max: u32) -> u32 {
    // Relaxed: the CAS below decides.
    let mut cur = word.load(Ordering::Relaxed);
    for _ in 0..TRIES {
        let k = ((cur >> 32) as u32).min(max);
        if k == 0 {
            return 0;
        }
        // Relaxed: atomicity decides who gets each credit (module doc).
        match word.compare_exchange_weak(cur, cur - (u64::from(k) << 32), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return k,
            Err(v) => cur = v,
        }
    }
    0
}

/// Consumer: the producer ended (EndOfPartition, its last publish): clears the word but for
/// `keep` in-flight credits whose releases are still to go to the pool (the pending lazy
/// revokes). Returns the floating credits it cleared (`unused` plus the other in-flight
/// ones), which the gate takes back at once: their releases now count as exclusive, for a
/// producer that publishes no more.
pub fn end(word: &AtomicU64, keep: u32) -> u32 {
    // Relaxed: the producer published its end after its last `take` (ordered by the data
    // ring), so nothing races with this; a swap keeps a corrupt word from looping.
    let cur = word.swap(0, Ordering::Relaxed);
    let (u, i) = ((cur >> 32) as u32, (cur & IN_FLIGHT_MASK) as u32);
    let kept = i.min(keep);
    if kept > 0 {
        // Relaxed: as the swap.
        word.fetch_add(u64::from(kept), Ordering::Relaxed);
    }
    u.saturating_add(i - kept)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_credit_taken_by_the_producer_is_not_revoked() {
        let w = AtomicU64::new(0);
        grant(&w, 2);
        assert!(take(&w, 0));
        assert_eq!((unused(&w), in_flight(&w)), (1, 1));
        assert_eq!(revoke(&w, 5), 1, "only the unused one comes back");
        assert!(!take(&w, 0), "nothing left to spend");
        assert_eq!(release(&w, true), Released::ToPool);
        assert_eq!(release(&w, true), Released::Exclusive, "no floating credit in flight");
        assert_eq!(w.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_credit_kept_by_a_release_not_reclaimed_yet_is_not_taken() {
        let w = AtomicU64::new(0);
        grant(&w, 1);
        assert!(take(&w, 0));
        assert_eq!(release(&w, false), Released::Kept);
        // The producer has not reclaimed that release: 1 floating credit out by its count.
        assert!(!take(&w, 1), "its segment still counts as in flight for the producer");
        assert!(take(&w, 0), "reclaimed: the credit is the producer's to take");
    }

    #[test]
    fn a_release_keeps_the_credit_unless_revoking() {
        let w = AtomicU64::new(0);
        grant(&w, 1);
        assert!(take(&w, 0));
        assert_eq!(release(&w, false), Released::Kept);
        assert_eq!((unused(&w), in_flight(&w)), (1, 0));
        assert_eq!(revoke(&w, 0), 0, "revoke takes at most max");
        assert_eq!(revoke(&w, 1), 1);
    }

    #[test]
    fn a_converted_credit_is_revocable_and_pays_a_pending_revoke() {
        let w = AtomicU64::new(0);
        grant(&w, 1);
        assert!(take(&w, 0));
        // An exclusive credit came back to the producer while the floating one is out.
        assert!(convert(&w));
        assert_eq!((unused(&w), in_flight(&w)), (1, 0));
        assert!(!convert(&w), "nothing in flight to trade");
        assert_eq!(revoke(&w, 1), 1);
        // Revoked while in flight, then converted: the pending revoke takes it from unused.
        grant(&w, 1);
        assert!(take(&w, 0));
        assert_eq!(revoke(&w, 1), 0);
        assert!(convert(&w));
        assert_eq!(release(&w, true), Released::ExclusiveAndUnusedToPool);
        assert_eq!(w.load(Ordering::Relaxed), 0);
        assert_eq!(release(&w, true), Released::Exclusive, "nothing left to pay it with");
    }

    #[test]
    fn end_clears_all_but_the_pending_revokes() {
        let w = AtomicU64::new(0);
        grant(&w, 3);
        assert!(take(&w, 0) && take(&w, 0));
        // unused 1, in flight 2, of which 1 is to go to the pool on release.
        assert_eq!(end(&w, 1), 2);
        assert_eq!((unused(&w), in_flight(&w)), (0, 1));
        assert_eq!(release(&w, true), Released::ToPool);
        assert_eq!(release(&w, false), Released::Exclusive);
    }

    #[test]
    fn a_corrupt_word_neither_panics_nor_loops() {
        // Both counts at their maximum: every step wraps instead of overflowing.
        let w = AtomicU64::new(u64::MAX);
        assert!(take(&w, 0), "unused was not 0");
        assert_eq!(in_flight(&w), 0, "in_flight wrapped within its half");
        assert_eq!(unused(&w), u32::MAX - 1, "a wrapping in_flight leaves unused alone");
        let w = AtomicU64::new(u64::MAX);
        assert_eq!(release(&w, false), Released::Kept);
        assert_eq!(unused(&w), 0, "unused wrapped");
        let w = AtomicU64::new(u64::MAX);
        assert_eq!(revoke(&w, 3), 3);
        let w = AtomicU64::new(u64::MAX);
        assert_eq!(end(&w, 7), u32::MAX);
        assert_eq!(w.load(Ordering::Relaxed), 7, "the kept revokes stay in flight");
    }
}
