//! The network stack between processes: producer tasks and consumer tasks in separate
//! processes over one memfd arena, every channel selector, backpressure with a slow
//! consumer, consumers that start before their producers or after they finished, and a
//! consumer that leaves mid-stream. (Between threads of one process:
//! `tests/network_threads.rs`.)
//!
//! ```text
//!  parent (this test): Arena::create_memfd, spawns children with inherit_fd_into
//!    producer p (child) RecordWriter<selector> --partition p, 4 subpartitions--+
//!    ...                                                                        | subpartition j
//!    consumer j (child) SingleInputGate over subpartition j of every partition <+
//!  stdin: "go" / "resume" -------------->  stdout: SHMFLOW_READY / _PAUSED / _RESULT k=v ...
//! ```
//!
//! A child is `child_entry` run with `--exact`; it does nothing unless `SHMFLOW_NET_ROLE` is
//! set, so in a normal run it passes at once. Every child is killed and reaped by
//! [`ChildProc`]'s drop (also when the test fails), every wait is bounded (gate and
//! partition timeouts, child deadlines), and nothing is created under /dev/shm (memfd
//! only). The tests that spawn children take a lock so they do not compete for the vCPUs.

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{Arena, ArenaConfig};
use shmflow::partition::{
    key_group_for_hash, operator_index_for_key_group, BroadcastPartitioner, BufferTimeout, ChannelSelector,
    ForwardPartitioner, GlobalPartitioner, KeyGroupPartitioner, RebalancePartitioner, RequestBackoff,
    RescalePartitioner, ResultPartitionConfig, ResultPartitionId, ResultPartitionManager, ResultPartitionType,
};
use shmflow::sync::Ordering;
use shmflow::{Error, ShuffleEnvironment};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{env_u64, self_command, serial, ChildProc};

/// Set in a child: which role `child_entry` plays.
const ROLE_ENV: &str = "SHMFLOW_NET_ROLE";
/// Producer or consumer index.
const INDEX_ENV: &str = "SHMFLOW_NET_INDEX";
/// The selector name (as `SelectorKind` parses it).
const SELECTOR_ENV: &str = "SHMFLOW_NET_SELECTOR";
/// Records per producer.
const RECORDS_ENV: &str = "SHMFLOW_NET_RECORDS";
/// Number of producers (partitions a consumer reads).
const PRODUCERS_ENV: &str = "SHMFLOW_NET_PRODUCERS";
/// Number of consumers (subpartitions per partition).
const CONSUMERS_ENV: &str = "SHMFLOW_NET_CONSUMERS";
/// Flink's buffer timeout of a producer in ms (-1, 0, N).
const FLUSH_ENV: &str = "SHMFLOW_NET_BUFFER_TIMEOUT_MS";
/// A consumer stops after this many records until the parent sends "resume".
const PAUSE_ENV: &str = "SHMFLOW_NET_PAUSE_AFTER";
/// A consumer (or producer) sleeps `SLOW_US` microseconds after every `SLOW_EVERY` records.
const SLOW_EVERY_ENV: &str = "SHMFLOW_NET_SLOW_EVERY";
const SLOW_US_ENV: &str = "SHMFLOW_NET_SLOW_US";
/// A consumer checks only each record's header and length, not every byte (and reports
/// no checksums): a consumer cheaper than its producer.
const LIGHT_ENV: &str = "SHMFLOW_NET_LIGHT";
/// A consumer leaves (drops its gate) after this many records, in the middle of the stream.
const QUIT_ENV: &str = "SHMFLOW_NET_QUIT_AFTER";
/// A producer stops writing (and reports how far it got) when a consumer is gone; a
/// consumer takes a failed producer as the end of its input.
const TOLERANT_ENV: &str = "SHMFLOW_NET_TOLERANT";
/// A consumer first checks that its producers are not registered yet.
const EARLY_ENV: &str = "SHMFLOW_NET_EARLY";

/// The smallest segment size, so records of 2-3 segments are cheap in a debug build.
const SEG: u32 = 4096;
/// Bound of every single wait on another process (a hang turns into a failure).
const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a whole child run.
const CHILD_DEADLINE: Duration = Duration::from_secs(300);
/// Flink's credits: exclusive per channel and floating per gate (the gate defaults).
const EXCLUSIVE: u32 = 2;
const FLOATING: u32 = 8;
/// Key groups of the key-hash selector.
const MAX_PARALLELISM: u32 = 128;

fn config() -> ArenaConfig {
    ArenaConfig {
        segment_size: SEG,
        segment_count: 128,
        ring_capacity: 64,
        max_channels: 16,
        max_partitions: 8,
        max_gates: 16,
        max_channels_per_gate: 64,
        max_workers: 16,
        max_tasks: 8,
    }
}

fn env_req(name: &str) -> u64 {
    env_u64(name).unwrap_or_else(|| panic!("{name} is not set"))
}

// ---------------------------------------------------------------------------------------
// Child process handling
// ---------------------------------------------------------------------------------------

/// What a finished child said on its `SHMFLOW_RESULT k=v ...` line.
struct Report {
    name: String,
    values: HashMap<String, String>,
}

impl Report {
    fn u64(&self, key: &str) -> u64 {
        let v = self.values.get(key).unwrap_or_else(|| panic!("{} reported no {key}: {:?}", self.name, self.values));
        v.parse().unwrap_or_else(|_| panic!("{} reported {key}={v}, not a number", self.name))
    }
}

impl ChildProc {
    /// Spawns `child_entry` in `role` with the arena and `env`; `name` names it in failures.
    fn spawn(name: String, role: &str, arena: &Arena, env: &[(&str, String)]) -> Self {
        let mut cmd = self_command("child_entry", ROLE_ENV, role);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Self::start(name, cmd, arena, OP_TIMEOUT)
    }

    /// Whether the child has exited; fails the test if it exited unsuccessfully.
    fn poll_exit(&mut self) -> bool {
        match self.try_exit() {
            Some(s) if !s.success() => self.fail(format!("the child failed: {s}")),
            r => r.is_some(),
        }
    }

    /// Fails the test if the child has exited early or failed.
    fn check_running(&mut self) {
        if self.poll_exit() {
            self.fail("the child exited early");
        }
    }

    /// After a successful exit: collects the rest of stdout and parses the result line.
    fn report(&mut self) -> Report {
        let values = self.result_values();
        Report { name: self.name.clone(), values }
    }
}

/// Waits (bounded) until every child has exited successfully; the first one to fail fails
/// the test at once (the others are killed by their drop). Returns the reports in order.
fn finish_all(children: &mut [ChildProc]) -> Vec<Report> {
    let deadline = Instant::now() + CHILD_DEADLINE;
    loop {
        let mut all = true;
        let mut failed = false;
        for c in children.iter_mut() {
            let s = c.try_exit();
            all &= s.is_some();
            failed |= s.is_some_and(|s| !s.success());
        }
        if failed {
            // One failure usually fails its peers (a consumer that quits leaves its producer
            // with ConsumerGone): give them a moment, then show every failed child, so the
            // first cause is among them.
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until && children.iter_mut().any(|c| c.try_exit().is_none()) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let mut out = String::new();
            for c in children.iter_mut().filter(|c| c.exited.is_some_and(|s| !s.success())) {
                out += &c.output();
                out.push('\n');
            }
            panic!("children failed:\n{out}");
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            let c = children.iter_mut().find(|c| c.exited.is_none()).expect("one is running");
            c.fail(format!("the child did not exit within {CHILD_DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    children.iter_mut().map(ChildProc::report).collect()
}

/// The entry point of every child process; returns at once in a normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let r = match role.as_str() {
        "producer" => child_producer(),
        "consumer" => child_consumer(),
        other => Err(format!("unknown role {other}")),
    };
    if let Err(e) = r {
        println!("SHMFLOW_ERROR {e}");
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Records: (producer, sequence number, key, payload), all derived from producer and seq
// ---------------------------------------------------------------------------------------

/// Bytes before the payload: seq u64, producer u32, key u32 (little endian).
const HEADER: usize = 16;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix(p: u32, seq: u64) -> u64 {
    splitmix(seq ^ (u64::from(p) << 48) ^ 0x6e65_7477_6f72_6b21)
}

/// Length of record `seq` of producer `p`: mostly small, 4% up to half a segment, 1% two to
/// three segments long (so they span segments wherever they start).
fn record_len(p: u32, seq: u64) -> usize {
    let r = mix(p, seq);
    let x = (r >> 8) as usize;
    match r % 100 {
        0 => SEG as usize * 3 / 2 + x % (SEG as usize * 3 / 2 - 64),
        1..=4 => 200 + x % 1800,
        _ => HEADER + x % 64,
    }
}

/// The key of record `seq` (its Java hashCode: an Integer key hashes to itself).
fn record_key(p: u32, seq: u64) -> i32 {
    ((mix(p, seq) >> 32) % 10_000) as i32
}

/// The key hash the key-hash selector routes by: read back from the record.
fn key_of(rec: &[u8]) -> i32 {
    i32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"))
}

/// Writes record `seq` of producer `p` into `buf` and returns it.
fn fill(p: u32, seq: u64, buf: &mut Vec<u8>) -> &[u8] {
    let len = record_len(p, seq);
    buf.clear();
    buf.resize(len.next_multiple_of(8), 0);
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..12].copy_from_slice(&p.to_le_bytes());
    buf[12..16].copy_from_slice(&record_key(p, seq).to_le_bytes());
    let mut s = mix(p, seq);
    for w in buf[HEADER..].chunks_exact_mut(8) {
        s = splitmix(s);
        w.copy_from_slice(&s.to_le_bytes());
    }
    &buf[..len]
}

const CHECKSUM_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// A checksum of one record (its length and every byte); records' checksums are added, so
/// the sum does not depend on which consumer got which record.
fn checksum(p: &[u8]) -> u64 {
    const K: u64 = 0x0000_0100_0000_01b3;
    let mut h = (CHECKSUM_INIT ^ p.len() as u64).wrapping_mul(K);
    let mut words = p.chunks_exact(8);
    for w in &mut words {
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(23) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

/// The consumer Flink's key-group assignment picks for `key` among `n`.
fn consumer_for_key(key: i32, n: u32) -> u32 {
    operator_index_for_key_group(MAX_PARALLELISM, n, key_group_for_hash(key, MAX_PARALLELISM))
}

// ---------------------------------------------------------------------------------------
// Child roles
// ---------------------------------------------------------------------------------------

fn partition_id(p: u32) -> ResultPartitionId {
    ResultPartitionId::new(u64::from(p), 0)
}

/// Child role: producer `p` writes `records` records through a record writer with the
/// selector, tracking in-flight segments against credit, then finishes and waits until
/// everything was consumed.
fn child_producer() -> Result<(), String> {
    let p = env_req(INDEX_ENV) as u32;
    let n = env_req(CONSUMERS_ENV) as u32;
    let selector = std::env::var(SELECTOR_ENV).map_err(|_| "no selector")?;
    let env = ShuffleEnvironment::attach_inherited(p).map_err(|e| format!("attach: {e}"))?;
    let mut cfg = ResultPartitionConfig::new(partition_id(p), ResultPartitionType::PipelinedBounded, n);
    cfg.timeout = Some(OP_TIMEOUT);
    let flush_ms: i64 = std::env::var(FLUSH_ENV).ok().and_then(|v| v.parse().ok()).ok_or("no buffer timeout")?;
    let flush = BufferTimeout::from_millis(flush_ms).map_err(|e| e.to_string())?;
    match selector.as_str() {
        "forward" => produce(&env, &cfg, ForwardPartitioner, flush),
        "rebalance" => produce(&env, &cfg, RebalancePartitioner::new(u64::from(p)), flush),
        "rescale" => produce(&env, &cfg, RescalePartitioner::default(), flush),
        "key-hash" => {
            let s = KeyGroupPartitioner::new(key_of as fn(&[u8]) -> i32, MAX_PARALLELISM).map_err(|e| e.to_string())?;
            produce(&env, &cfg, s, flush)
        }
        "broadcast" => produce(&env, &cfg, BroadcastPartitioner, flush),
        "global" => produce(&env, &cfg, GlobalPartitioner, flush),
        "skewed" => produce(&env, &cfg, Skewed, flush),
        other => Err(format!("unknown selector {other}")),
    }
}

fn produce<S: ChannelSelector<[u8]>>(
    env: &ShuffleEnvironment,
    cfg: &ResultPartitionConfig,
    selector: S,
    flush: BufferTimeout,
) -> Result<(), String> {
    let p = env.worker();
    let records = env_req(RECORDS_ENV);
    let mut w = env.create_record_writer::<[u8], _>(cfg, selector, flush).map_err(|e| format!("writer: {e}"))?;
    println!("SHMFLOW_READY");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    if line.trim() != "go" {
        return Err(format!("expected \"go\" on stdin, got {line:?}"));
    }
    let n = cfg.num_subpartitions;
    let (mut sum, mut bytes, mut framed) = (0u64, 0u64, 0u64);
    let (mut max_in_flight, mut max_outstanding, mut max_pool) = (0u32, 0u32, 0u32);
    let mut over_credit = 0u64;
    let mut buf = Vec::new();
    let slow_every = env_u64(SLOW_EVERY_ENV).unwrap_or(0);
    let slow = Duration::from_micros(env_u64(SLOW_US_ENV).unwrap_or(0));
    let tolerant = env_u64(TOLERANT_ENV) == Some(1);
    let start = Instant::now();
    for seq in 0..records {
        if slow_every > 0 && seq % slow_every == slow_every - 1 {
            w.flush_if_requested().map_err(|e| format!("flush: {e}"))?;
            std::thread::sleep(slow);
        }
        let rec = fill(p, seq, &mut buf);
        match w.emit(rec) {
            Ok(()) => {}
            Err(Error::ConsumerGone { .. }) if tolerant => {
                println!("SHMFLOW_RESULT gone_at={seq}");
                return Ok(());
            }
            Err(e) => return Err(format!("emit record {seq}: {e}")),
        }
        sum = sum.wrapping_add(checksum(rec));
        bytes += rec.len() as u64;
        framed += rec.len() as u64 + 4;
        let part = w.partition();
        for c in 0..n {
            let f = part.in_flight(c);
            max_in_flight = max_in_flight.max(f);
            // Segments in flight plus credit still unused never exceed what was granted.
            if f + part.credit(c) > EXCLUSIVE + FLOATING {
                over_credit += 1;
            }
        }
        max_outstanding = max_outstanding.max(part.pool().outstanding());
        max_pool = max_pool.max(part.pool().size());
    }
    w.finish().map_err(|e| format!("finish: {e}"))?;
    let elapsed = start.elapsed();
    println!("SHMFLOW_FINISHED");
    let mut part = w.into_partition();
    part.release_when_consumed(Some(OP_TIMEOUT)).map_err(|e| format!("release: {e}"))?;
    let s = part.stats();
    println!(
        "SHMFLOW_RESULT count={} sum={sum} bytes={bytes} framed={framed} records_out={} bytes_out={} segments={} \
         spanning={} bp_ns={} parks={} max_in_flight={max_in_flight} over_credit={over_credit} \
         max_outstanding={max_outstanding} max_pool={max_pool} pool_max={} outstanding_after={} elapsed_ns={}",
        records,
        s.records_out,
        s.bytes_out,
        s.segments_out,
        s.spanning_records,
        s.back_pressured_ns,
        s.parks,
        cfg.pool_max,
        part.pool().outstanding(),
        elapsed.as_nanos(),
    );
    Ok(())
}

/// A test selector: every 16th record to channel 1, the others to channel 0, so channel 0
/// goes through segments 15 times as fast as channel 1.
struct Skewed;

impl Skewed {
    fn channel(seq: u64) -> u32 {
        u32::from(seq % 16 == 15)
    }
}

impl ChannelSelector<[u8]> for Skewed {
    fn setup(&mut self, _: u32) {}
    fn select_channel(&mut self, rec: &[u8]) -> u32 {
        Self::channel(u64::from_le_bytes(rec[..8].try_into().expect("8 bytes")))
    }
}

/// What a consumer checks about the routing of a selector.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    /// Everything to subpartition 0.
    First,
    /// Round-robin over `n` subpartitions, starting anywhere (rebalance) or at 0 (rescale).
    RoundRobin { from_zero: bool },
    /// By key group.
    Key,
    /// Every record to every subpartition.
    All,
    /// [`Skewed`].
    Skewed,
}

fn route_of(selector: &str) -> Result<Route, String> {
    Ok(match selector {
        "forward" | "global" => Route::First,
        "rebalance" => Route::RoundRobin { from_zero: false },
        "rescale" => Route::RoundRobin { from_zero: true },
        "key-hash" => Route::Key,
        "broadcast" => Route::All,
        "skewed" => Route::Skewed,
        other => return Err(format!("unknown selector {other}")),
    })
}

/// Child role: consumer `j` reads subpartition `j` of every producer's partition and checks
/// every record (content, order per channel, routing), then reports per producer the count
/// and the sum of the records' checksums.
fn child_consumer() -> Result<(), String> {
    let j = env_req(INDEX_ENV) as u32;
    let producers = env_req(PRODUCERS_ENV) as u32;
    let n = env_req(CONSUMERS_ENV) as u32;
    let records = env_req(RECORDS_ENV);
    let route = route_of(&std::env::var(SELECTOR_ENV).map_err(|_| "no selector")?)?;
    let pause_after = env_u64(PAUSE_ENV);
    let slow_every = env_u64(SLOW_EVERY_ENV).unwrap_or(0);
    let slow = Duration::from_micros(env_u64(SLOW_US_ENV).unwrap_or(0));
    let light = env_u64(LIGHT_ENV) == Some(1);
    let quit_after = env_u64(QUIT_ENV);
    let tolerant = env_u64(TOLERANT_ENV) == Some(1);
    let mut producer_failed = 0;
    let env = ShuffleEnvironment::attach_inherited(8 + j).map_err(|e| format!("attach: {e}"))?;
    let mut early = 0;
    if env_u64(EARLY_ENV) == Some(1) {
        for p in 0..producers {
            match env.partition_manager().lookup_once(partition_id(p)) {
                Err(Error::PartitionNotFound(_)) => early += 1,
                other => return Err(format!("producer {p} is registered already: {other:?}")),
            }
        }
        println!("SHMFLOW_LOOKING");
    }
    let mut gcfg = InputGateConfig::new(
        (0..producers).map(|p| InputSpec { partition: partition_id(p), subpartition: j }).collect(),
    );
    gcfg.exclusive_credits = EXCLUSIVE;
    gcfg.floating_credits = FLOATING;
    gcfg.backoff = RequestBackoff { initial: Duration::from_millis(1), max: Duration::from_secs(8) };
    let t0 = Instant::now();
    let mut gate = env.create_input_gate(&gcfg).map_err(|e| format!("gate: {e}"))?;
    let gate_wait = t0.elapsed();
    println!("SHMFLOW_READY");
    let mut last: Vec<Option<u64>> = vec![None; producers as usize];
    let mut count = vec![0u64; producers as usize];
    let mut sum = vec![0u64; producers as usize];
    let mut total = 0u64;
    let mut buf = Vec::new();
    loop {
        if pause_after == Some(total) {
            println!("SHMFLOW_PAUSED {total}");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            if line.trim() != "resume" {
                return Err(format!("expected \"resume\" on stdin, got {line:?}"));
            }
        }
        if quit_after == Some(total) {
            // Leave in the middle of a segment: the gate (and the segment it was reading)
            // is dropped while the producer is still writing into that segment.
            break;
        }
        let item = match gate.next(Some(OP_TIMEOUT)) {
            Err(Error::ProducerFailed { .. }) if tolerant => {
                producer_failed += 1;
                break;
            }
            r => r.map_err(|e| format!("gate.next after {total} records: {e}"))?,
        };
        let (channel, data) = match item {
            GateItem::Record { channel, data } => (channel, data),
            GateItem::End => break,
            other => return Err(format!("unexpected {other:?}")),
        };
        if data.len() < HEADER {
            return Err(format!("a {}-byte record on channel {channel}", data.len()));
        }
        let seq = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let p = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
        if p != channel || p >= producers {
            return Err(format!("record {seq} of producer {p} arrived on channel {channel}"));
        }
        if seq >= records {
            return Err(format!("record {seq} of producer {p}: only {records} were written"));
        }
        if light {
            if data.len() != record_len(p, seq) || key_of(data) != record_key(p, seq) {
                return Err(format!("record {seq} of producer {p} ({} bytes) is corrupt", data.len()));
            }
        } else {
            let want = fill(p, seq, &mut buf);
            if data != want {
                let at = data.iter().zip(want).position(|(a, b)| a != b).unwrap_or_else(|| data.len().min(want.len()));
                return Err(format!(
                    "record {seq} of producer {p} is corrupt: {} bytes (expected {}), first difference at byte {at}",
                    data.len(),
                    want.len()
                ));
            }
        }
        let prev = last[p as usize];
        let ok = match route {
            Route::First => j == 0 && prev.map_or(seq == 0, |l| seq == l + 1),
            Route::All => prev.map_or(seq == 0, |l| seq == l + 1),
            Route::RoundRobin { from_zero } => match prev {
                Some(l) => seq == l + u64::from(n),
                None => seq < u64::from(n) && (!from_zero || seq == u64::from(j)),
            },
            Route::Key => prev.is_none_or(|l| seq > l) && consumer_for_key(key_of(data), n) == j,
            Route::Skewed => prev.is_none_or(|l| seq > l) && Skewed::channel(seq) == j,
        };
        if !ok {
            return Err(format!(
                "record {seq} of producer {p} at consumer {j} after {prev:?}: out of order or misrouted ({route:?})"
            ));
        }
        last[p as usize] = Some(seq);
        count[p as usize] += 1;
        if !light {
            sum[p as usize] = sum[p as usize].wrapping_add(checksum(data));
        }
        total += 1;
        if slow_every > 0 && total % slow_every == 0 {
            std::thread::sleep(slow);
        }
    }
    drop(gate);
    let mut out = format!(
        "SHMFLOW_RESULT total={total} early={early} producer_failed={producer_failed} gate_wait_us={}",
        gate_wait.as_micros()
    );
    for p in 0..producers as usize {
        out += &format!(" count{p}={} sum{p}={}", count[p], sum[p]);
    }
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1. Every selector: 3 producer processes x 4 consumer processes
// ---------------------------------------------------------------------------------------

const PRODUCERS: u32 = 3;
const CONSUMERS: u32 = 4;

fn common_env(selector: &str, records: u64, producers: u32, consumers: u32) -> Vec<(&'static str, String)> {
    vec![
        (SELECTOR_ENV, selector.to_string()),
        (RECORDS_ENV, records.to_string()),
        (PRODUCERS_ENV, producers.to_string()),
        (CONSUMERS_ENV, consumers.to_string()),
    ]
}

/// Spawns producer `p` (buffer timeout `flush_ms`) and waits until its partition is
/// registered.
fn spawn_producer(arena: &Arena, p: u32, flush_ms: i64, common: &[(&'static str, String)]) -> ChildProc {
    spawn_producer_with(arena, p, flush_ms, common, &[])
}

fn spawn_producer_with(
    arena: &Arena,
    p: u32,
    flush_ms: i64,
    common: &[(&'static str, String)],
    extra: &[(&str, String)],
) -> ChildProc {
    let mut env = common.to_vec();
    env.extend(extra.iter().cloned());
    env.push((INDEX_ENV, p.to_string()));
    env.push((FLUSH_ENV, flush_ms.to_string()));
    ChildProc::spawn(format!("producer {p}"), "producer", arena, &env)
}

fn spawn_consumer(arena: &Arena, j: u32, common: &[(&'static str, String)], extra: &[(&str, String)]) -> ChildProc {
    let mut env = common.to_vec();
    env.push((INDEX_ENV, j.to_string()));
    env.extend(extra.iter().cloned());
    ChildProc::spawn(format!("consumer {j}"), "consumer", arena, &env)
}

fn assert_all_segments_back(arena: &Arena) {
    assert_eq!(arena.header_atomics().free_stack.len(), arena.segment_count(), "a segment leaked");
}

fn selector_run(selector: &str) {
    let _serial = serial();
    const RECORDS: u64 = 50_000;
    let t0 = Instant::now();
    let arena = Arc::new(Arena::create_memfd(&config(), selector).unwrap());
    let common = common_env(selector, RECORDS, PRODUCERS, CONSUMERS);
    // Producers with Flink's three flush policies: every 1 ms, full segments only, every
    // record.
    let mut children: Vec<ChildProc> =
        (0..PRODUCERS).map(|p| spawn_producer(&arena, p, [1, -1, 0][p as usize % 3], &common)).collect();
    for c in &mut children {
        c.wait_line("SHMFLOW_READY");
    }
    for j in 0..CONSUMERS {
        children.push(spawn_consumer(&arena, j, &common, &[]));
    }
    // Every gate is attached before any producer writes, so no producer can finish and
    // release its partition before a consumer of an idle subpartition has looked it up.
    for c in &mut children[PRODUCERS as usize..] {
        c.wait_line("SHMFLOW_READY");
    }
    for c in &mut children[..PRODUCERS as usize] {
        c.send_line("go");
    }
    let reports = finish_all(&mut children);
    let (prod, cons) = reports.split_at(PRODUCERS as usize);
    for (p, r) in prod.iter().enumerate() {
        let p = p as u32;
        assert_eq!(r.u64("count"), RECORDS);
        assert_eq!(r.u64("records_out"), RECORDS, "producer {p}: records counted by the partition");
        assert_eq!(r.u64("bytes_out"), r.u64("bytes"), "producer {p}: bytes counted by the partition");
        assert!(r.u64("spanning") >= RECORDS / 200, "producer {p}: only {} spanning records", r.u64("spanning"));
        assert_eq!(r.u64("over_credit"), 0, "producer {p}: in flight + credit exceeded the granted credit");
        assert!(
            r.u64("max_in_flight") <= u64::from(EXCLUSIVE + FLOATING),
            "producer {p}: {} segments in flight on one channel",
            r.u64("max_in_flight")
        );
        assert!(r.u64("max_in_flight") >= 1);
        assert!(r.u64("max_pool") <= r.u64("pool_max"), "producer {p}: pool grew beyond its max");
        assert_eq!(r.u64("outstanding_after"), 0);
        let framed = r.u64("framed");
        let segments = r.u64("segments");
        assert!(segments * u64::from(SEG) >= framed, "producer {p}: {segments} segments cannot hold {framed} bytes");
        if selector == "broadcast" {
            // One copy for all four consumers: about framed / segment size, not 4x.
            assert!(
                segments <= framed / u64::from(SEG) + 2,
                "producer {p}: {segments} segments for {framed} framed bytes: broadcast is not one copy"
            );
        }
        let sum = r.u64("sum");
        let (got, got_sum) = cons.iter().fold((0u64, 0u64), |(n, s), c| {
            (n + c.u64(&format!("count{p}")), s.wrapping_add(c.u64(&format!("sum{p}"))))
        });
        if selector == "broadcast" {
            for (j, c) in cons.iter().enumerate() {
                assert_eq!(c.u64(&format!("count{p}")), RECORDS, "consumer {j} got every record of producer {p}");
                assert_eq!(c.u64(&format!("sum{p}")), sum, "consumer {j}: checksum of producer {p}'s records");
            }
        } else {
            assert_eq!(got, RECORDS, "records of producer {p} received over all consumers");
            assert_eq!(got_sum, sum, "checksum of producer {p}'s records over all consumers: each arrived once");
        }
        let counts: Vec<u64> = cons.iter().map(|c| c.u64(&format!("count{p}"))).collect();
        match selector {
            "forward" | "global" => assert_eq!(counts, [RECORDS, 0, 0, 0], "all of producer {p} on channel 0"),
            "rebalance" | "rescale" => {
                let q = RECORDS / u64::from(CONSUMERS);
                assert!(counts.iter().all(|&c| c == q || c == q + 1), "round robin of producer {p}: {counts:?}")
            }
            "key-hash" => {
                let mut want = vec![0u64; CONSUMERS as usize];
                for seq in 0..RECORDS {
                    want[consumer_for_key(record_key(p, seq), CONSUMERS) as usize] += 1;
                }
                assert_eq!(counts, want, "key groups of producer {p}'s records per consumer");
                assert!(want.iter().all(|&c| c > 0));
            }
            _ => {}
        }
    }
    drop(children);
    assert_all_segments_back(&arena);
    let segs: Vec<u64> = prod.iter().map(|r| r.u64("segments")).collect();
    let bp: Vec<u64> = prod.iter().map(|r| r.u64("bp_ns") / 1_000_000).collect();
    eprintln!("{selector}: {:?}, segments {segs:?}, back-pressured ms {bp:?}", t0.elapsed());
}

#[test]
fn forward_three_producers_four_consumers() {
    selector_run("forward");
}

#[test]
fn rebalance_three_producers_four_consumers() {
    selector_run("rebalance");
}

#[test]
fn rescale_three_producers_four_consumers() {
    selector_run("rescale");
}

#[test]
fn key_hash_three_producers_four_consumers() {
    selector_run("key-hash");
}

#[test]
fn broadcast_three_producers_four_consumers() {
    selector_run("broadcast");
}

#[test]
fn global_three_producers_four_consumers() {
    selector_run("global");
}

// ---------------------------------------------------------------------------------------
// 2. Backpressure
// ---------------------------------------------------------------------------------------

/// One producer (forward, one subpartition, buffer timeout 100 ms) and one consumer with
/// `consumer_env`; `pause_at` makes the parent watch the stalled producer while the consumer
/// is paused, then resume it. Returns the producer's report and, if paused, the segments in
/// flight while stalled.
fn backpressure_run(
    records: u64,
    producer_env: &[(&str, String)],
    consumer_env: &[(&str, String)],
    pause: bool,
) -> (Report, Option<u32>) {
    let arena = Arc::new(Arena::create_memfd(&config(), "backpressure").unwrap());
    let common = common_env("forward", records, 1, 1);
    let mut children = vec![spawn_producer_with(&arena, 0, 100, &common, producer_env)];
    children[0].wait_line("SHMFLOW_READY");
    children.push(spawn_consumer(&arena, 0, &common, consumer_env));
    children[1].wait_line("SHMFLOW_READY");
    children[0].send_line("go");
    let mut stalled = None;
    if pause {
        children[1].wait_line("SHMFLOW_PAUSED ");
        let info = ResultPartitionManager::new(arena.clone()).lookup_once(partition_id(0)).unwrap();
        let block = &arena.channels()[info.first_channel as usize];
        // The consumer reads nothing now: the producer must stall with at most its credit in
        // flight. Wait (bounded) until nothing moves for 100 samples in a row.
        let deadline = Instant::now() + OP_TIMEOUT;
        let mut last = (u32::MAX, u64::MAX);
        let mut stable = 0;
        while stable < 100 {
            // Relaxed (both): counters.
            let now = (block.backlog(), block.buffers_out.load(Ordering::Relaxed));
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
            if Instant::now() > deadline {
                children[0].fail(format!("the producer never stalled: {now:?}"));
            }
            children[0].check_running();
            std::thread::sleep(Duration::from_millis(1));
        }
        stalled = Some(last.0);
        children[1].send_line("resume");
    }
    let mut reports = finish_all(&mut children);
    drop(children);
    assert_all_segments_back(&arena);
    let consumer = reports.pop().unwrap();
    assert_eq!(consumer.u64("count0"), records, "the consumer got every record");
    (reports.pop().unwrap(), stalled)
}

fn assert_within_credit(r: &Report, what: &str) {
    let credit = u64::from(EXCLUSIVE + FLOATING);
    assert_eq!(r.u64("over_credit"), 0, "{what}: in flight + credit exceeded the granted credit");
    assert!(r.u64("max_in_flight") <= credit, "{what}: {} in flight, credit {credit}", r.u64("max_in_flight"));
    assert!(r.u64("max_outstanding") <= r.u64("pool_max"), "{what}: more segments out than the pool max");
    assert!(r.u64("max_pool") <= r.u64("pool_max"), "{what}: the pool grew beyond its max");
}

#[test]
fn backpressure_slow_consumer_bounds_in_flight_and_counts_blocked_time() {
    let _serial = serial();
    const RECORDS: u64 = 10_000;
    let t0 = Instant::now();
    // The producer takes a 1 ms break every 100 records (a source with a rate), so a
    // consumer that keeps up has slack even when the machine is busy. Both consumers do
    // the same (light) work per record; the slow one also stops after 2000 records until
    // the parent saw the producer stall, and then sleeps 1 ms every 20 records.
    let producer = [(SLOW_EVERY_ENV, "100".to_string()), (SLOW_US_ENV, "1000".to_string())];
    let light = (LIGHT_ENV, "1".to_string());
    let slow_env = [
        light.clone(),
        (PAUSE_ENV, "2000".to_string()),
        (SLOW_EVERY_ENV, "20".to_string()),
        (SLOW_US_ENV, "1000".to_string()),
    ];
    let (slow, stalled) = backpressure_run(RECORDS, &producer, &slow_env, true);
    let t1 = Instant::now();
    let (fast, _) = backpressure_run(RECORDS, &producer, &[light], false);
    let stalled = stalled.expect("paused run");
    eprintln!(
        "slow: {:?}, stalled with {stalled} in flight, max {} in flight, back-pressured {} ms, {} parks; \
         fast: {:?}, max {} in flight, back-pressured {} ms, {} parks",
        t1 - t0,
        slow.u64("max_in_flight"),
        slow.u64("bp_ns") / 1_000_000,
        slow.u64("parks"),
        t1.elapsed(),
        fast.u64("max_in_flight"),
        fast.u64("bp_ns") / 1_000_000,
        fast.u64("parks"),
    );
    assert_within_credit(&slow, "slow consumer");
    assert_within_credit(&fast, "fast consumer");
    assert!((1..=EXCLUSIVE + FLOATING).contains(&stalled), "stalled with {stalled} segments in flight");
    assert!(
        slow.u64("max_in_flight") > u64::from(EXCLUSIVE),
        "the back-pressured channel never got floating credit: at most {} in flight",
        slow.u64("max_in_flight")
    );
    assert!(slow.u64("bp_ns") > 0, "no back-pressured time with a stopped consumer");
    assert!(slow.u64("parks") > 0, "the producer never parked with a stopped consumer");
    assert!(
        fast.u64("bp_ns") * 4 < slow.u64("bp_ns"),
        "back-pressured {} ns with a fast consumer, {} ns with a slow one",
        fast.u64("bp_ns"),
        slow.u64("bp_ns")
    );
}

// ---------------------------------------------------------------------------------------
// 3. A consumer that starts before its producers
// ---------------------------------------------------------------------------------------

#[test]
fn consumer_started_before_producers_gets_everything() {
    let _serial = serial();
    const RECORDS: u64 = 5_000;
    let t0 = Instant::now();
    let arena = Arc::new(Arena::create_memfd(&config(), "early").unwrap());
    let common = common_env("rebalance", RECORDS, 2, 1);
    let mut consumer = spawn_consumer(&arena, 0, &common, &[(EARLY_ENV, "1".to_string())]);
    // It looked both partitions up and found neither; now it is in its request backoff.
    consumer.wait_line("SHMFLOW_LOOKING");
    let mut producers = Vec::new();
    for p in 0..2 {
        // Give the consumer time to retry before each producer registers.
        std::thread::sleep(Duration::from_millis(30));
        consumer.check_running();
        let mut c = spawn_producer(&arena, p, 1, &common);
        c.wait_line("SHMFLOW_READY");
        producers.push(c);
    }
    consumer.wait_line("SHMFLOW_READY");
    for c in &mut producers {
        c.send_line("go");
    }
    producers.push(consumer);
    let reports = finish_all(&mut producers);
    drop(producers);
    assert_all_segments_back(&arena);
    let c = &reports[2];
    assert_eq!(c.u64("early"), 2, "the consumer started before both producers registered");
    for (p, r) in reports[..2].iter().enumerate() {
        assert_eq!(c.u64(&format!("count{p}")), RECORDS, "records of producer {p}");
        assert_eq!(c.u64(&format!("sum{p}")), r.u64("sum"), "checksum of producer {p}'s records");
    }
    eprintln!("early consumer: {:?}, waited {} us for its gate", t0.elapsed(), c.u64("gate_wait_us"));
}

// ---------------------------------------------------------------------------------------
// 4. A consumer of an idle subpartition that attaches after the producer finished
// ---------------------------------------------------------------------------------------

/// Flink releases a pipelined partition only once every subpartition was consumed: a
/// consumer deployed late still finds the partition and reads its end, even when its
/// subpartition got no data and the other consumer read everything long ago.
#[test]
fn late_consumer_of_an_idle_subpartition_still_finds_the_partition() {
    let _serial = serial();
    const RECORDS: u64 = 2_000;
    let t0 = Instant::now();
    let arena = Arc::new(Arena::create_memfd(&config(), "late").unwrap());
    let common = common_env("forward", RECORDS, 1, 2);
    let mut producer = spawn_producer(&arena, 0, 0, &common);
    producer.wait_line("SHMFLOW_READY");
    let mut first = vec![spawn_consumer(&arena, 0, &common, &[])];
    first[0].wait_line("SHMFLOW_READY");
    producer.send_line("go");
    producer.wait_line("SHMFLOW_FINISHED");
    // Consumer 0 reads everything and leaves; every segment is back with the producer.
    let r0 = finish_all(&mut first).pop().unwrap();
    assert_eq!(r0.u64("count0"), RECORDS);
    producer.check_running();
    let mut rest = vec![spawn_consumer(&arena, 1, &common, &[]), producer];
    let reports = finish_all(&mut rest);
    drop((first, rest));
    assert_all_segments_back(&arena);
    assert_eq!(reports[0].u64("count0"), 0, "the idle subpartition carried no records");
    assert_eq!(reports[1].u64("sum"), r0.u64("sum0"));
    eprintln!("late consumer: {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------
// 5. A consumer that leaves in the middle of the stream
// ---------------------------------------------------------------------------------------

/// Consumer 1 leaves in the middle of a segment while the producer is still writing into
/// it; the producer goes on filling segments for consumer 0 fifteen times as fast. The
/// segment consumer 1 let go must not be handed to channel 0 before the producer finished
/// writing it: consumer 0 must read every record the producer wrote for it, intact, and
/// then see the producer fail (it stops with ConsumerGone at its next channel-1 segment).
#[test]
fn a_consumer_leaving_mid_segment_does_not_corrupt_the_others() {
    let _serial = serial();
    const RECORDS: u64 = 20_000;
    let t0 = Instant::now();
    for (round, quit) in [50u64, 123, 200, 333, 77].into_iter().enumerate() {
        let arena = Arc::new(Arena::create_memfd(&config(), "quit").unwrap());
        let common = common_env("skewed", RECORDS, 1, 2);
        let tolerant = (TOLERANT_ENV, "1".to_string());
        // Full segments only: the consumer that leaves is surely mid-segment.
        let mut children = vec![spawn_producer_with(&arena, 0, -1, &common, std::slice::from_ref(&tolerant))];
        children[0].wait_line("SHMFLOW_READY");
        children.push(spawn_consumer(&arena, 0, &common, &[tolerant]));
        children.push(spawn_consumer(&arena, 1, &common, &[(QUIT_ENV, quit.to_string())]));
        children[1].wait_line("SHMFLOW_READY");
        children[2].wait_line("SHMFLOW_READY");
        children[0].send_line("go");
        let reports = finish_all(&mut children);
        drop(children);
        let gone_at = reports[0].u64("gone_at");
        let (c0, c1) = (reports[1].u64("count0"), reports[2].u64("count0"));
        eprintln!("round {round}: consumer 1 left after {c1}, producer stopped at {gone_at}, consumer 0 read {c0}");
        assert_eq!(c1, quit);
        assert_eq!(Skewed::channel(gone_at), 1, "the producer stopped at record {gone_at}, not one for channel 1");
        assert!(gone_at > 16 * quit && gone_at < RECORDS, "the producer stopped at record {gone_at}");
        assert_eq!(reports[1].u64("producer_failed"), 1, "consumer 0 saw the producer fail");
        let written = (0..gone_at).filter(|&s| Skewed::channel(s) == 0).count() as u64;
        assert_eq!(c0, written, "consumer 0 read every record written for it before the producer stopped");
    }
    eprintln!("leaving consumer: {:?}", t0.elapsed());
}
