//! A board's resend of a reading the broker stamped gets the same `ts` (`router/stamps.rs`):
//! the PUBACK was lost with the connection, the board resends the PUBLISH with its packet
//! id — with DUP=1, or with DUP=0 as rumqttc 0.25 does after a reconnect — and every
//! subscriber gets the same bytes again, which the historian stores once. A new message
//! with that packet id is a new reading. (Across a SIGKILL: `restart.rs`.)

mod common;
mod raw;

use common::{Broker, Client};
use tokio::net::TcpStream;

const TOPIC: &str = "lentera/gh-1/telemetry";

/// A QoS 1 PUBLISH with this packet id and DUP flag; `v5` adds the empty property block.
fn publish_qos1(v5: bool, packet_id: u16, dup: bool, payload: &[u8]) -> Vec<u8> {
    let props: &[u8] = if v5 { &[0] } else { &[] };
    let header = 0x32 | u8::from(dup) << 3;
    let body = [
        &raw::str16(TOPIC)[..],
        &packet_id.to_be_bytes(),
        props,
        payload,
    ]
    .concat();
    raw::packet(header, &body)
}

/// The board's connection, its session persistent (MQTT 5: expiry 60 s); returns it and
/// whether the CONNACK said the session was present.
async fn board(broker: &Broker, v5: bool) -> (TcpStream, bool) {
    let id = raw::str16("gh-1");
    let connect = if v5 {
        raw::connect_v5_with(0, &[0x11, 0, 0, 0, 60], &id)
    } else {
        raw::connect_v311_with(0, &id)
    };
    let mut s = raw::send_connect(broker.mqtt, &connect).await;
    let (h, body) = raw::read_packet(&mut s).await.expect("CONNACK");
    assert_eq!((h, body.get(1)), (0x20, Some(&0)), "accepted: {body:?}");
    (s, body[0] & 1 == 1)
}

/// Reads the PUBACK of `packet_id`.
async fn puback(s: &mut TcpStream, packet_id: u16) {
    let (h, body) = raw::read_packet(s).await.expect("PUBACK");
    assert_eq!((h, &body[..2]), (0x40, &packet_id.to_be_bytes()[..]));
}

/// The `ts` the broker wrote into the next reading `sub` gets, and the rest of it.
async fn next_ts(sub: &mut Client) -> (String, String) {
    let text = String::from_utf8(sub.next_publish().await.payload).unwrap();
    let rest = text
        .strip_prefix(r#"{"ts":""#)
        .unwrap_or_else(|| panic!("not stamped: {text}"));
    let (ts, rest) = rest.split_once('"').unwrap();
    (ts.to_owned(), rest.to_owned())
}

async fn resend_after_a_lost_puback(v5: bool) {
    let broker = Broker::start().await;
    let mut sub = Client::v3(&broker, "web").await;
    sub.subscribe("lentera/+/telemetry", 1).await;

    // Published; the connection drops with the PUBACK unread.
    let (mut b, _) = board(&broker, v5).await;
    raw::send(&mut b, &publish_qos1(v5, 7, false, br#"{"lux":1}"#)).await;
    let (first, rest) = next_ts(&mut sub).await;
    assert_eq!(rest, r#","lux":1}"#);
    drop(b);

    // Resent with DUP=1 on the next connection: the same reading.
    let (mut b, present) = board(&broker, v5).await;
    assert!(present);
    raw::send(&mut b, &publish_qos1(v5, 7, true, br#"{"lux":1}"#)).await;
    puback(&mut b, 7).await;
    assert_eq!(
        next_ts(&mut sub).await.0,
        first,
        "a DUP resend keeps its ts"
    );

    // rumqttc resends with DUP=0: the first PUBLISHes of a resumed session that match
    // what the last connection sent are resends too.
    raw::send(&mut b, &publish_qos1(v5, 8, false, br#"{"lux":2}"#)).await;
    let (second, _) = next_ts(&mut sub).await;
    drop(b);
    let (mut b, _) = board(&broker, v5).await;
    raw::send(&mut b, &publish_qos1(v5, 8, false, br#"{"lux":2}"#)).await;
    puback(&mut b, 8).await;
    assert_eq!(
        next_ts(&mut sub).await.0,
        second,
        "rumqttc's resend keeps its ts"
    );

    // The packet id used for another message: a new reading, a new ts.
    raw::send(&mut b, &publish_qos1(v5, 8, false, br#"{"lux":3}"#)).await;
    puback(&mut b, 8).await;
    let (third, rest) = next_ts(&mut sub).await;
    assert_eq!(rest, r#","lux":3}"#);
    assert_ne!(third, second);
    // Even with the same bytes once the resends are over (a new reading came), and
    // within one connection: without DUP a PUBLISH is a new reading.
    raw::send(&mut b, &publish_qos1(v5, 7, false, br#"{"lux":1}"#)).await;
    puback(&mut b, 7).await;
    let (fourth, _) = next_ts(&mut sub).await;
    assert_ne!(fourth, first);
    raw::send(&mut b, &publish_qos1(v5, 8, false, br#"{"lux":3}"#)).await;
    puback(&mut b, 8).await;
    let (fifth, _) = next_ts(&mut sub).await;
    assert_ne!(fifth, third);
    // A DUP resend within the connection is the same reading again.
    raw::send(&mut b, &publish_qos1(v5, 8, true, br#"{"lux":3}"#)).await;
    puback(&mut b, 8).await;
    assert_eq!(next_ts(&mut sub).await.0, fifth);
    // Only the same bytes: DUP=1 with another payload is not a resend of it.
    raw::send(&mut b, &publish_qos1(v5, 8, true, br#"{"lux":4}"#)).await;
    puback(&mut b, 8).await;
    assert_ne!(next_ts(&mut sub).await.0, fifth);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v311_resend_of_a_stamped_reading_keeps_its_ts() {
    resend_after_a_lost_puback(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_v5_resend_of_a_stamped_reading_keeps_its_ts() {
    resend_after_a_lost_puback(true).await;
}

/// A clean session ends with its connection, and what it was given with it: the client
/// drops its unacknowledged publishes too [MQTT-3.1.2-6], so there is no resend to match.
/// Within the connection a DUP=1 resend still keeps its ts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_session_keeps_its_stamps_only_while_it_lasts() {
    let broker = Broker::start().await;
    let mut sub = Client::v3(&broker, "web").await;
    sub.subscribe("lentera/+/telemetry", 1).await;
    let mut b = raw::connected(broker.mqtt, &raw::connect_v311("gh-1")).await;
    raw::send(&mut b, &publish_qos1(false, 1, false, br#"{"lux":1}"#)).await;
    puback(&mut b, 1).await;
    let (first, _) = next_ts(&mut sub).await;
    raw::send(&mut b, &publish_qos1(false, 1, true, br#"{"lux":1}"#)).await;
    puback(&mut b, 1).await;
    assert_eq!(next_ts(&mut sub).await.0, first);
    drop(b);
    let mut b = raw::connected(broker.mqtt, &raw::connect_v311("gh-1")).await;
    raw::send(&mut b, &publish_qos1(false, 1, true, br#"{"lux":1}"#)).await;
    puback(&mut b, 1).await;
    assert_ne!(next_ts(&mut sub).await.0, first, "a new session");
    broker.stop().await;
}
