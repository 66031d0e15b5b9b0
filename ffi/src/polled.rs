//! "The task polls": a data buffer reaches a busy consumer without waking its dispatcher.
//!
//! ```text
//!  consumer                                     producer (after publishing a data buffer)
//!  start(): polls = 1   (zero-copy buffers      push: tail = t + 1 (Release)
//!           of the channel are out; each of     fence(SeqCst)
//!           their recyclers polls the ring)     if polls == 0: mark the consumer's notify set
//!  stop():  polls = 0   (the last came back)
//!           fence(SeqCst)
//!           then poll the ring (Acquire tail)
//! ```
//!
//! The word is the channel block's `task_polls`; `reset` clears it when a consumer opens
//! the block. While the consumer holds zero-copy buffers of a channel that Flink has not
//! recycled, their recycler (ours, run by whichever thread lets go last: mostly the task
//! that read the buffer) polls the channel's ring and hands Flink what arrived, so the
//! producer need not wake the consumer's dispatcher for a data buffer. When the last such
//! buffer comes back the recycler clears the word, and only then does it poll once more.
//! The fence pair is a store-buffer (Dekker) pair, like banked credit's (`banked.rs`):
//! either the producer's load after its fence sees the word clear and marks (the dispatcher
//! delivers), or the consumer's poll after its fence sees the published message. So a
//! message published while the word was set is delivered by a poll that comes after it: a
//! later recycle, or the last one's poll after `stop`.
//!
//! `start` needs no fence: a producer that reads the word still clear marks, which is what
//! it did before; setting it only lets later publications skip the mark, and the recycler
//! that will poll for them is the one of a buffer handed out after `start`. Events are
//! always marked (the caller asks for the skip only for data buffers), so a priority event
//! reaches the dispatcher even when the task is blocked elsewhere.

use shmflow::memory::ChannelBlock;
use shmflow::sync::{fence, Ordering};

/// Consumer: its task polls this channel from now on (zero-copy buffers are out).
pub fn start(b: &ChannelBlock) {
    // Relaxed: a producer that still reads 0 marks, which is always correct; see the module
    // comment.
    b.task_polls().store(1, Ordering::Relaxed);
}

/// Consumer: its task stops polling (the last zero-copy buffer came back). The caller
/// polls the ring once more afterwards.
pub fn stop(b: &ChannelBlock) {
    // Relaxed: the fence below orders it before the caller's poll of the ring.
    b.task_polls().store(0, Ordering::Relaxed);
    // SeqCst fence: the consumer's half of the Dekker pair; pairs with the fence in
    // `must_mark`.
    fence(Ordering::SeqCst);
}

/// Producer, after publishing a data buffer: whether it must mark the consumer's notify
/// set (false while the consumer's task polls the ring itself).
pub fn must_mark(b: &ChannelBlock) -> bool {
    // SeqCst fence: the producer's half of the Dekker pair; pairs with the fence in `stop`.
    fence(Ordering::SeqCst);
    // Relaxed: ordered after the ring's tail store by the fence above.
    b.task_polls().load(Ordering::Relaxed) == 0
}
