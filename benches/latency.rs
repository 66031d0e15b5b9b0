//! Round-trip latency of one 64-byte record between two processes: shmflow next to the
//! hardware limit, the parking limit and the kernel's IPC, all measured in the same run.
//!
//! ```text
//!  requester (this process, CPU a)                  responder (this binary re-executed with
//!                                                   SHMFLOW_LATENCY_PEER=<peer>, CPU b)
//!  t0 = now
//!  64 B, seq n  ---- ping: shared page | pipe | ---> wait for request n, read its 64 bytes,
//!                    socket | shmflow channel 0      checksum them, echo 64 bytes
//!  wait for echo <--- pong: the same kind of path, --'
//!                     shmflow channel 1
//!  rtt = now - t0 -> hdrhistogram (after a warm-up); one-way = rtt / 2
//! ```
//!
//! Peers, in table order:
//! - `bare-atomic`: one atomic `u64` per direction on a shared memfd page, spinning with PAUSE:
//!   the hardware limit (one cache line each way; carries no payload);
//! - `futex`: the same two words as [`FutexWord`]s; a waiter parks at once and a sender
//!   always calls FUTEX_WAKE: the parking limit (carries no payload);
//! - `pipe`, `unix-socket`, `tcp-nodelay` (127.0.0.1, TCP_NODELAY): blocking reads and writes;
//! - `shmflow-spin`, `shmflow-adaptive`, `shmflow-park`: a [`StreamWriter`] on channel 0 and a
//!   [`StreamReader`] on channel 1 of one memfd arena (mirrored in the responder), a flush
//!   after every record, waiting with [`WaitPolicy::spin`], [`WaitPolicy::adaptive`] or
//!   [`WaitPolicy::park`]. The responder checksums the payload in place and echoes it.
//!
//! The vCPUs of our machines move between "near" and "far" placement within minutes, which
//! changes every cross-core figure 3-4x (MACHINE.md). So each peer's samples are spread over
//! several rounds that interleave all peers, and the ratios are also given round by round.
//! Requester and responder are pinned to two different CPUs when there are two
//! (`--no-pin` turns that off).
//!
//! Reading the shmflow rows: the reader of a record fetches the segment's position word and
//! then the bytes, two cache-line transfers in turn where the bare peer moves one, so expect
//! shmflow-spin at up to 2x bare at p50. With 32 KiB segments every 481st round trip also
//! hands segments over in both directions (finish, credit back, next descriptor), about
//! 1.4 us more on the machine this was written on: that is what shows at p99.9.
//!
//! `cargo bench --bench latency [-- --json PATH]` (argv holds `--bench`) does the full run;
//! without `--bench` (as `cargo test --benches` runs it) a quick smoke exercises every peer.
//! Every wait is bounded, a watchdog kills a responder that outlives its deadline, a guard
//! kills and reaps responders on every exit path, and nothing goes to /dev/shm (memfds only).

use hdrhistogram::Histogram;
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::ring::{StreamReader, StreamWriter};
use shmflow::sync::{FutexWord, Ordering, WaitPolicy};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{
    accept_within, cpu_model, cpu_pair, die_with_parent, env_var, exit_code, pass_fds, pin_to, spin_until, ChildGuard,
    Res,
};

/// The bare peer's word. It is `shmflow::sync`'s atomic, as clippy.toml asks; the allow is
/// for clippy resolving that re-export to the std type it bans.
#[allow(clippy::disallowed_types)]
type Word = shmflow::sync::AtomicU64;

/// Bytes per record.
const PAYLOAD: usize = 64;
/// Names the peer a re-executed child serves; its presence makes the process a responder.
const ENV_PEER: &str = "SHMFLOW_LATENCY_PEER";
/// How many requests the responder answers before it exits.
const ENV_COUNT: &str = "SHMFLOW_LATENCY_COUNT";
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

fn main() -> ExitCode {
    let (who, result) = match std::env::var(ENV_PEER) {
        Ok(peer) => (format!("latency responder ({peer})"), responder_main(&peer)),
        Err(_) => ("latency".to_string(), requester_main()),
    };
    exit_code(&who, result)
}

// ---------------------------------------------------------------------------------------
// Peers, plan and arguments

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
}

impl Peer {
    const ALL: [Peer; 8] =
        [Peer::Bare, Peer::Futex, Peer::Pipe, Peer::Unix, Peer::Tcp, Peer::ShmSpin, Peer::ShmAdaptive, Peer::ShmPark];

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
        }
    }

    fn from_name(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Peers whose round trip sleeps (tens of microseconds here): they get fewer samples.
    fn sleeps(self) -> bool {
        matches!(self, Peer::Futex | Peer::Pipe | Peer::Unix | Peer::Tcp | Peer::ShmPark)
    }

    /// The wait policy of a shmflow peer.
    fn policy(self) -> Option<WaitPolicy> {
        match self {
            Peer::ShmSpin => Some(WaitPolicy::spin()),
            Peer::ShmAdaptive => Some(WaitPolicy::adaptive()),
            Peer::ShmPark => Some(WaitPolicy::park()),
            _ => None,
        }
    }
}

/// Round trips of one peer in one round.
#[derive(Debug, Clone, Copy)]
struct Counts {
    warmup: u64,
    measured: u64,
}

/// How much to measure.
#[derive(Debug, Clone, Copy)]
struct Plan {
    full: bool,
    rounds: u32,
    spinning: Counts,
    sleeping: Counts,
}

impl Plan {
    /// Full: 200k samples per spinning peer and 20k per sleeping one (about 50 us each),
    /// over 4 rounds. Quick: 2k each in one round, a few seconds in all.
    fn new(full: bool) -> Self {
        if full {
            Plan {
                full,
                rounds: 4,
                spinning: Counts { warmup: 10_000, measured: 50_000 },
                sleeping: Counts { warmup: 500, measured: 5_000 },
            }
        } else {
            let c = Counts { warmup: 200, measured: 2_000 };
            Plan { full, rounds: 1, spinning: c, sleeping: c }
        }
    }

    fn counts(&self, peer: Peer) -> Counts {
        if peer.sleeps() {
            self.sleeping
        } else {
            self.spinning
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

struct Args {
    full: bool,
    pin: bool,
    json: Option<std::path::PathBuf>,
}

/// `--bench` (added by `cargo bench`), `--no-pin`, `--json PATH`; anything else (test
/// filters cargo may pass along) is ignored.
fn parse_args() -> Res<Args> {
    let mut args = Args { full: false, pin: true, json: None };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => args.full = true,
            "--no-pin" => args.pin = false,
            "--json" => args.json = Some(it.next().ok_or("--json needs a path")?.into()),
            _ => {}
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// The requester: runs every peer, prints the table

/// One peer's samples: merged over rounds, and the p50 of each round.
struct PeerResult {
    peer: Peer,
    merged: Histogram<u64>,
    round_p50: Vec<u64>,
}

fn requester_main() -> Res<()> {
    let args = parse_args()?;
    let plan = Plan::new(args.full);
    let cpus = if args.pin { cpu_pair() } else { None };
    if let Some((mine, _)) = cpus {
        pin_to(mine)?;
    }
    print_machine(&plan, cpus);
    let mut results = Vec::new();
    for peer in Peer::ALL {
        results.push(PeerResult { peer, merged: new_histogram()?, round_p50: Vec::new() });
    }
    for round in 0..plan.rounds {
        for r in results.iter_mut() {
            let h = run_peer(r.peer, plan.counts(r.peer), cpus.map(|c| c.1))
                .map_err(|e| format!("{} (round {}): {e}", r.peer.name(), round + 1))?;
            r.round_p50.push(h.value_at_quantile(0.5));
            r.merged.add(&h).map_err(|e| format!("merging histograms: {e:?}"))?;
        }
    }
    print_table(&results);
    let ratios = ratios(&results);
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

/// Starts a responder for `peer`, measures, and checks that the responder exits cleanly.
fn run_peer(peer: Peer, counts: Counts, responder_cpu: Option<usize>) -> Res<Histogram<u64>> {
    let mut session = start(peer, counts.warmup + counts.measured, responder_cpu)?;
    // On an error the session drops: the requester's ends close, then the guard kills the
    // responder.
    let hist = measure(session.requester.as_mut(), counts)?;
    let Session { requester, mut child } = session;
    drop(requester);
    child.finish(WAIT_TIMEOUT)?;
    Ok(hist)
}

/// Runs `warmup + measured` round trips with sequence numbers from 1 and records the
/// measured ones. The echo is verified outside the timed part.
fn measure(req: &mut dyn Requester, counts: Counts) -> Res<Histogram<u64>> {
    let mut hist = new_histogram()?;
    let mut msg = [0u8; PAYLOAD];
    for (i, b) in msg.iter_mut().enumerate() {
        *b = i as u8 ^ 0x5a;
    }
    let mut reply = [0u8; PAYLOAD];
    for seq in 1..=counts.warmup + counts.measured {
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        req.round_trip(&msg, &mut reply)?;
        let rtt = t0.elapsed();
        if req.echoes() {
            verify(&msg, &reply)?;
        }
        if seq > counts.warmup {
            hist.saturating_record(rtt.as_nanos().min(u128::from(u64::MAX)) as u64);
        }
    }
    Ok(hist)
}

// ---------------------------------------------------------------------------------------
// Payload: sequence number, checksum, echo

fn seq_of(msg: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&msg[..8]);
    u64::from_le_bytes(b)
}

/// A cheap checksum that reads every byte (eight words, rotate and xor).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0u64, |acc, w| {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        acc.rotate_left(7) ^ u64::from_le_bytes(b)
    })
}

/// The responder's answer to request `seq`: the first 56 bytes echoed, then the checksum
/// of all 64.
fn answer(msg: &[u8], seq: u64) -> Res<[u8; PAYLOAD]> {
    if msg.len() != PAYLOAD {
        return Err(format!("request of {} bytes, expected {PAYLOAD}", msg.len()).into());
    }
    if seq_of(msg) != seq {
        return Err(format!("request {} arrived where {seq} was expected", seq_of(msg)).into());
    }
    let mut out = [0u8; PAYLOAD];
    out[..PAYLOAD - 8].copy_from_slice(&msg[..PAYLOAD - 8]);
    out[PAYLOAD - 8..].copy_from_slice(&checksum(msg).to_le_bytes());
    Ok(out)
}

fn verify(msg: &[u8; PAYLOAD], reply: &[u8; PAYLOAD]) -> Res<()> {
    if reply[..PAYLOAD - 8] != msg[..PAYLOAD - 8] || reply[PAYLOAD - 8..] != checksum(msg).to_le_bytes() {
        return Err(format!("wrong echo for request {}", seq_of(msg)).into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The two ends of a peer

/// The requester's end of one peer.
trait Requester {
    /// Sends `msg` and waits for the answer, which lands in `reply`.
    fn round_trip(&mut self, msg: &[u8; PAYLOAD], reply: &mut [u8; PAYLOAD]) -> Res<()>;

    /// Whether the answer carries the echo (the bare and futex peers carry only `seq`).
    fn echoes(&self) -> bool {
        true
    }
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

/// The hardware limit: one atomic word per direction, spinning.
struct BarePeer {
    page: SharedPage,
}

impl Requester for BarePeer {
    fn round_trip(&mut self, msg: &[u8; PAYLOAD], _reply: &mut [u8; PAYLOAD]) -> Res<()> {
        let seq = seq_of(msg);
        // Release/Acquire: the usual hand-over; the value itself is all that travels.
        self.page.atomic(PING).store(seq, Ordering::Release);
        let pong = self.page.atomic(PONG);
        spin_until(|| pong.load(Ordering::Acquire) == seq, "bare pong", WAIT_TIMEOUT)
    }

    fn echoes(&self) -> bool {
        false
    }
}

impl Responder for BarePeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        let ping = self.page.atomic(PING);
        // Acquire/Release: pairs with the requester's stores and loads.
        spin_until(|| ping.load(Ordering::Acquire) == seq, "bare ping", WAIT_TIMEOUT)?;
        self.page.atomic(PONG).store(seq, Ordering::Release);
        Ok(())
    }
}

/// The parking limit: the same words as futexes; a waiter never spins.
struct FutexPeer {
    page: SharedPage,
}

impl FutexPeer {
    fn signal(&self, offset: usize, seq: u64) {
        let w = self.page.futex(offset);
        // Release: publishes the value before the wake-up.
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
    fn round_trip(&mut self, msg: &[u8; PAYLOAD], _reply: &mut [u8; PAYLOAD]) -> Res<()> {
        let seq = seq_of(msg);
        self.signal(PING, seq);
        self.await_value(PONG, seq)
    }

    fn echoes(&self) -> bool {
        false
    }
}

impl Responder for FutexPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        self.await_value(PING, seq)?;
        self.signal(PONG, seq);
        Ok(())
    }
}

/// A blocking byte stream each way: two pipes, a Unix socket or a TCP connection.
struct IoPeer<R, W> {
    rx: R,
    tx: W,
}

impl<R: Read, W: Write> Requester for IoPeer<R, W> {
    fn round_trip(&mut self, msg: &[u8; PAYLOAD], reply: &mut [u8; PAYLOAD]) -> Res<()> {
        self.tx.write_all(msg)?;
        self.rx.read_exact(reply)?;
        Ok(())
    }
}

impl<R: Read, W: Write> Responder for IoPeer<R, W> {
    fn serve(&mut self, seq: u64) -> Res<()> {
        let mut buf = [0u8; PAYLOAD];
        self.rx.read_exact(&mut buf)?;
        self.tx.write_all(&answer(&buf, seq)?)?;
        Ok(())
    }
}

/// A shmflow record stream each way over one arena.
struct ShmPeer {
    writer: StreamWriter,
    reader: StreamReader,
}

impl ShmPeer {
    fn open(arena: Arc<Arena>, out_channel: u32, in_channel: u32, policy: WaitPolicy) -> Res<Self> {
        let reader = StreamReader::new(arena.clone(), in_channel, CREDIT, policy)?;
        let writer = StreamWriter::new(arena, out_channel, CREDIT, policy, Some(WAIT_TIMEOUT))?;
        Ok(Self { writer, reader })
    }

    fn send(&mut self, record: &[u8]) -> Res<()> {
        self.writer.write(record)?;
        self.writer.flush()?;
        Ok(())
    }
}

impl Requester for ShmPeer {
    fn round_trip(&mut self, msg: &[u8; PAYLOAD], reply: &mut [u8; PAYLOAD]) -> Res<()> {
        self.send(msg)?;
        let got = self.reader.next(Some(WAIT_TIMEOUT), |p| {
            let fits = p.len() == PAYLOAD;
            if fits {
                reply.copy_from_slice(p);
            }
            fits
        })?;
        match got {
            Some(true) => Ok(()),
            Some(false) => Err(format!("a reply that is not {PAYLOAD} bytes").into()),
            None => Err("the responder ended its stream".into()),
        }
    }
}

impl Responder for ShmPeer {
    fn serve(&mut self, seq: u64) -> Res<()> {
        // The payload is checksummed in place, in the arena.
        let out =
            self.reader.next(Some(WAIT_TIMEOUT), |p| answer(p, seq))?.ok_or("the requester ended its stream")??;
        self.send(&out)
    }
}

fn arena_config() -> ArenaConfig {
    ArenaConfig {
        segment_size: 32 * 1024,
        segment_count: 16,
        ring_capacity: 16,
        max_channels: 2,
        max_partitions: 1,
        max_gates: 1,
        max_channels_per_gate: 64,
        max_workers: 2,
        max_tasks: 2,
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

/// Creates the shared resources of `peer`, spawns its responder (to answer `count`
/// requests) and returns the requester's end.
fn start(peer: Peer, count: u64, responder_cpu: Option<usize>) -> Res<Session> {
    let mut cmd = responder_command(peer, count, responder_cpu)?;
    match peer {
        Peer::Bare | Peer::Futex => {
            let page = SharedPage::create()?;
            pass_fds(&mut cmd, ENV_FDS, &[page.fd.as_raw_fd()]);
            let child = ChildGuard::spawn(&mut cmd, "latency", "responder", CHILD_DEADLINE)?;
            let requester: Box<dyn Requester> =
                if peer == Peer::Bare { Box::new(BarePeer { page }) } else { Box::new(FutexPeer { page }) };
            Ok(Session { requester, child })
        }
        Peer::Pipe => {
            let (ping_rx, ping_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let (pong_rx, pong_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            pass_fds(&mut cmd, ENV_FDS, &[ping_rx.as_raw_fd(), pong_tx.as_raw_fd()]);
            let child = ChildGuard::spawn(&mut cmd, "latency", "responder", CHILD_DEADLINE)?;
            // Close our copies of the responder's ends, so its death reads as end of file.
            drop((ping_rx, pong_tx));
            Ok(Session { requester: Box::new(IoPeer { rx: File::from(pong_rx), tx: File::from(ping_tx) }), child })
        }
        Peer::Unix => {
            let (mine, theirs) = UnixStream::pair()?;
            pass_fds(&mut cmd, ENV_FDS, &[theirs.as_raw_fd()]);
            let child = ChildGuard::spawn(&mut cmd, "latency", "responder", CHILD_DEADLINE)?;
            drop(theirs);
            Ok(Session { requester: Box::new(IoPeer { rx: mine.try_clone()?, tx: mine }), child })
        }
        Peer::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            cmd.env(ENV_PORT, listener.local_addr()?.port().to_string());
            let child = ChildGuard::spawn(&mut cmd, "latency", "responder", CHILD_DEADLINE)?;
            let stream = accept_within(&listener, WAIT_TIMEOUT, "responder")?;
            stream.set_nodelay(true)?;
            Ok(Session { requester: Box::new(IoPeer { rx: stream.try_clone()?, tx: stream }), child })
        }
        Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::create_memfd(&arena_config(), "latency")?);
            let requester = ShmPeer::open(arena.clone(), 0, 1, policy)?;
            arena.inherit_fd_into(&mut cmd)?;
            let child = ChildGuard::spawn(&mut cmd, "latency", "responder", CHILD_DEADLINE)?;
            Ok(Session { requester: Box::new(requester), child })
        }
    }
}

/// The command that re-executes this binary as the responder of `peer`. The responder
/// dies with the requester (PR_SET_PDEATHSIG).
fn responder_command(peer: Peer, count: u64, cpu: Option<usize>) -> Res<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ENV_PEER, peer.name()).env(ENV_COUNT, count.to_string()).stdin(Stdio::null());
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
    if let Ok(cpu) = std::env::var(ENV_CPU) {
        pin_to(cpu.parse()?)?;
    }
    let mut responder = open_responder(peer)?;
    for seq in 1..=count {
        responder.serve(seq)?;
    }
    Ok(())
}

fn open_responder(peer: Peer) -> Res<Box<dyn Responder>> {
    Ok(match peer {
        Peer::Bare => Box::new(BarePeer { page: SharedPage::inherited()? }),
        Peer::Futex => Box::new(FutexPeer { page: SharedPage::inherited()? }),
        Peer::Pipe => {
            let [rx, tx] = inherited_fds::<2>()?;
            Box::new(IoPeer { rx: File::from(rx), tx: File::from(tx) })
        }
        Peer::Unix => {
            let [fd] = inherited_fds::<1>()?;
            let stream = UnixStream::from(fd);
            Box::new(IoPeer { rx: stream.try_clone()?, tx: stream })
        }
        Peer::Tcp => {
            let port: u16 = env_var(ENV_PORT)?.parse()?;
            let stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.set_nodelay(true)?;
            Box::new(IoPeer { rx: stream.try_clone()?, tx: stream })
        }
        Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => {
            let policy = peer.policy().ok_or("a shmflow peer has a policy")?;
            let arena = Arc::new(Arena::attach_inherited()?);
            Box::new(ShmPeer::open(arena, 1, 0, policy)?)
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
    println!("# latency: one {PAYLOAD}-byte record, round trip between two processes\n");
    println!("- machine: {}, nproc {}", cpu_model(), nproc());
    match cpus {
        Some((a, b)) => println!("- requester pinned to CPU {a}, responders to CPU {b}"),
        None => println!("- not pinned"),
    }
    let per_round = |c: Counts| format!("{} warm-up + {} measured", c.warmup, c.measured);
    println!(
        "- mode {}: {} round(s) x (spinning peers {}, sleeping peers {}) per peer",
        plan.mode(),
        plan.rounds,
        per_round(plan.spinning),
        per_round(plan.sleeping)
    );
    println!("- timer overhead (Instant::now pair, min): {} ns, included in every RTT\n", timer_overhead_ns());
}

// ---------------------------------------------------------------------------------------
// Report

fn find(results: &[PeerResult], peer: Peer) -> Option<&PeerResult> {
    results.iter().find(|r| r.peer == peer)
}

/// p50, p99, p99.9 and max of a histogram.
fn quantiles(h: &Histogram<u64>) -> [u64; 4] {
    [h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max()]
}

fn print_table(results: &[PeerResult]) {
    println!("| peer | samples | RTT p50 | RTT p99 | RTT p99.9 | RTT max | one-way p50 | one-way p99 | one-way p99.9 | one-way max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let q = quantiles(&r.merged);
        let rtt: Vec<String> = q.iter().map(|v| v.to_string()).collect();
        let one: Vec<String> = q.iter().map(|v| (v / 2).to_string()).collect();
        println!("| {} | {} | {} | {} |", r.peer.name(), r.merged.len(), rtt.join(" | "), one.join(" | "));
    }
    println!("\n(all figures in ns; one-way = RTT / 2)");
}

/// A ratio of two peers' p50s: over all samples, and round by round.
struct Ratio {
    num: Peer,
    den: Peer,
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
}

fn ratio(results: &[PeerResult], num: Peer, den: Peer) -> Option<Ratio> {
    let (n, d) = (find(results, num)?, find(results, den)?);
    let div = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    Some(Ratio {
        num,
        den,
        overall: div(n.merged.value_at_quantile(0.5), d.merged.value_at_quantile(0.5)),
        per_round: n.round_p50.iter().zip(&d.round_p50).map(|(&a, &b)| div(a, b)).collect(),
    })
}

fn ratios(results: &[PeerResult]) -> Vec<Ratio> {
    [(Peer::ShmSpin, Peer::Bare), (Peer::ShmPark, Peer::Futex), (Peer::ShmAdaptive, Peer::Bare)]
        .into_iter()
        .filter_map(|(n, d)| ratio(results, n, d))
        .collect()
}

fn print_ratios(results: &[PeerResult], ratios: &[Ratio]) {
    println!();
    for r in ratios {
        let rounds: Vec<String> = r.per_round.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "- {} p50 / {} p50: {:.2} over all samples; median of rounds {:.2} (per round: {})",
            r.num.name(),
            r.den.name(),
            r.overall,
            r.round_median(),
            rounds.join(", ")
        );
    }
    if let Some(bare) = find(results, Peer::Bare) {
        let p: Vec<String> = bare.round_p50.iter().map(|v| v.to_string()).collect();
        println!(
            "- bare-atomic p50 per round: {} ns (a shift between rounds means the vCPUs moved; \
             MACHINE.md: near ~120, far ~410 on its EPYC)",
            p.join(", ")
        );
    }
}

/// Flat JSON records, one per figure.
fn json_records(plan: &Plan, results: &[PeerResult], ratios: &[Ratio]) -> String {
    let record = |system: &str, metric: &str, value: String| {
        format!(
            "  {{\"bench\":\"latency\",\"system\":\"{system}\",\"mode\":\"{}\",\"payload_bytes\":{PAYLOAD},\
             \"metric\":\"{metric}\",\"value\":{value}}}",
            plan.mode()
        )
    };
    let mut out = Vec::new();
    for r in results {
        let q = quantiles(&r.merged);
        for (metric, v) in ["p50_ns", "p99_ns", "p999_ns", "max_ns"].iter().zip(q) {
            out.push(record(r.peer.name(), metric, v.to_string()));
        }
        out.push(record(r.peer.name(), "oneway_p50_ns", (q[0] / 2).to_string()));
        out.push(record(r.peer.name(), "samples", r.merged.len().to_string()));
    }
    for r in ratios {
        let system = format!("{}/{}", r.num.name(), r.den.name());
        out.push(record(&system, "p50_ratio", format!("{:.3}", r.overall)));
        out.push(record(&system, "p50_ratio_round_median", format!("{:.3}", r.round_median())));
    }
    format!("[\n{}\n]\n", out.join(",\n"))
}
