//! Delivery under load through the real broker: no acknowledged QoS 1 message is lost to
//! a slow subscriber, and a stalled subscriber's queue is bounded with an exact,
//! counted policy (`outbox.rs`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Broker, Client};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn settings() -> lentera_broker::settings::Settings {
    let mut settings = lentera_broker::settings::Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    settings.auth.open = true;
    settings.broker.mqtt_addr = "127.0.0.1:0".into();
    settings.broker.admin_addr = "127.0.0.1:0".into();
    settings.broker.data_dir = Default::default();
    settings
}

/// The value of one Prometheus series in the broker's /metrics text.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn dropped(text: &str, reason: &str) -> u64 {
    metric(
        text,
        &format!("lentera_broker_messages_dropped_total{{reason=\"{reason}\"}}"),
    )
}

/// A rumqttc subscriber that reads its socket slowly: it sleeps after every PUBLISH,
/// so the broker's in-flight window to it fills and the rest must wait in the broker.
/// Returns the payloads it received (duplicates collapse).
async fn slow_subscriber(
    broker: &Broker,
    id: &str,
    expect: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<BTreeSet<Vec<u8>>> {
    let mut o = MqttOptions::new(id, "127.0.0.1", broker.mqtt.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 16);
    c.subscribe("load/#", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    tokio::spawn(async move {
        let _keep = c;
        let mut got = BTreeSet::new();
        while got.len() < expect {
            match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    got.insert(p.payload.to_vec());
                    tokio::time::sleep(pause).await;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber connection failed: {e}"),
                Err(_) => break, // nothing for 10 s: report what arrived
            }
        }
        got
    })
}

/// Publishes `count` QoS 1 messages `"{id}-{n}"` as fast as rumqttc's window allows and
/// returns the number of PUBACKs received.
async fn flood(port: u16, id: String, count: usize) -> usize {
    let mut o = MqttOptions::new(&id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 64);
    let sender = tokio::spawn(async move {
        for n in 0..count {
            let payload = format!("{id}-{n}");
            c.publish(format!("load/{id}"), QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        c
    });
    let mut acked = 0;
    while acked < count {
        match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher connection failed: {e}"),
            Err(_) => break,
        }
    }
    drop(sender.await.unwrap());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_receives_every_acknowledged_qos1_message_of_four_flooding_publishers() {
    let mut s = settings();
    // Far below the backlog a slow subscriber builds: QoS 1 must not depend on it (it
    // bounds QoS 0 only), just on `session_queue_capacity` (default 10,000).
    s.broker.queue_capacity = 8;
    s.broker.max_inflight = 8;
    let broker = Broker::start_with(s).await;
    const PUBLISHERS: usize = 4;
    const EACH: usize = 300;
    let total = PUBLISHERS * EACH;
    let slow = slow_subscriber(&broker, "slow", total, Duration::from_millis(2)).await;
    let fast = slow_subscriber(&broker, "fast", total, Duration::ZERO).await;

    let floods: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let b = &broker;
            async move { flood(b.mqtt.port(), format!("p{i}"), EACH).await }
        })
        .collect();
    let acked: usize = futures_util::future::join_all(floods)
        .await
        .into_iter()
        .sum();
    assert_eq!(acked, total, "every publish is acknowledged");

    let expected: BTreeSet<Vec<u8>> = (0..PUBLISHERS)
        .flat_map(|i| (0..EACH).map(move |n| format!("p{i}-{n}").into_bytes()))
        .collect();
    let fast = fast.await.unwrap();
    let slow = slow.await.unwrap();
    assert_eq!(fast.len(), total, "fast subscriber lost messages");
    assert_eq!(slow.len(), total, "slow subscriber lost messages");
    assert_eq!(slow, expected);
    assert_eq!(fast, expected);
    let text = broker.metrics().await;
    for reason in [
        "queue_full",
        "session_queue_full",
        "disconnected",
        "send_error",
    ] {
        assert_eq!(dropped(&text, reason), 0, "dropped ({reason})");
    }
    broker.stop().await;
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![header];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        p.push(b);
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}

fn mqtt_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A raw MQTT 3.1.1 subscriber (QoS 1 on `filter`) that does not read until told to.
struct RawSubscriber(TcpStream);

impl RawSubscriber {
    async fn connect(addr: std::net::SocketAddr, id: &str, filter: &str) -> Self {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut connect = mqtt_str("MQTT");
        connect.extend_from_slice(&[4, 0x02, 0, 60]);
        connect.extend(mqtt_str(id));
        s.write_all(&packet(0x10, &connect)).await.unwrap();
        let mut subscribe = vec![0, 1];
        subscribe.extend(mqtt_str(filter));
        subscribe.push(1);
        s.write_all(&packet(0x82, &subscribe)).await.unwrap();
        let mut buf = [0u8; 9]; // CONNACK (4) + SUBACK (5)
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!((buf[0], buf[3], buf[4], buf[8]), (0x20, 0, 0x90, 1));
        Self(s)
    }

    /// The next PUBLISH (QoS, payload), acknowledged at once if QoS 1; `None` if nothing
    /// arrives within `within`.
    async fn next(&mut self, within: Duration) -> Option<(u8, Vec<u8>)> {
        let mut h = [0u8; 1];
        tokio::time::timeout(within, self.0.read_exact(&mut h))
            .await
            .ok()?
            .unwrap();
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            self.0.read_exact(&mut b).await.unwrap();
            len |= ((b[0] & 0x7f) as usize) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).await.unwrap();
        assert_eq!(h[0] & 0xf0, 0x30, "expected PUBLISH, got {:#x}", h[0]);
        let qos = (h[0] >> 1) & 3;
        let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
        let mut rest = &body[2 + topic_len..];
        if qos > 0 {
            let id = [rest[0], rest[1]];
            rest = &rest[2..];
            self.0.write_all(&[0x40, 2, id[0], id[1]]).await.unwrap();
        }
        Some((qos, rest.to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_keeps_exactly_session_queue_capacity_qos1_and_queue_capacity_qos0() {
    let mut s = settings();
    s.broker.session_queue_capacity = 16;
    s.broker.queue_capacity = 8;
    s.broker.max_inflight = 4;
    let broker = Broker::start_with(s).await;
    let mut stalled = RawSubscriber::connect(broker.mqtt, "stalled", "q/#").await;
    let mut p = Client::v3(&broker, "publisher").await;

    // 50 QoS 1: the stalled subscriber owes 16 (4 in flight + 12 queued); the newest 34
    // are dropped, counted.
    for n in 0..50 {
        p.publish("q/1", format!("{n}").as_bytes(), 1, false).await;
        p.expect_puback().await;
    }
    // 20 QoS 0: its task waits for in-flight room, so they queue: 8 kept, 12 dropped.
    for n in 0..20 {
        p.publish("q/0", format!("z{n}").as_bytes(), 0, false).await;
    }
    let mut seen = 0;
    for _ in 0..50 {
        // QoS 0 has no acknowledgement: wait until the broker has routed all 20.
        let text = broker.metrics().await;
        seen = dropped(&text, "queue_full");
        if seen == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 12, "QoS 0 beyond queue_capacity");
    let text = broker.metrics().await;
    assert_eq!(dropped(&text, "session_queue_full"), 34, "{text}");

    // Reading again, it gets exactly the oldest 16 QoS 1 in order, then the 8 QoS 0.
    let mut got = Vec::new();
    while let Some(m) = stalled.next(Duration::from_millis(500)).await {
        got.push(m);
    }
    let want: Vec<(u8, Vec<u8>)> = (0..16)
        .map(|n| (1, format!("{n}").into_bytes()))
        .chain((0..8).map(|n| (0, format!("z{n}").into_bytes())))
        .collect();
    assert_eq!(got, want);

    // The acknowledgements freed the queue: new messages are taken again.
    p.publish("q/1", b"after", 1, false).await;
    p.expect_puback().await;
    let next = stalled.next(Duration::from_secs(5)).await;
    assert_eq!(next, Some((1, b"after".to_vec())));
    let text = broker.metrics().await;
    assert_eq!(dropped(&text, "session_queue_full"), 34, "{text}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_to_a_subscriber_that_stops_reading_is_dropped_at_queue_capacity_not_buffered() {
    let mut s = settings();
    s.broker.queue_capacity = 8;
    let broker = Broker::start_with(s).await;
    let _stalled = RawSubscriber::connect(broker.mqtt, "stalled0", "z/#").await;
    let p = Client::v3(&broker, "flooder").await;
    // 16 MiB of QoS 0, far beyond what the socket buffers hold: the subscriber never
    // reads, so all but what fits in the socket, the connection's output buffer and the queue of 8
    // must be dropped and counted — not kept in the broker's memory.
    let body = vec![b'x'; 4096];
    let sent = 4096u64;
    for _ in 0..sent {
        p.publish("z/0", &body, 0, false).await;
    }
    let mut seen = 0;
    for _ in 0..100 {
        let text = broker.metrics().await;
        seen = dropped(&text, "queue_full");
        if metric(&text, "lentera_broker_messages_received_total") == sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen >= sent / 2, "only {seen} of {sent} dropped");
    broker.stop().await;
}

mod raw;

/// Reads one whole MQTT packet (header byte + body) from a raw socket.
async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 1];
    tokio::time::timeout(common::WAIT, s.read_exact(&mut h))
        .await
        .expect("a packet in time")
        .expect("socket open");
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (h[0], body)
}

async fn raw_connect(broker: &Broker, connect: Vec<u8>) -> (TcpStream, (u8, Vec<u8>)) {
    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    s.write_all(&connect).await.unwrap();
    let connack = read_packet(&mut s).await;
    (s, connack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_beyond_max_connections_is_refused_with_server_unavailable_or_quota_exceeded() {
    let mut s = settings();
    s.broker.max_connections = 2;
    let broker = Broker::start_with(s).await;
    let a = Client::v3(&broker, "a").await;
    let _b = Client::v5(&broker, "b").await;

    // MQTT 3.1.1: CONNACK return code 3 "Server unavailable" (§3.2.2.3), then the server
    // closes the connection [MQTT-3.2.2-5].
    let (mut s3, (h, body)) = raw_connect(&broker, raw::connect_v311("c3")).await;
    assert_eq!((h, body.as_slice()), (0x20, &[0u8, 3][..]));
    assert_eq!(
        s3.read(&mut [0u8; 8]).await.unwrap(),
        0,
        "closed after CONNACK"
    );
    // MQTT 5: CONNACK reason 0x97 Quota exceeded (§3.2.2.2); a CONNACK with a reason
    // code >= 0x80 is followed by closing the connection [MQTT-3.2.2-7].
    let (mut s5, (h, body)) = raw_connect(&broker, raw::connect_v5("c5")).await;
    assert_eq!((h, body[0], body[1]), (0x20, 0, 0x97));
    assert_eq!(
        s5.read(&mut [0u8; 8]).await.unwrap(),
        0,
        "closed after CONNACK"
    );

    let text = broker.metrics().await;
    assert_eq!(
        metric(
            &text,
            "lentera_broker_connections_refused_total{reason=\"connection_limit\"}"
        ),
        2
    );
    // A place frees when a connection ends.
    a.disconnect().await;
    let mut freed = false;
    for _ in 0..50 {
        let (_s, (_, body)) = raw_connect(&broker, raw::connect_v311("c3")).await;
        if body == [0, 0] {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "no connection accepted after one closed");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_far_larger_than_the_read_buffer_arrives_whole() {
    // 200 kB: several reads of a worker's 64 KiB scratch buffer, assembled in the
    // connection's partial-packet buffer.
    let broker = Broker::start_with(settings()).await;
    let big = |id| {
        let mut o = Client::v3_options(&broker, id);
        o.set_max_packet_size(300_000, 300_000);
        o
    };
    let mut sub = Client::connect_v3(big("sub")).await;
    sub.subscribe("big", 1).await;
    let p = Client::connect_v3(big("pub")).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    p.publish("big", &payload, 1, false).await;
    assert_eq!(sub.next_publish().await.payload, payload);
    broker.stop().await;
}

/// MQTT 5 CONNACK properties as (identifier, value bytes), for the few fixed-size ones
/// read here (§3.2.2.3); stops at the first other property.
fn connack_props(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    // body: flags, reason, property length (one byte here: the CONNACK is short), props.
    let (len, mut rest) = (body[2] as usize, &body[3..]);
    rest = &rest[..len];
    let mut out = Vec::new();
    while let Some((&id, tail)) = rest.split_first() {
        let n = match id {
            0x21 => 2,                             // Receive Maximum
            0x27 | 0x11 => 4,                      // Maximum Packet Size, Session Expiry
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1, // Max QoS, Retain/Wildcard/Sub-id/Shared available
            0x22 | 0x13 => 2,                      // Topic Alias Maximum, Server Keep Alive
            _ => break,
        };
        out.push((id, tail[..n].to_vec()));
        rest = &tail[n..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connack_announces_limits_and_an_oversized_packet_gets_disconnect_0x95() {
    let mut s = settings();
    s.broker.max_packet_bytes = 1000;
    s.broker.receive_maximum = 10;
    let broker = Broker::start_with(s).await;
    let (mut sock, (h, body)) = raw_connect(&broker, raw::connect_v5("big")).await;
    assert_eq!((h, body[1]), (0x20, 0), "accepted");
    let props = connack_props(&body);
    // Maximum Packet Size and Receive Maximum announced (MQTT 5 §3.2.2.3.6, §3.2.2.3.3).
    assert!(
        props.contains(&(0x27, 1000u32.to_be_bytes().to_vec())),
        "{props:?}"
    );
    assert!(
        props.contains(&(0x21, 10u16.to_be_bytes().to_vec())),
        "{props:?}"
    );

    // A PUBLISH beyond it: DISCONNECT 0x95 Packet too large (§3.2.2.3.6, §4.13), then
    // the connection closes.
    let mut publish = raw::str16("t");
    publish.push(0); // no properties
    publish.extend(vec![b'x'; 2000]);
    sock.write_all(&packet(0x30, &publish)).await.unwrap();
    let (h, body) = read_packet(&mut sock).await;
    assert_eq!((h, body[0]), (0xE0, 0x95), "DISCONNECT Packet too large");
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(common::WAIT, sock.read(&mut rest))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed after DISCONNECT");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_outbound_qos1_respects_the_clients_receive_maximum() {
    // [MQTT-3.3.4-9]: the server sends no more unacknowledged QoS 1 PUBLISHes than the
    // client's Receive Maximum (here 2, below the broker's own max_inflight of 64).
    let broker = Broker::start_with(settings()).await;
    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    let mut connect = raw::str16("MQTT");
    connect.extend_from_slice(&[5, 0x02, 0, 60, 3, 0x21, 0, 2]); // props: Receive Maximum 2
    connect.extend(raw::str16("rm2"));
    s.write_all(&packet(0x10, &connect)).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, 0x20);
    let mut sub = vec![0, 1, 0]; // packet id 1, no properties
    sub.extend(raw::str16("rm/#"));
    sub.push(1); // QoS 1
    s.write_all(&packet(0x82, &sub)).await.unwrap();
    let (h, body) = read_packet(&mut s).await;
    assert_eq!(
        (h, *body.last().unwrap()),
        (0x90, 1),
        "SUBACK granted QoS 1"
    );

    let mut p = Client::v3(&broker, "rm-pub").await;
    for n in 0..5 {
        p.publish("rm/x", format!("{n}").as_bytes(), 1, false).await;
        p.expect_puback().await;
    }
    // Read what arrives without acknowledging: exactly two.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (h, body) = read_packet(&mut s).await;
        assert_eq!(h & 0xf6, 0x32, "QoS 1 PUBLISH");
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        ids.push([body[2 + tl], body[3 + tl]]);
    }
    let mut more = [0u8; 1];
    let third = tokio::time::timeout(Duration::from_millis(700), s.read(&mut more)).await;
    assert!(third.is_err(), "a third PUBLISH beyond Receive Maximum 2");
    // Acknowledging one lets exactly one more through.
    s.write_all(&[0x40, 2, ids[0][0], ids[0][1]]).await.unwrap();
    let (h, body) = read_packet(&mut s).await;
    assert_eq!(h & 0xf6, 0x32);
    assert_eq!(*body.last().unwrap(), b'2', "the next message, in order");
    broker.stop().await;
}

/// A QoS 0 stream far larger than a connection's output buffer (64 KiB) keeps flowing
/// to a subscriber that reads: the flow that stopped for room in the output goes on once
/// the socket has taken it, even when no writable event follows (regression: it stopped
/// after the first 64 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_qos0_stream_keeps_flowing_to_a_reading_subscriber() {
    let broker = Broker::start_with(settings()).await;
    let mut sub = Client::v3(&broker, "stream-sub").await;
    sub.subscribe("stream", 0).await;
    let p = Client::v3(&broker, "stream-pub").await;
    const N: usize = 5_000;
    let payload = [b's'; 100];
    let publisher = tokio::spawn(async move {
        // Paced well below what one subscriber takes, so `queue_capacity` never drops.
        for chunk in 0..N / 100 {
            for _ in 0..100 {
                p.publish("stream", &payload, 0, false).await;
            }
            if chunk % 5 == 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        p
    });
    let mut got = 0;
    while got < N {
        match sub.try_next_publish(Duration::from_secs(3)).await {
            Some(_) => got += 1,
            None => break,
        }
    }
    let _p = publisher.await.unwrap();
    assert_eq!(
        got,
        N,
        "the stream stopped after {got} of {N} messages (~{} KiB)",
        got / 10
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_nothing_larger_than_the_clients_maximum_packet_size_is_sent() {
    // [MQTT-3.1.2-24]: the server sends no packet larger than the client's Maximum
    // Packet Size; [MQTT-3.1.2-25]: a PUBLISH that would be is discarded as if sent.
    let broker = Broker::start_with(settings()).await;
    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    let mut connect = raw::str16("MQTT");
    // Properties: Maximum Packet Size 100.
    connect.extend_from_slice(&[5, 0x02, 0, 60, 5, 0x27, 0, 0, 0, 100]);
    connect.extend(raw::str16("mps100"));
    s.write_all(&packet(0x10, &connect)).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, 0x20);
    let mut sub = vec![0, 1, 0];
    sub.extend(raw::str16("mps/#"));
    sub.push(1);
    s.write_all(&packet(0x82, &sub)).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, 0x90);

    let mut p = Client::v3(&broker, "mps-pub").await;
    for payload in [vec![b'a'; 20], vec![b'b'; 500], vec![b'c'; 30]] {
        p.publish("mps/x", &payload, 1, false).await;
        p.expect_puback().await;
    }
    // The 500-byte one is skipped; the others arrive, in order, each within the limit.
    for want in [b'a', b'c'] {
        let (h, body) = read_packet(&mut s).await;
        assert_eq!(h & 0xf6, 0x32, "QoS 1 PUBLISH");
        assert!(body.len() + 2 <= 100, "a {}-byte packet", body.len() + 2);
        assert_eq!(*body.last().unwrap(), want);
        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
        s.write_all(&[0x40, 2, body[2 + tl], body[3 + tl]])
            .await
            .unwrap();
    }
    let text = broker.metrics().await;
    assert_eq!(
        dropped(&text, "send_error"),
        1,
        "the oversized one is counted"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_is_held_back_rather_than_a_slow_but_reading_subscriber_losing_messages() {
    let mut s = settings();
    // 2,000 owed at most per subscriber: a 3,000-message flood would overflow it if the
    // publisher were not held back while the backlog is above 1,000.
    s.broker.session_queue_capacity = 2_000;
    let broker = Broker::start_with(s).await;
    const N: usize = 3_000;
    let slow = slow_subscriber(&broker, "reads-slowly", N, Duration::from_millis(1)).await;
    assert_eq!(flood(broker.mqtt.port(), "p".into(), N).await, N);
    let got = slow.await.unwrap();
    assert_eq!(got.len(), N, "the slow subscriber lost messages");
    let text = broker.metrics().await;
    assert_eq!(dropped(&text, "session_queue_full"), 0);
    assert!(
        metric(&text, "lentera_broker_publishes_held_total") > 0,
        "the publisher was never held back, so this test proved nothing"
    );
    broker.stop().await;
}

/// A slow subscriber holds back only the publishers it hears from: while one publisher
/// is held on its backlog, another publisher and subscriber on other topics go on at
/// full speed (each round trip would otherwise wait for that backlog to drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_holds_back_only_the_publishers_it_hears_from() {
    let mut s = settings();
    s.broker.session_queue_capacity = 2_000; // hold above a backlog of 1,000
    let broker = Broker::start_with(s).await;
    const N: usize = 4_000;
    let slow = slow_subscriber(&broker, "reads-slowly", N, Duration::from_millis(1)).await;
    let flooder = tokio::spawn(flood(broker.mqtt.port(), "p".into(), N));
    // Wait until the flooder is being held back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(
        &broker.metrics().await,
        "lentera_broker_publishes_held_total",
    ) == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flooder was never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut other_sub = Client::v3(&broker, "other-sub").await;
    other_sub.subscribe("other/#", 1).await;
    let mut other_pub = Client::v3(&broker, "other-pub").await;
    let started = std::time::Instant::now();
    for n in 0..200 {
        other_pub
            .publish("other/x", format!("{n}").as_bytes(), 1, false)
            .await;
        other_pub.expect_puback().await;
    }
    let took = started.elapsed();
    for n in 0..200 {
        assert_eq!(
            other_sub.next_publish().await.payload,
            format!("{n}").as_bytes()
        );
    }
    assert!(
        !flooder.is_finished(),
        "the flood ended before the other publisher did: nothing was shown"
    );
    assert!(
        took < Duration::from_secs(3),
        "200 unrelated QoS 1 round trips took {took:?}: held back by someone else's backlog"
    );
    assert_eq!(flooder.await.unwrap(), N);
    assert_eq!(
        slow.await.unwrap().len(),
        N,
        "the slow subscriber lost messages"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_packet_beyond_max_packet_bytes_closes_the_connection() {
    // MQTT 3.1.1 has no reason codes and no announced maximum: closing the network
    // connection is the only answer (as for other errors, §4.8).
    let mut s = settings();
    s.broker.max_packet_bytes = 1000;
    let broker = Broker::start_with(s).await;
    let (mut sock, (h, body)) = raw_connect(&broker, raw::connect_v311("big3")).await;
    assert_eq!((h, body.as_slice()), (0x20, &[0u8, 0][..]));
    let mut sub = Client::v3(&broker, "watcher").await;
    sub.subscribe("t", 0).await;
    // Just under the limit: routed.
    let fits = [&raw::str16("t")[..], &[b'x'; 900][..]].concat();
    sock.write_all(&packet(0x30, &fits)).await.unwrap();
    assert_eq!(sub.next_publish().await.payload.len(), 900);
    // Over it: not routed, connection closed.
    let over = [&raw::str16("t")[..], &[b'y'; 2000][..]].concat();
    sock.write_all(&packet(0x30, &over)).await.unwrap();
    let n = tokio::time::timeout(common::WAIT, sock.read(&mut [0u8; 16]))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection left open");
    assert!(
        sub.try_next_publish(Duration::from_millis(300))
            .await
            .is_none(),
        "the oversized message was routed"
    );
    broker.stop().await;
}
