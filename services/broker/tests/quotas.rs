//! Quotas and edges over real sockets with hand-built packets: client ids, the packet
//! deadline, connections per address, the broker-wide queue budget (MQTT 5 0x97).
//! Each shows the refusal and that the others keep working.

mod common;

use std::time::Duration;

use common::{Broker, Client};
use lentera_broker::settings::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn settings() -> Settings {
    let mut s = Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    s.auth.open = true;
    s.broker.mqtt_addr = "127.0.0.1:0".into();
    s.broker.admin_addr = "127.0.0.1:0".into();
    s.broker.ws_addr = Some(String::new());
    s.broker.data_dir = Default::default();
    s
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            return;
        }
    }
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![header];
    varint(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn str16(s: &[u8]) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s].concat()
}

/// CONNECT, clean start, `keep_alive` seconds; level 4 (3.1.1) or 5 (no properties).
fn connect(level: u8, id: &[u8], keep_alive: u16, clean: bool) -> Vec<u8> {
    let mut body = b"\0\x04MQTT".to_vec();
    body.push(level);
    body.push(if clean { 0x02 } else { 0 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    body.extend(str16(id));
    packet(0x10, &body)
}

/// Reads one whole packet (fixed header included); `None` when the socket closed.
async fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(8), s.read(&mut first)).await;
    match read.expect("an answer or a close in time") {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    let mut p = first.to_vec();
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.ok()?;
        p.push(b);
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    p.extend(body);
    Some(p)
}

async fn open(b: &Broker, pkt: &[u8]) -> (TcpStream, Option<Vec<u8>>) {
    let mut s = TcpStream::connect(b.mqtt).await.unwrap();
    s.write_all(pkt).await.unwrap();
    let answer = read_packet(&mut s).await;
    (s, answer)
}

#[tokio::test]
async fn client_ids_with_nul_or_over_the_length_limit_are_refused() {
    let b = Broker::start_with(settings()).await;
    let long = vec![b'x'; 129];
    for id in [&b"gh\0-1"[..], &long] {
        let (_, ack) = open(&b, &connect(4, id, 30, true)).await;
        assert_eq!(ack.unwrap(), [0x20, 2, 0, 2], "3.1.1: identifier rejected");
        let (_, ack) = open(&b, &connect(5, id, 30, true)).await;
        let ack = ack.unwrap();
        assert_eq!(
            (ack[0], ack[3]),
            (0x20, 0x85),
            "5: client identifier not valid"
        );
    }
    // 128 bytes is the default limit, and is fine.
    let (_, ack) = open(&b, &connect(4, &[b'x'; 128], 30, true)).await;
    assert_eq!(ack.unwrap(), [0x20, 2, 0, 0]);
    assert!(
        b.metrics()
            .await
            .contains(r#"connections_refused_total{reason="client_id"} 4"#)
    );
    b.stop().await;
}

#[tokio::test]
async fn an_unfinished_packet_is_closed_after_the_packet_timeout_even_without_keep_alive() {
    let mut s = settings();
    s.broker.packet_timeout_secs = 1;
    let b = Broker::start_with(s).await;
    // Keep-alive 0: the keep-alive never fires; the announced 1 MB publish never comes.
    let mut half_open = Vec::new();
    for level in [4, 5] {
        let id = format!("slow-{level}");
        let (mut sock, ack) = open(&b, &connect(level, id.as_bytes(), 0, true)).await;
        assert_eq!(ack.unwrap()[0], 0x20);
        let mut head = vec![0x30];
        varint(1_000_000, &mut head);
        head.extend(str16(b"lentera/slow/telemetry"));
        head.extend_from_slice(&[b'x'; 1000]);
        sock.write_all(&head).await.unwrap();
        half_open.push((level, sock));
    }
    // An idle client with keep-alive 0 and nothing half-sent stays.
    let (mut idle, ack) = open(&b, &connect(4, b"idle", 0, true)).await;
    assert_eq!(ack.unwrap(), [0x20, 2, 0, 0]);
    let started = std::time::Instant::now();
    for (level, mut sock) in half_open {
        let last = read_packet(&mut sock).await;
        if level == 5 {
            let d = last.expect("MQTT 5 hears why");
            assert_eq!((d[0], d[2]), (0xE0, 0x8D), "DISCONNECT 0x8D: {d:?}");
            assert_eq!(read_packet(&mut sock).await, None);
        } else {
            assert_eq!(last, None, "MQTT 3.1.1: closed");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    idle.write_all(&[0xC0, 0]).await.unwrap();
    assert_eq!(read_packet(&mut idle).await.unwrap(), [0xD0, 0], "PINGRESP");
    assert!(
        b.metrics()
            .await
            .contains(r#"connections_closed_total{reason="packet_timeout"} 2"#)
    );
    b.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_at_accept() {
    let mut s = settings();
    s.quota.max_connections_per_ip = 3;
    let b = Broker::start_with(s).await;
    let mut open_ones = Vec::new();
    for i in 0..3 {
        let (sock, ack) = open(&b, &connect(4, format!("c{i}").as_bytes(), 30, true)).await;
        assert_eq!(ack.unwrap(), [0x20, 2, 0, 0]);
        open_ones.push(sock);
    }
    // The fourth from the same address: closed before CONNECT is even read.
    let (_, answer) = open(&b, &connect(4, b"c3", 30, true)).await;
    assert_eq!(answer, None);
    assert!(
        b.metrics()
            .await
            .contains(r#"connections_refused_total{reason="per_ip_limit"} 1"#)
    );
    // The three still work; once one leaves, there is room again.
    for s in &mut open_ones {
        s.write_all(&[0xC0, 0]).await.unwrap();
        assert_eq!(read_packet(s).await.unwrap(), [0xD0, 0]);
    }
    drop(open_ones.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, answer) = open(&b, &connect(4, b"c4", 30, true)).await;
        if answer.as_deref() == Some(&[0x20, 2, 0, 0][..]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "room again after a close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn at_the_total_queue_budget_an_mqtt5_publisher_gets_quota_exceeded() {
    let mut s = settings();
    s.broker.queued_bytes_total = 2_000;
    let b = Broker::start_with(s).await;
    // A persistent subscriber that went away: what it is owed is queued.
    let mut o = Client::v3_options(&b, "away");
    o.set_clean_session(false);
    let mut away = Client::connect_v3(o).await;
    away.subscribe("q/#", 1).await;
    away.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut publ, ack) = open(&b, &connect(5, b"pub5", 30, true)).await;
    assert_eq!(ack.unwrap()[3], 0);
    let mut codes = Vec::new();
    for pid in 1..=8u16 {
        let body = [&str16(b"q/x")[..], &pid.to_be_bytes(), &[0], &[b'p'; 500]].concat();
        publ.write_all(&packet(0x32, &body)).await.unwrap();
        let ack = read_packet(&mut publ).await.unwrap();
        assert_eq!(ack[0], 0x40, "PUBACK");
        codes.push(if ack.len() > 4 { ack[4] } else { 0 });
    }
    // 503 bytes each: three fit under 2,000, then the budget says no — out loud.
    assert_eq!(&codes[..3], [0, 0, 0], "{codes:?}");
    assert!(codes[3..].iter().all(|&c| c == 0x97), "{codes:?}");
    let m = b.metrics().await;
    assert!(
        m.contains(r#"messages_dropped_total{reason="queued_bytes_total"} 5"#),
        "{m}"
    );
    assert!(m.contains("lentera_broker_queued_bytes 1509"), "{m}");

    // A live subscriber still gets what is published.
    let mut live = Client::v3(&b, "live").await;
    live.subscribe("r/#", 0).await;
    let (mut p3, _) = open(&b, &connect(4, b"pub3", 30, true)).await;
    p3.write_all(&packet(0x30, &[&str16(b"r/1")[..], b"hi"].concat()))
        .await
        .unwrap();
    assert_eq!(live.next_publish().await.payload, b"hi");
    b.stop().await;
}
