//! Cases, plan and arguments (a module of the throughput bench).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    Shmflow,
    Tcp,
    Unix,
    Pipe,
    /// Writer threads and the consumer in this process, buffers through crossbeam channels.
    InProcess,
    /// Limits, measured in one thread of this process.
    Memcpy,
    Memread,
    /// The cross-core limit for records above a segment: two threads handing 32 KiB buffers
    /// over ([`run_handoff`]).
    Handoff,
}

impl System {
    /// The systems that stream a case from writers to the consumer.
    pub(crate) const STREAMS: [System; 5] =
        [System::Shmflow, System::Tcp, System::Unix, System::Pipe, System::InProcess];
    pub(crate) const ALL: [System; 8] = [
        System::Shmflow,
        System::Tcp,
        System::Unix,
        System::Pipe,
        System::InProcess,
        System::Memcpy,
        System::Memread,
        System::Handoff,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Shmflow => "shmflow",
            System::Tcp => "tcp",
            System::Unix => "unix",
            System::Pipe => "pipe",
            System::InProcess => "in-process-channel",
            System::Memcpy => "memcpy",
            System::Memread => "memread",
            System::Handoff => "handoff",
        }
    }

    /// A short column heading.
    pub(crate) fn short(self) -> &'static str {
        match self {
            System::InProcess => "in-process",
            s => s.name(),
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<System> {
        Self::ALL.into_iter().find(|s| s.name() == name || s.short() == name)
    }

    /// The stream peers that frame records into 32 KiB buffers with the credit protocol
    /// (the in-process channel frames them the same way, without credits).
    pub(crate) fn is_stream_peer(self) -> bool {
        matches!(self, System::Tcp | System::Unix | System::Pipe)
    }
}

/// How a writer picks the channels of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// Round robin (Flink's default for the benchmark; RebalancePartitioner).
    RoundRobin,
    /// Flink's DataSkewChannelSelector: channels 0..C once each, then always 0.
    Skew,
    /// Every record to every channel.
    Broadcast,
}

impl Pattern {
    pub(crate) const ALL: [Pattern; 3] = [Pattern::RoundRobin, Pattern::Skew, Pattern::Broadcast];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Pattern::RoundRobin => "round-robin",
            Pattern::Skew => "skew",
            Pattern::Broadcast => "broadcast",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Pattern> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Writers x channels per writer, and how records go to channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) writers: u32,
    pub(crate) channels: u32,
    pub(crate) pattern: Pattern,
}

impl Shape {
    pub(crate) const fn new(writers: u32, channels: u32) -> Self {
        Self { writers, channels, pattern: Pattern::RoundRobin }
    }

    pub(crate) const fn with(writers: u32, channels: u32, pattern: Pattern) -> Self {
        Self { writers, channels, pattern }
    }

    /// `4x1000`, `10x1000-skew`, `4x100-broadcast`.
    pub(crate) fn name(self) -> String {
        match self.pattern {
            Pattern::RoundRobin => format!("{}x{}", self.writers, self.channels),
            p => format!("{}x{}-{}", self.writers, self.channels, p.name()),
        }
    }

    /// How many times the consumer reads each record written.
    pub(crate) fn fanout(self) -> u64 {
        match self.pattern {
            Pattern::Broadcast => u64::from(self.channels),
            _ => 1,
        }
    }
}

/// One cell of the matrix: a shape, a buffer timeout, a record size and shmflow's segment
/// size (the default 32 KiB, or a user's tuning for large records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Case {
    pub(crate) shape: Shape,
    pub(crate) timeout_ms: i64,
    pub(crate) size: usize,
    pub(crate) segment: usize,
}

impl Case {
    /// A case with the default 32 KiB segments.
    pub(crate) const fn new(shape: Shape, timeout_ms: i64, size: usize) -> Self {
        Self { shape, timeout_ms, size, segment: SEGMENT }
    }

    /// The shape's name, and the segment size where it is not the default
    /// (`1x1-4MiB-segments`): a configuration of its own in the report.
    pub(crate) fn shape_name(self) -> String {
        if self.segment == SEGMENT {
            self.shape.name()
        } else {
            format!("{}-{}-segments", self.shape.name(), size_name(self.segment).replace(' ', ""))
        }
    }

    /// Whether `system` runs this case: a tuned segment size is shmflow's alone (the other
    /// systems keep their 32 KiB framing, so their figures would repeat the default case's).
    pub(crate) fn runs(self, system: System) -> bool {
        self.segment == SEGMENT || system == System::Shmflow
    }
}

pub(crate) fn size_name(size: usize) -> String {
    match size {
        LONG => "8 B (u64)".into(),
        PAIR => "12 B (u64,u32)".into(),
        SEG_RECORD => "32 KiB segment".into(),
        s if s >= MIB && s % MIB == 0 => format!("{} MiB", s / MIB),
        s if s >= KIB && s % KIB == 0 => format!("{} KiB", s / KIB),
        s => format!("{s} B"),
    }
}

/// What a producer child is told: `system:W:C:pattern:timeout_ms:size:segment`.
pub(crate) fn encode_spec(system: System, case: Case) -> String {
    let s = case.shape;
    format!(
        "{}:{}:{}:{}:{}:{}:{}",
        system.name(),
        s.writers,
        s.channels,
        s.pattern.name(),
        case.timeout_ms,
        case.size,
        case.segment
    )
}

pub(crate) fn decode_spec(spec: &str) -> Res<(System, Case)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [system, w, c, pattern, timeout, size, segment] = parts[..] else {
        return Err(format!("bad spec {spec:?}").into());
    };
    let system = System::from_name(system).ok_or_else(|| format!("unknown system {system:?}"))?;
    let pattern = Pattern::from_name(pattern).ok_or_else(|| format!("unknown pattern {pattern:?}"))?;
    let case = Case {
        shape: Shape::with(w.parse()?, c.parse()?, pattern),
        timeout_ms: timeout.parse()?,
        size: size.parse()?,
        segment: segment.parse()?,
    };
    if case.size < LONG || case.shape.writers == 0 || case.shape.channels == 0 {
        return Err(format!("bad case in spec {spec:?}").into());
    }
    Ok((system, case))
}

/// How much to measure.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) full: bool,
    pub(crate) systems: Vec<System>,
    pub(crate) rounds: u32,
    pub(crate) warm: Duration,
    pub(crate) window: Duration,
    pub(crate) sizes: Vec<usize>,
    pub(crate) cases: Vec<Case>,
}

impl Plan {
    /// The full run: Flink's shapes with 8 B and 1 KiB records (1x1 and 2x2 at 0, 1 and
    /// 100 ms), the 12 B pair, the 32 KiB segment stream and 1 MiB records at 1x1, 100 ms,
    /// the last also with 4 MiB segments (shmflow only).
    pub(crate) fn full_cases() -> Vec<Case> {
        let mut cases = Vec::new();
        for size in [LONG, KIB] {
            for shape in [Shape::new(1, 1), Shape::new(2, 2)] {
                for timeout_ms in [0, 1, 100] {
                    cases.push(Case::new(shape, timeout_ms, size));
                }
            }
            for (shape, timeout_ms) in [
                (Shape::new(4, 100), 100),
                (Shape::new(4, 1000), 1),
                (Shape::new(4, 1000), 100),
                (Shape::with(10, 1000, Pattern::Skew), 1),
                (Shape::with(4, 100, Pattern::Broadcast), 100),
            ] {
                cases.push(Case::new(shape, timeout_ms, size));
            }
        }
        for size in [PAIR, SEG_RECORD, MIB] {
            cases.push(Case::new(Shape::new(1, 1), 100, size));
        }
        cases.push(Case { segment: LARGE_SEGMENT, ..Case::new(Shape::new(1, 1), 100, MIB) });
        cases
    }

    /// The smoke run: every shape, record kind and system once.
    pub(crate) fn quick_cases() -> Vec<Case> {
        vec![
            Case::new(Shape::new(1, 1), 0, LONG),
            Case::new(Shape::new(2, 2), 1, PAIR),
            Case::new(Shape::new(4, 100), 100, KIB),
            Case::new(Shape::new(4, 1000), 1, LONG),
            Case::new(Shape::with(10, 1000, Pattern::Skew), 1, LONG),
            Case::new(Shape::with(4, 100, Pattern::Broadcast), 100, LONG),
            Case::new(Shape::new(1, 1), 100, SEG_RECORD),
            Case::new(Shape::new(1, 1), 1, MIB),
            Case { segment: LARGE_SEGMENT, ..Case::new(Shape::new(1, 1), 1, MIB) },
        ]
    }

    pub(crate) fn new(args: &Args) -> Self {
        let keep = |c: &Case| {
            args.only_size.is_none_or(|o| o == c.size)
                && args.only_shape.as_ref().is_none_or(|o| *o == c.shape.name() || *o == c.shape_name())
                && args.only_timeout.is_none_or(|o| o == c.timeout_ms)
        };
        let (cases, warm, window): (Vec<Case>, _, _) = if args.full {
            (Self::full_cases().into_iter().filter(keep).collect(), 200, args.measure_ms.unwrap_or(300))
        } else {
            (Self::quick_cases(), 10, args.measure_ms.unwrap_or(30))
        };
        let mut sizes: Vec<usize> = cases.iter().map(|c| c.size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        Plan {
            full: args.full,
            systems: systems(args),
            rounds: args.rounds.unwrap_or(if args.full { 3 } else { 1 }),
            warm: Duration::from_millis(warm),
            window: Duration::from_millis(window),
            sizes,
            cases,
        }
    }

    /// The run kind for the JSON `run` field.
    pub(crate) fn run_kind(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
        }
    }

    /// Warm-up and window of `case`: in the full run at least 2 and 5 buffer timeouts, so
    /// that data flushed in bursts by the timer averages out (five systems per case keep
    /// the full run within about six minutes on two cores).
    pub(crate) fn timing(&self, case: Case) -> (Duration, Duration) {
        let t = Duration::from_millis(case.timeout_ms.max(0) as u64);
        if self.full {
            (self.warm.max(t * 2), self.window.max(t * 5))
        } else {
            (self.warm, self.window)
        }
    }
}

/// The systems to run: all, or the one `--system` names.
pub(crate) fn systems(args: &Args) -> Vec<System> {
    System::ALL.into_iter().filter(|&s| args.only_system.is_none_or(|o| o == s)).collect()
}

pub(crate) struct Args {
    pub(crate) full: bool,
    pub(crate) pin: bool,
    pub(crate) rounds: Option<u32>,
    pub(crate) measure_ms: Option<u64>,
    pub(crate) json: Option<std::path::PathBuf>,
    /// Filters on the full plan: record size, shape, timeout, system.
    pub(crate) only_size: Option<usize>,
    pub(crate) only_shape: Option<String>,
    pub(crate) only_timeout: Option<i64>,
    pub(crate) only_system: Option<System>,
}

/// The throughput bench's flags.
#[derive(Parser)]
#[command(
    name = "throughput",
    about = "Throughput of shmflow and its peers: writers x channels x flush timeout x record size"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) bench: BenchArgs,
    /// Do not pin the processes to CPUs.
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pub(crate) pin: bool,
    /// Rounds per case.
    #[arg(long, value_name = "N")]
    pub(crate) rounds: Option<u32>,
    /// Measurement window per case in ms.
    #[arg(long, value_name = "MS")]
    pub(crate) measure_ms: Option<u64>,
    /// Only cases of this record size (a filter on the full plan).
    #[arg(long, value_name = "BYTES")]
    pub(crate) size: Option<usize>,
    /// Only cases of this shape, such as 4x1000 or 10x1000-skew.
    #[arg(long, value_name = "NAME")]
    pub(crate) shape: Option<String>,
    /// Only cases of this flush timeout in ms.
    #[arg(long, value_name = "MS", allow_negative_numbers = true)]
    pub(crate) timeout: Option<i64>,
    /// Only this system.
    #[arg(long, value_name = "NAME")]
    pub(crate) system: Option<String>,
}

pub(crate) fn parse_args() -> Res<Args> {
    let c = Cli::parse();
    let only_system = match c.system {
        None => None,
        Some(name) => Some(System::from_name(&name).ok_or_else(|| format!("unknown system {name:?}"))?),
    };
    Ok(Args {
        full: c.bench.full,
        pin: c.pin,
        rounds: c.rounds,
        measure_ms: c.measure_ms,
        json: c.bench.json,
        only_size: c.size,
        only_shape: c.shape,
        only_timeout: c.timeout,
        only_system,
    })
}
