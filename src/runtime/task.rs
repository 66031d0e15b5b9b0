//! What a task's code sees of the runtime: the values that cross exchanges ([`Data`]), which
//! subtask it is ([`TaskInfo`]) and where its values go ([`Collector`]). The job API builds
//! operator chains from these, and the task I/O implements [`Collector`] for exchanges.

use crate::error::Result;
use crate::record::{FromRecord, Record};

/// A value that can cross an exchange: serialized in place, decoded on the other side.
pub trait Data: Record + for<'a> FromRecord<'a> + Send + 'static {}
impl<T: Record + for<'a> FromRecord<'a> + Send + 'static> Data for T {}

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

impl<T, C: Collector<T> + ?Sized> Collector<T> for Box<C> {
    #[inline]
    fn collect(&mut self, value: T) -> Result<()> {
        (**self).collect(value)
    }
    fn finish(&mut self) -> Result<()> {
        (**self).finish()
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
}

impl<T, C: Collector<T> + ?Sized> Collector<T> for &mut C {
    #[inline]
    fn collect(&mut self, value: T) -> Result<()> {
        (**self).collect(value)
    }
    fn finish(&mut self) -> Result<()> {
        (**self).finish()
    }
    fn flush(&mut self) -> Result<()> {
        (**self).flush()
    }
}
