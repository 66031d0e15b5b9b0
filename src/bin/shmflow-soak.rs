//! The kill soak of online reclamation (issue 15): a named arena, 8 worker processes that
//! attach, stream records to each other and leave, and one of them SIGKILLed at random
//! every ~100 ms. Run by `tools/soak` (1,000 kills) and, short, by `tests/soak.rs`.
//!
//! ```text
//!  shmflow-soak run --kills N [--arena NAME] [--interval-ms 100] [--keep]
//!     keeps 8 workers alive (slots 0..8); a new worker reads the partition of an older
//!     one that has no reader yet and writes one of its own; kills a random worker every
//!     interval; at the end lets the last ones finish, reclaims, and checks the arena.
//!     Prints `SOAK kills=.. waits=.. worst_wait_ms=.. bound_ms=.. check=ok` and fails
//!     (exit 1) if a segment is left over or a survivor waited longer than the bound.
//!     `--keep` leaves the arena file in /dev/shm for `shmflow check` (the caller removes it).
//!  shmflow-soak worker --arena NAME --slot S --out ID --in ID --records N
//!     (internal) writes N records to partition OUT, reads partition IN (0: none); prints
//!     `DIED <pid> <ns>` when a peer's death reached it (monotonic clock).
//! ```

use shmflow::gate::{GateItem, InputGateConfig, InputSpec};
use shmflow::memory::{check, Arena, ArenaConfig};
use shmflow::partition::{
    BufferTimeout, ForwardPartitioner, RequestBackoff, ResultPartitionConfig, ResultPartitionId, ResultPartitionType,
};
use shmflow::sync::now_nanos;
use shmflow::{Error, ShuffleEnvironment};
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const WORKERS: u32 = 8;
/// The survivors' liveness interval (the partition's and the gate's default).
const LIVENESS: Duration = Duration::from_millis(100);

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = match args.get(1).map(String::as_str) {
        Some("run") => run(&args),
        Some("worker") => worker(&args),
        _ => {
            eprintln!("usage: shmflow-soak run --kills N [--arena NAME] [--interval-ms MS] [--keep]");
            2
        }
    };
    std::process::exit(code);
}

/// One worker process: write `--records` records to partition `--out` (if not 0) and read
/// partition `--in` (if not 0), each in its own thread.
fn worker(args: &[String]) -> i32 {
    // A worker never outlives its driver (a test that gives up on the driver kills it).
    // SAFETY: prctl(PR_SET_PDEATHSIG) with a valid signal number, no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        return 1; // the driver died before the line above
    }
    let name = arg(args, "--arena").unwrap_or_default();
    let slot = num(args, "--slot", 0) as u32;
    let (out, inp, records) = (num(args, "--out", 0), num(args, "--in", 0), num(args, "--records", 20_000));
    let arena = match Arena::attach_named(&name) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            println!("ERR attach {e}");
            return 1;
        }
    };
    let env = match ShuffleEnvironment::register(arena, slot) {
        Ok(env) => env,
        Err(e) => {
            println!("ERR register {e}");
            return 1;
        }
    };
    let report = |what: &str, r: shmflow::Result<u64>| match r {
        Ok(n) => println!("OK {what} {n}"),
        Err(Error::PeerDied { pid, .. }) => println!("DIED {pid} {}", now_nanos()),
        Err(e) => println!("ERR {what} {e}"),
    };
    let producer = (out != 0).then(|| {
        let env = env.clone();
        std::thread::spawn(move || {
            let mut cfg =
                ResultPartitionConfig::new(ResultPartitionId::new(out, 0), ResultPartitionType::PipelinedBounded, 1);
            cfg.attach_timeout = Duration::from_secs(2);
            // A wait this long is a bug: an error says where, instead of a hang.
            cfg.timeout = Some(Duration::from_secs(30));
            cfg.liveness_interval = LIVENESS;
            let r = (|| {
                let mut w =
                    env.create_record_writer::<u64, _>(&cfg, ForwardPartitioner, BufferTimeout::from_millis(5)?)?;
                for i in 0..records {
                    w.emit(&i)?;
                }
                w.finish()?;
                w.partition_mut().release_when_consumed(Some(Duration::from_secs(10)))?;
                Ok(records)
            })();
            report("write", r);
        })
    });
    if inp != 0 {
        let mut cfg =
            InputGateConfig::new(vec![InputSpec { partition: ResultPartitionId::new(inp, 0), subpartition: 0 }]);
        cfg.backoff = RequestBackoff { initial: Duration::from_millis(5), max: Duration::from_millis(640) };
        cfg.liveness_interval = LIVENESS;
        let r = (|| {
            let mut gate = env.create_input_gate(&cfg)?;
            let mut n = 0u64;
            loop {
                match gate.next(Some(Duration::from_secs(10)))? {
                    GateItem::Record { data, .. } => {
                        let v: u64 = shmflow::record::FromRecord::from_record(data)?;
                        if v != n {
                            return Err(out_of_order(v, n));
                        }
                        n += 1;
                    }
                    GateItem::End => return Ok(n),
                    _ => {}
                }
            }
        })();
        report("read", r);
    }
    if let Some(p) = producer {
        let _ = p.join();
    }
    0
}

struct Running {
    child: Child,
    out: u64,
}

/// The driver: see the module docs.
fn run(args: &[String]) -> i32 {
    let kills_wanted = num(args, "--kills", 30);
    let interval = Duration::from_millis(num(args, "--interval-ms", 100));
    let name = arg(args, "--arena").unwrap_or_else(|| format!("shmflow-soak-{}", std::process::id()));
    let config = ArenaConfig {
        segment_size: 4096,
        segment_count: 512,
        max_channels: 128,
        max_partitions: 64,
        max_gates: 64,
        max_workers: 16,
        max_tasks: 16,
        ..ArenaConfig::default()
    };
    // Unlinked when this handle drops (also on an early return below).
    let keep = args.iter().any(|a| a == "--keep");
    let mut arena = match Arena::create_named(&name, &config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("shmflow-soak: {e}");
            return 1;
        }
    };
    let mut soak = Soak {
        exe: std::env::current_exe().expect("own executable"),
        name,
        slots: (0..WORKERS).map(|_| None).collect(),
        unread: VecDeque::new(),
        killed_at: HashMap::new(),
        waits: Vec::new(),
        failures: Vec::new(),
        errors: std::collections::BTreeMap::new(),
        next_id: 1,
        kills: 0,
        spawned: 0,
        streams: 0,
        records: 0,
    };
    soak.drive(kills_wanted, interval);
    soak.report(&arena);
    if keep {
        if let Some(a) = Arc::get_mut(&mut arena) {
            a.keep(); // for `shmflow check` (tools/soak removes it)
        }
    }
    i32::from(!soak.failures.is_empty())
}

/// The soak's state: the worker slots, the partitions nobody reads yet, and what the
/// workers reported.
struct Soak {
    exe: std::path::PathBuf,
    name: String,
    slots: Vec<Option<Running>>,
    unread: VecDeque<u64>,
    killed_at: HashMap<u32, u64>,
    waits: Vec<u64>,
    failures: Vec<String>,
    /// Other endings, grouped by the words that are not ids: count and one example.
    errors: std::collections::BTreeMap<String, (u32, String)>,
    next_id: u64,
    kills: u64,
    spawned: u64,
    streams: u64,
    records: u64,
}

impl Soak {
    /// Keeps the workers going and kills one every `interval` until `kills_wanted`, then
    /// lets the rest end.
    fn drive(&mut self, kills_wanted: u64, interval: Duration) {
        let mut rng = now_nanos() | 1;
        let mut next_kill = now_nanos() + interval.as_nanos() as u64;
        // Bounded: each kill takes one interval; 4x that, plus a minute, is a hang.
        let deadline = now_nanos() + 4 * kills_wanted * interval.as_nanos() as u64 + 60_000_000_000;
        loop {
            let stopping = self.kills >= kills_wanted;
            self.reap();
            if !stopping {
                self.respawn();
            }
            let now = now_nanos();
            if !stopping && now >= next_kill {
                next_kill = now + interval.as_nanos() as u64;
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                self.kill_one(rng);
            }
            if stopping && self.slots.iter().all(Option::is_none) {
                break;
            }
            if now > deadline {
                self.failures.push("the soak did not end in time".into());
                for r in self.slots.iter_mut().flatten() {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Reaps the workers that ended and reads what they said.
    fn reap(&mut self) {
        for i in 0..self.slots.len() {
            let done = match &mut self.slots[i] {
                Some(r) => matches!(r.child.try_wait(), Ok(Some(_))),
                None => false,
            };
            if !done {
                continue;
            }
            let mut r = self.slots[i].take().expect("checked above");
            let mut text = String::new();
            if let Some(mut o) = r.child.stdout.take() {
                let _ = o.read_to_string(&mut text);
            }
            self.unread.retain(|&id| id != r.out);
            for line in text.lines() {
                self.note(line);
            }
        }
    }

    /// Takes in one line of a worker's report.
    fn note(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["DIED", pid, at] => {
                let (pid, at) = (pid.parse().unwrap_or(0), at.parse().unwrap_or(0u64));
                if let Some(&k) = self.killed_at.get(&pid) {
                    self.waits.push(at.saturating_sub(k));
                }
            }
            ["ERR", "register", ..] | ["ERR", "attach", ..] => self.failures.push(line.to_string()),
            ["OK", "read", n] => {
                self.streams += 1;
                self.records += n.parse::<u64>().unwrap_or(0);
            }
            ["ERR", what, rest @ ..] => {
                // Grouped by the words that are not ids; one example kept.
                let kind: Vec<&str> = rest.iter().copied().filter(|w| !w.contains('@')).take(4).collect();
                let e = self.errors.entry(format!("{what}: {}", kind.join(" "))).or_insert((0u32, String::new()));
                e.0 += 1;
                if e.1.is_empty() {
                    e.1 = line.to_string();
                }
            }
            _ => {}
        }
    }

    /// Keeps 8 workers: a new one reads the oldest partition nobody reads yet.
    fn respawn(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].is_some() {
                continue;
            }
            let inp = self.unread.pop_front().unwrap_or(0);
            let out = self.next_id;
            self.next_id += 1;
            let child = Command::new(&self.exe)
                .args(["worker", "--arena", &self.name, "--slot", &slot.to_string()])
                .args(["--out", &out.to_string(), "--in", &inp.to_string(), "--records", "20000"])
                .stdout(Stdio::piped())
                .spawn();
            match child {
                Ok(child) => {
                    self.unread.push_back(out);
                    self.slots[slot] = Some(Running { child, out });
                    self.spawned += 1;
                }
                Err(e) => self.failures.push(format!("spawn: {e}")),
            }
        }
    }

    /// Kills the live worker `pick` chooses (SIGKILL).
    fn kill_one(&mut self, pick: u64) {
        let live: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].is_some()).collect();
        if live.is_empty() {
            return;
        }
        let r = self.slots[live[(pick % live.len() as u64) as usize]].as_mut().expect("live");
        if r.child.kill().is_ok() {
            self.killed_at.insert(r.child.id(), now_nanos());
            self.kills += 1;
        }
    }

    /// Everyone is gone: reclaims what the last victims left, checks the arena, prints the
    /// summary line and the failures.
    fn report(&mut self, arena: &Arena) {
        let reclaimed = shmflow::partition::reclaim_dead_peers(arena);
        let report = check::check(arena);
        let worst = self.waits.iter().copied().max().unwrap_or(0);
        let bound = LIVENESS + Duration::from_secs(1);
        let mut sorted = self.waits.clone();
        sorted.sort_unstable();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        if !(report.all_free() && report.problems.is_empty()) {
            self.failures.push(format!("segments left over after {reclaimed:?}: {report:?}"));
        }
        if worst > bound.as_nanos() as u64 {
            self.failures.push(format!(
                "a survivor waited {} ms on a dead peer (bound {} ms)",
                worst / 1_000_000,
                bound.as_millis()
            ));
        }
        println!(
            "SOAK kills={} workers={} streams_completed={} records_read={} waits={} \
             median_wait_ms={:.1} worst_wait_ms={:.1} bound_ms={} check={}",
            self.kills,
            self.spawned,
            self.streams,
            self.records,
            self.waits.len(),
            median as f64 / 1e6,
            worst as f64 / 1e6,
            bound.as_millis(),
            if self.failures.is_empty() { "ok" } else { "FAILED" }
        );
        for (n, example) in self.errors.values() {
            println!("  other endings: {n} x, e.g. {example}");
        }
        for f in self.failures.iter().take(10) {
            println!("FAIL {f}");
        }
        if self.failures.len() > 10 {
            println!("FAIL ... and {} more", self.failures.len() - 10);
        }
    }
}

/// The error for record `v` read where `n` was due (built off the per-record loop).
#[cold]
fn out_of_order(v: u64, n: u64) -> Error {
    Error::Invalid { what: "record", detail: format!("{v} where {n} was due") }
}
