//! The job API: sources, stateless operators, key_by, keyed reductions, count windows and
//! sinks, built as ordinary Rust closures.
//!
//! ```text
//!  JobBuilder::source(..)  -> Stream<T> --map/flat_map/filter (chained)--> Stream<U>
//!     --key_by / rebalance / rescale / broadcast / forward / global (an exchange: a new
//!       job vertex, with its ResultPartitionType and ChannelSelector)-->
//!  KeyedStream<T, K> --reduce / count_window--> Stream<T> ... --sink--> JobGraph
//! ```
//!
//! Worker processes run the same binary and build the same job from the same arguments, so
//! closures are never serialized: a vertex is identified by its position in the graph.

use super::execution::TaskIo;
use crate::error::Result;
use crate::partition::{
    BroadcastPartitioner, ChannelSelector, ForwardPartitioner, GlobalPartitioner, KeyGroupPartitioner,
    RebalancePartitioner, RescalePartitioner, ResultPartitionType, SelectorKind, DEFAULT_MAX_PARALLELISM,
};
use crate::record::{FromRecord, Record};
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::hash::Hash;
use std::sync::Arc;

/// A value that can cross an exchange: serialized in place, decoded on the other side.
pub trait Data: Record + for<'a> FromRecord<'a> + Send + 'static {}
impl<T: Record + for<'a> FromRecord<'a> + Send + 'static> Data for T {}

/// Keys are hashed as Flink hashes the equivalent Java key (defined in [`crate::partition`]).
pub use crate::partition::JavaHash;

/// Which subtask of which vertex a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Job name.
    pub job: String,
    /// Vertex index in the job graph.
    pub vertex: usize,
    /// Vertex name.
    pub vertex_name: String,
    /// Subtask index, `0..parallelism`.
    pub subtask: u32,
    /// The vertex's parallelism.
    pub parallelism: u32,
}

/// Where a stream's values go: the next operator of the chain, an exchange or a sink.
pub trait Collector<T> {
    /// Takes one value.
    ///
    /// # Errors
    /// Whatever the downstream reports (backpressure waits, a failed peer, user errors).
    fn collect(&mut self, value: T) -> Result<()>;
    /// The input ended: emit what is buffered, then pass the end on.
    ///
    /// # Errors
    /// As [`collect`](Self::collect).
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Publishes what was collected so far to the consumers now, without waiting for the
    /// buffer timeout. A task flushes its output at each buffer timeout only from its own
    /// thread (at its next record, or when it waits for input); a source that waits for
    /// the outside world between records calls this before it waits, so its last records
    /// do not wait with it. Operators pass it on; keyed state is not emitted by it.
    ///
    /// # Errors
    /// As [`collect`](Self::collect).
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A boxed collector.
pub type BoxCollector<T> = Box<dyn Collector<T>>;

/// Runs one subtask of a vertex, given its input and output (see [`TaskIo`]).
pub type VertexBody = Arc<dyn Fn(&TaskInfo, &mut TaskIo) -> Result<()> + Send + Sync>;

type Head<T> = Arc<dyn Fn(&TaskInfo, BoxCollector<T>) -> Result<Runner> + Send + Sync>;
/// Drives a subtask once its output chain is built.
pub(crate) type Runner = Box<dyn FnOnce(&mut TaskIo) -> Result<()>>;

/// How two vertices are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeSpec {
    /// The partition type of the producer's result.
    pub partition_type: ResultPartitionType,
    /// The selector the producer writes with.
    pub selector: SelectorKind,
}

impl EdgeSpec {
    /// Whether each consumer reads a subset of producers (forward, rescale) rather than all.
    pub fn is_pointwise(&self) -> bool {
        matches!(self.selector, SelectorKind::Forward | SelectorKind::Rescale)
    }
}

/// One vertex of the job graph.
#[derive(Clone)]
pub struct JobVertex {
    /// Name (operator chain description).
    pub name: String,
    /// Parallelism.
    pub parallelism: u32,
    /// The edge from the previous vertex (None for the source).
    pub input: Option<EdgeSpec>,
    /// Runs one subtask.
    pub body: VertexBody,
}

impl std::fmt::Debug for JobVertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobVertex({}, p={}, input {:?})", self.name, self.parallelism, self.input)
    }
}

/// A finished job: a pipeline of vertices, each fed by the one before it.
#[derive(Clone, Debug)]
pub struct JobGraph {
    /// Job name.
    pub name: String,
    /// Vertices in topological order.
    pub vertices: Vec<JobVertex>,
}

/// Starts a job.
#[derive(Debug, Clone)]
pub struct JobBuilder {
    name: String,
    default_parallelism: u32,
    default_partition_type: ResultPartitionType,
}

/// A stream of `T` inside the vertex being built.
pub struct Stream<T> {
    job: JobBuilder,
    done: Vec<JobVertex>,
    name: String,
    parallelism: u32,
    input: Option<EdgeSpec>,
    head: Head<T>,
}

impl JobBuilder {
    /// A job named `name` whose vertices default to `parallelism` and to pipelined bounded
    /// exchanges.
    pub fn new(name: &str, parallelism: u32) -> Self {
        Self {
            name: name.to_string(),
            default_parallelism: parallelism.max(1),
            default_partition_type: ResultPartitionType::PipelinedBounded,
        }
    }

    /// Sets the partition type used by exchanges that do not name one.
    pub fn with_partition_type(mut self, t: ResultPartitionType) -> Self {
        self.default_partition_type = t;
        self
    }

    /// A parallel source: `f` runs once per subtask and emits into the collector.
    pub fn source<T: 'static>(
        self,
        name: &str,
        f: impl Fn(&TaskInfo, &mut dyn Collector<T>) -> Result<()> + Send + Sync + 'static,
    ) -> Stream<T> {
        let f = Arc::new(f);
        let head: Head<T> = Arc::new(move |info, mut out| {
            let f = f.clone();
            let info = info.clone();
            Ok(Box::new(move |_io: &mut TaskIo| {
                f(&info, &mut *out)?;
                out.finish()
            }) as Runner)
        });
        let parallelism = self.default_parallelism;
        Stream { job: self, done: Vec::new(), name: name.to_string(), parallelism, input: None, head }
    }
}

struct Map<F, C> {
    f: F,
    out: C,
}

impl<T, U, F: FnMut(T) -> U> Collector<T> for Map<F, BoxCollector<U>> {
    fn collect(&mut self, v: T) -> Result<()> {
        self.out.collect((self.f)(v))
    }
    fn finish(&mut self) -> Result<()> {
        self.out.finish()
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
}

struct FlatMap<F, C> {
    f: F,
    out: C,
}

/// Receives the outputs of a flat_map function.
pub struct Emitter<'a, U> {
    out: &'a mut dyn Collector<U>,
    err: Option<crate::Error>,
}

impl<U> Emitter<'_, U> {
    /// Emits one value downstream (errors are reported when the function returns).
    pub fn emit(&mut self, v: U) {
        if self.err.is_none() {
            if let Err(e) = self.out.collect(v) {
                self.err = Some(e);
            }
        }
    }
}

impl<T, U, F: FnMut(T, &mut Emitter<'_, U>)> Collector<T> for FlatMap<F, BoxCollector<U>> {
    fn collect(&mut self, v: T) -> Result<()> {
        let mut e = Emitter { out: &mut *self.out, err: None };
        (self.f)(v, &mut e);
        match e.err {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
    fn finish(&mut self) -> Result<()> {
        self.out.finish()
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
}

struct Filter<F, C> {
    f: F,
    out: C,
}

impl<T, F: FnMut(&T) -> bool> Collector<T> for Filter<F, BoxCollector<T>> {
    fn collect(&mut self, v: T) -> Result<()> {
        if (self.f)(&v) {
            self.out.collect(v)
        } else {
            Ok(())
        }
    }
    fn finish(&mut self) -> Result<()> {
        self.out.finish()
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
}

impl<T: 'static> Stream<T> {
    fn chain<U: 'static>(
        self,
        name: &str,
        wrap: impl Fn(BoxCollector<U>) -> BoxCollector<T> + Send + Sync + 'static,
    ) -> Stream<U> {
        let head = self.head;
        let new: Head<U> = Arc::new(move |info, out| head(info, wrap(out)));
        Stream {
            job: self.job,
            done: self.done,
            name: format!("{} -> {name}", self.name),
            parallelism: self.parallelism,
            input: self.input,
            head: new,
        }
    }

    /// Applies `f` to every value (chained into the same vertex, no exchange).
    pub fn map<U: 'static>(self, name: &str, f: impl Fn(T) -> U + Clone + Send + Sync + 'static) -> Stream<U> {
        self.chain(name, move |out| Box::new(Map { f: f.clone(), out }))
    }

    /// Emits zero or more values per value (chained).
    pub fn flat_map<U: 'static>(
        self,
        name: &str,
        f: impl Fn(T, &mut Emitter<'_, U>) + Clone + Send + Sync + 'static,
    ) -> Stream<U> {
        self.chain(name, move |out| Box::new(FlatMap { f: f.clone(), out }))
    }

    /// Keeps the values for which `f` is true (chained).
    pub fn filter(self, name: &str, f: impl Fn(&T) -> bool + Clone + Send + Sync + 'static) -> Stream<T> {
        self.chain(name, move |out| Box::new(Filter { f: f.clone(), out }))
    }

    /// Ends the job: `make` builds one sink collector per subtask (chained).
    pub fn sink(
        self,
        name: &str,
        make: impl Fn(&TaskInfo) -> Result<BoxCollector<T>> + Send + Sync + 'static,
    ) -> JobGraph {
        let head = self.head;
        let body: VertexBody = Arc::new(move |info, io| {
            let sink = make(info)?;
            let run = head(info, sink)?;
            run(io)
        });
        let mut vertices = self.done;
        vertices.push(JobVertex {
            name: format!("{} -> {name}", self.name),
            parallelism: self.parallelism,
            input: self.input,
            body,
        });
        JobGraph { name: self.job.name, vertices }
    }
}

impl<T: Data> Stream<T> {
    /// Ends this vertex with an exchange of `kind` into a new vertex of `parallelism`.
    fn exchange(
        self,
        kind: SelectorKind,
        parallelism: Option<u32>,
        partition_type: Option<ResultPartitionType>,
        selector: Arc<dyn Fn(u32) -> Box<dyn ChannelSelector<T>> + Send + Sync>,
    ) -> Stream<T> {
        let head = self.head;
        let body: VertexBody = Arc::new(move |info, io| {
            let out = io.record_writer::<T>(selector(info.subtask))?;
            let run = head(info, Box::new(out))?;
            run(io)
        });
        let mut done = self.done;
        done.push(JobVertex { name: self.name.clone(), parallelism: self.parallelism, input: self.input, body });
        let edge =
            EdgeSpec { partition_type: partition_type.unwrap_or(self.job.default_partition_type), selector: kind };
        let new_head: Head<T> = Arc::new(|_info, mut out| {
            Ok(Box::new(move |io: &mut TaskIo| {
                io.for_each_input::<T>(&mut |v| out.collect(v))?;
                out.finish()
            }) as Runner)
        });
        let parallelism = parallelism.unwrap_or(self.parallelism).max(1);
        Stream { job: self.job, done, name: format!("{kind:?}"), parallelism, input: Some(edge), head: new_head }
    }

    /// Round-robin to a new vertex of `parallelism` (Flink's rebalance()).
    pub fn rebalance(self, parallelism: Option<u32>) -> Stream<T> {
        self.exchange(
            SelectorKind::Rebalance,
            parallelism,
            None,
            Arc::new(|i| Box::new(RebalancePartitioner::new(u64::from(i)))),
        )
    }

    /// Round-robin to a local subset of the next vertex (rescale()).
    pub fn rescale(self, parallelism: Option<u32>) -> Stream<T> {
        self.exchange(SelectorKind::Rescale, parallelism, None, Arc::new(|_| Box::<RescalePartitioner>::default()))
    }

    /// Every value to every subtask of the next vertex (broadcast()).
    pub fn broadcast(self, parallelism: Option<u32>) -> Stream<T> {
        self.exchange(SelectorKind::Broadcast, parallelism, None, Arc::new(|_| Box::new(BroadcastPartitioner)))
    }

    /// One-to-one to a new vertex of the same parallelism (forward()).
    pub fn forward(self) -> Stream<T> {
        self.exchange(SelectorKind::Forward, None, None, Arc::new(|_| Box::new(ForwardPartitioner)))
    }

    /// Everything to subtask 0 of a new vertex (global()).
    pub fn global(self) -> Stream<T> {
        self.exchange(SelectorKind::Global, Some(1), None, Arc::new(|_| Box::new(GlobalPartitioner)))
    }

    /// An exchange with an explicit partition type and selector kind (key-hash needs
    /// [`key_by`](Self::key_by)).
    pub fn exchange_with(
        self,
        kind: SelectorKind,
        partition_type: ResultPartitionType,
        parallelism: Option<u32>,
    ) -> Stream<T> {
        let sel: Arc<dyn Fn(u32) -> Box<dyn ChannelSelector<T>> + Send + Sync> = match kind {
            SelectorKind::Rebalance | SelectorKind::KeyHash => {
                Arc::new(|i| Box::new(RebalancePartitioner::new(u64::from(i))))
            }
            SelectorKind::Rescale => Arc::new(|_| Box::<RescalePartitioner>::default()),
            SelectorKind::Broadcast => Arc::new(|_| Box::new(BroadcastPartitioner)),
            SelectorKind::Forward => Arc::new(|_| Box::new(ForwardPartitioner)),
            SelectorKind::Global => Arc::new(|_| Box::new(GlobalPartitioner)),
        };
        let kind = if kind == SelectorKind::KeyHash { SelectorKind::Rebalance } else { kind };
        self.exchange(kind, parallelism, Some(partition_type), sel)
    }

    /// Partitions by key into a new vertex (keyBy()): every value of one key reaches the
    /// same subtask, chosen by Flink's key-group assignment (max parallelism 128). `key`
    /// borrows the key from the value, so routing and keyed state look keys up without
    /// copying them.
    pub fn key_by<K>(self, key: impl for<'a> Fn(&'a T) -> &'a K + Clone + Send + Sync + 'static) -> KeyedStream<T, K>
    where
        K: ?Sized + JavaHash + Hash + Eq + ToOwned + 'static,
        K::Owned: Hash + Eq + Send + 'static,
    {
        let k2 = key.clone();
        let sel: Arc<dyn Fn(u32) -> Box<dyn ChannelSelector<T>> + Send + Sync> = Arc::new(move |_| {
            let k = k2.clone();
            Box::new(
                KeyGroupPartitioner::new(move |t: &T| k(t).java_hash(), DEFAULT_MAX_PARALLELISM)
                    .expect("128 is a valid max parallelism"),
            )
        });
        let stream = self.exchange(SelectorKind::KeyHash, None, None, sel);
        KeyedStream { stream, key: Arc::new(key) }
    }
}

type KeyFn<T, K> = Arc<dyn for<'a> Fn(&'a T) -> &'a K + Send + Sync>;

/// A stream partitioned by key `K`.
pub struct KeyedStream<T, K: ?Sized> {
    stream: Stream<T>,
    key: KeyFn<T, K>,
}

struct Reduce<T, K: ?Sized, F> {
    key: KeyFn<T, K>,
    f: F,
    /// Each key's accumulated value, stored once: the key is borrowed from the value.
    state: hashbrown::HashTable<T>,
    hasher: foldhash::fast::RandomState,
    out: BoxCollector<T>,
}

impl<T, K, F> Collector<T> for Reduce<T, K, F>
where
    K: ?Sized + Hash + Eq,
    F: FnMut(&mut T, T),
{
    fn collect(&mut self, v: T) -> Result<()> {
        use std::hash::BuildHasher;
        let key = &self.key;
        let h = self.hasher.hash_one(key(&v));
        match self.state.find_mut(h, |t| key(t) == key(&v)) {
            Some(acc) => (self.f)(acc, v),
            None => {
                let hasher = &self.hasher;
                self.state.insert_unique(h, v, |t| hasher.hash_one(key(t)));
            }
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        for v in self.state.drain() {
            self.out.collect(v)?;
        }
        self.out.finish()
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
}

struct CountWindow<T, K: ?Sized + ToOwned, F> {
    key: KeyFn<T, K>,
    size: u64,
    slide: u64,
    f: F,
    /// Per key: the last `size` values and how many arrived since the last firing.
    state: HashMap<K::Owned, (std::collections::VecDeque<T>, u64)>,
    out: BoxCollector<T>,
}

impl<T, K, F> Collector<T> for CountWindow<T, K, F>
where
    K: ?Sized + Hash + Eq + ToOwned,
    K::Owned: Hash + Eq,
    F: FnMut(&[T]) -> T,
{
    fn collect(&mut self, v: T) -> Result<()> {
        if !self.state.contains_key((self.key)(&v)) {
            let k = (self.key)(&v).to_owned();
            self.state.insert(k, (std::collections::VecDeque::new(), 0));
        }
        let (buf, since) = self.state.get_mut((self.key)(&v)).expect("inserted above");
        buf.push_back(v);
        if buf.len() as u64 > self.size {
            buf.pop_front();
        }
        *since += 1;
        if *since == self.slide {
            *since = 0;
            let r = (self.f)(buf.make_contiguous());
            if self.slide == self.size {
                buf.clear(); // tumbling: fire and purge
            }
            self.out.collect(r)?;
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        self.out.finish()
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
}

impl<T: Data, K> KeyedStream<T, K>
where
    K: ?Sized + Hash + Eq + ToOwned + 'static,
    K::Owned: Hash + Eq + Send + 'static,
{
    /// Combines all values of a key with `f` and emits one value per key when the input
    /// ends (a keyed reduce in Flink's batch execution mode).
    pub fn reduce(self, name: &str, f: impl Fn(&mut T, T) + Clone + Send + Sync + 'static) -> Stream<T> {
        let key = self.key.clone();
        self.stream.chain(name, move |out| {
            Box::new(Reduce {
                key: key.clone(),
                f: f.clone(),
                state: hashbrown::HashTable::new(),
                hasher: foldhash::fast::RandomState::default(),
                out,
            })
        })
    }

    /// Passes values on unchanged: a keyed exchange with no keyed operator after it.
    pub fn reduce_passthrough(self) -> Stream<T> {
        self.stream
    }

    /// Flink's `countWindow(size, slide)`: per key, every `slide` values fire a window over
    /// the last `size` values, aggregated by `f` (tumbling when `slide == size`).
    ///
    /// # Panics
    /// If `size` or `slide` is 0.
    pub fn count_window(
        self,
        name: &str,
        size: u64,
        slide: u64,
        f: impl Fn(&[T]) -> T + Clone + Send + Sync + 'static,
    ) -> Stream<T> {
        assert!(size > 0 && slide > 0, "count windows need size and slide above 0");
        let key = self.key.clone();
        self.stream.chain(name, move |out| {
            Box::new(CountWindow { key: key.clone(), size, slide, f: f.clone(), state: HashMap::default(), out })
        })
    }
}
