//! `shmflow run wordcount` and `window-wordcount`: the job graphs, their source and their
//! part-file sinks.

use super::text::{tokenize, TextSource};
use shmflow::partition::ResultPartitionType;
use shmflow::runtime::{Collector, JobBuilder, JobGraph, KeyedStream, Source, SourceContext, TaskInfo};
use shmflow::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(super) fn part_path(dir: &Path, info: &TaskInfo) -> PathBuf {
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

impl shmflow::record::Field for Word {
    #[inline]
    fn field_len(&self) -> usize {
        self.as_str().field_len()
    }
    #[inline]
    fn write_field(&self, out: &mut [u8]) -> usize {
        self.as_str().write_field(out)
    }
}

impl<'a> shmflow::record::FromField<'a> for Word {
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
#[allow(dead_code)] // for the tests that include this module by path
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
