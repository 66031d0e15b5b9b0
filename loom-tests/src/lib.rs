//! Loom models of shmflow's shared-memory protocols (DESIGN.md §4), one file per protocol
//! under `tests/`: the segment free list (ABA) and its lanes (a taker killed at each step
//! of taking a segment, reclaimed online: `free_stack_taker`), online reclamation
//! (`reclaim`), BufferBuilder/BufferConsumer (single and
//! broadcast), the SPSC ring, the event-count wake-up, the local-pool recycle path with a
//! parked writer, notify sets (gate wake-ups, batched flush marks), channel-block claims,
//! the slot-framed record stream, the output flusher's handoff (`flush_handoff`), and the
//! Flink transport's channel claim/close handshake (`ffi_channel_handshake`, which compiles
//! `ffi/src/handshake.rs` by path). They check the shipping code: under
//! `--cfg loom` shmflow's `sync` module hands out loom's atomics and cells, and
//! `Arena::heap` builds the arena's structures with them.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/loom RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release
//! ```
//!
//! Each model prints how many executions it explored and how long it took (shown with
//! `-- --nocapture`). `LOOM_MAX_PREEMPTIONS=N` overrides the preemption bound of every
//! model for a deeper (slower) search. Without `--cfg loom` this crate is empty.
