//! Benchmarks of shmflow's peers that pull in heavy dependencies (iceoryx2), in a crate of
//! their own so that the library's build stays lean. The code is in `benches/iceoryx2.rs`:
//! `cargo bench -p shmflow-peers --bench iceoryx2 -- --bench --json PATH`.
