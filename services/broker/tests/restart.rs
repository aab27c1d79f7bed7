//! Durability: the built binary is killed with SIGKILL and started again on the same data
//! directory; retained messages and persistent sessions (subscriptions and the QoS 1/2
//! messages owed to them) must survive. Also: the log is compacted and still recovers.

mod common;
mod raw;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Broker, Client, Ev, reading};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lentera-broker-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the binary on port 0 with `data_dir`; returns it and its MQTT port.
fn spawn(dir: &Path, data_dir: &Path) -> (Running, u16) {
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    // Appended, so the logs of every run on this directory are kept for a post-mortem.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .env("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0")
        .env("LENTERA_AUTH__OPEN", "true")
        .env("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0")
        .env("LENTERA_BROKER__DATA_DIR", data_dir)
        .env("LENTERA_TELEMETRY__LOG", "debug")
        .env("LENTERA_READY_FILE", &ready)
        .env_remove("LENTERA_CONFIG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            let mqtt: std::net::SocketAddr = v["mqtt"].as_str().unwrap().parse().unwrap();
            return (running, mqtt.port());
        }
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn v3(port: u16, id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(10));
    o.set_clean_session(clean);
    o
}

fn sigkill(r: &mut Running) {
    let ok = Command::new("kill")
        .args(["-9", &r.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let _ = r.0.wait();
}

/// [MQTT-3.1.2-4] session state (subscriptions, QoS 1/2 messages not yet delivered) and
/// [MQTT-3.3.1-5] retained messages are kept by the server — here across a SIGKILL: every
/// message acknowledged to the publisher (PUBACK / PUBCOMP) is delivered after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged_retained_or_queued_for_a_persistent_session() {
    let dir = temp_dir("restart");
    let data = dir.join("data");
    let (mut broker, port) = spawn(&dir, &data);

    let mut h = Client::connect_v3(v3(port, "historian", false)).await;
    h.subscribe("lentera/#", 2).await;
    h.disconnect().await;
    let v5o = |port| {
        let mut o = rumqttc::v5::MqttOptions::new("dash", "127.0.0.1", port);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let mut dash = Client::connect_v5(v5o(port)).await;
    dash.subscribe("lentera/+/status", 1).await;
    dash.disconnect().await; // offline, so nothing reaches it before the crash

    let mut p = Client::connect_v3(v3(port, "ingest", true)).await;
    p.publish("lentera/gh-1/status", b"online", 1, true).await;
    p.expect_puback().await;
    for i in 0..50 {
        p.publish("lentera/gh-1/telemetry", &reading(i), 1, false)
            .await;
        p.expect_puback().await;
    }
    p.publish("lentera/gh-1/telemetry", &reading(1000), 2, false)
        .await;
    p.expect("PUBCOMP", |e| matches!(e, Ev::PubComp)).await;
    // Acknowledged: kill at once, no grace.
    sigkill(&mut broker);
    p.kill();

    let (_broker, port) = spawn(&dir, &data);
    let mut h = Client::connect_v3(v3(port, "historian", false)).await;
    assert!(h.session_present, "session lost in the crash");
    let m = h.next_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("lentera/gh-1/status", &b"online"[..])
    );
    // It may have been sent before the crash: a re-delivery carries DUP=1 [MQTT-3.3.1-1].
    assert!(m.dup);
    for i in 0..50 {
        let m = h.next_publish().await;
        assert_eq!(m.payload, reading(i), "lost or reordered");
    }
    let m = h.next_publish().await;
    assert_eq!((m.payload, m.qos), (reading(1000), 2));

    let mut dash = Client::connect_v5(v5o(port)).await;
    assert!(dash.session_present);
    assert_eq!(dash.next_publish().await.payload, b"online");

    // The retained message survived too.
    let mut late = Client::connect_v3(v3(port, "late", true)).await;
    late.subscribe("lentera/+/status", 1).await;
    let m = late.next_publish().await;
    assert_eq!((&m.payload[..], m.retain), (&b"online"[..], true));

    // Acknowledged messages are not delivered again after another restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.disconnect().await;
    drop(_broker);
    let (_broker, port) = spawn(&dir, &data);
    let mut h = Client::connect_v3(v3(port, "historian", false)).await;
    assert!(h.session_present);
    assert_eq!(h.try_next_publish(Duration::from_millis(500)).await, None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue #12: the broker stamps a reading without `ts` before it logs it, so a reading
/// queued for an offline persistent session (the historian) comes back after a SIGKILL
/// with the `ts` a live subscriber saw before the crash, and is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stamped_reading_queued_across_sigkill_is_redelivered_with_the_same_ts() {
    let dir = temp_dir("stamp");
    let data = dir.join("data");
    let (mut broker, port) = spawn(&dir, &data);
    let mut h = Client::connect_v3(v3(port, "historian", false)).await;
    h.subscribe("lentera/+/telemetry", 1).await;
    h.disconnect().await;
    let mut live = Client::connect_v3(v3(port, "web", true)).await;
    live.subscribe("lentera/+/telemetry", 1).await;
    let mut board = Client::connect_v3(v3(port, "gh-1", true)).await;
    board
        .publish("lentera/gh-1/telemetry", br#"{"lux":3.5}"#, 1, false)
        .await;
    board.expect_puback().await;
    let seen = live.next_publish().await.payload;
    let text = String::from_utf8(seen.clone()).unwrap();
    assert!(
        text.starts_with(r#"{"ts":""#) && text.ends_with(r#"Z","lux":3.5}"#),
        "stamped by the broker: {text}"
    );
    sigkill(&mut broker);
    board.kill();
    live.kill();

    let (_broker, port) = spawn(&dir, &data);
    let mut h = Client::connect_v3(v3(port, "historian", false)).await;
    assert!(h.session_present, "session lost in the crash");
    let m = h.next_publish().await;
    assert_eq!(
        String::from_utf8(m.payload).unwrap(),
        text,
        "the same bytes, so the same ts"
    );
    assert_eq!(h.try_next_publish(Duration::from_millis(300)).await, None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A board whose PUBACKs the crash took: it resends after the restart, with DUP=1 or as
/// rumqttc 0.25 does with DUP=0, and the historian gets each reading again with the `ts`
/// it was given the first time, so it stores it once (`router/stamps.rs`). The stamps
/// survive a start-up compaction too (a second kill before the board is back). A new
/// reading after the resends is stamped anew, even with the bytes of an old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_resent_after_sigkill_keeps_the_ts_it_was_given() {
    use tokio::net::TcpStream;
    const TOPIC: &str = "lentera/gh-1/telemetry";
    fn publish(packet_id: u16, dup: bool, payload: &[u8]) -> Vec<u8> {
        let body = [&raw::str16(TOPIC)[..], &packet_id.to_be_bytes(), payload].concat();
        raw::packet(0x32 | u8::from(dup) << 3, &body)
    }
    async fn board(port: u16) -> (TcpStream, bool) {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = raw::send_connect(addr, &raw::connect_v311_with(0, &raw::str16("gh-1"))).await;
        let (h, body) = raw::read_packet(&mut s).await.expect("CONNACK");
        assert_eq!((h, body.get(1)), (0x20, Some(&0)));
        (s, body[0] & 1 == 1)
    }
    async fn sent(s: &mut TcpStream, packet_id: u16, dup: bool, payload: &[u8]) {
        raw::send(s, &publish(packet_id, dup, payload)).await;
        let (h, body) = raw::read_packet(s).await.expect("PUBACK");
        assert_eq!((h, &body[..2]), (0x40, &packet_id.to_be_bytes()[..]));
    }
    fn ts(m: common::Msg) -> (String, String) {
        let text = String::from_utf8(m.payload).unwrap();
        let rest = text.strip_prefix(r#"{"ts":""#).expect("stamped").to_owned();
        let (ts, rest) = rest.split_once('"').unwrap();
        (ts.to_owned(), rest.to_owned())
    }

    let dir = temp_dir("resend");
    let data = dir.join("data");
    let (mut broker, port) = spawn(&dir, &data);
    let mut h = Client::connect_v3(v3(port, "historian", false)).await;
    h.subscribe("lentera/+/telemetry", 1).await;
    h.disconnect().await;
    // Acknowledged, so on disk; the board is to think the PUBACKs were lost.
    let (mut b, _) = board(port).await;
    sent(&mut b, 1, false, br#"{"lux":1}"#).await;
    sent(&mut b, 2, false, br#"{"lux":2}"#).await;
    sigkill(&mut broker);
    drop(b);
    let (mut broker, port) = spawn(&dir, &data);
    // Started from a compacted log; something durable after it says it is on disk.
    let mut o = Client::connect_v3(v3(port, "other", false)).await;
    o.subscribe("x", 1).await;
    o.kill();
    sigkill(&mut broker);

    let (_broker, port) = spawn(&dir, &data);
    let (mut b, present) = board(port).await;
    assert!(present, "session lost in the crash");
    sent(&mut b, 1, true, br#"{"lux":1}"#).await;
    sent(&mut b, 2, false, br#"{"lux":2}"#).await;
    sent(&mut b, 3, false, br#"{"lux":3}"#).await;
    sent(&mut b, 1, false, br#"{"lux":1}"#).await;
    let mut h = Client::connect_v3(v3(port, "historian", false)).await;
    assert!(h.session_present);
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(ts(h.next_publish().await));
    }
    let rest: Vec<_> = seen.iter().map(|(_, r)| r.as_str()).collect();
    let lux = |n| format!(r#","lux":{n}}}"#);
    assert_eq!(rest, [lux(1), lux(2), lux(1), lux(2), lux(3), lux(1)]);
    assert_eq!(seen[2].0, seen[0].0, "DUP=1 resend: the same ts");
    assert_eq!(seen[3].0, seen[1].0, "DUP=0 resend (rumqttc): the same ts");
    assert_ne!(seen[4].0, seen[1].0);
    assert_ne!(
        seen[5].0, seen[0].0,
        "a new reading with old bytes: a new ts"
    );
    assert_eq!(h.try_next_publish(Duration::from_millis(300)).await, None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The log is rewritten as a snapshot once it passes `store_compact_bytes`; the state
/// recovered from the compacted log is the same, and the file stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_log_stays_small_and_recovers_the_same_state() {
    let dir = temp_dir("compact");
    let mut settings = Broker::settings_with_store(&dir);
    settings.broker.store_compact_bytes = 16 * 1024;
    let broker = Broker::start_with(settings.clone()).await;
    let mut o = Client::v3_options(&broker, "keeper");
    o.set_clean_session(false);
    let mut s = Client::connect_v3(o).await;
    s.subscribe("c/#", 1).await;
    let mut p = Client::v3(&broker, "p").await;
    // ~200 KB through the log: delivered and acknowledged, so none of it is live.
    for i in 0..400 {
        p.publish("c/x", &[b'x'; 500], 1, i % 100 == 0).await;
        p.expect_puback().await;
        s.next_publish().await;
    }
    s.disconnect().await;
    for i in 0..3 {
        p.publish("c/y", format!("{i}").as_bytes(), 1, false).await;
        p.expect_puback().await;
    }
    broker.stop().await;
    let size = std::fs::metadata(dir.join("broker.log")).unwrap().len();
    assert!(size < 32 * 1024, "log not compacted: {size} bytes");

    let broker = Broker::start_with(settings).await;
    let mut o = Client::v3_options(&broker, "keeper");
    o.set_clean_session(false);
    let mut s = Client::connect_v3(o).await;
    assert!(s.session_present);
    for i in 0..3 {
        assert_eq!(s.next_publish().await.payload, format!("{i}").into_bytes());
    }
    assert_eq!(s.try_next_publish(Duration::from_millis(300)).await, None);
    let mut late = Client::v3(&broker, "late").await;
    late.subscribe("c/x", 1).await;
    assert!(late.next_publish().await.retain);
    broker.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
