//! Rings and channels: how descriptors travel from producer to consumer and credits (with
//! recycled segments) travel back.
//!
//! ```text
//!  ChannelWriter (producer process)                       ChannelReader (consumer process)
//!   publish(segment) --data ring: Descriptor------------>  next() -> BufferConsumer
//!   reclaim(pool)   <--credit ring: Credit::Release(seg)--  Lease drop (last reader)
//!                   <--credit ring: Credit::Grant(n)------  grant(n) (exclusive)
//!   publish takes   <--block word: floating (unused, in flight)-- grant_floating(n),
//!   floating credit    when exclusive credit ran out               revoke_unused (floating.rs)
//!   parks on producer_wake   <------ notify ------          notify ------>  parks on consumer_wake
//! ```

mod channel;
mod descriptor;
pub mod floating;
mod notify;
mod spsc;
pub mod stream;

pub use channel::{close_channel, notify_channel, notify_channel_fenced, ChannelReader, ChannelWriter, CreditReturn};
pub use descriptor::{BarrierDescriptor, Credit, Descriptor, EventCode};
pub use notify::NotifySet;
pub use spsc::{Ring, RingConsumer, RingProducer};
pub use stream::{StreamReader, StreamWriter};
