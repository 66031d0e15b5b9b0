//! A peer that dies (SIGKILL) is noticed: the survivor gets a clear error naming the peer
//! instead of hanging. The test binary re-executes itself as the peer.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{RequestBackoff, ResultPartitionConfig, ResultPartitionId, ResultPartitionType};
use shmflow::{Error, ShuffleEnvironment};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{self_command, shmflow, KillOnDrop};

const ROLE: &str = "SHMFLOW_FAILURE_ROLE";
const ID: ResultPartitionId = ResultPartitionId::new(7, 0);

fn arena() -> Arc<Arena> {
    let cfg =
        ArenaConfig { segment_size: 4096, segment_count: 128, max_channels: 8, max_gates: 8, ..ArenaConfig::default() };
    Arc::new(Arena::create_memfd(&cfg, "failures").unwrap())
}

fn spawn(arena: &Arena, role: &str) -> KillOnDrop {
    let mut cmd = self_command("peer_entry", ROLE, role);
    cmd.stdout(Stdio::null());
    arena.inherit_fd_into(&mut cmd).unwrap();
    KillOnDrop(cmd.spawn().unwrap())
}

fn gate_cfg() -> InputGateConfig {
    let mut g = InputGateConfig::new(vec![InputSpec { partition: ID, subpartition: 0 }]);
    g.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(5) };
    g
}

/// The peer process: a producer that writes a little and then hangs, or a consumer that
/// reads a little and then hangs. Either is killed by the test.
#[test]
fn peer_entry() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let env = ShuffleEnvironment::attach_inherited(1).unwrap();
    match role.as_str() {
        "producer" => {
            let mut p = env
                .create_result_partition(&ResultPartitionConfig::new(ID, ResultPartitionType::PipelinedBounded, 1))
                .unwrap();
            for i in 0..100u64 {
                p.emit(&i, 0).unwrap();
            }
            p.flush_all().unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        "consumer" => {
            let mut g = env.create_input_gate(&gate_cfg()).unwrap();
            for _ in 0..10 {
                let _ = g.next(Some(Duration::from_secs(10))).unwrap();
            }
            std::thread::sleep(Duration::from_secs(60));
        }
        _ => {}
    }
}

#[test]
fn consumer_sees_a_killed_producer_as_dead() {
    let arena = arena();
    let mut peer = spawn(&arena, "producer");
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut gate = env.create_input_gate(&gate_cfg()).unwrap();
    let mut got = 0;
    while got < 100 {
        match gate.next(Some(Duration::from_secs(20))).unwrap() {
            GateItem::Record { .. } => got += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    peer.kill().unwrap();
    peer.wait().unwrap();
    let t = Instant::now();
    let err = gate.next(Some(Duration::from_secs(20))).unwrap_err();
    assert!(matches!(err, Error::PeerDied { role: "producer", .. }), "{err}");
    assert!(err.to_string().contains("producer of partition"), "{err}");
    println!("the producer's death was noticed after {:?}", t.elapsed());
    drop(peer);
}

#[test]
fn union_gate_sees_a_killed_producer_as_dead() {
    let arena = arena();
    let mut peer = spawn(&arena, "producer");
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut union = env.create_union_gate(&[gate_cfg()]).unwrap();
    let mut got = 0;
    while got < 100 {
        match union.next(Some(Duration::from_secs(20))).unwrap() {
            (0, GateItem::Record { .. }) => got += 1,
            (g, other) => panic!("unexpected {other:?} from gate {g}"),
        }
    }
    peer.kill().unwrap();
    peer.wait().unwrap();
    let err = union.next(Some(Duration::from_secs(20))).unwrap_err();
    assert!(matches!(err, Error::PeerDied { role: "producer", .. }), "{err}");
    drop(peer);
}

#[test]
fn producer_sees_a_killed_consumer_as_dead() {
    let arena = arena();
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let mut cfg = ResultPartitionConfig::new(ID, ResultPartitionType::PipelinedBounded, 1);
    cfg.timeout = Some(Duration::from_secs(20));
    let mut part = env.create_result_partition(&cfg).unwrap();
    let peer = spawn(&arena, "consumer");
    // The consumer reads 10 records and stops reading, so the writer below blocks. A thread
    // kills the consumer once it has attached (a consumer that dies before it attaches is
    // unknown to the producer, which then waits for its partition to be requested until its
    // own timeout) and had time to read; the kill may land before or while the writer is
    // blocked, and the writer must notice it either way. (Killing from the writing thread
    // between two writes missed the moment when the first block was the last one.)
    let channel = part.info().first_channel as usize;
    let killer = {
        let arena = arena.clone();
        std::thread::spawn(move || {
            let mut peer = peer;
            let deadline = Instant::now() + Duration::from_secs(20);
            // Relaxed: a test's look at who attached.
            while arena.channels()[channel].consumer_worker().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(300));
            let alive_at_kill = peer.try_wait().unwrap().is_none();
            let _ = peer.kill();
            let _ = peer.wait();
            alive_at_kill
        })
    };
    let rec = vec![1u8; 1000];
    let mut written = 0u64;
    let err = loop {
        match part.emit(&rec[..], 0) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(killer.join().unwrap(), "the consumer died before it was killed");
    assert!(written >= 10, "only {written} records were written before the error");
    assert!(matches!(err, Error::PeerDied { role: "consumer", .. }), "{err}");
}

/// A private directory under /dev/shm (tmpfs, so an arena file can be renamed into it),
/// removed with everything in it on drop, also when the test fails. `shmflow clean` is
/// pointed at it (`SHMFLOW_SHM_DIR`, and `TMPDIR` for the job directories), so a non-dry
/// clean of one test can neither remove another test's arenas nor be disturbed by them.
struct ShmDir(std::path::PathBuf);

impl ShmDir {
    fn new(tag: &str) -> Self {
        let p = std::path::Path::new("/dev/shm").join(format!("shmflow-test-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        Self(p)
    }

    /// Creates the named arena `name` and moves its file in here. Until the move it sits in
    /// /dev/shm with a live creator (this process), which every `clean` keeps.
    fn arena(&self, name: &str) -> (Arena, std::path::PathBuf) {
        let mut a = Arena::create_named(name, &ArenaConfig { segment_count: 16, ..ArenaConfig::default() }).unwrap();
        a.keep();
        let path = self.0.join(name);
        if let Err(e) = std::fs::rename(Arena::named_path(name).unwrap(), &path) {
            let _ = std::fs::remove_file(Arena::named_path(name).unwrap());
            panic!("moving arena {name} into {}: {e}", self.0.display());
        }
        (a, path)
    }

    /// `shmflow clean` (with `args`) that sees only this directory.
    fn clean(&self, args: &[&str]) -> String {
        let out =
            shmflow().arg("clean").args(args).env("SHMFLOW_SHM_DIR", &self.0).env("TMPDIR", &self.0).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "clean {args:?}: {text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes the arena file at `path` look as if its creator died (a pid that does not
/// exist), patching the header in place (a live mapping of it stays valid).
fn pretend_creator_died(path: &std::path::Path) {
    let mut bytes = vec![0u8; std::mem::size_of::<shmflow::memory::StaticHeader>()];
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).unwrap();
    // SAFETY: `bytes` holds a whole StaticHeader (a plain repr(C) struct of integers, valid
    // for any bytes); read_unaligned copes with the Vec's alignment.
    let mut h: shmflow::memory::StaticHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    h.creator_pid = 0x7fff_fff0;
    h.checksum = h.compute_checksum();
    // SAFETY: `h` is a plain repr(C) struct without padding; its bytes are initialized.
    let raw = unsafe {
        std::slice::from_raw_parts((&h as *const shmflow::memory::StaticHeader).cast::<u8>(), std::mem::size_of_val(&h))
    };
    std::os::unix::fs::FileExt::write_all_at(&file, raw, 0).unwrap();
}

#[test]
fn clean_removes_only_arenas_whose_creator_died_and_check_reports_an_idle_arena() {
    let dir = ShmDir::new("clean");
    let name = format!("shmflow-test-clean-{}", std::process::id());
    let status = shmflow().args(["check", "--name", "definitely-not-there"]).status().unwrap();
    assert!(!status.success(), "check of a missing arena fails");
    let (a, live) = dir.arena(&name);
    let out = shmflow().args(["check", "--path"]).arg(&live).args(["--idle", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["free_walked"], 16);
    // Our own arena (creator alive) is kept by clean.
    let text = dir.clean(&[]);
    assert!(text.contains(&format!("keep   {}", live.display())), "{text}");
    assert!(live.exists());
    // An arena whose creator died and nobody is attached to is removed; ours stays.
    let (b, stale) = dir.arena(&format!("{name}-stale"));
    drop(b);
    pretend_creator_died(&stale);
    let text = dir.clean(&[]);
    assert!(text.contains(&format!("removed {}", stale.display())), "{text}");
    assert!(text.contains(&format!("keep   {}", live.display())), "{text}");
    assert!(!stale.exists());
    assert!(live.exists());
    drop(a);
}

#[test]
fn clean_keeps_an_arena_whose_creator_died_while_another_process_is_attached() {
    let dir = ShmDir::new("clean-attached");
    let name = format!("shmflow-test-clean-attached-{}", std::process::id());
    let (a, path) = dir.arena(&name);
    drop(a);
    // A surviving process (this one) is attached in a worker slot.
    let b = Arena::attach_path(&path).unwrap();
    let slot = shmflow::memory::liveness::claim(&b).unwrap();
    // Then the creator dies, as a killed first TaskManager.
    pretend_creator_died(&path);
    let me = std::process::id();
    for args in [&["--dry-run"][..], &[][..]] {
        let text = dir.clean(args);
        assert!(
            text.contains(&format!(
                "keep   {} (creator pid {} is gone; attached pids {me} are running)",
                path.display(),
                0x7fff_fff0
            )),
            "{args:?}: {text}"
        );
        assert!(path.exists(), "{args:?} removed an arena a live process uses");
    }
    // Once the last attached process has left, the arena is stale.
    shmflow::memory::liveness::mark_exited(&b, slot);
    let text = dir.clean(&["--dry-run"]);
    assert!(text.contains(&format!("stale  {}", path.display())), "{text}");
    drop(b);
}
