//! Throughput of the network stack between two processes, after Flink's
//! StreamNetworkThroughputBenchmark and its skew and broadcast variants: writers x channels
//! x buffer timeout x record size, next to TCP loopback, a Unix socket stream and memcpy,
//! all measured in the same run.
//!
//! ```text
//!  consumer (this process, CPU a)                   producer (this binary re-executed with
//!                                                   SHMFLOW_TPUT_SPEC=<case>, CPU b)
//!                                                   W writer threads, each with C channels
//!  shmflow: one gate over all W x C channels <===== W ResultPartitions in one memfd arena
//!  tcp:     poll() over W connections        <----- W TCP_NODELAY connections (127.0.0.1),
//!  unix:    poll() over W streams            <----- W AF_UNIX stream socket pairs; each
//!                                                   multiplexes the writer's C channels
//!           every record: checksummed (every        record i of writer w: [w << 48 | i, u64]
//!           byte read), its writer and its          then a fixed filler up to its size
//!           sequence checked per channel
//!  "go" -> producer; the window opens after a warm-up and closes ("stop" -> producer); the
//!  producer finishes and reports how many records each writer sent; the consumer checks
//!  count and checksum of everything.
//! ```
//!
//! Shapes (Flink's): round robin (Flink's default channel selector) with 1x1, 2x2, 4x100,
//! 4x1000; `10x1000-skew` (Flink's DataSkewChannelSelector: each writer sends its first C
//! records one to each channel, then everything to channel 0; 1 ms timeout as Flink runs
//! it); `4x100-broadcast` (every record to every channel, 100 ms timeout; shmflow writes it
//! once into a segment all channels read, the sockets send it once per channel as a socket
//! stack must). Records: `8 B` is a `u64` (Flink's LongValue), `12 B` a `(u64, u32)` pair,
//! the others byte records (`[u8]`); `32 KiB segment` records carry 32 KiB - 4 bytes, so that
//! with their length prefix each fills exactly one 32 KiB segment and is read in place (the
//! streaming case to hold against iceoryx2's 32 KiB samples); `1 MiB` records span 32
//! segments and are reassembled.
//!
//! shmflow runs with Flink's credits: 2 exclusive per channel, and 8 floating per writer
//! (Flink's receiver here is a union of W gates with 8 each; this one gate over all W x C
//! channels gets 8 W), producer pools of 2C + 8 segments, 10 per channel at most. The arena
//! is sized from the shape: W (2C + 8) segments of 32 KiB plus a few (4x1000: 253 MiB,
//! 10x1000-skew: 630 MiB; a shape above 1 GiB is refused), channel blocks and a gate bitmap
//! for all W x C channels, rings that hold a channel's whole credit.
//!
//! The socket peers frame like Flink's Netty stack: each writer keeps a 32 KiB buffer per
//! channel, fills it with the same `[u32 len][payload]` records as a shmflow segment (a
//! record may continue in the channel's next buffer), and sends a buffer as one frame
//! `[u32 channel][u32 bytes][bytes]` on the writer's single connection when it is full or
//! when the buffer timeout flushes it (0 ms: after every record; N ms: when the same
//! [`OutputFlusher`] shmflow's RecordWriter uses raises its flag). Frames queue in a 64 KiB
//! send buffer (full buffers go out with writev, without a copy). The consumer reads up to
//! 64 KiB per system call, demultiplexes frames into per-channel decoders, decodes whole
//! records in place, and reads the rest of a large record straight into its reassembly
//! buffer (generous to the sockets). The sockets have no credit protocol of their own: the
//! kernel's socket buffers are their backpressure. `memcpy` copies the same payload bytes,
//! record by record, into a 4 MiB ring in one thread: the limit for 1 MiB records.
//!
//! Records/s counts records written (Flink's count: a broadcast record counts once; the
//! consumer reads it C times, reported as `deliveries_per_s`); GB/s is records/s times the
//! record's payload bytes. CPU ns per record is the CPU time (user + system, so the
//! kernel's socket work counts) of the producer and the consumer process over the window,
//! per record, both read by the consumer as the window opens and closes (its own with
//! getrusage RUSAGE_SELF, the producer's from /proc/PID/task/*/schedstat): it shows who
//! spins without work.
//! Throughput is measured at the consumer over a window that starts after a warm-up, so
//! process start, arena page faults and the drain at the end are outside it; a window spans
//! at least ten buffer timeouts. The vCPUs of our machines move between "near" and "far"
//! placement (MACHINE.md), so each case first measures a bare cache-line round trip between
//! the two CPUs (column `bare RTT`), and the systems of one case run back to back: compare
//! ratios, not absolute figures.
//!
//! `cargo bench --bench throughput [-- --json PATH --rounds N --measure-ms MS --no-pin]`
//! (argv holds `--bench`) runs every case (filters: `--shape NAME --timeout MS --size BYTES
//! --system NAME`); without `--bench` (as `cargo test --benches` runs it) a smoke run with
//! tiny windows touches every shape, record kind and system once. Every wait is bounded, a
//! watchdog kills a producer that outlives its deadline, a guard kills and reaps it on every
//! exit path, and nothing goes to /dev/shm (memfd arenas only).

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BroadcastPartitioner, BufferTimeout, ChannelSelector, OutputFlusher, RebalancePartitioner, RecordWriter,
    ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::record::Record;
use shmflow::sync::{CachePadded, Ordering};
use shmflow::ShuffleEnvironment;
use std::fs::File;
use std::io::{BufRead, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{
    accept_within, cpu_model, cpu_pair, die_with_parent, env_var, exit_code, inherited_fds, pass_fds, pin_to,
    proc_cpu_ns, rusage, spin_until, Producer, Res,
};

/// `shmflow::sync`'s atomics, as clippy.toml asks; the allows are for clippy resolving the
/// re-exports to the std types it bans.
#[allow(clippy::disallowed_types)]
type Flag = shmflow::sync::AtomicBool;
#[allow(clippy::disallowed_types)]
type Word = shmflow::sync::AtomicU64;

/// The case a re-executed child produces for; its presence makes the process a producer.
const ENV_SPEC: &str = "SHMFLOW_TPUT_SPEC";
/// Inherited fd numbers (Unix socket ends), comma-separated.
const ENV_FDS: &str = "SHMFLOW_TPUT_FDS";
/// The TCP port on 127.0.0.1 to connect to.
const ENV_PORT: &str = "SHMFLOW_TPUT_PORT";
/// The CPU the producer pins itself to.
const ENV_CPU: &str = "SHMFLOW_TPUT_CPU";
/// The longest one wait for the other side may take before the run fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a waiting consumer looks whether the producer is still alive.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// The longest one producer may live; its watchdog kills it after that.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
/// Arena segment size (Flink's default network buffer), and the socket writers' buffer
/// per channel.
const SEGMENT: usize = 32 * 1024;
/// The socket writers' send buffer (frames queue here; full frames bypass it).
const GATHER: usize = 64 * 1024;
/// The socket consumer's read size.
const READ_BUF: usize = 64 * 1024;
/// A large record's rest is read straight into its buffer when at least this much is due.
const DIRECT_MIN: usize = 4096;
/// The memcpy peer's destination ring.
const MEMCPY_RING: usize = 4 << 20;
/// Floating credits of the consumer's gate per writer (Flink: 8 per gate, one gate per
/// producing partition in its benchmark's receiver).
const FLOATING_PER_WRITER: u32 = 8;
/// An arena larger than this is not a sane benchmark setup.
const ARENA_LIMIT: u64 = 1 << 30;
/// Record payload sizes.
const LONG: usize = 8;
const PAIR: usize = 12;
const KIB: usize = 1024;
/// A record that, with its 4-byte length prefix, fills exactly one segment.
const SEG_RECORD: usize = SEGMENT - shmflow::record::LEN_PREFIX;
const MIB: usize = 1 << 20;
/// Bits of a record's first word that hold its sequence number; the writer sits above.
const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

fn main() -> ExitCode {
    let (who, result) = match std::env::var(ENV_SPEC) {
        Ok(spec) => (format!("throughput producer ({spec})"), producer_main(&spec)),
        Err(_) => ("throughput".to_string(), consumer_main()),
    };
    exit_code(&who, result)
}

// ---------------------------------------------------------------------------------------
// Cases, plan and arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Shmflow,
    Tcp,
    Unix,
    Memcpy,
}

impl System {
    const STREAMS: [System; 3] = [System::Shmflow, System::Tcp, System::Unix];

    fn name(self) -> &'static str {
        match self {
            System::Shmflow => "shmflow",
            System::Tcp => "tcp",
            System::Unix => "unix",
            System::Memcpy => "memcpy",
        }
    }

    fn from_name(name: &str) -> Option<System> {
        [System::Shmflow, System::Tcp, System::Unix, System::Memcpy].into_iter().find(|s| s.name() == name)
    }
}

/// How a writer picks the channels of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Round robin (Flink's default for the benchmark; RebalancePartitioner).
    RoundRobin,
    /// Flink's DataSkewChannelSelector: channels 0..C once each, then always 0.
    Skew,
    /// Every record to every channel.
    Broadcast,
}

impl Pattern {
    const ALL: [Pattern; 3] = [Pattern::RoundRobin, Pattern::Skew, Pattern::Broadcast];

    fn name(self) -> &'static str {
        match self {
            Pattern::RoundRobin => "round-robin",
            Pattern::Skew => "skew",
            Pattern::Broadcast => "broadcast",
        }
    }

    fn from_name(name: &str) -> Option<Pattern> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Writers x channels per writer, and how records go to channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    writers: u32,
    channels: u32,
    pattern: Pattern,
}

impl Shape {
    const fn new(writers: u32, channels: u32) -> Self {
        Self { writers, channels, pattern: Pattern::RoundRobin }
    }

    const fn with(writers: u32, channels: u32, pattern: Pattern) -> Self {
        Self { writers, channels, pattern }
    }

    /// `4x1000`, `10x1000-skew`, `4x100-broadcast`.
    fn name(self) -> String {
        match self.pattern {
            Pattern::RoundRobin => format!("{}x{}", self.writers, self.channels),
            p => format!("{}x{}-{}", self.writers, self.channels, p.name()),
        }
    }

    /// How many times the consumer reads each record written.
    fn fanout(self) -> u64 {
        match self.pattern {
            Pattern::Broadcast => u64::from(self.channels),
            _ => 1,
        }
    }
}

/// One cell of the matrix: a shape, a buffer timeout and a record size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    shape: Shape,
    timeout_ms: i64,
    size: usize,
}

fn size_name(size: usize) -> String {
    match size {
        LONG => "8 B (u64)".into(),
        PAIR => "12 B (u64,u32)".into(),
        SEG_RECORD => "32 KiB segment".into(),
        s if s >= MIB && s % MIB == 0 => format!("{} MiB", s / MIB),
        s if s >= KIB && s % KIB == 0 => format!("{} KiB", s / KIB),
        s => format!("{s} B"),
    }
}

/// What a producer child is told: `system:W:C:pattern:timeout_ms:size`.
fn encode_spec(system: System, case: Case) -> String {
    let s = case.shape;
    format!("{}:{}:{}:{}:{}:{}", system.name(), s.writers, s.channels, s.pattern.name(), case.timeout_ms, case.size)
}

fn decode_spec(spec: &str) -> Res<(System, Case)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [system, w, c, pattern, timeout, size] = parts[..] else {
        return Err(format!("bad spec {spec:?}").into());
    };
    let system = System::from_name(system).ok_or_else(|| format!("unknown system {system:?}"))?;
    let pattern = Pattern::from_name(pattern).ok_or_else(|| format!("unknown pattern {pattern:?}"))?;
    let case =
        Case { shape: Shape::with(w.parse()?, c.parse()?, pattern), timeout_ms: timeout.parse()?, size: size.parse()? };
    if case.size < LONG || case.shape.writers == 0 || case.shape.channels == 0 {
        return Err(format!("bad case in spec {spec:?}").into());
    }
    Ok((system, case))
}

/// How much to measure.
#[derive(Debug, Clone)]
struct Plan {
    full: bool,
    systems: Vec<System>,
    rounds: u32,
    warm: Duration,
    window: Duration,
    sizes: Vec<usize>,
    cases: Vec<Case>,
}

impl Plan {
    /// The full run: Flink's shapes with 8 B and 1 KiB records (1x1 and 2x2 at 0, 1 and
    /// 100 ms), the 12 B pair, the 32 KiB segment stream and 1 MiB records at 1x1, 100 ms.
    fn full_cases() -> Vec<Case> {
        let mut cases = Vec::new();
        for size in [LONG, KIB] {
            for shape in [Shape::new(1, 1), Shape::new(2, 2)] {
                for timeout_ms in [0, 1, 100] {
                    cases.push(Case { shape, timeout_ms, size });
                }
            }
            for (shape, timeout_ms) in [
                (Shape::new(4, 100), 100),
                (Shape::new(4, 1000), 1),
                (Shape::new(4, 1000), 100),
                (Shape::with(10, 1000, Pattern::Skew), 1),
                (Shape::with(4, 100, Pattern::Broadcast), 100),
            ] {
                cases.push(Case { shape, timeout_ms, size });
            }
        }
        for size in [PAIR, SEG_RECORD, MIB] {
            cases.push(Case { shape: Shape::new(1, 1), timeout_ms: 100, size });
        }
        cases
    }

    /// The smoke run: every shape, record kind and system once.
    fn quick_cases() -> Vec<Case> {
        vec![
            Case { shape: Shape::new(1, 1), timeout_ms: 0, size: LONG },
            Case { shape: Shape::new(2, 2), timeout_ms: 1, size: PAIR },
            Case { shape: Shape::new(4, 100), timeout_ms: 100, size: KIB },
            Case { shape: Shape::new(4, 1000), timeout_ms: 1, size: LONG },
            Case { shape: Shape::with(10, 1000, Pattern::Skew), timeout_ms: 1, size: LONG },
            Case { shape: Shape::with(4, 100, Pattern::Broadcast), timeout_ms: 100, size: LONG },
            Case { shape: Shape::new(1, 1), timeout_ms: 100, size: SEG_RECORD },
            Case { shape: Shape::new(1, 1), timeout_ms: 1, size: MIB },
        ]
    }

    fn new(args: &Args) -> Self {
        let keep = |c: &Case| {
            args.only_size.is_none_or(|o| o == c.size)
                && args.only_shape.as_ref().is_none_or(|o| *o == c.shape.name())
                && args.only_timeout.is_none_or(|o| o == c.timeout_ms)
        };
        let (cases, warm, window): (Vec<Case>, _, _) = if args.full {
            (Self::full_cases().into_iter().filter(keep).collect(), 200, args.measure_ms.unwrap_or(300))
        } else {
            (Self::quick_cases(), 10, args.measure_ms.unwrap_or(30))
        };
        let mut sizes: Vec<usize> = cases.iter().map(|c| c.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        Plan {
            full: args.full,
            systems: systems(args),
            rounds: args.rounds.unwrap_or(if args.full { 3 } else { 1 }),
            warm: Duration::from_millis(warm),
            window: Duration::from_millis(window),
            sizes,
            cases,
        }
    }

    /// The run kind for the JSON `run` field.
    fn run_kind(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
        }
    }

    /// Warm-up and window of `case`: in the full run at least 3 and 10 buffer timeouts, so
    /// that data flushed in bursts by the timer averages out.
    fn timing(&self, case: Case) -> (Duration, Duration) {
        let t = Duration::from_millis(case.timeout_ms.max(0) as u64);
        if self.full {
            (self.warm.max(t * 3), self.window.max(t * 10))
        } else {
            (self.warm, self.window)
        }
    }
}

/// The systems to run: all, or the one `--system` names.
fn systems(args: &Args) -> Vec<System> {
    [System::Shmflow, System::Tcp, System::Unix, System::Memcpy]
        .into_iter()
        .filter(|&s| args.only_system.is_none_or(|o| o == s))
        .collect()
}

struct Args {
    full: bool,
    pin: bool,
    rounds: Option<u32>,
    measure_ms: Option<u64>,
    json: Option<std::path::PathBuf>,
    /// Filters on the full plan: record size, shape, timeout, system.
    only_size: Option<usize>,
    only_shape: Option<String>,
    only_timeout: Option<i64>,
    only_system: Option<System>,
}

/// `--bench` (added by `cargo bench`), `--no-pin`, `--rounds N`, `--measure-ms MS`,
/// `--json PATH`, and filters on the full plan `--size BYTES`, `--shape NAME` (e.g.
/// `4x1000`, `10x1000-skew`), `--timeout MS`, `--system NAME`; anything else (filters cargo
/// may pass along) is ignored.
fn parse_args() -> Res<Args> {
    let mut args = Args {
        full: false,
        pin: true,
        rounds: None,
        measure_ms: None,
        json: None,
        only_size: None,
        only_shape: None,
        only_timeout: None,
        only_system: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => args.full = true,
            "--no-pin" => args.pin = false,
            "--rounds" => args.rounds = Some(it.next().ok_or("--rounds needs a number")?.parse()?),
            "--measure-ms" => args.measure_ms = Some(it.next().ok_or("--measure-ms needs a number")?.parse()?),
            "--json" => args.json = Some(it.next().ok_or("--json needs a path")?.into()),
            "--size" => args.only_size = Some(it.next().ok_or("--size needs a number")?.parse()?),
            "--shape" => args.only_shape = Some(it.next().ok_or("--shape needs a name")?),
            "--timeout" => args.only_timeout = Some(it.next().ok_or("--timeout needs a number")?.parse()?),
            "--system" => {
                let name = it.next().ok_or("--system needs a name")?;
                args.only_system = Some(System::from_name(&name).ok_or_else(|| format!("unknown system {name:?}"))?);
            }
            _ => {}
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// Records and checksums

/// The fixed filler of a record of `size` bytes (at least 8): bytes 0..8 are overwritten
/// by the record's stamp.
fn base_record(size: usize) -> Vec<u8> {
    (0..size).map(|k| (k as u32).wrapping_mul(131).wrapping_add(7) as u8).collect()
}

/// The stamp of record `i` of writer `w`: its first 8 bytes (little endian).
#[inline]
fn stamp_of(w: u32, i: u64) -> u64 {
    (u64::from(w) << SEQ_BITS) | (i & SEQ_MASK)
}

#[inline]
fn stamp(rec: &mut [u8], v: u64) {
    rec[..8].copy_from_slice(&v.to_le_bytes());
}

/// The second field of a 12-byte `(u64, u32)` record: the filler's bytes 8..12.
fn pair_tail() -> u32 {
    let b = base_record(PAIR);
    u32::from_le_bytes([b[8], b[9], b[10], b[11]])
}

/// XOR of the little-endian 8-byte words of `data` (the last one zero-padded) in four
/// lanes by word index mod 4, the lanes rotated apart. Linear in the bytes, so the sum over
/// all records sent can be computed without generating them (see `expected_sum`).
#[inline]
fn xor_words(data: &[u8]) -> u64 {
    let mut lanes = [0u64; 4];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        for (l, lane) in lanes.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&c[l * 8..l * 8 + 8]);
            *lane ^= u64::from_le_bytes(b);
        }
    }
    // The last 0..=31 bytes: whole words, then a zero-padded tail (built byte by byte:
    // a variable-length copy would be a memcpy call per record).
    let mut words = chunks.remainder().chunks_exact(8);
    let mut l = 0;
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        lanes[l] ^= u64::from_le_bytes(b);
        l += 1;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let v = tail.iter().enumerate().fold(0u64, |v, (k, &b)| v | u64::from(b) << (8 * k));
        lanes[l] ^= v;
    }
    lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48)
}

/// Non-linear finish, so that a sum over records does not cancel.
#[inline]
fn mix(x: u64, len: usize) -> u64 {
    let v = (x ^ (len as u64).rotate_left(40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    v ^ (v >> 29)
}

/// The checksum of one record: reads every byte.
#[inline]
fn record_checksum(data: &[u8]) -> u64 {
    mix(xor_words(data), data.len())
}

/// `xor_words` of the filler with bytes 0..8 zeroed: record `(w, i)` then has
/// `xor_words == stamp_of(w, i) ^ filler_xor` (the stamp is word 0).
fn filler_xor(size: usize) -> u64 {
    let mut base = base_record(size);
    base[..8].fill(0);
    xor_words(&base)
}

/// The sum of the checksums of records `0..counts[w]` of every writer `w`, each read
/// `fanout` times.
fn expected_sum(size: usize, counts: &[u64], fanout: u64) -> u64 {
    let fx = filler_xor(size);
    let mut sum = 0u64;
    for (w, &n) in counts.iter().enumerate() {
        for i in 0..n {
            sum = sum.wrapping_add(mix(stamp_of(w as u32, i) ^ fx, size));
        }
    }
    sum.wrapping_mul(fanout)
}

/// Checks the closed form of `expected_sum` against real records, and that the typed
/// records serialize to the bytes the socket peers send.
fn self_check(sizes: &[usize]) -> Res<()> {
    for &size in sizes {
        let mut rec = base_record(size);
        let fx = filler_xor(size);
        for (w, i) in [(0u32, 0u64), (3, 12_345), (99, SEQ_MASK / 3)] {
            stamp(&mut rec, stamp_of(w, i));
            if record_checksum(&rec) != mix(stamp_of(w, i) ^ fx, size) {
                return Err(format!("checksum self-check failed for {size}-byte records").into());
            }
        }
    }
    let v = stamp_of(7, 3);
    let mut rec = base_record(LONG);
    stamp(&mut rec, v);
    let mut b = [0u8; LONG];
    v.serialize_into(&mut b);
    if b[..] != rec[..] {
        return Err("a u64 record does not serialize as its 8 little-endian bytes".into());
    }
    let mut rec = base_record(PAIR);
    stamp(&mut rec, v);
    let mut b = [0u8; PAIR];
    let t = (v, pair_tail());
    if t.serialized_len() != PAIR {
        return Err("a (u64, u32) record is not 12 bytes".into());
    }
    t.serialize_into(&mut b);
    if b[..] != rec[..] {
        return Err("a (u64, u32) record does not serialize as [u64 LE][u32 LE]".into());
    }
    Ok(())
}

/// What the consumer saw.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Records read (a broadcast record once per channel).
    records: u64,
    bytes: u64,
    sum: u64,
    /// Records whose sequence number did not grow on their channel.
    disorder: u64,
    /// Records of the wrong size.
    bad_len: u64,
    /// Records on a channel of another writer.
    foreign: u64,
}

impl Tally {
    /// Counts and checksums one record read on a channel of writer `writer`; `next` is the
    /// smallest sequence number the channel may carry next.
    #[inline]
    fn add(&mut self, data: &[u8], size: usize, next: &mut u64, writer: u32) {
        self.records += 1;
        self.bytes += data.len() as u64;
        self.sum = self.sum.wrapping_add(record_checksum(data));
        if data.len() != size || data.len() < 8 {
            self.bad_len += 1;
            return;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[..8]);
        let v = u64::from_le_bytes(b);
        if (v >> SEQ_BITS) as u32 != writer {
            self.foreign += 1;
        }
        let seq = v & SEQ_MASK;
        if seq < *next {
            self.disorder += 1;
        }
        *next = seq + 1;
    }

    fn verify(&self, case: Case, counts: &[u64]) -> Res<()> {
        let fanout = case.shape.fanout();
        let sent: u64 = counts.iter().sum::<u64>() * fanout;
        if self.records != sent {
            return Err(format!("received {} records, the producer sent {sent} (fanout included)", self.records).into());
        }
        if self.bad_len > 0 || self.disorder > 0 || self.foreign > 0 {
            return Err(format!(
                "{} records of the wrong size, {} out of order on their channel, {} on another writer's channel",
                self.bad_len, self.disorder, self.foreign
            )
            .into());
        }
        if self.sum != expected_sum(case.size, counts, fanout) {
            return Err("checksum mismatch".into());
        }
        Ok(())
    }
}

/// With SHMFLOW_TPUT_VERBOSE set, says how many records a run moved in all (for
/// normalizing `perf stat` counts per record).
fn verbose(system: System, t: &Tally) {
    if std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some() {
        eprintln!("  {}: {} records, {} bytes in all", system.name(), t.records, t.bytes);
    }
}

/// Records between two looks at the clock: about 256 KiB of payload, at most 4096.
fn check_every(size: usize) -> u64 {
    ((256 * 1024 / size.max(1)) as u64).clamp(1, 4096)
}

/// CPU time of this process (every thread, user + system) in nanoseconds.
fn process_cpu_ns() -> u64 {
    rusage(libc::RUSAGE_SELF).map_or(0, |u| u.cpu_ns)
}

/// CPU time of the calling thread in nanoseconds.
fn thread_cpu_ns() -> u64 {
    rusage(libc::RUSAGE_THREAD).map_or(0, |u| u.cpu_ns)
}

/// A throughput figure of one run.
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Records written per second (a broadcast record counts once).
    records_per_s: f64,
    /// Records read per second (records_per_s times the fanout).
    deliveries_per_s: f64,
    /// records_per_s times the payload bytes.
    gb_per_s: f64,
    /// CPU time of producer and consumer per record written.
    cpu_ns_per_record: f64,
    /// CPU time of producer and consumer per second of the window.
    cpu_cores: f64,
}

/// What the window saw, in the consumer: time, records read, this process's CPU time and
/// the producer's.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    records: u64,
    cpu_ns: u64,
    peer_ns: Option<u64>,
}

/// What a tick of the window did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tick {
    Nothing,
    /// The warm-up ended.
    Opened,
    /// The window closed: stop the producer.
    Closed,
}

/// The measurement window: opens `warm` after `begin`, closes `window` later.
struct Window {
    begin: Instant,
    warm: Duration,
    window: Duration,
    cpu: fn() -> u64,
    /// The producer process, whose CPU time counts too.
    peer: Option<u32>,
    start: Option<Mark>,
    end: Option<Mark>,
}

impl Window {
    fn new(timing: (Duration, Duration), cpu: fn() -> u64, peer: Option<u32>) -> Self {
        Self { begin: Instant::now(), warm: timing.0, window: timing.1, cpu, peer, start: None, end: None }
    }

    fn mark(&self, at: Instant, records: u64) -> Mark {
        Mark { at, records, cpu_ns: (self.cpu)(), peer_ns: self.peer.and_then(proc_cpu_ns) }
    }

    /// Looks at the clock with `records` read so far.
    fn tick(&mut self, records: u64) -> Tick {
        if self.end.is_some() {
            return Tick::Nothing;
        }
        let now = Instant::now();
        match self.start {
            None => {
                if now.duration_since(self.begin) >= self.warm {
                    self.start = Some(self.mark(now, records));
                    return Tick::Opened;
                }
                Tick::Nothing
            }
            Some(s) => {
                if now.duration_since(s.at) >= self.window {
                    self.end = Some(self.mark(now, records));
                    Tick::Closed
                } else {
                    Tick::Nothing
                }
            }
        }
    }

    /// The figure.
    fn rate(&self, case: Case) -> Res<Rate> {
        let (Some(s), Some(e)) = (self.start, self.end) else {
            return Err("the stream ended before the measurement window closed".into());
        };
        let secs = e.at.duration_since(s.at).as_secs_f64();
        let read = (e.records - s.records) as f64;
        let written = read / case.shape.fanout() as f64;
        let own = e.cpu_ns.saturating_sub(s.cpu_ns);
        let cpu = match (self.peer, s.peer_ns, e.peer_ns) {
            (None, _, _) => own as f64,
            (Some(_), Some(a), Some(b)) => (own + b.saturating_sub(a)) as f64,
            _ => f64::NAN,
        };
        Ok(Rate {
            records_per_s: written / secs,
            deliveries_per_s: read / secs,
            gb_per_s: written * case.size as f64 / secs / 1e9,
            cpu_ns_per_record: if written > 0.0 { cpu / written } else { f64::NAN },
            cpu_cores: cpu / 1e9 / secs,
        })
    }
}

/// Stops the producer when the window closed.
fn on_tick(tick: Tick, producer: &mut Producer) -> Res<()> {
    match tick {
        Tick::Nothing | Tick::Opened => Ok(()),
        Tick::Closed => producer.send("stop"),
    }
}

// ---------------------------------------------------------------------------------------
// The consumer: runs every case, prints the table

/// Rates of one system in one case, one per round.
struct CaseResult {
    case: Case,
    rates: Vec<(System, Vec<Rate>)>,
    bare_rtt_ns: Vec<f64>,
}

impl CaseResult {
    fn median(&self, system: System) -> Option<Rate> {
        let rates = &self.rates.iter().find(|(s, _)| *s == system)?.1;
        median_rate(rates)
    }
}

fn median_rate(rates: &[Rate]) -> Option<Rate> {
    let m = |f: fn(&Rate) -> f64| median(rates.iter().map(f).collect()).unwrap_or(f64::NAN);
    if rates.is_empty() {
        return None;
    }
    Some(Rate {
        records_per_s: m(|r| r.records_per_s),
        deliveries_per_s: m(|r| r.deliveries_per_s),
        gb_per_s: m(|r| r.gb_per_s),
        cpu_ns_per_record: m(|r| r.cpu_ns_per_record),
        cpu_cores: m(|r| r.cpu_cores),
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn consumer_main() -> Res<()> {
    let args = parse_args()?;
    let plan = Plan::new(&args);
    self_check(&plan.sizes)?;
    for c in &plan.cases {
        arena_config(c.shape)?;
    }
    let cpus = if args.pin { cpu_pair() } else { None };
    if let Some((mine, _)) = cpus {
        pin_to(mine)?;
    }
    print_machine(&plan, cpus);
    let mut results: Vec<CaseResult> = plan
        .cases
        .iter()
        .map(|&case| CaseResult {
            case,
            rates: System::STREAMS.iter().filter(|s| plan.systems.contains(s)).map(|&s| (s, Vec::new())).collect(),
            bare_rtt_ns: Vec::new(),
        })
        .collect();
    let mut memcpy: Vec<(usize, Vec<Rate>)> = if plan.systems.contains(&System::Memcpy) {
        plan.sizes.iter().map(|&s| (s, Vec::new())).collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    for round in 0..plan.rounds {
        for (size, rates) in memcpy.iter_mut() {
            rates.push(run_memcpy(*size, &plan)?);
        }
        for r in results.iter_mut() {
            r.bare_rtt_ns.push(bare_rtt_ns(cpus)?);
            for (system, rates) in r.rates.iter_mut() {
                let what = || format!("{} {} (round {})", system.name(), describe(r.case), round + 1);
                let rate = run_stream(*system, r.case, &plan, cpus).map_err(|e| format!("{}: {e}", what()))?;
                rates.push(rate);
            }
            if plan.full {
                eprintln!("  done: {} after {:.0?} (round {})", describe(r.case), started.elapsed(), round + 1);
            }
        }
    }
    let memcpy: Vec<(usize, Rate)> =
        memcpy.into_iter().filter_map(|(s, rates)| median_rate(&rates).map(|r| (s, r))).collect();
    println!("- load average at the end: {}; {:.0?} in all\n", load_average(), started.elapsed());
    print_table(&plan, &results, &memcpy);
    print_summary(&results, &memcpy);
    if let Some(path) = &args.json {
        std::fs::write(path, json_records(&plan, &results, &memcpy))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn describe(case: Case) -> String {
    format!("{} {} timeout {} ms", size_name(case.size), case.shape.name(), case.timeout_ms)
}

fn run_stream(system: System, case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    match system {
        System::Shmflow => run_shmflow(case, plan, cpus),
        System::Tcp | System::Unix => run_socket(system, case, plan, cpus),
        System::Memcpy => Err("memcpy is not a stream".into()),
    }
}

/// The arena of one shmflow run: 32 KiB segments, enough for every writer's pool quota
/// (Flink's 2 exclusive credits per channel + 8 floating: 2C + 8 segments per writer),
/// channel blocks for all W x C channels and one gate that reads them all.
fn arena_config(shape: Shape) -> Res<ArenaConfig> {
    let Shape { writers, channels, .. } = shape;
    let quota = u64::from(writers) * (u64::from(channels) * 2 + u64::from(FLOATING_PER_WRITER));
    let segments = quota + 64;
    let all = writers * channels;
    let cfg = ArenaConfig {
        segment_size: SEGMENT as u32,
        segment_count: segments as u32,
        max_channels: all.max(1024).next_multiple_of(64),
        max_channels_per_gate: all.max(1024).next_multiple_of(64),
        max_partitions: writers.max(256),
        max_gates: (writers + 8).max(256),
        // A channel's rings hold its whole credit: 2 exclusive + the gate's floating ones.
        ring_capacity: (2 + FLOATING_PER_WRITER * writers + 1).next_power_of_two().max(64),
        ..ArenaConfig::default()
    };
    let bytes = segments * SEGMENT as u64;
    if bytes > ARENA_LIMIT {
        return Err(format!(
            "shape {} needs {} MiB of segments (2 per channel + 8 per writer), above the {} MiB this bench allows",
            shape.name(),
            bytes >> 20,
            ARENA_LIMIT >> 20
        )
        .into());
    }
    Ok(cfg)
}

fn run_shmflow(case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let arena = Arc::new(Arena::create_memfd(&arena_config(case.shape)?, "throughput")?);
    let mut cmd = producer_command(System::Shmflow, case, cpus.map(|c| c.1))?;
    arena.inherit_fd_into(&mut cmd)?;
    let mut producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
    producer.expect_line("ready")?;
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let Shape { writers, channels, .. } = case.shape;
    let inputs = (0..writers)
        .flat_map(|w| {
            (0..channels)
                .map(move |c| InputSpec { partition: ResultPartitionId::new(u64::from(w), 0), subpartition: c })
        })
        .collect();
    // Flink's receiver here is a union of W gates with 8 floating buffers each; this one
    // gate over all channels gets the same total.
    let mut gate_cfg = InputGateConfig::new(inputs);
    gate_cfg.floating_credits = FLOATING_PER_WRITER * writers;
    let mut gate = env.create_input_gate(&gate_cfg)?;
    let mut tally = Tally::default();
    let mut next = vec![0u64; (writers * channels) as usize];
    let every = check_every(case.size);
    let mut until_check = every;
    let mut idle_since: Option<Instant> = None;
    producer.send("go")?;
    let mut window = Window::new(plan.timing(case), process_cpu_ns, Some(producer.guard.child.id()));
    loop {
        // The batch path: every whole record already published on the channel being
        // served, in one go (one load of the writer's position for the lot).
        let drained = gate.drain_records(4096, &mut |channel, data| {
            tally.add(data, case.size, &mut next[channel as usize], channel / channels);
            Ok(())
        })?;
        if drained > 0 {
            until_check = until_check.saturating_sub(drained as u64);
            if until_check == 0 {
                until_check = every;
                idle_since = None;
                on_tick(window.tick(tally.records), &mut producer)?;
            }
            continue;
        }
        match gate.next(Some(POLL_SLICE)) {
            Ok(GateItem::Record { channel, data }) => {
                tally.add(data, case.size, &mut next[channel as usize], channel / channels);
                until_check -= 1;
                if until_check == 0 {
                    until_check = every;
                    idle_since = None;
                    on_tick(window.tick(tally.records), &mut producer)?;
                }
            }
            Ok(GateItem::End) => break,
            Ok(other) => return Err(format!("unexpected {other:?}").into()),
            Err(shmflow::Error::Timeout(..)) => {
                producer.check_alive()?;
                if idle_since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT {
                    return Err(format!("no record within {WAIT_TIMEOUT:?}").into());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let counts = producer.finish(writers)?;
    tally.verify(case, &counts)?;
    verbose(System::Shmflow, &tally);
    window.rate(case)
}

/// One channel of a socket connection: the `[u32 len][payload]` stream of its frames,
/// decoded as it arrives.
#[derive(Default)]
struct ChanDec {
    /// The smallest sequence number the channel may carry next.
    next: u64,
    /// A length prefix split between frames.
    hdr: [u8; 4],
    hdr_have: usize,
    /// A record split between frames: its bytes so far and its length.
    rec: Vec<u8>,
    have: usize,
    need: Option<usize>,
}

impl ChanDec {
    /// Decodes `data`, the next bytes of this channel's stream; whole records in `data`
    /// are checked in place.
    #[inline]
    fn feed(&mut self, mut data: &[u8], size: usize, writer: u32, tally: &mut Tally) -> Res<()> {
        while !data.is_empty() {
            if let Some(need) = self.need {
                let n = (need - self.have).min(data.len());
                self.rec[self.have..self.have + n].copy_from_slice(&data[..n]);
                self.have += n;
                data = &data[n..];
                self.complete(size, writer, tally);
                continue;
            }
            if self.hdr_have > 0 || data.len() < 4 {
                let n = (4 - self.hdr_have).min(data.len());
                self.hdr[self.hdr_have..self.hdr_have + n].copy_from_slice(&data[..n]);
                self.hdr_have += n;
                data = &data[n..];
                if self.hdr_have == 4 {
                    self.hdr_have = 0;
                    self.start(u32::from_le_bytes(self.hdr) as usize, size, writer, tally)?;
                }
                continue;
            }
            let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
            if data.len() - 4 >= len {
                tally.add(&data[4..4 + len], size, &mut self.next, writer);
                data = &data[4 + len..];
            } else {
                data = &data[4..];
                self.start(len, size, writer, tally)?;
            }
        }
        Ok(())
    }

    /// A record of `len` bytes begins whose bytes come later.
    fn start(&mut self, len: usize, size: usize, writer: u32, tally: &mut Tally) -> Res<()> {
        if len > shmflow::record::DEFAULT_MAX_RECORD {
            return Err(format!("record length {len} above the limit").into());
        }
        if len == 0 {
            tally.add(&[], size, &mut self.next, writer);
            return Ok(());
        }
        if self.rec.len() < len {
            self.rec.resize(len, 0);
        }
        self.have = 0;
        self.need = Some(len);
        Ok(())
    }

    /// Checks the record being reassembled if it is whole.
    #[inline]
    fn complete(&mut self, size: usize, writer: u32, tally: &mut Tally) {
        if self.need == Some(self.have) {
            tally.add(&self.rec[..self.have], size, &mut self.next, writer);
            self.need = None;
            self.have = 0;
        }
    }

    fn mid_record(&self) -> bool {
        self.need.is_some() || self.hdr_have > 0
    }
}

/// One connection of a socket consumer: the frames of one writer's C channels.
struct Conn {
    file: File,
    /// The writer, from the 4-byte hello that opens the stream.
    writer: Option<u32>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The frame being read: its channel and the bytes still to come.
    frame: Option<(usize, usize)>,
    chans: Vec<ChanDec>,
    eof: bool,
}

/// What one read did.
enum Pump {
    Progress,
    WouldBlock,
    Eof,
}

impl Conn {
    fn new(fd: OwnedFd, channels: u32) -> Res<Self> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Self {
            file: File::from(fd),
            writer: None,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            frame: None,
            chans: (0..channels).map(|_| ChanDec::default()).collect(),
            eof: false,
        })
    }

    /// One read system call, then decodes every frame byte it brought.
    fn pump(&mut self, size: usize, tally: &mut Tally) -> Res<Pump> {
        // The rest of a large record goes straight into its buffer.
        if let (Some((c, left)), Some(w)) = (self.frame, self.writer) {
            let d = &mut self.chans[c];
            if let (true, Some(need)) = (self.start == self.end, d.need) {
                let want = (need - d.have).min(left);
                if want >= DIRECT_MIN {
                    let n = match self.file.read(&mut d.rec[d.have..d.have + want]) {
                        Ok(0) => return Err("end of stream inside a frame".into()),
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pump::WouldBlock),
                        Err(e) => return Err(e.into()),
                    };
                    d.have += n;
                    d.complete(size, w, tally);
                    self.frame = (left > n).then_some((c, left - n));
                    return Ok(Pump::Progress);
                }
            }
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = match self.file.read(&mut self.buf[self.end..]) {
            Ok(0) => {
                if self.end > self.start || self.frame.is_some() || self.chans.iter().any(ChanDec::mid_record) {
                    return Err("end of stream inside a frame or a record".into());
                }
                self.eof = true;
                return Ok(Pump::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pump::WouldBlock),
            Err(e) => return Err(e.into()),
        };
        self.end += n;
        loop {
            let s = self.start;
            let avail = self.end - s;
            let b = &self.buf;
            let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let Some(w) = self.writer else {
                if avail < 4 {
                    break;
                }
                self.writer = Some(word(s));
                self.start += 4;
                continue;
            };
            match self.frame {
                None => {
                    if avail < 8 {
                        break;
                    }
                    let (c, len) = (word(s) as usize, word(s + 4) as usize);
                    if c >= self.chans.len() || len == 0 || len > SEGMENT {
                        return Err(format!("bad frame header: channel {c}, {len} bytes").into());
                    }
                    self.frame = Some((c, len));
                    self.start += 8;
                }
                Some((c, left)) => {
                    let take = left.min(avail);
                    if take == 0 {
                        break;
                    }
                    self.chans[c].feed(&self.buf[s..s + take], size, w, tally)?;
                    self.start += take;
                    self.frame = (left > take).then_some((c, left - take));
                }
            }
        }
        Ok(Pump::Progress)
    }
}

fn set_nonblocking(fd: RawFd) -> Res<()> {
    // SAFETY: fcntl on an fd we own, with valid commands and flags.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(format!("O_NONBLOCK: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

fn run_socket(system: System, case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let Shape { writers, channels, .. } = case.shape;
    let mut cmd = producer_command(system, case, cpus.map(|c| c.1))?;
    let (mut producer, fds) = if system == System::Tcp {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        cmd.env(ENV_PORT, listener.local_addr()?.port().to_string());
        let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
        let mut fds = Vec::new();
        for _ in 0..writers {
            fds.push(OwnedFd::from(accept_within(&listener, WAIT_TIMEOUT, "producer")?));
        }
        (producer, fds)
    } else {
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..writers {
            let (a, b) = UnixStream::pair()?;
            mine.push(OwnedFd::from(a));
            theirs.push(OwnedFd::from(b));
        }
        let raw: Vec<RawFd> = theirs.iter().map(|f| f.as_raw_fd()).collect();
        pass_fds(&mut cmd, ENV_FDS, &raw);
        let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
        drop(theirs); // the child has its copies; our ends must see EOF when it closes them
        (producer, mine)
    };
    producer.expect_line("ready")?;
    let mut conns = fds.into_iter().map(|fd| Conn::new(fd, channels)).collect::<Res<Vec<_>>>()?;
    let mut tally = Tally::default();
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut idle_since: Option<Instant> = None;
    producer.send("go")?;
    let mut window = Window::new(plan.timing(case), process_cpu_ns, Some(producer.guard.child.id()));
    while conns.iter().any(|c| !c.eof) {
        pollfds.clear();
        for c in &conns {
            let fd = if c.eof { -1 } else { c.file.as_raw_fd() };
            pollfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        let (fds, n, ms) = (pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, POLL_SLICE.as_millis() as i32);
        // SAFETY: `fds` points at a valid array of `n` pollfd structs; negative fds are
        // ignored by the kernel.
        let rc = unsafe { libc::poll(fds, n, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if rc == 0 {
            producer.check_alive()?;
            if idle_since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT {
                return Err(format!("no data within {WAIT_TIMEOUT:?}").into());
            }
            continue;
        }
        idle_since = None;
        for (c, p) in conns.iter_mut().zip(&pollfds) {
            if p.revents == 0 || c.eof {
                continue;
            }
            // Read until the socket is empty (as an epoll loop does), at most 16 times.
            for _ in 0..16 {
                match c.pump(case.size, &mut tally)? {
                    Pump::Progress => on_tick(window.tick(tally.records), &mut producer)?,
                    Pump::WouldBlock | Pump::Eof => break,
                }
            }
        }
    }
    let mut seen: Vec<u32> = conns.iter().filter_map(|c| c.writer).collect();
    seen.sort_unstable();
    if seen != (0..writers).collect::<Vec<_>>() {
        return Err(format!("connections from writers {seen:?}, expected 0..{writers}").into());
    }
    let counts = producer.finish(writers)?;
    tally.verify(case, &counts)?;
    verbose(system, &tally);
    window.rate(case)
}

/// The same payload bytes copied record by record into a ring, in this thread.
fn run_memcpy(size: usize, plan: &Plan) -> Res<Rate> {
    let mut src = base_record(size);
    let slots = (MEMCPY_RING / size).max(4);
    let mut dst = vec![0u8; slots * size];
    let mut records = 0u64;
    let every = check_every(size);
    let mut window = Window::new((plan.warm, plan.window), thread_cpu_ns, None);
    let mut slot = 0usize;
    let mut i = 0u64;
    loop {
        for _ in 0..every {
            stamp(&mut src, i);
            let at = slot * size;
            dst[at..at + size].copy_from_slice(std::hint::black_box(&src[..]));
            slot += 1;
            if slot == slots {
                slot = 0;
            }
            i += 1;
        }
        std::hint::black_box(&mut dst);
        records += every;
        if window.tick(records) == Tick::Closed {
            break;
        }
    }
    let case = Case { shape: Shape::new(1, 1), timeout_ms: 0, size };
    window.rate(case)
}

/// Mean round trip of one cache line between the two CPUs (threads spinning with PAUSE):
/// tells "near" (~120 ns on our EPYC) from "far" (~410 ns) placement of the vCPUs.
fn bare_rtt_ns(cpus: Option<(usize, usize)>) -> Res<f64> {
    const N: u64 = 10_000;
    let words: Arc<[CachePadded<Word>; 2]> = Arc::new([CachePadded::new(Word::new(0)), CachePadded::new(Word::new(0))]);
    let w2 = words.clone();
    let peer = std::thread::spawn(move || -> Res<()> {
        if let Some((_, b)) = cpus {
            pin_to(b)?;
        }
        for i in 1..=N {
            // Acquire/Release: a plain hand-off of the counter; pairs with the main
            // thread's Release store / Acquire load of the same words.
            spin_until(|| w2[0].load(Ordering::Acquire) == i, "answer", WAIT_TIMEOUT)?;
            w2[1].store(i, Ordering::Release);
        }
        Ok(())
    });
    let t0 = Instant::now();
    let mut out = Ok(());
    for i in 1..=N {
        // Release/Acquire: pairs with the peer's Acquire load / Release store above.
        words[0].store(i, Ordering::Release);
        if let Err(e) = spin_until(|| words[1].load(Ordering::Acquire) == i, "answer", WAIT_TIMEOUT) {
            out = Err(e);
            break;
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / N as f64;
    peer.join().map_err(|_| "the ping-pong thread panicked")??;
    out?;
    Ok(ns)
}

// ---------------------------------------------------------------------------------------
// Producer processes, seen from the consumer

/// The producer command for `case`; it dies with this process (PR_SET_PDEATHSIG).
fn producer_command(system: System, case: Case, cpu: Option<usize>) -> Res<Command> {
    // If a concurrent build replaced our file, /proc/self/exe still execs this very binary
    // (the path is preferred otherwise: under valgrind /proc/self/exe is valgrind itself).
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(if exe.exists() { exe } else { "/proc/self/exe".into() });
    cmd.env(ENV_SPEC, encode_spec(system, case)).stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(cpu) = cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    die_with_parent(&mut cmd);
    Ok(cmd)
}

impl Producer {
    /// Reads the per-writer counts, then waits (bounded) for a clean exit.
    fn finish(mut self, writers: u32) -> Res<Vec<u64>> {
        let rest = self.expect_line("sent")?;
        let counts = rest.split_whitespace().map(str::parse).collect::<Result<Vec<u64>, _>>()?;
        if counts.len() != writers as usize {
            return Err(format!("{} counts for {writers} writers", counts.len()).into());
        }
        self.close_and_wait()?;
        Ok(counts)
    }
}

// ---------------------------------------------------------------------------------------
// The producer process

/// Start line for the writer threads: 0 wait, 1 go, 2 abort.
type StartLine = Arc<(Mutex<u8>, Condvar)>;

/// Waits (bounded) for the start line; true for go.
fn wait_start(start: &StartLine) -> bool {
    let (m, cv) = &**start;
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let mut state = m.lock().unwrap_or_else(|e| e.into_inner());
    while *state == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        state = cv.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
    }
    *state == 1
}

fn set_start(start: &StartLine, v: u8) {
    let (m, cv) = &**start;
    *m.lock().unwrap_or_else(|e| e.into_inner()) = v;
    cv.notify_all();
}

/// What every writer thread shares with the producer's main thread.
struct Signals {
    stop: Flag,
    start: StartLine,
    ready: Mutex<mpsc::Sender<Res<()>>>,
    /// Held while a writer creates its partition: concurrent creations can make the
    /// arena's first-fit search for a run of channel blocks fail although enough blocks are
    /// free (reported to the lead), and Flink creates a task's partitions one by one too.
    create: Mutex<()>,
}

impl Signals {
    /// Runs `f` (a partition's creation) while no other writer creates one.
    fn creating<T>(&self, f: impl FnOnce() -> T) -> T {
        let _one_at_a_time = self.create.lock().unwrap_or_else(|e| e.into_inner());
        f()
    }

    fn ready(&self, r: Res<()>) {
        let _ = self.ready.lock().unwrap_or_else(|e| e.into_inner()).send(r);
    }
}

fn producer_main(spec: &str) -> Res<()> {
    let (system, case) = decode_spec(spec)?;
    if let Ok(cpu) = std::env::var(ENV_CPU) {
        pin_to(cpu.parse()?)?;
    }
    let writers = case.shape.writers;
    // Connections (or the arena) first, so a setup error ends the process before "ready".
    let mut conns: Vec<Option<File>> = match system {
        System::Tcp => {
            let port: u16 = env_var(ENV_PORT)?.parse()?;
            (0..writers)
                .map(|_| {
                    let s = TcpStream::connect(("127.0.0.1", port))?;
                    s.set_nodelay(true)?;
                    Ok(Some(File::from(OwnedFd::from(s))))
                })
                .collect::<Res<_>>()?
        }
        System::Unix => inherited_fds(ENV_FDS, writers as usize)?.into_iter().map(|f| Some(File::from(f))).collect(),
        System::Shmflow => (0..writers).map(|_| None).collect(),
        System::Memcpy => return Err("memcpy has no producer process".into()),
    };
    let env = match system {
        System::Shmflow => Some(ShuffleEnvironment::attach_inherited(1)?),
        _ => None,
    };
    let (ready_tx, ready_rx) = mpsc::channel::<Res<()>>();
    let signals = Arc::new(Signals {
        stop: Flag::new(false),
        start: Arc::new((Mutex::new(0), Condvar::new())),
        ready: Mutex::new(ready_tx),
        create: Mutex::new(()),
    });
    let mut threads = Vec::new();
    for w in 0..writers {
        let signals = signals.clone();
        let conn = conns[w as usize].take();
        let env = env.clone();
        threads.push(std::thread::spawn(move || -> Res<u64> {
            let r = match (env, conn) {
                (Some(env), _) => shmflow_writer(&env, case, w, &signals),
                (None, Some(file)) => socket_writer(file, case, w, &signals),
                _ => Err("a writer without an output".into()),
            };
            if let Err(e) = &r {
                // Unblocks the main thread if this writer fails before it got ready.
                signals.ready(Err(format!("writer {w}: {e}").into()));
            }
            r
        }));
    }
    let abort = |e: Box<dyn std::error::Error + Send + Sync>| {
        set_start(&signals.start, 2);
        e
    };
    for _ in 0..writers {
        match ready_rx.recv_timeout(WAIT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(abort(e)),
            Err(_) => return Err(abort("a writer did not get ready".into())),
        }
    }
    // Commands from the consumer, line by line; EOF ends the run.
    let (cmd_tx, cmds) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) => {
                    if cmd_tx.send(l).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = cmd_tx.send("eof".into());
    });
    println!("ready");
    std::io::stdout().flush()?;
    match cmds.recv_timeout(WAIT_TIMEOUT) {
        Ok(l) if l == "go" => set_start(&signals.start, 1),
        other => return Err(abort(format!("expected go, got {other:?}").into())),
    }
    // Runs until "stop" (or EOF, or the deadline): the consumer decides the length.
    let _ = cmds.recv_timeout(CHILD_DEADLINE);
    // Relaxed: a stop request, read by the writers between records; a few more records
    // after it are fine (nothing is published through this flag).
    signals.stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for t in threads {
        counts.push(t.join().map_err(|_| "a writer panicked")??);
    }
    let list: Vec<String> = counts.iter().map(u64::to_string).collect();
    println!("sent {}", list.join(" "));
    std::io::stdout().flush()?;
    Ok(())
}

/// Flink's DataSkewChannelSelector: each channel once, in order, then always channel 0.
#[derive(Debug, Default, Clone)]
struct SkewSelector {
    next: u32,
    n: u32,
}

impl<R: ?Sized> ChannelSelector<R> for SkewSelector {
    fn setup(&mut self, n: u32) {
        self.n = n;
        self.next = 0;
    }

    #[inline]
    fn select_channel(&mut self, _: &R) -> u32 {
        if self.next < self.n {
            self.next += 1;
            self.next - 1
        } else {
            0
        }
    }
}

/// The socket writers' channel choice: the very selectors the shmflow writers use, so
/// both send the same records to the same channels.
enum Picker {
    RoundRobin(RebalancePartitioner),
    Skew(SkewSelector),
    Broadcast,
}

impl Picker {
    fn new(pattern: Pattern, w: u32, channels: u32) -> Self {
        let mut p = match pattern {
            Pattern::RoundRobin => Picker::RoundRobin(RebalancePartitioner::new(u64::from(w))),
            Pattern::Skew => Picker::Skew(SkewSelector::default()),
            Pattern::Broadcast => Picker::Broadcast,
        };
        match &mut p {
            Picker::RoundRobin(s) => ChannelSelector::<[u8]>::setup(s, channels),
            Picker::Skew(s) => ChannelSelector::<[u8]>::setup(s, channels),
            Picker::Broadcast => {}
        }
        p
    }

    /// The channel of the next record; `None`: all of them.
    #[inline]
    fn next(&mut self) -> Option<u32> {
        match self {
            Picker::RoundRobin(s) => Some(ChannelSelector::<[u8]>::select_channel(s, &[])),
            Picker::Skew(s) => Some(ChannelSelector::<[u8]>::select_channel(s, &[])),
            Picker::Broadcast => None,
        }
    }
}

/// One shmflow writer: a partition of `C` subpartitions, records to channels per the
/// case's pattern, until stopped.
fn shmflow_writer(env: &ShuffleEnvironment, case: Case, w: u32, signals: &Signals) -> Res<u64> {
    let mut cfg = ResultPartitionConfig::new(
        ResultPartitionId::new(u64::from(w), 0),
        ResultPartitionType::PipelinedBounded,
        case.shape.channels,
    );
    cfg.timeout = Some(WAIT_TIMEOUT);
    let timeout = BufferTimeout::from_millis(case.timeout_ms)?;
    match case.shape.pattern {
        Pattern::RoundRobin => {
            shmflow_records(env, &cfg, RebalancePartitioner::new(u64::from(w)), timeout, case, w, signals)
        }
        Pattern::Skew => shmflow_records(env, &cfg, SkewSelector::default(), timeout, case, w, signals),
        Pattern::Broadcast => shmflow_records(env, &cfg, BroadcastPartitioner, timeout, case, w, signals),
    }
}

/// The typed records of the case through selector `S`.
fn shmflow_records<S>(
    env: &ShuffleEnvironment,
    cfg: &ResultPartitionConfig,
    selector: S,
    timeout: BufferTimeout,
    case: Case,
    w: u32,
    signals: &Signals,
) -> Res<u64>
where
    S: ChannelSelector<u64> + ChannelSelector<(u64, u32)> + ChannelSelector<[u8]>,
{
    match case.size {
        LONG => {
            let writer = signals.creating(|| env.create_record_writer::<u64, S>(cfg, selector, timeout))?;
            emit_until_stopped(writer, signals, |wr, i| wr.emit(&stamp_of(w, i)))
        }
        PAIR => {
            let tail = pair_tail();
            let writer = signals.creating(|| env.create_record_writer::<(u64, u32), S>(cfg, selector, timeout))?;
            emit_until_stopped(writer, signals, |wr, i| wr.emit(&(stamp_of(w, i), tail)))
        }
        size => {
            let mut rec = base_record(size);
            let writer = signals.creating(|| env.create_record_writer::<[u8], S>(cfg, selector, timeout))?;
            emit_until_stopped(writer, signals, |wr, i| {
                stamp(&mut rec, stamp_of(w, i));
                wr.emit(&rec[..])
            })
        }
    }
}

/// Says ready, waits for go, emits record 0, 1, ... until stopped, then ends the partition
/// and waits until the consumer read everything.
fn emit_until_stopped<S>(
    mut writer: RecordWriter<S>,
    signals: &Signals,
    mut emit: impl FnMut(&mut RecordWriter<S>, u64) -> shmflow::Result<()>,
) -> Res<u64> {
    signals.ready(Ok(()));
    if !wait_start(&signals.start) {
        return Err("no go".into());
    }
    let mut i = 0u64;
    // Relaxed: a stop request; a few more records after it are fine.
    while !signals.stop.load(Ordering::Relaxed) {
        emit(&mut writer, i)?;
        i += 1;
    }
    writer.finish()?;
    writer.into_partition().release_when_consumed(Some(WAIT_TIMEOUT))?;
    Ok(i)
}

/// A writer's connection: a 32 KiB buffer per channel, sent as `[u32 channel][u32
/// bytes][bytes]` frames through a 64 KiB send buffer (Flink's Netty path: one connection,
/// one buffer per subpartition, a frame per buffer).
struct FramedOut {
    out: File,
    chans: Vec<Vec<u8>>,
    /// Channels written since their last flush (`is_dirty` marks them).
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    gather: Vec<u8>,
}

impl FramedOut {
    fn new(out: File, channels: u32) -> Self {
        Self {
            out,
            chans: (0..channels).map(|_| Vec::new()).collect(),
            dirty: Vec::new(),
            is_dirty: vec![false; channels as usize],
            gather: Vec::with_capacity(GATHER),
        }
    }

    /// Appends `[u32 len][payload]` to channel `c`'s stream.
    #[inline]
    fn put_record(&mut self, c: usize, payload: &[u8]) -> std::io::Result<()> {
        if !self.is_dirty[c] {
            self.is_dirty[c] = true;
            self.dirty.push(c as u32);
        }
        let buf = &mut self.chans[c];
        if buf.capacity() == 0 {
            buf.reserve_exact(SEGMENT);
        }
        let prefix = (payload.len() as u32).to_le_bytes();
        if SEGMENT - buf.len() >= 4 + payload.len() {
            buf.extend_from_slice(&prefix);
            buf.extend_from_slice(payload);
            if buf.len() == SEGMENT {
                self.emit(c)?;
            }
            return Ok(());
        }
        // The record continues in the channel's next buffer(s).
        self.put_spanning(c, &prefix)?;
        self.put_spanning(c, payload)
    }

    fn put_spanning(&mut self, c: usize, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let buf = &mut self.chans[c];
            let n = (SEGMENT - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if buf.len() == SEGMENT {
                self.emit(c)?;
            }
        }
        Ok(())
    }

    /// Queues channel `c`'s buffer as a frame (full ones go out at once, with what is
    /// queued before them, in one writev).
    fn emit(&mut self, c: usize) -> std::io::Result<()> {
        let body = &mut self.chans[c];
        if body.is_empty() {
            return Ok(());
        }
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&(c as u32).to_le_bytes());
        hdr[4..].copy_from_slice(&(body.len() as u32).to_le_bytes());
        if body.len() >= GATHER / 4 {
            write_all_vectored(
                &mut self.out,
                &mut [IoSlice::new(&self.gather), IoSlice::new(&hdr), IoSlice::new(body)],
            )?;
            self.gather.clear();
        } else {
            if self.gather.len() + 8 + body.len() > GATHER {
                self.out.write_all(&self.gather)?;
                self.gather.clear();
            }
            self.gather.extend_from_slice(&hdr);
            self.gather.extend_from_slice(body);
        }
        body.clear();
        Ok(())
    }

    fn send_queued(&mut self) -> std::io::Result<()> {
        if !self.gather.is_empty() {
            self.out.write_all(&self.gather)?;
            self.gather.clear();
        }
        Ok(())
    }

    /// Sends what channel `c` holds (buffer timeout 0).
    fn flush_channel(&mut self, c: usize) -> std::io::Result<()> {
        self.emit(c)?;
        self.send_queued()
    }

    /// Sends what every channel holds.
    fn flush_all(&mut self) -> std::io::Result<()> {
        for k in 0..self.dirty.len() {
            let c = self.dirty[k] as usize;
            self.is_dirty[c] = false;
            self.emit(c)?;
        }
        self.dirty.clear();
        self.send_queued()
    }
}

/// writev until every byte of `bufs` is written.
fn write_all_vectored(out: &mut File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match out.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One socket writer: the case's records, framed per channel, flushed per the buffer
/// timeout; the stream opens with the writer's number.
fn socket_writer(mut file: File, case: Case, w: u32, signals: &Signals) -> Res<u64> {
    file.write_all(&w.to_le_bytes())?;
    let timeout = BufferTimeout::from_millis(case.timeout_ms)?;
    let flusher = match timeout {
        BufferTimeout::Interval(d) => Some(OutputFlusher::start(d)?),
        _ => None,
    };
    let every_record = timeout == BufferTimeout::EveryRecord;
    let channels = case.shape.channels;
    let mut out = FramedOut::new(file, channels);
    let mut picker = Picker::new(case.shape.pattern, w, channels);
    let mut rec = base_record(case.size);
    signals.ready(Ok(()));
    if !wait_start(&signals.start) {
        return Err("no go".into());
    }
    let mut i = 0u64;
    // Relaxed: a stop request; a few more records after it are fine.
    while !signals.stop.load(Ordering::Relaxed) {
        stamp(&mut rec, stamp_of(w, i));
        match picker.next() {
            Some(c) => {
                out.put_record(c as usize, &rec)?;
                if every_record {
                    out.flush_channel(c as usize)?;
                }
            }
            None => {
                for c in 0..channels as usize {
                    out.put_record(c, &rec)?;
                }
                if every_record {
                    out.flush_all()?;
                }
            }
        }
        if flusher.as_ref().is_some_and(|f| f.take()) {
            out.flush_all()?;
        }
        i += 1;
    }
    out.flush_all()?;
    // Dropping `out` closes the socket: the consumer sees the end of the stream.
    Ok(i)
}

// ---------------------------------------------------------------------------------------
// CPUs and the machine

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn print_machine(plan: &Plan, cpus: Option<(usize, usize)>) {
    println!("# throughput: records from W writers over C channels each, producer and consumer processes\n");
    // SAFETY: sysconf has no preconditions.
    let nproc = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    println!("- machine: {}, nproc {nproc}", cpu_model());
    match cpus {
        Some((a, b)) => println!("- consumer pinned to CPU {a}, producer process (all its writer threads) to CPU {b}"),
        None => println!("- not pinned"),
    }
    println!("- load average at start: {} (the machine is shared: compare ratios within a row)", load_average());
    println!(
        "- run {}: {} case(s), {} round(s); per run at least {:?} warm-up, then a window of at least {:?} (and 10 \
         buffer timeouts) measured at the consumer",
        plan.run_kind(),
        plan.cases.len(),
        plan.rounds,
        plan.warm,
        plan.window
    );
    println!(
        "- shmflow: {} KiB segments, Flink's defaults (2 exclusive credits per channel, 8 floating per writer's \
         gate, pool max 2C+8), adaptive waits; sockets: a {} KiB buffer per channel sent as a frame, {} KiB send \
         buffer, {} KiB reads\n",
        SEGMENT / 1024,
        SEGMENT / 1024,
        GATHER / 1024,
        READ_BUF / 1024
    );
}

// ---------------------------------------------------------------------------------------
// Report

fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        "-".into()
    } else if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_ns(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ratio(a: Option<Rate>, b: Option<Rate>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if b.records_per_s > 0.0 => a.records_per_s / b.records_per_s,
        _ => f64::NAN,
    }
}

fn memcpy_of(memcpy: &[(usize, Rate)], size: usize) -> Option<Rate> {
    memcpy.iter().find(|(s, _)| *s == size).map(|(_, r)| *r)
}

fn print_table(plan: &Plan, results: &[CaseResult], memcpy: &[(usize, Rate)]) {
    println!(
        "| record | shape | timeout | shmflow rec/s | shmflow GB/s | tcp rec/s | unix rec/s | shmflow/tcp | \
         shmflow/unix | shmflow/memcpy | CPU ns/rec shmflow | tcp | unix | bare RTT |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let c = r.case;
        let shm = r.median(System::Shmflow);
        let (tcp, unix) = (r.median(System::Tcp), r.median(System::Unix));
        let rate = |m: Option<Rate>| m.map_or("-".into(), |m| fmt_rate(m.records_per_s));
        let cpu = |m: Option<Rate>| m.map_or("-".into(), |m| fmt_ns(m.cpu_ns_per_record));
        let cells = [
            size_name(c.size),
            c.shape.name(),
            format!("{} ms", c.timeout_ms),
            rate(shm),
            shm.map_or("-".into(), |m| format!("{:.3}", m.gb_per_s)),
            rate(tcp),
            rate(unix),
            format!("{:.2}", ratio(shm, tcp)),
            format!("{:.2}", ratio(shm, unix)),
            format!("{:.3}", ratio(shm, memcpy_of(memcpy, c.size))),
            cpu(shm),
            cpu(tcp),
            cpu(unix),
            format!("{:.0} ns", median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN)),
        ];
        println!("| {} |", cells.join(" | "));
    }
    println!();
    println!("| record | memcpy rec/s | memcpy GB/s |");
    println!("|---|---:|---:|");
    for &(size, rate) in memcpy {
        println!("| {} | {} | {:.2} |", size_name(size), fmt_rate(rate.records_per_s), rate.gb_per_s);
    }
    println!(
        "\n(rec/s: records written per second, a broadcast record once; GB/s = 1e9 payload bytes of those per \
         second; medians over {} round(s); the ratios are of records/s; CPU ns/rec: CPU time of producer + consumer \
         process in the window per record; bare RTT: one cache line between the two CPUs, ~120 ns near, ~410 ns \
         far on our EPYC)",
        plan.rounds
    );
}

/// Min, median and max of `f` over the cases that `keep` selects.
fn spread(results: &[CaseResult], keep: impl Fn(&Case) -> bool, f: impl Fn(&CaseResult) -> f64) -> Option<[f64; 3]> {
    let mut v: Vec<f64> = results.iter().filter(|r| keep(&r.case)).map(f).filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Some([*v.first()?, median(v.clone())?, *v.last()?])
}

fn print_summary(results: &[CaseResult], memcpy: &[(usize, Rate)]) {
    println!();
    let line = |what: &str, s: Option<[f64; 3]>, goal: &str| match s {
        Some([lo, med, hi]) if lo == hi => println!("- {what}: {med:.2}; goal {goal}"),
        Some([lo, med, hi]) => println!("- {what}: median {med:.2} (min {lo:.2}, max {hi:.2}); goal {goal}"),
        None => println!("- {what}: not measured"),
    };
    let one =
        |size: usize, shape: Shape, t: i64| move |c: &Case| c.size == size && c.shape == shape && c.timeout_ms == t;
    let shm = |r: &CaseResult| r.median(System::Shmflow);
    line(
        "8 B records, 1x1, 100 ms: shmflow million records/s",
        spread(results, one(LONG, Shape::new(1, 1), 100), |r| shm(r).map_or(f64::NAN, |m| m.records_per_s / 1e6)),
        ">= 100 (issue 6)",
    );
    line(
        "8 B records, 1x1, 100 ms: shmflow/tcp",
        spread(results, one(LONG, Shape::new(1, 1), 100), |r| ratio(shm(r), r.median(System::Tcp))),
        ">= 10 (issue 6)",
    );
    for t in [0, 1, 100] {
        let small = |c: &Case| c.size == LONG && c.timeout_ms == t;
        if !results.iter().any(|r| small(&r.case)) {
            continue;
        }
        line(
            &format!("8 B records, timeout {t} ms, shmflow/tcp over shapes"),
            spread(results, small, |r| ratio(shm(r), r.median(System::Tcp))),
            ">= 5 (issue 3)",
        );
        line(
            &format!("8 B records, timeout {t} ms, shmflow/unix over shapes"),
            spread(results, small, |r| ratio(shm(r), r.median(System::Unix))),
            ">= 3 (issue 3)",
        );
    }
    line(
        "32 KiB segment stream, 1x1: shmflow GB/s",
        spread(results, |c| c.size == SEG_RECORD, |r| shm(r).map_or(f64::NAN, |m| m.gb_per_s)),
        ">= 2x iceoryx2 with 32 KiB samples in the same run (its own bench; MACHINE.md: 8.2 GB/s near, 2.2 far)",
    );
    line(
        "1 MiB records, shmflow/memcpy",
        spread(results, |c| c.size == MIB, |r| ratio(shm(r), memcpy_of(memcpy, MIB))),
        ">= 0.5",
    );
    let per_system = |f: &dyn Fn(Rate) -> f64, keep: &dyn Fn(&Case) -> bool, digits: usize| {
        System::STREAMS
            .iter()
            .map(|&s| {
                let v = spread(results, keep, |r| r.median(s).map_or(f64::NAN, f));
                format!("{} {}", s.name(), v.map_or("-".into(), |[_, med, _]| format!("{med:.digits$}")))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "- CPU ns per record (producer + consumer), 8 B records, 1x1, 100 ms: {}",
        per_system(&|m| m.cpu_ns_per_record, &one(LONG, Shape::new(1, 1), 100), 1)
    );
    println!(
        "- CPU cores busy (producer + consumer, of 2), median over cases: {} (below 2: a side waited, or the \
         shared machine gave it less)",
        per_system(&|m| m.cpu_cores, &|_| true, 2)
    );
}

/// Flat JSON records, one per figure.
fn json_records(plan: &Plan, results: &[CaseResult], memcpy: &[(usize, Rate)]) -> String {
    let record = |system: &str, shape: Option<Shape>, timeout: Option<i64>, size: usize, metric: &str, value: f64| {
        let v = if value.is_finite() { format!("{value:.4}") } else { "null".into() };
        let shape_fields = match shape {
            Some(s) => format!(
                "\"shape\":\"{}\",\"pattern\":\"{}\",\"writers\":{},\"channels\":{}",
                s.name(),
                s.pattern.name(),
                s.writers,
                s.channels
            ),
            None => "\"shape\":\"single-thread\"".into(),
        };
        let timeout = timeout.map_or("null".into(), |t| t.to_string());
        format!(
            "  {{\"bench\":\"throughput\",\"run\":\"{}\",\"system\":\"{system}\",{shape_fields},\
             \"timeout_ms\":{timeout},\"record_bytes\":{size},\"metric\":\"{metric}\",\"value\":{v}}}",
            plan.run_kind()
        )
    };
    let mut out = Vec::new();
    for r in results {
        let (shape, t, size) = (Some(r.case.shape), Some(r.case.timeout_ms), r.case.size);
        for s in System::STREAMS {
            if let Some(m) = r.median(s) {
                out.push(record(s.name(), shape, t, size, "records_per_s", m.records_per_s));
                out.push(record(s.name(), shape, t, size, "gb_per_s", m.gb_per_s));
                out.push(record(s.name(), shape, t, size, "cpu_ns_per_record", m.cpu_ns_per_record));
                out.push(record(s.name(), shape, t, size, "cpu_cores", m.cpu_cores));
                if r.case.shape.pattern == Pattern::Broadcast {
                    out.push(record(s.name(), shape, t, size, "deliveries_per_s", m.deliveries_per_s));
                }
            }
        }
        let shm = r.median(System::Shmflow);
        for (name, other) in [
            ("shmflow/tcp", r.median(System::Tcp)),
            ("shmflow/unix", r.median(System::Unix)),
            ("shmflow/memcpy", memcpy_of(memcpy, size)),
        ] {
            out.push(record(name, shape, t, size, "records_per_s_ratio", ratio(shm, other)));
        }
        let rtt = median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN);
        out.push(record("bare-atomic", shape, t, size, "rtt_ns", rtt));
    }
    for &(size, rate) in memcpy {
        out.push(record("memcpy", None, None, size, "records_per_s", rate.records_per_s));
        out.push(record("memcpy", None, None, size, "gb_per_s", rate.gb_per_s));
        out.push(record("memcpy", None, None, size, "cpu_ns_per_record", rate.cpu_ns_per_record));
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
