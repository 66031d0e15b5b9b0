//! How values become record payloads and back.

use super::frame;
use crate::error::{Error, Result};

/// A value that can be written as one record's payload, in place into shared memory.
pub trait Record {
    /// Exact payload length in bytes.
    fn serialized_len(&self) -> usize;
    /// Writes the payload into `out`, whose length is exactly `serialized_len()`.
    fn serialize_into(&self, out: &mut [u8]);
    /// The payload itself when the value already is its serialized bytes (byte slices and
    /// strings): a record spanning segments is then copied from here, without first
    /// serializing it into a scratch buffer.
    #[inline]
    fn as_serialized(&self) -> Option<&[u8]> {
        None
    }
}

/// A value read back from a record payload that may borrow from it (zero copy).
pub trait FromRecord<'a>: Sized {
    /// Decodes a whole payload.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for a malformed payload.
    fn from_record(bytes: &'a [u8]) -> Result<Self>;
}

/// A self-delimiting field inside a tuple record.
pub trait Field {
    /// Encoded length.
    fn field_len(&self) -> usize;
    /// Writes the field at the start of `out`; returns the bytes written.
    fn write_field(&self, out: &mut [u8]) -> usize;
}

/// A field read back from the front of a payload.
pub trait FromField<'a>: Sized {
    /// Decodes the field at the start of `bytes`; returns it and the bytes used.
    ///
    /// # Errors
    /// [`Error::ProtocolViolation`] for a short or malformed field.
    fn read_field(bytes: &'a [u8]) -> Result<(Self, usize)>;
}

/// The error for a malformed payload: cold and out of line, so the decoders that return it
/// stay small enough to inline into a reader's loop.
#[cold]
#[inline(never)]
fn malformed(what: &str) -> Error {
    Error::ProtocolViolation { place: "record payload".into(), detail: what.into() }
}

/// `out.copy_from_slice(src)` for the small payloads of a record loop without the call to
/// `memcpy` (whose length is not known here): 4 to 32 bytes as two overlapping loads and
/// stores of a word each (the word's size a power of two at most the length), the rest
/// through `copy_from_slice`. Panics, as `copy_from_slice`, when the lengths differ.
/// Public for the serializers of record types outside this crate (the command line's
/// WordCount record).
#[inline(always)]
pub fn copy_payload(out: &mut [u8], src: &[u8]) {
    let n = src.len();
    if out.len() != n {
        // The caller broke `serialize_into`'s contract: `copy_from_slice` says how.
        return out.copy_from_slice(src);
    }
    match n {
        4..=7 => copy_ends::<4>(out, src),
        8..=16 => copy_ends::<8>(out, src),
        17..=32 => copy_ends::<16>(out, src),
        _ => out.copy_from_slice(src),
    }
}

/// Copies `src` (of `W..=2W` bytes, as long as `out`) as its first and its last `W` bytes.
#[inline(always)]
fn copy_ends<const W: usize>(out: &mut [u8], src: &[u8]) {
    let n = src.len();
    debug_assert!(out.len() == n && (W..=2 * W).contains(&n));
    let (head, tail): ([u8; W], [u8; W]) =
        (src[..W].try_into().unwrap_or([0; W]), src[n - W..].try_into().unwrap_or([0; W]));
    out[..W].copy_from_slice(&head);
    out[n - W..].copy_from_slice(&tail);
}

impl Record for [u8] {
    #[inline]
    fn serialized_len(&self) -> usize {
        self.len()
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        copy_payload(out, self);
    }
    #[inline]
    fn as_serialized(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl Record for str {
    #[inline]
    fn serialized_len(&self) -> usize {
        self.len()
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        copy_payload(out, self.as_bytes());
    }
    #[inline]
    fn as_serialized(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }
}

impl Record for String {
    #[inline]
    fn serialized_len(&self) -> usize {
        self.len()
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        copy_payload(out, self.as_bytes());
    }
    #[inline]
    fn as_serialized(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }
}

impl Record for Vec<u8> {
    #[inline]
    fn serialized_len(&self) -> usize {
        self.len()
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
    #[inline]
    fn as_serialized(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl<T: Record + ?Sized> Record for &T {
    #[inline]
    fn serialized_len(&self) -> usize {
        (**self).serialized_len()
    }
    #[inline]
    fn serialize_into(&self, out: &mut [u8]) {
        (**self).serialize_into(out)
    }
    #[inline]
    fn as_serialized(&self) -> Option<&[u8]> {
        (**self).as_serialized()
    }
}

impl<'a> FromRecord<'a> for &'a [u8] {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        Ok(bytes)
    }
}

impl<'a> FromRecord<'a> for &'a str {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        std::str::from_utf8(bytes).map_err(|e| malformed(&format!("string record is not UTF-8: {e}")))
    }
}

impl<'a> FromRecord<'a> for Vec<u8> {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        Ok(bytes.to_vec())
    }
}

impl<'a> FromRecord<'a> for String {
    #[inline]
    fn from_record(bytes: &'a [u8]) -> Result<Self> {
        <&str>::from_record(bytes).map(str::to_owned)
    }
}

macro_rules! int_impls {
    ($($t:ty),*) => {$(
        impl Record for $t {
            #[inline]
            fn serialized_len(&self) -> usize { std::mem::size_of::<$t>() }
            #[inline]
            fn serialize_into(&self, out: &mut [u8]) { out.copy_from_slice(&self.to_le_bytes()); }
        }
        impl<'a> FromRecord<'a> for $t {
            #[inline]
            fn from_record(bytes: &'a [u8]) -> Result<Self> {
                let arr = bytes.try_into().map_err(|_| malformed(concat!("expected ", stringify!($t))))?;
                Ok(<$t>::from_le_bytes(arr))
            }
        }
        impl Field for $t {
            #[inline]
            fn field_len(&self) -> usize { std::mem::size_of::<$t>() }
            #[inline]
            fn write_field(&self, out: &mut [u8]) -> usize {
                let n = std::mem::size_of::<$t>();
                out[..n].copy_from_slice(&self.to_le_bytes());
                n
            }
        }
        impl<'a> FromField<'a> for $t {
            #[inline]
            fn read_field(bytes: &'a [u8]) -> Result<(Self, usize)> {
                let n = std::mem::size_of::<$t>();
                let arr = bytes.get(..n).and_then(|b| b.try_into().ok())
                    .ok_or_else(|| malformed(concat!("short ", stringify!($t), " field")))?;
                Ok((<$t>::from_le_bytes(arr), n))
            }
        }
    )*};
}
int_impls!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

/// A byte or string field inside a tuple: length-prefixed, as a record is ([`frame`]).
fn write_bytes_field(b: &[u8], out: &mut [u8]) -> usize {
    frame::put_len(out, b.len());
    out[frame::LEN_PREFIX..frame::framed_len(b.len())].copy_from_slice(b);
    frame::framed_len(b.len())
}

fn read_bytes_field(bytes: &[u8]) -> Result<(&[u8], usize)> {
    match frame::decode(bytes) {
        frame::Frame::Whole { payload, framed } => Ok((payload, framed)),
        frame::Frame::Partial { .. } => Err(malformed("bytes field longer than its record")),
        frame::Frame::NoPrefix => Err(malformed("short length of a bytes field")),
    }
}

impl Field for [u8] {
    #[inline]
    fn field_len(&self) -> usize {
        frame::framed_len(self.len())
    }
    #[inline]
    fn write_field(&self, out: &mut [u8]) -> usize {
        write_bytes_field(self, out)
    }
}

impl Field for str {
    #[inline]
    fn field_len(&self) -> usize {
        frame::framed_len(self.len())
    }
    #[inline]
    fn write_field(&self, out: &mut [u8]) -> usize {
        write_bytes_field(self.as_bytes(), out)
    }
}

impl Field for String {
    #[inline]
    fn field_len(&self) -> usize {
        frame::framed_len(self.len())
    }
    #[inline]
    fn write_field(&self, out: &mut [u8]) -> usize {
        write_bytes_field(self.as_bytes(), out)
    }
}

impl<T: Field + ?Sized> Field for &T {
    #[inline]
    fn field_len(&self) -> usize {
        (**self).field_len()
    }
    #[inline]
    fn write_field(&self, out: &mut [u8]) -> usize {
        (**self).write_field(out)
    }
}

impl<'a> FromField<'a> for &'a [u8] {
    #[inline]
    fn read_field(bytes: &'a [u8]) -> Result<(Self, usize)> {
        read_bytes_field(bytes)
    }
}

impl<'a> FromField<'a> for &'a str {
    #[inline]
    fn read_field(bytes: &'a [u8]) -> Result<(Self, usize)> {
        let (b, n) = read_bytes_field(bytes)?;
        let s = std::str::from_utf8(b).map_err(|e| malformed(&format!("string field is not UTF-8: {e}")))?;
        Ok((s, n))
    }
}

impl<'a> FromField<'a> for String {
    #[inline]
    fn read_field(bytes: &'a [u8]) -> Result<(Self, usize)> {
        <&str>::read_field(bytes).map(|(s, n)| (s.to_owned(), n))
    }
}

macro_rules! tuple_impls {
    ($( ($($n:ident $i:tt),+) ),*) => {$(
        impl<$($n: Field),+> Record for ($($n,)+) {
            #[inline]
            fn serialized_len(&self) -> usize { 0 $(+ self.$i.field_len())+ }
            #[inline]
            fn serialize_into(&self, out: &mut [u8]) {
                let mut at = 0;
                $( at += self.$i.write_field(&mut out[at..]); )+
                debug_assert_eq!(at, out.len());
            }
        }
        impl<'a, $($n: FromField<'a>),+> FromRecord<'a> for ($($n,)+) {
            #[inline]
            fn from_record(bytes: &'a [u8]) -> Result<Self> {
                let mut at = 0;
                let v = ($( { let (x, n) = $n::read_field(&bytes[at..])?; at += n; x }, )+);
                if at != bytes.len() {
                    return Err(malformed("trailing bytes after the last tuple field"));
                }
                Ok(v)
            }
        }
    )*};
}
tuple_impls!((A 0), (A 0, B 1), (A 0, B 1, C 2), (A 0, B 1, C 2, D 3));

/// Java's `String.hashCode` over the UTF-16 code units of `s` — what a Flink key of type
/// String hashes to, so keyed exchanges route exactly as Flink's KeyGroupStreamPartitioner.
pub fn java_string_hash(s: &str) -> i32 {
    let mut h: i32 = 0;
    if s.is_ascii() {
        for &b in s.as_bytes() {
            h = h.wrapping_mul(31).wrapping_add(i32::from(b));
        }
        return h;
    }
    for u in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(u));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::copy_payload;

    /// Every length through the word copies and past them, at every offset in a line:
    /// the bytes land exactly, the neighbours stay as they were.
    #[test]
    fn copy_payload_copies_exactly_the_payload() {
        let src: Vec<u8> = (1..=48u8).collect();
        for len in 0..=40 {
            for at in 0..8 {
                let mut out = [0xeeu8; 64];
                copy_payload(&mut out[at..at + len], &src[..len]);
                assert_eq!(&out[at..at + len], &src[..len], "len {len} at {at}");
                assert!(out[..at].iter().chain(&out[at + len..]).all(|&b| b == 0xee), "len {len} at {at}: neighbours");
            }
        }
    }
}
