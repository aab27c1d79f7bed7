//! The benchmark payload: who sent it, its sequence number and when, padded to size.
//!
//! Publishers and subscribers run in the same process, so the send time is microseconds
//! on one monotonic clock ([`now_us`]) and latency needs no clock synchronisation.
//! Layout (little-endian): `sent_us: u64 | publisher: u32 | seq: u64 | padding`.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes taken by the header; smaller `--size` values are raised to this.
pub const HEADER: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_us: u64,
    pub publisher: u32,
    pub seq: u64,
}

/// Microseconds since the first call in this process.
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub fn encode(size: usize, publisher: u32, seq: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(size.max(HEADER));
    encode_into(&mut buf, size, publisher, seq, now_us());
    buf
}

/// Appends a payload stamped `sent_us` (for example the time a paced message was due,
/// so that a broker that falls behind is charged for the wait) to `buf`.
pub fn encode_into(buf: &mut Vec<u8>, size: usize, publisher: u32, seq: u64, sent_us: u64) {
    let end = buf.len() + size.max(HEADER);
    buf.extend_from_slice(&sent_us.to_le_bytes());
    buf.extend_from_slice(&publisher.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.resize(end, b'x');
}

/// `None` for a payload this tool did not write (e.g. a stray retained message).
pub fn decode(buf: &[u8]) -> Option<Stamp> {
    let sent_us = u64::from_le_bytes(buf.get(0..8)?.try_into().ok()?);
    let publisher = u32::from_le_bytes(buf.get(8..12)?.try_into().ok()?);
    let seq = u64::from_le_bytes(buf.get(12..20)?.try_into().ok()?);
    Some(Stamp {
        sent_us,
        publisher,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads_to_size() {
        let before = now_us();
        let buf = encode(100, 7, 42);
        assert_eq!(buf.len(), 100);
        let s = decode(&buf).unwrap();
        assert_eq!((s.publisher, s.seq), (7, 42));
        assert!(s.sent_us >= before && s.sent_us <= now_us());
        assert_eq!(encode(1, 0, 0).len(), HEADER);
        assert_eq!(decode(b"short"), None);
    }
}
