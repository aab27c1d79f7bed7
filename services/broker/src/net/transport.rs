//! A connection's byte stream: plain TCP, or TCP under TLS (rustls, driven by hand
//! because the workers are plain non-blocking event loops, not an async runtime).
//!
//! Both give the same three calls: `read` plaintext (`WouldBlock` when the socket has
//! nothing more), `write` plaintext (may take less than offered, or `WouldBlock`), and
//! `flush` whatever the transport itself still holds (TLS records).

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;

pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<Tls>),
}

pub struct Tls {
    sock: TcpStream,
    tls: rustls::ServerConnection,
}

/// rustls buffers encrypted output without bound unless told; with a limit its writer
/// takes only part of what is offered, and the connection's own output buffer holds
/// the rest, so the same backpressure applies as on plain TCP.
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

impl Transport {
    pub fn tls(sock: TcpStream, config: &Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let mut tls = rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Transport::Tls(Box::new(Tls { sock, tls })))
    }

    /// Plain TCP: a short read means the socket is empty (rustls may hold more).
    pub fn is_plain(&self) -> bool {
        matches!(self, Transport::Tcp(_))
    }

    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// Reads plaintext; `Ok(0)` is the end of the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Tls(t) => {
                let n = t.tls.writer().write(buf)?;
                t.flush()?;
                if n == 0 && !buf.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            }
        }
    }

    /// Writes what the transport itself holds; true when nothing is left.
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Transport::Tcp(_) => Ok(true),
            Transport::Tls(t) => t.flush(),
        }
    }

    /// Ends the connection: a TLS close_notify first, then both directions.
    /// Ends our direction only (TLS close_notify, then FIN): the peer reads what was
    /// sent, then the end of the stream, while its own input is still taken.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.flush();
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Write);
    }

    pub fn shutdown(&mut self) {
        if let Transport::Tls(t) = self {
            t.tls.send_close_notify();
            let _ = t.flush();
        }
        let _ = self.socket().shutdown(std::net::Shutdown::Both);
    }
}

impl Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // No plaintext buffered: feed rustls more records from the socket.
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the peer (a plain MQTT client on the TLS port gets an alert, not
                // a CONNACK), then give up on the connection.
                let _ = self.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages and alerts go out as soon as rustls has them.
            self.flush()?;
        }
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
