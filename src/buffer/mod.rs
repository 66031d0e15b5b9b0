//! Buffers: the pools that hand out segments and the cursors that write and read them.
//!
//! ```text
//!  NetworkBufferPool (arena-wide free stack, any process)
//!        | request / recycle
//!  LocalBufferPool (one producer's quota: min, max, max per channel)
//!        | request(channel)                       ^ recycle_index (segments back from readers)
//!  BufferBuilder --position|FINISHED (Release)--> BufferConsumer --> Buffer (&[u8] in place)
//!   (writer, one thread)        SegmentControl        (reader, maybe another process)
//!                                                     last reader's Lease drop -> ReleaseSink
//! ```

mod builder;
mod local_pool;
mod network_pool;

pub(crate) use builder::extend_bytes;
pub use builder::{Buffer, BufferBuilder, BufferConsumer, FramedRun, Lease, ReleaseSink, SpareLease};
pub use local_pool::{LocalBufferPool, LocalPoolConfig, RecycleSource};
pub use network_pool::NetworkBufferPool;
