//! Shared by the loom models: the shrunken arena every model runs on, and a runner that
//! bounds the search and reports how many executions it explored and how long it took.
//!
//! Under loom the arena is built on the heap with loom atomics in place of the shared ones
//! (`Arena::heap`), so every model below exercises the shipping code paths, and the arena's
//! per-byte witness cells make payload reads and writes visible to loom's race detector.

use shmflow::memory::{Arena, ArenaConfig};
use std::sync::Arc;
use std::time::Instant;

/// The smallest arena the protocols run on: 2 segments of 8 bytes (the loom minimum),
/// 2-slot rings and one of everything else. Small sizes keep the state space small; 2 is
/// the least that still has a "full" and a "wrap-around" state.
pub fn tiny_config() -> ArenaConfig {
    ArenaConfig {
        segment_size: 8,
        segment_count: 2,
        ring_capacity: 2,
        max_channels: 1,
        max_partitions: 1,
        max_gates: 1,
        max_channels_per_gate: 64,
        max_workers: 1,
        max_tasks: 1,
    }
}

/// A fresh heap arena with [`tiny_config`]. Must be called inside the model closure: its
/// atomics are loom objects that belong to one execution.
#[allow(dead_code)] // each test file compiles this module; not every model uses it
pub fn tiny_arena() -> Arc<Arena> {
    Arc::new(Arena::heap(&tiny_config()).expect("the tiny loom config is valid"))
}

/// Explores every interleaving of `model` (up to `preemption_bound` preemptions per
/// execution when set) and prints the number of executions and the time taken. The
/// `LOOM_MAX_PREEMPTIONS` environment variable, when set, overrides `preemption_bound`.
pub fn check<F>(name: &str, preemption_bound: Option<usize>, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    // A plain std atomic, deliberately not loom's: it counts executions from outside the
    // model and takes no part in any explored interleaving.
    #[allow(clippy::disallowed_types)]
    let executions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = executions.clone();
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemption_bound;
    }
    let start = Instant::now();
    builder.check(move || {
        // Relaxed: a counter read once after the whole search.
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    eprintln!(
        "loom model {name}: {} executions in {:.2?} (preemption bound {:?})",
        // Relaxed: the search is over, nothing else touches the counter.
        executions.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed(),
        builder.preemption_bound,
    );
}

/// A gate's channel 0 at the start of a segment, set up (on the model's main thread, before
/// any spawn) as a partition and a gate do it: the consumer attaches, routes its wake-ups to
/// member `member` of notify set 0 and grants one credit; the producer takes the credit and
/// draws the pool's one segment, which the caller turns into a builder and publishes.
#[allow(dead_code)] // each test file compiles this module; not every model uses it
pub fn gate_channel(
    arena: &Arc<Arena>,
    member: u32,
) -> (
    shmflow::ring::ChannelReader,
    shmflow::ring::ChannelWriter,
    shmflow::buffer::LocalBufferPool,
    shmflow::memory::MemorySegment,
) {
    use shmflow::buffer::{LocalBufferPool, LocalPoolConfig};
    use shmflow::ring::{ChannelReader, ChannelWriter};
    let reader = ChannelReader::open(Arc::clone(arena), 0).expect("channel 0 exists");
    reader.set_gate(0, member);
    reader.grant(1).expect("room in the credit ring");
    let config = LocalPoolConfig { min: 1, max: 1, max_per_channel: 1, channels: 1 };
    let mut pool = LocalBufferPool::new(Arc::clone(arena), 0, 0, config).expect("valid pool config");
    let mut writer = ChannelWriter::open(Arc::clone(arena), 0).expect("channel 0 exists");
    writer.reclaim(&mut pool).expect("a well-formed grant");
    let segment = pool.request(Some(0)).expect("pool not corrupt").expect("the pool's segment");
    (reader, writer, pool, segment)
}
