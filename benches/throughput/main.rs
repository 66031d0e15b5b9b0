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
//! span 33 segments. shmflow's consumer reads them as a deserializer that consumes a byte
//! stream would (the checksum is one): piece by piece in place as their segments arrive
//! (`set_spans_streamed`, `next_piece`; the checksum's state carried from piece to piece),
//! each segment released once read, never copied — the copy into the segments is the
//! producer's, once; the run fails if one was reassembled. The socket peers copy each
//! record once out of the kernel, into its buffer, and checksum it there; the in-process
//! channel reassembles it from its 32 KiB buffers. The 1 MiB case runs once more, shmflow only, with
//! 4 MiB segments (shape `1x1-4MiB-segments`, field `segment_bytes`): a user's tuning for
//! large records, which then fit one segment and are read in place. The other systems keep
//! their 32 KiB framing, so their figures would repeat the default case's and they skip it;
//! issue 6's 1 MiB goal is the default case's (`shape` 1x1), the tuned one is extra.
//!
//! shmflow's writers emit record by record (`RecordWriter::emit`), except the 8 B case,
//! whose writers hand their records over 4096 at a time (`RecordWriter::emit_batch`: the
//! same bytes on the same channels, written in runs per segment; the stop flag is looked
//! at between batches), as a producer with records at hand would (the stream peers' writers
//! frame their records in their own loop alike).
//!
//! shmflow runs with Flink's credits: 2 exclusive per channel, and 8 floating per writer
//! (Flink's receiver here is a union of W gates with 8 each; this one gate over all W x C
//! channels gets 8 W), producer pools of 2C + 8 segments, 10 per channel at most. The arena
//! is sized from the case: W (2C + 8) segments plus about 2 MiB (at least 8 segments) more
//! (4x1000: 253 MiB, 10x1000-skew: 630 MiB, 1x1 with 4 MiB segments: 72 MiB; above 1 GiB
//! is refused), channel blocks and a gate bitmap for all W x C channels, rings that hold a
//! channel's whole credit. Both processes prefault the arena before the run
//! (`Arena::prefault`, as Flink allocates its network buffers up front): otherwise the
//! first touch of each 4 KiB page is a page fault in each process (and a zeroed page for
//! the first), and the many-channel shapes, whose short runs touch nearly every page of a
//! 253-630 MiB arena once, measured mostly those (4x1000 8 B at 1 ms: about 55-190 CPU ns
//! per record without, 9-12 with, on a loaded machine); the socket peers reuse their
//! buffers from their start and never pay a fault twice.
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
//! caches can beat it. `handoff` (records above a segment) is the cross-core limit of a
//! 1x1 run of them: two threads on the consumer's and the producer's CPU hand 32 KiB
//! buffers over through a ring of 10 (the 1x1 credit window), the writer copying each
//! record piece by piece (once with ordinary, once with streaming stores; the faster
//! counts), the reader checksumming every byte of each piece, one atomic counter per
//! direction. Ordinary stores must take back each line the reader's core holds; streaming
//! ones are capped by memory write bandwidth: on our EPYC neither reaches memcpy's speed.
//! With SHMFLOW_TPUT_VERBOSE set, shmflow's writer, the hand-off's writer and memcpy also
//! print their median time per record for records above a segment: on a shared machine
//! the median record is one that no side was descheduled in, so these compare where the
//! window's rates (which count every preemption) do not. SHMFLOW_TPUT_CONSUMER_WAIT
//! (`adaptive`, the default, `park` or `spin`) sets the shmflow consumer gate's wait
//! policy: the adaptive consumer polls and yields for up to 100 us after each drain, which,
//! when the two vCPUs are hyperthreads of one core, competes with the producer's core.
//! SHMFLOW_TPUT_STREAM_COPIES (`1` or `0`; unset: the CPU's default, streaming on AMD)
//! makes the shmflow producer copy record pieces of 8 KiB and more into segments with streaming or
//! ordinary stores (`shmflow::sync::set_stream_large_copies`), for an A/B in one build.
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
//! --system NAME`; systems shmflow, tcp, unix, pipe, in-process-channel, memcpy, memread,
//! handoff);
//! without `--bench` (as `cargo test --benches` runs it) a smoke run with tiny windows
//! touches every shape, record kind and system once. Every wait is bounded, a watchdog
//! kills a producer that outlives its deadline, a guard kills and reaps it on every exit
//! path, in-process writers are stopped and joined on every exit path, and nothing goes to
//! /dev/shm (memfd arenas only).
//!
//! Modules: `plan` (systems, cases, flags), `records` (record bytes and checksums),
//! `consumer` (the run of every case, shmflow's consumer), `stream_in` / `stream_out` (the
//! stream peers' two ends with Flink's credits), `local` (the in-process peer and the
//! limits), `spawn` and `producer` (the producer process), `machine`, `report`.

use shmflow::gate::{GateItem, GatePiece, InputGateConfig, InputSpec};
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

#[path = "../common/mod.rs"]
mod common;
mod consumer;
mod local;
mod machine;
mod plan;
mod producer;
mod records;
mod report;
mod spawn;
mod stream_in;
mod stream_out;
use clap::Parser;
use common::args::BenchArgs;
use common::{
    accept_within, cpu_model, cpu_pair, die_with_parent, env_var, exit_code, inherited_fds, pass_fds, pin_to,
    proc_cpu_ns, rusage, spin_until, Producer, Res,
};
use consumer::*;
use local::*;
use machine::*;
use plan::*;
use producer::*;
use records::*;
use report::*;
use spawn::*;
use stream_in::*;
use stream_out::*;

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
