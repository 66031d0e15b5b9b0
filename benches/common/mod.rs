//! Plumbing shared by the benches: child processes that die with the bench and are killed
//! and reaped by a guard, fds passed down to a re-executed child, CPU pinning, the machine
//! description and the `shmflow` binary of this build.
//!
//! Each bench is its own crate and uses only some of these, hence `dead_code` is allowed
//! here.

#![allow(dead_code)]

pub mod args;

use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The error type of the helpers here (converts into a bench's own boxed error with `?`).
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The exit code of a bench process (parent or re-executed child) that ran as `who`: on an
/// error, prints it to stderr.
pub fn exit_code(who: &str, result: Res<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{who}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `shmflow` of this build: cargo names it for benches; else it sits in the parent of
/// the directory of this executable (`target/<profile>/deps/..`).
pub fn shmflow_exe() -> Res<PathBuf> {
    if let Some(p) = option_env!("CARGO_BIN_EXE_shmflow") {
        let p = PathBuf::from(p);
        if p.exists() {
            return Ok(p);
        }
    }
    let me = std::env::current_exe()?;
    let p = me.parent().and_then(|d| d.parent()).ok_or("no parent directory of the bench executable")?.join("shmflow");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} not found: build it first (cargo build --release)", p.display()).into())
    }
}

/// The variable `name`, or an error naming it.
pub fn env_var(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

/// Makes the child of `cmd` die (SIGKILL) with this process (PR_SET_PDEATHSIG).
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which
    // is async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Lets the child inherit `fds` (clears FD_CLOEXEC in the child, as
/// `Arena::inherit_fd_into` does) and names them, comma-separated, in the variable `env`.
pub fn pass_fds(cmd: &mut Command, env: &str, fds: &[RawFd]) {
    let list: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
    cmd.env(env, list.join(","));
    let fds = fds.to_vec();
    // SAFETY: the closure runs in the forked child before exec; it only calls fcntl, which
    // is async-signal-safe, on fd numbers open in the parent (hence in the child), and it
    // allocates nothing (it iterates a Vec built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Takes ownership of the `n` fds the parent passed down in the variable `env` (see
/// [`pass_fds`]).
pub fn inherited_fds(env: &str, n: usize) -> Res<Vec<OwnedFd>> {
    let list = env_var(env)?;
    let raws = list.split(',').map(str::parse).collect::<Result<Vec<RawFd>, _>>()?;
    if raws.len() != n {
        return Err(format!("{env}={list}: expected {n} fds").into());
    }
    let mut fds = Vec::with_capacity(n);
    for (i, &raw) in raws.iter().enumerate() {
        // SAFETY: fcntl(F_GETFD) on any number is harmless; it fails for a closed fd.
        if raw < 0 || raws[..i].contains(&raw) || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
            return Err(format!("{env}={list}: {raw} is not a distinct open fd").into());
        }
        // SAFETY: the fd is open, was passed down for this process to own, and appears
        // once in the list, so nothing else here owns it.
        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    Ok(fds)
}

/// Accepts one connection, giving up after `timeout` (a child `who` that died before
/// connecting must not hang the bench).
pub fn accept_within(listener: &TcpListener, timeout: Duration, who: &str) -> Res<TcpStream> {
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    return Err(format!("the {who} did not connect within {timeout:?}").into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Owns a child process (`who`, e.g. "producer", of the bench `bench`). A watchdog thread
/// kills it after `deadline`; dropping the guard (on every path, errors and panics
/// included) kills and reaps it.
pub struct ChildGuard {
    pub child: Child,
    watchdog: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    who: &'static str,
}

impl ChildGuard {
    /// Spawns `cmd` and its watchdog.
    pub fn spawn(cmd: &mut Command, bench: &'static str, who: &'static str, deadline: Duration) -> Res<Self> {
        let child = cmd.spawn()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as libc::pid_t);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(deadline) {
                eprintln!("{bench}: a {who} outlived {deadline:?}; killing it");
                // The pid is still the child's: it is reaped only after this thread is joined.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
        Ok(Self { child, watchdog: Some((stop, thread)), who })
    }

    /// Stops and joins the watchdog; must run before the child is reaped (pid reuse).
    fn stop_watchdog(&mut self) {
        if let Some((stop, thread)) = self.watchdog.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }

    /// Waits (at most `timeout`) for the child to exit; an error unless it exited
    /// successfully.
    pub fn finish(&mut self, timeout: Duration) -> Res<()> {
        self.stop_watchdog();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() { Ok(()) } else { Err(format!("the {} {status}", self.who).into()) };
            }
            if start.elapsed() > timeout {
                return Err(format!("the {} did not exit within {timeout:?}", self.who).into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop_watchdog();
        // Both are no-ops for a child already reaped by `finish` (std remembers its status).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spins with PAUSE until `ready()` holds; fails ("no `what` within ...") after `timeout`.
/// The clock is read only every 1024 spins, so the loop is as tight as the hardware allows.
#[inline]
pub fn spin_until(mut ready: impl FnMut() -> bool, what: &str, timeout: Duration) -> Res<()> {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    while !ready() {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % 1024 == 0 && since.get_or_insert_with(Instant::now).elapsed() > timeout {
            return Err(format!("no {what} within {timeout:?}").into());
        }
    }
    Ok(())
}

/// The first two CPUs this process may run on, if there are two.
pub fn cpu_pair() -> Option<(usize, usize)> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed; pid 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return None;
    }
    let mut cpus = (0..libc::CPU_SETSIZE as usize).filter(|&c| {
        // SAFETY: `c` is below CPU_SETSIZE, the capacity of the set.
        unsafe { libc::CPU_ISSET(c, &set) }
    });
    Some((cpus.next()?, cpus.next()?))
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn pin_to(cpu: usize) -> Res<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(format!("CPU {cpu} is out of range").into());
    }
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(format!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A child process driven by lines: commands on its stdin, status lines from its stdout
/// (read by a thread), watched by a [`ChildGuard`]. The producer side of the
/// cross-process benchmarks.
pub struct Producer {
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// The guard (and the child in it).
    pub guard: ChildGuard,
    wait: Duration,
    poll: Duration,
    /// What the child is called in messages ("producer" unless spawned with
    /// [`Producer::spawn_as`]).
    who: &'static str,
}

impl Producer {
    /// Spawns `cmd` (stdin and stdout piped) under a guard with `deadline`; waits for lines
    /// at most `wait`, checking the child every `poll`.
    pub fn spawn(
        cmd: &mut Command,
        bench: &'static str,
        deadline: Duration,
        wait: Duration,
        poll: Duration,
    ) -> Res<Self> {
        Self::spawn_as(cmd, bench, "producer", deadline, wait, poll)
    }

    /// As [`Producer::spawn`], for a line-driven child called `who` in messages (e.g. a
    /// consumer process).
    pub fn spawn_as(
        cmd: &mut Command,
        bench: &'static str,
        who: &'static str,
        deadline: Duration,
        wait: Duration,
        poll: Duration,
    ) -> Res<Self> {
        use std::io::BufRead;
        let mut guard = ChildGuard::spawn(cmd, bench, who, deadline)?;
        let stdin = guard.child.stdin.take().ok_or("no stdin pipe")?;
        let stdout = guard.child.stdout.take().ok_or("no stdout pipe")?;
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Self { stdin: Some(stdin), lines, reader: Some(reader), guard, wait, poll, who })
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> Res<()> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        stdin.write_all(format!("{line}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits (bounded) for a line that starts with `prefix`; returns the rest.
    pub fn expect_line(&mut self, prefix: &str) -> Res<String> {
        let deadline = Instant::now() + self.wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(self.poll)) {
                Ok(l) => {
                    return l
                        .strip_prefix(prefix)
                        .map(|rest| rest.trim().to_string())
                        .ok_or_else(|| format!("expected {prefix:?} from the {}, got {l:?}", self.who).into())
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.check_alive()?;
                    if left.is_zero() {
                        return Err(format!("no {prefix:?} from the {} within {:?}", self.who, self.wait).into());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.check_alive()?;
                    return Err(format!("the {} closed its output before {prefix:?}", self.who).into());
                }
            }
        }
    }

    /// Fails if the producer exited.
    pub fn check_alive(&mut self) -> Res<()> {
        match self.guard.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("the {} exited early: {status}", self.who).into()),
        }
    }

    /// Closes its stdin and waits (bounded) for a successful exit.
    pub fn close_and_wait(&mut self) -> Res<()> {
        drop(self.stdin.take());
        self.guard.finish(self.wait)?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        Ok(())
    }
}

/// A type that may live in a [`Shared`] block: `#[repr(C)]`, made only of atomics (and
/// padding around them), so that all-zero bytes are a valid value and other processes may
/// read and write it concurrently.
///
/// # Safety
/// The implementor must be valid for all-zero bytes, have an alignment of at most 4096,
/// and be safe to access concurrently from several processes through `&Self` (atomics
/// only: no pointers, no non-atomic data written after creation).
pub unsafe trait SharedBlock: Sync {}

/// A block of atomics of type `T` in its own memfd, mapped shared: how a bench's processes
/// exchange counters, commands and timestamps outside the arena. Created zeroed by the
/// parent, inherited by children (see [`Shared::inherit_into`], [`Shared::attach_inherited`]).
pub struct Shared<T: SharedBlock> {
    map: memmap2::MmapMut,
    fd: OwnedFd,
    _block: std::marker::PhantomData<T>,
}

impl<T: SharedBlock> Shared<T> {
    /// A new zeroed block in a memfd named `name` (close-on-exec; nothing in /dev/shm).
    pub fn create(name: &str) -> Res<Self> {
        let cname = std::ffi::CString::new(format!("shmflow-bench:{name}"))?;
        // SAFETY: `cname` is a valid NUL-terminated string; the flags are valid.
        let raw = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()).into());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        // A fresh memfd reads as zeroes: the block starts all-zero, a valid `T`.
        file.set_len(std::mem::size_of::<T>().max(1) as u64)?;
        Self::map(OwnedFd::from(file))
    }

    fn map(fd: OwnedFd) -> Res<Self> {
        if std::mem::align_of::<T>() > 4096 {
            return Err("a shared block must not need more than page alignment".into());
        }
        let file = std::fs::File::from(fd);
        let len = file.metadata()?.len();
        if len < std::mem::size_of::<T>() as u64 {
            return Err(format!("the shared block is {len} bytes, {} expected", std::mem::size_of::<T>()).into());
        }
        // SAFETY: the memfd is private to this bench's processes, which access the mapping
        // only through `T`'s atomics (the SharedBlock contract), so no reference to plain
        // bytes in it is ever invalidated by another process's writes.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        Ok(Self { map, fd: OwnedFd::from(file), _block: std::marker::PhantomData })
    }

    /// Lets the child of `cmd` inherit the block; it finds it through the variable `env`.
    pub fn inherit_into(&self, cmd: &mut Command, env: &str) {
        use std::os::fd::AsRawFd;
        pass_fds(cmd, env, &[self.fd.as_raw_fd()]);
    }

    /// The block the parent passed down in the variable `env`.
    pub fn attach_inherited(env: &str) -> Res<Self> {
        let fd = inherited_fds(env, 1)?.pop().ok_or("no fd")?;
        Self::map(fd)
    }
}

impl<T: SharedBlock> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mapping is page aligned (at least `T`'s alignment, checked in `map`),
        // at least `size_of::<T>()` bytes long (checked in `map`), starts all-zero (a valid
        // `T`), is accessed by every process only through `T`'s atomics (SharedBlock), and
        // lives as long as `self`, which the returned reference borrows.
        unsafe { &*(self.map.as_ptr() as *const T) }
    }
}

/// Peak resident set and CPU time (user + system) of a process or of its reaped children.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// ru_maxrss in KiB (for RUSAGE_CHILDREN: the largest reaped child).
    pub maxrss_kib: u64,
    /// ru_utime + ru_stime in nanoseconds.
    pub cpu_ns: u64,
}

/// getrusage(`who`): `libc::RUSAGE_SELF` (every thread of this process) or
/// `libc::RUSAGE_CHILDREN` (every child reaped so far, and their reaped descendants).
pub fn rusage(who: libc::c_int) -> Res<Usage> {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a writable rusage; `who` is passed through to the kernel, which
    // rejects an invalid one with EINVAL.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return Err(format!("getrusage: {}", std::io::Error::last_os_error()).into());
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    Ok(Usage { maxrss_kib: ru.ru_maxrss as u64, cpu_ns: ns(ru.ru_utime) + ns(ru.ru_stime) })
}

/// CPU time so far of every thread of live process `pid`, in nanoseconds, from
/// /proc/PID/task/*/schedstat (nanosecond resolution, unlike the tick counts of
/// /proc/PID/stat); `None` if the process is gone. Threads that already exited are not
/// counted.
pub fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
        total += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(total)
}

/// The machine's CPU time so far from the first line of /proc/stat, in clock ticks:
/// (busy, total), busy including time stolen by the hypervisor. Two looks give how many
/// CPUs were busy in between: `Δbusy / Δtotal x CPUs`.
pub fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some((busy, busy + idle))
}

/// The 1-minute load average, as /proc/loadavg says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------------
// The child side of a line-driven run (the parent's side is `Producer`)

/// Lines from stdin, read by a thread (EOF or a closed receiver ends it).
pub fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(l) = line else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Writes one line to stdout and flushes it (the parent reads line by line).
pub fn say(line: &str) -> Res<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Says `ready_line` (which starts with "ready"), waits (at most `go_within`) for "go",
/// and returns a flag that turns true when the next line ("stop"), EOF or `deadline`
/// comes: the parent decides the length.
pub fn ready_go_stop(
    cmds: mpsc::Receiver<String>,
    ready_line: &str,
    go_within: Duration,
    deadline: Duration,
) -> Res<std::sync::Arc<shmflow::sync::AtomicBool>> {
    say(ready_line)?;
    match cmds.recv_timeout(go_within) {
        Ok(l) if l == "go" => {}
        other => return Err(format!("expected go, got {other:?}").into()),
    }
    let stop = std::sync::Arc::new(shmflow::sync::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = cmds.recv_timeout(deadline);
        // Relaxed: a stop request, read between records.
        flag.store(true, shmflow::sync::Ordering::Relaxed);
    });
    Ok(stop)
}
