//! The `shmflow` command line.
//!
//! `shmflow demo` runs the foundation end to end across two processes: this process creates
//! a memfd arena, spawns itself as the consumer with the arena fd inherited, streams records
//! through pool, builder, rings, credits and wake-ups, and both sides check a checksum.

use clap::{Parser, Subcommand, ValueEnum};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::ring::{StreamReader, StreamWriter};
use shmflow::sync::WaitPolicy;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "shmflow", version, about = "Zero-copy shared-memory shuffle runtime")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Spin while waiting (lowest latency, a core busy).
    Spin,
    /// Spin briefly, then park on a futex (the default).
    Adaptive,
    /// Park at once.
    Park,
}

impl Mode {
    fn policy(self) -> WaitPolicy {
        match self {
            Mode::Spin => WaitPolicy::spin(),
            Mode::Adaptive => WaitPolicy::adaptive(),
            Mode::Park => WaitPolicy::park(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Stream records from this process to a child process through a shared arena.
    Demo {
        /// Number of records.
        #[arg(long, default_value_t = 20_000_000)]
        records: u64,
        /// Payload bytes per record (at least 8, at most segment size - 4).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// How both sides wait.
        #[arg(long, value_enum, default_value_t = Mode::Adaptive)]
        mode: Mode,
        /// Segment size in bytes (a power of two, 4 KiB..16 MiB).
        #[arg(long, default_value_t = 32 * 1024)]
        segment_size: u32,
        /// Segments the consumer grants as credit (and the producer's pool quota).
        #[arg(long, default_value_t = 8)]
        credit: u32,
    },
    /// The consumer half of `demo` (started by `demo` itself).
    #[command(hide = true)]
    DemoConsumer {
        #[arg(long)]
        credit: u32,
        #[arg(long, value_enum)]
        mode: Mode,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Demo { records, payload, mode, segment_size, credit } => demo(records, payload, mode, segment_size, credit),
        Cmd::DemoConsumer { credit, mode } => demo_consumer(credit, mode),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmflow: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Kills and reaps the child if the parent leaves early.
struct ChildGuard(Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn demo(records: u64, payload: usize, mode: Mode, segment_size: u32, credit: u32) -> AnyResult<()> {
    if payload < 8 || payload + 4 > segment_size as usize {
        return Err(format!("--payload must be in 8..={} for a segment of {segment_size} bytes", segment_size - 4).into());
    }
    let cfg = ArenaConfig { segment_size, segment_count: (credit * 2).max(16), max_channels: 2, ..ArenaConfig::default() };
    let arena = Arc::new(Arena::create_memfd(&cfg, "demo")?);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["demo-consumer", "--credit", &credit.to_string(), "--mode"]);
    cmd.arg(match mode {
        Mode::Spin => "spin",
        Mode::Adaptive => "adaptive",
        Mode::Park => "park",
    });
    cmd.stdout(Stdio::piped());
    arena.inherit_fd_into(&mut cmd)?;
    let mut child = ChildGuard(Some(cmd.spawn()?));
    let timeout = Some(Duration::from_secs(30));
    let mut w = StreamWriter::new(arena.clone(), 0, credit, mode.policy(), timeout)?;
    let mut buf = vec![0u8; payload];
    let mut sum = 0u64;
    let start = Instant::now();
    for i in 0..records {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        sum = sum.wrapping_add(i);
        w.write(&buf)?;
    }
    w.finish()?;
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
    println!(
        "{records} records of {payload} B across two processes in {secs:.3} s: {:.1} M records/s, {:.2} GB/s; \
         {} segments, producer back-pressured {:.1} ms, checksums match",
        records as f64 / secs / 1e6,
        records as f64 * payload as f64 / secs / 1e9,
        w.segments,
        w.pool().blocked_ns as f64 / 1e6,
    );
    Ok(())
}

fn demo_consumer(credit: u32, mode: Mode) -> AnyResult<()> {
    let arena = Arc::new(Arena::attach_inherited()?);
    let mut r = StreamReader::new(arena, 0, credit, mode.policy())?;
    let (mut n, mut sum) = (0u64, 0u64);
    while let Some(v) = r.next(Some(Duration::from_secs(30)), |p| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&p[..8]);
        u64::from_le_bytes(b)
    })? {
        if v != n {
            return Err(format!("record {n} carried sequence number {v}").into());
        }
        sum = sum.wrapping_add(v);
        n += 1;
    }
    println!("{n} {sum}");
    Ok(())
}
