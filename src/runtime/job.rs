//! The job API: sources, stateless operators, key_by, keyed reductions, count windows and
//! sinks, built as ordinary Rust closures.
//!
//! ```text
//!  JobBuilder::source(..)  -> Stream<T, H> --map/flat_map/filter (chained)--> Stream<U, H'>
//!     --key_by / rebalance / rescale / broadcast / forward / global (an exchange: a new
//!       job vertex, with its ResultPartitionType and ChannelSelector)-->
//!  KeyedStream<T, K, H> --reduce / count_window--> Stream<T, H''> ... --sink--> JobGraph
//! ```
//!
//! Operator chaining is static, as Flink's chained operators are plain method calls: a
//! stream's second type parameter is its operator chain (a [`Chain`]), one type per vertex
//! built up operator by operator, so when the vertex's end is known (a sink or an exchange)
//! the whole chain is one monomorphized function: no dynamic dispatch between chained
//! operators, no shared cell borrowed per record, and the exchange's record writer (with
//! its concrete selector) serializes each record straight into the segment. The only
//! indirections left per record are at a vertex's edges: a source written as a closure
//! receives a `&mut dyn Collector` (a [`Source`] implementation gets the concrete chain), and
//! the gate hands records to the chain through its drain callback.
//!
//! Worker processes run the same binary and build the same job from the same arguments, so
//! closures are never serialized: a vertex is identified by its position in the graph.

use super::cosched::TaskSteps;
use super::execution::TaskIo;
use super::protocol::SubtaskSpec;
use super::task::{Collector, Data, TaskInfo};
use crate::error::Result;
use crate::partition::{
    BroadcastPartitioner, ChannelSelector, ForwardPartitioner, GlobalPartitioner, KeyGroupPartitioner,
    RebalancePartitioner, RescalePartitioner, ResultPartitionType, SelectorKind, DEFAULT_MAX_PARALLELISM,
};
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

/// Keys are hashed as Flink hashes the equivalent Java key (defined in [`crate::partition`]).
pub use crate::partition::JavaHash;

/// Runs one subtask of a vertex, given its input and output (see [`TaskIo`]).
pub type VertexBody = Arc<dyn Fn(&TaskInfo, &mut TaskIo) -> Result<()> + Send + Sync>;

/// Starts one subtask of a sink vertex fed by an exchange as a task run in turns
/// (co-scheduling, [`RuntimeConfig::co_schedule`](super::RuntimeConfig::co_schedule)).
pub type StepBody = Arc<dyn Fn(&TaskInfo, TaskIo) -> Result<Box<dyn TaskSteps>> + Send + Sync>;

/// The operator chain of a vertex up to a stream of `T`: from the vertex's input (a source,
/// or the gate of the exchange that feeds it) through its chained operators. Running it
/// with the collector the vertex ends in (a sink or an exchange's writer) runs the subtask.
/// Each operator wraps the chain before it in a new type, so the whole chain is one
/// statically dispatched function once `C` is known.
pub trait Chain<T>: Send + Sync + 'static {
    /// Runs the subtask: reads the input, pushes every value through the chain into `out`,
    /// then finishes `out`.
    ///
    /// # Errors
    /// The first error of the input, an operator or `out`.
    fn run<C: Collector<T>>(&self, info: &TaskInfo, io: &mut TaskIo, out: C) -> Result<()>;

    /// The subtask as a task run in turns ([`TaskSteps`]), if the chain starts at an input
    /// gate: what [`run`](Self::run) does, a turn at a time. `None` for a source's chain
    /// (a source runs its own loop).
    fn steps<C: Collector<T> + 'static>(&self, info: &TaskInfo, io: TaskIo, out: C) -> Option<Box<dyn TaskSteps>> {
        let _ = (info, io, out);
        None
    }
}

/// A source that sees the concrete downstream chain (no dynamic dispatch per record), for
/// sources on a hot path; [`JobBuilder::source`] takes a plain closure instead.
pub trait Source<T>: Send + Sync + 'static {
    /// Emits subtask `ctx.info`'s share of the input into `out` (do not finish it: the
    /// runtime does).
    ///
    /// # Errors
    /// The source's own errors, or what `out` reports.
    fn run<C: Collector<T>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()>;
}

/// What a [`Source`] subtask knows about itself, and where it reports how much input it
/// has read (the progress bar's percent, see [`super::ProgressTotal::SourceInputBytes`]).
pub struct SourceContext<'a> {
    /// Which subtask this is.
    pub info: &'a TaskInfo,
    metrics: Option<&'a crate::metrics::TaskMetricsHandle>,
}

impl SourceContext<'_> {
    /// Adds `bytes` of input read (report in batches, say every megabyte: it is a counter
    /// in shared memory).
    pub fn read(&self, bytes: u64) {
        if let Some(m) = self.metrics {
            m.add_in(0, bytes);
        }
    }
}

impl<'a> SourceContext<'a> {
    /// A context without task metrics, for running a source outside a job (unit tests of
    /// sources, benches).
    pub fn for_test(info: &'a TaskInfo) -> Self {
        Self { info, metrics: None }
    }
}

/// A [`Source`] made of a closure that gets a `&mut dyn Collector<T>`.
pub struct FnSource<F>(F);

impl<T, F> Source<T> for FnSource<F>
where
    F: Fn(&TaskInfo, &mut dyn Collector<T>) -> Result<()> + Send + Sync + 'static,
{
    fn run<C: Collector<T>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
        (self.0)(ctx.info, out)
    }
}

/// The head of a source vertex's chain.
pub struct SourceChain<S, T> {
    source: S,
    _t: PhantomData<fn() -> T>,
}

impl<T: 'static, S: Source<T>> Chain<T> for SourceChain<S, T> {
    fn run<C: Collector<T>>(&self, info: &TaskInfo, io: &mut TaskIo, mut out: C) -> Result<()> {
        self.source.run(&SourceContext { info, metrics: io.metrics() }, &mut out)?;
        out.finish()
    }
}

/// The head of a vertex fed by an exchange: the records of its input gate, decoded as `T`.
pub struct InputChain<T>(PhantomData<fn() -> T>);

impl<T: Data> Chain<T> for InputChain<T> {
    fn run<C: Collector<T>>(&self, _info: &TaskInfo, io: &mut TaskIo, mut out: C) -> Result<()> {
        io.run_input(&mut out)?;
        out.finish()
    }
    fn steps<C: Collector<T> + 'static>(&self, _info: &TaskInfo, io: TaskIo, out: C) -> Option<Box<dyn TaskSteps>> {
        Some(Box::new(io.into_steps(out)))
    }
}

/// One chained operator from `T` to `U`: wraps the collector of `U`s it feeds.
pub trait Operator<T, U>: Send + Sync + 'static {
    /// The operator in front of a downstream collector `C`.
    type With<C: Collector<U>>: Collector<T>;
    /// A fresh instance (one per subtask) in front of `out`.
    fn with<C: Collector<U>>(&self, out: C) -> Self::With<C>;
}

/// A chain `H` of `T`s followed by operator `O` (to `U`s).
pub struct Then<H, O, T> {
    prev: H,
    op: O,
    _t: PhantomData<fn() -> T>,
}

impl<T: 'static, U: 'static, H: Chain<T>, O: Operator<T, U>> Chain<U> for Then<H, O, T> {
    #[inline]
    fn run<C: Collector<U>>(&self, info: &TaskInfo, io: &mut TaskIo, out: C) -> Result<()> {
        self.prev.run(info, io, self.op.with(out))
    }
    fn steps<C: Collector<U> + 'static>(&self, info: &TaskInfo, io: TaskIo, out: C) -> Option<Box<dyn TaskSteps>> {
        self.prev.steps(info, io, self.op.with(out))
    }
}

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
    /// The edges into this vertex: (producer vertex, edge), none for a source, two or more
    /// for a union (its gate reads the channels of every producer).
    pub inputs: Vec<(usize, EdgeSpec)>,
    /// Runs one subtask.
    pub body: VertexBody,
    /// Runs one subtask in turns, for a sink vertex fed by an exchange (co-scheduling);
    /// `None` for the others, which always run [`body`](Self::body).
    pub steps: Option<StepBody>,
}

impl std::fmt::Debug for JobVertex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobVertex({}, p={}, inputs {:?})", self.name, self.parallelism, self.inputs)
    }
}

/// A finished job: vertices in topological order, each fed by the producers its
/// [`JobVertex::inputs`] name (the vertex before it, or several for a union), each feeding
/// at most one consumer (several sinks on one stream are chained: [`Stream::sink_both`]).
#[derive(Clone, Debug)]
pub struct JobGraph {
    /// Job name.
    pub name: String,
    /// Vertices in topological order.
    pub vertices: Vec<JobVertex>,
}

impl JobGraph {
    /// The graph's shape as one line: each vertex's name and parallelism, and the producer,
    /// selector and partition type of each of its inputs, as in
    /// `"numbers" x2 | "sum" x2 <- 0 KeyGroup Pipelined`. Two processes that built the same
    /// graph describe it alike; the coordinator compares its workers' with its own.
    pub fn shape(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        for (i, v) in self.vertices.iter().enumerate() {
            let _ = write!(s, "{}{:?} x{}", if i == 0 { "" } else { " | " }, v.name, v.parallelism);
            for (u, e) in &v.inputs {
                let _ = write!(s, " <- {u} {:?} {:?}", e.selector, e.partition_type);
            }
        }
        s
    }

    /// Which subtask `spec` is: its vertex's name and the job's.
    pub fn task_info(&self, spec: &SubtaskSpec) -> TaskInfo {
        TaskInfo {
            job: self.name.clone(),
            vertex: spec.vertex,
            vertex_name: self.vertices[spec.vertex].name.clone(),
            subtask: spec.subtask,
            parallelism: spec.parallelism,
        }
    }
}

/// Starts a job.
#[derive(Debug, Clone)]
pub struct JobBuilder {
    name: String,
    default_parallelism: u32,
    default_partition_type: ResultPartitionType,
}

/// A stream of `T` inside the vertex being built, `H` its operator chain so far.
pub struct Stream<T, H> {
    job: JobBuilder,
    done: Vec<JobVertex>,
    name: String,
    parallelism: u32,
    inputs: Vec<(usize, EdgeSpec)>,
    head: H,
    _t: PhantomData<fn() -> T>,
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
    pub fn source<T: 'static, F>(self, name: &str, f: F) -> Stream<T, SourceChain<FnSource<F>, T>>
    where
        F: Fn(&TaskInfo, &mut dyn Collector<T>) -> Result<()> + Send + Sync + 'static,
    {
        self.source_with(name, FnSource(f))
    }

    /// A parallel source that emits into the concrete chain after it (see [`Source`]).
    pub fn source_with<T: 'static, S: Source<T>>(self, name: &str, source: S) -> Stream<T, SourceChain<S, T>> {
        let parallelism = self.default_parallelism;
        Stream {
            job: self,
            done: Vec::new(),
            name: name.to_string(),
            parallelism,
            inputs: Vec::new(),
            head: SourceChain { source, _t: PhantomData },
            _t: PhantomData,
        }
    }
}

/// The operator of [`Stream::map`].
#[derive(Clone)]
pub struct MapOp<F>(F);

/// A running map.
pub struct Map<F, C> {
    f: F,
    out: C,
}

impl<T, U, F: FnMut(T) -> U, C: Collector<U>> Collector<T> for Map<F, C> {
    #[inline]
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

impl<T, U, F: Fn(T) -> U + Clone + Send + Sync + 'static> Operator<T, U> for MapOp<F> {
    type With<C: Collector<U>> = Map<F, C>;
    fn with<C: Collector<U>>(&self, out: C) -> Map<F, C> {
        Map { f: self.0.clone(), out }
    }
}

/// Receives the outputs of a flat_map function: they are buffered (the buffer is reused,
/// so it allocates only while it grows) and pushed downstream when the function returns.
pub struct Emitter<'a, U> {
    buf: &'a mut Vec<U>,
}

impl<U> Emitter<'_, U> {
    /// Emits one value downstream.
    #[inline]
    pub fn emit(&mut self, v: U) {
        self.buf.push(v);
    }
}

/// The operator of [`Stream::flat_map`].
#[derive(Clone)]
pub struct FlatMapOp<F>(F);

/// A running flat_map.
pub struct FlatMap<F, U, C> {
    f: F,
    buf: Vec<U>,
    out: C,
}

impl<T, U, F: FnMut(T, &mut Emitter<'_, U>), C: Collector<U>> Collector<T> for FlatMap<F, U, C> {
    #[inline]
    fn collect(&mut self, v: T) -> Result<()> {
        (self.f)(v, &mut Emitter { buf: &mut self.buf });
        let mut r = Ok(());
        for u in self.buf.drain(..) {
            if r.is_ok() {
                r = self.out.collect(u);
            }
        }
        r
    }
    fn finish(&mut self) -> Result<()> {
        self.out.finish()
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
}

impl<T, U: 'static, F: Fn(T, &mut Emitter<'_, U>) + Clone + Send + Sync + 'static> Operator<T, U> for FlatMapOp<F> {
    type With<C: Collector<U>> = FlatMap<F, U, C>;
    fn with<C: Collector<U>>(&self, out: C) -> FlatMap<F, U, C> {
        FlatMap { f: self.0.clone(), buf: Vec::new(), out }
    }
}

/// The operator of [`Stream::filter`].
#[derive(Clone)]
pub struct FilterOp<F>(F);

/// A running filter.
pub struct Filter<F, C> {
    f: F,
    out: C,
}

impl<T, F: FnMut(&T) -> bool, C: Collector<T>> Collector<T> for Filter<F, C> {
    #[inline]
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

impl<T, F: Fn(&T) -> bool + Clone + Send + Sync + 'static> Operator<T, T> for FilterOp<F> {
    type With<C: Collector<T>> = Filter<F, C>;
    fn with<C: Collector<T>>(&self, out: C) -> Filter<F, C> {
        Filter { f: self.0.clone(), out }
    }
}

impl<T: 'static, H: Chain<T>> Stream<T, H> {
    fn then<U, O: Operator<T, U>>(self, name: &str, op: O) -> Stream<U, Then<H, O, T>> {
        Stream {
            job: self.job,
            done: self.done,
            name: format!("{} -> {name}", self.name),
            parallelism: self.parallelism,
            inputs: self.inputs,
            head: Then { prev: self.head, op, _t: PhantomData },
            _t: PhantomData,
        }
    }

    /// Sets the parallelism of the vertex this stream is in (Flink's `setParallelism`):
    /// every operator chained into it runs with `n` subtasks (at least 1). Its input
    /// exchange adapts (a forward exchange needs equal parallelism on both sides; the job
    /// fails to start otherwise).
    pub fn parallelism(mut self, n: u32) -> Self {
        self.parallelism = n.max(1);
        self
    }

    /// Applies `f` to every value (chained into the same vertex, no exchange).
    pub fn map<U, F>(self, name: &str, f: F) -> Stream<U, Then<H, MapOp<F>, T>>
    where
        F: Fn(T) -> U + Clone + Send + Sync + 'static,
    {
        self.then(name, MapOp(f))
    }

    /// Emits zero or more values per value (chained).
    pub fn flat_map<U: 'static, F>(self, name: &str, f: F) -> Stream<U, Then<H, FlatMapOp<F>, T>>
    where
        F: Fn(T, &mut Emitter<'_, U>) + Clone + Send + Sync + 'static,
    {
        self.then(name, FlatMapOp(f))
    }

    /// Keeps the values for which `f` is true (chained).
    pub fn filter<F>(self, name: &str, f: F) -> Stream<T, Then<H, FilterOp<F>, T>>
    where
        F: Fn(&T) -> bool + Clone + Send + Sync + 'static,
    {
        self.then(name, FilterOp(f))
    }

    /// Ends the job: `make` builds one sink collector per subtask (chained). A sink may be
    /// any collector type (called statically) or a [`BoxCollector`](super::BoxCollector).
    pub fn sink<C, M>(self, name: &str, make: M) -> JobGraph
    where
        C: Collector<T> + 'static,
        M: Fn(&TaskInfo) -> Result<C> + Send + Sync + 'static,
    {
        let (head, make) = (Arc::new(self.head), Arc::new(make));
        let (h, m) = (head.clone(), make.clone());
        let body: VertexBody = Arc::new(move |info, io| {
            let sink = m(info)?;
            h.run(info, io, sink)
        });
        // A vertex with an input can run in turns; a source runs its own loop.
        let steps = (!self.inputs.is_empty()).then(|| -> StepBody {
            Arc::new(move |info, io| {
                let sink = make(info)?;
                head.steps(info, io, sink).ok_or_else(|| {
                    crate::error::GraphError::Deployment(format!("{} cannot run in turns", info.vertex_name)).into()
                })
            })
        });
        let mut vertices = self.done;
        vertices.push(JobVertex {
            name: format!("{} -> {name}", self.name),
            parallelism: self.parallelism,
            inputs: self.inputs,
            body,
            steps,
        });
        JobGraph { name: self.job.name, vertices }
    }
}

/// Two collectors fed the same values (a clone to the first, the value to the second): the
/// sinks of [`Stream::sink_both`].
pub struct Tee<A, B> {
    a: A,
    b: B,
}

impl<A, B> Tee<A, B> {
    /// Feeds every value to both `a` and `b`; nest them for three sinks or more, e.g. as the
    /// second sink of [`Stream::sink_both`]: `|info| Ok(Tee::new(make_b(info)?, make_c(info)?))`.
    ///
    /// ```
    /// use shmflow::runtime::{Collector, Tee};
    ///
    /// struct Sum<'a>(&'a mut u64);
    /// impl Collector<u64> for Sum<'_> {
    ///     fn collect(&mut self, v: u64) -> shmflow::Result<()> {
    ///         *self.0 += v;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let (mut a, mut b, mut c) = (0, 0, 0);
    /// let mut three = Tee::new(Sum(&mut a), Tee::new(Sum(&mut b), Sum(&mut c)));
    /// for v in 1..=4 {
    ///     three.collect(v)?;
    /// }
    /// three.finish()?;
    /// drop(three);
    /// assert_eq!((a, b, c), (10, 10, 10));
    /// # Ok::<(), shmflow::Error>(())
    /// ```
    pub fn new(a: A, b: B) -> Self {
        Self { a, b }
    }
}

impl<T: Clone, A: Collector<T>, B: Collector<T>> Collector<T> for Tee<A, B> {
    #[inline]
    fn collect(&mut self, v: T) -> Result<()> {
        self.a.collect(v.clone())?;
        self.b.collect(v)
    }
    fn finish(&mut self) -> Result<()> {
        let a = self.a.finish();
        let b = self.b.finish();
        a.and(b)
    }
    fn flush(&mut self) -> Result<()> {
        self.a.flush()?;
        self.b.flush()
    }
}

impl<T: Clone + 'static, H: Chain<T>> Stream<T, H> {
    /// Ends the job in two sinks that both receive every value (Flink's two sinks on one
    /// stream, chained into the same task); for more, make the second sink a [`Tee::new`]
    /// of two. Each subtask builds both sinks.
    pub fn sink_both<CA, CB, MA, MB>(self, name: &str, make_a: MA, make_b: MB) -> JobGraph
    where
        CA: Collector<T> + 'static,
        CB: Collector<T> + 'static,
        MA: Fn(&TaskInfo) -> Result<CA> + Send + Sync + 'static,
        MB: Fn(&TaskInfo) -> Result<CB> + Send + Sync + 'static,
    {
        self.sink(name, move |info| Ok(Tee::new(make_a(info)?, make_b(info)?)))
    }
}

impl<T: Data, H: Chain<T>> Stream<T, H> {
    /// Ends this vertex with an exchange of `kind` into a new vertex of `parallelism`;
    /// `selector(i)` makes producer subtask `i`'s channel selector.
    fn exchange<S, M>(
        self,
        kind: SelectorKind,
        parallelism: Option<u32>,
        partition_type: Option<ResultPartitionType>,
        selector: M,
    ) -> Stream<T, InputChain<T>>
    where
        S: ChannelSelector<T> + 'static,
        M: Fn(u32) -> S + Send + Sync + 'static,
    {
        let head = self.head;
        let body: VertexBody = Arc::new(move |info, io| {
            let out = io.record_writer::<T, S>(selector(info.subtask))?;
            head.run(info, io, out)
        });
        let mut done = self.done;
        done.push(JobVertex {
            name: self.name.clone(),
            parallelism: self.parallelism,
            inputs: self.inputs,
            body,
            steps: None,
        });
        let producer = done.len() - 1;
        let edge =
            EdgeSpec { partition_type: partition_type.unwrap_or(self.job.default_partition_type), selector: kind };
        let parallelism = parallelism.unwrap_or(self.parallelism).max(1);
        Stream {
            job: self.job,
            done,
            name: format!("{kind:?}"),
            parallelism,
            inputs: vec![(producer, edge)],
            head: InputChain(PhantomData),
            _t: PhantomData,
        }
    }

    /// Both streams into one (Flink's `union`): each ends its vertex with a round-robin
    /// exchange into a new vertex of this stream's parallelism, whose gate reads the
    /// channels of both (values of the two interleave in arrival order). Both exchanges
    /// take the partition type of this stream's job.
    pub fn union<H2: Chain<T>>(self, other: Stream<T, H2>) -> Stream<T, InputChain<T>> {
        let ptype = self.job.default_partition_type;
        let name = format!("Union({}, {})", self.name, other.name);
        let mut mine = self.rebalance(None);
        let theirs =
            other.exchange(SelectorKind::Rebalance, None, Some(ptype), |i| RebalancePartitioner::new(u64::from(i)));
        let offset = mine.done.len();
        for mut v in theirs.done {
            for (u, _) in &mut v.inputs {
                *u += offset;
            }
            mine.done.push(v);
        }
        for &(u, e) in &theirs.inputs {
            mine.inputs.push((u + offset, e));
        }
        mine.name = name;
        mine
    }

    /// Round-robin to a new vertex of `parallelism` (Flink's rebalance()).
    pub fn rebalance(self, parallelism: Option<u32>) -> Stream<T, InputChain<T>> {
        self.exchange(SelectorKind::Rebalance, parallelism, None, |i| RebalancePartitioner::new(u64::from(i)))
    }

    /// Round-robin to a local subset of the next vertex (rescale()).
    pub fn rescale(self, parallelism: Option<u32>) -> Stream<T, InputChain<T>> {
        self.exchange(SelectorKind::Rescale, parallelism, None, |_| RescalePartitioner::default())
    }

    /// Every value to every subtask of the next vertex (broadcast()).
    pub fn broadcast(self, parallelism: Option<u32>) -> Stream<T, InputChain<T>> {
        self.exchange(SelectorKind::Broadcast, parallelism, None, |_| BroadcastPartitioner)
    }

    /// One-to-one to a new vertex of the same parallelism (forward()).
    pub fn forward(self) -> Stream<T, InputChain<T>> {
        self.exchange(SelectorKind::Forward, None, None, |_| ForwardPartitioner)
    }

    /// Everything to subtask 0 of a new vertex (global()).
    pub fn global(self) -> Stream<T, InputChain<T>> {
        self.exchange(SelectorKind::Global, Some(1), None, |_| GlobalPartitioner)
    }

    /// An exchange with an explicit partition type and selector kind.
    ///
    /// # Errors
    /// [`GraphError::KeyHashWithoutKey`](crate::error::GraphError::KeyHashWithoutKey) for
    /// [`SelectorKind::KeyHash`]: a key-hash exchange needs
    /// the key, so it is made by [`key_by`](Self::key_by) (then
    /// [`KeyedStream::partition_type`] for the partition type).
    pub fn exchange_with(
        self,
        kind: SelectorKind,
        partition_type: ResultPartitionType,
        parallelism: Option<u32>,
    ) -> Result<Stream<T, InputChain<T>>> {
        let sel: fn(u32) -> Box<dyn ChannelSelector<T>> = match kind {
            SelectorKind::KeyHash => return Err(crate::error::GraphError::KeyHashWithoutKey.into()),
            SelectorKind::Rebalance => |i| Box::new(RebalancePartitioner::new(u64::from(i))),
            SelectorKind::Rescale => |_| Box::<RescalePartitioner>::default(),
            SelectorKind::Broadcast => |_| Box::new(BroadcastPartitioner),
            SelectorKind::Forward => |_| Box::new(ForwardPartitioner),
            SelectorKind::Global => |_| Box::new(GlobalPartitioner),
        };
        Ok(self.exchange(kind, parallelism, Some(partition_type), sel))
    }

    /// Partitions by key into a new vertex (keyBy()): every value of one key reaches the
    /// same subtask, chosen by Flink's key-group assignment (max parallelism 128). `key`
    /// borrows the key from the value, so routing and keyed state look keys up without
    /// copying them.
    pub fn key_by<K, KF>(self, key: KF) -> KeyedStream<T, K, KF>
    where
        K: ?Sized + JavaHash + Hash + Eq + ToOwned + 'static,
        K::Owned: Hash + Eq + Send + 'static,
        KF: for<'a> Fn(&'a T) -> &'a K + Clone + Send + Sync + 'static,
    {
        let k2 = key.clone();
        let stream = self.exchange(SelectorKind::KeyHash, None, None, move |_| {
            let k = k2.clone();
            KeyGroupPartitioner::new(move |t: &T| k(t).java_hash(), DEFAULT_MAX_PARALLELISM)
                .expect("128 is a valid max parallelism")
        });
        KeyedStream { stream, key, _k: PhantomData }
    }
}

/// The chain of a keyed operator `O` right after a keyed exchange of `T`s.
pub type Keyed<T, O> = Then<InputChain<T>, O, T>;

/// A stream partitioned by key `K` (borrowed from each value by `KF`).
pub struct KeyedStream<T, K: ?Sized, KF> {
    stream: Stream<T, InputChain<T>>,
    key: KF,
    _k: PhantomData<fn() -> Box<K>>,
}

/// The operator of [`KeyedStream::reduce`].
pub struct ReduceOp<KF, F, K: ?Sized> {
    key: KF,
    f: F,
    _k: PhantomData<fn() -> Box<K>>,
}

/// A running keyed reduce.
pub struct Reduce<T, KF, F, C> {
    key: KF,
    f: F,
    /// Each key's accumulated value, stored once: the key is borrowed from the value.
    state: hashbrown::HashTable<T>,
    hasher: foldhash::fast::RandomState,
    out: C,
}

impl<T, K, KF, F, C> Collector<T> for Reduce<T, KF, F, C>
where
    K: ?Sized + Hash + Eq,
    KF: for<'a> Fn(&'a T) -> &'a K,
    F: FnMut(&mut T, T),
    C: Collector<T>,
{
    #[inline]
    fn collect(&mut self, v: T) -> Result<()> {
        use std::hash::{BuildHasher, Hasher};
        let key = &self.key;
        // `hash_one` spelled out: as a call it stayed out of line in the drain loop of a
        // reducer whose key hashes in three multiplies (the WordCount jobs' `Word`).
        let mut hasher = self.hasher.build_hasher();
        key(&v).hash(&mut hasher);
        #[allow(clippy::manual_hash_one)]
        let h = hasher.finish();
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

impl<T, K, KF, F> Operator<T, T> for ReduceOp<KF, F, K>
where
    T: 'static,
    K: ?Sized + Hash + Eq + 'static,
    KF: for<'a> Fn(&'a T) -> &'a K + Clone + Send + Sync + 'static,
    F: Fn(&mut T, T) + Clone + Send + Sync + 'static,
{
    type With<C: Collector<T>> = Reduce<T, KF, F, C>;
    fn with<C: Collector<T>>(&self, out: C) -> Reduce<T, KF, F, C> {
        Reduce {
            key: self.key.clone(),
            f: self.f.clone(),
            state: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            out,
        }
    }
}

/// The operator of [`KeyedStream::count_window`].
pub struct CountWindowOp<KF, F, K: ?Sized> {
    key: KF,
    size: u64,
    slide: u64,
    f: F,
    _k: PhantomData<fn() -> Box<K>>,
}

/// A running count window.
pub struct CountWindow<T, K: ?Sized + ToOwned, KF, F, C> {
    key: KF,
    size: u64,
    slide: u64,
    f: F,
    /// Per key: the last `size` values and how many arrived since the last firing.
    state: HashMap<K::Owned, (std::collections::VecDeque<T>, u64)>,
    out: C,
}

impl<T, K, KF, F, C> Collector<T> for CountWindow<T, K, KF, F, C>
where
    K: ?Sized + Hash + Eq + ToOwned,
    K::Owned: Hash + Eq,
    KF: for<'a> Fn(&'a T) -> &'a K,
    F: FnMut(&[T]) -> T,
    C: Collector<T>,
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

impl<T, K, KF, F> Operator<T, T> for CountWindowOp<KF, F, K>
where
    T: 'static,
    K: ?Sized + Hash + Eq + ToOwned + 'static,
    K::Owned: Hash + Eq + Send + 'static,
    KF: for<'a> Fn(&'a T) -> &'a K + Clone + Send + Sync + 'static,
    F: Fn(&[T]) -> T + Clone + Send + Sync + 'static,
{
    type With<C: Collector<T>> = CountWindow<T, K, KF, F, C>;
    fn with<C: Collector<T>>(&self, out: C) -> CountWindow<T, K, KF, F, C> {
        CountWindow {
            key: self.key.clone(),
            size: self.size,
            slide: self.slide,
            f: self.f.clone(),
            state: HashMap::default(),
            out,
        }
    }
}

impl<T: Data, K, KF> KeyedStream<T, K, KF>
where
    K: ?Sized + Hash + Eq + ToOwned + 'static,
    K::Owned: Hash + Eq + Send + 'static,
    KF: for<'a> Fn(&'a T) -> &'a K + Clone + Send + Sync + 'static,
{
    /// Combines all values of a key with `f` and emits one value per key when the input
    /// ends (a keyed reduce in Flink's batch execution mode).
    pub fn reduce<F>(self, name: &str, f: F) -> Stream<T, Keyed<T, ReduceOp<KF, F, K>>>
    where
        F: Fn(&mut T, T) + Clone + Send + Sync + 'static,
    {
        self.stream.then(name, ReduceOp { key: self.key, f, _k: PhantomData })
    }

    /// Sets the parallelism of the keyed vertex (the consumers of the key-hash exchange), as
    /// Flink's `keyBy(..)...setParallelism(n)` does.
    pub fn parallelism(mut self, n: u32) -> Self {
        self.stream = self.stream.parallelism(n);
        self
    }

    /// Sets the partition type of the key-hash exchange (default: the job's).
    pub fn partition_type(mut self, t: ResultPartitionType) -> Self {
        for (_, e) in &mut self.stream.inputs {
            e.partition_type = t;
        }
        self
    }

    /// The keyed stream as a plain stream: the values of each key arrive at one subtask, in
    /// order per producer, with no keyed operator applied (Flink's `keyBy(..)` followed
    /// directly by a sink or a stateless operator).
    pub fn into_stream(self) -> Stream<T, InputChain<T>> {
        self.stream
    }

    /// Flink's `countWindow(size, slide)`: per key, every `slide` values fire a window over
    /// the last `size` values, aggregated by `f` (tumbling when `slide == size`).
    ///
    /// # Panics
    /// If `size` or `slide` is 0.
    pub fn count_window<F>(
        self,
        name: &str,
        size: u64,
        slide: u64,
        f: F,
    ) -> Stream<T, Keyed<T, CountWindowOp<KF, F, K>>>
    where
        F: Fn(&[T]) -> T + Clone + Send + Sync + 'static,
    {
        assert!(size > 0 && slide > 0, "count windows need size and slide above 0");
        self.stream.then(name, CountWindowOp { key: self.key, size, slide, f, _k: PhantomData })
    }
}
