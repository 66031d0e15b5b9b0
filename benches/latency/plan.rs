//! Peers, cases, plan and arguments (a module of the latency bench).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    Bare,
    Futex,
    Record,
    RecordMoving,
    Pipe,
    Unix,
    Tcp,
    ShmSpin,
    ShmAdaptive,
    ShmPark,
    NetSpin,
    NetPark,
}

impl Peer {
    pub(crate) const ALL: [Peer; 12] = [
        Peer::Bare,
        Peer::Futex,
        Peer::Record,
        Peer::RecordMoving,
        Peer::Pipe,
        Peer::Unix,
        Peer::Tcp,
        Peer::ShmSpin,
        Peer::ShmAdaptive,
        Peer::ShmPark,
        Peer::NetSpin,
        Peer::NetPark,
    ];

    /// A unique name: passed to the responder, and the label of the stdout tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Peer::Bare => "bare-atomic",
            Peer::Futex => "futex",
            Peer::Record => "shm-record",
            Peer::RecordMoving => "shm-record-moving",
            Peer::Pipe => "pipe",
            Peer::Unix => "unix-socket",
            Peer::Tcp => "tcp-nodelay",
            Peer::ShmSpin => "shmflow-spin",
            Peer::ShmAdaptive => "shmflow-adaptive",
            Peer::ShmPark => "shmflow-park",
            Peer::NetSpin => "shmflow-netstack-spin",
            Peer::NetPark => "shmflow-netstack-park",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The `system` of the JSON records.
    pub(crate) fn system(self) -> &'static str {
        match self {
            Peer::ShmSpin | Peer::ShmAdaptive | Peer::ShmPark => "shmflow",
            Peer::NetSpin | Peer::NetPark => "shmflow-netstack",
            p => p.name(),
        }
    }

    /// The `mode` of the JSON records: how the peer waits.
    pub(crate) fn mode(self) -> &'static str {
        match self {
            Peer::Bare | Peer::Record | Peer::RecordMoving | Peer::ShmSpin | Peer::NetSpin => "spin",
            Peer::ShmAdaptive => "adaptive",
            Peer::Futex | Peer::Pipe | Peer::Unix | Peer::Tcp | Peer::ShmPark | Peer::NetPark => "park",
        }
    }

    /// Peers that move a payload (the others move one word).
    pub(crate) fn carries_payload(self) -> bool {
        !matches!(self, Peer::Bare | Peer::Futex)
    }

    /// Peers whose round trip sleeps (tens of microseconds here): they get fewer samples.
    pub(crate) fn sleeps(self) -> bool {
        matches!(self, Peer::Futex | Peer::Pipe | Peer::Unix | Peer::Tcp | Peer::ShmPark | Peer::NetPark)
    }

    /// The payload-less limit a peer's ratios are taken against: the bare atomic ping-pong
    /// for the spinning shmflow peers (and for `shm-record`, which shows what moving the
    /// payload adds to it), the futex one for the parking ones.
    pub(crate) fn limit(self) -> Option<Peer> {
        match self {
            Peer::Record | Peer::RecordMoving | Peer::ShmSpin | Peer::ShmAdaptive | Peer::NetSpin => Some(Peer::Bare),
            Peer::ShmPark | Peer::NetPark => Some(Peer::Futex),
            _ => None,
        }
    }

    /// The wait policy of a shmflow peer (stream or network stack).
    pub(crate) fn policy(self) -> Option<WaitPolicy> {
        match self {
            Peer::ShmSpin | Peer::NetSpin => Some(WaitPolicy::spin()),
            Peer::ShmAdaptive => Some(WaitPolicy::adaptive()),
            Peer::ShmPark | Peer::NetPark => Some(WaitPolicy::park()),
            _ => None,
        }
    }
}

/// One measured case: a peer and its payload size (0 for the payload-less peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Case {
    pub(crate) peer: Peer,
    pub(crate) payload: usize,
}

impl Case {
    /// The shmflow segment size of this case, if it is a shmflow case.
    pub(crate) fn segment_bytes(self) -> Option<usize> {
        self.peer.policy().map(|_| segment_size_for(self.payload))
    }
}

/// The cases of a run, in the order each round runs them: the two limits, then every
/// payload peer at each size, smallest size first (only the peers in `peers`; the record
/// peers only up to [`RECORD_MAX`]).
pub(crate) fn cases(sizes: &[usize], peers: &[Peer]) -> Vec<Case> {
    let chosen = || Peer::ALL.into_iter().filter(|p| peers.contains(p));
    let mut v: Vec<Case> = chosen().filter(|p| !p.carries_payload()).map(|peer| Case { peer, payload: 0 }).collect();
    for &payload in sizes {
        let fits = |p: &Peer| !matches!(p, Peer::Record | Peer::RecordMoving) || payload <= RECORD_MAX;
        v.extend(chosen().filter(|p| p.carries_payload()).filter(fits).map(|peer| Case { peer, payload }));
    }
    v
}

/// Round trips of one case in one round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) warmup: u64,
    pub(crate) measured: u64,
}

/// How much to measure.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) full: bool,
    pub(crate) rounds: u32,
    pub(crate) sizes: Vec<usize>,
}

impl Plan {
    /// Measured samples per round, spinning / parking peers: up to 1 KiB 50k / 10k; 32 KiB
    /// 10k / 2k; 1 MiB 2k / 500, each after a tenth as many warm-up round trips (at least
    /// enough to fault in every segment of the pools). Full runs have 4 rounds (about a
    /// minute on a quiet machine); quick ones 1 round of 1k samples (20 at 1 MiB): a few
    /// seconds, even unoptimized.
    pub(crate) fn counts(&self, case: Case) -> Counts {
        let sleeps = case.peer.sleeps();
        let measured = match (self.full, case.payload) {
            (true, 0..=1024) if sleeps => 10_000,
            (true, 0..=1024) => 50_000,
            (true, 1025..=65536) if sleeps => 2_000,
            (true, 1025..=65536) => 10_000,
            (true, _) if sleeps => 500,
            (true, _) => 2_000,
            (false, 0..=1024) => 1_000,
            (false, 1025..=65536) => 200,
            (false, _) => 20,
        };
        let warmup = (measured / 10).max(4 * u64::from(CREDIT));
        Counts { warmup, measured }
    }

    /// Round trips of the limit measured beside `case` ([`Peer::limit`], just before and
    /// just after it, in every round): as many as the case's own, so the two p50s compare
    /// runs of one length. Shorter limit runs were biased low for the parking peers: in the
    /// idle run of session 7 (docs/bench/logs/latency.log, commit 85b2be5) the futex
    /// ping-pong's 2k-sample runs beside the park cases had near one-way p50s of
    /// 16.5-17.0 µs and the park cases' paired ratios were 1.12-1.20x, while per round the
    /// same cases over the futex ping-pong's own 10k-sample run (it follows the bare-atomic
    /// run that starts each round, near in rounds 2-4) had a median ratio of 1.00-1.03x;
    /// every long parking run sat level with the long futex run (merged p50s: futex 19.7,
    /// Unix socket 18.6-19.4, shmflow park 19.9, netstack park 20.1-20.3 µs). The cost:
    /// about 1 s per parking case and round at 64 B.
    pub(crate) fn paired_counts(&self, case: Case) -> Counts {
        self.counts(case)
    }

    pub(crate) fn run(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
        }
    }
}

pub(crate) struct Args {
    pub(crate) full: bool,
    pub(crate) pin: bool,
    pub(crate) json: Option<std::path::PathBuf>,
    pub(crate) sizes: Vec<usize>,
    pub(crate) peers: Vec<Peer>,
    pub(crate) rounds: Option<u32>,
}

/// The latency bench's flags.
#[derive(Parser)]
#[command(name = "latency", about = "Cross-process ping-pong latency of shmflow and its peers")]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) bench: BenchArgs,
    /// Do not pin the two processes to CPUs.
    #[arg(long = "no-pin", action = clap::ArgAction::SetFalse)]
    pub(crate) pin: bool,
    /// Payload sizes, a subset of SIZES (such as 64,1024).
    #[arg(long, value_name = "A,B,..")]
    pub(crate) sizes: Option<String>,
    /// Peers by name as in the tables' first column plus mode (such as
    /// bare-atomic,shmflow-spin,shmflow-netstack-park); a ratio whose peers were left out is
    /// not printed.
    #[arg(long, value_name = "NAME,..")]
    pub(crate) peers: Option<String>,
    /// Rounds (default: 4 in full runs, 1 in quick ones); each round runs every case, each
    /// shmflow case between two short runs of its limit.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) rounds: Option<u32>,
}

pub(crate) fn parse_args() -> Res<Args> {
    let c = Cli::parse();
    let mut args = Args {
        full: c.bench.full,
        pin: c.pin,
        json: c.bench.json,
        sizes: SIZES.to_vec(),
        peers: Peer::ALL.to_vec(),
        rounds: c.rounds,
    };
    if let Some(list) = c.sizes {
        args.sizes = common::args::list(&list).map_err(|e| format!("--sizes: {e}"))?;
        if let Some(s) = args.sizes.iter().find(|s| !SIZES.contains(s)) {
            return Err(format!("--sizes: {s} is not one of {SIZES:?}").into());
        }
    }
    if let Some(list) = c.peers {
        args.peers = list
            .split(',')
            .map(|n| {
                Peer::from_name(n).ok_or_else(|| {
                    let names: Vec<&str> = Peer::ALL.iter().map(|p| p.name()).collect();
                    format!("--peers: {n:?} is not one of {}", names.join(", "))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(args)
}

/// "8 B", "1 KiB", "1 MiB"; "-" for no payload.
pub(crate) fn size_label(bytes: usize) -> String {
    match bytes {
        0 => "-".into(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
