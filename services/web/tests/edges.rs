//! The loose edges of issue 13 over raw sockets: `/ws` frame and message caps, eviction
//! of a client that never answers pings, JSON bodies for every error, body and header
//! read timeouts.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TestApp, closed_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw WebSocket after the handshake (the bearer token is op's).
async fn raw_ws(app: &TestApp) -> TcpStream {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        app.addr, app.token
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads until the server closes the connection; returns the bytes and how long it took.
/// Never writes: no pong, no close reply.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + within).into(), s.read(&mut buf)).await {
            Err(_) => panic!("not closed within {within:?}; got {:02x?}", all),
            Ok(Ok(0)) | Ok(Err(_)) => return (all, start.elapsed()),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// A masked client frame header (mask key 0, so the payload goes as is).
fn frame_header(opcode_byte: u8, len: u64) -> Vec<u8> {
    let mut h = vec![opcode_byte];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// True when `bytes` hold a server close frame (opcode 8) with `code`.
fn has_close(bytes: &[u8], code: u16) -> bool {
    bytes
        .windows(4)
        .any(|w| w[0] == 0x88 && w[1] >= 2 && u16::from_be_bytes([w[2], w[3]]) == code)
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_frames_announcing_huge_lengths_and_oversized_messages_are_closed() {
    let app = TestApp::spawn().await;
    for len in [1u64 << 63, u64::MAX >> 1, 64 * 1024 + 1] {
        let mut s = raw_ws(&app).await;
        s.write_all(&frame_header(0x81, len)).await.unwrap();
        let (bytes, _) = until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(has_close(&bytes, 1009), "len {len}: close 1009 expected");
    }
    // Continuations: two 40 KiB fragments make an 80 KiB message, over the 64 KiB cap.
    let mut s = raw_ws(&app).await;
    let part = vec![b'a'; 40 * 1024];
    let mut first = frame_header(0x01, part.len() as u64); // text, not FIN
    first.extend_from_slice(&part);
    let mut second = frame_header(0x80, part.len() as u64); // continuation, FIN
    second.extend_from_slice(&part);
    s.write_all(&first).await.unwrap();
    let _ = s.write_all(&second).await;
    let (bytes, _) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        has_close(&bytes, 1009),
        "oversized message: close 1009 expected"
    );

    // The server is fine afterwards and no client is left counted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("lentera_web_ws_clients 0"), "{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_answers_pings_is_evicted_after_the_timeout() {
    let app = TestApp::spawn_with(closed_port(), |s| {
        s.web.heartbeat_secs = 1;
        s.web.client_timeout_secs = 2;
    })
    .await;
    let mut s = raw_ws(&app).await;
    let (bytes, took) = until_closed(&mut s, Duration::from_secs(8)).await;
    assert!(
        took >= Duration::from_secs(2),
        "not before the timeout: {took:?}"
    );
    assert!(
        has_close(&bytes, 1008),
        "closed with policy violation (no pong)"
    );
    // Pings were sent meanwhile (opcode 9).
    assert!(bytes.windows(2).any(|w| w == [0x89, 0x00]), "pings sent");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("lentera_web_ws_clients 0"), "{metrics}");

    // A client that answers (tungstenite pongs automatically while reading) stays.
    use futures_util::StreamExt;
    let mut ws = app.ws("/ws").await;
    let stay = tokio::time::timeout(Duration::from_secs(4), async {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                return false;
            }
        }
        false
    })
    .await;
    assert!(
        stay.is_err(),
        "an answering client is kept past the timeout"
    );
    app.stop().await;
}

async fn json_error(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{status} is JSON"
    );
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].is_string() && v["detail"].is_string(), "{v}");
    (status, v)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_body_is_json() {
    let app = TestApp::spawn().await;
    let (s, v) = json_error(app.get("/nope").await).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")));
    let (s, v) = json_error(app.get("/api/v1/lamps/lamp-1/mode").await).await;
    assert_eq!((s, v["error"].as_str()), (405, Some("method_not_allowed")));
    let (s, v) = json_error(
        app.http
            .delete(app.url("/api/v1/lamps"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 405, "{v}");
    let big = "x".repeat(64 * 1024);
    let (s, v) = json_error(
        app.http
            .put(app.url("/api/v1/lamps/lamp-1/mode"))
            .body(big.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (413, Some("body_too_large")));
    let (s, v) = json_error(
        app.http
            .post(app.url("/api/v1/devices"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"id":"{big}"}}"#))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (413, Some("body_too_large")));
    let (s, _) = json_error(app.get("/api/v1/devices/gh-1/readings?limit=x").await).await;
    assert_eq!(s, 400);
    // /ws without the upgrade headers.
    let (s, v) = json_error(app.get("/ws").await).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("not_a_websocket")));
    let (s, _) = json_error(app.get("/ws?colour=red").await).await;
    assert_eq!(s, 400);
    app.stop().await;
}

/// Sends `head` and part of a body, then stalls; returns the response text.
async fn stall(app: &TestApp, head: &str) -> (String, Duration) {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (bytes, took) = until_closed(&mut s, Duration::from_secs(8)).await;
    (String::from_utf8_lossy(&bytes).into_owned(), took)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_bodies_get_408_json_and_stalled_headers_are_dropped() {
    let app = TestApp::spawn_with(closed_port(), |s| {
        s.web.body_timeout_secs = 1;
        s.web.header_timeout_secs = 1;
    })
    .await;
    let (text, took) = stall(
        &app,
        &format!(
            "PUT /api/v1/lamps/lamp-1/mode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"mo",
            app.token
        ),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""error":"body_timeout""#), "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The login door reads its body under the same deadline.
    let (text, _) = stall(
        &app,
        "POST /api/v1/session HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{\"na",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    let (text, took) = stall(&app, "GET /api/v1/devices HTTP/1.1\r\nHost: x\r\n").await;
    assert!(took < Duration::from_secs(5), "{took:?} {text}");
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    app.stop().await;
}
