//! One connection's bytes: framing of what it sends us, and the output we owe it.
//!
//! Memory is the point here. Mosquitto keeps a few hundred bytes per idle client; so
//! does this: the worker reads into one scratch buffer shared by all its connections,
//! a connection keeps bytes of its own only while a packet is incomplete (`partial`),
//! and output only while the socket has not taken it (`Output`).

use std::io;
use std::time::Instant;

use ntex_bytes::{BytePages, BytesMut};

use crate::net::transport::Transport;
use crate::session::{Active, Pending};

/// A connection on a worker.
pub struct Conn {
    pub io: Transport,
    /// Generation of this slab slot (see `mailbox::ConnKey`).
    pub generation: u32,
    /// The start of a packet whose end has not arrived yet.
    pub partial: Option<BytesMut>,
    pub out: Output,
    /// CONNECT must arrive by then (handshake), or the next packet (1.5× keep-alive).
    pub deadline: Instant,
    pub phase: Phase,
    /// The socket may hold more than was read (the read budget ran out, or input was
    /// paused): readiness is edge-triggered, so no new event will say so.
    pub more_to_read: bool,
    /// Waiting in the worker's list of connections to flush.
    pub dirty: bool,
    /// The peer's FIN (or an error) was reported: read until the end-of-file, because
    /// no further event will come once the last data is read.
    pub peer_closed: bool,
    /// Closing: our last bytes are out and our direction is shut; the peer's input is
    /// read and discarded until it closes too (or the linger ends), so it reads our
    /// DISCONNECT and a clean end of stream, not a reset.
    pub draining: bool,
    /// When the packet in `partial` started, in seconds of the worker's clock
    /// (`packet_timeout_secs` counts from it).
    pub partial_since: u32,
    /// The source address counted against `max_connections_per_ip` (`None`: not
    /// counted, e.g. the WebSocket bridge, which counts its own clients).
    pub ip: Option<std::net::IpAddr>,
}

pub enum Phase {
    /// Waiting for CONNECT.
    Handshake,
    /// CONNECT read; the authenticator has not answered yet. Input waits.
    Authenticating(Box<Pending>),
    Active(Box<Active>),
    /// A last packet (refusing CONNACK, DISCONNECT) is being flushed until `deadline`.
    Closing,
}

impl Conn {
    pub fn new(
        io: Transport,
        generation: u32,
        deadline: Instant,
        ip: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            io,
            generation,
            partial: None,
            out: Output::default(),
            deadline,
            phase: Phase::Handshake,
            more_to_read: true,
            dirty: false,
            peer_closed: false,
            draining: false,
            partial_since: 0,
            ip,
        }
    }

    pub fn active(&mut self) -> Option<&mut Active> {
        match &mut self.phase {
            Phase::Active(a) => Some(&mut **a),
            _ => None,
        }
    }

    /// Writes as much output as the socket takes. `Ok(true)`: nothing is left.
    pub fn flush(&mut self) -> io::Result<bool> {
        self.out.write_to(&mut self.io)
    }
}

/// Bytes owed to the client, as ntex-mqtt's encoders produce them (a list of pages).
/// Allocated on first use and given back as soon as the socket took everything.
#[derive(Default)]
pub struct Output {
    pages: Option<BytePages>,
}

impl Output {
    pub fn pages(&mut self) -> &mut BytePages {
        self.pages.get_or_insert_with(BytePages::default)
    }

    pub fn len(&self) -> usize {
        self.pages.as_ref().map_or(0, BytePages::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write_to(&mut self, io: &mut Transport) -> io::Result<bool> {
        if let Some(pages) = &mut self.pages {
            while let Some(mut page) = pages.take() {
                match io.write(&page) {
                    Ok(n) if n == page.len() => {}
                    Ok(n) => {
                        page.advance_to(n);
                        pages.prepend(page);
                        return Ok(false);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        pages.prepend(page);
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
            }
            self.pages = None;
        }
        io.flush()
    }
}

/// Seconds since the first call in this process: a 4-byte timestamp for [`Conn`]
/// (wraps after 136 years).
pub fn clock_secs(now: Instant) -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    now.saturating_duration_since(epoch).as_secs() as u32
}

impl Conn {
    /// A packet started arriving and is not complete after `timeout`.
    pub fn packet_overdue(&self, now: Instant, timeout: std::time::Duration) -> bool {
        let Some(p) = &self.partial else {
            return false;
        };
        // Complete packets waiting for paused input are not late.
        matches!(frame_len(p, usize::MAX), Ok(None))
            && u64::from(clock_secs(now).saturating_sub(self.partial_since)) >= timeout.as_secs()
    }
}

/// Why the bytes in hand are not a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The Remaining Length is not a valid variable byte integer (more than 4 bytes).
    Malformed,
    /// The packet is larger than the broker accepts (its whole size, as MQTT 5's
    /// Maximum Packet Size counts it).
    TooLarge(usize),
}

/// The size of the packet at the start of `buf` once all of it is there: `Ok(None)`
/// while more bytes are needed (MQTT §2.2.3: Remaining Length, 1–4 bytes).
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let total = 2 + i + remaining;
            if total > max {
                return Err(FrameError::TooLarge(total));
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(FrameError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_waits_for_the_whole_packet_and_checks_its_size() {
        assert_eq!(frame_len(&[], 100), Ok(None));
        assert_eq!(frame_len(&[0xc0], 100), Ok(None));
        assert_eq!(frame_len(&[0xc0, 0], 100), Ok(Some(2)));
        assert_eq!(frame_len(&[0x30, 3, 1, 2], 100), Ok(None));
        assert_eq!(frame_len(&[0x30, 3, 1, 2, 3, 9], 100), Ok(Some(5)));
        // 200 = 0xc8 0x01; total 203.
        assert_eq!(frame_len(&[0x30, 0xc8, 0x01], 300), Ok(None));
        assert_eq!(
            frame_len(&[0x30, 0xc8, 0x01], 202),
            Err(FrameError::TooLarge(203))
        );
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 1], usize::MAX),
            Err(FrameError::Malformed)
        );
        // The largest Remaining Length, 268,435,455, in four bytes.
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0x7f], usize::MAX),
            Ok(None)
        );
    }
}
