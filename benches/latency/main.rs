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
//! - `shm-record` (spin): the limit of a record of the same size, with no software
//!   around it: the payload at a fixed place on a shared memfd page, 8 bytes behind a
//!   sequence word that the writer stores last (Release) and the reader spins on (Acquire)
//!   with a prefetch of the second line (as the stream's reader does), then reads and
//!   checks the payload in place as the stream's ends do. At 64 B that is 72 bytes, two
//!   cache lines, as the stream's 68-byte slot-framed record; the bare atomic moves one.
//!   Up to 1 KiB, paired with the bare atomic as the shmflow peers are (its ratio is what
//!   the payload's lines add to the hardware limit);
//! - `shm-record-moving` (spin): the same, but each record goes right behind the previous
//!   one through a 32 KiB region (as a stream's records go through a segment; back to the
//!   start when the next would not fit), so every 64 B record is written into lines the
//!   reader has not yet polled;
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
//! Paired ratios, the ones the goals use: in every round each shmflow case runs between two
//! runs of its limit (bare-atomic for the spinning peers, futex for the parking ones; each as
//! many round trips as the case: shorter limit runs measured the futex ping-pong up to 15%
//! faster than its long run of the same round, see `Plan::paired_counts`), and its round's
//! ratio is its RTT p50 over the mean of those two p50s, so numerator and denominator share the
//! vCPUs' placement. Reported as the median over rounds, and split by placement when the run
//! saw two (a limit RTT at least 1.8x another; near below their geometric mean), each with the
//! limit's one-way p50 (JSON: `p50_ratio_paired`, `paired_rounds`,
//! `paired_limit_oneway_p50_ns`, each with a `placement` of `all`, `near` or `far`). `--rounds
//! N` sets the number of rounds.
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
//! The network stack's rows: in spin mode the gate reads a record in the data, as the stream
//! does. Its writer stores the record's length prefix last (Release, a 4-aligned word; the
//! bytes are the usual length-prefixed format), after the payload and after marking the word
//! behind it "nothing yet"; the gate spins on the prefix word at its read position
//! (`SingleInputGate::next_hot`: no clock, no notify-set drain, no position load while its
//! one producer is the only one with anything to say), so the record crosses in its own
//! lines. The writer still commits the segment's position and marks the gate's notify set
//! after every record (buffer timeout 0) for everyone else; those marks stay set and take
//! the "already marked" shortcut. What remains above the stream is software per hop: the
//! gate's and the record writer's bookkeeping around the record. In park mode both sit on
//! the futex wake-up, which dominates: per hop one FUTEX_WAKE (the writer's mark finds the
//! gate parked) and one FUTEX_WAIT, as the futex ping-pong; the woken gate finds the record
//! by its channel's committed position (the notify set is drained before its next park).
//! What it adds over the ping-pong is the user-space work between its wake-up and the
//! answer's FUTEX_WAKE (gate, checksum, record writer, mark). Its 482nd
//! record of 64 B spans two segments and is copied into the gate's reassembly buffer.
//!
//! `cargo bench --bench latency [-- --json PATH] [--sizes 64,1024] [--peers NAME,..]
//! [--rounds N] [--no-pin]` (argv holds `--bench`) does the full run (`--peers` keeps only the named
//! peers, such as `bare-atomic,futex,shmflow-spin,shmflow-netstack-spin`); without `--bench`
//! (as `cargo test --benches` runs it) a quick smoke exercises every peer at every size and
//! checks every answer, but asserts nothing on time. Every wait is bounded, a watchdog kills
//! a responder that outlives its deadline, a guard kills and reaps responders on every exit
//! path, and nothing goes to /dev/shm (memfds only).
//!
//! Modules: `plan` (peers, cases, flags), `requester` (runs every case), `payload`, `ends`
//! (the two ends of each peer), `netstack` (the network-stack peer), `setup` (a peer from
//! the requester's side), `responder` (the child process), `machine`, `report`.

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

#[path = "../common/mod.rs"]
mod common;
mod ends;
mod machine;
mod netstack;
mod payload;
mod plan;
mod report;
mod requester;
mod responder;
mod setup;
use clap::Parser;
use common::args::BenchArgs;
use common::{
    accept_within, cpu_model, cpu_pair, die_with_parent, env_var, exit_code, pass_fds, pin_to, spin_until, ChildGuard,
    Res,
};
use ends::*;
use machine::*;
use netstack::*;
use payload::*;
use plan::*;
use report::*;
use requester::*;
use responder::*;
use setup::*;

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
/// Set to `0` (requester's environment, inherited by the responder): readers do not evict
/// the segments they are done with (`shmflow::sync::set_evict_segments(false)`), for an
/// A/B of the eviction within one binary.
const ENV_EVICT: &str = "SHMFLOW_LATENCY_EVICT";
/// The longest one wait for the other side may take before the run fails.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a futex waiter sleeps before it re-checks its deadline.
const PARK_SLICE: Duration = Duration::from_millis(50);
/// The longest one responder may live; its watchdog kills it after that.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
/// Size of the shared memory of the bare, futex and record peers (the record peers' two
/// regions of [`REC_REGION`]).
const PAGE: usize = 2 * REC_REGION;
/// Offsets of the ping and pong words: 128 bytes apart, so the adjacent-line prefetcher
/// does not pair their cache lines.
const PING: usize = 0;
const PONG: usize = 128;
/// Bytes of each direction's region of the record peers: 32 KiB, a stream segment.
const REC_REGION: usize = 32 * 1024;
/// Offsets of the record peers' request and answer regions (each record: sequence word,
/// then payload).
const REC_PING: usize = 0;
const REC_PONG: usize = REC_REGION;
/// The largest payload of the record peers.
const RECORD_MAX: usize = 1024;
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
    if std::env::var(ENV_EVICT).is_ok_and(|v| v == "0") {
        shmflow::sync::set_evict_segments(false);
    }
    let (who, result) = match std::env::var(ENV_PEER) {
        Ok(peer) => (format!("latency responder ({peer})"), responder_main(&peer)),
        Err(_) => ("latency".to_string(), requester_main()),
    };
    exit_code(&who, result)
}
