//! `shmflow run wordcount` and `window-wordcount`: the job graphs, their source and their
//! part-file sinks.

use super::text::{tokenize, TextSource};
use shmflow::partition::ResultPartitionType;
use shmflow::record::copy_payload;
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

impl Collector<Counted> for PartSink {
    fn collect(&mut self, Counted(w, c): Counted) -> Result<()> {
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
/// longer ones on the heap. Derefs to `str`, compares as its `str` (its hash is its own, see
/// its `Hash`), and crosses an exchange as a string field.
///
/// A heap word of up to [`Word::SPARE_MAX`] bytes does not allocate per record either: a
/// dropped one leaves its box to its thread as the spare of its length, which the next word
/// of that length made on the thread takes (the source makes, writes and drops one word at a
/// time; the reducer decodes one, and drops it when its word is already in the state), so
/// text with many long tokens (URLs) allocates once per length and thread, plus once per
/// distinct word kept by the reducer.
pub struct Word(WordRepr);

/// `repr(u8)`: each variant is laid out as a `repr(C)` struct that starts with the tag byte,
/// so an inline word is its tag, its length and its buffer, 24 initialized bytes at the
/// start of the word ([`Word::inline_lanes`] reads them whole).
#[repr(u8)]
enum WordRepr {
    /// `len` bytes of `buf`, valid UTF-8 (copied from a `&str` whole).
    Inline {
        len: u8,
        buf: [u8; Word::INLINE],
    },
    Heap(Box<str>),
}

impl Word {
    /// The longest word kept inline: a word is 24 bytes and a [`Counted`] 32, so an entry of
    /// the reduce state never straddles two cache lines (longer words are rare: none in the
    /// generated text, a few in English).
    pub const INLINE: usize = 22;

    /// A word with the text of `s`.
    // inline(always): the source makes one per word and serializes it at once, the reducer
    // decodes one per record; as a call its 24 bytes came back through memory, read by the
    // caller right after the callee's narrower stores (a store-forwarding stall, 21% of the
    // source's emit closure in a profile).
    #[inline(always)]
    pub fn new(s: &str) -> Self {
        let n = s.len();
        if n <= Self::INLINE {
            // The bytes are loaded into three 64-bit lanes and stored into the word at fixed
            // offsets, so the word is built in registers and written where it goes. Copied
            // into a buffer with stores of the word's length and then moved into the enum
            // (as before), it was read back by loads that straddled those stores, which
            // stalls store forwarding: a third of the source's per-word time in a profile.
            let [a, b, c] = lanes(s.as_bytes());
            let mut buf = [0u8; Self::INLINE];
            buf[..8].copy_from_slice(&a.to_le_bytes());
            buf[8..16].copy_from_slice(&b.to_le_bytes());
            buf[16..].copy_from_slice(&c.to_le_bytes()[..Self::INLINE - 16]);
            Word(WordRepr::Inline { len: n as u8, buf })
        } else {
            Word(WordRepr::Heap(heap_str(s)))
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

// `Word::inline_lanes` reads a word's first 24 bytes as three aligned u64s.
const _: () = assert!(std::mem::size_of::<Word>() == 24 && std::mem::align_of::<Word>() == 8);

impl Word {
    /// An inline word's 24 bytes (tag, length, buffer zero past the text) as three 64-bit
    /// words, `None` for a heap word: equal inline words have equal lanes and unequal ones
    /// differ in them, so the reduce state hashes and compares these. Loaded at the offsets
    /// a word is copied with (0, 8, 16), where loads at the buffer's odd offsets straddled
    /// the stores that had just moved the decoded word (a stalled load at 54% of the
    /// reducer's hash in a profile).
    #[inline(always)]
    fn inline_lanes(&self) -> Option<[u64; 3]> {
        match &self.0 {
            WordRepr::Inline { .. } => {
                // SAFETY: `WordRepr` is `repr(u8)`: its inline variant is laid out as a
                // `repr(C)` struct of the tag byte, `len` and the 22-byte `buf`, no padding,
                // all initialized, at the start of the word; a `Word` is 24 bytes aligned to
                // 8 (asserted above), so the read is in bounds and aligned.
                Some(unsafe { std::ptr::read((self as *const Word).cast::<[u64; 3]>()) })
            }
            WordRepr::Heap(_) => None,
        }
    }

    /// The longest heap word whose box is kept as a spare when it is dropped (see [`Word`]).
    pub const SPARE_MAX: usize = 255;
}

/// Spare boxes of heap words, one per length from `Word::INLINE + 1` to `Word::SPARE_MAX`
/// (4 KiB a thread), index `len - Word::INLINE - 1`.
const SPARES: usize = Word::SPARE_MAX - Word::INLINE;

thread_local! {
    static SPARE: [std::cell::Cell<Option<Box<str>>>; SPARES] = const { [const { std::cell::Cell::new(None) }; SPARES] };
}

/// `s` in a box: the thread's spare of its length if there is one, else a new one.
#[inline]
fn heap_str(s: &str) -> Box<str> {
    let spare = s
        .len()
        .checked_sub(Word::INLINE + 1)
        .filter(|&i| i < SPARES)
        .and_then(|i| SPARE.try_with(|sp| sp[i].take()).ok().flatten());
    match spare {
        Some(mut b) => {
            debug_assert_eq!(b.len(), s.len());
            // SAFETY: the box holds exactly `s.len()` bytes (its spare slot is that of its
            // length), all replaced by the bytes of `s`, valid UTF-8: the box stays a `str`.
            unsafe { b.as_bytes_mut() }.copy_from_slice(s.as_bytes());
            b
        }
        None => s.into(),
    }
}

impl Drop for Word {
    #[inline]
    fn drop(&mut self) {
        if let WordRepr::Heap(b) = &mut self.0 {
            if let Some(i) = b.len().checked_sub(Word::INLINE + 1).filter(|&i| i < SPARES) {
                let b = std::mem::take(b);
                // A thread being torn down keeps no spares (the box is freed here).
                let _ = SPARE.try_with(|sp| {
                    if let Some(old) = sp[i].replace(Some(b)) {
                        // Another word of this length left its box first: one spare a length.
                        sp[i].set(Some(old));
                    }
                });
            }
        }
    }
}

impl Clone for Word {
    #[inline]
    fn clone(&self) -> Self {
        match &self.0 {
            WordRepr::Inline { len, buf } => Word(WordRepr::Inline { len: *len, buf: *buf }),
            WordRepr::Heap(s) => Word(WordRepr::Heap(heap_str(s))),
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

impl PartialEq for Word {
    /// Two inline words are equal when their lanes are ([`Word::inline_lanes`]: the bytes
    /// past the length are zero in both, `Word::new` and `clone` keep them so), three
    /// compares instead of a call to `memcmp` (the reduce state's probe compares one word
    /// per record).
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (self.inline_lanes(), other.inline_lanes()) {
            (Some(a), Some(b)) => a == b,
            _ => self.as_str() == other.as_str(),
        }
    }
}
impl Eq for Word {}

/// An inline word hashes as its three 64-bit lanes ([`Word::inline_lanes`]: tag, length,
/// buffer), a heap word as its `str`: equal words hash equally (inline and
/// heap words are never equal, they differ in length). Not as a `str`, so a `Word` is no
/// `Borrow<str>`: the reduce state's hash is three multiplies in the drain loop, where
/// `str`'s byte-slice hash stayed a call per record (`BuildHasher::hash_one`, 3-4% of a
/// profile).
impl std::hash::Hash for Word {
    // inline(always): once per record in the reducer's drain loop (left to LLVM it stayed a
    // call there).
    #[inline(always)]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self.inline_lanes() {
            Some([a, b, c]) => {
                state.write_u64(a);
                state.write_u64(b);
                state.write_u64(c);
            }
            None => self.as_str().hash(state),
        }
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

/// `dst.copy_from_slice(src)` for a word (most are 1 to 10 bytes) without a call to
/// `memcpy`: a byte or three for the shortest, [`copy_payload`]'s overlapping words from 4
/// bytes on. Panics, as `copy_from_slice`, when the lengths differ.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    assert_eq!(dst.len(), n, "copy_short: lengths differ");
    match n {
        0 => {}
        1..=3 => {
            // The first, middle (= first or last for 2) and last bytes cover 1 to 3.
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        _ => copy_payload(dst, src),
    }
}

/// The bytes of `b` (at most 24) as three little-endian 64-bit lanes, zero past the end:
/// each lane is one or two loads (overlapping ones shifted into place), never a byte loop
/// or a call to `memcpy`.
#[inline(always)]
fn lanes(b: &[u8]) -> [u64; 3] {
    let n = b.len();
    debug_assert!(n <= 24);
    // `b[i..i + 8]` as a u64 (the caller checked that it lies in `b`).
    let at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    // The last 8 bytes of `b`, shifted down so that byte `lo` lands at bit 0 (`n - 8 <= lo`).
    let tail = |lo: usize| at(n - 8) >> (8 * (lo + 8 - n));
    match n {
        0 => [0, 0, 0],
        1..=3 => [u64::from(b[0]) | u64::from(b[n / 2]) << (8 * (n / 2)) | u64::from(b[n - 1]) << (8 * (n - 1)), 0, 0],
        4..=7 => {
            let head = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let last = u64::from(u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]));
            [head | last << (8 * (n - 4)), 0, 0]
        }
        8 => [at(0), 0, 0],
        9..=16 => [at(0), tail(8), 0],
        _ => [at(0), at(8), tail(16)],
    }
}

/// A word and a count: the record of the WordCount jobs (`(word, 1)` from the source, one
/// sum per word after the reduce; `.0` the word, `.1` the count, as the tuple it replaces).
///
/// It crosses the exchange as its own payload, not as a `(String, u64)` tuple (a u32 length
/// of the word and 8 bytes of count, 12 bytes besides the word): the record's frame already
/// says where the word ends, so the payload is the count as a LEB128 varint (one byte for
/// counts below 128, so for every `(word, 1)`) followed by the word's bytes. A word of 6
/// bytes takes 11 bytes of segment with its frame instead of 22, which halves the bytes the
/// source writes and the reducer reads per word (issue 12, the wordcount bench).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted(pub Word, pub u64);

/// Bytes of `v` as a LEB128 varint (1 to 10).
#[inline]
fn varint_len(v: u64) -> usize {
    // 7 bits a byte; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

impl shmflow::record::Record for Counted {
    #[inline]
    fn serialized_len(&self) -> usize {
        varint_len(self.1) + self.0.len()
    }
    // inline(always): a call per word from the source's emit (it stayed out of line).
    #[inline(always)]
    fn serialize_into(&self, out: &mut [u8]) {
        let mut v = self.1;
        let mut at = 0;
        // At most 10 bytes (`varint_len`); `out` holds `serialized_len()` bytes.
        while v >= 0x80 {
            out[at] = (v as u8) | 0x80;
            v >>= 7;
            at += 1;
        }
        out[at] = v as u8;
        copy_short(&mut out[at + 1..], self.0.as_bytes());
    }
}

/// The error for a payload that is no [`Counted`] (data from another process: an error,
/// never a panic). Cold, so the decoder stays small.
#[cold]
#[inline(never)]
fn malformed_counted(detail: &str) -> Error {
    Error::ProtocolViolation { place: "wordcount record".into(), detail: detail.into() }
}

impl<'a> shmflow::record::FromRecord<'a> for Counted {
    // inline(always): once per record in the reducer's drain loop.
    #[inline(always)]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        let (count, at) = match bytes.first() {
            // The common case: a count below 128 (every `(word, 1)`).
            Some(&b) if b < 0x80 => (u64::from(b), 1),
            Some(_) => read_varint(bytes)?,
            None => return Err(malformed_counted("empty payload")),
        };
        let w = std::str::from_utf8(&bytes[at..]).map_err(|_| malformed_counted("word is not UTF-8"))?;
        Ok(Counted(Word::new(w), count))
    }
}

/// Decodes the LEB128 varint at the front of `bytes`: its value and length.
fn read_varint(bytes: &[u8]) -> Result<(u64, usize)> {
    let mut v = 0u64;
    // At most 10 bytes; the 10th may hold only the top bit of a u64.
    for (k, &b) in bytes.iter().take(10).enumerate() {
        if k == 9 && b > 1 {
            return Err(malformed_counted("count above u64::MAX"));
        }
        v |= u64::from(b & 0x7f) << (7 * k);
        if b < 0x80 {
            return Ok((v, k + 1));
        }
    }
    Err(malformed_counted("count not terminated"))
}

/// The text source of the WordCount jobs: tokenizes its share of the text and emits
/// `(word, 1)` straight into the chain after it.
struct WordSource(Arc<TextSource>);

impl Source<Counted> for WordSource {
    fn run<C: Collector<Counted>>(&self, ctx: &SourceContext<'_>, out: &mut C) -> Result<()> {
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
                    if let Err(e) = out.collect(Counted(Word::new(w), 1)) {
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

/// Routes a word as Flink routes the equal `String`.
impl shmflow::partition::JavaHash for Word {
    #[inline]
    fn java_hash(&self) -> i32 {
        shmflow::record::java_string_hash(self.as_str())
    }
}

/// The key of a record: its [`Word`] (not its `&str`, so the reduce state's probe compares
/// two inline words in registers, see `Word`'s `PartialEq`).
#[inline]
fn word_key(t: &Counted) -> &Word {
    &t.0
}

/// The word of a record, as the keyed exchange and the reduce state look it up: the function
/// item itself (a type of its own, so every call is static and inlined), not a `fn` pointer
/// (an indirect call per record and per probe of the reduce state).
trait WordKey: for<'a> Fn(&'a Counted) -> &'a Word + Clone + Send + Sync + 'static {}
impl<F: for<'a> Fn(&'a Counted) -> &'a Word + Clone + Send + Sync + 'static> WordKey for F {}

fn text_stream(
    name: &str,
    source: TextSource,
    parallelism: u32,
    ptype: ResultPartitionType,
) -> KeyedStream<Counted, Word, impl WordKey> {
    JobBuilder::new(name, parallelism)
        .with_partition_type(ptype)
        .source_with("text source", WordSource(Arc::new(source)))
        .key_by(word_key)
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
        .count_window("count window sum", size, slide, |w: &[Counted]| {
            // Saturating: the counts arrive from other processes.
            Counted(w[0].0.clone(), w.iter().fold(0u64, |a, x| a.saturating_add(x.1)))
        })
        .sink("part files", part_sink(Arc::new(dir)))
}

#[cfg(test)]
mod tests {
    use super::{copy_short, Counted, Word};
    use shmflow::record::{FromRecord, Record};

    fn encode(c: &Counted) -> Vec<u8> {
        let mut out = vec![0xeeu8; c.serialized_len()];
        c.serialize_into(&mut out);
        out
    }

    #[test]
    fn counted_round_trips_every_length_and_count() {
        let text: String = "abcdefghijklmnopqrstuvwxyz0123456789_".repeat(2);
        for len in 0..=text.len() {
            for count in [0, 1, 127, 128, 300, 1 << 35, u64::MAX - 1, u64::MAX] {
                let c = Counted(Word::new(&text[..len]), count);
                let bytes = encode(&c);
                assert_eq!(bytes.len(), super::varint_len(count) + len, "len {len} count {count}");
                assert_eq!(Counted::from_record(&bytes).unwrap(), c, "len {len} count {count}");
            }
        }
        // `(word, 1)`: one byte of count, then the word.
        assert_eq!(encode(&Counted(Word::new("flink"), 1)), b"\x01flink");
        assert_eq!(encode(&Counted(Word::new("a"), 300)), b"\xac\x02a");
    }

    #[test]
    fn malformed_counted_payloads_are_errors() {
        for bad in [
            &b""[..],
            b"\x80",
            b"\xff\xff",
            // 10 bytes of varint whose last holds more than a u64's top bit.
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02ab",
            // 11 bytes of continuation.
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
            b"\x01\xff\xfe",
        ] {
            assert!(Counted::from_record(bad).is_err(), "{bad:?} decoded");
        }
        let max = Counted::from_record(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01w").unwrap();
        assert_eq!(max, Counted(Word::new("w"), u64::MAX));
    }

    #[test]
    fn a_counted_takes_32_bytes() {
        assert_eq!(std::mem::size_of::<Word>(), 24);
        assert_eq!(std::mem::size_of::<Counted>(), 32);
        let long = "x".repeat(Word::INLINE + 1);
        assert_eq!(&*Word::new(&long), long, "a word longer than INLINE goes to the heap whole");
    }

    #[test]
    fn a_long_word_made_from_a_spare_box_holds_its_own_text() {
        for len in [Word::INLINE + 1, 40, Word::SPARE_MAX, Word::SPARE_MAX + 1] {
            let a = "a".repeat(len);
            let b = "b".repeat(len);
            let kept = Word::new(&a);
            // Leaves its box as the spare of `len`, which `b` takes.
            drop(Word::new(&a));
            let wb = Word::new(&b);
            assert_eq!(&*wb, b, "len {len}");
            assert_eq!(&*kept, a, "len {len}: a word in use is never a spare");
            let c = wb.clone();
            drop(wb);
            assert_eq!(&*c, b, "len {len}: a clone is a word of its own");
            assert_eq!(&*Word::new(&a), a, "len {len}");
        }
    }

    #[test]
    fn words_are_equal_exactly_when_their_text_is_and_then_hash_equally() {
        let texts =
            ["", "a", "a\0", "ab", "ba", "abcdefghijklmnopqrstuv", "abcdefghijklmnopqrstuw", "x".repeat(23).leak()];
        for a in texts {
            for b in texts {
                assert_eq!(Word::new(a) == Word::new(b), a == b, "{a:?} vs {b:?}");
                assert_eq!(Word::new(a).clone() == Word::new(b), a == b, "{a:?} (cloned) vs {b:?}");
                if a == b {
                    let h = |w: Word| std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::with_seed(7), w);
                    assert_eq!(h(Word::new(a)), h(Word::new(b).clone()), "{a:?}: equal words hash equally");
                }
            }
        }
    }

    #[test]
    fn lanes_hold_the_bytes_and_zeroes_past_them() {
        let src: Vec<u8> = (1..=24u8).collect();
        for len in 0..=24 {
            let mut want = [0u8; 24];
            want[..len].copy_from_slice(&src[..len]);
            let got: Vec<u8> = super::lanes(&src[..len]).iter().flat_map(|l| l.to_le_bytes()).collect();
            assert_eq!(got, want, "len {len}");
        }
    }

    #[test]
    fn copy_short_copies_exactly_the_word() {
        let src: Vec<u8> = (1..=40u8).collect();
        for len in 0..=40 {
            let mut out = [0u8; 48];
            copy_short(&mut out[..len], &src[..len]);
            assert_eq!(&out[..len], &src[..len], "len {len}");
            assert!(out[len..].iter().all(|&b| b == 0), "len {len}: bytes past the word");
        }
    }
}
