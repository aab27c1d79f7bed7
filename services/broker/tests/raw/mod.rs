//! Shared by the transport tests (WebSocket, TLS): an in-memory broker with its extra
//! listeners on OS-chosen ports, and hand-built MQTT packets for clients that speak
//! raw bytes over a transport rumqttc is not built for in this workspace.

#![allow(dead_code)] // each test file uses a different subset

use std::time::Duration;

use lentera_broker::settings::Settings;
use lentera_broker::startup::Application;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};

pub const WAIT: Duration = Duration::from_secs(5);

/// Settings for an in-memory broker on port 0 (so its WebSocket and TLS listeners are
/// on port 0 too).
pub fn settings() -> Settings {
    let mut settings = Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    settings.auth.open = true;
    settings.broker.mqtt_addr = "127.0.0.1:0".into();
    settings.broker.admin_addr = "127.0.0.1:0".into();
    settings.broker.data_dir = Default::default();
    settings
}

/// A running broker; stops when dropped.
pub struct Running {
    pub app_mqtt: std::net::SocketAddr,
    pub ws: Option<std::net::SocketAddr>,
    pub tls: Option<std::net::SocketAddr>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn start(settings: Settings) -> Running {
    let app = Application::build(settings).await.expect("broker starts");
    let (app_mqtt, ws, tls) = (app.mqtt_addr(), app.ws_addr(), app.tls_addr());
    let (stop, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    Running {
        app_mqtt,
        ws,
        tls,
        _stop: stop,
    }
}

/// A rumqttc MQTT 3.1.1 client on the plain TCP port, returned once connected.
pub async fn tcp_client(mqtt: std::net::SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 10);
    loop {
        if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.expect("tcp connects") {
            return (c, el);
        }
    }
}

/// Drives `el` until the first PUBLISH arrives, and returns it.
pub async fn next_publish(mut el: EventLoop) -> rumqttc::Publish {
    loop {
        if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
            return p;
        }
    }
}

pub fn with_len(header: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    [&[header, body.len() as u8][..], body].concat()
}

pub fn str16(s: &str) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat()
}

/// MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s.
pub fn connect_v311(id: &str) -> Vec<u8> {
    with_len(
        0x10,
        &[&b"\0\x04MQTT\x04\x02\0\x3c"[..], &str16(id)].concat(),
    )
}

/// MQTT 5.0 CONNECT, clean start, keep-alive 60 s, no properties.
pub fn connect_v5(id: &str) -> Vec<u8> {
    with_len(
        0x10,
        &[&b"\0\x04MQTT\x05\x02\0\x3c\0"[..], &str16(id)].concat(),
    )
}

/// MQTT 3.1.1 CONNACK: session not present, accepted.
pub const CONNACK_OK: [u8; 4] = [0x20, 2, 0, 0];

/// MQTT 3.1.1 SUBSCRIBE with packet id 1 at QoS 0; its SUBACK is [`SUBACK_1_QOS0`].
pub fn subscribe(topic: &str) -> Vec<u8> {
    with_len(0x82, &[&[0, 1][..], &str16(topic), &[0]].concat())
}

pub const SUBACK_1_QOS0: [u8; 5] = [0x90, 3, 0, 1, 0];

/// QoS 0 PUBLISH (the same bytes a broker sends to a QoS 0 subscriber).
pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    with_len(0x30, &[&str16(topic)[..], payload].concat())
}

// ---- any length, and reading what the broker answers ----

/// A Variable Byte Integer (MQTT §1.5.5 / §2.2.3).
pub fn vbi(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            return out;
        }
    }
}

/// A packet of any size: `header`, the Remaining Length, `body`.
pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    [&[header][..], &vbi(body.len()), body].concat()
}

/// Length-prefixed bytes (binary data, or a string that may be invalid on purpose).
pub fn bin16(b: &[u8]) -> Vec<u8> {
    [&(b.len() as u16).to_be_bytes()[..], b].concat()
}

/// An MQTT 5 property block: its length, then `props`.
pub fn props(props: &[u8]) -> Vec<u8> {
    [&vbi(props.len())[..], props].concat()
}

/// MQTT 5 CONNECT with these connect flags, properties and payload (client id first).
pub fn connect_v5_with(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let head = [&b"\0\x04MQTT\x05"[..], &[flags, 0, 0x3c]].concat();
    packet(0x10, &[&head[..], &props(properties), payload].concat())
}

/// MQTT 3.1.1 CONNECT with these connect flags and payload (client id first).
pub fn connect_v311_with(flags: u8, payload: &[u8]) -> Vec<u8> {
    let head = [&b"\0\x04MQTT\x04"[..], &[flags, 0, 0x3c]].concat();
    packet(0x10, &[&head[..], payload].concat())
}

/// SUBSCRIBE (packet id 1) of one filter with this options byte; `v5` adds the empty
/// property block.
pub fn subscribe_with(v5: bool, filter: &[u8], options: u8) -> Vec<u8> {
    let props: &[u8] = if v5 { &[0] } else { &[] };
    packet(
        0x82,
        &[&[0, 1][..], props, &bin16(filter), &[options]].concat(),
    )
}

/// UNSUBSCRIBE (packet id 1) of one filter.
pub fn unsubscribe_with(v5: bool, filter: &[u8]) -> Vec<u8> {
    let props: &[u8] = if v5 { &[0] } else { &[] };
    packet(0xA2, &[&[0, 1][..], props, &bin16(filter)].concat())
}

/// MQTT 5 PUBLISH at `qos` (packet id 1 unless QoS 0) with these properties.
pub fn publish_v5(
    topic: &[u8],
    qos: u8,
    retain: bool,
    properties: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let id: &[u8] = if qos > 0 { &[0, 1] } else { &[] };
    let header = 0x30 | (qos << 1) | u8::from(retain);
    packet(
        header,
        &[&bin16(topic)[..], id, &props(properties), payload].concat(),
    )
}

/// Reads one packet: (first byte, body); `None` once the broker closed the socket (an
/// orderly close or a reset). Panics when neither comes within [`WAIT`].
pub async fn read_packet(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut h = [0u8; 1];
        s.read_exact(&mut h).await.ok()?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        Some((h[0], body))
    };
    match tokio::time::timeout(WAIT, read).await {
        Ok(p) => p,
        Err(_) => panic!("neither a packet nor the close within {WAIT:?}"),
    }
}

/// Connects and sends `connect`; returns the socket without reading the answer.
pub async fn send_connect(addr: std::net::SocketAddr, connect: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(connect).await.unwrap();
    s
}

/// A connection whose CONNECT (either version) was accepted.
pub async fn connected(addr: std::net::SocketAddr, connect: &[u8]) -> tokio::net::TcpStream {
    let mut s = send_connect(addr, connect).await;
    let (h, body) = read_packet(&mut s).await.expect("CONNACK");
    assert_eq!(
        (h, body.get(1)),
        (0x20, Some(&0)),
        "CONNECT accepted: {body:?}"
    );
    s
}

/// Sends `bytes` on a connected socket.
pub async fn send(s: &mut tokio::net::TcpStream, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    s.write_all(bytes).await.unwrap();
}

/// The broker closes the connection without another packet.
pub async fn expect_closed(s: &mut tokio::net::TcpStream, what: &str) {
    if let Some((h, body)) = read_packet(s).await {
        panic!("{what}: expected the close, got {h:#04x} {body:02x?}");
    }
}

/// The broker answers CONNACK with `code`, then closes.
pub async fn expect_connack_refusal(s: &mut tokio::net::TcpStream, code: u8, what: &str) {
    match read_packet(s).await {
        Some((0x20, body)) if body.get(1) == Some(&code) => {}
        other => panic!("{what}: expected CONNACK {code:#04x}, got {other:02x?}"),
    }
    expect_closed(s, what).await;
}

/// The broker sends MQTT 5 DISCONNECT with `code`, then closes.
pub async fn expect_disconnect(s: &mut tokio::net::TcpStream, code: u8, what: &str) {
    match read_packet(s).await {
        Some((0xE0, body)) if body.first() == Some(&code) => {}
        other => panic!("{what}: expected DISCONNECT {code:#04x}, got {other:02x?}"),
    }
    expect_closed(s, what).await;
}

/// The connection still works: PINGREQ is answered with PINGRESP.
pub async fn expect_open(s: &mut tokio::net::TcpStream, what: &str) {
    send(s, &[0xC0, 0]).await;
    match read_packet(s).await {
        Some((0xD0, _)) => {}
        other => panic!("{what}: expected PINGRESP, got {other:02x?}"),
    }
}
