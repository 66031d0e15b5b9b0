//! Record payloads against the decoders (`FromRecord`), with a round trip for what decodes:
//! re-encoding an accepted payload must give back exactly its bytes.

use shmflow::record::{FromRecord, Record};
use crate::synthetic::Synthetic;

fn encode<R: Record + ?Sized>(r: &R) -> Vec<u8> {
    let mut out = vec![0u8; r.serialized_len()];
    r.serialize_into(&mut out);
    out
}

/// The harness.
pub fn records(data: &[u8]) {
    if let Ok(s) = <&str>::from_record(data) {
        assert_eq!(s.as_bytes(), data);
    }
    if let Ok(s) = String::from_record(data) {
        assert_eq!(s.as_bytes(), data);
    }
    if let Ok(v) = u64::from_record(data) {
        assert_eq!(encode(&v), data);
    }
    if let Ok(v) = u32::from_record(data) {
        assert_eq!(encode(&v), data);
    }
    match <(String, u64)>::from_record(data) {
        Ok(v) => assert_eq!(encode(&v), data),
        Err(e) => drop(e.to_string()),
    }
    match <(&str, u64)>::from_record(data) {
        Ok(v) => assert_eq!(encode(&v), data),
        Err(e) => drop(e.to_string()),
    }
    match <(&[u8], u32, u64)>::from_record(data) {
        Ok(v) => assert_eq!(encode(&v), data),
        Err(e) => drop(e.to_string()),
    }
    match <(u64, &str, &[u8], i32)>::from_record(data) {
        Ok(v) => assert_eq!(encode(&v), data),
        Err(e) => drop(e.to_string()),
    }
    match <(&[u8],)>::from_record(data) {
        Ok(v) => assert_eq!(encode(&v), data),
        Err(e) => drop(e.to_string()),
    }
    match Synthetic::from_record(data) {
        Ok(s) => {
            assert_eq!(s.len as usize, data.len());
            assert!(s.len >= 8);
            assert!(s.bad <= s.len - 8);
            if s.bad == 0 {
                assert_eq!(encode(&s), data, "a payload with no bad bytes is the generator's pattern");
            }
        }
        Err(e) => {
            assert!(data.len() < 8);
            drop(e.to_string());
        }
    }
}
