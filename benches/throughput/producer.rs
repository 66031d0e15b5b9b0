//! The producer process (a module of the throughput bench).

use super::*;

/// Start line for the writer threads: 0 wait, 1 go, 2 abort.
pub(crate) type StartLine = Arc<(Mutex<u8>, Condvar)>;

/// Waits (bounded) for the start line; true for go.
pub(crate) fn wait_start(start: &StartLine) -> bool {
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

pub(crate) fn set_start(start: &StartLine, v: u8) {
    let (m, cv) = &**start;
    *m.lock().unwrap_or_else(|e| e.into_inner()) = v;
    cv.notify_all();
}

/// What every writer thread shares with the thread that starts and stops them (the
/// producer's main thread, or the consumer for the in-process peer).
pub(crate) struct Signals {
    pub(crate) stop: Flag,
    pub(crate) start: StartLine,
    pub(crate) ready: Mutex<mpsc::Sender<Res<()>>>,
    /// Held while a writer creates its partition: concurrent creations can make the
    /// arena's first-fit search for a run of channel blocks fail although enough blocks are
    /// free (reported to the lead), and Flink creates a task's partitions one by one too.
    pub(crate) create: Mutex<()>,
}

impl Signals {
    /// New signals, and where the writers' readiness arrives.
    pub(crate) fn new() -> (Arc<Self>, mpsc::Receiver<Res<()>>) {
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
    pub(crate) fn creating<T>(&self, f: impl FnOnce() -> T) -> T {
        let _one_at_a_time = self.create.lock().unwrap_or_else(|e| e.into_inner());
        f()
    }

    pub(crate) fn ready(&self, r: Res<()>) {
        let _ = self.ready.lock().unwrap_or_else(|e| e.into_inner()).send(r);
    }
}

pub(crate) fn producer_main(spec: &str) -> Res<()> {
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
        System::Shmflow => {
            // SHMFLOW_TPUT_STREAM_COPIES=1|0: a large record's pieces with streaming or
            // ordinary stores (`shmflow::sync::set_stream_large_copies`), for an A/B in one
            // build; unset: the CPU's default.
            match std::env::var("SHMFLOW_TPUT_STREAM_COPIES").as_deref() {
                Err(_) => {}
                Ok("1") => shmflow::sync::set_stream_large_copies(true),
                Ok("0") => shmflow::sync::set_stream_large_copies(false),
                Ok(other) => return Err(format!("SHMFLOW_TPUT_STREAM_COPIES={other:?}: expected 1 or 0").into()),
            }
            let env = ShuffleEnvironment::attach_inherited(1)?;
            // Before "ready": the faults of the first touches stay out of the run.
            env.arena().prefault()?;
            Some(env)
        }
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
pub(crate) struct SkewSelector {
    pub(crate) next: u32,
    pub(crate) n: u32,
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
pub(crate) enum Picker {
    RoundRobin(RebalancePartitioner),
    Skew(SkewSelector),
    Broadcast,
}

impl Picker {
    pub(crate) fn new(pattern: Pattern, w: u32, channels: u32) -> Self {
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
    pub(crate) fn next(&mut self) -> Option<u32> {
        match self {
            Picker::RoundRobin(s) => Some(ChannelSelector::<[u8]>::select_channel(s, &[])),
            Picker::Skew(s) => Some(ChannelSelector::<[u8]>::select_channel(s, &[])),
            Picker::Broadcast => None,
        }
    }
}

/// One shmflow writer: a partition of `C` subpartitions, records to channels per the
/// case's pattern, until stopped.
pub(crate) fn shmflow_writer(env: &ShuffleEnvironment, case: Case, w: u32, signals: &Signals) -> Res<u64> {
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
pub(crate) fn shmflow_records<S>(
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
            // The batch path (`RecordWriter::emit_batch`): the stop flag is looked at
            // between batches of BATCH records, the records are written as `emit` writes
            // them one by one (same bytes, same channels, same flushes).
            const BATCH: u64 = 4096;
            let writer = signals.creating(|| env.create_record_writer::<u64, S>(cfg, selector, timeout))?;
            emit_until_stopped(writer, signals, BATCH, |wr, i| {
                wr.emit_batch::<u64, _>((i..i + BATCH).map(|i| stamp_of(w, i))).map(|_| ()).map_err(Into::into)
            })
        }
        PAIR => {
            let tail = pair_tail();
            let writer = signals.creating(|| env.create_record_writer::<(u64, u32), S>(cfg, selector, timeout))?;
            emit_until_stopped(writer, signals, 1, |wr, i| wr.emit(&(stamp_of(w, i), tail)))
        }
        size if size > SEGMENT && std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some() => {
            // Records above a segment, timed one by one (see `RecordTimes`).
            let mut rec = base_record(size);
            let mut times = RecordTimes::default();
            let writer = signals.creating(|| env.create_record_writer::<[u8], S>(cfg, selector, timeout))?;
            let n = emit_until_stopped(writer, signals, 1, |wr, i| {
                stamp(&mut rec, stamp_of(w, i));
                times.time(|| wr.emit(&rec[..]))
            })?;
            eprintln!("    writer: {}", times.describe(size));
            Ok(n)
        }
        size => {
            let mut rec = base_record(size);
            let writer = signals.creating(|| env.create_record_writer::<[u8], S>(cfg, selector, timeout))?;
            emit_until_stopped(writer, signals, 1, |wr, i| {
                stamp(&mut rec, stamp_of(w, i));
                wr.emit(&rec[..])
            })
        }
    }
}

/// Says ready, waits for go, emits record 0, 1, ... until stopped, then ends the partition
/// and waits until the consumer read everything. `emit(writer, i)` writes `per_call`
/// records, `i..i + per_call` (a divisor of 4096).
pub(crate) fn emit_until_stopped<S>(
    mut writer: RecordWriter<S>,
    signals: &Signals,
    per_call: u64,
    mut emit: impl FnMut(&mut RecordWriter<S>, u64) -> shmflow::Result<()>,
) -> Res<u64> {
    debug_assert!(4096 % per_call == 0);
    signals.ready(Ok(()));
    if !wait_start(&signals.start) {
        return Err("no go".into());
    }
    let mut i = 0u64;
    let verbose = std::env::var_os("SHMFLOW_TPUT_VERBOSE").is_some();
    // Chunks of CHUNK records timed when verbose (see `ChunkTimes`): one loop either way,
    // so `emit` stays inlined into it.
    const CHUNK: u64 = 4096;
    let mut chunks = ChunkTimes::default();
    let mut t0 = Instant::now();
    // Relaxed: a stop request; a few more records after it are fine.
    while !signals.stop.load(Ordering::Relaxed) {
        emit(&mut writer, i)?;
        i += per_call;
        if i % CHUNK == 0 && verbose {
            let t1 = Instant::now();
            chunks.push(t1 - t0, CHUNK);
            t0 = t1;
        }
    }
    if verbose {
        eprintln!("    writer, chunks of 4096 records: {}", chunks.describe());
        let s = writer.partition().stats();
        eprintln!(
            "    writer: {} records, {} segments, {} parks, back-pressured {} ms, awaiting consumers {} ms, {} spanning",
            s.records_out,
            s.segments_out,
            s.parks,
            s.back_pressured_ns / 1_000_000,
            s.awaiting_consumer_ns / 1_000_000,
            s.spanning_records
        );
    }
    writer.finish()?;
    writer.into_partition().release_when_consumed(Some(WAIT_TIMEOUT))?;
    Ok(i)
}
