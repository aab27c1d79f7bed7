//! QoS 2 in both directions and persistent sessions (in memory) through the real broker:
//! offline queueing, resume with session_present, DUP redelivery, clean session, v5
//! session expiry, the bounded queue's drop-newest policy, takeover keeping the session.

mod common;

use std::time::Duration;

use common::{Broker, Client, Ev, reading};

fn v3_persistent(broker: &Broker, id: &str) -> rumqttc::MqttOptions {
    let mut o = Client::v3_options(broker, id);
    o.set_clean_session(false);
    o
}

fn v5_session(
    broker: &Broker,
    id: &str,
    clean_start: bool,
    expiry: u32,
) -> rumqttc::v5::MqttOptions {
    let mut o = Client::v5_options(broker, id);
    o.set_clean_start(clean_start);
    o.set_session_expiry_interval(Some(expiry));
    o
}

/// [MQTT-4.3.3-1] publisher flow PUBLISH → PUBREC → PUBREL → PUBCOMP, and the server's
/// own QoS 2 flow to a subscriber granted QoS 2 ([MQTT-3.8.4-6] grants as requested);
/// [MQTT-4.6.0-6] messages on one topic arrive in the order published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_flows_both_ways_in_order_for_v3_and_v5() {
    let broker = Broker::start().await;
    let mut sub3 = Client::v3(&broker, "s3").await;
    assert_eq!(sub3.subscribe("q2/#", 2).await, 2);
    let mut sub5 = Client::v5(&broker, "s5").await;
    assert_eq!(sub5.subscribe("q2/#", 2).await, 2);
    let mut p3 = Client::v3(&broker, "p3").await;
    let mut p5 = Client::v5(&broker, "p5").await;

    p3.publish("q2/a", b"first", 2, false).await;
    p3.expect("PUBREC", |e| matches!(e, Ev::PubRec)).await;
    p3.expect("PUBCOMP", |e| matches!(e, Ev::PubComp)).await;
    for i in 0..20 {
        p5.publish("q2/b", format!("{i}").as_bytes(), 2, false)
            .await;
    }
    p5.expect("PUBCOMP", |e| matches!(e, Ev::PubComp)).await;

    for s in [&mut sub3, &mut sub5] {
        let m = s.next_publish().await;
        assert_eq!((&m.payload[..], m.qos), (&b"first"[..], 2));
        for i in 0..20 {
            let m = s.next_publish().await;
            assert_eq!((m.payload, m.qos), (format!("{i}").into_bytes(), 2));
        }
        // The subscriber saw the server's PUBREL, so its side of the flow completed.
        s.expect("PUBREL", |e| matches!(e, Ev::PubRel)).await;
    }

    // [MQTT-3.8.4-6]: a QoS 1 publication reaches a QoS 2 subscriber at QoS 1.
    p3.publish("q2/c", b"one", 1, false).await;
    assert_eq!(sub3.next_publish().await.qos, 1);
    broker.stop().await;
}

/// [MQTT-3.1.2-4] a clean_session=0 session is resumed with its subscriptions and the
/// QoS 1/2 messages that arrived while the client was away; [MQTT-3.2.2-2]
/// session_present=1 on resume. QoS 0 is not queued for an absent client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_while_offline_and_resumes_with_session_present() {
    let broker = Broker::start().await;
    let mut h = Client::connect_v3(v3_persistent(&broker, "historian")).await;
    assert!(!h.session_present, "a new session was reported present");
    h.subscribe("lentera/+/telemetry", 2).await;
    h.disconnect().await;

    let mut p = Client::v5(&broker, "ingest").await;
    for i in 0..5 {
        let qos = if i == 2 { 2 } else { 1 };
        p.publish("lentera/gh-1/telemetry", &reading(i), qos, false)
            .await;
    }
    p.publish("lentera/gh-1/telemetry", &reading(99), 0, false)
        .await;
    p.expect("PUBCOMP", |e| matches!(e, Ev::PubComp)).await;

    let mut h = Client::connect_v3(v3_persistent(&broker, "historian")).await;
    assert!(h.session_present, "resumed session not reported present");
    for i in 0..5 {
        let m = h.next_publish().await;
        assert_eq!(m.payload, reading(i), "out of order");
        assert_eq!(m.qos, if i == 2 { 2 } else { 1 });
    }
    assert_eq!(h.try_next_publish(Duration::from_millis(300)).await, None);
    // No re-SUBSCRIBE: the subscription survived.
    p.publish("lentera/gh-2/telemetry", &reading(100), 1, false)
        .await;
    assert_eq!(h.next_publish().await.payload, reading(100));
    broker.stop().await;
}

/// [MQTT-4.4.0-1] on resume the server re-sends unacknowledged PUBLISH packets with their
/// original packet identifiers, and [MQTT-3.3.1-1] sets DUP=1 on such a re-delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_qos1_is_redelivered_with_dup_and_same_packet_id_after_reconnect() {
    let broker = Broker::start().await;
    let mut o = v3_persistent(&broker, "forgetful");
    o.set_manual_acks(true); // and never acknowledges
    let mut s = Client::connect_v3(o).await;
    s.subscribe("cmd/#", 1).await;
    let p = Client::v3(&broker, "p").await;
    p.publish("cmd/lamp", b"on", 1, false).await;
    let first = s.next_publish().await;
    assert!(!first.dup, "first delivery marked DUP");
    s.kill();

    let mut s = Client::connect_v3(v3_persistent(&broker, "forgetful")).await;
    assert!(s.session_present);
    let again = s.next_publish().await;
    assert_eq!(
        (&again.payload[..], again.dup, again.pkid),
        (&b"on"[..], true, first.pkid)
    );
    // Acknowledged this time (automatic acks): not sent a third time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.kill();
    let mut s = Client::connect_v3(v3_persistent(&broker, "forgetful")).await;
    assert_eq!(s.try_next_publish(Duration::from_millis(500)).await, None);
    broker.stop().await;
}

/// [MQTT-3.1.2-6] clean_session=1 discards the previous session (subscriptions and queued
/// messages) and [MQTT-3.2.2-1] answers session_present=0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_discards_the_stored_session() {
    let broker = Broker::start().await;
    let mut s = Client::connect_v3(v3_persistent(&broker, "board")).await;
    s.subscribe("cmd/#", 1).await;
    s.disconnect().await;
    let p = Client::v3(&broker, "p").await;
    p.publish("cmd/x", b"queued", 1, false).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut s = Client::v3(&broker, "board").await; // clean session
    assert!(!s.session_present);
    assert_eq!(s.try_next_publish(Duration::from_millis(300)).await, None);
    s.disconnect().await;
    p.publish("cmd/x", b"after", 1, false).await;
    let mut s = Client::connect_v3(v3_persistent(&broker, "board")).await;
    assert!(!s.session_present, "the discarded session came back");
    assert_eq!(s.try_next_publish(Duration::from_millis(300)).await, None);
    broker.stop().await;
}

/// MQTT 5 session expiry: [MQTT-3.1.2-23] the session is kept after the connection closes
/// while the interval runs, and is gone after it (or at once with interval 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_keeps_then_ends_the_session() {
    let broker = Broker::start().await;
    let p = Client::v3(&broker, "p").await;

    // Interval 60 s: resumed, with the message queued meanwhile.
    let mut s = Client::connect_v5(v5_session(&broker, "long", true, 60)).await;
    s.subscribe("e/long", 1).await;
    s.disconnect().await;
    p.publish("e/long", b"kept", 1, false).await;
    let mut s = Client::connect_v5(v5_session(&broker, "long", false, 60)).await;
    assert!(s.session_present);
    assert_eq!(s.next_publish().await.payload, b"kept");

    // Interval 1 s: gone after 2.5 s.
    let mut s = Client::connect_v5(v5_session(&broker, "short", true, 1)).await;
    s.subscribe("e/short", 1).await;
    s.disconnect().await;
    p.publish("e/short", b"lost", 1, false).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut s = Client::connect_v5(v5_session(&broker, "short", false, 1)).await;
    assert!(!s.session_present, "expired session resumed");
    assert_eq!(s.try_next_publish(Duration::from_millis(300)).await, None);

    // Interval 0: the session ends with the connection.
    let mut s = Client::connect_v5(v5_session(&broker, "zero", true, 0)).await;
    s.subscribe("e/zero", 1).await;
    s.disconnect().await;
    let s = Client::connect_v5(v5_session(&broker, "zero", false, 0)).await;
    assert!(!s.session_present);
    broker.stop().await;
}

/// The per-session queue is bounded; when full the newest message is dropped and counted
/// as `messages_dropped_total{reason="session_queue_full"}`; the oldest are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_session_queue_drops_the_newest_and_counts_it() {
    let mut settings = common::Broker::settings_with_store(std::path::Path::new(""));
    settings.broker.session_queue_capacity = 3;
    let broker = Broker::start_with(settings).await;
    let mut s = Client::connect_v3(v3_persistent(&broker, "away")).await;
    s.subscribe("q/#", 1).await;
    s.disconnect().await;
    let mut p = Client::v3(&broker, "p").await;
    for i in 0..5 {
        p.publish("q/x", format!("{i}").as_bytes(), 1, false).await;
        p.expect_puback().await;
    }
    let mut s = Client::connect_v3(v3_persistent(&broker, "away")).await;
    for i in 0..3 {
        assert_eq!(s.next_publish().await.payload, format!("{i}").into_bytes());
    }
    assert_eq!(s.try_next_publish(Duration::from_millis(300)).await, None);
    let metrics = broker.metrics().await;
    assert!(
        metrics
            .contains("lentera_broker_messages_dropped_total{reason=\"session_queue_full\"} 2\n"),
        "{metrics}"
    );
    broker.stop().await;
}

/// [MQTT-3.1.4-2] a second connection with the same client id closes the first; with
/// clean_session=0 it takes the session over (subscriptions and all) [MQTT-3.1.2-4].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_keeps_the_persistent_session() {
    let broker = Broker::start().await;
    let mut first = Client::connect_v3(v3_persistent(&broker, "lamp-9")).await;
    first.subscribe("lentera/lamp-9/lamp/set", 1).await;
    let mut second = Client::connect_v3(v3_persistent(&broker, "lamp-9")).await;
    first.expect_closed().await;
    assert!(second.session_present);
    let p = Client::v3(&broker, "ctl").await;
    p.publish("lentera/lamp-9/lamp/set", b"on", 1, false).await;
    assert_eq!(second.next_publish().await.payload, b"on");
    broker.stop().await;
}

mod raw {
    //! Just enough MQTT 3.1.1 encoding to drive the broker packet by packet.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut p = vec![header, body.len() as u8];
        p.extend_from_slice(body);
        p
    }

    pub fn str(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s.as_bytes());
        v
    }

    /// CONNECT with clean_session=0; returns the socket and session_present.
    pub async fn connect(addr: std::net::SocketAddr, id: &str) -> (TcpStream, bool) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut body = str("MQTT");
        body.extend_from_slice(&[4, 0x00, 0, 60]);
        body.extend(str(id));
        s.write_all(&packet(0x10, &body)).await.unwrap();
        let ack = read(&mut s, 4).await;
        assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK {ack:?}");
        (s, ack[2] == 1)
    }

    pub async fn read(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(super::common::WAIT, s.read_exact(&mut buf))
            .await
            .expect("broker answered in time")
            .unwrap();
        buf
    }

    /// PUBLISH QoS 2 (DUP as given) with packet id 7 to `topic`.
    pub fn publish_qos2(topic: &str, payload: &[u8], dup: bool) -> Vec<u8> {
        let mut body = str(topic);
        body.extend_from_slice(&[0, 7]);
        body.extend_from_slice(payload);
        packet(if dup { 0x3C } else { 0x34 }, &body)
    }
}

/// Inbound exactly-once across a reconnect: [MQTT-4.3.3-9] until PUBREL the receiver
/// must not forward a PUBLISH with the same packet id again, and [MQTT-4.4.0-1] the
/// client re-sends it (DUP=1) after reconnecting with clean_session=0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_publish_resent_after_reconnect_is_forwarded_once() {
    use tokio::io::AsyncWriteExt;
    let broker = Broker::start().await;
    let mut watch = Client::v3(&broker, "watch").await;
    watch.subscribe("x2", 2).await;

    let (mut s, _) = raw::connect(broker.mqtt, "pub2").await;
    s.write_all(&raw::publish_qos2("x2", b"once", false))
        .await
        .unwrap();
    assert_eq!(raw::read(&mut s, 4).await, [0x50, 2, 0, 7], "PUBREC");
    drop(s); // the connection breaks before PUBREL

    let (mut s, present) = raw::connect(broker.mqtt, "pub2").await;
    assert!(present);
    s.write_all(&raw::publish_qos2("x2", b"once", true))
        .await
        .unwrap();
    assert_eq!(raw::read(&mut s, 4).await, [0x50, 2, 0, 7], "PUBREC again");
    s.write_all(&raw::packet(0x62, &[0, 7])).await.unwrap();
    assert_eq!(raw::read(&mut s, 4).await, [0x70, 2, 0, 7], "PUBCOMP");

    assert_eq!(watch.next_publish().await.payload, b"once");
    assert_eq!(
        watch.try_next_publish(Duration::from_millis(300)).await,
        None,
        "forwarded twice"
    );
    // Released: the id is free, and a new message with it is a new message.
    s.write_all(&raw::publish_qos2("x2", b"again", false))
        .await
        .unwrap();
    assert_eq!(raw::read(&mut s, 4).await, [0x50, 2, 0, 7]);
    assert_eq!(watch.next_publish().await.payload, b"again");
    broker.stop().await;
}

/// MQTT 5 lets DISCONNECT change the Session Expiry Interval (§3.14.2.2.2): setting it to
/// 0 on the way out ends the session at once, so a later resume finds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_with_session_expiry_zero_ends_the_session() {
    use tokio::io::AsyncWriteExt;
    /// CONNECT (MQTT 5) with Session Expiry Interval 60; returns session_present.
    async fn connect(addr: std::net::SocketAddr, clean: bool) -> (tokio::net::TcpStream, bool) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut body = raw::str("MQTT");
        body.extend_from_slice(&[5, if clean { 0x02 } else { 0 }, 0, 60]);
        body.extend_from_slice(&[5, 0x11, 0, 0, 0, 60]);
        body.extend(raw::str("v5-raw"));
        s.write_all(&raw::packet(0x10, &body)).await.unwrap();
        let head = raw::read(&mut s, 2).await;
        assert_eq!(head[0], 0x20);
        let rest = raw::read(&mut s, head[1] as usize).await;
        assert_eq!(rest[1], 0, "CONNACK reason");
        (s, rest[0] & 1 == 1)
    }
    let broker = Broker::start().await;

    let (mut s, present) = connect(broker.mqtt, true).await;
    assert!(!present);
    let mut sub = vec![0, 1, 0]; // packet id 1, no properties
    sub.extend(raw::str("d/x"));
    sub.push(1);
    s.write_all(&raw::packet(0x82, &sub)).await.unwrap();
    assert_eq!(raw::read(&mut s, 6).await, [0x90, 4, 0, 1, 0, 1], "SUBACK");
    // DISCONNECT, reason 0, Session Expiry Interval = 0.
    s.write_all(&raw::packet(0xE0, &[0, 5, 0x11, 0, 0, 0, 0]))
        .await
        .unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (_s, present) = connect(broker.mqtt, false).await;
    assert!(!present, "session outlived a DISCONNECT with expiry 0");
    broker.stop().await;
}
