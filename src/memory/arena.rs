//! The shared arena: one mapping that holds every structure processes share.
//!
//! ```text
//!   creator (coordinator or library user)           attachers (workers)
//!   Arena::create_memfd / create_named  --fd or name-->  Arena::attach_fd / attach_named
//!        zero-fill, build structures in place,           copy the header out, validate every
//!        push every segment on the free stack,           field against the file and the
//!        write header + checksum, state = READY          layout this build computes
//! ```
//!
//! A memfd arena is sealed against shrinking and growing, so no peer can truncate it under
//! another process (which would turn reads into SIGBUS). A named arena lives under
//! `/dev/shm`, is created with `O_EXCL` and mode 0600, and refuses to attach across users.
//! A heap arena (no sharing) serves unit tests and loom.
//!
//! A memfd arena can sit on 2 MiB huge pages ([`HugePages`], [`Arena::create_memfd_with`],
//! or `SHMFLOW_HUGE_PAGES` for [`Arena::create_memfd`]): `MFD_HUGETLB | MFD_HUGE_2MB`, when
//! the host has enough of them reserved (`HugePages_Free` less `HugePages_Rsvd` in
//! `/proc/meminfo`; root reserves them with `echo N > /proc/sys/vm/nr_hugepages`). The file
//! is then a whole number of huge pages; attachers map whole pages of whatever the file is
//! made of (its `st_blksize`), so they need not be told. [`Arena::page_size`] says what
//! backs an arena and [`Arena::huge_page_note`] why huge pages were asked for and not used.

use super::blocks::{ChannelBlock, GateBlock, Owner, PartitionEntry, SegmentControl, TaskMetrics, WorkerRecord};
use super::header::{ArenaHeader, StaticHeader, LAYOUT_VERSION, MAGIC, STATE_READY};
use super::layout::{ArenaConfig, ArenaLayout, RegionKind, PAGE, RINGS_PER_CHANNEL};
use super::stack::{SegmentStack, StackHead};
use crate::error::{ArenaError, Error, Result};
use crate::sync::{AtomicU32, AtomicU64, CachePadded, Ordering};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::ptr::NonNull;

/// The environment variable that carries an inherited arena fd to a child process.
pub const ARENA_FD_ENV: &str = "SHMFLOW_ARENA_FD";

/// Which of a channel's three rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// Producer to consumer: buffer and event descriptors.
    Data = 0,
    /// Consumer to producer: credits and recycled segments.
    Credit = 1,
    /// Producer to consumer: priority events that overtake data.
    Priority = 2,
}

/// The environment variable [`Arena::create_memfd`] reads for its [`HugePages`] choice:
/// `off` (or unset, `0`, empty), `if-reserved` (or `1`, `auto`), `required`.
pub const HUGE_PAGES_ENV: &str = "SHMFLOW_HUGE_PAGES";

/// The size of the huge pages a memfd arena asks for.
pub const HUGE_PAGE: u64 = 2 * 1024 * 1024;

/// Whether a memfd arena is put on 2 MiB huge pages.
///
/// Huge pages cut the TLB misses of walking a large arena (a 1 MiB record in 32 KiB segments
/// touches 256 4 KiB pages, 1 huge page); they must be reserved by the host beforehand
/// (`/proc/sys/vm/nr_hugepages`), so they are off unless asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HugePages {
    /// 4 KiB pages (the default).
    #[default]
    Off,
    /// 2 MiB pages when the host has enough reserved and free, else 4 KiB pages with a note
    /// ([`Arena::huge_page_note`]) that says why.
    IfReserved,
    /// 2 MiB pages, or an error that says why not.
    Required,
}

impl HugePages {
    /// Parses a [`HUGE_PAGES_ENV`] value; `None` for an unknown one.
    pub fn parse(v: &str) -> Option<Self> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "off" | "no" => Some(HugePages::Off),
            "1" | "auto" | "if-reserved" | "yes" => Some(HugePages::IfReserved),
            "required" | "require" => Some(HugePages::Required),
            _ => None,
        }
    }

    /// The choice [`HUGE_PAGES_ENV`] makes ([`HugePages::Off`] when it is unset).
    ///
    /// # Errors
    /// [`ArenaError::Config`] for a value [`HugePages::parse`] does not know.
    pub fn from_env() -> Result<Self, ArenaError> {
        match std::env::var(HUGE_PAGES_ENV) {
            Err(_) => Ok(HugePages::Off),
            Ok(v) => Self::parse(&v).ok_or_else(|| {
                ArenaError::Config(format!("{HUGE_PAGES_ENV}={v:?}: expected off, if-reserved or required"))
            }),
        }
    }
}

/// The 2 MiB huge pages the host can still hand out (free and not reserved by a mapping),
/// from `/proc/meminfo`; an error text when it cannot tell or the default huge page size is
/// not 2 MiB.
fn free_huge_pages(meminfo: &str) -> Result<u64, String> {
    let field = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
    };
    let size_kib = field("Hugepagesize:").ok_or("/proc/meminfo has no Hugepagesize (no hugetlb support)")?;
    if size_kib * 1024 != HUGE_PAGE {
        return Err(format!("the host's huge pages are {size_kib} kB, not 2048 kB"));
    }
    let free = field("HugePages_Free:").ok_or("/proc/meminfo has no HugePages_Free")?;
    let rsvd = field("HugePages_Rsvd:").unwrap_or(0);
    Ok(free.saturating_sub(rsvd))
}

/// The page size of an open arena file: its `st_blksize` (2 MiB on hugetlbfs, 4 KiB on
/// tmpfs), or [`PAGE`] when that is not a plausible page size.
fn page_size_of(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    match file.metadata().map(|m| m.blksize()) {
        Ok(b) if b.is_power_of_two() && (PAGE..=(1 << 30)).contains(&b) => b,
        _ => PAGE,
    }
}

/// How many bytes to map of an arena of `total` bytes in a file of `file_len` bytes with
/// pages of `page`: whole pages where the file has them (hugetlbfs maps and unmaps only
/// whole huge pages).
fn map_len(total: u64, file_len: u64, page: u64) -> u64 {
    let whole = total.div_ceil(page) * page;
    if whole <= file_len {
        whole
    } else {
        total
    }
}

enum Backing {
    Map { _map: memmap2::MmapRaw, fd: OwnedFd },
    Heap { layout: std::alloc::Layout },
}

/// A mapped (or heap) arena and its validated layout. Shared between threads as
/// `Arc<Arena>`; every access to its contents goes through atomics or through the segment
/// protocols (BufferBuilder / BufferConsumer).
///
/// Dropping the last handle unmaps it. A memfd arena is freed by the kernel once no
/// process maps it or holds its fd; a named arena's file is removed by the handle that
/// created it (unless kept), never by one that attached it; a heap arena is freed.
pub struct Arena {
    base: NonNull<u8>,
    header: StaticHeader,
    layout: ArenaLayout,
    backing: Backing,
    /// Set for a named arena this handle created: unlinked on drop unless kept.
    unlink: Option<PathBuf>,
    name: Option<String>,
    /// The page size of the mapping (4 KiB, or 2 MiB on huge pages).
    page_size: u64,
    /// Why huge pages were asked for and not used.
    huge_page_note: Option<String>,
    /// Under loom, one access-tracked cell per payload byte, so loom sees the payload
    /// writes and reads that the position marker must order.
    #[cfg(loom)]
    witness: Box<[crate::sync::UnsafeCell<()>]>,
    /// Under loom, the atomic words `segment_word` hands out (loom atomics cannot live in
    /// raw memory): one per 4 bytes of every segment.
    #[cfg(loom)]
    slot_words: Box<[AtomicU32]>,
}

// SAFETY: the arena's memory is only accessed through atomics or through the
// single-writer/reader segment protocols, whose handles enforce exclusivity; the mapping
// itself may be used from any thread.
unsafe impl Send for Arena {}
// SAFETY: as above; `&Arena` hands out only `&` to atomics and segment access that is
// `unsafe` with documented preconditions.
unsafe impl Sync for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("name", &self.name)
            .field("total_size", &self.layout.total_size)
            .field("segment_size", &self.header.segment_size)
            .field("segment_count", &self.header.segment_count)
            .finish()
    }
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStat {
    /// The file was read and parsed: the process's start time in clock ticks since boot
    /// (field 22) and whether it has ended (state Z or X: exited, not reaped yet).
    Found {
        /// Field 22, `starttime`.
        start_ticks: u64,
        /// State `Z` (zombie) or `X` (dead).
        ended: bool,
    },
    /// No such process: the file does not exist (`ENOENT`, `ESRCH`).
    Absent,
    /// The file could not be read for another reason (`/proc` hidden or unreadable) or
    /// did not parse: nothing can be told from it.
    Unknown,
}

/// Reads `/proc/PID/stat` (bytes: the command name is another process's data, cut at 15
/// bytes and not necessarily UTF-8).
pub fn proc_stat(pid: u32) -> ProcStat {
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(bytes) => match parse_proc_stat(&bytes) {
            Some((start_ticks, state)) => ProcStat::Found { start_ticks, ended: matches!(state, b'Z' | b'X') },
            None => ProcStat::Unknown,
        },
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => ProcStat::Absent,
        Err(_) => ProcStat::Unknown,
    }
}

/// Parses a `/proc/PID/stat` line: its start time (field 22) and state (field 3). The
/// command name (field 2) may hold spaces, parentheses and any bytes: fields restart after
/// the last `)`. `None` for anything unexpected; never panics.
pub fn parse_proc_stat(bytes: &[u8]) -> Option<(u64, u8)> {
    let close = bytes.iter().rposition(|&b| b == b')')?;
    let rest = bytes.get(close + 1..)?;
    let mut fields = rest.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty());
    let state = match fields.next()? {
        [s] => *s,
        _ => return None,
    };
    // Field 3 was the state; field 22 is the 19th after it.
    let start = fields.nth(18)?;
    let start = std::str::from_utf8(start).ok()?.parse().ok()?;
    Some((start, state))
}

/// Start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat);
/// `None` when it cannot be read (see [`proc_stat`] for why).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    match proc_stat(pid) {
        ProcStat::Found { start_ticks, .. } => Some(start_ticks),
        _ => None,
    }
}

/// The header of an arena this process creates (see [`StaticHeader::new`]).
fn build_header(layout: &ArenaLayout) -> StaticHeader {
    let pid = std::process::id();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    StaticHeader::new(layout, pid, uid, process_start_ticks(pid).unwrap_or(0))
}

/// Validates a header copied out of a file of `file_len` bytes; returns its layout.
///
/// This is the whole trust boundary of attaching: everything later relies on the layout
/// returned here, never on the header bytes in the mapping.
///
/// # Errors
/// An [`ArenaError`] naming the first thing that is wrong.
pub fn validate_header(h: &StaticHeader, file_len: u64) -> Result<ArenaLayout, ArenaError> {
    if h.magic != MAGIC {
        return Err(ArenaError::BadMagic { found: h.magic, expected: MAGIC });
    }
    if h.version != LAYOUT_VERSION {
        return Err(ArenaError::Version { found: h.version, expected: LAYOUT_VERSION });
    }
    let computed = h.compute_checksum();
    if computed != h.checksum {
        return Err(ArenaError::Checksum { stored: h.checksum, computed });
    }
    if h.header_size as usize != std::mem::size_of::<ArenaHeader>() {
        return Err(ArenaError::Inconsistent(format!(
            "header_size is {} but this build's header has {} bytes",
            h.header_size,
            std::mem::size_of::<ArenaHeader>()
        )));
    }
    let layout = h.config().layout().map_err(|e| ArenaError::Inconsistent(e.to_string()))?;
    if layout.regions != h.regions || layout.total_size != h.total_size {
        return Err(ArenaError::Inconsistent(format!(
            "the region table (total {} bytes) does not match the sizes it records (total {} bytes)",
            h.total_size, layout.total_size
        )));
    }
    if file_len < layout.total_size {
        return Err(ArenaError::Truncated { what: "the arena", needed: layout.total_size, actual: file_len });
    }
    Ok(layout)
}

/// Parses and validates a header from raw bytes (the start of a file). Used by attach and
/// by the fuzz target.
///
/// # Errors
/// As [`validate_header`], plus [`ArenaError::Truncated`] when `bytes` is shorter than a
/// header.
pub fn validate_header_bytes(bytes: &[u8], file_len: u64) -> Result<ArenaLayout, ArenaError> {
    let need = std::mem::size_of::<StaticHeader>();
    if bytes.len() < need {
        return Err(ArenaError::Truncated { what: "the header", needed: need as u64, actual: bytes.len() as u64 });
    }
    // SAFETY: `bytes` has at least size_of::<StaticHeader>() bytes and StaticHeader is a
    // plain repr(C) struct of integers, valid for any bit pattern; read_unaligned copes
    // with any alignment.
    let h = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<StaticHeader>()) };
    validate_header(&h, file_len)
}

impl Arena {
    /// Creates an arena in a memfd, sealed against resizing. Hand it to other processes
    /// with [`Arena::fd`] (fd inheritance, see [`Arena::inherit_fd_into`]) or SCM_RIGHTS.
    ///
    /// Its pages are what [`HUGE_PAGES_ENV`] asks for (4 KiB when it is unset); when it asks
    /// for huge pages and they are not used, the reason goes to stderr once per arena and to
    /// [`Arena::huge_page_note`]. [`Arena::create_memfd_with`] chooses in code instead.
    ///
    /// # Errors
    /// [`ArenaError::Config`] for a bad config or a bad [`HUGE_PAGES_ENV`] value,
    /// [`ArenaError::Io`] if the kernel refuses.
    pub fn create_memfd(config: &ArenaConfig, name: &str) -> Result<Self, ArenaError> {
        let huge = HugePages::from_env()?;
        let arena = Self::create_memfd_with(config, name, huge)?;
        if let Some(note) = arena.huge_page_note() {
            eprintln!("shmflow: arena {name:?}: {HUGE_PAGES_ENV}: {note}");
        }
        Ok(arena)
    }

    /// As [`Arena::create_memfd`], on the pages `huge` asks for.
    ///
    /// # Errors
    /// As [`Arena::create_memfd`]; with [`HugePages::Required`], [`ArenaError::Io`] when the
    /// host has too few 2 MiB pages reserved (the message says how many it has and needs).
    pub fn create_memfd_with(config: &ArenaConfig, name: &str, huge: HugePages) -> Result<Self, ArenaError> {
        let layout = config.layout()?;
        let cname = std::ffi::CString::new(format!("shmflow:{name}"))
            .map_err(|_| ArenaError::Config("arena name contains a NUL byte".into()))?;
        let mut note = None;
        if huge != HugePages::Off {
            match Self::create_memfd_on(&cname, layout, name, HUGE_PAGE) {
                Ok(arena) => return Ok(arena),
                Err(e) if huge == HugePages::Required => return Err(e),
                Err(e) => note = Some(format!("on 4 KiB pages, not 2 MiB huge pages: {e}")),
            }
        }
        let mut arena = Self::create_memfd_on(&cname, layout, name, PAGE)?;
        arena.huge_page_note = note;
        Ok(arena)
    }

    /// Creates, sizes, maps, initializes and seals a memfd of `page`-sized pages (4 KiB, or
    /// 2 MiB from the hugetlb pool).
    fn create_memfd_on(cname: &std::ffi::CStr, layout: ArenaLayout, name: &str, page: u64) -> Result<Self, ArenaError> {
        let huge = page == HUGE_PAGE;
        let file_len = layout.total_size.div_ceil(page) * page;
        if huge {
            let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
            let unavailable = |why: String| ArenaError::io("2 MiB huge pages", std::io::Error::other(why));
            let free = free_huge_pages(&meminfo).map_err(unavailable)?;
            let need = file_len / HUGE_PAGE;
            if free < need {
                return Err(unavailable(format!(
                    "the arena needs {need} and the host has {free} free (HugePages_Free less HugePages_Rsvd in \
                     /proc/meminfo); root can reserve them with `echo N > /proc/sys/vm/nr_hugepages`"
                )));
            }
        }
        let flags =
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | if huge { libc::MFD_HUGETLB | libc::MFD_HUGE_2MB } else { 0 };
        // SAFETY: `cname` is a valid NUL-terminated string; the flags are valid.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if raw < 0 {
            return Err(ArenaError::io("memfd_create", std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = File::from(fd);
        file.set_len(file_len).map_err(|e| ArenaError::io("resizing the memfd", e))?;
        let fd = OwnedFd::from(file);
        // Mapping a hugetlb file reserves its pages; it fails (ENOMEM) when another process
        // took them since we looked, so the caller can still fall back.
        let arena = Self::map(fd, layout, build_header(&layout), None, Some(name.to_string()), page, file_len)?;
        arena.initialize();
        // SAFETY: fcntl on our own fd with valid arguments.
        let rc = unsafe {
            libc::fcntl(
                arena.raw_fd().unwrap_or(-1),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if rc < 0 {
            return Err(ArenaError::io("sealing the memfd", std::io::Error::last_os_error()));
        }
        Ok(arena)
    }

    /// Creates a named arena at `/dev/shm/NAME` (O_EXCL, mode 0600). It is unlinked when
    /// this handle drops unless [`Arena::keep`] is called.
    ///
    /// # Errors
    /// [`ArenaError::Io`] if the name exists or cannot be created.
    pub fn create_named(name: &str, config: &ArenaConfig) -> Result<Self, ArenaError> {
        let layout = config.layout()?;
        let path = Self::shm_path(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&path)
            .map_err(|e| ArenaError::io(format!("creating {}", path.display()), e))?;
        let fd = OwnedFd::from(file);
        let cleanup = |e| {
            let _ = std::fs::remove_file(&path);
            e
        };
        File::from(fd.try_clone().map_err(|e| cleanup(ArenaError::io("dup", e)))?)
            .set_len(layout.total_size)
            .map_err(|e| cleanup(ArenaError::io("resizing the arena file", e)))?;
        let arena = Self::map(fd, layout, build_header(&layout), Some(path.clone()), Some(name.to_string()), PAGE, 0)
            .map_err(cleanup)?;
        arena.initialize();
        Ok(arena)
    }

    /// An unshared arena on the heap, for unit tests and loom models.
    ///
    /// # Errors
    /// [`ArenaError::Config`] for a bad config.
    pub fn heap(config: &ArenaConfig) -> Result<Self, ArenaError> {
        let layout = config.layout()?;
        let alloc = std::alloc::Layout::from_size_align(layout.total_size as usize, PAGE as usize)
            .map_err(|e| ArenaError::Config(e.to_string()))?;
        // SAFETY: `alloc` has a non-zero size (at least one page of header).
        let ptr = unsafe { std::alloc::alloc_zeroed(alloc) };
        let base = NonNull::new(ptr).ok_or_else(|| ArenaError::Config("out of memory".into()))?;
        let header = build_header(&layout);
        let arena = Arena {
            base,
            header,
            layout,
            backing: Backing::Heap { layout: alloc },
            unlink: None,
            name: None,
            page_size: PAGE,
            huge_page_note: None,
            #[cfg(loom)]
            witness: (0..u64::from(config.segment_count) * u64::from(config.segment_size))
                .map(|_| crate::sync::UnsafeCell::new(()))
                .collect(),
            #[cfg(loom)]
            slot_words: (0..u64::from(config.segment_count) * u64::from(config.segment_size) / 4)
                .map(|_| AtomicU32::new(0))
                .collect(),
        };
        arena.initialize();
        Ok(arena)
    }

    /// Attaches to an arena by fd (inherited or received). Validates everything.
    ///
    /// # Errors
    /// An [`ArenaError`] naming what is wrong with the file.
    pub fn attach_fd(fd: OwnedFd) -> Result<Self, ArenaError> {
        let file = File::from(fd);
        let len = file.metadata().map_err(|e| ArenaError::io("fstat on the arena", e))?.len();
        let header = Self::read_header(&file, len)?;
        let layout = validate_header(&header, len)?;
        let page = page_size_of(&file);
        let arena = Self::map(OwnedFd::from(file), layout, header, None, None, page, len)?;
        arena.check_ready()?;
        Ok(arena)
    }

    /// Attaches to the arena an ancestor passed through [`ARENA_FD_ENV`].
    ///
    /// # Errors
    /// [`ArenaError::Config`] if the variable is missing or not an fd, else as
    /// [`Arena::attach_fd`].
    pub fn attach_inherited() -> Result<Self, ArenaError> {
        let v = std::env::var(ARENA_FD_ENV)
            .map_err(|_| ArenaError::Config(format!("{ARENA_FD_ENV} is not set: no arena was passed down")))?;
        let raw: RawFd =
            v.parse().map_err(|_| ArenaError::Config(format!("{ARENA_FD_ENV}={v} is not an fd number")))?;
        // SAFETY: fcntl(F_GETFD) on any integer is safe; it just fails for a closed fd.
        if raw < 0 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(ArenaError::Config(format!("{ARENA_FD_ENV}={v} is not an open fd")));
        }
        // SAFETY: the fd is open and was passed to this process for it to own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Self::attach_fd(fd)
    }

    /// Attaches to `/dev/shm/NAME`, refusing one that belongs to another user.
    ///
    /// # Errors
    /// An [`ArenaError`] naming what is wrong.
    pub fn attach_named(name: &str) -> Result<Self, ArenaError> {
        let path = Self::shm_path(name)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| ArenaError::io(format!("opening {}", path.display()), e))?;
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(|e| ArenaError::io("fstat on the arena", e))?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(ArenaError::Foreign { name: name.into(), owner: meta.uid(), me });
        }
        let len = meta.len();
        let header = Self::read_header(&file, len)?;
        let layout = validate_header(&header, len)?;
        let page = page_size_of(&file);
        let arena = Self::map(OwnedFd::from(file), layout, header, None, Some(name.into()), page, len)?;
        arena.check_ready()?;
        Ok(arena)
    }

    /// Attaches to an arena file at any path (for inspection tools and tests).
    ///
    /// # Errors
    /// An [`ArenaError`] naming what is wrong.
    pub fn attach_path(path: &std::path::Path) -> Result<Self, ArenaError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ArenaError::io(format!("opening {}", path.display()), e))?;
        Self::attach_fd(OwnedFd::from(file))
    }

    /// Attaches read-only to an arena file (a named arena, or a running job's memfd through
    /// `/proc/PID/fd/N`), for observers such as `shmflow top`. The mapping is read-only:
    /// any write through this handle would fault, so an observer can never disturb a job.
    ///
    /// # Errors
    /// An [`ArenaError`] naming what is wrong with the file.
    pub fn attach_read_only(path: &std::path::Path) -> Result<Self, ArenaError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(|e| ArenaError::io(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| ArenaError::io("fstat on the arena", e))?.len();
        let header = Self::read_header(&file, len)?;
        let layout = validate_header(&header, len)?;
        let page = page_size_of(&file);
        let map = memmap2::MmapOptions::new()
            .len(map_len(layout.total_size, len, page) as usize)
            .map_raw_read_only(&file)
            .map_err(|e| ArenaError::io("mapping the arena read-only", e))?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| ArenaError::Config("mmap returned null".into()))?;
        let arena = Arena {
            base,
            header,
            layout,
            backing: Backing::Map { _map: map, fd: OwnedFd::from(file) },
            unlink: None,
            name: Some(path.display().to_string()),
            page_size: page,
            huge_page_note: None,
            #[cfg(loom)]
            witness: Box::new([]),
            #[cfg(loom)]
            slot_words: Box::new([]),
        };
        arena.check_ready()?;
        Ok(arena)
    }

    /// The memfd arenas process `pid` holds open (a running job's coordinator), as paths
    /// under `/proc/PID/fd` that [`Arena::attach_read_only`] can open.
    pub fn find_memfd_arenas(pid: u32) -> Vec<PathBuf> {
        let dir = PathBuf::from(format!("/proc/{pid}/fd"));
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:shmflow:")))
            .map(|e| e.path())
            .collect();
        out.sort();
        out
    }

    /// Every memfd arena some process on this host holds open, once each (a job's
    /// coordinator and its workers share one): the lowest pid holding it (the coordinator,
    /// which starts first, unless pids wrapped) and a path [`Arena::attach_read_only`] can
    /// open. Processes whose descriptors we may not read are skipped.
    pub fn find_all_memfd_arenas() -> Vec<(u32, PathBuf)> {
        use std::os::unix::fs::MetadataExt;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut by_inode: std::collections::BTreeMap<(u64, u64), (u32, PathBuf)> = Default::default();
        for e in procs.filter_map(|e| e.ok()) {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            for path in Self::find_memfd_arenas(pid) {
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                let entry = by_inode.entry((meta.dev(), meta.ino())).or_insert_with(|| (pid, path.clone()));
                if pid < entry.0 {
                    *entry = (pid, path);
                }
            }
        }
        let mut out: Vec<(u32, PathBuf)> = by_inode.into_values().collect();
        out.sort();
        out
    }

    /// The file of the named arena `name` ([`create_named`](Self::create_named),
    /// [`attach_named`](Self::attach_named)): `/dev/shm/<name>`.
    ///
    /// # Errors
    /// [`ArenaError::Config`] for a name that is empty, longer than 200 bytes, contains
    /// '/' or NUL, or starts with '.' (it would name a file outside `/dev/shm`).
    pub fn named_path(name: &str) -> Result<PathBuf, ArenaError> {
        Self::shm_path(name)
    }

    fn shm_path(name: &str) -> Result<PathBuf, ArenaError> {
        if name.is_empty() || name.len() > 200 || name.contains(['/', '\0']) || name.starts_with('.') {
            return Err(ArenaError::Config(format!(
                "arena name {name:?} must be 1..=200 characters without '/' or NUL and not start with '.'"
            )));
        }
        Ok(PathBuf::from("/dev/shm").join(name))
    }

    fn read_header(file: &File, len: u64) -> Result<StaticHeader, ArenaError> {
        use std::os::unix::fs::FileExt;
        let need = std::mem::size_of::<StaticHeader>();
        if len < need as u64 {
            return Err(ArenaError::Truncated { what: "the header", needed: need as u64, actual: len });
        }
        let mut buf = vec![0u8; need];
        file.read_exact_at(&mut buf, 0).map_err(|e| ArenaError::io("reading the arena header", e))?;
        // SAFETY: `buf` holds exactly size_of::<StaticHeader>() bytes; any bit pattern is a
        // valid StaticHeader (integers only).
        Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<StaticHeader>()) })
    }

    /// Maps `layout` from `fd`, a file of `file_len` bytes (0: exactly the layout) of
    /// `page`-sized pages.
    fn map(
        fd: OwnedFd,
        layout: ArenaLayout,
        header: StaticHeader,
        unlink: Option<PathBuf>,
        name: Option<String>,
        page: u64,
        file_len: u64,
    ) -> Result<Self, ArenaError> {
        let map = memmap2::MmapOptions::new()
            .len(map_len(layout.total_size, file_len, page) as usize)
            .map_raw(&fd)
            .map_err(|e| ArenaError::io("mapping the arena", e))?;
        let base = NonNull::new(map.as_mut_ptr()).ok_or_else(|| ArenaError::Config("mmap returned null".into()))?;
        Ok(Arena {
            base,
            header,
            layout,
            backing: Backing::Map { _map: map, fd },
            unlink,
            name,
            page_size: page,
            huge_page_note: None,
            #[cfg(loom)]
            witness: Box::new([]),
            #[cfg(loom)]
            slot_words: Box::new([]),
        })
    }

    fn check_ready(&self) -> Result<(), ArenaError> {
        // Acquire: pairs with the Release store of READY at the end of `initialize`, so
        // every structure the creator built is visible.
        if self.header_atomics().state.load(Ordering::Acquire) != STATE_READY {
            return Err(ArenaError::NotReady);
        }
        Ok(())
    }

    /// Builds every structure in place, fills the free stack, then publishes the header.
    fn initialize(&self) {
        let l = &self.layout;
        // SAFETY: for the header write and each `init_region` call: the region lies inside
        // the mapping (computed by the layout), is aligned for T (128-byte region alignment,
        // T's alignment is at most 128), and no other process can see the arena before
        // `state` is READY.
        unsafe {
            std::ptr::write(
                self.base.as_ptr().cast::<ArenaHeader>(),
                ArenaHeader {
                    fixed: self.header,
                    state: CachePadded::new(AtomicU32::new(0)),
                    generation: CachePadded::new(AtomicU64::new(0)),
                    free_stack: CachePadded::new(StackHead::new()),
                },
            );
            self.init_region::<SegmentControl>(RegionKind::Control, l.config.segment_count);
            self.init_region::<ChannelBlock>(RegionKind::Channels, l.config.max_channels);
            self.init_region::<AtomicU64>(
                RegionKind::RingSlots,
                (RINGS_PER_CHANNEL * u64::from(l.config.max_channels) * u64::from(l.config.ring_capacity)) as u32,
            );
            self.init_region::<PartitionEntry>(RegionKind::Partitions, l.config.max_partitions);
            self.init_region::<GateBlock>(RegionKind::Gates, l.config.max_gates);
            self.init_region::<AtomicU64>(
                RegionKind::GateBitmaps,
                l.config.max_gates * (l.config.max_channels_per_gate / 64),
            );
            self.init_region::<WorkerRecord>(RegionKind::Workers, l.config.max_workers);
            self.init_region::<TaskMetrics>(RegionKind::Metrics, l.config.max_tasks);
        }
        let stack = self.free_stack();
        for i in (0..l.config.segment_count).rev() {
            // Relaxed: not yet shared; published by the Release store of READY below.
            self.controls()[i as usize].owner.store(Owner::Free.pack(), Ordering::Relaxed);
            stack.push(i);
        }
        // Release: pairs with the Acquire load in `check_ready`; publishes every write above.
        self.header_atomics().state.store(STATE_READY, Ordering::Release);
    }

    /// # Safety
    /// The region must be sized for `n` values of `T` and not yet shared.
    unsafe fn init_region<T: Default>(&self, kind: RegionKind, n: u32) {
        let r = self.layout.region(kind);
        debug_assert!(r.len >= n as u64 * std::mem::size_of::<T>() as u64);
        // SAFETY: by the caller's contract and the layout, `offset` is inside the mapping.
        let p = unsafe { self.base.as_ptr().add(r.offset as usize) }.cast::<T>();
        for i in 0..n as usize {
            // SAFETY: element i is inside the region (n elements fit), aligned (regions
            // are 128-aligned and T's size is a multiple of its alignment).
            unsafe { std::ptr::write(p.add(i), T::default()) };
        }
    }

    /// # Safety
    /// `kind`'s region must hold `n` initialized values of `T` (true after `initialize`
    /// or a successful attach, given the layout was validated).
    unsafe fn region_slice<T>(&self, kind: RegionKind, n: u64) -> &[T] {
        let r = self.layout.region(kind);
        debug_assert!(r.len >= n * std::mem::size_of::<T>() as u64);
        // SAFETY: by the caller's contract; the slice lives as long as `self` (the mapping).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(r.offset as usize).cast::<T>(), n as usize) }
    }

    /// The arena-wide atomics of the header.
    pub fn header_atomics(&self) -> &ArenaHeader {
        // SAFETY: offset 0 holds an initialized ArenaHeader (built by `initialize` or
        // validated on attach); only its atomic fields are read through this reference,
        // the static part is read from our validated copy.
        unsafe { &*self.base.as_ptr().cast::<ArenaHeader>() }
    }

    /// The validated copy of the static header.
    pub fn static_header(&self) -> &StaticHeader {
        &self.header
    }

    /// The layout.
    pub fn layout(&self) -> &ArenaLayout {
        &self.layout
    }

    /// The configuration.
    pub fn config(&self) -> &ArenaConfig {
        &self.layout.config
    }

    /// Segment size in bytes.
    #[inline]
    pub fn segment_size(&self) -> u32 {
        self.layout.config.segment_size
    }

    /// Number of segments.
    #[inline]
    pub fn segment_count(&self) -> u32 {
        self.layout.config.segment_count
    }

    /// The name (named arenas) or the memfd label.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The size of the pages the arena's memory is made of: [`HUGE_PAGE`] on huge pages,
    /// else 4 KiB.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Why this arena is on 4 KiB pages though huge pages were asked for
    /// ([`HugePages::IfReserved`]); `None` when they were not asked for or are used.
    pub fn huge_page_note(&self) -> Option<&str> {
        self.huge_page_note.as_deref()
    }

    /// Keeps a named arena's file after this handle drops.
    pub fn keep(&mut self) {
        self.unlink = None;
    }

    /// The arena-wide free stack of segments.
    pub fn free_stack(&self) -> SegmentStack<'_> {
        SegmentStack::new(&self.header_atomics().free_stack, self.controls(), self.workers())
    }

    /// Every segment's control block.
    pub fn controls(&self) -> &[SegmentControl] {
        // SAFETY: initialized for `segment_count` control blocks (validated layout).
        unsafe { self.region_slice(RegionKind::Control, self.layout.config.segment_count.into()) }
    }

    /// A segment's control block, checking an index that came from shared memory.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] when `index` is out of range.
    pub fn control(&self, index: u32, place: impl FnOnce() -> String) -> Result<&SegmentControl> {
        self.controls().get(index as usize).ok_or_else(|| Error::ProtocolViolation {
            place: place(),
            detail: format!("segment index {index} is outside 0..{}", self.segment_count()),
        })
    }

    /// Every channel block.
    pub fn channels(&self) -> &[ChannelBlock] {
        // SAFETY: initialized for `max_channels` blocks.
        unsafe { self.region_slice(RegionKind::Channels, self.layout.config.max_channels.into()) }
    }

    /// The slots of one ring of channel `channel` (`ring_capacity` of them).
    ///
    /// # Panics
    /// If `channel` is out of range (callers check channel ids when they take them).
    pub fn ring_slots(&self, channel: u32, ring: RingKind) -> &[AtomicU64] {
        let c = &self.layout.config;
        assert!(channel < c.max_channels, "channel {channel} out of range");
        let cap = u64::from(c.ring_capacity);
        // SAFETY: initialized for RINGS_PER_CHANNEL * max_channels * capacity slots.
        let all: &[AtomicU64] =
            unsafe { self.region_slice(RegionKind::RingSlots, RINGS_PER_CHANNEL * u64::from(c.max_channels) * cap) };
        let start = ((u64::from(channel) * RINGS_PER_CHANNEL + ring as u64) * cap) as usize;
        &all[start..start + cap as usize]
    }

    /// The partition directory.
    pub fn partitions(&self) -> &[PartitionEntry] {
        // SAFETY: initialized for `max_partitions` entries.
        unsafe { self.region_slice(RegionKind::Partitions, self.layout.config.max_partitions.into()) }
    }

    /// Every gate block.
    pub fn gates(&self) -> &[GateBlock] {
        // SAFETY: initialized for `max_gates` blocks.
        unsafe { self.region_slice(RegionKind::Gates, self.layout.config.max_gates.into()) }
    }

    /// The channels-with-data bitmap of gate `gate` (`max_channels_per_gate / 64` words).
    ///
    /// # Panics
    /// If `gate` is out of range.
    pub fn gate_bitmap(&self, gate: u32) -> &[AtomicU64] {
        let c = &self.layout.config;
        assert!(gate < c.max_gates, "gate {gate} out of range");
        let words = u64::from(c.max_channels_per_gate / 64);
        // SAFETY: initialized for max_gates * words words.
        let all: &[AtomicU64] = unsafe { self.region_slice(RegionKind::GateBitmaps, u64::from(c.max_gates) * words) };
        let s = (u64::from(gate) * words) as usize;
        &all[s..s + words as usize]
    }

    /// Every worker liveness record.
    pub fn workers(&self) -> &[WorkerRecord] {
        // SAFETY: initialized for `max_workers` records.
        unsafe { self.region_slice(RegionKind::Workers, self.layout.config.max_workers.into()) }
    }

    /// Every task metrics block.
    pub fn task_metrics(&self) -> &[TaskMetrics] {
        // SAFETY: initialized for `max_tasks` blocks.
        unsafe { self.region_slice(RegionKind::Metrics, self.layout.config.max_tasks.into()) }
    }

    /// The start and length in bytes of the data region (every segment, contiguous, in
    /// index order: segment `i` starts at `i * segment_size`). For foreign-language
    /// bindings that copy into and out of segments themselves (the JNI side of `ffi/`
    /// wraps it as one direct `ByteBuffer`); dereferencing the pointer is the caller's
    /// business, under the segment protocols.
    pub fn data_region(&self) -> (*mut u8, u64) {
        let r = self.layout.region(RegionKind::Data);
        // SAFETY: the data region lies inside the mapping (validated layout).
        (unsafe { self.base.as_ptr().add(r.offset as usize) }, r.len)
    }

    /// Maps every page of the segment data into this process now, writable (Aeron's
    /// "pre-touch" of mapped memory): without it each 4 KiB page costs a page fault the
    /// first time this process touches it (and the first toucher of the file, the zeroing
    /// of the page). A process that moves a lot of data through a large arena soon after
    /// it maps it (a benchmark, a job that starts at full speed) pays those faults on its
    /// hot path; prefaulted, it pays them once, here. Every process that maps the arena
    /// has its own page tables, so each calls this itself. A heap arena is left alone.
    /// The memory of a memfd arena is committed by this call (the creator's counts against
    /// its memory limit).
    ///
    /// # Errors
    /// [`ArenaError::Io`] if the kernel refuses (`MADV_POPULATE_WRITE` needs Linux 5.14;
    /// a read-only mapping cannot be populated writable); the arena stays usable.
    pub fn prefault(&self) -> Result<(), ArenaError> {
        if matches!(self.backing, Backing::Heap { .. }) {
            return Ok(());
        }
        let r = self.layout.region(RegionKind::Data);
        let page = self.page_size.max(1);
        let start = r.offset / page * page;
        let end = (r.offset + r.len).div_ceil(page) * page;
        // SAFETY: `start..end` lies inside the mapping (the data region is inside it and
        // the mapping is a whole number of pages); MADV_POPULATE_WRITE faults the pages in
        // without changing a byte of them.
        let rc = unsafe {
            libc::madvise(
                self.base.as_ptr().add(start as usize).cast::<libc::c_void>(),
                (end - start) as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if rc != 0 {
            return Err(ArenaError::io(
                "prefaulting the arena (madvise MADV_POPULATE_WRITE)",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Pointer to byte `offset` of segment `index` (dereferencing it is the caller's
    /// business, under the segment protocols).
    #[inline]
    pub(crate) fn segment_ptr(&self, index: u32, offset: u32) -> *mut u8 {
        debug_assert!(index < self.segment_count());
        debug_assert!(offset <= self.segment_size());
        let data = self.layout.region(RegionKind::Data).offset;
        let at = data + u64::from(index) * u64::from(self.segment_size()) + u64::from(offset);
        // SAFETY: index < segment_count and offset <= segment_size keep `at` inside the data
        // region, which lies inside the mapping.
        unsafe { self.base.as_ptr().add(at as usize) }
    }

    /// The 4-byte word at `offset` of segment `index` as an atomic: the slot of a
    /// slot-framed record (the record stream's format, `BufferBuilder::write_slotted`),
    /// which its writer publishes with a Release store and its reader polls.
    ///
    /// # Panics
    /// If `index` or `offset` is out of range or `offset` is not a multiple of 4 (callers
    /// pass positions they validated against the segment size).
    #[inline]
    pub fn segment_word(&self, index: u32, offset: u32) -> &AtomicU32 {
        assert!(
            index < self.segment_count() && offset % 4 == 0 && u64::from(offset) + 4 <= u64::from(self.segment_size()),
            "segment word {index}:{offset} out of range"
        );
        #[cfg(not(loom))]
        // SAFETY: in bounds (checked above) of the data region, which lives as long as
        // `self`; 4-byte aligned (segments start on page boundaries and `offset` is a
        // multiple of 4). While a segment carries slot-framed records its slot words are
        // only accessed atomically; the segment changes hands (pool, descriptor ring,
        // recycling) only through Release/Acquire pairs, which order any plain access of
        // another use before or after.
        return unsafe { AtomicU32::from_ptr(self.segment_ptr(index, offset).cast()) };
        #[cfg(loom)]
        return &self.slot_words[(index as usize * self.segment_size() as usize + offset as usize) / 4];
    }

    /// Bytes `[offset, offset + len)` of segment `index`, for reading in place.
    ///
    /// # Safety
    /// The range must be inside the segment, and no process may write it for as long as
    /// the slice lives: the caller holds a reader's claim that the protocol published
    /// (acquired the writer position covering the range).
    #[inline]
    pub unsafe fn segment_bytes(&self, index: u32, offset: u32, len: u32) -> &[u8] {
        debug_assert!(u64::from(offset) + u64::from(len) <= u64::from(self.segment_size()));
        #[cfg(loom)]
        self.witness_range(index, offset, len, false);
        // SAFETY: by the caller's contract, in bounds and not written concurrently.
        unsafe { std::slice::from_raw_parts(self.segment_ptr(index, offset), len as usize) }
    }

    /// Bytes `[offset, offset + len)` of segment `index`, for writing.
    ///
    /// # Safety
    /// The range must be inside the segment, and the caller must be the segment's only
    /// writer with no reader of this range for as long as the slice lives (a BufferBuilder
    /// writing above its published position).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn segment_bytes_mut(&self, index: u32, offset: u32, len: u32) -> &mut [u8] {
        debug_assert!(u64::from(offset) + u64::from(len) <= u64::from(self.segment_size()));
        #[cfg(loom)]
        self.witness_range(index, offset, len, true);
        // SAFETY: by the caller's contract, in bounds and exclusively ours.
        unsafe { std::slice::from_raw_parts_mut(self.segment_ptr(index, offset), len as usize) }
    }

    #[cfg(loom)]
    fn witness_range(&self, index: u32, offset: u32, len: u32, write: bool) {
        let base = index as usize * self.segment_size() as usize + offset as usize;
        for cell in &self.witness[base..base + len as usize] {
            if write {
                cell.with_mut(|_| ());
            } else {
                cell.with(|_| ());
            }
        }
    }

    /// The fd of a mapped arena.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.backing {
            Backing::Map { fd, .. } => Some(fd.as_fd()),
            Backing::Heap { .. } => None,
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        self.fd().map(|f| f.as_raw_fd())
    }

    /// Prepares `cmd` so the child inherits this arena's fd and finds it through
    /// [`ARENA_FD_ENV`] (then calls [`Arena::attach_inherited`]).
    ///
    /// # Errors
    /// [`ArenaError::Config`] for a heap arena.
    pub fn inherit_fd_into(&self, cmd: &mut std::process::Command) -> Result<(), ArenaError> {
        use std::os::unix::process::CommandExt;
        let raw = self.raw_fd().ok_or_else(|| ArenaError::Config("a heap arena cannot be shared".into()))?;
        cmd.env(ARENA_FD_ENV, raw.to_string());
        // SAFETY: the closure only calls fcntl, which is async-signal-safe, on an fd number
        // that is open in the parent and therefore in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                let flags = libc::fcntl(raw, libc::F_GETFD);
                if flags < 0 || libc::fcntl(raw, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if let Some(p) = self.unlink.take() {
            let _ = std::fs::remove_file(p);
        }
        if let Backing::Heap { layout } = self.backing {
            // SAFETY: allocated in `heap` with exactly this layout, and no reference into it
            // outlives `self`. Under loom the structures hold loom objects whose drop must
            // run; elsewhere they are plain atomics with no drop glue, and the witness cells
            // are a separate allocation.
            unsafe {
                #[cfg(loom)]
                self.drop_structures();
                std::alloc::dealloc(self.base.as_ptr(), layout);
            }
        }
    }
}

#[cfg(loom)]
impl Arena {
    unsafe fn drop_structures(&self) {
        // SAFETY: called once from Drop, after which nothing reads the structures.
        unsafe {
            std::ptr::drop_in_place(self.base.as_ptr().cast::<ArenaHeader>());
            for c in self.channels() {
                std::ptr::drop_in_place(c as *const ChannelBlock as *mut ChannelBlock);
            }
            for g in self.gates() {
                std::ptr::drop_in_place(g as *const GateBlock as *mut GateBlock);
            }
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn huge_page_choices_parse_and_unknown_ones_are_refused() {
        assert_eq!(HugePages::parse(""), Some(HugePages::Off));
        assert_eq!(HugePages::parse("off"), Some(HugePages::Off));
        assert_eq!(HugePages::parse("1"), Some(HugePages::IfReserved));
        assert_eq!(HugePages::parse(" If-Reserved "), Some(HugePages::IfReserved));
        assert_eq!(HugePages::parse("required"), Some(HugePages::Required));
        assert_eq!(HugePages::parse("2MB"), None);
    }

    #[test]
    fn free_huge_pages_are_free_less_reserved_and_only_of_2_mib() {
        let info = "MemTotal: 1 kB\nHugePages_Total:      64\nHugePages_Free:       60\nHugePages_Rsvd:        8\nHugePages_Surp: 0\nHugepagesize:       2048 kB\n";
        assert_eq!(free_huge_pages(info), Ok(52));
        let gig = info.replace("2048 kB", "1048576 kB");
        assert!(free_huge_pages(&gig).unwrap_err().contains("1048576 kB"));
        assert!(free_huge_pages("MemTotal: 1 kB\n").is_err());
    }

    /// Pages of the data region resident in memory, by `mincore`.
    fn resident_data_pages(a: &Arena) -> usize {
        let (p, len) = a.data_region();
        let page = PAGE as usize;
        let start = p as usize / page * page;
        let pages = (p as usize + len as usize).div_ceil(page) - start / page;
        let mut v = vec![0u8; pages];
        // SAFETY: the range lies inside the arena's mapping; `v` has one byte per page.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, pages * page, v.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        v.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn prefault_makes_every_data_page_resident() {
        let cfg = ArenaConfig { segment_size: 4096, segment_count: 64, ..ArenaConfig::default() };
        let a = Arena::create_memfd_with(&cfg, "prefault-test", HugePages::Off).unwrap();
        assert!(resident_data_pages(&a) < 64, "a fresh memfd arena's segments are not allocated yet");
        a.prefault().unwrap();
        assert!(resident_data_pages(&a) >= 64, "every segment page is resident after prefault");
        // A heap arena is left alone (and says so by succeeding).
        Arena::heap(&cfg).unwrap().prefault().unwrap();
    }

    #[test]
    fn whole_pages_are_mapped_where_the_file_has_them() {
        let mib = 1024 * 1024;
        assert_eq!(map_len(3 * mib, 4 * mib, HUGE_PAGE), 4 * mib);
        // A file shorter than the whole pages (a 4 KiB arena file) maps the layout only.
        assert_eq!(map_len(3 * mib, 3 * mib, HUGE_PAGE), 3 * mib);
        assert_eq!(map_len(3 * mib, 3 * mib, PAGE), 3 * mib);
    }

    /// A stat line of command `comm` (raw bytes) whose start time is `start`.
    fn stat_line(comm: &[u8], start: u64) -> Vec<u8> {
        let mut v = b"4242 (".to_vec();
        v.extend_from_slice(comm);
        v.extend_from_slice(b") S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 ");
        v.extend_from_slice(format!("{start} 1000 200 18446744073709551615 1 1 0 0 0 0 0\n").as_bytes());
        v
    }

    #[test]
    fn stat_lines_parse_whatever_the_command_name_holds() {
        assert_eq!(parse_proc_stat(&stat_line(b"java", 777)), Some((777, b'S')));
        assert_eq!(parse_proc_stat(&stat_line(b"a b  c", 778)), Some((778, b'S')));
        assert_eq!(parse_proc_stat(&stat_line(b"x) (y))", 779)), Some((779, b'S')));
        // Cut at 15 bytes in the middle of a multibyte char: not UTF-8 (read_to_string
        // refused it, and the process read as dead).
        let mut comm = "abcdefghijklm".as_bytes().to_vec();
        comm.extend_from_slice(&"\u{e9}".as_bytes()[..1]);
        assert_eq!(parse_proc_stat(&stat_line(&comm, 780)), Some((780, b'S')));
        // A multibyte char right after the ')' (slicing a str 2 bytes on panicked).
        assert_eq!(parse_proc_stat("1 (x)\u{e9}\u{e9} 1 2".as_bytes()), None);
        let mut zombie = stat_line(b"z", 781);
        let at = zombie.iter().position(|&b| b == b')').unwrap() + 2;
        zombie[at] = b'Z';
        assert_eq!(parse_proc_stat(&zombie), Some((781, b'Z')));
    }

    #[test]
    fn stat_lines_that_are_not_well_formed_parse_to_none() {
        let whole = stat_line(b"java", 777);
        // Every truncation: nothing panics, and none that cuts before field 22 parses.
        let start22 = whole.len() - b"777 1000 200 18446744073709551615 1 1 0 0 0 0 0\n".len();
        for n in 0..whole.len() {
            let r = parse_proc_stat(&whole[..n]);
            if n <= start22 {
                assert_eq!(r, None, "{n} bytes");
            }
        }
        assert_eq!(parse_proc_stat(b""), None);
        assert_eq!(parse_proc_stat(b"1 (x)"), None);
        assert_eq!(parse_proc_stat(b")"), None);
        assert_eq!(parse_proc_stat(b"1 (x) SS 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"), None);
        assert_eq!(parse_proc_stat(b"1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5 20"), None);
        assert_eq!(parse_proc_stat(b"1 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 \xff 20"), None);
    }

    #[test]
    fn this_process_has_a_start_time_and_a_missing_one_is_absent() {
        assert!(matches!(proc_stat(std::process::id()), ProcStat::Found { ended: false, .. }));
        // Above the kernel's pid limit (2^22): never a process.
        assert_eq!(proc_stat(1 << 23), ProcStat::Absent);
    }
}
