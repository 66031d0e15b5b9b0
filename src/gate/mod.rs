//! The consumer side of the network stack: input gates and their channels.
//!
//! ```text
//!  producer partitions (other processes)                  this task
//!  subpartition --channel block--> LocalInputChannel --\
//!  subpartition --channel block--> LocalInputChannel ---+--> SingleInputGate --> records
//!  producers mark the gate's notify set and wake it only  |      (&[u8] in place) and events
//!  when it parks; the gate serves marked channels round-robin and never scans the others
//!  records that span segments: reassembled, or read in place as chunks (next_view)
//!  UnionInputGate: several gates sharing one notify set
//! ```

mod single;
mod union;

pub use single::{DebloatConfig, GateItem, GateView, InputGateConfig, InputSpec, Overtaken, SingleInputGate};
pub use union::UnionInputGate;
