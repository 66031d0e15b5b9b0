//! The consumer side of the network stack: input gates and their channels.
//!
//! ```text
//!  producer partitions (other processes)                  this task
//!  subpartition --channel block--> LocalInputChannel --\
//!  subpartition --channel block--> LocalInputChannel ---+--> SingleInputGate --> records
//!  producers mark the gate's notify set and wake it only  |      (&[u8] in place) and events
//!  when it parks; the gate serves marked channels round-robin and never scans the others
//!  records that span segments: reassembled, read in place as chunks (next_view), or
//!  streamed piece by piece as their segments arrive (next_piece)
//!  blocking partition's file --FileChannel (mmap, in place) --/   (polled: nobody marks it;
//!      its partition request is the wait until the directory says FINISHED)
//!  UnionInputGate: several gates sharing one notify set
//! ```
//!
//! One file per concern, each with its state documented at its top:
//!
//! | file | holds (Flink) |
//! |---|---|
//! | `single.rs` | `SingleInputGate`: scheduling (ready queue, batches), events, waiting |
//! | `config.rs` | `InputSpec`, `InputGateConfig` (what the gate factory is given) |
//! | `channel.rs` | `InputChannel`: `LocalInputChannel` or a file channel (blocking partitions), and each one's partition request |
//! | `credit.rs` | floating credit (`BufferManager`'s floating buffers) |
//! | `align.rs` | aligned / unaligned barrier handling (`CheckpointBarrierHandler`) |
//! | `debloat.rs` | buffer debloating (`BufferDebloater`) |
//! | `liveness.rs` | producer liveness: a dead producer becomes `PeerDied` |
//! | `union.rs` | `UnionInputGate` |

mod align;
mod channel;
mod config;
mod credit;
mod debloat;
mod liveness;
mod single;
mod union;

pub use align::Overtaken;
pub use config::{InputGateConfig, InputSpec};
pub use debloat::DebloatConfig;
pub use single::{GateItem, GatePiece, GateView, SingleInputGate};
pub use union::UnionInputGate;
