//! Banked credit: the consumer's credit reaches the producer without waking its dispatcher.
//!
//! ```text
//!  consumer (announces credit)                 producer (needs credit: its own count is 0)
//!  bank(n): word += n                          take(): v = word.swap(0); if v > 0: wanted = 0, done
//!           fence(SeqCst)                              wanted = 1
//!           if wanted: wake the producer               fence(SeqCst)
//!                                                      v = word.swap(0); if v > 0: wanted = 0
//! ```
//!
//! The word is the channel block's `floating` word (the transport's channels do not use
//! the runtime's floating-credit protocol), the flag its `credit_wanted`; `reset` clears
//! both when a consumer opens the block. A credit message in the credit ring costs the
//! producer's dispatcher a wake-up per announcement; a banked credit costs one only when
//! the producer ran out and said so. The fence pair is a store-buffer (Dekker) pair:
//! either the producer's second swap sees the consumer's credit, or the consumer's load
//! sees the producer's flag and wakes it, so a producer that found no credit is never
//! left asleep with credit in the bank. A wake-up after the producer found the credit
//! itself is spurious and harmless.
//!
//! Banked credit is not ordered with the ring's messages: the consumer banks only on
//! channels whose initial credit is positive, where Flink's resume-consumption does not
//! reset the credit (with initial credit 0 credit announced before a resume must be
//! dropped, which only the ring's order can tell).

use shmflow::memory::ChannelBlock;
use shmflow::sync::{fence, Ordering};

/// The most credit one [`take`] hands out (what a Java `int` holds); the rest stays banked.
pub const MAX_TAKE: u64 = i32::MAX as u64;

/// Consumer: adds `n` credits to the bank. True when the producer said it waits for
/// credit: the caller wakes it (marks the channel in the producer's notify set).
pub fn bank(b: &ChannelBlock, n: u32) -> bool {
    // Relaxed: the count is all the message there is; the fence below orders the add
    // before the load of the flag.
    b.floating_credit().fetch_add(u64::from(n), Ordering::Relaxed);
    // SeqCst fence: the consumer's half of the Dekker pair; pairs with the fence in `take`.
    fence(Ordering::SeqCst);
    b.credit_wanted()
}

/// Producer: takes what is banked (at most [`MAX_TAKE`]). When nothing is, raises the
/// wanted flag, so that the next [`bank`] wakes us, and looks once more.
pub fn take(b: &ChannelBlock) -> u32 {
    let v = swap_out(b);
    if v > 0 {
        b.set_credit_wanted(false);
        return v;
    }
    b.set_credit_wanted(true);
    // SeqCst fence: the producer's half of the Dekker pair; pairs with the fence in `bank`.
    fence(Ordering::SeqCst);
    let v = swap_out(b);
    if v > 0 {
        b.set_credit_wanted(false);
    }
    v
}

/// Empties the bank, puts back what is above [`MAX_TAKE`] (a word from another process
/// may hold anything), and returns the rest.
fn swap_out(b: &ChannelBlock) -> u32 {
    let w = b.floating_credit();
    // Relaxed: the count is the whole message (see `bank`); ordering with the flag is the
    // fences' job.
    let v = w.swap(0, Ordering::Relaxed);
    if v > MAX_TAKE {
        // Relaxed: as above.
        w.fetch_add(v - MAX_TAKE, Ordering::Relaxed);
        return MAX_TAKE as u32;
    }
    v as u32
}
