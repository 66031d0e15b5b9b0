//! iceoryx2 0.10 publish-subscribe measured in the shapes of shmflow's own benches, next to a
//! bare shared-memory atomic ping-pong measured in the same run, so `tools/bench-report` can
//! put iceoryx2 beside shmflow and quote ratios.
//!
//! ```text
//!  this process (CPU a)                              this binary re-executed with
//!                                                    SHMFLOW_PEERS_ROLE=<role> (CPU b)
//!  latency, iceoryx2:
//!   seq n: loan N bytes, write all  -- "ping" -->    receive, read all N bytes (sum of the
//!          words, send                               u64 words), check seq and sum; loan N
//!   receive, read all N bytes, <-- "pong" --------   bytes, write [ping sum][seq + i*K ...]
//!   rtt = now - t0; check seq and sums after the clock stopped; one-way = rtt / 2
//!  latency, bare-atomic: one AtomicU64 per direction on a shared memfd page, spin + PAUSE
//!  throughput, iceoryx2:
//!   consumer: receive every sample, read        <--  producer: loan, write every byte, send;
//!   every byte, check sequence and sum               blocks while the subscriber is full
//! ```
//!
//! What is measured:
//! - `latency`: a ping-pong of one sample of 8 B, 64 B, 1 KiB, 32 KiB or 1 MiB between two
//!   processes over two publish-subscribe services ("ping" and "pong"), zero-copy (loan,
//!   write the payload in place, send). Both sides touch every payload byte: the sender writes
//!   all of it, the receiver sums all of its words before answering, and the answer is a
//!   sample of the same size carrying the sum. The requester checks sequence number and both
//!   sums outside the timed part. Mode `spin` busy-polls `Subscriber::receive` with a PAUSE
//!   hint; mode `park` sleeps in the kernel on an iceoryx2 event service (a `Listener`'s
//!   `timed_wait`; the sender calls `Notifier::notify` after each send). Reported as one-way
//!   (RTT / 2) percentiles from an hdrhistogram of RTTs.
//! - `bare-atomic`: the same round trip as one 8-byte word per direction on a shared memfd
//!   page, spinning with PAUSE: the hardware limit, for the ratio iceoryx2 / bare-atomic.
//!   Rounds interleave all systems and payloads (several rounds, merged histograms), because
//!   the vCPUs of our machines move between "near" and "far" placement within minutes
//!   (MACHINE.md); ratios are also given as the median of the per-round ratios.
//! - `throughput`: one producer process streaming to one consumer process, every byte
//!   written by the producer and read (summed) by the consumer, which checks that it got every
//!   sequence number in order. Shapes: one sample per 8 B or 1 KiB record
//!   (`sample-per-record`), and 32 KiB samples each packed with 8 B or 1 KiB records
//!   (`32k-batch`). iceoryx2 has no credit flow control; here the service has
//!   `enable_safe_overflow(false)` (a full subscriber buffer is never overwritten) and the
//!   publisher `BackpressureStrategy::RetryUntilDelivered` with a backpressure handler that
//!   keeps retrying (iceoryx2's adaptive wait: `sched_yield` 10 000 times, then sleeps of
//!   100 us, later 10 ms) but fails the run after [`WAIT_TIMEOUT`]; the subscriber buffer is
//!   [`TPUT_BUFFER_RECORD`] samples per record, [`TPUT_BUFFER_BATCH`] 32 KiB samples
//!   (512 KiB in flight, the order of shmflow's credit), one loaned sample at a time. The
//!   producer sends a hello sample and waits for "go" until the consumer has received it: a
//!   subscriber created before its publisher connects only on its first `receive`, and a
//!   publisher that fills the buffer before then takes the subscriber for gone and drops
//!   the sample (seen here as lost data before the handshake was added).
//!
//! How this differs from iceoryx2's own benchmark (`benchmarks/publish-subscribe`): that one
//! sends samples whose payload nobody writes or reads after the loan, so it measures the
//! hand-over of a pointer offset whatever the size; here every byte is written by the sender
//! and read by the receiver, as a real consumer of the data must, so the cost of moving the
//! payload between the cores' caches is in every figure. It also runs one thread per side in
//! one process by default; here the two sides are separate processes pinned to different
//! CPUs, and the bare atomic round trip is measured in the same run for scale.
//!
//! Files: iceoryx2 keeps its management files under a root directory and its shared memory
//! in /dev/shm. Each run gets its own root (`$TMPDIR/shmflow-peers-<pid>-<nonce>/`) and file
//! prefix (`sfp<pid>x<nonce>_`); at the end the run lists what iceoryx2 left behind under
//! either (printed), then removes it all, also on error paths. A run that was killed is cleaned up by the next one (its pid is gone).
//!
//! `cargo bench -p shmflow-peers --bench iceoryx2 -- --bench [--json PATH] [--no-pin]` is the
//! full run (about a minute); iceoryx2 logs warnings to stderr (`IOX2_LOG_LEVEL=debug` for
//! more); without `--bench` (as `cargo test --workspace --all-targets` runs it) a smoke run
//! of a few seconds exercises every case. Every wait is bounded, a watchdog kills a child that
//! outlives its deadline, and a guard kills and reaps it on every exit path.

use hdrhistogram::Histogram;
use iceoryx2::config::Config;
use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::port::{BackpressureAction, BackpressureInfo};
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::{event, publish_subscribe};
use serde_json::{json, Value};
use shmflow::sync::Ordering;
use std::fmt::Debug;
use std::fs::File;
use std::io::BufRead;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

// The shared plumbing is written for the root crate's older MSRV.
#[allow(clippy::manual_is_multiple_of)]
#[path = "../../common/mod.rs"]
mod common;
use clap::Parser;
use common::args::BenchArgs;
use common::{cpu_model, cpu_pair, die_with_parent, env_var, exit_code, pass_fds, pin_to, ChildGuard, Producer, Res};

/// The bare peer's word. It is `shmflow::sync`'s atomic, as the project asks; the allow is for
/// clippy resolving that re-export to the std type a clippy.toml may ban.
#[allow(clippy::disallowed_types)]
type Word = shmflow::sync::AtomicU64;

type Ipc = ipc::Service;

/// Names the role of a re-executed child; its presence makes the process a child.
const ENV_ROLE: &str = "SHMFLOW_PEERS_ROLE";
/// The CPU a child pins itself to.
const ENV_CPU: &str = "SHMFLOW_PEERS_CPU";
/// iceoryx2's root directory and file prefix of this run.
const ENV_ROOT: &str = "SHMFLOW_PEERS_IOX_ROOT";
const ENV_PREFIX: &str = "SHMFLOW_PEERS_IOX_PREFIX";
/// The base name of the services of one case.
const ENV_SERVICE: &str = "SHMFLOW_PEERS_SERVICE";
/// Payload words of a latency sample; words per record and per sample of a throughput case.
const ENV_WORDS: &str = "SHMFLOW_PEERS_WORDS";
const ENV_RECORD_WORDS: &str = "SHMFLOW_PEERS_RECORD_WORDS";
/// Round trips a latency responder answers; samples a throughput producer sends.
const ENV_COUNT: &str = "SHMFLOW_PEERS_COUNT";
/// `spin` or `park`.
const ENV_MODE: &str = "SHMFLOW_PEERS_MODE";
/// The subscriber buffer (samples) of a throughput case.
const ENV_BUFFER: &str = "SHMFLOW_PEERS_BUFFER";
/// Inherited fd numbers (the bare peer's page).
const ENV_FDS: &str = "SHMFLOW_PEERS_FDS";

const ROLE_BARE: &str = "latency-bare";
const ROLE_IOX_LATENCY: &str = "latency-iceoryx2";
const ROLE_IOX_PRODUCER: &str = "throughput-iceoryx2";

/// The longest one wait for the other side may take before the run fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one sleep of a parked waiter before it re-checks its deadline.
const PARK_SLICE: Duration = Duration::from_millis(50);
/// After waiting this long, a waiter also checks that the other process is alive.
const SLOW_WAIT: Duration = Duration::from_millis(100);
/// The longest one child may live; its watchdog kills it after that.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
/// Size of the bare peer's shared page, and the offsets of its two words (128 bytes apart,
/// so the adjacent-line prefetcher does not pair their cache lines).
const PAGE: usize = 4096;
const PING: usize = 0;
const PONG: usize = 128;

/// Latency payloads, bytes.
const PAYLOADS: [usize; 5] = [8, 64, 1024, 32 * 1024, 1024 * 1024];
/// One-way percentiles of the curve records.
const CURVE: [f64; 7] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0];
/// Throughput: bytes per 32 KiB sample, record sizes, subscriber buffers (samples).
const BATCH_BYTES: usize = 32 * 1024;
const RECORD_SIZES: [usize; 2] = [8, 1024];
/// Subscriber buffer of the one-sample-per-record cases, in samples.
const TPUT_BUFFER_RECORD: usize = 256;
/// Subscriber buffer of the 32 KiB-sample cases, in samples (512 KiB in flight).
const TPUT_BUFFER_BATCH: usize = 16;

/// The step between consecutive words of a record: word i of record `seq` is
/// `seq + i * K` (wrapping), so the sum of a record is known in O(1).
const K: u64 = 0x9E37_79B9_7F4A_7C15;

fn main() -> ExitCode {
    iceoryx2::prelude::set_log_level_from_env_or(LogLevel::Warn);
    let (who, result) = match std::env::var(ENV_ROLE) {
        Ok(role) => (format!("iceoryx2 bench child ({role})"), child_main(&role)),
        Err(_) => ("iceoryx2 bench".to_string(), parent_main()),
    };
    exit_code(&who, result)
}

/// Converts an iceoryx2 error (any `Debug`) into ours, saying what failed.
fn iox<E: Debug>(what: &str) -> impl FnOnce(E) -> Box<dyn std::error::Error + Send + Sync> + '_ {
    move |e| format!("iceoryx2: {what}: {e:?}").into()
}

// ---------------------------------------------------------------------------------------
// Records: what is written, and the sums that check it

/// `0 + 1 + ... + m` (wrapping).
fn tri(m: u64) -> u64 {
    if m.is_multiple_of(2) {
        (m / 2).wrapping_mul(m.wrapping_add(1))
    } else {
        m.wrapping_mul(m.wrapping_add(1) / 2)
    }
}

/// The sum of the `m` records of `n` words from record `first` on.
fn records_sum(first: u64, m: u64, n: u64) -> u64 {
    n.wrapping_mul(m.wrapping_mul(first).wrapping_add(tri(m.saturating_sub(1))))
        .wrapping_add(m.wrapping_mul(K).wrapping_mul(tri(n.saturating_sub(1))))
}

/// The sum of all words: reads every payload byte.
#[inline]
fn sum_words(p: &[u64]) -> u64 {
    p.iter().fold(0u64, |a, &w| a.wrapping_add(w))
}

/// Writes record `seq` into `buf` (every word).
#[inline]
fn fill_record(buf: &mut [MaybeUninit<u64>], seq: u64) {
    let mut v = seq;
    for w in buf {
        w.write(v);
        v = v.wrapping_add(K);
    }
}

/// Writes consecutive records of `n` words from record `first` on into `buf`.
#[inline]
fn fill_records(buf: &mut [MaybeUninit<u64>], first: u64, n: usize) {
    if n == 1 {
        for (j, w) in buf.iter_mut().enumerate() {
            w.write(first.wrapping_add(j as u64));
        }
    } else {
        for (j, chunk) in buf.chunks_exact_mut(n).enumerate() {
            fill_record(chunk, first.wrapping_add(j as u64));
        }
    }
}

/// Reads every word of a sample of `n`-word records from record `first` on: whether each
/// record starts with its sequence number and the words sum up as written.
#[inline]
fn check_records(p: &[u64], first: u64, n: usize, m: usize) -> bool {
    if p.len() != n * m {
        return false;
    }
    let mut bad = 0u64;
    let mut sum = 0u64;
    if n == 1 {
        for (j, &w) in p.iter().enumerate() {
            bad |= w ^ first.wrapping_add(j as u64);
            sum = sum.wrapping_add(w);
        }
    } else {
        for (j, c) in p.chunks_exact(n).enumerate() {
            bad |= c[0] ^ first.wrapping_add(j as u64);
            sum = sum.wrapping_add(sum_words(c));
        }
    }
    bad == 0 && sum == records_sum(first, m as u64, n as u64)
}

// ---------------------------------------------------------------------------------------
// iceoryx2's files of this run

/// Where iceoryx2 keeps the files of this run: its root directory and the prefix of every
/// file it creates (including those in /dev/shm).
#[derive(Clone)]
struct IoxFiles {
    root: PathBuf,
    prefix: String,
}

impl IoxFiles {
    fn new() -> Res<Self> {
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let nonce = format!("{:08x}", nanos ^ pid.rotate_left(16));
        let root = std::env::temp_dir().join(format!("shmflow-peers-{pid}-{nonce}"));
        Ok(Self { root, prefix: format!("sfp{pid}x{nonce}_") })
    }

    fn from_env() -> Res<Self> {
        Ok(Self { root: env_var(ENV_ROOT)?.into(), prefix: env_var(ENV_PREFIX)? })
    }

    fn to_env(&self, cmd: &mut Command) {
        cmd.env(ENV_ROOT, &self.root).env(ENV_PREFIX, &self.prefix);
    }

    /// A node of this run (no signal handlers: a Ctrl-C ends the bench at once).
    fn node(&self) -> Res<Node<Ipc>> {
        let mut config = Config::default();
        let root = format!("{}/", self.root.to_str().ok_or("the temporary directory is not UTF-8")?);
        config.global.set_root_path(&Path::new(root.as_bytes()).map_err(iox("root path"))?);
        config.global.prefix = FileName::new(self.prefix.as_bytes()).map_err(iox("file prefix"))?;
        NodeBuilder::new()
            .config(&config)
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<Ipc>()
            .map_err(iox("creating a node"))
    }

    /// Every file and directory of this run iceoryx2 still has: below the root, and in
    /// /dev/shm under the prefix.
    fn leftovers(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&p, out);
                    }
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out.extend(shm_entries(&self.prefix));
        out
    }

    /// Removes everything of this run.
    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.root);
        for p in shm_entries(&self.prefix) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Removes the files of earlier runs whose process is gone (a run that was killed).
    fn remove_stale() {
        let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("shmflow-peers-") else { continue };
            let Some((pid, nonce)) = rest.split_once('-') else { continue };
            let Ok(pid) = pid.parse::<libc::pid_t>() else { continue };
            // SAFETY: kill with signal 0 only checks whether the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                IoxFiles { root: e.path(), prefix: format!("sfp{pid}x{nonce}_") }.remove();
            }
        }
    }
}

/// The entries of /dev/shm whose names start with `prefix`.
fn shm_entries(prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).map(|e| e.path()).collect()
        })
        .unwrap_or_default()
}

/// Removes the files of the run when dropped, on every path.
struct FilesGuard(IoxFiles);

impl Drop for FilesGuard {
    fn drop(&mut self) {
        self.0.remove();
    }
}

// ---------------------------------------------------------------------------------------
// iceoryx2 services and ports

/// `spin` (busy-poll) or `park` (sleep on an event service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Spin,
    Park,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Spin => "spin",
            Mode::Park => "park",
        }
    }

    fn from_name(s: &str) -> Res<Self> {
        match s {
            "spin" => Ok(Mode::Spin),
            "park" => Ok(Mode::Park),
            _ => Err(format!("unknown mode {s:?}").into()),
        }
    }
}

type PubSub = publish_subscribe::PortFactory<Ipc, [u64], ()>;
type EventService = event::PortFactory<Ipc>;

/// Creates (or, in the child, opens) the publish-subscribe service `name` of `[u64]` samples:
/// one publisher, one subscriber, a subscriber buffer of `buffer` samples, no history, and
/// never overwriting a full buffer.
fn pubsub(node: &Node<Ipc>, name: &str, buffer: usize, create: bool) -> Res<PubSub> {
    let name = ServiceName::new(name).map_err(iox("service name"))?;
    let b = node
        .service_builder(&name)
        .publish_subscribe::<[u64]>()
        .max_publishers(1)
        .max_subscribers(1)
        .max_nodes(2)
        .history_size(0)
        .subscriber_max_buffer_size(buffer)
        .subscriber_max_borrowed_samples(1)
        .enable_safe_overflow(false);
    if create {
        b.create().map_err(iox("creating a publish-subscribe service"))
    } else {
        b.open().map_err(iox("opening a publish-subscribe service"))
    }
}

/// Creates (or opens) the event service `name`: one notifier, one listener.
fn event_service(node: &Node<Ipc>, name: &str, create: bool) -> Res<EventService> {
    let name = ServiceName::new(name).map_err(iox("service name"))?;
    let b = node.service_builder(&name).event().max_notifiers(1).max_listeners(1).max_nodes(2);
    if create {
        b.create().map_err(iox("creating an event service"))
    } else {
        b.open().map_err(iox("opening an event service"))
    }
}

/// A publisher of samples of `words` u64s, one loaned at a time, that retries (iceoryx2's
/// adaptive wait) while the subscriber's buffer is full, for at most [`WAIT_TIMEOUT`].
fn publisher(service: &PubSub, words: usize) -> Res<Publisher<Ipc, [u64], ()>> {
    service
        .publisher_builder()
        .initial_max_slice_len(words)
        .max_loaned_samples(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .set_backpressure_handler(|info: &BackpressureInfo| {
            if info.elapsed_time > WAIT_TIMEOUT {
                BackpressureAction::DiscardDataAndFail
            } else {
                BackpressureAction::Retry
            }
        })
        .create()
        .map_err(iox("creating a publisher"))
}

fn subscriber(service: &PubSub, buffer: usize) -> Res<Subscriber<Ipc, [u64], ()>> {
    service.subscriber_builder().buffer_size(buffer).create().map_err(iox("creating a subscriber"))
}

/// One end of a two-way iceoryx2 link: a publisher on one service, a subscriber on the
/// other, and in park mode a notifier and a listener on two event services. The services
/// are kept here so that they live as long as the ports.
struct Link {
    tx: Publisher<Ipc, [u64], ()>,
    rx: Subscriber<Ipc, [u64], ()>,
    park: Option<(Notifier<Ipc>, Listener<Ipc>)>,
    words: usize,
    _services: (PubSub, PubSub, Option<(EventService, EventService)>),
}

impl Link {
    /// The requester's end (`create`: it creates the services) or the responder's end of the
    /// services `base/ping` and `base/pong`, with `words`-word samples.
    fn open(node: &Node<Ipc>, base: &str, words: usize, mode: Mode, requester: bool) -> Res<Self> {
        let (out, inn) = if requester { ("ping", "pong") } else { ("pong", "ping") };
        // The requester creates every service; the responder opens them. Each end creates its
        // subscriber before its publisher, so a publisher always finds the peer it answers.
        let in_service = pubsub(node, &format!("{base}/{inn}"), 2, requester)?;
        let out_service = pubsub(node, &format!("{base}/{out}"), 2, requester)?;
        let rx = subscriber(&in_service, 2)?;
        let tx = publisher(&out_service, words)?;
        let (park, events) = match mode {
            Mode::Spin => (None, None),
            Mode::Park => {
                let in_ev = event_service(node, &format!("{base}/{inn}-event"), requester)?;
                let out_ev = event_service(node, &format!("{base}/{out}-event"), requester)?;
                let listener = in_ev.listener_builder().create().map_err(iox("creating a listener"))?;
                let notifier = out_ev.notifier_builder().create().map_err(iox("creating a notifier"))?;
                (Some((notifier, listener)), Some((in_ev, out_ev)))
            }
        };
        Ok(Self { tx, rx, park, words, _services: (in_service, out_service, events) })
    }

    /// Loans a sample, lets `fill` write every word of it, sends it (and notifies in park
    /// mode).
    #[inline]
    fn send(&self, fill: impl FnOnce(&mut [MaybeUninit<u64>])) -> Res<()> {
        let mut sample = self.tx.loan_slice_uninit(self.words).map_err(iox("loan"))?;
        fill(sample.payload_mut());
        // SAFETY: every `fill` passed here writes every element of the slice it is given
        // (fill_record / fill_records / the pong writer), so the payload is initialized.
        let sample = unsafe { sample.assume_init() };
        if sample.send().map_err(iox("send"))? == 0 {
            return Err("iceoryx2: a sample reached no subscriber".into());
        }
        if let Some((notifier, _)) = &self.park {
            notifier.notify().map_err(iox("notify"))?;
        }
        Ok(())
    }

    /// Waits (spinning or parked) for the next sample; see [`wait_sample`].
    #[inline]
    fn recv<R>(&self, read: impl FnOnce(&[u64]) -> R, alive: impl FnMut() -> Res<()>) -> Res<R> {
        wait_sample(&self.rx, self.park.as_ref().map(|(_, l)| l), read, alive)
    }
}

/// Waits for the next sample of `rx`, at most [`WAIT_TIMEOUT`], busy-polling with a PAUSE
/// hint or, given a `listener`, sleeping on it; returns what `read` makes of its payload.
/// `alive` is asked after [`SLOW_WAIT`] whether the other process still runs.
#[inline]
fn wait_sample<R>(
    rx: &Subscriber<Ipc, [u64], ()>,
    listener: Option<&Listener<Ipc>>,
    read: impl FnOnce(&[u64]) -> R,
    mut alive: impl FnMut() -> Res<()>,
) -> Res<R> {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    loop {
        if let Some(sample) = rx.receive().map_err(iox("receive"))? {
            return Ok(read(sample.payload()));
        }
        match listener {
            None => {
                std::hint::spin_loop();
                spins = spins.wrapping_add(1);
                if !spins.is_multiple_of(1024) {
                    continue;
                }
            }
            Some(listener) => {
                listener.timed_wait(|_| {}, PARK_SLICE).map_err(iox("timed_wait"))?;
            }
        }
        let waited = since.get_or_insert_with(Instant::now).elapsed();
        if waited > SLOW_WAIT {
            alive()?;
        }
        if waited > WAIT_TIMEOUT {
            return Err(format!("no sample within {WAIT_TIMEOUT:?}").into());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The bare peer's shared page

/// One page of a memfd, mapped shared in both processes.
struct SharedPage {
    map: memmap2::MmapRaw,
    fd: OwnedFd,
}

impl SharedPage {
    fn create() -> Res<Self> {
        // SAFETY: the name is a NUL-terminated literal and the flags are valid.
        let raw = unsafe { libc::memfd_create(c"shmflow-peers-bare".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()).into());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        file.set_len(PAGE as u64)?;
        Self::map(file.into())
    }

    fn inherited() -> Res<Self> {
        let fd = common::inherited_fds(ENV_FDS, 1)?.pop().ok_or("one fd was checked")?;
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

    fn word(&self, offset: usize) -> &Word {
        assert!(offset.is_multiple_of(8) && offset + 8 <= PAGE, "word offset {offset} is a constant inside the page");
        // SAFETY: the word lies inside the mapping, which lives as long as `self`, and is
        // 8-aligned (the mapping is page-aligned). The memfd starts zero-filled and both
        // processes access this word only through this atomic type, so every value is valid.
        unsafe { &*self.map.as_ptr().add(offset).cast::<Word>() }
    }
}

/// Spins with PAUSE until `word` holds `want`; checks the clock every 1024 spins and, after
/// [`SLOW_WAIT`], whether the other process is alive.
#[inline]
fn spin_for(word: &Word, want: u64, mut alive: impl FnMut() -> Res<()>) -> Res<()> {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    // Acquire: pairs with the other process's Release store of `want`.
    while word.load(Ordering::Acquire) != want {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(1024) {
            let waited = since.get_or_insert_with(Instant::now).elapsed();
            if waited > SLOW_WAIT {
                alive()?;
            }
            if waited > WAIT_TIMEOUT {
                return Err(format!("no bare signal {want} within {WAIT_TIMEOUT:?}").into());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Children

fn child_main(role: &str) -> Res<()> {
    if let Ok(cpu) = std::env::var(ENV_CPU) {
        pin_to(cpu.parse()?)?;
    }
    let count: u64 = env_var(ENV_COUNT)?.parse()?;
    match role {
        ROLE_BARE => bare_responder(count),
        ROLE_IOX_LATENCY => iox_responder(count),
        ROLE_IOX_PRODUCER => iox_producer(count),
        _ => Err(format!("unknown role {role:?}").into()),
    }
}

fn bare_responder(count: u64) -> Res<()> {
    let page = SharedPage::inherited()?;
    for seq in 1..=count {
        spin_for(page.word(PING), seq, || Ok(()))?;
        // Release: pairs with the requester's Acquire load in `spin_for`.
        page.word(PONG).store(seq, Ordering::Release);
    }
    Ok(())
}

/// Answers `count` pings (1, 2, ...), after a hello pong (0) that tells the requester its
/// ports exist; exits on the requester's last ping (`count + 1`).
fn iox_responder(count: u64) -> Res<()> {
    let words: usize = env_var(ENV_WORDS)?.parse()?;
    let mode = Mode::from_name(&env_var(ENV_MODE)?)?;
    let files = IoxFiles::from_env()?;
    let node = files.node()?;
    let link = Link::open(&node, &env_var(ENV_SERVICE)?, words, mode, false)?;
    let pong = |seq: u64, ping_sum: u64| {
        move |buf: &mut [MaybeUninit<u64>]| {
            if let Some((first, rest)) = buf.split_first_mut() {
                first.write(ping_sum);
                fill_record(rest, seq.wrapping_add(K));
            }
        }
    };
    link.send(pong(0, 0))?;
    for seq in 1..=count {
        let (len, first, sum) = link.recv(|p| (p.len(), p.first().copied(), sum_words(p)), || Ok(()))?;
        if len != words || first != Some(seq) || sum != records_sum(seq, 1, words as u64) {
            return Err(format!("ping {seq}: {len} words, first {first:?}, sum {sum:#x}: not what was sent").into());
        }
        link.send(pong(seq, sum))?;
    }
    let last = link.recv(|p| p.first().copied(), || Ok(()))?;
    if last != Some(count + 1) {
        return Err(format!("expected the last ping {}, got {last:?}", count + 1).into());
    }
    Ok(())
}

/// Streams `count` samples of consecutive records once told "go"; says "sent", then keeps
/// its publisher until its stdin closes (the consumer has everything by then).
fn iox_producer(count: u64) -> Res<()> {
    let words: usize = env_var(ENV_WORDS)?.parse()?;
    let n: usize = env_var(ENV_RECORD_WORDS)?.parse()?;
    let buffer: usize = env_var(ENV_BUFFER)?.parse()?;
    if n == 0 || !words.is_multiple_of(n) {
        return Err(format!("{words} words per sample do not hold whole {n}-word records").into());
    }
    let m = (words / n) as u64;
    let files = IoxFiles::from_env()?;
    let node = files.node()?;
    let service = pubsub(&node, &env_var(ENV_SERVICE)?, buffer, false)?;
    let tx = publisher(&service, words)?;
    // A hello sample: once the consumer has it, its subscriber is connected. (A subscriber
    // created before the publisher connects on its first receive; a publisher that finds
    // the buffer full before that treats the subscriber as gone and drops the sample.)
    let hello = tx.loan_slice_uninit(words).map_err(iox("loan"))?;
    let hello = hello.write_from_fn(|_| u64::MAX);
    hello.send().map_err(iox("send"))?;
    println!("ready");
    let mut lines = std::io::stdin().lock().lines();
    match lines.next() {
        Some(Ok(l)) if l == "go" => {}
        other => return Err(format!("expected \"go\", got {other:?}").into()),
    }
    for k in 0..count {
        let mut sample = tx.loan_slice_uninit(words).map_err(iox("loan"))?;
        fill_records(sample.payload_mut(), k * m, n);
        // SAFETY: fill_records wrote every element: `words` is a multiple of `n`, so the
        // chunks of `n` (or the single words) cover the whole slice.
        let sample = unsafe { sample.assume_init() };
        if sample.send().map_err(iox("send"))? == 0 {
            return Err(format!("sample {k} reached no subscriber").into());
        }
    }
    println!("sent {count}");
    for line in lines {
        line?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Plan and arguments

/// Round trips of one case in one round.
#[derive(Debug, Clone, Copy)]
struct Counts {
    warmup: u64,
    measured: u64,
}

/// How much to measure.
struct Plan {
    full: bool,
    rounds: u32,
}

impl Plan {
    fn run(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
        }
    }

    /// Round trips per round of the bare peer.
    fn bare(&self) -> Counts {
        if self.full {
            Counts { warmup: 10_000, measured: 100_000 }
        } else {
            Counts { warmup: 200, measured: 2_000 }
        }
    }

    /// Round trips per round of iceoryx2 with `payload` bytes in `mode`: full, about a
    /// quarter of a second each; quick, a few hundred milliseconds in all (in a debug build).
    fn iox(&self, mode: Mode, payload: usize) -> Counts {
        let c = |warmup, measured| Counts { warmup, measured };
        match (self.full, mode, payload) {
            (true, Mode::Spin, p) if p <= 1024 => c(2_000, 40_000),
            (true, Mode::Spin, p) if p <= 32 * 1024 => c(1_000, 10_000),
            (true, Mode::Spin, _) => c(50, 500),
            (true, Mode::Park, p) if p <= 1024 => c(300, 3_000),
            (true, Mode::Park, p) if p <= 32 * 1024 => c(200, 2_000),
            (true, Mode::Park, _) => c(30, 300),
            (false, _, p) if p <= 1024 => c(50, 300),
            (false, _, p) if p <= 32 * 1024 => c(20, 100),
            (false, _, _) => c(3, 20),
        }
    }

    /// Samples (warm-up, measured) of a throughput case.
    fn tput(&self, case: TputCase) -> Counts {
        let c = |warmup, measured| Counts { warmup, measured };
        match (self.full, case.batched, case.record_bytes) {
            (true, true, _) => c(4_000, 40_000),
            (true, false, 8) => c(300_000, 3_000_000),
            (true, false, _) => c(100_000, 1_000_000),
            (false, true, _) => c(50, 300),
            (false, false, _) => c(1_000, 10_000),
        }
    }
}

/// The iceoryx2 bench's flags.
#[derive(Parser)]
#[command(name = "iceoryx2", about = "iceoryx2 as a peer: cross-process latency and throughput")]
struct Args {
    #[command(flatten)]
    bench: BenchArgs,
    /// Do not pin the two processes to CPUs.
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pin: bool,
}

fn parse_args() -> Res<Args> {
    Ok(Args::parse())
}

// ---------------------------------------------------------------------------------------
// The parent: latency

/// What the parent needs to start children.
struct Ctx {
    files: IoxFiles,
    node: Node<Ipc>,
    child_cpu: Option<usize>,
    /// Numbers the services of each case.
    cases: u32,
}

impl Ctx {
    /// The command that re-executes this binary as a child with `role`; the child dies with
    /// this process (PR_SET_PDEATHSIG).
    fn child_command(&self, role: &str, count: u64) -> Res<Command> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(ENV_ROLE, role).env(ENV_COUNT, count.to_string()).stdin(Stdio::null());
        if let Some(cpu) = self.child_cpu {
            cmd.env(ENV_CPU, cpu.to_string());
        }
        self.files.to_env(&mut cmd);
        die_with_parent(&mut cmd);
        Ok(cmd)
    }

    /// A service base name used once in this run.
    fn service_base(&mut self, what: &str) -> String {
        self.cases += 1;
        format!("shmflow-peers/{what}/{}", self.cases)
    }
}

fn new_histogram() -> Res<Histogram<u64>> {
    // 1 ns .. 60 s at 3 significant digits; larger values saturate.
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

/// A child's liveness check for waits: an error once it has exited.
fn alive_check(child: &mut ChildGuard) -> impl FnMut() -> Res<()> + '_ {
    move || match child.child.try_wait()? {
        None => Ok(()),
        Some(status) => Err(format!("the child exited early: {status}").into()),
    }
}

/// The bare atomic ping-pong: RTTs of `counts.measured` round trips.
fn run_bare(ctx: &Ctx, counts: Counts) -> Res<Histogram<u64>> {
    let page = SharedPage::create()?;
    let mut cmd = ctx.child_command(ROLE_BARE, counts.warmup + counts.measured)?;
    pass_fds(&mut cmd, ENV_FDS, &[page.fd.as_raw_fd()]);
    let mut child = ChildGuard::spawn(&mut cmd, "iceoryx2", "bare responder", CHILD_DEADLINE)?;
    let mut hist = new_histogram()?;
    {
        let mut alive = alive_check(&mut child);
        for seq in 1..=counts.warmup + counts.measured {
            let t0 = Instant::now();
            // Release: pairs with the responder's Acquire load in `spin_for`.
            page.word(PING).store(seq, Ordering::Release);
            spin_for(page.word(PONG), seq, &mut alive)?;
            let rtt = t0.elapsed();
            if seq > counts.warmup {
                hist.saturating_record(rtt.as_nanos().min(u128::from(u64::MAX)) as u64);
            }
        }
    }
    child.finish(WAIT_TIMEOUT)?;
    Ok(hist)
}

/// The iceoryx2 ping-pong of `payload` bytes in `mode`: RTTs of `counts.measured` round trips.
fn run_iox_latency(ctx: &mut Ctx, mode: Mode, payload: usize, counts: Counts) -> Res<Histogram<u64>> {
    let words = payload / 8;
    let base = ctx.service_base(&format!("latency-{}-{payload}", mode.name()));
    let link = Link::open(&ctx.node, &base, words, mode, true)?;
    let mut cmd = ctx.child_command(ROLE_IOX_LATENCY, counts.warmup + counts.measured)?;
    cmd.env(ENV_SERVICE, &base).env(ENV_WORDS, words.to_string()).env(ENV_MODE, mode.name());
    let mut child = ChildGuard::spawn(&mut cmd, "iceoryx2", "latency responder", CHILD_DEADLINE)?;
    let mut hist = new_histogram()?;
    {
        let mut alive = alive_check(&mut child);
        // The hello pong: the responder's ports exist.
        let hello = link.recv(|p| p.len(), &mut alive)?;
        if hello != words {
            return Err(format!("a hello of {hello} words, expected {words}").into());
        }
        for seq in 1..=counts.warmup + counts.measured {
            let t0 = Instant::now();
            link.send(|buf| fill_record(buf, seq))?;
            let (len, first, sum) = link.recv(|p| (p.len(), p.first().copied(), sum_words(p)), &mut alive)?;
            let rtt = t0.elapsed();
            let ping_sum = records_sum(seq, 1, words as u64);
            let want = ping_sum.wrapping_add(records_sum(seq, 1, words as u64).wrapping_sub(seq));
            if len != words || first != Some(ping_sum) || sum != want {
                return Err(format!("pong {seq}: {len} words, first {first:?}, sum {sum:#x}: wrong echo").into());
            }
            if seq > counts.warmup {
                hist.saturating_record(rtt.as_nanos().min(u128::from(u64::MAX)) as u64);
            }
        }
        // The last ping lets the responder exit.
        link.send(|buf| fill_record(buf, counts.warmup + counts.measured + 1))?;
    }
    child.finish(WAIT_TIMEOUT)?;
    Ok(hist)
}

/// One latency series: a system, mode and payload, merged over rounds.
struct Series {
    system: &'static str,
    mode: Mode,
    payload: usize,
    merged: Histogram<u64>,
    round_p50: Vec<u64>,
}

impl Series {
    fn new(system: &'static str, mode: Mode, payload: usize) -> Res<Self> {
        Ok(Self { system, mode, payload, merged: new_histogram()?, round_p50: Vec::new() })
    }

    fn add(&mut self, h: &Histogram<u64>) -> Res<()> {
        self.round_p50.push(h.value_at_quantile(0.5));
        self.merged.add(h).map_err(|e| format!("merging histograms: {e:?}"))?;
        Ok(())
    }
}

/// Runs every latency case, rounds interleaving the systems: the bare series first, then
/// iceoryx2 by payload and mode.
fn latency(ctx: &mut Ctx, plan: &Plan) -> Res<Vec<Series>> {
    let mut series = vec![Series::new("bare-atomic", Mode::Spin, 8)?];
    for payload in PAYLOADS {
        for mode in [Mode::Spin, Mode::Park] {
            series.push(Series::new("iceoryx2", mode, payload)?);
        }
    }
    for round in 1..=plan.rounds {
        for s in series.iter_mut() {
            let h = if s.system == "bare-atomic" {
                run_bare(ctx, plan.bare())
            } else {
                run_iox_latency(ctx, s.mode, s.payload, plan.iox(s.mode, s.payload))
            }
            .map_err(|e| format!("latency {} {} {} B (round {round}): {e}", s.system, s.mode.name(), s.payload))?;
            s.add(&h)?;
        }
    }
    Ok(series)
}

// ---------------------------------------------------------------------------------------
// The parent: throughput

/// A throughput case: records of `record_bytes`, one per sample or packed into 32 KiB
/// samples.
#[derive(Debug, Clone, Copy)]
struct TputCase {
    record_bytes: usize,
    batched: bool,
}

impl TputCase {
    fn all() -> Vec<TputCase> {
        let mut v = Vec::new();
        for batched in [false, true] {
            for record_bytes in RECORD_SIZES {
                v.push(TputCase { record_bytes, batched });
            }
        }
        v
    }

    fn batch(self) -> &'static str {
        if self.batched {
            "32k-batch"
        } else {
            "sample-per-record"
        }
    }

    fn sample_words(self) -> usize {
        if self.batched {
            BATCH_BYTES / 8
        } else {
            self.record_bytes / 8
        }
    }

    fn buffer(self) -> usize {
        if self.batched {
            TPUT_BUFFER_BATCH
        } else {
            TPUT_BUFFER_RECORD
        }
    }
}

/// Records and bytes per second of one measurement.
#[derive(Debug, Clone, Copy)]
struct Rate {
    records_per_s: f64,
    gb_per_s: f64,
}

/// Streams `counts` samples of `case` from a producer child to this process, checks every
/// record, and returns the rate over the measured samples.
fn run_iox_tput(ctx: &mut Ctx, case: TputCase, counts: Counts) -> Res<Rate> {
    let words = case.sample_words();
    let n = case.record_bytes / 8;
    let m = words / n;
    let base = ctx.service_base(&format!("throughput-{}-{}", case.batch(), case.record_bytes));
    let service = pubsub(&ctx.node, &base, case.buffer(), true)?;
    let rx = subscriber(&service, case.buffer())?;
    let total = counts.warmup + counts.measured;
    let mut cmd = ctx.child_command(ROLE_IOX_PRODUCER, total)?;
    cmd.env(ENV_SERVICE, &base)
        .env(ENV_WORDS, words.to_string())
        .env(ENV_RECORD_WORDS, n.to_string())
        .env(ENV_BUFFER, case.buffer().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut producer = Producer::spawn(&mut cmd, "iceoryx2", CHILD_DEADLINE, WAIT_TIMEOUT, SLOW_WAIT)?;
    producer.expect_line("ready")?;
    let hello = wait_sample(&rx, None, |p| p.len(), || producer.check_alive())?;
    if hello != words {
        return Err(format!("a hello of {hello} words, expected {words}").into());
    }
    producer.send("go")?;
    let mut t0 = Instant::now();
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    let mut k = 0u64;
    while k < total {
        let Some(sample) = rx.receive().map_err(iox("receive"))? else {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                let waited = since.get_or_insert_with(Instant::now).elapsed();
                if waited > SLOW_WAIT {
                    producer.check_alive()?;
                }
                if waited > WAIT_TIMEOUT {
                    return Err(format!("sample {k} of {total} did not come within {WAIT_TIMEOUT:?}").into());
                }
            }
            continue;
        };
        since = None;
        if !check_records(sample.payload(), k * m as u64, n, m) {
            return Err(format!("sample {k}: records out of order or corrupt").into());
        }
        drop(sample);
        k += 1;
        if k == counts.warmup {
            t0 = Instant::now();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let sent = producer.expect_line("sent")?;
    if sent != total.to_string() {
        return Err(format!("the producer sent {sent} samples, expected {total}").into());
    }
    producer.close_and_wait()?;
    let records = (counts.measured * m as u64) as f64;
    Ok(Rate { records_per_s: records / secs, gb_per_s: records * case.record_bytes as f64 / secs / 1e9 })
}

/// One throughput case over the rounds, with the bare round trip measured just before each.
struct TputResult {
    case: TputCase,
    rates: Vec<Rate>,
    bare_rtt_p50: Vec<u64>,
}

impl TputResult {
    fn median(&self, f: impl Fn(&Rate) -> f64) -> f64 {
        median(self.rates.iter().map(f).collect())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn throughput(ctx: &mut Ctx, plan: &Plan) -> Res<Vec<TputResult>> {
    let mut results: Vec<TputResult> = TputCase::all()
        .into_iter()
        .map(|case| TputResult { case, rates: Vec::new(), bare_rtt_p50: Vec::new() })
        .collect();
    let rounds = if plan.full { 3 } else { 1 };
    let bare = Counts { warmup: 1_000, measured: if plan.full { 20_000 } else { 1_000 } };
    for round in 1..=rounds {
        for r in results.iter_mut() {
            let what = format!("throughput {} {} B (round {round})", r.case.batch(), r.case.record_bytes);
            let h = run_bare(ctx, bare).map_err(|e| format!("{what}, bare round trip: {e}"))?;
            r.bare_rtt_p50.push(h.value_at_quantile(0.5));
            let rate = run_iox_tput(ctx, r.case, plan.tput(r.case)).map_err(|e| format!("{what}: {e}"))?;
            r.rates.push(rate);
        }
    }
    Ok(results)
}

// ---------------------------------------------------------------------------------------
// The parent: report

fn parent_main() -> Res<()> {
    let args = parse_args()?;
    let plan = Plan { full: args.bench.full, rounds: if args.bench.full { 5 } else { 1 } };
    let cpus = if args.pin { cpu_pair() } else { None };
    if let Some((mine, _)) = cpus {
        pin_to(mine)?;
    }
    IoxFiles::remove_stale();
    let guard = FilesGuard(IoxFiles::new()?);
    let node = guard.0.node()?;
    let mut ctx = Ctx { files: guard.0.clone(), node, child_cpu: cpus.map(|c| c.1), cases: 0 };

    println!("# iceoryx2 0.10 next to a bare atomic ping-pong, two processes\n");
    println!("- machine: {}", cpu_model());
    match cpus {
        Some((a, b)) => println!("- this process pinned to CPU {a}, children to CPU {b}"),
        None => println!("- not pinned"),
    }
    println!(
        "- run {}: {} latency round(s), iceoryx2 files under {}\n",
        plan.run(),
        plan.rounds,
        guard.0.root.display()
    );

    let series = latency(&mut ctx, &plan)?;
    let tput = throughput(&mut ctx, &plan)?;
    drop(ctx);
    let leftovers = guard.0.leftovers();

    print_latency(&series);
    print_tput(&tput);
    if leftovers.is_empty() {
        println!("\niceoryx2 left nothing behind under {} or in /dev/shm", guard.0.root.display());
    } else {
        println!("\niceoryx2 left {} entries behind (removed now):", leftovers.len());
        for p in &leftovers {
            println!("- {}", p.display());
        }
    }
    if let Some(path) = &args.bench.json {
        let text = serde_json::to_string_pretty(&json_records(&plan, &series, &tput))?;
        std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

/// Per-round ratios of `num`'s p50 to `den`'s p50, and over all samples.
fn p50_ratio(num: &Series, den: &Series) -> (f64, f64) {
    let div = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let overall = div(num.merged.value_at_quantile(0.5), den.merged.value_at_quantile(0.5));
    let rounds = num.round_p50.iter().zip(&den.round_p50).map(|(&a, &b)| div(a, b)).collect();
    (overall, median(rounds))
}

fn print_latency(series: &[Series]) {
    println!("## latency: one-way = RTT / 2, ns\n");
    println!("| system | mode | payload B | samples | p50 | p90 | p99 | p99.9 | max | RTT p50 | p50 / bare |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let bare = &series[0];
    for s in series {
        let q = |p: f64| s.merged.value_at_quantile(p) / 2;
        let (ratio, round_median) = p50_ratio(s, bare);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} (rounds: {:.2}) |",
            s.system,
            s.mode.name(),
            s.payload,
            s.merged.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            s.merged.max() / 2,
            s.merged.value_at_quantile(0.5),
            ratio,
            round_median
        );
    }
    let p: Vec<String> = bare.round_p50.iter().map(|v| v.to_string()).collect();
    println!("\nbare-atomic RTT p50 per round: {} ns (MACHINE.md: ~120 near, ~410 far; with PAUSE less)", p.join(", "));
}

fn print_tput(results: &[TputResult]) {
    println!("\n## throughput: 1 producer -> 1 consumer process, every byte written and read (median of rounds)\n");
    println!("| system | batch | record B | records/s | GB/s | GB/s per round | bare RTT p50 ns per round |");
    println!("|---|---|---:|---:|---:|---|---|");
    for r in results {
        let rtts: Vec<String> = r.bare_rtt_p50.iter().map(|v| v.to_string()).collect();
        let rates: Vec<String> = r.rates.iter().map(|x| format!("{:.2}", x.gb_per_s)).collect();
        println!(
            "| iceoryx2 | {} | {} | {:.3e} | {:.2} | {} | {} |",
            r.case.batch(),
            r.case.record_bytes,
            r.median(|x| x.records_per_s),
            r.median(|x| x.gb_per_s),
            rates.join(", "),
            rtts.join(", ")
        );
    }
}

/// Flat JSON records, one per figure.
fn json_records(plan: &Plan, series: &[Series], tput: &[TputResult]) -> Vec<Value> {
    let mut out = Vec::new();
    let lat = |system: &str, mode: Mode, payload: usize, metric: &str, value: f64| {
        json!({"bench": "latency", "system": system, "mode": mode.name(), "payload_bytes": payload,
               "metric": metric, "value": value, "run": plan.run()})
    };
    let bare = &series[0];
    for s in series {
        let q = |p: f64| (s.merged.value_at_quantile(p) / 2) as f64;
        for (metric, v) in [
            ("oneway_p50_ns", q(0.5)),
            ("oneway_p90_ns", q(0.9)),
            ("oneway_p99_ns", q(0.99)),
            ("oneway_p999_ns", q(0.999)),
            ("oneway_max_ns", (s.merged.max() / 2) as f64),
            ("rtt_p50_ns", s.merged.value_at_quantile(0.5) as f64),
            ("samples", s.merged.len() as f64),
        ] {
            out.push(lat(s.system, s.mode, s.payload, metric, v));
        }
        for pct in CURVE {
            let mut r = lat(s.system, s.mode, s.payload, "curve_oneway_ns", q(pct / 100.0));
            r["percentile"] = json!(pct);
            out.push(r);
        }
        if s.system != bare.system {
            let (overall, round_median) = p50_ratio(s, bare);
            let system = format!("{}/{}", s.system, bare.system);
            out.push(lat(&system, s.mode, s.payload, "oneway_p50_ratio", overall));
            out.push(lat(&system, s.mode, s.payload, "oneway_p50_ratio_round_median", round_median));
        }
    }
    for r in tput {
        let rec = |system: &str, metric: &str, value: f64| {
            json!({"bench": "throughput", "system": system, "shape": "1x1", "mode": "spin",
                   "record_bytes": r.case.record_bytes, "batch": r.case.batch(),
                   "metric": metric, "value": value, "run": plan.run()})
        };
        out.push(rec("iceoryx2", "records_per_s", r.median(|x| x.records_per_s)));
        out.push(rec("iceoryx2", "gb_per_s", r.median(|x| x.gb_per_s)));
        out.push(rec("bare-atomic", "rtt_ns", median(r.bare_rtt_p50.iter().map(|&v| v as f64).collect())));
    }
    out
}
