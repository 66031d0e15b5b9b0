//! Throughput of the network stack between two processes, after Flink's
//! StreamNetworkThroughputBenchmark and its skew and broadcast variants: writers x channels
//! x buffer timeout x record size, next to the peers a user would pick instead (TCP
//! loopback, a Unix socket, a pipe, all with Flink's credit protocol; an in-process
//! crossbeam channel) and the limits (memcpy, memory read), all measured in the same run.
//!
//! ```text
//!  consumer (this process, CPU a)                   producer (this binary re-executed with
//!                                                   SHMFLOW_TPUT_SPEC=<case>, CPU b)
//!                                                   W writer threads, each with C channels
//!  shmflow: one gate over all W x C channels <===== W ResultPartitions in one memfd arena
//!  tcp:     poll() over W connections        <---> W TCP_NODELAY connections (127.0.0.1),
//!  unix:    poll() over W streams            <---> W AF_UNIX stream socket pairs,
//!  pipe:    poll() over W data pipes         <---- W pipes (1 MiB), and W credit pipes
//!           (credits back on the same socket,      back; each connection multiplexes the
//!           or on the credit pipe)                  writer's C channels
//!  in-process: no producer process: W writer threads (on CPU b) of this process hand
//!           32 KiB buffers to the consumer through a bounded crossbeam channel each
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
//! once into a segment all channels read, the other systems send it once per channel as a
//! socket stack must). Records: `8 B` is a `u64` (Flink's LongValue), `12 B` a `(u64, u32)`
//! pair, the others byte records (`[u8]`); `32 KiB segment` records carry 32 KiB - 4 bytes,
//! so that with their length prefix each fills exactly one 32 KiB segment and is read in
//! place (the streaming case to hold against iceoryx2's 32 KiB samples); `1 MiB` records
//! span 32 segments and are reassembled. The 1 MiB case runs once more, shmflow only, with
//! 4 MiB segments (shape `1x1-4MiB-segments`, field `segment_bytes`): a user's tuning for
//! large records, which then fit one segment and are read in place. The other systems keep
//! their 32 KiB framing, so their figures would repeat the default case's and they skip it;
//! issue 6's 1 MiB goal is the default case's (`shape` 1x1), the tuned one is extra.
//!
//! shmflow runs with Flink's credits: 2 exclusive per channel, and 8 floating per writer
//! (Flink's receiver here is a union of W gates with 8 each; this one gate over all W x C
//! channels gets 8 W), producer pools of 2C + 8 segments, 10 per channel at most. The arena
//! is sized from the case: W (2C + 8) segments plus about 2 MiB (at least 8 segments) more
//! (4x1000: 253 MiB, 10x1000-skew: 630 MiB, 1x1 with 4 MiB segments: 72 MiB; above 1 GiB
//! is refused), channel blocks and a gate bitmap for all W x C channels, rings that hold a
//! channel's whole credit.
//!
//! The stream peers (tcp, unix, pipe) frame like Flink's Netty stack: each writer keeps a
//! 32 KiB buffer per channel, fills it with the same `[u32 len][payload]` records as a
//! shmflow segment (a record may continue in the channel's next buffer), and sends a
//! buffer as one frame `[u32 channel][u32 bytes][u32 backlog][bytes]` on the writer's
//! single connection when it is full or when the buffer timeout flushes it (0 ms: after
//! every record; N ms: when the same [`OutputFlusher`] shmflow's RecordWriter uses raises
//! its flag), under Flink's credit-based flow control:
//! - Credits: each channel starts with 2 exclusive credits, announced by the consumer as
//!   the run starts (Flink's partition request); each connection has a pool of 8 floating
//!   buffers. A writer sends a frame on channel c only while c has credit, one per frame.
//! - Backlog: a frame's header carries the buffers queued behind it on its channel. Without
//!   credit, full buffers queue per channel, at most 10 (Flink's max-buffers-per-channel);
//!   a writer whose channel queue is full blocks until credit comes (the time is shown with
//!   SHMFLOW_TPUT_VERBOSE). A flushed partial buffer needs a credit too; until it has one,
//!   records still join it (as Flink's netty thread reads an unfinished buffer later).
//! - AddCredit: the consumer, once it has processed a frame of c, returns its buffer as a
//!   credit `[u32 channel][u32 n]` on the same socket (the pipe peer: a second pipe per
//!   writer), all credits freed by one read in one write, as Netty flushes once per read
//!   loop. A frame whose backlog exceeds the floating buffers c holds takes floating
//!   buffers from the pool while it has any (one more credit each), else c waits in line;
//!   a processed buffer of a channel that holds more than it needs (floating > backlog, so
//!   all of them once its backlog is 0) goes back to the pool and to the next channel in
//!   line, instead of back to c as a credit.
//! - The writer reads credit messages without blocking its send path (recv MSG_DONTWAIT on
//!   the socket, a non-blocking credit pipe): whenever the channel at hand has none, every
//!   8 completed buffers while any are queued, and at each timeout flush; it blocks (poll,
//!   bounded) only on a full queue and at the end, when it sends everything left, ends its
//!   stream and reads the credit stream to its end (the consumer closes it after the data's
//!   end: no TCP reset under unread data). Both sides check the protocol: a frame without
//!   credit, or credits beyond 2 + 8 on a channel, fail the run.
//!
//! Small frames queue in a 64 KiB send buffer (full buffers go out with writev, without a
//! copy). The consumer polls every connection, reads up to 64 KiB per system call,
//! demultiplexes frames into per-channel decoders, decodes whole records in place, and
//! reads the rest of a large record straight into its reassembly buffer (generous to the
//! peers). The pipes are enlarged to 1 MiB (F_SETPIPE_SZ, best effort; the default 64 KiB
//! is below the 320 KiB credit window of one channel); socket buffers keep the kernel's
//! defaults.
//!
//! `in-process-channel` is the cost without a process boundary: W writer threads of the
//! consumer's process (pinned to the producer's CPU) frame the records into the same
//! 32 KiB buffers (`Vec<u8>`, same header, backlog 0) and send each through a bounded
//! crossbeam channel per writer whose capacity is the stream peers' credit window, 2C + 8
//! buffers (10 for 1x1; a fixed 10 starved the 4x1000 shapes, whose flushes send a
//! thousand small buffers at once, once flushes no longer blocked). A full buffer waits
//! for room (a blocking send); a flushed partial one that finds the channel full stays
//! open, records join it, and it goes out at the next chance, as a flushed buffer waits
//! for credit on the streams (sending every single-record buffer at 0 ms woke the consumer
//! per record: 0.3 million records/s). The consumer decodes the buffers as it decodes a
//! socket's frames and sends each back on a second channel for reuse. CPU time counts the
//! whole process.
//!
//! The limits run in one thread of the consumer: `memcpy` copies the same payload bytes,
//! record by record, into a 4 MiB ring (cache-resident on our machines): the bar for 1 MiB
//! records. `memread` lays the records end to end over a 64 MiB region and reads them in
//! order with the consumer's own checksum (every byte): memory-read bandwidth beyond the L3
//! of most machines, with the consumer's per-record work; a stream whose data stays in the
//! caches can beat it.
//!
//! Records/s counts records written (Flink's count: a broadcast record counts once; the
//! consumer reads it C times, reported as `deliveries_per_s`); GB/s is records/s times the
//! record's payload bytes. CPU ns per record is the CPU time (user + system, so the
//! kernel's socket work counts) of the producer and the consumer process over the window,
//! per record, both read by the consumer as the window opens and closes (its own with
//! getrusage RUSAGE_SELF, the producer's from /proc/PID/task/*/schedstat): it shows who
//! spins without work.
//! Throughput is measured at the consumer over a window that starts after a warm-up, so
//! process start, arena page faults and the drain at the end are outside it; in the full
//! run a warm-up spans at least two buffer timeouts and a window at least five. The vCPUs
//! of our machines move between "near" and "far" placement (MACHINE.md), so each case
//! first measures a bare cache-line round trip between the two CPUs (column `bare RTT`),
//! and the systems of one case run back to back: compare ratios, not absolute figures.
//!
//! `cargo bench --bench throughput [-- --json PATH --rounds N --measure-ms MS --no-pin]`
//! (argv holds `--bench`) runs every case (filters: `--shape NAME --timeout MS --size BYTES
//! --system NAME`; systems shmflow, tcp, unix, pipe, in-process-channel, memcpy, memread);
//! without `--bench` (as `cargo test --benches` runs it) a smoke run with tiny windows
//! touches every shape, record kind and system once. Every wait is bounded, a watchdog
//! kills a producer that outlives its deadline, a guard kills and reaps it on every exit
//! path, in-process writers are stopped and joined on every exit path, and nothing goes to
//! /dev/shm (memfd arenas only).

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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod common;
use clap::Parser;
use common::args::BenchArgs;
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
/// The segment size of the tuned large-record case (a 1 MiB record fits one segment).
const LARGE_SEGMENT: usize = 4 << 20;
/// A frame's header: `[u32 channel][u32 bytes][u32 backlog]`.
const HDR: usize = 12;
/// A credit message (Flink's AddCredit): `[u32 channel][u32 credits]`.
const CREDIT_MSG: usize = 8;
/// Exclusive credits per channel (Flink's taskmanager.network.memory.buffers-per-channel).
const EXCLUSIVE_CREDITS: u32 = 2;
/// Full buffers a writer queues per channel without credit before it blocks (Flink's
/// taskmanager.network.memory.max-buffers-per-channel).
const MAX_QUEUED: usize = 10;
/// While buffers wait for credit, a writer reads credit messages at least every this many
/// frames it completes (and whenever the channel at hand has no credit).
const POLL_EVERY_FRAMES: u32 = 8;
/// Buffers in flight per writer of the in-process channel with `channels` channels: the
/// credit window of the stream peers, 2 per channel + 8 (10 for 1x1).
fn in_process_window(channels: u32) -> usize {
    (EXCLUSIVE_CREDITS * channels + FLOATING_PER_WRITER) as usize
}
/// The pipe peer's pipe size (F_SETPIPE_SZ; the default is 64 KiB).
const PIPE_BYTES: libc::c_int = 1 << 20;
/// The region the memory-read limit reads, larger than the L3.
const MEMREAD_REGION: usize = 64 << 20;
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
    Pipe,
    /// Writer threads and the consumer in this process, buffers through crossbeam channels.
    InProcess,
    /// Limits, measured in one thread of this process.
    Memcpy,
    Memread,
}

impl System {
    /// The systems that stream a case from writers to the consumer.
    const STREAMS: [System; 5] = [System::Shmflow, System::Tcp, System::Unix, System::Pipe, System::InProcess];
    const ALL: [System; 7] =
        [System::Shmflow, System::Tcp, System::Unix, System::Pipe, System::InProcess, System::Memcpy, System::Memread];

    fn name(self) -> &'static str {
        match self {
            System::Shmflow => "shmflow",
            System::Tcp => "tcp",
            System::Unix => "unix",
            System::Pipe => "pipe",
            System::InProcess => "in-process-channel",
            System::Memcpy => "memcpy",
            System::Memread => "memread",
        }
    }

    /// A short column heading.
    fn short(self) -> &'static str {
        match self {
            System::InProcess => "in-process",
            s => s.name(),
        }
    }

    fn from_name(name: &str) -> Option<System> {
        Self::ALL.into_iter().find(|s| s.name() == name || s.short() == name)
    }

    /// The stream peers that frame records into 32 KiB buffers with the credit protocol
    /// (the in-process channel frames them the same way, without credits).
    fn is_stream_peer(self) -> bool {
        matches!(self, System::Tcp | System::Unix | System::Pipe)
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

/// One cell of the matrix: a shape, a buffer timeout, a record size and shmflow's segment
/// size (the default 32 KiB, or a user's tuning for large records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    shape: Shape,
    timeout_ms: i64,
    size: usize,
    segment: usize,
}

impl Case {
    /// A case with the default 32 KiB segments.
    const fn new(shape: Shape, timeout_ms: i64, size: usize) -> Self {
        Self { shape, timeout_ms, size, segment: SEGMENT }
    }

    /// The shape's name, and the segment size where it is not the default
    /// (`1x1-4MiB-segments`): a configuration of its own in the report.
    fn shape_name(self) -> String {
        if self.segment == SEGMENT {
            self.shape.name()
        } else {
            format!("{}-{}-segments", self.shape.name(), size_name(self.segment).replace(' ', ""))
        }
    }

    /// Whether `system` runs this case: a tuned segment size is shmflow's alone (the other
    /// systems keep their 32 KiB framing, so their figures would repeat the default case's).
    fn runs(self, system: System) -> bool {
        self.segment == SEGMENT || system == System::Shmflow
    }
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

/// What a producer child is told: `system:W:C:pattern:timeout_ms:size:segment`.
fn encode_spec(system: System, case: Case) -> String {
    let s = case.shape;
    format!(
        "{}:{}:{}:{}:{}:{}:{}",
        system.name(),
        s.writers,
        s.channels,
        s.pattern.name(),
        case.timeout_ms,
        case.size,
        case.segment
    )
}

fn decode_spec(spec: &str) -> Res<(System, Case)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [system, w, c, pattern, timeout, size, segment] = parts[..] else {
        return Err(format!("bad spec {spec:?}").into());
    };
    let system = System::from_name(system).ok_or_else(|| format!("unknown system {system:?}"))?;
    let pattern = Pattern::from_name(pattern).ok_or_else(|| format!("unknown pattern {pattern:?}"))?;
    let case = Case {
        shape: Shape::with(w.parse()?, c.parse()?, pattern),
        timeout_ms: timeout.parse()?,
        size: size.parse()?,
        segment: segment.parse()?,
    };
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
    /// 100 ms), the 12 B pair, the 32 KiB segment stream and 1 MiB records at 1x1, 100 ms,
    /// the last also with 4 MiB segments (shmflow only).
    fn full_cases() -> Vec<Case> {
        let mut cases = Vec::new();
        for size in [LONG, KIB] {
            for shape in [Shape::new(1, 1), Shape::new(2, 2)] {
                for timeout_ms in [0, 1, 100] {
                    cases.push(Case::new(shape, timeout_ms, size));
                }
            }
            for (shape, timeout_ms) in [
                (Shape::new(4, 100), 100),
                (Shape::new(4, 1000), 1),
                (Shape::new(4, 1000), 100),
                (Shape::with(10, 1000, Pattern::Skew), 1),
                (Shape::with(4, 100, Pattern::Broadcast), 100),
            ] {
                cases.push(Case::new(shape, timeout_ms, size));
            }
        }
        for size in [PAIR, SEG_RECORD, MIB] {
            cases.push(Case::new(Shape::new(1, 1), 100, size));
        }
        cases.push(Case { segment: LARGE_SEGMENT, ..Case::new(Shape::new(1, 1), 100, MIB) });
        cases
    }

    /// The smoke run: every shape, record kind and system once.
    fn quick_cases() -> Vec<Case> {
        vec![
            Case::new(Shape::new(1, 1), 0, LONG),
            Case::new(Shape::new(2, 2), 1, PAIR),
            Case::new(Shape::new(4, 100), 100, KIB),
            Case::new(Shape::new(4, 1000), 1, LONG),
            Case::new(Shape::with(10, 1000, Pattern::Skew), 1, LONG),
            Case::new(Shape::with(4, 100, Pattern::Broadcast), 100, LONG),
            Case::new(Shape::new(1, 1), 100, SEG_RECORD),
            Case::new(Shape::new(1, 1), 1, MIB),
            Case { segment: LARGE_SEGMENT, ..Case::new(Shape::new(1, 1), 1, MIB) },
        ]
    }

    fn new(args: &Args) -> Self {
        let keep = |c: &Case| {
            args.only_size.is_none_or(|o| o == c.size)
                && args.only_shape.as_ref().is_none_or(|o| *o == c.shape.name() || *o == c.shape_name())
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

    /// Warm-up and window of `case`: in the full run at least 2 and 5 buffer timeouts, so
    /// that data flushed in bursts by the timer averages out (five systems per case keep
    /// the full run within about six minutes on two cores).
    fn timing(&self, case: Case) -> (Duration, Duration) {
        let t = Duration::from_millis(case.timeout_ms.max(0) as u64);
        if self.full {
            (self.warm.max(t * 2), self.window.max(t * 5))
        } else {
            (self.warm, self.window)
        }
    }
}

/// The systems to run: all, or the one `--system` names.
fn systems(args: &Args) -> Vec<System> {
    System::ALL.into_iter().filter(|&s| args.only_system.is_none_or(|o| o == s)).collect()
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

/// The throughput bench's flags.
#[derive(Parser)]
#[command(
    name = "throughput",
    about = "Throughput of shmflow and its peers: writers x channels x flush timeout x record size"
)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    /// Do not pin the processes to CPUs.
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pin: bool,
    /// Rounds per case.
    #[arg(long, value_name = "N")]
    rounds: Option<u32>,
    /// Measurement window per case in ms.
    #[arg(long, value_name = "MS")]
    measure_ms: Option<u64>,
    /// Only cases of this record size (a filter on the full plan).
    #[arg(long, value_name = "BYTES")]
    size: Option<usize>,
    /// Only cases of this shape, such as 4x1000 or 10x1000-skew.
    #[arg(long, value_name = "NAME")]
    shape: Option<String>,
    /// Only cases of this flush timeout in ms.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    timeout: Option<i64>,
    /// Only this system.
    #[arg(long, value_name = "NAME")]
    system: Option<String>,
}

fn parse_args() -> Res<Args> {
    let c = Cli::parse();
    let only_system = match c.system {
        None => None,
        Some(name) => Some(System::from_name(&name).ok_or_else(|| format!("unknown system {name:?}"))?),
    };
    Ok(Args {
        full: c.bench.full,
        pin: c.pin,
        rounds: c.rounds,
        measure_ms: c.measure_ms,
        json: c.bench.json,
        only_size: c.size,
        only_shape: c.shape,
        only_timeout: c.timeout,
        only_system,
    })
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
/// normalizing `perf stat` counts per record); whether it is set.
fn verbose(system: System, t: &Tally) -> bool {
    let on = std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some();
    if on {
        eprintln!("  {}: {} records, {} bytes in all", system.name(), t.records, t.bytes);
    }
    on
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
    for &c in &plan.cases {
        arena_config(c)?;
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
            rates: System::STREAMS
                .iter()
                .filter(|&&s| plan.systems.contains(&s) && case.runs(s))
                .map(|&s| (s, Vec::new()))
                .collect(),
            bare_rtt_ns: Vec::new(),
        })
        .collect();
    // A case none of the selected systems runs (a `--system` filter) is left out.
    results.retain(|r| !r.rates.is_empty());
    // Per record size: memcpy's and memread's rates, one per round.
    let mut limits: Vec<(usize, Vec<Rate>, Vec<Rate>)> =
        plan.sizes.iter().map(|&s| (s, Vec::new(), Vec::new())).collect();
    let mut region = Vec::new();
    let started = Instant::now();
    for round in 0..plan.rounds {
        for (size, copy, read) in limits.iter_mut() {
            if plan.systems.contains(&System::Memcpy) {
                copy.push(run_memcpy(*size, &plan)?);
            }
            if plan.systems.contains(&System::Memread) {
                read.push(run_memread(*size, &plan, &mut region)?);
            }
        }
        region = Vec::new();
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
    let limits: Vec<Limit> = limits
        .into_iter()
        .map(|(size, copy, read)| Limit { size, memcpy: median_rate(&copy), memread: median_rate(&read) })
        .collect();
    println!("- load average at the end: {}; {:.0?} in all\n", load_average(), started.elapsed());
    print_table(&plan, &results, &limits);
    print_summary(&results, &limits);
    if let Some(path) = &args.json {
        std::fs::write(path, json_records(&plan, &results, &limits))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn describe(case: Case) -> String {
    format!("{} {} timeout {} ms", size_name(case.size), case.shape_name(), case.timeout_ms)
}

fn run_stream(system: System, case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    match system {
        System::Shmflow => run_shmflow(case, plan, cpus),
        s if s.is_stream_peer() => run_socket(system, case, plan, cpus),
        System::InProcess => run_in_process(case, plan, cpus),
        s => Err(format!("{} is not a stream", s.name()).into()),
    }
}

/// The arena of one shmflow run: the case's segments (32 KiB unless tuned), enough for
/// every writer's pool quota (Flink's 2 exclusive credits per channel + 8 floating: 2C + 8
/// segments per writer) and about 2 MiB more (at least 8 segments), channel blocks for all
/// W x C channels and one gate that reads them all.
fn arena_config(case: Case) -> Res<ArenaConfig> {
    let shape = case.shape;
    let Shape { writers, channels, .. } = shape;
    let quota = u64::from(writers) * (u64::from(channels) * 2 + u64::from(FLOATING_PER_WRITER));
    let segments = quota + ((2 << 20) / case.segment as u64).max(8);
    let all = writers * channels;
    let cfg = ArenaConfig {
        segment_size: case.segment as u32,
        segment_count: segments as u32,
        max_channels: all.max(1024).next_multiple_of(64),
        max_channels_per_gate: all.max(1024).next_multiple_of(64),
        max_partitions: writers.max(256),
        max_gates: (writers + 8).max(256),
        // A channel's rings hold its whole credit: 2 exclusive + the gate's floating ones.
        ring_capacity: (2 + FLOATING_PER_WRITER * writers + 1).next_power_of_two().max(64),
        ..ArenaConfig::default()
    };
    let bytes = segments * case.segment as u64;
    if bytes > ARENA_LIMIT {
        return Err(format!(
            "shape {} needs {} MiB of segments (2 per channel + 8 per writer), above the {} MiB this bench allows",
            case.shape_name(),
            bytes >> 20,
            ARENA_LIMIT >> 20
        )
        .into());
    }
    Ok(cfg)
}

fn run_shmflow(case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let arena = Arc::new(Arena::create_memfd(&arena_config(case)?, "throughput")?);
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

/// The consumer's side of the credit protocol on one connection (one writer's C
/// channels): Flink's RemoteInputChannels of one writer with their exclusive buffers, and
/// the floating buffers of the writer's gate.
///
/// Channel c owns `EXCLUSIVE_CREDITS + held[c]` buffers. A frame of c occupies one; once
/// it is processed the buffer is empty again and, as a credit, goes back to the producer,
/// unless c holds more buffers than it needs (`held[c] > backlog[c]`, Flink's "available >
/// required": 2 + backlog), in which case a floating one returns to the pool, from where
/// channels waiting for floating buffers get it. A frame that reports a backlog larger than
/// the channel's floating buffers takes floating buffers from the pool while there are
/// any (each an extra credit), else the channel waits in line for them.
struct Credits {
    /// Floating buffers not given to a channel.
    pool: u32,
    /// Floating buffers channel c holds.
    held: Vec<u32>,
    /// The backlog of channel c's latest frame.
    backlog: Vec<u32>,
    /// Credits granted to channel c (sent or due) minus its frames received: a frame on a
    /// channel without one breaks the protocol.
    outstanding: Vec<u32>,
    /// Channels whose backlog exceeds their floating buffers, in arrival order.
    waiting: std::collections::VecDeque<u32>,
    is_waiting: Vec<bool>,
    /// Credits to announce per channel, and the channels that have some.
    due: Vec<u32>,
    due_list: Vec<u32>,
    /// Encoded credit messages not written yet (the socket or pipe was full).
    out: Vec<u8>,
    out_at: usize,
    /// Frames received, floating grants and credit writes, for the verbose output.
    frames: u64,
    floating_grants: u64,
    writes: u64,
}

impl Credits {
    /// The state of a new connection: every channel's exclusive credits are due.
    fn new(channels: u32) -> Self {
        let n = channels as usize;
        let mut c = Self {
            pool: FLOATING_PER_WRITER,
            held: vec![0; n],
            backlog: vec![0; n],
            outstanding: vec![0; n],
            waiting: std::collections::VecDeque::new(),
            is_waiting: vec![false; n],
            due: vec![0; n],
            due_list: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            frames: 0,
            floating_grants: 0,
            writes: 0,
        };
        for ch in 0..n {
            c.grant(ch, EXCLUSIVE_CREDITS);
        }
        c
    }

    fn grant(&mut self, c: usize, n: u32) {
        if self.due[c] == 0 {
            self.due_list.push(c as u32);
        }
        self.due[c] += n;
        self.outstanding[c] += n;
    }

    /// Gives channel `c` floating buffers from the pool up to its backlog.
    fn take_floating(&mut self, c: usize) {
        while self.held[c] < self.backlog[c] && self.pool > 0 {
            self.pool -= 1;
            self.held[c] += 1;
            self.floating_grants += 1;
            self.grant(c, 1);
        }
    }

    /// A frame of channel `c` arrived, with `backlog` buffers queued behind it.
    fn frame_arrived(&mut self, c: usize, backlog: u32) -> Res<()> {
        if self.outstanding[c] == 0 {
            return Err(format!("a frame on channel {c} without credit").into());
        }
        self.outstanding[c] -= 1;
        self.frames += 1;
        self.backlog[c] = backlog;
        self.take_floating(c);
        if self.held[c] < self.backlog[c] && !self.is_waiting[c] {
            self.is_waiting[c] = true;
            self.waiting.push_back(c as u32);
        }
        Ok(())
    }

    /// A frame of channel `c` was processed: its buffer is free again.
    fn frame_done(&mut self, c: usize) {
        if self.held[c] > self.backlog[c] {
            self.held[c] -= 1;
            self.pool += 1;
            // The waiting channels, first come first served; bounded: each turn either
            // grants a buffer or ends the loop.
            while self.pool > 0 {
                let Some(w) = self.waiting.pop_front() else { break };
                let w = w as usize;
                self.is_waiting[w] = false;
                self.take_floating(w);
                if self.held[w] < self.backlog[w] {
                    self.is_waiting[w] = true;
                    self.waiting.push_front(w as u32);
                    break;
                }
            }
        } else {
            self.grant(c, 1);
        }
    }

    /// Encodes the due credits, one message per channel, after what is still unwritten.
    fn encode_due(&mut self) {
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
        for &c in &self.due_list {
            self.out.extend_from_slice(&c.to_le_bytes());
            self.out.extend_from_slice(&self.due[c as usize].to_le_bytes());
            self.due[c as usize] = 0;
        }
        self.due_list.clear();
    }

    fn unwritten(&self) -> bool {
        self.out_at < self.out.len()
    }
}

/// One connection of a stream consumer (TCP, Unix socket, or a data pipe with a credit
/// pipe beside it): the frames of one writer's C channels in, its credits out.
struct Conn {
    file: File,
    /// Where credit messages go: the same socket (a second fd of it), or the credit pipe;
    /// `None` once the stream ended.
    credit_out: Option<File>,
    socket: bool,
    /// The writer, from the 4-byte hello that opens the stream.
    writer: Option<u32>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The frame being read: its channel and the bytes still to come.
    frame: Option<(usize, usize)>,
    chans: Vec<ChanDec>,
    credits: Credits,
    eof: bool,
}

/// What one read did.
enum Pump {
    Progress,
    WouldBlock,
    Eof,
}

impl Conn {
    /// A connection over `data` (read) and `credit_out` (written; for a socket, a second
    /// fd of it).
    fn new(data: OwnedFd, credit_out: OwnedFd, socket: bool, channels: u32) -> Res<Self> {
        set_nonblocking(data.as_raw_fd())?;
        set_nonblocking(credit_out.as_raw_fd())?;
        Ok(Self {
            file: File::from(data),
            credit_out: Some(File::from(credit_out)),
            socket,
            writer: None,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            frame: None,
            chans: (0..channels).map(|_| ChanDec::default()).collect(),
            credits: Credits::new(channels),
            eof: false,
        })
    }

    /// Writes the due credits (one write for all of them, as Netty flushes once per read
    /// loop); what the kernel does not take now waits for the next call.
    fn send_credits(&mut self) -> Res<()> {
        let Some(out) = self.credit_out.as_ref() else { return Ok(()) };
        self.credits.encode_due();
        let cr = &mut self.credits;
        // Bounded: each turn writes some bytes, or stops.
        while cr.out_at < cr.out.len() {
            match (&*out).write(&cr.out[cr.out_at..]) {
                Ok(0) => return Err("the credit stream closed".into()),
                Ok(n) => {
                    cr.out_at += n;
                    cr.writes += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("writing credits: {e}").into()),
            }
        }
        Ok(())
    }

    /// Whether credit messages wait for room in the socket or pipe.
    fn wants_write(&self) -> bool {
        self.credit_out.is_some() && self.credits.unwritten()
    }

    /// The stream ended: no more credits; the producer, reading its credit stream to its
    /// end before it closes, may go.
    fn close_credits(&mut self) {
        if let Some(out) = self.credit_out.take() {
            if self.socket {
                // SAFETY: shutdown on a socket fd we own; it takes no pointers.
                unsafe { libc::shutdown(out.as_raw_fd(), libc::SHUT_WR) };
            }
        }
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
                    if left == n {
                        self.credits.frame_done(c);
                    }
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
                self.close_credits();
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
                    if avail < HDR {
                        break;
                    }
                    let (c, len, backlog) = (word(s) as usize, word(s + 4) as usize, word(s + 8));
                    if c >= self.chans.len() || len == 0 || len > SEGMENT || backlog as usize > MAX_QUEUED + 1 {
                        return Err(format!("bad frame header: channel {c}, {len} bytes, backlog {backlog}").into());
                    }
                    self.credits.frame_arrived(c, backlog)?;
                    self.frame = Some((c, len));
                    self.start += HDR;
                }
                Some((c, left)) => {
                    let take = left.min(avail);
                    if take == 0 {
                        break;
                    }
                    self.chans[c].feed(&self.buf[s..s + take], size, w, tally)?;
                    self.start += take;
                    self.frame = (left > take).then_some((c, left - take));
                    if left == take {
                        self.credits.frame_done(c);
                    }
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

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array it is given, which has room for them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: pipe2 succeeded: both fds are open and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until `fd` is readable (or hung up), at most `timeout`; false on timeout.
fn wait_readable(fd: RawFd, timeout: Duration) -> Res<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `p` is one valid pollfd.
    let rc = unsafe { libc::poll(&mut p, 1, timeout.as_millis().clamp(1, 60_000) as i32) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e.into());
    }
    Ok(rc > 0)
}

/// The stream peers: TCP, a Unix socket or a pipe per writer, with Flink's credit protocol.
fn run_socket(system: System, case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let Shape { writers, channels, .. } = case.shape;
    let mut cmd = producer_command(system, case, cpus.map(|c| c.1))?;
    // Per writer: (data in, credits out, is a socket).
    let (mut producer, links) = match system {
        System::Tcp => {
            let listener = TcpListener::bind(("127.0.0.1", 0))?;
            cmd.env(ENV_PORT, listener.local_addr()?.port().to_string());
            let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
            let mut links = Vec::new();
            for _ in 0..writers {
                let s = accept_within(&listener, WAIT_TIMEOUT, "producer")?;
                // Credit messages are small writes: Nagle must not hold them back.
                s.set_nodelay(true)?;
                let fd = OwnedFd::from(s);
                let credit = fd.try_clone()?;
                links.push((fd, credit, true));
            }
            (producer, links)
        }
        System::Unix => {
            let mut links = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..writers {
                let (a, b) = UnixStream::pair()?;
                let a = OwnedFd::from(a);
                let credit = a.try_clone()?;
                links.push((a, credit, true));
                theirs.push(OwnedFd::from(b));
            }
            let raw: Vec<RawFd> = theirs.iter().map(|f| f.as_raw_fd()).collect();
            pass_fds(&mut cmd, ENV_FDS, &raw);
            let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
            drop(theirs); // the child has its copies; our ends must see EOF when it closes them
            (producer, links)
        }
        System::Pipe => {
            let mut links = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..writers {
                let (data_r, data_w) = pipe()?;
                let (credit_r, credit_w) = pipe()?;
                // Best effort: a larger pipe, as a user streaming through pipes would set.
                // SAFETY: fcntl on a pipe fd we own, with a valid command and size.
                unsafe { libc::fcntl(data_w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
                links.push((data_r, credit_w, false));
                theirs.push(data_w);
                theirs.push(credit_r);
            }
            let raw: Vec<RawFd> = theirs.iter().map(|f| f.as_raw_fd()).collect();
            pass_fds(&mut cmd, ENV_FDS, &raw);
            let producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
            drop(theirs); // as above: EOF on our ends when the child closes its ends
            (producer, links)
        }
        _ => return Err(format!("{} is not a stream peer", system.name()).into()),
    };
    producer.expect_line("ready")?;
    let mut conns = links
        .into_iter()
        .map(|(data, credit, socket)| Conn::new(data, credit, socket, channels))
        .collect::<Res<Vec<_>>>()?;
    // Every channel's exclusive credits, as Flink's partition request announces them.
    for c in conns.iter_mut() {
        c.send_credits()?;
    }
    let mut tally = Tally::default();
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(2 * conns.len());
    let mut idle_since: Option<Instant> = None;
    producer.send("go")?;
    let mut window = Window::new(plan.timing(case), process_cpu_ns, Some(producer.guard.child.id()));
    while conns.iter().any(|c| !c.eof) {
        pollfds.clear();
        for c in &conns {
            let fd = if c.eof { -1 } else { c.file.as_raw_fd() };
            pollfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            let out = match (&c.credit_out, c.wants_write()) {
                (Some(f), true) => f.as_raw_fd(),
                _ => -1,
            };
            pollfds.push(libc::pollfd { fd: out, events: libc::POLLOUT, revents: 0 });
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
        for (i, c) in conns.iter_mut().enumerate() {
            if pollfds[2 * i + 1].revents != 0 {
                c.send_credits()?;
            }
            if pollfds[2 * i].revents == 0 || c.eof {
                continue;
            }
            // Read until the stream is empty (as an epoll loop does), at most 16 times;
            // the credits each read freed go out after it.
            for _ in 0..16 {
                match c.pump(case.size, &mut tally)? {
                    Pump::Progress => {
                        c.send_credits()?;
                        on_tick(window.tick(tally.records), &mut producer)?;
                    }
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
    if verbose(system, &tally) {
        let sum = |f: fn(&Credits) -> u64| conns.iter().map(|c| f(&c.credits)).sum::<u64>();
        eprintln!(
            "    {} frames, {} floating grants, {} credit writes",
            sum(|c| c.frames),
            sum(|c| c.floating_grants),
            sum(|c| c.writes)
        );
    }
    window.rate(case)
}

/// The consumer's ends of an in-process writer's channels: buffers in, empty buffers back.
type BufferLink = (crossbeam_channel::Receiver<Vec<u8>>, crossbeam_channel::Sender<Vec<u8>>);

/// The in-process peer's writer threads; dropping it stops them and joins them (their
/// channels to the consumer close first, so none stays blocked in a send).
struct InProcessWriters {
    signals: Arc<Signals>,
    /// Per writer: its frames, and the way back for empty buffers.
    links: Vec<BufferLink>,
    threads: Vec<std::thread::JoinHandle<Res<u64>>>,
}

impl InProcessWriters {
    /// Joins the writers after they ended their streams; their record counts.
    fn join(mut self) -> Res<Vec<u64>> {
        let mut counts = Vec::new();
        for t in std::mem::take(&mut self.threads) {
            counts.push(t.join().map_err(|_| "a writer panicked")??);
        }
        Ok(counts)
    }
}

impl Drop for InProcessWriters {
    fn drop(&mut self) {
        set_start(&self.signals.start, 2);
        // Relaxed: a stop request, as in the producer process.
        self.signals.stop.store(true, Ordering::Relaxed);
        self.links.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The in-process peer: W writer threads in this process (pinned to the producer's CPU)
/// frame their records into 32 KiB buffers as the stream peers do and pass them through a
/// bounded crossbeam channel per writer (the credit window: 2C + 8 buffers);
/// the consumer decodes and checks them as it does a socket's frames, and sends every
/// buffer back for reuse.
fn run_in_process(case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let Shape { writers, channels, .. } = case.shape;
    let (signals, ready_rx) = Signals::new();
    let mut writers_of = InProcessWriters { signals: signals.clone(), links: Vec::new(), threads: Vec::new() };
    for w in 0..writers {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(in_process_window(channels));
        let (back_tx, back_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        writers_of.links.push((rx, back_tx));
        let signals = signals.clone();
        writers_of.threads.push(std::thread::spawn(move || -> Res<u64> {
            let r = (|| {
                if let Some((_, b)) = cpus {
                    pin_to(b)?;
                }
                framed_writer(ChannelOut::new(tx, back_rx, channels), case, w, &signals)
            })();
            if let Err(e) = &r {
                signals.ready(Err(format!("writer {w}: {e}").into()));
            }
            r
        }));
    }
    for _ in 0..writers {
        match ready_rx.recv_timeout(WAIT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a writer did not get ready".into()),
        }
    }
    let mut decs: Vec<Vec<ChanDec>> =
        (0..writers).map(|_| (0..channels).map(|_| ChanDec::default()).collect()).collect();
    let mut open = vec![true; writers as usize];
    let mut live = writers as usize;
    let mut tally = Tally::default();
    let mut idle_since: Option<Instant> = None;
    set_start(&signals.start, 1);
    let mut window = Window::new(plan.timing(case), process_cpu_ns, None);
    let stop = |tick: Tick| {
        if tick == Tick::Closed {
            // Relaxed: a stop request, read by the writers between records.
            signals.stop.store(true, Ordering::Relaxed);
        }
    };
    while live > 0 {
        let mut got = false;
        for (w, (rx, back)) in writers_of.links.iter().enumerate() {
            if !open[w] {
                continue;
            }
            // At most 16 buffers of one writer, then the next (as the socket loop).
            for _ in 0..16 {
                match rx.try_recv() {
                    Ok(buf) => {
                        got = true;
                        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                        let (c, len) = (word(0) as usize, word(4) as usize);
                        if buf.len() < HDR || c >= channels as usize || len == 0 || len != buf.len() - HDR {
                            return Err(format!("bad buffer: channel {c}, {len} bytes in {}", buf.len()).into());
                        }
                        decs[w][c].feed(&buf[HDR..], case.size, w as u32, &mut tally)?;
                        // The writer may have ended already: then the buffer is dropped.
                        let _ = back.send(buf);
                        stop(window.tick(tally.records));
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        open[w] = false;
                        live -= 1;
                        break;
                    }
                }
            }
        }
        if got || live == 0 {
            idle_since = None;
            continue;
        }
        let mut sel = crossbeam_channel::Select::new();
        for (w, (rx, _)) in writers_of.links.iter().enumerate() {
            if open[w] {
                sel.recv(rx);
            }
        }
        if sel.ready_timeout(POLL_SLICE).is_err()
            && idle_since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT
        {
            return Err(format!("no buffer within {WAIT_TIMEOUT:?}").into());
        }
    }
    if decs.iter().flatten().any(ChanDec::mid_record) {
        return Err("a stream ended inside a record".into());
    }
    let counts = writers_of.join()?;
    tally.verify(case, &counts)?;
    verbose(System::InProcess, &tally);
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
    window.rate(Case::new(Shape::new(1, 1), 0, size))
}

/// The memory-read limit: records of `size` bytes laid end to end over a 64 MiB region
/// (beyond the L3), read in order with the consumer's checksum (every byte), in this
/// thread. `region` is reused between calls.
fn run_memread(size: usize, plan: &Plan, region: &mut Vec<u8>) -> Res<Rate> {
    let slots = (MEMREAD_REGION / size).max(1);
    region.clear();
    let rec = base_record(size);
    for _ in 0..slots {
        region.extend_from_slice(&rec);
    }
    let mut records = 0u64;
    let every = check_every(size);
    let mut window = Window::new((plan.warm, plan.window), thread_cpu_ns, None);
    let mut slot = 0usize;
    let mut sum = 0u64;
    loop {
        for _ in 0..every {
            let at = slot * size;
            sum = sum.wrapping_add(record_checksum(&region[at..at + size]));
            slot += 1;
            if slot == slots {
                slot = 0;
            }
        }
        std::hint::black_box(sum);
        records += every;
        if window.tick(records) == Tick::Closed {
            break;
        }
    }
    window.rate(Case::new(Shape::new(1, 1), 0, size))
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

/// What every writer thread shares with the thread that starts and stops them (the
/// producer's main thread, or the consumer for the in-process peer).
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
    /// New signals, and where the writers' readiness arrives.
    fn new() -> (Arc<Self>, mpsc::Receiver<Res<()>>) {
        let (ready_tx, ready_rx) = mpsc::channel::<Res<()>>();
        let signals = Arc::new(Signals {
            stop: Flag::new(false),
            start: Arc::new((Mutex::new(0), Condvar::new())),
            ready: Mutex::new(ready_tx),
            create: Mutex::new(()),
        });
        (signals, ready_rx)
    }

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
    // Per writer: (data out, credits in, is a socket).
    let socket_link = |fd: OwnedFd| -> Res<Option<(File, File, bool)>> {
        let credits = fd.try_clone()?;
        Ok(Some((File::from(fd), File::from(credits), true)))
    };
    let mut conns: Vec<Option<(File, File, bool)>> = match system {
        System::Tcp => {
            let port: u16 = env_var(ENV_PORT)?.parse()?;
            (0..writers)
                .map(|_| {
                    let s = TcpStream::connect(("127.0.0.1", port))?;
                    s.set_nodelay(true)?;
                    socket_link(OwnedFd::from(s))
                })
                .collect::<Res<_>>()?
        }
        System::Unix => inherited_fds(ENV_FDS, writers as usize)?.into_iter().map(socket_link).collect::<Res<_>>()?,
        System::Pipe => {
            let mut fds = inherited_fds(ENV_FDS, 2 * writers as usize)?.into_iter();
            (0..writers)
                .map(|_| match (fds.next(), fds.next()) {
                    (Some(data), Some(credits)) => Some((File::from(data), File::from(credits), false)),
                    _ => None,
                })
                .collect()
        }
        System::Shmflow => (0..writers).map(|_| None).collect(),
        other => return Err(format!("{} has no producer process", other.name()).into()),
    };
    let env = match system {
        System::Shmflow => Some(ShuffleEnvironment::attach_inherited(1)?),
        _ => None,
    };
    let (signals, ready_rx) = Signals::new();
    let mut threads = Vec::new();
    for w in 0..writers {
        let signals = signals.clone();
        let conn = conns[w as usize].take();
        let env = env.clone();
        let channels = case.shape.channels;
        threads.push(std::thread::spawn(move || -> Res<u64> {
            let r = match (env, conn) {
                (Some(env), _) => shmflow_writer(&env, case, w, &signals),
                (None, Some((out, credits, socket))) => CreditedOut::new(out, credits, socket, w, channels)
                    .and_then(|out| framed_writer(out, case, w, &signals)),
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

/// A writer's open buffer per channel: `HDR` bytes for the frame header, then up to
/// `SEGMENT` bytes of `[u32 len][payload]` records (a record may continue in the
/// channel's next buffer). Allocated on the channel's first record.
struct Buffers {
    open: Vec<Vec<u8>>,
    /// Channels written since their last flush (`is_dirty` marks them).
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
}

impl Buffers {
    fn new(channels: u32) -> Self {
        Self {
            open: (0..channels).map(|_| Vec::new()).collect(),
            dirty: Vec::new(),
            is_dirty: vec![false; channels as usize],
        }
    }

    /// Marks channel `c` written, allocating its buffer if it has none.
    #[inline]
    fn touch(&mut self, c: usize) {
        if !self.is_dirty[c] {
            self.is_dirty[c] = true;
            self.dirty.push(c as u32);
            if self.open[c].len() < HDR {
                self.open[c] = empty_buffer();
            }
        }
    }

    fn has_data(&self, c: usize) -> bool {
        self.open[c].len() > HDR
    }
}

/// A buffer with room for a header and a segment's worth of records, holding none.
fn empty_buffer() -> Vec<u8> {
    let mut b = Vec::with_capacity(HDR + SEGMENT);
    b.resize(HDR, 0);
    b
}

/// Writes the frame header into `buf`'s first `HDR` bytes.
fn set_header(buf: &mut [u8], c: usize, backlog: usize) {
    let len = (buf.len() - HDR) as u32;
    buf[..4].copy_from_slice(&(c as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&len.to_le_bytes());
    buf[8..HDR].copy_from_slice(&(backlog as u32).to_le_bytes());
}

/// Where a framed writer's buffers go: a stream with credits, or an in-process channel.
trait FrameSink {
    fn buffers(&mut self) -> &mut Buffers;

    /// Channel `c`'s open buffer is full: pass it on; leaves an empty open buffer.
    fn full(&mut self, c: usize) -> Res<()>;

    /// Sends what channel `c` holds (buffer timeout 0).
    fn flush_channel(&mut self, c: usize) -> Res<()>;

    /// Sends what every channel holds (the flusher's tick).
    fn flush_all(&mut self) -> Res<()>;

    /// Sends everything and ends the stream.
    fn finish(self) -> Res<()>;

    /// Appends `[u32 len][payload]` to channel `c`'s stream.
    #[inline]
    fn put_record(&mut self, c: usize, payload: &[u8]) -> Res<()> {
        let b = self.buffers();
        b.touch(c);
        let buf = &mut b.open[c];
        let prefix = (payload.len() as u32).to_le_bytes();
        if HDR + SEGMENT - buf.len() >= 4 + payload.len() {
            buf.extend_from_slice(&prefix);
            buf.extend_from_slice(payload);
            if buf.len() == HDR + SEGMENT {
                self.full(c)?;
            }
            return Ok(());
        }
        // The record continues in the channel's next buffer(s).
        self.put_spanning(c, &prefix)?;
        self.put_spanning(c, payload)
    }

    fn put_spanning(&mut self, c: usize, mut data: &[u8]) -> Res<()> {
        while !data.is_empty() {
            let buf = &mut self.buffers().open[c];
            let n = (HDR + SEGMENT - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if buf.len() == HDR + SEGMENT {
                self.full(c)?;
            }
        }
        Ok(())
    }
}

/// Channel `c`'s side of the credit protocol at the writer.
#[derive(Default)]
struct SendState {
    /// Frames the consumer has room for.
    credit: u32,
    /// Full buffers waiting for credit, oldest first (at most `MAX_QUEUED`).
    queued: std::collections::VecDeque<Vec<u8>>,
    /// The open buffer is to go out as soon as there is credit (a timeout flush): until
    /// then records still join it.
    flush: bool,
}

/// A writer's stream with Flink's credit protocol (its Netty path: one connection per
/// writer, a frame per buffer; the consumer's AddCredit messages come back on the same
/// socket, or on a second pipe).
///
/// A buffer goes out as one frame `[u32 channel][u32 bytes][u32 backlog][bytes]` only
/// while its channel has credit (one per frame); `backlog` is the number of buffers queued
/// behind it on that channel. Without credit, full buffers queue per channel, at most
/// `MAX_QUEUED`, beyond which the writer blocks until credit comes; a flushed partial
/// buffer waits for credit while records still join it. Credit messages are read without
/// blocking the send path: when the channel at hand has none, every `POLL_EVERY_FRAMES`
/// completed buffers while any wait, and at every timeout flush; blocking only when a
/// channel's queue is full and at the end. Small frames gather in a 64 KiB send buffer;
/// full ones go out with it in one writev, without a copy.
struct CreditedOut {
    bufs: Buffers,
    out: File,
    /// Where credits come from: a second fd of the socket, or the credit pipe.
    credits_in: File,
    socket: bool,
    chans: Vec<SendState>,
    /// Empty buffers to reuse.
    free: Vec<Vec<u8>>,
    gather: Vec<u8>,
    /// Full buffers queued on all channels.
    queued: usize,
    frames_since_poll: u32,
    inbox: Vec<u8>,
    /// A credit message split between reads.
    carry: Vec<u8>,
    /// Channels that got credit in the last read (reused).
    credited: Vec<u32>,
    /// Time spent blocked for credit (a full queue).
    blocked: Duration,
}

impl CreditedOut {
    /// Opens the stream with the writer's number.
    fn new(mut out: File, credits_in: File, socket: bool, w: u32, channels: u32) -> Res<Self> {
        out.write_all(&w.to_le_bytes())?;
        if !socket {
            set_nonblocking(credits_in.as_raw_fd())?;
        }
        Ok(Self {
            bufs: Buffers::new(channels),
            out,
            credits_in,
            socket,
            chans: (0..channels).map(|_| SendState::default()).collect(),
            free: Vec::new(),
            gather: Vec::with_capacity(GATHER),
            queued: 0,
            frames_since_poll: 0,
            inbox: vec![0; 16 * 1024],
            carry: Vec::with_capacity(CREDIT_MSG),
            credited: Vec::new(),
            blocked: Duration::ZERO,
        })
    }

    /// One read of credit messages without blocking: `Ok(None)` when there are none.
    fn read_credits(&mut self) -> Res<Option<usize>> {
        let fd = self.credits_in.as_raw_fd();
        let (ptr, len) = (self.inbox.as_mut_ptr().cast::<libc::c_void>(), self.inbox.len());
        loop {
            let n = if self.socket {
                // SAFETY: `ptr` is valid for `len` writable bytes (our inbox); MSG_DONTWAIT
                // makes this one call non-blocking while the socket stays blocking for
                // the writes.
                unsafe { libc::recv(fd, ptr, len, libc::MSG_DONTWAIT) }
            } else {
                // SAFETY: as above; the credit pipe's read end is non-blocking.
                unsafe { libc::read(fd, ptr, len) }
            };
            if n >= 0 {
                return Ok(Some(n as usize));
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock => return Ok(None),
                std::io::ErrorKind::Interrupted => {}
                _ => return Err(format!("reading credits: {e}").into()),
            }
        }
    }

    /// Reads the credit messages that arrived (without blocking) and sends what they
    /// allow.
    fn poll_credits(&mut self) -> Res<()> {
        self.frames_since_poll = 0;
        // At most 16 reads: what arrives meanwhile waits for the next poll.
        for _ in 0..16 {
            let Some(n) = self.read_credits()? else { break };
            if n == 0 {
                return Err("the consumer closed the credit stream".into());
            }
            let mut data = &self.inbox[..n];
            let mut msg = [0u8; CREDIT_MSG];
            loop {
                if !self.carry.is_empty() || data.len() < CREDIT_MSG {
                    let k = (CREDIT_MSG - self.carry.len()).min(data.len());
                    self.carry.extend_from_slice(&data[..k]);
                    data = &data[k..];
                    if self.carry.len() < CREDIT_MSG {
                        break;
                    }
                    msg.copy_from_slice(&self.carry);
                    self.carry.clear();
                } else {
                    msg.copy_from_slice(&data[..CREDIT_MSG]);
                    data = &data[CREDIT_MSG..];
                }
                let c = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
                let k = u32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
                let st = self.chans.get_mut(c).ok_or_else(|| format!("credit for channel {c}"))?;
                // A channel holds at most its exclusive buffers and all floating ones.
                if k == 0 || st.credit + k > EXCLUSIVE_CREDITS + FLOATING_PER_WRITER {
                    return Err(format!("bad credit: {k} more for channel {c}, which has {}", st.credit).into());
                }
                if st.credit == 0 {
                    self.credited.push(c as u32);
                }
                st.credit += k;
            }
            if n < self.inbox.len() {
                break;
            }
        }
        for k in 0..self.credited.len() {
            self.try_send(self.credited[k] as usize)?;
        }
        self.credited.clear();
        self.send_gathered()
    }

    /// Sends channel `c`'s queued buffers, then its flushed open buffer, while it has
    /// credit.
    fn try_send(&mut self, c: usize) -> Res<()> {
        // Bounded: each turn spends a credit on a buffer, or ends.
        loop {
            let st = &mut self.chans[c];
            if st.credit == 0 {
                return Ok(());
            }
            if let Some(mut buf) = st.queued.pop_front() {
                let behind = st.queued.len() + usize::from(st.flush && self.bufs.has_data(c));
                st.credit -= 1;
                self.queued -= 1;
                set_header(&mut buf, c, behind);
                send_frame(&mut self.out, &mut self.gather, &buf)?;
                buf.truncate(HDR);
                self.free.push(buf);
            } else if st.flush && self.bufs.has_data(c) {
                st.credit -= 1;
                st.flush = false;
                let buf = &mut self.bufs.open[c];
                set_header(buf, c, 0);
                send_frame(&mut self.out, &mut self.gather, buf)?;
                buf.truncate(HDR);
            } else {
                return Ok(());
            }
        }
    }

    fn send_gathered(&mut self) -> Res<()> {
        if !self.gather.is_empty() {
            self.out.write_all(&self.gather)?;
            self.gather.clear();
        }
        Ok(())
    }

    /// Whether channel `c` holds data to send.
    fn pending(&self, c: usize) -> bool {
        !self.chans[c].queued.is_empty() || (self.chans[c].flush && self.bufs.has_data(c))
    }

    /// Blocks until credit messages arrive (bounded by `deadline`), then reads them.
    fn wait_credits(&mut self, deadline: Instant, what: &dyn Fn() -> String) -> Res<()> {
        self.send_gathered()?;
        if Instant::now() > deadline {
            return Err(format!("no credit within {WAIT_TIMEOUT:?} ({})", what()).into());
        }
        wait_readable(self.credits_in.as_raw_fd(), POLL_SLICE)?;
        self.poll_credits()
    }
}

/// Queues `frame` in the send buffer, or, if it is large, writes it with what is queued
/// before it in one writev.
fn send_frame(out: &mut File, gather: &mut Vec<u8>, frame: &[u8]) -> Res<()> {
    if frame.len() >= GATHER / 4 {
        write_all_vectored(out, &mut [IoSlice::new(gather), IoSlice::new(frame)])?;
        gather.clear();
    } else {
        if gather.len() + frame.len() > GATHER {
            out.write_all(gather)?;
            gather.clear();
        }
        gather.extend_from_slice(frame);
    }
    Ok(())
}

impl FrameSink for CreditedOut {
    fn buffers(&mut self) -> &mut Buffers {
        &mut self.bufs
    }

    fn full(&mut self, c: usize) -> Res<()> {
        if self.chans[c].queued.len() >= MAX_QUEUED {
            // Back-pressured: the channel's queue is full.
            let t0 = Instant::now();
            let deadline = t0 + WAIT_TIMEOUT;
            while self.chans[c].queued.len() >= MAX_QUEUED {
                self.wait_credits(deadline, &|| format!("channel {c} has {MAX_QUEUED} buffers queued"))?;
            }
            self.blocked += t0.elapsed();
        }
        let fresh = self.free.pop().unwrap_or_else(empty_buffer);
        let full = std::mem::replace(&mut self.bufs.open[c], fresh);
        let st = &mut self.chans[c];
        st.queued.push_back(full);
        // The flushed data went out with the full buffer.
        st.flush = false;
        self.queued += 1;
        self.try_send(c)?;
        if self.queued > 0 {
            self.frames_since_poll += 1;
            if self.chans[c].credit == 0 || self.frames_since_poll >= POLL_EVERY_FRAMES {
                self.poll_credits()?;
            }
        }
        Ok(())
    }

    fn flush_channel(&mut self, c: usize) -> Res<()> {
        if self.bufs.has_data(c) {
            self.chans[c].flush = true;
            if self.chans[c].credit == 0 {
                self.poll_credits()?;
            }
            self.try_send(c)?;
        }
        self.send_gathered()
    }

    fn flush_all(&mut self) -> Res<()> {
        let mut starved = false;
        for k in 0..self.bufs.dirty.len() {
            let c = self.bufs.dirty[k] as usize;
            self.bufs.is_dirty[c] = false;
            if self.bufs.has_data(c) {
                self.chans[c].flush = true;
                starved |= self.chans[c].credit == 0;
            }
        }
        if starved || self.queued > 0 {
            self.poll_credits()?;
        }
        for k in 0..self.bufs.dirty.len() {
            self.try_send(self.bufs.dirty[k] as usize)?;
        }
        self.bufs.dirty.clear();
        self.send_gathered()
    }

    fn finish(mut self) -> Res<()> {
        self.flush_all()?;
        let deadline = Instant::now() + WAIT_TIMEOUT;
        // Bounded by the deadline: each turn waits at most a poll slice.
        while let Some(c) = (0..self.chans.len()).find(|&c| self.pending(c)) {
            self.wait_credits(deadline, &|| format!("channel {c} still holds data at the end"))?;
        }
        self.send_gathered()?;
        if std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some() {
            eprintln!("    writer blocked for credit {:?}", self.blocked);
        }
        // End the data stream, then read the credit stream to its end (the consumer closes
        // it when it has read everything): closing a TCP socket with unread credits in it
        // would reset the connection under data the consumer has not read yet.
        let Self { out, credits_in, socket, mut inbox, .. } = self;
        if socket {
            // SAFETY: shutdown on a socket fd we own; it takes no pointers.
            if unsafe { libc::shutdown(out.as_raw_fd(), libc::SHUT_WR) } != 0 {
                return Err(format!("shutdown: {}", std::io::Error::last_os_error()).into());
            }
        }
        drop(out);
        let until = Instant::now() + WAIT_TIMEOUT;
        loop {
            if Instant::now() > until {
                return Err("the consumer did not close the credit stream".into());
            }
            if !wait_readable(credits_in.as_raw_fd(), POLL_SLICE)? {
                continue;
            }
            match (&credits_in).read(&mut inbox) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The in-process peer's writer: each buffer, framed as on a stream (backlog 0), goes
/// through a bounded crossbeam channel (2C + 8 buffers in flight, the credit window of
/// the stream peers); empty buffers come back on a second channel for reuse. A full buffer waits
/// for room (blocking send, bounded); a flushed partial one does not: while the channel is
/// full, records still join it and it goes out at the next chance (as a flushed buffer
/// waits for credit on the streams).
struct ChannelOut {
    bufs: Buffers,
    tx: crossbeam_channel::Sender<Vec<u8>>,
    back: crossbeam_channel::Receiver<Vec<u8>>,
    /// Channels whose flushed buffer found the channel full (`is_waiting` marks them).
    waiting: Vec<u32>,
    is_waiting: Vec<bool>,
}

impl ChannelOut {
    fn new(tx: crossbeam_channel::Sender<Vec<u8>>, back: crossbeam_channel::Receiver<Vec<u8>>, channels: u32) -> Self {
        Self { bufs: Buffers::new(channels), tx, back, waiting: Vec::new(), is_waiting: vec![false; channels as usize] }
    }

    /// Sends channel `c`'s open buffer; without `block` only if the channel has room
    /// (false: the buffer stays open).
    fn send_open(&mut self, c: usize, block: bool) -> Res<bool> {
        let mut buf = std::mem::take(&mut self.bufs.open[c]);
        set_header(&mut buf, c, 0);
        if block {
            self.tx.send_timeout(buf, WAIT_TIMEOUT).map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => format!("no room within {WAIT_TIMEOUT:?}"),
                crossbeam_channel::SendTimeoutError::Disconnected(_) => "the consumer is gone".to_string(),
            })?;
        } else {
            match self.tx.try_send(buf) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(buf)) => {
                    self.bufs.open[c] = buf;
                    return Ok(false);
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err("the consumer is gone".into()),
            }
        }
        self.bufs.open[c] = match self.back.try_recv() {
            Ok(mut b) => {
                b.truncate(HDR);
                b
            }
            Err(_) => empty_buffer(),
        };
        Ok(true)
    }

    /// Flushes channel `c` if the channel has room; else `c` waits.
    fn flush_or_wait(&mut self, c: usize) -> Res<()> {
        if self.bufs.has_data(c) && !self.send_open(c, false)? && !self.is_waiting[c] {
            self.is_waiting[c] = true;
            self.waiting.push(c as u32);
        }
        Ok(())
    }

    /// Sends the waiting flushed buffers while the channel has room.
    fn retry_waiting(&mut self) -> Res<()> {
        // Bounded: each turn removes a channel, or ends.
        while let Some(&c) = self.waiting.last() {
            let c = c as usize;
            if self.bufs.has_data(c) && !self.send_open(c, false)? {
                break;
            }
            self.is_waiting[c] = false;
            self.waiting.pop();
        }
        Ok(())
    }
}

impl FrameSink for ChannelOut {
    fn buffers(&mut self) -> &mut Buffers {
        &mut self.bufs
    }

    fn full(&mut self, c: usize) -> Res<()> {
        self.send_open(c, true)?;
        if !self.waiting.is_empty() {
            self.retry_waiting()?;
        }
        Ok(())
    }

    fn flush_channel(&mut self, c: usize) -> Res<()> {
        if !self.waiting.is_empty() {
            self.retry_waiting()?;
        }
        self.flush_or_wait(c)
    }

    fn flush_all(&mut self) -> Res<()> {
        self.retry_waiting()?;
        for k in 0..self.bufs.dirty.len() {
            let c = self.bufs.dirty[k] as usize;
            self.bufs.is_dirty[c] = false;
            self.flush_or_wait(c)?;
        }
        self.bufs.dirty.clear();
        Ok(())
    }

    fn finish(mut self) -> Res<()> {
        for c in 0..self.bufs.open.len() {
            if self.bufs.has_data(c) {
                self.send_open(c, true)?;
            }
        }
        Ok(())
        // Dropping `tx` ends the stream.
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

/// One framed writer (stream peers, in-process channel): the case's records, framed per
/// channel, flushed per the buffer timeout.
fn framed_writer(mut out: impl FrameSink, case: Case, w: u32, signals: &Signals) -> Res<u64> {
    let timeout = BufferTimeout::from_millis(case.timeout_ms)?;
    let flusher = match timeout {
        BufferTimeout::Interval(d) => Some(OutputFlusher::start(d)?),
        _ => None,
    };
    let every_record = timeout == BufferTimeout::EveryRecord;
    let channels = case.shape.channels;
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
    out.finish()?;
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
        "- run {}: {} case(s), {} round(s); per run at least {:?} warm-up (and 2 buffer timeouts), then a window \
         of at least {:?} (and 5 buffer timeouts) measured at the consumer",
        plan.run_kind(),
        plan.cases.len(),
        plan.rounds,
        plan.warm,
        plan.window
    );
    println!(
        "- shmflow: {} KiB segments (one case also {} MiB), Flink's defaults (2 exclusive credits per channel, 8 \
         floating per writer's gate, pool max 2C+8), adaptive waits; tcp, unix, pipe: a {} KiB buffer per channel \
         sent as a frame under the same credits (2 per channel, 8 floating per connection, {} queued per channel \
         at most), {} KiB send buffer, {} KiB reads; in-process: the same buffers through a crossbeam channel of \
         2C+8 per writer\n",
        SEGMENT / 1024,
        LARGE_SEGMENT >> 20,
        SEGMENT / 1024,
        MAX_QUEUED,
        GATHER / 1024,
        READ_BUF / 1024
    );
}

// ---------------------------------------------------------------------------------------
// Report

/// The single-thread limits at one record size.
struct Limit {
    size: usize,
    memcpy: Option<Rate>,
    memread: Option<Rate>,
}

fn limit_of(limits: &[Limit], size: usize, system: System) -> Option<Rate> {
    let l = limits.iter().find(|l| l.size == size)?;
    match system {
        System::Memcpy => l.memcpy,
        System::Memread => l.memread,
        _ => None,
    }
}

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

/// The peers shmflow is compared with, in column order.
const PEERS: [System; 4] = [System::Tcp, System::Unix, System::Pipe, System::InProcess];

fn print_table(plan: &Plan, results: &[CaseResult], limits: &[Limit]) {
    let peers = PEERS.iter().map(|s| s.short()).collect::<Vec<_>>();
    println!(
        "| record | shape | timeout | shmflow rec/s | shmflow GB/s | {} | {} | shmflow/memcpy | shmflow/memread | bare \
         RTT |",
        peers.iter().map(|p| format!("{p} rec/s")).collect::<Vec<_>>().join(" | "),
        peers.iter().map(|p| format!("shmflow/{p}")).collect::<Vec<_>>().join(" | "),
    );
    println!("|---|---|---:|---:|---:|{}---:|---:|---:|", "---:|".repeat(2 * PEERS.len()));
    let rate = |m: Option<Rate>| m.map_or_else(|| "-".into(), |m| fmt_rate(m.records_per_s));
    let ratio_cell = |x: f64| if x.is_finite() { format!("{x:.2}") } else { "-".into() };
    for r in results {
        let c = r.case;
        let shm = r.median(System::Shmflow);
        let mut cells = vec![
            size_name(c.size),
            c.shape_name(),
            format!("{} ms", c.timeout_ms),
            rate(shm),
            shm.map_or_else(|| "-".into(), |m| format!("{:.3}", m.gb_per_s)),
        ];
        cells.extend(PEERS.iter().map(|&p| rate(r.median(p))));
        cells.extend(PEERS.iter().map(|&p| ratio_cell(ratio(shm, r.median(p)))));
        for l in [System::Memcpy, System::Memread] {
            let x = ratio(shm, limit_of(limits, c.size, l));
            cells.push(if x.is_finite() { format!("{x:.3}") } else { "-".into() });
        }
        cells.push(format!("{:.0} ns", median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN)));
        println!("| {} |", cells.join(" | "));
    }
    println!("\nCPU ns per record (producer + consumer process in the window):\n");
    println!("| record | shape | timeout | shmflow | {} |", peers.join(" | "));
    println!("|---|---|---:|---:|{}", "---:|".repeat(PEERS.len()));
    for r in results {
        let c = r.case;
        let mut cells = vec![size_name(c.size), c.shape_name(), format!("{} ms", c.timeout_ms)];
        cells.extend(
            std::iter::once(System::Shmflow)
                .chain(PEERS)
                .map(|s| r.median(s).map_or_else(|| "-".into(), |m| fmt_ns(m.cpu_ns_per_record))),
        );
        println!("| {} |", cells.join(" | "));
    }
    println!();
    println!("| record | memcpy rec/s | memcpy GB/s | memread rec/s | memread GB/s |");
    println!("|---|---:|---:|---:|---:|");
    let gb = |m: Option<Rate>| m.map_or_else(|| "-".into(), |m| format!("{:.2}", m.gb_per_s));
    for l in limits {
        println!(
            "| {} | {} | {} | {} | {} |",
            size_name(l.size),
            rate(l.memcpy),
            gb(l.memcpy),
            rate(l.memread),
            gb(l.memread)
        );
    }
    println!(
        "\n(rec/s: records written per second, a broadcast record once; GB/s = 1e9 payload bytes of those per \
         second; medians over {} round(s); the ratios are of records/s; tcp, unix, pipe: a process per side with \
         the credit protocol; in-process: writer threads and the consumer in one process, crossbeam channels; \
         memcpy: one thread copying the records into a 4 MiB ring; memread: one thread checksumming them in a \
         64 MiB region; bare RTT: one cache line between the two CPUs, ~120 ns near, ~410 ns far on our EPYC)",
        plan.rounds
    );
}

/// Min, median and max of `f` over the cases that `keep` selects.
fn spread(results: &[CaseResult], keep: impl Fn(&Case) -> bool, f: impl Fn(&CaseResult) -> f64) -> Option<[f64; 3]> {
    let mut v: Vec<f64> = results.iter().filter(|r| keep(&r.case)).map(f).filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    Some([*v.first()?, median(v.clone())?, *v.last()?])
}

fn print_summary(results: &[CaseResult], limits: &[Limit]) {
    println!();
    let line = |what: &str, s: Option<[f64; 3]>, goal: &str| match s {
        Some([lo, med, hi]) if lo == hi => println!("- {what}: {med:.2}; goal {goal}"),
        Some([lo, med, hi]) => println!("- {what}: median {med:.2} (min {lo:.2}, max {hi:.2}); goal {goal}"),
        None => println!("- {what}: not measured"),
    };
    let one = |size: usize, shape: Shape, t: i64| {
        move |c: &Case| c.size == size && c.shape == shape && c.timeout_ms == t && c.segment == SEGMENT
    };
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
    for (what, segment) in [("32 KiB segments", SEGMENT), ("4 MiB segments", LARGE_SEGMENT)] {
        let keep = |c: &Case| c.size == MIB && c.segment == segment;
        if !results.iter().any(|r| keep(&r.case)) {
            continue;
        }
        let gb = spread(results, keep, |r| shm(r).map_or(f64::NAN, |m| m.gb_per_s));
        let to = |l: System| {
            spread(results, keep, |r| ratio(shm(r), limit_of(limits, MIB, l)))
                .map_or_else(|| "-".into(), |[_, m, _]| format!("{m:.2}"))
        };
        println!(
            "- 1 MiB records, {what}: shmflow {} GB/s, {} x memcpy, {} x memread; goal >= 0.5 x memcpy{}",
            gb.map_or_else(|| "-".into(), |[_, m, _]| format!("{m:.2}")),
            to(System::Memcpy),
            to(System::Memread),
            if segment == SEGMENT { " (issue 6)" } else { " (the default segments hold it; this is a tuning)" }
        );
    }
    let per_system = |f: &dyn Fn(Rate) -> f64, keep: &dyn Fn(&Case) -> bool, digits: usize| {
        System::STREAMS
            .iter()
            .map(|&s| {
                let v = spread(results, keep, |r| r.median(s).map_or(f64::NAN, f));
                format!("{} {}", s.short(), v.map_or_else(|| "-".into(), |[_, med, _]| format!("{med:.digits$}")))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "- 8 B records, 1x1, 100 ms, million records/s: {}",
        per_system(&|m| m.records_per_s / 1e6, &one(LONG, Shape::new(1, 1), 100), 1)
    );
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
fn json_records(plan: &Plan, results: &[CaseResult], limits: &[Limit]) -> String {
    // `extra`: fields after the configuration (shmflow's segment size).
    let record = |system: &str, case: Option<Case>, size: usize, extra: &str, metric: &str, value: f64| {
        let v = if value.is_finite() { format!("{value:.4}") } else { "null".into() };
        let (shape_fields, timeout) = match case {
            Some(c) => (
                format!(
                    "\"shape\":\"{}\",\"pattern\":\"{}\",\"writers\":{},\"channels\":{}",
                    c.shape_name(),
                    c.shape.pattern.name(),
                    c.shape.writers,
                    c.shape.channels
                ),
                c.timeout_ms.to_string(),
            ),
            None => ("\"shape\":\"single-thread\"".into(), "null".into()),
        };
        format!(
            "  {{\"bench\":\"throughput\",\"run\":\"{}\",\"system\":\"{system}\",{shape_fields},\
             \"timeout_ms\":{timeout},\"record_bytes\":{size}{extra},\"metric\":\"{metric}\",\"value\":{v}}}",
            plan.run_kind()
        )
    };
    let mut out = Vec::new();
    for r in results {
        let (case, size) = (Some(r.case), r.case.size);
        for s in System::STREAMS {
            let extra =
                if s == System::Shmflow { format!(",\"segment_bytes\":{}", r.case.segment) } else { String::new() };
            if let Some(m) = r.median(s) {
                out.push(record(s.name(), case, size, &extra, "records_per_s", m.records_per_s));
                out.push(record(s.name(), case, size, &extra, "gb_per_s", m.gb_per_s));
                out.push(record(s.name(), case, size, &extra, "cpu_ns_per_record", m.cpu_ns_per_record));
                out.push(record(s.name(), case, size, &extra, "cpu_cores", m.cpu_cores));
                if r.case.shape.pattern == Pattern::Broadcast {
                    out.push(record(s.name(), case, size, &extra, "deliveries_per_s", m.deliveries_per_s));
                }
            }
        }
        let shm = r.median(System::Shmflow);
        let others = PEERS
            .iter()
            .map(|&p| (p, r.median(p)))
            .chain([System::Memcpy, System::Memread].map(|l| (l, limit_of(limits, size, l))));
        for (other, rate) in others {
            if rate.is_some() {
                let name = format!("shmflow/{}", other.name());
                out.push(record(&name, case, size, "", "records_per_s_ratio", ratio(shm, rate)));
            }
        }
        let rtt = median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN);
        out.push(record("bare-atomic", case, size, "", "rtt_ns", rtt));
    }
    for l in limits {
        for (system, rate) in [(System::Memcpy, l.memcpy), (System::Memread, l.memread)] {
            if let Some(m) = rate {
                out.push(record(system.name(), None, l.size, "", "records_per_s", m.records_per_s));
                out.push(record(system.name(), None, l.size, "", "gb_per_s", m.gb_per_s));
                out.push(record(system.name(), None, l.size, "", "cpu_ns_per_record", m.cpu_ns_per_record));
            }
        }
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
