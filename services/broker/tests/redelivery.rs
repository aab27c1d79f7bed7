//! What a persistent subscriber is owed after a reconnect or a restart, on raw sockets:
//! an unacknowledged QoS 1 message again with DUP=1 and its packet id (MQTT 5 here;
//! MQTT 3.1.1 in `persistent.rs`), and for QoS 2 once the subscriber has sent PUBREC,
//! the PUBREL with the same packet id — not the message again [MQTT-4.4.0-1],
//! [MQTT-4.3.3-5] — so the message reaches the application exactly once.

mod common;

use common::{Broker, Client, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    [&[header, body.len() as u8][..], body].concat()
}

fn str16(s: &str) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat()
}

async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut h))
        .await
        .expect("a packet in time")
        .expect("socket open");
    assert!(h[1] < 128, "short packets only");
    let mut body = vec![0u8; h[1] as usize];
    s.read_exact(&mut body).await.unwrap();
    (h[0], body)
}

/// An MQTT 3.1.1 subscriber with clean_session=0, subscribed to `q2/#` at QoS 2 on its
/// first connection. Returns the socket and whether CONNACK said session present.
async fn connect(broker: &Broker, id: &str, subscribe: bool) -> (TcpStream, bool) {
    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    let body = [&b"\0\x04MQTT\x04\x00\0\x3c"[..], &str16(id)].concat();
    s.write_all(&packet(0x10, &body)).await.unwrap();
    let (h, ack) = read_packet(&mut s).await;
    assert_eq!((h, ack[1]), (0x20, 0), "accepted");
    if subscribe {
        let body = [&[0, 1][..], &str16("q2/#"), &[2]].concat();
        s.write_all(&packet(0x82, &body)).await.unwrap();
        assert_eq!(
            read_packet(&mut s).await,
            (0x90, vec![0, 1, 2]),
            "SUBACK QoS 2"
        );
    }
    (s, ack[0] == 1)
}

/// Receives the QoS 2 PUBLISH, answers PUBREC, expects PUBREL; returns the packet id.
async fn receive_up_to_pubrel(s: &mut TcpStream, payload: &[u8]) -> [u8; 2] {
    let (h, body) = read_packet(s).await;
    assert_eq!(h & 0xf6, 0x34, "QoS 2 PUBLISH, got {h:#x}");
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let id = [body[2 + tl], body[3 + tl]];
    assert_eq!(&body[4 + tl..], payload);
    s.write_all(&[0x50, 2, id[0], id[1]]).await.unwrap();
    assert_eq!(read_packet(s).await, (0x62, id.to_vec()), "PUBREL");
    id
}

async fn publish_qos2(broker: &Broker, payload: &[u8]) {
    let mut p = Client::v3(broker, "q2-pub").await;
    p.publish("q2/x", payload, 2, false).await;
    p.expect_pubcomp().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_pubrec_a_reconnecting_subscriber_gets_pubrel_not_the_message_again() {
    let broker = Broker::start().await;
    let (mut s, _) = connect(&broker, "q2-sub", true).await;
    publish_qos2(&broker, b"once").await;
    let id = receive_up_to_pubrel(&mut s, b"once").await;
    // Gone before PUBCOMP.
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let (mut s, present) = connect(&broker, "q2-sub", false).await;
    assert!(present, "session resumed");
    assert_eq!(
        read_packet(&mut s).await,
        (0x62, id.to_vec()),
        "PUBREL resent, same id"
    );
    s.write_all(&[0x70, 2, id[0], id[1]]).await.unwrap();
    // Nothing else is owed: a PINGREQ is answered, and no PUBLISH comes before it.
    s.write_all(&[0xC0, 0]).await.unwrap();
    assert_eq!(read_packet(&mut s).await, (0xD0, vec![]));
    drop(s);
    // Completed for good: the next session resume owes nothing.
    let (mut s, _) = connect(&broker, "q2-sub", false).await;
    s.write_all(&[0xC0, 0]).await.unwrap();
    assert_eq!(
        read_packet(&mut s).await,
        (0xD0, vec![]),
        "nothing owed after PUBCOMP"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owed_pubrel_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("lentera-q2-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let broker = Broker::start_with(Broker::settings_with_store(&dir)).await;
    let (mut s, _) = connect(&broker, "q2-keep", true).await;
    publish_qos2(&broker, b"kept").await;
    let id = receive_up_to_pubrel(&mut s, b"kept").await;
    drop(s);
    broker.stop().await;

    let broker = Broker::start_with(Broker::settings_with_store(&dir)).await;
    let (mut s, present) = connect(&broker, "q2-keep", false).await;
    assert!(present, "session recovered");
    assert_eq!(
        read_packet(&mut s).await,
        (0x62, id.to_vec()),
        "PUBREL after restart"
    );
    s.write_all(&[0x70, 2, id[0], id[1]]).await.unwrap();
    s.write_all(&[0xC0, 0]).await.unwrap();
    assert_eq!(read_packet(&mut s).await, (0xD0, vec![]));
    broker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// [MQTT-4.4.0-1], [MQTT-3.3.1-1] for MQTT 5: a QoS 1 message sent to a session with a
/// Session Expiry Interval and not acknowledged is sent again on the next connection,
/// with DUP=1 and the same packet id; first time round it had DUP=0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unacknowledged_qos1_is_resent_with_dup_and_the_same_packet_id() {
    let broker = Broker::start().await;
    let connect_v5 = |clean: bool| {
        // Flags: clean start or not; properties: Session Expiry Interval (0x11) = 300.
        let flags = if clean { 0x02 } else { 0x00 };
        let body = [
            &b"\0\x04MQTT\x05"[..],
            &[flags, 0, 60, 5, 0x11, 0, 0, 1, 44],
            &str16("dup5"),
        ]
        .concat();
        packet(0x10, &body)
    };
    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    s.write_all(&connect_v5(true)).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, 0x20);
    let body = [&[0, 1, 0][..], &str16("dup/#"), &[1]].concat();
    s.write_all(&packet(0x82, &body)).await.unwrap();
    assert_eq!(read_packet(&mut s).await.0, 0x90);

    let mut p = Client::v3(&broker, "dup5-pub").await;
    p.publish("dup/x", b"again", 1, false).await;
    p.expect_puback().await;
    let (h, first) = read_packet(&mut s).await;
    assert_eq!(h, 0x32, "QoS 1, DUP=0 the first time");
    drop(s); // no PUBACK

    let mut s = TcpStream::connect(broker.mqtt).await.unwrap();
    s.write_all(&connect_v5(false)).await.unwrap();
    let (h, ack) = read_packet(&mut s).await;
    assert_eq!((h, ack[0]), (0x20, 1), "session present");
    let (h, again) = read_packet(&mut s).await;
    assert_eq!(h, 0x3A, "QoS 1 with DUP=1");
    let tl = u16::from_be_bytes([first[0], first[1]]) as usize;
    assert_eq!(
        again[2 + tl..4 + tl],
        first[2 + tl..4 + tl],
        "same packet id"
    );
    assert!(again.ends_with(b"again"));
    broker.stop().await;
}
