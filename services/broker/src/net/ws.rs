//! MQTT over WebSocket (`ws://host:8083/mqtt`, subprotocol `mqtt`) for browsers.
//!
//! The WebSocket side runs on the tokio runtime (tokio-tungstenite) and each accepted
//! connection is bridged, byte for byte, to the broker's own MQTT/TCP listener over
//! loopback, so WebSocket clients get exactly the same v3.1.1/v5 handlers, limits and
//! sessions as TCP clients.
//!
//! Why a bridge and not ntex's `ws::WsTransport` (ntex-mqtt's `mqtt-ws-server` example):
//! that transport lives in the `ntex` crate, and every `ntex` 4.x release needs
//! `ntex-bytes` ≥ 1.11, which breaks the ntex-mqtt 9.0 we are pinned to on Rust 1.95;
//! and the broker's connections are served by its own workers (`net/`), not ntex.
//! The cost is one loopback hop per WebSocket message and the broker seeing
//! `127.0.0.1` as the peer address; browsers are a small share of the traffic. The
//! per-address connection cap is applied here on the browser's own address, and the
//! bridge's loopback connections are not counted again (`quota.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::quota::PerIp;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};

/// The only path served, as the MQTT-over-WebSocket convention and the issue ask.
pub const PATH: &str = "/mqtt";
const SUBPROTOCOL: &str = "mqtt";
/// A client that opens a socket and never completes the upgrade is dropped after this,
/// so idle sockets cannot pile up before the MQTT side's CONNECT timeout even starts.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds `addr` (port 0 allowed) and serves WebSocket clients on the current tokio
/// runtime, bridging each to the MQTT listener at `mqtt_addr`. Abort the returned task
/// to stop accepting; bridged connections end when the broker closes their TCP side.
pub async fn start(
    addr: &str,
    mqtt_addr: SocketAddr,
    per_ip: Arc<PerIp>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding WebSocket listener {addr}"))?;
    let local = listener.local_addr()?;
    let target = loopback_if_unspecified(mqtt_addr);
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    // The same per-address cap as the MQTT listener, on the real peer.
                    let Some(Some(ip)) = per_ip.admit(peer) else {
                        tracing::debug!(%peer, "connection limit per address reached");
                        continue;
                    };
                    let per_ip = per_ip.clone();
                    tokio::spawn(async move {
                        if let Err(e) = bridge(stream, target, &per_ip).await {
                            tracing::debug!(%peer, error = %e, "WebSocket connection ended");
                        }
                        per_ip.release(ip);
                    });
                }
                // Out of file descriptors and the like: keep serving the others.
                Err(e) => {
                    tracing::warn!(error = %e, "WebSocket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((local, task))
}

/// A listener on `0.0.0.0`/`::` is reached through the loopback address.
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Accepts the upgrade only on [`PATH`], and echoes `mqtt` when the client offers it
/// (MQTT 5.0 §6.0: the client offers `mqtt`; a browser rejects a protocol it did not
/// offer, so nothing is echoed to a client that offered none). A client offering only
/// other subprotocols is refused: it expects a protocol we do not speak.
#[allow(clippy::result_large_err)] // the signature is tungstenite's callback type
fn negotiate(req: &Request, mut res: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut r = ErrorResponse::new(Some(why.to_owned()));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != PATH {
        return Err(refuse(StatusCode::NOT_FOUND, "MQTT is served on /mqtt"));
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if offered.iter().any(|p| p.eq_ignore_ascii_case(SUBPROTOCOL)) {
        res.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    } else if !offered.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "subprotocol mqtt required"));
    }
    Ok(res)
}

async fn bridge(stream: TcpStream, mqtt: SocketAddr, per_ip: &PerIp) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(config));
    let mut ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .context("WebSocket handshake timed out")?
        .context("WebSocket handshake")?;
    // Bound first, so the listener knows this loopback peer is the bridge (counted
    // above under the client's own address, not under loopback).
    let socket = if mqtt.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(mqtt.ip(), 0))?;
    let local = socket.local_addr()?;
    per_ip.bridge_from(local);
    let mut tcp = match socket.connect(mqtt).await {
        Ok(tcp) => tcp,
        Err(e) => {
            per_ip.bridge_failed(local);
            return Err(anyhow::Error::new(e).context("connecting to the MQTT listener"));
        }
    };
    tcp.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Both branches are cancel-safe: `next` and `read` lose nothing when the other
        // branch wins.
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) => tcp.write_all(&data).await?,
                // MQTT 5.0 §6.0 [MQTT-6.0.0-1]: MQTT travels in binary frames only.
                Some(Ok(Message::Text(_))) => {
                    anyhow::bail!("text frame; MQTT needs binary frames")
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => return Err(e.into()),
            },
            n = tcp.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    // The broker closed the MQTT connection: close the WebSocket too.
                    let _ = ws.close(None).await;
                    break;
                }
                ws.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await?;
            }
        }
    }
    Ok(())
}
