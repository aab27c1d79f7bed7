//! MQTT 5 protocol errors and refusals over a raw socket: each gets its reason code and
//! a reason string saying why (MQTT 5 §3.14.2.1, §4.13), and the connection then closes
//! where the specification says so.

mod common;

use std::time::Duration;

use common::{Broker, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn settings() -> lentera_broker::settings::Settings {
    let mut s = lentera_broker::settings::Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    s.auth.open = true;
    s.broker.mqtt_addr = "127.0.0.1:0".into();
    s.broker.admin_addr = "127.0.0.1:0".into();
    s.broker.data_dir = Default::default();
    s
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![header];
    let mut n = body.len();
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        p.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

fn str16(s: &str) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat()
}

/// Reads one packet: (first byte, body); `None` once the socket is closed.
async fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 1];
    match tokio::time::timeout(WAIT, s.read_exact(&mut h)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return None,
        Err(_) => panic!("nothing from the broker within {WAIT:?}"),
    }
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
}

/// An MQTT 5 client on a raw socket, connected (clean start, keep-alive 60 s).
async fn connect(broker: &Broker, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    let body = [&b"\0\x04MQTT\x05\x02\0\x3c\0"[..], &str16(id)].concat();
    s.write_all(&packet(0x10, &body)).await.unwrap();
    let (h, connack) = read_packet(&mut s).await.expect("CONNACK");
    assert_eq!((h, connack[1]), (0x20, 0), "connected");
    s
}

/// A server DISCONNECT's reason code and reason string (property 0x1F).
fn disconnect_reason(body: &[u8]) -> (u8, String) {
    let text = body
        .windows(1)
        .position(|w| w[0] == 0x1F)
        .and_then(|i| {
            let len = u16::from_be_bytes([*body.get(i + 1)?, *body.get(i + 2)?]) as usize;
            let s = body.get(i + 3..i + 3 + len)?;
            Some(String::from_utf8_lossy(s).into_owned())
        })
        .unwrap_or_default();
    (body[0], text)
}

/// Expects DISCONNECT with `code`, a reason string containing `says`, then the close.
async fn expect_disconnect(s: &mut TcpStream, code: u8, says: &str) {
    let (h, body) = read_packet(s).await.expect("a DISCONNECT before the close");
    assert_eq!(h, 0xE0, "DISCONNECT, got {h:#x} {body:?}");
    let (got, text) = disconnect_reason(&body);
    assert_eq!(got, code, "reason code ({text})");
    assert!(
        text.contains(says),
        "reason string {text:?} should say {says:?}"
    );
    assert_eq!(read_packet(s).await, None, "closed after DISCONNECT");
}

/// QoS 2 PUBLISH (packet id `id`, no properties).
fn publish_qos2(topic: &str, id: u16, payload: &[u8]) -> Vec<u8> {
    let body = [&str16(topic)[..], &id.to_be_bytes(), &[0], payload].concat();
    packet(0x34, &body)
}

/// MQTT 5 §3.3.4: a client with more QoS 1 and 2 publishes unacknowledged than the
/// Receive Maximum it was given ([MQTT-3.3.4-7] is the client's duty) is disconnected
/// with 0x93 Receive Maximum exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_unacknowledged_publishes_than_receive_maximum_get_disconnect_0x93() {
    let mut s = settings();
    s.broker.receive_maximum = 2;
    let broker = Broker::start_with(s).await;
    let mut c = connect(&broker, "greedy").await;
    // Two QoS 2 publishes, never released: both within the quota, each gets PUBREC.
    for id in [1u16, 2] {
        c.write_all(&publish_qos2("q/t", id, b"x")).await.unwrap();
        let (h, body) = read_packet(&mut c).await.unwrap();
        assert_eq!(
            (h, &body[..2]),
            (0x50, &id.to_be_bytes()[..]),
            "PUBREC {id}"
        );
    }
    c.write_all(&publish_qos2("q/t", 3, b"x")).await.unwrap();
    expect_disconnect(&mut c, 0x93, "unacknowledged").await;

    // Releasing frees the quota: PUBREL → PUBCOMP, then a third one is fine.
    let mut c = connect(&broker, "polite").await;
    for id in [1u16, 2, 3] {
        c.write_all(&publish_qos2("q/t", id, b"x")).await.unwrap();
        assert_eq!(read_packet(&mut c).await.unwrap().0, 0x50, "PUBREC {id}");
        c.write_all(&packet(0x62, &id.to_be_bytes())).await.unwrap();
        let (h, body) = read_packet(&mut c).await.unwrap();
        assert_eq!(
            (h, &body[..2]),
            (0x70, &id.to_be_bytes()[..]),
            "PUBCOMP {id}"
        );
    }
    broker.stop().await;
}

/// PUBREL for a packet id the broker is not waiting on: PUBCOMP 0x92 Packet Identifier
/// not found (MQTT 5 §3.7.2.1), with a reason string; the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_for_an_unknown_packet_id_gets_pubcomp_0x92() {
    let broker = Broker::start_with(settings()).await;
    let mut c = connect(&broker, "stray").await;
    c.write_all(&packet(0x62, &[0, 42])).await.unwrap();
    let (h, body) = read_packet(&mut c).await.unwrap();
    assert_eq!((h, &body[..3]), (0x70, &[0, 42, 0x92][..]), "{body:?}");
    assert!(
        body.windows(2).any(|w| w == b"42"),
        "reason string names the id"
    );
    c.write_all(&[0xC0, 0]).await.unwrap();
    assert_eq!(
        read_packet(&mut c).await,
        Some((0xD0, vec![])),
        "still connected"
    );
    broker.stop().await;
}

/// A PUBLISH with an empty topic and a Topic Alias the client never set: DISCONNECT
/// 0x82 Protocol Error (MQTT 5 §3.3.2.3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unset_topic_alias_gets_disconnect_0x82() {
    let broker = Broker::start_with(settings()).await;
    let mut c = connect(&broker, "alias").await;
    // Empty topic, properties: Topic Alias (0x23) = 7.
    let body = [&str16("")[..], &[3, 0x23, 0, 7], b"x"].concat();
    c.write_all(&packet(0x30, &body)).await.unwrap();
    expect_disconnect(&mut c, 0x82, "topic alias 7 is not set").await;
    broker.stop().await;
}

/// A second CONNECT on a connection is a protocol error [MQTT-3.1.0-2]: DISCONNECT 0x82.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connect_gets_disconnect_0x82() {
    let broker = Broker::start_with(settings()).await;
    let mut c = connect(&broker, "twice").await;
    let body = [&b"\0\x04MQTT\x05\x02\0\x3c\0"[..], &str16("twice")].concat();
    c.write_all(&packet(0x10, &body)).await.unwrap();
    expect_disconnect(&mut c, 0x82, "unexpected packet type 1").await;
    broker.stop().await;
}

/// A SUBSCRIBE without a topic filter is a protocol error [MQTT-3.8.3-2]: DISCONNECT
/// 0x82 with a reason string, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_without_filters_gets_disconnect_0x82() {
    let broker = Broker::start_with(settings()).await;
    let mut c = connect(&broker, "nofilter").await;
    c.write_all(&packet(0x82, &[0, 1, 0])).await.unwrap();
    expect_disconnect(&mut c, 0x82, "without a topic filter").await;
    broker.stop().await;
}

/// Refusals at CONNECT say why too: a will topic that is not a topic name gets CONNACK
/// 0x90 with a reason string (MQTT 5 §3.2.2.3.9), then the close [MQTT-3.2.2-7].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_carries_a_reason_string() {
    let broker = Broker::start_with(settings()).await;
    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    // Flags 0x06: clean start + will (QoS 0); no connect properties, no will properties.
    let body = [
        &b"\0\x04MQTT\x05\x06\0\x3c\0"[..],
        &str16("badwill"),
        &[0],
        &str16("bad/+/will"),
        &str16("gone"),
    ]
    .concat();
    s.write_all(&packet(0x10, &body)).await.unwrap();
    let (h, body) = read_packet(&mut s).await.expect("CONNACK");
    assert_eq!((h, body[1]), (0x20, 0x90), "Topic Name invalid: {body:?}");
    assert!(
        body.windows(4).any(|w| w == b"will"),
        "reason string: {body:?}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(3), read_packet(&mut s)).await;
    assert_eq!(closed.unwrap(), None, "closed after the refusal");
    broker.stop().await;
}

/// Issue #12: a refused reading at QoS 2 gets PUBREC 0x99 with a reason string, which
/// ends the flow (MQTT 5 §4.3.3): its packet id is free at once, so the next QoS 2
/// PUBLISH with that id is a new message and is routed, not taken for a resend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_qos2_reading_gets_pubrec_0x99_and_frees_its_packet_id() {
    let broker = Broker::start_with(settings()).await;
    let mut sub = common::Client::v3(&broker, "historian").await;
    sub.subscribe("lentera/+/telemetry", 2).await;
    let mut c = connect(&broker, "gh-1").await;
    c.write_all(&publish_qos2("lentera/gh-1/telemetry", 7, b"{\"lux\":-5}"))
        .await
        .unwrap();
    let (h, body) = read_packet(&mut c).await.unwrap();
    assert_eq!((h, &body[..3]), (0x50, &[0, 7, 0x99][..]), "{body:?}");
    assert!(
        body.windows(12).any(|w| w == b"out_of_range"),
        "reason string: {body:?}"
    );
    c.write_all(&publish_qos2("lentera/gh-1/telemetry", 7, b"{\"lux\":5}"))
        .await
        .unwrap();
    let (h, body) = read_packet(&mut c).await.unwrap();
    assert_eq!((h, &body[..2]), (0x50, &[0, 7][..]), "PUBREC {body:?}");
    assert!(body.len() == 2 || body[2] == 0, "success: {body:?}");
    let m = sub.next_publish().await;
    assert!(m.payload.ends_with(b"\"lux\":5}"), "{:?}", m.payload);
    assert_eq!(sub.try_next_publish(Duration::from_millis(300)).await, None);
    broker.stop().await;
}
