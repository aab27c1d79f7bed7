//! The built binary as deployed: port 0, the ready file, and SIGTERM with a client still
//! connected.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn wait_for_ready_file(path: &PathBuf) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).expect("ready file is JSON");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ready file {} never appeared", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_ready_file_serves_mqtt_and_exits_on_sigterm() {
    let ready =
        std::env::temp_dir().join(format!("lentera-broker-ready-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .env("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0")
        .env("LENTERA_AUTH__OPEN", "true")
        .env("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0")
        .env("LENTERA_READY_FILE", &ready)
        .env("LENTERA_BROKER__DATA_DIR", "")
        .env_remove("LENTERA_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let addrs = wait_for_ready_file(&ready);
    let mqtt: std::net::SocketAddr = addrs["mqtt"].as_str().unwrap().parse().unwrap();
    let admin = addrs["admin"].as_str().unwrap();
    assert_ne!(mqtt.port(), 0);

    let status = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let mut opts = rumqttc::MqttOptions::new("bin-sub", "127.0.0.1", mqtt.port());
    opts.set_keep_alive(Duration::from_secs(10));
    let mut sub = Client::connect_v3(opts).await;
    sub.subscribe("lentera/#", 1).await;
    sub.publish("lentera/bin/status", b"online", 1, false).await;
    assert_eq!(sub.next_publish().await.payload, b"online");

    // SIGTERM with the subscriber still connected: the broker must still exit promptly
    // (docker stop gives 10 s before SIGKILL).
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = loop {
        if let Some(s) = running.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "broker did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    let _ = std::fs::remove_file(&ready);
}

/// `[limits]` and `[broker.telemetry]` are read like every setting: from the shared
/// settings file (`LENTERA_CONFIG`, the same file the other services read, their
/// sections ignored) and `LENTERA_…` variables over it; settings that cannot work stop
/// the start with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_stamping_come_from_the_shared_file_and_the_environment() {
    let dir = std::env::temp_dir().join(format!("lentera-broker-cfg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("lentera.toml");
    std::fs::write(
        &config,
        r#"
[mqtt]
topic_prefix = "lentera"

[ingest]
max_batch = 10

[broker.telemetry]
stamp_offset = 3
stamp_stride = 4

[limits]
ranges = { lux = { min = 0, max = 10 } }
"#,
    )
    .unwrap();
    let ready = dir.join("ready.json");
    let child = Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .env("LENTERA_CONFIG", &config)
        .env("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0")
        .env("LENTERA_AUTH__OPEN", "true")
        .env("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0")
        .env("LENTERA_BROKER__DATA_DIR", "")
        .env("LENTERA_LIMITS__DEFAULT_RANGE__MAX", "100")
        .env("LENTERA_READY_FILE", &ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running(child);
    let addrs = wait_for_ready_file(&ready);
    let mqtt: std::net::SocketAddr = addrs["mqtt"].as_str().unwrap().parse().unwrap();
    let opts = |id: &str| {
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", mqtt.port());
        o.set_keep_alive(Duration::from_secs(10));
        o
    };
    let mut sub = Client::connect_v3(opts("sub")).await;
    sub.subscribe("lentera/#", 1).await;
    let mut board = Client::connect_v3(opts("gh-1")).await;
    for (payload, refused) in [
        (&br#"{"lux":11}"#[..], true), // the file's range
        (br#"{"co2":101}"#, true),     // the environment's default range
        (br#"{"co2":99}"#, false),
    ] {
        board
            .publish("lentera/gh-1/telemetry", payload, 1, false)
            .await;
        board.expect_puback().await;
        let m = sub.next_publish().await;
        if refused {
            assert_eq!(m.topic, "lentera/gh-1/error");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(v["reason"], "out_of_range", "{v}");
        } else {
            assert_eq!(m.topic, "lentera/gh-1/telemetry");
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let ts = chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap()).unwrap();
            assert_eq!(
                ts.timestamp_micros() % 4,
                3,
                "the file's residue class: {v}"
            );
        }
    }
    drop(_running);

    let out = Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .env("LENTERA_CONFIG", &config)
        .env("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0")
        .env("LENTERA_AUTH__OPEN", "true")
        .env("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0")
        .env("LENTERA_BROKER__DATA_DIR", "")
        .env("LENTERA_BROKER__TELEMETRY__STAMP_STRIDE", "3")
        .output()
        .unwrap();
    assert!(!out.status.success(), "offset 3 of stride 3 must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stamp_offset"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hash_password_prints_a_hash_the_broker_accepts() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"open sesame\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let parsed = lentera_broker::auth::password::PasswordHash::parse(hash.trim()).unwrap();
    assert!(
        parsed.verify(b"open sesame"),
        "the newline is not part of it"
    );
    assert!(!parsed.verify(b"open sesame\n"));
}
