//! Closed mode (the default): devices log in with their registry token, services with
//! the auth file. Every refusal over real sockets (rumqttc, 3.1.1 and 5), revocation
//! cutting live connections, the per-device rate limit, and no token in the log.
//! PostgreSQL: a fresh database per test (`lentera_tests::TestDb`, `DATABASE_URL`).

mod common;

use std::time::Duration;

use common::{Broker, Client, Ev, reading};
use lentera_auth::{Kind, admin};
use lentera_broker::settings::Settings;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;

struct Setup {
    broker: Broker,
    pool: sqlx::PgPool,
    db: lentera_tests::TestDb,
    _dir: std::path::PathBuf,
}

/// A migrated database with `devices` provisioned (id → token), and a broker in closed
/// mode reading it, with `ingest` as a service user of the auth file.
async fn setup(devices: &[(&str, Kind)], tune: impl FnOnce(&mut Settings)) -> (Setup, Vec<String>) {
    let db = lentera_tests::TestDb::create().await.expect("DATABASE_URL");
    let pool = db.connect().await.unwrap();
    lentera_db::migrate(&pool).await.unwrap();
    let mut tokens = Vec::new();
    for (id, kind) in devices {
        let d = admin::NewDevice {
            id: (*id).into(),
            kind: *kind,
            name: None,
            location: None,
        };
        tokens.push(admin::add_device(&pool, d).await.unwrap());
    }
    let dir = std::env::temp_dir().join(format!("lentera-devices-{}", lentera_tests::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.toml");
    let hash = lentera_broker::auth::password::hash_with(b"ingest-pw", 1000);
    std::fs::write(
        &file,
        format!(
            "[[users]]\nusername = \"ingest\"\npassword = \"{hash}\"\n\
             publish = [\"lentera/+/telemetry\", \"lentera/+/lamp/set\"]\nsubscribe = [\"lentera/+/lamp/set\"]\n"
        ),
    )
    .unwrap();
    let mut s = Settings::default();
    s.broker.mqtt_addr = "127.0.0.1:0".into();
    s.broker.admin_addr = "127.0.0.1:0".into();
    s.broker.ws_addr = Some(String::new());
    s.broker.data_dir = Default::default();
    s.broker.auth_file = Some(file);
    s.database.url = db.url.clone();
    s.database.migrate = false;
    s.auth.refresh_secs = 1;
    tune(&mut s);
    let broker = Broker::start_with(s).await;
    // Wait for the registry's first load (`/readyz` says so).
    let url = format!("http://{}/readyz", broker.admin);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reqwest::get(&url)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "registry loaded in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup = Setup {
        broker,
        pool,
        db,
        _dir: dir,
    };
    (setup, tokens)
}

impl Setup {
    async fn stop(self) {
        self.broker.stop().await;
        self.pool.close().await;
        let _ = self.db.drop_db().await;
    }
}

fn v3(b: &Broker, id: &str, user: Option<&str>, pw: Option<&str>) -> rumqttc::MqttOptions {
    let mut o = Client::v3_options(b, id);
    if let Some(u) = user {
        o.set_credentials(u, pw.unwrap_or(""));
    }
    o
}

fn v5(b: &Broker, id: &str, user: &str, pw: &str) -> rumqttc::v5::MqttOptions {
    let mut o = Client::v5_options(b, id);
    o.set_credentials(user, pw);
    o
}

/// The CONNACK code an MQTT 3.1.1 client gets (0 = accepted).
async fn v3_code(o: rumqttc::MqttOptions) -> u8 {
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    match tokio::time::timeout(common::WAIT, el.poll()).await.unwrap() {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a))) => a.code as u8,
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code as u8,
        other => panic!("no CONNACK: {other:?}"),
    }
}

/// The CONNACK reason an MQTT 5 client gets.
async fn v5_code(o: rumqttc::v5::MqttOptions) -> V5Code {
    let (_c, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    match tokio::time::timeout(common::WAIT, el.poll()).await.unwrap() {
        Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(a))) => a.code,
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("no CONNACK: {other:?}"),
    }
}

#[tokio::test]
async fn every_wrong_login_is_refused_and_the_right_one_gets_in() {
    let (s, t) = setup(
        &[("gh-1", Kind::Greenhouse), ("gh-2", Kind::Greenhouse)],
        |_| {},
    )
    .await;
    let b = &s.broker;
    admin::set_disabled(&s.pool, "gh-2", true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wrong = format!("{}x", &t[0][..t[0].len() - 1]);
    // 3.1.1: 4 = bad user name or password, 5 = not authorized.
    assert_eq!(v3_code(v3(b, "gh-1", None, None)).await, 5, "no user name");
    assert_eq!(
        v3_code(v3(b, "gh-1", Some("gh-1"), None)).await,
        4,
        "no password"
    );
    assert_eq!(
        v3_code(v3(b, "gh-1", Some("gh-1"), Some(&wrong))).await,
        4,
        "wrong token"
    );
    assert_eq!(
        v3_code(v3(b, "gh-9", Some("gh-9"), Some(&t[0]))).await,
        4,
        "unknown device"
    );
    assert_eq!(
        v3_code(v3(b, "gh-2", Some("gh-2"), Some(&t[1]))).await,
        4,
        "disabled"
    );
    assert_eq!(
        v3_code(v3(b, "gh-2", Some("gh-1"), Some(&t[0]))).await,
        5,
        "client id is not the user name"
    );
    assert_eq!(
        v3_code(v3(b, "ingest-1", Some("ingest"), Some("nope"))).await,
        4
    );
    // MQTT 5: 0x86 / 0x87.
    assert_eq!(
        v5_code(v5(b, "gh-1", "gh-1", &wrong)).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v5_code(v5(b, "gh-9", "gh-9", &t[0])).await,
        V5Code::BadUserNamePassword
    );
    assert_eq!(
        v5_code(v5(b, "gh-2", "gh-1", &t[0])).await,
        V5Code::NotAuthorized
    );
    // The right ones.
    assert_eq!(v3_code(v3(b, "gh-1", Some("gh-1"), Some(&t[0]))).await, 0);
    assert_eq!(v5_code(v5(b, "gh-1", "gh-1", &t[0])).await, V5Code::Success);
    assert_eq!(
        v3_code(v3(b, "ingest-1", Some("ingest"), Some("ingest-pw"))).await,
        0,
        "a service from the auth file, any client id"
    );
    let m = b.metrics().await;
    assert!(
        m.contains(r#"connections_refused_total{reason="bad_credentials"} 7"#),
        "{m}"
    );
    assert!(m.contains(r#"connections_refused_total{reason="client_id_mismatch"} 2"#));
    // The size gauge is refreshed each second.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !b
        .metrics()
        .await
        .contains("lentera_broker_registry_devices 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "gh-2 is disabled: one device"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn a_device_is_held_to_its_own_topics_and_a_service_to_its_rules() {
    let (s, t) = setup(&[("gh-1", Kind::Greenhouse)], |_| {}).await;
    let b = &s.broker;
    let mut watcher = Client::connect_v3(v3(b, "ops", Some("ingest"), Some("ingest-pw"))).await;
    // The service may subscribe to lamp commands, not to telemetry (its rules).
    assert_eq!(watcher.subscribe("lentera/+/lamp/set", 1).await, 1);
    assert_eq!(watcher.subscribe("lentera/+/telemetry", 1).await, 0x80);

    // (The harness reports every refusal as 0x80; MQTT 5 sends 0x87, tests/auth.rs.)
    let mut gh = Client::connect_v5(v5(b, "gh-1", "gh-1", &t[0])).await;
    assert_eq!(gh.subscribe("lentera/gh-1/lamp/set", 1).await, 1);
    assert_eq!(
        gh.subscribe("lentera/gh-2/lamp/set", 1).await,
        0x80,
        "another device's"
    );
    assert_eq!(gh.subscribe("lentera/+/lamp/set", 1).await, 0x80);
    assert_eq!(gh.subscribe("lentera/#", 1).await, 0x80);
    // Publishing as another device: refused (0x87), counted, not routed.
    gh.publish("lentera/gh-2/telemetry", &reading(1), 1, false)
        .await;
    gh.expect("PUBACK 0x87", |e| matches!(e, Ev::PubAck)).await;
    gh.publish("lentera/gh-1/lamp/set", b"on", 1, false).await;
    gh.expect("PUBACK", |e| matches!(e, Ev::PubAck)).await;
    assert!(
        watcher
            .try_next_publish(Duration::from_millis(300))
            .await
            .is_none()
    );
    let m = b.metrics().await;
    assert!(
        m.contains(r#"messages_dropped_total{reason="not_authorized"} 2"#),
        "{m}"
    );
    // Its own telemetry is fine; the service's lamp command reaches the board.
    gh.publish("lentera/gh-1/telemetry", &reading(2), 1, false)
        .await;
    gh.expect("PUBACK", |e| matches!(e, Ev::PubAck)).await;
    watcher
        .publish("lentera/gh-1/lamp/set", b"on", 1, false)
        .await;
    assert_eq!(gh.next_publish().await.topic, "lentera/gh-1/lamp/set");
    s.stop().await;
}

#[tokio::test]
async fn disabling_or_rotating_a_device_cuts_its_live_connection() {
    let (s, t) = setup(
        &[("gh-1", Kind::Greenhouse), ("lamp-1", Kind::Lamp)],
        |_| {},
    )
    .await;
    let b = &s.broker;
    let mut gh5 = Client::connect_v5(v5(b, "gh-1", "gh-1", &t[0])).await;
    let mut lamp3 = Client::connect_v3(v3(b, "lamp-1", Some("lamp-1"), Some(&t[1]))).await;
    admin::set_disabled(&s.pool, "gh-1", true).await.unwrap();
    let why = gh5.expect_closed().await;
    assert!(
        why.contains("NotAuthorized") || why.contains("135"),
        "{why}"
    );
    let new = admin::rotate(&s.pool, "lamp-1").await.unwrap();
    lamp3.expect_closed().await;
    // The old token no longer works; the new one does.
    assert_eq!(
        v3_code(v3(b, "lamp-1", Some("lamp-1"), Some(&t[1]))).await,
        4
    );
    assert_eq!(
        v3_code(v3(b, "lamp-1", Some("lamp-1"), Some(&new))).await,
        0
    );
    let m = b.metrics().await;
    assert!(
        m.contains(r#"connections_closed_total{reason="revoked"} 2"#),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_device_above_its_rate_is_disconnected_and_the_others_go_on() {
    let (s, t) = setup(
        &[("gh-1", Kind::Greenhouse), ("gh-2", Kind::Greenhouse)],
        |s| {
            s.quota.device_rate_per_sec = 1.0;
            s.quota.device_burst = 5;
        },
    )
    .await;
    let b = &s.broker;
    let mut flood = Client::connect_v5(v5(b, "gh-1", "gh-1", &t[0])).await;
    for seq in 0..20 {
        flood
            .publish("lentera/gh-1/telemetry", &reading(seq), 0, false)
            .await;
    }
    let why = flood.expect_closed().await;
    assert!(
        why.contains("MessageRateTooHigh") || why.contains("150"),
        "{why}"
    );
    let mut flood3 = Client::connect_v3(v3(b, "gh-1", Some("gh-1"), Some(&t[0]))).await;
    for seq in 0..20 {
        flood3
            .publish("lentera/gh-1/telemetry", &reading(seq), 0, false)
            .await;
    }
    flood3.expect_closed().await;
    // gh-2 at a sane pace is not touched.
    let mut calm = Client::connect_v3(v3(b, "gh-2", Some("gh-2"), Some(&t[1]))).await;
    calm.publish("lentera/gh-2/telemetry", &reading(1), 1, false)
        .await;
    calm.expect_puback().await;
    let m = b.metrics().await;
    assert!(
        m.contains(r#"connections_closed_total{reason="rate_limited"} 2"#),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_registry_not_loaded_refuses_devices_with_server_unavailable_and_admits_services() {
    let mut s = Settings::default();
    s.broker.mqtt_addr = "127.0.0.1:0".into();
    s.broker.admin_addr = "127.0.0.1:0".into();
    s.broker.ws_addr = Some(String::new());
    s.broker.data_dir = Default::default();
    let dir = std::env::temp_dir().join(format!("lentera-nodb-{}", lentera_tests::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.toml");
    let hash = lentera_broker::auth::password::hash_with(b"pw", 1000);
    std::fs::write(
        &file,
        format!("[[users]]\nusername = \"web\"\npassword = \"{hash}\"\n"),
    )
    .unwrap();
    s.broker.auth_file = Some(file);
    // Nobody listens there: no snapshot ever.
    s.database.url = "postgres://postgres:postgres@127.0.0.1:1/none".into();
    let b = Broker::start_with(s).await;
    let token = lentera_auth::token::generate();
    assert_eq!(v3_code(v3(&b, "gh-1", Some("gh-1"), Some(&token))).await, 3);
    assert_eq!(
        v5_code(v5(&b, "gh-1", "gh-1", &token)).await,
        V5Code::ServerUnavailable
    );
    assert_eq!(v3_code(v3(&b, "web-1", Some("web"), Some("pw"))).await, 0);
    let ready = reqwest::get(format!("http://{}/readyz", b.admin))
        .await
        .unwrap();
    assert!(!ready.status().is_success());
    assert!(ready.text().await.unwrap().contains("\"registry\":false"));
    b.stop().await;
}

#[tokio::test]
async fn tokens_never_appear_in_the_broker_log() {
    // The broker's own binary with debug logs, so everything it writes is captured.
    let (s, t) = setup(&[("gh-1", Kind::Greenhouse)], |_| {}).await;
    let dir = std::env::temp_dir().join(format!("lentera-log-{}", lentera_tests::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready.json");
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .env("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0")
        .env("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0")
        .env("LENTERA_BROKER__WS_ADDR", "")
        .env("LENTERA_BROKER__DATA_DIR", "")
        .env("LENTERA_DATABASE__URL", &s.db.url)
        .env("LENTERA_TELEMETRY__LOG", "debug")
        .env("LENTERA_READY_FILE", &ready)
        .env_remove("LENTERA_CONFIG")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let addr: std::net::SocketAddr = loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            break v["mqtt"].as_str().unwrap().parse().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "the broker starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let opts = |pw: &str| {
        let mut o = rumqttc::MqttOptions::new("gh-1", "127.0.0.1", addr.port());
        o.set_credentials("gh-1", pw);
        o
    };
    let wrong = lentera_auth::token::generate();
    // Right until the registry has loaded, then once more with a wrong token.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while v3_code(opts(&t[0])).await != 0 {
        assert!(std::time::Instant::now() < deadline, "admitted once loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v3_code(opts(&wrong)).await, 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(dir.join("log")).unwrap();
    assert!(text.contains("connection refused"), "the log was captured");
    for secret in [&t[0], &wrong] {
        // Not even a prefix of it (the part after `lt_`).
        assert!(!text.contains(&secret[3..15]), "a token in the log");
    }
    let _ = std::fs::remove_dir_all(&dir);
    s.stop().await;
}
