//! The built-in jobs (`shmflow run wordcount | window-wordcount | shuffle`), the text they
//! read, and single-threaded reference implementations the tests compare against.
//!
//! Words are split as Flink's WordCount example does: lower-cased, split on every byte
//! outside `[A-Za-z0-9_]` (so non-ASCII bytes separate words too), empty tokens dropped.

use super::{Collector, JobBuilder, JobGraph, KeyedStream, Source, SourceContext, TaskInfo};
use crate::error::{Error, Result};
use crate::partition::{ResultPartitionType, SelectorKind};
use crate::record::{FromRecord, Record};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Where the text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSource {
    /// The deterministic generated text: `lines` lines from `seed`.
    Generated {
        /// Number of lines.
        lines: u64,
        /// Seed.
        seed: u64,
    },
    /// A text file (UTF-8 expected; other bytes outside ASCII separate words).
    ///
    /// The file is memory-mapped while it is read: truncating it while a job reads it can
    /// kill the reading process with SIGBUS. A file whose length differs from `len` is an
    /// error rather than a silently different count.
    File {
        /// The file.
        path: PathBuf,
        /// The length the job expects: set by [`TextSource::validate`] (the coordinator's
        /// look at the file) and handed to the workers, so that every subtask splits the
        /// same text and one that finds the file grown or shrunk fails instead of losing
        /// or double counting lines. `None`: each reader takes the length it sees.
        len: Option<u64>,
    },
}

/// Average bytes per generated line (measured), to size the default text.
pub const GENERATED_BYTES_PER_LINE: u64 = 66;

/// Opens `path` for reading if it is a regular file. Checked before opening (opening a FIFO
/// waits for a writer) and again on the opened file, which is opened non-blocking so that a
/// path swapped for a FIFO in between cannot block either. Returns the file and its length.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |d: String| Error::Invalid { what: "--input", detail: d };
    let not_regular = || bad(format!("{} is not a regular file", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let meta = f.metadata().map_err(|e| bad(format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((f, meta.len()))
}

/// Maps the first `len` bytes of `f` (at least 1) read-only.
fn map_text(f: &std::fs::File, path: &Path, len: u64) -> Result<memmap2::Mmap> {
    let n = usize::try_from(len).map_err(|_| Error::Invalid {
        what: "--input",
        detail: format!("{} is too large to map ({len} bytes)", path.display()),
    })?;
    // SAFETY: the mapping is read-only and private to the caller; a concurrent truncation by
    // another program could fault (SIGBUS), which is the documented risk of reading a file
    // that is being rewritten (see `TextSource::File`).
    unsafe { memmap2::MmapOptions::new().len(n).map(f) }
        .map_err(|e| Error::Io { op: format!("mapping {}", path.display()), source: e })
}

impl TextSource {
    /// The default: about `mb` megabytes of generated text.
    pub fn generated_mb(mb: u64) -> Self {
        TextSource::Generated { lines: (mb.saturating_mul(1_000_000) / GENERATED_BYTES_PER_LINE).max(1), seed: 0x5eed }
    }

    /// A text file, its length taken when it is read (see [`TextSource::File`]).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        TextSource::File { path: path.into(), len: None }
    }

    /// Checks a file input before any worker starts: it is a readable regular file (a FIFO
    /// or a directory is refused without opening it). Records the file's length in `len`,
    /// which every subtask then insists on. Text that is not valid UTF-8 is read anyway
    /// (its bytes outside ASCII separate words, as the replacement characters of Flink's
    /// UTF-8 decoder would): the returned note says where the first bad byte is, for the
    /// caller to show.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the problem.
    pub fn validate(&mut self) -> Result<Option<String>> {
        let TextSource::File { path: p, len } = self else {
            return Ok(None);
        };
        let (f, n) = open_regular(p)?;
        *len = Some(n);
        if n == 0 {
            return Ok(None);
        }
        let map = map_text(&f, p, n)?;
        Ok(std::str::from_utf8(&map).err().map(|e| {
            format!(
                "{} is not valid UTF-8 (first bad byte at offset {}); bytes outside ASCII separate words",
                p.display(),
                e.valid_up_to()
            )
        }))
    }

    /// Calls `f` with every line of subtask `i`'s share of the text (shares of `p`).
    ///
    /// # Errors
    /// I/O errors reading the file; [`Error::Invalid`] if the file is not a regular file or
    /// its length is not the expected one (before or after reading the share: the file
    /// changed while the job ran).
    pub fn for_each_line(&self, i: u32, p: u32, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        match self {
            TextSource::Generated { lines, seed } => {
                let g = generator();
                let (from, to) = (lines * u64::from(i) / u64::from(p), lines * u64::from(i + 1) / u64::from(p));
                let mut buf = String::new();
                for l in from..to {
                    buf.clear();
                    g.line(*seed, l, &mut buf);
                    f(buf.as_bytes())?;
                }
                Ok(())
            }
            TextSource::File { path, len: expected } => {
                let changed = |now: u64, want: u64| Error::Invalid {
                    what: "--input",
                    detail: format!(
                        "{} changed while the job read it: {now} bytes now, {want} bytes when the job started",
                        path.display()
                    ),
                };
                let (file, len) = open_regular(path)?;
                if let Some(want) = *expected {
                    if len != want {
                        return Err(changed(len, want));
                    }
                }
                if len == 0 {
                    return Ok(());
                }
                let map = map_text(&file, path, len)?;
                // u128: `len * p` must not wrap for the largest files.
                let share = |k: u32| (u128::from(len) * u128::from(k) / u128::from(p)) as usize;
                let (a, b) = (share(i), share(i + 1));
                // A share starts after the first newline at or after its start (unless it is
                // the first) and ends with the line that crosses its end (an empty share of a
                // file shorter than `p` bytes ends at 0).
                let start = if a == 0 { 0 } else { line_start_at_or_after(&map, a - 1) };
                let end = match b {
                    0 => 0,
                    b if b >= map.len() => map.len(),
                    b => line_start_at_or_after(&map, b - 1),
                };
                for line in map[start.min(end)..end].split(|&c| c == b'\n') {
                    f(line)?;
                }
                let now =
                    file.metadata().map_err(|e| Error::Io { op: format!("stat {}", path.display()), source: e })?;
                if now.len() != len {
                    return Err(changed(now.len(), len));
                }
                Ok(())
            }
        }
    }
}

fn line_start_at_or_after(text: &[u8], at: usize) -> usize {
    match memchr_newline(&text[at..]) {
        Some(k) => at + k + 1,
        None => text.len(),
    }
}

fn memchr_newline(s: &[u8]) -> Option<usize> {
    s.iter().position(|&c| c == b'\n')
}

/// Splits `line` into lower-cased words of `[a-z0-9_]`, calling `f` with each, as Flink's
/// WordCount does (`toLowerCase()`, then split on `\W+`): besides ASCII, the two characters
/// whose lower case holds a word character count, KELVIN SIGN (lower case `k`) and LATIN
/// CAPITAL LETTER I WITH DOT ABOVE (lower case `i` and a combining dot, which ends the word).
pub fn tokenize(line: &[u8], buf: &mut String, f: &mut dyn FnMut(&str)) {
    buf.clear();
    let mut i = 0;
    while i < line.len() {
        let c = line[i];
        if is_word_byte(c) {
            buf.push(c.to_ascii_lowercase() as char);
            i += 1;
            continue;
        }
        let rest = &line[i..];
        if rest.starts_with(KELVIN_SIGN) {
            buf.push('k');
            i += KELVIN_SIGN.len();
            continue;
        }
        if rest.starts_with(CAPITAL_I_WITH_DOT) {
            buf.push('i');
            i += CAPITAL_I_WITH_DOT.len();
        } else {
            i += 1;
        }
        if !buf.is_empty() {
            f(buf);
            buf.clear();
        }
    }
    if !buf.is_empty() {
        f(buf);
        buf.clear();
    }
}

/// U+212A in UTF-8.
const KELVIN_SIGN: &[u8] = b"\xe2\x84\xaa";
/// U+0130 in UTF-8.
const CAPITAL_I_WITH_DOT: &[u8] = b"\xc4\xb0";

#[inline]
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The text generator: a fixed vocabulary drawn with a Zipf-like (s = 1.07) distribution,
/// capitalized sentence starts, punctuation, digits, and now and then non-ASCII words.
pub struct Generator {
    vocab: Vec<String>,
    cdf: Vec<u64>,
    /// `guide[k]`: the first word whose cumulative probability reaches `k << 48`, so a draw
    /// starts its search there (a constant-time lookup for all but the rarest words).
    guide: Vec<u32>,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const COMMON: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "that", "it", "was", "for", "on", "are", "as", "with", "his", "they",
    "at", "be", "this", "from", "have", "or", "by", "one", "had", "not", "but", "what", "all", "were", "when", "we",
    "there", "can", "an", "your", "which", "their", "said", "if", "do", "will", "each", "about", "how", "up", "out",
    "them", "then", "she", "many", "some", "so", "these", "would", "other", "into", "has", "more", "her", "two",
    "like", "him", "see", "time", "could", "no", "make", "than", "first", "been", "its", "who", "now", "people", "my",
    "made", "over", "did", "down", "only", "way", "find", "use", "may", "water", "long", "little", "very", "after",
    "words", "called", "just", "where", "most", "know", "stream", "flink", "shuffle",
];

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "en", "ar", "is", "on", "qu", "zel", "dra", "pho", "tri", "ul",
    "bes", "cor", "fin", "gal", "hex", "jun", "kri", "lum", "mor", "nix", "ost", "pra", "ren", "sul", "tem", "vex",
];

/// The shared generator (built once per process).
pub fn generator() -> &'static Generator {
    static G: OnceLock<Generator> = OnceLock::new();
    G.get_or_init(Generator::new)
}

impl Generator {
    fn new() -> Self {
        let n = 40_000usize;
        let mut vocab: Vec<String> = COMMON.iter().map(|s| s.to_string()).collect();
        let mut x = 42u64;
        let mut seen: std::collections::HashSet<String> = vocab.iter().cloned().collect();
        while vocab.len() < n {
            let k = 2 + (splitmix(&mut x) % 3) as usize;
            let mut w = String::new();
            for _ in 0..k {
                w.push_str(SYLLABLES[(splitmix(&mut x) % SYLLABLES.len() as u64) as usize]);
            }
            match splitmix(&mut x) % 200 {
                0 => w.push_str("_id"),
                1 => w.push_str(&format!("{}", splitmix(&mut x) % 100)),
                2 => w.push('é'),
                _ => {}
            }
            if seen.insert(w.clone()) {
                vocab.push(w);
            }
        }
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0f64;
        let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(1.07)).collect();
        let total: f64 = weights.iter().sum();
        for w in weights {
            acc += w / total;
            cdf.push((acc * u64::MAX as f64) as u64);
        }
        if let Some(l) = cdf.last_mut() {
            *l = u64::MAX;
        }
        let guide = (0..1u64 << 16).map(|k| cdf.partition_point(|&c| c < k << 48) as u32).collect();
        Self { vocab, cdf, guide }
    }

    fn draw(&self, r: u64) -> usize {
        let mut i = self.guide[(r >> 48) as usize] as usize;
        while i + 1 < self.cdf.len() && self.cdf[i] < r {
            i += 1;
        }
        i
    }

    /// Appends line number `l` of the text seeded by `seed` to `out`.
    pub fn line(&self, seed: u64, l: u64, out: &mut String) {
        let mut x = seed ^ l.wrapping_mul(0xd134_2543_de82_ef95);
        let words = 6 + splitmix(&mut x) % 13;
        for k in 0..words {
            let r = splitmix(&mut x);
            let idx = self.draw(r).min(self.vocab.len() - 1);
            let w = &self.vocab[idx];
            if k > 0 {
                out.push(' ');
            }
            if k == 0 {
                let mut cs = w.chars();
                if let Some(c) = cs.next() {
                    out.extend(c.to_uppercase());
                    out.push_str(cs.as_str());
                }
            } else {
                out.push_str(w);
            }
            match r % 23 {
                0 => out.push(','),
                1 => out.push_str("; "),
                2 if k + 1 == words => out.push('.'),
                3 => out.push_str(" -- "),
                _ => {}
            }
        }
    }
}

/// Counts words of `source` single-threaded: the reference the tests compare against.
///
/// # Errors
/// I/O errors reading the file.
pub fn reference_wordcount(source: &TextSource) -> Result<BTreeMap<String, u64>> {
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    let mut buf = String::new();
    source.for_each_line(0, 1, &mut |line| {
        tokenize(line, &mut buf, &mut |w| *m.entry(w.to_string()).or_default() += 1);
        Ok(())
    })?;
    Ok(m)
}

/// Flink's count windows on the counts of each word, all values 1: a tumbling window
/// (`slide == size`) fires `size` every `size` words; a sliding one fires `min(n, size)`
/// after every `slide` words (n = words seen). One line per firing, by word then in order.
pub fn reference_window_lines(counts: &BTreeMap<String, u64>, size: u64, slide: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (w, &c) in counts {
        let mut n = slide;
        while n <= c {
            let v = if slide == size { size } else { n.min(size) };
            out.push(format!("{w}\t{v}"));
            n += slide;
        }
    }
    out
}

fn part_path(dir: &Path, info: &TaskInfo) -> PathBuf {
    dir.join(format!("part-{:03}", info.subtask))
}

/// A sink writing `word<TAB>count` lines to a part file of its subtask.
struct PartSink {
    out: std::io::BufWriter<std::fs::File>,
}

impl Collector<(Word, u64)> for PartSink {
    fn collect(&mut self, (w, c): (Word, u64)) -> Result<()> {
        writeln!(self.out, "{w}\t{c}").map_err(|e| Error::Io { op: "writing a part file".into(), source: e })
    }
    fn finish(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::Io { op: "writing a part file".into(), source: e })
    }
}

fn part_sink(dir: Arc<PathBuf>) -> impl Fn(&TaskInfo) -> Result<PartSink> + Send + Sync {
    move |info| {
        let p = part_path(&dir, info);
        let f =
            std::fs::File::create(&p).map_err(|e| Error::Io { op: format!("creating {}", p.display()), source: e })?;
        Ok(PartSink { out: std::io::BufWriter::with_capacity(1 << 16, f) })
    }
}

/// A word of the WordCount jobs: the bytes of words up to [`Word::INLINE`] bytes are kept
/// inline (no allocation to make, copy or drop one: the common case of the per-record path),
/// longer ones on the heap. Derefs to `str`, hashes and compares as its `str`, and crosses an
/// exchange as a string field.
#[derive(Clone)]
pub struct Word(WordRepr);

#[derive(Clone)]
enum WordRepr {
    /// `len` bytes of `buf`, valid UTF-8 (copied from a `&str` whole).
    Inline {
        len: u8,
        buf: [u8; Word::INLINE],
    },
    Heap(Box<str>),
}

impl Word {
    /// The longest word kept inline.
    pub const INLINE: usize = 30;

    /// A word with the text of `s`.
    #[inline]
    pub fn new(s: &str) -> Self {
        if s.len() <= Self::INLINE {
            let mut buf = [0u8; Self::INLINE];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            Word(WordRepr::Inline { len: s.len() as u8, buf })
        } else {
            Word(WordRepr::Heap(s.into()))
        }
    }

    /// The word's text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            WordRepr::Inline { len, buf } => {
                let b = &buf[..usize::from(*len)];
                debug_assert!(std::str::from_utf8(b).is_ok());
                // SAFETY: an inline word's first `len` bytes are a whole `&str` copied in
                // `Word::new`, and nothing else writes them: valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            WordRepr::Heap(s) => s,
        }
    }
}

impl std::ops::Deref for Word {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Word {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Word {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for Word {}

impl std::hash::Hash for Word {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Word {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl crate::record::Field for Word {
    #[inline]
    fn field_len(&self) -> usize {
        self.as_str().field_len()
    }
    #[inline]
    fn write_field(&self, out: &mut [u8]) -> usize {
        self.as_str().write_field(out)
    }
}

impl<'a> crate::record::FromField<'a> for Word {
    #[inline]
    fn read_field(bytes: &'a [u8]) -> Result<(Self, usize)> {
        <&str>::read_field(bytes).map(|(s, n)| (Word::new(s), n))
    }
}

/// The text source of the WordCount jobs: tokenizes its share of the text and emits
/// `(word, 1)` straight into the chain after it.
struct WordSource(Arc<TextSource>);

impl Source<(Word, u64)> for WordSource {
    fn run<C: Collector<(Word, u64)>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
        let mut buf = String::new();
        // Input bytes read, reported every megabyte (the progress bar's percent).
        let mut unreported = 0u64;
        let r = self.0.for_each_line(ctx.info.subtask, ctx.info.parallelism, &mut |line| {
            unreported += line.len() as u64 + 1;
            if unreported >= 1 << 20 {
                ctx.read(unreported);
                unreported = 0;
            }
            let mut err = None;
            tokenize(line, &mut buf, &mut |w| {
                if err.is_none() {
                    if let Err(e) = out.collect((Word::new(w), 1)) {
                        err = Some(e);
                    }
                }
            });
            err.map_or(Ok(()), Err)
        });
        ctx.read(unreported);
        r
    }
}

fn word_key(t: &(Word, u64)) -> &str {
    t.0.as_str()
}

type WordKey = for<'a> fn(&'a (Word, u64)) -> &'a str;

fn text_stream(
    name: &str,
    source: TextSource,
    parallelism: u32,
    ptype: ResultPartitionType,
) -> KeyedStream<(Word, u64), str, WordKey> {
    JobBuilder::new(name, parallelism)
        .with_partition_type(ptype)
        .source_with("text source", WordSource(Arc::new(source)))
        .key_by(word_key as WordKey)
}

/// Flink's streaming WordCount in batch style: text source + tokenizer, key by word, sum,
/// one `word<TAB>count` line per word into part files under `dir`.
pub fn wordcount_job(source: TextSource, parallelism: u32, dir: PathBuf) -> JobGraph {
    wordcount_job_with(source, parallelism, dir, ResultPartitionType::PipelinedBounded)
}

/// [`wordcount_job`] with the exchange's partition type (pipelined or blocking).
pub fn wordcount_job_with(source: TextSource, parallelism: u32, dir: PathBuf, ptype: ResultPartitionType) -> JobGraph {
    text_stream("wordcount", source, parallelism, ptype)
        // Saturating: the counts arrive from other processes.
        .reduce("sum", |acc, v| acc.1 = acc.1.saturating_add(v.1))
        .sink("part files", part_sink(Arc::new(dir)))
}

/// Flink's WindowWordCount: key by word, `countWindow(size, slide)`, sum.
pub fn window_wordcount_job(source: TextSource, parallelism: u32, size: u64, slide: u64, dir: PathBuf) -> JobGraph {
    text_stream("window-wordcount", source, parallelism, ResultPartitionType::PipelinedBounded)
        .count_window("count window sum", size, slide, |w: &[(Word, u64)]| {
            // Saturating: the counts arrive from other processes.
            (w[0].0.clone(), w.iter().fold(0u64, |a, x| a.saturating_add(x.1)))
        })
        .sink("part files", part_sink(Arc::new(dir)))
}

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

impl OutputFile {
    /// Checks `path` and creates the temp file: fails at once if `path` is a directory,
    /// its directory does not exist or cannot be written.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming `path` and the problem.
    pub fn create(path: &Path) -> Result<Self> {
        use std::os::fd::AsFd;
        let bad = |d: String| Error::Invalid { what: "--output", detail: d };
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
        // A symlink is replaced by the file it points to, not by a regular file of its own.
        let target = if existing.is_some() { std::fs::canonicalize(path).ok() } else { None };
        let target = target.unwrap_or_else(|| path.to_path_buf());
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

/// Merges the part files under `dir` into `word<TAB>count` lines sorted by the word's bytes
/// (stable, so a word's window results keep their order), written to `output` if given.
/// Returns the lines.
///
/// # Errors
/// I/O errors; on a failure `output`'s temp file is removed (see [`OutputFile`]).
pub fn merge_parts(dir: &Path, output: Option<OutputFile>) -> Result<Vec<Vec<u8>>> {
    let io = |op: &str, e| Error::Io { op: op.to_string(), source: e };
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io("listing part files", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("part-")))
        .collect();
    parts.sort();
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for p in parts {
        let data = std::fs::read(&p).map_err(|e| io("reading a part file", e))?;
        lines.extend(data.split(|&c| c == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    lines.sort_by(|a, b| {
        let ka = a.split(|&c| c == b'\t').next().unwrap_or(a);
        let kb = b.split(|&c| c == b'\t').next().unwrap_or(b);
        ka.cmp(kb)
    });
    if let Some(out) = output {
        out.write_lines(&lines)?;
    }
    Ok(lines)
}

/// A synthetic record of the shuffle job: a sequence number and a payload derived from
/// it. Serializes in place without allocation; decoding checks every payload byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthetic {
    /// Sequence number (also the key).
    pub seq: u64,
    /// Payload bytes (at least 8).
    pub len: u32,
    /// Payload bytes that did not match the pattern (after decoding).
    pub bad: u32,
}

/// The payload pattern after the sequence number: byte `k` is `31 * seq + k` (mod 256), so
/// the payload is a run of the byte cycle 0, 1, .., 255 starting at `31 * seq`. Written and
/// checked by copying and comparing slices of [`CYCLE`] (memcpy and memcmp speed), not
/// byte by byte.
fn pattern_start(seq: u64) -> usize {
    usize::from((seq as u8).wrapping_mul(31))
}

/// Two rounds of the byte cycle: any 256 consecutive pattern bytes are one slice of it.
static CYCLE: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut i = 0;
    while i < 512 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// The pattern bytes of `seq` for `out` (the bytes after the sequence number).
#[inline]
fn write_pattern(seq: u64, out: &mut [u8]) {
    let s = pattern_start(seq);
    for chunk in out.chunks_mut(256) {
        chunk.copy_from_slice(&CYCLE[s..s + chunk.len()]);
    }
}

/// How many bytes of `payload` (the bytes after the sequence number) differ from `seq`'s
/// pattern: a slice comparison per 256 bytes, a count only for a chunk that differs.
#[inline]
fn pattern_mismatches(seq: u64, payload: &[u8]) -> u32 {
    let s = pattern_start(seq);
    let mut bad = 0u32;
    for chunk in payload.chunks(256) {
        let want = &CYCLE[s..s + chunk.len()];
        if chunk != want {
            bad = bad.saturating_add(chunk.iter().zip(want).filter(|(a, b)| a != b).count() as u32);
        }
    }
    bad
}

impl Record for Synthetic {
    fn serialized_len(&self) -> usize {
        self.len as usize
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        write_pattern(self.seq, &mut out[8..]);
    }
}

impl<'a> FromRecord<'a> for Synthetic {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        // The error value is built only when the record is short.
        let Some((head, payload)) = bytes.split_first_chunk::<8>() else {
            return Err(Error::ProtocolViolation {
                place: "shuffle record".into(),
                detail: format!("{} bytes, fewer than 8", bytes.len()),
            });
        };
        let seq = u64::from_le_bytes(*head);
        Ok(Synthetic { seq, len: bytes.len() as u32, bad: pattern_mismatches(seq, payload) })
    }
}

struct ShuffleSink {
    path: PathBuf,
    records: u64,
    seq_sum: u64,
    bad: u64,
    /// Busy work per record (to play a slow downstream operator).
    work_ns: u64,
}

impl Collector<Synthetic> for ShuffleSink {
    #[inline]
    fn collect(&mut self, r: Synthetic) -> Result<()> {
        if self.work_ns > 0 {
            let until = crate::sync::now_nanos().saturating_add(self.work_ns);
            while crate::sync::now_nanos() < until {
                std::hint::spin_loop();
            }
        }
        self.records += 1;
        self.seq_sum = self.seq_sum.wrapping_add(r.seq);
        self.bad += u64::from(r.bad);
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        std::fs::write(&self.path, format!("{}\t{}\t{}\n", self.records, self.seq_sum, self.bad))
            .map_err(|e| Error::Io { op: "writing the shuffle result".into(), source: e })
    }
}

/// The capacity-planning job: `parallelism` generators of `records` records in all, of
/// `payload` bytes, through an exchange of `selector` into `parallelism` counting and
/// checksumming sinks.
/// `work_ns` = (source, sink) busy work per record: plays a slow upstream or downstream
/// operator.
pub fn shuffle_job(
    records: u64,
    payload: u32,
    selector: SelectorKind,
    parallelism: u32,
    dir: PathBuf,
    work_ns: (u64, u64),
) -> JobGraph {
    let (source_work_ns, sink_work_ns) = work_ns;
    let payload = payload.max(8);
    let stream = JobBuilder::new("shuffle", parallelism)
        .source_with("generator", ShuffleSource { records, payload, work_ns: source_work_ns });
    let sink = shuffle_sink(dir, sink_work_ns);
    match selector {
        SelectorKind::KeyHash => stream.key_by(|s: &Synthetic| &s.seq).into_stream().sink("count and checksum", sink),
        SelectorKind::Rebalance => stream.rebalance(None).sink("count and checksum", sink),
        SelectorKind::Rescale => stream.rescale(None).sink("count and checksum", sink),
        SelectorKind::Broadcast => stream.broadcast(None).sink("count and checksum", sink),
        SelectorKind::Forward => stream.forward().sink("count and checksum", sink),
        SelectorKind::Global => stream.global().sink("count and checksum", sink),
    }
}

/// The shuffle job's generator: subtask `i` emits its share of `0..records`.
struct ShuffleSource {
    records: u64,
    payload: u32,
    work_ns: u64,
}

impl Source<Synthetic> for ShuffleSource {
    fn run<C: Collector<Synthetic>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
        let info = ctx.info;
        // u128: `records * p` must not wrap.
        let share = |k: u32| (u128::from(self.records) * u128::from(k) / u128::from(info.parallelism)) as u64;
        for seq in share(info.subtask)..share(info.subtask + 1) {
            if self.work_ns > 0 {
                let until = crate::sync::now_nanos().saturating_add(self.work_ns);
                while crate::sync::now_nanos() < until {
                    std::hint::spin_loop();
                }
            }
            out.collect(Synthetic { seq, len: self.payload, bad: 0 })?;
        }
        Ok(())
    }
}

fn shuffle_sink(dir: PathBuf, work_ns: u64) -> impl Fn(&TaskInfo) -> Result<ShuffleSink> + Send + Sync + Clone {
    let dir = Arc::new(dir);
    move |info| Ok(ShuffleSink { path: part_path(&dir, info), records: 0, seq_sum: 0, bad: 0, work_ns })
}

/// A stamped record of the latency shuffle (`run shuffle --latency`): a sequence number,
/// the generator's monotonic clock when it emitted the record (0: a warm-up record, not
/// measured), then the payload pattern of [`Synthetic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamped {
    /// Sequence number (also the key).
    pub seq: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at emission (one clock for every process of the host);
    /// 0 for warm-up records.
    pub stamp: u64,
    /// Record bytes (at least 16).
    pub len: u32,
    /// Payload bytes that did not match the pattern (after decoding).
    pub bad: u32,
}

impl Record for Stamped {
    fn serialized_len(&self) -> usize {
        self.len as usize
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.seq.to_le_bytes());
        out[8..16].copy_from_slice(&self.stamp.to_le_bytes());
        write_pattern(self.seq, &mut out[16..]);
    }
}

impl<'a> FromRecord<'a> for Stamped {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        let Some((head, payload)) = bytes.split_first_chunk::<16>() else {
            return Err(Error::ProtocolViolation {
                place: "latency shuffle record".into(),
                detail: format!("{} bytes, fewer than 16", bytes.len()),
            });
        };
        let (seq, stamp) = head.split_at(8);
        let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
        let stamp = u64::from_le_bytes(stamp.try_into().unwrap_or_default());
        Ok(Stamped { seq, stamp, len: bytes.len() as u32, bad: pattern_mismatches(seq, payload) })
    }
}

/// The latency shuffle's generator: subtask `i` emits its share of `0..records` at
/// `rate / parallelism` records per second, each stamped right before it is emitted. Before
/// it waits for a record that is not due yet it flushes what it wrote, so no record waits
/// for the buffer timeout while the generator waits; it sleeps while the next record is more
/// than 200 µs away and spins for the rest. The first tenth of each share is warm-up
/// (stamp 0).
struct RateSource {
    records: u64,
    payload: u32,
    rate: u64,
}

impl Source<Stamped> for RateSource {
    fn run<C: Collector<Stamped>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
        let info = ctx.info;
        // u128: `records * p` must not wrap.
        let share = |k: u32| (u128::from(self.records) * u128::from(k) / u128::from(info.parallelism)) as u64;
        let (from, to) = (share(info.subtask), share(info.subtask + 1));
        let warm = (to - from) / 10;
        // Nanoseconds between two records of this subtask.
        let interval = u64::from(info.parallelism).saturating_mul(1_000_000_000) / self.rate.max(1);
        let start = crate::sync::now_nanos();
        for (k, seq) in (from..to).enumerate() {
            let due = start.saturating_add((k as u64).saturating_mul(interval));
            let mut flushed = false;
            loop {
                let now = crate::sync::now_nanos();
                if now >= due {
                    break;
                }
                // Flush before any wait, also a spin: at 10,000 records/s over 2 subtasks
                // the gap is 200 µs and the generator never sleeps, so a flush only before
                // sleeping left every record to the buffer timeout (p50 52 ms at 100 ms).
                if !flushed {
                    out.flush()?;
                    flushed = true;
                }
                // Sleep through the gap rather than spin: the stamp is taken when the record
                // is emitted, so a late wake-up costs rate accuracy (the schedule is absolute
                // and catches up), not latency; a spinning generator took a core the sinks
                // needed (4 tasks on 2 cores: p99 1.7-2.3 ms from time slices).
                if due - now > 20_000 {
                    std::thread::sleep(std::time::Duration::from_nanos(due - now));
                } else {
                    std::hint::spin_loop();
                }
            }
            let stamp = if (k as u64) < warm { 0 } else { crate::sync::now_nanos() };
            out.collect(Stamped { seq, stamp, len: self.payload, bad: 0 })?;
        }
        Ok(())
    }
}

/// The latency shuffle's sink: counts and checks like the throughput sink, and records each
/// measured record's latency (its arrival minus its stamp) in a histogram, written next to
/// the part file as `lat-NNN.hdr` (hdrhistogram's V2 format) when the input ends.
struct LatencySink {
    sink: ShuffleSink,
    hist: hdrhistogram::Histogram<u64>,
    hist_path: PathBuf,
}

impl Collector<Stamped> for LatencySink {
    #[inline]
    fn collect(&mut self, r: Stamped) -> Result<()> {
        if r.stamp != 0 {
            // A stamp from the future (a peer's bad clock word) counts as 0 ns.
            self.hist.saturating_record(crate::sync::now_nanos().saturating_sub(r.stamp));
        }
        self.sink.collect(Synthetic { seq: r.seq, len: r.len, bad: r.bad })
    }
    fn finish(&mut self) -> Result<()> {
        let mut bytes = Vec::new();
        use hdrhistogram::serialization::Serializer;
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&self.hist, &mut bytes)
            .map_err(|e| Error::Invalid { what: "latency histogram", detail: format!("serializing: {e}") })?;
        std::fs::write(&self.hist_path, bytes)
            .map_err(|e| Error::Io { op: format!("writing {}", self.hist_path.display()), source: e })?;
        self.sink.finish()
    }
}

/// The latency shuffle (`run shuffle --latency --rate N`): generators emit `records` stamped
/// records of `payload` bytes (at least 16) at `rate` records per second in all, through an
/// exchange of `selector` (key hash or rebalance) into sinks that histogram each record's
/// latency across the exchange (Flink's latency markers, ShuffleBench `--latency true
/// --rate N`). Read the result with [`latency_histogram`] and [`shuffle_totals`].
pub fn shuffle_latency_job(
    records: u64,
    payload: u32,
    selector: SelectorKind,
    parallelism: u32,
    dir: PathBuf,
    rate: u64,
) -> JobGraph {
    let source = RateSource { records, payload: payload.max(16), rate: rate.max(1) };
    let stream = JobBuilder::new("shuffle-latency", parallelism).source_with("rate-limited generator", source);
    let dir = Arc::new(dir);
    let sink = move |info: &TaskInfo| -> Result<LatencySink> {
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| Error::Invalid { what: "latency histogram", detail: e.to_string() })?;
        Ok(LatencySink {
            sink: ShuffleSink { path: part_path(&dir, info), records: 0, seq_sum: 0, bad: 0, work_ns: 0 },
            hist,
            hist_path: dir.join(format!("lat-{:03}.hdr", info.subtask)),
        })
    };
    match selector {
        SelectorKind::KeyHash => stream.key_by(|s: &Stamped| &s.seq).into_stream().sink("latency histogram", sink),
        _ => stream.rebalance(None).sink("latency histogram", sink),
    }
}

/// The latency histograms of every sink under `dir`, merged (nanoseconds).
///
/// # Errors
/// I/O errors, or a histogram file that does not decode.
pub fn latency_histogram(dir: &Path) -> Result<hdrhistogram::Histogram<u64>> {
    let mut all = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| Error::Invalid { what: "latency histogram", detail: e.to_string() })?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Io { op: format!("listing {}", dir.display()), source: e })?;
    for e in entries.filter_map(|e| e.ok()) {
        let p = e.path();
        if !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("lat-")) {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::Io { op: format!("reading {}", p.display()), source: e })?;
        let h: hdrhistogram::Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| Error::Invalid { what: "latency histogram", detail: format!("{}: {e:?}", p.display()) })?;
        all.add(&h).map_err(|e| Error::Invalid { what: "latency histogram", detail: format!("merging: {e:?}") })?;
    }
    Ok(all)
}

/// Sums the shuffle sinks' part files: (records, sum of sequence numbers, bad bytes).
///
/// # Errors
/// I/O errors or malformed part files.
pub fn shuffle_totals(dir: &Path) -> Result<(u64, u64, u64)> {
    let mut t = (0u64, 0u64, 0u64);
    for l in merge_parts(dir, None)? {
        let s = String::from_utf8_lossy(&l);
        let v: Vec<u64> = s.split('\t').filter_map(|x| x.parse().ok()).collect();
        if v.len() != 3 {
            return Err(Error::Invalid { what: "shuffle result", detail: format!("malformed line {s:?}") });
        }
        t = (t.0.saturating_add(v[0]), t.1.wrapping_add(v[1]), t.2.saturating_add(v[2]));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::{tokenize, Synthetic};
    use crate::record::{FromRecord, Record};

    #[test]
    fn synthetic_records_round_trip_and_count_each_corrupted_byte() {
        for len in [8u32, 9, 16, 255, 264, 1024, 1031, 4096] {
            for seq in [0u64, 1, 7, 255, 256, 1 << 40, u64::MAX] {
                let r = Synthetic { seq, len, bad: 0 };
                let mut buf = vec![0u8; r.serialized_len()];
                r.serialize_into(&mut buf);
                for (k, &b) in buf[8..].iter().enumerate() {
                    assert_eq!(b, (seq as u8).wrapping_mul(31).wrapping_add(k as u8), "len {len} seq {seq} byte {k}");
                }
                assert_eq!(Synthetic::from_record(&buf).unwrap(), r);
                if len > 8 {
                    let last = buf.len() - 1;
                    buf[last] ^= 1;
                    buf[8] ^= 0x80;
                    let bad = if last == 8 { 1 } else { 2 };
                    assert_eq!(Synthetic::from_record(&buf).unwrap().bad, bad, "len {len} seq {seq}");
                }
            }
        }
        assert!(Synthetic::from_record(&[1, 2, 3]).is_err(), "a record shorter than its sequence number");
    }

    #[test]
    fn rate_source_flushes_before_it_waits_also_when_it_only_spins() {
        use super::{RateSource, Stamped};
        use crate::runtime::{Collector, Source, SourceContext, TaskInfo};
        struct Count {
            records: u64,
            flushes: u64,
        }
        impl Collector<Stamped> for Count {
            fn collect(&mut self, _: Stamped) -> crate::Result<()> {
                self.records += 1;
                Ok(())
            }
            fn flush(&mut self) -> crate::Result<()> {
                self.flushes += 1;
                Ok(())
            }
        }
        let info = TaskInfo { job: "t".into(), vertex: 0, vertex_name: "g".into(), subtask: 0, parallelism: 1 };
        // 150 µs between records: below the 200 µs under which the generator spins instead
        // of sleeping, so it never sleeps; records must not be left to the buffer timeout.
        let source = RateSource { records: 1000, payload: 16, rate: 6_667 };
        let mut out = Count { records: 0, flushes: 0 };
        source.run(&SourceContext::for_test(&info), &mut out).unwrap();
        assert_eq!(out.records, 1000);
        assert!(out.flushes > 0, "the generator waited between records without flushing");
    }

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        tokenize(text.as_bytes(), &mut String::new(), &mut |w| out.push(w.to_string()));
        out
    }

    #[test]
    fn splits_like_flinks_wordcount() {
        assert_eq!(words("To be, or NOT to_be: 42!"), ["to", "be", "or", "not", "to_be", "42"]);
        assert_eq!(words("  caf\u{e9} na\u{ef}ve  "), ["caf", "na", "ve"]);
        assert_eq!(words(""), Vec::<String>::new());
        assert_eq!(words("...---..."), Vec::<String>::new());
        // Java's toLowerCase maps KELVIN SIGN to 'k' and U+0130 to "i" + U+0307.
        assert_eq!(words("5 \u{212a}elvin"), ["5", "kelvin"]);
        assert_eq!(words("\u{130}stanbul \u{130}I"), ["i", "stanbul", "i", "i"]);
        assert_eq!(words("x\u{130}"), ["xi"]);
    }
}
