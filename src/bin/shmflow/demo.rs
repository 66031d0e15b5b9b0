//! `shmflow demo`: the foundation end to end across two processes. This process creates a
//! memfd arena, spawns itself as the consumer with the arena fd inherited, streams records
//! through pool, builder, rings, credits and wake-ups, and both sides check a checksum.

use crate::cli::*;
use crate::common::*;
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::ring::{StreamReader, StreamWriter};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn demo(records: u64, payload: usize, mode: Mode, segment_size: u32, credit: u32) -> AnyResult<()> {
    check_records(records)?;
    if !segment_size.is_power_of_two() || !(4096..=16 << 20).contains(&segment_size) {
        return Err(format!("--segment-size {segment_size} must be a power of two in 4096..=16777216").into());
    }
    // `segment_size >= 4096` from here on: no subtraction below wraps.
    let max_payload = segment_size as usize - 4;
    if !(8..=max_payload).contains(&payload) {
        return Err(
            format!("--payload {payload} must be in 8..={max_payload} for a segment of {segment_size} bytes").into()
        );
    }
    let ring_capacity = ArenaConfig::default().ring_capacity;
    if credit == 0 || credit >= ring_capacity {
        return Err(format!("--credit {credit} is out of range (1..={})", ring_capacity - 1).into());
    }
    let cfg =
        ArenaConfig { segment_size, segment_count: (credit * 2).max(16), max_channels: 2, ..ArenaConfig::default() };
    let arena = Arc::new(Arena::create_memfd(&cfg, "demo")?);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "demo-consumer",
        "--producer",
        &std::process::id().to_string(),
        "--credit",
        &credit.to_string(),
        "--mode",
    ]);
    cmd.arg(match mode {
        Mode::Spin => "spin",
        Mode::Adaptive => "adaptive",
        Mode::Park => "park",
    });
    cmd.stdout(Stdio::piped());
    arena.inherit_fd_into(&mut cmd)?;
    let mut child = ChildGuard(Some(cmd.spawn()?));
    let consumer = child.0.as_ref().map_or(0, std::process::Child::id);
    // Waits end every liveness interval to look at the consumer.
    let mut w = StreamWriter::new(arena.clone(), 0, credit, mode.policy(), Some(LIVENESS_INTERVAL))?;
    let consumer_alive = || !child_exited(consumer);
    let mut buf = vec![0u8; payload];
    let mut sum = 0u64;
    let start = Instant::now();
    for i in 0..records {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        sum = sum.wrapping_add(i);
        while_peer_lives(|| w.write(&buf), &consumer_alive, "consumer", consumer)?;
    }
    while_peer_lives(|| w.finish(), &consumer_alive, "consumer", consumer)?;
    let out = child.0.take().expect("child").wait_with_output()?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("consumer failed ({}): {text}", out.status).into());
    }
    let mut it = text.split_whitespace();
    let (n, s): (u64, u64) = (it.next().unwrap_or("0").parse()?, it.next().unwrap_or("0").parse()?);
    if n != records || s != sum {
        return Err(format!("consumer saw {n} records with sum {s}, expected {records} with sum {sum}").into());
    }
    let secs = elapsed.as_secs_f64();
    out!(
        "{records} records of {payload} B across two processes in {secs:.3} s: {:.1} M records/s, {:.2} GB/s; \
         {} segments, producer back-pressured {:.1} ms, checksums match",
        records as f64 / secs / 1e6,
        records as f64 * payload as f64 / secs / 1e9,
        w.segments,
        w.pool().blocked_ns as f64 / 1e6,
    );
    Ok(())
}

/// How often the demo's two sides look at each other while they wait (as the gates do by
/// default): a dead peer is noticed within about this long.
pub(crate) const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

/// How long the demo's sides wait without progress for a peer that lives.
pub(crate) const DEMO_PATIENCE: Duration = Duration::from_secs(30);

/// Whether child `pid` has exited (without reaping it).
pub(crate) fn child_exited(pid: u32) -> bool {
    // SAFETY: a zeroed siginfo_t is valid; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOWAIT leaves the child to be reaped by its owner; WNOHANG never blocks.
    let r = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    // SAFETY: waitid filled `info` (si_pid stays 0 while the child runs).
    r == 0 && unsafe { info.si_pid() } != 0
}

/// Runs `op`, whose waits end after [`LIVENESS_INTERVAL`], again after each timeout while
/// the peer lives, for at most [`DEMO_PATIENCE`]; a dead peer ends it with an error
/// naming it.
pub(crate) fn while_peer_lives<T>(
    mut op: impl FnMut() -> shmflow::Result<T>,
    alive: &dyn Fn() -> bool,
    role: &str,
    pid: u32,
) -> AnyResult<T> {
    // Read the clock only once a wait timed out: this wraps every record.
    let mut deadline = None;
    loop {
        match op() {
            Err(shmflow::Error::Timeout(..)) => {
                if !alive() {
                    return Err(format!("the {role} (pid {pid}) died").into());
                }
                if Instant::now() >= *deadline.get_or_insert_with(|| Instant::now() + DEMO_PATIENCE) {
                    return Err(format!("the {role} (pid {pid}) made no progress for {DEMO_PATIENCE:?}").into());
                }
            }
            r => return Ok(r?),
        }
    }
}

pub(crate) fn demo_consumer(credit: u32, mode: Mode, producer: u32) -> AnyResult<()> {
    let arena = Arc::new(Arena::attach_inherited()?);
    let mut r = StreamReader::new(arena, 0, credit, mode.policy())?;
    // SAFETY: getppid has no preconditions and cannot fail; a dead parent leaves us to
    // another (init or a subreaper), also when it died before we first looked.
    let producer_alive = || unsafe { libc::getppid() } as u32 == producer;
    let (mut n, mut sum) = (0u64, 0u64);
    let seq = |p: &[u8]| p.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes);
    while let Some(v) =
        while_peer_lives(|| r.next(Some(LIVENESS_INTERVAL), seq), &producer_alive, "producer", producer)?
    {
        let Some(v) = v else {
            return Err(format!("record {n} is shorter than its 8-byte sequence number").into());
        };
        if v != n {
            return Err(format!("record {n} carried sequence number {v}").into());
        }
        sum = sum.wrapping_add(v);
        n += 1;
    }
    out!("{n} {sum}");
    Ok(())
}
