//! Refuses an oversized WebSocket frame as soon as its header arrives.
//!
//! actix-http's frame parser checks `max_frame_size` only once the whole frame is in
//! its buffer, so a header announcing 2^63 - 1 bytes (or simply more than the cap) makes
//! it wait for data that never comes while the connection stays open. This wraps the
//! request payload, follows frame boundaries in the client's byte stream (headers are
//! at most 14 bytes, payloads are skipped without copying) and ends the stream with an
//! error at the first header whose length is over the cap; the WebSocket task then
//! closes the connection with 1009.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

/// Follows frame boundaries; `tripped` is set when a header is over the cap.
#[derive(Debug)]
pub struct FrameScanner {
    max: u64,
    header: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    remaining: u64,
}

/// Header length once its first two bytes are known.
fn header_len(b0_b1: &[u8]) -> usize {
    let second = b0_b1[1];
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
        n => u64::from(n),
    }
}

impl FrameScanner {
    pub fn new(max: usize) -> Self {
        Self {
            max: max as u64,
            header: Vec::with_capacity(14),
            remaining: 0,
        }
    }

    /// Feeds client bytes; `Err` at the first frame header announcing more than `max`.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() as u64);
                self.remaining -= n;
                data = &data[n as usize..];
                continue;
            }
            self.header.push(data[0]);
            data = &data[1..];
            if self.header.len() >= 2 && self.header.len() == header_len(&self.header) {
                let len = payload_len(&self.header);
                self.header.clear();
                if len > self.max {
                    return Err(len);
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// The request payload with a [`FrameScanner`] in front.
pub struct FrameGuard<S> {
    inner: S,
    scanner: FrameScanner,
    tripped: Arc<AtomicBool>,
}

impl<S> FrameGuard<S> {
    /// `tripped` is set when an oversized frame was refused (for the close code).
    pub fn new(inner: S, max: usize, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            scanner: FrameScanner::new(max),
            tripped,
        }
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => match this.scanner.feed(&bytes) {
                Ok(()) => Poll::Ready(Some(Ok(bytes))),
                Err(_) => {
                    this.tripped.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u64, masked: bool) -> Vec<u8> {
        let m = if masked { 0x80 } else { 0 };
        let mut h = vec![0x81];
        if len < 126 {
            h.push(m | len as u8);
        } else if len <= 0xffff {
            h.push(m | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(m | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        if masked {
            h.extend_from_slice(&[1, 2, 3, 4]);
        }
        h
    }

    #[test]
    fn follows_frames_and_trips_on_the_first_oversized_header() {
        let mut s = FrameScanner::new(1000);
        let mut stream = Vec::new();
        for len in [5u64, 200, 1000] {
            stream.extend(header(len, true));
            stream.extend(std::iter::repeat_n(0u8, len as usize));
        }
        // Byte by byte and in one piece alike.
        for chunk in stream.chunks(1) {
            s.feed(chunk).unwrap();
        }
        s.feed(&stream).unwrap();
        assert_eq!(s.feed(&header(1001, true)), Err(1001));
        let mut s = FrameScanner::new(1000);
        assert_eq!(s.feed(&header(u64::MAX >> 1, true)), Err(u64::MAX >> 1));
        let mut s = FrameScanner::new(1000);
        let h = header(1 << 63, false);
        s.feed(&h[..5]).unwrap();
        assert_eq!(s.feed(&h[5..]), Err(1 << 63));
    }
}
