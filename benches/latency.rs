//! Latency of one record between two processes, sent and echoed (ping-pong), at payloads of
//! 8 B, 64 B, 1 KiB, 32 KiB and 1 MiB: shmflow (its record stream, and the network stack
//! jobs run on) next to the hardware limit, the parking limit and the kernel's IPC, all
//! measured in the same run. Reported as one-way latency, RTT / 2.
//!
//! ```text
//!  requester (this process, CPU a)                  responder (this binary re-executed with
//!                                                   SHMFLOW_LATENCY_PEER=<peer>, CPU b)
//!  request n: seq n, then a fixed pattern
//!  t0 = now
//!  write N bytes ---- ping: shared page | pipe | ---> wait for request n, read all N bytes
//!                    socket | shmflow channel 0 |     (checksum), answer N bytes: the request
//!                    partition 1 -> gate             with its last 8 bytes replaced by the
//!  read the answer, <--- pong: the same kind of --'   checksum
//!  compare all N bytes   path, shmflow channel 1 | partition 2 -> gate
//!  rtt = now - t0 -> hdrhistogram (after a warm-up); one-way = rtt / 2
//! ```
//!
//! Both receivers touch every byte inside the timed part: the responder checksums each
//! request word by word (xor and sum of 64-bit words) and the requester compares each answer
//! with the one it expects (prepared before `t0`). The kernel peers copy through a buffer of
//! their own; shmflow reads and compares in place in the arena, but its responder copies the
//! request (fused with the checksum) straight into its answer's place with `StreamWriter::write_with`
//! (the network stack: a `Record` whose `serialize_into` does the same, written in place by
//! `ResultPartition::emit`).
//!
//! Peers (system, mode), in table order:
//! - `bare-atomic` (spin): one atomic `u64` per direction on a shared memfd page, spinning
//!   with PAUSE: the hardware limit, one cache line each way. It carries no payload and is
//!   measured once per round, reported as `payload_bytes: 0`;
//! - `futex` (park): the same two words as [`FutexWord`]s; a waiter parks at once and a
//!   sender always calls FUTEX_WAKE: the parking limit (no payload either, `payload_bytes: 0`);
//! - `pipe`, `unix-socket`, `tcp-nodelay` (127.0.0.1, TCP_NODELAY), mode park: blocking reads
//!   and writes (pipes are enlarged to 1 MiB for payloads above 64 KiB, best effort);
//! - `shmflow` in modes `spin`, `adaptive` and `park`: a [`StreamWriter`] on channel 0 and a
//!   [`StreamReader`] on channel 1 of one memfd arena (mirrored in the responder), a flush
//!   after every record, waiting with [`WaitPolicy::spin`], [`WaitPolicy::adaptive`] or
//!   [`WaitPolicy::park`]. Segments are 32 KiB (as the rest of the suite uses) up to 1 KiB
//!   payloads; above, the smallest power of two that holds the framed record (a record never
//!   spans segments in a stream): 64 KiB for 32 KiB, 2 MiB for 1 MiB. Each such segment holds
//!   one record, so every round trip also hands segments over (finish, credit back, next
//!   descriptor) in both directions;
//! - `shmflow-netstack` in modes `spin` and `park`: the job runtime's network stack, set up
//!   through a [`ShuffleEnvironment`] in each process (worker slots 0 and 1 of one memfd
//!   arena): the requester's [`RecordWriter`] (forward partitioner,
//!   `BufferTimeout::EveryRecord`, Flink's buffer timeout 0: every `emit` commits the segment
//!   and notifies the consumer) over a `ResultPartition` of one subpartition, read by the
//!   responder's [`SingleInputGate`] of one channel (`next`, records in place); the answer
//!   goes back through a second partition/gate pair. Both gates wait with
//!   [`WaitPolicy::spin`] or [`WaitPolicy::park`] (`InputGateConfig::wait_policy`; the
//!   partitions' writers use the same policy when they block for credit). Otherwise Flink's
//!   defaults: 2 exclusive + 8 floating credits, pools of 2..10 segments. Same segment sizes
//!   as the stream rows, but here a record that does not fit the rest of a segment spans
//!   into the next (as in Flink) and the gate reassembles it into a buffer of its own: at
//!   32 KiB and 1 MiB most records span two segments.
//!
//! Ratios (per payload size, over all samples and as the median of per-round ratios): shmflow
//! spin / bare-atomic (at 64 B the headline figure), shmflow adaptive / bare-atomic, shmflow
//! park / futex, shmflow-netstack spin / bare-atomic and shmflow-netstack park / futex; the
//! denominators are the payload-less limits.
//!
//! The vCPUs of our machines move between "near" and "far" placement within minutes, which
//! changes every cross-core figure 3-4x (MACHINE.md). So each case's samples are spread over
//! several rounds that interleave all cases, and the ratios are also given round by round.
//! Requester and responder are pinned to two different CPUs when there are two
//! (`--no-pin` turns that off). Kernel and parking peers and large payloads get fewer samples,
//! so that the full run stays within a few minutes.
//!
//! Reading the shmflow rows: the stream is slot-framed, each record `[slot][payload]`, and the
//! writer stores the record's slot word last (Release) while the spinning reader polls that
//! word (Acquire) at its read position. The record's own cache line carries its publication,
//! so a 64 B record (68 bytes framed, always across two lines) costs the bare peer's one
//! line transfer plus the rest of the payload: expect shmflow spin a little above bare at
//! p50. With 32 KiB segments every 482nd round trip of 64 B also hands segments over in
//! both directions: that is what shows at p99.9.
//!
//! The network stack's rows pay for its generality in dependent cache-line transfers: the
//! writer commits by storing the segment's position word (Release), then marks the gate's
//! notify set (a SeqCst fence and a fetch_or) and checks for a parked waiter; the gate
//! spins on the notify set, takes the mark (a swap), and only then reads the position word
//! and the record, with its ready-queue and statistics bookkeeping around them. Expect
//! shmflow-netstack spin at a few times the stream's p50 for small records; in park mode
//! both sit on the futex wake-up, which dominates. Its 482nd record of 64 B spans two
//! segments and is copied into the gate's reassembly buffer.
//!
//! `cargo bench --bench latency [-- --json PATH] [--sizes 64,1024] [--peers NAME,..]
//! [--no-pin]` (argv holds `--bench`) does the full run (`--peers` keeps only the named
//! peers, such as `bare-atomic,futex,shmflow-spin,shmflow-netstack-spin`); without `--bench`
//! (as `cargo test --benches` runs it) a quick smoke exercises every peer at every size and
//! checks every answer, but asserts nothing on time. Every wait is bounded, a watchdog kills
//! a responder that outlives its deadline, a guard kills and reaps responders on every exit
//! path, and nothing goes to /dev/shm (memfds only).

use hdrhistogram::Histogram;
use shmflow::gate::{GateItem, InputGateConfig, InputSpec, SingleInputGate};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, ForwardPartitioner, RecordWriter, RequestBackoff, ResultPartitionConfig, ResultPartitionId,
    ResultPartitionType,
};
use shmflow::record::Record;
use shmflow::ring::stream::LEN_PREFIX;
use shmflow::ring::{StreamReader, StreamWriter};
use shmflow::sync::{FutexWord, Ordering, WaitPolicy};
use shmflow::ShuffleEnvironment;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use clap::Parser;
use common::args::BenchArgs;
use common::{
    accept_within, cpu_model, cpu_pair, die_with_parent, env_var, exit_code, pass_fds, pin_to, spin_until, ChildGuard,
    Res,
};

/// The bare peer's word. It is `shmflow::sync`'s atomic, as clippy.toml asks; the allow is
/// for clippy resolving that re-export to the std type it bans.
#[allow(clippy::disallowed_types)]
type Word = shmflow::sync::AtomicU64;

/// Payload sizes, in bytes: multiples of 8 (the checksum reads 64-bit words), at least 8
/// (the sequence number).
const SIZES: [usize; 5] = [8, 64, 1024, 32 * 1024, 1024 * 1024];
const _: () = {
    let mut i = 0;
    while i < SIZES.len() {
        assert!(SIZES[i] >= 8 && SIZES[i] % 8 == 0);
        i += 1;
    }
};
/// The payload of the headline ratio (shmflow spin / bare-atomic).
const HEADLINE: usize = 64;
/// Names the peer a re-executed child serves; its presence makes the process a responder.
const ENV_PEER: &str = "SHMFLOW_LATENCY_PEER";
/// How many requests the responder answers before it exits.
const ENV_COUNT: &str = "SHMFLOW_LATENCY_COUNT";
/// Bytes per request and per answer.
const ENV_PAYLOAD: &str = "SHMFLOW_LATENCY_PAYLOAD";
/// Inherited fd numbers, comma-separated.
const ENV_FDS: &str = "SHMFLOW_LATENCY_FDS";
/// The TCP port on 127.0.0.1 to connect to.
const ENV_PORT: &str = "SHMFLOW_LATENCY_PORT";
/// The CPU the responder pins itself to.
const ENV_CPU: &str = "SHMFLOW_LATENCY_CPU";
/// The longest one wait for the other side may take before the run fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a futex waiter sleeps before it re-checks its deadline.
const PARK_SLICE: Duration = Duration::from_millis(50);
/// The longest one responder may live; its watchdog kills it after that.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
/// Size of the shared page of the bare and futex peers.
const PAGE: usize = 4096;
/// Offsets of the ping and pong words: 128 bytes apart, so the adjacent-line prefetcher
/// does not pair their cache lines.
const PING: usize = 0;
const PONG: usize = 128;
/// Credit the shmflow reader grants and segments the writer's pool may hold.
const CREDIT: u32 = 4;
/// The shmflow segment size for small payloads (the suite's usual size).
const SMALL_SEGMENT: usize = 32 * 1024;
/// Payloads above this get pipes enlarged to [`BIG_PIPE`].
const PIPE_DEFAULT: usize = 64 * 1024;
/// The pipe size asked for large payloads (the default `/proc/sys/fs/pipe-max-size`).
const BIG_PIPE: usize = 1024 * 1024;
/// Percentiles of the one-way curve points in the JSON output.
const CURVE: [f64; 7] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0];

fn main() -> ExitCode {
    let (who, result) = match std::env::var(ENV_PEER) {
        Ok(peer) => (format!("latency responder ({peer})"), responder_main(&peer)),
        Err(_) => ("latency".to_string(), requester_main()),
    };
    exit_code(&who, result)
}

// ---------------------------------------------------------------------------------------
// Peers, cases, plan and arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Bare,
    Futex,
    Pipe,
    Unix,
    Tcp,
    ShmSpin,
    ShmAdaptive,
    ShmPark,
    NetSpin,
    NetPark,
}

impl Peer {
    const ALL: [Peer; 10] = [
        Peer::Bare,
        Peer::Futex,
        Peer::Pipe,
        Peer::Unix,
        Peer::Tcp,
        Peer::ShmSpin,
        Peer::ShmAdaptive,
        Peer::ShmPark,
        Peer::NetSpin,
        Peer::NetPark,
    ];

    /// A unique name: passed to the responder, and the label of the stdout tables.
    fn name(self) -> &'static str {
        match self {
            Peer::Bare => "bare-atomic",
            Peer::Futex => "futex",
            Peer::Pipe => "pipe",
            Peer::Unix => "unix-socket",
            Peer::Tcp => "tcp-nodelay",
            Peer::ShmSpin => "shmflow-spin",
            Peer::ShmAdaptive => "shmflow-adaptive",
            Peer::ShmPark => "shmflow-park",
            Peer::NetSpin => "shmflow-netstack-spin",
            Peer::NetPark => "shmflow-netstack-park",
        }
    }

    fn from_name(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The `system` of the JSON records.
    fn system(self) -> &'static str {
        match self {
            Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => "shmflow",
            Peer::NetSpin | Peer::NetPark => "shmflow-netstack",
            p => p.name(),
        }
    }

    /// The `mode` of the JSON records: how the peer waits.
    fn mode(self) -> &'static str {
        match self {
            Peer::Bare | Peer::ShmSpin | Peer::NetSpin => "spin",
            Peer::ShmAdaptive => "adaptive",
            Peer::Futex | Peer::Pipe | Peer::Unix | Peer::Tcp | Peer::ShmPark | Peer::NetPark => "park",
        }
    }

    /// Peers that move a payload (the others move one word).
    fn carries_payload(self) -> bool {
        !matches!(self, Peer::Bare | Peer::Futex)
    }

    /// Peers whose round trip sleeps (tens of microseconds here): they get fewer samples.
    fn sleeps(self) -> bool {
        matches!(self, Peer::Futex | Peer::Pipe | Peer::Unix | Peer::Tcp | Peer::ShmPark | Peer::NetPark)
    }

    /// The wait policy of a shmflow peer (stream or network stack).
    fn policy(self) -> Option<WaitPolicy> {
        match self {
            Peer::ShmSpin | Peer::NetSpin => Some(WaitPolicy::spin()),
            Peer::ShmAdaptive => Some(WaitPolicy::adaptive()),
            Peer::ShmPark | Peer::NetPark => Some(WaitPolicy::park()),
            _ => None,
        }
    }
}

/// One measured case: a peer and its payload size (0 for the payload-less peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Case {
    peer: Peer,
    payload: usize,
}

impl Case {
    /// The shmflow segment size of this case, if it is a shmflow case.
    fn segment_bytes(self) -> Option<usize> {
        self.peer.policy().map(|_| segment_size_for(self.payload))
    }
}

/// The cases of a run, in the order each round runs them: the two limits, then every
/// payload peer at each size, smallest size first (only the peers in `peers`).
fn cases(sizes: &[usize], peers: &[Peer]) -> Vec<Case> {
    let chosen = || Peer::ALL.into_iter().filter(|p| peers.contains(p));
    let mut v: Vec<Case> = chosen().filter(|p| !p.carries_payload()).map(|peer| Case { peer, payload: 0 }).collect();
    for &payload in sizes {
        v.extend(chosen().filter(|p| p.carries_payload()).map(|peer| Case { peer, payload }));
    }
    v
}

/// Round trips of one case in one round.
#[derive(Debug, Clone, Copy)]
struct Counts {
    warmup: u64,
    measured: u64,
}

/// How much to measure.
#[derive(Debug, Clone)]
struct Plan {
    full: bool,
    rounds: u32,
    sizes: Vec<usize>,
}

impl Plan {
    /// Measured samples per round, spinning / parking peers: up to 1 KiB 50k / 10k; 32 KiB
    /// 10k / 2k; 1 MiB 2k / 500, each after a tenth as many warm-up round trips (at least
    /// enough to fault in every segment of the pools). Full runs have 4 rounds (about a
    /// minute on a quiet machine); quick ones 1 round of 1k samples (20 at 1 MiB): a few
    /// seconds, even unoptimized.
    fn counts(&self, case: Case) -> Counts {
        let sleeps = case.peer.sleeps();
        let measured = match (self.full, case.payload) {
            (true, 0..=1024) if sleeps => 10_000,
            (true, 0..=1024) => 50_000,
            (true, 1025..=65536) if sleeps => 2_000,
            (true, 1025..=65536) => 10_000,
            (true, _) if sleeps => 500,
            (true, _) => 2_000,
            (false, 0..=1024) => 1_000,
            (false, 1025..=65536) => 200,
            (false, _) => 20,
        };
        let warmup = (measured / 10).max(4 * u64::from(CREDIT));
        Counts { warmup, measured }
    }

    fn run(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
        }
    }
}

struct Args {
    full: bool,
    pin: bool,
    json: Option<std::path::PathBuf>,
    sizes: Vec<usize>,
    peers: Vec<Peer>,
}

/// The latency bench's flags.
#[derive(Parser)]
#[command(name = "latency", about = "Cross-process ping-pong latency of shmflow and its peers")]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
    /// Do not pin the two processes to CPUs.
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pin: bool,
    /// Payload sizes, a subset of SIZES (such as 64,1024).
    #[arg(long, value_name = "A,B,..")]
    sizes: Option<String>,
    /// Peers by name as in the tables' first column plus mode (such as
    /// bare-atomic,shmflow-spin,shmflow-netstack-park); a ratio whose peers were left out is
    /// not printed.
    #[arg(long, value_name = "NAME,..")]
    peers: Option<String>,
}

fn parse_args() -> Res<Args> {
    let c = Cli::parse();
    let mut args =
        Args { full: c.bench.full, pin: c.pin, json: c.bench.json, sizes: SIZES.to_vec(), peers: Peer::ALL.to_vec() };
    if let Some(list) = c.sizes {
        args.sizes = common::args::list(&list).map_err(|e| format!("--sizes: {e}"))?;
        if let Some(s) = args.sizes.iter().find(|s| !SIZES.contains(s)) {
            return Err(format!("--sizes: {s} is not one of {SIZES:?}").into());
        }
    }
    if let Some(list) = c.peers {
        args.peers = list
            .split(',')
            .map(|n| {
                Peer::from_name(n).ok_or_else(|| {
                    let names: Vec<&str> = Peer::ALL.iter().map(|p| p.name()).collect();
                    format!("--peers: {n:?} is not one of {}", names.join(", "))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(args)
}

/// "8 B", "1 KiB", "1 MiB"; "-" for no payload.
fn size_label(bytes: usize) -> String {
    match bytes {
        0 => "-".into(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

// ---------------------------------------------------------------------------------------
// The requester: runs every case, prints the tables

/// One case's samples: merged over rounds, and the p50 of each round.
struct CaseResult {
    case: Case,
    merged: Histogram<u64>,
    round_p50: Vec<u64>,
}

fn requester_main() -> Res<()> {
    let args = parse_args()?;
    let plan = Plan { full: args.full, rounds: if args.full { 4 } else { 1 }, sizes: args.sizes.clone() };
    let cpus = if args.pin { cpu_pair() } else { None };
    if let Some((mine, _)) = cpus {
        pin_to(mine)?;
    }
    print_machine(&plan, cpus);
    let mut results = Vec::new();
    for case in cases(&plan.sizes, &args.peers) {
        results.push(CaseResult { case, merged: new_histogram()?, round_p50: Vec::new() });
    }
    let start = Instant::now();
    for round in 0..plan.rounds {
        for r in results.iter_mut() {
            let h = run_case(r.case, plan.counts(r.case), cpus.map(|c| c.1)).map_err(|e| {
                format!("{} at {} (round {}): {e}", r.case.peer.name(), size_label(r.case.payload), round + 1)
            })?;
            r.round_p50.push(h.value_at_quantile(0.5));
            r.merged.add(&h).map_err(|e| format!("merging histograms: {e:?}"))?;
        }
        println!("- round {}/{} done, {:.1} s in all", round + 1, plan.rounds, start.elapsed().as_secs_f64());
    }
    println!();
    print_table(&results);
    let ratios = ratios(&results, &plan.sizes);
    print_ratios(&results, &ratios);
    if let Some(path) = &args.json {
        std::fs::write(path, json_records(&plan, &results, &ratios))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn new_histogram() -> Res<Histogram<u64>> {
    // 1 ns .. 60 s at 3 significant digits; larger values saturate.
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

/// Starts a responder for `case`, measures, and checks that the responder exits cleanly.
fn run_case(case: Case, counts: Counts, responder_cpu: Option<usize>) -> Res<Histogram<u64>> {
    let mut session = start(case, counts.warmup + counts.measured, responder_cpu)?;
    // On an error the session drops: the requester's ends close, then the guard kills the
    // responder.
    let hist = measure(session.requester.as_mut(), case.payload, counts)?;
    let Session { requester, mut child } = session;
    drop(requester);
    child.finish(WAIT_TIMEOUT)?;
    Ok(hist)
}

/// Runs `warmup + measured` round trips with sequence numbers from 1 and records the
/// measured ones. Each request and the answer it must get are prepared before the clock
/// starts; reading and checking the answer is part of the round trip.
fn measure(req: &mut dyn Requester, payload: usize, counts: Counts) -> Res<Histogram<u64>> {
    let mut hist = new_histogram()?;
    let mut msg: Vec<u8> = (0..payload).map(|i| (i as u8) ^ 0x5a).collect();
    let mut want = msg.clone();
    for seq in 1..=counts.warmup + counts.measured {
        if payload > 0 {
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            want[..8].copy_from_slice(&seq.to_le_bytes());
            want[payload - 8..].copy_from_slice(&checksum(&msg).to_le_bytes());
        }
        let t0 = Instant::now();
        req.round_trip(seq, &msg, &want)?;
        let rtt = t0.elapsed();
        if seq > counts.warmup {
            hist.saturating_record(rtt.as_nanos().min(u128::from(u64::MAX)) as u64);
        }
    }
    Ok(hist)
}

// ---------------------------------------------------------------------------------------
// Payload: sequence number, checksum, answer

fn seq_of(msg: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&msg[..8]);
    u64::from_le_bytes(b)
}

/// Folds the xor and the wrapping sum of 64-bit words into one checksum.
fn fold(xor: u64, sum: u64) -> u64 {
    xor ^ sum.rotate_left(32)
}

/// A cheap checksum that reads every byte, word by word: the xor and the sum of the
/// 64-bit words (independent per word, so the compiler vectorizes it). `bytes.len()` is a
/// multiple of 8.
fn checksum(bytes: &[u8]) -> u64 {
    debug_assert!(bytes.len() % 8 == 0);
    let (mut xor, mut sum) = (0u64, 0u64);
    for w in bytes.chunks_exact(8) {
        let v = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        xor ^= v;
        sum = sum.wrapping_add(v);
    }
    fold(xor, sum)
}

/// Copies `src` into `dst` (same length) and returns [`checksum`]`(src)`, in one pass.
fn copy_checksum(src: &[u8], dst: &mut [u8]) -> u64 {
    debug_assert!(src.len() == dst.len() && src.len() % 8 == 0);
    let (mut xor, mut sum) = (0u64, 0u64);
    for (w, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        let v = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        xor ^= v;
        sum = sum.wrapping_add(v);
        d.copy_from_slice(w);
    }
    fold(xor, sum)
}

/// Checks that request `msg` is request `seq` of `payload` bytes.
fn check_request(msg: &[u8], seq: u64, payload: usize) -> Res<()> {
    if msg.len() != payload {
        return Err(format!("request of {} bytes, expected {payload}", msg.len()).into());
    }
    if seq_of(msg) != seq {
        return Err(format!("request {} arrived where {seq} was expected", seq_of(msg)).into());
    }
    Ok(())
}

/// Turns the request in `buf` into its answer: the last 8 bytes become `sum`.
fn seal_answer(buf: &mut [u8], sum: u64) {
    let n = buf.len();
    buf[n - 8..].copy_from_slice(&sum.to_le_bytes());
}

fn wrong_answer(seq: u64) -> Box<dyn std::error::Error + Send + Sync> {
    format!("wrong answer to request {seq}").into()
}

// ---------------------------------------------------------------------------------------
// The two ends of a peer

/// The requester's end of one peer.
trait Requester {
    /// Sends request `seq` (`msg`, empty for the peers that carry no payload) and waits for
    /// the answer, which must equal `want` byte for byte.
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()>;
}

/// The responder's end of one peer.
trait Responder {
    /// Waits for request `seq` (1, 2, ...) and answers it.
    fn serve(&mut self, seq: u64) -> Res<()>;
}

/// One page of a memfd, mapped shared in both processes.
struct SharedPage {
    map: memmap2::MmapRaw,
    fd: OwnedFd,
}

impl SharedPage {
    fn create() -> Res<Self> {
        // SAFETY: the name is a NUL-terminated literal and the flags are valid.
        let raw = unsafe { libc::memfd_create(c"shmflow-latency".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()).into());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        file.set_len(PAGE as u64)?;
        Self::map(file.into())
    }

    /// Maps the page the requester passed down.
    fn inherited() -> Res<Self> {
        let [fd] = inherited_fds::<1>()?;
        let len = File::from(fd.try_clone()?).metadata()?.len();
        if len < PAGE as u64 {
            return Err(format!("the shared page has {len} bytes, expected {PAGE}").into());
        }
        Self::map(fd)
    }

    fn map(fd: OwnedFd) -> Res<Self> {
        let map = memmap2::MmapOptions::new().len(PAGE).map_raw(&fd)?;
        Ok(Self { map, fd })
    }

    fn atomic(&self, offset: usize) -> &Word {
        assert!(offset % 8 == 0 && offset + 8 <= PAGE, "word offset {offset} is a constant inside the page");
        // SAFETY: the word lies inside the mapping, which lives as long as `self`, and is
        // 8-aligned (the mapping is page-aligned). The memfd starts zero-filled and both
        // processes access this word only through this atomic type, so every value is valid.
        unsafe { &*self.map.as_ptr().add(offset).cast::<Word>() }
    }

    fn futex(&self, offset: usize) -> &FutexWord {
        assert!(offset % 4 == 0 && offset + 4 <= PAGE, "word offset {offset} is a constant inside the page");
        const _: () = assert!(std::mem::size_of::<FutexWord>() == 4);
        // SAFETY: as in `atomic`: inside the mapping, 4-aligned, zero-filled at first and
        // only accessed as a FutexWord, a repr(C) wrapper of one AtomicU32.
        unsafe { &*self.map.as_ptr().add(offset).cast::<FutexWord>() }
    }
}

/// The hardware limit: one atomic word per direction, spinning. Carries only `seq`.
struct BarePeer {
    page: SharedPage,
}

impl Requester for BarePeer {
    fn round_trip(&mut self, seq: u64, _msg: &[u8], _want: &[u8]) -> Res<()> {
        // Release: pairs with the responder's Acquire load of PING; the value itself is
        // all that travels.
        self.page.atomic(PING).store(seq, Ordering::Release);
        let pong = self.page.atomic(PONG);
        // Acquire: pairs with the responder's Release store of PONG.
        spin_until(|| pong.load(Ordering::Acquire) == seq, "bare pong", WAIT_TIMEOUT)
    }
}

impl Responder for BarePeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        let ping = self.page.atomic(PING);
        // Acquire: pairs with the requester's Release store of PING.
        spin_until(|| ping.load(Ordering::Acquire) == seq, "bare ping", WAIT_TIMEOUT)?;
        // Release: pairs with the requester's Acquire load of PONG.
        self.page.atomic(PONG).store(seq, Ordering::Release);
        Ok(())
    }
}

/// The parking limit: the same words as futexes; a waiter never spins. Carries only `seq`.
struct FutexPeer {
    page: SharedPage,
}

impl FutexPeer {
    fn signal(&self, offset: usize, seq: u64) {
        let w = self.page.futex(offset);
        // Release: pairs with the Acquire load in `await_value` on the other side.
        w.atomic().store(seq as u32, Ordering::Release);
        w.wake(1);
    }

    fn await_value(&self, offset: usize, seq: u64) -> Res<()> {
        let w = self.page.futex(offset);
        let want = seq as u32;
        let mut since: Option<Instant> = None;
        loop {
            // Acquire: pairs with the Release store in `signal`.
            let v = w.atomic().load(Ordering::Acquire);
            if v == want {
                return Ok(());
            }
            if since.get_or_insert_with(Instant::now).elapsed() > WAIT_TIMEOUT {
                return Err(format!("no futex signal {want} within {WAIT_TIMEOUT:?}").into());
            }
            w.wait(v, Some(PARK_SLICE));
        }
    }
}

impl Requester for FutexPeer {
    fn round_trip(&mut self, seq: u64, _msg: &[u8], _want: &[u8]) -> Res<()> {
        self.signal(PING, seq);
        self.await_value(PONG, seq)
    }
}

impl Responder for FutexPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        self.await_value(PING, seq)?;
        self.signal(PONG, seq);
        Ok(())
    }
}

/// A blocking byte stream each way (two pipes, a Unix socket or a TCP connection) and a
/// buffer of one payload.
struct IoPeer<R, W> {
    rx: R,
    tx: W,
    buf: Vec<u8>,
}

impl<R: Read, W: Write> IoPeer<R, W> {
    fn new(rx: R, tx: W, payload: usize) -> Self {
        Self { rx, tx, buf: vec![0; payload] }
    }
}

impl<R: Read, W: Write> Requester for IoPeer<R, W> {
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()> {
        self.tx.write_all(msg)?;
        self.rx.read_exact(&mut self.buf)?;
        if self.buf != want {
            return Err(wrong_answer(seq));
        }
        Ok(())
    }
}

impl<R: Read, W: Write> Responder for IoPeer<R, W> {
    fn serve(&mut self, seq: u64) -> Res<()> {
        self.rx.read_exact(&mut self.buf)?;
        check_request(&self.buf, seq, self.buf.len())?;
        let sum = checksum(&self.buf);
        seal_answer(&mut self.buf, sum);
        self.tx.write_all(&self.buf)?;
        Ok(())
    }
}

/// A shmflow record stream each way over one arena, and (in the responder) a buffer the
/// answer is built in.
struct ShmPeer {
    writer: StreamWriter,
    reader: StreamReader,
    buf: Vec<u8>,
}

impl ShmPeer {
    fn open(arena: Arc<Arena>, out_channel: u32, in_channel: u32, policy: WaitPolicy, buf: usize) -> Res<Self> {
        let reader = StreamReader::new(arena.clone(), in_channel, CREDIT, policy)?;
        let writer = StreamWriter::new(arena, out_channel, CREDIT, policy, Some(WAIT_TIMEOUT))?;
        Ok(Self { writer, reader, buf: vec![0; buf] })
    }

    fn send(writer: &mut StreamWriter, record: &[u8]) -> Res<()> {
        writer.write(record)?;
        writer.flush()?;
        Ok(())
    }
}

impl Requester for ShmPeer {
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()> {
        Self::send(&mut self.writer, msg)?;
        // The answer is compared in place, in the arena.
        match self.reader.next(Some(WAIT_TIMEOUT), |p| p == want)? {
            Some(true) => Ok(()),
            Some(false) => Err(wrong_answer(seq)),
            None => Err("the responder ended its stream".into()),
        }
    }
}

impl Responder for ShmPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        let (writer, len) = (&mut self.writer, self.buf.len());
        // The request is read in place, in the arena, and copied with its checksum in one
        // pass straight into the answer's place in the outgoing segment.
        self.reader
            .next(Some(WAIT_TIMEOUT), |p| -> Res<()> {
                check_request(p, seq, len)?;
                writer.write_with(len, |dst| {
                    let sum = copy_checksum(p, dst);
                    seal_answer(dst, sum);
                })?;
                Ok(())
            })?
            .ok_or("the requester ended its stream")??;
        self.writer.flush()?;
        Ok(())
    }
}

/// The shmflow segment size for `payload`: [`SMALL_SEGMENT`], or the smallest power of
/// two that holds the framed record (a stream's records never span segments).
fn segment_size_for(payload: usize) -> usize {
    (payload + LEN_PREFIX).next_power_of_two().max(SMALL_SEGMENT)
}

fn arena_config(payload: usize) -> Res<ArenaConfig> {
    Ok(ArenaConfig {
        segment_size: u32::try_from(segment_size_for(payload))?,
        // Two pools of CREDIT segments, with room to spare.
        segment_count: 16,
        ring_capacity: 16,
        max_channels: 2,
        max_partitions: 1,
        max_gates: 1,
        max_channels_per_gate: 64,
        max_workers: 2,
        max_tasks: 2,
    })
}

// ---------------------------------------------------------------------------------------
// The network-stack peer: ResultPartition / RecordWriter -> SingleInputGate each way

/// The partition the requester writes its requests to (read by the responder's gate).
const NET_REQUESTS: ResultPartitionId = ResultPartitionId::new(1, 0);
/// The partition the responder writes its answers to (read by the requester's gate).
const NET_ANSWERS: ResultPartitionId = ResultPartitionId::new(2, 0);
/// Worker slots of the two processes in the arena's liveness table.
const REQUESTER_WORKER: u32 = 0;
const RESPONDER_WORKER: u32 = 1;

/// The partition config of either direction: Flink's defaults for one subpartition
/// (pool 2..10 segments, gate credits 2 exclusive + 8 floating), the peer's wait policy for
/// a writer blocked on credit, and bounded waits.
fn net_partition_config(id: ResultPartitionId, policy: WaitPolicy) -> ResultPartitionConfig {
    let mut cfg = ResultPartitionConfig::new(id, ResultPartitionType::PipelinedBounded, 1);
    cfg.wait_policy = policy;
    cfg.timeout = Some(WAIT_TIMEOUT);
    cfg
}

/// The stream peers' arena (same segment sizes, so the rows compare like for like) with
/// room for two partitions, each with its notify set, and two gates.
fn net_arena_config(payload: usize) -> Res<ArenaConfig> {
    let pool_max = net_partition_config(NET_REQUESTS, WaitPolicy::spin()).pool_max;
    Ok(ArenaConfig {
        // Both pools at their quota, with room to spare (a round trip uses a few).
        segment_count: 2 * pool_max + 4,
        max_partitions: 2,
        max_gates: 4,
        ..arena_config(payload)?
    })
}

/// Creates and registers this side's partition `id` of one subpartition, written through a
/// record writer with Flink's buffer timeout 0: every `emit` commits the record and
/// notifies the consumer's gate (the job runtime's write path at that setting).
fn net_writer(env: &ShuffleEnvironment, id: ResultPartitionId, policy: WaitPolicy) -> Res<NetWriter> {
    let cfg = net_partition_config(id, policy);
    Ok(env.create_record_writer::<[u8], _>(&cfg, ForwardPartitioner, BufferTimeout::EveryRecord)?)
}

/// Creates a gate of one channel over subpartition 0 of `id`, waiting with `policy`. It
/// looks the partition up with a short request backoff, so it waits (bounded) while the
/// other process has not registered it yet.
fn net_gate(env: &ShuffleEnvironment, id: ResultPartitionId, policy: WaitPolicy) -> Res<SingleInputGate> {
    let mut cfg = InputGateConfig::new(vec![InputSpec { partition: id, subpartition: 0 }]);
    cfg.wait_policy = policy;
    cfg.backoff = RequestBackoff { initial: Duration::from_millis(1), max: WAIT_TIMEOUT };
    Ok(env.create_input_gate(&cfg)?)
}

type NetWriter = RecordWriter<ForwardPartitioner>;

/// The network stack each way over one arena: a [`RecordWriter`] (forward partitioner,
/// buffer timeout 0) over a `ResultPartition` of one subpartition, read by a
/// [`SingleInputGate`] of one channel in the other process.
struct NetPeer {
    writer: NetWriter,
    gate: SingleInputGate,
    /// Bytes per request (checked by the responder).
    payload: usize,
    /// Dropped last: marks this worker as having left cleanly.
    _env: ShuffleEnvironment,
}

/// The answer to the request it holds, as a record: serializing it copies the request (read in
/// place in the arena) straight into the answer's place in the outgoing segment, fused
/// with the checksum, then seals it ([`ShmPeer`]'s `write_with`, through the [`Record`]
/// trait). Were it to span segments, the partition serializes it into a scratch buffer
/// first.
struct Answer<'a>(&'a [u8]);

impl Record for Answer<'_> {
    fn serialized_len(&self) -> usize {
        self.0.len()
    }

    fn serialize_into(&self, out: &mut [u8]) {
        let sum = copy_checksum(self.0, out);
        seal_answer(out, sum);
    }
}

/// An item other than a record where the record of request `seq` was expected.
fn not_a_record(item: &GateItem<'_>, seq: u64) -> Box<dyn std::error::Error + Send + Sync> {
    format!("{item:?} on the gate where a record of round trip {seq} was expected").into()
}

impl Requester for NetPeer {
    fn round_trip(&mut self, seq: u64, msg: &[u8], want: &[u8]) -> Res<()> {
        // Buffer timeout 0: the emit commits the record and notifies the responder's gate.
        self.writer.emit(msg)?;
        // The answer is compared in place, in the arena (or in the gate's reassembly
        // buffer, when it spanned segments).
        match self.gate.next(Some(WAIT_TIMEOUT))? {
            GateItem::Record { data, .. } if data == want => Ok(()),
            GateItem::Record { .. } => Err(wrong_answer(seq)),
            other => Err(not_a_record(&other, seq)),
        }
    }
}

impl Responder for NetPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        match self.gate.next(Some(WAIT_TIMEOUT))? {
            GateItem::Record { data, .. } => {
                check_request(data, seq, self.payload)?;
                self.writer.emit(&Answer(data))?;
                Ok(())
            }
            other => Err(not_a_record(&other, seq)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Setting a peer up: the requester's side

/// A running responder and the requester's end of its peer. Fields drop in order: the
/// requester's ends close first, then the guard kills and reaps the responder.
struct Session {
    requester: Box<dyn Requester>,
    child: ChildGuard,
}

/// Asks for a pipe of [`BIG_PIPE`] bytes; a refusal (a lower pipe-max-size) is not an error,
/// the pipe keeps its size.
fn enlarge_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl on an open fd we own, with a valid command and size.
    let _ = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, BIG_PIPE as libc::c_int) };
}

/// Creates the shared resources of `case`, spawns its responder (to answer `count`
/// requests) and returns the requester's end.
fn start(case: Case, count: u64, responder_cpu: Option<usize>) -> Res<Session> {
    let Case { peer, payload } = case;
    let mut cmd = responder_command(case, count, responder_cpu)?;
    let spawn = |cmd: &mut Command| ChildGuard::spawn(cmd, "latency", "responder", CHILD_DEADLINE);
    match peer {
        Peer::Bare | Peer::Futex => {
            let page = SharedPage::create()?;
            pass_fds(&mut cmd, ENV_FDS, &[page.fd.as_raw_fd()]);
            let child = spawn(&mut cmd)?;
            let requester: Box<dyn Requester> =
                if peer == Peer::Bare { Box::new(BarePeer { page }) } else { Box::new(FutexPeer { page }) };
            Ok(Session { requester, child })
        }
        Peer::Pipe => {
            let (ping_rx, ping_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let (pong_rx, pong_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            if payload > PIPE_DEFAULT {
                enlarge_pipe(&ping_tx);
                enlarge_pipe(&pong_tx);
            }
            pass_fds(&mut cmd, ENV_FDS, &[ping_rx.as_raw_fd(), pong_tx.as_raw_fd()]);
            let child = spawn(&mut cmd)?;
            // Close our copies of the responder's ends, so its death reads as end of file.
            drop((ping_rx, pong_tx));
            let io = IoPeer::new(File::from(pong_rx), File::from(ping_tx), payload);
            Ok(Session { requester: Box::new(io), child })
        }
        Peer::Unix => {
            let (mine, theirs) = UnixStream::pair()?;
            pass_fds(&mut cmd, ENV_FDS, &[theirs.as_raw_fd()]);
            let child = spawn(&mut cmd)?;
            drop(theirs);
            Ok(Session { requester: Box::new(IoPeer::new(mine.try_clone()?, mine, payload)), child })
        }
        Peer::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            cmd.env(ENV_PORT, listener.local_addr()?.port().to_string());
            let child = spawn(&mut cmd)?;
            let stream = accept_within(&listener, WAIT_TIMEOUT, "responder")?;
            stream.set_nodelay(true)?;
            Ok(Session { requester: Box::new(IoPeer::new(stream.try_clone()?, stream, payload)), child })
        }
        Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::create_memfd(&arena_config(payload)?, "latency")?);
            // The requester compares answers in place: it needs no buffer.
            let requester = ShmPeer::open(arena.clone(), 0, 1, policy, 0)?;
            arena.inherit_fd_into(&mut cmd)?;
            let child = spawn(&mut cmd)?;
            Ok(Session { requester: Box::new(requester), child })
        }
        Peer::NetSpin | Peer::NetPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::create_memfd(&net_arena_config(payload)?, "latency-netstack")?);
            let env = ShuffleEnvironment::new(arena.clone(), REQUESTER_WORKER);
            // Registered before the responder starts, so its gate finds it at once.
            let writer = net_writer(&env, NET_REQUESTS, policy)?;
            arena.inherit_fd_into(&mut cmd)?;
            let child = spawn(&mut cmd)?;
            // Waits (request backoff) until the responder has registered its partition; on
            // an error the guard kills the responder.
            let gate = net_gate(&env, NET_ANSWERS, policy)?;
            Ok(Session { requester: Box::new(NetPeer { writer, gate, payload, _env: env }), child })
        }
    }
}

/// The command that re-executes this binary as the responder of `case`. The responder
/// dies with the requester (PR_SET_PDEATHSIG).
fn responder_command(case: Case, count: u64, cpu: Option<usize>) -> Res<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ENV_PEER, case.peer.name())
        .env(ENV_COUNT, count.to_string())
        .env(ENV_PAYLOAD, case.payload.to_string())
        .stdin(Stdio::null());
    if let Some(cpu) = cpu {
        cmd.env(ENV_CPU, cpu.to_string());
    }
    die_with_parent(&mut cmd);
    Ok(cmd)
}

// ---------------------------------------------------------------------------------------
// The responder process

fn responder_main(peer: &str) -> Res<()> {
    let peer = Peer::from_name(peer).ok_or_else(|| format!("unknown peer {peer:?}"))?;
    let count: u64 = env_var(ENV_COUNT)?.parse()?;
    let payload: usize = env_var(ENV_PAYLOAD)?.parse()?;
    if peer.carries_payload() != (payload >= 8 && payload % 8 == 0) {
        return Err(format!("{} with a payload of {payload} bytes", peer.name()).into());
    }
    if let Ok(cpu) = std::env::var(ENV_CPU) {
        pin_to(cpu.parse()?)?;
    }
    let mut responder = open_responder(peer, payload)?;
    for seq in 1..=count {
        responder.serve(seq)?;
    }
    Ok(())
}

fn open_responder(peer: Peer, payload: usize) -> Res<Box<dyn Responder>> {
    Ok(match peer {
        Peer::Bare => Box::new(BarePeer { page: SharedPage::inherited()? }),
        Peer::Futex => Box::new(FutexPeer { page: SharedPage::inherited()? }),
        Peer::Pipe => {
            let [rx, tx] = inherited_fds::<2>()?;
            Box::new(IoPeer::new(File::from(rx), File::from(tx), payload))
        }
        Peer::Unix => {
            let [fd] = inherited_fds::<1>()?;
            let stream = UnixStream::from(fd);
            Box::new(IoPeer::new(stream.try_clone()?, stream, payload))
        }
        Peer::Tcp => {
            let port: u16 = env_var(ENV_PORT)?.parse()?;
            let stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_nodelay(true)?;
            Box::new(IoPeer::new(stream.try_clone()?, stream, payload))
        }
        Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::attach_inherited()?);
            let want = segment_size_for(payload);
            if arena.segment_size() as usize != want {
                return Err(format!("arena segments of {} bytes, expected {want}", arena.segment_size()).into());
            }
            Box::new(ShmPeer::open(arena, 1, 0, policy, payload)?)
        }
        Peer::NetSpin | Peer::NetPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let env = ShuffleEnvironment::attach_inherited(RESPONDER_WORKER)?;
            let want = segment_size_for(payload);
            if env.arena().segment_size() as usize != want {
                return Err(format!("arena segments of {} bytes, expected {want}", env.arena().segment_size()).into());
            }
            // The requester registered its partition before it started us: the gate finds
            // it at once, while the requester's gate waits for ours.
            let writer = net_writer(&env, NET_ANSWERS, policy)?;
            let gate = net_gate(&env, NET_REQUESTS, policy)?;
            Box::new(NetPeer { writer, gate, payload, _env: env })
        }
    })
}

/// Takes ownership of the `N` fds the requester passed down in [`ENV_FDS`].
fn inherited_fds<const N: usize>() -> Res<[OwnedFd; N]> {
    common::inherited_fds(ENV_FDS, N)?.try_into().map_err(|_| "fd count checked above".into())
}

// ---------------------------------------------------------------------------------------
// CPUs and the machine

/// Online CPUs of the machine (not of this process's affinity mask, which pinning narrows).
fn nproc() -> i64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// The cost of the two clock reads around each round trip (included in every figure).
fn timer_overhead_ns() -> u64 {
    let mut best = u64::MAX;
    for _ in 0..10_000 {
        let t0 = Instant::now();
        let d = t0.elapsed().as_nanos() as u64;
        best = best.min(d);
    }
    best
}

fn print_machine(plan: &Plan, cpus: Option<(usize, usize)>) {
    let sizes: Vec<String> = plan.sizes.iter().map(|&s| size_label(s)).collect();
    println!("# latency: one record ({}), sent and echoed between two processes\n", sizes.join(", "));
    println!("- machine: {}, nproc {}", cpu_model(), nproc());
    match cpus {
        Some((a, b)) => println!("- requester pinned to CPU {a}, responders to CPU {b}"),
        None => println!("- not pinned"),
    }
    println!("- run {}: {} round(s); measured samples per case and round:", plan.run(), plan.rounds);
    let describe = |peer: Peer, payload: usize| {
        let c = plan.counts(Case { peer, payload });
        format!("{} + {} warm-up", c.measured, c.warmup)
    };
    println!("  - no payload (bare-atomic, futex): {}", describe(Peer::Bare, 0));
    for &payload in &plan.sizes {
        println!(
            "  - {}: spinning peers {}, parking peers {}",
            size_label(payload),
            describe(Peer::ShmSpin, payload),
            describe(Peer::ShmPark, payload)
        );
    }
    println!("- timer overhead (Instant::now pair, min): {} ns, included in every RTT\n", timer_overhead_ns());
}

// ---------------------------------------------------------------------------------------
// Report

fn find(results: &[CaseResult], case: Case) -> Option<&CaseResult> {
    results.iter().find(|r| r.case == case)
}

/// The RTT at percentile `p` (0..=100).
fn rtt_at(h: &Histogram<u64>, p: f64) -> u64 {
    if p >= 100.0 {
        h.max()
    } else {
        h.value_at_percentile(p)
    }
}

/// One-way latency at percentile `p`: RTT / 2.
fn oneway_at(h: &Histogram<u64>, p: f64) -> f64 {
    rtt_at(h, p) as f64 / 2.0
}

/// The one-way percentiles of the table and the JSON records, with their metric names.
const ONEWAY: [(&str, f64); 5] = [
    ("oneway_p50_ns", 50.0),
    ("oneway_p90_ns", 90.0),
    ("oneway_p99_ns", 99.0),
    ("oneway_p999_ns", 99.9),
    ("oneway_max_ns", 100.0),
];

fn print_table(results: &[CaseResult]) {
    println!(
        "| system | mode | payload | samples | RTT p50 | one-way p50 | one-way p90 | one-way p99 | one-way p99.9 | \
         one-way max |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let h = &r.merged;
        let one: Vec<String> = ONEWAY.iter().map(|&(_, p)| format!("{:.0}", oneway_at(h, p))).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.case.peer.system(),
            r.case.peer.mode(),
            size_label(r.case.payload),
            h.len(),
            rtt_at(h, 50.0),
            one.join(" | ")
        );
    }
    println!(
        "\n(all figures in ns; one-way = RTT / 2; bare-atomic and futex carry no payload; shmflow segments are \
         32 KiB up to 1 KiB payloads, then the smallest power of two that holds the record, for the stream and \
         the network stack alike)"
    );
}

/// A ratio of two cases' p50s: over all samples, and round by round.
struct Ratio {
    num: Case,
    den: Case,
    overall: f64,
    per_round: Vec<f64>,
}

impl Ratio {
    /// The median of the per-round ratios: robust against the vCPUs moving mid-run.
    fn round_median(&self) -> f64 {
        let mut v = self.per_round.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// The `system` of its JSON records, such as "shmflow/bare-atomic" (the `mode` is the
    /// numerator's).
    fn system(&self) -> String {
        format!("{}/{}", self.num.peer.system(), self.den.peer.system())
    }
}

fn ratio(results: &[CaseResult], num: Case, den: Case) -> Option<Ratio> {
    let (n, d) = (find(results, num)?, find(results, den)?);
    let div = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    Some(Ratio {
        num,
        den,
        overall: div(n.merged.value_at_quantile(0.5), d.merged.value_at_quantile(0.5)),
        per_round: n.round_p50.iter().zip(&d.round_p50).map(|(&a, &b)| div(a, b)).collect(),
    })
}

/// The numerator and denominator peers of the ratios, in print order.
const RATIOS: [(Peer, Peer); 5] = [
    (Peer::ShmSpin, Peer::Bare),
    (Peer::ShmAdaptive, Peer::Bare),
    (Peer::ShmPark, Peer::Futex),
    (Peer::NetSpin, Peer::Bare),
    (Peer::NetPark, Peer::Futex),
];

/// Every ratio of [`RATIOS`] at every size (the denominators carry no payload).
fn ratios(results: &[CaseResult], sizes: &[usize]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for &payload in sizes {
        for (n, d) in RATIOS {
            out.extend(ratio(results, Case { peer: n, payload }, Case { peer: d, payload: 0 }));
        }
    }
    out
}

fn print_ratios(results: &[CaseResult], ratios: &[Ratio]) {
    // Only the ratios whose peers ran (`--peers` may leave some out).
    let columns: Vec<(Peer, Peer)> =
        RATIOS.into_iter().filter(|&(n, d)| ratios.iter().any(|r| r.num.peer == n && r.den.peer == d)).collect();
    if !columns.is_empty() {
        println!("\np50 ratios, over all samples (median of the per-round ratios):\n");
        let head: Vec<String> = columns.iter().map(|(n, d)| format!("{} / {}", n.name(), d.name())).collect();
        println!("| payload | {} |", head.join(" | "));
        println!("|---:|{}", "---:|".repeat(columns.len()));
    }
    let mut sizes: Vec<usize> = ratios.iter().map(|r| r.num.payload).collect();
    sizes.dedup();
    for payload in sizes {
        let cells: Vec<String> = columns
            .iter()
            .map(|&(n, d)| {
                ratios
                    .iter()
                    .find(|r| r.num == Case { peer: n, payload } && r.den.peer == d)
                    .map_or_else(|| "-".into(), |r| format!("{:.2} ({:.2})", r.overall, r.round_median()))
            })
            .collect();
        println!("| {} | {} |", size_label(payload), cells.join(" | "));
    }
    println!();
    for (peer, label) in [(Peer::ShmSpin, "headline: shmflow spin"), (Peer::NetSpin, "shmflow-netstack spin")] {
        let Some(r) = ratios.iter().find(|r| r.num == Case { peer, payload: HEADLINE } && r.den.peer == Peer::Bare)
        else {
            continue;
        };
        let rounds: Vec<String> = r.per_round.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "- {label} at {} / bare-atomic, p50: {:.2} over all samples; median of rounds {:.2} (per round: {})",
            size_label(HEADLINE),
            r.overall,
            r.round_median(),
            rounds.join(", ")
        );
    }
    if let Some(bare) = find(results, Case { peer: Peer::Bare, payload: 0 }) {
        let p: Vec<String> = bare.round_p50.iter().map(|v| v.to_string()).collect();
        println!(
            "- bare-atomic RTT p50 per round: {} ns (a shift between rounds means the vCPUs moved; \
             MACHINE.md: near ~120, far ~410 on its EPYC)",
            p.join(", ")
        );
    }
}

/// One flat JSON record. `extra` holds further `"key":value` fields, already encoded.
fn json_record(
    run: &str,
    system: &str,
    mode: &str,
    payload: usize,
    extra: &[String],
    metric: &str,
    value: String,
) -> String {
    let mut fields = vec![
        "\"bench\":\"latency\"".to_string(),
        format!("\"system\":\"{system}\""),
        format!("\"mode\":\"{mode}\""),
        format!("\"payload_bytes\":{payload}"),
    ];
    fields.extend(extra.iter().cloned());
    fields.push(format!("\"metric\":\"{metric}\""));
    fields.push(format!("\"value\":{value}"));
    fields.push(format!("\"run\":\"{run}\""));
    format!("  {{{}}}", fields.join(","))
}

/// Flat JSON records, one per figure: per case the one-way percentiles, the RTT p50, the
/// sample count and the one-way curve points; per ratio its two figures.
fn json_records(plan: &Plan, results: &[CaseResult], ratios: &[Ratio]) -> String {
    let run = plan.run();
    let mut out = Vec::new();
    for r in results {
        let (peer, h) = (r.case.peer, &r.merged);
        let seg: Vec<String> = r.case.segment_bytes().map(|s| format!("\"segment_bytes\":{s}")).into_iter().collect();
        let rec = |extra: &[String], metric: &str, value: String| {
            json_record(run, peer.system(), peer.mode(), r.case.payload, extra, metric, value)
        };
        for (metric, p) in ONEWAY {
            out.push(rec(&seg, metric, format!("{:.1}", oneway_at(h, p))));
        }
        out.push(rec(&seg, "rtt_p50_ns", rtt_at(h, 50.0).to_string()));
        out.push(rec(&seg, "samples", h.len().to_string()));
        for p in CURVE {
            let mut extra = seg.clone();
            extra.push(format!("\"percentile\":{p}"));
            out.push(rec(&extra, "curve_oneway_ns", format!("{:.1}", oneway_at(h, p))));
        }
    }
    for r in ratios {
        let (system, mode) = (r.system(), r.num.peer.mode());
        out.push(json_record(run, &system, mode, r.num.payload, &[], "p50_ratio", format!("{:.3}", r.overall)));
        let median = format!("{:.3}", r.round_median());
        out.push(json_record(run, &system, mode, r.num.payload, &[], "p50_ratio_round_median", median));
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
