//! A notify set: "these channels have something for you" (DESIGN.md §4.7).
//!
//! ```text
//!  GateBlock.wake + bitmap [AtomicU64; max_channels_per_gate / 64] in the arena
//!
//!  marker (producer of channel i)             owner (the gate, or the producing partition)
//!  publish data (Release)                     token = wake.prepare_wait()
//!  fence(SeqCst)                              drain: v = word.swap(0); fence(SeqCst)
//!  if bit i already set: done                 serve the channels whose bits were set
//!  else fetch_or(bit i); if it was clear:     if nothing was set: re-check, wake.wait(token)
//!       wake.notify()
//! ```
//!
//! The fence pair makes the "bit already set" shortcut safe: either the marker sees the
//! owner's swap (bit clear, so it sets it and notifies), or the owner, after its swap, sees
//! the marker's data. A marker that finds the bit set costs one fence and one load of a line
//! that only changes when the owner drains, so a busy producer adds no cache traffic.
//! The owner serves marked channels and never scans the others.

use crate::error::Violation;
use crate::memory::{Arena, GateBlock};
use crate::sync::{fence, AtomicU64, EventCount, Ordering};

/// A view of one gate block used as a notify set.
#[derive(Clone, Copy)]
pub struct NotifySet<'a> {
    block: &'a GateBlock,
    bits: &'a [AtomicU64],
    id: u32,
}

impl<'a> NotifySet<'a> {
    /// The set stored in gate block `id`.
    ///
    /// # Errors
    /// [`Violation`] if `id` is out of range (it may come from shared memory).
    pub fn new(arena: &'a Arena, id: u32) -> Result<Self, Violation> {
        let Some(block) = arena.gates().get(id as usize) else {
            return Err(Violation {
                place: "notify set".into(),
                detail: format!("gate {id} outside 0..{}", arena.config().max_gates),
            });
        };
        Ok(Self { block, bits: arena.gate_bitmap(id), id })
    }

    /// A set over explicit parts (loom models).
    pub fn from_parts(block: &'a GateBlock, bits: &'a [AtomicU64], id: u32) -> Self {
        Self { block, bits, id }
    }

    /// The wake-up the owner parks on.
    pub fn wake(&self) -> &'a EventCount {
        &self.block.wake
    }

    /// Marks member `index` and wakes the owner if it was not marked yet. Call after
    /// publishing what the owner should look at.
    ///
    /// # Errors
    /// [`Violation`] if `index` is outside the set (it may come from shared memory).
    #[inline]
    pub fn mark(&self, index: u32) -> Result<(), Violation> {
        // SeqCst fence: the marker's half of the Dekker pair; pairs with the fence in
        // `drain`, so a set bit seen by `mark_fenced` means the owner will see our data.
        fence(Ordering::SeqCst);
        self.mark_fenced(index)
    }

    /// [`mark`](Self::mark) without its fence, for a caller that published the data of
    /// several members and then issued one `fence(SeqCst)` itself before marking them all
    /// (a partition flushing many channels at once pays one fence, not one per channel).
    /// Without that fence between the caller's publishing stores and this call, the
    /// "already marked" shortcut can lose a wake-up.
    ///
    /// # Errors
    /// As [`mark`](Self::mark).
    #[inline]
    pub fn mark_fenced(&self, index: u32) -> Result<(), Violation> {
        let Some(word) = self.bits.get(index as usize / 64) else {
            return Err(Violation {
                place: format!("notify set {}", self.id),
                detail: format!("member {index} outside 0..{}", self.bits.len() * 64),
            });
        };
        let bit = 1u64 << (index % 64);
        // Relaxed: ordered after the caller's publication by the SeqCst fence that `mark`
        // (or the batching caller) issued; pairs with the fence in `drain`.
        if word.load(Ordering::Relaxed) & bit != 0 {
            return Ok(());
        }
        // AcqRel: Release publishes our data to the owner's swap (Acquire); Acquire is not
        // needed for correctness but keeps the RMW a full barrier for `notify`.
        if word.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            self.block.wake.notify();
        }
        Ok(())
    }

    /// [`mark_fenced`](Self::mark_fenced) for many members at once, for a caller that
    /// published the data of all of them and then issued one `fence(SeqCst)`: one load,
    /// and at most one `fetch_or`, per run of members that share a bitmap word (a partition
    /// flushing its channels marks consecutive members: one line for 512 of them), and one
    /// wake-up of the owner if any member was newly marked. The same marks and wake-up as
    /// marking each member in turn.
    ///
    /// # Errors
    /// [`Violation`] for a member outside the set (those before it are marked and the
    /// owner woken as needed).
    pub fn mark_all_fenced(&self, members: impl IntoIterator<Item = u32>) -> Result<(), Violation> {
        let mut run: Option<(usize, u64)> = None;
        let mut newly = false;
        let mut result = Ok(());
        for index in members {
            let w = index as usize / 64;
            if w >= self.bits.len() {
                result = Err(Violation {
                    place: format!("notify set {}", self.id),
                    detail: format!("member {index} outside 0..{}", self.bits.len() * 64),
                });
                break;
            }
            let bit = 1u64 << (index % 64);
            run = match run {
                Some((rw, mask)) if rw == w => Some((rw, mask | bit)),
                Some((rw, mask)) => {
                    newly |= self.set_bits(rw, mask);
                    Some((w, bit))
                }
                None => Some((w, bit)),
            };
        }
        if let Some((rw, mask)) = run {
            newly |= self.set_bits(rw, mask);
        }
        if newly {
            self.block.wake.notify();
        }
        result
    }

    /// Sets `mask` in word `w`; whether any of its bits was clear.
    #[inline]
    fn set_bits(&self, w: usize, mask: u64) -> bool {
        let word = &self.bits[w];
        // Relaxed: ordered after the caller's publication by its SeqCst fence, as in
        // `mark_fenced`; pairs with the fence in `drain`.
        if word.load(Ordering::Relaxed) & mask == mask {
            return false;
        }
        // AcqRel: as in `mark_fenced` (Release publishes our data to the owner's swap).
        word.fetch_or(mask, Ordering::AcqRel) & mask != mask
    }

    /// Takes every mark among the first `members` members, calling `f` with each index, in
    /// ascending order. Returns how many were marked.
    pub fn drain(&self, members: u32, mut f: impl FnMut(u32)) -> u32 {
        let words = (members as usize).div_ceil(64).min(self.bits.len());
        let mut n = 0;
        for (w, word) in self.bits[..words].iter().enumerate() {
            // Relaxed: a cheap look before the swap; the swap is what synchronizes.
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            // AcqRel: Acquire pairs with the markers' fetch_or (their data is visible);
            // Release keeps our earlier consumption ordered before the clear.
            let mut v = word.swap(0, Ordering::AcqRel);
            while v != 0 {
                let b = v.trailing_zeros();
                v &= v - 1;
                let i = w as u32 * 64 + b;
                if i < members {
                    f(i);
                    n += 1;
                }
            }
        }
        // SeqCst fence: the owner's half of the Dekker pair with `mark`; orders the swaps
        // above before the caller's reads of channel state.
        fence(Ordering::SeqCst);
        n
    }

    /// Whether any of the first `members` members is marked.
    pub fn any(&self, members: u32) -> bool {
        let words = (members as usize).div_ceil(64).min(self.bits.len());
        // Acquire: pairs with the markers' fetch_or.
        self.bits[..words].iter().any(|w| w.load(Ordering::Acquire) != 0)
    }

    /// Whether any of the first `members` members but `index` is marked (a gate that polls
    /// member `index` in its data and leaves its mark set looks for the others with this).
    pub fn any_other(&self, members: u32, index: u32) -> bool {
        let words = (members as usize).div_ceil(64).min(self.bits.len());
        self.bits[..words].iter().enumerate().any(|(w, word)| {
            let own = if index as usize / 64 == w { 1u64 << (index % 64) } else { 0 };
            // Acquire: pairs with the markers' fetch_or.
            word.load(Ordering::Acquire) & !own != 0
        })
    }

    /// Clears every mark and resets the block (when a gate is created or released).
    pub fn reset(&self) {
        for w in self.bits {
            // Relaxed: the block is not shared yet (or no longer); publication of the gate
            // orders it.
            w.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::memory::ArenaConfig;

    fn arena() -> Arena {
        Arena::heap(&ArenaConfig {
            segment_count: 2,
            max_channels: 1,
            max_gates: 2,
            max_channels_per_gate: 128,
            ..ArenaConfig::default()
        })
        .unwrap()
    }

    fn drained(set: &NotifySet<'_>, members: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let n = set.drain(members, |i| out.push(i));
        assert_eq!(n as usize, out.len());
        out
    }

    #[test]
    fn marks_across_words_drain_in_ascending_order_once() {
        let arena = arena();
        let set = NotifySet::new(&arena, 1).unwrap();
        for i in [127, 64, 0, 63, 64] {
            set.mark(i).unwrap();
        }
        assert!(set.any(128));
        assert!(!set.any(0));
        assert!(set.any_other(128, 0), "63, 64 and 127 are marked too");
        assert_eq!(drained(&set, 128), [0, 63, 64, 127]);
        assert!(drained(&set, 128).is_empty(), "a drain takes the marks");
        assert!(!set.any(128));
        set.mark(70).unwrap();
        assert!(!set.any_other(128, 70), "only the excepted member is marked");
        assert!(set.any_other(128, 6) && set.any_other(128, 71));
        assert!(!set.any_other(64, 6), "70 is beyond the first 64 members");
    }

    #[test]
    fn a_drain_of_fewer_members_reports_only_those() {
        let arena = arena();
        let set = NotifySet::new(&arena, 0).unwrap();
        set.mark(1).unwrap();
        set.mark(5).unwrap();
        set.mark(70).unwrap();
        assert_eq!(drained(&set, 3), [1], "5 shares the word and is cleared with it; 70 is in another word");
        assert_eq!(drained(&set, 128), [70]);
    }

    #[test]
    fn ids_and_members_from_shared_memory_out_of_range_are_violations() {
        let arena = arena();
        let Err(e) = NotifySet::new(&arena, 2) else { panic!("gate 2 of 2 was accepted") };
        assert_eq!((e.place.as_str(), e.detail.as_str()), ("notify set", "gate 2 outside 0..2"));
        assert!(NotifySet::new(&arena, u32::MAX).is_err());
        let set = NotifySet::new(&arena, 0).unwrap();
        let e = set.mark(128).unwrap_err();
        assert_eq!((e.place.as_str(), e.detail.as_str()), ("notify set 0", "member 128 outside 0..128"));
        assert!(set.mark_fenced(u32::MAX).is_err());
        assert!(!set.any(128), "a refused mark sets nothing");
    }

    #[test]
    fn marking_many_at_once_marks_each_and_refuses_one_outside() {
        let arena = arena();
        let set = NotifySet::new(&arena, 0).unwrap();
        set.mark(3).unwrap();
        set.mark_all_fenced([1, 2, 3, 64, 65, 0, 127]).unwrap();
        assert_eq!(drained(&set, 128), [0, 1, 2, 3, 64, 65, 127]);
        set.mark_all_fenced([]).unwrap();
        assert!(drained(&set, 128).is_empty());
        let e = set.mark_all_fenced([5, 128, 6]).unwrap_err();
        assert_eq!(e.detail, "member 128 outside 0..128");
        assert_eq!(drained(&set, 128), [5], "members before the bad one are marked, none after it");
    }

    #[test]
    fn reset_clears_the_marks() {
        let arena = arena();
        let set = NotifySet::new(&arena, 0).unwrap();
        set.mark(9).unwrap();
        set.reset();
        assert!(drained(&set, 128).is_empty());
    }
}
