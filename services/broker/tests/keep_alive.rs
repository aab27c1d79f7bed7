//! Connection-level rules checked with raw sockets, so the client does exactly (and only)
//! what the test says: keep-alive enforcement for MQTT 3.1.1 and 5.0, the DISCONNECT
//! reason codes the broker sends (0x8D keep-alive timeout, 0x8E session taken over), and
//! the will on DISCONNECT 0x00 versus 0x04.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Broker, Client, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
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

/// CONNECT with clean start, the given keep-alive, and a QoS 0 will `will/{id}` = "gone".
fn connect(v5: bool, id: &str, keep_alive: u16) -> Vec<u8> {
    let mut b = str16(b"MQTT");
    b.push(if v5 { 5 } else { 4 });
    b.push(0x02 | 0x04); // clean start, will flag (QoS 0, not retained)
    b.extend_from_slice(&keep_alive.to_be_bytes());
    if v5 {
        b.push(0); // no CONNECT properties
    }
    b.extend(str16(id.as_bytes()));
    if v5 {
        b.push(0); // no will properties
    }
    b.extend(str16(format!("will/{id}").as_bytes()));
    b.extend(str16(b"gone"));
    packet(0x10, &b)
}

/// Reads one packet: (first byte, body); `None` when the socket closed.
async fn read_packet(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = s.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

async fn open(addr: SocketAddr, v5: bool, id: &str, keep_alive: u16) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&connect(v5, id, keep_alive)).await.unwrap();
    let (kind, body) = tokio::time::timeout(WAIT, read_packet(&mut s))
        .await
        .unwrap()
        .expect("CONNACK");
    assert_eq!((kind, body[1]), (0x20, 0), "CONNACK accepted");
    s
}

/// Waits (up to 10 s) until the broker closes `s`; returns when, and the body of a v5
/// DISCONNECT if one came first (reason code, then properties).
async fn until_closed(s: &mut TcpStream) -> (Instant, Option<Vec<u8>>) {
    let mut disconnect = None;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((kind, body)) = read_packet(s).await {
            if kind == 0xE0 {
                disconnect = Some(body);
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "connection still open after 10 s");
    (Instant::now(), disconnect)
}

/// A DISCONNECT body's reason code, and whether its properties hold a reason string
/// (property 0x1F) containing `text`.
fn reason(body: &[u8], text: &str) -> (u8, bool) {
    let has = body.len() > 2
        && body[2..].contains(&0x1F)
        && body.windows(text.len()).any(|w| w == text.as_bytes());
    (body[0], has)
}

/// [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): with no packet from the client for
/// one and a half times its keep-alive, the broker disconnects it "as if the network had
/// failed" — so its will is published [MQTT-3.1.2-8]; MQTT 5 first says why with
/// DISCONNECT 0x8D Keep Alive timeout (§3.14.2.1). A client that sends within 1.5× (here
/// every 1.25×) stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_after_one_and_a_half_keep_alives_and_their_will_sent() {
    let broker = Broker::start().await;
    let mut watcher = Client::v5(&broker, "ka-watch").await;
    watcher.subscribe("will/#", 0).await;
    const K: u16 = 2;

    let mut silent3 = open(broker.mqtt, false, "ka3", K).await;
    let t3 = Instant::now();
    let mut silent5 = open(broker.mqtt, true, "ka5", K).await;
    let t5 = Instant::now();
    let mut chatty3 = open(broker.mqtt, false, "chatty3", K).await;
    let mut chatty5 = open(broker.mqtt, true, "chatty5", K).await;

    let pinger = tokio::spawn(async move {
        // 3 PINGREQs 2.5 s apart: longer than the keep-alive, shorter than 1.5× it.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            for s in [&mut chatty3, &mut chatty5] {
                s.write_all(&[0xC0, 0]).await.unwrap();
                let resp = tokio::time::timeout(WAIT, read_packet(s)).await.unwrap();
                assert_eq!(resp, Some((0xD0, vec![])), "PINGRESP, still connected");
            }
        }
    });

    let ((end3, reason3), (end5, reason5)) =
        tokio::join!(until_closed(&mut silent3), until_closed(&mut silent5));
    let (after3, after5) = (end3 - t3, end5 - t5);
    eprintln!("keep-alive {K} s: v3 closed after {after3:?}, v5 after {after5:?}");
    // Never before 1.5× the keep-alive (so never before 1×): the broker's deadline is
    // 1.5× after the last packet and its workers check deadlines once a second, so the
    // close comes up to 1 s after that. (Measured from when we saw CONNACK, a little after the broker's
    // timer started, hence the small allowance below 3 s.)
    let window = Duration::from_millis(2_900)..Duration::from_millis(4_600);
    assert!(window.contains(&after3), "v3 closed after {after3:?}");
    assert!(window.contains(&after5), "v5 closed after {after5:?}");
    assert_eq!(reason3, None, "MQTT 3.1.1 has no server DISCONNECT");
    let body = reason5.expect("a v5 DISCONNECT before the close");
    assert_eq!(reason(&body, "Keep Alive"), (0x8D, true), "{body:?}");

    let mut wills = vec![
        watcher.next_publish().await.topic,
        watcher.next_publish().await.topic,
    ];
    wills.sort();
    assert_eq!(wills, ["will/ka3", "will/ka5"]);
    pinger.await.unwrap();
    broker.stop().await;
}

/// [MQTT-3.1.4-3] (5.0): a second connection with the same client id makes the broker
/// send the first one DISCONNECT 0x8E Session taken over, then close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_takeover_sends_disconnect_0x8e_to_the_old_connection() {
    let broker = Broker::start().await;
    let mut old = open(broker.mqtt, true, "twin", 60).await;
    let _new = Client::v5(&broker, "twin").await;
    let (_, body) = until_closed(&mut old).await;
    let body = body.expect("a DISCONNECT before the close");
    assert_eq!(reason(&body, "took over"), (0x8E, true), "{body:?}");
    broker.stop().await;
}

/// MQTT 5 §3.3.2.3.4: a Topic Alias above the Topic Alias Maximum the broker announced
/// (32) is a protocol error answered with DISCONNECT 0x94 Topic Alias invalid, with a
/// reason string; an alias within it works (tests/v5_features.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_topic_alias_above_the_maximum_gets_disconnect_0x94() {
    let broker = Broker::start().await;
    let mut s = open(broker.mqtt, true, "alias", 60).await;
    // QoS 0 PUBLISH "t" with properties [Topic Alias (0x23) = 1000], payload "x".
    let body = [&str16(b"t")[..], &[3, 0x23, 0x03, 0xE8], b"x"].concat();
    s.write_all(&packet(0x30, &body)).await.unwrap();
    let (_, body) = until_closed(&mut s).await;
    let body = body.expect("a DISCONNECT before the close");
    assert_eq!(reason(&body, "alias"), (0x94, true), "{body:?}");
    broker.stop().await;
}

/// MQTT 5 §3.14.2.1: DISCONNECT 0x00 deletes the will [MQTT-3.1.2-10]; 0x04 Disconnect
/// with Will Message has it published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_0x04_publishes_the_will_and_0x00_does_not() {
    let broker = Broker::start().await;
    let mut watcher = Client::v5(&broker, "dw-watch").await;
    watcher.subscribe("will/#", 0).await;
    for (id, reason) in [("normal", 0x00), ("with-will", 0x04)] {
        let mut s = open(broker.mqtt, true, id, 60).await;
        s.write_all(&[0xE0, 1, reason]).await.unwrap();
        until_closed(&mut s).await;
    }
    // Had "normal" left a will, it would have come first.
    assert_eq!(watcher.next_publish().await.topic, "will/with-will");
    broker.stop().await;
}

/// `broker.max_keep_alive_secs`: an MQTT 5 client asking for longer (or for none) is
/// told the cap in CONNACK's Server Keep Alive (property 0x13) [MQTT-3.1.2-21] and held
/// to it; MQTT 3.1.1 cannot be told, so it is refused with CONNACK 2, as Mosquitto's
/// `max_keepalive` does. A client within the cap hears nothing about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_above_the_cap_is_lowered_for_v5_and_refused_for_v3() {
    let mut s = Broker::settings_with_store(std::path::Path::new(""));
    s.broker.max_keep_alive_secs = 1;
    let broker = Broker::start_with(s).await;

    for asked in [60u16, 0] {
        let mut c = TcpStream::connect(broker.mqtt).await.unwrap();
        c.write_all(&connect(true, &format!("cap5-{asked}"), asked))
            .await
            .unwrap();
        let at = Instant::now();
        let (kind, body) = read_packet(&mut c).await.expect("CONNACK");
        assert_eq!((kind, body[1]), (0x20, 0), "accepted");
        let props = &body[3..];
        let ka = props
            .windows(3)
            .find(|w| w[0] == 0x13)
            .map(|w| u16::from_be_bytes([w[1], w[2]]));
        assert_eq!(ka, Some(1), "Server Keep Alive for a client asking {asked}");
        // Held to it: silent for 1.5 s, it is closed with 0x8D.
        let (closed, disconnect) = until_closed(&mut c).await;
        assert!(
            closed - at < Duration::from_secs(4),
            "closed after {:?}",
            closed - at
        );
        assert_eq!(disconnect.map(|d| d[0]), Some(0x8D));
    }

    let mut v3 = TcpStream::connect(broker.mqtt).await.unwrap();
    v3.write_all(&connect(false, "cap3", 60)).await.unwrap();
    assert_eq!(
        read_packet(&mut v3).await,
        Some((0x20, vec![0, 2])),
        "CONNACK 2"
    );
    assert_eq!(read_packet(&mut v3).await, None, "then closed");

    // Within the cap: accepted as asked, no Server Keep Alive.
    let mut ok = TcpStream::connect(broker.mqtt).await.unwrap();
    ok.write_all(&connect(true, "cap5-ok", 1)).await.unwrap();
    let (_, body) = read_packet(&mut ok).await.expect("CONNACK");
    assert!(
        !body[3..]
            .windows(3)
            .any(|w| w[0] == 0x13 && w[1..] == [0, 1][..])
    );
    open(broker.mqtt, false, "cap3-ok", 1).await;
}

/// A connection the broker ends (here: taken over) is closed so that its client reads
/// the DISCONNECT and then a clean end of stream — even while it is still sending:
/// the broker shuts its side, takes the client's input until it closes too (bounded),
/// and only then lets go of the socket. Closing with unread input would make the
/// kernel answer with a reset, which can destroy the DISCONNECT before it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_reads_the_disconnect_and_a_clean_end_not_a_reset() {
    let broker = Broker::start().await;
    let a = open(broker.mqtt, true, "chatter", 60).await;
    let (mut rd, mut wr) = a.into_split();
    // The old connection keeps publishing QoS 0 readings as fast as it can.
    let publish = packet(0x30, &[&str16(b"chatter/raw")[..], &[0], b"{}"].concat());
    let writer = tokio::spawn(async move {
        let burst = publish.repeat(64);
        while wr.write_all(&burst).await.is_ok() {
            tokio::task::yield_now().await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _b = open(broker.mqtt, true, "chatter", 60).await;

    let mut first = [0u8; 1];
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        rd.read_exact(&mut first).await?;
        rd.read_to_end(&mut rest).await
    })
    .await
    .expect("the broker ends the old connection");
    assert_eq!(first[0], 0xE0, "a DISCONNECT first");
    assert_eq!(rest.get(1), Some(&0x8E), "Session taken over");
    assert!(
        ended.is_ok(),
        "a clean end of stream after the DISCONNECT, not {ended:?}"
    );
    // No reset came after it either: the client's writes are still taken (a socket
    // closed with unread input answers them with RST, and the writer would stop).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the client's input was reset");
    writer.abort();
}
