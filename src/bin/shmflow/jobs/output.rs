//! The `--output` file of the built-in jobs: written whole or not at all.

use shmflow::{ConfigError, Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A job's output file, checked and created before the job runs and replaced atomically
/// when it is complete. Lines go to a temp file `<output>.tmp-<pid>` next to the output
/// (following a symlink to its target), which [`OutputFile::write_lines`] renames over the
/// output; dropped before that, the temp file is removed, and an existing output is left as
/// it was. An output that exists and is not a regular file (`/dev/null`, a FIFO, a
/// terminal) is written in place, opened here.
#[derive(Debug)]
pub struct OutputFile {
    /// The path as given, for messages.
    path: PathBuf,
    /// The file renamed to `target` at the end; `None` when writing in place or once renamed.
    tmp: Option<PathBuf>,
    /// What the temp file replaces.
    target: PathBuf,
    file: std::fs::File,
}

/// Which of this process's stdout (1) or stderr (2) is the file `m`, if one is.
fn std_stream(m: &std::fs::Metadata) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    [(1, "/proc/self/fd/1"), (2, "/proc/self/fd/2")]
        .into_iter()
        .find(|(_, p)| std::fs::metadata(p).is_ok_and(|s| s.dev() == m.dev() && s.ino() == m.ino()))
        .map(|(fd, _)| fd)
}

/// Clears `O_NONBLOCK` on `file`.
fn set_blocking(file: &std::fs::File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = OFlag::from_bits_truncate(fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The absolute path of `path`, a file that does not exist yet: its directory resolved
/// (symlinks and `..` too), joined with its name.
fn absolute_new(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(std::fs::canonicalize(dir)?.join(name))
}

/// Refuses an `output` that is the file `input` (the same device and inode, after
/// following symlinks, so a link to the input or a hard link of it too): replacing it would
/// destroy the input the job just read.
///
/// # Errors
/// [`ConfigError::Conflict`] for `--output`, naming both paths.
pub fn refuse_output_over_input(input: &Path, output: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (Ok(i), Ok(o)) = (std::fs::metadata(input), std::fs::metadata(output)) else {
        return Ok(()); // A new output, or an input whose problem is reported elsewhere.
    };
    // Devices (`--output /dev/null`) are written in place, never replaced.
    if i.dev() == o.dev() && i.ino() == o.ino() && i.is_file() {
        return Err(ConfigError::Conflict {
            what: "--output",
            detail: format!(
                "{} is the input file {} (writing the output would replace the input): choose another --output",
                output.display(),
                input.display()
            ),
        }
        .into());
    }
    Ok(())
}

impl OutputFile {
    /// Checks `path` and creates the temp file: fails at once if `path` is a directory,
    /// its directory does not exist or cannot be written.
    ///
    /// # Errors
    /// [`ConfigError::Conflict`] for `--output`, naming `path` and the problem.
    pub fn create(path: &Path) -> Result<Self> {
        use std::os::fd::AsFd;
        let bad = |d: String| Error::from(ConfigError::Conflict { what: "--output", detail: d });
        let in_place = |path: &Path| -> Result<Self> {
            // Opened without blocking (a FIFO with no reader yet must not hang us here),
            // then switched back to blocking writes.
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(
                |e| match e.raw_os_error() {
                    Some(libc::ENXIO) => bad(format!("{} is a FIFO that nothing reads yet", path.display())),
                    _ => bad(format!("{}: {e}", path.display())),
                },
            )?;
            set_blocking(&file).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            Ok(Self { path: path.to_path_buf(), tmp: None, target: path.to_path_buf(), file })
        };
        let existing = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return Err(bad(format!("{} is a directory", path.display()))),
            // A device, FIFO or socket is written in place.
            Ok(m) if !m.is_file() => return in_place(path),
            // So is our own stdout or stderr (`--output /dev/stdout >> log`): renaming over
            // it would unlink the file the shell opened.
            Ok(m) if std_stream(&m).is_some() => {
                // Written through our own descriptor, at its offset (`>>` appends).
                let fd = match std_stream(&m) {
                    Some(1) => std::io::stdout().as_fd().try_clone_to_owned(),
                    _ => std::io::stderr().as_fd().try_clone_to_owned(),
                }
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                let file = std::fs::File::from(fd);
                return Ok(Self { path: path.to_path_buf(), tmp: None, target: path.to_path_buf(), file });
            }
            Ok(_) if path.starts_with("/dev") || path.starts_with("/proc") => return in_place(path),
            Ok(m) if m.permissions().readonly() => {
                return Err(bad(format!("{} is read-only", path.display())));
            }
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    return Err(bad(format!("{} is a symbolic link to nothing", path.display())));
                }
                None
            }
            Err(e) => return Err(bad(format!("{}: {e}", path.display()))),
        };
        // A symlink is replaced by the file it points to, not by a regular file of its own;
        // a new output is named by its directory's absolute path, so that the temp file's
        // path (noted in the job directory for `shmflow clean`) does not depend on the cwd.
        let target = match existing {
            Some(_) => std::fs::canonicalize(path).map_err(|e| bad(format!("{}: {e}", path.display())))?,
            None => absolute_new(path).map_err(|e| bad(format!("{}: {e}", path.display())))?,
        };
        let Some(name) = target.file_name() else {
            return Err(bad(format!("{} names no file", path.display())));
        };
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        // A leftover temp file of a killed run with our pid is ours to replace, but never
        // through a link someone planted there: it is removed, then created anew.
        if std::fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_file() || m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&tmp);
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| bad(format!("{}: cannot create {}: {e}", path.display(), tmp.display())))?;
        let this = Self { path: path.to_path_buf(), tmp: Some(tmp), target, file };
        if let Some(m) = existing {
            // The replacement keeps the mode of the file it replaces (best effort).
            let _ = this.file.set_permissions(m.permissions());
        }
        Ok(this)
    }

    /// The temp file written and renamed over the output at the end (`<output>.tmp-<pid>`),
    /// if the output is not written in place.
    pub fn temp_path(&self) -> Option<&Path> {
        self.tmp.as_deref()
    }

    /// Writes `lines`, each followed by a newline, and renames the temp file over the
    /// output.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file (a full disk, say); the temp file is removed and the
    /// output left as it was.
    pub fn write_lines(mut self, lines: &[Vec<u8>]) -> Result<()> {
        let tmp = self.tmp.clone();
        let shown = tmp.as_deref().unwrap_or(&self.target).display().to_string();
        let failed = |e| Error::Io {
            op: if tmp.is_some() {
                format!("writing {shown} (--output {} is left as it was)", self.path.display())
            } else {
                format!("writing {shown}")
            },
            source: e,
        };
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &self.file);
        for l in lines {
            w.write_all(l).and_then(|_| w.write_all(b"\n")).map_err(failed)?;
        }
        w.flush().map_err(failed)?;
        drop(w);
        if let Some(t) = &tmp {
            // Durable before it replaces the old output; also surfaces late write errors.
            self.file.sync_all().map_err(failed)?;
            std::fs::rename(t, &self.target).map_err(|e| Error::Io {
                op: format!("renaming {} to {}", t.display(), self.target.display()),
                source: e,
            })?;
            self.tmp = None;
        }
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(t) = self.tmp.take() {
            let _ = std::fs::remove_file(t);
        }
    }
}

/// The part files (`part-*`) under `dir`, sorted by name.
///
/// # Errors
/// I/O errors listing `dir`.
pub fn part_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Io { op: "listing part files".to_string(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("part-")))
        .collect();
    parts.sort();
    Ok(parts)
}

/// The word of a `word<TAB>...` line (the whole line if it has no tab).
fn word_of(line: &[u8]) -> &[u8] {
    line.split(|&c| c == b'\t').next().unwrap_or(line)
}

/// Merges the part files under `dir` into their lines. With an `output`, the lines are
/// sorted by the word's bytes (stable, so a word's window results keep their order) and
/// written to it; without one they stay in part-file order (what the caller counts or
/// selects needs no order; see [`most_frequent`]). Returns the lines.
///
/// # Errors
/// I/O errors; on a failure `output`'s temp file is removed (see [`OutputFile`]).
pub fn merge_parts(dir: &Path, output: Option<OutputFile>) -> Result<Vec<Vec<u8>>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for p in part_files(dir)? {
        let data = std::fs::read(&p).map_err(|e| Error::Io { op: "reading a part file".to_string(), source: e })?;
        lines.extend(data.split(|&c| c == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    if let Some(out) = output {
        lines.sort_by(|a, b| word_of(a).cmp(word_of(b)));
        out.write_lines(&lines)?;
    }
    Ok(lines)
}

/// The `n` lines `word<TAB>count` with the highest counts, highest first, ties by word
/// (as a stable sort by count of the lines sorted by word would give), without sorting
/// them all: a selection in O(lines), then a sort of `n`. Lines without a count are
/// skipped.
pub fn most_frequent(lines: &[Vec<u8>], n: usize, count_of: impl Fn(&[u8]) -> Option<u64>) -> Vec<&[u8]> {
    let mut v: Vec<(std::cmp::Reverse<u64>, &[u8], &[u8])> =
        lines.iter().filter_map(|l| Some((std::cmp::Reverse(count_of(l)?), word_of(l), l.as_slice()))).collect();
    if n == 0 {
        return Vec::new();
    }
    if v.len() > n {
        v.select_nth_unstable(n - 1);
        v.truncate(n);
    }
    v.sort_unstable();
    v.into_iter().map(|t| t.2).collect()
}
