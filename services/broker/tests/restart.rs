//! Durability: the built binary is killed with SIGKILL and started again on the same data
//! directory; retained messages and persistent sessions (subscriptions and the QoS 1/2
//! messages owed to them) must survive. Also: the log is compacted and still recovers.

mod common;

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
