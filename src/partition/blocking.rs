//! Blocking result partitions (Flink's BLOCKING and BLOCKING_PERSISTENT): written completely
//! to one file per partition, then read by consumers through a read-only memory mapping.
//!
//! ```text
//!  producer: emit(record, s) --> in-memory chunk of subpartition s (bounded, 32 KiB)
//!            chunk full      --> appended to the data file as one region of s
//!            finish()        --> last chunks, index, footer; <id>.blk.inprogress renamed
//!                                to <id>.blk; directory entry FINISHED (type BLOCKING)
//!  file:     header  [magic "SHMFBLK1"][version u32 = 2][subpartitions u32][id u64 x 2]
//!            regions [u32 len][payload] ... (whole records of one subpartition each)
//!            index   per subpartition: [records u64][regions u64] then regions x
//!                    [offset u64][len u64][checksum u64]
//!                    (checksum: BlockingPartitionFile::region_checksum of its bytes)
//!            footer  [magic "SHMFEND1"][index offset u64][index len u64]
//!                    [subpartitions u32][version u32][records u64][checksum u64]
//!                    (checksum: FNV-1a over the index and the footer fields before it)
//!  consumer: BlockingPartitionFile::open mmaps <id>.blk read-only and validates footer,
//!            index checksum and every region's bounds; BlockingSubpartitionReader
//!            checks a region's checksum when it reaches the region, before it yields any
//!            of its records, then yields each record as &[u8] borrowed from the mapping
//!            (zero copy), checking every length prefix against its region (the cursor,
//!            SubpartitionCursor, is owned: the gate's file channel keeps it beside the
//!            file; the gate's partition request for a file is the wait for FINISHED).
//!            Reading never consumes: a restarted consumer reads the same records again
//!            (isReconnectable).
//!  release:  BLOCKING when every subpartition's consumer said done (or on release());
//!            BLOCKING_PERSISTENT only on an explicit release.
//! ```
//!
//! The final file name appears only once the file is complete (rename), so "the file
//! exists" already means "the footer is present"; the footer is still checked. Version 1
//! files (no region checksums) are refused.
//!
//! A damaged region (a flipped bit on disk, a stray write) is an
//! [`Error::ProtocolViolation`] naming the file, the subpartition and the region; the
//! other subpartitions still read. A file *truncated* while a consumer has it mapped is
//! not an error but a `SIGBUS` that kills the consumer when it touches a page past the new
//! end: nothing here handles that signal. The files live in a directory private to the job
//! (see [`FileChannelManager`]), written once under a temporary name and never modified
//! after the rename; only something outside the protocol can truncate them.

use super::manager::{ResultPartitionManager, PARTITION_FAILED, PARTITION_FINISHED, PARTITION_RELEASED};
use super::types::{ResultPartitionId, ResultPartitionType};
use crate::error::{ConfigError, Error, Result};
use crate::metrics::TaskMetricsHandle;
use crate::record::frame::{self, Frame};
use crate::record::{Record, DEFAULT_MAX_RECORD};
use crate::sync::{AtomicBool, Ordering};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Environment variable naming the directory of blocking partition files (set by the
/// coordinator for its workers).
pub const BLOCKING_DIR_ENV: &str = "SHMFLOW_BLOCKING_DIR";
/// Bytes a subpartition buffers in memory before they go to the file as one region.
pub const DEFAULT_REGION_BYTES: usize = 32 << 10;

const HEADER_MAGIC: [u8; 8] = *b"SHMFBLK1";
const FOOTER_MAGIC: [u8; 8] = *b"SHMFEND1";
/// Version 2 added a checksum per region to the index.
const VERSION: u32 = 2;
const HEADER_LEN: usize = 32;
const FOOTER_LEN: usize = 48;
/// Bytes of one region's index entry: offset, length, checksum.
const REGION_ENTRY: usize = 24;
const FILE_SUFFIX: &str = "blk";

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_SEED: u64 = 0xcbf2_9ce4_8422_2325;

const P1: u64 = 0x9e37_79b1_85eb_ca87;
const P2: u64 = 0xc2b2_ae3d_27d4_eb4f;
const P3: u64 = 0x1656_67b1_9e37_79f9;

/// xxHash64's round: a bijection of `acc` for a fixed `word` and of `word` for a fixed
/// `acc`, so a change confined to one word always changes the result.
#[inline(always)]
fn round(acc: u64, word: u64) -> u64 {
    acc.wrapping_add(word.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
}

/// The checksum of a region's bytes (xxHash64-like, not compatible with it): four
/// independent lanes of 8-byte words (several GB/s, so the writer hardly notices), merged,
/// then the tail words, the length and a final mix. Any change within one 8-byte word is
/// always detected; other changes with probability about 1 - 2^-64.
fn region_checksum(bytes: &[u8]) -> u64 {
    let mut lanes = [P1.wrapping_add(P2), P2, 0, P1.wrapping_neg()];
    let mut blocks = bytes.chunks_exact(32);
    for b in &mut blocks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = round(*lane, le_u64(b, 8 * i));
        }
    }
    let mut h = lanes[0]
        .rotate_left(1)
        .wrapping_add(lanes[1].rotate_left(7))
        .wrapping_add(lanes[2].rotate_left(12))
        .wrapping_add(lanes[3].rotate_left(18))
        .wrapping_add(bytes.len() as u64);
    let mut words = blocks.remainder().chunks_exact(8);
    for w in &mut words {
        h = round(h, le_u64(w, 0));
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut x = [0u8; 8];
        x[..tail.len()].copy_from_slice(tail);
        h = round(h, u64::from_le_bytes(x));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// One region of a subpartition in the file, as the index describes it.
#[derive(Debug, Clone, Copy)]
struct Region {
    offset: u64,
    len: u64,
    checksum: u64,
}

fn io_err(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

/// Owns the directory blocking partition files live in (Flink's FileChannelManager): one
/// file per partition, named after its [`ResultPartitionId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChannelManager {
    dir: PathBuf,
    region_bytes: usize,
    fsync: bool,
}

impl FileChannelManager {
    /// Files under `dir`, created if missing.
    ///
    /// # Errors
    /// [`Error::Io`] naming `dir` if it cannot be created (a parent is a regular file,
    /// no permission, full disk).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(io_err(format!("creating the blocking partition directory {}", dir.display())))?;
        Ok(Self { dir, region_bytes: DEFAULT_REGION_BYTES, fsync: false })
    }

    /// `std::env::temp_dir()/shmflow-blocking-<pid>`.
    pub fn default_dir() -> PathBuf {
        std::env::temp_dir().join(format!("shmflow-blocking-{}", std::process::id()))
    }

    /// Files under [`Self::default_dir`].
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_default_dir() -> Result<Self> {
        Self::new(Self::default_dir())
    }

    /// Files under `$SHMFLOW_BLOCKING_DIR` (set by a coordinator for its workers, or by the
    /// user), which must be an existing directory (a typo is not created), else under
    /// [`Self::default_dir`].
    ///
    /// # Errors
    /// [`ConfigError::Conflict`] when the variable names something other than a directory,
    /// [`Error::Io`] when it names nothing readable; else as [`Self::new`].
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(BLOCKING_DIR_ENV) {
            Some(d) if !d.is_empty() => {
                let dir = PathBuf::from(d);
                match std::fs::metadata(&dir) {
                    Ok(m) if m.is_dir() => Self::new(dir),
                    Ok(_) => Err(ConfigError::Conflict {
                        what: BLOCKING_DIR_ENV,
                        detail: format!("{} is not a directory", dir.display()),
                    }
                    .into()),
                    Err(source) => Err(Error::Io {
                        op: format!(
                            "{BLOCKING_DIR_ENV}={} (it is not created: name an existing directory, or unset it)",
                            dir.display()
                        ),
                        source,
                    }),
                }
            }
            _ => Self::with_default_dir(),
        }
    }

    /// Sets how many bytes a subpartition buffers before writing a region (at least 64).
    pub fn with_region_bytes(mut self, n: usize) -> Self {
        self.region_bytes = n.max(64);
        self
    }

    /// Whether `finish` fsyncs the file before publishing it.
    pub fn with_fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The complete file of partition `id` (present only once its producer finished).
    pub fn path_of(&self, id: ResultPartitionId) -> PathBuf {
        self.dir.join(format!("{:016x}-{:016x}.{FILE_SUFFIX}", id.partition, id.attempt))
    }

    fn in_progress_path(&self, id: ResultPartitionId) -> PathBuf {
        self.dir.join(format!("{:016x}-{:016x}.{FILE_SUFFIX}.inprogress", id.partition, id.attempt))
    }

    /// Whether partition `id` has a complete file.
    pub fn is_finished(&self, id: ResultPartitionId) -> bool {
        self.path_of(id).is_file()
    }

    /// Deletes partition `id`'s file (an absent file is fine) and, given the directory,
    /// marks its entry RELEASED.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file if it exists but cannot be removed.
    pub fn release(&self, directory: Option<&ResultPartitionManager>, id: ResultPartitionId) -> Result<()> {
        if let Some(d) = directory {
            if let Ok(info) = d.lookup_once(id) {
                d.set_state(info.slot, PARTITION_RELEASED);
            }
        }
        remove_if_present(&self.path_of(id))?;
        remove_if_present(&self.in_progress_path(id))
    }

    /// A consumer finished reading one subpartition of `id`. Counts it in the directory
    /// entry; when every subpartition was read, a BLOCKING partition is released (its file
    /// deleted). BLOCKING_PERSISTENT stays until [`Self::release`]. Returns whether it
    /// released the partition.
    ///
    /// # Errors
    /// Directory lookup errors; [`Error::Io`] if the file cannot be removed.
    pub fn consumer_done(&self, directory: &ResultPartitionManager, id: ResultPartitionId) -> Result<bool> {
        let info = directory.lookup_once(id)?;
        if info.state != PARTITION_FINISHED || info.partition_type.is_pipelined() {
            return Ok(false);
        }
        let done = directory.consumer_done(info.slot);
        if done == info.num_subpartitions && !info.partition_type.is_persistent() {
            self.release(Some(directory), id)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Removes the directory and everything in it.
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory.
    pub fn remove_all(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", self.dir.display()))(e)),
        }
    }
}

fn remove_if_present(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("removing {}", p.display()))(e)),
    }
}

/// Counters of a blocking partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockingStats {
    /// Records written (a broadcast record counts once).
    pub records_out: u64,
    /// Payload bytes written (a broadcast record counts once).
    pub bytes_out: u64,
    /// Regions written.
    pub regions: u64,
    /// File size once finished.
    pub file_bytes: u64,
}

/// A producer's blocking result partition: records go to a file, subpartition by
/// subpartition, in bounded memory.
///
/// Dropping a finished partition leaves its file for the consumers (it outlives its
/// producer, as in Flink); dropping an unfinished one fails it and removes its partial file.
pub struct BlockingResultPartition {
    files: FileChannelManager,
    id: ResultPartitionId,
    partition_type: ResultPartitionType,
    path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    offset: u64,
    chunks: Vec<Vec<u8>>,
    regions: Vec<Vec<Region>>,
    records: Vec<u64>,
    scratch: Vec<u8>,
    directory: Option<(ResultPartitionManager, u32)>,
    finished: bool,
    released: bool,
    stats: BlockingStats,
    task: Option<TaskMetricsHandle>,
    reported: (u64, u64),
}

impl std::fmt::Debug for BlockingResultPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockingResultPartition({}, {:?}, {} subpartitions)", self.id, self.path, self.chunks.len())
    }
}

impl BlockingResultPartition {
    /// Creates partition `id` with `num_subpartitions` subpartitions in `files`' directory.
    ///
    /// # Errors
    /// [`ConfigError::Conflict`] for a pipelined type, [`ConfigError::OutOfRange`] for a
    /// subpartition count of 0 or above 2^20; [`Error::Io`] naming the file if it cannot be
    /// created.
    pub fn new(
        files: &FileChannelManager,
        id: ResultPartitionId,
        partition_type: ResultPartitionType,
        num_subpartitions: u32,
    ) -> Result<Self> {
        if partition_type.is_pipelined() {
            return Err(ConfigError::Conflict {
                what: "partition type",
                detail: format!("{partition_type:?} is pipelined; use ResultPartition"),
            }
            .into());
        }
        if num_subpartitions == 0 || num_subpartitions > 1 << 20 {
            return Err(ConfigError::OutOfRange {
                what: "subpartition count",
                value: num_subpartitions.into(),
                min: 1,
                max: 1 << 20,
            }
            .into());
        }
        let path = files.path_of(id);
        let tmp_path = files.in_progress_path(id);
        let f = File::create(&tmp_path)
            .map_err(io_err(format!("creating blocking partition file {}", tmp_path.display())))?;
        let mut out = BufWriter::with_capacity(256 << 10, f);
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&HEADER_MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&num_subpartitions.to_le_bytes());
        header[16..24].copy_from_slice(&id.partition.to_le_bytes());
        header[24..32].copy_from_slice(&id.attempt.to_le_bytes());
        let n = num_subpartitions as usize;
        let mut me = Self {
            files: files.clone(),
            id,
            partition_type,
            path,
            tmp_path,
            out: None,
            offset: HEADER_LEN as u64,
            chunks: vec![Vec::new(); n],
            regions: vec![Vec::new(); n],
            records: vec![0; n],
            scratch: Vec::new(),
            directory: None,
            finished: false,
            released: false,
            stats: BlockingStats::default(),
            task: None,
            reported: (0, 0),
        };
        out.write_all(&header).map_err(io_err(format!("writing {}", me.tmp_path.display())))?;
        me.out = Some(out);
        Ok(me)
    }

    /// Registers the partition in the arena's directory now (state REGISTERED, type
    /// BLOCKING): consumers find it and wait for FINISHED, which `finish` sets.
    ///
    /// # Errors
    /// As [`ResultPartitionManager::claim_entry`].
    pub fn register(&mut self, directory: ResultPartitionManager) -> Result<()> {
        if self.directory.is_some() {
            return Ok(());
        }
        let slot = directory.claim_entry(self.id)?;
        // No channel blocks: first_channel 0 is a placeholder consumers of blocking
        // partitions never use.
        directory.publish(slot, self.partition_type, self.chunks.len() as u32, 0);
        self.directory = Some((directory, slot));
        Ok(())
    }

    /// Reports records and bytes out to a task's metrics.
    pub fn set_task_metrics(&mut self, m: TaskMetricsHandle) {
        self.task = Some(m);
    }

    /// The id.
    pub fn id(&self) -> ResultPartitionId {
        self.id
    }

    /// The type.
    pub fn partition_type(&self) -> ResultPartitionType {
        self.partition_type
    }

    /// Subpartitions.
    pub fn num_subpartitions(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// The file consumers read (complete once finished).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Counters.
    pub fn stats(&self) -> BlockingStats {
        self.stats
    }

    fn check_open(&self, s: u32) -> Result<()> {
        if self.finished {
            return Err(Error::PartitionFinished(self.id.to_string()));
        }
        if s as usize >= self.chunks.len() {
            return Err(Error::NoSuchSubpartition {
                partition: self.id.to_string(),
                subpartition: s,
                count: self.chunks.len() as u32,
            });
        }
        Ok(())
    }

    fn flush_chunk(&mut self, s: usize) -> Result<()> {
        let chunk = &mut self.chunks[s];
        if chunk.is_empty() {
            return Ok(());
        }
        // The file is let go only by `finish`.
        let out = self.out.as_mut().ok_or_else(|| Error::PartitionFinished(self.id.to_string()))?;
        out.write_all(chunk).map_err(io_err(format!("writing {}", self.tmp_path.display())))?;
        let len = chunk.len() as u64;
        // The chunk was just written, so it is still in cache.
        let checksum = region_checksum(chunk);
        self.regions[s].push(Region { offset: self.offset, len, checksum });
        self.offset += len;
        self.stats.regions += 1;
        chunk.clear();
        Ok(())
    }

    /// Room for `total` framed bytes at the end of subpartition `s`'s chunk.
    fn reserve(&mut self, s: usize, total: usize) -> Result<&mut [u8]> {
        let cap = self.files.region_bytes;
        if !self.chunks[s].is_empty() && self.chunks[s].len() + total > cap {
            self.flush_chunk(s)?;
        }
        let chunk = &mut self.chunks[s];
        if chunk.capacity() == 0 {
            chunk.reserve(cap.max(total));
        }
        let start = chunk.len();
        chunk.resize(start + total, 0);
        Ok(&mut chunk[start..])
    }

    fn after_append(&mut self, s: usize) -> Result<()> {
        self.records[s] += 1;
        if self.chunks[s].len() >= self.files.region_bytes {
            self.flush_chunk(s)?;
        }
        Ok(())
    }

    fn check_len(len: usize) -> Result<()> {
        if len > DEFAULT_MAX_RECORD {
            return Err(Error::TooLarge { what: "record", len, max: DEFAULT_MAX_RECORD });
        }
        Ok(())
    }

    /// Writes `record` to subpartition `s`.
    ///
    /// # Errors
    /// [`Error::NoSuchSubpartition`], [`Error::PartitionFinished`], [`Error::TooLarge`],
    /// [`Error::Io`] naming the file.
    #[inline]
    pub fn emit<R: Record + ?Sized>(&mut self, record: &R, s: u32) -> Result<()> {
        self.check_open(s)?;
        let len = record.serialized_len();
        Self::check_len(len)?;
        let dst = self.reserve(s as usize, frame::framed_len(len))?;
        frame::encode(dst, len, |out| record.serialize_into(out));
        self.stats.records_out += 1;
        self.stats.bytes_out += len as u64;
        self.after_append(s as usize)
    }

    /// Writes `record` to every subpartition (serialized once).
    ///
    /// # Errors
    /// As [`Self::emit`].
    pub fn broadcast_emit<R: Record + ?Sized>(&mut self, record: &R) -> Result<()> {
        self.check_open(0)?;
        let len = record.serialized_len();
        Self::check_len(len)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(frame::framed_len(len), 0);
        frame::encode(&mut scratch[..], len, |out| record.serialize_into(out));
        let mut r = Ok(());
        for s in 0..self.chunks.len() {
            r = self.reserve(s, scratch.len()).map(|d| d.copy_from_slice(&scratch)).and_then(|_| self.after_append(s));
            if r.is_err() {
                break;
            }
        }
        self.scratch = scratch;
        r?;
        self.stats.records_out += 1;
        self.stats.bytes_out += len as u64;
        Ok(())
    }

    fn report(&mut self) {
        if let Some(t) = &self.task {
            let (r, b) = (self.stats.records_out, self.stats.bytes_out);
            t.add_out(r - self.reported.0, b - self.reported.1);
            self.reported = (r, b);
        }
    }

    /// Writes the last regions, the index and the footer, publishes the file under its
    /// final name and marks the directory entry FINISHED.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file (full disk, ...); the partition is then failed.
    pub fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        let r = self.write_tail();
        if r.is_err() {
            self.fail();
            return r;
        }
        self.finished = true;
        self.report();
        if let Some((d, slot)) = &self.directory {
            d.set_state(*slot, PARTITION_FINISHED);
        }
        Ok(())
    }

    fn write_tail(&mut self) -> Result<()> {
        for s in 0..self.chunks.len() {
            self.flush_chunk(s)?;
            self.chunks[s] = Vec::new();
        }
        let mut index = Vec::new();
        for (regions, records) in self.regions.iter().zip(&self.records) {
            index.extend_from_slice(&records.to_le_bytes());
            index.extend_from_slice(&(regions.len() as u64).to_le_bytes());
            for r in regions {
                index.extend_from_slice(&r.offset.to_le_bytes());
                index.extend_from_slice(&r.len.to_le_bytes());
                index.extend_from_slice(&r.checksum.to_le_bytes());
            }
        }
        let footer = Footer {
            index_offset: self.offset,
            index_len: index.len() as u64,
            subpartitions: self.chunks.len() as u32,
            version: VERSION,
            records: self.records.iter().sum(),
        }
        .encode(&index);
        let what = || format!("writing {}", self.tmp_path.display());
        let mut out = self.out.take().ok_or_else(|| Error::PartitionFinished(self.id.to_string()))?;
        out.write_all(&index).and_then(|_| out.write_all(&footer)).map_err(io_err(what()))?;
        let f = out.into_inner().map_err(|e| io_err(what())(e.into_error()))?;
        if self.files.fsync {
            f.sync_all().map_err(io_err(format!("syncing {}", self.tmp_path.display())))?;
        }
        drop(f);
        self.stats.file_bytes = self.offset + index.len() as u64 + FOOTER_LEN as u64;
        std::fs::rename(&self.tmp_path, &self.path).map_err(io_err(format!(
            "renaming {} to {}",
            self.tmp_path.display(),
            self.path.display()
        )))
    }

    /// Marks the partition failed: removes the unfinished file and the directory entry
    /// says FAILED.
    pub fn fail(&mut self) {
        self.out = None;
        let _ = std::fs::remove_file(&self.tmp_path);
        self.finished = true;
        if let Some((d, slot)) = &self.directory {
            d.set_state(*slot, PARTITION_FAILED);
        }
    }

    /// Releases the partition: deletes its file and marks the entry RELEASED (both types;
    /// this is the explicit release BLOCKING_PERSISTENT waits for).
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be removed.
    pub fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        if !self.finished {
            self.fail();
        }
        self.released = true;
        if let Some((d, slot)) = &self.directory {
            d.set_state(*slot, PARTITION_RELEASED);
        }
        remove_if_present(&self.path)
    }
}

impl Drop for BlockingResultPartition {
    fn drop(&mut self) {
        // A finished partition outlives its producer (consumers read it later); an
        // unfinished one is failed and its partial file removed.
        if !self.finished {
            self.fail();
        }
    }
}

/// A complete blocking partition file, mapped read-only and validated (header, footer,
/// index checksum, region bounds; each region's checksum when a reader reaches it).
///
/// The file is memory-mapped: if it is truncated while mapped (by something outside the
/// protocol: the files live in a directory private to the job and are never modified once
/// finished), touching a page past the new end raises `SIGBUS`, which kills the process.
/// That signal is not handled.
///
/// Dropping it unmaps the file (the file is not removed).
pub struct BlockingPartitionFile {
    map: memmap2::Mmap,
    path: PathBuf,
    id: ResultPartitionId,
    /// Per subpartition: records and regions (bounds validated against the file).
    subs: Vec<(u64, Vec<Region>)>,
}

impl std::fmt::Debug for BlockingPartitionFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockingPartitionFile({}, {:?}, {} subpartitions)", self.id, self.path, self.subs.len())
    }
}

/// The file's footer (see the module doc): where the index is and what it holds, with a
/// checksum over the index and these fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footer {
    /// Where the index starts (it ends where the footer starts).
    index_offset: u64,
    /// Bytes of the index.
    index_len: u64,
    /// Subpartitions of the partition.
    subpartitions: u32,
    /// File format version.
    version: u32,
    /// Records of all subpartitions.
    records: u64,
}

impl Footer {
    /// The footer's bytes, checksummed together with `index`.
    fn encode(&self, index: &[u8]) -> [u8; FOOTER_LEN] {
        let mut f = [0u8; FOOTER_LEN];
        f[..8].copy_from_slice(&FOOTER_MAGIC);
        f[8..16].copy_from_slice(&self.index_offset.to_le_bytes());
        f[16..24].copy_from_slice(&self.index_len.to_le_bytes());
        f[24..28].copy_from_slice(&self.subpartitions.to_le_bytes());
        f[28..32].copy_from_slice(&self.version.to_le_bytes());
        f[32..40].copy_from_slice(&self.records.to_le_bytes());
        let sum = Self::checksum(index, &f);
        f[40..48].copy_from_slice(&sum.to_le_bytes());
        f
    }

    /// FNV-1a over `index` and the footer's fields before the checksum.
    fn checksum(index: &[u8], footer: &[u8; FOOTER_LEN]) -> u64 {
        fnv1a(fnv1a(FNV_SEED, index), &footer[..40])
    }

    /// The fields of `footer` (read from a file: not trusted); its checksum is checked by
    /// [`Self::verify`] once the index it names is at hand.
    ///
    /// # Errors
    /// What is wrong, for a [`Error::ProtocolViolation`] naming the file: a magic that is
    /// not [`FOOTER_MAGIC`] (an incomplete or foreign file).
    fn decode(footer: &[u8; FOOTER_LEN]) -> std::result::Result<Self, String> {
        if footer[..8] != FOOTER_MAGIC {
            return Err(format!("footer magic {:02x?}, expected {FOOTER_MAGIC:02x?} (incomplete file?)", &footer[..8]));
        }
        Ok(Footer {
            index_offset: le_u64(footer, 8),
            index_len: le_u64(footer, 16),
            subpartitions: le_u32(footer, 24),
            version: le_u32(footer, 28),
            records: le_u64(footer, 32),
        })
    }

    /// Checks the stored checksum of `footer` against `index`.
    ///
    /// # Errors
    /// What is wrong: the index or the footer was damaged.
    fn verify(footer: &[u8; FOOTER_LEN], index: &[u8]) -> std::result::Result<(), String> {
        let stored = le_u64(footer, 40);
        let computed = Self::checksum(index, footer);
        if stored != computed {
            return Err(format!("index checksum {stored:#018x}, computed {computed:#018x}: the index is damaged"));
        }
        Ok(())
    }
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

impl BlockingPartitionFile {
    /// Opens partition `id` in `files`' directory.
    ///
    /// # Errors
    /// [`Error::PartitionNotFound`] if it has no complete file (not finished, or
    /// released); [`Error::ProtocolViolation`] for a corrupt file; [`Error::Io`].
    pub fn open(files: &FileChannelManager, id: ResultPartitionId) -> Result<Self> {
        let path = files.path_of(id);
        if !path.exists() {
            let why = if files.in_progress_path(id).exists() { "not finished yet" } else { "no file" };
            return Err(Error::PartitionNotFound(format!("{id} ({why}: {})", path.display())));
        }
        Self::open_path(&path, Some(id))
    }

    /// Opens the file at `path`, checking it belongs to `expected` if given.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_path(path: &Path, expected: Option<ResultPartitionId>) -> Result<Self> {
        let f = File::open(path).map_err(io_err(format!("opening blocking partition file {}", path.display())))?;
        let len = f.metadata().map_err(io_err(format!("reading metadata of {}", path.display())))?.len();
        let bad = |detail: String| Error::ProtocolViolation {
            place: format!("blocking partition file {}", path.display()),
            detail,
        };
        if len < (HEADER_LEN + FOOTER_LEN) as u64 {
            return Err(bad(format!("{len} bytes, shorter than a header and a footer")));
        }
        // SAFETY: the file is mapped read-only and private to this process's view; files
        // under the FileChannelManager's directory are written once under a temporary
        // name and never modified after the rename that made them visible, so the mapping
        // does not change under us (the directory is private to the job; truncating a
        // finished file is outside the protocol, and would raise SIGBUS on access, as the
        // type's docs say). Every value read from it is validated.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err(format!("mapping {}", path.display())))?;
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Sequential);
        let b: &[u8] = &map;
        if b.len() as u64 != len {
            return Err(bad(format!("mapped {} bytes of a {len}-byte file", b.len())));
        }
        if b[..8] != HEADER_MAGIC {
            return Err(bad(format!("header magic {:02x?}, expected {HEADER_MAGIC:02x?}", &b[..8])));
        }
        // The length was checked above: this is the last FOOTER_LEN bytes.
        let Ok(foot) = <&[u8; FOOTER_LEN]>::try_from(&b[b.len() - FOOTER_LEN..]) else {
            return Err(bad(format!("{len} bytes, shorter than a footer")));
        };
        let footer = Footer::decode(foot).map_err(bad)?;
        let (hv, fv) = (le_u32(b, 8), footer.version);
        if hv != fv {
            return Err(bad(format!(
                "header says format version {hv}, footer {fv}; this build reads only version {VERSION}"
            )));
        }
        if hv != VERSION {
            return Err(bad(format!(
                "file format version {hv}, this build reads only version {VERSION} (written by another build)"
            )));
        }
        let n = le_u32(b, 12);
        let id = ResultPartitionId::new(le_u64(b, 16), le_u64(b, 24));
        if let Some(e) = expected {
            if e != id {
                return Err(bad(format!("holds partition {id}, expected {e}")));
            }
        }
        let (index_off, index_len) = (footer.index_offset, footer.index_len);
        let data_end = (b.len() - FOOTER_LEN) as u64;
        if index_off < HEADER_LEN as u64 || index_off.checked_add(index_len) != Some(data_end) {
            return Err(bad(format!(
                "index at {index_off} of {index_len} bytes does not end at the footer ({data_end})"
            )));
        }
        let index = &b[index_off as usize..data_end as usize];
        Footer::verify(foot, index).map_err(bad)?;
        if footer.subpartitions != n || n == 0 {
            return Err(bad(format!("footer says {} subpartitions, header {n}", footer.subpartitions)));
        }
        let total = footer.records;
        let mut subs = Vec::with_capacity(n.min(1 << 16) as usize);
        let mut at = 0usize;
        let mut sum = 0u64;
        for s in 0..n {
            if index.len() - at < 16 {
                return Err(bad(format!("index ends inside subpartition {s}'s entry")));
            }
            let records = le_u64(index, at);
            let count = le_u64(index, at + 8);
            at += 16;
            if count > ((index.len() - at) / REGION_ENTRY) as u64 {
                return Err(bad(format!("subpartition {s} claims {count} regions, more than the index holds")));
            }
            let mut regions = Vec::with_capacity(count as usize);
            for r in 0..count {
                let (offset, len, checksum) = (le_u64(index, at), le_u64(index, at + 8), le_u64(index, at + 16));
                at += REGION_ENTRY;
                if offset < HEADER_LEN as u64 || offset.checked_add(len).is_none_or(|e| e > index_off) {
                    return Err(bad(format!(
                        "subpartition {s} region {r} at {offset} of {len} bytes outside the data {HEADER_LEN}..{index_off}"
                    )));
                }
                regions.push(Region { offset, len, checksum });
            }
            sum = sum.wrapping_add(records);
            subs.push((records, regions));
        }
        if at != index.len() {
            return Err(bad(format!("{} trailing index bytes", index.len() - at)));
        }
        if sum != total {
            return Err(bad(format!("subpartitions hold {sum} records, footer says {total}")));
        }
        Ok(Self { map, path: path.to_path_buf(), id, subs })
    }

    /// The partition id.
    pub fn id(&self) -> ResultPartitionId {
        self.id
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Subpartitions.
    pub fn num_subpartitions(&self) -> u32 {
        self.subs.len() as u32
    }

    /// Records in subpartition `s` (per the index).
    pub fn records(&self, s: u32) -> Option<u64> {
        self.subs.get(s as usize).map(|x| x.0)
    }

    /// The whole mapping (records handed out by [`Self::next_record`] borrow from it).
    pub fn data(&self) -> &[u8] {
        &self.map
    }

    /// The checksum the index stores for a region holding `bytes` (for tools and tests
    /// that build or repair files).
    pub fn region_checksum(bytes: &[u8]) -> u64 {
        region_checksum(bytes)
    }

    /// A reader over subpartition `s`, from its first record.
    ///
    /// # Errors
    /// [`Error::NoSuchSubpartition`] for a subpartition out of range.
    pub fn subpartition(&self, s: u32) -> Result<BlockingSubpartitionReader<'_>> {
        Ok(BlockingSubpartitionReader { file: self, cursor: self.cursor(s)? })
    }

    /// A cursor at the first record of subpartition `s`, for [`Self::next_record`] (owned:
    /// a gate channel keeps it beside the file instead of borrowing it).
    ///
    /// # Errors
    /// [`Error::NoSuchSubpartition`] for a subpartition out of range.
    pub fn cursor(&self, s: u32) -> Result<SubpartitionCursor> {
        let (records, _) = self.subs.get(s as usize).ok_or_else(|| Error::NoSuchSubpartition {
            partition: self.id.to_string(),
            subpartition: s,
            count: self.subs.len() as u32,
        })?;
        Ok(SubpartitionCursor {
            subpartition: s,
            next_region: 0,
            cur: 0..0,
            expected: *records,
            seen: 0,
            bytes: 0,
            done: false,
        })
    }

    /// The next record at `cursor`, as `&[u8]` borrowed from the mapping (zero copy), and
    /// moves past it; `None` at the end. Each region's checksum is verified when the cursor
    /// reaches the region, before any record of it is handed out: a damaged region is an
    /// [`Error::ProtocolViolation`] naming the file, subpartition and region, and ends the
    /// subpartition. Every length prefix is checked against its region; a record count that
    /// disagrees with the index is reported at the end.
    #[inline]
    pub fn next_record(&self, cursor: &mut SubpartitionCursor) -> Option<Result<&[u8]>> {
        if cursor.done {
            return None;
        }
        let regions = &self.subs[cursor.subpartition as usize].1;
        loop {
            let cur = &self.map[cursor.cur.clone()];
            if !cur.is_empty() {
                let (rec, framed) = match frame::decode(cur) {
                    Frame::Whole { payload, framed } => (payload, framed),
                    Frame::NoPrefix => {
                        let detail = format!("{} bytes left in a region, less than a length prefix", cur.len());
                        return self.violation(cursor, detail);
                    }
                    Frame::Partial { len } => {
                        let detail = format!(
                            "record {} claims {len} bytes, its region has {} left",
                            cursor.seen,
                            cur.len() - frame::LEN_PREFIX
                        );
                        return self.violation(cursor, detail);
                    }
                };
                cursor.cur.start += framed;
                cursor.seen += 1;
                cursor.bytes += rec.len() as u64;
                return Some(Ok(rec));
            }
            let Some(&r) = regions.get(cursor.next_region) else {
                if cursor.seen != cursor.expected {
                    let detail = format!("{} records, the index says {}", cursor.seen, cursor.expected);
                    return self.violation(cursor, detail);
                }
                cursor.done = true;
                return None;
            };
            let i = cursor.next_region;
            cursor.next_region += 1;
            // In range: validated against the file when it was opened.
            let range = r.offset as usize..(r.offset + r.len) as usize;
            let computed = region_checksum(&self.map[range.clone()]);
            if computed != r.checksum {
                let detail = format!(
                    "region {i} of {} (bytes {}..{}) has checksum {computed:#018x}, the index says {:#018x}: \
                     the region is damaged",
                    regions.len(),
                    r.offset,
                    r.offset + r.len,
                    r.checksum
                );
                return self.violation(cursor, detail);
            }
            cursor.cur = range;
        }
    }

    fn violation<'a>(&self, cursor: &mut SubpartitionCursor, detail: String) -> Option<Result<&'a [u8]>> {
        cursor.done = true;
        Some(Err(Error::ProtocolViolation {
            place: format!("blocking partition file {} subpartition {}", self.path.display(), cursor.subpartition),
            detail,
        }))
    }
}

/// Where a reader is in one subpartition of a [`BlockingPartitionFile`] (see
/// [`BlockingPartitionFile::next_record`]).
#[derive(Debug, Clone)]
pub struct SubpartitionCursor {
    subpartition: u32,
    next_region: usize,
    /// The unread rest of the current region, as a range of the mapping.
    cur: std::ops::Range<usize>,
    expected: u64,
    seen: u64,
    bytes: u64,
    done: bool,
}

impl SubpartitionCursor {
    /// The offset in the file's mapping of the next unread byte (the end of the record
    /// read last, while inside its region).
    pub fn position(&self) -> usize {
        self.cur.start
    }

    /// Records read so far.
    pub fn records_read(&self) -> u64 {
        self.seen
    }

    /// Payload bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }
}

/// Iterates one subpartition's records as `&[u8]` borrowed from the mapping (zero copy),
/// with the checks of [`BlockingPartitionFile::next_record`].
///
/// Reads the mapping of its [`BlockingPartitionFile`]: a file truncated underneath raises
/// `SIGBUS` (see there).
pub struct BlockingSubpartitionReader<'a> {
    file: &'a BlockingPartitionFile,
    cursor: SubpartitionCursor,
}

impl std::fmt::Debug for BlockingSubpartitionReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BlockingSubpartitionReader({:?}, subpartition {}, {} read)",
            self.file.path, self.cursor.subpartition, self.cursor.seen
        )
    }
}

impl BlockingSubpartitionReader<'_> {
    /// Records read so far.
    pub fn records_read(&self) -> u64 {
        self.cursor.records_read()
    }

    /// Payload bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.cursor.bytes_read()
    }
}

impl<'a> Iterator for BlockingSubpartitionReader<'a> {
    type Item = Result<&'a [u8]>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.file.next_record(&mut self.cursor)
    }
}

/// Waits until every partition in `ids` is FINISHED in `directory` (Flink schedules the
/// consumers of blocking results only then). Checks `cancel` at least every 100 ms; a
/// partition not registered at all within `not_found_for` is an error.
///
/// # Errors
/// [`Error::Cancelled`]; [`Error::PartitionNotFound`]; [`Error::PartitionReleased`];
/// [`Error::PartitionFailed`] naming a partition whose producer failed;
/// [`ConfigError::Conflict`] for a pipelined partition.
pub fn wait_finished(
    directory: &ResultPartitionManager,
    ids: &[ResultPartitionId],
    cancel: &AtomicBool,
    not_found_for: Duration,
    mut idle: impl FnMut() -> Result<()>,
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let mut pending: Vec<ResultPartitionId> = ids.to_vec();
    pending.sort_unstable();
    pending.dedup();
    loop {
        let mut still = Vec::new();
        for &id in &pending {
            match directory.lookup_once(id) {
                Ok(info) if !info.partition_type.is_pipelined() && info.state == PARTITION_FINISHED => {}
                Ok(info) if info.partition_type.is_pipelined() => {
                    return Err(ConfigError::Conflict {
                        what: "blocking input",
                        detail: format!("partition {id} is {:?}", info.partition_type),
                    }
                    .into())
                }
                Ok(_) => still.push(id),
                Err(Error::PartitionNotFound(_)) if start.elapsed() < not_found_for => still.push(id),
                Err(e) => return Err(e),
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        pending = still;
        idle()?;
        // Relaxed: a stop request, polled.
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The footer codec, next to it.
#[cfg(test)]
mod footer_tests {
    use super::*;

    fn footer() -> Footer {
        Footer { index_offset: 32, index_len: 40, subpartitions: 2, version: VERSION, records: 7 }
    }

    #[test]
    fn a_footer_round_trips_with_its_index_including_the_largest_values() {
        let index = [5u8; 40];
        for f in [
            footer(),
            Footer {
                index_offset: u64::MAX,
                index_len: u64::MAX,
                subpartitions: u32::MAX,
                version: 0,
                records: u64::MAX,
            },
        ] {
            let bytes = f.encode(&index);
            assert_eq!(&bytes[..8], &FOOTER_MAGIC);
            assert_eq!(Footer::decode(&bytes), Ok(f));
            assert_eq!(Footer::verify(&bytes, &index), Ok(()));
        }
    }

    #[test]
    fn the_fields_sit_where_the_module_doc_says() {
        let bytes = footer().encode(&[]);
        assert_eq!(le_u64(&bytes, 8), 32);
        assert_eq!(le_u64(&bytes, 16), 40);
        assert_eq!(le_u32(&bytes, 24), 2);
        assert_eq!(le_u32(&bytes, 28), VERSION);
        assert_eq!(le_u64(&bytes, 32), 7);
        assert_eq!(le_u64(&bytes, 40), fnv1a(fnv1a(FNV_SEED, &[]), &bytes[..40]));
    }

    #[test]
    fn a_flipped_bit_in_the_index_or_any_field_fails_the_checksum() {
        let index: Vec<u8> = (0..48).collect();
        let good = footer().encode(&index);
        for i in 0..index.len() {
            let mut bad = index.clone();
            bad[i] ^= 0x10;
            let e = Footer::verify(&good, &bad).unwrap_err();
            assert!(e.contains("the index is damaged"), "{e}");
        }
        for i in 8..FOOTER_LEN {
            let mut bad = good;
            bad[i] ^= 1;
            assert!(Footer::verify(&bad, &index).is_err(), "byte {i} of the footer is not covered");
        }
        assert!(Footer::verify(&good, &index[..47]).is_err(), "a shorter index");
    }

    #[test]
    fn a_foreign_or_incomplete_footer_is_refused_not_read() {
        let mut bytes = footer().encode(&[]);
        bytes[0] = b'X';
        let e = Footer::decode(&bytes).unwrap_err();
        assert!(e.contains("footer magic") && e.contains("incomplete file?"), "{e}");
        assert!(Footer::decode(&[0u8; FOOTER_LEN]).is_err());
    }
}
