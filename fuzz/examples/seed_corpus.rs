//! Writes the seed corpus: `cargo run --manifest-path fuzz/Cargo.toml --example seed_corpus`
//! (from the repository root). Files the fuzzer added are left alone.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in shmflow_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
}
