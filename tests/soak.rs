//! The short kill soak (issue 15): `shmflow-soak run` with 30 kills — 8 processes on a
//! named arena streaming to each other while a random one is SIGKILLed every 100 ms. The
//! soak itself checks that every segment is free afterwards and that no survivor waited
//! more than its liveness interval + 1 s on a dead peer; `tools/soak` is the long version.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn thirty_kills_leave_every_segment_free_and_no_survivor_waits_on_the_dead() {
    let _serial = common::serial();
    let name = format!("shmflow-soak-test-{}", std::process::id());
    // Removes the arena file whatever happens (the driver also unlinks it on its exit;
    // its workers die with it: PR_SET_PDEATHSIG).
    struct Unlink(String);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(format!("/dev/shm/{}", self.0));
        }
    }
    let _unlink = Unlink(name.clone());
    let mut driver = common::KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_shmflow-soak"))
            .args(["run", "--kills", "30", "--interval-ms", "100", "--arena", &name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the soak binary starts"),
    );
    let stdout = common::collect_stderr(driver.stdout.take().expect("piped"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = driver.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the soak did not end within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = stdout.join().expect("stdout reader");
    assert!(status.success(), "soak failed ({status}):\n{out}");
    let line = out.lines().find(|l| l.starts_with("SOAK ")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    assert!(line.contains("kills=30 ") && line.contains("check=ok"), "{line}");
    assert!(!std::path::Path::new(&format!("/dev/shm/{name}")).exists(), "the arena file was left behind");
}
