//! The foundation between two processes: a memfd arena inherited by a child process, a
//! record stream across it in both directions, backpressure, and park/wake round trips.
//!
//! ```text
//!  parent (this test)                                   child (this binary, re-executed)
//!  Arena::create_memfd --inherit_fd_into(Command)-->    Arena::attach_inherited
//!  StreamWriter ch 0 ==== records in shared memory ===> StreamReader ch 0 (verifies in place)
//!  StreamReader ch 1 <=== replies (ping-pong test) ==== StreamWriter ch 1
//!  stdin pipe: "resume" -------------------------->     stdout: SHMFLOW_READY / _PAUSED / _RESULT
//! ```
//!
//! The child is `child_entry` run with `--exact`; it does nothing unless `SHMFLOW_TEST_ROLE`
//! is set, so in a normal run it passes at once. Every child is killed and reaped by
//! [`ChildProc`]'s drop, every wait is bounded, and no file is created (memfd only).
//! The tests that spawn children take a lock so they do not compete for the two vCPUs.

use shmflow::memory::{Arena, ArenaConfig};
use shmflow::ring::{StreamReader, StreamWriter};
use shmflow::sync::{EventCount, Ordering, WaitPolicy};
use shmflow::Error;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{env_u64, self_command, serial, ChildProc};

/// Set in a child: which role `child_entry` plays.
const ROLE_ENV: &str = "SHMFLOW_TEST_ROLE";
const SEED_ENV: &str = "SHMFLOW_TEST_SEED";
const CREDIT_ENV: &str = "SHMFLOW_TEST_CREDIT";
const PAUSE_ENV: &str = "SHMFLOW_TEST_PAUSE_AFTER";

/// Segment size of every arena here: the smallest allowed, so full-segment records are
/// cheap enough for ten million records in a debug build.
const SEG: u32 = 4096;
/// The largest payload a stream record can carry (segment minus the 4-byte length prefix).
const MAX_PAYLOAD: usize = SEG as usize - 4;
/// Bound of every single wait on the other process (a hang turns into a failure).
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a whole child run.
const CHILD_DEADLINE: Duration = Duration::from_secs(600);
/// The WAITING bit of an event count word (`[epoch:31 | WAITING:1]`, sync/event_count.rs):
/// set while a waiter has announced itself and no notify has come since.
const WAITING: u32 = 1;

fn config() -> ArenaConfig {
    ArenaConfig {
        segment_size: SEG,
        segment_count: 64,
        ring_capacity: 64,
        max_channels: 4,
        max_partitions: 4,
        max_gates: 4,
        max_channels_per_gate: 64,
        max_workers: 4,
        max_tasks: 4,
    }
}

/// The seed: `SHMFLOW_TEST_SEED` to reproduce a run, else a fresh one (printed).
fn seed() -> u64 {
    let s = match std::env::var(SEED_ENV) {
        Ok(v) => v.parse().expect("SHMFLOW_TEST_SEED is a number"),
        Err(_) => rand::random(),
    };
    eprintln!("seed {s} (rerun with {SEED_ENV}={s})");
    s
}

// ---------------------------------------------------------------------------------------
// Child process handling
// ---------------------------------------------------------------------------------------

/// What a finished child said.
struct ChildReport {
    lines: Vec<String>,
    values: HashMap<String, String>,
}

impl ChildReport {
    fn u64(&self, key: &str) -> u64 {
        let v = self.values.get(key).unwrap_or_else(|| panic!("child reported no {key}: {:?}", self.lines));
        v.parse().unwrap_or_else(|_| panic!("child reported {key}={v}, not a number"))
    }

    fn str(&self, key: &str) -> &str {
        self.values.get(key).unwrap_or_else(|| panic!("child reported no {key}: {:?}", self.lines))
    }
}

impl ChildProc {
    /// Spawns `child_entry` in `role` with the arena and `env`.
    fn spawn(role: &'static str, arena: &Arena, env: &[(&str, String)]) -> Self {
        let mut cmd = self_command("child_entry", ROLE_ENV, role);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Self::start(role.to_string(), cmd, arena, OP_TIMEOUT)
    }

    /// Fails the test if the child has exited already (it should still be working).
    fn check_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.fail(format!("the child exited early with {status}"));
        }
    }

    /// Waits (bounded) for the child to exit, checks it succeeded and parses its
    /// `SHMFLOW_RESULT k=v ...` line.
    fn finish(mut self) -> ChildReport {
        let deadline = Instant::now() + CHILD_DEADLINE;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => self.fail(format!("the child did not exit within {CHILD_DEADLINE:?}")),
                Err(e) => self.fail(format!("waiting for the child: {e}")),
            }
        };
        if !status.success() {
            self.fail(format!("the child failed: {status}"));
        }
        let values = self.result_values();
        ChildReport { lines: std::mem::take(&mut self.seen), values }
    }
}

/// The entry point of every child process; returns at once in a normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let arena = Arc::new(Arena::attach_inherited().expect("attach the inherited arena"));
    match role.as_str() {
        "verifying_reader" => child_verifying_reader(arena),
        "pong" => child_pong(arena),
        other => panic!("unknown role {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Records: sizes, contents and checksum, all derived from a seed
// ---------------------------------------------------------------------------------------

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

const PATTERN_SPAN: usize = 1 << 16;
/// Seeds the writer's flush decisions apart from the record sequence.
const FLUSH_SALT: u64 = 0x0066_6c75_7368;

/// The record sequence of a seed. Record `seq` has a length from a skewed distribution
/// (most tiny, 1% large, half of those a whole segment) and the content
/// `pattern[off..off + len]`, whose first 8 bytes are replaced by `seq` when it is long
/// enough. Writer and reader run the same sequence, so the reader can check every byte.
struct Records {
    rng: Rng,
    pattern: Vec<u8>,
}

impl Records {
    fn new(seed: u64) -> Self {
        let mut p = Rng(seed ^ 0x7061_7474_6572_6e21);
        let mut pattern = vec![0u8; PATTERN_SPAN + MAX_PAYLOAD];
        for chunk in pattern.chunks_mut(8) {
            let v = p.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Self { rng: Rng(seed), pattern }
    }

    /// `(len, offset in the pattern)` of the next record.
    fn next_spec(&mut self) -> (usize, usize) {
        let r = self.rng.next();
        let class = r % 100;
        let x = r >> 8;
        let len = if class == 0 {
            if x & 1 == 0 {
                MAX_PAYLOAD
            } else {
                MAX_PAYLOAD / 2 + (x >> 1) as usize % (MAX_PAYLOAD / 2)
            }
        } else if class < 5 {
            65 + (x as usize % 960)
        } else {
            // 1..=64, skewed towards the small end.
            let bits = 1 + (x % 6) as u32;
            1 + ((x >> 3) as usize % (1 << bits))
        };
        let off = (r >> 40) as usize % PATTERN_SPAN;
        (len, off)
    }

    /// Writes record `seq` into `buf` and returns it.
    fn fill<'b>(&self, seq: u64, len: usize, off: usize, buf: &'b mut [u8]) -> &'b [u8] {
        let out = &mut buf[..len];
        out.copy_from_slice(&self.pattern[off..off + len]);
        if len >= 8 {
            out[..8].copy_from_slice(&seq.to_le_bytes());
        }
        out
    }

    /// Checks that `p` is record `seq`.
    fn check(&self, seq: u64, len: usize, off: usize, p: &[u8]) -> Result<(), String> {
        if p.len() != len {
            return Err(format!("record {seq} has {} bytes, expected {len}", p.len()));
        }
        let from = if len >= 8 {
            let got = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
            if got != seq {
                return Err(format!("record {seq} carries sequence number {got}: out of order"));
            }
            8
        } else {
            0
        };
        if p[from..] != self.pattern[off + from..off + len] {
            let i = (from..len).find(|&i| p[i] != self.pattern[off + i]).unwrap_or(from);
            return Err(format!(
                "record {seq} ({len} bytes) differs at byte {i}: {:#04x}, expected {:#04x}",
                p[i],
                self.pattern[off + i]
            ));
        }
        Ok(())
    }
}

const CHECKSUM_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// Folds `p` (its length and every byte) into `acc`.
fn checksum(acc: u64, p: &[u8]) -> u64 {
    const K: u64 = 0x0000_0100_0000_01b3;
    let mut h = (acc ^ p.len() as u64).wrapping_mul(K);
    let mut words = p.chunks_exact(8);
    for w in &mut words {
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(23) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

/// Child role: reads channel 0 with the granted credit, checks every record in place,
/// optionally pauses after `SHMFLOW_TEST_PAUSE_AFTER` records until the parent sends
/// "resume" on stdin, and reports count, checksum and bytes.
fn child_verifying_reader(arena: Arc<Arena>) {
    let seed = env_u64(SEED_ENV).expect("seed");
    let credit = env_u64(CREDIT_ENV).expect("credit") as u32;
    let pause_after = env_u64(PAUSE_ENV);
    let mut r = StreamReader::new(arena, 0, credit, WaitPolicy::adaptive()).expect("open the reader");
    println!("SHMFLOW_READY");
    let mut gen = Records::new(seed);
    let (mut count, mut sum, mut bytes) = (0u64, CHECKSUM_INIT, 0u64);
    let mut error = None;
    loop {
        if pause_after == Some(count) {
            println!("SHMFLOW_PAUSED {count}");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            if line.trim() != "resume" {
                error = Some(format!("expected \"resume\" on stdin, got {line:?}"));
                break;
            }
        }
        let (len, off) = gen.next_spec();
        let gen = &gen;
        match r.next(Some(OP_TIMEOUT), |p| (gen.check(count, len, off, p), checksum(sum, p))) {
            Ok(Some((Ok(()), s))) => {
                sum = s;
                count += 1;
                bytes += len as u64;
            }
            Ok(Some((Err(e), _))) => {
                error = Some(e);
                break;
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(format!("reading record {count}: {e}"));
                break;
            }
        }
    }
    if error.is_some() {
        // Unblocks the writer at once (ConsumerGone) instead of at its timeout.
        r.channel().close();
    }
    println!("SHMFLOW_RESULT count={count} checksum={sum} bytes={bytes} parks={}", r.parks());
    if let Some(e) = error {
        println!("SHMFLOW_ERROR {e}");
        panic!("{e}");
    }
}

/// Takes back (bounded) every segment the reader still has to release.
fn drain(w: &mut StreamWriter) -> Result<(), String> {
    let deadline = Instant::now() + OP_TIMEOUT;
    loop {
        w.reclaim().map_err(|e| format!("reclaim: {e}"))?;
        if w.pool().outstanding() == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} segments never came back", w.pool().outstanding()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------
// 1. Ten million records
// ---------------------------------------------------------------------------------------

#[test]
fn ten_million_records_cross_processes_intact() {
    let _serial = serial();
    const RECORDS: u64 = 10_000_000;
    const CREDIT: u32 = 8;
    const POOL: u32 = 16;
    let seed = seed();
    let arena = Arc::new(Arena::create_memfd(&config(), "records").unwrap());
    let mut child =
        ChildProc::spawn("verifying_reader", &arena, &[(SEED_ENV, seed.to_string()), (CREDIT_ENV, CREDIT.to_string())]);
    let mut w = StreamWriter::new(arena.clone(), 0, POOL, WaitPolicy::adaptive(), Some(OP_TIMEOUT)).unwrap();
    let mut gen = Records::new(seed);
    let mut flushes = Rng(seed ^ FLUSH_SALT);
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let (mut sum, mut bytes, mut full, mut explicit_flushes) = (CHECKSUM_INIT, 0u64, 0u64, 0u64);
    for seq in 0..RECORDS {
        let (len, off) = gen.next_spec();
        let p = gen.fill(seq, len, off, &mut buf);
        sum = checksum(sum, p);
        bytes += len as u64;
        full += u64::from(len == MAX_PAYLOAD);
        if let Err(e) = w.write(p) {
            child.fail(format!("writing record {seq} (seed {seed}): {e}"));
        }
        // Random flushes, plus stretches that flush after every record.
        if seq % 1_000_000 < 1_000 || flushes.next() % 512 == 0 {
            if let Err(e) = w.flush() {
                child.fail(format!("flush after record {seq}: {e}"));
            }
            explicit_flushes += 1;
        }
        if seq % (1 << 20) == 0 {
            child.check_running();
        }
    }
    if let Err(e) = w.finish() {
        child.fail(format!("finishing the stream (seed {seed}): {e}"));
    }
    let report = child.finish();
    assert_eq!(report.u64("count"), RECORDS, "records read (seed {seed})");
    assert_eq!(report.u64("bytes"), bytes, "payload bytes read (seed {seed})");
    assert_eq!(report.u64("checksum"), sum, "checksum of everything read (seed {seed})");
    assert!(full > 10_000, "only {full} full-segment records: the size distribution is off");
    assert!(explicit_flushes > 10_000, "only {explicit_flushes} flushes");
    assert!(w.max_in_flight <= CREDIT, "{} segments in flight with credit {CREDIT}", w.max_in_flight);
    assert!(w.segments >= bytes / u64::from(SEG), "{} segments for {bytes} bytes", w.segments);
    let block = &arena.channels()[0];
    assert_eq!(block.buffers_out.load(Ordering::Relaxed), w.segments);
    assert_eq!(block.buffers_in.load(Ordering::Relaxed), w.segments, "every segment was released");
    drain(&mut w).unwrap();
    drop(w);
    assert_eq!(arena.header_atomics().free_stack.len(), arena.segment_count(), "a segment leaked");
}

// ---------------------------------------------------------------------------------------
// 2. Backpressure
// ---------------------------------------------------------------------------------------

/// The writer's waits time out after this long, so the test can look at the writer while
/// it is blocked; a timed-out write is simply retried.
const BLOCK_PROBE: Duration = Duration::from_millis(20);

/// The consumer stops after `PAUSE_AFTER` records; the producer must block holding exactly
/// `min(credit, pool_max)` segments, and everything completes once the consumer goes on.
fn backpressure(credit: u32, pool_max: u32) {
    let _serial = serial();
    const RECORDS: u64 = 200_000;
    const PAUSE_AFTER: u64 = 50_000;
    let quota = credit.min(pool_max);
    let seed = seed();
    let arena = Arc::new(Arena::create_memfd(&config(), "backpressure").unwrap());
    let mut child = ChildProc::spawn(
        "verifying_reader",
        &arena,
        &[(SEED_ENV, seed.to_string()), (CREDIT_ENV, credit.to_string()), (PAUSE_ENV, PAUSE_AFTER.to_string())],
    );
    // From here on the credit is granted, so a blocked writer can only be one that holds
    // its whole quota.
    child.wait_line("SHMFLOW_READY");
    let mut w = StreamWriter::new(arena.clone(), 0, pool_max, WaitPolicy::adaptive(), Some(BLOCK_PROBE)).unwrap();
    let block = &arena.channels()[0];
    let mut gen = Records::new(seed);
    let mut flushes = Rng(seed ^ FLUSH_SALT);
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let (mut sum, mut bytes) = (CHECKSUM_INIT, 0u64);
    // Framed bytes (payload + length prefix) written so far, and up to the pause point.
    let (mut framed, mut framed_at_pause) = (0u64, None);
    let mut paused = false;
    let mut probes_while_paused = 0;
    let mut resumed_at = None;
    let mut blocked_probes = 0u64;
    let deadline = Instant::now() + CHILD_DEADLINE;
    for seq in 0..RECORDS {
        if seq == PAUSE_AFTER {
            framed_at_pause = Some(framed);
        }
        let (len, off) = gen.next_spec();
        let p = gen.fill(seq, len, off, &mut buf);
        loop {
            match w.write(p) {
                Ok(()) => break,
                Err(Error::Timeout(..)) => {}
                Err(e) => child.fail(format!("writing record {seq} (seed {seed}): {e}")),
            }
            // Blocked for BLOCK_PROBE: whatever the consumer is doing, the writer must hold
            // exactly its quota, every segment of it published.
            blocked_probes += 1;
            let (in_flight, outstanding) = (w.channel().in_flight(), w.pool().outstanding());
            if in_flight != quota || outstanding != quota {
                child.fail(format!(
                    "writer blocked at record {seq} with {in_flight} segments in flight and {outstanding} \
                     handed out; the quota is {quota} (credit {credit}, pool max {pool_max})"
                ));
            }
            if !paused {
                if let Some(at) = child.try_line("SHMFLOW_PAUSED ") {
                    assert_eq!(at.trim(), PAUSE_AFTER.to_string(), "the child paused at the wrong record");
                    paused = true;
                }
            }
            if paused && resumed_at.is_none() {
                // The consumer is stopped, so nothing comes back: the arena's counters
                // show the same quota from the consumer's side.
                let out = block.buffers_out.load(Ordering::Relaxed);
                let back = block.buffers_in.load(Ordering::Relaxed);
                if out - back != u64::from(quota) {
                    child.fail(format!("{out} segments published, {back} released while paused: quota {quota}"));
                }
                let ahead = framed - framed_at_pause.expect("the writer passed the pause point");
                if ahead > u64::from(quota) * u64::from(SEG) {
                    child.fail(format!("{ahead} bytes written beyond the consumer: more than {quota} segments"));
                }
                probes_while_paused += 1;
                if probes_while_paused == 2 {
                    // Blocked twice in a row with nothing moving: let the consumer go on.
                    resumed_at = Some(seq);
                    child.send_line("resume");
                }
            }
            if Instant::now() > deadline {
                child.fail("the writer stayed blocked too long");
            }
            child.check_running();
        }
        sum = checksum(sum, p);
        bytes += len as u64;
        framed += len as u64 + 4;
        if flushes.next() % 64 == 0 {
            if let Err(e) = w.flush() {
                child.fail(format!("flush after record {seq}: {e}"));
            }
        }
    }
    loop {
        match w.finish() {
            Ok(()) => break,
            Err(Error::Timeout(..)) if Instant::now() < deadline => child.check_running(),
            Err(e) => child.fail(format!("finishing the stream: {e}")),
        }
    }
    let report = child.finish();
    eprintln!(
        "quota {quota}: blocked {blocked_probes} times, resumed at record {resumed_at:?}, {} parks, {} segments",
        w.parks(),
        w.segments
    );
    assert!(paused, "the consumer never paused while the writer was blocked");
    let resumed_at = resumed_at.expect("the writer never blocked while the consumer paused");
    assert!(resumed_at > PAUSE_AFTER && resumed_at < RECORDS, "blocked at record {resumed_at}");
    assert_eq!(report.u64("count"), RECORDS, "records read (seed {seed})");
    assert_eq!(report.u64("bytes"), bytes, "bytes read (seed {seed})");
    assert_eq!(report.u64("checksum"), sum, "checksum (seed {seed})");
    assert_eq!(w.max_in_flight, quota, "the writer never had more (or less) than its quota in flight");
    assert!(w.parks() > 0, "the blocked writer never parked");
    assert!(w.pool().blocked_ns > 0, "no back-pressured time was counted");
    assert!(blocked_probes >= 2);
    assert!(w.pool().size() <= pool_max, "the pool grew to {} segments, max {pool_max}", w.pool().size());
    drain(&mut w).unwrap();
    drop(w);
    assert_eq!(arena.header_atomics().free_stack.len(), arena.segment_count(), "a segment leaked");
}

#[test]
fn backpressure_blocks_at_the_credit_and_resumes() {
    backpressure(4, 8);
}

#[test]
fn backpressure_blocks_at_the_pool_quota_and_resumes() {
    backpressure(8, 3);
}

// ---------------------------------------------------------------------------------------
// 3. Park/wake round trips
// ---------------------------------------------------------------------------------------

/// Park at once, and never wake up on a timer: a lost wake-up then hangs the waiter until
/// its (generous) timeout instead of being papered over by the 50 ms park slice.
fn park_only() -> WaitPolicy {
    WaitPolicy { park_slice: Duration::from_secs(3600), ..WaitPolicy::park() }
}

/// Spins until the waiter on `ec` has announced itself (so the next notify must wake it).
fn wait_until_parked(ec: &EventCount) -> Result<(), String> {
    let deadline = Instant::now() + OP_TIMEOUT;
    let mut i = 0u32;
    while ec.raw() & WAITING == 0 {
        i = i.wrapping_add(1);
        if i % 64 == 0 {
            if Instant::now() > deadline {
                return Err(format!("the peer did not park within {OP_TIMEOUT:?}"));
            }
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    Ok(())
}

fn reply(v: u64) -> u64 {
    v.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a
}

/// Child role: answers every ping on channel 0 with `reply(ping)` on channel 1, sending
/// only once the parent's reader is parked.
fn child_pong(arena: Arc<Arena>) {
    let mut r = StreamReader::new(arena.clone(), 0, 4, park_only()).expect("open the reader");
    let mut w = StreamWriter::new(arena.clone(), 1, 4, park_only(), Some(OP_TIMEOUT)).expect("open the writer");
    let peer = &arena.channels()[1].consumer_wake;
    let mut n = 0u64;
    let mut error = None;
    loop {
        match r.next(Some(OP_TIMEOUT), |p| <[u8; 8]>::try_from(p).map(u64::from_le_bytes)) {
            Ok(Some(Ok(v))) if v == n => {}
            Ok(Some(v)) => {
                error = Some(format!("ping {n} arrived as {v:?}"));
                break;
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(format!("waiting for ping {n}: {e}"));
                break;
            }
        }
        if let Err(e) = wait_until_parked(peer) {
            error = Some(format!("before pong {n}: {e}"));
            break;
        }
        if let Err(e) = w.write(&reply(n).to_le_bytes()).and_then(|()| w.flush()) {
            error = Some(format!("pong {n}: {e}"));
            break;
        }
        n += 1;
    }
    if error.is_none() {
        if let Err(e) = w.finish().map_err(|e| e.to_string()).and_then(|()| drain(&mut w)) {
            error = Some(format!("ending the pong stream: {e}"));
        }
    }
    println!("SHMFLOW_RESULT rounds={n} reader_parks={} writer_parks={}", r.parks(), w.parks());
    if let Some(e) = error {
        r.channel().close();
        println!("SHMFLOW_ERROR {e}");
        panic!("{e}");
    }
}

#[test]
fn park_wake_round_trips_between_processes() {
    let _serial = serial();
    const ROUNDS: u64 = 100_000;
    let arena = Arc::new(Arena::create_memfd(&config(), "pingpong").unwrap());
    let mut child = ChildProc::spawn("pong", &arena, &[]);
    let mut w = StreamWriter::new(arena.clone(), 0, 4, park_only(), Some(OP_TIMEOUT)).unwrap();
    let mut r = StreamReader::new(arena.clone(), 1, 4, park_only()).unwrap();
    let peer = &arena.channels()[0].consumer_wake;
    for i in 0..ROUNDS {
        if let Err(e) = wait_until_parked(peer) {
            child.fail(format!("before ping {i}: {e}"));
        }
        if let Err(e) = w.write(&i.to_le_bytes()).and_then(|()| w.flush()) {
            child.fail(format!("ping {i}: {e}"));
        }
        match r.next(Some(OP_TIMEOUT), |p| <[u8; 8]>::try_from(p).map(u64::from_le_bytes)) {
            Ok(Some(Ok(v))) if v == reply(i) => {}
            other => child.fail(format!("round trip {i} ended with {other:?}")),
        }
        if i % 4096 == 0 {
            child.check_running();
        }
    }
    if let Err(e) = w.finish() {
        child.fail(format!("finishing: {e}"));
    }
    match r.next(Some(OP_TIMEOUT), |p| p.len()) {
        Ok(None) => {}
        other => child.fail(format!("expected the end of the pong stream, got {other:?}")),
    }
    let report = child.finish();
    assert_eq!(report.u64("rounds"), ROUNDS, "round trips the child saw");
    // Each side announced itself before every message it received (wait_until_parked), so
    // nearly every wait ended in the futex; it can only be skipped when the message lands
    // between the announcement and the re-check.
    let (ours, theirs) = (r.parks(), report.u64("reader_parks"));
    eprintln!("parks: parent reader {ours}, child reader {theirs}, child writer {}", report.str("writer_parks"));
    assert!(ours >= ROUNDS / 2, "the parent's reader parked only {ours} times in {ROUNDS} round trips");
    assert!(theirs >= ROUNDS / 2, "the child's reader parked only {theirs} times in {ROUNDS} round trips");
    for ch in 0..2 {
        let b = &arena.channels()[ch];
        let out = b.buffers_out.load(Ordering::Relaxed);
        assert!(out > 0);
        assert_eq!(b.buffers_in.load(Ordering::Relaxed), out, "channel {ch}: every segment was released");
    }
    drain(&mut w).unwrap();
    drop((w, r));
    assert_eq!(arena.header_atomics().free_stack.len(), arena.segment_count(), "a segment leaked");
}
