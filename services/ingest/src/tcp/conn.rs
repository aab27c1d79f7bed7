//! One TCP connection: framing, one reply per request line, HELLO binding and relay writes.
//!
//! Framing is done here by hand rather than with `LinesCodec` because two rules need the
//! raw buffer: on a connection that has never sent a newline, a partial line that sits
//! still for `tcp_partial_line_ms` is treated as complete (the seed sketch never sends a
//! newline), and a trailing line without a newline is still answered when the board
//! half-closes.
//!
//! Once a connection has sent a newline it is a newline-terminated board, and only a
//! newline (or EOF) ends its lines: a line that arrives in two TCP segments, however far
//! apart, is one line. Timing never splits it, because `gh-3 temperature=2` … `6.5`
//! would otherwise be two wrong answers (an `OK` for 2 °C, an `ERR` for the rest). Its
//! partial line waits up to the idle timeout and the line-length limit.
//!
//! Identity (closed mode): `HELLO <device> <token>` or `AUTH <token>` authenticates the
//! connection as one device and binds it; before that every line but `PING` is answered
//! `ERR unauthorized`, and a failed attempt binds nothing (so a HELLO can no longer take
//! another connection's device without its token). Afterwards readings must be that
//! device's (`ERR device_mismatch`). When the registry revokes the device (disabled,
//! rotated, removed) the connection is told `ERR unauthorized` and closed. Each reading
//! line takes one message from the device's quota (`ERR rate_limited`).

use std::net::SocketAddr;
use std::time::Duration;

use lentera_auth::{Denied, retry_after_secs};
use lentera_protocol::{DeviceId, DeviceStatus, LampCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};

use super::Shared;
use super::line::{self, LineError, Request, Secret};
use super::relay::{CONNECTION_QUEUE, ConnId};
use crate::publish::Publisher;
use crate::stamps::{Origin, Received};

/// Why the connection ended; only logged.
#[derive(Debug)]
enum End {
    Eof,
    Shutdown,
    Idle,
    LineTooLong,
    /// The registry no longer admits the device this connection authenticated as.
    Revoked,
    Io(std::io::Error),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

pub struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnId,
    shared: Shared,
    /// Bytes received but not yet ended by a newline.
    buf: Vec<u8>,
    /// True once the peer has sent a newline: from then on its lines end at newlines
    /// only, never after a pause (see the module docs).
    sent_newline: bool,
    /// The device this connection said HELLO as; relay target and default device. In
    /// closed mode set only by a successful HELLO/AUTH: then it is also the one device
    /// this connection may speak for.
    bound: Option<DeviceId>,
    /// Closed mode, once authenticated: the registry's revocation notices.
    revocations: Option<broadcast::Receiver<String>>,
    /// Cloned into the registry on HELLO; `commands` receives what the relay sends.
    commands_tx: mpsc::Sender<LampCommand>,
    commands: mpsc::Receiver<LampCommand>,
}

impl Connection {
    pub fn new(stream: TcpStream, peer: SocketAddr, id: ConnId, shared: Shared) -> Self {
        let (commands_tx, commands) = mpsc::channel(CONNECTION_QUEUE);
        Self {
            stream,
            peer,
            id,
            shared,
            buf: Vec::new(),
            sent_newline: false,
            bound: None,
            revocations: None,
            commands_tx,
            commands,
        }
    }

    /// Serves until EOF, error, idle timeout, an over-long line or shutdown; then releases
    /// the device binding and announces the device offline if it was still ours.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        self.shared.stats.tcp_connections.inc();
        tracing::debug!(peer = %self.peer, "TCP connection opened");
        let end = self.serve(shutdown).await;
        match &end {
            End::Io(e) => tracing::debug!(peer = %self.peer, error = %e, "TCP connection failed"),
            other => tracing::debug!(peer = %self.peer, end = ?other, "TCP connection closed"),
        }
        self.release();
        self.shared.stats.tcp_connections.dec();
        if matches!(end, End::LineTooLong | End::Revoked) {
            linger_close(self.stream).await;
        }
    }

    async fn serve(&mut self, shutdown: watch::Receiver<bool>) -> End {
        // Waited on in the select; `shutdown` itself is read between lines.
        let mut stopping = shutdown.clone();
        let limits = self.shared.limits.clone();
        let mut chunk = vec![0u8; 4096];
        let mut idle_deadline = Instant::now() + limits.idle_timeout;
        let mut partial_deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                // Shutdown is checked between lines only, so a line being handled
                // (possibly waiting for PUBACK) is always answered first.
                biased;
                () = stopped(&mut stopping) => return End::Shutdown,
                // Before input: a line that arrives with the revocation already
                // announced is refused, not answered OK.
                notice = next_revocation(&mut self.revocations) => {
                    if self.is_revoked(notice) {
                        self.shared.stats.reject("revoked");
                        let err = LineError::new("unauthorized", "this device's credentials were revoked; closing");
                        return match self.write_line(&err.reply()).await {
                            Ok(()) => End::Revoked,
                            Err(e) => e,
                        };
                    }
                }
                Some(cmd) = self.commands.recv() => {
                    if let Err(e) = self.write_line(cmd.tcp_line()).await {
                        return e;
                    }
                    self.shared.stats.relayed.inc();
                }
                read = self.stream.read(&mut chunk) => {
                    let n = match read {
                        Ok(n) => n,
                        Err(e) => return End::Io(e),
                    };
                    if n == 0 {
                        // A final line without newline still deserves its answer.
                        let rest = std::mem::take(&mut self.buf);
                        if !rest.is_empty() && rest.len() <= limits.max_line_bytes {
                            let _ = self.handle_line(&rest).await;
                        }
                        return End::Eof;
                    }
                    idle_deadline = Instant::now() + limits.idle_timeout;
                    self.sent_newline |= chunk[..n].contains(&b'\n');
                    self.buf.extend_from_slice(&chunk[..n]);
                    if let Err(end) = self.handle_complete_lines(&shutdown).await {
                        return end;
                    }
                    partial_deadline = match (self.buf.is_empty(), limits.partial_line) {
                        (false, Some(wait)) if !self.sent_newline => Some(Instant::now() + wait),
                        _ => None,
                    };
                }
                _ = sleep_until(idle_deadline) => return End::Idle,
                _ = sleep_until(partial_deadline.unwrap_or(idle_deadline)), if partial_deadline.is_some() => {
                    partial_deadline = None;
                    let line = std::mem::take(&mut self.buf);
                    if let Err(end) = self.handle_line(&line).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Answers every newline-terminated line in the buffer, stopping early on shutdown.
    async fn handle_complete_lines(&mut self, shutdown: &watch::Receiver<bool>) -> Result<(), End> {
        let max = self.shared.limits.max_line_bytes;
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.len() > max {
                return Err(self.line_too_long().await);
            }
            self.handle_line(&line).await?;
            if *shutdown.borrow() {
                return Err(End::Shutdown);
            }
        }
        if self.buf.len() > max {
            return Err(self.line_too_long().await);
        }
        Ok(())
    }

    /// After an over-long line the stream cannot be re-synchronised: say so and close.
    async fn line_too_long(&mut self) -> End {
        let max = self.shared.limits.max_line_bytes;
        self.shared.stats.reject("line_too_long");
        let err = LineError::new(
            "line_too_long",
            format!("lines are limited to {max} bytes; closing"),
        );
        match self.write_line(&err.reply()).await {
            Ok(()) => End::LineTooLong,
            Err(e) => e,
        }
    }

    async fn handle_line(&mut self, raw: &[u8]) -> Result<(), End> {
        let (parsed, stamped) = {
            // A reading without `ts` gets a receive time unique for its device, from the
            // stamper every door of this process shares (released before any await).
            let mut receipt = self.shared.stamps.receipt();
            let now = receipt.now();
            let mut stamped = false;
            let parsed = match std::str::from_utf8(raw) {
                Ok(text) => line::parse(text, self.bound.as_ref(), |d| {
                    stamped = true;
                    receipt.stamp(d)
                }),
                Err(_) => Err(LineError::not_utf8()),
            };
            // The grammar stays pure; plausibility is configuration, checked here.
            let parsed = parsed.and_then(|req| match req {
                Request::Reading(r) => match self.shared.reading_limits.check(&r, now) {
                    Ok(()) => Ok(Request::Reading(r)),
                    Err(e) => Err(e.into()),
                },
                other => Ok(other),
            });
            (parsed, stamped)
        };
        let closed = !self.shared.identity.is_open();
        let reply = match parsed {
            Ok(Request::Empty) => return Ok(()),
            Ok(Request::Ping) => Ok("PONG".to_owned()),
            Ok(Request::Hello { device, token }) => match self.admit(Some(device), token).await {
                Ok(device) => return self.hello(device).await,
                Err(e) => Err(e),
            },
            Ok(Request::Auth { token }) => match self.admit(None, Some(token)).await {
                Ok(device) => return self.hello(device).await,
                Err(e) => Err(e),
            },
            // Closed: nothing is accepted before the connection authenticated.
            _ if closed && self.bound.is_none() => Err(unauthorized()),
            Ok(Request::Reading(reading)) => match self.allowed(&reading.device) {
                Ok(()) => {
                    let origin = if stamped {
                        Origin::Fresh
                    } else {
                        Origin::Board
                    };
                    self.reading(Received::one(reading, origin)).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let reply = reply.unwrap_or_else(|e| {
            self.shared.stats.reject(e.code);
            e.reply()
        });
        self.write_line(&reply).await
    }

    /// The device a HELLO (`device` given) or AUTH (`device` None) may bind. Open mode:
    /// the HELLO's device, token or not (AUTH has no registry to ask). Closed: the
    /// device the token admits, which must be the HELLO's.
    async fn admit(
        &mut self,
        device: Option<DeviceId>,
        token: Option<Secret>,
    ) -> Result<DeviceId, LineError> {
        let identity = self.shared.identity.clone();
        if identity.is_open() {
            return device.ok_or_else(|| {
                LineError::new(
                    "unauthorized",
                    "this ingest runs open, without a registry: use HELLO <device>",
                )
            });
        }
        let token = token.ok_or_else(unauthorized)?;
        // Subscribed before the check, so a revocation right after it is not missed.
        let notices = identity.registry().map(|r| r.revocations());
        let admitted = match &device {
            Some(d) => identity.device(d, &token.0).await,
            None => identity.token(&token.0).await,
        };
        match admitted {
            Ok(d) => {
                if self.revocations.is_none() {
                    self.revocations = notices;
                }
                Ok(d)
            }
            Err(Denied::Unauthorized) => Err(unauthorized()),
            Err(Denied::Unavailable) => Err(LineError::new(
                "registry_unavailable",
                "the device registry is not available yet; retry later",
            )),
        }
    }

    /// May this connection send a reading of `device` now? Closed mode: only the device
    /// it authenticated as. Both modes: within the device's quota.
    fn allowed(&self, device: &DeviceId) -> Result<(), LineError> {
        if !self.shared.identity.is_open() && self.bound.as_ref() != Some(device) {
            return Err(LineError::new(
                "device_mismatch",
                "this connection may send readings of the device it authenticated as only",
            ));
        }
        self.shared.identity.rate(device).map_err(|wait| {
            LineError::new(
                "rate_limited",
                format!(
                    "this device is over its message rate; retry in {} s",
                    retry_after_secs(wait)
                ),
            )
        })
    }

    /// True when a revocation notice (or a lag in them) means this connection's device
    /// is no longer admitted.
    fn is_revoked(&mut self, notice: Result<String, RecvError>) -> bool {
        let Some(device) = self.bound.clone() else {
            return false;
        };
        match notice {
            // Disabled, removed or a new token: the token this connection showed is dead.
            Ok(id) => id == device.as_str(),
            // Notices were lost: the device may be gone (a rotation in the lost notices
            // goes unnoticed until the connection ends, the price of not keeping tokens).
            Err(RecvError::Lagged(_)) => !self.shared.identity.still_admitted(&device),
            Err(RecvError::Closed) => {
                self.revocations = None;
                false
            }
        }
    }

    /// Publishes one line's reading; `OK` once the broker has it. A line repeating one
    /// answered `ERR broker_unavailable` while the broker may have it (the board's retry,
    /// on this connection or a new one) gets that line's receive time again, so it is
    /// stored once (`crate::in_doubt`).
    async fn reading(&self, mut received: Received) -> Result<String, LineError> {
        self.shared.stamps.settle(&mut received);
        match self.shared.publisher.readings(&received.readings).await {
            Ok(()) => {
                self.shared.stats.accepted_tcp.inc();
                Ok("OK".to_owned())
            }
            Err(e) => {
                self.shared.stamps.failed(&received, &e);
                Err(LineError::new(Publisher::error_code(&e), e.to_string()))
            }
        }
    }

    /// Binds this connection to `device` (replacing any other connection's binding),
    /// answers `OK`, then sends the device's last known lamp command, if any.
    async fn hello(&mut self, device: DeviceId) -> Result<(), End> {
        if self.bound.as_ref().is_some_and(|d| *d != device) {
            self.release();
        }
        let last = self
            .shared
            .registry
            .bind(&device, self.id, self.commands_tx.clone());
        self.shared.publisher.status(&device, DeviceStatus::Online);
        tracing::info!(peer = %self.peer, device = ?device.as_str(), "TCP board bound");
        self.bound = Some(device);
        self.write_line("OK").await?;
        if let Some(cmd) = last {
            self.write_line(cmd.tcp_line()).await?;
            self.shared.stats.relayed.inc();
        }
        Ok(())
    }

    /// Drops the binding if it is still ours and announces the device offline.
    fn release(&mut self) {
        if let Some(device) = self.bound.take()
            && self.shared.registry.unbind(&device, self.id)
        {
            self.shared.publisher.status(&device, DeviceStatus::Offline);
        }
    }

    /// Writes one line; a board that stops reading for the idle timeout is dropped rather
    /// than pinning this task forever.
    async fn write_line(&mut self, line: &str) -> Result<(), End> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        match tokio::time::timeout(self.shared.limits.idle_timeout, self.stream.write_all(&out))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Io(e)),
            Err(_) => Err(End::Idle),
        }
    }
}

/// The next revocation notice; never, without a receiver.
async fn next_revocation(
    rx: &mut Option<broadcast::Receiver<String>>,
) -> Result<String, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn unauthorized() -> LineError {
    LineError::new(
        "unauthorized",
        "authenticate first: HELLO <device> <token> or AUTH <token>",
    )
}

/// Resolves once shutdown has been requested (or its sender is gone). Returns `()` so
/// no non-`Send` watch guard ends up inside a `select!` output held across an await.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Closes so that the peer reliably reads what we wrote last: a close with unread input
/// makes the kernel send RST, which can destroy our final `ERR` line in flight. So: send
/// FIN, then discard input briefly until the peer closes too.
pub async fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0usize;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > 1 << 20 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
