//! Payload: sequence number, checksum, answer (a module of the latency bench).

use super::*;

pub(crate) fn seq_of(msg: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&msg[..8]);
    u64::from_le_bytes(b)
}

/// Folds the xor and the wrapping sum of 64-bit words into one checksum.
pub(crate) fn fold(xor: u64, sum: u64) -> u64 {
    xor ^ sum.rotate_left(32)
}

/// A cheap checksum that reads every byte, word by word: the xor and the sum of the
/// 64-bit words (independent per word, so the compiler vectorizes it). `bytes.len()` is a
/// multiple of 8.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    debug_assert!(bytes.len() % 8 == 0);
    let (mut xor, mut sum) = (0u64, 0u64);
    for w in bytes.chunks_exact(8) {
        let v = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        xor ^= v;
        sum = sum.wrapping_add(v);
    }
    fold(xor, sum)
}

/// Copies `src` into `dst` (same length) and returns [`checksum`]`(src)`, in one pass.
pub(crate) fn copy_checksum(src: &[u8], dst: &mut [u8]) -> u64 {
    debug_assert!(src.len() == dst.len() && src.len() % 8 == 0);
    let (mut xor, mut sum) = (0u64, 0u64);
    for (w, d) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        let v = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        xor ^= v;
        sum = sum.wrapping_add(v);
        d.copy_from_slice(w);
    }
    fold(xor, sum)
}

/// Checks that request `msg` is request `seq` of `payload` bytes.
pub(crate) fn check_request(msg: &[u8], seq: u64, payload: usize) -> Res<()> {
    if msg.len() != payload {
        return Err(format!("request of {} bytes, expected {payload}", msg.len()).into());
    }
    if seq_of(msg) != seq {
        return Err(format!("request {} arrived where {seq} was expected", seq_of(msg)).into());
    }
    Ok(())
}

/// Turns the request in `buf` into its answer: the last 8 bytes become `sum`.
pub(crate) fn seal_answer(buf: &mut [u8], sum: u64) {
    let n = buf.len();
    buf[n - 8..].copy_from_slice(&sum.to_le_bytes());
}

pub(crate) fn wrong_answer(seq: u64) -> Box<dyn std::error::Error + Send + Sync> {
    format!("wrong answer to request {seq}").into()
}
