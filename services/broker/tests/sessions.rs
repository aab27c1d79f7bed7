//! Connection lifecycle through the real broker: Last Will, takeover, clean_session=false,
//! keep-alive 0, and a stalled subscriber not holding up anyone else.

mod common;

use std::time::Duration;

use common::{Broker, Client, reading};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QUIET: Duration = Duration::from_millis(400);

fn v3_will(broker: &Broker, id: &str) -> rumqttc::MqttOptions {
    let mut o = Client::v3_options(broker, id);
    o.set_last_will(rumqttc::LastWill::new(
        format!("lentera/{id}/status"),
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_will_is_published_on_abrupt_close_and_retained() {
    let broker = Broker::start().await;
    let mut watcher = Client::v3(&broker, "watcher").await;
    watcher.subscribe("lentera/+/status", 1).await;

    let board = Client::connect_v3(v3_will(&broker, "gh-1")).await;
    board
        .publish("lentera/gh-1/status", b"online", 1, true)
        .await;
    assert_eq!(watcher.next_publish().await.payload, b"online");
    board.kill();

    let m = watcher.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.qos),
        ("lentera/gh-1/status", &b"offline"[..], 1)
    );
    // The will was retained, so the dashboard that connects later knows too.
    let mut late = Client::v5(&broker, "late").await;
    late.subscribe("lentera/gh-1/status", 1).await;
    let m = late.next_publish().await;
    assert_eq!((&m.payload[..], m.retain), (&b"offline"[..], true));
    assert!(
        broker
            .metrics()
            .await
            .contains("lentera_broker_wills_published_total 1\n")
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_is_published_on_abrupt_close() {
    let broker = Broker::start().await;
    let mut watcher = Client::v3(&broker, "watcher").await;
    watcher.subscribe("lentera/+/status", 0).await;
    let mut o = Client::v5_options(&broker, "svc");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "lentera/svc/status",
        "offline",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        None,
    ));
    let svc = Client::connect_v5(o).await;
    svc.kill();
    let m = watcher.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("lentera/svc/status", &b"offline"[..])
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_disconnect_discards_the_will() {
    let broker = Broker::start().await;
    let mut watcher = Client::v3(&broker, "watcher").await;
    watcher.subscribe("lentera/#", 0).await;
    let board = Client::connect_v3(v3_will(&broker, "gh-2")).await;
    board.disconnect().await;
    let mut o = Client::v5_options(&broker, "gh-3");
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "lentera/gh-3/status",
        "offline",
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        false,
        None,
    ));
    Client::connect_v5(o).await.disconnect().await;
    assert_eq!(watcher.try_next_publish(Duration::from_secs(1)).await, None);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_client_id_takes_over_and_old_will_is_not_published() {
    let broker = Broker::start().await;
    let mut watcher = Client::v3(&broker, "watcher").await;
    watcher.subscribe("lentera/+/status", 0).await;

    let mut first = Client::connect_v3(v3_will(&broker, "lamp-1")).await;
    first.subscribe("lentera/lamp-1/lamp/set", 1).await;
    let mut second = Client::connect_v3(v3_will(&broker, "lamp-1")).await;
    first.expect_closed().await;
    second.subscribe("lentera/lamp-1/lamp/set", 1).await;

    let lamp = Client::v3(&broker, "lamp-controller").await;
    lamp.publish("lentera/lamp-1/lamp/set", b"on", 1, false)
        .await;
    assert_eq!(second.next_publish().await.payload, b"on");
    // The replaced connection's "offline" will would contradict the live one.
    assert_eq!(watcher.try_next_publish(QUIET).await, None);
    assert!(
        broker
            .metrics()
            .await
            .contains("lentera_broker_session_takeovers_total 1\n")
    );

    // A v5 takeover is announced with reason "session taken over".
    let mut a = Client::v5(&broker, "dup5").await;
    let _b = Client::v5(&broker, "dup5").await;
    assert!(a.expect_closed().await.contains("SessionTakenOver"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_false_client_connects_and_receives() {
    let broker = Broker::start().await;
    let mut o = Client::v3_options(&broker, "historian");
    o.set_clean_session(false);
    let mut historian = Client::connect_v3(o).await;
    historian.subscribe("lentera/+/telemetry", 1).await;
    let p = Client::v5(&broker, "ingest").await;
    for i in 0..3 {
        p.publish("lentera/gh-1/telemetry", &reading(i), 1, false)
            .await;
    }
    for i in 0..3 {
        assert_eq!(historian.next_publish().await.payload, reading(i));
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_id_gets_one_assigned() {
    let broker = Broker::start().await;
    let mut anon = Client::connect_v3(Client::v3_options(&broker, "")).await;
    anon.subscribe("x", 0).await;
    let mut anon5 = Client::connect_v5(Client::v5_options(&broker, "")).await;
    anon5.subscribe("x", 0).await;
    anon5.publish("x", b"1", 0, false).await;
    assert_eq!(anon.next_publish().await.payload, b"1");
    assert_eq!(anon5.next_publish().await.payload, b"1");
    broker.stop().await;
}

/// MQTT says keep-alive 0 disables the mechanism; ntex-mqtt alone closed such
/// connections after ~31 s of silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_connection_stays_open_while_silent() {
    let broker = Broker::start().await;
    let mut o = Client::v3_options(&broker, "sleepy");
    o.set_keep_alive(Duration::ZERO);
    let mut sleepy = Client::connect_v3(o).await;
    sleepy.subscribe("wake", 0).await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    let p = Client::v3(&broker, "alarm").await;
    p.publish("wake", b"up", 0, false).await;
    assert_eq!(sleepy.next_publish().await.payload, b"up");
    broker.stop().await;
}

/// Encodes an MQTT remaining length.
fn remaining_len(mut n: usize, out: &mut Vec<u8>) {
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
    remaining_len(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn mqtt_str(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

/// A raw MQTT 3.1.1 client that subscribes at QoS 1 and then never reads or acknowledges.
async fn stalled_subscriber(
    addr: std::net::SocketAddr,
    id: &str,
    filter: &str,
) -> tokio::net::TcpStream {
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut connect = mqtt_str("MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]);
    connect.extend(mqtt_str(id));
    stalled.write_all(&packet(0x10, &connect)).await.unwrap();
    let mut subscribe = vec![0, 1];
    subscribe.extend(mqtt_str(filter));
    subscribe.push(1);
    stalled.write_all(&packet(0x82, &subscribe)).await.unwrap();
    let mut buf = [0u8; 9]; // CONNACK (4) + SUBACK (5)
    stalled.read_exact(&mut buf).await.unwrap();
    assert_eq!((buf[0], buf[3], buf[4], buf[8]), (0x20, 0, 0x90, 1));
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_closes_an_old_connection_stuck_on_a_full_inflight_window() {
    let mut settings = lentera_broker::settings::Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    settings.auth.open = true;
    settings.broker.mqtt_addr = "127.0.0.1:0".into();
    settings.broker.admin_addr = "127.0.0.1:0".into();
    settings.broker.max_inflight = 2;
    settings.broker.data_dir = Default::default();
    let broker = Broker::start_with(settings).await;
    let mut old = stalled_subscriber(broker.mqtt, "board-7", "cmd/#").await;
    let mut p = Client::v3(&broker, "p").await;
    for _ in 0..5 {
        p.publish("cmd/x", b"on", 1, false).await;
        p.expect_puback().await;
    }
    let _new = Client::v3(&broker, "board-7").await;
    // The old socket must be closed now, not after its 90 s keep-alive timeout.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut sink = [0u8; 1024];
        loop {
            match old.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "old connection still open after takeover");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_never_delays_others_and_loses_only_beyond_its_session_queue() {
    let mut settings = lentera_broker::settings::Settings::default();
    // Not about identity: no registry, every client may connect (auth.open).
    settings.auth.open = true;
    settings.broker.mqtt_addr = "127.0.0.1:0".into();
    settings.broker.admin_addr = "127.0.0.1:0".into();
    // The stalled subscriber may owe at most 32 QoS 1 messages (queued or in flight).
    settings.broker.session_queue_capacity = 32;
    settings.broker.data_dir = Default::default();
    settings.broker.max_inflight = 4;
    let broker = Broker::start_with(settings).await;

    let stalled = stalled_subscriber(broker.mqtt, "stalled", "flood/#").await;

    let mut healthy = Client::v3(&broker, "healthy").await;
    healthy.subscribe("flood/#", 1).await;
    let mut p = Client::v3(&broker, "flooder").await;
    for i in 0..100 {
        p.publish("flood/x", format!("{i}").as_bytes(), 1, false)
            .await;
        p.expect_puback().await;
    }
    for i in 0..100 {
        assert_eq!(
            healthy.next_publish().await.payload,
            format!("{i}").as_bytes()
        );
    }
    let text = broker.metrics().await;
    let dropped = |reason: &str| -> u64 {
        let prefix = format!("lentera_broker_messages_dropped_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    // Policy when full: the newest are dropped and counted — exactly the 68 beyond the
    // stalled subscriber's 32; the healthy one lost nothing.
    assert_eq!(dropped("session_queue_full"), 68, "{text}");
    assert_eq!(dropped("queue_full"), 0, "{text}");
    drop(stalled);
    broker.stop().await;
}
