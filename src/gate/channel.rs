//! The gate's input channels: what each one reads and how it is requested.
//!
//! ```text
//!  InputChannel { state, queued, end_of_data, served, kind }
//!    kind = Local(LocalChannel)   a pipelined subpartition in shared memory: the partition
//!                                 request is `attach_consumer` (look the partition up with
//!                                 backoff, claim the channel block's consumer side), then
//!                                 records are read in place by a RecordReader
//!         | File(FileChannel)     a subpartition of a blocking partition's file: the
//!                                 partition request is the wait until the directory says
//!                                 FINISHED (polled with backoff while the gate waits), then
//!                                 records are read in place from the file's mapping; its
//!                                 end is EndOfPartition, after which the subpartition
//!                                 counts as consumed (a BLOCKING file goes when all are)
//!  state: Active -> (aligned barrier) Blocked -> Active ... -> Finished (EndOfPartition)
//! ```
//!
//! Scheduling (`queued`, `served`) belongs to the gate, which keeps the ready queue; the
//! channel only records whether it is in it.

use super::config::InputSpec;
use crate::error::{Error, Result};
use crate::memory::liveness;
use crate::memory::Arena;
use crate::partition::{
    BlockingPartitionFile, FileChannelManager, RequestBackoff, ResultPartitionId, ResultPartitionManager,
    SubpartitionCursor, PARTITION_FINISHED,
};
use crate::record::{RecordChunks, RecordPiece, RecordReader};
use crate::sync::{now_nanos, Ordering};
use std::time::Duration;

/// Where a channel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChannelState {
    /// Served.
    Active,
    /// An aligned barrier arrived here; not served until the alignment completes.
    Blocked,
    /// EndOfPartition read: nothing more will come.
    Finished,
}

/// A channel reading a pipelined subpartition in shared memory.
pub(super) struct LocalChannel {
    /// Reads the records of the channel block in place.
    pub(super) reader: RecordReader,
    /// Records read when its producer was last seen dead, and how many looks since.
    pub(super) dead_progress: u64,
    pub(super) dead_looks: u32,
}

/// A channel reading one subpartition of a blocking partition's file.
pub(super) struct FileChannel {
    id: ResultPartitionId,
    subpartition: u32,
    files: FileChannelManager,
    directory: ResultPartitionManager,
    /// `None` until the partition is finished and its file open.
    file: Option<(BlockingPartitionFile, SubpartitionCursor)>,
    /// The last record handed out, as a range of the file's mapping.
    last: std::ops::Range<usize>,
    /// When to look at the directory next (`now_nanos`), and the pause after that.
    next_check_ns: u64,
    pause: Duration,
    records: u64,
    bytes: u64,
}

/// What a file channel has next.
pub(super) enum FileStep {
    /// A record ([`InputChannel::record`]).
    Record,
    /// The subpartition's end.
    End,
    /// The partition is not finished yet.
    NotYet,
}

impl FileChannel {
    /// A channel over subpartition `subpartition` of blocking partition `id`, whose files
    /// are in `files` (nothing is opened before the partition is finished).
    pub(super) fn new(
        id: ResultPartitionId,
        subpartition: u32,
        files: FileChannelManager,
        directory: ResultPartitionManager,
    ) -> Self {
        Self {
            id,
            subpartition,
            files,
            directory,
            file: None,
            last: 0..0,
            next_check_ns: 0,
            pause: Duration::from_millis(1),
            records: 0,
            bytes: 0,
        }
    }

    /// The partition request: whether the partition is finished (and its file is open now).
    /// Looks at the directory at most once per pause (1 ms doubling to 50 ms).
    ///
    /// # Errors
    /// A partition that failed or was released, a corrupt file.
    fn request(&mut self) -> Result<bool> {
        if self.file.is_some() {
            return Ok(true);
        }
        let now = now_nanos();
        if now < self.next_check_ns {
            return Ok(false);
        }
        let info = self.directory.lookup_once(self.id)?;
        if info.state != PARTITION_FINISHED {
            self.next_check_ns = now + self.pause.as_nanos() as u64;
            self.pause = (self.pause * 2).min(Duration::from_millis(50));
            return Ok(false);
        }
        let file = BlockingPartitionFile::open(&self.files, self.id)?;
        let cursor = file.cursor(self.subpartition)?;
        self.file = Some((file, cursor));
        Ok(true)
    }

    /// When the next look at the directory is due, while the partition is not finished.
    pub(super) fn next_check(&self) -> Option<u64> {
        self.file.is_none().then_some(self.next_check_ns)
    }

    /// The next record, the end, or "not finished yet".
    ///
    /// # Errors
    /// As [`request`](Self::request); a damaged region ([`BlockingPartitionFile::next_record`]).
    #[inline]
    pub(super) fn poll(&mut self) -> Result<FileStep> {
        if self.file.is_none() && !self.request()? {
            return Ok(FileStep::NotYet);
        }
        let (file, cursor) = self.file.as_mut().expect("requested above");
        match file.next_record(cursor) {
            Some(Ok(rec)) => {
                let end = cursor.position();
                self.last = end - rec.len()..end;
                self.records += 1;
                self.bytes += rec.len() as u64;
                Ok(FileStep::Record)
            }
            Some(Err(e)) => Err(e),
            None => Ok(FileStep::End),
        }
    }

    /// Hands the next records (at most `max`, none past the end) to `f`, in place;
    /// returns how many.
    ///
    /// # Errors
    /// As [`poll`](Self::poll), or `f`'s error (records before it count as read).
    pub(super) fn drain(&mut self, max: usize, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<usize> {
        if self.file.is_none() && !self.request()? {
            return Ok(0);
        }
        let (file, cursor) = self.file.as_mut().expect("requested above");
        let mut n = 0;
        while n < max {
            match file.next_record(cursor) {
                Some(Ok(rec)) => {
                    n += 1;
                    self.records += 1;
                    self.bytes += rec.len() as u64;
                    f(rec)?;
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(n)
    }

    /// The last record handed out.
    #[inline]
    fn record(&self) -> &[u8] {
        self.file.as_ref().map_or(&[], |(f, _)| &f.data()[self.last.clone()])
    }

    /// The subpartition was read to its end: unmaps the file and counts the subpartition
    /// as consumed (a BLOCKING partition is released once every one was).
    ///
    /// # Errors
    /// Directory lookup errors; [`Error::Io`] if the released file cannot be removed.
    pub(super) fn finish(&mut self) -> Result<()> {
        if self.file.take().is_some() {
            self.files.consumer_done(&self.directory, self.id)?;
        }
        Ok(())
    }
}

/// What a channel reads.
pub(super) enum ChannelKind {
    /// Shared memory (pipelined partitions).
    Local(LocalChannel),
    /// A blocking partition's file.
    File(FileChannel),
}

/// One channel of a gate.
pub(super) struct InputChannel {
    pub(super) state: ChannelState,
    /// In the gate's ready queue.
    pub(super) queued: bool,
    /// EndOfData read.
    pub(super) end_of_data: bool,
    /// Records served in the current batch (fairness).
    pub(super) served: u32,
    pub(super) kind: ChannelKind,
}

impl InputChannel {
    /// A channel over `kind`, queued for its first look.
    pub(super) fn new(kind: ChannelKind) -> Self {
        Self { state: ChannelState::Active, queued: true, end_of_data: false, served: 0, kind }
    }

    /// The shared-memory channel, if this is one.
    #[inline]
    pub(super) fn local(&self) -> Option<&LocalChannel> {
        match &self.kind {
            ChannelKind::Local(l) => Some(l),
            ChannelKind::File(_) => None,
        }
    }

    /// The shared-memory channel, mutably, if this is one.
    #[inline]
    pub(super) fn local_mut(&mut self) -> Option<&mut LocalChannel> {
        match &mut self.kind {
            ChannelKind::Local(l) => Some(l),
            ChannelKind::File(_) => None,
        }
    }

    /// Records read so far.
    pub(super) fn records(&self) -> u64 {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.records,
            ChannelKind::File(f) => f.records,
        }
    }

    /// Payload bytes read so far.
    pub(super) fn bytes(&self) -> u64 {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.bytes,
            ChannelKind::File(f) => f.bytes,
        }
    }

    /// The record the last fast poll found (in one segment, in place).
    #[inline]
    pub(super) fn record(&self) -> &[u8] {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.record(),
            ChannelKind::File(f) => f.record(),
        }
    }

    /// The record the last poll found, in one slice (a local record read in place across
    /// segments is copied here, once).
    #[inline]
    pub(super) fn record_contiguous(&mut self) -> &[u8] {
        match &mut self.kind {
            ChannelKind::Local(l) => l.reader.record_contiguous(),
            ChannelKind::File(f) => f.record(),
        }
    }

    /// The record the last poll found, as a piece in place (the next piece of a record
    /// that spans segments and is streamed, else the whole record).
    #[inline]
    pub(super) fn record_piece(&self) -> RecordPiece<'_> {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.record_piece(),
            ChannelKind::File(f) => {
                let bytes = f.record();
                RecordPiece { bytes, at: 0, len: bytes.len() }
            }
        }
    }

    /// The record the last poll found, as its chunks in place.
    #[inline]
    pub(super) fn record_chunks(&self) -> RecordChunks<'_> {
        match &self.kind {
            ChannelKind::Local(l) => l.reader.record_chunks(),
            ChannelKind::File(f) => RecordChunks::contiguous(f.record()),
        }
    }

    /// Records that spanned segments: (reassembled, read in place as chunks or streamed).
    pub(super) fn spanned(&self) -> (u64, u64) {
        match &self.kind {
            ChannelKind::Local(l) => (l.reader.spanned, l.reader.spanned_in_place + l.reader.spanned_streamed),
            ChannelKind::File(_) => (0, 0),
        }
    }
}

/// Stores what a local channel read in its block's counters, for observers.
pub(super) fn publish_read_counters(l: &LocalChannel) {
    let b = l.reader.channel().block();
    // Relaxed (both): statistics for observers.
    b.records_in.store(l.reader.records, Ordering::Relaxed);
    b.bytes_in.store(l.reader.bytes, Ordering::Relaxed);
}

/// Fails unless `spec`'s subpartition is one of `info`'s.
pub(super) fn check_subpartition(spec: &InputSpec, info: &crate::partition::PartitionInfo) -> Result<()> {
    if spec.subpartition >= info.num_subpartitions {
        return Err(Error::NoSuchSubpartition {
            partition: spec.partition.to_string(),
            subpartition: spec.subpartition,
            count: info.num_subpartitions,
        });
    }
    Ok(())
}

/// Looks up `spec`'s partition and becomes the one consumer of its channel: a CAS of the
/// channel's consumer pid from 0 to ours, then a second look that the block still belongs
/// to that partition. A lookup can be stale by the time the channel is opened (the producer
/// died, was reclaimed, and its block went to a new partition with a consumer of its own):
/// reading it then would make two consumers of one ring.
pub(super) fn attach_consumer(
    arena: &Arena,
    manager: &ResultPartitionManager,
    spec: &InputSpec,
    backoff: RequestBackoff,
) -> Result<crate::partition::PartitionInfo> {
    let me = std::process::id();
    // Bounded: another consumer's claim is either ours to wait out briefly (it undoes a
    // stale one at once) or an error after about 200 ms.
    for _ in 0..200 {
        let info = manager.lookup(spec.partition, backoff)?;
        check_subpartition(spec, &info)?;
        let id = info.first_channel + spec.subpartition;
        let b = &arena.channels()[id as usize];
        // One consumer wins the channel; the CAS orders our look at the block after the
        // producer's set-up (published with the directory entry we read).
        match b.try_attach_consumer(me) {
            Ok(()) => {}
            Err(other) if other == me => {} // this process read it before (a gate dropped and made again)
            Err(other) => {
                if liveness::pid_running(other) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                return Err(Error::PartitionFailed(format!(
                    "{} (subpartition {}: its consumer pid {other} died)",
                    spec.partition, spec.subpartition
                )));
            }
        }
        // The block must still be this partition's: same directory slot and subpartition,
        // the entry still registered under the id, the channel open.
        // Relaxed (all): ordered by the Acquire of the lookup below and the CAS above.
        let producer = arena.partitions()[info.slot as usize].producer_pid.load(Ordering::Relaxed);
        let same_block = b.origin() == (info.slot, spec.subpartition) && b.claimer() == producer;
        let open = matches!(
            b.state(),
            crate::memory::CHANNEL_OPEN | crate::memory::CHANNEL_PRODUCER_FAILED | crate::memory::CHANNEL_PRODUCER_DIED
        );
        let still = manager.lookup_once(spec.partition);
        if same_block
            && open
            && still.as_ref().is_ok_and(|i| i.slot == info.slot && i.first_channel == info.first_channel)
        {
            return Ok(info);
        }
        detach_consumer(arena, id);
        // The partition moved on: the next lookup says how (released, failed, not found).
        still?;
    }
    let holder = manager.lookup_once(spec.partition).ok().map(|i| {
        // For the message.
        arena.channels()[(i.first_channel + spec.subpartition) as usize].consumer_pid()
    });
    Err(Error::SubpartitionTaken {
        partition: spec.partition.to_string(),
        subpartition: spec.subpartition,
        pid: holder.unwrap_or(0),
    })
}

/// Gives up this process's claim on channel `id` (see [`attach_consumer`]).
pub(super) fn detach_consumer(arena: &Arena, id: u32) {
    if let Some(b) = arena.channels().get(id as usize) {
        // Only our own claim is given up (another process's stays).
        let _ = b.detach_consumer(std::process::id());
    }
}
