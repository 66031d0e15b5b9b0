//! Errors. Each layer says what went wrong in its own terms; the crate-wide
//! [`Error`](enum@Error) is what the API returns, and every layer's error converts into it
//! (`From`), so `?` carries it up and a caller matches one enum.
//!
//! ```text
//!  layer           its error          at the API                what went wrong
//!  memory          ArenaError         Error::Arena(..)          creating or attaching an arena
//!  ring, memory    Violation          Error::ProtocolViolation  a value from shared memory
//!                                                               breaks the protocol
//!  ring (push)     PushError::Full    (not converted: the pusher decides what a full ring
//!                                     means; a channel reports Error::RingFull)
//!  any             ConfigError        Error::Config(..)         a setting or argument that
//!                                                               cannot be used
//!  runtime         GraphError         Error::Graph(..)          a job graph that cannot run
//!                                                               as built, a deployment that
//!                                                               does not match it
//!  ring, buffer    Error::{RingFull, PoolExhausted, Timeout}    flow control
//!  ring, gate      Error::{ProducerFailed, ConsumerGone, PeerDied}  the other end
//!  partition       Error::{PartitionNotFound, PartitionExists, PartitionFinished,
//!                         PartitionFailed, PartitionReleased}  the partition's life cycle
//!  runtime         Error::{JobFailed, Cancelled, Interrupted, CoordinatorDied}
//! ```
//!
//! [`Error::Invalid`] (a `what` and a formatted detail) is what is left for what no typed
//! error describes: a job's own operators and sources refusing their data (user code has
//! no error type of its own in this crate), and the command line's own checks of files and
//! results (a `--input` file that changed while the job read it, a malformed result line,
//! a latency histogram that does not decode). The library itself returns it nowhere.
//!
//! Errors are built only on the path that returns them (clippy's `or_fun_call` is denied):
//! a per-record call passes a closure that names the place, called only for an error.

use thiserror::Error;

/// What went wrong creating or attaching an arena.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArenaError {
    /// The configuration is out of range.
    #[error("invalid arena configuration: {0}")]
    Config(String),
    /// The file is smaller than a header, or smaller than the size its header claims.
    #[error("arena is truncated: {what} needs {needed} bytes but the file has {actual}")]
    Truncated {
        /// What did not fit.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Not an arena at all.
    #[error("not a shmflow arena: magic bytes are {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// What the file starts with.
        found: [u8; 8],
        /// [`crate::memory::MAGIC`].
        expected: [u8; 8],
    },
    /// An arena of another layout version.
    #[error("arena layout version {found} is not supported (this build reads version {expected})")]
    Version {
        /// Version in the file.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// The header checksum does not match: the header was damaged.
    #[error(
        "arena header checksum mismatch (stored {stored:#018x}, computed {computed:#018x}): the header is damaged"
    )]
    Checksum {
        /// Stored value.
        stored: u64,
        /// Computed value.
        computed: u64,
    },
    /// The header's numbers contradict each other or the file.
    #[error("arena header is inconsistent: {0}")]
    Inconsistent(String),
    /// The creator never finished initializing it.
    #[error("arena is not ready (its creator is still initializing it, or died while doing so)")]
    NotReady,
    /// Created by another user.
    #[error("arena {name} belongs to uid {owner}, not to this user (uid {me})")]
    Foreign {
        /// Arena name.
        name: String,
        /// Its owner.
        owner: u32,
        /// Our uid.
        me: u32,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What we tried.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ArenaError {
    pub(crate) fn io(op: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        ArenaError::Io { op: op.into(), source: source.into() }
    }
}

/// A value read from shared memory that breaks the protocol: a faulty or hostile peer (or
/// a bug). Never a panic: the value is checked before use and reported with its place.
#[derive(Debug, Error)]
#[error("protocol violation in {place}: {detail}")]
pub struct Violation {
    /// Which structure (names the channel, ring or segment).
    pub place: String,
    /// The offending value and the range it should be in.
    pub detail: String,
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        Error::ProtocolViolation { place: v.place, detail: v.detail }
    }
}

/// Why a push onto a ring did not happen ([`crate::ring::RingProducer::push`]).
///
/// There is deliberately no `From<PushError> for Error`: a full ring is back-pressure, and
/// only the pusher knows what it means there (wait for room, report [`Error::RingFull`], or
/// call it a [`Violation`] when credit promised room).
#[derive(Debug, Error)]
pub enum PushError {
    /// No room for the values now; nothing was pushed. Push again once the consumer made
    /// room.
    #[error("the ring is full")]
    Full,
    /// The consumer's head breaks the ring invariant, or the tail cannot advance.
    #[error(transparent)]
    Violation(#[from] Violation),
}

/// A setting or argument that cannot be used (out of its range, contradicting another, an
/// unknown name), refused before it has any effect.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A number outside the range it must be in.
    #[error("invalid {what}: {value} not in {min}..={max}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: i64,
        /// The smallest value allowed.
        min: i64,
        /// The largest value allowed.
        max: i64,
    },
    /// A setting that cannot be used as given, or settings that contradict each other.
    #[error("invalid {what}: {detail}")]
    Conflict {
        /// Which settings.
        what: &'static str,
        /// What is wrong with them (the values given and the rule).
        detail: String,
    },
    /// A name that is none of the known ones.
    #[error("invalid {what}: unknown {what} {name:?} (known: {known})")]
    Unknown {
        /// What kind of name.
        what: &'static str,
        /// The name given.
        name: String,
        /// The names allowed.
        known: &'static str,
    },
}

impl ConfigError {
    /// [`ConfigError::OutOfRange`] unless `value` is in `min..=max`.
    ///
    /// # Errors
    /// As said.
    pub fn check_range(what: &'static str, value: i64, min: i64, max: i64) -> Result<(), Self> {
        if (min..=max).contains(&value) {
            Ok(())
        } else {
            Err(ConfigError::OutOfRange { what, value, min, max })
        }
    }
}

/// Errors on a live arena: protocol, flow control and peers.
///
/// Like the other error enums here it is `#[non_exhaustive]`: later versions may add
/// variants, so a `match` outside this crate needs a `_` arm.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Arena creation or attach.
    #[error(transparent)]
    Arena(#[from] ArenaError),
    /// A setting or argument out of its range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A job graph that cannot run as built (or a deployment that does not match it).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A value read from shared memory breaks the protocol (a faulty or hostile peer).
    #[error("protocol violation in {place}: {detail}")]
    ProtocolViolation {
        /// Which structure (names the channel or partition).
        place: String,
        /// The offending value and the range it should be in.
        detail: String,
    },
    /// A ring has no room now (back-pressure, not a fault): retry once the consumer made
    /// room. The one way a full ring is reported above the ring itself.
    #[error("the {ring} ring of channel {channel} is full")]
    RingFull {
        /// Which ring of the channel ("priority", ...).
        ring: &'static str,
        /// Channel id.
        channel: u32,
    },
    /// The arena-wide pool has no segment left.
    #[error("network buffer pool exhausted")]
    PoolExhausted,
    /// A bounded wait ran out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
    /// The producer of a channel failed or died.
    #[error("producer of channel {channel} failed")]
    ProducerFailed {
        /// Channel id.
        channel: u32,
    },
    /// A peer process died while this one depended on it.
    #[error("{role} of {place} (pid {pid}) died")]
    PeerDied {
        /// "producer" or "consumer".
        role: &'static str,
        /// The partition / channel it served.
        place: String,
        /// Its pid.
        pid: u32,
    },
    /// A worker slot that another process holds (a live one, or a dead one whose
    /// reclamation has not run yet).
    #[error("worker slot {slot} is held by {holder} (pid {pid})")]
    SlotHeld {
        /// The slot.
        slot: u32,
        /// Pid of the holder.
        pid: u32,
        /// What kind of holder.
        holder: &'static str,
    },
    /// A producer waited for a consumer that never attached to a subpartition.
    #[error("no consumer attached to subpartition {subpartition} of partition {partition} within {waited:?}")]
    NoConsumer {
        /// The partition id.
        partition: String,
        /// The subpartition.
        subpartition: u32,
        /// How long the producer waited.
        waited: std::time::Duration,
    },
    /// The consumer of a channel went away.
    #[error("consumer of channel {channel} is gone")]
    ConsumerGone {
        /// Channel id.
        channel: u32,
    },
    /// A record or write larger than what the target can hold.
    #[error("{what} of {len} bytes does not fit (at most {max})")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An arena region is full (no free channel block, directory entry, ...).
    #[error("no free {0} left in the arena; create it with a larger limit")]
    OutOfSlots(&'static str),
    /// A job failed; the message names the first failing task or worker.
    #[error("job failed: {0}")]
    JobFailed(String),
    /// The task was cancelled (the job is shutting down).
    #[error("cancelled")]
    Cancelled,
    /// A stop signal (SIGINT, SIGTERM or SIGHUP) arrived; the work was stopped and cleaned
    /// up. A command line exits with status 128 + `signal`.
    #[error("interrupted")]
    Interrupted {
        /// The signal number.
        signal: i32,
    },
    /// A worker's coordinator died (its control socket closed before the job ended); the
    /// worker stopped its tasks.
    #[error("the coordinator (pid {pid}) died; this worker stopped its tasks")]
    CoordinatorDied {
        /// The coordinator's pid.
        pid: u32,
    },
    /// A partition that no producer registered (after the request backoff ran out).
    #[error("partition {0} not found (no producer registered it before the request backoff ran out)")]
    PartitionNotFound(String),
    /// A partition whose producer died or gave up.
    #[error("partition {0} failed (its producer died or gave up)")]
    PartitionFailed(String),
    /// A write to a partition after its `finish` (or after it failed).
    #[error("partition {0} is already finished")]
    PartitionFinished(String),
    /// A subpartition index beyond the partition's subpartitions.
    #[error("subpartition {subpartition} of partition {partition} does not exist (it has {count})")]
    NoSuchSubpartition {
        /// The partition id.
        partition: String,
        /// The index asked for.
        subpartition: u32,
        /// How many the partition has.
        count: u32,
    },
    /// A subpartition that another consumer reads already (one reader per subpartition).
    #[error("subpartition {subpartition} of partition {partition} is read by another consumer (pid {pid})")]
    SubpartitionTaken {
        /// The partition id.
        partition: String,
        /// The subpartition.
        subpartition: u32,
        /// The other consumer's pid (0 if unknown).
        pid: u32,
    },
    /// A partition id that is registered already (and neither released nor failed).
    #[error("partition {0} is already registered")]
    PartitionExists(String),
    /// A partition that was released.
    #[error("partition {0} was released")]
    PartitionReleased(String),
    /// A feature that this build does not support yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// Something invalid that no typed error above describes: what a job's own operators
    /// and sources return for data they refuse, and the command line's own checks. The
    /// library returns [`ConfigError`] for settings and [`GraphError`]
    /// for job graphs instead.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// An operating-system error.
    #[error("{op}: {source}")]
    Io {
        /// What we tried.
        op: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl From<std::io::Error> for Error {
    /// An I/O error of the caller's own (`?` on `std::fs` or `std::process` calls in a
    /// function returning [`Result`]); shmflow's own I/O errors say what they tried.
    fn from(source: std::io::Error) -> Self {
        Error::Io { op: "I/O".into(), source }
    }
}

/// A job graph that cannot run as built, or a deployment that does not match the job this
/// process built (the runtime's errors). Converts into [`crate::Error::Graph`]; re-exported
/// as `runtime::GraphError` and defined here so the error module imports no layer above it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// A vertex reads a vertex that is not built before it (vertices are in build order).
    #[error("invalid job graph: vertex {vertex} reads vertex {input}, which does not come before it")]
    InputOrder {
        /// The reading vertex.
        vertex: usize,
        /// The vertex it reads.
        input: usize,
    },
    /// A vertex whose inputs mix pipelined and blocking exchanges (one gate reads them all).
    #[error("invalid job graph: the inputs of vertex {vertex} ({name}) mix pipelined and blocking exchanges")]
    MixedInputs {
        /// The vertex.
        vertex: usize,
        /// Its name.
        name: String,
    },
    /// A forward edge between different parallelisms.
    #[error("invalid forward edge: parallelism {producer} -> {consumer}: forward needs equal parallelism")]
    ForwardParallelism {
        /// The producer's parallelism.
        producer: u32,
        /// The consumer's parallelism.
        consumer: u32,
    },
    /// [`SelectorKind::KeyHash`](crate::partition::SelectorKind::KeyHash) given to
    /// [`Stream::exchange_with`](crate::runtime::Stream::exchange_with), which has no key to hash.
    #[error("invalid exchange_with: a key-hash exchange needs a key: use key_by(..) instead")]
    KeyHashWithoutKey,
    /// A task asked for the output of a vertex that has no output edge.
    #[error("invalid job graph: vertex {vertex} has no output edge")]
    NoOutput {
        /// The vertex.
        vertex: usize,
    },
    /// A deployment that does not fit the job this worker built (another binary, or a job
    /// built from other arguments), or that names an unknown partition type.
    #[error("invalid deployment: {0}")]
    Deployment(String),
}

/// Crate result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use crate::error::{ConfigError, Error, PushError, Violation};

    #[test]
    fn check_range_accepts_both_ends_and_refuses_one_past_them() {
        assert_eq!(ConfigError::check_range("credit", 1, 1, 3), Ok(()));
        assert_eq!(ConfigError::check_range("credit", 3, 1, 3), Ok(()));
        for v in [0, 4, i64::MIN, i64::MAX] {
            assert_eq!(
                ConfigError::check_range("credit", v, 1, 3),
                Err(ConfigError::OutOfRange { what: "credit", value: v, min: 1, max: 3 })
            );
        }
        assert!(ConfigError::check_range("empty", 0, 1, 0).is_err(), "an empty range takes nothing");
    }

    #[test]
    fn layer_errors_keep_their_message_at_the_api_and_can_be_matched_there() {
        let e: Error = ConfigError::OutOfRange { what: "credit", value: 0, min: 1, max: 3 }.into();
        assert_eq!(e.to_string(), "invalid credit: 0 not in 1..=3");
        assert!(matches!(e, Error::Config(ConfigError::OutOfRange { value: 0, .. })));
        let e: Error =
            ConfigError::Unknown { what: "selector", name: "hash".into(), known: "forward, rebalance" }.into();
        assert_eq!(e.to_string(), "invalid selector: unknown selector \"hash\" (known: forward, rebalance)");
        let e: Error = ConfigError::Conflict { what: "pool", detail: "min 3 > max 2".into() }.into();
        assert_eq!(e.to_string(), "invalid pool: min 3 > max 2");
        let e: Error = Violation { place: "channel 4".into(), detail: "ring tail 9 outside 0..=8".into() }.into();
        assert_eq!(e.to_string(), "protocol violation in channel 4: ring tail 9 outside 0..=8");
        assert!(matches!(e, Error::ProtocolViolation { ref place, .. } if place == "channel 4"));
        let e = Error::RingFull { ring: "priority", channel: 7 };
        assert_eq!(e.to_string(), "the priority ring of channel 7 is full");
        let p = PushError::Violation(Violation { place: "r".into(), detail: "d".into() });
        assert_eq!(p.to_string(), "protocol violation in r: d");
    }
}
