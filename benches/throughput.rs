//! Throughput of the network stack between two processes, after Flink's
//! StreamNetworkThroughputBenchmark: writers x channels x buffer timeout x record size,
//! next to TCP loopback, a Unix socket stream and memcpy, all measured in the same run.
//!
//! ```text
//!  consumer (this process, CPU a)                   producer (this binary re-executed with
//!                                                   SHMFLOW_TPUT_SPEC=<case>, CPU b)
//!                                                   W writer threads, each with C channels,
//!                                                   round robin (RebalancePartitioner)
//!  shmflow: one gate over all W x C channels <===== W ResultPartitions in one memfd arena
//!  tcp:     poll() over W connections        <----- W TCP_NODELAY connections (127.0.0.1)
//!  unix:    poll() over W streams            <----- W AF_UNIX stream socket pairs
//!           every record: decoded, checksummed,     record i of writer w: [i u64][w u32]
//!           its sequence checked per channel        then fixed filler up to its size
//!  "go" -> producer; after warm-up + window -> "stop"; the producer finishes, reports how
//!  many records each writer sent; the consumer checks count and checksum of everything.
//! ```
//!
//! Records: `small` is a `(u64, u32)` tuple (Flink's long/int pair, 12 payload bytes),
//! `1KiB` and `1MiB` are byte records (`[u8]`) of that many payload bytes; the 1 MiB ones
//! span 32 segments of 32 KiB. The socket peers use the same wire format as shmflow
//! (`[u32 len][payload]`), write through a 32 KiB user-space buffer (Flink's network buffer),
//! and follow the same buffer timeout: 0 ms writes after every record, N ms writes when the
//! buffer is full or when an [`OutputFlusher`] (the one shmflow's RecordWriter uses) asks.
//! Like Flink's Netty stack, which multiplexes the channels of one partition over one TCP
//! connection, a socket writer has one connection for all its channels. The consumer reads
//! up to 64 KiB per system call and reads large records straight into their reassembly
//! buffer (generous to the sockets). `memcpy` copies the same payload bytes, record by
//! record, into a 4 MiB ring in one thread: the limit for 1 MiB records.
//!
//! Throughput is measured at the consumer over a window that starts after a warm-up, so
//! process start, arena page faults and the drain at the end are outside it. The vCPUs of
//! our machines move between "near" and "far" placement (MACHINE.md), so each case first
//! measures a bare cache-line round trip between the two CPUs (column `bare RTT`), and the
//! three systems of one case run back to back: compare ratios, not absolute figures.
//!
//! `cargo bench --bench throughput [-- --json PATH --rounds N --measure-ms MS --no-pin]`
//! (argv holds `--bench`) runs every case; without `--bench` (as `cargo test --benches`
//! runs it) a quick smoke runs every system once. Every wait is bounded, a watchdog kills a
//! producer that outlives its deadline, a guard kills and reaps it on every exit path, and
//! nothing goes to /dev/shm (memfd arenas only).

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, OutputFlusher, RebalancePartitioner, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::sync::{CachePadded, Ordering};
use shmflow::ShuffleEnvironment;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{
    accept_within, cpu_model, cpu_pair, die_with_parent, env_var, exit_code, inherited_fds, pass_fds, pin_to,
    spin_until, Producer, Res,
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
/// The socket writers' user-space buffer (Flink's 32 KiB network buffer).
const WRITE_CHUNK: usize = 32 * 1024;
/// The socket consumer's read size.
const READ_BUF: usize = 64 * 1024;
/// The memcpy peer's destination ring.
const MEMCPY_RING: usize = 4 << 20;
/// Record payload sizes.
const SMALL: usize = 12;
const KIB: usize = 1024;
const MIB: usize = 1 << 20;
/// Arena segment size (Flink's default network buffer).
const SEGMENT: u32 = 32 * 1024;

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

/// Writers x channels per writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    writers: u32,
    channels: u32,
}

impl Shape {
    const fn new(writers: u32, channels: u32) -> Self {
        Self { writers, channels }
    }

    fn name(self) -> String {
        format!("{}x{}", self.writers, self.channels)
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
        SMALL => "small 12 B".into(),
        s if s >= MIB && s % MIB == 0 => format!("{} MiB", s / MIB),
        s if s >= KIB && s % KIB == 0 => format!("{} KiB", s / KIB),
        s => format!("{s} B"),
    }
}

/// What a producer child is told: `system:WxC:timeout_ms:size`.
fn encode_spec(system: System, case: Case) -> String {
    format!("{}:{}:{}:{}", system.name(), case.shape.name(), case.timeout_ms, case.size)
}

fn decode_spec(spec: &str) -> Res<(System, Case)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [system, shape, timeout, size] = parts[..] else {
        return Err(format!("bad spec {spec:?}").into());
    };
    let system = System::from_name(system).ok_or_else(|| format!("unknown system {system:?}"))?;
    let (w, c) = shape.split_once('x').ok_or_else(|| format!("bad shape {shape:?}"))?;
    let case = Case { shape: Shape::new(w.parse()?, c.parse()?), timeout_ms: timeout.parse()?, size: size.parse()? };
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
    fn new(args: &Args) -> Self {
        if args.full {
            let shapes = [Shape::new(1, 1), Shape::new(2, 2), Shape::new(4, 4), Shape::new(4, 100)];
            let sizes: Vec<usize> =
                [SMALL, KIB, MIB].into_iter().filter(|&s| args.only_size.is_none_or(|o| o == s)).collect();
            let mut cases = Vec::new();
            for &size in &sizes {
                for shape in shapes {
                    for timeout_ms in [0, 1, 100] {
                        let keep = args.only_shape.as_ref().is_none_or(|o| *o == shape.name())
                            && args.only_timeout.is_none_or(|o| o == timeout_ms);
                        if keep {
                            cases.push(Case { shape, timeout_ms, size });
                        }
                    }
                }
            }
            Plan {
                full: true,
                systems: systems(args),
                rounds: args.rounds.unwrap_or(1),
                warm: Duration::from_millis(100),
                window: Duration::from_millis(args.measure_ms.unwrap_or(300)),
                sizes,
                cases,
            }
        } else {
            Plan {
                full: false,
                systems: systems(args),
                rounds: args.rounds.unwrap_or(1),
                warm: Duration::from_millis(20),
                window: Duration::from_millis(args.measure_ms.unwrap_or(60)),
                sizes: vec![SMALL, MIB],
                cases: vec![
                    Case { shape: Shape::new(2, 2), timeout_ms: 1, size: SMALL },
                    Case { shape: Shape::new(1, 1), timeout_ms: 0, size: MIB },
                ],
            }
        }
    }

    fn mode(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
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
    /// Filters on the full plan: record size, shape, timeout.
    only_size: Option<usize>,
    only_shape: Option<String>,
    only_timeout: Option<i64>,
    only_system: Option<System>,
}

/// `--bench` (added by `cargo bench`), `--no-pin`, `--rounds N`, `--measure-ms MS`,
/// `--json PATH`, and filters on the full plan `--size BYTES`, `--shape WxC`,
/// `--timeout MS`, `--system NAME`; anything else (filters cargo may pass along) is ignored.
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
            "--shape" => args.only_shape = Some(it.next().ok_or("--shape needs WxC")?),
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

/// Record `i` of writer `w` for payload size `size` (at least 12): `i` and `w` little
/// endian, then a fixed filler. `base_record` builds the filler; `stamp` writes `i`, `w`.
fn base_record(size: usize) -> Vec<u8> {
    (0..size).map(|k| (k as u32).wrapping_mul(131).wrapping_add(7) as u8).collect()
}

#[inline]
fn stamp(rec: &mut [u8], w: u32, i: u64) {
    rec[..8].copy_from_slice(&i.to_le_bytes());
    rec[8..12].copy_from_slice(&w.to_le_bytes());
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

/// `xor_words` of the filler (bytes 0..12 zeroed): record `(w, i)` then has
/// `xor_words == head(w, i) ^ filler_xor` (`i` is word 0, `w` the low half of word 1).
fn filler_xor(size: usize) -> u64 {
    let mut base = base_record(size);
    base[..12].fill(0);
    xor_words(&base)
}

/// What `i` and `w` add to `xor_words` of record `(w, i)`.
#[inline]
fn head(w: u32, i: u64) -> u64 {
    i ^ u64::from(w).rotate_left(16)
}

/// The sum of the checksums of records `0..counts[w]` of every writer `w`.
fn expected_sum(size: usize, counts: &[u64]) -> u64 {
    let fx = filler_xor(size);
    let mut sum = 0u64;
    for (w, &n) in counts.iter().enumerate() {
        for i in 0..n {
            sum = sum.wrapping_add(mix(head(w as u32, i) ^ fx, size));
        }
    }
    sum
}

/// Checks the closed form of `expected_sum` against real records.
fn self_check(sizes: &[usize]) -> Res<()> {
    for &size in sizes {
        let mut rec = base_record(size);
        let fx = filler_xor(size);
        for (w, i) in [(0u32, 0u64), (3, 12_345), (99, u64::MAX / 3)] {
            stamp(&mut rec, w, i);
            if record_checksum(&rec) != mix(head(w, i) ^ fx, size) {
                return Err(format!("checksum self-check failed for {size}-byte records").into());
            }
        }
    }
    let t = (7u64, 3u32);
    let mut b = [0u8; SMALL];
    shmflow::record::Record::serialize_into(&t, &mut b);
    if b[..8] != 7u64.to_le_bytes() || b[8..] != 3u32.to_le_bytes() {
        return Err("a (u64, u32) record does not serialize as [u64 LE][u32 LE]".into());
    }
    Ok(())
}

/// What the consumer saw.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    records: u64,
    bytes: u64,
    sum: u64,
    /// Records whose sequence number did not grow on their channel.
    disorder: u64,
    /// Records of the wrong size.
    bad_len: u64,
}

impl Tally {
    /// Counts and checksums one record; `next` is the smallest sequence number the
    /// record's channel may carry next.
    #[inline]
    fn add(&mut self, data: &[u8], size: usize, next: &mut u64) {
        self.records += 1;
        self.bytes += data.len() as u64;
        self.sum = self.sum.wrapping_add(record_checksum(data));
        if data.len() != size {
            self.bad_len += 1;
            return;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[..8]);
        let seq = u64::from_le_bytes(b);
        if seq < *next {
            self.disorder += 1;
        }
        *next = seq.wrapping_add(1);
    }

    fn verify(&self, size: usize, counts: &[u64]) -> Res<()> {
        let sent: u64 = counts.iter().sum();
        if self.records != sent {
            return Err(format!("received {} records, the producer sent {sent}", self.records).into());
        }
        if self.bad_len > 0 || self.disorder > 0 {
            return Err(format!("{} records of the wrong size, {} out of order", self.bad_len, self.disorder).into());
        }
        if self.sum != expected_sum(size, counts) {
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

/// A throughput figure.
#[derive(Debug, Clone, Copy)]
struct Rate {
    records_per_s: f64,
    gb_per_s: f64,
}

/// The measurement window: opens `warm` after `begin`, closes `window` later.
struct Window {
    begin: Instant,
    warm: Duration,
    window: Duration,
    start: Option<(Instant, u64, u64)>,
    end: Option<(Instant, u64, u64)>,
}

impl Window {
    fn new(plan: &Plan) -> Self {
        Self { begin: Instant::now(), warm: plan.warm, window: plan.window, start: None, end: None }
    }

    /// Looks at the clock; true once, when the window closes (time to stop the producer).
    fn tick(&mut self, t: &Tally) -> bool {
        if self.end.is_some() {
            return false;
        }
        let now = Instant::now();
        match self.start {
            None => {
                if now.duration_since(self.begin) >= self.warm {
                    self.start = Some((now, t.records, t.bytes));
                }
                false
            }
            Some((s, _, _)) => {
                if now.duration_since(s) >= self.window {
                    self.end = Some((now, t.records, t.bytes));
                    true
                } else {
                    false
                }
            }
        }
    }

    fn rate(&self) -> Res<Rate> {
        match (self.start, self.end) {
            (Some((t0, r0, b0)), Some((t1, r1, b1))) => {
                let secs = t1.duration_since(t0).as_secs_f64();
                Ok(Rate { records_per_s: (r1 - r0) as f64 / secs, gb_per_s: (b1 - b0) as f64 / secs / 1e9 })
            }
            _ => Err("the stream ended before the measurement window closed".into()),
        }
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
        Some(Rate {
            records_per_s: median(rates.iter().map(|r| r.records_per_s).collect())?,
            gb_per_s: median(rates.iter().map(|r| r.gb_per_s).collect())?,
        })
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
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
            rates.push(run_memcpy(*size, &plan));
        }
        for r in results.iter_mut() {
            r.bare_rtt_ns.push(bare_rtt_ns(cpus)?);
            for (system, rates) in r.rates.iter_mut() {
                let what = || format!("{} {} (round {})", system.name(), describe(r.case), round + 1);
                let rate = run_stream(*system, r.case, &plan, cpus).map_err(|e| format!("{}: {e}", what()))?;
                rates.push(rate);
            }
            if plan.full {
                eprintln!("  done: {} after {:.0?}", describe(r.case), started.elapsed());
            }
        }
    }
    let memcpy: Vec<(usize, Rate)> = memcpy
        .into_iter()
        .map(|(s, rates)| {
            let rpm = median(rates.iter().map(|r| r.records_per_s).collect()).unwrap_or(f64::NAN);
            let gbm = median(rates.iter().map(|r| r.gb_per_s).collect()).unwrap_or(f64::NAN);
            (s, Rate { records_per_s: rpm, gb_per_s: gbm })
        })
        .collect();
    println!("- load average at the end: {}\n", load_average());
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

/// The arena of one shmflow run: 32 KiB segments, enough for every writer's pool quota.
fn arena_config(shape: Shape) -> ArenaConfig {
    let quota = shape.writers * (shape.channels * 2 + 8);
    ArenaConfig { segment_size: SEGMENT, segment_count: (quota + 256).next_power_of_two(), ..ArenaConfig::default() }
}

fn run_shmflow(case: Case, plan: &Plan, cpus: Option<(usize, usize)>) -> Res<Rate> {
    let arena = Arc::new(Arena::create_memfd(&arena_config(case.shape), "throughput")?);
    let mut cmd = producer_command(System::Shmflow, case, cpus.map(|c| c.1))?;
    arena.inherit_fd_into(&mut cmd)?;
    let mut producer = Producer::spawn(&mut cmd, "throughput", CHILD_DEADLINE, WAIT_TIMEOUT, POLL_SLICE)?;
    producer.expect_line("ready")?;
    let env = ShuffleEnvironment::new(arena.clone(), 0);
    let Shape { writers, channels } = case.shape;
    let inputs = (0..writers)
        .flat_map(|w| {
            (0..channels)
                .map(move |c| InputSpec { partition: ResultPartitionId::new(u64::from(w), 0), subpartition: c })
        })
        .collect();
    let mut gate = env.create_input_gate(&InputGateConfig::new(inputs))?;
    let mut tally = Tally::default();
    let mut next = vec![0u64; (writers * channels) as usize];
    let every = check_every(case.size);
    let mut until_check = every;
    let mut idle_since: Option<Instant> = None;
    producer.send("go")?;
    let mut window = Window::new(plan);
    loop {
        // The batch path: every whole record already published on the channel being
        // served, in one go (one load of the writer's position for the lot).
        let mut foreign = None;
        let drained = gate.drain_records(4096, &mut |channel, data| {
            tally.add(data, case.size, &mut next[channel as usize]);
            if data.len() >= 12 && u32::from_le_bytes([data[8], data[9], data[10], data[11]]) != channel / channels {
                foreign = Some(channel);
            }
            Ok(())
        })?;
        if let Some(channel) = foreign {
            return Err(format!("a record of another writer on channel {channel}").into());
        }
        if drained > 0 {
            until_check = until_check.saturating_sub(drained as u64);
            if until_check == 0 {
                until_check = every;
                idle_since = None;
                if window.tick(&tally) {
                    producer.send("stop")?;
                }
            }
            continue;
        }
        match gate.next(Some(POLL_SLICE)) {
            Ok(GateItem::Record { channel, data }) => {
                let c = channel as usize;
                tally.add(data, case.size, &mut next[c]);
                if data.len() >= 12 && u32::from_le_bytes([data[8], data[9], data[10], data[11]]) != channel / channels
                {
                    return Err(format!("a record of another writer on channel {channel}").into());
                }
                until_check -= 1;
                if until_check == 0 {
                    until_check = every;
                    idle_since = None;
                    if window.tick(&tally) {
                        producer.send("stop")?;
                    }
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
    let counts = producer.finish(case.shape.writers)?;
    tally.verify(case.size, &counts)?;
    verbose(System::Shmflow, &tally);
    window.rate()
}

/// One connection of a socket consumer: a read buffer and the record being reassembled.
struct Conn {
    file: File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A record larger than the read buffer: its payload, bytes so far, length.
    big: Vec<u8>,
    big_have: usize,
    big_need: Option<usize>,
    next: u64,
    eof: bool,
}

/// What one read did.
enum Pump {
    Progress,
    WouldBlock,
    Eof,
}

impl Conn {
    fn new(fd: OwnedFd) -> Res<Self> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Self {
            file: File::from(fd),
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            big: Vec::new(),
            big_have: 0,
            big_need: None,
            next: 0,
            eof: false,
        })
    }

    /// One read system call, then decodes every complete record it completed.
    fn pump(&mut self, size: usize, tally: &mut Tally) -> Res<Pump> {
        if let Some(need) = self.big_need {
            let n = match self.file.read(&mut self.big[self.big_have..need]) {
                Ok(0) => return Err("end of stream inside a record".into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pump::WouldBlock),
                Err(e) => return Err(e.into()),
            };
            self.big_have += n;
            if self.big_have == need {
                tally.add(&self.big[..need], size, &mut self.next);
                self.big_need = None;
            }
            return Ok(Pump::Progress);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = match self.file.read(&mut self.buf[self.end..]) {
            Ok(0) => {
                if self.end > self.start {
                    return Err("end of stream inside a record".into());
                }
                self.eof = true;
                return Ok(Pump::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(Pump::WouldBlock),
            Err(e) => return Err(e.into()),
        };
        self.end += n;
        while self.end - self.start >= 4 {
            let s = self.start;
            let len = u32::from_le_bytes([self.buf[s], self.buf[s + 1], self.buf[s + 2], self.buf[s + 3]]) as usize;
            if len > shmflow::record::DEFAULT_MAX_RECORD {
                return Err(format!("record length {len} above the limit").into());
            }
            let avail = self.end - s - 4;
            if avail >= len {
                tally.add(&self.buf[s + 4..s + 4 + len], size, &mut self.next);
                self.start = s + 4 + len;
                continue;
            }
            if 4 + len > self.buf.len() {
                // Larger than the read buffer: the rest is read straight into `big`.
                if self.big.len() < len {
                    self.big.resize(len, 0);
                }
                self.big[..avail].copy_from_slice(&self.buf[s + 4..self.end]);
                self.big_have = avail;
                self.big_need = Some(len);
                self.start = 0;
                self.end = 0;
            }
            break;
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
    let writers = case.shape.writers as usize;
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
    let mut conns = fds.into_iter().map(Conn::new).collect::<Res<Vec<_>>>()?;
    let mut tally = Tally::default();
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut idle_since: Option<Instant> = None;
    producer.send("go")?;
    let mut window = Window::new(plan);
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
                    Pump::Progress => {
                        if window.tick(&tally) {
                            producer.send("stop")?;
                        }
                    }
                    Pump::WouldBlock | Pump::Eof => break,
                }
            }
        }
    }
    let counts = producer.finish(case.shape.writers)?;
    tally.verify(case.size, &counts)?;
    verbose(system, &tally);
    window.rate()
}

/// The same payload bytes copied record by record into a ring, in this thread.
fn run_memcpy(size: usize, plan: &Plan) -> Rate {
    let mut src = base_record(size);
    let slots = (MEMCPY_RING / size).max(4);
    let mut dst = vec![0u8; slots * size];
    let mut tally = Tally::default();
    let every = check_every(size);
    let mut window = Window::new(plan);
    let mut slot = 0usize;
    let mut i = 0u64;
    loop {
        for _ in 0..every {
            stamp(&mut src, 0, i);
            let at = slot * size;
            dst[at..at + size].copy_from_slice(std::hint::black_box(&src[..]));
            slot += 1;
            if slot == slots {
                slot = 0;
            }
            i += 1;
        }
        std::hint::black_box(&mut dst);
        tally.records += every;
        tally.bytes += every * size as u64;
        if window.tick(&tally) {
            break;
        }
    }
    window.rate().unwrap_or(Rate { records_per_s: f64::NAN, gb_per_s: f64::NAN })
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
            // Acquire/Release: a plain hand-off of the counter.
            spin_until(|| w2[0].load(Ordering::Acquire) == i, "answer", WAIT_TIMEOUT)?;
            w2[1].store(i, Ordering::Release);
        }
        Ok(())
    });
    let t0 = Instant::now();
    let mut out = Ok(());
    for i in 1..=N {
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
    let stop = Arc::new(Flag::new(false));
    let start: StartLine = Arc::new((Mutex::new(0), Condvar::new()));
    let (ready_tx, ready_rx) = mpsc::channel::<Res<()>>();
    let mut threads = Vec::new();
    for w in 0..writers {
        let (stop, start, ready) = (stop.clone(), start.clone(), ready_tx.clone());
        let conn = conns[w as usize].take();
        let env = env.clone();
        threads.push(std::thread::spawn(move || -> Res<u64> {
            match (env, conn) {
                (Some(env), _) => shmflow_writer(&env, case, w, &stop, &start, &ready),
                (None, Some(file)) => socket_writer(file, case, w, &stop, &start, &ready),
                _ => Err("a writer without an output".into()),
            }
        }));
    }
    drop(ready_tx);
    let abort = |start: &StartLine, e: Box<dyn std::error::Error + Send + Sync>| {
        set_start(start, 2);
        e
    };
    for _ in 0..writers {
        match ready_rx.recv_timeout(WAIT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(abort(&start, e)),
            Err(_) => return Err(abort(&start, "a writer did not get ready".into())),
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
        Ok(l) if l == "go" => set_start(&start, 1),
        other => return Err(abort(&start, format!("expected go, got {other:?}").into())),
    }
    // Runs until "stop" (or EOF, or the deadline): the consumer decides the length.
    let _ = cmds.recv_timeout(CHILD_DEADLINE);
    // Relaxed: a stop request, read by the writers between records.
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for t in threads {
        counts.push(t.join().map_err(|_| "a writer panicked")??);
    }
    let list: Vec<String> = counts.iter().map(u64::to_string).collect();
    println!("sent {}", list.join(" "));
    std::io::stdout().flush()?;
    Ok(())
}

/// One shmflow writer: a partition of `C` subpartitions, round robin, until stopped.
fn shmflow_writer(
    env: &ShuffleEnvironment,
    case: Case,
    w: u32,
    stop: &Flag,
    start: &StartLine,
    ready: &mpsc::Sender<Res<()>>,
) -> Res<u64> {
    let mut cfg = ResultPartitionConfig::new(
        ResultPartitionId::new(u64::from(w), 0),
        ResultPartitionType::PipelinedBounded,
        case.shape.channels,
    );
    cfg.timeout = Some(WAIT_TIMEOUT);
    let timeout = BufferTimeout::from_millis(case.timeout_ms)?;
    let selector = RebalancePartitioner::new(u64::from(w));
    let n = if case.size == SMALL {
        let mut writer = match env.create_record_writer::<(u64, u32), _>(&cfg, selector, timeout) {
            Ok(wr) => wr,
            Err(e) => {
                let _ = ready.send(Err(format!("writer {w}: {e}").into()));
                return Err(e.into());
            }
        };
        let _ = ready.send(Ok(()));
        if !wait_start(start) {
            return Err("no go".into());
        }
        let mut i = 0u64;
        // Relaxed: a stop request; a few more records after it are fine.
        while !stop.load(Ordering::Relaxed) {
            writer.emit(&(i, w))?;
            i += 1;
        }
        writer.finish()?;
        writer.into_partition().release_when_consumed(Some(WAIT_TIMEOUT))?;
        i
    } else {
        let mut writer = match env.create_record_writer::<[u8], _>(&cfg, selector, timeout) {
            Ok(wr) => wr,
            Err(e) => {
                let _ = ready.send(Err(format!("writer {w}: {e}").into()));
                return Err(e.into());
            }
        };
        let mut rec = base_record(case.size);
        let _ = ready.send(Ok(()));
        if !wait_start(start) {
            return Err("no go".into());
        }
        let mut i = 0u64;
        // Relaxed: as above.
        while !stop.load(Ordering::Relaxed) {
            stamp(&mut rec, w, i);
            writer.emit(&rec[..])?;
            i += 1;
        }
        writer.finish()?;
        writer.into_partition().release_when_consumed(Some(WAIT_TIMEOUT))?;
        i
    };
    Ok(n)
}

/// A stream written through a 32 KiB user-space buffer.
struct Framed {
    out: File,
    buf: Vec<u8>,
}

impl Framed {
    fn put(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = (WRITE_CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == WRITE_CHUNK {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// One socket writer: `[u32 len][payload]` frames, flushed per the buffer timeout.
fn socket_writer(
    out: File,
    case: Case,
    w: u32,
    stop: &Flag,
    start: &StartLine,
    ready: &mpsc::Sender<Res<()>>,
) -> Res<u64> {
    let timeout = BufferTimeout::from_millis(case.timeout_ms)?;
    let flusher = match timeout {
        BufferTimeout::Interval(d) => Some(OutputFlusher::start(d)?),
        _ => None,
    };
    let every_record = timeout == BufferTimeout::EveryRecord;
    let mut f = Framed { out, buf: Vec::with_capacity(WRITE_CHUNK) };
    let mut rec = base_record(case.size);
    let prefix = (case.size as u32).to_le_bytes();
    let _ = ready.send(Ok(()));
    if !wait_start(start) {
        return Err("no go".into());
    }
    let mut i = 0u64;
    // Relaxed: a stop request; a few more records after it are fine.
    while !stop.load(Ordering::Relaxed) {
        stamp(&mut rec, w, i);
        f.put(&prefix)?;
        f.put(&rec)?;
        if every_record || flusher.as_ref().is_some_and(|fl| fl.take()) {
            f.flush()?;
        }
        i += 1;
    }
    f.flush()?;
    // Dropping `f` closes the socket: the consumer sees the end of the stream.
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
        "- mode {}: {} round(s); per run {:?} warm-up, then a {:?} window measured at the consumer",
        plan.mode(),
        plan.rounds,
        plan.warm,
        plan.window
    );
    println!(
        "- shmflow: {} KiB segments, Flink's defaults (2 exclusive credits per channel, 8 floating per gate, \
         pool max 2C+8), adaptive waits; sockets: {} KiB write buffer, {} KiB reads\n",
        SEGMENT / 1024,
        WRITE_CHUNK / 1024,
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
        "| record | shape | timeout | shmflow rec/s | shmflow GB/s | tcp rec/s | tcp GB/s | unix rec/s | unix GB/s \
         | shmflow/tcp | shmflow/unix | shmflow/memcpy | bare RTT |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let c = r.case;
        let mut cells = vec![size_name(c.size), c.shape.name(), format!("{} ms", c.timeout_ms)];
        for s in System::STREAMS {
            let m = r.median(s);
            cells.push(m.map_or("-".into(), |m| fmt_rate(m.records_per_s)));
            cells.push(m.map_or("-".into(), |m| format!("{:.3}", m.gb_per_s)));
        }
        let shm = r.median(System::Shmflow);
        cells.push(format!("{:.2}", ratio(shm, r.median(System::Tcp))));
        cells.push(format!("{:.2}", ratio(shm, r.median(System::Unix))));
        cells.push(format!("{:.2}", ratio(shm, memcpy_of(memcpy, c.size))));
        cells.push(format!("{:.0} ns", median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN)));
        println!("| {} |", cells.join(" | "));
    }
    println!();
    println!("| record | memcpy rec/s | memcpy GB/s |");
    println!("|---|---:|---:|");
    for &(size, rate) in memcpy {
        println!("| {} | {} | {:.2} |", size_name(size), fmt_rate(rate.records_per_s), rate.gb_per_s);
    }
    println!(
        "\n(GB/s = 1e9 payload bytes per second; rec/s and GB/s are medians over {} round(s); the ratios are \
         of records/s; bare RTT: one cache line between the two CPUs, ~120 ns near, ~410 ns far on our EPYC)",
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
        Some([lo, med, hi]) => println!("- {what}: median {med:.2} (min {lo:.2}, max {hi:.2}); goal {goal}"),
        None => println!("- {what}: not measured"),
    };
    for t in [0, 1, 100] {
        let small = |c: &Case| c.size == SMALL && c.timeout_ms == t;
        if !results.iter().any(|r| small(&r.case)) {
            continue;
        }
        line(
            &format!("small records, timeout {t} ms, shmflow/tcp over shapes"),
            spread(results, small, |r| ratio(r.median(System::Shmflow), r.median(System::Tcp))),
            ">= 5",
        );
        line(
            &format!("small records, timeout {t} ms, shmflow/unix over shapes"),
            spread(results, small, |r| ratio(r.median(System::Shmflow), r.median(System::Unix))),
            ">= 3",
        );
    }
    line(
        "1 MiB records, shmflow/memcpy over shapes and timeouts",
        spread(results, |c| c.size == MIB, |r| ratio(r.median(System::Shmflow), memcpy_of(memcpy, MIB))),
        ">= 0.5 (within 2x of memcpy)",
    );
}

/// Flat JSON records, one per figure.
fn json_records(plan: &Plan, results: &[CaseResult], memcpy: &[(usize, Rate)]) -> String {
    let record = |system: &str, shape: &str, timeout: String, size: usize, metric: &str, value: f64| {
        let v = if value.is_finite() { format!("{value:.4}") } else { "null".into() };
        format!(
            "  {{\"bench\":\"throughput\",\"mode\":\"{}\",\"system\":\"{system}\",\"shape\":\"{shape}\",\
             \"timeout_ms\":{timeout},\"record_bytes\":{size},\"metric\":\"{metric}\",\"value\":{v}}}",
            plan.mode()
        )
    };
    let mut out = Vec::new();
    for r in results {
        let (shape, t, size) = (r.case.shape.name(), r.case.timeout_ms.to_string(), r.case.size);
        for s in System::STREAMS {
            if let Some(m) = r.median(s) {
                out.push(record(s.name(), &shape, t.clone(), size, "records_per_s", m.records_per_s));
                out.push(record(s.name(), &shape, t.clone(), size, "gb_per_s", m.gb_per_s));
            }
        }
        let shm = r.median(System::Shmflow);
        for (name, other) in [
            ("shmflow/tcp", r.median(System::Tcp)),
            ("shmflow/unix", r.median(System::Unix)),
            ("shmflow/memcpy", memcpy_of(memcpy, size)),
        ] {
            out.push(record(name, &shape, t.clone(), size, "records_per_s_ratio", ratio(shm, other)));
        }
        let rtt = median(r.bare_rtt_ns.clone()).unwrap_or(f64::NAN);
        out.push(record("bare-atomic", &shape, t.clone(), size, "rtt_ns", rtt));
    }
    for &(size, rate) in memcpy {
        out.push(record("memcpy", "single-thread", "null".into(), size, "records_per_s", rate.records_per_s));
        out.push(record("memcpy", "single-thread", "null".into(), size, "gb_per_s", rate.gb_per_s));
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
