//! The text the wordcount jobs read (a file, or generated lines), Flink's WordCount
//! tokenizer, and single-threaded reference results the tests compare the jobs against.
//!
//! Words are split as Flink's WordCount example does: lower-cased, split on every byte
//! outside `[A-Za-z0-9_]` (so non-ASCII bytes separate words too), empty tokens dropped.

use shmflow::{ConfigError, Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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

/// Bytes per generated line that [`TextSource::generated_mb`] assumes to size the default
/// text: `mb` MB makes `mb * 10^6 / 66` lines. The lines average about 79 bytes (with
/// their newline 80), so the text is about 1.2x `mb` MB; kept so, since the benchmarks and
/// README's figures were measured on this text. What a text really holds is
/// [`TextSource::expected_bytes`] (the progress bar's total).
pub const GENERATED_BYTES_PER_LINE: u64 = 66;

/// Opens `path` for reading if it is a regular file. Checked before opening (opening a FIFO
/// waits for a writer) and again on the opened file, which is opened non-blocking so that a
/// path swapped for a FIFO in between cannot block either. Returns the file and its length.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |d: String| Error::from(ConfigError::Conflict { what: "--input", detail: d });
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
    let n = usize::try_from(len).map_err(|_| ConfigError::Conflict {
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
    /// The default generated text for `mb`: `mb * 10^6 /` [`GENERATED_BYTES_PER_LINE`]
    /// lines, about 1.2x `mb` MB (see [`TextSource::expected_bytes`]).
    pub fn generated_mb(mb: u64) -> Self {
        TextSource::Generated { lines: (mb.saturating_mul(1_000_000) / GENERATED_BYTES_PER_LINE).max(1), seed: 0x5eed }
    }

    /// The bytes a source reads from this text, each line with its newline: a file's
    /// length, or for the generated text its expected size (from the word probabilities,
    /// not by generating it: within 0.5% of the real size from 1 MB on, closer for more
    /// lines); `None` for a file not validated yet.
    pub fn expected_bytes(&self) -> Option<u64> {
        match self {
            TextSource::Generated { lines, .. } => {
                Some((*lines as f64 * (generator().expected_line_bytes() + 1.0)).round() as u64)
            }
            TextSource::File { len, .. } => *len,
        }
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
    /// [`ConfigError::Conflict`] for `--input`, naming the problem.
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
    /// I/O errors reading the file; [`ConfigError::Conflict`] if the file is not a regular
    /// file; [`Error::Invalid`] if its length is not the expected one (before or after
    /// reading the share: the file changed while the job ran).
    pub fn for_each_line(&self, i: u32, p: u32, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        match self {
            TextSource::Generated { lines, seed } => {
                let g = generator();
                // u128: `lines * p` must not wrap for the largest --generated-mb.
                let share = |k: u32| (u128::from(*lines) * u128::from(k) / u128::from(p)) as u64;
                let (from, to) = (share(i), share(i + 1));
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
    /// The words back to back (word `i` ends at `ends[i]` and starts where word `i - 1`
    /// ends): one allocation, not one per word (see [`Generator::new`]).
    words: String,
    ends: Vec<u32>,
    cdf: Vec<u64>,
    /// `guide[k]`: the first word whose cumulative probability reaches `k << 48`, so a draw
    /// starts its search there (a constant-time lookup for all but the rarest words).
    /// A word's index fits 16 bits ([`VOCABULARY`]): every draw reads one entry at random,
    /// so the table is kept small (128 KiB), and each worker process has its own.
    guide: Vec<u16>,
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

/// The vocabulary while it is drawn: the words so far back to back, where each ends, and a
/// table of their indexes by word, to keep each word once.
struct Vocabulary {
    words: String,
    ends: Vec<u32>,
    seen: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::FixedState,
}

impl Vocabulary {
    fn with_capacity(n: usize) -> Self {
        Vocabulary {
            // About 9.2 bytes a word (368,408 for 40,000): room for all without a regrowth.
            words: String::with_capacity(10 * n),
            ends: Vec::with_capacity(n),
            seen: hashbrown::HashTable::with_capacity(n),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Where the next word starts (the end of the last one).
    fn end(&self) -> usize {
        self.ends.last().map_or(0, |&e| e as usize)
    }

    /// Keeps the word spelled at the end of `words` (after the last kept one) unless it is
    /// there already, in which case it is taken off again.
    fn keep_new(&mut self) {
        use std::hash::BuildHasher;
        let from = self.end();
        let Vocabulary { words, ends, seen, hasher } = self;
        let w = &words[from..];
        let h = hasher.hash_one(w);
        let word = |j: u32| {
            let j = j as usize;
            &words[if j == 0 { 0 } else { ends[j - 1] as usize }..ends[j] as usize]
        };
        if seen.find(h, |&j| word(j) == w).is_some() {
            words.truncate(from);
        } else {
            seen.insert_unique(h, ends.len() as u32, |&j| hasher.hash_one(word(j)));
            ends.push(words.len() as u32);
        }
    }
}

/// Words in the generator's vocabulary (at most `u16::MAX`: the guide holds indexes as u16).
const VOCABULARY: usize = 40_000;
const _: () = assert!(VOCABULARY <= u16::MAX as usize);

/// The shared generator (built once per process).
pub fn generator() -> &'static Generator {
    static G: OnceLock<Generator> = OnceLock::new();
    G.get_or_init(Generator::new)
}

impl Generator {
    fn new() -> Self {
        let n = VOCABULARY;
        // Every worker process builds the generator when its job starts, so this is part
        // of a job's time to its first record: SipHash and a clone per word took about 25
        // ms of it (session 10). Session 12: the memory it touches costs as much as its
        // work, a page fault for every fresh 4 KiB page (a String a word, the vector of
        // weights beside the cdf: about 1,000 faults a worker, 10 ms of kernel time a
        // worker on the 2-vCPU VM), so the words lie back to back in one String and the
        // weights become the cdf in place; and the guide is found in one pass. The words,
        // their order and the text are as before.
        let mut vocab = Vocabulary::with_capacity(n);
        for w in COMMON {
            vocab.words.push_str(w);
            vocab.keep_new();
        }
        let mut x = 42u64;
        while vocab.len() < n {
            let k = 2 + (splitmix(&mut x) % 3) as usize;
            // Each draw is spelled where it would be kept, after the last word.
            let w = &mut vocab.words;
            for _ in 0..k {
                w.push_str(SYLLABLES[(splitmix(&mut x) % SYLLABLES.len() as u64) as usize]);
            }
            match splitmix(&mut x) % 200 {
                0 => w.push_str("_id"),
                1 => {
                    use std::fmt::Write;
                    let _ = write!(w, "{}", splitmix(&mut x) % 100);
                }
                2 => w.push('é'),
                _ => {}
            }
            vocab.keep_new();
        }
        let Vocabulary { words, ends, .. } = vocab;
        // Each word's weight, then in place its cumulative probability (the same sums in
        // the same order as with a vector of weights beside it).
        let mut cdf: Vec<u64> = (1..=n).map(|r| (1.0 / (r as f64).powf(1.07)).to_bits()).collect();
        let total: f64 = cdf.iter().map(|&w| f64::from_bits(w)).sum();
        let mut acc = 0.0f64;
        for c in &mut cdf {
            acc += f64::from_bits(*c) / total;
            *c = (acc * u64::MAX as f64) as u64;
        }
        if let Some(l) = cdf.last_mut() {
            *l = u64::MAX;
        }
        // `guide[k]` is `cdf.partition_point(|&c| c < k << 48)`, found in one pass: `cdf`
        // only grows, so each k's first index is at or after the last one's (a binary
        // search per k, as before, took 65,536 searches of 16 mispredicted steps).
        let mut guide = Vec::with_capacity(1 << 16);
        let mut i = 0usize;
        for k in 0..1u64 << 16 {
            while i < cdf.len() && cdf[i] < k << 48 {
                i += 1;
            }
            // `i` <= VOCABULARY, which fits (asserted at the constant).
            guide.push(i as u16);
        }
        Self { words, ends, cdf, guide }
    }

    /// Word `i` of the vocabulary.
    #[inline]
    fn word(&self, i: usize) -> &str {
        &self.words[if i == 0 { 0 } else { self.ends[i - 1] as usize }..self.ends[i] as usize]
    }

    fn draw(&self, r: u64) -> usize {
        let mut i = self.guide[(r >> 48) as usize] as usize;
        while i + 1 < self.cdf.len() && self.cdf[i] < r {
            i += 1;
        }
        i
    }

    /// The expected bytes of a line of [`Generator::line`] (without its newline), from the
    /// word probabilities: 6..=18 words (mean 12) drawn by `cdf`, a space between words,
    /// after a word `,` `; ` or ` -- ` each with probability 1/23, and `.` after the last
    /// with 1/23. The first word is capitalized, which keeps its length (every word starts
    /// with an ASCII letter or digit).
    pub fn expected_line_bytes(&self) -> f64 {
        let mut prev = 0u64;
        let mut word = 0.0f64;
        for (w, &c) in (0..self.ends.len()).map(|i| self.word(i)).zip(&self.cdf) {
            word += (c - prev) as f64 / u64::MAX as f64 * w.len() as f64;
            prev = c;
        }
        let words = 12.0;
        words * (word + (1.0 + 2.0 + 4.0) / 23.0) + (words - 1.0) + 1.0 / 23.0
    }

    /// Appends line number `l` of the text seeded by `seed` to `out`.
    pub fn line(&self, seed: u64, l: u64, out: &mut String) {
        let mut x = seed ^ l.wrapping_mul(0xd134_2543_de82_ef95);
        let words = 6 + splitmix(&mut x) % 13;
        for k in 0..words {
            let r = splitmix(&mut x);
            let idx = self.draw(r).min(self.ends.len() - 1);
            let w = self.word(idx);
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
#[allow(dead_code)] // for the tests that include this module by path
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
#[allow(dead_code)] // for the tests that include this module by path
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

#[cfg(test)]
mod tests {
    use super::tokenize;

    #[test]
    fn each_guide_entry_is_the_first_word_whose_cumulative_probability_reaches_it() {
        let g = super::generator();
        assert_eq!(g.guide.len(), 1 << 16);
        for (k, &i) in g.guide.iter().enumerate() {
            assert_eq!(i as usize, g.cdf.partition_point(|&c| c < (k as u64) << 48), "guide[{k}]");
        }
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
