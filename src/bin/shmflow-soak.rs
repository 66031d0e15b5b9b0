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
                            return Err(Error::Invalid { what: "record", detail: format!("{v} where {n} was due") });
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
    let exe = std::env::current_exe().expect("own executable");
    let mut slots: Vec<Option<Running>> = (0..WORKERS).map(|_| None).collect();
    let mut unread: VecDeque<u64> = VecDeque::new();
    let mut killed_at: HashMap<u32, u64> = HashMap::new();
    let mut waits: Vec<u64> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let (mut next_id, mut kills, mut spawned) = (1u64, 0u64, 0u64);
    let (mut streams, mut records) = (0u64, 0u64);
    let mut errors: std::collections::BTreeMap<String, (u32, String)> = std::collections::BTreeMap::new();
    let mut rng = now_nanos() | 1;
    let mut next_kill = now_nanos() + interval.as_nanos() as u64;
    // Bounded: each kill takes one interval; 4x that, plus a minute, is a hang.
    let deadline = now_nanos() + 4 * kills_wanted * interval.as_nanos() as u64 + 60_000_000_000;
    loop {
        let stopping = kills >= kills_wanted;
        // Reap the workers that ended and read what they said.
        for s in slots.iter_mut() {
            let done = match s {
                Some(r) => matches!(r.child.try_wait(), Ok(Some(_))),
                None => false,
            };
            if done {
                let mut r = s.take().expect("checked above");
                let mut text = String::new();
                if let Some(mut o) = r.child.stdout.take() {
                    let _ = o.read_to_string(&mut text);
                }
                unread.retain(|&id| id != r.out);
                for line in text.lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    match f.as_slice() {
                        ["DIED", pid, at] => {
                            let (pid, at) = (pid.parse().unwrap_or(0), at.parse().unwrap_or(0u64));
                            if let Some(&k) = killed_at.get(&pid) {
                                waits.push(at.saturating_sub(k));
                            }
                        }
                        ["ERR", "register", ..] | ["ERR", "attach", ..] => failures.push(line.to_string()),
                        ["OK", "read", n] => {
                            streams += 1;
                            records += n.parse::<u64>().unwrap_or(0);
                        }
                        ["ERR", what, rest @ ..] => {
                            // Grouped by the words that are not ids; one example kept.
                            let kind: Vec<&str> = rest.iter().copied().filter(|w| !w.contains('@')).take(4).collect();
                            let e =
                                errors.entry(format!("{what}: {}", kind.join(" "))).or_insert((0u32, String::new()));
                            e.0 += 1;
                            if e.1.is_empty() {
                                e.1 = line.to_string();
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        // Keep 8 workers: a new one reads the oldest partition nobody reads yet.
        if !stopping {
            for (slot, s) in slots.iter_mut().enumerate() {
                if s.is_none() {
                    let inp = unread.pop_front().unwrap_or(0);
                    let out = next_id;
                    next_id += 1;
                    let child = Command::new(&exe)
                        .args(["worker", "--arena", &name, "--slot", &slot.to_string()])
                        .args(["--out", &out.to_string(), "--in", &inp.to_string(), "--records", "20000"])
                        .stdout(Stdio::piped())
                        .spawn();
                    match child {
                        Ok(child) => {
                            unread.push_back(out);
                            *s = Some(Running { child, out });
                            spawned += 1;
                        }
                        Err(e) => failures.push(format!("spawn: {e}")),
                    }
                }
            }
        }
        let now = now_nanos();
        if !stopping && now >= next_kill {
            next_kill = now + interval.as_nanos() as u64;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let live: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].is_some()).collect();
            if !live.is_empty() {
                let r = slots[live[(rng % live.len() as u64) as usize]].as_mut().expect("live");
                if r.child.kill().is_ok() {
                    killed_at.insert(r.child.id(), now_nanos());
                    kills += 1;
                }
            }
        }
        if stopping && slots.iter().all(Option::is_none) {
            break;
        }
        if now > deadline {
            failures.push("the soak did not end in time".into());
            for r in slots.iter_mut().flatten() {
                let _ = r.child.kill();
                let _ = r.child.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Everyone is gone: reclaim what the last victims left, then check.
    let reclaimed = shmflow::partition::reclaim_dead_peers(&arena);
    let report = check::check(&arena);
    let worst = waits.iter().copied().max().unwrap_or(0);
    let bound = LIVENESS + Duration::from_secs(1);
    let mut sorted = waits.clone();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    if !(report.all_free() && report.problems.is_empty()) {
        failures.push(format!("segments left over after {reclaimed:?}: {report:?}"));
    }
    if worst > bound.as_nanos() as u64 {
        failures.push(format!(
            "a survivor waited {} ms on a dead peer (bound {} ms)",
            worst / 1_000_000,
            bound.as_millis()
        ));
    }
    println!(
        "SOAK kills={kills} workers={spawned} streams_completed={streams} records_read={records} waits={} \
         median_wait_ms={:.1} worst_wait_ms={:.1} bound_ms={} check={}",
        waits.len(),
        median as f64 / 1e6,
        worst as f64 / 1e6,
        bound.as_millis(),
        if failures.is_empty() { "ok" } else { "FAILED" }
    );
    for (n, example) in errors.values() {
        println!("  other endings: {n} x, e.g. {example}");
    }
    for f in failures.iter().take(10) {
        println!("FAIL {f}");
    }
    if failures.len() > 10 {
        println!("FAIL ... and {} more", failures.len() - 10);
    }
    if keep {
        if let Some(a) = Arc::get_mut(&mut arena) {
            a.keep(); // for `shmflow check` (tools/soak removes it)
        }
    }
    i32::from(!failures.is_empty())
}
